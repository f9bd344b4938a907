//! Evaluation of predicted label maps against references: per-case, per-class Dice, IoU, HD95,
//! NSD and volumes, written as nnU-Net's `summary.json` plus `summary.csv`, printed as a table,
//! and drawn as an HTML report.
//!
//! Conventions when a mask is empty (tested here and in [`distance`]):
//! - both reference and prediction empty: Dice, IoU, HD95 and NSD are NaN (`null` in JSON, empty in
//!   CSV) and left out of means, as nnU-Net does for Dice;
//! - exactly one empty: Dice 0, IoU 0, NSD 0, and HD95 NaN (`null`), since no distance between a
//!   surface and nothing is defined. Such a case is therefore left out of the HD95 mean; it still
//!   counts fully in the Dice and NSD means.

pub mod distance;
pub mod metrics;
mod pictures;
pub mod report;
pub mod summary;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use segmenter_io::{has_volume_ending, read_dataset_labels, read_volume};

use distance::{surface_metrics, SurfaceMetrics};
use metrics::finite;
pub use metrics::{confusion, dice, dice_per_class, iou, nan_mean, Counts};
pub use summary::{write_summary, Summary};
use summary::{CaseMetrics, ClassMetrics, Means, Metric, PredictionRecord, Provenance};

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

/// What `segmenter evaluate` was asked to do.
#[derive(Clone, Debug, PartialEq)]
pub struct EvaluateRequest {
    /// Folder of predicted label maps.
    pub prediction_dir: PathBuf,
    /// Folder of reference label maps (same file names).
    pub reference_dir: PathBuf,
    /// The dataset's dataset.json, for the label names.
    pub dataset_json: PathBuf,
    /// Folder for summary.json, summary.csv and report.html.
    pub out_dir: PathBuf,
    /// Folder of the scans drawn under the overlays; by default the `imagesXx` beside `labelsXx`.
    pub images: Option<PathBuf>,
    /// NSD tolerances.
    pub options: EvalOptions,
}

/// What [`run`] produced, for the command line to print.
#[derive(Clone, Debug)]
pub struct EvaluateOutcome {
    /// The evaluation.
    pub summary: Summary,
    /// The one-screen table of [`summary::table`].
    pub table: String,
    /// The HTML report (`summary.json` and `summary.csv` lie beside it).
    pub report: PathBuf,
}

/// The evaluation stage: checks the request, evaluates, and writes `summary.json`,
/// `summary.csv` and the HTML report into the request's output folder.
pub fn run(request: &EvaluateRequest) -> Result<EvaluateOutcome> {
    let tolerance = request.options.default_tolerance_mm;
    ensure!(
        tolerance.is_finite() && tolerance >= 0.0,
        "--nsd-tolerance-mm must be a non-negative number, got {tolerance}"
    );
    let summary = evaluate_with(
        &request.prediction_dir,
        &request.reference_dir,
        &request.dataset_json,
        &request.options,
    )?;
    let labels = read_dataset_labels(&request.dataset_json)?;
    let table = write_summary(&summary, &labels, &request.out_dir)?;
    let images = request
        .images
        .clone()
        .or_else(|| report::sibling_images(&request.reference_dir));
    let report = report::write_html_report(&summary, &labels, &request.out_dir, images.as_deref())?;
    Ok(EvaluateOutcome {
        summary,
        table,
        report,
    })
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
            !name.starts_with('.') && has_volume_ending(p)
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The reference files of `ref_dir`, each with its same-named prediction in `pred_dir`; fails
/// when a prediction is missing, naming every missing case.
fn case_pairs(pred_dir: &Path, ref_dir: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let refs = label_files(ref_dir)?;
    if refs.is_empty() {
        bail!("{}: no .nii or .nii.gz reference files", ref_dir.display());
    }
    let pairs: Vec<(PathBuf, PathBuf)> = refs
        .into_iter()
        .map(|r| {
            let pred = pred_dir.join(r.file_name().expect("file"));
            (r, pred)
        })
        .collect();
    let missing: Vec<String> = pairs
        .iter()
        .filter(|(_, pred)| !pred.exists())
        .map(|(r, _)| r.file_name().expect("file").to_string_lossy().into_owned())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{}: no prediction for {} reference case(s): {}",
            pred_dir.display(),
            missing.len(),
            missing.join(", ")
        );
    }
    Ok(pairs)
}

