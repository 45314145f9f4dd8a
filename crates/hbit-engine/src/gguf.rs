//! GGUF, the model container of llama.cpp and bitnet.cpp, read and written without any C code.
//!
//! A file is `"GGUF"`, a u32 version (2 or 3), u64 tensor and metadata counts, the metadata
//! (key, u32 value type, value; strings are a u64 length and UTF-8 bytes), the tensor infos
//! (name, u32 dimension count, u64 dims with `ne[0]` the contiguous one, u32 ggml type, u64
//! offset), zero padding to `general.alignment` (default 32), then the tensor data at those
//! offsets. All integers are little-endian. A 2-D tensor `ne = [cols, rows]` is row-major
//! `[rows, cols]`.
//!
//! Tensor types read here (ggml's ids, the same in bitnet.cpp's fork and upstream for these):
//! F32 (0), F16 (1), Q6_K (14), BF16 (30), TQ1_0 (34), TQ2_0 (35) and bitnet.cpp's I2_S (36).
//! * **I2_S**: blocks of 128 consecutive elements in 32 bytes, byte `g` holding elements `g`,
//!   `32+g`, `64+g`, `96+g` in bits 7-6, 5-4, 3-2, 1-0 as `w + 1` (0 → −1, 1 → 0, 2 → +1);
//!   after all `n/4` packed bytes one f32 scale for the whole tensor, then 28 unused bytes
//!   (`n/4 + 32` bytes in all). `w = code · scale`.
//! * **TQ2_0**: blocks of 256 in 66 bytes: `qs[64]` then an f16 `d`; element `4j + 32l + m`
//!   (`j` ∈ {0, 32}, `m` < 32, `l` < 4) is `((qs[j+m] >> 2l) & 3) − 1`, times `d`.
//! * **TQ1_0**: blocks of 256 in 54 bytes: `qs[48]` (5 trits a byte), `qh[4]` (4 trits a byte),
//!   an f16 `d`. Trit `n` of byte `b` is `((b · 3ⁿ mod 256) · 3) >> 8`, as `w + 1`; `qs[m]`
//!   (m < 32) holds elements `32n + m`, `qs[32+m]` elements `160 + 16n + m`, `qh[j]` elements
//!   `240 + 4n + j`.
//! * **Q6_K**: blocks of 256 in 210 bytes: `ql[128]`, `qh[64]`, 16 signed scales, an f16 `d`.
//!
//! Every length, count and offset is checked against the file before use, so a damaged or
//! hostile file gives an error naming the file and the field, never a panic.

use std::path::{Path, PathBuf};

use half::{bf16, f16};
use hbit_kernels::TernaryWeights;

use crate::error::{EngineError, Result};

/// The magic bytes a GGUF file starts with.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// The version this writer writes.
pub const VERSION: u32 = 3;
/// Tensor data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that overrides [`DEFAULT_ALIGNMENT`].
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// At most this many dimensions per tensor (ggml's `GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;
/// At most this many elements per metadata array.
const MAX_ARRAY_ELEMENTS: u64 = 1 << 24;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Elements of one type (arrays of arrays are not part of the format).
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The format's id of this value's type.
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// An integer value of any width, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// A number of any type as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v as f64),
            Value::I16(v) => Some(v as f64),
            Value::I32(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A tensor's ggml type, for the types this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q6K,
    BF16,
    TQ1_0,
    TQ2_0,
    /// bitnet.cpp's 2-bit ternary layout with one f32 scale per tensor.
    I2S,
}

