//! The paper's quantizers (BitNet v2, eqs. 1, 2, 5, 6), computed in f32 with eps = 1e-5 and
//! round-half-away-from-zero (`f32::round`), returning integer codes plus the dequantization scale.
//!
//! Legend: `rows`/`cols` of a weight matrix `[out, in]`; `tokens` × `cols` activations, one
//! quantization scale per token (per-token quantization over the hidden dimension).

use crate::cpu::{active_path, KernelPath};
use crate::error::KernelError;
use crate::pack::K_ALIGN;
use std::sync::atomic::{AtomicU32, Ordering};

/// The epsilon of eqs. (1), (5), (6).
pub const QUANT_EPS: f32 = 1e-5;

/// sqrt(7): the INT4 absmean scale of eq. (6) maps mean(|x|) to sqrt(7).
pub const SQRT_7: f32 = 2.645_751_3;

/// RoundClip(x, a, b) = min(max(round(x), a), b) of eq. (2), with round half away from zero.
/// `lo` and `hi` are integers of magnitude below 2^23.
#[inline]
pub fn round_clip(x: f32, lo: f32, hi: f32) -> f32 {
    // Same value as `x.round().max(lo).min(hi)`, without the `roundf` call (x86-64 has no
    // rounding instruction before SSE4.1): clamping first to one beyond the range changes no
    // result, the truncating conversion is then exact, and `x - trunc(x)` is exact in f32.
    // The ±1 step is a select, not a branch: on random inputs a branch mispredicts half the
    // time, and in a loop this keeps the rounding vectorizable.
    assert!(
        lo <= hi && lo > -8_388_608.0 && hi < 8_388_608.0,
        "round_clip: bounds {lo}..={hi} must be ordered and within ±2^23"
    );
    let x = x.max(lo - 1.0).min(hi + 1.0);
    // SAFETY: with the bounds checked above, `x` is finite and within ±(2^23 + 1) after the clamp
    // (`max`/`min` with a number never return NaN), so the truncating conversion is defined.
    let t = unsafe { x.to_int_unchecked::<i32>() } as f32;
    let frac = x - t;
    let up = f32::from(u8::from(frac >= 0.5));
    let down = f32::from(u8::from(frac <= -0.5));
    (t + up - down).max(lo).min(hi)
}

/// [`round_clip`] to an integer code: the same value, as an `i32`. `lo ≤ hi`, both of
/// magnitude below 2^23.
#[inline(always)]
pub fn round_clip_i32(x: f32, lo: i32, hi: i32) -> i32 {
    assert!(
        lo <= hi && lo > -(1 << 23) && hi < 1 << 23,
        "round_clip_i32: bounds {lo}..={hi} must be ordered and within ±2^23"
    );
    let x = x.max(lo as f32 - 1.0).min(hi as f32 + 1.0);
    // SAFETY: the bounds are checked above, so the clamped `x` is finite and within ±(2^23 + 1),
    // where the truncating conversion is defined.
    let t = unsafe { x.to_int_unchecked::<i32>() };
    let frac = x - t as f32;
    (t + i32::from(frac >= 0.5) - i32::from(frac <= -0.5)).clamp(lo, hi)
}

/// A ternary weight matrix: codes in {-1, 0, 1} and the per-tensor absmean scale.
#[derive(Debug, Clone, PartialEq)]
pub struct TernaryWeights {
    pub rows: usize,
    pub cols: usize,
    /// alpha = mean(|W|) of eq. (1): the dequantized weight is `alpha * code`.
    pub alpha: f32,
    /// `[rows, cols]`, row-major, each in {-1, 0, 1}.
    pub codes: Vec<i8>,
}

impl TernaryWeights {
    /// Builds from codes already in {-1, 0, 1}; rejects anything else.
    pub fn from_codes(
        rows: usize,
        cols: usize,
        alpha: f32,
        codes: Vec<i8>,
    ) -> Result<Self, KernelError> {
        check_matrix("ternary weights", rows, cols, codes.len())?;
        if let Some(index) = codes.iter().position(|&c| !(-1..=1).contains(&c)) {
            return Err(KernelError::InvalidCode {
                what: "ternary weight",
                code: codes[index] as i32,
                index,
            });
        }
        if !alpha.is_finite() {
            return Err(KernelError::NonFinite {
                what: "ternary weight scale alpha",
                index: 0,
            });
        }
        Ok(Self {
            rows,
            cols,
            alpha,
            codes,
        })
    }

