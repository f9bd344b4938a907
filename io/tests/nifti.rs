//! NIfTI reading and writing: exact round trips, scaling, real files, header edge cases.

mod common;

use common::*;
use segmenter_io::{read_nifti, read_nifti_raw, write_labels, write_nifti, NiftiData, NiftiHeader};

const KINDS: [&str; 10] = [
    "u8", "i8", "i16", "u16", "i32", "u32", "i64", "u64", "f32", "f64",
];

#[test]
fn round_trip_every_type_plain_and_gzip_both_byte_orders() {
    let dir = tempfile::tempdir().unwrap();
    let shape = [5, 4, 3];
    for (k, kind) in KINDS.iter().enumerate() {
        for big_endian in [false, true] {
            for ext in ["nii", "nii.gz"] {
                let mut header = rotated_header(shape);
                header.big_endian = big_endian;
                let data = random_data(kind, 60, 100 + k as u64);
                let path = dir.path().join(format!("{kind}_{big_endian}.{ext}"));
                write_nifti(&path, &header, &data).unwrap();
                let (back_header, back_data) = read_nifti_raw(&path).unwrap();
                assert_eq!(back_data, data, "{}", path.display());

                let mut expected = header.clone();
                expected.datatype = data.datatype();
                expected.bitpix = data.bitpix();
                expected.vox_offset = 352.0;
                expected.raw = expected.to_bytes();
                // Field-by-field and the raw 348 bytes (description string included).
                assert_eq!(back_header, expected, "{}", path.display());
                assert_eq!(&back_header.raw[148..162], b"segmenter test");
                assert_eq!(back_header.affine(), header.affine());
                assert_eq!(back_header.shape(), shape);
                assert_eq!(back_header.big_endian, big_endian);
            }
        }
    }
    // The writer is atomic: no temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn gzip_detected_by_content_not_extension() {
    let dir = tempfile::tempdir().unwrap();
    let gz = write_f32(dir.path(), "a.nii.gz", [3, 3, 3], None);
    let renamed = dir.path().join("a_really_gzip.nii");
    std::fs::rename(&gz, &renamed).unwrap();
    assert!(std::fs::read(&renamed).unwrap().starts_with(&[0x1f, 0x8b]));
    let vol = read_nifti(&renamed).unwrap();
    assert_eq!(vol.data[5], 2.5);
}

#[test]
fn affine_from_sform_qform_and_fallback() {
    let mut h = rotated_header([2, 2, 2]);
    let s = h.affine();
    let (sin, cos) = (30f64.to_radians().sin(), 30f64.to_radians().cos());
    assert!((s[0][0] - cos * 0.9).abs() < 1e-6 && (s[1][0] - sin * 0.9).abs() < 1e-6);
    assert_eq!(s[1][3], 40.25);
    // The qform describes the same rotation; the quaternion formula must agree with the sform.
    h.sform_code = 0;
    let q = h.affine();
    for r in 0..3 {
        for c in 0..4 {
            assert!(
                (q[r][c] - s[r][c]).abs() < 1e-5,
                "qform {q:?} vs sform {s:?}"
            );
        }
    }
    // qfac = -1 flips the third column.
    h.pixdim[0] = -1.0;
    assert!((h.affine()[2][2] + 2.5).abs() < 1e-6);
    h.qform_code = 0;
    let d = h.affine();
    assert_eq!(d[0], [0.8999999761581421, 0.0, 0.0, 0.0]);
    assert_eq!(d[2], [0.0, 0.0, 2.5, 0.0]);
}

#[test]
fn scl_slope_and_inter_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = rotated_header([4, 1, 1]);
    h.scl_slope = 2.5;
    h.scl_inter = -10.0;
    let path = dir.path().join("scaled.nii.gz");
    write_nifti(&path, &h, &NiftiData::I16(vec![0, 1, -4, 1000])).unwrap();
    assert_eq!(
        read_nifti(&path).unwrap().data,
        vec![-10.0, -7.5, -20.0, 2490.0]
    );
    // The raw reader does not scale.
    assert_eq!(
        read_nifti_raw(&path).unwrap().1,
        NiftiData::I16(vec![0, 1, -4, 1000])
    );
    // NIfTI-1: slope 0 means "no scaling".
    h.scl_slope = 0.0;
    write_nifti(&path, &h, &NiftiData::I16(vec![0, 1, -4, 1000])).unwrap();
    assert_eq!(
        read_nifti(&path).unwrap().data,
        vec![0.0, 1.0, -4.0, 1000.0]
    );
}

