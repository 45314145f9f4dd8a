//! Attention's two products read straight from a 4-bit KV cache: the same values, bit for bit,
//! as widening the rows with [`attention::dequantize_rows`] and calling [`attention::scores`] /
//! [`attention::weighted_sum`] on the f32 copy, without writing that copy.
//!
//! Why: a batch-16 decode step at ≈700M with 144 cached positions reads 16 · 16 · 24 · 144 head
//! rows of keys and as many of values. Widened first, a 4-bit row cost ≈ 9 ns to widen and
//! ≈ 6 ns to score on one core (hot caches), ≈ 29 ns a position for both products: 4-bit
//! attention was compute-bound, and little faster than the f16 cache it reads a quarter of.
//!
//! On AVX-512 with VBMI, a row's codes stay in one register: `vpermb` spreads each value's byte
//! into its own 32-bit lane (odd values shifted down a nibble), and a 16-entry table
//! `(c − 8) · s_p`, the dequantized value of every code at that position's scale, is looked up
//! with `vpermps` (two positions' tables with `vpermt2ps`). The table entries are the products
//! [`attention::dequantize_rows`] computes, so each looked-up value equals the widened one, and
//! the sums then follow the defined orders of [`attention`]:
//! * scores sum eight lanes per position; two positions share a register, one per half;
//! * the weighted sum adds `w_p · v_p[i]` position by position, sixteen columns per register.
//!
//! Elsewhere (other CPUs, `hd` not a multiple of 16 or above 128) the rows are widened a few at a
//! time and the f32 kernels run: the same results.

use crate::attention::{self, HistoryRows};
use crate::cpu::KernelPath;
use crate::error::KernelError;

/// Rows of 4-bit absmax codes as [`attention::quantize_row`] writes them: `codes` `[positions,
/// hd / 2]` (low nibble first, stored as `code + 8`) and one scale per position.
#[derive(Debug, Clone, Copy)]
pub struct Int4Rows<'a> {
    pub codes: &'a [u8],
    pub scales: &'a [f32],
}

/// Rows widened at a time by the fallback.
const FALLBACK_ROWS: usize = 16;

/// Whether [`scores_int4`] and [`weighted_sum_int4`] read the codes in place on `path` for heads
/// of `hd` values (else they widen rows into a buffer first, which a caller holding a whole
/// chunk widened already can do more cheaply for several heads at once).
pub fn reads_codes_in_place(path: KernelPath, hd: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        path == KernelPath::Avx512 && avx512::available() && avx512::fits(hd)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (path, hd);
        false
    }
}

fn check(hd: usize, rows: &Int4Rows, positions: usize) -> Result<(), KernelError> {
    if !hd.is_multiple_of(2) {
        return Err(KernelError::InvalidSize {
            what: "4-bit attention head size",
            found: hd,
            reason: "must be even (two codes per byte)",
        });
    }
    if rows.scales.len() != positions {
        return Err(KernelError::LengthMismatch {
            what: "4-bit KV scales [positions]",
            expected: positions,
            found: rows.scales.len(),
        });
    }
    if rows.codes.len() != positions * hd / 2 {
        return Err(KernelError::LengthMismatch {
            what: "4-bit KV codes [positions, hd / 2]",
            expected: positions * hd / 2,
            found: rows.codes.len(),
        });
    }
    Ok(())
}

