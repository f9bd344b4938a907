//! `segmenter bench …`: the benchmark verbs; their flags are the options of the benchmarks in
//! `crate::bench`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use super::backend::KernelBackend;

use crate::bench::infer::InferBenchOptions;
use crate::bench::kernel::KernelBenchOptions;
use crate::bench::sampler::SamplerBenchOptions;
use crate::bench::scan::ScanBenchOptions;
use crate::bench::step::StepBenchOptions;

#[derive(Subcommand, Debug)]
pub enum BenchKind {
    /// Selective scan: fused kernel vs the plain reference, forward and forward+backward
    /// (B=2, K=4, E=192, N=16).
    Scan(ScanBenchOptions),
    /// Forward+backward of a preset's network on a batch (a training step without the optimizer
    /// update), with the fused scan and, with --reference, with the tensor-op loop.
    Step(StepBenchOptions),
    /// Inference: voxels per second and peak memory over whole volumes, per preset, with and
    /// without --tta (freshly initialised networks; speed does not depend on the weights).
    Infer(InferBenchOptions),
    /// Augmented samples per second of the sampler next to the samples per second one training
    /// step consumes, per preset, with their ratio.
    Sampler(SamplerBenchOptions),
    /// Selective scan on one backend (e.g. the CubeCL kernel on CUDA): checked against the CPU
    /// kernel on random inputs (forward and all seven gradients), then timed against it
    /// (B=2, K=4, E=192, N=16). Exits non-zero when a check fails.
    ScanKernel {
        /// `cuda` (fused, as training uses it), `cuda-cube` (the kernel on CubeBackend without
        /// fusion), `wgpu` (any Vulkan device, lavapipe included) or `cpu` (Flex).
        #[arg(long, value_enum)]
        backend: KernelBackend,
        #[command(flatten)]
        options: KernelBenchOptions,
    },
}

/// Runs one benchmark; fails when `bench scan-kernel` finds a check out of tolerance.
pub fn run(what: BenchKind) -> Result<ExitCode> {
    match what {
        BenchKind::Scan(options) => crate::bench::scan::run_scan_bench(&options)?,
        BenchKind::Step(options) => crate::bench::step::run_step_bench(&options)?,
        BenchKind::Infer(options) => {
            if let Some(mm) = options.spacing {
                anyhow::ensure!(
                    mm.is_finite() && mm > 0.0,
                    "--spacing must be a positive number of mm, got {mm}"
                );
            }
            crate::bench::with_threads(options.output.threads, || {
                crate::bench::infer::run_infer_bench(&options)
            })?
        }
        BenchKind::Sampler(options) => crate::bench::sampler::run_sampler_bench(&options)?,
        BenchKind::ScanKernel { backend, options } => {
            let passed = super::backend::kernel_bench(backend, &options)?;
            if !passed {
                eprintln!("bench scan-kernel: a check exceeded its tolerance (see FAIL above)");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
