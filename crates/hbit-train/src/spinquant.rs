//! SpinQuant (Liu et al., 2024), the learned-rotation baseline of the paper's Table 4: rotations
//! of a trained BitNet b1.58 model that leave its full-precision function unchanged and are
//! trained so the model quantized to ternary weights and 4-bit activations loses least.
//!
//! Row-vector convention: a state `x` is `[.., H]` and a projection computes `x·Wᵀ`, `W [out, in]`.
//! - Norm gains fuse into the projections reading the norm (`W ← W·diag(g)`; the final norm's
//!   into the head, which is untied from the embedding). A gain-free RMSNorm commutes with any
//!   orthogonal matrix, which the folds below need.
//! - R1 `[H, H]` rotates the residual stream: `E ← E·R1`; readers (q, k, v, gate, up, head)
//!   `W ← W·R1`; writers (o, down) `W ← R1ᵀ·W`. Every residual state becomes `x·R1`.
//! - R2 `[hd, hd]`, one per layer, rotates every value head: `W_v ← blockdiag(R2ᵀ)·W_v`,
//!   `W_o ← W_o·blockdiag(R2)`. Attention only mixes positions, and the gain-free sub-norm before
//!   W_o sees the same norm per token, so the output is unchanged.
//! - R4, the online Hadamard before W_down: variant `bitnet_b158_spinquant` applies it and
//!   quantizes `W_down·H`, as QuaRot and SpinQuant do. SpinQuant's R3 (a Hadamard on Q and K
//!   after RoPE) serves KV-cache quantization only, which Table 4 leaves at 16 bits: not applied.
//!
//! R1 and R2 start as random Hadamard matrices (SpinQuant's initialization) and minimize the
//! quantized model's next-token loss on calibration text by Cayley SGD ([`crate::stiefel`]),
//! with the straight-through estimator through the quantizers. `∂L/∂R` comes by the chain rule
//! through the folds: the model's backward gives `G_W = ∂L/∂W'` for every folded weight
//! `W' = fold(W, R)`, and the backward of `Σ ⟨fold(W, R), stopgrad(G_W)⟩` gives `∂L/∂R`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use hbit_kernels::quant::ActBits;
use hbit_model::tensors::{self, layer_norm, proj_weight};
use hbit_model::{ModelConfig, Proj, Variant};

use crate::data::PackedData;
use crate::error::TrainError;
use crate::model::BitnetModel;
use crate::ptq::{latent, NORM_READERS};
use crate::stiefel::Orthogonal;

type Result<T> = std::result::Result<T, TrainError>;

/// How the rotations are learned. The defaults are SpinQuant's (100 Cayley SGD steps at
/// learning rate 1.5 with cosine decay), on fewer and shorter calibration sequences.
#[derive(Debug, Clone, PartialEq)]
pub struct SpinQuantOptions {
    pub steps: usize,
    pub learning_rate: f64,
    /// Calibration sequences per step.
    pub batch_size: usize,
    /// Seed of the initial random Hadamards and of the calibration order.
    pub seed: u64,
}

impl Default for SpinQuantOptions {
    fn default() -> SpinQuantOptions {
        SpinQuantOptions {
            steps: 100,
            learning_rate: 1.5,
            batch_size: 4,
            seed: 0,
        }
    }
}

/// One optimization step as it went.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpinQuantStep {
    pub step: usize,
    /// Mean next-token loss (nats) of the quantized model on the step's batch, before the step.
    pub loss: f64,
    /// Cayley step size taken for R1.
    pub step_size: f64,
}

/// The learned rotations: R1 of the residual stream, R2 of each layer's value heads.
#[derive(Debug, Clone, PartialEq)]
pub struct Rotations {
    pub r1: Orthogonal,
    pub r2: Vec<Orthogonal>,
}

impl Rotations {
    /// SpinQuant's start: random Hadamard matrices.
    pub fn random_hadamard(config: &ModelConfig, seed: u64) -> Rotations {
        Rotations {
            r1: Orthogonal::random_hadamard(config.hidden_size, seed),
            r2: (0..config.num_layers)
                .map(|l| {
                    Orthogonal::random_hadamard(config.head_dim, seed ^ ((l as u64 + 1) << 32))
                })
                .collect(),
        }
    }

    fn tensors(&self) -> Result<(Tensor, Vec<Tensor>)> {
        let square =
            |r: &Orthogonal| Tensor::from_vec(r.to_f32(), (r.size(), r.size()), &Device::Cpu);
        Ok((
            square(&self.r1)?,
            self.r2
                .iter()
                .map(square)
                .collect::<candle_core::Result<_>>()?,
        ))
    }
}

/// The b1.58 model's weights with every norm gain fused into the projections reading it and the
/// head untied: what every fold starts from. Norms are left out (they become gain-free).
pub struct FusedWeights {
    config: ModelConfig,
    tensors: HashMap<String, Tensor>,
}

