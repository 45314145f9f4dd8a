//! Ternary × INT4 products over [`TriplePacked`] weights: one table lookup covers **three**
//! weights (bitnet.cpp TL2's grouping), where [`super::lut`] covers two.
//!
//! For each token and group `g = (3g, 3g+1, 3g+2)` of activations `(a, b, c)`, a 16-byte table
//! holds `w·(a, b, c) + 24` for the 14 folded weight triples of [`triple_weights`] (entries 14
//! and 15 are unused). A row's group contributes `sign · table[index]`, and the bias comes back
//! out as `24 · Σ signs`, a per-row constant of the packed weights. INT4 codes bound an entry by
//! `3 · 8 = 24`, so every entry is a byte in 0..=48.
//!
//! On AVX-512 with VBMI and VNNI, a chunk's four group tables (64 bytes) serve one `vpermb` of
//! 64 indices, 16 rows × 4 groups with each row's groups in one dword, and `vpdpbusd` against
//! ±1 sign bytes adds each row's four signed lookups into its i32 lane: 12 weights per row,
//! 192 multiply-adds, per `vpermb` and `vpdpbusd`, where the two-weight tile gets 128. NEON
//! looks up one group of 16 rows per `tbl` and builds each group's table with three byte
//! multiply-adds. Every other path runs the scalar tile, the same lookups one byte at a time.

use super::lookup::{LookupLayout, TokenTables, CHUNK_TABLE_BYTES};
use super::lut::cpu_has_vbmi_vnni;
use super::split::ProductKind;
use crate::cpu::KernelPath;
use crate::pack::{
    triple_weights, TriplePacked, LUT_ROW_BLOCK, TRIPLE_CHUNK_BYTES, TRIPLE_CHUNK_COLS, TRIPLE_ZERO,
};
use crate::quant::QuantizedActivations;
use std::mem::MaybeUninit;
use std::ops::Range;

/// Tokens sharing each chunk's unpacked indices and signs.
pub(super) const TOKEN_TILE: usize = 8;
/// Bias added to every table entry so entries are unsigned bytes.
const BIAS: i32 = 24;
/// Bytes of one group's table.
const TABLE_BYTES: usize = 16;
// A chunk's tables are its 4 groups' tables.
const _: () = assert!(CHUNK_TABLE_BYTES == 4 * TABLE_BYTES);
/// Padding past a token's last chunk, so a 16-byte load at any chunk start stays in bounds.
const X_PAD: usize = 16;

/// The tile a kernel path runs over [`TriplePacked`] weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TripleTile {
    Scalar,
    /// `vpermb` over a chunk's 64 table bytes, summed by `vpdpbusd` against signs.
    Avx512Vbmi,
    /// `tbl` per group table on 128-bit registers (AArch64 NEON), signs applied by `eor`.
    Neon,
}

impl TripleTile {
    pub(super) fn for_path(path: KernelPath) -> TripleTile {
        match path {
            KernelPath::Avx512 if cpu_has_vbmi_vnni() => TripleTile::Avx512Vbmi,
            KernelPath::Neon => TripleTile::Neon,
            _ => TripleTile::Scalar,
        }
    }

    /// Every tile this CPU runs, whatever path the environment forces (for tests).
    #[cfg(test)]
    pub(super) fn supported() -> Vec<TripleTile> {
        let mut tiles = vec![TripleTile::Scalar];
        if KernelPath::Avx512.is_supported() && cpu_has_vbmi_vnni() {
            tiles.push(TripleTile::Avx512Vbmi);
        }
        if KernelPath::Neon.is_supported() {
            tiles.push(TripleTile::Neon);
        }
        tiles
    }
}

/// Table entry `e` of a group with activations `x`, biased.
fn entry(e: usize, x: &[i8]) -> u8 {
    if e > TRIPLE_ZERO as usize {
        return BIAS as u8;
    }
    let w = triple_weights(e as u8);
    let v: i32 = w.iter().zip(x).map(|(&w, &x)| w as i32 * x as i32).sum();
    (v + BIAS) as u8
}

