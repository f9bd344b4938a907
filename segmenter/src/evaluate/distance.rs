//! Exact surface distances between label maps: surface voxels, an anisotropic Euclidean distance
//! transform, the 95th-percentile Hausdorff distance (HD95) and the normalised surface distance (NSD).
//!
//! Volumes are flat, x fastest (`index = x + nx·(y + ny·z)`), spacing in mm as `[x, y, z]`.

use rayon::prelude::*;

/// Squared Euclidean distance transform, in place and exact (Felzenszwalb & Huttenlocher, "Distance
/// Transforms of Sampled Functions", 2012): `dist` holds 0 on feature voxels and `f64::INFINITY`
/// elsewhere on entry, and the squared distance in mm² to the nearest feature voxel on return
/// (`INFINITY` everywhere if there is no feature voxel).
///
/// The squared distance is separable, so one lower-envelope-of-parabolas pass per axis (O(n) per
/// line, parabolas scaled by that axis's spacing) gives the exact result.
pub fn edt_squared_in_place(dist: &mut [f64], shape: [usize; 3], spacing: [f64; 3]) {
    let [nx, ny, nz] = shape;
    assert_eq!(dist.len(), nx * ny * nz, "buffer does not match shape");
    if dist.is_empty() {
        return;
    }
    // Axis x: lines are contiguous.
    dist.par_chunks_mut(nx)
        .for_each_init(|| Scratch::new(nx), |s, line| s.line(line, spacing[0]));
    // Axis y: lines stay inside one z slab, with stride nx.
    dist.par_chunks_mut(nx * ny).for_each_init(
        || Scratch::new(ny),
        |s, slab| {
            for x in 0..nx {
                s.f.clear();
                s.f.extend((0..ny).map(|y| slab[x + y * nx]));
                s.envelope(spacing[1]);
                for (y, &v) in s.out.iter().enumerate() {
                    slab[x + y * nx] = v;
                }
            }
        },
    );
    // Axis z: a line crosses every slab. Handing each task the rows (nx voxels) of one y across all
    // slabs keeps the borrows disjoint without unsafe code, and the rows of a task stay in cache.
    let mut groups: Vec<Vec<&mut [f64]>> = (0..ny).map(|_| Vec::with_capacity(nz)).collect();
    for (r, row) in dist.chunks_mut(nx).enumerate() {
        groups[r % ny].push(row);
    }
    groups.par_iter_mut().for_each_init(
        || Scratch::new(nz),
        |s, rows| {
            for x in 0..nx {
                s.f.clear();
                s.f.extend(rows.iter().map(|row| row[x]));
                s.envelope(spacing[2]);
                for (row, &v) in rows.iter_mut().zip(&s.out) {
                    row[x] = v;
                }
            }
        },
    );
}

/// Squared Euclidean distance (mm²) from every voxel to the nearest voxel where `feature` is true.
pub fn edt_squared(feature: &[bool], shape: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
    let mut dist: Vec<f64> = feature
        .iter()
        .map(|&f| if f { 0.0 } else { f64::INFINITY })
        .collect();
    edt_squared_in_place(&mut dist, shape, spacing);
    dist
}

/// Per-thread buffers of the 1D transform, reused across lines to avoid allocating per line.
struct Scratch {
    /// Input samples of the line.
    f: Vec<f64>,
    /// Output: lower envelope sampled at every position.
    out: Vec<f64>,
    /// Indices of the parabolas forming the envelope.
    v: Vec<usize>,
    /// Boundaries between consecutive envelope parabolas (mm).
    z: Vec<f64>,
}

impl Scratch {
    fn new(n: usize) -> Self {
        Scratch {
            f: Vec::with_capacity(n),
            out: Vec::with_capacity(n),
            v: Vec::with_capacity(n),
            z: Vec::with_capacity(n + 1),
        }
    }

    /// Transforms one contiguous line in place.
    fn line(&mut self, line: &mut [f64], step: f64) {
        self.f.clear();
        self.f.extend_from_slice(line);
        self.envelope(step);
        line.copy_from_slice(&self.out);
    }