/// Evaluates every reference in `ref_dir` against the same-named prediction in `pred_dir`, with
/// the default options (NSD at 1 mm).
pub fn evaluate(pred_dir: &Path, ref_dir: &Path, dataset_json: &Path) -> Result<Summary> {
    evaluate_with(pred_dir, ref_dir, dataset_json, &EvalOptions::default())
}

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
    let foreground: Vec<u8> = labels.keys().copied().filter(|&k| k != 0).collect();
    let metric_per_case: Vec<CaseMetrics> = case_pairs(pred_dir, ref_dir)?
        .par_iter()
        .map(|(reference, pred)| evaluate_case(reference, pred, classes, &foreground, options))
        .collect::<Result<_>>()?;
    let (mean, foreground_mean) = means(&metric_per_case, &foreground);
    Ok(Summary {
        metric_per_case,
        mean,
        foreground_mean,
        provenance: Some(provenance(pred_dir, ref_dir, dataset_json)),
    })
}

/// The metrics of one case, per foreground class.
fn evaluate_case(
    reference: &Path,
    pred: &Path,
    classes: usize,
    foreground: &[u8],
    options: &EvalOptions,
) -> Result<CaseMetrics> {
    let (r, rshape, spacing) = read_labels(reference)?;
    let (p, pshape, _) = read_labels(pred)?;
    if rshape != pshape {
        bail!(
            "{}: shape {:?} does not match reference shape {:?} ({})",
            pred.display(),
            pshape,
            rshape,
            reference.display()
        );
    }
    let surface = surface_metrics(&p, &r, rshape, spacing, foreground, |k| {
        options.tolerance(k)
    });
    let voxel_mm3 = spacing.iter().product::<f64>();
    let counts = confusion(&p, &r, classes);
    let metrics = foreground
        .iter()
        .zip(&surface)
        .map(|(&k, s)| {
            (
                k.to_string(),
                class_metrics(counts[k as usize], s, voxel_mm3),
            )
        })
        .collect();
    Ok(CaseMetrics {
        metrics,
        prediction_file: pred.display().to_string(),
        reference_file: reference.display().to_string(),
    })
}

/// The summary's entry of one class in one case.
fn class_metrics(c: Counts, s: &SurfaceMetrics, voxel_mm3: f64) -> ClassMetrics {
    let (n_pred, n_ref) = (c.tp + c.fp, c.tp + c.fn_);
    ClassMetrics {
        dice: finite(c.dice()),
        fn_: c.fn_,
        fp: c.fp,
        hd95_mm: finite(s.hd95_mm),
        iou: finite(c.iou()),
        nsd: finite(s.nsd),
        nsd_tolerance_mm: s.tolerance_mm,
        tn: c.tn,
        tp: c.tp,
        n_pred,
        n_ref,
        volume_pred_mm3: finite(n_pred as f64 * voxel_mm3),
        volume_ref_mm3: finite(n_ref as f64 * voxel_mm3),
    }
}

/// Per-class means over cases and their mean over foreground classes, undefined values left out.
fn means(cases: &[CaseMetrics], foreground: &[u8]) -> (BTreeMap<String, Means>, Means) {
    let mean_of = |values: Vec<f64>| finite(nan_mean(&values));
    let mean: BTreeMap<String, Means> = foreground
        .iter()
        .map(|k| {
            let k = k.to_string();
            let of_metric = |metric: Metric| {
                let values = cases.iter().map(|c| {
                    let m = c.metrics.get(&k);
                    m.and_then(|m| metric.of(m)).unwrap_or(f64::NAN)
                });
                (metric, mean_of(values.collect()))
            };
            let means = Means(Metric::ALL.into_iter().map(of_metric).collect());
            (k, means)
        })
        .collect();
    let over_classes = |metric: Metric| {
        let values = mean.values().map(|m| m.get(metric).unwrap_or(f64::NAN));
        (metric, mean_of(values.collect()))
    };
    let foreground_mean = Means(Metric::SCORES.into_iter().map(over_classes).collect());
    (mean, foreground_mean)
}

