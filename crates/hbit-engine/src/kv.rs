//! The KV cache (paper Tables 2–3, DESIGN.md §1): post-RoPE keys and values per layer, token and
//! KV head, at f32, f16, or absmax-quantized to 8, 4 or 3 bits.
//!
//! Quantized heads are per-head absmax codes, `ceil(hd·b/8)` bytes plus one f32 scale,
//! written and widened by the kernel layer's [`hbit_kernels::kv_codec`]. The first position (the BOS token, the attention sink whose keys carry
//! the outliers) is always kept at 8 bits when the cache is narrower.

use half::{f16, slice::HalfFloatSliceExt};
use hbit_kernels::attention::HistoryRows;
use hbit_kernels::attention_int4::Int4Rows;
use hbit_kernels::{kv_codec, KernelPath};
use hbit_model::ModelConfig;

use crate::error::{EngineError, Result};

/// Storage of cached keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvBits {
    /// Unquantized: exactly the training framework's attention.
    F32,
    F16,
    Int8,
    Int4,
    Int3,
}

impl KvBits {
    pub const ALL: [KvBits; 5] = [
        KvBits::F32,
        KvBits::F16,
        KvBits::Int8,
        KvBits::Int4,
        KvBits::Int3,
    ];

    /// Accepts `32`/`f32`, `16`/`f16`, `8`, `4`, `3`.
    pub fn parse(s: &str) -> Result<KvBits> {
        match s.trim().to_ascii_lowercase().as_str() {
            "32" | "f32" => Ok(KvBits::F32),
            "16" | "f16" => Ok(KvBits::F16),
            "8" | "int8" => Ok(KvBits::Int8),
            "4" | "int4" => Ok(KvBits::Int4),
            "3" | "int3" => Ok(KvBits::Int3),
            other => Err(EngineError::Input(format!(
                "KV-cache bits: expected one of 32, 16, 8, 4, 3, found {other:?}"
            ))),
        }
    }

    pub fn bits(self) -> u32 {
        match self {
            KvBits::F32 => 32,
            KvBits::F16 => 16,
            KvBits::Int8 => 8,
            KvBits::Int4 => 4,
            KvBits::Int3 => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvBits::F32 => "f32",
            KvBits::F16 => "f16",
            KvBits::Int8 => "int8",
            KvBits::Int4 => "int4",
            KvBits::Int3 => "int3",
        }
    }

    fn is_integer(self) -> bool {
        self.bits() <= 8
    }

    /// Bytes one head vector of `hd` values occupies (scale excluded).
    pub fn head_bytes(self, hd: usize) -> usize {
        match self {
            KvBits::F32 => 4 * hd,
            KvBits::F16 => 2 * hd,
            b => (hd * b.bits() as usize).div_ceil(8),
        }
    }
}

/// Absmax-quantizes `x` to `bits`-bit codes, bit-packed into `out` (`ceil(len·bits/8)` bytes,
/// zeroed by the caller), on the active kernel path; returns the scale. The append of every
/// decode step runs this per head.
fn quantize_head(x: &[f32], bits: u32, out: &mut [u8]) -> f32 {
    let path = hbit_kernels::active_path().unwrap_or(KernelPath::Scalar);
    match kv_codec::quantize_row(path, bits, x, out) {
        Ok(scale) => scale,
        // Widths and lengths are the cache's own (2..=8 bits, `head_bytes`), so this is
        // unreachable; the reference gives the same codes regardless.
        Err(_) => kv_codec::quantize_row_reference(bits, x, out),
    }
}

/// Quantize-dequantize in place at `bits` on the active kernel path: the paper's 4-bit Q,
/// which is never stored. `bits` is in 2..=8: [`crate::Engine::forward`] refuses other widths
/// before any row gets here.
pub(crate) fn fake_quantize_head(x: &mut [f32], bits: u32) {
    let path = hbit_kernels::active_path().unwrap_or(KernelPath::Scalar);
    let quantized = kv_codec::fake_quantize_row(path, bits, x);
    debug_assert!(quantized.is_ok(), "q_bits {bits} outside 2..=8");
}

