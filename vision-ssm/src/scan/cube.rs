//! The selective scan as CubeCL kernels, for burn's `CubeBackend` on any CubeCL runtime (CUDA,
//! wgpu/Vulkan, ...): the same source runs on an NVIDIA GPU and, in CI, on lavapipe.
//!
//! Semantics as in [`super::cpu`]. Everything (softplus, exp(ΔA), ΔBu, the recurrence, C·h, D·u)
//! happens inside the kernels; no `[B, D, L, N]` tensor exists.
//!
//! - Forward ([`scan_forward_kernel`]): one unit per (batch, channel) walks L sequentially with
//!   its N-state in a local array that the unrolled state loops keep in registers. Channels of
//!   one direction sit in neighbouring units, so B_t and C_t loads are broadcasts. Optionally it
//!   stores the state entering every block of [`GPU_CHUNK`] steps (`[B·D, ⌈L/CHUNK⌉, N]`).
//! - Backward ([`scan_backward_kernel`]): one cube per (batch, direction, group of up to
//!   [`GROUP`] channels), one unit per channel. It walks the blocks in reverse; each unit
//!   recomputes its block's states from the block's checkpoint into a local array
//!   (`(CHUNK + 1) × N`) and then walks the block backwards carrying dL/dh. dB and dC, sums over
//!   the direction's channels, are reduced without atomics: each step the units put their
//!   N + N terms in shared memory and, after a barrier, the units sum columns of it and write one
//!   partial per group (`[B, K, groups, N, L]`, summed over groups afterwards with burn ops).
//!   dA, dD and dbias accumulate per unit over L and are written once per (batch, channel), then
//!   summed over the batch with burn ops.
//!
//! The checkpoints come either from the training forward pass ([`forward`] with `save`) or from
//! a checkpoint-only forward launch at the start of [`backward`].
//! Not done (yet): a parallel scan within a block; L is walked sequentially, so the GPU is
//! filled only through B·D units (B·D ≥ a few thousand in VMamba layers).

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

use super::ScanTensors;

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

