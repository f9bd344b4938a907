//! Fused CPU selective scan (VMamba layout) with a hand-written backward pass, on plain slices.
//!
//! Semantics, all float32 row-major: channel `d` of `D = K * E` belongs to direction `k = d / E`;
//! `dt = softplus(delta[b,d,l] + delta_bias[d])`,
//! `h[n] = exp(dt * a[d,n]) * h[n] + dt * bm[b,k,n,l] * u[b,d,l]` (from `h = 0`),
//! `y[b,d,l] = sum_n cm[b,k,n,l] * h[n] + d_skip[d] * u[b,d,l]`.
//!
//! Speed comes from: (1) one sequential pass over L per group of W channels of one direction
//! (W = 16 with AVX-512), vectorised across the channels, with the group's whole state
//! ([N][W]) held in vector registers; B_t and C_t, shared by the direction's channels, are
//! broadcast, so the sums over the state (y, du, d delta) accumulate lane-wise with no
//! horizontal sums; (2) a branch-free polynomial exp/softplus the compiler can vectorise (libm's
//! scalar `expf` would dominate); (3) the hot loops compiled again for AVX2+FMA and AVX-512 and
//! picked at run time, because the workspace builds for baseline x86-64 (SSE2). The backward
//! pass never stores [B, D, L, N]: it keeps the state only at chunk boundaries and recomputes one
//! chunk at a time while walking backwards, parallel over (batch, direction, part of the
//! direction's channels); dB and dC, sums over the direction's channels, accumulate lane-wise per
//! chunk and are reduced once per chunk, with a partial per part when a direction is split.

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
            return Err(format!(
                "channels ({d}) must be a multiple of k_dirs ({k}), which must be >= 1"
            ));
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
                return Err(format!(
                    "{name} has {got} values, expected {want} for {self:?}"
                ));
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

/// The instruction set and lane width the kernels use on this machine, e.g. for benchmark reports.
pub fn kernel_isa() -> &'static str {
    match Isa::detect() {
        Isa::Avx512 => "avx512f+fma, 16 channel lanes",
        Isa::Avx2 => "avx2+fma, 8 channel lanes",
        Isa::Base => "baseline (no fma), 8 channel lanes",
    }
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

// ---------------------------------------------------------------------------------------------
// Layout. The kernels vectorise across channels, not across the state: a *group* of W channels
// of one direction (W = 16 with AVX-512, 8 otherwise) runs as W lanes, and the state of the
// group is NB rows of W lanes ([NB][W], NB up to 16), held in vector registers for a whole pass
// over L. B_t[n] and C_t[n] are the same for every channel of a direction, so each step
// broadcasts them; y, du and d delta, sums over n, accumulate lane-wise with no horizontal
// sums. Groups of a direction with fewer than W channels are padded with lanes whose inputs
// are zero (their state stays 0 and their outputs are dropped). State sizes above NB run as
// several blocks of NB rows, padded with rows whose A, B and C are zero.
// ---------------------------------------------------------------------------------------------

/// Runs `$body` with `$i` = 0, 1, .. up to `$n` - 1 (at most 16), unrolled in the source: with
/// `$n` a constant the untaken copies fold away, and constant indices let the compiler keep
/// arrays indexed by `$i` in registers (its own unrolling gives up on bodies this large).
macro_rules! unroll16 {
    ($n:expr, |$i:ident| $body:block) => {{
        const { assert!($n <= 16) };
        unroll16!(@ $n, $i, $body, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
    }};
    (@ $n:expr, $i:ident, $body:block, $($k:literal)*) => {
        $(
            if $k < $n {
                let $i: usize = $k;
                $body
            }
        )*
    };
}

/// Lane and state-block sizes of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    /// Channels per group (vector lanes).
    w: usize,
    /// State rows per block, a power of two.
    nb: usize,
    /// Padded state size, a multiple of `nb`.
    np: usize,
}