    /// `out[p] = min_q f[q] + (step·(p − q))²`, with infinite samples left out of the envelope (they
    /// can never be the minimum, and their intersections would be NaN).
    fn envelope(&mut self, step: f64) {
        let n = self.f.len();
        let (f, v, z) = (&self.f, &mut self.v, &mut self.z);
        v.clear();
        z.clear();
        self.out.clear();
        let Some(first) = f.iter().position(|x| x.is_finite()) else {
            self.out.resize(n, f64::INFINITY);
            return;
        };
        v.push(first);
        z.push(f64::NEG_INFINITY);
        for q in first + 1..n {
            if !f[q].is_finite() {
                continue;
            }
            let xq = step * q as f64;
            loop {
                let p = *v.last().expect("envelope is never empty");
                let xp = step * p as f64;
                // Where the parabola of q starts being lower than the one of p.
                let s = ((f[q] + xq * xq) - (f[p] + xp * xp)) / (2.0 * (xq - xp));
                if s <= *z.last().expect("one boundary per parabola") {
                    v.pop();
                    z.pop();
                    if v.is_empty() {
                        v.push(q);
                        z.push(f64::NEG_INFINITY);
                        break;
                    }
                } else {
                    v.push(q);
                    z.push(s);
                    break;
                }
            }
        }
        let mut k = 0;
        for q in 0..n {
            let xq = step * q as f64;
            while k + 1 < v.len() && z[k + 1] < xq {
                k += 1;
            }
            let d = step * (q as f64 - v[k] as f64);
            self.out.push(f[v[k]] + d * d);
        }
    }
}

/// The `q`-th percentile (0–100) with linear interpolation between closest ranks — numpy's default
/// (`method="linear"`, Hyndman & Fan type 7): rank `h = q/100·(n − 1)`, value
/// `v[⌊h⌋] + (h − ⌊h⌋)·(v[⌊h⌋+1] − v[⌊h⌋])` of the sorted values. NaN for an empty set.
/// Reorders `values` (selection, O(n), instead of a full sort).
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    let h = (q / 100.0).clamp(0.0, 1.0) * (n - 1) as f64;
    let lo = h.floor() as usize;
    let (_, &mut below, above) = values.select_nth_unstable_by(lo, f64::total_cmp);
    if lo + 1 >= n {
        return below;
    }
    let next = above.iter().copied().fold(f64::INFINITY, f64::min);
    below + (h - lo as f64) * (next - below)
}

/// Surface-distance metrics of one class in one case.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SurfaceMetrics {
    /// 95th-percentile Hausdorff distance (mm): the larger of the two directed 95th percentiles
    /// ([`percentile`]'s convention). NaN when either mask is empty (no distance is defined).
    pub hd95_mm: f64,
    /// Normalised surface distance at `tolerance_mm`: surface voxels of either mask within the
    /// tolerance (≤) of the other's surface, over all surface voxels of both. NaN when both masks are
    /// empty, 0 when exactly one is.
    pub nsd: f64,
    /// The tolerance NSD was computed at (mm).
    pub tolerance_mm: f64,
    /// Surface voxels of the prediction.
    pub pred_surface: usize,
    /// Surface voxels of the reference.
    pub ref_surface: usize,
}

/// Inclusive bounding box `[lo, hi]` of one label, in voxels.
type Bbox = ([usize; 3], [usize; 3]);

