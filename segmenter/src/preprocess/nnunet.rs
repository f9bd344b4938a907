//! A case brought to an imported nnU-Net network the way nnU-Net v2's `DefaultPreprocessor` does
//! it: axes transposed (see [`NnUnetFrame`]), cropped to the non-zero region, normalised, and only
//! then resampled to the plan's in-plane spacing.

use segmenter_io::LoadedCase;

use super::frame::{Crop, NetworkCase};
use crate::plan::{NnUnetFrame, Normalization, Plan};

/// The case in the network's frame as nnU-Net's predictor feeds it, normalised.
pub fn nnunet_case(plan: &Plan, nnunet: &NnUnetFrame, case: &LoadedCase) -> NetworkCase {
    let orientation = nnunet.orientation();
    let file_shape = case.shape;
    let full_shape = orientation.canonical_shape(file_shape);
    let spacing = orientation.canonical_spacing(case.header.spacing());
    let mut channels: Vec<Vec<f32>> = case
        .channels
        .iter()
        .map(|v| orientation.to_canonical(&v.data, file_shape))
        .collect();
    let mut label = case
        .label
        .as_ref()
        .map(|l| orientation.to_canonical(l, file_shape));

    let (start, shape) = if nnunet.crop_to_nonzero {
        nonzero_box(&channels, full_shape)
    } else {
        ([0; 3], full_shape)
    };
    if shape != full_shape {
        for values in &mut channels {
            *values = crop(values, full_shape, start, shape);
        }
        if let Some(l) = &mut label {
            *l = crop(l, full_shape, start, shape);
        }
    }

    // nnU-Net normalises before resampling; z-score "with mask" looks only inside the non-zero
    // region (holes filled) and leaves the rest untouched.
    let mask = nnunet
        .use_mask_for_norm
        .iter()
        .any(|&m| m)
        .then(|| fill_holes(&nonzero_mask(&channels), shape));
    for (ch, values) in channels.iter_mut().enumerate() {
        let norm = &plan.normalization[ch];
        match (&mask, nnunet.use_mask_for_norm.get(ch), norm) {
            (Some(mask), Some(true), Normalization::ZScore) => zscore_inside(values, mask),
            _ => norm.apply(values),
        }
    }

    let target = match plan.target_spacing {
        Some(t) => nnunet_shape(shape, spacing, t),
        None => shape,
    };
    let mut out_spacing = spacing;
    if target != shape {
        let target_spacing =
            std::array::from_fn(|a| spacing[a] * shape[a] as f64 / target[a] as f64);
        let separate = separate_axis(nnunet.force_separate_z, spacing, target_spacing);
        for values in &mut channels {
            *values = resize_like_nnunet(values, shape, target, separate);
        }
        if let Some(l) = &mut label {
            *l = segmenter_io::resample_labels(l, shape, target);
        }
        out_spacing = target_spacing;
    }
    NetworkCase {
        orientation,
        file_shape,
        canonical_shape: shape,
        shape: target,
        spacing: out_spacing,
        channels,
        label,
        crop: (shape != full_shape).then_some(Crop { start, full_shape }),
    }
}

/// nnU-Net's `compute_new_shape` for a 2D configuration in the network frame (rows, columns,
/// slices): each in-plane axis becomes `round(spacing / target * n)` with Python's rounding (ties
/// to even), the slices keep their number.
fn nnunet_shape(shape: [usize; 3], spacing: [f64; 3], [tr, tc]: [f64; 2]) -> [usize; 3] {
    let scaled =
        |n: usize, sp: f64, t: f64| ((sp / t * n as f64).round_ties_even() as usize).max(1);
    [
        scaled(shape[0], spacing[0], tr),
        scaled(shape[1], spacing[1], tc),
        shape[2],
    ]
}

/// The frame axis nnU-Net resamples separately (with `order_z` 0), or none: its
/// `determine_do_sep_z_and_axis` on spacings in the network frame. An axis is separate when the
/// spacing's anisotropy exceeds 3 and exactly one axis has the coarsest spacing.
fn separate_axis(force: Option<bool>, current: [f64; 3], new: [f64; 3]) -> Option<usize> {
    let anisotropic = |s: [f64; 3]| {
        let (max, min) = (
            s.iter().copied().fold(f64::MIN, f64::max),
            s.iter().copied().fold(f64::MAX, f64::min),
        );
        max / min > 3.0
    };
    let lowres = |s: [f64; 3]| {
        let max = s.iter().copied().fold(f64::MIN, f64::max);
        let axes: Vec<usize> = (0..3).filter(|&a| max / s[a] == 1.0).collect();
        (axes.len() == 1).then(|| axes[0])
    };
    match force {
        Some(true) => lowres(current),
        Some(false) => None,
        None if anisotropic(current) => lowres(current),
        None if anisotropic(new) => lowres(new),
        None => None,
    }
}

