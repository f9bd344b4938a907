//! Evaluation of predicted label maps against references: per-case, per-class Dice, IoU, HD95,
//! NSD and volumes, written as nnU-Net's `summary.json` plus `summary.csv`, and printed as a table.
//!
//! Conventions when a mask is empty (tested here and in [`crate::distance`]):
//! - both reference and prediction empty: Dice, IoU, HD95 and NSD are NaN (`null` in JSON, empty in
//!   CSV) and left out of means, as nnU-Net does for Dice;
//! - exactly one empty: Dice 0, IoU 0, NSD 0, and HD95 NaN (`null`), since no distance between a
//!   surface and nothing is defined. Such a case is therefore left out of the HD95 mean; it still
//!   counts fully in the Dice and NSD means.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use segmenter_io::{is_image2d, read_dataset_labels, read_volume};
use serde::Serialize;
use serde_json::{json, Value};

use crate::distance::{percentile, surface_metrics, SurfaceMetrics};

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

/// Options of [`evaluate_with`].
#[derive(Clone, Debug, PartialEq)]
pub struct EvalOptions {
    /// NSD tolerance (mm) for classes not in `tolerance_mm`.
    pub default_tolerance_mm: f64,
    /// NSD tolerance (mm) per class id, for structures whose acceptable error differs.
    pub tolerance_mm: HashMap<u8, f64>,
}

impl Default for EvalOptions {
    /// 1 mm for every class.
    fn default() -> Self {
        EvalOptions {
            default_tolerance_mm: 1.0,
            tolerance_mm: HashMap::new(),
        }
    }
}

impl EvalOptions {
    /// The NSD tolerance (mm) of one class.
    pub fn tolerance(&self, class: u8) -> f64 {
        self.tolerance_mm
            .get(&class)
            .copied()
            .unwrap_or(self.default_tolerance_mm)
    }
}

/// Labels, shape and voxel spacing (mm) of a label map.
type Labels = (Vec<u8>, [usize; 3], [f64; 3]);

fn read_labels(path: &Path) -> Result<Labels> {
    let volume = read_volume(path)?;
    let spacing = volume.header.spacing();
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
    Ok((labels, volume.shape, spacing))
}

/// Label-map files in a folder (`.nii`, `.nii.gz`, or 2D `.png`/`.tif`/`.tiff`), sorted by name.
fn label_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot read folder", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            !name.starts_with('.')
                && (name.ends_with(".nii.gz") || name.ends_with(".nii") || is_image2d(p))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Evaluates every reference in `ref_dir` against the same-named prediction in `pred_dir`, with
/// the default options (NSD at 1 mm).
pub fn evaluate(pred_dir: &Path, ref_dir: &Path, dataset_json: &Path) -> Result<Summary> {
    evaluate_with(pred_dir, ref_dir, dataset_json, &EvalOptions::default())
}

/// One evaluated case: files, voxel volume (mm³), confusion counts per class id, surface metrics
/// per foreground class.
type CaseResult = (PathBuf, PathBuf, f64, Vec<Counts>, Vec<SurfaceMetrics>);

