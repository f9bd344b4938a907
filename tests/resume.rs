//! Training survives being killed (SIGKILL mid-run, then `--resume`) and a NaN batch.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_segmenter"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn log_lines(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("log.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every log line is complete JSON"))
        .collect()
}

fn small_config(dir: &Path, epochs: usize) -> PathBuf {
    let config = dir.join("small.toml");
    let text = format!("[train]\nepochs = {epochs}\nsteps_per_epoch = 2\nbatch_size = 2\nwarmup_steps = 1\nval_every = 1000\n");
    std::fs::write(&config, text).unwrap();
    config
}

/// Trains `run` with `config` and `extra` flags; asserts that it succeeded and returns what it
/// printed.
fn train_ok(data: &Path, run: &Path, config: &Path, extra: &[&str]) -> String {
    let out = bin()
        .args(train_args(data, run, config))
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    text(&out)
}

fn train_args<'a>(data: &'a Path, run: &'a Path, config: &'a Path) -> Vec<&'a str> {
    vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--val-fraction",
        "0.1",
    ]
}

fn checkpoint_step(run: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(run.join("checkpoint/state.json")).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["step"].as_u64()
}

#[test]
fn a_killed_run_resumes_from_its_checkpoint_and_ends_where_an_uninterrupted_run_ends() {
    let dir = tempfile::tempdir().unwrap();
    let data = root().join("sample-data/hippocampus");
    let config = small_config(dir.path(), 8);

    // Reference: the same run, uninterrupted.
    let straight = dir.path().join("straight");
    train_ok(&data, &straight, &config, &[]);

    // Killed with SIGKILL once at least two epochs are checkpointed, then resumed.
    let killed = dir.path().join("killed");
    let mut child = bin()
        .args(train_args(&data, &killed, &config))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while checkpoint_step(&killed).is_none_or(|s| s < 4) {
        assert!(Instant::now() < deadline, "no checkpoint appeared");
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    let saved = checkpoint_step(&killed).expect("a complete checkpoint survives the kill");
    assert!(
        saved < 16,
        "the run finished before it could be killed; make it longer"
    );
    for file in ["state.json", "model.mpk", "optimizer.mpk"] {
        assert!(
            killed
                .join("checkpoint")
                .join(file)
                .metadata()
                .unwrap()
                .len()
                > 0,
            "{file} missing or empty"
        );
    }
    // Every log line written before the kill is whole JSON.
    let before = log_lines(&killed);

    let out = bin()
        .args(["train", "--resume", killed.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "resume failed:\n{}", text(&out));
    assert!(
        text(&out).contains(&format!("step {saved}")),
        "{}",
        text(&out)
    );
    let after = log_lines(&killed);
    let steps: Vec<u64> = after.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(
        steps,
        (1..=8).map(|e| e * 2).collect::<Vec<_>>(),
        "each epoch logged once, in order (before the kill: {before:?})"
    );

    // Same seed, same steps, restored weights and optimiser state: the same final loss.
    let loss = |lines: &[serde_json::Value]| lines.last().unwrap()["train_loss"].as_f64().unwrap();
    let (a, b) = (loss(&log_lines(&straight)), loss(&after));
    assert!(
        (a - b).abs() <= 1e-4 * a.abs().max(1.0),
        "uninterrupted final loss {a}, resumed {b}"
    );
}

#[test]
fn a_nan_batch_is_skipped_without_poisoning_the_run() {
    // Also with two data-parallel replicas: the NaN is then in one replica's half of the batch.
    for replicas in ["1", "2"] {
        let dir = tempfile::tempdir().unwrap();
        let data = root().join("sample-data/hippocampus");
        let config = small_config(dir.path(), 3);
        let run = dir.path().join("run");
        let extra = ["--replicas", replicas, "--inject-nan-at-step", "1"];
        let printed = train_ok(&data, &run, &config, &extra);
        assert!(
            printed.contains("step 2: loss is NaN; step skipped"),
            "{printed}"
        );
        assert_eq!(
            printed.contains("Data-parallel: 2 replicas"),
            replicas == "2",
            "{printed}"
        );
        let lines = log_lines(&run);
        let skipped: Vec<u64> = lines
            .iter()
            .map(|l| l["skipped_steps"].as_u64().unwrap())
            .collect();
        assert_eq!(
            skipped,
            vec![1, 0, 0],
            "only the injected step is skipped; later steps train normally ({replicas} replicas)"
        );
        assert!(lines
            .iter()
            .all(|l| l["train_loss"].as_f64().unwrap().is_finite()));
    }
}
