//! Reading one case of a dataset: its channels and label, checked against each other.

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;

use super::{dataset_err, Case, LoadedCase};
use crate::dicom::{is_dicom_file, read_dicom_seg_labels, read_dicom_series_with_geometry};
use crate::error::{IoError, Result};
use crate::format::read_volume;
use crate::geometry::grid_difference;
use crate::volume::Volume;

/// Whether a label path holds a DICOM SEG rather than a volume file: a folder, a DICOM file by
/// content, or a `.dcm` name (so that a damaged one is refused as DICOM, not as an unknown format).
fn is_seg_label(path: &Path) -> bool {
    path.is_dir()
        || is_dicom_file(path)
        || path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("dcm"))
}

/// Reads a case's channels and label, checking shapes agree, intensities are finite and label values are declared.
pub fn load_case(case: &Case, labels: &BTreeMap<u8, String>) -> Result<LoadedCase> {
    let Some(first) = case.images.first() else {
        return Err(dataset_err(Path::new(&case.id), "case has no image files"));
    };
    let (channels, geometry) = match &case.dicom {
        Some(series) => {
            let (volume, geometry) = read_dicom_series_with_geometry(series)?;
            (vec![volume], Some(geometry))
        }
        None => {
            let volumes = case
                .images
                .par_iter()
                .map(|p| read_volume(p))
                .collect::<Result<Vec<Volume>>>()?;
            (volumes, None)
        }
    };
    let shape = channels[0].shape;
    let grid = channels[0].header.affine();
    for (ch, (vol, path)) in channels.iter().zip(&case.images).enumerate() {
        same_grid(vol, path, &format!("channel {ch}"), (shape, &grid), first)?;
        if let Some(i) = vol.data.iter().position(|v| !v.is_finite()) {
            return Err(IoError::NonFinite {
                path: path.clone(),
                value: vol.data[i],
                voxel: voxel_index(i, shape),
            });
        }
    }
    let mut notes = Vec::new();
    let label = match &case.label {
        None => None,
        Some(path) if is_seg_label(path) => {
            let Some(geometry) = &geometry else {
                return Err(dataset_err(
                    path,
                    format!(
                        "a DICOM SEG label needs its image as a DICOM series folder, not {}",
                        first.display()
                    ),
                ));
            };
            // The SEG is placed on the series' own slices, so it lies on the image's grid by
            // construction; its frame of reference, orientation and positions are checked there.
            let seg = read_dicom_seg_labels(path, geometry, labels)?;
            notes.extend(seg.notes);
            Some(seg.labels)
        }
        Some(path) => {
            let vol = read_volume(path)?;
            same_grid(&vol, path, "label", (shape, &grid), first)?;
            Some(to_labels(&vol.data, labels, path, shape)?)
        }
    };
    Ok(LoadedCase {
        id: case.id.clone(),
        header: channels[0].header.clone(),
        channels,
        label,
        shape,
        notes,
    })
}

/// Refuses a file of a case whose shape or voxel grid (spacing, origin, axis directions) differs
/// from the first image's: its voxels would not line up with the image's.
fn same_grid(
    vol: &Volume,
    path: &Path,
    what: &str,
    (shape, grid): ([usize; 3], &[[f64; 4]; 4]),
    reference: &Path,
) -> Result<()> {
    if vol.shape != shape {
        return Err(IoError::ShapeMismatch {
            path: path.to_path_buf(),
            what: what.into(),
            shape: vol.shape,
            expected: shape,
            reference: reference.to_path_buf(),
        });
    }
    match grid_difference(&vol.header.affine(), grid) {
        None => Ok(()),
        Some(detail) => Err(IoError::GridMismatch {
            path: path.to_path_buf(),
            what: what.into(),
            detail,
            reference: reference.to_path_buf(),
        }),
    }
}

/// Converts label intensities to u8, refusing non-integers and values not declared in the dataset.
fn to_labels(
    values: &[f32],
    labels: &BTreeMap<u8, String>,
    path: &Path,
    shape: [usize; 3],
) -> Result<Vec<u8>> {
    let mut known = [false; 256];
    for &k in labels.keys() {
        known[k as usize] = true;
    }
    let convert = |v: f32| -> Option<u8> {
        if v.fract() == 0.0 && (0.0..=255.0).contains(&v) && known[v as usize] {
            Some(v as u8)
        } else {
            None
        }
    };
    let mut out = Vec::with_capacity(values.len());
    for (i, &v) in values.iter().enumerate() {
        match convert(v) {
            Some(l) => out.push(l),
            None => {
                return Err(IoError::InvalidLabel {
                    path: path.to_path_buf(),
                    value: v,
                    voxel: voxel_index(i, shape),
                    allowed: labels
                        .keys()
                        .map(|k| k.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
        }
    }
    Ok(out)
}

/// Flat index (x fastest) -> [x, y, z], for error messages people can look up in a viewer.
fn voxel_index(i: usize, shape: [usize; 3]) -> [usize; 3] {
    let (sx, sy) = (shape[0].max(1), shape[1].max(1));
    [i % sx, (i / sx) % sy, i / (sx * sy)]
}
