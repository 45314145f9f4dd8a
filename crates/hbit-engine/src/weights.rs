//! The inference model's weights: packed ternary projections, each with the input treatment its
//! config gives it, full-precision norms, and the embedding / LM head at f32 or f16.
//!
//! Built either from a training checkpoint's latent f32 weights ([`Weights::from_latent`], which
//! quantizes exactly as training's forward does: eqs. 1–2, with `W·H` first for the
//! weight-rotation ablation) or from a packed model file ([`crate::format`]), whose bytes are
//! used in place.

use std::collections::HashMap;
use std::sync::Arc;

use half::f16;
use hbit_kernels::matmul::{ProductKind, Split};
use hbit_kernels::quant::{quantize_activations, sparsify_topk_token, topk_count};
use hbit_kernels::{
    matmul, quantize_ternary, ActBits, FloatWeights, Hadamard, LutPacked, PackedTernary,
    QuantizedActivations, RowPacked, TriplePacked,
};
use hbit_model::tensors::{
    layer_norm, proj_weight, ATTN_SUB_NORM, EMBED_TOKENS, FFN_SUB_NORM, FINAL_NORM, INPUT_NORM,
    LM_HEAD, POST_ATTENTION_NORM,
};
use hbit_model::{InputQuant, ModelConfig, Proj};

use crate::error::{EngineError, Result};

/// Packed ternary weights in the layout their activation width's kernel reads.
#[derive(Debug, Clone)]
pub enum TernaryMatrix {
    /// For INT8 inputs: multiply-add kernels.
    Row(RowPacked),
    /// For INT4 inputs: lookup tables of two weights.
    Lut(LutPacked),
    /// For INT4 inputs: lookup tables of three weights (1.67 bits per weight).
    Triple(TriplePacked),
}

/// Which layout a matrix for INT4 inputs is packed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int4Layout {
    /// [`LutPacked`]: two weights per lookup, 2 bits per weight.
    Pairs,
    /// [`TriplePacked`]: three weights per lookup, 1.67 bits per weight.
    Triples,
    /// [`RowPacked`]: the INT8 multiply-add kernels on the 4-bit codes (exact: 4-bit codes are
    /// 8-bit codes), 2 bits per weight. A load-time choice for CPUs where the lookup kernels are
    /// compute-bound; model files hold pairs or triples.
    Rows,
}

impl Int4Layout {
    /// The layout this CPU multiplies fastest: three weights per lookup where the kernels have a
    /// vector tile for them (AVX-512 VBMI + VNNI, or NEON), else two.
    pub fn native() -> Int4Layout {
        match matmul::int4_triples_native() {
            true => Int4Layout::Triples,
            false => Int4Layout::Pairs,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Int4Layout::Pairs => "pairs",
            Int4Layout::Triples => "triples",
            Int4Layout::Rows => "rows",
        }
    }

    /// `pairs`, `triples`, `rows`, or `native` ([`Int4Layout::native`]).
    pub fn parse(s: &str) -> Result<Int4Layout> {
        match s.trim().to_ascii_lowercase().as_str() {
            "pairs" => Ok(Int4Layout::Pairs),
            "triples" => Ok(Int4Layout::Triples),
            "rows" => Ok(Int4Layout::Rows),
            "native" => Ok(Int4Layout::native()),
            other => Err(EngineError::Input(format!(
                "INT4 weight layout: expected pairs, triples, rows or native, found {other:?}"
            ))),
        }
    }
}

impl TernaryMatrix {
    /// The packed layout behind the variant: every operation below goes through it.
    pub fn packed(&self) -> &dyn PackedTernary {
        match self {
            TernaryMatrix::Row(w) => w,
            TernaryMatrix::Lut(w) => w,
            TernaryMatrix::Triple(w) => w,
        }
    }

    pub fn rows(&self) -> usize {
        self.packed().rows()
    }

    pub fn cols(&self) -> usize {
        self.packed().cols()
    }

    pub fn alpha(&self) -> f32 {
        self.packed().alpha()
    }

