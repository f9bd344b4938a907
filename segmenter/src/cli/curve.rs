//! `segmenter curve`: redraw a run's learning curve from its log.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use segmenter::plan::Plan;
use segmenter::train::curve::write_learning_curve;

// The flags of `segmenter curve`.
#[derive(Args, Debug)]
pub struct CurveArgs {
    /// Run folder written by `segmenter train`.
    #[arg(long)]
    pub run: PathBuf,
}

/// Draws RUN/learning_curve.svg.
pub fn run(args: CurveArgs) -> Result<()> {
    let plan = Plan::read(&args.run.join("plan.json"))?;
    let path = write_learning_curve(&args.run, &plan.foreground_names())?;
    println!("Learning curve: {}", path.display());
    Ok(())
}
