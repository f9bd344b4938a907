//! What the training loop needs of a network, so that one loop trains the 2D and the 3D
//! network: the loss of a flat batch, freezing the encoder, and the network validation predicts
//! with.

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use super::loss::{deep_supervision_loss, deep_supervision_loss_3d};
use crate::model::{ModelBackend, Network, SwinUMamba, SwinUMamba3d};

/// A network the loop can train: [`SwinUMamba`] (2D) or [`SwinUMamba3d`].
pub trait Trainable<B>: AutodiffModule<B> + Sync
where
    B: AutodiffBackend + ModelBackend,
    B::InnerBackend: ModelBackend,
{
    /// The deep-supervision loss of a batch: images `dims` = `[batch, channels, spatial…]`
    /// row-major, labels `[batch, spatial…]`.
    fn loss(
        &self,
        images: Vec<f32>,
        labels: &[u8],
        dims: &[usize],
        classes: usize,
        device: &B::Device,
    ) -> Tensor<B, 1>;

    /// Drops the gradients of the encoder's VSS stages and patch merging (frozen epochs).
    fn freeze_encoder(&self, grads: &mut GradientsParams);

    /// The network with the weights as they are, for validation (which predicts as `predict`
    /// does).
    fn inference_network(&self) -> Network<B::InnerBackend>;
}

impl<B> Trainable<B> for SwinUMamba<B>
where
    B: AutodiffBackend + ModelBackend,
    B::InnerBackend: ModelBackend,
{
    fn loss(
        &self,
        images: Vec<f32>,
        labels: &[u8],
        dims: &[usize],
        classes: usize,
        device: &B::Device,
    ) -> Tensor<B, 1> {
        let dims: [usize; 4] = dims.try_into().expect("a 2D batch has four dimensions");
        deep_supervision_loss(self, images, labels, dims, classes, device)
    }

    fn freeze_encoder(&self, grads: &mut GradientsParams) {
        SwinUMamba::freeze_encoder(self, grads);
    }

    fn inference_network(&self) -> Network<B::InnerBackend> {
        Network::Planar(self.valid())
    }
}

impl<B> Trainable<B> for SwinUMamba3d<B>
where
    B: AutodiffBackend + ModelBackend,
    B::InnerBackend: ModelBackend,
{
    fn loss(
        &self,
        images: Vec<f32>,
        labels: &[u8],
        dims: &[usize],
        classes: usize,
        device: &B::Device,
    ) -> Tensor<B, 1> {
        let dims: [usize; 5] = dims.try_into().expect("a 3D batch has five dimensions");
        deep_supervision_loss_3d(self, images, labels, dims, classes, device)
    }

    fn freeze_encoder(&self, grads: &mut GradientsParams) {
        SwinUMamba3d::freeze_encoder(self, grads);
    }

    fn inference_network(&self) -> Network<B::InnerBackend> {
        Network::Volumetric(self.valid())
    }
}
