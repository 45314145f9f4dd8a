//! The two-stage learning-rate and weight-decay schedule of BitNet b1.58 (paper Table 9,
//! DESIGN.md §1): linear warm-up, then linear decay to zero over the whole run with peak `lr1`
//! in stage 1 and `lr2` in stage 2; at the midpoint the LR drops (peak lr1 → lr2) and weight
//! decay goes from its stage-1 value to 0.

use serde::{Deserialize, Serialize};

use crate::error::TrainError;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub total_steps: u64,
    pub warmup_steps: u64,
    /// Stage-1 peak learning rate.
    pub lr1: f64,
    /// Stage-2 peak learning rate (applies from the midpoint).
    pub lr2: f64,
    /// Stage-1 weight decay (stage 2 uses 0).
    pub weight_decay: f64,
}

/// Table 9's peak learning rates (stage 1, stage 2) by preset. The small presets have no paper
/// value; smaller models take larger steps, so they extrapolate the table's trend (400M: 1.8e-3).
pub fn paper_learning_rates(preset: &str) -> (f64, f64) {
    match preset {
        "400m" => (1.8e-3, 1.2e-3),
        "1.3b" => (1.2e-3, 8e-4),
        "3b" => (1.2e-3, 6.4e-4),
        "7b" => (1e-3, 6e-4),
        _ => (3e-3, 2e-3),
    }
}

impl Schedule {
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Input(m));
        if self.total_steps == 0 {
            return bad("--steps must be positive".into());
        }
        if self.warmup_steps > self.total_steps {
            return bad(format!(
                "--warmup {} exceeds --steps {}",
                self.warmup_steps, self.total_steps
            ));
        }
        for (name, v) in [
            ("--lr1", self.lr1),
            ("--lr2", self.lr2),
            ("--weight-decay", self.weight_decay),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{name} must be a non-negative number, found {v}"));
            }
        }
        Ok(())
    }

    /// First step of stage 2.
    pub fn midpoint(&self) -> u64 {
        self.total_steps / 2
    }

    /// Learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        let peak = if step < self.midpoint() {
            self.lr1
        } else {
            self.lr2
        };
        let decay = 1.0 - step as f64 / self.total_steps as f64;
        let warmup = if self.warmup_steps == 0 {
            1.0
        } else {
            ((step + 1) as f64 / self.warmup_steps as f64).min(1.0)
        };
        peak * decay.max(0.0) * warmup
    }

    /// Decoupled weight decay of step `step`.
    pub fn weight_decay(&self, step: u64) -> f64 {
        if step < self.midpoint() {
            self.weight_decay
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_at_chosen_steps() {
        let s = Schedule {
            total_steps: 1000,
            warmup_steps: 100,
            lr1: 1.8e-3,
            lr2: 1.2e-3,
            weight_decay: 0.1,
        };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(s.lr(0), 1.8e-3 * 0.01 * 1.0)); // warm-up 1/100, decay factor 1
        assert!(close(s.lr(49), 1.8e-3 * 0.5 * 0.951));
        assert!(close(s.lr(99), 1.8e-3 * 0.901)); // warm-up done
        assert!(close(s.lr(499), 1.8e-3 * 0.501)); // last stage-1 step
        assert!(close(s.lr(500), 1.2e-3 * 0.5)); // the drop at the midpoint
        assert!(close(s.lr(999), 1.2e-3 * 0.001));
        assert_eq!(s.lr(1000), 0.0);
        assert_eq!((s.weight_decay(499), s.weight_decay(500)), (0.1, 0.0));
        assert!(Schedule {
            warmup_steps: 2000,
            ..s
        }
        .validate()
        .is_err());
        assert!(Schedule { lr1: f64::NAN, ..s }.validate().is_err());
        assert!(s.validate().is_ok());
    }
}
