//! The preprocessing plan of a run: which axis the network slices along, at which in-plane
//! spacing, with which patch and normalisation. Written to `<RUN_DIR>/plan.json` by `train` (and
//! by `segmenter plan`), read by `predict`.

mod fingerprint;
mod nnunet;
mod normalization;
mod slicing;
mod volumetric;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use segmenter_io::geometry::Orientation;
use segmenter_io::{write_bytes_atomic, Dataset, LoadedCase};
use serde::{Deserialize, Serialize};

pub use fingerprint::{Fingerprint, ForegroundIntensities};
pub use nnunet::NnUnetFrame;
pub use normalization::Normalization;
pub use slicing::{in_plane_axes, network_shape, patch_size_for, slicing, Slicing};
pub use volumetric::{
    plan_volumetric, stride_products, strides_for, Configuration, Volumetric, ANISOTROPY_RATIO,
    VOXELS_PER_STEP,
};

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
    /// For runs imported from nnU-Net v2: feed the network exactly as its predictor does (its
    /// axis order, crop to non-zero, normalisation before resampling, its window positions and
    /// Gaussian, window logits averaged before the softmax). None for runs trained here, whose
    /// `plan.json` then does not mention it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nnunet: Option<NnUnetFrame>,
    /// The network the plan recommends (`segmenter plan`, `train --configuration auto`), or, in a
    /// run's `plan.json`, the one the run trained; "2d" in plans written before 3D existed.
    #[serde(default)]
    pub configuration: Configuration,
    /// The 3D configuration; None for datasets of 2D images and plans written before 3D existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumetric: Option<Volumetric>,
}

/// The 3D configuration for cases of these canonical shapes and spacings, in the network's frame
/// (slices resampled in-plane to `target_spacing`, depth along `slice_axis` as it is); None when
/// the cases are single images.
fn volumetric_for(
    frames: &[([usize; 3], [f64; 3])],
    slice_axis: usize,
    target_spacing: [f64; 2],
) -> Option<Volumetric> {
    let [r, c] = in_plane_axes(slice_axis);
    let shapes: Vec<[usize; 3]> = frames
        .iter()
        .map(|&(shape, spacing)| {
            let n = network_shape(shape, spacing, slice_axis, Some(target_spacing));
            [n[slice_axis], n[r], n[c]]
        })
        .collect();
    let mut depths: Vec<usize> = shapes.iter().map(|s| s[0]).collect();
    depths.sort_unstable();
    if depths.get(depths.len() / 2).is_none_or(|&d| d <= 1) {
        return None;
    }
    let spacings: Vec<[f64; 3]> = frames
        .iter()
        .map(|&(_, spacing)| [spacing[slice_axis], target_spacing[0], target_spacing[1]])
        .collect();
    Some(plan_volumetric(&shapes, &spacings, VOXELS_PER_STEP))
}

/// Fewest slices (median) for which the plan recommends the 3D network: thinner stacks give a
/// 3D patch little context that 2.5D lacks.
pub const MIN_SLICES_FOR_3D: usize = 16;

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
        let volumetric = volumetric_for(&frames, slice_axis, target_spacing);
        let configuration = match &volumetric {
            Some(v) if !v.anisotropic && v.patch_size[0] >= MIN_SLICES_FOR_3D => {
                Configuration::Volumetric
            }
            _ => Configuration::Planar,
        };
        let normalization = dataset
            .channel_names
            .iter()
            .enumerate()
            .map(|(ch, name)| {
                if name.eq_ignore_ascii_case("CT") {
                    normalization::ct_statistics(cases, ch)
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
            nnunet: None,
            configuration,
            volumetric,
        }
    }

    /// Whether the plan's (or the run's) network is the volumetric one.
    pub fn is_3d(&self) -> bool {
        self.configuration == Configuration::Volumetric
    }

    /// The 3D configuration, or an error naming why there is none.
    pub fn volumetric(&self) -> Result<&Volumetric> {
        self.volumetric.as_ref().context(
            "the plan has no 3D configuration: its dataset is of 2D images (one slice each), or the plan was written before 3D existed (plan again with `segmenter plan`)",
        )
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
        let network = match (self.configuration, &self.volumetric) {
            (Configuration::Volumetric, Some(v)) => format!(
                "3D patches of {}×{}×{} voxels (depth along axis {}{}), batch {}{spacing}",
                v.patch_size[0],
                v.patch_size[1],
                v.patch_size[2],
                self.slice_axis,
                if v.anisotropic {
                    ", anisotropic: depth pooled late, rotations in-plane"
                } else {
                    ""
                },
                v.batch_size
            ),
            _ => format!(
                "slices along axis {} of {}×{} pixels{spacing}{context}",
                self.slice_axis, self.patch_size[0], self.patch_size[1]
            ),
        };
        format!(
            "{network}; classes {}; normalisation {}",
            labels.join(", "),
            norms.join("; ")
        )
    }

    /// Writes `plan.json` (atomically).
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        Ok(write_bytes_atomic(path, json.as_bytes())?)
    }

    /// Reads a `plan.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let plan: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid plan", path.display()))?;
        if let Some(v) = &plan.volumetric {
            crate::model::check_strides(&v.strides, v.patch_size)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("{}: invalid 3D configuration", path.display()))?;
        }
        if plan.is_3d() {
            plan.volumetric()
                .with_context(|| format!("{}: configuration \"3d\"", path.display()))?;
        }
        Ok(plan)
    }

    /// Normalises the channels of a case (in place) as the plan says.
    pub fn normalize(&self, channels: &mut [Vec<f32>]) {
        for (values, norm) in channels.iter_mut().zip(&self.normalization) {
            norm.apply(values);
        }
    }
}
