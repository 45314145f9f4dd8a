//! HF transformers' BitNet checkpoints (`config.json` with `"quantization_config":
//! {"quant_method": "bitnet", ...}`, squared-ReLU GLU, sub-norms) and hbit's remote-code model
//! (`model_type: hbit_bitnet`, `python/hbit_bitnet/`), read and written.
//!
//! A packed projection is `….weight` U8 `[out/4, in]`: weight row `r` of `out` is field
//! `r / (out/4)` (bits `2f..2f+2`) of packed row `r % (out/4)`, holding `code + 1`. What its
//! `….weight_scale` means depends on transformers' `linear_class` ([`WeightRule`]), settled by
//! running transformers' own modules (reports/interop.md, `scripts/hf_bitnet_variants_check.py`):
//! * `bitlinear` (the default; Falcon3-1.58bit, Llama3-8B-1.58, hbit's exports): `BitLinear`
//!   computes `y = (x_q · codesᵀ) / (input_scale · weight_scale)`, so the scale **divides**:
//!   `s = 1 / mean|W|` and our `alpha` (eq. 2, multiplied) is `1/s`;
//! * `autobitlinear` offline (microsoft/bitnet-b1.58-2B-4T): `AutoBitLinear` multiplies its
//!   output by `weight_scale`, so `alpha = s`; the weight may also be stored as float ternary
//!   values `{-a, 0, a}` (then `alpha = s·a`);
//! * `autobitlinear` online (the 2B4T `-bf16` master weights): float weights quantized per
//!   tensor at load, absmean with rounding half to even, as transformers' `WeightQuant`.
//!
//! Activations are INT8 absmax per token (BitNet b1.58), so the model is our `bitnet_b158` a8.

use std::collections::HashMap;
use std::path::Path;

use hbit_kernels::TernaryWeights;
use hbit_model::config::ConfigFile;
use hbit_model::{InputQuant, ModelConfig, Variant};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use serde_json::Value;

use hbit_model::files::{CONFIG_FILE, MODEL_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE};

use crate::error::{EngineError, Result};
use crate::tensor_io::{check_finite, decode_floats};
use crate::weights::{FloatMatrix, TensorSource, TernaryMatrix, Weights};

/// Whether `dir/config.json` declares HF's BitNet quantization (the 2B4T layout).
pub fn is_hf_bitnet(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join(CONFIG_FILE)) else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<Value>(&text) else {
        return false;
    };
    v["quantization_config"]["quant_method"].as_str() == Some("bitnet")
        || (v["model_type"].as_str() == Some(REMOTE_MODEL_TYPE)
            && v["hbit_quantization"]["weights"].as_str() == Some("packed"))
}

/// How a checkpoint stores each projection, from transformers' `quantization_config`
/// (`linear_class`, `quantization_mode`); each rule was checked against transformers' own
/// modules (reports/interop.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightRule {
    /// `bitlinear` (or no `linear_class`; its mode is ignored): packed U8 codes, and
    /// `weight_scale` divides, `W = code / s`. Falcon3-1.58bit, Llama3-8B-1.58, hbit's exports.
    PackedDivide,
    /// `autobitlinear` + `offline`: codes packed in U8 or stored as float ternary values, and
    /// `weight_scale` multiplies, `W = weight * s`. microsoft/bitnet-b1.58-2B-4T.
    OfflineMultiply,
    /// `autobitlinear` + `online`: float master weights, quantized per tensor at load as
    /// transformers does (absmean, round half to even). microsoft/bitnet-b1.58-2B-4T-bf16.
    OnlineMaster,
}

impl WeightRule {
    /// The rule of an HF `config.json`; refuses what hbit's model does not compute.
    pub fn of_config(path: &Path, v: &Value) -> Result<WeightRule> {
        match v["model_type"].as_str() {
            Some("bitnet") | Some(REMOTE_MODEL_TYPE) => {}
            other => {
                return Err(EngineError::format(
                    path,
                    format!(
                        "model_type {other:?}: hbit reads BitNet models (`bitnet`, as \
                         microsoft/bitnet-b1.58-2B-4T, or `{REMOTE_MODEL_TYPE}`); Llama-architecture \
                         1.58-bit models (Falcon3, Llama3-8B-1.58) have no sub-norms, which hbit's \
                         model always applies"
                    ),
                ))
            }
        }
        let q = &v["quantization_config"];
        if q["use_rms_norm"].as_bool() == Some(true) {
            return Err(EngineError::format(
                path,
                "quantization_config.use_rms_norm: an extra RMSNorm before every projection is \
                 not part of hbit's model",
            ));
        }
        match (q["linear_class"].as_str(), q["quantization_mode"].as_str()) {
            (None | Some("bitlinear"), _) => Ok(WeightRule::PackedDivide),
            (Some("autobitlinear"), None | Some("offline")) => Ok(WeightRule::OfflineMultiply),
            (Some("autobitlinear"), Some("online")) => Ok(WeightRule::OnlineMaster),
            (class, mode) => Err(EngineError::format(
                path,
                format!(
                    "quantization_config: linear_class {class:?} with quantization_mode {mode:?} \
                     is not one transformers defines (bitlinear, or autobitlinear offline / online)"
                ),
            )),
        }
    }
}

