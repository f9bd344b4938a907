//! How each input channel's intensities are normalised: per-case z-score, or CT's dataset-wide
//! clipping and z-score.

use segmenter_io::LoadedCase;
use serde::{Deserialize, Serialize};

use super::fingerprint::foreground_values;
use crate::model::ops::stats::mean_variance;

/// How one input channel's intensities are normalised.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "scheme", rename_all = "snake_case")]
pub enum Normalization {
    /// Per-case z-score (MRI and everything that is not CT).
    ZScore,
    /// CT: clip to the dataset's foreground percentiles, then z-score with the foreground statistics.
    Ct {
        /// 0.5th percentile of foreground intensities.
        lower: f32,
        /// 99.5th percentile of foreground intensities.
        upper: f32,
        /// Mean of clipped foreground intensities.
        mean: f32,
        /// Standard deviation of clipped foreground intensities.
        std: f32,
    },
}

impl Normalization {
    /// Normalises one channel in place.
    pub fn apply(&self, values: &mut [f32]) {
        match *self {
            Normalization::ZScore => {
                let (mean, var) = mean_variance(values);
                let std = var.sqrt().max(1e-8);
                for v in values {
                    *v = ((*v as f64 - mean) / std) as f32;
                }
            }
            Normalization::Ct {
                lower,
                upper,
                mean,
                std,
            } => {
                let std = std.max(1e-8);
                for v in values {
                    *v = (v.clamp(lower, upper) - mean) / std;
                }
            }
        }
    }
}

/// CT normalisation from the foreground intensities of the training cases (nnU-Net's scheme).
pub fn ct_statistics(cases: &[LoadedCase], channel: usize) -> Normalization {
    let mut values = foreground_values(cases, channel);
    if values.is_empty() {
        return Normalization::ZScore;
    }
    values.sort_by(f32::total_cmp);
    let pct = |p: f64| values[((values.len() - 1) as f64 * p).round() as usize];
    let (lower, upper) = (pct(0.005), pct(0.995));
    let clipped: Vec<f64> = values
        .iter()
        .map(|v| v.clamp(lower, upper) as f64)
        .collect();
    let mean = clipped.iter().sum::<f64>() / clipped.len() as f64;
    let std =
        (clipped.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / clipped.len() as f64).sqrt();
    Normalization::Ct {
        lower,
        upper,
        mean: mean as f32,
        std: std as f32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zscore_and_ct_normalisation_match_hand_computed_values() {
        let mut v = vec![1.0, 2.0, 3.0, 4.0];
        Normalization::ZScore.apply(&mut v);
        let std = 1.25f32.sqrt();
        assert!((v[0] - (-1.5 / std)).abs() < 1e-6 && (v[3] - 1.5 / std).abs() < 1e-6);
        let mut ct = vec![-2000.0, 0.0, 100.0, 5000.0];
        Normalization::Ct {
            lower: -1000.0,
            upper: 1000.0,
            mean: 50.0,
            std: 10.0,
        }
        .apply(&mut ct);
        assert_eq!(ct, vec![-105.0, -5.0, 5.0, 95.0]);
    }
}
