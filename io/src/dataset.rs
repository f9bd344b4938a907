//! Datasets in the Medical Segmentation Decathlon and nnU-Net v2 layouts, and cases for prediction.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::{Map, Value};

use crate::dicom::{find_dicom_series, DicomSeries};
use crate::error::{io_error, IoError, Result};
use crate::format::{strip_format_ending, Format};
use crate::fsutil::file_name;
use crate::header::NiftiHeader;
use crate::volume::Volume;

mod load;
pub use load::load_case;

/// A dataset in Decathlon or nnU-Net v2 layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Folder holding dataset.json.
    pub root: PathBuf,
    /// "name" from dataset.json, else the folder name.
    pub name: String,
    /// Label value -> name, including 0 (background).
    pub labels: BTreeMap<u8, String>,
    /// One name per input channel, e.g. ["MRI"] or ["CT"].
    pub channel_names: Vec<String>,
    /// File name ending of images and labels, e.g. ".nii.gz".
    pub file_ending: String,
    /// Training cases, sorted by id.
    pub cases: Vec<Case>,
}

/// One case: its image files (one per channel) and, for training data, its label file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// Case identifier, e.g. "hippocampus_001".
    pub id: String,
    /// One image per channel, in channel order.
    pub images: Vec<PathBuf>,
    /// Label map, if any.
    pub label: Option<PathBuf>,
    /// A DICOM series read as the case's one channel instead of `images` (which then holds, for
    /// messages, the series' folder in a dataset or its first file in a prediction folder).
    pub dicom: Option<DicomSeries>,
}

/// An image with its label, checked against each other.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedCase {
    /// Case identifier.
    pub id: String,
    /// One volume per channel, all of the same shape.
    pub channels: Vec<Volume>,
    /// Label per voxel (x fastest), if the case has a label.
    pub label: Option<Vec<u8>>,
    /// Header of channel 0 (geometry for writing predictions).
    pub header: NiftiHeader,
    /// Spatial shape [x, y, z].
    pub shape: [usize; 3],
    /// What loading decided on its own and a user should hear of (e.g. DICOM SEG segments
    /// mapped to label values by number), one line each.
    pub notes: Vec<String>,
}

const JSON_NAME: &str = "dataset.json";

