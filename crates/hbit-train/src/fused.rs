//! The model's non-quantizing layers as fused candle ops with explicit backward: RMSNorm, the
//! attention's head layout with RoPE, the causal softmax, the GLU product and the cross-entropy.
//!
//! Written out as single ops because candle composes each of them from 5–10 elementwise ops,
//! every one of which allocates a tensor and records a node whose backward allocates more; on
//! two cores that bookkeeping, not the matmuls, dominated a training step. candle-nn's fused
//! forwards (`rms_norm`, `rope`, `softmax_last_dim`) have no backward, so they cannot train.
//! Each backward below is the closed-form derivative, checked in the tests against candle's
//! autograd of the composed ops.

use std::sync::Arc;

use candle_core::Tensor;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Error, Layout, Result, Shape};
use hbit_model::HiddenAct;
use rayon::prelude::*;

use crate::ops::{f32_input, last_dim};

/// Rows handed to one rayon task.
const ROWS_PER_TASK: usize = 16;

fn u32_input<'a>(op: &str, storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [u32]> {
    let CpuStorage::U32(data) = storage else {
        return Err(Error::Msg(format!("{op}: expects u32 token ids")));
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => Err(Error::Msg(format!("{op}: expects contiguous token ids"))),
    }
}

/// `1 / sqrt(mean(x²) + eps)` of one row, summed in the kernel layer's fixed order, which the
/// engine uses too (`hbit_kernels::norm`).
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    hbit_kernels::norm::inv_rms(row, eps)
}

/// RMSNorm with a learned gain over the last dimension: `y = x · r · g`, `r = 1/sqrt(mean(x²)+eps)`.
///
/// Backward, per row with `u = g ⊙ dy`: `dx = r·u − x · r³ · (u·x) / n`, and
/// `dg = Σ_rows dy ⊙ x · r`.
#[derive(Debug, Clone, Copy)]
pub struct RmsNorm {
    pub eps: f32,
}

impl RmsNorm {
    /// `x`: `[.., n]`, `gain`: `[n]`.
    pub fn apply(&self, x: &Tensor, gain: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op2(gain, *self)
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_input(self.name(), xs, xl)?;
        let g = f32_input(self.name(), gs, gl)?;
        let n = last_dim(self.name(), xl)?;
        if g.len() != n {
            return Err(Error::Msg(format!(
                "rms-norm: gain has {} values, the last dimension is {n}",
                g.len()
            )));
        }
        let mut out = x.to_vec();
        out.par_chunks_mut(n * ROWS_PER_TASK).for_each(|rows| {
            for row in rows.chunks_exact_mut(n) {
                let r = inv_rms(row, self.eps);
                for (v, gi) in row.iter_mut().zip(g) {
                    *v = *v * r * gi;
                }
            }
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gain: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = x.apply_op3_no_bwd(gain, &grad, &RmsNormInputGrad { eps: self.eps })?;
        let dg = x.apply_op2_no_bwd(&grad, &RmsNormGainGrad { eps: self.eps })?;
        Ok((Some(dx), Some(dg)))
    }
}

/// `dx` of [`RmsNorm`] from `(x, g, dy)`.
struct RmsNormInputGrad {
    eps: f32,
}

impl CustomOp3 for RmsNormInputGrad {
    fn name(&self) -> &'static str {
        "rms-norm-input-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        dys: &CpuStorage,
        dyl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_input(self.name(), xs, xl)?;
        let g = f32_input(self.name(), gs, gl)?;
        let dy = f32_input(self.name(), dys, dyl)?;
        let n = g.len();
        let mut dx = vec![0.0f32; x.len()];
        dx.par_chunks_mut(n * ROWS_PER_TASK)
            .enumerate()
            .for_each(|(task, out_rows)| {
                let first = task * n * ROWS_PER_TASK;
                for (i, out) in out_rows.chunks_exact_mut(n).enumerate() {
                    let at = first + i * n;
                    let (x, dy) = (&x[at..at + n], &dy[at..at + n]);
                    let r = inv_rms(x, self.eps);
                    let ux: f32 = x.iter().zip(dy).zip(g).map(|((x, d), g)| g * d * x).sum();
                    let c = r * r * r * ux / n as f32;
                    for (((o, x), d), g) in out.iter_mut().zip(x).zip(dy).zip(g) {
                        *o = r * g * d - x * c;
                    }
                }
            });
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}

/// `dg` of [`RmsNorm`] from `(x, dy)`: the column sums of `dy ⊙ x · r`.
struct RmsNormGainGrad {
    eps: f32,
}

impl CustomOp2 for RmsNormGainGrad {
    fn name(&self) -> &'static str {
        "rms-norm-gain-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        dys: &CpuStorage,
        dyl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_input(self.name(), xs, xl)?;
        let dy = f32_input(self.name(), dys, dyl)?;
        let n = last_dim(self.name(), xl)?;
        // Partial sums per task, added in task order so the result does not depend on timing.
        let partials: Vec<Vec<f32>> = x
            .par_chunks(n * ROWS_PER_TASK * 8)
            .zip(dy.par_chunks(n * ROWS_PER_TASK * 8))
            .map(|(x, dy)| {
                let mut acc = vec![0.0f32; n];
                for (x, dy) in x.chunks_exact(n).zip(dy.chunks_exact(n)) {
                    let r = inv_rms(x, self.eps);
                    for ((a, x), d) in acc.iter_mut().zip(x).zip(dy) {
                        *a += d * x * r;
                    }
                }
                acc
            })
            .collect();
        let mut dg = vec![0.0f32; n];
        for p in partials {
            for (a, v) in dg.iter_mut().zip(p) {
                *a += v;
            }
        }
        Ok((CpuStorage::F32(dg), Shape::from(n)))
    }
}

/// `cos` / `sin` tables `[max_pos, hd]` of rotate-half RoPE (HF LLaMA).
#[derive(Debug)]
pub struct RopeTables {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub head_dim: usize,
}

impl RopeTables {
    fn positions(&self) -> usize {
        self.cos.len() / self.head_dim
    }