impl GgmlType {
    pub const ALL: [GgmlType; 7] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q6K,
        GgmlType::BF16,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::I2S,
    ];

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q6K => 14,
            GgmlType::BF16 => 30,
            GgmlType::TQ1_0 => 34,
            GgmlType::TQ2_0 => 35,
            GgmlType::I2S => 36,
        }
    }

    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| t.id() == id)
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q6K => "Q6_K",
            GgmlType::BF16 => "BF16",
            GgmlType::TQ1_0 => "TQ1_0",
            GgmlType::TQ2_0 => "TQ2_0",
            GgmlType::I2S => "I2_S",
        }
    }

    /// Elements per block and bytes per block (I2_S is sized by [`GgmlType::data_bytes`]).
    fn block(self) -> (u64, u64) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q6K => (256, 210),
            GgmlType::TQ1_0 => (256, 54),
            GgmlType::TQ2_0 => (256, 66),
            GgmlType::I2S => (128, 32),
        }
    }

    /// Bytes of a tensor of `elements` values of this type, `None` when the count is not a
    /// whole number of blocks (or overflows).
    pub fn data_bytes(self, elements: u64) -> Option<u64> {
        let (block, bytes) = self.block();
        if !elements.is_multiple_of(block) {
            return None;
        }
        let packed = (elements / block).checked_mul(bytes)?;
        match self {
            // The f32 scale and 28 bytes ggml reserves after the packed codes.
            GgmlType::I2S => packed.checked_add(32),
            _ => Some(packed),
        }
    }
}

