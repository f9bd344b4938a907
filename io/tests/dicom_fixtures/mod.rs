//! Synthetic DICOM series written with dicom-rs, for the DICOM tests and the dcm2niix comparison:
//! small stacks with known geometry and intensities, under opaque names without extensions.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject, Tag};

/// Explicit VR Little Endian, the transfer syntax every fixture uses.
pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

/// A stack of slices: where it lies, what it holds, how it is named.
#[derive(Debug, Clone)]
pub struct SeriesSpec {
    pub patient_id: String,
    pub study_date: String,
    pub series_number: i32,
    pub description: String,
    pub series_uid: String,
    pub modality: String,
    pub rows: usize,
    pub cols: usize,
    /// ImageOrientationPatient row direction (LPS), then column direction.
    pub row_dir: [f64; 3],
    pub col_dir: [f64; 3],
    /// PixelSpacing: between rows, between columns.
    pub pixel_spacing: [f64; 2],
    /// ImagePositionPatient of slice 0 and the step from one slice to the next (LPS mm).
    pub origin: [f64; 3],
    pub step: [f64; 3],
    pub slices: usize,
    pub slope: f64,
    pub intercept: f64,
    /// Signed 16-bit samples (PixelRepresentation 1), else unsigned.
    pub signed: bool,
    pub image_type: String,
    /// Stored samples, slice after slice, row after row, column fastest; None: a made-up pattern.
    pub pixels: Option<Vec<i32>>,
}

impl SeriesSpec {
    /// An axial CT, 5 x 4 pixels, 3 slices 2.5 mm apart, rescale 1 / -1024.
    pub fn ct(series_number: i32, uid: &str) -> Self {
        SeriesSpec {
            patient_id: "PAT001".into(),
            study_date: "20240131".into(),
            series_number,
            description: format!("CT series {series_number}"),
            series_uid: uid.into(),
            modality: "CT".into(),
            rows: 4,
            cols: 5,
            row_dir: [1.0, 0.0, 0.0],
            col_dir: [0.0, 1.0, 0.0],
            pixel_spacing: [0.8, 0.7],
            origin: [-10.0, -20.0, 30.0],
            step: [0.0, 0.0, 2.5],
            slices: 3,
            slope: 1.0,
            intercept: -1024.0,
            signed: true,
            image_type: "ORIGINAL\\PRIMARY\\AXIAL".into(),
            pixels: None,
        }
    }

    /// The stored (raw) sample of pixel (column x, row y) of slice k: distinct, signed or not.
    pub fn stored(&self, x: usize, y: usize, k: usize) -> i32 {
        if let Some(pixels) = &self.pixels {
            return pixels[(k * self.rows + y) * self.cols + x];
        }
        let v = (x * 7 + y * 13 + k * 31) as i32 % 251;
        if self.signed {
            v - 100
        } else {
            v
        }
    }

    /// The intensity the reader must give that pixel: the stored value rescaled.
    pub fn intensity(&self, x: usize, y: usize, k: usize) -> f32 {
        (f64::from(self.stored(x, y, k)) * self.slope + self.intercept) as f32
    }

    /// ImagePositionPatient of slice k.
    pub fn position(&self, k: usize) -> [f64; 3] {
        std::array::from_fn(|i| self.origin[i] + k as f64 * self.step[i])
    }
}

fn ds(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v}"))
        .collect::<Vec<_>>()
        .join("\\")
}

