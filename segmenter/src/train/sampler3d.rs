//! Training samples for volumetric networks: 3D patches cut from normalised volumes, with
//! nnU-Net-style foreground oversampling, zero padding of volumes smaller than the patch, a spatial
//! transform (rotation, scaling, mirroring) and intensity augmentation ([`super::augment3d`]),
//! drawn in parallel and reproducible from (seed, step, sample index).
//!
//! Conventions: a volume is stored in NIfTI order (`x + s0*(y + s1*z)`); a patch is
//! `[depth, rows, cols]` with depth along `geometry.slice_axis` and rows/cols the in-plane axes
//! [`in_plane_axes`] in the order a [`crate::preprocess::SliceGeometry`] slice has them, so depth
//! plane `i` of a patch is a crop of slice `start + i` as the 2D sampler sees it.

use std::time::Instant;

use anyhow::{ensure, Result};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::augment3d::{
    add_gaussian_noise, adjust_contrast, chance, factor_around_one, gamma_retaining_stats,
    gaussian_blur_3d, scale_brightness, simulate_low_resolution_3d, uniform,
};
use super::sampler::{Batch, TrainVolume};
use crate::plan::in_plane_axes;

/// Augmentation probabilities and ranges for 3D patches; the defaults are nnU-Net v2 3d_fullres's.
#[derive(Clone, Debug)]
pub struct Augmentation3d {
    /// Probability per sample of a rotation (nnU-Net: 0.2, drawn independently of scaling).
    pub p_rotation: f64,
    /// Largest rotation about each of the three axes, degrees (nnU-Net 3D: ±30° about each).
    pub rotation_degrees: f64,
    /// Largest rotation about the depth axis when `anisotropic`, degrees (nnU-Net's "dummy 2D"
    /// augmentation: in-plane only, with 2D's ±180°).
    pub anisotropic_rotation_degrees: f64,
    /// Probability per sample of scaling (nnU-Net: 0.2).
    pub p_scaling: f64,
    /// Range of the scale factor, one for all axes; below 1 zooms in (nnU-Net: 0.7 to 1.4).
    pub scaling: [f64; 2],
    /// Probability of mirroring each patch axis `[depth, rows, cols]` (nnU-Net: 0.5 each).
    pub p_mirror: [f64; 3],
    /// Probability per sample of Gaussian noise (nnU-Net: 0.1).
    pub p_noise: f64,
    /// Range of the noise's standard deviation, same for all channels (nnU-Net: 0 to 0.1).
    pub noise_sigma: [f64; 2],
    /// Probability per sample of Gaussian blur (nnU-Net: 0.2).
    pub p_blur: f64,
    /// Probability that a blurred sample blurs a given channel (nnU-Net: 0.5).
    pub p_blur_per_channel: f64,
    /// Range of the blur's sigma in voxels, drawn per channel and axis (nnU-Net: 0.5 to 1).
    pub blur_sigma: [f64; 2],
    /// Probability per sample of multiplicative brightness (nnU-Net: 0.15).
    pub p_brightness: f64,
    /// Range of the brightness factor, per channel (nnU-Net: 0.75 to 1.25).
    pub brightness: [f64; 2],
    /// Probability per sample of a contrast change (nnU-Net: 0.15).
    pub p_contrast: f64,
    /// Range of the contrast factor, per channel, range preserved (nnU-Net: 0.75 to 1.25).
    pub contrast: [f64; 2],
    /// Probability per sample of simulated low resolution (nnU-Net: 0.25).
    pub p_low_res: f64,
    /// Probability that a low-resolution sample degrades a given channel (nnU-Net: 0.5).
    pub p_low_res_per_channel: f64,
    /// Range of the low-resolution zoom, one for all axes (nnU-Net: 0.5 to 1).
    pub low_res_zoom: [f64; 2],
    /// Probability per sample of gamma on the inverted image (nnU-Net: 0.1), applied before `p_gamma`.
    pub p_gamma_inverted: f64,
    /// Probability per sample of gamma on the image (nnU-Net: 0.3).
    pub p_gamma: f64,
    /// Range of gamma, per channel, mean and std kept (nnU-Net: 0.7 to 1.5).
    pub gamma: [f64; 2],
    /// Coarse depth spacing: rotate and scale in-plane only, and blur and degrade resolution
    /// in-plane only (nnU-Net switches to this when the patch is more than 3x longer in-plane).
    pub anisotropic: bool,
}

