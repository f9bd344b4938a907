//! Geometry of voxel grids: reorienting volumes to one canonical axis order (and back), and resampling
//! them between grids of different shape covering the same physical extent.
//!
//! Every array here is x-fastest (index `x + nx * (y + ny * z)`), as read from NIfTI.

use rayon::prelude::*;

/// An axis permutation and flips that maps a volume to the canonical orientation: the one closest to RAS+,
/// where canonical voxel axis j increases toward Right, Anterior, Superior for j = 0, 1, 2 (nibabel's
/// `as_closest_canonical`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Orientation {
    /// Canonical axis j takes source axis `perm[j]`.
    pub perm: [usize; 3],
    /// Per canonical axis: whether the source axis runs the opposite way (toward L, P or I).
    pub flip: [bool; 3],
}

impl Default for Orientation {
    fn default() -> Self {
        Self::identity()
    }
}

impl Orientation {
    /// The orientation of an array that is already canonical: no permutation, no flips.
    pub fn identity() -> Orientation {
        Orientation {
            perm: [0, 1, 2],
            flip: [false; 3],
        }
    }

    /// The nearest permutation and flips for the 3x3 direction part of a voxel-to-world affine.
    ///
    /// Columns are normalised (spacing does not matter) and, when the matrix is invertible, replaced by the
    /// nearest orthogonal matrix (polar decomposition, as nibabel's `io_orientation` does with an SVD) so that
    /// shear does not bias the choice. Then the largest remaining |entry| is taken repeatedly, each time
    /// removing its row and column, so every world axis gets exactly one voxel axis even for oblique scans.
    /// A degenerate (zero) column is left to whichever world axis remains, unflipped.
    pub fn from_affine(affine: &[[f64; 4]; 4]) -> Orientation {
        let mut m = [[0.0f64; 3]; 3];
        for col in 0..3 {
            let norm = (0..3).map(|r| affine[r][col].powi(2)).sum::<f64>().sqrt();
            if norm.is_finite() && norm > 0.0 {
                for r in 0..3 {
                    m[r][col] = affine[r][col] / norm;
                }
            }
        }
        if let Some(q) = nearest_orthogonal(&m) {
            m = q;
        }
        let mut perm = [usize::MAX; 3];
        let mut flip = [false; 3];
        let mut row_used = [false; 3];
        let mut col_used = [false; 3];
        for _ in 0..3 {
            // An all-zero (or NaN) remainder still assigns the first free pair, so the result is a permutation.
            let mut best: Option<(usize, usize, f64)> = None;
            for r in (0..3).filter(|&r| !row_used[r]) {
                for c in (0..3).filter(|&c| !col_used[c]) {
                    let v = m[r][c].abs();
                    let v = if v.is_finite() { v } else { 0.0 };
                    if best.is_none_or(|(_, _, b)| v > b) {
                        best = Some((r, c, v));
                    }
                }
            }
            let (r, c, _) = best.expect("three rows and columns remain free for three rounds");
            row_used[r] = true;
            col_used[c] = true;
            perm[r] = c;
            flip[r] = m[r][c] < 0.0;
        }
        Orientation { perm, flip }
    }

    /// True when reorienting would leave the array unchanged.
    pub fn is_identity(&self) -> bool {
        *self == Self::identity()
    }

    /// The orientation that undoes this one: it maps the canonical array back to the source layout.
    pub fn inverse(&self) -> Orientation {
        let mut perm = [0; 3];
        let mut flip = [false; 3];
        for j in 0..3 {
            perm[self.perm[j]] = j;
            flip[self.perm[j]] = self.flip[j];
        }
        Orientation { perm, flip }
    }

    /// The anatomical direction each source voxel axis increases toward, e.g. `['L', 'P', 'S']` for LPS
    /// (for plain-words reports of what the reader found).
    pub fn source_codes(&self) -> [char; 3] {
        const POS: [char; 3] = ['R', 'A', 'S'];
        const NEG: [char; 3] = ['L', 'P', 'I'];
        let mut codes = ['?'; 3];
        for j in 0..3 {
            codes[self.perm[j]] = if self.flip[j] { NEG[j] } else { POS[j] };
        }
        codes
    }

    /// Shape of the reoriented array, given the source shape.
    pub fn canonical_shape(&self, shape: [usize; 3]) -> [usize; 3] {
        self.perm.map(|p| shape[p])
    }

