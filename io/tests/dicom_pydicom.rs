//! Series written by pydicom (io/tests/dicom_fixtures/make_series.py, from crops of the
//! TotalSegmentator example scans) read by our reader: voxels exactly and affines to 1e-3 mm
//! against the crops the generator wrote beside them, the scout and the stray text file skipped,
//! and, where dcm2niix is installed, the same volumes as dcm2niix's. The CT with pydicom's DICOM
//! SEG of four organs trains as a dataset case, the SEG read back as the generator's label crop.

use std::path::{Path, PathBuf};
use std::process::Command;

use segmenter_io::{
    find_dicom_series, load_case, load_dataset, read_dicom_series, read_nifti, Orientation, Volume,
};

/// The committed output of make_series.py.
fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dicom_fixtures/pydicom")
}

/// The series of the export folder and their reference crops: (id prefix, reference file,
/// dcm2niix's name for it, which is the SeriesNumber).
const SERIES: [(&str, &str, &str); 2] = [
    (
        "PYDICOM01_20250102_s002_Abdomen_oblique",
        "ct_oblique.nii.gz",
        "2",
    ),
    (
        "PYDICOM01_20250102_s005_T1_LPS_top-down",
        "mr_lps.nii.gz",
        "5",
    ),
];

fn max_affine_difference(a: &[[f64; 4]; 4], b: &[[f64; 4]; 4]) -> f64 {
    (0..3)
        .flat_map(|r| (0..4).map(move |c| (r, c)))
        .map(|(r, c)| (a[r][c] - b[r][c]).abs())
        .fold(0.0, f64::max)
}

/// A volume's voxels, shape and affine in the closest canonical orientation.
fn canonical(volume: &Volume) -> (Vec<f32>, [usize; 3], [[f64; 4]; 4]) {
    let affine = volume.affine();
    let o = Orientation::from_affine(&affine);
    (
        o.to_canonical(&volume.data, volume.shape),
        o.canonical_shape(volume.shape),
        o.canonical_affine(&affine, volume.shape),
    )
}

/// Our volumes of the export folder, in SERIES order, and the notes.
fn ours() -> (Vec<Volume>, Vec<String>) {
    let folder = find_dicom_series(&fixtures().join("export")).unwrap();
    let ids: Vec<&str> = folder.series.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, SERIES.map(|s| s.0), "{:?}", folder.notes);
    let volumes = folder
        .series
        .iter()
        .map(|s| read_dicom_series(s).unwrap())
        .collect();
    (volumes, folder.notes)
}

#[test]
fn pydicom_series_read_as_the_source_crops() {
    let (volumes, notes) = ours();
    for (volume, (id, reference, _)) in volumes.iter().zip(SERIES) {
        let want = read_nifti(&fixtures().join(reference)).unwrap();
        assert_eq!(volume.shape, want.shape, "{id}");
        // Exact: the stored integers rescaled (CT: slope 0.5, intercept -1024) are the crop's.
        assert_eq!(volume.data, want.data, "{id}");
        let diff = max_affine_difference(&volume.affine(), &want.affine());
        assert!(
            diff < 1e-3,
            "{id}: {:?} vs {:?}",
            volume.affine(),
            want.affine()
        );
    }
    // The CT's rescale was applied: air is about -1000 HU, not the stored ~48.
    assert!(volumes[0].data.iter().any(|v| *v < -900.0));
    let notes = notes.join("\n");
    assert!(notes.contains("INFO: not DICOM"), "{notes}");
    assert!(
        notes.contains("series PYDICOM01_20250102_s001_Topogram (1 file")
            && notes.contains("localizer (ImageType LOCALIZER)"),
        "{notes}"
    );
    assert_eq!(notes.lines().count(), 2, "{notes}");
}

#[test]
fn pydicom_series_read_as_dcm2niix_converts_them() {
    let version = Command::new("dcm2niix").arg("-v").output();
    if version.is_err() {
        eprintln!("skipping: dcm2niix is not installed (apt-get install dcm2niix)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("dcm2niix")
        .args(["-b", "n", "-z", "n", "-f", "%s", "-o"])
        .arg(dir.path())
        .arg(fixtures().join("export"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (volumes, _) = ours();
    for (volume, (id, _, number)) in volumes.iter().zip(SERIES) {
        let theirs = read_nifti(&dir.path().join(format!("{number}.nii"))).unwrap();
        let (our_data, our_shape, our_affine) = canonical(volume);
        let (their_data, their_shape, their_affine) = canonical(&theirs);
        assert_eq!(our_shape, their_shape, "{id}");
        assert_eq!(our_data, their_data, "{id}");
        let diff = max_affine_difference(&our_affine, &their_affine);
        assert!(diff < 1e-3, "{id}: {our_affine:?} vs {their_affine:?}");
    }
}

/// Copies a folder and everything under it.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_pydicom_seg_labels_the_ct_as_a_dataset_case() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // The CT's folder as exported, scout included (skipped), as the case's series folder.
    copy_tree(
        &fixtures().join("export/CT"),
        &root.join("imagesTr/abdomen_0000"),
    );
    std::fs::create_dir_all(root.join("labelsTr")).unwrap();
    std::fs::copy(
        fixtures().join("ct_oblique_seg.dcm"),
        root.join("labelsTr/abdomen.dcm"),
    )
    .unwrap();
    // Label values in another order than the SEG's segment numbers: matched by name.
    let json = r#"{"channel_names": {"0": "CT"}, "labels": {"background": 0, "kidney_right": 1,
        "kidney_left": 2, "gallbladder": 3, "liver": 4}, "file_ending": ".nii.gz"}"#;
    std::fs::write(root.join("dataset.json"), json).unwrap();
    let dataset = load_dataset(root).unwrap();
    let loaded = load_case(&dataset.cases[0], &dataset.labels).unwrap();
    assert!(loaded.notes.is_empty(), "{:?}", loaded.notes);
    let want = read_nifti(&fixtures().join("ct_oblique_labels.nii.gz")).unwrap();
    let want: Vec<u8> = want.data.iter().map(|v| *v as u8).collect();
    assert_eq!(loaded.label.as_deref(), Some(&want[..]));
    for value in 1..=4 {
        assert!(want.contains(&value), "label {value} absent from the crop");
    }
    let ct = read_nifti(&fixtures().join("ct_oblique.nii.gz")).unwrap();
    assert_eq!(loaded.channels[0].data, ct.data);
}
