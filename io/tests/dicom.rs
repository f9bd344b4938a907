//! DICOM series in: synthetic series written with dicom-rs into temporary folders, read back and
//! checked against hand-computed volumes and affines; skips, refusals and malformed files.

mod dicom_fixtures;

use std::fs;
use std::path::Path;

use dicom_dictionary_std::uids;
use dicom_fixtures::*;
use segmenter_io::{
    find_dicom_cases, find_dicom_series, load_case, read_dicom_series, DicomSeries, IoError, Volume,
};

/// Reads the one series of `dir` whose id starts with `prefix`.
fn series_with(dir: &Path, prefix: &str) -> DicomSeries {
    let folder = find_dicom_series(dir).unwrap();
    let found: Vec<_> = folder
        .series
        .iter()
        .filter(|s| s.id.starts_with(prefix))
        .cloned()
        .collect();
    assert_eq!(found.len(), 1, "{prefix}: {:?}", folder.series);
    found.into_iter().next().unwrap()
}

fn assert_affine_close(got: &[[f64; 4]; 4], want: &[[f64; 4]; 4], tolerance: f64) {
    for r in 0..4 {
        for c in 0..4 {
            assert!(
                (got[r][c] - want[r][c]).abs() <= tolerance,
                "affine[{r}][{c}]: got {:?}, want {:?}",
                got,
                want
            );
        }
    }
}

fn assert_volume(volume: &Volume, spec: &SeriesSpec) {
    assert_eq!(volume.shape, [spec.cols, spec.rows, spec.slices]);
    assert_eq!(volume.data, expected_values(spec));
    // float32 header fields: a few micrometres of rounding at these coordinates.
    assert_affine_close(&volume.affine(), &expected_affine(spec), 1e-4);
}

/// An oblique CT (rotated about two axes), rescale slope 2 and intercept -1024.
fn oblique_ct() -> SeriesSpec {
    let (a, b) = (20f64.to_radians(), 10f64.to_radians());
    // Row direction turned by a about z, then both turned by b about x: orthonormal, oblique.
    let row = [a.cos(), a.sin(), 0.0];
    let col = [-a.sin(), a.cos(), 0.0];
    let turn = |v: [f64; 3]| {
        [
            v[0],
            v[1] * b.cos() - v[2] * b.sin(),
            v[1] * b.sin() + v[2] * b.cos(),
        ]
    };
    let (row_dir, col_dir) = (turn(row), turn(col));
    let normal = [
        row_dir[1] * col_dir[2] - row_dir[2] * col_dir[1],
        row_dir[2] * col_dir[0] - row_dir[0] * col_dir[2],
        row_dir[0] * col_dir[1] - row_dir[1] * col_dir[0],
    ];
    SeriesSpec {
        description: "Oblique CT / rescale".into(),
        row_dir,
        col_dir,
        step: normal.map(|v| v * 1.25),
        slices: 6,
        slope: 2.0,
        intercept: -1024.0,
        origin: [12.5, -40.0, 101.0],
        ..SeriesSpec::ct(3, "1.2.826.0.1.3680043.10.9.3")
    }
}

/// An MR in LPS whose slices step against the normal (positions decrease along it), unsigned.
fn reversed_mr() -> SeriesSpec {
    SeriesSpec {
        modality: "MR".into(),
        description: "T2 SAG".into(),
        signed: false,
        intercept: 0.0,
        // Sagittal: rows run posterior, columns run down (feet); normal = -x (right).
        row_dir: [0.0, 1.0, 0.0],
        col_dir: [0.0, 0.0, -1.0],
        step: [4.0, 0.0, 0.0],
        slices: 5,
        pixel_spacing: [0.9, 1.1],
        ..SeriesSpec::ct(7, "1.2.826.0.1.3680043.10.9.7")
    }
}