    /// `alpha * Wq`, the dequantized weights `[rows, cols]`.
    pub fn dequantize(&self) -> Vec<f32> {
        self.codes.iter().map(|&c| self.alpha * c as f32).collect()
    }
}

fn check_matrix(
    what: &'static str,
    rows: usize,
    cols: usize,
    len: usize,
) -> Result<(), KernelError> {
    if rows == 0 || cols == 0 {
        return Err(KernelError::InvalidSize {
            what,
            found: rows.min(cols),
            reason: "rows and columns must be non-zero",
        });
    }
    let expected = rows.checked_mul(cols).ok_or(KernelError::InvalidSize {
        what,
        found: rows,
        reason: "rows * cols overflows",
    })?;
    if len != expected {
        return Err(KernelError::LengthMismatch {
            what,
            expected,
            found: len,
        });
    }
    Ok(())
}

fn check_finite(what: &'static str, x: &[f32]) -> Result<(), KernelError> {
    match crate::scan::first_where(x, |v: f32| !v.is_finite()) {
        Some(index) => Err(KernelError::NonFinite { what, index }),
        None => Ok(()),
    }
}

/// Ternary absmean quantization per tensor, eqs. (1)–(2):
/// `alpha = mean(|W|)`, `Wq = RoundClip(W / (alpha + eps), -1, 1)`.
///
/// The mean is accumulated in f64 (a per-tensor sum over millions of weights would lose digits in
/// f32) and rounded once to f32; everything after is f32.
pub fn quantize_ternary(
    w: &[f32],
    rows: usize,
    cols: usize,
) -> Result<TernaryWeights, KernelError> {
    check_matrix("ternary weights", rows, cols, w.len())?;
    check_finite("weights", w)?;
    let alpha = (w.iter().map(|v| v.abs() as f64).sum::<f64>() / w.len() as f64) as f32;
    let denom = alpha + QUANT_EPS;
    let codes = w
        .iter()
        .map(|&v| round_clip(v / denom, -1.0, 1.0) as i8) // eq. (1)
        .collect();
    Ok(TernaryWeights {
        rows,
        cols,
        alpha,
        codes,
    })
}

/// Activation bit width of a per-token quantizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ActBits {
    /// INT8 absmax, eq. (5): codes in [-128, 127].
    Int8,
    /// INT4 absmean, eq. (6): codes in [-8, 7].
    Int4,
}

impl ActBits {
    pub fn bits(self) -> u8 {
        match self {
            ActBits::Int8 => 8,
            ActBits::Int4 => 4,
        }
    }

    pub fn from_bits(bits: u8) -> Option<ActBits> {
        match bits {
            8 => Some(ActBits::Int8),
            4 => Some(ActBits::Int4),
            _ => None,
        }
    }

    /// The integer range `[min, max]` of the codes.
    pub fn code_range(self) -> (i8, i8) {
        match self {
            ActBits::Int8 => (-128, 127),
            ActBits::Int4 => (-8, 7),
        }
    }
}

/// Sum of |x| in a fixed order: eight interleaved f32 lanes (lane i takes x[j] for j ≡ i mod 8),
/// then a fixed pairwise tree. A SIMD version reproduces this order exactly, and eight lanes keep
/// the rounding error of a per-token sum small.
pub fn abs_sum_f32(x: &[f32]) -> f32 {
    crate::norm::sum_in_lanes(x, f32::abs)
}

/// INT8 absmax quantization of one token, eq. (5):
/// `gamma = max|x|`, `xq = RoundClip(127 / (gamma + eps) * x, -128, 127)`.
/// Writes the codes and returns the dequantization scale `gamma / 127`.
pub fn quantize_int8_token(x: &[f32], out: &mut [i8]) -> f32 {
    int8_token(KernelPath::Scalar, x, out)
}

/// INT4 absmean quantization of one token, eq. (6):
/// `beta = mean|x|`, `xq = RoundClip(sqrt(7) / (beta + eps) * x, -8, 7)`.
/// Writes the codes and returns the dequantization scale `beta / sqrt(7)`.
pub fn quantize_int4_token(x: &[f32], out: &mut [i8]) -> f32 {
    int4_token(KernelPath::Scalar, x, out)
}

