//! Training: slice-wise Dice + cross-entropy with deep supervision, AdamW with warm-up and
//! polynomial decay, validation on whole held-out volumes, best and last weights in the run folder.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};

use anyhow::{bail, Context, Result};
use burn::module::AutodiffModule;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamWConfig, Optimizer, SgdConfig};
use burn::prelude::*;
use burn::tensor::activation;
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use segmenter_io::{load_case, load_dataset, LoadedCase};
use serde::{Deserialize, Serialize};

use crate::config::{ExperimentConfig, OptimizerKind, ScheduleKind};
use crate::data::{Augmentation, Sampler, TrainVolume};
use crate::evaluate::dice_per_class;
use crate::infer::{predict_volume, WindowSettings};
use crate::model::{ModelBackend, SwinUMamba};
use crate::parallel::{loss_and_grads, Replicas};
use crate::plan::{NetworkCase, Plan, SliceGeometry};
use crate::run::RunDir;

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
}

/// Number of cross-validation folds of `--fold`.
pub const FOLDS: usize = 5;

/// The five folds of a dataset: the dataset's own `splits_final.json` (nnU-Net's file) when it has
/// one, else a shuffle of the case ids (fixed seed, so every run of a dataset agrees) dealt into 5.
pub fn five_folds(dataset_dir: &std::path::Path, ids: &[String]) -> Result<Vec<Split>> {
    let own = dataset_dir.join("splits_final.json");
    if own.exists() {
        let text = std::fs::read_to_string(&own)
            .with_context(|| format!("{}: cannot read", own.display()))?;
        let folds: Vec<Split> = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: expected a list of {{\"train\": [...], \"val\": [...]}}",
                own.display()
            )
        })?;
        for fold in &folds {
            if let Some(unknown) = fold
                .train
                .iter()
                .chain(&fold.val)
                .find(|id| !ids.contains(id))
            {
                bail!("{}: case '{unknown}' is not in the dataset", own.display());
            }
        }
        return Ok(folds);
    }
    let mut shuffled = ids.to_vec();
    shuffled.sort();
    shuffled.shuffle(&mut rand::rngs::SmallRng::seed_from_u64(12345));
    Ok((0..FOLDS)
        .map(|k| {
            let mut val: Vec<String> = shuffled
                .iter()
                .enumerate()
                .filter(|(i, _)| i % FOLDS == k)
                .map(|(_, id)| id.clone())
                .collect();
            let mut train: Vec<String> = shuffled
                .iter()
                .enumerate()
                .filter(|(i, _)| i % FOLDS != k)
                .map(|(_, id)| id.clone())
                .collect();
            val.sort();
            train.sort();
            Split { train, val }
        })
        .collect())
}

/// Train/validation split written to `splits.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Split {
    /// Case ids used for training.
    pub train: Vec<String>,
    /// Case ids held out for validation.
    pub val: Vec<String>,
}

/// One line of `log.jsonl`.
#[derive(Debug, Serialize)]
struct EpochLog {
    epoch: usize,
    step: usize,
    elapsed_s: f64,
    learning_rate: f64,
    /// Mean loss of the epoch's finite steps; null when none ran.
    train_loss: Option<f64>,
    skipped_steps: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    val_dice: Option<Vec<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    val_mean_foreground_dice: Option<f64>,
}

/// Loads and checks every case of a dataset in parallel, naming the case that fails.
pub fn load_cases(
    cases: &[segmenter_io::Case],
    labels: &std::collections::BTreeMap<u8, String>,
) -> Result<Vec<LoadedCase>> {
    cases
        .par_iter()
        .map(|case| load_case(case, labels).with_context(|| format!("case '{}'", case.id)))
        .collect()
}