    /// `out = x·cos + sign · rotate_half(x)·sin` at position `p` (`sign` −1: the inverse
    /// rotation, which is also the transpose).
    fn rotate(&self, x: &[f32], out: &mut [f32], p: usize, sign: f32) {
        let (hd, half) = (self.head_dim, self.head_dim / 2);
        let (cos, sin) = (&self.cos[p * hd..][..hd], &self.sin[p * hd..][..hd]);
        for i in 0..half {
            let (x1, x2) = (x[i], x[i + half]);
            // rotate_half(x) = [-x2, x1].
            out[i] = x1 * cos[i] - sign * x2 * sin[i];
            out[i + half] = x2 * cos[i + half] + sign * x1 * sin[i + half];
        }
    }
}

/// The attention's change of layout as one op: `[B, T, n·hd]` ⇄ `[B, n, T, hd]`, with RoPE at
/// each token's position (0..T) applied on the way in, as candle would do with reshape,
/// transpose, a copy and the rotation (four recorded nodes). The backward of a split is the
/// merge with the inverse rotation, and vice versa.
#[derive(Debug, Clone)]
pub struct Heads {
    heads: usize,
    head_dim: usize,
    rope: Option<Arc<RopeTables>>,
    /// +1 rotates forward, −1 backward (the transpose); ignored without `rope`.
    rope_sign: f32,
    split: bool,
}

impl Heads {
    /// `[B, T, n·hd]` → `[B, n, T, hd]`, rotating by RoPE when `rope` is given.
    pub fn split(heads: usize, head_dim: usize, rope: Option<Arc<RopeTables>>) -> Heads {
        Heads {
            heads,
            head_dim,
            rope,
            rope_sign: 1.0,
            split: true,
        }
    }

    /// `[B, n, T, hd]` → `[B, T, n·hd]`.
    pub fn merge(heads: usize, head_dim: usize) -> Heads {
        Heads {
            heads,
            head_dim,
            rope: None,
            rope_sign: 1.0,
            split: false,
        }
    }

    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1(self.clone())
    }

    /// The op whose forward is this op's backward.
    fn transposed(&self) -> Heads {
        Heads {
            rope_sign: -self.rope_sign,
            split: !self.split,
            ..self.clone()
        }
    }
}

