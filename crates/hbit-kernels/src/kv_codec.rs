//! The KV cache's codec (paper Tables 2–3, DESIGN.md §1): per-head absmax codes at 2 to 8
//! bits. `s = max|x| / q_max` with `q_max = 2^(b−1) − 1`, codes `RoundClip(x / s)` (one correctly
//! rounded division per value, half away from zero) stored unsigned as `code + 2^(b−1)` and
//! bit-packed LSB-first, `ceil(hd·b/8)` bytes per head plus one f32 scale; widened back as
//! `(code − 2^(b−1)) · s`, exactly. No calibration data. 8- and 4-bit rows (what a cache appends
//! every decode step) take a vector path; every path writes and reads the same bits.

use crate::cpu::KernelPath;
use crate::error::KernelError;
use crate::quant::round_clip;

/// Absmax-quantizes one head vector `x` to `bits`-bit codes (2..=8), stored unsigned as `code +
/// 2^(bits−1)` and bit-packed LSB-first into `out` (`ceil(len·bits/8)` bytes, zeroed by the
/// caller); returns the scale `max|x| / (2^(bits−1) − 1)`. 8- and 4-bit codes take the vector
/// path (a KV cache appends one such row per token, layer and KV head); other widths and the
/// scalar path run [`quantize_row_reference`]. The same codes on every path.
pub fn quantize_row(
    path: KernelPath,
    bits: u32,
    x: &[f32],
    out: &mut [u8],
) -> Result<f32, KernelError> {
    if !(2..=8).contains(&bits) {
        return Err(KernelError::InvalidSize {
            what: "quantize_row bits",
            found: bits as usize,
            reason: "expected 2 to 8 bits",
        });
    }
    let bytes = (x.len() * bits as usize).div_ceil(8);
    if out.len() != bytes {
        return Err(KernelError::LengthMismatch {
            what: "quantized row bytes (ceil(len · bits / 8))",
            expected: bytes,
            found: out.len(),
        });
    }
    #[cfg(target_arch = "x86_64")]
    if path != KernelPath::Scalar && (bits == 8 || bits == 4) {
        path.check_supported()?;
        // SAFETY: a non-scalar path is supported (checked), so AVX2 is present; `out` holds
        // ceil(len · bits / 8) bytes (checked).
        return Ok(unsafe { simd::quantize_row(bits, x, out) });
    }
    let _ = path;
    Ok(quantize_row_reference(bits, x, out))
}

/// [`quantize_row`], one value at a time (round half away from zero, [`round_clip`]).
pub fn quantize_row_reference(bits: u32, x: &[f32], out: &mut [u8]) -> f32 {
    let (q_max, offset) = row_code_range(bits);
    let absmax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = absmax / q_max;
    let code = |v: f32| -> u32 { row_code(v, scale, q_max, offset) };
    match bits {
        8 => out.iter_mut().zip(x).for_each(|(o, &v)| *o = code(v) as u8),
        4 => {
            for (o, pair) in out.iter_mut().zip(x.chunks(2)) {
                let hi = pair.get(1).map_or(0, |&v| code(v) << 4);
                *o = (code(pair[0]) | hi) as u8;
            }
        }
        _ => {
            for (i, &v) in x.iter().enumerate() {
                let (bit, value) = (i * bits as usize, code(v));
                for j in 0..bits as usize {
                    if value >> j & 1 == 1 {
                        out[(bit + j) / 8] |= 1 << ((bit + j) % 8);
                    }
                }
            }
        }
    }
    scale
}

/// `(q_max, offset)` of `bits`-bit codes: `2^(bits−1) − 1` and `2^(bits−1)`.
fn row_code_range(bits: u32) -> (f32, u32) {
    (((1u32 << (bits - 1)) - 1) as f32, 1u32 << (bits - 1))
}

/// The stored (unsigned) code of `v`: `RoundClip(v / scale, −q_max, q_max) + offset`; all
/// codes are `offset` when the row is zero (scale 0).
#[inline]
fn row_code(v: f32, scale: f32, q_max: f32, offset: u32) -> u32 {
    let c = if scale > 0.0 {
        round_clip(v / scale, -q_max, q_max) as i32
    } else {
        0
    };
    (c + offset as i32) as u32
}