/// Splits case ids into train and validation, reproducibly from the seed.
pub fn split_cases(ids: &[String], val_fraction: f64, seed: u64) -> Result<Split> {
    if !(0.0..1.0).contains(&val_fraction) {
        bail!("--val-fraction must be within [0, 1), got {val_fraction}");
    }
    let mut shuffled = ids.to_vec();
    shuffled.shuffle(&mut rand::rngs::SmallRng::seed_from_u64(seed));
    let n_val =
        ((ids.len() as f64 * val_fraction).round() as usize).min(ids.len().saturating_sub(1));
    let (val, train) = shuffled.split_at(n_val);
    let (mut train, mut val) = (train.to_vec(), val.to_vec());
    train.sort();
    val.sort();
    Ok(Split { train, val })
}

/// A case in the network's frame with normalised channels.
fn network_case(plan: &Plan, case: &LoadedCase) -> NetworkCase {
    let mut frame = NetworkCase::for_plan(case, plan);
    plan.normalize(&mut frame.channels);
    frame
}

/// A loaded training case in the network's frame, normalised and indexed for the sampler.
pub fn prepare_volume(plan: &Plan, case: LoadedCase) -> Result<TrainVolume> {
    let frame = network_case(plan, &case);
    let label = frame
        .label
        .with_context(|| format!("case '{}' has no label map", case.id))?;
    Ok(TrainVolume::new(
        case.id,
        frame.channels,
        label,
        SliceGeometry {
            shape: frame.shape,
            slice_axis: plan.slice_axis,
        },
    ))
}

/// Dice + cross-entropy of logits `[B, K, H, W]` against one-hot targets `[B, K, H, W]`.
pub fn dice_ce_loss<B: Backend>(logits: Tensor<B, 4>, one_hot: Tensor<B, 4>) -> Tensor<B, 1> {
    let log_probs = activation::log_softmax(logits, 1);
    let [_, classes, _, _] = log_probs.dims();
    let ce = (log_probs.clone() * one_hot.clone())
        .sum_dim(1)
        .mean()
        .neg();
    let probs = log_probs.exp();
    // Batch Dice per class (nnU-Net's 2D setting), background excluded.
    let sum = |t: Tensor<B, 4>| t.sum_dim(0).sum_dim(2).sum_dim(3).reshape([classes]);
    let intersection = sum(probs.clone() * one_hot.clone());
    let denominator = sum(probs) + sum(one_hot);
    let dice = (intersection * 2.0 + 1e-5) / (denominator + 1e-5);
    let dice_fg = dice.narrow(0, 1, classes - 1).mean();
    ce - dice_fg
}

/// One-hot `[B, K, H/stride, W/stride]` targets from labels `[B, H, W]`, subsampled by `stride`.
pub(crate) fn one_hot<B: Backend>(
    labels: &[u8],
    [batch, rows, cols]: [usize; 3],
    classes: usize,
    stride: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    let (r, c) = (rows / stride, cols / stride);
    let mut values = vec![0.0f32; batch * classes * r * c];
    for b in 0..batch {
        for i in 0..r {
            for j in 0..c {
                let l = labels
                    [(b * rows + i * stride + stride / 2) * cols + j * stride + stride / 2]
                    as usize;
                values[((b * classes + l.min(classes - 1)) * r + i) * c + j] = 1.0;
            }
        }
    }
    Tensor::from_data(TensorData::new(values, [batch, classes, r, c]), device)
}

