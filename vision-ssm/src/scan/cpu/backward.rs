//! The backward pass: each block of steps in reverse, its states recomputed from the block's
//! checkpoint.

use rayon::prelude::*;

use super::forward::{ckpt_len, fwd_group_body, GroupJob, LaneSeq};
use super::isa::{isa_dispatch, Isa};
use super::layout::{
    block, block_mut, carve, gather_lanes, lane_params, lane_vec, pad_transpose_groups,
    prefetch_rows, scatter_lanes, BatchShares, Layout, ScanDims, ScanGrads, ScanInputs,
};
use super::simd::{flat, unroll16, vexp2, Simd, LOG2E};

/// Inputs of one backward task: a run of whole groups of one direction and batch item.
struct BwdTask<'a> {
    n: usize,
    np: usize,
    len: usize,
    chunk: usize,
    /// Channels in the task.
    e_ch: usize,
    /// [e_ch, L] rows of u, delta and dy.
    u: &'a [f32],
    delta: &'a [f32],
    dy: &'a [f32],
    /// [e_ch, N] rows of A; [e_ch] of the bias and skip weight.
    a: &'a [f32],
    bias: &'a [f32],
    d_skip: &'a [f32],
    /// B and C of the direction, padded [L, NP].
    bt: &'a [f32],
    ct: &'a [f32],
    /// The task's groups' checkpoints from the forward pass, if it kept them.
    ckpt: Option<&'a [f32]>,
}

/// Outputs of one backward task.
struct BwdOut<'a> {
    /// [e_ch, L].
    du: &'a mut [f32],
    ddelta: &'a mut [f32],
    /// This task's share of dB and dC, [N, L] (every value written).
    dbm: &'a mut [f32],
    dcm: &'a mut [f32],
    /// [e_ch, N] and [e_ch]: this batch item's share of the parameter gradients.
    da: &'a mut [f32],
    dd_skip: &'a mut [f32],
    dbias: &'a mut [f32],
}

/// Buffers of one block of steps of the backward pass, all lane-major.
struct BwdChunk<'a, S: Simd, const NB: usize> {
    /// Recomputed states and decays exp(dt a) of the block of steps, [m][NB].
    hs: &'a mut [[S::V; NB]],
    es: &'a mut [[S::V; NB]],
    /// Lane-wise partial sums of dB and dC over the task's groups, [m][NP], from this state
    /// block's first row on.
    dbp: &'a mut [S::V],
    dcp: &'a mut [S::V],
    /// du and the gradient of dt (before the softplus), [m], summed over state blocks.
    du: &'a mut [S::V],
    ddt: &'a mut [S::V],
}

/// Backward of one block of steps for one group and one block of NB state rows.
///
/// Recomputes the block's states from the one entering it (`h0`), then walks the steps in
/// reverse with `carry` = exp(dt_{t+1} a) dL/dh_{t+1}, the adjoint reaching h_t from the next
/// step, in registers.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn bwd_block<S: Simd, const NB: usize>(
    s: S,
    a: &[S::V; NB],
    a2: &[S::V; NB],
    h0: &[S::V; NB],
    carry: &mut [S::V; NB],
    da: &mut [S::V; NB],
    bt: &[f32],
    ct: &[f32],
    np: usize,
    q: &LaneSeq<S>,
    m: usize,
    k: BwdChunk<S, NB>,
) {
    let a2 = *a2;
    let mut h = *h0;
    for t in 0..m {
        let (d, du, dy) = (q.dt[t], q.dtu[t], q.dy[t]);
        let b: &[f32; NB] = block(bt, t * np);
        let dc = block_mut::<_, NB>(k.dcp, t * np);
        let (es, hs) = (&mut k.es[t], &mut k.hs[t]);
        unroll16!(NB, |i| {
            let e = vexp2(s, s.mul(d, a2[i]));
            es[i] = e;
            h[i] = s.fma(e, h[i], s.mul(du, s.splat(b[i])));
            hs[i] = h[i];
            // dC_t = sum over channels of h_t dy_t.
            dc[i] = s.fma(h[i], dy, dc[i]);
        });
    }
    let a = *a;
    let mut cr = *carry;
    let mut dacc = *da;
    for t in (0..m).rev() {
        let (d, du, dy, u) = (q.dt[t], q.dtu[t], q.dy[t], q.u[t]);
        let b: &[f32; NB] = block(bt, t * np);
        let c: &[f32; NB] = block(ct, t * np);
        let hp = if t > 0 { &k.hs[t - 1] } else { h0 };
        let e = &k.es[t];
        let db = block_mut::<_, NB>(k.dbp, t * np);
        let mut gb = s.zero();
        let mut pa = s.zero();
        unroll16!(NB, |i| {
            // g = dL/dh_t: from y_t through C, plus what flows back from h_{t+1}.
            let g = s.fma(s.splat(c[i]), dy, cr[i]);
            db[i] = s.fma(g, du, db[i]);
            let bi = s.splat(b[i]);
            gb = s.fma(g, bi, gb);
            let ge = s.mul(g, e[i]);
            cr[i] = ge;
            // g exp(dt a) h_{t-1} is shared by dA (times dt) and d dt (times a).
            let gq = s.mul(ge, hp[i]);
            pa = s.fma(gq, a[i], pa);
            dacc[i] = s.fma(gq, d, dacc[i]);
        });
        k.du[t] = s.fma(d, gb, k.du[t]);
        k.ddt[t] = s.fma(u, gb, s.add(k.ddt[t], pa));
    }
    *carry = cr;
    *da = dacc;
}

