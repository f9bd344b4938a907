//! `segmenter evaluate`: Dice, IoU, HD95, NSD and volumes against reference label maps, in
//! summary.json, summary.csv, a terminal table and an HTML report.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use segmenter::evaluate::{EvalOptions, EvaluateRequest};

// The flags of `segmenter evaluate`.
#[derive(Args, Debug)]
pub struct EvaluateArgs {
    /// Folder of predicted label maps.
    #[arg(long)]
    pub pred: PathBuf,
    /// Folder of reference label maps (same file names).
    #[arg(long = "ref")]
    pub reference: PathBuf,
    /// The dataset's dataset.json, for the label names.
    #[arg(long)]
    pub dataset_json: PathBuf,
    /// Folder for summary.json, summary.csv and report.html (with report_files/).
    #[arg(long)]
    pub out: PathBuf,
    /// Folder of the scans, drawn under the overlay pictures of the report; by default the
    /// `imagesXx` folder next to a reference folder named `labelsXx`, when there is one.
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Tolerance of the normalised surface distance (NSD), in mm.
    #[arg(long, default_value_t = 1.0)]
    pub nsd_tolerance_mm: f64,
    /// Per-class NSD tolerance, `CLASS=MM` (repeatable), e.g. `--nsd-class-tolerance 2=2.5`.
    #[arg(long, value_parser = parse_class_tolerance)]
    pub nsd_class_tolerance: Vec<(u8, f64)>,
}

/// Parses `--nsd-class-tolerance CLASS=MM`.
fn parse_class_tolerance(text: &str) -> Result<(u8, f64), String> {
    let (class, mm) = text
        .split_once('=')
        .ok_or_else(|| format!("'{text}': expected CLASS=MM, e.g. 2=2.5"))?;
    let class = class
        .trim()
        .parse::<u8>()
        .map_err(|_| format!("'{text}': class must be a label id 0..=255"))?;
    let mm = mm
        .trim()
        .parse::<f64>()
        .map_err(|_| format!("'{text}': tolerance must be a number of mm"))?;
    if !(mm.is_finite() && mm >= 0.0) {
        return Err(format!(
            "'{text}': tolerance must be a non-negative number of mm"
        ));
    }
    Ok((class, mm))
}

/// Evaluates, writes the summaries and the report, and prints the table.
pub fn run(args: EvaluateArgs) -> Result<()> {
    let outcome = segmenter::evaluate::run(&EvaluateRequest {
        prediction_dir: args.pred,
        reference_dir: args.reference,
        dataset_json: args.dataset_json,
        out_dir: args.out,
        images: args.images,
        options: EvalOptions {
            default_tolerance_mm: args.nsd_tolerance_mm,
            tolerance_mm: args.nsd_class_tolerance.into_iter().collect(),
        },
    })?;
    println!("{}", outcome.table);
    println!(
        "Report: {} (summary.json, summary.csv beside it)",
        outcome.report.display()
    );
    Ok(())
}
