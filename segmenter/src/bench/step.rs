//! `segmenter bench step`: what the fused scan buys in a whole network. Times forward and
//! backward of a preset's network on a batch of patches (Dice + CE loss against random labels:
//! a training step without the optimizer update, which does not involve the scan) with the fused
//! op, then with the straightforward tensor-op loop of `vision_ssm::scan::tensor_reference`,
//! in the same run, and prints the ratio. With `--replicas N`, also times the loss of training
//! (deep supervision) and its gradients on one replica and on N data-parallel replicas sharing
//! the cores ([`segmenter::train::parallel`]), in the same run, and prints the speed-up.

use anyhow::Result;
use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::tensor::{Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use vision_ssm::ScanKernel;

use segmenter::config::ExperimentConfig;
use segmenter::model::{check_strides, SwinUMamba, SwinUMamba3d};
use segmenter::plan::strides_for;
use segmenter::train::loss::{dice_ce_loss, dice_ce_loss_flat, one_hot, one_hot_3d};
use segmenter::train::parallel::{loss_and_grads, Replicas};

type Ad = Autodiff<Flex>;

/// Options of `segmenter bench step`.
#[derive(Clone, Debug, clap::Args)]
pub struct StepBenchOptions {
    /// Preset whose network is timed.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Patches per batch [default: the preset's batch size].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Side of the square patches (of the cubic ones for a 3D preset).
    #[arg(long, default_value_t = 64)]
    pub patch: usize,
    /// A 3D preset's patch `depth,rows,cols` instead of a cube of `--patch`; the strides are
    /// what the plan would give an isotropic dataset.
    #[arg(long, value_delimiter = ',')]
    pub patch_3d: Option<Vec<usize>>,
    /// Timed steps per implementation (the median is reported), after one warm-up.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Also time the straightforward tensor-op scan (slow).
    #[arg(long)]
    pub reference: bool,
    /// Also time N data-parallel replicas sharing the cores against one replica.
    #[arg(long)]
    pub replicas: Option<usize>,
    /// Also time the no-grad forward pass (inference) of the same batch.
    #[arg(long)]
    pub forward: bool,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs the benchmark.
pub fn run_step_bench(options: &StepBenchOptions) -> Result<()> {
    let config = ExperimentConfig::preset(&options.preset)?;
    if config.model.is_3d() {
        return run_step_bench_3d(options, &config);
    }
    let batch = options.batch.unwrap_or(config.train.batch_size);
    let side = options.patch;
    anyhow::ensure!(
        side >= segmenter::model::DOWNSAMPLING
            && side.is_multiple_of(segmenter::model::DOWNSAMPLING),
        "--patch must be a multiple of {}",
        segmenter::model::DOWNSAMPLING
    );
    let classes = 3;
    let device = Default::default();
    let model = config.model.init::<Ad>(1, classes, &device);
    let mut rng = StdRng::seed_from_u64(7);
    let x: Vec<f32> = (0..batch * side * side)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let labels: Vec<u8> = (0..batch * side * side)
        .map(|_| rng.random_range(0..3u8))
        .collect();
    let x_host = x.clone();
    let x = Tensor::<Ad, 4>::from_data(TensorData::new(x, [batch, 1, side, side]), &device);
    let target = one_hot::<Ad>(&labels, [batch, side, side], classes, 1, &device);
    let step = |model: &SwinUMamba<Ad>| {
        let loss = dice_ce_loss(model.logits(x.clone()), target.clone());
        let grads = loss.backward();
        drop(grads);
    };
    let mut results = vec![("fused", super::median_ms(options.runs, || step(&model)))];
    let forward_ms = options.forward.then(|| {
        let inference = model.valid();
        let x = Tensor::<Flex, 4>::from_data(
            TensorData::new(x_host.clone(), [batch, 1, side, side]),
            &device,
        );
        super::median_ms(options.runs, || {
            drop(inference.logits(x.clone()).into_data())
        })
    });
    if options.reference {
        // The same weights (drawn by the runs above) with the tensor-op loop in every VSS block.
        let reference = model.clone().with_scan_kernel(ScanKernel::TensorOps);
        let ms = super::median_ms(options.runs, || step(&reference));
        results.push(("tensor-ops-loop", ms));
    }
    let fused = results[0].1;
    for (imp, ms) in &results {
        if options.json {
            println!(
                "{}",
                json!({"bench": "step", "preset": options.preset, "impl": imp, "batch": batch,
                       "patch": side, "ms_median": ms, "runs": options.runs,
                       "threads": rayon::current_num_threads(), "speedup_of_fused": ms / fused})
            );
        }
    }
    if let Some(ms) = forward_ms {
        if options.json {
            println!(
                "{}",
                json!({"bench": "forward", "preset": options.preset, "batch": batch,
                       "patch": side, "ms_median": ms, "runs": options.runs,
                       "threads": rayon::current_num_threads()})
            );
        } else {
            println!("No-grad forward (full-resolution logits), batch {batch} of {side}x{side}: {ms:.1} ms");
        }
    }
    if let Some(n) = options.replicas {
        anyhow::ensure!(
            (2..=batch).contains(&n),
            "--replicas must be between 2 and the batch size ({batch})"
        );
        let one = Replicas::<Ad>::single(&device);
        let many = Replicas::<Ad>::new(&device, n)?;
        let dims = [batch, 1, side, side];
        let time = |r: &Replicas<Ad>| {
            super::median_ms(options.runs, || {
                drop(loss_and_grads(
                    &model,
                    r,
                    x_host.clone(),
                    &labels,
                    &dims,
                    classes,
                ));
            })
        };
        let (ms_one, ms_many) = (time(&one), time(&many));
        if options.json {
            for (replicas, ms, threads) in [
                (1, ms_one, one.threads_each()),
                (n, ms_many, many.threads_each()),
            ] {
                println!(
                    "{}",
                    json!({"bench": "step-replicas", "preset": options.preset, "replicas": replicas,
                           "threads_each": threads, "batch": batch, "patch": side, "ms_median": ms,
                           "runs": options.runs, "speedup_vs_one": ms_one / ms})
                );
            }
        } else {
            println!(
                "Deep-supervision loss and gradients, batch {batch}: 1 replica ({} threads) {ms_one:.1} ms, \
                 {n} replicas ({} threads each) {ms_many:.1} ms: {:.2}x",
                one.threads_each(),
                many.threads_each(),
                ms_one / ms_many
            );
        }
    }
    if !options.json {
        println!(
            "Forward+backward of the `{}` network (Dice + CE loss), batch {batch} of {side}x{side}, median of {} after a warm-up, {} threads, {}",
            options.preset,
            options.runs.max(1),
            rayon::current_num_threads(),
            super::cpu_model()
        );
        for (imp, ms) in &results {
            println!(
                "  {imp:<16} {ms:>10.1} ms   {:>6.2}x the fused op's time",
                ms / fused
            );
        }
        if !options.reference {
            println!("  (--reference also times the tensor-op loop; slow)");
        }
    }
    Ok(())
}

/// `bench step` for a 3D preset: forward and backward (Dice + CE on the full-resolution head),
/// optionally the no-grad forward and data-parallel replicas, on one 3D batch.
fn run_step_bench_3d(options: &StepBenchOptions, config: &ExperimentConfig) -> Result<()> {
    // A 3D preset's batch is the plan's (0); two patches is the plan's smallest.
    let batch = options
        .batch
        .unwrap_or(config.train.batch_size)
        .max(if options.batch.is_some() { 1 } else { 2 });
    let patch: [usize; 3] = match options.patch_3d.as_deref() {
        Some(&[d, r, c]) => [d, r, c],
        Some(other) => anyhow::bail!("--patch-3d takes depth,rows,cols; got {other:?}"),
        None => [options.patch; 3],
    };
    let strides = strides_for(patch, [1.0; 3]);
    check_strides(&strides, patch).map_err(anyhow::Error::msg)?;
    let classes = 3;
    let device = Default::default();
    let model = config.model.init_3d::<Ad>(1, classes, strides, &device);
    let voxels: usize = patch.iter().product();
    let mut rng = StdRng::seed_from_u64(7);
    let x_host: Vec<f32> = (0..batch * voxels)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let labels: Vec<u8> = (0..batch * voxels)
        .map(|_| rng.random_range(0..3u8))
        .collect();
    let dims = [batch, 1, patch[0], patch[1], patch[2]];
    let x = Tensor::<Ad, 5>::from_data(TensorData::new(x_host.clone(), dims), &device);
    let target = one_hot_3d::<Ad>(
        &labels,
        [batch, patch[0], patch[1], patch[2]],
        classes,
        [1, 1, 1],
        &device,
    );
    let step = |model: &SwinUMamba3d<Ad>| {
        let logits = model.logits(x.clone()).reshape([batch, classes, voxels]);
        drop(dice_ce_loss_flat(logits, target.clone()).backward());
    };
    let mut results = vec![("fused", super::median_ms(options.runs, || step(&model)))];
    if options.reference {
        let reference = model.clone().with_scan_kernel(ScanKernel::TensorOps);
        results.push((
            "tensor-ops-loop",
            super::median_ms(options.runs, || step(&reference)),
        ));
    }
    let forward_ms = options.forward.then(|| {
        let inference = model.valid();
        let x = Tensor::<Flex, 5>::from_data(TensorData::new(x_host.clone(), dims), &device);
        super::median_ms(options.runs, || {
            drop(inference.logits(x.clone()).into_data())
        })
    });
    let replicas_ms = match options.replicas {
        Some(n) => {
            anyhow::ensure!(
                (2..=batch).contains(&n),
                "--replicas must be between 2 and the batch size ({batch})"
            );
            let (one, many) = (
                Replicas::<Ad>::single(&device),
                Replicas::<Ad>::new(&device, n)?,
            );
            let time = |r: &Replicas<Ad>| {
                super::median_ms(options.runs, || {
                    drop(loss_and_grads(
                        &model,
                        r,
                        x_host.clone(),
                        &labels,
                        &dims,
                        classes,
                    ));
                })
            };
            Some((n, time(&one), time(&many)))
        }
        None => None,
    };
    let shape = format!("{}x{}x{}", patch[0], patch[1], patch[2]);
    let fused = results[0].1;
    let threads = rayon::current_num_threads();
    if options.json {
        for (imp, ms) in &results {
            println!(
                "{}",
                json!({"bench": "step", "preset": options.preset, "impl": imp, "batch": batch,
                       "patch": patch, "strides": strides, "ms_median": ms, "runs": options.runs,
                       "threads": threads, "speedup_of_fused": ms / fused})
            );
        }
        if let Some(ms) = forward_ms {
            println!(
                "{}",
                json!({"bench": "forward", "preset": options.preset, "batch": batch,
                       "patch": patch, "ms_median": ms, "runs": options.runs, "threads": threads})
            );
        }
        if let Some((n, one, many)) = replicas_ms {
            println!(
                "{}",
                json!({"bench": "step-replicas", "preset": options.preset, "replicas": n,
                       "batch": batch, "patch": patch, "ms_one": one, "ms_many": many,
                       "runs": options.runs, "speedup_vs_one": one / many})
            );
        }
        return Ok(());
    }
    println!(
        "Forward+backward of the `{}` network (Dice + CE loss), batch {batch} of {shape} (strides {strides:?}), median of {} after a warm-up, {threads} threads, {}",
        options.preset,
        options.runs.max(1),
        super::cpu_model()
    );
    for (imp, ms) in &results {
        println!(
            "  {imp:<16} {ms:>10.1} ms   {:>6.2}x the fused op's time",
            ms / fused
        );
    }
    if let Some(ms) = forward_ms {
        println!("No-grad forward (full-resolution logits), batch {batch} of {shape}: {ms:.1} ms");
    }
    if let Some((n, one, many)) = replicas_ms {
        println!(
            "Deep-supervision loss and gradients, batch {batch}: 1 replica {one:.1} ms, {n} replicas {many:.1} ms: {:.2}x",
            one / many
        );
    }
    Ok(())
}
