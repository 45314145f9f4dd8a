//! Model configuration: the serde mirror of `config.json` (DESIGN.md §3) and the validated
//! [`ModelConfig`] the code uses, with named presets.
//!
//! Every variant of DESIGN.md §2 is a value of [`Variant`] on the one model code path; the
//! per-projection activation treatment is decided here ([`ModelConfig::input_quant`]) and nowhere
//! else.

use std::path::Path;

use hbit_kernels::quant::ActBits;
use hbit_kernels::Hadamard;
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// `config.json` exactly as written on disk (HF LLaMA/BitNet keys plus `quantization`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigFile {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// `silu` (SwiGLU, the paper) or `relu2` (squared-ReLU GLU, b1.58 2B4T and a4.8).
    pub hidden_act: String,
    pub tie_word_embeddings: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<u32>,
    pub quantization: QuantizationFile,
}

/// `model_type` of hbit's remote-code model for transformers (`python/hbit_bitnet/`).
pub const HF_MODEL_TYPE: &str = "hbit_bitnet";

impl ConfigFile {
    /// The config of an HF `config.json`: hbit's remote-code model (`model_type` hbit_bitnet,
    /// quantization under `hbit_quantization`) or transformers' BitNet (b1.58 at 8-bit
    /// activations; squared-ReLU unless `hidden_act` says otherwise).
    pub fn from_hf_json(v: &serde_json::Value) -> Result<ConfigFile, ConfigError> {
        let size = |name: &'static str| -> Result<usize, ConfigError> {
            v[name]
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| field_err(name, format!("expected an integer, found {}", v[name])))
        };
        let float = |name: &str, default: f64| v[name].as_f64().unwrap_or(default);
        // Token ids may be one integer or a list (Llama-3 instruct); the first is the one used.
        let token = |name: &str| match &v[name] {
            serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            serde_json::Value::Array(a) => a
                .first()
                .and_then(serde_json::Value::as_u64)
                .and_then(|n| u32::try_from(n).ok()),
            _ => None,
        };
        let heads = size("num_attention_heads")?;
        let quantization = match v.get("hbit_quantization") {
            Some(q) => QuantizationFile::from_hf_json(q)?,
            None => QuantizationFile::b158_a8(),
        };
        Ok(ConfigFile {
            hidden_size: size("hidden_size")?,
            intermediate_size: size("intermediate_size")?,
            num_hidden_layers: size("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: match v["num_key_value_heads"] {
                serde_json::Value::Null => heads,
                _ => size("num_key_value_heads")?,
            },
            vocab_size: size("vocab_size")?,
            max_position_embeddings: size("max_position_embeddings")?,
            rms_norm_eps: float("rms_norm_eps", 1e-5),
            rope_theta: rope_theta(v)?,
            hidden_act: v["hidden_act"].as_str().unwrap_or("relu2").to_string(),
            tie_word_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(true),
            bos_token_id: token("bos_token_id"),
            eos_token_id: token("eos_token_id"),
            quantization,
        })
    }
}

/// RoPE's base of an HF config: `rope_theta` (transformers 4), or `rope_parameters`
/// (transformers 5 writes `{"rope_theta": ..., "rope_type": "default"}` there); a scaled RoPE
/// (Llama-3's `llama3`, `yarn`, ...) is refused, as hbit rotates by the plain frequencies.
fn rope_theta(v: &serde_json::Value) -> Result<f64, ConfigError> {
    for key in ["rope_parameters", "rope_scaling"] {
        let p = &v[key];
        if p.is_null() {
            continue;
        }
        let kind = p["rope_type"].as_str().or(p["type"].as_str());
        if !matches!(kind, None | Some("default")) {
            let field = if key == "rope_scaling" {
                "rope_scaling"
            } else {
                "rope_parameters"
            };
            return Err(field_err(
                field,
                format!("RoPE type {kind:?}: hbit applies unscaled RoPE only"),
            ));
        }
        if let Some(theta) = p["rope_theta"].as_f64() {
            return Ok(theta);
        }
    }
    Ok(v["rope_theta"].as_f64().unwrap_or(10000.0))
}

impl QuantizationFile {
    /// BitNet b1.58 at 8-bit activations: what transformers' BitNet class and llama.cpp's
    /// `bitnet` architectures compute.
    pub fn b158_a8() -> QuantizationFile {
        QuantizationFile {
            variant: Variant::BitnetB158.name().into(),
            weight_bits: 1.58,
            activation_bits: 8,
            hadamard: Vec::new(),
            topk_keep: None,
            hadamard_block: None,
        }
    }

    /// `hbit_quantization` of an HF `config.json` (its `weights` key, packed or latent, says
    /// how the weights file stores projections and is not part of the model's config).
    fn from_hf_json(q: &serde_json::Value) -> Result<QuantizationFile, ConfigError> {
        let bad = |field: &'static str, want: &str| {
            field_err(field, format!("expected {want}, found {}", q[field]))
        };
        let variant = q["variant"]
            .as_str()
            .ok_or_else(|| bad("hbit_quantization.variant", "a string"))?;
        let activation_bits = q["activation_bits"]
            .as_u64()
            .and_then(|b| u8::try_from(b).ok())
            .ok_or_else(|| bad("hbit_quantization.activation_bits", "8 or 4"))?;
        let hadamard = match &q["hadamard"] {
            serde_json::Value::Null => Vec::new(),
            serde_json::Value::Array(a) => a
                .iter()
                .map(|p| p.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("hbit_quantization.hadamard", "projection names"))?,
            _ => return Err(bad("hbit_quantization.hadamard", "projection names")),
        };
        let topk_keep = match &q["topk_keep"] {
            serde_json::Value::Null => None,
            v => Some(
                v.as_f64()
                    .ok_or_else(|| bad("hbit_quantization.topk_keep", "a number or null"))?,
            ),
        };
        let hadamard_block = match &q["hadamard_block"] {
            serde_json::Value::Null => None,
            v => Some(
                v.as_u64()
                    .and_then(|b| usize::try_from(b).ok())
                    .ok_or_else(|| bad("hbit_quantization.hadamard_block", "an integer or null"))?,
            ),
        };
        Ok(QuantizationFile {
            variant: variant.to_string(),
            weight_bits: 1.58,
            activation_bits,
            hadamard,
            topk_keep,
            hadamard_block,
        })
    }
}

