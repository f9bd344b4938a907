//! Tests of `sampler3d.rs`: reproducible batches, foreground sampling, padding, and each
//! augmentation checked voxel by voxel on numbered volumes.

use super::*;
use crate::preprocess::SliceGeometry;

/// A volume whose channel 0 holds `flat + 1` at each voxel, channel 1 `-(flat + 1)` and the
/// label `1 + flat % 5`, so every value names the voxel it came from and 0 means padding.
fn numbered(shape: [usize; 3], slice_axis: usize) -> TrainVolume {
    let n = shape.iter().product::<usize>();
    TrainVolume::new(
        format!("numbered{slice_axis}"),
        vec![
            (0..n).map(|i| (i + 1) as f32).collect(),
            (0..n).map(|i| -((i + 1) as f32)).collect(),
        ],
        (0..n).map(|i| 1 + (i % 5) as u8).collect(),
        SliceGeometry { shape, slice_axis },
    )
}

/// The NIfTI flat index of patch voxel `[i, j, k]` of a patch starting at `start` (depth, rows,
/// cols), written out per slice axis independently of `in_plane_axes`; `None` outside.
fn source_index(
    shape: [usize; 3],
    slice_axis: usize,
    start: [isize; 3],
    [i, j, k]: [usize; 3],
) -> Option<usize> {
    let (d, r, c) = (
        start[0] + i as isize,
        start[1] + j as isize,
        start[2] + k as isize,
    );
    let (x, y, z) = match slice_axis {
        0 => (d, r, c),
        1 => (r, d, c),
        _ => (r, c, d),
    };
    let ok = |v: isize, n: usize| v >= 0 && (v as usize) < n;
    (ok(x, shape[0]) && ok(y, shape[1]) && ok(z, shape[2]))
        .then(|| x as usize + shape[0] * (y as usize + shape[1] * z as usize))
}

/// Checks a sample (channels of [`numbered`], label) against `source_index` for `start`.
fn assert_plain_copy(
    volume: &TrainVolume,
    patch: [usize; 3],
    start: [isize; 3],
    image: &[f32],
    label: &[u8],
) {
    let [pd, pr, pc] = patch;
    let n = pd * pr * pc;
    let g = volume.geometry;
    for i in 0..pd {
        for j in 0..pr {
            for k in 0..pc {
                let v = (i * pr + j) * pc + k;
                let (want_image, want_label) =
                    match source_index(g.shape, g.slice_axis, start, [i, j, k]) {
                        Some(f) => ((f + 1) as f32, 1 + (f % 5) as u8),
                        None => (0.0, 0),
                    };
                assert_eq!(image[v], want_image, "channel 0 at {:?}", [i, j, k]);
                assert_eq!(image[n + v], -want_image, "channel 1 at {:?}", [i, j, k]);
                assert_eq!(label[v], want_label, "label at {:?}", [i, j, k]);
            }
        }
    }
}

/// The patch start encoded by channel 0's value at patch voxel `at`, which must lie inside.
fn start_from(
    volume: &TrainVolume,
    image: &[f32],
    patch: [usize; 3],
    at: [usize; 3],
) -> [isize; 3] {
    let v = (at[0] * patch[1] + at[1]) * patch[2] + at[2];
    let flat = image[v] as usize - 1;
    let view = View::of(volume);
    let p = view.position(flat);
    std::array::from_fn(|a| p[a] as isize - at[a] as isize)
}

fn every_augmentation(anisotropic: bool) -> Augmentation3d {
    Augmentation3d {
        p_rotation: 1.0,
        p_scaling: 1.0,
        p_noise: 1.0,
        p_blur: 1.0,
        p_blur_per_channel: 1.0,
        p_brightness: 1.0,
        p_contrast: 1.0,
        p_low_res: 1.0,
        p_low_res_per_channel: 1.0,
        p_gamma_inverted: 1.0,
        p_gamma: 1.0,
        anisotropic,
        ..Augmentation3d::default()
    }
}

