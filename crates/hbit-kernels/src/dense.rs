//! Dense f32 matrix product through the `gemm` crate: the full-precision baseline that the
//! benchmarks put beside the ternary kernels (`y = x · Wᵀ`, the same shapes as BitLinear), and the
//! training layer's product where its input carries no codes (`TernaryMatmul::apply`, the
//! full-precision model that checks rotation folding).

use crate::error::KernelError;

/// `y[t, o] = Σ_k w[o, k] · x[t, k]` for `w` `[rows, cols]`, `x` `[tokens, cols]`, `y`
/// `[tokens, rows]`, on `threads` threads of the current rayon pool.
pub fn dense_matmul_f32(
    w: &[f32],
    rows: usize,
    cols: usize,
    x: &[f32],
    tokens: usize,
    y: &mut [f32],
    threads: usize,
) -> Result<(), KernelError> {
    for (what, expected, found) in [
        ("dense weights [rows, cols]", rows * cols, w.len()),
        ("dense activations [tokens, cols]", tokens * cols, x.len()),
        ("dense output [tokens, rows]", tokens * rows, y.len()),
    ] {
        if expected != found {
            return Err(KernelError::LengthMismatch {
                what,
                expected,
                found,
            });
        }
    }
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the lengths were checked above against the strides used here: dst is
    // [tokens, rows] row-major (col stride 1, row stride rows); lhs = x [tokens, cols]
    // (col stride 1, row stride cols); rhs = wᵀ [cols, rows] read from w [rows, cols]
    // (col stride cols, row stride 1). `read_dst = false`, so dst is only written.
    unsafe {
        gemm::gemm(
            tokens,
            rows,
            cols,
            y.as_mut_ptr(),
            1,
            rows as isize,
            false,
            x.as_ptr(),
            1,
            cols as isize,
            w.as_ptr(),
            cols as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_product() {
        let (rows, cols, tokens) = (5, 7, 3);
        let w: Vec<f32> = (0..rows * cols).map(|i| (i % 5) as f32 - 2.0).collect();
        let x: Vec<f32> = (0..tokens * cols).map(|i| (i % 3) as f32 * 0.5).collect();
        let mut y = vec![0.0; tokens * rows];
        dense_matmul_f32(&w, rows, cols, &x, tokens, &mut y, 1).unwrap();
        for t in 0..tokens {
            for o in 0..rows {
                let want: f32 = (0..cols).map(|k| w[o * cols + k] * x[t * cols + k]).sum();
                assert!((y[t * rows + o] - want).abs() < 1e-5);
            }
        }
        assert!(dense_matmul_f32(&w, rows, cols, &x, tokens, &mut y[1..], 1).is_err());
    }
}
