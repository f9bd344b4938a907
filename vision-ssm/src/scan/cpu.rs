//! Fused CPU selective scan (VMamba layout) with a hand-written backward pass, on plain slices.
//!
//! Semantics, all float32 row-major: channel `d` of `D = K * E` belongs to direction `k = d / E`;
//! `dt = softplus(delta[b,d,l] + delta_bias[d])`,
//! `h[n] = exp(dt * a[d,n]) * h[n] + dt * bm[b,k,n,l] * u[b,d,l]` (from `h = 0`),
//! `y[b,d,l] = sum_n cm[b,k,n,l] * h[n] + d_skip[d] * u[b,d,l]`.
//!
//! Speed comes from: (1) one sequential pass over L per (batch, channel), parallel over
//! batch x channels, with the state held as W-lane arrays (W = 16 for N = 16) that stay in
//! vector registers, and B/C transposed once to [L, N] so each step reads contiguous lanes;
//! (2) a branch-free polynomial exp/softplus the compiler can vectorise (libm's scalar `expf`
//! would dominate); (3) the hot loops compiled again for AVX2+FMA and AVX-512 and picked at run
//! time, because the workspace builds for baseline x86-64 (SSE2). The backward pass never
//! stores [B, D, L, N]: it keeps the state only at chunk boundaries and recomputes one chunk
//! at a time while walking backwards, parallel over (batch, direction) so dB and dC, sums over
//! the direction's channels, need no locking.

use rayon::prelude::*;

/// Steps between stored state checkpoints in the backward pass.
pub const CHUNK: usize = 64;

/// Sizes of one selective-scan call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanDims {
    /// Batch size B.
    pub batch: usize,
    /// Number of scan directions K (groups sharing B and C).
    pub k_dirs: usize,
    /// Channels D = K * E.
    pub channels: usize,
    /// State size N.
    pub d_state: usize,
    /// Sequence length L.
    pub len: usize,
}

/// Borrowed inputs of the scan.
#[derive(Clone, Copy, Debug)]
pub struct ScanInputs<'a> {
    /// Input sequence u, [B, D, L].
    pub u: &'a [f32],
    /// Step-size pre-activation delta, [B, D, L].
    pub delta: &'a [f32],
    /// State matrix A, [D, N] (normally negative).
    pub a: &'a [f32],
    /// Input projection B, [B, K, N, L].
    pub bm: &'a [f32],
    /// Output projection C, [B, K, N, L].
    pub cm: &'a [f32],
    /// Skip weight D, [D].
    pub d_skip: &'a [f32],
    /// Bias added to delta before the softplus, [D].
    pub delta_bias: &'a [f32],
}

/// Gradients of every input, same shapes as the inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct ScanGrads {
    /// Gradient of u, [B, D, L].
    pub u: Vec<f32>,
    /// Gradient of delta, [B, D, L].
    pub delta: Vec<f32>,
    /// Gradient of A, [D, N].
    pub a: Vec<f32>,
    /// Gradient of B, [B, K, N, L].
    pub bm: Vec<f32>,
    /// Gradient of C, [B, K, N, L].
    pub cm: Vec<f32>,
    /// Gradient of the skip weight, [D].
    pub d_skip: Vec<f32>,
    /// Gradient of the delta bias, [D].
    pub delta_bias: Vec<f32>,
}

impl ScanDims {
    /// Channels per direction, E = D / K.
    pub fn per_dir(&self) -> usize {
        self.channels / self.k_dirs
    }

    /// Checks that D splits evenly over K, that N >= 1 and that every input has its shape's length.
    pub fn check(&self, x: &ScanInputs) -> Result<(), String> {
        let Self {
            batch: b,
            k_dirs: k,
            channels: d,
            d_state: n,
            len: l,
        } = *self;
        if k == 0 || d % k != 0 {
            return Err(format!("channels ({d}) must be a multiple of k_dirs ({k}), which must be >= 1"));
        }
        if n == 0 {
            return Err("d_state must be at least 1".to_string());
        }
        let expected = [
            ("u", x.u.len(), b * d * l),
            ("delta", x.delta.len(), b * d * l),
            ("a", x.a.len(), d * n),
            ("bm", x.bm.len(), b * k * n * l),
            ("cm", x.cm.len(), b * k * n * l),
            ("d_skip", x.d_skip.len(), d),
            ("delta_bias", x.delta_bias.len(), d),
        ];
        for (name, got, want) in expected {
            if got != want {
                return Err(format!("{name} has {got} values, expected {want} for {self:?}"));
            }
        }
        Ok(())
    }
}

/// Output y [B, D, L] of the selective scan. Panics if `dims.check(x)` fails.
pub fn scan_forward(dims: ScanDims, x: &ScanInputs) -> Vec<f32> {
    forward_with(Isa::detect(), dims, x)
}

/// Gradients of `sum(y * dy)` with respect to every input, recomputing states from the inputs.
///
/// Panics if `dims.check(x)` fails or `dy` is not [B, D, L].
pub fn scan_backward(dims: ScanDims, x: &ScanInputs, dy: &[f32]) -> ScanGrads {
    backward_with(Isa::detect(), CHUNK, dims, x, dy)
}

// ---------------------------------------------------------------------------------------------
// Vectorisable math. Everything here is branch-free (selects only) so that loops calling it
// compile to SIMD; `F` selects fused multiply-add, which is only fast when the caller was
// compiled with the `fma` target feature (otherwise `mul_add` becomes a libm call).
// ---------------------------------------------------------------------------------------------

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// Adding 1.5 * 2^23 rounds to an integer held in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;
const LN2: f64 = std::f64::consts::LN_2;
/// Taylor coefficients of 2^f = e^(f ln2), ln2^k / k!; degree 6 gives ~1e-7 relative error
/// on |f| <= 0.5, i.e. about one float32 rounding.
const EXP2_C: [f32; 7] = [
    1.0,
    LN2 as f32,
    (LN2 * LN2 / 2.0) as f32,
    (LN2 * LN2 * LN2 / 6.0) as f32,
    (LN2 * LN2 * LN2 * LN2 / 24.0) as f32,
    (LN2 * LN2 * LN2 * LN2 * LN2 / 120.0) as f32,
    (LN2 * LN2 * LN2 * LN2 * LN2 * LN2 / 720.0) as f32,
];

