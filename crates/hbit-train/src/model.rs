//! The BitNet v2 model on candle: LLaMA-like blocks with BitLinear / H-BitLinear projections.
//!
//! Dimension legend: B batch, T sequence, H hidden, I GLU (intermediate) size, V vocabulary,
//! nh / nkv query / key-value heads, hd head dim.
//!
//! One code path serves every variant of DESIGN.md §2: each projection asks the config how its
//! input is treated ([`ModelConfig::input_quant`]) and the BitLinear below does exactly that.
//! Modules are named after the checkpoint keys (`model.layers.N.self_attn.q_proj.weight`, ...).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};

use crate::config::{InputQuant, ModelConfig, Proj};
use crate::error::TrainError;
use crate::fused::{self, CausalSoftmax, Glu, Heads, RmsNorm, RopeTables};
use crate::ops::{HadamardOp, QuantizeInput, QuantizedInput, TernaryMatmul};
use crate::rng::SplitMix64;
pub use hbit_model::tensors::parameter_shapes;
use hbit_model::tensors::{self as names, is_norm};

type Result<T> = std::result::Result<T, TrainError>;

/// Standard deviation of the initial weights and embeddings (GPT-2 / LLaMA convention). The
/// ternary quantizer is scale-free (absmean), so this only sets the embedding scale and the
/// latent weights' distance from the rounding thresholds.
pub const INIT_STD: f64 = 0.02;

/// BitLinear (paper §2.1) or, when `quant.hadamard`, H-BitLinear (eq. 7): no bias.
///
/// `Y = Qw(W) · Qa(X_r)` with `X_r = Hadamard(X)` for H-BitLinear, as two fused ops: the input
/// side ([`QuantizeInput`]), which projections reading the same input share, and the product
/// ([`TernaryMatmul`]).
#[derive(Debug, Clone)]
pub struct BitLinear {
    /// `[out, in]` latent full-precision weight.
    pub weight: Var,
    quant: InputQuant,
    input_op: QuantizeInput,
    matmul_op: TernaryMatmul,
}

impl BitLinear {
    fn new(
        weight: Var,
        quant: InputQuant,
        config: &ModelConfig,
        quantize: bool,
        hadamards: &mut HadamardCache,
    ) -> Result<BitLinear> {
        let (_, cols) = weight.dims2()?;
        // Transform over `in`, when the input (and for the ablation, the weight) is rotated.
        let hadamard = if quant.hadamard {
            Some(hadamards.get(config, cols)?.transform().clone())
        } else {
            None
        };
        Ok(BitLinear {
            weight,
            quant,
            input_op: QuantizeInput {
                hadamard: hadamard.clone(),
                bits: quant.bits,
                topk_keep: quant.topk_keep,
                quantize,
            },
            // Ablation: Qw(W·H) (H symmetric), so W·H·(H·x) = W·x unquantized.
            matmul_op: TernaryMatmul {
                rotate_weight: hadamard.filter(|_| quant.rotate_weight),
                quantize,
            },
        })
    }

    /// `Qa(X_r)`: `x` `[.., in]` (already normalized by the block's norm) rotated when this is
    /// H-BitLinear (eq. 7), then quantized per token (eq. 5 / 6).
    pub fn quantize_input(&self, x: &Tensor) -> candle_core::Result<QuantizedInput> {
        self.input_op.apply_keeping_codes(x)
    }

    /// `Qw(W) · xq` for `xq` from [`BitLinear::quantize_input`] → `[.., out]`.
    pub fn project(&self, xq: &QuantizedInput) -> candle_core::Result<Tensor> {
        self.matmul_op.apply_quantized(xq, self.weight.as_tensor())
    }

    /// Whether `other` treats its input exactly as this projection does, so one
    /// [`BitLinear::quantize_input`] serves both.
    fn reads_like(&self, other: &BitLinear) -> bool {
        self.quant == other.quant && self.weight.dim(1).ok() == other.weight.dim(1).ok()
    }

    /// `x`: `[.., in]` → `[.., out]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.project(&self.quantize_input(x)?)
    }
}

/// One planned transform per length, shared by every layer.
#[derive(Default)]
struct HadamardCache(HashMap<usize, HadamardOp>);

impl HadamardCache {
    fn get(&mut self, config: &ModelConfig, n: usize) -> Result<HadamardOp> {
        if let Some(op) = self.0.get(&n) {
            return Ok(op.clone());
        }
        let op = HadamardOp::new(Arc::new(config.hadamard(n)?));
        self.0.insert(n, op.clone());
        Ok(op)
    }
}

