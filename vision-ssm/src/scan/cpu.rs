//! Fused CPU selective scan (VMamba layout) with a hand-written backward pass, on plain slices.
//!
//! Semantics, all float32 row-major: channel `d` of `D = K * E` belongs to direction `k = d / E`;
//! `dt = softplus(delta[b,d,l] + delta_bias[d])`,
//! `h[n] = exp(dt * a[d,n]) * h[n] + dt * bm[b,k,n,l] * u[b,d,l]` (from `h = 0`),
//! `y[b,d,l] = sum_n cm[b,k,n,l] * h[n] + d_skip[d] * u[b,d,l]`.
//!
//! Speed comes from:
//! 1. One sequential pass over L per *group* of W channels of one direction (W = 16 with
//!    AVX-512, 8 otherwise), vectorised across the channels, with the group's whole state
//!    (`[N][W]`) in vector registers. B_t and C_t are the same for every channel of a direction, so
//!    each step broadcasts them, and the sums over the state (y, du, d delta) accumulate
//!    lane-wise with no horizontal sums. Per state element and step that leaves about a dozen
//!    vector instructions, most of them the exponential.
//! 2. Explicit SIMD: the kernels are written once over `Simd` (AVX-512, AVX2+FMA, or portable
//!    arrays), compiled for each instruction set and picked at run time, because the workspace
//!    builds for baseline x86-64; a branch-free polynomial exp2 (`vscalefps` for the exponent
//!    with AVX-512) replaces libm's scalar `expf`.
//! 3. Memory: u, delta, dy, du, d delta are moved between their [D, L] rows and the lane-major
//!    blocks the kernels use with register transposes, and the next block's rows are prefetched.
//!
//! The backward pass never stores [B, D, L, N]: the forward pass can keep the state entering
//! every block of [`CHUNK`] steps ([`scan_forward_saving`]; otherwise the backward pass recomputes
//! those first), and the backward pass walks the blocks in reverse, recomputing one block's
//! states at a time. It runs in parallel over (batch, direction, part of the direction's
//! channels); dB and dC, sums over the direction's channels, accumulate lane-wise per block and
//! are reduced once per block, with a partial per part when a direction is split.

use rayon::prelude::*;

/// Steps between stored state checkpoints (the blocks the backward pass recomputes).
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

/// What a forward pass keeps for the backward pass: the state entering every block of [`CHUNK`]
/// steps of every channel, 1/CHUNK of all the states (no [B, D, L, N] tensor).
#[derive(Clone, Debug, PartialEq)]
pub struct ScanCheckpoints {
    dims: ScanDims,
    isa: Isa,
    chunk: usize,
    /// [B, K, groups, chunks, NP, W], in the instruction set's lane layout.
    data: Vec<f32>,
}

impl ScanCheckpoints {
    /// Bytes of state held.
    pub fn bytes(&self) -> usize {
        4 * self.data.len()
    }
}

/// Output y [B, D, L], and the checkpoints that let [`scan_backward_from`] skip recomputing the
/// states from the start. Panics if `dims.check(x)` fails.
pub fn scan_forward_saving(dims: ScanDims, x: &ScanInputs) -> (Vec<f32>, ScanCheckpoints) {
    let isa = Isa::detect();
    let (y, data) = forward_impl(isa, CHUNK, true, dims, x);
    let saved = ScanCheckpoints {
        dims,
        isa,
        chunk: CHUNK,
        data,
    };
    (y, saved)
}