/// The forward pass's view of group `g` of a backward task.
fn group_job<'a>(t: &BwdTask<'a>, g: usize, w: usize) -> GroupJob<'a> {
    let (n, len) = (t.n, t.len);
    let (e0, nch) = (g * w, w.min(t.e_ch - g * w));
    GroupJob {
        n,
        np: t.np,
        len,
        chunk: t.chunk,
        nch,
        u: &t.u[e0 * len..][..nch * len],
        delta: &t.delta[e0 * len..][..nch * len],
        a: &t.a[e0 * n..][..nch * n],
        bias: &t.bias[e0..][..nch],
        d_skip: &t.d_skip[e0..][..nch],
        bt: t.bt,
        ct: t.ct,
    }
}

/// Lane-major values of a backward task's groups that stay fixed over the sequence.
struct TaskParams<S: Simd> {
    /// Groups in the task.
    groups: usize,
    /// Blocks of steps.
    n_chunks: usize,
    /// The state entering every block of steps, for every group: [groups][n_chunks][NP].
    ckpt: Vec<S::V>,
    /// A of every group, [groups][NP], and the same times log2 e.
    a: Vec<Vec<S::V>>,
    a2: Vec<Vec<S::V>>,
}

impl<S: Simd> TaskParams<S> {
    /// A of every group, and the checkpoints the forward pass kept or recomputed here.
    #[inline(always)]
    fn new<const NB: usize>(s: S, t: &BwdTask) -> Self {
        let (np, w) = (t.np, S::W);
        let groups = t.e_ch.div_ceil(w);
        let n_chunks = t.len.div_ceil(t.chunk);
        let ck_len = n_chunks * np * w;
        let ckpt = match t.ckpt {
            Some(ck) => ck.chunks_exact(w).map(|c| lane_vec(s, c, w)).collect(),
            None => {
                let mut ckpt = vec![0.0f32; groups * ck_len];
                for (g, ck) in ckpt.chunks_exact_mut(ck_len).enumerate() {
                    fwd_group_body::<S, NB>(s, &group_job(t, g, w), None, Some(ck));
                }
                ckpt.chunks_exact(w).map(|c| lane_vec(s, c, w)).collect()
            }
        };
        let a: Vec<Vec<S::V>> = (0..groups)
            .map(|g| {
                let j = group_job(t, g, w);
                lane_params(s, j.a, t.n, np, j.nch, 1.0)
            })
            .collect();
        let a2 = a
            .iter()
            .map(|a| a.iter().map(|&v| s.mul(v, s.splat(LOG2E))).collect())
            .collect();
        Self {
            groups,
            n_chunks,
            ckpt,
            a,
            a2,
        }
    }
}