impl Default for Augmentation3d {
    fn default() -> Self {
        Self {
            p_rotation: 0.2,
            rotation_degrees: 30.0,
            anisotropic_rotation_degrees: 180.0,
            p_scaling: 0.2,
            scaling: [0.7, 1.4],
            p_mirror: [0.5; 3],
            p_noise: 0.1,
            noise_sigma: [0.0, 0.1],
            p_blur: 0.2,
            p_blur_per_channel: 0.5,
            blur_sigma: [0.5, 1.0],
            p_brightness: 0.15,
            brightness: [0.75, 1.25],
            p_contrast: 0.15,
            contrast: [0.75, 1.25],
            p_low_res: 0.25,
            p_low_res_per_channel: 0.5,
            low_res_zoom: [0.5, 1.0],
            p_gamma_inverted: 0.1,
            p_gamma: 0.3,
            gamma: [0.7, 1.5],
            anisotropic: false,
        }
    }
}

impl Augmentation3d {
    /// No augmentation at all (every probability 0): patches are plain crops of the volume.
    pub fn none() -> Self {
        Self {
            p_rotation: 0.0,
            p_scaling: 0.0,
            p_mirror: [0.0; 3],
            p_noise: 0.0,
            p_blur: 0.0,
            p_brightness: 0.0,
            p_contrast: 0.0,
            p_low_res: 0.0,
            p_gamma_inverted: 0.0,
            p_gamma: 0.0,
            ..Self::default()
        }
    }
}

/// The linear map from a patch voxel's offset to the patch centre (in `[depth, rows, cols]`
/// voxels) to the source offset from the centre it reads, in the volume's `[depth, rows, cols]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PatchTransform {
    /// Row-major 3×3 matrix: `source[a] = sum_b matrix[a][b] * patch[b]`.
    pub matrix: [[f64; 3]; 3],
}

impl PatchTransform {
    /// Rotation by `angles` (radians, about the depth, rows and cols axes, applied in that order
    /// from the left: `R_depth · R_rows · R_cols`), after scaling each patch axis by `scale` (a
    /// factor below 1 reads a smaller region, zooming in) and mirroring the patch axes in `mirror`.
    pub fn from_angles(angles: [f64; 3], scale: [f64; 3], mirror: [bool; 3]) -> Self {
        let (sd, cd) = angles[0].sin_cos();
        let (sr, cr) = angles[1].sin_cos();
        let (sc, cc) = angles[2].sin_cos();
        // About depth: turns rows into cols (the in-plane rotation 2D uses).
        let about_depth = [[1.0, 0.0, 0.0], [0.0, cd, -sd], [0.0, sd, cd]];
        let about_rows = [[cr, 0.0, sr], [0.0, 1.0, 0.0], [-sr, 0.0, cr]];
        let about_cols = [[cc, -sc, 0.0], [sc, cc, 0.0], [0.0, 0.0, 1.0]];
        let rotation = mul(mul(about_depth, about_rows), about_cols);
        // Scaling and mirroring act on the patch axes, i.e. on the matrix's columns.
        let matrix = std::array::from_fn(|a| {
            std::array::from_fn(|b| {
                let sign = if mirror[b] { -1.0 } else { 1.0 };
                rotation[a][b] * scale[b] * sign
            })
        });
        Self { matrix }
    }

    /// The mirroring of each axis when the map is nothing more (a diagonal of ±1), so the patch is
    /// a plain strided copy and needs no interpolation.
    fn mirror_only(&self) -> Option<[bool; 3]> {
        let m = &self.matrix;
        let diagonal = (0..3).all(|a| (0..3).all(|b| a == b || m[a][b] == 0.0));
        let unit = (0..3).all(|a| m[a][a].abs() == 1.0);
        (diagonal && unit).then(|| std::array::from_fn(|a| m[a][a] < 0.0))
    }
}

fn mul(a: [[f64; 3]; 3], b: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    std::array::from_fn(|i| std::array::from_fn(|j| (0..3).map(|k| a[i][k] * b[k][j]).sum()))
}

/// A volume seen as a `[depth, rows, cols]` array: each axis' length and flat-index stride.
#[derive(Clone, Copy, Debug)]
struct View {
    extent: [usize; 3],
    stride: [usize; 3],
    // NIfTI axis of each view axis, to turn a flat index back into a position.
    axes: [usize; 3],
    shape: [usize; 3],
}

