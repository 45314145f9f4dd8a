//! Full-precision `y[t, r] = Σ_k W[r, k] · x[t, k]` for weights kept at f32 or f16: the LM head
//! (often the tied embedding), which BitNet keeps unquantized. At decode it is a GEMV that reads
//! the whole `[vocab, hidden]` matrix per step, so it is memory-bound: f16 halves its bytes.
//!
//! Every path sums in the same order, so every path is bit-identical to [`float_matmul_reference`]:
//! per row and token, columns in blocks of 16 feed two 8-lane accumulators with fused
//! multiply-adds (`a[l] += w[16b + l]·x`, `b[l] += w[16b + 8 + l]·x`); then `s = a + b` lane-wise,
//! reduced as `((s0+s4)+(s2+s6)) + ((s1+s5)+(s3+s7))`; then the `cols % 16` tail columns in order
//! with fused multiply-adds.
//!
//! 4-bit block-quantized rows whose length is a multiple of 64 are the exception: their product
//! is an integer one, activations at INT8 per block of 32 ([`block_quant::dot4_scalar`] defines
//! it), which reads the codes without widening them; every path is bit-identical to that.

use half::f16;

use crate::block_quant::{self, BlockBits, BLOCK};
use crate::cpu::{active_path, KernelPath};
use crate::error::KernelError;

/// A row-major `[rows, cols]` weight matrix at f32 or f16, or at 8 bits per weight with one
/// absmax scale per row (the optional 8-bit LM head: half the bytes of f16 per decode step).
#[derive(Debug, Clone, Copy)]
pub enum FloatWeights<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    /// `codes` `[rows, cols]`, `scales` `[rows]`: `W[r, k] = scales[r] · codes[r, k]`.
    I8 {
        codes: &'a [i8],
        scales: &'a [f32],
    },
    /// Below 8 bits ([`block_quant`]): `codes` `[rows, row_bytes]`, `scales` `[rows, cols / 32]`,
    /// `W[r, k] = scales[r, k / 32] · q[r, k]`.
    Block {
        bits: BlockBits,
        codes: &'a [u8],
        scales: &'a [f16],
    },
}

