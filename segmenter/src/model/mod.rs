//! The network: its configuration, its modules and forward pass, and the CPU ops with their own
//! backward passes that it runs on.

mod config;
mod network;
pub mod ops;
pub mod torch_save;
pub mod weights;

pub use config::{EncoderKind, ModelConfig, DOWNSAMPLING, MAX_CONTEXT_SLICES};
pub use network::{
    ChannelsLastRes, ModelBackend, ResBlock, Stage, StageBlock, Stem, SwinUMamba, UpBlock,
    VssmEncoder, DEEP_SUPERVISION_HEADS,
};