impl View {
    fn of(volume: &TrainVolume) -> Self {
        let shape = volume.geometry.shape;
        let [r, c] = in_plane_axes(volume.geometry.slice_axis);
        let axes = [volume.geometry.slice_axis, r, c];
        let nifti_stride = [1, shape[0], shape[0] * shape[1]];
        Self {
            extent: axes.map(|a| shape[a]),
            stride: axes.map(|a| nifti_stride[a]),
            axes,
            shape,
        }
    }

    /// `[depth, row, col]` of the voxel at flat NIfTI index `flat`.
    fn position(&self, flat: usize) -> [usize; 3] {
        let [s0, s1, _] = self.shape;
        let xyz = [flat % s0, (flat / s0) % s1, flat / (s0 * s1)];
        self.axes.map(|a| xyz[a])
    }
}

/// Marks a patch position that falls outside the volume in [`axis_offsets`].
const OUTSIDE: usize = usize::MAX;

/// The source offset of each patch position along each axis (or [`OUTSIDE`]), for a plain copy
/// from `start` with the given axes mirrored.
fn axis_offsets(
    view: &View,
    start: [isize; 3],
    patch: [usize; 3],
    mirror: [bool; 3],
) -> [Vec<usize>; 3] {
    std::array::from_fn(|a| {
        (0..patch[a])
            .map(|i| {
                let i = if mirror[a] { patch[a] - 1 - i } else { i };
                let s = start[a] + i as isize;
                if s >= 0 && (s as usize) < view.extent[a] {
                    s as usize * view.stride[a]
                } else {
                    OUTSIDE
                }
            })
            .collect()
    })
}

/// Copies source voxels into a row-major patch whose positions outside the volume keep the
/// value `out` already holds (0).
fn gather<T: Copy>(src: &[T], offsets: &[Vec<usize>; 3], out: &mut [T]) {
    let (rows, cols) = (offsets[1].len(), offsets[2].len());
    if rows * cols == 0 {
        return;
    }
    for (plane, &od) in out.chunks_mut(rows * cols).zip(&offsets[0]) {
        if od == OUTSIDE {
            continue;
        }
        for (line, &or) in plane.chunks_mut(cols).zip(&offsets[1]) {
            if or == OUTSIDE {
                continue;
            }
            for (value, &oc) in line.iter_mut().zip(&offsets[2]) {
                if oc != OUTSIDE {
                    *value = src[od + or + oc];
                }
            }
        }
    }
}

/// Resamples every channel (trilinear) and the label (nearest) of a volume into a patch through
/// `matrix` about `centre` (source coordinates, voxel `i` spanning `[i, i + 1)`); whatever falls
/// outside the volume reads 0.
fn resample(
    volume: &TrainVolume,
    view: &View,
    centre: [f64; 3],
    matrix: &[[f64; 3]; 3],
    patch: [usize; 3],
    image: &mut [f32],
    label: &mut [u8],
) {
    let (channels, labels) = (&volume.channels, &volume.label);
    let n = patch.iter().product::<usize>();
    let half = patch.map(|p| p as f64 / 2.0);
    let extent = view.extent.map(|e| e as isize);
    let inside = |p: [isize; 3]| (0..3).all(|a| p[a] >= 0 && p[a] < extent[a]);
    let offset = |p: [isize; 3]| {
        (0..3)
            .map(|a| p[a] as usize * view.stride[a])
            .sum::<usize>()
    };
    let mut v = 0;
    for i in 0..patch[0] {
        let di = i as f64 + 0.5 - half[0];
        for j in 0..patch[1] {
            let dj = j as f64 + 0.5 - half[1];
            let row: [f64; 3] =
                std::array::from_fn(|a| centre[a] + matrix[a][0] * di + matrix[a][1] * dj);
            for k in 0..patch[2] {
                let dk = k as f64 + 0.5 - half[2];
                let p: [f64; 3] = std::array::from_fn(|a| row[a] + matrix[a][2] * dk);
                let nearest = p.map(|x| x.floor() as isize);
                if inside(nearest) {
                    label[v] = labels[offset(nearest)];
                }
                // Trilinear between voxel centres. Two taps per axis; a tap outside the volume
                // gets weight 0 and offset 0, so the eight corners below need no bounds checks
                // and padding reads as 0.
                let q = p.map(|x| x - 0.5);
                let taps: [[(usize, f32); 2]; 3] = std::array::from_fn(|a| {
                    let floor = q[a].floor();
                    let frac = (q[a] - floor) as f32;
                    std::array::from_fn(|b| {
                        let at = floor as isize + b as isize;
                        if at >= 0 && at < extent[a] {
                            let w = if b == 1 { frac } else { 1.0 - frac };
                            (at as usize * view.stride[a], w)
                        } else {
                            (0, 0.0)
                        }
                    })
                });
                let mut offsets = [0usize; 8];
                let mut weights = [0.0f32; 8];
                for (corner, (o, w)) in offsets.iter_mut().zip(&mut weights).enumerate() {
                    let [(od, wd), (or, wr), (oc, wc)] = [
                        taps[0][corner >> 2],
                        taps[1][corner >> 1 & 1],
                        taps[2][corner & 1],
                    ];
                    *o = od + or + oc;
                    *w = wd * wr * wc;
                }
                let any = weights.iter().any(|&w| w != 0.0);
                if any {
                    for (c, src) in channels.iter().enumerate() {
                        image[c * n + v] = offsets
                            .iter()
                            .zip(&weights)
                            .map(|(&o, &w)| w * src[o])
                            .sum();
                    }
                }
                v += 1;
            }
        }
    }
}

