//! The network's stride-1 "same" convolutions, 2D and 3D, with our own backward pass on the CPU.
//!
//! A profile of a `tiny` training step on Flex (`benchmarks/results/train-step-profile-cpu.md`)
//! put a third of the step in burn's generic convolution backward: the weight gradient is a
//! convolution of `swap_dims` views, which Flex first copies element by element, and the input
//! gradient a transposed 3D convolution. Here, per image (or volume), one im2col and two GEMMs on
//! contiguous buffers give both. A 2D image is a volume of depth 1 with a kernel of depth 1, so
//! both ranks run the same loops. On Flex the forward pass is ours too: the same im2col (row
//! copies, where Flex's fills element by element) in tiles that stay in cache, one GEMM per tile.
//! GPU backends keep burn's convolutions.

use std::ops::Range;

use burn::backend::autodiff::{checkpoint::strategy::CheckpointStrategy, Autodiff};
use burn::nn::conv::{Conv2d, Conv3d, ConvTranspose2d, ConvTranspose3d};
use burn::nn::PaddingConfig3d;
use burn::prelude::*;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{TensorData, TensorMetadata, TensorPrimitive};
use rayon::prelude::*;

use vision_ssm::host::{from_host, host_view, matmul, transpose};
use vision_ssm::scan::FloatTensor;

/// Stride 1, padding `kernel / 2`, no dilation, no groups: the output has the input's size.
fn same_options<const D: usize>(kernel: [usize; D]) -> ConvOptions<D> {
    ConvOptions::new([1; D], kernel.map(|k| k / 2), [1; D], 1)
}

/// The weight primitive's dims: `[C_out, C_in, k, k]` (2D) or `[C_out, C_in, kd, k, k]` (3D).
fn dims_of<B: Backend>(t: &FloatTensor<B>) -> Vec<usize> {
    t.shape().to_vec()
}

/// Gradients of a convolution: input (when asked for), weight, bias (when it has one).
pub type ConvGrads<B> = vision_ssm::weighted::WeightedGrads<B>;

/// A backend that runs the network's "same" convolutions (stride 1, odd square or cubic kernel
/// `k`, padding `k / 2`, no dilation or groups), 2D or 3D by the weight's rank, and their backward.
pub trait ConvBackend: Backend {
    /// Whether the backward pass runs on the host (im2col and GEMMs, see the module doc) rather
    /// than through burn's generic convolution backward.
    const HOST_BACKWARD: bool = false;

    /// 2D: `x: [B, C_in, H, W]`, `weight: [C_out, C_in, k, k]` -> `[B, C_out, H, W]`;
    /// 3D: `x: [B, C_in, D, H, W]`, `weight: [C_out, C_in, k, k, k]` -> `[B, C_out, D, H, W]`;
    /// `bias: [C_out]`.
    fn conv_same(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        match dims_of::<Self>(&weight)[..] {
            [_, _, kh, kw] => Self::conv2d(x, weight, bias, same_options([kh, kw])),
            [_, _, kd, kh, kw] => Self::conv3d(x, weight, bias, same_options([kd, kh, kw])),
            ref other => panic!("conv_same: a weight of rank 4 or 5, not {other:?}"),
        }
    }

