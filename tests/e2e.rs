//! End-to-end: the `segmenter` binary trains a few steps on the sample hippocampus MRI, predicts
//! the held-out cases and evaluates them, the way a user runs it.

use std::path::{Path, PathBuf};

use segmenter_io::{read_nifti, read_nifti_raw};

mod common;
use common::*;

#[test]
fn train_predict_evaluate_through_the_binary() {
    let (dir, run) = trained();
    let data = root().join("sample-data/hippocampus");

    let preds = dir.path().join("preds");
    let out = predict(&run, &data.join("imagesTs"), &preds, &[]);
    assert!(out.status.success(), "predict failed:\n{}", text(&out));
    let inputs: Vec<PathBuf> = std::fs::read_dir(data.join("imagesTs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(inputs.len(), 4);
    for input in &inputs {
        let pred_path = preds.join(input.file_name().unwrap());
        let (image_header, _) = read_nifti_raw(input).unwrap();
        let pred = read_nifti(&pred_path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pred.shape, image_header.shape());
        assert_eq!(
            pred.header.affine(),
            image_header.affine(),
            "{}",
            pred_path.display()
        );
        assert!(pred.data.iter().all(|&v| v == 0.0 || v == 1.0 || v == 2.0));
    }

    // A second run skips what exists instead of overwriting it.
    let again = predict(&run, &data.join("imagesTs"), &preds, &[]);
    assert!(again.status.success());
    assert!(text(&again).contains("4 skipped"), "{}", text(&again));

    let report = dir.path().join("report");
    let printed = evaluate_against(&preds, &data, "labelsTs", &report);
    assert!(printed.contains("foreground mean"), "{printed}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["metric_per_case"].as_array().unwrap().len(), 4);
    for class in ["1", "2"] {
        let dice = &summary["mean"][class]["Dice"];
        assert!(
            dice.is_null() || (0.0..=1.0).contains(&dice.as_f64().unwrap()),
            "{summary}"
        );
    }
    assert!(summary["foreground_mean"].get("Dice").is_some());
}

#[test]
fn a_corrupt_case_fails_alone_and_the_exit_code_says_so() {
    let (dir, run) = trained();
    let data = root().join("sample-data/hippocampus/imagesTs");
    let input = dir.path().join("input");
    std::fs::create_dir(&input).unwrap();
    for name in ["hippocampus_036.nii.gz", "hippocampus_037.nii.gz"] {
        std::fs::copy(data.join(name), input.join(name)).unwrap();
    }
    let mut bytes = std::fs::read(data.join("hippocampus_038.nii.gz")).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 16] {
        *b ^= 0x5a;
    }
    std::fs::write(input.join("broken_case.nii.gz"), bytes).unwrap();

    let preds = dir.path().join("preds");
    let out = predict(&run, &input, &preds, &[]);
    assert!(
        !out.status.success(),
        "a failed case must give a non-zero exit code"
    );
    let log = text(&out);
    assert!(
        log.contains("broken_case"),
        "the failure must name the case:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        preds.join("hippocampus_036.nii.gz").exists()
            && preds.join("hippocampus_037.nii.gz").exists()
    );
    assert!(!preds.join("broken_case.nii.gz").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&preds)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files left behind: {leftovers:?}"
    );
}

#[test]
fn mismatched_image_and_label_give_a_one_line_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = root().join("sample-data/hippocampus");
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("imagesTr")).unwrap();
    std::fs::create_dir_all(data.join("labelsTr")).unwrap();
    let cases = ["hippocampus_001", "hippocampus_003"];
    for case in cases {
        std::fs::copy(
            src.join(format!("imagesTr/{case}.nii.gz")),
            data.join(format!("imagesTr/{case}.nii.gz")),
        )
        .unwrap();
    }
    // Case 003 gets case 001's label: a different shape.
    std::fs::copy(
        src.join("labelsTr/hippocampus_001.nii.gz"),
        data.join("labelsTr/hippocampus_001.nii.gz"),
    )
    .unwrap();
    std::fs::copy(
        src.join("labelsTr/hippocampus_001.nii.gz"),
        data.join("labelsTr/hippocampus_003.nii.gz"),
    )
    .unwrap();
    let training: Vec<_> = cases
        .iter()
        .map(|c| serde_json::json!({"image": format!("./imagesTr/{c}.nii.gz"), "label": format!("./labelsTr/{c}.nii.gz")}))
        .collect();
    let json = serde_json::json!({"name": "broken", "labels": {"0": "background", "1": "A", "2": "P"}, "modality": {"0": "MRI"}, "training": training});
    std::fs::write(data.join("dataset.json"), json.to_string()).unwrap();

    let log = train_failure(&data, &dir.path().join("run"), &[]);
    let error_lines: Vec<&str> = log.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error_lines.len(), 1, "{log}");
    assert!(
        error_lines[0].contains("labelsTr/hippocampus_003.nii.gz"),
        "{log}"
    );
    assert!(error_lines[0].contains("shape"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// Writes a copy of a scan stored the other way round (x and y reversed: LPS-like instead of RAS)
/// with an affine that places every voxel at the same world position.
fn write_flipped_copy(src: &Path, dst: &Path) {
    let (mut header, data) = read_nifti_raw(src).unwrap();
    let [nx, ny, nz] = header.shape();
    let affine = header.affine();
    let values = match data {
        segmenter_io::NiftiData::F32(v) => v,
        segmenter_io::NiftiData::U8(v) => v.into_iter().map(f32::from).collect(),
        other => panic!("unexpected data type {}", other.datatype()),
    };
    let mut flipped = vec![0f32; values.len()];
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                flipped[(nx - 1 - x) + nx * ((ny - 1 - y) + ny * z)] =
                    values[x + nx * (y + ny * z)];
            }
        }
    }
    // New voxel (x', y') = old (nx-1-x', ny-1-y'): negate the x and y columns, move the origin.
    for (srow, r) in header.srow.iter_mut().zip(affine) {
        let origin = r[3] + r[0] * (nx - 1) as f64 + r[1] * (ny - 1) as f64;
        *srow = [-r[0] as f32, -r[1] as f32, r[2] as f32, origin as f32];
    }
    header.sform_code = 1;
    segmenter_io::write_nifti(dst, &header, &segmenter_io::NiftiData::F32(flipped)).unwrap();
}