impl FloatWeights<'_> {
    pub fn len(&self) -> usize {
        match self {
            FloatWeights::F32(w) => w.len(),
            FloatWeights::F16(w) => w.len(),
            FloatWeights::I8 { codes, .. } => codes.len(),
            FloatWeights::Block { bits, codes, .. } => {
                codes.len() / bits.group_bytes() * block_quant::GROUP
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `r` of a matrix with `cols` columns, converted to f32 into `out`.
    pub fn row_into(&self, r: usize, cols: usize, out: &mut [f32]) {
        match self {
            FloatWeights::F32(w) => out.copy_from_slice(&w[r * cols..(r + 1) * cols]),
            FloatWeights::F16(w) => {
                for (o, v) in out.iter_mut().zip(&w[r * cols..(r + 1) * cols]) {
                    *o = v.to_f32();
                }
            }
            FloatWeights::I8 { codes, scales } => {
                for (o, &c) in out.iter_mut().zip(&codes[r * cols..(r + 1) * cols]) {
                    *o = scales[r] * c as f32;
                }
            }
            FloatWeights::Block { .. } => {
                let at = self.block_row(r, cols);
                for (k, o) in out.iter_mut().enumerate() {
                    *o = at(k);
                }
            }
        }
    }

    /// Weight `k` of row `r` of a block-quantized matrix (`d · q`, exact); panics on others.
    fn block_row(&self, r: usize, cols: usize) -> impl Fn(usize) -> f32 + '_ {
        let FloatWeights::Block {
            bits,
            codes,
            scales,
        } = *self
        else {
            unreachable!("block_row of a matrix that is not block-quantized")
        };
        let row_bytes = bits.row_bytes(cols);
        let row = &codes[r * row_bytes..][..row_bytes];
        let row_scales = &scales[r * cols / BLOCK..][..cols / BLOCK];
        move |k| block_quant::value_at(bits, row, row_scales, k)
    }

    /// Bytes of one stored row of `cols` weights.
    pub fn row_bytes(&self, cols: usize) -> usize {
        match self {
            FloatWeights::F32(_) => 4 * cols,
            FloatWeights::F16(_) => 2 * cols,
            FloatWeights::I8 { .. } => cols,
            FloatWeights::Block { bits, .. } => bits.row_bytes(cols),
        }
    }

    /// Per-row scale applied after the dot product (1 for float weights).
    fn row_scale(&self, r: usize) -> f32 {
        match self {
            FloatWeights::I8 { scales, .. } => scales[r],
            _ => 1.0,
        }
    }
}

/// 8-bit absmax quantization of each row of `w` `[rows, cols]`: `s = max|w| / 127`,
/// `code = RoundClip(w / s, -127, 127)`. Returns codes and scales.
pub fn quantize_rows_int8(w: &[f32], rows: usize, cols: usize) -> (Vec<i8>, Vec<f32>) {
    assert_eq!(
        w.len(),
        rows * cols,
        "quantize_rows_int8: [rows, cols] weights"
    );
    quantize_rows_int8_from(rows, cols, |r, out| {
        out.copy_from_slice(&w[r * cols..(r + 1) * cols])
    })
}

/// [`quantize_rows_int8`] of a matrix given a row at a time (`row_into(r, out)` writes row
/// `r`), in parallel parts of rows, so an f16 embedding is never widened whole.
pub fn quantize_rows_int8_from(
    rows: usize,
    cols: usize,
    row_into: impl Fn(usize, &mut [f32]) + Sync,
) -> (Vec<i8>, Vec<f32>) {
    const PART_ROWS: usize = 64;
    let done = crate::parallel::map_parts(rows.div_ceil(PART_ROWS), |p| {
        let (r0, r1) = (PART_ROWS * p, (PART_ROWS * p + PART_ROWS).min(rows));
        let mut row = vec![0.0f32; cols];
        let mut codes = vec![0i8; (r1 - r0) * cols];
        let mut scales = vec![0.0f32; r1 - r0];
        for ((r, out), scale) in (r0..r1)
            .zip(codes.chunks_exact_mut(cols.max(1)))
            .zip(&mut scales)
        {
            row_into(r, &mut row);
            let absmax = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            *scale = absmax / 127.0;
            if absmax > 0.0 {
                for (o, &v) in out.iter_mut().zip(&row) {
                    *o = crate::quant::round_clip(v / *scale, -127.0, 127.0) as i8;
                }
            }
        }
        (codes, scales)
    });
    let mut codes = Vec::with_capacity(rows * cols);
    let mut scales = Vec::with_capacity(rows);
    for (c, s) in done {
        codes.extend_from_slice(&c);
        scales.extend_from_slice(&s);
    }
    (codes, scales)
}

/// Tokens sharing one pass over a weight row (the row stays in L1 between them).
const TOKEN_TILE: usize = 4;
/// Rows the AVX-512 tile takes at once: each activation load then feeds 3 fused multiply-adds,
/// not 1 (with one row per call the loads, not the multiply-adds, bounded it).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const WIDE_ROWS: usize = 3;
/// Tokens the AVX-512 tile takes at once: each converted weight vector then feeds 8 fused
/// multiply-adds; 3 rows × 8 tokens (24 accumulators) beat 4 × 4
/// (reports/kernels.md § Decisions: WIDE_TOKENS).
const WIDE_TOKENS: usize = 8;
/// Rows per parallel work unit: large enough to amortize scheduling, small enough to balance.
const ROWS_PER_TASK: usize = 256;
/// Weight bytes of the rows that every token tile passes over in turn. Rows outermost, one row
/// for all token tiles, read the whole activation batch per row from L2; groups of 64 KiB keep
/// each tile's activations in L1 over the group (reports/kernels.md § Decisions:
/// ROW_GROUP_BYTES). Each dot product is computed as before, so results are unchanged.
const ROW_GROUP_BYTES: usize = 64 * 1024;

/// `y` `[tokens, rows]` from `w` `[rows, cols]` and `x` `[tokens, cols]`, on the active path.
pub fn float_matmul(
    w: FloatWeights,
    rows: usize,
    cols: usize,
    x: &[f32],
    y: &mut [f32],
) -> Result<(), KernelError> {
    float_matmul_with(active_path()?, w, rows, cols, x, y)
}

fn check(
    w: &FloatWeights,
    rows: usize,
    cols: usize,
    x: &[f32],
    y: &[f32],
) -> Result<usize, KernelError> {
    if cols == 0 {
        return Err(KernelError::InvalidSize {
            what: "float matmul columns",
            found: 0,
            reason: "must be non-zero",
        });
    }
    if let FloatWeights::Block {
        bits,
        codes,
        scales,
    } = w
    {
        block_quant::check_cols(cols)?;
        if codes.len() != rows * bits.row_bytes(cols) {
            return Err(KernelError::LengthMismatch {
                what: "block-quantized codes [rows, row bytes]",
                expected: rows * bits.row_bytes(cols),
                found: codes.len(),
            });
        }
        if scales.len() != rows * cols / BLOCK {
            return Err(KernelError::LengthMismatch {
                what: "block scales [rows, cols / 32]",
                expected: rows * cols / BLOCK,
                found: scales.len(),
            });
        }
    }
    if w.len() != rows * cols {
        return Err(KernelError::LengthMismatch {
            what: "float weights [rows, cols]",
            expected: rows * cols,
            found: w.len(),
        });
    }
    if let FloatWeights::I8 { scales, .. } = w {
        if scales.len() != rows {
            return Err(KernelError::LengthMismatch {
                what: "8-bit weight row scales [rows]",
                expected: rows,
                found: scales.len(),
            });
        }
    }
    if !x.len().is_multiple_of(cols) {
        return Err(KernelError::LengthMismatch {
            what: "float activations [tokens, cols] (a multiple of cols)",
            expected: x.len().div_ceil(cols) * cols,
            found: x.len(),
        });
    }
    let tokens = x.len() / cols;
    if y.len() != tokens * rows {
        return Err(KernelError::LengthMismatch {
            what: "float matmul output [tokens, rows]",
            expected: tokens * rows,
            found: y.len(),
        });
    }
    Ok(tokens)
}

/// As [`float_matmul`] on an explicit path.
pub fn float_matmul_with(
    path: KernelPath,
    w: FloatWeights,
    rows: usize,
    cols: usize,
    x: &[f32],
    y: &mut [f32],
) -> Result<(), KernelError> {
    path.check_supported()?;
    let tokens = check(&w, rows, cols, x, y)?;
    if rows == 0 || tokens == 0 {
        return Ok(());
    }
    let tasks: Vec<(usize, usize)> = (0..rows)
        .step_by(ROWS_PER_TASK)
        .map(|r0| (r0, (r0 + ROWS_PER_TASK).min(rows)))
        .collect();
    let parts: Vec<Vec<f32>> = match w {
        FloatWeights::Block {
            bits,
            codes,
            scales,
        } if block_quant::int4_product_applies(bits, cols) => {
            let acts = block_quant::Int4HeadActs::new(x, cols);
            let dot = block_quant::Dot4::for_path(path);
            let (row_bytes, row_scales) = (bits.row_bytes(cols), cols / BLOCK);
            crate::parallel::map_parts(tasks.len(), |i| {
                let (r0, r1) = tasks[i];
                let n = r1 - r0;
                let mut out = vec![0.0f32; tokens * n];
                for r in r0..r1 {
                    let row = &codes[r * row_bytes..][..row_bytes];
                    let sc = &scales[r * row_scales..][..row_scales];
                    for t in 0..tokens {
                        out[t * n + r - r0] = dot.dot(row, sc, &acts, t);
                    }
                }
                out
            })
        }
        _ => crate::parallel::map_parts(tasks.len(), |i| {
            let (r0, r1) = tasks[i];
            let mut out = vec![0.0f32; tokens * (r1 - r0)];
            rows_block(path, &w, cols, x, tokens, r0, r1, &mut out);
            out
        }),
    };
    for (&(r0, r1), part) in tasks.iter().zip(&parts) {
        let n = r1 - r0;
        for t in 0..tokens {
            y[t * rows + r0..t * rows + r1].copy_from_slice(&part[t * n..(t + 1) * n]);
        }
    }
    Ok(())
}

/// Rows `r0..r1` for every token into `out` `[tokens, r1 - r0]`.
#[allow(clippy::too_many_arguments)]
fn rows_block(
    path: KernelPath,
    w: &FloatWeights,
    cols: usize,
    x: &[f32],
    tokens: usize,
    r0: usize,
    r1: usize,
    out: &mut [f32],
) {
    let n = r1 - r0;
    let wide = uses_wide_tile(path, w);
    let token_tile = if wide { WIDE_TOKENS } else { TOKEN_TILE };
    // Rows per group: the group's weights stay in L2 while every token tile passes over them.
    let group = (ROW_GROUP_BYTES / w.row_bytes(cols)).max(1);
    let tiles = tokens.div_ceil(token_tile);
    for g0 in (r0..r1).step_by(group) {
        let g1 = (g0 + group).min(r1);
        let next = g1..(g1 + group).min(r1);
        for (ti, t0) in (0..tokens).step_by(token_tile).enumerate() {
            let tile = (tokens - t0).min(token_tile);
            // Only the AVX-512 tile prefetches the next group.
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (tiles, &next, ti);
            // Row r's sums for this token tile into `out`, scaled for 8-bit rows.
            let mut store = |r: usize, sums: &[f32]| {
                let scale = w.row_scale(r);
                for (i, s) in sums.iter().take(tile).enumerate() {
                    out[(t0 + i) * n + (r - r0)] = match w {
                        FloatWeights::I8 { .. } => *s * scale,
                        _ => *s,
                    };
                }
            };
            #[cfg(target_arch = "x86_64")]
            if wide {
                let calls = (g1 - g0).div_ceil(WIDE_ROWS);
                for (q, r) in (g0..g1).step_by(WIDE_ROWS).enumerate() {
                    // The first pass over a group reads it from memory; ask for the next
                    // group's bytes meanwhile, a share per tile, so that the next group's first
                    // pass finds its rows on the way (with one token tile, the only pass).
                    let ahead =
                        simd::Ahead::share(w, next.clone(), cols, ti * calls + q, tiles * calls);
                    let nr = (g1 - r).min(WIDE_ROWS);
                    let mut sums = [[0.0f32; WIDE_TOKENS]; WIDE_ROWS];
                    let xs = &x[t0 * cols..(t0 + tile) * cols];
                    simd::wide_tile(w, (r, nr), cols, xs, tile, &mut sums, ahead);
                    for (j, row_sums) in sums.iter().take(nr).enumerate() {
                        store(r + j, row_sums);
                    }
                }
                continue;
            }
            let xs: [&[f32]; TOKEN_TILE] =
                std::array::from_fn(|i| &x[(t0 + i.min(tile - 1)) * cols..][..cols]);
            for r in g0..g1 {
                let mut sums = [0.0f32; TOKEN_TILE];
                dot_tile(path, w, r, cols, &xs, tile, &mut sums);
                store(r, &sums);
            }
        }
    }
}

/// Whether `path` runs the AVX-512 tile of [`WIDE_ROWS`] rows × [`WIDE_TOKENS`] tokens.
fn uses_wide_tile(path: KernelPath, w: &FloatWeights) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        path == KernelPath::Avx512 && simd::available(w)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (path, w);
        false
    }
}