/// The `quantization` object of `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizationFile {
    /// One of [`Variant::NAMES`].
    pub variant: String,
    /// Always 1.58 (ternary); kept for readers of the file.
    pub weight_bits: f64,
    /// 8 or 4: the activation bits of the projections the variant quantizes at that width.
    pub activation_bits: u8,
    /// Projections whose input is Hadamard-rotated (`o_proj`, `down_proj`); empty without rotation.
    /// Written from the variant; a file whose list disagrees with its variant is refused.
    #[serde(default)]
    pub hadamard: Vec<String>,
    /// BitNet a4.8 only: share of each token's largest-magnitude intermediate values kept by the
    /// top-K sparsifier before INT8 (a4.8 / Q-Sparse keep half).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topk_keep: Option<f64>,
    /// Rotated inputs use a block-diagonal Hadamard with this power-of-two block instead of the
    /// exact transform of the whole vector: for sizes with no exact transform (e.g. 6912 =
    /// 27·256 of BitNet b1.58 2B4T). Still orthonormal; mixes only within blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hadamard_block: Option<usize>,
}

/// The model variants of DESIGN.md §2, one code path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// BitNet b1.58: INT8 absmax everywhere, no rotation.
    BitnetB158,
    /// BitNet v2: Hadamard before W_o and W_down (activation rotation only, as the paper keeps).
    BitnetV2,
    /// BitNet a4.8: INT4 inputs, top-K sparsified INT8 intermediate states.
    BitnetA48,
    /// Ablation (paper Table 5): BitNet v2 without the Hadamard transform.
    BitnetV2NoRotation,
    /// Ablation (paper Table 5): Hadamard on the activations and on the weights of W_o / W_down.
    BitnetV2WeightRotation,
    /// Post-training baseline (paper Table 4): a trained b1.58 model with an online Hadamard
    /// before every projection and weights Q_w(W·H) (QuaRot-style; `hbit ptq` writes it, with
    /// random signs folded into the norm gains and weight columns).
    BitnetB158Quarot,
    /// Post-training baseline (paper Table 4): a trained b1.58 model with SpinQuant's learned
    /// rotations folded into its weights (residual stream R1, value/output R2, norm gains fused)
    /// and an online Hadamard before W_down only, weights Q_w(W·H) there (`hbit ptq --rotation
    /// spinquant` writes it).
    BitnetB158SpinQuant,
}

impl Variant {
    pub const NAMES: [&'static str; 7] = [
        "bitnet_b158",
        "bitnet_v2",
        "bitnet_a48",
        "bitnet_v2_no_rotation",
        "bitnet_v2_weight_rotation",
        "bitnet_b158_quarot",
        "bitnet_b158_spinquant",
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::BitnetB158 => "bitnet_b158",
            Variant::BitnetV2 => "bitnet_v2",
            Variant::BitnetA48 => "bitnet_a48",
            Variant::BitnetV2NoRotation => "bitnet_v2_no_rotation",
            Variant::BitnetV2WeightRotation => "bitnet_v2_weight_rotation",
            Variant::BitnetB158Quarot => "bitnet_b158_quarot",
            Variant::BitnetB158SpinQuant => "bitnet_b158_spinquant",
        }
    }

    pub fn parse(name: &str) -> Result<Variant, ConfigError> {
        Ok(match name {
            "bitnet_b158" => Variant::BitnetB158,
            "bitnet_v2" => Variant::BitnetV2,
            "bitnet_a48" => Variant::BitnetA48,
            "bitnet_v2_no_rotation" => Variant::BitnetV2NoRotation,
            "bitnet_v2_weight_rotation" => Variant::BitnetV2WeightRotation,
            "bitnet_b158_quarot" => Variant::BitnetB158Quarot,
            "bitnet_b158_spinquant" => Variant::BitnetB158SpinQuant,
            other => {
                return Err(ConfigError::Field {
                    field: "quantization.variant",
                    message: format!(
                        "unknown variant {other:?}; expected one of {:?}",
                        Variant::NAMES
                    ),
                })
            }
        })
    }

    /// Whether the inputs of W_o and W_down (for the QuaRot baseline, of every projection; for
    /// SpinQuant, of W_down only) are Hadamard-rotated online (eq. 7).
    pub fn rotates_activations(self) -> bool {
        matches!(
            self,
            Variant::BitnetV2
                | Variant::BitnetV2WeightRotation
                | Variant::BitnetB158Quarot
                | Variant::BitnetB158SpinQuant
        )
    }

    /// The `hadamard` list this variant writes into `config.json`.
    pub fn hadamard_projections(self) -> Vec<String> {
        match self {
            Variant::BitnetB158Quarot => Proj::ALL
                .iter()
                .map(|p| p.key().rsplit('.').next().unwrap_or_default().to_string())
                .collect(),
            Variant::BitnetB158SpinQuant => vec!["down_proj".into()],
            _ if self.rotates_activations() => vec!["o_proj".into(), "down_proj".into()],
            _ => Vec::new(),
        }
    }
}