fn dataset_err(path: &Path, reason: impl Into<String>) -> IoError {
    IoError::Dataset {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads dir/dataset.json (Decathlon or nnU-Net v2) and lists its training cases, checking every file exists.
pub fn load_dataset(dir: &Path) -> Result<Dataset> {
    let json_path = dir.join(JSON_NAME);
    let text = fs::read_to_string(&json_path).map_err(|e| io_error(&json_path, e))?;
    let value: Value = serde_json::from_str(&text).map_err(|source| IoError::Json {
        path: json_path.clone(),
        cause: source,
    })?;
    let obj = value
        .as_object()
        .ok_or_else(|| dataset_err(&json_path, "top level is not a JSON object"))?;
    let name = match obj.get("name").and_then(Value::as_str) {
        Some(n) => n.to_string(),
        None => file_name(dir),
    };
    let labels = parse_labels(obj.get("labels"), &json_path)?;
    let (channel_names, file_ending, cases) = if let Some(ch) = obj.get("channel_names") {
        let channel_names = parse_channels(ch, "channel_names", &json_path)?;
        let ending = match obj.get("file_ending") {
            None => ".nii.gz".to_string(),
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(other) => {
                return Err(dataset_err(
                    &json_path,
                    format!("\"file_ending\" must be a non-empty string, found {other}"),
                ))
            }
        };
        let cases = nnunet_cases(dir, &json_path, channel_names.len(), &ending)?;
        (channel_names, ending, cases)
    } else if let Some(m) = obj.get("modality") {
        let channel_names = parse_channels(m, "modality", &json_path)?;
        if channel_names.len() != 1 {
            // The Decathlon stores several modalities as one 4D file per case; we read 3D volumes only.
            return Err(IoError::Unsupported {
                path: json_path,
                reason: format!(
                    "Decathlon layout with {} modalities (stored as 4D files); convert to nnU-Net v2 layout, one file per channel",
                    channel_names.len()
                ),
            });
        }
        let (ending, cases) = decathlon_cases(dir, &json_path, obj)?;
        (channel_names, ending, cases)
    } else {
        return Err(dataset_err(
            &json_path,
            "neither \"channel_names\" (nnU-Net v2) nor \"modality\" (Decathlon) is present",
        ));
    };
    Ok(Dataset {
        root: dir.to_path_buf(),
        name,
        labels,
        channel_names,
        file_ending,
        cases,
    })
}

/// Reads only the label names of a `dataset.json` (either layout), e.g. for evaluation.
pub fn read_dataset_labels(json_path: &Path) -> Result<BTreeMap<u8, String>> {
    let text = fs::read_to_string(json_path).map_err(|e| io_error(json_path, e))?;
    let value: Value = serde_json::from_str(&text).map_err(|source| IoError::Json {
        path: json_path.to_path_buf(),
        cause: source,
    })?;
    parse_labels(value.get("labels"), json_path)
}

/// Accepts both label styles: Decathlon {"0": "background"} and nnU-Net v2 {"background": 0}.
fn parse_labels(value: Option<&Value>, json_path: &Path) -> Result<BTreeMap<u8, String>> {
    let obj = value
        .and_then(Value::as_object)
        .ok_or_else(|| dataset_err(json_path, "\"labels\" is missing or not an object"))?;
    let mut labels = BTreeMap::new();
    for (key, v) in obj {
        let (id, name) =
            match v {
                Value::String(name) => (
                    key.trim().parse::<u8>().map_err(|_| {
                        dataset_err(
                            json_path,
                            format!("label key {key:?} is not an integer from 0 to 255"),
                        )
                    })?,
                    name.clone(),
                ),
                Value::Number(n) => (
                    n.as_u64()
                        .and_then(|x| u8::try_from(x).ok())
                        .ok_or_else(|| {
                            dataset_err(
                        json_path,
                        format!("label {key:?} has value {n}, expected an integer from 0 to 255"),
                    )
                        })?,
                    key.clone(),
                ),
                Value::Array(_) => {
                    return Err(IoError::Unsupported {
                        path: json_path.to_path_buf(),
                        reason: format!(
                        "label {key:?} is a region ({v}); region-based training is not supported"
                    ),
                    })
                }
                other => {
                    return Err(dataset_err(
                        json_path,
                        format!("label {key:?} has value {other}, expected a name or an integer"),
                    ))
                }
            };
        if let Some(prev) = labels.insert(id, name.clone()) {
            return Err(dataset_err(
                json_path,
                format!("label value {id} is used twice ({prev:?} and {name:?})"),
            ));
        }
    }
    if !labels.contains_key(&0) {
        return Err(dataset_err(
            json_path,
            "\"labels\" has no background (value 0)",
        ));
    }
    Ok(labels)
}

/// {"0": "CT", "1": "T2"} -> ["CT", "T2"], requiring indices 0..n without gaps.
fn parse_channels(value: &Value, field: &str, json_path: &Path) -> Result<Vec<String>> {
    let obj = value
        .as_object()
        .ok_or_else(|| dataset_err(json_path, format!("\"{field}\" is not an object")))?;
    let mut by_index = BTreeMap::new();
    for (key, v) in obj {
        let idx = key.trim().parse::<usize>().map_err(|_| {
            dataset_err(
                json_path,
                format!("\"{field}\" key {key:?} is not a channel index"),
            )
        })?;
        let name = v.as_str().ok_or_else(|| {
            dataset_err(
                json_path,
                format!("\"{field}\" entry {key:?} is not a string"),
            )
        })?;
        by_index.insert(idx, name.to_string());
    }
    if by_index.is_empty() || by_index.keys().copied().ne(0..by_index.len()) {
        return Err(dataset_err(
            json_path,
            format!("\"{field}\" must number channels 0, 1, ... without gaps"),
        ));
    }
    Ok(by_index.into_values().collect())
}

/// Cases from a Decathlon "training" list; returns (file ending, cases).
fn decathlon_cases(
    root: &Path,
    json_path: &Path,
    obj: &Map<String, Value>,
) -> Result<(String, Vec<Case>)> {
    let training = obj
        .get("training")
        .and_then(Value::as_array)
        .ok_or_else(|| dataset_err(json_path, "\"training\" is missing or not a list"))?;
    let listed = format!("listed in {}", json_path.display());
    let resolve = |rel: &str| -> Result<PathBuf> {
        // Decathlon paths look like "./imagesTr/x.nii.gz", relative to the dataset folder.
        let p = root.join(rel.trim_start_matches("./"));
        if p.is_file() {
            Ok(p)
        } else {
            Err(IoError::MissingFile {
                path: p,
                context: listed.clone(),
            })
        }
    };
    let mut cases = Vec::with_capacity(training.len());
    let mut ending = None;
    for (i, entry) in training.iter().enumerate() {
        let image = entry.get("image").and_then(Value::as_str).ok_or_else(|| {
            dataset_err(
                json_path,
                format!("training entry {i} has no \"image\" path"),
            )
        })?;
        let name = file_name(Path::new(image));
        let id = Format::Nifti.strip(&name).ok_or_else(|| {
            dataset_err(
                json_path,
                format!("training entry {i}: {image:?} is not a .nii or .nii.gz file"),
            )
        })?;
        ending.get_or_insert_with(|| name[id.len()..].to_string());
        let label = match entry.get("label") {
            None | Some(Value::Null) => None,
            Some(Value::String(l)) => Some(resolve(l)?),
            Some(other) => {
                return Err(dataset_err(
                    json_path,
                    format!("training entry {i}: \"label\" is {other}, expected a path"),
                ))
            }
        };
        cases.push(Case {
            id: id.to_string(),
            images: vec![resolve(image)?],
            label,
            dicom: None,
        });
    }
    let ending = match obj.get("file_ending").and_then(Value::as_str) {
        Some(e) => e.to_string(),
        None => ending.unwrap_or_else(|| ".nii.gz".to_string()),
    };
    sort_unique(&mut cases, json_path)?;
    Ok((ending, cases))
}

/// Sorts cases by id and refuses duplicate ids, which would silently merge two patients.
fn sort_unique(cases: &mut [Case], path: &Path) -> Result<()> {
    cases.sort_by(|a, b| a.id.cmp(&b.id));
    if let Some(w) = cases.windows(2).find(|w| w[0].id == w[1].id) {
        return Err(dataset_err(
            path,
            format!("case id {:?} appears twice", w[0].id),
        ));
    }
    Ok(())
}

/// Splits "CASE_0001" into ("CASE", 1).
fn split_channel(stem: &str) -> Option<(&str, usize)> {
    let (prefix, digits) = stem.rsplit_once('_')?;
    if prefix.is_empty() || digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((prefix, digits.parse().ok()?))
}

/// Regular files in a folder, sorted, without hidden files (editor and macOS "._" debris).
fn list_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with('.') || !path.is_file() {
            continue;
        }
        out.push((name, path));
    }
    out.sort();
    Ok(out)
}

