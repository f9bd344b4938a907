//! The selective scan as CubeCL kernels, for burn's `CubeBackend` on any CubeCL runtime (CUDA,
//! wgpu/Vulkan, ...): the same source runs on an NVIDIA GPU and, in CI, on lavapipe.
//!
//! Semantics as in [`super::cpu`]. Everything (softplus, exp(ΔA), ΔBu, the recurrence, C·h, D·u)
//! happens inside the kernels; no `[B, D, L, N]` tensor exists.
//!
//! L is cut into blocks of [`GPU_CHUNK`] steps, and the recurrence is linear in the state, so the
//! blocks run in parallel and only a short carry pass is sequential (a two-level scan):
//!
//! - Forward: [`block_forward_kernel`] in summary mode runs every block of every channel (one
//!   unit each, state in registers) from a zero state, giving the block's end state and Σ Δ;
//!   [`block_carry_kernel`] then walks each channel's blocks once (N values per block) to get the
//!   state entering every block, `h_in[c + 1] = exp(A Σ_c Δ) h_in[c] + local[c]`; finally
//!   [`block_forward_kernel`] in output mode reruns every block from its entering state and
//!   writes y. Units are ordered channels-fastest so a warp's units share B_t and C_t loads.
//!   The entering states (`[B·D, ⌈L/CHUNK⌉, N]`, 1/CHUNK of all states) are what a training
//!   forward pass keeps for the backward pass.
//! - Backward: dL/dh flows from later steps with the same kind of linear recursion
//!   (`carry_{t-1} = (C_t dy_t + carry_t) exp(Δ_t A)`, independent of the states), so
//!   [`block_carry_local_kernel`] and the reverse carry pass give the carry entering every block.
//!   Then [`block_backward_kernel`] runs one cube per (block, batch, direction, group of up to
//!   [`GROUP`] channels), one unit per channel: it recomputes its block's states from the
//!   entering state into a local array (`(CHUNK + 1) × N`) and walks the block backwards.
//!   dB and dC, sums over the direction's channels, are reduced without atomics: each step the
//!   units put their N + N terms in shared memory and, after a barrier, sum its columns and write
//!   one partial per group (`[B, K, groups, N, L]`, summed over groups with burn ops). dA, dD and
//!   dbias are written per (block, batch, channel) and summed with burn ops.
//!
//! Parallelism is B·D·⌈L/CHUNK⌉ units, not B·D: a VMamba layer at L = 4096 (B·D = 1536) gives
//! ~200k units. The price is running each block twice in the forward pass (and the backward
//! pass's summary), all of it arithmetic on data that is read anyway.

#![allow(clippy::too_many_arguments)] // kernels take every input and output as an argument

use burn::tensor::{Shape, Tensor as BurnTensor, TensorPrimitive};
/// burn's CubeCL backend (generic over the runtime), which the kernels implement the scan for.
pub use burn_cubecl::CubeBackend;
use burn_cubecl::{
    kernel::into_contiguous,
    ops::numeric::{empty_device_dtype, zeros_client},
    tensor::CubeTensor,
    BoolElement, CubeRuntime, FloatElement, IntElement,
};
use cubecl::prelude::*;

use super::cpu::ScanDims;
use super::{scan_dims, ScanArgs, ScanTensors};

/// The kernels on CUDA without burn's fusion wrapper (the scan itself is never fused anyway).
#[cfg(feature = "cuda")]
pub type CudaCube = CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;

/// The kernels on wgpu (Vulkan, Metal, DX12; lavapipe on a CPU) without fusion.
#[cfg(feature = "wgpu")]
pub type WgpuCube = CubeBackend<cubecl::wgpu::WgpuRuntime, f32, i32, u32>;

/// Steps between the state checkpoints of the GPU kernels; also the length of the block whose
/// states a backward unit keeps in its local array ((CHUNK + 1) × N floats).
pub const GPU_CHUNK: usize = 32;

/// Channels of one direction handled by one backward cube (its unit count): enough units to
/// share the dB/dC reduction, few enough that the per-step column sums stay short.
pub const GROUP: usize = 32;

/// Units per cube of the forward kernel.
const FORWARD_CUBE: u32 = 64;

