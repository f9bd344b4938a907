//! The multi-direction cross-scan of a 3D feature map and its inverse-and-sum (cross-merge).
//!
//! A volume `[depth, height, width]` is read in up to three axis orders, each making a different
//! spatial axis the fastest-varying one, so that every axis has one order in which neighbours
//! along it are neighbours in the sequence:
//!
//! | order | fastest | then  | slowest | sequence index of voxel (d, h, w) |
//! |-------|---------|-------|---------|-----------------------------------|
//! | 0     | width   | height| depth   | `(d·H + h)·W + w` (row-major)     |
//! | 1     | height  | width | depth   | `(d·W + w)·H + h`                 |
//! | 2     | depth   | width | height  | `(h·W + w)·D + d`                 |
//!
//! With `K` directions (2, 4 or 6), directions `0..K/2` are orders `0..K/2` read forward and
//! directions `K/2..K` the same orders reversed. With `K = 4` and a depth of 1 this is exactly the
//! 2D [`cross_scan`](crate::cross_scan::cross_scan). Cross-merge maps every direction back to
//! row-major order and sums, so it is the adjoint of the scan and
//! `cross_merge_3d(cross_scan_3d(x, K)) == K·x`.

use burn::tensor::{backend::Backend, Tensor};

/// The numbers of directions [`cross_scan_3d`] supports.
pub const SUPPORTED_DIRECTIONS: [usize; 3] = [2, 4, 6];

/// How many axis orders `directions` uses (half of them, each read both ways); panics on an
/// unsupported count, since the configs that carry it are checked before a layer is built.
pub(crate) fn orders_of(directions: usize) -> usize {
    assert!(
        SUPPORTED_DIRECTIONS.contains(&directions),
        "3D cross-scan directions must be one of {SUPPORTED_DIRECTIONS:?}, got {directions}"
    );
    directions / 2
}

/// `[batch, channels, depth, height, width]` -> `[batch, K, channels, depth·height·width]` in the
/// `K = directions` scan orders of the module docs (K ∈ {2, 4, 6}).
pub fn cross_scan_3d<B: Backend>(x: Tensor<B, 5>, directions: usize) -> Tensor<B, 4> {
    let orders = orders_of(directions);
    let [batch, channels, depth, height, width] = x.dims();
    let len = depth * height * width;
    let seq = |t: Tensor<B, 5>| t.reshape([batch, 1, channels, len]);
    let mut forward = vec![seq(x.clone())];
    if orders > 1 {
        // [b, c, d, w, h]: height fastest, then width, then depth.
        forward.push(seq(x.clone().swap_dims(3, 4)));
    }
    if orders > 2 {
        // [b, c, h, w, d]: depth fastest, then width, then height.
        forward.push(seq(x.permute([0, 1, 3, 4, 2])));
    }
    let forward = Tensor::cat(forward, 1);
    let backward = forward.clone().flip([3]);
    Tensor::cat(vec![forward, backward], 1)
}

