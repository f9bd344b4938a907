//! A binary DICOM Segmentation (SEG) object read back as a label map on its source series' grid:
//! what a training dataset's `labelsTr/CASE/` or `labelsTr/CASE.dcm` holds.
//!
//! - Segments become label values by SegmentLabel matched against the dataset's label names
//!   (case and surrounding spaces ignored); when some label does not match, every segment takes its
//!   SegmentNumber as value instead, and a note says so (mixing both rules could give two segments
//!   one value).
//! - Frames are placed on the series' slices by ReferencedSOPInstanceUID (and frame number), else
//!   by ImagePositionPatient; a frame whose position disagrees with the slice it cites, or that
//!   lies on no slice, is refused. The SEG must share the series' FrameOfReferenceUID, orientation,
//!   image size and pixel spacing: it is never resampled.
//! - Segments may not overlap: a voxel claimed by two segments of different values is refused,
//!   naming both segments and the voxel (a label map holds one value per voxel, and picking one
//!   silently would change the training target).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, OpenFileOptions};

use super::guard::check_lengths;
use super::seg::SEGMENTATION_STORAGE;
use super::series::SeriesGeometry;
use super::{first_item, functional, integer, numbers, text};
use crate::error::{IoError, Result};
use crate::header::MAX_VOXELS;

/// Largest difference of a direction cosine between the SEG's and the series' orientation (as
/// for the slices of one series).
const PARALLEL: f64 = 1e-3;

/// A DICOM SEG read as a label map, with what the reader had to decide on its own.
#[derive(Debug, Clone)]
pub struct SegLabels {
    /// Label value per voxel of the series' volume (column fastest, then row, then slice).
    pub labels: Vec<u8>,
    /// One line per decision a user should know of (label values taken from SegmentNumber).
    pub notes: Vec<String>,
}