/// Like [`scan_backward`], from the checkpoints [`scan_forward_saving`] returned for the same
/// inputs. Panics if `dims.check(x)` fails, `dy` is not [B, D, L] or `saved` is for other sizes.
pub fn scan_backward_from(
    dims: ScanDims,
    x: &ScanInputs,
    dy: &[f32],
    saved: &ScanCheckpoints,
) -> ScanGrads {
    assert_eq!(
        saved.dims, dims,
        "scan_backward_from: checkpoints of another shape"
    );
    backward_parts(saved.isa, saved.chunk, None, Some(&saved.data), dims, x, dy)
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
// Vectors. The kernels are written once over `Simd`, a vector of W float32 lanes, implemented
// with AVX-512 (W = 16), AVX2+FMA (W = 8) and portable arrays (W = 8, no FMA). The hot loops are
// unrolled in the source over the state rows, so the state stays in registers. A value of an
// implementing type proves the CPU has its instruction set (it is only made after detection),
// which is what makes the methods safe to call.
// ---------------------------------------------------------------------------------------------

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// Adding 1.5 * 2^23 rounds to an integer held in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;
/// Coefficients (ascending) of a degree-5 Chebyshev fit of 2^f on [-0.5, 0.5]: 1.0e-7 relative
/// error, about one float32 rounding.
// The linear coefficient is the fit's, which happens to round to ln 2 in float32.
#[allow(clippy::approx_constant)]
const EXP2_C: [f32; 6] = [
    1.000_000_1,
    0.693_147_2,
    0.240_221_07,
    0.055_503_57,
    0.009_676_032,
    0.001_339_086_3,
];
/// Cody-Waite split of ln 2: the high part has few bits, so n * LN2_HI is exact for |n| < 2^15.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// A vector of `W` float32 lanes and the operations the kernels need.
trait Simd: Copy + Send + Sync {
    /// Lanes per vector.
    const W: usize;
    /// The vector type: exactly W float32 values, no padding.
    type V: Copy;
    /// Every lane `x`.
    fn splat(self, x: f32) -> Self::V;
    /// Lanes `a + b`.
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// Lanes `a - b`.
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    /// Lanes `a * b`.
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    /// Lanes `1 / a` to within about one float32 rounding.
    fn recip(self, a: Self::V) -> Self::V;
    /// Lanes `a / b`, correctly rounded or nearly so.
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    /// Lanes `a * b + c`, fused where the instruction set has FMA.
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Lane-wise minimum.
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise maximum.
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    /// Lanes `|a|`.
    fn abs(self, a: Self::V) -> Self::V;
    /// Lanes `if a > b { x } else { y }`.
    fn select_gt(self, a: Self::V, b: Self::V, x: Self::V, y: Self::V) -> Self::V;
    /// Lanes rounded to the nearest integer (ties to even), for |a| < 2^22.
    fn round(self, a: Self::V) -> Self::V;
    /// Lanes clamped to the range where [`Simd::ldexp`] of their rounding is exact: at least -126,
    /// and at most 127 unless `ldexp` handles overflow itself.
    fn clamp_exp2(self, a: Self::V) -> Self::V;
    /// Lanes `p * 2^n` for integral `n` in [-126, 127].
    fn ldexp(self, p: Self::V, n: Self::V) -> Self::V;
    /// Sum of the lanes.
    fn hsum(self, a: Self::V) -> f32;
    /// Lane j = the sum of the lanes of `v[j]`, for the first W vectors of `v`.
    fn hsum_rows(self, v: &[Self::V]) -> Self::V;
    /// Transposes a W x W tile: `dst[j]` lane `i` = `src[i * stride + j]`.
    fn transpose_in(self, src: &[f32], stride: usize, dst: &mut [Self::V]);
    /// The inverse of [`Simd::transpose_in`]: `dst[i * stride + j]` = `src[j]` lane `i`.
    fn transpose_out(self, src: &[Self::V], dst: &mut [f32], stride: usize);

    /// All lanes zero.
    #[inline(always)]
    fn zero(self) -> Self::V {
        self.splat(0.0)
    }
}

/// The lanes of a slice of vectors, in order.
#[inline(always)]
fn flat<S: Simd>(v: &[S::V]) -> &[f32] {
    const { assert!(std::mem::size_of::<S::V>() == 4 * S::W) };
    // SAFETY: every `Simd::V` is exactly W float32 values with no padding (checked above) and
    // has at least float32 alignment, so the slice's memory is `len * W` valid floats.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<f32>(), v.len() * S::W) }
}

/// Mutable version of [`flat`].
#[inline(always)]
fn flat_mut<S: Simd>(v: &mut [S::V]) -> &mut [f32] {
    const { assert!(std::mem::size_of::<S::V>() == 4 * S::W) };
    // SAFETY: as in `flat`; any bit pattern is a valid float32 and a valid vector.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<f32>(), v.len() * S::W) }
}

/// 2^t, for t at least -126 (below, 2^-126: the result is never 0 or subnormal, which would be
/// slow to compute with); above 127 it is +inf with AVX-512 and 2^127 otherwise.
#[inline(always)]
fn vexp2<S: Simd>(s: S, t: S::V) -> S::V {
    let t = s.clamp_exp2(t);
    let nf = s.round(t);
    let f = s.sub(t, nf);
    let mut p = s.fma(f, s.splat(EXP2_C[5]), s.splat(EXP2_C[4]));
    for &c in EXP2_C[..4].iter().rev() {
        p = s.fma(p, f, s.splat(c));
    }
    s.ldexp(p, nf)
}

/// e^x for x clamped to [-87, 88]; unlike `vexp2(x * LOG2E)` it does not lose accuracy for
/// large |x| to the rounding of the product.
#[inline(always)]
fn vexp<S: Simd>(s: S, x: S::V) -> S::V {
    let x = s.min(s.max(x, s.splat(-87.0)), s.splat(88.0));
    let k = s.fma(x, s.splat(LOG2E), s.splat(ROUND_MAGIC));
    let nf = s.sub(k, s.splat(ROUND_MAGIC));
    let r = s.fma(nf, s.splat(-LN2_LO), s.fma(nf, s.splat(-LN2_HI), x));
    let mut p = s.splat(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = s.fma(p, r, s.splat(c));
    }
    s.ldexp(p, nf)
}

/// (softplus(x), sigmoid(x)), both from z = e^-|x| so neither overflows; softplus is x above 20.
/// Without `SIG` the sigmoid is not computed (zero).
#[inline(always)]
fn vsoftplus_sigmoid<S: Simd, const SIG: bool>(s: S, x: S::V) -> (S::V, S::V) {
    let (zero, one) = (s.zero(), s.splat(1.0));
    let z = vexp(s, s.sub(zero, s.abs(x)));
    // log1p(z) = 2 atanh(q) with q = z / (2 + z) <= 1/3: an odd series accurate for tiny z too,
    // where ln(1 + z) would lose every digit of z to rounding.
    let q = s.div(z, s.add(s.splat(2.0), z));
    let q2 = s.mul(q, q);
    let mut p = s.splat(1.0 / 15.0);
    for c in [
        1.0 / 13.0,
        1.0 / 11.0,
        1.0 / 9.0,
        1.0 / 7.0,
        1.0 / 5.0,
        1.0 / 3.0,
        1.0,
    ] {
        p = s.fma(p, q2, s.splat(c));
    }
    let log1p = s.mul(s.add(q, q), p);
    let sp = s.select_gt(x, s.splat(20.0), x, s.add(s.max(x, zero), log1p));
    if !SIG {
        return (sp, zero);
    }
    let r = s.recip(s.add(one, z));
    let sig = s.select_gt(x, zero, r, s.mul(z, r));
    (sp, sig)
}

/// Portable vectors of 8 lanes (plain arrays the compiler vectorises as it can), no FMA.
#[derive(Clone, Copy, Debug)]
struct Portable;

impl Portable {
    #[inline(always)]
    fn map2(a: [f32; 8], b: [f32; 8], f: impl Fn(f32, f32) -> f32) -> [f32; 8] {
        std::array::from_fn(|i| f(a[i], b[i]))
    }
}

impl Simd for Portable {
    const W: usize = 8;
    type V = [f32; 8];

    #[inline(always)]
    fn splat(self, x: f32) -> [f32; 8] {
        [x; 8]
    }
    #[inline(always)]
    fn add(self, a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        Self::map2(a, b, |a, b| a + b)
    }
    #[inline(always)]
    fn sub(self, a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        Self::map2(a, b, |a, b| a - b)
    }
    #[inline(always)]
    fn mul(self, a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        Self::map2(a, b, |a, b| a * b)
    }
    #[inline(always)]
    fn recip(self, a: [f32; 8]) -> [f32; 8] {
        a.map(|a| 1.0 / a)
    }
    #[inline(always)]
    fn div(self, a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        Self::map2(a, b, |a, b| a / b)
    }
    #[inline(always)]
    fn fma(self, a: [f32; 8], b: [f32; 8], c: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i] * b[i] + c[i])
    }
    #[inline(always)]
    fn min(self, a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        Self::map2(a, b, |a, b| if a < b { a } else { b })
    }
    #[inline(always)]
    fn max(self, a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        Self::map2(a, b, |a, b| if a > b { a } else { b })
    }
    #[inline(always)]
    fn abs(self, a: [f32; 8]) -> [f32; 8] {
        a.map(f32::abs)
    }
    #[inline(always)]
    fn select_gt(self, a: [f32; 8], b: [f32; 8], x: [f32; 8], y: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| if a[i] > b[i] { x[i] } else { y[i] })
    }
    #[inline(always)]
    fn round(self, a: [f32; 8]) -> [f32; 8] {
        a.map(|v| (v + ROUND_MAGIC) - ROUND_MAGIC)
    }
    #[inline(always)]
    fn clamp_exp2(self, a: [f32; 8]) -> [f32; 8] {
        self.min(self.max(a, [-126.0; 8]), [127.0; 8])
    }
    #[inline(always)]
    fn ldexp(self, p: [f32; 8], n: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| p[i] * f32::from_bits(((n[i] as i32 + 127) as u32) << 23))
    }
    #[inline(always)]
    fn hsum(self, a: [f32; 8]) -> f32 {
        ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
    }
    #[inline(always)]
    fn hsum_rows(self, v: &[[f32; 8]]) -> [f32; 8] {
        std::array::from_fn(|j| self.hsum(v[j]))
    }
    #[inline(always)]
    fn transpose_in(self, src: &[f32], stride: usize, dst: &mut [[f32; 8]]) {
        for (j, d) in dst[..8].iter_mut().enumerate() {
            *d = std::array::from_fn(|i| src[i * stride + j]);
        }
    }
    #[inline(always)]
    fn transpose_out(self, src: &[[f32; 8]], dst: &mut [f32], stride: usize) {
        for (j, v) in src[..8].iter().enumerate() {
            for (i, &x) in v.iter().enumerate() {
                dst[i * stride + j] = x;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX2 and AVX-512 implementations of [`Simd`](super::Simd).

    use super::Simd;
    use std::arch::x86_64::*;

    /// AVX2 with FMA, 8 lanes. Only made by [`Avx2::detect`].
    #[derive(Clone, Copy, Debug)]
    pub(super) struct Avx2(());

    impl Avx2 {
        /// The token, if this CPU has AVX2 and FMA.
        pub(super) fn detect() -> Option<Self> {
            (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
                .then_some(Self(()))
        }
    }

    /// AVX-512F with FMA, 16 lanes. Only made by [`Avx512::detect`].
    #[derive(Clone, Copy, Debug)]
    pub(super) struct Avx512(());

    impl Avx512 {
        /// The token, if this CPU has AVX-512F, AVX2 and FMA.
        pub(super) fn detect() -> Option<Self> {
            let ok = is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma");
            ok.then_some(Self(()))
        }
    }

    // SAFETY (every `unsafe` block below): the intrinsics need the instruction set the token
    // proves present; pointer arguments come from slices checked to hold the lanes read or written.
    impl Simd for Avx2 {
        const W: usize = 8;
        type V = __m256;

        #[inline(always)]
        fn splat(self, x: f32) -> __m256 {
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        fn add(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        fn sub(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_sub_ps(a, b) }
        }
        #[inline(always)]
        fn mul(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_mul_ps(a, b) }
        }
        #[inline(always)]
        fn recip(self, a: __m256) -> __m256 {
            unsafe { _mm256_div_ps(_mm256_set1_ps(1.0), a) }
        }
        #[inline(always)]
        fn div(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_div_ps(a, b) }
        }
        #[inline(always)]
        fn fma(self, a: __m256, b: __m256, c: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn min(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_min_ps(a, b) }
        }
        #[inline(always)]
        fn max(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_max_ps(a, b) }
        }
        #[inline(always)]
        fn abs(self, a: __m256) -> __m256 {
            unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), a) }
        }
        #[inline(always)]
        fn select_gt(self, a: __m256, b: __m256, x: __m256, y: __m256) -> __m256 {
            unsafe { _mm256_blendv_ps(y, x, _mm256_cmp_ps::<_CMP_GT_OQ>(a, b)) }
        }
        #[inline(always)]
        fn round(self, a: __m256) -> __m256 {
            unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
        }
        #[inline(always)]
        fn clamp_exp2(self, a: __m256) -> __m256 {
            self.min(self.max(a, self.splat(-126.0)), self.splat(127.0))
        }
        #[inline(always)]
        fn ldexp(self, p: __m256, n: __m256) -> __m256 {
            unsafe {
                let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(
                    _mm256_cvtps_epi32(n),
                    _mm256_set1_epi32(127),
                ));
                _mm256_mul_ps(p, _mm256_castsi256_ps(e))
            }
        }
        #[inline(always)]
        fn hsum_rows(self, v: &[__m256]) -> __m256 {
            let v = v.first_chunk::<8>().expect("eight vectors");
            // Halving tree, as in `transpose8`: pairs, then quads within each 128-bit half,
            // then the halves; lane j ends up holding the total of v[j].
            unsafe {
                let mut a = [_mm256_setzero_ps(); 4];
                for (k, a) in a.iter_mut().enumerate() {
                    let (x, y) = (v[2 * k], v[2 * k + 1]);
                    *a = _mm256_add_ps(_mm256_unpacklo_ps(x, y), _mm256_unpackhi_ps(x, y));
                }
                let mut b = [_mm256_setzero_ps(); 2];
                for (k, b) in b.iter_mut().enumerate() {
                    let (x, y) = (a[2 * k], a[2 * k + 1]);
                    *b = _mm256_add_ps(
                        _mm256_shuffle_ps::<0x44>(x, y),
                        _mm256_shuffle_ps::<0xEE>(x, y),
                    );
                }
                _mm256_add_ps(
                    _mm256_permute2f128_ps::<0x20>(b[0], b[1]),
                    _mm256_permute2f128_ps::<0x31>(b[0], b[1]),
                )
            }
        }
        #[inline(always)]
        fn hsum(self, a: __m256) -> f32 {
            unsafe {
                let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
            }
        }
        #[inline(always)]
        fn transpose_in(self, src: &[f32], stride: usize, dst: &mut [__m256]) {
            let src = &src[..7 * stride + 8];
            let mut r = [self.zero(); 8];
            for (i, r) in r.iter_mut().enumerate() {
                *r = unsafe { _mm256_loadu_ps(src[i * stride..].as_ptr()) };
            }
            dst[..8].copy_from_slice(&transpose8(r));
        }
        #[inline(always)]
        fn transpose_out(self, src: &[__m256], dst: &mut [f32], stride: usize) {
            let t = transpose8(*src.first_chunk::<8>().expect("a whole tile"));
            let dst = &mut dst[..7 * stride + 8];
            for (i, v) in t.into_iter().enumerate() {
                unsafe { _mm256_storeu_ps(dst[i * stride..].as_mut_ptr(), v) };
            }
        }
    }

    /// 8 x 8 transpose: output j lane i = input i lane j.
    #[inline(always)]
    fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        unsafe {
            // Within each 128-bit half: t[2k] = (a0 b0 a1 b1), t[2k+1] = (a2 b2 a3 b3) for rows
            // a = r[2k], b = r[2k+1]; then s[4k+m] = column m of rows 4k..4k+3 in each half.
            let mut t = [_mm256_setzero_ps(); 8];
            for k in 0..4 {
                t[2 * k] = _mm256_unpacklo_ps(r[2 * k], r[2 * k + 1]);
                t[2 * k + 1] = _mm256_unpackhi_ps(r[2 * k], r[2 * k + 1]);
            }
            let mut s = [_mm256_setzero_ps(); 8];
            for k in 0..2 {
                s[4 * k] = _mm256_shuffle_ps::<0x44>(t[4 * k], t[4 * k + 2]);
                s[4 * k + 1] = _mm256_shuffle_ps::<0xEE>(t[4 * k], t[4 * k + 2]);
                s[4 * k + 2] = _mm256_shuffle_ps::<0x44>(t[4 * k + 1], t[4 * k + 3]);
                s[4 * k + 3] = _mm256_shuffle_ps::<0xEE>(t[4 * k + 1], t[4 * k + 3]);
            }
            let mut out = [_mm256_setzero_ps(); 8];
            for m in 0..4 {
                out[m] = _mm256_permute2f128_ps::<0x20>(s[m], s[4 + m]);
                out[4 + m] = _mm256_permute2f128_ps::<0x31>(s[m], s[4 + m]);
            }
            out
        }
    }

    impl Simd for Avx512 {
        const W: usize = 16;
        type V = __m512;

        #[inline(always)]
        fn splat(self, x: f32) -> __m512 {
            unsafe { _mm512_set1_ps(x) }
        }
        #[inline(always)]
        fn add(self, a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        fn sub(self, a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_sub_ps(a, b) }
        }
        #[inline(always)]
        fn mul(self, a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_mul_ps(a, b) }
        }
        #[inline(always)]
        fn recip(self, a: __m512) -> __m512 {
            // 14-bit estimate and one Newton step, r (2 - a r): about 2^-27 relative error, and
            // much cheaper than a division.
            unsafe {
                let r = _mm512_rcp14_ps(a);
                _mm512_mul_ps(r, _mm512_fnmadd_ps(a, r, _mm512_set1_ps(2.0)))
            }
        }
        #[inline(always)]
        fn div(self, a: __m512, b: __m512) -> __m512 {
            // q = a (1 / b), then one correction with the exact residual a - q b: as good as a
            // division in practice, at a fraction of `vdivps`'s cost.
            unsafe {
                let q = _mm512_mul_ps(a, self.recip(b));
                _mm512_fmadd_ps(_mm512_fnmadd_ps(q, b, a), self.recip(b), q)
            }
        }
        #[inline(always)]
        fn fma(self, a: __m512, b: __m512, c: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn min(self, a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_min_ps(a, b) }
        }
        #[inline(always)]
        fn max(self, a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_max_ps(a, b) }
        }
        #[inline(always)]
        fn abs(self, a: __m512) -> __m512 {
            unsafe { _mm512_abs_ps(a) }
        }
        #[inline(always)]
        fn select_gt(self, a: __m512, b: __m512, x: __m512, y: __m512) -> __m512 {
            unsafe { _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(a, b), y, x) }
        }
        #[inline(always)]
        fn round(self, a: __m512) -> __m512 {
            unsafe { _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
        }
        #[inline(always)]
        fn clamp_exp2(self, a: __m512) -> __m512 {
            // `vscalefps` overflows to +inf by itself.
            self.max(a, self.splat(-126.0))
        }
        #[inline(always)]
        fn ldexp(self, p: __m512, n: __m512) -> __m512 {
            unsafe { _mm512_scalef_ps(p, n) }
        }
        #[inline(always)]
        fn hsum_rows(self, v: &[__m512]) -> __m512 {
            let v = v.first_chunk::<16>().expect("sixteen vectors");
            // Halving tree, as in `transpose16`: pairs and quads within each 128-bit quarter,
            // then the quarters; lane j ends up holding the total of v[j].
            unsafe {
                let mut a = [_mm512_setzero_ps(); 8];
                for (k, a) in a.iter_mut().enumerate() {
                    let (x, y) = (v[2 * k], v[2 * k + 1]);
                    *a = _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
                }
                let mut b = [_mm512_setzero_ps(); 4];
                for (k, b) in b.iter_mut().enumerate() {
                    let (x, y) = (a[2 * k], a[2 * k + 1]);
                    *b = _mm512_add_ps(
                        _mm512_shuffle_ps::<0x44>(x, y),
                        _mm512_shuffle_ps::<0xEE>(x, y),
                    );
                }
                let mut c = [_mm512_setzero_ps(); 2];
                for (k, c) in c.iter_mut().enumerate() {
                    let (x, y) = (b[2 * k], b[2 * k + 1]);
                    *c = _mm512_add_ps(
                        _mm512_shuffle_f32x4::<0x88>(x, y),
                        _mm512_shuffle_f32x4::<0xDD>(x, y),
                    );
                }
                _mm512_add_ps(
                    _mm512_shuffle_f32x4::<0x88>(c[0], c[1]),
                    _mm512_shuffle_f32x4::<0xDD>(c[0], c[1]),
                )
            }
        }
        #[inline(always)]
        fn hsum(self, a: __m512) -> f32 {
            unsafe { _mm512_reduce_add_ps(a) }
        }
        #[inline(always)]
        fn transpose_in(self, src: &[f32], stride: usize, dst: &mut [__m512]) {
            let src = &src[..15 * stride + 16];
            let mut r = [self.zero(); 16];
            for (i, r) in r.iter_mut().enumerate() {
                *r = unsafe { _mm512_loadu_ps(src[i * stride..].as_ptr()) };
            }
            dst[..16].copy_from_slice(&transpose16(r));
        }
        #[inline(always)]
        fn transpose_out(self, src: &[__m512], dst: &mut [f32], stride: usize) {
            let t = transpose16(*src.first_chunk::<16>().expect("a whole tile"));
            let dst = &mut dst[..15 * stride + 16];
            for (i, v) in t.into_iter().enumerate() {
                unsafe { _mm512_storeu_ps(dst[i * stride..].as_mut_ptr(), v) };
            }
        }
    }

    /// 16 x 16 transpose: output j lane i = input i lane j.
    #[inline(always)]
    fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        unsafe {
            // Within each 128-bit quarter, as in `transpose8`: s[4k+m] quarter q holds column
            // 4q+m of rows 4k..4k+3.
            let mut t = [_mm512_setzero_ps(); 16];
            for k in 0..8 {
                t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
                t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
            }
            let mut s = [_mm512_setzero_ps(); 16];
            for k in 0..4 {
                s[4 * k] = _mm512_shuffle_ps::<0x44>(t[4 * k], t[4 * k + 2]);
                s[4 * k + 1] = _mm512_shuffle_ps::<0xEE>(t[4 * k], t[4 * k + 2]);
                s[4 * k + 2] = _mm512_shuffle_ps::<0x44>(t[4 * k + 1], t[4 * k + 3]);
                s[4 * k + 3] = _mm512_shuffle_ps::<0xEE>(t[4 * k + 1], t[4 * k + 3]);
            }
            // Gather quarter q of s[m], s[4+m], s[8+m], s[12+m] into column 4q+m.
            let mut out = [_mm512_setzero_ps(); 16];
            for m in 0..4 {
                let u0 = _mm512_shuffle_f32x4::<0x88>(s[m], s[4 + m]);
                let u1 = _mm512_shuffle_f32x4::<0xDD>(s[m], s[4 + m]);
                let u2 = _mm512_shuffle_f32x4::<0x88>(s[8 + m], s[12 + m]);
                let u3 = _mm512_shuffle_f32x4::<0xDD>(s[8 + m], s[12 + m]);
                out[m] = _mm512_shuffle_f32x4::<0x88>(u0, u2);
                out[8 + m] = _mm512_shuffle_f32x4::<0xDD>(u0, u2);
                out[4 + m] = _mm512_shuffle_f32x4::<0x88>(u1, u3);
                out[12 + m] = _mm512_shuffle_f32x4::<0xDD>(u1, u3);
            }
            out
        }
    }
}

