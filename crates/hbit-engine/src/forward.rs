//! The forward pass on the kernel layer alone: many sequences' new tokens at once, each sequence
//! attending over its own [`KvCache`]. Prefill is one GEMM per projection over every new token;
//! batched decode is the same call with one token per sequence.
//!
//! Dimension legend: N new tokens over all sequences, H hidden, I GLU size, V vocabulary,
//! nh / nkv query / KV heads, hd head dim. The math mirrors the training model
//! (`hbit-train/src/model.rs`) line for line; only the matmuls are integer (same values).

use hbit_kernels::attention::{self, HistoryRows};
use hbit_kernels::attention_int4;
use hbit_kernels::parallel::{for_rows, for_runs};
use hbit_kernels::{float_matmul, KernelPath};
use hbit_model::{HiddenAct, ModelConfig};

use crate::error::{EngineError, Result};
use crate::kv::{fake_quantize_head, KvBits, KvCache, Plane};
use crate::weights::{matmul_many, LayerWeights, Weights};

/// Which positions' logits a forward call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// The last new token of each sequence (generation).
    Last,
    /// Every new token (perplexity, `hbit logits`).
    All,
}

/// A projection input that [`Engine::forward_observed`] reports: the values entering a
/// BitLinear before its Hadamard transform (if any) and its quantizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Site {
    /// Input of W_q, W_k, W_v (the attention pre-norm's output).
    Qkv,
    /// Input of W_o (the attention output after its sub-norm), `[N, H]`.
    O,
    /// Input of W_gate, W_up (the FFN pre-norm's output).
    GateUp,
    /// Input of W_down (the GLU output after its sub-norm), `[N, I]`.
    Down,
}

impl Site {
    pub const ALL: [Site; 4] = [Site::Qkv, Site::O, Site::GateUp, Site::Down];

    pub fn name(self) -> &'static str {
        match self {
            Site::Qkv => "qkv",
            Site::O => "o_proj",
            Site::GateUp => "gate_up",
            Site::Down => "down_proj",
        }
    }
}

/// Receives `(layer, site, values [N, cols])` during a forward call.
pub type Observer<'a> = &'a mut dyn FnMut(usize, Site, &[f32]);

/// A loaded model ready to run.
pub struct Engine {
    pub weights: Weights,
    /// Quantize-dequantize each query head to this many bits (the paper's 4-bit Q), if set.
    pub q_bits: Option<u32>,
    /// A quantized copy of the LM head used instead of the stored one
    /// ([`Engine::use_head_bits`]).
    quantized_head: Option<crate::weights::FloatMatrix>,
}