impl Layout {
    fn new(isa: Isa, n: usize) -> Self {
        let (w, nb_max) = match isa {
            Isa::Avx512 => (16, 16),
            Isa::Avx2 | Isa::Base => (8, 8),
        };
        let nb = n.next_power_of_two().min(nb_max);
        Self {
            w,
            nb,
            np: n.div_ceil(nb) * nb,
        }
    }
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

/// [G, N, L] -> [G, L, NP] for every (batch, direction) group, in parallel.
fn pad_transpose_groups(src: &[f32], n: usize, len: usize, np: usize) -> Vec<f32> {
    let groups = src.len() / (n * len);
    let mut out = vec![0.0; groups * len * np];
    out.par_chunks_mut(len * np)
        .zip(src.par_chunks(n * len))
        .for_each(|(o, s)| pad_transpose_into(s, n, len, np, o));
    out
}

/// Steps `l0..l0 + out.len()` of `nch` rows of length `len` into lane-major `out`
/// ([step][lane]); lanes from `nch` on are zero.
#[inline(always)]
fn gather_lanes<const W: usize>(
    rows: &[f32],
    len: usize,
    nch: usize,
    l0: usize,
    out: &mut [[f32; W]],
) {
    let m = out.len();
    for (i, row) in rows.chunks_exact(len).take(nch).enumerate() {
        for (o, &v) in out.iter_mut().zip(&row[l0..l0 + m]) {
            o[i] = v;
        }
    }
    if nch < W {
        for o in out.iter_mut() {
            o[nch..].fill(0.0);
        }
    }
}

/// Lane-major `src` ([step][lane]) back into steps `l0..` of the first `nch` rows.
#[inline(always)]
fn scatter_lanes<const W: usize>(
    src: &[[f32; W]],
    rows: &mut [f32],
    len: usize,
    nch: usize,
    l0: usize,
) {
    let m = src.len();
    for (i, row) in rows.chunks_exact_mut(len).take(nch).enumerate() {
        for (r, s) in row[l0..l0 + m].iter_mut().zip(src) {
            *r = s[i];
        }
    }
}

/// `[nch, N]` rows of A into lane-major `[NP][W]`, scaled, zero in padding lanes and rows.
fn lane_params<const W: usize>(
    a: &[f32],
    n: usize,
    np: usize,
    nch: usize,
    scale: f32,
) -> Vec<[f32; W]> {
    let mut out = vec![[0.0f32; W]; np];
    for (i, row) in a.chunks_exact(n).take(nch).enumerate() {
        for (o, &v) in out.iter_mut().zip(row) {
            o[i] = v * scale;
        }
    }
    out
}

/// The first `nch` values of `v` as W lanes, zero beyond.
fn lane_vec<const W: usize>(v: &[f32], nch: usize) -> [f32; W] {
    let mut out = [0.0f32; W];
    out[..nch].copy_from_slice(&v[..nch]);
    out
}

/// `NB` consecutive rows of `rows` from `at`, as a fixed-size array reference.
#[inline(always)]
fn block<T, const NB: usize>(rows: &[T], at: usize) -> &[T; NB] {
    rows[at..]
        .first_chunk::<NB>()
        .expect("padded buffers hold a whole block from every block start")
}

/// Mutable version of [`block`].
#[inline(always)]
fn block_mut<T, const NB: usize>(rows: &mut [T], at: usize) -> &mut [T; NB] {
    rows[at..]
        .first_chunk_mut::<NB>()
        .expect("padded buffers hold a whole block from every block start")
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

/// Calls `$body::<W, NB, F>(args..)` for the state block size `$nb` (a power of two up to 8).
macro_rules! by_block8 {
    ($nb:expr, $body:ident :: <$w:literal, $f:literal> ($($arg:expr),*)) => {
        match $nb {
            1 => $body::<$w, 1, $f>($($arg),*),
            2 => $body::<$w, 2, $f>($($arg),*),
            4 => $body::<$w, 4, $f>($($arg),*),
            8 => $body::<$w, 8, $f>($($arg),*),
            nb => unreachable!("state block {nb} is not a power of two up to 8"),
        }
    };
}

/// Defines `$name(isa, layout, args..)`, which runs `$body::<W, NB, F>` compiled for the
/// instruction set, with the lane width and state block of `layout` as constants.
macro_rules! isa_dispatch {
    ($name:ident, $body:ident, ($($arg:ident : $ty:ty),*)) => {
        fn $name(isa: Isa, layout: Layout, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512(nb: usize, $($arg: $ty),*) {
                    match nb {
                        16 => $body::<16, 16, true>($($arg),*),
                        nb => by_block8!(nb, $body::<16, true>($($arg),*)),
                    }
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2(nb: usize, $($arg: $ty),*) {
                    by_block8!(nb, $body::<8, true>($($arg),*))
                }
                match isa {
                    // SAFETY: `Isa::detect` only returns these after checking the CPU has the features.
                    Isa::Avx512 => return unsafe { avx512(layout.nb, $($arg),*) },
                    // SAFETY: as above.
                    Isa::Avx2 => return unsafe { avx2(layout.nb, $($arg),*) },
                    Isa::Base => {}
                }
            }
            let _ = isa;
            by_block8!(layout.nb, $body::<8, false>($($arg),*))
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Forward, one group of channels at a time.
// ---------------------------------------------------------------------------------------------

/// One group of at most W channels of one direction and batch item.
struct GroupJob<'a> {
    n: usize,
    np: usize,
    len: usize,
    /// Steps per block; the state entering each block is what a checkpoint stores.
    chunk: usize,
    /// Real channels in the group (the rest of the W lanes is padding).
    nch: usize,
    /// [nch, L] rows of u and delta.
    u: &'a [f32],
    delta: &'a [f32],
    /// [nch, N] rows of A, [nch] of the bias and skip weight.
    a: &'a [f32],
    bias: &'a [f32],
    d_skip: &'a [f32],
    /// B and C of the direction, padded [L, NP].
    bt: &'a [f32],
    ct: &'a [f32],
}

/// Lane-major per-step values of a block of steps of one group.
struct LaneSeq<const W: usize> {
    /// Gathered delta, u and (backward) dy.
    delta: Vec<[f32; W]>,
    u: Vec<[f32; W]>,
    dy: Vec<[f32; W]>,
    /// dt = softplus(delta + bias), dt u, and sigmoid(delta + bias) = d dt / d delta.
    dt: Vec<[f32; W]>,
    dtu: Vec<[f32; W]>,
    sig: Vec<[f32; W]>,
}

impl<const W: usize> LaneSeq<W> {
    fn new(chunk: usize) -> Self {
        let v = || vec![[0.0f32; W]; chunk];
        Self {
            delta: v(),
            u: v(),
            dy: v(),
            dt: v(),
            dtu: v(),
            sig: v(),
        }
    }

    /// Gathers delta and u of steps `l0..l0 + m` and computes dt, dt u and sigmoid.
    #[inline(always)]
    fn load<const F: bool>(&mut self, j: &GroupJob, bias: &[f32; W], l0: usize, m: usize) {
        gather_lanes(j.delta, j.len, j.nch, l0, &mut self.delta[..m]);
        gather_lanes(j.u, j.len, j.nch, l0, &mut self.u[..m]);
        let outs = self
            .dt
            .iter_mut()
            .zip(self.dtu.iter_mut())
            .zip(self.sig.iter_mut());
        for (((dt, dtu), sig), (d, u)) in outs.zip(self.delta[..m].iter().zip(&self.u[..m])) {
            for i in 0..W {
                let (sp, sg) = softplus_sigmoid::<F>(d[i] + bias[i]);
                dt[i] = sp;
                dtu[i] = sp * u[i];
                sig[i] = sg;
            }
        }
    }
}

/// `m` steps of the recurrence for one block of NB state rows, from the state in `h`, which is
/// left holding the last state. With `Y`, adds each step's `C h` to `y`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn fwd_steps<const W: usize, const NB: usize, const F: bool, const Y: bool>(
    a2: &[[f32; W]; NB],
    h: &mut [[f32; W]; NB],
    bt: &[f32],
    ct: &[f32],
    np: usize,
    dt: &[[f32; W]],
    dtu: &[[f32; W]],
    y: &mut [[f32; W]],
) {
    let a2 = *a2;
    let mut hh = *h;
    for (s, (d, du)) in dt.iter().zip(dtu).enumerate() {
        let b: [f32; NB] = *block(bt, s * np);
        let c: [f32; NB] = if Y { *block(ct, s * np) } else { [0.0; NB] };
        let mut acc = [0.0f32; W];
        unroll16!(NB, |i| {
            for w in 0..W {
                // exp(dt a) = 2^(dt a log2 e); a2 has log2 e folded in.
                let e = exp2_fast::<F>(d[w] * a2[i][w]);
                hh[i][w] = madd::<F>(e, hh[i][w], du[w] * b[i]);
                if Y {
                    acc[w] = madd::<F>(c[i], hh[i][w], acc[w]);
                }
            }
        });
        if Y {
            for w in 0..W {
                y[s][w] += acc[w];
            }
        }
    }
    *h = hh;
}

/// One pass over L for a group: writes y rows ([nch, L]) if given, and the state entering every
/// block of `chunk` steps into `ckpt` ([n_chunks][NP][W]) if given. Without `y`, the last
/// block's steps are skipped (nothing would read their states).
#[inline(always)]
fn fwd_group_body<const W: usize, const NB: usize, const F: bool>(
    j: &GroupJob,
    mut y: Option<&mut [f32]>,
    mut ckpt: Option<&mut [f32]>,
) {
    let (np, len, chunk) = (j.np, j.len, j.chunk);
    let a2 = lane_params::<W>(j.a, j.n, np, j.nch, LOG2E);
    let bias = lane_vec::<W>(j.bias, j.nch);
    let d_skip = lane_vec::<W>(j.d_skip, j.nch);
    let mut h = vec![[0.0f32; W]; np];
    let mut seq = LaneSeq::<W>::new(chunk);
    let mut yl = vec![[0.0f32; W]; chunk];
    for (c, l0) in (0..len).step_by(chunk).enumerate() {
        let m = chunk.min(len - l0);
        if let Some(ck) = ckpt.as_deref_mut() {
            ck[c * np * W..][..np * W].copy_from_slice(h.as_flattened());
        }
        if y.is_none() && l0 + m == len {
            break;
        }
        seq.load::<F>(j, &bias, l0, m);
        let (dt, dtu) = (&seq.dt[..m], &seq.dtu[..m]);
        for (yl, u) in yl.iter_mut().zip(&seq.u[..m]) {
            for w in 0..W {
                yl[w] = d_skip[w] * u[w];
            }
        }
        for b0 in (0..np).step_by(NB) {
            let (bt, ct) = (&j.bt[l0 * np + b0..], &j.ct[l0 * np + b0..]);
            let (a2, hb) = (block::<_, NB>(&a2, b0), block_mut::<_, NB>(&mut h, b0));
            if y.is_some() {
                fwd_steps::<W, NB, F, true>(a2, hb, bt, ct, np, dt, dtu, &mut yl[..m]);
            } else {
                fwd_steps::<W, NB, F, false>(a2, hb, bt, ct, np, dt, dtu, &mut yl[..m]);
            }
        }
        if let Some(y) = y.as_deref_mut() {
            scatter_lanes(&yl[..m], y, len, j.nch, l0);
        }
    }
}

isa_dispatch!(fwd_group, fwd_group_body, (j: &GroupJob, y: Option<&mut [f32]>, ckpt: Option<&mut [f32]>));

/// Splits `buf` into consecutive pieces of the given sizes.
fn carve(mut buf: &mut [f32], sizes: impl IntoIterator<Item = usize>) -> Vec<&mut [f32]> {
    let mut out = Vec::new();
    for size in sizes {
        let (head, tail) = std::mem::take(&mut buf).split_at_mut(size);
        out.push(head);
        buf = tail;
    }
    out
}

fn forward_with(isa: Isa, dims: ScanDims, x: &ScanInputs) -> Vec<f32> {
    if let Err(e) = dims.check(x) {
        panic!("scan_forward: {e}");
    }
    let ScanDims {
        batch,
        k_dirs,
        channels,
        d_state: n,
        len,
    } = dims;
    let mut y = vec![0.0; x.u.len()];
    if y.is_empty() {
        return y;
    }
    let per_dir = dims.per_dir();
    let layout = Layout::new(isa, n);
    let (w, np) = (layout.w, layout.np);
    let bt = pad_transpose_groups(x.bm, n, len, np);
    let ct = pad_transpose_groups(x.cm, n, len, np);
    // One task per group of W channels: (batch, direction, first channel in the direction).
    let mut tasks = Vec::new();
    for b in 0..batch {
        for k in 0..k_dirs {
            for e0 in (0..per_dir).step_by(w) {
                tasks.push((b, k, e0, w.min(per_dir - e0)));
            }
        }
    }
    let outs = carve(&mut y, tasks.iter().map(|t| t.3 * len));
    tasks
        .into_par_iter()
        .zip(outs)
        .for_each(|((b, k, e0, nch), y)| {
            let d0 = k * per_dir + e0;
            let row0 = b * channels + d0;
            let g = b * k_dirs + k;
            let job = GroupJob {
                n,
                np,
                len,
                chunk: CHUNK,
                nch,
                u: &x.u[row0 * len..][..nch * len],
                delta: &x.delta[row0 * len..][..nch * len],
                a: &x.a[d0 * n..][..nch * n],
                bias: &x.delta_bias[d0..][..nch],
                d_skip: &x.d_skip[d0..][..nch],
                bt: &bt[g * len * np..][..len * np],
                ct: &ct[g * len * np..][..len * np],
            };
            fwd_group(isa, layout, &job, Some(y), None);
        });
    y
}

// ---------------------------------------------------------------------------------------------
// Backward.
// ---------------------------------------------------------------------------------------------

/// Inputs of one backward task: a run of whole groups of one direction and batch item.
struct BwdTask<'a> {
    n: usize,
    np: usize,
    len: usize,
    chunk: usize,
    /// Channels in the task.
    e_ch: usize,
    /// [e_ch, L] rows of u, delta and dy.
    u: &'a [f32],
    delta: &'a [f32],
    dy: &'a [f32],
    /// [e_ch, N] rows of A; [e_ch] of the bias and skip weight.
    a: &'a [f32],
    bias: &'a [f32],
    d_skip: &'a [f32],
    /// B and C of the direction, padded [L, NP].
    bt: &'a [f32],
    ct: &'a [f32],
}

/// Outputs of one backward task.
struct BwdOut<'a> {
    /// [e_ch, L].
    du: &'a mut [f32],
    ddelta: &'a mut [f32],
    /// This task's share of dB and dC, [N, L] (every value written).
    dbm: &'a mut [f32],
    dcm: &'a mut [f32],
    /// [e_ch, N] and [e_ch]: this batch item's share of the parameter gradients.
    da: &'a mut [f32],
    dd_skip: &'a mut [f32],
    dbias: &'a mut [f32],
}

/// Per-block-of-steps buffers of the backward pass, all lane-major.
struct BwdChunk<'a, const W: usize, const NB: usize> {
    /// Recomputed states and decays exp(dt a) of the block of steps, [m][NB][W].
    hs: &'a mut [[[f32; W]; NB]],
    es: &'a mut [[[f32; W]; NB]],
    /// Lane-wise partial sums of dB and dC over the task's groups, [m][NP][W], from this state block on.
    dbp: &'a mut [[f32; W]],
    dcp: &'a mut [[f32; W]],
    /// du and the gradient of dt (before the softplus), [m][W], summed over state blocks.
    du: &'a mut [[f32; W]],
    ddt: &'a mut [[f32; W]],
}