#[test]
fn batches_are_reproducible_from_seed_and_step() {
    let volumes = vec![numbered([12, 10, 9], 2), numbered([9, 14, 11], 0)];
    for augmentation in [Augmentation3d::default(), every_augmentation(false)] {
        let sampler = Sampler3d::new(&volumes, [6, 8, 4], 0.5, augmentation, 7).unwrap();
        let (a, b) = (sampler.batch(3, 4), sampler.batch(3, 4));
        assert_eq!(a.images.len(), 4 * 2 * 6 * 8 * 4);
        assert_eq!(a.labels.len(), 4 * 6 * 8 * 4);
        assert_eq!(a.images, b.images);
        assert_eq!(a.labels, b.labels);
        assert_ne!(sampler.batch(4, 4).images, a.images);
        let other_seed = Sampler3d { seed: 8, ..sampler };
        assert_ne!(other_seed.batch(3, 4).images, a.images);
    }
}

#[test]
fn foreground_patches_are_centred_on_a_small_blob_random_ones_miss_it() {
    let shape = [40, 36, 32];
    let n = shape.iter().product::<usize>();
    let mut label = vec![0u8; n];
    // A 2x2x2 blob near a corner, but far enough in that the clamped patch stays centred on it.
    for z in 25..27 {
        for y in 29..31 {
            for x in 33..35 {
                label[x + shape[0] * (y + shape[1] * z)] = 2;
            }
        }
    }
    let volumes = vec![TrainVolume::new(
        "blob".into(),
        vec![vec![0.5; n]],
        label,
        SliceGeometry {
            shape,
            slice_axis: 1,
        },
    )];
    let patch = [8, 8, 8];
    let sampler = Sampler3d::new(&volumes, patch, 0.5, Augmentation3d::none(), 3).unwrap();
    // Labelled voxels within one voxel of the patch centre (4, 4, 4), i.e. in 3..=5 per axis.
    let near_centre = |labels: &[u8]| {
        (3..=5).any(|i| (3..=5).any(|j| (3..=5).any(|k| labels[(i * 8 + j) * 8 + k] != 0)))
    };
    let mut random_hits = 0;
    for step in 0..10 {
        let batch = sampler.batch(step, 4);
        assert_eq!(batch.foreground_centred, 2);
        let patches: Vec<&[u8]> = batch.labels.chunks(512).collect();
        assert!(
            near_centre(patches[0]) && near_centre(patches[1]),
            "step {step}"
        );
        random_hits += patches[2..]
            .iter()
            .filter(|p| p.iter().any(|&l| l != 0))
            .count();
    }
    assert!(
        random_hits <= 4,
        "random patches hit the blob {random_hits} times in 20"
    );
}

#[test]
fn unaugmented_patches_are_the_source_voxels_in_depth_rows_cols_order() {
    // Non-cubic, so a wrong axis order reads the wrong voxels or runs out of the volume.
    let shape = [5, 7, 9];
    let patch = [3, 4, 2];
    for slice_axis in 0..3 {
        let volumes = vec![numbered(shape, slice_axis)];
        let sampler = Sampler3d::new(&volumes, patch, 0.5, Augmentation3d::none(), 11).unwrap();
        let n = 3 * 4 * 2;
        let batch = sampler.batch(0, 6);
        let mut starts = Vec::new();
        for s in 0..6 {
            let image = &batch.images[s * 2 * n..(s + 1) * 2 * n];
            let label = &batch.labels[s * n..(s + 1) * n];
            let start = start_from(&volumes[0], image, patch, [0, 0, 0]);
            assert_plain_copy(&volumes[0], patch, start, image, label);
            // Depth plane i is a crop of the 2D sampler's slice start + i, rows and cols alike.
            let g = volumes[0].geometry;
            let cols = g.slice_shape()[1];
            for i in 0..patch[0] {
                let slice = g.extract(&volumes[0].channels[0], start[0] as usize + i);
                for j in 0..patch[1] {
                    for k in 0..patch[2] {
                        let (r, c) = (start[1] as usize + j, start[2] as usize + k);
                        assert_eq!(image[(i * 4 + j) * 2 + k], slice[r * cols + c]);
                    }
                }
            }
            starts.push(start);
        }
        starts.dedup();
        assert!(starts.len() > 1, "every patch at one place: {starts:?}");
    }
}

