//! The training loss: Dice + cross-entropy, summed over the deep-supervision outputs.

use burn::prelude::*;
use burn::tensor::activation;
use burn::tensor::backend::AutodiffBackend;

use crate::model::{ModelBackend, SwinUMamba, SwinUMamba3d};

/// Dice + cross-entropy of logits `[B, K, H, W]` against one-hot targets `[B, K, H, W]`.
pub fn dice_ce_loss<B: Backend>(logits: Tensor<B, 4>, one_hot: Tensor<B, 4>) -> Tensor<B, 1> {
    let log_probs = activation::log_softmax(logits, 1);
    let [_, classes, _, _] = log_probs.dims();
    let ce = (log_probs.clone() * one_hot.clone())
        .sum_dim(1)
        .mean()
        .neg();
    let probs = log_probs.exp();
    // Batch Dice per class (nnU-Net's 2D setting), background excluded.
    let sum = |t: Tensor<B, 4>| t.sum_dim(0).sum_dim(2).sum_dim(3).reshape([classes]);
    let intersection = sum(probs.clone() * one_hot.clone());
    let denominator = sum(probs) + sum(one_hot);
    let dice = (intersection * 2.0 + 1e-5) / (denominator + 1e-5);
    let dice_fg = dice.narrow(0, 1, classes - 1).mean();
    ce - dice_fg
}

/// One-hot `[B, K, H/stride, W/stride]` targets from labels `[B, H, W]`, subsampled by `stride`.
pub fn one_hot<B: Backend>(
    labels: &[u8],
    [batch, rows, cols]: [usize; 3],
    classes: usize,
    stride: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    let (r, c) = (rows / stride, cols / stride);
    let mut values = vec![0.0f32; batch * classes * r * c];
    for b in 0..batch {
        for i in 0..r {
            for j in 0..c {
                let l = labels
                    [(b * rows + i * stride + stride / 2) * cols + j * stride + stride / 2]
                    as usize;
                values[((b * classes + l.min(classes - 1)) * r + i) * c + j] = 1.0;
            }
        }
    }
    Tensor::from_data(TensorData::new(values, [batch, classes, r, c]), device)
}

/// Weights of the deep-supervision outputs (full, 1/2 and 1/4 resolution), as nnU-Net v2 weighs
/// the four heads of Swin-UMamba: halving from the top, the coarsest (1/8) weighted 0, then
/// normalised. The 1/8 head is therefore not run in training.
const DEEP_SUPERVISION_WEIGHTS: [f64; 3] = [4.0 / 7.0, 2.0 / 7.0, 1.0 / 7.0];

/// The deep-supervision Dice + cross-entropy loss of a batch on `device`.
pub fn deep_supervision_loss<B>(
    model: &SwinUMamba<B>,
    images: Vec<f32>,
    labels: &[u8],
    dims: [usize; 4],
    classes: usize,
    device: &B::Device,
) -> Tensor<B, 1>
where
    B: AutodiffBackend + ModelBackend,
{
    let [batch, _, rows, cols] = dims;
    let x = Tensor::<B, 4>::from_data(TensorData::new(images, dims), device);
    let mut loss = None;
    for (scale, (logits, weight)) in model
        .forward_heads(x, DEEP_SUPERVISION_WEIGHTS.len())
        .into_iter()
        .zip(DEEP_SUPERVISION_WEIGHTS)
        .enumerate()
    {
        let target = one_hot::<B>(labels, [batch, rows, cols], classes, 1 << scale, device);
        let term = dice_ce_loss(logits, target) * weight;
        loss = Some(match loss {
            None => term,
            Some(l) => l + term,
        });
    }
    loss.expect("the network has at least one output")
}

/// Dice + cross-entropy of logits `[B, K, N]` (N voxels of each sample) against one-hot targets
/// of the same shape: the 3D network's loss, with the batch Dice as in 2D.
pub fn dice_ce_loss_flat<B: Backend>(logits: Tensor<B, 3>, one_hot: Tensor<B, 3>) -> Tensor<B, 1> {
    let log_probs = activation::log_softmax(logits, 1);
    let [_, classes, _] = log_probs.dims();
    let ce = (log_probs.clone() * one_hot.clone())
        .sum_dim(1)
        .mean()
        .neg();
    let probs = log_probs.exp();
    let sum = |t: Tensor<B, 3>| t.sum_dim(0).sum_dim(2).reshape([classes]);
    let intersection = sum(probs.clone() * one_hot.clone());
    let denominator = sum(probs) + sum(one_hot);
    let dice = (intersection * 2.0 + 1e-5) / (denominator + 1e-5);
    let dice_fg = dice.narrow(0, 1, classes - 1).mean();
    ce - dice_fg
}