#[test]
fn a_reoriented_scan_gets_the_same_segmentation_in_its_own_orientation() {
    let (dir, run) = trained();
    let scan = root().join("sample-data/hippocampus/imagesTs/hippocampus_036.nii.gz");
    let (inputs, flipped_inputs) = (dir.path().join("ras"), dir.path().join("lps"));
    std::fs::create_dir_all(&inputs).unwrap();
    std::fs::create_dir_all(&flipped_inputs).unwrap();
    std::fs::copy(&scan, inputs.join("case.nii.gz")).unwrap();
    write_flipped_copy(&scan, &flipped_inputs.join("case.nii.gz"));
    let (preds, flipped_preds) = (dir.path().join("pred-ras"), dir.path().join("pred-lps"));
    for (input, output) in [(&inputs, &preds), (&flipped_inputs, &flipped_preds)] {
        let out = predict(&run, input, output, &[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let a = read_nifti(&preds.join("case.nii.gz")).unwrap();
    let b = read_nifti(&flipped_preds.join("case.nii.gz")).unwrap();
    let (flipped_header, _) = read_nifti_raw(&flipped_inputs.join("case.nii.gz")).unwrap();
    assert_eq!(
        b.header.affine(),
        flipped_header.affine(),
        "the prediction keeps the input's own affine"
    );
    assert_eq!(b.shape, a.shape);
    let [nx, ny, nz] = a.shape;
    let mut distinct = std::collections::BTreeSet::new();
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let va = a.data[x + nx * (y + ny * z)];
                distinct.insert(va as u8);
                assert_eq!(
                    va,
                    b.data[(nx - 1 - x) + nx * ((ny - 1 - y) + ny * z)],
                    "voxel ({x}, {y}, {z}) differs"
                );
            }
        }
    }
    assert!(
        distinct.len() >= 2,
        "the prediction is constant ({distinct:?}), so the comparison would prove nothing"
    );
}

