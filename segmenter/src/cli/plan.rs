//! `segmenter plan`: fingerprint a dataset and write the plan `train` would use.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use segmenter::config::{ExperimentConfig, PRESETS};
use segmenter::plan::{Configuration, Plan};
use segmenter::preprocess::{labelled_cases, load_cases};

// The flags of `segmenter plan`.
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Dataset folder with dataset.json (Decathlon or nnU-Net v2 layout).
    #[arg(long)]
    pub data: PathBuf,
    /// Where to write the plan (JSON).
    #[arg(long)]
    pub out: PathBuf,
    /// Preset whose patch-size cap applies.
    #[arg(long, default_value = "tiny", value_parser = clap::builder::PossibleValuesParser::new(PRESETS))]
    pub preset: String,
}

/// Fingerprints the labelled cases, writes the plan and says what it holds.
pub fn run(args: PlanArgs) -> Result<()> {
    let PlanArgs { data, out, preset } = args;
    let experiment = ExperimentConfig::preset(&preset)?;
    let dataset = segmenter_io::load_dataset(&data)?;
    let labelled = labelled_cases(&dataset, "plan from")?;
    eprintln!(
        "Fingerprinting {} cases of {} …",
        labelled.len(),
        data.display()
    );
    let cases = load_cases(&labelled, &dataset.labels)?;
    let plan = Plan::from_dataset(&dataset, &cases, experiment.train.max_patch_side);
    plan.write(&out)?;
    println!("Plan: {}", plan.describe());
    // Both configurations are in the plan; `train --configuration auto` takes the recommended one.
    for configuration in [Configuration::Planar, Configuration::Volumetric] {
        if configuration == Configuration::Volumetric && plan.volumetric.is_none() {
            println!("3d: none (the cases are single images)");
            continue;
        }
        let view = Plan {
            configuration,
            ..plan.clone()
        };
        let mark = if configuration == plan.configuration {
            " (recommended)"
        } else {
            ""
        };
        println!("{}{mark}: {}", configuration.name(), view.describe());
    }
    if let Some(f) = &plan.fingerprint {
        println!(
            "Fingerprint: {} cases, median spacing {:?} mm, median shape {:?}",
            f.cases, f.median_spacing_mm, f.median_shape
        );
    }
    println!("Written to {}", out.display());
    Ok(())
}
