//! Multiply-add kernels: [`RowPacked`] ternary weights × INT8 activations.
//!
//! Codes are stored as `c = w + 1` in {0, 1, 2}, so `Σ w·x = Σ c·x − Σ x`: the unsigned × signed
//! byte multiply-adds (`vpmaddubsw`, VNNI `vpdpbusd`) take the codes as they come out of a shift
//! and a mask, and one i32 per token corrects the offset at the end.
//!
//! Tiling: up to [`TOKEN_TILE`] tokens share each unpacked weight vector; columns are blocked so
//! the tile's activations stay in L1 (for one token the whole row usually fits, and the weights
//! stream from memory exactly once).

use super::MAD_L1_BUDGET_BYTES;
use crate::cpu::KernelPath;
use crate::pack::{RowPacked, K_ALIGN};
use crate::quant::QuantizedActivations;
use std::ops::Range;

/// Tokens multiplied per pass over a weight row.
const TOKEN_TILE: usize = 8;

/// i32 sums `[tokens, rows.len()]` of `Σ_k Wq[o, k] · xq[t, k]` for `o` in `rows`.
pub(super) fn dots(
    path: KernelPath,
    w: &RowPacked,
    x: &QuantizedActivations,
    rows: Range<usize>,
) -> Vec<i32> {
    let mut out = vec![0i32; x.tokens * rows.len()];
    match path {
        KernelPath::Scalar => dots_scalar(w, x, rows, &mut out),
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx2 => tiled(w, x, rows, &mut out, avx2::tile),
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx512 => {
            if crate::cpu::cpu_has_avx512_vnni() {
                tiled(w, x, rows, &mut out, avx512::tile_vnni)
            } else {
                tiled(w, x, rows, &mut out, avx512::tile_bw)
            }
        }
        #[cfg(target_arch = "aarch64")]
        KernelPath::Neon => {
            if crate::cpu::cpu_has_neon_dotprod() {
                tiled(w, x, rows, &mut out, neon::tile_sdot)
            } else {
                tiled(w, x, rows, &mut out, neon::tile_smull)
            }
        }
        _ => dots_scalar(w, x, rows, &mut out),
    }
    out
}

/// [`dots`] on the NEON tile without the dot-product extension (`smull`/`sadalp`), which a CPU
/// with `sdot` never takes: for tests on such a CPU. The caller checked NEON.
#[cfg(all(test, target_arch = "aarch64"))]
pub(super) fn dots_neon_smull(
    w: &RowPacked,
    x: &QuantizedActivations,
    rows: Range<usize>,
) -> Vec<i32> {
    let mut out = vec![0i32; x.tokens * rows.len()];
    tiled(w, x, rows, &mut out, neon::tile_smull);
    out
}

/// [`dots`] on the AVX-512 F+BW tile (`vpmaddubsw`), which a CPU with VNNI never takes: for
/// tests on such a CPU. The caller checked AVX-512 F and BW.
#[cfg(all(test, target_arch = "x86_64"))]
pub(super) fn dots_avx512_bw(
    w: &RowPacked,
    x: &QuantizedActivations,
    rows: Range<usize>,
) -> Vec<i32> {
    let mut out = vec![0i32; x.tokens * rows.len()];
    tiled(w, x, rows, &mut out, avx512::tile_bw);
    out
}

/// Scalar path: the same offset-code arithmetic as the SIMD tiles, one weight at a time.
fn dots_scalar(w: &RowPacked, x: &QuantizedActivations, rows: Range<usize>, out: &mut [i32]) {
    let len = rows.len();
    for t in 0..x.tokens {
        let xt = &x.codes[t * x.stride..(t + 1) * x.stride];
        let x_sum: i32 = xt.iter().map(|&v| v as i32).sum();
        for (i, r) in rows.clone().enumerate() {
            let mut acc = 0i32;
            for (block, xb) in w.row(r).chunks_exact(64).zip(xt.chunks_exact(K_ALIGN)) {
                for (j, &byte) in block.iter().enumerate() {
                    for s in 0..4 {
                        let code = ((byte >> (2 * s)) & 3) as i32;
                        acc += code * xb[64 * s + j] as i32;
                    }
                }
            }
            out[t * len + i] = acc - x_sum;
        }
    }
}