    /// Gradients given `dy`: of `x` when `need_dx`, of the weight, of the bias when `need_db`.
    fn conv_same_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        need_dx: bool,
        need_db: bool,
    ) -> ConvGrads<Self> {
        if Self::HOST_BACKWARD {
            return host_backward::<Self>(x, weight, dy, need_dx, need_db, COL_BUDGET_BYTES);
        }
        let db = need_db.then(|| channel_sums::<Self>(dy.clone()));
        match dims_of::<Self>(&weight)[..] {
            [_, _, kh, kw] => {
                let options = same_options([kh, kw]);
                let dx = need_dx.then(|| {
                    Self::conv2d_x_backward(x.clone(), weight.clone(), dy.clone(), options.clone())
                });
                let dw = Self::conv2d_weight_backward(x, weight, dy, options);
                (dx, dw, db)
            }
            [_, _, kd, kh, kw] => {
                let options = same_options([kd, kh, kw]);
                let dx = need_dx.then(|| {
                    Self::conv3d_x_backward(x.clone(), weight.clone(), dy.clone(), options.clone())
                });
                let dw = Self::conv3d_weight_backward(x, weight, dy, options);
                (dx, dw, db)
            }
            ref other => panic!("conv_same_backward: a weight of rank 4 or 5, not {other:?}"),
        }
    }

    /// The decoders' upsampling: a transposed convolution whose kernel is its stride, with no
    /// padding. 2D: `x: [B, C_in, H, W]`, `weight: [C_in, C_out, kh, kw]` ->
    /// `[B, C_out, H·kh, W·kw]`; 3D likewise with a depth. By default burn's.
    fn conv_up(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        super::upconv::generic_forward::<Self>(x, weight, bias)
    }

    /// Gradients of [`ConvBackend::conv_up`] given `dy`, as [`ConvBackend::conv_same_backward`]
    /// gives them.
    fn conv_up_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        need_dx: bool,
        need_db: bool,
    ) -> ConvGrads<Self> {
        if Self::HOST_BACKWARD {
            return super::upconv::host_backward::<Self>(x, weight, dy, need_dx, need_db);
        }
        super::upconv::generic_backward::<Self>(x, weight, dy, need_dx, need_db)
    }
}

/// The bias gradient: `dy` summed over every axis but the channels.
fn channel_sums<B: Backend>(dy: FloatTensor<B>) -> FloatTensor<B> {
    let c = dims_of::<B>(&dy)[1];
    let sums = match dy.shape().num_dims() {
        4 => Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(dy))
            .sum_dim(0)
            .sum_dim(2)
            .sum_dim(3)
            .reshape([c]),
        5 => Tensor::<B, 5>::from_primitive(TensorPrimitive::Float(dy))
            .sum_dim(0)
            .sum_dim(2)
            .sum_dim(3)
            .sum_dim(4)
            .reshape([c]),
        rank => panic!("conv bias gradient: rank 4 or 5, not {rank}"),
    };
    sums.into_primitive().tensor()
}

#[cfg(feature = "cuda")]
impl ConvBackend for burn::backend::Cuda {}

impl ConvBackend for burn::backend::Flex {
    const HOST_BACKWARD: bool = true;

    fn conv_same(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        host_forward::<Self>(x, weight, bias, FORWARD_TILE_BYTES)
    }

    fn conv_up(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        super::upconv::host_forward::<Self>(x, weight, bias)
    }
}

/// Runs a convolution's weight and bias through [`ConvBackend::conv_same`].
fn run_same<B: ConvBackend, const D: usize>(
    weight: Tensor<B, D>,
    bias: Option<Tensor<B, 1>>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::conv_same(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        bias.map(|b| b.into_primitive().tensor()),
    )))
}

/// Runs `conv` through [`ConvBackend::conv_same`]. `conv` must be a stride-1 convolution with an
/// odd square kernel and padding `k / 2`, no dilation or groups, as `network.rs` builds them.
pub fn forward_same<B: ConvBackend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    debug_assert!(
        conv.stride == [1, 1]
            && conv.dilation == [1, 1]
            && conv.groups == 1
            && conv.kernel_size[0] == conv.kernel_size[1]
            && conv.kernel_size[0] % 2 == 1,
        "forward_same needs a stride-1 'same' convolution"
    );
    run_same(conv.weight.val(), conv.bias.as_ref().map(|b| b.val()), x)
}

/// The 3D [`forward_same`]: `conv` must have stride 1, an odd cubic kernel `k` and padding
/// `k / 2` on every axis, no dilation or groups, as `network3d.rs` builds its 3³ and 1³ convs.
pub fn forward_same_3d<B: ConvBackend>(conv: &Conv3d<B>, x: Tensor<B, 5>) -> Tensor<B, 5> {
    let k = conv.kernel_size[0];
    let p = k / 2;
    debug_assert!(
        conv.stride == [1, 1, 1]
            && conv.dilation == [1, 1, 1]
            && conv.groups == 1
            && conv.kernel_size == [k; 3]
            && k % 2 == 1
            && (conv.padding == PaddingConfig3d::Same
                || conv.padding == PaddingConfig3d::Explicit(p, p, p)),
        "forward_same_3d needs a stride-1 'same' convolution"
    );
    run_same(conv.weight.val(), conv.bias.as_ref().map(|b| b.val()), x)
}

