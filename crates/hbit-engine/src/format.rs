//! The packed inference model file (`hbit pack`, DESIGN.md §3), version 2 (version 1 files
//! still load).
//!
//! One file, a [safetensors](https://github.com/huggingface/safetensors) container, so any
//! safetensors reader can list it. Loading ([`LoadMode`]) reads it into private memory (the
//! default, faster to decode from) or memory-maps it, and uses the weights in place either way
//! (safetensors orders tensors by dtype alignment, so u64, f32 and f16 data are naturally
//! aligned; words that are not are copied).
//!
//! Header metadata (`__metadata__`, strings):
//! * `format` = `hbit-packed`, `format_version` = `2` (or `1`);
//! * `config` — the model's `config.json` (variant, activation bits, architecture);
//! * `int4_layout` — `pairs` or `triples`, the layout of the projections with INT4 inputs
//!   (present when the model has any; version 1 files are `pairs`);
//! * `checksum` — `xxh3-64:<hex>` of the metadata and tensor bytes ([`crate::checksum`]),
//!   checked on load; files packed before it existed load unchecked;
//! * `tokenizer` — the HF `tokenizer.json`, when the checkpoint had one;
//! * `chat_template` — the Jinja chat template (the checkpoint's `tokenizer_config.json`
//!   `chat_template`, or one given to `hbit pack --chat-template`), when there is one.
//!
//! Tensors (HF names, DESIGN.md §3):
//! * `model.layers.N.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj}.weight` — U8, ternary
//!   codes in the kernel layout of the projection's input width (`hbit_kernels::pack`):
//!   * INT8 inputs → row layout, 2 bits per weight, `[rows, ceil(in/256)·64]`;
//!   * INT4 inputs, `pairs` → lookup-table layout, 2 bits per weight,
//!     `[ceil(rows/16), ceil(in/256)·256/8·32]`;
//!   * INT4 inputs, `triples` → the folded indices of three weights each,
//!     `[ceil(rows/16), ceil(in/12)·32]`, with `….weight_signs` U64 `[ceil(rows/16),
//!     ceil(in/12)]` (one sign bit per three weights) and `….weight_sign_sums` I32
//!     `[ceil(rows/16)·16]` (each row's Σ of ±1 signs): 1.67 bits per weight.
//!
//!   Padding weights are zero.
//! * `….weight_scale` — F32 `[1]`: the absmean scale alpha; the weight is `alpha · code`
//!   (multiplied, eq. 2).
//! * norms (`…norm.weight`) — F32 `[n]`;
//! * `model.embed_tokens.weight` and, if untied, `lm_head.weight` — F16 or F32 `[V, H]`.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hbit_kernels::mapped::{map_read_only, read_into_memory};
use hbit_kernels::pack::{
    K_ALIGN, LUT_CHUNK_BYTES, LUT_CHUNK_COLS, LUT_ROW_BLOCK, TRIPLE_CHUNK_BYTES, TRIPLE_CHUNK_COLS,
};
use hbit_kernels::{ActBits, LutPacked, PackedBytes, RowPacked, TriplePacked};
use hbit_model::config::ConfigFile;
use hbit_model::{tensors, InputQuant, ModelConfig, Proj};
use safetensors::tensor::{Dtype, Metadata, TensorView};
use safetensors::SafeTensors;

use crate::checksum::{self, content_checksum, ChecksumStatus, CHECKSUM_KEY};
use crate::error::{EngineError, Result};
use crate::tensor_io::check_finite;
use crate::weights::{FloatMatrix, Int4Layout, TensorSource, TernaryMatrix, Weights};

pub const FORMAT_TAG: &str = "hbit-packed";
/// The version written; [`FORMAT_VERSION_PAIRS_ONLY`] files load too.
pub const FORMAT_VERSION: &str = "2";
/// The first version: INT4 projections always in the `pairs` layout, no `int4_layout` key.
pub const FORMAT_VERSION_PAIRS_ONLY: &str = "1";
/// Metadata key naming the INT4 projections' layout.
pub const INT4_LAYOUT_KEY: &str = "int4_layout";
/// Metadata key of the chat template.
pub const CHAT_TEMPLATE_KEY: &str = "chat_template";

