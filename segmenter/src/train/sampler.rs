//! Training samples: 2D patches cut from normalised volumes, with foreground oversampling and
//! augmentation (rotation, scaling, optional elastic deformation, mirroring, blur, brightness, contrast,
//! low-resolution simulation, gamma, noise), drawn in parallel and reproducible from a seed.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use anyhow::{Context, Result};
use segmenter_io::LoadedCase;

use super::augment::{elastic_displacement, gaussian_blur, simulate_low_resolution};
use crate::plan::Plan;
use crate::preprocess::{network_case, SliceGeometry};

/// A training volume after normalisation, indexed for fast sampling.
pub struct TrainVolume {
    /// Case identifier, for messages.
    pub id: String,
    /// Normalised channels, each in file order.
    pub channels: Vec<Vec<f32>>,
    /// Label map in file order.
    pub label: Vec<u8>,
    /// Slicing of the volume.
    pub geometry: SliceGeometry,
    /// Slices holding at least one labelled voxel.
    pub foreground_slices: Vec<usize>,
}

impl TrainVolume {
    /// Indexes a normalised case for sampling.
    pub fn new(
        id: String,
        channels: Vec<Vec<f32>>,
        label: Vec<u8>,
        geometry: SliceGeometry,
    ) -> Self {
        let foreground_slices = (0..geometry.count())
            .filter(|&s| geometry.extract(&label, s).iter().any(|&l| l != 0))
            .collect();
        Self {
            id,
            channels,
            label,
            geometry,
            foreground_slices,
        }
    }
}

/// A loaded training case in the network's frame, normalised and indexed for the sampler.
pub fn prepare_volume(plan: &Plan, case: LoadedCase) -> Result<TrainVolume> {
    let frame = network_case(plan, &case);
    let label = frame
        .label
        .with_context(|| format!("case '{}' has no label map", case.id))?;
    Ok(TrainVolume::new(
        case.id,
        frame.channels,
        label,
        SliceGeometry {
            shape: frame.shape,
            slice_axis: plan.slice_axis,
        },
    ))
}

/// A batch of patches: images `[batch, channels, rows, cols]`, labels `[batch, rows, cols]`.
pub struct Batch {
    /// Patches in a row.
    pub batch: usize,
    /// Image values, row-major `[batch, channels, rows, cols]`.
    pub images: Vec<f32>,
    /// Label values, row-major `[batch, rows, cols]`.
    pub labels: Vec<u8>,
    /// How many patches were centred on foreground.
    pub foreground_centred: usize,
}

/// Augmentation probabilities and ranges (nnU-Net's defaults for 2D, slightly reduced).
#[derive(Clone, Debug)]
pub struct Augmentation {
    /// Probability of a rotation/scaling.
    pub p_spatial: f64,
    /// Probability of mirroring each axis.
    pub p_mirror: f64,
    /// Probability of each intensity transform.
    pub p_intensity: f64,
    /// Probability per sample of Gaussian blur (nnU-Net: 0.2).
    pub p_blur: f64,
    /// Range of the blur's standard deviation in pixels (nnU-Net: 0.5 to 1).
    pub blur_sigma: [f32; 2],
    /// Probability per sample of simulated low resolution (nnU-Net: 0.25).
    pub p_low_res: f64,
    /// Range of the low-resolution zoom factor (nnU-Net: 0.5 to 1).
    pub low_res_zoom: [f64; 2],
    /// Probability that a sample chosen for blur or low resolution applies it to a given channel
    /// (nnU-Net: 0.5, so with one channel the effective rates are 0.1 and 0.125).
    pub p_per_channel: f64,
    /// Probability of elastic deformation; 0 unless `train.elastic_deformation` is set (nnU-Net v2 has
    /// it off; v1's 0.2 is what `with_elastic` uses).
    pub p_elastic: f64,
    /// Range of the elastic magnitude alpha (nnU-Net v1: 0 to 900).
    pub elastic_alpha: [f64; 2],
    /// Range of the elastic smoothing sigma in pixels (nnU-Net v1: 9 to 13).
    pub elastic_sigma: [f64; 2],
}