/// Runs `$body` with `$i` = 0, 1, .. up to `$n` - 1 (at most 16), unrolled in the source: with
/// `$n` a constant the untaken copies fold away, and constant indices keep arrays indexed by
/// `$i` in registers.
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

// ---------------------------------------------------------------------------------------------
// Layout. The kernels vectorise across channels, not across the state: a *group* of W channels
// of one direction runs as W lanes, and the state of the group is NB vectors ([NB][W], NB up to
// 16), held in registers for a whole pass over L. B_t[n] and C_t[n] are the same for every
// channel of a direction, so each step broadcasts them; y, du and d delta, sums over n,
// accumulate lane-wise with no horizontal sums. Groups with fewer than W channels are padded
// with lanes whose inputs are zero (their state stays 0 and their outputs are dropped). State
// sizes above NB run as several blocks of NB rows, padded with rows whose A, B and C are zero.
// ---------------------------------------------------------------------------------------------

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
/// ([step] of W lanes); lanes from `nch` on are zero.
#[inline(always)]
fn gather_lanes<S: Simd>(s: S, rows: &[f32], len: usize, nch: usize, l0: usize, out: &mut [S::V]) {
    let (w, m) = (S::W, out.len());
    let mut done = 0;
    if nch == w {
        while done + w <= m {
            s.transpose_in(&rows[l0 + done..], len, &mut out[done..done + w]);
            done += w;
        }
    }
    let rest = flat_mut::<S>(&mut out[done..]);
    for (j, v) in rest.chunks_exact_mut(w).enumerate() {
        for (i, o) in v.iter_mut().enumerate() {
            *o = if i < nch {
                rows[i * len + l0 + done + j]
            } else {
                0.0
            };
        }
    }
}

