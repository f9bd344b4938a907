//! Instance normalisation as one fused op with its own backward pass, for 2D maps
//! (`[B, C, H, W]`) and volumes (`[B, C, D, H, W]`) alike.
//!
//! burn's `InstanceNorm` is a chain of broadcast tensor ops; on the CPU its forward+backward took
//! ~58 ms for a `[16, 16, 64, 64]` map (measured with a probe on Flex), a third of a residual conv
//! block. The fused CPU kernel makes two passes per (batch, channel) plane forward and three
//! backward; a "plane" is all of a channel's values, whatever the rank, so volumes run the same
//! loops. GPU backends keep burn's tensor-op version, which their fusion compiler handles.

use burn::backend::autodiff::{
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
    Autodiff,
};
use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use rayon::prelude::*;

use super::stats::mean_variance;
use vision_ssm::host::{from_host, host_view, to_host};
use vision_ssm::scan::FloatTensor;

/// Numerical guard added to the variance.
pub const EPSILON: f64 = 1e-5;

/// A backend that can run the fused instance norm (and its backward).
pub trait NormBackend: Backend {
    /// `x: [B, C, …]` (rank 4 or 5), `gamma, beta: [C]` -> normalised, same shape.
    fn instance_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        host_forward::<Self>(x, gamma, beta)
    }

    /// Gradients `(dx, dgamma, dbeta)` given `dy`.
    fn instance_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        host_backward::<Self>(x, gamma, dy)
    }
}

impl NormBackend for burn::backend::Flex {}

#[cfg(feature = "cuda")]
impl NormBackend for burn::backend::Cuda {
    fn instance_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        tensor_ops_forward::<Self>(x, gamma, beta)
    }

    fn instance_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        tensor_ops_backward::<Self>(x, gamma, dy)
    }
}

/// `[B, C, …]` as `[B, C, D0, rest]` (a no-op for rank 4; a volume's planes flattened behind the
/// depth), so the tensor-op norm, which normalises over the last two axes, serves every rank;
/// and the original shape to reshape back to.
#[cfg(any(feature = "cuda", test))]
fn as_rank4<B: Backend>(x: FloatTensor<B>) -> (Tensor<B, 4>, burn::tensor::Shape) {
    use burn::tensor::TensorMetadata;
    let shape = x.shape();
    let d = shape.to_vec();
    let flat = burn::tensor::Shape::new([d[0], d[1], d[2], d[3..].iter().product()]);
    let x = Tensor::from_primitive(TensorPrimitive::Float(B::float_reshape(x, flat)));
    (x, shape)
}

/// The norm in burn tensor ops (for backends whose fusion compiler handles them; tests run it on
/// Flex against the host kernel).
#[cfg(any(feature = "cuda", test))]
fn tensor_ops_forward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
) -> FloatTensor<B> {
    let (x, dims) = as_rank4::<B>(x);
    let [_, c, _, _] = x.dims();
    let gamma = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(gamma)).reshape([1, c, 1, 1]);
    let beta = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(beta)).reshape([1, c, 1, 1]);
    let (xhat, _) = normalize_tensor(x);
    B::float_reshape((xhat * gamma + beta).into_primitive().tensor(), dims)
}

/// The backward of [`tensor_ops_forward`]: `(dx, dgamma, dbeta)`.
#[cfg(any(feature = "cuda", test))]
fn tensor_ops_backward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    dy: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (x, dims) = as_rank4::<B>(x);
    let (dy, _) = as_rank4::<B>(dy);
    let [_, c, h, w] = x.dims();
    let m = (h * w) as f64;
    let gamma = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(gamma)).reshape([1, c, 1, 1]);
    let (xhat, inv) = normalize_tensor(x);
    let dbeta = dy.clone().sum_dim(0).sum_dim(2).sum_dim(3).reshape([c]);
    let dgamma = (dy.clone() * xhat.clone())
        .sum_dim(0)
        .sum_dim(2)
        .sum_dim(3)
        .reshape([c]);
    let dxhat = dy * gamma;
    let mean_dxhat = dxhat.clone().sum_dim(2).sum_dim(3) / m;
    let mean_dxhat_xhat = (dxhat.clone() * xhat.clone()).sum_dim(2).sum_dim(3) / m;
    let dx = (dxhat - mean_dxhat - xhat * mean_dxhat_xhat) * inv;
    (
        B::float_reshape(dx.into_primitive().tensor(), dims),
        dgamma.into_primitive().tensor(),
        dbeta.into_primitive().tensor(),
    )
}

