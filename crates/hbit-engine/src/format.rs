//! The packed inference model file (`hbit pack`, DESIGN.md §3), version 1.
//!
//! One file, a [safetensors](https://github.com/huggingface/safetensors) container, so any
//! safetensors reader can list it. Loading ([`LoadMode`]) reads it into private memory (the
//! default, faster to decode from) or memory-maps it, and uses the weights in place either way
//! (safetensors orders tensors by dtype alignment, so f32 and f16 data are naturally aligned).
//!
//! Header metadata (`__metadata__`, strings):
//! * `format` = `hbit-packed`, `format_version` = `1`;
//! * `config` — the model's `config.json` (variant, activation bits, architecture);
//! * `tokenizer` — the HF `tokenizer.json`, when the checkpoint had one.
//!
//! Tensors (HF names, DESIGN.md §3):
//! * `model.layers.N.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj}.weight` — U8, ternary
//!   codes at **2 bits per weight** in the kernel layout of the projection's input width
//!   (`hbit_kernels::pack`): INT8 inputs → row layout `[rows, ceil(in/256)·64]`; INT4 inputs →
//!   lookup-table layout `[ceil(rows/16), ceil(in/256)·256/8·32]`. Padding weights are zero.
//! * `….weight_scale` — F32 `[1]`: the absmean scale alpha; the weight is `alpha · code`
//!   (multiplied, eq. 2).
//! * norms (`…norm.weight`) — F32 `[n]`;
//! * `model.embed_tokens.weight` and, if untied, `lm_head.weight` — F16 or F32 `[V, H]`.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hbit_kernels::mapped::{map_read_only, read_into_memory};
use hbit_kernels::pack::{K_ALIGN, LUT_CHUNK_BYTES, LUT_CHUNK_COLS, LUT_ROW_BLOCK};
use hbit_kernels::{ActBits, LutPacked, PackedBytes, RowPacked};
use hbit_model::config::ConfigFile;
use hbit_model::{InputQuant, ModelConfig, Proj};
use safetensors::tensor::{Dtype, Metadata, TensorView};
use safetensors::SafeTensors;

use crate::checkpoint::check_finite;
use crate::error::{EngineError, Result};
use crate::weights::{FloatMatrix, TensorSource, TernaryMatrix, Weights};

pub const FORMAT_TAG: &str = "hbit-packed";
pub const FORMAT_VERSION: &str = "1";

/// A loaded packed model: weights (in the mapped file) and the tokenizer text.
pub struct PackedModel {
    pub weights: Weights,
    pub tokenizer_json: Option<String>,
    /// Size of the file on disk.
    pub file_bytes: u64,
}

/// `….weight` → `….weight_scale`.
pub fn scale_name(weight: &str) -> String {
    format!("{weight}_scale")
}

/// Shape `[a, b]` of the U8 tensor holding a projection's packed codes.
pub fn packed_shape(rows: usize, cols: usize, bits: ActBits) -> [usize; 2] {
    let padded = cols.div_ceil(K_ALIGN) * K_ALIGN;
    match bits {
        ActBits::Int8 => [rows, padded / 4],
        ActBits::Int4 => [
            rows.div_ceil(LUT_ROW_BLOCK),
            padded / LUT_CHUNK_COLS * LUT_CHUNK_BYTES,
        ],
    }
}

