//! The selective scan as a burn backend extension with its own backward pass.
//!
//! `h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t`, `y_t = C_t·h_t + D u_t`, `Δ = softplus(δ + bias)`,
//! in VMamba's layout: `u, δ: [B, K·E, L]`, `A: [K·E, N]`, `B, C: [B, K, N, L]`, `D, bias: [K·E]`.
//!
//! Backends get the fused CPU kernel ([`cpu`]) through host memory by default (Flex borrows its
//! tensors' memory without copying); autodiff wraps any [`ScanBackend`] with the kernel's
//! hand-written backward, so no `[B, D, L, N]` tensor is ever stored: the forward pass keeps the
//! state every [`cpu::CHUNK`] steps ([`ScanSaved`]) and the backward pass recomputes the rest.

mod args;
pub mod check;
pub mod cpu;
#[cfg(feature = "cubecl")]
pub mod cube;
#[cfg(feature = "fusion")]
mod fusion;
pub mod reference;
pub mod tensor_reference;
#[cfg(all(test, feature = "wgpu"))]
mod wgpu_tests;

use burn::backend::autodiff::{
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
    Autodiff,
};
use burn::backend::flex::FlexTensor;
use burn::config::Config;
use burn::tensor::{backend::Backend, Tensor, TensorData, TensorPrimitive};
use std::any::Any;
use std::borrow::Cow;
use std::sync::Arc;

use crate::host::{from_host, to_host};
pub use args::{ScanArgs, INPUT_NAMES};
use cpu::{ScanCheckpoints, ScanDims, ScanInputs};

pub use crate::host::FloatTensor;

/// The seven inputs of the scan (or their seven gradients), as backend primitives.
pub type ScanTensors<B> = ScanArgs<FloatTensor<B>>;

/// Which implementation of the scan a layer runs.
#[derive(Config, Copy, Debug, PartialEq, Eq)]
pub enum ScanKernel {
    /// The fused op of the backend ([`ScanBackend`]) with its hand-written backward pass.
    Fused,
    /// The step-by-step tensor-op loop of [`tensor_reference`], differentiated by burn's
    /// autodiff: the baseline that shows what the fused op buys inside a whole network.
    TensorOps,
}

/// A selective scan as a function: `(u, delta, a, bm, cm, d_skip, delta_bias) -> y`, shapes as
/// in the module docs.
pub type ScanFn<B> = fn(
    Tensor<B, 3>,
    Tensor<B, 3>,
    Tensor<B, 2>,
    Tensor<B, 4>,
    Tensor<B, 4>,
    Tensor<B, 1>,
    Tensor<B, 1>,
) -> Tensor<B, 3>;

impl ScanKernel {
    /// The function that runs this implementation.
    pub fn scan_fn<B: ScanBackend>(self) -> ScanFn<B> {
        match self {
            Self::Fused => selective_scan::<B>,
            Self::TensorOps => tensor_reference::selective_scan_tensor_ops::<B>,
        }
    }
}

/// A burn backend that can run the selective scan and its backward pass.
pub trait ScanBackend:
    crate::linear::LinearBackend
    + crate::crossing::CrossScanBackend
    + crate::depthwise::DepthwiseBackend
{
    /// Forward scan: returns `y: [B, D, L]`.
    fn selective_scan(x: ScanTensors<Self>) -> FloatTensor<Self> {
        host_forward::<Self>(x)
    }

    /// Gradients of every input given `dy: [B, D, L]`.
    fn selective_scan_backward(x: ScanTensors<Self>, dy: FloatTensor<Self>) -> ScanTensors<Self> {
        host_backward::<Self>(x, dy)
    }

    /// Forward scan for training: `y` and what the backward pass can reuse. By default
    /// [`ScanBackend::selective_scan`], keeping nothing.
    fn selective_scan_saving(x: ScanTensors<Self>) -> (FloatTensor<Self>, Option<ScanSaved>) {
        (Self::selective_scan(x), None)
    }

    /// Backward pass given what [`ScanBackend::selective_scan_saving`] kept. By default
    /// [`ScanBackend::selective_scan_backward`].
    fn selective_scan_backward_saved(
        x: ScanTensors<Self>,
        saved: Option<ScanSaved>,
        dy: FloatTensor<Self>,
    ) -> ScanTensors<Self> {
        let _ = saved;
        Self::selective_scan_backward(x, dy)
    }
}

