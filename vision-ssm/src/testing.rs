//! Helpers the layers' tests share: random float64 values and tensors made from them.

use burn::prelude::*;
use burn::tensor::TensorData;
use rand::rngs::StdRng;
use rand::Rng;

/// `count` values drawn uniformly from [-1, 1).
pub(crate) fn random(rng: &mut StdRng, count: usize) -> Vec<f64> {
    (0..count).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// `v` (rounded to f32) as a tensor of `dims` on the default device.
pub(crate) fn tensor<B: Backend, const D: usize>(v: &[f64], dims: [usize; D]) -> Tensor<B, D> {
    let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(v, dims), &Default::default())
}
