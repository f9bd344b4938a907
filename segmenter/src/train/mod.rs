//! Training: slice-wise Dice + cross-entropy with deep supervision, AdamW or SGD with warm-up and
//! decay, validation on whole held-out volumes, best and last weights in the run folder.
//!
//! [`split`] picks the cases, [`sampler`] and [`augment`] draw the batches, [`loss`] and
//! [`schedule`] define the objective and the learning rate, [`fit`] runs the loop (on one model
//! or several replicas, [`parallel`]), and [`curve`] draws the run's learning curve.

pub mod augment;
pub mod augment3d;
pub mod curve;
pub mod fit;
pub mod loss;
pub mod network;
pub mod parallel;
pub mod sampler;
pub mod sampler3d;
pub mod schedule;
pub mod split;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamWConfig, Optimizer, SgdConfig};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use segmenter_io::{load_dataset, LoadedCase};

use crate::config::{ExperimentConfig, OptimizerKind};
use crate::model::weights::PretrainedEncoder;
use crate::model::{ModelBackend, SwinUMamba, SwinUMamba3d};
use crate::plan::{Configuration, Plan};
use crate::preprocess::{load_cases, network_case, NetworkCase};
use crate::run::{RunDir, RunInfo, TrainState};
use fit::{fit, FaultInjection, Prepared};
use network::Trainable;
use sampler::prepare_volume;
use split::{five_folds, split_cases, Split, FOLDS};

/// The experiment configs a run may train with: one for the 2D network, one for the 3D network,
/// or both when the plan is to choose (`--configuration auto` without a preset).
#[derive(Clone, Debug)]
pub struct Experiments {
    /// The config of a 2D run, if one may be trained.
    pub planar: Option<ExperimentConfig>,
    /// The config of a 3D run, if one may be trained.
    pub volumetric: Option<ExperimentConfig>,
}

impl Experiments {
    /// One config, for the configuration its model's `spatial_dims` names.
    pub fn only(config: ExperimentConfig) -> Self {
        if config.model.is_3d() {
            Self {
                planar: None,
                volumetric: Some(config),
            }
        } else {
            Self {
                planar: Some(config),
                volumetric: None,
            }
        }
    }

    /// The configuration to train and its config: the plan's choice when both are possible,
    /// else the one there is.
    fn choose(&self, plan: &Plan) -> Result<(Configuration, ExperimentConfig)> {
        let pick = match (&self.planar, &self.volumetric) {
            (Some(p), Some(v)) => match plan.configuration {
                Configuration::Volumetric => (Configuration::Volumetric, v.clone()),
                Configuration::Planar => (Configuration::Planar, p.clone()),
            },
            (Some(p), None) => (Configuration::Planar, p.clone()),
            (None, Some(v)) => (Configuration::Volumetric, v.clone()),
            (None, None) => bail!("no experiment config to train"),
        };
        if pick.0 == Configuration::Volumetric {
            plan.volumetric()?;
        }
        Ok(pick)
    }
}

/// Options of `segmenter train` beyond the experiment config.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Dataset folder (Decathlon or nnU-Net v2 layout).
    pub data: PathBuf,
    /// Run folder to create.
    pub out: PathBuf,
    /// Stop after this much wall time (the schedule decays to fit it).
    pub time_budget: Option<Duration>,
    /// Fraction of cases held out for validation.
    pub val_fraction: f64,
    /// Seed for the split, initialisation and sampling.
    pub seed: u64,
    /// Cross-validation fold (0..5) instead of a random `val_fraction` hold-out.
    pub fold: Option<usize>,
    /// A plan written by `segmenter plan`, used instead of planning from the training cases.
    pub plan: Option<PathBuf>,
    /// A VMamba ImageNet checkpoint to start the encoder from.
    pub pretrained: Option<PathBuf>,
    /// Deliberate faults, to check that training survives them (none in normal use).
    pub faults: FaultInjection,
}

