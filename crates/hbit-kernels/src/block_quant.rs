//! Block-quantized rows below 8 bits for the LM head, in the manner of llama.cpp's Q6_K / Q4_K
//! but simpler: every 32 consecutive weights of a row share one f16 scale `d`, and each weight is
//! a signed code `q` of 6 bits (−32..=31) or 4 bits (−8..=7), so `W[r, k] = d · q` at 6.5 or
//! 4.5 bits per weight. At decode the head GEMV reads the whole matrix per token; these halve
//! (4-bit) or cut by a fifth (6-bit) the bytes of the 8-bit head.
//!
//! `d · q` is exact in f32 (an 11-bit significand times at most 6 bits), so a kernel that widens
//! a block and then runs the f32 product's defined order (`float_gemv`) is bit-identical to the
//! scalar reference.
//!
//! Layout of a row, 16 weights (a group) at a time; codes are stored as `q + 8` (4-bit) or
//! `q + 32` (6-bit):
//! * 8 bytes of low nibbles: byte `i` holds weight `i` in bits 0–3 and weight `i + 8` in bits 4–7;
//! * 6-bit only, 4 more bytes of high bit pairs: byte `j` holds bits 4–5 of weights `j`, `j + 4`,
//!   `j + 8`, `j + 12` at bits 0, 2, 4, 6 (one 32-bit word, so a vector shift spreads them).
//!
//! Scales: `rows · cols / 32` f16 values, row-major.

use half::f16;

use crate::error::KernelError;

/// Weights sharing one scale.
pub const BLOCK: usize = 32;
/// Weights per group of the byte layout.
pub const GROUP: usize = 16;

/// Code width of a block-quantized matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockBits {
    Six,
    Four,
}

impl BlockBits {
    pub fn from_bits(bits: u8) -> Option<BlockBits> {
        match bits {
            6 => Some(BlockBits::Six),
            4 => Some(BlockBits::Four),
            _ => None,
        }
    }

    pub fn bits(self) -> u8 {
        match self {
            BlockBits::Six => 6,
            BlockBits::Four => 4,
        }
    }

    /// Bytes of one group of 16 weights.
    pub fn group_bytes(self) -> usize {
        match self {
            BlockBits::Six => 12,
            BlockBits::Four => 8,
        }
    }

    /// `2^(bits − 1)`: codes run over `−offset..offset`, stored as `q + offset`.
    pub fn offset(self) -> i32 {
        match self {
            BlockBits::Six => 32,
            BlockBits::Four => 8,
        }
    }

    /// Bytes of the codes of one row of `cols` weights (`cols` a multiple of [`BLOCK`]).
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / GROUP * self.group_bytes()
    }
}

/// Checks that `cols` can be block-quantized.
pub fn check_cols(cols: usize) -> Result<(), KernelError> {
    if cols == 0 || !cols.is_multiple_of(BLOCK) {
        return Err(KernelError::InvalidSize {
            what: "block-quantized columns",
            found: cols,
            reason: "must be a non-zero multiple of 32",
        });
    }
    Ok(())
}

/// Code `q` of weight `k` of one row's bytes.
#[inline]
pub fn code_at(bits: BlockBits, row: &[u8], k: usize) -> i32 {
    let (g, i) = (k / GROUP, k % GROUP);
    let base = g * bits.group_bytes();
    let low = if i < 8 {
        row[base + i] & 0x0F
    } else {
        row[base + i - 8] >> 4
    } as i32;
    let high = match bits {
        BlockBits::Four => 0,
        BlockBits::Six => ((row[base + 8 + i % 4] >> (2 * (i / 4))) & 3) as i32,
    };
    (low | high << 4) - bits.offset()
}

/// Weight `k` of a row: `d · q` (exact in f32).
#[inline]
pub fn value_at(bits: BlockBits, row: &[u8], row_scales: &[f16], k: usize) -> f32 {
    row_scales[k / BLOCK].to_f32() * code_at(bits, row, k) as f32
}