#[inline(always)]
fn madd<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
    if F {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// 2^t for t clamped to [-126, 127], so the result is always a normal float (never 0 or inf).
#[inline(always)]
fn exp2_fast<const F: bool>(t: f32) -> f32 {
    let t = if t < -126.0 { -126.0 } else { t };
    let t = if t > 127.0 { 127.0 } else { t };
    let k = t + ROUND_MAGIC;
    let nf = k - ROUND_MAGIC;
    let f = t - nf;
    let mut p = EXP2_C[6];
    p = madd::<F>(p, f, EXP2_C[5]);
    p = madd::<F>(p, f, EXP2_C[4]);
    p = madd::<F>(p, f, EXP2_C[3]);
    p = madd::<F>(p, f, EXP2_C[2]);
    p = madd::<F>(p, f, EXP2_C[1]);
    p = madd::<F>(p, f, EXP2_C[0]);
    // The low 9 bits of k's representation are n (two's complement), so this builds 2^n directly.
    let scale = f32::from_bits(k.to_bits().wrapping_add(127) << 23);
    p * scale
}

/// Cody-Waite split of ln 2: the high part has few bits, so n * LN2_HI is exact for |n| < 2^15.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// e^x for x clamped to [-87, 88]; unlike `exp2_fast(x * LOG2E)` it does not lose accuracy for
/// large |x| to the rounding of the product (used where it matters and runs once per step).
#[inline(always)]
fn exp_fast<const F: bool>(x: f32) -> f32 {
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let k = madd::<F>(x, LOG2E, ROUND_MAGIC);
    let nf = k - ROUND_MAGIC;
    let r = madd::<F>(-nf, LN2_LO, madd::<F>(-nf, LN2_HI, x));
    let mut p = 1.0 / 720.0;
    p = madd::<F>(p, r, 1.0 / 120.0);
    p = madd::<F>(p, r, 1.0 / 24.0);
    p = madd::<F>(p, r, 1.0 / 6.0);
    p = madd::<F>(p, r, 0.5);
    p = madd::<F>(p, r, 1.0);
    p = madd::<F>(p, r, 1.0);
    p * f32::from_bits(k.to_bits().wrapping_add(127) << 23)
}

/// (softplus(x), sigmoid(x)), both from z = e^-|x| so neither overflows; softplus is x above 20.
#[inline(always)]
fn softplus_sigmoid<const F: bool>(x: f32) -> (f32, f32) {
    let z = exp_fast::<F>(-x.abs());
    // log1p(z) = 2 atanh(s) with s = z / (2 + z) <= 1/3: an odd series accurate for tiny z too,
    // where ln(1 + z) would lose every digit of z to rounding.
    let s = z / (2.0 + z);
    let s2 = s * s;
    let mut p = 1.0 / 15.0;
    p = madd::<F>(p, s2, 1.0 / 13.0);
    p = madd::<F>(p, s2, 1.0 / 11.0);
    p = madd::<F>(p, s2, 1.0 / 9.0);
    p = madd::<F>(p, s2, 1.0 / 7.0);
    p = madd::<F>(p, s2, 1.0 / 5.0);
    p = madd::<F>(p, s2, 1.0 / 3.0);
    p = madd::<F>(p, s2, 1.0);
    let log1p = 2.0 * s * p;
    let pos = if x > 0.0 { x } else { 0.0 };
    let sp = if x > 20.0 { x } else { pos + log1p };
    let r = 1.0 / (1.0 + z);
    let sig = if x >= 0.0 { r } else { z * r };
    (sp, sig)
}

/// Sum of the W lanes of `p` as a halving tree; with W a constant the array stays in vector
/// registers and this compiles to a few shuffles.
#[inline(always)]
fn lane_sum<const W: usize>(mut p: [f32; W]) -> f32 {
    let mut w = W;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            p[i] += p[i + w];
        }
    }
    p[0]
}

/// Sum of `x * y` through eight partial sums (a plain running sum would neither vectorise
/// nor be as accurate).
#[inline(always)]
fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: f32 = xc.remainder().iter().zip(yc.remainder()).map(|(a, b)| a * b).sum();
    for (x, y) in xc.zip(yc) {
        for ((a, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *a += x * y;
        }
    }
    let s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    s + tail
}

/// Sum of `x` through eight partial sums, like [`dot`].
#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let xc = x.chunks_exact(8);
    let tail: f32 = xc.remainder().iter().sum();
    for x in xc {
        for (a, &x) in acc.iter_mut().zip(x) {
            *a += x;
        }
    }
    let s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    s + tail
}

// ---------------------------------------------------------------------------------------------
// State layout. The kernels hold W state lanes (W a power of two, at most 16) in fixed-size
// arrays, which the compiler keeps in vector registers for a whole pass over L. N is padded
// up to a multiple of W with lanes whose A, B and C are zero (their state stays 0 and they add
// nothing), and larger N runs as several independent groups of W lanes: the recurrence does
// not mix lanes, and y, du and ddelta are plain sums over them.
// ---------------------------------------------------------------------------------------------

/// Widest lane group a kernel handles: one AVX-512 register, two AVX2 registers.
const MAX_W: usize = 16;

