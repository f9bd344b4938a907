//! Damaged and hostile inputs: each must give an error naming the file, never a panic or a huge allocation.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use common::*;
use segmenter_io::{load_case, load_dataset, read_nifti, Case, IoError};

fn put_i16(bytes: &mut [u8], off: usize, v: i16) {
    bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

/// Writes `bytes` as `dir/name` and reads it, expecting a one-line error naming the file; returns it.
fn read_refused(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> String {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    err_naming(read_nifti(&p), &p)
}

fn hippocampus_labels() -> BTreeMap<u8, String> {
    [(0, "background"), (1, "Anterior"), (2, "Posterior")]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect()
}

#[test]
fn truncated_plain_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = valid_nii_bytes(dir.path());
    let msg = read_refused(dir.path(), "short.nii", &bytes[..bytes.len() - 10]);
    assert!(msg.contains("truncated"), "{msg}");

    // A gzip stream cut off half way through.
    let gz_bytes = gzip(&bytes);
    let msg = read_refused(dir.path(), "cut.nii.gz", &gz_bytes[..gz_bytes.len() / 2]);
    assert!(msg.contains("truncated") || msg.contains("gzip"), "{msg}");

    // A complete gzip stream of a file that is itself short.
    let msg = read_refused(dir.path(), "short.nii.gz", gzip(&bytes[..400]));
    assert!(msg.contains("truncated"), "{msg}");

    for (name, len) in [("empty.nii", 0), ("half_header.nii", 200)] {
        let msg = read_refused(dir.path(), name, &bytes[..len]);
        assert!(msg.contains("truncated"), "{msg}");
    }
}

#[test]
fn corrupt_gzip_stream() {
    let dir = tempfile::tempdir().unwrap();
    // Random intensities compress poorly, so the middle of the stream is real deflate data.
    let n = 40 * 40 * 10;
    let values: Vec<f32> = match random_data("f32", n, 9) {
        segmenter_io::NiftiData::F32(v) => v,
        _ => unreachable!(),
    };
    let good = write_f32(dir.path(), "good.nii.gz", [40, 40, 10], Some(values));
    let mut bytes = fs::read(&good).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0x5a;
    }
    let msg = read_refused(dir.path(), "flipped.nii.gz", &bytes);
    assert!(msg.contains("corrupt gzip stream"), "{msg}");

    // A single flipped byte in the CRC trailer: data inflates fine, only the checksum catches it.
    let mut bytes = fs::read(&good).unwrap();
    let crc_at = bytes.len() - 8;
    bytes[crc_at] ^= 0x01;
    let msg = read_refused(dir.path(), "bad_crc.nii.gz", &bytes);
    assert!(msg.contains("corrupt gzip stream"), "{msg}");
}

#[test]
fn wrong_magic_sizeof_hdr_and_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = valid_nii_bytes(dir.path());

    let mut b = bytes.clone();
    b[344..348].copy_from_slice(b"abc\0");
    let msg = read_refused(dir.path(), "magic.nii", &b);
    assert!(msg.contains("magic"), "{msg}");

    let mut b = bytes.clone();
    b[344..348].copy_from_slice(b"ni1\0");
    let msg = read_refused(dir.path(), "pair.nii", &b);
    assert!(msg.contains(".hdr/.img pairs are not supported"), "{msg}");

    let mut b = bytes.clone();
    b[0..4].copy_from_slice(&100i32.to_le_bytes());
    let msg = read_refused(dir.path(), "sizeof.nii.gz", gzip(&b));
    assert!(msg.contains("sizeof_hdr"), "{msg}");

    read_refused(dir.path(), "text.nii", "this is not a scan ".repeat(40));
}

