//! Our DICOM series reader against dcm2niix, the converter most pipelines use: the same synthetic
//! series through both, compared after both volumes are brought to the closest canonical (RAS+)
//! orientation. Voxel values must be equal and the affines agree to 1e-3 mm.
//!
//! Skipped with a note when `dcm2niix` is not on PATH (`apt-get install dcm2niix`).
//! `benchmarks/dicom-vs-dcm2niix.sh` runs it and keeps the table it prints.

mod dicom_fixtures;

use std::path::{Path, PathBuf};
use std::process::Command;

use dicom_fixtures::*;
use segmenter_io::{find_dicom_series, read_dicom_series, read_nifti, Orientation, Volume};

/// dcm2niix's version line, or None when it is not installed.
fn dcm2niix_version() -> Option<String> {
    let out = Command::new("dcm2niix").arg("-v").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.contains("version"))
        .map(|l| l.trim().to_string())
}

/// Converts the series in `input` with dcm2niix into `output`; returns the one NIfTI it wrote.
fn convert(input: &Path, output: &Path) -> PathBuf {
    std::fs::create_dir_all(output).unwrap();
    let out = Command::new("dcm2niix")
        .args(["-b", "n", "-z", "n", "-f", "%s", "-o"])
        .arg(output)
        .arg(input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dcm2niix failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut written: Vec<PathBuf> = std::fs::read_dir(output)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "nii"))
        .collect();
    assert_eq!(written.len(), 1, "dcm2niix wrote {written:?}");
    written.pop().unwrap()
}

/// A volume's voxels and affine in the closest canonical orientation.
fn canonical(volume: &Volume) -> (Vec<f32>, [usize; 3], [[f64; 4]; 4]) {
    let affine = volume.affine();
    let orientation = Orientation::from_affine(&affine);
    (
        orientation.to_canonical(&volume.data, volume.shape),
        orientation.canonical_shape(volume.shape),
        orientation.canonical_affine(&affine, volume.shape),
    )
}

/// The series compared: what each one exercises.
fn cases() -> Vec<(&'static str, SeriesSpec, bool)> {
    let bigger = |spec: SeriesSpec| SeriesSpec {
        rows: 12,
        cols: 16,
        ..spec
    };
    let (a, b) = (20f64.to_radians(), 10f64.to_radians());
    let turn = |v: [f64; 3]| {
        [
            v[0],
            v[1] * b.cos() - v[2] * b.sin(),
            v[1] * b.sin() + v[2] * b.cos(),
        ]
    };
    let row_dir = turn([a.cos(), a.sin(), 0.0]);
    let col_dir = turn([-a.sin(), a.cos(), 0.0]);
    let normal = [
        row_dir[1] * col_dir[2] - row_dir[2] * col_dir[1],
        row_dir[2] * col_dir[0] - row_dir[0] * col_dir[2],
        row_dir[0] * col_dir[1] - row_dir[1] * col_dir[0],
    ];
    let oblique = bigger(SeriesSpec {
        row_dir,
        col_dir,
        step: normal.map(|v| v * 1.25),
        slices: 6,
        slope: 2.0,
        intercept: -1024.0,
        origin: [12.5, -40.0, 101.0],
        ..SeriesSpec::ct(3, "1.2.826.0.1.3680043.10.9.103")
    });
    let sagittal_mr = bigger(SeriesSpec {
        modality: "MR".into(),
        signed: false,
        intercept: 0.0,
        row_dir: [0.0, 1.0, 0.0],
        col_dir: [0.0, 0.0, -1.0],
        step: [4.0, 0.0, 0.0],
        slices: 5,
        pixel_spacing: [0.9, 1.1],
        ..SeriesSpec::ct(7, "1.2.826.0.1.3680043.10.9.107")
    });
    let axial_feet_first = bigger(SeriesSpec {
        // Positions decrease in z: slice order reversed against the normal.
        step: [0.0, 0.0, -3.0],
        slices: 8,
        ..SeriesSpec::ct(2, "1.2.826.0.1.3680043.10.9.102")
    });
    vec![
        ("oblique CT, rescale 2/-1024", oblique.clone(), false),
        ("sagittal MR, slices against the normal", sagittal_mr, false),
        ("axial CT, positions decreasing", axial_feet_first, false),
        (
            "enhanced multi-frame CT (oblique)",
            SeriesSpec {
                series_uid: "1.2.826.0.1.3680043.10.9.111".into(),
                ..oblique
            },
            true,
        ),
    ]
}

#[test]
fn our_volumes_equal_dcm2niix() {
    let Some(version) = dcm2niix_version() else {
        eprintln!("skipping: dcm2niix is not installed (apt-get install dcm2niix)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    println!("dcm2niix: {version}\n");
    println!("| series | shape (canonical) | voxels equal | max abs voxel difference | max abs affine difference (mm) |");
    println!("|---|---|---|---|---|");
    let mut failures = Vec::new();
    for (n, (what, spec, enhanced)) in cases().into_iter().enumerate() {
        let input = dir.path().join(format!("in{n}"));
        if enhanced {
            write_enhanced(&input.join("ENHANCED"), &spec);
        } else {
            write_series(&input, &spec, &[]);
        }
        let theirs = read_nifti(&convert(&input, &dir.path().join(format!("out{n}")))).unwrap();
        let series = find_dicom_series(&input).unwrap().series;
        assert_eq!(series.len(), 1, "{what}");
        let ours = read_dicom_series(&series[0]).unwrap();
        let (our_data, our_shape, our_affine) = canonical(&ours);
        let (their_data, their_shape, their_affine) = canonical(&theirs);
        let voxel_diff = if our_shape == their_shape {
            our_data
                .iter()
                .zip(&their_data)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max)
        } else {
            f32::INFINITY
        };
        let affine_diff = (0..3)
            .flat_map(|r| (0..4).map(move |c| (r, c)))
            .map(|(r, c)| (our_affine[r][c] - their_affine[r][c]).abs())
            .fold(0.0f64, f64::max);
        println!(
            "| {what} | {:?} (dcm2niix {:?}) | {} | {voxel_diff} | {affine_diff:.2e} |",
            our_shape,
            their_shape,
            our_shape == their_shape && voxel_diff == 0.0
        );
        if our_shape != their_shape || voxel_diff != 0.0 || affine_diff > 1e-3 {
            failures.push(format!(
                "{what}: ours {our_affine:?}, dcm2niix {their_affine:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
