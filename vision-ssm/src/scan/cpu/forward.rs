//! The forward pass, one group of channels at a time.

use rayon::prelude::*;

use super::isa::{isa_dispatch, Isa};
use super::layout::{
    block, block_mut, carve, gather_lanes, lane_params, lane_vec, pad_transpose_groups,
    prefetch_rows, scatter_lanes, Layout, ScanDims, ScanInputs,
};
use super::simd::{flat, unroll16, vexp2, vsoftplus_sigmoid, Simd, LOG2E};
use super::CHUNK;

/// One group of at most W channels of one direction and batch item.
pub(super) struct GroupJob<'a> {
    pub(super) n: usize,
    pub(super) np: usize,
    pub(super) len: usize,
    /// Steps per block; the state entering each block is what a checkpoint stores.
    pub(super) chunk: usize,
    /// Real channels in the group (the rest of the W lanes is padding).
    pub(super) nch: usize,
    /// [nch, L] rows of u and delta.
    pub(super) u: &'a [f32],
    pub(super) delta: &'a [f32],
    /// [nch, N] rows of A, [nch] of the bias and skip weight.
    pub(super) a: &'a [f32],
    pub(super) bias: &'a [f32],
    pub(super) d_skip: &'a [f32],
    /// B and C of the direction, padded [L, NP].
    pub(super) bt: &'a [f32],
    pub(super) ct: &'a [f32],
}

/// Lane-major per-step values of a block of steps of one group.
pub(super) struct LaneSeq<S: Simd> {
    /// Gathered delta, u and (backward) dy.
    pub(super) delta: Vec<S::V>,
    pub(super) u: Vec<S::V>,
    pub(super) dy: Vec<S::V>,
    /// dt = softplus(delta + bias), dt u, and sigmoid(delta + bias) = d dt / d delta.
    pub(super) dt: Vec<S::V>,
    pub(super) dtu: Vec<S::V>,
    pub(super) sig: Vec<S::V>,
}

impl<S: Simd> LaneSeq<S> {
    pub(super) fn new(s: S, chunk: usize) -> Self {
        let v = || vec![s.zero(); chunk];
        Self {
            delta: v(),
            u: v(),
            dy: v(),
            dt: v(),
            dtu: v(),
            sig: v(),
        }
    }

    /// Gathers delta and u of steps `l0..l0 + m` and computes dt, dt u and (with `SIG`) sigmoid.
    #[inline(always)]
    pub(super) fn load<const SIG: bool>(
        &mut self,
        s: S,
        j: &GroupJob,
        bias: S::V,
        l0: usize,
        m: usize,
    ) {
        gather_lanes(s, j.delta, j.len, j.nch, l0, &mut self.delta[..m]);
        gather_lanes(s, j.u, j.len, j.nch, l0, &mut self.u[..m]);
        for t in 0..m {
            let (sp, sg) = vsoftplus_sigmoid::<S, SIG>(s, s.add(self.delta[t], bias));
            self.dt[t] = sp;
            self.dtu[t] = s.mul(sp, self.u[t]);
            self.sig[t] = sg;
        }
    }
}

/// `m` steps of the recurrence for one block of NB state rows, from the state in `h`, which is
/// left holding the last state. With `Y`, adds each step's `C h` to `y`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn fwd_steps<S: Simd, const NB: usize, const Y: bool>(
    s: S,
    a2: &[S::V; NB],
    h: &mut [S::V; NB],
    bt: &[f32],
    ct: &[f32],
    np: usize,
    dt: &[S::V],
    dtu: &[S::V],
    y: &mut [S::V],
) {
    let a2 = *a2;
    let mut hh = *h;
    for t in 0..dt.len() {
        let (d, du) = (dt[t], dtu[t]);
        let b: &[f32; NB] = block(bt, t * np);
        let c: &[f32; NB] = block(ct, t * np);
        let mut acc = s.zero();
        unroll16!(NB, |i| {
            // exp(dt a) = 2^(dt a log2 e); a2 has log2 e folded in.
            let e = vexp2(s, s.mul(d, a2[i]));
            hh[i] = s.fma(e, hh[i], s.mul(du, s.splat(b[i])));
            if Y {
                acc = s.fma(s.splat(c[i]), hh[i], acc);
            }
        });
        if Y {
            y[t] = s.add(y[t], acc);
        }
    }
    *h = hh;
}