/// `[batch, K, channels, depth·height·width]` -> `[batch, channels, depth·height·width]`
/// (row-major), summing the K directions after undoing each one's order: the adjoint of
/// [`cross_scan_3d`].
pub fn cross_merge_3d<B: Backend>(
    y: Tensor<B, 4>,
    depth: usize,
    height: usize,
    width: usize,
) -> Tensor<B, 3> {
    let [batch, directions, channels, len] = y.dims();
    let orders = orders_of(directions);
    assert_eq!(
        len,
        depth * height * width,
        "cross_merge_3d: length must be depth·height·width"
    );
    // Undo the reversal first: direction o + K/2 is direction o read backwards.
    let forward = y.clone().narrow(1, 0, orders) + y.narrow(1, orders, orders).flip([3]);
    let order = |o: usize| forward.clone().narrow(1, o, 1);
    let mut merged = order(0).reshape([batch, channels, len]);
    if orders > 1 {
        merged = merged
            + order(1)
                .reshape([batch, channels, depth, width, height])
                .swap_dims(3, 4)
                .reshape([batch, channels, len]);
    }
    if orders > 2 {
        merged = merged
            + order(2)
                .reshape([batch, channels, height, width, depth])
                .permute([0, 1, 4, 2, 3])
                .reshape([batch, channels, len]);
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::{Distribution, TensorData};

    const SHAPE: [usize; 5] = [2, 3, 3, 4, 5];

    fn values<const D: usize>(t: Tensor<Flex, D>) -> Vec<f64> {
        t.into_data()
            .into_vec::<f32>()
            .expect("f32")
            .into_iter()
            .map(f64::from)
            .collect()
    }

    fn random<const D: usize>(shape: [usize; D]) -> Tensor<Flex, D> {
        Tensor::random(shape, Distribution::Uniform(-1.0, 1.0), &Default::default())
    }

    /// The voxel `(d, h, w)` that axis order `order` visits at step `t`, decoded digit by digit
    /// from the axis sizes (fastest axis first), independently of the tensor ops.
    fn voxel_at(order: usize, t: usize, [depth, height, width]: [usize; 3]) -> [usize; 3] {
        // Axes as indices into (d, h, w), fastest first.
        let axes: [usize; 3] = match order {
            0 => [2, 1, 0],
            1 => [1, 2, 0],
            2 => [0, 2, 1],
            _ => unreachable!(),
        };
        let sizes = [depth, height, width];
        let mut rest = t;
        let mut voxel = [0; 3];
        for axis in axes {
            voxel[axis] = rest % sizes[axis];
            rest /= sizes[axis];
        }
        assert_eq!(rest, 0, "step {t} lies outside the volume");
        voxel
    }

    /// `[batch, K, channels, L]` from `[batch, channels, depth, height, width]` by the index loop.
    fn scan_f64(
        x: &[f64],
        [batch, channels, depth, height, width]: [usize; 5],
        k: usize,
    ) -> Vec<f64> {
        let len = depth * height * width;
        let mut out = vec![0.0; batch * k * channels * len];
        for b in 0..batch {
            for dir in 0..k {
                let (order, reversed) = (dir % (k / 2), dir >= k / 2);
                for c in 0..channels {
                    for t in 0..len {
                        let step = if reversed { len - 1 - t } else { t };
                        let [d, h, w] = voxel_at(order, step, [depth, height, width]);
                        let src = (((b * channels + c) * depth + d) * height + h) * width + w;
                        out[((b * k + dir) * channels + c) * len + t] = x[src];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn cross_scan_3d_matches_an_index_loop_in_every_direction() {
        let x = random(SHAPE);
        let xv = values(x.clone());
        let [batch, channels, depth, height, width] = SHAPE;
        for k in SUPPORTED_DIRECTIONS {
            let scanned = cross_scan_3d(x.clone(), k);
            assert_eq!(scanned.dims(), [batch, k, channels, depth * height * width]);
            // The loop copies values, so the two must agree exactly.
            assert_eq!(values(scanned), scan_f64(&xv, SHAPE, k), "K = {k}");
        }
    }

    #[test]
    fn cross_scan_3d_of_one_slice_with_four_directions_is_the_2d_cross_scan() {
        let x = random([2, 3, 1, 4, 5]);
        let flat = x.clone().reshape([2, 3, 4, 5]);
        assert_eq!(
            values(cross_scan_3d(x, 4)),
            values(crate::cross_scan::cross_scan(flat))
        );
    }

    #[test]
    fn cross_merge_3d_is_the_adjoint_of_cross_scan_3d() {
        let [batch, channels, depth, height, width] = SHAPE;
        let len = depth * height * width;
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        for k in SUPPORTED_DIRECTIONS {
            let x = random(SHAPE);
            let y = random([batch, k, channels, len]);
            let lhs = dot(&values(cross_scan_3d(x.clone(), k)), &values(y.clone()));
            let merged = cross_merge_3d(y, depth, height, width);
            assert_eq!(merged.dims(), [batch, channels, len]);
            let rhs = dot(&values(x.clone()), &values(merged));
            assert!(
                (lhs - rhs).abs() <= 1e-4 * lhs.abs().max(1.0),
                "K = {k}: <scan x, y> = {lhs}, <x, merge y> = {rhs}"
            );

            let round_trip = values(cross_merge_3d(
                cross_scan_3d(x.clone(), k),
                depth,
                height,
                width,
            ));
            for (got, want) in round_trip.iter().zip(values(x)) {
                assert!(
                    (got - k as f64 * want).abs() <= 1e-6,
                    "K = {k}: merge(scan(x)) = {got}, K·x = {}",
                    k as f64 * want
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "3D cross-scan directions must be one of")]
    fn cross_scan_3d_refuses_an_odd_number_of_directions() {
        let x = Tensor::<Flex, 5>::from_data(
            TensorData::new(vec![0f32; 8], [1, 1, 2, 2, 2]),
            &Default::default(),
        );
        let _ = cross_scan_3d(x, 3);
    }
}