/// One tensor's entry in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml's `ne`: `dims[0]` is the contiguous dimension.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// From the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The shape row-major, outermost first (`[rows, cols]` for a matrix).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file, its bytes in memory.
pub struct Gguf {
    pub path: PathBuf,
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    alignment: u64,
    data_start: usize,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Gguf {
    /// Reads and checks `path`.
    pub fn read(path: &Path) -> Result<Gguf> {
        let bytes = std::fs::read(path).map_err(|e| EngineError::io(path, e))?;
        Gguf::parse(path, bytes)
    }

    /// Parses a file's bytes; `path` names it in errors.
    pub fn parse(path: &Path, bytes: Vec<u8>) -> Result<Gguf> {
        let mut r = Reader {
            bytes: &bytes,
            pos: 0,
            path,
        };
        let magic = r.take(4, "magic")?.to_vec();
        if magic != MAGIC {
            return Err(r.err(format!(
                "not a GGUF file (expected magic \"GGUF\", found {magic:02x?})"
            )));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(r.err(format!("version: expected 2 or 3, found {version}")));
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // Each entry takes at least 12 (metadata) or 24 (tensor info) bytes: a count beyond what
        // the file can hold is damage, refused before anything is allocated for it.
        r.check_count(n_kv, 12, "metadata count")?;
        let mut metadata = Vec::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key {i}"))?;
            let ty = r.u32(&format!("type of metadata {key:?}"))?;
            let value = r.value(ty, &key, true)?;
            metadata.push((key, value));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(r.err(format!(
                        "{ALIGNMENT_KEY}: expected a power of two, found {v:?}"
                    )))
                }
            },
        };
        r.check_count(n_tensors, 24, "tensor count")?;
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors as usize);
        let mut names = std::collections::HashSet::new();
        for i in 0..n_tensors {
            let name = r.string(&format!("tensor {i} name"))?;
            let n_dims = r.u32(&format!("tensor {name:?} dimension count"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(r.tensor_err(
                    &name,
                    format!("dimension count: expected 1 to {MAX_DIMS}, found {n_dims}"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                let v = r.u64(&format!("tensor {name:?} dimension {d}"))?;
                if v == 0 {
                    return Err(r.tensor_err(&name, format!("dimension {d} is 0")));
                }
                dims.push(v);
            }
            if dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .is_none()
            {
                return Err(r.tensor_err(&name, format!("dimensions {dims:?} overflow")));
            }
            let type_id = r.u32(&format!("tensor {name:?} type"))?;
            let ty = GgmlType::from_id(type_id).ok_or_else(|| {
                r.tensor_err(
                    &name,
                    format!(
                        "ggml type {type_id} is not read by hbit (it reads F32, F16, BF16, \
                         Q6_K, TQ1_0, TQ2_0 and I2_S)"
                    ),
                )
            })?;
            let offset = r.u64(&format!("tensor {name:?} offset"))?;
            if !offset.is_multiple_of(alignment) {
                return Err(r.tensor_err(
                    &name,
                    format!("offset {offset} is not a multiple of the alignment {alignment}"),
                ));
            }
            if !names.insert(name.clone()) {
                return Err(r.tensor_err(&name, "appears twice"));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
            });
        }
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let file_len = bytes.len() as u64;
        for t in &tensors {
            let elements = t.elements();
            let size = t.ty.data_bytes(elements).ok_or_else(|| {
                r.tensor_err(
                    &t.name,
                    format!("{elements} elements are not whole {} blocks", t.ty.name()),
                )
            })?;
            let end = data_start
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(size));
            if end.is_none_or(|e| e > file_len) {
                return Err(r.tensor_err(
                    &t.name,
                    format!(
                        "data at offset {} ({size} bytes of {}) runs past the end of the file \
                         ({file_len} bytes; data starts at {data_start})",
                        t.offset,
                        t.ty.name()
                    ),
                ));
            }
        }
        Ok(Gguf {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            alignment,
            data_start: data_start as usize,
            bytes,
        })
    }

    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor(name)
            .ok_or_else(|| EngineError::tensor(&self.path, name, "missing"))
    }

    /// The bytes of a tensor (checked in range when the file was parsed).
    pub fn data(&self, info: &TensorInfo) -> &[u8] {
        let size = info
            .ty
            .data_bytes(info.elements())
            .expect("sizes are checked when the file is parsed") as usize;
        let start = self.data_start + info.offset as usize;
        &self.bytes[start..start + size]
    }

    /// A tensor's values as f32, row-major, whatever its type.
    pub fn floats(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.info(name)?;
        let data = self.data(info);
        let n = info.elements() as usize;
        Ok(match info.ty {
            GgmlType::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            GgmlType::F16 => data
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            GgmlType::BF16 => data
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            GgmlType::Q6K => data.chunks_exact(210).flat_map(dequantize_q6_k).collect(),
            GgmlType::TQ1_0 | GgmlType::TQ2_0 | GgmlType::I2S => {
                let (codes, scales) = ternary_codes(info.ty, data, n);
                codes
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| c as f32 * scales.scale_of(i))
                    .collect()
            }
        })
    }

    /// A ternary matrix (I2_S, TQ1_0 or TQ2_0) as codes and one scale. TQ types carry a scale
    /// per 256-block; they must all agree (blocks of zeros aside), as they do for a BitNet model,
    /// whose every weight is `code · alpha`.
    pub fn ternary(&self, name: &str) -> Result<TernaryWeights> {
        let info = self.info(name)?;
        if info.dims.len() != 2 {
            return Err(EngineError::tensor(
                &self.path,
                name,
                format!("expected a matrix, found dimensions {:?}", info.dims),
            ));
        }
        let (rows, cols) = (info.dims[1] as usize, info.dims[0] as usize);
        let n = rows * cols;
        let data = self.data(info);
        if info.ty == GgmlType::I2S {
            if let Some(i) = (0..n).find(|&i| i2s_code(data, i) == 3) {
                return Err(EngineError::tensor(
                    &self.path,
                    name,
                    format!("I2_S code 3 (not a ternary value) at flat index {i}"),
                ));
            }
        }
        let (codes, scales) = match info.ty {
            GgmlType::I2S | GgmlType::TQ1_0 | GgmlType::TQ2_0 => ternary_codes(info.ty, data, n),
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
                let values = self.floats(name)?;
                let (codes, alpha) = ternary_of_floats(&values)
                    .map_err(|m| EngineError::tensor(&self.path, name, m))?;
                (codes, Scales::Tensor(alpha))
            }
            other => {
                return Err(EngineError::tensor(
                    &self.path,
                    name,
                    format!(
                        "expected a ternary type (I2_S, TQ1_0, TQ2_0) or ternary floats, found {}",
                        other.name()
                    ),
                ))
            }
        };
        let alpha = scales
            .single(&codes)
            .map_err(|m| EngineError::tensor(&self.path, name, m))?;
        if !alpha.is_finite() || alpha < 0.0 {
            return Err(EngineError::tensor(
                &self.path,
                name,
                format!("scale {alpha}: expected a finite, non-negative scale"),
            ));
        }
        Ok(TernaryWeights::from_codes(rows, cols, alpha, codes)?)
    }
}

