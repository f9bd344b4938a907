//! Checks any backend's scan (forward and all seven gradients) against the fused CPU kernel and
//! the float64 reference on random inputs: used by the GPU kernel's tests (wgpu on lavapipe) and
//! by `segmenter bench scan-kernel` on a real GPU, so both run the same comparison.

use burn::backend::Autodiff;
use burn::tensor::{backend::Backend, Tensor, TensorData, TensorPrimitive};

use super::cpu::{self, ScanDims, ScanInputs};
use super::reference::{scan_forward_f64, RefInputs};
use super::{selective_scan, FloatTensor, ScanArgs, ScanBackend, ScanTensors};

/// Random scan inputs and an upstream gradient dy, owned, in float32.
#[derive(Clone, Debug)]
pub struct RandomScan {
    /// Sizes of the call.
    pub dims: ScanDims,
    /// `[u, delta, a, bm, cm, d_skip, delta_bias]`, row-major.
    pub values: [Vec<f32>; 7],
    /// Upstream gradient `[B, D, L]`.
    pub dy: Vec<f32>,
}

/// SplitMix64: a small deterministic generator, so the inputs are the same on every machine.
struct SplitMix(u64);

impl SplitMix {
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let unit = (z >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * unit
    }
}

impl RandomScan {
    /// Inputs in the ranges a trained VMamba layer sees (A < 0, Δ from softplus of about -3..1),
    /// never zeros, from `seed`.
    pub fn new(dims: ScanDims, seed: u64) -> Self {
        let mut rng = SplitMix(seed);
        let mut v = |count: usize, lo: f32, hi: f32| -> Vec<f32> {
            (0..count).map(|_| rng.uniform(lo, hi)).collect()
        };
        // Ranges in INPUT_NAMES order, drawn one input after the other.
        let ranges = [
            (-1.0, 1.0),
            (-3.0, 1.0),
            (-2.0, -0.1),
            (-1.0, 1.0),
            (-1.0, 1.0),
            (0.5, 1.5),
            (-1.0, 0.5),
        ];
        let counts = dims.shapes().map(|s| s.iter().product::<usize>());
        let mut values: [Vec<f32>; 7] = Default::default();
        for ((values, count), (lo, hi)) in values.iter_mut().zip(counts).zip(ranges) {
            *values = v(count, lo, hi);
        }
        let dy = v(counts[0], -1.0, 1.0);
        Self { dims, values, dy }
    }

    /// The inputs as borrowed slices for the CPU kernel.
    pub fn inputs(&self) -> ScanInputs<'_> {
        ScanInputs::borrowed(&self.values)
    }

    /// Shapes of the seven inputs.
    pub fn shapes(&self) -> [Vec<usize>; 7] {
        self.dims.shapes()
    }

    /// The inputs as tensors of backend `B` on `device`.
    pub fn tensors<B: Backend>(&self, device: &B::Device) -> ScanTensors<B> {
        let shapes = self.shapes();
        ScanArgs::from_array(std::array::from_fn(|i| {
            B::float_from_data(
                TensorData::new(self.values[i].clone(), shapes[i].clone()),
                device,
            )
        }))
    }
}

pub use super::INPUT_NAMES;

/// How far a backend's results are from the references, as max |got - want| / max |want|.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// Sizes of the call.
    pub dims: ScanDims,
    /// y against the float64 reference.
    pub y_vs_f64: f64,
    /// y against the fused CPU kernel.
    pub y_vs_cpu: f64,
    /// Each input's gradient through autodiff (the training path, checkpoints kept by the
    /// forward pass) against the CPU kernel's, in [`INPUT_NAMES`] order.
    pub grads_autodiff: [f64; 7],
    /// The same from the backend's backward pass alone (checkpoints recomputed).
    pub grads_direct: [f64; 7],
}

/// Largest error of y accepted by [`CheckReport::passes`]: the float32 kernels sit near 1e-7
/// of float64 here; 1e-5 leaves room for a GPU's own exp and summation order.
pub const Y_TOLERANCE: f64 = 1e-5;

/// Largest error of a gradient accepted by [`CheckReport::passes`] (up to 2.6e-6 on the test
/// shapes and 6.3e-6 at B=2 K=4 E=192 N=16 L=1000, measured on lavapipe; sums over L and over
/// the direction's channels run in a different order than on the CPU).
pub const GRAD_TOLERANCE: f64 = 5e-5;

impl CheckReport {
    /// Whether y and every gradient are within [`Y_TOLERANCE`] / [`GRAD_TOLERANCE`].
    pub fn passes(&self) -> bool {
        let grads = self.grads_autodiff.iter().chain(&self.grads_direct);
        self.y_vs_f64 < Y_TOLERANCE
            && self.y_vs_cpu < Y_TOLERANCE
            && grads.into_iter().all(|&e| e < GRAD_TOLERANCE)
    }

    /// The largest error of all.
    pub fn worst(&self) -> f64 {
        self.grads_autodiff
            .iter()
            .chain(&self.grads_direct)
            .fold(self.y_vs_f64.max(self.y_vs_cpu), |m, &e| m.max(e))
    }
}