/// GLU activation of the FFN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenAct {
    /// SwiGLU: `silu(gate) * up` (the paper).
    Silu,
    /// Squared-ReLU GLU: `relu(gate)^2 * up` (BitNet b1.58 2B4T, a4.8).
    Relu2,
}

impl HiddenAct {
    pub fn name(self) -> &'static str {
        match self {
            HiddenAct::Silu => "silu",
            HiddenAct::Relu2 => "relu2",
        }
    }

    pub fn parse(name: &str) -> Result<HiddenAct, ConfigError> {
        match name {
            "silu" | "swiglu" => Ok(HiddenAct::Silu),
            "relu2" => Ok(HiddenAct::Relu2),
            other => Err(ConfigError::Field {
                field: "hidden_act",
                message: format!("unknown activation {other:?}; expected \"silu\" or \"relu2\""),
            }),
        }
    }
}

/// A linear projection of the block, named after its checkpoint key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];

    /// The checkpoint key below `model.layers.N.`.
    pub fn key(self) -> &'static str {
        match self {
            Proj::Q => "self_attn.q_proj",
            Proj::K => "self_attn.k_proj",
            Proj::V => "self_attn.v_proj",
            Proj::O => "self_attn.o_proj",
            Proj::Gate => "mlp.gate_proj",
            Proj::Up => "mlp.up_proj",
            Proj::Down => "mlp.down_proj",
        }
    }

    /// W_o and W_down read the intermediate states (the outlier-heavy inputs, paper §2.1).
    pub fn reads_intermediate_state(self) -> bool {
        matches!(self, Proj::O | Proj::Down)
    }
}

/// How one projection's input is treated before the ternary matmul.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputQuant {
    /// Orthonormal Hadamard of the input first (eq. 7).
    pub hadamard: bool,
    /// a4.8: keep this share of each token's largest-magnitude values, zero the rest.
    pub topk_keep: Option<f32>,
    /// Per-token quantizer: INT8 absmax (eq. 5) or INT4 absmean (eq. 6).
    pub bits: ActBits,
    /// Weight-and-activation rotation ablation: the ternary weight is `Qw(W·H)`.
    pub rotate_weight: bool,
}

/// The validated configuration the model code uses.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub hidden_act: HiddenAct,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub variant: Variant,
    pub activation_bits: ActBits,
    pub topk_keep: f32,
    /// Block of a block-diagonal Hadamard (see [`QuantizationFile::hadamard_block`]).
    pub hadamard_block: Option<usize>,
}

/// Largest context accepted: RoPE tables are built for every position (Llama-3's 131072 fits).
pub const MAX_POSITIONS: usize = 1 << 18;
/// Upper bounds of a config's sizes, each well above the largest open models' (hidden 16384,
/// FFN 53248, 126 layers, 128 heads, vocabularies of 256 K).
pub const MAX_HIDDEN: usize = 1 << 16;
pub const MAX_INTERMEDIATE: usize = 1 << 18;
pub const MAX_LAYERS: usize = 1 << 10;
pub const MAX_HEADS: usize = 1 << 10;
pub const MAX_VOCAB: usize = 1 << 22;

/// a4.8 keeps the top half of each token's intermediate values (Q-Sparse's K = 50%).
pub const DEFAULT_TOPK_KEEP: f32 = 0.5;

fn field_err(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field,
        message: message.into(),
    }
}