/// Learning rate at a point of training: linear warm-up, then polynomial (0.9) decay to zero.
pub fn learning_rate(
    peak: f64,
    warmup_steps: usize,
    step: usize,
    progress: f64,
    schedule: ScheduleKind,
) -> f64 {
    if step < warmup_steps {
        return peak * (step + 1) as f64 / warmup_steps as f64;
    }
    let progress = progress.clamp(0.0, 1.0);
    match schedule {
        ScheduleKind::Poly => peak * (1.0 - progress).powf(0.9),
        ScheduleKind::Cosine => peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

/// What a run needs to be resumed, beyond config and plan: written to `run.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunInfo {
    /// Dataset folder (absolute).
    pub data: PathBuf,
    /// Seed of split, initialisation and sampling.
    pub seed: u64,
    /// Fraction held out for validation.
    pub val_fraction: f64,
    /// Wall-time budget in seconds, if any.
    pub time_budget_s: Option<f64>,
    /// Cross-validation fold held out (`--fold`), if the split is one of the five folds.
    #[serde(default)]
    pub fold: Option<usize>,
}

/// Training progress saved with each checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epochs_done: usize,
    /// Optimiser steps taken (the sampler's position: batch `step` depends only on seed and step).
    pub step: usize,
    /// Training wall time so far, in seconds.
    pub elapsed_s: f64,
    /// Best validation mean foreground Dice so far.
    pub best_dice: Option<f64>,
}

struct Prepared {
    run: RunDir,
    plan: Plan,
    volumes: Vec<TrainVolume>,
    val_volumes: Vec<NetworkCase>,
}

fn prepare(
    run: RunDir,
    plan: Option<Plan>,
    info: &RunInfo,
    split: &Split,
    config: &ExperimentConfig,
) -> Result<Prepared> {
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
        None => Plan::from_dataset(&dataset, &train_cases, config.train.max_patch_side),
    };
    // The config says how much context the network sees; the plan carries it to inference.
    plan.context_slices = config.model.context_slices;
    run.write_plan(&plan)?;
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
        .collect();
    Ok(Prepared {
        run,
        plan,
        volumes,
        val_volumes,
    })
}

/// Trains a model as configured and writes the run folder; returns the best validation Dice.
pub fn train<B>(
    config: &ExperimentConfig,
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
    };
    run.write_json("run.json", &info)?;
    run.write_json("splits.json", &split)?;
    run.write_config(config)?;
    let plan = options.plan.as_deref().map(Plan::read).transpose()?;
    let prepared = prepare(run, plan, &info, &split, config)?;
    B::seed(device, options.seed);
    let model: SwinUMamba<B> = config.model.init(
        prepared.plan.input_channels(),
        prepared.plan.num_classes(),
        device,
    );
    let state = TrainState {
        epochs_done: 0,
        step: 0,
        elapsed_s: 0.0,
        best_dice: None,
    };
    fit_with_optimizer(config, &info, prepared, model, state, None, device)
}

/// Continues a run from its last checkpoint (`segmenter train --resume RUN_DIR`).
pub fn resume<B>(run_dir: &std::path::Path, device: &B::Device) -> Result<Option<f64>>
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
    let prepared = prepare(run, Some(plan), &info, &split, &config)?;
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::new();
    let model: SwinUMamba<B> = config.model.init(
        prepared.plan.input_channels(),
        prepared.plan.num_classes(),
        device,
    );
    let model = model.load_record(
        recorder
            .load(model_bytes, device)
            .context("checkpoint model does not match the run's config")?,
    );
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
fn fit_with_optimizer<B>(
    config: &ExperimentConfig,
    info: &RunInfo,
    prepared: Prepared,
    model: SwinUMamba<B>,
    state: TrainState,
    checkpoint: Option<Vec<u8>>,
    device: &B::Device,
) -> Result<Option<f64>>
where
    B: AutodiffBackend + ModelBackend,
    B::InnerBackend: ModelBackend,
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
                .init::<B, SwinUMamba<B>>();
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
                .init::<B, SwinUMamba<B>>();
            let optimizer = restore(optimizer, checkpoint, device)?;
            fit(config, info, prepared, model, optimizer, state, device)
        }
    }
}

fn restore<B, O>(optimizer: O, checkpoint: Option<Vec<u8>>, device: &B::Device) -> Result<O>
where
    B: AutodiffBackend,
    O: Optimizer<SwinUMamba<B>, B>,
{
    let Some(bytes) = checkpoint else {
        return Ok(optimizer);
    };
    let record = NamedMpkBytesRecorder::<FullPrecisionSettings>::new()
        .load(bytes, device)
        .context("checkpoint optimiser state is unreadable (or from another optimiser)")?;
    Ok(optimizer.load_record(record))
}