#[test]
fn oblique_ct_with_rescale_under_opaque_shuffled_names() {
    let dir = tempfile::tempdir().unwrap();
    let spec = oblique_ct();
    write_series(dir.path(), &spec, &[]);
    let series = series_with(dir.path(), "PAT001_20240131_s003");
    assert_eq!(series.id, "PAT001_20240131_s003_Oblique_CT_rescale");
    assert_eq!(series.files.len(), 6);
    let volume = read_dicom_series(&series).unwrap();
    assert_volume(&volume, &spec);
    // The rescale is applied: the smallest stored value -100 becomes -1224.
    assert!(volume.data.iter().any(|v| *v == -1224.0));
}

#[test]
fn slices_against_the_normal_are_reversed_and_the_affine_follows() {
    let dir = tempfile::tempdir().unwrap();
    let spec = reversed_mr();
    write_series(dir.path(), &spec, &[]);
    let volume = read_dicom_series(&series_with(dir.path(), "PAT001_20240131_s007")).unwrap();
    assert_volume(&volume, &spec);
    // By hand. Normal = row x col = (0,1,0) x (0,0,-1) = (-1,0,0) in LPS; the step (4,0,0) runs
    // against it, so the last slice written comes first and the slice axis is LPS (-4,0,0), RAS
    // (4,0,0). x: row direction LPS (0,1,0) times the column spacing 1.1 -> RAS (0,-1.1,0).
    // y: column direction LPS (0,0,-1) times the row spacing 0.9 -> RAS (0,0,-0.9).
    // Origin: slice 4 at LPS (-10 + 16, -20, 30) -> RAS (-6, 20, 30).
    let want = [
        [0.0, 0.0, 4.0, -6.0],
        [-1.1, 0.0, 0.0, 20.0],
        [0.0, -0.9, 0.0, 30.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    assert_affine_close(&volume.affine(), &want, 1e-5);
}

#[test]
fn enhanced_multiframe_ct_reads_like_the_classic_series() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SeriesSpec {
        series_uid: "1.2.826.0.1.3680043.10.9.11".into(),
        ..oblique_ct()
    };
    write_enhanced(&dir.path().join("ENHANCED"), &spec);
    let series = series_with(dir.path(), "PAT001");
    assert_eq!(series.files.len(), 1);
    assert_volume(&read_dicom_series(&series).unwrap(), &spec);
}

#[test]
fn localizers_non_images_and_other_files_are_skipped_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_series(root, &SeriesSpec::ct(2, "1.2.826.0.1.3680043.10.9.2"), &[]);
    // A localizer: one slice, its own series.
    let scout = SeriesSpec {
        image_type: "ORIGINAL\\PRIMARY\\LOCALIZER".into(),
        slices: 1,
        ..SeriesSpec::ct(1, "1.2.826.0.1.3680043.10.9.1")
    };
    write_series(root, &scout, &[]);
    // A LOCALIZER series of three slices is still skipped.
    let scouts = SeriesSpec {
        image_type: "ORIGINAL\\PRIMARY\\LOCALIZER".into(),
        ..SeriesSpec::ct(5, "1.2.826.0.1.3680043.10.9.5")
    };
    write_series(root, &scouts, &[]);
    write_non_image(
        &root.join("sr/report"),
        uids::BASIC_TEXT_SR_STORAGE,
        "SR",
        "1.2.826.0.1.3680043.10.9.90",
    );
    write_non_image(
        &root.join("rt/STRUCT"),
        "1.2.840.10008.5.1.4.1.1.481.3",
        "RTSTRUCT",
        "1.2.826.0.1.3680043.10.9.91",
    );
    fs::write(root.join("README.txt"), "export notes").unwrap();
    fs::write(root.join("zeros"), vec![0u8; 1000]).unwrap();
    let folder = find_dicom_series(root).unwrap();
    let ids: Vec<_> = folder.series.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["PAT001_20240131_s002_CT_series_2"]);
    let notes = folder.notes.join("\n");
    for expected in [
        "README.txt: not DICOM",
        "zeros: not DICOM",
        "report: structured report, not an image",
        "STRUCT: radiotherapy object, not an image",
        "series PAT001_20240131_s001_CT_series_1 (1 file,",
        "series PAT001_20240131_s005_CT_series_5 (3 files,",
        "localizer (ImageType LOCALIZER)",
    ] {
        assert!(notes.contains(expected), "{expected:?} not in\n{notes}");
    }
    assert_eq!(folder.notes.len(), 6, "{notes}");
    // Privacy: the patient's name and birth date appear in no id and no note.
    assert!(
        !notes.contains("Doe") && !notes.contains("19700101"),
        "{notes}"
    );
}

