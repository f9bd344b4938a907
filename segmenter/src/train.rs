//! Training: slice-wise Dice + cross-entropy with deep supervision, AdamW with warm-up and
//! polynomial decay, validation on whole held-out volumes, best and last weights in the run folder.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::activation;
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use segmenter_io::{load_case, load_dataset, LoadedCase};
use serde::{Deserialize, Serialize};
use vision_ssm::ScanBackend;

use crate::config::ExperimentConfig;
use crate::data::{Augmentation, Sampler, TrainVolume};
use crate::evaluate::dice_per_class;
use crate::infer::{predict_volume, WindowSettings};
use crate::model::SwinUMamba;
use crate::plan::{Plan, SliceGeometry};
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
    train_loss: f64,
    skipped_steps: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    val_dice: Option<Vec<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    val_mean_foreground_dice: Option<f64>,
}

/// Loads and checks every case of a dataset in parallel, naming the case that fails.
pub fn load_cases(cases: &[segmenter_io::Case], labels: &std::collections::BTreeMap<u8, String>) -> Result<Vec<LoadedCase>> {
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
    let n_val = ((ids.len() as f64 * val_fraction).round() as usize).min(ids.len().saturating_sub(1));
    let (val, train) = shuffled.split_at(n_val);
    let (mut train, mut val) = (train.to_vec(), val.to_vec());
    train.sort();
    val.sort();
    Ok(Split { train, val })
}

fn prepare_volume(plan: &Plan, case: LoadedCase) -> Result<TrainVolume> {
    let mut channels: Vec<Vec<f32>> = case.channels.into_iter().map(|v| v.data).collect();
    plan.normalize(&mut channels);
    let label = case.label.with_context(|| format!("case '{}' has no label map", case.id))?;
    Ok(TrainVolume::new(case.id, channels, label, SliceGeometry { shape: case.shape, slice_axis: plan.slice_axis }))
}

