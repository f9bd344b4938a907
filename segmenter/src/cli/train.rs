//! `segmenter train`: build the experiment config from the preset, the config file and the
//! flags, then train (or resume) on the chosen device.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use segmenter::config::{ExperimentConfig, BUDGET_EPOCHS, PRESETS};
use segmenter::model::EncoderKind;
use segmenter::plan::Configuration;
use segmenter::train::fit::FaultInjection;
use segmenter::train::{Experiments, TrainOptions};

use super::{backend, DeviceKind};

// The flags of `segmenter train` (its help text is the doc comment of `Command::Train`).
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Dataset folder with dataset.json (Decathlon or nnU-Net v2 layout).
    #[arg(long, required_unless_present = "resume")]
    pub data: Option<PathBuf>,
    /// Run folder to create (weights, config, plan, splits, log, checkpoint).
    #[arg(long, required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder from its last checkpoint (other options are ignored:
    /// the run's own config, plan, split and time budget apply).
    #[arg(long, conflicts_with_all = ["data", "out", "config", "epochs", "steps_per_epoch", "time_budget_min", "encoder", "context_slices", "fold", "plan", "pretrained", "freeze_encoder_epochs", "configuration", "preset"])]
    pub resume: Option<PathBuf>,
    /// Network: 2d (slices), 3d (volumetric patches), or auto. With --device cuda, auto is the
    /// plan's choice (3d for stacks of at least 16 slices that are not anisotropic, else 2d); on
    /// the CPU it is 2d, the faster to train here (see the README). A preset fixes it.
    #[arg(long, value_enum, default_value_t = ConfigurationChoice::Auto)]
    pub configuration: ConfigurationChoice,
    /// Built-in preset: tiny (CPU, minutes), swin-umamba (the paper's encoder, GPU), tiny3d or
    /// swin-umamba-3d (their volumetric versions). Default: tiny, or tiny3d for a 3D run.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(PRESETS))]
    pub preset: Option<String>,
    /// TOML file overriding fields of the preset (see configs/).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Number of epochs (overrides the config).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Optimiser steps per epoch (overrides the config).
    #[arg(long)]
    pub steps_per_epoch: Option<usize>,
    /// Train for this many minutes; the learning-rate schedule decays to fit. Without --epochs (or
    /// epochs in the config file) the budget alone sets the length.
    #[arg(long)]
    pub time_budget_min: Option<f64>,
    /// Fraction of cases held out for validation.
    #[arg(long, default_value_t = 0.2)]
    pub val_fraction: f64,
    /// Cross-validation fold 0..4 of a 5-fold split (the dataset's splits_final.json if it has
    /// one); replaces --val-fraction. All folds are written to the run's folds.json.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..5), conflicts_with = "val_fraction")]
    pub fold: Option<u64>,
    /// Seed of the split, initialisation and sampling.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Plan written by `segmenter plan` (default: plan from the training cases).
    #[arg(long)]
    pub plan: Option<PathBuf>,
    /// Encoder blocks: vss (Swin-UMamba) or conv (residual convolutions, for ablations).
    #[arg(long, value_enum)]
    pub encoder: Option<EncoderKind>,
    /// Neighbouring slices on each side given to the network with each slice, as extra input
    /// channels (2.5D; overrides the config's model.context_slices; 0: the slice alone)
    #[arg(long)]
    pub context_slices: Option<usize>,
    /// Data-parallel model replicas, the batch split between them (overrides the config):
    /// with `--device cuda` one per GPU (devices 0..N); on the CPU, N replicas share the cores
    #[arg(long)]
    pub replicas: Option<usize>,
    /// VMamba ImageNet checkpoint (`.pth`, v0 or v2 key names, or `.safetensors`) to start the
    /// encoder's VSS stages and patch merging from (you download it yourself; see the README)
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
    /// Epochs at the start with the encoder's VSS stages frozen (overrides the config; default 10
    /// with --pretrained, as upstream Swin-UMamba, else 0)
    #[arg(long)]
    pub freeze_encoder_epochs: Option<usize>,
    /// Test hook: give the batch of this step (0-based) a NaN pixel, to check that a corrupted
    /// batch is skipped without poisoning the weights.
    #[arg(long, hide = true)]
    pub inject_nan_at_step: Option<usize>,
}

/// `--configuration`: a network, or the plan's choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ConfigurationChoice {
    /// The plan's choice with --device cuda; 2d on the CPU.
    Auto,
    /// The 2D network over slices.
    #[value(name = "2d")]
    Planar,
    /// The volumetric network.
    #[value(name = "3d")]
    Volumetric,
}

/// Trains, or resumes with `--resume`.
pub fn run(device: DeviceKind, args: TrainArgs) -> Result<()> {
    if let Some(run_dir) = &args.resume {
        return backend::resume(device, run_dir);
    }
    let (Some(data), Some(out)) = (args.data.clone(), args.out.clone()) else {
        anyhow::bail!("--data and --out are required")
    };
    let experiments = experiments(&args, device)?;
    let options = TrainOptions {
        data,
        out,
        time_budget: args
            .time_budget_min
            .map(|m| Duration::from_secs_f64(m * 60.0)),
        val_fraction: args.val_fraction,
        seed: args.seed,
        fold: args.fold.map(|k| k as usize),
        plan: args.plan,
        pretrained: args.pretrained,
        faults: FaultInjection {
            nan_at_step: args.inject_nan_at_step,
        },
    };
    backend::train(device, &experiments, &options)
}

