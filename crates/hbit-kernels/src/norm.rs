//! RMSNorm's per-row factor `1 / sqrt(mean(x²) + eps)`, shared by the trainer and the engine so
//! that both normalize every row bit for bit alike.
//!
//! The sum of squares runs in eight interleaved f32 lanes (lane i takes x[j] for j ≡ i mod 8),
//! then a fixed pairwise tree, as [`crate::quant::abs_sum_f32`] does. A left-to-right sum is one
//! dependency chain of `n` additions (≈ 4 cycles each): the engine's four norms per layer took
//! 2% of a ≈700M decode step that way, on the calling thread while the other core waited. Eight
//! independent lanes let the compiler keep the sum in one vector register.

/// `Σ x²` in the fixed order described in the module documentation.
pub fn square_sum_f32(x: &[f32]) -> f32 {
    sum_in_lanes(x, |v| v * v)
}

/// `Σ f(x)` in eight interleaved f32 lanes (lane i takes x[j] for j ≡ i mod 8), then the fixed
/// pairwise tree `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`: the order that this
/// module's and [`crate::quant::abs_sum_f32`]'s SIMD-friendly sums share.
pub(crate) fn sum_in_lanes(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    for (lane, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        *lane += f(v);
    }
    let l4 = [
        lanes[0] + lanes[4],
        lanes[1] + lanes[5],
        lanes[2] + lanes[6],
        lanes[3] + lanes[7],
    ];
    let l2 = [l4[0] + l4[2], l4[1] + l4[3]];
    l2[0] + l2[1]
}

/// RMSNorm's factor of one row: `1 / sqrt(Σ x² / n + eps)`, with `n = x.len()`.
pub fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let mean = square_sum_f32(x) / x.len() as f32;
    1.0 / (mean + eps).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_answers() {
        // 3² + 4² = 25 over 2 values: mean 12.5, 1/sqrt(12.5) (eps 0).
        assert_eq!(square_sum_f32(&[3.0, -4.0]), 25.0);
        assert_eq!(inv_rms(&[3.0, -4.0], 0.0), 1.0 / 12.5f32.sqrt());
        // Nine values: the ninth lands in lane 0 after the first chunk of eight.
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        assert_eq!(square_sum_f32(&x), 285.0);
        assert_eq!(square_sum_f32(&[]), 0.0);
        // eps keeps an all-zero row finite: 1 / sqrt(1e-5).
        assert_eq!(inv_rms(&[0.0; 4], 1e-5), 1.0 / 1e-5f32.sqrt());
    }

    /// The lanes and the tree, written out index by index: the order is the contract.
    fn square_sum_by_lanes(x: &[f32]) -> f32 {
        let mut lanes = [0.0f32; 8];
        for (j, v) in x.iter().enumerate() {
            lanes[j % 8] += v * v;
        }
        ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6]))
            + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))
    }

    proptest! {
        #[test]
        fn sum_follows_the_documented_order_and_is_accurate(
            x in proptest::collection::vec(-100.0f32..100.0, 0..300),
        ) {
            let s = square_sum_f32(&x);
            prop_assert_eq!(s.to_bits(), square_sum_by_lanes(&x).to_bits());
            let exact: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
            prop_assert!((s as f64 - exact).abs() <= 1e-5 * exact.max(1.0));
        }
    }
}