/// Codes and scale of float weights that are ternary already (`code · alpha`, as a BitNet
/// model's weights stored at f16 or f32): `alpha = max|w|`, and every weight must be 0 or ±alpha.
fn ternary_of_floats(values: &[f32]) -> std::result::Result<(Vec<i8>, f32), String> {
    let alpha = values.iter().fold(0f32, |m, v| m.max(v.abs()));
    let codes = values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if v == 0.0 {
                Ok(0)
            } else if v == alpha {
                Ok(1)
            } else if v == -alpha {
                Ok(-1)
            } else {
                Err(format!(
                    "value {v} at flat index {i} is neither 0 nor ±{alpha}: not ternary weights"
                ))
            }
        })
        .collect::<std::result::Result<Vec<i8>, String>>()?;
    Ok((codes, alpha))
}

/// The 2-bit code of element `i` of I2_S data.
fn i2s_code(data: &[u8], i: usize) -> u8 {
    let (block, j) = (i / 128, i % 128);
    (data[block * 32 + j % 32] >> (6 - 2 * (j / 32))) & 3
}

/// Where the scale of each element of a ternary tensor comes from.
enum Scales {
    /// One per tensor (I2_S).
    Tensor(f32),
    /// One per 256-element block (TQ types).
    Blocks(Vec<f32>),
}

impl Scales {
    fn scale_of(&self, i: usize) -> f32 {
        match self {
            Scales::Tensor(s) => *s,
            Scales::Blocks(b) => b[i / 256],
        }
    }