/// RMSNorm with a learned gain: `x / sqrt(mean(x²) + eps) · g` (fused, see [`fused::RmsNorm`]).
fn rms_norm(x: &Tensor, gain: &Var, eps: f64) -> candle_core::Result<Tensor> {
    RmsNorm { eps: eps as f32 }.apply(x, gain.as_tensor())
}

/// RoPE tables of `config` (shared with the engine, [`ModelConfig::rope_tables`]).
fn rope_tables(config: &ModelConfig) -> Arc<RopeTables> {
    let (cos, sin) = config.rope_tables();
    Arc::new(RopeTables {
        cos,
        sin,
        head_dim: config.head_dim,
    })
}

/// `model.layers.N.self_attn`.
#[derive(Debug, Clone)]
struct Attention {
    q_proj: BitLinear,
    k_proj: BitLinear,
    v_proj: BitLinear,
    o_proj: BitLinear,
    /// `[H]` sub-norm before W_o: the LN of eq. (7).
    attn_sub_norm: Var,
}

/// `model.layers.N.mlp`.
#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: BitLinear,
    up_proj: BitLinear,
    down_proj: BitLinear,
    /// `[I]` sub-norm before W_down: the LN of eq. (7).
    ffn_sub_norm: Var,
}

/// `model.layers.N`.
#[derive(Debug, Clone)]
struct DecoderLayer {
    /// `[H]` pre-norm of q/k/v.
    input_layernorm: Var,
    self_attn: Attention,
    /// `[H]` pre-norm of gate/up.
    post_attention_layernorm: Var,
    mlp: Mlp,
}

/// The whole model with its latent parameters.
#[derive(Debug, Clone)]
pub struct BitnetModel {
    config: ModelConfig,
    /// `[V, H]`
    embed_tokens: Var,
    layers: Vec<DecoderLayer>,
    /// `[H]`
    norm: Var,
    /// `[V, H]`, absent when tied to the embedding.
    lm_head: Option<Var>,
    rope: Arc<RopeTables>,
    /// `false` for [`BitnetModel::unquantized`].
    quantize: bool,
}

impl BitnetModel {
    /// A randomly initialised model: weights and embeddings N(0, INIT_STD²), norm gains 1.
    pub fn init(config: &ModelConfig, seed: u64) -> Result<BitnetModel> {
        let device = Device::Cpu;
        let mut rng = SplitMix64::new(seed);
        let mut tensors = HashMap::new();
        for (name, shape) in parameter_shapes(config) {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if is_norm(&name) {
                vec![1.0; n]
            } else {
                (0..n).map(|_| (rng.normal() * INIT_STD) as f32).collect()
            };
            tensors.insert(name, Tensor::from_vec(data, shape, &device)?);
        }
        BitnetModel::from_tensors(config, tensors, Path::new("<init>"))
    }

