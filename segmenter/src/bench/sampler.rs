//! `segmenter bench sampler`: can the data pipeline keep up with training?
//!
//! For each preset, on one dataset, in one process: (a) augmented training samples drawn per second by
//! the sampler (`Sampler::batch`, or `Sampler3d::batch` for a 3D preset, patches in parallel on rayon workers, every augmentation at its
//! training probability) and (b) samples consumed per second by one training step (`train_step` on
//! `Autodiff<Flex>`: forward, deep-supervision loss, backward, AdamW update) at the preset's patch size
//! and batch size. The ratio (a)/(b) above 1 means the sampler is not the bottleneck; since training
//! draws batches on the same cores, the margin is what the sampler costs the step.
//! Each side runs one warm-up, then repeats until `seconds` have passed (at least once); a warm-up
//! longer than `seconds` is itself the measurement.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use burn::backend::{Autodiff, Flex};
use burn::optim::AdamWConfig;
use serde_json::json;

use super::ThreadsAndFormat;
use segmenter::config::ExperimentConfig;
use segmenter::plan::{Configuration, Plan};
use segmenter::preprocess::{labelled_cases, load_cases};
use segmenter::train::fit::{batches_for, train_step, Batches};
use segmenter::train::network::Trainable;
use segmenter::train::sampler::{prepare_volume, TrainVolume};

type B = Autodiff<Flex>;

