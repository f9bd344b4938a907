//! A case in the frame the network sees (canonical orientation, slices at the plan's spacing),
//! and the way back to the file's grid.

use segmenter_io::geometry::Orientation;
use segmenter_io::LoadedCase;

use crate::plan::{network_shape, Plan};

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
    /// Where `canonical_shape` lies in the reoriented volume when the case was cropped to its
    /// non-zero region (runs imported from nnU-Net); None when it was not cropped.
    pub crop: Option<Crop>,
}

/// The box a case was cropped to, in the reoriented volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crop {
    /// First voxel of the box.
    pub start: [usize; 3],
    /// Shape of the reoriented volume before cropping.
    pub full_shape: [usize; 3],
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
            crop: None,
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

    /// Maps a prediction on the canonical grid (`canonical_shape`: the network's slices at their
    /// own in-plane size, see [`crate::predict::window::VolumeJob::out_shape`]) back to the file's
    /// voxel order: the labels and, when given, each class's probabilities. Outside a crop the
    /// label is background, with probability 1 (nnU-Net's rule).
    pub fn to_file(
        &self,
        labels: &[u8],
        probabilities: Option<Vec<Vec<f32>>>,
    ) -> (Vec<u8>, Option<Vec<Vec<f32>>>) {
        let back = |v: &[f32]| self.orientation.from_canonical(v, self.file_shape);
        let Some(crop) = &self.crop else {
            return (
                self.orientation.from_canonical(labels, self.file_shape),
                probabilities.map(|p| p.iter().map(|c| back(c)).collect()),
            );
        };
        let shape = self.canonical_shape;
        let labels = uncrop(labels, shape, crop, 0u8);
        let probabilities = probabilities.map(|p| {
            p.iter()
                .enumerate()
                .map(|(k, c)| back(&uncrop(c, shape, crop, if k == 0 { 1.0 } else { 0.0 })))
                .collect()
        });
        (
            self.orientation.from_canonical(&labels, self.file_shape),
            probabilities,
        )
    }
}

/// Writes a cropped volume back into a volume of shape `full` filled with `outside`.
pub fn uncrop<T: Copy>(values: &[T], shape: [usize; 3], crop: &Crop, outside: T) -> Vec<T> {
    let full = crop.full_shape;
    let start = crop.start;
    let mut out = vec![outside; full.iter().product()];
    for z in 0..shape[2] {
        for y in 0..shape[1] {
            let row = start[0] + full[0] * (start[1] + y + full[1] * (start[2] + z));
            let src = shape[0] * (y + shape[1] * z);
            out[row..row + shape[0]].copy_from_slice(&values[src..src + shape[0]]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::plan::Normalization;

    #[test]
    fn resampled_cases_come_back_on_their_own_grid() {
        use segmenter_io::{NiftiHeader, Volume};
        // A 2 mm case with two blobs, planned at 1 mm: network sees 2x the slice size.
        let shape = [24, 20, 5];
        // Class 1 at x 3..10, y 4..12; class 2 at x 14..21, y 8..16; every slice alike.
        let label: Vec<u8> = (0..24 * 20 * 5)
            .map(|i| match (i % 24, i / 24 % 20) {
                (x, y) if (3..10).contains(&x) && (4..12).contains(&y) => 1,
                (x, y) if (14..21).contains(&x) && (8..16).contains(&y) => 2,
                _ => 0,
            })
            .collect();
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
            notes: Vec::new(),
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
            nnunet: None,
            configuration: Default::default(),
            volumetric: None,
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
        // Resampled to the canonical grid (as the sliding window does, slice by slice) and
        // turned back to the file's voxel order.
        let resampled: Vec<Vec<f32>> = probs
            .iter()
            .map(|p| segmenter_io::resample_linear(p, frame.shape, frame.canonical_shape))
            .collect();
        let canonical: Vec<u8> = (0..label.len())
            .map(|v| {
                (0..3).fold(0, |b, k| {
                    if resampled[k][v] > resampled[b][v] {
                        k
                    } else {
                        b
                    }
                }) as u8
            })
            .collect();
        let (back, back_probs) = frame.to_file(&canonical, Some(resampled));
        assert_eq!(back, label);
        assert_eq!(back_probs.unwrap()[0].len(), label.len());
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
}
