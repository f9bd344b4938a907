//! Which cases a prediction run takes: a scan, a folder or a list of them, one shard of them, and
//! the file name each one's label map gets. A folder without scans of the model's file ending is
//! searched for DICOM series (at any depth), each series one case.

use std::path::Path;

use anyhow::{bail, Context, Result};
use segmenter_io::{find_cases, find_dicom_cases, Case};

/// The cases of a scan or a folder: its scans of `file_ending`, or else its DICOM series, whose
/// skipped files and series are listed on stderr, one line each.
fn cases_of(input: &Path, file_ending: &str) -> Result<Vec<Case>> {
    let error = match find_cases(input, Some(file_ending)) {
        Ok(cases) => return Ok(cases),
        Err(e) if input.is_dir() => e,
        Err(e) => return Err(e.into()),
    };
    let found = find_dicom_cases(input)?;
    if found.cases.is_empty() {
        bail!("{error}, nor DICOM image series");
    }
    for note in &found.notes {
        eprintln!("note: {note}");
    }
    Ok(found.cases)
}

/// The cases of a scan, a folder (scans, or DICOM series), or a text file listing scans or folders
/// (one per line, `#` comments).
pub fn gather_cases(input: &Path, file_ending: &str) -> Result<Vec<Case>> {
    let is_list = input.is_file() && input.extension().is_some_and(|e| e == "txt" || e == "lst");
    if !is_list {
        return cases_of(input, file_ending);
    }
    let text = std::fs::read_to_string(input)
        .with_context(|| format!("{}: cannot read list", input.display()))?;
    let base = input.parent().unwrap_or(Path::new("."));
    let mut cases = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let path = base.join(line);
        let found = cases_of(&path, file_ending)
            .with_context(|| format!("{}:{}: {}", input.display(), n + 1, line))?;
        cases.extend(found);
    }
    cases.sort_by(|a, b| a.id.cmp(&b.id));
    if let Some(w) = cases.windows(2).find(|w| w[0].id == w[1].id) {
        bail!("{}: case '{}' is listed twice", input.display(), w[0].id);
    }
    Ok(cases)
}

/// The cases of shard `(index, count)`: every `count`-th case from `index` on, so shards are
/// disjoint, cover every case, and stay balanced when case sizes drift along the sorted order.
pub fn shard_cases<T>(cases: Vec<T>, shard: Option<(usize, usize)>) -> Vec<T> {
    match shard {
        None => cases,
        Some((i, n)) => cases
            .into_iter()
            .enumerate()
            .filter(|(k, _)| k % n == i)
            .map(|(_, c)| c)
            .collect(),
    }
}

/// Parses `--shard i/n` (0-based `i < n`), e.g. `$SLURM_ARRAY_TASK_ID/8`.
pub fn parse_shard(text: &str) -> std::result::Result<(usize, usize), String> {
    let (i, n) = text
        .split_once('/')
        .ok_or_else(|| format!("--shard '{text}': expected i/n, e.g. 0/4"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("--shard '{text}': '{v}' is not a whole number"))
    };
    let (i, n) = (parse(i)?, parse(n)?);
    if n == 0 || i >= n {
        return Err(format!("--shard '{text}': need 0 <= i < n"));
    }
    Ok((i, n))
}

/// The label map's file name: the case id with the input's kind of ending (`.nii.gz` for a DICOM
/// series).
pub fn output_name(case: &Case) -> String {
    if case.dicom.is_some() {
        return format!("{}.nii.gz", case.id);
    }
    let first = case.images[0]
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ending = if first.ends_with(".nii.gz") {
        ".nii.gz"
    } else if segmenter_io::is_image2d(&case.images[0]) {
        // 2D datasets: the label map is an image of the input's kind (.png, .tif, .tiff).
        &first[first.rfind('.').unwrap_or(first.len())..]
    } else {
        ".nii"
    };
    format!("{}{ending}", case.id)
}

/// Removes temporary files left in `dir` by a killed run while it was writing `file_name`
/// (`.{file_name}.tmp-*`); only this case's, so other shards writing into the same folder are
/// left alone.
pub fn remove_stale_temporaries(dir: &Path, file_name: &str) {
    let prefix = format!(".{file_name}.tmp");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_reject_nonsense() {
        assert_eq!(parse_shard("0/4"), Ok((0, 4)));
        assert_eq!(parse_shard("3/4"), Ok((3, 4)));
        assert!(parse_shard("4/4").is_err());
        assert!(parse_shard("1/0").is_err());
        assert!(parse_shard("a/2").is_err());
        assert!(parse_shard("2").is_err());
    }
}