/// (kernel width W, padded state size) for state size n.
fn lane_layout(n: usize) -> (usize, usize) {
    let w = n.next_power_of_two().min(MAX_W);
    (w, n.div_ceil(w) * w)
}

/// The W lanes of step `l` from group start `g0` in a padded [L, NP] buffer.
///
/// Kernels copy these into local arrays (`*lanes(..)`) before use: locals provably do not
/// overlap the buffers being written, which is what lets the loops over lanes vectorise.
#[inline(always)]
fn lanes<const W: usize>(rows: &[f32], l: usize, np: usize, g0: usize) -> &[f32; W] {
    rows[l * np + g0..].first_chunk::<W>().expect("padded rows hold W lanes from every group start")
}

/// Mutable version of [`lanes`].
#[inline(always)]
fn lanes_mut<const W: usize>(rows: &mut [f32], l: usize, np: usize, g0: usize) -> &mut [f32; W] {
    rows[l * np + g0..].first_chunk_mut::<W>().expect("padded rows hold W lanes from every group start")
}

/// Lanes `g0..g0 + W` of an [N] row, zero beyond N, optionally scaled.
#[inline(always)]
fn padded_lanes<const W: usize>(row: &[f32], g0: usize, scale: f32) -> [f32; W] {
    let mut out = [0.0f32; W];
    for (o, &v) in out.iter_mut().zip(row.iter().skip(g0)) {
        *o = v * scale;
    }
    out
}

/// [N, L] -> [L, NP] with lanes N..NP zero, so each step's values are one contiguous row.
fn pad_transpose_into(src: &[f32], n: usize, len: usize, np: usize, out: &mut [f32]) {
    out.fill(0.0);
    // Blocks of 16 steps keep the strided writes within a few cache lines per sweep.
    for l0 in (0..len).step_by(16) {
        let l1 = (l0 + 16).min(len);
        for (i, srow) in src.chunks_exact(len).enumerate() {
            for (l, &v) in srow[l0..l1].iter().enumerate() {
                out[(l0 + l) * np + i] = v;
            }
        }
    }
    debug_assert_eq!(src.len(), n * len);
}

/// [L, NP] -> [N, L], dropping the padding lanes.
fn unpad_transpose_into(src: &[f32], n: usize, len: usize, np: usize, out: &mut [f32]) {
    for (i, orow) in out.chunks_exact_mut(len).enumerate().take(n) {
        for (l, o) in orow.iter_mut().enumerate() {
            *o = src[l * np + i];
        }
    }
}

/// [G, N, L] -> [G, L, NP] for every (batch, direction) group, in parallel.
fn pad_transpose_groups(src: &[f32], n: usize, len: usize, np: usize) -> Vec<f32> {
    let groups = src.len() / (n * len);
    let mut out = vec![0.0; groups * len * np];
    out.par_chunks_mut(len * np)
        .zip(src.par_chunks(n * len))
        .for_each(|(o, s)| pad_transpose_into(s, n, len, np, o));
    out
}

// ---------------------------------------------------------------------------------------------
// Instruction-set dispatch.
// ---------------------------------------------------------------------------------------------

/// Instruction set the hot loops run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    /// Whatever the build target allows (SSE2 on x86-64), no FMA.
    Base,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512F with FMA.
    Avx512,
}

impl Isa {
    /// The best instruction set this machine supports.
    fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
                return Isa::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Base
    }

    /// Every instruction set usable here (tests run all of them).
    #[cfg(test)]
    fn available() -> Vec<Isa> {
        match Isa::detect() {
            Isa::Base => vec![Isa::Base],
            Isa::Avx2 => vec![Isa::Base, Isa::Avx2],
            Isa::Avx512 => vec![Isa::Base, Isa::Avx2, Isa::Avx512],
        }
    }
}

/// Calls `$body::<W, F>(args..)` with the lane width W of state size `$n` as a constant.
macro_rules! by_width {
    ($n:expr, $body:ident :: <$f:literal> ($($arg:expr),*)) => {
        match lane_layout($n).0 {
            1 => $body::<1, $f>($($arg),*),
            2 => $body::<2, $f>($($arg),*),
            4 => $body::<4, $f>($($arg),*),
            8 => $body::<8, $f>($($arg),*),
            16 => $body::<16, $f>($($arg),*),
            w => unreachable!("lane width {w} is not a power of two up to {MAX_W}"),
        }
    };
}

