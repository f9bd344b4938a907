//! Batch prediction: label maps for a file or a folder of cases, skipping finished ones, going on
//! past failures and writing every output atomically.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use segmenter_io::{find_cases, load_case, write_labels, write_nifti, Case, LoadedCase, NiftiData};
use serde::{Deserialize, Serialize};

use crate::infer::{predict_volume_resampled, predict_volume_with_probabilities, WindowSettings};
use crate::model::{ModelBackend, SwinUMamba};
use crate::plan::{NetworkCase, Plan};
use crate::postprocess::PostProcessing;
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
    /// Post-processing of every label map.
    pub postprocessing: PostProcessing,
    /// Also write the class probabilities, as 4D float32 NIfTI files in `<output>/probabilities/`.
    pub save_probabilities: bool,
}

/// The settings a prediction folder was made with, kept in `<output>/prediction.json` so that
/// the label maps can be traced back to them and a rerun cannot mix settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictionSettings {
    /// The run folder of the model.
    pub model: PathBuf,
    /// Mirroring test-time augmentation.
    pub tta: bool,
    /// Sliding-window step as a fraction of the patch.
    pub step: f64,
    /// Post-processing applied to the label maps.
    pub postprocessing: PostProcessing,
    /// Whether probability maps were written.
    pub save_probabilities: bool,
}

/// Name of the settings file in a prediction folder.
pub const SETTINGS_FILE: &str = "prediction.json";

impl PredictOptions {
    fn settings(&self) -> PredictionSettings {
        PredictionSettings {
            model: std::path::absolute(&self.model).unwrap_or_else(|_| self.model.clone()),
            tta: self.window.mirror,
            step: self.window.step_fraction,
            postprocessing: self.postprocessing,
            save_probabilities: self.save_probabilities,
        }
    }
}

/// The cases of shard `(index, count)`: every `count`-th case from `index` on, so shards are
/// disjoint, cover every case, and stay balanced when case sizes drift along the sorted order.
pub fn shard_cases<T>(cases: Vec<T>, shard: Option<(usize, usize)>) -> Vec<T> {
    match shard {
        None => cases,
        Some((i, n)) => cases
            .into_iter()
            .enumerate()
            .filter(|(k, _)| k % n == i)
            .map(|(_, c)| c)
            .collect(),
    }
}

/// Removes temporary files left in `dir` by a killed run while it was writing `file_name`
/// (`.{file_name}.tmp-*`); only this case's, so other shards writing into the same folder are
/// left alone.
fn remove_stale_temporaries(dir: &Path, file_name: &str) {
    let prefix = format!(".{file_name}.tmp");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
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

/// The label map of a loaded case in its file's voxel order and, with `keep_probabilities`,
/// its class probabilities (one `Vec` per class, same order).
///
/// The case is predicted in the network's frame (canonical orientation, slices at the plan's
/// spacing). When its slices were resampled, the labels are the argmax of the probabilities
/// resampled back, as nnU-Net does; without `keep_probabilities` that is done slice by slice,
/// so memory does not grow with classes x voxels.
pub fn predict_case<B: ModelBackend>(
    model: &SwinUMamba<B>,
    plan: &Plan,
    case: &LoadedCase,
    window: &WindowSettings,
    keep_probabilities: bool,
    device: &B::Device,
) -> (Vec<u8>, Option<Vec<Vec<f32>>>) {
    let mut frame = NetworkCase::for_plan(case, plan);
    plan.normalize(&mut frame.channels);
    if frame.is_resampled() && !keep_probabilities {
        let labels = predict_volume_resampled(
            model,
            plan,
            &frame.channels,
            frame.shape,
            frame.canonical_shape,
            window,
            device,
        );
        let labels = frame.orientation.from_canonical(&labels, frame.file_shape);
        return (labels, None);
    }
    let (labels, probabilities) = predict_volume_with_probabilities(
        model,
        plan,
        &frame.channels,
        frame.shape,
        window,
        device,
        keep_probabilities,
    );
    frame.prediction_to_file(labels, probabilities)
}

/// Predicts every case under `options.input` with the run in `options.model`.
pub fn predict<B: ModelBackend>(
    options: &PredictOptions,
    device: &B::Device,
) -> Result<PredictReport> {
    let run = RunDir::open(&options.model)?;
    let (model, plan) = run.load_model::<B>(device)?;
    let all = gather_cases(&options.input, &plan.file_ending)?;
    if all.is_empty() {
        bail!(
            "{}: no .nii or .nii.gz scans found",
            options.input.display()
        );
    }
    let cases = shard_cases(all, options.shard);
    std::fs::create_dir_all(&options.output)
        .with_context(|| format!("{}: cannot create output folder", options.output.display()))?;
    let settings = options.settings();
    let settings_path = options.output.join(SETTINGS_FILE);
    if settings_path.exists() {
        let text = std::fs::read_to_string(&settings_path)
            .with_context(|| format!("{}: cannot read", settings_path.display()))?;
        let previous: PredictionSettings = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not a prediction settings file",
                settings_path.display()
            )
        })?;
        if previous != settings && !options.overwrite {
            bail!(
                "{}: this folder holds predictions made with other settings ({}); use another \
                 output folder, or --overwrite to redo every case with the new settings",
                options.output.display(),
                serde_json::to_string(&previous)?
            );
        }
    }
    crate::fsutil::write_atomic(
        &settings_path,
        serde_json::to_string_pretty(&settings)?.as_bytes(),
    )?;
    let prob_dir = options.output.join("probabilities");
    if options.save_probabilities {
        std::fs::create_dir_all(&prob_dir)
            .with_context(|| format!("{}: cannot create folder", prob_dir.display()))?;
    }
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
        let name = output_name(case);
        let target = options.output.join(&name);
        let prob_target = prob_dir.join(&name);
        // A case is finished when everything asked for exists; the label map is written last.
        let finished = target.exists() && (!options.save_probabilities || prob_target.exists());
        if finished && !options.overwrite {
            report.skipped.push(case.id.clone());
            bar.inc(1);
            continue;
        }
        remove_stale_temporaries(&options.output, &name);
        if options.save_probabilities {
            remove_stale_temporaries(&prob_dir, &name);
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
            let (mut labels, probabilities) = predict_case(
                &model,
                &plan,
                &loaded,
                &options.window,
                options.save_probabilities,
                device,
            );
            if let (true, Some(probabilities)) = (options.save_probabilities, probabilities) {
                write_probabilities(&prob_target, &loaded.header, loaded.shape, &probabilities)?;
            }
            options.postprocessing.apply(&mut labels, loaded.shape);
            write_labels(&target, &loaded.header, &labels)?;
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

/// Writes class probabilities as a 4D float32 NIfTI (x, y, z, class) with the scan's geometry.
fn write_probabilities(
    path: &Path,
    reference: &segmenter_io::NiftiHeader,
    file_shape: [usize; 3],
    probabilities: &[Vec<f32>],
) -> Result<()> {
    let mut header = reference.clone();
    header.dim[0] = 4;
    for (d, &n) in header.dim[1..4].iter_mut().zip(&file_shape) {
        *d = i16::try_from(n).context("axis too long for NIfTI-1")?;
    }
    header.dim[4] = i16::try_from(probabilities.len()).context("too many classes")?;
    header.pixdim[4] = 1.0;
    header.scl_slope = 1.0;
    header.scl_inter = 0.0;
    let data: Vec<f32> = probabilities.concat();
    write_nifti(path, &header, &NiftiData::F32(data))?;
    Ok(())
}

/// One line saying what a batch prediction did.
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