/// Widens absmax-quantized rows to f32: `out[p·hd + i] = (code_p[i] − 2^(bits−1)) · scales[p]`,
/// where each of `scales.len()` positions holds `ceil(hd·bits/8)` bytes of `codes` as
/// [`quantize_row`] packs them (8-bit codes one per byte, 4-bit codes two per byte, low nibble
/// first, other widths LSB-first). One conversion and one multiply per value, so every path
/// gives the same bits; 8- and 4-bit rows take the vector path.
pub fn dequantize_rows(
    path: KernelPath,
    bits: u32,
    hd: usize,
    codes: &[u8],
    scales: &[f32],
    out: &mut [f32],
) -> Result<(), KernelError> {
    if !(2..=8).contains(&bits) {
        return Err(KernelError::InvalidSize {
            what: "dequantize_rows bits",
            found: bits as usize,
            reason: "expected 2 to 8 bits",
        });
    }
    let row_bytes = (hd * bits as usize).div_ceil(8);
    check(
        row_bytes,
        codes.len(),
        scales.len(),
        "KV codes [positions, row bytes]",
    )?;
    check(
        hd,
        out.len(),
        scales.len(),
        "dequantized rows [positions, hd]",
    )?;
    #[cfg(target_arch = "x86_64")]
    if path != KernelPath::Scalar && (bits == 8 || bits == 4) {
        path.check_supported()?;
        // SAFETY: a non-scalar path is supported (checked), so AVX2 is present; lengths checked.
        unsafe { simd::dequantize_rows(bits, hd, codes, scales, out) };
        return Ok(());
    }
    let _ = path;
    dequantize_rows_reference(bits, hd, codes, scales, out);
    Ok(())
}

/// Value `i` of one quantized row: `(code_i − offset) · scale`.
#[inline]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn dequantized(row: &[u8], bits: u32, i: usize, offset: i32, scale: f32) -> f32 {
    (code_at(row, bits, i) as i32 - offset) as f32 * scale
}

/// Stored code `i` of a row: 8-bit codes one per byte, 4-bit codes low nibble first, other
/// widths LSB-first across bytes.
#[inline]
fn code_at(row: &[u8], bits: u32, i: usize) -> u32 {
    match bits {
        8 => row[i] as u32,
        4 => (row[i / 2] >> (4 * (i % 2)) & 15) as u32,
        _ => {
            let bit = i * bits as usize;
            (0..bits as usize).fold(0, |v, j| {
                v | (((row[(bit + j) / 8] >> ((bit + j) % 8)) & 1) as u32) << j
            })
        }
    }
}

/// [`dequantize_rows`], one row at a time.
pub fn dequantize_rows_reference(
    bits: u32,
    hd: usize,
    codes: &[u8],
    scales: &[f32],
    out: &mut [f32],
) {
    let row_bytes = (hd * bits as usize).div_ceil(8);
    for ((row, &scale), o) in codes
        .chunks_exact(row_bytes)
        .zip(scales)
        .zip(out.chunks_exact_mut(hd))
    {
        dequantize_row_reference(bits, row, scale, o);
    }
}

/// One row of [`dequantize_rows_reference`]: `out.len()` values.
fn dequantize_row_reference(bits: u32, row: &[u8], scale: f32, out: &mut [f32]) {
    let offset = 1i32 << (bits - 1);
    let value = |code: u32| (code as i32 - offset) as f32 * scale;
    if bits == 3 {
        // Eight 3-bit codes in every three bytes, LSB first: one word per group.
        for (group, bytes) in out.chunks_mut(8).zip(row.chunks(3)) {
            let word = bytes.iter().rev().fold(0u32, |w, &b| w << 8 | b as u32);
            for (j, o) in group.iter_mut().enumerate() {
                *o = value((word >> (3 * j)) & 7);
            }
        }
        return;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = value(code_at(row, bits, i));
    }
}

/// Quantize-dequantize in place at `bits` (2..=8): the paper's 4-bit Q, which attention uses
/// but no cache stores. Widths outside 2..=8 are an error.
pub fn fake_quantize_row(path: KernelPath, bits: u32, x: &mut [f32]) -> Result<(), KernelError> {
    let mut codes = vec![0u8; (x.len() * bits as usize).div_ceil(8)];
    let scale = quantize_row(path, bits, x, &mut codes)?;
    dequantize_rows(path, bits, x.len(), &codes, &[scale], x)
}

