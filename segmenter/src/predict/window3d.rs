//! The 3D sliding window: a volume through a volumetric network in Gaussian-weighted patches
//! `[depth, rows, cols]`, with memory for the class scores bounded by the patch and the batch,
//! and the helpers for mirroring test-time augmentation along all three axes.
//!
//! Independent of the network: the caller hands in a function from a batch of windows to their
//! class probabilities, as the 2D window's tests do, so the geometry is tested without a model.

use std::collections::VecDeque;

use super::window::{
    argmax_into, gaussian_axis, window_starts, windows_per_batch, SliceResampler, VolumeJob,
    VolumePrediction, WindowSettings, MIN_GAUSSIAN_WEIGHT,
};
use crate::plan::in_plane_axes;
use crate::preprocess::SliceGeometry;

/// Gaussian importance map over a patch `[depth, rows, cols]` (row-major), sigma = side/8 per
/// axis, peak 1: the 2D window's map with a third axis.
pub fn gaussian_weights_3d([depth, rows, cols]: [usize; 3]) -> Vec<f32> {
    let (d, r, c) = (
        gaussian_axis(depth),
        gaussian_axis(rows),
        gaussian_axis(cols),
    );
    let mut w = Vec::with_capacity(depth * rows * cols);
    for &a in &d {
        for &b in &r {
            w.extend(
                c.iter()
                    .map(|&e| ((a * b * e) as f32).max(MIN_GAUSSIAN_WEIGHT)),
            );
        }
    }
    w
}

/// The eight mirrorings of a 3D window, as `[depth, rows, cols]` flags; the first is the identity.
pub fn mirror_axes_3d() -> [[bool; 3]; 8] {
    std::array::from_fn(|i| [i & 1 != 0, i & 2 != 0, i & 4 != 0])
}

/// Flips row-major `[n, c, d, r, cc]` values in place along the window axes set in `axes`
/// (`[depth, rows, cols]`); a flip is its own inverse, so the same call maps a mirrored
/// window's probabilities back onto the window.
pub fn flip_3d(values: &mut [f32], [n, c, d, r, cc]: [usize; 5], axes: [bool; 3]) {
    let (plane, block) = (r * cc, d * r * cc);
    assert_eq!(
        values.len(),
        n * c * block,
        "flip_3d: values and shape differ"
    );
    if block == 0 {
        return;
    }
    for window in values.chunks_exact_mut(block) {
        if axes[0] {
            reverse_blocks(window, plane);
        }
        if axes[1] {
            for p in window.chunks_exact_mut(plane) {
                reverse_blocks(p, cc);
            }
        }
        if axes[2] {
            for row in window.chunks_exact_mut(cc) {
                row.reverse();
            }
        }
    }
}

/// Reverses the order of the consecutive blocks of `len` values that make up `values`.
fn reverse_blocks(values: &mut [f32], len: usize) {
    let count = values.len() / len;
    for i in 0..count / 2 {
        let (head, tail) = values.split_at_mut((count - 1 - i) * len);
        head[i * len..(i + 1) * len].swap_with_slice(&mut tail[..len]);
    }
}

/// How the window's axes `[depth, rows, cols]` lie in the volume, and the padded canvas the
/// windows are placed on.
struct Frame {
    /// Volume lengths along depth, rows, cols.
    len: [usize; 3],
    /// Steps in the volume's voxel index along depth, rows, cols.
    stride: [usize; 3],
    /// Padded lengths: the volume's, or the patch's where the volume is smaller.
    canvas: [usize; 3],
    /// Where the volume's first voxel lies on the canvas: centred, as the 2D window and nnU-Net
    /// pad, so a thin volume sits in the middle of the patch the network was trained on.
    offset: [usize; 3],
    /// The window (network patch) size.
    patch: [usize; 3],
}

impl Frame {
    fn new(shape: [usize; 3], slice_axis: usize, patch: [usize; 3]) -> Self {
        let [row_axis, col_axis] = in_plane_axes(slice_axis);
        let axes = [slice_axis, row_axis, col_axis];
        let volume_stride = [1, shape[0], shape[0] * shape[1]];
        let len = axes.map(|a| shape[a]);
        let canvas = std::array::from_fn(|i| len[i].max(patch[i]));
        Self {
            len,
            stride: axes.map(|a| volume_stride[a]),
            canvas,
            offset: std::array::from_fn(|i| (canvas[i] - len[i]) / 2),
            patch,
        }
    }

