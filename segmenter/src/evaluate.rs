//! Evaluation of predicted label maps against references: per-case, per-class Dice and IoU,
//! written as nnU-Net's `summary.json` and printed as a table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use segmenter_io::{read_dataset_labels, read_nifti};
use serde::Serialize;
use serde_json::{json, Value};

/// Dice of one class, nnU-Net's convention: NaN when both reference and prediction are empty.
pub fn dice(tp: u64, fp: u64, fn_: u64) -> f64 {
    if tp + fp + fn_ == 0 {
        f64::NAN
    } else {
        2.0 * tp as f64 / (2 * tp + fp + fn_) as f64
    }
}

/// Intersection over union, NaN when both are empty.
pub fn iou(tp: u64, fp: u64, fn_: u64) -> f64 {
    if tp + fp + fn_ == 0 {
        f64::NAN
    } else {
        tp as f64 / (tp + fp + fn_) as f64
    }
}

/// Confusion counts of one class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Voxels of the class in both.
    pub tp: u64,
    /// Predicted but not in the reference.
    pub fp: u64,
    /// In the reference but not predicted.
    pub fn_: u64,
    /// In neither.
    pub tn: u64,
}

/// Confusion counts for every class id `0..classes`.
pub fn confusion(pred: &[u8], reference: &[u8], classes: usize) -> Vec<Counts> {
    let mut counts = vec![Counts::default(); classes];
    let total = pred.len() as u64;
    for (&p, &r) in pred.iter().zip(reference) {
        let (p, r) = (p as usize, r as usize);
        if p == r {
            if p < classes {
                counts[p].tp += 1;
            }
        } else {
            if p < classes {
                counts[p].fp += 1;
            }
            if r < classes {
                counts[r].fn_ += 1;
            }
        }
    }
    for c in &mut counts {
        c.tn = total - c.tp - c.fp - c.fn_;
    }
    counts
}

/// Dice per class id (index = class), background included.
pub fn dice_per_class(pred: &[u8], reference: &[u8], classes: usize) -> Vec<f64> {
    confusion(pred, reference, classes)
        .iter()
        .map(|c| dice(c.tp, c.fp, c.fn_))
        .collect()
}

/// The result of an evaluation.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Per case: files and per-class metrics.
    pub metric_per_case: Vec<Value>,
    /// Per class id (as a string): mean of each metric over cases, NaN cases left out.
    pub mean: BTreeMap<String, BTreeMap<String, Option<f64>>>,
    /// Mean over foreground classes of the per-class means.
    pub foreground_mean: BTreeMap<String, Option<f64>>,
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

fn read_labels(path: &Path) -> Result<(Vec<u8>, [usize; 3])> {
    let volume = read_nifti(path)?;
    let labels = volume
        .data
        .iter()
        .map(|&v| {
            if (0.0..=255.0).contains(&v) && v.fract() == 0.0 {
                Ok(v as u8)
            } else {
                bail!(
                    "{}: value {v} is not a label (expected whole numbers 0..=255)",
                    path.display()
                )
            }
        })
        .collect::<Result<Vec<u8>>>()?;
    Ok((labels, volume.shape))
}