impl Engine {
    pub fn new(weights: Weights) -> Engine {
        Engine {
            weights,
            q_bits: None,
            quantized_head: None,
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.weights.config
    }

    /// Computes logits with an 8-bit (absmax per row) copy of the LM head: half the bytes of an
    /// f16 head per decode step, at the cost of the copy's memory and 8-bit rounding of the
    /// logits' weights (the embedding lookup keeps the stored table).
    pub fn use_int8_head(&mut self) {
        self.quantized_head = Some(self.weights.head().to_int8());
    }

    /// Back to the stored (f16 / f32) LM head.
    pub fn use_stored_head(&mut self) {
        self.quantized_head = None;
    }

    /// The LM head at `bits`: 16 = as stored, 8 = absmax per row ([`Engine::use_int8_head`]),
    /// 6 or 4 = one f16 scale per 32 weights (`hbit_kernels::block_quant`; the hidden size
    /// must be a multiple of 32). The embedding lookup keeps the stored table.
    pub fn use_head_bits(&mut self, bits: u8) -> Result<()> {
        match bits {
            16 => self.use_stored_head(),
            8 => self.use_int8_head(),
            6 | 4 => {
                let block = hbit_kernels::block_quant::BlockBits::from_bits(bits)
                    .expect("6 and 4 are block widths");
                self.quantized_head = Some(self.weights.head().to_block(block)?);
            }
            other => {
                return Err(EngineError::Input(format!(
                    "head bits {other}: expected 16 (as stored), 8, 6 or 4"
                )))
            }
        }
        Ok(())
    }

    /// Bits per weight of the head the logits use (16 or 32 as stored, 8, 6.5 or 4.5).
    pub fn head_bits_per_weight(&self) -> f64 {
        let head = self.quantized_head.as_ref().unwrap_or(self.weights.head());
        8.0 * head.bytes() as f64 / (head.rows * head.cols) as f64
    }

    /// Weight bytes one decode step reads: every packed ternary matrix and the head the logits
    /// use (the embedding lookup reads one row; norms are negligible and left out).
    pub fn decode_weight_bytes(&self) -> usize {
        let head = self.quantized_head.as_ref().unwrap_or(self.weights.head());
        self.weights.ternary_bytes() + head.bytes()
    }

    pub fn new_cache(&self, bits: KvBits) -> KvCache {
        KvCache::new(self.config(), bits)
    }

    /// Runs `tokens[s]` (new tokens of sequence `s`, following what `caches[s]` holds) and
    /// returns each sequence's logits: `[V]` for [`Logits::Last`], `[n_s, V]` for
    /// [`Logits::All`].
    pub fn forward(
        &self,
        caches: &mut [&mut KvCache],
        tokens: &[&[u32]],
        want: Logits,
    ) -> Result<Vec<Vec<f32>>> {
        self.forward_observed(caches, tokens, want, None)
    }

    /// [`Engine::forward`], reporting every projection input to `observer` (activation
    /// statistics); the observer sees the values, it cannot change them.
    pub fn forward_observed(
        &self,
        caches: &mut [&mut KvCache],
        tokens: &[&[u32]],
        want: Logits,
        mut observer: Option<Observer>,
    ) -> Result<Vec<Vec<f32>>> {
        let c = self.config();
        if caches.len() != tokens.len() {
            return Err(EngineError::Input(format!(
                "forward: {} caches for {} token lists",
                caches.len(),
                tokens.len()
            )));
        }
        if let Some(bits) = self.q_bits.filter(|b| !(2..=8).contains(b)) {
            return Err(EngineError::Input(format!(
                "q_bits: expected 2 to 8 bits, found {bits}"
            )));
        }
        // rows[i] = (sequence, position) of new token i.
        let mut rows: Vec<(usize, usize)> = Vec::new();
        for (s, (cache, toks)) in caches.iter().zip(tokens).enumerate() {
            if toks.is_empty() {
                return Err(EngineError::Input(format!(
                    "sequence {s}: no tokens to run"
                )));
            }
            let end = cache.len() + toks.len();
            if end > c.max_position_embeddings {
                return Err(EngineError::Input(format!(
                    "sequence {s}: {end} tokens exceed the context of {} (max_position_embeddings)",
                    c.max_position_embeddings
                )));
            }
            if let Some(&bad) = toks.iter().find(|&&t| t as usize >= c.vocab_size) {
                return Err(EngineError::Input(format!(
                    "token id {bad} is outside the vocabulary (vocab_size {})",
                    c.vocab_size
                )));
            }
            rows.extend((0..toks.len()).map(|i| (s, cache.len() + i)));
        }
        let (n, h) = (rows.len(), c.hidden_size);
        let mut x = vec![0.0f32; n * h]; // [N, H]
        let embed = self.weights.embed_tokens.view();
        for (row, &t) in x
            .chunks_exact_mut(h)
            .zip(tokens.iter().flat_map(|t| t.iter()))
        {
            embed.row_into(t as usize, h, row);
        }
        let mut scratch = Scratch::new(c, &rows);
        for (l, layer) in self.weights.layers.iter().enumerate() {
            self.layer(l, layer, &mut x, &rows, caches, &mut scratch, &mut observer)?;
        }
        let mut counts = vec![0usize; caches.len()];
        for &(s, _) in &rows {
            counts[s] += 1;
        }
        for (cache, &k) in caches.iter_mut().zip(&counts) {
            cache.advance(k);
        }
        // Rows whose logits are wanted, through the final norm and the full-precision head.
        let picked: Vec<usize> = match want {
            Logits::All => (0..n).collect(),
            Logits::Last => (0..n)
                .filter(|&i| i + 1 == n || rows[i + 1].0 != rows[i].0)
                .collect(),
        };
        let mut hidden = Vec::with_capacity(picked.len() * h);
        for &i in &picked {
            hidden.extend_from_slice(&x[i * h..(i + 1) * h]);
        }
        rms_norm_rows(&mut hidden, &self.weights.norm, c.rms_norm_eps);
        let head = self.quantized_head.as_ref().unwrap_or(self.weights.head());
        let v = c.vocab_size;
        let mut logits = vec![0.0f32; picked.len() * v]; // [picked, V]
        float_matmul(head.view(), v, h, &hidden, &mut logits)?;
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); caches.len()];
        for (j, &i) in picked.iter().enumerate() {
            out[rows[i].0].extend_from_slice(&logits[j * v..(j + 1) * v]);
        }
        Ok(out)
    }

    /// One decoder layer over `x` `[N, H]`, in place.
    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        l: usize,
        w: &LayerWeights,
        x: &mut [f32],
        rows: &[(usize, usize)],
        caches: &mut [&mut KvCache],
        scratch: &mut Scratch,
        observer: &mut Option<Observer>,
    ) -> Result<()> {
        let c = self.config();
        let (n, h) = (rows.len(), c.hidden_size);
        let mut observe = |site: Site, values: &[f32]| {
            if let Some(f) = observer.as_mut() {
                f(l, site, values);
            }
        };
        let kv_dim = c.num_kv_heads * c.head_dim;
        let eps = c.rms_norm_eps;

        let Scratch {
            normed,
            q,
            k,
            v,
            o,
            gate,
            up,
            rope_cos,
            rope_sin,
        } = scratch;
        // Attention: pre-norm, q/k/v share one quantized input.
        normed.copy_from_slice(x);
        rms_norm_rows(normed, &w.input_layernorm, eps);
        observe(Site::Qkv, normed);
        let xq = w
            .q_proj
            .prepare_input(normed, n)
            .map_err(|e| at(l, "q_proj", e))?;
        matmul_many(
            &[&w.q_proj.weight, &w.k_proj.weight, &w.v_proj.weight],
            &xq,
            &mut [q, k, v],
        )?;
        let hd = c.head_dim;
        let half = hd / 2;
        let rope_row = |i: usize| {
            let span = i * half..(i + 1) * half;
            (&rope_cos[span.clone()], &rope_sin[span])
        };
        for_rows(q, h, |i, row| {
            let (cos, sin) = rope_row(i);
            rope(row, hd, cos, sin);
            if let Some(bits) = self.q_bits {
                row.chunks_exact_mut(hd)
                    .for_each(|head| fake_quantize_head(head, bits));
            }
        });
        for_rows(k, kv_dim, |i, row| {
            let (cos, sin) = rope_row(i);
            rope(row, hd, cos, sin)
        });
        let mut start = 0;
        for (s, cache) in caches.iter_mut().enumerate() {
            let count = rows[start..].iter().take_while(|r| r.0 == s).count();
            cache.append(
                l,
                &k[start * kv_dim..(start + count) * kv_dim],
                &v[start * kv_dim..(start + count) * kv_dim],
            );
            start += count;
        }
        let mut attn = self.attention(l, q, rows, caches)?; // [N, H]
        rms_norm_rows(&mut attn, &w.attn_sub_norm, eps); // the LN of eq. (7)
        observe(Site::O, &attn);
        let aq = w
            .o_proj
            .prepare_input(&mut attn, n)
            .map_err(|e| at(l, "o_proj", e))?; // Hadamard (v2), top-K (a4.8), quantize
        w.o_proj.weight.matmul(&aq, o)?;
        for (xi, oi) in x.iter_mut().zip(o.iter()) {
            *xi += oi;
        }

        // FFN: pre-norm, gate/up share one quantized input.
        normed.copy_from_slice(x);
        rms_norm_rows(normed, &w.post_attention_layernorm, eps);
        observe(Site::GateUp, normed);
        let xq = w
            .gate_proj
            .prepare_input(normed, n)
            .map_err(|e| at(l, "gate_proj", e))?;
        matmul_many(
            &[&w.gate_proj.weight, &w.up_proj.weight],
            &xq,
            &mut [gate, up],
        )?;
        let (act, path) = (c.hidden_act, hbit_kernels::active_path()?);
        // Element-wise, so cut into equal runs regardless of rows ([`GLU_RUN`]).
        for_runs(gate, GLU_RUN, |i, run| {
            let up = &up[i * GLU_RUN..i * GLU_RUN + run.len()];
            match act {
                // The trainer's SiLU, vectorized (`hbit_kernels::act`).
                HiddenAct::Silu => hbit_kernels::act::silu_times(path, run, up)
                    .expect("the active path is supported and the lengths match"),
                HiddenAct::Relu2 => {
                    for (g, u) in run.iter_mut().zip(up) {
                        *g = g.max(0.0) * g.max(0.0) * u;
                    }
                }
            }
        });
        rms_norm_rows(gate, &w.ffn_sub_norm, eps); // the LN of eq. (7)
        observe(Site::Down, gate);
        let gq = w
            .down_proj
            .prepare_input(gate, n)
            .map_err(|e| at(l, "down_proj", e))?;
        let down = o; // W_o's output is spent: reuse its buffer
        w.down_proj.weight.matmul(&gq, down)?;
        for (xi, di) in x.iter_mut().zip(down.iter()) {
            *xi += di;
        }
        Ok(())
    }

    /// Causal grouped-query attention of the new rows over their sequences' caches (which hold
    /// this layer's new keys and values already). Returns `[N, nh·hd]`.
    fn attention(
        &self,
        l: usize,
        q: &[f32],
        rows: &[(usize, usize)],
        caches: &[&mut KvCache],
    ) -> Result<Vec<f32>> {
        let c = self.config();
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let rep = nh / nkv;
        let h = nh * hd;
        let mut seq_rows: Vec<Vec<usize>> = vec![Vec::new(); caches.len()];
        for (i, &(s, _)) in rows.iter().enumerate() {
            seq_rows[s].push(i);
        }
        // Tasks (sequence, KV head, query heads r0..r1 of its group). Decode: one task per KV
        // head serves all `rep` query heads from one dequantized cache. Prefill (many rows, work
        // quadratic in them): one task per query head, so few KV heads (GQA) still spread over
        // every thread; re-reading the cache per query head costs little beside the scores.
        let tasks: Vec<(usize, usize, usize, usize)> = (0..caches.len())
            .flat_map(|s| {
                let split = if seq_rows[s].len() >= PREFILL_ROWS {
                    rep
                } else {
                    1
                };
                (0..nkv).flat_map(move |g| {
                    (0..split).map(move |k| (s, g, k * rep / split, (k + 1) * rep / split))
                })
            })
            .collect();
        let path = hbit_kernels::active_path()?;
        let one_task = |&(s, g, r0, r1): &(usize, usize, usize, usize)| -> Result<Vec<f32>> {
            let heads = (g * rep + r0)..(g * rep + r1);
            let my_rows: Vec<(usize, usize)> =
                seq_rows[s].iter().map(|&i| (i, rows[i].1)).collect();
            let mut out = vec![0.0f32; my_rows.len() * heads.len() * hd];
            attend(path, caches[s], l, g, heads, &my_rows, q, h, hd, &mut out)?;
            Ok(out)
        };
        // Decode steps over short contexts are too small to be worth waking other threads.
        let work: usize = rows.iter().map(|&(_, pos)| (pos + 1) * h).sum();
        let results: Vec<Vec<f32>> = if work < PARALLEL_ATTENTION_WORK {
            tasks.iter().map(one_task).collect::<Result<_>>()?
        } else {
            hbit_kernels::parallel::map_parts(tasks.len(), |i| one_task(&tasks[i]))
                .into_iter()
                .collect::<Result<_>>()?
        };
        let mut attn = vec![0.0f32; rows.len() * h];
        for (&(s, g, r0, r1), out) in tasks.iter().zip(&results) {
            let width = (r1 - r0) * hd;
            for (j, &i) in seq_rows[s].iter().enumerate() {
                let at = i * h + (g * rep + r0) * hd;
                attn[at..at + width].copy_from_slice(&out[j * width..(j + 1) * width]);
            }
        }
        Ok(attn)
    }
}

