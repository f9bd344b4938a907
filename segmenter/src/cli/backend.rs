//! The device is chosen once, here; everything else is generic over the backend.

use std::path::Path;

use anyhow::Result;
use burn::backend::{Autodiff, Flex};
use clap::ValueEnum;
use segmenter::predict::{PredictOptions, PredictReport};
use segmenter::train::Experiments;
use segmenter::train::TrainOptions;

use super::DeviceKind;

/// Backends `bench scan-kernel` can run.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KernelBackend {
    Cpu,
    Cuda,
    CudaCube,
    Wgpu,
}

/// Trains on `device`.
pub fn train(device: DeviceKind, config: &Experiments, options: &TrainOptions) -> Result<()> {
    match device {
        DeviceKind::Cpu => {
            segmenter::train::train::<Autodiff<Flex>>(config, options, &Default::default())
                .map(|_| ())
        }
        DeviceKind::Cuda => cuda::train(config, options),
    }
}

/// Resumes the run in `run_dir` on `device`.
pub fn resume(device: DeviceKind, run_dir: &Path) -> Result<()> {
    match device {
        DeviceKind::Cpu => {
            segmenter::train::resume::<Autodiff<Flex>>(run_dir, &Default::default()).map(|_| ())
        }
        DeviceKind::Cuda => cuda::resume(run_dir),
    }
}

/// Predicts on `device`.
pub fn predict(device: DeviceKind, options: &PredictOptions) -> Result<PredictReport> {
    match device {
        DeviceKind::Cpu => segmenter::predict::predict::<Flex>(options, &Default::default()),
        DeviceKind::Cuda => cuda::predict(options),
    }
}

/// Checks and times the scan kernel on `backend`.
pub fn kernel_bench(
    backend: KernelBackend,
    options: &crate::bench::kernel::KernelBenchOptions,
) -> Result<bool> {
    use crate::bench::kernel::run_kernel_bench;
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

    pub fn kernel_bench(options: &crate::bench::kernel::KernelBenchOptions) -> Result<bool> {
        use vision_ssm::scan::cube::WgpuCube;
        let device = burn::backend::wgpu::WgpuDevice::default();
        crate::bench::kernel::run_kernel_bench::<WgpuCube>("wgpu", &device, options)
    }
}

#[cfg(not(feature = "wgpu"))]
mod wgpu {
    use super::*;

    pub fn kernel_bench(_: &crate::bench::kernel::KernelBenchOptions) -> Result<bool> {
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
        options: &crate::bench::kernel::KernelBenchOptions,
    ) -> Result<bool> {
        use crate::bench::kernel::run_kernel_bench;
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
        }) || std::env::var_os("LD_LIBRARY_PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("libcuda.so.1").exists()));
        anyhow::ensure!(
            found,
            "--device cuda: no NVIDIA driver library (libcuda.so.1) found on this machine"
        );
        Ok(Default::default())
    }

    pub fn train(config: &Experiments, options: &TrainOptions) -> Result<()> {
        segmenter::train::train::<Autodiff<Cuda>>(config, options, &device()?).map(|_| ())
    }

    pub fn resume(run_dir: &Path) -> Result<()> {
        segmenter::train::resume::<Autodiff<Cuda>>(run_dir, &device()?).map(|_| ())
    }

    pub fn predict(options: &PredictOptions) -> Result<PredictReport> {
        segmenter::predict::predict::<Cuda>(options, &device()?)
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use super::*;

    const MESSAGE: &str = "--device cuda: this binary was built without CUDA support; rebuild with `cargo build --release --features cuda`";

    pub fn train(_: &Experiments, _: &TrainOptions) -> Result<()> {
        anyhow::bail!(MESSAGE)
    }

    pub fn resume(_: &Path) -> Result<()> {
        anyhow::bail!(MESSAGE)
    }

    pub fn predict(_: &PredictOptions) -> Result<PredictReport> {
        anyhow::bail!(MESSAGE)
    }

    pub fn kernel_bench(_: bool, _: &crate::bench::kernel::KernelBenchOptions) -> Result<bool> {
        anyhow::bail!(MESSAGE)
    }
}
