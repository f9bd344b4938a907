//! The Swin-UMamba 2D network (Liu et al. 2024, JiarunLiu/Swin-UMamba `nets/SwinUMamba.py`),
//! module for module, with upstream's module names so that its PyTorch weights map one to one
//! (see [`super::weights`]).
//!
//! ```text
//! x ─► stem (7×7/2 conv, affine InstanceNorm) ─► x1 ─► vssm_encoder: patch_embed (2×2) ─► layers.0 ─► downsamples.0 ─► layers.1 ─► … ─► layers.3
//! │ 1                                            │ 1/2                                       │ 1/4 (d0)                  │ 1/8 (d1)   1/16 (d2)    │ 1/32 (d3)
//! encoder1 (in→s)                           encoder2 (s→d0)                             encoder3 (d0→d1)           encoder4 (d1→d2), encoder5 (d2→d3)
//! │                                              │                                           │                                                      │
//! decoder1 ◄─ decoder2 ◄──────────────────── decoder3 ◄─────────────────────────────── decoder4 ◄──────────── decoder5 ◄── decoder6 ◄─────────────┘
//! ```
//! `s` is `stem_channels`, `d0..d3` are `dims`; upstream's `feat_size` is `[s, d0, d1, d2, d3]`.
//! Encoder skips are MONAI `UnetrBasicBlock`s (residual: two 3×3 convs with non-affine instance
//! norm and leaky ReLU, a 1×1 conv + norm shortcut when the width changes); each decoder step is a
//! `UnetrUpBlock` (2×2 transposed conv, concatenation with the skip, residual block). Four 1×1
//! heads (`out_layers`) give logits at 1, 1/2, 1/4 and 1/8 resolution for deep supervision.

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, PaddingConfig2d};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::activation;
use burn::tensor::backend::AutodiffBackend;
use vision_ssm::{
    PatchEmbed, PatchEmbedConfig, PatchMerging, PatchMergingConfig, ScanBackend, ScanKernel,
    VssBlock, VssBlockConfig,
};

use super::config::{EncoderKind, ModelConfig};
use super::ops::conv::{forward_same, upsample, ConvBackend};
use super::ops::norm::{FusedInstanceNorm, NormBackend};

/// Number of deep-supervision heads (full, 1/2, 1/4 and 1/8 resolution).
pub const DEEP_SUPERVISION_HEADS: usize = 4;

