//! 2D PNG/TIFF images as one-slice volumes: conventions, refusals with messages naming the file, and a
//! tiny nnU-Net v2 dataset with `"file_ending": ".png"` loaded through the same calls as NIfTI.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use common::err_naming;
use image::{GrayImage, ImageBuffer, Luma, LumaA, Rgb};
use segmenter_io::{
    load_case, load_dataset, read_image2d, read_volume, write_labels, IoError, NiftiHeader,
};

/// A 5-wide, 3-tall gradient: pixel (x, y) = 10 y + x, so a transposition would show.
fn gradient() -> GrayImage {
    GrayImage::from_fn(5, 3, |x, y| Luma([(10 * y + x) as u8]))
}

#[test]
fn png_and_tiff_become_one_slice_volumes_with_unit_spacing() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["g.png", "g.tif", "g.TIFF"] {
        let path = dir.path().join(name);
        gradient().save(&path).unwrap();
        let vol = read_volume(&path).unwrap();
        assert_eq!(vol.shape, [5, 3, 1], "{name}");
        // x fastest: the first row, then the second.
        assert_eq!(
            &vol.data[..7],
            &[0.0, 1.0, 2.0, 3.0, 4.0, 10.0, 11.0],
            "{name}"
        );
        assert_eq!(vol.spacing(), [1.0; 3]);
        let a = vol.affine();
        for (r, row) in a.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                assert_eq!(*v, if r == c { 1.0 } else { 0.0 }, "{name} affine {a:?}");
            }
        }
    }
    // 16-bit values keep their full range.
    let wide: ImageBuffer<Luma<u16>, Vec<u16>> =
        ImageBuffer::from_fn(4, 2, |x, _| Luma([x as u16 * 20000]));
    let path = dir.path().join("w.png");
    wide.save(&path).unwrap();
    assert_eq!(read_image2d(&path).unwrap().data[3], 60000.0);
}

#[test]
fn colour_alpha_and_garbage_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let colour = dir.path().join("colour.png");
    ImageBuffer::from_fn(4, 4, |x, y| Rgb([x as u8, y as u8, 7u8]))
        .save(&colour)
        .unwrap();
    let msg = err_naming(read_volume(&colour), &colour);
    assert!(
        msg.contains("RGB colour image") && msg.contains("CASE_000N"),
        "{msg}"
    );

    // Gray saved as RGB (equal channels) is read as gray.
    let gray_rgb = dir.path().join("gray_rgb.png");
    ImageBuffer::from_fn(4, 4, |x, _| Rgb([x as u8 * 3; 3]))
        .save(&gray_rgb)
        .unwrap();
    assert_eq!(
        read_volume(&gray_rgb).unwrap().data[..4],
        [0.0, 3.0, 6.0, 9.0]
    );

    let alpha = dir.path().join("alpha.png");
    ImageBuffer::from_fn(3, 3, |_, _| LumaA([9u8, 255]))
        .save(&alpha)
        .unwrap();
    let msg = err_naming(read_volume(&alpha), &alpha);
    assert!(msg.contains("alpha"), "{msg}");

    for (name, bytes) in [
        ("garbage.png", b"not a png at all".to_vec()),
        ("empty.tif", Vec::new()),
        // A valid PNG signature and IHDR claiming 2^31 x 2^31 pixels, then nothing.
        ("huge.png", huge_png_header()),
    ] {
        let path = dir.path().join(name);
        fs::write(&path, bytes).unwrap();
        let err = read_volume(&path).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with(&path.display().to_string()), "{msg}");
        assert!(
            matches!(err, IoError::Image { .. } | IoError::Io { .. }),
            "{msg}"
        );
    }
}

/// PNG signature plus an IHDR chunk (with a correct CRC) for a 2^31-1 square 8-bit gray image.
fn huge_png_header() -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
    ihdr.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    let mut crc = flate2::Crc::new();
    crc.update(&ihdr);
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend_from_slice(&13u32.to_be_bytes());
    bytes.extend_from_slice(&ihdr);
    bytes.extend_from_slice(&crc.sum().to_be_bytes());
    bytes
}