/// A forward call's per-layer buffers, allocated once per call and overwritten by every layer:
/// fresh zeroed vectors per layer cost a prefill of 128 tokens ≈ 190 MB of `memset` at ≈700M
/// (2.2% of its samples), all of it overwritten by the products.
struct Scratch {
    /// `[N, H]`: a pre-norm's output, the input of q/k/v, then of gate/up.
    normed: Vec<f32>,
    /// `[N, nh·hd]` (= `[N, H]`), `[N, nkv·hd]`, `[N, nkv·hd]`.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// `[N, H]`: W_o's output, then W_down's.
    o: Vec<f32>,
    /// `[N, I]` each.
    gate: Vec<f32>,
    up: Vec<f32>,
    /// `[N, hd/2]`: each new row's RoPE cos / sin at its position, computed once per call
    /// rather than held for the whole context (`[max_pos, hd]` twice: 1.0–4.2 MB at the bench
    /// shapes, resident for nothing).
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
}

impl Scratch {
    /// Buffers for the new `rows` (sequence, position) of one forward call.
    fn new(c: &ModelConfig, rows: &[(usize, usize)]) -> Scratch {
        let kv_dim = c.num_kv_heads * c.head_dim;
        let (n, h, i) = (rows.len(), c.hidden_size, c.intermediate_size);
        let half = c.head_dim / 2;
        let mut rope_cos = vec![0.0; n * half];
        let mut rope_sin = vec![0.0; n * half];
        for ((&(_, pos), cos), sin) in rows
            .iter()
            .zip(rope_cos.chunks_exact_mut(half))
            .zip(rope_sin.chunks_exact_mut(half))
        {
            c.rope_at(pos, cos, sin);
        }
        Scratch {
            rope_cos,
            rope_sin,
            normed: vec![0.0; n * h],
            q: vec![0.0; n * h],
            k: vec![0.0; n * kv_dim],
            v: vec![0.0; n * kv_dim],
            o: vec![0.0; n * h],
            gate: vec![0.0; n * i],
            up: vec![0.0; n * i],
        }
    }
}