/// Options of `segmenter bench sampler`.
#[derive(Clone, Debug, clap::Args)]
pub struct SamplerBenchOptions {
    /// Dataset folder with dataset.json.
    #[arg(long, default_value = "sample-data/hippocampus")]
    pub data: PathBuf,
    /// Presets to measure (also tiny3d and swin-umamba-3d, the volumetric ones).
    #[arg(long, value_delimiter = ',', default_values_t = ["tiny", "swin-umamba"].map(String::from))]
    pub presets: Vec<String>,
    /// Seconds per measurement, after one warm-up (each side runs at least once; a warm-up
    /// longer than this is the measurement).
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Samples per batch (default: the preset's train.batch_size). On CPU one swin-umamba step
    /// at its batch of 32 takes minutes; `--batch-size 2` gives a number in seconds.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Worker threads and output format.
    #[command(flatten)]
    pub output: ThreadsAndFormat,
}

/// One preset's measurement.
#[derive(Clone, Debug)]
pub struct SamplerBenchResult {
    /// Preset name.
    pub preset: String,
    /// Patch of the plan: `[rows, cols]`, or `[depth, rows, cols]` for a 3D preset.
    pub patch_size: Vec<usize>,
    /// Samples per batch.
    pub batch_size: usize,
    /// Augmented samples per second drawn by the sampler.
    pub sampler_samples_per_s: f64,
    /// Timed sampler batches.
    pub sampler_batches: usize,
    /// Samples per second consumed by training steps.
    pub train_samples_per_s: f64,
    /// Timed training steps.
    pub train_steps: usize,
}

impl SamplerBenchResult {
    /// Sampler throughput over training throughput.
    pub fn ratio(&self) -> f64 {
        self.sampler_samples_per_s / self.train_samples_per_s
    }
}

/// Runs `work(i)` once to warm up, then for i = 0, 1, … until `seconds` have passed (at least once);
/// returns (timed runs, elapsed). A warm-up that alone took `seconds` or more is the measurement
/// (one run): the swin-umamba step on CPU takes minutes, and its first-run overhead is small next to it.
fn time_repeatedly(seconds: f64, mut work: impl FnMut(u64)) -> (usize, Duration) {
    let warm_up = Instant::now();
    work(u64::MAX);
    let warm_up = warm_up.elapsed();
    if warm_up.as_secs_f64() >= seconds.max(f64::MIN_POSITIVE) {
        return (1, warm_up);
    }
    let started = Instant::now();
    let mut runs = 0;
    while runs < 1 || started.elapsed().as_secs_f64() < seconds {
        work(runs as u64);
        runs += 1;
    }
    (runs, started.elapsed())
}

/// Measures one preset on already-loaded cases.
fn bench_preset(
    preset: &str,
    dataset: &segmenter_io::Dataset,
    cases: &[segmenter_io::LoadedCase],
    opts: &SamplerBenchOptions,
) -> Result<SamplerBenchResult> {
    let config = ExperimentConfig::preset(preset)?;
    let mut plan = Plan::from_dataset(dataset, cases, config.train.max_patch_side);
    plan.configuration = if config.model.is_3d() {
        Configuration::Volumetric
    } else {
        Configuration::Planar
    };
    let volumes: Vec<TrainVolume> = cases
        .iter()
        .cloned()
        .map(|c| prepare_volume(&plan, c))
        .collect::<Result<_>>()?;
    let planned_batch = match (&plan.volumetric, plan.is_3d()) {
        (Some(v), true) => v.batch_size,
        _ => config.train.batch_size,
    };
    let batch_size = match (opts.batch_size, config.train.batch_size) {
        (Some(b), _) => b,
        (None, 0) => planned_batch,
        (None, b) => b,
    };
    let sampler = batches_for(&plan, &config.train, &volumes, 42)?;
    let (sampler_batches, sampler_time) = time_repeatedly(opts.seconds, |step| {
        std::hint::black_box(sampler.batch(step, batch_size));
    });
    let device = Default::default();
    let (channels, classes) = (plan.input_channels(), plan.num_classes());
    let (train_steps, train_time) = if plan.is_3d() {
        let strides = plan.volumetric()?.strides;
        let model = config.model.init_3d(channels, classes, strides, &device);
        time_training(
            model,
            &config,
            &sampler,
            batch_size,
            channels,
            classes,
            opts.seconds,
        )
    } else {
        let model = config.model.init(channels, classes, &device);
        time_training(
            model,
            &config,
            &sampler,
            batch_size,
            channels,
            classes,
            opts.seconds,
        )
    };
    let per_s = |runs: usize, t: Duration| (runs * batch_size) as f64 / t.as_secs_f64();
    Ok(SamplerBenchResult {
        preset: preset.to_string(),
        patch_size: sampler.dims(batch_size, channels)[2..].to_vec(),
        batch_size,
        sampler_samples_per_s: per_s(sampler_batches, sampler_time),
        sampler_batches,
        train_samples_per_s: per_s(train_steps, train_time),
        train_steps,
    })
}

/// Times training steps (`train_step`, AdamW) of `model` on batches drawn beforehand, so that
/// the step's time does not include the sampler's.
fn time_training<M: Trainable<B>>(
    model: M,
    config: &ExperimentConfig,
    sampler: &Batches,
    batch_size: usize,
    channels: usize,
    classes: usize,
    seconds: f64,
) -> (usize, Duration) {
    let device = Default::default();
    let mut model = Some(model);
    let mut optimizer = AdamWConfig::new()
        .with_weight_decay(config.train.weight_decay as f32)
        .init::<B, M>();
    let batches: Vec<_> = (0..4)
        .map(|s| sampler.batch(1000 + s, batch_size))
        .collect();
    let dims = sampler.dims(batch_size, channels);
    time_repeatedly(seconds, |step| {
        let batch = &batches[(step % 4) as usize];
        let (next, _loss) = train_step(
            model
                .take()
                .expect("the model is put back after every step"),
            &mut optimizer,
            batch.images.clone(),
            &batch.labels,
            &dims,
            classes,
            segmenter::train::fit::Step {
                learning_rate: config.train.learning_rate,
                freeze_encoder: false,
            },
            &segmenter::train::parallel::Replicas::single(&device),
        );
        model = Some(next);
    })
}

/// Runs `segmenter bench sampler` and prints a table (or JSON lines).
pub fn run_sampler_bench(opts: &SamplerBenchOptions) -> Result<()> {
    ensure!(
        opts.seconds.is_finite() && opts.seconds >= 0.0,
        "--seconds must be a non-negative number"
    );
    ensure!(
        opts.batch_size != Some(0),
        "--batch-size must be at least 1"
    );
    ensure!(
        !opts.presets.is_empty(),
        "--presets must name at least one preset"
    );
    super::with_threads(opts.output.threads, || bench_all(opts))
}

fn bench_all(opts: &SamplerBenchOptions) -> Result<()> {
    let dataset = segmenter_io::load_dataset(&opts.data)?;
    let labelled = labelled_cases(&dataset, "sample from")?;
    let cases = load_cases(&labelled, &dataset.labels)?;
    let threads = rayon::current_num_threads();
    if !opts.output.json {
        println!(
            "sampler vs training step on {} ({} cases); each side: 1 warm-up, then >= {} s",
            opts.data.display(),
            cases.len(),
            opts.seconds
        );
        println!(
            "machine: {}, {} worker threads; training step on Autodiff<Flex> (CPU)",
            super::cpu_model(),
            threads
        );
        println!();
        println!(
            "{:<12} {:>9} {:>6} {:>17} {:>15} {:>14}",
            "preset", "patch", "batch", "sampler samples/s", "train samples/s", "sampler/train"
        );
    }
    for preset in &opts.presets {
        let r = bench_preset(preset, &dataset, &cases, opts)
            .with_context(|| format!("preset '{preset}'"))?;
        if opts.output.json {
            println!(
                "{}",
                json!({
                    "bench": "sampler",
                    "data": opts.data.display().to_string(),
                    "preset": r.preset,
                    "patch_size": r.patch_size,
                    "batch_size": r.batch_size,
                    "threads": threads,
                    "sampler_samples_per_s": r.sampler_samples_per_s,
                    "sampler_batches": r.sampler_batches,
                    "train_samples_per_s": r.train_samples_per_s,
                    "train_steps": r.train_steps,
                    "ratio": r.ratio(),
                })
            );
        } else {
            println!(
                "{:<12} {:>9} {:>6} {:>17.1} {:>15.2} {:>13.1}x",
                r.preset,
                r.patch_size
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("x"),
                r.batch_size,
                r.sampler_samples_per_s,
                r.train_samples_per_s,
                r.ratio()
            );
        }
    }
    Ok(())
}
