//! Lookup-table kernels: [`LutPacked`] ternary weights × INT4 activations (in the manner of T-MAC
//! and bitnet.cpp's TL kernels).
//!
//! For each token and k-group `g = (2g, 2g+1)` a 16-entry table holds every partial sum
//! `wa·x[2g] + wb·x[2g+1]` over the ternary pairs, indexed by the 4-bit weight index
//! `code(wa) | code(wb) << 2`. With INT4 codes each entry lies in [-16, 16], so it fits in one
//! byte (biased by +16 to [0, 32]) and one `vpshufb` looks up 32 row × k-group partial sums at
//! once: 64 multiply-accumulates per instruction, twice a `vpmaddubsw`. INT8 codes would need
//! 16-bit entries and two lookups.
//!
//! Accumulation: byte sums of at most 6 lookups (≤ 192) are widened to 16 bits — on AVX2 by
//! adding each byte pair as one 16-bit number and the odd byte alone (three operations per byte
//! sum; the even bytes are recovered exactly at the end), on AVX-512 by unpacking with zero into
//! u16 lanes that hold at most 64 per chunk (hence column blocks of ≤ 2048 columns). The bias
//! (16 per lookup, 4 lookups per row and chunk) is subtracted at the end.
//!
//! Where the CPU has AVX-512 VBMI and VNNI, a third tile replaces the byte sums: `vpermb` looks
//! up 64 entries at once out of a chunk's whole 64 table bytes (its 4 k-groups), so one lookup
//! serves four k-groups of 16 rows, arranged so that each row's four lookups share a dword, and
//! `vpdpbusd` against ones adds them into that row's i32 lane. Per token and chunk (128
//! multiply-accumulates) that is one `vpermb` and one `vpdpbusd`, on different ports.
//!
//! Tiling: up to 4 tokens (8 on the `vpermb` tile) share each unpacked weight chunk; with several
//! tokens the tiles take two row blocks at once, so each table load serves both. Each tile call
//! covers whole rows (AVX-512 F+BW: up to 2048 columns), so the weights stream without a break.

#[cfg(test)]
use super::lookup::POISON;
use super::lookup::{LookupLayout, TokenTables, CHUNK_TABLE_BYTES};
use super::split::ProductKind;
use crate::cpu::KernelPath;
use crate::pack::{LutChunk, LutPacked, K_ALIGN, LUT_CHUNK_BYTES, LUT_CHUNK_COLS, LUT_ROW_BLOCK};
use crate::quant::QuantizedActivations;
use std::mem::MaybeUninit;
use std::ops::Range;

/// Tokens per tile call of the `vpshufb` tiles (AVX2, AVX-512 F+BW) and the scalar one.
const SHUFFLE_TOKEN_TILE: usize = 4;
/// Tokens per tile call of the `vpermb` tile.
const VPERMB_TOKEN_TILE: usize = 8;
/// Bias added to every table entry so the entries are unsigned bytes.
const TABLE_BIAS: i32 = 16;
/// Bytes of one k-group table.
const TABLE_BYTES: usize = 16;
/// Longest column block of the AVX-512 tile, for its u16 accumulators (64 per chunk, ≤ 256
/// chunks, ≤ 32768 once the 128-bit lanes are added); the AVX2 tile flushes its own 16-bit sums
/// and the scalar one sums in i32.
const MAX_COL_BLOCK: usize = 2048;

/// Ternary weight of one half of a 4-bit index (code 3 is never written and contributes 0).
const fn weight_of_code(code: usize) -> i32 {
    if code < 3 {
        code as i32 - 1
    } else {
        0
    }
}

/// Table entry `idx` of the k-group with activations `(xa, xb)`, biased.
#[inline]
fn table_entry(idx: usize, xa: i8, xb: i8) -> u8 {
    (weight_of_code(idx & 3) * xa as i32 + weight_of_code(idx >> 2) * xb as i32 + TABLE_BIAS) as u8
}

// A chunk's tables are its 4 k-groups' tables.
const _: () = assert!(CHUNK_TABLE_BYTES == 4 * TABLE_BYTES);

/// One token's tables from `tile`'s builder at `chunk_stride`, over a buffer first filled with
/// [`POISON`], so tests can compare builders byte for byte, the gaps between chunks included.
#[cfg(test)]
pub(super) fn token_tables(tile: LutTile, x: &[i8], chunk_stride: usize) -> Vec<u8> {
    let chunks = x.len() / LUT_CHUNK_COLS;
    let len = (chunks - 1) * chunk_stride + CHUNK_TABLE_BYTES;
    let mut tables = vec![MaybeUninit::new(POISON); len];
    build_tables(tile, x, &mut tables, chunk_stride);
    tables
        .iter()
        // SAFETY: every byte was initialized by the fill above (and perhaps rewritten).
        .map(|b| unsafe { b.assume_init() })
        .collect()
}

/// Reference table builder for one token: the 64 table bytes of chunk `c` (k-groups 4c..4c+4,
/// 16 bytes each) start at `tables[c * chunk_stride]`, so a token tile's tables interleave by chunk.
fn build_tables_scalar(x: &[i8], tables: &mut [MaybeUninit<u8>], chunk_stride: usize) {
    for c in 0..x.len() / LUT_CHUNK_COLS {
        let chunk_tables = &mut tables[c * chunk_stride..][..CHUNK_TABLE_BYTES];
        for (j, table) in chunk_tables.chunks_exact_mut(TABLE_BYTES).enumerate() {
            let g = 4 * c + j;
            for (idx, e) in table.iter_mut().enumerate() {
                e.write(table_entry(idx, x[2 * g], x[2 * g + 1]));
            }
        }
    }
}

/// The lookup tile a kernel path runs, and with it the token tile and the column blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LutTile {
    Scalar,
    /// `vpshufb` on 256-bit registers, 16-bit sums widened as they go.
    Avx2,
    /// `vpshufb` on 512-bit registers with u16 sums (AVX-512 F+BW only).
    Avx512Bw,
    /// `vpermb` over a chunk's 64 table bytes, summed by `vpdpbusd` (AVX-512 VBMI and VNNI).
    Avx512Vbmi,
    /// `tbl` on 128-bit registers (AArch64 NEON), u16 sums widened to u32 every window.
    Neon,
}

impl LutTile {
    /// The tile of `path`: the AVX-512 path takes the `vpermb` tile where the CPU has VBMI and
    /// VNNI.
    pub(super) fn for_path(path: KernelPath) -> LutTile {
        match path {
            KernelPath::Scalar => LutTile::Scalar,
            KernelPath::Avx2 => LutTile::Avx2,
            KernelPath::Avx512 if cpu_has_vbmi_vnni() => LutTile::Avx512Vbmi,
            KernelPath::Avx512 => LutTile::Avx512Bw,
            KernelPath::Neon => LutTile::Neon,
        }
    }