/// What a forward pass kept for its backward pass: the state checkpoints of the kernel that ran
/// it (the CPU kernel's [`ScanCheckpoints`], or a device tensor for the CubeCL kernel).
#[derive(Clone)]
pub struct ScanSaved(Arc<dyn Any + Send + Sync>);

impl ScanSaved {
    /// Wraps what a backend's forward pass kept.
    pub fn new<T: Any + Send + Sync>(kept: T) -> Self {
        Self(Arc::new(kept))
    }

    /// What was kept, if it is a `T` (a backend only reads back what it saved itself).
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref::<T>()
    }
}

impl std::fmt::Debug for ScanSaved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScanSaved(..)")
    }
}

/// Flex runs the CPU kernel on its tensors' own memory (a copy only for non-contiguous inputs).
impl ScanBackend for burn::backend::Flex {
    fn selective_scan(x: ScanTensors<Self>) -> FlexTensor {
        flex_forward(&x, false).0
    }

    fn selective_scan_backward(x: ScanTensors<Self>, dy: FlexTensor) -> ScanTensors<Self> {
        flex_backward(&x, None, &dy)
    }

    fn selective_scan_saving(x: ScanTensors<Self>) -> (FlexTensor, Option<ScanSaved>) {
        flex_forward(&x, true)
    }

    fn selective_scan_backward_saved(
        x: ScanTensors<Self>,
        saved: Option<ScanSaved>,
        dy: FlexTensor,
    ) -> ScanTensors<Self> {
        flex_backward(&x, saved.as_ref(), &dy)
    }
}

/// The values of a float32 Flex tensor in row-major order: borrowed when it is contiguous.
fn flex_values(t: &FlexTensor) -> Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(v) => Cow::Borrowed(v),
        None => Cow::Owned(
            t.clone()
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("converted tensor data is f32"),
        ),
    }
}

/// The sizes of a scan from its inputs' shapes; panics if they do not fit together.
fn scan_dims(shapes: &[Vec<usize>; 7]) -> ScanDims {
    ScanDims::from_shapes(shapes).unwrap_or_else(|e| panic!("selective_scan: {e}"))
}

/// Runs `f` on the inputs as host slices.
fn with_flex_inputs<R>(
    x: &ScanTensors<burn::backend::Flex>,
    f: impl FnOnce(ScanDims, &ScanInputs) -> R,
) -> R {
    let x = [&x.u, &x.delta, &x.a, &x.bm, &x.cm, &x.d_skip, &x.delta_bias];
    let dims = scan_dims(&x.map(|t| t.layout().shape().to_vec()));
    let values = x.map(flex_values);
    f(dims, &ScanInputs::borrowed(&values))
}

fn flex_tensor(values: Vec<f32>, like: &FlexTensor) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, like.layout().shape().to_vec()))
}

fn flex_forward(
    x: &ScanTensors<burn::backend::Flex>,
    save: bool,
) -> (FlexTensor, Option<ScanSaved>) {
    let (y, saved) = with_flex_inputs(x, |dims, inputs| {
        if save {
            let (y, saved) = cpu::scan_forward_saving(dims, inputs);
            (y, Some(ScanSaved::new(saved)))
        } else {
            (cpu::scan_forward(dims, inputs), None)
        }
    });
    (flex_tensor(y, &x.u), saved)
}

fn flex_backward(
    x: &ScanTensors<burn::backend::Flex>,
    saved: Option<&ScanSaved>,
    dy: &FlexTensor,
) -> ScanTensors<burn::backend::Flex> {
    let dyv = flex_values(dy);
    let checkpoints = saved.and_then(ScanSaved::get::<ScanCheckpoints>);
    let g = with_flex_inputs(x, |dims, inputs| match checkpoints {
        Some(ck) => cpu::scan_backward_from(dims, inputs, &dyv, ck),
        None => cpu::scan_backward(dims, inputs, &dyv),
    });
    let like = [&x.u, &x.delta, &x.a, &x.bm, &x.cm, &x.d_skip, &x.delta_bias];
    let mut g = g.into_array().into_iter();
    ScanArgs::from_array(like.map(|t| flex_tensor(g.next().expect("seven gradients"), t)))
}