/// ln(1 + e^z), and z itself above 20 (torch's threshold, as the CPU kernel).
#[cube]
fn softplus<F: Float>(z: F) -> F {
    let mut out = z;
    if z <= F::new(20.0) {
        out = z.exp().log1p();
    }
    out
}

/// Number of blocks of `chunk` steps covering `len` steps.
#[cube]
// Spelled out: one integer division on every runtime CubeCL targets.
#[allow(clippy::manual_div_ceil)]
fn block_count(len: usize, #[comptime] chunk: usize) -> usize {
    (len + chunk - 1) / chunk
}

/// Softplus of `delta + bias` at one step.
#[cube]
fn step_dt<F: Float>(delta: &Tensor<F>, at: usize, bias: F) -> F {
    softplus::<F>(delta[at] + bias)
}

/// Block pass of the forward scan, one unit per (block, channel), channels fastest (so the units
/// of a warp share B_t and C_t). Summary mode (`!write_y`): runs the block from a zero state and
/// writes its end state to `local` and its Σ dt to `dt_sum`. Output mode (`write_y`): runs the
/// block from its entering state in `states` and writes y. Unused arguments may be dummies.
#[cube(launch)]
fn block_forward_kernel<F: Float>(
    u: &Tensor<F>,
    delta: &Tensor<F>,
    a: &Tensor<F>,
    bm: &Tensor<F>,
    cm: &Tensor<F>,
    d_skip: &Tensor<F>,
    delta_bias: &Tensor<F>,
    states: &Tensor<F>,
    y: &mut Tensor<F>,
    local: &mut Tensor<F>,
    dt_sum: &mut Tensor<F>,
    #[comptime] n_state: usize,
    #[comptime] chunk: usize,
    #[comptime] write_y: bool,
    #[define(F)] _dtype: StorageType,
) {
    let channels = u.shape(1);
    let len = u.shape(2);
    let k_dirs = bm.shape(1);
    let rows = u.shape(0) * channels;
    let n_chunks = block_count(len, chunk);
    let unit = ABSOLUTE_POS;
    if unit >= rows * n_chunks {
        terminate!();
    }
    let row = unit % rows;
    let c = unit / rows;
    let block = row * n_chunks + c;
    let b = row / channels;
    let d = row % channels;
    let k = d / (channels / k_dirs);
    let bc = (b * k_dirs + k) * n_state * len;
    let bias = delta_bias[d];
    let skip = d_skip[d];
    let l0 = c * chunk;
    let mut l1 = l0 + chunk;
    if l1 > len {
        l1 = len;
    }

    let mut h = Array::<F>::new(n_state);
    let mut av = Array::<F>::new(n_state);
    #[unroll]
    for i in 0..n_state {
        av[i] = a[d * n_state + i];
        h[i] = F::new(0.0);
        if write_y {
            h[i] = states[block * n_state + i];
        }
    }
    let mut total = F::new(0.0);
    for l in l0..l1 {
        let x = u[row * len + l];
        let dt = step_dt::<F>(delta, row * len + l, bias);
        total += dt;
        let dtu = dt * x;
        let mut acc = F::new(0.0);
        #[unroll]
        for i in 0..n_state {
            let at = bc + i * len + l;
            let hi = (dt * av[i]).exp() * h[i] + dtu * bm[at];
            h[i] = hi;
            acc += cm[at] * hi;
        }
        if write_y {
            y[row * len + l] = acc + skip * x;
        }
    }
    if !write_y {
        #[unroll]
        for i in 0..n_state {
            local[block * n_state + i] = h[i];
        }
        dt_sum[block] = total;
    }
}

