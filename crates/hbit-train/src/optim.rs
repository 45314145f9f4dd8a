//! AdamW with decoupled weight decay (Loshchilov & Hutter), betas (0.9, 0.95) as in the paper's
//! Table 9. Written here, not taken from candle-nn, because continue-training (a8 → a4) and
//! `--resume` need the moments saved and restored exactly, which candle-nn's AdamW keeps private.
//! Gradients come from candle's autograd; this is only the update rule.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Tensor, Var};
use rayon::prelude::*;

use crate::error::TrainError;

pub const BETA1: f64 = 0.9;
pub const BETA2: f64 = 0.95;
pub const ADAM_EPS: f64 = 1e-8;

/// Parameters updated per rayon task.
const UPDATE_CHUNK: usize = 1 << 14;

/// Weight decay applies to matrices (projections, embeddings), not to norm gains.
pub fn decays(shape: &[usize]) -> bool {
    shape.len() >= 2
}

#[derive(Debug, Clone)]
pub struct AdamW {
    /// First moment per parameter, in the model's canonical parameter order.
    exp_avg: Vec<Vec<f32>>,
    /// Second moment per parameter.
    exp_avg_sq: Vec<Vec<f32>>,
    /// Updates applied so far (bias correction uses it).
    pub steps: u64,
}

impl AdamW {
    pub fn new(params: &[(String, Var)]) -> AdamW {
        let zeros = || -> Vec<Vec<f32>> {
            params
                .iter()
                .map(|(_, v)| vec![0.0; v.elem_count()])
                .collect()
        };
        AdamW {
            exp_avg: zeros(),
            exp_avg_sq: zeros(),
            steps: 0,
        }
    }

    /// One update: `θ ← θ − lr·wd·θ`, then Adam with bias correction.
    pub fn update(
        &mut self,
        params: &[(String, Var)],
        grads: &[Vec<f32>],
        lr: f64,
        weight_decay: f64,
    ) -> Result<(), TrainError> {
        self.steps += 1;
        let c1 = 1.0 - BETA1.powi(self.steps as i32);
        let c2 = 1.0 - BETA2.powi(self.steps as i32);
        let (b1, b2) = (BETA1 as f32, BETA2 as f32);
        let step_size = (lr / c1) as f32;
        let inv_sqrt_c2 = (1.0 / c2.sqrt()) as f32;
        for (i, ((_, var), grad)) in params.iter().zip(grads).enumerate() {
            let mut theta: Vec<f32> = var.flatten_all()?.to_vec1()?;
            let shrink = if decays(var.dims()) {
                (1.0 - lr * weight_decay) as f32
            } else {
                1.0
            };
            let (m, v) = (&mut self.exp_avg[i], &mut self.exp_avg_sq[i]);
            // Elementwise, so splitting across threads changes no bit.
            theta
                .par_chunks_mut(UPDATE_CHUNK)
                .zip(m.par_chunks_mut(UPDATE_CHUNK))
                .zip(
                    v.par_chunks_mut(UPDATE_CHUNK)
                        .zip(grad.par_chunks(UPDATE_CHUNK)),
                )
                .for_each(|((theta, m), (v, grad))| {
                    for (((theta, m), v), &g) in theta.iter_mut().zip(m).zip(v).zip(grad) {
                        *m = b1 * *m + (1.0 - b1) * g;
                        *v = b2 * *v + (1.0 - b2) * g * g;
                        let denom = v.sqrt() * inv_sqrt_c2 + ADAM_EPS as f32;
                        *theta = *theta * shrink - step_size * *m / denom;
                    }
                });
            var.set(&Tensor::from_vec(theta, var.shape(), var.device())?)?;
        }
        Ok(())
    }

