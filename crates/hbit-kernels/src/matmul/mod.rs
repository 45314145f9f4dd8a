//! Ternary × quantized-activation matrix kernels (BitLinear's integer form, DESIGN.md §1):
//!
//! `y[t, o] = alpha · s_x[t] · Σ_k Wq[o, k] · xq[t, k]`, the sum in i32.
//!
//! * [`matmul_int8`] multiplies [`RowPacked`] weights by INT8 activations with multiply-add
//!   instructions (`vpmaddubsw`, `vpdpbusd`) on 2-bit codes `w + 1`, then subtracts `Σ_k xq[t, k]`.
//! * [`matmul_int4`] multiplies [`LutPacked`] weights by INT4 activations with 16-entry lookup
//!   tables of k-group partial sums (`vpshufb`): INT4 codes keep every table entry within one byte,
//!   which INT8 codes cannot (the reason native 4-bit activations pay off on a CPU).
//!
//! One token is a GEMV, 2..N tokens a GEMM; rows are split across the current rayon pool's
//! threads. Every path computes the same i32 sums and the same f32 epilogue, so every path gives
//! bit-identical outputs; [`matmul_reference`] is the plain definition they are tested against.

/// Calls `f::<N>(args..)` for the token count `n` (one of the listed constants; the constant
/// after `;` takes everything else), so each token-tile size gets its own unrolled tile.
macro_rules! dispatch_tokens {
    ($n:expr, $f:ident, $args:tt, $($k:literal),*; $last:literal) => {
        match $n {
            $($k => $f::<$k> $args,)*
            _ => $f::<$last> $args,
        }
    };
}

mod lut;
mod mad;

use crate::cpu::{active_path, KernelPath};
use crate::error::KernelError;
use crate::pack::{LutPacked, RowPacked, LUT_ROW_BLOCK};
use crate::quant::{ActBits, QuantizedActivations, TernaryWeights};
use std::ops::Range;

/// Budget for the activations of a multiply-add token tile within one column block: half of a
/// 32 KiB L1 leaves room for the weight stream.
const MAD_L1_BUDGET_BYTES: usize = 16 * 1024;
/// Budget for the lookup tables of a token tile within one column block. Tables cost 8 bytes per
/// column and token, so a full L1's worth measured faster than half (fewer tile epilogues).
const LUT_L1_BUDGET_BYTES: usize = 32 * 1024;

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
    let parts = split_rows(w.rows(), 1, |rows| mad::dots(path, w, x, rows));
    write_output(&parts, w.rows(), w.alpha(), x, y);
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
    let parts = split_rows(w.rows(), LUT_ROW_BLOCK, |rows| lut::dots(path, w, x, rows));
    write_output(&parts, w.rows(), w.alpha(), x, y);
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
    let path = active_path()?;
    check_many(ws.len(), ys.len())?;
    for (w, y) in ws.iter().zip(ys.iter()) {
        check_operands(path, w.rows(), w.cols(), x, ActBits::Int8, y)?;
    }
    let rows: Vec<usize> = ws.iter().map(|w| w.rows()).collect();
    let parts = split_many(&rows, 1, |m, r| mad::dots(path, ws[m], x, r));
    for (m, part) in parts {
        write_output(&part, ws[m].rows(), ws[m].alpha(), x, ys[m]);
    }
    Ok(())
}

/// As [`matmul_int8_many`] for ternary × INT4 ([`LutPacked`]).
pub fn matmul_int4_many(
    ws: &[&LutPacked],
    x: &QuantizedActivations,
    ys: &mut [&mut [f32]],
) -> Result<(), KernelError> {
    let path = active_path()?;
    check_many(ws.len(), ys.len())?;
    for (w, y) in ws.iter().zip(ys.iter()) {
        check_operands(path, w.rows(), w.cols(), x, ActBits::Int4, y)?;
    }
    let rows: Vec<usize> = ws.iter().map(|w| w.rows()).collect();
    let parts = split_many(&rows, LUT_ROW_BLOCK, |m, r| lut::dots(path, ws[m], x, r));
    for (m, part) in parts {
        write_output(&part, ws[m].rows(), ws[m].alpha(), x, ys[m]);
    }
    Ok(())
}

