//! The cross-scan and cross-merge of SS2D and SS3D as one backend op each, with a host pass on
//! the CPU.
//!
//! Written with tensor ops ([`crate::cross_scan`], [`crate::cross_scan3d`]), a cross-scan is a
//! transpose, two concatenations and a flip, and a cross-merge the same in reverse, each a full
//! copy of the feature map; on Flex each is an element-by-element strided copy, and autodiff adds
//! more of them for the gradients of the views. Here a cross-scan is one gather per output row
//! (every direction reads a row of the feature map through a table of positions) and a
//! cross-merge one gather-and-sum per output row. Each is the other's adjoint, so each one's
//! backward pass is the other op.
//!
//! The feature-map side can have its channels first (`[B, C, S]`, what a convolution gives) or
//! last (`[B, S, C]`, what a linear layer takes), with `S = D·H·W` positions in row-major order,
//! so that SS2D/SS3D need no transpose of their own around the scan.

use burn::backend::autodiff::{
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{unary, Backward, Ops},
    Autodiff,
};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use rayon::prelude::*;
use std::borrow::Cow;

use crate::cross_scan3d::{cross_merge_3d, cross_scan_3d, orders_of};
use crate::host::{from_host, host_view, transpose_into, FloatTensor};

/// Where the channels of the feature-map side of a [`Crossing`] sit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channels {
    /// `[batch, channels, positions]`.
    First,
    /// `[batch, positions, channels]`.
    Last,
}

/// The geometry of one cross-scan or cross-merge: the feature map's spatial shape, the number
/// of scan directions and the feature map's channel layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crossing {
    /// `[depth, height, width]`; a 2D map has depth 1.
    pub spatial: [usize; 3],
    /// K: 2, 4 or 6, in the orders of [`crate::cross_scan3d`] (with depth 1 and K = 4, those
    /// of the 2D [`crate::cross_scan`]).
    pub directions: usize,
    /// The feature map's channel layout.
    pub channels: Channels,
}

impl Crossing {
    /// The number of positions `S = D·H·W`.
    pub fn positions(&self) -> usize {
        self.spatial.iter().product()
    }

    /// The feature map `x` (`[B, C, S]` or `[B, S, C]`) read in the K directions:
    /// `[B, K, C, S]`.
    pub fn scan<B: CrossScanBackend>(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let y = B::cross_scan(x.into_primitive().tensor(), *self);
        Tensor::from_primitive(TensorPrimitive::Float(y))
    }

    /// `y: [B, K, C, S]` mapped back to row-major order and summed over the K directions, as a
    /// feature map in this crossing's channel layout: the adjoint of [`Crossing::scan`].
    pub fn merge<B: CrossScanBackend>(&self, y: Tensor<B, 4>) -> Tensor<B, 3> {
        let x = B::cross_merge(y.into_primitive().tensor(), *self);
        Tensor::from_primitive(TensorPrimitive::Float(x))
    }

    /// The `[batch, channels]` of a feature map of this crossing's layout with dims `dims`;
    /// panics when its positions are not this crossing's (the layers that build a crossing
    /// take its shape from the map itself).
    fn feature_map(&self, dims: &[usize]) -> [usize; 2] {
        let (batch, channels, positions) = match self.channels {
            Channels::First => (dims[0], dims[1], dims[2]),
            Channels::Last => (dims[0], dims[2], dims[1]),
        };
        assert_eq!(
            positions,
            self.positions(),
            "cross-scan: a feature map of {positions} positions for a {:?} crossing",
            self.spatial
        );
        [batch, channels]
    }
}

/// A burn backend's cross-scan and cross-merge: Flex runs the host passes below, autodiff
/// records each as one node whose backward is the other, GPU backends keep the tensor ops.
pub trait CrossScanBackend: Backend {
    /// Feature map (`[B, C, S]` or `[B, S, C]`) -> `[B, K, C, S]`. By default the tensor ops
    /// of [`cross_scan_3d`].
    fn cross_scan(x: FloatTensor<Self>, crossing: Crossing) -> FloatTensor<Self> {
        generic_scan::<Self>(x, crossing)
    }

