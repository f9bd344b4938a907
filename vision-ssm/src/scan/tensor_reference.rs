//! The selective scan written with plain burn tensor ops, one step of the recurrence at a time.
//!
//! Slow and obviously right: burn's autodiff differentiates it, so it checks the fused op's
//! hand-written backward and is the baseline that `segmenter bench scan` compares against.

use burn::tensor::{activation, backend::Backend, Tensor};

/// Selective scan by a loop of tensor ops over the sequence; same shapes as [`super::selective_scan`].
pub fn selective_scan_tensor_ops<B: Backend>(
    u: Tensor<B, 3>,
    delta: Tensor<B, 3>,
    a: Tensor<B, 2>,
    bm: Tensor<B, 4>,
    cm: Tensor<B, 4>,
    d_skip: Tensor<B, 1>,
    delta_bias: Tensor<B, 1>,
) -> Tensor<B, 3> {
    let [batch, channels, len] = u.dims();
    let [_, k_dirs, d_state, _] = bm.dims();
    let per_dir = channels / k_dirs;
    let dt = activation::softplus(delta + delta_bias.reshape([1, channels, 1]), 1.0);
    // Broadcast B and C from directions to their channels: [B, K, N, L] -> [B, D, N, L].
    let expand = |m: Tensor<B, 4>| {
        m.reshape([batch, k_dirs, 1, d_state, len])
            .expand([batch, k_dirs, per_dir, d_state, len])
            .reshape([batch, channels, d_state, len])
    };
    let (bm, cm) = (expand(bm), expand(cm));
    let a = a.reshape([1, channels, d_state]);
    let mut h = Tensor::<B, 3>::zeros([batch, channels, d_state], &u.device());
    let mut ys = Vec::with_capacity(len);
    for t in 0..len {
        let dt_t = dt.clone().slice([0..batch, 0..channels, t..t + 1]); // [B, D, 1]
        let u_t = u.clone().slice([0..batch, 0..channels, t..t + 1]);
        let b_t = bm
            .clone()
            .slice([0..batch, 0..channels, 0..d_state, t..t + 1])
            .reshape([batch, channels, d_state]);
        let c_t = cm
            .clone()
            .slice([0..batch, 0..channels, 0..d_state, t..t + 1])
            .reshape([batch, channels, d_state]);
        h = (dt_t.clone() * a.clone()).exp() * h + dt_t * b_t * u_t;
        ys.push((h.clone() * c_t).sum_dim(2)); // [B, D, 1]
    }
    Tensor::cat(ys, 2) + u * d_skip.reshape([1, channels, 1])
}
