//! Training checkpoints (DESIGN.md §3): a directory with `config.json`, `model.safetensors`
//! (latent f32 weights, `[out, in]`, HF names), optionally `tokenizer.json`, and for resuming
//! `optimizer.safetensors` and `trainer_state.json`.
//!
//! Writes never damage a good checkpoint: files are staged in a sibling directory and swapped in
//! with renames, so a crash leaves either the old or the new checkpoint complete.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::config::ModelConfig;
use crate::error::TrainError;
use crate::model::BitnetModel;

pub use hbit_model::files::{
    CONFIG_FILE, MODEL_FILE, OPTIMIZER_FILE, TOKENIZER_FILE, TRAINER_STATE_FILE,
};

type Result<T> = std::result::Result<T, TrainError>;

/// Writes `bytes` to `path` through a temporary sibling file and a rename, so `path` holds either
/// its old or its new content, never a partial one.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
    }
    let tmp = sibling(path, &format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// Serializes named tensors to safetensors bytes.
pub fn tensors_to_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let views = tensors.iter().map(|(n, t)| (n.as_str(), t));
    safetensors::serialize(views, None).map_err(|e| TrainError::Input(format!("safetensors: {e}")))
}

/// Reads every tensor of a safetensors file; a truncated or corrupt file is an error naming it.
pub fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| TrainError::Parse {
        path: path.to_path_buf(),
        message: format!("not a valid safetensors file ({e})"),
    })
}

/// Files to write into a checkpoint directory, staged then swapped in whole.
#[derive(Default)]
pub struct CheckpointFiles {
    files: Vec<(String, Vec<u8>)>,
}

impl CheckpointFiles {
    pub fn add(&mut self, name: &str, bytes: Vec<u8>) {
        self.files.push((name.to_string(), bytes));
    }

    /// The model's `config.json` and `model.safetensors`.
    pub fn add_model(&mut self, model: &BitnetModel) -> Result<()> {
        self.add(CONFIG_FILE, model.config().to_json().into_bytes());
        let tensors: Vec<(String, Tensor)> = model
            .named_vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect();
        self.add(MODEL_FILE, tensors_to_bytes(&tensors)?);
        Ok(())
    }

    /// Writes the files into `dir` atomically: stage in `<dir>.partial`, move an existing `dir`
    /// aside, rename the staged directory into place, then delete the old one. Files of an
    /// existing checkpoint that this write does not replace (e.g. `tokenizer.json`) are carried
    /// over.
    pub fn commit(self, dir: &Path) -> Result<()> {
        let staged = sibling(dir, "partial");
        let old = sibling(dir, "old");
        for stale in [&staged, &old] {
            if stale.exists() {
                std::fs::remove_dir_all(stale).map_err(|e| TrainError::io(stale, e))?;
            }
        }
        std::fs::create_dir_all(&staged).map_err(|e| TrainError::io(&staged, e))?;
        for (name, bytes) in &self.files {
            let path = staged.join(name);
            std::fs::write(&path, bytes).map_err(|e| TrainError::io(&path, e))?;
        }
        if dir.exists() {
            let entries = std::fs::read_dir(dir).map_err(|e| TrainError::io(dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| TrainError::io(dir, e))?;
                let target = staged.join(entry.file_name());
                if entry.path().is_file() && !target.exists() {
                    std::fs::copy(entry.path(), &target).map_err(|e| TrainError::io(&target, e))?;
                }
            }
            std::fs::rename(dir, &old).map_err(|e| TrainError::io(dir, e))?;
        }
        std::fs::rename(&staged, dir).map_err(|e| TrainError::io(dir, e))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
        }
        Ok(())
    }
}

/// `<dir>.<suffix>` next to `dir`.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "checkpoint".into());
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}

/// Writes a model checkpoint (config + weights, plus a tokenizer file if given).
pub fn save_model(dir: &Path, model: &BitnetModel, tokenizer: Option<&Path>) -> Result<()> {
    let mut files = CheckpointFiles::default();
    files.add_model(model)?;
    if let Some(tok) = tokenizer {
        let bytes = std::fs::read(tok).map_err(|e| TrainError::io(tok, e))?;
        files.add(TOKENIZER_FILE, bytes);
    }
    files.commit(dir)
}

