//! Ternary × quantized-activation matrix kernels (BitLinear's integer form, DESIGN.md §1):
//!
//! `y[t, o] = alpha · s_x[t] · Σ_k Wq[o, k] · xq[t, k]`, the sum in i32.
//!
//! * [`matmul_int8`] multiplies [`RowPacked`] weights by INT8 activations with multiply-add
//!   instructions (`vpmaddubsw`, `vpdpbusd`) on 2-bit codes `w + 1`, then subtracts `Σ_k xq[t, k]`.
//! * [`matmul_int4`] multiplies [`LutPacked`] weights by INT4 activations with 16-entry lookup
//!   tables of k-group partial sums (`vpshufb`, or `vpermb` over four tables at once where the CPU
//!   has AVX-512 VBMI): INT4 codes keep every table entry within one byte, which INT8 codes cannot
//!   (the reason native 4-bit activations pay off on a CPU).
//! * [`matmul_int4_triples`] multiplies [`TriplePacked`] weights by INT4 activations with one
//!   lookup per **three** weights (folded 4-bit index plus sign, as bitnet.cpp's TL2): 192
//!   multiply-adds per `vpermb` and `vpdpbusd` instead of 128. The `vpermb` tile needs AVX-512
//!   VBMI and VNNI; other CPUs run its scalar tile.
//!
//! One token is a GEMV, 2..N tokens a GEMM; rows are split across the current rayon pool's
//! threads. Every path computes the same i32 sums and the same f32 epilogue, so every path gives
//! bit-identical outputs; [`matmul_reference`] is the plain definition they are tested against.

/// Calls `f::<N>(args..)` for the token count `n` (one of the listed constants; the constant
/// after `;` takes everything else), so each token-tile size gets its own unrolled tile.
/// `f[C]` passes a second const argument: `f::<N, C>(args..)`.
macro_rules! dispatch_tokens {
    ($n:expr, $f:ident, $args:tt, $($k:literal),*; $last:literal) => {
        match $n {
            $($k => $f::<$k> $args,)*
            _ => $f::<$last> $args,
        }
    };
    ($n:expr, $f:ident [$c:expr], $args:tt, $($k:literal),*; $last:literal) => {
        match $n {
            $($k => $f::<$k, $c> $args,)*
            _ => $f::<$last, $c> $args,
        }
    };
}

mod lookup;
mod lut;
mod mad;
mod split;
mod triple;

pub use split::{choose_splits, chosen_split, Bucket, ProductKind, Split, SplitKey};

use crate::cpu::{active_path, KernelPath};
use crate::error::KernelError;
use crate::pack::{LutPacked, RowPacked, TernaryRows, TriplePacked};
use crate::quant::{ActBits, QuantizedActivations, TernaryWeights};
use std::ops::Range;

/// Budget for the activations of a multiply-add token tile within one column block: half of a
/// 32 KiB L1 leaves room for the weight stream.
const MAD_L1_BUDGET_BYTES: usize = 16 * 1024;

/// The f32 epilogue, identical on every path: `(alpha · s_x) · dot`.
#[inline]
fn epilogue(alpha: f32, scale: f32, dot: i32) -> f32 {
    alpha * scale * dot as f32
}

/// Definition of the product on unpacked codes: the reference every kernel path must equal.
pub fn matmul_reference(
    w: &TernaryWeights,
    x: &QuantizedActivations,
) -> Result<Vec<f32>, KernelError> {
    check_cols(w.cols, x)?;
    let mut y = vec![0.0f32; x.tokens * w.rows];
    for t in 0..x.tokens {
        let xt = x.token(t);
        for o in 0..w.rows {
            let wo = &w.codes[o * w.cols..(o + 1) * w.cols];
            let dot: i32 = wo.iter().zip(xt).map(|(&a, &b)| a as i32 * b as i32).sum();
            y[t * w.rows + o] = epilogue(w.alpha, x.scales[t], dot);
        }
    }
    Ok(y)
}

