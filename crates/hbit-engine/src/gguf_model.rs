//! hbit models as GGUF files of llama.cpp's BitNet architectures, both ways.
//!
//! bitnet.cpp names the same model `bitnet` (SwiGLU FFN) or `bitnet-b1.58` (squared-ReLU FFN):
//! INT8 absmax activations, ternary weights with one scale per tensor, RMSNorm with BitNet's
//! sub-norms before W_o and W_down, rotate-half RoPE over Q/K rows in HF order, the output
//! layer tied to `token_embd` unless `output.weight` is present. That is hbit's `bitnet_b158`
//! variant at a8, tensor for tensor ([`gguf_name`]); a BitNet v2 model, whose W_o and W_down
//! inputs pass through a Hadamard transform those engines do not apply, is refused. Upstream
//! llama.cpp knows `bitnet` (SwiGLU) only; `bitnet-b1.58` files run in bitnet.cpp. I2_S is the
//! x86 layout of bitnet.cpp (its ARM build packs 64-weight blocks; files carry no marker).

use std::collections::HashSet;
use std::path::Path;

use half::f16;
use hbit_kernels::{ActBits, TernaryWeights};
use hbit_model::config::{ConfigFile, HiddenAct, QuantizationFile};
use hbit_model::{InputQuant, ModelConfig, Variant};

use crate::error::{EngineError, Result};
use crate::gguf::{encode_i2s, encode_tq1_0, encode_tq2_0, GgmlType, Gguf, GgufWriter, Value};
use crate::gguf_vocab;
use crate::tensor_io::check_finite;
use crate::weights::{FloatMatrix, TensorSource, TernaryMatrix, Weights};

/// The GGUF name of an hbit (HF) tensor name, `None` for names outside the model.
pub fn gguf_name(name: &str) -> Option<String> {
    match name {
        hbit_model::tensors::EMBED_TOKENS => return Some("token_embd.weight".into()),
        hbit_model::tensors::FINAL_NORM => return Some("output_norm.weight".into()),
        hbit_model::tensors::LM_HEAD => return Some("output.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, key) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let short = match key {
        "input_layernorm.weight" => "attn_norm",
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.attn_sub_norm.weight" => "attn_sub_norm",
        "self_attn.o_proj.weight" => "attn_output",
        "post_attention_layernorm.weight" => "ffn_norm",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.ffn_sub_norm.weight" => "ffn_sub_norm",
        "mlp.down_proj.weight" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{short}.weight"))
}

/// The architecture name bitnet.cpp gives a model of this FFN activation.
fn architecture(act: HiddenAct) -> &'static str {
    match act {
        HiddenAct::Silu => "bitnet",
        HiddenAct::Relu2 => "bitnet-b1.58",
    }
}

/// hbit's config of a GGUF BitNet model.
pub fn gguf_config(file: &Gguf) -> Result<ModelConfig> {
    let path = &file.path;
    let arch = file
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| EngineError::format(path, "general.architecture: missing"))?;
    let hidden_act = match arch {
        "bitnet" => "silu",
        "bitnet-b1.58" => "relu2",
        other => {
            return Err(EngineError::format(
                path,
                format!(
                    "general.architecture: expected \"bitnet\" or \"bitnet-b1.58\", found {other:?}"
                ),
            ))
        }
    };
    let int = |key: &str| -> Result<usize> {
        let full = format!("{arch}.{key}");
        file.get(&full)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| {
                EngineError::format(path, format!("{full}: expected an unsigned integer"))
            })
    };
    // GGUF stores these at f32: take the decimal an f32 prints as (1e-5, not the f32's exact
    // 9.99999974e-6), so a model written from hbit reads back to the same config.
    let float = |key: &str, default: f64| match file.get(&format!("{arch}.{key}")) {
        Some(Value::F32(v)) => v.to_string().parse().unwrap_or(*v as f64),
        Some(v) => v.as_f64().unwrap_or(default),
        None => default,
    };
    let embed = file
        .tensor("token_embd.weight")
        .ok_or_else(|| EngineError::tensor(path, "token_embd.weight", "missing"))?;
    let vocab_size = match embed.dims.as_slice() {
        [_, v] => *v as usize,
        dims => {
            return Err(EngineError::tensor(
                path,
                "token_embd.weight",
                format!("expected 2 dimensions, found {dims:?}"),
            ))
        }
    };
    let heads = int("attention.head_count")?;
    let (bos_token_id, eos_token_id) = gguf_vocab::special_ids(file);
    let config_file = ConfigFile {
        hidden_size: int("embedding_length")?,
        intermediate_size: int("feed_forward_length")?,
        num_hidden_layers: int("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: match file.get(&format!("{arch}.attention.head_count_kv")) {
            None => heads,
            Some(_) => int("attention.head_count_kv")?,
        },
        vocab_size,
        max_position_embeddings: int("context_length")?,
        rms_norm_eps: float("attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta: float("rope.freq_base", 10000.0),
        hidden_act: hidden_act.into(),
        tie_word_embeddings: file.tensor("output.weight").is_none(),
        bos_token_id,
        eos_token_id,
        quantization: QuantizationFile::b158_a8(),
    };
    // Every block's tensors must be in the file: a layer count read from metadata decides
    // allocations before any tensor is read, so a damaged count is refused here.
    let last = config_file.num_hidden_layers.checked_sub(1);
    if last.is_none_or(|l| file.tensor(&format!("blk.{l}.attn_q.weight")).is_none()) {
        return Err(EngineError::format(
            path,
            format!(
                "{arch}.block_count {}: the file has no blk.N.attn_q.weight for the last block",
                config_file.num_hidden_layers
            ),
        ));
    }
    let config = ModelConfig::from_file(&config_file)
        .map_err(|e| EngineError::format(path, e.to_string()))?;
    if let Ok(rot) = int("rope.dimension_count") {
        if rot != config.head_dim {
            return Err(EngineError::format(
                path,
                format!(
                    "{arch}.rope.dimension_count: {rot}, but hbit rotates whole heads of {}",
                    config.head_dim
                ),
            ));
        }
    }
    Ok(config)
}

