//! Reading a training checkpoint directory (DESIGN.md §3: `config.json`, `model.safetensors` of
//! latent weights, optional `tokenizer.json`) without the training framework, for `hbit pack`.

use std::collections::HashMap;
use std::path::Path;

use hbit_model::files::{CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE};
use hbit_model::ModelConfig;

use crate::error::{EngineError, Result};
use crate::tensor_io::{read_f32_tensors, NamedTensors};

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
