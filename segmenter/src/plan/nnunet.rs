//! nnU-Net v2's way of feeding a 2D network, for runs imported from an nnU-Net result
//! (`segmenter import swin-umamba`): which file axes become the slice, the rows and the columns,
//! the crop to the non-zero region, and normalisation inside that region.

use segmenter_io::geometry::Orientation;
use serde::{Deserialize, Serialize};

/// How nnU-Net v2's 2D predictor brings a case to its network, beyond what every plan says.
///
/// nnU-Net reads a scan as SimpleITK's array `A[z, y, x]` (NIfTI voxel `(i, j, k)` is
/// `A[k, j, i]`), transposes it by `transpose_forward` into `B`, and its 2D network sees
/// `B[d, :, :]` for every `d`, rows along `B`'s axis 1. The network frame of such a run is `B`
/// with its axes renamed so that the slices run along frame axis 2 and the rows along frame
/// axis 0, which the sliding window already handles (see [`NnUnetFrame::orientation`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NnUnetFrame {
    /// The plans' `transpose_forward` (a permutation of SimpleITK's axes `[z, y, x]`).
    pub transpose_forward: [usize; 3],
    /// Crop every case to the bounding box of its non-zero voxels (any channel) before
    /// normalising and resampling, as nnU-Net's `DefaultPreprocessor` does; outside the box the
    /// prediction is background with probability 1.
    pub crop_to_nonzero: bool,
    /// Per channel: z-score over the non-zero region only (holes filled) and leave the rest as it
    /// is (the plans' `use_mask_for_norm`).
    pub use_mask_for_norm: Vec<bool>,
    /// The plans' `force_separate_z` for resampling images and logits: `None` lets the spacing
    /// decide (anisotropy over 3), as nnU-Net's `resample_data_or_seg_to_shape` does.
    #[serde(default)]
    pub force_separate_z: Option<bool>,
}

impl NnUnetFrame {
    /// The permutation from a file's voxel axes to the network frame: frame axes 0, 1, 2 are
    /// `B`'s axes 1, 2, 0 (rows, columns, slices), and SimpleITK axis `s` is file axis `2 - s`.
    pub fn orientation(&self) -> Orientation {
        let t = self.transpose_forward;
        Orientation {
            perm: [2 - t[1], 2 - t[2], 2 - t[0]],
            flip: [false; 3],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_puts_simpleitk_rows_first_and_slices_last() {
        let frame = |t| NnUnetFrame {
            transpose_forward: t,
            crop_to_nonzero: true,
            use_mask_for_norm: vec![false],
            force_separate_z: None,
        };
        // No transpose: slices along z (file axis 2), rows along y (file axis 1), columns x.
        assert_eq!(frame([0, 1, 2]).orientation().perm, [1, 0, 2]);
        // nnU-Net's transpose for data whose coarse axis is x: B = A.transpose(2, 0, 1).
        assert_eq!(frame([2, 0, 1]).orientation().perm, [2, 1, 0]);
        // A volume [x=2, y=3, z=4] seen as [rows=y, cols=x, slices=z]: B[z, y, x] at (r, c, s).
        let o = frame([0, 1, 2]).orientation();
        let data: Vec<u32> = (0..24).collect();
        let seen = o.to_canonical(&data, [2, 3, 4]);
        let (x, y, z) = (1, 2, 3);
        assert_eq!(seen[y + 3 * (x + 2 * z)], data[x + 2 * (y + 3 * z)]);
    }
}
