//! The sliding window: every slice of a volume through the network in Gaussian-weighted windows,
//! batched, with optional mirroring, and the class probabilities to labels on the output grid.

use burn::prelude::*;
use burn::tensor::activation;

use crate::model::{ModelBackend, SwinUMamba};
use crate::plan::Plan;
use crate::preprocess::SliceGeometry;

/// Sliding-window settings.
#[derive(Clone, Debug)]
pub struct WindowSettings {
    /// Step between windows as a fraction of the patch size.
    pub step_fraction: f64,
    /// Windows run through the network together, at most: fewer when their class
    /// probabilities would pass [`BATCH_PROBABILITY_BYTES`].
    pub batch_windows: usize,
    /// Mirroring test-time augmentation: average over the window and its flips along both
    /// in-plane axes (4 passes).
    pub mirror: bool,
}

impl Default for WindowSettings {
    fn default() -> Self {
        Self {
            step_fraction: 0.5,
            batch_windows: 16,
            mirror: false,
        }
    }
}

/// Most bytes the class probabilities of one batch of windows may take. With many classes and
/// large patches, 16 windows' logits, softmax and copy would take gigabytes (118 classes at
/// 256 x 256: 495 MB for each of them), for no gain in speed on the CPU.
pub const BATCH_PROBABILITY_BYTES: usize = 64 << 20;

/// Windows per network call: `batch_windows`, fewer if their probabilities would pass
/// [`BATCH_PROBABILITY_BYTES`], and at least one.
pub fn windows_per_batch(batch_windows: usize, classes: usize, [rows, cols]: [usize; 2]) -> usize {
    let per_window = (classes * rows * cols * std::mem::size_of::<f32>()).max(1);
    batch_windows
        .min(BATCH_PROBABILITY_BYTES / per_window)
        .max(1)
}

/// Softmax probabilities `[n, classes, rows, cols]` (or, with `logits`, the logits),
/// averaged over mirrored copies when asked.
fn window_probabilities<B: ModelBackend>(
    model: &SwinUMamba<B>,
    x: Tensor<B, 4>,
    mirror: bool,
    logits: bool,
) -> Tensor<B, 4> {
    let output = |x: Tensor<B, 4>| {
        let y = model.logits(x);
        if logits {
            y
        } else {
            activation::softmax(y, 1)
        }
    };
    let probs = output(x.clone());
    if !mirror {
        return probs;
    }
    let mut sum = probs;
    for which in 0..3 {
        // Flip in, predict, flip the prediction back so it lines up with the original window.
        let flip = |t: Tensor<B, 4>| match which {
            0 => t.flip([2]),
            1 => t.flip([3]),
            _ => t.flip([2, 3]),
        };
        sum = sum + flip(output(flip(x.clone())));
    }
    sum / 4.0
}

/// Window start positions along one axis of length `len` (≥ patch) with the given step fraction.
pub fn window_starts(len: usize, patch: usize, step_fraction: f64) -> Vec<usize> {
    if len <= patch {
        return vec![0];
    }
    let step = (patch as f64 * step_fraction).max(1.0);
    let steps = ((len - patch) as f64 / step).ceil() as usize + 1;
    let span = (len - patch) as f64;
    (0..steps)
        .map(|i| (span * i as f64 / (steps - 1) as f64).round() as usize)
        .collect()
}

/// Window start positions exactly as nnU-Net v2's `compute_steps_for_sliding_window` places them
/// (its step, then numpy's rounding, halves to even), for runs imported from nnU-Net.
pub fn nnunet_window_starts(len: usize, patch: usize, step_fraction: f64) -> Vec<usize> {
    if len <= patch {
        return vec![0];
    }
    let target_step = patch as f64 * step_fraction;
    let steps = ((len - patch) as f64 / target_step).ceil() as usize + 1;
    let actual_step = (len - patch) as f64 / (steps - 1) as f64;
    (0..steps)
        .map(|i| (actual_step * i as f64).round_ties_even() as usize)
        .collect()
}