/// `layer` applied to `x: [B, C_in, H, W]` through [`ConvBackend::conv_up`]; `layer` must have
/// kernel = stride and no padding, dilation or groups, as `network.rs` builds its decoders'.
pub fn upsample<B: ConvBackend>(layer: &ConvTranspose2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    debug_assert!(
        layer.kernel_size == layer.stride
            && layer.padding == [0; 2]
            && layer.padding_out == [0; 2]
            && layer.dilation == [1; 2]
            && layer.groups == 1,
        "upsample needs a transposed conv with kernel = stride and no padding"
    );
    run_up(layer.weight.val(), layer.bias.as_ref().map(|b| b.val()), x)
}

/// The 3D [`upsample`], for `network3d.rs`'s decoders.
pub fn upsample_3d<B: ConvBackend>(layer: &ConvTranspose3d<B>, x: Tensor<B, 5>) -> Tensor<B, 5> {
    debug_assert!(
        layer.kernel_size == layer.stride
            && layer.padding == [0; 3]
            && layer.padding_out == [0; 3]
            && layer.dilation == [1; 3]
            && layer.groups == 1,
        "upsample_3d needs a transposed conv with kernel = stride and no padding"
    );
    run_up(layer.weight.val(), layer.bias.as_ref().map(|b| b.val()), x)
}

/// `x` through the backend's [`ConvBackend::conv_up`] with `weight` and `bias`.
fn run_up<B: ConvBackend, const D: usize>(
    weight: Tensor<B, D>,
    bias: Option<Tensor<B, 1>>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::conv_up(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        bias.map(|b| b.into_primitive().tensor()),
    )))
}

/// The most bytes one im2col buffer of the backward pass may take; a volume whose buffer would
/// be larger is done in chunks of output lines. The full buffer of a 3³ conv from 32 channels on
/// a 40×40×56 patch is 310 MB per sample: buffers that size are fresh mappings whose page faults
/// cost more than the GEMMs (see the profile), and one per thread adds up. Under glibc's 32 MiB
/// mmap threshold a buffer is reused from the heap instead.
const COL_BUDGET_BYTES: usize = 16 << 20;

/// The forward pass's im2col tiles: small enough to stay in a core's L2 cache while the GEMM
/// reads them, and many per image so that two threads share even a batch of one.
const FORWARD_TILE_BYTES: usize = 512 << 10;

/// Sizes of one convolution: channels in and out, volume depth, rows and columns, kernel depth
/// and in-plane side. A 2D convolution is `depth = kd = 1`.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    cin: usize,
    cout: usize,
    depth: usize,
    rows: usize,
    cols: usize,
    kd: usize,
    k: usize,
}

/// Input index of output index `i` under kernel tap `tap` (kernel size `k`, padding `k / 2`) on
/// an axis of `len`, if inside.
fn source(i: usize, tap: usize, k: usize, len: usize) -> Option<usize> {
    (i + tap).checked_sub(k / 2).filter(|&s| s < len)
}

impl Sizes {
    /// From the input's and weight's dims, 2D (`[B, C, H, W]`) or 3D (`[B, C, D, H, W]`).
    fn of(xdims: &[usize], wdims: &[usize]) -> Self {
        match (xdims, wdims) {
            (&[_, cin, rows, cols], &[cout, _, k, _]) => Self {
                cin,
                cout,
                depth: 1,
                rows,
                cols,
                kd: 1,
                k,
            },
            (&[_, cin, depth, rows, cols], &[cout, _, kd, k, _]) => Self {
                cin,
                cout,
                depth,
                rows,
                cols,
                kd,
                k,
            },
            _ => panic!("conv backward: input {xdims:?} and weight {wdims:?}"),
        }
    }