/// Loads the split's cases, plans (unless a plan is given) and brings every case into the
/// network's frame: training volumes for the sampler, validation cases for the loop.
fn prepare(
    run: RunDir,
    plan: Option<Plan>,
    info: &RunInfo,
    split: &Split,
    experiments: &Experiments,
) -> Result<(Prepared, ExperimentConfig)> {
    let dataset = load_dataset(&info.data)?;
    let wanted: Vec<_> = dataset
        .cases
        .iter()
        .filter(|c| split.train.contains(&c.id) || split.val.contains(&c.id))
        .cloned()
        .collect();
    if wanted.len() != split.train.len() + split.val.len() {
        bail!(
            "{}: some cases of the run's splits.json are no longer in the dataset",
            info.data.display()
        );
    }
    eprintln!(
        "Loading {} cases from {} …",
        wanted.len(),
        info.data.display()
    );
    let loaded = load_cases(&wanted, &dataset.labels)?;
    let (train_cases, val_cases): (Vec<LoadedCase>, Vec<LoadedCase>) = loaded
        .into_iter()
        .partition(|c| split.train.contains(&c.id));
    let mut plan = match plan {
        Some(plan) => {
            if plan.channel_names != dataset.channel_names || plan.labels != dataset.labels {
                bail!(
                    "the plan's channels {:?} and labels {:?} do not match the dataset's {:?} and {:?}",
                    plan.channel_names, plan.labels, dataset.channel_names, dataset.labels
                );
            }
            plan
        }
        None => {
            let any = experiments
                .planar
                .as_ref()
                .or(experiments.volumetric.as_ref())
                .context("no experiment config to train")?;
            Plan::from_dataset(&dataset, &train_cases, any.train.max_patch_side)
        }
    };
    let (configuration, mut config) = experiments.choose(&plan)?;
    // From here on the run's plan names the network it trained, which predict follows.
    plan.configuration = configuration;
    config.model.spatial_dims = if configuration == Configuration::Volumetric {
        3
    } else {
        2
    };
    if let (Configuration::Volumetric, Some(v), 0) =
        (configuration, &plan.volumetric, config.train.batch_size)
    {
        // The plan sizes the 3D batch to its voxel budget, as nnU-Net's does, rounded up so that
        // every replica gets as many patches; the run's config.toml records the number.
        let replicas = config.train.replicas.max(1);
        config.train.batch_size = v.batch_size.max(1).div_ceil(replicas) * replicas;
    }
    if plan.volumetric.is_none() && config.model.context_slices > 0 {
        // Single images have no neighbours: the context would repeat the image itself.
        eprintln!(
            "note: the cases are single images; model.context_slices {} -> 0",
            config.model.context_slices
        );
        config.model.context_slices = 0;
    }
    config.validate()?;
    // The config says how much context the network sees; the plan carries it to inference.
    plan.context_slices = config.model.context_slices;
    run.write_plan(&plan)?;
    run.write_config(&config)?;
    eprintln!("Plan: {}", plan.describe());
    eprintln!(
        "Split: {} training cases, {} validation cases ({})",
        train_cases.len(),
        val_cases.len(),
        match info.fold {
            Some(k) => format!("fold {k} of {FOLDS}"),
            None => format!("seed {}", info.seed),
        }
    );
    let volumes = train_cases
        .into_iter()
        .map(|c| prepare_volume(&plan, c))
        .collect::<Result<_>>()?;
    let val_volumes = val_cases
        .into_iter()
        .map(|c| network_case(&plan, &c))
        .collect::<Vec<NetworkCase>>();
    Ok((
        Prepared {
            run,
            plan,
            volumes,
            val_volumes,
            faults: FaultInjection::default(),
        },
        config,
    ))
}