    /// Bytes of packed weights (what a GEMV streams from memory).
    pub fn bytes(&self) -> usize {
        self.packed().packed_bytes()
    }

    /// The layout of this matrix for inputs `bits` wide: `None` for INT8 inputs.
    pub fn int4_layout(&self, bits: ActBits) -> Option<Int4Layout> {
        (bits == ActBits::Int4).then_some(match self {
            TernaryMatrix::Row(_) => Int4Layout::Rows,
            TernaryMatrix::Lut(_) => Int4Layout::Pairs,
            TernaryMatrix::Triple(_) => Int4Layout::Triples,
        })
    }

    /// The layout a projection whose input is quantized to `bits` needs, INT4 in this CPU's
    /// fastest layout ([`Int4Layout::native`]).
    pub fn pack<W: hbit_kernels::pack::TernaryRows + ?Sized>(
        w: &W,
        bits: ActBits,
    ) -> TernaryMatrix {
        TernaryMatrix::pack_with(w, bits, Int4Layout::native())
    }

    /// As [`TernaryMatrix::pack`], INT4 in `layout`.
    pub fn pack_with<W: hbit_kernels::pack::TernaryRows + ?Sized>(
        w: &W,
        bits: ActBits,
        layout: Int4Layout,
    ) -> TernaryMatrix {
        match (bits, layout) {
            (ActBits::Int8, _) => TernaryMatrix::Row(RowPacked::pack(w)),
            (ActBits::Int4, Int4Layout::Pairs) => TernaryMatrix::Lut(LutPacked::pack(w)),
            (ActBits::Int4, Int4Layout::Triples) => TernaryMatrix::Triple(TriplePacked::pack(w)),
            (ActBits::Int4, Int4Layout::Rows) => TernaryMatrix::Row(RowPacked::pack(w)),
        }
    }

    /// The weights a row at a time, to repack in another layout without unpacking them whole.
    pub fn as_rows(&self) -> &dyn hbit_kernels::pack::TernaryRows {
        self.packed()
    }

    /// The ternary weights, unpacked.
    pub fn unpack(&self) -> hbit_kernels::TernaryWeights {
        self.packed().to_weights()
    }

    /// `y` `[tokens, rows]` = BitLinear's integer form on quantized inputs.
    pub fn matmul(&self, x: &QuantizedActivations, y: &mut [f32]) -> Result<()> {
        Ok(self.packed().matmul(x, y)?)
    }

    /// The kernel family that multiplies this matrix (the key of its thread splits).
    pub fn product_kind(&self) -> ProductKind {
        self.packed().product_kind()
    }
}

/// Products of several matrices with one quantized input (q/k/v, gate/up) in one parallel
/// pass; the matrices share their input's width, hence their layout.
pub fn matmul_many(
    ws: &[&TernaryMatrix],
    x: &QuantizedActivations,
    ys: &mut [&mut [f32]],
) -> Result<()> {
    matmul_many_split(ws, x, ys, None)
}

/// [`matmul_many`] cut across the threads as `split` says (`None`: this CPU's pinned choice or
/// the kernel's built-in rule, `hbit_kernels::matmul::split`). Every split gives the same
/// results.
pub fn matmul_many_split(
    ws: &[&TernaryMatrix],
    x: &QuantizedActivations,
    ys: &mut [&mut [f32]],
    split: Option<Split>,
) -> Result<()> {
    /// The kernels' multi-matrix product when every matrix is of the variant `pick` takes.
    fn all<T: PackedTernary>(
        ws: &[&TernaryMatrix],
        x: &QuantizedActivations,
        ys: &mut [&mut [f32]],
        pick: fn(&TernaryMatrix) -> Option<&T>,
        split: Option<Split>,
    ) -> Result<()> {
        let same: Option<Vec<&T>> = ws.iter().map(|w| pick(w)).collect();
        let same = same.ok_or_else(|| {
            EngineError::Input("matmul_many: matrices of one input must share one layout".into())
        })?;
        Ok(T::matmul_many_split(&same, x, ys, split)?)
    }
    // The first matrix names the layout; the rest must share it. No matrices: the INT8 kernel
    // then checks that there are no outputs either.
    match ws.first() {
        Some(TernaryMatrix::Lut(_)) => all(
            ws,
            x,
            ys,
            |w| match w {
                TernaryMatrix::Lut(l) => Some(l),
                _ => None,
            },
            split,
        ),
        Some(TernaryMatrix::Triple(_)) => all(
            ws,
            x,
            ys,
            |w| match w {
                TernaryMatrix::Triple(t) => Some(t),
                _ => None,
            },
            split,
        ),
        _ => all(
            ws,
            x,
            ys,
            |w| match w {
                TernaryMatrix::Row(r) => Some(r),
                _ => None,
            },
            split,
        ),
    }
}

