//! A volume viewed as a stack of 2D slices along one axis.

use crate::plan::in_plane_axes;

/// A 3D array in NIfTI file order (x fastest) viewed as a stack of 2D slices along one axis.
#[derive(Clone, Copy, Debug)]
pub struct SliceGeometry {
    /// Volume shape `[x, y, z]`.
    pub shape: [usize; 3],
    /// Axis the slices are taken along.
    pub slice_axis: usize,
}

impl SliceGeometry {
    /// Number of slices.
    pub fn count(&self) -> usize {
        self.shape[self.slice_axis]
    }

    /// `[rows, cols]` of each slice.
    pub fn slice_shape(&self) -> [usize; 2] {
        let [r, c] = in_plane_axes(self.slice_axis);
        [self.shape[r], self.shape[c]]
    }

    fn index(&self, slice: usize, row: usize, col: usize) -> usize {
        let [r, c] = in_plane_axes(self.slice_axis);
        let mut p = [0usize; 3];
        p[self.slice_axis] = slice;
        p[r] = row;
        p[c] = col;
        p[0] + self.shape[0] * (p[1] + self.shape[1] * p[2])
    }

    /// The slices `slice - k ..= slice + k`, those beyond either end of the stack replaced by the
    /// end slice, the nearest thing the scan holds to what lies past its end.
    pub fn context(&self, slice: usize, k: usize) -> impl Iterator<Item = usize> {
        let last = self.count().saturating_sub(1);
        (0..=2 * k).map(move |i| (slice + i).saturating_sub(k).min(last))
    }

    /// Copies slice `slice` of `volume` into a row-major `[rows, cols]` buffer.
    pub fn extract<T: Copy>(&self, volume: &[T], slice: usize) -> Vec<T> {
        let [rows, cols] = self.slice_shape();
        let mut out = Vec::with_capacity(rows * cols);
        for row in 0..rows {
            for col in 0..cols {
                out.push(volume[self.index(slice, row, col)]);
            }
        }
        out
    }

    /// Writes a row-major `[rows, cols]` buffer back into slice `slice` of `volume`.
    pub fn insert<T: Copy>(&self, volume: &mut [T], slice: usize, values: &[T]) {
        let [rows, cols] = self.slice_shape();
        for row in 0..rows {
            for col in 0..cols {
                volume[self.index(slice, row, col)] = values[row * cols + col];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_slices_repeat_the_end_slices_past_the_ends() {
        let g = SliceGeometry {
            shape: [3, 4, 5],
            slice_axis: 2,
        };
        let ctx = |s, k| g.context(s, k).collect::<Vec<_>>();
        assert_eq!(ctx(2, 0), [2]);
        assert_eq!(ctx(2, 1), [1, 2, 3]);
        assert_eq!(ctx(0, 2), [0, 0, 0, 1, 2]);
        assert_eq!(ctx(4, 2), [2, 3, 4, 4, 4]);
        assert_eq!(ctx(1, 3), [0, 0, 0, 1, 2, 3, 4]);
    }

    #[test]
    fn slices_round_trip_along_every_axis() {
        let shape = [3, 4, 5];
        let volume: Vec<u32> = (0..60).collect();
        for axis in 0..3 {
            let geometry = SliceGeometry {
                shape,
                slice_axis: axis,
            };
            let mut rebuilt = vec![0u32; 60];
            for s in 0..geometry.count() {
                let slice = geometry.extract(&volume, s);
                assert_eq!(
                    slice.len(),
                    geometry.slice_shape()[0] * geometry.slice_shape()[1]
                );
                geometry.insert(&mut rebuilt, s, &slice);
            }
            assert_eq!(rebuilt, volume, "axis {axis}");
        }
        // Axis 2, slice 1, row 2 (x), col 3 (y): voxel x=2, y=3, z=1.
        let g = SliceGeometry {
            shape,
            slice_axis: 2,
        };
        assert_eq!(g.extract(&volume, 1)[2 * 4 + 3], (2 + 3 * (3 + 4)) as u32);
    }
}
