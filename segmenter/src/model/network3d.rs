//! The volumetric Swin-UMamba: the 2D network's U-shape ([`super::SwinUMamba`]) with 3D
//! convolutions, VSS3D blocks (six-direction selective scans, `vision_ssm::Ss3d`) and 3D patch
//! embedding and merging.
//!
//! ```text
//! x ─► stem (7³ conv, level-0 stride) ─► patch_embed (level-1 stride) ─► layers.0 ─► merge (level 2) ─► layers.1 ─► … ─► layers.3
//! encoder1 (full) encoder2 (level 0)       encoder3                      encoder4                     encoder5            │
//! decoder1 ◄─ decoder2 ◄─ decoder3 ◄────── decoder4 ◄─────────────────── decoder5 ◄───────────────── decoder6 ◄─────────┘
//! ```
//! Every one of the five downsamplings has a stride per axis (`[depth, rows, cols]`, each 1 or 2),
//! chosen by the plan: an axis much coarser than the others is not pooled until the resolutions
//! meet (nnU-Net's rule for anisotropic scans), and an axis already at the smallest useful size
//! is not pooled further. The decoder's transposed convolutions undo the same strides. Four 1³
//! heads give logits at the resolutions of the decoder's last four levels (deep supervision).

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::conv::{Conv3d, Conv3dConfig, ConvTranspose3d, ConvTranspose3dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, PaddingConfig3d};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::activation;
use burn::tensor::backend::AutodiffBackend;
use vision_ssm::{
    PatchEmbed3d, PatchEmbed3dConfig, PatchMerging3d, PatchMerging3dConfig, ScanKernel, VssBlock3d,
    VssBlock3dConfig,
};

use super::config::{EncoderKind, ModelConfig};
use super::network::ModelBackend;
use super::ops::conv::{forward_same_3d, upsample_3d, ConvBackend};
use super::ops::norm::{FusedInstanceNorm, NormBackend};

/// The strides `[depth, rows, cols]` of the five downsamplings: the stem, the patch embedding and
/// the three patch mergings.
pub type Strides3d = [[usize; 3]; 5];

/// The isotropic strides: every downsampling halves every axis (inputs divisible by 32).
pub const ISOTROPIC_STRIDES: Strides3d = [[2, 2, 2]; 5];

/// Checks that `strides` are 1 or 2 and that `patch` is divisible by their product per axis.
pub fn check_strides(strides: &Strides3d, patch: [usize; 3]) -> Result<(), String> {
    for s in strides.iter().flatten() {
        if *s != 1 && *s != 2 {
            return Err(format!("3D strides must be 1 or 2, got {strides:?}"));
        }
    }
    for (axis, &side) in patch.iter().enumerate() {
        let total: usize = strides.iter().map(|s| s[axis]).product();
        if side == 0 || side % total != 0 {
            return Err(format!(
                "the 3D patch {patch:?} must be divisible by the product of the strides along each axis ({total} along axis {axis})"
            ));
        }
    }
    Ok(())
}

impl ModelConfig {
    /// Builds the volumetric network for `in_channels` inputs, `num_classes` classes and the
    /// plan's `strides`.
    pub fn init_3d<B: Backend>(
        &self,
        in_channels: usize,
        num_classes: usize,
        strides: Strides3d,
        device: &B::Device,
    ) -> SwinUMamba3d<B> {
        let (s, d) = (self.stem_channels, self.dims);
        let layers = (0..4)
            .map(|i| Stage3d {
                blocks: (0..self.depths[i])
                    .map(|_| match self.encoder {
                        EncoderKind::Vss => StageBlock3d::Vss(
                            VssBlock3dConfig::new(d[i])
                                .with_d_state(self.d_state)
                                .with_expand(self.expand)
                                .with_directions(self.directions)
                                .init(device),
                        ),
                        EncoderKind::Conv => {
                            StageBlock3d::Conv(ChannelsLastRes3d::new(d[i], device))
                        }
                    })
                    .collect(),
            })
            .collect();
        SwinUMamba3d {
            stem: Stem3d {
                conv: conv(in_channels, s, 7, strides[0], true, device),
                norm: FusedInstanceNorm::new(s, device),
            },
            vssm_encoder: VssmEncoder3d {
                patch_embed: PatchEmbed3dConfig::new(s, d[0])
                    .with_patch_size(strides[1])
                    .init(device),
                layers,
                downsamples: (0..3)
                    .map(|i| {
                        PatchMerging3dConfig::new(d[i])
                            .with_stride(strides[i + 2])
                            .init(device)
                    })
                    .collect(),
            },
            encoder1: ResBlock3d::new(in_channels, s, device),
            encoder2: ResBlock3d::new(s, d[0], device),
            encoder3: ResBlock3d::new(d[0], d[1], device),
            encoder4: ResBlock3d::new(d[1], d[2], device),
            encoder5: ResBlock3d::new(d[2], d[3], device),
            decoder6: UpBlock3d::new(d[3], d[3], strides[4], device),
            decoder5: UpBlock3d::new(d[3], d[2], strides[3], device),
            decoder4: UpBlock3d::new(d[2], d[1], strides[2], device),
            decoder3: UpBlock3d::new(d[1], d[0], strides[1], device),
            decoder2: UpBlock3d::new(d[0], s, strides[0], device),
            decoder1: ResBlock3d::new(s, s, device),
            out_layers: [s, d[0], d[1], d[2]]
                .into_iter()
                .map(|c| conv(c, num_classes, 1, [1, 1, 1], true, device))
                .collect(),
            strides: strides.iter().flatten().copied().collect(),
        }
    }
}