/// What a backward task carries from one block of steps to the one before, per group.
struct GroupAcc<S: Simd> {
    /// The adjoint entering from later steps, [groups][NP].
    carry: Vec<S::V>,
    /// dA so far, [groups][NP].
    da: Vec<S::V>,
    /// d skip weight and d bias so far, [groups].
    dskip: Vec<S::V>,
    dbias: Vec<S::V>,
}

impl<S: Simd> GroupAcc<S> {
    fn new(s: S, groups: usize, np: usize) -> Self {
        Self {
            carry: vec![s.zero(); groups * np],
            da: vec![s.zero(); groups * np],
            dskip: vec![s.zero(); groups],
            dbias: vec![s.zero(); groups],
        }
    }
}

/// Lane-major buffers of a backward task, reused for every block of steps (see [`BwdChunk`]).
struct BwdBufs<S: Simd, const NB: usize> {
    seq: LaneSeq<S>,
    hs: Vec<[S::V; NB]>,
    es: Vec<[S::V; NB]>,
    dbp: Vec<S::V>,
    dcp: Vec<S::V>,
    du: Vec<S::V>,
    ddt: Vec<S::V>,
}

impl<S: Simd, const NB: usize> BwdBufs<S, NB> {
    fn new(s: S, chunk: usize, np: usize) -> Self {
        Self {
            seq: LaneSeq::new(s, chunk),
            hs: vec![[s.zero(); NB]; chunk],
            es: vec![[s.zero(); NB]; chunk],
            dbp: vec![s.zero(); chunk * np],
            dcp: vec![s.zero(); chunk * np],
            du: vec![s.zero(); chunk],
            ddt: vec![s.zero(); chunk],
        }
    }
}

#[inline(always)]
fn bwd_task_body<S: Simd, const NB: usize>(s: S, t: &BwdTask, o: &mut BwdOut) {
    let (np, len, chunk) = (t.np, t.len, t.chunk);
    let p = TaskParams::<S>::new::<NB>(s, t);
    let mut acc = GroupAcc::new(s, p.groups, np);
    let mut bufs = BwdBufs::<S, NB>::new(s, chunk, np);
    for c in (0..p.n_chunks).rev() {
        let l0 = c * chunk;
        let m = chunk.min(len - l0);
        bufs.dbp.fill(s.zero());
        bufs.dcp.fill(s.zero());
        for g in 0..p.groups {
            prefetch_next_group::<S>(t, o, g, p.groups, c, l0);
            bwd_group_chunk(s, t, o, &p, &mut acc, &mut bufs, (g, c, l0, m));
        }
        reduce_bc_partials(s, &bufs.dbp, &bufs.dcp, o, (t.n, np, len), (l0, m));
    }
    write_param_grads(t, o, p.groups, &acc);
}

/// Prefetches the rows of the group visited after group `g` of block `c`: the following
/// group, or the first one a block of steps back.
#[inline(always)]
fn prefetch_next_group<S: Simd>(
    t: &BwdTask,
    o: &BwdOut,
    g: usize,
    groups: usize,
    c: usize,
    l0: usize,
) {
    let (len, chunk, w) = (t.len, t.chunk, S::W);
    let (ng, nl0) = if g + 1 < groups {
        (g + 1, l0)
    } else {
        (0, l0.saturating_sub(chunk))
    };
    if g + 1 < groups || c > 0 {
        let (ne0, nnch) = (ng * w, w.min(t.e_ch - ng * w));
        for rows in [t.u, t.delta, t.dy] {
            prefetch_rows(&rows[ne0 * len..], len, nnch, nl0, chunk);
        }
        prefetch_rows(&o.du[ne0 * len..], len, nnch, nl0, chunk);
        prefetch_rows(&o.ddelta[ne0 * len..], len, nnch, nl0, chunk);
    }
}

