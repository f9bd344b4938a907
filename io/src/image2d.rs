//! 2D images (PNG, TIFF) as one-slice volumes, so that datasets of photographs, microscopy or X-rays in
//! nnU-Net v2 layout (`"file_ending": ".png"`) train and predict like NIfTI scans.
//!
//! An image of `width x height` pixels becomes a volume of shape `[width, height, 1]` (x = column,
//! fastest; y = row, top row first), spacing 1 mm and a diagonal affine, which is nnU-Net's convention
//! for natural images. One file holds one grayscale channel (8- or 16-bit); several channels are
//! separate `CASE_000N` files as for NIfTI. An RGB(A) file whose colour channels are identical (a gray
//! image saved as colour, common for masks) is read as gray; a real colour image is refused with a
//! message saying how to split it. Decoding uses the `image` crate (well kept, fuzzed upstream) with its
//! default memory limits, so a header claiming a huge image fails before allocating. A multi-page TIFF
//! (a stack) is read as its first page only: the `image` crate does not expose the page count.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageFormat, ImageReader};

use crate::error::{io_error, IoError, Result};
use crate::fsutil::{file_name, write_bytes_atomic};
use crate::header::{NiftiHeader, MAX_VOXELS};
use crate::volume::Volume;

/// File endings read as 2D images (compared without regard to case).
pub const IMAGE_ENDINGS: [&str; 3] = [".png", ".tif", ".tiff"];

/// True when `path` ends in .png, .tif or .tiff (any case).
pub fn is_image2d(path: &Path) -> bool {
    let name = file_name(path).to_ascii_lowercase();
    IMAGE_ENDINGS.iter().any(|e| name.ends_with(e))
}

fn image_error(path: &Path, reason: impl Into<String>) -> IoError {
    IoError::Image {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The single gray channel of a colour image whose channels agree everywhere, else None.
fn gray_of<T: Copy + PartialEq + Into<f32>>(pixels: &[T], stride: usize) -> Option<Vec<f32>> {
    pixels
        .chunks_exact(stride)
        .map(|p| (p[0] == p[1] && p[1] == p[2]).then(|| p[0].into()))
        .collect()
}

/// Reads a PNG or TIFF as a one-slice volume (see the module documentation for the conventions).
pub fn read_image2d(path: &Path) -> Result<Volume> {
    let reader = ImageReader::open(path)
        .map_err(|e| io_error(path, e))?
        .with_guessed_format()
        .map_err(|e| io_error(path, e))?;
    let image = reader
        .decode()
        .map_err(|e| image_error(path, e.to_string()))?;
    let (width, height) = (image.width() as usize, image.height() as usize);
    if (width * height) as u64 > MAX_VOXELS {
        return Err(IoError::TooLarge {
            path: path.to_path_buf(),
            dims: format!("{width}x{height}"),
            limit: MAX_VOXELS,
        });
    }
    let colour = |kind: &str| {
        IoError::Unsupported {
            path: path.to_path_buf(),
            reason: format!(
                "{kind} colour image; segmenter reads one grayscale channel per file: save each colour \
                 channel as its own CASE_000N file and list them in dataset.json's channel_names"
            ),
        }
    };
    let data: Vec<f32> = match &image {
        DynamicImage::ImageLuma8(im) => im.as_raw().iter().map(|&v| f32::from(v)).collect(),
        DynamicImage::ImageLuma16(im) => im.as_raw().iter().map(|&v| f32::from(v)).collect(),
        DynamicImage::ImageRgb8(im) => gray_of(im.as_raw(), 3).ok_or_else(|| colour("RGB"))?,
        DynamicImage::ImageRgba8(im) => gray_of(im.as_raw(), 4).ok_or_else(|| colour("RGBA"))?,
        DynamicImage::ImageRgb16(im) => gray_of(im.as_raw(), 3).ok_or_else(|| colour("RGB"))?,
        DynamicImage::ImageRgba16(im) => gray_of(im.as_raw(), 4).ok_or_else(|| colour("RGBA"))?,
        DynamicImage::ImageLumaA8(_) | DynamicImage::ImageLumaA16(_) => {
            return Err(IoError::Unsupported {
                path: path.to_path_buf(),
                reason: "grayscale image with an alpha channel; save it without alpha".into(),
            })
        }
        other => {
            return Err(IoError::Unsupported {
                path: path.to_path_buf(),
                reason: format!(
                    "pixel type {:?}; expected 8- or 16-bit grayscale",
                    other.color()
                ),
            })
        }
    };
    let shape = [width, height, 1];
    let header = NiftiHeader::new(shape, [1.0; 3]).ok_or_else(|| {
        image_error(
            path,
            format!("{width}x{height} pixels: each side must be 1 to 32767 (NIfTI-1's limit)"),
        )
    })?;
    Ok(Volume {
        header,
        shape,
        data,
    })
}

/// Writes a label map of a one-slice volume `[width, height, 1]` as an 8-bit grayscale PNG or TIFF
/// (by the path's ending), through a temporary file renamed into place.
pub fn write_labels_image2d(path: &Path, shape: [usize; 3], labels: &[u8]) -> Result<()> {
    let [width, height, depth] = shape;
    if depth != 1 {
        return Err(image_error(
            path,
            format!("cannot write a {width}x{height}x{depth} volume as a 2D image; use .nii.gz"),
        ));
    }
    if labels.len() != width * height {
        return Err(IoError::LengthMismatch {
            path: path.to_path_buf(),
            expected: width * height,
            found: labels.len(),
        });
    }
    let format = ImageFormat::from_path(path).map_err(|e| image_error(path, e.to_string()))?;
    let (w, h) = (
        u32::try_from(width).map_err(|_| image_error(path, "image too wide"))?,
        u32::try_from(height).map_err(|_| image_error(path, "image too tall"))?,
    );
    let image = image::GrayImage::from_raw(w, h, labels.to_vec())
        .ok_or_else(|| image_error(path, "label buffer does not match the image size"))?;
    // Encoded in memory first: the encoders want a seekable writer, and write_atomic gives a stream.
    let mut encoded = Cursor::new(Vec::new());
    image
        .write_to(&mut encoded, format)
        .map_err(|e| image_error(path, e.to_string()))?;
    write_bytes_atomic(path, encoded.get_ref())
}
