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
//!
//! The model runs BitLinear as two fused ops with the same math, so that candle's autograd
//! records two nodes per projection instead of six (each recorded node costs the backward a
//! zero-filled buffer and an extra pass over its gradient):
//! - [`QuantizeInput`]: optional Hadamard, then [`ActivationSte`]'s quantizer; one op, shared by
//!   projections that read the same input the same way (q/k/v, gate/up).
//! - [`TernaryMatmul`]: `Qa(X) · Qw(W)ᵀ` with the ternary STE inside (and the weight rotation of
//!   the ablation); its backward is `dX = dY·Qw(W)`, `dW = dYᵀ·Qa(X)`. Given the input's codes
//!   ([`QuantizedInput`]), its forward is the inference engine's integer product
//!   `alpha · s_x · Σ Wq·xq` (sums exact in i32) rather than an f32 GEMM of the dequantized values.

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Error, Layout, Result, Shape, Tensor};
use hbit_kernels::dense::dense_matmul_f32;
use hbit_kernels::matmul::matmul_int8;
use hbit_kernels::pack::RowPacked;
use hbit_kernels::quant::{
    quantize_int4_token, quantize_int8_token, quantize_ternary, sparsify_topk_token, topk_count,
    ActBits, QuantizedActivations, TernaryWeights,
};
use hbit_kernels::Hadamard;
use rayon::prelude::*;

/// The contiguous f32 data of an op's input.
pub(crate) fn f32_input<'a>(
    op: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> Result<&'a [f32]> {
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
pub(crate) fn last_dim(op: &str, layout: &Layout) -> Result<usize> {
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

/// Replaces each length-`cols` row of `x` by its quantized value `scale · code` (eq. 5 or 6),
/// after a4.8's top-K sparsification when `topk_keep` is set; returns the codes and scales.
fn fake_quantize_rows(
    x: &mut [f32],
    cols: usize,
    bits: ActBits,
    topk_keep: Option<f32>,
) -> Result<QuantizedActivations> {
    let keep = topk_keep.map(|share| topk_count(cols, share));
    let tokens = x.len() / cols.max(1);
    let mut codes = vec![0i8; x.len()];
    let mut scales = vec![0f32; tokens];
    x.par_chunks_mut(cols * ROWS_PER_TASK)
        .zip(codes.par_chunks_mut(cols * ROWS_PER_TASK))
        .zip(scales.par_chunks_mut(ROWS_PER_TASK))
        .for_each(|((rows, row_codes), row_scales)| {
            for ((row, codes), scale) in rows
                .chunks_exact_mut(cols)
                .zip(row_codes.chunks_exact_mut(cols))
                .zip(row_scales)
            {
                if let Some(k) = keep {
                    sparsify_topk_token(row, k);
                }
                *scale = match bits {
                    ActBits::Int8 => quantize_int8_token(row, codes), // eq. (5)
                    ActBits::Int4 => quantize_int4_token(row, codes), // eq. (6)
                };
                for (v, &c) in row.iter_mut().zip(codes.iter()) {
                    *v = *scale * c as f32;
                }
            }
        });
    QuantizedActivations::from_codes(bits, tokens, cols, &codes, scales).map_err(Error::wrap)
}

fn check_finite(x: &[f32]) -> Result<()> {
    match x.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(Error::Msg(format!(
            "activation quantizer: non-finite activation at flat index {i} (training diverged?)"
        ))),
        None => Ok(()),
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
        check_finite(x)?;
        let mut out = x.to_vec();
        fake_quantize_rows(&mut out, cols, self.bits, self.topk_keep)?;
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

    /// The planned transform.
    pub fn transform(&self) -> &Arc<Hadamard> {
        &self.transform
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

/// H-BitLinear's input side as one op: `X_r = Hadamard(X)` when present (eq. 7), then the
/// per-token quantizer `Qa` (eq. 5 / 6, a4.8's top-K first when set). Backward: the STE passes
/// the gradient through `Qa`, then the Hadamard's own backward applies (eq. 8).
#[derive(Debug, Clone)]
pub struct QuantizeInput {
    pub hadamard: Option<Arc<Hadamard>>,
    pub bits: ActBits,
    pub topk_keep: Option<f32>,
    /// `false` skips `Qa` (the rotation still applies): the full-precision model that checks
    /// rotation folding (see `BitnetModel::unquantized`).
    pub quantize: bool,
}

/// A projection's quantized input: the values `s_x · code` the graph carries (the weight
/// gradient reads them) and, when the quantizer ran, the codes and scales themselves, which
/// [`TernaryMatmul`] multiplies in integers.
#[derive(Debug, Clone)]
pub struct QuantizedInput {
    pub values: Tensor,
    pub codes: Option<Arc<QuantizedActivations>>,
}

impl QuantizeInput {
    /// `Qa(X_r)` as values only.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.apply_keeping_codes(x)?.values)
    }

    /// `Qa(X_r)` with its codes for the integer product.
    pub fn apply_keeping_codes(&self, x: &Tensor) -> Result<QuantizedInput> {
        // One op per call: its forward leaves that call's codes for the products to read.
        let call = QuantizeInputCall {
            spec: self.clone(),
            codes: Arc::new(Mutex::new(None)),
        };
        let codes = call.codes.clone();
        let values = x.contiguous()?.apply_op1(call)?;
        // Taken, not shared: the op stays in the graph until backward, which needs no codes.
        let codes = codes.lock().unwrap_or_else(|e| e.into_inner()).take();
        Ok(QuantizedInput { values, codes })
    }
}

/// One application of [`QuantizeInput`], as recorded in candle's graph.
struct QuantizeInputCall {
    spec: QuantizeInput,
    /// The codes and scales of the forward, until [`QuantizeInput::apply_keeping_codes`]
    /// takes them for the products that read this input.
    codes: Arc<Mutex<Option<Arc<QuantizedActivations>>>>,
}

impl CustomOp1 for QuantizeInputCall {
    fn name(&self) -> &'static str {
        "quantize-input"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let spec = &self.spec;
        let x = f32_input(self.name(), storage, layout)?;
        let cols = last_dim(self.name(), layout)?;
        check_finite(x)?;
        let mut out = x.to_vec();
        if let Some(h) = &spec.hadamard {
            if h.len() != cols {
                return Err(Error::Msg(format!(
                    "quantize-input: last dimension is {cols}, the Hadamard was planned for {}",
                    h.len()
                )));
            }
            out.par_chunks_mut(cols * ROWS_PER_TASK)
                .try_for_each(|rows| h.apply(rows)) // eqs. (3)-(4), (7)
                .map_err(Error::wrap)?;
        }
        if spec.quantize {
            let codes = fake_quantize_rows(&mut out, cols, spec.bits, spec.topk_keep)?; // eq. (5) / (6)
            *self.codes.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(codes));
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(match &self.spec.hadamard {
            Some(h) => HadamardOp::new(h.clone()).apply(grad)?, // eq. (8)
            None => grad.clone(),
        }))
    }
}

