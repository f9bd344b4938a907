//! AVX2 and AVX-512 implementations of [`Simd`].

use super::simd::Simd;
use std::arch::x86_64::*;

/// AVX2 with FMA, 8 lanes. Only made by [`Avx2::detect`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Avx2(());

impl Avx2 {
    /// The token, if this CPU has AVX2 and FMA.
    pub(super) fn detect() -> Option<Self> {
        (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")).then_some(Self(()))
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
