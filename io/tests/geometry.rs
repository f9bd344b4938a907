//! Geometry: reorientation to the canonical (closest-to-RAS+) layout and back, and resampling between grids.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use segmenter_io::{
    read_nifti, resample_cubic, resample_labels, resample_linear, resampled_affine,
    shape_for_spacing, Orientation,
};

type Affine = [[f64; 4]; 4];

const PERMS: [[usize; 3]; 6] = [
    [0, 1, 2],
    [0, 2, 1],
    [1, 0, 2],
    [1, 2, 0],
    [2, 0, 1],
    [2, 1, 0],
];

fn world(a: &Affine, idx: [usize; 3]) -> [f64; 3] {
    std::array::from_fn(|r| (0..3).map(|c| a[r][c] * idx[c] as f64).sum::<f64>() + a[r][3])
}

fn world_f(a: &Affine, idx: [f64; 3]) -> [f64; 3] {
    std::array::from_fn(|r| (0..3).map(|c| a[r][c] * idx[c]).sum::<f64>() + a[r][3])
}

fn unravel(i: usize, shape: [usize; 3]) -> [usize; 3] {
    [
        i % shape[0],
        (i / shape[0]) % shape[1],
        i / (shape[0] * shape[1]),
    ]
}

fn ravel(idx: [usize; 3], shape: [usize; 3]) -> usize {
    idx[0] + shape[0] * (idx[1] + shape[1] * idx[2])
}

fn matmul3(a: &[[f64; 3]; 3], b: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    std::array::from_fn(|r| std::array::from_fn(|c| (0..3).map(|k| a[r][k] * b[k][c]).sum()))
}

/// A rotation by `angle` radians about a random unit axis (Rodrigues).
fn random_rotation(rng: &mut StdRng, max_angle_deg: f64) -> [[f64; 3]; 3] {
    let mut k = [0.0f64; 3];
    while k.iter().map(|v| v * v).sum::<f64>() < 1e-3 {
        k = std::array::from_fn(|_| rng.random_range(-1.0..1.0));
    }
    let n = k.iter().map(|v| v * v).sum::<f64>().sqrt();
    let k = k.map(|v| v / n);
    let angle = rng.random_range(-max_angle_deg..max_angle_deg).to_radians();
    let (s, c) = angle.sin_cos();
    let kx = [[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]];
    let kx2 = matmul3(&kx, &kx);
    std::array::from_fn(|r| {
        std::array::from_fn(|col| {
            let id = if r == col { 1.0 } else { 0.0 };
            id + s * kx[r][col] + (1.0 - c) * kx2[r][col]
        })
    })
}

/// An affine whose world axis j is driven by voxel axis perm[j] (negated when flip[j]), then rotated.
fn affine_for(
    perm: [usize; 3],
    flip: [bool; 3],
    spacing: [f64; 3],
    rotation: &[[f64; 3]; 3],
    translation: [f64; 3],
) -> Affine {
    let mut d = [[0.0; 3]; 3];
    for j in 0..3 {
        d[j][perm[j]] = if flip[j] { -1.0 } else { 1.0 } * spacing[perm[j]];
    }
    let m = matmul3(rotation, &d);
    let mut a = [[0.0; 4]; 4];
    for r in 0..3 {
        a[r][..3].copy_from_slice(&m[r]);
        a[r][3] = translation[r];
    }
    a[3] = [0.0, 0.0, 0.0, 1.0];
    a
}

/// Direction part positive on the diagonal and dominated by it (rows: world axis, columns: voxel axis).
fn assert_positive_diagonal(a: &Affine, max_off_ratio: f64, what: &str) {
    for c in 0..3 {
        assert!(a[c][c] > 0.0, "{what}: diagonal {c} not positive: {a:?}");
        for r in (0..3).filter(|&r| r != c) {
            assert!(
                a[r][c].abs() <= max_off_ratio * a[c][c],
                "{what}: off-diagonal [{r}][{c}] too large: {a:?}"
            );
        }
    }
}