fn dot_tile(
    path: KernelPath,
    w: &FloatWeights,
    r: usize,
    cols: usize,
    xs: &[&[f32]; TOKEN_TILE],
    tile: usize,
    sums: &mut [f32; TOKEN_TILE],
) {
    #[cfg(target_arch = "x86_64")]
    if path != KernelPath::Scalar && simd::available(w) {
        simd::dot_tile(w, r, cols, xs, tile, sums);
        return;
    }
    let _ = path;
    for i in 0..tile {
        sums[i] = dot_row_scalar(w, r, cols, xs[i]);
    }
}

/// Row `r`'s unscaled sum with `x` in the defined order (8-bit rows: before the row scale).
fn dot_row_scalar(w: &FloatWeights, r: usize, cols: usize, x: &[f32]) -> f32 {
    match w {
        FloatWeights::F32(w) => dot_scalar(&w[r * cols..][..cols], x, |v| *v),
        FloatWeights::F16(w) => dot_scalar(&w[r * cols..][..cols], x, |v| v.to_f32()),
        FloatWeights::I8 { codes, .. } => dot_scalar(&codes[r * cols..][..cols], x, |c| *c as f32),
        FloatWeights::Block { .. } => dot_scalar_at(cols, x, w.block_row(r, cols)),
    }
}

/// The defined summation order (module docs), in scalar code.
fn dot_scalar<T>(w: &[T], x: &[f32], to_f32: impl Fn(&T) -> f32) -> f32 {
    dot_scalar_at(w.len(), x, |k| to_f32(&w[k]))
}