/// (file name, (byte offset, i16 value) patches to the header, expected message fragment)
type DimCase = (&'static str, &'static [(usize, i16)], &'static str);

#[test]
fn bad_dimensions() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = valid_nii_bytes(dir.path());
    let cases: [DimCase; 5] = [
        ("negative.nii", &[(42, -5)], "dim[1] is -5"),
        ("zero.nii", &[(44, 0)], "dim[2] is 0"),
        ("ndim.nii", &[(40, 9)], "dim[0] is 9"),
        // 30000^3 = 2.7e13 voxels in a file of a few hundred bytes.
        (
            "billions.nii",
            &[(42, 30000), (44, 30000), (46, 30000)],
            "more than the limit",
        ),
        // 32767^7 overflows u64.
        (
            "overflow.nii",
            &[
                (40, 7),
                (42, 32767),
                (44, 32767),
                (46, 32767),
                (48, 32767),
                (50, 32767),
                (52, 32767),
                (54, 32767),
            ],
            "more than the limit",
        ),
    ];
    for (name, patches, expect) in cases {
        let mut b = bytes.clone();
        for &(off, v) in patches {
            put_i16(&mut b, off, v);
        }
        for gz in [false, true] {
            let (file, data) = if gz {
                (format!("{name}.gz"), gzip(&b))
            } else {
                (name.to_string(), b.clone())
            };
            let msg = read_refused(dir.path(), &file, data);
            assert!(msg.contains(expect), "{name}: {msg}");
        }
    }

    // Complex data is a valid NIfTI type we do not read.
    let mut b = bytes.clone();
    put_i16(&mut b, 70, 32);
    let msg = read_refused(dir.path(), "complex.nii", &b);
    assert!(msg.contains("complex64"), "{msg}");
}

#[test]
fn gzip_bomb_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = valid_nii_bytes(dir.path());
    // 64 MiB of zeros after a 120-voxel volume: compresses to ~64 KiB.
    bytes.resize(bytes.len() + (64 << 20), 0);
    let p = dir.path().join("bomb.nii.gz");
    fs::write(&p, gzip(&bytes)).unwrap();
    assert!(fs::metadata(&p).unwrap().len() < 1 << 20);
    let msg = err_naming(read_nifti(&p), &p);
    assert!(msg.contains("twice what the header describes"), "{msg}");
}

#[test]
fn shape_mismatch_through_load_case() {
    let dir = tempfile::tempdir().unwrap();
    let image = write_f32(dir.path(), "i.nii.gz", [35, 51, 36], None);
    let label = write_u8(dir.path(), "l.nii.gz", [35, 51, 35], vec![0; 35 * 51 * 35]);
    let case = Case {
        id: "c".into(),
        images: vec![image.clone()],
        label: Some(label.clone()),
        dicom: None,
    };
    let msg = err_naming(load_case(&case, &hippocampus_labels()), &label);
    assert!(
        msg.contains("label shape 35x51x35 does not match image shape 35x51x36"),
        "{msg}"
    );
    assert!(msg.contains(&*image.to_string_lossy()), "{msg}");

    let second = write_f32(dir.path(), "i2.nii.gz", [35, 51, 35], None);
    let case = Case {
        id: "c".into(),
        images: vec![image, second.clone()],
        label: None,
        dicom: None,
    };
    let msg = err_naming(load_case(&case, &hippocampus_labels()), &second);
    assert!(msg.contains("channel 1 shape"), "{msg}");
}

#[test]
fn label_values_checked() {
    let dir = tempfile::tempdir().unwrap();
    let image = write_f32(dir.path(), "img.nii.gz", [4, 3, 2], None);
    let mut values = vec![0u8; 24];
    values[1 + 4 * 2 + 12] = 7; // voxel (1, 2, 1)
    let label = write_u8(dir.path(), "lab.nii.gz", [4, 3, 2], values);
    let case = Case {
        id: "c".into(),
        images: vec![image.clone()],
        label: Some(label.clone()),
        dicom: None,
    };
    let msg = err_naming(load_case(&case, &hippocampus_labels()), &label);
    assert!(msg.contains("label value 7 at voxel (1, 2, 1)"), "{msg}");
    assert!(msg.contains("0, 1, 2"), "{msg}");

    // Float labels must be whole numbers.
    let mut f = vec![0.0f32; 24];
    f[3] = 1.5;
    let flabel = write_f32(dir.path(), "flab.nii.gz", [4, 3, 2], Some(f));
    let case = Case {
        id: "c".into(),
        images: vec![image],
        label: Some(flabel.clone()),
        dicom: None,
    };
    let msg = err_naming(load_case(&case, &hippocampus_labels()), &flabel);
    assert!(msg.contains("label value 1.5"), "{msg}");
}