/// A `kernel`³ convolution with "same" padding and the given stride.
fn conv<B: Backend>(
    cin: usize,
    cout: usize,
    kernel: usize,
    stride: [usize; 3],
    bias: bool,
    device: &B::Device,
) -> Conv3d<B> {
    let p = kernel / 2;
    Conv3dConfig::new([cin, cout], [kernel; 3])
        .with_stride(stride)
        .with_padding(PaddingConfig3d::Explicit(p, p, p))
        .with_bias(bias)
        .init(device)
}

/// The stem: a 7³ convolution with the level-0 stride (burn's conv and backward: strided, so not
/// a "same" conv), then an affine instance norm.
#[derive(Module, Debug)]
pub struct Stem3d<B: Backend> {
    conv: Conv3d<B>,
    norm: FusedInstanceNorm<B>,
}

/// MONAI's `UnetResBlock` in 3D: two 3³ conv + instance norm with leaky ReLU, and a 1³ conv +
/// norm shortcut when the width changes. The convolutions before a norm have no bias (the norm
/// removes it). The convs and norms run our ops (`ops::conv`, `ops::norm`), whose CPU backward
/// passes are im2col + GEMM and one fused kernel instead of burn's generic ones.
#[derive(Module, Debug)]
pub struct ResBlock3d<B: Backend> {
    conv1: Conv3d<B>,
    norm1: FusedInstanceNorm<B>,
    conv2: Conv3d<B>,
    norm2: FusedInstanceNorm<B>,
    conv3: Option<Conv3d<B>>,
    norm3: Option<FusedInstanceNorm<B>>,
}

impl<B: Backend> ResBlock3d<B> {
    fn new(cin: usize, cout: usize, device: &B::Device) -> Self {
        let project = cin != cout;
        Self {
            conv1: conv(cin, cout, 3, [1, 1, 1], false, device),
            norm1: FusedInstanceNorm::plain(cout),
            conv2: conv(cout, cout, 3, [1, 1, 1], false, device),
            norm2: FusedInstanceNorm::plain(cout),
            conv3: project.then(|| conv(cin, cout, 1, [1, 1, 1], false, device)),
            norm3: project.then(|| FusedInstanceNorm::plain(cout)),
        }
    }
}

impl<B: NormBackend + ConvBackend> ResBlock3d<B> {
    /// `[B, cin, D, H, W]` -> `[B, cout, D, H, W]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let residual = match (&self.conv3, &self.norm3) {
            (Some(proj), Some(n)) => n.forward(forward_same_3d(proj, x.clone())),
            _ => x.clone(),
        };
        let y = activation::leaky_relu(self.norm1.forward(forward_same_3d(&self.conv1, x)), 0.01);
        let y = self.norm2.forward(forward_same_3d(&self.conv2, y));
        activation::leaky_relu(y + residual, 0.01)
    }
}

/// A residual conv block on channels-last volumes, standing in for a VSS3D block in
/// `--encoder conv`.
#[derive(Module, Debug)]
pub struct ChannelsLastRes3d<B: Backend> {
    norm: LayerNorm<B>,
    block: ResBlock3d<B>,
}

impl<B: Backend> ChannelsLastRes3d<B> {
    fn new(channels: usize, device: &B::Device) -> Self {
        Self {
            norm: LayerNormConfig::new(channels).init(device),
            block: ResBlock3d::new(channels, channels, device),
        }
    }
}

impl<B: NormBackend + ConvBackend> ChannelsLastRes3d<B> {
    /// Channels-last `[B, D, H, W, C]` -> the same shape.
    fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let y = self.norm.forward(x.clone()).permute([0, 4, 1, 2, 3]);
        x + self.block.forward(y).permute([0, 2, 3, 4, 1])
    }
}

