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
    CONFIG_FILE, MANIFEST_FILE, MODEL_FILE, OPTIMIZER_FILE, TOKENIZER_FILE, TRAINER_STATE_FILE,
};

type Result<T> = std::result::Result<T, TrainError>;

/// Writes `bytes` to `path` through a temporary sibling file and a rename, so `path` holds either
/// its old or its new content, never a partial one.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
    }
    let tmp = sibling(path, &format!("tmp-{}", std::process::id()));
    if let Err(e) = write_synced(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))?;
    // The rename is durable once the directory is: a power loss then keeps the new file.
    sync_dir(&parent_of(path))
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

    /// Writes the files into `dir` so that a crash at any moment leaves a complete checkpoint
    /// ([`recover`] finds it): earlier leftovers are recovered first; the files are staged in
    /// `<dir>.partial`, each synced, with files of the existing checkpoint that this write does
    /// not replace (e.g. `tokenizer.json`) carried over, and the manifest written last; then the
    /// existing `dir` moves to `<dir>.old`, the staged directory takes its name, and the old one
    /// goes, the parent directory synced after each rename.
    pub fn commit(self, dir: &Path) -> Result<()> {
        self.commit_until(dir, usize::MAX)
    }

    /// [`CheckpointFiles::commit`], stopping after `steps` of its steps as a crash would (tests
    /// inject faults with it).
    pub(crate) fn commit_until(self, dir: &Path, steps: usize) -> Result<()> {
        let mut step = 0usize;
        let mut next = || {
            step += 1;
            step <= steps
        };
        recover(dir)?;
        let staged = sibling(dir, "partial");
        let old = sibling(dir, "old");
        for stale in [&staged, &old] {
            if stale.exists() {
                std::fs::remove_dir_all(stale).map_err(|e| TrainError::io(stale, e))?;
            }
        }
        std::fs::create_dir_all(&staged).map_err(|e| TrainError::io(&staged, e))?;
        let mut manifest = serde_json::Map::new();
        for (name, bytes) in &self.files {
            if !next() {
                return Ok(());
            }
            write_synced(&staged.join(name), bytes)?;
            manifest.insert(
                name.clone(),
                entry(bytes.len() as u64, crc32fast::hash(bytes)),
            );
        }
        if dir.exists() {
            let entries = std::fs::read_dir(dir).map_err(|e| TrainError::io(dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| TrainError::io(dir, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let target = staged.join(&name);
                if entry.path().is_file() && !target.exists() && name != MANIFEST_FILE {
                    let bytes = std::fs::read(entry.path())
                        .map_err(|e| TrainError::io(&entry.path(), e))?;
                    write_synced(&target, &bytes)?;
                    // Logs that grow between saves (metrics.jsonl) are carried, not checked.
                    if CHECKPOINT_FILES.contains(&name.as_str()) {
                        manifest.insert(name, entry_of(&bytes));
                    }
                }
            }
        }
        if !next() {
            return Ok(());
        }
        let manifest = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| TrainError::Input(format!("checkpoint manifest: {e}")))?;
        write_synced(&staged.join(MANIFEST_FILE), &manifest)?;
        sync_dir(&staged)?;
        let parent = parent_of(dir);
        if dir.exists() {
            if !next() {
                return Ok(());
            }
            std::fs::rename(dir, &old).map_err(|e| TrainError::io(dir, e))?;
            sync_dir(&parent)?;
        }
        if !next() {
            return Ok(());
        }
        std::fs::rename(&staged, dir).map_err(|e| TrainError::io(dir, e))?;
        sync_dir(&parent)?;
        if !next() {
            return Ok(());
        }
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
        }
        Ok(())
    }
}

/// The files that make a checkpoint, the ones a manifest vouches for when carried over.
const CHECKPOINT_FILES: [&str; 5] = [
    CONFIG_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    TRAINER_STATE_FILE,
    TOKENIZER_FILE,
];

fn entry(len: u64, crc: u32) -> serde_json::Value {
    serde_json::json!({"bytes": len, "crc32": crc})
}

fn entry_of(bytes: &[u8]) -> serde_json::Value {
    entry(bytes.len() as u64, crc32fast::hash(bytes))
}

/// Writes `bytes` to `path` and syncs them to the disk.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| TrainError::io(path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| TrainError::io(path, e))
}

/// Syncs a directory's entries (a rename is durable once its directory is synced).
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| TrainError::io(dir, e))
}

