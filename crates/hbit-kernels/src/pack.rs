//! Packed ternary weight layouts. The two main ones store each weight as a 2-bit code `w + 1` in
//! {0, 1, 2} (3 is never written), so both cost exactly **2 bits per weight**, plus one f32 scale
//! (`alpha`) per tensor and zero-weight padding of the input dimension to a multiple of
//! [`K_ALIGN`] (and, for [`LutPacked`], of the output dimension to a multiple of 16).
//! Per-tensor overhead in bits per weight: `(32 + padding bits) / (rows * cols)`.
//!
//! Two layouts, because the two activation widths are multiplied by different instructions:
//!
//! * [`RowPacked`] (for INT8 activations, multiply-add kernels): rows are contiguous; each row is
//!   a sequence of 64-byte blocks of 256 weights, and byte `j` of block `b` holds at bits
//!   `2s..2s+2` the code of column `k = 256 b + 64 s + j` (s = 0..4). Shifting a 32- or 64-byte
//!   vector right by `2s` and masking with 3 yields codes aligned with a contiguous slice of the
//!   activations, so `vpmaddubsw` / `vpdpbusd` consume them directly.
//!
//! * [`LutPacked`] (for INT4 activations, lookup-table kernels in the manner of T-MAC /
//!   bitnet.cpp TL): rows are grouped in blocks of 16; columns in pairs ("k-groups"
//!   `g = (2g, 2g+1)`). The 4-bit index of one row and k-group is `code(2g) | code(2g+1) << 2`.
//!   A row block is a sequence of 32-byte chunks, chunk `c` covering k-groups `4c..4c+4`:
//!   byte `i < 16` holds row `i`'s index for k-group `4c` (low nibble) and `4c+2` (high nibble);
//!   byte `16 + i` holds k-groups `4c+1` and `4c+3`. A `vpshufb` of a 16-entry table of
//!   k-group partial sums by the low (or high) nibbles then yields 16 rows × 2 k-groups at once.
//!
//! A third layout, [`TriplePacked`], is not a 2-bit one: three weights share one 4-bit folded
//! index and a sign bit (bitnet.cpp TL2's grouping), **1.67 bits per weight** plus one i32 per
//! row, so that each INT4 table lookup covers three weights instead of two. Its kernel
//! (`matmul_int4_triples`) runs the `vpermb` tile on AVX-512 VBMI + VNNI CPUs.

use std::fmt;
use std::ops::{Deref, Range};
use std::sync::Arc;

use crate::error::KernelError;
use crate::quant::TernaryWeights;

/// The bytes of a packed matrix: owned, or a range of a shared read-only buffer (a model file read
/// into memory or memory-mapped), so an inference model's weights are used in place, never
/// copied again.
#[derive(Clone)]
pub enum PackedBytes {
    Owned(Vec<u8>),
    Shared {
        buffer: Arc<dyn AsRef<[u8]> + Send + Sync>,
        range: Range<usize>,
    },
}

impl PackedBytes {
    /// A range of a shared buffer; errors if the range lies outside it.
    pub fn shared(
        buffer: Arc<dyn AsRef<[u8]> + Send + Sync>,
        range: Range<usize>,
    ) -> Result<Self, KernelError> {
        let len = buffer.as_ref().as_ref().len();
        if range.start > range.end || range.end > len {
            return Err(KernelError::LengthMismatch {
                what: "shared packed-weight range end (buffer length)",
                expected: len,
                found: range.end,
            });
        }
        Ok(PackedBytes::Shared { buffer, range })
    }
}

impl Deref for PackedBytes {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        match self {
            PackedBytes::Owned(v) => v,
            PackedBytes::Shared { buffer, range } => &buffer.as_ref().as_ref()[range.clone()],
        }
    }
}

impl From<Vec<u8>> for PackedBytes {
    fn from(v: Vec<u8>) -> Self {
        PackedBytes::Owned(v)
    }
}

impl fmt::Debug for PackedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            PackedBytes::Owned(_) => "owned",
            PackedBytes::Shared { .. } => "shared",
        };
        write!(f, "PackedBytes({kind}, {} bytes)", self.len())
    }
}

impl PartialEq for PackedBytes {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

/// Column padding of every packed layout and of [`crate::quant::QuantizedActivations`] rows.
pub const K_ALIGN: usize = 256;
/// Row-block height of [`LutPacked`].
pub const LUT_ROW_BLOCK: usize = 16;
/// Bytes of one [`LutPacked`] chunk (16 rows × 8 columns).
pub const LUT_CHUNK_BYTES: usize = 32;
/// Columns covered by one [`LutPacked`] chunk.
pub const LUT_CHUNK_COLS: usize = 8;

/// One [`LutPacked`] chunk of a row block: 16 rows × 8 columns of 2-bit codes. Row `i`'s
/// k-groups `4c`, `4c+1` (two weights each, one 4-bit table index) sit in the low nibbles of
/// bytes `i` and `16 + i`, k-groups `4c+2`, `4c+3` in the high nibbles.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LutChunk(pub [u8; LUT_CHUNK_BYTES]);

// 2 bits per weight, no padding, byte-aligned: a row block's bytes are its chunks end to end.
const _: () = assert!(std::mem::size_of::<LutChunk>() * 8 == LUT_ROW_BLOCK * LUT_CHUNK_COLS * 2);
const _: () = assert!(std::mem::align_of::<LutChunk>() == 1);

// SAFETY: a `#[repr(C)]` wrapper of a byte array (size and alignment checked above): every bit
// pattern is a valid value, there is no padding, and all-zero is valid.
unsafe impl bytemuck::Zeroable for LutChunk {}
// SAFETY: as above; `Copy` and `'static`.
unsafe impl bytemuck::Pod for LutChunk {}

/// 2-bit code of a weight, masked to its field (a value outside {-1, 0, 1}, which
/// [`TernaryWeights::from_codes`] rejects, cannot spill into a neighbour's bits).
#[inline]
fn field_of(w: i8) -> u8 {
    w.wrapping_add(1) as u8 & 3
}

/// The weight in the low two bits of `byte`.
#[inline]
fn weight_at(byte: u8) -> i8 {
    (byte & 3) as i8 - 1
}

/// Ternary weights read one row at a time: plain codes or any packed layout. The packers take
/// any of them, so one layout converts to another row by row (at load, into this CPU's fastest
/// layout) without unpacking the whole matrix first.
/// The `rows`, `cols` and `alpha` of a [`TernaryRows`] impl, read from the type's fields of
/// those names.
macro_rules! shape_from_fields {
    () => {
        fn rows(&self) -> usize {
            self.rows
        }
        fn cols(&self) -> usize {
            self.cols
        }
        fn alpha(&self) -> f32 {
            self.alpha
        }
    };
}

pub trait TernaryRows {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    /// The per-tensor scale alpha of eq. (1).
    fn alpha(&self) -> f32;
    /// Row `r`'s weights into `out[..cols]` (`out` at least `cols` long; the rest untouched).
    fn row_into(&self, r: usize, out: &mut [i8]);

