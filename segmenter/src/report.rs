//! The HTML report of an evaluation: per-class statistics, box plots, and overlay pictures of the
//! best, median and worst cases, for a reader who wants to see the segmentations, not only numbers.
//!
//! The report is one self-contained folder: `report.html`, SVG box plots (plotters) and PNG
//! overlays (image), all referenced by relative paths so the folder can be copied or mailed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::prelude::*;
use segmenter_io::{read_volume, Orientation, IMAGE_ENDINGS};

use crate::distance::percentile;
use crate::evaluate::Summary;
use segmenter_io::write_bytes_atomic as write_atomic;

/// Metrics shown in the report: key in `summary.json`, title, unit.
const METRICS: [(&str, &str, &str); 6] = [
    ("Dice", "Dice", ""),
    ("IoU", "IoU", ""),
    ("HD95", "HD95", "mm"),
    ("NSD", "NSD", ""),
    ("volume_ref_mm3", "Reference volume", "mm³"),
    ("volume_pred_mm3", "Predicted volume", "mm³"),
];

/// Metrics that get a box plot.
const PLOTTED: [(&str, &str); 3] = [("Dice", "Dice"), ("HD95", "HD95 (mm)"), ("NSD", "NSD")];

/// Colours of the overlay contours: reference, prediction, both.
const REFERENCE_RGB: [u8; 3] = [40, 220, 60];
const PREDICTION_RGB: [u8; 3] = [235, 40, 40];
const BOTH_RGB: [u8; 3] = [250, 220, 30];

/// Longest side of an overlay picture, in pixels.
const OVERLAY_SIDE: f64 = 320.0;

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

/// One case of the summary, as the report needs it.
struct CaseRow {
    id: String,
    reference: PathBuf,
    prediction: PathBuf,
    /// Per class id, per metric.
    metrics: BTreeMap<u8, BTreeMap<String, f64>>,
}

impl CaseRow {
    fn mean_dice(&self) -> f64 {
        crate::evaluate::nan_mean(
            &self
                .metrics
                .values()
                .map(|m| m.get("Dice").copied().unwrap_or(f64::NAN))
                .collect::<Vec<_>>(),
        )
    }
}

fn rows(summary: &Summary) -> Vec<CaseRow> {
    summary
        .metric_per_case
        .iter()
        .map(|case| {
            let path = |key: &str| PathBuf::from(case[key].as_str().unwrap_or_default());
            let reference = path("reference_file");
            let metrics = case["metrics"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| {
                            let values = v
                                .as_object()?
                                .iter()
                                .map(|(name, x)| (name.clone(), x.as_f64().unwrap_or(f64::NAN)))
                                .collect();
                            Some((k.parse().ok()?, values))
                        })
                        .collect()
                })
                .unwrap_or_default();
            CaseRow {
                id: case_id(&reference),
                prediction: path("prediction_file"),
                reference,
                metrics,
            }
        })
        .collect()
}