/// nnU-Net v2's importance map (`compute_gaussian`): a unit impulse at `side // 2` through
/// scipy's `gaussian_filter` (sigma side/8, truncated at 4 sigma, kernel normalised), scaled to
/// a peak of 10 and stored as float16 (so the weights are float16 values), zeros replaced by the
/// smallest non-zero weight.
pub fn nnunet_gaussian_weights([rows, cols]: [usize; 2]) -> Vec<f32> {
    let axis = |n: usize| -> Vec<f64> {
        let sigma = n as f64 / 8.0;
        let radius = (4.0 * sigma + 0.5) as i64;
        let kernel = |d: i64| (-0.5 * (d * d) as f64 / (sigma * sigma)).exp();
        let total: f64 = (-radius..=radius).map(kernel).sum();
        let centre = (n / 2) as i64;
        (0..n as i64)
            .map(|i| {
                let d = i - centre;
                if d.abs() <= radius {
                    kernel(d) / total
                } else {
                    0.0
                }
            })
            .collect()
    };
    let (r, c) = (axis(rows), axis(cols));
    let peak = r[rows / 2] * c[cols / 2];
    let mut w: Vec<f32> = r
        .iter()
        .flat_map(|&a| {
            c.iter()
                .map(move |&b| half::f16::from_f64(a * b / peak * 10.0).to_f32())
        })
        .collect();
    let smallest = w
        .iter()
        .copied()
        .filter(|&v| v > 0.0)
        .fold(f32::INFINITY, f32::min);
    for v in &mut w {
        if *v == 0.0 {
            *v = smallest;
        }
    }
    w
}

/// One axis of the Gaussian importance map: sigma = side/8 about the patch centre, peak 1. The
/// maps are products of these, so the 2D and 3D windows weight alike.
pub(crate) fn gaussian_axis(n: usize) -> Vec<f64> {
    let sigma = n as f64 / 8.0;
    let centre = (n as f64 - 1.0) / 2.0;
    (0..n)
        .map(|i| (-((i as f64 - centre).powi(2)) / (2.0 * sigma * sigma)).exp())
        .collect()
}

/// Smallest weight of the importance maps, so that every voxel keeps a defined weighted average.
pub(crate) const MIN_GAUSSIAN_WEIGHT: f32 = 1e-4;

/// Gaussian importance map over a patch, sigma = side/8, peak 1 (nnU-Net's weighting).
pub fn gaussian_weights([rows, cols]: [usize; 2]) -> Vec<f32> {
    let (r, c) = (gaussian_axis(rows), gaussian_axis(cols));
    r.iter()
        .flat_map(|&a| {
            c.iter()
                .map(move |&b| ((a * b) as f32).max(MIN_GAUSSIAN_WEIGHT))
        })
        .collect()
}

struct Window {
    slice: usize,
    row: usize,
    col: usize,
}

/// Every slice of a volume padded, centred, onto a canvas at least one patch large, so that
/// windows never leave it and a slice's neighbours are extracted only once.
struct Canvases {
    /// Per slice, `[channel][row][col]`.
    slices: Vec<Vec<f32>>,
    channels: usize,
    shape: [usize; 2],
    /// Where the slice's first pixel lies on its canvas.
    offset: [usize; 2],
    /// The window (network patch) size.
    patch: [usize; 2],
}

impl Canvases {
    fn new(channels: &[Vec<f32>], geometry: &SliceGeometry, patch: [usize; 2]) -> Self {
        let [pr, pc] = patch;
        let [rows, cols] = geometry.slice_shape();
        let (canvas_r, canvas_c) = (rows.max(pr), cols.max(pc));
        let (off_r, off_c) = ((canvas_r - rows) / 2, (canvas_c - cols) / 2);
        let slices = (0..geometry.count())
            .map(|s| {
                let mut canvas = vec![0.0f32; channels.len() * canvas_r * canvas_c];
                for (ch, values) in channels.iter().enumerate() {
                    let slice = geometry.extract(values, s);
                    for r in 0..rows {
                        let dst = ch * canvas_r * canvas_c + (r + off_r) * canvas_c + off_c;
                        canvas[dst..dst + cols].copy_from_slice(&slice[r * cols..(r + 1) * cols]);
                    }
                }
                canvas
            })
            .collect();
        Self {
            slices,
            channels: channels.len(),
            shape: [canvas_r, canvas_c],
            offset: [off_r, off_c],
            patch,
        }
    }