#[test]
fn volumes_smaller_than_the_patch_are_padded_with_zeros() {
    let patch = [8, 8, 8];
    let n = 512;
    // Smaller along every axis (3 slices, 5 rows, 6 cols): centred, padded all round.
    let volumes = vec![numbered([5, 6, 3], 2)];
    for augmentation in [Augmentation3d::none(), every_augmentation(false)] {
        let sampler = Sampler3d::new(&volumes, patch, 0.5, augmentation, 1).unwrap();
        let batch = sampler.batch(0, 2);
        assert_eq!(batch.images.len(), 2 * 2 * n);
        assert!(batch.images.iter().all(|v| v.is_finite()));
    }
    let sampler = Sampler3d::new(&volumes, patch, 0.5, Augmentation3d::none(), 1).unwrap();
    let batch = sampler.batch(0, 2);
    for s in 0..2 {
        let (image, label) = (
            &batch.images[s * 2 * n..],
            &batch.labels[s * n..(s + 1) * n],
        );
        // Depth 3 in 8: 2 slices before; rows 5 in 8: 1 before; cols 6 in 8: 1 before.
        assert_plain_copy(&volumes[0], patch, [-2, -1, -1], image, label);
        assert_eq!(label.iter().filter(|&&l| l != 0).count(), 5 * 6 * 3);
    }
    // Thin along depth only (3 slices of an 8-slice patch), wide in-plane.
    let volumes = vec![numbered([20, 3, 16], 1)];
    let sampler = Sampler3d::new(&volumes, patch, 0.5, Augmentation3d::none(), 2).unwrap();
    let batch = sampler.batch(5, 4);
    for s in 0..4 {
        let (image, label) = (
            &batch.images[s * 2 * n..],
            &batch.labels[s * n..(s + 1) * n],
        );
        let start = start_from(&volumes[0], image, patch, [2, 0, 0]);
        assert_eq!(start[0], -2);
        assert_plain_copy(&volumes[0], patch, start, image, label);
    }
}

#[test]
fn mirroring_one_axis_flips_the_unaugmented_patch_about_its_centre() {
    let volumes = vec![numbered([9, 10, 11], 1)];
    let [pd, pr, pc] = [4, 6, 5];
    let n = pd * pr * pc;
    let plain = Sampler3d::new(&volumes, [pd, pr, pc], 0.5, Augmentation3d::none(), 4).unwrap();
    for axis in 0..3 {
        let mut augmentation = Augmentation3d::none();
        augmentation.p_mirror[axis] = 1.0;
        let mirrored = Sampler3d {
            augmentation,
            ..Sampler3d::new(&volumes, [pd, pr, pc], 0.5, Augmentation3d::none(), 4).unwrap()
        };
        for step in 0..3 {
            let (a, b) = (plain.batch(step, 2), mirrored.batch(step, 2));
            // Images, not labels: the label pattern repeats along some axes, the image never.
            assert_ne!(a.images, b.images);
            let at = |[i, j, k]: [usize; 3]| (i * pr + j) * pc + k;
            for s in 0..2 {
                for p in (0..n).map(|v| [v / (pr * pc), v / pc % pr, v % pc]) {
                    let mut from = p;
                    from[axis] = [pd, pr, pc][axis] - 1 - p[axis];
                    let (v, w) = (at(p), at(from));
                    assert_eq!(b.labels[s * n + v], a.labels[s * n + w], "axis {axis}");
                    for c in 0..2 {
                        let o = (2 * s + c) * n;
                        assert_eq!(b.images[o + v], a.images[o + w], "axis {axis}");
                    }
                }
            }
        }
    }
}