    /// All rows, unpacked.
    fn to_weights(&self) -> TernaryWeights {
        let (rows, cols) = (self.rows(), self.cols());
        let mut codes = vec![0i8; rows * cols];
        for (r, out) in codes.chunks_exact_mut(cols.max(1)).enumerate() {
            self.row_into(r, out);
        }
        TernaryWeights {
            rows,
            cols,
            alpha: self.alpha(),
            codes,
        }
    }
}

impl TernaryRows for TernaryWeights {
    shape_from_fields!();
    fn row_into(&self, r: usize, out: &mut [i8]) {
        out[..self.cols].copy_from_slice(&self.codes[r * self.cols..][..self.cols]);
    }
}

/// Fills `out[..cols]` from `N`-column pieces `piece(p, dst)` (`dst` always `N` long), the last
/// one through a scratch copy where `cols` is not a multiple of `N`.
fn row_from_pieces<const N: usize>(
    cols: usize,
    out: &mut [i8],
    mut piece: impl FnMut(usize, &mut [i8]),
) {
    let mut pieces = out[..cols].chunks_exact_mut(N);
    let mut p = 0;
    for dst in &mut pieces {
        piece(p, dst);
        p += 1;
    }
    let rest = pieces.into_remainder();
    if !rest.is_empty() {
        let mut scratch = [0i8; N];
        piece(p, &mut scratch);
        let n = rest.len();
        rest.copy_from_slice(&scratch[..n]);
    }
}

/// Rejects bytes holding the invalid 2-bit code 3 (both bits set in some field).
fn check_codes(what: &'static str, data: &[u8]) -> Result<(), KernelError> {
    // A byte holds code 3 when some 2-bit field has both bits set.
    match crate::scan::first_where(data, |b: u8| b & (b >> 1) & 0x55 != 0) {
        Some(index) => Err(KernelError::InvalidCode {
            what,
            code: 3,
            index,
        }),
        None => Ok(()),
    }
}

/// Validation shared by the `from_parts` constructors: non-empty shape, exact byte length, no
/// invalid code, finite scale.
fn check_parts(
    what: &'static str,
    rows: usize,
    cols: usize,
    alpha: f32,
    data: &[u8],
    expected: usize,
) -> Result<(), KernelError> {
    if rows == 0 || cols == 0 {
        return Err(KernelError::InvalidSize {
            what,
            found: rows.min(cols),
            reason: "rows and columns must be non-zero",
        });
    }
    if data.len() != expected {
        return Err(KernelError::LengthMismatch {
            what,
            expected,
            found: data.len(),
        });
    }
    check_codes(what, data)?;
    if !alpha.is_finite() {
        return Err(KernelError::NonFinite {
            what: "ternary weight scale alpha",
            index: 0,
        });
    }
    Ok(())
}

fn padded_cols(cols: usize) -> usize {
    cols.div_ceil(K_ALIGN) * K_ALIGN
}

/// Row-contiguous 2-bit layout for the INT8 multiply-add kernels (see module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct RowPacked {
    rows: usize,
    cols: usize,
    /// Columns rounded up to a multiple of [`K_ALIGN`].
    padded_cols: usize,
    alpha: f32,
    /// `[rows, padded_cols / 4]` bytes; never holds code 3.
    data: PackedBytes,
}

impl RowPacked {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Columns rounded up to a multiple of [`K_ALIGN`].
    pub fn padded_cols(&self) -> usize {
        self.padded_cols
    }

    /// The per-tensor scale alpha of eq. (1).
    pub fn alpha(&self) -> f32 {
        self.alpha
    }

    /// The packed bytes (the layout of the module docs).
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Bytes of packed weights (the memory traffic of one pass over the matrix).
    pub fn weight_bytes(&self) -> usize {
        self.data.len()
    }

    /// Wraps bytes already in this layout (read from a file, or generated), after checking the
    /// length and that no 2-bit field holds the invalid code 3.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        alpha: f32,
        data: impl Into<PackedBytes>,
    ) -> Result<Self, KernelError> {
        let data = data.into();
        let padded_cols = padded_cols(cols);
        let expected = rows * padded_cols / 4;
        check_parts(
            "row-packed ternary weights",
            rows,
            cols,
            alpha,
            &data,
            expected,
        )?;
        Ok(Self {
            rows,
            cols,
            padded_cols,
            alpha,
            data,
        })
    }

    /// Packs `w` ([`Self::position`] places each weight; whole 256-column blocks at a time, since
    /// loading repacks large models).
    pub fn pack<W: TernaryRows + ?Sized>(w: &W) -> Self {
        let (rows, cols, alpha) = (w.rows(), w.cols(), w.alpha());
        let padded_cols = padded_cols(cols);
        let row_bytes = padded_cols / 4;
        let mut data = vec![0u8; rows * row_bytes];
        // Padding columns get code 1 (weight 0); activations are zero there too.
        let mut row = vec![0i8; padded_cols];
        for (r, out) in data.chunks_exact_mut(row_bytes.max(1)).enumerate() {
            w.row_into(r, &mut row[..cols]);
            for (block, out) in row.chunks_exact(K_ALIGN).zip(out.chunks_exact_mut(64)) {
                for (j, byte) in out.iter_mut().enumerate() {
                    *byte = field_of(block[j])
                        | field_of(block[64 + j]) << 2
                        | field_of(block[128 + j]) << 4
                        | field_of(block[192 + j]) << 6;
                }
            }
        }
        Self {
            rows,
            cols,
            padded_cols,
            alpha,
            data: data.into(),
        }
    }

    /// Byte index within a row and bit shift of column `k`.
    #[inline]
    pub fn position(k: usize) -> (usize, u32) {
        let (block, within) = (k / 256, k % 256);
        (block * 64 + within % 64, 2 * (within / 64) as u32)
    }

    pub fn row_bytes(&self) -> usize {
        self.padded_cols / 4
    }

    /// The packed bytes of one row.
    pub fn row(&self, r: usize) -> &[u8] {
        &self.data[r * self.row_bytes()..(r + 1) * self.row_bytes()]
    }

    pub fn unpack(&self) -> TernaryWeights {
        self.to_weights()
    }
}