    /// Every tile this CPU runs, whatever path the environment forces (for tests).
    #[cfg(test)]
    pub(super) fn supported() -> Vec<LutTile> {
        let mut tiles = vec![LutTile::Scalar];
        if KernelPath::Avx2.is_supported() {
            tiles.push(LutTile::Avx2);
        }
        if KernelPath::Avx512.is_supported() {
            tiles.push(LutTile::Avx512Bw);
            if cpu_has_vbmi_vnni() {
                tiles.push(LutTile::Avx512Vbmi);
            }
        }
        if KernelPath::Neon.is_supported() {
            tiles.push(LutTile::Neon);
        }
        tiles
    }

    /// Tokens sharing each unpacked weight chunk. The `vpermb` tile spends one `vpermb` and two
    /// other operations to turn a chunk into lookup indices, then one `vpermb` and one
    /// `vpdpbusd` per token: 8 tokens spread that preparation over twice the lookups of 4.
    pub(super) fn token_tile(self) -> usize {
        match self {
            LutTile::Avx512Vbmi => VPERMB_TOKEN_TILE,
            _ => SHUFFLE_TOKEN_TILE,
        }
    }
}

/// Whether this CPU has AVX-512 VBMI and VNNI (the `vpermb` tiles).
pub(super) fn cpu_has_vbmi_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vbmi")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The two-weight layout ([`LutPacked`]) on `tile`, for [`super::lookup::multiply`].
pub(super) struct Pairs(pub LutTile);

impl LookupLayout for Pairs {
    const KIND: ProductKind = ProductKind::Int4Pairs;
    type Weights = LutPacked;
    // The builders step two chunks at a time.
    const CUT_ALIGN: usize = 2;

    fn token_tile(&self) -> usize {
        self.0.token_tile()
    }

    fn chunks(&self, _w: &LutPacked, x: &QuantizedActivations) -> usize {
        x.stride / LUT_CHUNK_COLS
    }

    fn build_token(
        &self,
        x: &QuantizedActivations,
        token: usize,
        _chunks: usize,
        cols: Range<usize>,
        out: &mut [MaybeUninit<u8>],
        stride: usize,
    ) {
        let k = cols.start * LUT_CHUNK_COLS..cols.end * LUT_CHUNK_COLS;
        build_tables(self.0, &x.codes[token * x.stride..][k], out, stride);
    }

    fn dots(
        &self,
        w: &LutPacked,
        x: &QuantizedActivations,
        tables: &TokenTables,
        rows: Range<usize>,
        tokens: Range<usize>,
    ) -> Vec<i32> {
        dots(self.0, w, x, tables, rows, tokens)
    }

    fn own_tables(&self, rows: usize, tokens: usize) -> bool {
        super::lut_own_tables(rows, tokens)
    }

    fn split_by_tokens(&self, rows: usize, tokens: usize) -> bool {
        super::lut_split_by_tokens(rows, tokens, self.0.token_tile())
    }
}

/// Columns per tile call over rows of `stride` columns, a multiple of K_ALIGN: whole rows, so
/// each row block's weights stream from memory without a break, for one token and for several.
/// A token tile's tables (8 bytes per column and token) then come from L2 rather than L1; the
/// weights, which a large matrix streams from L3 or memory once per token tile, are what count.
/// Whole rows beat 1024- and 2048-column blocks in alternating runs (reports/kernels.md §
/// Decisions: col_block).
fn col_block(tile: LutTile, stride: usize) -> usize {
    // Only the AVX-512 F+BW tile's u16 accumulators bound the block; the others widen as they
    // go or sum in i32.
    let cap = if tile == LutTile::Avx512Bw {
        MAX_COL_BLOCK
    } else {
        usize::MAX
    };
    stride.clamp(K_ALIGN, cap)
}

/// i32 sums `[tokens.len(), rows.len()]` for `rows` (a range starting on a row-block boundary)
/// and `tokens` (a range starting on a token-tile boundary), with the tables of `x` built by
/// [`TokenTables::build`] for [`Pairs`] on the same tile.
pub(super) fn dots(
    tile: LutTile,
    w: &LutPacked,
    x: &QuantizedActivations,
    tables: &TokenTables,
    rows: Range<usize>,
    tokens: Range<usize>,
) -> Vec<i32> {
    debug_assert_eq!(rows.start % LUT_ROW_BLOCK, 0);
    let token_tile = tile.token_tile();
    debug_assert_eq!(tokens.start % token_tile, 0);
    debug_assert!(tokens.end <= x.tokens);
    debug_assert_eq!(tables.chunks(), x.stride / LUT_CHUNK_COLS);
    let len = rows.len();
    let blocks = rows.start / LUT_ROW_BLOCK..rows.end.div_ceil(LUT_ROW_BLOCK);
    // Sums for whole row blocks (padding rows included), trimmed below.
    let padded_len = blocks.len() * LUT_ROW_BLOCK;
    let mut sums = vec![0i32; tokens.len() * padded_len];
    let col_block = col_block(tile, x.stride);
    let col_starts: Vec<usize> = (0..x.stride).step_by(col_block).collect();
    for t0 in tokens.clone().step_by(token_tile) {
        let nt = token_tile.min(tokens.end - t0);
        // Row blocks per tile call: pairs for several tokens, so each table load serves two
        // row blocks; one for one token, whose weights stream from memory in order.
        let run = if nt == 1 { 1 } else { 2 };
        let runs: Vec<Range<usize>> = (blocks.start..blocks.end)
            .step_by(run)
            .map(|rb| rb..(rb + run).min(blocks.end))
            .collect();
        // Row blocks outside, so the weights stream from memory sequentially (a token tile's
        // tables, 8 bytes per column and token, are read from L2).
        let steps: Vec<(usize, Range<usize>)> = runs
            .iter()
            .flat_map(|rbs| col_starts.iter().map(move |&k0| (k0, rbs.clone())))
            .collect();
        for (k0, rbs) in steps {
            let bi = rbs.start - blocks.start;
            let chunks = col_block.min(x.stride - k0) / LUT_CHUNK_COLS;
            let c0 = k0 / LUT_CHUNK_COLS;
            let cols_of =
                |rb: usize| &w.block(rb)[c0 * LUT_CHUNK_BYTES..(c0 + chunks) * LUT_CHUNK_BYTES];
            let tabs = tables.tile(t0 / token_tile, nt, c0, chunks);
            let out = TileOut {
                sums: &mut sums,
                first: (t0 - tokens.start) * padded_len + bi * LUT_ROW_BLOCK,
                stride: padded_len,
                blocks: rbs.len(),
                bias: TABLE_BIAS * 4 * chunks as i32,
            };
            let second = (rbs.len() == 2).then(|| cols_of(rbs.start + 1));
            block_tile(
                tile,
                [cols_of(rbs.start), second.unwrap_or(&[])],
                tabs,
                nt,
                out,
            );
        }
    }
    if padded_len == len {
        return sums;
    }
    let mut out = vec![0i32; tokens.len() * len];
    for t in 0..tokens.len() {
        out[t * len..(t + 1) * len].copy_from_slice(&sums[t * padded_len..t * padded_len + len]);
    }
    out
}