fn fit<B, O>(
    config: &ExperimentConfig,
    info: &RunInfo,
    prepared: Prepared,
    mut model: SwinUMamba<B>,
    mut optimizer: O,
    mut state: TrainState,
    device: &B::Device,
) -> Result<Option<f64>>
where
    B: AutodiffBackend + ModelBackend,
    B::InnerBackend: ModelBackend,
    O: Optimizer<SwinUMamba<B>, B>,
{
    let Prepared {
        run,
        plan,
        volumes,
        val_volumes,
    } = prepared;
    let t = &config.train;
    let classes = plan.num_classes();
    let started = Instant::now() - Duration::from_secs_f64(state.elapsed_s);
    let sampler = Sampler {
        volumes: &volumes,
        patch_size: plan.patch_size,
        foreground_fraction: t.foreground_fraction,
        augmentation: Augmentation::default().with_elastic(t.elastic_deformation),
        seed: info.seed,
        context_slices: plan.context_slices,
    };
    let total_steps = t.epochs * t.steps_per_epoch;
    let progress_bar = ProgressBar::new(total_steps as u64);
    progress_bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] step {pos}/{len} (eta {eta}) {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    progress_bar.set_position(state.step as u64);
    let [pr, pc] = plan.patch_size;
    let budget = info.time_budget_s.map(Duration::from_secs_f64);
    let mut lr = t.learning_rate;
    let replicas = Replicas::<B>::new(device, t.replicas)?;
    if replicas.len() > 1 {
        say(
            &progress_bar,
            format!(
                "Data-parallel: {} replicas, {} worker threads each",
                replicas.len(),
                replicas.threads_each()
            ),
        );
    }
    // Checked before each step and again at the end of an epoch (see below); says so once.
    let budget_reached = |step: usize| {
        let reached = budget.is_some_and(|b| started.elapsed() >= b);
        if reached {
            say(
                &progress_bar,
                format!("Time budget reached after {step} steps."),
            );
        }
        reached
    };
    let mut ahead: Option<(usize, crate::data::Batch)> = None;
    while state.epochs_done < t.epochs {
        let epoch = state.epochs_done;
        let (mut loss_sum, mut loss_count, mut skipped) = (0.0f64, 0usize, 0usize);
        let mut out_of_time = false;
        while state.step < (epoch + 1) * t.steps_per_epoch {
            if budget_reached(state.step) {
                out_of_time = true;
                break;
            }
            let elapsed = started.elapsed();
            let progress = match budget {
                Some(b) => (state.step as f64 / total_steps as f64)
                    .max(elapsed.as_secs_f64() / b.as_secs_f64()),
                None => state.step as f64 / total_steps as f64,
            };
            lr = learning_rate(
                t.learning_rate,
                t.warmup_steps,
                state.step,
                progress,
                t.schedule,
            );
            // The batch drawn while the previous step ran, if any (batches are a pure function
            // of the step, so drawing ahead changes nothing but the waiting).
            let batch = match ahead.take() {
                Some((step, batch)) if step == state.step => batch,
                _ => sampler.batch(state.step as u64, t.batch_size),
            };
            let mut images = batch.images;
            if std::env::var_os("SEGMENTER_INJECT_NAN_AT_STEP")
                .is_some_and(|v| v.to_str() == Some(&state.step.to_string()))
            {
                // Test hook: a corrupted batch must be skipped without poisoning the weights.
                images[0] = f32::NAN;
            }
            let dims = [batch.batch, plan.input_channels(), pr, pc];
            let next_step = state.step + 1;
            let (next, value, drawn) = std::thread::scope(|scope| {
                // Draw the next batch on the rayon workers while this step trains.
                let drawing = scope.spawn(|| sampler.batch(next_step as u64, t.batch_size));
                let (next, value) = train_step(
                    model,
                    &mut optimizer,
                    images,
                    &batch.labels,
                    dims,
                    classes,
                    lr,
                    &replicas,
                );
                (next, value, drawing.join().ok())
            });
            ahead = drawn.map(|b| (next_step, b));
            model = next;
            state.step += 1;
            progress_bar.inc(1);
            if !value.is_finite() {
                skipped += 1;
                say(
                    &progress_bar,
                    format!(
                        "step {}: loss is {value}; step skipped, weights unchanged",
                        state.step
                    ),
                );
                continue;
            }
            loss_sum += value;
            loss_count += 1;
            progress_bar.set_message(format!(
                "epoch {}/{} loss {:.4}{}",
                epoch + 1,
                t.epochs,
                loss_sum / loss_count as f64,
                state
                    .best_dice
                    .map(|d| format!(" best val Dice {d:.3}"))
                    .unwrap_or_default()
            ));
        }
        let epoch_complete = state.step >= (epoch + 1) * t.steps_per_epoch;
        if epoch_complete && !out_of_time && budget_reached(state.step) {
            // Caught here rather than before the next step, which would log an epoch of no steps
            // and validate the same weights a second time.
            out_of_time = true;
        }
        if out_of_time && loss_count + skipped == 0 && state.step > 0 {
            // Nothing trained since the last checkpoint (a run resumed with its budget spent).
            break;
        }
        let validate_now =
            out_of_time || (epoch + 1).is_multiple_of(t.val_every) || epoch + 1 == t.epochs;
        let val = if validate_now {
            validate(&model, &plan, &val_volumes, device)
        } else {
            None
        };
        if epoch_complete {
            state.epochs_done += 1;
        }
        state.elapsed_s = started.elapsed().as_secs_f64();
        let epoch_log = EpochLog {
            epoch,
            step: state.step,
            elapsed_s: state.elapsed_s,
            learning_rate: lr,
            train_loss: (loss_count > 0).then(|| loss_sum / loss_count as f64),
            skipped_steps: skipped,
            val_mean_foreground_dice: val.as_ref().map(|d| mean_ignoring_nan(&d[1..])),
            val_dice: val,
        };
        finish_epoch(&run, &epoch_log, &mut state, &model, &optimizer)?;
        // The picture is a convenience: failing to draw it must not stop training.
        if let Err(e) = crate::curve::write_learning_curve(run.path(), &plan.foreground_names()) {
            say(&progress_bar, format!("warning: {e:#}"));
        }
        if out_of_time {
            break;
        }
    }
    progress_bar.finish_and_clear();
    eprintln!(
        "Training finished in {:.1} min: {} steps{}. Run folder: {}",
        started.elapsed().as_secs_f64() / 60.0,
        state.step,
        state
            .best_dice
            .map(|d| format!(", best validation mean foreground Dice {d:.4}"))
            .unwrap_or_default(),
        run.path().display()
    );
    Ok(state.best_dice)
}