/// One BitLinear / H-BitLinear: the packed weight and how its input is prepared.
#[derive(Debug, Clone)]
pub struct Projection {
    pub weight: TernaryMatrix,
    pub quant: InputQuant,
    /// Present when the input is rotated (eq. 7).
    hadamard: Option<Arc<Hadamard>>,
}

impl Projection {
    fn new(weight: TernaryMatrix, quant: InputQuant, hadamard: Option<Arc<Hadamard>>) -> Self {
        Projection {
            weight,
            quant,
            hadamard,
        }
    }

    /// Hadamard (eq. 7), top-K (a4.8), then the per-token quantizer (eq. 5 or 6) of `x`
    /// `[tokens, in]`, which is transformed in place.
    pub fn prepare_input(&self, x: &mut [f32], tokens: usize) -> Result<QuantizedActivations> {
        let cols = self.weight.cols();
        if x.len() != tokens * cols {
            return Err(EngineError::Input(format!(
                "projection input: expected {tokens} × {cols} values, found {}",
                x.len()
            )));
        }
        let k = self.quant.topk_keep.map(|keep| topk_count(cols, keep));
        if self.hadamard.is_some() || k.is_some() {
            hbit_kernels::parallel::for_rows(x, cols, |_, row| {
                if let Some(h) = &self.hadamard {
                    // Length checked above, so the transform cannot fail.
                    let _ = h.apply(row);
                }
                if let Some(k) = k {
                    sparsify_topk_token(row, k);
                }
            });
        }
        Ok(quantize_activations(x, tokens, cols, self.quant.bits)?)
    }
}

/// A full-precision `[rows, cols]` matrix: in a shared buffer (a mapped file) or owned.
#[derive(Debug, Clone)]
pub enum FloatData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    /// 8-bit absmax rows (the optional 8-bit LM head, built at load time).
    I8 {
        codes: Vec<i8>,
        scales: Vec<f32>,
    },
    /// 6- or 4-bit rows with an f16 scale per 32 weights (the optional smaller LM head, built at
    /// load time; `hbit_kernels::block_quant`).
    Block {
        bits: hbit_kernels::block_quant::BlockBits,
        codes: Vec<u8>,
        scales: Vec<f16>,
    },
    /// Little-endian f32 or f16 values in place in a mapped file, alignment checked at load.
    Mapped {
        bytes: hbit_kernels::PackedBytes,
        half: bool,
    },
}

/// Embedding or LM head `[vocab, hidden]`.
#[derive(Debug, Clone)]
pub struct FloatMatrix {
    pub rows: usize,
    pub cols: usize,
    pub data: FloatData,
}

