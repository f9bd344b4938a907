//! The learning curve of a run: training loss and validation Dice against the step, drawn from
//! `log.jsonl` as an SVG picture (plotters), so a run can be judged at a glance.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

/// File name of the picture in a run folder.
pub const CURVE_FILE: &str = "learning_curve.svg";

/// Colours of the validation curves: mean foreground, then one per class.
const COLOURS: [RGBColor; 6] = [
    RGBColor(0, 0, 0),
    RGBColor(40, 80, 200),
    RGBColor(220, 90, 30),
    RGBColor(40, 160, 60),
    RGBColor(150, 50, 170),
    RGBColor(120, 120, 120),
];

/// The points of a log: (step, train loss), and per validated epoch (step, per-class Dice, mean).
struct Points {
    loss: Vec<(f64, f64)>,
    val: Vec<(f64, Vec<f64>, f64)>,
}

fn parse(log: &str, path: &Path) -> Result<Points> {
    let mut points = Points {
        loss: Vec::new(),
        val: Vec::new(),
    };
    for (n, line) in log.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON line", path.display(), n + 1))?;
        let Some(step) = v["step"].as_f64() else {
            continue;
        };
        if let Some(loss) = v["train_loss"].as_f64().filter(|l| l.is_finite()) {
            points.loss.push((step, loss));
        }
        if let (Some(dice), Some(mean)) = (
            v["val_dice"].as_array(),
            v["val_mean_foreground_dice"].as_f64(),
        ) {
            let dice = dice
                .iter()
                .map(|d| d.as_f64().unwrap_or(f64::NAN))
                .collect();
            points.val.push((step, dice, mean));
        }
    }
    Ok(points)
}

/// Few enough step labels that five-digit step counts fit side by side in half the picture.
const STEP_LABELS: usize = 5;

/// Steps are whole numbers; plotters' default float labels ("2000.0") run into each other.
fn step_label(step: &f64) -> String {
    format!("{step:.0}")
}

/// Draws the learning curve of `log` (the text of a `log.jsonl`); `classes` names the foreground
/// classes in label order, for the legend.
pub fn learning_curve_svg(log: &str, path: &Path, classes: &[String]) -> Result<String> {
    let p = parse(log, path)?;
    let err = |e: &dyn std::fmt::Debug| anyhow::anyhow!("cannot draw the learning curve: {e:?}");
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 340)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let (left, right) = root.split_horizontally(450);
        let max_step = p
            .loss
            .iter()
            .map(|&(s, _)| s)
            .chain(p.val.iter().map(|(s, _, _)| *s))
            .fold(1.0, f64::max);

        let (lo, hi) = p
            .loss
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &(_, l)| {
                (a.min(l), b.max(l))
            });
        let (lo, hi) = if lo.is_finite() {
            let pad = ((hi - lo) * 0.05).max(1e-3);
            (lo - pad, hi + pad)
        } else {
            (0.0, 1.0)
        };
        let mut chart = axes(&left, "training loss (Dice + CE)", max_step, lo..hi)?;
        chart
            .draw_series(LineSeries::new(
                p.loss.iter().copied(),
                COLOURS[1].stroke_width(2),
            ))
            .map_err(|e| err(&e))?;

        let mut chart = axes(&right, "validation Dice", max_step, 0.0..1.0)?;
        let mean: Vec<(f64, f64)> = p.val.iter().map(|(s, _, m)| (*s, *m)).collect();
        chart
            .draw_series(LineSeries::new(mean.clone(), COLOURS[0].stroke_width(2)))
            .map_err(|e| err(&e))?
            .label("mean foreground")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], COLOURS[0].stroke_width(2)));
        chart
            .draw_series(
                mean.iter()
                    .map(|&pt| Circle::new(pt, 3, COLOURS[0].filled())),
            )
            .map_err(|e| err(&e))?;
        let n_classes = p.val.first().map_or(0, |(_, d, _)| d.len());
        for k in 1..n_classes {
            let colour = COLOURS[1 + (k - 1) % (COLOURS.len() - 1)];
            let series: Vec<(f64, f64)> = p
                .val
                .iter()
                .filter_map(|(s, d, _)| d.get(k).filter(|v| v.is_finite()).map(|&v| (*s, v)))
                .collect();
            let name = classes
                .get(k - 1)
                .cloned()
                .unwrap_or_else(|| format!("class {k}"));
            chart
                .draw_series(LineSeries::new(series, colour.stroke_width(1)))
                .map_err(|e| err(&e))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(1))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