/// Cases of an nnU-Net v2 folder: imagesTr/CASE_XXXX<ending> per channel, or a DICOM series
/// folder imagesTr/CASE_0000/ (single-channel datasets); labelsTr/CASE<ending>, or for a series
/// folder also a DICOM SEG as labelsTr/CASE/ or labelsTr/CASE.dcm.
fn nnunet_cases(root: &Path, json_path: &Path, channels: usize, ending: &str) -> Result<Vec<Case>> {
    let images_dir = root.join("imagesTr");
    let labels_dir = root.join("labelsTr");
    let mut ids = BTreeSet::new();
    for (name, path) in list_files(&images_dir)? {
        let Some(stem) = name.strip_suffix(ending) else {
            continue;
        };
        match split_channel(stem) {
            Some((id, ch)) if ch < channels => {
                ids.insert(id.to_string());
            }
            Some((_, ch)) => {
                return Err(dataset_err(
                    &path,
                    format!(
                        "channel {ch} but {} declares {channels} channel(s)",
                        json_path.display()
                    ),
                ))
            }
            None => {
                return Err(dataset_err(
                    &path,
                    format!("image not named CASE_XXXX{ending} (nnU-Net v2 layout)"),
                ))
            }
        }
    }
    let folders = series_folders(&images_dir, json_path, channels)?;
    ids.extend(folders.keys().cloned());
    if ids.is_empty() {
        return Err(dataset_err(
            &images_dir,
            format!("no images named CASE_0000{ending} and no DICOM series folders CASE_0000/"),
        ));
    }
    // DICOM cases read every file's header to find their series: in parallel.
    let ids: Vec<String> = ids.into_iter().collect();
    ids.par_iter()
        .map(|id| match folders.get(id) {
            Some(folder) => dicom_case(id, folder, &labels_dir, ending),
            None => file_case(id, &images_dir, &labels_dir, json_path, channels, ending),
        })
        .collect()
}