/// Runs the selective scan (see the module docs for shapes); differentiable on `Autodiff` backends.
pub fn selective_scan<B: ScanBackend>(
    u: Tensor<B, 3>,
    delta: Tensor<B, 3>,
    a: Tensor<B, 2>,
    bm: Tensor<B, 4>,
    cm: Tensor<B, 4>,
    d_skip: Tensor<B, 1>,
    delta_bias: Tensor<B, 1>,
) -> Tensor<B, 3> {
    let x = ScanArgs {
        u: u.into_primitive().tensor(),
        delta: delta.into_primitive().tensor(),
        a: a.into_primitive().tensor(),
        bm: bm.into_primitive().tensor(),
        cm: cm.into_primitive().tensor(),
        d_skip: d_skip.into_primitive().tensor(),
        delta_bias: delta_bias.into_primitive().tensor(),
    };
    Tensor::from_primitive(TensorPrimitive::Float(B::selective_scan(x)))
}

/// The inputs of a backend without a kernel of its own, copied to the host for the CPU kernel.
struct HostScan {
    dims: ScanDims,
    shapes: [Vec<usize>; 7],
    values: [Vec<f32>; 7],
}

impl HostScan {
    fn load<B: Backend>(x: ScanTensors<B>) -> Self {
        let parts = x.into_array().map(to_host::<B>);
        let shapes = parts.each_ref().map(|(_, s)| s.clone());
        Self {
            dims: scan_dims(&shapes),
            shapes,
            values: parts.map(|(v, _)| v),
        }
    }

    fn inputs(&self) -> ScanInputs<'_> {
        ScanInputs::borrowed(&self.values)
    }
}

fn host_forward<B: Backend>(x: ScanTensors<B>) -> FloatTensor<B> {
    let device = B::float_device(&x.u);
    let host = HostScan::load::<B>(x);
    let y = cpu::scan_forward(host.dims, &host.inputs());
    from_host::<B>(y, host.shapes[0].clone(), &device)
}

fn host_backward<B: Backend>(x: ScanTensors<B>, dy: FloatTensor<B>) -> ScanTensors<B> {
    let device = B::float_device(&x.u);
    let host = HostScan::load::<B>(x);
    let (dy, _) = to_host::<B>(dy);
    let g = cpu::scan_backward(host.dims, &host.inputs(), &dy).into_array();
    let mut shapes = host.shapes.into_iter();
    ScanArgs::from_array(g.map(|g| {
        let shape = shapes.next().expect("seven shapes");
        from_host::<B>(g, shape, &device)
    }))
}

#[derive(Debug)]
struct ScanBackward;

impl<B: ScanBackend> Backward<B, 7> for ScanBackward {
    type State = (ScanTensors<B>, Option<ScanSaved>);

