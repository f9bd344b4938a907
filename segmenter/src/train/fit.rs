//! The training loop: batches drawn one step ahead, optimiser steps on one model or several
//! replicas, a time budget that stretches the schedule, validation, checkpoints and the log.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::network::Trainable;
use super::parallel::{loss_and_grads, Replicas};
use super::sampler::{Augmentation, Batch, Sampler, TrainVolume};
use super::sampler3d::{Augmentation3d, Sampler3d};
use super::schedule::learning_rate;
use crate::config::{ExperimentConfig, TrainConfig};
use crate::evaluate::{dice_per_class, nan_mean};
use crate::model::ModelBackend;
use crate::plan::Plan;
use crate::predict::predict_network_volume;
use crate::predict::window::{VolumeJob, WindowSettings};
use crate::preprocess::NetworkCase;
use crate::run::{RunDir, RunInfo, TrainState};

/// Deliberate faults, to check that training survives them; none by default.
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultInjection {
    /// The batch of this step (0-based) gets a NaN pixel: the step must be skipped without
    /// poisoning the weights (`segmenter train --inject-nan-at-step`, a hidden flag for tests).
    pub nan_at_step: Option<usize>,
}

/// What the loop trains on: the run folder, the plan, the training volumes and the validation
/// cases, all in the network's frame.
pub struct Prepared {
    /// The run folder written to.
    pub run: RunDir,
    /// The run's plan.
    pub plan: Plan,
    /// Training volumes, indexed for the sampler.
    pub volumes: Vec<TrainVolume>,
    /// Validation cases, normalised.
    pub val_volumes: Vec<NetworkCase>,
    /// Faults to inject (tests only).
    pub faults: FaultInjection,
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

/// Where the loop's batches come from: 2D slices (the 2D network) or 3D patches.
pub enum Batches<'a> {
    /// 2D patches of slices, `[batch, channels, rows, cols]`.
    Planar(Sampler<'a>),
    /// 3D patches, `[batch, channels, depth, rows, cols]`.
    Volumetric(Sampler3d<'a>),
}

impl Batches<'_> {
    /// Draws batch number `step` (a pure function of the seed and the step).
    pub fn batch(&self, step: u64, batch_size: usize) -> Batch {
        match self {
            Batches::Planar(s) => s.batch(step, batch_size),
            Batches::Volumetric(s) => s.batch(step, batch_size),
        }
    }

    /// The dimensions of a batch of `batch` patches with `channels` input channels.
    pub fn dims(&self, batch: usize, channels: usize) -> Vec<usize> {
        let mut dims = vec![batch, channels];
        match self {
            Batches::Planar(s) => dims.extend(s.patch_size),
            Batches::Volumetric(s) => dims.extend(s.patch_size),
        }
        dims
    }
}

/// The sampler of a run: 3D patches for a 3D plan, else 2D (or 2.5D) slices.
pub fn batches_for<'a>(
    plan: &Plan,
    train: &TrainConfig,
    volumes: &'a [TrainVolume],
    seed: u64,
) -> anyhow::Result<Batches<'a>> {
    if plan.is_3d() {
        let v = plan.volumetric()?;
        let augmentation = Augmentation3d {
            anisotropic: v.anisotropic,
            ..Augmentation3d::default()
        };
        return Ok(Batches::Volumetric(Sampler3d::new(
            volumes,
            v.patch_size,
            train.foreground_fraction,
            augmentation,
            seed,
        )?));
    }
    Ok(Batches::Planar(Sampler {
        volumes,
        patch_size: plan.patch_size,
        foreground_fraction: train.foreground_fraction,
        augmentation: Augmentation::default().with_elastic(train.elastic_deformation),
        seed,
        context_slices: plan.context_slices,
    }))
}

/// The parts of the loop that stay fixed for a whole run.
struct Loop<'a, B: Backend> {
    train: &'a TrainConfig,
    plan: &'a Plan,
    sampler: Batches<'a>,
    replicas: Replicas<B>,
    bar: ProgressBar,
    started: Instant,
    budget: Option<Duration>,
    total_steps: usize,
    faults: FaultInjection,
}

/// What one epoch's steps did.
struct EpochSteps {
    loss_sum: f64,
    loss_count: usize,
    skipped: usize,
    learning_rate: f64,
    out_of_time: bool,
}

