//! The Swin-UMamba-style 2D network's modules and forward pass, readable top to bottom with the
//! paper's names.
//!
//! ```text
//! input ─► stem (7×7 conv, stride 2) ─► patch embed (2×2) ─► stage 1 (VSS×d1) ─► merge ─► stage 2 ─► merge ─► stage 3 ─► merge ─► stage 4
//!   │           │ 1/2                                          │ 1/4                      │ 1/8              │ 1/16             │ 1/32
//!  enc0        enc1                                          enc2                       enc3               enc4               enc5 (bottleneck)
//!   │           │                                              │                          │                  │                  │
//!  head ◄─ up(enc0) ◄────── up(enc1) ◄──────────────────── up(enc2) ◄──────────────── up(enc3) ◄────────── up(enc4) ◄────────────┘
//! ```
//! Encoder skips are residual conv blocks (UNETR style); each decoder step is a 2×2 transposed
//! convolution, concatenation with the skip and a residual conv block. Deep supervision adds
//! 1×1 heads at 1/2 and 1/4 resolution.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation;
use vision_ssm::{
    PatchEmbed, PatchEmbedConfig, PatchMerging, PatchMergingConfig, ScanBackend, ScanKernel,
    VssBlock, VssBlockConfig,
};

use super::config::{EncoderKind, ModelConfig};
use super::ops::conv::{forward_same, ConvBackend};
use super::ops::norm::{FusedInstanceNorm, NormBackend};

impl ModelConfig {
    /// Builds the network for `in_channels` input channels and `num_classes` output classes.
    pub fn init<B: Backend>(
        &self,
        in_channels: usize,
        num_classes: usize,
        device: &B::Device,
    ) -> SwinUMamba<B> {
        let (stem, dims) = (self.stem_channels, self.dims);
        let stages = (0..4)
            .map(|i| {
                let blocks = (0..self.depths[i]).map(|_| match self.encoder {
                    EncoderKind::Vss => StageBlock::Vss(
                        VssBlockConfig::new(dims[i])
                            .with_d_state(self.d_state)
                            .with_expand(self.expand)
                            .init(device),
                    ),
                    EncoderKind::Conv => StageBlock::Conv(ChannelsLastRes::new(dims[i], device)),
                });
                Stage {
                    blocks: blocks.collect(),
                    merge: (i < 3).then(|| PatchMergingConfig::new(dims[i]).init(device)),
                }
            })
            .collect();
        let ds_heads = vec![
            conv(stem, num_classes, 1, 1, device),
            conv(dims[0], num_classes, 1, 1, device),
        ];
        SwinUMamba {
            stem: conv(in_channels, stem, 7, 2, device),
            stem_norm: LayerNormConfig::new(stem).init(device),
            patch_embed: PatchEmbedConfig::new(stem, dims[0]).init(device),
            stages,
            enc0: ResBlock::new(in_channels, stem, device),
            enc1: ResBlock::new(stem, stem, device),
            enc_stages: dims.iter().map(|&c| ResBlock::new(c, c, device)).collect(),
            decoders: vec![
                UpBlock::new(dims[3], dims[2], device),
                UpBlock::new(dims[2], dims[1], device),
                UpBlock::new(dims[1], dims[0], device),
                UpBlock::new(dims[0], stem, device),
                UpBlock::new(stem, stem, device),
            ],
            head: conv(stem, num_classes, 1, 1, device),
            ds_heads,
        }
    }
}

fn conv<B: Backend>(
    cin: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
    device: &B::Device,
) -> Conv2d<B> {
    conv_config(cin, cout, kernel, stride).init(device)
}

/// A convolution whose output goes straight into an instance norm: no bias, since the norm
/// subtracts every (sample, channel) mean and with it any bias (so its gradient is zero, and
/// burn's bias backward, a strided copy of the whole output gradient, is pure cost). Weights
/// saved with a bias load into it unchanged in effect: the bias is ignored, as the norm ignored it.
fn conv_before_norm<B: Backend>(cin: usize, cout: usize, device: &B::Device) -> Conv2d<B> {
    conv_config(cin, cout, 3, 1).with_bias(false).init(device)
}

fn conv_config(cin: usize, cout: usize, kernel: usize, stride: usize) -> Conv2dConfig {
    Conv2dConfig::new([cin, cout], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(
            kernel / 2,
            kernel / 2,
            kernel / 2,
            kernel / 2,
        ))
}

fn norm<B: Backend>(channels: usize, device: &B::Device) -> FusedInstanceNorm<B> {
    FusedInstanceNorm::new(channels, device)
}