impl TernaryRows for RowPacked {
    shape_from_fields!();
    fn row_into(&self, r: usize, out: &mut [i8]) {
        let bytes = self.row(r);
        row_from_pieces::<K_ALIGN>(self.cols, out, |b, block| {
            for (j, &byte) in bytes[64 * b..][..64].iter().enumerate() {
                block[j] = weight_at(byte);
                block[64 + j] = weight_at(byte >> 2);
                block[128 + j] = weight_at(byte >> 4);
                block[192 + j] = weight_at(byte >> 6);
            }
        });
    }
}

/// Row-block lookup-table layout for the INT4 kernels (see module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct LutPacked {
    rows: usize,
    cols: usize,
    padded_cols: usize,
    alpha: f32,
    /// `[row_blocks, padded_cols / 8, 32]` bytes; never holds code 3.
    data: PackedBytes,
}

impl LutPacked {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Columns rounded up to a multiple of [`K_ALIGN`].
    pub fn padded_cols(&self) -> usize {
        self.padded_cols
    }

    /// The per-tensor scale alpha of eq. (1).
    pub fn alpha(&self) -> f32 {
        self.alpha
    }

    /// The packed bytes (the layout of the module docs).
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Bytes of packed weights (the memory traffic of one pass over the matrix).
    pub fn weight_bytes(&self) -> usize {
        self.data.len()
    }

    /// Wraps bytes already in this layout (read from a file, or generated), after checking the
    /// length and that no 2-bit field holds the invalid code 3.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        alpha: f32,
        data: impl Into<PackedBytes>,
    ) -> Result<Self, KernelError> {
        let data = data.into();
        let padded_cols = padded_cols(cols);
        let expected =
            rows.div_ceil(LUT_ROW_BLOCK) * padded_cols / LUT_CHUNK_COLS * LUT_CHUNK_BYTES;
        check_parts(
            "LUT-packed ternary weights",
            rows,
            cols,
            alpha,
            &data,
            expected,
        )?;
        Ok(Self {
            rows,
            cols,
            padded_cols,
            alpha,
            data,
        })
    }

    /// Packs `w` ([`Self::position`] places each weight; a row's chunk at a time).
    pub fn pack<W: TernaryRows + ?Sized>(w: &W) -> Self {
        let (rows, cols, alpha) = (w.rows(), w.cols(), w.alpha());
        let padded_cols = padded_cols(cols);
        let row_blocks = rows.div_ceil(LUT_ROW_BLOCK);
        let block_bytes = padded_cols / LUT_CHUNK_COLS * LUT_CHUNK_BYTES;
        // Padding rows and columns: both codes 1 (weight 0) -> index 0b0101 in each nibble.
        let mut data = vec![0x55u8; row_blocks * block_bytes];
        let mut row = vec![0i8; padded_cols];
        for r in 0..rows {
            w.row_into(r, &mut row[..cols]);
            let (rb, i) = (r / LUT_ROW_BLOCK, r % LUT_ROW_BLOCK);
            let block = &mut data[rb * block_bytes..][..block_bytes];
            for (k, chunk) in row
                .chunks_exact(LUT_CHUNK_COLS)
                .zip(block.chunks_exact_mut(LUT_CHUNK_BYTES))
            {
                // Columns 0, 1, 4, 5 in byte i; 2, 3, 6, 7 in byte 16 + i (module docs).
                let byte = |a: usize| {
                    field_of(k[a])
                        | field_of(k[a + 1]) << 2
                        | field_of(k[a + 4]) << 4
                        | field_of(k[a + 5]) << 6
                };
                chunk[i] = byte(0);
                chunk[16 + i] = byte(2);
            }
        }
        Self {
            rows,
            cols,
            padded_cols,
            alpha,
            data: data.into(),
        }
    }

    /// Byte index in `data` and bit shift of weight (row `r`, column `k`).
    #[inline]
    pub fn position(padded_cols: usize, r: usize, k: usize) -> (usize, u32) {
        let block_bytes = padded_cols / LUT_CHUNK_COLS * LUT_CHUNK_BYTES;
        let (rb, i) = (r / LUT_ROW_BLOCK, r % LUT_ROW_BLOCK);
        let g = k / 2; // k-group
        let (chunk, g_in_chunk) = (g / 4, g % 4);
        // k-groups 4c, 4c+1 in the low nibbles of bytes i, 16+i; 4c+2, 4c+3 in the high nibbles.
        let byte = rb * block_bytes + chunk * LUT_CHUNK_BYTES + (g_in_chunk % 2) * 16 + i;
        let shift = 4 * (g_in_chunk / 2) as u32 + 2 * (k % 2) as u32;
        (byte, shift)
    }

    pub fn row_blocks(&self) -> usize {
        self.rows.div_ceil(LUT_ROW_BLOCK)
    }

    /// Chunks per row block.
    pub fn chunks(&self) -> usize {
        self.padded_cols / LUT_CHUNK_COLS
    }

    /// The packed bytes of one row block.
    pub fn block(&self, rb: usize) -> &[u8] {
        let n = self.chunks() * LUT_CHUNK_BYTES;
        &self.data[rb * n..(rb + 1) * n]
    }

    pub fn unpack(&self) -> TernaryWeights {
        self.to_weights()
    }
}

impl TernaryRows for LutPacked {
    shape_from_fields!();
    fn row_into(&self, r: usize, out: &mut [i8]) {
        let i = r % LUT_ROW_BLOCK;
        let block = self.block(r / LUT_ROW_BLOCK);
        row_from_pieces::<LUT_CHUNK_COLS>(self.cols, out, |c, k| {
            let chunk = &block[c * LUT_CHUNK_BYTES..][..LUT_CHUNK_BYTES];
            // Columns 0, 1, 4, 5 in byte i; 2, 3, 6, 7 in byte 16 + i (module docs).
            for (a, byte) in [(0, chunk[i]), (2, chunk[16 + i])] {
                k[a] = weight_at(byte);
                k[a + 1] = weight_at(byte >> 2);
                k[a + 4] = weight_at(byte >> 4);
                k[a + 5] = weight_at(byte >> 6);
            }
        });
    }
}

