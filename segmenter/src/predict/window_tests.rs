//! Tests of `window.rs`: window placement, 2.5D inputs, slice-by-slice scoring and resampling
//! against whole-volume buffers, and the Gaussian weights.

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

/// Uniform random values in `[lo, hi)` from a seeded xorshift generator.
fn uniform(lo: f32, hi: f32, mut seed: u64) -> impl FnMut() -> f32 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        lo + (hi - lo) * (seed >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// A stand-in network: per window and pixel, softmax over classes of a fixed linear map of
/// the input planes. Each window's output depends on that window alone, as the real one's.
fn fake_network(planes: usize, classes: usize) -> impl Fn(Vec<f32>, usize) -> Vec<f32> {
    move |input, n| {
        let pixels = input.len() / (n * planes);
        let mut out = vec![0.0f32; n * classes * pixels];
        for w in 0..n {
            for p in 0..pixels {
                let x = |q: usize| input[(w * planes + q) * pixels + p];
                let logits: Vec<f32> = (0..classes)
                    .map(|k| {
                        (0..planes)
                            .map(|q| ((k * 7 + q * 3) % 5) as f32 * 0.4 - 0.8)
                            .enumerate()
                            .map(|(q, c)| c * x(q))
                            .sum::<f32>()
                            + 0.1 * k as f32
                    })
                    .collect();
                let top = logits.iter().cloned().fold(f32::MIN, f32::max);
                let total: f32 = logits.iter().map(|l| (l - top).exp()).sum();
                for (k, l) in logits.iter().enumerate() {
                    out[(w * classes + k) * pixels + p] = (l - top).exp() / total;
                }
            }
        }
        out
    }
}

/// How scores were accumulated before: one buffer for the whole volume, windows one at a time.
fn whole_volume_reference(
    job: &SlidingWindows,
    channels: &[Vec<f32>],
    run: impl Fn(Vec<f32>, usize) -> Vec<f32>,
) -> (Vec<u8>, Vec<Vec<f32>>) {
    let (geometry, classes, [pr, pc]) = (job.geometry, job.classes, job.patch);
    let [rows, cols] = geometry.slice_shape();
    let canvases = Canvases::new(channels, geometry, job.patch);
    let ([cr, cc], [or, oc]) = (canvases.shape, canvases.offset);
    let weights = gaussian_weights(job.patch);
    let starts_r = window_starts(cr, pr, job.settings.step_fraction);
    let starts_c = window_starts(cc, pc, job.settings.step_fraction);
    let mut scores = vec![0.0f32; geometry.count() * classes * cr * cc];
    let mut norm = vec![0.0f32; cr * cc];
    for slice in 0..geometry.count() {
        for &row in &starts_r {
            for &col in &starts_c {
                let mut input = Vec::new();
                let w = Window { slice, row, col };
                canvases.push_window(geometry, job.context, &w, &mut input);
                let probs = run(input, 1);
                for k in 0..classes {
                    for i in 0..pr {
                        for j in 0..pc {
                            let at = ((slice * classes + k) * cr + row + i) * cc + col + j;
                            scores[at] += probs[(k * pr + i) * pc + j] * weights[i * pc + j];
                            if slice == 0 && k == 0 {
                                norm[(row + i) * cc + col + j] += weights[i * pc + j];
                            }
                        }
                    }
                }
            }
        }
    }
    let voxels: usize = geometry.shape.iter().product();
    let (mut labels, mut probs) = (vec![0u8; voxels], vec![vec![0.0f32; voxels]; classes]);
    for s in 0..geometry.count() {
        let mut slice_labels = vec![0u8; rows * cols];
        let mut slice_probs = vec![vec![0.0f32; rows * cols]; classes];
        for r in 0..rows {
            for c in 0..cols {
                let p = (r + or) * cc + c + oc;
                let v: Vec<f32> = (0..classes)
                    .map(|k| scores[(s * classes + k) * cr * cc + p] / norm[p])
                    .collect();
                for k in 0..classes {
                    slice_probs[k][r * cols + c] = v[k];
                }
                // First of the largest, as the prediction breaks ties.
                let best = (0..classes).fold(0, |b, k| if v[k] > v[b] { k } else { b });
                slice_labels[r * cols + c] = best as u8;
            }
        }
        geometry.insert(&mut labels, s, &slice_labels);
        for (volume, sp) in probs.iter_mut().zip(&slice_probs) {
            geometry.insert(volume, s, sp);
        }
    }
    (labels, probs)
}

#[test]
fn slice_by_slice_scores_match_a_whole_volume_buffer() {
    let mut random = uniform(-2.0, 2.0, 0x2545_f491_4f6c_dd1du64);
    // (shape, slice axis, image channels, context, classes, patch): several windows per
    // slice, one window per slice (slice smaller than the patch), 2.5D input, many classes.
    let cases = [
        ([23, 45, 7], 2, 1, 0, 3, [16, 16]),
        ([9, 40, 33], 0, 2, 1, 4, [16, 32]),
        ([10, 12, 5], 2, 1, 2, 2, [16, 16]),
        ([20, 6, 18], 1, 1, 0, 40, [16, 16]),
    ];
    for (shape, slice_axis, n_ch, context, classes, patch) in cases {
        let voxels: usize = shape.iter().product();
        let channels: Vec<Vec<f32>> = (0..n_ch)
            .map(|_| (0..voxels).map(|_| random()).collect())
            .collect();
        let geometry = SliceGeometry { shape, slice_axis };
        let run = fake_network(n_ch * (2 * context + 1), classes);
        let settings = WindowSettings::default();
        let job = SlidingWindows {
            geometry: &geometry,
            patch,
            classes,
            context,
            settings: &settings,
            nnunet: false,
        };
        let (want_labels, want_probs) = whole_volume_reference(&job, &channels, &run);
        // The labels are not all one class, or the comparison would prove little.
        assert!(
            want_labels.iter().any(|&l| l != want_labels[0]),
            "{shape:?}"
        );
        for batch_windows in [1, 3, 10, 16, 1000] {
            let settings = WindowSettings {
                batch_windows,
                ..WindowSettings::default()
            };
            let job = SlidingWindows {
                settings: &settings,
                ..job
            };
            let kept = job.resolve(&channels, shape, true, &run);
            let what = format!("{shape:?} axis {slice_axis}, {batch_windows} windows a batch");
            assert_eq!(kept.labels, want_labels, "{what}");
            assert_eq!(kept.probabilities.unwrap(), want_probs, "{what}");
            let labels_only = job.resolve(&channels, shape, false, &run);
            assert_eq!(labels_only.labels, want_labels, "{what}");
            assert!(labels_only.probabilities.is_none());
        }
    }
}

#[test]
fn slice_by_slice_resampling_matches_resampling_the_whole_volume() {
    let mut random = uniform(-2.0, 2.0, 0x9e37_79b9_7f4a_7c15u64);
    // (network shape, slice axis, shape to resample to, classes): up and down, every axis.
    let cases = [
        ([23, 45, 7], 2, [40, 30, 7], 3),
        ([9, 20, 33], 0, [9, 31, 17], 4),
        ([20, 6, 18], 1, [13, 6, 25], 12),
    ];
    for (shape, slice_axis, out_shape, classes) in cases {
        let voxels: usize = shape.iter().product();
        let channels = vec![(0..voxels).map(|_| random()).collect::<Vec<f32>>()];
        let geometry = SliceGeometry { shape, slice_axis };
        let run = fake_network(1, classes);
        let settings = WindowSettings {
            batch_windows: 3,
            ..WindowSettings::default()
        };
        let job = SlidingWindows {
            geometry: &geometry,
            patch: [16, 16],
            classes,
            context: 0,
            settings: &settings,
            nnunet: false,
        };
        // What predict did before: whole-volume probabilities, resampled, then the argmax.
        let probs = job.resolve(&channels, shape, true, &run).probabilities;
        let resampled: Vec<Vec<f32>> = probs
            .unwrap()
            .iter()
            .map(|class| segmenter_io::resample_linear(class, shape, out_shape))
            .collect();
        let n: usize = out_shape.iter().product();
        let want: Vec<u8> = (0..n)
            .map(|v| {
                (0..classes).fold(0, |b, k| {
                    if resampled[k][v] > resampled[b][v] {
                        k
                    } else {
                        b
                    }
                }) as u8
            })
            .collect();
        assert!(want.iter().any(|&l| l != want[0]), "{shape:?}");
        let what = format!("{shape:?} axis {slice_axis} -> {out_shape:?}");
        let got = job.resolve(&channels, out_shape, false, &run);
        assert_eq!(got.labels, want, "{what}");
        // Kept probabilities are the whole-volume resampling's, bit for bit.
        let kept = job.resolve(&channels, out_shape, true, &run);
        assert_eq!(kept.labels, want, "{what}");
        assert_eq!(kept.probabilities.unwrap(), resampled, "{what}");
    }
}

#[test]
fn batches_shrink_only_when_their_probabilities_would_be_large() {
    // Hippocampus: 3 classes at 64 x 64, 49 KB a window.
    assert_eq!(windows_per_batch(16, 3, [64, 64]), 16);
    // TotalSegmentator's 118 classes: 7.7 MB a window at 128 x 128, 31 MB at 256 x 256.
    assert_eq!(windows_per_batch(16, 118, [128, 128]), 8);
    assert_eq!(windows_per_batch(16, 118, [256, 256]), 2);
    assert_eq!(windows_per_batch(16, 118, [1024, 1024]), 1);
    assert_eq!(windows_per_batch(0, 3, [64, 64]), 1);
}

#[test]
fn gaussian_peaks_in_the_centre() {
    let w = gaussian_weights([64, 64]);
    assert!(w[31 * 64 + 31] > 0.99, "centre {}", w[31 * 64 + 31]);
    // Corners are tiny but positive, so every pixel keeps a defined weighted average.
    assert!(w[0] < 0.01 && w[0] > 0.0, "corner {}", w[0]);
}