/// Backward of block `c` (steps `l0..l0 + m`) for group `g`: du and d delta of the block, and
/// the group's share of dB, dC and the parameter gradients.
#[inline(always)]
fn bwd_group_chunk<S: Simd, const NB: usize>(
    s: S,
    t: &BwdTask,
    o: &mut BwdOut,
    p: &TaskParams<S>,
    acc: &mut GroupAcc<S>,
    bufs: &mut BwdBufs<S, NB>,
    (g, c, l0, m): (usize, usize, usize, usize),
) {
    let (np, len, w) = (t.np, t.len, S::W);
    let j = group_job(t, g, w);
    let (e0, nch) = (g * w, j.nch);
    let BwdBufs {
        seq,
        hs,
        es,
        dbp,
        dcp,
        du,
        ddt,
    } = bufs;
    let bias = lane_vec(s, j.bias, nch);
    let d_skip = lane_vec(s, j.d_skip, nch);
    seq.load::<true>(s, &j, bias, l0, m);
    let dy_rows = &t.dy[e0 * len..][..nch * len];
    gather_lanes(s, dy_rows, len, nch, l0, &mut seq.dy[..m]);
    let mut dskip = acc.dskip[g];
    for i in 0..m {
        let dy = seq.dy[i];
        du[i] = s.mul(d_skip, dy);
        ddt[i] = s.zero();
        dskip = s.fma(dy, seq.u[i], dskip);
    }
    acc.dskip[g] = dskip;
    let ck = &p.ckpt[(g * p.n_chunks + c) * np..][..np];
    for b0 in (0..np).step_by(NB) {
        let gi = g * np + b0;
        let k = BwdChunk {
            hs: &mut hs[..m],
            es: &mut es[..m],
            dbp: &mut dbp[b0..],
            dcp: &mut dcp[b0..],
            du: &mut du[..m],
            ddt: &mut ddt[..m],
        };
        bwd_block::<S, NB>(
            s,
            block(&p.a[g], b0),
            block(&p.a2[g], b0),
            block(ck, b0),
            block_mut(&mut acc.carry, gi),
            block_mut(&mut acc.da, gi),
            &t.bt[l0 * np + b0..],
            &t.ct[l0 * np + b0..],
            np,
            seq,
            m,
            k,
        );
    }
    // d delta = d dt * sigmoid(delta + bias); d bias is its sum over steps.
    let mut dbias = acc.dbias[g];
    for (ddt, &sig) in ddt[..m].iter_mut().zip(&seq.sig[..m]) {
        *ddt = s.mul(*ddt, sig);
        dbias = s.add(dbias, *ddt);
    }
    acc.dbias[g] = dbias;
    let du_rows = &mut o.du[e0 * len..][..nch * len];
    scatter_lanes(s, &du[..m], du_rows, len, nch, l0);
    let dd_rows = &mut o.ddelta[e0 * len..][..nch * len];
    scatter_lanes(s, &ddt[..m], dd_rows, len, nch, l0);
}

/// dB and dC of steps `l0..l0 + m`: sums over the lanes of the partial sums, W state rows at a
/// time where the padded state has that many.
#[inline(always)]
fn reduce_bc_partials<S: Simd>(
    s: S,
    dbp: &[S::V],
    dcp: &[S::V],
    o: &mut BwdOut,
    (n, np, len): (usize, usize, usize),
    (l0, m): (usize, usize),
) {
    let w = S::W;
    for i in 0..m {
        for (part, out) in [(dbp, &mut *o.dbm), (dcp, &mut *o.dcm)] {
            let rows = &part[i * np..][..np];
            let mut r0 = 0;
            while r0 + w <= np && r0 < n {
                let sums = [s.hsum_rows(&rows[r0..])];
                for (r, &v) in flat::<S>(&sums).iter().enumerate().take(n - r0) {
                    out[(r0 + r) * len + l0 + i] = v;
                }
                r0 += w;
            }
            for r in r0..n {
                out[r * len + l0 + i] = s.hsum(rows[r]);
            }
        }
    }
}

/// Writes the task's dA, d skip weight and d bias from the lanes of its groups' accumulators.
#[inline(always)]
fn write_param_grads<S: Simd>(t: &BwdTask, o: &mut BwdOut, groups: usize, acc: &GroupAcc<S>) {
    let (n, np, w) = (t.n, t.np, S::W);
    let da = flat::<S>(&acc.da);
    for g in 0..groups {
        let (e0, nch) = (g * w, w.min(t.e_ch - g * w));
        let (dsk, dbi) = (
            &flat::<S>(&acc.dskip)[g * w..],
            &flat::<S>(&acc.dbias)[g * w..],
        );
        for l in 0..nch {
            for r in 0..n {
                o.da[(e0 + l) * n + r] = da[(g * np + r) * w + l];
            }
            o.dd_skip[e0 + l] = dsk[l];
            o.dbias[e0 + l] = dbi[l];
        }
    }
}