impl FloatMatrix {
    pub fn view(&self) -> FloatWeights<'_> {
        match &self.data {
            FloatData::F32(v) => FloatWeights::F32(v),
            FloatData::F16(v) => FloatWeights::F16(v),
            FloatData::I8 { codes, scales } => FloatWeights::I8 { codes, scales },
            FloatData::Block {
                bits,
                codes,
                scales,
            } => FloatWeights::Block {
                bits: *bits,
                codes,
                scales,
            },
            // Alignment was checked when the matrix was built (`FloatMatrix::mapped`).
            FloatData::Mapped { bytes, half: false } => {
                FloatWeights::F32(bytemuck::cast_slice(bytes))
            }
            FloatData::Mapped { bytes, half: true } => {
                FloatWeights::F16(bytemuck::cast_slice(bytes))
            }
        }
    }

    pub fn is_f16(&self) -> bool {
        matches!(self.view(), FloatWeights::F16(_))
    }

    /// Wraps mapped bytes, or copies them when they are not aligned for in-place use.
    pub fn mapped(rows: usize, cols: usize, bytes: hbit_kernels::PackedBytes, half: bool) -> Self {
        let aligned = if half {
            bytemuck::try_cast_slice::<u8, f16>(&bytes).is_ok()
        } else {
            bytemuck::try_cast_slice::<u8, f32>(&bytes).is_ok()
        };
        let data = match (aligned, half) {
            (true, _) => FloatData::Mapped { bytes, half },
            (false, true) => FloatData::F16(
                bytes
                    .chunks_exact(2)
                    .map(|b| f16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            ),
            (false, false) => FloatData::F32(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
        };
        FloatMatrix { rows, cols, data }
    }

    /// Bytes the matrix occupies.
    pub fn bytes(&self) -> usize {
        match self.view() {
            FloatWeights::F32(_) => 4 * self.rows * self.cols,
            FloatWeights::F16(_) => 2 * self.rows * self.cols,
            FloatWeights::I8 { .. } => self.rows * self.cols + 4 * self.rows,
            FloatWeights::Block { codes, scales, .. } => codes.len() + 2 * scales.len(),
        }
    }

    /// A matrix of `values` (`[rows, cols]`), stored at f16 when `half`.
    pub fn from_f32(rows: usize, cols: usize, values: Vec<f32>, half: bool) -> FloatMatrix {
        let data = match half {
            true => FloatData::F16(values.iter().map(|&v| f16::from_f32(v)).collect()),
            false => FloatData::F32(values),
        };
        FloatMatrix { rows, cols, data }
    }

    /// The values widened to f32, row-major, whatever the storage.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut values = vec![0.0f32; self.rows * self.cols];
        let view = self.view();
        for (r, row) in values.chunks_exact_mut(self.cols).enumerate() {
            view.row_into(r, self.cols, row);
        }
        values
    }

    /// An 8-bit copy (absmax per row): half the bytes of f16 for a memory-bound GEMV.
    pub fn to_int8(&self) -> FloatMatrix {
        let view = self.view();
        let (codes, scales) =
            hbit_kernels::float_gemv::quantize_rows_int8_from(self.rows, self.cols, |r, out| {
                view.row_into(r, self.cols, out)
            });
        FloatMatrix {
            rows: self.rows,
            cols: self.cols,
            data: FloatData::I8 { codes, scales },
        }
    }

    /// A 6- or 4-bit copy, one f16 scale per 32 weights; `cols` must be a multiple of 32.
    pub fn to_block(&self, bits: hbit_kernels::block_quant::BlockBits) -> Result<FloatMatrix> {
        let view = self.view();
        let (codes, scales) =
            hbit_kernels::block_quant::quantize_rows_from(self.rows, self.cols, bits, |r, out| {
                view.row_into(r, self.cols, out)
            })?;
        Ok(FloatMatrix {
            rows: self.rows,
            cols: self.cols,
            data: FloatData::Block {
                bits,
                codes,
                scales,
            },
        })
    }
}

/// `model.layers.N`.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// `[H]` pre-norm of q/k/v.
    pub input_layernorm: Vec<f32>,
    pub q_proj: Projection,
    pub k_proj: Projection,
    pub v_proj: Projection,
    /// `[H]` the LN of eq. (7) before W_o.
    pub attn_sub_norm: Vec<f32>,
    pub o_proj: Projection,
    /// `[H]` pre-norm of gate/up.
    pub post_attention_layernorm: Vec<f32>,
    pub gate_proj: Projection,
    pub up_proj: Projection,
    /// `[I]` the LN of eq. (7) before W_down.
    pub ffn_sub_norm: Vec<f32>,
    pub down_proj: Projection,
}