/// Evaluates every reference in `ref_dir` against the same-named prediction in `pred_dir`.
/// Distances use the reference's voxel spacing.
pub fn evaluate_with(
    pred_dir: &Path,
    ref_dir: &Path,
    dataset_json: &Path,
    options: &EvalOptions,
) -> Result<Summary> {
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
    let per_case: Vec<CaseResult> = refs
        .par_iter()
        .map(|reference| {
            let pred = pred_dir.join(reference.file_name().expect("file"));
            let (r, rshape, spacing) = read_labels(reference)?;
            let (p, pshape, _) = read_labels(&pred)?;
            if rshape != pshape {
                bail!(
                    "{}: shape {:?} does not match reference shape {:?} ({})",
                    pred.display(),
                    pshape,
                    rshape,
                    reference.display()
                );
            }
            let surface = surface_metrics(&p, &r, rshape, spacing, &foreground, |k| {
                options.tolerance(k)
            });
            let voxel_mm3 = spacing.iter().product::<f64>();
            Ok((
                reference.clone(),
                pred,
                voxel_mm3,
                confusion(&p, &r, classes),
                surface,
            ))
        })
        .collect::<Result<_>>()?;

    let mut metric_per_case = Vec::new();
    // Per metric name, per class: one value per case (NaN where undefined).
    let mut values: BTreeMap<&str, BTreeMap<u8, Vec<f64>>> = BTreeMap::new();
    for (reference, pred, voxel_mm3, counts, surface) in &per_case {
        let mut metrics = serde_json::Map::new();
        for (&k, s) in foreground.iter().zip(surface) {
            let c = counts[k as usize];
            let (n_pred, n_ref) = (c.tp + c.fp, c.tp + c.fn_);
            let row = [
                ("Dice", dice(c.tp, c.fp, c.fn_)),
                ("IoU", iou(c.tp, c.fp, c.fn_)),
                ("HD95", s.hd95_mm),
                ("NSD", s.nsd),
                ("volume_ref_mm3", n_ref as f64 * voxel_mm3),
                ("volume_pred_mm3", n_pred as f64 * voxel_mm3),
            ];
            let mut m = serde_json::Map::new();
            for (name, v) in row {
                values
                    .entry(name)
                    .or_default()
                    .entry(k)
                    .or_default()
                    .push(v);
                m.insert(name.to_string(), json!(finite(v)));
            }
            m.insert("NSD_tolerance_mm".into(), json!(s.tolerance_mm));
            for (name, v) in [
                ("TP", c.tp),
                ("FP", c.fp),
                ("FN", c.fn_),
                ("TN", c.tn),
                ("n_pred", n_pred),
                ("n_ref", n_ref),
            ] {
                m.insert(name.into(), json!(v));
            }
            metrics.insert(k.to_string(), Value::Object(m));
        }
        metric_per_case.push(json!({
            "reference_file": reference.display().to_string(),
            "prediction_file": pred.display().to_string(),
            "metrics": metrics,
        }));
    }
    let mut mean = BTreeMap::new();
    for &k in &foreground {
        let m: BTreeMap<String, Option<f64>> = values
            .iter()
            .map(|(name, by_class)| (name.to_string(), finite(nan_mean(&by_class[&k]))))
            .collect();
        mean.insert(k.to_string(), m);
    }
    let mut foreground_mean = BTreeMap::new();
    for metric in ["Dice", "IoU", "HD95", "NSD"] {
        let values: Vec<f64> = mean
            .values()
            .map(|m| m[metric].unwrap_or(f64::NAN))
            .collect();
        foreground_mean.insert(metric.to_string(), finite(nan_mean(&values)));
    }
    Ok(Summary {
        metric_per_case,
        mean,
        foreground_mean,
    })
}

/// Mean of the finite values, NaN if there are none (undefined cases are left out, as nnU-Net does).
pub fn nan_mean(v: &[f64]) -> f64 {
    let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if f.is_empty() {
        f64::NAN
    } else {
        f.iter().sum::<f64>() / f.len() as f64
    }
}

/// Writes `summary.json` and `summary.csv` into `out_dir` (atomically) and returns the table
/// printed for humans.
pub fn write_report(
    summary: &Summary,
    labels: &BTreeMap<u8, String>,
    out_dir: &Path,
) -> Result<String> {
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("{}: cannot create folder", out_dir.display()))?;
    segmenter_io::write_bytes_atomic(
        &out_dir.join("summary.json"),
        serde_json::to_string_pretty(summary)?.as_bytes(),
    )?;
    segmenter_io::write_bytes_atomic(
        &out_dir.join("summary.csv"),
        csv(summary, labels).as_bytes(),
    )?;
    Ok(table(summary, labels))
}

/// Case id of a label-map file: its name without `.nii.gz` / `.nii`.
fn case_id(file: &str) -> String {
    let name = Path::new(file)
        .file_name()
        .map_or_else(|| file.to_string(), |n| n.to_string_lossy().into_owned());
    name.strip_suffix(".nii.gz")
        .or_else(|| name.strip_suffix(".nii"))
        .or_else(|| {
            let image = Path::new(&name);
            is_image2d(image).then(|| &name[..name.rfind('.').unwrap_or(name.len())])
        })
        .unwrap_or(&name)
        .to_string()
}