/// A chart with step on the x axis (0 to `max_step`) and `y` on the other, its mesh drawn.
fn axes<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: &str,
    max_step: f64,
    y: std::ops::Range<f64>,
) -> Result<ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>> {
    let err = |e: &dyn std::fmt::Debug| anyhow::anyhow!("cannot draw the learning curve: {e:?}");
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .caption(caption, ("sans-serif", 16))
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_step, y)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_labels(STEP_LABELS)
        .x_label_formatter(&step_label)
        .draw()
        .map_err(|e| err(&e))?;
    Ok(chart)
}

/// Writes `learning_curve.svg` into a run folder from its `log.jsonl`; returns its path.
pub fn write_learning_curve(run_dir: &Path, classes: &[String]) -> Result<PathBuf> {
    let log_path = run_dir.join("log.jsonl");
    let log = std::fs::read_to_string(&log_path)
        .with_context(|| format!("{}: cannot read", log_path.display()))?;
    let svg = learning_curve_svg(&log, &log_path, classes)?;
    let out = run_dir.join(CURVE_FILE);
    segmenter_io::write_bytes_atomic(&out, svg.as_bytes())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_curve_draws_losses_and_validation_points() {
        let log = "{\"epoch\":0,\"step\":50,\"train_loss\":0.5}\n\
                   {\"epoch\":1,\"step\":100,\"train_loss\":-0.2,\"val_dice\":[0.99,0.7,0.6],\"val_mean_foreground_dice\":0.65}\n\
                   {\"epoch\":2,\"step\":150,\"train_loss\":-0.4,\"val_dice\":[0.99,0.8,0.75],\"val_mean_foreground_dice\":0.775}\n";
        let p = parse(log, Path::new("log.jsonl")).unwrap();
        assert_eq!(p.loss.len(), 3);
        assert_eq!(p.val.len(), 2);
        let svg = learning_curve_svg(
            log,
            Path::new("log.jsonl"),
            &["Anterior".into(), "Posterior".into()],
        )
        .unwrap();
        assert!(svg.starts_with("<svg") || svg.contains("<svg"));
        for text in [
            "training loss",
            "validation Dice",
            "Anterior",
            "Posterior",
            "mean foreground",
        ] {
            assert!(svg.contains(text), "missing {text}");
        }
        // Three validation markers would mean a point was invented; two are drawn.
        assert_eq!(svg.matches("<circle").count(), 2);
        // A long run's step axis: whole-number labels, not "2000.0".
        let long: String = (1..=20)
            .map(|e| {
                format!(
                    "{{\"epoch\":{e},\"step\":{},\"train_loss\":0.1,\"val_dice\":[0.9,0.8],\"val_mean_foreground_dice\":0.8}}\n",
                    e * 600
                )
            })
            .collect();
        let svg = learning_curve_svg(&long, Path::new("log.jsonl"), &["A".into()]).unwrap();
        let texts: Vec<&str> = svg
            .split('>')
            .filter_map(|t| t.split('<').next())
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
        // Losses and Dice lie below 1000 here, so larger numbers are step labels.
        let step_labels: Vec<&&str> = texts
            .iter()
            .filter(|t| t.parse::<f64>().is_ok_and(|v| v >= 1000.0))
            .collect();
        assert!(step_labels.len() >= 2, "no step labels: {texts:?}");
        assert!(
            step_labels.iter().all(|t| !t.contains('.')),
            "fractional step labels: {step_labels:?}"
        );
        let bad = learning_curve_svg("{not json", Path::new("run/log.jsonl"), &[]).unwrap_err();
        assert!(format!("{bad:#}").contains("run/log.jsonl:1"), "{bad:#}");
    }
}
