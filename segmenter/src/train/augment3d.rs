//! Intensity augmentations of 3D patches, as nnU-Net v2 applies them after its spatial transform:
//! Gaussian noise, separable Gaussian blur, multiplicative brightness, contrast, simulated low
//! resolution and gamma. Each works on one channel laid out row-major `[depth, rows, cols]`; the
//! caller ([`super::sampler3d`]) draws the parameters from its seeded generator, so batches stay a
//! function of (seed, step).

use rand::rngs::SmallRng;
use rand::Rng;

/// True with probability `p`, always consuming exactly one draw, so that setting a probability to 0
/// or 1 leaves every later draw where it was (rand's `random_bool(1.0)` consumes nothing, which
/// would shift the stream).
pub fn chance(rng: &mut SmallRng, p: f64) -> bool {
    rng.random::<f64>() < p
}

/// A value uniform in `[lo, hi)` from exactly one draw; `lo == hi` gives `lo`.
pub fn uniform(rng: &mut SmallRng, [lo, hi]: [f64; 2]) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// A factor from `range` the way nnU-Net's `BGContrast` draws it: when the range straddles 1, half
/// the time below 1 and half above (so 0.75–1.25 darkens and brightens equally often, and 0.7–1.5
/// gamma is not biased towards the longer side); otherwise uniform. Always two draws.
pub fn factor_around_one(rng: &mut SmallRng, [lo, hi]: [f64; 2]) -> f64 {
    let below = chance(rng, 0.5);
    let u: f64 = rng.random();
    if lo < 1.0 && hi > 1.0 {
        if below {
            lo + (1.0 - lo) * u
        } else {
            1.0 + (hi - 1.0) * u
        }
    } else {
        lo + (hi - lo) * u
    }
}

/// Adds zero-mean Gaussian noise of standard deviation `sigma` (nnU-Net calls the range "variance"
/// but uses the drawn value as the standard deviation; so do we).
pub fn add_gaussian_noise(values: &mut [f32], rng: &mut SmallRng, sigma: f32) {
    if sigma <= 0.0 {
        return;
    }
    // Box–Muller gives two independent normals per pair of uniforms; no distribution crate needed.
    for pair in values.chunks_mut(2) {
        let u1 = 1.0 - rng.random::<f32>(); // in (0, 1], so ln is finite
        let u2: f32 = rng.random();
        let radius = sigma * (-2.0 * u1.ln()).sqrt();
        let (s, c) = (2.0 * std::f32::consts::PI * u2).sin_cos();
        pair[0] += radius * c;
        if let Some(v) = pair.get_mut(1) {
            *v += radius * s;
        }
    }
}

/// Weights of a normalised 1D Gaussian of standard deviation `sigma` voxels, cut at 3 sigma (the
/// tail beyond holds 0.3% of the weight).
fn gaussian_kernel(sigma: f32) -> Vec<f32> {
    let radius = (3.0 * sigma).ceil().max(1.0) as isize;
    let mut weights: Vec<f32> = (-radius..=radius)
        .map(|i| (-((i * i) as f32) / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = weights.iter().sum();
    weights.iter_mut().for_each(|w| *w /= sum);
    weights
}

/// Index `i` (possibly past either end) folded back into `0..n` by half-sample symmetric
/// reflection (`d c b a | a b c d`), so smoothing neither darkens nor brightens the border.
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let m = i.rem_euclid(2 * n);
    (if m < n { m } else { 2 * n - 1 - m }) as usize
}

/// Row-major strides of a `[depth, rows, cols]` array.
fn strides([_, r, c]: [usize; 3]) -> [usize; 3] {
    [r * c, c, 1]
}

/// Calls `f(base)` with the flat index of the first element of every line along `axis`; the line's
/// elements then lie at `base + k * strides(shape)[axis]`.
fn for_each_line(shape: [usize; 3], axis: usize, mut f: impl FnMut(usize)) {
    let len = shape[axis];
    let stride = strides(shape)[axis];
    let lines = shape.iter().product::<usize>() / len.max(1);
    for line in 0..lines {
        f((line / stride) * stride * len + line % stride);
    }
}

/// Separable Gaussian smoothing of a `[depth, rows, cols]` channel with `sigma[axis]` voxels along
/// each axis; an axis with sigma 0 is left alone (depth, for anisotropic data).
pub fn gaussian_blur_3d(values: &mut [f32], shape: [usize; 3], sigma: [f32; 3]) {
    debug_assert_eq!(values.len(), shape.iter().product::<usize>());
    if values.is_empty() {
        return;
    }
    // One padded line buffer reused for every line: no allocation per voxel or per line.
    let mut line = Vec::new();
    for axis in 0..3 {
        // NaN, zero, negative or infinite sigma: nothing sensible to smooth with.
        if !sigma[axis].is_finite() || sigma[axis] <= 0.0 || shape[axis] < 2 {
            continue;
        }
        let kernel = gaussian_kernel(sigma[axis]);
        let radius = kernel.len() / 2;
        let (len, stride) = (shape[axis], strides(shape)[axis]);
        for_each_line(shape, axis, |base| {
            line.clear();
            line.extend(
                (0..len + 2 * radius)
                    .map(|k| values[base + stride * reflect(k as isize - radius as isize, len)]),
            );
            for k in 0..len {
                values[base + stride * k] = kernel
                    .iter()
                    .zip(&line[k..k + kernel.len()])
                    .map(|(w, v)| w * v)
                    .sum();
            }
        });
    }
}

/// Multiplies every value by `factor`.
pub fn scale_brightness(values: &mut [f32], factor: f32) {
    values.iter_mut().for_each(|v| *v *= factor);
}

/// Stretches values about their mean by `factor`, then clips to the range they had before
/// (nnU-Net's `ContrastTransform` with `preserve_range`).
pub fn adjust_contrast(values: &mut [f32], factor: f32) {
    if values.is_empty() {
        return;
    }
    let (lo, hi) = min_max(values);
    let mean = (values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64) as f32;
    values
        .iter_mut()
        .for_each(|v| *v = ((*v - mean) * factor + mean).clamp(lo, hi));
}

fn min_max(values: &[f32]) -> (f32, f32) {
    values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        })
}