impl CustomOp1 for Heads {
    fn name(&self) -> &'static str {
        "heads"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_input(self.name(), storage, layout)?;
        let (n, hd) = (self.heads, self.head_dim);
        let dims = layout.shape().dims();
        let (b, t, out_shape) = match (self.split, dims) {
            (true, [b, t, w]) if *w == n * hd => (*b, *t, Shape::from((*b, n, *t, hd))),
            (false, [b, h, t, d]) if *h == n && *d == hd => (*b, *t, Shape::from((*b, *t, n * hd))),
            _ => {
                return Err(Error::Msg(format!(
                "heads: expects [B, T, {}] to split or [B, {n}, T, {hd}] to merge, found {dims:?}",
                n * hd
            )))
            }
        };
        if let Some(rope) = &self.rope {
            if t > rope.positions() {
                return Err(Error::Msg(format!(
                    "rope: {t} positions exceed the table's {}",
                    rope.positions()
                )));
            }
        }
        let mut out = vec![0.0f32; x.len()];
        // One task per sequence: element (b, h, p, :) of the head layout is (b, p, h·hd..) of
        // the token layout.
        out.par_chunks_mut(t * n * hd)
            .zip(x.par_chunks(t * n * hd))
            .for_each(|(out, x)| {
                for h in 0..n {
                    for p in 0..t {
                        let heads_at = (h * t + p) * hd;
                        let tokens_at = p * n * hd + h * hd;
                        let (src, dst) = if self.split {
                            (&x[tokens_at..][..hd], &mut out[heads_at..][..hd])
                        } else {
                            (&x[heads_at..][..hd], &mut out[tokens_at..][..hd])
                        };
                        match &self.rope {
                            Some(rope) => rope.rotate(src, dst, p, self.rope_sign),
                            None => dst.copy_from_slice(src),
                        }
                    }
                }
            });
        debug_assert_eq!(out.len(), b * t * n * hd);
        Ok((CpuStorage::F32(out), out_shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.transposed().apply(grad)?))
    }
}

/// The GLU's gating product as one op: `act(gate) ⊙ up` with `act` SiLU or squared ReLU.
/// Backward: `dgate = dy ⊙ up ⊙ act'(gate)`, `dup = dy ⊙ act(gate)`.
#[derive(Debug, Clone, Copy)]
pub struct Glu {
    pub act: HiddenAct,
}

impl Glu {
    pub fn apply(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        gate.contiguous()?.apply_op2(&up.contiguous()?, *self)
    }

    /// `(act(g), act'(g))`.
    fn act(&self, g: f32) -> (f32, f32) {
        match self.act {
            HiddenAct::Relu2 => {
                let r = g.max(0.0);
                (r * r, 2.0 * r)
            }
            HiddenAct::Silu => {
                // The engine's SiLU and `exp` (`hbit_kernels::act`), so both agree bit for bit.
                let (silu, sigmoid) = hbit_kernels::act::silu_and_sigmoid(g);
                (silu, sigmoid * (1.0 + g * (1.0 - sigmoid)))
            }
        }
    }
}

fn same_shape(op: &str, a: &Layout, b: &Layout) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::Msg(format!(
            "{op}: shapes differ, {:?} vs {:?}",
            a.shape(),
            b.shape()
        )));
    }
    Ok(())
}

impl CustomOp2 for Glu {
    fn name(&self) -> &'static str {
        "glu"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        same_shape(self.name(), gl, ul)?;
        let g = f32_input(self.name(), gs, gl)?;
        let u = f32_input(self.name(), us, ul)?;
        let path = hbit_kernels::active_path().map_err(|e| Error::Msg(format!("glu: {e}")))?;
        let mut out = g.to_vec();
        out.par_chunks_mut(4096)
            .zip(u.par_chunks(4096))
            .try_for_each(|(o, u)| match self.act {
                // The kernel layer's vectorized SiLU, which the engine runs too.
                HiddenAct::Silu => hbit_kernels::act::silu_times(path, o, u),
                HiddenAct::Relu2 => {
                    for (o, &u) in o.iter_mut().zip(u) {
                        *o = self.act(*o).0 * u;
                    }
                    Ok(())
                }
            })
            .map_err(|e| Error::Msg(format!("glu: {e}")))?;
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // Both gradients from one pass: `[2, ..]` holding dgate then dup.
        let both = gate.apply_op3_no_bwd(up, &grad, &GluGrad { glu: *self })?;
        let dgate = both.get(0)?;
        let dup = both.get(1)?;
        Ok((Some(dgate), Some(dup)))
    }
}