/// Quotes a CSV field when it holds a separator, quote or line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `summary.csv`: one row per case and foreground class; undefined values are empty cells.
pub fn csv(summary: &Summary, labels: &BTreeMap<u8, String>) -> String {
    const COLUMNS: [&str; 7] = [
        "Dice",
        "IoU",
        "HD95",
        "NSD",
        "NSD_tolerance_mm",
        "volume_ref_mm3",
        "volume_pred_mm3",
    ];
    let mut out = String::from(
        "case,class_id,class_name,dice,iou,hd95_mm,nsd,nsd_tolerance_mm,volume_ref_mm3,volume_pred_mm3\n",
    );
    for case in &summary.metric_per_case {
        let id = case_id(case["reference_file"].as_str().unwrap_or_default());
        let Some(metrics) = case["metrics"].as_object() else {
            continue;
        };
        let mut classes: Vec<(u8, &Value)> = metrics
            .iter()
            .filter_map(|(k, m)| Some((k.parse().ok()?, m)))
            .collect();
        classes.sort_by_key(|&(k, _)| k);
        for (k, m) in classes {
            let name = labels.get(&k).map_or("", String::as_str);
            let mut row = vec![csv_field(&id), k.to_string(), csv_field(name)];
            row.extend(
                COLUMNS
                    .iter()
                    .map(|c| m[*c].as_f64().map_or(String::new(), |v| v.to_string())),
            );
            out += &row.join(",");
            out.push('\n');
        }
    }
    out
}