/// Weights of the deep-supervision outputs (full, 1/2 and 1/4 resolution), as nnU-Net's halving.
const DEEP_SUPERVISION_WEIGHTS: [f64; 3] = [4.0 / 7.0, 2.0 / 7.0, 1.0 / 7.0];

/// One optimiser step on a batch (images `[batch, channels, rows, cols]`, labels `[batch, rows, cols]`):
/// forward, deep-supervision Dice + cross-entropy, backward (split across the replicas), update.
/// Returns the model and the loss; when the loss is not finite the step is skipped and the model
/// comes back unchanged. Public so that `segmenter bench sampler` times exactly what training does.
#[allow(clippy::too_many_arguments)]
pub fn train_step<B, O>(
    model: SwinUMamba<B>,
    optimizer: &mut O,
    images: Vec<f32>,
    labels: &[u8],
    dims: [usize; 4],
    classes: usize,
    learning_rate: f64,
    replicas: &Replicas<B>,
) -> (SwinUMamba<B>, f64)
where
    B: AutodiffBackend + ModelBackend,
    O: Optimizer<SwinUMamba<B>, B>,
{
    let (value, grads) = loss_and_grads(&model, replicas, images, labels, dims, classes);
    if !value.is_finite() {
        return (model, value);
    }
    (optimizer.step(learning_rate, model, grads), value)
}