/// One token's tables, chunk `c` at `tables[c * chunk_stride..][..64]`.
fn build_tables(tile: LutTile, x: &[i8], tables: &mut [MaybeUninit<u8>], chunk_stride: usize) {
    let chunks = x.len() / LUT_CHUNK_COLS;
    assert!(
        chunk_stride >= CHUNK_TABLE_BYTES
            && chunks.is_multiple_of(2)
            && tables.len() >= (chunks - 1) * chunk_stride + CHUNK_TABLE_BYTES,
        "table buffer too small for {chunks} chunks at stride {chunk_stride}"
    );
    match tile {
        #[cfg(target_arch = "x86_64")]
        LutTile::Avx2 | LutTile::Avx512Bw | LutTile::Avx512Vbmi => {
            // SAFETY: the caller checked that the CPU runs the tile's path, which implies AVX2;
            // `x.len()` is a multiple of 16 (whole chunk pairs, asserted above), and the assert
            // above bounds every chunk's 64 table bytes within `tables`.
            unsafe { avx2::build_tables(x, tables, chunk_stride) }
        }
        #[cfg(target_arch = "aarch64")]
        LutTile::Neon => {
            // SAFETY: the NEON tile is chosen only where the NEON path is supported; the assert
            // above bounds every chunk's 64 table bytes within `tables`.
            unsafe { neon::build_tables(x, tables, chunk_stride) }
        }
        _ => build_tables_scalar(x, tables, chunk_stride),
    }
}

/// Where a tile adds its sums: token t's rows at `sums[first + t · stride..]`, 16 per row
/// block (`blocks` consecutive row blocks), each less `bias` (the tables' bias times the
/// lookups per row).
struct TileOut<'a> {
    sums: &'a mut [i32],
    first: usize,
    stride: usize,
    blocks: usize,
    bias: i32,
}

impl TileOut<'_> {
    /// Token t's destination sums, 16 per row block.
    fn rows(&mut self, t: usize) -> &mut [i32] {
        &mut self.sums[self.first + t * self.stride..][..LUT_ROW_BLOCK * self.blocks]
    }

    /// Adds biased per-row sums of row block `b` for token t.
    fn add(&mut self, b: usize, t: usize, biased: &[i32; LUT_ROW_BLOCK]) {
        let bias = self.bias;
        let rows = &mut self.rows(t)[b * LUT_ROW_BLOCK..][..LUT_ROW_BLOCK];
        for (d, &v) in rows.iter_mut().zip(biased) {
            *d += v - bias;
        }
    }
}

