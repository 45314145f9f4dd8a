//! Square orthogonal matrices and Cayley SGD on them (the Stiefel manifold St(n, n), Li, Zhang,
//! Li 2020), the optimizer SpinQuant learns its rotations with. Kept in f64 and solved exactly, so
//! a rotation stays orthogonal to rounding however many steps it takes.

use hbit_kernels::hadamard::Hadamard;
use hbit_model::rng::SplitMix64;

/// An `n × n` orthogonal matrix, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Orthogonal {
    n: usize,
    data: Vec<f64>,
}

impl Orthogonal {
    pub fn identity(n: usize) -> Orthogonal {
        let mut data = vec![0.0; n * n];
        for i in 0..n {
            data[i * n + i] = 1.0;
        }
        Orthogonal { n, data }
    }

    /// `D·H`: a normalized Hadamard matrix with rows of random sign, SpinQuant's start; for a
    /// size with no Hadamard matrix, a random orthogonal matrix (Gram–Schmidt of a Gaussian).
    pub fn random_hadamard(n: usize, seed: u64) -> Orthogonal {
        let mut rng = SplitMix64::new(seed);
        let rows: Vec<f64> = match Hadamard::new(n) {
            Ok(h) => h
                .dense()
                .chunks_exact(n)
                .flat_map(|row| {
                    let sign = if rng.next_u64() & 1 == 1 { -1.0 } else { 1.0 };
                    row.iter().map(move |&v| sign * v as f64)
                })
                .collect(),
            Err(_) => (0..n * n).map(|_| rng.normal()).collect(),
        };
        // f32 entries are orthonormal to ~1e-7; re-orthonormalizing in f64 makes it exact.
        Orthogonal {
            n,
            data: gram_schmidt(n, rows),
        }
    }

    pub fn size(&self) -> usize {
        self.n
    }

    pub fn data(&self) -> &[f64] {
        &self.data
    }

    /// The entries as f32, for folding into weights.
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }

    /// `max |RᵀR − I|`.
    pub fn orthogonality_error(&self) -> f64 {
        let n = self.n;
        let mut worst = 0.0f64;
        for i in 0..n {
            for j in 0..n {
                let dot: f64 = (0..n)
                    .map(|k| self.data[k * n + i] * self.data[k * n + j])
                    .sum();
                worst = worst.max((dot - if i == j { 1.0 } else { 0.0 }).abs());
            }
        }
        worst
    }

    /// One Cayley SGD step against the Euclidean gradient `grad` (`∂L/∂R`, row-major):
    /// `A = ½(G·Rᵀ − R·Gᵀ)` (skew-symmetric, the Riemannian gradient's generator, scaled as in
    /// Li et al.'s optimizer that SpinQuant uses) and `R ← (I + α/2·A)⁻¹ (I − α/2·A) R`, to
    /// first order `R − (α/2)(G − R·Gᵀ·R)`. The step is `α = min(learning_rate, 1/‖A‖₁)`, as
    /// there, so one step never turns the matrix far. Returns the `α` taken.
    pub fn cayley_step(&mut self, grad: &[f64], learning_rate: f64) -> f64 {
        let n = self.n;
        assert_eq!(grad.len(), n * n, "gradient of an {n}×{n} rotation");
        let gr_t = matmul_transposed(grad, &self.data, n); // G·Rᵀ
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = 0.5 * (gr_t[i * n + j] - gr_t[j * n + i]); // ½(G·Rᵀ − (G·Rᵀ)ᵀ)
            }
        }
        let norm_one = (0..n)
            .map(|j| (0..n).map(|i| a[i * n + j].abs()).sum::<f64>())
            .fold(0.0, f64::max);
        let alpha = learning_rate.min(1.0 / (norm_one + 1e-12));
        let half = alpha / 2.0;
        // lhs = I + α/2·A, rhs = (I − α/2·A)·R.
        let mut lhs: Vec<f64> = a.iter().map(|v| half * v).collect();
        for i in 0..n {
            lhs[i * n + i] += 1.0;
        }
        let mut rhs = self.data.clone();
        for i in 0..n {
            for k in 0..n {
                let f = half * a[i * n + k];
                if f != 0.0 {
                    for j in 0..n {
                        rhs[i * n + j] -= f * self.data[k * n + j];
                    }
                }
            }
        }
        // I + skew is never singular (its eigenvalues are 1 + iλ).
        solve_in_place(&mut lhs, &mut rhs, n);
        self.data = rhs;
        alpha
    }
}

/// `X·Yᵀ` of two row-major `n × n` matrices.
fn matmul_transposed(x: &[f64], y: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            out[i * n + j] = (0..n).map(|k| x[i * n + k] * y[j * n + k]).sum();
        }
    }
    out
}

