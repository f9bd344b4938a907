//! The depthwise "same" convolution of SS2D and SS3D (one filter per channel, stride 1, odd
//! kernel, zero padding that keeps the size), with its own passes on the CPU.
//!
//! burn's generic backward of a grouped convolution loops over the groups, here one per
//! channel: per channel it slices the input and the output gradient, runs a convolution whose
//! kernel is the whole gradient image, and writes the result into the weight gradient with a
//! slice assignment, so a layer of 96 channels costs 96 rounds of strided copies. In 3D, Flex's
//! forward also takes its generic grouped path. Here each pass walks the channel planes
//! directly: the forward and the input gradient add shifted rows times a tap (the input
//! gradient with the kernel flipped), the weight gradient sums dot products of shifted rows.
//! Planes run in parallel; the rows compile for AVX2 where the CPU has it. GPU backends keep
//! burn's convolution.

use burn::backend::autodiff::{checkpoint::strategy::CheckpointStrategy, Autodiff};
use burn::nn::conv::{Conv2d, Conv3d};
use burn::prelude::*;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{TensorData, TensorMetadata, TensorPrimitive};
use rayon::prelude::*;

use crate::host::{from_host, host_view, FloatTensor};
use crate::weighted::WeightedGrads;

/// A burn backend's depthwise "same" convolution and its backward: Flex runs the host passes
/// below, autodiff records them as one node, GPU backends keep burn's grouped convolution.
pub trait DepthwiseBackend: Backend {
    /// `x: [B, C, (D,) H, W]`, `weight: [C, 1, (kd,) kh, kw]`, `bias: [C]` -> the same shape
    /// as `x`. By default burn's convolution with one group per channel.
    fn depthwise(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        generic_forward::<Self>(x, weight, bias)
    }

    /// Gradients of [`DepthwiseBackend::depthwise`] given `dy`: of `x` when `need_dx`, of the
    /// weight, of the bias when `need_db`. By default burn's convolution backward.
    fn depthwise_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        need_dx: bool,
        need_db: bool,
    ) -> WeightedGrads<Self> {
        generic_backward::<Self>(x, weight, dy, need_dx, need_db)
    }
}

/// Flex runs both passes on its host buffers (odd kernels; even ones keep burn's).
impl DepthwiseBackend for burn::backend::Flex {
    fn depthwise(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        if !odd_kernel::<Self>(&weight) {
            return generic_forward::<Self>(x, weight, bias);
        }
        host_forward::<Self>(x, weight, bias)
    }

    fn depthwise_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        need_dx: bool,
        need_db: bool,
    ) -> WeightedGrads<Self> {
        if !odd_kernel::<Self>(&weight) {
            return generic_backward::<Self>(x, weight, dy, need_dx, need_db);
        }
        host_backward::<Self>(x, weight, dy, need_dx, need_db)
    }
}

/// Whether every kernel axis of `weight` (`[C, 1, k..]`) is odd, as the host passes need.
fn odd_kernel<B: Backend>(weight: &FloatTensor<B>) -> bool {
    weight.shape().to_vec()[2..].iter().all(|k| k % 2 == 1)
}

/// Autodiff runs the inner backend's forward and records its backward.
impl<B: DepthwiseBackend, C: CheckpointStrategy> DepthwiseBackend for Autodiff<B, C> {
    fn depthwise(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        crate::weighted::record::<B, C>(B::depthwise, B::depthwise_backward, x, weight, bias)
    }
}

// CubeCL backends and the fusion wrapper keep burn's ops and their backward.
crate::gpu_backends_keep_defaults!(DepthwiseBackend);

/// `layer` (a depthwise, stride-1, "same" `Conv2d` such as SS2D's) applied to `x: [B, C, H, W]`
/// through [`DepthwiseBackend::depthwise`].
pub fn depthwise_2d<B: DepthwiseBackend>(layer: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    debug_assert!(
        layer.stride == [1, 1] && layer.dilation == [1, 1] && layer.groups == x.dims()[1],
        "depthwise_2d needs a stride-1, one-filter-per-channel convolution"
    );
    let bias = layer.bias.as_ref().map(|b| b.val());
    apply(x, layer.weight.val(), bias)
}