/// Trains a model as configured and writes the run folder; returns the best validation Dice.
pub fn train<B>(
    experiments: &Experiments,
    options: &TrainOptions,
    device: &B::Device,
) -> Result<Option<f64>>
where
    B: AutodiffBackend + ModelBackend,
    B::InnerBackend: ModelBackend,
{
    let dataset = load_dataset(&options.data)?;
    let ids: Vec<String> = dataset
        .cases
        .iter()
        .filter(|c| c.label.is_some())
        .map(|c| c.id.clone())
        .collect();
    if ids.len() < 2 {
        bail!(
            "{}: need at least 2 labelled cases to train, found {}",
            options.data.display(),
            ids.len()
        );
    }
    let (split, folds) = match options.fold {
        Some(k) => {
            let folds = five_folds(&options.data, &ids)?;
            let split = folds.get(k).cloned().with_context(|| {
                format!(
                    "--fold {k}: the dataset has {} folds (0..{})",
                    folds.len(),
                    folds.len()
                )
            })?;
            (split, Some(folds))
        }
        None => (split_cases(&ids, options.val_fraction, options.seed)?, None),
    };
    // Read and checked against the network before anything is written, so that a bad file
    // leaves no half-made run folder behind.
    let pretrained = match &options.pretrained {
        Some(path) => {
            let config = experiments.planar.as_ref().with_context(|| {
                format!(
                    "--pretrained {}: ImageNet VMamba weights are 2D; they start a 2D network only (--configuration 2d)",
                    path.display()
                )
            })?;
            let encoder = PretrainedEncoder::read(path)?;
            encoder.load_into(config.model.init::<B>(1, 2, device))?;
            Some(encoder)
        }
        None => None,
    };
    let run = RunDir::create(&options.out)?;
    if let Some(folds) = &folds {
        run.write_json("folds.json", folds)?;
    }
    let data = std::fs::canonicalize(&options.data).unwrap_or_else(|_| options.data.clone());
    let info = RunInfo {
        data,
        seed: options.seed,
        val_fraction: options.val_fraction,
        time_budget_s: options.time_budget.map(|d| d.as_secs_f64()),
        fold: options.fold,
        pretrained: options
            .pretrained
            .as_ref()
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())),
    };
    run.write_json("run.json", &info)?;
    run.write_json("splits.json", &split)?;
    let plan = options.plan.as_deref().map(Plan::read).transpose()?;
    let (mut prepared, config) = prepare(run, plan, &info, &split, experiments)?;
    prepared.faults = options.faults;
    B::seed(device, options.seed);
    let state = TrainState {
        epochs_done: 0,
        step: 0,
        elapsed_s: 0.0,
        best_dice: None,
    };
    let (channels, classes) = (prepared.plan.input_channels(), prepared.plan.num_classes());
    if prepared.plan.is_3d() {
        let strides = prepared.plan.volumetric()?.strides;
        let model: SwinUMamba3d<B> = config.model.init_3d(channels, classes, strides, device);
        return fit_with_optimizer(&config, &info, prepared, model, state, None, device);
    }
    let config = &config;
    let mut model: SwinUMamba<B> = config.model.init(channels, classes, device);
    if let (Some(encoder), Some(path)) = (&pretrained, &options.pretrained) {
        let (loaded, report) = encoder.load_into(model)?;
        model = loaded;
        eprintln!(
            "Pretrained encoder from {}: {} tensors loaded, {} skipped ({})",
            path.display(),
            report.loaded,
            report.skipped.len(),
            skipped_summary(&report.skipped)
        );
    }
    fit_with_optimizer(config, &info, prepared, model, state, None, device)
}

