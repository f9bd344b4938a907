//! Tests of the kernels against the float64 reference, on every instruction set this CPU has.

use super::super::check::{self, RandomScan};
use super::super::reference::{scan_forward_f64, softplus_f64, RefInputs};
use super::isa::isa_dispatch;
use super::layout::{lane_vec, Layout};
use super::simd::{flat, vexp, vexp2, vsoftplus_sigmoid, Simd};
use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Test probe: (2^x, e^(2x), softplus(x), sigmoid(x)) of every x through the vector code;
/// `xs.len()` must be a multiple of 16.
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

isa_dispatch!(math_probe, math_probe_body, (xs: &[f32], out: &mut [[f32; 4]]));

/// Random inputs in the ranges a trained VMamba sees, with `per_dir` channels per direction.
fn random(
    batch: usize,
    k_dirs: usize,
    per_dir: usize,
    d_state: usize,
    len: usize,
    seed: u64,
) -> RandomScan {
    RandomScan::new(
        ScanDims::with_per_dir(batch, k_dirs, per_dir, d_state, len),
        seed,
    )
}

/// max |got - want| / max |want|.
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    check::rel_err(got, want.iter().copied())
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
        let x = random(batch, k, e, n, len, seed);
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
    let mut x = random(1, 2, 2, 4, 50, 99);
    let mut rng = StdRng::seed_from_u64(7);
    for v in &mut x.values[1] {
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
    let x = random(batch, k, e, n, len, seed);
    let mut rng = StdRng::seed_from_u64(seed + 1000);
    let w: Vec<f32> = (0..x.values[0].len())
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
                for ((name, want), got) in fd.iter().zip(g.into_array()) {
                    let err = rel_err(&got, want);
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
    let x = random(2, 4, 3, 16, 200, 31);
    let mut rng = StdRng::seed_from_u64(32);
    let dy: Vec<f32> = (0..x.values[0].len())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let want = backward_with(Isa::Base, CHUNK, x.dims, &x.inputs(), &dy);
    for isa in Isa::available() {
        for chunk in [1, 7, CHUNK, 500] {
            let g = backward_with(isa, chunk, x.dims, &x.inputs(), &dy);
            let pairs = g.into_array().into_iter().zip(want.clone().into_array());
            for (i, (got, want)) in pairs.enumerate() {
                let err = rel_err(&got, &widen(&want));
                assert!(err < 1e-5, "{isa:?} chunk {chunk} grad #{i}: rel err {err}");
            }
        }
    }
}

#[test]
fn check_rejects_bad_shapes() {
    let x = random(1, 2, 2, 4, 5, 41);
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
    short.delta_bias = &x.values[6][..1];
    assert!(x.dims.check(&short).unwrap_err().contains("delta_bias"));
}

#[test]
fn empty_batch_gives_empty_outputs() {
    let x = random(0, 2, 2, 4, 5, 51);
    assert!(scan_forward(x.dims, &x.inputs()).is_empty());
    let g = scan_backward(x.dims, &x.inputs(), &[]);
    assert!(g.u.is_empty() && g.a.iter().all(|&v| v == 0.0));
}
