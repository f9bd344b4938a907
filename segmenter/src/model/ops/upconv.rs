//! The decoder's transposed convolutions whose kernel equals their stride (2×2 in 2D; 2 or 1
//! per axis in 3D), with host passes on the CPU.
//!
//! With kernel = stride and no padding, every input voxel writes its own block of `T` output
//! voxels (`T` = the kernel's taps) and no two blocks overlap. So the forward pass is one GEMM
//! per image, `Z = Wᵀ · X` (`[C_out·T, S] = [C_out·T, C_in] · [C_in, S]` over the `S` input
//! voxels), whose rows are then scattered into the blocks; the backward pass gathers the output
//! gradient's blocks back into that layout (`dZ`) and runs `dX = W · dZ` and `dW = Σ X · dZᵀ`.
//! burn's generic backward of a transposed convolution runs convolutions of `swap_dims` views,
//! which Flex copies element by element. GPU backends keep burn's.

use burn::prelude::*;
use burn::tensor::ops::ConvTransposeOptions;
use burn::tensor::{TensorData, TensorMetadata};
use rayon::prelude::*;

use vision_ssm::host::{from_host, host_view, matmul};
use vision_ssm::scan::FloatTensor;

use vision_ssm::weighted::WeightedGrads;

/// Kernel = stride, no padding, dilation or groups.
fn options<const D: usize>(kernel: [usize; D]) -> ConvTransposeOptions<D> {
    ConvTransposeOptions::new(kernel, [0; D], [0; D], [1; D], 1)
}

/// burn's transposed convolution with kernel = stride: what backends without host passes run.
pub(super) fn generic_forward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    match weight.shape().to_vec()[..] {
        [_, _, kh, kw] => B::conv_transpose2d(x, weight, bias, options([kh, kw])),
        [_, _, kd, kh, kw] => B::conv_transpose3d(x, weight, bias, options([kd, kh, kw])),
        ref other => panic!("transposed conv: a weight of rank 4 or 5, not {other:?}"),
    }
}

/// burn's backward of [`generic_forward`].
pub(super) fn generic_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    dy: FloatTensor<B>,
    need_dx: bool,
    need_db: bool,
) -> WeightedGrads<B> {
    let device = B::float_device(&x);
    let cout = weight.shape().to_vec()[1];
    let bias = || B::float_zeros([cout].into(), &device, x.dtype().into());
    match weight.shape().to_vec()[..] {
        [_, _, kh, kw] => {
            let o = options([kh, kw]);
            let db =
                need_db.then(|| B::conv_transpose2d_bias_backward(x.clone(), bias(), dy.clone()));
            let dx = need_dx
                .then(|| B::conv_transpose2d_x_backward(weight.clone(), dy.clone(), o.clone()));
            (
                dx,
                B::conv_transpose2d_weight_backward(x, weight, dy, o),
                db,
            )
        }
        [_, _, kd, kh, kw] => {
            let o = options([kd, kh, kw]);
            let db =
                need_db.then(|| B::conv_transpose3d_bias_backward(x.clone(), bias(), dy.clone()));
            let dx = need_dx
                .then(|| B::conv_transpose3d_x_backward(weight.clone(), dy.clone(), o.clone()));
            (
                dx,
                B::conv_transpose3d_weight_backward(x, weight, dy, o),
                db,
            )
        }
        ref other => panic!("transposed conv: a weight of rank 4 or 5, not {other:?}"),
    }
}

/// The sizes of one transposed convolution with kernel = stride; 2D ones have depth 1.
#[derive(Clone, Copy, Debug)]
struct Blocks {
    batch: usize,
    cin: usize,
    cout: usize,
    /// The input's `[depth, height, width]`.
    size: [usize; 3],
    /// `[kd, kh, kw]`, the stride too.
    k: [usize; 3],
}

impl Blocks {
    /// The sizes from `x: [B, C_in, (D,) H, W]` and `weight: [C_in, C_out, (kd,) kh, kw]`.
    fn of(x: &[usize], w: &[usize]) -> Blocks {
        let (size, k) = match (x, w) {
            ([_, _, h, wd], [_, _, kh, kw]) => ([1, *h, *wd], [1, *kh, *kw]),
            ([_, _, d, h, wd], [_, _, kd, kh, kw]) => ([*d, *h, *wd], [*kd, *kh, *kw]),
            _ => panic!("transposed conv: input {x:?} and weight {w:?} of different ranks"),
        };
        assert_eq!(
            x[1], w[0],
            "transposed conv: {} channels into a weight for {}",
            x[1], w[0]
        );
        Blocks {
            batch: x[0],
            cin: x[1],
            cout: w[1],
            size,
            k,
        }
    }

