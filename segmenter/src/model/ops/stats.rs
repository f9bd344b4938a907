//! Mean and variance of float32 values, accumulated in float64: the instance norm's per-plane
//! statistics and the plan's per-case z-score are both this.

/// Mean and population variance of `values` (0 and 0 for none), summed in float64.
pub fn mean_variance(values: &[f32]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = values
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var)
}
