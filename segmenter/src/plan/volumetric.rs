//! The 3D configuration of a plan: the patch `[depth, rows, cols]` (depth along the slice axis),
//! the strides of the network's five downsamplings and the batch, from the median shape, the
//! spacing and a voxel budget per step, as nnU-Net plans its `3d_fullres`.

use serde::{Deserialize, Serialize};

use crate::model::Strides3d;

/// Which network a run trains and predicts with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Configuration {
    /// The 2D network over slices (2.5D with context slices).
    #[default]
    #[serde(rename = "2d")]
    #[value(name = "2d")]
    Planar,
    /// The volumetric network over 3D patches.
    #[serde(rename = "3d")]
    #[value(name = "3d")]
    Volumetric,
}

impl Configuration {
    /// `"2d"` or `"3d"`, as the command line and `plan.json` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Configuration::Planar => "2d",
            Configuration::Volumetric => "3d",
        }
    }
}

/// The plan's 3D configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Volumetric {
    /// Patch `[depth, rows, cols]`: depth along the plan's slice axis, rows and cols as a slice's.
    pub patch_size: [usize; 3],
    /// Strides `[depth, rows, cols]` of the stem, the patch embedding and the three mergings.
    pub strides: Strides3d,
    /// Patches per training step.
    pub batch_size: usize,
    /// Median voxel spacing (mm) in the network's frame, `[depth, rows, cols]`.
    pub spacing: [f64; 3],
    /// Whether the depth spacing is over [`ANISOTROPY_RATIO`] times the in-plane spacing: then
    /// augmentation rotates within the slice plane only, and the plan prefers 2D.
    pub anisotropic: bool,
}

/// Spacing ratio past which a dataset is anisotropic (nnU-Net's threshold).
pub const ANISOTROPY_RATIO: f64 = 3.0;

/// Smallest side a feature map is pooled down to (nnU-Net: 4).
const MIN_FEATURE_SIDE: usize = 4;

/// Voxels of all patches of one training step that the plan aims at: what a 2-core CPU trains
/// the `tiny3d` network on in about as long as a 2D step of the `tiny` preset. A GPU run can
/// raise the batch in the config.
pub const VOXELS_PER_STEP: usize = 2 * 48 * 64 * 48;

/// Strides for a patch at a spacing: an axis is pooled at a level while its spacing is at most
/// twice the finest (so a thick axis waits until the others have coarsened to meet it) and its
/// side stays at least [`MIN_FEATURE_SIDE`] after pooling.
pub fn strides_for(patch: [usize; 3], spacing: [f64; 3]) -> Strides3d {
    let mut size = patch.map(|s| s as f64);
    let mut spacing = spacing;
    let mut strides = [[1; 3]; 5];
    for level in &mut strides {
        let finest = spacing.iter().copied().fold(f64::INFINITY, f64::min);
        for a in 0..3 {
            if spacing[a] <= 2.0 * finest + 1e-9 && size[a] / 2.0 >= MIN_FEATURE_SIDE as f64 {
                level[a] = 2;
                size[a] /= 2.0;
                spacing[a] *= 2.0;
            }
        }
    }
    strides
}

/// The product of the strides along each axis: patches must be multiples of it.
pub fn stride_products(strides: &Strides3d) -> [usize; 3] {
    let mut out = [1; 3];
    for level in strides {
        for a in 0..3 {
            out[a] *= level[a];
        }
    }
    out
}

