//! Finding the image series under a folder: walk it, recognise DICOM files by content, read their
//! headers (not their pixels), skip what is not a scan, group by series and name each one.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, OpenFileOptions};
use rayon::prelude::*;

use super::guard::check_lengths;
use super::naming::{unique_ids, SeriesName};
use super::{integer, orientation, text, DicomSeries};
use crate::error::{io_error, IoError, Result};

/// Deepest folder nesting walked; deeper is almost surely a link loop, not a PACS export.
const MAX_DEPTH: usize = 32;

/// Largest difference of a direction cosine at which two images still count as one orientation
/// when a series is split (a localizer's 90 degrees is far above; rounding is far below).
/// Smaller differences inside one stack are judged by [`super::series`], which refuses them.
const SPLIT_ORIENTATION: f64 = 0.01;

/// SOP classes (by UID prefix) that hold no scan to segment: structured reports, presentation
/// states, raw data, registrations, fiducials and segmentations, radiotherapy objects, encapsulated
/// documents, key-object selections.
const NON_IMAGE_CLASSES: [(&str, &str); 6] = [
    ("1.2.840.10008.5.1.4.1.1.88.", "structured report"),
    ("1.2.840.10008.5.1.4.1.1.11.", "presentation state"),
    (
        "1.2.840.10008.5.1.4.1.1.66",
        "raw data, registration or segmentation",
    ),
    ("1.2.840.10008.5.1.4.1.1.481.", "radiotherapy object"),
    ("1.2.840.10008.5.1.4.1.1.104.", "encapsulated document"),
    ("1.2.840.10008.1.3.10", "DICOMDIR (a media index)"),
];

/// Modalities that are not scans even under an image SOP class.
const NON_IMAGE_MODALITIES: [&str; 8] = [
    "SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "PR", "KO", "REG",
];

/// The series found under a folder and what was left out.
#[derive(Debug, Clone, Default)]
pub struct DicomFolder {
    /// Image series, sorted by id.
    pub series: Vec<DicomSeries>,
    /// One line per file or series skipped, saying what it is (never a patient's name).
    pub notes: Vec<String>,
}

/// What a file's header says, as far as finding and naming series needs.
#[derive(Debug, Clone)]
struct Header {
    path: PathBuf,
    series_uid: String,
    name: SeriesName,
    image_type: Vec<String>,
    size: (i64, i64),
    orientation: [f64; 6],
    frames: i64,
}

/// What one file turned out to be.
enum Found {
    NotDicom,
    Skipped(String),
    Image(Box<Header>),
}

/// Whether `path` is a DICOM file by its content: `DICM` after the 128-byte preamble, or a file
/// meta group (0002,xxxx) right at the start (files written without a preamble).
pub fn is_dicom_file(path: &Path) -> bool {
    let mut head = [0u8; 132];
    let Ok(mut file) = fs::File::open(path) else {
        return false;
    };
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    (got == 132 && &head[128..132] == b"DICM") || (got >= 8 && head[..4] == [2, 0, 0, 0])
}