impl ModelConfig {
    /// Validates a `config.json` mirror into the model config.
    pub fn from_file(file: &ConfigFile) -> Result<ModelConfig, ConfigError> {
        let positive = [
            ("hidden_size", file.hidden_size),
            ("intermediate_size", file.intermediate_size),
            ("num_hidden_layers", file.num_hidden_layers),
            ("num_attention_heads", file.num_attention_heads),
            ("num_key_value_heads", file.num_key_value_heads),
            ("vocab_size", file.vocab_size),
            ("max_position_embeddings", file.max_position_embeddings),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(field_err(field, "must be greater than zero, found 0"));
            }
        }
        // Sizes far above any real model's: a damaged or hostile file is refused here rather
        // than by an allocation sized from it.
        let largest = [
            ("hidden_size", file.hidden_size, MAX_HIDDEN),
            (
                "intermediate_size",
                file.intermediate_size,
                MAX_INTERMEDIATE,
            ),
            ("num_hidden_layers", file.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", file.num_attention_heads, MAX_HEADS),
            ("num_key_value_heads", file.num_key_value_heads, MAX_HEADS),
            ("vocab_size", file.vocab_size, MAX_VOCAB),
        ];
        for (field, value, max) in largest {
            if value > max {
                return Err(field_err(
                    field,
                    format!("{value} exceeds the largest supported {max}"),
                ));
            }
        }
        if file.max_position_embeddings > MAX_POSITIONS {
            return Err(field_err(
                "max_position_embeddings",
                format!(
                    "{} exceeds the supported {MAX_POSITIONS}",
                    file.max_position_embeddings
                ),
            ));
        }
        if !file.hidden_size.is_multiple_of(file.num_attention_heads) {
            return Err(field_err(
                "num_attention_heads",
                format!(
                    "hidden_size {} is not divisible by num_attention_heads {}",
                    file.hidden_size, file.num_attention_heads
                ),
            ));
        }
        if !file
            .num_attention_heads
            .is_multiple_of(file.num_key_value_heads)
        {
            return Err(field_err(
                "num_key_value_heads",
                format!(
                    "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                    file.num_attention_heads, file.num_key_value_heads
                ),
            ));
        }
        let head_dim = file.hidden_size / file.num_attention_heads;
        if !head_dim.is_multiple_of(2) {
            return Err(field_err(
                "num_attention_heads",
                format!("head_dim {head_dim} must be even for rotate-half RoPE"),
            ));
        }
        for (field, id) in [
            ("bos_token_id", file.bos_token_id),
            ("eos_token_id", file.eos_token_id),
        ] {
            if let Some(id) = id.filter(|&id| id as usize >= file.vocab_size) {
                return Err(field_err(
                    field,
                    format!("{id} is outside the vocabulary of {}", file.vocab_size),
                ));
            }
        }
        if !(file.rms_norm_eps > 0.0 && file.rms_norm_eps.is_finite()) {
            return Err(field_err(
                "rms_norm_eps",
                format!("must be positive, found {}", file.rms_norm_eps),
            ));
        }
        if !(file.rope_theta > 0.0 && file.rope_theta.is_finite()) {
            return Err(field_err(
                "rope_theta",
                format!("must be positive, found {}", file.rope_theta),
            ));
        }
        let q = &file.quantization;
        let variant = Variant::parse(&q.variant)?;
        let activation_bits = ActBits::from_bits(q.activation_bits).ok_or_else(|| {
            field_err(
                "quantization.activation_bits",
                format!("expected 8 or 4, found {}", q.activation_bits),
            )
        })?;
        if variant == Variant::BitnetB158 && activation_bits != ActBits::Int8 {
            return Err(field_err(
                "quantization.activation_bits",
                "bitnet_b158 uses 8-bit activations; 4-bit BitNet v2 is variant bitnet_v2 with \
                 activation_bits 4",
            ));
        }
        if (q.weight_bits - 1.58).abs() > 1e-6 {
            return Err(field_err(
                "quantization.weight_bits",
                format!(
                    "only ternary (1.58) weights exist here, found {}",
                    q.weight_bits
                ),
            ));
        }
        let expected_hadamard = variant.hadamard_projections();
        if q.hadamard != expected_hadamard {
            return Err(field_err(
                "quantization.hadamard",
                format!(
                    "variant {} rotates {:?}, the file lists {:?}",
                    variant.name(),
                    expected_hadamard,
                    q.hadamard
                ),
            ));
        }
        let topk_keep = match (variant, q.topk_keep) {
            (Variant::BitnetA48, Some(k)) if k > 0.0 && k <= 1.0 => k as f32,
            (Variant::BitnetA48, Some(k)) => {
                return Err(field_err(
                    "quantization.topk_keep",
                    format!("must be in (0, 1], found {k}"),
                ))
            }
            (Variant::BitnetA48, None) => DEFAULT_TOPK_KEEP,
            (_, Some(_)) => {
                return Err(field_err(
                    "quantization.topk_keep",
                    format!("only bitnet_a48 sparsifies; variant is {}", variant.name()),
                ))
            }
            (_, None) => DEFAULT_TOPK_KEEP,
        };
        let config = ModelConfig {
            hidden_size: file.hidden_size,
            intermediate_size: file.intermediate_size,
            num_layers: file.num_hidden_layers,
            num_heads: file.num_attention_heads,
            num_kv_heads: file.num_key_value_heads,
            head_dim,
            vocab_size: file.vocab_size,
            max_position_embeddings: file.max_position_embeddings,
            rms_norm_eps: file.rms_norm_eps,
            rope_theta: file.rope_theta,
            hidden_act: HiddenAct::parse(&file.hidden_act)?,
            tie_word_embeddings: file.tie_word_embeddings,
            bos_token_id: file.bos_token_id,
            eos_token_id: file.eos_token_id,
            variant,
            activation_bits,
            topk_keep,
            hadamard_block: q.hadamard_block,
        };
        if variant.rotates_activations() {
            // Fail at load time, not mid-forward, when a rotated input has no transform.
            let mut rotated = vec![("intermediate_size", config.intermediate_size)];
            if variant != Variant::BitnetB158SpinQuant {
                rotated.push(("hidden_size", config.hidden_size));
            }
            for (field, n) in rotated {
                config
                    .hadamard(n)
                    .map_err(|e| field_err(field, e.to_string()))?;
            }
        } else if q.hadamard_block.is_some() {
            return Err(field_err(
                "quantization.hadamard_block",
                format!("variant {} rotates no activations", variant.name()),
            ));
        }
        Ok(config)
    }

    /// The Hadamard transform of a rotated input of length `n`: exact (2^m, 12/20/28·2^m), or
    /// block-diagonal when the config names a block.
    pub fn hadamard(&self, n: usize) -> Result<Hadamard, hbit_kernels::KernelError> {
        match self.hadamard_block {
            Some(block) => Hadamard::block_diagonal(n, block),
            None => Hadamard::new(n),
        }
    }

    /// The `config.json` mirror of this config.
    pub fn to_file(&self) -> ConfigFile {
        ConfigFile {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_layers,
            num_attention_heads: self.num_heads,
            num_key_value_heads: self.num_kv_heads,
            vocab_size: self.vocab_size,
            max_position_embeddings: self.max_position_embeddings,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            hidden_act: self.hidden_act.name().into(),
            tie_word_embeddings: self.tie_word_embeddings,
            bos_token_id: self.bos_token_id,
            eos_token_id: self.eos_token_id,
            quantization: QuantizationFile {
                variant: self.variant.name().into(),
                weight_bits: 1.58,
                activation_bits: self.activation_bits.bits(),
                hadamard: self.variant.hadamard_projections(),
                topk_keep: (self.variant == Variant::BitnetA48).then_some(self.topk_keep as f64),
                hadamard_block: self.hadamard_block,
            },
        }
    }

