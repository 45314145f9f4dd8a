//! The INT4 lookup-table kernels' shared design. A layout ([`super::lut`]: two weights per
//! lookup; [`super::triple`]: three) supplies its table builder, its tile and its thresholds
//! ([`LookupLayout`]); everything else is here, once:
//!
//! * **tables**: every token's 64 table bytes per chunk, grouped in token tiles
//!   `[tile][chunk][token < nt][64]`, in one [`TableStore`] that is never zeroed (the builders
//!   write every byte a tile reads), built in pieces (token tile × chunk range) over the
//!   threads ([`TokenTables`]);
//! * **work split** ([`multiply`]): for a GEMV or a few tokens against few rows every share
//!   builds its own tables; otherwise the tables are built once and then the rows of all
//!   matrices, or the token tiles when the tables outweigh the weights, are split across the
//!   threads. A split pinned for the product (`Split`, from `hbit tune`) overrides these
//!   rules.

use super::split::{self, ProductKind, Split};
use super::{split_many, split_many_with, PackedTernary, SharedOutput};
use super::{LUT_GEMM_SHARES_PER_THREAD, LUT_SHARES_PER_THREAD, LUT_TOKEN_SHARES_PER_THREAD};
use crate::pack::TernaryRows;
use crate::pack::LUT_ROW_BLOCK;
use crate::quant::QuantizedActivations;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::Mutex;

/// Bytes of one chunk's tables (its four 16-byte lookup tables) for one token, in both layouts.
pub(super) const CHUNK_TABLE_BYTES: usize = 64;

/// The byte unwritten table storage holds in debug builds.
#[cfg_attr(not(any(debug_assertions, test)), allow(dead_code))]
pub(super) const POISON: u8 = 0xA5;

/// What distinguishes one lookup layout from the other.
pub(super) trait LookupLayout: Sync {
    /// Packed weights of this layout.
    type Weights: PackedTernary;
    /// The kernel family, for the splits pinned per product ([`split`]).
    const KIND: ProductKind;
    /// Chunks a piece of the table build starts on a multiple of (a builder's step).
    const CUT_ALIGN: usize;

    /// Tokens per token tile.
    fn token_tile(&self) -> usize;
    /// Chunks of tables per token for weights `w` (each of the same width) and input `x`.
    fn chunks(&self, w: &Self::Weights, x: &QuantizedActivations) -> usize;
    /// Builds token `token`'s tables of chunks `cols` (out of `chunks`): chunk `c`'s 64 bytes at
    /// `out[(c − cols.start) · stride..]`.
    fn build_token(
        &self,
        x: &QuantizedActivations,
        token: usize,
        chunks: usize,
        cols: Range<usize>,
        out: &mut [MaybeUninit<u8>],
        stride: usize,
    );
    /// The i32 sums `[tokens.len(), rows.len()]` of `w` for `rows` (starting on a row block)
    /// and `tokens` (starting on a token tile).
    fn dots(
        &self,
        w: &Self::Weights,
        x: &QuantizedActivations,
        tables: &TokenTables,
        rows: Range<usize>,
        tokens: Range<usize>,
    ) -> Vec<i32>;
    /// Whether every share builds its own tables (one fork-join) instead of sharing one build.
    fn own_tables(&self, rows: usize, tokens: usize) -> bool;
    /// Whether the token tiles, not the rows, are split across the threads.
    fn split_by_tokens(&self, rows: usize, tokens: usize) -> bool;
}

/// The layout's built-in split for `rows` rows (of all matrices) and `tokens` tokens.
fn builtin_split<L: LookupLayout>(layout: &L, rows: usize, tokens: usize) -> Split {
    if layout.own_tables(rows, tokens) {
        Split::RowsOwnTables {
            shares: LUT_SHARES_PER_THREAD,
        }
    } else if layout.split_by_tokens(rows, tokens) {
        Split::Tokens {
            shares: LUT_TOKEN_SHARES_PER_THREAD,
        }
    } else {
        Split::Rows {
            shares: LUT_GEMM_SHARES_PER_THREAD,
        }
    }
}