/// A packed ternary layout as its users see it: shape, scale, size, the product on the active
/// path (alone and several matrices sharing one input), and the weights back. One impl per
/// layout, so code above the kernels (the engine) need not match on layouts.
/// Shape, scale and the weights back come from [`TernaryRows`].
pub trait PackedTernary: TernaryRows + Sync {
    /// Bytes of packed weights (what a GEMV streams from memory).
    fn packed_bytes(&self) -> usize;
    /// `y` `[tokens, rows]` = `α · s_x · (W · x)`.
    fn matmul(&self, x: &QuantizedActivations, y: &mut [f32]) -> Result<(), KernelError>;
    /// The products of several matrices of this layout sharing the input `x`, in one pass,
    /// cut across the threads as `split` says, or when `None` as this CPU's pinned choice or
    /// the kernel's built-in rule ([`Split`]).
    fn matmul_many_split(
        ws: &[&Self],
        x: &QuantizedActivations,
        ys: &mut [&mut [f32]],
        split: Option<Split>,
    ) -> Result<(), KernelError>
    where
        Self: Sized;
    /// The products of several matrices of this layout sharing the input `x`, in one pass.
    fn matmul_many(
        ws: &[&Self],
        x: &QuantizedActivations,
        ys: &mut [&mut [f32]],
    ) -> Result<(), KernelError>
    where
        Self: Sized,
    {
        Self::matmul_many_split(ws, x, ys, None)
    }
    /// The kernel family that multiplies this layout.
    fn product_kind(&self) -> ProductKind;
}

impl PackedTernary for RowPacked {
    fn packed_bytes(&self) -> usize {
        self.weight_bytes()
    }
    fn matmul(&self, x: &QuantizedActivations, y: &mut [f32]) -> Result<(), KernelError> {
        matmul_int8(self, x, y)
    }
    fn matmul_many_split(
        ws: &[&Self],
        x: &QuantizedActivations,
        ys: &mut [&mut [f32]],
        split: Option<Split>,
    ) -> Result<(), KernelError> {
        matmul_int8_many_split(ws, x, ys, split)
    }
    fn product_kind(&self) -> ProductKind {
        ProductKind::Int8Rows
    }
}

impl PackedTernary for LutPacked {
    fn packed_bytes(&self) -> usize {
        self.weight_bytes()
    }
    fn matmul(&self, x: &QuantizedActivations, y: &mut [f32]) -> Result<(), KernelError> {
        matmul_int4(self, x, y)
    }
    fn matmul_many_split(
        ws: &[&Self],
        x: &QuantizedActivations,
        ys: &mut [&mut [f32]],
        split: Option<Split>,
    ) -> Result<(), KernelError> {
        matmul_int4_many_split(ws, x, ys, split)
    }
    fn product_kind(&self) -> ProductKind {
        ProductKind::Int4Pairs
    }
}

impl PackedTernary for TriplePacked {
    fn packed_bytes(&self) -> usize {
        self.bytes()
    }
    fn matmul(&self, x: &QuantizedActivations, y: &mut [f32]) -> Result<(), KernelError> {
        matmul_int4_triples(self, x, y)
    }
    fn matmul_many_split(
        ws: &[&Self],
        x: &QuantizedActivations,
        ys: &mut [&mut [f32]],
        split: Option<Split>,
    ) -> Result<(), KernelError> {
        matmul_int4_triples_many_split(ws, x, ys, split)
    }
    fn product_kind(&self) -> ProductKind {
        ProductKind::Int4Triples
    }
}

/// Ternary × INT8 on the active path. `y` is `[tokens, rows]`.
pub fn matmul_int8(
    w: &RowPacked,
    x: &QuantizedActivations,
    y: &mut [f32],
) -> Result<(), KernelError> {
    matmul_int8_with(active_path()?, w, x, y)
}

/// Ternary × INT8 on an explicit kernel path.
pub fn matmul_int8_with(
    path: KernelPath,
    w: &RowPacked,
    x: &QuantizedActivations,
    y: &mut [f32],
) -> Result<(), KernelError> {
    check_operands(path, w.rows(), w.cols(), x, ActBits::Int8, y)?;
    int8_parts(path, &[w], x, &mut [y], None);
    Ok(())
}

/// Ternary × INT4 on the active path. `y` is `[tokens, rows]`.
pub fn matmul_int4(
    w: &LutPacked,
    x: &QuantizedActivations,
    y: &mut [f32],
) -> Result<(), KernelError> {
    matmul_int4_with(active_path()?, w, x, y)
}