/// Our config for an HF BitNet `config.json` (transformers' or hbit's remote-code model).
pub fn hf_config(path: &Path, v: &Value) -> Result<ModelConfig> {
    let file = ConfigFile::from_hf_json(v).map_err(|e| EngineError::format(path, e.to_string()))?;
    ModelConfig::from_file(&file).map_err(|e| EngineError::format(path, e.to_string()))
}

/// Reads an HF BitNet checkpoint directory into packed weights and its tokenizer text.
pub fn read_hf_bitnet(dir: &Path, half_embeddings: bool) -> Result<(Weights, Option<String>)> {
    let config_path = dir.join(CONFIG_FILE);
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| EngineError::io(&config_path, e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| EngineError::format(&config_path, format!("invalid JSON: {e}")))?;
    let rule = WeightRule::of_config(&config_path, &v)?;
    let config = hf_config(&config_path, &v)?;
    let model_path = dir.join(MODEL_FILE);
    let bytes = std::fs::read(&model_path).map_err(|e| EngineError::io(&model_path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        EngineError::format(&model_path, format!("not a valid safetensors file ({e})"))
    })?;
    let mut source = HfSource {
        path: &model_path,
        st: &st,
        half_embeddings,
        rule,
        used: Vec::new(),
    };
    let weights = Weights::assemble(&config, &mut source)?;
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let tied_head = hbit_model::tensors::LM_HEAD;
    if let Some(extra) = names.iter().find(|n| {
        let tied = config.tie_word_embeddings && n.as_str() == tied_head;
        !(source.used.contains(n) || tied)
    }) {
        return Err(EngineError::tensor(
            &model_path,
            extra,
            "unexpected tensor (not part of this config's model)",
        ));
    }
    let tok_path = dir.join(TOKENIZER_FILE);
    let tokenizer = match tok_path.exists() {
        true => {
            Some(std::fs::read_to_string(&tok_path).map_err(|e| EngineError::io(&tok_path, e))?)
        }
        false => None,
    };
    Ok((weights, tokenizer))
}

struct HfSource<'a> {
    path: &'a Path,
    st: &'a SafeTensors<'a>,
    half_embeddings: bool,
    rule: WeightRule,
    used: Vec<String>,
}

impl HfSource<'_> {
    /// Values of a float tensor (F32, F16 or BF16) of `len` values.
    fn floats(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        let view = self
            .st
            .tensor(name)
            .map_err(|_| EngineError::tensor(self.path, name, "missing"))?;
        let values = decode_floats(self.path, name, &view)?;
        if values.len() != len {
            return Err(EngineError::tensor(
                self.path,
                name,
                format!(
                    "expected {len} values, found {} (shape {:?})",
                    values.len(),
                    view.shape()
                ),
            ));
        }
        check_finite(self.path, name, &values)?;
        self.used.push(name.to_string());
        Ok(values)
    }
}

impl HfSource<'_> {
    /// A float projection must be `[out, in]` (a transposed one has the same count).
    fn expect_shape(
        &self,
        name: &str,
        view: &safetensors::tensor::TensorView,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        if view.shape() == [rows, cols] {
            return Ok(());
        }
        Err(EngineError::tensor(
            self.path,
            name,
            format!(
                "expected shape [{rows}, {cols}] (out, in), found {:?}",
                view.shape()
            ),
        ))
    }

    /// `<weight>_scale`: one positive value.
    fn scale(&mut self, weight: &str) -> Result<f32> {
        let name = format!("{weight}_scale");
        let scale = self.floats(&name, 1)?[0];
        if scale > 0.0 {
            Ok(scale)
        } else {
            Err(EngineError::tensor(
                self.path,
                &name,
                format!("expected a positive scale, found {scale}"),
            ))
        }
    }
}