/// `scores[p] = scale · q·k_p`, `k_p` row `p` of `rows` widened: equal to
/// [`attention::dequantize_rows`] then [`attention::scores`].
pub fn scores_int4(
    path: KernelPath,
    q: &[f32],
    rows: Int4Rows,
    scale: f32,
    scores: &mut [f32],
) -> Result<(), KernelError> {
    let hd = q.len();
    check(hd, &rows, scores.len())?;
    path.check_supported()?;
    #[cfg(target_arch = "x86_64")]
    if reads_codes_in_place(path, hd) {
        // SAFETY: `reads_codes_in_place` checked AVX-512 F/BW/VBMI and `fits(hd)`; `check`
        // checked the lengths.
        unsafe { avx512::scores(q, rows, scale, scores) };
        return Ok(());
    }
    let mut widened = vec![0.0f32; FALLBACK_ROWS * hd];
    for (p0, out) in (0..scores.len())
        .step_by(FALLBACK_ROWS)
        .zip(scores.chunks_mut(FALLBACK_ROWS))
    {
        let n = out.len();
        let buf = &mut widened[..n * hd];
        let codes = &rows.codes[p0 * hd / 2..(p0 + n) * hd / 2];
        attention::dequantize_rows(path, 4, hd, codes, &rows.scales[p0..p0 + n], buf)?;
        attention::scores(path, q, HistoryRows::F32(buf), scale, out)?;
    }
    Ok(())
}