    /// Input planes of one window: every channel with `context` neighbours on each side.
    fn planes(&self, context: usize) -> usize {
        self.channels * (2 * context + 1)
    }

    /// Appends the network input of window `w`: per image channel, its slice and the `context`
    /// neighbours on each side (end slices repeated), the order the training sampler stacks them.
    fn push_window(
        &self,
        geometry: &SliceGeometry,
        context: usize,
        w: &Window,
        out: &mut Vec<f32>,
    ) {
        let ([canvas_r, canvas_c], [pr, pc]) = (self.shape, self.patch);
        for ch in 0..self.channels {
            for s in geometry.context(w.slice, context) {
                for i in 0..pr {
                    let src = ch * canvas_r * canvas_c + (w.row + i) * canvas_c + w.col;
                    out.extend_from_slice(&self.slices[s][src..src + pc]);
                }
            }
        }
    }
}

/// One volume to predict: its normalised channels in the network's frame, and the grid its
/// prediction comes back on.
pub struct VolumeJob<'a> {
    /// Normalised channels, each in the volume's voxel order (x fastest).
    pub channels: &'a [Vec<f32>],
    /// Shape of the volume in the network's frame.
    pub shape: [usize; 3],
    /// Shape of the grid the prediction comes back on: `shape`, or the same slices at another
    /// in-plane size (the file's, when the plan resampled them). Each slice's class probabilities
    /// are then resampled linearly and the labels are their argmax, as nnU-Net does, slice by
    /// slice, so that memory does not grow with classes x voxels.
    pub out_shape: [usize; 3],
    /// Also return the class probabilities on the output grid (classes x voxels floats).
    pub keep_probabilities: bool,
}

impl<'a> VolumeJob<'a> {
    /// The labels of a volume on its own grid.
    pub fn labels(channels: &'a [Vec<f32>], shape: [usize; 3]) -> Self {
        Self {
            channels,
            shape,
            out_shape: shape,
            keep_probabilities: false,
        }
    }
}

/// The prediction of one volume on the job's output grid.
pub struct VolumePrediction {
    /// Label of every voxel: the first class of highest probability.
    pub labels: Vec<u8>,
    /// Class probabilities (the Gaussian-weighted average over windows), one `Vec` per class in
    /// the output grid's voxel order, when the job asked for them.
    pub probabilities: Option<Vec<Vec<f32>>>,
}

/// Predicts one volume with a Gaussian-weighted sliding window over each of its slices: the one
/// way from a volume in the network's frame to its labels, for validation, `predict` and the
/// benchmarks alike.
pub fn predict_volume<B: ModelBackend>(
    model: &SwinUMamba<B>,
    plan: &Plan,
    job: &VolumeJob,
    settings: &WindowSettings,
    device: &B::Device,
) -> VolumePrediction {
    let geometry = SliceGeometry {
        shape: job.shape,
        slice_axis: plan.slice_axis,
    };
    let windows = SlidingWindows::for_plan(&geometry, plan, settings);
    windows.resolve(
        job.channels,
        job.out_shape,
        job.keep_probabilities,
        network_runner(model, plan, settings, device),
    )
}

/// The network input of a batch of windows, to the probabilities of its windows.
fn network_runner<'a, B: ModelBackend>(
    model: &'a SwinUMamba<B>,
    plan: &Plan,
    settings: &'a WindowSettings,
    device: &'a B::Device,
) -> impl FnMut(Vec<f32>, usize) -> Vec<f32> + 'a {
    let ([pr, pc], in_channels) = (plan.patch_size, plan.input_channels());
    // nnU-Net averages the windows' logits and takes the softmax afterwards.
    let logits = plan.nnunet.is_some();
    move |input: Vec<f32>, n: usize| {
        let x = Tensor::<B, 4>::from_data(TensorData::new(input, [n, in_channels, pr, pc]), device);
        window_probabilities(model, x, settings.mirror, logits)
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("f32 probabilities")
    }
}