/// What the network needs of a backend: the selective scan, the fused instance norm and the
/// "same" convolutions with their own backward pass.
pub trait ModelBackend: ScanBackend + NormBackend + ConvBackend {}

impl<B: ScanBackend + NormBackend + ConvBackend> ModelBackend for B {}

/// Residual block of two 3×3 conv + instance norm + leaky ReLU (UNETR's `UnetResBlock`).
#[derive(Module, Debug)]
pub struct ResBlock<B: Backend> {
    conv1: Conv2d<B>,
    norm1: FusedInstanceNorm<B>,
    conv2: Conv2d<B>,
    norm2: FusedInstanceNorm<B>,
    shortcut: Option<Conv2d<B>>,
}

impl<B: Backend> ResBlock<B> {
    fn new(cin: usize, cout: usize, device: &B::Device) -> Self {
        Self {
            conv1: conv_before_norm(cin, cout, device),
            norm1: norm(cout, device),
            conv2: conv_before_norm(cout, cout, device),
            norm2: norm(cout, device),
            shortcut: (cin != cout).then(|| conv(cin, cout, 1, 1, device)),
        }
    }
}

impl<B: NormBackend + ConvBackend> ResBlock<B> {
    /// `[B, cin, H, W]` -> `[B, cout, H, W]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let residual = match &self.shortcut {
            Some(proj) => forward_same(proj, x.clone()),
            None => x.clone(),
        };
        let y = activation::leaky_relu(self.norm1.forward(forward_same(&self.conv1, x)), 0.01);
        let y = self.norm2.forward(forward_same(&self.conv2, y));
        activation::leaky_relu(y + residual, 0.01)
    }
}

/// A residual conv block on channels-last maps, standing in for a VSS block in `--encoder conv`.
#[derive(Module, Debug)]
pub struct ChannelsLastRes<B: Backend> {
    norm: LayerNorm<B>,
    block: ResBlock<B>,
}

impl<B: Backend> ChannelsLastRes<B> {
    fn new(channels: usize, device: &B::Device) -> Self {
        Self {
            norm: LayerNormConfig::new(channels).init(device),
            block: ResBlock::new(channels, channels, device),
        }
    }
}

impl<B: NormBackend + ConvBackend> ChannelsLastRes<B> {
    /// Channels-last `[B, H, W, C]` -> the same shape (a residual block between LayerNorm and
    /// the residual sum, as a VSS block has its mixer).
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let y = self.norm.forward(x.clone()).permute([0, 3, 1, 2]);
        x + self.block.forward(y).permute([0, 2, 3, 1])
    }
}

/// One block of an encoder stage.
#[derive(Module, Debug)]
pub enum StageBlock<B: Backend> {
    /// A visual state-space block.
    Vss(VssBlock<B>),
    /// A residual convolution block (ablation).
    Conv(ChannelsLastRes<B>),
}

/// An encoder stage: blocks at one resolution, then patch merging (except the last stage).
#[derive(Module, Debug)]
pub struct Stage<B: Backend> {
    blocks: Vec<StageBlock<B>>,
    merge: Option<PatchMerging<B>>,
}

/// Decoder step: 2× transposed conv, concatenation with the skip, residual block.
#[derive(Module, Debug)]
pub struct UpBlock<B: Backend> {
    up: ConvTranspose2d<B>,
    block: ResBlock<B>,
}

impl<B: Backend> UpBlock<B> {
    fn new(cin: usize, cout: usize, device: &B::Device) -> Self {
        Self {
            up: ConvTranspose2dConfig::new([cin, cout], [2, 2])
                .with_stride([2, 2])
                .init(device),
            block: ResBlock::new(2 * cout, cout, device),
        }
    }
}

impl<B: NormBackend + ConvBackend> UpBlock<B> {
    /// `x: [B, cin, H, W]` and `skip: [B, cout, 2H, 2W]` -> `[B, cout, 2H, 2W]`.
    fn forward(&self, x: Tensor<B, 4>, skip: Tensor<B, 4>) -> Tensor<B, 4> {
        self.block
            .forward(Tensor::cat(vec![self.up.forward(x), skip], 1))
    }
}

/// The Swin-UMamba-style U-shaped network.
#[derive(Module, Debug)]
pub struct SwinUMamba<B: Backend> {
    stem: Conv2d<B>,
    stem_norm: LayerNorm<B>,
    patch_embed: PatchEmbed<B>,
    stages: Vec<Stage<B>>,
    enc0: ResBlock<B>,
    enc1: ResBlock<B>,
    enc_stages: Vec<ResBlock<B>>,
    decoders: Vec<UpBlock<B>>,
    head: Conv2d<B>,
    ds_heads: Vec<Conv2d<B>>,
}