/// Ternary × INT4 on an explicit kernel path.
pub fn matmul_int4_with(
    path: KernelPath,
    w: &LutPacked,
    x: &QuantizedActivations,
    y: &mut [f32],
) -> Result<(), KernelError> {
    check_operands(path, w.rows(), w.cols(), x, ActBits::Int4, y)?;
    matmul_int4_parts(path, &[w], x, &mut [y], None);
    Ok(())
}

/// Several ternary × INT8 products of one input (q/k/v, gate/up) in one parallel pass: the rows
/// of all matrices are split across the threads together, so a decode step pays one fork-join
/// instead of one per matrix. `ys[i]` is `[tokens, ws[i].rows()]`; results equal
/// [`matmul_int8`] on each matrix.
pub fn matmul_int8_many(
    ws: &[&RowPacked],
    x: &QuantizedActivations,
    ys: &mut [&mut [f32]],
) -> Result<(), KernelError> {
    matmul_int8_many_split(ws, x, ys, None)
}

/// [`matmul_int8_many`] cut across the threads as `split` says (`None`: the split pinned for it,
/// else the built-in rule; see [`Split`]). Every split gives the same results.
pub fn matmul_int8_many_split(
    ws: &[&RowPacked],
    x: &QuantizedActivations,
    ys: &mut [&mut [f32]],
    split: Option<Split>,
) -> Result<(), KernelError> {
    let path = active_path()?;
    check_many(
        path,
        ws.iter().map(|w| (w.rows(), w.cols())),
        x,
        ActBits::Int8,
        ys,
    )?;
    int8_parts(path, ws, x, ys, split);
    Ok(())
}

/// The parallel part of the multiply-add products (operands checked): row shares of all
/// matrices together, each writing its own rows of the outputs.
fn int8_parts(
    path: KernelPath,
    ws: &[&RowPacked],
    x: &QuantizedActivations,
    ys: &mut [&mut [f32]],
    split: Option<Split>,
) {
    let rows: Vec<usize> = ws.iter().map(|w| w.rows()).collect();
    let cols = ws.first().map_or(0, |w| w.cols());
    let split = split::resolve(
        split,
        ProductKind::Int8Rows,
        rows.iter().sum(),
        cols,
        x.tokens,
        || Split::Rows {
            shares: mad_shares_per_thread(x.tokens),
        },
    );
    let outs = SharedOutput::each(ys, &rows);
    split_many(&rows, 1, split.shares(), |m, r| {
        let dots = mad::dots(path, ws[m], x, r.clone());
        // SAFETY: `split_many` hands each part a disjoint row range of matrix m.
        unsafe { outs[m].write(r, 0..x.tokens, &dots, ws[m].alpha(), x) };
    });
}

/// The parallel part of [`matmul_int4_with`] and [`matmul_int4_many`] (operands checked): the
/// shared lookup design of [`lookup::multiply`] over the two-weight layout.
fn matmul_int4_parts(
    path: KernelPath,
    ws: &[&LutPacked],
    x: &QuantizedActivations,
    ys: &mut [&mut [f32]],
    split: Option<Split>,
) {
    lookup::multiply(&lut::Pairs(lut::LutTile::for_path(path)), ws, x, ys, split);
}

/// Ternary × INT4 over [`TriplePacked`] weights: three weights per table lookup, 1.67 bits per
/// weight (see `triple.rs`). The `vpermb` tile where the CPU has AVX-512 VBMI and VNNI (and the
/// AVX-512 path is active), the `tbl` tile on the NEON path ([`int4_triples_native`]); the
/// scalar tile everywhere else. For one or
/// a few tokens each share builds its own tables ([`triple_own_tables`]); otherwise the tables
/// are built once, in pieces over the threads, then the rows or, for many tokens, the token
/// tiles ([`triple_split_by_tokens`]) are split across the threads ([`lookup::multiply`]).
pub fn matmul_int4_triples(
    w: &TriplePacked,
    x: &QuantizedActivations,
    y: &mut [f32],
) -> Result<(), KernelError> {
    matmul_int4_triples_many(&[w], x, &mut [y])
}