isa_dispatch!(bwd_task, bwd_task_body, (t: &BwdTask, o: &mut BwdOut));

/// Backward tasks per (batch, direction): enough for every thread to have a few, but no more
/// than the direction has groups. Each extra part costs a [N, L] partial of dB and dC.
fn default_parts(tasks: usize, groups: usize) -> usize {
    let threads = rayon::current_num_threads();
    (2 * threads).div_ceil(tasks.max(1)).clamp(1, groups.max(1))
}

pub(super) fn backward_with(
    isa: Isa,
    chunk: usize,
    dims: ScanDims,
    x: &ScanInputs,
    dy: &[f32],
) -> ScanGrads {
    backward_parts(isa, chunk, None, None, dims, x, dy)
}

/// A backward task: (batch item, direction, first channel in the direction, channels).
type TaskSpan = (usize, usize, usize, usize);

/// What every backward task of one call reads.
struct BwdCall<'a> {
    chunk: usize,
    dims: ScanDims,
    layout: Layout,
    /// Groups per direction, and checkpoint floats per group.
    groups: usize,
    ck: usize,
    x: ScanInputs<'a>,
    dy: &'a [f32],
    saved: Option<&'a [f32]>,
    /// B and C of every (batch, direction), padded [L, NP].
    bt: Vec<f32>,
    ct: Vec<f32>,
}

impl BwdCall<'_> {
    /// The inputs of one task.
    fn task(&self, (b, k, e0, e_ch): TaskSpan) -> BwdTask<'_> {
        let ScanDims {
            k_dirs,
            channels,
            d_state: n,
            len,
            ..
        } = self.dims;
        let (np, w, ck, x) = (self.layout.np, self.layout.w, self.ck, &self.x);
        let d0 = k * self.dims.per_dir() + e0;
        let row0 = b * channels + d0;
        let gi = b * k_dirs + k;
        BwdTask {
            n,
            np,
            len,
            chunk: self.chunk,
            e_ch,
            u: &x.u[row0 * len..][..e_ch * len],
            delta: &x.delta[row0 * len..][..e_ch * len],
            dy: &self.dy[row0 * len..][..e_ch * len],
            a: &x.a[d0 * n..][..e_ch * n],
            bias: &x.delta_bias[d0..][..e_ch],
            d_skip: &x.d_skip[d0..][..e_ch],
            bt: &self.bt[gi * len * np..][..len * np],
            ct: &self.ct[gi * len * np..][..len * np],
            ckpt: self
                .saved
                .map(|c| &c[(gi * self.groups + e0 / w) * ck..][..e_ch.div_ceil(w) * ck]),
        }
    }
}

/// The tasks of a call, `parts` per (batch, direction), in memory order of u's rows.
fn task_spans(dims: ScanDims, w: usize, groups: usize, parts: usize) -> Vec<TaskSpan> {
    let per_dir = dims.per_dir();
    let mut tasks = Vec::new();
    for b in 0..dims.batch {
        for k in 0..dims.k_dirs {
            for p in 0..parts {
                let (g0, g1) = (p * groups / parts, (p + 1) * groups / parts);
                let (e0, e1) = (g0 * w, (g1 * w).min(per_dir));
                tasks.push((b, k, e0, e1 - e0));
            }
        }
    }
    tasks
}