/// Adds the sums of `out.blocks` (1 or 2) consecutive row blocks, whose bytes over the tile's
/// chunks are `wbs[0]` and `wbs[1]` (empty for one block), for the first `nt` tokens to `out`.
/// `tabs` holds the same chunks' tables, `[chunk][token < nt][64 bytes]`.
fn block_tile(tile: LutTile, wbs: [&[u8]; 2], tabs: &[u8], nt: usize, mut out: TileOut) {
    let chunks = wbs[0].len() / LUT_CHUNK_BYTES;
    let blocks = out.blocks;
    assert!(
        (1..=tile.token_tile()).contains(&nt)
            && tabs.len() == chunks * nt * CHUNK_TABLE_BYTES
            && (1..=2).contains(&blocks)
            && wbs[1].len() == if blocks == 2 { wbs[0].len() } else { 0 },
        "tile operands: {chunks} chunks, {nt} tokens, {blocks} row blocks, {} table bytes",
        tabs.len()
    );
    // Bounds-check every destination once, so the SIMD tile can write without checks.
    for t in 0..nt {
        out.rows(t);
    }
    match tile {
        #[cfg(target_arch = "x86_64")]
        LutTile::Avx2 => {
            // SAFETY: the caller checked AVX2; the assert above gives 64 table bytes per chunk
            // and token for every chunk of the row blocks, equal lengths for a pair, and
            // `out.rows` covers every row block of every token, as `avx2::block_tile` requires.
            unsafe { avx2::block_tile(wbs, tabs, nt, &mut out) }
        }
        #[cfg(target_arch = "x86_64")]
        LutTile::Avx512Vbmi => {
            // SAFETY: the tile is chosen only where the CPU has AVX-512 VBMI and VNNI beside the
            // caller's AVX-512 check; operands as for the AVX2 tile, with up to 8 tokens.
            unsafe { avx512_vbmi::block_tile(wbs, tabs, nt, &mut out) }
        }
        #[cfg(target_arch = "x86_64")]
        LutTile::Avx512Bw => {
            for (b, wb) in wbs.iter().take(blocks).enumerate() {
                let mut acc = [[0i32; LUT_ROW_BLOCK]; SHUFFLE_TOKEN_TILE];
                // SAFETY: the caller checked AVX-512 F+BW; slices as above, with an even chunk
                // count (column blocks are multiples of K_ALIGN = 32 chunks).
                unsafe { avx512::block_tile(wb, tabs, nt, &mut acc) };
                for (t, a) in acc.iter().enumerate().take(nt) {
                    out.add(b, t, a);
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        LutTile::Neon => {
            for (b, wb) in wbs.iter().take(blocks).enumerate() {
                let mut acc = [[0i32; LUT_ROW_BLOCK]; SHUFFLE_TOKEN_TILE];
                // SAFETY: the caller checked NEON; the assert above gives 64 table bytes per
                // chunk and token for every chunk of `wb`.
                unsafe { neon::block_tile(wb, tabs, nt, &mut acc) };
                for (t, a) in acc.iter().enumerate().take(nt) {
                    out.add(b, t, a);
                }
            }
        }
        _ => {
            for (b, wb) in wbs.iter().take(blocks).enumerate() {
                let mut acc = [[0i32; LUT_ROW_BLOCK]; SHUFFLE_TOKEN_TILE];
                block_tile_scalar(wb, tabs, nt, &mut acc);
                for (t, a) in acc.iter().enumerate().take(nt) {
                    out.add(b, t, a);
                }
            }
        }
    }
}

/// Scalar path: the same table lookups, one byte at a time.
fn block_tile_scalar(
    wb: &[u8],
    tabs: &[u8],
    nt: usize,
    acc: &mut [[i32; LUT_ROW_BLOCK]; SHUFFLE_TOKEN_TILE],
) {
    let chunks: &[LutChunk] = bytemuck::cast_slice(wb);
    for (c, chunk) in chunks.iter().enumerate() {
        for (i, &byte) in chunk.0.iter().enumerate() {
            let (row, half) = (i % LUT_ROW_BLOCK, i / LUT_ROW_BLOCK);
            // Low nibble: k-group 4c + half; high nibble: k-group 4c + 2 + half.
            let (g_lo, g_hi) = (half, 2 + half);
            let (lo, hi) = ((byte & 15) as usize, (byte >> 4) as usize);
            for (t, a) in acc.iter_mut().enumerate().take(nt) {
                let tab = &tabs[(c * nt + t) * CHUNK_TABLE_BYTES..][..CHUNK_TABLE_BYTES];
                a[row] += tab[g_lo * TABLE_BYTES + lo] as i32 + tab[g_hi * TABLE_BYTES + hi] as i32;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{
        weight_of_code, TileOut, CHUNK_TABLE_BYTES, LUT_CHUNK_BYTES, LUT_ROW_BLOCK, TABLE_BIAS,
    };
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// Chunks whose byte sums cannot overflow: 2 lookups of ≤ 32 per byte and chunk.
    const U8_WINDOW_CHUNKS: usize = 3;

    /// How far ahead of the current chunk a one-token tile prefetches its weights (a GEMV streams
    /// them from memory once, row block after row block): it pays where the weights start off a
    /// cache line and loads straddle two lines (reports/kernels.md § Decisions: lookup prefetch).
    /// Batched tiles reuse their weights from cache across token tiles and do not prefetch.
    const PREFETCH_BYTES: usize = 4096;

    /// Same tables as `build_tables_scalar`, two k-groups per 32-byte store:
    /// entry = sign(wa)·xa + sign(wb)·xb + 16 via `vpsignb` on broadcast activations.
    ///
    /// # Safety
    /// AVX2; `x.len()` is a multiple of 16; for every chunk `c < x.len() / 8`,
    /// `tables[c * chunk_stride..][..64]` is in bounds.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn build_tables(
        x: &[i8],
        tables: &mut [MaybeUninit<u8>],
        chunk_stride: usize,
    ) {
        let wa: [i8; 32] = std::array::from_fn(|i| weight_of_code((i % 16) & 3) as i8);
        let wb: [i8; 32] = std::array::from_fn(|i| weight_of_code((i % 16) >> 2) as i8);
        // SAFETY: 32-byte arrays.
        let (wa, wb) = unsafe {
            (
                _mm256_loadu_si256(wa.as_ptr() as *const __m256i),
                _mm256_loadu_si256(wb.as_ptr() as *const __m256i),
            )
        };
        let bias = _mm256_set1_epi8(TABLE_BIAS as i8);
        // Shuffle controls broadcasting x[4p] / x[4p+2] (first activation of k-groups 2p and
        // 2p+1) and x[4p+1] / x[4p+3] across the two 128-bit lanes.
        let sel = |p: i8, second: i8| {
            _mm256_setr_m128i(
                _mm_set1_epi8(4 * p + second),
                _mm_set1_epi8(4 * p + 2 + second),
            )
        };
        let ctl_a = [sel(0, 0), sel(1, 0), sel(2, 0), sel(3, 0)];
        let ctl_b = [sel(0, 1), sel(1, 1), sel(2, 1), sel(3, 1)];
        let out = tables.as_mut_ptr().cast::<u8>();
        for (i, xs) in x.chunks_exact(16).enumerate() {
            // SAFETY: 16 readable bytes.
            let xv = unsafe {
                _mm256_broadcastsi128_si256(_mm_loadu_si128(xs.as_ptr() as *const __m128i))
            };
            // 16 activations are 8 k-groups: chunks 2i (p = 0, 1) and 2i + 1 (p = 2, 3).
            for p in 0..4 {
                let xa = _mm256_shuffle_epi8(xv, ctl_a[p]);
                let xb = _mm256_shuffle_epi8(xv, ctl_b[p]);
                let t = _mm256_add_epi8(
                    _mm256_add_epi8(_mm256_sign_epi8(xa, wa), _mm256_sign_epi8(xb, wb)),
                    bias,
                );
                let offset = (2 * i + p / 2) * chunk_stride + 32 * (p % 2);
                // SAFETY: chunk 2i + p/2 < x.len() / 8, so its 64 bytes at
                // (2i + p/2) · chunk_stride are in bounds (contract).
                unsafe { _mm256_storeu_si256(out.add(offset) as *mut __m256i, t) };
            }
        }
    }

    /// One token over one row block (a GEMV's step) takes [`gemv_tile`]; everything else
    /// [`tile_n`].
    ///
    /// # Safety
    /// AVX2; `wbs[0].len() == 32 · chunks`, and as long for `wbs[1]` when `out.blocks == 2`;
    /// `tabs.len() == 64 · nt · chunks`, `1 <= nt <= 4`; `out.rows(t)` in bounds for `t < nt`.
    pub(super) unsafe fn block_tile(wbs: [&[u8]; 2], tabs: &[u8], nt: usize, out: &mut TileOut) {
        let chunks = wbs[0].len() / LUT_CHUNK_BYTES;
        let w = [wbs[0].as_ptr(), wbs[1].as_ptr()];
        // SAFETY: forwarded contract.
        unsafe {
            if out.blocks == 2 {
                dispatch_tokens!(nt, tile_n[2], (w, chunks, tabs, out), 1, 2, 3; 4)
            } else if nt == 1 {
                gemv_tile(w[0], chunks, tabs, out)
            } else {
                dispatch_tokens!(nt, tile_n[1], (w, chunks, tabs, out), 1, 2, 3; 4)
            }
        }
    }

    /// `RB` row blocks (weights `w[b]`, `b < RB`, 32 bytes per chunk) × `NT` tokens. Each table load
    /// serves every row block: the tables' loads, not the lookups, bound a one-row-block tile.
    ///
    /// Every 3 chunks each byte sum is widened by three operations (see the sums below), one
    /// fewer than before (reports/kernels.md § Decisions: tile_n).
    ///
    /// # Safety
    /// AVX2; `RB` is 1 or 2; each `w[b]`, `b < RB`, points at `32 · chunks` readable bytes;
    /// `tabs.len() == 64 · NT · chunks`; `out.rows(t)` holds `16 · RB` sums for every `t < NT`.
    #[target_feature(enable = "avx2")]
    unsafe fn tile_n<const NT: usize, const RB: usize>(
        w: [*const u8; 2],
        chunks: usize,
        tabs: &[u8],
        out: &mut TileOut,
    ) {
        debug_assert_eq!(tabs.len(), chunks * NT * CHUNK_TABLE_BYTES);
        debug_assert_eq!(out.blocks, RB);
        let nibble = _mm256_set1_epi8(0x0F);
        debug_assert_eq!(out.bias, TABLE_BIAS * 4 * chunks as i32);
        let zero = _mm256_setzero_si256();
        let tp = tabs.as_ptr();
        // i16 lane j of each 128-bit half (the low half holds k-groups 4c, 4c+2, the high half
        // 4c+1, 4c+3): `acc_all` adds the byte pair (rows 2j, 2j+1) as one 16-bit number,
        // 256 · odd + even, modulo 2^16; `acc_odd` adds the odd byte alone. Per window each
        // byte gains at most 192, so after at most 84 windows the even and odd sums are
        // ≤ 16128 and `acc_all − 256 · acc_odd` recovers the even sum exactly ([`store_rows`]).
        let mut c_seg = 0;
        while c_seg < chunks {
            let seg_end = (c_seg + 84 * U8_WINDOW_CHUNKS).min(chunks);
            let mut acc_all = [[zero; NT]; RB];
            let mut acc_odd = [[zero; NT]; RB];
            let mut c0 = c_seg;
            while c0 < seg_end {
                let c1 = (c0 + U8_WINDOW_CHUNKS).min(seg_end);
                let mut acc8 = [[zero; NT]; RB];
                for c in c0..c1 {
                    // Weight index nibbles of each row block: low (k-groups 4c, 4c+1) and high.
                    let idx: [(__m256i, __m256i); RB] = std::array::from_fn(|b| {
                        // SAFETY: c < chunks: 32 bytes at 32c behind `w[b]` (contract).
                        let v = unsafe {
                            _mm256_loadu_si256(w[b].add(LUT_CHUNK_BYTES * c) as *const __m256i)
                        };
                        (
                            _mm256_and_si256(v, nibble),
                            _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble),
                        )
                    });
                    for t in 0..NT {
                        // SAFETY: token t's 64 table bytes of chunk c at 64 (c · NT + t).
                        let (tlo, thi) = unsafe {
                            let base = tp.add(CHUNK_TABLE_BYTES * (c * NT + t));
                            (
                                _mm256_loadu_si256(base as *const __m256i),
                                _mm256_loadu_si256(base.add(32) as *const __m256i),
                            )
                        };
                        for (a8, &(lo, hi)) in acc8.iter_mut().zip(&idx) {
                            let s = _mm256_add_epi8(
                                _mm256_shuffle_epi8(tlo, lo),
                                _mm256_shuffle_epi8(thi, hi),
                            );
                            a8[t] = _mm256_add_epi8(a8[t], s);
                        }
                    }
                }
                for b in 0..RB {
                    for t in 0..NT {
                        acc_all[b][t] = _mm256_add_epi16(acc_all[b][t], acc8[b][t]);
                        acc_odd[b][t] =
                            _mm256_add_epi16(acc_odd[b][t], _mm256_srli_epi16::<8>(acc8[b][t]));
                    }
                }
                c0 = c1;
            }
            // 4 biased lookups per row and chunk of this segment (the tile's `out.bias` summed
            // over its segments).
            let bias = _mm256_set1_epi32(TABLE_BIAS * 4 * (seg_end - c_seg) as i32);
            for t in 0..NT {
                let rows = out.rows(t).as_mut_ptr();
                for b in 0..RB {
                    // SAFETY: `rows` points at 16 · RB i32 (contract), 16 per row block.
                    unsafe {
                        store_rows(
                            acc_all[b][t],
                            acc_odd[b][t],
                            bias,
                            rows.add(LUT_ROW_BLOCK * b),
                        )
                    };
                }
            }
            c_seg = seg_end;
        }
    }

    /// Chunks per byte-sum window of the one-token tile: the low- and high-nibble lookups sum
    /// apart, each ≤ 32 per chunk, so 6 chunks stay ≤ 192.
    const GEMV_WINDOW: usize = 6;

    /// One row block × one token (a GEMV). The same lookups as [`tile_n`], with two byte sums
    /// (low and high nibbles) instead of one, so each chunk adds one lookup to each sum and the
    /// two dependency chains run side by side, and with windows of a fixed 6 chunks that the
    /// compiler unrolls; faster than [`tile_n`] for one token (reports/kernels.md § Decisions:
    /// tile_1).
    ///
    /// # Safety
    /// AVX2; `w` points at `32 · chunks` readable bytes; `tabs.len() == 64 · chunks`;
    /// `out.rows(0)` holds 16 sums.
    #[target_feature(enable = "avx2")]
    unsafe fn gemv_tile(w: *const u8, chunks: usize, tabs: &[u8], out: &mut TileOut) {
        debug_assert_eq!(tabs.len(), chunks * CHUNK_TABLE_BYTES);
        debug_assert_eq!(out.blocks, 1);
        let nibble = _mm256_set1_epi8(0x0F);
        let zero = _mm256_setzero_si256();
        let tp = tabs.as_ptr();
        // One chunk's lookups into the two byte sums.
        let step = |c: usize, lo8: &mut __m256i, hi8: &mut __m256i| {
            // SAFETY: c < chunks: 32 weight bytes at 32c, 64 table bytes at 64c (contract).
            unsafe {
                let v = _mm256_loadu_si256(w.add(LUT_CHUNK_BYTES * c) as *const __m256i);
                let base = tp.add(CHUNK_TABLE_BYTES * c);
                let tlo = _mm256_loadu_si256(base as *const __m256i);
                let thi = _mm256_loadu_si256(base.add(32) as *const __m256i);
                let lo = _mm256_and_si256(v, nibble);
                let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
                *lo8 = _mm256_add_epi8(*lo8, _mm256_shuffle_epi8(tlo, lo));
                *hi8 = _mm256_add_epi8(*hi8, _mm256_shuffle_epi8(thi, hi));
            }
        };
        // Sums as in `tile_n`, fed by both byte sums: per window a lane's even (and odd) sum
        // gains at most 2 · 192 = 384, so after at most 42 windows it is ≤ 16128.
        const SEGMENT: usize = 42 * GEMV_WINDOW;
        let mut c_seg = 0;
        while c_seg < chunks {
            let seg_end = (c_seg + SEGMENT).min(chunks);
            let (mut acc_all, mut acc_odd) = (zero, zero);
            let mut c0 = c_seg;
            while c0 < seg_end {
                let (mut lo8, mut hi8) = (zero, zero);
                // The window's 192 weight bytes, a few KiB ahead (hints: never dereferenced).
                let ahead = w.wrapping_add(LUT_CHUNK_BYTES * c0 + PREFETCH_BYTES);
                for line in 0..GEMV_WINDOW * LUT_CHUNK_BYTES / 64 {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line) as *const i8);
                }
                if seg_end - c0 >= GEMV_WINDOW {
                    for c in c0..c0 + GEMV_WINDOW {
                        step(c, &mut lo8, &mut hi8);
                    }
                    c0 += GEMV_WINDOW;
                } else {
                    for c in c0..seg_end {
                        step(c, &mut lo8, &mut hi8);
                    }
                    c0 = seg_end;
                }
                acc_all = _mm256_add_epi16(acc_all, _mm256_add_epi16(lo8, hi8));
                acc_odd = _mm256_add_epi16(
                    acc_odd,
                    _mm256_add_epi16(_mm256_srli_epi16::<8>(lo8), _mm256_srli_epi16::<8>(hi8)),
                );
            }
            let bias = _mm256_set1_epi32(TABLE_BIAS * 4 * (seg_end - c_seg) as i32);
            // SAFETY: `out.rows(0)` holds 16 sums (contract).
            unsafe { store_rows(acc_all, acc_odd, bias, out.rows(0).as_mut_ptr()) };
            c_seg = seg_end;
        }
    }

    /// Adds to `rows[0..16]` the row sums held in i16 lanes as `all` (lane j: 256 · odd + even
    /// modulo 2^16, for rows 2j and 2j+1) and `odd`, each of the even and odd sums ≤ 16128, less
    /// `bias`.
    ///
    /// # Safety
    /// AVX2; `rows` points at 16 writable i32.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn store_rows(all: __m256i, odd: __m256i, bias: __m256i, rows: *mut i32) {
        // Exact: the even sum is the only value in [0, 2^16) congruent to all − 256 · odd.
        let even = widen_halves(_mm256_sub_epi16(all, _mm256_slli_epi16::<8>(odd)));
        let odd = widen_halves(odd);
        // [e0 o0 e1 o1 | e4 o4 e5 o5] and [e2 o2 e3 o3 | e6 o6 e7 o7] → rows 0..8, 8..16.
        let (lo, hi) = (
            _mm256_unpacklo_epi32(even, odd),
            _mm256_unpackhi_epi32(even, odd),
        );
        for (half, v) in [
            _mm256_permute2x128_si256::<0x20>(lo, hi),
            _mm256_permute2x128_si256::<0x31>(lo, hi),
        ]
        .into_iter()
        .enumerate()
        {
            // SAFETY: 16 i32 at `rows` (contract), 8 per half.
            unsafe {
                let p = rows.add(8 * half) as *mut __m256i;
                let total = _mm256_add_epi32(_mm256_loadu_si256(p), v);
                _mm256_storeu_si256(p, _mm256_sub_epi32(total, bias));
            }
        }
    }

    /// Adds the two 128-bit halves of 16 i16 lanes as 8 i32 sums.
    #[target_feature(enable = "avx2")]
    fn widen_halves(v: __m256i) -> __m256i {
        let lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(v));
        let hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(v, 1));
        _mm256_add_epi32(lo, hi)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{CHUNK_TABLE_BYTES, LUT_CHUNK_BYTES, LUT_ROW_BLOCK, SHUFFLE_TOKEN_TILE};
    use std::arch::x86_64::*;

    /// Each byte lane receives 2 lookups of ≤ 32 per step (from its own chunk of the pair), so
    /// 3 steps stay ≤ 192.
    const U8_WINDOW_PAIRS: usize = 3;

    /// Two chunks (64 bytes) per step. 128-bit lane l of the weights holds chunk c = 2q + l/2,
    /// half l%2; its tables are k-groups 4c + l%2 (low nibble) and 4c + 2 + l%2 (high nibble),
    /// gathered from the natural table order into one register each.
    ///
    /// # Safety
    /// AVX-512 F+BW; `wb.len() == 32 · chunks` with `chunks` even; `tabs.len() == 64 · nt ·
    /// chunks`, `1 <= nt <= 4`.
    pub(super) unsafe fn block_tile(
        wb: &[u8],
        tabs: &[u8],
        nt: usize,
        acc: &mut [[i32; LUT_ROW_BLOCK]; SHUFFLE_TOKEN_TILE],
    ) {
        // SAFETY: forwarded contract.
        unsafe { dispatch_tokens!(nt, tile_n, (wb, tabs, acc), 1, 2, 3; 4) }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn tile_n<const NT: usize>(
        wb: &[u8],
        tabs: &[u8],
        acc: &mut [[i32; LUT_ROW_BLOCK]; SHUFFLE_TOKEN_TILE],
    ) {
        let chunks = wb.len() / LUT_CHUNK_BYTES;
        debug_assert!(chunks.is_multiple_of(2));
        debug_assert_eq!(tabs.len(), chunks * NT * CHUNK_TABLE_BYTES);
        let nibble = _mm512_set1_epi8(0x0F);
        let zero = _mm512_setzero_si512();
        let w = wb.as_ptr();
        let tp = tabs.as_ptr();
        let mut acc_lo = [zero; NT];
        let mut acc_hi = [zero; NT];
        let pairs = chunks / 2;
        let mut q0 = 0;
        while q0 < pairs {
            let q1 = (q0 + U8_WINDOW_PAIRS).min(pairs);
            let mut acc8 = [zero; NT];
            for q in q0..q1 {
                // SAFETY: q < pairs: 64 bytes at 64q in `wb`; token t's 64 table bytes of
                // chunks 2q and 2q + 1 at 64 (2q · NT + t) and 64 ((2q + 1) · NT + t) in `tabs`.
                let v = unsafe { _mm512_loadu_si512(w.add(64 * q) as *const _) };
                let lo = _mm512_and_si512(v, nibble);
                let hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
                for (t, a8) in acc8.iter_mut().enumerate() {
                    // Per chunk: T(4c), T(4c+1) | T(4c+2), T(4c+3).
                    let (t_lo, t_hi) = unsafe {
                        let even = tp.add(CHUNK_TABLE_BYTES * (2 * q * NT + t));
                        let odd = even.add(CHUNK_TABLE_BYTES * NT);
                        (
                            _mm512_inserti64x4::<1>(
                                _mm512_castsi256_si512(_mm256_loadu_si256(even as *const __m256i)),
                                _mm256_loadu_si256(odd as *const __m256i),
                            ),
                            _mm512_inserti64x4::<1>(
                                _mm512_castsi256_si512(_mm256_loadu_si256(
                                    even.add(32) as *const __m256i
                                )),
                                _mm256_loadu_si256(odd.add(32) as *const __m256i),
                            ),
                        )
                    };
                    let s = _mm512_add_epi8(
                        _mm512_shuffle_epi8(t_lo, lo),
                        _mm512_shuffle_epi8(t_hi, hi),
                    );
                    *a8 = _mm512_add_epi8(*a8, s);
                }
            }
            for t in 0..NT {
                acc_lo[t] = _mm512_add_epi16(acc_lo[t], _mm512_unpacklo_epi8(acc8[t], zero));
                acc_hi[t] = _mm512_add_epi16(acc_hi[t], _mm512_unpackhi_epi8(acc8[t], zero));
            }
            q0 = q1;
        }
        for t in 0..NT {
            for (half, v) in [acc_lo[t], acc_hi[t]].into_iter().enumerate() {
                // Four 128-bit lanes hold the same 8 rows: add them, then widen.
                let a =
                    _mm256_add_epi16(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v));
                let rows8 =
                    _mm_add_epi16(_mm256_castsi256_si128(a), _mm256_extracti128_si256::<1>(a));
                let wide = _mm256_cvtepu16_epi32(rows8);
                let mut lanes = [0i32; 8];
                // SAFETY: 32 writable bytes.
                unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, wide) };
                for (a, l) in acc[t][8 * half..8 * half + 8].iter_mut().zip(lanes) {
                    *a += l;
                }
            }
        }
    }
}

