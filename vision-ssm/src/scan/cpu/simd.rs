//! Vectors. The kernels are written once over `Simd`, a vector of W float32 lanes, implemented
//! with AVX-512 (W = 16), AVX2+FMA (W = 8) and portable arrays (W = 8, no FMA). The hot loops are
//! unrolled in the source over the state rows, so the state stays in registers. A value of an
//! implementing type proves the CPU has its instruction set (it is only made after detection),
//! which is what makes the methods safe to call.

pub(super) const LOG2E: f32 = std::f32::consts::LOG2_E;
/// Adding 1.5 * 2^23 rounds to an integer held in the low mantissa bits.
pub(super) const ROUND_MAGIC: f32 = 12_582_912.0;
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
pub(super) trait Simd: Copy + Send + Sync {
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
pub(super) fn flat<S: Simd>(v: &[S::V]) -> &[f32] {
    const { assert!(std::mem::size_of::<S::V>() == 4 * S::W) };
    // SAFETY: every `Simd::V` is exactly W float32 values with no padding (checked above) and
    // has at least float32 alignment, so the slice's memory is `len * W` valid floats.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<f32>(), v.len() * S::W) }
}

/// Mutable version of [`flat`].
#[inline(always)]
pub(super) fn flat_mut<S: Simd>(v: &mut [S::V]) -> &mut [f32] {
    const { assert!(std::mem::size_of::<S::V>() == 4 * S::W) };
    // SAFETY: as in `flat`; any bit pattern is a valid float32 and a valid vector.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<f32>(), v.len() * S::W) }
}

/// 2^t, for t at least -126 (below, 2^-126: the result is never 0 or subnormal, which would be
/// slow to compute with); above 127 it is +inf with AVX-512 and 2^127 otherwise.
#[inline(always)]
pub(super) fn vexp2<S: Simd>(s: S, t: S::V) -> S::V {
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
pub(super) fn vexp<S: Simd>(s: S, x: S::V) -> S::V {
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
pub(super) fn vsoftplus_sigmoid<S: Simd, const SIG: bool>(s: S, x: S::V) -> (S::V, S::V) {
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

pub(super) use unroll16;
