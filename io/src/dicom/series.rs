//! A series' slices as one volume: read every file, check that the slices form one regular stack,
//! order them along the slice normal and build the voxel-to-world affine (LPS turned into RAS).

use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use rayon::prelude::*;

use super::guard::check_lengths;
use super::pixels::decode_frames;
use super::{first_item, functional, integer, numbers, DicomSeries};
use crate::error::{IoError, Result};
use crate::header::NiftiHeader;
use crate::volume::Volume;

/// Largest difference of a direction cosine between slices of one stack: far above the rounding
/// of ImageOrientationPatient's decimal strings, far below a slice that is really turned.
const PARALLEL: f64 = 1e-3;

/// Largest deviation of a slice step from the median step: relative part and floor in mm (the
/// decimal strings of ImagePositionPatient round to about a micrometre).
const STEP_TOLERANCE: (f64, f64) = (0.01, 0.005);

/// Largest angle, in degrees, between the stacking direction and the slice normal before a stack
/// counts as tilted (gantry tilt) or sheared.
const MAX_TILT_DEGREES: f64 = 0.1;

/// One slice (a file, or a frame of a multi-frame file) with where it lies and its intensities.
#[derive(Debug, Clone)]
struct Slice {
    path: PathBuf,
    frame: usize,
    /// ImagePositionPatient: the centre of the first pixel, LPS mm.
    position: [f64; 3],
    /// ImageOrientationPatient: row direction (along a row, column index increasing), then column.
    orientation: [f64; 6],
    /// PixelSpacing: between rows, then between columns (mm).
    spacing: [f64; 2],
    /// Rows, columns.
    size: (usize, usize),
    /// The DICOM instance (and frame) the slice came from.
    instance: SourceInstance,
    /// FrameOfReferenceUID of the slice's file.
    frame_of_reference: Option<String>,
    /// Intensities with RescaleSlope/Intercept applied, column index fastest.
    values: Vec<f32>,
}

/// The DICOM instance a slice of a volume came from: what a derived object (a DICOM SEG) cites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInstance {
    /// SOPClassUID.
    pub class_uid: String,
    /// SOPInstanceUID.
    pub instance_uid: String,
    /// Frame number (1-based) within a multi-frame instance; 1 for a classic image.
    pub frame: usize,
}

/// Where each slice of a series' volume came from and lies, in the volume's slice order: what a
/// DICOM SEG of a label map on that volume references.
#[derive(Debug, Clone)]
pub struct SeriesGeometry {
    /// One per slice of the volume (z order).
    pub instances: Vec<SourceInstance>,
    /// ImagePositionPatient of each slice (LPS mm).
    pub positions: Vec<[f64; 3]>,
    /// ImageOrientationPatient shared by the slices.
    pub orientation: [f64; 6],
    /// PixelSpacing (between rows, between columns).
    pub pixel_spacing: [f64; 2],
    /// Distance between slice centres along the normal (mm).
    pub slice_spacing: f64,
    /// Rows, columns.
    pub size: (usize, usize),
    /// The series' first file, whose patient, study and frame-of-reference attributes a derived
    /// object copies.
    pub first_file: PathBuf,
    /// FrameOfReferenceUID of the first slice (along the normal), which a derived object must share.
    pub frame_of_reference: Option<String>,
}

impl Slice {
    /// Where this slice is, for messages: the file and, in a multi-frame file, the frame.
    fn place(&self) -> String {
        if self.frame > 0 {
            format!("{} frame {}", self.path.display(), self.frame + 1)
        } else {
            self.path.display().to_string()
        }
    }
}