/// AVX-512 with VBMI (`vpermb`) and VNNI (`vpdpbusd`): one 64-entry lookup per token and chunk.
#[cfg(target_arch = "x86_64")]
mod avx512_vbmi {
    use super::{TileOut, CHUNK_TABLE_BYTES, LUT_CHUNK_BYTES, LUT_ROW_BLOCK, TABLE_BIAS};
    use std::arch::x86_64::*;

    /// How far ahead a one-token tile prefetches its weights, which a GEMV streams from memory
    /// once (reports/kernels.md § Decisions: VBMI prefetch).
    const PREFETCH_BYTES: usize = 4096;

    /// # Safety
    /// AVX-512 F+BW+VBMI+VNNI; `wbs[0].len() == 32 · chunks`, and as long for `wbs[1]` when
    /// `out.blocks == 2`; `tabs.len() == 64 · nt · chunks`, `1 <= nt <= 4`; `out.rows(t)` in
    /// bounds for `t < nt`.
    pub(super) unsafe fn block_tile(wbs: [&[u8]; 2], tabs: &[u8], nt: usize, out: &mut TileOut) {
        let chunks = wbs[0].len() / LUT_CHUNK_BYTES;
        let w = [wbs[0].as_ptr(), wbs[1].as_ptr()];
        // SAFETY: forwarded contract.
        unsafe {
            match (out.blocks, nt) {
                (1, 1) => tile_n::<1, 1, 4>(w, chunks, tabs, out),
                (1, 2) => tile_n::<2, 1, 2>(w, chunks, tabs, out),
                (1, 3) => tile_n::<3, 1, 2>(w, chunks, tabs, out),
                (1, 4) => tile_n::<4, 1, 1>(w, chunks, tabs, out),
                (1, 5) => tile_n::<5, 1, 1>(w, chunks, tabs, out),
                (1, 6) => tile_n::<6, 1, 1>(w, chunks, tabs, out),
                (1, 7) => tile_n::<7, 1, 1>(w, chunks, tabs, out),
                (1, _) => tile_n::<8, 1, 1>(w, chunks, tabs, out),
                (_, 1) => tile_n::<1, 2, 2>(w, chunks, tabs, out),
                (_, 2) => tile_n::<2, 2, 1>(w, chunks, tabs, out),
                (_, 3) => tile_n::<3, 2, 1>(w, chunks, tabs, out),
                (_, 4) => tile_n::<4, 2, 1>(w, chunks, tabs, out),
                (_, 5) => tile_n::<5, 2, 1>(w, chunks, tabs, out),
                (_, 6) => tile_n::<6, 2, 1>(w, chunks, tabs, out),
                (_, 7) => tile_n::<7, 2, 1>(w, chunks, tabs, out),
                (_, _) => tile_n::<8, 2, 1>(w, chunks, tabs, out),
            }
        }
    }