/// `ys[m] = alpha_m · s_x · (W_m · x)` for every matrix of one layout sharing the input `x`
/// (operands checked by the caller), split over the threads as the module describes, or as
/// `split` says (`None`: the split pinned for it, else the built-in rule).
pub(super) fn multiply<L: LookupLayout>(
    layout: &L,
    ws: &[&L::Weights],
    x: &QuantizedActivations,
    ys: &mut [&mut [f32]],
    split: Option<Split>,
) {
    let Some(first) = ws.first() else {
        return;
    };
    if x.tokens == 0 {
        return;
    }
    // Same input width, so the same chunks: one set of tables serves every matrix.
    let chunks = layout.chunks(first, x);
    let rows: Vec<usize> = ws.iter().map(|w| w.rows()).collect();
    let total_rows = rows.iter().sum();
    let outs = SharedOutput::each(ys, &rows);
    let split = split::resolve(split, L::KIND, total_rows, first.cols(), x.tokens, || {
        builtin_split(layout, total_rows, x.tokens)
    });
    let shares = split.shares();
    if let Split::RowsOwnTables { .. } = split {
        // Every share builds the (few) tables on its own core, rather than read the caller's
        // from the other core's cache.
        split_many_with(
            &rows,
            LUT_ROW_BLOCK,
            shares,
            || TokenTables::build(layout, x, chunks, false),
            |tables, m, r| {
                let dots = layout.dots(ws[m], x, tables, r.clone(), 0..x.tokens);
                // SAFETY: `split_many_with` hands each piece a disjoint row range of matrix m.
                unsafe { outs[m].write(r, 0..x.tokens, &dots, ws[m].alpha(), x) };
            },
        );
        return;
    }
    let tables = TokenTables::build(layout, x, chunks, true);
    let token_tile = layout.token_tile();
    if let Split::Tokens { .. } = split {
        let tiles = x.tokens.div_ceil(token_tile);
        let parts = rayon::current_num_threads()
            .saturating_mul(shares)
            .min(tiles);
        crate::parallel::run_parts(parts, &|part| {
            let tile_start = |i: usize| (tiles * i / parts * token_tile).min(x.tokens);
            let tokens = tile_start(part)..tile_start(part + 1);
            for (m, w) in ws.iter().enumerate() {
                let dots = layout.dots(w, x, &tables, 0..rows[m], tokens.clone());
                // SAFETY: parts take disjoint token ranges, so disjoint elements of every
                // output.
                unsafe { outs[m].write(0..rows[m], tokens.clone(), &dots, w.alpha(), x) };
            }
        });
    } else {
        split_many(&rows, LUT_ROW_BLOCK, shares, |m, r| {
            let dots = layout.dots(ws[m], x, &tables, r.clone(), 0..x.tokens);
            // SAFETY: `split_many` hands each part a disjoint row range of matrix m.
            unsafe { outs[m].write(r, 0..x.tokens, &dots, ws[m].alpha(), x) };
        });
    }
}

/// Table storage: `len` bytes from a 64-byte aligned start (table rows then never straddle two
/// cache lines: a 32-byte load across a line boundary costs two), left uninitialized because the
/// builders write every byte a tile reads. Zeroing it first, megabytes per batched call, took a
/// tenth of a batch-128 INT4 call; a per-thread spare buffer that avoided the zeroing held the
/// largest product's tables for the life of the process (≈ 3 MB per thread after a 128-token
/// ≈125M prefill, 4% of that model's resident memory).
pub(super) struct TableStore {
    store: Vec<MaybeUninit<u8>>,
    offset: usize,
    len: usize,
}

impl TableStore {
    pub(super) fn new(len: usize) -> Self {
        let mut store = Vec::with_capacity(len + 63);
        // Debug builds poison the bytes, so a kernel reading a byte no builder wrote gives a
        // wrong, reproducible product that the bit-exact tests catch.
        #[cfg(debug_assertions)]
        store.resize(len + 63, MaybeUninit::new(POISON));
        #[cfg(not(debug_assertions))]
        store.resize_with(len + 63, MaybeUninit::uninit);
        let offset = store.as_ptr().align_offset(64).min(63);
        TableStore { store, offset, len }
    }

    pub(super) fn uninit_mut(&mut self) -> &mut [MaybeUninit<u8>] {
        &mut self.store[self.offset..self.offset + self.len]
    }

    /// Bytes `range` of the store.
    ///
    /// # Safety
    /// Every byte in `range` has been written.
    unsafe fn written(&self, range: Range<usize>) -> &[u8] {
        let bytes = &self.store[self.offset..self.offset + self.len][range];
        // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, and the caller guarantees that these
        // bytes are initialized.
        unsafe { &*(bytes as *const [MaybeUninit<u8>] as *const [u8]) }
    }
}

/// Every token's lookup tables, built once per product (or once per share) and read by the
/// tiles. Token tile `i` (tokens `i·tt..i·tt + nt`) owns a block of `tt · chunks · 64` bytes,
/// in which the tables interleave by chunk, `[chunk][token < nt][64 bytes]`: a tile reads one
/// contiguous run per chunk (per-token buffers would sit a multiple of 4 KiB apart for many
/// widths and compete for the same L1 sets). The last tile's block holds only its tokens:
/// sized for whole tiles, a one-token GEMV's tables were 8× too large (reports/kernels.md §
/// Decisions: triple tables).
pub(super) struct TokenTables {
    bytes: TableStore,
    /// Chunks per token.
    chunks: usize,
    /// Tokens whose tables were built.
    tokens: usize,
    /// Tokens per token tile.
    tile_tokens: usize,
}