    /// Moments as named tensors (`exp_avg.<param>`, `exp_avg_sq.<param>`, PyTorch's names).
    pub fn state_tensors(
        &self,
        params: &[(String, Var)],
    ) -> Result<Vec<(String, Tensor)>, TrainError> {
        let mut out = Vec::with_capacity(2 * params.len());
        for (i, (name, var)) in params.iter().enumerate() {
            let dev = var.device();
            out.push((
                format!("exp_avg.{name}"),
                Tensor::from_vec(self.exp_avg[i].clone(), var.shape(), dev)?,
            ));
            out.push((
                format!("exp_avg_sq.{name}"),
                Tensor::from_vec(self.exp_avg_sq[i].clone(), var.shape(), dev)?,
            ));
        }
        Ok(out)
    }

    /// Restores moments saved by [`AdamW::state_tensors`]; every tensor must be present with the
    /// parameter's shape. Errors name `source` and the tensor.
    pub fn from_state(
        params: &[(String, Var)],
        mut tensors: HashMap<String, Tensor>,
        steps: u64,
        source: &Path,
    ) -> Result<AdamW, TrainError> {
        let mut opt = AdamW::new(params);
        opt.steps = steps;
        for (i, (name, var)) in params.iter().enumerate() {
            for (prefix, slot) in [("exp_avg", 0), ("exp_avg_sq", 1)] {
                let key = format!("{prefix}.{name}");
                let err = |message: String| TrainError::Tensor {
                    path: source.to_path_buf(),
                    tensor: key.clone(),
                    message,
                };
                let t = tensors.remove(&key).ok_or_else(|| err("missing".into()))?;
                if t.dims() != var.dims() {
                    return Err(err(format!(
                        "expected shape {:?}, found {:?}",
                        var.dims(),
                        t.dims()
                    )));
                }
                let values: Vec<f32> = t
                    .to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1()?;
                if values.iter().any(|v| !v.is_finite()) {
                    return Err(err("non-finite optimizer moment".into()));
                }
                if slot == 0 {
                    opt.exp_avg[i] = values;
                } else {
                    opt.exp_avg_sq[i] = values;
                }
            }
        }
        Ok(opt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn first_step_known_answer() {
        // Step 1: m̂ = g, v̂ = g², so θ ← θ(1 − lr·wd) − lr·g/(|g| + eps) ≈ θ(1 − lr·wd) − lr·sign(g).
        let w = Var::from_tensor(
            &Tensor::from_vec(vec![1.0f32, -2.0, 0.5, 0.0], (2, 2), &Device::Cpu).unwrap(),
        )
        .unwrap();
        let gain = Var::from_tensor(&Tensor::from_vec(vec![1.0f32, 1.0], 2, &Device::Cpu).unwrap())
            .unwrap();
        let params = vec![
            ("w".to_string(), w.clone()),
            ("norm.weight".to_string(), gain.clone()),
        ];
        let mut opt = AdamW::new(&params);
        opt.update(
            &params,
            &[vec![0.5, -0.25, 0.0, 2.0], vec![1.0, -1.0]],
            0.1,
            0.5,
        )
        .unwrap();
        let got: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let want = [1.0 * 0.95 - 0.1, -2.0 * 0.95 + 0.1, 0.5 * 0.95, -0.1];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
        // Norm gains are not decayed.
        let g: Vec<f32> = gain.to_vec1().unwrap();
        assert!(
            (g[0] - 0.9).abs() < 1e-6 && (g[1] - 1.1).abs() < 1e-6,
            "{g:?}"
        );
        // Round trip of the moments.
        let state: HashMap<String, Tensor> =
            opt.state_tensors(&params).unwrap().into_iter().collect();
        let back = AdamW::from_state(&params, state.clone(), 1, Path::new("opt")).unwrap();
        assert_eq!(back.exp_avg, opt.exp_avg);
        assert_eq!(back.exp_avg_sq, opt.exp_avg_sq);
        let mut missing = state;
        missing.remove("exp_avg_sq.w");
        let err = AdamW::from_state(&params, missing, 1, Path::new("opt.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("opt.safetensors") && err.contains("exp_avg_sq.w"),
            "{err}"
        );
    }
}
