//! The network's stride-1 "same" 2D convolutions, with our own backward pass on the CPU.
//!
//! A profile of a `tiny` training step on Flex (`benchmarks/results/train-step-profile-cpu.md`)
//! put a third of the step in burn's generic convolution backward: the weight gradient is a
//! convolution of `swap_dims` views, which Flex first copies element by element, and the input
//! gradient a transposed 3D convolution. Here, per image, one im2col and two GEMMs on contiguous
//! buffers give both. The forward pass stays burn's (Flex's is already im2col + GEMM); GPU
//! backends keep burn's backward too.

use burn::backend::autodiff::{
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
    Autodiff,
};
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{TensorData, TensorPrimitive};
use rayon::prelude::*;

use vision_ssm::host::{from_host, to_host};
use vision_ssm::scan::FloatTensor;

/// Stride 1, padding `kernel / 2`, no dilation, no groups: the output has the input's size.
fn same_options(kernel: usize) -> ConvOptions<2> {
    ConvOptions::new([1, 1], [kernel / 2, kernel / 2], [1, 1], 1)
}

/// Kernel side of a `[C_out, C_in, k, k]` weight primitive.
fn kernel_of<B: Backend>(weight: &FloatTensor<B>) -> usize {
    Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(weight.clone())).dims()[2]
}

/// Gradients of a convolution: input (when asked for), weight, bias (when it has one).
pub type ConvGrads<B> = (
    Option<FloatTensor<B>>,
    FloatTensor<B>,
    Option<FloatTensor<B>>,
);

/// A backend that runs the network's "same" convolutions (stride 1, odd square kernel `k`,
/// padding `k / 2`, no dilation or groups) and their backward pass.
pub trait ConvBackend: Backend {
    /// Whether the backward pass runs on the host (im2col and GEMMs, see the module doc) rather
    /// than through burn's generic convolution backward.
    const HOST_BACKWARD: bool = false;

    /// `x: [B, C_in, H, W]`, `weight: [C_out, C_in, k, k]`, `bias: [C_out]` -> `[B, C_out, H, W]`.
    fn conv_same(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        let k = kernel_of::<Self>(&weight);
        Self::conv2d(x, weight, bias, same_options(k))
    }

    /// Gradients given `dy`: of `x` when `need_dx`, of the weight, of the bias when `need_db`.
    fn conv_same_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        need_dx: bool,
        need_db: bool,
    ) -> ConvGrads<Self> {
        if Self::HOST_BACKWARD {
            return host_backward::<Self>(x, weight, dy, need_dx, need_db);
        }
        let options = same_options(kernel_of::<Self>(&weight));
        let db = need_db.then(|| {
            let dy = Tensor::<Self, 4>::from_primitive(TensorPrimitive::Float(dy.clone()));
            let c = dy.dims()[1];
            dy.sum_dim(0)
                .sum_dim(2)
                .sum_dim(3)
                .reshape([c])
                .into_primitive()
                .tensor()
        });
        let dx = need_dx.then(|| {
            Self::conv2d_x_backward(x.clone(), weight.clone(), dy.clone(), options.clone())
        });
        let dw = Self::conv2d_weight_backward(x, weight, dy, options);
        (dx, dw, db)
    }
}

#[cfg(feature = "cuda")]
impl ConvBackend for burn::backend::Cuda {}

impl ConvBackend for burn::backend::Flex {
    const HOST_BACKWARD: bool = true;
}

/// Runs `conv` through [`ConvBackend::conv_same`]. `conv` must be a stride-1 convolution with an
/// odd square kernel and padding `k / 2`, no dilation or groups, as `model.rs` builds them.
pub fn forward_same<B: ConvBackend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    debug_assert!(
        conv.stride == [1, 1]
            && conv.dilation == [1, 1]
            && conv.groups == 1
            && conv.kernel_size[0] == conv.kernel_size[1]
            && conv.kernel_size[0] % 2 == 1,
        "forward_same needs a stride-1 'same' convolution"
    );
    let weight = conv.weight.val().into_primitive().tensor();
    let bias = conv
        .bias
        .as_ref()
        .map(|b| b.val().into_primitive().tensor());
    Tensor::from_primitive(TensorPrimitive::Float(B::conv_same(
        x.into_primitive().tensor(),
        weight,
        bias,
    )))
}

/// Sizes of one convolution: channels in and out, image rows and columns, kernel side.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    cin: usize,
    cout: usize,
    rows: usize,
    cols: usize,
    k: usize,
}