impl ModelConfig {
    /// Builds the network for `in_channels` input channels and `num_classes` output classes.
    pub fn init<B: Backend>(
        &self,
        in_channels: usize,
        num_classes: usize,
        device: &B::Device,
    ) -> SwinUMamba<B> {
        let (s, d) = (self.stem_channels, self.dims);
        let layers = (0..4)
            .map(|i| Stage {
                blocks: (0..self.depths[i])
                    .map(|_| match self.encoder {
                        EncoderKind::Vss => StageBlock::Vss(
                            VssBlockConfig::new(d[i])
                                .with_d_state(self.d_state)
                                .with_expand(self.expand)
                                .init(device),
                        ),
                        EncoderKind::Conv => StageBlock::Conv(ChannelsLastRes::new(d[i], device)),
                    })
                    .collect(),
            })
            .collect();
        SwinUMamba {
            stem: Stem {
                conv: conv(in_channels, s, 7, 2, device),
                norm: FusedInstanceNorm::new(s, device),
            },
            vssm_encoder: VssmEncoder {
                patch_embed: PatchEmbedConfig::new(s, d[0]).init(device),
                layers,
                downsamples: (0..3)
                    .map(|i| PatchMergingConfig::new(d[i]).init(device))
                    .collect(),
            },
            encoder1: ResBlock::new(in_channels, s, device),
            encoder2: ResBlock::new(s, d[0], device),
            encoder3: ResBlock::new(d[0], d[1], device),
            encoder4: ResBlock::new(d[1], d[2], device),
            encoder5: ResBlock::new(d[2], d[3], device),
            decoder6: UpBlock::new(d[3], d[3], device),
            decoder5: UpBlock::new(d[3], d[2], device),
            decoder4: UpBlock::new(d[2], d[1], device),
            decoder3: UpBlock::new(d[1], d[0], device),
            decoder2: UpBlock::new(d[0], s, device),
            decoder1: ResBlock::new(s, s, device),
            out_layers: [s, d[0], d[1], d[2]]
                .into_iter()
                .map(|c| conv(c, num_classes, 1, 1, device))
                .collect(),
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

/// A convolution whose output goes straight into an instance norm: no bias (MONAI's blocks have
/// none either), since the norm subtracts every (sample, channel) mean and with it any bias.
fn conv_before_norm<B: Backend>(
    cin: usize,
    cout: usize,
    kernel: usize,
    device: &B::Device,
) -> Conv2d<B> {
    conv_config(cin, cout, kernel, 1)
        .with_bias(false)
        .init(device)
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

/// What the network needs of a backend: the selective scan, the fused instance norm and the
/// "same" convolutions with their own backward pass.
pub trait ModelBackend: ScanBackend + NormBackend + ConvBackend {}

impl<B: ScanBackend + NormBackend + ConvBackend> ModelBackend for B {}

/// The stem: 7×7 convolution with stride 2, then an affine instance norm (upstream `stem.0`,
/// `stem.1`).
#[derive(Module, Debug)]
pub struct Stem<B: Backend> {
    conv: Conv2d<B>,
    norm: FusedInstanceNorm<B>,
}

/// MONAI's `UnetResBlock` (inside `UnetrBasicBlock` and `UnetrUpBlock`): two 3×3 conv + instance
/// norm with leaky ReLU, and a 1×1 conv + norm shortcut (`conv3`, `norm3`) when the width changes.
#[derive(Module, Debug)]
pub struct ResBlock<B: Backend> {
    conv1: Conv2d<B>,
    norm1: FusedInstanceNorm<B>,
    conv2: Conv2d<B>,
    norm2: FusedInstanceNorm<B>,
    conv3: Option<Conv2d<B>>,
    norm3: Option<FusedInstanceNorm<B>>,
}

impl<B: Backend> ResBlock<B> {
    fn new(cin: usize, cout: usize, device: &B::Device) -> Self {
        let project = cin != cout;
        Self {
            conv1: conv_before_norm(cin, cout, 3, device),
            norm1: FusedInstanceNorm::plain(cout),
            conv2: conv_before_norm(cout, cout, 3, device),
            norm2: FusedInstanceNorm::plain(cout),
            conv3: project.then(|| conv_before_norm(cin, cout, 1, device)),
            norm3: project.then(|| FusedInstanceNorm::plain(cout)),
        }
    }
}

impl<B: NormBackend + ConvBackend> ResBlock<B> {
    /// `[B, cin, H, W]` -> `[B, cout, H, W]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let residual = match (&self.conv3, &self.norm3) {
            (Some(proj), Some(norm)) => norm.forward(forward_same(proj, x.clone())),
            _ => x.clone(),
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

/// An encoder stage: blocks at one resolution (upstream `VSSLayer`).
#[derive(Module, Debug)]
pub struct Stage<B: Backend> {
    blocks: Vec<StageBlock<B>>,
}

/// The VMamba encoder: patch embedding, four stages, and patch merging between them.
#[derive(Module, Debug)]
pub struct VssmEncoder<B: Backend> {
    patch_embed: PatchEmbed<B>,
    layers: Vec<Stage<B>>,
    downsamples: Vec<PatchMerging<B>>,
}

impl<B: ModelBackend> VssmEncoder<B> {
    /// `[B, s, H, W]` -> the four stages' outputs, `[B, d_i, H/2^(i+1), W/2^(i+1)]`.
    fn forward(&self, x: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        let mut hidden = self.patch_embed.forward(x); // channels-last
        let mut outputs = Vec::with_capacity(self.layers.len());
        for (i, stage) in self.layers.iter().enumerate() {
            for block in &stage.blocks {
                hidden = match block {
                    StageBlock::Vss(b) => b.forward(hidden),
                    StageBlock::Conv(b) => b.forward(hidden),
                };
            }
            outputs.push(hidden.clone().permute([0, 3, 1, 2]));
            if let Some(merge) = self.downsamples.get(i) {
                hidden = merge.forward(hidden);
            }
        }
        outputs
    }
}

/// MONAI's `UnetrUpBlock`: 2× transposed conv (no bias), concatenation with the skip, residual
/// block.
#[derive(Module, Debug)]
pub struct UpBlock<B: Backend> {
    transp_conv: ConvTranspose2d<B>,
    conv_block: ResBlock<B>,
}

impl<B: Backend> UpBlock<B> {
    fn new(cin: usize, cout: usize, device: &B::Device) -> Self {
        Self {
            transp_conv: ConvTranspose2dConfig::new([cin, cout], [2, 2])
                .with_stride([2, 2])
                .with_bias(false)
                .init(device),
            conv_block: ResBlock::new(2 * cout, cout, device),
        }
    }
}

impl<B: NormBackend + ConvBackend> UpBlock<B> {
    /// `x: [B, cin, H, W]` and `skip: [B, cout, 2H, 2W]` -> `[B, cout, 2H, 2W]`.
    fn forward(&self, x: Tensor<B, 4>, skip: Tensor<B, 4>) -> Tensor<B, 4> {
        self.conv_block
            .forward(Tensor::cat(vec![upsample(&self.transp_conv, x), skip], 1))
    }
}

/// The Swin-UMamba network; field names are upstream's module names.
#[derive(Module, Debug)]
pub struct SwinUMamba<B: Backend> {
    stem: Stem<B>,
    vssm_encoder: VssmEncoder<B>,
    encoder1: ResBlock<B>,
    encoder2: ResBlock<B>,
    encoder3: ResBlock<B>,
    encoder4: ResBlock<B>,
    encoder5: ResBlock<B>,
    decoder6: UpBlock<B>,
    decoder5: UpBlock<B>,
    decoder4: UpBlock<B>,
    decoder3: UpBlock<B>,
    decoder2: UpBlock<B>,
    decoder1: ResBlock<B>,
    out_layers: Vec<Conv2d<B>>,
}

impl<B: ModelBackend> SwinUMamba<B> {
    /// `[batch, channels, H, W]` (H, W divisible by 32) -> logits at full, 1/2, 1/4 and 1/8
    /// resolution (`[batch, classes, H/s, W/s]`), full resolution first.
    pub fn forward(&self, x: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        self.forward_heads(x, DEEP_SUPERVISION_HEADS)
    }

    /// The first `heads` outputs of [`Self::forward`] (the coarser heads are not run).
    pub fn forward_heads(&self, x: Tensor<B, 4>, heads: usize) -> Vec<Tensor<B, 4>> {
        let x1 = self.stem.norm.forward(self.stem.conv.forward(x.clone()));
        let enc1 = self.encoder1.forward(x);
        let enc2 = self.encoder2.forward(x1.clone());
        let [v1, v2, v3, hidden]: [Tensor<B, 4>; 4] = self
            .vssm_encoder
            .forward(x1)
            .try_into()
            .expect("four encoder stages");
        let enc3 = self.encoder3.forward(v1);
        let enc4 = self.encoder4.forward(v2);
        let enc5 = self.encoder5.forward(v3);
        let dec4 = self.decoder6.forward(hidden, enc5);
        let dec3 = self.decoder5.forward(dec4, enc4);
        let dec2 = self.decoder4.forward(dec3.clone(), enc3);
        let dec1 = self.decoder3.forward(dec2.clone(), enc2);
        let dec0 = self.decoder2.forward(dec1.clone(), enc1);
        let dec_out = self.decoder1.forward(dec0);
        [dec_out, dec1, dec2, dec3]
            .into_iter()
            .zip(&self.out_layers)
            .take(heads)
            .map(|(features, head)| forward_same(head, features))
            .collect()
    }

    /// The same network (same weights) with `kernel` running the selective scan of every VSS
    /// block: `bench step --reference` times the tensor-op loop this way.
    pub fn with_scan_kernel(self, kernel: ScanKernel) -> Self {
        let encoder = self.vssm_encoder;
        let layers = encoder
            .layers
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
            })
            .collect();
        Self {
            vssm_encoder: VssmEncoder { layers, ..encoder },
            ..self
        }
    }

    /// Drops from `grads` the gradients of the VMamba encoder's stages and patch merging (as
    /// upstream's `freeze_encoder`, which leaves the patch embedding trainable), so that the
    /// optimiser leaves those weights exactly as they are, weight decay included.
    pub fn freeze_encoder(&self, grads: &mut GradientsParams)
    where
        B: AutodiffBackend,
    {
        struct Drop<'a>(&'a mut GradientsParams);
        impl<B: AutodiffBackend> ModuleVisitor<B> for Drop<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                self.0.remove::<B::InnerBackend, D>(param.id);
            }
        }
        let mut drop = Drop(grads);
        self.vssm_encoder.layers.visit(&mut drop);
        self.vssm_encoder.downsamples.visit(&mut drop);
    }