#[test]
fn a_series_that_changes_orientation_or_size_is_split() {
    let dir = tempfile::tempdir().unwrap();
    let uid = "1.2.826.0.1.3680043.10.9.20";
    let axial = SeriesSpec::ct(20, uid);
    write_series(&dir.path().join("ax"), &axial, &[]);
    let coronal = SeriesSpec {
        row_dir: [1.0, 0.0, 0.0],
        col_dir: [0.0, 0.0, -1.0],
        step: [0.0, 2.0, 0.0],
        slices: 4,
        ..axial.clone()
    };
    // Same UID, other instance UIDs and names.
    let coronal = SeriesSpec {
        series_uid: uid.into(),
        ..coronal
    };
    for k in 0..coronal.slices {
        let mut obj = slice_object(&coronal, k);
        obj.put(dicom_core::DataElement::new(
            dicom_dictionary_std::tags::SOP_INSTANCE_UID,
            dicom_core::VR::UI,
            dicom_core::PrimitiveValue::from(format!("{uid}.9{k}")),
        ));
        write_object(obj, &dir.path().join("cor").join(format!("IM{k}")));
    }
    let folder = find_dicom_series(dir.path()).unwrap();
    let ids: Vec<_> = folder.series.iter().map(|s| s.id.as_str()).collect();
    // The larger stack is part 1.
    assert_eq!(
        ids,
        [
            "PAT001_20240131_s020_CT_series_20_part1",
            "PAT001_20240131_s020_CT_series_20_part2"
        ]
    );
    assert_eq!(folder.series[0].files.len(), 4);
    assert_volume(&read_dicom_series(&folder.series[0]).unwrap(), &coronal);
    assert_volume(&read_dicom_series(&folder.series[1]).unwrap(), &axial);
}

/// The error of reading the series of `dir`, which must name the series and be one line.
fn refusal(dir: &Path) -> String {
    let series = series_with(dir, "PAT001");
    let err = read_dicom_series(&series).unwrap_err();
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "{msg}");
    assert!(matches!(err, IoError::DicomSeries { .. }), "{msg}");
    assert!(msg.contains(&series.id), "{msg}");
    msg
}

#[test]
fn a_missing_slice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_series(
        dir.path(),
        &SeriesSpec {
            slices: 6,
            ..SeriesSpec::ct(4, "1.2.826.0.1.3680043.10.9.4")
        },
        &[3],
    );
    let msg = refusal(dir.path());
    assert!(
        msg.contains("missing slices: a gap of 5.000 mm") && msg.contains("2.500 mm apart"),
        "{msg}"
    );
}

#[test]
fn uneven_spacing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SeriesSpec {
        slices: 4,
        ..SeriesSpec::ct(4, "1.2.826.0.1.3680043.10.9.41")
    };
    write_series(dir.path(), &spec, &[]);
    // Move the last slice 0.8 mm further: 3.3 mm instead of 2.5.
    let mut obj = slice_object(&spec, 3);
    let mut moved = spec.position(3);
    moved[2] += 0.8;
    obj.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::IMAGE_POSITION_PATIENT,
        dicom_core::VR::DS,
        dicom_core::PrimitiveValue::from(format!("{}\\{}\\{}", moved[0], moved[1], moved[2])),
    ));
    let files = find_dicom_series(dir.path()).unwrap().series[0]
        .files
        .clone();
    let last = files
        .iter()
        .find(|p| p.ends_with(opaque_name(&spec.series_uid, 3)))
        .unwrap();
    write_object(obj, last);
    let msg = refusal(dir.path());
    assert!(msg.contains("uneven slice spacing: 3.300 mm"), "{msg}");
}