fn case_id(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lower = name.to_ascii_lowercase();
    [".nii.gz", ".nii"]
        .into_iter()
        .chain(IMAGE_ENDINGS)
        .find(|e| lower.ends_with(e))
        .map_or(name.clone(), |e| name[..name.len() - e.len()].to_string())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
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

/// Writes `report.html` with its pictures into `out_dir` and returns its path. `images` is the
/// folder of the scans, for the overlays' background (black without it).
pub fn write_html_report(
    summary: &Summary,
    labels: &BTreeMap<u8, String>,
    out_dir: &Path,
    images: Option<&Path>,
) -> Result<PathBuf> {
    let pictures = out_dir.join("report_files");
    std::fs::create_dir_all(&pictures)
        .with_context(|| format!("{}: cannot create folder", pictures.display()))?;
    let cases = rows(summary);
    let classes: Vec<u8> = labels.keys().copied().filter(|&k| k != 0).collect();
    let values = |k: u8, metric: &str| -> Vec<f64> {
        cases
            .iter()
            .map(|c| {
                c.metrics
                    .get(&k)
                    .and_then(|m| m.get(metric))
                    .copied()
                    .unwrap_or(f64::NAN)
            })
            .collect()
    };

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
        cases.len(),
        classes.len()
    );
    let f = &summary.foreground_mean;
    let fmt = |v: Option<f64>, digits: usize| v.map_or("n/a".into(), |x| format!("{x:.digits$}"));
    let _ = writeln!(
        html,
        "<p><b>Mean over foreground classes:</b> Dice {}, IoU {}, HD95 {} mm, NSD {}.</p>",
        fmt(f.get("Dice").copied().flatten(), 4),
        fmt(f.get("IoU").copied().flatten(), 4),
        fmt(f.get("HD95").copied().flatten(), 2),
        fmt(f.get("NSD").copied().flatten(), 4),
    );

    html += "<h2>Per class</h2>\n";
    for &k in &classes {
        let _ = write!(
            html,
            "<h3>{} (label {k})</h3>\n<table><tr><th>metric</th><th>n</th><th>mean</th><th>SD</th>\
             <th>median</th><th>Q1</th><th>Q3</th><th>min</th><th>max</th></tr>\n",
            escape(&class_name(labels, k))
        );
        for (key, name, unit) in METRICS {
            let digits = if unit.is_empty() { 4 } else { 2 };
            let label = if unit.is_empty() {
                name.to_string()
            } else {
                format!("{name} ({unit})")
            };
            match Stats::of(&values(k, key)) {
                Some(s) => {
                    let _ = write!(html, "<tr><td>{label}</td><td>{}</td>", s.n);
                    for v in [s.mean, s.sd, s.median, s.q1, s.q3, s.min, s.max] {
                        let _ =
                            write!(html, "<td>{}</td>", fmt(v.is_finite().then_some(v), digits));
                    }
                    html += "</tr>\n";
                }
                None => {
                    let _ = writeln!(
                        html,
                        "<tr><td>{label}</td><td>0</td><td colspan=\"7\">undefined in every case</td></tr>"
                    );
                }
            }
        }
        html += "</table>\n";
    }

    html += "<h2>Distribution over cases</h2>\n<p>Boxes span the quartiles with the median \
             inside; whiskers reach 1.5 interquartile ranges; dots are the cases.</p>\n";
    for (key, axis) in PLOTTED {
        let file = format!("boxplot_{}.svg", key.to_lowercase());
        let series: Vec<(String, Vec<f64>)> = classes
            .iter()
            .map(|&k| (class_name(labels, k), values(k, key)))
            .collect();
        let svg = box_plot_svg(axis, &series)?;
        write_atomic(&pictures.join(&file), svg.as_bytes())?;
        let _ = writeln!(
            html,
            "<figure><img src=\"report_files/{file}\" alt=\"Box plot of {axis} per class\"></figure>"
        );
    }

    // Best, median and worst cases by mean foreground Dice.
    let mut ranked: Vec<&CaseRow> = cases.iter().filter(|c| c.mean_dice().is_finite()).collect();
    ranked.sort_by(|a, b| b.mean_dice().total_cmp(&a.mean_dice()));
    if !ranked.is_empty() {
        let _ = write!(
            html,
            "<h2>Best, median and worst case</h2>\n<p class=\"key\">Ranked by mean foreground \
             Dice; the slice with the most reference voxels, in radiological view of the canonical \
             (closest to RAS) orientation: the patient's right on the left, anterior up. \
             <span style=\"background:rgb({},{},{})\">reference</span>\
             <span style=\"background:rgb({},{},{})\">prediction</span>\
             <span style=\"background:rgb({},{},{})\">both</span></p>\n",
            REFERENCE_RGB[0],
            REFERENCE_RGB[1],
            REFERENCE_RGB[2],
            PREDICTION_RGB[0],
            PREDICTION_RGB[1],
            PREDICTION_RGB[2],
            BOTH_RGB[0],
            BOTH_RGB[1],
            BOTH_RGB[2]
        );
        let picks = [
            ("best", ranked[0]),
            ("median", ranked[ranked.len() / 2]),
            ("worst", ranked[ranked.len() - 1]),
        ];
        for (which, case) in picks {
            let image = images.and_then(|dir| find_image(dir, &case.id));
            let file = format!("overlay_{which}.png");
            let slice = overlay_png(case, image.as_deref(), &pictures.join(&file))?;
            let dices: Vec<String> = classes
                .iter()
                .map(|&k| {
                    let d = case.metrics.get(&k).and_then(|m| m.get("Dice")).copied();
                    format!(
                        "{} {}",
                        escape(&class_name(labels, k)),
                        fmt(d.filter(|v| v.is_finite()), 3)
                    )
                })
                .collect();
            let _ = writeln!(
                html,
                "<figure><img src=\"report_files/{file}\" alt=\"{which} case\"><figcaption><b>{which}:</b> \
                 {} (slice {slice}{})<br>Dice: {}</figcaption></figure>",
                escape(&case.id),
                if image.is_some() { "" } else { ", no scan found" },
                dices.join(", ")
            );
        }
    }

    html += "<h2>Every case</h2>\n<table><tr><th>case</th>";
    for &k in &classes {
        let name = escape(&class_name(labels, k));
        let _ = write!(
            html,
            "<th>{name} Dice</th><th>{name} HD95 (mm)</th><th>{name} NSD</th>"
        );
    }
    html += "</tr>\n";
    for case in &cases {
        let _ = write!(html, "<tr><td>{}</td>", escape(&case.id));
        for &k in &classes {
            for (key, digits) in [("Dice", 4), ("HD95", 2), ("NSD", 4)] {
                let v = case.metrics.get(&k).and_then(|m| m.get(key)).copied();
                let _ = write!(
                    html,
                    "<td>{}</td>",
                    fmt(v.filter(|v| v.is_finite()), digits)
                );
            }
        }
        html += "</tr>\n";
    }
    html += "</table>\n</body></html>\n";
    let path = out_dir.join("report.html");
    write_atomic(&path, html.as_bytes())?;
    Ok(path)
}