/// Arguments of one SIMD tile call: `rows` consecutive weight rows `row_bytes` apart from `w`,
/// `blocks` 256-column blocks of each, against the first `tokens` activation pointers of `x`.
/// The tile writes `acc[r][t] = Σ_k c[r, k] · x_t[k]` and prefetches the same segment of a row
/// [`PREFETCH_ROWS`] or more ahead (a hint: no address it forms is dereferenced).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
struct TileArgs<'a> {
    w: *const u8,
    row_bytes: usize,
    x: [*const i8; TOKEN_TILE],
    tokens: usize,
    blocks: usize,
    /// `[rows]`, one entry per row.
    acc: &'a mut [[i32; TOKEN_TILE]],
}

/// A SIMD tile.
///
/// # Safety
/// The CPU supports the tile's instruction set; for each of the `acc.len()` rows `r`,
/// `w + r · row_bytes` points at `64 · blocks` readable bytes; each `x[t]`, `t < tokens`, at
/// `256 · blocks` readable bytes.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
type Tile = unsafe fn(&mut TileArgs);

/// Rows ahead whose weight segment a tile prefetches: in column blocks the segments of
/// successive rows are a whole row apart, a stride the hardware prefetcher does not follow.
#[cfg(target_arch = "x86_64")]
const PREFETCH_ROWS: usize = 2;

/// Bytes ahead that the AVX2 tile prefetches at least ([`prefetch_rows`]).
#[cfg(target_arch = "x86_64")]
const PREFETCH_BYTES: usize = 4096;

/// Rows ahead for rows of `row_bytes` bytes: [`PREFETCH_ROWS`], or more when rows are short,
/// so that at least [`PREFETCH_BYTES`] are in flight: short rows otherwise asked for too little
/// to hide the memory latency on cold weights (reports/kernels.md § Decisions: prefetch_rows).
#[cfg(target_arch = "x86_64")]
fn prefetch_rows(row_bytes: usize) -> usize {
    (PREFETCH_BYTES / row_bytes.max(1)).max(PREFETCH_ROWS)
}

/// Rows per tile call (the per-call cost is amortized; the result buffer stays on the stack).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const ROW_GROUP: usize = 64;

