//! Batch prediction: label maps for a scan, a folder or a list of cases with a trained run,
//! skipping finished cases, going on past failures and writing every output atomically.
//!
//! [`cases`] finds the cases and names the outputs, [`window`] runs the sliding window over a
//! volume in the network's frame, [`postprocess`] cleans the label maps.

pub mod cases;
pub mod postprocess;
pub mod window;
pub mod window3d;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use segmenter_io::{
    dicom_series_geometry, load_case, write_bytes_atomic, write_dicom_seg, write_labels,
    write_nifti, Case, LoadedCase, NiftiData,
};
use serde::{Deserialize, Serialize};

use burn::prelude::*;
use burn::tensor::activation;

use crate::model::{ModelBackend, Network, SwinUMamba3d};
use crate::plan::Plan;
use crate::preprocess::network_case;
use crate::run::RunDir;
use cases::{gather_cases, output_name, remove_stale_temporaries, shard_cases};
use postprocess::PostProcessing;
use window::{predict_volume, VolumeJob, VolumePrediction, WindowSettings};
use window3d::{flip_3d, mirror_axes_3d, predict_volume_3d};

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
    /// Also write a binary DICOM SEG for each DICOM series, in `<output>/dicom-seg/` (an output
    /// format, not a setting of the label maps, so not in `prediction.json`).
    pub dicom_seg: bool,
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

/// The label map of a loaded case in its file's voxel order and, with `keep_probabilities`,
/// its class probabilities (one `Vec` per class, same order).
///
/// The case is predicted in the network's frame (canonical orientation, slices at the plan's
/// spacing); the prediction comes back on the slices' own in-plane grid (the argmax of the
/// resampled probabilities, as nnU-Net does) and then in the file's voxel order.
pub fn predict_case<B: ModelBackend>(
    model: &Network<B>,
    plan: &Plan,
    case: &LoadedCase,
    window: &WindowSettings,
    keep_probabilities: bool,
    device: &B::Device,
) -> (Vec<u8>, Option<Vec<Vec<f32>>>) {
    let frame = network_case(plan, case);
    let job = VolumeJob {
        channels: &frame.channels,
        shape: frame.shape,
        out_shape: frame.canonical_shape,
        keep_probabilities,
    };
    let prediction = predict_network_volume(model, plan, &job, window, device);
    frame.to_file(&prediction.labels, prediction.probabilities)
}

/// Predicts one volume in the network's frame with a 2D or a 3D network, whichever the run has:
/// the one way from a volume to its labels, for validation, `predict` and the benchmarks alike.
pub fn predict_network_volume<B: ModelBackend>(
    network: &Network<B>,
    plan: &Plan,
    job: &VolumeJob,
    settings: &WindowSettings,
    device: &B::Device,
) -> VolumePrediction {
    match network {
        Network::Planar(model) => predict_volume(model, plan, job, settings, device),
        Network::Volumetric(model) => {
            let patch = plan
                .volumetric
                .as_ref()
                .expect("a 3D run's plan has its 3D configuration (checked when it is read)")
                .patch_size;
            let (channels, classes) = (plan.input_channels(), plan.num_classes());
            let run = network_runner_3d(model, patch, (channels, classes), settings.mirror, device);
            predict_volume_3d(
                job,
                plan.slice_axis,
                patch,
                plan.num_classes(),
                settings,
                run,
            )
        }
    }
}

/// A batch of 3D windows `[n, channels, depth, rows, cols]` to their class probabilities
/// `[n, classes, depth, rows, cols]`; with `mirror`, averaged over the eight mirrorings (each
/// subset of the three axes flipped, the prediction flipped back).
fn network_runner_3d<'a, B: ModelBackend>(
    model: &'a SwinUMamba3d<B>,
    [d, r, c]: [usize; 3],
    (channels, classes): (usize, usize),
    mirror: bool,
    device: &'a B::Device,
) -> impl FnMut(Vec<f32>, usize) -> Vec<f32> + 'a {
    move |input: Vec<f32>, n: usize| {
        let probabilities = |input: Vec<f32>| {
            let x =
                Tensor::<B, 5>::from_data(TensorData::new(input, [n, channels, d, r, c]), device);
            activation::softmax(model.logits(x), 1)
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("f32 probabilities")
        };
        if !mirror {
            return probabilities(input);
        }
        let mut sum = vec![0.0f32; n * classes * d * r * c];
        for axes in mirror_axes_3d() {
            let mut flipped = input.clone();
            flip_3d(&mut flipped, [n, channels, d, r, c], axes);
            let mut p = probabilities(flipped);
            flip_3d(&mut p, [n, classes, d, r, c], axes);
            for (s, v) in sum.iter_mut().zip(&p) {
                *s += v / 8.0;
            }
        }
        sum
    }
}

