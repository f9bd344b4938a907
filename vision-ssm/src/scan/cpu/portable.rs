//! Portable vectors: plain arrays the compiler vectorises for whatever the build target allows.

use super::simd::{Simd, ROUND_MAGIC};

/// Portable vectors of 8 lanes (plain arrays the compiler vectorises as it can), no FMA.
#[derive(Clone, Copy, Debug)]
pub(super) struct Portable;

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