/// Codes and scales of `w` `[rows, cols]`. Each block's codes come from the candidate scale,
/// near `max|w| / 2^(bits−1)`, whose least-squares refit leaves the least squared error
/// (llama.cpp's quantizers search the same way); the refit scale is stored at f16.
pub fn quantize_rows(
    w: &[f32],
    rows: usize,
    cols: usize,
    bits: BlockBits,
) -> Result<(Vec<u8>, Vec<f16>), KernelError> {
    check_cols(cols)?;
    if w.len() != rows * cols {
        return Err(KernelError::LengthMismatch {
            what: "weights to block-quantize [rows, cols]",
            expected: rows * cols,
            found: w.len(),
        });
    }
    let row_bytes = bits.row_bytes(cols);
    let parts = rows.div_ceil(64);
    let done = crate::parallel::map_parts(parts, |p| {
        let (r0, r1) = (64 * p, (64 * p + 64).min(rows));
        let mut codes = vec![0u8; (r1 - r0) * row_bytes];
        let mut scales = Vec::with_capacity((r1 - r0) * cols / BLOCK);
        for r in r0..r1 {
            let row = &w[r * cols..(r + 1) * cols];
            let out = &mut codes[(r - r0) * row_bytes..(r - r0 + 1) * row_bytes];
            for (b, block) in row.chunks_exact(BLOCK).enumerate() {
                let (d, q) = quantize_block(block, bits);
                scales.push(d);
                for (i, &qi) in q.iter().enumerate() {
                    put_code(bits, out, b * BLOCK + i, qi);
                }
            }
        }
        (codes, scales)
    });
    let mut codes = Vec::with_capacity(rows * row_bytes);
    let mut scales = Vec::with_capacity(rows * cols / BLOCK);
    for (c, s) in done {
        codes.extend_from_slice(&c);
        scales.extend_from_slice(&s);
    }
    Ok((codes, scales))
}

/// One block's scale and codes (see [`quantize_rows`]).
fn quantize_block(x: &[f32], bits: BlockBits) -> (f16, [i32; BLOCK]) {
    let n = bits.offset() as f32;
    let (lo, hi) = (-bits.offset(), bits.offset() - 1);
    // The element of largest magnitude, with its sign: it maps to −2^(bits−1), the code with no
    // positive twin, so the grid's extra level is not wasted.
    let m = x
        .iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let mut best = (f16::ZERO, [0i32; BLOCK]);
    if m == 0.0 || !m.is_finite() {
        return best;
    }
    let sum_x2: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
    let mut best_err = f64::INFINITY;
    for step in -4..=4 {
        let iscale = -(n + 0.1 * step as f32) / m;
        let mut q = [0i32; BLOCK];
        let (mut xq, mut qq) = (0.0f64, 0.0f64);
        for (qi, &v) in q.iter_mut().zip(x) {
            *qi = ((v * iscale).round() as i32).clamp(lo, hi);
            xq += v as f64 * *qi as f64;
            qq += (*qi as f64) * (*qi as f64);
        }
        if qq == 0.0 {
            continue;
        }
        // Least-squares scale for these codes, and what it leaves: Σx² − (Σxq)²/Σq².
        let d = f16::from_f64(xq / qq);
        let err = x
            .iter()
            .zip(&q)
            .map(|(&v, &qi)| {
                let e = v as f64 - d.to_f64() * qi as f64;
                e * e
            })
            .sum::<f64>();
        if err < best_err {
            best_err = err;
            best = (d, q);
        }
    }
    debug_assert!(best_err <= sum_x2 + 1e-12 || best_err.is_infinite());
    best
}

/// Stores code `q` of weight `k` into a row's bytes (the inverse of [`code_at`]).
fn put_code(bits: BlockBits, row: &mut [u8], k: usize, q: i32) {
    let u = (q + bits.offset()) as u8;
    let (g, i) = (k / GROUP, k % GROUP);
    let base = g * bits.group_bytes();
    if i < 8 {
        row[base + i] = (row[base + i] & 0xF0) | (u & 0x0F);
    } else {
        row[base + i - 8] = (row[base + i - 8] & 0x0F) | ((u & 0x0F) << 4);
    }
    if bits == BlockBits::Six {
        let (j, shift) = (base + 8 + i % 4, 2 * (i / 4));
        row[j] = (row[j] & !(3 << shift)) | (((u >> 4) & 3) << shift);
    }
}