    /// Voxel spacing of the reoriented array, given the source spacing.
    pub fn canonical_spacing(&self, spacing: [f64; 3]) -> [f64; 3] {
        self.perm.map(|p| spacing[p])
    }

    /// Reorients an x-fastest array of the given source shape into the canonical layout (x-fastest too).
    pub fn to_canonical<T: Copy + Send + Sync>(&self, data: &[T], shape: [usize; 3]) -> Vec<T> {
        permute_flip(self, data, shape)
    }

    /// Exact inverse of [`Orientation::to_canonical`]; `shape` is the ORIGINAL (source) shape.
    pub fn from_canonical<T: Copy + Send + Sync>(&self, data: &[T], shape: [usize; 3]) -> Vec<T> {
        permute_flip(&self.inverse(), data, self.canonical_shape(shape))
    }

    /// Affine of the reoriented array: the same world point for the same voxel content. A flipped axis
    /// starts at the source's last voxel, so flips move the origin.
    pub fn canonical_affine(&self, affine: &[[f64; 4]; 4], shape: [usize; 3]) -> [[f64; 4]; 4] {
        // Source index s = P c + b, with s[perm[j]] = c[j] or (n - 1 - c[j]); the new affine is A * [P b; 0 1].
        let mut out = [[0.0; 4]; 4];
        out[3] = [0.0, 0.0, 0.0, 1.0];
        for (row, src_row) in out.iter_mut().zip(affine).take(3) {
            let mut t = src_row[3];
            for (j, v) in row.iter_mut().take(3).enumerate() {
                let src = self.perm[j];
                if self.flip[j] {
                    *v = -src_row[src];
                    t += src_row[src] * (shape[src].max(1) - 1) as f64;
                } else {
                    *v = src_row[src];
                }
            }
            row[3] = t;
        }
        out
    }
}

/// Nearest orthogonal matrix (polar factor) by Newton's iteration Q <- (Q + Q^-T) / 2; None when singular,
/// so callers fall back to the raw directions.
fn nearest_orthogonal(m: &[[f64; 3]; 3]) -> Option<[[f64; 3]; 3]> {
    let mut q = *m;
    for _ in 0..100 {
        let inv_t = inverse_transpose(&q)?;
        let mut next = [[0.0; 3]; 3];
        let mut change = 0.0f64;
        for r in 0..3 {
            for c in 0..3 {
                next[r][c] = 0.5 * (q[r][c] + inv_t[r][c]);
                change = change.max((next[r][c] - q[r][c]).abs());
            }
        }
        q = next;
        if change < 1e-12 {
            break;
        }
    }
    q.iter().flatten().all(|v| v.is_finite()).then_some(q)
}

/// (M^-1)^T = cofactor(M) / det(M); None if (nearly) singular.
fn inverse_transpose(m: &[[f64; 3]; 3]) -> Option<[[f64; 3]; 3]> {
    let cof = |r: usize, c: usize| {
        let (r1, r2) = ((r + 1) % 3, (r + 2) % 3);
        let (c1, c2) = ((c + 1) % 3, (c + 2) % 3);
        m[r1][c1] * m[r2][c2] - m[r1][c2] * m[r2][c1]
    };
    let mut out = [[0.0; 3]; 3];
    for (r, row) in out.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = cof(r, c);
        }
    }
    let det: f64 = (0..3).map(|c| m[0][c] * out[0][c]).sum();
    if !det.is_finite() || det.abs() < 1e-9 {
        return None;
    }
    for v in out.iter_mut().flatten() {
        *v /= det;
    }
    Some(out)
}

/// Output[c] = input[s] with s[perm[j]] = c[j] (or n - 1 - c[j] when flipped); parallel over output z-slices.
fn permute_flip<T: Copy + Send + Sync>(o: &Orientation, data: &[T], shape: [usize; 3]) -> Vec<T> {
    let n: usize = shape.iter().product();
    assert_eq!(
        data.len(),
        n,
        "data length {} does not match shape {shape:?}",
        data.len()
    );
    if o.is_identity() || n == 0 {
        return data.to_vec();
    }
    let src_stride = [1isize, shape[0] as isize, (shape[0] * shape[1]) as isize];
    let out_shape = o.canonical_shape(shape);
    let mut step = [0isize; 3];
    let mut base = 0isize;
    for j in 0..3 {
        let s = src_stride[o.perm[j]];
        if o.flip[j] {
            step[j] = -s;
            base += s * (shape[o.perm[j]] as isize - 1);
        } else {
            step[j] = s;
        }
    }
    let slice = out_shape[0] * out_shape[1];
    // Every output element is written below; the first input element only seeds the allocation.
    let mut out = vec![data[0]; n];
    out.par_chunks_mut(slice)
        .enumerate()
        .for_each(|(z, chunk)| {
            let zoff = base + step[2] * z as isize;
            for (y, row) in chunk.chunks_mut(out_shape[0]).enumerate() {
                let mut idx = zoff + step[1] * y as isize;
                for v in row.iter_mut() {
                    *v = data[idx as usize];
                    idx += step[0];
                }
            }
        });
    out
}

