//! The typed result of an evaluation, written as nnU-Net's `summary.json`, as `summary.csv`, and
//! as a one-screen table.
//!
//! Struct fields are declared in alphabetical order of their JSON names: `summary.json` has
//! always listed keys that way, and consumers that diff files keep working.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::distance::percentile;
use super::metrics::finite;
use crate::predict::PredictionSettings;
use segmenter_io::case_id;
use segmenter_io::write_bytes_atomic as write_atomic;

/// The result of an evaluation, in the layout of nnU-Net's `summary.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Per case: files and per-class metrics.
    pub metric_per_case: Vec<CaseMetrics>,
    /// Per class id (as a string): mean of each metric over cases, NaN cases left out.
    pub mean: BTreeMap<String, Means>,
    /// Mean over foreground classes of the per-class means.
    pub foreground_mean: Means,
    /// What was compared; absent from files written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
}

/// One case of the summary: its files and the metrics of each foreground class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseMetrics {
    /// Per foreground class id (as a string, as nnU-Net writes it).
    pub metrics: BTreeMap<String, ClassMetrics>,
    /// The predicted label map, as the path was given.
    pub prediction_file: String,
    /// The reference label map, as the path was given.
    pub reference_file: String,
}

impl CaseMetrics {
    /// The classes of this case by numeric id, in ascending order.
    pub fn classes(&self) -> Vec<(u8, &ClassMetrics)> {
        let mut classes: Vec<(u8, &ClassMetrics)> = self
            .metrics
            .iter()
            .filter_map(|(k, m)| Some((k.parse().ok()?, m)))
            .collect();
        classes.sort_by_key(|&(k, _)| k);
        classes
    }

    /// The case id: the reference's file name without its ending.
    pub fn id(&self) -> String {
        case_id(Path::new(&self.reference_file))
    }
}

/// Metrics of one class in one case; `None` (JSON `null`) where a metric is undefined.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// Dice; undefined when the class is in neither map.
    #[serde(rename = "Dice")]
    pub dice: Option<f64>,
    /// False negatives (voxels).
    #[serde(rename = "FN")]
    pub fn_: u64,
    /// False positives (voxels).
    #[serde(rename = "FP")]
    pub fp: u64,
    /// 95th percentile Hausdorff distance (mm); undefined when either map lacks the class.
    #[serde(rename = "HD95")]
    pub hd95_mm: Option<f64>,
    /// Intersection over union; undefined when the class is in neither map.
    #[serde(rename = "IoU")]
    pub iou: Option<f64>,
    /// Normalised surface distance at `nsd_tolerance_mm`.
    #[serde(rename = "NSD")]
    pub nsd: Option<f64>,
    /// The NSD tolerance used for this class (mm).
    #[serde(rename = "NSD_tolerance_mm")]
    pub nsd_tolerance_mm: f64,
    /// True negatives (voxels).
    #[serde(rename = "TN")]
    pub tn: u64,
    /// True positives (voxels).
    #[serde(rename = "TP")]
    pub tp: u64,
    /// Predicted voxels of the class.
    pub n_pred: u64,
    /// Reference voxels of the class.
    pub n_ref: u64,
    /// Predicted volume (mm³).
    pub volume_pred_mm3: Option<f64>,
    /// Reference volume (mm³).
    pub volume_ref_mm3: Option<f64>,
}

/// A per-class metric; its serde name is its key in `summary.json`. Variants are declared in the
/// alphabetical order of those keys, so maps keyed by metric serialise in `summary.json`'s order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Metric {
    /// Dice.
    #[serde(rename = "Dice")]
    Dice,
    /// 95th percentile Hausdorff distance (mm).
    #[serde(rename = "HD95")]
    Hd95,
    /// Intersection over union.
    #[serde(rename = "IoU")]
    Iou,
    /// Normalised surface distance.
    #[serde(rename = "NSD")]
    Nsd,
    /// Predicted volume (mm³).
    #[serde(rename = "volume_pred_mm3")]
    VolumePred,
    /// Reference volume (mm³).
    #[serde(rename = "volume_ref_mm3")]
    VolumeRef,
}