/// Draws 3D training batches from volumes.
///
/// A batch holds images row-major `[batch, channels, depth, rows, cols]` and labels
/// `[batch, depth, rows, cols]` in [`Batch`] (whose field docs speak of 2D), depth running along
/// each volume's `geometry.slice_axis` and rows/cols along [`in_plane_axes`] of it.
pub struct Sampler3d<'a> {
    /// The training volumes (the foreground index is built from them by [`Sampler3d::new`]).
    pub volumes: &'a [TrainVolume],
    /// Patch `[depth, rows, cols]`.
    pub patch_size: [usize; 3],
    /// Fraction of patches centred on a labelled voxel (the first ceil(f·B) of each batch).
    pub foreground_fraction: f64,
    /// Augmentation settings.
    pub augmentation: Augmentation3d,
    /// Base seed: sample `i` of batch `step` is a function of (seed, step, i) only.
    pub seed: u64,
    // Per volume, per label value present (ascending), the flat indices of its voxels: scanned
    // once here so a foreground sample costs two random draws instead of a scan of the volume.
    foreground: Vec<Vec<Vec<u32>>>,
    // Volumes with at least one labelled voxel.
    foreground_volumes: Vec<usize>,
}

impl<'a> Sampler3d<'a> {
    /// A sampler over `volumes`, indexing their labelled voxels once (in parallel).
    pub fn new(
        volumes: &'a [TrainVolume],
        patch_size: [usize; 3],
        foreground_fraction: f64,
        augmentation: Augmentation3d,
        seed: u64,
    ) -> Result<Self> {
        ensure!(!volumes.is_empty(), "no training volumes to sample from");
        ensure!(
            patch_size.iter().all(|&p| p > 0),
            "patch size {patch_size:?} has an empty axis"
        );
        let channels = volumes[0].channels.len();
        for v in volumes {
            let voxels = v.geometry.shape.iter().product::<usize>();
            ensure!(
                v.channels.len() == channels,
                "case '{}' has {} channels, '{}' has {channels}",
                v.id,
                v.channels.len(),
                volumes[0].id
            );
            ensure!(
                v.label.len() == voxels && v.channels.iter().all(|c| c.len() == voxels),
                "case '{}': data does not match its shape {:?}",
                v.id,
                v.geometry.shape
            );
            // Flat indices are kept as u32 to halve the index; segmenter-io caps volumes at 2^31.
            ensure!(
                voxels <= u32::MAX as usize,
                "case '{}' is too large to index",
                v.id
            );
        }
        let foreground: Vec<Vec<Vec<u32>>> = volumes
            .par_iter()
            .map(|v| index_foreground(&v.label))
            .collect();
        let foreground_volumes = (0..volumes.len())
            .filter(|&v| !foreground[v].is_empty())
            .collect();
        Ok(Self {
            volumes,
            patch_size,
            foreground_fraction,
            augmentation,
            seed,
            foreground,
            foreground_volumes,
        })
    }