    /// Reads and validates `config.json` (hbit's, or the HF one of hbit's remote-code model:
    /// see [`ConfigFile::from_hf_json`]); errors name the file.
    pub fn load(path: &Path) -> Result<ModelConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::io(path, e))?;
        let parse = |e: serde_json::Error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let value: serde_json::Value = serde_json::from_str(&text).map_err(parse)?;
        let file = if value["model_type"].as_str() == Some(HF_MODEL_TYPE) {
            ConfigFile::from_hf_json(&value).map_err(|e| e.in_file(path))?
        } else {
            // From the text again: serde's errors then carry line and column.
            serde_json::from_str::<ConfigFile>(&text).map_err(parse)?
        };
        ModelConfig::from_file(&file).map_err(|e| e.in_file(path))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.to_file()).expect("config serializes") + "\n"
    }

    /// The same architecture as another variant / activation width (used by continue-training:
    /// a8 → a4, b1.58 → a4.8). Re-validated, so an impossible combination is an error.
    pub fn with_quantization(
        &self,
        variant: Variant,
        activation_bits: ActBits,
        hidden_act: HiddenAct,
    ) -> Result<ModelConfig, ConfigError> {
        let mut file = self.to_file();
        file.hidden_act = hidden_act.name().into();
        file.quantization = QuantizationFile {
            variant: variant.name().into(),
            weight_bits: 1.58,
            activation_bits: activation_bits.bits(),
            hadamard: variant.hadamard_projections(),
            topk_keep: (variant == Variant::BitnetA48).then_some(self.topk_keep as f64),
            hadamard_block: self
                .hadamard_block
                .filter(|_| variant.rotates_activations()),
        };
        ModelConfig::from_file(&file)
    }

    /// cos / sin tables `[max_position_embeddings, head_dim]` of rotate-half RoPE (HF LLaMA):
    /// frequency i of `rope_theta^(-2i/hd)`, repeated for both halves, computed in f64. Training
    /// rotates with these; the engine computes the rows it needs with [`Self::rope_at`], the
    /// same arithmetic, so their positions cannot drift apart.
    pub fn rope_tables(&self) -> (Vec<f32>, Vec<f32>) {
        let (hd, half) = (self.head_dim, self.head_dim / 2);
        let mut cos = vec![0.0f32; self.max_position_embeddings * hd];
        let mut sin = vec![0.0f32; self.max_position_embeddings * hd];
        for (p, (c, s)) in cos
            .chunks_exact_mut(hd)
            .zip(sin.chunks_exact_mut(hd))
            .enumerate()
        {
            self.rope_at(p, &mut c[..half], &mut s[..half]);
            c.copy_within(..half, half);
            s.copy_within(..half, half);
        }
        (cos, sin)
    }

    /// cos / sin of position `pos` for the `head_dim / 2` frequencies (one half of a
    /// [`Self::rope_tables`] row; the other half repeats it).
    pub fn rope_at(&self, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        let hd = self.head_dim;
        for (i, (c, s)) in cos.iter_mut().zip(sin.iter_mut()).enumerate() {
            let inv_freq = self.rope_theta.powf(-(2.0 * i as f64) / hd as f64);
            let angle = pos as f64 * inv_freq;
            *c = angle.cos() as f32;
            *s = angle.sin() as f32;
        }
    }

    /// The input treatment of one projection under this config's variant (DESIGN.md §2 table).
    pub fn input_quant(&self, proj: Proj) -> InputQuant {
        let plain = InputQuant {
            hadamard: false,
            topk_keep: None,
            bits: self.activation_bits,
            rotate_weight: false,
        };
        if self.variant == Variant::BitnetB158Quarot
            || (self.variant == Variant::BitnetB158SpinQuant && proj == Proj::Down)
        {
            return InputQuant {
                hadamard: true,
                rotate_weight: true,
                ..plain
            };
        }
        if !proj.reads_intermediate_state() {
            return plain;
        }
        match self.variant {
            Variant::BitnetB158
            | Variant::BitnetV2NoRotation
            | Variant::BitnetB158Quarot
            | Variant::BitnetB158SpinQuant => plain,
            Variant::BitnetV2 => InputQuant {
                hadamard: true,
                ..plain
            },
            Variant::BitnetV2WeightRotation => InputQuant {
                hadamard: true,
                rotate_weight: true,
                ..plain
            },
            Variant::BitnetA48 => InputQuant {
                topk_keep: Some(self.topk_keep),
                bits: ActBits::Int8,
                ..plain
            },
        }
    }

    /// `[out, in]` of a projection.
    pub fn proj_shape(&self, proj: Proj) -> (usize, usize) {
        let kv = self.num_kv_heads * self.head_dim;
        match proj {
            Proj::Q => (self.hidden_size, self.hidden_size),
            Proj::K | Proj::V => (kv, self.hidden_size),
            Proj::O => (self.hidden_size, self.hidden_size),
            Proj::Gate | Proj::Up => (self.intermediate_size, self.hidden_size),
            Proj::Down => (self.hidden_size, self.intermediate_size),
        }
    }

    /// Total parameter count (latent weights, norms, embeddings; the LM head once if tied).
    pub fn parameter_count(&self) -> u64 {
        let h = self.hidden_size as u64;
        let per_layer: u64 = Proj::ALL
            .iter()
            .map(|&p| {
                let (o, i) = self.proj_shape(p);
                (o * i) as u64
            })
            .sum::<u64>()
            + 3 * h // input_layernorm, post_attention_layernorm, attn_sub_norm
            + self.intermediate_size as u64; // ffn_sub_norm
        let embed = self.vocab_size as u64 * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + per_layer * self.num_layers as u64 + h
    }
}