    /// The one scale of the tensor: the blocks' common scale, ignoring blocks whose codes are
    /// all zero (their scale multiplies nothing).
    fn single(&self, codes: &[i8]) -> std::result::Result<f32, String> {
        let blocks = match self {
            Scales::Tensor(s) => return Ok(*s),
            Scales::Blocks(b) => b,
        };
        let mut found: Option<(usize, f32)> = None;
        for (i, (&d, block)) in blocks.iter().zip(codes.chunks(256)).enumerate() {
            if block.iter().all(|&c| c == 0) {
                continue;
            }
            match found {
                None => found = Some((i, d)),
                Some((j, e)) if e.to_bits() != d.to_bits() => {
                    return Err(format!(
                        "per-block scales differ (d = {e} in block {j}, {d} in block {i}): not \
                         one ternary scale for the tensor"
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(found.map_or(0.0, |(_, d)| d))
    }
}

/// Codes in {−1, 0, 1} of a ternary tensor's `n` elements and their scales. I2_S code 3 (never
/// written) reads as 0 here; [`Gguf::ternary`] refuses it.
fn ternary_codes(ty: GgmlType, data: &[u8], n: usize) -> (Vec<i8>, Scales) {
    match ty {
        GgmlType::I2S => {
            let at = n / 4;
            let scale = f32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
            let codes = (0..n)
                .map(|i| match i2s_code(data, i) {
                    3 => 0,
                    c => c as i8 - 1,
                })
                .collect();
            (codes, Scales::Tensor(scale))
        }
        GgmlType::TQ2_0 => {
            let mut codes = vec![0i8; n];
            let mut scales = Vec::with_capacity(n / 256);
            for (b, block) in data.chunks_exact(66).enumerate() {
                let out = &mut codes[b * 256..(b + 1) * 256];
                for j in [0usize, 32] {
                    for l in 0..4 {
                        for m in 0..32 {
                            let q = (block[j + m] >> (2 * l)) & 3;
                            out[4 * j + 32 * l + m] = q as i8 - 1;
                        }
                    }
                }
                scales.push(f16::from_le_bytes([block[64], block[65]]).to_f32());
            }
            (codes, Scales::Blocks(scales))
        }
        GgmlType::TQ1_0 => {
            let mut codes = vec![0i8; n];
            let mut scales = Vec::with_capacity(n / 256);
            for (b, block) in data.chunks_exact(54).enumerate() {
                let out = &mut codes[b * 256..(b + 1) * 256];
                for (m, &byte) in block[..32].iter().enumerate() {
                    for n in 0..5 {
                        out[32 * n + m] = trit(byte, n) - 1;
                    }
                }
                for (m, &byte) in block[32..48].iter().enumerate() {
                    for n in 0..5 {
                        out[160 + 16 * n + m] = trit(byte, n) - 1;
                    }
                }
                for (j, &byte) in block[48..52].iter().enumerate() {
                    for n in 0..4 {
                        out[240 + 4 * n + j] = trit(byte, n) - 1;
                    }
                }
                scales.push(f16::from_le_bytes([block[52], block[53]]).to_f32());
            }
            (codes, Scales::Blocks(scales))
        }
        _ => unreachable!("ternary_codes is called with ternary types only"),
    }
}

/// Trit `n` (0 = most significant) of a TQ1_0 byte: the byte is a base-3 fraction `q / 243`
/// scaled to 256, so multiplying by `3ⁿ` (mod 256) shifts trit `n` to the top.
fn trit(byte: u8, n: usize) -> i8 {
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    let q = byte.wrapping_mul(POW3[n]);
    ((q as u16 * 3) >> 8) as i8
}

/// One Q6_K block's 256 values.
fn dequantize_q6_k(block: &[u8]) -> [f32; 256] {
    let (ql, qh, sc) = (&block[..128], &block[128..192], &block[192..208]);
    let d = f16::from_le_bytes([block[208], block[209]]).to_f32();
    let mut y = [0f32; 256];
    for h in 0..2 {
        let (ql, qh, sc, y) = (
            &ql[64 * h..],
            &qh[32 * h..],
            &sc[8 * h..],
            &mut y[128 * h..],
        );
        for l in 0..32 {
            let is = l / 16;
            let s = |k: usize| d * (sc[is + k] as i8) as f32;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = s(0) * q1 as f32;
            y[l + 32] = s(2) * q2 as f32;
            y[l + 64] = s(4) * q3 as f32;
            y[l + 96] = s(6) * q4 as f32;
        }
    }
    y
}

/// A bounds-checked cursor over a file's bytes; errors name the file and the field.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl Reader<'_> {
    fn err(&self, message: String) -> EngineError {
        EngineError::format(self.path, message)
    }

    fn tensor_err(&self, name: &str, message: impl Into<String>) -> EngineError {
        EngineError::tensor(self.path, name, message)
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&[u8]> {
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return Err(self.err(format!(
                "{what}: {n} bytes needed at byte {}, the file ends {left} bytes later",
                self.pos
            )));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let b = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let at = self.pos;
        let bytes = self.take(len, what)?.to_vec();
        String::from_utf8(bytes)
            .map_err(|_| self.err(format!("{what}: invalid UTF-8 in the string at byte {at}")))
    }

    /// Refuses `count` entries of at least `min_bytes` each that the rest of the file cannot
    /// hold.
    fn check_count(&self, count: u64, min_bytes: u64, what: &str) -> Result<()> {
        let left = (self.bytes.len() - self.pos) as u64;
        if count > left / min_bytes {
            return Err(self.err(format!(
                "{what} {count} cannot fit in the {left} bytes left in the file"
            )));
        }
        Ok(())
    }

    /// A value of type `ty`; arrays only at the top level (`outer`).
    fn value(&mut self, ty: u32, key: &str, outer: bool) -> Result<Value> {
        let what = format!("metadata {key:?}");
        Ok(match ty {
            0 => Value::U8(self.array::<1>(&what)?[0]),
            1 => Value::I8(self.array::<1>(&what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => Value::U32(self.u32(&what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => match self.array::<1>(&what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(format!("{what}: bool byte {b}, expected 0 or 1"))),
            },
            8 => Value::String(self.string(&what)?),
            9 if outer => {
                let elem = self.u32(&what)?;
                let count = self.u64(&what)?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => return Err(self.err(format!("{what}: an array of arrays"))),
                    other => return Err(self.err(format!("{what}: array element type {other}"))),
                };
                self.check_count(count, min, &what)?;
                // Each element costs a `Value` in memory, many times its bytes in the file: a
                // cap keeps a crafted file from exhausting memory (vocabularies and merges are
                // well below it).
                if count > MAX_ARRAY_ELEMENTS {
                    return Err(self.err(format!(
                        "{what}: an array of {count} elements (at most {MAX_ARRAY_ELEMENTS} read)"
                    )));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem, key, false)?);
                }
                Value::Array(items)
            }
            9 => return Err(self.err(format!("{what}: an array of arrays"))),
            10 => Value::U64(self.u64(&what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            other => return Err(self.err(format!("{what}: value type {other}, expected 0 to 12"))),
        })
    }
}

/// A GGUF file being assembled: metadata and tensors in the order added.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(TensorInfo, Vec<u8>)>,
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    pub fn metadata(&mut self, key: &str, value: Value) -> &mut Self {
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Adds a tensor of shape `shape` (row-major, outermost first) whose bytes are already in
    /// `ty`'s layout.
    pub fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        ty: GgmlType,
        data: Vec<u8>,
    ) -> Result<&mut Self> {
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let elements: u64 = dims.iter().product();
        let want = ty.data_bytes(elements);
        if want != Some(data.len() as u64) {
            return Err(EngineError::Input(format!(
                "GGUF tensor {name}: {} bytes for {elements} {} elements, expected {want:?}",
                data.len(),
                ty.name()
            )));
        }
        let info = TensorInfo {
            name: name.to_string(),
            dims,
            ty,
            offset: 0,
        };
        self.tensors.push((info, data));
        Ok(self)
    }

    /// The file's bytes; errors for metadata a reader would refuse (an alignment that is not a
    /// u32 power of two, an array of mixed or no types, a key given twice).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let bad = |m: String| EngineError::Input(format!("GGUF writer: {m}"));
        let mut keys = std::collections::HashSet::new();
        for (k, v) in &self.metadata {
            if !keys.insert(k) {
                return Err(bad(format!("metadata {k:?} given twice")));
            }
            if let Value::Array(items) = v {
                let first = items.first().map(Value::type_id);
                if first.is_none() || items.iter().any(|i| Some(i.type_id()) != first) {
                    return Err(bad(format!(
                        "metadata {k:?}: arrays must be non-empty and of one type"
                    )));
                }
                if first == Some(9) {
                    return Err(bad(format!("metadata {k:?}: an array of arrays")));
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        if let Some((info, _)) = self.tensors.iter().find(|(t, _)| !names.insert(&t.name)) {
            return Err(bad(format!("tensor {:?} given twice", info.name)));
        }
        let alignment = match self.metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) if a.is_power_of_two() => *a as u64,
            Some((_, v)) => {
                return Err(bad(format!(
                    "{ALIGNMENT_KEY}: expected a u32 power of two, found {v:?}"
                )))
            }
        };
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            put_value(&mut out, value);
        }
        let mut offset = 0u64;
        for (info, data) in &self.tensors {
            put_string(&mut out, &info.name);
            out.extend_from_slice(&(info.dims.len() as u32).to_le_bytes());
            for d in &info.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&info.ty.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset += (data.len() as u64).div_ceil(alignment) * alignment;
        }
        pad(&mut out, alignment);
        for (_, data) in &self.tensors {
            out.extend_from_slice(data);
            pad(&mut out, alignment);
        }
        Ok(out)
    }

    /// Writes the file through a temporary file (synced before the rename), so an existing file
    /// is replaced whole or not at all.
    pub fn write(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        let bytes = self.to_bytes()?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".partial-{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(&bytes).and_then(|_| f.sync_all()));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(EngineError::io(&tmp, e));
        }
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            EngineError::io(path, e)
        })
    }
}

fn pad(out: &mut Vec<u8>, alignment: u64) {
    let len = out.len() as u64;
    out.resize((len.div_ceil(alignment) * alignment) as usize, 0);
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.push(*v as u8),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => put_string(out, s),
        Value::Array(items) => {
            // `to_bytes` checked that arrays are non-empty and of one type.
            let elem = items.first().map_or(4, Value::type_id);
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}

/// I2_S bytes of ternary `codes` (a whole number of 128-element blocks) with `scale`.
pub fn encode_i2s(codes: &[i8], scale: f32) -> Result<Vec<u8>> {
    whole_blocks(codes, 128, "I2_S")?;
    let n = codes.len();
    let mut out = vec![0u8; n / 4 + 32];
    for (i, &c) in codes.iter().enumerate() {
        let (block, j) = (i / 128, i % 128);
        out[block * 32 + j % 32] |= ((c + 1) as u8) << (6 - 2 * (j / 32));
    }
    out[n / 4..n / 4 + 4].copy_from_slice(&scale.to_le_bytes());
    Ok(out)
}

/// Refuses codes that are not whole blocks of `block` or not ternary.
fn whole_blocks(codes: &[i8], block: usize, what: &str) -> Result<()> {
    if !codes.len().is_multiple_of(block) {
        return Err(EngineError::Input(format!(
            "{what}: {} values are not whole blocks of {block}",
            codes.len()
        )));
    }
    if let Some(i) = codes.iter().position(|c| !(-1..=1).contains(c)) {
        return Err(EngineError::Input(format!(
            "{what}: code {} at index {i} is not ternary",
            codes[i]
        )));
    }
    Ok(())
}

/// TQ2_0 bytes of ternary `codes` (whole 256-element blocks), every block with scale `d`.
pub fn encode_tq2_0(codes: &[i8], d: f16) -> Result<Vec<u8>> {
    whole_blocks(codes, 256, "TQ2_0")?;
    let mut out = Vec::with_capacity(codes.len() / 256 * 66);
    for block in codes.chunks(256) {
        let mut qs = [0u8; 64];
        for j in [0usize, 32] {
            for l in 0..4 {
                for m in 0..32 {
                    qs[j + m] |= ((block[4 * j + 32 * l + m] + 1) as u8) << (2 * l);
                }
            }
        }
        out.extend_from_slice(&qs);
        out.extend_from_slice(&d.to_le_bytes());
    }
    Ok(out)
}

/// TQ1_0 bytes of ternary `codes` (whole 256-element blocks), every block with scale `d`:
/// each byte the base-3 number of its trits (first most significant) as `ceil(q · 256 / 243)`.
pub fn encode_tq1_0(codes: &[i8], d: f16) -> Result<Vec<u8>> {
    whole_blocks(codes, 256, "TQ1_0")?;
    let byte = |trits: &[i8]| -> u8 {
        let q = trits.iter().fold(0u16, |q, &c| q * 3 + (c + 1) as u16);
        (q * 256).div_ceil(243) as u8
    };
    let mut out = Vec::with_capacity(codes.len() / 256 * 54);
    for block in codes.chunks(256) {
        for m in 0..32 {
            let trits: Vec<i8> = (0..5).map(|n| block[32 * n + m]).collect();
            out.push(byte(&trits));
        }
        for m in 0..16 {
            let trits: Vec<i8> = (0..5).map(|n| block[160 + 16 * n + m]).collect();
            out.push(byte(&trits));
        }
        for j in 0..4 {
            // Four trits and a zero trit (code −1 + 1 = 0) in the last place.
            let mut trits: Vec<i8> = (0..4).map(|n| block[240 + 4 * n + j]).collect();
            trits.push(-1);
            out.push(byte(&trits));
        }
        out.extend_from_slice(&d.to_le_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
