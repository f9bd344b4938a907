//! The CubeCL kernels on burn's wgpu backend (lavapipe, Mesa's software Vulkan, in CI) against
//! the fused CPU kernel and the float64 reference: the same kernel source that runs on CUDA.

use burn::backend::wgpu::WgpuDevice;

use super::check::{
    check_backend, check_cases, CheckReport, RandomScan, GRAD_TOLERANCE, INPUT_NAMES, Y_TOLERANCE,
};
use super::cube::WgpuCube;
use super::ScanBackend;

/// Every output within the harness's tolerances; the messages name the one that is not.
fn assert_close(r: &CheckReport) {
    eprintln!("{r:?}");
    assert!(
        r.y_vs_f64 < Y_TOLERANCE,
        "{:?}: y vs f64 {}",
        r.dims,
        r.y_vs_f64
    );
    assert!(
        r.y_vs_cpu < Y_TOLERANCE,
        "{:?}: y vs CPU {}",
        r.dims,
        r.y_vs_cpu
    );
    for (i, name) in INPUT_NAMES.iter().enumerate() {
        let (ad, direct) = (r.grads_autodiff[i], r.grads_direct[i]);
        assert!(
            ad < GRAD_TOLERANCE,
            "{:?}: d{name} (autodiff) vs CPU {ad}",
            r.dims
        );
        assert!(
            direct < GRAD_TOLERANCE,
            "{:?}: d{name} (direct) vs CPU {direct}",
            r.dims
        );
    }
    assert!(r.passes());
}

fn check_all<B: ScanBackend>(device: &B::Device) {
    for (i, dims) in check_cases().into_iter().enumerate() {
        assert_close(&check_backend::<B>(
            device,
            &RandomScan::new(dims, 100 + i as u64),
        ));
    }
}

#[test]
fn cube_kernel_on_wgpu_matches_cpu_kernel() {
    check_all::<WgpuCube>(&WgpuDevice::default());
}

/// The Fusion-wrapped backend (as `burn::backend::Cuda` is in the segmenter binary) runs the
/// kernel as a custom operation of its stream.
#[cfg(feature = "fusion")]
#[test]
fn cube_kernel_under_fusion_matches_cpu_kernel() {
    check_all::<burn_fusion::Fusion<WgpuCube>>(&WgpuDevice::default());
}