/// Carry pass, one unit per channel, sequential over its blocks (N values per block): with
/// P_c = exp(A Σ_c dt), the product of block c's decays, and `local[c]` what block c adds when
/// entered with zero, writes `out[c]`, the value entering block c:
/// forward (states): `out[0] = 0`, `out[c + 1] = P_c out[c] + local[c]`;
/// `reverse` (dL/dh carried from later steps): the same recursion from the last block down.
#[cube(launch)]
fn block_carry_kernel<F: Float>(
    a: &Tensor<F>,
    local: &Tensor<F>,
    dt_sum: &Tensor<F>,
    out: &mut Tensor<F>,
    #[comptime] n_state: usize,
    #[comptime] reverse: bool,
    #[define(F)] _dtype: StorageType,
) {
    let rows = dt_sum.shape(0);
    let n_chunks = dt_sum.shape(1);
    let channels = a.shape(0);
    let row = ABSOLUTE_POS;
    if row >= rows {
        terminate!();
    }
    let d = row % channels;
    let mut run = Array::<F>::new(n_state);
    let mut av = Array::<F>::new(n_state);
    #[unroll]
    for i in 0..n_state {
        run[i] = F::new(0.0);
        av[i] = a[d * n_state + i];
    }
    for cc in 0..n_chunks {
        let mut c = cc;
        if reverse {
            c = n_chunks - 1 - cc;
        }
        let block = row * n_chunks + c;
        let total = dt_sum[block];
        #[unroll]
        for i in 0..n_state {
            out[block * n_state + i] = run[i];
            run[i] = (av[i] * total).exp() * run[i] + local[block * n_state + i];
        }
    }
}

/// Backward summary pass, one unit per (block, channel): walks the block backwards from a zero
/// carry (dL/dh_t = C_t dy_t + carry; carry = dL/dh_t · exp(Δ_t A), which needs no states) and
/// writes the carry leaving the block towards earlier steps to `local`, its Σ dt to `dt_sum`.
#[cube(launch)]
fn block_carry_local_kernel<F: Float>(
    delta: &Tensor<F>,
    a: &Tensor<F>,
    cm: &Tensor<F>,
    delta_bias: &Tensor<F>,
    dy: &Tensor<F>,
    local: &mut Tensor<F>,
    dt_sum: &mut Tensor<F>,
    #[comptime] n_state: usize,
    #[comptime] chunk: usize,
    #[define(F)] _dtype: StorageType,
) {
    let channels = delta.shape(1);
    let len = delta.shape(2);
    let k_dirs = cm.shape(1);
    let rows = delta.shape(0) * channels;
    let n_chunks = block_count(len, chunk);
    let unit = ABSOLUTE_POS;
    if unit >= rows * n_chunks {
        terminate!();
    }
    let row = unit % rows;
    let c = unit / rows;
    let block = row * n_chunks + c;
    let b = row / channels;
    let d = row % channels;
    let k = d / (channels / k_dirs);
    let bc = (b * k_dirs + k) * n_state * len;
    let bias = delta_bias[d];
    let l0 = c * chunk;
    let mut l1 = l0 + chunk;
    if l1 > len {
        l1 = len;
    }
    let mut carry = Array::<F>::new(n_state);
    let mut av = Array::<F>::new(n_state);
    #[unroll]
    for i in 0..n_state {
        carry[i] = F::new(0.0);
        av[i] = a[d * n_state + i];
    }
    let mut total = F::new(0.0);
    for ll in l0..l1 {
        let l = l1 - 1 - (ll - l0);
        let dt = step_dt::<F>(delta, row * len + l, bias);
        total += dt;
        let gy = dy[row * len + l];
        #[unroll]
        for i in 0..n_state {
            carry[i] = (cm[bc + i * len + l] * gy + carry[i]) * (dt * av[i]).exp();
        }
    }
    #[unroll]
    for i in 0..n_state {
        local[block * n_state + i] = carry[i];
    }
    dt_sum[block] = total;
}