/// One volume's sliding-window prediction, apart from the network: which windows, in which
/// batches, and how their probabilities become labels.
struct SlidingWindows<'a> {
    geometry: &'a SliceGeometry,
    patch: [usize; 2],
    classes: usize,
    context: usize,
    settings: &'a WindowSettings,
    /// nnU-Net's window positions and Gaussian; `run` returns logits, which are averaged and
    /// resampled before the softmax (runs imported from nnU-Net).
    nnunet: bool,
}

impl<'a> SlidingWindows<'a> {
    /// The windows of a volume of this geometry as the plan sets them out.
    fn for_plan(geometry: &'a SliceGeometry, plan: &Plan, settings: &'a WindowSettings) -> Self {
        Self {
            geometry,
            patch: plan.patch_size,
            classes: plan.num_classes(),
            context: plan.context_slices,
            settings,
            nnunet: plan.nnunet.is_some(),
        }
    }

    /// Runs every window through `run` (network input `[n, planes, rows, cols]` and `n` in,
    /// probabilities `[n, classes, rows, cols]` out) and hands each slice's class probabilities
    /// (`[classes][rows x cols]`, the Gaussian-weighted average over its windows) to `sink`, in
    /// slice order.
    ///
    /// Scores are kept only for the slices whose windows are in flight, and each slice is
    /// resolved into labels as soon as its last window is in. A whole-volume buffer of scores
    /// would be slices x classes x canvas: 10 GB for a 300 x 300 x 250 CT with TotalSegmentator's
    /// 118 classes, where this needs a few slices' worth.
    fn predict(
        &self,
        channels: &[Vec<f32>],
        mut run: impl FnMut(Vec<f32>, usize) -> Vec<f32>,
        mut sink: impl FnMut(usize, &[Vec<f32>]),
    ) {
        let (geometry, classes) = (self.geometry, self.classes);
        let [rows, cols] = geometry.slice_shape();
        let [pr, pc] = self.patch;
        let canvases = Canvases::new(channels, geometry, self.patch);
        let ([canvas_r, canvas_c], [off_r, off_c]) = (canvases.shape, canvases.offset);
        type Starts = fn(usize, usize, f64) -> Vec<usize>;
        let (weights, starts): (_, Starts) = if self.nnunet {
            (nnunet_gaussian_weights(self.patch), nnunet_window_starts)
        } else {
            (gaussian_weights(self.patch), window_starts)
        };
        let starts_r = starts(canvas_r, pr, self.settings.step_fraction);
        let starts_c = starts(canvas_c, pc, self.settings.step_fraction);

        // Slice-major, so a slice's windows are consecutive and every slice has at least one.
        let mut windows = Vec::new();
        for slice in 0..geometry.count() {
            for &row in &starts_r {
                for &col in &starts_c {
                    windows.push(Window { slice, row, col });
                }
            }
        }
        // nnU-Net keeps its sums of weighted logits, its sum of weights and their quotient in
        // float16; an imported run rounds where it rounds, so the two agree to float16's last bit
        // rather than differ by its rounding.
        let round: fn(f32) -> f32 = if self.nnunet {
            |v| half::f16::from_f32(v).to_f32()
        } else {
            |v| v
        };
        let mut norm = vec![0.0f32; canvas_r * canvas_c];
        for &row in &starts_r {
            for &col in &starts_c {
                for i in 0..pr {
                    for j in 0..pc {
                        let n = &mut norm[(row + i) * canvas_c + col + j];
                        *n = round(*n + weights[i * pc + j]);
                    }
                }
            }
        }

        // One slice's class probabilities, `[classes][rows x cols]`, refilled for every slice.
        let mut slice_probs = vec![vec![0.0f32; rows * cols]; classes];
        let mut finish = |s: usize, scores: &[f32]| {
            for (k, probs) in slice_probs.iter_mut().enumerate() {
                let class = &scores[k * canvas_r * canvas_c..][..canvas_r * canvas_c];
                for r in 0..rows {
                    for c in 0..cols {
                        let p = (r + off_r) * canvas_c + c + off_c;
                        probs[r * cols + c] = round(class[p] / norm[p]);
                    }
                }
            }
            sink(s, &slice_probs);
        };

        let per_slice = classes * canvas_r * canvas_c;
        let batch = windows_per_batch(self.settings.batch_windows, classes, self.patch);
        // The slices in flight, consecutive and in order, with their scores; finished buffers
        // are zeroed and reused.
        let mut open: std::collections::VecDeque<(usize, Vec<f32>)> = Default::default();
        let mut spare: Vec<Vec<f32>> = Vec::new();
        for (g, group) in windows.chunks(batch).enumerate() {
            let mut input =
                Vec::with_capacity(group.len() * canvases.planes(self.context) * pr * pc);
            for w in group {
                canvases.push_window(geometry, self.context, w, &mut input);
                if open.back().is_none_or(|(s, _)| *s != w.slice) {
                    let scores = match spare.pop() {
                        Some(mut buf) => {
                            buf.fill(0.0);
                            buf
                        }
                        None => vec![0.0f32; per_slice],
                    };
                    open.push_back((w.slice, scores));
                }
            }
            let probs = run(input, group.len());
            assert_eq!(
                probs.len(),
                group.len() * classes * pr * pc,
                "window probabilities"
            );
            let first = open.front().map_or(0, |(s, _)| *s);
            for (n, w) in group.iter().enumerate() {
                let scores = &mut open[w.slice - first].1;
                for k in 0..classes {
                    let base = (k * canvas_r + w.row) * canvas_c + w.col;
                    let src = &probs[(n * classes + k) * pr * pc..][..pr * pc];
                    for i in 0..pr {
                        let dst = &mut scores[base + i * canvas_c..][..pc];
                        let (src, wts) = (&src[i * pc..][..pc], &weights[i * pc..][..pc]);
                        for ((d, &p), &wt) in dst.iter_mut().zip(src).zip(wts) {
                            *d = round(*d + p * wt);
                        }
                    }
                }
            }
            // Every slice before the next window's is complete.
            let next = windows.get((g + 1) * batch).map_or(usize::MAX, |w| w.slice);
            while open.front().is_some_and(|(s, _)| *s < next) {
                let (s, scores) = open.pop_front().expect("an open slice");
                finish(s, &scores);
                spare.push(scores);
            }
        }
    }

