//! Volumetric VSS block, patch embedding and patch merging: the pieces of a 3D VMamba encoder
//! stage, on channels-last `[batch, depth, height, width, channels]` volumes.

use burn::module::Module;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;

use crate::linear::{linear, LinearBackend};
use crate::scan::{ScanBackend, ScanKernel};
use crate::ss3d::{Ss3d, Ss3dConfig};

/// Configuration of [`VssBlock3d`].
#[derive(Config, Debug)]
pub struct VssBlock3dConfig {
    /// Channels of the block.
    pub d_model: usize,
    /// State size N of its SS3D.
    #[config(default = 16)]
    pub d_state: usize,
    /// Inner expansion of its SS3D.
    #[config(default = 2)]
    pub expand: usize,
    /// Scan directions of its SS3D: 2, 4 or 6.
    #[config(default = 6)]
    pub directions: usize,
    /// The scan implementation of its SS3D.
    #[config(default = "ScanKernel::Fused")]
    pub scan_kernel: ScanKernel,
}

/// A volumetric state-space block: `x + SS3D(LayerNorm(x))` on `[batch, depth, height, width, channels]`.
#[derive(Module, Debug)]
pub struct VssBlock3d<B: Backend> {
    /// Pre-norm (VMamba's `ln_1`).
    pub ln_1: LayerNorm<B>,
    /// The SS3D mixer (named as VMamba's `self_attention`).
    pub self_attention: Ss3d<B>,
}

impl VssBlock3dConfig {
    /// Builds a [`VssBlock3d`].
    pub fn init<B: Backend>(&self, device: &B::Device) -> VssBlock3d<B> {
        VssBlock3d {
            ln_1: LayerNormConfig::new(self.d_model).init(device),
            self_attention: Ss3dConfig::new(self.d_model)
                .with_d_state(self.d_state)
                .with_expand(self.expand)
                .with_directions(self.directions)
                .with_scan_kernel(self.scan_kernel)
                .init(device),
        }
    }
}

impl<B: Backend> VssBlock3d<B> {
    /// The scan implementation of its SS3D.
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

impl<B: ScanBackend> VssBlock3d<B> {
    /// `[batch, depth, height, width, channels]` -> same shape.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        x.clone() + self.self_attention.forward(self.ln_1.forward(x))
    }
}

/// Configuration of [`PatchEmbed3d`].
#[derive(Config, Debug)]
pub struct PatchEmbed3dConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output (embedding) channels.
    pub embed_dim: usize,
    /// Patch size (also the stride) along depth, height and width.
    #[config(default = "[2, 2, 2]")]
    pub patch_size: [usize; 3],
}

/// Non-overlapping patch embedding: `[B, C, D, H, W]` -> `[B, D/pd, H/ph, W/pw, embed_dim]`,
/// layer-normed.
#[derive(Module, Debug)]
pub struct PatchEmbed3d<B: Backend> {
    /// The patch projection (a convolution with stride = kernel = patch size).
    pub proj: Conv3d<B>,
    /// LayerNorm over the embedding channels.
    pub norm: LayerNorm<B>,
}

impl PatchEmbed3dConfig {
    /// Builds a [`PatchEmbed3d`].
    pub fn init<B: Backend>(&self, device: &B::Device) -> PatchEmbed3d<B> {
        PatchEmbed3d {
            proj: Conv3dConfig::new([self.in_channels, self.embed_dim], self.patch_size)
                .with_stride(self.patch_size)
                .init(device),
            norm: LayerNormConfig::new(self.embed_dim).init(device),
        }
    }
}

impl<B: Backend> PatchEmbed3d<B> {
    /// `[batch, channels, depth, height, width]` -> `[batch, depth/pd, height/ph, width/pw, embed_dim]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.norm
            .forward(self.proj.forward(x).permute([0, 2, 3, 4, 1]))
    }
}

/// Configuration of [`PatchMerging3d`].
#[derive(Config, Debug)]
pub struct PatchMerging3dConfig {
    /// Input channels; the output has twice as many.
    pub channels: usize,
    /// Pooling along depth, height and width: each 1 (keep that axis, for anisotropic scans) or 2.
    #[config(default = "[2, 2, 2]")]
    pub stride: [usize; 3],
}

