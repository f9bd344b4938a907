//! The NIfTI-1 header, which every format's [`Volume`](crate::Volume) carries as its geometry (a 2D
//! image gets a diagonal one), so that a label map can be written back with its input's geometry
//! whatever the input was.
//!
//! Parsed here rather than by a crate so that every size is checked before a byte is allocated, and
//! so that the 348 raw bytes of an input can be written back unchanged for its label map.

use std::path::Path;

use crate::error::{IoError, Result};

/// Largest voxel count a header may claim (2^31); bigger files are refused before allocating.
pub const MAX_VOXELS: u64 = 1 << 31;

/// Size of a NIfTI-1 header.
pub(crate) const HEADER_SIZE: usize = 348;
/// Where we put voxel data when writing: header plus the 4-byte "no extensions" flag.
pub(crate) const DATA_OFFSET: usize = 352;
const MAGIC_SINGLE: &[u8; 4] = b"n+1\0";
const MAGIC_PAIR: &[u8; 4] = b"ni1\0";

// Byte offsets of the fields we parse, from the NIfTI-1 standard (nifti1.h).
const OFF_DIM: usize = 40;
const OFF_DATATYPE: usize = 70;
const OFF_BITPIX: usize = 72;
const OFF_PIXDIM: usize = 76;
const OFF_VOX_OFFSET: usize = 108;
const OFF_SCL_SLOPE: usize = 112;
const OFF_SCL_INTER: usize = 116;
const OFF_XYZT_UNITS: usize = 123;
const OFF_QFORM_CODE: usize = 252;
const OFF_SFORM_CODE: usize = 254;
const OFF_QUATERN: usize = 256;
const OFF_QOFFSET: usize = 268;
const OFF_SROW: usize = 280;
const OFF_MAGIC: usize = 344;

/// NIfTI-1 header, all fields parsed; keeps the raw 348 bytes and endianness so writing reproduces it.
#[derive(Clone, PartialEq)]
pub struct NiftiHeader {
    /// `dim[0]` is the number of dimensions, `dim[1..=dim[0]]` their sizes.
    pub dim: [i16; 8],
    /// `pixdim[0]` is qfac (sign of the third axis in the qform), `pixdim[1..4]` the voxel size in mm.
    pub pixdim: [f32; 8],
    /// NIfTI datatype code (2 = uint8, 16 = float32, ...).
    pub datatype: i16,
    /// Bits per voxel.
    pub bitpix: i16,
    /// Byte offset of the voxel data in the (uncompressed) file.
    pub vox_offset: f32,
    /// Intensity scale; 0 means no scaling.
    pub scl_slope: f32,
    /// Intensity offset, used only when scl_slope is non-zero.
    pub scl_inter: f32,
    /// Meaning of the quaternion transform (0 = unused).
    pub qform_code: i16,
    /// Meaning of the srow transform (0 = unused).
    pub sform_code: i16,
    /// Quaternion parameters b, c, d.
    pub quatern: [f32; 3],
    /// Quaternion transform offset x, y, z (mm).
    pub qoffset: [f32; 3],
    /// Rows of the sform affine (voxel -> world).
    pub srow: [[f32; 4]; 3],
    /// The header as read (or built); fields not listed above are written back from here.
    pub raw: [u8; HEADER_SIZE],
    /// Byte order of the file the header came from; writing keeps it (flipping it does not byte-swap unparsed fields in raw).
    pub big_endian: bool,
}

impl std::fmt::Debug for NiftiHeader {
    // Hand-written so that test failures are not buried under 348 raw bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NiftiHeader")
            .field("dim", &self.dim)
            .field("pixdim", &self.pixdim)
            .field("datatype", &self.datatype)
            .field("bitpix", &self.bitpix)
            .field("vox_offset", &self.vox_offset)
            .field("scl_slope", &self.scl_slope)
            .field("scl_inter", &self.scl_inter)
            .field("qform_code", &self.qform_code)
            .field("sform_code", &self.sform_code)
            .field("quatern", &self.quatern)
            .field("qoffset", &self.qoffset)
            .field("srow", &self.srow)
            .field("big_endian", &self.big_endian)
            .finish_non_exhaustive()
    }
}