/// Keys or values of one KV head of one layer, position-major so a head's whole history is one
/// contiguous run (attention reads it in one pass).
#[derive(Debug, Clone, Default)]
struct HeadStore {
    /// F32 storage `[positions, hd]`.
    full: Vec<f32>,
    /// F16 storage `[positions, hd]`.
    half: Vec<f16>,
    /// Integer storage `[positions (after the first, if kept apart), head_bytes]`.
    data: Vec<u8>,
    /// `[positions (as data)]` scales of integer storage.
    scales: Vec<f32>,
    /// Position 0 at 8 bits when the cache is narrower: `[hd]` codes and their scale.
    first: Vec<u8>,
    first_scale: f32,
}

impl HeadStore {
    fn bytes(&self) -> usize {
        4 * self.full.len()
            + 2 * self.half.len()
            + self.data.len()
            + 4 * self.scales.len()
            + self.first.len()
    }

    /// A copy of the first `slots` slots (`values` floats or `codes` bytes each), nothing more
    /// allocated.
    fn prefix(&self, slots: usize, values: usize, codes: usize, keep_first: bool) -> HeadStore {
        let head = |v: &[f32], n: usize| v[..n.min(v.len())].to_vec();
        HeadStore {
            full: head(&self.full, slots * values),
            half: self.half[..(slots * values).min(self.half.len())].to_vec(),
            data: self.data[..(slots * codes).min(self.data.len())].to_vec(),
            scales: head(&self.scales, slots),
            first: if keep_first {
                self.first.clone()
            } else {
                Vec::new()
            },
            first_scale: self.first_scale,
        }
    }

    fn shrink_to_fit(&mut self) {
        self.full.shrink_to_fit();
        self.half.shrink_to_fit();
        self.data.shrink_to_fit();
        self.scales.shrink_to_fit();
    }
}

/// Which half of a layer's cache: the keys or the values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    Keys,
    Values,
}

impl Plane {
    pub const BOTH: [Plane; 2] = [Plane::Keys, Plane::Values];

    /// Position in a layer's `[keys, values]` stores.
    fn index(self) -> usize {
        match self {
            Plane::Keys => 0,
            Plane::Values => 1,
        }
    }
}

/// One sequence's cache over every layer.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub bits: KvBits,
    nkv: usize,
    hd: usize,
    capacity: usize,
    len: usize,
    /// `[layers][keys, values][nkv]`
    layers: Vec<[Vec<HeadStore>; 2]>,
}

impl KvCache {
    pub fn new(config: &ModelConfig, bits: KvBits) -> KvCache {
        let heads = vec![HeadStore::default(); config.num_kv_heads];
        KvCache {
            bits,
            nkv: config.num_kv_heads,
            hd: config.head_dim,
            capacity: config.max_position_embeddings,
            len: 0,
            layers: vec![[heads.clone(), heads]; config.num_layers],
        }
    }

    /// Bytes a cache of `positions` positions holds ([`KvCache::bytes`]), over every layer,
    /// keys and values: what a server reserves for a sequence.
    pub fn bytes_for(config: &ModelConfig, bits: KvBits, positions: usize) -> usize {
        let hd = config.head_dim;
        let per_head = |n: usize| match bits {
            KvBits::F32 => 4 * hd * n,
            KvBits::F16 => 2 * hd * n,
            b if b.bits() < 8 && n > 0 => (n - 1) * (b.head_bytes(hd) + 4) + hd,
            b => n * (b.head_bytes(hd) + 4),
        };
        config.num_layers * 2 * config.num_kv_heads * per_head(positions)
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most positions the model can attend over.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes held (codes and scales), the memory a served sequence costs.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .flatten()
            .map(HeadStore::bytes)
            .sum()
    }

    /// Makes room for `positions` positions in all (clamped to the context), so appending up to
    /// there never moves the history. A growing vector doubles by copying: at batch 16 and
    /// ≈700M, a decode step that crosses a power of two otherwise moves every head's history
    /// (300 MB after 128 positions) and faults in the new pages, on the calling thread while
    /// the other cores wait. Pages are still only touched as positions are written.
    pub fn reserve(&mut self, positions: usize) {
        let positions = positions.min(self.capacity);
        let (hd, bits) = (self.hd, self.bits);
        let slots = if self.first_is_separate() {
            positions.saturating_sub(1)
        } else {
            positions
        };
        for store in self.layers.iter_mut().flatten().flatten() {
            match bits {
                KvBits::F32 => store
                    .full
                    .reserve_exact((slots * hd).saturating_sub(store.full.len())),
                KvBits::F16 => store
                    .half
                    .reserve_exact((slots * hd).saturating_sub(store.half.len())),
                b => {
                    let bytes = slots * b.head_bytes(hd);
                    store
                        .data
                        .reserve_exact(bytes.saturating_sub(store.data.len()));
                    store
                        .scales
                        .reserve_exact(slots.saturating_sub(store.scales.len()));
                }
            }
        }
    }