#[cfg(any(feature = "cuda", test))]
fn normalize_tensor<B: Backend>(x: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let [_, _, h, w] = x.dims();
    let m = (h * w) as f64;
    let mean = x.clone().sum_dim(2).sum_dim(3) / m;
    let centred = x - mean;
    let var = centred.clone().square().sum_dim(2).sum_dim(3) / m;
    let inv = (var + EPSILON).sqrt().recip();
    (centred * inv.clone(), inv)
}

/// Mean and inverse standard deviation of one plane.
fn plane_stats(plane: &[f32]) -> (f32, f32) {
    let (mean, var) = mean_variance(plane);
    (mean as f32, (1.0 / (var + EPSILON).sqrt()) as f32)
}

fn host_forward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
) -> FloatTensor<B> {
    let device = B::float_device(&x);
    let (x, dims) = host_view::<B>(&x);
    let (gamma, _) = host_view::<B>(&gamma);
    let (beta, _) = host_view::<B>(&beta);
    let (channels, plane) = (dims[1], dims[2..].iter().product::<usize>().max(1));
    let mut values = vec![0.0f32; x.len()];
    values
        .par_chunks_mut(plane)
        .zip(x.par_chunks(plane))
        .enumerate()
        .for_each(|(i, (out, p))| {
            let c = i % channels;
            let (mean, inv) = plane_stats(p);
            let (scale, shift) = (gamma[c] * inv, beta[c] - gamma[c] * inv * mean);
            out.iter_mut()
                .zip(p)
                .for_each(|(o, &v)| *o = v * scale + shift);
        });
    from_host::<B>(values, dims, &device)
}

fn host_backward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    dy: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let device = B::float_device(&x);
    let (x, dims) = host_view::<B>(&x);
    let (gamma, gdims) = host_view::<B>(&gamma);
    let (mut dy, _) = to_host::<B>(dy);
    let (channels, plane) = (dims[1], dims[2..].iter().product::<usize>().max(1));
    let m = plane as f32;
    // dy is overwritten with dx plane by plane; each plane also returns its (dgamma, dbeta) parts.
    let parts: Vec<(f32, f32)> = dy
        .par_chunks_mut(plane)
        .zip(x.par_chunks(plane))
        .enumerate()
        .map(|(i, (g, xp))| {
            let c = i % channels;
            let (mean, inv) = plane_stats(xp);
            let (mut sum_dy, mut sum_dy_xhat) = (0.0f64, 0.0f64);
            for (&d, &v) in g.iter().zip(xp) {
                sum_dy += d as f64;
                sum_dy_xhat += (d * (v - mean) * inv) as f64;
            }
            let (mean_dxhat, mean_dxhat_xhat) = (
                (sum_dy as f32) * gamma[c] / m,
                (sum_dy_xhat as f32) * gamma[c] / m,
            );
            for (d, &v) in g.iter_mut().zip(xp) {
                let xhat = (v - mean) * inv;
                *d = (*d * gamma[c] - mean_dxhat - xhat * mean_dxhat_xhat) * inv;
            }
            (sum_dy_xhat as f32, sum_dy as f32)
        })
        .collect();
    let (mut dgamma, mut dbeta) = (vec![0.0f32; channels], vec![0.0f32; channels]);
    for (i, (dg, db)) in parts.into_iter().enumerate() {
        dgamma[i % channels] += dg;
        dbeta[i % channels] += db;
    }
    (
        from_host::<B>(dy, dims, &device),
        from_host::<B>(dgamma, gdims.clone(), &device),
        from_host::<B>(dbeta, gdims, &device),
    )
}

#[derive(Debug)]
struct NormBackward;