/// A loaded packed model: weights (in the mapped file) and the tokenizer text.
pub struct PackedModel {
    pub weights: Weights,
    pub tokenizer_json: Option<String>,
    pub chat_template: Option<String>,
    /// Size of the file on disk.
    pub file_bytes: u64,
    /// Whether the content checksum was checked and found equal.
    pub checksum: ChecksumStatus,
}

/// `….weight` → `….weight_scale`.
pub fn scale_name(weight: &str) -> String {
    format!("{weight}_scale")
}

/// `….weight` → `….weight_signs` (three-weight layout).
pub fn signs_name(weight: &str) -> String {
    format!("{weight}_signs")
}

/// `….weight` → `….weight_sign_sums` (three-weight layout).
pub fn sign_sums_name(weight: &str) -> String {
    format!("{weight}_sign_sums")
}

/// Shape `[a, b]` of the U8 tensor holding a projection's packed codes (for INT4 inputs, in
/// `layout`).
pub fn packed_shape(rows: usize, cols: usize, bits: ActBits, layout: Int4Layout) -> [usize; 2] {
    let padded = cols.div_ceil(K_ALIGN) * K_ALIGN;
    let row_blocks = rows.div_ceil(LUT_ROW_BLOCK);
    match (bits, layout) {
        (ActBits::Int8, _) => [rows, padded / 4],
        (ActBits::Int4, Int4Layout::Pairs) => {
            [row_blocks, padded / LUT_CHUNK_COLS * LUT_CHUNK_BYTES]
        }
        (ActBits::Int4, Int4Layout::Triples) => [
            row_blocks,
            cols.div_ceil(TRIPLE_CHUNK_COLS) * TRIPLE_CHUNK_BYTES,
        ],
        (ActBits::Int4, Int4Layout::Rows) => [rows, padded / 4],
    }
}

/// The one layout of `weights`' INT4 projections (`None` when it has none).
fn int4_layout_of(path: &Path, weights: &Weights) -> Result<Option<Int4Layout>> {
    let mut found = None;
    for layer in &weights.layers {
        for proj in Proj::ALL {
            let p = layer.projection(proj);
            let layout = p.weight.int4_layout(p.quant.bits);
            match (found, layout) {
                (_, None) => {}
                (_, Some(Int4Layout::Rows)) => {
                    return Err(EngineError::format(
                        path,
                        "INT4 projections in the rows layout: that is a load-time choice; a model file holds pairs or triples",
                    ))
                }
                (None, Some(l)) => found = Some(l),
                (Some(a), Some(b)) if a != b => {
                    return Err(EngineError::format(
                        path,
                        "INT4 projections in both the pairs and the triples layout: a model \
                         file holds one",
                    ))
                }
                _ => {}
            }
        }
    }
    Ok(found)
}