/// One channel resampled from `shape` to `target` as nnU-Net's `resample_data_or_seg` does for
/// images (scikit-image's `resize`, order 3, edge mode, clipped to the input's range): the whole
/// channel at once, or slab by slab across the `separate` axis, which then takes the nearest
/// slab.
fn resize_like_nnunet(
    values: &[f32],
    shape: [usize; 3],
    target: [usize; 3],
    separate: Option<usize>,
) -> Vec<f32> {
    let Some(axis) = separate else {
        let mut out = segmenter_io::resample_bspline3(values, shape, target);
        let (lo, hi) = range(values.iter());
        out.iter_mut().for_each(|v| *v = v.clamp(lo, hi));
        return out;
    };
    // Along `axis` the spline sees each slab alone: resample the other axes, keeping this one.
    let mut within = target;
    within[axis] = shape[axis];
    let mut out = segmenter_io::resample_bspline3(values, shape, within);
    for slab in 0..shape[axis] {
        let (lo, hi) = range(slab_indices(shape, axis, slab).map(|v| &values[v]));
        for v in slab_indices(within, axis, slab) {
            out[v] = out[v].clamp(lo, hi);
        }
    }
    if target[axis] == shape[axis] {
        return out;
    }
    // order_z 0: SciPy's nearest sample, floor(x + 0.5) of the same grid mapping, edges clamped.
    let (n, m) = (shape[axis], target[axis]);
    let mut result = vec![0.0f32; target.iter().product()];
    for o in 0..m {
        let x = (o as f64 + 0.5) * n as f64 / m as f64 - 0.5;
        let from = ((x + 0.5).floor().max(0.0) as usize).min(n - 1);
        for (dst, src) in slab_indices(target, axis, o).zip(slab_indices(within, axis, from)) {
            result[dst] = out[src];
        }
    }
    result
}

/// Smallest and largest value.
fn range<'a>(values: impl Iterator<Item = &'a f32>) -> (f32, f32) {
    values.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
        (lo.min(v), hi.max(v))
    })
}

/// Indices (x fastest) of the voxels of an x-fastest volume with `axis` fixed at `at`, in the
/// same order for any length of `axis`.
fn slab_indices(shape: [usize; 3], axis: usize, at: usize) -> impl Iterator<Item = usize> {
    let [nx, ny, nz] = shape;
    let mut ranges = [0..nx, 0..ny, 0..nz];
    ranges[axis] = at..at + 1;
    let [rx, ry, rz] = ranges;
    rz.flat_map(move |z| {
        let (rx, ry) = (rx.clone(), ry.clone());
        ry.flat_map(move |y| rx.clone().map(move |x| x + nx * (y + ny * z)))
    })
}

/// Voxels where any channel is non-zero (x-fastest, like the channels).
fn nonzero_mask(channels: &[Vec<f32>]) -> Vec<bool> {
    let n = channels.first().map_or(0, Vec::len);
    (0..n)
        .map(|v| channels.iter().any(|c| c[v] != 0.0))
        .collect()
}

/// Start and shape of the bounding box of the voxels where any channel is non-zero; the whole
/// volume when none is (nnU-Net would fail on such a case; predicting it whole is kinder).
fn nonzero_box(channels: &[Vec<f32>], shape: [usize; 3]) -> ([usize; 3], [usize; 3]) {
    let mut lo = shape;
    let mut hi = [0usize; 3];
    let [nx, ny, _] = shape;
    for (v, inside) in nonzero_mask(channels).into_iter().enumerate() {
        if inside {
            let p = [v % nx, v / nx % ny, v / (nx * ny)];
            for a in 0..3 {
                lo[a] = lo[a].min(p[a]);
                hi[a] = hi[a].max(p[a] + 1);
            }
        }
    }
    if (0..3).any(|a| lo[a] >= hi[a]) {
        return ([0; 3], shape);
    }
    (lo, std::array::from_fn(|a| hi[a] - lo[a]))
}

/// The box `start .. start + shape` of an x-fastest volume of shape `full`.
fn crop<T: Copy>(values: &[T], full: [usize; 3], start: [usize; 3], shape: [usize; 3]) -> Vec<T> {
    let mut out = Vec::with_capacity(shape.iter().product());
    for z in 0..shape[2] {
        for y in 0..shape[1] {
            let row = start[0] + full[0] * (start[1] + y + full[1] * (start[2] + z));
            out.extend_from_slice(&values[row..row + shape[0]]);
        }
    }
    out
}