/// `layer` (a depthwise, stride-1, "same" `Conv3d` such as SS3D's) applied to
/// `x: [B, C, D, H, W]` through [`DepthwiseBackend::depthwise`].
pub fn depthwise_3d<B: DepthwiseBackend>(layer: &Conv3d<B>, x: Tensor<B, 5>) -> Tensor<B, 5> {
    debug_assert!(
        layer.stride == [1, 1, 1] && layer.dilation == [1, 1, 1] && layer.groups == x.dims()[1],
        "depthwise_3d needs a stride-1, one-filter-per-channel convolution"
    );
    let bias = layer.bias.as_ref().map(|b| b.val());
    apply(x, layer.weight.val(), bias)
}

/// `x` convolved by `weight` (+ `bias`) through the backend's depthwise op.
fn apply<B: DepthwiseBackend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, D>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    let y = B::depthwise(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        bias.map(|b| b.into_primitive().tensor()),
    );
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

/// The options of a depthwise "same" convolution of `channels` channels and kernel `kernel`.
fn options<const D: usize>(kernel: [usize; D], channels: usize) -> ConvOptions<D> {
    ConvOptions::new([1; D], kernel.map(|k| k / 2), [1; D], channels)
}

/// burn's grouped convolution: what backends without host passes run.
fn generic_forward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    let w = weight.shape().to_vec();
    match w[..] {
        [c, _, kh, kw] => B::conv2d(x, weight, bias, options([kh, kw], c)),
        [c, _, kd, kh, kw] => B::conv3d(x, weight, bias, options([kd, kh, kw], c)),
        ref other => panic!("depthwise conv: a weight of rank 4 or 5, not {other:?}"),
    }
}

/// burn's grouped convolution backward: what backends without host passes run.
fn generic_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    dy: FloatTensor<B>,
    need_dx: bool,
    need_db: bool,
) -> WeightedGrads<B> {
    let w = weight.shape().to_vec();
    match w[..] {
        [c, _, kh, kw] => {
            let o = options([kh, kw], c);
            let db =
                need_db.then(|| B::conv2d_bias_backward(x.clone(), weight.clone(), dy.clone()));
            let dx = need_dx
                .then(|| B::conv2d_x_backward(x.clone(), weight.clone(), dy.clone(), o.clone()));
            (dx, B::conv2d_weight_backward(x, weight, dy, o), db)
        }
        [c, _, kd, kh, kw] => {
            let o = options([kd, kh, kw], c);
            let db =
                need_db.then(|| B::conv3d_bias_backward(x.clone(), weight.clone(), dy.clone()));
            let dx = need_dx
                .then(|| B::conv3d_x_backward(x.clone(), weight.clone(), dy.clone(), o.clone()));
            (dx, B::conv3d_weight_backward(x, weight, dy, o), db)
        }
        ref other => panic!("depthwise conv: a weight of rank 4 or 5, not {other:?}"),
    }
}

/// The sizes of one depthwise convolution, 2D ones with a depth of 1.
#[derive(Clone, Copy, Debug)]
struct Plane {
    batch: usize,
    channels: usize,
    /// `[depth, height, width]` of a channel's plane.
    size: [usize; 3],
    /// `[kd, kh, kw]`, each odd.
    kernel: [usize; 3],
}