#[test]
fn every_permutation_and_flip_round_trips_and_keeps_voxels_in_place() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut cases = 0;
    for perm in PERMS {
        for bits in 0..8u32 {
            let flip = [bits & 1 != 0, bits & 2 != 0, bits & 4 != 0];
            for oblique in [false, true] {
                // Distinct axis lengths, so a swapped shape cannot go unnoticed.
                let mut shape = [0usize; 3];
                while shape[0] == shape[1] || shape[1] == shape[2] || shape[0] == shape[2] {
                    shape = std::array::from_fn(|_| rng.random_range(2..10));
                }
                let spacing: [f64; 3] = std::array::from_fn(|_| rng.random_range(0.3..4.0));
                let translation: [f64; 3] =
                    std::array::from_fn(|_| rng.random_range(-200.0..200.0));
                let rotation = if oblique {
                    random_rotation(&mut rng, 15.0)
                } else {
                    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
                };
                let affine = affine_for(perm, flip, spacing, &rotation, translation);
                let what = format!("perm {perm:?} flip {flip:?} oblique {oblique}");

                let o = Orientation::from_affine(&affine);
                assert_eq!(o, Orientation { perm, flip }, "{what}");
                assert_eq!(o.is_identity(), perm == [0, 1, 2] && bits == 0, "{what}");
                let cshape = o.canonical_shape(shape);
                assert_eq!(cshape, perm.map(|p| shape[p]), "{what}");
                assert_eq!(
                    o.canonical_spacing(spacing),
                    perm.map(|p| spacing[p]),
                    "{what}"
                );

                // Random data: the round trip is exact.
                let n: usize = shape.iter().product();
                let data: Vec<f32> = (0..n).map(|_| rng.random_range(-1e3f32..1e3)).collect();
                let canon = o.to_canonical(&data, shape);
                assert_eq!(canon.len(), n);
                assert_ne!(canon, vec![0.0; n]);
                assert_eq!(o.from_canonical(&canon, shape), data, "{what}");

                // Canonical affine: axes now run toward R, A, S; spacing follows the permutation.
                let ca = o.canonical_affine(&affine, shape);
                assert_positive_diagonal(&ca, if oblique { 0.6 } else { 1e-12 }, &what);
                assert_eq!(ca[3], [0.0, 0.0, 0.0, 1.0]);
                assert_eq!(
                    Orientation::from_affine(&ca),
                    Orientation::identity(),
                    "{what}"
                );

                // Unique values show where each source voxel went, independently of the implementation's
                // index arithmetic; every voxel must sit at the same world position in both arrays.
                let ids: Vec<u32> = (0..n as u32).collect();
                let moved = o.to_canonical(&ids, shape);
                let mut pos = vec![usize::MAX; n];
                for (c, &id) in moved.iter().enumerate() {
                    pos[id as usize] = c;
                }
                assert!(
                    pos.iter().all(|&p| p != usize::MAX),
                    "{what}: not a bijection"
                );
                for (s, &c) in pos.iter().enumerate() {
                    let ws = world(&affine, unravel(s, shape));
                    let wc = world(&ca, unravel(c, cshape));
                    for k in 0..3 {
                        assert!(
                            (ws[k] - wc[k]).abs() < 1e-6,
                            "{what}: voxel {:?} at {ws:?} in the source but {wc:?} after",
                            unravel(s, shape)
                        );
                    }
                }
                // from_canonical with the inverse orientation is the same permutation read backwards.
                assert_eq!(o.inverse().inverse(), o);
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 96);
}

#[test]
fn hand_checked_flip_and_swap() {
    // LPS (what DICOM-derived files often are): x toward Left, y toward Posterior.
    let lps = [
        [-2.0, 0.0, 0.0, 10.0],
        [0.0, -3.0, 0.0, 20.0],
        [0.0, 0.0, 4.0, 30.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let o = Orientation::from_affine(&lps);
    assert_eq!(o.perm, [0, 1, 2]);
    assert_eq!(o.flip, [true, true, false]);
    assert_eq!(o.source_codes(), ['L', 'P', 'S']);
    let shape = [3, 2, 1];
    let data: Vec<u8> = (0..6).collect();
    // x reversed within each row, and the two rows swapped.
    assert_eq!(o.to_canonical(&data, shape), vec![5, 4, 3, 2, 1, 0]);
    let ca = o.canonical_affine(&lps, shape);
    assert_eq!(
        ca,
        [
            [2.0, 0.0, 0.0, 10.0 - 2.0 * 2.0],
            [0.0, 3.0, 0.0, 20.0 - 3.0],
            [0.0, 0.0, 4.0, 30.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    );

    // Voxel x runs toward S, y toward R, z toward A.
    let swap = [
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let o = Orientation::from_affine(&swap);
    assert_eq!(o.perm, [1, 2, 0]);
    assert_eq!(o.flip, [false; 3]);
    assert_eq!(o.source_codes(), ['S', 'R', 'A']);
    let shape = [2, 3, 1];
    // Source (x, y): value 10 * x + y. Canonical axis 0 is source y, axis 2 is source x.
    let data: Vec<u8> = (0..6).map(|i| 10 * (i % 2) + i / 2).collect();
    assert_eq!(o.canonical_shape(shape), [3, 1, 2]);
    assert_eq!(o.to_canonical(&data, shape), vec![0, 1, 2, 10, 11, 12]);
    assert_eq!(o.canonical_affine(&swap, shape)[..3], lps_identity()[..3]);
}

fn lps_identity() -> Affine {
    [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
}

#[test]
fn odd_affines_still_give_a_permutation() {
    let mut rng = StdRng::seed_from_u64(11);
    let mut mats: Vec<Affine> = vec![
        [[0.0; 4]; 4],
        [[f64::NAN; 4]; 4],
        // Rank one: every voxel axis points the same way.
        [
            [1.0, 1.0, 1.0, 0.0],
            [0.0; 4],
            [0.0; 4],
            [0.0, 0.0, 0.0, 1.0],
        ],
        // Exactly 45 degrees in the xy plane: a tie, broken deterministically.
        [
            [1.0, -1.0, 0.0, 0.0],
            [1.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ],
    ];
    for _ in 0..200 {
        let mut a = [[0.0; 4]; 4];
        for row in a.iter_mut().take(3) {
            for v in row.iter_mut() {
                *v = rng.random_range(-5.0..5.0);
            }
        }
        mats.push(a);
    }
    for a in &mats {
        let o = Orientation::from_affine(a);
        let mut seen = o.perm;
        seen.sort();
        assert_eq!(seen, [0, 1, 2], "{a:?} gave {o:?}");
        let data: Vec<u16> = (0..60).collect();
        assert_eq!(
            o.from_canonical(&o.to_canonical(&data, [3, 4, 5]), [3, 4, 5]),
            data
        );
    }
}

#[test]
fn sheared_affine_uses_the_nearest_rotation() {
    // Voxel y leans strongly toward R, but x already is R: y must still be A, not fight x for R.
    let a = [
        [1.0, 0.9, 0.0, 0.0],
        [0.0, 0.5, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let o = Orientation::from_affine(&a);
    assert_eq!(o, Orientation::identity());
}

#[test]
fn real_lps_file_reorients_and_round_trips() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/totalseg-example/example_mr_sm.nii.gz");
    if !path.is_file() {
        eprintln!("skipping: {} not present", path.display());
        return;
    }
    let vol = read_nifti(&path).expect("read example");
    let affine = vol.header.affine();
    let o = Orientation::from_affine(&affine);
    eprintln!(
        "{}: shape {:?}, axes {:?}, orientation {o:?}",
        path.display(),
        vol.shape,
        o.source_codes()
    );
    assert!(!o.is_identity());
    let ca = o.canonical_affine(&affine, vol.shape);
    assert_positive_diagonal(&ca, 0.5, "example_mr_sm");
    let canon = o.to_canonical(&vol.data, vol.shape);
    assert_eq!(
        o.canonical_shape(vol.shape).iter().product::<usize>(),
        canon.len()
    );
    let back = o.from_canonical(&canon, vol.shape);
    // Bitwise, so NaN (if any) compares equal to itself.
    assert!(back
        .iter()
        .zip(&vol.data)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    // The corners of the volume sit at the same world points before and after.
    let cshape = o.canonical_shape(vol.shape);
    for corner in 0..8 {
        let s: [usize; 3] = std::array::from_fn(|k| {
            if corner >> k & 1 == 1 {
                vol.shape[k] - 1
            } else {
                0
            }
        });
        let v = vol.data[ravel(s, vol.shape)];
        let ws = world(&affine, s);
        // Find where that corner went: it is a corner of the canonical array with the same world point.
        let found = (0..8).any(|cc| {
            let c: [usize; 3] =
                std::array::from_fn(|k| if cc >> k & 1 == 1 { cshape[k] - 1 } else { 0 });
            let wc = world(&ca, c);
            (0..3).all(|k| (wc[k] - ws[k]).abs() < 1e-4)
                && canon[ravel(c, cshape)].to_bits() == v.to_bits()
        });
        assert!(found, "corner {s:?} at {ws:?} lost");
    }
}

/// A smooth, never-zero test field: a sum of low-frequency sines (wavelengths of 12 voxels and more).
fn smooth_field(shape: [usize; 3], seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let waves: Vec<([f64; 3], f64, f64)> = (0..4)
        .map(|_| {
            let k: [f64; 3] = std::array::from_fn(|a| {
                let cycles = rng.random_range(0.2..(shape[a] as f64 / 12.0).max(0.3));
                2.0 * std::f64::consts::PI * cycles / shape[a] as f64
            });
            (k, rng.random_range(0.0..6.3), rng.random_range(0.5..2.0))
        })
        .collect();
    let n: usize = shape.iter().product();
    (0..n)
        .map(|i| {
            let p = unravel(i, shape);
            let v: f64 = waves
                .iter()
                .map(|(k, ph, amp)| {
                    amp * (k[0] * p[0] as f64 + k[1] * p[1] as f64 + k[2] * p[2] as f64 + ph).sin()
                })
                .sum();
            (v + 10.0) as f32
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn range(a: &[f32]) -> f32 {
    let lo = a.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    hi - lo
}

/// Largest |a - b| over voxels at least `margin` voxels from every border.
fn max_abs_diff_interior(a: &[f32], b: &[f32], shape: [usize; 3], margin: usize) -> f32 {
    (0..a.len())
        .filter(|&i| {
            let p = unravel(i, shape);
            (0..3).all(|k| p[k] >= margin && p[k] + margin < shape[k])
        })
        .map(|i| (a[i] - b[i]).abs())
        .fold(0.0, f32::max)
}

#[test]
fn up_then_down_on_a_smooth_field_has_small_error() {
    let shape = [40, 36, 24];
    let field = smooth_field(shape, 5);
    let r = range(&field);
    assert!(r > 1.0);
    // Bounds, as fractions of the field's range: the whole volume includes the border voxels, where edge
    // replication (not extrapolation) costs a first-order error; the interior is 2 voxels in.
    // Factor 2, and an uneven factor whose samples never line up with the source grid.
    for up in [[80, 72, 48], [57, 50, 31]] {
        let lin = resample_linear(&resample_linear(&field, shape, up), up, shape);
        let cub = resample_cubic(&resample_cubic(&field, shape, up), up, shape);
        let (el, ec) = (
            max_abs_diff(&lin, &field) / r,
            max_abs_diff(&cub, &field) / r,
        );
        let (il, ic) = (
            max_abs_diff_interior(&lin, &field, shape, 2) / r,
            max_abs_diff_interior(&cub, &field, shape, 2) / r,
        );
        eprintln!(
            "{shape:?} -> {up:?} -> back: linear {el:.5} (interior {il:.5}), cubic {ec:.5} (interior {ic:.5}) of the range"
        );
        assert!(el < 0.05, "linear round trip error {el} of range");
        assert!(ec < 0.05, "cubic round trip error {ec} of range");
        assert!(il < 0.03, "linear interior round trip error {il} of range");
        assert!(ic < 0.002, "cubic interior round trip error {ic} of range");
        assert!(
            ic < il,
            "cubic ({ic}) should beat linear ({il}) on a smooth field"
        );
    }
    // Down then up loses detail (no anti-aliasing, first-order border error): within 15 % of the range
    // overall, and two voxels in 8 % (linear) and 3 % (cubic), on a field whose shortest wavelength
    // is 12 voxels.
    let down = [20, 18, 12];
    let lin = resample_linear(&resample_linear(&field, shape, down), down, shape);
    let cub = resample_cubic(&resample_cubic(&field, shape, down), down, shape);
    let (el, ec) = (
        max_abs_diff(&lin, &field) / r,
        max_abs_diff(&cub, &field) / r,
    );
    eprintln!("{shape:?} -> {down:?} -> back: linear {el:.5}, cubic {ec:.5} of the range");
    let (il, ic) = (
        max_abs_diff_interior(&lin, &field, shape, 2) / r,
        max_abs_diff_interior(&cub, &field, shape, 2) / r,
    );
    eprintln!("  interior: linear {il:.5}, cubic {ic:.5}");
    assert!(el < 0.15 && ec < 0.15, "down-up error {el}, {ec} of range");
    assert!(
        il < 0.08 && ic < 0.03,
        "down-up interior error {il}, {ic} of range"
    );
}

#[test]
fn same_shape_is_the_identity() {
    let shape = [7, 5, 3];
    let mut rng = StdRng::seed_from_u64(8);
    let data: Vec<f32> = (0..105).map(|_| rng.random_range(-5.0f32..5.0)).collect();
    assert_eq!(resample_linear(&data, shape, shape), data);
    assert_eq!(resample_cubic(&data, shape, shape), data);
    let labels: Vec<u8> = (0..105).map(|_| rng.random_range(0..4)).collect();
    assert_eq!(resample_labels(&labels, shape, shape), labels);
    // Only one axis changes: the others are untouched (a 1-voxel axis stays 1).
    let out = resample_linear(&data, shape, [14, 5, 3]);
    assert_eq!(out.len(), 14 * 15);
}

#[test]
fn linear_and_cubic_reproduce_a_ramp_where_the_affine_says() {
    // f(world) linear in world coordinates: away from the clamped borders, both interpolators are exact,
    // and the value at a new voxel must be f at that voxel's centre in resampled_affine.
    let shape = [12, 10, 8];
    let new_shape = [29, 7, 13];
    let affine = [
        [0.8, 0.0, 0.0, -30.0],
        [0.0, 1.2, 0.0, 12.0],
        [0.0, 0.0, 2.5, 5.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let f = |w: [f64; 3]| 0.3 * w[0] - 0.7 * w[1] + 0.2 * w[2] + 1.0;
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| f(world(&affine, unravel(i, shape))) as f32)
        .collect();
    let na = resampled_affine(&affine, shape, new_shape);
    for (name, out) in [
        ("linear", resample_linear(&data, shape, new_shape)),
        ("cubic", resample_cubic(&data, shape, new_shape)),
    ] {
        let mut checked = 0;
        for (i, &v) in out.iter().enumerate() {
            let p = unravel(i, new_shape);
            // Source coordinate of this sample: interior only (cubic needs one more voxel of margin).
            let src: [f64; 3] = std::array::from_fn(|k| {
                (p[k] as f64 + 0.5) * shape[k] as f64 / new_shape[k] as f64 - 0.5
            });
            if (0..3).all(|k| src[k] >= 1.0 && src[k] <= shape[k] as f64 - 2.0) {
                let expect = f(world(&na, p));
                assert!(
                    (f64::from(v) - expect).abs() < 1e-4,
                    "{name} at {p:?}: {v} vs {expect}"
                );
                checked += 1;
            }
        }
        assert!(checked > 100, "{name}: only {checked} interior samples");
    }
    // Both grids cover the same box: their outer corners (voxel -0.5) coincide.
    for corner in 0..8 {
        let c: [f64; 3] = std::array::from_fn(|k| if corner >> k & 1 == 1 { 1.0 } else { 0.0 });
        let old = world_f(
            &affine,
            std::array::from_fn(|k| c[k] * shape[k] as f64 - 0.5),
        );
        let new = world_f(
            &na,
            std::array::from_fn(|k| c[k] * new_shape[k] as f64 - 0.5),
        );
        for k in 0..3 {
            assert!(
                (old[k] - new[k]).abs() < 1e-9,
                "corner {corner}: {old:?} vs {new:?}"
            );
        }
    }
}

/// Blocky label map: random labels from `set` on blocks of `block` voxels.
fn blocky_labels(shape: [usize; 3], block: usize, set: &[u8], seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let bshape = shape.map(|s| s.div_ceil(block));
    let blocks: Vec<u8> = (0..bshape.iter().product::<usize>())
        .map(|_| set[rng.random_range(0..set.len())])
        .collect();
    (0..shape.iter().product::<usize>())
        .map(|i| blocks[ravel(unravel(i, shape).map(|v| v / block), bshape)])
        .collect()
}

#[test]
fn labels_keep_their_values_and_survive_a_round_trip() {
    let set = [0u8, 3, 7, 200];
    let shape = [30, 28, 20];
    let labels = blocky_labels(shape, 6, &set, 21);
    assert!(set.iter().all(|l| labels.contains(l)));
    // Up-and-back trips must recover 95 % of voxels; shrinking first (30 -> 23) moves block edges by up to
    // half a coarse voxel, so there the bound is 85 %.
    for (other, bound) in [
        ([45, 40, 26], 0.95),
        ([60, 56, 40], 0.95),
        ([23, 19, 15], 0.85),
    ] {
        let there = resample_labels(&labels, shape, other);
        assert!(there.iter().all(|l| set.contains(l)), "invented a class");
        let back = resample_labels(&there, other, shape);
        assert!(back.iter().all(|l| set.contains(l)), "invented a class");
        let agree = back.iter().zip(&labels).filter(|(a, b)| a == b).count();
        let frac = agree as f64 / labels.len() as f64;
        eprintln!(
            "labels {shape:?} -> {other:?} -> back: {:.2} % agree",
            100.0 * frac
        );
        assert!(
            frac >= bound,
            "only {frac} of voxels recovered via {other:?}"
        );
    }
}

#[test]
fn labels_match_argmax_of_resampled_one_hot_masks() {
    let set = [1u8, 2, 5, 9];
    let shape = [17, 13, 9];
    let labels = blocky_labels(shape, 2, &set, 4);
    for new_shape in [[31, 20, 5], [8, 26, 13]] {
        let got = resample_labels(&labels, shape, new_shape);
        let probs: Vec<Vec<f32>> = set
            .iter()
            .map(|&l| {
                let mask: Vec<f32> = labels
                    .iter()
                    .map(|&v| f32::from(u8::from(v == l)))
                    .collect();
                resample_linear(&mask, shape, new_shape)
            })
            .collect();
        let mut differ = 0;
        for (i, &g) in got.iter().enumerate() {
            let mut best = 0;
            for k in 1..set.len() {
                if probs[k][i] > probs[best][i] {
                    best = k;
                }
            }
            if g != set[best] {
                // Only a near-tie may differ (the two computations round differently).
                let gk = set.iter().position(|&l| l == g).expect("known label");
                assert!(
                    (probs[gk][i] - probs[best][i]).abs() < 1e-5,
                    "voxel {i}: got {g}, one-hot argmax {}",
                    set[best]
                );
                differ += 1;
            }
        }
        assert!(differ * 100 < got.len(), "{differ} near-ties");
    }
}

#[test]
fn shape_for_spacing_by_hand() {
    assert_eq!(
        shape_for_spacing([512, 512, 100], [0.7, 0.7, 5.0], [1.0, 1.0, 2.5]),
        [358, 358, 200]
    );
    // 2.5 rounds away from zero; tiny results stay at least 1.
    assert_eq!(
        shape_for_spacing([5, 3, 3], [1.0, 1.0, 1.0], [2.0, 10.0, 1.0]),
        [3, 1, 3]
    );
    // A missing (zero, NaN) target or spacing keeps the axis.
    assert_eq!(
        shape_for_spacing([10, 20, 30], [1.0, 0.0, 2.0], [f64::NAN, 1.0, 0.0]),
        [10, 20, 30]
    );
}

/// Timing on a large volume: `cargo test --release -p segmenter-io --test geometry -- --ignored --nocapture`.
#[test]
#[ignore]
fn large_volume_timing() {
    use std::time::Instant;
    let shape = [512, 512, 300];
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|i| (i % 977) as f32).collect();
    let labels: Vec<u8> = (0..n).map(|i| ((i / 4096) % 7) as u8).collect();
    let lps = [
        [-0.7, 0.0, 0.0, 0.0],
        [0.0, -0.7, 0.0, 0.0],
        [0.0, 0.0, 1.5, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let o = Orientation::from_affine(&lps);
    let t = Instant::now();
    let c = o.to_canonical(&data, shape);
    eprintln!("to_canonical {:?}: {:.2?}", shape, t.elapsed());
    let target = shape_for_spacing(shape, [0.7, 0.7, 1.5], [1.0, 1.0, 1.0]);
    let t = Instant::now();
    let r = resample_linear(&c, shape, target);
    eprintln!("linear -> {target:?}: {:.2?}", t.elapsed());
    let t = Instant::now();
    let _ = resample_cubic(&r, target, shape);
    eprintln!("cubic back -> {shape:?}: {:.2?}", t.elapsed());
    let t = Instant::now();
    let _ = resample_labels(&labels, shape, target);
    eprintln!("labels -> {target:?}: {:.2?}", t.elapsed());
}

/// `resample_bspline3`, clipped to the input's range, against scikit-image's own
/// `resize(order=3, mode="edge", anti_aliasing=False)` (fixtures/resize/make_reference.py), which
/// is how nnU-Net resamples images: up, down, both, and across a step where the spline overshoots.
#[test]
fn the_bspline_resize_matches_scikit_image() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/resize/reference.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let shape3 = |v: &serde_json::Value| -> [usize; 3] {
        std::array::from_fn(|i| v[i].as_u64().unwrap() as usize)
    };
    let floats = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let cases = json["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let (shape, new_shape) = (shape3(&case["shape"]), shape3(&case["new_shape"]));
        let input: Vec<f32> = floats(&case["input"]).iter().map(|&v| v as f32).collect();
        let want = floats(&case["output"]);
        let (lo, hi) = input
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        let got = segmenter_io::resample_bspline3(&input, shape, new_shape);
        assert_eq!(got.len(), want.len());
        let mut clipped = 0;
        for (g, w) in got.iter().zip(&want) {
            let g = g.clamp(lo, hi);
            clipped += usize::from(g == lo || g == hi);
            assert!(
                (g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "{shape:?} -> {new_shape:?}: {g} against scikit-image's {w}"
            );
        }
        // The fixture's border step makes the spline overshoot, so the clip is exercised.
        assert!(
            clipped > 0,
            "{shape:?} -> {new_shape:?}: nothing was clipped"
        );
    }
    // Resampling to the same shape returns the input bit for bit.
    let v: Vec<f32> = (0..60).map(|i| (i as f32 * 0.37).sin()).collect();
    assert_eq!(segmenter_io::resample_bspline3(&v, [5, 4, 3], [5, 4, 3]), v);
}