/// Whether [`matmul_int4_triples`] runs a vector tile on this CPU and active path (the `vpermb`
/// tile of AVX-512 VBMI + VNNI, or NEON's `tbl` tile); elsewhere it runs the scalar tile, and
/// [`matmul_int4`]'s two-weight layout is the faster INT4 one. On NEON both layouts look up 16
/// rows per `tbl`, the three-weight one for 3 weights where the other covers 2, from 1.67 bits
/// per weight instead of 2; unmeasured on ARM hardware, so `hbit tune` there has the last word.
pub fn int4_triples_native() -> bool {
    active_path().is_ok_and(|p| triple::TripleTile::for_path(p) != triple::TripleTile::Scalar)
}

/// As [`matmul_int8_many`] for ternary × INT4 over [`TriplePacked`] weights: results equal
/// [`matmul_int4_triples`] on each matrix.
pub fn matmul_int4_triples_many(
    ws: &[&TriplePacked],
    x: &QuantizedActivations,
    ys: &mut [&mut [f32]],
) -> Result<(), KernelError> {
    matmul_int4_triples_many_split(ws, x, ys, None)
}

/// [`matmul_int4_triples_many`] cut across the threads as `split` says (`None`: the split
/// pinned for it, else the built-in rule; see [`Split`]). Every split gives the same results.
pub fn matmul_int4_triples_many_split(
    ws: &[&TriplePacked],
    x: &QuantizedActivations,
    ys: &mut [&mut [f32]],
    split: Option<Split>,
) -> Result<(), KernelError> {
    let path = active_path()?;
    check_many(
        path,
        ws.iter().map(|w| (w.rows(), w.cols())),
        x,
        ActBits::Int4,
        ys,
    )?;
    let tile = triple::TripleTile::for_path(path);
    lookup::multiply(&triple::Triples(tile), ws, x, ys, split);
    Ok(())
}

/// Whether every share of a three-weight product builds its own tables (one fork-join, the
/// build done once per thread) instead of sharing one build (two fork-joins). Tables cost 5.3
/// bytes per column and token, and build faster than the two-weight ones, so the crossover
/// sits at more rows than [`lut_own_tables`]'s (reports/kernels.md § Decisions:
/// triple_own_tables).
fn triple_own_tables(rows: usize, tokens: usize) -> bool {
    tokens == 1 || (tokens <= triple::TOKEN_TILE && tokens * 256 > rows)
}

/// Whether a three-weight product splits its token tiles, not its rows, across the threads:
/// once the tables (5.3 bytes per column and token) weigh more than about a quarter of the
/// weights (0.21 bytes per column and row), and there are tiles enough for every thread
/// (reports/kernels.md § Decisions: triple_split_by_tokens).
fn triple_split_by_tokens(rows: usize, tokens: usize) -> bool {
    let tiles = tokens.div_ceil(triple::TOKEN_TILE);
    tokens * 48 > rows && tiles >= 2 * rayon::current_num_threads()
}

/// Whether a lookup-table product splits its token tiles, not its rows, across the threads.
/// Every token's tables cost 8 bytes per column, the weights 2 bits per row and column: with
/// more than `rows / 32` tokens the tables outweigh the weights, and a row split would have
/// every part read all of them. Splitting the token tiles reads each table once; every part
/// then reads the smaller weights. Needs enough tiles to keep every thread busy
/// (reports/kernels.md, "After the fourth run: token split").
fn lut_split_by_tokens(rows: usize, tokens: usize, token_tile: usize) -> bool {
    let tiles = tokens.div_ceil(token_tile);
    tokens * 32 > rows && tiles >= 2 * rayon::current_num_threads()
}

/// Whether every share of a lookup-table product builds its own tables instead of sharing one
/// build: one token always, up to 8 while the tables are more than a sixteenth of the weights;
/// beyond, the duplicated build weighs more than the tables' trip between cores
/// (reports/kernels.md § Decisions: lut_own_tables).
fn lut_own_tables(rows: usize, tokens: usize) -> bool {
    tokens == 1 || (tokens <= 8 && tokens * 128 > rows)
}

/// Token-tile parts per thread of a token-split lookup-table product, claimed dynamically.
const LUT_TOKEN_SHARES_PER_THREAD: usize = 2;

/// As [`matmul_int8_many`] for ternary × INT4 ([`LutPacked`]).
pub fn matmul_int4_many(
    ws: &[&LutPacked],
    x: &QuantizedActivations,
    ys: &mut [&mut [f32]],
) -> Result<(), KernelError> {
    matmul_int4_many_split(ws, x, ys, None)
}