/// Columns covered by one [`TriplePacked`] chunk: four groups of three.
pub const TRIPLE_CHUNK_COLS: usize = 12;
/// Index bytes of one [`TriplePacked`] chunk: 16 rows × 4 groups × 4 bits.
pub const TRIPLE_CHUNK_BYTES: usize = 32;
/// Folded index of three zero weights (and of padding).
pub const TRIPLE_ZERO: u8 = 13;

/// The 4-bit folded indices of one [`TriplePacked`] chunk of a row block: 16 rows × 4 groups.
/// Row `i`'s groups 0 and 2 sit in the low and high nibble of byte `i`, groups 1 and 3 in those
/// of byte `16 + i`. Each group's sign is bit `4i + group` of the chunk's `u64` sign mask.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TripleChunk(pub [u8; TRIPLE_CHUNK_BYTES]);

// 4 bits per group of three weights, no padding, byte-aligned; one sign bit per row and group.
const _: () = assert!(std::mem::size_of::<TripleChunk>() * 8 == LUT_ROW_BLOCK * 4 * 4);
const _: () = assert!(std::mem::align_of::<TripleChunk>() == 1);
const _: () = assert!(u64::BITS as usize == LUT_ROW_BLOCK * 4);
const _: () = assert!(TRIPLE_CHUNK_COLS == 4 * 3);

// SAFETY: a `#[repr(C)]` wrapper of a byte array (size and alignment checked above): every bit
// pattern is a valid value, there is no padding, and all-zero is valid.
unsafe impl bytemuck::Zeroable for TripleChunk {}
// SAFETY: as above; `Copy` and `'static`.
unsafe impl bytemuck::Pod for TripleChunk {}

/// Folds three ternary weights into bitnet.cpp TL2's form: their combination index
/// `9(w0+1) + 3(w1+1) + (w2+1)` lies in 0..27, and index `i > 13` is the negation of index
/// `26 − i`, so a 4-bit index in 0..=13 and a sign cover all 27. Returns (index, negated).
pub fn triple_fold(w: [i8; 3]) -> (u8, bool) {
    let idx = 9 * (w[0] + 1) + 3 * (w[1] + 1) + (w[2] + 1);
    if idx > TRIPLE_ZERO as i8 {
        ((26 - idx) as u8, true)
    } else {
        (idx as u8, false)
    }
}

/// [`triple_fold`] by table, for packing: entry `9 c0 + 3 c1 + c2` of 2-bit codes `c = w + 1`
/// is the folded index, with bit 4 set when negated. Valid weights never give code 3; entries
/// past 26 then fold to zero weights (others alias a valid triple, as `triple_fold` would).
const FOLD_TABLE: [u8; 64] = {
    let mut table = [TRIPLE_ZERO; 64];
    let mut idx = 0;
    while idx < 27 {
        table[idx] = if idx > TRIPLE_ZERO as usize {
            (26 - idx) as u8 | 0x10
        } else {
            idx as u8
        };
        idx += 1;
    }
    table
};

/// [`triple_weights`] by table, for unpacking; indices 14 and 15 (which `from_parts` rejects)
/// are zero weights.
const TRIPLE_WEIGHT_TABLE: [[i8; 3]; 16] = {
    let mut table = [[0i8; 3]; 16];
    let mut f = 0;
    while f <= TRIPLE_ZERO as usize {
        let f8 = f as i8;
        table[f] = [f8 / 9 - 1, (f8 / 3) % 3 - 1, f8 % 3 - 1];
        f += 1;
    }
    table
};

/// The three weights of a folded index in 0..=13 (before its sign).
pub fn triple_weights(folded: u8) -> [i8; 3] {
    debug_assert!(folded <= TRIPLE_ZERO);
    let f = folded as i8;
    [f / 9 - 1, (f / 3) % 3 - 1, f % 3 - 1]
}

/// Ternary weights for INT4 lookups of **three weights at once** (bitnet.cpp TL2's grouping):
/// each group of three columns is one folded 4-bit index ([`triple_fold`]) plus a sign bit, so
/// **5 bits per 3 weights (1.67 bits per weight)**, plus one i32 per row (the sum of its signs,
/// which the kernels' table bias needs) and one f32 scale per tensor.
///
/// Layout: rows in blocks of 16, columns in chunks of [`TRIPLE_CHUNK_COLS`] (groups `4c..4c+4`
/// of chunk `c`), zero weights padding both. Per row block and chunk, 32 index bytes in
/// [`LutPacked`]'s nibble order (byte `i < 16`: row `i`'s groups `4c` low and `4c+2` high;
/// byte `16 + i`: groups `4c+1` and `4c+3`) and one u64 of signs, bit `4i + j` for row `i`'s
/// group `4c + j` (set: negated).
#[derive(Clone, Debug, PartialEq)]
pub struct TriplePacked {
    rows: usize,
    cols: usize,
    alpha: f32,
    chunks: usize,
    /// `[row_blocks, chunks, 32]`; every nibble in 0..=13.
    indices: PackedBytes,
    /// `[row_blocks, chunks]`.
    signs: Words<u64>,
    /// `[row_blocks · 16]`: Σ over the row's groups (padding included) of ±1.
    sign_sums: Words<i32>,
}

/// A slice of plain words (`u64` sign masks, `i32` sums) owned or in place in a shared buffer
/// (a model file), so that a packed model's words are not copied at load.
#[derive(Clone)]
enum Words<T: bytemuck::Pod> {
    Owned(Vec<T>),
    /// Bytes aligned for `T` and a whole number of words (checked by [`Words::from_bytes`]).
    Shared(PackedBytes),
}

impl<T: bytemuck::Pod> Words<T> {
    /// Uses `bytes` in place when aligned for `T`, else copies them (little-endian words).
    fn from_bytes(what: &'static str, bytes: PackedBytes) -> Result<Self, KernelError> {
        let size = std::mem::size_of::<T>();
        if !bytes.len().is_multiple_of(size) {
            return Err(KernelError::LengthMismatch {
                what,
                expected: bytes.len().next_multiple_of(size),
                found: bytes.len(),
            });
        }
        if bytemuck::try_cast_slice::<u8, T>(&bytes).is_ok() {
            return Ok(Words::Shared(bytes));
        }
        Ok(Words::Owned(
            bytes
                .chunks_exact(size)
                .map(bytemuck::pod_read_unaligned)
                .collect(),
        ))
    }
}