    /// A new cache holding a copy of this one's first `positions` positions and nothing else
    /// (neither the rest of the history nor spare capacity): what [`KvCache::truncate`] on a
    /// clone would hold, without copying what it would drop.
    pub fn prefix(&self, positions: usize) -> KvCache {
        let len = positions.min(self.len);
        let separate = self.first_is_separate();
        let slots = if separate { len.saturating_sub(1) } else { len };
        let (hd, codes) = (self.hd, self.bits.head_bytes(self.hd));
        let keep_first = separate && len > 0;
        let copy = |stores: &Vec<HeadStore>| -> Vec<HeadStore> {
            stores
                .iter()
                .map(|h| h.prefix(slots, hd, codes, keep_first))
                .collect()
        };
        KvCache {
            bits: self.bits,
            nkv: self.nkv,
            hd,
            capacity: self.capacity,
            len,
            layers: self
                .layers
                .iter()
                .map(|[k, v]| [copy(k), copy(v)])
                .collect(),
        }
    }

    /// Gives back the spare capacity [`KvCache::reserve`] took (a cache kept after its sequence
    /// ended grows no more).
    pub fn shrink_to_fit(&mut self) {
        for store in self.layers.iter_mut().flatten().flatten() {
            store.shrink_to_fit();
        }
    }

    /// Keeps the first `positions` positions (a shared prompt prefix) and forgets the rest; a
    /// cache cut this way continues exactly as one that only ever held those positions.
    pub fn truncate(&mut self, positions: usize) {
        let len = positions.min(self.len);
        let (hd, bits) = (self.hd, self.bits);
        let slots = if self.first_is_separate() {
            len.saturating_sub(1)
        } else {
            len
        };
        for store in self.layers.iter_mut().flatten().flatten() {
            store.full.truncate(slots * hd);
            store.half.truncate(slots * hd);
            store.data.truncate(slots * bits.head_bytes(hd));
            store.scales.truncate(slots);
            if len == 0 {
                store.first.clear();
            }
        }
        self.len = len;
    }

    /// Separate 8-bit storage for position 0 when the cache is narrower than 8 bits.
    fn first_is_separate(&self) -> bool {
        self.bits.is_integer() && self.bits.bits() < 8
    }

    /// Appends `n` positions (`len..len+n`) of layer `layer`'s keys and values `[n, nkv·hd]`.
    /// Every layer appends the same positions; [`KvCache::advance`] then commits them.
    pub(crate) fn append(&mut self, layer: usize, keys: &[f32], values: &[f32]) {
        let (nkv, hd, start) = (self.nkv, self.hd, self.len);
        let separate = self.first_is_separate();
        let bits = self.bits;
        // Entries beyond the committed positions are left over from a forward call that failed
        // part-way (after this layer appended, before `advance`): drop them first.
        let stored = if separate {
            start.saturating_sub(1)
        } else {
            start
        };
        let [kp, vp] = &mut self.layers[layer];
        for store in kp.iter_mut().chain(vp.iter_mut()) {
            store.full.truncate(stored * hd);
            store.half.truncate(stored * hd);
            store.data.truncate(stored * bits.head_bytes(hd));
            store.scales.truncate(stored);
        }
        for (plane, rows) in [(kp, keys), (vp, values)] {
            for (i, row) in rows.chunks_exact(nkv * hd).enumerate() {
                let pos = start + i;
                for (store, head) in plane.iter_mut().zip(row.chunks_exact(hd)) {
                    if separate && pos == 0 {
                        store.first = vec![0; hd];
                        store.first_scale = quantize_head(head, 8, &mut store.first);
                        continue;
                    }
                    match bits {
                        KvBits::F32 => store.full.extend_from_slice(head),
                        KvBits::F16 => {
                            // One F16C conversion per 8 values where the CPU has it (the
                            // per-value conversion was ≈ 1.5% of an a8 prefill, on the
                            // calling thread); the same round-to-nearest-even either way.
                            let at = store.half.len();
                            store.half.resize(at + hd, f16::ZERO);
                            store.half[at..].convert_from_f32_slice(head);
                        }
                        b => {
                            let at = store.data.len();
                            store.data.resize(at + b.head_bytes(hd), 0);
                            store
                                .scales
                                .push(quantize_head(head, b.bits(), &mut store.data[at..]));
                        }
                    }
                }
            }
        }
    }