/// Output shape whose voxels have (about) the `target` spacing over the same extent:
/// `round(shape * spacing / target)`, at least 1. An axis with a non-positive or non-finite target or
/// spacing keeps its length, so a missing value cannot produce a zero-sized or enormous grid.
pub fn shape_for_spacing(shape: [usize; 3], spacing: [f64; 3], target: [f64; 3]) -> [usize; 3] {
    std::array::from_fn(|i| {
        let (sp, t) = (spacing[i], target[i]);
        if !(sp.is_finite() && sp > 0.0 && t.is_finite() && t > 0.0) {
            return shape[i];
        }
        ((shape[i] as f64 * sp / t).round() as usize).max(1)
    })
}

/// Affine of a grid resampled from `shape` to `new_shape` with the functions here: voxels scale by
/// `shape / new_shape`, and voxel centres shift so that both grids' outer voxel edges coincide.
pub fn resampled_affine(
    affine: &[[f64; 4]; 4],
    shape: [usize; 3],
    new_shape: [usize; 3],
) -> [[f64; 4]; 4] {
    let scale: [f64; 3] = std::array::from_fn(|i| shape[i] as f64 / new_shape[i].max(1) as f64);
    let mut out = *affine;
    for r in 0..3 {
        // New centre i' sits at old index (i' + 0.5) * scale - 0.5.
        out[r][3] = affine[r][3]
            + (0..3)
                .map(|c| affine[r][c] * (0.5 * scale[c] - 0.5))
                .sum::<f64>();
        for c in 0..3 {
            out[r][c] = affine[r][c] * scale[c];
        }
    }
    out
}

/// Source coordinate of output sample `i` when an axis of length `n` is resampled to `m`: both grids
/// cover the same extent and their outer voxel edges coincide (skimage/scipy `grid_mode`, what nnU-Net
/// uses), clamped into the source so edges replicate the border voxel.
fn source_coord(i: usize, n: usize, m: usize) -> f64 {
    let x = (i as f64 + 0.5) * n as f64 / m as f64 - 0.5;
    x.clamp(0.0, (n - 1) as f64)
}

/// Interpolation taps for one output sample: source indices (already clamped) and weights.
#[derive(Clone, Copy)]
struct Taps<const K: usize> {
    idx: [usize; K],
    w: [f32; K],
}

fn linear_taps(n: usize, m: usize) -> Vec<Taps<2>> {
    (0..m)
        .map(|i| {
            let x = source_coord(i, n, m);
            let i0 = (x.floor() as usize).min(n - 1);
            let i1 = (i0 + 1).min(n - 1);
            let f = (x - i0 as f64) as f32;
            Taps {
                idx: [i0, i1],
                w: [1.0 - f, f],
            }
        })
        .collect()
}

/// Catmull-Rom (Keys, a = -0.5) taps: interpolating, exact for quadratics, no prefilter; edges replicate.
fn cubic_taps(n: usize, m: usize) -> Vec<Taps<4>> {
    let last = n as isize - 1;
    (0..m)
        .map(|i| {
            let x = source_coord(i, n, m);
            let i0 = x.floor();
            let t = x - i0;
            let t2 = t * t;
            let t3 = t2 * t;
            let w = [
                0.5 * (-t3 + 2.0 * t2 - t),
                0.5 * (3.0 * t3 - 5.0 * t2 + 2.0),
                0.5 * (-3.0 * t3 + 4.0 * t2 + t),
                0.5 * (t3 - t2),
            ];
            let i0 = i0 as isize;
            Taps {
                idx: std::array::from_fn(|k| (i0 - 1 + k as isize).clamp(0, last) as usize),
                w: w.map(|v| v as f32),
            }
        })
        .collect()
}