/// What a GGUF model file holds for hbit.
pub struct GgufModel {
    pub weights: Weights,
    /// For a GPT-2 style byte-level BPE vocabulary, the tokenizer as an HF `tokenizer.json`;
    /// `None` for other vocabularies (pass a tokenizer file instead).
    pub tokenizer_json: Option<String>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

/// Whether `path` is a file that starts with GGUF's magic.
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    path.is_file()
        && std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
        && &magic == crate::gguf::MAGIC
}

/// Reads a GGUF BitNet model (`half_embeddings`: embedding and head at f16).
pub fn read_gguf_model(path: &Path, half_embeddings: bool) -> Result<GgufModel> {
    let file = Gguf::read(path)?;
    let config = gguf_config(&file)?;
    let mut source = GgufSource {
        file: &file,
        half_embeddings,
        used: HashSet::new(),
    };
    let weights = Weights::assemble(&config, &mut source)?;
    if let Some(extra) = file.tensors.iter().find(|t| !source.used.contains(&t.name)) {
        return Err(EngineError::tensor(
            path,
            &extra.name,
            "unexpected tensor (not part of a BitNet model of this config)",
        ));
    }
    Ok(GgufModel {
        weights,
        tokenizer_json: gguf_vocab::tokenizer_json(&file)?,
        chat_template: file
            .get(CHAT_TEMPLATE_KEY)
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// Where GGUF keeps the chat template.
const CHAT_TEMPLATE_KEY: &str = "tokenizer.chat_template";

struct GgufSource<'a> {
    file: &'a Gguf,
    half_embeddings: bool,
    used: HashSet<String>,
}

impl GgufSource<'_> {
    fn name(&self, name: &str) -> Result<String> {
        gguf_name(name).ok_or_else(|| {
            EngineError::tensor(&self.file.path, name, "no GGUF name for this tensor")
        })
    }

    fn floats(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        let g = self.name(name)?;
        let values = self.file.floats(&g)?;
        if values.len() != len {
            return Err(EngineError::tensor(
                &self.file.path,
                &g,
                format!("expected {len} values, found {}", values.len()),
            ));
        }
        check_finite(&self.file.path, &g, &values)?;
        self.used.insert(g);
        Ok(values)
    }
}

impl TensorSource for GgufSource<'_> {
    fn norm(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        self.floats(name, len)
    }

    fn ternary(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        quant: InputQuant,
    ) -> Result<TernaryMatrix> {
        let g = self.name(name)?;
        let w = self.file.ternary(&g)?;
        if (w.rows, w.cols) != (rows, cols) {
            return Err(EngineError::tensor(
                &self.file.path,
                &g,
                format!(
                    "expected [{rows}, {cols}] (rows, columns), found [{}, {}]",
                    w.rows, w.cols
                ),
            ));
        }
        self.used.insert(g);
        Ok(TernaryMatrix::pack(&w, quant.bits))
    }

    fn float_matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<FloatMatrix> {
        let values = self.floats(name, rows * cols)?;
        Ok(FloatMatrix::from_f32(
            rows,
            cols,
            values,
            self.half_embeddings,
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufQuant {
    /// bitnet.cpp's layout: 2 bits a weight, one f32 scale per tensor (exact).
    I2S,
    /// llama.cpp's 2-bit ternary blocks, an f16 scale per 256 (the scale rounded to f16).
    TQ2_0,
    /// llama.cpp's 1.69-bit ternary blocks, an f16 scale per 256.
    TQ1_0,
    /// `code · scale` at f16.
    F16,
}

impl GgufQuant {
    pub fn parse(s: &str) -> Result<GgufQuant> {
        match s.to_ascii_lowercase().as_str() {
            "i2_s" => Ok(GgufQuant::I2S),
            "tq2_0" => Ok(GgufQuant::TQ2_0),
            "tq1_0" => Ok(GgufQuant::TQ1_0),
            "f16" => Ok(GgufQuant::F16),
            other => Err(EngineError::Input(format!(
                "--quant {other}: expected i2_s, tq2_0, tq1_0 or f16"
            ))),
        }
    }
}

/// Writes `weights` as a GGUF model for bitnet.cpp (and, SwiGLU models in TQ types, llama.cpp),
/// projections in `quant`, norms at f32, the (tied) embedding at f32 or f16 as held; the vocabulary
/// from an HF byte-level BPE `tokenizer_json` and the chat template when given. Refuses models those engines would
/// run differently (BitNet v2's Hadamard, a4, a4.8's sparsity, rotated PTQ baselines).
pub fn write_gguf_model(
    weights: &Weights,
    tokenizer_json: Option<&str>,
    chat_template: Option<&str>,
    quant: GgufQuant,
    path: &Path,
) -> Result<()> {
    let c = &weights.config;
    if c.variant != Variant::BitnetB158 || c.activation_bits != ActBits::Int8 {
        return Err(EngineError::Input(format!(
            "GGUF export: a {} a{} model cannot be written for bitnet.cpp / llama.cpp, which run \
             BitNet b1.58 at 8-bit activations only ({})",
            c.variant.name(),
            c.activation_bits.bits(),
            match c.variant {
                Variant::BitnetV2 | Variant::BitnetV2WeightRotation =>
                    "BitNet v2 rotates the W_o and W_down inputs with a Hadamard transform they do not apply",
                _ if c.activation_bits != ActBits::Int8 => "they quantize activations to 8 bits",
                _ => "their graph has no place for this variant's changes",
            }
        )));
    }
    if !c.tie_word_embeddings {
        return Err(EngineError::Input(
            "GGUF export: bitnet.cpp's BitNet graphs take the output layer from token_embd; a \
             model with its own LM head cannot be written for them"
                .into(),
        ));
    }
    let arch = architecture(c.hidden_act);
    let mut w = GgufWriter::new();
    let key = |k: &str| format!("{arch}.{k}");
    w.metadata("general.architecture", Value::String(arch.into()))
        .metadata("general.name", Value::String("hbit".into()))
        .metadata(
            &key("context_length"),
            Value::U32(c.max_position_embeddings as u32),
        )
        .metadata(&key("embedding_length"), Value::U32(c.hidden_size as u32))
        .metadata(&key("block_count"), Value::U32(c.num_layers as u32))
        .metadata(
            &key("feed_forward_length"),
            Value::U32(c.intermediate_size as u32),
        )
        .metadata(&key("attention.head_count"), Value::U32(c.num_heads as u32))
        .metadata(
            &key("attention.head_count_kv"),
            Value::U32(c.num_kv_heads as u32),
        )
        .metadata(&key("rope.dimension_count"), Value::U32(c.head_dim as u32))
        .metadata(&key("rope.freq_base"), Value::F32(c.rope_theta as f32))
        .metadata(
            &key("attention.layer_norm_rms_epsilon"),
            Value::F32(c.rms_norm_eps as f32),
        )
        .metadata(&key("vocab_size"), Value::U32(c.vocab_size as u32));
    if let Some(text) = tokenizer_json {
        gguf_vocab::write_vocabulary(&mut w, text, c)?;
    }
    if let Some(template) = chat_template {
        w.metadata(CHAT_TEMPLATE_KEY, Value::String(template.into()));
    }
    let f32_bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    // An f16 embedding stays f16; any other storage is written at f32.
    let floats = |m: &FloatMatrix| -> (GgmlType, Vec<u8>) {
        match m.view() {
            hbit_kernels::FloatWeights::F16(v) => (
                GgmlType::F16,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            _ => (GgmlType::F32, f32_bytes(&m.to_f32())),
        }
    };
    let (ty, bytes) = floats(&weights.embed_tokens);
    w.tensor(
        "token_embd.weight",
        &[c.vocab_size, c.hidden_size],
        ty,
        bytes,
    )?;
    w.tensor(
        "output_norm.weight",
        &[c.hidden_size],
        GgmlType::F32,
        f32_bytes(&weights.norm),
    )?;
    for (l, layer) in weights.layers.iter().enumerate() {
        let name = |short: &str| format!("blk.{l}.{short}.weight");
        let norms = [
            ("attn_norm", &layer.input_layernorm),
            ("attn_sub_norm", &layer.attn_sub_norm),
            ("ffn_norm", &layer.post_attention_layernorm),
            ("ffn_sub_norm", &layer.ffn_sub_norm),
        ];
        for (short, v) in norms {
            w.tensor(&name(short), &[v.len()], GgmlType::F32, f32_bytes(v))?;
        }
        let projections = [
            ("attn_q", &layer.q_proj),
            ("attn_k", &layer.k_proj),
            ("attn_v", &layer.v_proj),
            ("attn_output", &layer.o_proj),
            ("ffn_gate", &layer.gate_proj),
            ("ffn_up", &layer.up_proj),
            ("ffn_down", &layer.down_proj),
        ];
        for (short, p) in projections {
            let t = p.weight.unpack();
            let (ty, bytes) = encode_ternary(&t, quant)
                .map_err(|m| EngineError::Input(format!("GGUF export of {}: {m}", name(short))))?;
            w.tensor(&name(short), &[t.rows, t.cols], ty, bytes)?;
        }
    }
    w.write(path)
}

/// A ternary matrix's bytes in `quant`.
fn encode_ternary(
    t: &TernaryWeights,
    quant: GgufQuant,
) -> std::result::Result<(GgmlType, Vec<u8>), String> {
    let scale16 = f16::from_f32(t.alpha);
    match quant {
        // bitnet.cpp reads row r at byte r·cols/4: its 128-weight blocks must not span rows.
        GgufQuant::I2S if t.cols.is_multiple_of(128) => encode_i2s(&t.codes, t.alpha)
            .map(|b| (GgmlType::I2S, b))
            .map_err(|e| e.to_string()),
        GgufQuant::I2S => Err(format!(
            "I2_S packs 128 weights of a row a block; rows of {} columns do not fill them",
            t.cols
        )),
        GgufQuant::TQ2_0 | GgufQuant::TQ1_0 if !t.cols.is_multiple_of(256) => Err(format!(
            "{} packs rows in blocks of 256; rows of {} columns do not fill them",
            if quant == GgufQuant::TQ2_0 {
                "TQ2_0"
            } else {
                "TQ1_0"
            },
            t.cols
        )),
        GgufQuant::TQ2_0 => encode_tq2_0(&t.codes, scale16)
            .map(|b| (GgmlType::TQ2_0, b))
            .map_err(|e| e.to_string()),
        GgufQuant::TQ1_0 => encode_tq1_0(&t.codes, scale16)
            .map(|b| (GgmlType::TQ1_0, b))
            .map_err(|e| e.to_string()),
        GgufQuant::F16 => Ok((
            GgmlType::F16,
            t.codes
                .iter()
                .flat_map(|&c| f16::from_f32(c as f32 * t.alpha).to_le_bytes())
                .collect(),
        )),
    }
}