/// [`quantize_int8_token`] with its loops on `path` (same bits on every path).
fn int8_token(path: KernelPath, x: &[f32], out: &mut [i8]) -> f32 {
    // A real check: the SIMD loop below writes `x.len()` codes through a pointer.
    assert_eq!(
        x.len(),
        out.len(),
        "quantize: codes and values differ in length"
    );
    let gamma = abs_max(path, x);
    let scale = 127.0 / (gamma + QUANT_EPS);
    round_clip_codes(path, x, scale, -128.0, 127.0, out); // eq. (5)
    gamma / 127.0
}

/// [`quantize_int4_token`] with its loops on `path` (same bits on every path).
fn int4_token(path: KernelPath, x: &[f32], out: &mut [i8]) -> f32 {
    // A real check: the SIMD loop below writes `x.len()` codes through a pointer.
    assert_eq!(
        x.len(),
        out.len(),
        "quantize: codes and values differ in length"
    );
    let beta = abs_sum_f32(x) / x.len() as f32;
    let scale = SQRT_7 / (beta + QUANT_EPS);
    round_clip_codes(path, x, scale, -8.0, 7.0, out); // eq. (6)
    beta / SQRT_7
}

/// `max |x|`, on `path` (order-free on finite values, so every path agrees).
fn abs_max(path: KernelPath, x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if path != KernelPath::Scalar {
        // SAFETY: callers pass only supported paths (checked in `quantize_activations_with`),
        // and every non-scalar path implies AVX2.
        return unsafe { crate::quant_avx2::abs_max(x) };
    }
    let _ = path;
    x.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// `out[i] = RoundClip(scale · x[i], lo, hi)`, on `path` (elementwise, identical on every path).
fn round_clip_codes(path: KernelPath, x: &[f32], scale: f32, lo: f32, hi: f32, out: &mut [i8]) {
    #[cfg(target_arch = "x86_64")]
    if path != KernelPath::Scalar {
        // SAFETY: as in `abs_max`; `out` and `x` have one length (checked by the callers).
        return unsafe { crate::quant_avx2::codes(x, scale, lo, hi, out) };
    }
    let _ = path;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = round_clip(scale * v, lo, hi) as i8;
    }
}

/// Per-token quantized activations, laid out for the matrix kernels: each token's codes are
/// zero-padded to `stride` (a multiple of [`K_ALIGN`]) so kernels never handle a ragged tail.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedActivations {
    pub bits: ActBits,
    pub tokens: usize,
    pub cols: usize,
    /// Padded row length of `codes`.
    pub stride: usize,
    /// `[tokens, stride]`; columns `cols..stride` are zero.
    pub codes: Vec<i8>,
    /// `[tokens]`: dequantization scale of each token (`gamma/127` or `beta/sqrt 7`).
    pub scales: Vec<f32>,
}

impl QuantizedActivations {
    /// The codes of token `t`, without padding.
    pub fn token(&self, t: usize) -> &[i8] {
        &self.codes[t * self.stride..t * self.stride + self.cols]
    }

    /// Dequantized activations `[tokens, cols]`.
    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.tokens)
            .flat_map(|t| {
                let s = self.scales[t];
                self.token(t).iter().map(move |&q| s * q as f32)
            })
            .collect()
    }

    /// Builds from codes already quantized (e.g. read back from disk); validates their range.
    pub fn from_codes(
        bits: ActBits,
        tokens: usize,
        cols: usize,
        codes: &[i8],
        scales: Vec<f32>,
    ) -> Result<Self, KernelError> {
        check_matrix("activation codes", tokens, cols, codes.len())?;
        if scales.len() != tokens {
            return Err(KernelError::LengthMismatch {
                what: "activation scales",
                expected: tokens,
                found: scales.len(),
            });
        }
        let (lo, hi) = bits.code_range();
        if let Some(index) = codes.iter().position(|c| !(lo..=hi).contains(c)) {
            return Err(KernelError::InvalidCode {
                what: "activation code",
                code: codes[index] as i32,
                index,
            });
        }
        let mut q = Self::zeroed(bits, tokens, cols);
        for t in 0..tokens {
            q.codes[t * q.stride..t * q.stride + cols].copy_from_slice(&codes[t * cols..][..cols]);
        }
        q.scales = scales;
        Ok(q)
    }

    fn zeroed(bits: ActBits, tokens: usize, cols: usize) -> Self {
        let stride = cols.div_ceil(K_ALIGN) * K_ALIGN;
        Self {
            bits,
            tokens,
            cols,
            stride,
            codes: vec![0; tokens * stride],
            scales: vec![0.0; tokens],
        }
    }
}

