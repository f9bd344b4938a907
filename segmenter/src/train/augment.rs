//! Image-space augmentations of 2D patches that nnU-Net uses and the sampler lacked: Gaussian blur,
//! low-resolution simulation and elastic deformation. Each works on one channel laid out row-major
//! `[rows, cols]`; the caller (the sampler in `data.rs`) draws the random parameters from its seeded
//! generator, so batches stay a function of (seed, step).

use rand::rngs::SmallRng;
use rand::Rng;

/// Weights of a normalised 1D Gaussian of standard deviation `sigma` (pixels), cut at 3 sigma
/// (scipy's `gaussian_filter`, which nnU-Net uses, cuts at 4; the tail beyond 3 holds 0.3%).
fn gaussian_kernel(sigma: f32) -> Vec<f32> {
    let radius = (3.0 * sigma).ceil().max(1.0) as isize;
    let mut weights: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = weights.iter().sum();
    weights.iter_mut().for_each(|w| *w /= sum);
    weights
}

/// Mirrors an index that fell off either end of `0..n` back inside (scipy's "reflect" mode), so
/// smoothing neither darkens nor brightens the border.
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let period = 2 * n;
    let mut i = i.rem_euclid(period);
    if i >= n {
        i = period - 1 - i;
    }
    i as usize
}

/// Separable Gaussian smoothing of `values` (`[rows, cols]`, row-major) with `sigma` pixels on both axes.
pub fn gaussian_blur(values: &mut [f32], [rows, cols]: [usize; 2], sigma: f32) {
    debug_assert_eq!(values.len(), rows * cols);
    if sigma.is_nan() || sigma <= 0.0 || values.is_empty() {
        return;
    }
    let kernel = gaussian_kernel(sigma);
    let radius = (kernel.len() / 2) as isize;
    let mut tmp = vec![0.0f32; values.len()];
    // Along columns within each row, then along rows within each column.
    for r in 0..rows {
        for c in 0..cols {
            tmp[r * cols + c] = kernel
                .iter()
                .enumerate()
                .map(|(k, w)| {
                    w * values[r * cols + reflect(c as isize + k as isize - radius, cols)]
                })
                .sum();
        }
    }
    for r in 0..rows {
        for c in 0..cols {
            values[r * cols + c] = kernel
                .iter()
                .enumerate()
                .map(|(k, w)| w * tmp[reflect(r as isize + k as isize - radius, rows) * cols + c])
                .sum();
        }
    }
}

/// nnU-Net's SimulateLowResolution: nearest-neighbour downsampling to `zoom` times the size (at least
/// one pixel per axis), then cubic upsampling back, which keeps the coarse content and loses detail.
pub fn simulate_low_resolution(values: &mut [f32], [rows, cols]: [usize; 2], zoom: f64) {
    debug_assert_eq!(values.len(), rows * cols);
    let small = [
        ((rows as f64 * zoom).round() as usize).clamp(1, rows.max(1)),
        ((cols as f64 * zoom).round() as usize).clamp(1, cols.max(1)),
    ];
    if small == [rows, cols] || values.is_empty() {
        return;
    }
    // Nearest neighbour at the small grid's pixel centres, as scipy's order-0 zoom.
    let pick = |i: usize, from: usize, to: usize| {
        (((i as f64 + 0.5) * from as f64 / to as f64) as usize).min(from - 1)
    };
    let mut low = Vec::with_capacity(small[0] * small[1]);
    for r in 0..small[0] {
        let sr = pick(r, rows, small[0]);
        for c in 0..small[1] {
            low.push(values[sr * cols + pick(c, cols, small[1])]);
        }
    }
    // segmenter-io's resamplers take [x, y, z] with x fastest: here x = columns, y = rows.
    let up = segmenter_io::resample_cubic(&low, [small[1], small[0], 1], [cols, rows, 1]);
    values.copy_from_slice(&up);
}

