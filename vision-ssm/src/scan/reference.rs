//! Float64 reference of the selective scan: plain loops, no tricks, used by tests to check the
//! fused kernel in `cpu.rs` (forward directly, backward through finite differences).

use super::cpu::{ScanDims, ScanInputs};

/// Owned float64 copies of every scan input, with the same layouts as [`ScanInputs`].
#[derive(Clone, Debug, PartialEq)]
pub struct RefInputs {
    /// Input sequence u, [B, D, L].
    pub u: Vec<f64>,
    /// Step-size pre-activation delta, [B, D, L].
    pub delta: Vec<f64>,
    /// State matrix A, [D, N].
    pub a: Vec<f64>,
    /// Input projection B, [B, K, N, L].
    pub bm: Vec<f64>,
    /// Output projection C, [B, K, N, L].
    pub cm: Vec<f64>,
    /// Skip weight D, [D].
    pub d_skip: Vec<f64>,
    /// Bias added to delta before the softplus, [D].
    pub delta_bias: Vec<f64>,
}

impl RefInputs {
    /// Widens borrowed float32 inputs to float64.
    pub fn from_f32(x: &ScanInputs) -> Self {
        let wide = |s: &[f32]| s.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
        Self {
            u: wide(x.u),
            delta: wide(x.delta),
            a: wide(x.a),
            bm: wide(x.bm),
            cm: wide(x.cm),
            d_skip: wide(x.d_skip),
            delta_bias: wide(x.delta_bias),
        }
    }
}

/// Softplus ln(1 + e^x), returning x itself above 20 like torch's default threshold.
pub fn softplus_f64(x: f64) -> f64 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// Output y [B, D, L] of the selective scan, computed step by step in float64.
///
/// Panics if the input lengths do not match `dims`.
pub fn scan_forward_f64(dims: ScanDims, x: &RefInputs) -> Vec<f64> {
    let ScanDims {
        batch,
        k_dirs,
        channels,
        d_state,
        len,
    } = dims;
    assert!(k_dirs > 0 && channels % k_dirs == 0, "channels must split evenly over directions");
    assert_eq!(x.u.len(), batch * channels * len, "u");
    assert_eq!(x.delta.len(), batch * channels * len, "delta");
    assert_eq!(x.a.len(), channels * d_state, "a");
    assert_eq!(x.bm.len(), batch * k_dirs * d_state * len, "bm");
    assert_eq!(x.cm.len(), batch * k_dirs * d_state * len, "cm");
    assert_eq!(x.d_skip.len(), channels, "d_skip");
    assert_eq!(x.delta_bias.len(), channels, "delta_bias");
    let per_dir = channels / k_dirs;
    let mut y = vec![0.0; batch * channels * len];
    for b in 0..batch {
        for d in 0..channels {
            let k = d / per_dir;
            let mut h = vec![0.0; d_state];
            for l in 0..len {
                let row = (b * channels + d) * len + l;
                let dt = softplus_f64(x.delta[row] + x.delta_bias[d]);
                let u = x.u[row];
                let mut acc = 0.0;
                for (n, h_n) in h.iter_mut().enumerate() {
                    let bc = ((b * k_dirs + k) * d_state + n) * len + l;
                    *h_n = (dt * x.a[d * d_state + n]).exp() * *h_n + dt * x.bm[bc] * u;
                    acc += x.cm[bc] * *h_n;
                }
                y[row] = acc + x.d_skip[d] * u;
            }
        }
    }
    y
}
