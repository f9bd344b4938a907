//! Vision state-space model layers for burn: the selective scan with its own backward pass,
//! the four-direction cross-scan, SS2D and the VSS block, patch embedding and merging; and their
//! volumetric counterparts (the 2/4/6-direction 3D cross-scan, SS3D, 3D blocks).
//!
//! Layers are generic over [`scan::ScanBackend`], which every supported burn backend implements
//! (and `Autodiff` over any of them).

#![warn(missing_docs)]

/// Implements a backend-op trait with its default methods (burn's own ops) for the CubeCL
/// backends and the fusion wrapper: the host passes are for Flex only.
macro_rules! gpu_backends_keep_defaults {
    ($op:ident) => {
        #[cfg(feature = "cubecl")]
        impl<R, F, I, BT> $op for burn_cubecl::CubeBackend<R, F, I, BT>
        where
            R: burn_cubecl::CubeRuntime,
            F: burn_cubecl::FloatElement,
            I: burn_cubecl::IntElement,
            BT: burn_cubecl::BoolElement,
        {
        }

        #[cfg(feature = "fusion")]
        impl<B: burn_fusion::FusionBackend + $op> $op for burn_fusion::Fusion<B> {}
    };
}
pub(crate) use gpu_backends_keep_defaults;

pub mod blocks;
pub mod blocks3d;
pub mod cross_scan;
pub mod cross_scan3d;
pub mod crossing;
pub mod depthwise;
pub mod host;
pub mod linear;
pub mod scan;
pub mod ss2d;
pub mod ss3d;
#[cfg(test)]
mod testing;
pub mod weighted;

pub use blocks::{
    PatchEmbed, PatchEmbedConfig, PatchMerging, PatchMergingConfig, VssBlock, VssBlockConfig,
};
pub use blocks3d::{
    PatchEmbed3d, PatchEmbed3dConfig, PatchMerging3d, PatchMerging3dConfig, VssBlock3d,
    VssBlock3dConfig,
};
pub use cross_scan::{cross_merge, cross_scan};
pub use cross_scan3d::{cross_merge_3d, cross_scan_3d};
pub use crossing::{Channels, CrossScanBackend, Crossing};
pub use depthwise::DepthwiseBackend;
pub use linear::LinearBackend;
pub use scan::{selective_scan, ScanBackend, ScanKernel};
pub use ss2d::{Ss2d, Ss2dConfig};
pub use ss3d::{Ss3d, Ss3dConfig};
