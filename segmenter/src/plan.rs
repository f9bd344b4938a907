//! The preprocessing plan of a run: how volumes become normalised 2D slices for the network, and
//! back. Written to `<RUN_DIR>/plan.json` so predictions can be traced to the plan.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use segmenter_io::geometry::Orientation;
use segmenter_io::{Dataset, LoadedCase};
use serde::{Deserialize, Serialize};

use crate::model::DOWNSAMPLING;

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
                let n = values.len().max(1) as f64;
                let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
                let var = values
                    .iter()
                    .map(|&v| (v as f64 - mean).powi(2))
                    .sum::<f64>()
                    / n;
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

/// Everything predict needs to turn a scan into network input and the output into a label map.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Dataset name, for reports.
    pub dataset_name: String,
    /// Channel names (`"MRI"`, `"CT"`, …), one per input file of a case.
    pub channel_names: Vec<String>,
    /// Label id -> name, background included.
    pub labels: BTreeMap<u8, String>,
    /// File ending of the dataset's images (`.nii.gz`).
    pub file_ending: String,
    /// Volume axis (0, 1 or 2 in file order) the network slices along.
    pub slice_axis: usize,
    /// Patch size `[rows, cols]` of the 2D network input, multiples of 32.
    pub patch_size: [usize; 2],
    /// Normalisation per channel.
    pub normalization: Vec<Normalization>,
    /// What the plan was derived from.
    #[serde(default)]
    pub fingerprint: Option<Fingerprint>,
    /// Whether volumes are reoriented to the canonical (closest to RAS+) axis order before slicing
    /// and back after prediction; false only in plans written before reorientation existed.
    #[serde(default)]
    pub reorient: bool,
    /// In-plane voxel spacing (mm) the network works at, along the two in-plane axes of the
    /// canonical frame ([`in_plane_axes`]); slices of another spacing are resampled to it and the
    /// prediction back. None: every slice as it is (plans written before resampling existed).
    #[serde(default)]
    pub target_spacing: Option<[f64; 2]>,
    /// Neighbouring slices on each side fed to the network with each slice, as extra input
    /// channels (2.5D); 0: the slice alone.
    #[serde(default)]
    pub context_slices: usize,
}

/// A case's channels and label in the frame the network sees: reoriented when the plan says so.
pub struct NetworkCase {
    /// How the case was reoriented (identity when it was not).
    pub orientation: Orientation,
    /// Shape of the case as stored in its file.
    pub file_shape: [usize; 3],
    /// Shape in the canonical orientation, before any resampling.
    pub canonical_shape: [usize; 3],
    /// Shape in the network's frame (canonical orientation, slices at the plan's spacing).
    pub shape: [usize; 3],
    /// Voxel spacing in the network's frame, in mm.
    pub spacing: [f64; 3],
    /// Channels in the network's frame (not normalised).
    pub channels: Vec<Vec<f32>>,
    /// Label map in the network's frame, if the case has one.
    pub label: Option<Vec<u8>>,
}

impl NetworkCase {
    /// Brings a loaded case into the network's frame.
    pub fn new(case: &LoadedCase, reorient: bool) -> Self {
        let orientation = if reorient {
            Orientation::from_affine(&case.header.affine())
        } else {
            Orientation::identity()
        };
        let file_shape = case.shape;
        let canonical_shape = orientation.canonical_shape(file_shape);
        Self {
            orientation,
            file_shape,
            canonical_shape,
            shape: canonical_shape,
            spacing: orientation.canonical_spacing(case.header.spacing()),
            channels: case
                .channels
                .iter()
                .map(|v| orientation.to_canonical(&v.data, file_shape))
                .collect(),
            label: case
                .label
                .as_ref()
                .map(|l| orientation.to_canonical(l, file_shape)),
        }
    }

    /// Brings a loaded case into the network's frame as `plan` says: reoriented, and its slices
    /// resampled to the plan's in-plane spacing (images with cubic interpolation, labels without
    /// inventing classes) when theirs differs.
    pub fn for_plan(case: &LoadedCase, plan: &Plan) -> Self {
        let mut frame = Self::new(case, plan.reorient);
        let shape = network_shape(
            frame.shape,
            frame.spacing,
            plan.slice_axis,
            plan.target_spacing,
        );
        if shape != frame.shape {
            let from = frame.shape;
            for values in &mut frame.channels {
                *values = segmenter_io::resample_cubic(values, from, shape);
            }
            if let Some(label) = &mut frame.label {
                *label = segmenter_io::resample_labels(label, from, shape);
            }
            for a in 0..3 {
                frame.spacing[a] *= from[a] as f64 / shape[a] as f64;
            }
            frame.shape = shape;
        }
        frame
    }