/// Writes `weights` (and the tokenizer text) to `path` atomically: a temporary file in the same
/// directory, renamed over `path` only once complete.
pub fn write_packed(path: &Path, weights: &Weights, tokenizer_json: Option<&str>) -> Result<()> {
    let mut metadata = HashMap::new();
    metadata.insert("format".to_string(), FORMAT_TAG.to_string());
    metadata.insert("format_version".to_string(), FORMAT_VERSION.to_string());
    metadata.insert("config".to_string(), weights.config.to_json());
    if let Some(t) = tokenizer_json {
        metadata.insert("tokenizer".to_string(), t.to_string());
    }
    let mut scales: Vec<(String, [u8; 4])> = Vec::new();
    let mut views: Vec<(String, TensorView)> = Vec::new();
    let mut norm_bytes: Vec<(String, Vec<u8>)> = Vec::new();
    for (l, layer) in weights.layers.iter().enumerate() {
        for norm in hbit_model::tensors::LAYER_NORMS {
            let values = match norm {
                "input_layernorm" => &layer.input_layernorm,
                "self_attn.attn_sub_norm" => &layer.attn_sub_norm,
                "post_attention_layernorm" => &layer.post_attention_layernorm,
                _ => &layer.ffn_sub_norm,
            };
            norm_bytes.push((
                hbit_model::tensors::layer_norm(l, norm),
                bytemuck::cast_slice(values).to_vec(),
            ));
        }
        for proj in Proj::ALL {
            let name = hbit_model::tensors::proj_weight(l, proj);
            scales.push((
                scale_name(&name),
                layer.projection(proj).weight.alpha().to_le_bytes(),
            ));
        }
    }
    norm_bytes.push((
        hbit_model::tensors::FINAL_NORM.to_string(),
        bytemuck::cast_slice(&weights.norm).to_vec(),
    ));
    let view_err = |name: &str, e: safetensors::SafeTensorError| {
        EngineError::tensor(path, name, format!("cannot serialize: {e}"))
    };
    for (name, bytes) in &norm_bytes {
        let view = TensorView::new(Dtype::F32, vec![bytes.len() / 4], bytes)
            .map_err(|e| view_err(name, e))?;
        views.push((name.clone(), view));
    }
    for (name, bytes) in &scales {
        let view = TensorView::new(Dtype::F32, vec![1], bytes).map_err(|e| view_err(name, e))?;
        views.push((name.clone(), view));
    }
    for (l, layer) in weights.layers.iter().enumerate() {
        for proj in Proj::ALL {
            let name = hbit_model::tensors::proj_weight(l, proj);
            let w = &layer.projection(proj).weight;
            let bits = weights.config.input_quant(proj).bits;
            let shape = packed_shape(w.rows(), w.cols(), bits).to_vec();
            let view =
                TensorView::new(Dtype::U8, shape, w.data()).map_err(|e| view_err(&name, e))?;
            views.push((name, view));
        }
    }
    let mut matrices = vec![(hbit_model::tensors::EMBED_TOKENS, &weights.embed_tokens)];
    if let Some(head) = &weights.lm_head {
        matrices.push((hbit_model::tensors::LM_HEAD, head));
    }
    for (name, m) in matrices {
        let (dtype, bytes): (Dtype, &[u8]) = match m.view() {
            hbit_kernels::FloatWeights::F32(v) => (Dtype::F32, bytemuck::cast_slice(v)),
            hbit_kernels::FloatWeights::F16(v) => (Dtype::F16, bytemuck::cast_slice(v)),
            hbit_kernels::FloatWeights::I8 { .. } => {
                return Err(EngineError::tensor(
                    path,
                    name,
                    "an 8-bit head is a load-time option and is not written to model files",
                ))
            }
        };
        let view =
            TensorView::new(dtype, vec![m.rows, m.cols], bytes).map_err(|e| view_err(name, e))?;
        views.push((name.to_string(), view));
    }
    let tmp = temporary_path(path);
    safetensors::serialize_to_file(views, Some(metadata), &tmp)
        .map_err(|e| EngineError::format(&tmp, format!("cannot write: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        EngineError::io(path, e)
    })
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".partial-{}", std::process::id()));
    path.with_file_name(name)
}

/// How a packed model's bytes come into memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadMode {
    /// Read into private memory (with transparent huge pages where granted): decode measured
    /// 4–30% faster than from a map on the development VM (ten comparisons) (`hbit bench e2e --load read,map`).
    #[default]
    Read,
    /// Map the file: no copy at start-up, pages shared with the page cache and other processes.
    Map,
}

impl LoadMode {
    /// Environment variable that picks the mode of commands without a `--load` flag.
    pub const ENV: &'static str = "HBIT_LOAD";

