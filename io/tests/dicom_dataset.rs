//! Training datasets whose images are DICOM series folders (imagesTr/CASE_0000/) with NIfTI or
//! DICOM SEG labels: synthetic series written with dicom-rs, SEG labels written by our own writer
//! and read back to the same label map; refusals name the files.

mod dicom_fixtures;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_fixtures::*;
use segmenter_io::{
    dicom_series_geometry, find_dicom_series, load_case, load_dataset, read_dicom_series,
    write_dicom_seg, write_nifti, IoError, NiftiData,
};

/// The dataset's labels, as dataset.json declares them.
fn names() -> BTreeMap<u8, String> {
    BTreeMap::from([
        (0, "background".to_string()),
        (1, "liver".to_string()),
        (2, "spleen".to_string()),
    ])
}

/// An nnU-Net v2 dataset.json with one CT channel and the labels of [`names`].
fn write_json(root: &Path) {
    fs::create_dir_all(root.join("imagesTr")).unwrap();
    fs::create_dir_all(root.join("labelsTr")).unwrap();
    let json = r#"{"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1,
        "spleen": 2}, "numTraining": 2, "file_ending": ".nii.gz"}"#;
    fs::write(root.join("dataset.json"), json).unwrap();
}

/// A 6 x 5 CT of `slices` slices with its own series UID, slices stepping along -z (so the
/// reader reverses them).
fn spec(n: u32, slices: usize) -> SeriesSpec {
    SeriesSpec {
        rows: 5,
        cols: 6,
        slices,
        step: [0.0, 0.0, -2.0],
        ..SeriesSpec::ct(n as i32, &format!("1.2.826.0.1.3680043.10.9.80{n}"))
    }
}

/// A label map on a series' volume: a few voxels of each label on different slices, label 1 and
/// 2 sharing a slice.
fn label_map(shape: [usize; 3]) -> Vec<u8> {
    let plane = shape[0] * shape[1];
    let mut labels = vec![0u8; plane * shape[2]];
    labels[3] = 1;
    labels[plane + 7] = 1;
    labels[plane + 8] = 2;
    labels[plane + 9] = 2;
    labels[3 * plane - 1] = 2;
    labels
}

/// The series in `folder` (one), its volume's label map written as a DICOM SEG at `seg` with the
/// segment names `seg_names`; returns the label map.
fn write_seg(folder: &Path, seg: &Path, seg_names: &BTreeMap<u8, String>) -> Vec<u8> {
    let series = find_dicom_series(folder).unwrap().series.remove(0);
    let geometry = dicom_series_geometry(&series).unwrap();
    let shape = [geometry.size.1, geometry.size.0, geometry.instances.len()];
    let labels = label_map(shape);
    fs::create_dir_all(seg.parent().unwrap()).unwrap();
    write_dicom_seg(seg, &geometry, &labels, seg_names).unwrap();
    labels
}

/// A dataset of two cases as series folders: "ct_a" with a NIfTI label on the series' grid, "ct_b"
/// with a DICOM SEG label under an opaque name in a label folder. Returns both label maps.
fn two_case_dataset(root: &Path) -> (Vec<u8>, Vec<u8>) {
    write_json(root);
    let a = root.join("imagesTr/ct_a_0000");
    write_series(&a, &spec(1, 3), &[]);
    let volume = read_dicom_series(&find_dicom_series(&a).unwrap().series[0]).unwrap();
    let labels_a = label_map(volume.shape);
    write_nifti(
        &root.join("labelsTr/ct_a.nii.gz"),
        &volume.header,
        &NiftiData::U8(labels_a.clone()),
    )
    .unwrap();
    let b = root.join("imagesTr/ct_b_0000");
    write_series(&b, &spec(2, 4), &[]);
    let labels_b = write_seg(&b, &root.join("labelsTr/ct_b/7F3A09"), &names());
    (labels_a, labels_b)
}

