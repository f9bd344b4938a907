//! `segmenter bench scan`: the fused selective scan against the plain float32 loop.
//!
//! For B=2, K=4, E=192, N=16 (the PyTorch yardstick's shape; `--batch`, `--directions`,
//! `--channels-per-direction` and `--d-state` set others, such as a 3D stage's six directions)
//! and each sequence length L, times forward and forward+backward of
//! (a) the fused op through burn (`vision_ssm::selective_scan` on `Autodiff<Flex>` with
//! `require_grad` inputs, backward of `sum(y * w)`) and (b) the reference,
//! `vision_ssm::scan::reference::scan_{forward,backward}_naive`: one step at a time with libm's
//! `exp`, every state `[B, D, L, N]` kept for the backward, rows in parallel like the fused op.
//! Reports the median of the timed runs after one warm-up, the peak of the bytes allocated
//! during a run (measured by a counting global allocator, so outputs and every temporary count),
//! achieved GFLOP/s (the PyTorch yardstick's estimate: 9 B D N L per forward, 3x that for
//! forward+backward) and the ratio reference / fused.

use anyhow::{ensure, Result};
use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use vision_ssm::host::from_host;
use vision_ssm::scan::cpu::{self, ScanDims, ScanInputs};
use vision_ssm::scan::reference::{scan_backward_naive, scan_forward_naive};
use vision_ssm::scan::{FloatTensor, ScanArgs, ScanBackend};

use super::ThreadsAndFormat;
use super::{cpu_model, round, time_runs, with_threads, Timing};

/// Options of `segmenter bench scan`.
#[derive(Clone, Debug, clap::Args)]
pub struct ScanBenchOptions {
    /// Sequence lengths L to time.
    #[arg(long, value_delimiter = ',', default_values_t = [1024usize, 4096, 16384])]
    pub lengths: Vec<usize>,
    /// Timed runs per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Batch B.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Scan directions K: 4 for SS2D, 6 for SS3D (the default is the PyTorch yardstick's shape).
    #[arg(long, default_value_t = 4)]
    pub directions: usize,
    /// Channels E per direction (d_inner of the layer). A stage of `tiny3d` at a 40x40x56 patch:
    /// `--batch 3 --directions 6 --channels-per-direction 64 --d-state 8 --lengths 1400`.
    #[arg(long, default_value_t = 192)]
    pub channels_per_direction: usize,
    /// State size N.
    #[arg(long, default_value_t = 16)]
    pub d_state: usize,
    /// Worker threads and output format.
    #[command(flatten)]
    pub output: ThreadsAndFormat,
}

// ---------------------------------------------------------------------------------------------
// Inputs, like the PyTorch yardstick's `make_inputs`.
// ---------------------------------------------------------------------------------------------

/// Host copies of the scan inputs, and the weights w of the loss sum(y * w).
struct HostInputs {
    dims: ScanDims,
    values: ScanArgs<Vec<f32>>,
    w: Vec<f32>,
}