/// Every task's outputs: its rows of du and d delta, its share of the batch item's parameter
/// gradients, and its [N, L] of dB and dC (in `bc_parts`, `[dB tasks.., dC tasks..]`, when a
/// direction is split into several tasks; else directly in the gradients).
fn task_outputs<'a>(
    tasks: &[TaskSpan],
    dims: ScanDims,
    g: &'a mut ScanGrads,
    shares: &'a mut BatchShares,
    bc_parts: Option<&'a mut [f32]>,
) -> Vec<BwdOut<'a>> {
    let (n, len) = (dims.d_state, dims.len);
    let nl = n * len;
    let (db, dc) = match bc_parts {
        Some(p) => p.split_at_mut(tasks.len() * nl),
        None => (&mut g.bm[..], &mut g.cm[..]),
    };
    let dbms = carve(db, tasks.iter().map(|_| nl));
    let dcms = carve(dc, tasks.iter().map(|_| nl));
    let dus = carve(&mut g.u, tasks.iter().map(|t| t.3 * len));
    let ddeltas = carve(&mut g.delta, tasks.iter().map(|t| t.3 * len));
    let das = carve(&mut shares.a, tasks.iter().map(|t| t.3 * n));
    let dskips = carve(&mut shares.d_skip, tasks.iter().map(|t| t.3));
    let dbiases = carve(&mut shares.delta_bias, tasks.iter().map(|t| t.3));
    dus.into_iter()
        .zip(ddeltas)
        .zip(dbms.into_iter().zip(dcms))
        .zip(das.into_iter().zip(dskips).zip(dbiases))
        .map(
            |(((du, ddelta), (dbm, dcm)), ((da, dd_skip), dbias))| BwdOut {
                du,
                ddelta,
                dbm,
                dcm,
                da,
                dd_skip,
                dbias,
            },
        )
        .collect()
}

/// Sums the tasks' shares of dB and dC (`parts` consecutive tasks per (batch, direction)).
fn sum_bc_parts(g: &mut ScanGrads, bc_parts: &[f32], parts: usize, nl: usize) {
    let (db, dc) = bc_parts.split_at(bc_parts.len() / 2);
    for (dst, src) in [(&mut g.bm, db), (&mut g.cm, dc)] {
        dst.par_chunks_mut(nl)
            .zip(src.par_chunks(parts * nl))
            .for_each(|(dst, src)| {
                for part in src.chunks_exact(nl) {
                    for (d, s) in dst.iter_mut().zip(part) {
                        *d += s;
                    }
                }
            });
    }
}

/// The backward pass with each direction's groups split into `parts` tasks (default: see
/// [`default_parts`]), from the forward pass's checkpoints (`saved`, for blocks of `chunk` steps)
/// or recomputing them.
pub(super) fn backward_parts(
    isa: Isa,
    chunk: usize,
    parts: Option<usize>,
    saved: Option<&[f32]>,
    dims: ScanDims,
    x: &ScanInputs,
    dy: &[f32],
) -> ScanGrads {
    if let Err(e) = dims.check(x) {
        panic!("scan_backward: {e}");
    }
    assert_eq!(
        dy.len(),
        x.u.len(),
        "scan_backward: dy must be [B, D, L] like u"
    );
    assert!(chunk > 0, "chunk must be at least 1");
    let mut g = ScanGrads::zeros(x);
    let (n, len) = (dims.d_state, dims.len);
    if dims.batch == 0 || dims.channels == 0 || len == 0 {
        return g;
    }
    let layout = Layout::new(isa, n);
    let groups = dims.per_dir().div_ceil(layout.w);
    let ck = ckpt_len(layout, len, chunk);
    if let Some(c) = saved {
        assert_eq!(
            c.len(),
            dims.batch * dims.k_dirs * groups * ck,
            "checkpoints of another layout"
        );
    }
    let parts = parts
        .unwrap_or_else(|| default_parts(dims.batch * dims.k_dirs, groups))
        .clamp(1, groups);
    let call = BwdCall {
        chunk,
        dims,
        layout,
        groups,
        ck,
        x: *x,
        dy,
        saved,
        bt: pad_transpose_groups(x.bm, n, len, layout.np),
        ct: pad_transpose_groups(x.cm, n, len, layout.np),
    };
    let tasks = task_spans(dims, layout.w, groups, parts);
    let mut shares = BatchShares::zeros(dims);
    let mut bc_parts = vec![
        0.0f32;
        if parts > 1 {
            2 * tasks.len() * n * len
        } else {
            0
        }
    ];
    let split = (parts > 1).then_some(&mut bc_parts[..]);
    let outs = task_outputs(&tasks, dims, &mut g, &mut shares, split);
    tasks
        .into_par_iter()
        .zip(outs)
        .for_each(|(span, mut out)| bwd_task(isa, layout, &call.task(span), &mut out));
    if parts > 1 {
        sum_bc_parts(&mut g, &bc_parts, parts, n * len);
    }
    g.add_batch_shares(&shares);
    g
}