/// [`dot_scalar`] over `n` weights given by index.
fn dot_scalar_at(n: usize, x: &[f32], w_at: impl Fn(usize) -> f32) -> f32 {
    let blocks = n / 16;
    let (mut a, mut b) = ([0.0f32; 8], [0.0f32; 8]);
    for blk in 0..blocks {
        for l in 0..8 {
            let k = 16 * blk + l;
            a[l] = w_at(k).mul_add(x[k], a[l]);
            b[l] = w_at(k + 8).mul_add(x[k + 8], b[l]);
        }
    }
    let s: [f32; 8] = std::array::from_fn(|l| a[l] + b[l]);
    let mut sum = ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]));
    for (k, xk) in x.iter().enumerate().take(n).skip(16 * blocks) {
        sum = w_at(k).mul_add(*xk, sum);
    }
    sum
}

/// Definition of the product: [`dot_scalar`] for every row and token.
pub fn float_matmul_reference(
    w: FloatWeights,
    rows: usize,
    cols: usize,
    x: &[f32],
) -> Result<Vec<f32>, KernelError> {
    let tokens = x.len() / cols.max(1);
    let mut y = vec![0.0; tokens * rows];
    check(&w, rows, cols, x, &y)?;
    if let FloatWeights::Block {
        bits,
        codes,
        scales,
    } = w
    {
        if block_quant::int4_product_applies(bits, cols) {
            let acts = block_quant::Int4HeadActs::new(x, cols);
            let (row_bytes, row_scales) = (bits.row_bytes(cols), cols / BLOCK);
            for t in 0..tokens {
                for r in 0..rows {
                    y[t * rows + r] = block_quant::dot4_scalar(
                        &codes[r * row_bytes..][..row_bytes],
                        &scales[r * row_scales..][..row_scales],
                        &acts,
                        t,
                    );
                }
            }
            return Ok(y);
        }
    }
    for t in 0..tokens {
        let xt = &x[t * cols..(t + 1) * cols];
        for r in 0..rows {
            let sum = dot_row_scalar(&w, r, cols, xt);
            y[t * rows + r] = match w {
                FloatWeights::I8 { scales, .. } => sum * scales[r],
                _ => sum,
            };
        }
    }
    Ok(y)
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod simd {
    use super::{FloatWeights, TOKEN_TILE, WIDE_ROWS, WIDE_TOKENS};
    use crate::block_quant::{self, BlockBits, BLOCK, GROUP};
    use half::f16;
    use std::arch::x86_64::*;

    /// Cache lines a tile asks for ahead of need, one per column block: share `share` of
    /// `shares` of the bytes of some rows (hints only: nothing is dereferenced). [`Ahead::step`]
    /// asks for the next line, then keeps asking for the last (already requested, so free).
    /// One request per step and no branch: with a loop over the lines due at each block, LLVM
    /// kept up to eight of the 3 × 8 tile's 24 accumulators on the stack.
    #[derive(Clone, Copy)]
    pub struct Ahead {
        next: usize,
        last: usize,
    }

    impl Ahead {
        pub fn share(
            w: &FloatWeights,
            rows: std::ops::Range<usize>,
            cols: usize,
            share: usize,
            shares: usize,
        ) -> Ahead {
            let base = match w {
                FloatWeights::F32(w) => w.as_ptr() as usize,
                FloatWeights::F16(w) => w.as_ptr() as usize,
                FloatWeights::I8 { codes, .. } => codes.as_ptr() as usize,
                FloatWeights::Block { codes, .. } => codes.as_ptr() as usize,
            };
            let row_bytes = w.row_bytes(cols);
            let (start, len) = (rows.start * row_bytes, rows.len() * row_bytes);
            let (from, to) = ((len * share / shares) & !63, len * (share + 1) / shares);
            let lines = to.saturating_sub(from).div_ceil(64);
            let next = base + start + from;
            Ahead {
                next,
                last: next + 64 * lines.saturating_sub(1),
            }
        }

        #[inline(always)]
        fn step(&mut self) {
            // SAFETY: SSE is part of x86_64; a prefetch never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(self.next as *const i8) };
            self.next = (self.next + 64).min(self.last);
        }
    }

    /// AVX2 + FMA are guaranteed by the non-scalar paths; f16 weights also need F16C.
    pub fn available(w: &FloatWeights) -> bool {
        match w {
            FloatWeights::F32(_) | FloatWeights::I8 { .. } | FloatWeights::Block { .. } => true,
            FloatWeights::F16(_) => std::arch::is_x86_feature_detected!("f16c"),
        }
    }

    pub fn dot_tile(
        w: &FloatWeights,
        r: usize,
        cols: usize,
        xs: &[&[f32]; TOKEN_TILE],
        tile: usize,
        sums: &mut [f32; TOKEN_TILE],
    ) {
        // One instantiation per tile size, so a lone token costs one dot product, not four.
        macro_rules! by_tile {
            ($f:ident, $w:expr) => {
                match tile {
                    1 => $f::<1>($w, xs, sums),
                    2 => $f::<2>($w, xs, sums),
                    3 => $f::<3>($w, xs, sums),
                    _ => $f::<4>($w, xs, sums),
                }
            };
        }
        match w {
            // SAFETY: the caller checked `path != Scalar`, so AVX2 and FMA are present (the
            // dispatcher only offers supported paths); row `r` has `cols` values (checked shape).
            FloatWeights::F32(w) => unsafe { by_tile!(tile_f32, &w[r * cols..][..cols]) },
            // SAFETY: as above, and `available` checked F16C.
            FloatWeights::F16(w) => unsafe { by_tile!(tile_f16, &w[r * cols..][..cols]) },
            // SAFETY: as for f32.
            FloatWeights::I8 { codes, .. } => unsafe {
                by_tile!(tile_i8, &codes[r * cols..][..cols])
            },
            FloatWeights::Block {
                bits,
                codes,
                scales,
            } => {
                let row_bytes = bits.row_bytes(cols);
                let row = BlockRow {
                    bits: *bits,
                    codes: &codes[r * row_bytes..][..row_bytes],
                    scales: &scales[r * cols / BLOCK..][..cols / BLOCK],
                };
                // SAFETY: as for f32; `row` holds the codes and scales of `cols` weights
                // (checked shape, cols a multiple of 32).
                unsafe { by_tile!(tile_block, row) }
            }
        }
    }

    /// One row of a block-quantized matrix.
    #[derive(Clone, Copy)]
    struct BlockRow<'a> {
        bits: BlockBits,
        codes: &'a [u8],
        scales: &'a [f16],
    }

    /// `tile_kernel` for a block-quantized row: each group of 16 widened to `d · q` (exact),
    /// then the same fused multiply-adds in the same order; `cols` is a multiple of 32, so
    /// there is no tail.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_block<const N: usize>(
        row: BlockRow,
        xs: &[&[f32]; TOKEN_TILE],
        sums: &mut [f32; TOKEN_TILE],
    ) {
        let groups = row.scales.len() * (BLOCK / GROUP);
        assert!(row.codes.len() >= groups * row.bits.group_bytes());
        assert!(xs.iter().take(N).all(|x| x.len() >= groups * GROUP));
        let mut a = [_mm256_setzero_ps(); N];
        let mut b = [_mm256_setzero_ps(); N];
        let gb = row.bits.group_bytes();
        for g in 0..groups {
            let d = row.scales[g / 2].to_f32();
            // SAFETY: AVX2 is enabled; group g's bytes lie within `codes` (asserted).
            let (w0, w1) = unsafe {
                block_quant::simd::group_avx2(row.bits, row.codes.as_ptr().add(g * gb), d)
            };
            for i in 0..N {
                let xp = xs[i].as_ptr();
                // SAFETY: 16·g + 16 <= cols, within `xs[i]` (asserted).
                unsafe {
                    a[i] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp.add(16 * g)), a[i]);
                    b[i] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xp.add(16 * g + 8)), b[i]);
                }
            }
        }
        for i in 0..N {
            sums[i] = reduce(_mm256_add_ps(a[i], b[i]));
        }
    }

    /// `((s0+s4)+(s2+s6)) + ((s1+s5)+(s3+s7))`, the order the scalar reference uses.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn reduce(s: __m256) -> f32 {
        let quad = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)); // s_i + s_{i+4}
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad)); // (q0+q2, q1+q3)
        let one = _mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)); // (q0+q2)+(q1+q3)
        _mm_cvtss_f32(one)
    }

    /// [`reduce`] of a 16-lane accumulator's two halves added lane-wise (lanes `l` and `l + 8`).
    #[inline]
    #[target_feature(enable = "avx512f,avx2")]
    pub(crate) fn reduce_halves(v: __m512) -> f32 {
        let a = _mm512_castps512_ps256(v);
        let b = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        reduce(_mm256_add_ps(a, b))
    }

    macro_rules! tile_kernel {
        ($name:ident, $t:ty, $features:literal, $load:expr) => {
            /// `sums[i] = Σ_k w[k]·xs[i][k]` for the first `N` tokens, in the defined order.
            #[target_feature(enable = $features)]
            unsafe fn $name<const N: usize>(
                w: &[$t],
                xs: &[&[f32]; TOKEN_TILE],
                sums: &mut [f32; TOKEN_TILE],
            ) {
                let cols = w.len();
                let blocks = cols / 16;
                let mut a = [_mm256_setzero_ps(); N];
                let mut b = [_mm256_setzero_ps(); N];
                let wp = w.as_ptr();
                for blk in 0..blocks {
                    // SAFETY: 16·blk + 16 <= cols, within `w` and every `xs[i]` (len cols).
                    let (w0, w1) =
                        unsafe { ($load(wp.add(16 * blk)), $load(wp.add(16 * blk + 8))) };
                    for i in 0..N {
                        let xp = xs[i].as_ptr();
                        // SAFETY: as above.
                        unsafe {
                            a[i] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp.add(16 * blk)), a[i]);
                            b[i] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xp.add(16 * blk + 8)), b[i]);
                        }
                    }
                }
                for i in 0..N {
                    let mut sum = reduce(_mm256_add_ps(a[i], b[i]));
                    for k in 16 * blocks..cols {
                        sum = f32::from(w[k]).mul_add(xs[i][k], sum);
                    }
                    sums[i] = sum;
                }
            }
        };
    }

    // SAFETY (for the loads): callers pass pointers with 8 readable values.
    tile_kernel!(tile_f32, f32, "avx2,fma", |p: *const f32| _mm256_loadu_ps(
        p
    ));
    tile_kernel!(tile_f16, f16, "avx2,fma,f16c", |p: *const f16| {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    });
    tile_kernel!(tile_i8, i8, "avx2,fma", |p: *const i8| {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
    });

    /// Rows `r..r + nr` (`nr ≤ 3`) for the `tile ≤ 8` tokens of `xs` (`[tile, cols]`) on the
    /// AVX-512 tile (the caller checked AVX-512 F and `available`), asking for the lines of
    /// `ahead` on the way.
    pub fn wide_tile(
        w: &FloatWeights,
        (r, nr): (usize, usize),
        cols: usize,
        xs: &[f32],
        tile: usize,
        sums: &mut [[f32; WIDE_TOKENS]; WIDE_ROWS],
        ahead: Ahead,
    ) {
        macro_rules! by_shape {
            ($f:ident, $w:expr) => {{
                // Rows r..r + nr, one after another; the kernel's R is nr.
                let rows = &$w[r * cols..(r + nr) * cols];
                assert_eq!(xs.len(), tile * cols, "wide tile: activations [tile, cols]");
                match (nr, tile) {
                    (1, 1) => $f::<1, 1>(rows, cols, xs, sums, ahead),
                    (1, 2) => $f::<1, 2>(rows, cols, xs, sums, ahead),
                    (1, 3) => $f::<1, 3>(rows, cols, xs, sums, ahead),
                    (1, 4) => $f::<1, 4>(rows, cols, xs, sums, ahead),
                    (1, 5) => $f::<1, 5>(rows, cols, xs, sums, ahead),
                    (1, 6) => $f::<1, 6>(rows, cols, xs, sums, ahead),
                    (1, 7) => $f::<1, 7>(rows, cols, xs, sums, ahead),
                    (1, _) => $f::<1, 8>(rows, cols, xs, sums, ahead),
                    (2, 1) => $f::<2, 1>(rows, cols, xs, sums, ahead),
                    (2, 2) => $f::<2, 2>(rows, cols, xs, sums, ahead),
                    (2, 3) => $f::<2, 3>(rows, cols, xs, sums, ahead),
                    (2, 4) => $f::<2, 4>(rows, cols, xs, sums, ahead),
                    (2, 5) => $f::<2, 5>(rows, cols, xs, sums, ahead),
                    (2, 6) => $f::<2, 6>(rows, cols, xs, sums, ahead),
                    (2, 7) => $f::<2, 7>(rows, cols, xs, sums, ahead),
                    (2, _) => $f::<2, 8>(rows, cols, xs, sums, ahead),
                    (_, 1) => $f::<3, 1>(rows, cols, xs, sums, ahead),
                    (_, 2) => $f::<3, 2>(rows, cols, xs, sums, ahead),
                    (_, 3) => $f::<3, 3>(rows, cols, xs, sums, ahead),
                    (_, 4) => $f::<3, 4>(rows, cols, xs, sums, ahead),
                    (_, 5) => $f::<3, 5>(rows, cols, xs, sums, ahead),
                    (_, 6) => $f::<3, 6>(rows, cols, xs, sums, ahead),
                    (_, 7) => $f::<3, 7>(rows, cols, xs, sums, ahead),
                    (_, _) => $f::<3, 8>(rows, cols, xs, sums, ahead),
                }
            }};
        }
        match w {
            // SAFETY: the caller checked the AVX-512 path (so AVX-512 F, AVX2 and FMA) and
            // `available` (F16C for f16); every row slice has `cols` values (checked shape).
            FloatWeights::F32(w) => unsafe { by_shape!(wide_f32, w) },
            // SAFETY: as above.
            FloatWeights::F16(w) => unsafe { by_shape!(wide_f16, w) },
            // SAFETY: as above.
            FloatWeights::I8 { codes, .. } => unsafe { by_shape!(wide_i8, codes) },
            FloatWeights::Block {
                bits,
                codes,
                scales,
            } => {
                let row_bytes = bits.row_bytes(cols);
                let rows = BlockRows {
                    bits: *bits,
                    codes: &codes[r * row_bytes..(r + nr) * row_bytes],
                    scales: &scales[r * cols / BLOCK..(r + nr) * cols / BLOCK],
                    cols,
                };
                assert_eq!(xs.len(), tile * cols, "wide tile: activations [tile, cols]");
                macro_rules! by_tokens {
                    ($r:literal) => {
                        // SAFETY: as for f32; `rows` holds `nr` rows' codes and scales.
                        unsafe {
                            match tile {
                                1 => wide_block::<$r, 1>(rows, xs, sums, ahead),
                                2 => wide_block::<$r, 2>(rows, xs, sums, ahead),
                                3 => wide_block::<$r, 3>(rows, xs, sums, ahead),
                                4 => wide_block::<$r, 4>(rows, xs, sums, ahead),
                                5 => wide_block::<$r, 5>(rows, xs, sums, ahead),
                                6 => wide_block::<$r, 6>(rows, xs, sums, ahead),
                                7 => wide_block::<$r, 7>(rows, xs, sums, ahead),
                                _ => wide_block::<$r, 8>(rows, xs, sums, ahead),
                            }
                        }
                    };
                }
                match nr {
                    1 => by_tokens!(1),
                    2 => by_tokens!(2),
                    _ => by_tokens!(3),
                }
            }
        }
    }

    /// `R` consecutive rows of a block-quantized matrix with `cols` weights each.
    #[derive(Clone, Copy)]
    struct BlockRows<'a> {
        bits: BlockBits,
        codes: &'a [u8],
        scales: &'a [f16],
        cols: usize,
    }

    /// `wide_kernel` for block-quantized rows: each row's group widened to `d · q` (exact),
    /// then the same fused multiply-adds; `cols` is a multiple of 32, so there is no tail.
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn wide_block<const R: usize, const N: usize>(
        rows: BlockRows,
        xs: &[f32],
        sums: &mut [[f32; WIDE_TOKENS]; WIDE_ROWS],
        mut ahead: Ahead,
    ) {
        let cols = rows.cols;
        let (gb, row_bytes) = (rows.bits.group_bytes(), rows.bits.row_bytes(cols));
        let row_scales = cols / BLOCK;
        assert!(rows.codes.len() >= R * row_bytes && rows.scales.len() >= R * row_scales);
        assert!(xs.len() >= N * cols);
        let groups = cols / GROUP;
        let mut acc = [[_mm512_setzero_ps(); N]; R];
        let (cp, xp) = (rows.codes.as_ptr(), xs.as_ptr());
        for g in 0..groups {
            ahead.step();
            let wv: [__m512; R] = std::array::from_fn(|j| {
                let d = rows.scales[j * row_scales + g / 2].to_f32();
                // SAFETY: AVX-512 F is enabled; group g of row j lies within `codes` (asserted).
                unsafe {
                    block_quant::simd::group_avx512(rows.bits, cp.add(j * row_bytes + g * gb), d)
                }
            });
            for i in 0..N {
                // SAFETY: 16·g + 16 <= cols, within token i's values of `xs` (asserted).
                let xv = unsafe { _mm512_loadu_ps(xp.add(i * cols + 16 * g)) };
                for (acc_j, &wj) in acc.iter_mut().zip(&wv) {
                    acc_j[i] = _mm512_fmadd_ps(wj, xv, acc_j[i]);
                }
            }
        }
        // As in `wide_kernel`: the epilogue reads a copy so the accumulators stay in registers.
        let done = std::hint::black_box(acc);
        for j in 0..R {
            for i in 0..N {
                sums[j][i] = reduce_halves(done[j][i]);
            }
        }
    }

    /// The AVX-512 form of `tile_kernel`, over `R` rows at once: one 16-lane accumulator per
    /// row and token holds the definition's two 8-lane sums side by side (lanes 0–7 are `a`,
    /// columns 16b + l; lanes 8–15 are `b`, columns 16b + 8 + l), so one fused multiply-add per
    /// row, token and block does both, and `a + b` is the sum of the register's two halves: the
    /// same operations on the same values as the AVX2 tile and the scalar reference.
    macro_rules! wide_kernel {
        ($name:ident, $t:ty, $features:literal, $load:expr) => {
            /// `sums[j][i] = Σ_k rows[j · cols + k]·xs[i · cols + k]` for the `R` rows and the `N`
            /// tokens of `xs` (`[N, cols]`), in the defined order.
            #[target_feature(enable = $features)]
            unsafe fn $name<const R: usize, const N: usize>(
                rows: &[$t],
                cols: usize,
                xs: &[f32],
                sums: &mut [[f32; WIDE_TOKENS]; WIDE_ROWS],
                mut ahead: Ahead,
            ) {
                assert!(rows.len() >= R * cols && xs.len() >= N * cols);
                let blocks = cols / 16;
                let mut acc = [[_mm512_setzero_ps(); N]; R];
                let (wp, xp) = (rows.as_ptr(), xs.as_ptr());
                for blk in 0..blocks {
                    ahead.step();
                    // SAFETY: 16·blk + 16 <= cols, within every row and every token's `cols`
                    // values of `xs` (asserted).
                    let wv: [__m512; R] =
                        std::array::from_fn(|j| unsafe { $load(wp.add(j * cols + 16 * blk)) });
                    for i in 0..N {
                        // SAFETY: as above.
                        let xv = unsafe { _mm512_loadu_ps(xp.add(i * cols + 16 * blk)) };
                        for (acc_j, &wj) in acc.iter_mut().zip(&wv) {
                            acc_j[i] = _mm512_fmadd_ps(wj, xv, acc_j[i]);
                        }
                    }
                }
                // The epilogue reads a copy: its loops index `acc` by loop variables, and LLVM
                // then kept up to eight of the 3 × 8 tile's 24 accumulators on the stack
                // through the main loop. The copy (`black_box`, so it is not folded back) lets
                // them all stay in registers; it costs one store each per tile.
                let done = std::hint::black_box(acc);
                for j in 0..R {
                    for i in 0..N {
                        let mut sum = reduce_halves(done[j][i]);
                        for k in 16 * blocks..cols {
                            sum = f32::from(rows[j * cols + k]).mul_add(xs[i * cols + k], sum);
                        }
                        sums[j][i] = sum;
                    }
                }
            }
        };
    }

    // SAFETY (for the loads): callers pass pointers with 16 readable values.
    wide_kernel!(wide_f32, f32, "avx512f,avx2,fma", |p: *const f32| {
        _mm512_loadu_ps(p)
    });
    wide_kernel!(wide_f16, f16, "avx512f,avx2,fma,f16c", |p: *const f16| {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    });
    wide_kernel!(wide_i8, i8, "avx512f,avx2,fma", |p: *const i8| {
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i)))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        // A small LCG: deterministic, spread over [-1, 1).
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[test]
    fn known_answer() {
        // W = [[1, 2, 3], [-1, 0, 0.5]], x = [[1, 1, 2]]: y = [9, 0].
        let w = [1.0, 2.0, 3.0, -1.0, 0.0, 0.5];
        let mut y = vec![0.0; 2];
        for path in KernelPath::supported() {
            float_matmul_with(path, FloatWeights::F32(&w), 2, 3, &[1.0, 1.0, 2.0], &mut y).unwrap();
            assert_eq!(y, vec![9.0, 0.0], "{path}");
        }
    }

    #[test]
    fn shape_errors_are_typed() {
        let w = [0.0f32; 6];
        let mut y = vec![0.0; 2];
        let e = float_matmul(FloatWeights::F32(&w), 2, 4, &[0.0; 4], &mut y).unwrap_err();
        assert!(matches!(e, KernelError::LengthMismatch { .. }), "{e}");
        let e = float_matmul(FloatWeights::F32(&w), 2, 3, &[0.0; 4], &mut y).unwrap_err();
        assert!(matches!(e, KernelError::LengthMismatch { .. }), "{e}");
        let e = float_matmul(FloatWeights::F32(&w), 2, 3, &[0.0; 6], &mut y).unwrap_err();
        assert!(e.to_string().contains("output"), "{e}");
    }

    /// Rows past one group (`ROW_GROUP_BYTES`) and tokens past one tile: each pass asks for
    /// the next group's lines ahead, and the results are still the definition's, bit for bit.
    #[test]
    fn many_row_groups_and_token_tiles_equal_reference() {
        // 2080 columns: whole blocks of 32 but not chunks of 64, so the 4-bit rows take the
        // widening tiles; at 2048 they take the integer product.
        for (rows, cols, tokens) in [(70, 2056, 9), (150, 2048, 11), (150, 2080, 10)] {
            let w32 = values(rows * cols, 5);
            let w16: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
            let (c8, s8) = quantize_rows_int8(&w32, rows, cols);
            let x = values(tokens * cols, 6);
            let mut ws = vec![
                FloatWeights::F32(&w32),
                FloatWeights::F16(&w16),
                FloatWeights::I8 {
                    codes: &c8,
                    scales: &s8,
                },
            ];
            let blocks: Vec<_> = [BlockBits::Six, BlockBits::Four]
                .into_iter()
                .filter(|_| cols.is_multiple_of(BLOCK))
                .map(|bits| {
                    let (c, s) = block_quant::quantize_rows(&w32, rows, cols, bits).unwrap();
                    (bits, c, s)
                })
                .collect();
            for (bits, codes, scales) in &blocks {
                ws.push(FloatWeights::Block {
                    bits: *bits,
                    codes,
                    scales,
                });
            }
            for w in ws {
                assert!(rows > 2 * ROW_GROUP_BYTES / w.row_bytes(cols));
                let want = float_matmul_reference(w, rows, cols, &x).unwrap();
                for path in KernelPath::supported() {
                    let mut y = vec![0.0; tokens * rows];
                    float_matmul_with(path, w, rows, cols, &x, &mut y).unwrap();
                    let same = y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{path}, {} bytes per row", w.row_bytes(cols));
                }
            }
        }
    }

    #[test]
    fn block_shapes_are_checked() {
        let (c, s) = block_quant::quantize_rows(&values(64, 1), 2, 32, BlockBits::Four).unwrap();
        let w = FloatWeights::Block {
            bits: BlockBits::Four,
            codes: &c,
            scales: &s,
        };
        let mut y = vec![0.0; 2];
        float_matmul(w, 2, 32, &[1.0; 32], &mut y).unwrap();
        // The same bytes read as 6-bit codes: wrong length, named.
        let w6 = FloatWeights::Block {
            bits: BlockBits::Six,
            codes: &c,
            scales: &s,
        };
        let e = float_matmul(w6, 2, 32, &[1.0; 32], &mut y).unwrap_err();
        assert!(e.to_string().contains("block"), "{e}");
        let short = FloatWeights::Block {
            bits: BlockBits::Four,
            codes: &c,
            scales: &s[..1],
        };
        let e = float_matmul(short, 2, 32, &[1.0; 32], &mut y).unwrap_err();
        assert!(e.to_string().contains("scales"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn every_path_equals_reference_bit_for_bit(
            rows in 1usize..40, cols in 1usize..150, tokens in 1usize..19, seed in 0u32..1000,
        ) {
            let w32 = values(rows * cols, seed);
            let w16: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
            let x = values(tokens * cols, seed + 1);
            let (c8, s8) = quantize_rows_int8(&w32, rows, cols);
            let w8 = FloatWeights::I8 { codes: &c8, scales: &s8 };
            for w in [FloatWeights::F32(&w32), FloatWeights::F16(&w16), w8] {
                let want = float_matmul_reference(w, rows, cols, &x).unwrap();
                for path in KernelPath::supported() {
                    let mut y = vec![0.0; tokens * rows];
                    float_matmul_with(path, w, rows, cols, &x, &mut y).unwrap();
                    let same = y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                    prop_assert!(same, "{path}: {y:?} vs {want:?}");
                }
                // And the definition is a dot product (to rounding).
                for t in 0..tokens {
                    for r in 0..rows {
                        let mut row = vec![0.0; cols];
                        w.row_into(r, cols, &mut row);
                        let exact: f64 = row.iter().zip(&x[t * cols..]).map(|(a, b)| *a as f64 * *b as f64).sum();
                        prop_assert!((want[t * rows + r] as f64 - exact).abs() < 1e-4 * (cols as f64).sqrt());
                    }
                }
            }
            // Block-quantized rows (whole blocks of 32 columns) on every path, bit for bit.
            let bcols = 32 * cols.div_ceil(32);
            let wb = values(rows * bcols, seed + 2);
            let xb = values(tokens * bcols, seed + 3);
            for bits in [BlockBits::Six, BlockBits::Four] {
                let (c, s) = block_quant::quantize_rows(&wb, rows, bcols, bits).unwrap();
                let w = FloatWeights::Block { bits, codes: &c, scales: &s };
                let want = float_matmul_reference(w, rows, bcols, &xb).unwrap();
                for path in KernelPath::supported() {
                    let mut y = vec![0.0; tokens * rows];
                    float_matmul_with(path, w, rows, bcols, &xb, &mut y).unwrap();
                    let same = y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                    prop_assert!(same, "{path} {bits:?}: {y:?} vs {want:?}");
                }
                let int4 = block_quant::int4_product_applies(bits, bcols);
                for t in 0..tokens {
                    let xt = &xb[t * bcols..(t + 1) * bcols];
                    for r in 0..rows {
                        let mut row = vec![0.0; bcols];
                        w.row_into(r, bcols, &mut row);
                        let exact: f64 = row.iter().zip(xt).map(|(a, b)| *a as f64 * *b as f64).sum();
                        // The integer product also rounds each activation to half a step of
                        // its block's absmax / 127.
                        let act_err: f64 = if int4 {
                            row.iter().enumerate().map(|(k, a)| {
                                let blk = &xt[k / 32 * 32..][..32];
                                let s = blk.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
                                (a.abs() * s) as f64 * 0.5
                            }).sum::<f64>() * 1.01
                        } else {
                            0.0
                        };
                        prop_assert!((want[t * rows + r] as f64 - exact).abs() < 1e-4 * (bcols as f64).sqrt() + act_err);
                    }
                }
            }
            // The 8-bit rows stay within half a step per weight of the f32 rows.
            for r in 0..rows {
                let mut row = vec![0.0; cols];
                w8.row_into(r, cols, &mut row);
                for (a, b) in row.iter().zip(&w32[r * cols..(r + 1) * cols]) {
                    prop_assert!((a - b).abs() <= s8[r] * 0.5 + 1e-7);
                }
            }
        }
    }
}