/// `out[i] += Σ_p weights[p] · v_p[i]` in position order, `v_p` row `p` of `rows` widened: equal
/// to [`attention::dequantize_rows`] then [`attention::weighted_sum`].
pub fn weighted_sum_int4(
    path: KernelPath,
    weights: &[f32],
    rows: Int4Rows,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let hd = out.len();
    check(hd, &rows, weights.len())?;
    path.check_supported()?;
    #[cfg(target_arch = "x86_64")]
    if reads_codes_in_place(path, hd) {
        // SAFETY: as in `scores_int4`.
        unsafe { avx512::weighted_sum(weights, rows, out) };
        return Ok(());
    }
    let mut widened = vec![0.0f32; FALLBACK_ROWS * hd];
    for (p0, w) in (0..weights.len())
        .step_by(FALLBACK_ROWS)
        .zip(weights.chunks(FALLBACK_ROWS))
    {
        let n = w.len();
        let buf = &mut widened[..n * hd];
        let codes = &rows.codes[p0 * hd / 2..(p0 + n) * hd / 2];
        attention::dequantize_rows(path, 4, hd, codes, &rows.scales[p0..p0 + n], buf)?;
        attention::weighted_sum(path, w, HistoryRows::F32(buf), out)?;
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Int4Rows;
    use std::arch::x86_64::*;

    /// Widest head read in place: a row's `hd / 2` code bytes fill at most one register.
    const MAX_HD: usize = 128;

    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vbmi")
            && std::arch::is_x86_feature_detected!("avx2")
    }

    /// Heads of whole 16-value blocks, one register of codes per row.
    pub fn fits(hd: usize) -> bool {
        hd > 0 && hd.is_multiple_of(16) && hd <= MAX_HD
    }

    /// Lanes `[c − 8 for c in 0..16]`: times a position's scale, its dequantization table.
    #[inline(always)]
    unsafe fn centred_codes() -> __m512 {
        // SAFETY: the caller enables AVX-512 F.
        unsafe {
            _mm512_setr_ps(
                -8.0, -7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0,
                7.0,
            )
        }
    }

    /// One row's code bytes (`bytes ≤ 64`), the rest of the register zero. A masked load reads
    /// (and may fault on) only the selected bytes.
    #[inline(always)]
    unsafe fn row_bytes(p: *const u8, bytes: usize) -> __m512i {
        let mask = if bytes == 64 {
            u64::MAX
        } else {
            (1u64 << bytes) - 1
        };
        // SAFETY: the caller enables AVX-512 BW and passes `bytes` readable bytes at `p`.
        unsafe { _mm512_maskz_loadu_epi8(mask, p as *const i8) }
    }

    /// `vpermb` control putting byte `first + j / 2` of the source into byte 0 of lane `j`, and
    /// with `pair`, byte `first + (j − 8) / 2` of the second source (indices 64..) into lanes
    /// 8–15; the other bytes of each lane pick byte 0 (ignored later).
    const fn spread(first: usize, pair: bool) -> [u8; 64] {
        let mut c = [0u8; 64];
        let mut j = 0;
        while j < 16 {
            c[4 * j] = if pair && j >= 8 {
                64 + first + (j - 8) / 2
            } else {
                first + j / 2
            } as u8;
            j += 1;
        }
        c
    }

    /// Scores, step s (columns 8s..8s+8) of a pair of rows: their bytes 4s...
    static PAIR_CONTROLS: [[u8; 64]; MAX_HD / 8] = {
        let mut c = [[0u8; 64]; MAX_HD / 8];
        let mut s = 0;
        while s < MAX_HD / 8 {
            c[s] = spread(4 * s, true);
            s += 1;
        }
        c
    };

    /// Weighted sum, block b (columns 16b..16b+16) of one row: its bytes 8b...
    static BLOCK_CONTROLS: [[u8; 64]; MAX_HD / 16] = {
        let mut c = [[0u8; 64]; MAX_HD / 16];
        let mut b = 0;
        while b < MAX_HD / 16 {
            c[b] = spread(8 * b, false);
            b += 1;
        }
        c
    };

    /// # Safety
    /// AVX-512 F/BW/VBMI and AVX2 present; `fits(q.len())`; `rows` holds `scores.len()` rows of
    /// `q.len() / 2` bytes and as many scales.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx2")]
    pub unsafe fn scores(q: &[f32], rows: Int4Rows, scale: f32, scores: &mut [f32]) {
        let hd = q.len();
        let row = hd / 2;
        let steps = hd / 8;
        let positions = scores.len();
        // Step s (columns 8s..8s+8) of a pair: lanes 0–7 from the first row's bytes 4s.., lanes
        // 8–15 from the second row's (the second `vpermt2b` source, indices 64..).
        // q's columns 8s..8s+8 twice over, one copy per position of a pair.
        let mut doubled = [0.0f32; 2 * MAX_HD];
        for (pair, eight) in doubled.chunks_exact_mut(16).zip(q.chunks_exact(8)) {
            pair[..8].copy_from_slice(eight);
            pair[8..].copy_from_slice(eight);
        }
        let pairs = PairScores {
            codes: rows.codes,
            scales: rows.scales,
            row,
            steps,
            doubled: &doubled,
        };
        let mut p = 0;
        // Four pairs at once: one pair's sum is a chain of `steps` dependent adds, whose
        // latency set the pace (11 ns a position at hd = 96, against 5 with four chains).
        while p + 8 <= positions {
            let firsts = [p, p + 2, p + 4, p + 6];
            // SAFETY: forwarded contract; every row index is below `positions`.
            let sums = unsafe { pairs.sums::<4>(firsts, firsts.map(|f| f + 1)) };
            for (j, [a, b]) in sums.into_iter().enumerate() {
                scores[p + 2 * j] = a * scale;
                scores[p + 2 * j + 1] = b * scale;
            }
            p += 8;
        }
        while p < positions {
            // A last odd position pairs with itself; its second sum is dropped.
            let p2 = (p + 1).min(positions - 1);
            // SAFETY: as above.
            let [[a, b]] = unsafe { pairs.sums::<1>([p], [p2]) };
            scores[p] = a * scale;
            if p2 != p {
                scores[p2] = b * scale;
            }
            p += 2;
        }
    }

    /// What [`scores`] shares between its groups of position pairs.
    struct PairScores<'a> {
        codes: &'a [u8],
        scales: &'a [f32],
        /// Code bytes per row (hd / 2).
        row: usize,
        /// Steps of eight columns (hd / 8).
        steps: usize,
        /// q's columns 8s..8s+8 twice over.
        doubled: &'a [f32; 2 * MAX_HD],
    }

    impl PairScores<'_> {
        /// The unscaled sums `q·k` of `G` pairs of rows (`firsts[g]`, `seconds[g]`), each in the
        /// defined eight-lane order, one register half per row.
        ///
        /// # Safety
        /// AVX-512 F/BW/VBMI and AVX2 present; every row index below the row count.
        #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx2")]
        #[inline]
        unsafe fn sums<const G: usize>(
            &self,
            firsts: [usize; G],
            seconds: [usize; G],
        ) -> [[f32; 2]; G] {
            // SAFETY: the caller's features; row indices in bounds, each row `row` ≤ 64 bytes.
            unsafe {
                // Odd columns hold the byte's high nibble.
                let shifts = _mm512_set_epi32(4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0);
                let nibble = _mm512_set1_epi32(0x0F);
                // Index bit 4 picks the second row's table in `vpermt2ps`.
                let second =
                    _mm512_set_epi32(16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0);
                let centred = centred_codes();
                let cp = self.codes.as_ptr();
                // Plain loops, not closures: a closure would not inherit the target features.
                let (mut a, mut b) = ([_mm512_setzero_si512(); G], [_mm512_setzero_si512(); G]);
                let (mut ta, mut tb) = ([_mm512_setzero_ps(); G], [_mm512_setzero_ps(); G]);
                for g in 0..G {
                    a[g] = row_bytes(cp.add(firsts[g] * self.row), self.row);
                    b[g] = row_bytes(cp.add(seconds[g] * self.row), self.row);
                    ta[g] = _mm512_mul_ps(centred, _mm512_set1_ps(self.scales[firsts[g]]));
                    tb[g] = _mm512_mul_ps(centred, _mm512_set1_ps(self.scales[seconds[g]]));
                }
                let mut lanes = [_mm512_setzero_ps(); G];
                for (s, control) in PAIR_CONTROLS.iter().enumerate().take(self.steps) {
                    let control = _mm512_loadu_si512(control.as_ptr() as *const _);
                    let qv = _mm512_loadu_ps(self.doubled.as_ptr().add(16 * s));
                    for g in 0..G {
                        let bytes = _mm512_permutex2var_epi8(a[g], control, b[g]);
                        let codes = _mm512_srlv_epi32(bytes, shifts);
                        // (codes & 0x0F) | second.
                        let index = _mm512_ternarylogic_epi32::<0xEA>(codes, nibble, second);
                        let k = _mm512_permutex2var_ps(ta[g], index, tb[g]);
                        lanes[g] = _mm512_add_ps(lanes[g], _mm512_mul_ps(qv, k));
                    }
                }
                let mut sums = [[0.0; 2]; G];
                for (sum, l) in sums.iter_mut().zip(lanes) {
                    let lo = _mm512_castps512_ps256(l);
                    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(l)));
                    *sum = [reduce(lo), reduce(hi)];
                }
                sums
            }
        }
    }

    /// # Safety
    /// As [`scores`], with `out.len()` = hd and `weights.len()` positions.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx2")]
    pub unsafe fn weighted_sum(weights: &[f32], rows: Int4Rows, out: &mut [f32]) {
        // One instantiation per register count, so the running sums stay in registers.
        // SAFETY (each arm): forwarded contract; `fits` bounds hd / 16 to 1..=8.
        unsafe {
            match out.len() / 16 {
                1 => weighted_blocks::<1>(weights, rows, out),
                2 => weighted_blocks::<2>(weights, rows, out),
                3 => weighted_blocks::<3>(weights, rows, out),
                4 => weighted_blocks::<4>(weights, rows, out),
                5 => weighted_blocks::<5>(weights, rows, out),
                6 => weighted_blocks::<6>(weights, rows, out),
                7 => weighted_blocks::<7>(weights, rows, out),
                _ => weighted_blocks::<8>(weights, rows, out),
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx2")]
    unsafe fn weighted_blocks<const B: usize>(weights: &[f32], rows: Int4Rows, out: &mut [f32]) {
        let row = 8 * B;
        // Block b (columns 16b..16b+16) takes bytes 8b.. of the row.
        // Plain loops, not closures: a closure would not inherit the target features.
        let mut controls = [_mm512_setzero_si512(); B];
        let mut acc = [_mm512_setzero_ps(); B];
        let op = out.as_mut_ptr();
        for b in 0..B {
            // SAFETY: a 64-byte array; `out` has 16·B values.
            unsafe {
                controls[b] = _mm512_loadu_si512(BLOCK_CONTROLS[b].as_ptr() as *const _);
                acc[b] = _mm512_loadu_ps(op.add(16 * b));
            }
        }
        let shifts = _mm512_set_epi32(4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0);
        // SAFETY: AVX-512 F enabled.
        let centred = unsafe { centred_codes() };
        let cp = rows.codes.as_ptr();
        for (p, (&w, &s)) in weights.iter().zip(rows.scales).enumerate() {
            // SAFETY: row p has `row` ≤ 64 bytes (contract).
            let bytes = unsafe { row_bytes(cp.add(p * row), row) };
            let table = _mm512_mul_ps(centred, _mm512_set1_ps(s));
            let weight = _mm512_set1_ps(w);
            for (a, &control) in acc.iter_mut().zip(&controls) {
                // `vpermps` reads only an index's low four bits: the other nibble above them
                // is ignored.
                let codes = _mm512_srlv_epi32(_mm512_permutexvar_epi8(control, bytes), shifts);
                let v = _mm512_permutexvar_ps(codes, table);
                *a = _mm512_add_ps(*a, _mm512_mul_ps(weight, v));
            }
        }
        for (b, a) in acc.iter().enumerate() {
            // SAFETY: as above.
            unsafe { _mm512_storeu_ps(op.add(16 * b), *a) };
        }
    }

    /// `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`, the scores' defined lane order.
    #[inline(always)]
    unsafe fn reduce(s: __m256) -> f32 {
        // SAFETY: only called from functions with AVX2 enabled.
        unsafe {
            let quad = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
            let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
            _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    /// Rows of `x` `[positions, hd]` quantized as a KV cache quantizes them.
    fn quantized(x: &[f32], hd: usize) -> (Vec<u8>, Vec<f32>) {
        let mut codes = vec![0u8; x.len() / 2];
        let scales = x
            .chunks(hd)
            .zip(codes.chunks_mut(hd / 2))
            .map(|(row, out)| attention::quantize_row_reference(4, row, out))
            .collect();
        (codes, scales)
    }

    /// The definition: widen by the reference, then the reference products.
    fn widened(codes: &[u8], scales: &[f32], hd: usize) -> Vec<f32> {
        let mut rows = vec![0.0; scales.len() * hd];
        attention::dequantize_rows_reference(4, hd, codes, scales, &mut rows);
        rows
    }

    #[test]
    fn known_answer() {
        // hd = 16, one position: codes 8 + (0, 1, …, 7, −1, …, −8) at scale 0.5, q all ones.
        let mut codes = [0u8; 8];
        let vals: Vec<i32> = (0..8).chain((-8..0).rev()).collect();
        for (i, v) in vals.iter().enumerate() {
            codes[i / 2] |= ((v + 8) as u8) << (4 * (i % 2));
        }
        let rows = Int4Rows {
            codes: &codes,
            scales: &[0.5],
        };
        let sum: i32 = vals.iter().sum(); // 28 − 36 = −8
        for path in KernelPath::supported() {
            let mut score = [0.0];
            scores_int4(path, &[1.0; 16], rows, 2.0, &mut score).unwrap();
            assert_eq!(score[0], sum as f32 * 0.5 * 2.0, "{path}");
            let mut out = vec![1.0f32; 16];
            weighted_sum_int4(path, &[3.0], rows, &mut out).unwrap();
            let want: Vec<f32> = vals.iter().map(|&v| 1.0 + 3.0 * (v as f32 * 0.5)).collect();
            assert_eq!(out, want, "{path}");
        }
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let path = KernelPath::Scalar;
        let rows = Int4Rows {
            codes: &[0; 8],
            scales: &[1.0],
        };
        let e = scores_int4(path, &[0.0; 16], rows, 1.0, &mut [0.0; 2]).unwrap_err();
        assert!(e.to_string().contains("scales"), "{e}");
        let e = scores_int4(path, &[0.0; 15], rows, 1.0, &mut [0.0; 1]).unwrap_err();
        assert!(e.to_string().contains("even"), "{e}");
        let short = Int4Rows {
            codes: &[0; 7],
            scales: &[1.0],
        };
        let e = weighted_sum_int4(path, &[1.0], short, &mut [0.0; 16]).unwrap_err();
        assert!(e.to_string().contains("codes"), "{e}");
    }

    #[test]
    fn in_place_head_sizes_equal_the_definition() {
        // Every head size the in-place kernels take, with odd and even position counts (a last
        // odd position pairs with itself).
        for hd in (16..=128).step_by(16) {
            for positions in [1usize, 2, 7, 64] {
                let seed = (hd * 100 + positions) as u64;
                let (codes, scales) = quantized(&values(positions * hd, seed), hd);
                let rows = Int4Rows {
                    codes: &codes,
                    scales: &scales,
                };
                let k = widened(&codes, &scales, hd);
                let (q, w) = (values(hd, seed + 1), values(positions, seed + 2));
                let mut want_scores = vec![0.0; positions];
                attention::scores_reference(&q, HistoryRows::F32(&k), 0.3, &mut want_scores);
                let mut want_out = vec![0.5; hd];
                attention::weighted_sum_reference(&w, HistoryRows::F32(&k), &mut want_out);
                for path in KernelPath::supported() {
                    let mut got = vec![0.0; positions];
                    scores_int4(path, &q, rows, 0.3, &mut got).unwrap();
                    assert!(
                        got.iter()
                            .zip(&want_scores)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{path} scores, hd {hd}, {positions} positions"
                    );
                    let mut out = vec![0.5; hd];
                    weighted_sum_int4(path, &w, rows, &mut out).unwrap();
                    assert!(
                        out.iter()
                            .zip(&want_out)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{path} weighted sum, hd {hd}, {positions} positions"
                    );
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn every_path_equals_widening_then_the_reference_bit_for_bit(
            half_hd in 1usize..80, positions in 1usize..40, seed in 0u64..1000,
        ) {
            // Even head sizes from 2 to 158: in place (multiples of 16 up to 128) and not.
            let hd = 2 * half_hd;
            let x = values(positions * hd, seed);
            let (codes, scales) = quantized(&x, hd);
            let rows = Int4Rows { codes: &codes, scales: &scales };
            let k = widened(&codes, &scales, hd);
            let q = values(hd, seed + 1);
            let w = values(positions, seed + 2);
            let start = values(hd, seed + 3);
            let mut want_scores = vec![0.0; positions];
            attention::scores_reference(&q, HistoryRows::F32(&k), 0.125, &mut want_scores);
            let mut want_out = start.clone();
            attention::weighted_sum_reference(&w, HistoryRows::F32(&k), &mut want_out);
            for path in KernelPath::supported() {
                let mut got = vec![0.0; positions];
                scores_int4(path, &q, rows, 0.125, &mut got).unwrap();
                let same = got.iter().zip(&want_scores).all(|(a, b)| a.to_bits() == b.to_bits());
                prop_assert!(same, "{path} scores hd {hd}: {got:?} vs {want_scores:?}");
                let mut out = start.clone();
                weighted_sum_int4(path, &w, rows, &mut out).unwrap();
                let same = out.iter().zip(&want_out).all(|(a, b)| a.to_bits() == b.to_bits());
                prop_assert!(same, "{path} weighted sum hd {hd}: {out:?} vs {want_out:?}");
            }
        }
    }
}