/// Backward scan of one block, one cube per (block, batch, direction, channel group), one unit
/// per channel; see the module docs. Each unit starts from its block's entering state
/// (`states`) and the carry entering from later blocks (`carry_in`). Units past the
/// direction's last channel compute on a clamped channel with their dB/dC terms masked to zero,
/// so every unit reaches every barrier.
#[cube(launch)]
fn block_backward_kernel<F: Float>(
    u: &Tensor<F>,
    delta: &Tensor<F>,
    a: &Tensor<F>,
    bm: &Tensor<F>,
    cm: &Tensor<F>,
    d_skip: &Tensor<F>,
    delta_bias: &Tensor<F>,
    dy: &Tensor<F>,
    states: &Tensor<F>,
    carry_in: &Tensor<F>,
    du: &mut Tensor<F>,
    ddelta: &mut Tensor<F>,
    da_part: &mut Tensor<F>,
    dskip_part: &mut Tensor<F>,
    dbias_part: &mut Tensor<F>,
    dbm_part: &mut Tensor<F>,
    dcm_part: &mut Tensor<F>,
    n_groups: u32,
    #[comptime] n_state: usize,
    #[comptime] chunk: usize,
    #[comptime] group: usize,
    #[define(F)] _dtype: StorageType,
) {
    let batch = u.shape(0);
    let channels = u.shape(1);
    let len = u.shape(2);
    let k_dirs = bm.shape(1);
    let per_dir = channels / k_dirs;
    let groups = n_groups as usize;
    let n_chunks = block_count(len, chunk);
    let cube = CUBE_POS;
    if cube >= n_chunks * batch * k_dirs * groups {
        terminate!();
    }
    let g = cube % groups;
    let k = (cube / groups) % k_dirs;
    let b = (cube / (groups * k_dirs)) % batch;
    let c = cube / (groups * k_dirs * batch);
    let unit = UNIT_POS as usize;
    let e = g * group + unit;
    let valid = e < per_dir;
    let mut mask = F::new(1.0);
    let mut e_eff = e;
    if !valid {
        mask = F::new(0.0);
        e_eff = per_dir - 1;
    }
    let d = k * per_dir + e_eff;
    let row = b * channels + d;
    let block = row * n_chunks + c;
    let bc = (b * k_dirs + k) * n_state * len;
    let part = ((b * k_dirs + k) * groups + g) * n_state * len;
    let bias = delta_bias[d];
    let skip = d_skip[d];
    let width = 2 * n_state;
    let l0 = c * chunk;
    let mut steps = len - l0;
    if steps > chunk {
        steps = chunk;
    }

    let mut sums = SharedMemory::<F>::new(group * 2 * n_state);
    let mut av = Array::<F>::new(n_state);
    let mut carry = Array::<F>::new(n_state);
    let mut da = Array::<F>::new(n_state);
    // hs[s·N..] is the state after step s - 1 of the block (hs[0..N] the entering state).
    let mut hs = Array::<F>::new((chunk + 1) * n_state);
    #[unroll]
    for i in 0..n_state {
        av[i] = a[d * n_state + i];
        carry[i] = carry_in[block * n_state + i];
        da[i] = F::new(0.0);
        hs[i] = states[block * n_state + i];
    }
    let mut dskip = F::new(0.0);
    let mut dbias = F::new(0.0);

    // Recompute the block's states.
    for s in 0..steps {
        let l = l0 + s;
        let dt = step_dt::<F>(delta, row * len + l, bias);
        let dtu = dt * u[row * len + l];
        #[unroll]
        for i in 0..n_state {
            hs[(s + 1) * n_state + i] =
                (dt * av[i]).exp() * hs[s * n_state + i] + dtu * bm[bc + i * len + l];
        }
    }
    // Walk the block backwards.
    for ss in 0..steps {
        let s = steps - 1 - ss;
        let l = l0 + s;
        let z = delta[row * len + l] + bias;
        let dt = softplus::<F>(z);
        let sig = F::new(1.0) / (F::new(1.0) + (-z).exp());
        let x = u[row * len + l];
        let gy = dy[row * len + l];
        let mut gu = skip * gy;
        let mut gdt = F::new(0.0);
        #[unroll]
        for i in 0..n_state {
            let at = bc + i * len + l;
            let decay = (dt * av[i]).exp();
            let h_prev = hs[s * n_state + i];
            let h_cur = hs[(s + 1) * n_state + i];
            let b_t = bm[at];
            // dL/dh_t: through y_t, and from h_{t+1} through its decay.
            let gh = cm[at] * gy + carry[i];
            sums[unit * width + i] = mask * gh * dt * x;
            sums[unit * width + n_state + i] = mask * h_cur * gy;
            gu += gh * dt * b_t;
            gdt += gh * (av[i] * decay * h_prev + b_t * x);
            da[i] += gh * dt * decay * h_prev;
            carry[i] = gh * decay;
        }
        if valid {
            du[row * len + l] = gu;
            ddelta[row * len + l] = gdt * sig;
        }
        dskip += gy * x;
        dbias += gdt * sig;
        sync_cube();
        // Column j < N is dB[j, l], column N + j is dC[j, l], summed over the group.
        let mut j = unit;
        while j < width {
            let mut total = F::new(0.0);
            for w in 0..group {
                total += sums[w * width + j];
            }
            if j < n_state {
                dbm_part[part + j * len + l] = total;
            } else {
                dcm_part[part + (j - n_state) * len + l] = total;
            }
            j += group;
        }
        sync_cube();
    }
    if valid {
        // Partials per (block, batch), summed afterwards.
        let at = (c * batch + b) * channels + d;
        #[unroll]
        for i in 0..n_state {
            da_part[at * n_state + i] = da[i];
        }
        dskip_part[at] = dskip;
        dbias_part[at] = dbias;
    }
}

