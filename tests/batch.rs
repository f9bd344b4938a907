//! Batch prediction as a cluster or a impatient user runs it: shards, list files, post-processing,
//! probability maps, and a run killed half-way and started again.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use segmenter_io::{read_nifti, read_nifti_raw};

mod common;
use common::*;

/// Copies the sample scans (16 training + 4 held-out) into one input folder.
fn many_scans(dir: &Path) -> PathBuf {
    let input = dir.join("input");
    std::fs::create_dir_all(&input).unwrap();
    for sub in ["imagesTr", "imagesTs"] {
        let src = root().join("sample-data/hippocampus").join(sub);
        for entry in std::fs::read_dir(src).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, input.join(path.file_name().unwrap())).unwrap();
        }
    }
    input
}

/// Non-hidden files of a folder (hidden ones are temporaries).
fn outputs(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".nii.gz"))
                .collect()
        })
        .unwrap_or_default()
}

fn hidden(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn shards_split_the_cases_and_list_files_select_them() {
    let (dir, run) = trained();
    let input = root().join("sample-data/hippocampus/imagesTs");
    let mut parts = Vec::new();
    for shard in ["0/2", "1/2"] {
        let out_dir = dir.path().join(format!("shard{}", &shard[..1]));
        let out = predict(&run, &input, &out_dir, &["--shard", shard]);
        assert!(out.status.success(), "{}", text(&out));
        parts.push(outputs(&out_dir));
    }
    assert_eq!(parts[0].len(), 2, "{parts:?}");
    assert_eq!(parts[1].len(), 2, "{parts:?}");
    assert!(parts[0].is_disjoint(&parts[1]), "{parts:?}");
    let all: BTreeSet<String> = parts[0].union(&parts[1]).cloned().collect();
    assert_eq!(all, outputs(&input));

    // A list file, relative to its own folder, with a comment and a blank line.
    let list = dir.path().join("cases.txt");
    std::fs::write(
        &list,
        format!(
            "# two of the held-out scans\n{}\n\n{}\n",
            input.join("hippocampus_036.nii.gz").display(),
            input.join("hippocampus_040.nii.gz").display()
        ),
    )
    .unwrap();
    let listed = dir.path().join("listed");
    let out = predict(&run, &list, &listed, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        outputs(&listed),
        BTreeSet::from([
            "hippocampus_036.nii.gz".to_string(),
            "hippocampus_040.nii.gz".to_string()
        ])
    );
}

#[test]
fn probabilities_and_largest_component_post_processing() {
    let (dir, run) = trained();
    let scan = root().join("sample-data/hippocampus/imagesTs/hippocampus_037.nii.gz");
    let (plain, post) = (dir.path().join("plain"), dir.path().join("post"));
    for (out_dir, extra) in [
        (&plain, &["--save-probabilities"][..]),
        (&post, &["--postprocess", "largest-component"][..]),
    ] {
        let out = predict(&run, &scan, out_dir, extra);
        assert!(out.status.success(), "{}", text(&out));
    }
    let labels = read_nifti(&plain.join("hippocampus_037.nii.gz")).unwrap();
    let probs_path = plain.join("probabilities/hippocampus_037.nii.gz");
    let (probs_header, probs) = segmenter_io::read_nifti_nd(&probs_path).unwrap();
    assert_eq!(probs_header.dim[0], 4);
    assert_eq!(probs_header.dim[4], 3, "background + 2 classes");
    let (input_header, _) = read_nifti_raw(&scan).unwrap();
    assert_eq!(probs_header.affine(), input_header.affine());
    // Values in file order: [class][z][y][x].
    let probs = probs.to_f32(1.0, 0.0);
    let n = labels.data.len();
    assert_eq!(probs.len(), 3 * n);
    for v in 0..n {
        let p = [probs[v], probs[n + v], probs[2 * n + v]];
        let sum: f32 = p.iter().sum();
        assert!(
            (sum - 1.0).abs() < 1e-4,
            "voxel {v}: probabilities sum to {sum}"
        );
        let best = (0..3).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
        assert_eq!(
            labels.data[v] as usize, best,
            "voxel {v}: label is not the argmax"
        );
    }
    // Post-processing only removes voxels, and leaves one 26-connected piece per class.
    let kept = read_nifti(&post.join("hippocampus_037.nii.gz")).unwrap();
    assert!(kept
        .data
        .iter()
        .zip(&labels.data)
        .all(|(&k, &l)| k == l || k == 0.0));
    let mut relabelled: Vec<u8> = kept.data.iter().map(|&v| v as u8).collect();
    segmenter::predict::postprocess::keep_largest_components(&mut relabelled, kept.shape);
    assert!(relabelled
        .iter()
        .zip(&kept.data)
        .all(|(&a, &b)| a as f32 == b));
    let settings: serde_json::Value =
        serde_json::from_slice(&std::fs::read(post.join("prediction.json")).unwrap()).unwrap();
    assert_eq!(
        settings["postprocessing"], "largest-component",
        "{settings}"
    );

    // Predicting into the same folder with other settings is refused, not mixed.
    let out = predict(&run, &scan, &post, &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("other settings"), "{}", text(&out));
}

#[test]
fn a_killed_batch_restarts_and_predicts_every_case_once() {
    let (dir, run) = trained();
    let input = many_scans(dir.path());
    let expected = outputs(&input);
    let preds = dir.path().join("preds");
    let args = [
        "predict",
        "--model",
        s(&run),
        "--input",
        s(&input),
        "--output",
        s(&preds),
        "--tta",
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_segmenter"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while outputs(&preds).len() < 2 && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done = outputs(&preds);
    assert!(
        !done.is_empty() && done.len() < expected.len(),
        "the kill must land mid-batch to test anything ({} of {} done)",
        done.len(),
        expected.len()
    );
    // Every label map present is complete; a kill mid-write leaves only a hidden temporary.
    for name in &done {
        read_nifti(&preds.join(name)).unwrap_or_else(|e| panic!("{e}"));
    }
    let modified = |name: &str| {
        std::fs::metadata(preds.join(name))
            .unwrap()
            .modified()
            .unwrap()
    };
    let before: Vec<_> = done.iter().map(|n| modified(n)).collect();
    // As if the kill had come in the middle of writing a case that is not finished yet.
    let unfinished = expected.difference(&done).next().unwrap().clone();
    std::fs::write(preds.join(format!(".{unfinished}.tmp-999999-0")), b"half").unwrap();

    let out = segmenter(&args);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{} skipped", done.len())),
        "finished cases must not be predicted again:\n{}",
        text(&out)
    );
    assert_eq!(outputs(&preds), expected);
    let after: Vec<_> = done.iter().map(|n| modified(n)).collect();
    assert_eq!(before, after, "finished cases were rewritten");
    assert!(
        hidden(&preds).is_empty(),
        "left behind: {:?}",
        hidden(&preds)
    );
    for name in &expected {
        read_nifti(&preds.join(name)).unwrap_or_else(|e| panic!("{e}"));
    }
}