/// [`matmul_int4_many`] cut across the threads as `split` says (`None`: the split pinned for it,
/// else the built-in rule; see [`Split`]). Every split gives the same results.
pub fn matmul_int4_many_split(
    ws: &[&LutPacked],
    x: &QuantizedActivations,
    ys: &mut [&mut [f32]],
    split: Option<Split>,
) -> Result<(), KernelError> {
    let path = active_path()?;
    check_many(
        path,
        ws.iter().map(|w| (w.rows(), w.cols())),
        x,
        ActBits::Int4,
        ys,
    )?;
    matmul_int4_parts(path, ws, x, ys, split);
    Ok(())
}

/// The operands of a multi-matrix product: one output per matrix, and each matrix (`(rows,
/// cols)`) with its output as [`check_operands`] wants them.
fn check_many(
    path: KernelPath,
    shapes: impl ExactSizeIterator<Item = (usize, usize)>,
    x: &QuantizedActivations,
    bits: ActBits,
    ys: &[&mut [f32]],
) -> Result<(), KernelError> {
    if shapes.len() != ys.len() {
        return Err(KernelError::LengthMismatch {
            what: "outputs of a multi-matrix product (one per matrix)",
            expected: shapes.len(),
            found: ys.len(),
        });
    }
    for ((rows, cols), y) in shapes.zip(ys) {
        check_operands(path, rows, cols, x, bits, y)?;
    }
    Ok(())
}

/// Row shares per thread of a multiply-add (INT8) product of `tokens` tokens. A GEMV gets one
/// share per thread: each core then streams one contiguous run of weights, and finer splits
/// measured no faster. A GEMM gets [`MAD_GEMM_SHARES_PER_THREAD`], claimed dynamically
/// ([`crate::parallel`]): a share's weights then stay in L2 across its token tiles, and a core
/// slowed by another tenant of the machine no longer leaves the other waiting at the join
/// (reports/kernels.md § Decisions: mad_shares_per_thread).
fn mad_shares_per_thread(tokens: usize) -> usize {
    if tokens <= 1 {
        1
    } else {
        MAD_GEMM_SHARES_PER_THREAD
    }
}

/// See [`mad_shares_per_thread`].
const MAD_GEMM_SHARES_PER_THREAD: usize = 4;

/// Row shares per thread of a lookup-table (INT4) product whose parts build their own tables (a
/// GEMV, or a few tokens against few rows): one, since every share builds the tables again.
const LUT_SHARES_PER_THREAD: usize = 1;

/// Row shares per thread of a lookup-table product over shared tables, claimed dynamically, so a
/// core slowed by another tenant does not hold the other back. Since each tile call reads its
/// token tile's tables over whole rows, finer shares add no table traffic
/// (reports/kernels.md § Decisions: LUT_GEMM_SHARES_PER_THREAD).
const LUT_GEMM_SHARES_PER_THREAD: usize = 4;

/// Splits the rows of several matrices (`rows[m]` each, in units of `align` rows) into
/// contiguous shares (`shares` per thread of the current pool) and runs `work(m, range)` on
/// each piece, in parallel. Pieces never overlap.
fn split_many<F>(rows: &[usize], align: usize, shares: usize, work: F)
where
    F: Fn(usize, Range<usize>) + Sync,
{
    split_many_with(rows, align, shares, || (), |_, m, range| work(m, range));
}

/// [`split_many`] with per-share state: each share calls `init` once, on the thread that runs
/// it, and passes the result to `work` for each of its pieces.
fn split_many_with<S, I, F>(rows: &[usize], align: usize, shares: usize, init: I, work: F)
where
    I: Fn() -> S + Sync,
    F: Fn(&S, usize, Range<usize>) + Sync,
{
    // Units of `align` rows over all matrices, in order; share i takes units
    // [total·i/parts, total·(i+1)/parts), cut into one piece per matrix it touches.
    let units: Vec<usize> = rows.iter().map(|&r| r.div_ceil(align)).collect();
    let total: usize = units.iter().sum();
    let parts = rayon::current_num_threads()
        .saturating_mul(shares)
        .clamp(1, total.max(1));
    crate::parallel::run_parts(parts, &|share| {
        let (u0, u1) = (total * share / parts, total * (share + 1) / parts);
        let state = init();
        let mut first = 0; // global index of matrix m's first unit
        for (m, (&r, &n)) in rows.iter().zip(&units).enumerate() {
            let (lo, hi) = (u0.max(first), u1.min(first + n));
            if lo < hi {
                work(
                    &state,
                    m,
                    ((lo - first) * align).min(r)..((hi - first) * align).min(r),
                );
            }
            first += n;
        }
    });
}

