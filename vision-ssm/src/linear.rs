//! The VSS blocks' linear layers (SS2D/SS3D's in and out projections, patch merging's reduction)
//! over rows of features, with our own backward pass on the CPU.
//!
//! burn's generic linear backward computes the weight gradient of `x: [B, H, W, C]` as a batched
//! matmul of `x`'s transposed last two axes (which Flex first copies element by element) with the
//! output gradient, one small `[C, W] x [W, C_out]` product per row of the image, and then sums the
//! `[B, H, C, C_out]` result: the profile of a `swin-umamba` step put 14 % of it there
//! (`benchmarks/results/train-step-profile-cpu.md`). Here the leading axes are flattened into one
//! `[N, C]` matrix, so the weight gradient is one GEMM `xᵀ · dy` over all rows (split into a few
//! row blocks across threads, their partial sums added) and the input gradient one GEMM
//! `dy · Wᵀ`, both on contiguous buffers read with the strides GEMM takes. GPU backends keep
//! burn's backward.

use burn::backend::autodiff::{checkpoint::strategy::CheckpointStrategy, Autodiff};
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::{TensorData, TensorPrimitive};
use rayon::prelude::*;

use crate::host::{from_host, host_view, matmul, FloatTensor};

/// Gradients of a linear layer: input (when asked for), weight, bias (when asked for).
pub type LinearGrads<B> = crate::weighted::WeightedGrads<B>;

/// A burn backend's linear layer for rows of features and its backward pass: Flex runs the host
/// backward below, autodiff records it, GPU backends keep burn's.
pub trait LinearBackend: Backend {
    /// `x: [n, d_in] · weight: [d_in, d_out] (+ bias: [d_out])` -> `[n, d_out]`. By default
    /// burn's linear.
    fn linear_2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        <Self as burn::tensor::ops::ModuleOps<Self>>::linear(x, weight, bias)
    }

    /// Gradients of [`LinearBackend::linear_2d`] given `dy: [n, d_out]`: of `x` when `need_dx`,
    /// of the weight, of the bias when `need_db`. By default burn's linear backward.
    fn linear_2d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        need_dx: bool,
        need_db: bool,
    ) -> LinearGrads<Self> {
        generic_backward::<Self>(x, weight, dy, need_dx, need_db)
    }
}

/// Flex computes the gradients on its host buffers with one GEMM each.
impl LinearBackend for burn::backend::Flex {
    fn linear_2d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        need_dx: bool,
        need_db: bool,
    ) -> LinearGrads<Self> {
        host_backward::<Self>(x, weight, dy, need_dx, need_db)
    }
}

/// Autodiff runs the inner backend's forward and records its backward.
impl<B: LinearBackend, C: CheckpointStrategy> LinearBackend for Autodiff<B, C> {
    fn linear_2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        crate::weighted::record::<B, C>(B::linear_2d, B::linear_2d_backward, x, weight, bias)
    }
}

// CubeCL backends and the fusion wrapper keep burn's ops and their backward.
crate::gpu_backends_keep_defaults!(LinearBackend);

/// Fewest rows a thread's block of the weight gradient gets: below this a block's GEMM costs
/// less than its partial sum's `C_in x C_out` buffer and addition.
const MIN_ROWS_PER_BLOCK: usize = 256;

/// `layer` applied to the last axis of `x: [..., d_in]` -> `[..., d_out]`, as
/// `Linear::forward`, through [`LinearBackend::linear_2d`] on the rows of `x`.
pub fn linear<B: LinearBackend, const D: usize>(
    layer: &Linear<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    let dims = x.dims();
    let weight = layer.weight.val();
    let [d_in, d_out] = weight.dims();
    assert_eq!(
        dims[D - 1],
        d_in,
        "linear: input features {} for a layer of {d_in}",
        dims[D - 1]
    );
    let rows = dims[..D - 1].iter().product::<usize>();
    let x: Tensor<B, 2> = x.reshape([rows, d_in]);
    let y = B::linear_2d(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        layer
            .bias
            .as_ref()
            .map(|b| b.val().into_primitive().tensor()),
    );
    let mut out = dims;
    out[D - 1] = d_out;
    Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(y)).reshape(out)
}

/// burn's own linear backward: what backends without a host backward run.
fn generic_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    dy: FloatTensor<B>,
    need_dx: bool,
    need_db: bool,
) -> LinearGrads<B> {
    let db = need_db.then(|| B::linear_bias_backward(dy.clone()));
    let dx = need_dx.then(|| B::linear_x_backward(weight, dy.clone()));
    (dx, B::linear_weight_backward(x, dy), db)
}

