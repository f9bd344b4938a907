//! The crate's error type: every variant names the file it is about, so a user can act on one line.

use std::path::{Path, PathBuf};

/// Errors from reading and writing scans and datasets; each message starts with the file path.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The operating system refused a read, write, rename or directory listing.
    #[error("{}: {cause}", .path.display())]
    Io {
        /// File or folder concerned.
        path: PathBuf,
        /// Underlying error (in the message, not chained, so reports stay one line).
        cause: std::io::Error,
    },
    /// The gzip layer of a .nii.gz file could not be decoded.
    #[error("{}: corrupt gzip stream ({detail})", .path.display())]
    CorruptGzip {
        /// File concerned.
        path: PathBuf,
        /// What the decoder reported.
        detail: String,
    },
    /// The file ends before the header or the voxel data it describes.
    #[error("{}: truncated file: expected {expected} bytes of header and voxel data, found only {found}", .path.display())]
    Truncated {
        /// File concerned.
        path: PathBuf,
        /// Bytes the header implies (uncompressed).
        expected: u64,
        /// Bytes actually present (uncompressed).
        found: u64,
    },
    /// The header is not a valid NIfTI-1 header.
    #[error("{}: invalid NIfTI-1 header: {reason}", .path.display())]
    InvalidHeader {
        /// File concerned.
        path: PathBuf,
        /// Which field is wrong and how.
        reason: String,
    },
    /// A valid file using a feature this crate does not read (datatype, NIfTI-2, .hdr/.img pairs).
    #[error("{}: unsupported: {reason}", .path.display())]
    Unsupported {
        /// File concerned.
        path: PathBuf,
        /// The feature.
        reason: String,
    },
    /// The header claims more voxels than we are willing to allocate.
    #[error("{}: header claims {dims} voxels, more than the limit of {limit}", .path.display())]
    TooLarge {
        /// File concerned.
        path: PathBuf,
        /// The claimed dimensions, e.g. "30000x30000x30000".
        dims: String,
        /// The voxel limit.
        limit: u64,
    },
    /// The file holds more than one 3D volume.
    #[error("{}: expected a 3D volume, found {detail}", .path.display())]
    NotThreeD {
        /// File concerned.
        path: PathBuf,
        /// What was found, e.g. "4D with 5 time points".
        detail: String,
    },
    /// Two files of one case have different shapes.
    #[error("{}: {what} shape {} does not match image shape {} ({})", .path.display(), shape_str(.shape), shape_str(.expected), .reference.display())]
    ShapeMismatch {
        /// File whose shape is wrong.
        path: PathBuf,
        /// "label" or "channel N".
        what: String,
        /// Its shape.
        shape: [usize; 3],
        /// Shape of the reference image.
        expected: [usize; 3],
        /// The reference image (channel 0).
        reference: PathBuf,
    },
    /// Two files of one case have the same shape but lie on different voxel grids in the world
    /// (spacing, origin or axis directions), so their voxels do not correspond.
    #[error("{}: {what} grid does not match the image's ({}), this file's first: {detail}", .path.display(), .reference.display())]
    GridMismatch {
        /// File whose grid differs.
        path: PathBuf,
        /// "label" or "channel N".
        what: String,
        /// Which of spacing, origin and directions differ, with both values.
        detail: String,
        /// The reference image (channel 0).
        reference: PathBuf,
    },
    /// Data handed to a writer does not fit the header's dimensions.
    #[error("{}: {found} voxel values do not fit the header's dimensions ({expected} voxels)", .path.display())]
    LengthMismatch {
        /// File being written.
        path: PathBuf,
        /// Voxels the header describes.
        expected: usize,
        /// Values supplied.
        found: usize,
    },
    /// A label map holds a value that is not a declared label.
    #[error("{}: label value {value} at voxel ({}, {}, {}) is not one of the dataset's labels ({allowed})", .path.display(), .voxel[0], .voxel[1], .voxel[2])]
    InvalidLabel {
        /// Label file.
        path: PathBuf,
        /// The offending value.
        value: f32,
        /// Where it first occurs.
        voxel: [usize; 3],
        /// The declared labels, e.g. "0, 1, 2".
        allowed: String,
    },
    /// An image holds NaN or infinity.
    #[error("{}: intensity {value} at voxel ({}, {}, {}) is not a finite number", .path.display(), .voxel[0], .voxel[1], .voxel[2])]
    NonFinite {
        /// Image file.
        path: PathBuf,
        /// The offending value.
        value: f32,
        /// Where it first occurs.
        voxel: [usize; 3],
    },
    /// A file a dataset description refers to does not exist.
    #[error("{}: file not found ({context})", .path.display())]
    MissingFile {
        /// The missing file.
        path: PathBuf,
        /// Who expects it, e.g. "listed in /x/dataset.json".
        context: String,
    },
    /// dataset.json is not valid JSON.
    #[error("{}: invalid JSON: {cause}", .path.display())]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// Parser error with line and column (in the message, not chained).
        cause: serde_json::Error,
    },
    /// A PNG or TIFF file could not be decoded or written.
    #[error("{}: image: {reason}", .path.display())]
    Image {
        /// File concerned.
        path: PathBuf,
        /// What the decoder or encoder reported.
        reason: String,
    },
    /// A DICOM file that cannot be parsed or used (truncated, no pixel data, undecodable pixels, ...).
    #[error("{}: DICOM: {reason}", .path.display())]
    Dicom {
        /// File concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A DICOM series refused as a whole (missing slices, gantry tilt, ...); the others go on.
    #[error("{}: DICOM series {series}: {reason}", .path.display())]
    DicomSeries {
        /// The series' first file, sorted by name.
        path: PathBuf,
        /// The series' case id (never the patient's name).
        series: String,
        /// What is wrong and what was found.
        reason: String,
    },
    /// A dataset description or folder is valid JSON/filesystem-wise but not a usable dataset.
    #[error("{}: {reason}", .path.display())]
    Dataset {
        /// dataset.json, a folder, or the file concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Result with this crate's error.
pub type Result<T> = std::result::Result<T, IoError>;

/// An OS error about `path`.
pub(crate) fn io_error(path: &Path, cause: std::io::Error) -> IoError {
    IoError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// Formats a shape as "35x51x36", the way people write it.
pub(crate) fn shape_str(shape: &[usize; 3]) -> String {
    format!("{}x{}x{}", shape[0], shape[1], shape[2])
}