#[test]
fn label_maps_of_2d_inputs_are_written_as_images() {
    let dir = tempfile::tempdir().unwrap();
    let header = NiftiHeader::new([5, 3, 1], [1.0; 3]).unwrap();
    let labels: Vec<u8> = (0..15).map(|i| (i % 3) as u8).collect();
    for name in ["pred.png", "pred.tif"] {
        let path = dir.path().join(name);
        write_labels(&path, &header, &labels).unwrap();
        let back = image::open(&path).unwrap().into_luma8();
        assert_eq!((back.width(), back.height()), (5, 3));
        assert_eq!(back.as_raw(), &labels);
    }
    // A 3D volume has no PNG form.
    let deep = NiftiHeader::new([5, 3, 2], [1.0; 3]).unwrap();
    let path = dir.path().join("deep.png");
    let msg = err_naming(write_labels(&path, &deep, &[0; 30]), &path);
    assert!(msg.contains(".nii.gz"), "{msg}");
    assert!(!path.exists());
}

/// Writes an nnU-Net v2 dataset of `n` 24x20 PNG cases: a bright 6x5 rectangle labelled 1 on noise.
pub fn png_dataset(root: &Path, n: usize) {
    fs::create_dir_all(root.join("imagesTr")).unwrap();
    fs::create_dir_all(root.join("labelsTr")).unwrap();
    fs::write(
        root.join("dataset.json"),
        r#"{"name": "Squares", "channel_names": {"0": "photo"},
            "labels": {"background": 0, "square": 1}, "numTraining": 3, "file_ending": ".png"}"#,
    )
    .unwrap();
    for case in 0..n {
        let (x0, y0) = (3 + 4 * case as u32, 2 + 3 * case as u32);
        let inside = |x: u32, y: u32| (x0..x0 + 6).contains(&x) && (y0..y0 + 5).contains(&y);
        let image = GrayImage::from_fn(24, 20, |x, y| {
            Luma([if inside(x, y) {
                200
            } else {
                ((x * 7 + y * 13) % 40) as u8
            }])
        });
        let label = GrayImage::from_fn(24, 20, |x, y| Luma([inside(x, y) as u8]));
        image
            .save(root.join(format!("imagesTr/sq_{case:03}_0000.png")))
            .unwrap();
        label
            .save(root.join(format!("labelsTr/sq_{case:03}.png")))
            .unwrap();
    }
}

#[test]
fn a_png_dataset_loads_like_a_nifti_one() {
    let dir = tempfile::tempdir().unwrap();
    png_dataset(dir.path(), 3);
    let dataset = load_dataset(dir.path()).unwrap();
    assert_eq!(dataset.file_ending, ".png");
    assert_eq!(dataset.cases.len(), 3);
    let case = load_case(&dataset.cases[1], &dataset.labels).unwrap();
    assert_eq!(case.shape, [24, 20, 1]);
    let label = case.label.unwrap();
    assert_eq!(label.iter().filter(|&&l| l == 1).count(), 30);
    // The square's top-left corner of case 1 is (7, 5): x fastest.
    assert_eq!(label[5 * 24 + 7], 1);
    assert_eq!(label[5 * 24 + 6], 0);
    assert_eq!(case.channels[0].data[5 * 24 + 7], 200.0);

    // A label value the dataset does not declare is refused, naming the label file.
    let bad = dir.path().join("labelsTr/sq_002.png");
    GrayImage::from_fn(24, 20, |x, _| Luma([(x == 3) as u8 * 2]))
        .save(&bad)
        .unwrap();
    let labels: BTreeMap<u8, String> = dataset.labels.clone();
    let msg = err_naming(load_case(&dataset.cases[2], &labels), &bad);
    assert!(msg.contains("label value 2"), "{msg}");
}
