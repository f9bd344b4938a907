//! Voxel data in its stored NIfTI-1 type, and the byte (de)coding of each type.

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
    pub(crate) fn encode(&self, big: bool) -> Vec<u8> {
        each_variant!(self, v => {
            let mut out = Vec::with_capacity(std::mem::size_of_val(&v[..]));
            for x in v {
                out.extend_from_slice(&if big { x.to_be_bytes() } else { x.to_le_bytes() });
            }
            out
        })
    }

    /// Decodes voxel bytes of a (supported) datatype.
    pub(crate) fn decode(bytes: Vec<u8>, datatype: i16, big: bool) -> Option<Self> {
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
pub(crate) fn element_size(datatype: i16) -> Option<usize> {
    match datatype {
        2 | 256 => Some(1),
        4 | 512 => Some(2),
        8 | 768 | 16 => Some(4),
        1024 | 1280 | 64 => Some(8),
        _ => None,
    }
}

/// Human name for a datatype we refuse, so the error says what the file is.
pub(crate) fn unsupported_datatype(datatype: i16) -> String {
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
