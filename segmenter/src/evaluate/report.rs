//! The HTML report of an evaluation: per-class statistics, box plots, and overlay pictures of the
//! best, median and worst cases, for a reader who wants to see the segmentations, not only numbers.
//!
//! The report is one self-contained folder: `report.html`, SVG box plots and PNG overlays (drawn
//! by the `pictures` module), all referenced by relative paths so the folder can be copied or
//! mailed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use segmenter_io::IMAGE_ENDINGS;

use super::distance::percentile;
use super::metrics::{finite, nan_mean};
use super::pictures::{box_plot_svg, overlay_png, BOTH_RGB, PREDICTION_RGB, REFERENCE_RGB};
use super::summary::{CaseMetrics, ClassMetrics, Metric, Summary};
use segmenter_io::write_bytes_atomic as write_atomic;

/// Metrics shown in the report's per-class tables: metric, title, unit.
const METRICS: [(Metric, &str, &str); 6] = [
    (Metric::Dice, "Dice", ""),
    (Metric::Iou, "IoU", ""),
    (Metric::Hd95, "HD95", "mm"),
    (Metric::Nsd, "NSD", ""),
    (Metric::VolumeRef, "Reference volume", "mm³"),
    (Metric::VolumePred, "Predicted volume", "mm³"),
];

/// Metrics that get a box plot, with the plot's title.
const PLOTTED: [(Metric, &str); 3] = [
    (Metric::Dice, "Dice"),
    (Metric::Hd95, "HD95 (mm)"),
    (Metric::Nsd, "NSD"),
];

/// Metrics of the every-case table, with their decimals.
const PER_CASE: [(Metric, usize); 3] = [(Metric::Dice, 4), (Metric::Hd95, 2), (Metric::Nsd, 4)];

