//! The SiLU of the GLU (`silu(g) = g / (1 + e^(-g))`), shared by the trainer and the engine so
//! that both compute it bit for bit alike, with an `exp` that vectorizes.
//!
//! The scalar `f32::exp` (glibc's `expf`) is one call per value: it took 2.7% of a ≈700M
//! prefill's samples and ran on the calling thread in decode. [`exp_f32`] is Cephes' `expf`
//! reduction and polynomial (relative error ≈ 1e-7, about one ulp) written with plain
//! multiplications and additions, no fused multiply-add, so the AVX2 path repeats the scalar
//! definition operation for operation and equals it bit for bit. Attention's softmax
//! (`attention::softmax_exponentials`) uses the same `exp`.

use crate::cpu::KernelPath;
use crate::error::KernelError;

/// Inputs are clamped to this range: `2^n` of the reduction stays a normal f32 (n in −126..=127).
const EXP_LO: f32 = -87.3;
const EXP_HI: f32 = 88.3;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split so that `n · LN2_HI` is exact for |n| ≤ 2^15 (9 significant bits).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes `expf` polynomial for e^r − 1 − r on |r| ≤ ln2 / 2, highest degree first.
const P: [f32; 6] = [
    1.987_569_2e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// `e^x`, the definition every path reproduces (x clamped to [−87.3, 88.3]; NaN stays NaN).
pub fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(EXP_LO, EXP_HI);
    let n = (x * LOG2E + 0.5).floor();
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = P[0];
    for c in &P[1..] {
        p = p * r + c;
    }
    let y = (p * (r * r) + r) + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `silu(g) = g / (1 + e^(-g))` on [`exp_f32`].
pub fn silu(g: f32) -> f32 {
    silu_and_sigmoid(g).0
}

/// `(silu(g), sigmoid(g))` from one [`exp_f32`]: the GLU's backward needs both.
pub fn silu_and_sigmoid(g: f32) -> (f32, f32) {
    let denominator = 1.0 + exp_f32(-g);
    (g / denominator, 1.0 / denominator)
}

/// `gate[i] = silu(gate[i]) · up[i]`: the GLU product, on `path`.
pub fn silu_times(path: KernelPath, gate: &mut [f32], up: &[f32]) -> Result<(), KernelError> {
    path.check_supported()?;
    if gate.len() != up.len() {
        return Err(KernelError::LengthMismatch {
            what: "GLU up values (one per gate value)",
            expected: gate.len(),
            found: up.len(),
        });
    }
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `check_supported` confirmed AVX2 (the AVX-512 path requires it as well, see
        // `cpu`); the lengths were checked equal above.
        KernelPath::Avx2 | KernelPath::Avx512 => unsafe { avx2::silu_times(gate, up) },
        _ => silu_times_scalar(gate, up),
    }
    Ok(())
}

fn silu_times_scalar(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::{EXP_HI, EXP_LO, LN2_HI, LN2_LO, LOG2E, P};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU supports AVX2; `gate.len() == up.len()`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn silu_times(gate: &mut [f32], up: &[f32]) {
        let n8 = gate.len() / 8 * 8;
        for i in (0..n8).step_by(8) {
            // SAFETY: i + 8 ≤ n8 ≤ both lengths.
            unsafe {
                let g = _mm256_loadu_ps(gate.as_ptr().add(i));
                let u = _mm256_loadu_ps(up.as_ptr().add(i));
                let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
                let s = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0), e));
                _mm256_storeu_ps(gate.as_mut_ptr().add(i), _mm256_mul_ps(s, u));
            }
        }
        super::silu_times_scalar(&mut gate[n8..], &up[n8..]);
    }

    /// [`super::exp_f32`] on eight lanes, operation for operation.
    #[target_feature(enable = "avx2")]
    pub(crate) fn exp8(x: __m256) -> __m256 {
        // `clamp` keeps NaN; max/min with the bound as the second operand return it for NaN
        // lanes, so NaN is re-inserted by the blend below.
        let clamped = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(EXP_LO)),
            _mm256_set1_ps(EXP_HI),
        );
        let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x);
        let x = _mm256_blendv_ps(clamped, x, nan);
        let n = _mm256_floor_ps(_mm256_add_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
            _mm256_set1_ps(0.5),
        ));
        let r = _mm256_sub_ps(
            _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(LN2_HI))),
            _mm256_mul_ps(n, _mm256_set1_ps(LN2_LO)),
        );
        let mut p = _mm256_set1_ps(P[0]);
        for &c in &P[1..] {
            p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(
            _mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(r, r)), r),
            _mm256_set1_ps(1.0),
        );
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvttps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(y, _mm256_castsi256_ps(bits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exp_known_values_within_two_ulp() {
        for x in [0.0f32, 1.0, -1.0, 0.5, 10.0, -10.0, 80.0, -80.0, 1e-8] {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            assert!(
                ((got - want) / want).abs() < 2.5e-7,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert_eq!(exp_f32(0.0), 1.0);
        // Clamped, not infinite or zero: the SiLU of any finite gate stays finite.
        assert!(exp_f32(1000.0).is_finite() && exp_f32(-1000.0) > 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
    }

    #[test]
    fn silu_known_values() {
        assert_eq!(silu(0.0), 0.0);
        // silu(x) = x · sigmoid(x): sigmoid(2) = 0.880797…
        assert!((silu(2.0) - 2.0 * 0.880_797_1).abs() < 1e-6);
        assert!((silu(-2.0) + 2.0 * 0.119_202_92).abs() < 1e-6);
        // Large |g|: g itself, and a vanishing negative.
        assert_eq!(silu(100.0), 100.0);
        assert!(silu(-100.0) <= 0.0 && silu(-100.0) > -1e-30);
    }

    #[test]
    fn mismatched_lengths_are_a_typed_error() {
        let mut g = [1.0f32; 3];
        assert!(silu_times(KernelPath::Scalar, &mut g, &[1.0; 2]).is_err());
    }

    proptest! {
        #[test]
        fn exp_is_accurate_over_the_range(x in -87.0f32..88.0) {
            let want = (x as f64).exp();
            prop_assert!(((exp_f32(x) as f64 - want) / want).abs() < 3e-7, "exp({})", x);
        }

        #[test]
        fn every_path_equals_the_scalar_definition(
            g in proptest::collection::vec(-120.0f32..120.0, 0..70),
            seed in 0u32..1000,
        ) {
            let up: Vec<f32> = (0..g.len()).map(|i| ((i as u32 * 7 + seed) % 13) as f32 - 6.0).collect();
            let mut want = g.clone();
            silu_times_scalar(&mut want, &up);
            for path in KernelPath::supported() {
                let mut got = g.clone();
                silu_times(path, &mut got, &up).unwrap();
                let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                prop_assert!(same, "{}: {:?} vs {:?}", path, got, want);
            }
        }
    }
}