    /// Commits `n` positions appended to every layer.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Layer `layer`'s keys (or values) of KV head `head` at `positions` as stored, when the
    /// cache holds them as floats (f32 / f16): attention reads them in place. `None` for integer
    /// caches, which [`KvCache::read`] dequantizes.
    pub(crate) fn stored_rows(
        &self,
        layer: usize,
        plane: Plane,
        head: usize,
        positions: std::ops::Range<usize>,
    ) -> Option<HistoryRows<'_>> {
        let store = &self.layers[layer][plane.index()][head];
        let span = positions.start * self.hd..positions.end * self.hd;
        match self.bits {
            KvBits::F32 => Some(HistoryRows::F32(&store.full[span])),
            KvBits::F16 => Some(HistoryRows::F16(&store.half[span])),
            _ => None,
        }
    }

    /// Layer `layer`'s 4-bit keys (or values) of KV head `head` at `positions`, the codes and
    /// scales in place. Position 0 is kept apart at 8 bits ([`KvCache::read`] widens it), so
    /// `positions` must start at 1 or later; a 4-bit cache only.
    pub(crate) fn int4_codes(
        &self,
        layer: usize,
        plane: Plane,
        head: usize,
        positions: std::ops::Range<usize>,
    ) -> Result<Int4Rows<'_>> {
        if self.bits != KvBits::Int4 {
            return Err(EngineError::Input(format!(
                "4-bit KV codes asked of a {} cache",
                self.bits.name()
            )));
        }
        let store = &self.layers[layer][plane.index()][head];
        // Positions stored: position 0 apart, then one slot each (appended rows included).
        let stored = store.scales.len() + 1;
        if positions.start == 0 || positions.end > stored {
            return Err(EngineError::Input(format!(
                "4-bit KV codes of positions {positions:?}: {stored} positions stored, and \
                 position 0 is kept apart at 8 bits"
            )));
        }
        let (codes, scales) = self.integer_rows(store, positions);
        Ok(Int4Rows { codes, scales })
    }

    /// The codes and scales of `positions` in an integer store (none of them a position kept
    /// apart): slot `p − 1` of position `p` when position 0 is kept apart, else slot `p`.
    fn integer_rows<'a>(
        &self,
        store: &'a HeadStore,
        positions: std::ops::Range<usize>,
    ) -> (&'a [u8], &'a [f32]) {
        let head_bytes = self.bits.head_bytes(self.hd);
        let shift = usize::from(self.first_is_separate());
        let slots = positions.start - shift..positions.end - shift;
        let codes = &store.data[slots.start * head_bytes..slots.end * head_bytes];
        (codes, &store.scales[slots])
    }

    /// Dequantizes layer `layer`'s keys (or values) of KV head `head` at positions `positions`
    /// into `out` `[positions.len(), hd]`. Attention reads a head's history a chunk at a time,
    /// so the dequantized copy stays in L1 instead of being materialized whole every step.
    pub(crate) fn read(
        &self,
        path: KernelPath,
        layer: usize,
        plane: Plane,
        head: usize,
        positions: std::ops::Range<usize>,
        out: &mut [f32],
    ) -> Result<()> {
        let store = &self.layers[layer][plane.index()][head];
        let hd = self.hd;
        let out = &mut out[..positions.len() * hd];
        let span = positions.start * hd..positions.end * hd;
        match self.bits {
            KvBits::F32 => out.copy_from_slice(&store.full[span]),
            KvBits::F16 => store.half[span].convert_to_f32_slice(out),
            b => {
                let separate = self.first_is_separate();
                let mut out = out;
                let mut first = positions.start;
                if separate && first == 0 && !positions.is_empty() {
                    let (o, rest) = out.split_at_mut(hd);
                    kv_codec::dequantize_rows(path, 8, hd, &store.first, &[store.first_scale], o)?;
                    out = rest;
                    first = 1;
                }
                let (codes, scales) = self.integer_rows(store, first..positions.end);
                kv_codec::dequantize_rows(path, b.bits(), hd, codes, scales, out)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_cache_rows_round_like_the_per_value_conversion() {
        // Ties to even (1 + 2^-11 rounds down, 1 + 3·2^-11 up), subnormals, the largest finite
        // value, overflow to infinity and signed zero, then a spread of ordinary values.
        let special = [
            1.0 + 2f32.powi(-11),
            1.0 + 3.0 * 2f32.powi(-11),
            1e-7,
            -3e-6,
            65504.0,
            65520.0,
            -1e9,
            -0.0,
        ];
        let config = micro_config();
        let (nkv, hd) = (config.num_kv_heads, config.head_dim);
        let row: Vec<f32> = (0..nkv * hd)
            .map(|i| {
                special
                    .get(i)
                    .copied()
                    .unwrap_or((i as f32 * 0.731).sin() * 17.3)
            })
            .collect();
        let mut cache = KvCache::new(&config, KvBits::F16);
        cache.append(0, &row, &row);
        cache.advance(1);
        for (g, head) in row.chunks_exact(hd).enumerate() {
            let expected: Vec<u16> = head.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
            for plane in &cache.layers[0] {
                let got: Vec<u16> = plane[g].half.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, expected, "KV head {g}");
            }
        }
    }

    #[test]
    fn entries_of_a_failed_call_are_dropped_by_the_next_append() {
        let config = micro_config();
        let row = config.num_kv_heads * config.head_dim;
        for bits in KvBits::ALL {
            let mut cache = KvCache::new(&config, bits);
            // A call that appended 3 positions to layer 0 and then failed (no advance).
            cache.append(0, &vec![9.0; 3 * row], &vec![9.0; 3 * row]);
            // The retry appends 2 positions to every layer and commits them.
            let keys: Vec<f32> = (0..2 * row).map(|i| (i % 7) as f32 - 3.0).collect();
            for l in 0..config.num_layers {
                cache.append(l, &keys, &keys);
            }
            cache.advance(2);
            let mut out = vec![0.0; 2 * config.head_dim];
            cache
                .read(KernelPath::Scalar, 0, Plane::Keys, 0, 0..2, &mut out)
                .unwrap();
            let mut want = keys[..config.head_dim].to_vec();
            want.extend_from_slice(&keys[row..row + config.head_dim]);
            let tol = if bits == KvBits::Int3 { 1.01 } else { 0.51 };
            for (a, b) in out.iter().zip(&want) {
                assert!((a - b).abs() <= tol, "{}: {out:?} vs {want:?}", bits.name());
            }
            assert!(
                !out.contains(&9.0),
                "{}: stale entries read back",
                bits.name()
            );
        }
    }

    /// The smallest preset, BitNet v2 at INT8: a few layers and KV heads.
    fn micro_config() -> ModelConfig {
        hbit_model::config::preset(
            "micro",
            hbit_model::Variant::BitnetV2,
            hbit_kernels::ActBits::Int8,
        )
        .unwrap()
    }

    /// Where a store's history lives (the vector its bit width uses).
    fn storage(store: &HeadStore, bits: KvBits) -> (usize, usize) {
        match bits {
            KvBits::F32 => (store.full.as_ptr() as usize, store.full.capacity()),
            KvBits::F16 => (store.half.as_ptr() as usize, store.half.capacity()),
            _ => (store.data.as_ptr() as usize, store.data.capacity()),
        }
    }

    #[test]
    fn a_reserved_cache_never_moves_its_history_and_reads_the_same() {
        let config = micro_config();
        let (row, hd) = (config.num_kv_heads * config.head_dim, config.head_dim);
        let positions = 9;
        for bits in KvBits::ALL {
            let mut plain = KvCache::new(&config, bits);
            let mut reserved = KvCache::new(&config, bits);
            reserved.reserve(positions);
            let mut first_place = None;
            for p in 0..positions {
                let keys: Vec<f32> = (0..row).map(|i| ((i * 7 + p) % 13) as f32 - 6.0).collect();
                let values: Vec<f32> = keys.iter().map(|v| 0.25 * v - 1.0).collect();
                for cache in [&mut plain, &mut reserved] {
                    for l in 0..config.num_layers {
                        cache.append(l, &keys, &values);
                    }
                    cache.advance(1);
                }
                // Position 0 of a narrow cache is kept apart: the store starts at position 1.
                let place: Vec<(usize, usize)> = reserved
                    .layers
                    .iter()
                    .flatten()
                    .flatten()
                    .map(|s| storage(s, bits))
                    .collect();
                if place.iter().all(|&(_, capacity)| capacity > 0) {
                    let first = first_place.get_or_insert_with(|| place.clone());
                    assert_eq!(&place, first, "{}: history moved at {p}", bits.name());
                }
            }
            assert!(first_place.is_some(), "{}: nothing stored", bits.name());
            assert_eq!(plain.bytes(), reserved.bytes(), "{}", bits.name());
            assert_eq!(
                plain.bytes(),
                KvCache::bytes_for(&config, bits, positions),
                "{}",
                bits.name()
            );
            for plane in Plane::BOTH {
                let (mut a, mut b) = (vec![0.0; positions * hd], vec![0.0; positions * hd]);
                plain
                    .read(KernelPath::Scalar, 1, plane, 0, 0..positions, &mut a)
                    .unwrap();
                reserved
                    .read(KernelPath::Scalar, 1, plane, 0, 0..positions, &mut b)
                    .unwrap();
                assert_eq!(a, b, "{}", bits.name());
            }
        }
        // Past the context, room is made for the context only.
        let mut cache = KvCache::new(&config, KvBits::F32);
        cache.reserve(usize::MAX);
        let (_, capacity) = storage(&cache.layers[0][0][0], KvBits::F32);
        assert_eq!(capacity, config.max_position_embeddings * hd);
    }

    #[test]
    fn a_range_read_equals_the_same_positions_of_a_whole_read() {
        let config = micro_config();
        let (row, hd) = (config.num_kv_heads * config.head_dim, config.head_dim);
        for bits in KvBits::ALL {
            let mut cache = KvCache::new(&config, bits);
            let keys: Vec<f32> = (0..5 * row).map(|i| ((i * 13) % 11) as f32 - 5.0).collect();
            let values: Vec<f32> = keys.iter().map(|v| 0.5 * v + 1.0).collect();
            for l in 0..config.num_layers {
                cache.append(l, &keys, &values);
            }
            cache.advance(5);
            for plane in Plane::BOTH {
                let mut whole = vec![0.0; 5 * hd];
                cache
                    .read(KernelPath::Scalar, 1, plane, 0, 0..5, &mut whole)
                    .unwrap();
                for path in KernelPath::supported() {
                    for (a, b) in [(0, 1), (1, 4), (2, 5), (4, 5), (0, 5)] {
                        let mut part = vec![f32::NAN; (b - a) * hd];
                        cache.read(path, 1, plane, 0, a..b, &mut part).unwrap();
                        assert_eq!(
                            part,
                            whole[a * hd..b * hd],
                            "{} {path}: {a}..{b}",
                            bits.name()
                        );
                    }
                }
                // The whole read equals the per-head definition.
                let want: Vec<f32> = (0..5)
                    .flat_map(|p| {
                        keys[p * row..p * row + hd].iter().map(|&k| match plane {
                            Plane::Values => 0.5 * k + 1.0,
                            Plane::Keys => k,
                        })
                    })
                    .collect();
                let tol = if bits == KvBits::Int3 { 1.01 } else { 0.51 };
                for (g, w) in whole.iter().zip(&want) {
                    assert!((g - w).abs() <= tol, "{}: {g} vs {w}", bits.name());
                }
            }
        }
    }

    #[test]
    fn parse_names() {
        assert_eq!(KvBits::parse("16").unwrap(), KvBits::F16);
        assert_eq!(KvBits::parse("int3").unwrap(), KvBits::Int3);
        assert!(KvBits::parse("2")
            .unwrap_err()
            .to_string()
            .contains("32, 16, 8, 4, 3"));
        assert_eq!(KvBits::Int3.head_bytes(64), 24);
    }
}
