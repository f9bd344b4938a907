//! One place that picks a scan's reader and writer by its file name, so that the format modules never
//! call each other and a new format (DICOM, say) is one more variant here.

use std::path::Path;

use crate::error::Result;
use crate::fsutil::file_name;
use crate::header::NiftiHeader;
use crate::image2d::{is_image2d, read_image2d, write_labels_image2d, IMAGE_ENDINGS};
use crate::nifti::{read_nifti, write_nifti_labels};
use crate::volume::Volume;

/// File endings of NIfTI-1 single files (compared without regard to case).
const NIFTI_ENDINGS: [&str; 2] = [".nii.gz", ".nii"];

/// The file formats a scan or label map can be stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// NIfTI-1 single file, `.nii` or `.nii.gz` (gzip is recognised by content, not name).
    Nifti,
    /// PNG or TIFF, read as a one-slice volume (see [`read_image2d`]).
    Image2d,
}

impl Format {
    /// Every format, in the order their endings are tried.
    pub const ALL: [Format; 2] = [Format::Nifti, Format::Image2d];

    /// The format of `path` by its ending (any case): 2D images by theirs, anything else NIfTI-1,
    /// whose reader then checks the magic bytes and says what is wrong.
    pub fn of(path: &Path) -> Format {
        if is_image2d(path) {
            Format::Image2d
        } else {
            Format::Nifti
        }
    }

    /// File-name endings of this format, lower case.
    pub fn endings(self) -> &'static [&'static str] {
        match self {
            Format::Nifti => &NIFTI_ENDINGS,
            Format::Image2d => &IMAGE_ENDINGS,
        }
    }

    /// `name` without this format's ending (any case); None when it has none or nothing is left.
    pub(crate) fn strip(self, name: &str) -> Option<&str> {
        let lower = name.to_ascii_lowercase();
        // Endings are ASCII, so the lower-cased name has the same byte offsets as the name.
        self.endings()
            .iter()
            .find(|e| lower.ends_with(*e) && name.len() > e.len())
            .map(|e| &name[..name.len() - e.len()])
    }

    /// Reads a scan stored in this format.
    pub fn read(self, path: &Path) -> Result<Volume> {
        match self {
            Format::Nifti => read_nifti(path),
            Format::Image2d => read_image2d(path),
        }
    }

    /// Writes a uint8 label map in this format with `reference`'s geometry.
    pub fn write_labels(self, path: &Path, reference: &NiftiHeader, labels: &[u8]) -> Result<()> {
        match self {
            Format::Nifti => write_nifti_labels(path, reference, labels),
            Format::Image2d => write_labels_image2d(path, reference.shape(), labels),
        }
    }
}

/// Reads a scan of any format, chosen by [`Format::of`].
pub fn read_volume(path: &Path) -> Result<Volume> {
    Format::of(path).read(path)
}

/// Writes a uint8 label map with the reference's geometry (NIfTI header bytes otherwise unchanged,
/// scl 1/0); a path ending in .png/.tif/.tiff gets an 8-bit grayscale image instead (2D datasets).
pub fn write_labels(path: &Path, reference: &NiftiHeader, labels: &[u8]) -> Result<()> {
    Format::of(path).write_labels(path, reference, labels)
}

/// `name` without the ending of whichever format it has (any case); None when it has none.
pub(crate) fn strip_format_ending(name: &str) -> Option<&str> {
    Format::ALL.iter().find_map(|f| f.strip(name))
}

/// The case id of a scan or label file: its file name without the format's ending (".nii.gz", ".nii",
/// ".png", ".tif", ".tiff", any case); a name without one is kept whole.
pub fn case_id(path: &Path) -> String {
    let name = file_name(path);
    strip_format_ending(&name).unwrap_or(&name).to_string()
}

/// Whether a file name ends like a volume of some format (any case): what a folder of scans or
/// label maps is filtered by.
pub fn has_volume_ending(path: &Path) -> bool {
    strip_format_ending(&file_name(path)).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_endings_in_any_case() {
        for yes in ["a.nii.gz", "B.NII.GZ", "c.Nii", "d.png", "e.TIFF"] {
            assert!(has_volume_ending(Path::new(yes)), "{yes}");
        }
        for no in ["f.txt", "g.gz", "h", ".nii.gz"] {
            assert!(!has_volume_ending(Path::new(no)), "{no}");
        }
    }

    #[test]
    fn case_id_strips_each_format_ending_in_any_case() {
        for (file, id) in [
            ("a.NII.GZ", "a"),
            ("dir/a.nii.gz", "a"),
            ("b.png", "b"),
            ("c.tiff", "c"),
            ("c.TIF", "c"),
            ("d.nii", "d"),
            ("e.txt", "e.txt"),
            ("f.gz", "f.gz"),
            ("case_0000.nii.gz", "case_0000"),
            ("x.v2.nii.gz", "x.v2"),
            (".nii.gz", ".nii.gz"),
        ] {
            assert_eq!(case_id(Path::new(file)), id, "{file}");
        }
    }

    #[test]
    fn format_by_ending() {
        assert_eq!(Format::of(Path::new("a.PNG")), Format::Image2d);
        assert_eq!(Format::of(Path::new("a.tif")), Format::Image2d);
        assert_eq!(Format::of(Path::new("a.nii.gz")), Format::Nifti);
        assert_eq!(Format::of(Path::new("a.img")), Format::Nifti);
        assert_eq!(Format::Nifti.strip("a.Nii"), Some("a"));
        assert_eq!(Format::Nifti.strip("a.png"), None);
    }
}