/// Float weights that hold ternary values `{-a, 0, a}`: their codes and `a` (1 when all are
/// zero). Anything else is not a ternary weight.
fn ternary_values(values: &[f32]) -> std::result::Result<(Vec<i8>, f32), String> {
    let magnitude = values
        .iter()
        .map(|v| v.abs())
        .find(|&a| a > 0.0)
        .unwrap_or(1.0);
    let mut codes = Vec::with_capacity(values.len());
    for (i, &v) in values.iter().enumerate() {
        codes.push(match v {
            _ if v == 0.0 => 0,
            _ if v == magnitude => 1,
            _ if v == -magnitude => -1,
            _ => {
                return Err(format!(
                    "value {v} at {i} is not one of 0, ±{magnitude}: an offline autobitlinear \
                     weight stored as floats must be ternary"
                ))
            }
        });
    }
    Ok((codes, magnitude))
}

/// transformers' online weight quantizer (`WeightQuant`), in f32: `m = max(mean|W|, 1e-5)`,
/// `s = 1/m`, codes `clamp(round_half_even(W·s), -1, 1)`, alpha `1/s`.
fn absmean_round_half_even(values: &[f32]) -> (Vec<i8>, f32) {
    let mean =
        (values.iter().map(|v| v.abs() as f64).sum::<f64>() / values.len().max(1) as f64) as f32;
    let inverse = 1.0 / mean.max(1e-5);
    let codes = values
        .iter()
        .map(|&v| (v * inverse).round_ties_even().clamp(-1.0, 1.0) as i8)
        .collect();
    (codes, 1.0 / inverse)
}

/// Ternary codes `[out, in]` from HF's packed `[out/4, in]` bytes.
pub fn unpack_hf_codes(
    packed: &[u8],
    rows: usize,
    cols: usize,
) -> std::result::Result<Vec<i8>, String> {
    let p = rows / 4;
    let mut codes = vec![0i8; rows * cols];
    for r in 0..rows {
        let (src, field) = (r % p, r / p);
        for k in 0..cols {
            let c = (packed[src * cols + k] >> (2 * field)) & 3;
            if c == 3 {
                return Err(format!(
                    "invalid 2-bit code 3 at packed row {src}, column {k}, field {field}"
                ));
            }
            codes[r * cols + k] = c as i8 - 1;
        }
    }
    Ok(codes)
}

impl TensorSource for HfSource<'_> {
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
        let view = self
            .st
            .tensor(name)
            .map_err(|_| EngineError::tensor(self.path, name, "missing"))?;
        let packed_shape = [rows / 4, cols];
        let is_packed = view.dtype() == Dtype::U8;
        let (codes, alpha) = match (self.rule, is_packed) {
            (WeightRule::PackedDivide | WeightRule::OfflineMultiply, true) => {
                if view.shape() != packed_shape || !rows.is_multiple_of(4) {
                    return Err(EngineError::tensor(
                        self.path,
                        name,
                        format!(
                            "expected packed U8 {packed_shape:?} (out/4, in), found {:?}",
                            view.shape()
                        ),
                    ));
                }
                let codes = unpack_hf_codes(view.data(), rows, cols)
                    .map_err(|m| EngineError::tensor(self.path, name, m))?;
                self.used.push(name.to_string());
                let scale = self.scale(name)?;
                let alpha = match self.rule {
                    WeightRule::PackedDivide => 1.0 / scale,
                    _ => scale,
                };
                (codes, alpha)
            }
            (WeightRule::OfflineMultiply, false) => {
                self.expect_shape(name, &view, rows, cols)?;
                let values = self.floats(name, rows * cols)?;
                let (codes, magnitude) =
                    ternary_values(&values).map_err(|m| EngineError::tensor(self.path, name, m))?;
                (codes, self.scale(name)? * magnitude)
            }
            (WeightRule::OnlineMaster, false) => {
                self.expect_shape(name, &view, rows, cols)?;
                let values = self.floats(name, rows * cols)?;
                absmean_round_half_even(&values)
            }
            (rule, _) => {
                return Err(EngineError::tensor(
                    self.path,
                    name,
                    format!(
                        "found {:?} {:?}; {rule:?} checkpoints store {}",
                        view.dtype(),
                        view.shape(),
                        match rule {
                            WeightRule::OnlineMaster => "float master weights [out, in]",
                            _ => "packed U8 [out/4, in]",
                        }
                    ),
                ))
            }
        };
        if !(alpha > 0.0 && alpha.is_finite()) {
            return Err(EngineError::tensor(
                self.path,
                name,
                format!("the weight scale gives alpha {alpha}, expected positive and finite"),
            ));
        }
        let w = TernaryWeights::from_codes(rows, cols, alpha, codes)
            .map_err(|e| EngineError::tensor(self.path, name, e.to_string()))?;
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