    /// Labels on a grid of shape `out_shape` (the same slices, at the same or another in-plane
    /// size) and, with `keep_probabilities`, the class probabilities there. Each slice's
    /// probabilities are resampled linearly when the sizes differ, then the argmax is taken (ties
    /// to the lower label): equal to resampling whole-volume probabilities, as nnU-Net does,
    /// without holding classes x voxels floats unless they are asked for.
    fn resolve(
        &self,
        channels: &[Vec<f32>],
        out_shape: [usize; 3],
        keep_probabilities: bool,
        run: impl FnMut(Vec<f32>, usize) -> Vec<f32>,
    ) -> VolumePrediction {
        let axis = self.geometry.slice_axis;
        assert_eq!(
            out_shape[axis], self.geometry.shape[axis],
            "resampling changes only the in-plane shape"
        );
        let out_geometry = SliceGeometry {
            shape: out_shape,
            slice_axis: axis,
        };
        let voxels: usize = out_shape.iter().product();
        let mut labels = vec![0u8; voxels];
        let mut probabilities =
            keep_probabilities.then(|| vec![vec![0.0f32; voxels]; self.classes]);
        let mut to_out = SliceResampler::new(self.geometry, &out_geometry);
        let [out_rows, out_cols] = out_geometry.slice_shape();
        let mut slice_labels = vec![0u8; out_rows * out_cols];
        let mut softmax_buffer = Vec::new();
        let nnunet = self.nnunet;
        self.predict(channels, run, |s, probs| {
            let mut probs = to_out.resample(probs);
            if nnunet {
                // The averaged (and resampled) logits become probabilities only now.
                softmax_buffer.clear();
                softmax_buffer.extend_from_slice(probs);
                softmax_classes(&mut softmax_buffer);
                probs = &softmax_buffer;
            }
            argmax_into(probs, &mut slice_labels);
            out_geometry.insert(&mut labels, s, &slice_labels);
            if let Some(volumes) = probabilities.as_mut() {
                for (volume, class) in volumes.iter_mut().zip(probs) {
                    out_geometry.insert(volume, s, class);
                }
            }
        });
        VolumePrediction {
            labels,
            probabilities,
        }
    }
}