/// Rotate-half RoPE of every head (`hd` values) in `x` `[heads·hd]`, with the `hd / 2`
/// frequencies' `cos` / `sin` at the row's position (both halves share them).
fn rope(x: &mut [f32], hd: usize, cos: &[f32], sin: &[f32]) {
    let half = hd / 2;
    for head in x.chunks_exact_mut(hd) {
        // x·cos + rotate_half(x)·sin, where rotate_half(x) = [-x2, x1], pair by pair.
        let (x1, x2) = head.split_at_mut(half);
        for i in 0..half {
            let (a, b) = (x1[i], x2[i]);
            x1[i] = a * cos[i] + -b * sin[i];
            x2[i] = b * cos[i] + a * sin[i];
        }
    }
}

/// Positions of the cache dequantized at a time: one chunk of keys or values (32 KiB at
/// hd 128) stays in L1 while every row and query head of a task uses it.
const POSITION_CHUNK: usize = 64;

/// Rows of one sequence scored together: bounds the score buffer at `ROW_BLOCK · heads · len`
/// values however long a prefill is, while each dequantized chunk still serves many rows.
const ROW_BLOCK: usize = 64;

/// Causal attention of one sequence's `rows` (`(row index into q, position)`, positions
/// increasing) for query heads `heads` of KV group `g`, over layer `l` of `cache` (which holds
/// the rows' own keys and values already). `q` is `[N, h]`; writes `out` `[rows, heads, hd]`.
///
/// The history is taken [`POSITION_CHUNK`] positions at a time (one row over a float cache: all
/// at once): a float cache in place (f16 chunks that many rows share widened first), an integer
/// cache dequantized into a small buffer. Nothing of context length is materialized but the
/// scores. One row over a 4-bit cache, where the CPU has the kernel, goes to
/// [`attend_int4_in_place`] instead: the same results, the codes read in place.
#[allow(clippy::too_many_arguments)]
fn attend(
    path: KernelPath,
    cache: &KvCache,
    l: usize,
    g: usize,
    heads: std::ops::Range<usize>,
    rows: &[(usize, usize)],
    q: &[f32],
    h: usize,
    hd: usize,
    out: &mut [f32],
) -> Result<()> {
    let nh = heads.len();
    let scale = 1.0 / (hd as f32).sqrt();
    // One query row (a decode step) over a 4-bit cache reads the codes in place where the CPU
    // has the kernel; a prefill's many rows share each widened chunk more cheaply. `hbit bench
    // kernels` (one head, 144 positions, hd 96): 2.1 µs in place, 3.7–4.0 µs widened.
    if let [(i, pos)] = rows {
        if cache.bits == KvBits::Int4 && attention_int4::reads_codes_in_place(path, hd, nh) {
            let qs = &q[i * h + heads.start * hd..i * h + heads.end * hd];
            return attend_int4_in_place(path, cache, l, g, qs, hd, *pos, scale, out);
        }
    }
    // Dequantization buffer of integer caches (and of f16 chunks that many rows share),
    // allocated on first use: a decode row reads a float cache in place, and zeroing 24 KiB per
    // task for nothing took 1% of the samples of an f16-cache decode step.
    let mut chunk: Vec<f32> = Vec::new();
    let mut weights: Vec<f32> = Vec::new();
    let mut scores: Vec<f32> = Vec::new();
    let floats = matches!(cache.bits, KvBits::F32 | KvBits::F16);
    for (b, block) in rows.chunks(ROW_BLOCK).enumerate() {
        let upto = block.last().map_or(0, |&(_, pos)| pos + 1);
        // One row (a decode step) over a float cache has nothing to share a chunk with: its
        // whole history goes to the kernels as one run, which they stream with prefetches
        // ahead (a chunk boundary would restart the stream every 64 positions).
        let span = if block.len() == 1 && floats {
            upto.max(1)
        } else {
            POSITION_CHUNK
        };
        weights.resize(weights.len().max(span), 0.0);
        let shared = block.len() > 1;
        // scores[(j·nh + r)·upto + p]: row j of the block, head r, key position p.
        scores.clear();
        scores.resize(block.len() * nh * upto, 0.0);
        for c0 in (0..upto).step_by(span) {
            let c1 = (c0 + span).min(upto);
            let keys = history(
                path,
                cache,
                l,
                Plane::Keys,
                g,
                c0..c1,
                hd,
                shared,
                &mut chunk,
            )?;
            for (j, &(i, pos)) in block.iter().enumerate().filter(|(_, r)| r.1 >= c0) {
                let end = c1.min(pos + 1);
                for (r, head) in heads.clone().enumerate() {
                    let qh = &q[i * h + head * hd..i * h + (head + 1) * hd];
                    let at = (j * nh + r) * upto;
                    let sc = &mut scores[at + c0..at + end];
                    attention::scores(path, qh, keys.first((end - c0) * hd), scale, sc)?;
                }
            }
        }
        // Softmax over each row's causal span: exponentials here, divided by their total as the
        // values are summed.
        let mut totals = vec![0.0f32; block.len() * nh];
        for (j, &(_, pos)) in block.iter().enumerate() {
            for r in 0..nh {
                let sc = &mut scores[(j * nh + r) * upto..(j * nh + r) * upto + pos + 1];
                totals[j * nh + r] = attention::softmax_exponentials(path, sc)?;
            }
        }
        let block_out = &mut out[b * ROW_BLOCK * nh * hd..];
        for c0 in (0..upto).step_by(span) {
            let c1 = (c0 + span).min(upto);
            let values = history(
                path,
                cache,
                l,
                Plane::Values,
                g,
                c0..c1,
                hd,
                shared,
                &mut chunk,
            )?;
            for (j, &(_, pos)) in block.iter().enumerate().filter(|(_, r)| r.1 >= c0) {
                let end = c1.min(pos + 1);
                for r in 0..nh {
                    let total = totals[j * nh + r];
                    let at = (j * nh + r) * upto;
                    for (w, &sc) in weights.iter_mut().zip(&scores[at + c0..at + end]) {
                        *w = sc / total;
                    }
                    let o = &mut block_out[(j * nh + r) * hd..(j * nh + r + 1) * hd];
                    let run = values.first((end - c0) * hd);
                    attention::weighted_sum(path, &weights[..end - c0], run, o)?;
                }
            }
        }
    }
    Ok(())
}