/// Resamples one axis of an x-fastest volume with the given taps (one per output sample along `axis`).
/// Parallel over output z-slices; the z pass blends whole input slices.
fn resample_axis<const K: usize>(
    data: &[f32],
    shape: [usize; 3],
    axis: usize,
    taps: &[Taps<K>],
) -> Vec<f32> {
    let mut out_shape = shape;
    out_shape[axis] = taps.len();
    let [nx, ny, _] = shape;
    let [mx, my, _] = out_shape;
    let mut out = vec![0.0f32; out_shape.iter().product()];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(mx * my)
        .enumerate()
        .for_each(|(z, slice)| match axis {
            0 => {
                for y in 0..my {
                    let src = &data[(z * ny + y) * nx..][..nx];
                    let dst = &mut slice[y * mx..][..mx];
                    for (d, t) in dst.iter_mut().zip(taps) {
                        *d = (0..K).map(|k| t.w[k] * src[t.idx[k]]).sum();
                    }
                }
            }
            1 => {
                for (y, t) in taps.iter().enumerate() {
                    let dst = &mut slice[y * mx..][..mx];
                    for k in 0..K {
                        let src = &data[(z * ny + t.idx[k]) * nx..][..nx];
                        let w = t.w[k];
                        for (d, s) in dst.iter_mut().zip(src) {
                            *d += w * s;
                        }
                    }
                }
            }
            _ => {
                let t = &taps[z];
                for k in 0..K {
                    let src = &data[t.idx[k] * nx * ny..][..nx * ny];
                    let w = t.w[k];
                    for (d, s) in slice.iter_mut().zip(src) {
                        *d += w * s;
                    }
                }
            }
        });
    out
}

fn check_shapes(len: usize, shape: [usize; 3], new_shape: [usize; 3]) {
    assert_eq!(
        len,
        shape.iter().product::<usize>(),
        "data length {len} does not match shape {shape:?}"
    );
    assert!(
        shape.iter().chain(&new_shape).all(|&s| s > 0),
        "cannot resample between {shape:?} and {new_shape:?}: every axis needs at least one voxel"
    );
}

/// Separable resampling: one axis at a time, shrinking axes first, skipping axes whose length does not change (so resampling
/// to the same shape returns the input bit for bit).
fn resample_separable<const K: usize>(
    data: &[f32],
    shape: [usize; 3],
    new_shape: [usize; 3],
    taps: fn(usize, usize) -> Vec<Taps<K>>,
) -> Vec<f32> {
    check_shapes(data.len(), shape, new_shape);
    let mut cur = data.to_vec();
    let mut cur_shape = shape;
    // Shrinking axes first keeps the intermediate volumes small (the passes commute up to rounding).
    let mut order = [0usize, 1, 2];
    order.sort_by(|&a, &b| {
        let ra = new_shape[a] as f64 / shape[a] as f64;
        let rb = new_shape[b] as f64 / shape[b] as f64;
        ra.total_cmp(&rb)
    });
    for axis in order {
        if new_shape[axis] != cur_shape[axis] {
            cur = resample_axis(
                &cur,
                cur_shape,
                axis,
                &taps(cur_shape[axis], new_shape[axis]),
            );
            cur_shape[axis] = new_shape[axis];
        }
    }
    cur
}

/// Trilinear resampling of an x-fastest volume to `new_shape` over the same extent (outer voxel edges
/// coincide, borders replicate; no anti-aliasing when shrinking, like nnU-Net).
pub fn resample_linear(data: &[f32], shape: [usize; 3], new_shape: [usize; 3]) -> Vec<f32> {
    resample_separable(data, shape, new_shape, linear_taps)
}

/// Separable cubic resampling with the Catmull-Rom kernel (interpolating, no prefilter; it can overshoot
/// the input range slightly at sharp edges). Same grid convention as [`resample_linear`].
pub fn resample_cubic(data: &[f32], shape: [usize; 3], new_shape: [usize; 3]) -> Vec<f32> {
    resample_separable(data, shape, new_shape, cubic_taps)
}