/// One-hot `[B, K, N]` targets from labels `[B, D, R, C]`, subsampled by `stride` per axis (the
/// voxel nearest each coarse voxel's centre), N the coarse voxels of a sample.
pub fn one_hot_3d<B: Backend>(
    labels: &[u8],
    [batch, depth, rows, cols]: [usize; 4],
    classes: usize,
    [sd, sr, sc]: [usize; 3],
    device: &B::Device,
) -> Tensor<B, 3> {
    let (d, r, c) = (depth / sd, rows / sr, cols / sc);
    let n = d * r * c;
    let mut values = vec![0.0f32; batch * classes * n];
    for b in 0..batch {
        for z in 0..d {
            for i in 0..r {
                for j in 0..c {
                    let source = ((b * depth + z * sd + sd / 2) * rows + i * sr + sr / 2) * cols
                        + j * sc
                        + sc / 2;
                    let l = (labels[source] as usize).min(classes - 1);
                    values[(b * classes + l) * n + (z * r + i) * c + j] = 1.0;
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(values, [batch, classes, n]), device)
}

/// The deep-supervision Dice + cross-entropy loss of a 3D batch (images `[B, C, D, R, C]`) on
/// `device`, the heads weighted as in 2D.
pub fn deep_supervision_loss_3d<B>(
    model: &SwinUMamba3d<B>,
    images: Vec<f32>,
    labels: &[u8],
    dims: [usize; 5],
    classes: usize,
    device: &B::Device,
) -> Tensor<B, 1>
where
    B: AutodiffBackend + ModelBackend,
{
    let [batch, _, depth, rows, cols] = dims;
    let x = Tensor::<B, 5>::from_data(TensorData::new(images, dims), device);
    let strides = model.head_strides();
    let mut loss = None;
    for (head, (logits, weight)) in model
        .forward_heads(x, DEEP_SUPERVISION_WEIGHTS.len())
        .into_iter()
        .zip(DEEP_SUPERVISION_WEIGHTS)
        .enumerate()
    {
        let [b, k, d, r, c] = logits.dims();
        let target = one_hot_3d::<B>(
            labels,
            [batch, depth, rows, cols],
            classes,
            strides[head],
            device,
        );
        let term = dice_ce_loss_flat(logits.reshape([b, k, d * r * c]), target) * weight;
        loss = Some(match loss {
            None => term,
            Some(l) => l + term,
        });
    }
    loss.expect("the network has at least one output")
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn loss_matches_a_hand_computed_value() {
        // One pixel, two classes, logits (0, ln 3): p = (1/4, 3/4); target class 1.
        let device = Default::default();
        let logits = Tensor::<Flex, 4>::from_data(
            TensorData::new(vec![0.0f32, 3f32.ln()], [1, 2, 1, 1]),
            &device,
        );
        let target =
            Tensor::<Flex, 4>::from_data(TensorData::new(vec![0.0f32, 1.0], [1, 2, 1, 1]), &device);
        let loss = dice_ce_loss(logits, target).into_scalar();
        let ce = -(0.75f64).ln();
        let dice = (2.0 * 0.75 + 1e-5) / (0.75 + 1.0 + 1e-5);
        assert!(
            (loss as f64 - (ce - dice)).abs() < 1e-5,
            "{loss} vs {}",
            ce - dice
        );
    }

    #[test]
    fn the_flat_loss_equals_the_2d_loss_on_the_same_voxels() {
        use burn::tensor::Distribution;
        let device = Default::default();
        let logits =
            Tensor::<Flex, 4>::random([2, 3, 4, 5], Distribution::Normal(0.0, 2.0), &device);
        let labels: Vec<u8> = (0..2 * 4 * 5).map(|i| ((i * 7) % 3) as u8).collect();
        let target = one_hot::<Flex>(&labels, [2, 4, 5], 3, 1, &device);
        let a = dice_ce_loss(logits.clone(), target.clone()).into_scalar();
        let b =
            dice_ce_loss_flat(logits.reshape([2, 3, 20]), target.reshape([2, 3, 20])).into_scalar();
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        // A depth of one: the 3D one-hot is the 2D one.
        let flat = one_hot_3d::<Flex>(&labels, [2, 1, 4, 5], 3, [1, 1, 1], &device);
        let planar = one_hot::<Flex>(&labels, [2, 4, 5], 3, 1, &device).reshape([2, 3, 20]);
        assert_eq!(flat.into_data(), planar.into_data());
    }

    #[test]
    fn the_3d_one_hot_takes_the_voxel_at_each_coarse_centre() {
        let device = Default::default();
        // [1, 2, 4, 4] labels, value = the flat index mod 3, subsampled by [2, 2, 2]: one coarse
        // depth, 2 x 2 in-plane, each reading voxel (1, 2i + 1, 2j + 1).
        let labels: Vec<u8> = (0..32).map(|i| (i % 3) as u8).collect();
        let t = one_hot_3d::<Flex>(&labels, [1, 2, 4, 4], 3, [2, 2, 2], &device);
        let v = t.into_data().into_vec::<f32>().unwrap();
        for i in 0..2 {
            for j in 0..2 {
                let src = (16 + (2 * i + 1) * 4 + 2 * j + 1) % 3;
                for k in 0..3 {
                    assert_eq!(
                        v[k * 4 + i * 2 + j],
                        (k == src) as u8 as f32,
                        "({i}, {j}) class {k}"
                    );
                }
            }
        }
    }
}