/// Writes `weights` (and the tokenizer and chat template texts) to `path` atomically: a
/// temporary file in the same directory, renamed over `path` only once complete.
pub fn write_packed(
    path: &Path,
    weights: &Weights,
    tokenizer_json: Option<&str>,
    chat_template: Option<&str>,
) -> Result<()> {
    let mut metadata = HashMap::new();
    metadata.insert("format".to_string(), FORMAT_TAG.to_string());
    metadata.insert("format_version".to_string(), FORMAT_VERSION.to_string());
    metadata.insert("config".to_string(), weights.config.to_json());
    if let Some(layout) = int4_layout_of(path, weights)? {
        metadata.insert(INT4_LAYOUT_KEY.to_string(), layout.name().to_string());
    }
    if let Some(t) = tokenizer_json {
        metadata.insert("tokenizer".to_string(), t.to_string());
    }
    if let Some(t) = chat_template {
        metadata.insert(CHAT_TEMPLATE_KEY.to_string(), t.to_string());
    }
    let mut scales: Vec<(String, [u8; 4])> = Vec::new();
    let mut views: Vec<(String, TensorView)> = Vec::new();
    let mut norm_bytes: Vec<(String, Vec<u8>)> = Vec::new();
    for (l, layer) in weights.layers.iter().enumerate() {
        for norm in hbit_model::tensors::LAYER_NORMS {
            let values = match norm {
                tensors::INPUT_NORM => &layer.input_layernorm,
                tensors::ATTN_SUB_NORM => &layer.attn_sub_norm,
                tensors::POST_ATTENTION_NORM => &layer.post_attention_layernorm,
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
            let layout = w.int4_layout(bits).unwrap_or(Int4Layout::Pairs);
            let [a, b] = packed_shape(w.rows(), w.cols(), bits, layout);
            let mut tensor = |name: String, dtype, shape, bytes| -> Result<()> {
                let view = TensorView::new(dtype, shape, bytes).map_err(|e| view_err(&name, e))?;
                views.push((name, view));
                Ok(())
            };
            match w {
                TernaryMatrix::Row(m) => tensor(name, Dtype::U8, vec![a, b], m.data())?,
                TernaryMatrix::Lut(m) => tensor(name, Dtype::U8, vec![a, b], m.data())?,
                TernaryMatrix::Triple(m) => {
                    let signs = bytemuck::cast_slice(m.signs());
                    let sums = bytemuck::cast_slice(m.sign_sums());
                    tensor(signs_name(&name), Dtype::U64, vec![a, b / 32], signs)?;
                    tensor(sign_sums_name(&name), Dtype::I32, vec![16 * a], sums)?;
                    tensor(name, Dtype::U8, vec![a, b], m.indices())?;
                }
            }
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
            hbit_kernels::FloatWeights::I8 { .. } | hbit_kernels::FloatWeights::Block { .. } => {
                return Err(EngineError::tensor(
                    path,
                    name,
                    "a quantized head (8, 6 or 4 bits) is a load-time option and is not written to model files",
                ))
            }
        };
        let view =
            TensorView::new(dtype, vec![m.rows, m.cols], bytes).map_err(|e| view_err(name, e))?;
        views.push((name.to_string(), view));
    }
    let checksum = content_checksum(&metadata, views.iter().map(|(n, v)| (n.as_str(), v.data())));
    metadata.insert(CHECKSUM_KEY.to_string(), checksum);
    let tmp = temporary_path(path);
    let written = safetensors::serialize_to_file(views, Some(metadata), &tmp)
        .map_err(|e| EngineError::format(&tmp, format!("cannot write: {e}")))
        .and_then(|_| {
            // Synced before the rename, so a power loss never leaves a renamed empty file.
            usual_file_mode(&tmp)
                .and_then(|_| std::fs::File::open(&tmp))
                .and_then(|f| f.sync_all())
                .map_err(|e| EngineError::io(&tmp, e))
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        EngineError::io(path, e)
    })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)
        .and_then(|f| f.sync_all())
        .map_err(|e| EngineError::io(parent, e))
}

/// Gives a file safetensors wrote the mode `File::create` gives a new file in its directory
/// (0666 less the umask): safetensors writes through an owner-only (0600) temporary file, and a
/// model is shared like any other file (a server running as another user must read it).
pub(crate) fn usual_file_mode(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut probe = path.as_os_str().to_os_string();
        probe.push(".mode-probe");
        let probe = PathBuf::from(probe);
        let mode = std::fs::File::create(&probe).and_then(|f| f.metadata());
        let _ = std::fs::remove_file(&probe);
        std::fs::set_permissions(
            path,
            std::fs::Permissions::from_mode(mode?.permissions().mode()),
        )
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".partial-{}", std::process::id()));
    path.with_file_name(name)
}

/// How a packed model's bytes come into memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadMode {
    /// Read into private memory (with transparent huge pages where granted and not turned off):
    /// decode measured 4–30% faster than from a map on the AMD EPYC VM with huge pages (ten
    /// comparisons; `hbit bench e2e --load read,map`), alike without them on the Intel Xeon.
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

/// Loads ([`LoadMode::Read`]) and validates a packed model: content checksum, format tag and
/// version, config, every tensor's presence, dtype and shape, no extra tensors, valid ternary
/// codes.
pub fn load_packed(path: &Path) -> Result<PackedModel> {
    load_packed_with(path, LoadMode::Read)
}

/// [`load_packed`] with an explicit [`LoadMode`].
pub fn load_packed_with(path: &Path, mode: LoadMode) -> Result<PackedModel> {
    load_packed_opts(path, mode, Verify::Checksum)
}

