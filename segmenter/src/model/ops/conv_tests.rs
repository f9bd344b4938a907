//! Tests of `conv.rs`: the host forward against burn's convolution, the host backward against a
//! float64 loop and finite differences, in every tiling and chunking.

use super::*;
use burn::backend::Flex;
use burn::nn::conv::Conv3dConfig;
use burn::tensor::Distribution;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vision_ssm::host::to_host;

use crate::model::ops::testing::{close, values};

type Ad = Autodiff<Flex>;

/// Input dims `[batch, cin, depth, rows, cols]`, output channels and kernel `[kd, k]` of a
/// reference case (2D is depth 1 with kd 1).
#[derive(Clone, Copy)]
struct Case {
    dims: [usize; 5],
    cout: usize,
    kd: usize,
    k: usize,
}

impl Case {
    fn out_len(&self) -> usize {
        let [b, _, d, r, c] = self.dims;
        b * self.cout * d * r * c
    }
}

/// `Σ conv(x, w, b) · g` by a float64 loop straight from the definition, and `y`.
fn loss_f64(x: &[f64], w: &[f64], b: &[f64], g: &[f64], case: Case) -> (Vec<f64>, f64) {
    let Case { dims, cout, kd, k } = case;
    let [batch, cin, depth, rows, cols] = dims;
    let inside = |i: usize, tap: usize, k: usize, len: usize| {
        let s = i as isize + tap as isize - k as isize / 2;
        (0..len as isize).contains(&s).then_some(s as usize)
    };
    let mut y = vec![0.0; case.out_len()];
    for n in 0..batch {
        for co in 0..cout {
            for z in 0..depth {
                for r in 0..rows {
                    for c in 0..cols {
                        let mut acc = b.get(co).copied().unwrap_or(0.0);
                        for ci in 0..cin {
                            for kz in 0..kd {
                                for ky in 0..k {
                                    for kx in 0..k {
                                        let (Some(sz), Some(sr), Some(sc)) = (
                                            inside(z, kz, kd, depth),
                                            inside(r, ky, k, rows),
                                            inside(c, kx, k, cols),
                                        ) else {
                                            continue;
                                        };
                                        acc += w[(((co * cin + ci) * kd + kz) * k + ky) * k + kx]
                                            * x[(((n * cin + ci) * depth + sz) * rows + sr) * cols
                                                + sc];
                                    }
                                }
                            }
                        }
                        y[(((n * cout + co) * depth + z) * rows + r) * cols + c] = acc;
                    }
                }
            }
        }
    }
    let loss = y.iter().zip(g).map(|(a, b)| a * b).sum();
    (y, loss)
}

/// Central differences of [`loss_f64`] in `x` (0), `w` (1) or `b` (2). The loss is linear in
/// each, so they are exact up to rounding.
fn finite_differences(which: usize, [x, w, b, g]: [&[f64]; 4], case: Case) -> Vec<f64> {
    let len = [x.len(), w.len(), b.len()][which];
    (0..len)
        .map(|i| {
            let h = 1e-3;
            let at = |delta: f64| {
                let (mut x, mut w, mut b) = (x.to_vec(), w.to_vec(), b.to_vec());
                [&mut x, &mut w, &mut b][which][i] += delta;
                loss_f64(&x, &w, &b, g, case).1
            };
            (at(h) - at(-h)) / (2.0 * h)
        })
        .collect()
}

fn random(rng: &mut StdRng, count: usize) -> Vec<f64> {
    (0..count).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&a| a as f32).collect()
}