/// Widening of one group (16 weights) to f32, `d · q` per lane, for the float product's tiles.
#[cfg(target_arch = "x86_64")]
pub(crate) mod simd {
    use super::BlockBits;
    use std::arch::x86_64::*;

    /// Bits 4–5 of weight `i` sit in the group's high word at `8·(i % 4) + 2·(i / 4)`.
    const HIGH_SHIFTS: [i32; 16] = [0, 8, 16, 24, 2, 10, 18, 26, 4, 12, 20, 28, 6, 14, 22, 30];

    /// Weights 0–7 and 8–15 of the group at `p`, times `d`.
    ///
    /// # Safety
    /// AVX2 must be present; `p` must have the group's bytes readable (8, or 12 for 6 bits).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn group_avx2(bits: BlockBits, p: *const u8, d: f32) -> (__m256, __m256) {
        // SAFETY: the caller guarantees 8 readable bytes at `p`.
        let bytes = unsafe { _mm_loadl_epi64(p as *const __m128i) };
        let wide = _mm256_cvtepu8_epi32(bytes);
        let mut q0 = _mm256_and_si256(wide, _mm256_set1_epi32(0x0F));
        let mut q1 = _mm256_srli_epi32::<4>(wide);
        if bits == BlockBits::Six {
            // SAFETY: 12 readable bytes for 6 bits (caller); the word is bytes 8..12.
            let word = unsafe { std::ptr::read_unaligned(p.add(8) as *const i32) };
            let h = _mm256_set1_epi32(word);
            // SAFETY: HIGH_SHIFTS has 16 values; each load reads 8 of them.
            let (s0, s1) = unsafe {
                (
                    _mm256_loadu_si256(HIGH_SHIFTS.as_ptr() as *const __m256i),
                    _mm256_loadu_si256(HIGH_SHIFTS.as_ptr().add(8) as *const __m256i),
                )
            };
            let three = _mm256_set1_epi32(3);
            let h0 = _mm256_and_si256(_mm256_srlv_epi32(h, s0), three);
            let h1 = _mm256_and_si256(_mm256_srlv_epi32(h, s1), three);
            q0 = _mm256_or_si256(q0, _mm256_slli_epi32::<4>(h0));
            q1 = _mm256_or_si256(q1, _mm256_slli_epi32::<4>(h1));
        }
        let off = _mm256_set1_epi32(bits.offset());
        let dv = _mm256_set1_ps(d);
        (
            _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q0, off)), dv),
            _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q1, off)), dv),
        )
    }

    /// The group at `p` as one 16-lane vector, times `d`.
    ///
    /// # Safety
    /// AVX-512 F must be present; `p` as for [`group_avx2`].
    #[inline]
    #[target_feature(enable = "avx512f,avx2")]
    pub unsafe fn group_avx512(bits: BlockBits, p: *const u8, d: f32) -> __m512 {
        // SAFETY: the caller guarantees 8 readable bytes at `p`.
        let bytes = unsafe { _mm_loadl_epi64(p as *const __m128i) };
        let mask = _mm_set1_epi8(0x0F);
        let low = _mm_and_si128(bytes, mask);
        let high = _mm_and_si128(_mm_srli_epi16::<4>(bytes), mask);
        // Bytes 0–7: weights 0–7; bytes 8–15: weights 8–15.
        let mut q = _mm512_cvtepu8_epi32(_mm_unpacklo_epi64(low, high));
        if bits == BlockBits::Six {
            // SAFETY: 12 readable bytes for 6 bits (caller); the word is bytes 8..12.
            let word = unsafe { std::ptr::read_unaligned(p.add(8) as *const i32) };
            // SAFETY: HIGH_SHIFTS has 16 values.
            let shifts = unsafe { _mm512_loadu_si512(HIGH_SHIFTS.as_ptr() as *const _) };
            let h = _mm512_and_si512(
                _mm512_srlv_epi32(_mm512_set1_epi32(word), shifts),
                _mm512_set1_epi32(3),
            );
            q = _mm512_or_si512(q, _mm512_slli_epi32::<4>(h));
        }
        let q = _mm512_sub_epi32(q, _mm512_set1_epi32(bits.offset()));
        _mm512_mul_ps(_mm512_cvtepi32_ps(q), _mm512_set1_ps(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_the_layout_by_hand() {
        // Weight k of a 32-wide row gets code (k mod range) − offset: every code value, every
        // nibble and bit-pair position.
        for bits in [BlockBits::Six, BlockBits::Four] {
            let range = 2 * bits.offset();
            let mut row = vec![0u8; bits.row_bytes(64)];
            for k in 0..64 {
                put_code(bits, &mut row, k, (k as i32 * 7) % range - bits.offset());
            }
            for k in 0..64 {
                assert_eq!(
                    code_at(bits, &row, k),
                    (k as i32 * 7) % range - bits.offset()
                );
            }
        }
        // By hand, 4 bits: weight 0 = −8 (nibble 0), weight 8 = 7 (nibble 15) share byte 0.
        let mut row = vec![0u8; 16];
        put_code(BlockBits::Four, &mut row, 0, -8);
        put_code(BlockBits::Four, &mut row, 8, 7);
        assert_eq!(row[0], 0xF0);
        // 6 bits: weight 5 = 31 → stored 63 = 0b11_1111: low nibble 15 in byte 5, bits 4–5 (3)
        // at bit 2 of byte 8 + 5 % 4 = 9.
        let mut row = vec![0u8; 24];
        put_code(BlockBits::Six, &mut row, 5, 31);
        assert_eq!((row[5], row[9]), (0x0F, 0b1100));
    }

    #[test]
    fn known_block_quantizes_exactly() {
        // A block on the 4-bit grid of step 0.5 (−8·0.5 is the largest magnitude) is
        // reproduced exactly, scale and codes.
        let x: Vec<f32> = (0..32).map(|i| 0.5 * ((i % 16) as f32 - 8.0)).collect();
        let (codes, scales) = quantize_rows(&x, 1, 32, BlockBits::Four).unwrap();
        assert_eq!(scales, vec![f16::from_f32(0.5)]);
        for (k, v) in x.iter().enumerate() {
            assert_eq!(value_at(BlockBits::Four, &codes, &scales, k), *v);
        }
        // All zero: scale 0, every weight 0.
        let (codes, scales) = quantize_rows(&[0.0; 32], 1, 32, BlockBits::Six).unwrap();
        assert_eq!(scales, vec![f16::ZERO]);
        assert!((0..32).all(|k| value_at(BlockBits::Six, &codes, &scales, k) == 0.0));
    }

    #[test]
    fn error_within_half_a_step_and_six_bits_beat_four() {
        let (rows, cols) = (7, 96);
        let mut s = 12345u32;
        let w: Vec<f32> = (0..rows * cols)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5).powi(3)
            })
            .collect();
        let mut sq = [0.0f64; 2];
        for (n, bits) in [BlockBits::Six, BlockBits::Four].into_iter().enumerate() {
            let (codes, scales) = quantize_rows(&w, rows, cols, bits).unwrap();
            assert_eq!(codes.len(), rows * bits.row_bytes(cols));
            assert_eq!(scales.len(), rows * cols / BLOCK);
            for r in 0..rows {
                let row = &codes[r * bits.row_bytes(cols)..][..bits.row_bytes(cols)];
                let rs = &scales[r * cols / BLOCK..][..cols / BLOCK];
                for k in 0..cols {
                    let v = value_at(bits, row, rs, k);
                    let e = (v - w[r * cols + k]).abs();
                    // The refit scale can move the grid off the block's extreme a little:
                    // the error stays within one step.
                    assert!(
                        e <= rs[k / BLOCK].to_f32().abs() * 1.0 + 1e-7,
                        "{bits:?} {e}"
                    );
                    sq[n] += (e as f64).powi(2);
                }
            }
        }
        assert!(
            sq[0] * 8.0 < sq[1],
            "6-bit error {} vs 4-bit {}",
            sq[0],
            sq[1]
        );
    }

    #[test]
    fn bad_shapes_are_refused() {
        let e = quantize_rows(&[0.0; 48], 1, 48, BlockBits::Four).unwrap_err();
        assert!(e.to_string().contains("multiple of 32"), "{e}");
        let e = quantize_rows(&[0.0; 60], 2, 32, BlockBits::Four).unwrap_err();
        assert!(matches!(e, KernelError::LengthMismatch { .. }), "{e}");
    }
}