impl<B> Loop<'_, B>
where
    B: AutodiffBackend + ModelBackend,
    B::InnerBackend: ModelBackend,
{
    /// Whether the time budget is spent; says so above the bar when it is.
    fn budget_reached(&self, step: usize) -> bool {
        let reached = self.budget.is_some_and(|b| self.started.elapsed() >= b);
        if reached {
            say(
                &self.bar,
                format!("Time budget reached after {step} steps."),
            );
        }
        reached
    }

    /// The learning rate of `step`: the schedule runs on whichever is further along, steps or
    /// the time budget.
    fn learning_rate(&self, step: usize) -> f64 {
        let progress = match self.budget {
            Some(b) => (step as f64 / self.total_steps as f64)
                .max(self.started.elapsed().as_secs_f64() / b.as_secs_f64()),
            None => step as f64 / self.total_steps as f64,
        };
        let t = self.train;
        learning_rate(
            t.learning_rate,
            t.min_learning_rate,
            t.warmup_steps,
            step,
            progress,
            t.schedule,
        )
    }

    /// Runs the steps of the epoch `state` is in (or what the budget leaves of them); returns the
    /// model after them.
    fn epoch<M: Trainable<B>, O: Optimizer<M, B>>(
        &self,
        mut model: M,
        optimizer: &mut O,
        state: &mut TrainState,
        ahead: &mut Option<(usize, Batch)>,
        mut lr: f64,
    ) -> (M, EpochSteps) {
        let t = self.train;
        let epoch = state.epochs_done;
        let classes = self.plan.num_classes();
        let (mut loss_sum, mut loss_count, mut skipped) = (0.0f64, 0usize, 0usize);
        let mut out_of_time = false;
        let frozen = t.freeze_encoder_epochs.unwrap_or(0);
        if frozen > 0 && (epoch == 0 || epoch == frozen) {
            let what = if epoch < frozen {
                "frozen"
            } else {
                "trainable"
            };
            say(
                &self.bar,
                format!("epoch {}: the encoder's VSS stages are {what}", epoch + 1),
            );
        }
        while state.step < (epoch + 1) * t.steps_per_epoch {
            if self.budget_reached(state.step) {
                out_of_time = true;
                break;
            }
            lr = self.learning_rate(state.step);
            // The batch drawn while the previous step ran, if any (batches are a pure function
            // of the step, so drawing ahead changes nothing but the waiting).
            let batch = match ahead.take() {
                Some((step, batch)) if step == state.step => batch,
                _ => self.sampler.batch(state.step as u64, t.batch_size),
            };
            let mut images = batch.images;
            if self.faults.nan_at_step == Some(state.step) {
                images[0] = f32::NAN;
            }
            let dims = self.sampler.dims(batch.batch, self.plan.input_channels());
            let next_step = state.step + 1;
            let (next, value, drawn) = std::thread::scope(|scope| {
                // Draw the next batch on the rayon workers while this step trains.
                let drawing = scope.spawn(|| self.sampler.batch(next_step as u64, t.batch_size));
                let (next, value) = train_step(
                    model,
                    optimizer,
                    images,
                    &batch.labels,
                    &dims,
                    classes,
                    Step {
                        learning_rate: lr,
                        freeze_encoder: epoch < t.freeze_encoder_epochs.unwrap_or(0),
                    },
                    &self.replicas,
                );
                (next, value, drawing.join().ok())
            });
            *ahead = drawn.map(|b| (next_step, b));
            model = next;
            state.step += 1;
            self.bar.inc(1);
            if !value.is_finite() {
                skipped += 1;
                say(
                    &self.bar,
                    format!(
                        "step {}: loss is {value}; step skipped, weights unchanged",
                        state.step
                    ),
                );
                continue;
            }
            loss_sum += value;
            loss_count += 1;
            self.bar.set_message(format!(
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
        let steps = EpochSteps {
            loss_sum,
            loss_count,
            skipped,
            learning_rate: lr,
            out_of_time,
        };
        (model, steps)
    }
}

/// A progress bar over `total` steps, starting at `position`; a run whose length the time budget
/// alone decides (`length_by`) shows the time against it instead of a step count it will never
/// reach.
fn progress_bar(total: usize, position: usize, length_by: Option<Duration>) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    let template = match length_by {
        Some(b) => format!(
            "{{elapsed_precise}} of {} min: step {{pos}} {{msg}}",
            fmt_minutes(b)
        ),
        _ => "{elapsed_precise} [{bar:30}] step {pos}/{len} (eta {eta}) {msg}".to_string(),
    };
    bar.set_style(
        ProgressStyle::with_template(&template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_position(position as u64);
    bar
}

/// Minutes as the budget flag takes them: `120` or `0.5`.
fn fmt_minutes(d: Duration) -> String {
    let m = d.as_secs_f64() / 60.0;
    if m.fract() == 0.0 {
        format!("{m:.0}")
    } else {
        format!("{m}")
    }
}

/// With a time budget, at least this fraction of it passes between the end of one validation and
/// the next: a budget-length run has many short epochs, and validating every few of them would
/// spend a tenth of the budget on validation.
const VALIDATION_SPACING: f64 = 0.1;

/// Trains `model` from `state` on: epochs of steps, validation, log line, weights and checkpoint
/// after each epoch, until the last epoch or the time budget; returns the best validation Dice.
pub fn fit<B, M, O>(
    config: &ExperimentConfig,
    info: &RunInfo,
    prepared: Prepared,
    mut model: M,
    mut optimizer: O,
    mut state: TrainState,
    device: &B::Device,
) -> Result<Option<f64>>
where
    B: AutodiffBackend + ModelBackend,
    B::InnerBackend: ModelBackend,
    M: Trainable<B>,
    O: Optimizer<M, B>,
{
    let Prepared {
        run,
        plan,
        volumes,
        val_volumes,
        faults,
    } = prepared;
    let started = Instant::now() - Duration::from_secs_f64(state.elapsed_s);
    let t = &config.train;
    let total_steps = t.epochs * t.steps_per_epoch;
    let run_loop = Loop {
        train: t,
        plan: &plan,
        sampler: batches_for(&plan, t, &volumes, info.seed)?,
        replicas: Replicas::<B>::new(device, t.replicas)?,
        bar: progress_bar(
            total_steps,
            state.step,
            info.time_budget_s
                .map(Duration::from_secs_f64)
                .filter(|_| t.epochs >= crate::config::BUDGET_EPOCHS),
        ),
        started,
        budget: info.time_budget_s.map(Duration::from_secs_f64),
        total_steps,
        faults,
    };
    if run_loop.replicas.len() > 1 {
        say(
            &run_loop.bar,
            format!(
                "Data-parallel: {} replicas, {} worker threads each",
                run_loop.replicas.len(),
                run_loop.replicas.threads_each()
            ),
        );
    }
    let mut lr = t.learning_rate;
    let mut ahead: Option<(usize, Batch)> = None;
    let mut last_validation_s = state.elapsed_s;
    // The step whose weights were last validated; a resumed run's checkpoint counts as validated.
    let mut validated_step = (state.step > 0).then_some(state.step);
    while state.epochs_done < t.epochs {
        let epoch = state.epochs_done;
        let (trained, steps) = run_loop.epoch(model, &mut optimizer, &mut state, &mut ahead, lr);
        model = trained;
        lr = steps.learning_rate;
        let mut out_of_time = steps.out_of_time;
        let epoch_complete = state.step >= (epoch + 1) * t.steps_per_epoch;
        if epoch_complete && !out_of_time && run_loop.budget_reached(state.step) {
            // Caught here rather than before the next step, which would log an epoch of no steps
            // and validate the same weights a second time.
            out_of_time = true;
        }
        if out_of_time
            && steps.loss_count + steps.skipped == 0
            && state.step > 0
            && validated_step == Some(state.step)
        {
            // Nothing trained since the last checkpoint, whose weights are validated: a run
            // resumed with its budget spent, or a budget that ran out during the last epoch's
            // validation. Had that epoch skipped its validation, these weights get one below.
            break;
        }
        let spaced = run_loop.budget.is_none_or(|b| {
            run_loop.started.elapsed().as_secs_f64() - last_validation_s
                >= VALIDATION_SPACING * b.as_secs_f64()
        });
        let validate_now = out_of_time
            || ((epoch + 1).is_multiple_of(t.val_every) && spaced)
            || epoch + 1 == t.epochs;
        let val = if validate_now {
            let dice = validate(&model, &plan, &val_volumes, device);
            last_validation_s = run_loop.started.elapsed().as_secs_f64();
            validated_step = Some(state.step);
            dice
        } else {
            None
        };
        if epoch_complete {
            state.epochs_done += 1;
        }
        state.elapsed_s = run_loop.started.elapsed().as_secs_f64();
        let epoch_log = EpochLog {
            epoch,
            step: state.step,
            elapsed_s: state.elapsed_s,
            learning_rate: lr,
            train_loss: (steps.loss_count > 0).then(|| steps.loss_sum / steps.loss_count as f64),
            skipped_steps: steps.skipped,
            val_mean_foreground_dice: val.as_ref().map(|d| nan_mean(&d[1..])),
            val_dice: val,
        };
        finish_epoch(&run, &epoch_log, &mut state, &model, &optimizer)?;
        // The picture is a convenience: failing to draw it must not stop training.
        if let Err(e) = super::curve::write_learning_curve(run.path(), &plan.foreground_names()) {
            say(&run_loop.bar, format!("warning: {e:#}"));
        }
        if out_of_time {
            break;
        }
    }
    run_loop.bar.finish_and_clear();
    eprintln!("{}", finished(run_loop.started, &state, &run));
    Ok(state.best_dice)
}

/// The closing line of a run: time, steps, best validation Dice, where the run folder is.
fn finished(started: Instant, state: &TrainState, run: &RunDir) -> String {
    format!(
        "Training finished in {:.1} min: {} steps{}. Run folder: {}",
        started.elapsed().as_secs_f64() / 60.0,
        state.step,
        state
            .best_dice
            .map(|d| format!(", best validation mean foreground Dice {d:.4}"))
            .unwrap_or_default(),
        run.path().display()
    )
}

/// How one optimiser step updates the weights.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    /// The learning rate of the step.
    pub learning_rate: f64,
    /// Leave the VMamba encoder's stages untouched (the first epochs after `--pretrained`).
    pub freeze_encoder: bool,
}

/// One optimiser step on a batch (images `dims` = `[batch, channels, spatial…]`, labels
/// `[batch, spatial…]`):
/// forward, deep-supervision Dice + cross-entropy, backward (split across the replicas), update.
/// Returns the model and the loss; when the loss is not finite the step is skipped and the model
/// comes back unchanged. Public so that `segmenter bench sampler` times exactly what training does.
#[allow(clippy::too_many_arguments)]
pub fn train_step<B, M, O>(
    model: M,
    optimizer: &mut O,
    images: Vec<f32>,
    labels: &[u8],
    dims: &[usize],
    classes: usize,
    step: Step,
    replicas: &Replicas<B>,
) -> (M, f64)
where
    B: AutodiffBackend + ModelBackend,
    B::InnerBackend: ModelBackend,
    M: Trainable<B>,
    O: Optimizer<M, B>,
{
    let (value, mut grads) = loss_and_grads(&model, replicas, images, labels, dims, classes);
    if !value.is_finite() {
        return (model, value);
    }
    if step.freeze_encoder {
        model.freeze_encoder(&mut grads);
    }
    (optimizer.step(step.learning_rate, model, grads), value)
}

/// Prints a line above the progress bar, or plainly when the bar is hidden (output not a terminal).
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// Logs the epoch, writes the latest (and, when validation improved, the best) weights and the
/// checkpoint.
fn finish_epoch<B, M, O>(
    run: &RunDir,
    log: &EpochLog,
    state: &mut TrainState,
    model: &M,
    optimizer: &O,
) -> Result<()>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
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

/// Per-class Dice (index = class id) averaged over the validation volumes; `None` without any.
fn validate<B, M>(
    model: &M,
    plan: &Plan,
    volumes: &[NetworkCase],
    device: &B::Device,
) -> Option<Vec<f64>>
where
    B: AutodiffBackend + ModelBackend,
    B::InnerBackend: ModelBackend,
    M: Trainable<B>,
{
    if volumes.is_empty() {
        return None;
    }
    let inner = model.inference_network();
    let classes = plan.num_classes();
    let per_case: Vec<Vec<f64>> = volumes
        .iter()
        .map(|case| {
            let job = VolumeJob::labels(&case.channels, case.shape);
            let pred =
                predict_network_volume(&inner, plan, &job, &WindowSettings::default(), device);
            let reference = case.label.as_deref().unwrap_or(&[]);
            dice_per_class(&pred.labels, reference, classes)
        })
        .collect();
    Some(
        (0..classes)
            .map(|k| nan_mean(&per_case.iter().map(|d| d[k]).collect::<Vec<_>>()))
            .collect(),
    )
}