fn parent_of(dir: &Path) -> PathBuf {
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Whether `dir` holds a whole checkpoint: its manifest lists files that are all there with
/// their lengths and CRC-32s. Without a manifest (checkpoints from before manifests, or one
/// torn before its manifest was written) it counts as whole only if `legacy_ok` and its config
/// and weights are there.
fn is_complete(dir: &Path, legacy_ok: bool) -> bool {
    let Ok(text) = std::fs::read(dir.join(MANIFEST_FILE)) else {
        return legacy_ok && dir.join(CONFIG_FILE).is_file() && dir.join(MODEL_FILE).is_file();
    };
    let Ok(serde_json::Value::Object(files)) = serde_json::from_slice(&text) else {
        return false;
    };
    files.iter().all(|(name, want)| {
        std::fs::read(dir.join(name)).is_ok_and(|bytes| entry_of(&bytes) == *want)
    })
}

/// Checks every file `dir`'s manifest lists against its recorded length and CRC-32 (`hbit
/// verify`); returns the files checked, or an error naming the first that differs.
pub fn check_manifest(dir: &Path) -> Result<Vec<String>> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            TrainError::Input(format!(
                "{}: no {MANIFEST_FILE}, so nothing records its files' checksums (checkpoints \
                 saved by hbit since manifests were added have one)",
                dir.display()
            ))
        } else {
            TrainError::io(&path, e)
        }
    })?;
    let files = match serde_json::from_slice(&text) {
        Ok(serde_json::Value::Object(files)) => files,
        _ => {
            return Err(TrainError::Input(format!(
                "{}: not a JSON object of file entries",
                path.display()
            )))
        }
    };
    let mut names = Vec::new();
    for (name, want) in &files {
        if name.contains(['/', '\\']) || name == ".." || name.is_empty() {
            return Err(TrainError::Input(format!(
                "{}: entry {name:?} is not a file name in the checkpoint directory",
                path.display()
            )));
        }
        let file = dir.join(name);
        let bytes = std::fs::read(&file).map_err(|e| TrainError::io(&file, e))?;
        let found = entry_of(&bytes);
        if found != *want {
            return Err(TrainError::Input(format!(
                "{}: content differs from {MANIFEST_FILE}: expected {want}, found {found}; the \
                 file is corrupt",
                file.display()
            )));
        }
        names.push(name.clone());
    }
    Ok(names)
}