/// The deep-supervision Dice + cross-entropy loss of a batch on `device`.
pub(crate) fn deep_supervision_loss<B>(
    model: &SwinUMamba<B>,
    images: Vec<f32>,
    labels: &[u8],
    dims: [usize; 4],
    classes: usize,
    device: &B::Device,
) -> Tensor<B, 1>
where
    B: AutodiffBackend + ModelBackend,
{
    let [batch, _, rows, cols] = dims;
    let x = Tensor::<B, 4>::from_data(TensorData::new(images, dims), device);
    let mut loss = None;
    for (scale, (logits, weight)) in model
        .forward(x)
        .into_iter()
        .zip(DEEP_SUPERVISION_WEIGHTS)
        .enumerate()
    {
        let target = one_hot::<B>(labels, [batch, rows, cols], classes, 1 << scale, device);
        let term = dice_ce_loss(logits, target) * weight;
        loss = Some(match loss {
            None => term,
            Some(l) => l + term,
        });
    }
    loss.expect("the network has at least one output")
}

/// Prints a line above the progress bar, or plainly when the bar is hidden (output not a terminal).
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

fn finish_epoch<B, O>(
    run: &RunDir,
    log: &EpochLog,
    state: &mut TrainState,
    model: &SwinUMamba<B>,
    optimizer: &O,
) -> Result<()>
where
    B: AutodiffBackend,
    O: Optimizer<SwinUMamba<B>, B>,
{
    if let (Some(per_class), Some(mean)) = (&log.val_dice, log.val_mean_foreground_dice) {
        let classes: Vec<String> = per_class[1..].iter().map(|d| format!("{d:.4}")).collect();
        eprintln!(
            "epoch {} (step {}, {:.1} min): validation Dice per class [{}], mean foreground {mean:.4}",
            log.epoch + 1,
            log.step,
            log.elapsed_s / 60.0,
            classes.join(", ")
        );
    }
    run.append_log(log)?;
    // model.mpk is always the latest weights (what predict uses, as nnU-Net uses its final
    // checkpoint); model_best.mpk is the best on validation, kept for inspection, because choosing
    // it by validation Dice would make that Dice optimistic.
    let inner = model.valid();
    run.save_model("model", &inner)?;
    if let Some(dice) = log.val_mean_foreground_dice {
        if state.best_dice.is_none_or(|b| dice > b) {
            state.best_dice = Some(dice);
            run.save_model("model_best", &inner)?;
        }
    }
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::new();
    let model_bytes = recorder
        .record(model.clone().into_record(), ())
        .context("cannot serialise the model")?;
    let optim_bytes = recorder
        .record(optimizer.to_record(), ())
        .context("cannot serialise the optimiser")?;
    run.save_checkpoint(state, &model_bytes, &optim_bytes)
}

fn mean_ignoring_nan(values: &[f64]) -> f64 {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        f64::NAN
    } else {
        finite.iter().sum::<f64>() / finite.len() as f64
    }
}

