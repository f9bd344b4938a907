//! `predict` on a DICOM patient folder as a user runs it: a held-out scan written as a DICOM series
//! (other voxel order, opaque file names, a stray file), predicted like its NIfTI twin.

use std::path::{Path, PathBuf};

use segmenter_io::{read_nifti, write_nifti, NiftiData, Orientation, Volume};

mod common;
use common::*;

#[path = "../io/tests/dicom_fixtures/mod.rs"]
mod dicom_fixtures;
use dicom_fixtures::{write_series, SeriesSpec};

/// A held-out scan with its intensities rounded to whole numbers (DICOM stores integers), as
/// NIfTI in `nifti_dir` and as a DICOM series in `dicom_dir`. The series runs x and z the other
/// way (rows along LPS +x = RAS -x, slices along LPS -z), so the reader must reorder and the
/// predictions can only agree in world space.
fn scan_twice(nifti_dir: &Path, dicom_dir: &Path) {
    let source = root().join("sample-data/hippocampus/imagesTs/hippocampus_036.nii.gz");
    let scan = read_nifti(&source).unwrap();
    let affine = scan.affine();
    // The sample scans are axis-aligned, 1 mm, RAS+: the mapping below relies on it.
    for (r, row) in affine.iter().take(3).enumerate() {
        for (c, v) in row.iter().take(3).enumerate() {
            assert_eq!(*v, if r == c { 1.0 } else { 0.0 }, "{affine:?}");
        }
    }
    let [nx, ny, nz] = scan.shape;
    let rounded: Vec<f32> = scan.data.iter().map(|v| v.round()).collect();
    std::fs::create_dir_all(nifti_dir).unwrap();
    let mut header = scan.header.clone();
    header.scl_slope = 1.0;
    header.scl_inter = 0.0;
    write_nifti(
        &nifti_dir.join("hippocampus_036.nii.gz"),
        &header,
        &NiftiData::F32(rounded.clone()),
    )
    .unwrap();
    // Slice k, row j, column i of the series is voxel (nx-1-i, j, nz-1-k) of the NIfTI.
    let mut pixels = Vec::with_capacity(rounded.len());
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                let (x, z) = (nx - 1 - i, nz - 1 - k);
                pixels.push(rounded[(z * ny + j) * nx + x] as i32);
            }
        }
    }
    // RAS of voxel (nx-1, 0, nz-1) is affine * it; LPS negates x and y.
    let corner: [f64; 3] = std::array::from_fn(|r| {
        affine[r][3] + affine[r][0] * (nx - 1) as f64 + affine[r][2] * (nz - 1) as f64
    });
    let spec = SeriesSpec {
        patient_id: "PSEUDO-7".into(),
        description: "T1 hippocampus".into(),
        modality: "MR".into(),
        rows: ny,
        cols: nx,
        row_dir: [1.0, 0.0, 0.0],
        col_dir: [0.0, -1.0, 0.0],
        pixel_spacing: [1.0, 1.0],
        origin: [-corner[0], -corner[1], corner[2]],
        step: [0.0, 0.0, -1.0],
        slices: nz,
        slope: 1.0,
        intercept: 0.0,
        pixels: Some(pixels),
        ..SeriesSpec::ct(4, "1.2.826.0.1.3680043.10.9.500")
    };
    write_series(&dicom_dir.join("PATIENT/STUDY"), &spec, &[]);
    std::fs::write(dicom_dir.join("README.TXT"), "exported by a PACS").unwrap();
}

/// A label map's voxels and affine in the closest canonical orientation.
fn canonical(volume: &Volume) -> (Vec<f32>, [[f64; 4]; 4]) {
    let affine = volume.affine();
    let o = Orientation::from_affine(&affine);
    (
        o.to_canonical(&volume.data, volume.shape),
        o.canonical_affine(&affine, volume.shape),
    )
}

#[test]
fn a_dicom_folder_predicts_like_its_nifti_twin() {
    let (dir, run) = trained();
    let (nifti_in, dicom_in) = (dir.path().join("nifti"), dir.path().join("export"));
    scan_twice(&nifti_in, &dicom_in);
    let (nifti_out, dicom_out) = (dir.path().join("pred-nifti"), dir.path().join("pred-dicom"));
    let out = predict(&run, &nifti_in, &nifti_out, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let out = predict(&run, &dicom_in, &dicom_out, &["--dicom-seg"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("README.TXT: not DICOM"), "{said}");
    assert!(
        !said.contains("Doe") && !said.contains("19700101"),
        "{said}"
    );

    let name = "PSEUDO-7_20240131_s004_T1_hippocampus.nii.gz";
    let from_dicom: PathBuf = dicom_out.join(name);
    let (dicom_labels, dicom_affine) = canonical(&read_nifti(&from_dicom).unwrap());
    let (nifti_labels, nifti_affine) =
        canonical(&read_nifti(&nifti_out.join("hippocampus_036.nii.gz")).unwrap());
    assert_eq!(dicom_labels, nifti_labels);
    for r in 0..4 {
        for c in 0..4 {
            assert!(
                (dicom_affine[r][c] - nifti_affine[r][c]).abs() < 1e-4,
                "{dicom_affine:?} vs {nifti_affine:?}"
            );
        }
    }

    // dcm2niix's NIfTI of the same folder predicts the same labels (when dcm2niix is installed).
    let converted_dir = dir.path().join("dcm2niix");
    std::fs::create_dir_all(&converted_dir).unwrap();
    match std::process::Command::new("dcm2niix")
        .args(["-b", "n", "-z", "y", "-f", "%s", "-o"])
        .arg(&converted_dir)
        .arg(&dicom_in)
        .output()
    {
        Ok(converted) if converted.status.success() => {
            let out_dir = dir.path().join("pred-dcm2niix");
            let out = predict(&run, &converted_dir, &out_dir, &[]);
            assert!(out.status.success(), "{}", text(&out));
            let (labels, affine) = canonical(&read_nifti(&out_dir.join("4.nii.gz")).unwrap());
            assert_eq!(
                labels, nifti_labels,
                "dcm2niix's NIfTI predicts other labels"
            );
            let worst = (0..3)
                .flat_map(|r| (0..4).map(move |c| (r, c)))
                .map(|(r, c)| (affine[r][c] - nifti_affine[r][c]).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-3, "{affine:?} vs {nifti_affine:?}");
        }
        _ => eprintln!("skipping the dcm2niix comparison: dcm2niix is not installed"),
    }

    // The DICOM SEG cites the series' instances, one frame per segment and slice it covers.
    let seg_path = dicom_out.join("dicom-seg/PSEUDO-7_20240131_s004_T1_hippocampus.dcm");
    let seg = dicom_object::open_file(&seg_path).unwrap();
    let frames = seg
        .element(dicom_dictionary_std::tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()
        .len();
    // In its file the label map is in the series' order: slice z is the z-th source instance.
    let dicom_map = read_nifti(&from_dicom).unwrap();
    let plane = dicom_map.shape[0] * dicom_map.shape[1];
    let labelled_slices: usize = (1..=2u8)
        .map(|value| {
            let slices = dicom_map.data.chunks(plane);
            slices.filter(|s| s.contains(&f32::from(value))).count()
        })
        .sum();
    assert_eq!(frames, labelled_slices);

    // Run again: the series' label map and SEG exist, so it is skipped.
    let out = predict(&run, &dicom_in, &dicom_out, &["--dicom-seg"]);
    assert!(text(&out).contains("1 skipped"), "{}", text(&out));
}