impl<B: NormBackend> Backward<B, 3> for NormBackward {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<B>(&ops.node);
        let (x, gamma) = ops.state;
        let (dx, dgamma, dbeta) = B::instance_norm_backward(x, gamma, dy);
        let [px, pg, pb] = ops.parents;
        for (parent, grad) in [(px, dx), (pg, dgamma), (pb, dbeta)] {
            if let Some(node) = parent {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: NormBackend, C: CheckpointStrategy> NormBackend for Autodiff<B, C> {
    fn instance_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let nodes = [x.node.clone(), gamma.node.clone(), beta.node.clone()];
        match NormBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y =
                    B::instance_norm(x.primitive.clone(), gamma.primitive.clone(), beta.primitive);
                prep.finish((x.primitive, gamma.primitive), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::instance_norm(
                x.primitive,
                gamma.primitive,
                beta.primitive,
            )),
        }
    }

    fn instance_norm_backward(
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // Reached only for second-order derivatives, which training never asks for.
        unimplemented!("second-order gradients of the fused instance norm are not supported")
    }
}

/// Instance normalisation on `[B, C, H, W]` or `[B, C, D, H, W]`, with a learned per-channel scale and shift
/// (PyTorch's `InstanceNorm2d(affine=True)`) or without (`affine=False`, MONAI's default).
#[derive(Module, Debug)]
pub struct FusedInstanceNorm<B: Backend> {
    gamma: Option<Param<Tensor<B, 1>>>,
    beta: Option<Param<Tensor<B, 1>>>,
    channels: usize,
}

impl<B: Backend> FusedInstanceNorm<B> {
    /// Affine: learned scale (starting at 1) and shift (starting at 0), for `channels` channels.
    pub fn new(channels: usize, device: &B::Device) -> Self {
        Self {
            gamma: Some(Param::from_tensor(Tensor::ones([channels], device))),
            beta: Some(Param::from_tensor(Tensor::zeros([channels], device))),
            channels,
        }
    }

