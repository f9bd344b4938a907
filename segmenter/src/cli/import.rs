//! `segmenter import`: a network trained elsewhere as a run folder for `predict` and `evaluate`.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use segmenter::import::{import_swin_umamba, ImportOptions, IMPORT_NOTE};

// What `segmenter import` can import.
#[derive(Subcommand, Debug)]
pub enum ImportKind {
    /// An nnU-Net v2 result of upstream Swin-UMamba (nnUNetTrainerSwinUMamba or
    /// nnUNetTrainerSwinUMambaScratch, configuration 2d): predict then feeds each slice as
    /// nnU-Net v2's predictor does (its axis order and transposes, crop to non-zero,
    /// normalisation, resampling, window positions and Gaussian).
    SwinUmamba(SwinUmambaArgs),
}

// The flags of `segmenter import swin-umamba`.
#[derive(Args, Debug)]
pub struct SwinUmambaArgs {
    /// nnU-Net's checkpoint, e.g. nnUNet_results/DatasetXXX/nnUNetTrainerSwinUMamba__nnUNetPlans__2d/fold_0/checkpoint_final.pth.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The plans it was trained with (nnUNetPlans.json, also in the results folder as plans.json).
    #[arg(long)]
    pub plans: PathBuf,
    /// The dataset's dataset.json (channel names, labels, file ending).
    #[arg(long)]
    pub dataset_json: PathBuf,
    /// The nnU-Net configuration; only 2d (Swin-UMamba is a 2D network).
    #[arg(long, default_value = "2d")]
    pub configuration: String,
    /// Run folder to create (must not exist, or be empty).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `segmenter import`.
pub fn run(what: ImportKind) -> Result<()> {
    let ImportKind::SwinUmamba(args) = what;
    let report = import_swin_umamba(&ImportOptions {
        checkpoint: args.checkpoint,
        plans: args.plans,
        dataset_json: args.dataset_json,
        configuration: args.configuration,
        out: args.out.clone(),
    })?;
    let m = &report.model;
    println!(
        "Imported {} tensors ({:.2} M parameters; stem {}, dims {:?}, depths {:?}, d_state {}) from {}",
        report.note.tensors,
        report.note.parameters as f64 / 1e6,
        m.stem_channels,
        m.dims,
        m.depths,
        m.d_state,
        report.note.checkpoint.display()
    );
    println!("Plan: {}", report.plan.describe());
    println!(
        "Wrote the run to {} (where it came from: {}); predict with\n  segmenter predict --model {} --input SCANS --output PREDICTIONS",
        args.out.display(),
        IMPORT_NOTE,
        args.out.display()
    );
    Ok(())
}
