//! The learning-rate schedule: linear warm-up, then polynomial or cosine decay.

use crate::config::ScheduleKind;

/// Learning rate at a point of training: linear warm-up, then polynomial (0.9) or cosine decay
/// from `peak` to `floor`.
pub fn learning_rate(
    peak: f64,
    floor: f64,
    warmup_steps: usize,
    step: usize,
    progress: f64,
    schedule: ScheduleKind,
) -> f64 {
    if step < warmup_steps {
        return peak * (step + 1) as f64 / warmup_steps as f64;
    }
    let progress = progress.clamp(0.0, 1.0);
    let fraction = match schedule {
        ScheduleKind::Poly => (1.0 - progress).powf(0.9),
        ScheduleKind::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    };
    floor + (peak - floor) * fraction
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert!((learning_rate(1.0, 0.0, 10, 0, 0.0, ScheduleKind::Poly) - 0.1).abs() < 1e-12);
        assert!((learning_rate(1.0, 0.0, 10, 9, 0.0, ScheduleKind::Poly) - 1.0).abs() < 1e-12);
        assert!(
            (learning_rate(1.0, 0.0, 10, 50, 0.5, ScheduleKind::Poly) - 0.5f64.powf(0.9)).abs()
                < 1e-12
        );
        assert_eq!(
            learning_rate(1.0, 0.0, 10, 100, 1.0, ScheduleKind::Poly),
            0.0
        );
        assert!((learning_rate(1.0, 0.0, 10, 50, 0.5, ScheduleKind::Cosine) - 0.5).abs() < 1e-12);
        assert!(learning_rate(1.0, 0.0, 10, 100, 1.0, ScheduleKind::Cosine).abs() < 1e-12);
        // Upstream Swin-UMamba: cosine from 1e-4 to 1e-6, as torch's CosineAnnealingLR.
        let lr = |p| learning_rate(1e-4, 1e-6, 0, 1, p, ScheduleKind::Cosine);
        assert!((lr(1.0) - 1e-6).abs() < 1e-18 && (lr(0.0) - 1e-4).abs() < 1e-18);
        assert!((lr(0.5) - (1e-6 + 0.5 * (1e-4 - 1e-6))).abs() < 1e-18);
    }
}
