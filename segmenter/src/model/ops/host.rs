//! Float tensors to and from host memory, for the ops whose passes run on the host.

use burn::prelude::*;
use burn::tensor::{TensorData, TensorPrimitive};

/// A backend's float tensor primitive.
pub type FloatTensor<B> = <B as burn::tensor::backend::BackendTypes>::FloatTensorPrimitive;

/// A float tensor primitive of any rank as host values (row-major) and its dims.
pub fn to_host<B: Backend>(t: FloatTensor<B>) -> (Vec<f32>, Vec<usize>) {
    // Rank 1 stands for any rank: the data keeps the primitive's own shape.
    let t = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t));
    let dims = t.shape().to_vec();
    let values = t
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 data");
    (values, dims)
}

/// Host values (row-major) of shape `dims` as a float tensor primitive on `device`.
pub fn from_host<B: Backend>(
    values: Vec<f32>,
    dims: Vec<usize>,
    device: &B::Device,
) -> FloatTensor<B> {
    B::float_from_data(TensorData::new(values, dims), device)
}