#[test]
fn a_dataset_of_series_folders_loads_with_nifti_and_seg_labels() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (labels_a, labels_b) = two_case_dataset(root);
    let dataset = load_dataset(root).unwrap();
    let ids: Vec<&str> = dataset.cases.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["ct_a", "ct_b"]);
    for (case, (labels, spec)) in dataset
        .cases
        .iter()
        .zip([(labels_a, spec(1, 3)), (labels_b, spec(2, 4))])
    {
        assert!(case.dicom.is_some(), "{}", case.id);
        assert_eq!(
            case.images,
            [root.join(format!("imagesTr/{}_0000", case.id))]
        );
        let loaded = load_case(case, &dataset.labels).unwrap();
        assert_eq!(loaded.shape, [spec.cols, spec.rows, spec.slices]);
        assert_eq!(loaded.channels[0].data, expected_values(&spec));
        // The SEG round-trips to the label map it was written from, voxel for voxel.
        assert_eq!(loaded.label.as_deref(), Some(&labels[..]), "{}", case.id);
        assert!(loaded.notes.is_empty(), "{:?}", loaded.notes);
    }
}

#[test]
fn seg_labels_are_matched_by_name_else_by_number_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_json(root);
    let folder = root.join("imagesTr/ct_b_0000");
    write_series(&folder, &spec(2, 4), &[]);
    // The SEG numbers its segments 1 "Spleen", 2 "LIVER": by name, segment 1 is label 2.
    let swapped = BTreeMap::from([(1, " Spleen".to_string()), (2, "LIVER".to_string())]);
    let seg = root.join("labelsTr/ct_b.dcm");
    let written = write_seg(&folder, &seg, &swapped);
    let dataset = load_dataset(root).unwrap();
    let loaded = load_case(&dataset.cases[0], &dataset.labels).unwrap();
    let want: Vec<u8> = written.iter().map(|v| [0, 2, 1][*v as usize]).collect();
    assert_eq!(loaded.label.unwrap(), want);
    assert!(loaded.notes.is_empty(), "{:?}", loaded.notes);

    // Names that match nothing: segment numbers are the values, and a note says so.
    let other = BTreeMap::from([(1, "organ A".to_string()), (2, "organ B".to_string())]);
    let written = write_seg(&folder, &seg, &other);
    let loaded = load_case(&dataset.cases[0], &dataset.labels).unwrap();
    assert_eq!(loaded.label.unwrap(), written);
    let note = loaded.notes.join("\n");
    assert!(
        note.contains("ct_b.dcm") && note.contains("SegmentNumber") && note.contains("organ A"),
        "{note}"
    );
}

/// The error loading the dataset's case `id` gives.
fn case_error(root: &Path, id: &str) -> String {
    let dataset = load_dataset(root).unwrap();
    let case = dataset.cases.iter().find(|c| c.id == id).unwrap();
    let err = load_case(case, &dataset.labels).unwrap_err().to_string();
    assert!(!err.contains('\n'), "{err}");
    err
}

/// Rewrites one attribute of a DICOM file in place.
fn rewrite(path: &Path, change: impl FnOnce(&mut dicom_object::DefaultDicomObject)) {
    let mut obj = dicom_object::open_file(path).unwrap();
    change(&mut obj);
    obj.write_to_file(path).unwrap();
}

/// The SEG file under a label folder.
fn seg_file(folder: &Path) -> PathBuf {
    fs::read_dir(folder)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
}

#[test]
fn a_seg_on_another_frame_of_reference_is_refused_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    two_case_dataset(root);
    let seg = seg_file(&root.join("labelsTr/ct_b"));
    rewrite(&seg, |obj| {
        obj.put(DataElement::new(
            tags::FRAME_OF_REFERENCE_UID,
            VR::UI,
            PrimitiveValue::from("1.2.826.0.1.3680043.10.1.99"),
        ));
    });
    let err = case_error(root, "ct_b");
    assert!(err.contains("7F3A09"), "{err}");
    assert!(err.contains("FrameOfReferenceUID"), "{err}");
    assert!(err.contains("1.2.826.0.1.3680043.10.1.99"), "{err}");
    // The series' file named: one of its files lies under imagesTr/ct_b_0000.
    assert!(err.contains("imagesTr/ct_b_0000/"), "{err}");
}