/// Pools each `sd×sh×sw` neighbourhood into one voxel with twice the channels: the neighbours
/// are concatenated (`sd·sh·sw·C`), layer-normed and projected to `2C`.
///
/// Neighbour `(od, oh, ow)` fills channels `[j·C, (j+1)·C)` with `j = (ow·sh + oh)·sd + od`: the
/// depth offset varies fastest, then height, then width. This extends VMamba's 2D order (the
/// first spatial axis fastest), so with stride `[1, 2, 2]` the order is the 2D
/// [`PatchMerging`](crate::blocks::PatchMerging)'s and its trained `reduction` weights apply.
#[derive(Module, Debug)]
pub struct PatchMerging3d<B: Backend> {
    /// LayerNorm over the `sd·sh·sw·C` concatenated channels.
    pub norm: LayerNorm<B>,
    /// The `sd·sh·sw·C` -> `2C` projection (no bias).
    pub reduction: Linear<B>,
    stride: [usize; 3],
}

impl PatchMerging3dConfig {
    /// Builds a [`PatchMerging3d`]; panics unless every stride entry is 1 or 2.
    pub fn init<B: Backend>(&self, device: &B::Device) -> PatchMerging3d<B> {
        assert!(
            self.stride.iter().all(|s| *s == 1 || *s == 2),
            "patch merging stride entries must be 1 or 2, got {:?}",
            self.stride
        );
        let merged = self.stride.iter().product::<usize>() * self.channels;
        PatchMerging3d {
            norm: LayerNormConfig::new(merged).init(device),
            reduction: LinearConfig::new(merged, 2 * self.channels)
                .with_bias(false)
                .init(device),
            stride: self.stride,
        }
    }
}

/// `[batch, depth, height, width, channels]` -> `[batch, depth/sd, height/sh, width/sw,
/// sd·sh·sw·channels]`, neighbours in the order documented on [`PatchMerging3d`].
fn concat_neighbours<B: Backend>(x: Tensor<B, 5>, [sd, sh, sw]: [usize; 3]) -> Tensor<B, 5> {
    let [batch, depth, height, width, channels] = x.dims();
    assert!(
        depth % sd == 0 && height % sh == 0 && width % sw == 0,
        "patch merging: [depth, height, width] = {:?} must be divisible by the stride {:?}",
        [depth, height, width],
        [sd, sh, sw]
    );
    let (d2, h2, w2) = (depth / sd, height / sh, width / sw);
    // Batch and pooled depth stay together so the split fits in 7 dimensions:
    // [b·d2, od, h2, oh, w2, ow, c] -> [b·d2, h2, w2, ow, oh, od, c].
    x.reshape([batch * d2, sd, h2, sh, w2, sw, channels])
        .permute([0, 2, 4, 5, 3, 1, 6])
        .reshape([batch, d2, h2, w2, sd * sh * sw * channels])
}

impl<B: Backend> PatchMerging3d<B> {
    /// The pooling along depth, height and width.
    pub fn stride(&self) -> [usize; 3] {
        self.stride
    }
}

