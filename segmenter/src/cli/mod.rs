//! The command line: a thin dispatcher over one file per verb, each holding its flags and the
//! library calls it makes.

mod backend;
mod bench;
mod curve;
mod evaluate;
mod export;
mod import;
mod plan;
mod predict;
mod train;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

/// Segment organs and tissues in medical scans with a Swin-UMamba-style network.
///
/// Typical use: `segmenter train` on a Decathlon or nnU-Net v2 dataset folder, `segmenter predict`
/// on new scans, `segmenter evaluate` against reference label maps.
#[derive(Parser, Debug)]
#[command(name = "segmenter", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Compute device: `cpu` (burn's Flex backend) or `cuda` (needs a build with `--features cuda`).
    #[arg(long, global = true, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
}

// Compute devices `--device` accepts.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a model on a dataset folder and write a run folder.
    Train(train::TrainArgs),
    /// Fingerprint a dataset and write the plan `train` would use (print it in plain words).
    Plan(plan::PlanArgs),
    /// Predict label maps for a scan or a folder of scans.
    Predict(predict::PredictArgs),
    /// Compare predicted label maps with references: Dice, IoU, HD95, NSD and volumes per case and
    /// class, in summary.json, summary.csv and an HTML report with box plots and overlays.
    Evaluate(evaluate::EvaluateArgs),
    /// Write a run's weights under upstream Swin-UMamba's PyTorch names (.pth or .safetensors),
    /// for `load_state_dict(strict=True)` into its `SwinUMamba`.
    Export(export::ExportArgs),
    /// Turn a network trained elsewhere into a run folder for predict and evaluate.
    Import {
        #[command(subcommand)]
        what: import::ImportKind,
    },
    /// Draw a run's learning curve (training loss, validation Dice) from its log.jsonl into
    /// RUN/learning_curve.svg; `train` does this after every epoch.
    Curve(curve::CurveArgs),
    /// Benchmarks that print what they compare, the ratio and the machine.
    Bench {
        #[command(subcommand)]
        what: bench::BenchKind,
    },
}

/// Parses the command line, runs the verb, and prints an error chain on failure.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let done = |r: Result<()>| r.map(|()| ExitCode::SUCCESS);
    match cli.command {
        Command::Train(args) => done(train::run(cli.device, args)),
        Command::Plan(args) => done(plan::run(args)),
        Command::Predict(args) => predict::run(cli.device, args),
        Command::Evaluate(args) => done(evaluate::run(args)),
        Command::Curve(args) => done(curve::run(args)),
        Command::Export(args) => done(export::run(args)),
        Command::Import { what } => done(import::run(what)),
        Command::Bench { what } => bench::run(what),
    }
}
