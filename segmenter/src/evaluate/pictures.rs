//! The pictures of the HTML report: SVG box plots (plotters) and PNG overlays of reference and
//! prediction contours over the scan (image).

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;
use segmenter_io::{read_volume, Orientation};

use super::distance::percentile;
use segmenter_io::write_bytes_atomic as write_atomic;

/// Colours of the overlay contours: reference, prediction, both.
pub(super) const REFERENCE_RGB: [u8; 3] = [40, 220, 60];
pub(super) const PREDICTION_RGB: [u8; 3] = [235, 40, 40];
pub(super) const BOTH_RGB: [u8; 3] = [250, 220, 30];

/// Longest side of an overlay picture, in pixels.
pub(super) const OVERLAY_SIDE: f64 = 320.0;

/// An SVG box plot with one box per class and the cases as dots. Boxes span the quartiles
/// (numpy's linear interpolation, as in the tables), whiskers reach the most extreme case within
/// 1.5 interquartile ranges (Tukey), so nothing is drawn where there is no data.
pub(super) fn box_plot_svg(axis: &str, series: &[(String, Vec<f64>)]) -> Result<String> {
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

/// Draws the overlay picture of one case (its reference and predicted label maps, over its scan
/// when there is one) into `path`; returns the slice index shown (in the canonical orientation).
pub(super) fn overlay_png(
    reference: &Path,
    prediction: &Path,
    image: Option<&Path>,
    path: &Path,
) -> Result<usize> {
    let reference = read_volume(reference)?;
    let prediction = read_volume(prediction)?;
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
