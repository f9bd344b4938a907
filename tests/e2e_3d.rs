//! End-to-end in 3D: `segmenter plan` writes both configurations, `train --configuration 3d`
//! trains the volumetric network on the sample hippocampus MRI, `predict` follows the run's
//! configuration (with the eight mirrorings under `--tta`, and on a volume thinner than the
//! patch), and a dataset of 2D images asked for 3D gets a clear error.

use std::path::Path;

use segmenter_io::{read_nifti, read_nifti_raw, write_nifti, NiftiData, NiftiHeader};

mod common;
use common::*;

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn plan_writes_a_2d_and_a_3d_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("plan.json");
    let data = root().join("sample-data/hippocampus");
    let run = segmenter(&["plan", "--data", s(&data), "--out", s(&out)]);
    assert!(run.status.success(), "{}", text(&run));
    let printed = text(&run);
    assert!(
        printed.contains("2d") && printed.contains("3d"),
        "{printed}"
    );
    let plan = json(&out);
    assert_eq!(plan["patch_size"].as_array().unwrap().len(), 2, "{plan}");
    let v = &plan["volumetric"];
    let patch: Vec<u64> = v["patch_size"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(patch.len(), 3, "{plan}");
    // Isotropic 1 mm stacks of about 36 slices: every axis pooled, the patch covering the median
    // case, and the plan's choice is the volumetric network.
    assert_eq!(v["anisotropic"], false, "{plan}");
    assert!(patch.iter().all(|&p| (32..=64).contains(&p)), "{plan}");
    assert_eq!(plan["configuration"], "3d", "{plan}");
    assert!(printed.contains("3d (recommended)"), "{printed}");
}

#[test]
fn a_3d_run_trains_and_predicts_with_tta_and_on_a_thin_volume() {
    let dir = tempfile::tempdir().unwrap();
    let data = root().join("sample-data/hippocampus");
    let run = dir.path().join("run3d");
    let config = run.with_extension("toml");
    std::fs::write(&config, "[train]\nwarmup_steps = 1\nval_every = 1\n").unwrap();
    let out = segmenter(&[
        "train",
        "--data",
        s(&data),
        "--out",
        s(&run),
        "--configuration",
        "3d",
        "--config",
        s(&config),
        "--epochs",
        "1",
        "--steps-per-epoch",
        "2",
    ]);
    assert!(out.status.success(), "train failed:\n{}", text(&out));
    assert!(text(&out).contains("3D patches"), "{}", text(&out));
    let plan = json(&run.join("plan.json"));
    assert_eq!(plan["configuration"], "3d");
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("spatial_dims = 3"), "{config}");
    // The plan's batch, recorded in the run: on a CPU with two or more cores split between two
    // replicas, so rounded up to an even number.
    let batch = plan["volumetric"]["batch_size"].as_u64().unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let replicas: u64 = if cores >= 2 { 2 } else { 1 };
    let want = batch.div_ceil(replicas) * replicas;
    assert!(
        config.contains(&format!("batch_size = {want}"))
            && config.contains(&format!("replicas = {replicas}")),
        "plan batch {batch}, {cores} cores:\n{config}"
    );
    let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    assert!(log.contains("val_dice"), "validation ran in 3D: {log}");

    // Prediction follows the run's configuration; a volume with fewer slices than the patch
    // is padded for the network and comes back at its own size.
    let input = dir.path().join("input");
    std::fs::create_dir(&input).unwrap();
    let source = data.join("imagesTs/hippocampus_036.nii.gz");
    std::fs::copy(&source, input.join("hippocampus_036.nii.gz")).unwrap();
    let volume = read_nifti(&source).unwrap();
    let [sx, sy, _] = volume.shape;
    let thin = NiftiHeader::new([sx, sy, 3], [1.0; 3]).unwrap();
    write_nifti(
        &input.join("thin.nii.gz"),
        &thin,
        &NiftiData::F32(volume.data[..sx * sy * 3].to_vec()),
    )
    .unwrap();
    let preds = dir.path().join("preds");
    let out = predict(&run, &input, &preds, &["--tta"]);
    assert!(out.status.success(), "predict failed:\n{}", text(&out));
    for name in ["hippocampus_036.nii.gz", "thin.nii.gz"] {
        let (header, _) = read_nifti_raw(&input.join(name)).unwrap();
        let pred = read_nifti(&preds.join(name)).unwrap();
        assert_eq!(pred.shape, header.shape(), "{name}");
        assert_eq!(pred.header.affine(), header.affine(), "{name}");
        assert!(pred.data.iter().all(|&v| v == 0.0 || v == 1.0 || v == 2.0));
    }
    let settings = json(&preds.join("prediction.json"));
    assert_eq!(settings["tta"], true);
}

#[test]
fn a_dataset_of_2d_images_asked_for_3d_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("flat");
    std::fs::create_dir_all(data.join("imagesTr")).unwrap();
    std::fs::create_dir_all(data.join("labelsTr")).unwrap();
    std::fs::write(
        data.join("dataset.json"),
        r#"{"name": "Flat", "channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1},
            "numTraining": 2, "file_ending": ".nii.gz"}"#,
    )
    .unwrap();
    let header = NiftiHeader::new([32, 32, 1], [1.0; 3]).unwrap();
    for case in 0..2 {
        let image: Vec<f32> = (0..32 * 32).map(|i| ((i * 7 + case) % 13) as f32).collect();
        let label: Vec<f32> = (0..32 * 32).map(|i| (i % 32 > 16) as u8 as f32).collect();
        write_nifti(
            &data.join(format!("imagesTr/f_{case:03}_0000.nii.gz")),
            &header,
            &NiftiData::F32(image),
        )
        .unwrap();
        write_nifti(
            &data.join(format!("labelsTr/f_{case:03}.nii.gz")),
            &header,
            &NiftiData::F32(label),
        )
        .unwrap();
    }
    let log = train_failure(&data, &dir.path().join("run"), &["--configuration", "3d"]);
    assert!(log.contains("no 3D configuration"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    let log = train_failure(
        &data,
        &dir.path().join("run2"),
        &["--preset", "tiny", "--configuration", "3d"],
    );
    assert!(log.contains("tiny3d"), "{log}");
}