    /// Draws batch number `step`, reproducibly; samples are drawn in parallel.
    pub fn batch(&self, step: u64, batch_size: usize) -> Batch {
        let channels = self.volumes[0].channels.len();
        let n = self.patch_size.iter().product::<usize>();
        let samples: Vec<(Vec<f32>, Vec<u8>, bool)> = (0..batch_size)
            .into_par_iter()
            .map(|i| {
                let seed = self.seed
                    ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
                let mut rng = SmallRng::seed_from_u64(seed);
                // The first ceil(f·B) samples are foreground-centred, so the fraction holds per
                // batch and not only on average.
                let want_fg = (i as f64) < (self.foreground_fraction * batch_size as f64).ceil();
                self.sample(&mut rng, want_fg)
            })
            .collect();
        let mut images = Vec::with_capacity(batch_size * channels * n);
        let mut labels = Vec::with_capacity(batch_size * n);
        let mut foreground_centred = 0;
        for (image, label, fg) in samples {
            images.extend(image);
            labels.extend(label);
            foreground_centred += fg as usize;
        }
        Batch {
            batch: batch_size,
            images,
            labels,
            foreground_centred,
        }
    }

    /// Augmented samples per second that [`Sampler3d::batch`] draws at `batch_size`: one warm-up
    /// batch, then batches until `seconds` have passed (at least one). For `segmenter bench sampler`.
    pub fn samples_per_second(&self, batch_size: usize, seconds: f64) -> f64 {
        std::hint::black_box(self.batch(u64::MAX, batch_size));
        let started = Instant::now();
        let mut batches = 0u64;
        while batches == 0 || started.elapsed().as_secs_f64() < seconds {
            std::hint::black_box(self.batch(batches, batch_size));
            batches += 1;
        }
        (batches as usize * batch_size) as f64 / started.elapsed().as_secs_f64()
    }

    fn sample(&self, rng: &mut SmallRng, want_fg: bool) -> (Vec<f32>, Vec<u8>, bool) {
        let fg = want_fg && !self.foreground_volumes.is_empty();
        let index = if fg {
            self.foreground_volumes[rng.random_range(0..self.foreground_volumes.len())]
        } else {
            rng.random_range(0..self.volumes.len())
        };
        let volume = &self.volumes[index];
        let view = View::of(volume);
        let patch = self.patch_size;
        // Where the patch may start along each axis: wholly inside when the volume is long enough
        // (nnU-Net's final patch reaches the border but not past it), else the volume centred in
        // the patch with the rest padded.
        let range: [(isize, isize); 3] = std::array::from_fn(|a| {
            if view.extent[a] >= patch[a] {
                (0, (view.extent[a] - patch[a]) as isize)
            } else {
                let s = -(((patch[a] - view.extent[a]) / 2) as isize);
                (s, s)
            }
        });
        let start: [isize; 3] = if fg {
            // nnU-Net picks a class present in the case first, then one of its voxels, so small
            // structures get as many patches as large ones.
            let classes = &self.foreground[index];
            let class = &classes[rng.random_range(0..classes.len())];
            let at = view.position(class[rng.random_range(0..class.len())] as usize);
            std::array::from_fn(|a| {
                (at[a] as isize - (patch[a] / 2) as isize).clamp(range[a].0, range[a].1)
            })
        } else {
            // rand samples no isize, so through i64 (patch offsets are far below its range).
            std::array::from_fn(|a| {
                rng.random_range(range[a].0 as i64..=range[a].1 as i64) as isize
            })
        };
        let transform = self.random_transform(rng);
        let (mut image, label) = self.cut(volume, start, &transform);
        self.intensity(rng, &mut image);
        (image, label, fg)
    }

    /// The patch starting at `start` (its voxel `[0, 0, 0]` over source voxel `start` when the
    /// transform is the identity), read through `transform` about the patch centre.
    fn cut(
        &self,
        volume: &TrainVolume,
        start: [isize; 3],
        transform: &PatchTransform,
    ) -> (Vec<f32>, Vec<u8>) {
        let view = View::of(volume);
        let patch = self.patch_size;
        let n = patch.iter().product::<usize>();
        let mut image = vec![0.0f32; volume.channels.len() * n];
        let mut label = vec![0u8; n];
        match transform.mirror_only() {
            Some(mirror) => {
                let offsets = axis_offsets(&view, start, patch, mirror);
                for (out, channel) in image.chunks_mut(n).zip(&volume.channels) {
                    gather(channel, &offsets, out);
                }
                gather(&volume.label, &offsets, &mut label);
            }
            None => {
                let centre = std::array::from_fn(|a| start[a] as f64 + patch[a] as f64 / 2.0);
                resample(
                    volume,
                    &view,
                    centre,
                    &transform.matrix,
                    patch,
                    &mut image,
                    &mut label,
                );
            }
        }
        (image, label)
    }