/// One block of a 3D encoder stage.
#[derive(Module, Debug)]
pub enum StageBlock3d<B: Backend> {
    /// A VSS3D block.
    Vss(VssBlock3d<B>),
    /// A residual convolution block (ablation).
    Conv(ChannelsLastRes3d<B>),
}

/// A 3D encoder stage: blocks at one resolution.
#[derive(Module, Debug)]
pub struct Stage3d<B: Backend> {
    blocks: Vec<StageBlock3d<B>>,
}

/// The VMamba encoder in 3D: patch embedding, four stages, patch merging between them.
#[derive(Module, Debug)]
pub struct VssmEncoder3d<B: Backend> {
    patch_embed: PatchEmbed3d<B>,
    layers: Vec<Stage3d<B>>,
    downsamples: Vec<PatchMerging3d<B>>,
}

impl<B: ModelBackend> VssmEncoder3d<B> {
    /// `[B, s, D, H, W]` -> the four stages' outputs, channels first.
    fn forward(&self, x: Tensor<B, 5>) -> Vec<Tensor<B, 5>> {
        let mut hidden = self.patch_embed.forward(x); // channels-last
        let mut outputs = Vec::with_capacity(self.layers.len());
        for (i, stage) in self.layers.iter().enumerate() {
            for block in &stage.blocks {
                hidden = match block {
                    StageBlock3d::Vss(b) => b.forward(hidden),
                    StageBlock3d::Conv(b) => b.forward(hidden),
                };
            }
            outputs.push(hidden.clone().permute([0, 4, 1, 2, 3]));
            if let Some(merge) = self.downsamples.get(i) {
                hidden = merge.forward(hidden);
            }
        }
        outputs
    }
}

/// MONAI's `UnetrUpBlock` in 3D: a transposed conv undoing one level's stride (no bias),
/// concatenation with the skip, residual block.
#[derive(Module, Debug)]
pub struct UpBlock3d<B: Backend> {
    transp_conv: ConvTranspose3d<B>,
    conv_block: ResBlock3d<B>,
}

impl<B: Backend> UpBlock3d<B> {
    fn new(cin: usize, cout: usize, stride: [usize; 3], device: &B::Device) -> Self {
        Self {
            transp_conv: ConvTranspose3dConfig::new([cin, cout], stride)
                .with_stride(stride)
                .with_bias(false)
                .init(device),
            conv_block: ResBlock3d::new(2 * cout, cout, device),
        }
    }
}

impl<B: NormBackend + ConvBackend> UpBlock3d<B> {
    /// `x: [B, cin, D, H, W]` and `skip: [B, cout, D·sd, H·sh, W·sw]` -> the skip's shape.
    fn forward(&self, x: Tensor<B, 5>, skip: Tensor<B, 5>) -> Tensor<B, 5> {
        self.conv_block.forward(Tensor::cat(
            vec![upsample_3d(&self.transp_conv, x), skip],
            1,
        ))
    }
}

/// The volumetric Swin-UMamba; field names follow the 2D network's (upstream's) module names.
#[derive(Module, Debug)]
pub struct SwinUMamba3d<B: Backend> {
    stem: Stem3d<B>,
    vssm_encoder: VssmEncoder3d<B>,
    encoder1: ResBlock3d<B>,
    encoder2: ResBlock3d<B>,
    encoder3: ResBlock3d<B>,
    encoder4: ResBlock3d<B>,
    encoder5: ResBlock3d<B>,
    decoder6: UpBlock3d<B>,
    decoder5: UpBlock3d<B>,
    decoder4: UpBlock3d<B>,
    decoder3: UpBlock3d<B>,
    decoder2: UpBlock3d<B>,
    decoder1: ResBlock3d<B>,
    out_layers: Vec<Conv3d<B>>,
    /// The five levels' strides, flattened (a plain field: kept with the module, not trained).
    strides: Vec<usize>,
}

impl<B: Backend> SwinUMamba3d<B> {
    /// The strides of the five downsamplings.
    pub fn strides(&self) -> Strides3d {
        let mut out = [[1; 3]; 5];
        for (i, s) in self.strides.iter().enumerate() {
            out[i / 3][i % 3] = *s;
        }
        out
    }

    /// How much coarser than the input each deep-supervision head is, per axis: the product of
    /// the strides above it (head 0 is at full resolution).
    pub fn head_strides(&self) -> [[usize; 3]; 4] {
        let strides = self.strides();
        let mut out = [[1; 3]; 4];
        for h in 1..4 {
            for a in 0..3 {
                out[h][a] = out[h - 1][a] * strides[h - 1][a];
            }
        }
        out
    }