/// A one-screen table per class: Dice mean, median and interquartile range over cases, and mean IoU,
/// HD95 (mm) and NSD.
pub fn table(summary: &Summary, labels: &BTreeMap<u8, String>) -> String {
    let fmt = |v: Option<f64>| v.map_or("   n/a".to_string(), |x| format!("{x:6.4}"));
    let fmt_mm = |v: Option<f64>| v.map_or("    n/a".to_string(), |x| format!("{x:7.2}"));
    let mut out = format!(
        "{} cases. Dice: mean, median and interquartile range over cases; IoU, HD95 (mm), NSD: means.\n{:<4} {:<20} {:>6} {:>6} {:>6} {:>6} {:>7} {:>6}\n",
        summary.metric_per_case.len(),
        "id",
        "class",
        "Dice",
        "median",
        "IQR",
        "IoU",
        "HD95",
        "NSD"
    );
    for (k, m) in &summary.mean {
        let name: String = k
            .parse::<u8>()
            .ok()
            .and_then(|id| labels.get(&id))
            .map_or("", String::as_str)
            .chars()
            .take(20)
            .collect();
        let mut dices: Vec<f64> = summary
            .metric_per_case
            .iter()
            .filter_map(|c| c["metrics"][k]["Dice"].as_f64())
            .collect();
        let mut q = |p| finite(percentile(&mut dices, p));
        let (q1, median, q3) = (q(25.0), q(50.0), q(75.0));
        let iqr = q1.zip(q3).map(|(a, b)| b - a);
        out += &format!(
            "{:<4} {:<20} {} {} {} {} {} {}\n",
            k,
            name,
            fmt(m["Dice"]),
            fmt(median),
            fmt(iqr),
            fmt(m["IoU"]),
            fmt_mm(m["HD95"]),
            fmt(m["NSD"])
        );
    }
    let f = &summary.foreground_mean;
    out += &format!(
        "{:<4} {:<20} {} {:>6} {:>6} {} {} {}\n",
        "",
        "foreground mean",
        fmt(f["Dice"]),
        "",
        "",
        fmt(f["IoU"]),
        fmt_mm(f["HD95"]),
        fmt(f["NSD"])
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

    /// Writes a label map with the given spacing.
    fn write(path: &Path, shape: [usize; 3], spacing: [f64; 3], labels: &[u8]) {
        let header = segmenter_io::NiftiHeader::new(shape, spacing).unwrap();
        segmenter_io::write_labels(path, &header, labels).unwrap();
    }

    #[test]
    fn report_has_distances_volumes_and_empty_conventions() {
        let dir = tempfile::tempdir().unwrap();
        let (refs, preds, out) = (
            dir.path().join("ref"),
            dir.path().join("pred"),
            dir.path().join("out"),
        );
        std::fs::create_dir_all(&refs).unwrap();
        std::fs::create_dir_all(&preds).unwrap();
        let dataset = dir.path().join("dataset.json");
        std::fs::write(
            &dataset,
            r#"{"labels": {"0": "background", "1": "liver", "2": "tumour, left"}}"#,
        )
        .unwrap();
        // 0.5 × 1 × 2 mm voxels: 1 mm³ each.
        let (shape, spacing) = ([6, 5, 4], [0.5, 1.0, 2.0]);
        let cube = |x0: usize, label: u8, v: &mut Vec<u8>| {
            for z in 1..3 {
                for y in 1..3 {
                    for x in x0..x0 + 2 {
                        v[x + 6 * (y + 5 * z)] = label;
                    }
                }
            }
        };
        let mut r = vec![0u8; 120];
        cube(1, 1, &mut r);
        // Case a: class 1 shifted by one voxel along x (0.5 mm); class 2 absent from both.
        let mut p = vec![0u8; 120];
        cube(2, 1, &mut p);
        write(&refs.join("a.nii.gz"), shape, spacing, &r);
        write(&preds.join("a.nii.gz"), shape, spacing, &p);
        // Case b: class 1 exact; class 2 (one voxel) in the reference only.
        let mut rb = r.clone();
        rb[5 + 6 * (4 + 5 * 3)] = 2;
        write(&refs.join("b.nii.gz"), shape, spacing, &rb);
        write(&preds.join("b.nii.gz"), shape, spacing, &r);

        let options = EvalOptions {
            default_tolerance_mm: 1.0,
            tolerance_mm: HashMap::from([(1, 0.4)]),
        };
        let summary = evaluate_with(&preds, &refs, &dataset, &options).unwrap();
        let labels = read_dataset_labels(&dataset).unwrap();
        let table = write_report(&summary, &labels, &out).unwrap();
        let json: Value =
            serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
        let close = |v: &Value, want: f64| {
            assert!((v.as_f64().unwrap() - want).abs() < 1e-12, "{v} vs {want}")
        };
        let a = &json["metric_per_case"][0]["metrics"];
        let b = &json["metric_per_case"][1]["metrics"];
        // Half the cube overlaps; the shifted half is 0.5 mm away, beyond 0.4 mm.
        close(&a["1"]["Dice"], 0.5);
        close(&a["1"]["HD95"], 0.5);
        close(&a["1"]["NSD"], 0.5);
        close(&a["1"]["NSD_tolerance_mm"], 0.4);
        close(&a["1"]["volume_ref_mm3"], 8.0);
        close(&a["1"]["volume_pred_mm3"], 8.0);
        // Both empty: undefined.
        for m in ["Dice", "IoU", "HD95", "NSD"] {
            assert!(a["2"][m].is_null(), "{m}: {}", a["2"]);
        }
        close(&a["2"]["NSD_tolerance_mm"], 1.0);
        // Exact.
        close(&b["1"]["Dice"], 1.0);
        close(&b["1"]["HD95"], 0.0);
        close(&b["1"]["NSD"], 1.0);
        // Missed structure: Dice 0, NSD 0, HD95 null.
        close(&b["2"]["Dice"], 0.0);
        close(&b["2"]["NSD"], 0.0);
        assert!(b["2"]["HD95"].is_null());
        close(&b["2"]["volume_ref_mm3"], 1.0);
        close(&b["2"]["volume_pred_mm3"], 0.0);
        // Means skip undefined values.
        close(&json["mean"]["1"]["Dice"], 0.75);
        close(&json["mean"]["1"]["HD95"], 0.25);
        close(&json["mean"]["1"]["NSD"], 0.75);
        close(&json["mean"]["2"]["Dice"], 0.0);
        assert!(json["mean"]["2"]["HD95"].is_null());
        close(&json["mean"]["2"]["volume_ref_mm3"], 0.5);
        close(&json["foreground_mean"]["Dice"], 0.375);
        close(&json["foreground_mean"]["HD95"], 0.25);

        let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 5, "{csv}");
        assert!(lines[0].starts_with("case,class_id,class_name,dice,iou,hd95_mm,nsd"));
        assert_eq!(lines[1], "a,1,liver,0.5,0.3333333333333333,0.5,0.5,0.4,8,8");
        assert_eq!(lines[2], "a,2,\"tumour, left\",,,,,1,0,0");
        assert_eq!(lines[4], "b,2,\"tumour, left\",0,0,,0,1,1,0");
        assert!(table.contains("HD95") && table.contains("liver") && table.contains("median"));
        assert!(table.lines().count() <= 30);
    }
}