#[test]
fn two_d_and_singleton_4d_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = rotated_header([3, 2, 1]);
    h.dim = [2, 3, 2, 0, 0, 0, 0, 0];
    let p2 = dir.path().join("flat.nii");
    write_nifti(&p2, &h, &NiftiData::U8(vec![1, 2, 3, 4, 5, 6])).unwrap();
    let v = read_nifti(&p2).unwrap();
    assert_eq!(v.shape, [3, 2, 1]);
    assert_eq!(v.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);

    h.dim = [5, 3, 2, 1, 1, 1, 1, 1];
    let p4 = dir.path().join("singleton4d.nii.gz");
    write_nifti(&p4, &h, &NiftiData::U8(vec![1, 2, 3, 4, 5, 6])).unwrap();
    assert_eq!(read_nifti(&p4).unwrap().shape, [3, 2, 1]);

    // The writer refuses 4D data, so build the file as 3D and patch dim[] to [4, 3, 2, 1, 5].
    h.dim = [3, 3, 2, 5, 1, 1, 1, 1];
    let p5 = dir.path().join("timeseries.nii");
    write_nifti(&p5, &h, &NiftiData::U8(vec![0; 30])).unwrap();
    let mut bytes = std::fs::read(&p5).unwrap();
    for (i, d) in [4i16, 3, 2, 1, 5, 1, 1, 1].iter().enumerate() {
        bytes[40 + 2 * i..42 + 2 * i].copy_from_slice(&d.to_le_bytes());
    }
    std::fs::write(&p5, bytes).unwrap();
    let msg = err_naming(read_nifti(&p5), &p5);
    assert!(
        msg.contains("expected a 3D volume, found 4D with 5 time points"),
        "{msg}"
    );
}

#[test]
fn real_hippocampus_files_uint8_and_float32() {
    let root = sample_hippocampus();
    // hippocampus_001 is stored as uint8, hippocampus_003 as float32 (see sample-data/README.md).
    for (case, datatype) in [("hippocampus_001", 2), ("hippocampus_003", 16)] {
        let path = root.join(format!("imagesTr/{case}.nii.gz"));
        let (raw_header, _) = read_nifti_raw(&path).unwrap();
        assert_eq!(raw_header.datatype, datatype, "{case}");
        let vol = read_nifti(&path).unwrap();
        let [x, y, z] = vol.shape;
        assert!(
            (25..=50).contains(&x) && (35..=65).contains(&y) && (20..=50).contains(&z),
            "{:?}",
            vol.shape
        );
        assert_eq!(vol.spacing(), [1.0, 1.0, 1.0]);
        assert_eq!(vol.data.len(), x * y * z);
        assert!(vol.data.iter().all(|v| v.is_finite()));
        let max = vol.data.iter().cloned().fold(f32::MIN, f32::max);
        assert!(max > 10.0, "an MRI should have some signal, max {max}");
    }
    let first = read_nifti(&root.join("imagesTr/hippocampus_001.nii.gz")).unwrap();
    assert_eq!(first.shape, [35, 51, 35]);
    if let Some(shared) = shared_hippocampus() {
        let v = read_nifti(&shared.join("imagesTr/hippocampus_001.nii.gz")).unwrap();
        assert_eq!(v, first);
    }
}

#[test]
fn write_labels_keeps_reference_header_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let image = sample_hippocampus().join("imagesTr/hippocampus_003.nii.gz");
    let (reference, _) = read_nifti_raw(&image).unwrap();
    let n: usize = reference.shape().iter().product();
    let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
    let out = dir.path().join("pred.nii.gz");
    write_labels(&out, &reference, &labels).unwrap();
    let (h, data) = read_nifti_raw(&out).unwrap();
    assert_eq!(data, NiftiData::U8(labels.clone()));
    assert_eq!(h.affine(), reference.affine());
    assert_eq!(
        (h.datatype, h.bitpix, h.scl_slope, h.scl_inter),
        (2, 8, 1.0, 0.0)
    );
    // Every byte except datatype (70..72), bitpix (72..74), vox_offset and scl (108..120) is the reference's.
    for i in 0..348 {
        if !(70..74).contains(&i) && !(108..120).contains(&i) {
            assert_eq!(h.raw[i], reference.raw[i], "header byte {i}");
        }
    }
    let wrong = dir.path().join("wrong.nii.gz");
    let msg = err_naming(write_labels(&wrong, &reference, &labels[1..]), &wrong);
    assert!(msg.contains("do not fit"), "{msg}");
    assert!(!wrong.exists());
}

#[test]
fn header_new_rejects_bad_shapes() {
    assert!(NiftiHeader::new([0, 1, 1], [1.0; 3]).is_none());
    assert!(NiftiHeader::new([40000, 1, 1], [1.0; 3]).is_none());
    let h = NiftiHeader::new([2, 3, 4], [1.0, 2.0, 3.0]).unwrap();
    assert_eq!(h.shape(), [2, 3, 4]);
    assert_eq!(h.spacing(), [1.0, 2.0, 3.0]);
}