/// Backward of one block of steps for one group and one block of NB state rows.
///
/// Recomputes the block's states from the one entering it (`h0`), then walks the steps in
/// reverse with `carry` = exp(dt_{t+1} a) dL/dh_{t+1}, the adjoint reaching h_t from the next
/// step, and `da` in registers.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn bwd_block<const W: usize, const NB: usize, const F: bool>(
    a: &[[f32; W]; NB],
    a2: &[[f32; W]; NB],
    h0: &[[f32; W]; NB],
    carry: &mut [[f32; W]; NB],
    da: &mut [[f32; W]; NB],
    bt: &[f32],
    ct: &[f32],
    np: usize,
    q: &LaneSeq<W>,
    m: usize,
    k: BwdChunk<W, NB>,
) {
    let a2 = *a2;
    let mut h = *h0;
    for s in 0..m {
        let (d, du, dy) = (q.dt[s], q.dtu[s], q.dy[s]);
        let b: [f32; NB] = *block(bt, s * np);
        let dc = block_mut::<_, NB>(k.dcp, s * np);
        let mut e = [[0.0f32; W]; NB];
        unroll16!(NB, |i| {
            for w in 0..W {
                e[i][w] = exp2_fast::<F>(d[w] * a2[i][w]);
                h[i][w] = madd::<F>(e[i][w], h[i][w], du[w] * b[i]);
                // dC_t = sum over channels of h_t dy_t.
                dc[i][w] = madd::<F>(h[i][w], dy[w], dc[i][w]);
            }
        });
        k.es[s] = e;
        k.hs[s] = h;
    }
    let a = *a;
    let mut cr = *carry;
    let mut dacc = *da;
    for s in (0..m).rev() {
        let (d, du, dy, u) = (q.dt[s], q.dtu[s], q.dy[s], q.u[s]);
        let b: [f32; NB] = *block(bt, s * np);
        let c: [f32; NB] = *block(ct, s * np);
        let hp = if s > 0 { &k.hs[s - 1] } else { h0 };
        let e = &k.es[s];
        let db = block_mut::<_, NB>(k.dbp, s * np);
        let mut gb = [0.0f32; W];
        let mut pa = [0.0f32; W];
        unroll16!(NB, |i| {
            for w in 0..W {
                // g = dL/dh_t: from y_t through C, plus what flows back from h_{t+1}.
                let g = madd::<F>(c[i], dy[w], cr[i][w]);
                db[i][w] = madd::<F>(g, du[w], db[i][w]);
                gb[w] = madd::<F>(g, b[i], gb[w]);
                let ge = g * e[i][w];
                cr[i][w] = ge;
                // g exp(dt a) h_{t-1} is shared by dA (times dt) and d dt (times a).
                let gq = ge * hp[i][w];
                pa[w] = madd::<F>(gq, a[i][w], pa[w]);
                dacc[i][w] = madd::<F>(gq, d[w], dacc[i][w]);
            }
        });
        for w in 0..W {
            k.du[s][w] = madd::<F>(d[w], gb[w], k.du[s][w]);
            k.ddt[s][w] = madd::<F>(u[w], gb[w], k.ddt[s][w] + pa[w]);
        }
    }
    *carry = cr;
    *da = dacc;
}

