//! The four-direction cross-scan of a 2D feature map and its inverse-and-sum (cross-merge).
//!
//! Direction 0 reads rows left to right (row-major), 1 reads columns top to bottom (column-major),
//! 2 and 3 are 0 and 1 reversed. Cross-merge maps every direction back to row-major order and sums,
//! so `cross_merge(cross_scan(x)) == 4 x`.

use burn::tensor::{backend::Backend, Tensor};

/// Number of scan directions of [`cross_scan`].
pub const DIRECTIONS: usize = 4;

/// `[batch, channels, height, width]` -> `[batch, 4, channels, height·width]` in the four scan orders.
pub fn cross_scan<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [batch, channels, height, width] = x.dims();
    let len = height * width;
    let row_major = x.clone().reshape([batch, 1, channels, len]);
    let col_major = x.swap_dims(2, 3).reshape([batch, 1, channels, len]);
    let forward = Tensor::cat(vec![row_major, col_major], 1);
    let backward = forward.clone().flip([3]);
    Tensor::cat(vec![forward, backward], 1)
}

/// `[batch, 4, channels, height·width]` -> `[batch, channels, height·width]` (row-major), summing the
/// four directions after undoing each one's order.
pub fn cross_merge<B: Backend>(y: Tensor<B, 4>, height: usize, width: usize) -> Tensor<B, 3> {
    let [batch, k_dirs, channels, len] = y.dims();
    assert_eq!(k_dirs, DIRECTIONS, "cross_merge expects 4 directions");
    assert_eq!(
        len,
        height * width,
        "cross_merge: length must be height·width"
    );
    let forward = y.clone().narrow(1, 0, 2) + y.narrow(1, 2, 2).flip([3]);
    let row_major = forward
        .clone()
        .narrow(1, 0, 1)
        .reshape([batch, channels, len]);
    let col_major = forward
        .narrow(1, 1, 1)
        .reshape([batch, channels, width, height])
        .swap_dims(2, 3)
        .reshape([batch, channels, len]);
    row_major + col_major
}