/// BitLinear's product `Y = Qa(X) · Qw(W')ᵀ` for an already quantized input `[.., in]` and the
/// latent weight `W` `[out, in]`: `W' = W`, or `W·H` in the weight-rotation ablation, and
/// `Qw` the ternary absmean quantizer (eqs. 1–2) with the straight-through estimator.
///
/// Backward: `dX = dY · Qw(W')` and `dW' = dYᵀ · X`, then `dW = dW' · H` for the ablation
/// (H symmetric). Forward runs the engine's integer product when given the input's codes
/// ([`TernaryMatmul::apply_quantized`]), else the dense f32 GEMM of the kernel layer; backward
/// runs candle's GEMMs.
#[derive(Debug, Clone)]
pub struct TernaryMatmul {
    /// `H` of the weight-rotation ablation, `None` for `W' = W`.
    pub rotate_weight: Option<Arc<Hadamard>>,
    /// `false` multiplies by `W'` itself instead of `Qw(W')`.
    pub quantize: bool,
}

impl TernaryMatmul {
    /// The product of dequantized values `x` (an f32 GEMM).
    pub fn apply(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        self.call(x, None, w)
    }

    /// The product of a quantized input: in integers when its codes are there.
    pub fn apply_quantized(&self, x: &QuantizedInput, w: &Tensor) -> Result<Tensor> {
        self.call(&x.values, x.codes.clone(), w)
    }

    fn call(
        &self,
        x: &Tensor,
        codes: Option<Arc<QuantizedActivations>>,
        w: &Tensor,
    ) -> Result<Tensor> {
        // One op per call: it carries that call's quantized weight from forward to backward.
        let op = TernaryMatmulCall {
            product: self.clone(),
            codes: Mutex::new(codes),
            quantized: OnceLock::new(),
        };
        x.contiguous()?.apply_op2(&w.contiguous()?, op)
    }

    /// `W'`: the latent weight, rotated in the ablation.
    fn rotated_weight<'w>(&self, w: &'w [f32]) -> Result<std::borrow::Cow<'w, [f32]>> {
        Ok(match &self.rotate_weight {
            Some(h) => {
                let mut r = w.to_vec();
                h.apply(&mut r).map_err(Error::wrap)?;
                r.into()
            }
            None => w.into(),
        })
    }

    /// `Qw(W')`: ternary codes and `alpha` (eqs. 1–2).
    fn ternary_weight(&self, w: &[f32], rows: usize, cols: usize) -> Result<TernaryWeights> {
        quantize_ternary(&self.rotated_weight(w)?, rows, cols).map_err(Error::wrap)
    }

    /// `Qw(W')` as `[out, in]` values `alpha · code` (or `W'` when not quantizing).
    fn quantized_weight(&self, w: &[f32], rows: usize, cols: usize) -> Result<Vec<f32>> {
        if !self.quantize {
            return Ok(self.rotated_weight(w)?.into_owned());
        }
        Ok(self.ternary_weight(w, rows, cols)?.dequantize())
    }
}