impl LayerWeights {
    pub fn projection(&self, proj: Proj) -> &Projection {
        match proj {
            Proj::Q => &self.q_proj,
            Proj::K => &self.k_proj,
            Proj::V => &self.v_proj,
            Proj::O => &self.o_proj,
            Proj::Gate => &self.gate_proj,
            Proj::Up => &self.up_proj,
            Proj::Down => &self.down_proj,
        }
    }

    fn projection_mut(&mut self, proj: Proj) -> &mut Projection {
        match proj {
            Proj::Q => &mut self.q_proj,
            Proj::K => &mut self.k_proj,
            Proj::V => &mut self.v_proj,
            Proj::O => &mut self.o_proj,
            Proj::Gate => &mut self.gate_proj,
            Proj::Up => &mut self.up_proj,
            Proj::Down => &mut self.down_proj,
        }
    }
}

/// The projections the forward pass multiplies in one kernel call each: those sharing one
/// quantized input (q/k/v; gate/up) together.
pub const PRODUCT_GROUPS: [&[Proj]; 4] = [
    &[Proj::Q, Proj::K, Proj::V],
    &[Proj::O],
    &[Proj::Gate, Proj::Up],
    &[Proj::Down],
];

/// One kernel call of the forward pass: its kernel family, the rows of its matrices together,
/// their columns, and the width of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProductShape {
    pub kind: ProductKind,
    pub rows: usize,
    pub cols: usize,
    pub bits: ActBits,
}

/// Everything the forward pass reads.
#[derive(Debug, Clone)]
pub struct Weights {
    pub config: ModelConfig,
    /// `[V, H]`
    pub embed_tokens: FloatMatrix,
    pub layers: Vec<LayerWeights>,
    /// `[H]`
    pub norm: Vec<f32>,
    /// `[V, H]`; `None` when tied to the embedding.
    pub lm_head: Option<FloatMatrix>,
}

/// Source of a model's tensors while assembling [`Weights`]: each call hands over one tensor.
pub(crate) trait TensorSource {
    fn norm(&mut self, name: &str, len: usize) -> Result<Vec<f32>>;
    fn ternary(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        quant: InputQuant,
    ) -> Result<TernaryMatrix>;
    fn float_matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<FloatMatrix>;
}

impl Weights {
    /// Assembles the weights of `config` from `source`, one named tensor at a time.
    pub(crate) fn assemble(config: &ModelConfig, source: &mut dyn TensorSource) -> Result<Weights> {
        let (h, v) = (config.hidden_size, config.vocab_size);
        let mut hadamards: HashMap<usize, Arc<Hadamard>> = HashMap::new();
        let mut layers = Vec::with_capacity(config.num_layers);
        for l in 0..config.num_layers {
            let mut proj = |p: Proj, source: &mut dyn TensorSource| -> Result<Projection> {
                let quant = config.input_quant(p);
                let (rows, cols) = config.proj_shape(p);
                let weight = source.ternary(&proj_weight(l, p), rows, cols, quant)?;
                let hadamard = match quant.hadamard {
                    false => None,
                    true => Some(match hadamards.get(&cols) {
                        Some(h) => h.clone(),
                        None => {
                            let t = Arc::new(config.hadamard(cols)?);
                            hadamards.insert(cols, t.clone());
                            t
                        }
                    }),
                };
                Ok(Projection::new(weight, quant, hadamard))
            };
            let input_layernorm = source.norm(&layer_norm(l, INPUT_NORM), h)?;
            let q_proj = proj(Proj::Q, source)?;
            let k_proj = proj(Proj::K, source)?;
            let v_proj = proj(Proj::V, source)?;
            let attn_sub_norm = source.norm(&layer_norm(l, ATTN_SUB_NORM), h)?;
            let o_proj = proj(Proj::O, source)?;
            let post_attention_layernorm = source.norm(&layer_norm(l, POST_ATTENTION_NORM), h)?;
            let gate_proj = proj(Proj::Gate, source)?;
            let up_proj = proj(Proj::Up, source)?;
            let ffn_sub_norm =
                source.norm(&layer_norm(l, FFN_SUB_NORM), config.intermediate_size)?;
            let down_proj = proj(Proj::Down, source)?;
            layers.push(LayerWeights {
                input_layernorm,
                q_proj,
                k_proj,
                v_proj,
                attn_sub_norm,
                o_proj,
                post_attention_layernorm,
                gate_proj,
                up_proj,
                ffn_sub_norm,
                down_proj,
            });
        }
        let embed_tokens = source.float_matrix(EMBED_TOKENS, v, h)?;
        let norm = source.norm(FINAL_NORM, h)?;
        let lm_head = match config.tie_word_embeddings {
            true => None,
            false => Some(source.float_matrix(LM_HEAD, v, h)?),
        };
        Ok(Weights {
            config: config.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
        })
    }

