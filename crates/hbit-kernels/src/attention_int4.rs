//! Attention's two products read straight from a 4-bit KV cache: the same values, bit for bit,
//! as widening the rows with [`kv_codec::dequantize_rows`] and calling [`attention::scores`] /
//! [`attention::weighted_sum`] on the f32 copy, without writing that copy.
//!
//! Why: a batch-16 decode step at ≈700M with 144 cached positions reads 16 · 16 · 24 · 144
//! head rows of keys and as many of values. Widened first, a 4-bit row cost ≈ 10 ns to widen and
//! ≈ 6 ns to score on one core (hot caches): 4-bit attention was compute-bound, and little
//! faster than the f16 cache it reads a quarter of.
//!
//! On AVX-512 with VBMI, a row's codes stay in one register: `vpermb` (`vpermt2b` for a pair of
//! rows) spreads each value's byte into its own 32-bit lane (odd values shifted down a nibble),
//! and a 16-entry table `(c − 8) · s_p`, the dequantized value of every code at that position's
//! scale, is looked up with `vpermps` (two positions' tables with `vpermt2ps`). Up to
//! [`MAX_HEADS`] query heads sharing the KV head use each looked-up value. The table entries
//! are the products [`kv_codec::dequantize_rows`] computes, so each looked-up value equals the
//! widened one, and the sums then follow the defined orders of [`attention`]:
//! * scores sum eight lanes per position; two positions share a register, one per half;
//! * the weighted sum adds `w_p · v_p[i]` position by position, sixteen columns per register.
//!
//! Elsewhere (other CPUs or a lower forced path, `hd` not a multiple of 16 or above 128, more
//! than [`MAX_HEADS`] heads) the rows are widened a few at a time and the f32 kernels run: the
//! same results.

use crate::attention::{self, HistoryRows};
use crate::cpu::KernelPath;
use crate::error::KernelError;
use crate::kv_codec;

/// Rows of 4-bit absmax codes as [`kv_codec::quantize_row`] writes them: `codes` `[positions,
/// hd / 2]` (low nibble first, stored as `code + 8`) and one scale per position.
#[derive(Debug, Clone, Copy)]
pub struct Int4Rows<'a> {
    pub codes: &'a [u8],
    pub scales: &'a [f32],
}

/// Rows widened at a time by the fallback.
const FALLBACK_ROWS: usize = 16;

/// Most query heads sharing one KV head that the in-place kernels take at once (grouped-query
/// attention: 4 at ≈2B and in BitNet b1.58 2B4T).
pub const MAX_HEADS: usize = 4;

/// Whether [`scores_int4`] and [`weighted_sum_int4`] read the codes in place on `path` for
/// `heads` query heads of `hd` values (else they widen rows into a buffer first, as a caller
/// holding a chunk widened already for many rows can do more cheaply).
pub fn reads_codes_in_place(path: KernelPath, hd: usize, heads: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        path == KernelPath::Avx512
            && (1..=MAX_HEADS).contains(&heads)
            && avx512::available()
            && avx512::fits(hd)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (path, hd, heads);
        false
    }
}