    /// `[B, K, C, S]` -> feature map, the adjoint of [`CrossScanBackend::cross_scan`]. By
    /// default the tensor ops of [`cross_merge_3d`].
    fn cross_merge(y: FloatTensor<Self>, crossing: Crossing) -> FloatTensor<Self> {
        generic_merge::<Self>(y, crossing)
    }
}

/// Flex gathers on its host buffers.
impl CrossScanBackend for burn::backend::Flex {
    fn cross_scan(x: FloatTensor<Self>, crossing: Crossing) -> FloatTensor<Self> {
        host_scan::<Self>(x, crossing)
    }

    fn cross_merge(y: FloatTensor<Self>, crossing: Crossing) -> FloatTensor<Self> {
        host_merge::<Self>(y, crossing)
    }
}

/// The autodiff node of a cross-scan: its backward is the cross-merge of the gradient.
#[derive(Debug)]
struct ScanNode(Crossing);

impl<B: CrossScanBackend> Backward<B, 1> for ScanNode {
    type State = ();

    fn backward(self, ops: Ops<(), 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        unary::<B, _>(ops.parents, ops.node, grads, |dy| {
            B::cross_merge(dy, self.0)
        });
    }
}

/// The autodiff node of a cross-merge: its backward is the cross-scan of the gradient.
#[derive(Debug)]
struct MergeNode(Crossing);

impl<B: CrossScanBackend> Backward<B, 1> for MergeNode {
    type State = ();

    fn backward(self, ops: Ops<(), 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        unary::<B, _>(ops.parents, ops.node, grads, |dy| B::cross_scan(dy, self.0));
    }
}

/// Autodiff runs the inner backend's op and records the other one as its backward.
impl<B: CrossScanBackend, C: CheckpointStrategy> CrossScanBackend for Autodiff<B, C> {
    fn cross_scan(x: FloatTensor<Self>, crossing: Crossing) -> FloatTensor<Self> {
        ScanNode(crossing)
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateless(B::cross_scan(x.primitive, crossing))
    }

    fn cross_merge(y: FloatTensor<Self>, crossing: Crossing) -> FloatTensor<Self> {
        MergeNode(crossing)
            .prepare::<C>([y.node.clone()])
            .compute_bound()
            .stateless(B::cross_merge(y.primitive, crossing))
    }
}

// CubeCL backends and the fusion wrapper keep burn's ops and their backward.
crate::gpu_backends_keep_defaults!(CrossScanBackend);

/// The cross-scan as tensor ops: what backends without a host pass run.
fn generic_scan<B: Backend>(x: FloatTensor<B>, crossing: Crossing) -> FloatTensor<B> {
    let x = Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(x));
    let [batch, channels] = crossing.feature_map(&x.dims());
    let x = match crossing.channels {
        Channels::First => x,
        Channels::Last => x.swap_dims(1, 2),
    };
    let [d, h, w] = crossing.spatial;
    let x = x.reshape([batch, channels, d, h, w]);
    cross_scan_3d(x, crossing.directions)
        .into_primitive()
        .tensor()
}

/// The cross-merge as tensor ops: what backends without a host pass run.
fn generic_merge<B: Backend>(y: FloatTensor<B>, crossing: Crossing) -> FloatTensor<B> {
    let y = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(y));
    let [d, h, w] = crossing.spatial;
    let x = cross_merge_3d(y, d, h, w);
    let x = match crossing.channels {
        Channels::First => x,
        Channels::Last => x.swap_dims(1, 2),
    };
    x.into_primitive().tensor()
}

/// The position (row-major `(d·H + h)·W + w`) that axis order `order` reads at each step, for
/// orders 1 and 2 of [`crate::cross_scan3d`] (order 0 reads them in order).
fn order_positions(order: usize, [depth, height, width]: [usize; 3]) -> Vec<u32> {
    let mut table = Vec::with_capacity(depth * height * width);
    let at = |d: usize, h: usize, w: usize| ((d * height + h) * width + w) as u32;
    match order {
        // Height fastest, then width, then depth.
        1 => {
            for d in 0..depth {
                for w in 0..width {
                    table.extend((0..height).map(|h| at(d, h, w)));
                }
            }
        }
        // Depth fastest, then width, then height.
        2 => {
            for h in 0..height {
                for w in 0..width {
                    table.extend((0..depth).map(|d| at(d, h, w)));
                }
            }
        }
        _ => unreachable!("order 0 needs no table"),
    }
    table
}