fn put_str(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

fn put_u16(obj: &mut InMemDicomObject, tag: Tag, value: u16) {
    obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
}

/// The attributes shared by every slice of a series (patient, study, series, image pixel module).
pub fn base_object(spec: &SeriesSpec, sop_class: &str, instance_uid: &str) -> InMemDicomObject {
    let mut obj = InMemDicomObject::new_empty();
    put_str(&mut obj, tags::SOP_CLASS_UID, VR::UI, sop_class);
    put_str(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, instance_uid);
    put_str(&mut obj, tags::IMAGE_TYPE, VR::CS, &spec.image_type);
    put_str(&mut obj, tags::STUDY_DATE, VR::DA, &spec.study_date);
    put_str(&mut obj, tags::MODALITY, VR::CS, &spec.modality);
    put_str(
        &mut obj,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        &spec.description,
    );
    put_str(&mut obj, tags::PATIENT_NAME, VR::PN, "Doe^Jane");
    put_str(&mut obj, tags::PATIENT_ID, VR::LO, &spec.patient_id);
    put_str(&mut obj, tags::PATIENT_BIRTH_DATE, VR::DA, "19700101");
    put_str(
        &mut obj,
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        "1.2.826.0.1.3680043.10.1.1",
    );
    put_str(
        &mut obj,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &spec.series_uid,
    );
    put_str(
        &mut obj,
        tags::SERIES_NUMBER,
        VR::IS,
        &spec.series_number.to_string(),
    );
    put_str(
        &mut obj,
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        "1.2.826.0.1.3680043.10.1.2",
    );
    put_u16(&mut obj, tags::SAMPLES_PER_PIXEL, 1);
    put_str(
        &mut obj,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2",
    );
    put_u16(&mut obj, tags::ROWS, spec.rows as u16);
    put_u16(&mut obj, tags::COLUMNS, spec.cols as u16);
    put_u16(&mut obj, tags::BITS_ALLOCATED, 16);
    put_u16(&mut obj, tags::BITS_STORED, 16);
    put_u16(&mut obj, tags::HIGH_BIT, 15);
    put_u16(&mut obj, tags::PIXEL_REPRESENTATION, u16::from(spec.signed));
    obj
}

/// The pixel data of slice k (column fastest) as 16-bit samples.
pub fn pixel_words(spec: &SeriesSpec, k: usize) -> Vec<u16> {
    let mut words = Vec::with_capacity(spec.rows * spec.cols);
    for y in 0..spec.rows {
        for x in 0..spec.cols {
            words.push(spec.stored(x, y, k) as i16 as u16);
        }
    }
    words
}

/// One classic single-frame slice of `spec` as a DICOM object (no file meta yet).
pub fn slice_object(spec: &SeriesSpec, k: usize) -> InMemDicomObject {
    let sop_class = if spec.modality == "MR" {
        uids::MR_IMAGE_STORAGE
    } else {
        uids::CT_IMAGE_STORAGE
    };
    let instance_uid = format!("{}.{}", spec.series_uid, k + 1);
    let mut obj = base_object(spec, sop_class, &instance_uid);
    // InstanceNumber runs against the position, as on many scanners: readers must not sort by it.
    let instance = (spec.slices - k).to_string();
    put_str(&mut obj, tags::INSTANCE_NUMBER, VR::IS, &instance);
    put_str(
        &mut obj,
        tags::IMAGE_POSITION_PATIENT,
        VR::DS,
        &ds(&spec.position(k)),
    );
    let orientation: Vec<f64> = spec.row_dir.iter().chain(&spec.col_dir).copied().collect();
    put_str(
        &mut obj,
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        &ds(&orientation),
    );
    put_str(
        &mut obj,
        tags::PIXEL_SPACING,
        VR::DS,
        &ds(&spec.pixel_spacing),
    );
    let thickness = spec.step.iter().map(|v| v * v).sum::<f64>().sqrt();
    put_str(&mut obj, tags::SLICE_THICKNESS, VR::DS, &ds(&[thickness]));
    put_str(
        &mut obj,
        tags::RESCALE_INTERCEPT,
        VR::DS,
        &ds(&[spec.intercept]),
    );
    put_str(&mut obj, tags::RESCALE_SLOPE, VR::DS, &ds(&[spec.slope]));
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(pixel_words(spec, k).into()),
    ));
    obj
}

