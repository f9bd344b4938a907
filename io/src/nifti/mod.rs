//! NIfTI-1 single-file (.nii, .nii.gz) reading and writing; the header type lives in `header.rs`
//! because the other formats carry it too.

mod data;
mod read;
mod write;

pub use data::NiftiData;
pub use read::{read_nifti, read_nifti_bytes, read_nifti_nd, read_nifti_raw};
pub use write::write_nifti;
pub(crate) use write::write_nifti_labels;