/// Number of values top-K sparsification keeps in a token of `len` values: `round(keep * len)`,
/// at least one (BitNet a4.8 / Q-Sparse; `keep` in (0, 1]).
pub fn topk_count(len: usize, keep: f32) -> usize {
    ((keep as f64 * len as f64).round() as usize).clamp(1, len.max(1))
}

/// Top-K sparsification of one token (BitNet a4.8 / Q-Sparse): keeps the `k` largest-magnitude
/// values and zeroes the rest. Ties at the threshold go to the lower index, so exactly `k` values
/// survive and training and inference agree on which.
pub fn sparsify_topk_token(x: &mut [f32], k: usize) {
    if k >= x.len() {
        return;
    }
    let mut magnitudes: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    // The k-th largest magnitude is the threshold.
    let (_, threshold, _) = magnitudes.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let threshold = *threshold;
    let above = x.iter().filter(|v| v.abs() > threshold).count();
    let mut ties_left = k - above;
    for v in x.iter_mut() {
        let m = v.abs();
        if m > threshold {
            continue;
        }
        if m == threshold && ties_left > 0 {
            ties_left -= 1;
            continue;
        }
        *v = 0.0;
    }
}

/// Below this many values, quantizing on one thread beats splitting the work.
const PARALLEL_QUANT_VALUES: usize = 1 << 15;

/// Quantizes `x` (`[tokens, cols]`) per token with the given bit width (eq. 5 or 6), on the
/// active kernel path.
pub fn quantize_activations(
    x: &[f32],
    tokens: usize,
    cols: usize,
    bits: ActBits,
) -> Result<QuantizedActivations, KernelError> {
    quantize_activations_with(active_path()?, x, tokens, cols, bits)
}