fn check_many(matrices: usize, outputs: usize) -> Result<(), KernelError> {
    if matrices != outputs {
        return Err(KernelError::LengthMismatch {
            what: "outputs of a multi-matrix product (one per matrix)",
            expected: matrices,
            found: outputs,
        });
    }
    Ok(())
}

/// Splits the rows of several matrices (`rows[m]` each, in units of `align` rows) into one
/// contiguous share per thread of the current pool, runs `dots(m, range)` on each piece, and
/// returns the pieces grouped by matrix.
#[allow(clippy::type_complexity)]
fn split_many<F>(
    rows: &[usize],
    align: usize,
    dots: F,
) -> Vec<(usize, Vec<(Range<usize>, Vec<i32>)>)>
where
    F: Fn(usize, Range<usize>) -> Vec<i32> + Sync,
{
    // Units of `align` rows over all matrices, in order; share i takes units
    // [total·i/parts, total·(i+1)/parts), cut into one piece per matrix it touches.
    let units: Vec<usize> = rows.iter().map(|&r| r.div_ceil(align)).collect();
    let total: usize = units.iter().sum();
    let parts = rayon::current_num_threads().clamp(1, total.max(1));
    let run = |share: usize| -> Vec<(usize, Range<usize>, Vec<i32>)> {
        let (u0, u1) = (total * share / parts, total * (share + 1) / parts);
        let mut pieces = Vec::new();
        let mut first = 0; // global index of matrix m's first unit
        for (m, (&r, &n)) in rows.iter().zip(&units).enumerate() {
            let (lo, hi) = (u0.max(first), u1.min(first + n));
            if lo < hi {
                let range = ((lo - first) * align).min(r)..((hi - first) * align).min(r);
                let d = dots(m, range.clone());
                pieces.push((m, range, d));
            }
            first += n;
        }
        pieces
    };
    let results = crate::parallel::map_parts(parts, run);
    let mut by_matrix: Vec<(usize, Vec<(Range<usize>, Vec<i32>)>)> =
        (0..rows.len()).map(|m| (m, Vec::new())).collect();
    for (m, r, d) in results.into_iter().flatten() {
        by_matrix[m].1.push((r, d));
    }
    by_matrix
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
    if x.bits != bits {
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

/// Runs `dots` on contiguous row ranges (multiples of `align` rows, except the last), one per
/// thread of the current rayon pool, on the spinning kernel workers ([`crate::parallel`]). `dots(range)` returns i32 sums `[tokens, range.len()]`.
fn split_rows<F>(rows: usize, align: usize, dots: F) -> Vec<(Range<usize>, Vec<i32>)>
where
    F: Fn(Range<usize>) -> Vec<i32> + Sync,
{
    let units = rows.div_ceil(align);
    let parts = rayon::current_num_threads().clamp(1, units);
    let ranges: Vec<Range<usize>> = (0..parts)
        .map(|i| {
            let (u0, u1) = (units * i / parts, units * (i + 1) / parts);
            (u0 * align).min(rows)..(u1 * align).min(rows)
        })
        .collect();
    crate::parallel::map_parts(ranges.len(), |i| {
        (ranges[i].clone(), dots(ranges[i].clone()))
    })
}

fn write_output(
    parts: &[(Range<usize>, Vec<i32>)],
    rows: usize,
    alpha: f32,
    x: &QuantizedActivations,
    y: &mut [f32],
) {
    for (range, dots) in parts {
        let len = range.len();
        for t in 0..x.tokens {
            let out = &mut y[t * rows + range.start..t * rows + range.end];
            for (o, &d) in out.iter_mut().zip(&dots[t * len..(t + 1) * len]) {
                *o = epilogue(alpha, x.scales[t], d);
            }
        }
    }
}

#[cfg(test)]
mod tests;