/// Every regular file under `dir` (at most [`MAX_DEPTH`] folders deep), sorted by path; links to
/// folders are not followed, so a loop cannot trap the walk.
pub(super) fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let mut entries = fs::read_dir(dir)
        .map_err(|e| io_error(dir, e))?
        .map(|e| e.map_err(|e| io_error(dir, e)))
        .collect::<Result<Vec<_>>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| io_error(&path, e))?;
        if kind.is_dir() {
            walk(&path, depth + 1, out)?;
        } else if kind.is_file() || (kind.is_symlink() && path.is_file()) {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads the header of a DICOM file (everything before the pixel data) and says what it is.
fn read_header(path: &Path) -> Found {
    if !is_dicom_file(path) {
        return Found::NotDicom;
    }
    if let Err(why) = check_lengths(path) {
        return Found::Skipped(format!("damaged DICOM: {why}"));
    }
    let obj = match OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
    {
        Ok(obj) => obj,
        Err(e) => return Found::Skipped(format!("unreadable DICOM ({e})")),
    };
    let sop_class = text(&obj, tags::SOP_CLASS_UID)
        .unwrap_or_else(|| obj.meta().media_storage_sop_class_uid().to_string());
    let sop_class = sop_class.trim_end_matches('\0').to_string();
    if let Some((_, what)) = NON_IMAGE_CLASSES
        .iter()
        .find(|(prefix, _)| sop_class.starts_with(prefix))
    {
        return Found::Skipped(format!("{what}, not an image (SOP class {sop_class})"));
    }
    let modality = text(&obj, tags::MODALITY).unwrap_or_default();
    if NON_IMAGE_MODALITIES.contains(&modality.as_str()) {
        return Found::Skipped(format!("{modality} object, not an image"));
    }
    let (Some(rows), Some(cols)) = (integer(&obj, tags::ROWS), integer(&obj, tags::COLUMNS)) else {
        return Found::Skipped(format!(
            "no Rows/Columns: not an image (SOP class {sop_class})"
        ));
    };
    let Some(series_uid) = text(&obj, tags::SERIES_INSTANCE_UID) else {
        return Found::Skipped("image without a SeriesInstanceUID".into());
    };
    if orientation(&obj).is_none() {
        return Found::Skipped(
            "no ImageOrientationPatient: not a slice of a cross-sectional scan (a projection \
             image, or a damaged file)"
                .into(),
        );
    }
    Found::Image(Box::new(header_of(&obj, path, series_uid, (rows, cols))))
}

/// The parts of an image file's header that discovery and naming use.
fn header_of(obj: &InMemDicomObject, path: &Path, series_uid: String, size: (i64, i64)) -> Header {
    Header {
        path: path.to_path_buf(),
        series_uid,
        name: SeriesName {
            patient_id: text(obj, tags::PATIENT_ID),
            study_date: text(obj, tags::STUDY_DATE),
            series_number: integer(obj, tags::SERIES_NUMBER),
            description: text(obj, tags::SERIES_DESCRIPTION),
        },
        image_type: text(obj, tags::IMAGE_TYPE)
            .map(|t| {
                t.split('\\')
                    .map(|s| s.trim().to_ascii_uppercase())
                    .collect()
            })
            .unwrap_or_default(),
        size,
        orientation: orientation(obj).unwrap_or_default(),
        frames: integer(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1),
    }
}

/// Splits one series' images into stacks of one image size and one orientation (within
/// [`SPLIT_ORIENTATION`]), largest stack first, ties by first file, so the order is stable.
fn split_stacks(images: Vec<Header>) -> Vec<Vec<Header>> {
    let mut stacks: Vec<Vec<Header>> = Vec::new();
    for image in images {
        let same = |s: &&mut Vec<Header>| {
            let first = &s[0];
            first.size == image.size
                && first
                    .orientation
                    .iter()
                    .zip(&image.orientation)
                    .all(|(x, y)| (x - y).abs() <= SPLIT_ORIENTATION)
        };
        match stacks.iter_mut().find(same) {
            Some(stack) => stack.push(image),
            None => stacks.push(vec![image]),
        }
    }
    stacks.sort_by(|a, b| b.len().cmp(&a.len()).then(a[0].path.cmp(&b[0].path)));
    stacks
}

/// Why a stack is not a volume to segment (a localizer or another single image), if it is not.
fn not_a_volume(stack: &[Header]) -> Option<String> {
    if stack
        .iter()
        .any(|h| h.image_type.iter().any(|t| t == "LOCALIZER"))
    {
        return Some("localizer (ImageType LOCALIZER)".into());
    }
    let frames: i64 = stack.iter().map(|h| h.frames).sum();
    (frames < 2).then(|| "a single slice (localizer, scout or key image)".into())
}

/// Finds the DICOM image series under `dir` at any depth; see the [module](super) documentation
/// for what is skipped. Fails only when the folder itself cannot be listed.
pub fn find_dicom_series(dir: &Path) -> Result<DicomFolder> {
    if !dir.is_dir() {
        return Err(IoError::Dataset {
            path: dir.to_path_buf(),
            reason: "not a folder".into(),
        });
    }
    let mut files = Vec::new();
    walk(dir, 0, &mut files)?;
    let found: Vec<Found> = files.par_iter().map(|p| read_header(p)).collect();
    let mut notes = Vec::new();
    let mut by_series: BTreeMap<String, Vec<Header>> = BTreeMap::new();
    for (path, found) in files.iter().zip(found) {
        match found {
            Found::NotDicom => notes.push(format!("skipped {}: not DICOM", path.display())),
            Found::Skipped(why) => notes.push(format!("skipped {}: {why}", path.display())),
            Found::Image(h) => by_series.entry(h.series_uid.clone()).or_default().push(*h),
        }
    }
    // (key for uniqueness, base id, files, uid)
    let mut kept: Vec<(String, String, Vec<PathBuf>, String)> = Vec::new();
    for (uid, images) in by_series {
        let stacks = split_stacks(images);
        let split = if stacks.len() > 1 {
            "; split off its series by image size or orientation"
        } else {
            ""
        };
        let volumes = stacks.iter().filter(|s| not_a_volume(s).is_none()).count();
        let mut part = 0;
        for stack in stacks {
            let base = stack[0].name.base_id();
            if let Some(why) = not_a_volume(&stack) {
                let what = if stack.len() == 1 { "file" } else { "files" };
                notes.push(format!(
                    "skipped series {base} ({} {what}, first {}): {why}{split}",
                    stack.len(),
                    stack[0].path.display()
                ));
                continue;
            }
            part += 1;
            let (key, id) = if volumes > 1 {
                (format!("{uid}#{part}"), format!("{base}_part{part}"))
            } else {
                (uid.clone(), base)
            };
            let mut paths: Vec<PathBuf> = stack.into_iter().map(|h| h.path).collect();
            paths.sort();
            kept.push((key, id, paths, uid.clone()));
        }
    }
    let ids = unique_ids(
        &kept
            .iter()
            .map(|(key, id, _, _)| (key.clone(), id.clone()))
            .collect::<Vec<_>>(),
    );
    let mut series: Vec<DicomSeries> = kept
        .into_iter()
        .zip(ids)
        .map(|((_, _, files, uid), id)| DicomSeries { id, uid, files })
        .collect();
    series.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(DicomFolder { series, notes })
}

#[cfg(test)]
mod tests {
    use super::super::numbers;
    use super::*;

    #[test]
    fn non_dicom_and_short_files_are_not_dicom() {
        let dir = tempfile::tempdir().unwrap();
        let text_file = dir.path().join("notes");
        fs::write(&text_file, "not a scan").unwrap();
        assert!(!is_dicom_file(&text_file));
        let zeros = dir.path().join("zeros");
        fs::write(&zeros, [0u8; 4096]).unwrap();
        assert!(!is_dicom_file(&zeros));
        let mut preamble = vec![0u8; 128];
        preamble.extend_from_slice(b"DICM");
        let dicm = dir.path().join("x");
        fs::write(&dicm, &preamble).unwrap();
        assert!(is_dicom_file(&dicm));
        assert!(matches!(read_header(&dicm), Found::Skipped(_)));
    }

    #[test]
    fn numbers_of_a_missing_orientation_are_none() {
        let obj = InMemDicomObject::new_empty();
        assert!(orientation(&obj).is_none());
        assert!(numbers(&obj, tags::PIXEL_SPACING).is_none());
    }
}