/// The configs the run may train with: the preset's (its configuration fixed by it), or without a
/// preset `tiny` for 2D and `tiny3d` for 3D, as `--configuration` allows.
fn experiments(args: &TrainArgs, device: DeviceKind) -> Result<Experiments> {
    let wanted = match args.configuration {
        ConfigurationChoice::Auto => None,
        ConfigurationChoice::Planar => Some(Configuration::Planar),
        ConfigurationChoice::Volumetric => Some(Configuration::Volumetric),
    };
    if let Some(preset) = &args.preset {
        let config = experiment(args, preset)?;
        let is = if config.model.is_3d() {
            Configuration::Volumetric
        } else {
            Configuration::Planar
        };
        if let Some(want) = wanted.filter(|w| *w != is) {
            anyhow::bail!(
                "--preset {preset} is a {} network but --configuration is {}; choose a {} preset ({})",
                is.name(),
                want.name(),
                want.name(),
                if want == Configuration::Volumetric { "tiny3d, swin-umamba-3d" } else { "tiny, swin-umamba" }
            );
        }
        return Ok(Experiments::only(config));
    }
    // What only a 2D network has: 2.5D context and ImageNet (2D) VMamba weights.
    let needs_2d = args.context_slices.is_some_and(|k| k > 0) || args.pretrained.is_some();
    if needs_2d && wanted == Some(Configuration::Volumetric) {
        anyhow::bail!(
            "--context-slices and --pretrained are for the 2D network, not --configuration 3d"
        );
    }
    let cpu = matches!(device, DeviceKind::Cpu);
    let planar = (wanted != Some(Configuration::Volumetric))
        .then(|| experiment(args, "tiny"))
        .transpose()?
        .map(|c| with_cpu_replicas(c, args, cpu))
        .transpose()?
        .filter(|c| !c.model.is_3d());
    let volumetric = match wanted {
        Some(Configuration::Volumetric) => Some(experiment(args, "tiny3d")?),
        // auto: on a GPU the plan may choose 3D; on the CPU 2D (2.5D) segments as well as 3D in
        // two hours (hippocampus, README) at a fraction of the step, and far faster on CT.
        None if !needs_2d && !cpu => experiment(args, "tiny3d").ok(),
        _ => None,
    }
    .map(|c| with_cpu_replicas(c, args, cpu))
    .transpose()?
    .filter(|c| c.model.is_3d());
    if planar.is_none() && volumetric.is_none() {
        anyhow::bail!(
            "the config file's model.spatial_dims contradicts --configuration {}",
            wanted.map_or("auto", |w| w.name())
        );
    }
    Ok(Experiments { planar, volumetric })
}

/// On a CPU with two or more cores, two data-parallel replicas unless the flag or the config file
/// says how many: measured 1.7x faster 2D steps on two cores (README, "Scaling out"), and 1.36x
/// more 3D samples a second (hippocampus patch, the plan's batch 3 rounded up to 4).
fn with_cpu_replicas(
    mut config: ExperimentConfig,
    args: &TrainArgs,
    cpu: bool,
) -> Result<ExperimentConfig> {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    // A batch of 0 is the plan's (3D), which training rounds up to a multiple of the replicas.
    if !cpu || cores < 2 || args.replicas.is_some() || config.train.batch_size == 1 {
        return Ok(config);
    }
    if config_file_sets(args, "replicas")? {
        return Ok(config);
    }
    config.train.replicas = 2;
    config.validate()?;
    Ok(config)
}

/// Whether the `--config` file names `[train] key` itself (rather than leaving the preset's).
fn config_file_sets(args: &TrainArgs, key: &str) -> Result<bool> {
    let Some(path) = &args.config else {
        return Ok(false);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let table: toml::Table = text.parse().unwrap_or_default();
    Ok(table
        .get("train")
        .and_then(|t| t.as_table())
        .is_some_and(|t| t.contains_key(key)))
}

/// The preset, overridden by the config file, overridden by the flags.
fn experiment(args: &TrainArgs, preset: &str) -> Result<ExperimentConfig> {
    let mut experiment = ExperimentConfig::preset(preset)?;
    if let Some(path) = &args.config {
        experiment = ExperimentConfig::load_over(&experiment, path)?;
    }
    if let Some(e) = args.epochs {
        experiment.train.epochs = e;
    } else if args.time_budget_min.is_some() && !config_file_sets(args, "epochs")? {
        // The budget alone decides how long the run is, and the schedule decays to fit it.
        experiment.train.epochs = BUDGET_EPOCHS;
    }
    if let Some(s) = args.steps_per_epoch {
        experiment.train.steps_per_epoch = s;
    }
    if let Some(kind) = args.encoder {
        experiment.model.encoder = kind;
    }
    if let Some(k) = args.context_slices {
        experiment.model.context_slices = k;
    }
    if let Some(n) = args.replicas {
        experiment.train.replicas = n;
    }
    if let Some(n) = args.freeze_encoder_epochs {
        experiment.train.freeze_encoder_epochs = Some(n);
    }
    let default_freeze = if args.pretrained.is_some() { 10 } else { 0 };
    let freeze = experiment
        .train
        .freeze_encoder_epochs
        .get_or_insert(default_freeze);
    if *freeze > 0 && experiment.model.encoder != EncoderKind::Vss {
        anyhow::bail!("--freeze-encoder-epochs needs the VSS encoder (--encoder vss)");
    }
    if args.pretrained.is_some() && experiment.model.encoder != EncoderKind::Vss {
        anyhow::bail!(
            "--pretrained loads VMamba weights, which need the VSS encoder (--encoder vss)"
        );
    }
    experiment.validate()?;
    Ok(experiment)
}
