//! Vision state-space model layers for burn: the selective scan with its own backward pass,
//! the four-direction cross-scan, SS2D and the VSS block, patch embedding and merging.
//!
//! Layers are generic over [`scan::ScanBackend`], which every supported burn backend implements
//! (and `Autodiff` over any of them).

#![warn(missing_docs)]

pub mod blocks;
pub mod cross_scan;
pub mod host;
pub mod scan;
pub mod ss2d;

pub use blocks::{
    PatchEmbed, PatchEmbedConfig, PatchMerging, PatchMergingConfig, VssBlock, VssBlockConfig,
};
pub use cross_scan::{cross_merge, cross_scan};
pub use scan::{selective_scan, ScanBackend, ScanKernel};
pub use ss2d::{Ss2d, Ss2dConfig};