/// An SVG box plot with one box per class and the cases as dots. Boxes span the quartiles
/// (numpy's linear interpolation, as in the tables), whiskers reach the most extreme case within
/// 1.5 interquartile ranges (Tukey), so nothing is drawn where there is no data.
fn box_plot_svg(axis: &str, series: &[(String, Vec<f64>)]) -> Result<String> {
    let finite: Vec<Vec<f64>> = series
        .iter()
        .map(|(_, v)| v.iter().copied().filter(|x| x.is_finite()).collect())
        .collect();
    let all: Vec<f64> = finite.iter().flatten().copied().collect();
    let (lo, hi) = if all.is_empty() {
        (0.0, 1.0)
    } else {
        let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = all.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let pad = ((hi - lo) * 0.08).max(1e-3);
        (lo - pad, hi + pad)
    };
    let n = series.len().max(1);
    let box_colour = RGBColor(40, 80, 200);
    let mut svg = String::new();
    {
        let width = (120 + 110 * n) as u32;
        let root = SVGBackend::with_string(&mut svg, (width.max(320), 300)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .caption(axis, ("sans-serif", 18))
            .x_label_area_size(28)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..n as f64, lo..hi)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .draw()
            .map_err(plot_error)?;
        for (i, values) in finite.iter().enumerate() {
            let x = i as f64 + 0.5;
            // The class name under its box.
            let (px, py) = chart.backend_coord(&(x, lo));
            let name = &series[i].0;
            let half = (name.chars().count() as i32 * 7) / 2;
            root.draw(&Text::new(
                name.clone(),
                (px - half, py + 8),
                ("sans-serif", 13),
            ))
            .map_err(plot_error)?;
            if values.is_empty() {
                continue;
            }
            let mut v = values.clone();
            let (q1, median, q3) = (
                percentile(&mut v, 25.0),
                percentile(&mut v, 50.0),
                percentile(&mut v, 75.0),
            );
            let reach = 1.5 * (q3 - q1);
            let low = v
                .iter()
                .copied()
                .filter(|&a| a >= q1 - reach)
                .fold(q1, f64::min);
            let high = v
                .iter()
                .copied()
                .filter(|&a| a <= q3 + reach)
                .fold(q3, f64::max);
            let (l, r) = (x - 0.2, x + 0.2);
            let line =
                |points: Vec<(f64, f64)>| PathElement::new(points, box_colour.stroke_width(2));
            chart
                .draw_series([
                    line(vec![(x, low), (x, q1)]),
                    line(vec![(x, q3), (x, high)]),
                    line(vec![(x - 0.1, low), (x + 0.1, low)]),
                    line(vec![(x - 0.1, high), (x + 0.1, high)]),
                    line(vec![(l, median), (r, median)]),
                ])
                .map_err(plot_error)?;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(l, q1), (r, q3)],
                    box_colour.stroke_width(2),
                )))
                .map_err(plot_error)?;
            // The cases, spread a little sideways so equal values stay visible.
            chart
                .draw_series(values.iter().enumerate().map(|(j, &a)| {
                    let dx = ((j * 37) % 11) as f64 / 10.0 - 0.5;
                    Circle::new((x + 0.12 * dx, a), 2, RGBColor(90, 90, 90).filled())
                }))
                .map_err(plot_error)?;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the box plot: {e:?}")
}