/// Lane-major `src` back into steps `l0..` of the first `nch` rows.
#[inline(always)]
fn scatter_lanes<S: Simd>(s: S, src: &[S::V], rows: &mut [f32], len: usize, nch: usize, l0: usize) {
    let (w, m) = (S::W, src.len());
    let mut done = 0;
    if nch == w {
        while done + w <= m {
            s.transpose_out(&src[done..done + w], &mut rows[l0 + done..], len);
            done += w;
        }
    }
    for (j, v) in flat::<S>(&src[done..]).chunks_exact(w).enumerate() {
        for (i, &x) in v.iter().enumerate().take(nch) {
            rows[i * len + l0 + done + j] = x;
        }
    }
}

/// Asks the cache for steps `l0..l0 + m` of the first `nch` rows of length `len` (a hint only).
///
/// The kernels read and write a group's rows one block of steps at a time, 16 rows tens of
/// kilobytes apart: too many short streams for the hardware prefetchers, so each block would
/// wait on memory. Prefetching the next block while computing this one hides that.
#[inline(always)]
fn prefetch_rows(rows: &[f32], len: usize, nch: usize, l0: usize, m: usize) {
    #[cfg(target_arch = "x86_64")]
    for row in rows.chunks(len).take(nch) {
        for line in row[l0.min(row.len())..(l0 + m).min(row.len())].chunks(16) {
            // SAFETY: prefetching has no effect on memory, and the address is inside `rows`.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    line.as_ptr().cast::<i8>(),
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (rows, len, nch, l0, m);
}

/// `[nch, N]` rows of A into lane-major `[NP]` vectors, scaled, zero in padding lanes and rows.
fn lane_params<S: Simd>(s: S, a: &[f32], n: usize, np: usize, nch: usize, scale: f32) -> Vec<S::V> {
    let mut out = vec![s.zero(); np];
    let lanes = flat_mut::<S>(&mut out);
    for (i, row) in a.chunks_exact(n).take(nch).enumerate() {
        for (r, &v) in row.iter().enumerate() {
            lanes[r * S::W + i] = v * scale;
        }
    }
    out
}

/// The first `nch` values of `v` as a vector, zero beyond.
fn lane_vec<S: Simd>(s: S, v: &[f32], nch: usize) -> S::V {
    let mut out = [s.zero()];
    flat_mut::<S>(&mut out)[..nch].copy_from_slice(&v[..nch]);
    out[0]
}

/// `NB` consecutive items of `rows` from `at`, as a fixed-size array reference.
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
    /// Portable code for whatever the build target allows (SSE2 on x86-64), no FMA.
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
            if x86::Avx512::detect().is_some() {
                return Isa::Avx512;
            }
            if x86::Avx2::detect().is_some() {
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

/// Calls `$body::<S, NB>(s, args..)` for the state block size `$nb` (a power of two up to 16).
macro_rules! by_block {
    ($nb:expr, $body:ident ($s:expr $(, $arg:expr)*)) => {
        match $nb {
            1 => $body::<_, 1>($s $(, $arg)*),
            2 => $body::<_, 2>($s $(, $arg)*),
            4 => $body::<_, 4>($s $(, $arg)*),
            8 => $body::<_, 8>($s $(, $arg)*),
            16 => $body::<_, 16>($s $(, $arg)*),
            nb => unreachable!("state block {nb} is not a power of two up to 16"),
        }
    };
}

/// Defines `$name(isa, layout, args..)`, which runs `$body::<S, NB>` with the vectors of the
/// instruction set, compiled for it, and the state block of `layout` as a constant.
macro_rules! isa_dispatch {
    ($name:ident, $body:ident, ($($arg:ident : $ty:ty),*)) => {
        fn $name(isa: Isa, layout: Layout, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512(s: x86::Avx512, nb: usize, $($arg: $ty),*) {
                    by_block!(nb, $body(s $(, $arg)*))
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2(s: x86::Avx2, nb: usize, $($arg: $ty),*) {
                    by_block!(nb, $body(s $(, $arg)*))
                }
                match isa {
                    Isa::Avx512 => {
                        let s = x86::Avx512::detect().expect("Isa::Avx512 is only chosen where the CPU has it");
                        // SAFETY: the token proves the CPU has the features `avx512` is compiled for.
                        return unsafe { avx512(s, layout.nb, $($arg),*) };
                    }
                    Isa::Avx2 => {
                        let s = x86::Avx2::detect().expect("Isa::Avx2 is only chosen where the CPU has it");
                        // SAFETY: as above.
                        return unsafe { avx2(s, layout.nb, $($arg),*) };
                    }
                    Isa::Base => {}
                }
            }
            let _ = isa;
            by_block!(layout.nb, $body(Portable $(, $arg)*))
        }
    };
}

/// Test probe: (2^x, e^(2x), softplus(x), sigmoid(x)) of every x through the vector code;
/// `xs.len()` must be a multiple of 16.
#[cfg(test)]
#[inline(always)]
fn math_probe_body<S: Simd, const NB: usize>(s: S, xs: &[f32], out: &mut [[f32; 4]]) {
    for (x, o) in xs.chunks_exact(S::W).zip(out.chunks_exact_mut(S::W)) {
        let x = lane_vec(s, x, S::W);
        let (sp, sig) = vsoftplus_sigmoid::<S, true>(s, x);
        let v = [vexp2(s, x), vexp(s, s.add(x, x)), sp, sig];
        for (i, o) in o.iter_mut().enumerate() {
            *o = std::array::from_fn(|f| flat::<S>(&v[f..f + 1])[i]);
        }
    }
}

#[cfg(test)]
isa_dispatch!(math_probe, math_probe_body, (xs: &[f32], out: &mut [[f32; 4]]));

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
struct LaneSeq<S: Simd> {
    /// Gathered delta, u and (backward) dy.
    delta: Vec<S::V>,
    u: Vec<S::V>,
    dy: Vec<S::V>,
    /// dt = softplus(delta + bias), dt u, and sigmoid(delta + bias) = d dt / d delta.
    dt: Vec<S::V>,
    dtu: Vec<S::V>,
    sig: Vec<S::V>,
}

impl<S: Simd> LaneSeq<S> {
    fn new(s: S, chunk: usize) -> Self {
        let v = || vec![s.zero(); chunk];
        Self {
            delta: v(),
            u: v(),
            dy: v(),
            dt: v(),
            dtu: v(),
            sig: v(),
        }
    }

    /// Gathers delta and u of steps `l0..l0 + m` and computes dt, dt u and (with `SIG`) sigmoid.
    #[inline(always)]
    fn load<const SIG: bool>(&mut self, s: S, j: &GroupJob, bias: S::V, l0: usize, m: usize) {
        gather_lanes(s, j.delta, j.len, j.nch, l0, &mut self.delta[..m]);
        gather_lanes(s, j.u, j.len, j.nch, l0, &mut self.u[..m]);
        for t in 0..m {
            let (sp, sg) = vsoftplus_sigmoid::<S, SIG>(s, s.add(self.delta[t], bias));
            self.dt[t] = sp;
            self.dtu[t] = s.mul(sp, self.u[t]);
            self.sig[t] = sg;
        }
    }
}

/// `m` steps of the recurrence for one block of NB state rows, from the state in `h`, which is
/// left holding the last state. With `Y`, adds each step's `C h` to `y`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn fwd_steps<S: Simd, const NB: usize, const Y: bool>(
    s: S,
    a2: &[S::V; NB],
    h: &mut [S::V; NB],
    bt: &[f32],
    ct: &[f32],
    np: usize,
    dt: &[S::V],
    dtu: &[S::V],
    y: &mut [S::V],
) {
    let a2 = *a2;
    let mut hh = *h;
    for t in 0..dt.len() {
        let (d, du) = (dt[t], dtu[t]);
        let b: &[f32; NB] = block(bt, t * np);
        let c: &[f32; NB] = block(ct, t * np);
        let mut acc = s.zero();
        unroll16!(NB, |i| {
            // exp(dt a) = 2^(dt a log2 e); a2 has log2 e folded in.
            let e = vexp2(s, s.mul(d, a2[i]));
            hh[i] = s.fma(e, hh[i], s.mul(du, s.splat(b[i])));
            if Y {
                acc = s.fma(s.splat(c[i]), hh[i], acc);
            }
        });
        if Y {
            y[t] = s.add(y[t], acc);
        }
    }
    *h = hh;
}

/// One pass over L for a group: writes y rows ([nch, L]) if given, and the state entering every
/// block of `chunk` steps into `ckpt` ([n_chunks][NP] vectors) if given. Without `y`, the last
/// block's steps are skipped (nothing would read their states).
#[inline(always)]
fn fwd_group_body<S: Simd, const NB: usize>(
    s: S,
    j: &GroupJob,
    mut y: Option<&mut [f32]>,
    mut ckpt: Option<&mut [f32]>,
) {
    let (np, len, chunk) = (j.np, j.len, j.chunk);
    let a2 = lane_params(s, j.a, j.n, np, j.nch, LOG2E);
    let bias = lane_vec(s, j.bias, j.nch);
    let d_skip = lane_vec(s, j.d_skip, j.nch);
    let mut h = vec![s.zero(); np];
    let mut seq = LaneSeq::new(s, chunk);
    let mut yl = vec![s.zero(); chunk];
    for (c, l0) in (0..len).step_by(chunk).enumerate() {
        let m = chunk.min(len - l0);
        if let Some(ck) = ckpt.as_deref_mut() {
            ck[c * np * S::W..][..np * S::W].copy_from_slice(flat::<S>(&h));
        }
        if y.is_none() && l0 + m == len {
            break;
        }
        seq.load::<false>(s, j, bias, l0, m);
        let next = (l0 + m).min(len);
        prefetch_rows(j.delta, len, j.nch, next, chunk);
        prefetch_rows(j.u, len, j.nch, next, chunk);
        if let Some(y) = y.as_deref() {
            prefetch_rows(y, len, j.nch, next, chunk);
        }
        let (dt, dtu) = (&seq.dt[..m], &seq.dtu[..m]);
        for (yl, &u) in yl.iter_mut().zip(&seq.u[..m]) {
            *yl = s.mul(d_skip, u);
        }
        for b0 in (0..np).step_by(NB) {
            let (bt, ct) = (&j.bt[l0 * np + b0..], &j.ct[l0 * np + b0..]);
            let (a2, hb) = (block::<_, NB>(&a2, b0), block_mut::<_, NB>(&mut h, b0));
            if y.is_some() {
                fwd_steps::<S, NB, true>(s, a2, hb, bt, ct, np, dt, dtu, &mut yl[..m]);
            } else {
                fwd_steps::<S, NB, false>(s, a2, hb, bt, ct, np, dt, dtu, &mut yl[..m]);
            }
        }
        if let Some(y) = y.as_deref_mut() {
            scatter_lanes(s, &yl[..m], y, len, j.nch, l0);
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
    forward_impl(isa, CHUNK, false, dims, x).0
}

/// Floats of checkpoints per group: the state entering each block of `chunk` steps.
fn ckpt_len(layout: Layout, len: usize, chunk: usize) -> usize {
    len.div_ceil(chunk) * layout.np * layout.w
}

/// The forward pass; with `save`, also the checkpoints for blocks of `chunk` steps
/// ([B, K, groups] of [`ckpt_len`] each), else an empty vector.
fn forward_impl(
    isa: Isa,
    chunk: usize,
    save: bool,
    dims: ScanDims,
    x: &ScanInputs,
) -> (Vec<f32>, Vec<f32>) {
    if let Err(e) = dims.check(x) {
        panic!("scan_forward: {e}");
    }
    assert!(chunk > 0, "chunk must be at least 1");
    let ScanDims {
        batch,
        k_dirs,
        channels,
        d_state: n,
        len,
    } = dims;
    let mut y = vec![0.0; x.u.len()];
    if y.is_empty() {
        return (y, Vec::new());
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
    let ck = ckpt_len(layout, len, chunk);
    let mut ckpt = vec![0.0f32; if save { tasks.len() * ck } else { 0 }];
    let outs = carve(&mut y, tasks.iter().map(|t| t.3 * len));
    let cks: Vec<Option<&mut [f32]>> = if save {
        carve(&mut ckpt, tasks.iter().map(|_| ck))
            .into_iter()
            .map(Some)
            .collect()
    } else {
        tasks.iter().map(|_| None).collect()
    };
    tasks
        .into_par_iter()
        .zip(outs)
        .zip(cks)
        .for_each(|(((b, k, e0, nch), y), ck)| {
            let d0 = k * per_dir + e0;
            let row0 = b * channels + d0;
            let g = b * k_dirs + k;
            let job = GroupJob {
                n,
                np,
                len,
                chunk,
                nch,
                u: &x.u[row0 * len..][..nch * len],
                delta: &x.delta[row0 * len..][..nch * len],
                a: &x.a[d0 * n..][..nch * n],
                bias: &x.delta_bias[d0..][..nch],
                d_skip: &x.d_skip[d0..][..nch],
                bt: &bt[g * len * np..][..len * np],
                ct: &ct[g * len * np..][..len * np],
            };
            fwd_group(isa, layout, &job, Some(y), ck);
        });
    (y, ckpt)
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
    /// The task's groups' checkpoints from the forward pass, if it kept them.
    ckpt: Option<&'a [f32]>,
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

/// Buffers of one block of steps of the backward pass, all lane-major.
struct BwdChunk<'a, S: Simd, const NB: usize> {
    /// Recomputed states and decays exp(dt a) of the block of steps, [m][NB].
    hs: &'a mut [[S::V; NB]],
    es: &'a mut [[S::V; NB]],
    /// Lane-wise partial sums of dB and dC over the task's groups, [m][NP], from this state
    /// block's first row on.
    dbp: &'a mut [S::V],
    dcp: &'a mut [S::V],
    /// du and the gradient of dt (before the softplus), [m], summed over state blocks.
    du: &'a mut [S::V],
    ddt: &'a mut [S::V],
}

/// Backward of one block of steps for one group and one block of NB state rows.
///
/// Recomputes the block's states from the one entering it (`h0`), then walks the steps in
/// reverse with `carry` = exp(dt_{t+1} a) dL/dh_{t+1}, the adjoint reaching h_t from the next
/// step, in registers.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn bwd_block<S: Simd, const NB: usize>(
    s: S,
    a: &[S::V; NB],
    a2: &[S::V; NB],
    h0: &[S::V; NB],
    carry: &mut [S::V; NB],
    da: &mut [S::V; NB],
    bt: &[f32],
    ct: &[f32],
    np: usize,
    q: &LaneSeq<S>,
    m: usize,
    k: BwdChunk<S, NB>,
) {
    let a2 = *a2;
    let mut h = *h0;
    for t in 0..m {
        let (d, du, dy) = (q.dt[t], q.dtu[t], q.dy[t]);
        let b: &[f32; NB] = block(bt, t * np);
        let dc = block_mut::<_, NB>(k.dcp, t * np);
        let (es, hs) = (&mut k.es[t], &mut k.hs[t]);
        unroll16!(NB, |i| {
            let e = vexp2(s, s.mul(d, a2[i]));
            es[i] = e;
            h[i] = s.fma(e, h[i], s.mul(du, s.splat(b[i])));
            hs[i] = h[i];
            // dC_t = sum over channels of h_t dy_t.
            dc[i] = s.fma(h[i], dy, dc[i]);
        });
    }
    let a = *a;
    let mut cr = *carry;
    let mut dacc = *da;
    for t in (0..m).rev() {
        let (d, du, dy, u) = (q.dt[t], q.dtu[t], q.dy[t], q.u[t]);
        let b: &[f32; NB] = block(bt, t * np);
        let c: &[f32; NB] = block(ct, t * np);
        let hp = if t > 0 { &k.hs[t - 1] } else { h0 };
        let e = &k.es[t];
        let db = block_mut::<_, NB>(k.dbp, t * np);
        let mut gb = s.zero();
        let mut pa = s.zero();
        unroll16!(NB, |i| {
            // g = dL/dh_t: from y_t through C, plus what flows back from h_{t+1}.
            let g = s.fma(s.splat(c[i]), dy, cr[i]);
            db[i] = s.fma(g, du, db[i]);
            let bi = s.splat(b[i]);
            gb = s.fma(g, bi, gb);
            let ge = s.mul(g, e[i]);
            cr[i] = ge;
            // g exp(dt a) h_{t-1} is shared by dA (times dt) and d dt (times a).
            let gq = s.mul(ge, hp[i]);
            pa = s.fma(gq, a[i], pa);
            dacc[i] = s.fma(gq, d, dacc[i]);
        });
        k.du[t] = s.fma(d, gb, k.du[t]);
        k.ddt[t] = s.fma(u, gb, s.add(k.ddt[t], pa));
    }
    *carry = cr;
    *da = dacc;
}

#[inline(always)]
fn bwd_task_body<S: Simd, const NB: usize>(s: S, t: &BwdTask, o: &mut BwdOut) {
    let (n, np, len, chunk, w) = (t.n, t.np, t.len, t.chunk, S::W);
    let groups = t.e_ch.div_ceil(w);
    let n_chunks = len.div_ceil(chunk);
    let group_job = |g: usize| {
        let (e0, nch) = (g * w, w.min(t.e_ch - g * w));
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
    // The state entering every block of steps, for every group: [groups][n_chunks][NP] vectors.
    let ck_len = n_chunks * np * w;
    let ckpt_v: Vec<S::V> = match t.ckpt {
        Some(ck) => ck.chunks_exact(w).map(|c| lane_vec(s, c, w)).collect(),
        None => {
            let mut ckpt = vec![0.0f32; groups * ck_len];
            for (g, ck) in ckpt.chunks_exact_mut(ck_len).enumerate() {
                fwd_group_body::<S, NB>(s, &group_job(g), None, Some(ck));
            }
            ckpt.chunks_exact(w).map(|c| lane_vec(s, c, w)).collect()
        }
    };
    let a_l: Vec<Vec<S::V>> = (0..groups)
        .map(|g| {
            let j = group_job(g);
            lane_params(s, j.a, n, np, j.nch, 1.0)
        })
        .collect();
    let a2_l: Vec<Vec<S::V>> = a_l
        .iter()
        .map(|a| a.iter().map(|&v| s.mul(v, s.splat(LOG2E))).collect())
        .collect();
    let mut carry = vec![s.zero(); groups * np];
    let mut da = vec![s.zero(); groups * np];
    let mut dskip_acc = vec![s.zero(); groups];
    let mut dbias_acc = vec![s.zero(); groups];
    let mut seq = LaneSeq::new(s, chunk);
    let mut hs = vec![[s.zero(); NB]; chunk];
    let mut es = vec![[s.zero(); NB]; chunk];
    let mut dbp = vec![s.zero(); chunk * np];
    let mut dcp = vec![s.zero(); chunk * np];
    let mut du = vec![s.zero(); chunk];
    let mut ddt = vec![s.zero(); chunk];

    for c in (0..n_chunks).rev() {
        let l0 = c * chunk;
        let m = chunk.min(len - l0);
        dbp.fill(s.zero());
        dcp.fill(s.zero());
        for g in 0..groups {
            let j = group_job(g);
            let (e0, nch) = (g * w, j.nch);
            // The group visited next: the following one, or the first one a block of steps back.
            let (ng, nl0) = if g + 1 < groups {
                (g + 1, l0)
            } else {
                (0, l0.saturating_sub(chunk))
            };
            if g + 1 < groups || c > 0 {
                let (ne0, nnch) = (ng * w, w.min(t.e_ch - ng * w));
                for rows in [t.u, t.delta, t.dy] {
                    prefetch_rows(&rows[ne0 * len..], len, nnch, nl0, chunk);
                }
                prefetch_rows(&o.du[ne0 * len..], len, nnch, nl0, chunk);
                prefetch_rows(&o.ddelta[ne0 * len..], len, nnch, nl0, chunk);
            }
            let bias = lane_vec(s, j.bias, nch);
            let d_skip = lane_vec(s, j.d_skip, nch);
            seq.load::<true>(s, &j, bias, l0, m);
            let dy_rows = &t.dy[e0 * len..][..nch * len];
            gather_lanes(s, dy_rows, len, nch, l0, &mut seq.dy[..m]);
            let mut acc = dskip_acc[g];
            for i in 0..m {
                let dy = seq.dy[i];
                du[i] = s.mul(d_skip, dy);
                ddt[i] = s.zero();
                acc = s.fma(dy, seq.u[i], acc);
            }
            dskip_acc[g] = acc;
            let ck = &ckpt_v[(g * n_chunks + c) * np..][..np];
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
                bwd_block::<S, NB>(
                    s,
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
            let mut acc = dbias_acc[g];
            for (ddt, &sig) in ddt[..m].iter_mut().zip(&seq.sig[..m]) {
                *ddt = s.mul(*ddt, sig);
                acc = s.add(acc, *ddt);
            }
            dbias_acc[g] = acc;
            let du_rows = &mut o.du[e0 * len..][..nch * len];
            scatter_lanes(s, &du[..m], du_rows, len, nch, l0);
            let dd_rows = &mut o.ddelta[e0 * len..][..nch * len];
            scatter_lanes(s, &ddt[..m], dd_rows, len, nch, l0);
        }
        // dB and dC of these steps: sums over the lanes of the partial sums, W state rows at a
        // time where the padded state has that many.
        for i in 0..m {
            for (part, out) in [(&dbp, &mut *o.dbm), (&dcp, &mut *o.dcm)] {
                let rows = &part[i * np..][..np];
                let mut r0 = 0;
                while r0 + w <= np && r0 < n {
                    let sums = [s.hsum_rows(&rows[r0..])];
                    for (r, &v) in flat::<S>(&sums).iter().enumerate().take(n - r0) {
                        out[(r0 + r) * len + l0 + i] = v;
                    }
                    r0 += w;
                }
                for r in r0..n {
                    out[r * len + l0 + i] = s.hsum(rows[r]);
                }
            }
        }
    }
    let da = flat::<S>(&da);
    for g in 0..groups {
        let (e0, nch) = (g * w, w.min(t.e_ch - g * w));
        let (dsk, dbi) = (
            &flat::<S>(&dskip_acc)[g * w..],
            &flat::<S>(&dbias_acc)[g * w..],
        );
        for l in 0..nch {
            for r in 0..n {
                o.da[(e0 + l) * n + r] = da[(g * np + r) * w + l];
            }
            o.dd_skip[e0 + l] = dsk[l];
            o.dbias[e0 + l] = dbi[l];
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
    backward_parts(isa, chunk, None, None, dims, x, dy)
}

/// The backward pass with each direction's groups split into `parts` tasks (default: see
/// [`default_parts`]), from the forward pass's checkpoints (`saved`, for blocks of `chunk` steps)
/// or recomputing them.
fn backward_parts(
    isa: Isa,
    chunk: usize,
    parts: Option<usize>,
    saved: Option<&[f32]>,
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
    let ck = ckpt_len(layout, len, chunk);
    if let Some(c) = saved {
        assert_eq!(
            c.len(),
            batch * k_dirs * groups * ck,
            "checkpoints of another layout"
        );
    }
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
                ckpt: saved.map(|c| &c[(gi * groups + e0 / w) * ck..][..e_ch.div_ceil(w) * ck]),
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
        // [-40, 40] in steps of 1e-3, plus far-out values, padded to whole vectors.
        let mut xs: Vec<f32> = (-40_000..=40_000).map(|i| i as f32 * 1e-3).collect();
        xs.extend([-500.0, 500.0]);
        xs.resize(xs.len().div_ceil(16) * 16, 0.0);
        for isa in Isa::available() {
            let mut out = vec![[0.0f32; 4]; xs.len()];
            math_probe(isa, Layout::new(isa, 1), &xs, &mut out);
            let (mut worst_exp, mut worst_sp, mut worst_sig) = (0.0f64, 0.0f64, 0.0f64);
            for (&x, &[e2, e, sp, sg]) in xs.iter().zip(&out) {
                if x.abs() > 40.0 {
                    continue;
                }
                let x = f64::from(x);
                worst_exp = worst_exp.max((f64::from(e2) - x.exp2()).abs() / x.exp2());
                let want = (2.0 * x).exp();
                worst_exp = worst_exp.max((f64::from(e) - want).abs() / want);
                let want_sp = softplus_f64(x);
                worst_sp = worst_sp.max((f64::from(sp) - want_sp).abs() / want_sp);
                let want_sig = 1.0 / (1.0 + (-x).exp());
                worst_sig = worst_sig.max((f64::from(sg) - want_sig).abs() / want_sig);
            }
            assert!(worst_exp < 3e-7, "{isa:?}: exp rel err {worst_exp}");
            assert!(worst_sp < 3e-7, "{isa:?}: softplus rel err {worst_sp}");
            assert!(worst_sig < 5e-7, "{isa:?}: sigmoid rel err {worst_sig}");
            // Never zero or subnormal far below the range; at least 2^127 far above it.
            let at = |v: f32| out[xs.iter().position(|&x| x == v).unwrap()];
            assert!(at(-500.0)[0] > 0.0 && at(-500.0)[0] < 1e-37, "{isa:?}");
            assert!(
                at(500.0)[0] >= 2f32.powi(127) && at(500.0)[1].is_finite(),
                "{isa:?}"
            );
            assert_eq!(at(500.0)[2], 500.0, "{isa:?}: softplus is x above 20");
        }
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
            // Checkpoints recomputed, or kept by the forward pass.
            let (y, ckpt) = forward_impl(isa, chunk, true, x.dims, &x.inputs());
            assert_eq!(
                y,
                forward_with(isa, x.dims, &x.inputs()),
                "{isa:?}: saving changed y"
            );
            for saved in [None, Some(&ckpt[..])] {
                // Directions split into up to three tasks (where they have that many groups).
                for parts in [None, Some(1), Some(2), Some(3)] {
                    let g = backward_parts(isa, chunk, parts, saved, x.dims, &x.inputs(), &w);
                    let got = [&g.u, &g.delta, &g.a, &g.bm, &g.cm, &g.d_skip, &g.delta_bias];
                    for ((name, want), got) in fd.iter().zip(got) {
                        let err = rel_err(got, want);
                        let how = format!(
                            "{isa:?} chunk {chunk} parts {parts:?} saved {}",
                            saved.is_some()
                        );
                        assert!(err < 1e-3, "{how} {:?}: d{name} rel err {err}", x.dims);
                    }
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
        // Whole groups and blocks of at least W steps: the transposing gathers and scatters.
        check_grads(1, 1, 18, 2, 40, 32, 27);
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