    /// The same network (same weights) with `kernel` running the selective scan of every VSS3D
    /// block.
    pub fn with_scan_kernel(self, kernel: ScanKernel) -> Self {
        let encoder = self.vssm_encoder;
        let layers = encoder
            .layers
            .into_iter()
            .map(|stage| Stage3d {
                blocks: stage
                    .blocks
                    .into_iter()
                    .map(|block| match block {
                        StageBlock3d::Vss(b) => StageBlock3d::Vss(b.with_scan_kernel(kernel)),
                        other => other,
                    })
                    .collect(),
            })
            .collect();
        Self {
            vssm_encoder: VssmEncoder3d { layers, ..encoder },
            ..self
        }
    }

    /// Drops from `grads` the gradients of the encoder's stages and patch merging, as the 2D
    /// network's [`super::SwinUMamba::freeze_encoder`].
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
}

impl<B: ModelBackend> SwinUMamba3d<B> {
    /// `[batch, channels, D, H, W]` (each side divisible by the product of its strides) -> the
    /// first `heads` deep-supervision logits, full resolution first (`[batch, classes, …]` at the
    /// resolutions of [`Self::head_strides`]).
    pub fn forward_heads(&self, x: Tensor<B, 5>, heads: usize) -> Vec<Tensor<B, 5>> {
        let x1 = self.stem.norm.forward(self.stem.conv.forward(x.clone()));
        let enc1 = self.encoder1.forward(x);
        let enc2 = self.encoder2.forward(x1.clone());
        let [v1, v2, v3, hidden]: [Tensor<B, 5>; 4] = self
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
            .map(|(features, head)| forward_same_3d(head, features))
            .collect()
    }

    /// Full-resolution logits only (inference).
    pub fn logits(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.forward_heads(x, 1).swap_remove(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::Distribution;

    fn small(encoder: EncoderKind) -> ModelConfig {
        ModelConfig {
            encoder,
            spatial_dims: 3,
            ..ModelConfig::vss(4, [8, 16, 32, 64], [1, 1, 1, 1], 4)
        }
    }

    #[test]
    fn heads_come_at_the_resolutions_the_strides_give() {
        let device = Default::default();
        // Depth pooled only from the third level on (a thick-slice scan), rows and cols always.
        let strides: Strides3d = [[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]];
        let patch = [4, 32, 32];
        check_strides(&strides, patch).unwrap();
        for encoder in [EncoderKind::Vss, EncoderKind::Conv] {
            let model = small(encoder).init_3d::<Flex>(2, 3, strides, &device);
            assert_eq!(model.strides(), strides);
            let x = Tensor::<Flex, 5>::random(
                [1, 2, patch[0], patch[1], patch[2]],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let heads = model.forward_heads(x, 4);
            let expected = model.head_strides();
            assert_eq!(expected[3], [2, 8, 8]);
            for (y, s) in heads.iter().zip(expected) {
                assert_eq!(
                    y.dims(),
                    [1, 3, patch[0] / s[0], patch[1] / s[1], patch[2] / s[2]],
                    "{encoder:?}"
                );
            }
        }
    }

    #[test]
    fn strides_are_checked_against_the_patch() {
        assert!(check_strides(&ISOTROPIC_STRIDES, [32, 64, 32]).is_ok());
        assert!(check_strides(&ISOTROPIC_STRIDES, [40, 64, 32]).is_err());
        let mut three = ISOTROPIC_STRIDES;
        three[2] = [3, 2, 2];
        assert!(check_strides(&three, [96, 64, 64]).is_err());
    }

    #[test]
    fn every_parameter_gets_a_gradient_and_a_frozen_encoder_none() {
        type A = Autodiff<Flex>;
        let device = Default::default();
        let strides: Strides3d = [[2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 1, 1], [1, 1, 1]];
        let model = small(EncoderKind::Vss).init_3d::<A>(1, 2, strides, &device);
        let x = Tensor::<A, 5>::random([1, 1, 8, 8, 8], Distribution::Normal(0.0, 1.0), &device);
        let loss = model
            .forward_heads(x, 4)
            .into_iter()
            .map(|y| y.powi_scalar(2).mean())
            .reduce(|a, b| a + b)
            .expect("four heads");
        let grads = loss.backward();
        struct Count<'a>(&'a <A as AutodiffBackend>::Gradients, usize, usize);
        impl ModuleVisitor<A> for Count<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
                self.1 += 1;
                self.2 += param.val().grad(self.0).is_some() as usize;
            }
        }
        let mut count = Count(&grads, 0, 0);
        model.visit(&mut count);
        assert!(count.1 > 50, "{} parameters", count.1);
        assert_eq!(count.1, count.2, "parameters without a gradient");
        let mut params = GradientsParams::from_grads(grads, &model);
        let before = params.len();
        model.freeze_encoder(&mut params);
        assert!(params.len() < before, "freezing dropped nothing");
    }
}
