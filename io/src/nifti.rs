//! NIfTI-1 single-file (.nii, .nii.gz) reading and writing.
//!
//! Written here rather than taken from a crate so that every size in the header is checked before a byte
//! is allocated, and so that the 348 header bytes of an input can be written back unchanged for its label map.

use std::fs::File;
use std::io::{self, BufReader, Cursor, ErrorKind, Read, Write};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

use crate::error::{io_error, IoError, Result};
use crate::fsutil::write_atomic;

/// Largest voxel count a header may claim (2^31); bigger files are refused before allocating.
pub const MAX_VOXELS: u64 = 1 << 31;

/// Size of a NIfTI-1 header.
const HEADER_SIZE: usize = 348;
/// Where we put voxel data when writing: header plus the 4-byte "no extensions" flag.
const DATA_OFFSET: usize = 352;
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
    /// dim[0] is the number of dimensions, dim[1..=dim[0]] their sizes.
    pub dim: [i16; 8],
    /// pixdim[0] is qfac (sign of the third axis in the qform), pixdim[1..4] the voxel size in mm.
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
    fn bytes<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.raw[off..off + N]);
        a
    }
    fn i16(&self, off: usize) -> i16 {
        let b = self.bytes::<2>(off);
        if self.big {
            i16::from_be_bytes(b)
        } else {
            i16::from_le_bytes(b)
        }
    }
    fn f32(&self, off: usize) -> f32 {
        let b = self.bytes::<4>(off);
        if self.big {
            f32::from_be_bytes(b)
        } else {
            f32::from_le_bytes(b)
        }
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
    fn i16(&mut self, off: usize, v: i16) {
        let b = if self.big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.raw[off..off + 2].copy_from_slice(&b);
    }
    fn i32(&mut self, off: usize, v: i32) {
        let b = if self.big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.raw[off..off + 4].copy_from_slice(&b);
    }
    fn f32(&mut self, off: usize, v: f32) {
        let b = if self.big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.raw[off..off + 4].copy_from_slice(&b);
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

    /// Spatial dims [x, y, z] (1 for axes beyond dim[0]).
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
    /// (2D files often leave pixdim[3] at 0).
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
    fn parse(raw: [u8; HEADER_SIZE], path: &Path) -> Result<Self> {
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
    fn voxel_count(&self, path: &Path) -> Result<usize> {
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
    fn element_count(&self, path: &Path) -> Result<usize> {
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
    fn data_offset(&self, path: &Path) -> Result<u64> {
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

/// Voxel data in its on-disk type; used for exact round trips.
#[derive(Debug, Clone, PartialEq)]
pub enum NiftiData {
    /// datatype 2
    U8(Vec<u8>),
    /// datatype 256
    I8(Vec<i8>),
    /// datatype 4
    I16(Vec<i16>),
    /// datatype 512
    U16(Vec<u16>),
    /// datatype 8
    I32(Vec<i32>),
    /// datatype 768
    U32(Vec<u32>),
    /// datatype 1024
    I64(Vec<i64>),
    /// datatype 1280
    U64(Vec<u64>),
    /// datatype 16
    F32(Vec<f32>),
    /// datatype 64
    F64(Vec<f64>),
}

/// Runs one expression on the vector inside any NiftiData variant.
macro_rules! each_variant {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            NiftiData::U8($v) => $body,
            NiftiData::I8($v) => $body,
            NiftiData::I16($v) => $body,
            NiftiData::U16($v) => $body,
            NiftiData::I32($v) => $body,
            NiftiData::U32($v) => $body,
            NiftiData::I64($v) => $body,
            NiftiData::U64($v) => $body,
            NiftiData::F32($v) => $body,
            NiftiData::F64($v) => $body,
        }
    };
}

/// Decodes fixed-size numbers from bytes in the given byte order.
macro_rules! decode {
    ($bytes:expr, $t:ty, $big:expr) => {{
        const N: usize = std::mem::size_of::<$t>();
        $bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                if $big {
                    <$t>::from_be_bytes(a)
                } else {
                    <$t>::from_le_bytes(a)
                }
            })
            .collect::<Vec<$t>>()
    }};
}

impl NiftiData {
    /// Number of voxels.
    pub fn len(&self) -> usize {
        each_variant!(self, v => v.len())
    }

    /// True when there are no voxels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// NIfTI datatype code of this variant.
    pub fn datatype(&self) -> i16 {
        match self {
            NiftiData::U8(_) => 2,
            NiftiData::I8(_) => 256,
            NiftiData::I16(_) => 4,
            NiftiData::U16(_) => 512,
            NiftiData::I32(_) => 8,
            NiftiData::U32(_) => 768,
            NiftiData::I64(_) => 1024,
            NiftiData::U64(_) => 1280,
            NiftiData::F32(_) => 16,
            NiftiData::F64(_) => 64,
        }
    }

    /// Bits per voxel of this variant.
    pub fn bitpix(&self) -> i16 {
        8 * element_size(self.datatype()).unwrap_or(0) as i16
    }

    /// Values as f32 with y = slope * x + inter applied (in f64, so large integers lose no more than f32 must).
    // The same closure runs on every variant, including f32 and f64 where the cast is a no-op.
    #[allow(clippy::unnecessary_cast)]
    pub fn to_f32(&self, slope: f32, inter: f32) -> Vec<f32> {
        // NIfTI-1: "if scl_slope is nonzero, y = scl_slope * x + scl_inter"; zero or NaN means no scaling.
        let scaled = slope != 0.0 && slope.is_finite() && !(slope == 1.0 && inter == 0.0);
        if !scaled {
            return each_variant!(self, v => v.iter().map(|&x| x as f32).collect());
        }
        let (s, i) = (
            f64::from(slope),
            if inter.is_finite() {
                f64::from(inter)
            } else {
                0.0
            },
        );
        each_variant!(self, v => v.iter().map(|&x| (x as f64 * s + i) as f32).collect())
    }

    /// Bytes in the given byte order.
    fn encode(&self, big: bool) -> Vec<u8> {
        each_variant!(self, v => {
            let mut out = Vec::with_capacity(std::mem::size_of_val(&v[..]));
            for x in v {
                out.extend_from_slice(&if big { x.to_be_bytes() } else { x.to_le_bytes() });
            }
            out
        })
    }

    /// Decodes voxel bytes of a (supported) datatype.
    fn decode(bytes: Vec<u8>, datatype: i16, big: bool) -> Option<Self> {
        Some(match datatype {
            2 => NiftiData::U8(bytes),
            256 => NiftiData::I8(bytes.into_iter().map(|b| b as i8).collect()),
            4 => NiftiData::I16(decode!(bytes, i16, big)),
            512 => NiftiData::U16(decode!(bytes, u16, big)),
            8 => NiftiData::I32(decode!(bytes, i32, big)),
            768 => NiftiData::U32(decode!(bytes, u32, big)),
            1024 => NiftiData::I64(decode!(bytes, i64, big)),
            1280 => NiftiData::U64(decode!(bytes, u64, big)),
            16 => NiftiData::F32(decode!(bytes, f32, big)),
            64 => NiftiData::F64(decode!(bytes, f64, big)),
            _ => return None,
        })
    }
}

/// Bytes per voxel of the datatypes we read.
fn element_size(datatype: i16) -> Option<usize> {
    match datatype {
        2 | 256 => Some(1),
        4 | 512 => Some(2),
        8 | 768 | 16 => Some(4),
        1024 | 1280 | 64 => Some(8),
        _ => None,
    }
}

/// Human name for a datatype we refuse, so the error says what the file is.
fn unsupported_datatype(datatype: i16) -> String {
    let name = match datatype {
        0 => "unknown (0)",
        1 => "binary (1 bit)",
        32 => "complex64",
        128 => "RGB24",
        1536 => "float128",
        1792 => "complex128",
        2048 => "complex256",
        2304 => "RGBA32",
        _ => return format!("datatype code {datatype} is not a NIfTI-1 type"),
    };
    format!("datatype {name} is not supported (only integer and float32/float64 scalars)")
}

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

fn invalid(path: &Path, reason: String) -> IoError {
    IoError::InvalidHeader {
        path: path.to_path_buf(),
        reason,
    }
}

/// Maps a read error: decoder complaints become CorruptGzip, the rest stay OS errors.
fn read_error(path: &Path, e: io::Error, gz: bool) -> IoError {
    if gz && matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::InvalidData) {
        let msg = e.to_string();
        // flate2's messages already start with "corrupt gzip stream", which our Display also says.
        let detail = msg
            .strip_prefix("corrupt gzip stream ")
            .unwrap_or(&msg)
            .to_string();
        IoError::CorruptGzip {
            path: path.to_path_buf(),
            detail,
        }
    } else {
        io_error(path, e)
    }
}

/// Reads until `buf` is full or the stream ends; returns how much was read. An early end of a gzip
/// stream is reported by flate2 as UnexpectedEof, which here just means "short", so callers can say
/// "truncated" with a byte count.
fn read_fill<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(k) => done += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Reads and discards up to `n` bytes without allocating them; returns how many there were.
fn skip<R: Read>(r: &mut R, n: u64) -> io::Result<u64> {
    let mut buf = [0u8; 16 * 1024];
    let mut done = 0u64;
    while done < n {
        let want = (n - done).min(buf.len() as u64) as usize;
        let k = read_fill(r, &mut buf[..want])?;
        if k == 0 {
            break;
        }
        done += k as u64;
    }
    Ok(done)
}

/// Reads a NIfTI-1 file (.nii or .nii.gz, told apart by the gzip magic bytes) with voxels in their stored type.
pub fn read_nifti_raw(path: &Path) -> Result<(NiftiHeader, NiftiData)> {
    read_raw(path, false)
}

/// Like [`read_nifti_raw`], but any number of dimensions (e.g. 4D probability maps), values in
/// file order with the first axis fastest.
pub fn read_nifti_nd(path: &Path) -> Result<(NiftiHeader, NiftiData)> {
    read_raw(path, true)
}

fn read_raw(path: &Path, any_dims: bool) -> Result<(NiftiHeader, NiftiData)> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let file_len = file.metadata().map_err(|e| io_error(path, e))?.len();
    let reader = BufReader::with_capacity(256 * 1024, file);
    read_nifti_from(reader, Some(file_len), path, any_dims)
}