impl FusedWeights {
    pub fn new(model: &BitnetModel) -> Result<FusedWeights> {
        let config = model.config().clone();
        if config.variant != Variant::BitnetB158 {
            return Err(TrainError::Input(format!(
                "SpinQuant starts from a bitnet_b158 model; this one is {}",
                config.variant.name()
            )));
        }
        let mut values = latent(model)?;
        let mut take = |name: &str| {
            values
                .remove(name)
                .ok_or_else(|| TrainError::Input(format!("tensor `{name}` is missing")))
        };
        let scale_columns = |w: &mut [f32], gain: &[f32]| {
            for row in w.chunks_exact_mut(gain.len()) {
                row.iter_mut().zip(gain).for_each(|(v, g)| *v *= g);
            }
        };
        let mut tensors = HashMap::new();
        let cpu = Device::Cpu;
        for l in 0..config.num_layers {
            for (norm, readers) in NORM_READERS {
                let gain = take(&layer_norm(l, norm))?;
                for &proj in readers {
                    let name = proj_weight(l, proj);
                    let mut w = take(&name)?;
                    scale_columns(&mut w, &gain);
                    let (out, cols) = config.proj_shape(proj);
                    tensors.insert(name, Tensor::from_vec(w, (out, cols), &cpu)?);
                }
            }
        }
        let (v, h) = (config.vocab_size, config.hidden_size);
        let embed = take(tensors::EMBED_TOKENS)?;
        let mut head = if config.tie_word_embeddings {
            embed.clone()
        } else {
            take(tensors::LM_HEAD)?
        };
        scale_columns(&mut head, &take(tensors::FINAL_NORM)?);
        tensors.insert(
            tensors::EMBED_TOKENS.into(),
            Tensor::from_vec(embed, (v, h), &cpu)?,
        );
        tensors.insert(
            tensors::LM_HEAD.into(),
            Tensor::from_vec(head, (v, h), &cpu)?,
        );
        Ok(FusedWeights { config, tensors })
    }

    fn get(&self, name: &str) -> candle_core::Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("fused weight {name} missing")))
    }

    /// Every weight with R1 and R2 folded in (see the module docs). `r1`, `r2` may be variables:
    /// the folds are candle ops, so gradients reach them.
    pub fn fold(&self, r1: &Tensor, r2: &[Tensor]) -> candle_core::Result<HashMap<String, Tensor>> {
        let c = &self.config;
        let (h, hd, nh, nkv) = (c.hidden_size, c.head_dim, c.num_heads, c.num_kv_heads);
        let r1_t = r1.t()?;
        let mut out = HashMap::new();
        for name in [tensors::EMBED_TOKENS, tensors::LM_HEAD] {
            out.insert(name.to_string(), self.get(name)?.matmul(r1)?);
        }
        for (l, r2) in r2.iter().enumerate().take(c.num_layers) {
            for proj in [Proj::Q, Proj::K, Proj::Gate, Proj::Up] {
                let name = proj_weight(l, proj);
                out.insert(name.clone(), self.get(&name)?.matmul(r1)?); // W·R1
            }
            // blockdiag(R2ᵀ)·W_v·R1: each head's rows [hd, H] become R2ᵀ·rows.
            let name = proj_weight(l, Proj::V);
            let wv = self.get(&name)?.matmul(r1)?; // [nkv·hd, H]
            let per_head = wv
                .reshape((nkv, hd, h))?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((hd, nkv * h))?;
            let rotated = r2
                .t()?
                .matmul(&per_head)?
                .reshape((hd, nkv, h))?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((nkv * hd, h))?;
            out.insert(name, rotated);
            // R1ᵀ·W_o·blockdiag(R2): each head's columns [H, hd] become columns·R2.
            let name = proj_weight(l, Proj::O);
            let wo = self
                .get(&name)?
                .reshape((h * nh, hd))?
                .matmul(r2)?
                .reshape((h, nh * hd))?;
            out.insert(name, r1_t.matmul(&wo)?);
            let name = proj_weight(l, Proj::Down);
            out.insert(name.clone(), r1_t.matmul(self.get(&name)?)?); // R1ᵀ·W_down
        }
        Ok(out)
    }

    /// The quantized model at `bits` with `rotations` folded in: variant
    /// `bitnet_b158_spinquant`, gain-free norms, untied head.
    pub fn model(&self, rotations: &Rotations, bits: ActBits) -> Result<BitnetModel> {
        let (r1, r2) = rotations.tensors()?;
        self.model_of(self.fold(&r1, &r2)?, bits)
    }

    fn model_of(&self, mut folded: HashMap<String, Tensor>, bits: ActBits) -> Result<BitnetModel> {
        let config = spinquant_config(&self.config, bits)?;
        for (name, shape) in hbit_model::parameter_shapes(&config) {
            if tensors::is_norm(&name) {
                folded.insert(name, Tensor::ones(shape, DType::F32, &Device::Cpu)?);
            }
        }
        BitnetModel::from_tensors(&config, folded, Path::new("<spinquant>"))
    }

    /// Loss of the model with `rotations` folded in on one batch, and `∂L/∂R1`, `∂L/∂R2[l]`.
    /// `quantize: false` runs the full-precision model (whose loss no rotation changes).
    pub fn loss_and_gradients(
        &self,
        rotations: &Rotations,
        bits: ActBits,
        inputs: &Tensor,
        targets: &Tensor,
        quantize: bool,
    ) -> Result<(f64, Vec<f64>, Vec<Vec<f64>>)> {
        let (r1, r2) = rotations.tensors()?;
        let mut model = self.model_of(self.fold(&r1, &r2)?, bits)?;
        if !quantize {
            model = model.unquantized()?;
        }
        let loss = model.loss(inputs, targets)?;
        let grads = loss.backward()?;
        // Σ ⟨fold(R), G_W⟩ with G_W constant: its gradient in R is ∂L/∂R.
        let r1_var = Var::from_tensor(&r1)?;
        let r2_vars = r2
            .iter()
            .map(Var::from_tensor)
            .collect::<candle_core::Result<Vec<_>>>()?;
        let r2_tensors: Vec<Tensor> = r2_vars.iter().map(|v| v.as_tensor().clone()).collect();
        let refolded = self.fold(r1_var.as_tensor(), &r2_tensors)?;
        let mut surrogate = Tensor::zeros((), DType::F32, &Device::Cpu)?;
        for (name, var) in model.named_vars() {
            if let (Some(w), Some(g)) = (refolded.get(&name), grads.get(&var)) {
                // Detached: the weight gradient still links to the forward graph, which the
                // surrogate's backward would otherwise walk again.
                surrogate = (surrogate + (w * g.detach())?.sum_all()?)?;
            }
        }
        let rgrads = surrogate.backward()?;
        let as_f64 = |var: &Var| -> Result<Vec<f64>> {
            let g = rgrads
                .get(var)
                .ok_or_else(|| TrainError::Input("internal: no gradient for a rotation".into()))?;
            Ok(g.flatten_all()?
                .to_vec1::<f32>()?
                .into_iter()
                .map(f64::from)
                .collect())
        };
        let g1 = as_f64(&r1_var)?;
        let g2 = r2_vars.iter().map(as_f64).collect::<Result<Vec<_>>>()?;
        Ok((f64::from(loss.to_scalar::<f32>()?), g1, g2))
    }
}

