//! Helpers shared by the integration tests: synthetic volumes and files built in temporary folders.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use segmenter_io::{write_nifti, NiftiData, NiftiHeader};

/// Folder with the committed sample data (16 training and 4 held-out hippocampus cases).
pub fn sample_hippocampus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sample-data/hippocampus")
}

/// The full shared hippocampus set, when this machine has it (tests using it skip otherwise).
pub fn shared_hippocampus() -> Option<PathBuf> {
    let p = std::env::var_os("SEGMENTER_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"))
        .join("hippocampus");
    if p.join("dataset.json").is_file() {
        Some(p)
    } else {
        eprintln!("skipping: {} not present", p.display());
        None
    }
}

/// A header whose sform and qform both rotate (30 degrees about z) and translate, so a lost or
/// transposed field changes the affine; also a description string that must survive a round trip.
pub fn rotated_header(shape: [usize; 3]) -> NiftiHeader {
    let sp = [0.9f32, 1.1, 2.5];
    let mut h = NiftiHeader::new(shape, sp.map(f64::from)).expect("valid shape");
    let (s, c) = (30f32.to_radians().sin(), 30f32.to_radians().cos());
    h.srow = [
        [c * sp[0], -s * sp[1], 0.0, -12.5],
        [s * sp[0], c * sp[1], 0.0, 40.25],
        [0.0, 0.0, sp[2], 7.0],
    ];
    h.sform_code = 2;
    h.qform_code = 1;
    // Rotation of 30 degrees about z: b = c = 0, d = sin(15 deg).
    h.quatern = [0.0, 0.0, 15f32.to_radians().sin()];
    h.qoffset = [-12.5, 40.25, 7.0];
    h.raw[148..148 + 14].copy_from_slice(b"segmenter test");
    h
}

/// Seeded random data of the given type, never all zeros.
pub fn random_data(kind: &str, n: usize, seed: u64) -> NiftiData {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = match kind {
        "u8" => NiftiData::U8((0..n).map(|_| rng.random()).collect()),
        "i8" => NiftiData::I8((0..n).map(|_| rng.random()).collect()),
        "i16" => NiftiData::I16((0..n).map(|_| rng.random()).collect()),
        "u16" => NiftiData::U16((0..n).map(|_| rng.random()).collect()),
        "i32" => NiftiData::I32((0..n).map(|_| rng.random()).collect()),
        "u32" => NiftiData::U32((0..n).map(|_| rng.random()).collect()),
        "i64" => NiftiData::I64((0..n).map(|_| rng.random()).collect()),
        "u64" => NiftiData::U64((0..n).map(|_| rng.random()).collect()),
        "f32" => NiftiData::F32((0..n).map(|_| rng.random_range(-1e4f32..1e4)).collect()),
        "f64" => NiftiData::F64((0..n).map(|_| rng.random_range(-1e9f64..1e9)).collect()),
        other => panic!("unknown kind {other}"),
    };
    // Guarantee a non-zero value even for an unlucky seed, so "all zeros read back" cannot pass.
    match &mut data {
        NiftiData::U8(v) => v[0] = 7,
        NiftiData::I8(v) => v[0] = -7,
        NiftiData::I16(v) => v[0] = -300,
        NiftiData::U16(v) => v[0] = 60000,
        NiftiData::I32(v) => v[0] = -70000,
        NiftiData::U32(v) => v[0] = 4_000_000_000,
        NiftiData::I64(v) => v[0] = -(1 << 40),
        NiftiData::U64(v) => v[0] = 1 << 63,
        NiftiData::F32(v) => v[0] = -1.5,
        NiftiData::F64(v) => v[0] = 1e-300,
    }
    data
}

/// Writes a float32 volume with the given values (or a ramp) and returns its path.
pub fn write_f32(dir: &Path, name: &str, shape: [usize; 3], values: Option<Vec<f32>>) -> PathBuf {
    let n = shape.iter().product::<usize>();
    let values = values.unwrap_or_else(|| (0..n).map(|i| i as f32 * 0.5).collect());
    let path = dir.join(name);
    write_nifti(&path, &rotated_header(shape), &NiftiData::F32(values)).expect("write");
    path
}

/// Writes a uint8 volume and returns its path.
pub fn write_u8(dir: &Path, name: &str, shape: [usize; 3], values: Vec<u8>) -> PathBuf {
    let path = dir.join(name);
    write_nifti(&path, &rotated_header(shape), &NiftiData::U8(values)).expect("write");
    path
}

/// Gzip-compresses bytes.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}

/// The bytes of a valid uncompressed 4x5x6 float32 file, to be damaged by a test.
pub fn valid_nii_bytes(dir: &Path) -> Vec<u8> {
    let p = write_f32(dir, "valid_template.nii", [4, 5, 6], None);
    std::fs::read(p).expect("read back")
}

/// Asserts an error whose message names the file, and returns the message for further checks.
pub fn err_naming<T: std::fmt::Debug>(result: segmenter_io::Result<T>, path: &Path) -> String {
    let msg = match result {
        Ok(v) => panic!("expected an error for {}, got Ok({v:?})", path.display()),
        Err(e) => e.to_string(),
    };
    let name = path.file_name().expect("file name").to_string_lossy();
    assert!(msg.contains(&*name), "message {msg:?} does not name {name}");
    assert!(!msg.contains('\n'), "message is not one line: {msg:?}");
    msg
}