#[test]
fn matches_a_float64_loop_and_its_finite_differences() {
    let mut rng = StdRng::seed_from_u64(5);
    // (batch, cin, cout, rows, cols, k, bias, x needs a gradient): odd sizes, 1×1 and 3×3
    // kernels, and a 5×5 kernel wider than the image.
    let cases = [
        (2, 3, 4, 5, 7, 3, true, true),
        (2, 2, 3, 6, 4, 1, true, true),
        (1, 4, 2, 3, 3, 3, false, true),
        (2, 2, 2, 2, 5, 5, true, false),
    ];
    for (batch, cin, cout, rows, cols, k, with_bias, x_grad) in cases {
        let dims = [batch, cin, rows, cols];
        let case = Case {
            dims: [batch, cin, 1, rows, cols],
            cout,
            kd: 1,
            k,
        };
        let x = random(&mut rng, batch * cin * rows * cols);
        let w = random(&mut rng, cout * cin * k * k);
        let b = if with_bias {
            random(&mut rng, cout)
        } else {
            Vec::new()
        };
        let g = random(&mut rng, batch * cout * rows * cols);
        let device = Default::default();
        let xt = Tensor::<Ad, 4>::from_data(TensorData::new(f32s(&x), dims), &device);
        let xt = if x_grad { xt.require_grad() } else { xt };
        let wt = Tensor::<Ad, 4>::from_data(TensorData::new(f32s(&w), [cout, cin, k, k]), &device)
            .require_grad();
        let bt = with_bias.then(|| {
            Tensor::<Ad, 1>::from_data(TensorData::new(f32s(&b), [cout]), &device).require_grad()
        });
        let gt = Tensor::<Ad, 4>::from_data(
            TensorData::new(f32s(&g), [batch, cout, rows, cols]),
            &device,
        );
        let y = Tensor::<Ad, 4>::from_primitive(TensorPrimitive::Float(Ad::conv_same(
            xt.clone().into_primitive().tensor(),
            wt.clone().into_primitive().tensor(),
            bt.clone().map(|b| b.into_primitive().tensor()),
        )));
        let grads = (y.clone() * gt).sum().backward();

        let (y_ref, _) = loss_f64(&x, &w, &b, &g, case);
        close("y", &values(y.inner()), &y_ref, 1e-5);
        let fd = |which| finite_differences(which, [&x, &w, &b, &g], case);
        close("dw", &values(wt.grad(&grads).expect("dw")), &fd(1), 1e-4);
        if let Some(bt) = &bt {
            close("db", &values(bt.grad(&grads).expect("db")), &fd(2), 1e-4);
        }
        match xt.grad(&grads) {
            Some(dx) => close("dx", &values(dx), &fd(0), 1e-4),
            None => assert!(!x_grad, "x asked for a gradient"),
        }
    }
}

/// The host backward on `case` with at most `chunk` planes per im2col buffer, as host values.
fn host_grads([x, w, g]: [&[f64]; 3], case: Case, chunk: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let device = Default::default();
    let [_, cin, _, rows, cols] = case.dims;
    let s = Sizes::of(&case.dims, &[case.cout, cin, case.kd, case.k, case.k]);
    assert_eq!(s.plane(), rows * cols);
    let budget = chunk * s.taps() * cols * 4;
    assert_eq!(s.chunk_lines(budget), chunk.min(case.dims[2] * rows));
    let prim = |v: &[f64], dims: Vec<usize>| from_host::<Flex>(f32s(v), dims, &device);
    let wdims = vec![case.cout, cin, case.kd, case.k, case.k];
    let mut gdims = case.dims.to_vec();
    gdims[1] = case.cout;
    let (dx, dw, db) = host_backward::<Flex>(
        prim(x, case.dims.to_vec()),
        prim(w, wdims),
        prim(g, gdims),
        true,
        true,
        budget,
    );
    let host = |t: FloatTensor<Flex>| to_host::<Flex>(t).0;
    (host(dx.expect("dx")), host(dw), host(db.expect("db")))
}

#[test]
fn the_3d_backward_matches_finite_differences_in_every_chunking() {
    let mut rng = StdRng::seed_from_u64(11);
    // Odd sizes; 3³ and 1³ kernels; a 5³ kernel deeper and wider than the volume.
    let cases = [
        Case {
            dims: [2, 2, 5, 3, 4],
            cout: 3,
            kd: 3,
            k: 3,
        },
        Case {
            dims: [1, 3, 3, 2, 3],
            cout: 2,
            kd: 1,
            k: 1,
        },
        Case {
            dims: [2, 1, 2, 3, 2],
            cout: 2,
            kd: 5,
            k: 5,
        },
    ];
    for case in cases {
        let [batch, cin, depth, rows, cols] = case.dims;
        let x = random(&mut rng, batch * cin * depth * rows * cols);
        let w = random(&mut rng, case.cout * cin * case.kd * case.k * case.k);
        let b = random(&mut rng, case.cout);
        let g = random(&mut rng, case.out_len());
        let fd = |which| finite_differences(which, [&x, &w, &b, &g], case);
        let (fdx, fdw, fdb) = (fd(0), fd(1), fd(2));
        // One line per chunk, two, a plane and one more line (uneven), all of them.
        for chunk in [1, 2, rows + 1, depth * rows] {
            let (dx, dw, db) = host_grads([&x, &w, &g], case, chunk);
            let name = |g: &str| format!("{g} (kernel {}, chunk {chunk})", case.k);
            close(&name("dx"), &dx, &fdx, 1e-4);
            close(&name("dw"), &dw, &fdw, 1e-4);
            close(&name("db"), &db, &fdb, 1e-4);
        }
    }
}