/// Benchmark shapes (random weights, `hbit init --dummy`, `hbit bench e2e`): bitnet.cpp's
/// ≈125M / ≈700M / ≈2B presets and the paper's 400M / 1.3B.
pub const BENCH_SHAPES: [&str; 5] = ["b125m", "b700m", "b2b", "400m", "1.3b"];

/// The config of a benchmark shape as BitNet v2 at `bits` activations.
pub fn bench_shape(shape: &str, bits: ActBits) -> Result<ModelConfig, ConfigError> {
    // (hidden, FFN, layers, heads, KV heads, vocab, context, squared-ReLU GLU)
    let (h, ffn, layers, heads, kv, vocab, ctx, relu2) = match shape {
        "b125m" => (768, 3072, 12, 12, 12, 32002, 2048, false),
        "b700m" => (1536, 4096, 24, 16, 16, 32002, 2048, false),
        // BitNet b1.58 2B4T: squared-ReLU GLU, GQA 20/5, Llama-3 vocabulary.
        "b2b" => (2560, 6912, 30, 20, 5, 128256, 4096, true),
        "400m" | "1.3b" => return preset(shape, Variant::BitnetV2, bits),
        other => {
            return Err(field_err(
                "shape",
                format!("unknown shape {other:?}; expected one of {BENCH_SHAPES:?}"),
            ))
        }
    };
    let file = ConfigFile {
        hidden_size: h,
        intermediate_size: ffn,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        vocab_size: vocab,
        max_position_embeddings: ctx,
        rms_norm_eps: 1e-5,
        rope_theta: 500000.0,
        hidden_act: if relu2 { "relu2" } else { "silu" }.into(),
        tie_word_embeddings: true,
        bos_token_id: None,
        eos_token_id: None,
        quantization: QuantizationFile {
            variant: Variant::BitnetV2.name().into(),
            weight_bits: 1.58,
            activation_bits: bits.bits(),
            hadamard: Variant::BitnetV2.hadamard_projections(),
            topk_keep: None,
            // 6912 = 27·256 has no exact Hadamard: block-diagonal with 256-blocks.
            hadamard_block: (ffn == 6912).then_some(256),
        },
    };
    ModelConfig::from_file(&file)
}

/// Named presets. `micro` is for tests (seconds); `tiny` trains on a 2-core CPU in under an hour;
/// the rest are the paper's Table 8 sizes (constructible and countable, not trained here).
pub const PRESETS: [&str; 6] = ["micro", "tiny", "400m", "1.3b", "3b", "7b"];