/// Reads a NIfTI-1 image held in memory (plain or gzip); `name` is only used in error messages.
/// This is the entry point of the fuzz target (io/fuzz), and useful for files that arrive over a network.
pub fn read_nifti_bytes(bytes: &[u8], name: &Path) -> Result<(NiftiHeader, NiftiData)> {
    read_nifti_from(bytes, Some(bytes.len() as u64), name, false)
}

/// The reader behind [`read_nifti_raw`] and [`read_nifti_bytes`]: `len` is the stored (possibly
/// compressed) size when known, which lets a plain file that is too short be refused before allocating;
/// `any_dims` accepts more than three non-singleton dimensions.
fn read_nifti_from<R: Read>(
    mut reader: R,
    len: Option<u64>,
    path: &Path,
    any_dims: bool,
) -> Result<(NiftiHeader, NiftiData)> {
    let mut magic = [0u8; 2];
    let got = read_fill(&mut reader, &mut magic).map_err(|e| io_error(path, e))?;
    let gz = got == 2 && magic == [0x1f, 0x8b];
    let plain = Cursor::new(magic[..got].to_vec()).chain(reader);
    let mut src: Box<dyn Read + '_> = if gz {
        // Multi-member streams (bgzip, concatenated gzip) are valid gzip and are read whole.
        Box::new(MultiGzDecoder::new(plain))
    } else {
        Box::new(plain)
    };

    let mut raw = [0u8; HEADER_SIZE];
    let got = read_fill(&mut src, &mut raw).map_err(|e| read_error(path, e, gz))?;
    if got < HEADER_SIZE {
        return Err(IoError::Truncated {
            path: path.to_path_buf(),
            expected: HEADER_SIZE as u64,
            found: got as u64,
        });
    }
    let header = NiftiHeader::parse(raw, path)?;
    let voxels = if any_dims {
        header.element_count(path)?
    } else {
        header.voxel_count(path)?
    };
    let elem = element_size(header.datatype).ok_or_else(|| IoError::Unsupported {
        path: path.to_path_buf(),
        reason: unsupported_datatype(header.datatype),
    })?;
    let offset = header.data_offset(path)?;
    // voxels <= 2^31 and elem <= 8, so this cannot overflow u64.
    let nbytes = voxels as u64 * elem as u64;
    let expected = offset + nbytes;
    // For plain files the size is known up front: refuse before allocating the voxel buffer.
    if let Some(file_len) = len.filter(|&l| !gz && l < expected) {
        return Err(IoError::Truncated {
            path: path.to_path_buf(),
            expected,
            found: file_len,
        });
    }
    let skipped =
        skip(&mut src, offset - HEADER_SIZE as u64).map_err(|e| read_error(path, e, gz))?;
    if skipped < offset - HEADER_SIZE as u64 {
        return Err(IoError::Truncated {
            path: path.to_path_buf(),
            expected,
            found: HEADER_SIZE as u64 + skipped,
        });
    }
    let nbytes_usize = usize::try_from(nbytes).map_err(|_| IoError::TooLarge {
        path: path.to_path_buf(),
        dims: voxels.to_string(),
        limit: MAX_VOXELS,
    })?;
    // A gzip stream's (or unsized reader's) real length is unknown until decoded: grow the buffer as data arrives, capped at
    // the size the header implies, so a small file claiming a huge volume cannot make us allocate it.
    let mut bytes = Vec::with_capacity(if gz || len.is_none() {
        nbytes_usize.min(1 << 24)
    } else {
        nbytes_usize
    });
    match (&mut src).take(nbytes).read_to_end(&mut bytes) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(read_error(path, e, gz)),
    }
    if bytes.len() < nbytes_usize {
        return Err(IoError::Truncated {
            path: path.to_path_buf(),
            expected,
            found: offset + bytes.len() as u64,
        });
    }
    if gz {
        // Decode to the end so flate2 verifies the CRC (a flipped bit can still inflate to valid-looking
        // data); trailing padding is tolerated, but never more than the volume itself (zip bombs).
        let extra = skip(&mut src, nbytes + 1).map_err(|e| read_error(path, e, gz))?;
        if extra > nbytes {
            return Err(IoError::CorruptGzip {
                path: path.to_path_buf(),
                detail: format!(
                    "decompresses to more than {} bytes, twice what the header describes; refused",
                    expected + nbytes
                ),
            });
        }
    }
    let data = NiftiData::decode(bytes, header.datatype, header.big_endian).ok_or_else(|| {
        IoError::Unsupported {
            path: path.to_path_buf(),
            reason: unsupported_datatype(header.datatype),
        }
    })?;
    Ok((header, data))
}