/// Summary statistics of one metric of one class over cases (undefined cases left out).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    /// Cases with a defined value.
    pub n: usize,
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (NaN for fewer than two cases).
    pub sd: f64,
    /// Median.
    pub median: f64,
    /// First quartile.
    pub q1: f64,
    /// Third quartile.
    pub q3: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Stats {
    /// Statistics of the finite values; None when there are none.
    pub fn of(values: &[f64]) -> Option<Stats> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let sd = if n > 1 {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            f64::NAN
        };
        Some(Stats {
            n,
            mean,
            sd,
            median: percentile(&mut v, 50.0),
            q1: percentile(&mut v, 25.0),
            q3: percentile(&mut v, 75.0),
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

/// One case of the summary, with its classes by numeric id.
struct CaseRow<'a> {
    id: String,
    case: &'a CaseMetrics,
    classes: BTreeMap<u8, &'a ClassMetrics>,
}

impl<'a> CaseRow<'a> {
    fn new(case: &'a CaseMetrics) -> Self {
        CaseRow {
            id: case.id(),
            case,
            classes: case.classes().into_iter().collect(),
        }
    }

    /// The value of a metric of class `k`, NaN where undefined.
    fn value(&self, k: u8, metric: Metric) -> f64 {
        self.classes
            .get(&k)
            .and_then(|m| metric.of(m))
            .unwrap_or(f64::NAN)
    }

    fn mean_dice(&self) -> f64 {
        let dices: Vec<f64> = self
            .classes
            .values()
            .map(|m| m.dice.unwrap_or(f64::NAN))
            .collect();
        nan_mean(&dices)
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A value with `digits` decimals, `n/a` where undefined.
fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or("n/a".into(), |x| format!("{x:.digits$}"))
}

fn class_name(labels: &BTreeMap<u8, String>, k: u8) -> String {
    labels
        .get(&k)
        .cloned()
        .unwrap_or_else(|| format!("class {k}"))
}

/// The scan of a case in `images`: `ID_0000` or `ID` with a NIfTI or 2D image ending.
fn find_image(images: &Path, id: &str) -> Option<PathBuf> {
    let endings = [".nii.gz", ".nii"].into_iter().chain(IMAGE_ENDINGS);
    endings
        .flat_map(|e| [format!("{id}_0000{e}"), format!("{id}{e}")])
        .map(|n| images.join(n))
        .find(|p| p.exists())
}

/// The `imagesXx` folder beside a reference folder named `labelsXx` (nnU-Net and Decathlon
/// layout), if it exists.
pub fn sibling_images(reference_dir: &Path) -> Option<PathBuf> {
    let name = reference_dir.file_name()?.to_str()?;
    let suffix = name.strip_prefix("labels")?;
    let dir = reference_dir.with_file_name(format!("images{suffix}"));
    dir.is_dir().then_some(dir)
}

/// What every section of the report draws from.
struct Report<'a> {
    summary: &'a Summary,
    labels: &'a BTreeMap<u8, String>,
    /// Foreground class ids.
    classes: Vec<u8>,
    cases: Vec<CaseRow<'a>>,
    /// The `report_files` folder the pictures go to.
    pictures: PathBuf,
}

/// Writes `report.html` with its pictures into `out_dir` and returns its path. `images` is the
/// folder of the scans, for the overlays' background (black without it).
pub fn write_html_report(
    summary: &Summary,
    labels: &BTreeMap<u8, String>,
    out_dir: &Path,
    images: Option<&Path>,
) -> Result<PathBuf> {
    let report = Report {
        summary,
        labels,
        classes: labels.keys().copied().filter(|&k| k != 0).collect(),
        cases: summary.metric_per_case.iter().map(CaseRow::new).collect(),
        pictures: out_dir.join("report_files"),
    };
    std::fs::create_dir_all(&report.pictures)
        .with_context(|| format!("{}: cannot create folder", report.pictures.display()))?;
    let mut html = report.header();
    report.per_class_tables(&mut html);
    report.box_plots(&mut html)?;
    report.picked_cases(&mut html, images)?;
    report.every_case(&mut html);
    html += "</body></html>\n";
    let path = out_dir.join("report.html");
    write_atomic(&path, html.as_bytes())?;
    Ok(path)
}

impl Report<'_> {
    /// The values of a metric of class `k`, one per case, NaN where undefined.
    fn values(&self, k: u8, metric: Metric) -> Vec<f64> {
        self.cases.iter().map(|c| c.value(k, metric)).collect()
    }

    fn class_name(&self, k: u8) -> String {
        escape(&class_name(self.labels, k))
    }

    /// The page's head, what was compared, and the means over foreground classes.
    fn header(&self) -> String {
        let mut html = String::new();
        let title = "Segmentation evaluation";
        let _ = write!(
            html,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n\
             <style>body{{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}}\
             table{{border-collapse:collapse;margin:0.5em 0 1.5em}}td,th{{border:1px solid #bbb;\
             padding:3px 8px;text-align:right}}th:first-child,td:first-child{{text-align:left}}\
             figure{{display:inline-block;margin:0 1em 1em 0;vertical-align:top}}\
             figcaption{{font-size:0.9em;max-width:340px}}.key span{{padding:0 0.6em;margin-right:0.5em}}\
             </style></head><body>\n<h1>{title}</h1>\n<p>{} cases; {} classes. Undefined values \
             (e.g. HD95 when a structure is absent from the reference or the prediction) are left out \
             of the statistics; <i>n</i> says how many cases count. Dice follows nnU-Net's convention: \
             undefined when both are empty.</p>\n",
            self.cases.len(),
            self.classes.len()
        );
        if let Some(provenance) = &self.summary.provenance {
            let _ = writeln!(
                html,
                "<p class=\"provenance\">{}</p>",
                escape(&provenance.describe())
            );
        }
        let f = &self.summary.foreground_mean;
        let _ = writeln!(
            html,
            "<p><b>Mean over foreground classes:</b> Dice {}, IoU {}, HD95 {} mm, NSD {}.</p>",
            fmt(f.get(Metric::Dice), 4),
            fmt(f.get(Metric::Iou), 4),
            fmt(f.get(Metric::Hd95), 2),
            fmt(f.get(Metric::Nsd), 4),
        );
        html
    }

    /// Per class, the statistics of every metric over cases.
    fn per_class_tables(&self, html: &mut String) {
        *html += "<h2>Per class</h2>\n";
        for &k in &self.classes {
            let _ = write!(
                html,
                "<h3>{} (label {k})</h3>\n<table><tr><th>metric</th><th>n</th><th>mean</th><th>SD</th>\
                 <th>median</th><th>Q1</th><th>Q3</th><th>min</th><th>max</th></tr>\n",
                self.class_name(k)
            );
            for (metric, name, unit) in METRICS {
                let digits = if unit.is_empty() { 4 } else { 2 };
                let label = if unit.is_empty() {
                    name.to_string()
                } else {
                    format!("{name} ({unit})")
                };
                match Stats::of(&self.values(k, metric)) {
                    Some(s) => {
                        let _ = write!(html, "<tr><td>{label}</td><td>{}</td>", s.n);
                        for v in [s.mean, s.sd, s.median, s.q1, s.q3, s.min, s.max] {
                            let _ = write!(html, "<td>{}</td>", fmt(finite(v), digits));
                        }
                        *html += "</tr>\n";
                    }
                    None => {
                        let _ = writeln!(
                            html,
                            "<tr><td>{label}</td><td>0</td><td colspan=\"7\">undefined in every case</td></tr>"
                        );
                    }
                }
            }
            *html += "</table>\n";
        }
    }

    /// One box plot per plotted metric, classes side by side.
    fn box_plots(&self, html: &mut String) -> Result<()> {
        *html += "<h2>Distribution over cases</h2>\n<p>Boxes span the quartiles with the median \
                  inside; whiskers reach 1.5 interquartile ranges; dots are the cases.</p>\n";
        for (metric, axis) in PLOTTED {
            let file = format!("boxplot_{}.svg", metric.key().to_lowercase());
            let series: Vec<(String, Vec<f64>)> = self
                .classes
                .iter()
                .map(|&k| (class_name(self.labels, k), self.values(k, metric)))
                .collect();
            let svg = box_plot_svg(axis, &series)?;
            write_atomic(&self.pictures.join(&file), svg.as_bytes())?;
            let _ = writeln!(
                html,
                "<figure><img src=\"report_files/{file}\" alt=\"Box plot of {axis} per class\"></figure>"
            );
        }
        Ok(())
    }

    /// Overlays of the best, median and worst cases by mean foreground Dice.
    fn picked_cases(&self, html: &mut String, images: Option<&Path>) -> Result<()> {
        let mut ranked: Vec<&CaseRow> = self
            .cases
            .iter()
            .filter(|c| c.mean_dice().is_finite())
            .collect();
        ranked.sort_by(|a, b| b.mean_dice().total_cmp(&a.mean_dice()));
        if ranked.is_empty() {
            return Ok(());
        }
        let rgb = |c: [u8; 3]| format!("rgb({},{},{})", c[0], c[1], c[2]);
        let _ = write!(
            html,
            "<h2>Best, median and worst case</h2>\n<p class=\"key\">Ranked by mean foreground \
             Dice; the slice with the most reference voxels, in radiological view of the canonical \
             (closest to RAS) orientation: the patient's right on the left, anterior up. \
             <span style=\"background:{}\">reference</span>\
             <span style=\"background:{}\">prediction</span>\
             <span style=\"background:{}\">both</span></p>\n",
            rgb(REFERENCE_RGB),
            rgb(PREDICTION_RGB),
            rgb(BOTH_RGB),
        );
        let picks = [
            ("best", ranked[0]),
            ("median", ranked[ranked.len() / 2]),
            ("worst", ranked[ranked.len() - 1]),
        ];
        for (which, row) in picks {
            let image = images.and_then(|dir| find_image(dir, &row.id));
            let file = format!("overlay_{which}.png");
            let slice = overlay_png(
                Path::new(&row.case.reference_file),
                Path::new(&row.case.prediction_file),
                image.as_deref(),
                &self.pictures.join(&file),
            )?;
            let dices: Vec<String> = self
                .classes
                .iter()
                .map(|&k| {
                    let d = finite(row.value(k, Metric::Dice));
                    format!("{} {}", self.class_name(k), fmt(d, 3))
                })
                .collect();
            let _ = writeln!(
                html,
                "<figure><img src=\"report_files/{file}\" alt=\"{which} case\"><figcaption><b>{which}:</b> \
                 {} (slice {slice}{})<br>Dice: {}</figcaption></figure>",
                escape(&row.id),
                if image.is_some() { "" } else { ", no scan found" },
                dices.join(", ")
            );
        }
        Ok(())
    }

    /// Dice, HD95 and NSD of every case and class.
    fn every_case(&self, html: &mut String) {
        *html += "<h2>Every case</h2>\n<table><tr><th>case</th>";
        for &k in &self.classes {
            let name = self.class_name(k);
            let _ = write!(
                html,
                "<th>{name} Dice</th><th>{name} HD95 (mm)</th><th>{name} NSD</th>"
            );
        }
        *html += "</tr>\n";
        for case in &self.cases {
            let _ = write!(html, "<tr><td>{}</td>", escape(&case.id));
            for &k in &self.classes {
                for (metric, digits) in PER_CASE {
                    let v = finite(case.value(k, metric));
                    let _ = write!(html, "<td>{}</td>", fmt(v, digits));
                }
            }
            *html += "</tr>\n";
        }
        *html += "</table>\n";
    }
}

/// The `src` attributes of the `<img>` elements of an HTML page.
pub fn image_sources(html: &str) -> Vec<String> {
    html.split("<img src=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next().map(str::to_string))
        .collect()
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::pictures::OVERLAY_SIDE;
    use segmenter_io::{write_labels, write_nifti, NiftiData, NiftiHeader};

    #[test]
    fn stats_match_numbers_computed_by_hand() {
        let s = Stats::of(&[4.0, 1.0, f64::NAN, 3.0, 2.0]).unwrap();
        assert_eq!(s.n, 4);
        assert_eq!((s.mean, s.median, s.min, s.max), (2.5, 2.5, 1.0, 4.0));
        assert_eq!((s.q1, s.q3), (1.75, 3.25));
        assert!((s.sd - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!(Stats::of(&[f64::NAN]).is_none());
        assert!(Stats::of(&[2.0]).unwrap().sd.is_nan());
    }

    /// A [nx, ny, nz] label map with a box of `class` over the given ranges.
    fn boxed(shape: [usize; 3], parts: &[(u8, [std::ops::Range<usize>; 3])]) -> Vec<u8> {
        let mut v = vec![0u8; shape.iter().product()];
        for (class, [rx, ry, rz]) in parts {
            for z in rz.clone() {
                for y in ry.clone() {
                    for x in rx.clone() {
                        v[(z * shape[1] + y) * shape[0] + x] = *class;
                    }
                }
            }
        }
        v
    }

    #[test]
    fn the_report_renders_with_pictures_that_exist() {
        let dir = tempfile::tempdir().unwrap();
        let (pred, refs, images, out) = (
            dir.path().join("pred"),
            dir.path().join("labelsTs"),
            dir.path().join("imagesTs"),
            dir.path().join("report"),
        );
        for d in [&pred, &refs, &images] {
            std::fs::create_dir_all(d).unwrap();
        }
        let shape = [20, 16, 6];
        let header = NiftiHeader::new(shape, [1.0, 1.5, 3.0]).unwrap();
        let reference = boxed(
            shape,
            &[(1, [4..10, 4..10, 1..5]), (2, [12..17, 3..12, 2..4])],
        );
        // Three predictions: shifted by 0, 1 and 3 voxels, so best, median and worst differ.
        for (case, shift) in [("a", 0), ("b", 1), ("c", 3)] {
            let p = boxed(
                shape,
                &[
                    (1, [4 + shift..10 + shift, 4..10, 1..5]),
                    (2, [12..17, 3 + shift..12, 2..4]),
                ],
            );
            write_labels(&pred.join(format!("{case}.nii.gz")), &header, &p).unwrap();
            write_labels(&refs.join(format!("{case}.nii.gz")), &header, &reference).unwrap();
            let scan: Vec<f32> = (0..reference.len())
                .map(|i| ((i * 7919) % 97) as f32)
                .collect();
            write_nifti(
                &images.join(format!("{case}_0000.nii.gz")),
                &header,
                &NiftiData::F32(scan),
            )
            .unwrap();
        }
        let json = dir.path().join("dataset.json");
        std::fs::write(
            &json,
            r#"{"labels": {"background": 0, "Anterior": 1, "Posterior": 2}}"#,
        )
        .unwrap();
        let summary = crate::evaluate::evaluate(&pred, &refs, &json).unwrap();
        let labels = segmenter_io::read_dataset_labels(&json).unwrap();
        assert_eq!(sibling_images(&refs), Some(images.clone()));
        let html_path = write_html_report(&summary, &labels, &out, Some(&images)).unwrap();
        let html = std::fs::read_to_string(&html_path).unwrap();
        assert!(html.contains("<h3>Anterior (label 1)</h3>"), "{html}");
        assert!(
            html.contains("<b>best:</b> a") && html.contains("<b>worst:</b> c"),
            "{html}"
        );
        let sources = image_sources(&html);
        assert_eq!(sources.len(), 6, "3 box plots and 3 overlays: {sources:?}");
        for src in &sources {
            let file = out.join(src);
            assert!(
                file.exists(),
                "{} is referenced but missing",
                file.display()
            );
            if src.ends_with(".svg") {
                let svg = std::fs::read_to_string(&file).unwrap();
                assert!(svg.contains("<svg") && svg.contains("Anterior"), "{src}");
            } else {
                let img = image::open(&file).unwrap().to_rgb8();
                // 20 mm x 24 mm: the longer side (y) is the picture's height.
                assert_eq!(img.height(), OVERLAY_SIDE as u32);
                let has = |rgb: [u8; 3]| img.pixels().any(|p| p.0 == rgb);
                assert!(
                    has(REFERENCE_RGB) || has(BOTH_RGB),
                    "{src}: no reference contour"
                );
                if src.contains("best") {
                    assert!(!has(PREDICTION_RGB), "a perfect prediction shows no red");
                } else {
                    assert!(has(PREDICTION_RGB), "{src}: no prediction contour");
                }
            }
        }
    }
}
