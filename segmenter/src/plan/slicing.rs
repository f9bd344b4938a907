//! How volumes are cut into 2D network inputs: the slice axis, the in-plane target spacing and
//! the patch size.

use crate::model::DOWNSAMPLING;

/// How volumes are cut into network inputs: derived from the cases' shapes and spacings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Slicing {
    /// Axis (canonical frame) the network slices along.
    pub slice_axis: usize,
    /// In-plane spacing (mm) every slice is resampled to.
    pub target_spacing: [f64; 2],
    /// Patch size `[rows, cols]`, multiples of the network's downsampling.
    pub patch_size: [usize; 2],
}

/// The slicing for volumes with these (canonical) shapes and spacings.
///
/// Slices along the axis with the coarsest spacing (ties: the last axis), as nnU-Net's 2D
/// configuration does, so each slice is sampled at the finest in-plane resolution; the in-plane
/// target spacing is the median of the cases' (nnU-Net's choice too); the patch covers the largest
/// slice once resampled, rounded up to the network's downsampling and capped.
pub fn slicing(frames: &[([usize; 3], [f64; 3])], max_patch_side: usize) -> Slicing {
    let mut spacing_sum = [0.0f64; 3];
    for (_, s) in frames {
        for a in 0..3 {
            spacing_sum[a] += s[a];
        }
    }
    let slice_axis = (0..3)
        .max_by(|&a, &b| spacing_sum[a].total_cmp(&spacing_sum[b]))
        .unwrap_or(2);
    let [r, c] = in_plane_axes(slice_axis);
    let median = |axis: usize| {
        let mut v: Vec<f64> = frames
            .iter()
            .map(|(_, s)| s[axis])
            .filter(|x| x.is_finite() && *x > 0.0)
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(1.0)
    };
    let target_spacing = [median(r), median(c)];
    let resampled: Vec<[usize; 3]> = frames
        .iter()
        .map(|&(shape, spacing)| network_shape(shape, spacing, slice_axis, Some(target_spacing)))
        .collect();
    Slicing {
        slice_axis,
        target_spacing,
        patch_size: patch_size_for(&resampled, slice_axis, max_patch_side),
    }
}

/// The patch that covers the largest slice of volumes of these network-frame shapes, rounded up
/// to the network's downsampling and capped at `max_patch_side`.
pub fn patch_size_for(
    shapes: &[[usize; 3]],
    slice_axis: usize,
    max_patch_side: usize,
) -> [usize; 2] {
    let [r, c] = in_plane_axes(slice_axis);
    let max_rows = shapes.iter().map(|shape| shape[r]).max().unwrap_or(1);
    let max_cols = shapes.iter().map(|shape| shape[c]).max().unwrap_or(1);
    let side = |n: usize| n.div_ceil(DOWNSAMPLING).max(1) * DOWNSAMPLING;
    let cap = (max_patch_side / DOWNSAMPLING).max(1) * DOWNSAMPLING;
    [side(max_rows).min(cap), side(max_cols).min(cap)]
}

/// Shape of a canonical volume once its slices are resampled to `target` in-plane spacing (the
/// slice axis keeps its length).
pub fn network_shape(
    shape: [usize; 3],
    spacing: [f64; 3],
    slice_axis: usize,
    target: Option<[f64; 2]>,
) -> [usize; 3] {
    let Some([tr, tc]) = target else {
        return shape;
    };
    let [r, c] = in_plane_axes(slice_axis);
    let mut full = spacing;
    full[r] = tr;
    full[c] = tc;
    segmenter_io::shape_for_spacing(shape, spacing, full)
}

/// The two in-plane axes (rows, cols) for a slice axis.
pub fn in_plane_axes(slice_axis: usize) -> [usize; 2] {
    match slice_axis {
        0 => [1, 2],
        1 => [0, 2],
        _ => [0, 1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slicing_picks_the_coarse_axis_the_median_spacing_and_a_patch_for_resampled_slices() {
        // Three cases, canonical frame: 3 mm slices along z; in-plane 0.8, 1.0 and 2.0 mm.
        let frames = [
            ([100, 90, 20], [0.8, 0.8, 3.0]),
            ([70, 60, 30], [1.0, 1.0, 3.0]),
            ([50, 45, 10], [2.0, 2.0, 3.0]),
        ];
        let s = slicing(&frames, 256);
        assert_eq!(s.slice_axis, 2);
        assert_eq!(s.target_spacing, [1.0, 1.0]);
        // At 1 mm the largest slice is the 2 mm case's: 100 x 90 voxels -> 128 x 96 patch.
        assert_eq!(
            network_shape([50, 45, 10], [2.0, 2.0, 3.0], 2, Some([1.0, 1.0])),
            [100, 90, 10]
        );
        assert_eq!(
            network_shape([100, 90, 20], [0.8, 0.8, 3.0], 2, Some([1.0, 1.0])),
            [80, 72, 20]
        );
        assert_eq!(s.patch_size, [128, 96]);
        assert_eq!(
            network_shape([7, 8, 9], [2.0, 2.0, 2.0], 2, None),
            [7, 8, 9]
        );
    }
}
