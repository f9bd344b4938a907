//! References of the selective scan: plain loops, no tricks.
//!
//! - [`scan_forward_f64`]: float64, used by tests to check the fused kernel in [`super::cpu`]
//!   (forward directly, backward through finite differences).
//! - [`scan_forward_naive`] / [`scan_backward_naive`]: the straightforward float32 way, one step
//!   at a time with libm's `exp`, keeping every state `[B, D, L, N]` for the backward pass; the
//!   baseline `segmenter bench scan` compares the fused kernel against. Rows run in parallel
//!   (rayon), so both sides of the comparison use the same threads.

use rayon::prelude::*;

use super::cpu::{BatchShares, ScanDims, ScanGrads, ScanInputs};
use super::ScanArgs;

/// Owned float64 copies of every scan input, with the same layouts as [`ScanInputs`].
pub type RefInputs = ScanArgs<Vec<f64>>;

impl RefInputs {
    /// Widens borrowed float32 inputs to float64.
    pub fn from_f32(x: &ScanInputs) -> Self {
        x.map(|s| s.iter().map(|&v| f64::from(v)).collect())
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
    assert!(
        k_dirs > 0 && channels % k_dirs == 0,
        "channels must split evenly over directions"
    );
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

/// Softplus in float32, ln(1 + e^x), and x itself above 20 (torch's default threshold).
pub fn softplus_f32(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// Forward of the straightforward float32 loop: returns `(y [B, D, L], states [B, D, L, N])`,
/// every state h_t kept for [`scan_backward_naive`].
///
/// Panics if `dims.check(x)` fails.
pub fn scan_forward_naive(dims: ScanDims, x: &ScanInputs) -> (Vec<f32>, Vec<f32>) {
    if let Err(e) = dims.check(x) {
        panic!("scan_forward_naive: {e}");
    }
    let ScanDims {
        k_dirs,
        channels,
        d_state: n,
        len,
        ..
    } = dims;
    let per_dir = dims.per_dir();
    let mut y = vec![0.0f32; x.u.len()];
    let mut states = vec![0.0f32; x.u.len() * n];
    if y.is_empty() || n == 0 {
        return (y, states);
    }
    y.par_chunks_mut(len)
        .zip(states.par_chunks_mut(len * n))
        .enumerate()
        .for_each(|(row, (y, hs))| {
            let (b, d) = (row / channels, row % channels);
            let k = d / per_dir;
            let bc = (b * k_dirs + k) * n * len;
            let mut h = vec![0.0f32; n];
            for l in 0..len {
                let dt = softplus_f32(x.delta[row * len + l] + x.delta_bias[d]);
                let u = x.u[row * len + l];
                let mut acc = 0.0f32;
                for (i, h_i) in h.iter_mut().enumerate() {
                    let at = bc + i * len + l;
                    *h_i = (dt * x.a[d * n + i]).exp() * *h_i + dt * x.bm[at] * u;
                    acc += x.cm[at] * *h_i;
                }
                y[l] = acc + x.d_skip[d] * u;
                hs[l * n..][..n].copy_from_slice(&h);
            }
        });
    (y, states)
}

/// Gradients of `sum(y * dy)` from the states [`scan_forward_naive`] kept, walking each channel
/// backwards one step at a time (parallel over batch x direction, whose channels share dB, dC).
///
/// Panics if `dims.check(x)` fails or `states` / `dy` have the wrong length.
pub fn scan_backward_naive(
    dims: ScanDims,
    x: &ScanInputs,
    states: &[f32],
    dy: &[f32],
) -> ScanGrads {
    if let Err(e) = dims.check(x) {
        panic!("scan_backward_naive: {e}");
    }
    let ScanDims {
        d_state: n, len, ..
    } = dims;
    assert_eq!(
        dy.len(),
        x.u.len(),
        "scan_backward_naive: dy must be [B, D, L]"
    );
    assert_eq!(
        states.len(),
        x.u.len() * n,
        "scan_backward_naive: states must be [B, D, L, N]"
    );
    let per_dir = dims.per_dir();
    let mut g = ScanGrads::zeros(x);
    if g.u.is_empty() {
        return g;
    }
    let mut shares = BatchShares::zeros(dims);
    let el = per_dir * len;
    // Chunk i of every zipped output is (batch, direction) = (i / K, i % K).
    g.u.par_chunks_mut(el)
        .zip(g.delta.par_chunks_mut(el))
        .zip(
            g.bm.par_chunks_mut(n * len)
                .zip(g.cm.par_chunks_mut(n * len)),
        )
        .zip(shares.a.par_chunks_mut(per_dir * n))
        .zip(
            shares
                .d_skip
                .par_chunks_mut(per_dir)
                .zip(shares.delta_bias.par_chunks_mut(per_dir)),
        )
        .enumerate()
        .for_each(|(i, ((((du, ddelta), (dbm, dcm)), da), (dskip, dbias)))| {
            let d0 = (i % dims.k_dirs) * per_dir;
            let (bm, cm) = (
                &x.bm[i * n * len..][..n * len],
                &x.cm[i * n * len..][..n * len],
            );
            let mut carry = vec![0.0f32; n];
            for e in 0..per_dir {
                let (d, row) = (d0 + e, i * per_dir + e);
                let hs = &states[row * len * n..][..len * n];
                carry.fill(0.0);
                for l in (0..len).rev() {
                    let z = x.delta[row * len + l] + x.delta_bias[d];
                    let dt = softplus_f32(z);
                    let sig = 1.0 / (1.0 + (-z).exp());
                    let (u, gy) = (x.u[row * len + l], dy[row * len + l]);
                    let (mut gdt, mut gu) = (0.0f32, x.d_skip[d] * gy);
                    for (j, c) in carry.iter_mut().enumerate() {
                        let a = x.a[d * n + j];
                        let decay = (dt * a).exp();
                        let h_prev = if l > 0 { hs[(l - 1) * n + j] } else { 0.0 };
                        // dL/dh_t: through y_t, and from h_{t+1} through its decay.
                        let gh = cm[j * len + l] * gy + *c;
                        dcm[j * len + l] += hs[l * n + j] * gy;
                        dbm[j * len + l] += gh * dt * u;
                        gu += gh * dt * bm[j * len + l];
                        gdt += gh * (a * decay * h_prev + bm[j * len + l] * u);
                        da[e * n + j] += gh * dt * decay * h_prev;
                        *c = gh * decay;
                    }
                    du[e * len + l] = gu;
                    ddelta[e * len + l] = gdt * sig;
                    dskip[e] += gy * u;
                    dbias[e] += gdt * sig;
                }
            }
        });
    g.add_batch_shares(&shares);
    g
}

#[cfg(test)]
mod tests {
    use super::super::check::{rel_err, RandomScan};
    use super::super::cpu::{scan_backward, scan_forward};
    use super::super::INPUT_NAMES;
    use super::*;

    fn f64s(v: &[f32]) -> impl Iterator<Item = f64> + '_ {
        v.iter().map(|&x| f64::from(x))
    }

    #[test]
    fn naive_matches_f64_forward_and_fused_backward() {
        for (batch, k_dirs, per_dir, d_state, len, seed) in [
            (2, 2, 3, 4, 37, 1),
            (1, 4, 5, 16, 70, 2),
            (1, 1, 1, 1, 5, 3),
            // Whole groups of lanes and blocks of steps in the fused kernel.
            (1, 2, 40, 16, 150, 4),
        ] {
            let dims = ScanDims::with_per_dir(batch, k_dirs, per_dir, d_state, len);
            let case = RandomScan::new(dims, seed);
            let x = case.inputs();
            let (y, states) = scan_forward_naive(dims, &x);
            let want = scan_forward_f64(dims, &RefInputs::from_f32(&x));
            let err = rel_err(&y, want.iter().copied());
            assert!(err < 1e-5, "{dims:?}: y rel err {err}");
            let fused_y = scan_forward(dims, &x);
            assert!(rel_err(&fused_y, f64s(&y)) < 1e-5);
            let g = scan_backward_naive(dims, &x, &states, &case.dy).into_array();
            let want = scan_backward(dims, &x, &case.dy).into_array();
            for ((name, got), want) in INPUT_NAMES.iter().zip(&g).zip(&want) {
                let err = rel_err(got, f64s(want));
                assert!(err < 1e-4, "{dims:?}: d{name} rel err {err}");
            }
        }
    }
}