/// Draws the overlay picture of one case into `path`; returns the slice index shown (in the
/// canonical orientation).
fn overlay_png(case: &CaseRow, image: Option<&Path>, path: &Path) -> Result<usize> {
    let reference = read_volume(&case.reference)?;
    let prediction = read_volume(&case.prediction)?;
    let orientation = Orientation::from_affine(&reference.header.affine());
    let shape = reference.shape;
    let [nx, ny, nz] = orientation.canonical_shape(shape);
    let spacing = orientation.canonical_spacing(reference.header.spacing());
    let canon = |v: &[f32]| orientation.to_canonical(v, shape);
    let (r, p) = (canon(&reference.data), canon(&prediction.data));
    let scan = match image {
        Some(file) => {
            let v = read_volume(file)?;
            anyhow::ensure!(
                v.shape == shape,
                "{}: shape {:?} differs from its reference's {:?}",
                file.display(),
                v.shape,
                shape
            );
            Some(canon(&v.data))
        }
        None => None,
    };
    let plane = nx * ny;
    // The axial slice with the most reference voxels; the prediction's if the reference is empty.
    let count = |m: &[f32], z: usize| {
        m[z * plane..(z + 1) * plane]
            .iter()
            .filter(|&&v| v != 0.0)
            .count()
    };
    let mut z = (0..nz)
        .max_by_key(|&z| (count(&r, z), z == nz / 2))
        .unwrap_or(0);
    if count(&r, z) == 0 {
        z = (0..nz)
            .max_by_key(|&z| (count(&p, z), z == nz / 2))
            .unwrap_or(0);
    }

    // Picture size in proportion to the slice's extent in mm.
    let (wx, wy) = (nx as f64 * spacing[0], ny as f64 * spacing[1]);
    let k = OVERLAY_SIDE / wx.max(wy);
    let (w, h) = (
        ((wx * k).round() as usize).max(1),
        ((wy * k).round() as usize).max(1),
    );
    // Radiological view: the patient's right (+x in RAS) on the left, anterior (+y) up.
    let voxel = |c: usize, row: usize| -> usize {
        let x = nx - 1 - (c * nx / w).min(nx - 1);
        let y = ny - 1 - (row * ny / h).min(ny - 1);
        z * plane + y * nx + x
    };
    let (lo, hi) = match &scan {
        Some(s) => {
            let mut v: Vec<f64> = s[z * plane..(z + 1) * plane]
                .iter()
                .map(|&x| x as f64)
                .filter(|x| x.is_finite())
                .collect();
            let lo = percentile(&mut v, 0.5);
            let hi = percentile(&mut v, 99.5);
            (lo, if hi > lo { hi } else { lo + 1.0 })
        }
        None => (0.0, 1.0),
    };
    let mut img = image::RgbImage::new(w as u32, h as u32);
    let edge = |m: &[f32], c: usize, row: usize| -> bool {
        let v = m[voxel(c, row)];
        if v == 0.0 {
            return false;
        }
        let differs = |cc: usize, rr: usize| m[voxel(cc, rr)] != v;
        c == 0
            || row == 0
            || c + 1 == w
            || row + 1 == h
            || differs(c - 1, row)
            || differs(c + 1, row)
            || differs(c, row - 1)
            || differs(c, row + 1)
    };
    for row in 0..h {
        for c in 0..w {
            let gray = scan.as_ref().map_or(0, |s| {
                let t = ((s[voxel(c, row)] as f64 - lo) / (hi - lo)).clamp(0.0, 1.0);
                (t * 255.0).round() as u8
            });
            let rgb = match (edge(&r, c, row), edge(&p, c, row)) {
                (true, true) => BOTH_RGB,
                (true, false) => REFERENCE_RGB,
                (false, true) => PREDICTION_RGB,
                (false, false) => [gray; 3],
            };
            img.put_pixel(c as u32, row as u32, image::Rgb(rgb));
        }
    }
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .with_context(|| format!("{}: cannot encode PNG", path.display()))?;
    write_atomic(path, &png)?;
    Ok(z)
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
