//! The scan's sizes and inputs, and how the kernels lay them out.
//!
//! The kernels vectorise across channels, not across the state: a *group* of W channels
//! of one direction runs as W lanes, and the state of the group is NB vectors ([NB][W], NB up to
//! 16), held in registers for a whole pass over L. B_t[n] and C_t[n] are the same for every
//! channel of a direction, so each step broadcasts them; y, du and d delta, sums over n,
//! accumulate lane-wise with no horizontal sums. Groups with fewer than W channels are padded
//! with lanes whose inputs are zero (their state stays 0 and their outputs are dropped). State
//! sizes above NB run as several blocks of NB rows, padded with rows whose A, B and C are zero.

use rayon::prelude::*;

use super::isa::Isa;
use super::simd::{flat, flat_mut, Simd};
use crate::scan::{ScanArgs, INPUT_NAMES};

/// Sizes of one selective-scan call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanDims {
    /// Batch size B.
    pub batch: usize,
    /// Number of scan directions K (groups sharing B and C).
    pub k_dirs: usize,
    /// Channels D = K * E.
    pub channels: usize,
    /// State size N.
    pub d_state: usize,
    /// Sequence length L.
    pub len: usize,
}

/// Borrowed inputs of the scan, float32 row-major.
pub type ScanInputs<'a> = ScanArgs<&'a [f32]>;

/// Gradients of every input, same shapes as the inputs.
pub type ScanGrads = ScanArgs<Vec<f32>>;

impl ScanDims {
    /// The sizes of a call with `per_dir` channels in each of `k_dirs` directions.
    pub fn with_per_dir(
        batch: usize,
        k_dirs: usize,
        per_dir: usize,
        d_state: usize,
        len: usize,
    ) -> Self {
        Self {
            batch,
            k_dirs,
            channels: k_dirs * per_dir,
            d_state,
            len,
        }
    }

    /// The sizes read from the seven inputs' shapes (in [`INPUT_NAMES`] order): B, D, L from u
    /// and K, N from B, every other shape checked against them.
    pub fn from_shapes(shapes: &[Vec<usize>; 7]) -> Result<Self, String> {
        let (u, bm) = (&shapes[0], &shapes[3]);
        let (&[batch, channels, len], &[_, k_dirs, d_state, _]) = (&u[..], &bm[..]) else {
            return Err(format!(
                "u must be [B, D, L] and bm [B, K, N, L]; got {u:?}, {bm:?}"
            ));
        };
        let dims = Self {
            batch,
            k_dirs,
            channels,
            d_state,
            len,
        };
        dims.check_sizes()?;
        let want = dims.shapes();
        for ((name, got), want) in INPUT_NAMES.iter().zip(shapes).zip(&want) {
            if got != want {
                return Err(format!("{name} is {got:?}, expected {want:?} for {dims:?}"));
            }
        }
        Ok(dims)
    }

    /// Channels per direction, E = D / K.
    pub fn per_dir(&self) -> usize {
        self.channels / self.k_dirs
    }

    /// The shapes of the seven inputs, in [`INPUT_NAMES`] order.
    pub fn shapes(&self) -> [Vec<usize>; 7] {
        let Self {
            batch: b,
            k_dirs: k,
            channels: d,
            d_state: n,
            len: l,
        } = *self;
        [
            vec![b, d, l],
            vec![b, d, l],
            vec![d, n],
            vec![b, k, n, l],
            vec![b, k, n, l],
            vec![d],
            vec![d],
        ]
    }

    /// Checks that D splits evenly over K, that N >= 1 and that every input has its shape's length.
    pub fn check(&self, x: &ScanInputs) -> Result<(), String> {
        self.check_sizes()?;
        let inputs = INPUT_NAMES.iter().zip(x.into_array()).zip(self.shapes());
        for ((name, values), shape) in inputs {
            let (got, want) = (values.len(), shape.iter().product::<usize>());
            if got != want {
                return Err(format!(
                    "{name} has {got} values, expected {want} for {self:?}"
                ));
            }
        }
        Ok(())
    }