/// Defines `$name(isa, job, args..)`, which runs `$body` compiled for the chosen instruction set
/// and for the lane width of `job.n`.
macro_rules! isa_dispatch {
    ($name:ident, $body:ident, ($job:ident : $jty:ty $(, $arg:ident : $ty:ty)*)) => {
        fn $name(isa: Isa, $job: $jty $(, $arg: $ty)*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($job: $jty $(, $arg: $ty)*) {
                    by_width!($job.n, $body::<true>($job $(, $arg)*))
                }
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512($job: $jty $(, $arg: $ty)*) {
                    by_width!($job.n, $body::<true>($job $(, $arg)*))
                }
                match isa {
                    // SAFETY: `Isa::detect` only returns these after checking the CPU has the features.
                    Isa::Avx512 => return unsafe { avx512($job $(, $arg)*) },
                    // SAFETY: as above.
                    Isa::Avx2 => return unsafe { avx2($job $(, $arg)*) },
                    Isa::Base => {}
                }
            }
            let _ = isa;
            by_width!($job.n, $body::<false>($job $(, $arg)*))
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Forward.
// ---------------------------------------------------------------------------------------------

/// One (batch, channel) row of the forward pass.
struct FwdRow<'a> {
    n: usize,
    np: usize,
    /// A row of the channel, [N].
    a: &'a [f32],
    /// B and C of the row's direction, padded [L, NP].
    bt: &'a [f32],
    ct: &'a [f32],
    u: &'a [f32],
    delta: &'a [f32],
    bias: f32,
    d_skip: f32,
}

/// Per-thread buffers of the forward pass.
struct FwdScratch {
    dt: Vec<f32>,
    dtu: Vec<f32>,
    /// C h lanes of a block of steps, [CHUNK, W].
    p: Vec<f32>,
}

/// One pass over L for lanes `g0..g0 + W`, adding their share of C h to `y`.
///
/// The sums over lanes are done per block of steps from a buffer rather than once per step:
/// the per-step horizontal sum was a third of the forward time, and summing rows of a
/// finished block lets the compiler do it with wide loads across rows.
#[inline(always)]
fn fwd_lanes<const W: usize, const F: bool>(
    r: &FwdRow,
    g0: usize,
    dt: &[f32],
    dtu: &[f32],
    p: &mut [f32],
    y: &mut [f32],
) {
    let a2 = padded_lanes::<W>(r.a, g0, LOG2E);
    let mut h = [0.0f32; W];
    let p = &mut p[..CHUNK * W];
    for l0 in (0..y.len()).step_by(CHUNK) {
        let m = CHUNK.min(y.len() - l0);
        let rows = r.bt[l0 * r.np..].chunks_exact(r.np).zip(r.ct[l0 * r.np..].chunks_exact(r.np));
        let steps = dt[l0..][..m].iter().zip(&dtu[l0..][..m]).zip(rows);
        for (p, ((&dt, &dtu), (brow, crow))) in p.chunks_exact_mut(W).zip(steps) {
            let b = *lanes::<W>(brow, 0, 0, g0);
            let c = *lanes::<W>(crow, 0, 0, g0);
            let mut pl = [0.0f32; W];
            for i in 0..W {
                // exp(dt a) = 2^(dt a log2 e); a2 has log2 e folded in.
                h[i] = madd::<F>(exp2_fast::<F>(dt * a2[i]), h[i], dtu * b[i]);
                pl[i] = c[i] * h[i];
            }
            p.copy_from_slice(&pl);
        }
        for (y, p) in y[l0..][..m].iter_mut().zip(p.chunks_exact(W)) {
            *y += sum(p);
        }
    }
}

#[inline(always)]
fn fwd_row_body<const W: usize, const F: bool>(r: &FwdRow, s: &mut FwdScratch, y: &mut [f32]) {
    let len = y.len();
    let (dt, dtu) = (&mut s.dt[..len], &mut s.dtu[..len]);
    for (((dt, dtu), &d), &u) in dt.iter_mut().zip(dtu.iter_mut()).zip(r.delta).zip(r.u) {
        *dt = softplus_sigmoid::<F>(d + r.bias).0;
        *dtu = *dt * u;
    }
    for (y, &u) in y.iter_mut().zip(r.u) {
        *y = r.d_skip * u;
    }
    for g0 in (0..r.np).step_by(W) {
        fwd_lanes::<W, F>(r, g0, dt, dtu, &mut s.p, y);
    }
}

isa_dispatch!(fwd_row, fwd_row_body, (r: &FwdRow, s: &mut FwdScratch, y: &mut [f32]));

fn forward_with(isa: Isa, dims: ScanDims, x: &ScanInputs) -> Vec<f32> {
    if let Err(e) = dims.check(x) {
        panic!("scan_forward: {e}");
    }
    let ScanDims {
        k_dirs,
        channels,
        d_state: n,
        len,
        ..
    } = dims;
    let mut y = vec![0.0; x.u.len()];
    if y.is_empty() {
        return y;
    }
    let per_dir = dims.per_dir();
    let np = lane_layout(n).1;
    let bt = pad_transpose_groups(x.bm, n, len, np);
    let ct = pad_transpose_groups(x.cm, n, len, np);
    y.par_chunks_mut(len).enumerate().for_each_init(
        || FwdScratch {
            dt: vec![0.0; len],
            dtu: vec![0.0; len],
            p: vec![0.0; CHUNK * MAX_W],
        },
        |s, (row, y)| {
            let (b, d) = (row / channels, row % channels);
            let g = b * k_dirs + d / per_dir;
            let job = FwdRow {
                n,
                np,
                a: &x.a[d * n..][..n],
                bt: &bt[g * len * np..][..len * np],
                ct: &ct[g * len * np..][..len * np],
                u: &x.u[row * len..][..len],
                delta: &x.delta[row * len..][..len],
                bias: x.delta_bias[d],
                d_skip: x.d_skip[d],
            };
            fwd_row(isa, &job, s, y);
        },
    );
    y
}

// ---------------------------------------------------------------------------------------------
// Backward.
// ---------------------------------------------------------------------------------------------

/// Inputs of one (batch, direction) backward task: its E channels and its B/C.
struct BwdTask<'a> {
    n: usize,
    len: usize,
    chunk: usize,
    /// A rows of the E channels, [E, N].
    a: &'a [f32],
    /// [E, L] rows of u, delta and dy.
    u: &'a [f32],
    delta: &'a [f32],
    dy: &'a [f32],
    /// [E] slices of the per-channel parameters.
    bias: &'a [f32],
    d_skip: &'a [f32],
    /// B and C of the direction, [N, L].
    bm: &'a [f32],
    cm: &'a [f32],
}

/// Outputs of one backward task; the per-channel parameter gradients are this batch item's share.
struct BwdOut<'a> {
    /// [E, L].
    du: &'a mut [f32],
    ddelta: &'a mut [f32],
    /// [N, L].
    dbm: &'a mut [f32],
    dcm: &'a mut [f32],
    /// [E, N] and [E].
    da: &'a mut [f32],
    dd_skip: &'a mut [f32],
    dbias: &'a mut [f32],
}