/// HF's packed `[out/4, in]` bytes of ternary `codes` `[out, in]` (the inverse of
/// [`unpack_hf_codes`]): row `r` goes to field `r / (out/4)` of packed row `r % (out/4)`.
pub fn pack_hf_codes(codes: &[i8], rows: usize, cols: usize) -> Vec<u8> {
    let p = rows / 4;
    let mut packed = vec![0u8; p * cols];
    for r in 0..rows {
        for k in 0..cols {
            packed[(r % p) * cols + k] |= ((codes[r * cols + k] + 1) as u8) << (2 * (r / p));
        }
    }
    packed
}

/// The `weight_scale` of a tensor of scale `alpha`: `1 / alpha` (the scale divides), nudged by
/// an ulp where that makes the reader's `1 / weight_scale` give `alpha` back exactly.
fn weight_scale(alpha: f32) -> f32 {
    let s = 1.0 / alpha;
    [
        s,
        f32::from_bits(s.to_bits() + 1),
        f32::from_bits(s.to_bits() - 1),
    ]
    .into_iter()
    .find(|&c| 1.0 / c == alpha)
    .unwrap_or(s)
}

/// Writes `weights` into `dir` in the layout transformers' `BitNetForCausalLM` loads (that of
/// microsoft/bitnet-b1.58-2B-4T): `config.json` with `quantization_config`, `model.safetensors`
/// with packed U8 `[out/4, in]` projections and their `weight_scale`, norms and embeddings at
/// f32, and the tokenizer files when given. BitNet b1.58 at 8-bit activations only: the other
/// variants need a modeling file of their own.
pub fn write_hf_bitnet(
    weights: &Weights,
    tokenizer_json: Option<&str>,
    chat_template: Option<&str>,
    dir: &Path,
) -> Result<()> {
    let c = &weights.config;
    if let Some(p) = weights
        .layers
        .iter()
        .flat_map(|l| hbit_model::Proj::ALL.map(|p| l.projection(p)))
        .find(|p| !p.weight.rows().is_multiple_of(4))
    {
        return Err(EngineError::Input(format!(
            "HF export: a projection of {} rows does not pack four rows a byte",
            p.weight.rows()
        )));
    }
    let remote = needs_remote_code(c);
    let config = if remote {
        remote_code_config(c)
    } else {
        bitnet_config(c)
    };
    let f32_bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let matrix = |m: &FloatMatrix| f32_bytes(&m.to_f32());
    use hbit_model::tensors::{
        layer_norm, proj_weight, ATTN_SUB_NORM, EMBED_TOKENS, FFN_SUB_NORM, FINAL_NORM, INPUT_NORM,
        LM_HEAD, POST_ATTENTION_NORM,
    };
    let mut blobs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![(
        EMBED_TOKENS.into(),
        Dtype::F32,
        vec![c.vocab_size, c.hidden_size],
        matrix(&weights.embed_tokens),
    )];
    blobs.push((
        FINAL_NORM.into(),
        Dtype::F32,
        vec![c.hidden_size],
        f32_bytes(&weights.norm),
    ));
    if let Some(head) = &weights.lm_head {
        blobs.push((
            LM_HEAD.into(),
            Dtype::F32,
            vec![c.vocab_size, c.hidden_size],
            matrix(head),
        ));
    }
    for (l, layer) in weights.layers.iter().enumerate() {
        for (key, v) in [
            (INPUT_NORM, &layer.input_layernorm),
            (ATTN_SUB_NORM, &layer.attn_sub_norm),
            (POST_ATTENTION_NORM, &layer.post_attention_layernorm),
            (FFN_SUB_NORM, &layer.ffn_sub_norm),
        ] {
            blobs.push((layer_norm(l, key), Dtype::F32, vec![v.len()], f32_bytes(v)));
        }
        for p in hbit_model::Proj::ALL {
            let t = layer.projection(p).weight.unpack();
            let name = proj_weight(l, p);
            let packed = pack_hf_codes(&t.codes, t.rows, t.cols);
            blobs.push((name.clone(), Dtype::U8, vec![t.rows / 4, t.cols], packed));
            let scale = weight_scale(t.alpha).to_le_bytes().to_vec();
            blobs.push((format!("{name}_scale"), Dtype::F32, vec![1], scale));
        }
    }
    write_export_dir(dir, &config, &blobs, tokenizer_json, chat_template, remote)
}