    fn random_transform(&self, rng: &mut SmallRng) -> PatchTransform {
        let aug = &self.augmentation;
        // A fixed number of draws whatever the probabilities, so switching one transform on or off
        // leaves the others' random numbers unchanged.
        let rotate = chance(rng, aug.p_rotation);
        let turns: [f64; 3] = std::array::from_fn(|_| uniform(rng, [-1.0, 1.0]));
        let scale = chance(rng, aug.p_scaling);
        let factor = uniform(rng, aug.scaling);
        let mirror = std::array::from_fn(|a| chance(rng, aug.p_mirror[a]));
        let angles = match (rotate, aug.anisotropic) {
            (false, _) => [0.0; 3],
            (true, true) => [
                turns[0] * aug.anisotropic_rotation_degrees.to_radians(),
                0.0,
                0.0,
            ],
            (true, false) => turns.map(|t| t * aug.rotation_degrees.to_radians()),
        };
        let scale = match (scale, aug.anisotropic) {
            (false, _) => [1.0; 3],
            (true, true) => [1.0, factor, factor],
            (true, false) => [factor; 3],
        };
        PatchTransform::from_angles(angles, scale, mirror)
    }

    /// nnU-Net v2's intensity transforms, in its order, on `[channels, depth, rows, cols]`.
    fn intensity(&self, rng: &mut SmallRng, image: &mut [f32]) {
        let aug = &self.augmentation;
        let shape = self.patch_size;
        let n = shape.iter().product::<usize>();
        if image.is_empty() {
            return;
        }
        if chance(rng, aug.p_noise) {
            let sigma = uniform(rng, aug.noise_sigma) as f32;
            for channel in image.chunks_mut(n) {
                add_gaussian_noise(channel, rng, sigma);
            }
        }
        if chance(rng, aug.p_blur) {
            for channel in image.chunks_mut(n) {
                if chance(rng, aug.p_blur_per_channel) {
                    let mut sigma: [f32; 3] =
                        std::array::from_fn(|_| uniform(rng, aug.blur_sigma) as f32);
                    if aug.anisotropic {
                        sigma[0] = 0.0;
                    }
                    gaussian_blur_3d(channel, shape, sigma);
                }
            }
        }
        if chance(rng, aug.p_brightness) {
            for channel in image.chunks_mut(n) {
                scale_brightness(channel, factor_around_one(rng, aug.brightness) as f32);
            }
        }
        if chance(rng, aug.p_contrast) {
            for channel in image.chunks_mut(n) {
                adjust_contrast(channel, factor_around_one(rng, aug.contrast) as f32);
            }
        }
        if chance(rng, aug.p_low_res) {
            for channel in image.chunks_mut(n) {
                if chance(rng, aug.p_low_res_per_channel) {
                    let zoom = uniform(rng, aug.low_res_zoom);
                    let depth = if aug.anisotropic { 1.0 } else { zoom };
                    simulate_low_resolution_3d(channel, shape, [depth, zoom, zoom]);
                }
            }
        }
        for (p, invert) in [(aug.p_gamma_inverted, true), (aug.p_gamma, false)] {
            if chance(rng, p) {
                for channel in image.chunks_mut(n) {
                    gamma_retaining_stats(
                        channel,
                        factor_around_one(rng, aug.gamma) as f32,
                        invert,
                    );
                }
            }
        }
    }
}

/// Flat indices of the labelled voxels, grouped by label value (ascending), empty groups dropped.
fn index_foreground(label: &[u8]) -> Vec<Vec<u32>> {
    let mut by_class: Vec<Vec<u32>> = vec![Vec::new(); 256];
    for (i, &l) in label.iter().enumerate() {
        if l != 0 {
            by_class[l as usize].push(i as u32);
        }
    }
    by_class.retain(|c| !c.is_empty());
    by_class
}

#[cfg(test)]
#[path = "sampler3d_tests.rs"]
mod tests;