/// Cubic B-spline interpolation as SciPy computes it for scikit-image's
/// `resize(order=3, mode="edge", anti_aliasing=False)` (which nnU-Net resamples images with):
/// `scipy.ndimage.zoom(order=3, mode="nearest", grid_mode=True)`, the input padded by 12 edge
/// samples, prefiltered to spline coefficients, evaluated at `(o + 0.5) * n / m - 0.5`. Unlike
/// [`resample_cubic`] it is not a local filter and overshoots more at edges; skimage's clip to
/// the input's range is left to the caller, because nnU-Net clips per slice or per volume.
/// Computed in float64, one axis at a time; axes whose length does not change are untouched.
pub fn resample_bspline3(data: &[f32], shape: [usize; 3], new_shape: [usize; 3]) -> Vec<f32> {
    check_shapes(data.len(), shape, new_shape);
    let mut cur: Vec<f64> = data.iter().map(|&v| v as f64).collect();
    let mut cur_shape = shape;
    for axis in 0..3 {
        let (n, m) = (cur_shape[axis], new_shape[axis]);
        if n == m {
            continue;
        }
        let mut out_shape = cur_shape;
        out_shape[axis] = m;
        let stride: usize = cur_shape[..axis].iter().product();
        let out_stride = stride;
        let outer: usize = cur_shape[axis + 1..].iter().product();
        let mut out = vec![0.0f64; out_shape.iter().product()];
        let taps = bspline3_taps(n, m);
        let mut line = Vec::with_capacity(n + 2 * BSPLINE_PAD);
        for o in 0..outer {
            for i in 0..stride {
                let at = |k: usize| i + stride * (k + n * o);
                line.clear();
                line.extend(std::iter::repeat_n(cur[at(0)], BSPLINE_PAD));
                line.extend((0..n).map(|k| cur[at(k)]));
                line.extend(std::iter::repeat_n(cur[at(n - 1)], BSPLINE_PAD));
                bspline3_coefficients(&mut line);
                for (k, (start, w)) in taps.iter().enumerate() {
                    let c = &line[*start..*start + 4];
                    out[i + out_stride * (k + m * o)] =
                        c[0] * w[0] + c[1] * w[1] + c[2] * w[2] + c[3] * w[3];
                }
            }
        }
        cur = out;
        cur_shape = out_shape;
    }
    cur.into_iter().map(|v| v as f32).collect()
}

/// Edge samples SciPy pads a signal with before prefiltering it for `mode="nearest"`.
const BSPLINE_PAD: usize = 12;

/// For each output sample: the first of its four coefficients in the padded line, and their
/// cubic B-spline weights.
fn bspline3_taps(n: usize, m: usize) -> Vec<(usize, [f64; 4])> {
    (0..m)
        .map(|o| {
            let x = (o as f64 + 0.5) * n as f64 / m as f64 - 0.5 + BSPLINE_PAD as f64;
            let f = x.floor();
            let t = x - f;
            let u = 1.0 - t;
            let w = [
                u * u * u / 6.0,
                (3.0 * t * t * t - 6.0 * t * t + 4.0) / 6.0,
                (-3.0 * t * t * t + 3.0 * t * t + 3.0 * t + 1.0) / 6.0,
                t * t * t / 6.0,
            ];
            (f as usize - 1, w)
        })
        .collect()
}

/// Turns samples into cubic B-spline coefficients in place (the recursive prefilter of Unser,
/// pole sqrt(3) - 2, mirror boundaries, as `scipy.ndimage.spline_filter1d` applies it).
fn bspline3_coefficients(c: &mut [f64]) {
    let n = c.len();
    if n < 2 {
        return;
    }
    let z = 3f64.sqrt() - 2.0;
    for v in c.iter_mut() {
        *v *= 6.0; // (1 - z)(1 - 1/z)
    }
    // Causal initial value for a mirror-symmetric extension.
    let zn = z.powi(n as i32 - 1);
    let mut sum = c[0] + zn * c[n - 1];
    let (mut z1, mut z2) = (z, zn * zn / z);
    for v in &c[1..n - 1] {
        sum += (z1 + z2) * v;
        z1 *= z;
        z2 /= z;
    }
    c[0] = sum / (1.0 - zn * zn);
    for k in 1..n {
        c[k] += z * c[k - 1];
    }
    c[n - 1] = z / (z * z - 1.0) * (z * c[n - 2] + c[n - 1]);
    for k in (0..n - 1).rev() {
        c[k] = z * (c[k + 1] - c[k]);
    }
}

