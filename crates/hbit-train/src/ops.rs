//! The paper's quantizers and the Hadamard transform as candle custom ops with explicit backward.
//!
//! Forward passes call the kernel layer's reference math (`hbit_kernels::quant`, `Hadamard`), so
//! the values a trained model sees are exactly the codes × scales the inference kernels multiply.
//!
//! - [`TernarySte`]: `alpha · RoundClip(W / (alpha + eps), -1, 1)` (eqs. 1–2); backward is the
//!   straight-through estimator, `dL/dW = dL/dQw(W)` (paper §2.2).
//! - [`ActivationSte`]: per-token INT8 absmax (eq. 5) or INT4 absmean (eq. 6), optionally after
//!   a4.8's top-K sparsification; backward is the identity (STE; Q-Sparse passes the gradient
//!   through the top-K mask the same way).
//! - [`HadamardOp`]: orthonormal Walsh–Hadamard on the last dimension (eqs. 3–4); backward is the
//!   Hadamard of the gradient (eq. 8), exact because H is symmetric and orthonormal.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Error, Layout, Result, Shape, Tensor};
use hbit_kernels::quant::{
    quantize_int4_token, quantize_int8_token, quantize_ternary, sparsify_topk_token, topk_count,
    ActBits,
};
use hbit_kernels::Hadamard;
use rayon::prelude::*;

/// The contiguous f32 data of an op's input.
fn f32_input<'a>(op: &str, storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        return Err(Error::Msg(format!("{op}: expects an f32 input")));
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => Err(Error::Msg(format!(
            "{op}: expects a contiguous input (call .contiguous() first)"
        ))),
    }
}

/// Rows of the last dimension, for per-token work; a rank-0 tensor is refused.
fn last_dim(op: &str, layout: &Layout) -> Result<usize> {
    match layout.shape().dims().last() {
        Some(&n) if n > 0 => Ok(n),
        _ => Err(Error::Msg(format!(
            "{op}: needs a non-empty last dimension, found shape {:?}",
            layout.shape()
        ))),
    }
}

/// Rows handed to one rayon task: enough work to amortize the task, few enough to balance.
const ROWS_PER_TASK: usize = 16;

/// Ternary absmean fake-quantization of a weight tensor with the straight-through backward.
#[derive(Debug, Clone, Copy)]
pub struct TernarySte;

impl CustomOp1 for TernarySte {
    fn name(&self) -> &'static str {
        "ternary-ste"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = f32_input(self.name(), storage, layout)?;
        let cols = last_dim(self.name(), layout)?;
        let q = quantize_ternary(w, w.len() / cols, cols).map_err(Error::wrap)?; // eqs. (1)-(2)
        Ok((CpuStorage::F32(q.dequantize()), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.clone()))
    }
}

/// Per-token activation fake-quantization (eq. 5 or 6) with the straight-through backward.
#[derive(Debug, Clone, Copy)]
pub struct ActivationSte {
    pub bits: ActBits,
    /// a4.8: keep this share of each token's largest-magnitude values before quantizing.
    pub topk_keep: Option<f32>,
}

impl CustomOp1 for ActivationSte {
    fn name(&self) -> &'static str {
        "activation-ste"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_input(self.name(), storage, layout)?;
        let cols = last_dim(self.name(), layout)?;
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::Msg(format!(
                "activation quantizer: non-finite activation at flat index {i} (training diverged?)"
            )));
        }
        let mut out = x.to_vec();
        let keep = self.topk_keep.map(|share| topk_count(cols, share));
        let bits = self.bits;
        out.par_chunks_mut(cols * ROWS_PER_TASK).for_each(|rows| {
            let mut codes = vec![0i8; cols];
            for row in rows.chunks_exact_mut(cols) {
                if let Some(k) = keep {
                    sparsify_topk_token(row, k);
                }
                let scale = match bits {
                    ActBits::Int8 => quantize_int8_token(row, &mut codes), // eq. (5)
                    ActBits::Int4 => quantize_int4_token(row, &mut codes), // eq. (6)
                };
                for (v, &c) in row.iter_mut().zip(&codes) {
                    *v = scale * c as f32;
                }
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.clone()))
    }
}

/// Orthonormal Hadamard transform of the last dimension; its own backward (eq. 8).
#[derive(Debug, Clone)]
pub struct HadamardOp {
    transform: Arc<Hadamard>,
}

impl HadamardOp {
    pub fn new(transform: Arc<Hadamard>) -> HadamardOp {
        HadamardOp { transform }
    }

    /// Applies the transform to the last dimension of `x`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1(self.clone())
    }
}