/// Bounding boxes of every label value present in `a` or `b`, in one parallel pass over the volume
/// (one pass for all classes, rather than one per class, matters with a hundred organ classes).
fn bounding_boxes(a: &[u8], b: &[u8], shape: [usize; 3]) -> Vec<Option<Bbox>> {
    let [nx, ny, _] = shape;
    let merge = |mut acc: Vec<Option<Bbox>>, other: Vec<Option<Bbox>>| {
        for (x, y) in acc.iter_mut().zip(other) {
            *x = match (*x, y) {
                (Some((l1, h1)), Some((l2, h2))) => Some((
                    std::array::from_fn(|i| l1[i].min(l2[i])),
                    std::array::from_fn(|i| h1[i].max(h2[i])),
                )),
                (p, q) => p.or(q),
            };
        }
        acc
    };
    a.par_chunks(nx * ny)
        .zip(b.par_chunks(nx * ny))
        .enumerate()
        .fold(
            || vec![None; 256],
            |mut acc, (z, (sa, sb))| {
                for (r, (ra, rb)) in sa.chunks(nx).zip(sb.chunks(nx)).enumerate() {
                    for (x, (&la, &lb)) in ra.iter().zip(rb).enumerate() {
                        for l in [la, lb] {
                            let p = [x, r, z];
                            let e: &mut Option<Bbox> = &mut acc[l as usize];
                            *e = Some(match *e {
                                None => (p, p),
                                Some((lo, hi)) => (
                                    std::array::from_fn(|i| lo[i].min(p[i])),
                                    std::array::from_fn(|i| hi[i].max(p[i])),
                                ),
                            });
                        }
                    }
                }
                acc
            },
        )
        .reduce(|| vec![None; 256], merge)
}

/// Marks, inside `bbox`, the surface voxels of `class` in `labels`: voxels of the class with a
/// 6-neighbour of another label or on the border of the whole volume (not of the box). Returns the
/// box-local indices (x fastest within the box) of the surface voxels.
fn surface_in_box(labels: &[u8], shape: [usize; 3], class: u8, bbox: Bbox) -> Vec<usize> {
    let [nx, ny, nz] = shape;
    let (lo, hi) = bbox;
    let b: [usize; 3] = std::array::from_fn(|i| hi[i] - lo[i] + 1);
    (0..b[2])
        .into_par_iter()
        .flat_map_iter(|bz| {
            let z = lo[2] + bz;
            let mut found = Vec::new();
            for by in 0..b[1] {
                let y = lo[1] + by;
                for bx in 0..b[0] {
                    let x = lo[0] + bx;
                    let i = x + nx * (y + ny * z);
                    if labels[i] != class {
                        continue;
                    }
                    let border =
                        x == 0 || y == 0 || z == 0 || x + 1 == nx || y + 1 == ny || z + 1 == nz;
                    if border
                        || labels[i - 1] != class
                        || labels[i + 1] != class
                        || labels[i - nx] != class
                        || labels[i + nx] != class
                        || labels[i - nx * ny] != class
                        || labels[i + nx * ny] != class
                    {
                        found.push(bx + b[0] * (by + b[1] * bz));
                    }
                }
            }
            found
        })
        .collect()
}

/// Distances (mm) from each voxel in `from` to the nearest voxel of `to` (box-local indices), via one
/// distance transform over the box, reusing `dist` as its buffer.
fn directed(
    dist: &mut [f64],
    b: [usize; 3],
    spacing: [f64; 3],
    to: &[usize],
    from: &[usize],
) -> Vec<f64> {
    dist.fill(f64::INFINITY);
    for &i in to {
        dist[i] = 0.0;
    }
    edt_squared_in_place(dist, b, spacing);
    from.iter().map(|&i| dist[i].sqrt()).collect()
}