/// [`attend`] for one query row at position `pos`, its query heads `qs` `[heads, hd]` of one KV
/// group, over a 4-bit cache, reading the codes in place (`attention_int4`). The same values as
/// the chunked path, bit for bit: each score and each weighted value is the widened one, the
/// softmax is the same, and the weighted sum takes the positions in the same order.
#[allow(clippy::too_many_arguments)]
fn attend_int4_in_place(
    path: KernelPath,
    cache: &KvCache,
    l: usize,
    g: usize,
    qs: &[f32],
    hd: usize,
    pos: usize,
    scale: f32,
    out: &mut [f32],
) -> Result<()> {
    let heads = qs.len() / hd;
    // Position 0 (kept at 8 bits) widened on its own, positions 1..=pos read in place: per
    // head, `first[j]` then `scores[j·pos..(j + 1)·pos]` are its scores in position order.
    let mut row0 = vec![0.0f32; hd];
    let mut first = vec![0.0f32; heads];
    let mut scores = vec![0.0f32; heads * pos];
    cache.read(path, l, Plane::Keys, g, 0..1, &mut row0)?;
    for (qh, f) in qs.chunks_exact(hd).zip(first.chunks_exact_mut(1)) {
        attention::scores(path, qh, HistoryRows::F32(&row0), scale, f)?;
    }
    if pos > 0 {
        let keys = cache.int4_codes(l, Plane::Keys, g, 1..pos + 1)?;
        attention_int4::scores_int4(path, qs, hd, keys, scale, &mut scores)?;
    }
    // Each head's scores end to end (position 0, then the rest), as the chunked path holds them,
    // so the softmax sums them in the same lanes.
    let mut head_scores = vec![0.0f32; pos + 1];
    for (j, f) in first.iter_mut().enumerate() {
        let sc = &mut scores[j * pos..(j + 1) * pos];
        head_scores[0] = *f;
        head_scores[1..].copy_from_slice(sc);
        let total = attention::softmax_exponentials(path, &mut head_scores)?;
        *f = head_scores[0] / total;
        for (w, &e) in sc.iter_mut().zip(&head_scores[1..]) {
            *w = e / total;
        }
    }
    let out = &mut out[..qs.len()];
    cache.read(path, l, Plane::Values, g, 0..1, &mut row0)?;
    for (f, o) in first.chunks_exact(1).zip(out.chunks_exact_mut(hd)) {
        attention::weighted_sum(path, f, HistoryRows::F32(&row0), o)?;
    }
    if pos > 0 {
        let values = cache.int4_codes(l, Plane::Values, g, 1..pos + 1)?;
        attention_int4::weighted_sum_int4(path, &scores, hd, values, out)?;
    }
    Ok(())
}