impl<T: bytemuck::Pod> Deref for Words<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            Words::Owned(v) => v,
            // Alignment and length were checked when the words were wrapped.
            Words::Shared(bytes) => bytemuck::cast_slice(bytes),
        }
    }
}

impl<T: bytemuck::Pod + fmt::Debug> fmt::Debug for Words<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Words({} words)", self.len())
    }
}

impl<T: bytemuck::Pod + PartialEq> PartialEq for Words<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

/// Σ of each row's ±1 group signs, `[row_blocks · 16]`, from the sign masks.
fn triple_sign_sums(signs: &[u64], chunks: usize) -> Vec<i32> {
    let mut sums = Vec::with_capacity(signs.len() / chunks.max(1) * LUT_ROW_BLOCK);
    for block in signs.chunks_exact(chunks.max(1)) {
        let mut negated = [0i32; LUT_ROW_BLOCK];
        for &mask in block {
            for (i, n) in negated.iter_mut().enumerate() {
                *n += (mask >> (4 * i) & 0xF).count_ones() as i32;
            }
        }
        sums.extend(negated.map(|n| 4 * chunks as i32 - 2 * n));
    }
    sums
}

impl TriplePacked {
    /// Packs `w`: group `(3g, 3g+1, 3g+2)` of row `r` becomes [`triple_fold`]'s index and sign
    /// at the place the type's docs give (by table, a row's chunk at a time).
    pub fn pack<W: TernaryRows + ?Sized>(w: &W) -> Self {
        let (rows, cols, alpha) = (w.rows(), w.cols(), w.alpha());
        let chunks = cols.div_ceil(TRIPLE_CHUNK_COLS).max(1);
        let row_blocks = rows.div_ceil(LUT_ROW_BLOCK);
        let zero_pair = TRIPLE_ZERO | TRIPLE_ZERO << 4;
        let mut indices = vec![zero_pair; row_blocks * chunks * TRIPLE_CHUNK_BYTES];
        let mut signs = vec![0u64; row_blocks * chunks];
        let mut row = vec![0i8; chunks * TRIPLE_CHUNK_COLS];
        for r in 0..rows {
            w.row_into(r, &mut row[..cols]);
            let (rb, i) = (r / LUT_ROW_BLOCK, r % LUT_ROW_BLOCK);
            let block =
                &mut indices[rb * chunks * TRIPLE_CHUNK_BYTES..][..chunks * TRIPLE_CHUNK_BYTES];
            let block_signs = &mut signs[rb * chunks..][..chunks];
            for ((x, out), sign) in row
                .chunks_exact(TRIPLE_CHUNK_COLS)
                .zip(block.chunks_exact_mut(TRIPLE_CHUNK_BYTES))
                .zip(block_signs)
            {
                let f: [u8; 4] = std::array::from_fn(|j| {
                    let g = &x[3 * j..3 * j + 3];
                    FOLD_TABLE
                        [usize::from(9 * field_of(g[0]) + 3 * field_of(g[1]) + field_of(g[2]))]
                });
                // Groups 0 and 2 in byte i, 1 and 3 in byte 16 + i; bit 4 of an entry is its sign.
                out[i] = (f[0] & 0xF) | (f[2] & 0xF) << 4;
                out[16 + i] = (f[1] & 0xF) | (f[3] & 0xF) << 4;
                let negated = (0..4).fold(0u64, |m, j| m | u64::from(f[j] >> 4) << j);
                *sign |= negated << (4 * i);
            }
        }
        let sign_sums = triple_sign_sums(&signs, chunks);
        Self {
            rows,
            cols,
            alpha,
            chunks,
            indices: indices.into(),
            signs: Words::Owned(signs),
            sign_sums: Words::Owned(sign_sums),
        }
    }

    /// Wraps the three parts of this layout (read from a file: index bytes, sign masks and sign
    /// sums as little-endian words), in place where aligned, after checking their lengths,
    /// that every index is a folded one (≤ 13), and that the sign sums match the signs.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        alpha: f32,
        indices: impl Into<PackedBytes>,
        signs: impl Into<PackedBytes>,
        sign_sums: impl Into<PackedBytes>,
    ) -> Result<Self, KernelError> {
        let (indices, signs, sign_sums) = (indices.into(), signs.into(), sign_sums.into());
        if rows == 0 || cols == 0 {
            return Err(KernelError::InvalidSize {
                what: "three-weight packed ternary weights",
                found: rows.min(cols),
                reason: "rows and columns must be non-zero",
            });
        }
        if !alpha.is_finite() {
            return Err(KernelError::NonFinite {
                what: "ternary weight scale alpha",
                index: 0,
            });
        }
        let chunks = cols.div_ceil(TRIPLE_CHUNK_COLS);
        let row_blocks = rows.div_ceil(LUT_ROW_BLOCK);
        let expect = |what, expected: usize, found: usize| match expected == found {
            true => Ok(()),
            false => Err(KernelError::LengthMismatch {
                what,
                expected,
                found,
            }),
        };
        expect(
            "three-weight index bytes",
            row_blocks * chunks * TRIPLE_CHUNK_BYTES,
            indices.len(),
        )?;
        expect(
            "three-weight sign bytes",
            8 * row_blocks * chunks,
            signs.len(),
        )?;
        expect(
            "three-weight sign-sum bytes",
            4 * row_blocks * LUT_ROW_BLOCK,
            sign_sums.len(),
        )?;
        let folded_max = TRIPLE_ZERO;
        if let Some(index) =
            crate::scan::first_where(&indices, |b: u8| (b & 0xF).max(b >> 4) > folded_max)
        {
            let b = indices[index];
            return Err(KernelError::InvalidCode {
                what: "three-weight folded index (0..=13)",
                code: i32::from((b & 0xF).max(b >> 4)),
                index,
            });
        }
        let signs: Words<u64> = Words::from_bytes("three-weight sign bytes", signs)?;
        let sign_sums: Words<i32> = Words::from_bytes("three-weight sign-sum bytes", sign_sums)?;
        let computed = triple_sign_sums(&signs, chunks);
        if let Some(index) = computed
            .iter()
            .zip(sign_sums.iter())
            .position(|(a, b)| a != b)
        {
            return Err(KernelError::InvalidCode {
                what: "three-weight sign sum (does not match the row's signs)",
                code: sign_sums[index],
                index,
            });
        }
        Ok(Self {
            rows,
            cols,
            alpha,
            chunks,
            indices,
            signs,
            sign_sums,
        })
    }

    /// The index bytes, `[row_blocks, chunks, 32]` (what a model file stores).
    pub fn indices(&self) -> &[u8] {
        &self.indices
    }

    /// The sign masks, `[row_blocks, chunks]`.
    pub fn signs(&self) -> &[u64] {
        &self.signs
    }

    /// Each row's Σ of group signs, `[row_blocks · 16]`.
    pub fn sign_sums(&self) -> &[i32] {
        &self.sign_sums
    }

    pub fn unpack(&self) -> TernaryWeights {
        self.to_weights()
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The per-tensor scale alpha of eq. (1).
    pub fn alpha(&self) -> f32 {
        self.alpha
    }

    pub fn row_blocks(&self) -> usize {
        self.rows.div_ceil(LUT_ROW_BLOCK)
    }

    /// Chunks per row block (`cols / 12`, rounded up).
    pub fn chunks(&self) -> usize {
        self.chunks
    }

    /// Index bytes of row block `rb`, `[chunks, 32]`.
    pub fn block_indices(&self, rb: usize) -> &[u8] {
        let n = self.chunks * TRIPLE_CHUNK_BYTES;
        &self.indices[rb * n..(rb + 1) * n]
    }

    /// Index chunks of row block `rb`.
    pub fn block_index_chunks(&self, rb: usize) -> &[TripleChunk] {
        bytemuck::cast_slice(self.block_indices(rb))
    }

    /// Sign masks of row block `rb`, one per chunk.
    pub fn block_signs(&self, rb: usize) -> &[u64] {
        &self.signs[rb * self.chunks..(rb + 1) * self.chunks]
    }

    /// Σ of signs (±1 per group) of the 16 rows of block `rb`.
    pub fn block_sign_sums(&self, rb: usize) -> &[i32] {
        &self.sign_sums[rb * LUT_ROW_BLOCK..(rb + 1) * LUT_ROW_BLOCK]
    }

    /// Bytes held: indices, signs and sign sums.
    pub fn bytes(&self) -> usize {
        self.indices.len() + 8 * self.signs.len() + 4 * self.sign_sums.len()
    }
}

