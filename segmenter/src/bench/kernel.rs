//! `segmenter bench scan-kernel`: one backend's selective scan checked against the fused CPU kernel
//! (forward and all seven gradients, on random inputs) and then timed against it. Run with
//! `--backend cuda` on an NVIDIA machine (see `benchmarks/gpu.sh`); `--backend wgpu` runs the
//! same CubeCL kernel on any Vulkan device, lavapipe included.

use anyhow::{ensure, Result};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use serde_json::json;
use vision_ssm::scan::check::{check_backend, check_cases, CheckReport, RandomScan, INPUT_NAMES};
use vision_ssm::scan::cpu::{self, ScanDims};
use vision_ssm::scan::{FloatTensor, ScanBackend};

/// Options of `segmenter bench scan-kernel`.
#[derive(Clone, Debug, clap::Args)]
pub struct KernelBenchOptions {
    /// Sequence lengths L to time.
    #[arg(long, value_delimiter = ',', default_values_t = [1024usize, 4096, 16384])]
    pub lengths: Vec<usize>,
    /// Timed runs per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Check only; do not time.
    #[arg(long)]
    pub check_only: bool,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn dims_text(d: &ScanDims) -> String {
    format!(
        "B={} K={} E={} N={} L={}",
        d.batch,
        d.k_dirs,
        d.channels / d.k_dirs,
        d.d_state,
        d.len
    )
}

fn print_check(backend: &str, r: &CheckReport, ok: bool, as_json: bool) {
    let worst_grad = |g: &[f64; 7]| {
        let i = (0..7).max_by(|&a, &b| g[a].total_cmp(&g[b])).unwrap_or(0);
        (INPUT_NAMES[i], g[i])
    };
    if as_json {
        let grads = |g: &[f64; 7]| {
            INPUT_NAMES
                .iter()
                .zip(g)
                .map(|(n, e)| (n.to_string(), json!(e)))
                .collect::<serde_json::Map<_, _>>()
        };
        let line = json!({
            "kind": "check", "backend": backend, "dims": dims_text(&r.dims),
            "y_vs_f64": r.y_vs_f64, "y_vs_cpu": r.y_vs_cpu,
            "grads_autodiff_vs_cpu": grads(&r.grads_autodiff),
            "grads_direct_vs_cpu": grads(&r.grads_direct), "pass": ok,
        });
        println!("{line}");
    } else {
        let (ad_name, ad) = worst_grad(&r.grads_autodiff);
        let (di_name, di) = worst_grad(&r.grads_direct);
        println!(
            "check {:<28} y/f64 {:.1e}  y/cpu {:.1e}  worst grad (autodiff) d{ad_name} {ad:.1e}  (direct) d{di_name} {di:.1e}  {}",
            dims_text(&r.dims),
            r.y_vs_f64,
            r.y_vs_cpu,
            if ok { "ok" } else { "FAIL" }
        );
    }
}

/// A tracked leaf of rank D on the autodiff backend over `B`, from one of `B`'s tensors.
fn leaf<B: Backend, const D: usize>(t: &FloatTensor<B>) -> Tensor<Autodiff<B>, D> {
    let inner = Tensor::<B, D>::from_primitive(TensorPrimitive::Float(t.clone()));
    Tensor::from_inner(inner).require_grad()
}

/// Times forward and forward+backward of `B` and of the CPU kernel at one size; the device is
/// synchronised inside each timed run, so launches are not mistaken for work.
fn time_one<B: ScanBackend>(
    device: &B::Device,
    case: &RandomScan,
    runs: usize,
) -> Result<[f64; 4]> {
    let dims = case.dims;
    let shapes = case.shapes();
    let sync = || B::sync(device).map_err(|e| anyhow::anyhow!("device sync failed: {e:?}"));
    let x = case.tensors::<B>(device);
    sync()?;
    let fwd = super::median_ms(runs, || {
        // Kept until the device is done, so a lazy backend cannot skip the work.
        let y = B::selective_scan(x.clone());
        sync().expect("device sync");
        drop(y);
    });
    let dy = Tensor::<Autodiff<B>, 3>::from_data(
        TensorData::new(case.dy.clone(), shapes[0].clone()),
        device,
    );
    let fwd_bwd = super::median_ms(runs, || {
        let y = vision_ssm::selective_scan(
            leaf::<B, 3>(&x.u),
            leaf::<B, 3>(&x.delta),
            leaf::<B, 2>(&x.a),
            leaf::<B, 4>(&x.bm),
            leaf::<B, 4>(&x.cm),
            leaf::<B, 1>(&x.d_skip),
            leaf::<B, 1>(&x.delta_bias),
        );
        let grads = (y * dy.clone()).sum().backward();
        sync().expect("device sync");
        drop(grads);
    });
    let inputs = case.inputs();
    let cpu_fwd = super::median_ms(runs, || drop(cpu::scan_forward(dims, &inputs)));
    let cpu_fwd_bwd = super::median_ms(runs, || {
        let (y, saved) = cpu::scan_forward_saving(dims, &inputs);
        drop(y);
        drop(cpu::scan_backward_from(dims, &inputs, &case.dy, &saved));
    });
    Ok([fwd, fwd_bwd, cpu_fwd, cpu_fwd_bwd])
}

/// Checks backend `B` (named `backend` in the output) on every check shape and one bench-sized
/// shape, then times it; returns whether every check passed.
pub fn run_kernel_bench<B: ScanBackend>(
    backend: &str,
    device: &B::Device,
    opts: &KernelBenchOptions,
) -> Result<bool> {
    ensure!(opts.runs >= 1, "--runs must be at least 1");
    ensure!(
        opts.lengths.iter().all(|&l| l > 0),
        "--lengths must list positive sequence lengths"
    );
    let mut cases = check_cases();
    cases.push(ScanDims {
        batch: 2,
        k_dirs: 4,
        channels: 4 * 192,
        d_state: 16,
        len: 1000,
    });
    let mut all_ok = true;
    for (i, dims) in cases.into_iter().enumerate() {
        let r = check_backend::<B>(device, &RandomScan::new(dims, 1000 + i as u64));
        let ok = r.passes();
        all_ok &= ok;
        print_check(backend, &r, ok, opts.json);
    }
    if opts.check_only {
        return Ok(all_ok);
    }
    let threads = rayon::current_num_threads();
    for &len in &opts.lengths {
        let dims = ScanDims {
            batch: 2,
            k_dirs: 4,
            channels: 4 * 192,
            d_state: 16,
            len,
        };
        let case = RandomScan::new(dims, 7);
        let [fwd, fwd_bwd, cpu_fwd, cpu_fwd_bwd] = time_one::<B>(device, &case, opts.runs)?;
        if opts.json {
            let line = json!({
                "kind": "time", "backend": backend, "dims": dims_text(&dims),
                "forward_ms": fwd, "forward_backward_ms": fwd_bwd,
                "cpu_kernel_forward_ms": cpu_fwd, "cpu_kernel_forward_backward_ms": cpu_fwd_bwd,
                "cpu_threads": threads, "runs": opts.runs,
            });
            println!("{line}");
        } else {
            println!(
                "time  {:<28} {backend}: fwd {fwd:.2} ms, fwd+bwd {fwd_bwd:.2} ms | CPU kernel ({threads} threads): fwd {cpu_fwd:.2} ms ({:.1}x), fwd+bwd {cpu_fwd_bwd:.2} ms ({:.1}x)",
                dims_text(&dims),
                cpu_fwd / fwd,
                cpu_fwd_bwd / fwd_bwd
            );
        }
    }
    Ok(all_ok)
}