/// Blocks of [`GPU_CHUNK`] steps covering the sequence.
fn gpu_blocks(dims: &ScanDims) -> usize {
    dims.len.div_ceil(GPU_CHUNK)
}

fn empty<R: CubeRuntime>(like: &CubeTensor<R>, shape: Vec<usize>) -> CubeTensor<R> {
    empty_device_dtype::<R>(
        like.client.clone(),
        like.device.clone(),
        Shape::from(shape),
        like.dtype,
    )
}

fn zeros<R: CubeRuntime>(like: &CubeTensor<R>, shape: Vec<usize>) -> CubeTensor<R> {
    zeros_client::<R>(
        like.client.clone(),
        like.device.clone(),
        Shape::from(shape),
        like.dtype,
    )
}

/// burn's CubeCL backend for runtime R.
type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;

/// The inputs made contiguous (the kernels index them row-major), in the order of the kernels.
fn contiguous<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: ScanTensors<Cube<R, F, I, BT>>,
) -> [CubeTensor<R>; 7] {
    x.into_array().map(into_contiguous)
}

/// A launch grid of `cubes` cubes (wgpu allows at most 65535 along one axis; the kernels read
/// the linear cube position and return from the cubes past the end).
fn grid(cubes: usize) -> CubeCount {
    const MAX: usize = 65535;
    let cubes = cubes.max(1);
    if cubes <= MAX {
        CubeCount::Static(cubes as u32, 1, 1)
    } else {
        CubeCount::Static(MAX as u32, cubes.div_ceil(MAX) as u32, 1)
    }
}

/// One launch's grid for `units` units in cubes of [`FORWARD_CUBE`].
fn unit_grid(units: usize) -> (CubeCount, CubeDim) {
    (
        grid(units.div_ceil(FORWARD_CUBE as usize)),
        CubeDim::new_1d(FORWARD_CUBE),
    )
}

/// The state entering every block of every channel, `[B·D, ⌈L/CHUNK⌉, N]`: a summary pass over
/// all blocks in parallel, then the carry pass per channel.
fn launch_states<R: CubeRuntime>(x: &[CubeTensor<R>; 7], dims: &ScanDims) -> CubeTensor<R> {
    let (rows, n_chunks, n) = (dims.batch * dims.channels, gpu_blocks(dims), dims.d_state);
    let u = &x[0];
    let local = empty(u, vec![rows, n_chunks, n]);
    let dt_sum = empty(u, vec![rows, n_chunks]);
    let states = empty(u, vec![rows, n_chunks, n]);
    let [u, delta, a, bm, cm, d_skip, delta_bias] = x.clone();
    let (client, dtype) = (u.client.clone(), u.dtype);
    let (count, dim) = unit_grid(rows * n_chunks);
    block_forward_kernel::launch::<R>(
        &client,
        count,
        dim,
        u.clone().into_tensor_arg(),
        delta.into_tensor_arg(),
        a.clone().into_tensor_arg(),
        bm.into_tensor_arg(),
        cm.into_tensor_arg(),
        d_skip.into_tensor_arg(),
        delta_bias.into_tensor_arg(),
        empty(&u, vec![1]).into_tensor_arg(),
        empty(&u, vec![1]).into_tensor_arg(),
        local.clone().into_tensor_arg(),
        dt_sum.clone().into_tensor_arg(),
        n,
        GPU_CHUNK,
        false,
        dtype.into(),
    );
    let (count, dim) = unit_grid(rows);
    block_carry_kernel::launch::<R>(
        &client,
        count,
        dim,
        a.into_tensor_arg(),
        local.into_tensor_arg(),
        dt_sum.into_tensor_arg(),
        states.clone().into_tensor_arg(),
        n,
        false,
        dtype.into(),
    );
    states
}

