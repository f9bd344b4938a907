//! Float tensors to and from host memory, for ops whose passes run on the host: the CPU scan here
//! and, in the segmenter crate, the instance norm and the convolutions' backward pass.

use burn::prelude::*;
use burn::tensor::{TensorData, TensorPrimitive};

/// A backend's float tensor primitive.
pub type FloatTensor<B> = <B as burn::tensor::backend::BackendTypes>::FloatTensorPrimitive;

/// A float tensor primitive of any rank as host values (row-major, f32) and its dims.
pub fn to_host<B: Backend>(t: FloatTensor<B>) -> (Vec<f32>, Vec<usize>) {
    // Rank 1 stands for any rank: the data keeps the primitive's own shape.
    let tensor = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t));
    let dims = tensor.shape().to_vec();
    let values = tensor
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("converted tensor data is f32");
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
