//! The `segmenter` command line: train, predict, evaluate.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use segmenter::config::{ExperimentConfig, PRESETS};
use segmenter::model::EncoderKind;
use segmenter::predict::{describe, PredictOptions};
use segmenter::train::TrainOptions;

/// Segment organs and tissues in medical scans with a Swin-UMamba-style network.
///
/// Typical use: `segmenter train` on a Decathlon or nnU-Net v2 dataset folder, `segmenter predict`
/// on new scans, `segmenter evaluate` against reference label maps.
#[derive(Parser, Debug)]
#[command(name = "segmenter", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Compute device: `cpu` (burn's Flex backend) or `cuda` (needs a build with `--features cuda`).
    #[arg(long, global = true, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DeviceKind {
    Cpu,
    Cuda,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a model on a dataset folder and write a run folder.
    Train {
        /// Dataset folder with dataset.json (Decathlon or nnU-Net v2 layout).
        #[arg(long, required_unless_present = "resume")]
        data: Option<PathBuf>,
        /// Run folder to create (weights, config, plan, splits, log, checkpoint).
        #[arg(long, required_unless_present = "resume")]
        out: Option<PathBuf>,
        /// Continue the run in this folder from its last checkpoint (other options are ignored:
        /// the run's own config, plan, split and time budget apply).
        #[arg(long, conflicts_with_all = ["data", "out", "config", "epochs", "steps_per_epoch", "time_budget_min", "encoder", "context_slices", "fold", "plan"])]
        resume: Option<PathBuf>,
        /// Built-in preset: tiny (CPU, minutes) or swin-umamba (the paper's encoder, GPU).
        #[arg(long, default_value = "tiny", value_parser = clap::builder::PossibleValuesParser::new(PRESETS))]
        preset: String,
        /// TOML file overriding fields of the preset (see configs/).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Number of epochs (overrides the config).
        #[arg(long)]
        epochs: Option<usize>,
        /// Optimiser steps per epoch (overrides the config).
        #[arg(long)]
        steps_per_epoch: Option<usize>,
        /// Stop after this many minutes; the learning-rate schedule decays to fit.
        #[arg(long)]
        time_budget_min: Option<f64>,
        /// Fraction of cases held out for validation.
        #[arg(long, default_value_t = 0.2)]
        val_fraction: f64,
        /// Cross-validation fold 0..4 of a 5-fold split (the dataset's splits_final.json if it has
        /// one); replaces --val-fraction. All folds are written to the run's folds.json.
        #[arg(long, value_parser = clap::value_parser!(u64).range(0..5), conflicts_with = "val_fraction")]
        fold: Option<u64>,
        /// Seed of the split, initialisation and sampling.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Plan written by `segmenter plan` (default: plan from the training cases).
        #[arg(long)]
        plan: Option<PathBuf>,
        /// Encoder blocks: vss (Swin-UMamba) or conv (residual convolutions, for ablations).
        #[arg(long, value_enum)]
        encoder: Option<EncoderKind>,
        /// Neighbouring slices on each side given to the network with each slice, as extra input
        /// channels (2.5D; overrides the config's model.context_slices; 0: the slice alone)
        #[arg(long)]
        context_slices: Option<usize>,
        /// Data-parallel model replicas, the batch split between them (overrides the config):
        /// with `--device cuda` one per GPU (devices 0..N); on the CPU, N replicas share the cores
        #[arg(long)]
        replicas: Option<usize>,
    },
    /// Fingerprint a dataset and write the plan `train` would use (print it in plain words).
    Plan {
        /// Dataset folder with dataset.json (Decathlon or nnU-Net v2 layout).
        #[arg(long)]
        data: PathBuf,
        /// Where to write the plan (JSON).
        #[arg(long)]
        out: PathBuf,
        /// Preset whose patch-size cap applies.
        #[arg(long, default_value = "tiny", value_parser = clap::builder::PossibleValuesParser::new(PRESETS))]
        preset: String,
    },
    /// Predict label maps for a scan or a folder of scans.
    Predict {
        /// Run folder written by `segmenter train`.
        #[arg(long)]
        model: PathBuf,
        /// A .nii/.nii.gz scan, a folder of them (CASE_0000.nii.gz channels are grouped), or a .txt
        /// file listing scans or folders, one per line.
        #[arg(long)]
        input: PathBuf,
        /// Output folder: one label map per case, same name, header and affine as the input.
        #[arg(long)]
        output: PathBuf,
        /// Predict again cases whose output already exists.
        #[arg(long)]
        overwrite: bool,
        /// Predict only part i of n (0-based), for cluster job arrays: `--shard $SLURM_ARRAY_TASK_ID/8`.
        #[arg(long, value_parser = segmenter::predict::parse_shard)]
        shard: Option<(usize, usize)>,
        /// Mirroring test-time augmentation (4 passes per window: as is and flipped along each in-plane axis).
        #[arg(long)]
        tta: bool,
        /// Sliding-window step as a fraction of the patch size.
        #[arg(long, default_value_t = 0.5)]
        step: f64,
        /// Post-processing of each label map; recorded with the other settings in
        /// OUTPUT/prediction.json.
        #[arg(long, value_enum, default_value_t = segmenter::postprocess::PostProcessing::None)]
        postprocess: segmenter::postprocess::PostProcessing,
        /// Also write each case's class probabilities (4D float32 NIfTI, x·y·z·class, before
        /// post-processing) to OUTPUT/probabilities/. They take classes x voxels x 4 bytes of
        /// memory and disk (37 GB for 118 classes on a 512 x 512 x 300 CT).
        #[arg(long)]
        save_probabilities: bool,
    },
    /// Compare predicted label maps with references: Dice, IoU, HD95, NSD and volumes per case and
    /// class, in summary.json, summary.csv and an HTML report with box plots and overlays.
    Evaluate {
        /// Folder of predicted label maps.
        #[arg(long)]
        pred: PathBuf,
        /// Folder of reference label maps (same file names).
        #[arg(long = "ref")]
        reference: PathBuf,
        /// The dataset's dataset.json, for the label names.
        #[arg(long)]
        dataset_json: PathBuf,
        /// Folder for summary.json, summary.csv and report.html (with report_files/).
        #[arg(long)]
        out: PathBuf,
        /// Folder of the scans, drawn under the overlay pictures of the report; by default the
        /// `imagesXx` folder next to a reference folder named `labelsXx`, when there is one.
        #[arg(long)]
        images: Option<PathBuf>,
        /// Tolerance of the normalised surface distance (NSD), in mm.
        #[arg(long, default_value_t = 1.0)]
        nsd_tolerance_mm: f64,
        /// Per-class NSD tolerance, `CLASS=MM` (repeatable), e.g. `--nsd-class-tolerance 2=2.5`.
        #[arg(long, value_parser = parse_class_tolerance)]
        nsd_class_tolerance: Vec<(u8, f64)>,
    },
    /// Draw a run's learning curve (training loss, validation Dice) from its log.jsonl into
    /// RUN/learning_curve.svg; `train` does this after every epoch.
    Curve {
        /// Run folder written by `segmenter train`.
        #[arg(long)]
        run: PathBuf,
    },
    /// Benchmarks that print what they compare, the ratio and the machine.
    Bench {
        #[command(subcommand)]
        what: BenchKind,
    },
}

