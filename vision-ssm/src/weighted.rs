//! Autodiff for ops of the form `y = f(x, weight, bias?)` whose backend computes its own
//! gradients: the VSS blocks' linear layers ([`crate::linear`]) and the segmenter's stride-1
//! convolutions. burn's autodiff would differentiate such an op through its generic backward;
//! recording it as one node lets a backend's faster backward run instead.

use burn::backend::autodiff::{
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
    Autodiff,
};
use burn::prelude::*;

use crate::host::FloatTensor;

/// Gradients of a weighted op: input (when asked for), weight, bias (when asked for).
pub type WeightedGrads<B> = (
    Option<FloatTensor<B>>,
    FloatTensor<B>,
    Option<FloatTensor<B>>,
);

/// An op's forward on the inner backend: `(x, weight, bias)` -> `y`.
pub type WeightedForward<B> =
    fn(FloatTensor<B>, FloatTensor<B>, Option<FloatTensor<B>>) -> FloatTensor<B>;

/// An op's backward on the inner backend: `(x, weight, dy, need_dx, need_db)` -> gradients.
pub type WeightedBackwardFn<B> =
    fn(FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, bool, bool) -> WeightedGrads<B>;

/// The autodiff node of one weighted op; `N` is 2 without a bias, 3 with one.
struct WeightedBackward<B: Backend, const N: usize> {
    backward: WeightedBackwardFn<B>,
}

impl<B: Backend, const N: usize> std::fmt::Debug for WeightedBackward<B, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WeightedBackward<{N}>")
    }
}

impl<B: Backend, const N: usize> Backward<B, N> for WeightedBackward<B, N> {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<B>(&ops.node);
        let (x, weight) = ops.state;
        let need_dx = ops.parents[0].is_some();
        let need_db = N == 3 && ops.parents[N - 1].is_some();
        let (dx, dw, db) = (self.backward)(x, weight, dy, need_dx, need_db);
        let mut out = [dx, Some(dw), db].into_iter();
        for parent in ops.parents {
            if let (Some(node), Some(grad)) = (parent, out.next().flatten()) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// `forward(x, weight, bias)` on the inner backend, recorded so that the backward pass calls
/// `backward` (which keeps `x` and `weight`).
pub fn record<B: Backend, C: CheckpointStrategy>(
    forward: WeightedForward<B>,
    backward: WeightedBackwardFn<B>,
    x: FloatTensor<Autodiff<B, C>>,
    weight: FloatTensor<Autodiff<B, C>>,
    bias: Option<FloatTensor<Autodiff<B, C>>>,
) -> FloatTensor<Autodiff<B, C>> {
    match bias {
        Some(bias) => {
            let nodes = [x.node.clone(), weight.node.clone(), bias.node.clone()];
            let node = WeightedBackward::<B, 3> { backward };
            match node.prepare::<C>(nodes).compute_bound().stateful() {
                OpsKind::Tracked(prep) => {
                    let y = forward(
                        x.primitive.clone(),
                        weight.primitive.clone(),
                        Some(bias.primitive),
                    );
                    prep.finish((x.primitive, weight.primitive), y)
                }
                OpsKind::UnTracked(prep) => {
                    prep.finish(forward(x.primitive, weight.primitive, Some(bias.primitive)))
                }
            }
        }
        None => {
            let nodes = [x.node.clone(), weight.node.clone()];
            let node = WeightedBackward::<B, 2> { backward };
            match node.prepare::<C>(nodes).compute_bound().stateful() {
                OpsKind::Tracked(prep) => {
                    let y = forward(x.primitive.clone(), weight.primitive.clone(), None);
                    prep.finish((x.primitive, weight.primitive), y)
                }
                OpsKind::UnTracked(prep) => {
                    prep.finish(forward(x.primitive, weight.primitive, None))
                }
            }
        }
    }
}