#[test]
fn gantry_tilt_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Axial slices whose positions also move 0.5 mm in y per 2.5 mm step: an 11-degree tilt.
    write_series(
        dir.path(),
        &SeriesSpec {
            step: [0.0, 0.5, 2.5],
            ..SeriesSpec::ct(6, "1.2.826.0.1.3680043.10.9.6")
        },
        &[],
    );
    let msg = refusal(dir.path());
    assert!(
        msg.contains("11.31 degrees") && msg.contains("gantry tilt"),
        "{msg}"
    );
}

#[test]
fn slices_that_are_not_quite_parallel_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SeriesSpec::ct(8, "1.2.826.0.1.3680043.10.9.8");
    write_series(dir.path(), &spec, &[]);
    // Turn one slice by 0.3 degrees: within the split tolerance, beyond the parallel one.
    let t = 0.3f64.to_radians();
    let turned = SeriesSpec {
        row_dir: [t.cos(), t.sin(), 0.0],
        col_dir: [-t.sin(), t.cos(), 0.0],
        ..spec.clone()
    };
    let files = find_dicom_series(dir.path()).unwrap().series[0]
        .files
        .clone();
    let path = files
        .iter()
        .find(|p| p.ends_with(opaque_name(&spec.series_uid, 1)))
        .unwrap();
    write_object(slice_object(&turned, 1), path);
    let msg = refusal(dir.path());
    assert!(msg.contains("slices are not parallel"), "{msg}");
}

#[test]
fn duplicate_positions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SeriesSpec::ct(9, "1.2.826.0.1.3680043.10.9.9");
    write_series(dir.path(), &spec, &[]);
    // A second echo at slice 1's position, same series.
    let mut obj = slice_object(&spec, 1);
    obj.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::SOP_INSTANCE_UID,
        dicom_core::VR::UI,
        dicom_core::PrimitiveValue::from("1.2.826.0.1.3680043.10.9.9.77"),
    ));
    write_object(obj, &dir.path().join("echo2"));
    let msg = refusal(dir.path());
    assert!(msg.contains("2 slices share position"), "{msg}");
}

#[test]
fn ids_are_stable_whatever_the_file_order_and_unique() {
    let dir = tempfile::tempdir().unwrap();
    // Two series with the same number and description on the same day (two studies).
    write_series(
        &dir.path().join("study1"),
        &SeriesSpec::ct(2, "1.2.826.0.1.3680043.10.9.31"),
        &[],
    );
    write_series(
        &dir.path().join("study2"),
        &SeriesSpec::ct(2, "1.2.826.0.1.3680043.10.9.32"),
        &[],
    );
    let first = find_dicom_series(dir.path()).unwrap();
    let ids: Vec<_> = first.series.iter().map(|s| s.id.clone()).collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    assert!(ids
        .iter()
        .all(|id| id.starts_with("PAT001_20240131_s002_CT_series_2_")));
    // Renaming the folders changes the walk order, not the ids.
    fs::rename(dir.path().join("study1"), dir.path().join("zz")).unwrap();
    let again: Vec<_> = find_dicom_series(dir.path())
        .unwrap()
        .series
        .iter()
        .map(|s| s.id.clone())
        .collect();
    assert_eq!(again, ids);
}

#[test]
fn dicom_cases_load_like_nifti_cases() {
    let dir = tempfile::tempdir().unwrap();
    let spec = oblique_ct();
    write_series(dir.path(), &spec, &[]);
    fs::write(dir.path().join("notes.txt"), "x").unwrap();
    let found = find_dicom_cases(dir.path()).unwrap();
    assert_eq!(found.cases.len(), 1);
    assert_eq!(found.notes.len(), 1);
    let case = &found.cases[0];
    assert_eq!(case.images.len(), 1);
    let loaded = load_case(case, &Default::default()).unwrap();
    assert_eq!(loaded.shape, [spec.cols, spec.rows, spec.slices]);
    assert_eq!(loaded.channels[0].data, expected_values(&spec));
}