/// The mask with its holes filled: background not connected (6-neighbourhood) to the volume's
/// border becomes foreground, as `scipy.ndimage.binary_fill_holes` does.
fn fill_holes(mask: &[bool], shape: [usize; 3]) -> Vec<bool> {
    let [nx, ny, nz] = shape;
    let mut outside = vec![false; mask.len()];
    let mut stack = Vec::new();
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let border =
                    x == 0 || y == 0 || z == 0 || x + 1 == nx || y + 1 == ny || z + 1 == nz;
                let v = x + nx * (y + ny * z);
                if border && !mask[v] {
                    outside[v] = true;
                    stack.push(v);
                }
            }
        }
    }
    while let Some(v) = stack.pop() {
        let (x, y, z) = (v % nx, v / nx % ny, v / (nx * ny));
        let mut visit = |w: usize| {
            if !mask[w] && !outside[w] {
                outside[w] = true;
                stack.push(w);
            }
        };
        if x > 0 {
            visit(v - 1);
        }
        if x + 1 < nx {
            visit(v + 1);
        }
        if y > 0 {
            visit(v - nx);
        }
        if y + 1 < ny {
            visit(v + nx);
        }
        if z > 0 {
            visit(v - nx * ny);
        }
        if z + 1 < nz {
            visit(v + nx * ny);
        }
    }
    outside.into_iter().map(|o| !o).collect()
}

/// Z-score of the voxels inside `mask` with their own mean and standard deviation; the others
/// keep their values (nnU-Net v2's `ZScoreNormalization` with `use_mask_for_norm`).
fn zscore_inside(values: &mut [f32], mask: &[bool]) {
    let inside: Vec<f64> = values
        .iter()
        .zip(mask)
        .filter(|(_, &m)| m)
        .map(|(&v, _)| v as f64)
        .collect();
    if inside.is_empty() {
        return;
    }
    let n = inside.len() as f64;
    let mean = inside.iter().sum::<f64>() / n;
    let std = (inside.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    let std = std.max(1e-8);
    for (v, &m) in values.iter_mut().zip(mask) {
        if m {
            *v = ((*v as f64 - mean) / std) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::uncrop;
    use super::*;

    #[test]
    fn the_nonzero_box_crops_and_uncrops_exactly() {
        let shape = [5, 4, 3];
        let mut values = vec![0.0f32; 60];
        let at = |x: usize, y: usize, z: usize| x + 5 * (y + 4 * z);
        values[at(1, 1, 1)] = 2.0;
        values[at(3, 2, 2)] = -1.0;
        let (start, cropped) = nonzero_box(std::slice::from_ref(&values), shape);
        assert_eq!((start, cropped), ([1, 1, 1], [3, 2, 2]));
        let inner = crop(&values, shape, start, cropped);
        assert_eq!(inner.len(), 12);
        let crop_info = Crop {
            start,
            full_shape: shape,
        };
        assert_eq!(uncrop(&inner, cropped, &crop_info, 0.0), values);
        // Nothing non-zero: the whole volume.
        assert_eq!(nonzero_box(&[vec![0.0; 60]], shape), ([0; 3], shape));
    }

    #[test]
    fn holes_enclosed_in_3d_are_filled_and_open_pockets_are_not() {
        // A 5x5x5 shell around one voxel: the centre is a hole.
        let shape = [5, 5, 5];
        let at = |x: usize, y: usize, z: usize| x + 5 * (y + 5 * z);
        let mut mask = vec![false; 125];
        for z in 1..4 {
            for y in 1..4 {
                for x in 1..4 {
                    mask[at(x, y, z)] = true;
                }
            }
        }
        mask[at(2, 2, 2)] = false;
        let filled = fill_holes(&mask, shape);
        assert!(filled[at(2, 2, 2)]);
        assert!(!filled[at(0, 0, 0)]);
        // Open the shell towards the border: the pocket is no longer a hole.
        mask[at(2, 2, 1)] = false;
        let filled = fill_holes(&mask, shape);
        assert!(!filled[at(2, 2, 2)]);
    }

    #[test]
    fn masked_zscore_leaves_the_outside_alone() {
        let mut v = vec![1.0, 3.0, 100.0];
        zscore_inside(&mut v, &[true, true, false]);
        assert_eq!(v, vec![-1.0, 1.0, 100.0]);
    }
}