impl Metric {
    /// Every metric; each class gets a mean of each.
    pub const ALL: [Metric; 6] = [
        Metric::Dice,
        Metric::Hd95,
        Metric::Iou,
        Metric::Nsd,
        Metric::VolumePred,
        Metric::VolumeRef,
    ];

    /// The metrics also averaged over foreground classes (volumes of different organs are not).
    pub const SCORES: [Metric; 4] = [Metric::Dice, Metric::Hd95, Metric::Iou, Metric::Nsd];

    /// Its key in `summary.json`.
    pub fn key(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Its value in one case's metrics of a class.
    pub fn of(self, m: &ClassMetrics) -> Option<f64> {
        match self {
            Metric::Dice => m.dice,
            Metric::Iou => m.iou,
            Metric::Hd95 => m.hd95_mm,
            Metric::Nsd => m.nsd,
            Metric::VolumeRef => m.volume_ref_mm3,
            Metric::VolumePred => m.volume_pred_mm3,
        }
    }
}

/// Means by metric, undefined ones `None` (`null` in JSON).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Means(pub BTreeMap<Metric, Option<f64>>);

impl Means {
    /// The mean of one metric; `None` when undefined or not averaged.
    pub fn get(&self, metric: Metric) -> Option<f64> {
        self.0.get(&metric).copied().flatten()
    }
}

/// What an evaluation compared, so that a report can be traced back to the model and settings
/// that made the predictions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The folder of predicted label maps (absolute where it could be made so).
    pub prediction_folder: String,
    /// The folder of reference label maps (absolute where it could be made so).
    pub reference_folder: String,
    /// The dataset.json the label names came from (absolute where it could be made so).
    pub dataset_json: String,
    /// The prediction folder's `prediction.json`, written by `segmenter predict`, if it has one.
    #[serde(default)]
    pub prediction_settings: Option<PredictionRecord>,
}

/// The content of a `prediction.json`: typed when it reads as this version's settings (extra
/// fields are dropped), as plain JSON when it does not, e.g. when another version left a field out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PredictionRecord {
    /// Settings in this version's format.
    Settings(PredictionSettings),
    /// Any other JSON, kept as it was.
    Other(Value),
}

impl Provenance {
    /// One line for the report's header: model run and settings, or what is known of them.
    pub fn describe(&self) -> String {
        let settings = match &self.prediction_settings {
            None => "no prediction.json in the prediction folder".to_string(),
            Some(PredictionRecord::Settings(s)) => format!(
                "model run {}, TTA {}, step {}, post-processing {}, probabilities {}",
                s.model.display(),
                if s.tta { "on" } else { "off" },
                s.step,
                serde_json::to_value(s.postprocessing)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("{:?}", s.postprocessing)),
                if s.save_probabilities {
                    "saved"
                } else {
                    "not saved"
                },
            ),
            Some(PredictionRecord::Other(v)) => format!("prediction.json {v}"),
        };
        format!(
            "Predictions {} against references {}: {settings}.",
            self.prediction_folder, self.reference_folder
        )
    }
}