/// Keys (or values) of KV head `g` at `positions`: in place when the cache stores floats,
/// else dequantized into `buf`. With `shared` (many rows will read them), f16 rows are widened
/// into `buf` too: once per chunk rather than once per row in the kernels' registers.
#[allow(clippy::too_many_arguments)]
fn history<'a>(
    path: KernelPath,
    cache: &'a KvCache,
    l: usize,
    plane: Plane,
    g: usize,
    positions: std::ops::Range<usize>,
    hd: usize,
    shared: bool,
    buf: &'a mut Vec<f32>,
) -> Result<HistoryRows<'a>> {
    match cache.stored_rows(l, plane, g, positions.clone()) {
        Some(HistoryRows::F16(_)) if shared => {}
        Some(rows) => return Ok(rows),
        None => {}
    }
    if buf.len() < positions.len() * hd {
        buf.resize(positions.len().max(POSITION_CHUNK) * hd, 0.0);
    }
    cache.read(path, l, plane, g, positions.clone(), buf)?;
    Ok(HistoryRows::F32(&buf[..positions.len() * hd]))
}

/// An error of layer `l`'s projection input, named.
fn at(l: usize, proj: &str, e: EngineError) -> EngineError {
    EngineError::Input(format!("layer {l}, input of {proj}: {e}"))
}