    /// Whether the slices were resampled for the network.
    pub fn is_resampled(&self) -> bool {
        self.shape != self.canonical_shape
    }

    /// Maps a label map from the network's frame back to the file's voxel order (label
    /// resampling when the slices were resampled; see [`NetworkCase::prediction_to_file`] for the
    /// better way when probabilities are at hand).
    pub fn labels_to_file(&self, labels: &[u8]) -> Vec<u8> {
        let labels = if self.is_resampled() {
            segmenter_io::resample_labels(labels, self.shape, self.canonical_shape)
        } else {
            labels.to_vec()
        };
        self.orientation.from_canonical(&labels, self.file_shape)
    }

    /// Maps a prediction from the network's frame back to the file's voxel order. When the
    /// slices were resampled, the class probabilities are resampled (linearly) and the labels are
    /// their argmax, as nnU-Net does; `probabilities` must then be given.
    pub fn prediction_to_file(
        &self,
        labels: Vec<u8>,
        probabilities: Option<Vec<Vec<f32>>>,
    ) -> (Vec<u8>, Option<Vec<Vec<f32>>>) {
        let probabilities = probabilities.map(|p| {
            p.into_iter()
                .map(|class| {
                    if self.is_resampled() {
                        segmenter_io::resample_linear(&class, self.shape, self.canonical_shape)
                    } else {
                        class
                    }
                })
                .collect::<Vec<_>>()
        });
        let labels = match (&probabilities, self.is_resampled()) {
            (Some(p), true) => {
                let mut labels = vec![0u8; p.first().map_or(0, Vec::len)];
                crate::infer::argmax_into(p, &mut labels);
                labels
            }
            (None, true) => {
                segmenter_io::resample_labels(&labels, self.shape, self.canonical_shape)
            }
            (_, false) => labels,
        };
        let to_file = |v: &[f32]| self.orientation.from_canonical(v, self.file_shape);
        (
            self.orientation.from_canonical(&labels, self.file_shape),
            probabilities.map(|p| p.iter().map(|c| to_file(c)).collect()),
        )
    }
}

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
fn foreground_values(cases: &[LoadedCase], channel: usize) -> Vec<f32> {
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

/// How volumes are cut into network inputs: derived from the cases' shapes and spacings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Slicing {
    /// Axis (canonical frame) the network slices along.
    pub slice_axis: usize,
    /// In-plane spacing (mm) every slice is resampled to.
    pub target_spacing: [f64; 2],
    /// Patch size `[rows, cols]`, multiples of the network's downsampling.
    pub patch_size: [usize; 2],
}

/// The slicing for volumes with these (canonical) shapes and spacings.
///
/// Slices along the axis with the coarsest spacing (ties: the last axis), as nnU-Net's 2D
/// configuration does, so each slice is sampled at the finest in-plane resolution; the in-plane
/// target spacing is the median of the cases' (nnU-Net's choice too); the patch covers the largest
/// slice once resampled, rounded up to the network's downsampling and capped.
pub fn slicing(frames: &[([usize; 3], [f64; 3])], max_patch_side: usize) -> Slicing {
    let mut spacing_sum = [0.0f64; 3];
    for (_, s) in frames {
        for a in 0..3 {
            spacing_sum[a] += s[a];
        }
    }
    let slice_axis = (0..3)
        .max_by(|&a, &b| spacing_sum[a].total_cmp(&spacing_sum[b]))
        .unwrap_or(2);
    let [r, c] = in_plane_axes(slice_axis);
    let median = |axis: usize| {
        let mut v: Vec<f64> = frames
            .iter()
            .map(|(_, s)| s[axis])
            .filter(|x| x.is_finite() && *x > 0.0)
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(1.0)
    };
    let target_spacing = [median(r), median(c)];
    let resampled: Vec<[usize; 3]> = frames
        .iter()
        .map(|&(shape, spacing)| network_shape(shape, spacing, slice_axis, Some(target_spacing)))
        .collect();
    Slicing {
        slice_axis,
        target_spacing,
        patch_size: patch_size_for(&resampled, slice_axis, max_patch_side),
    }
}