#[test]
fn overlapping_segments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    two_case_dataset(root);
    // Every bit set: the frames of both segments on slice 1 claim the same voxels.
    let seg = seg_file(&root.join("labelsTr/ct_b"));
    rewrite(&seg, |obj| {
        let len = obj
            .element(tags::PIXEL_DATA)
            .unwrap()
            .to_bytes()
            .unwrap()
            .len();
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PrimitiveValue::from(vec![0xFFu8; len]),
        ));
    });
    let err = case_error(root, "ct_b");
    assert!(err.contains("7F3A09") && err.contains("overlap"), "{err}");
}

#[test]
fn two_series_in_one_case_folder_are_refused_naming_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    two_case_dataset(root);
    write_series(&root.join("imagesTr/ct_a_0000/more"), &spec(3, 3), &[]);
    let err = load_dataset(root).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, IoError::Dataset { .. }), "{msg}");
    assert!(msg.contains("imagesTr/ct_a_0000:"), "{msg}");
    assert!(msg.contains("2 image series"), "{msg}");
}

#[test]
fn a_nifti_label_off_the_series_grid_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    two_case_dataset(root);
    let label = root.join("labelsTr/ct_a.nii.gz");
    let series = &find_dicom_series(&root.join("imagesTr/ct_a_0000"))
        .unwrap()
        .series[0];
    let volume = read_dicom_series(series).unwrap();
    let mut header = volume.header.clone();
    // 40 mm off along x: same shape, another place.
    for h in [&mut header.srow[0][3], &mut header.qoffset[0]] {
        *h += 40.0;
    }
    write_nifti(&label, &header, &NiftiData::U8(label_map(volume.shape))).unwrap();
    let err = case_error(root, "ct_a");
    assert!(err.contains("labelsTr/ct_a.nii.gz"), "{err}");
    assert!(err.contains("imagesTr/ct_a_0000"), "{err}");
    assert!(err.contains("grid"), "{err}");
}

#[test]
fn missing_or_doubled_labels_and_other_channels_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    two_case_dataset(root);
    // Two labels for one case.
    fs::copy(
        root.join("labelsTr/ct_a.nii.gz"),
        root.join("labelsTr/ct_b.nii.gz"),
    )
    .unwrap();
    let msg = load_dataset(root).unwrap_err().to_string();
    assert!(msg.contains("two labels"), "{msg}");
    fs::remove_file(root.join("labelsTr/ct_b.nii.gz")).unwrap();
    // No label at all.
    fs::remove_dir_all(root.join("labelsTr/ct_b")).unwrap();
    let msg = load_dataset(root).unwrap_err().to_string();
    assert!(
        msg.contains("labelsTr/ct_b.nii.gz") && msg.contains("DICOM SEG"),
        "{msg}"
    );
    // A series folder of another channel than 0.
    write_series(&root.join("imagesTr/ct_b_0001"), &spec(2, 4), &[]);
    let msg = load_dataset(root).unwrap_err().to_string();
    assert!(
        msg.contains("ct_b_0001") && msg.contains("CASE_0000"),
        "{msg}"
    );
    fs::remove_dir_all(root.join("imagesTr/ct_b_0001")).unwrap();
    // Folders of other names are left alone, as files of other endings are.
    fs::create_dir_all(root.join("imagesTr/backup")).unwrap();
    let folder = root.join("imagesTr/ct_b_0000");
    write_seg(&folder, &root.join("labelsTr/ct_b/SEG"), &names());
    assert_eq!(load_dataset(root).unwrap().cases.len(), 2);
}