/// Per-class Dice (index = class id) averaged over the validation volumes; `None` without any.
fn validate<B>(
    model: &SwinUMamba<B>,
    plan: &Plan,
    volumes: &[NetworkCase],
    device: &B::Device,
) -> Option<Vec<f64>>
where
    B: AutodiffBackend,
    B::InnerBackend: ModelBackend,
{
    if volumes.is_empty() {
        return None;
    }
    let inner = model.valid();
    let classes = plan.num_classes();
    let per_case: Vec<Vec<f64>> = volumes
        .iter()
        .map(|case| {
            let pred = predict_volume(
                &inner,
                plan,
                &case.channels,
                case.shape,
                &WindowSettings::default(),
                device,
            );
            let reference = case.label.as_deref().unwrap_or(&[]);
            dice_per_class(&pred, reference, classes)
        })
        .collect();
    Some(
        (0..classes)
            .map(|k| mean_ignoring_nan(&per_case.iter().map(|d| d[k]).collect::<Vec<_>>()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn loss_matches_a_hand_computed_value() {
        // One pixel, two classes, logits (0, ln 3): p = (1/4, 3/4); target class 1.
        let device = Default::default();
        let logits = Tensor::<Flex, 4>::from_data(
            TensorData::new(vec![0.0f32, 3f32.ln()], [1, 2, 1, 1]),
            &device,
        );
        let target =
            Tensor::<Flex, 4>::from_data(TensorData::new(vec![0.0f32, 1.0], [1, 2, 1, 1]), &device);
        let loss = dice_ce_loss(logits, target).into_scalar();
        let ce = -(0.75f64).ln();
        let dice = (2.0 * 0.75 + 1e-5) / (0.75 + 1.0 + 1e-5);
        assert!(
            (loss as f64 - (ce - dice)).abs() < 1e-5,
            "{loss} vs {}",
            ce - dice
        );
    }

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert!((learning_rate(1.0, 10, 0, 0.0, ScheduleKind::Poly) - 0.1).abs() < 1e-12);
        assert!((learning_rate(1.0, 10, 9, 0.0, ScheduleKind::Poly) - 1.0).abs() < 1e-12);
        assert!(
            (learning_rate(1.0, 10, 50, 0.5, ScheduleKind::Poly) - 0.5f64.powf(0.9)).abs() < 1e-12
        );
        assert_eq!(learning_rate(1.0, 10, 100, 1.0, ScheduleKind::Poly), 0.0);
        assert!((learning_rate(1.0, 10, 50, 0.5, ScheduleKind::Cosine) - 0.5).abs() < 1e-12);
        assert!(learning_rate(1.0, 10, 100, 1.0, ScheduleKind::Cosine).abs() < 1e-12);
    }

    #[test]
    fn split_is_reproducible_disjoint_and_complete() {
        let ids: Vec<String> = (0..20).map(|i| format!("case{i:02}")).collect();
        let a = split_cases(&ids, 0.2, 1).unwrap();
        assert_eq!((a.train.len(), a.val.len()), (16, 4));
        assert!(a.val.iter().all(|v| !a.train.contains(v)));
        let b = split_cases(&ids, 0.2, 1).unwrap();
        assert_eq!(a.val, b.val);
        assert_ne!(split_cases(&ids, 0.2, 2).unwrap().val, a.val);
        assert!(split_cases(&ids, 1.0, 1).is_err());
    }

    #[test]
    fn five_folds_partition_the_cases() {
        let ids: Vec<String> = (0..23).map(|i| format!("case{i:02}")).collect();
        let dir = tempfile::tempdir().unwrap();
        let folds = five_folds(dir.path(), &ids).unwrap();
        assert_eq!(folds.len(), 5);
        let mut all_val: Vec<String> = folds.iter().flat_map(|f| f.val.clone()).collect();
        all_val.sort();
        assert_eq!(all_val, ids, "every case is validated exactly once");
        for f in &folds {
            assert_eq!(f.train.len() + f.val.len(), 23);
            assert!(f.val.iter().all(|v| !f.train.contains(v)));
        }
        // The dataset's own file wins.
        let own = serde_json::json!([{"train": ["case00"], "val": ["case01"]}]);
        std::fs::write(dir.path().join("splits_final.json"), own.to_string()).unwrap();
        assert_eq!(
            five_folds(dir.path(), &ids).unwrap()[0].val,
            vec!["case01".to_string()]
        );
    }
}
