//! Reading a training checkpoint directory (DESIGN.md §3: `config.json`, `model.safetensors` of
//! latent weights, optional `tokenizer.json`) without the training framework, for `hbit pack`.

use std::collections::HashMap;
use std::path::Path;

use half::{bf16, f16};
use hbit_model::ModelConfig;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::error::{EngineError, Result};
use crate::format::write_packed;
use crate::weights::Int4Layout;
use crate::weights::Weights;

pub use hbit_model::files::{CONFIG_FILE, MODEL_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE};

/// Tensors by name: shape and values (converted to f32).
pub type NamedTensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// A training checkpoint's contents.
pub struct LatentCheckpoint {
    pub config: ModelConfig,
    /// Latent weights by name: shape and values converted to f32.
    pub tensors: NamedTensors,
    pub tokenizer_json: Option<String>,
}

/// Reads `dir`; errors name the file and tensor.
pub fn read_checkpoint(dir: &Path) -> Result<LatentCheckpoint> {
    if !dir.is_dir() {
        return Err(EngineError::format(
            dir,
            "not a checkpoint directory (expected config.json and model.safetensors inside)",
        ));
    }
    let config = ModelConfig::load(&dir.join(CONFIG_FILE))?;
    let model_path = dir.join(MODEL_FILE);
    let tensors = read_f32_tensors(&model_path)?;
    let tok_path = dir.join(TOKENIZER_FILE);
    let tokenizer_json = match tok_path.exists() {
        true => {
            Some(std::fs::read_to_string(&tok_path).map_err(|e| EngineError::io(&tok_path, e))?)
        }
        false => None,
    };
    Ok(LatentCheckpoint {
        config,
        tensors,
        tokenizer_json,
    })
}

/// The values of a float tensor (F32, F16 or BF16) as f32; errors name `path` and `name`.
pub(crate) fn decode_floats(path: &Path, name: &str, view: &TensorView) -> Result<Vec<f32>> {
    let data = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(EngineError::tensor(
                path,
                name,
                format!("expected dtype F32, F16 or BF16, found {other:?}"),
            ))
        }
    })
}

/// A float whose NaN / infinity test reads its bits (no conversion to f32: a load-time scan of a
/// 657 MB f16 embedding converted each value through a feature-detecting call).
pub(crate) trait Finite: Copy {
    fn is_finite_value(self) -> bool;
}

impl Finite for f32 {
    fn is_finite_value(self) -> bool {
        self.is_finite()
    }
}

impl Finite for f16 {
    fn is_finite_value(self) -> bool {
        // Infinite or NaN exactly when all five exponent bits are set.
        self.to_bits() & 0x7c00 != 0x7c00
    }
}

/// Refuses NaN or infinite values, naming `path`, `name` and the first bad index.
pub(crate) fn check_finite<T: Finite>(path: &Path, name: &str, values: &[T]) -> Result<()> {
    match hbit_kernels::scan::first_where(values, |v: T| !v.is_finite_value()) {
        None => Ok(()),
        Some(i) => Err(EngineError::tensor(
            path,
            name,
            format!("non-finite value at flat index {i}"),
        )),
    }
}

/// Every tensor of a safetensors file with its shape, as f32 (f32, f16 and bf16 accepted).
pub fn read_f32_tensors(path: &Path) -> Result<NamedTensors> {
    let bytes = std::fs::read(path).map_err(|e| EngineError::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| EngineError::format(path, format!("not a valid safetensors file ({e})")))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let values = decode_floats(path, &name, &view)?;
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(out)
}