impl Plane {
    /// The sizes from the dims of `x` and of the weight; panics on a weight that is not one
    /// odd filter per channel (the layers that call this build it so).
    fn of(x: &[usize], w: &[usize]) -> Plane {
        let (size, kernel) = match (x, w) {
            ([_, _, h, wd], [_, 1, kh, kw]) => ([1, *h, *wd], [1, *kh, *kw]),
            ([_, _, d, h, wd], [_, 1, kd, kh, kw]) => ([*d, *h, *wd], [*kd, *kh, *kw]),
            _ => panic!(
                "depthwise conv: input {x:?} and weight {w:?} are not one filter per channel"
            ),
        };
        assert_eq!(
            x[1], w[0],
            "depthwise conv: {} channels, {} filters",
            x[1], w[0]
        );
        assert!(
            kernel.iter().all(|k| k % 2 == 1),
            "depthwise conv: the host passes need an odd kernel, not {kernel:?}"
        );
        Plane {
            batch: x[0],
            channels: x[1],
            size,
            kernel,
        }
    }

    /// Values in one channel's plane.
    fn len(&self) -> usize {
        self.size.iter().product()
    }

    /// Taps of one filter.
    fn taps(&self) -> usize {
        self.kernel.iter().product()
    }

    /// For every output row `(d, h)` and every tap row `(i, j)` that reads inside the plane:
    /// `f(output row start, source row start, first tap of that tap row)`.
    fn for_each_row_pair(&self, mut f: impl FnMut(usize, usize, usize)) {
        let [depth, height, width] = self.size;
        let [kd, kh, kw] = self.kernel;
        let (pd, ph) = (kd / 2, kh / 2);
        for d in 0..depth {
            for h in 0..height {
                for i in 0..kd {
                    let Some(sd) = (d + i).checked_sub(pd).filter(|&s| s < depth) else {
                        continue;
                    };
                    for j in 0..kh {
                        let Some(sh) = (h + j).checked_sub(ph).filter(|&s| s < height) else {
                            continue;
                        };
                        f(
                            (d * height + h) * width,
                            (sd * height + sh) * width,
                            (i * kh + j) * kw,
                        );
                    }
                }
            }
        }
    }
}

/// The columns `[start, end)` of an output row that tap `l` of a row of `kw` taps reads inside
/// a row of `width`, and the source offset it reads them at (`l - kw / 2`).
#[inline(always)]
fn tap_span(l: usize, kw: usize, width: usize) -> (usize, usize, isize) {
    let off = l as isize - (kw / 2) as isize;
    let start = (-off).max(0) as usize;
    let end = (width as isize - off).clamp(0, width as isize) as usize;
    (start.min(end), end, off)
}

/// `dst` (one channel's plane) = `bias` + the plane `src` correlated with `taps`.
#[inline(always)]
fn correlate_plane(dst: &mut [f32], src: &[f32], taps: &[f32], bias: f32, p: &Plane) {
    let width = p.size[2];
    let kw = p.kernel[2];
    dst.fill(bias);
    p.for_each_row_pair(|out, row, tap0| {
        for l in 0..kw {
            let (start, end, off) = tap_span(l, kw, width);
            let a = taps[tap0 + l];
            let o = &mut dst[out + start..out + end];
            let s = &src[(row + start).wrapping_add_signed(off)..][..end - start];
            o.iter_mut().zip(s).for_each(|(o, s)| *o += a * s);
        }
    });
}

/// The sums over one channel's plane of `dy` times `x` shifted by each tap, added to `dw`.
#[inline(always)]
fn tap_sums(dw: &mut [f64], dy: &[f32], x: &[f32], p: &Plane) {
    let width = p.size[2];
    let kw = p.kernel[2];
    p.for_each_row_pair(|out, row, tap0| {
        for l in 0..kw {
            let (start, end, off) = tap_span(l, kw, width);
            let g = &dy[out + start..out + end];
            let s = &x[(row + start).wrapping_add_signed(off)..][..end - start];
            dw[tap0 + l] += f64::from(dot(g, s));
        }
    });
}

/// `Σ a ⊙ b` in sixteen independent f32 lanes, so that the loop vectorises.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..16 {
            lanes[k] += x[k] * y[k];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Runs `f` compiled for AVX2 where the CPU has it (the workspace builds for baseline x86-64),