/// Whether loading checks the content checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    Checksum,
    /// For a file known to be good (`--no-verify`): saves one pass over its bytes.
    Skip,
}

/// [`load_packed_with`], the checksum check optional.
pub fn load_packed_opts(path: &Path, mode: LoadMode, verify: Verify) -> Result<PackedModel> {
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
    let data_start = 8 + header_len;
    let checksum = match verify {
        Verify::Skip => ChecksumStatus::Skipped,
        Verify::Checksum => {
            let bytes: &[u8] = &map;
            let mut tensors = Vec::new();
            for (name, info) in metadata.tensors() {
                let (s, e) = info.data_offsets;
                let data = bytes.get(data_start + s..data_start + e).ok_or_else(|| {
                    EngineError::tensor(path, &name, "data offsets run past the end of the file")
                })?;
                tensors.push((name, data));
            }
            checksum::verify(path, &meta, tensors.iter().map(|(n, d)| (n.as_str(), *d)))?
        }
    };
    match meta.get("format").map(String::as_str) {
        Some(FORMAT_TAG) => {}
        other => {
            return Err(EngineError::format(
                path,
                format!("metadata `format`: expected \"{FORMAT_TAG}\", found {other:?} (a training checkpoint is packed with `hbit pack`)"),
            ))
        }
    }
    let int4_layout = match meta.get("format_version").map(String::as_str) {
        Some(FORMAT_VERSION_PAIRS_ONLY) => Int4Layout::Pairs,
        Some(FORMAT_VERSION) => match meta.get(INT4_LAYOUT_KEY).map(String::as_str) {
            Some("pairs") | None => Int4Layout::Pairs,
            Some("triples") => Int4Layout::Triples,
            Some(other) => {
                return Err(EngineError::format(
                    path,
                    format!(
                        "metadata `{INT4_LAYOUT_KEY}`: expected \"pairs\" or \"triples\", found \
                         {other:?}"
                    ),
                ))
            }
        },
        other => {
            return Err(EngineError::format(
                path,
                format!(
                    "metadata `format_version`: expected \"{FORMAT_VERSION}\" or \
                     \"{FORMAT_VERSION_PAIRS_ONLY}\", found {other:?}"
                ),
            ))
        }
    };
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
        data_start,
        metadata: &metadata,
        int4_layout,
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
        chat_template: meta.get(CHAT_TEMPLATE_KEY).cloned(),
        file_bytes,
        checksum,
    })
}

struct MappedSource<'a> {
    path: &'a Path,
    buffer: Arc<dyn AsRef<[u8]> + Send + Sync>,
    data_start: usize,
    metadata: &'a Metadata,
    int4_layout: Int4Layout,
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
        let layout = self.int4_layout;
        let shape = packed_shape(rows, cols, quant.bits, layout);
        let bytes = self.bytes(name, Dtype::U8, &shape)?;
        let path = self.path;
        let wrap = |e: hbit_kernels::KernelError| EngineError::tensor(path, name, e.to_string());
        Ok(match (quant.bits, layout) {
            // Files never name `rows` (the reader refuses it); the arm keeps the match whole.
            (ActBits::Int8, _) | (ActBits::Int4, Int4Layout::Rows) => {
                TernaryMatrix::Row(RowPacked::from_parts(rows, cols, alpha, bytes).map_err(wrap)?)
            }
            (ActBits::Int4, Int4Layout::Pairs) => {
                TernaryMatrix::Lut(LutPacked::from_parts(rows, cols, alpha, bytes).map_err(wrap)?)
            }
            (ActBits::Int4, Int4Layout::Triples) => {
                let [blocks, _] = shape;
                let signs = self.bytes(&signs_name(name), Dtype::U64, &[blocks, shape[1] / 32])?;
                let sums = self.bytes(&sign_sums_name(name), Dtype::I32, &[16 * blocks])?;
                let m = TriplePacked::from_parts(rows, cols, alpha, bytes, signs, sums);
                TernaryMatrix::Triple(m.map_err(wrap)?)
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
            hbit_kernels::FloatWeights::I8 { .. } | hbit_kernels::FloatWeights::Block { .. } => {}
        }
        Ok(m)
    }
}