impl Sizes {
    /// Rows of the im2col matrix (`C_in · k · k`), one per weight of an output channel.
    fn taps(&self) -> usize {
        self.cin * self.k * self.k
    }

    fn pixels(&self) -> usize {
        self.rows * self.cols
    }

    /// For kernel column `kx`: the output columns whose input column is inside the image, and
    /// the input column of the first of them.
    fn valid_cols(&self, kx: usize) -> (std::ops::Range<usize>, usize) {
        let p = self.k / 2;
        let start = p.saturating_sub(kx);
        let end = (self.cols + p).saturating_sub(kx).min(self.cols);
        (start..end.max(start), start + kx - p)
    }

    /// Input row of output row `y` under kernel row `ky`, if inside the image.
    fn source_row(&self, y: usize, ky: usize) -> Option<usize> {
        (y + ky)
            .checked_sub(self.k / 2)
            .filter(|&sy| sy < self.rows)
    }
}

/// `col[(ci·k + ky)·k + kx][y·W + x] = image[ci][y + ky - p][x + kx - p]`, zero outside.
fn im2col(image: &[f32], s: Sizes, col: &mut [f32]) {
    let (n, k) = (s.pixels(), s.k);
    for (r, row) in col.chunks_exact_mut(n).enumerate() {
        let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
        let (xs, sx0) = s.valid_cols(kx);
        let plane = &image[ci * n..(ci + 1) * n];
        for y in 0..s.rows {
            let out = &mut row[y * s.cols..(y + 1) * s.cols];
            match s.source_row(y, ky) {
                Some(sy) if !xs.is_empty() => {
                    out[..xs.start].fill(0.0);
                    out[xs.end..].fill(0.0);
                    let src = &plane[sy * s.cols + sx0..][..xs.len()];
                    out[xs.clone()].copy_from_slice(src);
                }
                _ => out.fill(0.0),
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds every column entry back onto the image pixel it came from.
fn col2im_add(col: &[f32], s: Sizes, image: &mut [f32]) {
    let (n, k) = (s.pixels(), s.k);
    for (r, row) in col.chunks_exact(n).enumerate() {
        let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
        let (xs, sx0) = s.valid_cols(kx);
        let plane = &mut image[ci * n..(ci + 1) * n];
        if xs.is_empty() {
            continue;
        }
        for y in 0..s.rows {
            if let Some(sy) = s.source_row(y, ky) {
                let dst = &mut plane[sy * s.cols + sx0..][..xs.len()];
                let src = &row[y * s.cols..][xs.clone()];
                dst.iter_mut().zip(src).for_each(|(d, v)| *d += v);
            }
        }
    }
}

/// A matrix operand: values, row stride and column stride.
type Operand<'a> = (&'a [f32], usize, usize);

/// `dst (m×n, row-major) = lhs (m×q) · rhs (q×n)`, overwriting `dst`.
fn matmul(dst: &mut [f32], [m, n, q]: [usize; 3], lhs: Operand, rhs: Operand) {
    if m == 0 || n == 0 {
        return;
    }
    if q == 0 {
        dst[..m * n].fill(0.0);
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    // The bounds that make the raw-pointer call below sound.
    assert!(last(m, n, n, 1) < dst.len(), "matmul: dst too small");
    assert!(
        last(m, q, lhs.1, lhs.2) < lhs.0.len(),
        "matmul: lhs too small"
    );
    assert!(
        last(q, n, rhs.1, rhs.2) < rhs.0.len(),
        "matmul: rhs too small"
    );
    // SAFETY: every element gemm reads or writes is inside its slice (asserted above), and `dst`
    // is borrowed mutably, so it does not alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            q,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.0.as_ptr(),
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0.as_ptr(),
            rhs.2 as isize,
            rhs.1 as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// One image's share of the gradients: its weight and bias gradients (returned) and its input
/// gradient (into `dx` when asked for).
fn image_backward(
    image: &[f32],
    dy: &[f32],
    weight: &[f32],
    s: Sizes,
    dx: Option<&mut [f32]>,
) -> (Vec<f32>, Vec<f32>) {
    let (taps, n) = (s.taps(), s.pixels());
    let mut col = vec![0.0f32; taps * n];
    im2col(image, s, &mut col);
    // dW (C_out × taps) = dY (C_out × N) · colᵀ (N × taps).
    let mut dw = vec![0.0f32; s.cout * taps];
    matmul(&mut dw, [s.cout, taps, n], (dy, n, 1), (&col, 1, n));
    let db = dy.chunks_exact(n).map(|c| c.iter().sum()).collect();
    if let Some(dx) = dx {
        // dcol (taps × N) = Wᵀ (taps × C_out) · dY (C_out × N), then back onto the image.
        matmul(&mut col, [taps, n, s.cout], (weight, 1, taps), (dy, n, 1));
        dx.fill(0.0);
        col2im_add(&col, s, dx);
    }
    (dw, db)
}

fn host_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    dy: FloatTensor<B>,
    need_dx: bool,
    need_db: bool,
) -> ConvGrads<B> {
    let device = B::float_device(&x);
    let (x, xdims) = to_host::<B>(x);
    let (weight, wdims) = to_host::<B>(weight);
    let (dy, _) = to_host::<B>(dy);
    let s = Sizes {
        cin: xdims[1],
        cout: wdims[0],
        rows: xdims[2],
        cols: xdims[3],
        k: wdims[2],
    };
    let (image_len, out_len) = (s.cin * s.pixels(), s.cout * s.pixels());
    let one = |i: usize, dx: Option<&mut [f32]>| {
        let image = &x[i * image_len..(i + 1) * image_len];
        let dy = &dy[i * out_len..(i + 1) * out_len];
        image_backward(image, dy, &weight, s, dx)
    };
    let mut dx = vec![0.0f32; if need_dx { x.len() } else { 0 }];
    let parts: Vec<(Vec<f32>, Vec<f32>)> = if need_dx {
        dx.par_chunks_mut(image_len.max(1))
            .enumerate()
            .map(|(i, dxi)| one(i, Some(dxi)))
            .collect()
    } else {
        (0..xdims[0])
            .into_par_iter()
            .map(|i| one(i, None))
            .collect()
    };
    let mut dw = vec![0.0f32; weight.len()];
    let mut db = vec![0.0f32; s.cout];
    for (pw, pb) in parts {
        dw.iter_mut().zip(pw).for_each(|(d, v)| *d += v);
        db.iter_mut().zip(pb).for_each(|(d, v)| *d += v);
    }
    (
        need_dx.then(|| from_host::<B>(dx, xdims, &device)),
        from_host::<B>(dw, wdims, &device),
        need_db.then(|| B::float_from_data(TensorData::new(db, [s.cout]), &device)),
    )
}

/// Backward of [`ConvBackend::conv_same`] under autodiff; `N` is 2 without a bias, 3 with one.
#[derive(Debug)]
struct ConvSameBackward<const N: usize>;

impl<B: ConvBackend, const N: usize> Backward<B, N> for ConvSameBackward<N> {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<B>(&ops.node);
        let (x, weight) = ops.state;
        let need_dx = ops.parents[0].is_some();
        let need_db = N == 3 && ops.parents[N - 1].is_some();
        let (dx, dw, db) = B::conv_same_backward(x, weight, dy, need_dx, need_db);
        let mut out = [dx, Some(dw), db].into_iter();
        for parent in ops.parents {
            if let (Some(node), Some(grad)) = (parent, out.next().flatten()) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: ConvBackend, C: CheckpointStrategy> ConvBackend for Autodiff<B, C> {
    fn conv_same(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        match bias {
            Some(bias) => {
                let nodes = [x.node.clone(), weight.node.clone(), bias.node.clone()];
                match ConvSameBackward::<3>
                    .prepare::<C>(nodes)
                    .compute_bound()
                    .stateful()
                {
                    OpsKind::Tracked(prep) => {
                        let y = B::conv_same(
                            x.primitive.clone(),
                            weight.primitive.clone(),
                            Some(bias.primitive),
                        );
                        prep.finish((x.primitive, weight.primitive), y)
                    }
                    OpsKind::UnTracked(prep) => prep.finish(B::conv_same(
                        x.primitive,
                        weight.primitive,
                        Some(bias.primitive),
                    )),
                }
            }
            None => {
                let nodes = [x.node.clone(), weight.node.clone()];
                match ConvSameBackward::<2>
                    .prepare::<C>(nodes)
                    .compute_bound()
                    .stateful()
                {
                    OpsKind::Tracked(prep) => {
                        let y = B::conv_same(x.primitive.clone(), weight.primitive.clone(), None);
                        prep.finish((x.primitive, weight.primitive), y)
                    }
                    OpsKind::UnTracked(prep) => {
                        prep.finish(B::conv_same(x.primitive, weight.primitive, None))
                    }
                }
            }
        }
    }

    fn conv_same_backward(
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: bool,
        _: bool,
    ) -> ConvGrads<Self> {
        // Reached only for second-order derivatives, which training never asks for.
        unimplemented!("second-order gradients of the convolution are not supported")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    type Ad = Autodiff<Flex>;

    /// `Σ conv(x, w, b) · g` by a float64 loop straight from the definition.
    #[allow(clippy::too_many_arguments)]
    fn loss_f64(
        x: &[f64],
        w: &[f64],
        b: &[f64],
        g: &[f64],
        [batch, cin, rows, cols]: [usize; 4],
        cout: usize,
        k: usize,
    ) -> (Vec<f64>, f64) {
        let p = k as isize / 2;
        let mut y = vec![0.0; batch * cout * rows * cols];
        for n in 0..batch {
            for co in 0..cout {
                for r in 0..rows {
                    for c in 0..cols {
                        let mut acc = b.get(co).copied().unwrap_or(0.0);
                        for ci in 0..cin {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let (sr, sc) = (
                                        r as isize + ky as isize - p,
                                        c as isize + kx as isize - p,
                                    );
                                    if sr < 0
                                        || sc < 0
                                        || sr >= rows as isize
                                        || sc >= cols as isize
                                    {
                                        continue;
                                    }
                                    acc += w[((co * cin + ci) * k + ky) * k + kx]
                                        * x[((n * cin + ci) * rows + sr as usize) * cols
                                            + sc as usize];
                                }
                            }
                        }
                        y[((n * cout + co) * rows + r) * cols + c] = acc;
                    }
                }
            }
        }
        let loss = y.iter().zip(g).map(|(a, b)| a * b).sum();
        (y, loss)
    }

    fn values<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
        t.into_data().into_vec::<f32>().expect("f32")
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
            let mut random = |count: usize| -> Vec<f64> {
                (0..count).map(|_| rng.random_range(-1.0..1.0)).collect()
            };
            let x = random(batch * cin * rows * cols);
            let w = random(cout * cin * k * k);
            let b = if with_bias { random(cout) } else { Vec::new() };
            let g = random(batch * cout * rows * cols);
            let f32s = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
            let device = Default::default();
            let xt = Tensor::<Ad, 4>::from_data(TensorData::new(f32s(&x), dims), &device);
            let xt = if x_grad { xt.require_grad() } else { xt };
            let wt =
                Tensor::<Ad, 4>::from_data(TensorData::new(f32s(&w), [cout, cin, k, k]), &device)
                    .require_grad();
            let bt = with_bias.then(|| {
                Tensor::<Ad, 1>::from_data(TensorData::new(f32s(&b), [cout]), &device)
                    .require_grad()
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

            let (y_ref, _) = loss_f64(&x, &w, &b, &g, dims, cout, k);
            let y_got = values(y.inner());
            let scale = y_ref.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (a, r) in y_got.iter().zip(&y_ref) {
                assert!((f64::from(*a) - r).abs() <= 1e-5 * scale, "y {a} vs {r}");
            }

            // The loss is linear in each input, so central differences are exact up to rounding.
            let fd = |which: usize, len: usize| -> Vec<f64> {
                (0..len)
                    .map(|i| {
                        let h = 1e-3;
                        let at = |delta: f64| {
                            let (mut x, mut w, mut b) = (x.clone(), w.clone(), b.clone());
                            [&mut x, &mut w, &mut b][which][i] += delta;
                            loss_f64(&x, &w, &b, &g, dims, cout, k).1
                        };
                        (at(h) - at(-h)) / (2.0 * h)
                    })
                    .collect()
            };
            let close = |name: &str, got: Vec<f32>, want: Vec<f64>| {
                assert_eq!(got.len(), want.len(), "{name}");
                let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                assert!(scale > 0.0, "{name}: the gradient is not all zero");
                for (a, r) in got.iter().zip(&want) {
                    assert!(
                        (f64::from(*a) - r).abs() <= 1e-4 * scale,
                        "{name} {a} vs {r} (k={k}, {rows}x{cols})"
                    );
                }
            };
            close("dw", values(wt.grad(&grads).expect("dw")), fd(1, w.len()));
            if let Some(bt) = &bt {
                close("db", values(bt.grad(&grads).expect("db")), fd(2, b.len()));
            }
            match xt.grad(&grads) {
                Some(dx) => close("dx", values(dx), fd(0, x.len())),
                None => assert!(!x_grad, "x asked for a gradient"),
            }
        }
    }
}