/// The MRI is LPS with 3 mm voxels and the plan works at 1 mm: the prediction goes through
/// reorientation and resampling both ways and must come back on the scan's own grid.
#[test]
fn an_lps_mri_comes_back_with_its_own_geometry() {
    let scan = root()
        .parent()
        .unwrap()
        .join("shared/data/totalseg-example/example_mr_sm.nii.gz");
    if !scan.exists() {
        eprintln!("skipping: {} is not here", scan.display());
        return;
    }
    let (dir, run) = trained();
    let preds = dir.path().join("preds");
    let out = predict(&run, &scan, &preds, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let (input, _) = read_nifti_raw(&scan).unwrap();
    let pred = read_nifti(&preds.join("example_mr_sm.nii.gz")).unwrap();
    assert_eq!(pred.shape, input.shape());
    assert_eq!(pred.header.affine(), input.affine());
    assert_eq!(
        (pred.header.qform_code, pred.header.sform_code),
        (input.qform_code, input.sform_code)
    );
    assert_eq!(pred.header.pixdim, input.pixdim);
    // Without --save-probabilities the probabilities are resampled back slice by slice; with it,
    // for the whole volume at once. The label maps must be the same.
    let preds_p = dir.path().join("preds-p");
    let out = predict(&run, &scan, &preds_p, &["--save-probabilities"]);
    assert!(out.status.success(), "{}", text(&out));
    let pred_p = read_nifti(&preds_p.join("example_mr_sm.nii.gz")).unwrap();
    assert_eq!(pred_p.data, pred.data);
    let distinct: std::collections::BTreeSet<u32> = pred.data.iter().map(|&v| v as u32).collect();
    assert!(
        distinct.len() >= 2,
        "a constant prediction ({distinct:?}) proves little"
    );
}

#[test]
fn bench_sampler_prints_one_json_object_per_preset() {
    let data = root().join("sample-data/hippocampus");
    let out = segmenter(&[
        "bench",
        "sampler",
        "--data",
        s(&data),
        "--presets",
        "tiny",
        "--seconds",
        "0",
        "--batch-size",
        "2",
        "--json",
    ]);
    assert!(out.status.success(), "bench failed:\n{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["preset"], "tiny");
    assert_eq!(v["batch_size"], 2);
    let (sampler, train) = (
        v["sampler_samples_per_s"].as_f64().unwrap(),
        v["train_samples_per_s"].as_f64().unwrap(),
    );
    assert!(sampler > 0.0 && train > 0.0, "{v}");
    assert!((v["ratio"].as_f64().unwrap() - sampler / train).abs() < 1e-9 * sampler / train);
}

/// 2.5D: with `--context-slices 1` the network sees each slice with its two neighbours, the plan
/// records it, and prediction feeds the same stack.
#[test]
fn a_run_with_neighbouring_slices_trains_and_predicts() {
    let dir = tempfile::tempdir().unwrap();
    let data = root().join("sample-data/hippocampus");
    let run = dir.path().join("run");
    let toml = "batch_size = 4\nwarmup_steps = 1\nval_every = 1\n[model]\ncontext_slices = 1\n";
    let printed = train_two_steps_ok(&data, &run, toml);
    assert!(
        printed.contains("each with its neighbour on each side"),
        "{printed}"
    );
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("plan.json")).unwrap()).unwrap();
    assert_eq!(plan["context_slices"], 1, "{plan}");
    let scan = data.join("imagesTs/hippocampus_036.nii.gz");
    let preds = dir.path().join("preds");
    let out = predict(&run, &scan, &preds, &["--tta"]);
    assert!(out.status.success(), "predict failed:\n{}", text(&out));
    let (header, _) = read_nifti_raw(&scan).unwrap();
    let pred = read_nifti(&preds.join("hippocampus_036.nii.gz")).unwrap();
    assert_eq!(pred.shape, header.shape());
    assert!(pred.data.iter().all(|&v| v == 0.0 || v == 1.0 || v == 2.0));
}