/// HD95 and NSD of each class in `classes` between `pred` and `reference` (same shape, x fastest).
///
/// Each class is computed on the bounding box of the union of both masks: every surface voxel and
/// every nearest surface voxel lies inside it, so cropping changes no distance, and the volume
/// border still counts as surface because surfaces are found on the full volume. Classes run in
/// parallel; memory is one f64 per voxel of each box being worked on.
pub fn surface_metrics(
    pred: &[u8],
    reference: &[u8],
    shape: [usize; 3],
    spacing: [f64; 3],
    classes: &[u8],
    tolerance_mm: impl Fn(u8) -> f64 + Sync,
) -> Vec<SurfaceMetrics> {
    assert_eq!(
        pred.len(),
        shape.iter().product::<usize>(),
        "prediction does not match shape"
    );
    assert_eq!(
        reference.len(),
        pred.len(),
        "reference does not match prediction"
    );
    let boxes = bounding_boxes(pred, reference, shape);
    classes
        .par_iter()
        .map(|&k| {
            let tolerance = tolerance_mm(k);
            let Some(bbox) = boxes[k as usize] else {
                return SurfaceMetrics {
                    hd95_mm: f64::NAN,
                    nsd: f64::NAN,
                    tolerance_mm: tolerance,
                    pred_surface: 0,
                    ref_surface: 0,
                };
            };
            let ps = surface_in_box(pred, shape, k, bbox);
            let rs = surface_in_box(reference, shape, k, bbox);
            let (hd95_mm, nsd) = if ps.is_empty() || rs.is_empty() {
                (f64::NAN, 0.0)
            } else {
                let b: [usize; 3] = std::array::from_fn(|i| bbox.1[i] - bbox.0[i] + 1);
                let mut dist = vec![0.0; b.iter().product()];
                let mut p_to_r = directed(&mut dist, b, spacing, &rs, &ps);
                let mut r_to_p = directed(&mut dist, b, spacing, &ps, &rs);
                drop(dist);
                let within = |d: &[f64]| d.iter().filter(|&&d| d <= tolerance).count();
                let nsd = (within(&p_to_r) + within(&r_to_p)) as f64 / (ps.len() + rs.len()) as f64;
                let hd = percentile(&mut p_to_r, 95.0).max(percentile(&mut r_to_p, 95.0));
                (hd, nsd)
            };
            SurfaceMetrics {
                hd95_mm,
                nsd,
                tolerance_mm: tolerance,
                pred_surface: ps.len(),
                ref_surface: rs.len(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    const SPACING: [f64; 3] = [0.7, 1.3, 2.5];

    fn coords(i: usize, shape: [usize; 3]) -> [usize; 3] {
        [
            i % shape[0],
            (i / shape[0]) % shape[1],
            i / (shape[0] * shape[1]),
        ]
    }

    /// Distance in mm, summed in x, y, z order like the transform so ties compare equal.
    fn mm(a: [usize; 3], b: [usize; 3], spacing: [f64; 3]) -> f64 {
        let mut d2 = 0.0;
        for i in 0..3 {
            let d = spacing[i] * (a[i] as f64 - b[i] as f64);
            d2 += d * d;
        }
        d2.sqrt()
    }

    #[test]
    fn edt_matches_brute_force_with_anisotropic_spacing() {
        let shape = [9, 11, 6];
        for seed in 0..6 {
            let mut rng = SmallRng::seed_from_u64(seed);
            let density = [0.02, 0.1, 0.5][seed as usize % 3];
            let n: usize = shape.iter().product();
            let feature: Vec<bool> = (0..n).map(|_| rng.random_bool(density)).collect();
            let got = edt_squared(&feature, shape, SPACING);
            let points: Vec<usize> = (0..n).filter(|&i| feature[i]).collect();
            for (i, &got) in got.iter().enumerate() {
                let want = points
                    .iter()
                    .map(|&j| mm(coords(i, shape), coords(j, shape), SPACING).powi(2))
                    .fold(f64::INFINITY, f64::min);
                assert!(
                    (got - want).abs() < 1e-9,
                    "seed {seed} voxel {i}: {got} vs {want}"
                );
            }
        }
        // No feature at all: infinite everywhere.
        assert!(edt_squared(&[false; 8], [2, 2, 2], SPACING)
            .iter()
            .all(|d| d.is_infinite()));
    }

    #[test]
    fn percentile_is_numpy_linear() {
        // numpy.percentile([1, 2, 3, 4, 10], 95) = 4 + 0.8 * 6 = 8.8
        assert!((percentile(&mut [10.0, 2.0, 4.0, 1.0, 3.0], 95.0) - 8.8).abs() < 1e-12);
        assert_eq!(percentile(&mut [5.0], 95.0), 5.0);
        assert_eq!(percentile(&mut [3.0, 1.0], 100.0), 3.0);
        assert!(percentile(&mut [], 95.0).is_nan());
    }

    /// Surface voxels by the definition, on the full volume.
    fn brute_surface(labels: &[u8], shape: [usize; 3], k: u8) -> Vec<[usize; 3]> {
        let at = |p: [isize; 3]| -> Option<u8> {
            (0..3)
                .all(|i| p[i] >= 0 && (p[i] as usize) < shape[i])
                .then(|| {
                    labels[p[0] as usize + shape[0] * (p[1] as usize + shape[1] * p[2] as usize)]
                })
        };
        let mut out = Vec::new();
        for (i, &l) in labels.iter().enumerate() {
            let c = coords(i, shape);
            if l != k {
                continue;
            }
            let p = c.map(|v| v as isize);
            let steps = [
                [1, 0, 0],
                [-1, 0, 0],
                [0, 1, 0],
                [0, -1, 0],
                [0, 0, 1],
                [0, 0, -1],
            ];
            if steps
                .iter()
                .any(|s| at([p[0] + s[0], p[1] + s[1], p[2] + s[2]]) != Some(k))
            {
                out.push(c);
            }
        }
        out
    }

    /// HD95 and NSD by the definition: all pairs of surface voxels, sorted percentile.
    fn brute_metrics(
        pred: &[u8],
        reference: &[u8],
        shape: [usize; 3],
        k: u8,
        tol: f64,
    ) -> (f64, f64) {
        let (ps, rs) = (
            brute_surface(pred, shape, k),
            brute_surface(reference, shape, k),
        );
        if ps.is_empty() && rs.is_empty() {
            return (f64::NAN, f64::NAN);
        }
        if ps.is_empty() || rs.is_empty() {
            return (f64::NAN, 0.0);
        }
        let directed = |a: &[[usize; 3]], b: &[[usize; 3]]| -> Vec<f64> {
            a.iter()
                .map(|&p| {
                    b.iter()
                        .map(|&q| mm(p, q, SPACING))
                        .fold(f64::INFINITY, f64::min)
                })
                .collect()
        };
        let (mut d1, mut d2) = (directed(&ps, &rs), directed(&rs, &ps));
        let p95 = |d: &mut Vec<f64>| {
            d.sort_by(f64::total_cmp);
            let h = 0.95 * (d.len() - 1) as f64;
            let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
            d[lo] + (h - lo as f64) * (d[hi] - d[lo])
        };
        let within = d1.iter().chain(&d2).filter(|&&d| d <= tol).count();
        let nsd = within as f64 / (d1.len() + d2.len()) as f64;
        (p95(&mut d1).max(p95(&mut d2)), nsd)
    }

    /// Blobs: a few random ellipsoids per class (radii up to `rmax` voxels, so large ones reach the
    /// volume border), plus sprinkled noise voxels.
    fn random_labels(rng: &mut SmallRng, shape: [usize; 3], classes: u8, rmax: f64) -> Vec<u8> {
        let n: usize = shape.iter().product();
        let mut labels = vec![0u8; n];
        for k in 1..classes {
            for _ in 0..rng.random_range(0..3) {
                let c: [f64; 3] = std::array::from_fn(|i| rng.random_range(0.0..shape[i] as f64));
                let r: [f64; 3] = std::array::from_fn(|_| rng.random_range(0.8..rmax));
                for (i, l) in labels.iter_mut().enumerate() {
                    let p = coords(i, shape);
                    let q: f64 = (0..3).map(|a| ((p[a] as f64 - c[a]) / r[a]).powi(2)).sum();
                    if q <= 1.0 {
                        *l = k;
                    }
                }
            }
        }
        for _ in 0..rng.random_range(0..6) {
            let i = rng.random_range(0..n);
            labels[i] = rng.random_range(0..classes);
        }
        labels
    }

    #[test]
    fn hd95_and_nsd_match_brute_force_on_random_shapes() {
        let shape = [10, 12, 7];
        let tolerances = [0.5, 1.0, 1.3, 2.5, 4.0];
        let mut checked = 0;
        for seed in 0..12 {
            let mut rng = SmallRng::seed_from_u64(100 + seed);
            let rmax = if seed % 2 == 0 { 4.0 } else { 9.0 };
            let pred = random_labels(&mut rng, shape, 4, rmax);
            let reference = random_labels(&mut rng, shape, 4, rmax);
            for t in 0..tolerances.len() {
                // A different tolerance per class, so every class meets every tolerance.
                let tol_of = |k: u8| tolerances[(t + k as usize) % tolerances.len()];
                let got = surface_metrics(&pred, &reference, shape, SPACING, &[1, 2, 3], tol_of);
                for (g, k) in got.iter().zip(1u8..) {
                    let (hd, nsd) = brute_metrics(&pred, &reference, shape, k, tol_of(k));
                    assert_eq!(g.tolerance_mm, tol_of(k));
                    let same = |a: f64, b: f64| (a.is_nan() && b.is_nan()) || (a - b).abs() < 1e-9;
                    assert!(
                        same(g.hd95_mm, hd),
                        "seed {seed} class {k}: HD95 {} vs {hd}",
                        g.hd95_mm
                    );
                    assert!(
                        same(g.nsd, nsd),
                        "seed {seed} class {k} tol {}: NSD {} vs {nsd}",
                        tol_of(k),
                        g.nsd
                    );
                    if hd.is_finite() {
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 50, "too few non-trivial comparisons: {checked}");
    }

    #[test]
    fn empty_mask_conventions() {
        let shape = [4, 4, 4];
        let n = 64;
        let mut some = vec![0u8; n];
        some[21] = 1;
        let none = vec![0u8; n];
        let m = |p: &[u8], r: &[u8]| surface_metrics(p, r, shape, SPACING, &[1], |_| 1.0)[0];
        // Both empty: undefined, left out of means.
        let both = m(&none, &none);
        assert!(both.hd95_mm.is_nan() && both.nsd.is_nan());
        // One empty: NSD 0 (nothing matched), HD95 undefined (NaN, reported as null).
        for one in [m(&some, &none), m(&none, &some)] {
            assert!(one.hd95_mm.is_nan());
            assert_eq!(one.nsd, 0.0);
        }
        // Identical: distance 0, every surface voxel within tolerance.
        let same = m(&some, &some);
        assert_eq!((same.hd95_mm, same.nsd), (0.0, 1.0));
        // One voxel apart along z (2.5 mm): NSD 1 at 2.5 mm, 0 at 1 mm.
        let mut moved = vec![0u8; n];
        moved[21 + 16] = 1;
        let far = m(&moved, &some);
        assert_eq!((far.hd95_mm, far.nsd), (2.5, 0.0));
        let near = surface_metrics(&moved, &some, shape, SPACING, &[1], |_| 2.5)[0];
        assert_eq!(near.nsd, 1.0);
    }

    #[test]
    fn volume_border_counts_as_surface() {
        // A mask filling the whole 4×5×3 volume: only the 2×3×1 interior voxels are not surface.
        let full = vec![1u8; 60];
        let m = surface_metrics(&full, &full, [4, 5, 3], SPACING, &[1], |_| 1.0)[0];
        assert_eq!((m.pred_surface, m.ref_surface), (54, 54));
    }

    /// Timing on a 512×512×300 pair of blobby masks (not a test: run with
    /// `cargo test --release -p segmenter --lib distance::tests::timing -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn timing_512x512x300() {
        let shape = [512, 512, 300];
        let n: usize = shape.iter().product();
        let blob = |c: [f64; 3], r: [f64; 3], wobble: f64| -> Vec<u8> {
            (0..n)
                .into_par_iter()
                .map(|i| {
                    let p = coords(i, shape).map(|v| v as f64);
                    let q: f64 = (0..3).map(|a| ((p[a] - c[a]) / r[a]).powi(2)).sum();
                    let w = 1.0
                        + wobble
                            * ((p[0] * 0.05).sin() * (p[1] * 0.07).cos() + (p[2] * 0.11).sin());
                    u8::from(q <= w) + u8::from(q <= 0.3 * w)
                })
                .collect()
        };
        let reference = blob([256.0, 256.0, 150.0], [200.0, 180.0, 120.0], 0.05);
        let pred = blob([250.0, 260.0, 148.0], [195.0, 185.0, 125.0], 0.08);
        let start = std::time::Instant::now();
        let m = surface_metrics(&pred, &reference, shape, [0.8, 0.8, 1.5], &[1, 2], |_| 1.0);
        let secs = start.elapsed().as_secs_f64();
        println!(
            "512x512x300, 2 classes, {} threads: {secs:.2} s  {m:?}",
            rayon::current_num_threads()
        );
    }
}