/// Reference builder: chunks `cols` of one token (activations `x`, zero past its columns,
/// readable to `12 · cols.end`), chunk `c`'s 64 bytes at `out[(c − cols.start) · stride..]`.
fn build_scalar(x: &[i8], cols: Range<usize>, out: &mut [MaybeUninit<u8>], stride: usize) {
    for (n, c) in cols.enumerate() {
        for j in 0..4 {
            let group = &x[TRIPLE_CHUNK_COLS * c + 3 * j..][..3];
            for (e, b) in out[n * stride + TABLE_BYTES * j..][..TABLE_BYTES]
                .iter_mut()
                .enumerate()
            {
                b.write(entry(e, group));
            }
        }
    }
}

/// One token's tables of chunks `cols` with `tile`'s builder (16 readable bytes of `x` at each
/// chunk's 12c; chunk `c` at `out[(c − cols.start) · stride..]`).
fn build_chunks(
    tile: TripleTile,
    x: &[i8],
    cols: Range<usize>,
    out: &mut [MaybeUninit<u8>],
    stride: usize,
) {
    match tile {
        #[cfg(target_arch = "x86_64")]
        TripleTile::Avx512Vbmi => {
            // SAFETY: the tile's path implies AVX-512 F+BW; the bounds are the builder's
            // contract, which it asserts.
            unsafe { avx512::build(x, cols, out, stride) }
        }
        #[cfg(target_arch = "aarch64")]
        TripleTile::Neon => {
            // SAFETY: the NEON tile is chosen only where the NEON path is supported; the bounds
            // are the builder's contract, which it asserts.
            unsafe { neon::build(x, cols, out, stride) }
        }
        _ => build_scalar(x, cols, out, stride),
    }
}

/// The three-weight layout ([`TriplePacked`]) on `tile`, for [`super::lookup::multiply`].
pub(super) struct Triples(pub TripleTile);

impl LookupLayout for Triples {
    const KIND: ProductKind = ProductKind::Int4Triples;
    type Weights = TriplePacked;
    const CUT_ALIGN: usize = 1;

    fn token_tile(&self) -> usize {
        TOKEN_TILE
    }

    fn chunks(&self, w: &TriplePacked, _x: &QuantizedActivations) -> usize {
        w.chunks()
    }

    fn build_token(
        &self,
        x: &QuantizedActivations,
        token: usize,
        chunks: usize,
        cols: Range<usize>,
        out: &mut [MaybeUninit<u8>],
        stride: usize,
    ) {
        // Chunks whose 16-byte activation load stays within a token's padded row; the last one
        // or two read from a zero-padded copy of the row's tail instead.
        let direct = if x.stride >= X_PAD {
            ((x.stride - X_PAD) / TRIPLE_CHUNK_COLS + 1).min(chunks)
        } else {
            0
        };
        let row = &x.codes[token * x.stride..][..x.stride];
        let head = cols.start..cols.end.min(direct);
        if !head.is_empty() {
            build_chunks(self.0, row, head.clone(), out, stride);
        }
        let tail = cols.start.max(direct)..cols.end;
        if !tail.is_empty() {
            // At most 3 chunks past `direct`: 36 columns plus the load's overrun.
            let mut padded = [0i8; 4 * TRIPLE_CHUNK_COLS + X_PAD];
            let from = TRIPLE_CHUNK_COLS * tail.start;
            let n = x.stride.saturating_sub(from).min(padded.len());
            padded[..n].copy_from_slice(&row[from..from + n]);
            let out = &mut out[(tail.start - cols.start) * stride..];
            build_chunks(self.0, &padded, 0..tail.len(), out, stride);
        }
    }

    fn dots(
        &self,
        w: &TriplePacked,
        _x: &QuantizedActivations,
        tables: &TokenTables,
        rows: Range<usize>,
        tokens: Range<usize>,
    ) -> Vec<i32> {
        dots(self.0, w, tables, rows, tokens)
    }

