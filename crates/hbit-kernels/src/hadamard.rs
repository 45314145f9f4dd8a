//! The orthonormal fast Walsh–Hadamard transform of H-BitLinear (BitNet v2, eqs. 3–4, 7–8):
//! `Hadamard(x) = H_m x` with `H_m = H_{2^m} / sqrt(2^m)`, in place, O(n log n).
//!
//! The transform is symmetric and orthonormal, hence its own inverse; the backward pass of eq. (8)
//! is the same call on the gradient. Lengths:
//! * `n = 2^m` (the paper's case), `m <= 15`;
//! * `n = p · 2^m` for p in {12, 20, 28}: `(H_p ⊗ H_{2^m}) / sqrt(n)` with a Paley matrix `H_p`
//!   (index `i · 2^m + j`: the 2^m-transform runs within each of the p segments, then `H_p` mixes
//!   the segments). Still exactly orthonormal;
//! * any other `n` only on request, as a block-diagonal transform with a power-of-two block.
//!
//! Zero-padding then truncating is never done: it is not orthogonal.
//!
//! Arithmetic (bit-exact across paths): unnormalized butterflies `(a + b, a - b)` level by level
//! with stride 1, 2, 4, ..., then, for Paley sizes, each output segment is a left-to-right sum
//! `±x_0 ± x_1 ± ...`, then one multiplication by `1/sqrt(n)` (f32).

use crate::cpu::{active_path, KernelPath};
use crate::error::KernelError;
use crate::paley::paley_matrix;

/// Largest power-of-two factor supported.
pub const MAX_HADAMARD_POW2: usize = 1 << 15;

#[derive(Debug, Clone, PartialEq)]
enum Shape {
    /// `H_{2^m}` over the whole vector.
    PowerOfTwo,
    /// `H_p ⊗ H_{2^m}`; the ±1 matrix `[p, p]`, row-major.
    Paley { order: usize, matrix: Vec<i8> },
    /// Independent `H_{block}` on each block.
    BlockDiagonal,
}

/// A planned orthonormal Hadamard transform of one length.
#[derive(Debug, Clone, PartialEq)]
pub struct Hadamard {
    n: usize,
    /// Length of each power-of-two butterfly segment.
    pow2: usize,
    shape: Shape,
    /// The final normalization: `1/sqrt(n)` (or `1/sqrt(block)`).
    scale: f32,
}

impl Hadamard {
    /// The exact orthonormal transform of length `n`, or a typed error for unsupported lengths.
    pub fn new(n: usize) -> Result<Self, KernelError> {
        let unsupported = KernelError::UnsupportedHadamardSize {
            n,
            max_pow2: MAX_HADAMARD_POW2,
        };
        if n == 0 {
            return Err(unsupported);
        }
        let pow2 = 1usize << n.trailing_zeros();
        let odd = n / pow2;
        if pow2 > MAX_HADAMARD_POW2 {
            return Err(unsupported);
        }
        let shape = match odd {
            1 => Shape::PowerOfTwo,
            // 12 = 3·4, 20 = 5·4, 28 = 7·4: the odd part and at least a factor 4.
            3 | 5 | 7 if pow2 >= 4 => {
                let order = 4 * odd;
                Shape::Paley {
                    order,
                    matrix: paley_matrix(order).ok_or(unsupported)?,
                }
            }
            _ => return Err(unsupported),
        };
        let pow2 = match &shape {
            Shape::Paley { order, .. } => n / order,
            _ => pow2,
        };
        Ok(Self {
            n,
            pow2,
            shape,
            scale: (1.0 / (n as f64).sqrt()) as f32,
        })
    }

