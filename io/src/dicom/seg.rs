//! A label map written back as a DICOM Segmentation (SEG) object, the form hospital viewers (3D
//! Slicer, OHIF, PACS) take segmentations in: binary, one segment per foreground label, one frame
//! per segment and slice that holds any of it, each frame citing the source image it lies on.
//!
//! The SEG copies the source's patient and study attributes (the standard requires the patient
//! module), shares its Frame of Reference, and gets fresh UIDs of its own (`2.25.` + 128 random
//! bits, PS3.5 B.2).

use std::collections::BTreeMap;
use std::path::Path;

use dicom_core::value::{DataSetSequence, PrimitiveValue, C};
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject, OpenFileOptions, Tag};

use super::series::SeriesGeometry;
use crate::error::{IoError, Result};
use crate::fsutil::write_bytes_atomic;

/// SOP class of a Segmentation object.
pub const SEGMENTATION_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";

/// Explicit VR Little Endian: every reader takes it.
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

/// Attributes copied from the source (patient, study, frame of reference): tag and VR, with an
/// empty value when the source lacks them (type 2 in the SEG's modules).
const COPIED: [(Tag, VR); 11] = [
    (tags::PATIENT_NAME, VR::PN),
    (tags::PATIENT_ID, VR::LO),
    (tags::PATIENT_BIRTH_DATE, VR::DA),
    (tags::PATIENT_SEX, VR::CS),
    (tags::STUDY_INSTANCE_UID, VR::UI),
    (tags::STUDY_DATE, VR::DA),
    (tags::STUDY_TIME, VR::TM),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
    (tags::STUDY_ID, VR::SH),
    (tags::ACCESSION_NUMBER, VR::SH),
    (tags::FRAME_OF_REFERENCE_UID, VR::UI),
];

/// A fresh UID from 128 random bits, as PS3.5 B.2 allows without a registered root.
pub fn fresh_uid() -> String {
    format!("2.25.{}", rand::random::<u128>())
}

fn put(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: impl Into<PrimitiveValue>) {
    obj.put(DataElement::new(tag, vr, value.into()));
}

fn put_str(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    put(obj, tag, vr, PrimitiveValue::from(value));
}

fn sequence(obj: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    obj.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
}

fn ds(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{}", (v * 1e6).round() / 1e6))
        .collect::<Vec<_>>()
        .join("\\")
}

/// A code sequence item (CodeValue, CodingSchemeDesignator, CodeMeaning).
fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(&mut item, tags::CODE_VALUE, VR::SH, value);
    put_str(&mut item, tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme);
    put_str(&mut item, tags::CODE_MEANING, VR::LO, meaning);
    item
}

/// Today's date and the time as DICOM DA and TM strings (UTC).
fn now() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}{month:02}{day:02}"),
        format!("{:02}{:02}{:02}", rest / 3600, rest / 60 % 60, rest % 60),
    )
}

/// The segments of a label map: (segment number from 1, label value, name), for every label
/// value other than 0 named in `names`, in increasing order.
fn segments(names: &BTreeMap<u8, String>) -> Vec<(u16, u8, String)> {
    names
        .iter()
        .filter(|(value, _)| **value != 0)
        .enumerate()
        .map(|(i, (value, name))| (i as u16 + 1, *value, name.clone()))
        .collect()
}