/// Damages one file of a good series and returns what reading the folder said: the notes and the
/// errors of every series found.
fn malformed_refusal(name: &str, damage: impl Fn(&Path)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let spec = SeriesSpec::ct(12, "1.2.826.0.1.3680043.10.9.12");
    let files = write_series(dir.path(), &spec, &[]);
    damage(&files[1]);
    let folder = find_dicom_series(dir.path()).unwrap();
    let msg: Vec<String> = folder
        .series
        .iter()
        .filter_map(|series| read_dicom_series(series).err().map(|e| e.to_string()))
        .collect();
    let msg = msg.join("\n");
    let notes = folder.notes.join("\n");
    let said = format!("{msg}\n{notes}");
    eprintln!("{name}:\n{said}\n");
    assert!(
        said.contains(&*files[1].to_string_lossy()) || said.contains("missing slices"),
        "{name}: the damaged file is not named: {said}"
    );
    said
}

#[test]
fn malformed_files_are_refused_naming_the_file() {
    let spec = SeriesSpec::ct(12, "1.2.826.0.1.3680043.10.9.12");
    let said = malformed_refusal("truncated", |p| {
        let bytes = fs::read(p).unwrap();
        fs::write(p, &bytes[..bytes.len() - 7]).unwrap();
    });
    assert!(said.contains("DICOM"), "{said}");

    let without_pixels = |p: &Path| {
        let mut obj = slice_object(&spec, 1);
        obj.remove_element(dicom_dictionary_std::tags::PIXEL_DATA);
        write_object(obj, p);
    };
    let said = malformed_refusal("no pixel data", without_pixels);
    assert!(said.contains("no PixelData"), "{said}");

    let said = malformed_refusal("rows x columns vs data", |p| {
        let mut obj = slice_object(&spec, 1);
        let mut words = pixel_words(&spec, 1);
        words.truncate(words.len() / 2);
        obj.put(dicom_core::DataElement::new(
            dicom_dictionary_std::tags::PIXEL_DATA,
            dicom_core::VR::OW,
            dicom_core::PrimitiveValue::U16(words.into()),
        ));
        write_object(obj, p);
    });
    assert!(said.contains("pixel data holds 20 bytes"), "{said}");

    let said = malformed_refusal("huge rows and columns", |p| {
        let mut obj = slice_object(&spec, 1);
        for tag in [
            dicom_dictionary_std::tags::ROWS,
            dicom_dictionary_std::tags::COLUMNS,
        ] {
            obj.put(dicom_core::DataElement::new(
                tag,
                dicom_core::VR::US,
                dicom_core::PrimitiveValue::from(65535u16),
            ));
        }
        obj.put(dicom_core::DataElement::new(
            dicom_dictionary_std::tags::NUMBER_OF_FRAMES,
            dicom_core::VR::IS,
            dicom_core::PrimitiveValue::from("999999"),
        ));
        write_object(obj, p);
    });
    assert!(
        said.contains("limit") || said.contains("single slice"),
        "{said}"
    );

    let said = malformed_refusal("no orientation", |p| {
        let mut obj = slice_object(&spec, 1);
        obj.remove_element(dicom_dictionary_std::tags::IMAGE_ORIENTATION_PATIENT);
        write_object(obj, p);
    });
    assert!(said.contains("no ImageOrientationPatient"), "{said}");

    let said = malformed_refusal("zeros", |p| fs::write(p, vec![0u8; 4096]).unwrap());
    assert!(said.contains("not DICOM"), "{said}");

    let said = malformed_refusal("wrong VR length", |p| {
        // The first element after the meta group claims 0xFFF0 bytes: a length that runs past
        // the end of the file.
        let mut bytes = fs::read(p).unwrap();
        let meta_len = u32::from_le_bytes(bytes[140..144].try_into().unwrap()) as usize;
        let first = 144 + meta_len;
        bytes[first + 6..first + 8].copy_from_slice(&0xFFF0u16.to_le_bytes());
        fs::write(p, bytes).unwrap();
    });
    assert!(said.contains("DICOM"), "{said}");

    let said = malformed_refusal("4 GB pixel data length", |p| {
        // PixelData is the last element: its 4-byte length sits just before its 40 bytes.
        let mut bytes = fs::read(p).unwrap();
        let at = bytes.len() - 40 - 4;
        assert_eq!(
            u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()),
            40
        );
        bytes[at..at + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        fs::write(p, bytes).unwrap();
    });
    assert!(
        said.contains("claims 4294967280 bytes, but only 40 remain"),
        "{said}"
    );

    let said = malformed_refusal("DICOMDIR", |p| {
        write_non_image(
            p,
            uids::MEDIA_STORAGE_DIRECTORY_STORAGE,
            "",
            "1.2.826.0.1.3680043.10.9.99",
        );
    });
    assert!(said.contains("DICOMDIR"), "{said}");
}

