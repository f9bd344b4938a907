//! Writing NIfTI-1 single files, plain or gzip, through a temporary file renamed into place.

use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;

use super::data::NiftiData;
use crate::error::{IoError, Result};
use crate::fsutil::write_atomic;
use crate::header::{NiftiHeader, DATA_OFFSET, HEADER_SIZE};

/// Writes a NIfTI-1 file: datatype/bitpix/vox_offset come from `data`, everything else from `header`;
/// gzip when the path ends in .gz; written to a temporary file in the same folder and renamed.
pub fn write_nifti(path: &Path, header: &NiftiHeader, data: &NiftiData) -> Result<()> {
    let mut h = header.clone();
    h.datatype = data.datatype();
    h.bitpix = data.bitpix();
    h.vox_offset = DATA_OFFSET as f32;
    let voxels = h.element_count(path)?;
    if voxels != data.len() {
        return Err(IoError::LengthMismatch {
            path: path.to_path_buf(),
            expected: voxels,
            found: data.len(),
        });
    }
    let head = h.to_bytes();
    let body = data.encode(h.big_endian);
    let gz = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    write_atomic(path, |w| {
        if gz {
            // Level 6 (zlib's default): labels and scans compress well and writing stays fast.
            let mut enc = GzEncoder::new(w, Compression::new(6));
            enc.write_all(&head)?;
            enc.write_all(&[0u8; DATA_OFFSET - HEADER_SIZE])?;
            enc.write_all(&body)?;
            enc.finish()?;
        } else {
            w.write_all(&head)?;
            w.write_all(&[0u8; DATA_OFFSET - HEADER_SIZE])?;
            w.write_all(&body)?;
        }
        Ok(())
    })
}

/// Writes a uint8 label map as NIfTI-1 with the reference's geometry (header bytes otherwise
/// unchanged), scl 1/0.
pub(crate) fn write_nifti_labels(
    path: &Path,
    reference: &NiftiHeader,
    labels: &[u8],
) -> Result<()> {
    let mut h = reference.clone();
    h.scl_slope = 1.0;
    h.scl_inter = 0.0;
    let voxels = h.voxel_count(path)?;
    let shape_voxels: usize = reference.shape().iter().product();
    if labels.len() != voxels || labels.len() != shape_voxels {
        return Err(IoError::LengthMismatch {
            path: path.to_path_buf(),
            expected: voxels,
            found: labels.len(),
        });
    }
    write_nifti(path, &h, &NiftiData::U8(labels.to_vec()))
}