/// y from the block states, all blocks in parallel.
fn launch_output<R: CubeRuntime>(
    x: &[CubeTensor<R>; 7],
    dims: &ScanDims,
    states: &CubeTensor<R>,
) -> CubeTensor<R> {
    let u = &x[0];
    let y = empty(u, vec![dims.batch, dims.channels, dims.len]);
    let [u, delta, a, bm, cm, d_skip, delta_bias] = x.clone();
    let (client, dtype) = (u.client.clone(), u.dtype);
    let (count, dim) = unit_grid(dims.batch * dims.channels * gpu_blocks(dims));
    block_forward_kernel::launch::<R>(
        &client,
        count,
        dim,
        u.clone().into_tensor_arg(),
        delta.into_tensor_arg(),
        a.into_tensor_arg(),
        bm.into_tensor_arg(),
        cm.into_tensor_arg(),
        d_skip.into_tensor_arg(),
        delta_bias.into_tensor_arg(),
        states.clone().into_tensor_arg(),
        y.clone().into_tensor_arg(),
        empty(&u, vec![1]).into_tensor_arg(),
        empty(&u, vec![1]).into_tensor_arg(),
        dims.d_state,
        GPU_CHUNK,
        true,
        dtype.into(),
    );
    y
}

/// The inputs made contiguous and their sizes, checked to be on one device with one dtype.
fn prepare<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: ScanTensors<Cube<R, F, I, BT>>,
) -> ([CubeTensor<R>; 7], ScanDims) {
    let x = contiguous::<R, F, I, BT>(x);
    let dims = scan_dims(&x.each_ref().map(|t| t.meta.shape().to_vec()));
    for t in &x[1..] {
        x[0].assert_is_on_same_device(t);
        assert_eq!(
            t.dtype, x[0].dtype,
            "selective_scan: inputs of mixed dtypes"
        );
    }
    (x, dims)
}

/// Forward scan on the device: `y: [B, D, L]` and, when `save`, the block states
/// `[B·D, ⌈L/GPU_CHUNK⌉, N]` that [`backward`] can take instead of recomputing them.
pub fn forward<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: ScanTensors<Cube<R, F, I, BT>>,
    save: bool,
) -> (CubeTensor<R>, Option<CubeTensor<R>>) {
    let (x, dims) = prepare::<R, F, I, BT>(x);
    if dims.batch * dims.channels == 0 || dims.len == 0 {
        let y = empty(&x[0], vec![dims.batch, dims.channels, dims.len]);
        return (y, None);
    }
    let states = launch_states(&x, &dims);
    let y = launch_output(&x, &dims, &states);
    (y, save.then_some(states))
}

/// The backward kernel's channel grouping for E channels per direction: (units per cube,
/// cubes per direction). Small E gets a cube of the next power of two, not a full [`GROUP`].
fn grouping(per_dir: usize) -> (usize, usize) {
    let group = GROUP.min(per_dir.next_power_of_two()).max(1);
    (group, per_dir.div_ceil(group).max(1))
}

/// dL/dh entering every block from the later ones, `[B·D, ⌈L/CHUNK⌉, N]`: a summary pass over
/// all blocks in parallel, then the carry pass per channel, last block first.
fn launch_carries<R: CubeRuntime>(
    x: &[CubeTensor<R>; 7],
    dims: &ScanDims,
    dy: &CubeTensor<R>,
) -> CubeTensor<R> {
    let (rows, n_chunks, n) = (dims.batch * dims.channels, gpu_blocks(dims), dims.d_state);
    let u = &x[0];
    let local = empty(u, vec![rows, n_chunks, n]);
    let dt_sum = empty(u, vec![rows, n_chunks]);
    let carries = empty(u, vec![rows, n_chunks, n]);
    let [_, delta, a, _, cm, _, delta_bias] = x.clone();
    let (client, dtype) = (u.client.clone(), u.dtype);
    let (count, dim) = unit_grid(rows * n_chunks);
    block_carry_local_kernel::launch::<R>(
        &client,
        count,
        dim,
        delta.into_tensor_arg(),
        a.clone().into_tensor_arg(),
        cm.into_tensor_arg(),
        delta_bias.into_tensor_arg(),
        dy.clone().into_tensor_arg(),
        local.clone().into_tensor_arg(),
        dt_sum.clone().into_tensor_arg(),
        n,
        GPU_CHUNK,
        dtype.into(),
    );
    let (count, dim) = unit_grid(rows);
    block_carry_kernel::launch::<R>(
        &client,
        count,
        dim,
        a.into_tensor_arg(),
        local.into_tensor_arg(),
        dt_sum.into_tensor_arg(),
        carries.clone().into_tensor_arg(),
        n,
        true,
        dtype.into(),
    );
    carries
}