/// Checks the shapes. `per_head` is `(name, length, hd)` of the array holding `hd` values per
/// query head (queries or outputs), `results` `(name, length, positions)` of the one holding a
/// value per head and position (scores or weights). Returns the number of query heads.
fn check(
    hd: usize,
    rows: &Int4Rows,
    per_head: (&'static str, usize, usize),
    results: (&'static str, usize, usize),
) -> Result<usize, KernelError> {
    if hd == 0 || !hd.is_multiple_of(2) {
        return Err(KernelError::InvalidSize {
            what: "4-bit attention head size",
            found: hd,
            reason: "must be even and non-zero (two codes per byte)",
        });
    }
    let positions = rows.scales.len();
    if rows.codes.len() != positions * hd / 2 {
        return Err(KernelError::LengthMismatch {
            what: "4-bit KV codes [positions, hd / 2] (one scale per position)",
            expected: positions * hd / 2,
            found: rows.codes.len(),
        });
    }
    let (what, len, unit) = per_head;
    if len == 0 || !len.is_multiple_of(unit) {
        return Err(KernelError::InvalidSize {
            what,
            found: len,
            reason: "must be a non-zero multiple of the head size",
        });
    }
    let heads = len / unit;
    let (what, len, unit) = results;
    if len != heads * unit {
        return Err(KernelError::LengthMismatch {
            what,
            expected: heads * unit,
            found: len,
        });
    }
    Ok(heads)
}

/// `scores[j·P + p] = scale · q_j·k_p` for the query heads `q` `[heads, hd]` and the `P`
/// positions of `rows`, `k_p` row `p` widened: equal to [`kv_codec::dequantize_rows`] then
/// [`attention::scores`] head by head.
pub fn scores_int4(
    path: KernelPath,
    q: &[f32],
    hd: usize,
    rows: Int4Rows,
    scale: f32,
    scores: &mut [f32],
) -> Result<(), KernelError> {
    let positions = rows.scales.len();
    let heads = check(
        hd,
        &rows,
        ("queries [heads, hd]", q.len(), hd),
        ("scores [heads, positions]", scores.len(), positions),
    )?;
    path.check_supported()?;
    #[cfg(not(target_arch = "x86_64"))]
    let _ = heads;
    #[cfg(target_arch = "x86_64")]
    if reads_codes_in_place(path, hd, heads) {
        // SAFETY: `reads_codes_in_place` checked AVX-512 F/BW/VBMI, `fits(hd)` and 1..=4
        // heads; `check` checked the lengths.
        unsafe { avx512::scores(q, hd, rows, scale, scores) };
        return Ok(());
    }
    widened_chunks(path, hd, rows, |span, keys| {
        for (qh, out) in q.chunks_exact(hd).zip(scores.chunks_exact_mut(positions)) {
            attention::scores(path, qh, keys, scale, &mut out[span.clone()])?;
        }
        Ok(())
    })
}

/// `out_j[i] += Σ_p weights[j·P + p] · v_p[i]` in position order, for the heads `j` of `out`
/// `[heads, hd]`, `v_p` row `p` of `rows` widened: equal to [`kv_codec::dequantize_rows`]
/// then [`attention::weighted_sum`] head by head.
pub fn weighted_sum_int4(
    path: KernelPath,
    weights: &[f32],
    hd: usize,
    rows: Int4Rows,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let positions = rows.scales.len();
    let heads = check(
        hd,
        &rows,
        ("outputs [heads, hd]", out.len(), hd),
        ("weights [heads, positions]", weights.len(), positions),
    )?;
    path.check_supported()?;
    #[cfg(not(target_arch = "x86_64"))]
    let _ = heads;
    #[cfg(target_arch = "x86_64")]
    if reads_codes_in_place(path, hd, heads) {
        // SAFETY: as in `scores_int4`.
        unsafe { avx512::weighted_sum(weights, hd, rows, out) };
        return Ok(());
    }
    widened_chunks(path, hd, rows, |span, values| {
        for (w, o) in weights
            .chunks_exact(positions)
            .zip(out.chunks_exact_mut(hd))
        {
            attention::weighted_sum(path, &w[span.clone()], values, o)?;
        }
        Ok(())
    })
}

/// The fallback: `rows` widened [`FALLBACK_ROWS`] positions at a time, each run handed to
/// `use_rows` with its positions, in order.
fn widened_chunks(
    path: KernelPath,
    hd: usize,
    rows: Int4Rows,
    mut use_rows: impl FnMut(std::ops::Range<usize>, HistoryRows) -> Result<(), KernelError>,
) -> Result<(), KernelError> {
    let positions = rows.scales.len();
    let mut widened = vec![0.0f32; FALLBACK_ROWS * hd];
    for p0 in (0..positions).step_by(FALLBACK_ROWS) {
        let span = p0..(p0 + FALLBACK_ROWS).min(positions);
        let buf = &mut widened[..span.len() * hd];
        let codes = &rows.codes[span.start * hd / 2..span.end * hd / 2];
        kv_codec::dequantize_rows(path, 4, hd, codes, &rows.scales[span.clone()], buf)?;
        use_rows(span, HistoryRows::F32(buf))?;
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Int4Rows;
    use crate::attention::reduce_eight_lanes as reduce;
    use std::arch::x86_64::*;

    /// Widest head read in place: a row's `hd / 2` code bytes fill at most one register.
    const MAX_HD: usize = 128;

    /// Whether the CPU has the kernels' features, detected once (a decode step asks per task).
    pub fn available() -> bool {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vbmi")
                && std::arch::is_x86_feature_detected!("avx2")
        })
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

    /// One row's code bytes, the rest of the register zero. A masked load reads (and may fault
    /// on) only the selected bytes.
    ///
    /// # Safety
    /// AVX-512 BW enabled; `bytes ≤ 64` readable bytes at `p`.
    #[inline(always)]
    unsafe fn row_bytes(p: *const u8, bytes: usize) -> __m512i {
        debug_assert!(bytes <= 64);
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

    /// Scores, step s (columns 8s..8s+8) of a pair of rows: bytes 4s..4s+4 of each.
    static PAIR_CONTROLS: [[u8; 64]; MAX_HD / 8] = {
        let mut c = [[0u8; 64]; MAX_HD / 8];
        let mut s = 0;
        while s < MAX_HD / 8 {
            c[s] = spread(4 * s, true);
            s += 1;
        }
        c
    };

    /// Weighted sum, block b (columns 16b..16b+16) of one row: its bytes 8b..8b+8.
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
    /// AVX-512 F/BW/VBMI and AVX2 present; `fits(hd)`; `q` holds 1..=`MAX_HEADS` heads of
    /// `hd`; `rows` holds P rows of `hd / 2` bytes and P scales; `scores` holds heads · P.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx2,fma")]
    pub unsafe fn scores(q: &[f32], hd: usize, rows: Int4Rows, scale: f32, scores: &mut [f32]) {
        // One instantiation per head count. Pairs of positions summed side by side: one pair's
        // sum is a chain of hd / 8 dependent adds, so one head takes four pairs at a time
        // (`hbit bench kernels`, both products over 144 positions at hd 96: 2.1 µs, against
        // 2.3–2.4 µs one pair at a time); two or more heads take two pairs, within the 32
        // registers.
        // SAFETY (each arm): forwarded contract.
        unsafe {
            match q.len() / hd {
                1 => scores_heads::<1, 4>(q, hd, rows, scale, scores),
                2 => scores_heads::<2, 2>(q, hd, rows, scale, scores),
                3 => scores_heads::<3, 2>(q, hd, rows, scale, scores),
                _ => scores_heads::<4, 2>(q, hd, rows, scale, scores),
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx2,fma")]
    unsafe fn scores_heads<const H: usize, const G: usize>(
        q: &[f32],
        hd: usize,
        rows: Int4Rows,
        scale: f32,
        scores: &mut [f32],
    ) {
        let positions = rows.scales.len();
        // Each head's columns 8s..8s+8 twice over, one copy per position of a pair.
        let mut doubled = [[0.0f32; 2 * MAX_HD]; H];
        for (d, qh) in doubled.iter_mut().zip(q.chunks_exact(hd)) {
            for (pair, eight) in d.chunks_exact_mut(16).zip(qh.chunks_exact(8)) {
                pair[..8].copy_from_slice(eight);
                pair[8..].copy_from_slice(eight);
            }
        }
        let pairs = PairScores {
            codes: rows.codes,
            scales: rows.scales,
            row: hd / 2,
            steps: hd / 8,
            doubled: &doubled,
        };
        let mut store = |p: usize, p2: usize, sums: &[[f32; 2]; H]| {
            for (j, [a, b]) in sums.iter().enumerate() {
                scores[j * positions + p] = a * scale;
                if p2 != p {
                    scores[j * positions + p2] = b * scale;
                }
            }
        };
        let mut p = 0;
        while p + 2 * G <= positions {
            let firsts: [usize; G] = std::array::from_fn(|g| p + 2 * g);
            // SAFETY: forwarded contract; every row index is below `positions`.
            let sums = unsafe { pairs.sums::<G>(firsts, firsts.map(|f| f + 1)) };
            for (g, s) in sums.iter().enumerate() {
                store(p + 2 * g, p + 2 * g + 1, s);
            }
            p += 2 * G;
        }
        while p < positions {
            // A last odd position pairs with itself; its second sum is dropped.
            let p2 = (p + 1).min(positions - 1);
            // SAFETY: as above.
            let [s] = unsafe { pairs.sums::<1>([p], [p2]) };
            store(p, p2, &s);
            p += 2;
        }
    }

    /// What [`scores_heads`] shares between its groups of position pairs.
    struct PairScores<'a, const H: usize> {
        codes: &'a [u8],
        scales: &'a [f32],
        /// Code bytes per row (hd / 2).
        row: usize,
        /// Steps of eight columns (hd / 8).
        steps: usize,
        /// Each head's columns 8s..8s+8 twice over.
        doubled: &'a [[f32; 2 * MAX_HD]; H],
    }

    impl<const H: usize> PairScores<'_, H> {
        /// The unscaled sums `q_j·k` of `G` pairs of rows (`firsts[g]`, `seconds[g]`) for every
        /// head `j`, each in the defined eight-lane order, one register half per row:
        /// `[g][j] = [first row's, second row's]`.
        ///
        /// # Safety
        /// AVX-512 F/BW/VBMI and AVX2 present; every row index below the row count.
        #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx2,fma")]
        #[inline]
        unsafe fn sums<const G: usize>(
            &self,
            firsts: [usize; G],
            seconds: [usize; G],
        ) -> [[[f32; 2]; H]; G] {
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
                let mut lanes = [[_mm512_setzero_ps(); H]; G];
                for (s, control) in PAIR_CONTROLS.iter().enumerate().take(self.steps) {
                    let control = _mm512_loadu_si512(control.as_ptr() as *const _);
                    for g in 0..G {
                        let bytes = _mm512_permutex2var_epi8(a[g], control, b[g]);
                        let codes = _mm512_srlv_epi32(bytes, shifts);
                        // (codes & 0x0F) | second.
                        let index = _mm512_ternarylogic_epi32::<0xEA>(codes, nibble, second);
                        // The widened values of both rows, shared by every head.
                        let k = _mm512_permutex2var_ps(ta[g], index, tb[g]);
                        for (lane, d) in lanes[g].iter_mut().zip(self.doubled) {
                            let qv = _mm512_loadu_ps(d.as_ptr().add(16 * s));
                            *lane = _mm512_fmadd_ps(qv, k, *lane);
                        }
                    }
                }
                let mut sums = [[[0.0; 2]; H]; G];
                for (sums_g, lanes_g) in sums.iter_mut().zip(lanes) {
                    for (sum, l) in sums_g.iter_mut().zip(lanes_g) {
                        let lo = _mm512_castps512_ps256(l);
                        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(l)));
                        *sum = [reduce(lo), reduce(hi)];
                    }
                }
                sums
            }
        }
    }

    /// # Safety
    /// As [`scores`], with `out` `[heads, hd]` and `weights` `[heads, P]`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx2,fma")]
    pub unsafe fn weighted_sum(weights: &[f32], hd: usize, rows: Int4Rows, out: &mut [f32]) {
        let heads = out.len() / hd;
        let blocks = hd / 16;
        // Running sums stay in registers: at most 16 (heads × blocks) per pass over the
        // positions, so several heads take the columns in groups, each group a pass.
        let group = (16 / heads).min(blocks);
        let mut b0 = 0;
        while b0 < blocks {
            let nb = group.min(blocks - b0);
            macro_rules! pass {
                ($h:literal) => {
                    match nb {
                        1 => weighted_blocks::<1, $h>(weights, hd, rows, out, b0),
                        2 => weighted_blocks::<2, $h>(weights, hd, rows, out, b0),
                        3 => weighted_blocks::<3, $h>(weights, hd, rows, out, b0),
                        4 => weighted_blocks::<4, $h>(weights, hd, rows, out, b0),
                        5 => weighted_blocks::<5, $h>(weights, hd, rows, out, b0),
                        6 => weighted_blocks::<6, $h>(weights, hd, rows, out, b0),
                        7 => weighted_blocks::<7, $h>(weights, hd, rows, out, b0),
                        _ => weighted_blocks::<8, $h>(weights, hd, rows, out, b0),
                    }
                };
            }
            // SAFETY (each arm): forwarded contract; blocks b0..b0 + nb of every head exist.
            unsafe {
                match heads {
                    1 => pass!(1),
                    2 => pass!(2),
                    3 => pass!(3),
                    _ => pass!(4),
                }
            }
            b0 += nb;
        }
    }

    /// Column blocks `b0..b0 + B` (16 columns each) of `H` heads' weighted sums over every
    /// position.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx2,fma")]
    unsafe fn weighted_blocks<const B: usize, const H: usize>(
        weights: &[f32],
        hd: usize,
        rows: Int4Rows,
        out: &mut [f32],
        b0: usize,
    ) {
        let row = hd / 2;
        let positions = rows.scales.len();
        // Plain loops, not closures: a closure would not inherit the target features.
        let mut controls = [_mm512_setzero_si512(); B];
        let mut acc = [[_mm512_setzero_ps(); B]; H];
        let op = out.as_mut_ptr();
        for b in 0..B {
            // SAFETY: a 64-byte array (b0 + b < hd / 16 ≤ 8); `out` has H rows of hd values.
            unsafe {
                controls[b] = _mm512_loadu_si512(BLOCK_CONTROLS[b0 + b].as_ptr() as *const _);
                for (j, acc_j) in acc.iter_mut().enumerate() {
                    acc_j[b] = _mm512_loadu_ps(op.add(j * hd + 16 * (b0 + b)));
                }
            }
        }
        // Odd columns hold the byte's high nibble.
        let shifts = _mm512_set_epi32(4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0);
        // SAFETY: AVX-512 F enabled.
        let centred = unsafe { centred_codes() };
        let cp = rows.codes.as_ptr();
        for (p, &s) in rows.scales.iter().enumerate() {
            // SAFETY: row p has `row` ≤ 64 bytes (contract).
            let bytes = unsafe { row_bytes(cp.add(p * row), row) };
            let table = _mm512_mul_ps(centred, _mm512_set1_ps(s));
            let mut w = [_mm512_setzero_ps(); H];
            for (j, wj) in w.iter_mut().enumerate() {
                *wj = _mm512_set1_ps(weights[j * positions + p]);
            }
            for (b, &control) in controls.iter().enumerate() {
                // `vpermps` reads only an index's low four bits: the other nibble above them
                // is ignored.
                let codes = _mm512_srlv_epi32(_mm512_permutexvar_epi8(control, bytes), shifts);
                // The widened values, shared by every head.
                let v = _mm512_permutexvar_ps(codes, table);
                for j in 0..H {
                    acc[j][b] = _mm512_fmadd_ps(w[j], v, acc[j][b]);
                }
            }
        }
        for (j, acc_j) in acc.iter().enumerate() {
            for (b, a) in acc_j.iter().enumerate() {
                // SAFETY: as above.
                unsafe { _mm512_storeu_ps(op.add(j * hd + 16 * (b0 + b)), *a) };
            }
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
            .map(|(row, out)| kv_codec::quantize_row_reference(4, row, out))
            .collect();
        (codes, scales)
    }

    /// The definition: widen by the reference, then the reference products.
    fn widened(codes: &[u8], scales: &[f32], hd: usize) -> Vec<f32> {
        let mut rows = vec![0.0; scales.len() * hd];
        kv_codec::dequantize_rows_reference(4, hd, codes, scales, &mut rows);
        rows
    }

    #[test]
    fn known_answer() {
        // hd = 16, one position: codes 8 + (0, 1, …, 7, −1, …, −8) at scale 0.5; two query
        // heads, all ones and all twos.
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
        let q: Vec<f32> = [1.0f32; 16].into_iter().chain([2.0; 16]).collect();
        for path in KernelPath::supported() {
            let mut score = [0.0; 2];
            scores_int4(path, &q, 16, rows, 2.0, &mut score).unwrap();
            assert_eq!(
                score,
                [-8.0, -16.0],
                "{path}: {sum} · 0.5 · 2 per unit of q"
            );
            let mut out = vec![1.0f32; 32];
            weighted_sum_int4(path, &[3.0, -1.0], 16, rows, &mut out).unwrap();
            let want: Vec<f32> = [3.0f32, -1.0]
                .iter()
                .flat_map(|w| vals.iter().map(move |&v| 1.0 + w * (v as f32 * 0.5)))
                .collect();
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
        let e = scores_int4(path, &[0.0; 16], 16, rows, 1.0, &mut [0.0; 2]).unwrap_err();
        assert!(e.to_string().contains("scores [heads, positions]"), "{e}");
        let e = scores_int4(path, &[0.0; 15], 15, rows, 1.0, &mut [0.0; 1]).unwrap_err();
        assert!(e.to_string().contains("even"), "{e}");
        let e = scores_int4(path, &[0.0; 20], 16, rows, 1.0, &mut [0.0; 1]).unwrap_err();
        assert!(e.to_string().contains("queries [heads, hd]"), "{e}");
        let short = Int4Rows {
            codes: &[0; 7],
            scales: &[1.0],
        };
        let e = weighted_sum_int4(path, &[1.0], 16, short, &mut [0.0; 16]).unwrap_err();
        assert!(e.to_string().contains("codes"), "{e}");
        let e = weighted_sum_int4(path, &[1.0], 16, rows, &mut [0.0; 32]).unwrap_err();
        assert!(e.to_string().contains("weights [heads, positions]"), "{e}");
        let e = scores_int4(path, &[], 0, rows, 1.0, &mut []).unwrap_err();
        assert!(e.to_string().contains("head size"), "{e}");
        // No positions: nothing to score or add, on every path.
        let empty = Int4Rows {
            codes: &[],
            scales: &[],
        };
        for path in KernelPath::supported() {
            scores_int4(path, &[0.5; 16], 16, empty, 1.0, &mut []).unwrap();
            let mut out = [0.25f32; 16];
            weighted_sum_int4(path, &[], 16, empty, &mut out).unwrap();
            assert_eq!(out, [0.25; 16], "{path}");
        }
    }

    /// Both products for `heads` query heads on every path against the definition (widen by the
    /// reference, then the reference products head by head), bit for bit.
    fn check_against_definition(hd: usize, positions: usize, heads: usize, seed: u64) {
        let (codes, scales) = quantized(&values(positions * hd, seed), hd);
        let rows = Int4Rows {
            codes: &codes,
            scales: &scales,
        };
        let k = widened(&codes, &scales, hd);
        let (q, w) = (
            values(heads * hd, seed + 1),
            values(heads * positions, seed + 2),
        );
        let start = values(heads * hd, seed + 3);
        let mut want_scores = vec![0.0; heads * positions];
        let mut want_out = start.clone();
        for j in 0..heads {
            let sc = &mut want_scores[j * positions..(j + 1) * positions];
            attention::scores_reference(&q[j * hd..(j + 1) * hd], HistoryRows::F32(&k), 0.3, sc);
            let wj = &w[j * positions..(j + 1) * positions];
            let o = &mut want_out[j * hd..(j + 1) * hd];
            attention::weighted_sum_reference(wj, HistoryRows::F32(&k), o);
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for path in KernelPath::supported() {
            let what = format!("{path}, hd {hd}, {positions} positions, {heads} heads");
            let mut got = vec![0.0; heads * positions];
            scores_int4(path, &q, hd, rows, 0.3, &mut got).unwrap();
            assert_eq!(bits(&got), bits(&want_scores), "scores: {what}");
            let mut out = start.clone();
            weighted_sum_int4(path, &w, hd, rows, &mut out).unwrap();
            assert_eq!(bits(&out), bits(&want_out), "weighted sum: {what}");
        }
    }

    #[test]
    fn in_place_shapes_equal_the_definition() {
        // Every head size and head count the in-place kernels take, with odd and even position
        // counts (a last odd position pairs with itself) and more heads than they take.
        #[cfg(target_arch = "x86_64")]
        let in_place_cpu =
            KernelPath::Avx512.is_supported() && std::arch::is_x86_feature_detected!("avx512vbmi");
        #[cfg(not(target_arch = "x86_64"))]
        let in_place_cpu = false;
        for hd in (16..=128).step_by(16) {
            for heads in 1..=MAX_HEADS + 1 {
                if in_place_cpu {
                    // The case under test takes the in-place kernels, not the fallback.
                    let in_place = reads_codes_in_place(KernelPath::Avx512, hd, heads);
                    assert_eq!(in_place, heads <= MAX_HEADS, "hd {hd}, {heads} heads");
                }
                // 13 and 145: whole groups of four pairs, then single pairs and a lone position.
                for positions in [1usize, 2, 7, 13, 64, 145] {
                    check_against_definition(hd, positions, heads, (hd * 100 + positions) as u64);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn every_path_equals_widening_then_the_reference_bit_for_bit(
            half_hd in 1usize..80, positions in 1usize..40, heads in 1usize..6, seed in 0u64..1000,
        ) {
            // Even head sizes from 2 to 158: in place (multiples of 16 up to 128) and not.
            check_against_definition(2 * half_hd, positions, heads, seed);
        }
    }
}
