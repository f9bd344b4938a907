//! Medical scans in and out: a NIfTI-1 reader/writer that checks header sizes before allocating, and
//! datasets in the Medical Segmentation Decathlon and nnU-Net v2 layouts, and 2D PNG/TIFF images as
//! one-slice volumes.

#![warn(missing_docs)]

mod dataset;
mod error;
mod fsutil;
pub mod geometry;
mod image2d;
mod nifti;

pub use dataset::{
    find_cases, load_case, load_dataset, read_dataset_labels, Case, Dataset, LoadedCase,
};
pub use error::{IoError, Result};
pub use fsutil::{write_atomic, write_bytes_atomic};
pub use geometry::{
    resample_cubic, resample_labels, resample_linear, resampled_affine, shape_for_spacing,
    Orientation,
};
pub use image2d::{is_image2d, read_image2d, read_volume, write_labels_image2d, IMAGE_ENDINGS};
pub use nifti::{
    read_nifti, read_nifti_bytes, read_nifti_nd, read_nifti_raw, write_labels, write_nifti,
    NiftiData, NiftiHeader, Volume, MAX_VOXELS,
};