/// The patch that covers the largest slice of volumes of these network-frame shapes, rounded up
/// to the network's downsampling and capped at `max_patch_side`.
pub fn patch_size_for(
    shapes: &[[usize; 3]],
    slice_axis: usize,
    max_patch_side: usize,
) -> [usize; 2] {
    let [r, c] = in_plane_axes(slice_axis);
    let max_rows = shapes.iter().map(|shape| shape[r]).max().unwrap_or(1);
    let max_cols = shapes.iter().map(|shape| shape[c]).max().unwrap_or(1);
    let side = |n: usize| n.div_ceil(DOWNSAMPLING).max(1) * DOWNSAMPLING;
    let cap = (max_patch_side / DOWNSAMPLING).max(1) * DOWNSAMPLING;
    [side(max_rows).min(cap), side(max_cols).min(cap)]
}

/// Shape of a canonical volume once its slices are resampled to `target` in-plane spacing (the
/// slice axis keeps its length).
pub fn network_shape(
    shape: [usize; 3],
    spacing: [f64; 3],
    slice_axis: usize,
    target: Option<[f64; 2]>,
) -> [usize; 3] {
    let Some([tr, tc]) = target else {
        return shape;
    };
    let [r, c] = in_plane_axes(slice_axis);
    let mut full = spacing;
    full[r] = tr;
    full[c] = tc;
    segmenter_io::shape_for_spacing(shape, spacing, full)
}

impl Plan {
    /// Names of the foreground classes (label 0 left out), in label order.
    pub fn foreground_names(&self) -> Vec<String> {
        self.labels
            .iter()
            .filter(|(k, _)| **k != 0)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Number of network input channels: each image channel at the slice and its neighbours.
    pub fn input_channels(&self) -> usize {
        self.channel_names.len() * (2 * self.context_slices + 1)
    }

    /// Number of output classes (background included).
    pub fn num_classes(&self) -> usize {
        self.labels.keys().max().map_or(1, |&m| m as usize + 1)
    }

    /// Derives the plan from a dataset and its loaded training cases.
    pub fn from_dataset(dataset: &Dataset, cases: &[LoadedCase], max_patch_side: usize) -> Self {
        // Shapes and spacings in the network's (canonical) frame, where slicing happens.
        let frames: Vec<([usize; 3], [f64; 3])> = cases
            .iter()
            .map(|c| {
                let o = Orientation::from_affine(&c.header.affine());
                (
                    o.canonical_shape(c.shape),
                    o.canonical_spacing(c.header.spacing()),
                )
            })
            .collect();
        let Slicing {
            slice_axis,
            target_spacing,
            patch_size,
        } = slicing(&frames, max_patch_side);
        let normalization = dataset
            .channel_names
            .iter()
            .enumerate()
            .map(|(ch, name)| {
                if name.eq_ignore_ascii_case("CT") {
                    ct_statistics(cases, ch)
                } else {
                    Normalization::ZScore
                }
            })
            .collect();
        Plan {
            dataset_name: dataset.name.clone(),
            channel_names: dataset.channel_names.clone(),
            labels: dataset.labels.clone(),
            file_ending: dataset.file_ending.clone(),
            slice_axis,
            patch_size,
            normalization,
            fingerprint: Some(Fingerprint::of(&dataset.channel_names, cases)),
            reorient: true,
            target_spacing: Some(target_spacing),
            context_slices: 0,
        }
    }

    /// A short description in plain words, printed before training.
    pub fn describe(&self) -> String {
        let norms: Vec<String> = self
            .normalization
            .iter()
            .zip(&self.channel_names)
            .map(|(n, name)| match n {
                Normalization::ZScore => format!("{name}: per-case z-score"),
                Normalization::Ct { lower, upper, .. } => {
                    format!("{name}: clip to [{lower:.0}, {upper:.0}] then z-score")
                }
            })
            .collect();
        let labels: Vec<String> = self
            .labels
            .iter()
            .filter(|(k, _)| **k != 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let spacing = self.target_spacing.map_or(String::new(), |[a, b]| {
            format!(" (slices resampled to {a:.3}×{b:.3} mm)")
        });
        let context = match self.context_slices {
            0 => String::new(),
            1 => ", each with its neighbour on each side as extra channels".to_string(),
            k => format!(", each with {k} neighbours on each side as extra channels"),
        };
        format!(
            "slices along axis {} of {}×{} pixels{spacing}{context}; classes {}; normalisation {}",
            self.slice_axis,
            self.patch_size[0],
            self.patch_size[1],
            labels.join(", "),
            norms.join("; ")
        )
    }

    /// Writes `plan.json` (atomically).
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_atomic(path, serde_json::to_string_pretty(self)?.as_bytes())
    }

    /// Reads a `plan.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: invalid plan", path.display()))
    }