/// A smooth random displacement field for elastic deformation: uniform noise in [-1, 1] per pixel
/// and axis, Gaussian-smoothed with `sigma` pixels and scaled by `alpha` (batchgenerators'
/// `create_deformation_field`, nnU-Net v1's elastic transform). Returns (row, col) offsets in pixels,
/// row-major `[rows, cols]`; `alpha = 0` gives exactly zero displacement.
pub fn elastic_displacement(
    rng: &mut SmallRng,
    [rows, cols]: [usize; 2],
    alpha: f64,
    sigma: f64,
) -> Vec<[f64; 2]> {
    let mut axes = [(); 2].map(|_| {
        let mut field: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-1.0f32..=1.0))
            .collect();
        gaussian_blur(&mut field, [rows, cols], sigma as f32);
        field
    });
    for field in &mut axes {
        field.iter_mut().for_each(|v| *v *= alpha as f32);
    }
    (0..rows * cols)
        .map(|i| [f64::from(axes[0][i]), f64::from(axes[1][i])])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn random_patch(seed: u64, n: usize, mean: f32) -> Vec<f32> {
        let mut rng = SmallRng::seed_from_u64(seed);
        (0..n).map(|_| mean + rng.random_range(-1.0..1.0)).collect()
    }

    /// Energy of differences between neighbouring pixels: what fine detail contributes.
    fn high_frequency_energy(values: &[f32], [rows, cols]: [usize; 2]) -> f64 {
        let mut e = 0.0;
        for r in 0..rows {
            for c in 0..cols {
                let v = values[r * cols + c];
                if c + 1 < cols {
                    e += f64::from(values[r * cols + c + 1] - v).powi(2);
                }
                if r + 1 < rows {
                    e += f64::from(values[(r + 1) * cols + c] - v).powi(2);
                }
            }
        }
        e
    }

    fn mean(values: &[f32]) -> f64 {
        values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64
    }

    #[test]
    fn blur_lowers_high_frequency_energy_and_keeps_the_mean() {
        let shape = [48, 40];
        let original = random_patch(1, 48 * 40, 2.0);
        let mut previous = high_frequency_energy(&original, shape);
        for sigma in [0.5, 1.0, 2.0] {
            let mut blurred = original.clone();
            gaussian_blur(&mut blurred, shape, sigma);
            let energy = high_frequency_energy(&blurred, shape);
            assert!(
                energy < 0.8 * previous,
                "sigma {sigma}: {energy} vs {previous}"
            );
            previous = energy;
            assert!((mean(&blurred) - mean(&original)).abs() < 0.01);
        }
        // A constant image is a fixed point, border included (reflecting edges).
        let mut flat = vec![3.5f32; 7 * 5];
        gaussian_blur(&mut flat, [7, 5], 1.0);
        assert!(flat.iter().all(|&v| (v - 3.5).abs() < 1e-5), "{flat:?}");
    }

    #[test]
    fn low_resolution_keeps_the_mean_and_loses_detail() {
        let shape = [64, 64];
        let original = random_patch(2, 64 * 64, 5.0);
        let mut low = original.clone();
        simulate_low_resolution(&mut low, shape, 0.5);
        assert_eq!(low.len(), original.len());
        assert!((mean(&low) - mean(&original)).abs() < 0.05);
        let (before, after) = (
            high_frequency_energy(&original, shape),
            high_frequency_energy(&low, shape),
        );
        assert!(after < 0.6 * before, "{after} vs {before}");
        // Zoom 1 is the identity; a smooth ramp survives nearly unchanged at zoom 0.5.
        let mut same = original.clone();
        simulate_low_resolution(&mut same, shape, 1.0);
        assert_eq!(same, original);
        let ramp: Vec<f32> = (0..64 * 64).map(|i| (i % 64) as f32 * 0.1).collect();
        let mut coarse = ramp.clone();
        simulate_low_resolution(&mut coarse, shape, 0.5);
        let worst = ramp
            .iter()
            .zip(&coarse)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 0.15, "ramp changed by {worst}");
    }

    #[test]
    fn elastic_field_is_zero_at_zero_magnitude_and_smooth_otherwise() {
        let mut rng = SmallRng::seed_from_u64(3);
        let zero = elastic_displacement(&mut rng, [32, 24], 0.0, 10.0);
        assert!(zero.iter().all(|d| *d == [0.0, 0.0]));
        let field = elastic_displacement(&mut rng, [32, 24], 900.0, 10.0);
        let largest = field
            .iter()
            .flat_map(|d| d.iter().map(|v| v.abs()))
            .fold(0.0, f64::max);
        // Smoothed unit noise scaled by 900 moves pixels by several pixels, not hundreds.
        assert!((1.0..100.0).contains(&largest), "largest offset {largest}");
        // Neighbours move together: the step between adjacent pixels is small next to the offsets.
        let step = (0..32 * 24 - 1)
            .filter(|i| (i + 1) % 24 != 0)
            .map(|i| (field[i][0] - field[i + 1][0]).abs())
            .fold(0.0, f64::max);
        assert!(step < largest / 4.0, "step {step} vs offsets {largest}");
    }
}