    fn backward(self, ops: Ops<Self::State, 7>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<B>(&ops.node);
        let (x, saved) = ops.state;
        let g = B::selective_scan_backward_saved(x, saved, dy);
        for (parent, grad) in ops.parents.into_iter().zip(g.into_array()) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: ScanBackend, C: CheckpointStrategy> ScanBackend for Autodiff<B, C> {
    fn selective_scan(x: ScanTensors<Self>) -> FloatTensor<Self> {
        let x = x.into_array();
        let nodes = x.each_ref().map(|t| t.node.clone());
        let inner = ScanTensors::<B>::from_array(x.map(|t| t.primitive));
        match ScanBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (y, saved) = B::selective_scan_saving(inner.clone());
                prep.finish((inner, saved), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::selective_scan(inner)),
        }
    }

    fn selective_scan_backward(_: ScanTensors<Self>, _: FloatTensor<Self>) -> ScanTensors<Self> {
        // The backward is called by the autodiff graph on the inner backend; reaching it on the
        // autodiff backend would mean a second-order derivative, which the scan does not provide.
        unimplemented!("second-order gradients of the selective scan are not supported")
    }
}

/// The CubeCL kernels ([`cube`]) on any CubeCL runtime; the forward pass of a training step
/// keeps the kernel's state checkpoints for the backward pass.
#[cfg(feature = "cubecl")]
impl<R, F, I, BT> ScanBackend for burn_cubecl::CubeBackend<R, F, I, BT>
where
    R: burn_cubecl::CubeRuntime,
    F: burn_cubecl::FloatElement,
    I: burn_cubecl::IntElement,
    BT: burn_cubecl::BoolElement,
{
    fn selective_scan(x: ScanTensors<Self>) -> FloatTensor<Self> {
        cube::forward::<R, F, I, BT>(x, false).0
    }

    fn selective_scan_backward(x: ScanTensors<Self>, dy: FloatTensor<Self>) -> ScanTensors<Self> {
        cube::backward::<R, F, I, BT>(x, None, dy)
    }

    fn selective_scan_saving(x: ScanTensors<Self>) -> (FloatTensor<Self>, Option<ScanSaved>) {
        let (y, states) = cube::forward::<R, F, I, BT>(x, true);
        (y, states.map(ScanSaved::new))
    }

    fn selective_scan_backward_saved(
        x: ScanTensors<Self>,
        saved: Option<ScanSaved>,
        dy: FloatTensor<Self>,
    ) -> ScanTensors<Self> {
        let states = saved.and_then(|s| s.get::<FloatTensor<Self>>().cloned());
        cube::backward::<R, F, I, BT>(x, states, dy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    type Ad = Autodiff<Flex>;

    /// Non-contiguous inputs (copied on the way in) give what contiguous ones (borrowed) give,
    /// tracked or not.
    #[test]
    fn flex_inputs_borrowed_or_copied_agree() {
        let dev = Default::default();
        let (b, k, e, n, l) = (2, 2, 3, 4, 21);
        let d = k * e;
        let r = |shape: [usize; 3], lo: f64, hi: f64| {
            Tensor::<Ad, 3>::random(shape, Distribution::Uniform(lo, hi), &dev)
        };
        let u_t = r([b, l, d], -1.0, 1.0).require_grad();
        let delta = r([b, d, l], -3.0, 1.0).require_grad();
        let a =
            Tensor::<Ad, 2>::random([d, n], Distribution::Uniform(-2.0, -0.1), &dev).require_grad();
        let bm = Tensor::<Ad, 4>::random([b, k, n, l], Distribution::Uniform(-1.0, 1.0), &dev)
            .require_grad();
        let cm = Tensor::<Ad, 4>::random([b, k, n, l], Distribution::Uniform(-1.0, 1.0), &dev)
            .require_grad();
        let d_skip =
            Tensor::<Ad, 1>::random([d], Distribution::Uniform(0.5, 1.5), &dev).require_grad();
        let bias =
            Tensor::<Ad, 1>::random([d], Distribution::Uniform(-1.0, 0.5), &dev).require_grad();
        let w = r([b, d, l], -1.0, 1.0);
        // y, dB and d u (through whichever leaf u came from).
        let run = |u: Tensor<Ad, 3>, leaf: &Tensor<Ad, 3>| {
            let y = selective_scan(
                u,
                delta.clone(),
                a.clone(),
                bm.clone(),
                cm.clone(),
                d_skip.clone(),
                bias.clone(),
            );
            let grads = (y.clone() * w.clone()).sum().backward();
            let gu = leaf.grad(&grads).unwrap();
            let gb = bm.grad(&grads).unwrap();
            (y.into_data(), gb.into_data(), gu)
        };
        let strided = u_t.clone().swap_dims(1, 2);
        let copied = run(strided.clone(), &u_t);
        let u_c = Tensor::<Ad, 3>::from_data(strided.to_data(), &dev).require_grad();
        let borrowed = run(u_c.clone(), &u_c);
        assert_eq!(copied.0, borrowed.0, "y");
        assert_eq!(copied.1, borrowed.1, "dB");
        assert_eq!(
            copied.2.swap_dims(1, 2).into_data(),
            borrowed.2.into_data(),
            "du"
        );
        let untracked = selective_scan(
            strided.inner(),
            delta.clone().inner(),
            a.clone().inner(),
            bm.clone().inner(),
            cm.clone().inner(),
            d_skip.clone().inner(),
            bias.clone().inner(),
        );
        assert_eq!(untracked.into_data(), copied.0, "untracked y");
    }
}