    /// Normalises the channels of a case (in place) as the plan says.
    pub fn normalize(&self, channels: &mut [Vec<f32>]) {
        for (values, norm) in channels.iter_mut().zip(&self.normalization) {
            norm.apply(values);
        }
    }
}

fn ct_statistics(cases: &[LoadedCase], channel: usize) -> Normalization {
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

/// The two in-plane axes (rows, cols) for a slice axis.
pub fn in_plane_axes(slice_axis: usize) -> [usize; 2] {
    match slice_axis {
        0 => [1, 2],
        1 => [0, 2],
        _ => [0, 1],
    }
}

/// A 3D array in NIfTI file order (x fastest) viewed as a stack of 2D slices along one axis.
#[derive(Clone, Copy, Debug)]
pub struct SliceGeometry {
    /// Volume shape `[x, y, z]`.
    pub shape: [usize; 3],
    /// Axis the slices are taken along.
    pub slice_axis: usize,
}

impl SliceGeometry {
    /// Number of slices.
    pub fn count(&self) -> usize {
        self.shape[self.slice_axis]
    }

    /// `[rows, cols]` of each slice.
    pub fn slice_shape(&self) -> [usize; 2] {
        let [r, c] = in_plane_axes(self.slice_axis);
        [self.shape[r], self.shape[c]]
    }

    fn index(&self, slice: usize, row: usize, col: usize) -> usize {
        let [r, c] = in_plane_axes(self.slice_axis);
        let mut p = [0usize; 3];
        p[self.slice_axis] = slice;
        p[r] = row;
        p[c] = col;
        p[0] + self.shape[0] * (p[1] + self.shape[1] * p[2])
    }

    /// The slices `slice - k ..= slice + k`, those beyond either end of the stack replaced by the
    /// end slice, the nearest thing the scan holds to what lies past its end.
    pub fn context(&self, slice: usize, k: usize) -> impl Iterator<Item = usize> {
        let last = self.count().saturating_sub(1);
        (0..=2 * k).map(move |i| (slice + i).saturating_sub(k).min(last))
    }

    /// Copies slice `slice` of `volume` into a row-major `[rows, cols]` buffer.
    pub fn extract<T: Copy>(&self, volume: &[T], slice: usize) -> Vec<T> {
        let [rows, cols] = self.slice_shape();
        let mut out = Vec::with_capacity(rows * cols);
        for row in 0..rows {
            for col in 0..cols {
                out.push(volume[self.index(slice, row, col)]);
            }
        }
        out
    }

    /// Writes a row-major `[rows, cols]` buffer back into slice `slice` of `volume`.
    pub fn insert<T: Copy>(&self, volume: &mut [T], slice: usize, values: &[T]) {
        let [rows, cols] = self.slice_shape();
        for row in 0..rows {
            for col in 0..cols {
                volume[self.index(slice, row, col)] = values[row * cols + col];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_slices_repeat_the_end_slices_past_the_ends() {
        let g = SliceGeometry {
            shape: [3, 4, 5],
            slice_axis: 2,
        };
        let ctx = |s, k| g.context(s, k).collect::<Vec<_>>();
        assert_eq!(ctx(2, 0), [2]);
        assert_eq!(ctx(2, 1), [1, 2, 3]);
        assert_eq!(ctx(0, 2), [0, 0, 0, 1, 2]);
        assert_eq!(ctx(4, 2), [2, 3, 4, 4, 4]);
        assert_eq!(ctx(1, 3), [0, 0, 0, 1, 2, 3, 4]);
    }

    #[test]
    fn slicing_picks_the_coarse_axis_the_median_spacing_and_a_patch_for_resampled_slices() {
        // Three cases, canonical frame: 3 mm slices along z; in-plane 0.8, 1.0 and 2.0 mm.
        let frames = [
            ([100, 90, 20], [0.8, 0.8, 3.0]),
            ([70, 60, 30], [1.0, 1.0, 3.0]),
            ([50, 45, 10], [2.0, 2.0, 3.0]),
        ];
        let s = slicing(&frames, 256);
        assert_eq!(s.slice_axis, 2);
        assert_eq!(s.target_spacing, [1.0, 1.0]);
        // At 1 mm the largest slice is the 2 mm case's: 100 x 90 voxels -> 128 x 96 patch.
        assert_eq!(
            network_shape([50, 45, 10], [2.0, 2.0, 3.0], 2, Some([1.0, 1.0])),
            [100, 90, 10]
        );
        assert_eq!(
            network_shape([100, 90, 20], [0.8, 0.8, 3.0], 2, Some([1.0, 1.0])),
            [80, 72, 20]
        );
        assert_eq!(s.patch_size, [128, 96]);
        assert_eq!(
            network_shape([7, 8, 9], [2.0, 2.0, 2.0], 2, None),
            [7, 8, 9]
        );
    }

    #[test]
    fn resampled_cases_come_back_on_their_own_grid() {
        use segmenter_io::{NiftiHeader, Volume};
        // A 2 mm case with two blobs, planned at 1 mm: network sees 2x the slice size.
        let shape = [24, 20, 5];
        let mut label = vec![0u8; 24 * 20 * 5];
        for z in 0..5 {
            for y in 4..12 {
                for x in 3..10 {
                    label[(z * 20 + y) * 24 + x] = 1;
                }
                for x in 14..21 {
                    label[(z * 20 + y + 4) * 24 + x] = 2;
                }
            }
        }
        let image: Vec<f32> = (0..label.len())
            .map(|i| label[i] as f32 * 10.0 + ((i * 31) % 7) as f32)
            .collect();
        let header = NiftiHeader::new(shape, [2.0, 2.0, 2.0]).unwrap();
        let case = LoadedCase {
            id: "c".into(),
            channels: vec![Volume {
                shape,
                data: image,
                header: header.clone(),
            }],
            label: Some(label.clone()),
            shape,
            header,
        };
        let plan = Plan {
            dataset_name: "t".into(),
            channel_names: vec!["MRI".into()],
            labels: BTreeMap::from([(0, "bg".into()), (1, "a".into()), (2, "b".into())]),
            file_ending: ".nii.gz".into(),
            slice_axis: 2,
            patch_size: [64, 64],
            normalization: vec![Normalization::ZScore],
            fingerprint: None,
            reorient: true,
            target_spacing: Some([1.0, 1.0]),
            context_slices: 0,
        };
        let frame = NetworkCase::for_plan(&case, &plan);
        assert!(frame.is_resampled());
        assert_eq!(frame.shape, [48, 40, 5]);
        assert_eq!(frame.spacing, [1.0, 1.0, 2.0]);
        let net_label = frame.label.clone().unwrap();
        assert!(net_label.iter().all(|&v| v <= 2));
        assert_eq!(net_label.iter().filter(|&&v| v == 1).count(), 4 * 7 * 8 * 5);
        // One-hot probabilities of the network-frame label map come back as the original labels.
        let probs: Vec<Vec<f32>> = (0..3u8)
            .map(|k| net_label.iter().map(|&v| f32::from(v == k)).collect())
            .collect();
        let (back, back_probs) = frame.prediction_to_file(net_label.clone(), Some(probs));
        assert_eq!(back, label);
        assert_eq!(back_probs.unwrap()[0].len(), label.len());
        assert_eq!(frame.labels_to_file(&net_label), label);
        // Without target spacing nothing is resampled.
        let plain = NetworkCase::for_plan(
            &case,
            &Plan {
                target_spacing: None,
                ..plan
            },
        );
        assert!(!plain.is_resampled());
        assert_eq!(plain.shape, shape);
    }

    #[test]
    fn slices_round_trip_along_every_axis() {
        let shape = [3, 4, 5];
        let volume: Vec<u32> = (0..60).collect();
        for axis in 0..3 {
            let geometry = SliceGeometry {
                shape,
                slice_axis: axis,
            };
            let mut rebuilt = vec![0u32; 60];
            for s in 0..geometry.count() {
                let slice = geometry.extract(&volume, s);
                assert_eq!(
                    slice.len(),
                    geometry.slice_shape()[0] * geometry.slice_shape()[1]
                );
                geometry.insert(&mut rebuilt, s, &slice);
            }
            assert_eq!(rebuilt, volume, "axis {axis}");
        }
        // Axis 2, slice 1, row 2 (x), col 3 (y): voxel x=2, y=3, z=1.
        let g = SliceGeometry {
            shape,
            slice_axis: 2,
        };
        assert_eq!(g.extract(&volume, 1)[2 * 4 + 3], (2 + 3 * (3 + 4)) as u32);
    }

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