/// A short description of skipped checkpoint keys: their distinct first parts.
fn skipped_summary(keys: &[String]) -> String {
    let groups: std::collections::BTreeSet<&str> = keys
        .iter()
        .map(|k| k.split('.').next().unwrap_or(k))
        .collect();
    groups
        .iter()
        .map(|g| format!("{g}.*"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Continues a run from its last checkpoint (`segmenter train --resume RUN_DIR`).
pub fn resume<B>(run_dir: &Path, device: &B::Device) -> Result<Option<f64>>
where
    B: AutodiffBackend + ModelBackend,
    B::InnerBackend: ModelBackend,
{
    let run = RunDir::open_for_resume(run_dir)?;
    let info: RunInfo = run.read_json("run.json")?;
    let split: Split = run.read_json("splits.json")?;
    let config = run.config()?;
    let plan = run.plan()?;
    let (state, model_bytes, optim_bytes) = run.load_checkpoint()?;
    eprintln!(
        "Resuming {} at epoch {}, step {} ({:.1} min trained)",
        run_dir.display(),
        state.epochs_done + 1,
        state.step,
        state.elapsed_s / 60.0
    );
    let (prepared, config) = prepare(run, Some(plan), &info, &split, &Experiments::only(config))?;
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::new();
    let (channels, classes) = (prepared.plan.input_channels(), prepared.plan.num_classes());
    let record_error = "checkpoint model does not match the run's config";
    if prepared.plan.is_3d() {
        let strides = prepared.plan.volumetric()?.strides;
        let model: SwinUMamba3d<B> = config.model.init_3d(channels, classes, strides, device);
        let model = model.load_record(recorder.load(model_bytes, device).context(record_error)?);
        return fit_with_optimizer(
            &config,
            &info,
            prepared,
            model,
            state,
            Some(optim_bytes),
            device,
        );
    }
    let model: SwinUMamba<B> = config.model.init(channels, classes, device);
    let model = model.load_record(recorder.load(model_bytes, device).context(record_error)?);
    fit_with_optimizer(
        &config,
        &info,
        prepared,
        model,
        state,
        Some(optim_bytes),
        device,
    )
}

/// Builds the configured optimiser (restoring its state from a checkpoint if given) and trains.
fn fit_with_optimizer<B, M>(
    config: &ExperimentConfig,
    info: &RunInfo,
    prepared: Prepared,
    model: M,
    state: TrainState,
    checkpoint: Option<Vec<u8>>,
    device: &B::Device,
) -> Result<Option<f64>>
where
    B: AutodiffBackend + ModelBackend,
    B::InnerBackend: ModelBackend,
    M: Trainable<B>,
{
    let t = &config.train;
    // burn clips each parameter's gradient to this norm (not the global norm).
    let clip = Some(burn::grad_clipping::GradientClippingConfig::Norm(
        t.grad_clip_norm as f32,
    ));
    match t.optimizer {
        OptimizerKind::AdamW => {
            let optimizer = AdamWConfig::new()
                .with_weight_decay(t.weight_decay as f32)
                .with_grad_clipping(clip)
                .init::<B, M>();
            let optimizer = restore(optimizer, checkpoint, device)?;
            fit(config, info, prepared, model, optimizer, state, device)
        }
        OptimizerKind::Sgd => {
            let momentum = MomentumConfig {
                momentum: t.momentum,
                dampening: 0.0,
                nesterov: true,
            };
            let optimizer = SgdConfig::new()
                .with_momentum(Some(momentum))
                .with_weight_decay(Some(WeightDecayConfig {
                    penalty: t.weight_decay as f32,
                }))
                .with_gradient_clipping(clip)
                .init::<B, M>();
            let optimizer = restore(optimizer, checkpoint, device)?;
            fit(config, info, prepared, model, optimizer, state, device)
        }
    }
}

/// The optimiser with its state from a checkpoint, when resuming.
fn restore<B, M, O>(optimizer: O, checkpoint: Option<Vec<u8>>, device: &B::Device) -> Result<O>
where
    B: AutodiffBackend,
    M: burn::module::AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    let Some(bytes) = checkpoint else {
        return Ok(optimizer);
    };
    let record = NamedMpkBytesRecorder::<FullPrecisionSettings>::new()
        .load(bytes, device)
        .context("checkpoint optimiser state is unreadable (or from another optimiser)")?;
    Ok(optimizer.load_record(record))
}