/// The DICOM series folders of imagesTr (CASE_0000/), by case id.
fn series_folders(
    images_dir: &Path,
    json_path: &Path,
    channels: usize,
) -> Result<BTreeMap<String, PathBuf>> {
    let mut folders = BTreeMap::new();
    for entry in fs::read_dir(images_dir).map_err(|e| io_error(images_dir, e))? {
        let entry = entry.map_err(|e| io_error(images_dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with('.') || !path.is_dir() {
            continue;
        }
        // Other folders are left alone, as files of other endings are: datasets made before
        // series folders were read may keep backups or notes in subfolders.
        match split_channel(&name) {
            Some((id, 0)) if channels == 1 => {
                folders.insert(id.to_string(), path);
            }
            Some((_, ch)) if channels == 1 => {
                return Err(dataset_err(
                    &path,
                    format!(
                        "channel {ch} but {} declares 1 channel; a DICOM series folder is \
                         named CASE_0000",
                        json_path.display()
                    ),
                ))
            }
            Some(_) => {
                return Err(dataset_err(
                    &path,
                    format!(
                        "a DICOM series folder is read as the one channel of a single-channel \
                         dataset (CASE_0000/), but {} declares {channels} channel(s)",
                        json_path.display()
                    ),
                ))
            }
            None => {}
        }
    }
    Ok(folders)
}

/// A case of image files, one per channel, and its label file.
fn file_case(
    id: &str,
    images_dir: &Path,
    labels_dir: &Path,
    json_path: &Path,
    channels: usize,
    ending: &str,
) -> Result<Case> {
    let images = (0..channels)
        .map(|ch| {
            let p = images_dir.join(format!("{id}_{ch:04}{ending}"));
            if p.is_file() {
                Ok(p)
            } else {
                Err(IoError::MissingFile {
                    path: p,
                    context: format!(
                        "channel {ch} of case {id}; {} declares {channels} channel(s)",
                        json_path.display()
                    ),
                })
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let label = labels_dir.join(format!("{id}{ending}"));
    if !label.is_file() {
        return Err(IoError::MissingFile {
            path: label,
            context: format!("label of training case {id}"),
        });
    }
    Ok(Case {
        id: id.to_string(),
        images,
        label: Some(label),
        dicom: None,
    })
}

/// A case whose image is the one DICOM image series under `folder`, and its label: NIfTI (or the
/// dataset's file ending) or a DICOM SEG, as a folder or a `.dcm` file.
fn dicom_case(id: &str, folder: &Path, labels_dir: &Path, ending: &str) -> Result<Case> {
    if let Some(file) = folder
        .parent()
        .map(|dir| dir.join(format!("{id}_0000{ending}")))
        .filter(|f| f.is_file())
    {
        return Err(dataset_err(
            folder,
            format!(
                "case {id} has both this series folder and {}; keep one",
                file.display()
            ),
        ));
    }
    let found = find_dicom_series(folder)?;
    let series = match <[DicomSeries; 1]>::try_from(found.series) {
        Ok([series]) => series,
        Err(series) if series.is_empty() => {
            let why = match found.notes.first() {
                Some(note) => format!(" ({} note(s), first: {note})", found.notes.len()),
                None => String::new(),
            };
            return Err(dataset_err(
                folder,
                format!("no DICOM image series in this case folder{why}"),
            ));
        }
        Err(series) => {
            let ids: Vec<&str> = series.iter().map(|s| s.id.as_str()).collect();
            return Err(dataset_err(
                folder,
                format!(
                    "{} image series in one case folder ({}); put each series in a case folder \
                     of its own",
                    series.len(),
                    ids.join(", ")
                ),
            ));
        }
    };
    let candidates = [
        labels_dir.join(format!("{id}{ending}")),
        labels_dir.join(id),
        labels_dir.join(format!("{id}.dcm")),
    ];
    let mut present: Vec<&PathBuf> = candidates
        .iter()
        .filter(|p| p.is_file() || (p.is_dir() && p.file_name() == Some(id.as_ref())))
        .collect();
    // A ".dcm" file ending makes the first and last candidates one file.
    present.sort();
    present.dedup();
    let label = match present.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(IoError::MissingFile {
                path: candidates[0].clone(),
                context: format!(
                    "label of training case {id}, or a DICOM SEG as {} or {}",
                    candidates[1].display(),
                    candidates[2].display()
                ),
            })
        }
        [first, second, ..] => {
            return Err(dataset_err(
                first,
                format!(
                    "case {id} has two labels, this and {}; keep one",
                    second.display()
                ),
            ))
        }
    };
    Ok(Case {
        id: id.to_string(),
        images: vec![folder.to_path_buf()],
        label: Some(label),
        dicom: Some(series),
    })
}

/// Cases for prediction: a single file, or a folder of .nii/.nii.gz files, with CASE_0000, CASE_0001, ...
/// grouped into one multi-channel case "CASE" and other names becoming a case named after the file.
pub fn find_cases(input: &Path, file_ending_hint: Option<&str>) -> Result<Vec<Case>> {
    let meta = fs::metadata(input).map_err(|e| io_error(input, e))?;
    let files = if meta.is_file() {
        let name = file_name(input);
        vec![(name, input.to_path_buf())]
    } else {
        list_files(input)?
            .into_iter()
            .filter(|(name, _)| match file_ending_hint {
                Some(e) => name.ends_with(e) && name.len() > e.len(),
                None => Format::Nifti.strip(name).is_some(),
            })
            .collect()
    };
    if files.is_empty() {
        let what = file_ending_hint.unwrap_or(".nii/.nii.gz");
        return Err(dataset_err(input, format!("no {what} files found")));
    }
    let stem_of = |name: &str| -> String {
        if let Some(s) = file_ending_hint.and_then(|e| name.strip_suffix(e)) {
            return s.to_string();
        }
        if let Some(s) = strip_format_ending(name) {
            return s.to_string();
        }
        // A single file with another extension: the reader still detects NIfTI by content.
        Path::new(name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| name.to_string())
    };
    // prefix -> channel -> file
    let mut groups: BTreeMap<String, BTreeMap<usize, PathBuf>> = BTreeMap::new();
    let mut plain: Vec<(String, PathBuf)> = Vec::new();
    for (name, path) in &files {
        let stem = stem_of(name);
        match split_channel(&stem) {
            Some((prefix, ch)) => {
                groups
                    .entry(prefix.to_string())
                    .or_default()
                    .insert(ch, path.clone());
            }
            None => plain.push((stem, path.clone())),
        }
    }
    let mut cases = Vec::new();
    for (prefix, chans) in groups {
        if !chans.contains_key(&0) {
            // "scan_2019" is a name with a year in it, not channel 2019: without _0000 it is no channel set.
            for (ch, path) in chans {
                plain.push((format!("{prefix}_{ch:04}"), path));
            }
            continue;
        }
        if chans.keys().copied().ne(0..chans.len()) {
            let found: Vec<String> = chans.keys().map(|c| format!("_{c:04}")).collect();
            return Err(dataset_err(
                input,
                format!(
                    "case {prefix}: channel files {} are not numbered 0, 1, ... without gaps",
                    found.join(", ")
                ),
            ));
        }
        cases.push(Case {
            id: prefix,
            images: chans.into_values().collect(),
            label: None,
            dicom: None,
        });
    }
    for (id, path) in plain {
        cases.push(Case {
            id,
            images: vec![path],
            label: None,
            dicom: None,
        });
    }
    sort_unique(&mut cases, input)?;
    if let Some(odd) = cases
        .iter()
        .find(|c| c.images.len() != cases[0].images.len())
    {
        return Err(dataset_err(
            input,
            format!(
                "cases have different numbers of channels: {} has {}, {} has {}",
                cases[0].id,
                cases[0].images.len(),
                odd.id,
                odd.images.len()
            ),
        ));
    }
    Ok(cases)
}

/// The DICOM series under a folder as prediction cases, with the notes on what was skipped.
#[derive(Debug, Clone, Default)]
pub struct DicomCases {
    /// One single-channel case per image series, named by the series' id, sorted.
    pub cases: Vec<Case>,
    /// One line per skipped file or series.
    pub notes: Vec<String>,
}

/// Cases for prediction from the DICOM series under `dir` at any depth (see
/// [`find_dicom_series`]): each series is one single-channel case.
pub fn find_dicom_cases(dir: &Path) -> Result<DicomCases> {
    let folder = find_dicom_series(dir)?;
    let cases = folder
        .series
        .into_iter()
        .map(|series| Case {
            id: series.id.clone(),
            images: series.files.first().cloned().into_iter().collect(),
            label: None,
            dicom: Some(series),
        })
        .collect();
    Ok(DicomCases {
        cases,
        notes: folder.notes,
    })
}