/// For each position, the step at which `order` reads it: the inverse of [`order_positions`].
fn order_steps(order: usize, spatial: [usize; 3]) -> Vec<u32> {
    let positions = order_positions(order, spatial);
    let mut steps = vec![0u32; positions.len()];
    for (t, &s) in positions.iter().enumerate() {
        steps[s as usize] = t as u32;
    }
    steps
}

/// Rows of output each rayon task takes at least: a row is one channel's positions, and
/// smaller maps would spend more on scheduling than on copying.
const MIN_ROWS_PER_TASK: usize = 8;

/// The host cross-scan: every output row `(b, k, c)` gathered from the feature map's row
/// `(b, c)` (channels first; a channels-last map is transposed once first).
fn host_scan<B: Backend>(x: FloatTensor<B>, crossing: Crossing) -> FloatTensor<B> {
    let device = B::float_device(&x);
    let (x, dims) = host_view::<B>(&x);
    let [batch, channels] = crossing.feature_map(&dims);
    let s = crossing.positions();
    let orders = orders_of(crossing.directions);
    let x = match crossing.channels {
        Channels::First => x,
        Channels::Last => Cow::Owned(batched_transpose(&x, batch, s, channels)),
    };
    assert!(s <= u32::MAX as usize, "cross-scan: {s} positions");
    let tables: Vec<Vec<u32>> = (1..orders)
        .map(|o| order_positions(o, crossing.spatial))
        .collect();
    let k_dirs = crossing.directions;
    let mut out = vec![0.0f32; batch * k_dirs * channels * s];
    if s > 0 {
        out.par_chunks_mut(s)
            .with_min_len(MIN_ROWS_PER_TASK)
            .enumerate()
            .for_each(|(row, dst)| {
                let (c, k, b) = (
                    row % channels,
                    (row / channels) % k_dirs,
                    row / (channels * k_dirs),
                );
                let src = &x[(b * channels + c) * s..][..s];
                let (order, reversed) = (k % orders, k >= orders);
                match (order, reversed) {
                    (0, false) => dst.copy_from_slice(src),
                    (0, true) => dst
                        .iter_mut()
                        .zip(src.iter().rev())
                        .for_each(|(d, v)| *d = *v),
                    (o, false) => gather(dst, src, tables[o - 1].iter()),
                    (o, true) => gather(dst, src, tables[o - 1].iter().rev()),
                }
            });
    }
    from_host::<B>(out, vec![batch, k_dirs, channels, s], &device)
}

/// `dst[t] = src[positions[t]]`.
fn gather<'a>(dst: &mut [f32], src: &[f32], positions: impl Iterator<Item = &'a u32>) {
    dst.iter_mut()
        .zip(positions)
        .for_each(|(d, &p)| *d = src[p as usize]);
}