/// Forward scan, one unit per (batch, channel); see the module docs. `y` is written when
/// `write_y`, the block checkpoints into `states` when `save` (otherwise both may be dummies).
#[cube(launch)]
fn scan_forward_kernel<F: Float>(
    u: &Tensor<F>,
    delta: &Tensor<F>,
    a: &Tensor<F>,
    bm: &Tensor<F>,
    cm: &Tensor<F>,
    d_skip: &Tensor<F>,
    delta_bias: &Tensor<F>,
    y: &mut Tensor<F>,
    states: &mut Tensor<F>,
    #[comptime] n_state: usize,
    #[comptime] chunk: usize,
    #[comptime] write_y: bool,
    #[comptime] save: bool,
    #[define(F)] _dtype: StorageType,
) {
    let channels = u.shape(1);
    let len = u.shape(2);
    let k_dirs = bm.shape(1);
    let row = ABSOLUTE_POS;
    if row >= u.shape(0) * channels {
        terminate!();
    }
    let b = row / channels;
    let d = row % channels;
    let k = d / (channels / k_dirs);
    let bc = (b * k_dirs + k) * n_state * len;
    let n_chunks = (len + chunk - 1) / chunk;
    let bias = delta_bias[d];
    let skip = d_skip[d];

    let mut h = Array::<F>::new(n_state);
    let mut av = Array::<F>::new(n_state);
    #[unroll]
    for i in 0..n_state {
        h[i] = F::new(0.0);
        av[i] = a[d * n_state + i];
    }
    for l in 0..len {
        if save {
            if l % chunk == 0 {
                let at = (row * n_chunks + l / chunk) * n_state;
                #[unroll]
                for i in 0..n_state {
                    states[at + i] = h[i];
                }
            }
        }
        let x = u[row * len + l];
        let dt = softplus::<F>(delta[row * len + l] + bias);
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
}

/// Backward scan, one cube per (batch, direction, channel group), one unit per channel; see the
/// module docs. Units past the direction's last channel compute on a clamped channel with their
/// dB/dC terms masked to zero, so every unit reaches every barrier.
#[cube(launch)]
fn scan_backward_kernel<F: Float>(
    u: &Tensor<F>,
    delta: &Tensor<F>,
    a: &Tensor<F>,
    bm: &Tensor<F>,
    cm: &Tensor<F>,
    d_skip: &Tensor<F>,
    delta_bias: &Tensor<F>,
    dy: &Tensor<F>,
    states: &Tensor<F>,
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
    let channels = u.shape(1);
    let len = u.shape(2);
    let k_dirs = bm.shape(1);
    let per_dir = channels / k_dirs;
    let groups = n_groups as usize;
    let cube = CUBE_POS as usize;
    let g = cube % groups;
    let k = (cube / groups) % k_dirs;
    let b = cube / (groups * k_dirs);
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
    let bc = (b * k_dirs + k) * n_state * len;
    let part = ((b * k_dirs + k) * groups + g) * n_state * len;
    let n_chunks = (len + chunk - 1) / chunk;
    let bias = delta_bias[d];
    let skip = d_skip[d];
    let width = 2 * n_state;

    let mut sums = SharedMemory::<F>::new(group * 2 * n_state);
    let mut av = Array::<F>::new(n_state);
    let mut carry = Array::<F>::new(n_state);
    let mut da = Array::<F>::new(n_state);
    // hs[s·N..] is the state after step s - 1 of the block (hs[0..N] its checkpoint).
    let mut hs = Array::<F>::new((chunk + 1) * n_state);
    #[unroll]
    for i in 0..n_state {
        av[i] = a[d * n_state + i];
        carry[i] = F::new(0.0);
        da[i] = F::new(0.0);
    }
    let mut dskip = F::new(0.0);
    let mut dbias = F::new(0.0);

    for cc in 0..n_chunks {
        let c = n_chunks - 1 - cc;
        let l0 = c * chunk;
        let mut steps = len - l0;
        if steps > chunk {
            steps = chunk;
        }
        // Recompute the block's states from its checkpoint.
        #[unroll]
        for i in 0..n_state {
            hs[i] = states[(row * n_chunks + c) * n_state + i];
        }
        for s in 0..steps {
            let l = l0 + s;
            let dt = softplus::<F>(delta[row * len + l] + bias);
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
    }
    if valid {
        #[unroll]
        for i in 0..n_state {
            da_part[row * n_state + i] = da[i];
        }
        dskip_part[row] = dskip;
        dbias_part[row] = dbias;
    }
}

/// Sizes of a scan call, read from the shapes of u and B (checked against every input).
#[derive(Clone, Copy, Debug)]
struct CubeDims {
    batch: usize,
    channels: usize,
    len: usize,
    k_dirs: usize,
    n_state: usize,
}

impl CubeDims {
    fn of<R: CubeRuntime>(x: &[&CubeTensor<R>; 7]) -> Self {
        let s = x.map(|t| t.meta.shape().to_vec());
        assert!(
            s[0].len() == 3 && s[3].len() == 4,
            "selective_scan: u must be [B, D, L] and bm [B, K, N, L]; got {:?}, {:?}",
            s[0],
            s[3]
        );
        let dims = Self {
            batch: s[0][0],
            channels: s[0][1],
            len: s[0][2],
            k_dirs: s[3][1],
            n_state: s[3][2],
        };
        let CubeDims {
            batch: b,
            channels: d,
            len: l,
            k_dirs: k,
            n_state: n,
        } = dims;
        assert!(
            k >= 1 && d % k == 0 && n >= 1,
            "selective_scan: channels ({d}) must be a multiple of k_dirs ({k}) >= 1, d_state ({n}) >= 1"
        );
        let want = [
            vec![b, d, l],
            vec![b, d, l],
            vec![d, n],
            vec![b, k, n, l],
            vec![b, k, n, l],
            vec![d],
            vec![d],
        ];
        assert_eq!(s.to_vec(), want.to_vec(), "selective_scan: input shapes");
        dims
    }

    fn n_chunks(&self) -> usize {
        self.len.div_ceil(GPU_CHUNK)
    }
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
    [x.u, x.delta, x.a, x.bm, x.cm, x.d_skip, x.delta_bias].map(into_contiguous)
}

/// Launches the forward kernel: `y` when `write_y`, the block checkpoints when `save`.
fn launch_forward<R: CubeRuntime>(
    x: &[CubeTensor<R>; 7],
    write_y: bool,
    save: bool,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let dims = CubeDims::of(&[&x[0], &x[1], &x[2], &x[3], &x[4], &x[5], &x[6]]);
    let u = &x[0];
    for t in &x[1..] {
        u.assert_is_on_same_device(t);
        assert_eq!(t.dtype, u.dtype, "selective_scan: inputs of mixed dtypes");
    }
    let y = if write_y {
        empty(u, vec![dims.batch, dims.channels, dims.len])
    } else {
        empty(u, vec![1])
    };
    let states = if save {
        empty(
            u,
            vec![dims.batch * dims.channels, dims.n_chunks(), dims.n_state],
        )
    } else {
        empty(u, vec![1])
    };
    let rows = dims.batch * dims.channels;
    if rows == 0 || dims.len == 0 {
        return (y, states);
    }
    let cubes = rows.div_ceil(FORWARD_CUBE as usize) as u32;
    let [u, delta, a, bm, cm, d_skip, delta_bias] = x.clone();
    let client = u.client.clone();
    let dtype = u.dtype;
    scan_forward_kernel::launch::<R>(
        &client,
        CubeCount::Static(cubes, 1, 1),
        CubeDim::new_1d(FORWARD_CUBE),
        u.into_tensor_arg(),
        delta.into_tensor_arg(),
        a.into_tensor_arg(),
        bm.into_tensor_arg(),
        cm.into_tensor_arg(),
        d_skip.into_tensor_arg(),
        delta_bias.into_tensor_arg(),
        y.clone().into_tensor_arg(),
        states.clone().into_tensor_arg(),
        dims.n_state,
        GPU_CHUNK,
        write_y,
        save,
        dtype.into(),
    );
    (y, states)
}

/// Forward scan on the device: `y: [B, D, L]` and, when `save`, the state checkpoints
/// `[B·D, ⌈L/GPU_CHUNK⌉, N]` that [`backward`] can take instead of recomputing them.
pub fn forward<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: ScanTensors<Cube<R, F, I, BT>>,
    save: bool,
) -> (CubeTensor<R>, Option<CubeTensor<R>>) {
    let x = contiguous(x);
    let (y, states) = launch_forward(&x, true, save);
    (y, save.then_some(states))
}

/// The backward kernel's channel grouping for E channels per direction: (units per cube,
/// cubes per direction). Small E gets a cube of the next power of two, not a full [`GROUP`].
fn grouping(per_dir: usize) -> (usize, usize) {
    let group = GROUP.min(per_dir.next_power_of_two()).max(1);
    (group, per_dir.div_ceil(group).max(1))
}

/// Gradients of all seven inputs given `dy: [B, D, L]`, from saved checkpoints (from
/// [`forward`] with `save`) or by recomputing them first.
pub fn backward<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: ScanTensors<Cube<R, F, I, BT>>,
    saved: Option<CubeTensor<R>>,
    dy: CubeTensor<R>,
) -> ScanTensors<Cube<R, F, I, BT>> {
    let x = contiguous(x);
    let dims = CubeDims::of(&[&x[0], &x[1], &x[2], &x[3], &x[4], &x[5], &x[6]]);
    let dy = into_contiguous(dy);
    assert_eq!(
        dy.meta.shape().to_vec(),
        vec![dims.batch, dims.channels, dims.len],
        "selective_scan: dy must be [B, D, L]"
    );
    let CubeDims {
        batch,
        channels,
        len,
        k_dirs,
        n_state,
    } = dims;
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
    let da_part = part(vec![batch, channels * n_state]);
    let dskip_part = part(vec![batch, channels]);
    let dbias_part = part(vec![batch, channels]);
    let dbm_part = part(vec![batch * k_dirs, groups, n_state * len]);
    let dcm_part = part(vec![batch * k_dirs, groups, n_state * len]);
    if launch {
        let states = match saved {
            Some(s) => s,
            None => launch_forward(&x, false, true).1,
        };
        let [u, delta, a, bm, cm, d_skip, delta_bias] = x.clone();
        let client = u.client.clone();
        let dtype = u.dtype;
        scan_backward_kernel::launch::<R>(
            &client,
            CubeCount::Static((batch * k_dirs * groups) as u32, 1, 1),
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
    ScanTensors {
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