    /// Checks that D splits evenly over K and that N >= 1.
    fn check_sizes(&self) -> Result<(), String> {
        let (k, d) = (self.k_dirs, self.channels);
        if k == 0 || d % k != 0 {
            return Err(format!(
                "channels ({d}) must be a multiple of k_dirs ({k}), which must be >= 1"
            ));
        }
        if self.d_state == 0 {
            return Err("d_state must be at least 1".to_string());
        }
        Ok(())
    }
}

impl ScanGrads {
    /// All-zero gradients for inputs of the sizes of `x`.
    pub(crate) fn zeros(x: &ScanInputs) -> Self {
        x.map(|v| vec![0.0; v.len()])
    }

    /// Adds each batch item's share of the per-channel parameter gradients (dA, dD, d bias),
    /// item after item, so every sum runs in the same order whatever the threads did.
    pub(crate) fn add_batch_shares(&mut self, shares: &BatchShares) {
        let targets = [&mut self.a, &mut self.d_skip, &mut self.delta_bias];
        let parts = [&shares.a, &shares.d_skip, &shares.delta_bias];
        for (acc, part) in targets.into_iter().zip(parts) {
            for share in part.chunks_exact(acc.len().max(1)) {
                for (acc, v) in acc.iter_mut().zip(share) {
                    *acc += v;
                }
            }
        }
    }
}

/// Per-batch-item shares of the per-channel parameter gradients: the tasks of one batch item
/// write their own share in parallel, and [`ScanGrads::add_batch_shares`] sums them.
pub(crate) struct BatchShares {
    /// `[B, D, N]`.
    pub(crate) a: Vec<f32>,
    /// `[B, D]`.
    pub(crate) d_skip: Vec<f32>,
    /// `[B, D]`.
    pub(crate) delta_bias: Vec<f32>,
}

impl BatchShares {
    /// Zero shares for the sizes of `dims`.
    pub(crate) fn zeros(dims: ScanDims) -> Self {
        let bd = dims.batch * dims.channels;
        Self {
            a: vec![0.0; bd * dims.d_state],
            d_skip: vec![0.0; bd],
            delta_bias: vec![0.0; bd],
        }
    }
}

/// Lane and state-block sizes of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Layout {
    /// Channels per group (vector lanes).
    pub(super) w: usize,
    /// State rows per block, a power of two.
    pub(super) nb: usize,
    /// Padded state size, a multiple of `nb`.
    pub(super) np: usize,
}

impl Layout {
    pub(super) fn new(isa: Isa, n: usize) -> Self {
        let (w, nb_max) = match isa {
            Isa::Avx512 => (16, 16),
            Isa::Avx2 | Isa::Base => (8, 8),
        };
        let nb = n.next_power_of_two().min(nb_max);
        Self {
            w,
            nb,
            np: n.div_ceil(nb) * nb,
        }
    }
}

/// [N, L] -> [L, NP] with lanes N..NP zero, so each step's values are one contiguous row.
fn pad_transpose_into(src: &[f32], n: usize, len: usize, np: usize, out: &mut [f32]) {
    out.fill(0.0);
    // Blocks of 16 steps keep the strided writes within a few cache lines per sweep.
    for l0 in (0..len).step_by(16) {
        let l1 = (l0 + 16).min(len);
        for (i, srow) in src.chunks_exact(len).enumerate() {
            for (l, &v) in srow[l0..l1].iter().enumerate() {
                out[(l0 + l) * np + i] = v;
            }
        }
    }
    debug_assert_eq!(src.len(), n * len);
}

/// [G, N, L] -> [G, L, NP] for every (batch, direction) group, in parallel.
pub(super) fn pad_transpose_groups(src: &[f32], n: usize, len: usize, np: usize) -> Vec<f32> {
    let groups = src.len() / (n * len);
    let mut out = vec![0.0; groups * len * np];
    out.par_chunks_mut(len * np)
        .zip(src.par_chunks(n * len))
        .for_each(|(o, s)| pad_transpose_into(s, n, len, np, o));
    out
}

