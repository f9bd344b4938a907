//! The in-memory scan that every format reader returns and the dataset code works on.

use crate::header::NiftiHeader;

/// A scan: header, spatial shape [x, y, z], voxels as f32 in file order (x fastest), scl_slope/scl_inter applied (slope 0 means no scaling).
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// Header as read.
    pub header: NiftiHeader,
    /// Spatial shape [x, y, z].
    pub shape: [usize; 3],
    /// Intensities, x fastest.
    pub data: Vec<f32>,
}

impl Volume {
    /// Voxel size in mm (see [`NiftiHeader::spacing`]).
    pub fn spacing(&self) -> [f64; 3] {
        self.header.spacing()
    }

    /// Voxel -> world affine (see [`NiftiHeader::affine`]).
    pub fn affine(&self) -> [[f64; 4]; 4] {
        self.header.affine()
    }
}