/// One pass over L for a group: writes y rows ([nch, L]) if given, and the state entering every
/// block of `chunk` steps into `ckpt` ([n_chunks][NP] vectors) if given. Without `y`, the last
/// block's steps are skipped (nothing would read their states).
#[inline(always)]
pub(super) fn fwd_group_body<S: Simd, const NB: usize>(
    s: S,
    j: &GroupJob,
    mut y: Option<&mut [f32]>,
    mut ckpt: Option<&mut [f32]>,
) {
    let (np, len, chunk) = (j.np, j.len, j.chunk);
    let a2 = lane_params(s, j.a, j.n, np, j.nch, LOG2E);
    let bias = lane_vec(s, j.bias, j.nch);
    let d_skip = lane_vec(s, j.d_skip, j.nch);
    let mut h = vec![s.zero(); np];
    let mut seq = LaneSeq::new(s, chunk);
    let mut yl = vec![s.zero(); chunk];
    for (c, l0) in (0..len).step_by(chunk).enumerate() {
        let m = chunk.min(len - l0);
        if let Some(ck) = ckpt.as_deref_mut() {
            ck[c * np * S::W..][..np * S::W].copy_from_slice(flat::<S>(&h));
        }
        if y.is_none() && l0 + m == len {
            break;
        }
        seq.load::<false>(s, j, bias, l0, m);
        let next = (l0 + m).min(len);
        prefetch_rows(j.delta, len, j.nch, next, chunk);
        prefetch_rows(j.u, len, j.nch, next, chunk);
        if let Some(y) = y.as_deref() {
            prefetch_rows(y, len, j.nch, next, chunk);
        }
        let (dt, dtu) = (&seq.dt[..m], &seq.dtu[..m]);
        for (yl, &u) in yl.iter_mut().zip(&seq.u[..m]) {
            *yl = s.mul(d_skip, u);
        }
        for b0 in (0..np).step_by(NB) {
            let (bt, ct) = (&j.bt[l0 * np + b0..], &j.ct[l0 * np + b0..]);
            let (a2, hb) = (block::<_, NB>(&a2, b0), block_mut::<_, NB>(&mut h, b0));
            if y.is_some() {
                fwd_steps::<S, NB, true>(s, a2, hb, bt, ct, np, dt, dtu, &mut yl[..m]);
            } else {
                fwd_steps::<S, NB, false>(s, a2, hb, bt, ct, np, dt, dtu, &mut yl[..m]);
            }
        }
        if let Some(y) = y.as_deref_mut() {
            scatter_lanes(s, &yl[..m], y, len, j.nch, l0);
        }
    }
}

isa_dispatch!(fwd_group, fwd_group_body, (j: &GroupJob, y: Option<&mut [f32]>, ckpt: Option<&mut [f32]>));

pub(super) fn forward_with(isa: Isa, dims: ScanDims, x: &ScanInputs) -> Vec<f32> {
    forward_impl(isa, CHUNK, false, dims, x).0
}

/// Floats of checkpoints per group: the state entering each block of `chunk` steps.
pub(super) fn ckpt_len(layout: Layout, len: usize, chunk: usize) -> usize {
    len.div_ceil(chunk) * layout.np * layout.w
}

/// The forward pass; with `save`, also the checkpoints for blocks of `chunk` steps
/// ([B, K, groups] of [`ckpt_len`] each), else an empty vector.
pub(super) fn forward_impl(
    isa: Isa,
    chunk: usize,
    save: bool,
    dims: ScanDims,
    x: &ScanInputs,
) -> (Vec<f32>, Vec<f32>) {
    if let Err(e) = dims.check(x) {
        panic!("scan_forward: {e}");
    }
    assert!(chunk > 0, "chunk must be at least 1");
    let ScanDims {
        batch,
        k_dirs,
        channels,
        d_state: n,
        len,
    } = dims;
    let mut y = vec![0.0; x.u.len()];
    if y.is_empty() {
        return (y, Vec::new());
    }
    let per_dir = dims.per_dir();
    let layout = Layout::new(isa, n);
    let (w, np) = (layout.w, layout.np);
    let bt = pad_transpose_groups(x.bm, n, len, np);
    let ct = pad_transpose_groups(x.cm, n, len, np);
    // One task per group of W channels: (batch, direction, first channel in the direction).
    let mut tasks = Vec::new();
    for b in 0..batch {
        for k in 0..k_dirs {
            for e0 in (0..per_dir).step_by(w) {
                tasks.push((b, k, e0, w.min(per_dir - e0)));
            }
        }
    }
    let ck = ckpt_len(layout, len, chunk);
    let mut ckpt = vec![0.0f32; if save { tasks.len() * ck } else { 0 }];
    let outs = carve(&mut y, tasks.iter().map(|t| t.3 * len));
    let cks: Vec<Option<&mut [f32]>> = if save {
        carve(&mut ckpt, tasks.iter().map(|_| ck))
            .into_iter()
            .map(Some)
            .collect()
    } else {
        tasks.iter().map(|_| None).collect()
    };
    tasks
        .into_par_iter()
        .zip(outs)
        .zip(cks)
        .for_each(|(((b, k, e0, nch), y), ck)| {
            let d0 = k * per_dir + e0;
            let row0 = b * channels + d0;
            let g = b * k_dirs + k;
            let job = GroupJob {
                n,
                np,
                len,
                chunk,
                nch,
                u: &x.u[row0 * len..][..nch * len],
                delta: &x.delta[row0 * len..][..nch * len],
                a: &x.a[d0 * n..][..nch * n],
                bias: &x.delta_bias[d0..][..nch],
                d_skip: &x.d_skip[d0..][..nch],
                bt: &bt[g * len * np..][..len * np],
                ct: &ct[g * len * np..][..len * np],
            };
            fwd_group(isa, layout, &job, Some(y), ck);
        });
    (y, ckpt)
}
