//! The dataset fingerprint behind a plan: spacings, shapes and foreground intensities.

use segmenter_io::LoadedCase;
use serde::{Deserialize, Serialize};

/// Intensity statistics of one channel over the labelled (foreground) voxels of the dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForegroundIntensities {
    /// Channel name.
    pub channel: String,
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub std: f64,
    /// 0.5th percentile.
    pub percentile_00_5: f64,
    /// 99.5th percentile.
    pub percentile_99_5: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

/// The dataset fingerprint behind a plan (nnU-Net's `dataset_fingerprint.json`, condensed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Cases the fingerprint was computed from.
    pub cases: usize,
    /// Median voxel spacing per axis, in mm.
    pub median_spacing_mm: [f64; 3],
    /// Smallest and largest spacing per axis, in mm.
    pub spacing_range_mm: [[f64; 2]; 3],
    /// Median shape per axis, in voxels.
    pub median_shape: [usize; 3],
    /// Smallest and largest shape per axis.
    pub shape_range: [[usize; 2]; 3],
    /// Foreground intensity statistics per channel.
    pub foreground_intensities: Vec<ForegroundIntensities>,
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

impl Fingerprint {
    /// Computes the fingerprint of loaded, labelled cases.
    pub fn of(channel_names: &[String], cases: &[LoadedCase]) -> Self {
        let axis_f = |a: usize| {
            cases
                .iter()
                .map(|c| c.header.spacing()[a])
                .collect::<Vec<f64>>()
        };
        let axis_s = |a: usize| cases.iter().map(|c| c.shape[a]).collect::<Vec<usize>>();
        let range_f = |v: Vec<f64>| {
            [
                v.iter().copied().fold(f64::INFINITY, f64::min),
                v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            ]
        };
        let range_s = |v: Vec<usize>| {
            [
                v.iter().copied().min().unwrap_or(0),
                v.iter().copied().max().unwrap_or(0),
            ]
        };
        let median_s = |mut v: Vec<usize>| {
            v.sort();
            v.get(v.len() / 2).copied().unwrap_or(0)
        };
        let foreground_intensities = channel_names
            .iter()
            .enumerate()
            .map(|(ch, name)| {
                let mut values = foreground_values(cases, ch);
                values.sort_by(f32::total_cmp);
                let n = values.len().max(1) as f64;
                let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
                let std = (values
                    .iter()
                    .map(|&v| (v as f64 - mean).powi(2))
                    .sum::<f64>()
                    / n)
                    .sqrt();
                let pct = |p: f64| {
                    values
                        .get(((values.len().saturating_sub(1)) as f64 * p).round() as usize)
                        .map_or(f64::NAN, |&v| v as f64)
                };
                ForegroundIntensities {
                    channel: name.clone(),
                    mean,
                    std,
                    percentile_00_5: pct(0.005),
                    percentile_99_5: pct(0.995),
                    min: pct(0.0),
                    max: pct(1.0),
                }
            })
            .collect();
        Fingerprint {
            cases: cases.len(),
            median_spacing_mm: [0, 1, 2].map(|a| median_f64(axis_f(a))),
            spacing_range_mm: [0, 1, 2].map(|a| range_f(axis_f(a))),
            median_shape: [0, 1, 2].map(|a| median_s(axis_s(a))),
            shape_range: [0, 1, 2].map(|a| range_s(axis_s(a))),
            foreground_intensities,
        }
    }
}

/// Foreground voxels of one channel over all cases, subsampled to at most ~100k per case so
/// memory stays bounded on large datasets.
pub fn foreground_values(cases: &[LoadedCase], channel: usize) -> Vec<f32> {
    let mut values = Vec::new();
    for case in cases {
        let (Some(label), Some(image)) = (&case.label, case.channels.get(channel)) else {
            continue;
        };
        let fg: Vec<f32> = image
            .data
            .iter()
            .zip(label)
            .filter(|(_, &l)| l != 0)
            .map(|(&v, _)| v)
            .collect();
        let stride = (fg.len() / 100_000).max(1);
        values.extend(fg.into_iter().step_by(stride));
    }
    values
}