impl CustomOp1 for HadamardOp {
    fn name(&self) -> &'static str {
        "hadamard"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_input(self.name(), storage, layout)?;
        let n = last_dim(self.name(), layout)?;
        if n != self.transform.len() {
            return Err(Error::Msg(format!(
                "hadamard: last dimension is {n}, the transform was planned for {}",
                self.transform.len()
            )));
        }
        let mut out = x.to_vec();
        out.par_chunks_mut(n * ROWS_PER_TASK)
            .try_for_each(|rows| self.transform.apply(rows)) // eqs. (3)-(4)
            .map_err(Error::wrap)?;
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.apply(grad_res)?)) // eq. (8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn tensor(data: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(data.to_vec(), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn ternary_forward_is_the_kernel_quantizer_and_backward_passes_through() {
        // Same matrix as the kernel layer's known answer: alpha = 1/3, codes [0,-1,1,1,0,-1].
        let w = Var::from_tensor(&tensor(&[0.1, -0.5, 0.3, 0.9, 0.0, -0.2], &[2, 3])).unwrap();
        let q = w.as_tensor().apply_op1(TernarySte).unwrap();
        let a = 1.0f32 / 3.0;
        let got: Vec<f32> = q.flatten_all().unwrap().to_vec1().unwrap();
        let want = [0.0, -a, a, a, 0.0, -a];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
        // L = sum(c ⊙ Qw(W)): with STE, dL/dW = c exactly.
        let c = tensor(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
        let grads = (q * &c).unwrap().sum_all().unwrap().backward().unwrap();
        let g: Vec<f32> = grads
            .get(&w)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(g, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn activation_forward_known_answers() {
        // INT8: gamma = 2, codes round(127/(2+eps) * x) = round([126.9994, -63.4997, 31.7498, 0])
        // = [127, -63, 32, 0], dequantized × 2/127.
        let x = tensor(&[2.0, -1.0, 0.5, 0.0], &[1, 4]);
        let q8: Vec<f32> = x
            .apply_op1(ActivationSte {
                bits: ActBits::Int8,
                topk_keep: None,
            })
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let s = 2.0f32 / 127.0;
        assert_eq!(q8, vec![127.0 * s, -63.0 * s, 32.0 * s, 0.0]);
        // INT4: beta = 0.875, scale sqrt7/beta ≈ 3.0237: [6.05→6, -3.02→-3, 1.51→2, 0] × beta/sqrt7.
        let q4: Vec<f32> = x
            .apply_op1(ActivationSte {
                bits: ActBits::Int4,
                topk_keep: None,
            })
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let s4 = 0.875f32 / hbit_kernels::quant::SQRT_7;
        for (g, w) in q4.iter().zip([6.0 * s4, -3.0 * s4, 2.0 * s4, 0.0]) {
            assert!((g - w).abs() < 1e-6, "{q4:?}");
        }
        // a4.8: keep half (2 of 4) → [2, -1, 0, 0], then INT8 with gamma 2.
        let qk: Vec<f32> = x
            .apply_op1(ActivationSte {
                bits: ActBits::Int8,
                topk_keep: Some(0.5),
            })
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(qk, vec![127.0 * s, -63.0 * s, 0.0, 0.0]);
    }

    #[test]
    fn activation_backward_is_identity_even_where_values_were_clipped_or_dropped() {
        let x = Var::from_tensor(&tensor(&[9.0, -1.0, 0.01, 0.0, 3.0, -4.0], &[2, 3])).unwrap();
        for (bits, keep) in [(ActBits::Int4, None), (ActBits::Int8, Some(0.34))] {
            let y = x
                .as_tensor()
                .apply_op1(ActivationSte {
                    bits,
                    topk_keep: keep,
                })
                .unwrap();
            let c = tensor(&[1.0, -2.0, 3.0, 0.5, 7.0, 11.0], &[2, 3]);
            let grads = (y * &c).unwrap().sum_all().unwrap().backward().unwrap();
            let g: Vec<f32> = grads
                .get(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(g, vec![1.0, -2.0, 3.0, 0.5, 7.0, 11.0]);
        }
    }

    #[test]
    fn hadamard_backward_equals_dense_transpose_times_gradient() {
        // dL/dx for L = sum(c ⊙ H x) is H^T c = H c (eq. 8); checked against the dense matrix,
        // for a power of two and a Paley size.
        for n in [8usize, 12] {
            let h = Arc::new(Hadamard::new(n).unwrap());
            let dense = h.dense();
            let xs: Vec<f32> = (0..2 * n)
                .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3)
                .collect();
            let cs: Vec<f32> = (0..2 * n)
                .map(|i| ((i * 5 % 13) as f32 - 6.0) * 0.2)
                .collect();
            let x = Var::from_tensor(&tensor(&xs, &[2, n])).unwrap();
            let c = tensor(&cs, &[2, n]);
            let op = HadamardOp::new(h.clone());
            let y = op.apply(x.as_tensor()).unwrap();
            // Forward equals the dense product.
            let yv: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            let grads = (y * &c).unwrap().sum_all().unwrap().backward().unwrap();
            let g: Vec<f32> = grads
                .get(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for t in 0..2 {
                for i in 0..n {
                    let fwd: f32 = (0..n).map(|j| dense[i * n + j] * xs[t * n + j]).sum();
                    let bwd: f32 = (0..n).map(|j| dense[j * n + i] * cs[t * n + j]).sum();
                    assert!((yv[t * n + i] - fwd).abs() < 1e-5, "n={n} forward");
                    assert!((g[t * n + i] - bwd).abs() < 1e-5, "n={n} backward");
                }
            }
            // Self-inverse through the op: H(Hx) = x.
            let back: Vec<f32> = op
                .apply(&op.apply(x.as_tensor()).unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (b, x) in back.iter().zip(&xs) {
                assert!((b - x).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn ops_refuse_bad_inputs_with_named_errors() {
        let op = HadamardOp::new(Arc::new(Hadamard::new(8).unwrap()));
        let err = op
            .apply(&tensor(&[1.0; 6], &[1, 6]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("last dimension is 6"), "{err}");
        let nan = tensor(&[1.0, f32::NAN], &[1, 2]);
        let err = nan
            .apply_op1(ActivationSte {
                bits: ActBits::Int8,
                topk_keep: None,
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains("non-finite"), "{err}");
        let strided = tensor(&[1.0, 2.0, 3.0, 4.0], &[2, 2]).t().unwrap();
        let err = strided.apply_op1(TernarySte).unwrap_err().to_string();
        assert!(err.contains("contiguous"), "{err}");
        // Sum over the last dim still works after .contiguous().
        let ok = strided.contiguous().unwrap().apply_op1(TernarySte).unwrap();
        assert_eq!(ok.sum(D::Minus1).unwrap().dims(), &[2]);
    }
}