    /// Builds the model from named tensors, checking every name, shape, dtype and value;
    /// errors name `source` and the tensor.
    pub fn from_tensors(
        config: &ModelConfig,
        mut tensors: HashMap<String, Tensor>,
        source: &Path,
    ) -> Result<BitnetModel> {
        let err = |tensor: &str, message: String| TrainError::Tensor {
            path: source.to_path_buf(),
            tensor: tensor.to_string(),
            message,
        };
        if config.tie_word_embeddings {
            // HF writes a tied head in some checkpoints; it is the embedding, so drop it.
            tensors.remove(names::LM_HEAD);
        }
        let mut vars: HashMap<String, Var> = HashMap::new();
        for (name, shape) in parameter_shapes(config) {
            let t = tensors
                .remove(&name)
                .ok_or_else(|| err(&name, "missing".into()))?;
            if t.dtype() != DType::F32 {
                return Err(err(
                    &name,
                    format!("expected dtype f32, found {:?}", t.dtype()),
                ));
            }
            if t.dims() != shape.as_slice() {
                return Err(err(
                    &name,
                    format!("expected shape {shape:?}, found {:?}", t.dims()),
                ));
            }
            let values: Vec<f32> = t.flatten_all()?.to_vec1()?;
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(err(&name, format!("non-finite value at flat index {i}")));
            }
            vars.insert(name, Var::from_tensor(&t)?);
        }
        if let Some(extra) = tensors.keys().min() {
            return Err(err(
                extra,
                "unexpected tensor (not part of this config's model)".into(),
            ));
        }
        BitnetModel::assemble(config, vars, true)
    }

    fn assemble(
        config: &ModelConfig,
        mut vars: HashMap<String, Var>,
        quantize: bool,
    ) -> Result<BitnetModel> {
        let mut take = |name: String| {
            vars.remove(&name)
                .ok_or_else(|| TrainError::Input(format!("internal: parameter {name} missing")))
        };
        let mut hadamards = HadamardCache::default();
        let mut layers = Vec::with_capacity(config.num_layers);
        for l in 0..config.num_layers {
            let mut linear = |proj: Proj, take: &mut dyn FnMut(String) -> Result<Var>| {
                let w = take(names::proj_weight(l, proj))?;
                BitLinear::new(
                    w,
                    config.input_quant(proj),
                    config,
                    quantize,
                    &mut hadamards,
                )
            };
            let input_layernorm = take(names::layer_norm(l, names::INPUT_NORM))?;
            let self_attn = Attention {
                q_proj: linear(Proj::Q, &mut take)?,
                k_proj: linear(Proj::K, &mut take)?,
                v_proj: linear(Proj::V, &mut take)?,
                o_proj: linear(Proj::O, &mut take)?,
                attn_sub_norm: take(names::layer_norm(l, names::ATTN_SUB_NORM))?,
            };
            let post_attention_layernorm = take(names::layer_norm(l, names::POST_ATTENTION_NORM))?;
            let mlp = Mlp {
                gate_proj: linear(Proj::Gate, &mut take)?,
                up_proj: linear(Proj::Up, &mut take)?,
                down_proj: linear(Proj::Down, &mut take)?,
                ffn_sub_norm: take(names::layer_norm(l, names::FFN_SUB_NORM))?,
            };
            layers.push(DecoderLayer {
                input_layernorm,
                self_attn,
                post_attention_layernorm,
                mlp,
            });
        }
        let embed_tokens = take(names::EMBED_TOKENS.into())?;
        let norm = take(names::FINAL_NORM.into())?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(take(names::LM_HEAD.into())?)
        };
        Ok(BitnetModel {
            config: config.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope: rope_tables(config),
            quantize,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Every latent parameter with its checkpoint name, in the canonical order of
    /// [`parameter_shapes`].
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out = vec![(names::EMBED_TOKENS.to_string(), self.embed_tokens.clone())];
        for (l, layer) in self.layers.iter().enumerate() {
            let a = &layer.self_attn;
            let m = &layer.mlp;
            out.push((
                names::layer_norm(l, names::INPUT_NORM),
                layer.input_layernorm.clone(),
            ));
            for (proj, lin) in [
                (Proj::Q, &a.q_proj),
                (Proj::K, &a.k_proj),
                (Proj::V, &a.v_proj),
                (Proj::O, &a.o_proj),
            ] {
                out.push((names::proj_weight(l, proj), lin.weight.clone()));
            }
            out.push((
                names::layer_norm(l, names::ATTN_SUB_NORM),
                a.attn_sub_norm.clone(),
            ));
            out.push((
                names::layer_norm(l, names::POST_ATTENTION_NORM),
                layer.post_attention_layernorm.clone(),
            ));
            for (proj, lin) in [
                (Proj::Gate, &m.gate_proj),
                (Proj::Up, &m.up_proj),
                (Proj::Down, &m.down_proj),
            ] {
                out.push((names::proj_weight(l, proj), lin.weight.clone()));
            }
            out.push((
                names::layer_norm(l, names::FFN_SUB_NORM),
                m.ffn_sub_norm.clone(),
            ));
        }
        out.push((names::FINAL_NORM.to_string(), self.norm.clone()));
        if let Some(head) = &self.lm_head {
            out.push((names::LM_HEAD.to_string(), head.clone()));
        }
        out
    }

    /// The same parameters (shared, not copied) under another quantization config of the same
    /// architecture: a8 → a4 continue-training, b1.58 → a4.8.
    pub fn with_config(&self, config: &ModelConfig) -> Result<BitnetModel> {
        let same_shapes = parameter_shapes(config) == parameter_shapes(&self.config);
        if !same_shapes || config.head_dim != self.config.head_dim {
            return Err(TrainError::Input(format!(
                "cannot switch configs: the architectures differ ({:?} vs {:?})",
                config.to_file(),
                self.config.to_file()
            )));
        }
        BitnetModel::assemble(
            config,
            self.named_vars().into_iter().collect(),
            self.quantize,
        )
    }

    /// The same parameters (shared) with every quantizer off: rotations still apply, weights
    /// and activations stay full precision. Rotation folding is exact only here, which is what
    /// the PTQ tests check.
    pub fn unquantized(&self) -> Result<BitnetModel> {
        BitnetModel::assemble(&self.config, self.named_vars().into_iter().collect(), false)
    }

    /// Logits `[B, T, V]` for token ids `[B, T]` (u32), positions 0..T.
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        let logits = self.token_logits(tokens)?;
        Ok(logits.reshape((b, t, self.config.vocab_size))?)
    }

    /// Logits `[B·T, V]`, one row per token: the loss reads them in this shape, so the largest
    /// tensor of a step is never reshaped (each recorded reshape costs the backward two passes).
    fn token_logits(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        if t == 0 || t > self.config.max_position_embeddings {
            return Err(TrainError::Input(format!(
                "sequence length {t} is outside 1..={} (max_position_embeddings)",
                self.config.max_position_embeddings
            )));
        }
        let flat = tokens.flatten_all()?; // [B·T]
        let ids: Vec<u32> = flat.to_vec1()?;
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.config.vocab_size) {
            return Err(TrainError::Input(format!(
                "token id {bad} is outside the vocabulary (vocab_size {})",
                self.config.vocab_size
            )));
        }
        let h = self.config.hidden_size;
        let mut x = self
            .embed_tokens
            .as_tensor()
            .index_select(&flat, 0)?
            .reshape((b, t, h))?; // [B, T, H]
        for layer in &self.layers {
            x = self.layer_forward(layer, &x)?;
        }
        let x = rms_norm(
            &x.reshape((b * t, h))?,
            &self.norm,
            self.config.rms_norm_eps,
        )?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        // Full-precision LM head (the paper keeps input/output embeddings unquantized).
        Ok(x.matmul(&head.as_tensor().t()?)?) // [B·T, V]
    }

    fn layer_forward(&self, layer: &DecoderLayer, x: &Tensor) -> candle_core::Result<Tensor> {
        let eps = self.config.rms_norm_eps;
        let h = rms_norm(x, &layer.input_layernorm, eps)?;
        let x = (x + self.attention(&layer.self_attn, &h)?)?;
        let h = rms_norm(&x, &layer.post_attention_layernorm, eps)?;
        let m = &layer.mlp;
        let hq = m.gate_proj.quantize_input(&h)?;
        let up_input = if m.up_proj.reads_like(&m.gate_proj) {
            hq.clone()
        } else {
            m.up_proj.quantize_input(&h)?
        };
        let gate = m.gate_proj.project(&hq)?; // [B, T, I]
        let up = m.up_proj.project(&up_input)?;
        let act = self.config.hidden_act;
        let glu = Glu { act }.apply(&gate, &up)?; // act(gate) ⊙ up
        let glu = rms_norm(&glu, &m.ffn_sub_norm, eps)?;
        x + m.down_proj.forward(&glu)?
    }

    /// Causal grouped-query self-attention; `h`: `[B, T, H]` normalized input.
    fn attention(&self, a: &Attention, h: &Tensor) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let hq = a.q_proj.quantize_input(h)?;
        let input_of = |lin: &BitLinear| {
            if lin.reads_like(&a.q_proj) {
                Ok(hq.clone())
            } else {
                lin.quantize_input(h)
            }
        };
        let rope = Some(self.rope.clone());
        let q = Heads::split(nh, hd, rope.clone()).apply(&a.q_proj.project(&hq)?)?; // [B, nh, T, hd]
        let k = Heads::split(nkv, hd, rope).apply(&a.k_proj.project(&input_of(&a.k_proj)?)?)?;
        let v = Heads::split(nkv, hd, None).apply(&a.v_proj.project(&input_of(&a.v_proj)?)?)?;
        let (k, v) = (repeat_kv(&k, nh / nkv)?, repeat_kv(&v, nh / nkv)?); // [B, nh, T, hd]
        let scale = 1.0 / (hd as f32).sqrt();
        let probs = CausalSoftmax { scale }.apply(&q.matmul(&k.t()?)?)?; // [B, nh, T, T]
        let out = Heads::merge(nh, hd).apply(&probs.matmul(&v)?)?; // [B, T, H]
        let out = rms_norm(&out, &a.attn_sub_norm, c.rms_norm_eps)?;
        a.o_proj.forward(&out)
    }

    /// Mean next-token cross-entropy of `inputs` `[B, T]` against `targets` `[B, T]`.
    pub fn loss(&self, inputs: &Tensor, targets: &Tensor) -> Result<Tensor> {
        Ok(fused::cross_entropy(&self.token_logits(inputs)?, targets)?)
    }
}

/// `[B, nkv, T, hd]` → `[B, nkv·rep, T, hd]`, each KV head serving `rep` query heads.
fn repeat_kv(x: &Tensor, rep: usize) -> candle_core::Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, nkv, t, hd) = x.dims4()?;
    x.unsqueeze(2)?
        .expand((b, nkv, rep, t, hd))?
        .contiguous()?
        .reshape((b, nkv * rep, t, hd))
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