/// The host backward of `y = x · W + b` for `x: [n, d_in]`, `W: [d_in, d_out]`, `dy: [n, d_out]`.
fn host_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    dy: FloatTensor<B>,
    need_dx: bool,
    need_db: bool,
) -> LinearGrads<B> {
    let device = B::float_device(&x);
    let (x, xdims) = host_view::<B>(&x);
    let (w, wdims) = host_view::<B>(&weight);
    let (dy, _) = host_view::<B>(&dy);
    let (n, d_in, d_out) = (xdims[0], wdims[0], wdims[1]);
    let (dw, db) = weight_and_bias_grads(&x, &dy, [n, d_in, d_out]);
    let dx = need_dx.then(|| {
        let mut dx = vec![0.0f32; n * d_in];
        let block = n.div_ceil(rayon::current_num_threads()).max(1);
        dx.par_chunks_mut((block * d_in).max(1))
            .enumerate()
            .for_each(|(c, dxc)| {
                let m = dxc.len() / d_in.max(1);
                // dx (m × d_in) = dy (m × d_out) · Wᵀ (d_out × d_in).
                let lhs = (&dy[c * block * d_out..], d_out, 1);
                matmul(dxc, [m, d_in, d_out], lhs, (&w, 1, d_out), false);
            });
        from_host::<B>(dx, xdims.clone(), &device)
    });
    (
        dx,
        from_host::<B>(dw, wdims, &device),
        need_db.then(|| B::float_from_data(TensorData::new(db, [d_out]), &device)),
    )
}