impl TokenTables {
    /// Builds the tables of every token of `x` with `layout`'s builder, in pieces spread over
    /// the threads when `parallel` (else on the calling thread, inside a parallel part).
    pub(super) fn build<L: LookupLayout>(
        layout: &L,
        x: &QuantizedActivations,
        chunks: usize,
        parallel: bool,
    ) -> TokenTables {
        // The pieces' cuts cover every chunk only when the builder's step divides them.
        assert!(
            chunks.is_multiple_of(L::CUT_ALIGN),
            "{chunks} chunks: not a multiple of the builder's step {}",
            L::CUT_ALIGN
        );
        let tile_tokens = layout.token_tile();
        let tile_bytes = tile_tokens * chunks * CHUNK_TABLE_BYTES;
        let mut bytes = TableStore::new(x.tokens * chunks * CHUNK_TABLE_BYTES);
        let tiles = x.tokens.div_ceil(tile_tokens);
        // Pieces: every tile's block cut into chunk ranges (multiples of the builder's step),
        // enough of them to keep every thread busy when the tiles are few (one 8-token tile of
        // 4096 columns is 256 KiB of two-weight tables).
        let units = chunks / L::CUT_ALIGN;
        let cuts = if parallel {
            (2 * rayon::current_num_threads())
                .div_ceil(tiles)
                .clamp(1, units)
        } else {
            1
        };
        let mut pieces = Vec::with_capacity(tiles * cuts);
        for (tile, block) in bytes.uninit_mut().chunks_mut(tile_bytes).enumerate() {
            let nt = tile_tokens.min(x.tokens - tile * tile_tokens);
            let mut rest = &mut block[..chunks * nt * CHUNK_TABLE_BYTES];
            let mut c0 = 0;
            for cut in 0..cuts {
                let c1 = L::CUT_ALIGN * (units * (cut + 1) / cuts);
                let (piece, tail) = rest.split_at_mut((c1 - c0) * nt * CHUNK_TABLE_BYTES);
                pieces.push(Mutex::new((tile, c0..c1, piece)));
                (rest, c0) = (tail, c1);
            }
        }
        let build_piece = |p: usize| {
            // Each piece is locked by its one part only: never contended.
            let mut guard = pieces[p].lock().unwrap_or_else(|e| e.into_inner());
            let (tile, ref cols, ref mut out) = *guard;
            let t0 = tile * tile_tokens;
            let nt = tile_tokens.min(x.tokens - t0);
            for j in 0..nt {
                let out = &mut out[j * CHUNK_TABLE_BYTES..];
                layout.build_token(x, t0 + j, chunks, cols.clone(), out, nt * CHUNK_TABLE_BYTES);
            }
        };
        if parallel && pieces.len() > 1 {
            crate::parallel::run_parts(pieces.len(), &build_piece);
        } else {
            (0..pieces.len()).for_each(build_piece);
        }
        drop(pieces);
        TokenTables {
            bytes,
            chunks,
            tokens: x.tokens,
            tile_tokens,
        }
    }

    pub(super) fn chunks(&self) -> usize {
        self.chunks
    }

    pub(super) fn tokens(&self) -> usize {
        self.tokens
    }

    /// Tables of token tile `tile` (`nt` tokens) for chunks `c0..c0 + n`,
    /// `[chunk][token < nt][64]`.
    pub(super) fn tile(&self, tile: usize, nt: usize, c0: usize, n: usize) -> &[u8] {
        assert!(
            nt <= self.tile_tokens
                && tile * self.tile_tokens + nt <= self.tokens
                && c0 + n <= self.chunks,
            "tables of token tile {tile} ({nt} tokens), chunks {c0}..{}",
            c0 + n
        );
        let block = tile * self.tile_tokens * self.chunks * CHUNK_TABLE_BYTES;
        let stride = nt * CHUNK_TABLE_BYTES;
        // SAFETY: `build` wrote the first `t · chunks · 64` bytes of every token tile's block
        // (`[chunk][token < t][64]`, `t` the tile's token count): its pieces cover chunks
        // 0..chunks of every tile, and a piece writes 64 bytes per chunk for each of the tile's
        // tokens. The assert above gives `nt ≤ t` and `c0 + n ≤ chunks`, so this range, which
        // ends at `(c0 + n) · nt · 64`, lies within that prefix.
        unsafe {
            self.bytes
                .written(block + c0 * stride..block + (c0 + n) * stride)
        }
    }

    /// Every token tile's tables, one after another (tests compare builders).
    #[cfg(test)]
    pub(super) fn bytes(&self) -> Vec<u8> {
        (0..self.tokens.div_ceil(self.tile_tokens))
            .flat_map(|ti| {
                let nt = self.tile_tokens.min(self.tokens - ti * self.tile_tokens);
                self.tile(ti, nt, 0, self.chunks).to_vec()
            })
            .collect()
    }
}