/// A refusal about one file.
fn file_error(path: &Path, reason: impl Into<String>) -> IoError {
    IoError::Dicom {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Geometry and rescale of one frame, from the classic attributes or an enhanced object's
/// functional groups (frame group first, then shared group, then the top level).
struct FrameAttributes {
    position: Option<Vec<f64>>,
    orientation: Option<Vec<f64>>,
    spacing: Option<Vec<f64>>,
    rescale: (f64, f64),
}

fn frame_attributes(
    obj: &InMemDicomObject,
    frame_group: Option<&InMemDicomObject>,
    shared: Option<&InMemDicomObject>,
) -> FrameAttributes {
    let group_numbers = |sequence, tag| {
        functional(frame_group, shared, sequence).and_then(|item| numbers(item, tag))
    };
    let position = group_numbers(tags::PLANE_POSITION_SEQUENCE, tags::IMAGE_POSITION_PATIENT)
        .or_else(|| numbers(obj, tags::IMAGE_POSITION_PATIENT));
    let orientation = group_numbers(
        tags::PLANE_ORIENTATION_SEQUENCE,
        tags::IMAGE_ORIENTATION_PATIENT,
    )
    .or_else(|| numbers(obj, tags::IMAGE_ORIENTATION_PATIENT));
    let spacing = group_numbers(tags::PIXEL_MEASURES_SEQUENCE, tags::PIXEL_SPACING)
        .or_else(|| numbers(obj, tags::PIXEL_SPACING));
    let scalar = |tag| {
        group_numbers(tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE, tag)
            .or_else(|| numbers(obj, tag))
            .and_then(|v| v.first().copied())
    };
    let rescale = (
        scalar(tags::RESCALE_SLOPE).unwrap_or(1.0),
        scalar(tags::RESCALE_INTERCEPT).unwrap_or(0.0),
    );
    FrameAttributes {
        position,
        orientation,
        spacing,
        rescale,
    }
}

/// The slices of one file: one for a classic image, one per frame for an enhanced multi-frame one;
/// with `pixels` false, only the header is read and the slices' values are left empty.
fn read_slices(path: &Path, pixels: bool) -> Result<Vec<Slice>> {
    check_lengths(path).map_err(|why| file_error(path, format!("damaged: {why}")))?;
    let options = if pixels {
        OpenFileOptions::new()
    } else {
        OpenFileOptions::new().read_until(tags::PIXEL_DATA)
    };
    let obj: DefaultDicomObject = options
        .open_file(path)
        .map_err(|e| file_error(path, format!("cannot parse ({e})")))?;
    let rows = integer(&obj, tags::ROWS).unwrap_or(0).max(0) as usize;
    let cols = integer(&obj, tags::COLUMNS).unwrap_or(0).max(0) as usize;
    let plane = (rows * cols).max(1);
    let (raw, frames) = if pixels {
        let raw = decode_frames(&obj).map_err(|reason| file_error(path, reason))?;
        let frames = raw.len() / plane;
        (raw, frames)
    } else {
        let frames = integer(&obj, tags::NUMBER_OF_FRAMES)
            .unwrap_or(1)
            .clamp(1, 1 << 20);
        (Vec::new(), frames as usize)
    };
    let frame_of_reference = super::text(&obj, tags::FRAME_OF_REFERENCE_UID);
    let instance = SourceInstance {
        class_uid: super::text(&obj, tags::SOP_CLASS_UID).unwrap_or_default(),
        instance_uid: super::text(&obj, tags::SOP_INSTANCE_UID).unwrap_or_default(),
        frame: 0,
    };
    let shared = first_item(&obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    let per_frame = obj
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items());
    if frames > 1 && per_frame.is_none_or(|items| items.len() != frames) {
        return Err(file_error(
            path,
            format!(
                "{frames} frames without one PerFrameFunctionalGroupsSequence item each: the \
                 frames' positions are unknown"
            ),
        ));
    }
    (0..frames)
        .map(|frame| {
            let samples = raw.get(frame * plane..(frame + 1) * plane).unwrap_or(&[]);
            let group = per_frame.and_then(|items| items.get(frame));
            let attributes = frame_attributes(&obj, group, shared);
            let missing =
                |what: &str| file_error(path, format!("frame {}: no usable {what}", frame + 1));
            let vector = |v: Option<Vec<f64>>, n: usize, what: &str| {
                v.filter(|v| v.len() == n).ok_or_else(|| missing(what))
            };
            let position = vector(attributes.position, 3, "ImagePositionPatient (3 values)")?;
            let orientation = vector(
                attributes.orientation,
                6,
                "ImageOrientationPatient (6 values)",
            )?;
            let spacing = vector(attributes.spacing, 2, "PixelSpacing (2 values)")?;
            if spacing.iter().any(|s| *s <= 0.0) {
                return Err(file_error(
                    path,
                    format!("PixelSpacing {spacing:?} is not positive"),
                ));
            }
            let (slope, intercept) = attributes.rescale;
            Ok(Slice {
                path: path.to_path_buf(),
                frame,
                position: [position[0], position[1], position[2]],
                orientation: std::array::from_fn(|i| orientation[i]),
                spacing: [spacing[0], spacing[1]],
                size: (rows, cols),
                instance: SourceInstance {
                    frame: frame + 1,
                    ..instance.clone()
                },
                frame_of_reference: frame_of_reference.clone(),
                values: samples
                    .iter()
                    .map(|v| (v * slope + intercept) as f32)
                    .collect(),
            })
        })
        .collect()
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

/// The row and column directions of an ImageOrientationPatient, checked to be orthonormal.
fn directions(orientation: [f64; 6]) -> std::result::Result<([f64; 3], [f64; 3]), String> {
    let row = [orientation[0], orientation[1], orientation[2]];
    let col = [orientation[3], orientation[4], orientation[5]];
    let unit = |v: [f64; 3]| (norm(v) - 1.0).abs() < 1e-2;
    if !unit(row) || !unit(col) || dot(row, col).abs() > 1e-2 {
        return Err(format!(
            "ImageOrientationPatient {orientation:?} is not two perpendicular unit vectors"
        ));
    }
    Ok((row, col))
}

/// The median of some positive numbers.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Checks that `slices` form one regular stack, sorts them along the slice normal, and returns the
/// voxel -> world affine in RAS+ mm; the error says what is wrong (the caller names the series).
fn stack_affine(slices: &mut [Slice]) -> std::result::Result<[[f64; 4]; 4], String> {
    if slices.len() < 2 {
        return Err("fewer than two slices".into());
    }
    let first = slices[0].clone();
    for s in slices.iter() {
        if s.size != first.size {
            return Err(format!(
                "mixed image sizes: {}x{} in {}, {}x{} in {}",
                first.size.1,
                first.size.0,
                first.place(),
                s.size.1,
                s.size.0,
                s.place()
            ));
        }
        let turned = (0..6)
            .map(|i| (s.orientation[i] - first.orientation[i]).abs())
            .fold(0.0, f64::max);
        if turned > PARALLEL {
            return Err(format!(
                "slices are not parallel: ImageOrientationPatient of {} differs from {} by {turned:.4}",
                s.place(),
                first.place()
            ));
        }
        if (0..2).any(|i| (s.spacing[i] - first.spacing[i]).abs() > 1e-3 * first.spacing[i]) {
            return Err(format!(
                "mixed PixelSpacing: {:?} in {}, {:?} in {}",
                first.spacing,
                first.place(),
                s.spacing,
                s.place()
            ));
        }
    }
    let (row, col) = directions(first.orientation)?;
    let normal = cross(row, col);
    let normal = normal.map(|v| v / norm(normal));
    slices.sort_by(|a, b| {
        dot(a.position, normal)
            .total_cmp(&dot(b.position, normal))
            .then(a.path.cmp(&b.path))
            .then(a.frame.cmp(&b.frame))
    });
    let depth: Vec<f64> = slices.iter().map(|s| dot(s.position, normal)).collect();
    let steps: Vec<f64> = depth.windows(2).map(|w| w[1] - w[0]).collect();
    let typical = median(&steps);
    check_steps(slices, &depth, &steps, typical)?;
    check_tilt(slices, normal)?;
    let n = slices.len();
    let (p0, p_last) = (slices[0].position, slices[n - 1].position);
    let step = sub(p_last, p0).map(|v| v / (n - 1) as f64);
    let [row_spacing, col_spacing] = first.spacing;
    // Voxel (i = column, j = row, k = slice) -> LPS; NIfTI's RAS negates the first two axes.
    let lps = [
        row.map(|v| v * col_spacing),
        col.map(|v| v * row_spacing),
        step,
        p0,
    ];
    let flip = [-1.0, -1.0, 1.0];
    let mut affine = [[0.0; 4]; 4];
    for (r, out) in affine.iter_mut().take(3).enumerate() {
        *out = std::array::from_fn(|c| lps[c][r] * flip[r]);
    }
    affine[3][3] = 1.0;
    Ok(affine)
}

/// Refuses duplicate positions, missing slices and uneven spacing.
fn check_steps(
    slices: &[Slice],
    depth: &[f64],
    steps: &[f64],
    typical: f64,
) -> std::result::Result<(), String> {
    let (relative, floor) = STEP_TOLERANCE;
    let tolerance = (relative * typical).max(floor);
    if let Some(k) = steps.iter().position(|s| *s < tolerance) {
        let shared = depth
            .iter()
            .filter(|d| (*d - depth[k]).abs() < tolerance)
            .count();
        return Err(format!(
            "{shared} slices share position {:.3} mm along the normal ({} and {}): several echoes, \
             phases or time points in one series are not read",
            depth[k],
            slices[k].place(),
            slices[k + 1].place()
        ));
    }
    for (k, step) in steps.iter().enumerate() {
        if (step - typical).abs() <= tolerance {
            continue;
        }
        let missing = (step / typical).round() - 1.0;
        return Err(if missing >= 1.0 {
            format!(
                "missing slices: a gap of {step:.3} mm between {} and {} where slices are \
                 {typical:.3} mm apart (about {missing} slice(s) missing)",
                slices[k].place(),
                slices[k + 1].place()
            )
        } else {
            format!(
                "uneven slice spacing: {step:.3} mm between {} and {}, {typical:.3} mm elsewhere",
                slices[k].place(),
                slices[k + 1].place()
            )
        });
    }
    Ok(())
}

/// Refuses a stack whose slices do not line up along their normal (gantry tilt, shear).
fn check_tilt(slices: &[Slice], normal: [f64; 3]) -> std::result::Result<(), String> {
    let p0 = slices[0].position;
    let limit = MAX_TILT_DEGREES.to_radians().tan();
    for s in &slices[1..] {
        let offset = sub(s.position, p0);
        let along = dot(offset, normal);
        let across = norm(sub(offset, normal.map(|v| v * along)));
        if across > limit * along.abs() + 0.01 {
            let angle = across.atan2(along.abs()).to_degrees();
            return Err(format!(
                "slices are stacked at {angle:.2} degrees to their normal (gantry tilt or a \
                 sheared stack, {} is {across:.2} mm off the line); resample it first (dcm2niix \
                 does)",
                s.place()
            ));
        }
    }
    Ok(())
}

/// Reads a series found by [`find_dicom_series`](super::find_dicom_series) as a volume: voxel x along
/// a row (DICOM's column index), y down the columns (row index), z along the slice normal in the
/// order of increasing position; intensities with RescaleSlope/Intercept applied. A series that is
/// not one regular stack is refused naming the series and what is wrong.
pub fn read_dicom_series(series: &DicomSeries) -> Result<Volume> {
    Ok(read_dicom_series_with_geometry(series)?.0)
}

/// [`read_dicom_series`] and [`dicom_series_geometry`] in one pass over the files: the volume and
/// where each of its slices came from (what a DICOM SEG label on the series is placed by).
pub fn read_dicom_series_with_geometry(series: &DicomSeries) -> Result<(Volume, SeriesGeometry)> {
    let (slices, affine) = sorted_stack(series, true)?;
    let (rows, cols) = slices[0].size;
    let shape = [cols, rows, slices.len()];
    let header = NiftiHeader::with_affine(shape, &affine).ok_or_else(|| {
        series_error(
            series,
            format!(
                "{cols}x{rows}x{} voxels do not fit a NIfTI-1 header (at most 32767 per axis)",
                slices.len()
            ),
        )
    })?;
    let mut data = Vec::with_capacity(shape.iter().product());
    for slice in &slices {
        data.extend_from_slice(&slice.values);
    }
    let geometry = geometry_of(series, &slices, &affine);
    let volume = Volume {
        header,
        shape,
        data,
    };
    Ok((volume, geometry))
}

/// Where each slice of [`read_dicom_series`]'s volume came from, from the files' headers only
/// (the same checks and the same slice order).
pub fn dicom_series_geometry(series: &DicomSeries) -> Result<SeriesGeometry> {
    let (slices, affine) = sorted_stack(series, false)?;
    Ok(geometry_of(series, &slices, &affine))
}

/// The geometry of checked, sorted slices.
fn geometry_of(series: &DicomSeries, slices: &[Slice], affine: &[[f64; 4]; 4]) -> SeriesGeometry {
    let slice_spacing = (0..3)
        .map(|r| affine[r][2] * affine[r][2])
        .sum::<f64>()
        .sqrt();
    SeriesGeometry {
        instances: slices.iter().map(|s| s.instance.clone()).collect(),
        positions: slices.iter().map(|s| s.position).collect(),
        orientation: slices[0].orientation,
        pixel_spacing: slices[0].spacing,
        slice_spacing,
        size: slices[0].size,
        first_file: series.files.first().cloned().unwrap_or_default(),
        frame_of_reference: slices[0].frame_of_reference.clone(),
    }
}

/// A refusal of a whole series, named by its id.
fn series_error(series: &DicomSeries, reason: String) -> IoError {
    IoError::DicomSeries {
        path: series.files.first().cloned().unwrap_or_default(),
        series: series.id.clone(),
        reason,
    }
}

/// The series' slices, checked and sorted along the normal, and the volume's affine.
fn sorted_stack(series: &DicomSeries, pixels: bool) -> Result<(Vec<Slice>, [[f64; 4]; 4])> {
    let per_file = series
        .files
        .par_iter()
        .map(|p| read_slices(p, pixels))
        .collect::<Result<Vec<_>>>()?;
    let mut slices: Vec<Slice> = per_file.into_iter().flatten().collect();
    let affine = stack_affine(&mut slices).map_err(|reason| series_error(series, reason))?;
    Ok((slices, affine))
}