/// Writes `labels` (on the grid of the series `geometry` describes: column fastest, then row,
/// then slice in the volume's order) as a binary DICOM SEG at `path`, one segment per named
/// foreground label. Returns the number of frames written.
pub fn write_dicom_seg(
    path: &Path,
    geometry: &SeriesGeometry,
    labels: &[u8],
    names: &BTreeMap<u8, String>,
) -> Result<usize> {
    let (rows, cols) = geometry.size;
    let plane = rows * cols;
    let slices = geometry.instances.len();
    if labels.len() != plane * slices {
        return Err(IoError::LengthMismatch {
            path: path.to_path_buf(),
            expected: plane * slices,
            found: labels.len(),
        });
    }
    let source = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(&geometry.first_file)
        .map_err(|e| IoError::Dicom {
            path: geometry.first_file.clone(),
            reason: format!("cannot parse ({e})"),
        })?;
    let segments = segments(names);
    // Frames: every (segment, slice) with at least one voxel of the segment.
    let frames: Vec<(u16, u8, usize)> = segments
        .iter()
        .flat_map(|(number, value, _)| {
            (0..slices)
                .filter(|z| labels[z * plane..(z + 1) * plane].contains(value))
                .map(|z| (*number, *value, z))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut obj = header(&source, geometry, &segments, frames.len());
    let mut per_frame = Vec::with_capacity(frames.len());
    for &(number, _, z) in &frames {
        per_frame.push(frame_group(geometry, number, z));
    }
    sequence(
        &mut obj,
        tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
        per_frame,
    );
    // Binary frames are packed 8 pixels a byte, first pixel in the lowest bit, frames back to back.
    let mut bits = vec![0u8; (frames.len() * plane).div_ceil(8).next_multiple_of(2)];
    for (f, &(_, value, z)) in frames.iter().enumerate() {
        for (i, &label) in labels[z * plane..(z + 1) * plane].iter().enumerate() {
            if label == value {
                let bit = f * plane + i;
                bits[bit / 8] |= 1 << (bit % 8);
            }
        }
    }
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(bits),
    ));
    let instance_uid = super::text(&obj, tags::SOP_INSTANCE_UID).unwrap_or_default();
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(EXPLICIT_LE)
                .media_storage_sop_class_uid(SEGMENTATION_STORAGE)
                .media_storage_sop_instance_uid(instance_uid),
        )
        .map_err(|e| IoError::Dicom {
            path: path.to_path_buf(),
            reason: format!("cannot build the file meta group ({e})"),
        })?;
    // A Part 10 file (preamble, "DICM", meta group, data set), encoded in memory so that the file
    // appears whole or not at all.
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).map_err(|e| IoError::Dicom {
        path: path.to_path_buf(),
        reason: format!("cannot encode ({e})"),
    })?;
    write_bytes_atomic(path, &bytes)?;
    Ok(frames.len())
}