fn check_cols(cols: usize, x: &QuantizedActivations) -> Result<(), KernelError> {
    if x.cols != cols {
        return Err(KernelError::ShapeMismatch {
            what: "activation columns vs weight columns",
            expected: cols,
            found: x.cols,
        });
    }
    Ok(())
}

fn check_operands(
    path: KernelPath,
    rows: usize,
    cols: usize,
    x: &QuantizedActivations,
    bits: ActBits,
    y: &[f32],
) -> Result<(), KernelError> {
    path.check_supported()?;
    check_cols(cols, x)?;
    // 4-bit codes (−8..=7) are 8-bit codes: the multiply-add kernels take them exactly.
    let accepted = x.bits == bits || (bits == ActBits::Int8 && x.bits == ActBits::Int4);
    if !accepted {
        return Err(KernelError::ActivationBitsMismatch {
            expected: bits.bits(),
            found: x.bits.bits(),
        });
    }
    if x.codes.len() != x.tokens * x.stride || x.scales.len() != x.tokens {
        return Err(KernelError::LengthMismatch {
            what: "activation codes (tokens × padded columns)",
            expected: x.tokens * x.stride,
            found: x.codes.len(),
        });
    }
    if y.len() != x.tokens * rows {
        return Err(KernelError::LengthMismatch {
            what: "output y [tokens, rows]",
            expected: x.tokens * rows,
            found: y.len(),
        });
    }
    Ok(())
}

/// A `[tokens, rows]` output that the parts of one product fill at once, each its own rows:
/// the f32 epilogue then runs in parallel instead of after the join.
struct SharedOutput<'a> {
    ptr: *mut f32,
    len: usize,
    rows: usize,
    /// Holds the exclusive borrow of `y` for as long as the parts may write through `ptr`.
    _y: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: the pointer comes from a `&mut [f32]` borrowed for the struct's lifetime (see `new`),
// and parts write disjoint elements (the contract of `write`), so sharing it between threads is
// sound.
unsafe impl Sync for SharedOutput<'_> {}

impl<'a> SharedOutput<'a> {
    /// One shared output per matrix: `ys[m]` is `[tokens, rows[m]]`.
    fn each<'b>(ys: &'b mut [&'a mut [f32]], rows: &[usize]) -> Vec<SharedOutput<'b>> {
        ys.iter_mut()
            .zip(rows)
            .map(|(y, &r)| SharedOutput::new(y, r))
            .collect()
    }

    fn new(y: &'a mut [f32], rows: usize) -> Self {
        // `write` indexes `t · rows + r` within `len`: a ragged buffer would break that.
        assert_eq!(
            y.len() % rows.max(1),
            0,
            "output is not a whole number of rows"
        );
        SharedOutput {
            ptr: y.as_mut_ptr(),
            len: y.len(),
            rows,
            _y: std::marker::PhantomData,
        }
    }

    /// Writes `(alpha · s_x[t]) · dots[t − tokens.start, i]` to `y[t, range.start + i]` for
    /// every token `t` in `tokens`.
    ///
    /// # Safety
    /// No other thread reads or writes the elements `(t, r)`, `t` in `tokens`, `r` in `range`,
    /// during the call.
    unsafe fn write(
        &self,
        range: Range<usize>,
        tokens: Range<usize>,
        dots: &[i32],
        alpha: f32,
        x: &QuantizedActivations,
    ) {
        let len = range.len();
        assert!(
            range.end <= self.rows && tokens.end <= x.tokens && dots.len() == tokens.len() * len
        );
        for (j, t) in tokens.enumerate() {
            let start = t * self.rows + range.start;
            assert!(start + len <= self.len);
            // SAFETY: in bounds (asserted); these elements belong to this caller alone
            // (contract), and the slice lives only for this iteration.
            let out = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) };
            for (o, &d) in out.iter_mut().zip(&dots[j * len..(j + 1) * len]) {
                *o = epilogue(alpha, x.scales[t], d);
            }
        }
    }
}

#[cfg(test)]
mod tests;