    /// Along axis `i`, the positions in a window starting at `start` (on the canvas) that fall
    /// inside the volume, and the volume position of the first of them.
    fn inside(&self, i: usize, start: usize) -> (std::ops::Range<usize>, usize) {
        let (off, len) = (self.offset[i], self.len[i]);
        let first = off.saturating_sub(start);
        let end = (off + len).saturating_sub(start).min(self.patch[i]);
        (first..end, start + first - off)
    }

    /// First volume plane a window starting at depth `start` (on the canvas) touches.
    fn first_plane(&self, start: usize) -> usize {
        start.saturating_sub(self.offset[0])
    }

    /// Appends the network input of the window at `start`: `[channels, d, r, c]`, zero (the
    /// normalised mean) where the window leaves the volume.
    fn push_window(&self, channels: &[Vec<f32>], start: [usize; 3], out: &mut Vec<f32>) {
        let [pd, pr, pc] = self.patch;
        let (depth, z0) = self.inside(0, start[0]);
        let (rows, y0) = self.inside(1, start[1]);
        let (cols, x0) = self.inside(2, start[2]);
        for values in channels {
            let base = out.len();
            out.resize(base + pd * pr * pc, 0.0);
            for t in depth.clone() {
                let z = z0 + t - depth.start;
                for u in rows.clone() {
                    let y = y0 + u - rows.start;
                    let src = z * self.stride[0] + y * self.stride[1];
                    let dst = base + (t * pr + u) * pc;
                    for v in cols.clone() {
                        let x = x0 + v - cols.start;
                        out[dst + v] = values[src + x * self.stride[2]];
                    }
                }
            }
        }
    }
}

/// One volume plane's accumulators: Gaussian-weighted class scores `[classes][rows x cols]` and
/// the sum of weights `[rows x cols]`.
struct PlaneScores {
    scores: Vec<f32>,
    weights: Vec<f32>,
}

/// Predicts one volume with a Gaussian-weighted 3D sliding window: `run(input, n)` takes `n`
/// windows `[n, channels, d, r, c]` (depth along `slice_axis`, rows and cols as
/// [`SliceGeometry`] orders a slice) and returns their class probabilities `[n, classes, d, r,
/// c]`, softmax and any mirroring ([`mirror_axes_3d`], [`flip_3d`]) done by the caller, so
/// `settings.mirror` is the caller's to read. Windows start where the 2D window starts them
/// ([`window_starts`], `settings.step_fraction`); a volume smaller than the patch along an axis
/// is padded, centred, with zeros and only its own voxels are kept. Labels are the first class
/// of highest weighted-average probability on `job.out_shape`, each plane's probabilities
/// resampled in-plane first as the 2D window does when that differs from `job.shape`.
///
/// Memory bound: windows go through `run` in order of their depth start, at most
/// `windows_per_batch` at a time, and scores are held only for the planes from the first depth
/// start of the current batch to the end of its last window: at most `patch[0]` plus the depth
/// extent of one batch (its last depth start minus its first) planes of `(classes + 1) x rows x
/// cols` floats. A plane is resolved into labels as soon as the next window starts past it, so
/// a whole-volume score buffer (classes x voxels) exists only when `keep_probabilities` asks for
/// the probabilities themselves.
pub fn predict_volume_3d(
    job: &VolumeJob,
    slice_axis: usize,
    patch: [usize; 3],
    classes: usize,
    settings: &WindowSettings,
    run: impl FnMut(Vec<f32>, usize) -> Vec<f32>,
) -> VolumePrediction {
    predict_counting_planes(job, slice_axis, patch, classes, settings, run).0
}