/// Per-step values of one channel, [L] each, shared by its lane groups.
struct ChannelSeq<'a> {
    dt: &'a [f32],
    dtu: &'a [f32],
    dy: &'a [f32],
    u: &'a [f32],
    /// d dt / d delta = sigmoid(delta + bias).
    sig: &'a [f32],
}

/// B/C of a task in the padded [L, NP] layout and the accumulators of their gradients.
struct TaskRows<'a> {
    np: usize,
    chunk: usize,
    bt: &'a [f32],
    ct: &'a [f32],
    dbt: &'a mut [f32],
    dct: &'a mut [f32],
    /// State entering each chunk, and the states and decays of the chunk being reversed.
    ckpt: &'a mut [f32],
    hs: &'a mut [f32],
    es: &'a mut [f32],
}

/// Backward of one channel for lanes `g0..g0 + W`: adds this group's share to `du`, `ddelta`,
/// dB and dC, and returns its dA lanes.
///
/// The states are recomputed from the inputs: a forward pass stores the state entering each
/// chunk, then the chunks are walked in reverse, each one's states recomputed into a small
/// buffer first. `carry` and `da` stay in registers for the whole walk.
#[inline(always)]
fn bwd_lanes<const W: usize, const F: bool>(
    a_row: &[f32],
    g0: usize,
    q: &ChannelSeq,
    t: &mut TaskRows,
    du: &mut [f32],
    ddelta: &mut [f32],
) -> [f32; W] {
    let (np, chunk, len) = (t.np, t.chunk, q.dt.len());
    let n_chunks = len.div_ceil(chunk);
    let a = padded_lanes::<W>(a_row, g0, 1.0);
    let a2 = padded_lanes::<W>(a_row, g0, LOG2E);
    let ckpt = &mut t.ckpt[..n_chunks * W];
    let (hs, es) = (&mut t.hs[..chunk * W], &mut t.es[..chunk * W]);

    // The last chunk's steps are skipped: the reverse walk recomputes them anyway.
    let mut h = [0.0f32; W];
    for (c, ck) in ckpt.chunks_exact_mut(W).enumerate() {
        ck.copy_from_slice(&h);
        if c + 1 == n_chunks {
            break;
        }
        for l in c * chunk..(c + 1) * chunk {
            let b = *lanes::<W>(t.bt, l, np, g0);
            for i in 0..W {
                h[i] = madd::<F>(exp2_fast::<F>(q.dt[l] * a2[i]), h[i], q.dtu[l] * b[i]);
            }
        }
    }

    // carry = exp(dt_{t+1} a) dL/dh_{t+1}: the adjoint reaching h_t from the next step.
    let mut carry = [0.0f32; W];
    let mut da = [0.0f32; W];
    for c in (0..n_chunks).rev() {
        let s0 = c * chunk;
        let m = chunk.min(len - s0);
        let mut h: [f32; W] = *lanes::<W>(ckpt, c, W, 0);
        for j in 0..m {
            let l = s0 + j;
            let b = *lanes::<W>(t.bt, l, np, g0);
            let mut e = [0.0f32; W];
            for i in 0..W {
                e[i] = exp2_fast::<F>(q.dt[l] * a2[i]);
                h[i] = madd::<F>(e[i], h[i], q.dtu[l] * b[i]);
            }
            *lanes_mut::<W>(es, j, W, 0) = e;
            *lanes_mut::<W>(hs, j, W, 0) = h;
        }
        for j in (0..m).rev() {
            let l = s0 + j;
            let (dt, dtu, dy) = (q.dt[l], q.dtu[l], q.dy[l]);
            let hp = if j > 0 { *lanes::<W>(hs, j - 1, W, 0) } else { *lanes::<W>(ckpt, c, W, 0) };
            let (hj, ej) = (*lanes::<W>(hs, j, W, 0), *lanes::<W>(es, j, W, 0));
            let (b, cc) = (*lanes::<W>(t.bt, l, np, g0), *lanes::<W>(t.ct, l, np, g0));
            let mut db = *lanes::<W>(t.dbt, l, np, g0);
            let mut dc = *lanes::<W>(t.dct, l, np, g0);
            let mut pb = [0.0f32; W];
            let mut pa = [0.0f32; W];
            for i in 0..W {
                // g = dL/dh_t: from y_t through C, plus what flows back from h_{t+1}.
                let g = madd::<F>(cc[i], dy, carry[i]);
                db[i] = madd::<F>(g, dtu, db[i]);
                pb[i] = g * b[i];
                // g h_{t-1} exp(dt a) is shared by dA (times dt) and ddt (times a).
                let gq = g * ej[i] * hp[i];
                pa[i] = gq * a[i];
                da[i] = madd::<F>(gq, dt, da[i]);
                carry[i] = g * ej[i];
                dc[i] = madd::<F>(hj[i], dy, dc[i]);
            }
            *lanes_mut::<W>(t.dbt, l, np, g0) = db;
            *lanes_mut::<W>(t.dct, l, np, g0) = dc;
            let (gb, qa) = (lane_sum(pb), lane_sum(pa));
            du[l] = madd::<F>(dt, gb, du[l]);
            ddelta[l] = madd::<F>(madd::<F>(q.u[l], gb, qa), q.sig[l], ddelta[l]);
        }
    }
    da
}

