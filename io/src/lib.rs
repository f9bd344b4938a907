//! Medical scans in and out: a NIfTI-1 reader/writer that checks header sizes before allocating, and
//! datasets in the Medical Segmentation Decathlon and nnU-Net v2 layouts, and 2D PNG/TIFF images as
//! one-slice volumes, and DICOM series found in patient folders.
//!
//! Layers, each using only those below it: `error`, `fsutil`, `header` and `volume` (shared by every
//! format); the format modules `nifti`, `image2d` and `dicom`, which never call each other; `format`,
//! which picks a reader or writer by file name; `dataset` on top (a DICOM series, being many files,
//! enters as a [`Case`] carrying a [`DicomSeries`] rather than through `format`).

#![warn(missing_docs)]

mod dataset;
pub mod dicom;
mod error;
mod format;
mod fsutil;
pub mod geometry;
mod header;
mod image2d;
mod nifti;
mod volume;

pub use dataset::{
    find_cases, find_dicom_cases, load_case, load_dataset, read_dataset_labels, Case, Dataset,
    DicomCases, LoadedCase,
};
pub use dicom::{
    dicom_series_geometry, find_dicom_series, is_dicom_file, read_dicom_series, write_dicom_seg,
    DicomFolder, DicomSeries, SeriesGeometry,
};
pub use error::{IoError, Result};
pub use format::{case_id, has_volume_ending, read_volume, write_labels, Format};
pub use fsutil::{write_atomic, write_bytes_atomic};
pub use geometry::{
    grid_difference, resample_bspline3, resample_cubic, resample_labels, resample_linear,
    resampled_affine, shape_for_spacing, Orientation,
};
pub use header::{NiftiHeader, MAX_VOXELS};
pub use image2d::{is_image2d, read_image2d, write_labels_image2d, IMAGE_ENDINGS};
pub use nifti::{
    read_nifti, read_nifti_bytes, read_nifti_nd, read_nifti_raw, write_nifti, NiftiData,
};
pub use volume::Volume;