/// Writes `obj` as a DICOM Part 10 file (preamble, meta group, explicit VR little endian).
pub fn write_object(obj: InMemDicomObject, path: &Path) {
    let sop_class = obj
        .get(tags::SOP_CLASS_UID)
        .map(|e| e.to_str().unwrap().trim_end_matches('\0').to_string())
        .unwrap_or_else(|| uids::CT_IMAGE_STORAGE.into());
    let instance = obj
        .get(tags::SOP_INSTANCE_UID)
        .map(|e| e.to_str().unwrap().trim_end_matches('\0').to_string())
        .unwrap_or_else(|| "1.2.3.4".into());
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(EXPLICIT_LE)
                .media_storage_sop_class_uid(sop_class)
                .media_storage_sop_instance_uid(instance),
        )
        .unwrap();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    file.write_to_file(path).unwrap();
}

/// An opaque file name (16 hex digits, no extension), as PACS exports name files.
pub fn opaque_name(uid: &str, k: usize) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in uid.bytes().chain((k as u64).to_le_bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016X}")
}

/// Writes every slice of `spec` except those in `leave_out` under `dir/sub/`, opaque names, in a
/// shuffled order; returns the paths by slice index.
pub fn write_series(dir: &Path, spec: &SeriesSpec, leave_out: &[usize]) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    // Write order k = 2, 0, 3, 1, ... so that neither file names nor times follow the position.
    let mut order: Vec<usize> = (0..spec.slices).collect();
    order.sort_by_key(|k| opaque_name(&spec.series_uid, *k));
    for k in order {
        if leave_out.contains(&k) {
            continue;
        }
        let sub = if k % 2 == 0 { "a" } else { "b/c" };
        let path = dir.join(sub).join(opaque_name(&spec.series_uid, k));
        write_object(slice_object(spec, k), &path);
        paths.push((k, path));
    }
    paths.sort();
    paths.into_iter().map(|(_, p)| p).collect()
}

/// Writes `spec` as one enhanced multi-frame object (Enhanced CT), one frame per slice with its
/// position in the per-frame functional groups.
pub fn write_enhanced(path: &Path, spec: &SeriesSpec) {
    let mut obj = base_object(
        spec,
        uids::ENHANCED_CT_IMAGE_STORAGE,
        &format!("{}.1", spec.series_uid),
    );
    put_str(
        &mut obj,
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        &spec.slices.to_string(),
    );
    let item = |tag: Tag, vr: VR, value: String| {
        let mut item = InMemDicomObject::new_empty();
        put_str(&mut item, tag, vr, &value);
        item
    };
    let sequence = |tag: Tag, items: Vec<InMemDicomObject>| {
        DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
    };
    let orientation: Vec<f64> = spec.row_dir.iter().chain(&spec.col_dir).copied().collect();
    let mut shared = InMemDicomObject::new_empty();
    shared.put(sequence(
        tags::PLANE_ORIENTATION_SEQUENCE,
        vec![item(
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            ds(&orientation),
        )],
    ));
    // Scanners give the slice spacing here too; dcm2niix takes the slice axis from it (1 mm when
    // it is missing) rather than from the frames' positions.
    let mut measures = item(tags::PIXEL_SPACING, VR::DS, ds(&spec.pixel_spacing));
    let thickness = spec.step.iter().map(|v| v * v).sum::<f64>().sqrt();
    put_str(
        &mut measures,
        tags::SLICE_THICKNESS,
        VR::DS,
        &ds(&[thickness]),
    );
    put_str(
        &mut measures,
        tags::SPACING_BETWEEN_SLICES,
        VR::DS,
        &ds(&[thickness]),
    );
    shared.put(sequence(tags::PIXEL_MEASURES_SEQUENCE, vec![measures]));
    let mut transform = item(tags::RESCALE_INTERCEPT, VR::DS, ds(&[spec.intercept]));
    put_str(
        &mut transform,
        tags::RESCALE_SLOPE,
        VR::DS,
        &ds(&[spec.slope]),
    );
    shared.put(sequence(
        tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
        vec![transform],
    ));
    obj.put(sequence(
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![shared],
    ));
    // Frames stored in reverse position order: readers must sort them.
    let frame_slices: Vec<usize> = (0..spec.slices).rev().collect();
    let per_frame = frame_slices
        .iter()
        .map(|&k| {
            let mut group = InMemDicomObject::new_empty();
            group.put(sequence(
                tags::PLANE_POSITION_SEQUENCE,
                vec![item(
                    tags::IMAGE_POSITION_PATIENT,
                    VR::DS,
                    ds(&spec.position(k)),
                )],
            ));
            group
        })
        .collect();
    obj.put(sequence(
        tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
        per_frame,
    ));
    let words: Vec<u16> = frame_slices
        .iter()
        .flat_map(|&k| pixel_words(spec, k))
        .collect();
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(words.into()),
    ));
    write_object(obj, path);
}