/// Records the settings in `<output>/prediction.json`, refusing a folder that holds predictions
/// made with other settings (unless `--overwrite`).
fn record_settings(options: &PredictOptions) -> Result<()> {
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
    write_bytes_atomic(
        &settings_path,
        serde_json::to_string_pretty(&settings)?.as_bytes(),
    )?;
    Ok(())
}

/// A loaded model and what predicting one case needs besides the case.
struct Predictor<'a, B: ModelBackend> {
    model: Network<B>,
    plan: Plan,
    options: &'a PredictOptions,
    device: &'a B::Device,
}

impl<B: ModelBackend> Predictor<'_, B> {
    /// Predicts one case into `target` (its probabilities into `prob_target`, its DICOM SEG into
    /// `seg_target`, when asked for); returns the number of voxels written.
    fn case(
        &self,
        case: &Case,
        target: &Path,
        prob_target: &Path,
        seg_target: &Path,
    ) -> Result<usize> {
        let plan = &self.plan;
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
        let keep = self.options.save_probabilities;
        let (mut labels, probabilities) = predict_case(
            &self.model,
            plan,
            &loaded,
            &self.options.window,
            keep,
            self.device,
        );
        if let (true, Some(probabilities)) = (keep, probabilities) {
            write_probabilities(prob_target, &loaded.header, loaded.shape, &probabilities)?;
        }
        self.options.postprocessing.apply(&mut labels, loaded.shape);
        if let (true, Some(series)) = (self.options.dicom_seg, &case.dicom) {
            // The volume's voxel order is the series' (column, row, slice along the normal), so
            // the label map's slices map one to one onto the series' instances.
            let geometry = dicom_series_geometry(series)?;
            write_dicom_seg(seg_target, &geometry, &labels, &plan.labels)?;
        }
        write_labels(target, &loaded.header, &labels)?;
        Ok(labels.len())
    }
}

/// A progress bar over `cases` cases.
fn progress_bar(cases: usize) -> ProgressBar {
    let bar = ProgressBar::new(cases as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} cases (eta {eta}) {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// Predicts every case under `options.input` with the run in `options.model`.
pub fn predict<B: ModelBackend>(
    options: &PredictOptions,
    device: &B::Device,
) -> Result<PredictReport> {
    let run = RunDir::open(&options.model)?;
    let (model, plan) = run.load_network::<B>(device)?;
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
    record_settings(options)?;
    let prob_dir = options.output.join("probabilities");
    if options.save_probabilities {
        std::fs::create_dir_all(&prob_dir)
            .with_context(|| format!("{}: cannot create folder", prob_dir.display()))?;
    }
    let seg_dir = options.output.join("dicom-seg");
    let wants_seg = |case: &Case| options.dicom_seg && case.dicom.is_some();
    if cases.iter().any(wants_seg) {
        std::fs::create_dir_all(&seg_dir)
            .with_context(|| format!("{}: cannot create folder", seg_dir.display()))?;
    }
    let predictor = Predictor {
        model,
        plan,
        options,
        device,
    };
    let bar = progress_bar(cases.len());
    let mut report = PredictReport::default();
    let (mut voxels, started) = (0usize, Instant::now());
    for case in &cases {
        let name = output_name(case);
        let target = options.output.join(&name);
        let prob_target = prob_dir.join(&name);
        let seg_name = format!("{}.dcm", case.id);
        let seg_target = seg_dir.join(&seg_name);
        // A case is finished when everything asked for exists; the label map is written last.
        let finished = target.exists()
            && (!options.save_probabilities || prob_target.exists())
            && (!wants_seg(case) || seg_target.exists());
        if finished && !options.overwrite {
            report.skipped.push(case.id.clone());
            bar.inc(1);
            continue;
        }
        remove_stale_temporaries(&options.output, &name);
        if options.save_probabilities {
            remove_stale_temporaries(&prob_dir, &name);
        }
        if wants_seg(case) {
            remove_stale_temporaries(&seg_dir, &seg_name);
        }
        match predictor.case(case, &target, &prob_target, &seg_target) {
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