/// Token tiles × column blocks × row groups around a SIMD tile; applies the offset correction.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn tiled(w: &RowPacked, x: &QuantizedActivations, rows: Range<usize>, out: &mut [i32], tile: Tile) {
    let len = rows.len();
    let stride = x.stride;
    let row_bytes = w.row_bytes();
    debug_assert_eq!(stride, w.padded_cols());
    let mut acc = [[0i32; TOKEN_TILE]; ROW_GROUP];
    for t0 in (0..x.tokens).step_by(TOKEN_TILE) {
        let nt = TOKEN_TILE.min(x.tokens - t0);
        let col_block = (MAD_L1_BUDGET_BYTES / nt / K_ALIGN).max(1) * K_ALIGN;
        for k0 in (0..stride).step_by(col_block) {
            let blocks = (col_block.min(stride - k0)) / K_ALIGN;
            let mut xs = [std::ptr::null::<i8>(); TOKEN_TILE];
            for (j, p) in xs.iter_mut().enumerate().take(nt) {
                *p = x.codes[(t0 + j) * stride + k0..].as_ptr();
            }
            for g0 in (0..len).step_by(ROW_GROUP) {
                let g_rows = ROW_GROUP.min(len - g0);
                let mut args = TileArgs {
                    w: w.row(rows.start + g0)[k0 / 4..].as_ptr(),
                    row_bytes,
                    x: xs,
                    tokens: nt,
                    blocks,
                    acc: &mut acc[..g_rows],
                };
                // SAFETY: `tiled` is only called with a tile the CPU supports (see `dots`); rows
                // rows.start + g0 .. + g_rows exist, each holds `stride / 4` bytes, so
                // `64 · blocks` bytes from `k0 / 4` are in bounds; each token row holds `stride`
                // codes, `256 · blocks` of them from `k0`.
                unsafe { tile(&mut args) };
                // A full token tile: eight rows at a time, transposed in registers (AVX2). The
                // scalar scatter, kept below for the rest, took ≈ 3% of a batch-16 decode's
                // samples.
                #[cfg(target_arch = "x86_64")]
                let transposed = if nt == TOKEN_TILE {
                    for i in (0..g_rows - g_rows % 8).step_by(8) {
                        let rows8: &[[i32; TOKEN_TILE]; 8] =
                            acc[i..i + 8].try_into().expect("eight rows");
                        // SAFETY: `tiled` runs only on paths with AVX2 (AVX-512 implies it), see
                        // `dots`.
                        unsafe { avx2::add_transposed(rows8, out, len, t0, g0 + i) };
                    }
                    g_rows - g_rows % 8
                } else {
                    0
                };
                #[cfg(not(target_arch = "x86_64"))]
                let transposed = 0;
                for (i, a) in acc[..g_rows].iter().enumerate().skip(transposed) {
                    for j in 0..nt {
                        out[(t0 + j) * len + g0 + i] += a[j];
                    }
                }
            }
        }
        for j in 0..nt {
            let t = t0 + j;
            let codes = &x.codes[t * stride..(t + 1) * stride];
            // SAFETY: on x86-64 `tiled` runs only on paths with AVX2 (AVX-512 implies it), see
            // `dots`.
            #[cfg(target_arch = "x86_64")]
            let x_sum = unsafe { avx2::code_sum(codes) };
            #[cfg(not(target_arch = "x86_64"))]
            let x_sum: i32 = codes.iter().map(|&v| v as i32).sum();
            for o in &mut out[t * len..(t + 1) * len] {
                *o -= x_sum;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{prefetch_rows, TileArgs, TOKEN_TILE};
    use std::arch::x86_64::*;

    /// Blocks of 256 columns whose i16 partial sums cannot overflow: per block and lane,
    /// 8 `vpmaddubsw` results of at most 2·2·128 = 512 in magnitude, so 8 blocks stay within
    /// [-32768, 32512].
    const I16_WINDOW_BLOCKS: usize = 8;

    /// # Safety
    /// See [`super::Tile`]; requires AVX2.
    pub(super) unsafe fn tile(args: &mut TileArgs) {
        // SAFETY: forwarded contract.
        unsafe { dispatch_tokens!(args.tokens, tile_n, (args), 1, 2, 3, 4, 5, 6, 7; 8) }
    }

    /// Every row of `args`, one [`row_n`] call each (inlined: same target features).
    ///
    /// # Safety
    /// See [`super::Tile`].
    #[target_feature(enable = "avx2")]
    unsafe fn tile_n<const NT: usize>(args: &mut TileArgs) {
        let ahead = prefetch_rows(args.row_bytes);
        for r in 0..args.acc.len() {
            let w = args.w.wrapping_add(r * args.row_bytes);
            let prefetch = args.w.wrapping_add((r + ahead) * args.row_bytes);
            // SAFETY: row r of the tile satisfies the row contract of `row_n`.
            args.acc[r] = unsafe { row_n::<NT>(w, &args.x, args.blocks, prefetch) };
        }
    }

    /// One row: `64 · blocks` bytes at `w` against `256 · blocks` codes at each `x[t]`.
    ///
    /// # Safety
    /// As [`super::Tile`] for a single row.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn row_n<const NT: usize>(
        w: *const u8,
        x: &[*const i8; TOKEN_TILE],
        blocks: usize,
        prefetch: *const u8,
    ) -> [i32; TOKEN_TILE] {
        let mask = _mm256_set1_epi8(3);
        let ones = _mm256_set1_epi16(1);
        let mut acc32 = [_mm256_setzero_si256(); NT];
        let mut b0 = 0;
        while b0 < blocks {
            let b1 = (b0 + I16_WINDOW_BLOCKS).min(blocks);
            let mut acc16 = [_mm256_setzero_si256(); NT];
            for b in b0..b1 {
                _mm_prefetch::<_MM_HINT_T0>(prefetch.wrapping_add(64 * b) as *const i8);
                for half in 0..2 {
                    // SAFETY: b < blocks, so 64·b + 32·half + 32 <= 64·blocks bytes of `w`.
                    let v =
                        unsafe { _mm256_loadu_si256(w.add(64 * b + 32 * half) as *const __m256i) };
                    // Code of column 256b + 64s + 32half + j sits in byte j at bits 2s.
                    let c0 = _mm256_and_si256(v, mask);
                    let c1 = _mm256_and_si256(_mm256_srli_epi16(v, 2), mask);
                    let c2 = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
                    let c3 = _mm256_and_si256(_mm256_srli_epi16(v, 6), mask);
                    for t in 0..NT {
                        // SAFETY: 256·b + 32·half + 192 + 32 <= 256·blocks codes of token t.
                        let p = unsafe { x[t].add(256 * b + 32 * half) };
                        let (x0, x1, x2, x3) = unsafe {
                            (
                                _mm256_loadu_si256(p as *const __m256i),
                                _mm256_loadu_si256(p.add(64) as *const __m256i),
                                _mm256_loadu_si256(p.add(128) as *const __m256i),
                                _mm256_loadu_si256(p.add(192) as *const __m256i),
                            )
                        };
                        let s01 = _mm256_add_epi16(
                            _mm256_maddubs_epi16(c0, x0),
                            _mm256_maddubs_epi16(c1, x1),
                        );
                        let s23 = _mm256_add_epi16(
                            _mm256_maddubs_epi16(c2, x2),
                            _mm256_maddubs_epi16(c3, x3),
                        );
                        acc16[t] = _mm256_add_epi16(acc16[t], _mm256_add_epi16(s01, s23));
                    }
                }
            }
            for t in 0..NT {
                acc32[t] = _mm256_add_epi32(acc32[t], _mm256_madd_epi16(acc16[t], ones));
            }
            b0 = b1;
        }
        let mut out = [0i32; TOKEN_TILE];
        for t in 0..NT {
            out[t] = hsum_epi32(acc32[t]);
        }
        out
    }

    /// `out[(t0 + j) · len + r + k] += rows8[k][j]` for the eight rows `k` and eight tokens `j`:
    /// an 8 × 8 transpose in registers, then one add per token.
    ///
    /// Panics if a destination lies outside `out`.
    ///
    /// # Safety
    /// The CPU supports AVX2.
    pub(super) unsafe fn add_transposed(
        rows8: &[[i32; TOKEN_TILE]; 8],
        out: &mut [i32],
        len: usize,
        t0: usize,
        r: usize,
    ) {
        const _: () = assert!(TOKEN_TILE == 8);
        let last = (t0 + TOKEN_TILE - 1) * len + r + 8;
        assert!(last <= out.len(), "transposed add past the output");
        // SAFETY: AVX2 (contract); every destination is within `out` (asserted).
        unsafe { add_transposed_avx2(rows8, out, len, t0, r) }
    }

    /// # Safety
    /// AVX2; `(t0 + 7) · len + r + 8 <= out.len()`.
    #[target_feature(enable = "avx2")]
    unsafe fn add_transposed_avx2(
        rows8: &[[i32; TOKEN_TILE]; 8],
        out: &mut [i32],
        len: usize,
        t0: usize,
        r: usize,
    ) {
        // SAFETY: each row holds 8 i32 (32 bytes).
        let v: [__m256i; 8] = std::array::from_fn(|k| unsafe {
            _mm256_loadu_si256(rows8[k].as_ptr() as *const __m256i)
        });
        // Pairs of rows interleaved by token, then quads: 128-bit lane 0 holds tokens 0–3,
        // lane 1 tokens 4–7 throughout.
        let p: [__m256i; 8] = std::array::from_fn(|k| {
            let (a, b) = (v[k & !1], v[k | 1]);
            if k % 2 == 0 {
                _mm256_unpacklo_epi32(a, b)
            } else {
                _mm256_unpackhi_epi32(a, b)
            }
        });
        // q[j]: token j (lane 0) and token j + 4 (lane 1), rows 0–3 for j < 4, rows 4–7 after.
        let quad = |lo: __m256i, hi: __m256i, high: bool| {
            if high {
                _mm256_unpackhi_epi64(lo, hi)
            } else {
                _mm256_unpacklo_epi64(lo, hi)
            }
        };
        let rows03 = [
            quad(p[0], p[2], false),
            quad(p[0], p[2], true),
            quad(p[1], p[3], false),
            quad(p[1], p[3], true),
        ];
        let rows47 = [
            quad(p[4], p[6], false),
            quad(p[4], p[6], true),
            quad(p[5], p[7], false),
            quad(p[5], p[7], true),
        ];
        let base = out.as_mut_ptr();
        for j in 0..4 {
            for (token, v) in [
                (j, _mm256_permute2x128_si256::<0x20>(rows03[j], rows47[j])),
                (
                    j + 4,
                    _mm256_permute2x128_si256::<0x31>(rows03[j], rows47[j]),
                ),
            ] {
                // SAFETY: (t0 + token) · len + r + 8 <= out.len() (contract).
                unsafe {
                    let d = base.add((t0 + token) * len + r) as *mut __m256i;
                    _mm256_storeu_si256(d, _mm256_add_epi32(_mm256_loadu_si256(d), v));
                }
            }
        }
    }

    /// `Σ codes` exactly: the bytes, offset to unsigned, summed eight at a time by `vpsadbw`
    /// (the scalar sum, a per-call loop outside the tile, took 2–3% of a decode step).
    ///
    /// # Safety
    /// The CPU supports AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn code_sum(codes: &[i8]) -> i32 {
        let flip = _mm256_set1_epi8(i8::MIN);
        let zero = _mm256_setzero_si256();
        let mut acc = _mm256_setzero_si256();
        let mut chunks = codes.chunks_exact(32);
        for c in &mut chunks {
            // SAFETY: `c` holds 32 bytes.
            let v = unsafe { _mm256_loadu_si256(c.as_ptr() as *const __m256i) };
            // code + 128 as an unsigned byte; four u64 lanes of eight-byte sums.
            acc = _mm256_add_epi64(acc, _mm256_sad_epu8(_mm256_xor_si256(v, flip), zero));
        }
        let mut lanes = [0u64; 4];
        // SAFETY: `lanes` holds 32 bytes.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc) };
        let offset_sum: u64 = lanes.iter().sum();
        let body = codes.len() - chunks.remainder().len();
        let tail: i32 = chunks.remainder().iter().map(|&v| v as i32).sum();
        (offset_sum as i64 - 128 * body as i64) as i32 + tail
    }

    #[target_feature(enable = "avx2")]
    fn hsum_epi32(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{TileArgs, PREFETCH_ROWS, TOKEN_TILE};
    use std::arch::x86_64::*;

    /// # Safety
    /// See [`super::Tile`]; requires AVX-512 F, BW and VNNI.
    pub(super) unsafe fn tile_vnni(args: &mut TileArgs) {
        // SAFETY: forwarded contract.
        unsafe { dispatch_tokens!(args.tokens, vnni_n, (args), 1, 2, 3, 4, 5, 6, 7; 8) }
    }

    /// # Safety
    /// See [`super::Tile`]; requires AVX-512 F and BW.
    pub(super) unsafe fn tile_bw(args: &mut TileArgs) {
        // SAFETY: forwarded contract.
        unsafe { dispatch_tokens!(args.tokens, bw_n, (args), 1, 2, 3, 4, 5, 6, 7; 8) }
    }

    /// One 64-byte block holds 256 codes; shifting by 2s yields the codes of columns
    /// 64s..64s+64, aligned with a 64-byte load of the activations.
    /// Every row of `args`, one [`vnni_row`] call each (inlined: same target features).
    ///
    /// # Safety
    /// See [`super::Tile`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn vnni_n<const NT: usize>(args: &mut TileArgs) {
        for r in 0..args.acc.len() {
            let w = args.w.wrapping_add(r * args.row_bytes);
            let prefetch = args.w.wrapping_add((r + PREFETCH_ROWS) * args.row_bytes);
            // SAFETY: row r of the tile satisfies the row contract of `vnni_row`.
            args.acc[r] = unsafe { vnni_row::<NT>(w, &args.x, args.blocks, prefetch) };
        }
    }

    /// One row: `64 · blocks` bytes at `w` against `256 · blocks` codes at each `x[t]`.
    ///
    /// # Safety
    /// As [`super::Tile`] for a single row.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn vnni_row<const NT: usize>(
        w: *const u8,
        x: &[*const i8; TOKEN_TILE],
        blocks: usize,
        prefetch: *const u8,
    ) -> [i32; TOKEN_TILE] {
        let mask = _mm512_set1_epi8(3);
        let mut acc = [_mm512_setzero_si512(); NT];
        for b in 0..blocks {
            _mm_prefetch::<_MM_HINT_T0>(prefetch.wrapping_add(64 * b) as *const i8);
            // SAFETY: 64·b + 64 <= 64·blocks bytes of `w`.
            let v = unsafe { _mm512_loadu_si512(w.add(64 * b) as *const _) };
            let c = [
                _mm512_and_si512(v, mask),
                _mm512_and_si512(_mm512_srli_epi16(v, 2), mask),
                _mm512_and_si512(_mm512_srli_epi16(v, 4), mask),
                _mm512_and_si512(_mm512_srli_epi16(v, 6), mask),
            ];
            for t in 0..NT {
                for (s, cs) in c.iter().enumerate() {
                    // SAFETY: 256·b + 64·s + 64 <= 256·blocks codes of token t.
                    let xv = unsafe { _mm512_loadu_si512(x[t].add(256 * b + 64 * s) as *const _) };
                    acc[t] = _mm512_dpbusd_epi32(acc[t], *cs, xv);
                }
            }
        }
        let mut out = [0i32; TOKEN_TILE];
        for t in 0..NT {
            out[t] = _mm512_reduce_add_epi32(acc[t]);
        }
        out
    }

    /// AVX-512 without VNNI: `vpmaddubsw` into i16 windows, widened like the AVX2 tile.
    /// Every row of `args`, one [`bw_row`] call each (inlined: same target features).
    ///
    /// # Safety
    /// See [`super::Tile`].
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn bw_n<const NT: usize>(args: &mut TileArgs) {
        for r in 0..args.acc.len() {
            let w = args.w.wrapping_add(r * args.row_bytes);
            let prefetch = args.w.wrapping_add((r + PREFETCH_ROWS) * args.row_bytes);
            // SAFETY: row r of the tile satisfies the row contract of `bw_row`.
            args.acc[r] = unsafe { bw_row::<NT>(w, &args.x, args.blocks, prefetch) };
        }
    }

    /// One row: `64 · blocks` bytes at `w` against `256 · blocks` codes at each `x[t]`.
    ///
    /// # Safety
    /// As [`super::Tile`] for a single row.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn bw_row<const NT: usize>(
        w: *const u8,
        x: &[*const i8; TOKEN_TILE],
        blocks: usize,
        prefetch: *const u8,
    ) -> [i32; TOKEN_TILE] {
        // Per block and i16 lane: 4 vpmaddubsw results of magnitude <= 512 -> 2048; 16 blocks
        // reach 32768, so windows of 8 blocks keep a margin.
        const WINDOW: usize = 8;
        let mask = _mm512_set1_epi8(3);
        let ones = _mm512_set1_epi16(1);
        let mut acc32 = [_mm512_setzero_si512(); NT];
        let mut b0 = 0;
        while b0 < blocks {
            let b1 = (b0 + WINDOW).min(blocks);
            let mut acc16 = [_mm512_setzero_si512(); NT];
            for b in b0..b1 {
                _mm_prefetch::<_MM_HINT_T0>(prefetch.wrapping_add(64 * b) as *const i8);
                // SAFETY: 64·b + 64 <= 64·blocks bytes of `w`.
                let v = unsafe { _mm512_loadu_si512(w.add(64 * b) as *const _) };
                let c = [
                    _mm512_and_si512(v, mask),
                    _mm512_and_si512(_mm512_srli_epi16(v, 2), mask),
                    _mm512_and_si512(_mm512_srli_epi16(v, 4), mask),
                    _mm512_and_si512(_mm512_srli_epi16(v, 6), mask),
                ];
                for t in 0..NT {
                    let mut s16 = _mm512_setzero_si512();
                    for (s, cs) in c.iter().enumerate() {
                        // SAFETY: 256·b + 64·s + 64 <= 256·blocks codes of token t.
                        let xv =
                            unsafe { _mm512_loadu_si512(x[t].add(256 * b + 64 * s) as *const _) };
                        s16 = _mm512_add_epi16(s16, _mm512_maddubs_epi16(*cs, xv));
                    }
                    acc16[t] = _mm512_add_epi16(acc16[t], s16);
                }
            }
            for t in 0..NT {
                acc32[t] = _mm512_add_epi32(acc32[t], _mm512_madd_epi16(acc16[t], ones));
            }
            b0 = b1;
        }
        let mut out = [0i32; TOKEN_TILE];
        for t in 0..NT {
            out[t] = _mm512_reduce_add_epi32(acc32[t]);
        }
        out
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::{TileArgs, TOKEN_TILE};
    use std::arch::aarch64::*;

    /// # Safety
    /// See [`super::Tile`]; requires NEON and the dot-product extension.
    pub(super) unsafe fn tile_sdot(args: &mut TileArgs) {
        // SAFETY: forwarded contract.
        unsafe { dispatch_tokens!(args.tokens, sdot_n, (args), 1, 2, 3, 4, 5, 6, 7; 8) }
    }

    /// # Safety
    /// See [`super::Tile`]; requires NEON.
    pub(super) unsafe fn tile_smull(args: &mut TileArgs) {
        // SAFETY: forwarded contract.
        unsafe { dispatch_tokens!(args.tokens, smull_n, (args), 1, 2, 3, 4, 5, 6, 7; 8) }
    }

    /// The four 16-byte quarters of a 64-byte block, each shifted into codes: `c[s][q]` holds
    /// the codes of columns `64s + 16q ..+ 16` of the block (byte j at bits 2s holds column
    /// 64s + j), matching 16-byte loads of the activations.
    ///
    /// # Safety
    /// NEON; 64 readable bytes at `w`.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn block_codes(w: *const u8) -> [[int8x16_t; 4]; 4] {
        let mask = vdupq_n_u8(3);
        // SAFETY: 64 readable bytes (contract).
        let v: [uint8x16_t; 4] = std::array::from_fn(|q| unsafe { vld1q_u8(w.add(16 * q)) });
        [
            v.map(|v| vreinterpretq_s8_u8(vandq_u8(v, mask))),
            v.map(|v| vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8::<2>(v), mask))),
            v.map(|v| vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8::<4>(v), mask))),
            v.map(|v| vreinterpretq_s8_u8(vshrq_n_u8::<6>(v))),
        ]
    }

    /// `acc + Σ` of each four adjacent byte products of `a` and `b`, per i32 lane (`sdot`; the
    /// intrinsic is not yet stable Rust).
    #[inline]
    #[target_feature(enable = "neon,dotprod")]
    fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        let mut acc = acc;
        // SAFETY: `sdot` reads and writes only the named vector registers; the enclosing
        // function requires the dot-product extension.
        unsafe {
            std::arch::asm!(
                "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
                acc = inout(vreg) acc,
                a = in(vreg) a,
                b = in(vreg) b,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        acc
    }

    /// A row tile whose multiply-accumulate of 16 codes `c` and 16 activations `x` into the i32
    /// lanes `acc` is `$mac`; the two tiles differ only there (and in the features it needs).
    macro_rules! neon_row_tile {
        ($(#[$doc:meta])* $name:ident, $features:literal, |$acc:ident, $c:ident, $x:ident| $mac:expr) => {
            $(#[$doc])*
            ///
            /// # Safety
            /// See [`super::Tile`].
            #[target_feature(enable = $features)]
            unsafe fn $name<const NT: usize>(args: &mut TileArgs) {
                for r in 0..args.acc.len() {
                    let w = args.w.wrapping_add(r * args.row_bytes);
                    let mut acc = [vdupq_n_s32(0); NT];
                    for b in 0..args.blocks {
                        // SAFETY: 64·b + 64 <= 64·blocks bytes of row r (contract).
                        let c = unsafe { block_codes(w.add(64 * b)) };
                        for (t, acc_t) in acc.iter_mut().enumerate() {
                            for (s, cs) in c.iter().enumerate() {
                                for (q, &$c) in cs.iter().enumerate() {
                                    // SAFETY: 256·b + 64·s + 16·q + 16 <= 256·blocks codes of
                                    // token t.
                                    let $x = unsafe {
                                        vld1q_s8(args.x[t].add(256 * b + 64 * s + 16 * q))
                                    };
                                    let $acc = *acc_t;
                                    *acc_t = $mac;
                                }
                            }
                        }
                    }
                    let mut out = [0i32; TOKEN_TILE];
                    for t in 0..NT {
                        out[t] = vaddvq_s32(acc[t]);
                    }
                    args.acc[r] = out;
                }
            }
        };
    }

    neon_row_tile!(
        /// With the dot-product extension: `sdot` adds four byte products per i32 lane.
        sdot_n, "neon,dotprod", |acc, c, x| sdot(acc, c, x)
    );

    neon_row_tile!(
        /// Without `sdot`: `smull` into i16 products (at most 2·128 in magnitude), pairwise
        /// added into i32 lanes by `sadalp`.
        smull_n, "neon", |acc, c, x| {
            let lo = vmull_s8(vget_low_s8(c), vget_low_s8(x));
            vpadalq_s16(vpadalq_s16(acc, lo), vmull_high_s8(c, x))
        }
    );
}