impl TernaryRows for TriplePacked {
    shape_from_fields!();
    fn row_into(&self, r: usize, out: &mut [i8]) {
        let (rb, i) = (r / LUT_ROW_BLOCK, r % LUT_ROW_BLOCK);
        let block_bytes = self.chunks * TRIPLE_CHUNK_BYTES;
        let block = &self.indices[rb * block_bytes..][..block_bytes];
        let block_signs = &self.signs[rb * self.chunks..][..self.chunks];
        row_from_pieces::<TRIPLE_CHUNK_COLS>(self.cols, out, |c, x| {
            let chunk = &block[c * TRIPLE_CHUNK_BYTES..][..TRIPLE_CHUNK_BYTES];
            // Groups 0 and 2 in byte i, 1 and 3 in byte 16 + i (the type's docs).
            let (lo, hi) = (chunk[i], chunk[16 + i]);
            let sign = block_signs[c] >> (4 * i);
            for (j, f) in [lo & 0xF, hi & 0xF, lo >> 4, hi >> 4]
                .into_iter()
                .enumerate()
            {
                // Negation as a multiply by ±1: −1 for a set sign bit.
                let s = 1 - 2 * ((sign >> j) & 1) as i8;
                let w = TRIPLE_WEIGHT_TABLE[usize::from(f)];
                x[3 * j..3 * j + 3].copy_from_slice(&[s * w[0], s * w[1], s * w[2]]);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn random_ternary(rows: usize, cols: usize, seed: u64) -> TernaryWeights {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let codes = (0..rows * cols)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) % 3) as i8 - 1
            })
            .collect();
        TernaryWeights::from_codes(rows, cols, 0.75, codes).unwrap()
    }

    /// The layouts by definition, one weight at a time (`position` for the 2-bit ones, the
    /// type's docs for the three-weight one): the packers must write exactly these bytes.
    fn reference_row(w: &TernaryWeights) -> Vec<u8> {
        let row_bytes = padded_cols(w.cols) / 4;
        let mut data = vec![0b0101_0101u8; w.rows * row_bytes];
        for r in 0..w.rows {
            for k in 0..w.cols {
                let (byte, shift) = RowPacked::position(k);
                let code = (w.codes[r * w.cols + k] + 1) as u8;
                let b = &mut data[r * row_bytes + byte];
                *b = (*b & !(3 << shift)) | code << shift;
            }
        }
        data
    }

    fn reference_lut(w: &TernaryWeights) -> Vec<u8> {
        let padded = padded_cols(w.cols);
        let block_bytes = padded / LUT_CHUNK_COLS * LUT_CHUNK_BYTES;
        let mut data = vec![0x55u8; w.rows.div_ceil(LUT_ROW_BLOCK) * block_bytes];
        for r in 0..w.rows {
            for k in 0..w.cols {
                let (byte, shift) = LutPacked::position(padded, r, k);
                let code = (w.codes[r * w.cols + k] + 1) as u8;
                data[byte] = (data[byte] & !(3 << shift)) | code << shift;
            }
        }
        data
    }

    fn reference_triples(w: &TernaryWeights) -> (Vec<u8>, Vec<u64>) {
        let chunks = w.cols.div_ceil(TRIPLE_CHUNK_COLS);
        let row_blocks = w.rows.div_ceil(LUT_ROW_BLOCK);
        let mut indices = vec![TRIPLE_ZERO * 0x11; row_blocks * chunks * TRIPLE_CHUNK_BYTES];
        let mut signs = vec![0u64; row_blocks * chunks];
        for r in 0..w.rows {
            let (rb, i) = (r / LUT_ROW_BLOCK, r % LUT_ROW_BLOCK);
            for g in 0..w.cols.div_ceil(3) {
                let at = |m: usize| {
                    let k = 3 * g + m;
                    if k < w.cols {
                        w.codes[r * w.cols + k]
                    } else {
                        0
                    }
                };
                let (folded, negated) = triple_fold([at(0), at(1), at(2)]);
                let (c, j) = (g / 4, g % 4);
                let byte = (rb * chunks + c) * TRIPLE_CHUNK_BYTES + (j % 2) * 16 + i;
                let shift = 4 * (j / 2);
                indices[byte] = (indices[byte] & !(0xF << shift)) | folded << shift;
                signs[rb * chunks + c] |= u64::from(negated) << (4 * i + j);
            }
        }
        (indices, signs)
    }