/// Label-map files in a folder (`.nii`, `.nii.gz`), sorted by name.
fn label_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot read folder", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            !name.starts_with('.') && (name.ends_with(".nii.gz") || name.ends_with(".nii"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Evaluates every reference in `ref_dir` against the same-named prediction in `pred_dir`.
pub fn evaluate(pred_dir: &Path, ref_dir: &Path, dataset_json: &Path) -> Result<Summary> {
    let labels = read_dataset_labels(dataset_json)?;
    let classes = labels.keys().max().map_or(1, |&m| m as usize + 1);
    let refs = label_files(ref_dir)?;
    if refs.is_empty() {
        bail!("{}: no .nii or .nii.gz reference files", ref_dir.display());
    }
    let missing: Vec<String> = refs
        .iter()
        .filter(|r| !pred_dir.join(r.file_name().expect("file")).exists())
        .map(|r| r.file_name().expect("file").to_string_lossy().into_owned())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{}: no prediction for {} reference case(s): {}",
            pred_dir.display(),
            missing.len(),
            missing.join(", ")
        );
    }
    let foreground: Vec<u8> = labels.keys().copied().filter(|&k| k != 0).collect();
    let per_case: Vec<(PathBuf, PathBuf, Vec<Counts>)> = refs
        .par_iter()
        .map(|reference| {
            let pred = pred_dir.join(reference.file_name().expect("file"));
            let (r, rshape) = read_labels(reference)?;
            let (p, pshape) = read_labels(&pred)?;
            if rshape != pshape {
                bail!(
                    "{}: shape {:?} does not match reference shape {:?} ({})",
                    pred.display(),
                    pshape,
                    rshape,
                    reference.display()
                );
            }
            Ok((reference.clone(), pred, confusion(&p, &r, classes)))
        })
        .collect::<Result<_>>()?;

    let mut metric_per_case = Vec::new();
    let mut dice_by_class: BTreeMap<u8, Vec<f64>> = BTreeMap::new();
    let mut iou_by_class: BTreeMap<u8, Vec<f64>> = BTreeMap::new();
    for (reference, pred, counts) in &per_case {
        let mut metrics = serde_json::Map::new();
        for &k in &foreground {
            let c = counts[k as usize];
            let (d, j) = (dice(c.tp, c.fp, c.fn_), iou(c.tp, c.fp, c.fn_));
            dice_by_class.entry(k).or_default().push(d);
            iou_by_class.entry(k).or_default().push(j);
            metrics.insert(
                k.to_string(),
                json!({"Dice": finite(d), "IoU": finite(j), "TP": c.tp, "FP": c.fp, "FN": c.fn_, "TN": c.tn,
                       "n_pred": c.tp + c.fp, "n_ref": c.tp + c.fn_}),
            );
        }
        metric_per_case.push(json!({
            "reference_file": reference.display().to_string(),
            "prediction_file": pred.display().to_string(),
            "metrics": metrics,
        }));
    }
    let mean_of = |v: &[f64]| {
        let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        if f.is_empty() {
            f64::NAN
        } else {
            f.iter().sum::<f64>() / f.len() as f64
        }
    };
    let mut mean = BTreeMap::new();
    for &k in &foreground {
        let mut m = BTreeMap::new();
        m.insert("Dice".to_string(), finite(mean_of(&dice_by_class[&k])));
        m.insert("IoU".to_string(), finite(mean_of(&iou_by_class[&k])));
        mean.insert(k.to_string(), m);
    }
    let mut foreground_mean = BTreeMap::new();
    for metric in ["Dice", "IoU"] {
        let values: Vec<f64> = mean
            .values()
            .map(|m| m[metric].unwrap_or(f64::NAN))
            .collect();
        foreground_mean.insert(metric.to_string(), finite(mean_of(&values)));
    }
    Ok(Summary {
        metric_per_case,
        mean,
        foreground_mean,
    })
}

/// Writes `summary.json` into `out_dir` (atomically) and returns the table printed for humans.
pub fn write_report(
    summary: &Summary,
    labels: &BTreeMap<u8, String>,
    out_dir: &Path,
) -> Result<String> {
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("{}: cannot create folder", out_dir.display()))?;
    crate::fsutil::write_atomic(
        &out_dir.join("summary.json"),
        serde_json::to_string_pretty(summary)?.as_bytes(),
    )?;
    Ok(table(summary, labels))
}

/// A one-screen table of mean Dice and IoU per class.
pub fn table(summary: &Summary, labels: &BTreeMap<u8, String>) -> String {
    let fmt = |v: Option<f64>| v.map_or("   n/a".to_string(), |x| format!("{x:6.4}"));
    let mut out = format!(
        "{} cases\n{:<4} {:<24} {:>6} {:>6}\n",
        summary.metric_per_case.len(),
        "id",
        "class",
        "Dice",
        "IoU"
    );
    for (k, m) in &summary.mean {
        let name = k
            .parse::<u8>()
            .ok()
            .and_then(|id| labels.get(&id))
            .map_or("", String::as_str);
        out += &format!(
            "{:<4} {:<24} {} {}\n",
            k,
            name,
            fmt(m["Dice"]),
            fmt(m["IoU"])
        );
    }
    out += &format!(
        "{:<4} {:<24} {} {}\n",
        "",
        "foreground mean",
        fmt(summary.foreground_mean["Dice"]),
        fmt(summary.foreground_mean["IoU"])
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dice_and_iou_on_hand_made_maps() {
        // Class 1: reference 4 voxels, prediction 2 of them + 1 extra.
        let reference = [1, 1, 1, 1, 0, 0, 2, 2];
        let pred = [1, 1, 0, 0, 1, 0, 2, 0];
        let c = confusion(&pred, &reference, 3);
        assert_eq!(
            c[1],
            Counts {
                tp: 2,
                fp: 1,
                fn_: 2,
                tn: 3
            }
        );
        assert!((dice(2, 1, 2) - 4.0 / 7.0).abs() < 1e-12);
        assert!((iou(2, 1, 2) - 2.0 / 5.0).abs() < 1e-12);
        let d = dice_per_class(&pred, &reference, 3);
        assert!((d[2] - 2.0 / 3.0).abs() < 1e-12);
        // Both empty: NaN (left out of means); prediction of an absent class: 0.
        assert!(dice_per_class(&[0, 0], &[0, 0], 2)[1].is_nan());
        assert_eq!(dice_per_class(&[1, 0], &[0, 0], 2)[1], 0.0);
    }
}
