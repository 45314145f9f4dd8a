//! AVX2 forms of the per-token activation quantizers' two loops ([`crate::quant`]): the absmax
//! of eq. (5) and the `RoundClip(scale · x, lo, hi)` codes of eqs. (5)–(6). Each computes exactly
//! what the scalar loop computes (max is order-free on finite values; the codes are elementwise
//! with the same f32 operations as [`crate::quant::round_clip`]), so both paths give the same
//! bits. A decode step quantizes four projection inputs per layer on the calling thread, where
//! the scalar loop took 4% of it.

use std::arch::x86_64::*;

/// `max |x|` (0 for an empty slice).
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn abs_max(x: &[f32]) -> f32 {
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        // SAFETY: `c` holds 8 values.
        let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v));
    }
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` holds 8 values.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
    let best = lanes.iter().fold(0.0f32, |a, &b| a.max(b));
    chunks.remainder().iter().fold(best, |a, v| a.max(v.abs()))
}

/// `out[i] = round_clip(scale · x[i], lo, hi)` as i8; `lo`, `hi` integers within i8.
///
/// # Safety
/// The CPU supports AVX2; `out.len() == x.len()`.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn codes(x: &[f32], scale: f32, lo: f32, hi: f32, out: &mut [i8]) {
    // The stores below go through a pointer into `out`: check, whatever the build.
    assert_eq!(
        x.len(),
        out.len(),
        "codes: values and codes differ in length"
    );
    let s = _mm256_set1_ps(scale);
    let (below, above) = (_mm256_set1_ps(lo - 1.0), _mm256_set1_ps(hi + 1.0));
    let (half, neg_half) = (_mm256_set1_ps(0.5), _mm256_set1_ps(-0.5));
    let (lo_i, hi_i) = (_mm256_set1_epi32(lo as i32), _mm256_set1_epi32(hi as i32));
    // Byte order after the two packs is [a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7] in 32-bit
    // groups; this permutation restores a0..d7.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let one = |p: *const f32| -> __m256i {
        // SAFETY: callers pass a pointer to 8 readable values; AVX2 is enabled here.
        unsafe {
            let y = _mm256_mul_ps(_mm256_loadu_ps(p), s);
            // As round_clip: clamp to one beyond the range, truncate (exact), step by the
            // fraction's side of ±0.5, clamp to the range.
            let y = _mm256_min_ps(_mm256_max_ps(y, below), above);
            let t = _mm256_cvttps_epi32(y);
            let frac = _mm256_sub_ps(y, _mm256_cvtepi32_ps(t));
            let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, half));
            let down = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(frac, neg_half));
            // A true comparison is -1: subtracting `up` adds one, adding `down` subtracts one.
            let r = _mm256_add_epi32(_mm256_sub_epi32(t, up), down);
            _mm256_min_epi32(_mm256_max_epi32(r, lo_i), hi_i)
        }
    };
    let n = x.len() / 32 * 32;
    for i in (0..n).step_by(32) {
        // SAFETY: i + 32 <= n <= x.len() = out.len().
        unsafe {
            let p = x.as_ptr().add(i);
            let ab = _mm256_packs_epi32(one(p), one(p.add(8)));
            let cd = _mm256_packs_epi32(one(p.add(16)), one(p.add(24)));
            let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), order);
            _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, bytes);
        }
    }
    for (o, &v) in out[n..].iter_mut().zip(&x[n..]) {
        *o = crate::quant::round_clip(scale * v, lo, hi) as i8;
    }
}