/// Rewrites every per-frame functional group of a SEG with `change`.
fn rewrite_frames(path: &Path, change: impl Fn(usize, &mut dicom_object::InMemDicomObject)) {
    use dicom_core::value::DataSetSequence;
    rewrite(path, |obj| {
        let mut groups = obj
            .element(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()
            .to_vec();
        for (f, group) in groups.iter_mut().enumerate() {
            change(f, group);
        }
        obj.put(DataElement::new(
            tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(groups),
        ));
    });
}

#[test]
fn seg_frames_without_source_references_are_placed_by_position() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (_, labels_b) = two_case_dataset(root);
    let seg = seg_file(&root.join("labelsTr/ct_b"));
    rewrite_frames(&seg, |_, group| {
        group.remove_element(tags::DERIVATION_IMAGE_SEQUENCE);
    });
    let dataset = load_dataset(root).unwrap();
    let loaded = load_case(&dataset.cases[1], &dataset.labels).unwrap();
    assert_eq!(loaded.label.unwrap(), labels_b);

    // A frame moved 3 mm along the rows lies on no slice.
    rewrite_frames(&seg, |f, group| {
        if f == 1 {
            let position = DataElement::new(
                tags::IMAGE_POSITION_PATIENT,
                VR::DS,
                PrimitiveValue::from("-7\\-20\\28"),
            );
            let mut item = dicom_object::InMemDicomObject::new_empty();
            item.put(position);
            group.put(DataElement::new(
                tags::PLANE_POSITION_SEQUENCE,
                VR::SQ,
                dicom_core::value::DataSetSequence::from(vec![item]),
            ));
        }
    });
    let err = case_error(root, "ct_b");
    assert!(
        err.contains("7F3A09") && err.contains("frame 2") && err.contains("none of the series"),
        "{err}"
    );
}

#[test]
fn a_seg_frame_off_the_image_it_cites_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    two_case_dataset(root);
    let seg = seg_file(&root.join("labelsTr/ct_b"));
    rewrite_frames(&seg, |f, group| {
        if f == 0 {
            let mut item = dicom_object::InMemDicomObject::new_empty();
            item.put(DataElement::new(
                tags::IMAGE_POSITION_PATIENT,
                VR::DS,
                PrimitiveValue::from("-10\\-20\\100"),
            ));
            group.put(DataElement::new(
                tags::PLANE_POSITION_SEQUENCE,
                VR::SQ,
                dicom_core::value::DataSetSequence::from(vec![item]),
            ));
        }
    });
    let err = case_error(root, "ct_b");
    assert!(err.contains("frame 1 cites"), "{err}");
}

#[test]
fn series_folders_and_image_files_mix_in_one_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    two_case_dataset(root);
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sample-data/hippocampus");
    fs::copy(
        sample.join("imagesTr/hippocampus_001.nii.gz"),
        root.join("imagesTr/ct_c_0000.nii.gz"),
    )
    .unwrap();
    fs::copy(
        sample.join("labelsTr/hippocampus_001.nii.gz"),
        root.join("labelsTr/ct_c.nii.gz"),
    )
    .unwrap();
    let dataset = load_dataset(root).unwrap();
    let kinds: Vec<(&str, bool)> = dataset
        .cases
        .iter()
        .map(|c| (c.id.as_str(), c.dicom.is_some()))
        .collect();
    assert_eq!(kinds, [("ct_a", true), ("ct_b", true), ("ct_c", false)]);
    for case in &dataset.cases {
        assert!(load_case(case, &dataset.labels).unwrap().label.is_some());
    }
    // A series folder beside a file of the same case is ambiguous.
    fs::copy(
        sample.join("imagesTr/hippocampus_001.nii.gz"),
        root.join("imagesTr/ct_a_0000.nii.gz"),
    )
    .unwrap();
    let msg = load_dataset(root).unwrap_err().to_string();
    assert!(
        msg.contains("ct_a_0000") && msg.contains("keep one"),
        "{msg}"
    );
}

#[test]
fn a_series_folder_in_a_multi_channel_dataset_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    two_case_dataset(root);
    let json = r#"{"channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0,
        "liver": 1, "spleen": 2}, "file_ending": ".nii.gz"}"#;
    fs::write(root.join("dataset.json"), json).unwrap();
    let msg = load_dataset(root).unwrap_err().to_string();
    assert!(
        msg.contains("single-channel") && msg.contains("2 channel(s)"),
        "{msg}"
    );
}