    /// Chunk c's 32 weight bytes become 64 lookup indices, row r's four k-groups in dword r:
    /// `[lo(w[r]), lo(w[16 + r]), hi(w[r]), hi(w[16 + r])]`, each ORed with `16 · j` (j the byte
    /// within the dword) so that `vpermb` reads k-group 4c + j's 16 entries out of the chunk's
    /// 64 table bytes. `vpdpbusd` against ones then adds each row's four lookups into its i32
    /// lane: no byte sums to widen, no windows. `RB` row blocks share each table load; `U`
    /// accumulator sets take alternate chunks, so that few tokens and row blocks still keep
    /// enough `vpdpbusd` chains in flight to hide its latency.
    ///
    /// # Safety
    /// AVX-512 F+BW+VBMI+VNNI; `RB` is 1 or 2; each `w[b]`, `b < RB`, points at `32 · chunks`
    /// readable bytes; `tabs.len() == 64 · NT · chunks`; `out.rows(t)` holds `16 · RB` sums for
    /// every `t < NT`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
    unsafe fn tile_n<const NT: usize, const RB: usize, const U: usize>(
        w: [*const u8; 2],
        chunks: usize,
        tabs: &[u8],
        out: &mut TileOut,
    ) {
        debug_assert_eq!(tabs.len(), chunks * NT * CHUNK_TABLE_BYTES);
        debug_assert_eq!(out.blocks, RB);
        // Byte 4r + j of the gathered weights: w[r] for j even, w[16 + r] for j odd.
        let gather: [u8; 64] = std::array::from_fn(|i| ((i / 4) + 16 * (i % 2)) as u8);
        // SAFETY: 64-byte arrays.
        let gather = unsafe { _mm512_loadu_si512(gather.as_ptr() as *const _) };
        // Words 2r + 1 (bytes j = 2, 3) shift right by 4: their bytes then hold the high nibbles.
        let shifts = _mm512_set1_epi32(4 << 16);
        let selector = _mm512_set1_epi32(0x3020_1000);
        let nibble = _mm512_set1_epi8(0x0F);
        let ones = _mm512_set1_epi8(1);
        let zero = _mm512_setzero_si512();
        let tp = tabs.as_ptr();
        let mut accs = [[[zero; RB]; NT]; U];
        for c in 0..chunks {
            if NT == 1 && c % 2 == 0 {
                // The next line of weights, a few KiB ahead (a hint: never dereferenced).
                for wb in &w[..RB] {
                    let ahead = wb.wrapping_add(LUT_CHUNK_BYTES * c + PREFETCH_BYTES);
                    _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                }
            }
            let acc = &mut accs[c % U];
            let idx: [__m512i; RB] = std::array::from_fn(|b| {
                // SAFETY: c < chunks: 32 bytes at 32c behind `w[b]` (contract).
                let v = unsafe {
                    _mm512_castsi256_si512(_mm256_loadu_si256(
                        w[b].add(LUT_CHUNK_BYTES * c) as *const __m256i
                    ))
                };
                let v = _mm512_srlv_epi16(_mm512_permutexvar_epi8(gather, v), shifts);
                // (v & 0x0F) | selector.
                _mm512_ternarylogic_epi32::<0xEA>(v, nibble, selector)
            });
            for (t, acc_t) in acc.iter_mut().enumerate() {
                // SAFETY: token t's 64 table bytes of chunk c at 64 (c · NT + t).
                let table = unsafe {
                    _mm512_loadu_si512(tp.add(CHUNK_TABLE_BYTES * (c * NT + t)) as *const _)
                };
                for (a, &ix) in acc_t.iter_mut().zip(&idx) {
                    let looked = _mm512_permutexvar_epi8(ix, table);
                    *a = _mm512_dpbusd_epi32(*a, looked, ones);
                }
            }
        }
        let mut acc = accs[0];
        for more in &accs[1..] {
            for (acc_t, more_t) in acc.iter_mut().zip(more) {
                for (a, &m) in acc_t.iter_mut().zip(more_t) {
                    *a = _mm512_add_epi32(*a, m);
                }
            }
        }
        // 4 biased lookups per row and chunk.
        let bias = _mm512_set1_epi32(TABLE_BIAS * 4 * chunks as i32);
        for (t, acc_t) in acc.iter().enumerate() {
            let rows = out.rows(t).as_mut_ptr();
            for (b, &a) in acc_t.iter().enumerate() {
                // SAFETY: `rows` points at 16 · RB i32 (contract), 16 per row block.
                unsafe {
                    let p = rows.add(LUT_ROW_BLOCK * b) as *mut __m512i;
                    let total = _mm512_add_epi32(_mm512_loadu_si512(p as *const _), a);
                    _mm512_storeu_si512(p as *mut _, _mm512_sub_epi32(total, bias));
                }
            }
        }
    }
}

