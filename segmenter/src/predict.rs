//! Batch prediction: label maps for a file or a folder of cases, skipping finished ones, going on
//! past failures and writing every output atomically.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use segmenter_io::{find_cases, load_case, write_labels, Case};

use crate::infer::{predict_volume, WindowSettings};
use crate::model::ModelBackend;
use crate::plan::NetworkCase;
use crate::run::RunDir;

/// Options of `segmenter predict`.
#[derive(Clone, Debug)]
pub struct PredictOptions {
    /// Run folder of `segmenter train`.
    pub model: PathBuf,
    /// A scan, or a folder of scans.
    pub input: PathBuf,
    /// Folder for the label maps.
    pub output: PathBuf,
    /// Predict cases whose output already exists.
    pub overwrite: bool,
    /// Only this part of the cases: `(index, count)`, index in `0..count`.
    pub shard: Option<(usize, usize)>,
    /// Sliding-window and test-time augmentation settings.
    pub window: WindowSettings,
}

/// Parses `--shard i/n` (0-based `i < n`), e.g. `$SLURM_ARRAY_TASK_ID/8`.
pub fn parse_shard(text: &str) -> std::result::Result<(usize, usize), String> {
    let (i, n) = text
        .split_once('/')
        .ok_or_else(|| format!("--shard '{text}': expected i/n, e.g. 0/4"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("--shard '{text}': '{v}' is not a whole number"))
    };
    let (i, n) = (parse(i)?, parse(n)?);
    if n == 0 || i >= n {
        return Err(format!("--shard '{text}': need 0 <= i < n"));
    }
    Ok((i, n))
}

/// The cases of a scan, a folder, or a text file listing scans or folders (one per line, `#` comments).
pub fn gather_cases(input: &Path, file_ending: &str) -> Result<Vec<Case>> {
    let is_list = input.is_file() && input.extension().is_some_and(|e| e == "txt" || e == "lst");
    if !is_list {
        return Ok(find_cases(input, Some(file_ending))?);
    }
    let text = std::fs::read_to_string(input)
        .with_context(|| format!("{}: cannot read list", input.display()))?;
    let base = input.parent().unwrap_or(Path::new("."));
    let mut cases = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let path = base.join(line);
        let found = find_cases(&path, Some(file_ending))
            .with_context(|| format!("{}:{}: {}", input.display(), n + 1, line))?;
        cases.extend(found);
    }
    cases.sort_by(|a, b| a.id.cmp(&b.id));
    if let Some(w) = cases.windows(2).find(|w| w[0].id == w[1].id) {
        bail!("{}: case '{}' is listed twice", input.display(), w[0].id);
    }
    Ok(cases)
}

/// What a batch prediction did.
#[derive(Debug, Default)]
pub struct PredictReport {
    /// Label maps written.
    pub written: Vec<PathBuf>,
    /// Cases skipped because their output existed.
    pub skipped: Vec<String>,
    /// Cases that failed, with the reason.
    pub failed: Vec<(String, String)>,
}

fn output_name(case: &Case) -> String {
    let first = case.images[0]
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ending = if first.ends_with(".nii.gz") {
        ".nii.gz"
    } else if segmenter_io::is_image2d(&case.images[0]) {
        // 2D datasets: the label map is an image of the input's kind (.png, .tif, .tiff).
        &first[first.rfind('.').unwrap_or(first.len())..]
    } else {
        ".nii"
    };
    format!("{}{ending}", case.id)
}

/// Predicts every case under `options.input` with the run in `options.model`.
pub fn predict<B: ModelBackend>(
    options: &PredictOptions,
    device: &B::Device,
) -> Result<PredictReport> {
    let run = RunDir::open(&options.model)?;
    let (model, plan) = run.load_model::<B>(device)?;
    let cases = find_cases(&options.input, Some(&plan.file_ending))?;
    if cases.is_empty() {
        bail!(
            "{}: no .nii or .nii.gz scans found",
            options.input.display()
        );
    }
    std::fs::create_dir_all(&options.output)
        .with_context(|| format!("{}: cannot create output folder", options.output.display()))?;
    let bar = ProgressBar::new(cases.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} cases (eta {eta}) {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let mut report = PredictReport::default();
    let (mut voxels, started) = (0usize, Instant::now());
    for case in &cases {
        let target = options.output.join(output_name(case));
        if target.exists() && !options.overwrite {
            report.skipped.push(case.id.clone());
            bar.inc(1);
            continue;
        }
        let result = (|| -> Result<usize> {
            if case.images.len() != plan.channel_names.len() {
                bail!(
                    "has {} channel file(s), the model expects {} ({})",
                    case.images.len(),
                    plan.channel_names.len(),
                    plan.channel_names.join(", ")
                );
            }
            let loaded = load_case(
                &Case {
                    label: None,
                    ..case.clone()
                },
                &plan.labels,
            )?;
            // Predict in the network's frame (canonical orientation), write in the file's own.
            let mut frame = NetworkCase::new(&loaded, plan.reorient);
            plan.normalize(&mut frame.channels);
            let labels = predict_volume(
                &model,
                &plan,
                &frame.channels,
                frame.shape,
                &options.window,
                device,
            );
            write_labels(&target, &loaded.header, &frame.labels_to_file(&labels))?;
            Ok(labels.len())
        })();
        match result {
            Ok(n) => {
                voxels += n;
                report.written.push(target);
            }
            Err(e) => {
                let line = format!("error: case '{}': {e:#}", case.id);
                if bar.is_hidden() {
                    eprintln!("{line}");
                } else {
                    bar.println(line);
                }
                report.failed.push((case.id.clone(), format!("{e:#}")));
            }
        }
        bar.inc(1);
        bar.set_message(format!(
            "{:.0} voxels/s",
            voxels as f64 / started.elapsed().as_secs_f64().max(1e-9)
        ));
    }
    bar.finish_and_clear();
    Ok(report)
}

/// The default output folder name for a prediction next to an input.
pub fn describe(report: &PredictReport, output: &Path) -> String {
    let mut s = format!(
        "{} label map(s) written to {}",
        report.written.len(),
        output.display()
    );
    if !report.skipped.is_empty() {
        s += &format!(
            "; {} skipped (already predicted; --overwrite to redo)",
            report.skipped.len()
        );
    }
    if !report.failed.is_empty() {
        s += &format!(
            "; {} failed: {}",
            report.failed.len(),
            report
                .failed
                .iter()
                .map(|(id, _)| id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_reject_nonsense() {
        assert_eq!(parse_shard("0/4"), Ok((0, 4)));
        assert_eq!(parse_shard("3/4"), Ok((3, 4)));
        assert!(parse_shard("4/4").is_err());
        assert!(parse_shard("1/0").is_err());
        assert!(parse_shard("a/2").is_err());
        assert!(parse_shard("2").is_err());
    }
}