/// [`predict_volume_3d`], also returning the most planes whose scores were held at once, so the
/// tests can check the memory bound.
pub(crate) fn predict_counting_planes(
    job: &VolumeJob,
    slice_axis: usize,
    patch: [usize; 3],
    classes: usize,
    settings: &WindowSettings,
    mut run: impl FnMut(Vec<f32>, usize) -> Vec<f32>,
) -> (VolumePrediction, usize) {
    assert!(slice_axis < 3, "slice axis {slice_axis}");
    assert!(patch.iter().all(|&p| p > 0), "empty patch {patch:?}");
    assert!(
        (1..=256).contains(&classes),
        "{classes} classes in u8 labels"
    );
    assert_eq!(
        job.out_shape[slice_axis], job.shape[slice_axis],
        "resampling changes only the in-plane shape"
    );
    let voxels: usize = job.shape.iter().product();
    assert!(
        job.channels.iter().all(|c| c.len() == voxels),
        "channels of {voxels} voxels"
    );
    let out_voxels: usize = job.out_shape.iter().product();
    let mut labels = vec![0u8; out_voxels];
    let mut probabilities = job
        .keep_probabilities
        .then(|| vec![vec![0.0f32; out_voxels]; classes]);
    if voxels == 0 || out_voxels == 0 {
        return (
            VolumePrediction {
                labels,
                probabilities,
            },
            0,
        );
    }

    let frame = Frame::new(job.shape, slice_axis, patch);
    let [pd, pr, pc] = patch;
    let window_voxels = pd * pr * pc;
    let [_, rows, cols] = frame.len;
    let plane = rows * cols;
    let weights = gaussian_weights_3d(patch);
    let starts: [Vec<usize>; 3] =
        std::array::from_fn(|i| window_starts(frame.canvas[i], patch[i], settings.step_fraction));
    // Depth-major, so the planes a window touches only move forward.
    let mut windows = Vec::new();
    for &d in &starts[0] {
        for &r in &starts[1] {
            for &c in &starts[2] {
                windows.push([d, r, c]);
            }
        }
    }
    // `windows_per_batch` bounds a batch's probabilities, classes x window voxels floats; the
    // depth folds into its rows.
    let batch = windows_per_batch(settings.batch_windows, classes, [pd * pr, pc]);

    let geometry = SliceGeometry {
        shape: job.shape,
        slice_axis,
    };
    let out_geometry = SliceGeometry {
        shape: job.out_shape,
        slice_axis,
    };
    let mut to_out = SliceResampler::new(&geometry, &out_geometry);
    let [out_rows, out_cols] = out_geometry.slice_shape();
    let mut plane_probs = vec![vec![0.0f32; plane]; classes];
    let mut plane_labels = vec![0u8; out_rows * out_cols];
    let mut finish = |z: usize, acc: &PlaneScores| {
        for (k, probs) in plane_probs.iter_mut().enumerate() {
            let scores = &acc.scores[k * plane..][..plane];
            for ((p, &s), &w) in probs.iter_mut().zip(scores).zip(&acc.weights) {
                *p = s / w;
            }
        }
        let probs = to_out.resample(&plane_probs);
        argmax_into(probs, &mut plane_labels);
        out_geometry.insert(&mut labels, z, &plane_labels);
        if let Some(volumes) = probabilities.as_mut() {
            for (volume, class) in volumes.iter_mut().zip(probs) {
                out_geometry.insert(volume, z, class);
            }
        }
    };

    // The planes in flight, consecutive from `first`; finished buffers are zeroed and reused.
    let mut open: VecDeque<PlaneScores> = VecDeque::new();
    let mut spare: Vec<PlaneScores> = Vec::new();
    let mut first = 0usize;
    let mut most_open = 0usize;
    for (g, group) in windows.chunks(batch).enumerate() {
        let mut input = Vec::with_capacity(group.len() * job.channels.len() * window_voxels);
        for &w in group {
            frame.push_window(job.channels, w, &mut input);
        }
        // The group's last window starts deepest, so it ends deepest.
        let last = group.last().expect("a non-empty batch");
        let (depth, z0) = frame.inside(0, last[0]);
        let end = z0 + depth.len();
        while first + open.len() < end {
            let acc = match spare.pop() {
                Some(mut acc) => {
                    acc.scores.fill(0.0);
                    acc.weights.fill(0.0);
                    acc
                }
                None => PlaneScores {
                    scores: vec![0.0; classes * plane],
                    weights: vec![0.0; plane],
                },
            };
            open.push_back(acc);
        }
        most_open = most_open.max(open.len());

        let probs = run(input, group.len());
        assert_eq!(
            probs.len(),
            group.len() * classes * window_voxels,
            "window probabilities"
        );
        for (n, &w) in group.iter().enumerate() {
            let (depth, z0) = frame.inside(0, w[0]);
            let (rows_in, y0) = frame.inside(1, w[1]);
            let (cols_in, x0) = frame.inside(2, w[2]);
            let window_probs = &probs[n * classes * window_voxels..][..classes * window_voxels];
            for t in depth.clone() {
                let acc = &mut open[z0 + t - depth.start - first];
                for u in rows_in.clone() {
                    let y = y0 + u - rows_in.start;
                    let at = (t * pr + u) * pc;
                    let wts = &weights[at + cols_in.start..at + cols_in.end];
                    let dst = y * cols + x0;
                    for (s, &wt) in acc.weights[dst..dst + wts.len()].iter_mut().zip(wts) {
                        *s += wt;
                    }
                    for k in 0..classes {
                        let src = &window_probs[k * window_voxels + at..][cols_in.clone()];
                        let scores = &mut acc.scores[k * plane + dst..][..wts.len()];
                        for ((s, &p), &wt) in scores.iter_mut().zip(src).zip(wts) {
                            *s += p * wt;
                        }
                    }
                }
            }
        }
        // No later window starts before the next one, so every plane above it is complete.
        let next = windows
            .get((g + 1) * batch)
            .map_or(usize::MAX, |w| frame.first_plane(w[0]));
        while first < next && !open.is_empty() {
            let acc = open.pop_front().expect("an open plane");
            finish(first, &acc);
            spare.push(acc);
            first += 1;
        }
    }
    debug_assert!(
        open.is_empty() && first == frame.len[0],
        "every plane resolved"
    );
    (
        VolumePrediction {
            labels,
            probabilities,
        },
        most_open,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::window::gaussian_weights;

    /// Deterministic pseudo-random values in [-2, 2), different per `seed`.
    fn values(count: usize, seed: f32) -> Vec<f32> {
        (0..count)
            .map(|i| ((i as f32 * 12.9898 + seed * 78.233).sin() * 43_758.547).fract() * 2.0)
            .collect()
    }

    fn job_of<'a>(channels: &'a [Vec<f32>], shape: [usize; 3], out: [usize; 3]) -> VolumeJob<'a> {
        VolumeJob {
            channels,
            shape,
            out_shape: out,
            keep_probabilities: true,
        }
    }

    fn settings(batch_windows: usize) -> WindowSettings {
        WindowSettings {
            batch_windows,
            ..WindowSettings::default()
        }
    }

    /// Voxel `[depth, row, col]` (window axes) of a volume, counted without [`Frame`].
    fn voxel(shape: [usize; 3], slice_axis: usize, [d, r, c]: [usize; 3]) -> usize {
        let [ra, ca] = in_plane_axes(slice_axis);
        let mut p = [0usize; 3];
        (p[slice_axis], p[ra], p[ca]) = (d, r, c);
        p[0] + shape[0] * (p[1] + shape[1] * p[2])
    }

    /// Per voxel, the first class of highest value; `values` is `[classes][voxels]`.
    fn argmax<T: PartialOrd + Copy>(values: &[Vec<T>]) -> Vec<u8> {
        (0..values[0].len())
            .map(|v| {
                (0..values.len()).fold(0, |b, k| if values[k][v] > values[b][v] { k } else { b })
                    as u8
            })
            .collect()
    }

    /// The class a stand-in network gives a voxel from its two channels' values.
    fn class_of(a: f32, b: f32) -> usize {
        usize::from(a > 0.0) + 2 * usize::from(b > 0.5)
    }

    #[test]
    fn labels_follow_each_voxel_through_every_axis_and_padding() {
        // A network that sees each voxel alone: one-hot of `class_of` its two channels.
        let run = |input: Vec<f32>, n: usize| {
            let per = input.len() / (2 * n);
            let mut out = vec![0.0f32; n * 4 * per];
            for w in 0..n {
                for p in 0..per {
                    let k = class_of(input[2 * w * per + p], input[(2 * w + 1) * per + p]);
                    out[(w * 4 + k) * per + p] = 1.0;
                }
            }
            out
        };
        let mut padded = [false; 3];
        for shape in [[11, 5, 7], [3, 13, 9], [9, 2, 14]] {
            let voxels: usize = shape.iter().product();
            let channels = vec![values(voxels, 1.0), values(voxels, 2.0)];
            let want: Vec<u8> = (0..voxels)
                .map(|v| class_of(channels[0][v], channels[1][v]) as u8)
                .collect();
            for slice_axis in 0..3 {
                for patch in [[4, 8, 6], [8, 4, 4]] {
                    let [ra, ca] = in_plane_axes(slice_axis);
                    for (i, a) in [slice_axis, ra, ca].into_iter().enumerate() {
                        padded[i] |= shape[a] < patch[i];
                    }
                    for batch in [1, 5, 64] {
                        let job = job_of(&channels, shape, shape);
                        let got =
                            predict_volume_3d(&job, slice_axis, patch, 4, &settings(batch), run);
                        let what =
                            format!("{shape:?} axis {slice_axis} patch {patch:?} batch {batch}");
                        assert_eq!(got.labels, want, "{what}");
                        // Every window agrees, so the average is the one-hot itself.
                        let probs = got.probabilities.unwrap();
                        for v in 0..voxels {
                            assert_eq!(probs[want[v] as usize][v], 1.0, "{what} voxel {v}");
                        }
                    }
                }
            }
        }
        assert_eq!(padded, [true; 3], "some case pads every window axis");
    }

    /// A stand-in network whose probabilities depend smoothly on the position in the window as
    /// well as on the input, so overlapping windows disagree and the weighting matters.
    fn smooth_network(patch: [usize; 3], classes: usize) -> impl Fn(Vec<f32>, usize) -> Vec<f32> {
        let [pd, pr, pc] = patch;
        let per = pd * pr * pc;
        move |input, n| {
            let mut out = vec![0.0f32; n * classes * per];
            for w in 0..n {
                for t in 0..pd {
                    for u in 0..pr {
                        for v in 0..pc {
                            let p = (t * pr + u) * pc + v;
                            let (a, b) = (input[2 * w * per + p], input[(2 * w + 1) * per + p]);
                            let logits: Vec<f32> = (0..classes)
                                .map(|k| {
                                    let k = k as f32;
                                    (0.9 * t as f32 + 1.3 * k).sin()
                                        + (0.7 * u as f32 - 0.5 * k).cos()
                                        + 0.6 * (1.1 * v as f32 + k).sin()
                                        + (k - 1.0) * a
                                        + 0.3 * k * b
                                })
                                .collect();
                            let top = logits.iter().copied().fold(f32::MIN, f32::max);
                            let total: f32 = logits.iter().map(|l| (l - top).exp()).sum();
                            for (k, l) in logits.iter().enumerate() {
                                out[(w * classes + k) * per + p] = (l - top).exp() / total;
                            }
                        }
                    }
                }
            }
            out
        }
    }

    /// Every window, one at a time, into whole-volume float64 buffers, then divided.
    fn whole_volume_reference(
        channels: &[Vec<f32>],
        shape: [usize; 3],
        slice_axis: usize,
        patch: [usize; 3],
        classes: usize,
        run: impl Fn(Vec<f32>, usize) -> Vec<f32>,
    ) -> Vec<Vec<f64>> {
        let [ra, ca] = in_plane_axes(slice_axis);
        let len = [shape[slice_axis], shape[ra], shape[ca]];
        let canvas: [usize; 3] = std::array::from_fn(|i| len[i].max(patch[i]));
        let off: [usize; 3] = std::array::from_fn(|i| (canvas[i] - len[i]) / 2);
        let starts: [Vec<usize>; 3] =
            std::array::from_fn(|i| window_starts(canvas[i], patch[i], 0.5));
        let weights = gaussian_weights_3d(patch);
        let voxels: usize = shape.iter().product();
        let mut scores = vec![vec![0.0f64; voxels]; classes];
        let mut norm = vec![0.0f64; voxels];
        let [pd, pr, pc] = patch;
        // Window positions inside the volume, each with its place in the patch.
        let inside = |s: [usize; 3]| {
            let mut at = Vec::new();
            for t in 0..pd {
                for u in 0..pr {
                    for v in 0..pc {
                        let q = [s[0] + t, s[1] + u, s[2] + v];
                        if (0..3).all(|i| q[i] >= off[i] && q[i] - off[i] < len[i]) {
                            let real = std::array::from_fn(|i| q[i] - off[i]);
                            at.push(((t * pr + u) * pc + v, voxel(shape, slice_axis, real)));
                        }
                    }
                }
            }
            at
        };
        for &c in &starts[2] {
            for &r in &starts[1] {
                for &d in &starts[0] {
                    let at = inside([d, r, c]);
                    let mut input = vec![0.0f32; channels.len() * pd * pr * pc];
                    for (ch, values) in channels.iter().enumerate() {
                        for &(p, v) in &at {
                            input[ch * pd * pr * pc + p] = values[v];
                        }
                    }
                    let probs = run(input, 1);
                    for &(p, v) in &at {
                        norm[v] += weights[p] as f64;
                        for (k, class) in scores.iter_mut().enumerate() {
                            class[v] += probs[k * pd * pr * pc + p] as f64 * weights[p] as f64;
                        }
                    }
                }
            }
        }
        for class in &mut scores {
            for (s, n) in class.iter_mut().zip(&norm) {
                *s /= n;
            }
        }
        scores
    }

    #[test]
    fn slab_by_slab_scores_match_a_whole_volume_buffer() {
        let cases = [
            ([13, 10, 9], [6, 8, 4], 3),
            ([6, 17, 11], [8, 8, 8], 4),
            ([10, 4, 15], [4, 6, 10], 2),
        ];
        for (shape, patch, classes) in cases {
            let voxels: usize = shape.iter().product();
            let channels = vec![values(voxels, 3.0), values(voxels, 4.0)];
            let run = smooth_network(patch, classes);
            for slice_axis in 0..3 {
                let want =
                    whole_volume_reference(&channels, shape, slice_axis, patch, classes, &run);
                let want_labels = argmax(&want);
                assert!(
                    want_labels.iter().any(|&l| l != want_labels[0]),
                    "{shape:?}"
                );
                for batch in [1, 4, 1000] {
                    let what = format!("{shape:?} axis {slice_axis} patch {patch:?} batch {batch}");
                    let job = job_of(&channels, shape, shape);
                    let got =
                        predict_volume_3d(&job, slice_axis, patch, classes, &settings(batch), &run);
                    assert_eq!(got.labels, want_labels, "{what}");
                    for (k, (got, want)) in got.probabilities.unwrap().iter().zip(&want).enumerate()
                    {
                        for v in 0..voxels {
                            let diff = (got[v] as f64 - want[v]).abs();
                            assert!(
                                diff < 1e-5,
                                "{what} class {k} voxel {v}: {} vs {}",
                                got[v],
                                want[v]
                            );
                        }
                    }
                    let labels_only = VolumeJob {
                        keep_probabilities: false,
                        ..job
                    };
                    let got = predict_volume_3d(
                        &labels_only,
                        slice_axis,
                        patch,
                        classes,
                        &settings(batch),
                        &run,
                    );
                    assert_eq!(got.labels, want_labels, "{what}");
                    assert!(got.probabilities.is_none());
                }
            }
        }
    }

    #[test]
    fn scores_are_held_for_a_patch_and_a_batch_of_planes_not_the_volume() {
        let patch = [8, 8, 8];
        // 40 slices along the slice axis, several windows per depth position in-plane.
        for (shape, slice_axis) in [([20, 6, 40], 2), ([40, 9, 21], 0), ([13, 40, 5], 1)] {
            let voxels: usize = shape.iter().product();
            let channels = vec![values(voxels, 5.0), values(voxels, 6.0)];
            let run = smooth_network(patch, 3);
            let job = job_of(&channels, shape, shape);
            let all = predict_volume_3d(&job, slice_axis, patch, 3, &settings(1000), &run);
            let [ra, ca] = in_plane_axes(slice_axis);
            let depth_starts = window_starts(shape[slice_axis], patch[0], 0.5);
            let per_depth = window_starts(shape[ra].max(8), 8, 0.5).len()
                * window_starts(shape[ca].max(8), 8, 0.5).len();
            assert!(per_depth > 1, "{shape:?}");
            let window_depths: Vec<usize> = depth_starts
                .iter()
                .flat_map(|&d| std::iter::repeat_n(d, per_depth))
                .collect();
            for batch in [1, 2, 3, 7] {
                let extent = window_depths
                    .chunks(batch)
                    .map(|c| c[c.len() - 1] - c[0])
                    .max()
                    .unwrap();
                let (got, held) =
                    predict_counting_planes(&job, slice_axis, patch, 3, &settings(batch), &run);
                let what = format!("{shape:?} axis {slice_axis} batch {batch}");
                assert!(held <= patch[0] + extent, "{what}: {held} planes held");
                assert!(held < shape[slice_axis] / 2, "{what}: {held} planes held");
                // Bounded memory changes nothing in the result.
                assert_eq!(got.labels, all.labels, "{what}");
                assert_eq!(got.probabilities, all.probabilities, "{what}");
            }
        }
    }

    #[test]
    fn plane_by_plane_resampling_matches_resampling_the_whole_volume() {
        let cases = [
            ([9, 12, 7], 2, [14, 8, 7]),
            ([5, 10, 13], 0, [5, 17, 6]),
            ([11, 6, 9], 1, [7, 6, 15]),
        ];
        let (patch, classes) = ([4, 8, 8], 4);
        for (shape, slice_axis, out_shape) in cases {
            let voxels: usize = shape.iter().product();
            let channels = vec![values(voxels, 7.0), values(voxels, 8.0)];
            let run = smooth_network(patch, classes);
            let on_grid = predict_volume_3d(
                &job_of(&channels, shape, shape),
                slice_axis,
                patch,
                classes,
                &settings(3),
                &run,
            );
            // What the 2D path's per-slice resampling equals: the whole volume's, per class.
            let resampled: Vec<Vec<f32>> = on_grid
                .probabilities
                .unwrap()
                .iter()
                .map(|class| segmenter_io::resample_linear(class, shape, out_shape))
                .collect();
            let want = argmax(&resampled);
            assert!(want.iter().any(|&l| l != want[0]), "{shape:?}");
            let what = format!("{shape:?} axis {slice_axis} -> {out_shape:?}");
            let got = predict_volume_3d(
                &job_of(&channels, shape, out_shape),
                slice_axis,
                patch,
                classes,
                &settings(3),
                &run,
            );
            assert_eq!(got.labels, want, "{what}");
            assert_eq!(got.probabilities.unwrap(), resampled, "{what}");
        }
    }

    #[test]
    fn flips_match_an_index_loop_and_undo_themselves() {
        let dims @ [n, c, d, r, cc] = [2, 3, 4, 5, 3];
        let original = values(n * c * d * r * cc, 9.0);
        let at = |i: [usize; 5]| (((i[0] * c + i[1]) * d + i[2]) * r + i[3]) * cc + i[4];
        let axes = mirror_axes_3d();
        assert_eq!(axes[0], [false; 3]);
        for (i, a) in axes.iter().enumerate() {
            assert!(!axes[..i].contains(a), "{a:?} twice");
        }
        for flip in axes {
            let mut got = original.clone();
            flip_3d(&mut got, dims, flip);
            let mirror = |q: usize, len: usize, on: bool| if on { len - 1 - q } else { q };
            for i0 in 0..n {
                for i1 in 0..c {
                    for z in 0..d {
                        for y in 0..r {
                            for x in 0..cc {
                                let from = [
                                    i0,
                                    i1,
                                    mirror(z, d, flip[0]),
                                    mirror(y, r, flip[1]),
                                    mirror(x, cc, flip[2]),
                                ];
                                assert_eq!(
                                    got[at([i0, i1, z, y, x])],
                                    original[at(from)],
                                    "{flip:?}"
                                );
                            }
                        }
                    }
                }
            }
            flip_3d(&mut got, dims, flip);
            assert_eq!(got, original, "{flip:?} twice");
        }
    }

    #[test]
    fn the_3d_gaussian_extends_the_2d_one() {
        // One plane deep, it is the 2D map exactly.
        assert_eq!(gaussian_weights_3d([1, 12, 7]), gaussian_weights([12, 7]));
        let w = gaussian_weights_3d([8, 16, 6]);
        let peak = w.iter().copied().fold(0.0f32, f32::max);
        // The four centre planes, rows and columns of an even side share the peak.
        assert_eq!(w[(3 * 16 + 7) * 6 + 2], peak);
        assert!(
            peak > 0.5 && w[0] > 0.0 && w[0] < 1e-3,
            "peak {peak} corner {}",
            w[0]
        );
        // Separable: each window axis is the 1D Gaussian.
        let (d, r) = (gaussian_axis(8), gaussian_axis(16));
        let ratio = w[(16 + 7) * 6 + 2] / w[(3 * 16 + 7) * 6 + 2];
        assert!((ratio as f64 - d[1] / d[3]).abs() < 1e-6);
        let ratio = w[(3 * 16 + 2) * 6 + 2] / w[(3 * 16 + 7) * 6 + 2];
        assert!((ratio as f64 - r[2] / r[7]).abs() < 1e-6);
    }
}