/// so that the row loops inlined into it use 8-wide vectors.
#[inline(always)]
fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, the only feature `avx2` is compiled for.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// Each tap's filter reversed in every axis: the input gradient's kernel.
fn flipped(weight: &[f32], taps: usize) -> Vec<f32> {
    weight
        .chunks_exact(taps.max(1))
        .flat_map(|filter| filter.iter().rev().copied())
        .collect()
}

/// Correlates every channel plane of `x` (`batch × channels` planes) with its filter.
fn correlate(x: &[f32], weight: &[f32], bias: Option<&[f32]>, p: Plane) -> Vec<f32> {
    let (len, taps) = (p.len(), p.taps());
    let mut y = vec![0.0f32; p.batch * p.channels * len];
    if len > 0 {
        y.par_chunks_mut(len).enumerate().for_each(|(plane, dst)| {
            let c = plane % p.channels;
            let src = &x[plane * len..][..len];
            let filter = &weight[c * taps..][..taps];
            let b = bias.map_or(0.0, |b| b[c]);
            vectorised(|| correlate_plane(dst, src, filter, b, &p));
        });
    }
    y
}

/// The host forward.
fn host_forward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    let device = B::float_device(&x);
    let (xv, xdims) = host_view::<B>(&x);
    let (w, wdims) = host_view::<B>(&weight);
    let b = bias.as_ref().map(|b| host_view::<B>(b).0);
    let p = Plane::of(&xdims, &wdims);
    let y = correlate(&xv, &w, b.as_deref(), p);
    from_host::<B>(y, xdims, &device)
}