/// `count` values ~ N(0, scale^2) by Box-Muller.
fn normal(rng: &mut StdRng, count: usize, scale: f32) -> Vec<f32> {
    (0..count)
        .map(|_| {
            // 1 - U is in (0, 1], so the log is finite.
            let (u1, u2): (f32, f32) = (1.0 - rng.random::<f32>(), rng.random());
            scale * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
}

impl HostInputs {
    /// VMamba-like random inputs: u, B, C, w ~ N(0, 1), delta ~ N(0, 0.25), A = -(1..=N),
    /// D = 1, bias = softplus^-1 of a log-uniform step in [1e-3, 0.1].
    fn random(dims: ScanDims, seed: u64) -> Self {
        let rng = &mut StdRng::seed_from_u64(seed);
        let sequence = dims.batch * dims.channels * dims.len;
        let projection = dims.batch * dims.k_dirs * dims.d_state * dims.len;
        let (u, delta) = (normal(rng, sequence, 1.0), normal(rng, sequence, 0.5));
        let (bm, cm) = (normal(rng, projection, 1.0), normal(rng, projection, 1.0));
        let w = normal(rng, sequence, 1.0);
        let a = (0..dims.channels)
            .flat_map(|_| (1..=dims.d_state).map(|i| -(i as f32)))
            .collect();
        let mut rng = StdRng::seed_from_u64(seed + 1);
        let delta_bias = (0..dims.channels)
            .map(|_| {
                let (lo, hi) = (1e-3f64.ln(), 0.1f64.ln());
                let dt0 = (lo + rng.random::<f64>() * (hi - lo)).exp();
                (dt0 + (-(-dt0).exp_m1()).ln()) as f32
            })
            .collect();
        let d_skip = vec![1.0; dims.channels];
        let values = ScanArgs::from_array([u, delta, a, bm, cm, d_skip, delta_bias]);
        Self { dims, values, w }
    }

    fn inputs(&self) -> ScanInputs<'_> {
        self.values.each_ref().map(|v| v.as_slice())
    }

    /// Bytes of the seven inputs.
    fn input_bytes(&self) -> usize {
        4 * self
            .inputs()
            .into_array()
            .iter()
            .map(|v| v.len())
            .sum::<usize>()
    }
}

type Ad = Autodiff<Flex>;

/// The inputs as tracked burn leaves, and w.
struct BurnInputs {
    x: ScanArgs<FloatTensor<Ad>>,
    /// `u`, kept as a tensor to ask the gradients whether it was tracked.
    u: Tensor<Ad, 3>,
    w: Tensor<Ad, 3>,
}

impl BurnInputs {
    fn new(h: &HostInputs) -> Self {
        let dev = Default::default();
        let shapes = h.dims.shapes();
        let mut shape = shapes.iter();
        // Tracked leaves of any rank: rank 1 stands for all, the data keeps its own shape.
        let x = h.values.clone().map(|v| {
            let dims = shape.next().expect("seven shapes").clone();
            let primitive = TensorPrimitive::Float(from_host::<Ad>(v, dims, &dev));
            let leaf = Tensor::<Ad, 1>::from_primitive(primitive).require_grad();
            leaf.into_primitive().tensor()
        });
        let u = Tensor::from_primitive(TensorPrimitive::Float(x.u.clone()));
        let w = Tensor::from_data(TensorData::new(h.w.clone(), shapes[0].clone()), &dev);
        Self { x, u, w }
    }

    fn forward(&self) -> Tensor<Ad, 3> {
        Tensor::from_primitive(TensorPrimitive::Float(Ad::selective_scan(self.x.clone())))
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

/// Runs the benchmark and prints a table, or JSON lines with `opts.output.json`.
pub fn run_scan_bench(opts: &ScanBenchOptions) -> Result<()> {
    ensure!(opts.runs >= 1, "--runs must be at least 1");
    ensure!(
        opts.batch >= 1
            && opts.directions >= 1
            && opts.channels_per_direction >= 1
            && opts.d_state >= 1,
        "--batch, --directions, --channels-per-direction and --d-state must be positive"
    );
    ensure!(
        !opts.lengths.is_empty() && opts.lengths.iter().all(|&l| l > 0),
        "--lengths must list positive sequence lengths"
    );
    with_threads(opts.output.threads, || bench_all(opts))
}

/// The problem size and the machine, the same for every length.
struct Setup {
    batch: usize,
    k_dirs: usize,
    per_dir: usize,
    d_state: usize,
    threads: usize,
    cpu: String,
}

fn bench_all(opts: &ScanBenchOptions) -> Result<()> {
    let setup = Setup {
        batch: opts.batch,
        k_dirs: opts.directions,
        per_dir: opts.channels_per_direction,
        d_state: opts.d_state,
        threads: rayon::current_num_threads(),
        cpu: cpu_model(),
    };
    if !opts.output.json {
        print_header(opts, &setup);
    }
    for &len in &opts.lengths {
        bench_length(opts, &setup, len)?;
    }
    Ok(())
}

/// What is compared and how, then the table's column names.
fn print_header(opts: &ScanBenchOptions, setup: &Setup) {
    let Setup {
        batch,
        k_dirs,
        per_dir,
        d_state,
        threads,
        ref cpu,
    } = *setup;
    let logical = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
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

/// Times both implementations at sequence length `len` and reports each pass.
fn bench_length(opts: &ScanBenchOptions, setup: &Setup, len: usize) -> Result<()> {
    let Setup {
        batch,
        k_dirs,
        per_dir,
        d_state,
        ..
    } = *setup;
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
    let y_bytes = 4 * host.values.u.len();
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
        report_pass(opts, setup, &rows, pass, y_err);
    }
    if !opts.output.json {
        println!("{:>6} y max rel diff fused vs reference: {y_err:.2e}", len);
    }
    Ok(())
}

/// Prints one pass at one length: a table row, or a JSON line per implementation.
fn report_pass(opts: &ScanBenchOptions, setup: &Setup, rows: &[Row], pass: &str, y_err: f64) {
    let find = |imp: &str| {
        rows.iter()
            .find(|r| r.imp == imp && r.pass == pass)
            .expect("measured")
    };
    let (re, fu) = (find(REFERENCE), find("fused"));
    let ratio = re.t.ms_median / fu.t.ms_median;
    if opts.output.json {
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
                "threads": setup.threads,
                "B": setup.batch, "K": setup.k_dirs, "E": setup.per_dir,
                "D": setup.k_dirs * setup.per_dir, "N": setup.d_state,
                "cpu": setup.cpu,
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
            fu.len,
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
