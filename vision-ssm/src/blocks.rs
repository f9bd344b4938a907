//! VSS block, patch embedding and patch merging: the pieces of a VMamba encoder stage.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;

use crate::linear::{linear, LinearBackend};
use crate::scan::{ScanBackend, ScanKernel};
use crate::ss2d::{Ss2d, Ss2dConfig};

/// Configuration of [`VssBlock`].
#[derive(Config, Debug)]
pub struct VssBlockConfig {
    /// Channels of the block.
    pub d_model: usize,
    /// State size N of its SS2D.
    #[config(default = 16)]
    pub d_state: usize,
    /// Inner expansion of its SS2D.
    #[config(default = 2)]
    pub expand: usize,
    /// The scan implementation of its SS2D.
    #[config(default = "ScanKernel::Fused")]
    pub scan_kernel: ScanKernel,
}

/// A visual state-space block: `x + SS2D(LayerNorm(x))` on `[batch, height, width, channels]`.
#[derive(Module, Debug)]
pub struct VssBlock<B: Backend> {
    /// Pre-norm (VMamba's `ln_1`).
    pub ln_1: LayerNorm<B>,
    /// The SS2D mixer (VMamba's `self_attention`).
    pub self_attention: Ss2d<B>,
}

impl VssBlockConfig {
    /// Builds a [`VssBlock`].
    pub fn init<B: Backend>(&self, device: &B::Device) -> VssBlock<B> {
        VssBlock {
            ln_1: LayerNormConfig::new(self.d_model).init(device),
            self_attention: Ss2dConfig::new(self.d_model)
                .with_d_state(self.d_state)
                .with_expand(self.expand)
                .with_scan_kernel(self.scan_kernel)
                .init(device),
        }
    }
}

impl<B: Backend> VssBlock<B> {
    /// The scan implementation of its SS2D.
    pub fn scan_kernel(&self) -> ScanKernel {
        self.self_attention.scan_kernel()
    }

    /// The same block (same weights) running the scan implementation `kernel`.
    pub fn with_scan_kernel(self, kernel: ScanKernel) -> Self {
        Self {
            self_attention: self.self_attention.with_scan_kernel(kernel),
            ..self
        }
    }
}

impl<B: ScanBackend> VssBlock<B> {
    /// `[batch, height, width, channels]` -> same shape.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        x.clone() + self.self_attention.forward(self.ln_1.forward(x))
    }
}

/// Configuration of [`PatchEmbed`].
#[derive(Config, Debug)]
pub struct PatchEmbedConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output (embedding) channels.
    pub embed_dim: usize,
    /// Side of the square patch (also the stride).
    #[config(default = 2)]
    pub patch_size: usize,
}

/// Non-overlapping patch embedding: `[B, C, H, W]` -> `[B, H/p, W/p, embed_dim]`, layer-normed.
#[derive(Module, Debug)]
pub struct PatchEmbed<B: Backend> {
    /// The patch projection (a convolution with stride = kernel = patch size).
    pub proj: Conv2d<B>,
    /// LayerNorm over the embedding channels.
    pub norm: LayerNorm<B>,
}

impl PatchEmbedConfig {
    /// Builds a [`PatchEmbed`].
    pub fn init<B: Backend>(&self, device: &B::Device) -> PatchEmbed<B> {
        let p = self.patch_size;
        PatchEmbed {
            proj: Conv2dConfig::new([self.in_channels, self.embed_dim], [p, p])
                .with_stride([p, p])
                .init(device),
            norm: LayerNormConfig::new(self.embed_dim).init(device),
        }
    }
}

impl<B: Backend> PatchEmbed<B> {
    /// `[batch, channels, height, width]` -> `[batch, height/p, width/p, embed_dim]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.norm
            .forward(self.proj.forward(x).permute([0, 2, 3, 1]))
    }
}

/// Configuration of [`PatchMerging`].
#[derive(Config, Debug)]
pub struct PatchMergingConfig {
    /// Input channels; the output has twice as many.
    pub channels: usize,
}

/// Halves the resolution and doubles the channels: each 2×2 neighbourhood is concatenated
/// (4C), layer-normed and projected to 2C. The four pixels are concatenated in VMamba's order,
/// (row, col) = (0,0), (1,0), (0,1), (1,1), so that its trained `reduction` weights apply.
#[derive(Module, Debug)]
pub struct PatchMerging<B: Backend> {
    /// LayerNorm over the 4C concatenated channels.
    pub norm: LayerNorm<B>,
    /// The 4C -> 2C projection (no bias).
    pub reduction: Linear<B>,
}

impl PatchMergingConfig {
    /// Builds a [`PatchMerging`].
    pub fn init<B: Backend>(&self, device: &B::Device) -> PatchMerging<B> {
        PatchMerging {
            norm: LayerNormConfig::new(4 * self.channels).init(device),
            reduction: LinearConfig::new(4 * self.channels, 2 * self.channels)
                .with_bias(false)
                .init(device),
        }
    }
}

impl<B: LinearBackend> PatchMerging<B> {
    /// `[batch, height, width, channels]` (even height and width) -> `[batch, height/2, width/2, 2·channels]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, height, width, channels] = x.dims();
        let (h2, w2) = (height / 2, width / 2);
        // [b, h2, dr, w2, dc, c] -> [b, h2, w2, dc, dr, c]: the row offset varies fastest.
        let x = x
            .reshape([batch, h2, 2, w2, 2, channels])
            .permute([0, 1, 3, 4, 2, 5])
            .reshape([batch, h2, w2, 4 * channels]);
        linear(&self.reduction, self.norm.forward(x))
    }
}