/// max |got - want| / max |want|; panics when the reference is all zeros (nothing to compare).
pub fn rel_err(got: &[f32], want: impl IntoIterator<Item = f64>) -> f64 {
    let (mut err, mut scale, mut count) = (0.0f64, 0.0f64, 0usize);
    for (&g, w) in got.iter().zip(want) {
        err = err.max((f64::from(g) - w).abs());
        scale = scale.max(w.abs());
        count += 1;
        if !g.is_finite() {
            return f64::INFINITY;
        }
    }
    assert_eq!(count, got.len(), "rel_err: lengths differ");
    assert!(scale > 0.0, "rel_err: the reference is all zeros");
    err / scale
}

fn host<B: Backend>(t: FloatTensor<B>) -> Vec<f32> {
    Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t))
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("converted tensor data is f32")
}

fn f64s(v: &[f32]) -> impl Iterator<Item = f64> + '_ {
    v.iter().map(|&x| f64::from(x))
}

/// Runs `B`'s scan on `case`, forward and backward (through autodiff, and directly), and
/// compares every output with the references.
pub fn check_backend<B: ScanBackend>(device: &B::Device, case: &RandomScan) -> CheckReport {
    let dims = case.dims;
    let inputs = case.inputs();
    let y_f64 = scan_forward_f64(dims, &RefInputs::from_f32(&inputs));
    let y_cpu = cpu::scan_forward(dims, &inputs);
    let want = cpu::scan_backward(dims, &inputs, &case.dy).into_array();

    // The training path: autodiff over the backend, loss = sum(y * dy).
    // Flat leaves, reshaped for the call, so their gradients come back flat too.
    let leaves: [Tensor<Autodiff<B>, 1>; 7] = std::array::from_fn(|i| {
        let v = case.values[i].clone();
        let n = v.len();
        Tensor::from_data(TensorData::new(v, vec![n]), device).require_grad()
    });
    let shapes = case.shapes();
    let [u, delta, a, bm, cm, d_skip, delta_bias] = leaves.clone();
    let y = selective_scan(
        u.reshape([shapes[0][0], shapes[0][1], shapes[0][2]]),
        delta.reshape([shapes[1][0], shapes[1][1], shapes[1][2]]),
        a.reshape([shapes[2][0], shapes[2][1]]),
        bm.reshape([shapes[3][0], shapes[3][1], shapes[3][2], shapes[3][3]]),
        cm.reshape([shapes[4][0], shapes[4][1], shapes[4][2], shapes[4][3]]),
        d_skip,
        delta_bias,
    );
    let dy = Tensor::<Autodiff<B>, 3>::from_data(
        TensorData::new(case.dy.clone(), shapes[0].clone()),
        device,
    );
    let grads = (y.clone() * dy).sum().backward();
    let y_dev = host::<B>(y.inner().into_primitive().tensor());
    let grads_autodiff: [f64; 7] = std::array::from_fn(|i| {
        let g = leaves[i]
            .grad(&grads)
            .unwrap_or_else(|| panic!("no gradient for {}", INPUT_NAMES[i]));
        rel_err(&host::<B>(g.into_primitive().tensor()), f64s(&want[i]))
    });

    // The backend's backward pass on its own (no checkpoints from a forward pass).
    let dy_dev = B::float_from_data(TensorData::new(case.dy.clone(), shapes[0].clone()), device);
    let g = B::selective_scan_backward(case.tensors::<B>(device), dy_dev);
    let direct = g.into_array().map(host::<B>);
    let grads_direct: [f64; 7] = std::array::from_fn(|i| rel_err(&direct[i], f64s(&want[i])));

    CheckReport {
        dims,
        y_vs_f64: rel_err(&y_dev, y_f64.iter().copied()),
        y_vs_cpu: rel_err(&y_dev, f64s(&y_cpu)),
        grads_autodiff,
        grads_direct,
    }
}

/// Shapes that exercise the kernels' edges: N in {1, 4, 16}, K in {1, 2, 4}, L not a multiple
/// of any checkpoint block, and directions with more channels than one backward cube holds.
pub fn check_cases() -> Vec<ScanDims> {
    let dims = ScanDims::with_per_dir;
    vec![
        dims(2, 1, 3, 1, 37),
        dims(1, 2, 5, 4, 70),
        dims(2, 4, 2, 16, 33),
        dims(1, 2, 40, 4, 65),
        dims(1, 4, 3, 16, 129),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    /// On Flex the scan is the CPU kernel itself: the harness must report (near) zero errors,
    /// against a reference that is not all zeros.
    #[test]
    fn flex_checks_clean() {
        for (i, dims) in check_cases().into_iter().enumerate() {
            let r = check_backend::<Flex>(&Default::default(), &RandomScan::new(dims, i as u64));
            assert!(r.y_vs_f64 < 2e-5, "{r:?}");
            assert!(r.y_vs_cpu < 1e-6, "{r:?}");
            let grads = r.grads_autodiff.iter().chain(&r.grads_direct);
            assert!(grads.fold(0.0f64, |m, &e| m.max(e)) < 1e-6, "{r:?}");
        }
    }

    /// A wrong result is reported as one.
    #[test]
    fn rel_err_sees_a_difference() {
        assert_eq!(rel_err(&[1.0, 2.0], [1.0, 2.0]), 0.0);
        assert!((rel_err(&[1.0, 2.5], [1.0, 2.0]) - 0.25).abs() < 1e-12);
        assert_eq!(rel_err(&[f32::NAN, 2.0], [1.0, 2.0]), f64::INFINITY);
    }
}