/// Writes `summary.json` and `summary.csv` into `out_dir` (atomically) and returns the table
/// printed for humans.
pub fn write_summary(
    summary: &Summary,
    labels: &BTreeMap<u8, String>,
    out_dir: &Path,
) -> Result<String> {
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("{}: cannot create folder", out_dir.display()))?;
    write_atomic(
        &out_dir.join("summary.json"),
        serde_json::to_string_pretty(summary)?.as_bytes(),
    )?;
    write_atomic(
        &out_dir.join("summary.csv"),
        csv(summary, labels).as_bytes(),
    )?;
    Ok(table(summary, labels))
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
    let mut out = String::from(
        "case,class_id,class_name,dice,iou,hd95_mm,nsd,nsd_tolerance_mm,volume_ref_mm3,volume_pred_mm3\n",
    );
    for case in &summary.metric_per_case {
        let id = case.id();
        for (k, m) in case.classes() {
            let name = labels.get(&k).map_or("", String::as_str);
            let mut row = vec![csv_field(&id), k.to_string(), csv_field(name)];
            let cells = [
                m.dice,
                m.iou,
                m.hd95_mm,
                m.nsd,
                finite(m.nsd_tolerance_mm),
                m.volume_ref_mm3,
                m.volume_pred_mm3,
            ];
            row.extend(cells.map(|v| v.map_or(String::new(), |v| v.to_string())));
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
            .filter_map(|c| c.metrics.get(k).and_then(|m| m.dice))
            .collect();
        let mut q = |p| finite(percentile(&mut dices, p));
        let (q1, median, q3) = (q(25.0), q(50.0), q(75.0));
        let iqr = q1.zip(q3).map(|(a, b)| b - a);
        out += &format!(
            "{:<4} {:<20} {} {} {} {} {} {}\n",
            k,
            name,
            fmt(m.get(Metric::Dice)),
            fmt(median),
            fmt(iqr),
            fmt(m.get(Metric::Iou)),
            fmt_mm(m.get(Metric::Hd95)),
            fmt(m.get(Metric::Nsd))
        );
    }
    let f = &summary.foreground_mean;
    out += &format!(
        "{:<4} {:<20} {} {:>6} {:>6} {} {} {}\n",
        "",
        "foreground mean",
        fmt(f.get(Metric::Dice)),
        "",
        "",
        fmt(f.get(Metric::Iou)),
        fmt_mm(f.get(Metric::Hd95)),
        fmt(f.get(Metric::Nsd))
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::postprocess::PostProcessing;

    /// `summary.json` as the evaluation wrote it before the summary was typed (two cases; class 2
    /// is in neither map of `a` and missed in `b`): other tools read these keys, this nesting and
    /// these nulls.
    const OLD_SUMMARY: &str = r#"{
  "metric_per_case": [
    {
      "metrics": {
        "1": {
          "Dice": 0.5,
          "FN": 4,
          "FP": 4,
          "HD95": 0.5,
          "IoU": 0.3333333333333333,
          "NSD": 0.5,
          "NSD_tolerance_mm": 0.4,
          "TN": 108,
          "TP": 4,
          "n_pred": 8,
          "n_ref": 8,
          "volume_pred_mm3": 8.0,
          "volume_ref_mm3": 8.0
        },
        "2": {
          "Dice": null,
          "FN": 0,
          "FP": 0,
          "HD95": null,
          "IoU": null,
          "NSD": null,
          "NSD_tolerance_mm": 1.0,
          "TN": 120,
          "TP": 0,
          "n_pred": 0,
          "n_ref": 0,
          "volume_pred_mm3": 0.0,
          "volume_ref_mm3": 0.0
        }
      },
      "prediction_file": "data/pred/a.nii.gz",
      "reference_file": "data/ref/a.nii.gz"
    },
    {
      "metrics": {
        "1": {
          "Dice": 1.0,
          "FN": 0,
          "FP": 0,
          "HD95": 0.0,
          "IoU": 1.0,
          "NSD": 1.0,
          "NSD_tolerance_mm": 0.4,
          "TN": 112,
          "TP": 8,
          "n_pred": 8,
          "n_ref": 8,
          "volume_pred_mm3": 8.0,
          "volume_ref_mm3": 8.0
        },
        "2": {
          "Dice": 0.0,
          "FN": 1,
          "FP": 0,
          "HD95": null,
          "IoU": 0.0,
          "NSD": 0.0,
          "NSD_tolerance_mm": 1.0,
          "TN": 119,
          "TP": 0,
          "n_pred": 0,
          "n_ref": 1,
          "volume_pred_mm3": 0.0,
          "volume_ref_mm3": 1.0
        }
      },
      "prediction_file": "data/pred/b.nii.gz",
      "reference_file": "data/ref/b.nii.gz"
    }
  ],
  "mean": {
    "1": {
      "Dice": 0.75,
      "HD95": 0.25,
      "IoU": 0.6666666666666666,
      "NSD": 0.75,
      "volume_pred_mm3": 8.0,
      "volume_ref_mm3": 8.0
    },
    "2": {
      "Dice": 0.0,
      "HD95": null,
      "IoU": 0.0,
      "NSD": 0.0,
      "volume_pred_mm3": 0.0,
      "volume_ref_mm3": 0.5
    }
  },
  "foreground_mean": {
    "Dice": 0.375,
    "HD95": 0.25,
    "IoU": 0.3333333333333333,
    "NSD": 0.375
  }
}"#;

    /// The table printed for [`OLD_SUMMARY`] before the summary was typed.
    const OLD_TABLE: &str = concat!(
        "2 cases. Dice: mean, median and interquartile range over cases; IoU, HD95 (mm), NSD: means.\n",
        "id   class                  Dice median    IQR    IoU    HD95    NSD\n",
        "1    liver                0.7500 0.7500 0.2500 0.6667    0.25 0.7500\n",
        "2    tumour, left         0.0000 0.0000 0.0000 0.0000     n/a 0.0000\n",
        "     foreground mean      0.3750               0.3333    0.25 0.3750\n",
    );

    /// Every key path of a JSON value (array items share their path).
    fn key_paths(v: &Value, prefix: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    let path = format!("{prefix}/{k}");
                    key_paths(v, &path, out);
                    out.push(path);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| key_paths(v, prefix, out)),
            _ => {}
        }
        out.sort();
        out.dedup();
    }

    fn paths_of(v: &Value) -> Vec<String> {
        let mut out = Vec::new();
        key_paths(v, "", &mut out);
        out
    }

    #[test]
    fn summary_json_keeps_its_format() {
        let summary: Summary = serde_json::from_str(OLD_SUMMARY).unwrap();
        assert!(summary.provenance.is_none());
        assert_eq!(summary.metric_per_case[0].metrics["2"].dice, None);
        assert_eq!(summary.metric_per_case[1].metrics["2"].tp, 0);
        // Read and written again, it is the same text: same keys, order, nesting and nulls.
        assert_eq!(serde_json::to_string_pretty(&summary).unwrap(), OLD_SUMMARY);
        let labels = BTreeMap::from([(1, "liver".to_string()), (2, "tumour, left".to_string())]);
        assert_eq!(table(&summary, &labels), OLD_TABLE);

        // With provenance, the only new keys are under `provenance`.
        let settings = PredictionSettings {
            model: "/runs/liver".into(),
            tta: false,
            step: 0.5,
            postprocessing: PostProcessing::None,
            save_probabilities: true,
        };
        let traced = Summary {
            provenance: Some(Provenance {
                prediction_folder: "/data/pred".into(),
                reference_folder: "/data/labelsTs".into(),
                dataset_json: "/data/dataset.json".into(),
                prediction_settings: Some(PredictionRecord::Settings(settings)),
            }),
            ..summary
        };
        let old = paths_of(&serde_json::from_str(OLD_SUMMARY).unwrap());
        let new = paths_of(&serde_json::to_value(&traced).unwrap());
        let added: Vec<&String> = new.iter().filter(|p| !old.contains(p)).collect();
        assert!(old.iter().all(|p| new.contains(p)));
        assert!(
            added.iter().all(|p| p.starts_with("/provenance")),
            "{added:?}"
        );
        let text = serde_json::to_string(&traced).unwrap();
        assert_eq!(serde_json::from_str::<Summary>(&text).unwrap(), traced);
        assert_eq!(
            traced.provenance.unwrap().describe(),
            "Predictions /data/pred against references /data/labelsTs: model run /runs/liver, \
             TTA off, step 0.5, post-processing none, probabilities saved."
        );
    }
}
