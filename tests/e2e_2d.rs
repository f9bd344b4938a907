//! End-to-end on a 2D dataset: PNG images and masks in nnU-Net v2 layout (`"file_ending": ".png"`)
//! go through `segmenter train`, `predict` and `evaluate` like NIfTI scans, and predictions come back
//! as PNG label maps of the input's size.

use std::path::Path;

use segmenter_io::{read_volume, write_labels, NiftiHeader};

mod common;
use common::{evaluate_against, predict, text, train_failure, train_two_steps_ok};

const WIDTH: usize = 32;
const HEIGHT: usize = 24;

/// `n` cases of a bright 8x6 rectangle (label 1) on a textured background, at different places.
fn png_dataset(root: &Path, n: usize) {
    std::fs::create_dir_all(root.join("imagesTr")).unwrap();
    std::fs::create_dir_all(root.join("labelsTr")).unwrap();
    std::fs::write(
        root.join("dataset.json"),
        format!(
            r#"{{"name": "Squares", "channel_names": {{"0": "photo"}},
                "labels": {{"background": 0, "square": 1}}, "numTraining": {n}, "file_ending": ".png"}}"#
        ),
    )
    .unwrap();
    // write_labels picks PNG from the ending; any 8-bit gray image can be written this way.
    let header = NiftiHeader::new([WIDTH, HEIGHT, 1], [1.0; 3]).unwrap();
    for case in 0..n {
        let (x0, y0) = (2 + 3 * case, 1 + 2 * case);
        let inside = |x: usize, y: usize| (x0..x0 + 8).contains(&x) && (y0..y0 + 6).contains(&y);
        let (mut image, mut label) = (Vec::new(), Vec::new());
        for y in 0..HEIGHT {
            for x in 0..WIDTH {
                image.push(if inside(x, y) {
                    220
                } else {
                    ((x * 7 + y * 13) % 50) as u8
                });
                label.push(inside(x, y) as u8);
            }
        }
        write_labels(
            &root.join(format!("imagesTr/sq_{case:03}_0000.png")),
            &header,
            &image,
        )
        .unwrap();
        write_labels(
            &root.join(format!("labelsTr/sq_{case:03}.png")),
            &header,
            &label,
        )
        .unwrap();
    }
}

#[test]
fn train_predict_evaluate_a_png_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("Dataset001_Squares");
    png_dataset(&data, 6);
    let run = dir.path().join("run");
    train_two_steps_ok(
        &data,
        &run,
        "batch_size = 2\nwarmup_steps = 1\nval_every = 1\n",
    );

    let preds = dir.path().join("preds");
    let out = predict(&run, &data.join("imagesTr"), &preds, &[]);
    assert!(out.status.success(), "predict failed:\n{}", text(&out));
    for case in 0..6 {
        let path = preds.join(format!("sq_{case:03}.png"));
        let predicted = read_volume(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(predicted.shape, [WIDTH, HEIGHT, 1]);
        assert!(predicted.data.iter().all(|&v| v == 0.0 || v == 1.0));
    }

    let report = dir.path().join("eval");
    evaluate_against(&preds, &data, "labelsTr", &report);
    let summary = std::fs::read_to_string(report.join("summary.json")).unwrap();
    assert!(summary.contains("sq_005"), "{summary}");
    // The HTML report draws 2D cases too, over their PNG images.
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    let overlay = report.join("report_files/overlay_best.png");
    assert!(
        html.contains("overlay_best.png") && overlay.exists(),
        "{html}"
    );
    assert!(
        !html.contains("no scan found"),
        "the imagesTr PNGs were not found:\n{html}"
    );
}

#[test]
fn a_colour_image_in_a_png_dataset_is_a_one_line_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("Dataset002_Colour");
    png_dataset(&data, 3);
    // Replace one image by an RGB PNG whose channels differ (encoded by hand: this crate has no
    // dependency on an image encoder of its own).
    let bad = data.join("imagesTr/sq_001_0000.png");
    std::fs::write(&bad, rgb_png(WIDTH, HEIGHT)).unwrap();
    let err = train_failure(&data, &dir.path().join("run"), &["--steps-per-epoch", "1"]);
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .expect("an error line");
    assert!(
        line.contains("sq_001_0000.png") && line.contains("colour"),
        "{err}"
    );
}

/// A `width x height` 8-bit RGB PNG with a red-green gradient, encoded by hand (stored deflate).
fn rgb_png(width: usize, height: usize) -> Vec<u8> {
    use flate2::write::ZlibEncoder;
    use std::io::Write;
    let mut raw = Vec::new();
    for y in 0..height {
        raw.push(0); // filter: none
        for x in 0..width {
            raw.extend_from_slice(&[(x * 8) as u8, (y * 10) as u8, 0]);
        }
    }
    let mut z = ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(&raw).unwrap();
    let idat = z.finish().unwrap();
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        c.extend_from_slice(&crc.sum().to_be_bytes());
        c
    };
    let mut ihdr = (width as u32).to_be_bytes().to_vec();
    ihdr.extend_from_slice(&(height as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit, colour type 2 (RGB)
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IDAT", &idat));
    png.extend(chunk(b"IEND", &[]));
    png
}
