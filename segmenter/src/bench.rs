//! `segmenter bench scan`: the fused selective scan against the plain float32 loop.
//!
//! For B=2, K=4, E=192, N=16 and each sequence length L, times forward and forward+backward of
//! (a) the fused op through burn (`vision_ssm::selective_scan` on `Autodiff<Flex>` with
//! `require_grad` inputs, backward of `sum(y * w)`) and (b) the reference,
//! `vision_ssm::scan::reference::scan_{forward,backward}_naive`: one step at a time with libm's
//! `exp`, every state `[B, D, L, N]` kept for the backward, rows in parallel like the fused op.
//! Reports the median of the timed runs after one warm-up, the peak of the bytes allocated
//! during a run (measured by a counting global allocator, so outputs and every temporary count),
//! achieved GFLOP/s (the PyTorch yardstick's estimate: 9 B D N L per forward, 3x that for
//! forward+backward) and the ratio reference / fused.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use vision_ssm::scan::cpu::{self, ScanDims, ScanInputs};
use vision_ssm::scan::reference::{scan_backward_naive, scan_forward_naive};

/// Options of `segmenter bench scan`.
#[derive(Clone, Debug)]
pub struct ScanBenchOptions {
    /// Sequence lengths L to time.
    pub lengths: Vec<usize>,
    /// Timed runs per measurement (the median is reported), after one warm-up run.
    pub runs: usize,
    /// One JSON object per line instead of a table.
    pub json: bool,
    /// Worker threads (default: rayon's global pool, i.e. `RAYON_NUM_THREADS` or all cores).
    pub threads: Option<usize>,
}

// ---------------------------------------------------------------------------------------------
// Peak memory: a global allocator that counts live bytes and their high-water mark.
// ---------------------------------------------------------------------------------------------

/// The system allocator, counting the bytes it has handed out and their peak.
pub struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