    proptest! {
        #[test]
        fn packers_write_the_layouts_by_definition(
            rows in 1usize..40,
            cols in 1usize..600,
            seed in any::<u64>(),
        ) {
            let w = random_ternary(rows, cols, seed);
            let (row, lut) = (RowPacked::pack(&w), LutPacked::pack(&w));
            prop_assert_eq!(row.data(), &reference_row(&w)[..]);
            prop_assert_eq!(lut.data(), &reference_lut(&w)[..]);
            let t = TriplePacked::pack(&w);
            let (indices, signs) = reference_triples(&w);
            prop_assert_eq!(t.indices(), &indices[..]);
            prop_assert_eq!(t.signs(), &signs[..]);
            // Each unpacker inverts its packer, and a relayout (packing one layout's rows
            // straight into another) writes what packing the codes writes.
            prop_assert_eq!(&t.unpack(), &w);
            let sources: [&dyn TernaryRows; 3] = [&row, &lut, &t];
            for source in sources {
                prop_assert_eq!(&source.to_weights(), &w);
                prop_assert_eq!(&RowPacked::pack(source), &row);
                prop_assert_eq!(&LutPacked::pack(source), &lut);
                prop_assert_eq!(&TriplePacked::pack(source), &t);
            }
        }
    }

    #[test]
    fn triple_fold_covers_all_27_triples_by_hand() {
        // (−1, −1, −1) is index 0; (0, 0, 0) is 13; (1, 1, 1) is 26, the negation of 0.
        assert_eq!(triple_fold([-1, -1, -1]), (0, false));
        assert_eq!(triple_fold([0, 0, 0]), (TRIPLE_ZERO, false));
        assert_eq!(triple_fold([1, 1, 1]), (0, true));
        // (1, 0, −1): 9·2 + 3·1 + 0 = 21 > 13, so the negation of 26 − 21 = 5 = (−1, 0, 1).
        assert_eq!(triple_fold([1, 0, -1]), (5, true));
        assert_eq!(triple_weights(5), [-1, 0, 1]);
        for a in -1..=1i8 {
            for b in -1..=1i8 {
                for c in -1..=1i8 {
                    let (folded, negated) = triple_fold([a, b, c]);
                    assert!(folded <= TRIPLE_ZERO);
                    let w = triple_weights(folded);
                    let back = if negated { w.map(|v| -v) } else { w };
                    assert_eq!(back, [a, b, c]);
                }
            }
        }
    }

    #[test]
    fn triple_layout_known_bits_and_sign_sums() {
        // One row of 15 weights: groups (1, 0, −1) → index 5 negated, then (0, 0, 0) → 13,
        // (−1, −1, −1) → 0, (0, 1, 0) → 9·1 + 3·2 + 1 = 16 > 13 → 10 negated; group 4 (chunk
        // 1, group 0) is (1, −1, −1) → 9·2 + 0 + 0 = 18 → 8 negated.
        let codes = vec![1, 0, -1, 0, 0, 0, -1, -1, -1, 0, 1, 0, 1, -1, -1];
        let w = TernaryWeights::from_codes(1, 15, 0.5, codes).unwrap();
        let p = TriplePacked::pack(&w);
        assert_eq!((p.row_blocks(), p.chunks()), (1, 2));
        let idx = p.block_indices(0);
        // Row 0: byte 0 = group 0 (low) | group 2 (high); byte 16 = group 1 | group 3.
        assert_eq!(idx[0], 5); // group 2 (high nibble) is index 0
        assert_eq!(idx[16], 13 | 10 << 4);
        assert_eq!(idx[32], 8 | 13 << 4); // chunk 1: group 4, then padding (group 6)
        assert_eq!(idx[1], 13 | 13 << 4); // row 1 is padding
                                          // Signs: row 0, groups 0 and 3 of chunk 0 (bits 0, 3); group 0 of chunk 1 (bit 0).
        assert_eq!(p.block_signs(0), &[0b1001, 0b1]);
        // 8 groups per row, three negated: 8 − 2·3 = 2; padding rows: 8.
        assert_eq!(p.block_sign_sums(0)[0], 2);
        assert_eq!(p.block_sign_sums(0)[1], 8);
        assert_eq!(p.unpack(), w);
        // 5 bits per 3 weights: 40 bytes per chunk of 16 rows × 12 columns.
        assert_eq!(p.bytes(), 2 * 40 + 16 * 4);
    }