    /// Input voxels per channel.
    fn voxels(&self) -> usize {
        self.size.iter().product()
    }

    /// Taps of the kernel: output voxels per input voxel.
    fn taps(&self) -> usize {
        self.k.iter().product()
    }

    /// The output's dims, of the input's rank `rank`.
    fn out_dims(&self, rank: usize) -> Vec<usize> {
        let up: Vec<usize> = (0..3).map(|a| self.size[a] * self.k[a]).collect();
        let mut dims = vec![self.batch, self.cout];
        dims.extend_from_slice(&up[3 - (rank - 2)..]);
        dims
    }

    /// For every tap `t` and input voxel `s` (in order), `f(t, s, output voxel)` of one
    /// channel's output plane.
    fn for_each_block(&self, mut f: impl FnMut(usize, usize, usize)) {
        let [depth, height, width] = self.size;
        let [kd, kh, kw] = self.k;
        let (oh, ow) = (height * kh, width * kw);
        for i in 0..kd {
            for j in 0..kh {
                for l in 0..kw {
                    let t = (i * kh + j) * kw + l;
                    for d in 0..depth {
                        for h in 0..height {
                            let row = ((d * kd + i) * oh + h * kh + j) * ow + l;
                            let s0 = (d * height + h) * width;
                            for w in 0..width {
                                f(t, s0 + w, row + w * kw);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The host forward: per image, `Z = Wᵀ · X` and its rows scattered into the output blocks.
pub(super) fn host_forward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    let device = B::float_device(&x);
    let (xv, xdims) = host_view::<B>(&x);
    let (w, wdims) = host_view::<B>(&weight);
    let bias = bias.as_ref().map(|b| host_view::<B>(b).0);
    let p = Blocks::of(&xdims, &wdims);
    let (s, t) = (p.voxels(), p.taps());
    let (rows, plane) = (p.cout * t, s * t);
    let mut y = vec![0.0f32; p.batch * p.cout * plane];
    if plane > 0 {
        y.par_chunks_mut(p.cout * plane)
            .zip(xv.par_chunks(p.cin * s))
            .for_each(|(yb, xb)| {
                // Z (C_out·T × S) = Wᵀ (element (r, ci) = W[ci·C_out·T + r]) · X (C_in × S).
                let mut z = vec![0.0f32; rows * s];
                matmul(&mut z, [rows, s, p.cin], (&w, 1, rows), (xb, s, 1), false);
                for (co, out) in yb.chunks_exact_mut(plane).enumerate() {
                    let zc = &z[co * plane..(co + 1) * plane];
                    let b = bias.as_ref().map_or(0.0, |b| b[co]);
                    p.for_each_block(|tap, v, o| out[o] = zc[tap * s + v] + b);
                }
            });
    }
    from_host::<B>(y, p.out_dims(xdims.len()), &device)
}

/// The host backward: per image, `dZ` gathered from `dy`'s blocks, `dX = W · dZ` and the
/// image's share `X · dZᵀ` of the weight gradient; the shares and the bias sums are added up.
pub(super) fn host_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    dy: FloatTensor<B>,
    need_dx: bool,
    need_db: bool,
) -> WeightedGrads<B> {
    let device = B::float_device(&x);
    let (xv, xdims) = host_view::<B>(&x);
    let (w, wdims) = host_view::<B>(&weight);
    let (g, _) = host_view::<B>(&dy);
    let p = Blocks::of(&xdims, &wdims);
    let (s, t) = (p.voxels(), p.taps());
    let (rows, plane) = (p.cout * t, s * t);
    let per_image: Vec<(Vec<f32>, Vec<f32>, Vec<f64>)> = (0..p.batch)
        .into_par_iter()
        .map(|b| {
            let gb = &g[b * p.cout * plane..][..p.cout * plane];
            let xb = &xv[b * p.cin * s..][..p.cin * s];
            let mut dz = vec![0.0f32; rows * s];
            let mut db = vec![0.0f64; p.cout];
            for (co, out) in gb.chunks_exact(plane.max(1)).enumerate() {
                let dzc = &mut dz[co * plane..(co + 1) * plane];
                p.for_each_block(|tap, v, o| dzc[tap * s + v] = out[o]);
                if need_db {
                    db[co] = out.iter().map(|&v| f64::from(v)).sum();
                }
            }
            let mut dx = Vec::new();
            if need_dx {
                // dX (C_in × S) = W (C_in × C_out·T) · dZ (C_out·T × S).
                dx = vec![0.0f32; p.cin * s];
                matmul(&mut dx, [p.cin, s, rows], (&w, rows, 1), (&dz, s, 1), false);
            }
            // This image's dW (C_in × C_out·T) = X (C_in × S) · dZᵀ (S × C_out·T).
            let mut dw = vec![0.0f32; p.cin * rows];
            matmul(&mut dw, [p.cin, rows, s], (xb, s, 1), (&dz, 1, s), false);
            (dx, dw, db)
        })
        .collect();
    let mut dw = vec![0.0f32; p.cin * rows];
    let mut db = vec![0.0f64; p.cout];
    let mut dx = Vec::with_capacity(if need_dx { p.batch * p.cin * s } else { 0 });
    for (dxb, dwb, dbb) in per_image {
        dx.extend_from_slice(&dxb);
        dw.iter_mut().zip(&dwb).for_each(|(a, v)| *a += v);
        db.iter_mut().zip(&dbb).for_each(|(a, v)| *a += v);
    }
    let db = need_db.then(|| {
        let db: Vec<f32> = db.iter().map(|&v| v as f32).collect();
        B::float_from_data(TensorData::new(db, [p.cout]), &device)
    });
    (
        need_dx.then(|| from_host::<B>(dx, xdims.clone(), &device)),
        from_host::<B>(dw, wdims, &device),
        db,
    )
}

#[cfg(test)]
mod tests {
    use super::super::testing::close;
    use super::*;
    use burn::backend::Flex;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// `(x dims, C_out, kernel = stride)`: 2D cases have rank-4 inputs.
    const CASES: [(&[usize], usize, &[usize]); 4] = [
        (&[2, 3, 4, 5], 4, &[2, 2]),
        (&[1, 5, 1, 3], 2, &[2, 2]),
        (&[2, 3, 2, 3, 4], 2, &[2, 2, 2]),
        (&[2, 2, 3, 2, 3], 3, &[1, 2, 2]),
    ];

    fn random(rng: &mut StdRng, count: usize) -> Vec<f64> {
        (0..count).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// `y` by the definition, in float64, over 3D sizes (2D ones with depth 1).
    fn forward_f64(x: &[f64], w: &[f64], b: &[f64], p: Blocks) -> Vec<f64> {
        let [depth, height, width] = p.size;
        let [kd, kh, kw] = p.k;
        let (od, oh, ow) = (depth * kd, height * kh, width * kw);
        let mut y = vec![0.0; p.batch * p.cout * od * oh * ow];
        for n in 0..p.batch {
            for co in 0..p.cout {
                for z in 0..od {
                    for r in 0..oh {
                        for c in 0..ow {
                            let (d, i, h, j, wi, l) =
                                (z / kd, z % kd, r / kh, r % kh, c / kw, c % kw);
                            let mut v = b[co];
                            for ci in 0..p.cin {
                                let xi = (((n * p.cin + ci) * depth + d) * height + h) * width + wi;
                                let wi = (((ci * p.cout + co) * kd + i) * kh + j) * kw + l;
                                v += x[xi] * w[wi];
                            }
                            y[(((n * p.cout + co) * od + z) * oh + r) * ow + c] = v;
                        }
                    }
                }
            }
        }
        y
    }

    fn tensor<B: Backend, const D: usize>(v: &[f64], dims: &[usize]) -> Tensor<B, D> {
        let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        Tensor::from_data(TensorData::new(v, dims.to_vec()), &Default::default())
    }

    /// `up(x)` and the host backward's gradients (x, w, b) of `Σ g ⊙ up(x)`.
    fn host_passes<const D: usize>(
        (x, w, b, g): (&[f64], &[f64], &[f64], &[f64]),
        xdims: &[usize],
        wdims: &[usize],
        ydims: &[usize],
    ) -> [Vec<f32>; 4] {
        let prim = |v: &[f64], d: &[usize]| tensor::<Flex, D>(v, d).into_primitive().tensor();
        let bias = tensor::<Flex, 1>(b, &[b.len()]).into_primitive().tensor();
        let y = host_forward::<Flex>(prim(x, xdims), prim(w, wdims), Some(bias));
        let (dx, dw, db) =
            host_backward::<Flex>(prim(x, xdims), prim(w, wdims), prim(g, ydims), true, true);
        let host = |t| vision_ssm::host::to_host::<Flex>(t).0;
        [
            host(y),
            host(dx.expect("dx asked for")),
            host(dw),
            host(db.expect("db asked for")),
        ]
    }

    #[test]
    fn the_host_passes_match_the_float64_definition() {
        let mut rng = StdRng::seed_from_u64(5);
        for (xdims, cout, k) in CASES {
            let mut wdims = vec![xdims[1], cout];
            wdims.extend_from_slice(k);
            let p = Blocks::of(xdims, &wdims);
            let ydims = p.out_dims(xdims.len());
            let count = |d: &[usize]| d.iter().product::<usize>();
            let (x, w, b, g) = (
                random(&mut rng, count(xdims)),
                random(&mut rng, count(&wdims)),
                random(&mut rng, cout),
                random(&mut rng, count(&ydims)),
            );
            let want = forward_f64(&x, &w, &b, p);
            // The loss Σ g ⊙ y is linear in x, w and b: its gradients are sums of products.
            let mut want_dx = vec![0.0; x.len()];
            let mut want_dw = vec![0.0; w.len()];
            let mut want_db = vec![0.0; cout];
            let loss = |x: &[f64], w: &[f64], b: &[f64]| -> f64 {
                forward_f64(x, w, b, p)
                    .iter()
                    .zip(&g)
                    .map(|(y, g)| y * g)
                    .sum()
            };
            let eps = 1e-3;
            let central = |f: &dyn Fn(f64) -> f64| (f(eps) - f(-eps)) / (2.0 * eps);
            for (i, d) in want_dx.iter_mut().enumerate() {
                let bump = |e: f64| {
                    let mut x = x.clone();
                    x[i] += e;
                    loss(&x, &w, &b)
                };
                *d = central(&bump);
            }
            for (i, d) in want_dw.iter_mut().enumerate() {
                let bump = |e: f64| {
                    let mut w = w.clone();
                    w[i] += e;
                    loss(&x, &w, &b)
                };
                *d = central(&bump);
            }
            for (i, d) in want_db.iter_mut().enumerate() {
                let bump = |e: f64| {
                    let mut b = b.clone();
                    b[i] += e;
                    loss(&x, &w, &b)
                };
                *d = central(&bump);
            }
            let name = format!("{xdims:?} k {k:?}");
            let [y, dx, dw, db] = if xdims.len() == 4 {
                host_passes::<4>((&x, &w, &b, &g), xdims, &wdims, &ydims)
            } else {
                host_passes::<5>((&x, &w, &b, &g), xdims, &wdims, &ydims)
            };
            close(&format!("y of {name}"), &y, &want, 1e-5);
            close(&format!("dx of {name}"), &dx, &want_dx, 1e-4);
            close(&format!("dw of {name}"), &dw, &want_dw, 1e-4);
            close(&format!("db of {name}"), &db, &want_db, 1e-4);
        }
    }

    #[test]
    fn the_host_forward_matches_burns_transposed_convolution() {
        let mut rng = StdRng::seed_from_u64(9);
        for (xdims, cout, k) in CASES {
            let mut wdims = vec![xdims[1], cout];
            wdims.extend_from_slice(k);
            let x = random(&mut rng, xdims.iter().product());
            let w = random(&mut rng, wdims.iter().product());
            let prim = |v: &[f64], d: &[usize]| {
                if d.len() == 4 {
                    tensor::<Flex, 4>(v, d).into_primitive().tensor()
                } else {
                    tensor::<Flex, 5>(v, d).into_primitive().tensor()
                }
            };
            let host = host_forward::<Flex>(prim(&x, xdims), prim(&w, &wdims), None);
            let burns = generic_forward::<Flex>(prim(&x, xdims), prim(&w, &wdims), None);
            assert_eq!(host.shape(), burns.shape(), "{xdims:?}");
            let want: Vec<f64> = vision_ssm::host::to_host::<Flex>(burns)
                .0
                .into_iter()
                .map(f64::from)
                .collect();
            close(
                &format!("{xdims:?} k {k:?}"),
                &vision_ssm::host::to_host::<Flex>(host).0,
                &want,
                1e-5,
            );
        }
    }
}