    /// `read` or `map`.
    pub fn parse(s: &str) -> Result<LoadMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "read" => Ok(LoadMode::Read),
            "map" | "mmap" => Ok(LoadMode::Map),
            other => Err(EngineError::Input(format!(
                "model load mode: expected read or map, found {other:?}"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LoadMode::Read => "read",
            LoadMode::Map => "map",
        }
    }

    /// The mode `HBIT_LOAD` names, else [`LoadMode::Read`].
    pub fn from_env() -> Result<LoadMode> {
        match std::env::var(Self::ENV) {
            Ok(v) => Self::parse(&v).map_err(|e| EngineError::Input(format!("{}: {e}", Self::ENV))),
            Err(_) => Ok(LoadMode::default()),
        }
    }
}

/// Loads ([`LoadMode::Read`]) and validates a packed model: format tag and version, config,
/// every tensor's presence, dtype and shape, no extra tensors, valid ternary codes.
pub fn load_packed(path: &Path) -> Result<PackedModel> {
    load_packed_with(path, LoadMode::Read)
}

/// [`load_packed`] with an explicit [`LoadMode`].
pub fn load_packed_with(path: &Path, mode: LoadMode) -> Result<PackedModel> {
    let file = File::open(path).map_err(|e| EngineError::io(path, e))?;
    let file_bytes = file.metadata().map_err(|e| EngineError::io(path, e))?.len();
    let map = match mode {
        LoadMode::Read => read_into_memory(&file),
        LoadMode::Map => map_read_only(&file),
    }
    .map_err(|e| EngineError::io(path, e))?;
    let (header_len, metadata) = SafeTensors::read_metadata(&map).map_err(|e| {
        EngineError::format(
            path,
            format!(
                "not a complete hbit packed model (safetensors header: {e}); re-run `hbit pack`"
            ),
        )
    })?;
    let meta = metadata.metadata().clone().unwrap_or_default();
    match meta.get("format").map(String::as_str) {
        Some(FORMAT_TAG) => {}
        other => {
            return Err(EngineError::format(
                path,
                format!("metadata `format`: expected \"{FORMAT_TAG}\", found {other:?} (a training checkpoint is packed with `hbit pack`)"),
            ))
        }
    }
    match meta.get("format_version").map(String::as_str) {
        Some(FORMAT_VERSION) => {}
        other => {
            return Err(EngineError::format(
                path,
                format!(
                    "metadata `format_version`: expected \"{FORMAT_VERSION}\", found {other:?}"
                ),
            ))
        }
    }
    let config_text = meta
        .get("config")
        .ok_or_else(|| EngineError::format(path, "metadata `config` is missing"))?;
    let config_file: ConfigFile = serde_json::from_str(config_text)
        .map_err(|e| EngineError::format(path, format!("metadata `config`: {e}")))?;
    let config = ModelConfig::from_file(&config_file)
        .map_err(|e| EngineError::format(path, format!("metadata `config`: {e}")))?;
    let buffer: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(map);
    let mut source = MappedSource {
        path,
        buffer,
        data_start: 8 + header_len,
        metadata: &metadata,
        used: Vec::new(),
    };
    let weights = Weights::assemble(&config, &mut source)?;
    let mut names: Vec<String> = metadata.tensors().into_keys().collect();
    names.sort();
    if let Some(extra) = names.iter().find(|n| !source.used.contains(n)) {
        return Err(EngineError::tensor(
            path,
            extra,
            "unexpected tensor (not part of this config's model)",
        ));
    }
    Ok(PackedModel {
        weights,
        tokenizer_json: meta.get("tokenizer").cloned(),
        file_bytes,
    })
}

struct MappedSource<'a> {
    path: &'a Path,
    buffer: Arc<dyn AsRef<[u8]> + Send + Sync>,
    data_start: usize,
    metadata: &'a Metadata,
    used: Vec<String>,
}

impl MappedSource<'_> {
    fn bytes(&mut self, name: &str, dtype: Dtype, shape: &[usize]) -> Result<PackedBytes> {
        let info = self
            .metadata
            .info(name)
            .ok_or_else(|| EngineError::tensor(self.path, name, "missing"))?;
        if info.dtype != dtype {
            return Err(EngineError::tensor(
                self.path,
                name,
                format!("expected dtype {dtype:?}, found {:?}", info.dtype),
            ));
        }
        if info.shape != shape {
            return Err(EngineError::tensor(
                self.path,
                name,
                format!("expected shape {shape:?}, found {:?}", info.shape),
            ));
        }
        self.used.push(name.to_string());
        let (s, e) = info.data_offsets;
        PackedBytes::shared(
            self.buffer.clone(),
            self.data_start + s..self.data_start + e,
        )
        .map_err(|err| EngineError::tensor(self.path, name, err.to_string()))
    }

    fn f32s(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let bytes = self.bytes(name, Dtype::F32, shape)?;
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        check_finite(self.path, name, &values)?;
        Ok(values)
    }
}

impl TensorSource for MappedSource<'_> {
    fn norm(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        self.f32s(name, &[len])
    }

    fn ternary(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        quant: InputQuant,
    ) -> Result<TernaryMatrix> {
        let alpha = self.f32s(&scale_name(name), &[1])?[0];
        let shape = packed_shape(rows, cols, quant.bits);
        let bytes = self.bytes(name, Dtype::U8, &shape)?;
        let wrap =
            |e: hbit_kernels::KernelError| EngineError::tensor(self.path, name, e.to_string());
        Ok(match quant.bits {
            ActBits::Int8 => {
                TernaryMatrix::Row(RowPacked::from_parts(rows, cols, alpha, bytes).map_err(wrap)?)
            }
            ActBits::Int4 => {
                TernaryMatrix::Lut(LutPacked::from_parts(rows, cols, alpha, bytes).map_err(wrap)?)
            }
        })
    }

    fn float_matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<FloatMatrix> {
        let half = match self.metadata.info(name).map(|i| i.dtype) {
            Some(Dtype::F16) => true,
            Some(Dtype::F32) | None => false,
            Some(other) => {
                return Err(EngineError::tensor(
                    self.path,
                    name,
                    format!("expected dtype F16 or F32, found {other:?}"),
                ))
            }
        };
        let dtype = if half { Dtype::F16 } else { Dtype::F32 };
        let bytes = self.bytes(name, dtype, &[rows, cols])?;
        let m = FloatMatrix::mapped(rows, cols, bytes, half);
        match m.view() {
            hbit_kernels::FloatWeights::F32(v) => check_finite(self.path, name, v)?,
            hbit_kernels::FloatWeights::F16(v) => check_finite(self.path, name, v)?,
            hbit_kernels::FloatWeights::I8 { .. } => {}
        }
        Ok(m)
    }
}