/// Reads fixed-size fields out of the raw header in the file's byte order.
struct Fields<'a> {
    raw: &'a [u8; HEADER_SIZE],
    big: bool,
}

impl Fields<'_> {
    /// The `N` bytes at `off` in little-endian order, whatever the file's order.
    fn le<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.raw[off..off + N]);
        if self.big {
            a.reverse();
        }
        a
    }
    fn i16(&self, off: usize) -> i16 {
        i16::from_le_bytes(self.le(off))
    }
    fn f32(&self, off: usize) -> f32 {
        f32::from_le_bytes(self.le(off))
    }
    fn f32s<const N: usize>(&self, off: usize) -> [f32; N] {
        std::array::from_fn(|i| self.f32(off + 4 * i))
    }
}

/// Writes fixed-size fields into a raw header in a given byte order.
struct FieldsMut<'a> {
    raw: &'a mut [u8; HEADER_SIZE],
    big: bool,
}

impl FieldsMut<'_> {
    /// Stores a number given as little-endian bytes at `off`, in the header's byte order.
    fn put<const N: usize>(&mut self, off: usize, mut le: [u8; N]) {
        if self.big {
            le.reverse();
        }
        self.raw[off..off + N].copy_from_slice(&le);
    }
    fn i16(&mut self, off: usize, v: i16) {
        self.put(off, v.to_le_bytes());
    }
    fn i32(&mut self, off: usize, v: i32) {
        self.put(off, v.to_le_bytes());
    }
    fn f32(&mut self, off: usize, v: f32) {
        self.put(off, v.to_le_bytes());
    }
    fn f32s(&mut self, off: usize, v: &[f32]) {
        for (i, x) in v.iter().enumerate() {
            self.f32(off + 4 * i, *x);
        }
    }
}

impl NiftiHeader {
    /// A little-endian float32 header for a 3D volume with the given spacing and a diagonal affine;
    /// None if an axis is 0 or larger than NIfTI-1's i16 limit.
    pub fn new(shape: [usize; 3], spacing: [f64; 3]) -> Option<Self> {
        let mut dim = [3i16, 1, 1, 1, 1, 1, 1, 1];
        for (d, &s) in dim[1..4].iter_mut().zip(&shape) {
            *d = i16::try_from(s).ok().filter(|&v| v > 0)?;
        }
        let sp = spacing.map(|s| s as f32);
        let mut raw = [0u8; HEADER_SIZE];
        // mm and seconds: viewers use xyzt_units to label the spacing.
        raw[OFF_XYZT_UNITS] = 2 | 8;
        let header = NiftiHeader {
            dim,
            pixdim: [1.0, sp[0], sp[1], sp[2], 1.0, 1.0, 1.0, 1.0],
            datatype: 16,
            bitpix: 32,
            vox_offset: DATA_OFFSET as f32,
            scl_slope: 1.0,
            scl_inter: 0.0,
            qform_code: 1,
            sform_code: 1,
            quatern: [0.0; 3],
            qoffset: [0.0; 3],
            srow: [
                [sp[0], 0.0, 0.0, 0.0],
                [0.0, sp[1], 0.0, 0.0],
                [0.0, 0.0, sp[2], 0.0],
            ],
            raw,
            big_endian: false,
        };
        Some(Self {
            raw: header.to_bytes(),
            ..header
        })
    }