/// Steps `l0..l0 + out.len()` of `nch` rows of length `len` into lane-major `out`
/// ([step] of W lanes); lanes from `nch` on are zero.
#[inline(always)]
pub(super) fn gather_lanes<S: Simd>(
    s: S,
    rows: &[f32],
    len: usize,
    nch: usize,
    l0: usize,
    out: &mut [S::V],
) {
    let (w, m) = (S::W, out.len());
    let mut done = 0;
    if nch == w {
        while done + w <= m {
            s.transpose_in(&rows[l0 + done..], len, &mut out[done..done + w]);
            done += w;
        }
    }
    let rest = flat_mut::<S>(&mut out[done..]);
    for (j, v) in rest.chunks_exact_mut(w).enumerate() {
        for (i, o) in v.iter_mut().enumerate() {
            *o = if i < nch {
                rows[i * len + l0 + done + j]
            } else {
                0.0
            };
        }
    }
}

/// Lane-major `src` back into steps `l0..` of the first `nch` rows.
#[inline(always)]
pub(super) fn scatter_lanes<S: Simd>(
    s: S,
    src: &[S::V],
    rows: &mut [f32],
    len: usize,
    nch: usize,
    l0: usize,
) {
    let (w, m) = (S::W, src.len());
    let mut done = 0;
    if nch == w {
        while done + w <= m {
            s.transpose_out(&src[done..done + w], &mut rows[l0 + done..], len);
            done += w;
        }
    }
    for (j, v) in flat::<S>(&src[done..]).chunks_exact(w).enumerate() {
        for (i, &x) in v.iter().enumerate().take(nch) {
            rows[i * len + l0 + done + j] = x;
        }
    }
}

/// Asks the cache for steps `l0..l0 + m` of the first `nch` rows of length `len` (a hint only).
///
/// The kernels read and write a group's rows one block of steps at a time, 16 rows tens of
/// kilobytes apart: too many short streams for the hardware prefetchers, so each block would
/// wait on memory. Prefetching the next block while computing this one hides that.
#[inline(always)]
pub(super) fn prefetch_rows(rows: &[f32], len: usize, nch: usize, l0: usize, m: usize) {
    #[cfg(target_arch = "x86_64")]
    for row in rows.chunks(len).take(nch) {
        for line in row[l0.min(row.len())..(l0 + m).min(row.len())].chunks(16) {
            // SAFETY: prefetching has no effect on memory, and the address is inside `rows`.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    line.as_ptr().cast::<i8>(),
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (rows, len, nch, l0, m);
}

/// `[nch, N]` rows of A into lane-major `[NP]` vectors, scaled, zero in padding lanes and rows.
pub(super) fn lane_params<S: Simd>(
    s: S,
    a: &[f32],
    n: usize,
    np: usize,
    nch: usize,
    scale: f32,
) -> Vec<S::V> {
    let mut out = vec![s.zero(); np];
    let lanes = flat_mut::<S>(&mut out);
    for (i, row) in a.chunks_exact(n).take(nch).enumerate() {
        for (r, &v) in row.iter().enumerate() {
            lanes[r * S::W + i] = v * scale;
        }
    }
    out
}

/// The first `nch` values of `v` as a vector, zero beyond.
pub(super) fn lane_vec<S: Simd>(s: S, v: &[f32], nch: usize) -> S::V {
    let mut out = [s.zero()];
    flat_mut::<S>(&mut out)[..nch].copy_from_slice(&v[..nch]);
    out[0]
}

/// `NB` consecutive items of `rows` from `at`, as a fixed-size array reference.
#[inline(always)]
pub(super) fn block<T, const NB: usize>(rows: &[T], at: usize) -> &[T; NB] {
    rows[at..]
        .first_chunk::<NB>()
        .expect("padded buffers hold a whole block from every block start")
}

/// Mutable version of [`block`].
#[inline(always)]
pub(super) fn block_mut<T, const NB: usize>(rows: &mut [T], at: usize) -> &mut [T; NB] {
    rows[at..]
        .first_chunk_mut::<NB>()
        .expect("padded buffers hold a whole block from every block start")
}

/// Splits `buf` into consecutive pieces of the given sizes.
pub(super) fn carve(
    mut buf: &mut [f32],
    sizes: impl IntoIterator<Item = usize>,
) -> Vec<&mut [f32]> {
    let mut out = Vec::new();
    for size in sizes {
        let (head, tail) = std::mem::take(&mut buf).split_at_mut(size);
        out.push(head);
        buf = tail;
    }
    out
}