/// Reads a NIfTI-1 file as f32 intensities with scl_slope/scl_inter applied.
pub fn read_nifti(path: &Path) -> Result<Volume> {
    let (header, data) = read_nifti_raw(path)?;
    let values = data.to_f32(header.scl_slope, header.scl_inter);
    Ok(Volume {
        shape: header.shape(),
        data: values,
        header,
    })
}

/// Writes a NIfTI-1 file: datatype/bitpix/vox_offset come from `data`, everything else from `header`;
/// gzip when the path ends in .gz; written to a temporary file in the same folder and renamed.
pub fn write_nifti(path: &Path, header: &NiftiHeader, data: &NiftiData) -> Result<()> {
    let mut h = header.clone();
    h.datatype = data.datatype();
    h.bitpix = data.bitpix();
    h.vox_offset = DATA_OFFSET as f32;
    let voxels = h.element_count(path)?;
    if voxels != data.len() {
        return Err(IoError::LengthMismatch {
            path: path.to_path_buf(),
            expected: voxels,
            found: data.len(),
        });
    }
    let head = h.to_bytes();
    let body = data.encode(h.big_endian);
    let gz = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    write_atomic(path, |w| {
        if gz {
            // Level 6 (zlib's default): labels and scans compress well and writing stays fast.
            let mut enc = GzEncoder::new(w, Compression::new(6));
            enc.write_all(&head)?;
            enc.write_all(&[0u8; DATA_OFFSET - HEADER_SIZE])?;
            enc.write_all(&body)?;
            enc.finish()?;
        } else {
            w.write_all(&head)?;
            w.write_all(&[0u8; DATA_OFFSET - HEADER_SIZE])?;
            w.write_all(&body)?;
        }
        Ok(())
    })
}

/// Writes a uint8 label map with the reference's geometry (header bytes otherwise unchanged), scl 1/0;
/// a path ending in .png/.tif/.tiff gets an 8-bit grayscale image instead (2D datasets).
pub fn write_labels(path: &Path, reference: &NiftiHeader, labels: &[u8]) -> Result<()> {
    if crate::image2d::is_image2d(path) {
        return crate::image2d::write_labels_image2d(path, reference.shape(), labels);
    }
    let mut h = reference.clone();
    h.scl_slope = 1.0;
    h.scl_inter = 0.0;
    let voxels = h.voxel_count(path)?;
    let shape_voxels: usize = reference.shape().iter().product();
    if labels.len() != voxels || labels.len() != shape_voxels {
        return Err(IoError::LengthMismatch {
            path: path.to_path_buf(),
            expected: voxels,
            found: labels.len(),
        });
    }
    write_nifti(path, &h, &NiftiData::U8(labels.to_vec()))
}