/// The host cross-merge: every feature-map row `(b, c)` summed from the K rows `(b, k, c)`,
/// each read back in row-major order, in the order the tensor ops add them (each order with
/// its reversal, then the orders in turn), then transposed when the map is channels-last.
fn host_merge<B: Backend>(y: FloatTensor<B>, crossing: Crossing) -> FloatTensor<B> {
    let device = B::float_device(&y);
    let (y, dims) = host_view::<B>(&y);
    let (batch, k_dirs, channels, s) = (dims[0], dims[1], dims[2], dims[3]);
    assert_eq!(
        k_dirs, crossing.directions,
        "cross-merge: {k_dirs} directions for a crossing of {}",
        crossing.directions
    );
    assert_eq!(
        s,
        crossing.positions(),
        "cross-merge: {s} positions for a {:?} crossing",
        crossing.spatial
    );
    let orders = orders_of(k_dirs);
    let tables: Vec<Vec<u32>> = (1..orders)
        .map(|o| order_steps(o, crossing.spatial))
        .collect();
    let mut merged = vec![0.0f32; batch * channels * s];
    if s > 0 {
        merged
            .par_chunks_mut(s)
            .with_min_len(MIN_ROWS_PER_TASK)
            .enumerate()
            .for_each(|(row, dst)| {
                let (c, b) = (row % channels, row / channels);
                let dir = |k: usize| &y[((b * k_dirs + k) * channels + c) * s..][..s];
                let (forward, backward) = (dir(0), dir(orders));
                let last = s - 1;
                dst.iter_mut()
                    .zip(forward.iter().zip(backward.iter().rev()))
                    .for_each(|(d, (f, r))| *d = f + r);
                for o in 1..orders {
                    let (forward, backward) = (dir(o), dir(o + orders));
                    dst.iter_mut().zip(&tables[o - 1]).for_each(|(d, &t)| {
                        let t = t as usize;
                        *d += forward[t] + backward[last - t];
                    });
                }
            });
    }
    match crossing.channels {
        Channels::First => from_host::<B>(merged, vec![batch, channels, s], &device),
        Channels::Last => {
            let merged = batched_transpose(&merged, batch, channels, s);
            from_host::<B>(merged, vec![batch, s, channels], &device)
        }
    }
}