#[inline(always)]
fn bwd_task_body<const W: usize, const F: bool>(t: &BwdTask, o: &mut BwdOut) {
    let (n, len, chunk) = (t.n, t.len, t.chunk);
    let np = lane_layout(n).1;
    let mut bt = vec![0.0; len * np];
    let mut ct = vec![0.0; len * np];
    pad_transpose_into(t.bm, n, len, np, &mut bt);
    pad_transpose_into(t.cm, n, len, np, &mut ct);
    // dB and dC of the direction accumulate over its E channels and are transposed back once.
    let mut dbt = vec![0.0f32; len * np];
    let mut dct = vec![0.0f32; len * np];
    let mut ckpt = vec![0.0f32; len.div_ceil(chunk) * W];
    let mut hs = vec![0.0f32; chunk * W];
    let mut es = vec![0.0f32; chunk * W];
    let mut rows = TaskRows {
        np,
        chunk,
        bt: &bt,
        ct: &ct,
        dbt: &mut dbt,
        dct: &mut dct,
        ckpt: &mut ckpt,
        hs: &mut hs,
        es: &mut es,
    };
    let (mut dt, mut dtu, mut sig) = (vec![0.0f32; len], vec![0.0f32; len], vec![0.0f32; len]);

    for e in 0..t.bias.len() {
        let a = &t.a[e * n..][..n];
        let u = &t.u[e * len..][..len];
        let dy = &t.dy[e * len..][..len];
        let du = &mut o.du[e * len..][..len];
        let ddelta = &mut o.ddelta[e * len..][..len];
        prep_bwd_row::<F>(&t.delta[e * len..][..len], t.bias[e], u, &mut dt, &mut dtu, &mut sig);
        let seq = ChannelSeq {
            dt: &dt,
            dtu: &dtu,
            dy,
            u,
            sig: &sig,
        };
        // du starts as the skip term and ddelta at zero; each lane group adds its share.
        for (du, &dy) in du.iter_mut().zip(dy) {
            *du = t.d_skip[e] * dy;
        }
        ddelta.fill(0.0);
        let da = &mut o.da[e * n..][..n];
        for g0 in (0..np).step_by(W) {
            let lanes = bwd_lanes::<W, F>(a, g0, &seq, &mut rows, du, ddelta);
            for (o, v) in da.iter_mut().skip(g0).zip(lanes) {
                *o = v;
            }
        }
        o.dd_skip[e] = dot(dy, u);
        o.dbias[e] = sum(ddelta);
    }
    unpad_transpose_into(&dbt, n, len, np, o.dbm);
    unpad_transpose_into(&dct, n, len, np, o.dcm);
}

/// dt = softplus(delta + bias), dt u and sigmoid(delta + bias) (= d dt / d delta) of one row.
#[inline(always)]
fn prep_bwd_row<const F: bool>(
    delta: &[f32],
    bias: f32,
    u: &[f32],
    dt: &mut [f32],
    dtu: &mut [f32],
    sig: &mut [f32],
) {
    let outs = dt.iter_mut().zip(dtu.iter_mut()).zip(sig.iter_mut());
    for (((dt, dtu), sig), (&d, &u)) in outs.zip(delta.iter().zip(u)) {
        let (sp, sg) = softplus_sigmoid::<F>(d + bias);
        *dt = sp;
        *dtu = sp * u;
        *sig = sg;
    }
}

isa_dispatch!(bwd_task, bwd_task_body, (t: &BwdTask, o: &mut BwdOut));

fn backward_with(isa: Isa, chunk: usize, dims: ScanDims, x: &ScanInputs, dy: &[f32]) -> ScanGrads {
    if let Err(e) = dims.check(x) {
        panic!("scan_backward: {e}");
    }
    assert_eq!(dy.len(), x.u.len(), "scan_backward: dy must be [B, D, L] like u");
    assert!(chunk > 0, "chunk must be at least 1");
    let ScanDims {
        batch,
        k_dirs,
        channels,
        d_state: n,
        len,
    } = dims;
    let per_dir = dims.per_dir();
    let mut g = ScanGrads {
        u: vec![0.0; x.u.len()],
        delta: vec![0.0; x.delta.len()],
        a: vec![0.0; x.a.len()],
        bm: vec![0.0; x.bm.len()],
        cm: vec![0.0; x.cm.len()],
        d_skip: vec![0.0; channels],
        delta_bias: vec![0.0; channels],
    };
    if batch == 0 || channels == 0 || len == 0 {
        return g;
    }
    // Per-batch shares of the parameter gradients: tasks of different batch items would
    // otherwise race on them. Summed over the batch at the end.
    let mut da_b = vec![0.0f32; batch * channels * n];
    let mut dskip_b = vec![0.0f32; batch * channels];
    let mut dbias_b = vec![0.0f32; batch * channels];
    // Chunk index i of every zipped output below is task (b, k) = (i / K, i % K).
    let el = per_dir * len;
    g.u.par_chunks_mut(el)
        .zip(g.delta.par_chunks_mut(el))
        .zip(g.bm.par_chunks_mut(n * len).zip(g.cm.par_chunks_mut(n * len)))
        .zip(da_b.par_chunks_mut(per_dir * n))
        .zip(dskip_b.par_chunks_mut(per_dir).zip(dbias_b.par_chunks_mut(per_dir)))
        .enumerate()
        .for_each(|(i, ((((du, ddelta), (dbm, dcm)), da), (dd_skip, dbias)))| {
            let k = i % k_dirs;
            let d0 = k * per_dir;
            let task = BwdTask {
                n,
                len,
                chunk,
                a: &x.a[d0 * n..][..per_dir * n],
                u: &x.u[i * el..][..el],
                delta: &x.delta[i * el..][..el],
                dy: &dy[i * el..][..el],
                bias: &x.delta_bias[d0..][..per_dir],
                d_skip: &x.d_skip[d0..][..per_dir],
                bm: &x.bm[i * n * len..][..n * len],
                cm: &x.cm[i * n * len..][..n * len],
            };
            let mut out = BwdOut {
                du,
                ddelta,
                dbm,
                dcm,
                da,
                dd_skip,
                dbias,
            };
            bwd_task(isa, &task, &mut out);
        });
    for b in 0..batch {
        for (acc, v) in g.a.iter_mut().zip(&da_b[b * channels * n..][..channels * n]) {
            *acc += v;
        }
        for (acc, v) in g.d_skip.iter_mut().zip(&dskip_b[b * channels..][..channels]) {
            *acc += v;
        }
        for (acc, v) in g.delta_bias.iter_mut().zip(&dbias_b[b * channels..][..channels]) {
            *acc += v;
        }
    }
    g
}