#[test]
fn the_qform_says_what_the_sform_says() {
    // Tools that read only the qform (some viewers) must see the same grid, left-handed or not.
    for spec in [oblique_ct(), reversed_mr(), SeriesSpec::ct(1, "1.2.3")] {
        let dir = tempfile::tempdir().unwrap();
        write_series(dir.path(), &spec, &[]);
        let volume = read_dicom_series(&series_with(dir.path(), "PAT001")).unwrap();
        let mut qform_only = volume.header.clone();
        qform_only.sform_code = 0;
        assert_affine_close(&qform_only.affine(), &volume.affine(), 1e-4);
    }
}

#[test]
fn a_dicom_seg_reads_back_with_its_segments_references_and_frames() {
    use dicom_dictionary_std::tags;
    let dir = tempfile::tempdir().unwrap();
    let spec = oblique_ct();
    write_series(dir.path(), &spec, &[]);
    let series = series_with(dir.path(), "PAT001");
    let volume = read_dicom_series(&series).unwrap();
    let geometry = segmenter_io::dicom_series_geometry(&series).unwrap();
    assert_eq!(geometry.instances.len(), spec.slices);
    // The geometry's slices are the volume's: slice z lies at the affine's position of (0, 0, z).
    let affine = volume.affine();
    for (z, p) in geometry.positions.iter().enumerate() {
        let ras = [0, 1, 2].map(|r| affine[r][2] * z as f64 + affine[r][3]);
        let lps = [-ras[0], -ras[1], ras[2]];
        for i in 0..3 {
            assert!((p[i] - lps[i]).abs() < 1e-4, "slice {z}: {p:?} vs {lps:?}");
        }
    }
    let plane = spec.rows * spec.cols;
    let mut labels = vec![0u8; plane * spec.slices];
    labels[plane + 3] = 1;
    labels[2 * plane + 4] = 1;
    labels[2 * plane + 5] = 2;
    labels[4 * plane + plane - 1] = 2;
    let names = std::collections::BTreeMap::from([
        (0u8, "background".to_string()),
        (1, "liver".to_string()),
        (2, "spleen".to_string()),
    ]);
    let seg_path = dir.path().join("out/seg.dcm");
    std::fs::create_dir_all(seg_path.parent().unwrap()).unwrap();
    let frames = segmenter_io::write_dicom_seg(&seg_path, &geometry, &labels, &names).unwrap();
    // liver on slices 1 and 2, spleen on slices 2 and 4.
    assert_eq!(frames, 4);
    // benchmarks/dicom-seg-highdicom.sh reads the same files with highdicom.
    if let Some(export) = std::env::var_os("DICOM_SEG_EXPORT") {
        let export = std::path::PathBuf::from(export);
        std::fs::create_dir_all(export.join("series")).unwrap();
        for (k, file) in series.files.iter().enumerate() {
            std::fs::copy(file, export.join("series").join(format!("{k:02}"))).unwrap();
        }
        std::fs::copy(&seg_path, export.join("seg.dcm")).unwrap();
        // The label map, slice z = the z-th source instance in geometry order, with that order.
        std::fs::write(export.join("labels.u8"), &labels).unwrap();
        let order: Vec<String> = geometry
            .instances
            .iter()
            .map(|i| i.instance_uid.clone())
            .collect();
        std::fs::write(
            export.join("order.txt"),
            format!("{} {}\n{}\n", spec.rows, spec.cols, order.join("\n")),
        )
        .unwrap();
    }

    let seg = dicom_object::open_file(&seg_path).unwrap();
    let text = |obj: &dicom_object::InMemDicomObject, tag| {
        obj.element(tag)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches('\0')
            .to_string()
    };
    let source = dicom_object::open_file(&series.files[0]).unwrap();
    assert_eq!(
        text(&seg, tags::SOP_CLASS_UID),
        "1.2.840.10008.5.1.4.1.1.66.4"
    );
    assert_eq!(text(&seg, tags::MODALITY), "SEG");
    assert_eq!(text(&seg, tags::SEGMENTATION_TYPE), "BINARY");
    for same in [
        tags::FRAME_OF_REFERENCE_UID,
        tags::STUDY_INSTANCE_UID,
        tags::PATIENT_ID,
        tags::PATIENT_NAME,
    ] {
        assert_eq!(text(&seg, same), text(&source, same));
    }
    assert_ne!(text(&seg, tags::SERIES_INSTANCE_UID), spec.series_uid);
    assert!(text(&seg, tags::SOP_INSTANCE_UID).starts_with("2.25."));
    assert_eq!(text(&seg, tags::NUMBER_OF_FRAMES), "4");
    let segments = seg
        .element(tags::SEGMENT_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    let segment_labels: Vec<String> = segments
        .iter()
        .map(|s| text(s, tags::SEGMENT_LABEL))
        .collect();
    assert_eq!(segment_labels, ["liver", "spleen"]);
    let referenced = seg
        .element(tags::REFERENCED_SERIES_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(
        text(&referenced[0], tags::SERIES_INSTANCE_UID),
        spec.series_uid
    );
    let instances = referenced[0]
        .element(tags::REFERENCED_INSTANCE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(instances.len(), spec.slices);

    let per_frame = seg
        .element(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    let bits = seg.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    let expected = [(1u16, 1usize), (1, 2), (2, 2), (2, 4)];
    for (f, (group, (segment, z))) in per_frame.iter().zip(expected).enumerate() {
        let item = |seq| group.element(seq).unwrap().items().unwrap()[0].clone();
        let number = item(tags::SEGMENT_IDENTIFICATION_SEQUENCE)
            .element(tags::REFERENCED_SEGMENT_NUMBER)
            .unwrap()
            .to_int::<u16>()
            .unwrap();
        assert_eq!(number, segment);
        let position = item(tags::PLANE_POSITION_SEQUENCE)
            .element(tags::IMAGE_POSITION_PATIENT)
            .unwrap()
            .to_multi_float64()
            .unwrap();
        let close = position.iter().zip(&geometry.positions[z]);
        assert!(close.into_iter().all(|(a, b)| (a - b).abs() < 1e-5));
        let derivation = item(tags::DERIVATION_IMAGE_SEQUENCE);
        let source_image = derivation
            .element(tags::SOURCE_IMAGE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0]
            .clone();
        assert_eq!(
            text(&source_image, tags::REFERENCED_SOP_INSTANCE_UID),
            geometry.instances[z].instance_uid
        );
        // The frame's pixels are the label map's slice z, segment's value set.
        let value = segment as u8;
        for i in 0..plane {
            let bit = f * plane + i;
            let set = bits[bit / 8] >> (bit % 8) & 1 == 1;
            assert_eq!(set, labels[z * plane + i] == value, "frame {f} pixel {i}");
        }
    }
}

#[test]
fn a_deflated_series_reads_like_a_plain_one() {
    // Deflated Explicit VR Little Endian: the whole data set is zlib-compressed.
    let dir = tempfile::tempdir().unwrap();
    let spec = oblique_ct();
    for k in 0..spec.slices {
        let obj = slice_object(&spec, k);
        let file = obj
            .with_meta(
                dicom_object::FileMetaTableBuilder::new()
                    .transfer_syntax("1.2.840.10008.1.2.1.99")
                    .media_storage_sop_class_uid(uids::CT_IMAGE_STORAGE)
                    .media_storage_sop_instance_uid(format!("{}.{}", spec.series_uid, k + 1)),
            )
            .unwrap();
        file.write_to_file(dir.path().join(format!("Z{k}")))
            .unwrap();
    }
    let plain = dir.path().join("plain/P0");
    write_object(slice_object(&spec, 0), &plain);
    let (deflated, plain) = (
        fs::metadata(dir.path().join("Z0")).unwrap().len(),
        fs::metadata(&plain).unwrap().len(),
    );
    assert!(
        deflated < plain,
        "not deflated: {deflated} vs {plain} bytes"
    );
    fs::remove_dir_all(dir.path().join("plain")).unwrap();
    assert_volume(
        &read_dicom_series(&series_with(dir.path(), "PAT001")).unwrap(),
        &spec,
    );
}

/// One frame of 16-bit samples as DICOM RLE Lossless (PS3.5 G): two byte planes (high bytes,
/// then low bytes), each PackBits-coded as literal runs, behind a 64-byte header of offsets.
fn rle_frame(words: &[u16]) -> Vec<u8> {
    let mut segments = Vec::new();
    for plane in [0usize, 1] {
        let bytes: Vec<u8> = words.iter().map(|w| w.to_be_bytes()[plane]).collect();
        let mut segment = Vec::new();
        for run in bytes.chunks(128) {
            segment.push((run.len() - 1) as u8);
            segment.extend_from_slice(run);
        }
        if segment.len() % 2 == 1 {
            segment.push(0);
        }
        segments.push(segment);
    }
    let mut frame = vec![0u8; 64];
    frame[..4].copy_from_slice(&2u32.to_le_bytes());
    let mut offset = 64u32;
    for (i, segment) in segments.iter().enumerate() {
        frame[4 + 4 * i..8 + 4 * i].copy_from_slice(&offset.to_le_bytes());
        offset += segment.len() as u32;
    }
    for segment in segments {
        frame.extend(segment);
    }
    frame
}

#[test]
fn an_rle_compressed_series_reads_like_a_plain_one() {
    let dir = tempfile::tempdir().unwrap();
    let spec = oblique_ct();
    for k in 0..spec.slices {
        let mut obj = slice_object(&spec, k);
        let fragments = dicom_core::value::PixelFragmentSequence::new(
            Vec::<u32>::new(),
            vec![rle_frame(&pixel_words(&spec, k))],
        );
        obj.put(dicom_core::DataElement::new(
            dicom_dictionary_std::tags::PIXEL_DATA,
            dicom_core::VR::OB,
            fragments,
        ));
        let file = obj
            .with_meta(
                dicom_object::FileMetaTableBuilder::new()
                    .transfer_syntax("1.2.840.10008.1.2.5")
                    .media_storage_sop_class_uid(uids::CT_IMAGE_STORAGE)
                    .media_storage_sop_instance_uid(format!("{}.{}", spec.series_uid, k + 1)),
            )
            .unwrap();
        file.write_to_file(dir.path().join(format!("R{k}")))
            .unwrap();
    }
    assert_volume(
        &read_dicom_series(&series_with(dir.path(), "PAT001")).unwrap(),
        &spec,
    );
}