#[test]
fn nan_and_inf_intensities() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bad) in [("nan.nii.gz", f32::NAN), ("inf.nii", f32::INFINITY)] {
        let mut v = vec![1.0f32; 24];
        v[5] = bad;
        let image = write_f32(dir.path(), name, [4, 3, 2], Some(v));
        let case = Case {
            id: "c".into(),
            images: vec![image.clone()],
            label: None,
            dicom: None,
        };
        let msg = err_naming(load_case(&case, &hippocampus_labels()), &image);
        assert!(
            msg.contains("not a finite number") && msg.contains("(1, 1, 0)"),
            "{msg}"
        );
    }
}

#[test]
fn dataset_json_problems() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("imagesTr")).unwrap();
    fs::create_dir_all(root.join("labelsTr")).unwrap();
    write_f32(&root.join("imagesTr"), "a.nii.gz", [2, 2, 2], None);
    write_u8(&root.join("labelsTr"), "a.nii.gz", [2, 2, 2], vec![0; 8]);
    let json = r#"{"name": "T", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "x"},
        "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"},
                     {"image": "./imagesTr/gone.nii.gz", "label": "./labelsTr/gone.nii.gz"}]}"#;
    fs::write(root.join("dataset.json"), json).unwrap();
    let msg = err_naming(load_dataset(root), &root.join("imagesTr/gone.nii.gz"));
    assert!(
        msg.contains("file not found") && msg.contains("dataset.json"),
        "{msg}"
    );

    // nnU-Net v2 region labels are refused with a clear message.
    let json = r#"{"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": [1, 2]}, "file_ending": ".nii.gz"}"#;
    fs::write(root.join("dataset.json"), json).unwrap();
    let msg = err_naming(load_dataset(root), &root.join("dataset.json"));
    assert!(msg.contains("region"), "{msg}");

    fs::write(root.join("dataset.json"), "{ not json").unwrap();
    let err = load_dataset(root).unwrap_err();
    assert!(matches!(err, IoError::Json { .. }), "{err}");
    err_naming::<()>(Err(err), &root.join("dataset.json"));

    let missing = root.join("nowhere");
    err_naming(load_dataset(&missing), &missing.join("dataset.json"));
}

/// The fuzz seeds (io/fuzz/seeds) cut at every length and with every header byte replaced by a few
/// telling values: a deterministic slice of what `cargo fuzz` explores, run by every `cargo test`.
/// Each result must be Ok or a one-line error naming the file; a panic fails the test.
#[test]
fn fuzz_seeds_cut_and_mutated_never_panic() {
    let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut files: Vec<_> = fs::read_dir(&seeds)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 16, "seeds missing in {}", seeds.display());
    let name = std::path::Path::new("mutant.nii");
    let check = |bytes: &[u8]| match segmenter_io::read_nifti_bytes(bytes, name) {
        Ok((header, data)) => {
            assert_eq!(data.len(), header.shape().iter().product::<usize>());
            let _ = header.affine();
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with("mutant.nii: ") && !msg.contains('\n'),
                "{msg}"
            );
        }
    };
    let (mut accepted, mut total) = (0, 0);
    for file in &files {
        let bytes = fs::read(file).unwrap();
        assert!(
            segmenter_io::read_nifti_bytes(&bytes, name).is_ok(),
            "seed {} must be valid",
            file.display()
        );
        for len in 0..bytes.len() {
            check(&bytes[..len]);
        }
        // Plain seeds only: in a gzip seed the header is compressed, so byte positions mean nothing.
        if bytes.starts_with(&[0x1f, 0x8b]) {
            continue;
        }
        for at in 0..352.min(bytes.len()) {
            for value in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut mutant = bytes.clone();
                mutant[at] = value;
                total += 1;
                accepted += segmenter_io::read_nifti_bytes(&mutant, name).is_ok() as usize;
                check(&mutant);
            }
        }
        check(&gzip(&bytes));
    }
    // Most single-byte changes hit fields that are free (description, unused) or still valid.
    assert!(accepted > 0 && accepted < total, "{accepted} of {total}");
}