    /// The parts a file stores rebuild the same matrix; a bad index, a sign sum that does not
    /// match the signs, or a wrong length is refused with its name.
    #[test]
    fn triple_from_parts_round_trips_and_rejects_bad_parts() {
        let w = random_ternary(33, 300, 7);
        let p = TriplePacked::pack(&w);
        let words = |v: &[u64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let sums = |v: &[i32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let parts = |indices: Vec<u8>, signs: Vec<u8>, sign_sums: Vec<u8>| {
            TriplePacked::from_parts(33, 300, 0.75, indices, signs, sign_sums)
        };
        let (idx, sg, ss) = (p.indices().to_vec(), words(p.signs()), sums(p.sign_sums()));
        let back = parts(idx.clone(), sg.clone(), ss.clone()).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.unpack(), w);
        // Words at an odd offset of a shared buffer are copied, not misread.
        let mut shifted = vec![0u8];
        shifted.extend(&sg);
        let buffer: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(shifted);
        let odd = PackedBytes::shared(buffer, 1..1 + sg.len()).unwrap();
        assert_eq!(
            TriplePacked::from_parts(33, 300, 0.75, idx.clone(), odd, ss.clone()).unwrap(),
            p
        );
        let mut bad = idx.clone();
        bad[5] = 0xE0 | (bad[5] & 0xF); // high nibble 14
        assert!(matches!(
            parts(bad, sg.clone(), ss.clone()),
            Err(KernelError::InvalidCode {
                code: 14,
                index: 5,
                ..
            })
        ));
        let mut flipped = sg.clone();
        flipped[0] ^= 1; // row 0, group 0 negated without its sum changing
        assert!(matches!(
            parts(idx.clone(), flipped, ss.clone()),
            Err(KernelError::InvalidCode { index: 0, .. })
        ));
        assert!(matches!(
            parts(idx[1..].to_vec(), sg.clone(), ss.clone()),
            Err(KernelError::LengthMismatch { .. })
        ));
        assert!(matches!(
            parts(idx.clone(), sg, ss[4..].to_vec()),
            Err(KernelError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn triple_round_trips_odd_shapes() {
        for (rows, cols) in [(1, 1), (17, 13), (33, 300), (64, 4096), (5, 25)] {
            let w = random_ternary(rows, cols, (rows * cols) as u64);
            assert_eq!(TriplePacked::pack(&w).unpack(), w, "{rows}x{cols}");
        }
    }

    #[test]
    fn row_layout_known_bits() {
        // Row of 300 weights: column 0 -> byte 0 bits 0..2; column 64 -> byte 0 bits 2..4;
        // column 65 -> byte 1 bits 2..4; column 256 -> byte 64 (second block) bits 0..2.
        let mut codes = vec![0i8; 300];
        codes[0] = 1; // code 2
        codes[64] = -1; // code 0
        codes[65] = 1;
        codes[256] = -1;
        let w = TernaryWeights::from_codes(1, 300, 1.0, codes).unwrap();
        let p = RowPacked::pack(&w);
        assert_eq!(p.padded_cols(), 512);
        let data = p.data();
        assert_eq!(data.len(), 128);
        // byte 0: col 0 code 2, col 64 code 0, col 128 code 1, col 192 code 1.
        assert_eq!(data[0], 0b01_01_00_10);
        assert_eq!(data[1], 0b01_01_10_01);
        assert_eq!(data[64], 0b01_01_01_00);
        // bytes covering padding columns hold only zero weights (code 1).
        assert_eq!(data[127], 0x55);
    }

    #[test]
    fn lut_layout_known_bits() {
        // Row 3, columns 0..8 (k-groups 0..3, chunk 0).
        let mut codes = vec![0i8; 20 * 8];
        let row3 = &mut codes[3 * 8..4 * 8];
        row3.copy_from_slice(&[1, -1, 0, 1, -1, -1, 1, 1]);
        let w = TernaryWeights::from_codes(20, 8, 1.0, codes).unwrap();
        let p = LutPacked::pack(&w);
        assert_eq!(p.row_blocks(), 2);
        let data = p.data();
        assert_eq!(data.len(), 2 * 32 * 32);
        // k-group 0 = (1, -1) -> idx 2 | 0<<2 = 2; k-group 2 = (-1, -1) -> 0.
        assert_eq!(data[3], 0x02);
        // k-group 1 = (0, 1) -> 1 | 2<<2 = 9; k-group 3 = (1, 1) -> 2 | 2<<2 = 10.
        assert_eq!(data[16 + 3], 0xA9);
        // Rows 0..3 are zero: idx 0b0101 = 5 in both nibbles.
        assert_eq!(data[0], 0x55);
        // Padding rows 20..32 of block 1 are zero weights.
        assert_eq!(p.block(1)[15], 0x55);
    }

    #[test]
    fn the_first_invalid_code_is_found_in_any_chunk() {
        // 40 000 valid bytes (0b01 fields = weight 0), then bad bytes at chosen places.
        for (first, second) in [
            (0usize, 5usize),
            (16_383, 16_384),
            (16_384, 39_999),
            (33_000, 33_001),
        ] {
            let mut data = vec![0x55u8; 40_000];
            data[first] = 0x55 | 3 << 6;
            data[second] = 0xff;
            match check_codes("test", &data) {
                Err(KernelError::InvalidCode { index, code: 3, .. }) => assert_eq!(index, first),
                other => panic!("bad byte at {first}: {other:?}"),
            }
        }
        assert!(check_codes("test", &[0x55; 40_000]).is_ok());
        assert!(check_codes("test", &[]).is_ok());
    }

    #[test]
    fn from_parts_validates_length_and_codes() {
        let w = random_ternary(3, 10, 1);
        let p = RowPacked::pack(&w);
        let ok = RowPacked::from_parts(3, 10, p.alpha(), p.data().to_vec()).unwrap();
        assert_eq!(ok, p);
        let mut bad = p.data().to_vec();
        bad[70] |= 3 << 4; // a field of row 1 -> code 3
        assert!(matches!(
            RowPacked::from_parts(3, 10, 1.0, bad),
            Err(KernelError::InvalidCode {
                code: 3,
                index: 70,
                ..
            })
        ));
        assert!(matches!(
            RowPacked::from_parts(3, 10, 1.0, vec![0x55; 191]),
            Err(KernelError::LengthMismatch {
                expected: 192,
                found: 191,
                ..
            })
        ));
        let p = LutPacked::pack(&w);
        assert_eq!(
            LutPacked::from_parts(3, 10, p.alpha(), p.data().to_vec()).unwrap(),
            p
        );
        let (byte, shift) = LutPacked::position(p.padded_cols(), 2, 9);
        let mut bad = p.data().to_vec();
        bad[byte] |= 3 << shift;
        assert!(matches!(
            LutPacked::from_parts(3, 10, 1.0, bad),
            Err(KernelError::InvalidCode { code: 3, .. })
        ));
        assert!(matches!(
            LutPacked::from_parts(3, 10, f32::NAN, p.data().to_vec()),
            Err(KernelError::NonFinite { .. })
        ));
        assert!(matches!(
            LutPacked::from_parts(0, 10, 1.0, vec![]),
            Err(KernelError::InvalidSize { .. })
        ));
    }

    #[test]
    fn exactly_two_bits_per_weight_when_aligned() {
        let w = random_ternary(32, 512, 7);
        assert_eq!(RowPacked::pack(&w).weight_bytes() * 8, 2 * 32 * 512);
        assert_eq!(LutPacked::pack(&w).weight_bytes() * 8, 2 * 32 * 512);
    }

    proptest! {
        #[test]
        fn both_layouts_round_trip(rows in 1usize..40, cols in 1usize..700, seed in any::<u64>()) {
            let w = random_ternary(rows, cols, seed);
            prop_assert_eq!(&RowPacked::pack(&w).unpack(), &w);
            prop_assert_eq!(&LutPacked::pack(&w).unpack(), &w);
        }
    }
}