fn shrank(bytes: usize) {
    LIVE.fetch_sub(bytes, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to `System`; the counters have no effect on memory.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract, which is `System`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with this layout.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; the caller upholds `realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

/// Runs `f` and returns its result and the peak of the bytes allocated while it ran (above what
/// was live when it started; what it returns counts too).
pub fn with_peak<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    (out, peak)
}

// ---------------------------------------------------------------------------------------------
// Inputs, like the PyTorch yardstick's `make_inputs`.
// ---------------------------------------------------------------------------------------------

/// Host copies of the scan inputs, and the weights w of the loss sum(y * w).
struct HostInputs {
    dims: ScanDims,
    u: Vec<f32>,
    delta: Vec<f32>,
    a: Vec<f32>,
    bm: Vec<f32>,
    cm: Vec<f32>,
    d_skip: Vec<f32>,
    delta_bias: Vec<f32>,
    w: Vec<f32>,
}

impl HostInputs {
    /// VMamba-like random inputs: u, B, C, w ~ N(0, 1), delta ~ N(0, 0.25), A = -(1..=N),
    /// D = 1, bias = softplus^-1 of a log-uniform step in [1e-3, 0.1].
    fn random(dims: ScanDims, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut normal = |count: usize, scale: f32| -> Vec<f32> {
            (0..count)
                .map(|_| {
                    // Box-Muller; 1 - U is in (0, 1], so the log is finite.
                    let (u1, u2): (f32, f32) = (1.0 - rng.random::<f32>(), rng.random());
                    scale * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
                })
                .collect()
        };
        let ScanDims {
            batch: b,
            k_dirs: k,
            channels: d,
            d_state: n,
            len: l,
        } = dims;
        let (u, delta) = (normal(b * d * l, 1.0), normal(b * d * l, 0.5));
        let (bm, cm, w) = (
            normal(b * k * n * l, 1.0),
            normal(b * k * n * l, 1.0),
            normal(b * d * l, 1.0),
        );
        let a = (0..d).flat_map(|_| (1..=n).map(|i| -(i as f32))).collect();
        let mut rng = StdRng::seed_from_u64(seed + 1);
        let delta_bias = (0..d)
            .map(|_| {
                let (lo, hi) = (1e-3f64.ln(), 0.1f64.ln());
                let dt0 = (lo + rng.random::<f64>() * (hi - lo)).exp();
                (dt0 + (-(-dt0).exp_m1()).ln()) as f32
            })
            .collect();
        Self {
            dims,
            u,
            delta,
            a,
            bm,
            cm,
            d_skip: vec![1.0; d],
            delta_bias,
            w,
        }
    }

    fn inputs(&self) -> ScanInputs<'_> {
        ScanInputs {
            u: &self.u,
            delta: &self.delta,
            a: &self.a,
            bm: &self.bm,
            cm: &self.cm,
            d_skip: &self.d_skip,
            delta_bias: &self.delta_bias,
        }
    }

    /// Bytes of the seven inputs.
    fn input_bytes(&self) -> usize {
        let x = self.inputs();
        4 * [x.u, x.delta, x.a, x.bm, x.cm, x.d_skip, x.delta_bias]
            .iter()
            .map(|v| v.len())
            .sum::<usize>()
    }
}

type Ad = Autodiff<Flex>;

/// The inputs as tracked burn leaves, and w.
struct BurnInputs {
    u: Tensor<Ad, 3>,
    delta: Tensor<Ad, 3>,
    a: Tensor<Ad, 2>,
    bm: Tensor<Ad, 4>,
    cm: Tensor<Ad, 4>,
    d_skip: Tensor<Ad, 1>,
    delta_bias: Tensor<Ad, 1>,
    w: Tensor<Ad, 3>,
}

impl BurnInputs {
    fn new(h: &HostInputs) -> Self {
        let dev = Default::default();
        let ScanDims {
            batch: b,
            k_dirs: k,
            channels: d,
            d_state: n,
            len: l,
        } = h.dims;
        let t3 = |v: &[f32], s: [usize; 3]| {
            Tensor::<Ad, 3>::from_data(TensorData::new(v.to_vec(), s), &dev)
        };
        let t4 =
            |v: &[f32]| Tensor::<Ad, 4>::from_data(TensorData::new(v.to_vec(), [b, k, n, l]), &dev);
        let t1 = |v: &[f32]| Tensor::<Ad, 1>::from_data(TensorData::new(v.to_vec(), [d]), &dev);
        Self {
            u: t3(&h.u, [b, d, l]).require_grad(),
            delta: t3(&h.delta, [b, d, l]).require_grad(),
            a: Tensor::<Ad, 2>::from_data(TensorData::new(h.a.clone(), [d, n]), &dev)
                .require_grad(),
            bm: t4(&h.bm).require_grad(),
            cm: t4(&h.cm).require_grad(),
            d_skip: t1(&h.d_skip).require_grad(),
            delta_bias: t1(&h.delta_bias).require_grad(),
            w: t3(&h.w, [b, d, l]),
        }
    }

    fn forward(&self) -> Tensor<Ad, 3> {
        vision_ssm::selective_scan(
            self.u.clone(),
            self.delta.clone(),
            self.a.clone(),
            self.bm.clone(),
            self.cm.clone(),
            self.d_skip.clone(),
            self.delta_bias.clone(),
        )
    }

    /// Forward, then the gradients of sum(y * w) (computed eagerly by Flex); returns them, so
    /// they are still alive when the peak memory is read, as a training step's would be.
    fn forward_backward(&self) -> <Ad as burn::tensor::backend::AutodiffBackend>::Gradients {
        let grads = (self.forward() * self.w.clone()).sum().backward();
        assert!(self.u.grad(&grads).is_some(), "u requires grad");
        grads
    }
}

// ---------------------------------------------------------------------------------------------
// Timing and reporting.
// ---------------------------------------------------------------------------------------------

/// Median and minimum wall time (ms) of `runs` runs after one warm-up, and the largest peak of
/// allocated bytes over the runs.
struct Timing {
    ms_median: f64,
    ms_min: f64,
    peak_bytes: usize,
}

fn time_runs<T>(runs: usize, mut f: impl FnMut() -> T) -> Timing {
    drop(f());
    let mut ms = Vec::with_capacity(runs);
    let mut peak_bytes = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let (out, peak) = with_peak(&mut f);
        drop(out);
        ms.push(start.elapsed().as_secs_f64() * 1e3);
        peak_bytes = peak_bytes.max(peak);
    }
    ms.sort_by(f64::total_cmp);
    let mid = ms.len() / 2;
    let ms_median = if ms.len() % 2 == 1 {
        ms[mid]
    } else {
        0.5 * (ms[mid - 1] + ms[mid])
    };
    Timing {
        ms_median,
        ms_min: ms[0],
        peak_bytes,
    }
}

/// The CPU model from /proc/cpuinfo, with its family and model numbers ("unknown" elsewhere).
///
/// Virtual machines often report a bare "AMD EPYC"; the numbers tell the generations apart
/// (family 23 model 1 is Zen 1, which runs 256-bit vectors at half rate), and benchmark figures
/// from different sessions are only comparable on the same one.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| describe_cpu(&s))
        .unwrap_or_else(|| "unknown".to_string())
}

/// "model name (family F, model M)" from the first processor of a /proc/cpuinfo text.
fn describe_cpu(cpuinfo: &str) -> Option<String> {
    let first = cpuinfo.split("\n\n").next()?;
    let field = |key: &str| {
        first.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    };
    let name = field("model name")?;
    Some(match (field("cpu family"), field("model")) {
        (Some(family), Some(model)) => format!("{name} (family {family}, model {model})"),
        _ => name,
    })
}

/// Largest |got - want| over the largest |want|.
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    let (mut err, mut scale) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        err = err.max(f64::from(g - w).abs());
        scale = scale.max(f64::from(w).abs());
    }
    err / scale.max(f64::MIN_POSITIVE)
}

/// Name of the reference in the output.
const REFERENCE: &str = "naive-f32-loop";

/// One measured (implementation, L, pass).
struct Row {
    imp: &'static str,
    len: usize,
    pass: &'static str,
    t: Timing,
    io_bytes: usize,
    gflop: f64,
}

/// Runs the benchmark and prints a table, or JSON lines with `opts.json`.
pub fn run_scan_bench(opts: &ScanBenchOptions) -> Result<()> {
    ensure!(opts.runs >= 1, "--runs must be at least 1");
    ensure!(
        !opts.lengths.is_empty() && opts.lengths.iter().all(|&l| l > 0),
        "--lengths must list positive sequence lengths"
    );
    with_threads(opts.threads, || bench_all(opts))
}

/// Runs `f` on a rayon pool of `threads` workers, or on the global pool (all cores, or
/// `RAYON_NUM_THREADS`) when `None`; Flex's tensor ops run on whichever pool `f` is in.
pub fn with_threads<T>(threads: Option<usize>, f: impl FnOnce() -> Result<T> + Send) -> Result<T>
where
    T: Send,
{
    match threads {
        Some(t) => {
            ensure!(t >= 1, "--threads must be at least 1");
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .context("could not start the worker threads")?
                .install(f)
        }
        None => f(),
    }
}

fn bench_all(opts: &ScanBenchOptions) -> Result<()> {
    let (batch, k_dirs, per_dir, d_state) = (2, 4, 192, 16);
    let threads = rayon::current_num_threads();
    let cpu = cpu_model();
    let logical = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if !opts.json {
        println!(
            "selective scan: B={batch} K={k_dirs} E={per_dir} (D={}) N={d_state}; median of {} runs after 1 warm-up",
            k_dirs * per_dir,
            opts.runs
        );
        println!("machine: {cpu}, {logical} logical CPUs; {threads} worker threads");
        println!(
            "fused: vision_ssm::selective_scan on Autodiff<Flex>, require_grad inputs, backward of sum(y*w); kernel {}",
            cpu::kernel_isa()
        );
        println!(
            "reference ({REFERENCE}): scan_forward_naive/scan_backward_naive, plain f32 loop with libm exp, \
             every state [B,D,L,N] stored, rows in parallel"
        );
        println!("peak = most bytes allocated during one run (counting allocator); GFLOP/s from 9*B*D*N*L per forward, x3 fwd+bwd");
        println!();
        println!(
            "{:>6} {:>8} {:>10} {:>10} {:>7} {:>9} {:>9} {:>10} {:>10} {:>8}",
            "L",
            "pass",
            "fused ms",
            "ref ms",
            "ratio",
            "fused GF/s",
            "ref GF/s",
            "fused MiB",
            "ref MiB",
            "io MiB"
        );
    }
    for &len in &opts.lengths {
        let dims = ScanDims {
            batch,
            k_dirs,
            channels: k_dirs * per_dir,
            d_state,
            len,
        };
        let host = HostInputs::random(dims, 0);
        let x = host.inputs();
        let flop = 9.0 * (batch * dims.channels * d_state * len) as f64;
        let y_bytes = 4 * host.u.len();
        let io_fwd = host.input_bytes() + y_bytes;
        // Forward+backward outputs: y and a gradient for every input.
        let io_bwd = 2 * host.input_bytes() + y_bytes;

        // A sanity check, outside the timings: both implementations agree.
        let burn_in = BurnInputs::new(&host);
        let y_fused = burn_in
            .forward()
            .into_data()
            .into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let (y_ref, _) = scan_forward_naive(dims, &x);
        let y_err = rel_err(&y_fused, &y_ref);
        drop((y_fused, y_ref));

        let mut rows = vec![
            Row {
                imp: REFERENCE,
                len,
                pass: "fwd",
                t: time_runs(opts.runs, || scan_forward_naive(dims, &x)),
                io_bytes: io_fwd,
                gflop: flop / 1e9,
            },
            Row {
                imp: REFERENCE,
                len,
                pass: "fwd_bwd",
                t: time_runs(opts.runs, || {
                    let (y, states) = scan_forward_naive(dims, &x);
                    let g = scan_backward_naive(dims, &x, &states, &host.w);
                    (y, g)
                }),
                io_bytes: io_bwd,
                gflop: 3.0 * flop / 1e9,
            },
        ];
        rows.push(Row {
            imp: "fused",
            len,
            pass: "fwd",
            t: time_runs(opts.runs, || burn_in.forward()),
            io_bytes: io_fwd,
            gflop: flop / 1e9,
        });
        rows.push(Row {
            imp: "fused",
            len,
            pass: "fwd_bwd",
            t: time_runs(opts.runs, || burn_in.forward_backward()),
            io_bytes: io_bwd,
            gflop: 3.0 * flop / 1e9,
        });
        for pass in ["fwd", "fwd_bwd"] {
            let find = |imp: &str| {
                rows.iter()
                    .find(|r| r.imp == imp && r.pass == pass)
                    .expect("measured")
            };
            let (re, fu) = (find(REFERENCE), find("fused"));
            let ratio = re.t.ms_median / fu.t.ms_median;
            if opts.json {
                for r in [re, fu] {
                    let mut rec = json!({
                        "bench": "scan",
                        "impl": r.imp,
                        "L": r.len,
                        "pass": r.pass,
                        "ms_median": round(r.t.ms_median, 3),
                        "ms_min": round(r.t.ms_min, 3),
                        "runs": opts.runs,
                        "peak_bytes": r.t.peak_bytes,
                        "io_bytes": r.io_bytes,
                        "gflop": round(r.gflop, 4),
                        "gflop_per_s": round(r.gflop / (r.t.ms_median / 1e3), 3),
                        "threads": threads,
                        "B": batch, "K": k_dirs, "E": per_dir, "D": dims.channels, "N": d_state,
                        "cpu": cpu,
                        "reference": REFERENCE,
                    });
                    if r.imp == "fused" {
                        rec["speedup_vs_reference"] = json!(round(ratio, 3));
                        rec["kernel_isa"] = json!(cpu::kernel_isa());
                        if pass == "fwd" {
                            rec["y_rel_err_vs_reference"] = json!(y_err);
                        }
                    }
                    println!("{rec}");
                }
            } else {
                let mib = |b: usize| b as f64 / (1 << 20) as f64;
                println!(
                    "{:>6} {:>8} {:>10.2} {:>10.2} {:>7.2} {:>9.2} {:>9.2} {:>10.1} {:>10.1} {:>8.1}",
                    len,
                    pass,
                    fu.t.ms_median,
                    re.t.ms_median,
                    ratio,
                    fu.gflop / (fu.t.ms_median / 1e3),
                    re.gflop / (re.t.ms_median / 1e3),
                    mib(fu.t.peak_bytes),
                    mib(re.t.peak_bytes),
                    mib(fu.io_bytes)
                );
            }
        }
        if !opts.json {
            println!("{:>6} y max rel diff fused vs reference: {y_err:.2e}", len);
        }
    }
    Ok(())
}

fn round(v: f64, digits: i32) -> f64 {
    let s = 10f64.powi(digits);
    (v * s).round() / s
}

#[cfg(test)]
mod tests {
    use super::describe_cpu;

    #[test]
    fn cpu_description_has_family_and_model_of_the_first_processor() {
        // "model name" first: a key matched by prefix would take it for "model".
        let info = "processor\t: 0\nmodel name\t: AMD EPYC\ncpu family\t: 23\nmodel\t\t: 1\n\
                    \nprocessor\t: 1\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: Other\n";
        assert_eq!(
            describe_cpu(info).as_deref(),
            Some("AMD EPYC (family 23, model 1)")
        );
        // Without the numbers (other architectures), the name alone.
        assert_eq!(
            describe_cpu("model name : Neoverse\n").as_deref(),
            Some("Neoverse")
        );
        assert_eq!(describe_cpu("processor : 0\n"), None);
    }
}