/// Loads a checkpoint directory's config and weights, validating both.
pub fn load_model(dir: &Path) -> Result<BitnetModel> {
    if !dir.is_dir() {
        return Err(TrainError::Input(format!(
            "{}: not a checkpoint directory (expected {CONFIG_FILE} and {MODEL_FILE} inside; \
             create one with `hbit init`)",
            dir.display()
        )));
    }
    let config = ModelConfig::load(&dir.join(CONFIG_FILE))?;
    let weights = dir.join(MODEL_FILE);
    let tensors = load_tensors(&weights)?;
    BitnetModel::from_tensors(&config, tensors, &weights)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{preset, Variant};
    use hbit_kernels::quant::ActBits;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hbit-ckpt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn save_load_round_trip_is_exact() {
        let dir = temp_dir("roundtrip");
        let cfg = preset("micro", Variant::BitnetV2, ActBits::Int8).unwrap();
        let model = BitnetModel::init(&cfg, 7).unwrap();
        save_model(&dir, &model, None).unwrap();
        let back = load_model(&dir).unwrap();
        assert_eq!(back.config(), model.config());
        for ((n1, v1), (n2, v2)) in model.named_vars().iter().zip(back.named_vars().iter()) {
            assert_eq!(n1, n2);
            let a: Vec<f32> = v1.flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = v2.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(a, b, "{n1}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_or_mismatched_checkpoints_name_file_and_tensor_and_leave_files_intact() {
        let dir = temp_dir("corrupt");
        let cfg = preset("micro", Variant::BitnetV2, ActBits::Int8).unwrap();
        let model = BitnetModel::init(&cfg, 1).unwrap();
        save_model(&dir, &model, None).unwrap();
        let weights = dir.join(MODEL_FILE);
        let good = std::fs::read(&weights).unwrap();

        // Truncated weights file.
        std::fs::write(&weights, &good[..good.len() / 2]).unwrap();
        let err = load_model(&dir).unwrap_err().to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("safetensors"),
            "{err}"
        );
        std::fs::write(&weights, &good).unwrap();

        // Config that disagrees with the weights: the named tensor and both shapes.
        let mut other = cfg.to_file();
        other.intermediate_size = 384;
        std::fs::write(
            dir.join(CONFIG_FILE),
            serde_json::to_string(&other).unwrap(),
        )
        .unwrap();
        let err = load_model(&dir).unwrap_err().to_string();
        assert!(
            err.contains("model.layers.0.mlp.gate_proj.weight")
                && err.contains("[384, 64]")
                && err.contains("[192, 64]"),
            "{err}"
        );
        // A broken config field names the file and the field.
        other.intermediate_size = 192;
        other.quantization.activation_bits = 3;
        std::fs::write(
            dir.join(CONFIG_FILE),
            serde_json::to_string(&other).unwrap(),
        )
        .unwrap();
        let err = load_model(&dir).unwrap_err().to_string();
        assert!(
            err.contains("config.json") && err.contains("quantization.activation_bits"),
            "{err}"
        );
        // A weight file with a missing tensor.
        let mut tensors = load_tensors(&weights).unwrap();
        tensors.remove("model.norm.weight");
        let err = BitnetModel::from_tensors(&cfg, tensors, &weights)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.norm.weight") && err.contains("missing"),
            "{err}"
        );

        // Saving into a directory whose staging area cannot be created fails before touching
        // the existing checkpoint.
        std::fs::write(dir.join(CONFIG_FILE), cfg.to_json()).unwrap();
        let blocker = sibling(&dir, "partial");
        std::fs::write(&blocker, b"not a directory").unwrap();
        let bad_tok = dir.join("no-such-tokenizer.json");
        assert!(save_model(&dir, &model, Some(&bad_tok)).is_err());
        assert_eq!(std::fs::read(&weights).unwrap(), good);
        assert!(load_model(&dir).is_ok());
        std::fs::remove_file(&blocker).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