/// Gradients of all seven inputs given `dy: [B, D, L]`, from saved block states (from
/// [`forward`] with `save`) or by recomputing them first.
pub fn backward<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: ScanTensors<Cube<R, F, I, BT>>,
    saved: Option<CubeTensor<R>>,
    dy: CubeTensor<R>,
) -> ScanTensors<Cube<R, F, I, BT>> {
    let (x, dims) = prepare::<R, F, I, BT>(x);
    let dy = into_contiguous(dy);
    assert_eq!(
        dy.meta.shape().to_vec(),
        vec![dims.batch, dims.channels, dims.len],
        "selective_scan: dy must be [B, D, L]"
    );
    let ScanDims {
        batch,
        channels,
        len,
        k_dirs,
        d_state: n_state,
    } = dims;
    let n_chunks = gpu_blocks(&dims);
    let (group, groups) = grouping(channels / k_dirs);
    let u = &x[0];
    let launch = batch * channels > 0 && len > 0;
    // Partials nobody writes when there is nothing to scan must still sum to zero.
    let part = |shape| {
        if launch {
            empty(u, shape)
        } else {
            zeros(u, shape)
        }
    };
    let du = empty(u, vec![batch, channels, len]);
    let ddelta = empty(u, vec![batch, channels, len]);
    let da_part = part(vec![n_chunks.max(1) * batch, channels * n_state]);
    let dskip_part = part(vec![n_chunks.max(1) * batch, channels]);
    let dbias_part = part(vec![n_chunks.max(1) * batch, channels]);
    let dbm_part = part(vec![batch * k_dirs, groups, n_state * len]);
    let dcm_part = part(vec![batch * k_dirs, groups, n_state * len]);
    if launch {
        let states = match saved {
            Some(s) => s,
            None => launch_states(&x, &dims),
        };
        let carries = launch_carries(&x, &dims, &dy);
        let [u, delta, a, bm, cm, d_skip, delta_bias] = x.clone();
        let client = u.client.clone();
        let dtype = u.dtype;
        block_backward_kernel::launch::<R>(
            &client,
            grid(n_chunks * batch * k_dirs * groups),
            CubeDim::new_1d(group as u32),
            u.into_tensor_arg(),
            delta.into_tensor_arg(),
            a.into_tensor_arg(),
            bm.into_tensor_arg(),
            cm.into_tensor_arg(),
            d_skip.into_tensor_arg(),
            delta_bias.into_tensor_arg(),
            dy.into_tensor_arg(),
            states.into_tensor_arg(),
            carries.into_tensor_arg(),
            du.clone().into_tensor_arg(),
            ddelta.clone().into_tensor_arg(),
            da_part.clone().into_tensor_arg(),
            dskip_part.clone().into_tensor_arg(),
            dbias_part.clone().into_tensor_arg(),
            dbm_part.clone().into_tensor_arg(),
            dcm_part.clone().into_tensor_arg(),
            groups as u32,
            n_state,
            GPU_CHUNK,
            group,
            dtype.into(),
        );
    }
    let group_sum = |t: CubeTensor<R>| {
        BurnTensor::<Cube<R, F, I, BT>, 3>::from_primitive(TensorPrimitive::Float(t))
            .sum_dim(1)
            .reshape([batch, k_dirs, n_state, len])
            .into_primitive()
            .tensor()
    };
    let batch_sum = |t: CubeTensor<R>| {
        BurnTensor::<Cube<R, F, I, BT>, 2>::from_primitive(TensorPrimitive::Float(t)).sum_dim(0)
    };
    ScanArgs {
        u: du,
        delta: ddelta,
        a: batch_sum(da_part)
            .reshape([channels, n_state])
            .into_primitive()
            .tensor(),
        bm: group_sum(dbm_part),
        cm: group_sum(dcm_part),
        d_skip: batch_sum(dskip_part)
            .reshape([channels])
            .into_primitive()
            .tensor(),
        delta_bias: batch_sum(dbias_part)
            .reshape([channels])
            .into_primitive()
            .tensor(),
    }
}