    /// Rows of the im2col matrix (`C_in · kd · k · k`), one per weight of an output channel.
    fn taps(&self) -> usize {
        self.cin * self.kd * self.k * self.k
    }

    fn plane(&self) -> usize {
        self.rows * self.cols
    }

    fn voxels(&self) -> usize {
        self.depth * self.plane()
    }

    /// Input channel and kernel plane, row and column of im2col row `r`, in the weight's order.
    fn tap(&self, r: usize) -> (usize, usize, usize, usize) {
        let k = self.k;
        (
            r / (self.kd * k * k),
            (r / (k * k)) % self.kd,
            (r / k) % k,
            r % k,
        )
    }

    /// For kernel column `kx`: the output columns whose input column is inside the image, and
    /// the input column of the first of them.
    fn valid_cols(&self, kx: usize) -> (Range<usize>, usize) {
        let p = self.k / 2;
        let start = p.saturating_sub(kx);
        let end = (self.cols + p).saturating_sub(kx).min(self.cols);
        (start..end.max(start), start + kx - p)
    }

    /// Output lines (rows of one depth plane; a volume has `depth · rows` of them) per im2col
    /// chunk: as many as fit in `budget_bytes`, at least one.
    fn chunk_lines(&self, budget_bytes: usize) -> usize {
        let per_line = self.taps() * self.cols * std::mem::size_of::<f32>();
        (budget_bytes / per_line.max(1)).clamp(1, (self.depth * self.rows).max(1))
    }

    /// The input voxel offset (within one channel) of output line `line` under kernel plane `kz`
    /// and row `ky`, if that input line is inside the volume.
    fn source_line(&self, line: usize, kz: usize, ky: usize) -> Option<usize> {
        let (z, y) = (line / self.rows, line % self.rows);
        let sz = source(z, kz, self.kd, self.depth)?;
        let sy = source(y, ky, self.k, self.rows)?;
        Some(sz * self.plane() + sy * self.cols)
    }
}

