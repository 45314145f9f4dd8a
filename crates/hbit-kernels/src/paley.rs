//! Hadamard matrices of order 12, 20 and 28 by Paley's constructions, for the orthonormal
//! transforms of lengths 12·2^m, 20·2^m and 28·2^m (Kronecker product with H_{2^m}).
//!
//! * Paley I, prime q ≡ 3 (mod 4), order q + 1: `H = I + S`, `S = [[0, 1ᵀ], [-1, Q]]`, with the
//!   Jacobsthal matrix `Q[a][b] = χ(b - a)` (χ the quadratic character mod q). Gives 12 (q = 11)
//!   and 20 (q = 19). That H is not symmetric, so we use `P H D` instead, with P the row
//!   permutation a → -a (mod q) of the Jacobsthal block and D negating column 0: entries
//!   `δ(a + b ≡ 0) + χ(a + b)` inside, a border of +1 and a corner of -1. Row permutations and
//!   sign flips keep a Hadamard matrix Hadamard, and this one is symmetric.
//! * Paley II, prime q ≡ 1 (mod 4), order 2(q + 1): `S = [[0, 1ᵀ], [1, Q]]`, each 0 entry replaced
//!   by `[[1, -1], [-1, -1]]` and each ±1 entry by `±[[1, 1], [1, -1]]`. Gives 28 (q = 13).
//!
//! Entries are ±1; `H Hᵀ = order · I` and `H = Hᵀ` are asserted by the tests. Symmetry makes the
//! normalized transform its own inverse, so the backward pass (eq. 8) is the forward transform.

/// Quadratic character of `a` modulo the prime `q`: 0, 1 (residue) or -1 (non-residue).
fn chi(a: i64, q: i64) -> i8 {
    let a = a.rem_euclid(q);
    if a == 0 {
        return 0;
    }
    if (1..q).any(|x| (x * x) % q == a) {
        1
    } else {
        -1
    }
}

/// `S` of both constructions: `(q+1) × (q+1)`, first row `[0, 1, .., 1]`, first column
/// `border` (−1 for Paley I, +1 for Paley II), Jacobsthal matrix inside.
fn bordered_jacobsthal(q: usize, border: i8) -> Vec<Vec<i8>> {
    let n = q + 1;
    let mut s = vec![vec![0i8; n]; n];
    s[0][1..].fill(1);
    for row in &mut s[1..] {
        row[0] = border;
    }
    for a in 0..q {
        for b in 0..q {
            s[a + 1][b + 1] = chi(b as i64 - a as i64, q as i64);
        }
    }
    s
}

/// Symmetric form `P (I + S) D` of the Paley I matrix (see the module docs).
fn paley_one(q: usize) -> Vec<i8> {
    let s = bordered_jacobsthal(q, -1);
    let n = q + 1;
    let plain = |i: usize, j: usize| s[i][j] + i8::from(i == j);
    let mut h = vec![0i8; n * n];
    for i in 0..n {
        // P: inner row a comes from inner row -a (mod q); the border row stays.
        let src = if i == 0 { 0 } else { 1 + (q - (i - 1)) % q };
        for j in 0..n {
            let d = if j == 0 { -1 } else { 1 };
            h[i * n + j] = plain(src, j) * d;
        }
    }
    h
}

fn paley_two(q: usize) -> Vec<i8> {
    let s = bordered_jacobsthal(q, 1);
    let m = q + 1;
    let n = 2 * m;
    let mut h = vec![0i8; n * n];
    for i in 0..m {
        for j in 0..m {
            let block: [[i8; 2]; 2] = match s[i][j] {
                0 => [[1, -1], [-1, -1]],
                v => [[v, v], [v, -v]],
            };
            for (di, row) in block.iter().enumerate() {
                for (dj, &e) in row.iter().enumerate() {
                    h[(2 * i + di) * n + 2 * j + dj] = e;
                }
            }
        }
    }
    h
}

/// The ±1 Hadamard matrix of the given order (12, 20 or 28), row-major; `None` otherwise.
pub fn paley_matrix(order: usize) -> Option<Vec<i8>> {
    match order {
        12 => Some(paley_one(11)),
        20 => Some(paley_one(19)),
        28 => Some(paley_two(13)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paley_matrices_are_hadamard() {
        for order in [12usize, 20, 28] {
            let h = paley_matrix(order).unwrap();
            assert!(
                h.iter().all(|&e| e == 1 || e == -1),
                "order {order}: entries ±1"
            );
            for i in 0..order {
                for j in 0..order {
                    assert_eq!(
                        h[i * order + j],
                        h[j * order + i],
                        "order {order}: symmetric"
                    );
                }
            }
            for i in 0..order {
                for j in 0..order {
                    let dot: i32 = (0..order)
                        .map(|k| h[i * order + k] as i32 * h[j * order + k] as i32)
                        .sum();
                    let expected = if i == j { order as i32 } else { 0 };
                    assert_eq!(dot, expected, "order {order}: rows {i}, {j}");
                }
            }
        }
        assert!(paley_matrix(16).is_none());
    }

    #[test]
    fn quadratic_character_mod_11() {
        // Residues mod 11: 1, 3, 4, 5, 9.
        let residues: Vec<i64> = (1..11).filter(|&a| chi(a, 11) == 1).collect();
        assert_eq!(residues, vec![1, 3, 4, 5, 9]);
        assert_eq!(chi(0, 11), 0);
        assert_eq!(chi(-1, 11), -1); // 11 ≡ 3 mod 4: -1 is a non-residue
    }
}