/// `config` as the SpinQuant variant at `bits` with an untied head.
fn spinquant_config(config: &ModelConfig, bits: ActBits) -> Result<ModelConfig> {
    let mut file = config
        .with_quantization(Variant::BitnetB158SpinQuant, bits, config.hidden_act)?
        .to_file();
    file.tie_word_embeddings = false;
    Ok(ModelConfig::from_file(&file)?)
}

/// Learns R1 and R2 for `model` (a trained `bitnet_b158`) quantized at `bits` on calibration
/// windows of `data`, and returns the rotated, quantized model. `progress` sees every step.
pub fn spinquant(
    model: &BitnetModel,
    bits: ActBits,
    data: &PackedData,
    options: &SpinQuantOptions,
    mut progress: impl FnMut(&SpinQuantStep),
) -> Result<BitnetModel> {
    if options.batch_size == 0 {
        return Err(TrainError::Input(
            "SpinQuant needs at least one calibration sequence per step".into(),
        ));
    }
    if !(options.learning_rate.is_finite() && options.learning_rate >= 0.0) {
        return Err(TrainError::Input(format!(
            "SpinQuant learning rate {}: expected a finite value ≥ 0",
            options.learning_rate
        )));
    }
    if data.seq_len() > model.config().max_position_embeddings {
        return Err(TrainError::Input(format!(
            "calibration sequences of {} tokens exceed the model's context ({} tokens)",
            data.seq_len(),
            model.config().max_position_embeddings
        )));
    }
    let fused = FusedWeights::new(model)?;
    let mut rotations = Rotations::random_hadamard(model.config(), options.seed);
    let seq_len = data.seq_len();
    for step in 0..options.steps {
        let cursor = (step * options.batch_size) as u64;
        let (inputs, targets) = data.train_batch(cursor, options.batch_size, options.seed);
        let shape = (options.batch_size, seq_len);
        let inputs = Tensor::from_vec(inputs, shape, &Device::Cpu)?;
        let targets = Tensor::from_vec(targets, shape, &Device::Cpu)?;
        let (loss, g1, g2) = fused.loss_and_gradients(&rotations, bits, &inputs, &targets, true)?;
        // Cosine decay to zero over the run, as SpinQuant's schedule.
        let progress_share = step as f64 / options.steps as f64;
        let lr =
            options.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * progress_share).cos());
        let step_size = rotations.r1.cayley_step(&g1, lr);
        for (r, g) in rotations.r2.iter_mut().zip(&g2) {
            r.cayley_step(g, lr);
        }
        progress(&SpinQuantStep {
            step,
            loss,
            step_size,
        });
    }
    fused.model(&rotations, bits)
}

#[cfg(test)]
#[path = "spinquant_tests.rs"]
mod tests;