#[test]
fn a_quarter_turn_about_depth_transposes_and_flips_each_plane() {
    let mut volume = numbered([12, 12, 12], 2);
    // Labels distinct over the patch below (its flat indices span fewer than 251 values).
    for (i, l) in volume.label.iter_mut().enumerate() {
        *l = (i % 251) as u8;
    }
    let volumes = vec![volume];
    let patch = [2, 4, 4];
    let sampler = Sampler3d::new(&volumes, patch, 0.0, Augmentation3d::none(), 0).unwrap();
    let start = [3, 5, 4];
    let (plain_image, plain) = sampler.cut(
        &volumes[0],
        start,
        &PatchTransform::from_angles([0.0; 3], [1.0; 3], [false; 3]),
    );
    let quarter = PatchTransform::from_angles(
        [std::f64::consts::FRAC_PI_2, 0.0, 0.0],
        [1.0; 3],
        [false; 3],
    );
    assert!(
        quarter.mirror_only().is_none(),
        "must go through resampling"
    );
    let (image, label) = sampler.cut(&volumes[0], start, &quarter);
    // Distinct labels, so a wrong mapping cannot match by accident.
    let mut distinct = plain.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 32, "{plain:?}");
    // The map sends in-plane offset (row, col) to source offset (-col, row): patch voxel
    // (i, j, k) reads what the plain patch holds at (i, 3 - k, j).
    for i in 0..2 {
        for j in 0..4 {
            for k in 0..4 {
                let (v, w) = ((i * 4 + j) * 4 + k, (i * 4 + (3 - k)) * 4 + j);
                assert_eq!(label[v], plain[w], "{:?}", [i, j, k]);
                assert!((image[v] - plain_image[w]).abs() < 1e-3);
            }
        }
    }
    // A half turn is mirroring rows and cols.
    let half = PatchTransform::from_angles([std::f64::consts::PI, 0.0, 0.0], [1.0; 3], [false; 3]);
    let flipped = PatchTransform::from_angles([0.0; 3], [1.0; 3], [false, true, true]);
    assert_eq!(
        sampler.cut(&volumes[0], start, &half).1,
        sampler.cut(&volumes[0], start, &flipped).1
    );
    // A rotation about rows mixes depth and cols; the label patch then is not the plain one.
    let about_rows = PatchTransform::from_angles([0.0, 0.4, 0.0], [1.0; 3], [false; 3]);
    assert_ne!(sampler.cut(&volumes[0], start, &about_rows).1, plain);
}

#[test]
fn random_augmentation_keeps_labels_in_the_source_set_and_images_finite() {
    let mut blob = numbered([14, 12, 10], 2);
    // Labels 0, 1 and 7 only.
    for (i, l) in blob.label.iter_mut().enumerate() {
        *l = [0, 0, 1, 7][i / 37 % 4];
    }
    let empty = TrainVolume::new(
        "empty".into(),
        vec![vec![0.3; 6 * 5 * 7]; 2],
        vec![0; 6 * 5 * 7],
        SliceGeometry {
            shape: [6, 5, 7],
            slice_axis: 0,
        },
    );
    let mut tiny = numbered([1, 2, 1], 1);
    tiny.label = vec![0, 3];
    let volumes = vec![blob, empty, tiny];
    for anisotropic in [false, true] {
        let sampler =
            Sampler3d::new(&volumes, [6, 8, 8], 0.5, every_augmentation(anisotropic), 9).unwrap();
        let mut seen_seven = false;
        for step in 0..6 {
            let batch = sampler.batch(step, 6);
            assert_eq!(batch.images.len(), 6 * 2 * 384);
            // Any blend of 1, 3 and 7 (2, 4, 5, 6) would show linear interpolation.
            assert!(batch.labels.iter().all(|l| [0, 1, 3, 7].contains(l)));
            assert!(batch.images.iter().all(|v| v.is_finite()));
            seen_seven |= batch.labels.contains(&7);
        }
        assert!(seen_seven, "no foreground reached the patches");
    }
    let sampler = Sampler3d::new(&volumes, [6, 8, 8], 0.5, Augmentation3d::default(), 9).unwrap();
    assert!(sampler.samples_per_second(2, 0.0) > 0.0);
}
