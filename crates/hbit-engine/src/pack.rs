//! `hbit pack` and direct loading of checkpoint directories: picks the source layout (a training
//! checkpoint of latent weights, [`crate::checkpoint`], or microsoft/bitnet-b1.58-2B-4T's,
//! [`crate::hf_bitnet`]), quantizes it and writes the packed model file ([`crate::format`]).

use std::path::Path;

use hbit_model::files::{MODEL_FILE, TOKENIZER_CONFIG_FILE};

use crate::checkpoint::{checked_latent, read_checkpoint};
use crate::error::{EngineError, Result};
use crate::format::write_packed;
use crate::gguf_model::{is_gguf, read_gguf_model};
use crate::hf_bitnet::{is_hf_bitnet, read_hf_bitnet};
use crate::weights::{Int4Layout, Weights};

/// Weights and tokenizer text of a checkpoint directory: a training checkpoint (latent
/// weights, quantized here as training's forward does) or one in the layout of
/// microsoft/bitnet-b1.58-2B-4T ([`crate::hf_bitnet`]).
pub fn load_checkpoint_dir(dir: &Path, half_embeddings: bool) -> Result<(Weights, Option<String>)> {
    if is_hf_bitnet(dir) {
        return read_hf_bitnet(dir, half_embeddings);
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

/// `hbit pack`: quantizes a checkpoint directory ([`load_checkpoint_dir`]) or reads a GGUF
/// BitNet model ([`crate::gguf_model`]) and writes the packed model file, projections with INT4 inputs in `int4_layout`, with `chat_template` or
/// else the checkpoint's own ([`read_chat_template`]). Returns the packed weights.
pub fn pack_checkpoint(
    dir: &Path,
    out: &Path,
    half_embeddings: bool,
    int4_layout: Int4Layout,
    chat_template: Option<String>,
) -> Result<Weights> {
    let (weights, tokenizer, template) = match is_gguf(dir) {
        true => {
            let m = read_gguf_model(dir, half_embeddings)?;
            (
                m.weights,
                m.tokenizer_json,
                chat_template.or(m.chat_template),
            )
        }
        false => {
            let (weights, tokenizer) = load_checkpoint_dir(dir, half_embeddings)?;
            // The checkpoint's template is read only when none is given.
            let template = match chat_template {
                Some(t) => Some(t),
                None => read_chat_template(dir)?,
            };
            (weights, tokenizer, template)
        }
    };
    let weights = weights.with_int4_layout(int4_layout);
    write_packed(out, &weights, tokenizer.as_deref(), template.as_deref())?;
    Ok(weights)
}