/// The folders and settings behind an evaluation; a `prediction.json` that cannot be read is
/// left out rather than failing the evaluation, which does not depend on it.
fn provenance(pred_dir: &Path, ref_dir: &Path, dataset_json: &Path) -> Provenance {
    let absolute = |p: &Path| {
        std::path::absolute(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    let settings_path = pred_dir.join(crate::predict::SETTINGS_FILE);
    let prediction_settings = std::fs::read_to_string(settings_path)
        .ok()
        .and_then(|text| serde_json::from_str::<PredictionRecord>(&text).ok());
    Provenance {
        prediction_folder: absolute(pred_dir),
        reference_folder: absolute(ref_dir),
        dataset_json: absolute(dataset_json),
        prediction_settings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_folders_list_volumes_of_any_case_and_skip_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "a.nii.gz",
            "B.NII.GZ",
            "c.png",
            ".hidden.nii.gz",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let names: Vec<String> = label_files(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["B.NII.GZ", "a.nii.gz", "c.png"]);
    }
    use serde_json::Value;

    /// Writes a label map with the given spacing.
    fn write(path: &Path, shape: [usize; 3], spacing: [f64; 3], labels: &[u8]) {
        let header = segmenter_io::NiftiHeader::new(shape, spacing).unwrap();
        segmenter_io::write_labels(path, &header, labels).unwrap();
    }

    /// Two cases of 1 mm³ voxels in `dir`: `a` with class 1 shifted by one voxel (0.5 mm) and
    /// class 2 in neither map, `b` with class 1 exact and class 2 (one voxel) missed. Returns the
    /// prediction folder, the reference folder and dataset.json.
    fn two_cases(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let (refs, preds) = (dir.join("ref"), dir.join("pred"));
        std::fs::create_dir_all(&refs).unwrap();
        std::fs::create_dir_all(&preds).unwrap();
        let dataset = dir.join("dataset.json");
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
        let mut p = vec![0u8; 120];
        cube(2, 1, &mut p);
        write(&refs.join("a.nii.gz"), shape, spacing, &r);
        write(&preds.join("a.nii.gz"), shape, spacing, &p);
        let mut rb = r.clone();
        rb[5 + 6 * (4 + 5 * 3)] = 2;
        write(&refs.join("b.nii.gz"), shape, spacing, &rb);
        write(&preds.join("b.nii.gz"), shape, spacing, &r);
        (preds, refs, dataset)
    }

    #[test]
    fn report_has_distances_volumes_and_empty_conventions() {
        let dir = tempfile::tempdir().unwrap();
        let (preds, refs, dataset) = two_cases(dir.path());
        let out = dir.path().join("out");
        let options = EvalOptions {
            default_tolerance_mm: 1.0,
            tolerance_mm: HashMap::from([(1, 0.4)]),
        };
        let summary = evaluate_with(&preds, &refs, &dataset, &options).unwrap();
        let labels = read_dataset_labels(&dataset).unwrap();
        let table = write_summary(&summary, &labels, &out).unwrap();
        let json: Value =
            serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
        let a = &json["metric_per_case"][0]["metrics"];
        let b = &json["metric_per_case"][1]["metrics"];
        let expected = [
            // Half the cube overlaps; the shifted half is 0.5 mm away, beyond 0.4 mm.
            (&a["1"], "Dice", 0.5),
            (&a["1"], "HD95", 0.5),
            (&a["1"], "NSD", 0.5),
            (&a["1"], "NSD_tolerance_mm", 0.4),
            (&a["1"], "volume_ref_mm3", 8.0),
            (&a["1"], "volume_pred_mm3", 8.0),
            (&a["2"], "NSD_tolerance_mm", 1.0),
            // Exact.
            (&b["1"], "Dice", 1.0),
            (&b["1"], "HD95", 0.0),
            (&b["1"], "NSD", 1.0),
            // Missed structure: Dice 0, NSD 0 (and HD95 null, below).
            (&b["2"], "Dice", 0.0),
            (&b["2"], "NSD", 0.0),
            (&b["2"], "volume_ref_mm3", 1.0),
            (&b["2"], "volume_pred_mm3", 0.0),
            // Means skip undefined values.
            (&json["mean"]["1"], "Dice", 0.75),
            (&json["mean"]["1"], "HD95", 0.25),
            (&json["mean"]["1"], "NSD", 0.75),
            (&json["mean"]["2"], "Dice", 0.0),
            (&json["mean"]["2"], "volume_ref_mm3", 0.5),
            (&json["foreground_mean"], "Dice", 0.375),
            (&json["foreground_mean"], "HD95", 0.25),
        ];
        for (metrics, key, want) in expected {
            let v = &metrics[key];
            assert!(
                (v.as_f64().unwrap() - want).abs() < 1e-12,
                "{key}: {v} vs {want}"
            );
        }
        // Both empty: undefined.
        for m in ["Dice", "IoU", "HD95", "NSD"] {
            assert!(a["2"][m].is_null(), "{m}: {}", a["2"]);
        }
        assert!(b["2"]["HD95"].is_null());
        assert!(json["mean"]["2"]["HD95"].is_null());

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

    #[test]
    fn the_stage_records_where_the_predictions_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let (preds, refs, dataset) = two_cases(dir.path());
        let settings = crate::predict::PredictionSettings {
            model: dir.path().join("runs/liver-3d"),
            tta: true,
            step: 0.5,
            postprocessing: crate::predict::postprocess::PostProcessing::LargestComponent,
            save_probabilities: false,
        };
        std::fs::write(
            preds.join(crate::predict::SETTINGS_FILE),
            serde_json::to_string(&settings).unwrap(),
        )
        .unwrap();
        let mut request = EvaluateRequest {
            prediction_dir: preds.clone(),
            reference_dir: refs.clone(),
            dataset_json: dataset.clone(),
            out_dir: dir.path().join("out"),
            images: None,
            options: EvalOptions::default(),
        };
        let outcome = run(&request).unwrap();
        assert!(
            outcome.table.contains("foreground mean"),
            "{}",
            outcome.table
        );
        let written: Summary =
            serde_json::from_slice(&std::fs::read(request.out_dir.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(written, outcome.summary);
        let provenance = written.provenance.unwrap();
        assert_eq!(
            provenance.prediction_settings,
            Some(PredictionRecord::Settings(settings))
        );
        assert!(Path::new(&provenance.prediction_folder).is_absolute());
        assert!(provenance.reference_folder.ends_with("ref"));
        assert!(provenance.dataset_json.ends_with("dataset.json"));
        let html = std::fs::read_to_string(&outcome.report).unwrap();
        assert!(
            html.contains("runs/liver-3d, TTA on, step 0.5, post-processing largest-component"),
            "{html}"
        );

        // A prediction.json of another version is kept as it is.
        std::fs::write(
            preds.join(crate::predict::SETTINGS_FILE),
            r#"{"model": "run", "sampler": "new"}"#,
        )
        .unwrap();
        let summary = evaluate(&preds, &refs, &dataset).unwrap();
        let record = summary.provenance.unwrap().prediction_settings.unwrap();
        assert_eq!(
            record,
            PredictionRecord::Other(serde_json::json!({"model": "run", "sampler": "new"}))
        );

        request.options.default_tolerance_mm = -1.0;
        let error = run(&request).unwrap_err().to_string();
        assert!(error.contains("--nsd-tolerance-mm"), "{error}");
    }
}