fn mean_std(values: &[f32]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = values
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var.sqrt())
}

/// nnU-Net's gamma transform with retained statistics: values mapped to [0, 1] by their range,
/// raised to `gamma`, mapped back, then shifted and scaled to the mean and standard deviation they
/// had. With `invert`, applied to the negated image (brightening dark structures instead of bright
/// ones), then negated back.
pub fn gamma_retaining_stats(values: &mut [f32], gamma: f32, invert: bool) {
    if values.is_empty() {
        return;
    }
    let sign = if invert { -1.0f32 } else { 1.0 };
    if invert {
        values.iter_mut().for_each(|v| *v = -*v);
    }
    let (mean, std) = mean_std(values);
    let (lo, hi) = min_max(values);
    // The small epsilon keeps a constant patch finite (0/0 would be NaN).
    let range = (hi - lo) + 1e-7;
    values
        .iter_mut()
        .for_each(|v| *v = ((*v - lo) / range).powf(gamma) * range + lo);
    let (new_mean, new_std) = mean_std(values);
    let gain = std / (new_std + 1e-8);
    values
        .iter_mut()
        .for_each(|v| *v = sign * (((f64::from(*v) - new_mean) * gain + mean) as f32));
}

/// nnU-Net's simulated low resolution: nearest-neighbour downsampling of each axis to `zoom[axis]`
/// times its length (at least one voxel; zoom 1 leaves an axis alone, which is how anisotropic data
/// keeps its depth), then trilinear upsampling back (half-voxel centres, borders replicated, as
/// PyTorch's `interpolate(mode="trilinear")` that nnU-Net calls).
pub fn simulate_low_resolution_3d(values: &mut [f32], shape: [usize; 3], zoom: [f64; 3]) {
    debug_assert_eq!(values.len(), shape.iter().product::<usize>());
    if values.is_empty() {
        return;
    }
    let small: [usize; 3] =
        std::array::from_fn(|a| ((shape[a] as f64 * zoom[a]).round() as usize).clamp(1, shape[a]));
    if small == shape {
        return;
    }
    // Nearest at the small grid's voxel centres (PyTorch's "nearest-exact").
    let pick: [Vec<usize>; 3] = std::array::from_fn(|a| {
        (0..small[a])
            .map(|i| {
                (((i as f64 + 0.5) * shape[a] as f64 / small[a] as f64) as usize).min(shape[a] - 1)
            })
            .collect()
    });
    let st = strides(shape);
    let mut low = Vec::with_capacity(small.iter().product());
    for &d in &pick[0] {
        for &r in &pick[1] {
            for &c in &pick[2] {
                low.push(values[d * st[0] + r * st[1] + c * st[2]]);
            }
        }
    }
    // segmenter-io's resampler takes x-fastest shapes: row-major [d, r, c] is x = c, y = r, z = d.
    let up = segmenter_io::resample_linear(
        &low,
        [small[2], small[1], small[0]],
        [shape[2], shape[1], shape[0]],
    );
    values.copy_from_slice(&up);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn random(seed: u64, n: usize) -> Vec<f32> {
        let mut rng = SmallRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// Sum of squared differences between neighbours along `axis`: the fine detail along it.
    fn detail(values: &[f32], shape: [usize; 3], axis: usize) -> f64 {
        let stride = strides(shape)[axis];
        let mut e = 0.0;
        for_each_line(shape, axis, |base| {
            for k in 1..shape[axis] {
                let (a, b) = (values[base + stride * (k - 1)], values[base + stride * k]);
                e += f64::from(a - b).powi(2);
            }
        });
        e
    }

    #[test]
    fn blur_smooths_only_the_axes_given_and_keeps_the_mean() {
        let shape = [6, 10, 12];
        let original = random(1, 720);
        let mut blurred = original.clone();
        gaussian_blur_3d(&mut blurred, shape, [0.0, 1.0, 1.0]);
        // Blurring rows and cols removes most of the detail along them.
        for axis in [1, 2] {
            assert!(detail(&blurred, shape, axis) < 0.3 * detail(&original, shape, axis));
        }
        let (m0, m1) = (mean_std(&original).0, mean_std(&blurred).0);
        assert!((m0 - m1).abs() < 0.02, "{m0} vs {m1}");
        // A constant volume is a fixed point, borders included.
        let mut flat = vec![2.5f32; 720];
        gaussian_blur_3d(&mut flat, shape, [0.7, 1.0, 0.5]);
        assert!(flat.iter().all(|&v| (v - 2.5).abs() < 1e-5));
        // Sigma 0 on every axis is the identity; a volume constant along depth stays so when depth
        // is not blurred.
        let mut same = original.clone();
        gaussian_blur_3d(&mut same, shape, [0.0; 3]);
        assert_eq!(same, original);
        let plane = random(2, 120);
        let mut stack: Vec<f32> = (0..6).flat_map(|_| plane.clone()).collect();
        gaussian_blur_3d(&mut stack, shape, [0.0, 1.0, 1.0]);
        assert_eq!(&stack[..120], &stack[5 * 120..]);
    }

    #[test]
    fn low_resolution_loses_detail_keeps_the_mean_and_skips_zoom_one_axes() {
        let shape = [8, 16, 16];
        let original = random(3, 8 * 256);
        let mut low = original.clone();
        simulate_low_resolution_3d(&mut low, shape, [1.0, 0.5, 0.5]);
        assert!(detail(&low, shape, 2) < 0.6 * detail(&original, shape, 2));
        assert!((mean_std(&low).0 - mean_std(&original).0).abs() < 0.05);
        // Zoom 1 along depth keeps depth detail that a zoom of 0.5 there would remove.
        let mut all_axes = original.clone();
        simulate_low_resolution_3d(&mut all_axes, shape, [0.5, 0.5, 0.5]);
        assert!(detail(&low, shape, 0) > 1.5 * detail(&all_axes, shape, 0));
        let mut same = original.clone();
        simulate_low_resolution_3d(&mut same, shape, [1.0; 3]);
        assert_eq!(same, original);
    }

    #[test]
    fn gamma_keeps_mean_and_std_and_contrast_keeps_the_range() {
        let original: Vec<f32> = random(4, 500).iter().map(|v| 3.0 * v + 1.0).collect();
        let (mean, std) = mean_std(&original);
        for invert in [false, true] {
            let mut g = original.clone();
            gamma_retaining_stats(&mut g, 1.4, invert);
            let (m, s) = mean_std(&g);
            assert!((m - mean).abs() < 1e-3 && (s - std).abs() < 1e-3, "{m} {s}");
            assert_ne!(g, original);
        }
        let mut flat = vec![1.0f32; 10];
        gamma_retaining_stats(&mut flat, 0.7, false);
        assert!(flat.iter().all(|v| v.is_finite()));
        let mut c = original.clone();
        adjust_contrast(&mut c, 1.25);
        let ((lo, hi), (clo, chi)) = (min_max(&original), min_max(&c));
        assert!(clo >= lo && chi <= hi);
        assert!(mean_std(&c).1 > std);
    }

    #[test]
    fn factor_draws_straddle_one_equally_and_noise_has_the_asked_spread() {
        let mut rng = SmallRng::seed_from_u64(5);
        let below = (0..2000)
            .filter(|_| factor_around_one(&mut rng, [0.7, 1.5]) < 1.0)
            .count();
        assert!((900..1100).contains(&below), "{below}");
        let mut v = vec![0.0f32; 20001];
        add_gaussian_noise(&mut v, &mut rng, 0.1);
        let (m, s) = mean_std(&v);
        assert!(m.abs() < 0.005 && (s - 0.1).abs() < 0.005, "{m} {s}");
        assert!(chance(&mut rng, 1.0) && !chance(&mut rng, 0.0));
    }
}