    fn own_tables(&self, rows: usize, tokens: usize) -> bool {
        super::triple_own_tables(rows, tokens)
    }

    fn split_by_tokens(&self, rows: usize, tokens: usize) -> bool {
        super::triple_split_by_tokens(rows, tokens)
    }
}

/// `Σ_k Wq[r, k] · xq[t, k]` for `r` in `rows` (starting on a row block) and `t` in `tokens`
/// (starting on a token tile), `[t − tokens.start][r − rows.start]`.
pub(super) fn dots(
    tile: TripleTile,
    w: &TriplePacked,
    tables: &TokenTables,
    rows: Range<usize>,
    tokens: Range<usize>,
) -> Vec<i32> {
    assert!(
        rows.start.is_multiple_of(LUT_ROW_BLOCK)
            && rows.end <= w.rows()
            && tokens.start.is_multiple_of(TOKEN_TILE)
            && tokens.end <= tables.tokens()
            && tables.chunks() == w.chunks(),
        "triple dots: rows {rows:?} of {}, tokens {tokens:?} of {}",
        w.rows(),
        tables.tokens()
    );
    let n = rows.len();
    let mut out = vec![0i32; tokens.len() * n];
    let blocks = rows.start / LUT_ROW_BLOCK..rows.end.div_ceil(LUT_ROW_BLOCK);
    let mut sums = [[0i32; 2 * LUT_ROW_BLOCK]; TOKEN_TILE];
    for t0 in tokens.clone().step_by(TOKEN_TILE) {
        let nt = TOKEN_TILE.min(tokens.end - t0);
        let tile_tokens = TOKEN_TILE.min(tables.tokens() - t0);
        let tabs = tables.tile(t0 / TOKEN_TILE, tile_tokens, 0, tables.chunks());
        let mut rb = blocks.start;
        while rb < blocks.end {
            let pair = usize::from(rb + 1 < blocks.end) + 1;
            match tile {
                #[cfg(target_arch = "x86_64")]
                TripleTile::Avx512Vbmi => {
                    // SAFETY: the tile's path implies AVX-512 F+BW+VBMI+VNNI; `rb + pair` row
                    // blocks exist, `tabs` holds nt tokens' tables of every chunk.
                    unsafe { avx512::tile(w, rb, pair, tabs, nt, &mut sums) }
                }
                #[cfg(target_arch = "aarch64")]
                TripleTile::Neon => {
                    // SAFETY: the tile's path implies NEON; the tile asserts its operands.
                    unsafe { neon::tile(w, rb, pair, tabs, nt, &mut sums) }
                }
                _ => scalar_tile(w, rb, pair, tabs, nt, &mut sums),
            }
            for (j, s) in sums[..nt].iter().enumerate() {
                let r0 = rb * LUT_ROW_BLOCK;
                let r1 = ((rb + pair) * LUT_ROW_BLOCK).min(rows.end);
                let row = &mut out[(t0 - tokens.start + j) * n..][..n];
                row[r0 - rows.start..r1 - rows.start].copy_from_slice(&s[..r1 - r0]);
            }
            rb += pair;
        }
    }
    out
}