/// A preset's architecture with the given variant and activation width.
pub fn preset(
    name: &str,
    variant: Variant,
    activation_bits: ActBits,
) -> Result<ModelConfig, ConfigError> {
    // (hidden, GLU size, heads, kv heads, layers, vocab, context)
    let (hidden, glu, heads, kv_heads, layers, vocab, context) = match name {
        // Smallest shape that still has GQA, two layers and a Paley-sized FFN (12·2^m): every code
        // path runs in milliseconds.
        "micro" => (64, 192, 4, 2, 2, 512, 64),
        // ≈ 6.3 M parameters with a 4096-token BPE: 6 layers × 0.85 M + tied 1 M embedding.
        // GLU 768 = 12·64 exercises the Paley Hadamard; head_dim 64 as in the paper's models.
        "tiny" => (256, 768, 4, 4, 6, 4096, 256),
        // Paper Table 8; LLaMA-2 vocabulary size, 2048 context.
        "400m" => (1024, 4096, 16, 16, 24, 32000, 2048),
        "1.3b" => (2048, 8192, 32, 32, 18, 32000, 2048),
        "3b" => (4096, 8192, 32, 32, 20, 32000, 2048),
        "7b" => (4096, 16384, 32, 32, 24, 32000, 2048),
        other => {
            return Err(field_err(
                "preset",
                format!("unknown preset {other:?}; expected one of {PRESETS:?}"),
            ))
        }
    };
    let hidden_act = if variant == Variant::BitnetA48 {
        HiddenAct::Relu2
    } else {
        HiddenAct::Silu
    };
    let file = ConfigFile {
        hidden_size: hidden,
        intermediate_size: glu,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        vocab_size: vocab,
        max_position_embeddings: context,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        hidden_act: hidden_act.name().into(),
        tie_word_embeddings: true,
        bos_token_id: None,
        eos_token_id: None,
        quantization: QuantizationFile {
            variant: variant.name().into(),
            weight_bits: 1.58,
            activation_bits: activation_bits.bits(),
            hadamard: variant.hadamard_projections(),
            topk_keep: (variant == Variant::BitnetA48).then_some(DEFAULT_TOPK_KEEP as f64),
            hadamard_block: None,
        },
    };
    ModelConfig::from_file(&file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_shapes_have_the_shapes_their_names_promise() {
        let b700m = bench_shape("b700m", ActBits::Int4).unwrap();
        assert_eq!(
            (
                b700m.hidden_size,
                b700m.intermediate_size,
                b700m.num_layers,
                b700m.vocab_size
            ),
            (1536, 4096, 24, 32002)
        );
        let b2b = bench_shape("b2b", ActBits::Int8).unwrap();
        assert_eq!(
            (b2b.num_heads, b2b.num_kv_heads, b2b.hidden_act),
            (20, 5, HiddenAct::Relu2)
        );
        assert_eq!(
            bench_shape("400m", ActBits::Int8).unwrap(),
            preset("400m", Variant::BitnetV2, ActBits::Int8).unwrap()
        );
        for shape in BENCH_SHAPES {
            assert!(bench_shape(shape, ActBits::Int4).is_ok(), "{shape}");
        }
        let err = bench_shape("b9t", ActBits::Int8).unwrap_err().to_string();
        assert!(err.contains("b9t") && err.contains("b700m"), "{err}");
    }

    #[test]
    fn presets_have_the_papers_sizes() {
        // Table 8 hidden sizes and layer counts, and parameter counts in the advertised range.
        let tiny = preset("tiny", Variant::BitnetV2, ActBits::Int8).unwrap();
        let n = tiny.parameter_count();
        assert!(
            (5_000_000..=10_000_000).contains(&n),
            "tiny has {n} parameters"
        );
        let p13 = preset("1.3b", Variant::BitnetV2, ActBits::Int8).unwrap();
        assert_eq!(
            (p13.hidden_size, p13.intermediate_size, p13.num_layers),
            (2048, 8192, 18)
        );
        let n13 = p13.parameter_count();
        assert!(
            (1_100_000_000..1_500_000_000).contains(&n13),
            "1.3b has {n13}"
        );
        let p7 = preset("7b", Variant::BitnetV2, ActBits::Int4).unwrap();
        let n7 = p7.parameter_count();
        assert!((6_000_000_000..8_000_000_000).contains(&n7), "7b has {n7}");
    }

    #[test]
    fn rope_angles_by_hand() {
        // head_dim 4, theta 10000: frequencies 10000^0 = 1 and 10000^(-2/4) = 0.01.
        let mut c = preset("micro", Variant::BitnetV2, ActBits::Int8).unwrap();
        c.head_dim = 4;
        c.rope_theta = 10_000.0;
        c.max_position_embeddings = 5;
        let (mut cos, mut sin) = ([0.0f32; 2], [0.0f32; 2]);
        c.rope_at(3, &mut cos, &mut sin);
        let want_cos = [3.0f64.cos() as f32, 0.03f64.cos() as f32];
        let want_sin = [3.0f64.sin() as f32, 0.03f64.sin() as f32];
        for i in 0..2 {
            assert!((cos[i] - want_cos[i]).abs() <= 1e-7, "cos[{i}] {}", cos[i]);
            assert!((sin[i] - want_sin[i]).abs() <= 1e-7, "sin[{i}] {}", sin[i]);
        }
        // The tables repeat each position's frequencies in both halves; position 0 is the
        // identity rotation.
        let (tc, ts) = c.rope_tables();
        assert_eq!(tc.len(), 5 * 4);
        assert_eq!(&tc[12..16], &[cos[0], cos[1], cos[0], cos[1]]);
        assert_eq!(&ts[12..16], &[sin[0], sin[1], sin[0], sin[1]]);
        assert_eq!(&tc[..4], &[1.0; 4]);
        assert_eq!(&ts[..4], &[0.0; 4]);
    }

    #[test]
    fn micro_parameter_count_by_hand() {
        let m = preset("micro", Variant::BitnetB158, ActBits::Int8).unwrap();
        // q,o: 64·64; k,v: 32·64; gate,up,down: 192·64; norms 3·64 + 192; embed 512·64; final 64.
        let layer = 2 * 64 * 64 + 2 * 32 * 64 + 3 * 192 * 64 + 3 * 64 + 192;
        assert_eq!(m.parameter_count(), (512 * 64 + 2 * layer + 64) as u64);
    }

    #[test]
    fn file_round_trip_and_variant_table() {
        for variant in Variant::NAMES.map(|n| Variant::parse(n).unwrap()) {
            let bits = if variant == Variant::BitnetB158 {
                ActBits::Int8
            } else {
                ActBits::Int4
            };
            let c = preset("micro", variant, bits).unwrap();
            let back = ModelConfig::from_file(&c.to_file()).unwrap();
            assert_eq!(back, c);
            let o = c.input_quant(Proj::O);
            let q = c.input_quant(Proj::Q);
            if variant == Variant::BitnetB158Quarot {
                // The post-training baseline rotates every projection's input and weight.
                for p in Proj::ALL {
                    let iq = c.input_quant(p);
                    assert!(iq.hadamard && iq.rotate_weight && iq.bits == bits, "{p:?}");
                }
                assert_eq!(c.to_file().quantization.hadamard.len(), 7);
                continue;
            }
            if variant == Variant::BitnetB158SpinQuant {
                // Learned rotations are folded offline; only W_down's input turns online.
                for p in Proj::ALL {
                    let iq = c.input_quant(p);
                    let down = p == Proj::Down;
                    assert!(iq.hadamard == down && iq.rotate_weight == down, "{p:?}");
                }
                assert_eq!(c.to_file().quantization.hadamard, ["down_proj"]);
                continue;
            }
            assert!(!q.hadamard && q.topk_keep.is_none() && q.bits == bits);
            match variant {
                Variant::BitnetB158Quarot | Variant::BitnetB158SpinQuant => {
                    unreachable!("handled above")
                }
                Variant::BitnetB158 | Variant::BitnetV2NoRotation => assert_eq!(o, q),
                Variant::BitnetV2 => assert!(o.hadamard && !o.rotate_weight && o.bits == bits),
                Variant::BitnetV2WeightRotation => assert!(o.hadamard && o.rotate_weight),
                Variant::BitnetA48 => {
                    assert_eq!(o.topk_keep, Some(0.5));
                    assert_eq!(o.bits, ActBits::Int8);
                    assert_eq!(c.hidden_act, HiddenAct::Relu2);
                }
            }
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let good = preset("micro", Variant::BitnetV2, ActBits::Int8)
            .unwrap()
            .to_file();
        type Mutation = Box<dyn Fn(&mut ConfigFile)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "num_attention_heads",
                Box::new(|f| f.num_attention_heads = 3),
            ),
            (
                "num_key_value_heads",
                Box::new(|f| f.num_key_value_heads = 3),
            ),
            (
                "quantization.activation_bits",
                Box::new(|f| f.quantization.activation_bits = 2),
            ),
            (
                "quantization.variant",
                Box::new(|f| f.quantization.variant = "bitnet".into()),
            ),
            (
                "quantization.hadamard",
                Box::new(|f| f.quantization.hadamard.clear()),
            ),
            ("hidden_act", Box::new(|f| f.hidden_act = "gelu".into())),
            ("vocab_size", Box::new(|f| f.vocab_size = 0)),
            // 192 = 12·16 is fine; 200 has no exact Hadamard.
            ("intermediate_size", Box::new(|f| f.intermediate_size = 200)),
        ];
        for (field, mutate) in cases {
            let mut f = good.clone();
            mutate(&mut f);
            match ModelConfig::from_file(&f) {
                Err(ConfigError::Field { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: expected a config error, got {other:?}"),
            }
        }
        let mut b158_a4 = preset("micro", Variant::BitnetB158, ActBits::Int8)
            .unwrap()
            .to_file();
        b158_a4.quantization.activation_bits = 4;
        assert!(ModelConfig::from_file(&b158_a4).is_err());
    }

    #[test]
    fn block_diagonal_hadamard_serves_sizes_without_an_exact_transform() {
        // BitNet b1.58 2B4T's GLU size 6912 = 27·256 has no exact Hadamard.
        let mut file = preset("tiny", Variant::BitnetV2, ActBits::Int4)
            .unwrap()
            .to_file();
        file.intermediate_size = 6912;
        match ModelConfig::from_file(&file) {
            Err(ConfigError::Field { field, .. }) => assert_eq!(field, "intermediate_size"),
            other => panic!("expected a field error, got {other:?}"),
        }
        file.quantization.hadamard_block = Some(256);
        let config = ModelConfig::from_file(&file).unwrap();
        let h = config.hadamard(6912).unwrap();
        assert_eq!(h.len(), 6912);
        // Round trip through config.json keeps the block.
        assert_eq!(ModelConfig::from_file(&config.to_file()).unwrap(), config);
        // A block that does not divide the size, or a variant without rotation, is refused.
        file.quantization.hadamard_block = Some(512);
        assert!(ModelConfig::from_file(&file).is_err());
        let mut plain = preset("tiny", Variant::BitnetB158, ActBits::Int8)
            .unwrap()
            .to_file();
        plain.quantization.hadamard_block = Some(256);
        assert!(ModelConfig::from_file(&plain).is_err());
    }

    #[test]
    fn hf_configs_of_the_remote_code_model_load_as_hbit_configs() {
        let want = preset("micro", Variant::BitnetV2, ActBits::Int4).unwrap();
        let f = want.to_file();
        let mut hf = serde_json::json!({
            "model_type": HF_MODEL_TYPE,
            "hidden_size": f.hidden_size,
            "intermediate_size": f.intermediate_size,
            "num_hidden_layers": f.num_hidden_layers,
            "num_attention_heads": f.num_attention_heads,
            "num_key_value_heads": f.num_key_value_heads,
            "vocab_size": f.vocab_size,
            "max_position_embeddings": f.max_position_embeddings,
            "rms_norm_eps": f.rms_norm_eps,
            "rope_theta": f.rope_theta,
            "hidden_act": "silu",
            "tie_word_embeddings": true,
            "hbit_quantization": {"variant": "bitnet_v2", "activation_bits": 4,
                "hadamard": ["o_proj", "down_proj"], "hadamard_block": null,
                "topk_keep": null, "weights": "latent"},
        });
        let dir = std::env::temp_dir().join(format!("hbit-hf-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        std::fs::write(&path, hf.to_string()).unwrap();
        assert_eq!(ModelConfig::load(&path).unwrap(), want);
        hf["hbit_quantization"]["activation_bits"] = serde_json::json!("four");
        std::fs::write(&path, hf.to_string()).unwrap();
        let e = ModelConfig::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("config.json") && e.contains("hbit_quantization.activation_bits"),
            "{e}"
        );
        hf["hbit_quantization"]["activation_bits"] = serde_json::json!(4);
        hf["hbit_quantization"]["hadamard"] = serde_json::json!([]);
        std::fs::write(&path, hf.to_string()).unwrap();
        // The projection list must agree with the variant, as in hbit's own config.json.
        assert!(ModelConfig::load(&path).is_err());
        hf["hbit_quantization"]["hadamard"] = serde_json::json!(["o_proj", "down_proj"]);
        // transformers 5 keeps RoPE's base under rope_parameters; scaled RoPE is refused.
        hf["rope_parameters"] = serde_json::json!({"rope_theta": 500000.0, "rope_type": "default"});
        std::fs::write(&path, hf.to_string()).unwrap();
        assert_eq!(ModelConfig::load(&path).unwrap().rope_theta, 500000.0);
        hf["rope_parameters"]["rope_type"] = "llama3".into();
        std::fs::write(&path, hf.to_string()).unwrap();
        let e = ModelConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("rope_parameters") && e.contains("llama3"), "{e}");
        hf["rope_parameters"]["rope_type"] = "default".into();
        hf["bos_token_id"] = serde_json::json!(128000);
        std::fs::write(&path, hf.to_string()).unwrap();
        let e = ModelConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("bos_token_id") && e.contains("128000"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
