//! The network: its configuration, its modules and forward pass, and the CPU ops with their own
//! backward passes that it runs on.

mod config;
mod network;
mod network3d;
pub mod ops;
pub mod torch_save;
pub mod weights;

pub use config::{EncoderKind, ModelConfig, DOWNSAMPLING, MAX_CONTEXT_SLICES};
pub use network::{
    ChannelsLastRes, ModelBackend, ResBlock, Stage, StageBlock, Stem, SwinUMamba, UpBlock,
    VssmEncoder, DEEP_SUPERVISION_HEADS,
};
pub use network3d::{
    check_strides, ChannelsLastRes3d, ResBlock3d, Stage3d, StageBlock3d, Stem3d, Strides3d,
    SwinUMamba3d, UpBlock3d, VssmEncoder3d, ISOTROPIC_STRIDES,
};

/// A trained network of either configuration, as a run folder holds it (inference only: training
/// keeps the concrete type).
// Both variants are whole networks of about the same size (some 22 KB of module tree each), held
// once per run: boxing one would only add an indirection, which is what the lint asks for.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Network<B: burn::prelude::Backend> {
    /// The 2D network over slices.
    Planar(SwinUMamba<B>),
    /// The volumetric network over 3D patches.
    Volumetric(SwinUMamba3d<B>),
}