/// `dW = xᵀ · dy` (`d_in × d_out`) and `db` = the column sums of `dy`, over blocks of rows in
/// parallel.
fn weight_and_bias_grads(
    x: &[f32],
    dy: &[f32],
    [n, d_in, d_out]: [usize; 3],
) -> (Vec<f32>, Vec<f32>) {
    let block = n
        .div_ceil(rayon::current_num_threads())
        .max(MIN_ROWS_PER_BLOCK)
        .min(n.max(1));
    let parts: Vec<(Vec<f32>, Vec<f32>)> = (0..n.div_ceil(block))
        .into_par_iter()
        .map(|c| {
            let rows = c * block..((c + 1) * block).min(n);
            let mut dw = vec![0.0f32; d_in * d_out];
            let dy_rows = &dy[rows.start * d_out..rows.end * d_out];
            // xᵀ of these rows (d_in × m): element (i, t) is x[(start + t)·d_in + i].
            let lhs = (&x[rows.start * d_in..rows.end * d_in], 1, d_in);
            matmul(
                &mut dw,
                [d_in, d_out, rows.len()],
                lhs,
                (dy_rows, d_out, 1),
                false,
            );
            let mut db = vec![0.0f32; d_out];
            for row in dy_rows.chunks_exact(d_out.max(1)) {
                db.iter_mut().zip(row).for_each(|(s, v)| *s += v);
            }
            (dw, db)
        })
        .collect();
    let mut parts = parts.into_iter();
    let (mut dw, mut db) = parts
        .next()
        .unwrap_or_else(|| (vec![0.0; d_in * d_out], vec![0.0; d_out]));
    for (pw, pb) in parts {
        dw.iter_mut().zip(pw).for_each(|(s, v)| *s += v);
        db.iter_mut().zip(pb).for_each(|(s, v)| *s += v);
    }
    (dw, db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{random, tensor};
    use burn::backend::Flex;
    use burn::nn::LinearConfig;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    type Ad = Autodiff<Flex>;

    fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
    }

    /// `L = Σ g ⊙ (x · W + b)` in float64 for `x: [n, d_in]`.
    fn loss_f64(x: &[f64], w: &[f64], b: &[f64], g: &[f64], [n, di, dout]: [usize; 3]) -> f64 {
        let mut loss = 0.0;
        for t in 0..n {
            for o in 0..dout {
                let y = b[o]
                    + (0..di)
                        .map(|i| x[t * di + i] * w[i * dout + o])
                        .sum::<f64>();
                loss += g[t * dout + o] * y;
            }
        }
        loss
    }

    /// Central finite differences of [`loss_f64`] in every entry of the `which`-th input.
    fn finite_differences(which: usize, inputs: [&[f64]; 4], dims: [usize; 3]) -> Vec<f64> {
        let h = 1e-4;
        (0..inputs[which].len())
            .map(|j| {
                let at = |delta: f64| {
                    let mut v = inputs[which].to_vec();
                    v[j] += delta;
                    let mut args = inputs;
                    args[which] = &v;
                    loss_f64(args[0], args[1], args[2], args[3], dims)
                };
                (at(h) - at(-h)) / (2.0 * h)
            })
            .collect()
    }

    fn close(name: &str, got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{name}: length");
        let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 2e-5 * scale,
                "{name}[{i}]: {g} against {w} (scale {scale})"
            );
        }
    }

    fn layer<B: Backend>(w: &[f64], b: Option<&[f64]>, [di, dout]: [usize; 2]) -> Linear<B> {
        let mut layer = LinearConfig::new(di, dout)
            .with_bias(b.is_some())
            .init::<B>(&Default::default());
        layer.weight = burn::module::Param::from_tensor(tensor(w, [di, dout]));
        layer.bias = b.map(|b| burn::module::Param::from_tensor(tensor(b, [dout])));
        layer
    }

    #[test]
    fn matches_a_float64_loop_and_its_finite_differences() {
        let _serial = crate::host::autodiff_lock();
        let mut rng = StdRng::seed_from_u64(3);
        // Rows that split unevenly into blocks across three threads, and fewer rows than a block.
        for (n, di, dout, bias) in [(1031, 5, 7, true), (3, 4, 6, false), (600, 16, 3, true)] {
            let (x, w, b, g) = (
                random(&mut rng, n * di),
                random(&mut rng, di * dout),
                random(&mut rng, dout),
                random(&mut rng, n * dout),
            );
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(3)
                .build()
                .unwrap();
            let (y, dx, dw, db) = pool.install(|| {
                let layer = layer::<Ad>(&w, bias.then_some(&b[..]), [di, dout]);
                let xt = tensor::<Ad, 2>(&x, [n, di]).require_grad();
                let y = linear(&layer, xt.clone());
                let grads = (y.clone() * tensor::<Ad, 2>(&g, [n, dout]))
                    .sum()
                    .backward();
                (
                    values(y.inner()),
                    values(xt.grad(&grads).unwrap()),
                    values(layer.weight.grad(&grads).unwrap()),
                    layer.bias.as_ref().map(|b| values(b.grad(&grads).unwrap())),
                )
            });
            let zero = vec![0.0; dout];
            let bb: &[f64] = if bias { &b } else { &zero };
            let want_y: Vec<f64> = (0..n * dout)
                .map(|k| {
                    let (t, o) = (k / dout, k % dout);
                    bb[o]
                        + (0..di)
                            .map(|i| x[t * di + i] * w[i * dout + o])
                            .sum::<f64>()
                })
                .collect();
            let what = format!("n {n}, {di} -> {dout}, bias {bias}");
            close(&format!("y ({what})"), &y, &want_y);
            let inputs = [&x[..], &w[..], bb, &g[..]];
            let dims = [n, di, dout];
            close(
                &format!("dx ({what})"),
                &dx,
                &finite_differences(0, inputs, dims),
            );
            close(
                &format!("dW ({what})"),
                &dw,
                &finite_differences(1, inputs, dims),
            );
            match db {
                Some(db) => close(
                    &format!("db ({what})"),
                    &db,
                    &finite_differences(2, inputs, dims),
                ),
                None => assert!(!bias, "{what}: no bias gradient"),
            }
        }
    }

    #[test]
    fn a_4d_input_gives_burns_linear_and_its_gradients() {
        let _serial = crate::host::autodiff_lock();
        let mut rng = StdRng::seed_from_u64(11);
        let dims = [2, 3, 5, 8];
        let (di, dout) = (8, 12);
        let (x, w, b, g) = (
            random(&mut rng, 2 * 3 * 5 * di),
            random(&mut rng, di * dout),
            random(&mut rng, dout),
            random(&mut rng, 2 * 3 * 5 * dout),
        );
        let layer = layer::<Ad>(&w, Some(&b), [di, dout]);
        let run = |ours: bool| {
            let xt = tensor::<Ad, 4>(&x, dims).require_grad();
            // A permuted view, as blocks hand in after a permute.
            let xv = xt.clone().permute([0, 2, 1, 3]);
            let y = if ours {
                linear(&layer, xv)
            } else {
                layer.forward(xv)
            };
            let grads = (y.clone() * tensor::<Ad, 4>(&g, [2, 5, 3, dout]))
                .sum()
                .backward();
            (
                values(y.inner()),
                values(xt.grad(&grads).unwrap()),
                values(layer.weight.grad(&grads).unwrap()),
                values(layer.bias.as_ref().unwrap().grad(&grads).unwrap()),
            )
        };
        let (ours, burns) = (run(true), run(false));
        let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        close("y", &ours.0, &f64s(&burns.0));
        close("dx", &ours.1, &f64s(&burns.1));
        close("dW", &ours.2, &f64s(&burns.2));
        close("db", &ours.3, &f64s(&burns.3));
    }
}