impl Default for Augmentation {
    fn default() -> Self {
        Self {
            p_spatial: 0.2,
            p_mirror: 0.5,
            p_intensity: 0.15,
            p_blur: 0.2,
            blur_sigma: [0.5, 1.0],
            p_low_res: 0.25,
            low_res_zoom: [0.5, 1.0],
            p_per_channel: 0.5,
            p_elastic: 0.0,
            elastic_alpha: [0.0, 900.0],
            elastic_sigma: [9.0, 13.0],
        }
    }
}

impl Augmentation {
    /// The defaults, with elastic deformation at nnU-Net v1's probability (0.2) when `enabled`.
    pub fn with_elastic(self, enabled: bool) -> Self {
        Self {
            p_elastic: if enabled { 0.2 } else { 0.0 },
            ..self
        }
    }
}

/// Draws uniformly from `[lo, hi]`, accepting an empty range (lo == hi) as that single value.
fn uniform<T: rand::distr::uniform::SampleUniform + PartialOrd + Copy>(
    rng: &mut SmallRng,
    [lo, hi]: [T; 2],
) -> T {
    rng.random_range(lo..=hi)
}

/// When `enabled`, with probability `p`, a value drawn from `range`; no draw at all when not
/// enabled, so the random stream is the same as if the test were not there.
fn maybe_draw<T: rand::distr::uniform::SampleUniform + PartialOrd + Copy>(
    rng: &mut SmallRng,
    enabled: bool,
    p: f64,
    range: [T; 2],
) -> Option<T> {
    (enabled && rng.random_bool(p)).then(|| uniform(rng, range))
}

/// Applies `f` to each `plane`-sized 2D plane of a channel's stack.
fn each_plane(channel: &mut [f32], plane: usize, f: impl FnMut(&mut [f32])) {
    channel.chunks_mut(plane).for_each(f);
}

/// Draws training batches from volumes.
pub struct Sampler<'a> {
    /// The training volumes.
    pub volumes: &'a [TrainVolume],
    /// Patch `[rows, cols]`.
    pub patch_size: [usize; 2],
    /// Fraction of patches centred on a labelled voxel.
    pub foreground_fraction: f64,
    /// Augmentation settings.
    pub augmentation: Augmentation,
    /// Base seed: batch `step` is a function of (seed, step) only.
    pub seed: u64,
    /// Neighbouring slices on each side stacked after each channel's slice ([`Plan::context_slices`]).
    pub context_slices: usize,
}

#[derive(Clone)]
struct Transform {
    origin: [f64; 2],
    // Maps patch offsets from the patch centre to source offsets.
    matrix: [[f64; 2]; 2],
    // Elastic (row, col) offsets per patch pixel, added before `matrix` as in batchgenerators.
    displacement: Option<Vec<[f64; 2]>>,
}