/// A sequence with this many new rows (a prefill) gets one attention task per query head.
const PREFILL_ROWS: usize = 16;

/// Below this many query·key products, attention stays on the calling thread.
const PARALLEL_ATTENTION_WORK: usize = 1 << 15;

/// Values per run of the GLU activation ([`for_runs`]). Split by runs, a single decode row
/// (4096 values at ≈700M) is shared by the threads too: with glibc's scalar `expf` that gained
/// 1.02–1.04× in ≈700M decode. With the vectorized SiLU (`hbit_kernels::act`) the row costs
/// about a microsecond, and splitting it or not measured the same (0.994–1.002×).
const GLU_RUN: usize = 512;

/// RMSNorm of each row of `x` with gain `g`: `x / sqrt(mean(x²) + eps) · g`.
fn rms_norm_rows(x: &mut [f32], g: &[f32], eps: f64) {
    let n = g.len();
    for_rows(x, n, |_, row| {
        // The trainer's factor, in its summation order (`hbit_kernels::norm`).
        let inv = hbit_kernels::norm::inv_rms(row, eps as f32);
        for (v, gi) in row.iter_mut().zip(g) {
            *v = *v * inv * gi;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use hbit_kernels::attention_int4::{reads_codes_in_place, MAX_HEADS};
    use hbit_kernels::ActBits;
    use hbit_model::config::preset;
    use hbit_model::Variant;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    /// One decode row over a 4-bit cache (read in place where the CPU has the kernel) against
    /// the same row as the last of two (widened chunk by chunk), on every kernel path: the same
    /// bits, for head sizes 16…128, 1–4 query heads per KV head, histories crossing the
    /// 64-position chunks.
    #[test]
    fn one_row_in_place_equals_the_widened_chunks() {
        #[cfg(target_arch = "x86_64")]
        let in_place_cpu =
            KernelPath::Avx512.is_supported() && std::arch::is_x86_feature_detected!("avx512vbmi");
        #[cfg(not(target_arch = "x86_64"))]
        let in_place_cpu = false;
        for hd in [16usize, 48, 96, 128] {
            for rep in 1..=MAX_HEADS {
                let mut c = preset("micro", Variant::BitnetV2, ActBits::Int4).unwrap();
                (c.num_kv_heads, c.num_heads, c.head_dim) = (2, 2 * rep, hd);
                c.max_position_embeddings = 160;
                let (h, kv) = (c.num_heads * hd, c.num_kv_heads * hd);
                for positions in [1usize, 2, 70, 150] {
                    let mut cache = KvCache::new(&c, KvBits::Int4);
                    let seed = (hd * 1000 + rep * 200 + positions) as u64;
                    let keys = values(positions * kv, seed);
                    cache.append(0, &keys, &values(positions * kv, seed + 1));
                    cache.advance(positions);
                    let q_last = values(h, seed + 2);
                    let pos = positions - 1;
                    for path in KernelPath::supported() {
                        if path == KernelPath::Avx512 && in_place_cpu {
                            assert!(reads_codes_in_place(path, hd, rep), "hd {hd}, {rep} heads");
                        }
                        let heads = rep..2 * rep; // KV group 1
                        let mut alone = vec![0.0f32; rep * hd];
                        attend(
                            path,
                            &cache,
                            0,
                            1,
                            heads.clone(),
                            &[(0, pos)],
                            &q_last,
                            h,
                            hd,
                            &mut alone,
                        )
                        .unwrap();
                        if pos == 0 {
                            continue;
                        }
                        let mut q = values(h, seed + 3);
                        q.extend_from_slice(&q_last);
                        let mut both = vec![0.0f32; 2 * rep * hd];
                        let rows = [(0, pos - 1), (1, pos)];
                        attend(path, &cache, 0, 1, heads, &rows, &q, h, hd, &mut both).unwrap();
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(&alone),
                            bits(&both[rep * hd..]),
                            "{path}, hd {hd}, {rep} heads, {positions} positions"
                        );
                    }
                }
            }
        }
    }
}