/// The lookups one byte at a time: row block `rb` and the next `pair − 1`, `nt` tokens;
/// `sums[t][16b + i]` for row `i` of block `rb + b`.
fn scalar_tile(
    w: &TriplePacked,
    rb: usize,
    pair: usize,
    tabs: &[u8],
    nt: usize,
    sums: &mut [[i32; 2 * LUT_ROW_BLOCK]; TOKEN_TILE],
) {
    for b in 0..pair {
        let (chunks, signs) = (w.block_index_chunks(rb + b), w.block_signs(rb + b));
        let sign_sums = w.block_sign_sums(rb + b);
        for (t, sums_t) in sums[..nt].iter_mut().enumerate() {
            for i in 0..LUT_ROW_BLOCK {
                let mut sum = 0i32;
                for (c, &mask) in signs.iter().enumerate() {
                    let table = &tabs[(c * nt + t) * CHUNK_TABLE_BYTES..][..CHUNK_TABLE_BYTES];
                    for j in 0..4 {
                        let byte = chunks[c].0[(j % 2) * 16 + i];
                        let index = (byte >> (4 * (j / 2))) & 0xF;
                        let looked = table[TABLE_BYTES * j + index as usize] as i32;
                        let negated = mask >> (4 * i + j) & 1 == 1;
                        sum += if negated { -looked } else { looked };
                    }
                }
                sums_t[LUT_ROW_BLOCK * b + i] = sum - BIAS * sign_sums[i];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{
        triple_weights, TriplePacked, BIAS, CHUNK_TABLE_BYTES, LUT_ROW_BLOCK, TOKEN_TILE,
        TRIPLE_CHUNK_BYTES, TRIPLE_CHUNK_COLS, TRIPLE_ZERO,
    };
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;
    use std::ops::Range;

    /// How far ahead a one-token tile prefetches its index bytes (as the two-weight tile does).
    const PREFETCH_BYTES: usize = 4096;
    /// The same distance in chunks, for the sign masks.
    const PREFETCH_CHUNKS: usize = PREFETCH_BYTES / TRIPLE_CHUNK_BYTES;

    /// The tables of `build_scalar`, one chunk (4 groups, 64 bytes) per store: `vpshufb`
    /// broadcasts each group's three activations across its 128-bit lane, and masked byte adds
    /// and subtracts apply them to the entries whose weight is +1 or −1.
    ///
    /// # Safety
    /// AVX-512 F+BW (the bounds are asserted: 16 readable bytes of `x` at each chunk's 12c,
    /// `(cols.len() − 1) · stride + 64` bytes of `out`).
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn build(
        x: &[i8],
        cols: Range<usize>,
        out: &mut [MaybeUninit<u8>],
        stride: usize,
    ) {
        if cols.is_empty() {
            return;
        }
        assert!(
            x.len() >= TRIPLE_CHUNK_COLS * (cols.end - 1) + 16
                && out.len() >= (cols.len() - 1) * stride + CHUNK_TABLE_BYTES
        );
        // Bit e of a mask: entry e % 16 has weight `w` on activation `m` of its group.
        let mask = |m: usize, w: i8| -> __mmask64 {
            (0..64)
                .filter(|&e| {
                    e % 16 <= TRIPLE_ZERO as usize && triple_weights((e % 16) as u8)[m] == w
                })
                .fold(0, |acc, e| acc | 1 << e)
        };
        let masks: [[__mmask64; 2]; 3] = std::array::from_fn(|m| [mask(m, 1), mask(m, -1)]);
        let bias = _mm512_set1_epi8(BIAS as i8);
        // Lane j takes activation 3j + m of the chunk's 12.
        let controls: [__m512i; 3] = std::array::from_fn(|m| {
            let bytes: [i8; 64] = std::array::from_fn(|i| (3 * (i / 16) + m) as i8);
            // SAFETY: a 64-byte array.
            unsafe { _mm512_loadu_si512(bytes.as_ptr() as *const _) }
        });
        for (n, c) in cols.enumerate() {
            // SAFETY: 16 bytes at 12c are readable (asserted).
            let xv = _mm512_broadcast_i32x4(unsafe {
                _mm_loadu_si128(x.as_ptr().add(TRIPLE_CHUNK_COLS * c) as *const __m128i)
            });
            let mut v = bias;
            for (control, [plus, minus]) in controls.iter().zip(masks) {
                let a = _mm512_shuffle_epi8(xv, *control);
                v = _mm512_mask_add_epi8(v, plus, v, a);
                v = _mm512_mask_sub_epi8(v, minus, v, a);
            }
            // SAFETY: chunk n's 64 bytes at n · stride are within `out` (asserted).
            unsafe { _mm512_storeu_si512(out.as_mut_ptr().add(n * stride).cast(), v) };
        }
    }

    /// Row blocks `rb..rb + pair` (`pair` 1 or 2) × `nt` tokens (1..=8).
    ///
    /// # Safety
    /// AVX-512 F+BW+VBMI+VNNI; row blocks `rb..rb + pair` exist in `w`; `tabs.len() == 64 · nt ·
    /// w.chunks()`.
    pub(super) unsafe fn tile(
        w: &TriplePacked,
        rb: usize,
        pair: usize,
        tabs: &[u8],
        nt: usize,
        sums: &mut [[i32; 2 * LUT_ROW_BLOCK]; TOKEN_TILE],
    ) {
        assert!(rb + pair <= w.row_blocks() && (1..=TOKEN_TILE).contains(&nt));
        assert_eq!(tabs.len(), CHUNK_TABLE_BYTES * nt * w.chunks());
        // SAFETY: forwarded contract.
        unsafe {
            match (pair, nt) {
                (1, 1) => tile_n::<1, 1>(w, rb, tabs, sums),
                (1, 2) => tile_n::<2, 1>(w, rb, tabs, sums),
                (1, 3) => tile_n::<3, 1>(w, rb, tabs, sums),
                (1, 4) => tile_n::<4, 1>(w, rb, tabs, sums),
                (1, 5) => tile_n::<5, 1>(w, rb, tabs, sums),
                (1, 6) => tile_n::<6, 1>(w, rb, tabs, sums),
                (1, 7) => tile_n::<7, 1>(w, rb, tabs, sums),
                (1, _) => tile_n::<8, 1>(w, rb, tabs, sums),
                (_, 1) => tile_n::<1, 2>(w, rb, tabs, sums),
                (_, 2) => tile_n::<2, 2>(w, rb, tabs, sums),
                (_, 3) => tile_n::<3, 2>(w, rb, tabs, sums),
                (_, 4) => tile_n::<4, 2>(w, rb, tabs, sums),
                (_, 5) => tile_n::<5, 2>(w, rb, tabs, sums),
                (_, 6) => tile_n::<6, 2>(w, rb, tabs, sums),
                (_, 7) => tile_n::<7, 2>(w, rb, tabs, sums),
                (_, _) => tile_n::<8, 2>(w, rb, tabs, sums),
            }
        }
    }

    /// A chunk's 32 index bytes become 64 `vpermb` indices, row r's four groups in dword r
    /// (`[lo(w[r]), lo(w[16 + r]), hi(w[r]), hi(w[16 + r])]`, each ORed with `16 · j` to pick
    /// group j's table out of the chunk's 64 bytes), as in the two-weight tile; the sign mask
    /// becomes ±1 bytes for `vpdpbusd`.
    ///
    /// # Safety
    /// As [`tile`], with `pair == RB` and `nt == NT`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
    unsafe fn tile_n<const NT: usize, const RB: usize>(
        w: &TriplePacked,
        rb: usize,
        tabs: &[u8],
        sums: &mut [[i32; 2 * LUT_ROW_BLOCK]; TOKEN_TILE],
    ) {
        let chunks = w.chunks();
        let gather: [u8; 64] = std::array::from_fn(|i| ((i / 4) + 16 * (i % 2)) as u8);
        // SAFETY: a 64-byte array.
        let gather = unsafe { _mm512_loadu_si512(gather.as_ptr() as *const _) };
        // Words 2r + 1 (bytes j = 2, 3) shift right by 4: their bytes then hold the high nibbles.
        let shifts = _mm512_set1_epi32(4 << 16);
        let selector = _mm512_set1_epi32(0x3020_1000);
        let nibble = _mm512_set1_epi8(0x0F);
        let (plus, minus) = (_mm512_set1_epi8(1), _mm512_set1_epi8(-1));
        let indices: [&[u8]; RB] = std::array::from_fn(|b| w.block_indices(rb + b));
        let signs: [&[u64]; RB] = std::array::from_fn(|b| w.block_signs(rb + b));
        let mut acc = [[_mm512_setzero_si512(); RB]; NT];
        let tp = tabs.as_ptr();
        for c in 0..chunks {
            if NT == 1 && c % 2 == 0 {
                // A GEMV streams its weights from memory once: ask for the index bytes a few
                // KiB ahead, and for the signs as far ahead in chunks (hints, never
                // dereferenced).
                for b in 0..RB {
                    let ahead = indices[b]
                        .as_ptr()
                        .wrapping_add(TRIPLE_CHUNK_BYTES * c + PREFETCH_BYTES);
                    _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                    if c % 8 == 0 {
                        let ahead = signs[b].as_ptr().wrapping_add(c + PREFETCH_CHUNKS);
                        _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                    }
                }
            }
            let idx: [__m512i; RB] = std::array::from_fn(|b| {
                let bytes = &indices[b][c * TRIPLE_CHUNK_BYTES..][..TRIPLE_CHUNK_BYTES];
                // SAFETY: 32 readable bytes.
                let v = unsafe {
                    _mm512_castsi256_si512(_mm256_loadu_si256(bytes.as_ptr() as *const __m256i))
                };
                let v = _mm512_srlv_epi16(_mm512_permutexvar_epi8(gather, v), shifts);
                // (v & 0x0F) | selector.
                _mm512_ternarylogic_epi32::<0xEA>(v, nibble, selector)
            });
            let sign: [__m512i; RB] =
                std::array::from_fn(|b| _mm512_mask_blend_epi8(signs[b][c], plus, minus));
            for (t, acc_t) in acc.iter_mut().enumerate() {
                // SAFETY: token t's 64 table bytes of chunk c at 64 (c · NT + t) < tabs.len()
                // (contract: tabs holds NT tokens' tables of every chunk).
                let table = unsafe {
                    _mm512_loadu_si512(tp.add(CHUNK_TABLE_BYTES * (c * NT + t)) as *const _)
                };
                for ((a, &ix), &s) in acc_t.iter_mut().zip(&idx).zip(&sign) {
                    let looked = _mm512_permutexvar_epi8(ix, table);
                    *a = _mm512_dpbusd_epi32(*a, looked, s);
                }
            }
        }
        for b in 0..RB {
            let sign_sums = w.block_sign_sums(rb + b);
            // SAFETY: 16 i32.
            let s = unsafe { _mm512_loadu_si512(sign_sums.as_ptr() as *const _) };
            let bias = _mm512_mullo_epi32(s, _mm512_set1_epi32(BIAS));
            for (t, acc_t) in acc.iter().enumerate() {
                let out = &mut sums[t][LUT_ROW_BLOCK * b..][..LUT_ROW_BLOCK];
                // SAFETY: 16 writable i32.
                unsafe {
                    _mm512_storeu_si512(
                        out.as_mut_ptr() as *mut _,
                        _mm512_sub_epi32(acc_t[b], bias),
                    )
                };
            }
        }
    }
}

/// AArch64 NEON: `tbl` looks up one group of 16 rows per instruction; a negated lookup is taken
/// as its bitwise complement (`−v − 1`), and the ones that adds back are a per-row count.
#[cfg(target_arch = "aarch64")]
mod neon {
    use super::{
        triple_weights, TriplePacked, BIAS, CHUNK_TABLE_BYTES, LUT_ROW_BLOCK, TABLE_BYTES,
        TOKEN_TILE, TRIPLE_CHUNK_BYTES, TRIPLE_CHUNK_COLS, TRIPLE_ZERO,
    };
    use std::arch::aarch64::*;
    use std::mem::MaybeUninit;
    use std::ops::Range;

    /// The tables of `build_scalar`: entry `e` of a group with activations `x_0..x_2` is
    /// `BIAS + Σ_m w_m(e) · x_m`, one byte multiply-add per activation over all 16 entries
    /// (each term within ±8 and the sum within 0..=48, so byte arithmetic is exact).
    ///
    /// # Safety
    /// NEON (the bounds are asserted: `12 · cols.end` bytes of `x`, `(cols.len() − 1) · stride
    /// + 64` bytes of `out`).
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn build(
        x: &[i8],
        cols: Range<usize>,
        out: &mut [MaybeUninit<u8>],
        stride: usize,
    ) {
        if cols.is_empty() {
            return;
        }
        assert!(
            x.len() >= TRIPLE_CHUNK_COLS * cols.end
                && out.len() >= (cols.len() - 1) * stride + CHUNK_TABLE_BYTES
        );
        // Lane e of `weights[m]`: entry e's weight on activation m (entries past the zero
        // index are unused and hold the bias alone, as in the scalar builder).
        let weights: [int8x16_t; 3] = std::array::from_fn(|m| {
            let w: [i8; 16] = std::array::from_fn(|e| {
                if e <= TRIPLE_ZERO as usize {
                    triple_weights(e as u8)[m]
                } else {
                    0
                }
            });
            // SAFETY: 16 readable bytes.
            unsafe { vld1q_s8(w.as_ptr()) }
        });
        let bias = vdupq_n_s8(BIAS as i8);
        for (n, c) in cols.enumerate() {
            for j in 0..4 {
                let group = &x[TRIPLE_CHUNK_COLS * c + 3 * j..][..3];
                let mut v = bias;
                for (w, &xm) in weights.iter().zip(group) {
                    v = vmlaq_s8(v, *w, vdupq_n_s8(xm));
                }
                // SAFETY: group j's 16 bytes of chunk n lie within `out` (asserted).
                unsafe { vst1q_s8(out.as_mut_ptr().add(n * stride + TABLE_BYTES * j).cast(), v) };
            }
        }
    }

    /// Chunks summed in i16 lanes before widening: each adds at most 4 · 49 in magnitude.
    const I16_WINDOW_CHUNKS: usize = 128;

    /// Row blocks `rb..rb + pair` (`pair` 1 or 2) × `nt` tokens (1..=8).
    ///
    /// # Safety
    /// NEON.
    pub(super) unsafe fn tile(
        w: &TriplePacked,
        rb: usize,
        pair: usize,
        tabs: &[u8],
        nt: usize,
        sums: &mut [[i32; 2 * LUT_ROW_BLOCK]; TOKEN_TILE],
    ) {
        assert!(rb + pair <= w.row_blocks() && (1..=TOKEN_TILE).contains(&nt));
        assert_eq!(tabs.len(), CHUNK_TABLE_BYTES * nt * w.chunks());
        for b in 0..pair {
            // SAFETY: NEON (contract); operands asserted above.
            unsafe {
                dispatch_tokens!(nt, block_n, (w, rb + b, b, tabs, sums), 1, 2, 3, 4, 5, 6, 7; 8)
            }
        }
    }

    /// Row block `rb` into `sums[t][16b..16b + 16]`.
    ///
    /// # Safety
    /// NEON; `rb` exists in `w`; `tabs.len() == 64 · NT · w.chunks()`.
    #[target_feature(enable = "neon")]
    unsafe fn block_n<const NT: usize>(
        w: &TriplePacked,
        rb: usize,
        b: usize,
        tabs: &[u8],
        sums: &mut [[i32; 2 * LUT_ROW_BLOCK]; TOKEN_TILE],
    ) {
        let chunks = w.chunks();
        let indices = w.block_indices(rb);
        let signs = w.block_signs(rb);
        debug_assert_eq!(indices.len(), chunks * TRIPLE_CHUNK_BYTES);
        debug_assert_eq!(tabs.len(), chunks * NT * CHUNK_TABLE_BYTES);
        let nibble = vdupq_n_u8(0x0F);
        // Lane i of group j's mask: bit 4i + j of the chunk's signs, i.e. bit 4 (i % 2) + j of
        // its byte i / 2.
        let group_bits: [uint8x16_t; 4] = std::array::from_fn(|j| {
            let pattern: [u8; 16] = std::array::from_fn(|i| 1u8 << (4 * (i % 2) + j));
            // SAFETY: 16 readable bytes.
            unsafe { vld1q_u8(pattern.as_ptr()) }
        });
        let ip = indices.as_ptr();
        let tp = tabs.as_ptr();
        let mut acc32 = [[vdupq_n_s32(0); 4]; NT];
        let mut c0 = 0;
        while c0 < chunks {
            let c1 = (c0 + I16_WINDOW_CHUNKS).min(chunks);
            let mut lo16 = [vdupq_n_s16(0); NT];
            let mut hi16 = [vdupq_n_s16(0); NT];
            for (c, &mask) in signs.iter().enumerate().take(c1).skip(c0) {
                // SAFETY: c < chunks: 32 index bytes at 32c.
                let (v0, v1) = unsafe { (vld1q_u8(ip.add(32 * c)), vld1q_u8(ip.add(32 * c + 16))) };
                // Group j of row i: byte 16 (j % 2) + i, nibble j / 2.
                let idx = [
                    vandq_u8(v0, nibble),
                    vandq_u8(v1, nibble),
                    vshrq_n_u8::<4>(v0),
                    vshrq_n_u8::<4>(v1),
                ];
                let m = vcreate_u8(mask);
                let pairs = vzip1q_u8(vcombine_u8(m, m), vcombine_u8(m, m));
                let neg: [uint8x16_t; 4] = std::array::from_fn(|j| vtstq_u8(pairs, group_bits[j]));
                for t in 0..NT {
                    // SAFETY: token t's 64 table bytes of chunk c at 64 (c · NT + t) in `tabs`.
                    let tab = unsafe { tp.add(CHUNK_TABLE_BYTES * (c * NT + t)) };
                    let signed: [int8x16_t; 4] = std::array::from_fn(|j| {
                        // SAFETY: 16 bytes of group j's table within the chunk's 64.
                        let looked =
                            vqtbl1q_u8(unsafe { vld1q_u8(tab.add(TABLE_BYTES * j)) }, idx[j]);
                        vreinterpretq_s8_u8(veorq_u8(looked, neg[j]))
                    });
                    let s01 = vaddq_s8(signed[0], signed[1]);
                    let s23 = vaddq_s8(signed[2], signed[3]);
                    lo16[t] = vaddq_s16(lo16[t], vaddl_s8(vget_low_s8(s01), vget_low_s8(s23)));
                    hi16[t] = vaddq_s16(hi16[t], vaddl_high_s8(s01, s23));
                }
            }
            for t in 0..NT {
                let a = &mut acc32[t];
                a[0] = vaddw_s16(a[0], vget_low_s16(lo16[t]));
                a[1] = vaddw_high_s16(a[1], lo16[t]);
                a[2] = vaddw_s16(a[2], vget_low_s16(hi16[t]));
                a[3] = vaddw_high_s16(a[3], hi16[t]);
            }
            c0 = c1;
        }
        // A row's negated groups: its groups less its signs' sum, halved.
        let sign_sums = w.block_sign_sums(rb);
        let groups = 4 * chunks as i32;
        for t in 0..NT {
            for (q, v) in acc32[t].iter().enumerate() {
                let mut lanes = [0i32; 4];
                // SAFETY: 16 writable bytes.
                unsafe { vst1q_s32(lanes.as_mut_ptr(), *v) };
                for (k, lane) in lanes.into_iter().enumerate() {
                    let i = 4 * q + k;
                    let negated = (groups - sign_sums[i]) / 2;
                    sums[t][LUT_ROW_BLOCK * b + i] = lane + negated - BIAS * sign_sums[i];
                }
            }
        }
    }
}