/// `--pretrained` loads a VMamba checkpoint (made by upstream's code, see
/// tests/fixtures/swin-umamba) into the encoder and keeps it frozen through the first epochs, so
/// the exported weights of the encoder's stages are still exactly the checkpoint's; a checkpoint
/// of other widths is refused before a run folder is made.
#[test]
fn a_pretrained_encoder_is_loaded_frozen_and_exported_unchanged() {
    use segmenter::model::weights::{read_state_dict, vmamba_to_upstream};
    let dir = tempfile::tempdir().unwrap();
    let data = root().join("sample-data/hippocampus");
    let vmamba = root().join("tests/fixtures/swin-umamba/vmamba_small_v0.pth");
    let config = dir.path().join("small.toml");
    std::fs::write(
        &config,
        "[train]\nbatch_size = 4\nwarmup_steps = 1\nval_every = 1\n\
         [model]\nstem_channels = 8\ndims = [8, 16, 32, 64]\ndepths = [2, 1, 2, 1]\nd_state = 8\n",
    )
    .unwrap();
    let run = dir.path().join("run");
    let args = |run: &Path, config: Option<&Path>| {
        let mut a = vec![
            "train",
            "--data",
            s(&data),
            "--out",
            s(run),
            "--epochs",
            "1",
        ];
        a.extend(["--steps-per-epoch", "2", "--pretrained", s(&vmamba)]);
        if let Some(c) = config {
            a.extend(["--config", s(c)]);
        }
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let out = segmenter(
        &args(&run, Some(&config))
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let printed = text(&out);
    assert!(out.status.success(), "train failed:\n{printed}");
    assert!(
        printed.contains("87 tensors loaded, 8 skipped"),
        "{printed}"
    );
    assert!(printed.contains("VSS stages are frozen"), "{printed}");
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(saved.contains("freeze_encoder_epochs = 10"), "{saved}");

    let exported = dir.path().join("run.pth");
    let out = segmenter(&["export", "--model", s(&run), "--out", s(&exported)]);
    assert!(out.status.success(), "export failed:\n{}", text(&out));
    let ours = read_state_dict(&exported).unwrap();
    let (theirs, _) = vmamba_to_upstream(read_state_dict(&vmamba).unwrap());
    assert_eq!(theirs.len(), 87);
    for (key, tensor) in &theirs {
        assert_eq!(
            ours[key].values, tensor.values,
            "{key} changed while frozen"
        );
    }

    // The tiny preset's widths are not the checkpoint's: refused, and no run folder is left.
    let refused = dir.path().join("refused");
    let out = segmenter(
        &args(&refused, None)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let printed = text(&out);
    assert!(!out.status.success());
    assert!(
        printed.contains("vmamba_small_v0.pth") && printed.contains("has shape"),
        "{printed}"
    );
    assert!(
        !refused.exists(),
        "a refused run left {}",
        refused.display()
    );
}

/// The epochs of `run`'s log, as JSON objects.
fn log_of(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_time_budget_alone_sets_the_runs_length_and_spaces_validations() {
    let dir = tempfile::tempdir().unwrap();
    let data = root().join("sample-data/hippocampus");
    let config = dir.path().join("small.toml");
    // One-step epochs that ask for validation after each: only the budget keeps them apart.
    std::fs::write(
        &config,
        "[train]\nbatch_size = 2\nsteps_per_epoch = 1\nwarmup_steps = 1\nval_every = 1\n",
    )
    .unwrap();
    let train = |run: &Path, extra: &[&str]| {
        let mut args = vec!["train", "--data", s(&data), "--out", s(run)];
        args.extend(["--config", s(&config), "--replicas", "1"]);
        args.extend(extra);
        let out = segmenter(&args);
        assert!(out.status.success(), "train failed:\n{}", text(&out));
        text(&out)
    };

    // No epoch count: the budget (6 s) decides; validations at least a tenth of it apart.
    let run = dir.path().join("budget");
    let started = std::time::Instant::now();
    let printed = train(&run, &["--time-budget-min", "0.1"]);
    // The run lasts its budget. (Its last log line may be earlier: when the budget runs out
    // during an epoch's validation or checkpoint, the next epoch stops before a step, logging
    // nothing new.)
    assert!(started.elapsed().as_secs_f64() >= 6.0);
    assert!(printed.contains("Time budget reached"), "{printed}");
    let written = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(written.contains("epochs = 1000000"), "{written}");
    let log = log_of(&run);
    let validated: Vec<f64> = log
        .iter()
        .filter(|e| e.get("val_dice").is_some())
        .map(|e| e["elapsed_s"].as_f64().unwrap())
        .collect();
    assert!(validated.len() >= 2, "{log:?}");
    assert!(
        validated.len() < log.len(),
        "every epoch validated: {log:?}"
    );
    // The last validation comes with the budget's end, whenever that is; the others are spaced.
    for pair in validated[..validated.len() - 1].windows(2) {
        assert!(pair[1] - pair[0] >= 0.6, "validations at {validated:?}");
    }

    // An epoch count still ends the run first; the budget (10 min) only spaces the validations,
    // so of three one-step epochs only the last validates.
    let run = dir.path().join("epochs");
    train(&run, &["--time-budget-min", "10", "--epochs", "3"]);
    let log = log_of(&run);
    assert_eq!(log.len(), 3, "{log:?}");
    let validated: Vec<bool> = log.iter().map(|e| e.get("val_dice").is_some()).collect();
    assert_eq!(validated, [false, false, true]);
}