/// Weights and tokenizer text of a checkpoint directory: a training checkpoint (latent
/// weights, quantized here as training's forward does) or one in the layout of
/// microsoft/bitnet-b1.58-2B-4T ([`crate::hf_bitnet`]).
pub fn load_checkpoint_dir(dir: &Path, half_embeddings: bool) -> Result<(Weights, Option<String>)> {
    if crate::hf_bitnet::is_hf_bitnet(dir) {
        return crate::hf_bitnet::read_hf_bitnet(dir, half_embeddings);
    }
    let ckpt = read_checkpoint(dir)?;
    let mut tensors = ckpt.tensors;
    if ckpt.config.tie_word_embeddings {
        tensors.remove(hbit_model::tensors::LM_HEAD); // HF writes the tied head in some files
    }
    let model_path = dir.join(MODEL_FILE);
    let tensors = checked_latent(&ckpt.config, tensors, &model_path)?;
    let weights = Weights::from_latent(&ckpt.config, &tensors, half_embeddings, &model_path)?;
    Ok((weights, ckpt.tokenizer_json))
}

/// The chat template of a checkpoint directory: `tokenizer_config.json`'s `chat_template`, a
/// string or HF's list of named templates (the one named `default`). `None` when absent.
pub fn read_chat_template(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(TOKENIZER_CONFIG_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| EngineError::io(&path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| EngineError::format(&path, format!("invalid JSON: {e}")))?;
    match value.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(t)) => Ok(Some(t.clone())),
        Some(serde_json::Value::Array(named)) => Ok(named
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .map(str::to_string)),
        Some(_) => Err(EngineError::format(
            &path,
            "chat_template: expected a string or a list of {name, template}",
        )),
    }
}

/// `hbit pack`: quantizes a checkpoint directory ([`load_checkpoint_dir`]) and writes the
/// packed model file, projections with INT4 inputs in `int4_layout`, with `chat_template` or
/// else the checkpoint's own ([`read_chat_template`]). Returns the packed weights.
pub fn pack_checkpoint(
    dir: &Path,
    out: &Path,
    half_embeddings: bool,
    int4_layout: Int4Layout,
    chat_template: Option<String>,
) -> Result<Weights> {
    let (weights, tokenizer) = load_checkpoint_dir(dir, half_embeddings)?;
    let weights = weights.with_int4_layout(int4_layout);
    let template = match chat_template {
        Some(t) => Some(t),
        None => read_chat_template(dir)?,
    };
    write_packed(out, &weights, tokenizer.as_deref(), template.as_deref())?;
    Ok(weights)
}

/// Checks names and shapes against the config's model; returns the values by name.
pub fn checked_latent(
    config: &ModelConfig,
    mut tensors: NamedTensors,
    path: &Path,
) -> Result<HashMap<String, Vec<f32>>> {
    let mut out = HashMap::new();
    for (name, shape) in hbit_model::parameter_shapes(config) {
        let (found, values) = tensors
            .remove(&name)
            .ok_or_else(|| EngineError::tensor(path, &name, "missing"))?;
        if found != shape {
            return Err(EngineError::tensor(
                path,
                &name,
                format!("expected shape {shape:?}, found {found:?}"),
            ));
        }
        out.insert(name, values);
    }
    if let Some(extra) = tensors.keys().min() {
        return Err(EngineError::tensor(
            path,
            extra,
            "unexpected tensor (not part of this config's model)",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_are_found_by_index_in_any_chunk() {
        let path = Path::new("m.hbit");
        for bad in [0usize, 16_383, 16_384, 39_999] {
            for poison in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut v = vec![1.5f32; 40_000];
                v[bad] = poison;
                let e = check_finite(path, "t", &v).unwrap_err().to_string();
                assert!(
                    e.contains(&format!("flat index {bad}")) && e.contains("m.hbit"),
                    "{e}"
                );
                let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
                let e = check_finite(path, "t", &h).unwrap_err().to_string();
                assert!(e.contains(&format!("flat index {bad}")), "{e}");
            }
        }
        // The largest finite f16 and subnormals pass; values that overflow f16 do not.
        let h = [f16::MAX, f16::MIN, f16::from_bits(1), f16::from_f32(-0.0)];
        assert!(check_finite(path, "t", &h).is_ok());
        assert!(check_finite(path, "t", &[f16::from_f32(1e6)]).is_err());
        assert!(check_finite::<f32>(path, "t", &[]).is_ok());
    }
}