/// `rows_len == positions · row`, else an error naming `what`.
fn check(
    row: usize,
    rows_len: usize,
    positions: usize,
    what: &'static str,
) -> Result<(), KernelError> {
    if rows_len != positions * row {
        return Err(KernelError::LengthMismatch {
            what,
            expected: positions * row,
            found: rows_len,
        });
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    /// `super::quantize_row_reference` for 8- or 4-bit codes, 16 values per step: the absmax
    /// by `vmaxps` (a NaN lane keeps the running maximum, as `f32::max` does), the division
    /// correctly rounded, and `round_clip`'s arithmetic lane by lane (clamp one beyond the
    /// range, truncate, compare the exact fraction with ±0.5, clamp).
    ///
    /// # Safety
    /// AVX2 present; `bits` is 8 or 4; `out.len() == ceil(x.len() · bits / 8)`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn quantize_row(bits: u32, x: &[f32], out: &mut [u8]) -> f32 {
        let (q_max, offset) = super::row_code_range(bits);
        let n = x.len();
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: values i..i+8 of x exist.
            let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) };
            // max(|v|, m): when |v| is NaN the second operand, m, is kept.
            m = _mm256_max_ps(_mm256_andnot_ps(sign, v), m);
            i += 8;
        }
        let mut lanes = [0.0f32; 8];
        // SAFETY: 8 writable floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
        // max is exact and order-free on non-NaN values, so the lanes fold in any order.
        let absmax = x[i..]
            .iter()
            .fold(lanes.iter().fold(0.0f32, |a, &b| a.max(b)), |a, v| {
                a.max(v.abs())
            });
        let scale = absmax / q_max;
        let step = 16;
        let mut i = 0;
        if scale > 0.0 {
            let s = _mm256_set1_ps(scale);
            let (lo, hi) = (_mm256_set1_ps(-q_max), _mm256_set1_ps(q_max));
            let (lo1, hi1) = (_mm256_set1_ps(-q_max - 1.0), _mm256_set1_ps(q_max + 1.0));
            let (half, one) = (_mm256_set1_ps(0.5), _mm256_set1_ps(1.0));
            let off = _mm256_set1_epi32(offset as i32);
            // Eight codes, offset, as i32 lanes.
            let codes8 = |p: *const f32| -> __m256i {
                // SAFETY: AVX2 enabled; the caller passes 8 readable values.
                unsafe {
                    let q = _mm256_div_ps(_mm256_loadu_ps(p), s);
                    // max(q, lo1): a NaN quotient becomes lo1, as `f32::max` gives.
                    let q = _mm256_min_ps(_mm256_max_ps(q, lo1), hi1);
                    let t = _mm256_cvtepi32_ps(_mm256_cvttps_epi32(q));
                    let frac = _mm256_sub_ps(q, t);
                    let up = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, half), one);
                    let down =
                        _mm256_and_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(frac, _mm256_set1_ps(-0.5)), one);
                    let r = _mm256_sub_ps(_mm256_add_ps(t, up), down);
                    let r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
                    _mm256_add_epi32(_mm256_cvttps_epi32(r), off)
                }
            };
            let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            while i + step <= n {
                // SAFETY: values i..i+16 exist; codes are in 0..=255, so the saturating packs
                // are exact.
                let bytes = unsafe {
                    let a = codes8(x.as_ptr().add(i));
                    let b = codes8(x.as_ptr().add(i + 8));
                    // Words a0..3 b0..3 | a4..7 b4..7, then bytes; dwords 0, 4, 1, 5 are the
                    // codes in order.
                    let w = _mm256_packs_epi32(a, b);
                    let p = _mm256_packus_epi16(w, w);
                    _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(p, order))
                };
                if bits == 8 {
                    // SAFETY: bytes i..i+16 of out exist (out.len() == n).
                    unsafe { _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, bytes) };
                } else {
                    // Word k = c_2k | c_2k+1 << 8; OR-ing it shifted right by 4 puts c_2k+1 in
                    // the low byte's high nibble (codes < 16).
                    let pairs = _mm_or_si128(bytes, _mm_srli_epi16(bytes, 4));
                    let packed =
                        _mm_packus_epi16(_mm_and_si128(pairs, _mm_set1_epi16(0xFF)), pairs);
                    // SAFETY: bytes i/2..i/2+8 of out exist (out.len() == ceil(n/2)).
                    unsafe {
                        _mm_storel_epi64(out.as_mut_ptr().add(i / 2) as *mut __m128i, packed)
                    };
                }
                i += step;
            }
        }
        // The rest (and every value of a zero row) one at a time, as the reference does.
        for k in i..n {
            let c = super::row_code(x[k], scale, q_max, offset);
            match bits {
                8 => out[k] = c as u8,
                _ => out[k / 2] |= (c as u8) << (4 * (k % 2)),
            }
        }
        scale
    }

    /// # Safety
    /// AVX2 present; `bits` is 8 or 4; `codes` holds `scales.len()` rows of `ceil(hd·bits/8)`
    /// bytes and `out` as many rows of `hd` values.
    #[target_feature(enable = "avx2")]
    pub unsafe fn dequantize_rows(
        bits: u32,
        hd: usize,
        codes: &[u8],
        scales: &[f32],
        out: &mut [f32],
    ) {
        let row_bytes = (hd * bits as usize).div_ceil(8);
        let offset = 1i32 << (bits - 1);
        let off = _mm256_set1_epi32(offset);
        let nibble = _mm_set1_epi8(0x0f);
        for ((row, &scale), o) in codes
            .chunks_exact(row_bytes)
            .zip(scales)
            .zip(out.chunks_exact_mut(hd))
        {
            let s = _mm256_set1_ps(scale);
            // Eight codes (zero-extended to i32 lanes) to eight values, stored at `dst`.
            let widen = |c: __m128i, dst: *mut f32| {
                // SAFETY: AVX2 is enabled here; callers pass 8 writable values at `dst`.
                unsafe {
                    let v = _mm256_sub_epi32(_mm256_cvtepu8_epi32(c), off);
                    _mm256_storeu_ps(dst, _mm256_mul_ps(_mm256_cvtepi32_ps(v), s));
                }
            };
            let mut i = 0;
            if bits == 8 {
                while i + 8 <= hd {
                    // SAFETY: bytes i..i+8 of the row and values i..i+8 of `o` exist.
                    unsafe {
                        let c = _mm_loadl_epi64(row.as_ptr().add(i) as *const __m128i);
                        widen(c, o.as_mut_ptr().add(i));
                    }
                    i += 8;
                }
            } else {
                while i + 16 <= hd {
                    // SAFETY: bytes i/2..i/2+8 of the row and values i..i+16 of `o` exist.
                    unsafe {
                        let b = _mm_loadl_epi64(row.as_ptr().add(i / 2) as *const __m128i);
                        let lo = _mm_and_si128(b, nibble);
                        let hi = _mm_and_si128(_mm_srli_epi16(b, 4), nibble);
                        // lo0 hi0 lo1 hi1 …: the codes in value order.
                        let c = _mm_unpacklo_epi8(lo, hi);
                        widen(c, o.as_mut_ptr().add(i));
                        widen(_mm_srli_si128(c, 8), o.as_mut_ptr().add(i + 8));
                    }
                    i += 16;
                }
            }
            for (k, v) in o.iter_mut().enumerate().skip(i) {
                *v = super::dequantized(row, bits, k, offset, scale);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    /// By hand: max|x| = 7 at 4 bits gives scale 1 and codes round(x) + 8, half away from
    /// zero; every path writes the reference's codes, bit for bit, for rows of every length
    /// (vector body and tail), exact ties, zero rows, and rows with an infinity or a NaN.
    #[test]
    fn quantize_row_known_answer_and_every_path_equals_reference() {
        let x = [7.0, -3.5, 2.5, 0.49, -7.0, 0.0];
        let mut out = [0u8; 3];
        assert_eq!(quantize_row_reference(4, &x, &mut out), 1.0);
        // Codes 15, 4 (−3.5 → −4), 11 (2.5 → 3), 8, 1, 8.
        assert_eq!(out, [15 | 4 << 4, 11 | 8 << 4, 1 | 8 << 4]);
        let mut rows: Vec<Vec<f32>> = (0..40).map(|n| values(n * 7 % 131, n as u64)).collect();
        // Exact ties: max 63.5 gives scale 0.5 at 8 bits, max 3.5 scale 0.5 at 4 bits, and
        // the values k/4 then divide to k/2.
        for max in [63.5f32, 3.5] {
            let k_max = (4.0 * max) as i32;
            let mut row = vec![max];
            row.extend((-k_max..k_max).map(|k| k as f32 * 0.25));
            rows.push(row);
        }
        rows.push(vec![0.0; 48]);
        let mut special = values(37, 9);
        special[3] = f32::NAN;
        rows.push(special.clone());
        special[20] = f32::INFINITY;
        rows.push(special);
        for path in KernelPath::supported() {
            for bits in [8, 4, 3] {
                for x in &rows {
                    let n = (x.len() * bits as usize).div_ceil(8);
                    let (mut want, mut got) = (vec![0u8; n], vec![0u8; n]);
                    let s0 = quantize_row_reference(bits, x, &mut want);
                    let s1 = quantize_row(path, bits, x, &mut got).unwrap();
                    assert_eq!(
                        s0.to_bits(),
                        s1.to_bits(),
                        "{path} {bits} bits, {} values",
                        x.len()
                    );
                    assert_eq!(want, got, "{path} {bits} bits, {} values", x.len());
                }
            }
        }
        let mut short = [0u8; 2];
        assert!(quantize_row(KernelPath::Scalar, 4, &x, &mut short).is_err());
        assert!(quantize_row(KernelPath::Scalar, 9, &x, &mut out).is_err());
    }

    #[test]
    fn dequantize_known_answers_and_errors() {
        // 8 bits: codes 128 ± k -> ±k · scale. 4 bits: bytes 0x9F -> codes 15, 9 -> 7, 1.
        for path in KernelPath::supported() {
            let mut out = [0.0; 3];
            dequantize_rows(path, 8, 3, &[128, 130, 0], &[0.5], &mut out).unwrap();
            assert_eq!(out, [0.0, 1.0, -64.0], "{path}");
            let mut out = [0.0; 3];
            dequantize_rows(path, 4, 3, &[0x9F, 0x00], &[2.0], &mut out).unwrap();
            assert_eq!(out, [14.0, 2.0, -16.0], "{path}");
        }
        // 3 bits, LSB-first: codes 7, 0, 4, 5 are bytes 0x07, 0x0B; minus 4, times 1.5.
        for path in KernelPath::supported() {
            let mut out = [0.0; 4];
            dequantize_rows(path, 3, 4, &[0x07, 0x0B], &[1.5], &mut out).unwrap();
            assert_eq!(out, [4.5, -6.0, 0.0, 1.5], "{path}");
        }
        let mut out = [0.0; 4];
        assert!(dequantize_rows(KernelPath::Scalar, 9, 4, &[0; 5], &[1.0], &mut out).is_err());
        assert!(dequantize_rows(KernelPath::Scalar, 3, 4, &[0; 3], &[1.0], &mut out).is_err());
        assert!(dequantize_rows(KernelPath::Scalar, 4, 4, &[0; 3], &[1.0], &mut out).is_err());
    }

    proptest! {
        #[test]
        fn dequantization_is_the_same_on_every_path(
            hd in 1usize..140, positions in 0usize..20, bits in prop_oneof![Just(8u32), Just(4u32)],
            seed in 0u64..1000,
        ) {
            let row_bytes = (hd * bits as usize).div_ceil(8);
            let codes: Vec<u8> = values(positions * row_bytes, seed)
                .iter()
                .map(|v| (v.to_bits() >> 7) as u8)
                .collect();
            let scales: Vec<f32> = values(positions, seed + 1);
            let mut want = vec![0.0; positions * hd];
            dequantize_rows_reference(bits, hd, &codes, &scales, &mut want);
            for path in KernelPath::supported() {
                let mut got = vec![f32::NAN; positions * hd];
                dequantize_rows(path, bits, hd, &codes, &scales, &mut got).unwrap();
                prop_assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{} bits, {}", bits, path
                );
            }
        }
    }

    #[test]
    fn quantizers_hit_their_ranges_and_known_answers() {
        for path in KernelPath::supported() {
            // absmax 3 at 3 bits: q_max 3, scale 1: codes round(x) = [-3, 1, 0, 3] -> +4.
            let x = [-3.0, 0.6, 0.0, 3.0];
            let mut codes = vec![0u8; 2];
            let s = quantize_row(path, 3, &x, &mut codes).unwrap();
            assert_eq!(s, 1.0);
            let unsigned: Vec<u32> = (0..4).map(|i| code_at(&codes, 3, i)).collect();
            assert_eq!(unsigned, vec![1, 5, 4, 7]);
            let mut back = [0.0; 4];
            dequantize_rows(path, 3, 4, &codes, &[s], &mut back).unwrap();
            assert_eq!(back, [-3.0, 1.0, 0.0, 3.0]);
            // 4 bits: q_max 7; x = [7, -3.5] -> scale 1 -> codes [7, -4] (half away from zero).
            let mut codes = vec![0u8; 1];
            let s = quantize_row(path, 4, &[7.0, -3.5], &mut codes).unwrap();
            assert_eq!((s, codes[0]), (1.0, (7 + 8) | ((8 - 4) << 4)));
            // An all-zero head stays zero.
            let mut codes = vec![0u8; 8];
            assert_eq!(quantize_row(path, 8, &[0.0; 8], &mut codes).unwrap(), 0.0);
            let mut back = [1.0; 8];
            dequantize_rows(path, 8, 8, &codes, &[0.0], &mut back).unwrap();
            assert_eq!(back, [0.0; 8]);
        }
    }

    #[test]
    fn fake_quantization_error_is_at_most_half_a_step_and_shrinks_with_bits() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        for path in KernelPath::supported() {
            let mut last = f32::INFINITY;
            for bits in [3, 4, 8] {
                let mut y = x.clone();
                fake_quantize_row(path, bits, &mut y).unwrap();
                let err = x
                    .iter()
                    .zip(&y)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                let scale =
                    x.iter().fold(0.0f32, |m, v| m.max(v.abs())) / ((1 << (bits - 1)) - 1) as f32;
                assert!(
                    err <= scale / 2.0 + 1e-6,
                    "{bits} bits: error {err} > half step {scale}"
                );
                assert!(err < last);
                last = err;
            }
        }
        assert!(fake_quantize_row(KernelPath::Scalar, 1, &mut [1.0]).is_err());
    }

    /// The bitstream definition: `width` bits of `value` at bit `bit`, LSB first.
    fn put_bits(out: &mut [u8], bit: usize, width: u32, value: u32) {
        for j in 0..width as usize {
            if value >> j & 1 == 1 {
                out[(bit + j) / 8] |= 1 << ((bit + j) % 8);
            }
        }
    }

    /// The bitstream definition: `width` bits at bit `bit`, LSB first.
    fn get_bits(data: &[u8], bit: usize, width: u32) -> u32 {
        (0..width as usize).fold(0, |v, j| {
            v | (((data[(bit + j) / 8] >> ((bit + j) % 8)) & 1) as u32) << j
        })
    }

    #[test]
    fn packing_equals_the_bitstream_definition() {
        for path in KernelPath::supported() {
            for bits in [3u32, 4, 8] {
                for len in [1usize, 7, 8, 9, 64, 67] {
                    let x: Vec<f32> = (0..len)
                        .map(|i| ((i * 31 % 19) as f32 - 9.0) / 2.0)
                        .collect();
                    let mut fast = vec![0u8; (len * bits as usize).div_ceil(8)];
                    let scale = quantize_row(path, bits, &x, &mut fast).unwrap();
                    let q_max = ((1u32 << (bits - 1)) - 1) as f32;
                    let mut slow = vec![0u8; fast.len()];
                    for (i, &v) in x.iter().enumerate() {
                        let c = (v / scale).round().clamp(-q_max, q_max) as i32 + (1 << (bits - 1));
                        put_bits(&mut slow, i * bits as usize, bits, c as u32);
                    }
                    assert_eq!(fast, slow, "{path} {bits} bits, {len} values");
                }
            }
        }
    }

    #[test]
    fn unpacking_equals_the_bitstream_definition() {
        for path in KernelPath::supported() {
            for bits in 2u32..=8 {
                for len in [1usize, 7, 8, 9, 64, 67] {
                    let x: Vec<f32> = (0..len)
                        .map(|i| ((i * 29 % 17) as f32 - 8.0) / 3.0)
                        .collect();
                    let mut codes = vec![0u8; (len * bits as usize).div_ceil(8)];
                    let scale = quantize_row(path, bits, &x, &mut codes).unwrap();
                    let mut fast = vec![0.0; len];
                    dequantize_rows(path, bits, len, &codes, &[scale], &mut fast).unwrap();
                    let offset = 1i32 << (bits - 1);
                    let slow: Vec<f32> = (0..len)
                        .map(|i| {
                            (get_bits(&codes, i * bits as usize, bits) as i32 - offset) as f32
                                * scale
                        })
                        .collect();
                    assert_eq!(fast, slow, "{path} {bits} bits, {len} values");
                }
            }
        }
    }
}