/// `batch` matrices of `rows × cols` (row-major, one after another) -> each `cols × rows`.
fn batched_transpose(src: &[f32], batch: usize, rows: usize, cols: usize) -> Vec<f32> {
    let size = rows * cols;
    assert_eq!(
        src.len(),
        batch * size,
        "transpose of {batch} matrices of {rows} × {cols}"
    );
    let mut dst = vec![0.0f32; src.len()];
    if size > 0 {
        dst.par_chunks_mut(size)
            .zip(src.par_chunks(size))
            .for_each(|(d, m)| transpose_into(d, m, rows, cols));
    }
    dst
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::{Distribution, TensorData};

    type Ad = Autodiff<Flex>;

    fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
    }

    fn random<B: Backend, const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
        Tensor::random(shape, Distribution::Uniform(-1.0, 1.0), &Default::default())
    }

    /// Every crossing the tests run: 2D and 3D maps (one with a single slice, one with a
    /// single row), each number of directions, both layouts.
    fn crossings() -> Vec<Crossing> {
        let mut all = Vec::new();
        for spatial in [[1, 4, 5], [3, 4, 5], [2, 1, 3], [5, 3, 2]] {
            for directions in [2, 4, 6] {
                for channels in [Channels::First, Channels::Last] {
                    all.push(Crossing {
                        spatial,
                        directions,
                        channels,
                    });
                }
            }
        }
        all
    }

    /// `[batch, channels]` as the feature map's dims in `crossing`'s layout.
    fn map_dims(crossing: &Crossing, batch: usize, channels: usize) -> [usize; 3] {
        match crossing.channels {
            Channels::First => [batch, channels, crossing.positions()],
            Channels::Last => [batch, crossing.positions(), channels],
        }
    }

    #[test]
    fn the_host_scan_and_merge_give_the_tensor_ops_values() {
        for crossing in crossings() {
            let x = random::<Flex, 3>(map_dims(&crossing, 2, 3));
            let scanned = values(crossing.scan(x.clone()));
            let expected = Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(
                generic_scan::<Flex>(x.into_primitive().tensor(), crossing),
            ));
            assert_eq!(scanned, values(expected), "scan of {crossing:?}");

            let k = crossing.directions;
            let y = random::<Flex, 4>([2, k, 3, crossing.positions()]);
            let merged = values(crossing.merge(y.clone()));
            let expected = values(Tensor::<Flex, 3>::from_primitive(TensorPrimitive::Float(
                generic_merge::<Flex>(y.into_primitive().tensor(), crossing),
            )));
            assert_eq!(merged.len(), expected.len());
            for (i, (a, b)) in merged.iter().zip(&expected).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6,
                    "merge of {crossing:?} at {i}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn with_one_slice_and_four_directions_it_is_the_2d_cross_scan() {
        let crossing = Crossing {
            spatial: [1, 6, 7],
            directions: 4,
            channels: Channels::First,
        };
        let x = random::<Flex, 4>([2, 3, 6, 7]);
        let ours = crossing.scan(x.clone().reshape([2, 3, 42]));
        assert_eq!(values(ours), values(crate::cross_scan(x)));
        let y = random::<Flex, 4>([2, 4, 3, 42]);
        let ours = values(crossing.merge(y.clone()));
        let theirs = values(crate::cross_merge(y, 6, 7));
        for (a, b) in ours.iter().zip(&theirs) {
            assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
        }
    }

    /// `Σ a ⊙ b` in float64.
    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum()
    }

    #[test]
    fn the_merge_is_the_adjoint_of_the_scan() {
        for crossing in crossings() {
            let x = random::<Flex, 3>(map_dims(&crossing, 2, 3));
            let y = random::<Flex, 4>([2, crossing.directions, 3, crossing.positions()]);
            let lhs = dot(&values(crossing.scan(x.clone())), &values(y.clone()));
            let rhs = dot(&values(x), &values(crossing.merge(y)));
            assert!(
                (lhs - rhs).abs() <= 1e-5 * lhs.abs().max(1.0),
                "{crossing:?}: <scan x, y> = {lhs}, <x, merge y> = {rhs}"
            );
        }
    }

    /// The gradient of `Σ g ⊙ f(x)` where `f` is `op` on autodiff, as host values.
    fn gradient<const DI: usize, const DO: usize>(
        x: &Tensor<Flex, DI>,
        g: &Tensor<Flex, DO>,
        op: impl Fn(Tensor<Ad, DI>) -> Tensor<Ad, DO>,
    ) -> Vec<f32> {
        let _guard = crate::host::autodiff_lock();
        let x = Tensor::<Ad, DI>::from_data(x.to_data(), &Default::default()).require_grad();
        let g = Tensor::<Ad, DO>::from_data(g.to_data(), &Default::default());
        let grads = (op(x.clone()) * g).sum().backward();
        values(x.grad(&grads).expect("x has a gradient"))
    }

    #[test]
    fn the_recorded_gradients_match_burns_autodiff_of_the_tensor_ops() {
        for crossing in crossings() {
            let x = random::<Flex, 3>(map_dims(&crossing, 2, 3));
            let y_dims = [2, crossing.directions, 3, crossing.positions()];
            let g = random::<Flex, 4>(y_dims);
            let ours = gradient(&x, &g, |x| crossing.scan(x));
            let burns = gradient(&x, &g, |x| {
                Tensor::from_primitive(TensorPrimitive::Float(generic_scan::<Ad>(
                    x.into_primitive().tensor(),
                    crossing,
                )))
            });
            for (a, b) in ours.iter().zip(&burns) {
                assert!(
                    (a - b).abs() <= 1e-5,
                    "scan gradient of {crossing:?}: {a} vs {b}"
                );
            }

            let y = random::<Flex, 4>(y_dims);
            let g = random::<Flex, 3>(map_dims(&crossing, 2, 3));
            let ours = gradient(&y, &g, |y| crossing.merge(y));
            let burns = gradient(&y, &g, |y| {
                Tensor::from_primitive(TensorPrimitive::Float(generic_merge::<Ad>(
                    y.into_primitive().tensor(),
                    crossing,
                )))
            });
            for (a, b) in ours.iter().zip(&burns) {
                assert!(
                    (a - b).abs() <= 1e-6,
                    "merge gradient of {crossing:?}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn a_map_of_the_wrong_size_is_refused_by_name() {
        let crossing = Crossing {
            spatial: [1, 4, 4],
            directions: 4,
            channels: Channels::First,
        };
        let x = Tensor::<Flex, 3>::from_data(
            TensorData::new(vec![0.0f32; 30], [1, 2, 15]),
            &Default::default(),
        );
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| crossing.scan(x)))
            .expect_err("15 positions for 16");
        let message = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(message.contains("15 positions"), "{message}");
    }
}
