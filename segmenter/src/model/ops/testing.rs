//! Helpers the ops' tests share: host values of a tensor and the comparison against a float64
//! reference.

use burn::prelude::*;

/// A tensor's values as host f32s.
pub fn values<const D: usize, B: Backend>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().into_vec::<f32>().expect("f32")
}

/// Asserts `got` equals `want` within `rel` of `want`'s largest magnitude (not all zero).
pub fn close(name: &str, got: &[f32], want: &[f64], rel: f64) {
    assert_eq!(got.len(), want.len(), "{name}");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{name}: the reference is all zero");
    for (i, (a, r)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(*a) - r).abs() <= rel * scale,
            "{name}[{i}]: {a} vs {r}"
        );
    }
}

/// Serialises the tests here that call `backward()` (tracel-ai/burn#5573: in burn 0.21 a
/// backward pass on one thread can free the autodiff steps of a graph another thread builds).
pub fn autodiff_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
