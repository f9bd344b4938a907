//! Inference: every slice of a volume through the network with a Gaussian-weighted sliding window,
//! argmax, back into the volume's own grid.

use burn::prelude::*;
use burn::tensor::activation;

use crate::model::{ModelBackend, SwinUMamba};
use crate::plan::{Plan, SliceGeometry};

/// Sliding-window settings.
#[derive(Clone, Debug)]
pub struct WindowSettings {
    /// Step between windows as a fraction of the patch size.
    pub step_fraction: f64,
    /// Windows run through the network together.
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

/// Softmax probabilities `[n, classes, rows, cols]`, averaged over mirrored copies when asked.
fn window_probabilities<B: ModelBackend>(
    model: &SwinUMamba<B>,
    x: Tensor<B, 4>,
    mirror: bool,
) -> Tensor<B, 4> {
    let probs = activation::softmax(model.logits(x.clone()), 1);
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
        sum = sum + flip(activation::softmax(model.logits(flip(x.clone())), 1));
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

/// Gaussian importance map over a patch, sigma = side/8, peak 1 (nnU-Net's weighting).
pub fn gaussian_weights([rows, cols]: [usize; 2]) -> Vec<f32> {
    let axis = |n: usize| -> Vec<f64> {
        let sigma = n as f64 / 8.0;
        let centre = (n as f64 - 1.0) / 2.0;
        (0..n)
            .map(|i| (-((i as f64 - centre).powi(2)) / (2.0 * sigma * sigma)).exp())
            .collect()
    };
    let (r, c) = (axis(rows), axis(cols));
    r.iter()
        .flat_map(|&a| c.iter().map(move |&b| ((a * b) as f32).max(1e-4)))
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

/// Predicts the label map of one normalised volume (channels in file order) of shape `shape`.
pub fn predict_volume<B: ModelBackend>(
    model: &SwinUMamba<B>,
    plan: &Plan,
    channels: &[Vec<f32>],
    shape: [usize; 3],
    settings: &WindowSettings,
    device: &B::Device,
) -> Vec<u8> {
    predict_volume_with_probabilities(model, plan, channels, shape, settings, device, false).0
}

/// Like [`predict_volume`], and when `keep_probabilities` also the class probabilities, one
/// `Vec` per class in the volume's voxel order (the Gaussian-weighted average over windows).
pub fn predict_volume_with_probabilities<B: ModelBackend>(
    model: &SwinUMamba<B>,
    plan: &Plan,
    channels: &[Vec<f32>],
    shape: [usize; 3],
    settings: &WindowSettings,
    device: &B::Device,
    keep_probabilities: bool,
) -> (Vec<u8>, Option<Vec<Vec<f32>>>) {
    let geometry = SliceGeometry {
        shape,
        slice_axis: plan.slice_axis,
    };
    let [rows, cols] = geometry.slice_shape();
    let [pr, pc] = plan.patch_size;
    let canvases = Canvases::new(channels, &geometry, plan.patch_size);
    let ([canvas_r, canvas_c], [off_r, off_c]) = (canvases.shape, canvases.offset);
    let classes = plan.num_classes();
    let weights = gaussian_weights(plan.patch_size);
    let starts_r = window_starts(canvas_r, pr, settings.step_fraction);
    let starts_c = window_starts(canvas_c, pc, settings.step_fraction);

    let mut windows = Vec::new();
    for slice in 0..geometry.count() {
        for &row in &starts_r {
            for &col in &starts_c {
                windows.push(Window { slice, row, col });
            }
        }
    }

    let mut scores = vec![0.0f32; geometry.count() * classes * canvas_r * canvas_c];
    let mut norm = vec![0.0f32; canvas_r * canvas_c];
    for &row in &starts_r {
        for &col in &starts_c {
            for i in 0..pr {
                for j in 0..pc {
                    norm[(row + i) * canvas_c + col + j] += weights[i * pc + j];
                }
            }
        }
    }
    let in_channels = plan.input_channels();
    for group in windows.chunks(settings.batch_windows.max(1)) {
        let mut input = Vec::with_capacity(group.len() * in_channels * pr * pc);
        for w in group {
            canvases.push_window(&geometry, plan.context_slices, w, &mut input);
        }
        let x = Tensor::<B, 4>::from_data(
            TensorData::new(input, [group.len(), in_channels, pr, pc]),
            device,
        );
        let probs = window_probabilities(model, x, settings.mirror)
            .into_data()
            .convert::<f32>();
        let probs = probs.as_slice::<f32>().expect("f32 probabilities");
        for (n, w) in group.iter().enumerate() {
            for k in 0..classes {
                let base = ((w.slice * classes + k) * canvas_r + w.row) * canvas_c + w.col;
                let src = &probs[(n * classes + k) * pr * pc..(n * classes + k + 1) * pr * pc];
                for i in 0..pr {
                    for j in 0..pc {
                        scores[base + i * canvas_c + j] += src[i * pc + j] * weights[i * pc + j];
                    }
                }
            }
        }
    }

    let voxels: usize = shape.iter().product();
    let mut labels = vec![0u8; voxels];
    let mut probabilities = keep_probabilities.then(|| vec![vec![0.0f32; voxels]; classes]);
    for s in 0..geometry.count() {
        let mut slice_labels = vec![0u8; rows * cols];
        let mut slice_probs = vec![vec![0.0f32; rows * cols]; classes];
        for r in 0..rows {
            for c in 0..cols {
                let p = (r + off_r) * canvas_c + c + off_c;
                let mut best = (0usize, f32::MIN);
                for (k, probs) in slice_probs.iter_mut().enumerate() {
                    let v = scores[(s * classes + k) * canvas_r * canvas_c + p] / norm[p];
                    probs[r * cols + c] = v;
                    if v > best.1 {
                        best = (k, v);
                    }
                }
                slice_labels[r * cols + c] = best.0 as u8;
            }
        }
        geometry.insert(&mut labels, s, &slice_labels);
        if let Some(volumes) = probabilities.as_mut() {
            for (volume, probs) in volumes.iter_mut().zip(&slice_probs) {
                geometry.insert(volume, s, probs);
            }
        }
    }
    (labels, probabilities)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_the_axis_with_the_requested_overlap() {
        assert_eq!(window_starts(64, 64, 0.5), vec![0]);
        assert_eq!(window_starts(40, 64, 0.5), vec![0]);
        assert_eq!(window_starts(128, 64, 0.5), vec![0, 32, 64]);
        let starts = window_starts(100, 64, 0.5);
        assert_eq!((starts[0], *starts.last().unwrap()), (0, 36));
        assert!(starts.windows(2).all(|w| w[1] - w[0] <= 32));
    }

    #[test]
    fn window_inputs_stack_each_channel_with_its_neighbouring_slices() {
        // Channel c of slice z holds 1000·(c+1) + z everywhere, so a plane's value names both.
        let (shape, nz, k) = ([10, 12, 5], 5usize, 2usize);
        let voxels: usize = shape.iter().product();
        let channels: Vec<Vec<f32>> = (0..2)
            .map(|c| {
                (0..voxels)
                    .map(|i| 1000.0 * (c + 1) as f32 + (i / (10 * 12)) as f32)
                    .collect()
            })
            .collect();
        let geometry = SliceGeometry {
            shape,
            slice_axis: 2,
        };
        let patch = [16, 16];
        let canvases = Canvases::new(&channels, &geometry, patch);
        assert_eq!((canvases.shape, canvases.offset), ([16, 16], [3, 2]));
        let planes = 2 * (2 * k + 1);
        for slice in 0..nz {
            let mut input = Vec::new();
            let w = Window {
                slice,
                row: 0,
                col: 0,
            };
            canvases.push_window(&geometry, k, &w, &mut input);
            assert_eq!(input.len(), planes * 16 * 16);
            for plane in 0..planes {
                let (c, j) = (plane / (2 * k + 1), plane % (2 * k + 1));
                let z = (slice as isize + j as isize - k as isize).clamp(0, nz as isize - 1);
                let want = 1000.0 * (c + 1) as f32 + z as f32;
                let at = |r: usize, col: usize| input[plane * 256 + r * 16 + col];
                // Inside the slice it names the right neighbour; the padding stays zero.
                assert_eq!(at(3, 2), want, "slice {slice} plane {plane}");
                assert_eq!(at(12, 13), want, "slice {slice} plane {plane}");
                assert_eq!(at(0, 0), 0.0);
            }
        }
    }

    #[test]
    fn gaussian_peaks_in_the_centre() {
        let w = gaussian_weights([64, 64]);
        assert!(w[31 * 64 + 31] > 0.99, "centre {}", w[31 * 64 + 31]);
        // Corners are tiny but positive, so every pixel keeps a defined weighted average.
        assert!(w[0] < 0.01 && w[0] > 0.0, "corner {}", w[0]);
    }
}
