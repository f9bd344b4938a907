//! Fused CPU selective scan (VMamba layout) with a hand-written backward pass, on plain slices.
//!
//! Semantics, all float32 row-major: channel `d` of `D = K * E` belongs to direction `k = d / E`;
//! `dt = softplus(delta[b,d,l] + delta_bias[d])`,
//! `h[n] = exp(dt * a[d,n]) * h[n] + dt * bm[b,k,n,l] * u[b,d,l]` (from `h = 0`),
//! `y[b,d,l] = sum_n cm[b,k,n,l] * h[n] + d_skip[d] * u[b,d,l]`.
//!
//! Speed comes from:
//! 1. One sequential pass over L per *group* of W channels of one direction (W = 16 with
//!    AVX-512, 8 otherwise), vectorised across the channels, with the group's whole state
//!    (`[N][W]`) in vector registers. B_t and C_t are the same for every channel of a direction, so
//!    each step broadcasts them, and the sums over the state (y, du, d delta) accumulate
//!    lane-wise with no horizontal sums. Per state element and step that leaves about a dozen
//!    vector instructions, most of them the exponential.
//! 2. Explicit SIMD: the kernels are written once over `Simd` (AVX-512, AVX2+FMA, or portable
//!    arrays), compiled for each instruction set and picked at run time, because the workspace
//!    builds for baseline x86-64; a branch-free polynomial exp2 (`vscalefps` for the exponent
//!    with AVX-512) replaces libm's scalar `expf`.
//! 3. Memory: u, delta, dy, du, d delta are moved between their [D, L] rows and the lane-major
//!    blocks the kernels use with register transposes, and the next block's rows are prefetched.
//!
//! The backward pass never stores [B, D, L, N]: the forward pass can keep the state entering
//! every block of [`CHUNK`] steps ([`scan_forward_saving`]; otherwise the backward pass recomputes
//! those first), and the backward pass walks the blocks in reverse, recomputing one block's
//! states at a time. It runs in parallel over (batch, direction, part of the direction's
//! channels); dB and dC, sums over the direction's channels, accumulate lane-wise per block and
//! are reduced once per block, with a partial per part when a direction is split.

mod backward;
mod forward;
mod isa;
mod layout;
mod portable;
mod simd;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

use backward::{backward_parts, backward_with};
use forward::{forward_impl, forward_with};
use isa::Isa;
pub(crate) use layout::BatchShares;
pub use layout::{ScanDims, ScanGrads, ScanInputs};

/// Steps between stored state checkpoints (the blocks the backward pass recomputes).
pub const CHUNK: usize = 64;

/// Output y [B, D, L] of the selective scan. Panics if `dims.check(x)` fails.
pub fn scan_forward(dims: ScanDims, x: &ScanInputs) -> Vec<f32> {
    forward_with(Isa::detect(), dims, x)
}

/// What a forward pass keeps for the backward pass: the state entering every block of [`CHUNK`]
/// steps of every channel, 1/CHUNK of all the states (no [B, D, L, N] tensor).
#[derive(Clone, Debug, PartialEq)]
pub struct ScanCheckpoints {
    dims: ScanDims,
    isa: Isa,
    chunk: usize,
    /// [B, K, groups, chunks, NP, W], in the instruction set's lane layout.
    data: Vec<f32>,
}

impl ScanCheckpoints {
    /// Bytes of state held.
    pub fn bytes(&self) -> usize {
        4 * self.data.len()
    }
}

/// Output y [B, D, L], and the checkpoints that let [`scan_backward_from`] skip recomputing the
/// states from the start. Panics if `dims.check(x)` fails.
pub fn scan_forward_saving(dims: ScanDims, x: &ScanInputs) -> (Vec<f32>, ScanCheckpoints) {
    let isa = Isa::detect();
    let (y, data) = forward_impl(isa, CHUNK, true, dims, x);
    let saved = ScanCheckpoints {
        dims,
        isa,
        chunk: CHUNK,
        data,
    };
    (y, saved)
}

/// Like [`scan_backward`], from the checkpoints [`scan_forward_saving`] returned for the same
/// inputs. Panics if `dims.check(x)` fails, `dy` is not [B, D, L] or `saved` is for other sizes.
pub fn scan_backward_from(
    dims: ScanDims,
    x: &ScanInputs,
    dy: &[f32],
    saved: &ScanCheckpoints,
) -> ScanGrads {
    assert_eq!(
        saved.dims, dims,
        "scan_backward_from: checkpoints of another shape"
    );
    backward_parts(saved.isa, saved.chunk, None, Some(&saved.data), dims, x, dy)
}

/// Gradients of `sum(y * dy)` with respect to every input, recomputing states from the inputs.
///
/// Panics if `dims.check(x)` fails or `dy` is not [B, D, L].
pub fn scan_backward(dims: ScanDims, x: &ScanInputs, dy: &[f32]) -> ScanGrads {
    backward_with(Isa::detect(), CHUNK, dims, x, dy)
}

/// The instruction set and lane width the kernels use on this machine, e.g. for benchmark reports.
pub fn kernel_isa() -> &'static str {
    match Isa::detect() {
        Isa::Avx512 => "avx512f+fma, 16 channel lanes",
        Isa::Avx2 => "avx2+fma, 8 channel lanes",
        Isa::Base => "baseline (no fma), 8 channel lanes",
    }
}