/// The host backward: the input gradient as a correlation with the flipped filters, the weight
/// and bias gradients as per-channel sums (in float64) over the batch.
fn host_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    dy: FloatTensor<B>,
    need_dx: bool,
    need_db: bool,
) -> WeightedGrads<B> {
    let device = B::float_device(&x);
    let (xv, xdims) = host_view::<B>(&x);
    let (w, wdims) = host_view::<B>(&weight);
    let (g, _) = host_view::<B>(&dy);
    let p = Plane::of(&xdims, &wdims);
    let (len, taps) = (p.len(), p.taps());
    let dx = need_dx.then(|| {
        let dx = correlate(&g, &flipped(&w, taps), None, p);
        from_host::<B>(dx, xdims.clone(), &device)
    });
    let sums: Vec<(Vec<f64>, f64)> = (0..p.channels)
        .into_par_iter()
        .map(|c| {
            let mut dw = vec![0.0f64; taps];
            let mut db = 0.0f64;
            for b in 0..p.batch {
                let at = (b * p.channels + c) * len;
                let (gp, xp) = (&g[at..at + len], &xv[at..at + len]);
                vectorised(|| tap_sums(&mut dw, gp, xp, &p));
                if need_db {
                    db += gp.iter().map(|&v| f64::from(v)).sum::<f64>();
                }
            }
            (dw, db)
        })
        .collect();
    let dw: Vec<f32> = sums
        .iter()
        .flat_map(|(dw, _)| dw.iter().map(|&v| v as f32))
        .collect();
    let db = need_db.then(|| {
        let db: Vec<f32> = sums.iter().map(|&(_, db)| db as f32).collect();
        B::float_from_data(TensorData::new(db, [p.channels]), &device)
    });
    (dx, from_host::<B>(dw, wdims, &device), db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{random, tensor};
    use burn::backend::Flex;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    type Ad = Autodiff<Flex>;

    fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
        t.into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    }

    /// `L = Σ g ⊙ (x ⋆ w + b)` in float64, by the definition of a zero-padded depthwise
    /// correlation over `[batch, channels, depth, height, width]`.
    fn loss_f64(
        x: &[f64],
        w: &[f64],
        b: &[f64],
        g: &[f64],
        dims: [usize; 5],
        k: [usize; 3],
    ) -> f64 {
        let [batch, channels, depth, height, width] = dims;
        let mut loss = 0.0;
        for n in 0..batch {
            for c in 0..channels {
                for d in 0..depth {
                    for h in 0..height {
                        for wi in 0..width {
                            let mut y = b[c];
                            for i in 0..k[0] {
                                for j in 0..k[1] {
                                    for l in 0..k[2] {
                                        let sd = d as isize + i as isize - (k[0] / 2) as isize;
                                        let sh = h as isize + j as isize - (k[1] / 2) as isize;
                                        let sw = wi as isize + l as isize - (k[2] / 2) as isize;
                                        let inside = (0..depth as isize).contains(&sd)
                                            && (0..height as isize).contains(&sh)
                                            && (0..width as isize).contains(&sw);
                                        if inside {
                                            let xi = (((n * channels + c) * depth + sd as usize)
                                                * height
                                                + sh as usize)
                                                * width
                                                + sw as usize;
                                            y += w[(c * k[0] + i) * k[1] * k[2] + j * k[2] + l]
                                                * x[xi];
                                        }
                                    }
                                }
                            }
                            let yi = (((n * channels + c) * depth + d) * height + h) * width + wi;
                            loss += g[yi] * y;
                        }
                    }
                }
            }
        }
        loss
    }

    /// Shapes the tests run: 2D (depth 1, rank-4 tensors) and 3D, kernels 1, 3 and 5 with
    /// planes smaller than the kernel among them.
    const CASES: [([usize; 5], [usize; 3], bool); 5] = [
        ([2, 3, 1, 6, 7], [1, 3, 3], false),
        ([1, 4, 1, 2, 9], [1, 5, 5], false),
        ([2, 2, 1, 5, 4], [1, 1, 1], false),
        ([2, 3, 4, 5, 6], [3, 3, 3], true),
        ([1, 2, 2, 3, 17], [3, 3, 3], true),
    ];

    /// A forward pass on Flex primitives: `(x, weight, bias)` -> `y`.
    type Run =
        fn(FloatTensor<Flex>, FloatTensor<Flex>, Option<FloatTensor<Flex>>) -> FloatTensor<Flex>;

    /// `run` on the case's values as tensors of the case's rank (4 for 2D, 5 for 3D).
    fn forward_of(
        run: Run,
        (x, w, b): (&[f64], &[f64], &[f64]),
        dims: [usize; 5],
        k: [usize; 3],
        three_d: bool,
    ) -> Vec<f64> {
        let [n, c, _, h, wd] = dims;
        let (xt, wt) = if three_d {
            (
                tensor::<Flex, 5>(x, dims).into_primitive().tensor(),
                tensor::<Flex, 5>(w, [c, 1, k[0], k[1], k[2]])
                    .into_primitive()
                    .tensor(),
            )
        } else {
            (
                tensor::<Flex, 4>(x, [n, c, h, wd])
                    .into_primitive()
                    .tensor(),
                tensor::<Flex, 4>(w, [c, 1, k[1], k[2]])
                    .into_primitive()
                    .tensor(),
            )
        };
        let bias = tensor::<Flex, 1>(b, [c]).into_primitive().tensor();
        // Rank 1 stands for any rank: the values keep the primitive's own shape.
        values(Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(
            run(xt, wt, Some(bias)),
        )))
    }

    #[test]
    fn the_host_forward_matches_burns_grouped_convolution() {
        let mut rng = StdRng::seed_from_u64(7);
        for (dims, k, three_d) in CASES {
            let (c, len) = (dims[1], dims.iter().product::<usize>());
            let x = random(&mut rng, len);
            let w = random(&mut rng, c * k.iter().product::<usize>());
            let b = random(&mut rng, c);
            let ours = forward_of(Flex::depthwise, (&x, &w, &b), dims, k, three_d);
            let theirs = forward_of(generic_forward::<Flex>, (&x, &w, &b), dims, k, three_d);
            for (i, (a, t)) in ours.iter().zip(&theirs).enumerate() {
                assert!((a - t).abs() <= 1e-5, "{dims:?} {k:?} at {i}: {a} vs {t}");
            }
        }
    }

    #[test]
    fn the_gradients_match_the_float64_definition_by_central_differences() {
        let _guard = crate::host::autodiff_lock();
        let mut rng = StdRng::seed_from_u64(11);
        for (dims, k, three_d) in CASES {
            let c = dims[1];
            let len = dims.iter().product::<usize>();
            let taps = k.iter().product::<usize>();
            let (x, w, b, g) = (
                random(&mut rng, len),
                random(&mut rng, c * taps),
                random(&mut rng, c),
                random(&mut rng, len),
            );
            // Autodiff gradients of L = Σ g ⊙ y.
            let [n, _, _, h, wd] = dims;
            let (gx, gw, gb) = if three_d {
                let xt = tensor::<Ad, 5>(&x, dims).require_grad();
                let wt = tensor::<Ad, 5>(&w, [c, 1, k[0], k[1], k[2]]).require_grad();
                let bt = tensor::<Ad, 1>(&b, [c]).require_grad();
                let y = apply(xt.clone(), wt.clone(), Some(bt.clone()));
                let grads = (y * tensor::<Ad, 5>(&g, dims)).sum().backward();
                (
                    values(xt.grad(&grads).unwrap()),
                    values(wt.grad(&grads).unwrap()),
                    values(bt.grad(&grads).unwrap()),
                )
            } else {
                let xt = tensor::<Ad, 4>(&x, [n, c, h, wd]).require_grad();
                let wt = tensor::<Ad, 4>(&w, [c, 1, k[1], k[2]]).require_grad();
                let bt = tensor::<Ad, 1>(&b, [c]).require_grad();
                let y = apply(xt.clone(), wt.clone(), Some(bt.clone()));
                let grads = (y * tensor::<Ad, 4>(&g, [n, c, h, wd])).sum().backward();
                (
                    values(xt.grad(&grads).unwrap()),
                    values(wt.grad(&grads).unwrap()),
                    values(bt.grad(&grads).unwrap()),
                )
            };
            // The loss is linear in each argument, so a central difference is exact up to
            // rounding; every element is checked.
            let eps = 1e-3;
            let check = |name: &str, got: &[f64], at: &dyn Fn(usize, f64) -> f64| {
                for (i, &gi) in got.iter().enumerate() {
                    let fd = (at(i, eps) - at(i, -eps)) / (2.0 * eps);
                    assert!(
                        (gi - fd).abs() <= 1e-4 * fd.abs().max(1.0),
                        "{dims:?} {k:?}: d{name}[{i}] = {gi}, central difference {fd}"
                    );
                }
            };
            let bump = |v: &[f64], i: usize, e: f64| {
                let mut v = v.to_vec();
                v[i] += e;
                v
            };
            check("x", &gx, &|i, e| {
                loss_f64(&bump(&x, i, e), &w, &b, &g, dims, k)
            });
            check("w", &gw, &|i, e| {
                loss_f64(&x, &bump(&w, i, e), &b, &g, dims, k)
            });
            check("b", &gb, &|i, e| {
                loss_f64(&x, &w, &bump(&b, i, e), &g, dims, k)
            });
        }
    }

    #[test]
    fn the_forward_matches_the_float64_definition() {
        let mut rng = StdRng::seed_from_u64(3);
        for (dims, k, three_d) in CASES {
            let c = dims[1];
            let len = dims.iter().product::<usize>();
            let (x, w, b) = (
                random(&mut rng, len),
                random(&mut rng, c * k.iter().product::<usize>()),
                random(&mut rng, c),
            );
            let ours = forward_of(Flex::depthwise, (&x, &w, &b), dims, k, three_d);
            // y[i] = ∂L/∂g[i] of the float64 loss, which is linear in g.
            for (i, &yi) in ours.iter().enumerate() {
                let mut g = vec![0.0; len];
                g[i] = 1.0;
                let expected = loss_f64(&x, &w, &b, &g, dims, k);
                assert!(
                    (yi - expected).abs() <= 1e-5,
                    "{dims:?} {k:?} at {i}: {yi} vs {expected}"
                );
            }
        }
    }
}