impl Sampler<'_> {
    /// Draws batch number `step`, reproducibly.
    pub fn batch(&self, step: u64, batch_size: usize) -> Batch {
        let channels = self.volumes[0].channels.len();
        let [rows, cols] = self.patch_size;
        let samples: Vec<(Vec<f32>, Vec<u8>, bool)> = (0..batch_size)
            .into_par_iter()
            .map(|i| {
                let seed = self.seed
                    ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
                let mut rng = SmallRng::seed_from_u64(seed);
                // The first ceil(f·B) samples of a batch are foreground-centred, so the fraction
                // holds per batch and not only on average.
                let want_fg = (i as f64) < (self.foreground_fraction * batch_size as f64).ceil();
                self.sample(&mut rng, want_fg)
            })
            .collect();
        let mut images = Vec::with_capacity(batch_size * channels * rows * cols);
        let mut labels = Vec::with_capacity(batch_size * rows * cols);
        let mut foreground_centred = 0;
        for (img, lab, fg) in samples {
            images.extend(img);
            labels.extend(lab);
            foreground_centred += fg as usize;
        }
        Batch {
            batch: batch_size,
            images,
            labels,
            foreground_centred,
        }
    }

    fn sample(&self, rng: &mut SmallRng, want_fg: bool) -> (Vec<f32>, Vec<u8>, bool) {
        let candidates: Vec<usize> = (0..self.volumes.len())
            .filter(|&v| !want_fg || !self.volumes[v].foreground_slices.is_empty())
            .collect();
        let fg = want_fg && !candidates.is_empty();
        let volume = if fg {
            &self.volumes[candidates[rng.random_range(0..candidates.len())]]
        } else {
            &self.volumes[rng.random_range(0..self.volumes.len())]
        };
        let geometry = volume.geometry;
        let slice = if fg {
            volume.foreground_slices[rng.random_range(0..volume.foreground_slices.len())]
        } else {
            rng.random_range(0..geometry.count())
        };
        let [src_rows, src_cols] = geometry.slice_shape();
        let label = geometry.extract(&volume.label, slice);
        let [rows, cols] = self.patch_size;
        // Patch centre in source coordinates: a random labelled pixel, or anywhere such that the
        // patch stays mostly inside the slice.
        let centre = if fg {
            let fg_pixels: Vec<usize> = label
                .iter()
                .enumerate()
                .filter(|(_, &l)| l != 0)
                .map(|(i, _)| i)
                .collect();
            let p = fg_pixels[rng.random_range(0..fg_pixels.len())];
            [(p / src_cols) as f64, (p % src_cols) as f64]
        } else {
            let axis = |src: usize, patch: usize, rng: &mut SmallRng| {
                let half = patch as f64 / 2.0;
                let (lo, hi) = if src as f64 > patch as f64 {
                    (half, src as f64 - half)
                } else {
                    (src as f64 - half, half)
                };
                let (lo, hi) = (lo.min(hi), lo.max(hi));
                if hi > lo {
                    rng.random_range(lo..hi)
                } else {
                    lo
                }
            };
            [axis(src_rows, rows, rng), axis(src_cols, cols, rng)]
        };
        let transform = self.random_transform(rng, centre);
        let patch = [rows, cols];
        let planes = 2 * self.context_slices + 1;
        let mut image = Vec::with_capacity(volume.channels.len() * planes * rows * cols);
        for channel in &volume.channels {
            // The neighbours go through the same transform: they are the same patch, above and below.
            for s in geometry.context(slice, self.context_slices) {
                let src = geometry.extract(channel, s);
                image.extend(resample(
                    &src,
                    [src_rows, src_cols],
                    [rows, cols],
                    &transform,
                    Interp::Linear,
                ));
            }
        }
        let label_u: Vec<f32> = label.iter().map(|&l| l as f32).collect();
        let label_out: Vec<u8> = resample(
            &label_u,
            [src_rows, src_cols],
            [rows, cols],
            &transform,
            Interp::Nearest,
        )
        .into_iter()
        .map(|v| v as u8)
        .collect();
        self.intensity(rng, &mut image, volume.channels.len(), patch);
        (image, label_out, fg)
    }

    fn random_transform(&self, rng: &mut SmallRng, centre: [f64; 2]) -> Transform {
        let aug = &self.augmentation;
        let mut matrix = [[1.0, 0.0], [0.0, 1.0]];
        if rng.random_bool(aug.p_spatial) {
            let angle: f64 = rng.random_range(-std::f64::consts::PI..std::f64::consts::PI);
            let scale: f64 = rng.random_range(0.7..1.4);
            let (s, c) = angle.sin_cos();
            matrix = [[c / scale, -s / scale], [s / scale, c / scale]];
        }
        // Mirroring an output axis negates that column of the patch-to-source map.
        let mirror = [rng.random_bool(aug.p_mirror), rng.random_bool(aug.p_mirror)];
        for row in &mut matrix {
            for (value, flip) in row.iter_mut().zip(mirror) {
                if flip {
                    *value = -*value;
                }
            }
        }
        let displacement = rng.random_bool(aug.p_elastic).then(|| {
            let alpha = uniform(rng, aug.elastic_alpha);
            let sigma = uniform(rng, aug.elastic_sigma);
            elastic_displacement(rng, self.patch_size, alpha, sigma)
        });
        Transform {
            origin: centre,
            matrix,
            displacement,
        }
    }

    fn intensity(&self, rng: &mut SmallRng, image: &mut [f32], channels: usize, patch: [usize; 2]) {
        let aug = &self.augmentation;
        let p = aug.p_intensity;
        // A channel is its slice and the neighbours stacked with it: one scan, so one draw of each
        // transform for all of them.
        let per_channel = image.len() / channels.max(1);
        let plane = patch[0] * patch[1];
        // nnU-Net decides blur and low resolution once per sample, then per channel.
        let blur = rng.random_bool(aug.p_blur);
        let low_res = rng.random_bool(aug.p_low_res);
        for channel in image.chunks_mut(per_channel.max(1)) {
            let p_channel = aug.p_per_channel;
            if let Some(sigma) = maybe_draw(rng, blur, p_channel, aug.blur_sigma) {
                each_plane(channel, plane, |slice| gaussian_blur(slice, patch, sigma));
            }
            if rng.random_bool(p) {
                let factor: f32 = rng.random_range(0.75..1.25);
                channel.iter_mut().for_each(|v| *v *= factor);
            }
            if rng.random_bool(p) {
                let factor: f32 = rng.random_range(0.75..1.25);
                let mean = channel.iter().sum::<f32>() / channel.len() as f32;
                channel
                    .iter_mut()
                    .for_each(|v| *v = (*v - mean) * factor + mean);
            }
            if let Some(zoom) = maybe_draw(rng, low_res, p_channel, aug.low_res_zoom) {
                each_plane(channel, plane, |slice| {
                    simulate_low_resolution(slice, patch, zoom)
                });
            }
            if rng.random_bool(p) {
                let gamma: f32 = rng.random_range(0.7..1.5);
                let (lo, hi) = channel
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                let range = (hi - lo).max(1e-6);
                channel
                    .iter_mut()
                    .for_each(|v| *v = ((*v - lo) / range).powf(gamma) * range + lo);
            }
            if rng.random_bool(p / 1.5) {
                let sigma: f32 = rng.random_range(0.0..0.1);
                for v in channel.iter_mut() {
                    // Box–Muller from two uniforms keeps us off an extra distribution crate.
                    let (u1, u2): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
                    *v += sigma * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos();
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Interp {
    Linear,
    Nearest,
}

fn resample(
    src: &[f32],
    [sr, sc]: [usize; 2],
    [pr, pc]: [usize; 2],
    t: &Transform,
    interp: Interp,
) -> Vec<f32> {
    let mut out = vec![0.0f32; pr * pc];
    let (hr, hc) = (pr as f64 / 2.0, pc as f64 / 2.0);
    let at = |r: isize, c: isize| {
        if r < 0 || c < 0 || r >= sr as isize || c >= sc as isize {
            0.0
        } else {
            src[r as usize * sc + c as usize]
        }
    };
    for i in 0..pr {
        for j in 0..pc {
            let (mut di, mut dj) = (i as f64 + 0.5 - hr, j as f64 + 0.5 - hc);
            if let Some(field) = &t.displacement {
                di += field[i * pc + j][0];
                dj += field[i * pc + j][1];
            }
            let y = t.origin[0] + t.matrix[0][0] * di + t.matrix[0][1] * dj;
            let x = t.origin[1] + t.matrix[1][0] * di + t.matrix[1][1] * dj;
            out[i * pc + j] = match interp {
                Interp::Nearest => at(y.floor() as isize, x.floor() as isize),
                Interp::Linear => {
                    let (y, x) = (y - 0.5, x - 0.5);
                    let (y0, x0) = (y.floor(), x.floor());
                    let (fy, fx) = ((y - y0) as f32, (x - x0) as f32);
                    let (y0, x0) = (y0 as isize, x0 as isize);
                    at(y0, x0) * (1.0 - fy) * (1.0 - fx)
                        + at(y0, x0 + 1) * (1.0 - fy) * fx
                        + at(y0 + 1, x0) * fy * (1.0 - fx)
                        + at(y0 + 1, x0 + 1) * fy * fx
                }
            };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default augmentation with spatial, intensity, blur and low-resolution steps all at
    /// probability `p`.
    fn every_augmentation_with_probability(p: f64) -> Augmentation {
        Augmentation {
            p_spatial: p,
            p_intensity: p,
            p_blur: p,
            p_low_res: p,
            ..Augmentation::default()
        }
    }

    fn volume(seed: u64) -> TrainVolume {
        let shape = [20, 24, 10];
        let mut rng = SmallRng::seed_from_u64(seed);
        let image: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let mut label = vec![0u8; image.len()];
        // A small labelled cube in slices 4..6 only.
        for z in 4..6 {
            for y in 10..13 {
                for x in 5..8 {
                    label[x + 20 * (y + 24 * z)] = 1;
                }
            }
        }
        TrainVolume::new(
            format!("case{seed}"),
            vec![image],
            label,
            SliceGeometry {
                shape,
                slice_axis: 2,
            },
        )
    }

    #[test]
    fn foreground_fraction_follows_the_setting_and_batches_are_reproducible() {
        let volumes = vec![volume(1), volume(2)];
        let sampler = Sampler {
            volumes: &volumes,
            patch_size: [32, 32],
            foreground_fraction: 0.33,
            augmentation: Augmentation::default(),
            seed: 5,
            context_slices: 0,
        };
        let (mut with_fg, mut total) = (0, 0);
        for step in 0..30 {
            let batch = sampler.batch(step, 12);
            assert_eq!(batch.images.len(), 12 * 32 * 32);
            with_fg += batch
                .labels
                .chunks(32 * 32)
                .filter(|p| p.iter().any(|&l| l != 0))
                .count();
            total += 12;
            assert_eq!(batch.foreground_centred, 4);
        }
        // Foreground-centred patches always hold the label; random ones rarely (2 of 10 slices).
        let fraction = with_fg as f64 / total as f64;
        assert!(
            (0.33..0.6).contains(&fraction),
            "foreground fraction {fraction}"
        );
        let (a, b) = (sampler.batch(3, 4), sampler.batch(3, 4));
        assert_eq!(a.images, b.images);
        assert_eq!(a.labels, b.labels);
        assert_ne!(sampler.batch(4, 4).images, a.images);
    }

    #[test]
    fn zero_elastic_displacement_is_the_identity() {
        let src: Vec<f32> = (0..20 * 24).map(|v| (v as f32 * 0.37).sin()).collect();
        let plain = Transform {
            origin: [9.0, 11.0],
            matrix: [[0.8, -0.3], [0.3, 0.8]],
            displacement: None,
        };
        let zero_field = Transform {
            displacement: Some(vec![[0.0, 0.0]; 16 * 16]),
            ..plain.clone()
        };
        for interp in [Interp::Linear, Interp::Nearest] {
            assert_eq!(
                resample(&src, [20, 24], [16, 16], &plain, interp),
                resample(&src, [20, 24], [16, 16], &zero_field, interp)
            );
        }
        // A field that shifts every pixel by one row reads the next source row.
        let shifted = Transform {
            origin: [9.0, 11.0],
            matrix: [[1.0, 0.0], [0.0, 1.0]],
            displacement: Some(vec![[1.0, 0.0]; 16 * 16]),
        };
        let base = Transform {
            displacement: None,
            ..shifted.clone()
        };
        let (a, b) = (
            resample(&src, [20, 24], [16, 16], &shifted, Interp::Nearest),
            resample(&src, [20, 24], [16, 16], &base, Interp::Nearest),
        );
        assert_eq!(&a[..15 * 16], &b[16..]);
    }

    #[test]
    fn every_augmentation_on_keeps_labels_in_the_class_set_and_is_reproducible() {
        let mut volumes = vec![volume(1), volume(2)];
        // A second foreground class, so nearest-neighbour resampling has three values to keep apart.
        for l in volumes[0].label.iter_mut().take(200) {
            *l = 2;
        }
        let sampler = Sampler {
            volumes: &volumes,
            patch_size: [32, 32],
            foreground_fraction: 0.5,
            augmentation: Augmentation {
                p_per_channel: 1.0,
                ..every_augmentation_with_probability(1.0).with_elastic(true)
            },
            seed: 11,
            // With neighbours, so blur and low resolution also run plane by plane.
            context_slices: 1,
        };
        assert_eq!(sampler.augmentation.p_elastic, 0.2);
        // Fixed magnitudes, so both samplers draw the same random numbers and differ only in alpha.
        let with_alpha = |alpha: f64| Sampler {
            augmentation: Augmentation {
                p_elastic: 1.0,
                elastic_alpha: [alpha, alpha],
                ..sampler.augmentation.clone()
            },
            ..sampler
        };
        let (elastic_always, zero_alpha) = (with_alpha(900.0), with_alpha(0.0));
        for step in 0..10 {
            let batch = elastic_always.batch(step, 6);
            assert!(batch.labels.iter().all(|l| [0, 1, 2].contains(l)));
            assert_eq!(batch.images.len(), 6 * 3 * 32 * 32);
            assert!(batch.images.iter().all(|v| v.is_finite()));
            let again = elastic_always.batch(step, 6);
            assert_eq!(batch.images, again.images);
            assert_eq!(batch.labels, again.labels);
            let undeformed = zero_alpha.batch(step, 6);
            assert_ne!(batch.labels, undeformed.labels);
        }
    }

    #[test]
    fn context_planes_are_the_neighbouring_slices_under_the_same_transform() {
        // Every pixel of slice z of channel c holds 1000·(c+1) + z, so a plane's value names its
        // channel and slice. Inference stacks in the same order (infer.rs has the twin test).
        let (shape, nz) = ([20, 24, 6], 6usize);
        let image = |c: usize| -> Vec<f32> {
            (0..shape.iter().product::<usize>())
                .map(|i| 1000.0 * (c + 1) as f32 + (i / (20 * 24)) as f32)
                .collect()
        };
        let mut label = vec![0u8; image(0).len()];
        label[3 + 20 * (4 + 24 * 5)] = 1; // one voxel in the last slice
        let volumes = vec![TrainVolume::new(
            "ctx".into(),
            vec![image(0), image(1)],
            label,
            SliceGeometry {
                shape,
                slice_axis: 2,
            },
        )];
        let sampler = Sampler {
            volumes: &volumes,
            patch_size: [32, 32],
            foreground_fraction: 0.5,
            augmentation: every_augmentation_with_probability(0.0),
            seed: 3,
            context_slices: 2,
        };
        let plane = 32 * 32;
        let batch = sampler.batch(0, 16);
        assert_eq!(batch.images.len(), 16 * 2 * 5 * plane);
        let mut seen_last = false;
        for sample in batch.images.chunks(2 * 5 * plane) {
            let middle = &sample[2 * plane..3 * plane];
            // Pixels whose 3x3 neighbourhood is all one value: inside the slice, not blended with
            // the zero padding around it.
            let inside: Vec<usize> = (32 + 1..plane - 32 - 1)
                .filter(|&p| p % 32 != 0 && p % 32 != 31)
                .filter(|&p| {
                    [p - 33, p - 32, p - 31, p - 1, p + 1, p + 31, p + 32, p + 33]
                        .iter()
                        .all(|&q| (middle[q] - middle[p]).abs() < 1e-2)
                        && middle[p] > 500.0
                })
                .collect();
            assert!(!inside.is_empty(), "the patch shows none of its slice");
            let z = (middle[inside[0]] - 1000.0).round() as isize;
            seen_last |= z == nz as isize - 1;
            for c in 0..2 {
                for (j, offset) in (-2isize..=2).enumerate() {
                    let want =
                        1000.0 * (c + 1) as f32 + (z + offset).clamp(0, nz as isize - 1) as f32;
                    for &p in &inside {
                        let got = sample[(c * 5 + j) * plane + p];
                        assert!(
                            (got - want).abs() < 1e-2,
                            "channel {c} plane {j} of slice {z}: {got}"
                        );
                    }
                }
            }
        }
        assert!(
            seen_last,
            "foreground patches come from the last slice, clamped above"
        );
    }

    #[test]
    fn identity_transform_copies_the_slice_into_the_patch_centre() {
        let src: Vec<f32> = (0..12).map(|v| v as f32).collect(); // 3 x 4
        let t = Transform {
            origin: [1.5, 2.0],
            matrix: [[1.0, 0.0], [0.0, 1.0]],
            displacement: None,
        };
        let out = resample(&src, [3, 4], [5, 6], &t, Interp::Linear);
        // Patch centre (2.5, 3.0) maps to source (1.5, 2.0): patch pixel (1, 1) is source pixel (0, 0).
        assert_eq!(&out[6 + 1..6 + 5], &[0.0, 1.0, 2.0, 3.0]);
        assert_eq!(out[0], 0.0);
        assert_eq!(&out[3 * 6 + 1..3 * 6 + 5], &[8.0, 9.0, 10.0, 11.0]);
    }
}