/// `(rows, in, out)` of a product of `x` `[.., in]` and `w` `[out, in]`, checked.
fn product_dims(op: &str, x: &Layout, w: &Layout) -> Result<(usize, usize, usize)> {
    let (out, cols) = match w.shape().dims() {
        [o, i] => (*o, *i),
        dims => {
            return Err(Error::Msg(format!(
                "{op}: weight must be [out, in], found {dims:?}"
            )))
        }
    };
    let xd = x.shape().dims();
    match xd.last() {
        Some(&c) if c == cols => Ok((x.shape().elem_count() / cols.max(1), cols, out)),
        _ => Err(Error::Msg(format!(
            "{op}: input {xd:?} does not end in the weight's in-dimension {cols}"
        ))),
    }
}

/// One application of [`TernaryMatmul`], as recorded in candle's graph.
struct TernaryMatmulCall {
    product: TernaryMatmul,
    /// The input's codes, which the forward takes and multiplies in integers (the op stays in
    /// the graph until backward, which needs none).
    codes: Mutex<Option<Arc<QuantizedActivations>>>,
    /// `Qw(W')` computed by the forward, kept for the backward.
    quantized: OnceLock<Tensor>,
}

impl CustomOp2 for TernaryMatmulCall {
    fn name(&self) -> &'static str {
        "ternary-matmul"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, cols, out) = product_dims(self.name(), xl, wl)?;
        let x = f32_input(self.name(), xs, xl)?;
        let w = f32_input(self.name(), ws, wl)?;
        let mut y = vec![0.0f32; rows * out];
        let codes = self.codes.lock().unwrap_or_else(|e| e.into_inner()).take();
        let qw = match codes.as_deref().filter(|_| self.product.quantize) {
            Some(codes) => {
                if (codes.tokens, codes.cols) != (rows, cols) {
                    return Err(Error::Msg(format!(
                        "{}: codes of {} × {} for an input of {rows} × {cols}",
                        self.name(),
                        codes.tokens,
                        codes.cols
                    )));
                }
                let ternary = self.product.ternary_weight(w, out, cols)?;
                // Y = alpha · s_x · Σ Wq · xq, the sums exact in i32 (the engine's product).
                matmul_int8(&RowPacked::pack(&ternary), codes, &mut y).map_err(Error::wrap)?;
                ternary.dequantize()
            }
            None => {
                let qw = self.product.quantized_weight(w, out, cols)?;
                dense_matmul_f32(
                    &qw,
                    out,
                    cols,
                    x,
                    rows,
                    &mut y,
                    rayon::current_num_threads(),
                )
                .map_err(Error::wrap)?; // Y = Qw(W) · Qa(X)
                qw
            }
        };
        let _ = self.quantized.set(Tensor::from_vec(
            qw,
            (out, cols),
            &candle_core::Device::Cpu,
        )?);
        let mut dims = xl.shape().dims().to_vec();
        *dims.last_mut().expect("product_dims checked the rank") = out;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (out, cols) = w.dims2()?;
        let rows = x.elem_count() / cols;
        // candle runs an op's forward before its backward, so the forward has stored Qw(W').
        let qw = self
            .quantized
            .get()
            .ok_or_else(|| Error::Msg("ternary-matmul: backward before forward".into()))?;
        let dy = grad.contiguous()?.reshape((rows, out))?;
        let dx = dy.matmul(qw)?.reshape(x.shape())?; // STE through Qa: dX = dY · Qw(W')
        let mut dw = dy.t()?.matmul(&x.reshape((rows, cols))?)?; // STE through Qw
        if let Some(h) = &self.product.rotate_weight {
            dw = HadamardOp::new(h.clone()).apply(&dw)?; // d(W·H)/dW: dW' · H
        }
        Ok((Some(dx), Some(dw)))
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

    /// Largest |a − b| over the largest |b|.
    fn relative_error(got: &Tensor, want: &Tensor) -> f32 {
        let g: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
        let w: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
        let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
        g.iter()
            .zip(&w)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
            / scale
    }

    #[test]
    fn fused_bitlinear_equals_the_composition_of_the_single_ops() {
        // QuantizeInput + TernaryMatmul against HadamardOp → ActivationSte → TernarySte →
        // matmul, for plain BitLinear, H-BitLinear, the weight-rotation ablation, INT4 and a4.8.
        let (rows, cols, out) = (6usize, 12usize, 5usize);
        let h = Arc::new(Hadamard::new(cols).unwrap());
        let xs: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.1)
            .collect();
        let ws: Vec<f32> = (0..out * cols)
            .map(|i| ((i * 29 % 17) as f32 - 8.0) * 0.05)
            .collect();
        let cs: Vec<f32> = (0..rows * out)
            .map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.5)
            .collect();
        for (hadamard, rotate, bits, keep) in [
            (false, false, ActBits::Int8, None),
            (true, false, ActBits::Int8, None),
            (true, true, ActBits::Int4, None),
            (false, false, ActBits::Int4, Some(0.5)),
        ] {
            let x = Var::from_tensor(&tensor(&xs, &[2, 3, cols])).unwrap();
            let w = Var::from_tensor(&tensor(&ws, &[out, cols])).unwrap();
            let c = tensor(&cs, &[2, 3, out]);
            let transform = hadamard.then(|| h.clone());
            let fused_in = QuantizeInput {
                hadamard: transform.clone(),
                bits,
                topk_keep: keep,
                quantize: true,
            }
            .apply_keeping_codes(x.as_tensor())
            .unwrap();
            let product = TernaryMatmul {
                rotate_weight: transform.clone().filter(|_| rotate),
                quantize: true,
            };
            // The integer forward (the model's) and the f32 GEMM of the same values.
            let fused = product.apply_quantized(&fused_in, w.as_tensor()).unwrap();
            let fused_f32 = product.apply(&fused_in.values, w.as_tensor()).unwrap();
            let op = HadamardOp::new(h.clone());
            let mut xr = x.as_tensor().clone();
            let mut wr = w.as_tensor().clone();
            if hadamard {
                xr = op.apply(&xr).unwrap();
                if rotate {
                    wr = op.apply(&wr).unwrap();
                }
            }
            let xq = xr
                .apply_op1(ActivationSte {
                    bits,
                    topk_keep: keep,
                })
                .unwrap();
            let wq = wr.apply_op1(TernarySte).unwrap();
            let composed = xq.broadcast_matmul(&wq.t().unwrap()).unwrap();
            let case = format!("hadamard {hadamard}, rotate {rotate}, {bits:?}, keep {keep:?}");
            assert!(relative_error(&fused, &composed) < 1e-6, "{case}: forward");
            assert!(
                relative_error(&fused_f32, &composed) < 1e-6,
                "{case}: f32 forward"
            );
            let gf = (&fused * &c)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gc = (&composed * &c)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (name, var) in [("dX", &x), ("dW", &w)] {
                let err = relative_error(gf.get(var).unwrap(), gc.get(var).unwrap());
                assert!(err < 1e-5, "{case}: {name} off by {err}");
            }
        }
    }

    #[test]
    fn integer_forward_is_the_engines_product_bit_for_bit() {
        // Wide enough for the kernels' tiles and a padded row (cols not a multiple of 32).
        let (rows, cols, out) = (9usize, 100usize, 37usize);
        let xs: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.1 + (i % 7) as f32 * 0.013)
            .collect();
        let ws: Vec<f32> = (0..out * cols)
            .map(|i| ((i * 29 % 17) as f32 - 8.0) * 0.05)
            .collect();
        let w = tensor(&ws, &[out, cols]);
        for bits in [ActBits::Int8, ActBits::Int4] {
            let input = QuantizeInput {
                hadamard: None,
                bits,
                topk_keep: None,
                quantize: true,
            }
            .apply_keeping_codes(&tensor(&xs, &[rows, cols]))
            .unwrap();
            let codes = input.codes.clone().expect("the quantizer ran");
            let values: Vec<f32> = input.values.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(values, codes.dequantize(), "{bits:?}: values are s · code");
            let product = TernaryMatmul {
                rotate_weight: None,
                quantize: true,
            };
            let got: Vec<f32> = product
                .apply_quantized(&input, &w)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let ternary = quantize_ternary(&ws, out, cols).unwrap();
            let want = hbit_kernels::matmul::matmul_reference(&ternary, &codes).unwrap();
            assert_eq!(got, want, "{bits:?}: alpha · s_x · Σ Wq · xq");
            // Without codes (the quantizer off) the product is the f32 one of the values.
            let off = QuantizeInput {
                hadamard: None,
                bits,
                topk_keep: None,
                quantize: false,
            }
            .apply_keeping_codes(&tensor(&xs, &[rows, cols]))
            .unwrap();
            assert!(off.codes.is_none());
            let plain = TernaryMatmul {
                rotate_weight: None,
                quantize: false,
            };
            let y = plain.apply_quantized(&off, &w).unwrap();
            let want = off.values.matmul(&w.t().unwrap()).unwrap();
            assert!(
                relative_error(&y, &want) < 1e-6,
                "{bits:?}: unquantized product"
            );
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