    /// A block-diagonal transform: `H_block / sqrt(block)` on each of the `n / block` blocks.
    /// Orthonormal, but mixes only within blocks; for lengths [`Hadamard::new`] refuses.
    pub fn block_diagonal(n: usize, block: usize) -> Result<Self, KernelError> {
        if block == 0 || !block.is_power_of_two() || block > MAX_HADAMARD_POW2 {
            return Err(KernelError::InvalidSize {
                what: "Hadamard block",
                found: block,
                reason: "the block must be a power of two no larger than 32768",
            });
        }
        if n == 0 || !n.is_multiple_of(block) {
            return Err(KernelError::InvalidSize {
                what: "Hadamard length",
                found: n,
                reason: "the length must be a non-zero multiple of the block",
            });
        }
        Ok(Self {
            n,
            pow2: block,
            shape: Shape::BlockDiagonal,
            scale: (1.0 / (block as f64).sqrt()) as f32,
        })
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Transforms each length-`n` row of `x` (`[tokens, n]`) in place, on the active kernel path.
    pub fn apply(&self, x: &mut [f32]) -> Result<(), KernelError> {
        self.apply_with(active_path()?, x)
    }

    /// As [`Hadamard::apply`] on an explicit kernel path (all paths give identical bits).
    pub fn apply_with(&self, path: KernelPath, x: &mut [f32]) -> Result<(), KernelError> {
        path.check_supported()?;
        if x.is_empty() || !x.len().is_multiple_of(self.n) {
            return Err(KernelError::LengthMismatch {
                what: "Hadamard input (a whole number of rows)",
                expected: self.n * (x.len() / self.n).max(1),
                found: x.len(),
            });
        }
        for row in x.chunks_exact_mut(self.n) {
            self.apply_row(path, row);
        }
        Ok(())
    }

    fn apply_row(&self, path: KernelPath, x: &mut [f32]) {
        for segment in x.chunks_exact_mut(self.pow2) {
            butterflies(path, segment);
        }
        if let Shape::Paley { order, matrix } = &self.shape {
            mix_segments(x, *order, self.pow2, matrix);
        }
        for v in x.iter_mut() {
            *v *= self.scale;
        }
    }

    /// The dense orthonormal matrix `[n, n]` (row i = transform of unit vector i; symmetric for
    /// powers of two). For tests and small n only.
    pub fn dense(&self) -> Vec<f32> {
        let mut m = vec![0.0f32; self.n * self.n];
        for (i, row) in m.chunks_exact_mut(self.n).enumerate() {
            row[i] = 1.0;
            self.apply_row(KernelPath::Scalar, row);
        }
        m
    }
}

fn butterflies(path: KernelPath, x: &mut [f32]) {
    match path {
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx2 | KernelPath::Avx512 if x.len() >= 8 => {
            // SAFETY: callers checked `path.is_supported()`; the Avx512 path implies AVX2.
            unsafe { avx2::butterflies(x) }
        }
        _ => butterflies_scalar(x),
    }
}

/// Reference: unnormalized radix-2 butterflies, stride 1, 2, 4, ... (eq. 4 without the scale).
pub fn butterflies_scalar(x: &mut [f32]) {
    let n = x.len();
    let mut h = 1;
    while h < n {
        for i in (0..n).step_by(2 * h) {
            for j in i..i + h {
                let (a, b) = (x[j], x[j + h]);
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
        h *= 2;
    }
}

/// Positions mixed together: independent lanes with identical sign patterns, which the compiler
/// turns into vector adds (no `unsafe`, and each lane's sum is the scalar one, bit for bit).
const MIX_LANES: usize = 8;

/// `y_i = Σ_l H_p[i][l] x_l` across the p segments, per position j, summed left to right.
fn mix_segments(x: &mut [f32], order: usize, seg: usize, matrix: &[i8]) {
    let mut columns = [[0.0f32; MIX_LANES]; 28];
    let blocked = seg - seg % MIX_LANES;
    for j in (0..blocked).step_by(MIX_LANES) {
        for (l, c) in columns[..order].iter_mut().enumerate() {
            c.copy_from_slice(&x[l * seg + j..][..MIX_LANES]);
        }
        for i in 0..order {
            let signs = &matrix[i * order..(i + 1) * order];
            let mut acc = columns[0];
            if signs[0] < 0 {
                acc.iter_mut().for_each(|a| *a = -*a);
            }
            for (&s, c) in signs[1..].iter().zip(&columns[1..order]) {
                if s > 0 {
                    acc.iter_mut().zip(c).for_each(|(a, c)| *a += c);
                } else {
                    acc.iter_mut().zip(c).for_each(|(a, c)| *a -= c);
                }
            }
            x[i * seg + j..][..MIX_LANES].copy_from_slice(&acc);
        }
    }
    let mut column = [0.0f32; 28];
    for j in blocked..seg {
        for (l, c) in column[..order].iter_mut().enumerate() {
            *c = x[l * seg + j];
        }
        for i in 0..order {
            let signs = &matrix[i * order..(i + 1) * order];
            let mut acc = if signs[0] > 0 { column[0] } else { -column[0] };
            for (&s, &c) in signs[1..].iter().zip(&column[1..order]) {
                acc = if s > 0 { acc + c } else { acc - c };
            }
            x[i * seg + j] = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Same butterflies as [`super::butterflies_scalar`], same per-element operations:
    /// strides 1, 2, 4 inside each 8-lane vector, then two strides per pass (radix 4).
    ///
    /// # Safety
    /// The CPU must support AVX2; `x.len()` must be a power of two >= 8.
    #[target_feature(enable = "avx2")]
    pub unsafe fn butterflies(x: &mut [f32]) {
        let n = x.len();
        debug_assert!(n.is_power_of_two() && n >= 8);
        let p = x.as_mut_ptr();
        // Lane masks: 1 where the lane takes `partner - self` (the "a - b" output).
        let odd1 = _mm256_castsi256_ps(_mm256_setr_epi32(0, -1, 0, -1, 0, -1, 0, -1));
        let odd2 = _mm256_castsi256_ps(_mm256_setr_epi32(0, 0, -1, -1, 0, 0, -1, -1));
        let odd4 = _mm256_castsi256_ps(_mm256_setr_epi32(0, 0, 0, 0, -1, -1, -1, -1));
        for v in 0..n / 8 {
            // SAFETY: v*8+8 <= n.
            let q = p.add(v * 8);
            let mut a = _mm256_loadu_ps(q);
            // stride 1: partner = swap adjacent lanes.
            let s = _mm256_permute_ps(a, 0b10_11_00_01);
            a = _mm256_blendv_ps(_mm256_add_ps(a, s), _mm256_sub_ps(s, a), odd1);
            // stride 2: partner = swap lane pairs.
            let s = _mm256_permute_ps(a, 0b01_00_11_10);
            a = _mm256_blendv_ps(_mm256_add_ps(a, s), _mm256_sub_ps(s, a), odd2);
            // stride 4: partner = swap 128-bit halves.
            let s = _mm256_permute2f128_ps(a, a, 0x01);
            a = _mm256_blendv_ps(_mm256_add_ps(a, s), _mm256_sub_ps(s, a), odd4);
            _mm256_storeu_ps(q, a);
        }
        let mut h = 8;
        while 4 * h <= n {
            // Two levels (h, 2h) per pass over quadruples (j, j+h, j+2h, j+3h).
            for i in (0..n).step_by(4 * h) {
                for j in (i..i + h).step_by(8) {
                    // SAFETY: j + 3h + 8 <= i + 4h <= n.
                    let (pa, pb, pc, pd) =
                        (p.add(j), p.add(j + h), p.add(j + 2 * h), p.add(j + 3 * h));
                    let (a, b, c, d) = (
                        _mm256_loadu_ps(pa),
                        _mm256_loadu_ps(pb),
                        _mm256_loadu_ps(pc),
                        _mm256_loadu_ps(pd),
                    );
                    let (ab0, ab1) = (_mm256_add_ps(a, b), _mm256_sub_ps(a, b));
                    let (cd0, cd1) = (_mm256_add_ps(c, d), _mm256_sub_ps(c, d));
                    _mm256_storeu_ps(pa, _mm256_add_ps(ab0, cd0));
                    _mm256_storeu_ps(pb, _mm256_add_ps(ab1, cd1));
                    _mm256_storeu_ps(pc, _mm256_sub_ps(ab0, cd0));
                    _mm256_storeu_ps(pd, _mm256_sub_ps(ab1, cd1));
                }
            }
            h *= 4;
        }
        if 2 * h <= n {
            for i in (0..n).step_by(2 * h) {
                for j in (i..i + h).step_by(8) {
                    // SAFETY: j + h + 8 <= i + 2h <= n.
                    let (pa, pb) = (p.add(j), p.add(j + h));
                    let (a, b) = (_mm256_loadu_ps(pa), _mm256_loadu_ps(pb));
                    _mm256_storeu_ps(pa, _mm256_add_ps(a, b));
                    _mm256_storeu_ps(pb, _mm256_sub_ps(a, b));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sylvester(n: usize) -> Vec<f32> {
        // H_0 = (1); H_{m} = [[H, H], [H, -H]] (eq. 4 without the 1/sqrt 2 factors).
        let mut h = vec![1.0f32];
        let mut size = 1;
        while size < n {
            let s2 = 2 * size;
            let mut next = vec![0.0f32; s2 * s2];
            for i in 0..size {
                for j in 0..size {
                    let v = h[i * size + j];
                    next[i * s2 + j] = v;
                    next[i * s2 + j + size] = v;
                    next[(i + size) * s2 + j] = v;
                    next[(i + size) * s2 + j + size] = -v;
                }
            }
            h = next;
            size = s2;
        }
        h
    }

    fn max_orthonormality_error(m: &[f32], n: usize) -> f64 {
        let mut worst = 0.0f64;
        for i in 0..n {
            for j in 0..n {
                let dot: f64 = (0..n)
                    .map(|k| m[i * n + k] as f64 * m[j * n + k] as f64)
                    .sum();
                worst = worst.max((dot - if i == j { 1.0 } else { 0.0 }).abs());
            }
        }
        worst
    }

    fn test_vector(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 + 1.0) * (seed as f32 * 0.61 + 0.37)).sin() * 3.0)
            .collect()
    }

    #[test]
    fn equals_sylvester_matrix_for_small_n() {
        for m in 0..=7 {
            let n = 1usize << m;
            let want = sylvester(n);
            let got = Hadamard::new(n).unwrap().dense();
            let s = 1.0 / (n as f32).sqrt();
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w * s).abs() < 1e-6, "n = {n}");
            }
        }
    }

    #[test]
    fn known_answer_n4() {
        let h = Hadamard::new(4).unwrap();
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        h.apply_with(KernelPath::Scalar, &mut x).unwrap();
        // H_4 x = [10, -2, -4, 0], divided by 2.
        assert_eq!(x, [5.0, -1.0, -2.0, 0.0]);
    }

    #[test]
    fn paley_sizes_are_orthonormal() {
        for n in [12usize, 20, 28, 24, 40, 56, 96] {
            let m = Hadamard::new(n).unwrap().dense();
            let err = max_orthonormality_error(&m, n);
            assert!(err < 1e-5, "n = {n}: |H Hᵀ - I| = {err}");
            for i in 0..n {
                for j in 0..n {
                    assert_eq!(
                        m[i * n + j],
                        m[j * n + i],
                        "n = {n}: symmetric at ({i}, {j})"
                    );
                }
            }
        }
    }

    #[test]
    fn blocked_segment_mixing_equals_one_position_at_a_time_bit_for_bit() {
        // The per-position sum of `mix_segments` written plainly, as the reference.
        fn reference(x: &mut [f32], order: usize, seg: usize, matrix: &[i8]) {
            let column: Vec<f32> = x.to_vec();
            for j in 0..seg {
                for i in 0..order {
                    let signs = &matrix[i * order..(i + 1) * order];
                    let mut acc = if signs[0] > 0 { column[j] } else { -column[j] };
                    for l in 1..order {
                        let c = column[l * seg + j];
                        acc = if signs[l] > 0 { acc + c } else { acc - c };
                    }
                    x[i * seg + j] = acc;
                }
            }
        }
        for order in [12usize, 20, 28] {
            let matrix = crate::paley::paley_matrix(order).unwrap();
            for seg in [1usize, 5, 8, 13, 64] {
                let x = test_vector(order * seg, (order * 100 + seg) as u32);
                let (mut got, mut want) = (x.clone(), x);
                mix_segments(&mut got, order, seg, &matrix);
                reference(&mut want, order, seg, &matrix);
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "order {order}, segment {seg}"
                );
            }
        }
    }

    #[test]
    fn block_diagonal_is_orthonormal_and_block_local() {
        let h = Hadamard::block_diagonal(24, 8).unwrap();
        let m = h.dense();
        assert!(max_orthonormality_error(&m, 24) < 1e-6);
        // Entry (0, 8) crosses blocks: exactly zero.
        assert_eq!(m[8], 0.0);
        assert!(matches!(
            Hadamard::block_diagonal(24, 6),
            Err(KernelError::InvalidSize { .. })
        ));
        assert!(matches!(
            Hadamard::block_diagonal(20, 8),
            Err(KernelError::InvalidSize { .. })
        ));
    }

    #[test]
    fn unsupported_sizes_are_typed_errors() {
        for n in [0usize, 3, 6, 10, 36, 44, 1 << 16, 100] {
            assert!(
                matches!(
                    Hadamard::new(n),
                    Err(KernelError::UnsupportedHadamardSize { .. })
                ),
                "n = {n}"
            );
        }
        let h = Hadamard::new(8).unwrap();
        let mut x = vec![0.0f32; 12];
        assert!(matches!(
            h.apply_with(KernelPath::Scalar, &mut x),
            Err(KernelError::LengthMismatch { .. })
        ));
        assert!(Hadamard::new(32768).is_ok());
        assert!(Hadamard::new(28 * 1024).is_ok());
    }

    #[test]
    fn large_sizes_are_self_inverse_and_norm_preserving() {
        for n in [1024usize, 8192, 32768, 12 * 512, 20 * 256, 28 * 1024] {
            let h = Hadamard::new(n).unwrap();
            let x = test_vector(n, 3);
            let mut y = x.clone();
            h.apply(&mut y).unwrap();
            let nx: f64 = x.iter().map(|v| (*v as f64).powi(2)).sum();
            let ny: f64 = y.iter().map(|v| (*v as f64).powi(2)).sum();
            assert!((nx - ny).abs() < 1e-4 * nx, "n = {n}: norm {nx} -> {ny}");
            h.apply(&mut y).unwrap();
            let err = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err < 1e-4, "n = {n}: H(H x) differs from x by {err}");
        }
    }

    #[test]
    fn spreads_a_single_outlier_evenly() {
        // The reason for H-BitLinear: one outlier channel becomes n equal entries of size 1/sqrt n.
        let n = 256;
        let mut x = vec![0.0f32; n];
        x[17] = 16.0;
        Hadamard::new(n).unwrap().apply(&mut x).unwrap();
        assert!(x.iter().all(|v| (v.abs() - 1.0).abs() < 1e-6));
    }

    proptest! {
        #[test]
        fn every_path_equals_scalar_bit_for_bit(
            log_n in 0u32..13, pal in 0usize..4, rows in 1usize..4, seed in any::<u32>()
        ) {
            let n = match pal { 0 => 1usize << log_n, p => (4 * (2 * p + 1)) << log_n.min(9) };
            let h = Hadamard::new(n).unwrap();
            let x: Vec<f32> = (0..rows).flat_map(|r| test_vector(n, seed.wrapping_add(r as u32))).collect();
            let mut want = x.clone();
            h.apply_with(KernelPath::Scalar, &mut want).unwrap();
            for path in KernelPath::supported() {
                let mut got = x.clone();
                h.apply_with(path, &mut got).unwrap();
                prop_assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "path {}", path);
            }
        }
    }
}