/// `col[((ci·kd + kz)·k + ky)·k + kx][(l - l0)·W + x] = volume[ci][z + kz - pd][y + ky - p]
/// [x + kx - p]` for the output lines `l = z·H + y` in `lines` (starting at `l0`), zero outside.
fn im2col(volume: &[f32], s: Sizes, lines: Range<usize>, col: &mut [f32]) {
    let cols = s.cols;
    let n = lines.len() * cols;
    for (r, row) in col.chunks_exact_mut(n).enumerate() {
        let (ci, kz, ky, kx) = s.tap(r);
        let (xs, sx0) = s.valid_cols(kx);
        let channel = &volume[ci * s.voxels()..][..s.voxels()];
        for (line, out) in lines.clone().zip(row.chunks_exact_mut(cols)) {
            match s.source_line(line, kz, ky) {
                Some(start) if !xs.is_empty() => {
                    out[..xs.start].fill(0.0);
                    out[xs.end..].fill(0.0);
                    out[xs.clone()].copy_from_slice(&channel[start + sx0..][..xs.len()]);
                }
                _ => out.fill(0.0),
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds every column entry back onto the voxel it came from (which may
/// lie outside `lines`: the kernel reaches `k / 2` rows and `kd / 2` planes beyond them).
fn col2im_add(col: &[f32], s: Sizes, lines: Range<usize>, volume: &mut [f32]) {
    let cols = s.cols;
    let n = lines.len() * cols;
    for (r, row) in col.chunks_exact(n).enumerate() {
        let (ci, kz, ky, kx) = s.tap(r);
        let (xs, sx0) = s.valid_cols(kx);
        if xs.is_empty() {
            continue;
        }
        let channel = &mut volume[ci * s.voxels()..][..s.voxels()];
        for (line, src) in lines.clone().zip(row.chunks_exact(cols)) {
            if let Some(start) = s.source_line(line, kz, ky) {
                let dst = &mut channel[start + sx0..][..xs.len()];
                dst.iter_mut()
                    .zip(&src[xs.clone()])
                    .for_each(|(d, v)| *d += v);
            }
        }
    }
}

/// One image's (or volume's) share of the gradients: its transposed weight gradient
/// (`taps × C_out`) and bias gradient (returned), and its input gradient (into `dx` when asked
/// for), `chunk` output lines at a time.
fn sample_backward(
    volume: &[f32],
    dy: &[f32],
    weight: &[f32],
    s: Sizes,
    chunk: usize,
    mut dx: Option<&mut [f32]>,
) -> (Vec<f32>, Vec<f32>) {
    let (taps, cols, voxels) = (s.taps(), s.cols, s.voxels());
    let mut col = vec![0.0f32; taps * chunk * cols];
    // dWᵀ (taps × C_out), transposed into dW at the end: gemm runs this orientation of the same
    // product up to 3× faster when C_out is narrow (`benchmarks/results/conv-host-forward.md`).
    let mut dwt = vec![0.0f32; taps * s.cout];
    if let Some(dx) = dx.as_deref_mut() {
        dx.fill(0.0);
    }
    let total = s.depth * s.rows;
    for l0 in (0..total).step_by(chunk) {
        let lines = l0..(l0 + chunk).min(total);
        let n = lines.len() * cols;
        let col = &mut col[..taps * n];
        im2col(volume, s, lines.clone(), col);
        // This chunk's columns of dY (C_out × n, rows `voxels` apart) and their transpose.
        let dy_chunk = &dy[l0 * cols..];
        // dWᵀ (taps × C_out) += col (taps × n) · dYᵀ (n × C_out).
        let dy_t = (dy_chunk, 1, voxels);
        matmul(&mut dwt, [taps, s.cout, n], (col, n, 1), dy_t, l0 > 0);
        if let Some(dx) = dx.as_deref_mut() {
            // dcol (taps × n) = Wᵀ (taps × C_out) · dY (C_out × n), then back onto the volume.
            let dy_chunk = (dy_chunk, voxels, 1);
            matmul(col, [taps, n, s.cout], (weight, 1, taps), dy_chunk, false);
            col2im_add(col, s, lines, dx);
        }
    }
    let db = dy.chunks_exact(voxels).map(|c| c.iter().sum()).collect();
    (dwt, db)
}

/// One image's (or volume's) output `y` (`C_out × voxels`): per tile of `chunk` output lines,
/// an im2col and one GEMM, tiles in parallel.
fn sample_forward(
    volume: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    s: Sizes,
    chunk: usize,
    y: &mut [f32],
) {
    let (taps, cols, voxels) = (s.taps(), s.cols, s.voxels());
    let total = s.depth * s.rows;
    let chunk = chunk.max(1);
    let tiles: Vec<(usize, Vec<f32>)> = (0..total.div_ceil(chunk))
        .into_par_iter()
        .map(|tile| {
            let l0 = tile * chunk;
            let lines = l0..(l0 + chunk).min(total);
            let n = lines.len() * cols;
            let mut out = vec![0.0f32; s.cout * n];
            if s.kd * s.k * s.k == 1 {
                // A 1×1 kernel's im2col is the input itself.
                let x = (&volume[l0 * cols..], voxels, 1);
                matmul(&mut out, [s.cout, n, taps], (weight, taps, 1), x, false);
            } else {
                let mut col = vec![0.0f32; taps * n];
                im2col(volume, s, lines, &mut col);
                matmul(
                    &mut out,
                    [s.cout, n, taps],
                    (weight, taps, 1),
                    (&col, n, 1),
                    false,
                );
            }
            (l0, out)
        })
        .collect();
    for (l0, out) in tiles {
        let n = out.len() / s.cout.max(1);
        for (co, row) in out.chunks_exact(n.max(1)).enumerate() {
            let b = bias.map_or(0.0, |b| b[co]);
            let dst = &mut y[co * voxels + l0 * cols..][..n];
            dst.iter_mut().zip(row).for_each(|(d, &v)| *d = v + b);
        }
    }
}

/// The host forward: images in parallel, each in im2col tiles of at most `budget_bytes`.
fn host_forward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    budget_bytes: usize,
) -> FloatTensor<B> {
    let device = B::float_device(&x);
    let (x, xdims) = host_view::<B>(&x);
    let (weight, wdims) = host_view::<B>(&weight);
    let bias = bias.as_ref().map(|b| host_view::<B>(b).0);
    let s = Sizes::of(&xdims, &wdims);
    let chunk = s.chunk_lines(budget_bytes);
    let (sample_len, out_len) = (s.cin * s.voxels(), s.cout * s.voxels());
    let mut ydims = xdims.clone();
    ydims[1] = s.cout;
    let mut y = vec![0.0f32; xdims[0] * out_len];
    y.par_chunks_mut(out_len.max(1))
        .enumerate()
        .for_each(|(i, yi)| {
            let volume = &x[i * sample_len..(i + 1) * sample_len];
            sample_forward(volume, &weight, bias.as_deref(), s, chunk, yi);
        });
    from_host::<B>(y, ydims, &device)
}

/// The host backward: samples in parallel, each in im2col chunks of at most `budget_bytes`.
fn host_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    dy: FloatTensor<B>,
    need_dx: bool,
    need_db: bool,
    budget_bytes: usize,
) -> ConvGrads<B> {
    let device = B::float_device(&x);
    let (x, xdims) = host_view::<B>(&x);
    let (weight, wdims) = host_view::<B>(&weight);
    let (dy, _) = host_view::<B>(&dy);
    let s = Sizes::of(&xdims, &wdims);
    let chunk = s.chunk_lines(budget_bytes);
    let (sample_len, out_len) = (s.cin * s.voxels(), s.cout * s.voxels());
    let one = |i: usize, dx: Option<&mut [f32]>| {
        let volume = &x[i * sample_len..(i + 1) * sample_len];
        let dy = &dy[i * out_len..(i + 1) * out_len];
        sample_backward(volume, dy, &weight, s, chunk, dx)
    };
    let mut dx = vec![0.0f32; if need_dx { x.len() } else { 0 }];
    let parts: Vec<(Vec<f32>, Vec<f32>)> = if need_dx {
        dx.par_chunks_mut(sample_len.max(1))
            .enumerate()
            .map(|(i, dxi)| one(i, Some(dxi)))
            .collect()
    } else {
        (0..xdims[0])
            .into_par_iter()
            .map(|i| one(i, None))
            .collect()
    };
    let mut dwt = vec![0.0f32; weight.len()];
    let mut db = vec![0.0f32; s.cout];
    for (pw, pb) in parts {
        dwt.iter_mut().zip(pw).for_each(|(d, v)| *d += v);
        db.iter_mut().zip(pb).for_each(|(d, v)| *d += v);
    }
    let dw = transpose(&dwt, s.taps(), s.cout);
    (
        need_dx.then(|| from_host::<B>(dx, xdims, &device)),
        from_host::<B>(dw, wdims, &device),
        need_db.then(|| B::float_from_data(TensorData::new(db, [s.cout]), &device)),
    )
}

impl<B: ConvBackend, C: CheckpointStrategy> ConvBackend for Autodiff<B, C> {
    fn conv_same(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        vision_ssm::weighted::record::<B, C>(B::conv_same, B::conv_same_backward, x, weight, bias)
    }

    fn conv_same_backward(
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: bool,
        _: bool,
    ) -> ConvGrads<Self> {
        // Reached only for second-order derivatives, which training never asks for.
        unimplemented!("second-order gradients of the convolution are not supported")
    }

    fn conv_up(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        vision_ssm::weighted::record::<B, C>(B::conv_up, B::conv_up_backward, x, weight, bias)
    }

    fn conv_up_backward(
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: bool,
        _: bool,
    ) -> ConvGrads<Self> {
        // As for conv_same_backward: only second-order derivatives reach it.
        unimplemented!("second-order gradients of the transposed convolution are not supported")
    }
}

#[cfg(test)]
#[path = "conv_tests.rs"]
mod tests;