/// Resamples one slice's class probabilities (`[classes][rows x cols]`, row-major) to another
/// in-plane size with the volume resampler, so each slice gets exactly the values resampling the
/// whole volume would give it.
pub(crate) struct SliceResampler {
    /// In-plane shapes in and out.
    from: [usize; 2],
    to: [usize; 2],
    /// One slice as a volume one voxel thick, in and out.
    thin: [usize; 3],
    out_thin: [usize; 3],
    /// One class of a slice in the thin volume's order, and the resampled classes.
    class_thin: Vec<f32>,
    out: Vec<Vec<f32>>,
}

impl SliceResampler {
    pub(crate) fn new(geometry: &SliceGeometry, out_geometry: &SliceGeometry) -> Self {
        let axis = geometry.slice_axis;
        let (mut thin, mut out_thin) = (geometry.shape, out_geometry.shape);
        (thin[axis], out_thin[axis]) = (1, 1);
        let from = geometry.slice_shape();
        Self {
            from,
            to: out_geometry.slice_shape(),
            thin,
            out_thin,
            class_thin: vec![0.0; from[0] * from[1]],
            out: Vec::new(),
        }
    }

    /// The slice's probabilities on the output grid (the input itself when the sizes agree).
    pub(crate) fn resample<'a>(&'a mut self, probs: &'a [Vec<f32>]) -> &'a [Vec<f32>] {
        if self.from == self.to {
            return probs;
        }
        let ([rows, cols], [out_rows, out_cols]) = (self.from, self.to);
        self.out.resize(probs.len(), Vec::new());
        for (class, out) in probs.iter().zip(&mut self.out) {
            // In the thin volume x runs fastest: the rows axis (the lower one), so element
            // (r, c) sits at r + rows * c.
            for r in 0..rows {
                for c in 0..cols {
                    self.class_thin[r + rows * c] = class[r * cols + c];
                }
            }
            let resampled =
                segmenter_io::resample_linear(&self.class_thin, self.thin, self.out_thin);
            out.resize(out_rows * out_cols, 0.0);
            for r in 0..out_rows {
                for c in 0..out_cols {
                    out[r * out_cols + c] = resampled[r + out_rows * c];
                }
            }
        }
        &self.out
    }
}

/// Softmax over classes, per pixel, in place; `scores` is `[classes][pixels]`.
fn softmax_classes(scores: &mut [Vec<f32>]) {
    let pixels = scores.first().map_or(0, Vec::len);
    for p in 0..pixels {
        let top = scores
            .iter()
            .map(|c| c[p])
            .fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0f32;
        for class in scores.iter_mut() {
            class[p] = (class[p] - top).exp();
            total += class[p];
        }
        for class in scores.iter_mut() {
            class[p] /= total;
        }
    }
}

/// Per pixel, the first class of highest probability; `probs` is `[classes][pixels]`.
pub(crate) fn argmax_into(probs: &[Vec<f32>], labels: &mut [u8]) {
    for (p, label) in labels.iter_mut().enumerate() {
        let mut best = (0usize, f32::MIN);
        for (k, class) in probs.iter().enumerate() {
            if class[p] > best.1 {
                best = (k, class[p]);
            }
        }
        *label = best.0 as u8;
    }
}

#[cfg(test)]
#[path = "window_tests.rs"]
mod tests;