/// Makes `dir` a whole checkpoint again after a crash in [`CheckpointFiles::commit`]: when
/// `dir` is missing or torn, the newest whole copy (`<dir>.partial` if its manifest checks out,
/// else `<dir>.old`) takes its place, and stale copies beside a whole `dir` are removed.
/// Returns which copy was restored; an error when `dir` is there but torn and no whole copy is
/// left (when no save ever finished, the halves of the first are removed).
pub fn recover(dir: &Path) -> Result<Option<&'static str>> {
    let staged = sibling(dir, "partial");
    let old = sibling(dir, "old");
    if !staged.exists() && !old.exists() {
        return Ok(None);
    }
    if dir.exists() && is_complete(dir, true) {
        for stale in [&staged, &old] {
            if stale.exists() {
                std::fs::remove_dir_all(stale).map_err(|e| TrainError::io(stale, e))?;
            }
        }
        return Ok(None);
    }
    let found = [(&staged, "partial", false), (&old, "old", true)]
        .into_iter()
        .find(|(copy, _, legacy_ok)| copy.exists() && is_complete(copy, *legacy_ok));
    let Some((copy, which, _)) = found else {
        if !dir.exists() {
            // No save ever finished: the copies are halves of a first save, worth nothing.
            for stale in [&staged, &old] {
                if stale.exists() {
                    std::fs::remove_dir_all(stale).map_err(|e| TrainError::io(stale, e))?;
                }
            }
            return Ok(None);
        }
        return Err(TrainError::Input(format!(
            "{}: the checkpoint is torn and neither {} nor {} holds a whole copy",
            dir.display(),
            staged.display(),
            old.display()
        )));
    };
    if dir.exists() {
        let torn = sibling(dir, "torn");
        if torn.exists() {
            std::fs::remove_dir_all(&torn).map_err(|e| TrainError::io(&torn, e))?;
        }
        std::fs::rename(dir, &torn).map_err(|e| TrainError::io(dir, e))?;
    }
    std::fs::rename(copy, dir).map_err(|e| TrainError::io(dir, e))?;
    sync_dir(&parent_of(dir))?;
    for stale in [&staged, &old] {
        if stale.exists() {
            std::fs::remove_dir_all(stale).map_err(|e| TrainError::io(stale, e))?;
        }
    }
    Ok(Some(which))
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

    fn files(version: u8) -> CheckpointFiles {
        let mut f = CheckpointFiles::default();
        f.add(CONFIG_FILE, vec![b'c', version]);
        f.add(MODEL_FILE, vec![version; 1000]);
        f.add(
            TRAINER_STATE_FILE,
            format!("{{\"step\": {version}}}").into_bytes(),
        );
        f
    }

    /// The files of `dir` other than the manifest, by name.
    fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name() != MANIFEST_FILE)
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (name, std::fs::read(e.path()).unwrap())
            })
            .collect();
        v.sort();
        v
    }

    /// A crash after any step of a commit leaves, after `recover`, either the whole previous
    /// checkpoint or the whole new one, never a mix, a missing one or a torn one; and the next
    /// commit works. Files the new write does not name (the tokenizer) survive either way.
    #[test]
    fn a_commit_stopped_after_any_step_recovers_whole() {
        let base = temp_dir("fault");
        let dir = base.join("run");
        let mut first = files(1);
        first.add(TOKENIZER_FILE, b"tok".to_vec());
        first.commit(&dir).unwrap();
        let before = contents(&dir);
        let mut after_full = None;
        // Steps: 3 files, the manifest, dir -> old, staged -> dir, old removed. Until `dir`
        // moves aside it is the whole checkpoint; from then on the staged copy, whole since its
        // manifest was written, is the newest.
        for steps in 0..=8 {
            let run = base.join(format!("run{steps}"));
            let mut first = files(1);
            first.add(TOKENIZER_FILE, b"tok".to_vec());
            first.commit(&run).unwrap();
            files(2).commit_until(&run, steps).unwrap();
            recover(&run).unwrap();
            let now = contents(&run);
            assert!(is_complete(&run, false), "after {steps} steps: torn");
            if steps < 5 {
                assert!(
                    now == before,
                    "after {steps} steps: the old checkpoint is back"
                );
            } else {
                let full = after_full.get_or_insert_with(|| now.clone());
                assert!(&now == full, "after {steps} steps: the new checkpoint");
                assert!(now.iter().any(|(n, b)| n == MODEL_FILE && b[0] == 2));
            }
            assert!(now.iter().any(|(n, b)| n == TOKENIZER_FILE && b == b"tok"));
            for leftover in ["partial", "old"] {
                assert!(
                    !sibling(&run, leftover).exists(),
                    "{leftover} after {steps}"
                );
            }
            files(3).commit(&run).unwrap();
            assert!(contents(&run)
                .iter()
                .any(|(n, b)| n == MODEL_FILE && b[0] == 3));
        }
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// The case a kill between the two renames left: only `<dir>.old` and `<dir>.partial`.
    /// A torn staged copy (a file cut short) is passed over for the old one; with no whole copy
    /// left, recovery says so and touches nothing.
    #[test]
    fn recovery_picks_the_newest_whole_copy() {
        let base = temp_dir("recover");
        let dir = base.join("run");
        files(1).commit(&dir).unwrap();
        files(2).commit_until(&dir, 5).unwrap(); // staged whole, dir moved to .old
        assert!(!dir.exists() && sibling(&dir, "old").exists());
        assert_eq!(recover(&dir).unwrap(), Some("partial"));
        assert_eq!(std::fs::read(dir.join(MODEL_FILE)).unwrap()[0], 2);

        files(3).commit_until(&dir, 5).unwrap();
        let staged_model = sibling(&dir, "partial").join(MODEL_FILE);
        std::fs::write(&staged_model, [3u8; 10]).unwrap(); // torn after the manifest
        assert_eq!(recover(&dir).unwrap(), Some("old"));
        assert_eq!(std::fs::read(dir.join(MODEL_FILE)).unwrap()[0], 2);

        // `dir` itself damaged (a file cut short) with only a torn copy beside it: refused, and
        // nothing is touched.
        files(4).commit_until(&dir, 3).unwrap();
        std::fs::write(dir.join(MODEL_FILE), [2u8; 3]).unwrap();
        let e = recover(&dir).unwrap_err().to_string();
        assert!(e.contains("torn") && e.contains("whole copy"), "{e}");
        assert!(dir.exists() && sibling(&dir, "partial").exists());
        // Logs that grow between saves do not tear a checkpoint.
        let logged = base.join("logged");
        files(1).commit(&logged).unwrap();
        std::fs::write(logged.join("metrics.jsonl"), "{}\n").unwrap();
        files(2).commit(&logged).unwrap();
        std::fs::write(logged.join("metrics.jsonl"), "{}\n{}\n").unwrap();
        assert!(is_complete(&logged, false));
        // A first save cut short: nothing to restore, the half is cleared, the next save works.
        let fresh = base.join("fresh");
        files(1).commit_until(&fresh, 2).unwrap();
        assert!(!fresh.exists() && sibling(&fresh, "partial").exists());
        assert_eq!(recover(&fresh).unwrap(), None);
        assert!(!sibling(&fresh, "partial").exists());
        files(1).commit(&fresh).unwrap();
        assert!(is_complete(&fresh, false));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
