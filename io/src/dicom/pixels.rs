//! Pixel data to intensities: dicom-pixeldata undoes the transfer syntax's compression (native,
//! RLE, deflate, JPEG), and the samples are read here, with every size checked before allocating,
//! so that a header that lies about Rows, Columns or the frame count cannot take the process down.

use std::panic::{catch_unwind, AssertUnwindSafe};

use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::PixelDecoder;

use super::{integer, text};
use crate::header::MAX_VOXELS;

/// Explicit VR Big Endian: retired since 2004; its pixel bytes would need swapping we do not test.
const BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";

/// How the stored samples of an image are laid out.
#[derive(Debug, Clone, Copy)]
pub struct SampleFormat {
    /// Bits per sample in the data (8, 16 or 32).
    pub bits_allocated: u32,
    /// Bits that carry the value (the rest are masked off).
    pub bits_stored: u32,
    /// Two's complement samples (PixelRepresentation 1).
    pub signed: bool,
}

impl SampleFormat {
    /// The value of one sample from its little-endian bytes.
    fn value(&self, bytes: &[u8]) -> f64 {
        let raw: u32 = match self.bits_allocated {
            8 => u32::from(bytes[0]),
            16 => u32::from(u16::from_le_bytes([bytes[0], bytes[1]])),
            _ => u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        };
        let bits = self.bits_stored;
        // Bits above BitsStored may hold overlays or garbage: mask them, then sign-extend.
        let masked = if bits >= 32 {
            raw
        } else {
            raw & ((1u32 << bits) - 1)
        };
        let negative = self.signed && (masked >> (bits - 1)) & 1 == 1;
        if negative {
            f64::from(masked) - (1u64 << bits) as f64
        } else {
            f64::from(masked)
        }
    }
}

/// The frames of an object's pixel data as raw sample values (no rescale), frame after frame, each
/// `rows * columns` values with the column index fastest.
pub fn decode_frames(obj: &DefaultDicomObject) -> Result<Vec<f64>, String> {
    let rows = integer(obj, tags::ROWS).ok_or("no Rows")?;
    let cols = integer(obj, tags::COLUMNS).ok_or("no Columns")?;
    let frames = integer(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1);
    if rows < 1 || cols < 1 || frames < 1 {
        return Err(format!(
            "Rows {rows}, Columns {cols}, NumberOfFrames {frames}: each must be at least 1"
        ));
    }
    let voxels = (rows as u64)
        .saturating_mul(cols as u64)
        .saturating_mul(frames as u64);
    if voxels > MAX_VOXELS {
        return Err(format!(
            "{cols}x{rows} pixels x {frames} frames is more than the limit of {MAX_VOXELS} voxels"
        ));
    }
    let samples = integer(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    if samples != 1 {
        return Err(format!(
            "{samples} samples per pixel (colour); only grayscale scans are read"
        ));
    }
    let photometric = text(obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
    if !photometric.is_empty() && !photometric.starts_with("MONOCHROME") {
        return Err(format!(
            "PhotometricInterpretation {photometric}; only MONOCHROME1/2 are read"
        ));
    }
    let format = sample_format(obj)?;
    let ts = obj.meta().transfer_syntax().trim_end_matches('\0');
    if ts == BIG_ENDIAN {
        return Err("Explicit VR Big Endian transfer syntax (retired) is not read".into());
    }
    if obj.get(tags::PIXEL_DATA).is_none() {
        return Err("no PixelData".into());
    }
    // The codecs are third-party code fed with untrusted bytes: a panic in one is a refused file.
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        obj.decode_pixel_data().map(|d| d.into_data())
    }))
    .map_err(|_| format!("pixel data decoder failed on transfer syntax {ts}"))?
    .map_err(|e| format!("undecodable pixel data (transfer syntax {ts}): {e}"))?;
    let bytes_per_sample = (format.bits_allocated / 8) as usize;
    let expected = voxels as usize * bytes_per_sample;
    if decoded.len() < expected {
        return Err(format!(
            "pixel data holds {} bytes, Rows x Columns x frames x {} bytes needs {expected}",
            decoded.len(),
            bytes_per_sample
        ));
    }
    Ok(decoded[..expected]
        .chunks_exact(bytes_per_sample)
        .map(|b| format.value(b))
        .collect())
}

/// BitsAllocated, BitsStored and PixelRepresentation, checked to be a layout we read.
fn sample_format(obj: &DefaultDicomObject) -> Result<SampleFormat, String> {
    let allocated = integer(obj, tags::BITS_ALLOCATED).ok_or("no BitsAllocated")?;
    if ![8, 16, 32].contains(&allocated) {
        return Err(format!(
            "BitsAllocated {allocated}; only 8, 16 and 32 are read"
        ));
    }
    let stored = integer(obj, tags::BITS_STORED).unwrap_or(allocated);
    if !(1..=allocated).contains(&stored) {
        return Err(format!(
            "BitsStored {stored} does not fit BitsAllocated {allocated}"
        ));
    }
    let signed = integer(obj, tags::PIXEL_REPRESENTATION).unwrap_or(0) == 1;
    Ok(SampleFormat {
        bits_allocated: allocated as u32,
        bits_stored: stored as u32,
        signed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_masked_and_sign_extended() {
        let f12 = SampleFormat {
            bits_allocated: 16,
            bits_stored: 12,
            signed: true,
        };
        assert_eq!(f12.value(&0x0FFFu16.to_le_bytes()), -1.0);
        assert_eq!(f12.value(&0xF7FFu16.to_le_bytes()), 2047.0);
        assert_eq!(f12.value(&0x0800u16.to_le_bytes()), -2048.0);
        let u16f = SampleFormat {
            bits_allocated: 16,
            bits_stored: 16,
            signed: false,
        };
        assert_eq!(u16f.value(&0xFFFFu16.to_le_bytes()), 65535.0);
        let i16f = SampleFormat {
            signed: true,
            ..u16f
        };
        assert_eq!(i16f.value(&(-1024i16).to_le_bytes()), -1024.0);
        let i32f = SampleFormat {
            bits_allocated: 32,
            bits_stored: 32,
            signed: true,
        };
        assert_eq!(i32f.value(&(-5i32).to_le_bytes()), -5.0);
        let u8f = SampleFormat {
            bits_allocated: 8,
            bits_stored: 8,
            signed: false,
        };
        assert_eq!(u8f.value(&[200]), 200.0);
    }
}