    /// Quantizes and packs a training checkpoint's latent f32 weights (`[out, in]`), exactly as
    /// training's forward quantizes them; `half_embeddings` stores embedding and head at f16.
    pub fn from_latent(
        config: &ModelConfig,
        tensors: &HashMap<String, Vec<f32>>,
        half_embeddings: bool,
        source_name: &std::path::Path,
    ) -> Result<Weights> {
        let mut source = LatentSource {
            config,
            tensors,
            half_embeddings,
            path: source_name,
        };
        Weights::assemble(config, &mut source)
    }

    /// The LM head: the tied embedding unless the model has its own.
    /// The same ternary weights run with `bits`-wide activations: only the input quantization
    /// and the kernel layout change (e.g. an a4 model's INT8 twin, to compare kernels on one
    /// model).
    pub fn with_activation_bits(&self, bits: ActBits) -> Result<Weights> {
        let c = &self.config;
        let config = c.with_quantization(c.variant, bits, c.hidden_act)?;
        let mut out = self.clone();
        for layer in &mut out.layers {
            for proj in Proj::ALL {
                let p = layer.projection_mut(proj);
                p.weight = TernaryMatrix::pack(p.weight.as_rows(), bits);
                p.quant = config.input_quant(proj);
            }
        }
        out.config = config;
        Ok(out)
    }

    /// The same model with its INT4 projections in `layout` (repacked where they are not):
    /// products are the same integers either way, only the kernel differs.
    pub fn with_int4_layout(mut self, layout: Int4Layout) -> Weights {
        use rayon::prelude::*;
        // One layer per task: repacking spreads over the cores.
        self.layers.par_iter_mut().for_each(|layer| {
            for proj in Proj::ALL {
                let p = layer.projection_mut(proj);
                if p.weight
                    .int4_layout(p.quant.bits)
                    .is_some_and(|l| l != layout)
                {
                    p.weight = TernaryMatrix::pack_with(p.weight.as_rows(), ActBits::Int4, layout);
                }
            }
        });
        self
    }

    /// The layout of the INT4 projections (`None` when there are none).
    pub fn int4_layout(&self) -> Option<Int4Layout> {
        self.layers
            .iter()
            .flat_map(|l| {
                Proj::ALL.map(|p| {
                    let p = l.projection(p);
                    p.weight.int4_layout(p.quant.bits)
                })
            })
            .flatten()
            .next()
    }

    pub fn head(&self) -> &FloatMatrix {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// Every kernel call of a forward pass over the layers, as its thread split is keyed
    /// (`hbit_kernels::matmul::SplitKey`): one per group of [`PRODUCT_GROUPS`] per layer, its
    /// rows the group's together.
    pub fn products(&self) -> Vec<ProductShape> {
        self.layers
            .iter()
            .flat_map(|layer| {
                PRODUCT_GROUPS.map(|group| {
                    let first = layer.projection(group[0]);
                    ProductShape {
                        kind: first.weight.product_kind(),
                        rows: group
                            .iter()
                            .map(|&p| layer.projection(p).weight.rows())
                            .sum(),
                        cols: first.weight.cols(),
                        bits: first.quant.bits,
                    }
                })
            })
            .collect()
    }

    /// Bytes of packed ternary weights over all layers.
    pub fn ternary_bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| Proj::ALL.map(|p| l.projection(p).weight.bytes()))
            .sum()
    }
}

