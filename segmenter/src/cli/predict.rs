//! `segmenter predict`: label maps for new scans with a trained run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use segmenter::predict::postprocess::PostProcessing;
use segmenter::predict::window::WindowSettings;
use segmenter::predict::{describe, PredictOptions};

use super::{backend, DeviceKind};

// The flags of `segmenter predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Run folder written by `segmenter train`.
    #[arg(long)]
    pub model: PathBuf,
    /// A .nii/.nii.gz scan, a folder of them (CASE_0000.nii.gz channels are grouped), or a .txt
    /// file listing scans or folders, one per line. A folder without such scans is searched at any
    /// depth for DICOM series (files recognised by content, any name): each image series is one
    /// case, written as PatientID_StudyDate_sSeriesNumber_Description.nii.gz; localizers,
    /// non-image objects and other files are skipped with a note.
    #[arg(long)]
    pub input: PathBuf,
    /// Output folder: one label map per case, same name, header and affine as the input.
    #[arg(long)]
    pub output: PathBuf,
    /// Predict again cases whose output already exists.
    #[arg(long)]
    pub overwrite: bool,
    /// Predict only part i of n (0-based), for cluster job arrays: `--shard $SLURM_ARRAY_TASK_ID/8`.
    #[arg(long, value_parser = segmenter::predict::cases::parse_shard)]
    pub shard: Option<(usize, usize)>,
    /// Mirroring test-time augmentation (4 passes per window: as is and flipped along each in-plane axis).
    #[arg(long)]
    pub tta: bool,
    /// Sliding-window step as a fraction of the patch size.
    #[arg(long, default_value_t = 0.5)]
    pub step: f64,
    /// Post-processing of each label map; recorded with the other settings in
    /// OUTPUT/prediction.json.
    #[arg(long, value_enum, default_value_t = PostProcessing::None)]
    pub postprocess: PostProcessing,
    /// Also write each case's class probabilities (4D float32 NIfTI, x·y·z·class, before
    /// post-processing) to OUTPUT/probabilities/. They take classes x voxels x 4 bytes of
    /// memory and disk (37 GB for 118 classes on a 512 x 512 x 300 CT).
    #[arg(long)]
    pub save_probabilities: bool,
    /// Also write a binary DICOM Segmentation object for each DICOM series, to
    /// OUTPUT/dicom-seg/NAME.dcm: one segment per foreground label (named from the model's
    /// labels), one frame per segment and slice that holds it, each citing its source image, in
    /// the series' Frame of Reference, with the source's patient and study attributes.
    #[arg(long)]
    pub dicom_seg: bool,
}

/// Predicts every case; fails (exit code 1) when any case failed, after listing them.
pub fn run(device: DeviceKind, args: PredictArgs) -> Result<ExitCode> {
    let step = args.step;
    anyhow::ensure!(
        step > 0.0 && step <= 1.0,
        "--step must be within (0, 1], got {step}"
    );
    let window = WindowSettings {
        step_fraction: step,
        mirror: args.tta,
        ..Default::default()
    };
    let options = PredictOptions {
        model: args.model,
        input: args.input,
        output: args.output.clone(),
        overwrite: args.overwrite,
        shard: args.shard,
        window,
        postprocessing: args.postprocess,
        save_probabilities: args.save_probabilities,
        dicom_seg: args.dicom_seg,
    };
    let report = backend::predict(device, &options)?;
    eprintln!("{}", describe(&report, &args.output));
    if report.failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for (id, reason) in &report.failed {
            eprintln!("failed: {id}: {reason}");
        }
        Ok(ExitCode::FAILURE)
    }
}