/// Rows of `m` made orthonormal (modified Gram–Schmidt, twice for f64 accuracy).
fn gram_schmidt(n: usize, mut m: Vec<f64>) -> Vec<f64> {
    for _ in 0..2 {
        for i in 0..n {
            for k in 0..i {
                let dot: f64 = (0..n).map(|j| m[i * n + j] * m[k * n + j]).sum();
                for j in 0..n {
                    m[i * n + j] -= dot * m[k * n + j];
                }
            }
            let norm = (0..n).map(|j| m[i * n + j].powi(2)).sum::<f64>().sqrt();
            for j in 0..n {
                m[i * n + j] /= norm;
            }
        }
    }
    m
}

/// Solves `lhs · X = rhs` for `X` (`n × n`), written into `rhs`: Gaussian elimination with
/// partial pivoting.
fn solve_in_place(lhs: &mut [f64], rhs: &mut [f64], n: usize) {
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&a, &b| lhs[a * n + col].abs().total_cmp(&lhs[b * n + col].abs()))
            .unwrap_or(col);
        if pivot != col {
            for j in 0..n {
                lhs.swap(col * n + j, pivot * n + j);
                rhs.swap(col * n + j, pivot * n + j);
            }
        }
        let p = lhs[col * n + col];
        for row in col + 1..n {
            let f = lhs[row * n + col] / p;
            if f == 0.0 {
                continue;
            }
            for j in col..n {
                lhs[row * n + j] -= f * lhs[col * n + j];
            }
            for j in 0..n {
                rhs[row * n + j] -= f * rhs[col * n + j];
            }
        }
    }
    for col in (0..n).rev() {
        let p = lhs[col * n + col];
        for j in 0..n {
            rhs[col * n + j] /= p;
        }
        for row in 0..col {
            let f = lhs[row * n + col];
            if f != 0.0 {
                for j in 0..n {
                    rhs[row * n + j] -= f * rhs[col * n + j];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = SplitMix64::new(seed);
        (0..n * n).map(|_| rng.normal()).collect()
    }

    #[test]
    fn starts_orthogonal_with_and_without_a_hadamard() {
        // 16: Sylvester; 12: Paley; 10: no Hadamard matrix exists (Gaussian fallback).
        for n in [16, 12, 10] {
            let r = Orthogonal::random_hadamard(n, 5);
            assert!(r.orthogonality_error() < 1e-13, "n = {n}");
        }
        // Power of two: every entry is ±1/√n.
        let r = Orthogonal::random_hadamard(16, 5);
        assert!(r.data().iter().all(|v| (v.abs() - 0.25).abs() < 1e-7));
    }

    #[test]
    fn cayley_steps_stay_orthogonal_and_descend() {
        let n = 24;
        let mut r = Orthogonal::random_hadamard(n, 1);
        for step in 0..200 {
            let g = random(n, 100 + step);
            r.cayley_step(&g, 0.5);
        }
        assert!(
            r.orthogonality_error() < 1e-12,
            "{}",
            r.orthogonality_error()
        );
        // Minimizing L(R) = −tr(Tᵀ·R) from I reaches the target rotation T, the one maximum
        // of tr(Tᵀ·R) on the rotations of I's component (T is made from I by Cayley steps).
        let mut target = Orthogonal::identity(8);
        for step in 0..5 {
            target.cayley_step(&random(8, 50 + step), 0.3);
        }
        let mut r = Orthogonal::identity(8);
        let grad: Vec<f64> = target.data().iter().map(|v| -v).collect();
        let trace = |r: &Orthogonal| -> f64 {
            r.data().iter().zip(target.data()).map(|(a, b)| a * b).sum()
        };
        let start = trace(&r);
        for _ in 0..300 {
            r.cayley_step(&grad, 0.2);
        }
        assert!(trace(&r) > start);
        assert!((trace(&r) - 8.0).abs() < 1e-6, "tr = {}", trace(&r));
    }

    #[test]
    fn a_small_step_follows_the_projected_gradient() {
        // To first order R' = R − (α/2)(G − R·Gᵀ·R).
        let n = 6;
        let r0 = Orthogonal::random_hadamard(n, 3);
        let g = random(n, 4);
        let mut r = r0.clone();
        let alpha = r.cayley_step(&g, 1e-6);
        let rgt = matmul_transposed(r0.data(), &g, n); // R·Gᵀ
        for i in 0..n {
            for j in 0..n {
                let rgtr: f64 = (0..n).map(|k| rgt[i * n + k] * r0.data()[k * n + j]).sum();
                let want = r0.data()[i * n + j] - alpha / 2.0 * (g[i * n + j] - rgtr);
                assert!((r.data()[i * n + j] - want).abs() < 1e-10);
            }
        }
    }
}