impl<B: LinearBackend> PatchMerging3d<B> {
    /// `[batch, depth, height, width, channels]` (each divisible by its stride) ->
    /// `[batch, depth/sd, height/sh, width/sw, 2·channels]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let x = concat_neighbours(x, self.stride);
        linear(&self.reduction, self.norm.forward(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::PatchMerging;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, TensorData, Tolerance};

    fn random<Bk: Backend, const D: usize>(shape: [usize; D]) -> Tensor<Bk, D> {
        Tensor::random(shape, Distribution::Uniform(-1.0, 1.0), &Default::default())
    }

    /// Every value names its voxel and channel: `1000·d + 100·h + 10·w + c`.
    fn labelled(shape: [usize; 5]) -> Tensor<Flex, 5> {
        let [batch, depth, height, width, channels] = shape;
        let mut v = Vec::new();
        for b in 0..batch {
            for d in 0..depth {
                for h in 0..height {
                    for w in 0..width {
                        for c in 0..channels {
                            v.push((10_000 * b + 1000 * d + 100 * h + 10 * w + c) as f32);
                        }
                    }
                }
            }
        }
        Tensor::from_data(TensorData::new(v, shape), &Default::default())
    }

    #[test]
    fn neighbours_are_concatenated_depth_fastest_then_height_then_width() {
        let shape = [2, 4, 2, 6, 3];
        let x = labelled(shape);
        for stride in [[2, 2, 2], [1, 2, 2], [2, 1, 2], [2, 2, 1]] {
            let [sd, sh, sw] = stride;
            let got = concat_neighbours(x.clone(), stride);
            let [_, d2, h2, w2, merged] = got.dims();
            assert_eq!(
                [d2, h2, w2, merged],
                [4 / sd, 2 / sh, 6 / sw, sd * sh * sw * 3]
            );
            let got = got.into_data().into_vec::<f32>().unwrap();
            let mut want = Vec::new();
            for b in 0..2 {
                for d in 0..d2 {
                    for h in 0..h2 {
                        for w in 0..w2 {
                            for ow in 0..sw {
                                for oh in 0..sh {
                                    for od in 0..sd {
                                        let (vd, vh, vw) = (d * sd + od, h * sh + oh, w * sw + ow);
                                        for c in 0..3 {
                                            want.push(
                                                (10_000 * b + 1000 * vd + 100 * vh + 10 * vw + c)
                                                    as f32,
                                            );
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            assert_eq!(got, want, "stride {stride:?}");
        }
    }

    #[test]
    fn patch_merging_3d_pools_each_strided_axis_and_doubles_channels() {
        let device = Default::default();
        for (stride, want) in [([2, 2, 2], [2, 2, 3, 4, 10]), ([1, 2, 2], [2, 4, 3, 4, 10])] {
            let merging = PatchMerging3dConfig::new(5)
                .with_stride(stride)
                .init::<Flex>(&device);
            assert_eq!(merging.stride(), stride);
            assert_eq!(merging.forward(random([2, 4, 6, 8, 5])).dims(), want);
        }
    }

    /// With stride [1, 2, 2] on a single slice, the 3D merging is the 2D one with the same weights.
    #[test]
    fn patch_merging_3d_in_plane_is_the_2d_patch_merging() {
        let merging = PatchMerging3dConfig::new(3)
            .with_stride([1, 2, 2])
            .init::<Flex>(&Default::default());
        let x = random::<Flex, 5>([2, 1, 4, 6, 3]);
        // The first forward pass creates the lazily initialised weights, so the 2D layer gets them.
        let y3 = merging.forward(x.clone());
        let flat = PatchMerging {
            norm: merging.norm.clone(),
            reduction: merging.reduction.clone(),
        };
        let y2 = flat.forward(x.reshape([2, 4, 6, 3]));
        y3.reshape([2, 2, 3, 6])
            .into_data()
            .assert_approx_eq::<f32>(&y2.into_data(), Tolerance::rel_abs(1e-6, 1e-6));
    }

    #[test]
    #[should_panic(expected = "stride entries must be 1 or 2")]
    fn patch_merging_3d_refuses_a_stride_of_three() {
        let _ = PatchMerging3dConfig::new(4)
            .with_stride([3, 2, 2])
            .init::<Flex>(&Default::default());
    }

    #[test]
    fn patch_embed_3d_makes_layer_normed_channels_last_patches() {
        let device = Default::default();
        for (patch, want) in [([2, 2, 2], [2, 2, 3, 4, 6]), ([1, 2, 2], [2, 4, 3, 4, 6])] {
            let embed = PatchEmbed3dConfig::new(2, 6)
                .with_patch_size(patch)
                .init::<Flex>(&device);
            let y = embed.forward(random([2, 2, 4, 6, 8]));
            assert_eq!(y.dims(), want);
            // LayerNorm over the channels (weight 1, bias 0 at initialisation).
            let mean = y.clone().mean_dim(4).abs().max().into_scalar();
            assert!(mean < 1e-5, "channel mean {mean}");
        }
    }

    #[test]
    fn vss_block_3d_keeps_shape_and_runs_either_scan_kernel() {
        let _serial = crate::host::autodiff_lock();
        type Ad = Autodiff<Flex>;
        let config = VssBlock3dConfig::new(4).with_d_state(3).with_directions(4);
        assert_eq!(config.scan_kernel, ScanKernel::Fused);
        let fused = config.init::<Ad>(&Default::default());
        assert_eq!(fused.self_attention.directions(), 4);
        let x = random::<Ad, 5>([1, 2, 3, 4, 4]).require_grad();
        let run = |block: &VssBlock3d<Ad>| {
            let y = block.forward(x.clone());
            assert_eq!(y.dims(), [1, 2, 3, 4, 4]);
            let gx = x.grad(&y.clone().powi_scalar(2).sum().backward()).unwrap();
            (y.into_data(), gx.into_data())
        };
        let (y_fused, g_fused) = run(&fused);
        let tensor_ops = fused.clone().with_scan_kernel(ScanKernel::TensorOps);
        assert_eq!(tensor_ops.scan_kernel(), ScanKernel::TensorOps);
        let (y_ref, g_ref) = run(&tensor_ops);
        y_fused.assert_approx_eq::<f32>(&y_ref, Tolerance::rel_abs(1e-4, 1e-5));
        g_fused.assert_approx_eq::<f32>(&g_ref, Tolerance::rel_abs(1e-3, 1e-5));
    }
}