#[derive(Subcommand, Debug)]
enum BenchKind {
    /// Selective scan: fused kernel vs the plain reference, forward and forward+backward
    /// (B=2, K=4, E=192, N=16).
    Scan {
        /// Sequence lengths L to time.
        #[arg(long, value_delimiter = ',', default_values_t = [1024usize, 4096, 16384])]
        lengths: Vec<usize>,
        /// Timed runs per measurement (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Forward+backward of a preset's network on a batch (a training step without the optimizer
    /// update), with the fused scan and, with --reference, with the tensor-op loop.
    Step {
        /// Preset whose network is timed.
        #[arg(long, default_value = "tiny")]
        preset: String,
        /// Patches per batch [default: the preset's batch size].
        #[arg(long)]
        batch: Option<usize>,
        /// Side of the square patches.
        #[arg(long, default_value_t = 64)]
        patch: usize,
        /// Timed steps per implementation (the median is reported), after one warm-up.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Also time the straightforward tensor-op scan (slow).
        #[arg(long)]
        reference: bool,
        /// Also time N data-parallel replicas sharing the cores against one replica.
        #[arg(long)]
        replicas: Option<usize>,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Inference: voxels per second and peak memory over whole volumes, per preset, with and
    /// without --tta (freshly initialised networks; speed does not depend on the weights).
    Infer {
        /// Scans or folders of scans, each timed as one group [default:
        /// sample-data/hippocampus/imagesTs and ../shared/data/totalseg-example/example_ct_sm.nii.gz].
        #[arg(long = "input")]
        inputs: Vec<PathBuf>,
        /// Output classes (background included) for each --input, in order; 3 when not given.
        #[arg(long = "classes")]
        classes: Vec<usize>,
        /// Presets to time.
        #[arg(long, value_delimiter = ',', default_values_t = ["tiny".to_string(), "swin-umamba".to_string()])]
        presets: Vec<String>,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Time only without --tta (with it, each row takes four times as long).
        #[arg(long)]
        no_tta: bool,
        /// Plan this in-plane spacing (mm): slices of another spacing are resampled for the
        /// network and the prediction back, as predict does [default: every scan as it is].
        #[arg(long)]
        spacing: Option<f64>,
        /// Also keep the class probabilities of every voxel, as predict --save-probabilities.
        #[arg(long)]
        keep_probabilities: bool,
    },
    /// Augmented samples per second of the sampler next to the samples per second one training
    /// step consumes, per preset, with their ratio.
    Sampler {
        /// Dataset folder with dataset.json.
        #[arg(long, default_value = "sample-data/hippocampus")]
        data: PathBuf,
        /// Presets to measure.
        #[arg(long, value_delimiter = ',', default_values_t = PRESETS.map(String::from))]
        presets: Vec<String>,
        /// Seconds per measurement, after one warm-up (each side runs at least once; a warm-up
        /// longer than this is the measurement).
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Samples per batch (default: the preset's train.batch_size). On CPU one swin-umamba step
        /// at its batch of 32 takes minutes; `--batch-size 2` gives a number in seconds.
        #[arg(long)]
        batch_size: Option<usize>,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Selective scan on one backend (e.g. the CubeCL kernel on CUDA): checked against the CPU
    /// kernel on random inputs (forward and all seven gradients), then timed against it
    /// (B=2, K=4, E=192, N=16). Exits non-zero when a check fails.
    ScanKernel {
        /// `cuda` (fused, as training uses it), `cuda-cube` (the kernel on CubeBackend without
        /// fusion), `wgpu` (any Vulkan device, lavapipe included) or `cpu` (Flex).
        #[arg(long, value_enum)]
        backend: KernelBackend,
        /// Sequence lengths L to time.
        #[arg(long, value_delimiter = ',', default_values_t = [1024usize, 4096, 16384])]
        lengths: Vec<usize>,
        /// Timed runs per measurement (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Check only; do not time.
        #[arg(long)]
        check_only: bool,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Backends `bench scan-kernel` can run.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum KernelBackend {
    Cpu,
    Cuda,
    CudaCube,
    Wgpu,
}

fn parse_class_tolerance(text: &str) -> Result<(u8, f64), String> {
    let (class, mm) = text
        .split_once('=')
        .ok_or_else(|| format!("'{text}': expected CLASS=MM, e.g. 2=2.5"))?;
    let class = class
        .trim()
        .parse::<u8>()
        .map_err(|_| format!("'{text}': class must be a label id 0..=255"))?;
    let mm = mm
        .trim()
        .parse::<f64>()
        .map_err(|_| format!("'{text}': tolerance must be a number of mm"))?;
    if !(mm.is_finite() && mm >= 0.0) {
        return Err(format!(
            "'{text}': tolerance must be a non-negative number of mm"
        ));
    }
    Ok((class, mm))
}

fn main() -> ExitCode {
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
    match cli.command {
        Command::Train {
            resume: Some(run_dir),
            ..
        } => {
            backend::resume(cli.device, &run_dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Train {
            data,
            out,
            preset,
            config,
            epochs,
            steps_per_epoch,
            time_budget_min,
            val_fraction,
            fold,
            seed,
            encoder,
            context_slices,
            plan,
            replicas,
            resume: None,
        } => {
            let (Some(data), Some(out)) = (data, out) else {
                anyhow::bail!("--data and --out are required")
            };
            let mut experiment = ExperimentConfig::preset(&preset)?;
            if let Some(path) = config {
                experiment = ExperimentConfig::load_over(&experiment, &path)?;
            }
            if let Some(e) = epochs {
                experiment.train.epochs = e;
            }
            if let Some(s) = steps_per_epoch {
                experiment.train.steps_per_epoch = s;
            }
            if let Some(kind) = encoder {
                experiment.model.encoder = kind;
            }
            if let Some(k) = context_slices {
                experiment.model.context_slices = k;
            }
            if let Some(n) = replicas {
                experiment.train.replicas = n;
            }
            experiment.validate()?;
            let time_budget = time_budget_min.map(|m| Duration::from_secs_f64(m * 60.0));
            let options = TrainOptions {
                data,
                out,
                time_budget,
                val_fraction,
                seed,
                fold: fold.map(|k| k as usize),
                plan,
            };
            backend::train(cli.device, &experiment, &options)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan { data, out, preset } => {
            let experiment = ExperimentConfig::preset(&preset)?;
            let dataset = segmenter_io::load_dataset(&data)?;
            let labelled: Vec<_> = dataset
                .cases
                .iter()
                .filter(|c| c.label.is_some())
                .cloned()
                .collect();
            anyhow::ensure!(
                !labelled.is_empty(),
                "{}: no labelled cases to plan from",
                data.display()
            );
            eprintln!(
                "Fingerprinting {} cases of {} …",
                labelled.len(),
                data.display()
            );
            let cases = segmenter::train::load_cases(&labelled, &dataset.labels)?;
            let plan = segmenter::plan::Plan::from_dataset(
                &dataset,
                &cases,
                experiment.train.max_patch_side,
            );
            plan.write(&out)?;
            println!("Plan: {}", plan.describe());
            if let Some(f) = &plan.fingerprint {
                println!(
                    "Fingerprint: {} cases, median spacing {:?} mm, median shape {:?}",
                    f.cases, f.median_spacing_mm, f.median_shape
                );
            }
            println!("Written to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Predict {
            model,
            input,
            output,
            overwrite,
            shard,
            tta,
            step,
            postprocess,
            save_probabilities,
        } => {
            anyhow::ensure!(
                step > 0.0 && step <= 1.0,
                "--step must be within (0, 1], got {step}"
            );
            let window = segmenter::infer::WindowSettings {
                step_fraction: step,
                mirror: tta,
                ..Default::default()
            };
            let options = PredictOptions {
                model,
                input,
                output: output.clone(),
                overwrite,
                shard,
                window,
                postprocessing: postprocess,
                save_probabilities,
            };
            let report = backend::predict(cli.device, &options)?;
            eprintln!("{}", describe(&report, &output));
            if report.failed.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                for (id, reason) in &report.failed {
                    eprintln!("failed: {id}: {reason}");
                }
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Evaluate {
            pred,
            reference,
            dataset_json,
            out,
            images,
            nsd_tolerance_mm,
            nsd_class_tolerance,
        } => {
            let outcome = segmenter::evaluate::run(&segmenter::evaluate::EvaluateRequest {
                prediction_dir: pred,
                reference_dir: reference,
                dataset_json,
                out_dir: out,
                images,
                options: segmenter::evaluate::EvalOptions {
                    default_tolerance_mm: nsd_tolerance_mm,
                    tolerance_mm: nsd_class_tolerance.into_iter().collect(),
                },
            })?;
            println!("{}", outcome.table);
            println!(
                "Report: {} (summary.json, summary.csv beside it)",
                outcome.report.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Curve { run } => {
            let plan = segmenter::plan::Plan::read(&run.join("plan.json"))?;
            let path = segmenter::curve::write_learning_curve(&run, &plan.foreground_names())?;
            println!("Learning curve: {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what:
                BenchKind::Scan {
                    lengths,
                    runs,
                    threads,
                    json,
                },
        } => {
            segmenter::bench::run_scan_bench(&segmenter::bench::ScanBenchOptions {
                lengths,
                runs,
                json,
                threads,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what:
                BenchKind::Step {
                    preset,
                    batch,
                    patch,
                    runs,
                    reference,
                    replicas,
                    json,
                },
        } => {
            segmenter::bench_step::run_step_bench(&segmenter::bench_step::StepBenchOptions {
                preset,
                batch,
                patch,
                runs,
                reference,
                replicas,
                json,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what:
                BenchKind::Infer {
                    inputs,
                    classes,
                    presets,
                    threads,
                    json,
                    no_tta,
                    spacing,
                    keep_probabilities,
                },
        } => {
            let options = segmenter::bench_infer::InferBenchOptions {
                inputs,
                presets,
                classes,
                json,
                no_tta,
                spacing,
                keep_probabilities,
            };
            if let Some(mm) = spacing {
                anyhow::ensure!(
                    mm.is_finite() && mm > 0.0,
                    "--spacing must be a positive number of mm, got {mm}"
                );
            }
            segmenter::bench::with_threads(threads, || {
                segmenter::bench_infer::run_infer_bench(&options)
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what:
                BenchKind::Sampler {
                    data,
                    presets,
                    seconds,
                    batch_size,
                    threads,
                    json,
                },
        } => {
            segmenter::bench_sampler::run_sampler_bench(
                &segmenter::bench_sampler::SamplerBenchOptions {
                    data,
                    presets,
                    seconds,
                    batch_size,
                    threads,
                    json,
                },
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what:
                BenchKind::ScanKernel {
                    backend,
                    lengths,
                    runs,
                    check_only,
                    json,
                },
        } => {
            let options = segmenter::bench_kernel::KernelBenchOptions {
                lengths,
                runs,
                json,
                check_only,
            };
            let passed = backend::kernel_bench(backend, &options)?;
            if !passed {
                eprintln!("bench scan-kernel: a check exceeded its tolerance (see FAIL above)");
            }
            Ok(if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// The backend is chosen once, here; everything else is generic over it.
mod backend {
    use super::*;
    use burn::backend::{Autodiff, Flex};

    pub fn train(
        device: DeviceKind,
        config: &ExperimentConfig,
        options: &TrainOptions,
    ) -> Result<()> {
        match device {
            DeviceKind::Cpu => {
                segmenter::train::train::<Autodiff<Flex>>(config, options, &Default::default())
                    .map(|_| ())
            }
            DeviceKind::Cuda => cuda::train(config, options),
        }
    }

    pub fn resume(device: DeviceKind, run_dir: &std::path::Path) -> Result<()> {
        match device {
            DeviceKind::Cpu => {
                segmenter::train::resume::<Autodiff<Flex>>(run_dir, &Default::default()).map(|_| ())
            }
            DeviceKind::Cuda => cuda::resume(run_dir),
        }
    }

    pub fn predict(
        device: DeviceKind,
        options: &PredictOptions,
    ) -> Result<segmenter::predict::PredictReport> {
        match device {
            DeviceKind::Cpu => segmenter::predict::predict::<Flex>(options, &Default::default()),
            DeviceKind::Cuda => cuda::predict(options),
        }
    }

    pub fn kernel_bench(
        backend: KernelBackend,
        options: &segmenter::bench_kernel::KernelBenchOptions,
    ) -> Result<bool> {
        use segmenter::bench_kernel::run_kernel_bench;
        match backend {
            KernelBackend::Cpu => run_kernel_bench::<Flex>("cpu", &Default::default(), options),
            KernelBackend::Cuda => cuda::kernel_bench(false, options),
            KernelBackend::CudaCube => cuda::kernel_bench(true, options),
            KernelBackend::Wgpu => wgpu::kernel_bench(options),
        }
    }

    #[cfg(feature = "wgpu")]
    mod wgpu {
        use super::*;

        pub fn kernel_bench(options: &segmenter::bench_kernel::KernelBenchOptions) -> Result<bool> {
            use vision_ssm::scan::cube::WgpuCube;
            let device = burn::backend::wgpu::WgpuDevice::default();
            segmenter::bench_kernel::run_kernel_bench::<WgpuCube>("wgpu", &device, options)
        }
    }

    #[cfg(not(feature = "wgpu"))]
    mod wgpu {
        use super::*;

        pub fn kernel_bench(_: &segmenter::bench_kernel::KernelBenchOptions) -> Result<bool> {
            anyhow::bail!("--backend wgpu: this binary was built without wgpu support; rebuild with `cargo build --release --features wgpu`")
        }
    }

    #[cfg(feature = "cuda")]
    mod cuda {
        use super::*;
        use burn::backend::Cuda;

        /// The kernel check and timing on CUDA, fused (as training runs) or on the plain
        /// CubeBackend.
        pub fn kernel_bench(
            plain: bool,
            options: &segmenter::bench_kernel::KernelBenchOptions,
        ) -> Result<bool> {
            use segmenter::bench_kernel::run_kernel_bench;
            use vision_ssm::scan::cube::CudaCube;
            let device = device()?;
            if plain {
                run_kernel_bench::<CudaCube>("cuda-cube", &device, options)
            } else {
                run_kernel_bench::<Cuda>("cuda", &device, options)
            }
        }

        fn device() -> Result<burn::backend::cuda::CudaDevice> {
            // cudarc panics when the driver library is absent; check first and say so.
            let found = ["libcuda.so.1", "libcuda.so"].iter().any(|name| {
                [
                    "/usr/lib/x86_64-linux-gnu",
                    "/usr/lib64",
                    "/usr/local/nvidia/lib64",
                    "/usr/lib/wsl/lib",
                ]
                .iter()
                .any(|dir| std::path::Path::new(dir).join(name).exists())
            }) || std::env::var_os("LD_LIBRARY_PATH").is_some_and(|p| {
                std::env::split_paths(&p).any(|d| d.join("libcuda.so.1").exists())
            });
            anyhow::ensure!(
                found,
                "--device cuda: no NVIDIA driver library (libcuda.so.1) found on this machine"
            );
            Ok(Default::default())
        }

        pub fn train(config: &ExperimentConfig, options: &TrainOptions) -> Result<()> {
            segmenter::train::train::<Autodiff<Cuda>>(config, options, &device()?).map(|_| ())
        }

        pub fn resume(run_dir: &std::path::Path) -> Result<()> {
            segmenter::train::resume::<Autodiff<Cuda>>(run_dir, &device()?).map(|_| ())
        }

        pub fn predict(options: &PredictOptions) -> Result<segmenter::predict::PredictReport> {
            segmenter::predict::predict::<Cuda>(options, &device()?)
        }
    }

    #[cfg(not(feature = "cuda"))]
    mod cuda {
        use super::*;

        const MESSAGE: &str = "--device cuda: this binary was built without CUDA support; rebuild with `cargo build --release --features cuda`";

        pub fn train(_: &ExperimentConfig, _: &TrainOptions) -> Result<()> {
            anyhow::bail!(MESSAGE)
        }

        pub fn resume(_: &std::path::Path) -> Result<()> {
            anyhow::bail!(MESSAGE)
        }

        pub fn predict(_: &PredictOptions) -> Result<segmenter::predict::PredictReport> {
            anyhow::bail!(MESSAGE)
        }

        pub fn kernel_bench(
            _: bool,
            _: &segmenter::bench_kernel::KernelBenchOptions,
        ) -> Result<bool> {
            anyhow::bail!(MESSAGE)
        }
    }
}