/// Dice + cross-entropy of logits `[B, K, H, W]` against one-hot targets `[B, K, H, W]`.
pub fn dice_ce_loss<B: Backend>(logits: Tensor<B, 4>, one_hot: Tensor<B, 4>) -> Tensor<B, 1> {
    let log_probs = activation::log_softmax(logits, 1);
    let [_, classes, _, _] = log_probs.dims();
    let ce = (log_probs.clone() * one_hot.clone()).sum_dim(1).mean().neg();
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
fn one_hot<B: Backend>(labels: &[u8], [batch, rows, cols]: [usize; 3], classes: usize, stride: usize, device: &B::Device) -> Tensor<B, 4> {
    let (r, c) = (rows / stride, cols / stride);
    let mut values = vec![0.0f32; batch * classes * r * c];
    for b in 0..batch {
        for i in 0..r {
            for j in 0..c {
                let l = labels[(b * rows + i * stride + stride / 2) * cols + j * stride + stride / 2] as usize;
                values[((b * classes + l.min(classes - 1)) * r + i) * c + j] = 1.0;
            }
        }
    }
    Tensor::from_data(TensorData::new(values, [batch, classes, r, c]), device)
}

/// Learning rate at a point of training: linear warm-up, then polynomial (0.9) decay to zero.
pub fn learning_rate(peak: f64, warmup_steps: usize, step: usize, progress: f64) -> f64 {
    if step < warmup_steps {
        return peak * (step + 1) as f64 / warmup_steps as f64;
    }
    peak * (1.0 - progress.clamp(0.0, 1.0)).powf(0.9)
}

/// Trains a model as configured and writes the run folder; returns the best validation Dice.
pub fn train<B>(config: &ExperimentConfig, options: &TrainOptions, device: &B::Device) -> Result<Option<f64>>
where
    B: AutodiffBackend + ScanBackend,
    B::InnerBackend: ScanBackend,
{
    let started = Instant::now();
    let dataset = load_dataset(&options.data)?;
    let labelled: Vec<_> = dataset.cases.iter().filter(|c| c.label.is_some()).cloned().collect();
    if labelled.len() < 2 {
        bail!("{}: need at least 2 labelled cases to train, found {}", options.data.display(), labelled.len());
    }
    let run = RunDir::create(&options.out)?;
    let ids: Vec<String> = labelled.iter().map(|c| c.id.clone()).collect();
    let split = split_cases(&ids, options.val_fraction, options.seed)?;
    run.write_json("splits.json", &split)?;
    eprintln!("Loading {} cases from {} …", labelled.len(), options.data.display());
    let loaded = load_cases(&labelled, &dataset.labels)?;
    let (train_cases, val_cases): (Vec<LoadedCase>, Vec<LoadedCase>) = loaded.into_iter().partition(|c| split.train.contains(&c.id));
    let plan = Plan::from_dataset(&dataset, &train_cases, config.train.max_patch_side);
    eprintln!("Plan: {}", plan.describe());
    eprintln!("Split: {} training cases, {} validation cases (seed {})", train_cases.len(), val_cases.len(), options.seed);
    run.write_plan(&plan)?;
    run.write_config(config)?;

    let volumes: Vec<TrainVolume> = train_cases.into_iter().map(|c| prepare_volume(&plan, c)).collect::<Result<_>>()?;
    let val_volumes: Vec<(LoadedCase, Vec<Vec<f32>>)> = val_cases
        .into_iter()
        .map(|c| {
            let mut ch: Vec<Vec<f32>> = c.channels.iter().map(|v| v.data.clone()).collect();
            plan.normalize(&mut ch);
            (c, ch)
        })
        .collect();

    B::seed(device, options.seed);
    let classes = plan.num_classes();
    let mut model: SwinUMamba<B> = config.model.init(plan.channel_names.len(), classes, device);
    let t = &config.train;
    let mut optimizer = AdamWConfig::new()
        .with_weight_decay(t.weight_decay as f32)
        .with_grad_clipping(Some(burn::grad_clipping::GradientClippingConfig::Norm(t.grad_clip_norm as f32)))
        .init::<B, SwinUMamba<B>>();
    let sampler = Sampler {
        volumes: &volumes,
        patch_size: plan.patch_size,
        foreground_fraction: t.foreground_fraction,
        augmentation: Augmentation::default(),
        seed: options.seed,
    };

    let total_steps = t.epochs * t.steps_per_epoch;
    let progress_bar = ProgressBar::new(total_steps as u64);
    progress_bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] step {pos}/{len} (eta {eta}) {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let [pr, pc] = plan.patch_size;
    let ds_weights = [4.0 / 7.0, 2.0 / 7.0, 1.0 / 7.0];
    let mut best: Option<f64> = None;
    let mut step = 0usize;
    let budget = options.time_budget;
    'epochs: for epoch in 0..t.epochs {
        let (mut loss_sum, mut loss_count, mut skipped) = (0.0f64, 0usize, 0usize);
        let mut lr = t.learning_rate;
        for _ in 0..t.steps_per_epoch {
            let elapsed = started.elapsed();
            if budget.is_some_and(|b| elapsed >= b) {
                progress_bar.println(format!("Time budget reached after {step} steps."));
                let val = validate(&model, &plan, &val_volumes, device);
                finish_epoch(&run, epoch, step, started, lr, loss_sum, loss_count, skipped, val, &mut best, &model)?;
                break 'epochs;
            }
            let progress = match budget {
                Some(b) => (step as f64 / total_steps as f64).max(elapsed.as_secs_f64() / b.as_secs_f64()),
                None => step as f64 / total_steps as f64,
            };
            lr = learning_rate(t.learning_rate, t.warmup_steps, step, progress);
            let batch = sampler.batch(step as u64, t.batch_size);
            let x = Tensor::<B, 4>::from_data(TensorData::new(batch.images, [batch.batch, plan.channel_names.len(), pr, pc]), device);
            let outputs = model.forward(x);
            let mut loss = None;
            for (scale, (logits, weight)) in outputs.into_iter().zip(ds_weights).enumerate() {
                let target = one_hot::<B>(&batch.labels, [batch.batch, pr, pc], classes, 1 << scale, device);
                let term = dice_ce_loss(logits, target) * weight;
                loss = Some(match loss {
                    None => term,
                    Some(l) => l + term,
                });
            }
            let loss = loss.expect("at least one output");
            let value = loss.clone().into_scalar().elem::<f64>();
            step += 1;
            progress_bar.inc(1);
            if !value.is_finite() {
                skipped += 1;
                progress_bar.println(format!("step {step}: loss is {value}; step skipped"));
                continue;
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(lr, model, grads);
            loss_sum += value;
            loss_count += 1;
            progress_bar.set_message(format!(
                "epoch {}/{} loss {:.4}{}",
                epoch + 1,
                t.epochs,
                loss_sum / loss_count as f64,
                best.map(|d| format!(" best val Dice {d:.3}")).unwrap_or_default()
            ));
        }
        let last = epoch + 1 == t.epochs;
        let val = ((epoch + 1) % t.val_every == 0 || last).then(|| validate(&model, &plan, &val_volumes, device)).flatten();
        finish_epoch(&run, epoch, step, started, lr, loss_sum, loss_count, skipped, val, &mut best, &model)?;
    }
    progress_bar.finish_and_clear();
    eprintln!(
        "Training finished in {:.1} min: {} steps{}. Run folder: {}",
        started.elapsed().as_secs_f64() / 60.0,
        step,
        best.map(|d| format!(", best validation mean foreground Dice {d:.4}")).unwrap_or_default(),
        run.path().display()
    );
    Ok(best)
}

#[allow(clippy::too_many_arguments)]
fn finish_epoch<B: AutodiffBackend>(
    run: &RunDir,
    epoch: usize,
    step: usize,
    started: Instant,
    lr: f64,
    loss_sum: f64,
    loss_count: usize,
    skipped: usize,
    val: Option<Vec<f64>>,
    best: &mut Option<f64>,
    model: &SwinUMamba<B>,
) -> Result<()> {
    let mean_fg = val.as_ref().map(|d| mean_ignoring_nan(&d[1..]));
    if let (Some(per_class), Some(mean)) = (&val, mean_fg) {
        let classes: Vec<String> = per_class[1..].iter().map(|d| format!("{d:.4}")).collect();
        eprintln!(
            "epoch {} (step {step}, {:.1} min): validation Dice per class [{}], mean foreground {mean:.4}",
            epoch + 1,
            started.elapsed().as_secs_f64() / 60.0,
            classes.join(", ")
        );
    }
    run.append_log(&EpochLog {
        epoch,
        step,
        elapsed_s: started.elapsed().as_secs_f64(),
        learning_rate: lr,
        train_loss: loss_sum / loss_count.max(1) as f64,
        skipped_steps: skipped,
        val_dice: val.clone(),
        val_mean_foreground_dice: mean_fg,
    })?;
    // model.mpk is always the latest weights (what predict uses, as nnU-Net uses its final
    // checkpoint); model_best.mpk is the best on validation, kept for inspection, because choosing
    // it by validation Dice would make that Dice optimistic.
    let inner = model.valid();
    run.save_model("model", &inner)?;
    if let Some(dice) = mean_fg {
        if best.is_none_or(|b| dice > b) {
            *best = Some(dice);
            run.save_model("model_best", &inner)?;
        }
    }
    Ok(())
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
fn validate<B>(model: &SwinUMamba<B>, plan: &Plan, volumes: &[(LoadedCase, Vec<Vec<f32>>)], device: &B::Device) -> Option<Vec<f64>>
where
    B: AutodiffBackend,
    B::InnerBackend: ScanBackend,
{
    if volumes.is_empty() {
        return None;
    }
    let inner = model.valid();
    let classes = plan.num_classes();
    let per_case: Vec<Vec<f64>> = volumes
        .iter()
        .map(|(case, channels)| {
            let pred = predict_volume(&inner, plan, channels, case.shape, &WindowSettings::default(), device);
            let reference = case.label.as_deref().unwrap_or(&[]);
            dice_per_class(&pred, reference, classes)
        })
        .collect();
    Some((0..classes).map(|k| mean_ignoring_nan(&per_case.iter().map(|d| d[k]).collect::<Vec<_>>())).collect())
}

/// Where a path points, for messages.
pub fn display(path: &Path) -> String {
    path.display().to_string()
}