/// [`quantize_activations`] on an explicit kernel path; every path gives the same bits.
pub fn quantize_activations_with(
    path: KernelPath,
    x: &[f32],
    tokens: usize,
    cols: usize,
    bits: ActBits,
) -> Result<QuantizedActivations, KernelError> {
    path.check_supported()?;
    check_matrix("activations", tokens, cols, x.len())?;
    check_finite("activations", x)?;
    let mut q = QuantizedActivations::zeroed(bits, tokens, cols);
    let stride = q.stride;
    let quantize = |t: usize, out: &mut [i8]| -> f32 {
        let row = &x[t * cols..(t + 1) * cols];
        match bits {
            ActBits::Int8 => int8_token(path, row, &mut out[..cols]),
            ActBits::Int4 => int4_token(path, row, &mut out[..cols]),
        }
    };
    if tokens * cols >= PARALLEL_QUANT_VALUES {
        // Tokens are independent: many of them (a prefill) are split across threads.
        let scales: Vec<AtomicU32> = (0..tokens).map(|_| AtomicU32::new(0)).collect();
        crate::parallel::for_each_row(&mut q.codes, stride, |t, out| {
            scales[t].store(quantize(t, out).to_bits(), Ordering::Relaxed);
        });
        q.scales = scales
            .into_iter()
            .map(|s| f32::from_bits(s.into_inner()))
            .collect();
    } else {
        for (t, (out, scale)) in q
            .codes
            .chunks_exact_mut(stride)
            .zip(q.scales.iter_mut())
            .enumerate()
        {
            *scale = quantize(t, out);
        }
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "differ in length")]
    fn a_code_buffer_of_the_wrong_length_is_refused_in_every_build() {
        quantize_int8_token(&[1.0; 40], &mut [0i8; 39]);
    }
    use proptest::prelude::*;

    #[test]
    fn many_tokens_quantize_on_threads_exactly_as_one_by_one() {
        let (tokens, cols) = (70, 1000); // 70 000 values: the parallel path
        assert!(tokens * cols >= PARALLEL_QUANT_VALUES);
        let x: Vec<f32> = (0..tokens * cols)
            .map(|i| ((i * 7919 % 2003) as f32 - 1001.0) / 97.0)
            .collect();
        for bits in [ActBits::Int8, ActBits::Int4] {
            let q = quantize_activations(&x, tokens, cols, bits).unwrap();
            for t in 0..tokens {
                let mut codes = vec![0i8; cols];
                let row = &x[t * cols..(t + 1) * cols];
                let scale = match bits {
                    ActBits::Int8 => quantize_int8_token(row, &mut codes),
                    ActBits::Int4 => quantize_int4_token(row, &mut codes),
                };
                assert_eq!(q.token(t), codes.as_slice());
                assert_eq!(q.scales[t].to_bits(), scale.to_bits());
            }
        }
    }

    #[test]
    fn topk_keeps_exactly_k_largest_with_ties_to_lower_index() {
        let mut x = [0.5, -2.0, 0.5, 1.0, -0.5, 3.0];
        // k = 4: 3.0, -2.0, 1.0 and the first of the three 0.5-magnitude ties.
        sparsify_topk_token(&mut x, 4);
        assert_eq!(x, [0.5, -2.0, 0.0, 1.0, 0.0, 3.0]);
        assert_eq!(topk_count(6, 0.5), 3);
        assert_eq!(topk_count(5, 0.5), 3); // round half away from zero
        assert_eq!(topk_count(3, 0.01), 1);
        let mut all = [1.0, -1.0];
        sparsify_topk_token(&mut all, 2);
        assert_eq!(all, [1.0, -1.0]);
    }

    #[test]
    fn ternary_known_answer() {
        // |W| = [0.1, 0.5, 0.3, 0.9, 0.0, 0.2] -> alpha = 2.0/6 = 0.3333..
        // W/(alpha+eps) = [0.3, -1.5, 0.9, 2.7, 0, -0.6] -> round: [0, -2, 1, 3, 0, -1] -> clip.
        let w = [0.1, -0.5, 0.3, 0.9, 0.0, -0.2];
        let q = quantize_ternary(&w, 2, 3).unwrap();
        assert!((q.alpha - 1.0 / 3.0).abs() < 1e-7);
        assert_eq!(q.codes, vec![0, -1, 1, 1, 0, -1]);
        assert_eq!(q.dequantize()[1], -q.alpha);
    }

    proptest! {
        #[test]
        fn every_path_quantizes_activations_as_the_scalar_token_quantizers(
            tokens in 1usize..4,
            cols in 1usize..300,
            seed in 0u32..10_000,
            halves in proptest::bool::ANY,
        ) {
            // Values on exact half steps (with `halves`) exercise the rounding ties; large and
            // small magnitudes the clamps.
            let x: Vec<f32> = (0..tokens * cols)
                .map(|i| {
                    let h = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed);
                    let v = (h % 2001) as f32 - 1000.0;
                    if halves { v / 2.0 } else { v * 0.013 * (1 + h % 7) as f32 }
                })
                .collect();
            for bits in [ActBits::Int8, ActBits::Int4] {
                for path in KernelPath::supported() {
                    let q = quantize_activations_with(path, &x, tokens, cols, bits).unwrap();
                    for t in 0..tokens {
                        let row = &x[t * cols..(t + 1) * cols];
                        let mut codes = vec![0i8; cols];
                        let scale = match bits {
                            ActBits::Int8 => quantize_int8_token(row, &mut codes),
                            ActBits::Int4 => quantize_int4_token(row, &mut codes),
                        };
                        prop_assert_eq!(q.token(t), codes.as_slice(), "{} {:?}", path, bits);
                        prop_assert_eq!(q.scales[t].to_bits(), scale.to_bits());
                    }
                }
            }
        }
    }

    proptest! {
        #[test]
        fn round_clip_equals_round_then_clamp(
            x in prop_oneof![any::<f32>().prop_filter("finite", |v| v.is_finite()),
                             (-300i32..300).prop_map(|i| i as f32 / 2.0),
                             (-300i32..300).prop_map(|i| i as f32 + 0.49999997)],
        ) {
            for (lo, hi) in [(-128.0, 127.0), (-8.0, 7.0), (-1.0, 1.0)] {
                let want = x.round().max(lo).min(hi);
                // Equal as numbers (a zero's sign may differ; codes are integers).
                prop_assert!(round_clip(x, lo, hi) == want, "x = {}", x);
            }
        }
    }

    #[test]
    fn ternary_clips_and_round_clip_rounds_half_away_from_zero() {
        // W = [1, -1, 3, -3, 0, 0, 0, 0] -> alpha = 8/8 = 1.0 -> W/(1+eps) ≈ ±0.99999 (rounds
        // to ±1) and ±2.99997 (rounds to ±3, clipped to ±1). Exact halves are checked on
        // RoundClip itself: eps keeps W/(alpha+eps) off exact halves.
        let w = [1.0, -1.0, 3.0, -3.0, 0.0, 0.0, 0.0, 0.0];
        let q = quantize_ternary(&w, 1, 8).unwrap();
        assert_eq!(q.alpha, 1.0);
        assert_eq!(q.codes, vec![1, -1, 1, -1, 0, 0, 0, 0]);
        assert_eq!(round_clip(0.5, -8.0, 7.0), 1.0);
        assert_eq!(round_clip(-0.5, -8.0, 7.0), -1.0);
        assert_eq!(round_clip(2.5, -8.0, 7.0), 3.0);
        assert_eq!(round_clip(-2.5, -8.0, 7.0), -3.0);
    }

    #[test]
    fn round_clip_is_roundf_then_clip_and_the_integer_form_agrees() {
        // Exact halves, values next to them, the clip bounds and far outside them.
        let mut xs: Vec<f32> = (-40..=40).map(|i| i as f32 * 0.25).collect();
        for h in [0.5f32, 1.5, 2.5, 7.5, 8.5, 126.5] {
            for v in [h, -h] {
                xs.extend([
                    v,
                    f32::from_bits(v.to_bits() + 1),
                    f32::from_bits(v.to_bits() - 1),
                ]);
            }
        }
        xs.extend([1e9, -1e9, 0.0, -0.0, 0.49999997, -0.49999997]);
        for &x in &xs {
            for (lo, hi) in [(-8, 7), (-127, 127), (-1, 1)] {
                let expected = x.round().max(lo as f32).min(hi as f32);
                assert_eq!(round_clip(x, lo as f32, hi as f32), expected, "{x}");
                assert_eq!(round_clip_i32(x, lo, hi), expected as i32, "{x}");
            }
        }
    }

    #[test]
    fn int8_known_answer() {
        // gamma = 2.0, scale = 127 / 2.00001 = 63.49968..
        // x * scale = [63.4997, -126.9994, 31.7498, 0.0, 15.8749] -> [63, -127, 32, 0, 16]
        let x = [1.0, -2.0, 0.5, 0.0, 0.25];
        let mut q = [0i8; 5];
        let s = quantize_int8_token(&x, &mut q);
        assert_eq!(q, [63, -127, 32, 0, 16]);
        assert_eq!(s, 2.0 / 127.0);
    }

    #[test]
    fn int4_known_answer() {
        // beta = mean(|x|) = (1 + 3 + 0.5 + 0.5)/4 = 1.25; scale = sqrt7/1.25001 = 2.116580..
        // x * scale = [2.1166, -6.3497, 1.0583, -1.0583] -> [2, -6, 1, -1]
        let x = [1.0, -3.0, 0.5, -0.5];
        let mut q = [0i8; 4];
        let s = quantize_int4_token(&x, &mut q);
        assert_eq!(q, [2, -6, 1, -1]);
        assert_eq!(s, 1.25 / SQRT_7);
        // An outlier clips: beta = (100 + 3*1)/4 = 25.75 -> 100 * sqrt7/25.75 = 10.27 -> 7;
        // -100 -> -10.27 -> clip to -8.
        let x = [100.0, 1.0, -1.0, 1.0];
        let mut q = [0i8; 4];
        quantize_int4_token(&x, &mut q);
        assert_eq!(q, [7, 0, 0, 0]);
        let x = [-100.0, 1.0, -1.0, 1.0];
        quantize_int4_token(&x, &mut q);
        assert_eq!(q, [-8, 0, 0, 0]);
    }

    #[test]
    fn zero_token_gives_zero_codes() {
        let x = [0.0f32; 16];
        let q = quantize_activations(&x, 2, 8, ActBits::Int4).unwrap();
        assert!(q.codes.iter().all(|&c| c == 0));
        let q = quantize_activations(&x, 2, 8, ActBits::Int8).unwrap();
        assert!(q.codes.iter().all(|&c| c == 0));
        assert_eq!(q.scales, vec![0.0, 0.0]);
    }

    #[test]
    fn sqrt7_constant_is_exact_f32() {
        assert_eq!(SQRT_7, 7f32.sqrt());
    }

    #[test]
    fn bad_shapes_and_values_are_typed_errors() {
        assert!(matches!(
            quantize_ternary(&[1.0; 5], 2, 3),
            Err(KernelError::LengthMismatch {
                expected: 6,
                found: 5,
                ..
            })
        ));
        assert!(matches!(
            quantize_ternary(&[], 0, 3),
            Err(KernelError::InvalidSize { .. })
        ));
        assert!(matches!(
            quantize_activations(&[1.0, f32::NAN], 1, 2, ActBits::Int8),
            Err(KernelError::NonFinite { index: 1, .. })
        ));
        // The first bad value is named in whichever chunk of the scan it falls.
        for bad in [4095usize, 4096, 9000] {
            let mut x = vec![0.5f32; 10_000];
            x[bad] = f32::NEG_INFINITY;
            x[9_999] = f32::NAN;
            assert!(matches!(
                quantize_activations(&x, 1, 10_000, ActBits::Int4),
                Err(KernelError::NonFinite { index, .. }) if index == bad
            ));
        }
        assert!(matches!(
            TernaryWeights::from_codes(1, 2, 1.0, vec![0, 2]),
            Err(KernelError::InvalidCode {
                code: 2,
                index: 1,
                ..
            })
        ));
        assert!(matches!(
            QuantizedActivations::from_codes(ActBits::Int4, 1, 2, &[0, 8], vec![1.0]),
            Err(KernelError::InvalidCode { code: 8, .. })
        ));
    }

    #[test]
    fn padding_is_zero_and_token_view_is_unpadded() {
        let x: Vec<f32> = (0..2 * 300).map(|i| (i as f32 * 0.37).sin()).collect();
        let q = quantize_activations(&x, 2, 300, ActBits::Int8).unwrap();
        assert_eq!(q.stride, 512);
        assert_eq!(q.token(1).len(), 300);
        assert!(q.codes[300..512].iter().all(|&c| c == 0));
        assert!(q.codes[812..].iter().all(|&c| c == 0));
    }

    proptest! {
        #[test]
        fn int8_hits_its_range_and_bounds_error(xs in proptest::collection::vec(-50.0f32..50.0, 1..200)) {
            let mut q = vec![0i8; xs.len()];
            let s = quantize_int8_token(&xs, &mut q);
            let gamma = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            // The largest-magnitude element maps to ±127 (absmax never needs -128).
            if gamma > 0.01 {
                prop_assert!(q.iter().any(|&c| c == 127 || c == -127));
            }
            prop_assert!(q.iter().all(|&c| c >= -127));
            for (&v, &c) in xs.iter().zip(&q) {
                // Dequantization error is at most half a step (plus the eps distortion).
                prop_assert!((s * c as f32 - v).abs() <= 0.5 * s + 2e-5 + 1e-6 * gamma);
            }
        }

        #[test]
        fn int4_stays_in_range_and_reaches_both_ends_on_outliers(
            xs in proptest::collection::vec(-1.0f32..1.0, 8..100), big in 10.0f32..1000.0
        ) {
            let mut with_outliers = xs.clone();
            with_outliers[0] = big;
            with_outliers[1] = -big;
            let mut q = vec![0i8; with_outliers.len()];
            quantize_int4_token(&with_outliers, &mut q);
            prop_assert!(q.iter().all(|&c| (-8..=7).contains(&c)));
            // sqrt7 * big / mean > 7 whenever big dominates the mean: both clip limits are hit.
            prop_assert_eq!(q[0], 7);
            prop_assert_eq!(q[1], -8);
        }

        #[test]
        fn ternary_codes_are_ternary_and_alpha_is_absmean(ws in proptest::collection::vec(-3.0f32..3.0, 1..300)) {
            let q = quantize_ternary(&ws, 1, ws.len()).unwrap();
            prop_assert!(q.codes.iter().all(|&c| (-1..=1).contains(&c)));
            let mean = ws.iter().map(|v| v.abs() as f64).sum::<f64>() / ws.len() as f64;
            prop_assert!((q.alpha as f64 - mean).abs() <= 1e-6 * mean.max(1.0));
            for (&w, &c) in ws.iter().zip(&q.codes) {
                let r = w / (q.alpha + QUANT_EPS);
                if r.abs() >= 1.5 { prop_assert_eq!(c as f32, r.signum()); }
                if r.abs() < 0.5 { prop_assert_eq!(c, 0); }
            }
        }

        #[test]
        fn abs_sum_matches_f64_sum(xs in proptest::collection::vec(-10.0f32..10.0, 0..500)) {
            let exact: f64 = xs.iter().map(|v| v.abs() as f64).sum();
            prop_assert!((abs_sum_f32(&xs) as f64 - exact).abs() <= 1e-5 * exact.max(1.0));
        }
    }
}