    /// A float32 header for a volume on the grid of `affine` (voxel -> RAS+ mm): sform and qform both
    /// set (scanner coordinates, code 1), as dcm2niix writes them, so that tools reading either agree;
    /// None if an axis is 0 or too long for NIfTI-1.
    pub fn with_affine(shape: [usize; 3], affine: &[[f64; 4]; 4]) -> Option<Self> {
        let column = |j: usize| [affine[0][j], affine[1][j], affine[2][j]];
        let norm = |v: [f64; 3]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let spacing = [0, 1, 2].map(|j| norm(column(j)));
        if spacing.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return None;
        }
        let mut header = Self::new(shape, spacing)?;
        for (row, src) in header.srow.iter_mut().zip(affine) {
            *row = src.map(|v| v as f32);
        }
        let unit = [0, 1, 2].map(|j| column(j).map(|v| v / spacing[j]));
        let (quatern, qfac) = quaternion_of(unit);
        header.quatern = quatern.map(|v| v as f32);
        header.pixdim[0] = qfac as f32;
        header.qoffset = [affine[0][3], affine[1][3], affine[2][3]].map(|v| v as f32);
        header.raw = header.to_bytes();
        Some(header)
    }

    /// Spatial dims [x, y, z] (1 for axes beyond `dim[0]`).
    pub fn shape(&self) -> [usize; 3] {
        let ndim = self.dim[0].clamp(0, 7) as usize;
        std::array::from_fn(|i| {
            if i < ndim {
                usize::try_from(self.dim[i + 1]).unwrap_or(1).max(1)
            } else {
                1
            }
        })
    }

    /// Voxel size in mm: |pixdim[1..4]|; 0 or non-finite becomes 1 so that callers never divide by zero
    /// (2D files often leave `pixdim[3]` at 0).
    pub fn spacing(&self) -> [f64; 3] {
        std::array::from_fn(|i| {
            let s = f64::from(self.pixdim[i + 1]).abs();
            if s.is_finite() && s > 0.0 {
                s
            } else {
                1.0
            }
        })
    }

    /// Voxel -> world (RAS+ mm): sform if sform_code > 0, else qform if qform_code > 0, else diag(spacing).
    pub fn affine(&self) -> [[f64; 4]; 4] {
        let last = [0.0, 0.0, 0.0, 1.0];
        if self.sform_code > 0 {
            let r = |i: usize| self.srow[i].map(f64::from);
            return [r(0), r(1), r(2), last];
        }
        if self.qform_code > 0 {
            let [mut b, mut c, mut d] = self.quatern.map(f64::from);
            let s = b * b + c * c + d * d;
            // nifti1_io: a is implied by unit length; rounding can push the sum just above 1, in which case
            // the rotation is 180 degrees (a = 0) and b, c, d are renormalised.
            let a = if s < 1.0 {
                (1.0 - s).sqrt()
            } else {
                let n = s.sqrt();
                b /= n;
                c /= n;
                d /= n;
                0.0
            };
            let qfac = if self.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
            let px = f64::from(self.pixdim[1]);
            let py = f64::from(self.pixdim[2]);
            let pz = f64::from(self.pixdim[3]) * qfac;
            let r = [
                [
                    a * a + b * b - c * c - d * d,
                    2.0 * (b * c - a * d),
                    2.0 * (b * d + a * c),
                ],
                [
                    2.0 * (b * c + a * d),
                    a * a + c * c - b * b - d * d,
                    2.0 * (c * d - a * b),
                ],
                [
                    2.0 * (b * d - a * c),
                    2.0 * (c * d + a * b),
                    a * a + d * d - b * b - c * c,
                ],
            ];
            let o = self.qoffset.map(f64::from);
            let row = |i: usize| [r[i][0] * px, r[i][1] * py, r[i][2] * pz, o[i]];
            return [row(0), row(1), row(2), last];
        }
        let s = self.spacing();
        [
            [s[0], 0.0, 0.0, 0.0],
            [0.0, s[1], 0.0, 0.0],
            [0.0, 0.0, s[2], 0.0],
            last,
        ]
    }

    /// Header bytes with the parsed fields written over `raw`, sizeof_hdr and the single-file magic set.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut raw = self.raw;
        let mut w = FieldsMut {
            raw: &mut raw,
            big: self.big_endian,
        };
        w.i32(0, HEADER_SIZE as i32);
        for (i, d) in self.dim.iter().enumerate() {
            w.i16(OFF_DIM + 2 * i, *d);
        }
        w.i16(OFF_DATATYPE, self.datatype);
        w.i16(OFF_BITPIX, self.bitpix);
        w.f32s(OFF_PIXDIM, &self.pixdim);
        w.f32(OFF_VOX_OFFSET, self.vox_offset);
        w.f32(OFF_SCL_SLOPE, self.scl_slope);
        w.f32(OFF_SCL_INTER, self.scl_inter);
        w.i16(OFF_QFORM_CODE, self.qform_code);
        w.i16(OFF_SFORM_CODE, self.sform_code);
        w.f32s(OFF_QUATERN, &self.quatern);
        w.f32s(OFF_QOFFSET, &self.qoffset);
        for (i, row) in self.srow.iter().enumerate() {
            w.f32s(OFF_SROW + 16 * i, row);
        }
        raw[OFF_MAGIC..OFF_MAGIC + 4].copy_from_slice(MAGIC_SINGLE);
        raw
    }

    /// Parses and checks sizeof_hdr and magic; dimensions are checked separately by `voxel_count`.
    pub(crate) fn parse(raw: [u8; HEADER_SIZE], path: &Path) -> Result<Self> {
        let mut first = [0u8; 4];
        first.copy_from_slice(&raw[0..4]);
        let (le, be) = (i32::from_le_bytes(first), i32::from_be_bytes(first));
        // sizeof_hdr is the only field whose value is fixed, which is how NIfTI-1 signals byte order.
        let big = if le == HEADER_SIZE as i32 {
            false
        } else if be == HEADER_SIZE as i32 {
            true
        } else if le == 540 || be == 540 {
            return Err(IoError::Unsupported {
                path: path.to_path_buf(),
                reason: "NIfTI-2 files (sizeof_hdr 540) are not supported".into(),
            });
        } else {
            return Err(invalid(
                path,
                format!("sizeof_hdr is {le}, expected 348 (not a NIfTI-1 file?)"),
            ));
        };
        let magic = &raw[OFF_MAGIC..OFF_MAGIC + 4];
        if magic == MAGIC_PAIR {
            return Err(IoError::Unsupported {
                path: path.to_path_buf(),
                reason: "magic \"ni1\": .hdr/.img pairs are not supported; convert to a single .nii file"
                    .into(),
            });
        }
        if magic != MAGIC_SINGLE {
            return Err(invalid(
                path,
                format!(
                    "bad magic {:?}, expected \"n+1\"",
                    String::from_utf8_lossy(magic)
                ),
            ));
        }
        let f = Fields { raw: &raw, big };
        let header = NiftiHeader {
            dim: std::array::from_fn(|i| f.i16(OFF_DIM + 2 * i)),
            pixdim: f.f32s(OFF_PIXDIM),
            datatype: f.i16(OFF_DATATYPE),
            bitpix: f.i16(OFF_BITPIX),
            vox_offset: f.f32(OFF_VOX_OFFSET),
            scl_slope: f.f32(OFF_SCL_SLOPE),
            scl_inter: f.f32(OFF_SCL_INTER),
            qform_code: f.i16(OFF_QFORM_CODE),
            sform_code: f.i16(OFF_SFORM_CODE),
            quatern: f.f32s(OFF_QUATERN),
            qoffset: f.f32s(OFF_QOFFSET),
            srow: std::array::from_fn(|i| f.f32s(OFF_SROW + 16 * i)),
            raw,
            big_endian: big,
        };
        Ok(header)
    }

    /// Number of voxels, after checking dim[0], positive sizes, the voxel limit and that extra dims are 1.
    pub(crate) fn voxel_count(&self, path: &Path) -> Result<usize> {
        let count = self.element_count(path)?;
        let ndim = self.dim[0] as usize;
        if ndim >= 4 && self.dim[4] > 1 {
            return Err(IoError::NotThreeD {
                path: path.to_path_buf(),
                detail: format!("4D with {} time points", self.dim[4]),
            });
        }
        if let Some(i) = (5..=ndim).find(|&i| self.dim[i] > 1) {
            return Err(IoError::NotThreeD {
                path: path.to_path_buf(),
                detail: format!("{ndim}D with dim[{i}] = {}", self.dim[i]),
            });
        }
        Ok(count)
    }

    /// Number of values over every dimension (1 to 7 of them), checked against [`MAX_VOXELS`].
    pub(crate) fn element_count(&self, path: &Path) -> Result<usize> {
        let ndim = self.dim[0];
        if !(1..=7).contains(&ndim) {
            return Err(invalid(path, format!("dim[0] is {ndim}, must be 1 to 7")));
        }
        let ndim = ndim as usize;
        let dims = &self.dim[1..=ndim];
        if let Some((i, d)) = dims.iter().enumerate().find(|(_, &d)| d <= 0) {
            return Err(invalid(
                path,
                format!("dim[{}] is {d}, must be positive", i + 1),
            ));
        }
        let too_large = || IoError::TooLarge {
            path: path.to_path_buf(),
            dims: dims
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("x"),
            limit: MAX_VOXELS,
        };
        let mut count: u64 = 1;
        for &d in dims {
            count = count.checked_mul(d as u64).ok_or_else(too_large)?;
        }
        if count > MAX_VOXELS {
            return Err(too_large());
        }
        usize::try_from(count).map_err(|_| too_large())
    }

    /// Byte offset of the voxel data, checked to lie after the header.
    pub(crate) fn data_offset(&self, path: &Path) -> Result<u64> {
        let v = self.vox_offset;
        // Fractional offsets are invalid but harmless; nifti1_io truncates them too.
        if !v.is_finite() || v < HEADER_SIZE as f32 || v > u32::MAX as f32 {
            return Err(invalid(
                path,
                format!("vox_offset is {v}, must be at least 348 (the header size)"),
            ));
        }
        Ok(v as u64)
    }
}

