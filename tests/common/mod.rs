//! Helpers shared by the end-to-end tests: run the binary, train a tiny run on the sample data.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs the `segmenter` binary with `args` and waits for it.
pub fn segmenter(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_segmenter"))
        .args(args)
        .output()
        .expect("run segmenter")
}

/// Everything a run printed, stdout then stderr.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Trains `data` for one epoch of two steps into `run` with the `[train]` settings `train_toml`.
pub fn train_two_steps(data: &Path, run: &Path, train_toml: &str) -> Output {
    let config = run.with_extension("toml");
    std::fs::write(&config, format!("[train]\n{train_toml}")).unwrap();
    segmenter(&[
        "train",
        "--data",
        s(data),
        "--out",
        s(run),
        "--config",
        s(&config),
        "--epochs",
        "1",
        "--steps-per-epoch",
        "2",
    ])
}

/// Runs `segmenter predict` of the scans in `input` into `output`, with `extra` options.
pub fn predict(run: &Path, input: &Path, output: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["predict", "--model", s(run), "--input", s(input)];
    args.extend(["--output", s(output)]);
    args.extend(extra);
    segmenter(&args)
}

/// Runs `segmenter evaluate` of the label maps in `pred` against `reference`, report into `out`.
pub fn evaluate(pred: &Path, reference: &Path, dataset_json: &Path, out: &Path) -> Output {
    segmenter(&[
        "evaluate",
        "--pred",
        s(pred),
        "--ref",
        s(reference),
        "--dataset-json",
        s(dataset_json),
        "--out",
        s(out),
    ])
}

/// Runs `segmenter train` on `data` into `run` for one epoch with `extra` options, asserts that it
/// failed and returns what it printed.
pub fn train_failure(data: &Path, run: &Path, extra: &[&str]) -> String {
    let mut args = vec!["train", "--data", s(data), "--out", s(run), "--epochs", "1"];
    args.extend(extra);
    let out = segmenter(&args);
    assert!(
        !out.status.success(),
        "train should have failed:\n{}",
        text(&out)
    );
    text(&out)
}

/// Runs `segmenter evaluate` of `pred` against the label maps in `data/labels` (names from
/// `data/dataset.json`) into `out`; asserts that it succeeded and returns what it printed.
pub fn evaluate_against(pred: &Path, data: &Path, labels: &str, out: &Path) -> String {
    let output = evaluate(pred, &data.join(labels), &data.join("dataset.json"), out);
    assert!(
        output.status.success(),
        "evaluate failed:\n{}",
        text(&output)
    );
    text(&output)
}

/// A new temporary folder with a run trained in it by [`trained_run`].
pub fn trained() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let run = trained_run(dir.path());
    (dir, run)
}

/// Trains as [`train_two_steps`] does, asserts that it succeeded and returns what it printed.
pub fn train_two_steps_ok(data: &Path, run: &Path, train_toml: &str) -> String {
    let out = train_two_steps(data, run, train_toml);
    assert!(out.status.success(), "train failed:\n{}", text(&out));
    text(&out)
}

/// A run folder trained for two steps on the sample data, shared by the tests of a file.
pub fn trained_run(dir: &Path) -> PathBuf {
    let data = root().join("sample-data/hippocampus");
    let run = dir.join("run");
    train_two_steps_ok(
        &data,
        &run,
        "batch_size = 4\nwarmup_steps = 1\nval_every = 1\n",
    );
    for file in [
        "model.mpk",
        "config.toml",
        "plan.json",
        "splits.json",
        "log.jsonl",
    ] {
        assert!(run.join(file).exists(), "run folder lacks {file}");
    }
    run
}