#[inline(always)]
fn bwd_task_body<const W: usize, const NB: usize, const F: bool>(t: &BwdTask, o: &mut BwdOut) {
    let (n, np, len, chunk) = (t.n, t.np, t.len, t.chunk);
    let groups = t.e_ch.div_ceil(W);
    let n_chunks = len.div_ceil(chunk);
    let group_job = |g: usize| {
        let (e0, nch) = (g * W, W.min(t.e_ch - g * W));
        GroupJob {
            n,
            np,
            len,
            chunk,
            nch,
            u: &t.u[e0 * len..][..nch * len],
            delta: &t.delta[e0 * len..][..nch * len],
            a: &t.a[e0 * n..][..nch * n],
            bias: &t.bias[e0..][..nch],
            d_skip: &t.d_skip[e0..][..nch],
            bt: t.bt,
            ct: t.ct,
        }
    };
    // The state entering every block of steps, for every group: [groups][n_chunks][NP][W].
    let ck_len = n_chunks * np * W;
    let mut ckpt = vec![0.0f32; groups * ck_len];
    for (g, ck) in ckpt.chunks_exact_mut(ck_len).enumerate() {
        fwd_group_body::<W, NB, F>(&group_job(g), None, Some(ck));
    }
    let a_l: Vec<Vec<[f32; W]>> = (0..groups)
        .map(|g| {
            let j = group_job(g);
            lane_params::<W>(j.a, n, np, j.nch, 1.0)
        })
        .collect();
    let a2_l: Vec<Vec<[f32; W]>> = a_l
        .iter()
        .map(|a| a.iter().map(|r| r.map(|v| v * LOG2E)).collect())
        .collect();
    let mut carry = vec![[0.0f32; W]; groups * np];
    let mut da = vec![[0.0f32; W]; groups * np];
    let mut dskip_acc = vec![[0.0f32; W]; groups];
    let mut dbias_acc = vec![[0.0f32; W]; groups];
    let mut seq = LaneSeq::<W>::new(chunk);
    let mut hs = vec![[[0.0f32; W]; NB]; chunk];
    let mut es = vec![[[0.0f32; W]; NB]; chunk];
    let mut dbp = vec![[0.0f32; W]; chunk * np];
    let mut dcp = vec![[0.0f32; W]; chunk * np];
    let mut du = vec![[0.0f32; W]; chunk];
    let mut ddt = vec![[0.0f32; W]; chunk];

    for c in (0..n_chunks).rev() {
        let l0 = c * chunk;
        let m = chunk.min(len - l0);
        dbp.fill([0.0; W]);
        dcp.fill([0.0; W]);
        for g in 0..groups {
            let j = group_job(g);
            let (e0, nch) = (g * W, j.nch);
            let bias = lane_vec::<W>(j.bias, nch);
            let d_skip = lane_vec::<W>(j.d_skip, nch);
            seq.load::<F>(&j, &bias, l0, m);
            gather_lanes(
                &t.dy[e0 * len..][..nch * len],
                len,
                nch,
                l0,
                &mut seq.dy[..m],
            );
            let acc = &mut dskip_acc[g];
            for s in 0..m {
                let (dy, u) = (seq.dy[s], seq.u[s]);
                for w in 0..W {
                    du[s][w] = d_skip[w] * dy[w];
                    ddt[s][w] = 0.0;
                    acc[w] = madd::<F>(dy[w], u[w], acc[w]);
                }
            }
            let ck = &ckpt[g * ck_len + c * np * W..][..np * W];
            let (ck, _) = ck.as_chunks::<W>();
            for b0 in (0..np).step_by(NB) {
                let gi = g * np + b0;
                let k = BwdChunk {
                    hs: &mut hs[..m],
                    es: &mut es[..m],
                    dbp: &mut dbp[b0..],
                    dcp: &mut dcp[b0..],
                    du: &mut du[..m],
                    ddt: &mut ddt[..m],
                };
                bwd_block::<W, NB, F>(
                    block(&a_l[g], b0),
                    block(&a2_l[g], b0),
                    block(ck, b0),
                    block_mut(&mut carry, gi),
                    block_mut(&mut da, gi),
                    &t.bt[l0 * np + b0..],
                    &t.ct[l0 * np + b0..],
                    np,
                    &seq,
                    m,
                    k,
                );
            }
            // d delta = d dt * sigmoid(delta + bias); d bias is its sum over steps.
            let acc = &mut dbias_acc[g];
            for (ddt, sig) in ddt[..m].iter_mut().zip(&seq.sig[..m]) {
                for w in 0..W {
                    ddt[w] *= sig[w];
                    acc[w] += ddt[w];
                }
            }
            scatter_lanes(&du[..m], &mut o.du[e0 * len..][..nch * len], len, nch, l0);
            scatter_lanes(
                &ddt[..m],
                &mut o.ddelta[e0 * len..][..nch * len],
                len,
                nch,
                l0,
            );
        }
        // dB and dC of these steps: sums over the lanes of the group partial sums.
        for s in 0..m {
            for i in 0..n {
                o.dbm[i * len + l0 + s] = lane_sum(dbp[s * np + i]);
                o.dcm[i * len + l0 + s] = lane_sum(dcp[s * np + i]);
            }
        }
    }
    for g in 0..groups {
        let (e0, nch) = (g * W, W.min(t.e_ch - g * W));
        for w in 0..nch {
            for i in 0..n {
                o.da[(e0 + w) * n + i] = da[g * np + i][w];
            }
            o.dd_skip[e0 + w] = dskip_acc[g][w];
            o.dbias[e0 + w] = dbias_acc[g][w];
        }
    }
}