/// Both input gradients of [`Glu`] from `(gate, up, dy)`, stacked as `[2, ..]`.
struct GluGrad {
    glu: Glu,
}

impl CustomOp3 for GluGrad {
    fn name(&self) -> &'static str {
        "glu-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        same_shape(self.name(), gl, ul)?;
        same_shape(self.name(), gl, dl)?;
        let g = f32_input(self.name(), gs, gl)?;
        let u = f32_input(self.name(), us, ul)?;
        let dy = f32_input(self.name(), ds, dl)?;
        let n = g.len();
        let mut out = vec![0.0f32; 2 * n];
        let (dgate, dup) = out.split_at_mut(n);
        dgate
            .par_chunks_mut(4096)
            .zip(dup.par_chunks_mut(4096))
            .zip(
                g.par_chunks(4096)
                    .zip(u.par_chunks(4096))
                    .zip(dy.par_chunks(4096)),
            )
            .for_each(|((dg, du), ((g, u), dy))| {
                for ((((dg, du), &g), &u), &dy) in dg.iter_mut().zip(du).zip(g).zip(u).zip(dy) {
                    let (a, da) = self.glu.act(g);
                    *dg = dy * u * da;
                    *du = dy * a;
                }
            });
        let mut dims = vec![2];
        dims.extend_from_slice(gl.shape().dims());
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// Softmax over the last dimension of causal attention scores `[.., T, T]`:
/// `P = softmax(scale · S + M)` with `M` = −∞ above the diagonal (row i sees columns 0..=i).
/// Backward: `dS = scale · P ⊙ (dP − Σ_j dP_j P_j)` per row; masked entries get 0.
#[derive(Debug, Clone, Copy)]
pub struct CausalSoftmax {
    /// Positive (1/sqrt(head_dim)); the row maximum is taken before scaling.
    pub scale: f32,
}

impl CausalSoftmax {
    pub fn apply(&self, scores: &Tensor) -> Result<Tensor> {
        scores.contiguous()?.apply_op1(*self)
    }
}

fn square_last_dims(op: &str, layout: &Layout) -> Result<usize> {
    let dims = layout.shape().dims();
    match dims {
        [.., r, c] if r == c && *c > 0 => Ok(*c),
        _ => Err(Error::Msg(format!(
            "{op}: expects [.., T, T] scores, found {dims:?}"
        ))),
    }
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let s = f32_input(self.name(), storage, layout)?;
        let t = square_last_dims(self.name(), layout)?;
        let mut out = vec![0.0f32; s.len()];
        out.par_chunks_mut(t * t)
            .zip(s.par_chunks(t * t))
            .for_each(|(out, s)| {
                for (i, (p, s)) in out.chunks_exact_mut(t).zip(s.chunks_exact(t)).enumerate() {
                    let (p, s) = (&mut p[..=i], &s[..=i]);
                    let max = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) * self.scale;
                    let mut sum = 0.0f32;
                    for (p, &s) in p.iter_mut().zip(s) {
                        *p = (s * self.scale - max).exp();
                        sum += *p;
                    }
                    let inv = 1.0 / sum;
                    p.iter_mut().for_each(|p| *p *= inv);
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, probs: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(probs.apply_op2_no_bwd(
            &grad,
            &CausalSoftmaxGrad { scale: self.scale },
        )?))
    }
}

/// `dS` of [`CausalSoftmax`] from `(P, dP)`.
struct CausalSoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for CausalSoftmaxGrad {
    fn name(&self) -> &'static str {
        "causal-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        ps: &CpuStorage,
        pl: &Layout,
        dps: &CpuStorage,
        dpl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let p = f32_input(self.name(), ps, pl)?;
        let dp = f32_input(self.name(), dps, dpl)?;
        let t = square_last_dims(self.name(), pl)?;
        let mut ds = vec![0.0f32; p.len()];
        ds.par_chunks_mut(t * t)
            .zip(p.par_chunks(t * t).zip(dp.par_chunks(t * t)))
            .for_each(|(ds, (p, dp))| {
                for (i, ((ds, p), dp)) in ds
                    .chunks_exact_mut(t)
                    .zip(p.chunks_exact(t))
                    .zip(dp.chunks_exact(t))
                    .enumerate()
                {
                    let (p, dp) = (&p[..=i], &dp[..=i]);
                    let dot: f32 = p.iter().zip(dp).map(|(p, d)| p * d).sum();
                    for ((o, p), d) in ds.iter_mut().zip(p).zip(dp) {
                        *o = self.scale * p * (d - dot);
                    }
                }
            });
        Ok((CpuStorage::F32(ds), pl.shape().clone()))
    }
}

