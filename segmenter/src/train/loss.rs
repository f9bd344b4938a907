//! The training loss: Dice + cross-entropy, summed over the deep-supervision outputs.

use burn::prelude::*;
use burn::tensor::activation;
use burn::tensor::backend::AutodiffBackend;

use crate::model::{ModelBackend, SwinUMamba};

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
}
