//! DICOM series in: a folder as hospitals export it (one folder per patient, studies full of series in
//! files with opaque names, often without extensions) becomes one [`Volume`] per image series, on the
//! same footing as a NIfTI scan.
//!
//! - [`discovery`]: walks a folder at any depth, recognises DICOM by content (`DICM` at byte 128, or a
//!   file meta group at byte 0), reads headers only, skips what is not a scan (non-DICOM files,
//!   DICOMDIRs, structured reports, RT structures, segmentations, presentation states, localizers and
//!   other single-slice series) with a one-line note, groups the rest by SeriesInstanceUID and splits
//!   a series whose orientation or image size changes, and names each series.
//! - [`series`]: reads a series' files whole, checks that its slices form one regular stack (parallel,
//!   evenly spaced, no gaps, no gantry tilt, one image size) and builds the volume and its affine from
//!   ImageOrientationPatient, PixelSpacing and ImagePositionPatient, DICOM's LPS turned into RAS.
//! - [`pixels`]: pixel data to intensities with RescaleSlope/Intercept applied.
//! - [`seg`]: a label map written back as a binary DICOM Segmentation object citing the series.
//! - [`seg_read`]: a binary DICOM SEG read back as a label map on its series' grid (training labels).
//! - [`naming`]: the case id of a series (PatientID, StudyDate, SeriesNumber, SeriesDescription).
//! - `guard`: every element length checked against the file's size before dicom-rs parses it, so
//!   that a damaged length cannot make the parser allocate gigabytes.
//!
//! Multi-frame (enhanced) CT and MR objects are read from their functional groups; each frame is a
//! slice. A refused series is an error naming the series and the problem; the others go on.
//! dicom-rs does the parsing and the codecs (native, RLE, deflate, JPEG; not JPEG 2000 or JPEG-LS,
//! whose decoders need C libraries).

pub mod discovery;
mod guard;
pub mod naming;
pub mod pixels;
pub mod seg;
pub mod seg_read;
pub mod series;

use std::path::PathBuf;

use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

pub use discovery::{find_dicom_series, is_dicom_file, DicomFolder};
pub use seg::write_dicom_seg;
pub use seg_read::{find_dicom_seg, read_dicom_seg_labels, SegLabels};
pub use series::{
    dicom_series_geometry, read_dicom_series, read_dicom_series_with_geometry, SeriesGeometry,
    SourceInstance,
};

/// One image series found in a folder: what [`read_dicom_series`] reads, and what a prediction
/// [`Case`](crate::Case) carries instead of a NIfTI file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DicomSeries {
    /// Case id: unique within the folder, stable across runs and file orders (see [`naming`]).
    pub id: String,
    /// SeriesInstanceUID (a split series shares it with its other parts).
    pub uid: String,
    /// The series' files, sorted by path (slices are ordered by position when read).
    pub files: Vec<PathBuf>,
}

/// A text attribute, trimmed of DICOM's space padding; None when absent or empty.
pub(crate) fn text(obj: &InMemDicomObject, tag: dicom_object::Tag) -> Option<String> {
    let value = obj.get(tag)?.to_str().ok()?;
    let trimmed = value.trim_matches(|c: char| c == ' ' || c == '\0').trim();
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

/// A numeric attribute with several values (DS, FD, US, ...); None when absent or not numbers.
pub(crate) fn numbers(obj: &InMemDicomObject, tag: dicom_object::Tag) -> Option<Vec<f64>> {
    let values = obj.get(tag)?.to_multi_float64().ok()?;
    (!values.is_empty() && values.iter().all(|v| v.is_finite())).then_some(values)
}

/// A numeric attribute's first value as an integer (IS, US, UL, ...).
pub(crate) fn integer(obj: &InMemDicomObject, tag: dicom_object::Tag) -> Option<i64> {
    let value = *numbers(obj, tag)?.first()?;
    (value.fract() == 0.0 && value.abs() < 1e15).then_some(value as i64)
}

/// The first item of a sequence attribute.
pub(crate) fn first_item(
    obj: &InMemDicomObject,
    tag: dicom_object::Tag,
) -> Option<&InMemDicomObject> {
    obj.get(tag)?.items()?.first()
}

/// An attribute of an enhanced multi-frame object, looked up as the standard places it: in
/// `sequence` (a functional group macro) of the frame's own group or else of the shared group.
pub(crate) fn functional<'a>(
    frame_group: Option<&'a InMemDicomObject>,
    shared_group: Option<&'a InMemDicomObject>,
    sequence: dicom_object::Tag,
) -> Option<&'a InMemDicomObject> {
    frame_group
        .and_then(|g| first_item(g, sequence))
        .or_else(|| shared_group.and_then(|g| first_item(g, sequence)))
}

/// ImageOrientationPatient of a classic object, or of an enhanced one's shared or first frame group.
pub(crate) fn orientation(obj: &InMemDicomObject) -> Option<[f64; 6]> {
    let values = numbers(obj, tags::IMAGE_ORIENTATION_PATIENT).or_else(|| {
        let shared = first_item(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
        let first = first_item(obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
        functional(first, shared, tags::PLANE_ORIENTATION_SEQUENCE)
            .and_then(|o| numbers(o, tags::IMAGE_ORIENTATION_PATIENT))
    })?;
    <[f64; 6]>::try_from(values.as_slice()).ok()
}