/// Every attribute of the SEG but the per-frame groups and the pixel data.
fn header(
    source: &InMemDicomObject,
    geometry: &SeriesGeometry,
    segments: &[(u16, u8, String)],
    frames: usize,
) -> InMemDicomObject {
    let mut obj = InMemDicomObject::new_empty();
    for (tag, vr) in COPIED {
        match source.get(tag) {
            Some(element) => {
                obj.put(element.clone());
            }
            None => put_str(&mut obj, tag, vr, ""),
        }
    }
    let (date, time) = now();
    put_str(&mut obj, tags::SOP_CLASS_UID, VR::UI, SEGMENTATION_STORAGE);
    put_str(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, &fresh_uid());
    put_str(&mut obj, tags::SERIES_INSTANCE_UID, VR::UI, &fresh_uid());
    put_str(&mut obj, tags::MODALITY, VR::CS, "SEG");
    let number = super::integer(source, tags::SERIES_NUMBER).unwrap_or(0);
    put_str(
        &mut obj,
        tags::SERIES_NUMBER,
        VR::IS,
        &(number + 1000).to_string(),
    );
    let description = super::text(source, tags::SERIES_DESCRIPTION).unwrap_or_default();
    let description: String = format!("segmenter {description}")
        .chars()
        .take(64)
        .collect();
    put_str(
        &mut obj,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        description.trim(),
    );
    put_str(&mut obj, tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");
    put_str(&mut obj, tags::MANUFACTURER, VR::LO, "segmenter");
    put_str(&mut obj, tags::MANUFACTURER_MODEL_NAME, VR::LO, "segmenter");
    put_str(&mut obj, tags::DEVICE_SERIAL_NUMBER, VR::LO, "0");
    put_str(
        &mut obj,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        env!("CARGO_PKG_VERSION"),
    );
    put_str(&mut obj, tags::INSTANCE_NUMBER, VR::IS, "1");
    put_str(&mut obj, tags::CONTENT_DATE, VR::DA, &date);
    put_str(&mut obj, tags::CONTENT_TIME, VR::TM, &time);
    put_str(&mut obj, tags::SERIES_DATE, VR::DA, &date);
    put_str(&mut obj, tags::SERIES_TIME, VR::TM, &time);
    put_str(&mut obj, tags::CONTENT_LABEL, VR::CS, "SEGMENTATION");
    put_str(
        &mut obj,
        tags::CONTENT_DESCRIPTION,
        VR::LO,
        "automatic segmentation",
    );
    put_str(&mut obj, tags::CONTENT_CREATOR_NAME, VR::PN, "segmenter");
    put_str(&mut obj, tags::IMAGE_TYPE, VR::CS, "DERIVED\\PRIMARY");
    put_str(&mut obj, tags::SEGMENTATION_TYPE, VR::CS, "BINARY");
    put_str(&mut obj, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    put(&mut obj, tags::SAMPLES_PER_PIXEL, VR::US, 1u16);
    put_str(
        &mut obj,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2",
    );
    put(&mut obj, tags::ROWS, VR::US, geometry.size.0 as u16);
    put(&mut obj, tags::COLUMNS, VR::US, geometry.size.1 as u16);
    put(&mut obj, tags::BITS_ALLOCATED, VR::US, 1u16);
    put(&mut obj, tags::BITS_STORED, VR::US, 1u16);
    put(&mut obj, tags::HIGH_BIT, VR::US, 0u16);
    put(&mut obj, tags::PIXEL_REPRESENTATION, VR::US, 0u16);
    put_str(
        &mut obj,
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        &frames.to_string(),
    );
    dimensions(&mut obj);
    shared_groups(&mut obj, geometry);
    segment_sequence(&mut obj, segments);
    referenced_series(&mut obj, source, geometry);
    obj
}

/// The dimensions frames are indexed by: segment number, then position (as highdicom writes them).
fn dimensions(obj: &mut InMemDicomObject) {
    let organization = fresh_uid();
    let mut item = InMemDicomObject::new_empty();
    put_str(
        &mut item,
        tags::DIMENSION_ORGANIZATION_UID,
        VR::UI,
        &organization,
    );
    sequence(obj, tags::DIMENSION_ORGANIZATION_SEQUENCE, vec![item]);
    let index = |pointer: Tag, group: Tag, label: &str| {
        let mut item = InMemDicomObject::new_empty();
        put_str(
            &mut item,
            tags::DIMENSION_ORGANIZATION_UID,
            VR::UI,
            &organization,
        );
        let tag_value = |t: Tag| PrimitiveValue::Tags(C::from_elem(t, 1));
        put(
            &mut item,
            tags::DIMENSION_INDEX_POINTER,
            VR::AT,
            tag_value(pointer),
        );
        put(
            &mut item,
            tags::FUNCTIONAL_GROUP_POINTER,
            VR::AT,
            tag_value(group),
        );
        put_str(&mut item, tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label);
        item
    };
    sequence(
        obj,
        tags::DIMENSION_INDEX_SEQUENCE,
        vec![
            index(
                tags::REFERENCED_SEGMENT_NUMBER,
                tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                "ReferencedSegmentNumber",
            ),
            index(
                tags::IMAGE_POSITION_PATIENT,
                tags::PLANE_POSITION_SEQUENCE,
                "ImagePositionPatient",
            ),
        ],
    );
}

/// Orientation and pixel measures, the same for every frame.
fn shared_groups(obj: &mut InMemDicomObject, geometry: &SeriesGeometry) {
    let mut shared = InMemDicomObject::new_empty();
    let mut orientation = InMemDicomObject::new_empty();
    put_str(
        &mut orientation,
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        &ds(&geometry.orientation),
    );
    sequence(
        &mut shared,
        tags::PLANE_ORIENTATION_SEQUENCE,
        vec![orientation],
    );
    let mut measures = InMemDicomObject::new_empty();
    put_str(
        &mut measures,
        tags::PIXEL_SPACING,
        VR::DS,
        &ds(&geometry.pixel_spacing),
    );
    put_str(
        &mut measures,
        tags::SLICE_THICKNESS,
        VR::DS,
        &ds(&[geometry.slice_spacing]),
    );
    put_str(
        &mut measures,
        tags::SPACING_BETWEEN_SLICES,
        VR::DS,
        &ds(&[geometry.slice_spacing]),
    );
    sequence(&mut shared, tags::PIXEL_MEASURES_SEQUENCE, vec![measures]);
    sequence(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared]);
}

/// One item per segment: number, label, how it was made and what it is.
fn segment_sequence(obj: &mut InMemDicomObject, segments: &[(u16, u8, String)]) {
    let items = segments
        .iter()
        .map(|(number, _, name)| {
            let mut item = InMemDicomObject::new_empty();
            put(&mut item, tags::SEGMENT_NUMBER, VR::US, *number);
            let label: String = name.chars().take(64).collect();
            put_str(&mut item, tags::SEGMENT_LABEL, VR::LO, &label);
            put_str(&mut item, tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC");
            put_str(&mut item, tags::SEGMENT_ALGORITHM_NAME, VR::LO, "segmenter");
            // The labels' meanings are the dataset's names, not coded concepts: the generic
            // SNOMED "anatomical structure" is the honest code for both.
            sequence(
                &mut item,
                tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
                vec![code("91723000", "SCT", "Anatomical Structure")],
            );
            sequence(
                &mut item,
                tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
                vec![code("91723000", "SCT", "Anatomical Structure")],
            );
            item
        })
        .collect();
    sequence(obj, tags::SEGMENT_SEQUENCE, items);
}

/// The source series and every instance of it (Common Instance Reference module).
fn referenced_series(
    obj: &mut InMemDicomObject,
    source: &InMemDicomObject,
    geometry: &SeriesGeometry,
) {
    let mut seen = std::collections::BTreeSet::new();
    let instances = geometry
        .instances
        .iter()
        .filter(|i| seen.insert(i.instance_uid.clone()))
        .map(|i| {
            let mut item = InMemDicomObject::new_empty();
            put_str(
                &mut item,
                tags::REFERENCED_SOP_CLASS_UID,
                VR::UI,
                &i.class_uid,
            );
            put_str(
                &mut item,
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                &i.instance_uid,
            );
            item
        })
        .collect();
    let mut series = InMemDicomObject::new_empty();
    let uid = super::text(source, tags::SERIES_INSTANCE_UID).unwrap_or_default();
    put_str(&mut series, tags::SERIES_INSTANCE_UID, VR::UI, &uid);
    sequence(&mut series, tags::REFERENCED_INSTANCE_SEQUENCE, instances);
    sequence(obj, tags::REFERENCED_SERIES_SEQUENCE, vec![series]);
}

/// The functional groups of one frame: its source image, dimension index, position and segment.
fn frame_group(geometry: &SeriesGeometry, segment: u16, z: usize) -> InMemDicomObject {
    let instance = &geometry.instances[z];
    let mut source_image = InMemDicomObject::new_empty();
    put_str(
        &mut source_image,
        tags::REFERENCED_SOP_CLASS_UID,
        VR::UI,
        &instance.class_uid,
    );
    put_str(
        &mut source_image,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        &instance.instance_uid,
    );
    if instance.frame > 1 || geometry.instances.iter().any(|i| i.frame > 1) {
        put_str(
            &mut source_image,
            tags::REFERENCED_FRAME_NUMBER,
            VR::IS,
            &instance.frame.to_string(),
        );
    }
    // The SEG's frames lie exactly on the source's pixels: readers (highdicom) index by source
    // image only when this says so.
    put_str(
        &mut source_image,
        tags::SPATIAL_LOCATIONS_PRESERVED,
        VR::CS,
        "YES",
    );
    sequence(
        &mut source_image,
        tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
        vec![code(
            "121322",
            "DCM",
            "Source image for image processing operation",
        )],
    );
    let mut derivation = InMemDicomObject::new_empty();
    sequence(
        &mut derivation,
        tags::SOURCE_IMAGE_SEQUENCE,
        vec![source_image],
    );
    sequence(
        &mut derivation,
        tags::DERIVATION_CODE_SEQUENCE,
        vec![code("113076", "DCM", "Segmentation")],
    );
    let mut group = InMemDicomObject::new_empty();
    sequence(
        &mut group,
        tags::DERIVATION_IMAGE_SEQUENCE,
        vec![derivation],
    );
    let mut content = InMemDicomObject::new_empty();
    put(
        &mut content,
        tags::DIMENSION_INDEX_VALUES,
        VR::UL,
        PrimitiveValue::U32(C::from_vec(vec![u32::from(segment), z as u32 + 1])),
    );
    sequence(&mut group, tags::FRAME_CONTENT_SEQUENCE, vec![content]);
    let mut position = InMemDicomObject::new_empty();
    put_str(
        &mut position,
        tags::IMAGE_POSITION_PATIENT,
        VR::DS,
        &ds(&geometry.positions[z]),
    );
    sequence(&mut group, tags::PLANE_POSITION_SEQUENCE, vec![position]);
    let mut identification = InMemDicomObject::new_empty();
    put(
        &mut identification,
        tags::REFERENCED_SEGMENT_NUMBER,
        VR::US,
        segment,
    );
    sequence(
        &mut group,
        tags::SEGMENT_IDENTIFICATION_SEQUENCE,
        vec![identification],
    );
    group
}