/// Writes an object without pixel data of the given SOP class and modality (SR, RTSTRUCT, ...).
pub fn write_non_image(path: &Path, sop_class: &str, modality: &str, series_uid: &str) {
    let mut obj = InMemDicomObject::new_empty();
    put_str(&mut obj, tags::SOP_CLASS_UID, VR::UI, sop_class);
    put_str(
        &mut obj,
        tags::SOP_INSTANCE_UID,
        VR::UI,
        &format!("{series_uid}.1"),
    );
    put_str(&mut obj, tags::MODALITY, VR::CS, modality);
    put_str(&mut obj, tags::PATIENT_ID, VR::LO, "PAT001");
    put_str(&mut obj, tags::SERIES_INSTANCE_UID, VR::UI, series_uid);
    write_object(obj, path);
}

/// Whether the slices' step runs against row_dir x col_dir, so that a reader (which orders slices
/// along that normal) must reverse them.
pub fn reversed(spec: &SeriesSpec) -> bool {
    let (r, c) = (spec.row_dir, spec.col_dir);
    let normal = [
        r[1] * c[2] - r[2] * c[1],
        r[2] * c[0] - r[0] * c[2],
        r[0] * c[1] - r[1] * c[0],
    ];
    spec.step
        .iter()
        .zip(&normal)
        .map(|(a, b)| a * b)
        .sum::<f64>()
        < 0.0
}

/// The voxel -> RAS affine a reader must give for `spec`, computed by hand: DICOM's voxel (column,
/// row, slice) -> LPS is origin + i * col_spacing * row_dir + j * row_spacing * col_dir + k * step,
/// slices in increasing order along row_dir x col_dir, and RAS negates x and y.
pub fn expected_affine(spec: &SeriesSpec) -> [[f64; 4]; 4] {
    let (origin, step) = if reversed(spec) {
        (spec.position(spec.slices - 1), spec.step.map(|v| -v))
    } else {
        (spec.origin, spec.step)
    };
    let columns = [
        spec.row_dir.map(|v| v * spec.pixel_spacing[1]),
        spec.col_dir.map(|v| v * spec.pixel_spacing[0]),
        step,
        origin,
    ];
    let flip = [-1.0, -1.0, 1.0];
    let mut affine = [[0.0; 4]; 4];
    for (r, row) in affine.iter_mut().take(3).enumerate() {
        for (c, value) in row.iter_mut().enumerate() {
            *value = columns[c][r] * flip[r];
        }
    }
    affine[3][3] = 1.0;
    affine
}

/// The volume (x fastest) a reader must give for `spec`, slices in increasing normal order.
pub fn expected_values(spec: &SeriesSpec) -> Vec<f32> {
    let mut values = Vec::new();
    for z in 0..spec.slices {
        let k = if reversed(spec) {
            spec.slices - 1 - z
        } else {
            z
        };
        for y in 0..spec.rows {
            for x in 0..spec.cols {
                values.push(spec.intensity(x, y, k));
            }
        }
    }
    values
}