#[test]
fn the_host_forward_matches_burns_convolution_in_every_tiling() {
    let device = Default::default();
    // (cin, cout, k, bias) on a volume of depth 3 and on an image (depth 1, kd 1).
    for (cin, cout, k, bias, depth) in
        [(3, 4, 3, true, 3), (2, 3, 1, false, 3), (2, 5, 3, false, 1)]
    {
        let (rows, cols) = (5, 7);
        let kd = if depth == 1 { 1 } else { k };
        let x = Tensor::<Flex, 5>::random(
            [2, cin, depth, rows, cols],
            Distribution::Uniform(-1.0, 1.0),
            &device,
        );
        let w = Tensor::<Flex, 5>::random(
            [cout, cin, kd, k, k],
            Distribution::Uniform(-1.0, 1.0),
            &device,
        );
        let b = bias
            .then(|| Tensor::<Flex, 1>::random([cout], Distribution::Uniform(-1.0, 1.0), &device));
        let options = ConvOptions::new([1; 3], [kd / 2, k / 2, k / 2], [1; 3], 1);
        let want = burn::tensor::module::conv3d(x.clone(), w.clone(), b.clone(), options);
        let want: Vec<f64> = values(want).into_iter().map(f64::from).collect();
        let s = Sizes::of(&[2, cin, depth, rows, cols], &[cout, cin, kd, k, k]);
        // One line per tile, two, a plane and one more line (uneven), all of them.
        for lines in [1, 2, rows + 1, depth * rows] {
            let budget = lines * s.taps() * cols * 4;
            assert_eq!(s.chunk_lines(budget), lines.min(depth * rows));
            let got = host_forward::<Flex>(
                x.clone().into_primitive().tensor(),
                w.clone().into_primitive().tensor(),
                b.clone().map(|b| b.into_primitive().tensor()),
                budget,
            );
            let got = to_host::<Flex>(got).0;
            close(
                &format!("y (k {k}, depth {depth}, {lines} lines a tile)"),
                &got,
                &want,
                1e-5,
            );
        }
    }
}

#[test]
fn forward_same_3d_matches_burns_conv3d_and_its_generic_backward() {
    let device = Default::default();
    // (cin, cout, k, bias): the network's 3³ conv without bias and 1³ head with one.
    for (cin, cout, k, bias) in [(3, 4, 3, false), (4, 2, 1, true), (2, 3, 3, true)] {
        let dims = [2, cin, 5, 6, 7];
        let p = k / 2;
        let conv = Conv3dConfig::new([cin, cout], [k; 3])
            .with_padding(PaddingConfig3d::Explicit(p, p, p))
            .with_bias(bias)
            .init::<Ad>(&device);
        let x =
            Tensor::<Ad, 5>::random(dims, Distribution::Uniform(-1.0, 1.0), &device).require_grad();
        let g = Tensor::<Ad, 5>::random(
            [2, cout, 5, 6, 7],
            Distribution::Uniform(-1.0, 1.0),
            &device,
        );
        let (w, b) = (conv.weight.val(), conv.bias.as_ref().map(|b| b.val()));

        let ours = forward_same_3d(&conv, x.clone());
        let ours_grads = (ours.clone() * g.clone()).sum().backward();
        let options = ConvOptions::new([1; 3], [p; 3], [1; 3], 1);
        let reference = burn::tensor::module::conv3d(x.clone(), w.clone(), b.clone(), options);
        let ref_grads = (reference.clone() * g.clone()).sum().backward();

        let f64s = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
        let grad = |t: &Tensor<Ad, 5>, grads| f64s(values(t.grad(grads).expect("grad")));
        close("y", &values(ours), &f64s(values(reference)), 1e-5);
        let want_dx = grad(&x, &ref_grads);
        let want_dw = grad(&w, &ref_grads);
        close("dx", &values(x.grad(&ours_grads).unwrap()), &want_dx, 1e-4);
        close("dw", &values(w.grad(&ours_grads).unwrap()), &want_dw, 1e-4);
        let want_db = b
            .as_ref()
            .map(|b| f64s(values(b.grad(&ref_grads).unwrap())));
        if let (Some(b), Some(want_db)) = (&b, &want_db) {
            close("db", &values(b.grad(&ours_grads).unwrap()), want_db, 1e-4);
        }

        // The host backward in chunks of two planes (5 = 2 + 2 + 1) gives the same.
        let host = |t: Tensor<Ad, 5>| f64s(values(t.inner()));
        let case = Case {
            dims,
            cout,
            kd: k,
            k,
        };
        let (x64, w64, g64) = (host(x.clone()), host(w.clone()), host(g));
        let (dx, dw, db) = host_grads([&x64, &w64, &g64], case, 2);
        close("dx (chunks of 2)", &dx, &want_dx, 1e-4);
        close("dw (chunks of 2)", &dw, &want_dw, 1e-4);
        if let Some(want_db) = &want_db {
            close("db (chunks of 2)", &db, want_db, 1e-4);
        }
    }
}