fn seg_error(path: &Path, reason: impl Into<String>) -> IoError {
    IoError::Dicom {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Whether a DICOM file is a Segmentation object, by its header (SOP class or modality).
fn is_seg_file(path: &Path) -> bool {
    if !super::is_dicom_file(path) || check_lengths(path).is_err() {
        return false;
    }
    let Ok(obj) = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
    else {
        return false;
    };
    text(&obj, tags::SOP_CLASS_UID).as_deref() == Some(SEGMENTATION_STORAGE)
        || text(&obj, tags::MODALITY).as_deref() == Some("SEG")
}

/// The DICOM SEG file a label path stands for: the file itself, or the one SEG file under a
/// folder (any depth, any names); a folder with none or several is refused, naming it.
pub fn find_dicom_seg(path: &Path) -> Result<PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let mut files = Vec::new();
    super::discovery::walk(path, 0, &mut files)?;
    let segs: Vec<PathBuf> = files.into_iter().filter(|f| is_seg_file(f)).collect();
    match segs.len() {
        1 => Ok(segs.into_iter().next().unwrap_or_default()),
        0 => Err(IoError::Dataset {
            path: path.to_path_buf(),
            reason: "no DICOM SEG object in this label folder".into(),
        }),
        n => Err(IoError::Dataset {
            path: path.to_path_buf(),
            reason: format!(
                "{n} DICOM SEG objects in this label folder ({} and {}); keep one per case",
                segs[0].display(),
                segs[1].display()
            ),
        }),
    }
}

/// One frame of the SEG: its segment and where it lies.
struct Frame {
    segment: u16,
    /// (ReferencedSOPInstanceUID, ReferencedFrameNumber or 1) of its source image, if given.
    source: Option<(String, usize)>,
    position: Option<[f64; 3]>,
}

/// Reads the binary DICOM SEG at `path` as a label map on the series `geometry` describes (see the
/// [module](self) documentation for the rules); `names` are the dataset's labels.
pub fn read_dicom_seg_labels(
    path: &Path,
    geometry: &SeriesGeometry,
    names: &BTreeMap<u8, String>,
) -> Result<SegLabels> {
    let path = &find_dicom_seg(path)?;
    if !super::is_dicom_file(path) {
        return Err(seg_error(
            path,
            "not a DICOM file (expected a DICOM SEG label)",
        ));
    }
    check_lengths(path).map_err(|why| seg_error(path, format!("damaged: {why}")))?;
    let obj = OpenFileOptions::new()
        .open_file(path)
        .map_err(|e| seg_error(path, format!("cannot parse ({e})")))?;
    let class = text(&obj, tags::SOP_CLASS_UID).unwrap_or_default();
    if class != SEGMENTATION_STORAGE {
        return Err(seg_error(
            path,
            format!("SOP class {class:?} is not Segmentation Storage ({SEGMENTATION_STORAGE}): not a DICOM SEG"),
        ));
    }
    check_frame_of_reference(path, &obj, geometry)?;
    let kind = text(&obj, tags::SEGMENTATION_TYPE).unwrap_or_default();
    if kind != "BINARY" {
        return Err(seg_error(
            path,
            format!("SegmentationType {kind:?}: only BINARY segmentations are read"),
        ));
    }
    let rows = integer(&obj, tags::ROWS).unwrap_or(0);
    let cols = integer(&obj, tags::COLUMNS).unwrap_or(0);
    let (series_rows, series_cols) = geometry.size;
    if (rows, cols) != (series_rows as i64, series_cols as i64) {
        return Err(seg_error(
            path,
            format!(
                "{cols}x{rows} pixels per frame, the series' images ({}) have {series_cols}x{series_rows}",
                geometry.first_file.display()
            ),
        ));
    }
    if integer(&obj, tags::BITS_ALLOCATED) != Some(1) {
        return Err(seg_error(
            path,
            "BitsAllocated is not 1 (a binary SEG packs one bit per pixel)",
        ));
    }
    check_plane(path, &obj, geometry)?;
    let (values, notes) = segment_values(path, &obj, names)?;
    let frames = frames(path, &obj)?;
    let plane = series_rows * series_cols;
    let slices = geometry.instances.len();
    if (plane as u64) * (slices as u64) > MAX_VOXELS {
        return Err(seg_error(path, "the series is larger than a volume may be"));
    }
    let bits = pixel_bits(path, &obj, frames.len() * plane)?;
    let mut labels = vec![0u8; plane * slices];
    // Which segment set each voxel, to name both in an overlap.
    let mut owner = vec![0u16; plane * slices];
    for (f, frame) in frames.iter().enumerate() {
        let value = *values.get(&frame.segment).ok_or_else(|| {
            seg_error(
                path,
                format!(
                    "frame {} refers to segment {}, which SegmentSequence does not describe",
                    f + 1,
                    frame.segment
                ),
            )
        })?;
        let z = place(path, f, frame, geometry)?;
        for i in 0..plane {
            let bit = f * plane + i;
            if bits[bit / 8] >> (bit % 8) & 1 == 0 {
                continue;
            }
            let voxel = z * plane + i;
            if labels[voxel] != 0 && labels[voxel] != value {
                return Err(seg_error(
                    path,
                    format!(
                        "segments {} and {} overlap at voxel ({}, {}, {}) (column, row, slice in \
                         position order): a label map holds one label per voxel",
                        owner[voxel],
                        frame.segment,
                        i % series_cols,
                        i / series_cols,
                        z
                    ),
                ));
            }
            labels[voxel] = value;
            owner[voxel] = frame.segment;
        }
    }
    Ok(SegLabels { labels, notes })
}

/// Refuses a SEG on another frame of reference than the series: its positions mean other places.
fn check_frame_of_reference(
    path: &Path,
    obj: &InMemDicomObject,
    geometry: &SeriesGeometry,
) -> Result<()> {
    let seg = text(obj, tags::FRAME_OF_REFERENCE_UID);
    if seg != geometry.frame_of_reference {
        let show = |uid: &Option<String>| uid.clone().unwrap_or_else(|| "none".into());
        return Err(seg_error(
            path,
            format!(
                "FrameOfReferenceUID {} differs from the image series' {} ({}): the SEG was not \
                 made on this series",
                show(&seg),
                show(&geometry.frame_of_reference),
                geometry.first_file.display()
            ),
        ));
    }
    Ok(())
}

/// Refuses a SEG whose frames are turned against the series' slices or have other pixel sizes.
fn check_plane(path: &Path, obj: &InMemDicomObject, geometry: &SeriesGeometry) -> Result<()> {
    let shared = first_item(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    let first = first_item(obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    if let Some(o) = functional(first, shared, tags::PLANE_ORIENTATION_SEQUENCE)
        .and_then(|o| numbers(o, tags::IMAGE_ORIENTATION_PATIENT))
    {
        let turned = o
            .iter()
            .zip(&geometry.orientation)
            .map(|(a, b)| (a - b).abs())
            .fold(if o.len() == 6 { 0.0 } else { f64::INFINITY }, f64::max);
        if turned > PARALLEL {
            return Err(seg_error(
                path,
                format!(
                    "ImageOrientationPatient {o:?} differs from the series' {:?}: SEG frames must \
                     lie on the series' slices",
                    geometry.orientation
                ),
            ));
        }
    }
    if let Some(s) = functional(first, shared, tags::PIXEL_MEASURES_SEQUENCE)
        .and_then(|m| numbers(m, tags::PIXEL_SPACING))
    {
        let want = geometry.pixel_spacing;
        let off = s.len() != 2 || (0..2).any(|i| (s[i] - want[i]).abs() > 1e-3 * want[i]);
        if off {
            return Err(seg_error(
                path,
                format!("PixelSpacing {s:?} differs from the series' {want:?}"),
            ));
        }
    }
    Ok(())
}

/// Segment number -> label value, and a note when the numbers had to be used.
fn segment_values(
    path: &Path,
    obj: &InMemDicomObject,
    names: &BTreeMap<u8, String>,
) -> Result<(BTreeMap<u16, u8>, Vec<String>)> {
    let items = obj
        .get(tags::SEGMENT_SEQUENCE)
        .and_then(|e| e.items())
        .filter(|items| !items.is_empty())
        .ok_or_else(|| seg_error(path, "no SegmentSequence"))?;
    let mut segments = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let number = integer(item, tags::SEGMENT_NUMBER)
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| {
                seg_error(path, format!("segment item {} has no SegmentNumber", i + 1))
            })?;
        segments.push((number, text(item, tags::SEGMENT_LABEL).unwrap_or_default()));
    }
    let key = |name: &str| name.trim().to_lowercase();
    let by_name: BTreeMap<String, u8> = names
        .iter()
        .filter(|(value, _)| **value != 0)
        .map(|(value, name)| (key(name), *value))
        .collect();
    let matched: Vec<Option<u8>> = segments
        .iter()
        .map(|(_, label)| by_name.get(&key(label)).copied())
        .collect();
    let mut distinct: Vec<u8> = matched.iter().flatten().copied().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if matched.iter().all(Option::is_some) && distinct.len() == segments.len() {
        let values = segments
            .iter()
            .zip(matched)
            .map(|((number, _), value)| (*number, value.unwrap_or(0)))
            .collect();
        return Ok((values, Vec::new()));
    }
    let allowed = || {
        names
            .iter()
            .map(|(v, n)| format!("{v} {n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut values = BTreeMap::new();
    for (number, label) in &segments {
        let value = u8::try_from(*number)
            .ok()
            .filter(|v| *v != 0 && names.contains_key(v))
            .ok_or_else(|| {
                seg_error(
                    path,
                    format!(
                        "segment {number} ({label:?}) matches no label name of dataset.json, and \
                         its number is not a label value either (labels: {})",
                        allowed()
                    ),
                )
            })?;
        values.insert(*number, value);
    }
    let unmatched: Vec<String> = segments
        .iter()
        .zip(&matched)
        .filter(|(_, m)| m.is_none())
        .map(|((number, label), _)| format!("{number} {label:?}"))
        .collect();
    let why = if unmatched.is_empty() {
        "two segments have the same label name".to_string()
    } else {
        format!("segment(s) {} match no label name", unmatched.join(", "))
    };
    let note = format!(
        "{}: {why} of dataset.json; label values are taken from SegmentNumber ({})",
        path.display(),
        values
            .iter()
            .map(|(n, v)| format!("segment {n} -> {v} {:?}", names[v]))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok((values, vec![note]))
}

/// Each frame's segment, source image and position, from the per-frame (or shared) groups.
fn frames(path: &Path, obj: &InMemDicomObject) -> Result<Vec<Frame>> {
    let count = integer(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1);
    let groups = obj
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items())
        .unwrap_or(&[]);
    if count < 0 || groups.len() as i64 != count {
        return Err(seg_error(
            path,
            format!(
                "NumberOfFrames is {count} but PerFrameFunctionalGroupsSequence has {} items: the \
                 frames cannot be placed",
                groups.len()
            ),
        ));
    }
    let shared = first_item(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    groups
        .iter()
        .enumerate()
        .map(|(f, group)| {
            let segment = functional(Some(group), shared, tags::SEGMENT_IDENTIFICATION_SEQUENCE)
                .and_then(|s| integer(s, tags::REFERENCED_SEGMENT_NUMBER))
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| {
                    seg_error(path, format!("frame {}: no ReferencedSegmentNumber", f + 1))
                })?;
            let source = functional(Some(group), shared, tags::DERIVATION_IMAGE_SEQUENCE)
                .and_then(|d| first_item(d, tags::SOURCE_IMAGE_SEQUENCE))
                .and_then(|s| {
                    let uid = text(s, tags::REFERENCED_SOP_INSTANCE_UID)?;
                    let frame = integer(s, tags::REFERENCED_FRAME_NUMBER)
                        .unwrap_or(1)
                        .max(1);
                    Some((uid, frame as usize))
                });
            let position = functional(Some(group), shared, tags::PLANE_POSITION_SEQUENCE)
                .and_then(|p| numbers(p, tags::IMAGE_POSITION_PATIENT))
                .filter(|p| p.len() == 3)
                .map(|p| [p[0], p[1], p[2]]);
            Ok(Frame {
                segment,
                source,
                position,
            })
        })
        .collect()
}

/// The slice (in the volume's order) a frame lies on: the instance it cites, checked against its
/// position when it gives one, else the slice at its position.
fn place(path: &Path, f: usize, frame: &Frame, geometry: &SeriesGeometry) -> Result<usize> {
    // A micrometre-level tolerance: the positions are decimal strings of the same numbers.
    let tolerance = (0.01 * geometry.slice_spacing).max(0.01);
    let at = |p: &[f64; 3], z: usize| {
        let q = geometry.positions[z];
        (0..3).all(|i| (p[i] - q[i]).abs() <= tolerance)
    };
    let cited = frame.source.as_ref().and_then(|(uid, n)| {
        geometry
            .instances
            .iter()
            .position(|i| &i.instance_uid == uid && i.frame == *n)
    });
    match (cited, frame.position) {
        (Some(z), Some(p)) if !at(&p, z) => Err(seg_error(
            path,
            format!(
                "frame {} cites the series' image at {:?} but lies at {p:?} (LPS mm)",
                f + 1,
                geometry.positions[z]
            ),
        )),
        (Some(z), _) => Ok(z),
        (None, Some(p)) => (0..geometry.positions.len())
            .find(|&z| at(&p, z))
            .ok_or_else(|| {
                seg_error(
                    path,
                    format!(
                        "frame {} at {p:?} (LPS mm) lies on none of the series' slices and cites \
                         none of its images",
                        f + 1
                    ),
                )
            }),
        (None, None) => Err(seg_error(
            path,
            format!(
                "frame {} has neither a source image of the series nor an ImagePositionPatient",
                f + 1
            ),
        )),
    }
}

/// The packed bits of every frame (first pixel in the lowest bit, frames back to back), checked
/// to hold at least `pixels` bits.
fn pixel_bits(path: &Path, obj: &InMemDicomObject, pixels: usize) -> Result<Vec<u8>> {
    let element = obj
        .get(tags::PIXEL_DATA)
        .ok_or_else(|| seg_error(path, "no PixelData"))?;
    if element.value().fragments().is_some() {
        return Err(seg_error(
            path,
            "compressed (encapsulated) pixel data in a SEG is not read; store it uncompressed",
        ));
    }
    let bytes = element
        .to_bytes()
        .map_err(|e| seg_error(path, format!("PixelData is not readable ({e})")))?;
    if bytes.len() < pixels.div_ceil(8) {
        return Err(seg_error(
            path,
            format!(
                "PixelData holds {} bytes, the frames need {} ({pixels} one-bit pixels)",
                bytes.len(),
                pixels.div_ceil(8)
            ),
        ));
    }
    Ok(bytes.into_owned())
}