/// AArch64 NEON: `tbl` looks up 16 rows of one k-group per instruction, as `vpshufb` does.
#[cfg(target_arch = "aarch64")]
mod neon {
    use super::{
        weight_of_code, CHUNK_TABLE_BYTES, LUT_CHUNK_BYTES, LUT_CHUNK_COLS, LUT_ROW_BLOCK,
        SHUFFLE_TOKEN_TILE, TABLE_BIAS, TABLE_BYTES,
    };
    use std::arch::aarch64::*;
    use std::mem::MaybeUninit;

    /// The tables of `build_tables_scalar`: entry `idx` of k-group `(xa, xb)` is
    /// `TABLE_BIAS + w_a(idx) · xa + w_b(idx) · xb`, two byte multiply-adds over all 16 entries
    /// (within 0..=32, so byte arithmetic is exact).
    ///
    /// # Safety
    /// NEON; `tables` holds `(chunks − 1) · chunk_stride + 64` bytes for the `x.len() / 8`
    /// chunks (the caller asserts it).
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn build_tables(
        x: &[i8],
        tables: &mut [MaybeUninit<u8>],
        chunk_stride: usize,
    ) {
        let lanes = |of: fn(usize) -> usize| -> int8x16_t {
            let w: [i8; 16] = std::array::from_fn(|idx| weight_of_code(of(idx)) as i8);
            // SAFETY: 16 readable bytes.
            unsafe { vld1q_s8(w.as_ptr()) }
        };
        let (wa, wb) = (lanes(|idx| idx & 3), lanes(|idx| idx >> 2));
        let bias = vdupq_n_s8(TABLE_BIAS as i8);
        let chunks = x.len() / LUT_CHUNK_COLS;
        assert!(chunks == 0 || tables.len() >= (chunks - 1) * chunk_stride + CHUNK_TABLE_BYTES);
        for c in 0..chunks {
            for j in 0..4 {
                let g = 4 * c + j;
                let v = vmlaq_s8(
                    vmlaq_s8(bias, wa, vdupq_n_s8(x[2 * g])),
                    wb,
                    vdupq_n_s8(x[2 * g + 1]),
                );
                // SAFETY: k-group j's 16 bytes of chunk c lie within `tables` (asserted).
                unsafe {
                    vst1q_s8(
                        tables
                            .as_mut_ptr()
                            .add(c * chunk_stride + TABLE_BYTES * j)
                            .cast(),
                        v,
                    )
                };
            }
        }
    }