/// The gradients that training gets through `upsample` and `upsample_3d` (autodiff recording
/// the host backward of `upconv.rs`) are those of burn's own transposed convolution.
#[test]
fn upsampling_through_autodiff_gives_burns_transposed_conv_gradients() {
    use burn::nn::conv::{ConvTranspose2dConfig, ConvTranspose3dConfig};
    let _guard = crate::model::ops::testing::autodiff_lock();
    let device = Default::default();
    let (g2, g3): (Tensor<Ad, 4>, Tensor<Ad, 5>) = (
        Tensor::random([2, 4, 8, 10], Distribution::Uniform(-1.0, 1.0), &device),
        Tensor::random([2, 3, 4, 6, 8], Distribution::Uniform(-1.0, 1.0), &device),
    );
    let layer2 = ConvTranspose2dConfig::new([3, 4], [2, 2])
        .with_stride([2, 2])
        .init::<Ad>(&device);
    let layer3 = ConvTranspose3dConfig::new([2, 3], [2, 2, 2])
        .with_stride([2, 2, 2])
        .with_bias(false)
        .init::<Ad>(&device);
    let x2: Tensor<Ad, 4> = Tensor::random([2, 3, 4, 5], Distribution::Default, &device);
    let x3: Tensor<Ad, 5> = Tensor::random([2, 2, 2, 3, 4], Distribution::Default, &device);
    let (x2, x3) = (x2.require_grad(), x3.require_grad());
    let grads2 = [
        (upsample(&layer2, x2.clone()) * g2.clone())
            .sum()
            .backward(),
        (layer2.forward(x2.clone()) * g2).sum().backward(),
    ];
    let grads3 = [
        (upsample_3d(&layer3, x3.clone()) * g3.clone())
            .sum()
            .backward(),
        (layer3.forward(x3.clone()) * g3).sum().backward(),
    ];
    let f64s = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
    let [ours, burns] = &grads2;
    let pairs = [
        (
            "2D dx",
            values(x2.grad(ours).unwrap()),
            values(x2.grad(burns).unwrap()),
        ),
        (
            "2D dw",
            values(layer2.weight.grad(ours).unwrap()),
            values(layer2.weight.grad(burns).unwrap()),
        ),
        (
            "2D db",
            values(layer2.bias.as_ref().unwrap().grad(ours).unwrap()),
            values(layer2.bias.as_ref().unwrap().grad(burns).unwrap()),
        ),
    ];
    for (name, got, want) in pairs {
        close(name, &got, &f64s(want), 1e-5);
    }
    let [ours, burns] = &grads3;
    close(
        "3D dx",
        &values(x3.grad(ours).unwrap()),
        &f64s(values(x3.grad(burns).unwrap())),
        1e-5,
    );
    close(
        "3D dw",
        &values(layer3.weight.grad(ours).unwrap()),
        &f64s(values(layer3.weight.grad(burns).unwrap())),
        1e-5,
    );
}