/// Mean next-token cross-entropy of logits `[N, V]` against token ids `[N]` (u32): a scalar.
/// Backward: `dlogits = g · (softmax(logits) − onehot(target)) / N`.
#[derive(Debug, Clone, Copy)]
pub struct CrossEntropy;

impl CrossEntropy {
    pub fn apply(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, CrossEntropy)
    }
}

fn check_targets(op: &str, logits: &Layout, targets: &[u32]) -> Result<(usize, usize)> {
    let (n, v) = match logits.shape().dims() {
        [n, v] if *v > 0 => (*n, *v),
        dims => {
            return Err(Error::Msg(format!(
                "{op}: expects logits [N, V], found {dims:?}"
            )))
        }
    };
    if targets.len() != n {
        return Err(Error::Msg(format!(
            "{op}: {n} logit rows but {} targets",
            targets.len()
        )));
    }
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= v) {
        return Err(Error::Msg(format!(
            "{op}: target {bad} is outside the vocabulary of {v}"
        )));
    }
    Ok((n, v))
}

/// `(max, log Σ exp(x − max))` of one row.
fn log_sum_exp(row: &[f32]) -> (f32, f32) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
    (max, sum.ln())
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(
        &self,
        ls: &CpuStorage,
        ll: &Layout,
        ts: &CpuStorage,
        tl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let logits = f32_input(self.name(), ls, ll)?;
        let targets = u32_input(self.name(), ts, tl)?;
        let (n, v) = check_targets(self.name(), ll, targets)?;
        if n == 0 {
            return Err(Error::Msg("cross-entropy: no tokens".into()));
        }
        // Per-row losses in parallel, summed in row order (deterministic).
        let losses: Vec<f32> = logits
            .par_chunks(v)
            .zip(targets.par_iter())
            .map(|(row, &t)| {
                let (max, lse) = log_sum_exp(row);
                max + lse - row[t as usize]
            })
            .collect();
        let mean = losses.iter().map(|&l| l as f64).sum::<f64>() / n as f64;
        Ok((CpuStorage::F32(vec![mean as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = logits.dim(0)?;
        let scale = grad.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? / n as f32;
        let d = logits.apply_op2_no_bwd(targets, &CrossEntropyGrad { scale })?;
        Ok((Some(d), None))
    }
}

/// `dlogits` of [`CrossEntropy`] with the upstream gradient and 1/N folded into `scale`.
struct CrossEntropyGrad {
    scale: f32,
}

impl CustomOp2 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "cross-entropy-grad"
    }

    fn cpu_fwd(
        &self,
        ls: &CpuStorage,
        ll: &Layout,
        ts: &CpuStorage,
        tl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let logits = f32_input(self.name(), ls, ll)?;
        let targets = u32_input(self.name(), ts, tl)?;
        let (_, v) = check_targets(self.name(), ll, targets)?;
        let mut d = vec![0.0f32; logits.len()];
        d.par_chunks_mut(v)
            .zip(logits.par_chunks(v).zip(targets.par_iter()))
            .for_each(|(d, (row, &t))| {
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let mut sum = 0.0f32;
                for (d, &x) in d.iter_mut().zip(row) {
                    *d = (x - max).exp();
                    sum += *d;
                }
                let scale = self.scale / sum; // softmax = exp(x − max) / Σ
                d.iter_mut().for_each(|d| *d *= scale);
                d[t as usize] -= self.scale;
            });
        Ok((CpuStorage::F32(d), ll.shape().clone()))
    }
}

/// Mean cross-entropy of `logits` `[N, V]` against `targets` `[N]`, as a scalar tensor.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    CrossEntropy::apply(logits, &targets.flatten_all()?)
}

#[cfg(test)]
#[path = "fused_tests.rs"]
mod tests;