struct LatentSource<'a> {
    config: &'a ModelConfig,
    tensors: &'a HashMap<String, Vec<f32>>,
    half_embeddings: bool,
    path: &'a std::path::Path,
}

impl<'a> LatentSource<'a> {
    fn get(&self, name: &str, len: usize) -> Result<&'a [f32]> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| EngineError::tensor(self.path, name, "missing"))?;
        if t.len() != len {
            return Err(EngineError::tensor(
                self.path,
                name,
                format!("expected {len} values, found {}", t.len()),
            ));
        }
        crate::tensor_io::check_finite(self.path, name, t)?;
        Ok(t)
    }
}

impl TensorSource for LatentSource<'_> {
    fn norm(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        Ok(self.get(name, len)?.to_vec())
    }

    fn ternary(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        quant: InputQuant,
    ) -> Result<TernaryMatrix> {
        let latent = self.get(name, rows * cols)?;
        let named =
            |e: hbit_kernels::KernelError| EngineError::tensor(self.path, name, e.to_string());
        let q = if quant.rotate_weight {
            // Weight-and-activation rotation ablation: Qw(W·H), H applied to each row (H symmetric).
            let h = self.config.hadamard(cols).map_err(named)?;
            let mut rotated = latent.to_vec();
            for row in rotated.chunks_exact_mut(cols) {
                h.apply(row).map_err(named)?;
            }
            quantize_ternary(&rotated, rows, cols).map_err(named)?
        } else {
            quantize_ternary(latent, rows, cols).map_err(named)? // eqs. (1)-(2)
        };
        Ok(TernaryMatrix::pack(&q, quant.bits))
    }

    fn float_matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<FloatMatrix> {
        let values = self.get(name, rows * cols)?.to_vec();
        Ok(FloatMatrix::from_f32(
            rows,
            cols,
            values,
            self.half_embeddings,
        ))
    }
}

/// Random weights for benchmarks (`hbit init --dummy`): ternary codes uniform over {-1, 0, 1}
/// with alpha = 1/sqrt(in) (unit-scale outputs), unit norm gains, N(0, 0.02²) embeddings.
struct RandomSource {
    rng: hbit_model::rng::SplitMix64,
    half_embeddings: bool,
}

impl TensorSource for RandomSource {
    fn norm(&mut self, _name: &str, len: usize) -> Result<Vec<f32>> {
        Ok(vec![1.0; len])
    }

    fn ternary(
        &mut self,
        _name: &str,
        rows: usize,
        cols: usize,
        quant: InputQuant,
    ) -> Result<TernaryMatrix> {
        let codes: Vec<i8> = (0..rows * cols)
            .map(|_| self.rng.below(3) as i8 - 1)
            .collect();
        let alpha = 1.0 / (cols as f32).sqrt();
        let w = hbit_kernels::TernaryWeights::from_codes(rows, cols, alpha, codes)?;
        Ok(TernaryMatrix::pack(&w, quant.bits))
    }

    fn float_matrix(&mut self, _name: &str, rows: usize, cols: usize) -> Result<FloatMatrix> {
        let values = (0..rows * cols).map(|_| (self.rng.normal() * 0.02) as f32);
        let data = match self.half_embeddings {
            true => FloatData::F16(values.map(f16::from_f32).collect()),
            false => FloatData::F32(values.collect()),
        };
        Ok(FloatMatrix { rows, cols, data })
    }
}

impl Weights {
    /// A model of `config`'s shape with random ternary weights (see `RandomSource`), for
    /// measuring speed without training.
    pub fn random(config: &ModelConfig, seed: u64, half_embeddings: bool) -> Result<Weights> {
        let mut source = RandomSource {
            rng: hbit_model::rng::SplitMix64::new(seed),
            half_embeddings,
        };
        Weights::assemble(config, &mut source)
    }
}
