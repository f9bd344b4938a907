//! `plan` and `train` on an nnU-Net-style dataset whose images are DICOM series folders, as a
//! user runs them: sample scans written as series (opaque names, a stray file), two labelled by
//! NIfTI files and one by a DICOM SEG made by our own writer.

use std::collections::BTreeMap;
use std::path::Path;

use segmenter_io::{dicom_series_geometry, find_dicom_series, read_nifti, write_dicom_seg, Volume};

mod common;
use common::*;

#[path = "../io/tests/dicom_fixtures/mod.rs"]
mod dicom_fixtures;
use dicom_fixtures::{write_series, SeriesSpec};

/// Writes `scan` (a sample scan: axis-aligned, RAS+) as a DICOM series under `folder` whose volume
/// has the scan's voxel order and affine: rows along LPS -x (RAS +x), columns along LPS -y, slices
/// along +z. Intensities are rounded, as DICOM stores integers.
fn write_as_series(scan: &Volume, folder: &Path, number: i32) {
    let affine = scan.affine();
    let [nx, ny, nz] = scan.shape;
    let spec = SeriesSpec {
        patient_id: format!("PSEUDO-{number}"),
        description: "T1".into(),
        modality: "MR".into(),
        rows: ny,
        cols: nx,
        row_dir: [-1.0, 0.0, 0.0],
        col_dir: [0.0, -1.0, 0.0],
        pixel_spacing: [affine[1][1], affine[0][0]],
        origin: [-affine[0][3], -affine[1][3], affine[2][3]],
        step: [0.0, 0.0, affine[2][2]],
        slices: nz,
        slope: 1.0,
        intercept: 0.0,
        pixels: Some(scan.data.iter().map(|v| v.round() as i32).collect()),
        ..SeriesSpec::ct(number, &format!("1.2.826.0.1.3680043.10.9.60{number}"))
    };
    write_series(folder, &spec, &[]);
}

#[test]
fn plan_and_train_run_on_a_dataset_of_dicom_series() {
    let dir = tempfile::tempdir().unwrap();
    let src = root().join("sample-data/hippocampus");
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("labelsTr")).unwrap();
    let cases = ["hippocampus_001", "hippocampus_003", "hippocampus_004"];
    for (n, case) in cases.iter().enumerate() {
        let scan = read_nifti(&src.join(format!("imagesTr/{case}.nii.gz"))).unwrap();
        let folder = data.join(format!("imagesTr/{case}_0000"));
        write_as_series(&scan, &folder, n as i32 + 1);
        std::fs::write(folder.join("README.TXT"), "exported by a PACS").unwrap();
        let label = src.join(format!("labelsTr/{case}.nii.gz"));
        if n < 2 {
            // The sample label map lies on the series' grid as it lay on the scan's.
            std::fs::copy(&label, data.join(format!("labelsTr/{case}.nii.gz"))).unwrap();
        } else {
            let series = find_dicom_series(&folder).unwrap().series.remove(0);
            let geometry = dicom_series_geometry(&series).unwrap();
            let labels: Vec<u8> = read_nifti(&label)
                .unwrap()
                .data
                .iter()
                .map(|v| *v as u8)
                .collect();
            let names: BTreeMap<u8, String> =
                BTreeMap::from([(1, "Anterior".into()), (2, "Posterior".into())]);
            let seg = data.join(format!("labelsTr/{case}/SEG00001"));
            std::fs::create_dir_all(seg.parent().unwrap()).unwrap();
            write_dicom_seg(&seg, &geometry, &labels, &names).unwrap();
        }
    }
    let json = r#"{"name": "HippocampusDicom", "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "Anterior": 1, "Posterior": 2}, "numTraining": 3,
        "file_ending": ".nii.gz"}"#;
    std::fs::write(data.join("dataset.json"), json).unwrap();

    let plan = dir.path().join("plan.json");
    let out = segmenter(&["plan", "--data", s(&data), "--out", s(&plan)]);
    assert!(out.status.success(), "plan failed:\n{}", text(&out));
    assert!(text(&out).contains("3 cases"), "{}", text(&out));

    let run = dir.path().join("run");
    let printed = train_two_steps_ok(
        &data,
        &run,
        "batch_size = 4\nwarmup_steps = 1\nval_every = 1\n",
    );
    assert!(!printed.contains("panicked"), "{printed}");
    assert!(run.join("model.mpk").is_file(), "{printed}");
    let splits = std::fs::read_to_string(run.join("splits.json")).unwrap();
    for case in cases {
        assert!(splits.contains(case), "{splits}");
    }
}