/// Label-map resampling that never invents a class: the result equals linearly resampling every label's
/// one-hot mask and taking the argmax (nnU-Net's approach), computed directly from the 8 trilinear
/// neighbours so the cost does not grow with the number of labels. Ties go to the smaller label value.
pub fn resample_labels(labels: &[u8], shape: [usize; 3], new_shape: [usize; 3]) -> Vec<u8> {
    check_shapes(labels.len(), shape, new_shape);
    if shape == new_shape {
        return labels.to_vec();
    }
    let tx = linear_taps(shape[0], new_shape[0]);
    let ty = linear_taps(shape[1], new_shape[1]);
    let tz = linear_taps(shape[2], new_shape[2]);
    let [nx, ny, _] = shape;
    let [mx, my, _] = new_shape;
    let mut out = vec![0u8; new_shape.iter().product()];
    out.par_chunks_mut(mx * my)
        .enumerate()
        .for_each(|(z, slice)| {
            let t3 = tz[z];
            for (y, row) in slice.chunks_mut(mx).enumerate() {
                let t2 = ty[y];
                for (v, t1) in row.iter_mut().zip(&tx) {
                    // At most 8 distinct labels meet here: accumulate their weights in a tiny list.
                    let mut cand: [(u8, f32); 8] = [(0, 0.0); 8];
                    let mut len = 0;
                    for c in 0..2 {
                        for b in 0..2 {
                            let wzy = t3.w[c] * t2.w[b];
                            let off = (t3.idx[c] * ny + t2.idx[b]) * nx;
                            for a in 0..2 {
                                let l = labels[off + t1.idx[a]];
                                let w = wzy * t1.w[a];
                                match cand[..len].iter_mut().find(|e| e.0 == l) {
                                    Some(e) => e.1 += w,
                                    None => {
                                        cand[len] = (l, w);
                                        len += 1;
                                    }
                                }
                            }
                        }
                    }
                    let mut best = cand[0];
                    for &(l, w) in &cand[1..len] {
                        if w > best.1 || (w == best.1 && l < best.0) {
                            best = (l, w);
                        }
                    }
                    *v = best.0;
                }
            }
        });
    out
}

/// Largest relative spacing difference, axis-direction difference (components of unit vectors)
/// and origin distance (in voxels of the finer grid) at which two grids count as the same: well
/// above the rounding of float32 headers written by different tools, far below a misplaced file.
const GRID_TOLERANCE: (f64, f64, f64) = (1e-3, 1e-3, 0.01);

/// How two voxel-to-world affines (RAS+ mm) of volumes of one shape differ: `None` when they
/// describe the same grid within [`GRID_TOLERANCE`], else which of spacing, origin and axis
/// directions differ, with both values (nnU-Net's dataset integrity check compares the same).
pub fn grid_difference(a: &[[f64; 4]; 4], b: &[[f64; 4]; 4]) -> Option<String> {
    let column = |m: &[[f64; 4]; 4], j: usize| [m[0][j], m[1][j], m[2][j]];
    let norm = |v: [f64; 3]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let spacing = |m| [0, 1, 2].map(|j| norm(column(m, j)));
    let (sa, sb) = (spacing(a), spacing(b));
    let (rel, dir, origin) = GRID_TOLERANCE;
    let mut found = Vec::new();
    if (0..3).any(|j| (sa[j] - sb[j]).abs() > rel * sa[j].max(sb[j])) {
        found.push(format!("spacing {} vs {} mm", triple(sa), triple(sb)));
    }
    let unit = |m, j: usize, s: [f64; 3]| column(m, j).map(|x| x / s[j].max(f64::MIN_POSITIVE));
    if (0..3).any(|j| {
        let (ua, ub) = (unit(a, j, sa), unit(b, j, sb));
        (0..3).any(|i| (ua[i] - ub[i]).abs() > dir)
    }) {
        found.push("axis directions differ".to_string());
    }
    let (oa, ob) = (column(a, 3), column(b, 3));
    let finest = sa.iter().chain(&sb).copied().fold(f64::INFINITY, f64::min);
    if norm([0, 1, 2].map(|i| oa[i] - ob[i])) > origin * finest {
        found.push(format!("origin {} vs {} mm", triple(oa), triple(ob)));
    }
    (!found.is_empty()).then(|| found.join("; "))
}

/// `(x, y, z)` with two decimals.
fn triple(v: [f64; 3]) -> String {
    format!("({:.2}, {:.2}, {:.2})", v[0], v[1], v[2])
}