/// A training checkpoint's latent (float) weights in the HF layout of hbit's remote-code model
/// (`weights: latent`): transformers loads the model and can train on, with the paper's STE
/// forward and backward; hbit reads the directory back as a checkpoint (to pack, or to train).
pub fn write_hf_latent(
    config: &ModelConfig,
    tensors: &HashMap<String, Vec<f32>>,
    tokenizer_json: Option<&str>,
    chat_template: Option<&str>,
    dir: &Path,
) -> Result<()> {
    let mut json = remote_code_config(config);
    json["hbit_quantization"]["weights"] = "latent".into();
    let mut blobs = Vec::new();
    for (name, shape) in hbit_model::parameter_shapes(config) {
        let values = tensors.get(&name).ok_or_else(|| {
            EngineError::Input(format!("HF export: the checkpoint has no tensor {name}"))
        })?;
        let bytes = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        blobs.push((name, Dtype::F32, shape, bytes));
    }
    write_export_dir(dir, &json, &blobs, tokenizer_json, chat_template, true)
}

/// One tensor of an export: name, dtype, shape, little-endian bytes.
type Blob = (String, Dtype, Vec<usize>, Vec<u8>);

/// Writes an export directory whole or not at all: a temporary sibling, renamed into place
/// (an earlier export there, checked to hold only export files, is replaced).
fn write_export_dir(
    dir: &Path,
    config: &Value,
    blobs: &[Blob],
    tokenizer_json: Option<&str>,
    chat_template: Option<&str>,
    remote: bool,
) -> Result<()> {
    let views: Vec<(String, safetensors::tensor::TensorView)> = blobs
        .iter()
        .map(|(n, d, shape, b)| {
            safetensors::tensor::TensorView::new(*d, shape.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| EngineError::Input(format!("HF export: tensor {n}: {e}")))
        })
        .collect::<Result<_>>()?;
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .ok_or_else(|| {
            EngineError::Input(format!(
                "HF export: {} names no directory to create (give a new directory's path)",
                dir.display()
            ))
        })?;
    refuse_foreign_files(dir)?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| EngineError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| EngineError::io(&tmp, e))?;
    let result = (|| -> Result<()> {
        let write = |name: &str, bytes: &[u8]| -> Result<()> {
            let path = tmp.join(name);
            std::fs::write(&path, bytes).map_err(|e| EngineError::io(&path, e))?;
            sync(&path)
        };
        let config = serde_json::to_string_pretty(config).unwrap_or_default();
        write(CONFIG_FILE, config.as_bytes())?;
        let model = tmp.join(MODEL_FILE);
        safetensors::serialize_to_file(views, None, &model)
            .map_err(|e| EngineError::format(&model, format!("writing safetensors: {e}")))?;
        crate::format::usual_file_mode(&model).map_err(|e| EngineError::io(&model, e))?;
        sync(&model)?;
        if let Some(t) = tokenizer_json {
            write(TOKENIZER_FILE, t.as_bytes())?;
        }
        if let Some(t) = chat_template {
            let cfg = serde_json::json!({ "chat_template": t });
            write(TOKENIZER_CONFIG_FILE, cfg.to_string().as_bytes())?;
        }
        if remote {
            write(REMOTE_CONFIG_FILE, REMOTE_CONFIG_SOURCE.as_bytes())?;
            write(REMOTE_MODELING_FILE, REMOTE_MODELING_SOURCE.as_bytes())?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // An earlier export (checked to hold only the files written here) moves aside, the new
    // directory takes its name, then the old one goes: `dir` always holds a whole export.
    sync(&tmp)?;
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let had_old = dir.exists();
    if had_old {
        std::fs::rename(dir, &old).map_err(|e| EngineError::io(dir, e))?;
    }
    if let Err(e) = std::fs::rename(&tmp, dir) {
        // Put the earlier export back rather than leave no export at all.
        if had_old {
            let _ = std::fs::rename(&old, dir);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(EngineError::io(dir, e));
    }
    sync(parent)?;
    if had_old {
        std::fs::remove_dir_all(&old).map_err(|e| EngineError::io(&old, e))?;
    }
    Ok(())
}

/// Flushes a file or directory to the disk (a rename is durable once its directory is).
fn sync(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| EngineError::io(path, e))
}

/// The files an HF export writes.
const EXPORT_FILES: [&str; 6] = [
    CONFIG_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    TOKENIZER_CONFIG_FILE,
    REMOTE_CONFIG_FILE,
    REMOTE_MODELING_FILE,
];

/// transformers' `model_type` of hbit's remote-code models.
pub use hbit_model::config::HF_MODEL_TYPE as REMOTE_MODEL_TYPE;
const REMOTE_CONFIG_FILE: &str = "configuration_hbit_bitnet.py";
const REMOTE_MODELING_FILE: &str = "modeling_hbit_bitnet.py";
const REMOTE_CONFIG_SOURCE: &str =
    include_str!("../../../python/hbit_bitnet/configuration_hbit_bitnet.py");
const REMOTE_MODELING_SOURCE: &str =
    include_str!("../../../python/hbit_bitnet/modeling_hbit_bitnet.py");

/// Whether transformers' own `BitNetForCausalLM` computes this model: BitNet b1.58 at 8-bit
/// activations only. The others (a Hadamard, 4-bit activations, top-K) need hbit's modeling
/// file.
pub fn needs_remote_code(c: &ModelConfig) -> bool {
    c.variant != Variant::BitnetB158 || c.activation_bits != hbit_kernels::ActBits::Int8
}

/// The hyper-parameters both layouts share.
fn architecture_fields(c: &ModelConfig) -> serde_json::Map<String, Value> {
    let v = serde_json::json!({
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "hidden_act": c.hidden_act.name(),
        "tie_word_embeddings": c.tie_word_embeddings,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "torch_dtype": "float32",
    });
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// transformers' BitNet `config.json` (microsoft/bitnet-b1.58-2B-4T's).
fn bitnet_config(c: &ModelConfig) -> Value {
    let mut m = architecture_fields(c);
    m.insert(
        "architectures".into(),
        serde_json::json!(["BitNetForCausalLM"]),
    );
    m.insert("model_type".into(), "bitnet".into());
    m.insert(
        "quantization_config".into(),
        serde_json::json!({
            "quant_method": "bitnet",
            "linear_class": "bitlinear",
            "quantization_mode": "offline",
        }),
    );
    Value::Object(m)
}

/// The `config.json` of hbit's remote-code model (`python/hbit_bitnet/`): the same weights
/// layout, how each projection quantizes its input under `hbit_quantization`, and the
/// `auto_map` that lets `AutoModelForCausalLM` find the modeling file.
fn remote_code_config(c: &ModelConfig) -> Value {
    let mut m = architecture_fields(c);
    m.insert(
        "architectures".into(),
        serde_json::json!(["HbitBitnetForCausalLM"]),
    );
    m.insert("model_type".into(), REMOTE_MODEL_TYPE.into());
    m.insert(
        "auto_map".into(),
        serde_json::json!({
            "AutoConfig": "configuration_hbit_bitnet.HbitBitnetConfig",
            "AutoModelForCausalLM": "modeling_hbit_bitnet.HbitBitnetForCausalLM",
        }),
    );
    let q = c.to_file().quantization;
    m.insert(
        "hbit_quantization".into(),
        serde_json::json!({
            "variant": q.variant,
            "activation_bits": q.activation_bits,
            "hadamard": q.hadamard,
            "hadamard_block": q.hadamard_block,
            "topk_keep": q.topk_keep,
            "weights": "packed",
        }),
    );
    Value::Object(m)
}

/// Refuses an output path that exists and holds anything but an earlier export's files, so an
/// export never deletes what it did not write.
fn refuse_foreign_files(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    if !dir.is_dir() {
        return Err(EngineError::Input(format!(
            "HF export: {} exists and is not a directory",
            dir.display()
        )));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| EngineError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| EngineError::io(dir, e))?;
        let name = entry.file_name();
        if !EXPORT_FILES.iter().any(|f| name == *f) {
            return Err(EngineError::Input(format!(
                "HF export: {} holds {:?}, which an export does not write; choose a new or \
                 empty directory",
                dir.display(),
                name
            )));
        }
    }
    Ok(())
}