/// The qform quaternion (b, c, d) and qfac of a rotation given by its unit columns, as nifti1_io's
/// `nifti_mat44_to_quatern` computes it: a left-handed frame flips its third column and sets qfac -1.
fn quaternion_of(columns: [[f64; 3]; 3]) -> ([f64; 3], f64) {
    let mut r = [[0.0; 3]; 3];
    for (j, col) in columns.iter().enumerate() {
        for i in 0..3 {
            r[i][j] = col[i];
        }
    }
    let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1])
        - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
        + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
    let qfac = if det < 0.0 { -1.0 } else { 1.0 };
    for row in &mut r {
        row[2] *= qfac;
    }
    let trace = r[0][0] + r[1][1] + r[2][2] + 1.0;
    // The branch on the largest diagonal term keeps the square roots away from zero.
    let (a, b, c, d) = if trace > 0.5 {
        let a = 0.5 * trace.sqrt();
        (
            a,
            0.25 * (r[2][1] - r[1][2]) / a,
            0.25 * (r[0][2] - r[2][0]) / a,
            0.25 * (r[1][0] - r[0][1]) / a,
        )
    } else {
        let (xd, yd, zd) = (
            1.0 + r[0][0] - (r[1][1] + r[2][2]),
            1.0 + r[1][1] - (r[0][0] + r[2][2]),
            1.0 + r[2][2] - (r[0][0] + r[1][1]),
        );
        if xd > 1.0 {
            let b = 0.5 * xd.sqrt();
            (
                0.25 * (r[2][1] - r[1][2]) / b,
                b,
                0.25 * (r[0][1] + r[1][0]) / b,
                0.25 * (r[0][2] + r[2][0]) / b,
            )
        } else if yd > 1.0 {
            let c = 0.5 * yd.sqrt();
            (
                0.25 * (r[0][2] - r[2][0]) / c,
                0.25 * (r[0][1] + r[1][0]) / c,
                c,
                0.25 * (r[1][2] + r[2][1]) / c,
            )
        } else {
            let d = 0.5 * zd.max(0.0).sqrt().max(f64::MIN_POSITIVE);
            (
                0.25 * (r[1][0] - r[0][1]) / d,
                0.25 * (r[0][2] + r[2][0]) / d,
                0.25 * (r[1][2] + r[2][1]) / d,
                d,
            )
        }
    };
    // NIfTI stores b, c, d with a >= 0 implied.
    let sign = if a < 0.0 { -1.0 } else { 1.0 };
    ([b * sign, c * sign, d * sign], qfac)
}

fn invalid(path: &Path, reason: String) -> IoError {
    IoError::InvalidHeader {
        path: path.to_path_buf(),
        reason,
    }
}