isa_dispatch!(bwd_task, bwd_task_body, (t: &BwdTask, o: &mut BwdOut));

/// Backward tasks per (batch, direction): enough for every thread to have a few, but no more
/// than the direction has groups. Each extra part costs a [N, L] partial of dB and dC.
fn default_parts(tasks: usize, groups: usize) -> usize {
    let threads = rayon::current_num_threads();
    (2 * threads).div_ceil(tasks.max(1)).clamp(1, groups.max(1))
}

fn backward_with(isa: Isa, chunk: usize, dims: ScanDims, x: &ScanInputs, dy: &[f32]) -> ScanGrads {
    backward_parts(isa, chunk, None, dims, x, dy)
}

/// The backward pass with each direction's groups split into `parts` tasks (default: see
/// [`default_parts`]).
fn backward_parts(
    isa: Isa,
    chunk: usize,
    parts: Option<usize>,
    dims: ScanDims,
    x: &ScanInputs,
    dy: &[f32],
) -> ScanGrads {
    if let Err(e) = dims.check(x) {
        panic!("scan_backward: {e}");
    }
    assert_eq!(
        dy.len(),
        x.u.len(),
        "scan_backward: dy must be [B, D, L] like u"
    );
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
    let layout = Layout::new(isa, n);
    let (w, np) = (layout.w, layout.np);
    let groups = per_dir.div_ceil(w);
    let parts = parts
        .unwrap_or_else(|| default_parts(batch * k_dirs, groups))
        .clamp(1, groups);
    let bt = pad_transpose_groups(x.bm, n, len, np);
    let ct = pad_transpose_groups(x.cm, n, len, np);
    // Tasks (batch, direction, first channel, channels), in memory order of u's rows.
    let mut tasks = Vec::new();
    for b in 0..batch {
        for k in 0..k_dirs {
            for p in 0..parts {
                let (g0, g1) = (p * groups / parts, (p + 1) * groups / parts);
                let (e0, e1) = (g0 * w, (g1 * w).min(per_dir));
                tasks.push((b, k, e0, e1 - e0));
            }
        }
    }
    // Per-batch shares of the parameter gradients (summed over the batch at the end), and
    // per-task shares of dB and dC when a direction is split.
    let mut da_b = vec![0.0f32; batch * channels * n];
    let mut dskip_b = vec![0.0f32; batch * channels];
    let mut dbias_b = vec![0.0f32; batch * channels];
    let mut bc_parts = vec![
        0.0f32;
        if parts > 1 {
            2 * tasks.len() * n * len
        } else {
            0
        }
    ];
    let (dbms, dcms) = if parts > 1 {
        let (db, dc) = bc_parts.split_at_mut(tasks.len() * n * len);
        (
            carve(db, tasks.iter().map(|_| n * len)),
            carve(dc, tasks.iter().map(|_| n * len)),
        )
    } else {
        (
            carve(&mut g.bm, tasks.iter().map(|_| n * len)),
            carve(&mut g.cm, tasks.iter().map(|_| n * len)),
        )
    };
    let dus = carve(&mut g.u, tasks.iter().map(|t| t.3 * len));
    let ddeltas = carve(&mut g.delta, tasks.iter().map(|t| t.3 * len));
    let das = carve(&mut da_b, tasks.iter().map(|t| t.3 * n));
    let dskips = carve(&mut dskip_b, tasks.iter().map(|t| t.3));
    let dbiases = carve(&mut dbias_b, tasks.iter().map(|t| t.3));
    let outs: Vec<BwdOut> = dus
        .into_iter()
        .zip(ddeltas)
        .zip(dbms.into_iter().zip(dcms))
        .zip(das.into_iter().zip(dskips).zip(dbiases))
        .map(
            |(((du, ddelta), (dbm, dcm)), ((da, dd_skip), dbias))| BwdOut {
                du,
                ddelta,
                dbm,
                dcm,
                da,
                dd_skip,
                dbias,
            },
        )
        .collect();
    let n_tasks = tasks.len();
    tasks
        .into_par_iter()
        .zip(outs)
        .for_each(|((b, k, e0, e_ch), mut out)| {
            let d0 = k * per_dir + e0;
            let row0 = b * channels + d0;
            let gi = b * k_dirs + k;
            let task = BwdTask {
                n,
                np,
                len,
                chunk,
                e_ch,
                u: &x.u[row0 * len..][..e_ch * len],
                delta: &x.delta[row0 * len..][..e_ch * len],
                dy: &dy[row0 * len..][..e_ch * len],
                a: &x.a[d0 * n..][..e_ch * n],
                bias: &x.delta_bias[d0..][..e_ch],
                d_skip: &x.d_skip[d0..][..e_ch],
                bt: &bt[gi * len * np..][..len * np],
                ct: &ct[gi * len * np..][..len * np],
            };
            bwd_task(isa, layout, &task, &mut out);
        });
    if parts > 1 {
        let nl = n * len;
        let (db, dc) = bc_parts.split_at(n_tasks * nl);
        for (dst, src) in [(&mut g.bm, db), (&mut g.cm, dc)] {
            dst.par_chunks_mut(nl)
                .zip(src.par_chunks(parts * nl))
                .for_each(|(dst, src)| {
                    for part in src.chunks_exact(nl) {
                        for (d, s) in dst.iter_mut().zip(part) {
                            *d += s;
                        }
                    }
                });
        }
    }
    for b in 0..batch {
        for (acc, v) in
            g.a.iter_mut()
                .zip(&da_b[b * channels * n..][..channels * n])
        {
            *acc += v;
        }
        for (acc, v) in g
            .d_skip
            .iter_mut()
            .zip(&dskip_b[b * channels..][..channels])
        {
            *acc += v;
        }
        for (acc, v) in g
            .delta_bias
            .iter_mut()
            .zip(&dbias_b[b * channels..][..channels])
        {
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
        fn random(
            batch: usize,
            k_dirs: usize,
            per_dir: usize,
            d_state: usize,
            len: usize,
            seed: u64,
        ) -> Self {
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
        let err = got
            .iter()
            .zip(want)
            .fold(0.0f64, |m, (&g, &w)| m.max((f64::from(g) - w).abs()));
        assert!(
            scale > 0.0,
            "reference is all zeros, the comparison would be vacuous"
        );
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
                let e = if isa_fma {
                    exp2_fast::<true>(x)
                } else {
                    exp2_fast::<false>(x)
                };
                let want = f64::from(x).exp2();
                worst_exp = worst_exp.max((f64::from(e) - want).abs() / want);
                let x2 = x * 2.0; // [-80, 80]
                let e = if isa_fma {
                    exp_fast::<true>(x2)
                } else {
                    exp_fast::<false>(x2)
                };
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
        // State sizes that are not a power of two, or above one block of state rows.
        cases.push((1, 2, 3, 5, 70));
        cases.push((2, 1, 2, 3, 9));
        cases.push((1, 2, 1, 32, 33));
        // More channels than lanes: several groups per direction, the last one partial.
        cases.push((1, 2, 37, 16, 70));
        cases.push((2, 1, 20, 5, 65));
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
    fn check_grads(
        batch: usize,
        k: usize,
        e: usize,
        n: usize,
        len: usize,
        chunk: usize,
        seed: u64,
    ) {
        let x = Owned::random(batch, k, e, n, len, seed);
        let mut rng = StdRng::seed_from_u64(seed + 1000);
        let w: Vec<f32> = (0..x.u.len())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let w64 = widen(&w);
        let base = RefInputs::from_f32(&x.inputs());
        let loss = |r: &RefInputs| -> f64 {
            scan_forward_f64(x.dims, r)
                .iter()
                .zip(&w64)
                .map(|(y, w)| y * w)
                .sum()
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
            // Directions split into up to three tasks (only where they have that many groups).
            for parts in [None, Some(1), Some(2), Some(3)] {
                let g = backward_parts(isa, chunk, parts, x.dims, &x.inputs(), &w);
                let got = [&g.u, &g.delta, &g.a, &g.bm, &g.cm, &g.d_skip, &g.delta_bias];
                for ((name, want), got) in fd.iter().zip(got) {
                    let err = rel_err(got, want);
                    assert!(
                        err < 1e-3,
                        "{isa:?} chunk {chunk} parts {parts:?} {:?}: d{name} rel err {err}",
                        x.dims
                    );
                }
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
    fn grads_match_finite_differences_many_groups() {
        // More channels than lanes, not a multiple of them: several groups, the last one partial,
        // and directions split into several backward tasks.
        check_grads(1, 2, 37, 3, 11, 4, 25);
        check_grads(2, 1, 20, 8, 9, 64, 26);
    }

    #[test]
    fn backward_is_independent_of_chunk_and_isa() {
        let x = Owned::random(2, 4, 3, 16, 200, 31);
        let mut rng = StdRng::seed_from_u64(32);
        let dy: Vec<f32> = (0..x.u.len())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
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
        let uneven = ScanDims {
            channels: 3,
            ..x.dims
        };
        assert!(uneven.check(&x.inputs()).is_err());
        let zero_k = ScanDims {
            k_dirs: 0,
            ..x.dims
        };
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