    /// Chunks summed in u16 lanes before widening: each chunk adds at most 4 · 32 = 128.
    const U16_WINDOW_CHUNKS: usize = 256;

    /// Row i of a chunk is byte i of its first half (k-groups 4c and 4c + 2 in the low and high
    /// nibble) and byte i of its second half (4c + 1 and 4c + 3).
    ///
    /// # Safety
    /// NEON; `wb.len() == 32 · chunks`; `tabs.len() == 64 · nt · chunks`, `1 <= nt <= 4`.
    pub(super) unsafe fn block_tile(
        wb: &[u8],
        tabs: &[u8],
        nt: usize,
        acc: &mut [[i32; LUT_ROW_BLOCK]; SHUFFLE_TOKEN_TILE],
    ) {
        // SAFETY: forwarded contract.
        unsafe { dispatch_tokens!(nt, tile_n, (wb, tabs, acc), 1, 2, 3; 4) }
    }

    #[target_feature(enable = "neon")]
    unsafe fn tile_n<const NT: usize>(
        wb: &[u8],
        tabs: &[u8],
        acc: &mut [[i32; LUT_ROW_BLOCK]; SHUFFLE_TOKEN_TILE],
    ) {
        let chunks = wb.len() / LUT_CHUNK_BYTES;
        debug_assert_eq!(tabs.len(), chunks * NT * CHUNK_TABLE_BYTES);
        let nibble = vdupq_n_u8(0x0F);
        let w = wb.as_ptr();
        let tp = tabs.as_ptr();
        // Per token, rows 0–3, 4–7, 8–11, 12–15.
        let mut acc32 = [[vdupq_n_u32(0); 4]; NT];
        let mut c0 = 0;
        while c0 < chunks {
            let c1 = (c0 + U16_WINDOW_CHUNKS).min(chunks);
            let mut lo16 = [vdupq_n_u16(0); NT];
            let mut hi16 = [vdupq_n_u16(0); NT];
            for c in c0..c1 {
                // SAFETY: c < chunks: 32 bytes at 32c in `wb`.
                let (v0, v1) = unsafe { (vld1q_u8(w.add(32 * c)), vld1q_u8(w.add(32 * c + 16))) };
                let idx = [
                    vandq_u8(v0, nibble),
                    vandq_u8(v1, nibble),
                    vshrq_n_u8::<4>(v0),
                    vshrq_n_u8::<4>(v1),
                ];
                for t in 0..NT {
                    // SAFETY: token t's 64 table bytes of chunk c at 64 (c · NT + t) in `tabs`.
                    let tab = unsafe { tp.add(CHUNK_TABLE_BYTES * (c * NT + t)) };
                    let looked: [uint8x16_t; 4] = std::array::from_fn(|g| {
                        // SAFETY: 16 bytes of k-group g's table within the chunk's 64.
                        vqtbl1q_u8(unsafe { vld1q_u8(tab.add(TABLE_BYTES * g)) }, idx[g])
                    });
                    let s = vaddq_u8(
                        vaddq_u8(looked[0], looked[1]),
                        vaddq_u8(looked[2], looked[3]),
                    );
                    lo16[t] = vaddw_u8(lo16[t], vget_low_u8(s));
                    hi16[t] = vaddw_high_u8(hi16[t], s);
                }
            }
            for t in 0..NT {
                let a = &mut acc32[t];
                a[0] = vaddw_u16(a[0], vget_low_u16(lo16[t]));
                a[1] = vaddw_high_u16(a[1], lo16[t]);
                a[2] = vaddw_u16(a[2], vget_low_u16(hi16[t]));
                a[3] = vaddw_high_u16(a[3], hi16[t]);
            }
            c0 = c1;
        }
        for t in 0..NT {
            for (q, v) in acc32[t].iter().enumerate() {
                let mut lanes = [0u32; 4];
                // SAFETY: 16 writable bytes.
                unsafe { vst1q_u32(lanes.as_mut_ptr(), *v) };
                for (a, l) in acc[t][4 * q..4 * q + 4].iter_mut().zip(lanes) {
                    *a += l as i32;
                }
            }
        }
    }
}