impl<B: ModelBackend> SwinUMamba<B> {
    /// `[batch, channels, H, W]` (H, W divisible by 32) -> logits at full, 1/2 and 1/4 resolution
    /// (`[batch, classes, H/s, W/s]`), full resolution first.
    pub fn forward(&self, x: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        let enc0 = self.enc0.forward(x.clone());
        let stem = self.stem.forward(x).permute([0, 2, 3, 1]);
        let stem = self.stem_norm.forward(stem).permute([0, 3, 1, 2]);
        let enc1 = self.enc1.forward(stem.clone());
        let mut hidden = self.patch_embed.forward(stem); // channels-last, 1/4
        let mut stage_outputs = Vec::with_capacity(4);
        for stage in &self.stages {
            for block in &stage.blocks {
                hidden = match block {
                    StageBlock::Vss(b) => b.forward(hidden),
                    StageBlock::Conv(b) => b.forward(hidden),
                };
            }
            stage_outputs.push(hidden.clone().permute([0, 3, 1, 2]));
            if let Some(merge) = &stage.merge {
                hidden = merge.forward(hidden);
            }
        }
        let skips: Vec<_> = stage_outputs
            .into_iter()
            .zip(&self.enc_stages)
            .map(|(s, block)| block.forward(s))
            .collect();
        let [s2, s3, s4, s5]: [Tensor<B, 4>; 4] = skips.try_into().expect("four stages");
        let d4 = self.decoders[0].forward(s5, s4);
        let d3 = self.decoders[1].forward(d4, s3);
        let d2 = self.decoders[2].forward(d3, s2);
        let d1 = self.decoders[3].forward(d2.clone(), enc1);
        let d0 = self.decoders[4].forward(d1.clone(), enc0);
        vec![
            forward_same(&self.head, d0),
            forward_same(&self.ds_heads[0], d1),
            forward_same(&self.ds_heads[1], d2),
        ]
    }

    /// The same network (same weights) with `kernel` running the selective scan of every VSS
    /// block: `bench step --reference` times the tensor-op loop this way.
    pub fn with_scan_kernel(self, kernel: ScanKernel) -> Self {
        let stages = self
            .stages
            .into_iter()
            .map(|stage| Stage {
                blocks: stage
                    .blocks
                    .into_iter()
                    .map(|block| match block {
                        StageBlock::Vss(b) => StageBlock::Vss(b.with_scan_kernel(kernel)),
                        other => other,
                    })
                    .collect(),
                merge: stage.merge,
            })
            .collect();
        Self { stages, ..self }
    }

    /// Full-resolution logits only (inference).
    pub fn logits(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward(x).swap_remove(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::module::Param;
    use burn::tensor::Distribution;

    fn values(t: Tensor<Flex, 4>) -> Vec<f32> {
        t.into_data().into_vec::<f32>().expect("f32")
    }

    #[test]
    fn a_bias_before_instance_norm_changes_nothing() {
        let device = Default::default();
        assert!(conv_before_norm::<Flex>(4, 6, &device).bias.is_none());
        let plain: Conv2d<Flex> = conv_config(4, 6, 3, 1).init(&device);
        // burn draws a parameter lazily, and each clone of an undrawn one draws its own.
        drop(plain.weight.val());
        let bias = Tensor::<Flex, 1>::random([6], Distribution::Uniform(1.0, 3.0), &device);
        let biased = Conv2d {
            bias: Some(Param::from_tensor(bias)),
            ..plain.clone()
        };
        let unbiased = Conv2d {
            bias: None,
            ..plain
        };
        let norm = norm::<Flex>(6, &device);
        let x = Tensor::<Flex, 4>::random([2, 4, 8, 8], Distribution::Normal(0.0, 1.0), &device);
        let (conv_a, conv_b) = (
            values(biased.forward(x.clone())),
            values(unbiased.forward(x.clone())),
        );
        let conv_diff = conv_a
            .iter()
            .zip(&conv_b)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            conv_diff >= 1.0,
            "the bias shifts the convolution ({conv_diff})"
        );
        let a = values(norm.forward(biased.forward(x.clone())));
        let b = values(norm.forward(unbiased.forward(x)));
        let diff = a
            .iter()
            .zip(&b)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff <= 1e-4, "after the norm the bias is gone ({diff})");
    }
}
