//! The selective scan under burn's `Fusion` wrapper (what `burn::backend::Cuda` is when burn's
//! `fusion` feature is on): each call is registered in the fusion stream as a custom operation
//! (`OperationIr::Custom`), which the stream runs, unfused, on the wrapped backend's own
//! [`ScanBackend`] implementation once its inputs are ready.
//!
//! The forward pass keeps nothing for the backward pass here (the backward pass recomputes the
//! checkpoints on the device): a saved device tensor would have to be an extra output of the
//! custom operation, tracked by the stream.

use burn_fusion::{
    stream::{Operation, OperationStreams},
    Fusion, FusionBackend, FusionRuntime,
};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};
use std::marker::PhantomData;

use super::{FloatTensor, ScanArgs, ScanBackend, ScanTensors};

type Handles<B> =
    HandleContainer<<<B as FusionBackend>::FusionRuntime as FusionRuntime>::FusionHandle>;

/// The inner backend's tensors for the seven inputs described by `ir`.
fn inner_inputs<B: FusionBackend>(ir: &[TensorIr], handles: &mut Handles<B>) -> ScanTensors<B> {
    ScanArgs::from_array(std::array::from_fn(|i| {
        handles.get_float_tensor::<B>(&ir[i])
    }))
}

/// The forward scan as a stream operation.
#[derive(Debug)]
struct ForwardOp<B> {
    desc: CustomOpIr,
    _backend: PhantomData<B>,
}

impl<B: FusionBackend + ScanBackend> Operation<B::FusionRuntime> for ForwardOp<B> {
    fn execute(&self, handles: &mut Handles<B>) {
        let (inputs, [y]) = self.desc.as_fixed::<7, 1>();
        let x = inner_inputs::<B>(inputs, handles);
        handles.register_float_tensor::<B>(&y.id, B::selective_scan(x));
    }
}

/// The backward scan as a stream operation (inputs: the seven, then dy).
#[derive(Debug)]
struct BackwardOp<B> {
    desc: CustomOpIr,
    _backend: PhantomData<B>,
}

impl<B: FusionBackend + ScanBackend> Operation<B::FusionRuntime> for BackwardOp<B> {
    fn execute(&self, handles: &mut Handles<B>) {
        let (inputs, outputs) = self.desc.as_fixed::<8, 7>();
        let x = inner_inputs::<B>(&inputs[..7], handles);
        let dy = handles.get_float_tensor::<B>(&inputs[7]);
        let grads = B::selective_scan_backward(x, dy).into_array();
        for (out, grad) in outputs.iter().zip(grads) {
            handles.register_float_tensor::<B>(&out.id, grad);
        }
    }
}

/// Runs the scan (and its backward pass) of the wrapped backend inside the fusion stream.
impl<B: FusionBackend + ScanBackend> ScanBackend for Fusion<B> {
    fn selective_scan(x: ScanTensors<Self>) -> FloatTensor<Self> {
        let client = x.u.client.clone();
        let y = TensorIr::uninit(client.create_empty_handle(), x.u.shape.clone(), x.u.dtype);
        let inputs = x.into_array();
        let streams = OperationStreams::with_inputs(inputs.iter());
        let inputs = inputs.map(|t| t.into_ir());
        let desc = CustomOpIr::new("selective_scan", &inputs, &[y]);
        let op = ForwardOp::<B> {
            desc: desc.clone(),
            _backend: PhantomData,
        };
        client
            .register(streams, OperationIr::Custom(desc), op)
            .output()
    }

    fn selective_scan_backward(x: ScanTensors<Self>, dy: FloatTensor<Self>) -> ScanTensors<Self> {
        let client = x.u.client.clone();
        let [u, delta, a, bm, cm, d_skip, delta_bias] = x.into_array();
        let inputs = [u, delta, a, bm, cm, d_skip, delta_bias, dy];
        let grads: Vec<TensorIr> = inputs[..7]
            .iter()
            .map(|t| TensorIr::uninit(client.create_empty_handle(), t.shape.clone(), t.dtype))
            .collect();
        let streams = OperationStreams::with_inputs(inputs.iter());
        let inputs = inputs.map(|t| t.into_ir());
        let desc = CustomOpIr::new("selective_scan_backward", &inputs, &grads);
        let op = BackwardOp::<B> {
            desc: desc.clone(),
            _backend: PhantomData,
        };
        ScanArgs::from_array(
            client
                .register(streams, OperationIr::Custom(desc), op)
                .outputs(),
        )
    }
}
