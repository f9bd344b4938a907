//! Float tensors to and from host memory, and a strided GEMM, for ops whose passes run on the
//! host: the CPU scan, the cross-scan and the linear layers' backward here and, in the segmenter crate, the
//! instance norm and the convolutions' backward pass.

use std::any::Any;
use std::borrow::Cow;

use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use burn::tensor::{DType, TensorData, TensorMetadata, TensorPrimitive};

/// A backend's float tensor primitive.
pub type FloatTensor<B> = <B as burn::tensor::backend::BackendTypes>::FloatTensorPrimitive;

/// A float tensor primitive of any rank as host values (row-major, f32) and its dims.
pub fn to_host<B: Backend>(t: FloatTensor<B>) -> (Vec<f32>, Vec<usize>) {
    // Rank 1 stands for any rank: the data keeps the primitive's own shape.
    let tensor = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t));
    let dims = tensor.shape().to_vec();
    let values = tensor
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("converted tensor data is f32");
    (values, dims)
}

/// A float tensor primitive's values (row-major, f32) and its dims, read in place when that
/// is possible: on Flex, a contiguous f32 tensor's own buffer. The backward passes read tensors
/// that autodiff also holds, so [`to_host`] could not take their buffers and would copy them.
pub fn host_view<B: Backend>(t: &FloatTensor<B>) -> (Cow<'_, [f32]>, Vec<usize>) {
    let dims = t.shape().to_vec();
    let borrowed = (t as &dyn Any)
        .downcast_ref::<FlexTensor>()
        .filter(|flex| flex.dtype() == DType::F32)
        .and_then(|flex| flex.as_slice::<f32>());
    match borrowed {
        Some(values) => (Cow::Borrowed(values), dims),
        None => (Cow::Owned(to_host::<B>(t.clone()).0), dims),
    }
}

/// Host values (row-major) of shape `dims` as a float tensor primitive on `device`.
pub fn from_host<B: Backend>(
    values: Vec<f32>,
    dims: Vec<usize>,
    device: &B::Device,
) -> FloatTensor<B> {
    B::float_from_data(TensorData::new(values, dims), device)
}

/// A matrix operand: values, row stride and column stride.
pub type Operand<'a> = (&'a [f32], usize, usize);

/// `dst (m×n, row-major) = lhs (m×q) · rhs (q×n)`, overwriting `dst`, or adding to it when
/// `accumulate`.
pub fn matmul(
    dst: &mut [f32],
    [m, n, q]: [usize; 3],
    lhs: Operand,
    rhs: Operand,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if q == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    // The bounds that make the raw-pointer call below sound.
    assert!(last(m, n, n, 1) < dst.len(), "matmul: dst too small");
    assert!(
        last(m, q, lhs.1, lhs.2) < lhs.0.len(),
        "matmul: lhs too small"
    );
    assert!(
        last(q, n, rhs.1, rhs.2) < rhs.0.len(),
        "matmul: rhs too small"
    );
    // SAFETY: every element gemm reads or writes is inside its slice (asserted above), and `dst`
    // is borrowed mutably, so it does not alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            q,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.0.as_ptr(),
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0.as_ptr(),
            rhs.2 as isize,
            rhs.1 as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `rows × cols` (row-major) -> `cols × rows`, in tiles that keep both sides in cache.
pub fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut dst = vec![0.0f32; src.len()];
    transpose_into(&mut dst, src, rows, cols);
    dst
}

/// [`transpose`] into `dst` (`cols × rows`, overwritten).
pub fn transpose_into(dst: &mut [f32], src: &[f32], rows: usize, cols: usize) {
    const TILE: usize = 16;
    assert!(
        src.len() >= rows * cols && dst.len() >= rows * cols,
        "transpose: {rows} × {cols} from {} into {} values",
        src.len(),
        dst.len()
    );
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for c in c0..(c0 + TILE).min(cols) {
                for r in r0..(r0 + TILE).min(rows) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
}

/// Serialises the tests that call `backward()`: in burn 0.21 a backward pass on one thread can
/// free the autodiff steps of a graph another thread is still building, so a parameter's gradient
/// goes missing (tracel-ai/burn#5573).
#[cfg(test)]
pub(crate) fn autodiff_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