    /// Without parameters: every plane normalised to mean 0 and variance 1.
    pub fn plain(channels: usize) -> Self {
        Self {
            gamma: None,
            beta: None,
            channels,
        }
    }
}

impl<B: NormBackend> FusedInstanceNorm<B> {
    /// `[batch, channels, height, width]` or `[batch, channels, depth, height, width]` -> same
    /// shape, each channel of each sample normalised (then scaled and shifted when affine).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let device = x.device();
        let gamma = match &self.gamma {
            Some(g) => g.val(),
            None => Tensor::ones([self.channels], &device),
        };
        let beta = match &self.beta {
            Some(b) => b.val(),
            None => Tensor::zeros([self.channels], &device),
        };
        let y = B::instance_norm(
            x.into_primitive().tensor(),
            gamma.into_primitive().tensor(),
            beta.into_primitive().tensor(),
        );
        Tensor::from_primitive(TensorPrimitive::Float(y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::nn::InstanceNormConfig;
    use burn::tensor::ops::FloatTensorOps;
    use burn::tensor::{Distribution, Tolerance};

    use crate::model::ops::testing::{close, values as flat};

    type B = Autodiff<Flex>;

    #[test]
    fn fused_norm_matches_burns_instance_norm_forward_and_gradients() {
        let device = Default::default();
        let x = Tensor::<B, 4>::random([3, 4, 5, 7], Distribution::Uniform(-2.0, 3.0), &device)
            .require_grad();
        let w = Tensor::<B, 4>::random([3, 4, 5, 7], Distribution::Uniform(-1.0, 1.0), &device);
        let gamma = Tensor::<B, 1>::random([4], Distribution::Uniform(0.5, 1.5), &device);
        let beta = Tensor::<B, 1>::random([4], Distribution::Uniform(-0.5, 0.5), &device);
        let fused = FusedInstanceNorm {
            gamma: Some(Param::from_tensor(gamma.clone())),
            beta: Some(Param::from_tensor(beta.clone())),
            channels: 4,
        };
        let mut reference = InstanceNormConfig::new(4)
            .with_affine(true)
            .with_epsilon(EPSILON)
            .init::<B>(&device);
        reference.gamma = Some(Param::from_tensor(gamma));
        reference.beta = Some(Param::from_tensor(beta));

        let y1 = fused.forward(x.clone());
        let g1 = (y1.clone() * w.clone()).sum().backward();
        let y2 = reference.forward(x.clone());
        let g2 = (y2.clone() * w).sum().backward();
        y1.into_data()
            .assert_approx_eq::<f32>(&y2.into_data(), Tolerance::rel_abs(1e-4, 1e-5));
        x.grad(&g1).unwrap().into_data().assert_approx_eq::<f32>(
            &x.grad(&g2).unwrap().into_data(),
            Tolerance::rel_abs(1e-3, 1e-4),
        );
        let (ga, gb) = (
            fused.gamma.as_ref().unwrap().val().grad(&g1).unwrap(),
            reference.gamma.as_ref().unwrap().val().grad(&g2).unwrap(),
        );
        ga.into_data()
            .assert_approx_eq::<f32>(&gb.into_data(), Tolerance::rel_abs(1e-3, 1e-4));
        let (ba, bb) = (
            fused.beta.as_ref().unwrap().val().grad(&g1).unwrap(),
            reference.beta.as_ref().unwrap().val().grad(&g2).unwrap(),
        );
        ba.into_data()
            .assert_approx_eq::<f32>(&bb.into_data(), Tolerance::rel_abs(1e-3, 1e-4));
    }

    fn f64s(v: Vec<f32>) -> Vec<f64> {
        v.into_iter().map(f64::from).collect()
    }

    /// `Σ g · (gamma · x̂ + beta)` by a float64 loop, `x̂` each (sample, channel) normalised over
    /// its `m` values.
    fn loss_f64(x: &[f64], gamma: &[f64], beta: &[f64], g: &[f64], m: usize) -> f64 {
        let c = gamma.len();
        x.chunks(m)
            .zip(g.chunks(m))
            .enumerate()
            .map(|(i, (xp, gp))| {
                let mean = xp.iter().sum::<f64>() / m as f64;
                let var = xp.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / m as f64;
                let inv = 1.0 / (var + EPSILON).sqrt();
                xp.iter()
                    .zip(gp)
                    .map(|(v, g)| g * (gamma[i % c] * (v - mean) * inv + beta[i % c]))
                    .sum::<f64>()
            })
            .sum()
    }

    /// The fused norm on `dims` (affine or plain) against burn's `InstanceNorm` (forward and
    /// gradients) and against central differences of [`loss_f64`].
    fn check_against_references<const D: usize>(dims: [usize; D], affine: bool) {
        let device = Default::default();
        let c = dims[1];
        let x =
            Tensor::<B, D>::random(dims, Distribution::Uniform(-2.0, 3.0), &device).require_grad();
        let w = Tensor::<B, D>::random(dims, Distribution::Uniform(-1.0, 1.0), &device);
        let mut fused = if affine {
            FusedInstanceNorm::new(c, &device)
        } else {
            FusedInstanceNorm::plain(c)
        };
        let mut reference = InstanceNormConfig::new(c)
            .with_affine(affine)
            .with_epsilon(EPSILON)
            .init::<B>(&device);
        if affine {
            let gamma = Tensor::<B, 1>::random([c], Distribution::Uniform(0.5, 1.5), &device);
            let beta = Tensor::<B, 1>::random([c], Distribution::Uniform(-0.5, 0.5), &device);
            fused.gamma = Some(Param::from_tensor(gamma.clone()));
            fused.beta = Some(Param::from_tensor(beta.clone()));
            reference.gamma = Some(Param::from_tensor(gamma));
            reference.beta = Some(Param::from_tensor(beta));
        }
        let name = |what: &str| format!("{what} ({dims:?}, affine {affine})");

        let y1 = fused.forward(x.clone());
        let g1 = (y1.clone() * w.clone()).sum().backward();
        let y2 = reference.forward(x.clone());
        let g2 = (y2.clone() * w.clone()).sum().backward();
        close(&name("y"), &flat(y1), &f64s(flat(y2)), 1e-5);
        let dx = flat(x.grad(&g1).expect("dx"));
        close(
            &name("dx vs burn"),
            &dx,
            &f64s(flat(x.grad(&g2).unwrap())),
            1e-4,
        );
        let params = |n: &FusedInstanceNorm<B>| {
            n.gamma
                .as_ref()
                .zip(n.beta.as_ref())
                .map(|(g, b)| (g.val(), b.val()))
        };
        let ours =
            params(&fused).map(|(g, b)| (flat(g.grad(&g1).unwrap()), flat(b.grad(&g1).unwrap())));
        if let (Some((dg, db)), Some(gamma), Some(beta)) =
            (&ours, &reference.gamma, &reference.beta)
        {
            let want_dg = f64s(flat(gamma.val().grad(&g2).unwrap()));
            let want_db = f64s(flat(beta.val().grad(&g2).unwrap()));
            close(&name("dgamma vs burn"), dg, &want_dg, 1e-4);
            close(&name("dbeta vs burn"), db, &want_db, 1e-4);
        }

        // Central differences in float64 (the loss is smooth: h² error, far below 1e-4).
        let m: usize = dims[2..].iter().product();
        let xs = f64s(flat(x.inner()));
        let ws = f64s(flat(w.inner()));
        let (gamma, beta) = match params(&fused) {
            Some((g, b)) => (f64s(flat(g.inner())), f64s(flat(b.inner()))),
            None => (vec![1.0; c], vec![0.0; c]),
        };
        let fd = |which: usize| -> Vec<f64> {
            let len = [xs.len(), c, c][which];
            (0..len)
                .map(|i| {
                    let h = 1e-4;
                    let at = |delta: f64| {
                        let (mut x, mut g, mut b) = (xs.clone(), gamma.clone(), beta.clone());
                        [&mut x, &mut g, &mut b][which][i] += delta;
                        loss_f64(&x, &g, &b, &ws, m)
                    };
                    (at(h) - at(-h)) / (2.0 * h)
                })
                .collect()
        };
        close(&name("dx vs finite differences"), &dx, &fd(0), 1e-4);
        if let Some((dg, db)) = &ours {
            close(&name("dgamma vs finite differences"), dg, &fd(1), 1e-4);
            close(&name("dbeta vs finite differences"), db, &fd(2), 1e-4);
        }
    }

    #[test]
    fn fused_norm_matches_burn_and_finite_differences_on_maps_and_volumes() {
        for affine in [true, false] {
            check_against_references([2, 3, 5, 7], affine);
            check_against_references([2, 3, 4, 5, 3], affine);
        }
    }

    #[test]
    fn the_tensor_op_norm_of_gpu_backends_matches_the_host_kernel() {
        type F = burn::backend::Flex;
        let device = Default::default();
        let prim = |dims: Vec<usize>, lo: f64, hi: f64| {
            let t = Tensor::<F, 1>::random(
                [dims.iter().product::<usize>()],
                Distribution::Uniform(lo, hi),
                &device,
            );
            F::float_reshape(t.into_primitive().tensor(), burn::tensor::Shape::from(dims))
        };
        for dims in [vec![2, 3, 5, 7], vec![2, 3, 4, 5, 3]] {
            let (x, dy) = (prim(dims.clone(), -2.0, 3.0), prim(dims.clone(), -1.0, 1.0));
            let (gamma, beta) = (prim(vec![3], 0.5, 1.5), prim(vec![3], -0.5, 0.5));
            let y = (
                host_forward::<F>(x.clone(), gamma.clone(), beta.clone()),
                tensor_ops_forward::<F>(x.clone(), gamma.clone(), beta),
            );
            let (a, b) = (
                host_backward::<F>(x.clone(), gamma.clone(), dy.clone()),
                tensor_ops_backward::<F>(x, gamma, dy),
            );
            for (i, (ours, theirs)) in [y, (a.0, b.0), (a.1, b.1), (a.2, b.2)]
                .into_iter()
                .enumerate()
            {
                let (ours, ours_dims) = to_host::<F>(ours);
                let (theirs, theirs_dims) = to_host::<F>(theirs);
                assert_eq!(ours_dims, theirs_dims, "output {i} of {dims:?}");
                close(
                    &format!("output {i} of {dims:?}"),
                    &ours,
                    &f64s(theirs),
                    1e-4,
                );
            }
        }
    }

    #[test]
    fn a_record_of_burns_instance_norm_loads_into_the_fused_norm() {
        use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
        let device = Default::default();
        let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::new();
        for affine in [true, false] {
            let mut burns = InstanceNormConfig::new(4)
                .with_affine(affine)
                .init::<B>(&device);
            if affine {
                let gamma = Tensor::<B, 1>::from_floats([1.5, 2.0, 0.5, 1.0], &device);
                burns.gamma = Some(Param::from_tensor(gamma));
            }
            let bytes = recorder.record(burns.clone().into_record(), ()).unwrap();
            let fresh = if affine {
                FusedInstanceNorm::<B>::new(4, &device)
            } else {
                FusedInstanceNorm::plain(4)
            };
            let loaded = fresh.load_record(recorder.load(bytes, &device).expect("loads"));
            assert_eq!(loaded.gamma.is_some(), affine);
            if let (Some(a), Some(b)) = (&loaded.gamma, &burns.gamma) {
                assert_eq!(flat(a.val()), flat(b.val()));
            }
        }
    }
}
