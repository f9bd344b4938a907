//! `segmenter import swin-umamba`: an nnU-Net v2 Swin-UMamba result (the fixture checkpoint of
//! upstream's network, with plans and dataset.json taken from its `init_args`) becomes a run
//! folder that `predict` uses unchanged and that gives nnU-Net's own predictor's probabilities;
//! what cannot be reproduced is refused with a message.

mod common;

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use common::{predict, s, segmenter, text};
use segmenter::model::weights::read_state_dict;
use segmenter::predict::predict_case;
use segmenter::predict::window::WindowSettings;
use segmenter::run::RunDir;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/swin-umamba")
        .join(name)
}

/// Runs the import of the fixture into `out`, with `plans` and `dataset` in place of the
/// fixture's files and `extra` arguments.
fn import(out: &Path, plans: &Path, dataset: &Path, extra: &[&str]) -> std::process::Output {
    let checkpoint = fixture("checkpoint_final.pth");
    let mut args = vec!["import", "swin-umamba", "--checkpoint", s(&checkpoint)];
    args.extend([
        "--plans",
        s(plans),
        "--dataset-json",
        s(dataset),
        "--out",
        s(out),
    ]);
    args.extend(extra);
    segmenter(&args)
}

/// The fixture's plans or dataset.json with `edit` applied, written into `dir`.
fn edited(dir: &Path, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap();
    edit(&mut json);
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    path
}

#[test]
fn an_imported_run_predicts_what_nnunets_predictor_predicts() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = import(
        &run,
        &fixture("nnUNetPlans.json"),
        &fixture("dataset.json"),
        &["--configuration", "2d"],
    );
    assert!(out.status.success(), "{}", text(&out));
    for file in ["plan.json", "config.toml", "model.mpk", "import.json"] {
        assert!(run.join(file).exists(), "{file} missing");
    }
    let info = segmenter::import::checkpoint_info(&fixture("checkpoint_final.pth"));
    assert_eq!(
        info.trainer_name.as_deref(),
        Some("nnUNetTrainerSwinUMamba")
    );
    assert_eq!(info.configuration.as_deref(), Some("2d"));
    let note = std::fs::read_to_string(run.join("import.json")).unwrap();
    assert!(note.contains("nnUNetTrainerSwinUMamba"), "{note}");

    // nnU-Net v2's predictor (benchmarks/import-vs-nnunet.py, nnunetv2 2.8.1) on two cases:
    // `same`, 84 x 76 x 3 with a zero border, at the plan's spacing (cropped, 2 x 2 windows a
    // slice); `resampled`, 70 x 64 x 2 at 0.8 x 0.9 mm, which nnU-Net resamples to 56 x 58
    // (cubic splines, per slice), pads to the patch, and whose logits it resamples back.
    let cases = fixture("nnunet-case");
    let (model, plan) = RunDir::open(&run)
        .unwrap()
        .load_network::<Flex>(&Default::default())
        .unwrap();
    let found = segmenter_io::find_cases(&cases, Some(".nii.gz")).unwrap();
    assert_eq!(found.len(), 2);
    // Without and with test-time mirroring: nnU-Net averages the logits of the window and its
    // flips over the checkpoint's allowed axes (0, 1); ours does with `--tta`.
    for (mirror, suffix) in [(false, ""), (true, "_mirrored")] {
        for (case, shape) in found.iter().zip([[3, 2, 64, 70], [3, 3, 76, 84]]) {
            let loaded = segmenter_io::load_case(case, &plan.labels).unwrap();
            let settings = WindowSettings {
                mirror,
                ..WindowSettings::default()
            };
            let (labels, probs) =
                predict_case(&model, &plan, &loaded, &settings, true, &Default::default());
            let name = format!("{}_nnunet{suffix}_probabilities.safetensors", case.id);
            let theirs = &read_state_dict(&cases.join(name)).unwrap()["probabilities"];
            assert_eq!(theirs.shape, shape.to_vec(), "{}", case.id);
            let probs = probs.unwrap();
            let voxels = labels.len();
            let mut worst = 0.0f32;
            for (k, class) in probs.iter().enumerate() {
                // Ours: x fastest; nnU-Net's [class, z, y, x]: the same order within a class.
                for (v, &p) in class.iter().enumerate() {
                    worst = worst.max((p - theirs.values[k * voxels + v]).abs());
                }
            }
            let what = format!("{}{suffix}", case.id);
            eprintln!("{what}: max |ours - nnU-Net| probability: {worst:.2e}");
            assert!(worst <= 1e-3, "{what}: probabilities differ by {worst}");
        }
    }

    // The binary predicts the case from the run folder like any other.
    let preds = dir.path().join("preds");
    let out = predict(&run, &cases, &preds, &["--save-probabilities"]);
    assert!(out.status.success(), "{}", text(&out));
    for name in ["same", "resampled"] {
        assert!(preds.join(format!("{name}.nii.gz")).exists());
        assert!(preds.join(format!("probabilities/{name}.nii.gz")).exists());
    }
}

#[test]
fn what_cannot_be_reproduced_is_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let (plans, dataset) = (fixture("nnUNetPlans.json"), fixture("dataset.json"));
    let refused = |out: std::process::Output, want: &[&str]| {
        let message = text(&out);
        assert!(!out.status.success(), "accepted: {message}");
        for w in want {
            assert!(message.contains(w), "'{w}' not in: {message}");
        }
        assert!(!message.contains("panicked"), "{message}");
    };
    let run = dir.path().join("run");
    refused(
        import(&run, &plans, &dataset, &["--configuration", "3d_fullres"]),
        &["3d_fullres", "only the '2d' configuration"],
    );
    let three_channels = edited(dir.path(), "dataset.json", |j| {
        j["channel_names"]["2"] = "FLAIR".into();
    });
    let plans3 = edited(dir.path(), "nnUNetPlans.json", |j| {
        let c = &mut j["configurations"]["2d"];
        c["normalization_schemes"] = serde_json::json!(vec!["ZScoreNormalization"; 3]);
    });
    refused(
        import(&run, &plans3, &three_channels, &[]),
        &[
            "checkpoint_final.pth",
            "2 input channel(s)",
            "T1, T2, FLAIR",
        ],
    );
    let four_labels = edited(dir.path(), "dataset.json", |j| {
        j["labels"]["cyst"] = 3.into();
    });
    refused(
        import(&run, &plans, &four_labels, &[]),
        &["predicts 3 classes", "4 labels"],
    );
    let regions = edited(dir.path(), "dataset.json", |j| {
        j["labels"]["whole"] = serde_json::json!([1, 2]);
    });
    refused(import(&run, &plans, &regions, &[]), &["region"]);
    let rescale = edited(dir.path(), "nnUNetPlans.json", |j| {
        j["configurations"]["2d"]["normalization_schemes"][1] = "RescaleTo01Normalization".into();
    });
    refused(
        import(&run, &rescale, &dataset, &[]),
        &[
            "RescaleTo01Normalization",
            "ZScoreNormalization and CTNormalization",
        ],
    );
    assert!(!run.exists(), "a refused import left a folder behind");

    // An existing folder is never written into.
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("notes.txt"), "mine").unwrap();
    refused(import(&run, &plans, &dataset, &[]), &["not empty"]);
    assert_eq!(std::fs::read_dir(&run).unwrap().count(), 1);
}