    /// Full-resolution logits only (inference): the other heads are not run.
    pub fn logits(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_heads(x, 1).swap_remove(0)
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
    fn a_frozen_encoder_does_not_change_even_by_weight_decay() {
        use burn::backend::Autodiff;
        use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
        use burn_store::ModuleSnapshot;
        type A = Autodiff<Flex>;
        let device = Default::default();
        let config = ModelConfig::vss(4, [8, 16, 32, 64], [1, 1, 1, 1], 4);
        let snapshot = |m: &SwinUMamba<A>| -> Vec<(String, Vec<f32>)> {
            m.collect(None, None, true)
                .into_iter()
                .map(|t| {
                    (
                        t.full_path(),
                        t.to_data().unwrap().into_vec::<f32>().unwrap(),
                    )
                })
                .collect()
        };
        for freeze in [true, false] {
            let model = config.init::<A>(1, 2, &device);
            let before = snapshot(&model);
            let mut optimizer = AdamWConfig::new()
                .with_weight_decay(0.05)
                .init::<A, SwinUMamba<A>>();
            let x = Tensor::<A, 4>::random([1, 1, 32, 32], Distribution::Normal(0.0, 1.0), &device);
            // Every head in the loss, so that every parameter has a gradient.
            let loss = model
                .forward_heads(x, 4)
                .into_iter()
                .map(|y| y.powi_scalar(2).mean())
                .reduce(|a, b| a + b)
                .expect("four heads");
            let mut grads = GradientsParams::from_grads(loss.backward(), &model);
            if freeze {
                model.freeze_encoder(&mut grads);
            }
            let after = snapshot(&optimizer.step(1e-2, model, grads));
            for ((path, a), (_, b)) in before.iter().zip(&after) {
                let frozen_part = path.starts_with("vssm_encoder.layers")
                    || path.starts_with("vssm_encoder.downsamples");
                assert_eq!(
                    a == b,
                    freeze && frozen_part,
                    "{path} (freeze {freeze}): changed {}",
                    a != b
                );
            }
        }
    }

    #[test]
    fn a_bias_before_instance_norm_changes_nothing() {
        let device = Default::default();
        assert!(conv_before_norm::<Flex>(4, 6, 3, &device).bias.is_none());
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
        let norm = FusedInstanceNorm::<Flex>::new(6, &device);
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