/// The 3D configuration for volumes of these network-frame shapes `[depth, rows, cols]` and
/// spacings, within `voxels_per_step` (see [`VOXELS_PER_STEP`]).
///
/// Like nnU-Net: start from the median shape, shrink the side that is largest relative to the
/// median shape until two patches fit the budget, then give each axis the strides its spacing
/// allows and round the patch up to their multiples; the batch is what the budget then holds
/// (at least 2).
pub fn plan_volumetric(
    shapes: &[[usize; 3]],
    spacings: &[[f64; 3]],
    voxels_per_step: usize,
) -> Volumetric {
    let median = |values: Vec<f64>| {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(1.0)
    };
    let median_shape: [f64; 3] =
        std::array::from_fn(|a| median(shapes.iter().map(|s| s[a] as f64).collect()).max(1.0));
    let spacing: [f64; 3] = std::array::from_fn(|a| {
        median(spacings.iter().map(|s| s[a]).filter(|x| *x > 0.0).collect())
    });
    let mut patch = median_shape.map(|s| s.round().max(1.0) as usize);
    let fits = |patch: &[usize; 3]| 2 * patch.iter().product::<usize>() <= voxels_per_step.max(8);
    while !fits(&patch) {
        // The side largest relative to the median shape gives way first (nnU-Net's rule keeps the
        // patch's aspect close to the data's).
        let a = (0..3)
            .filter(|&a| patch[a] > MIN_FEATURE_SIDE)
            .max_by(|&a, &b| {
                (patch[a] as f64 / median_shape[a])
                    .total_cmp(&(patch[b] as f64 / median_shape[b]))
                    .then(patch[a].cmp(&patch[b]))
            });
        let Some(a) = a else { break };
        patch[a] = (patch[a] * 9 / 10).max(MIN_FEATURE_SIDE);
    }
    let strides = strides_for(patch, spacing);
    let products = stride_products(&strides);
    let patch: [usize; 3] = std::array::from_fn(|a| patch[a].div_ceil(products[a]) * products[a]);
    let voxels = patch.iter().product::<usize>().max(1);
    let in_plane = spacing[1].min(spacing[2]);
    Volumetric {
        patch_size: patch,
        strides,
        batch_size: (voxels_per_step / voxels).max(2),
        spacing,
        anisotropic: spacing[0] > ANISOTROPY_RATIO * in_plane,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::check_strides;

    #[test]
    fn an_isotropic_dataset_pools_every_axis_down_to_four() {
        // Hippocampus-like: about 36 x 50 x 35 voxels of 1 mm.
        let shapes = vec![[35, 50, 36], [36, 52, 34], [34, 49, 37]];
        let spacings = vec![[1.0; 3]; 3];
        let v = plan_volumetric(&shapes, &spacings, VOXELS_PER_STEP);
        assert!(!v.anisotropic);
        check_strides(&v.strides, v.patch_size).unwrap();
        let products = stride_products(&v.strides);
        for a in 0..3 {
            assert!(v.patch_size[a] >= [35, 50, 36][a], "{v:?}");
            assert!(v.patch_size[a] / products[a] >= MIN_FEATURE_SIDE, "{v:?}");
            assert!(
                v.patch_size[a] / products[a] < 2 * MIN_FEATURE_SIDE,
                "{v:?}"
            );
        }
        assert!(v.batch_size >= 2);
    }

    #[test]
    fn a_thick_axis_is_not_pooled_until_the_resolutions_meet() {
        // 5 mm slices, 0.8 mm in-plane: the in-plane axes must pool twice (0.8 -> 3.2 mm) before
        // depth may.
        let v = plan_volumetric(&[[24, 256, 256]], &[[5.0, 0.8, 0.8]], VOXELS_PER_STEP);
        assert!(v.anisotropic);
        assert_eq!(v.strides[0], [1, 2, 2], "{v:?}");
        assert_eq!(v.strides[1], [1, 2, 2], "{v:?}");
        assert_eq!(v.strides[2][0], 2, "{v:?}");
        check_strides(&v.strides, v.patch_size).unwrap();
        assert!(2 * v.patch_size.iter().product::<usize>() <= VOXELS_PER_STEP * 2);
    }

    #[test]
    fn thin_volumes_get_a_patch_that_pools_little_along_depth() {
        // Three slices: depth cannot be pooled at all and stays a small multiple of one.
        let v = plan_volumetric(&[[3, 64, 64]], &[[1.0, 1.0, 1.0]], VOXELS_PER_STEP);
        assert_eq!(stride_products(&v.strides)[0], 1, "{v:?}");
        assert_eq!(v.patch_size[0], 3);
        check_strides(&v.strides, v.patch_size).unwrap();
    }

    #[test]
    fn configurations_are_spelled_2d_and_3d() {
        assert_eq!(
            serde_json::to_string(&Configuration::Volumetric).unwrap(),
            "\"3d\""
        );
        let c: Configuration = serde_json::from_str("\"2d\"").unwrap();
        assert_eq!(c, Configuration::Planar);
    }
}