#[cfg(test)]
mod tests {
    use super::super::reference::{scan_forward_f64, softplus_f64, RefInputs};
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Owned random inputs in the ranges a trained VMamba sees (A negative, delta around [-3, 1]).
    struct Owned {
        dims: ScanDims,
        u: Vec<f32>,
        delta: Vec<f32>,
        a: Vec<f32>,
        bm: Vec<f32>,
        cm: Vec<f32>,
        d_skip: Vec<f32>,
        delta_bias: Vec<f32>,
    }

    impl Owned {
        fn random(batch: usize, k_dirs: usize, per_dir: usize, d_state: usize, len: usize, seed: u64) -> Self {
            let mut rng = StdRng::seed_from_u64(seed);
            let channels = k_dirs * per_dir;
            let dims = ScanDims {
                batch,
                k_dirs,
                channels,
                d_state,
                len,
            };
            let mut v = |count: usize, lo: f32, hi: f32| -> Vec<f32> {
                (0..count).map(|_| rng.random_range(lo..hi)).collect()
            };
            let bdl = batch * channels * len;
            let bknl = batch * k_dirs * d_state * len;
            Self {
                dims,
                u: v(bdl, -1.0, 1.0),
                delta: v(bdl, -3.0, 1.0),
                a: v(channels * d_state, -2.0, -0.1),
                bm: v(bknl, -1.0, 1.0),
                cm: v(bknl, -1.0, 1.0),
                d_skip: v(channels, 0.5, 1.5),
                delta_bias: v(channels, -1.0, 0.5),
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
    }

    /// max |got - want| / max |want|.
    fn rel_err(got: &[f32], want: &[f64]) -> f64 {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err = got.iter().zip(want).fold(0.0f64, |m, (&g, &w)| m.max((f64::from(g) - w).abs()));
        assert!(scale > 0.0, "reference is all zeros, the comparison would be vacuous");
        err / scale
    }

    fn widen(x: &[f32]) -> Vec<f64> {
        x.iter().map(|&v| f64::from(v)).collect()
    }

    #[test]
    fn exp2_and_softplus_match_f64() {
        let mut worst_exp = 0.0f64;
        let mut worst_sp = 0.0f64;
        let mut worst_sig = 0.0f64;
        for i in -40_000..=40_000 {
            let x = i as f32 * 1e-3; // [-40, 40]
            for isa_fma in [false, true] {
                let e = if isa_fma { exp2_fast::<true>(x) } else { exp2_fast::<false>(x) };
                let want = f64::from(x).exp2();
                worst_exp = worst_exp.max((f64::from(e) - want).abs() / want);
                let x2 = x * 2.0; // [-80, 80]
                let e = if isa_fma { exp_fast::<true>(x2) } else { exp_fast::<false>(x2) };
                let want = f64::from(x2).exp();
                worst_exp = worst_exp.max((f64::from(e) - want).abs() / want);
                let (sp, sg) = if isa_fma {
                    softplus_sigmoid::<true>(x)
                } else {
                    softplus_sigmoid::<false>(x)
                };
                let want_sp = softplus_f64(f64::from(x));
                worst_sp = worst_sp.max((f64::from(sp) - want_sp).abs() / want_sp);
                let want_sig = 1.0 / (1.0 + (-f64::from(x)).exp());
                worst_sig = worst_sig.max((f64::from(sg) - want_sig).abs() / want_sig);
            }
        }
        assert!(worst_exp < 3e-7, "exp2 rel err {worst_exp}");
        assert!(worst_sp < 3e-7, "softplus rel err {worst_sp}");
        assert!(worst_sig < 5e-7, "sigmoid rel err {worst_sig}");
        // Clamped, not zero or infinite, far outside the range.
        assert!(exp2_fast::<false>(-500.0) > 0.0 && exp2_fast::<false>(-500.0) < 1e-37);
        assert!(exp2_fast::<false>(500.0).is_finite());
    }

    #[test]
    fn forward_matches_reference() {
        let mut seed = 0;
        let mut cases = Vec::new();
        for &len in &[1, 7, 65, 130, 200] {
            for &n in &[1, 4, 16] {
                for &(batch, k, e) in &[(1, 1, 1), (2, 2, 3), (1, 4, 1), (2, 4, 3)] {
                    cases.push((batch, k, e, n, len));
                }
            }
        }
        // State sizes that take the generic (not unrolled) path.
        cases.push((1, 2, 3, 5, 70));
        cases.push((2, 1, 2, 3, 9));
        cases.push((1, 2, 1, 32, 33));
        for (batch, k, e, n, len) in cases {
            seed += 1;
            let x = Owned::random(batch, k, e, n, len, seed);
            let want = scan_forward_f64(x.dims, &RefInputs::from_f32(&x.inputs()));
            for isa in Isa::available() {
                let got = forward_with(isa, x.dims, &x.inputs());
                let err = rel_err(&got, &want);
                assert!(err < 1e-5, "{isa:?} {:?}: rel err {err}", x.dims);
            }
        }
    }

    #[test]
    fn forward_handles_extreme_delta() {
        // Exercises the softplus threshold (x > 20) and very negative pre-activations.
        let mut x = Owned::random(1, 2, 2, 4, 50, 99);
        let mut rng = StdRng::seed_from_u64(7);
        for v in &mut x.delta {
            *v = rng.random_range(-40.0..30.0);
        }
        let want = scan_forward_f64(x.dims, &RefInputs::from_f32(&x.inputs()));
        for isa in Isa::available() {
            let err = rel_err(&forward_with(isa, x.dims, &x.inputs()), &want);
            assert!(err < 1e-5, "{isa:?}: rel err {err}");
        }
    }

    /// Checks every gradient against central differences of the f64 reference.
    fn check_grads(batch: usize, k: usize, e: usize, n: usize, len: usize, chunk: usize, seed: u64) {
        let x = Owned::random(batch, k, e, n, len, seed);
        let mut rng = StdRng::seed_from_u64(seed + 1000);
        let w: Vec<f32> = (0..x.u.len()).map(|_| rng.random_range(-1.0..1.0)).collect();
        let w64 = widen(&w);
        let base = RefInputs::from_f32(&x.inputs());
        let loss = |r: &RefInputs| -> f64 {
            scan_forward_f64(x.dims, r).iter().zip(&w64).map(|(y, w)| y * w).sum()
        };
        let eps = 1e-6;
        type Field = fn(&mut RefInputs) -> &mut Vec<f64>;
        let fields: [(&str, Field); 7] = [
            ("u", |r| &mut r.u),
            ("delta", |r| &mut r.delta),
            ("a", |r| &mut r.a),
            ("bm", |r| &mut r.bm),
            ("cm", |r| &mut r.cm),
            ("d_skip", |r| &mut r.d_skip),
            ("delta_bias", |r| &mut r.delta_bias),
        ];
        let mut fd = Vec::new();
        for (name, field) in fields {
            let mut r = base.clone();
            let count = field(&mut r).len();
            let mut grad = vec![0.0; count];
            for (i, gi) in grad.iter_mut().enumerate() {
                let orig = field(&mut r)[i];
                field(&mut r)[i] = orig + eps;
                let up = loss(&r);
                field(&mut r)[i] = orig - eps;
                let down = loss(&r);
                field(&mut r)[i] = orig;
                *gi = (up - down) / (2.0 * eps);
            }
            fd.push((name, grad));
        }
        for isa in Isa::available() {
            let g = backward_with(isa, chunk, x.dims, &x.inputs(), &w);
            let got = [&g.u, &g.delta, &g.a, &g.bm, &g.cm, &g.d_skip, &g.delta_bias];
            for ((name, want), got) in fd.iter().zip(got) {
                let err = rel_err(got, want);
                assert!(err < 1e-3, "{isa:?} chunk {chunk} {:?}: d{name} rel err {err}", x.dims);
            }
        }
    }

    #[test]
    fn grads_match_finite_differences_single_chunk() {
        check_grads(2, 2, 2, 4, 7, CHUNK, 11);
        check_grads(1, 1, 1, 1, 5, CHUNK, 12);
    }

    #[test]
    fn grads_match_finite_differences_many_chunks() {
        // Tiny chunks: many boundaries, a partial last chunk, generic state size 3.
        check_grads(1, 2, 3, 3, 10, 3, 21);
        check_grads(2, 2, 1, 4, 9, 4, 22);
        // N = 20: two 16-lane groups, the second mostly padding.
        check_grads(1, 2, 1, 20, 9, 4, 24);
        // The production chunk with L not a multiple of it.
        check_grads(1, 1, 2, 16, 130, CHUNK, 23);
    }

    #[test]
    fn backward_is_independent_of_chunk_and_isa() {
        let x = Owned::random(2, 4, 3, 16, 200, 31);
        let mut rng = StdRng::seed_from_u64(32);
        let dy: Vec<f32> = (0..x.u.len()).map(|_| rng.random_range(-1.0..1.0)).collect();
        let want = backward_with(Isa::Base, CHUNK, x.dims, &x.inputs(), &dy);
        for isa in Isa::available() {
            for chunk in [1, 7, CHUNK, 500] {
                let g = backward_with(isa, chunk, x.dims, &x.inputs(), &dy);
                let pairs = [
                    (&g.u, &want.u),
                    (&g.delta, &want.delta),
                    (&g.a, &want.a),
                    (&g.bm, &want.bm),
                    (&g.cm, &want.cm),
                    (&g.d_skip, &want.d_skip),
                    (&g.delta_bias, &want.delta_bias),
                ];
                for (i, (got, want)) in pairs.into_iter().enumerate() {
                    let err = rel_err(got, &widen(want));
                    assert!(err < 1e-5, "{isa:?} chunk {chunk} grad #{i}: rel err {err}");
                }
            }
        }
    }

    #[test]
    fn check_rejects_bad_shapes() {
        let x = Owned::random(1, 2, 2, 4, 5, 41);
        assert!(x.dims.check(&x.inputs()).is_ok());
        let uneven = ScanDims { channels: 3, ..x.dims };
        assert!(uneven.check(&x.inputs()).is_err());
        let zero_k = ScanDims { k_dirs: 0, ..x.dims };
        assert!(zero_k.check(&x.inputs()).is_err());
        let longer = ScanDims { len: 6, ..x.dims };
        assert!(longer.check(&x.inputs()).unwrap_err().contains("u has"));
        let mut short = x.inputs();
        short.delta_bias = &x.delta_bias[..1];
        assert!(x.dims.check(&short).unwrap_err().contains("delta_bias"));
    }

    #[test]
    fn empty_batch_gives_empty_outputs() {
        let x = Owned::random(0, 2, 2, 4, 5, 51);
        assert!(scan_forward(x.dims, &x.inputs()).is_empty());
        let g = scan_backward(x.dims, &x.inputs(), &[]);
        assert!(g.u.is_empty() && g.a.iter().all(|&v| v == 0.0));
    }
}
