//! Overlap metrics from confusion counts: Dice, IoU, and the NaN-aware mean that leaves
//! undefined cases out, as nnU-Net does.

/// Dice of one class, nnU-Net's convention: NaN when both reference and prediction are empty.
pub fn dice(tp: u64, fp: u64, fn_: u64) -> f64 {
    if tp + fp + fn_ == 0 {
        f64::NAN
    } else {
        2.0 * tp as f64 / (2 * tp + fp + fn_) as f64
    }
}

/// Intersection over union, NaN when both are empty.
pub fn iou(tp: u64, fp: u64, fn_: u64) -> f64 {
    if tp + fp + fn_ == 0 {
        f64::NAN
    } else {
        tp as f64 / (tp + fp + fn_) as f64
    }
}

/// Confusion counts of one class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Voxels of the class in both.
    pub tp: u64,
    /// Predicted but not in the reference.
    pub fp: u64,
    /// In the reference but not predicted.
    pub fn_: u64,
    /// In neither.
    pub tn: u64,
}

impl Counts {
    /// Dice of these counts (NaN when the class is in neither map).
    pub fn dice(&self) -> f64 {
        dice(self.tp, self.fp, self.fn_)
    }

    /// IoU of these counts (NaN when the class is in neither map).
    pub fn iou(&self) -> f64 {
        iou(self.tp, self.fp, self.fn_)
    }
}

/// Confusion counts for every class id `0..classes`.
pub fn confusion(pred: &[u8], reference: &[u8], classes: usize) -> Vec<Counts> {
    let mut counts = vec![Counts::default(); classes];
    let total = pred.len() as u64;
    for (&p, &r) in pred.iter().zip(reference) {
        let (p, r) = (p as usize, r as usize);
        if p == r {
            if p < classes {
                counts[p].tp += 1;
            }
        } else {
            if p < classes {
                counts[p].fp += 1;
            }
            if r < classes {
                counts[r].fn_ += 1;
            }
        }
    }
    for c in &mut counts {
        c.tn = total - c.tp - c.fp - c.fn_;
    }
    counts
}

/// Dice per class id (index = class), background included.
pub fn dice_per_class(pred: &[u8], reference: &[u8], classes: usize) -> Vec<f64> {
    confusion(pred, reference, classes)
        .iter()
        .map(Counts::dice)
        .collect()
}

/// Mean of the finite values, NaN if there are none (undefined cases are left out, as nnU-Net does).
pub fn nan_mean(v: &[f64]) -> f64 {
    let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if f.is_empty() {
        f64::NAN
    } else {
        f.iter().sum::<f64>() / f.len() as f64
    }
}

/// The value when it is finite: undefined metrics are `null` in JSON and empty in CSV.
pub fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dice_and_iou_on_hand_made_maps() {
        // Class 1: reference 4 voxels, prediction 2 of them + 1 extra.
        let reference = [1, 1, 1, 1, 0, 0, 2, 2];
        let pred = [1, 1, 0, 0, 1, 0, 2, 0];
        let c = confusion(&pred, &reference, 3);
        assert_eq!(
            c[1],
            Counts {
                tp: 2,
                fp: 1,
                fn_: 2,
                tn: 3
            }
        );
        assert!((dice(2, 1, 2) - 4.0 / 7.0).abs() < 1e-12);
        assert!((iou(2, 1, 2) - 2.0 / 5.0).abs() < 1e-12);
        let d = dice_per_class(&pred, &reference, 3);
        assert!((d[2] - 2.0 / 3.0).abs() < 1e-12);
        // Both empty: NaN (left out of means); prediction of an absent class: 0.
        assert!(dice_per_class(&[0, 0], &[0, 0], 2)[1].is_nan());
        assert_eq!(dice_per_class(&[1, 0], &[0, 0], 2)[1], 0.0);
    }

    #[test]
    fn nan_mean_leaves_undefined_values_out() {
        assert_eq!(nan_mean(&[1.0, f64::NAN, 3.0]), 2.0);
        assert!(nan_mean(&[f64::NAN]).is_nan());
        assert!(nan_mean(&[]).is_nan());
    }
}
