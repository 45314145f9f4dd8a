//! Block-quantized rows below 8 bits for the LM head, in the manner of llama.cpp's Q6_K / Q4_K
//! but simpler: every 32 consecutive weights of a row share one f16 scale `d`, and each weight is
//! a signed code `q` of 6 bits (−32..=31) or 4 bits (−8..=7), so `W[r, k] = d · q` at 6.5 or
//! 4.5 bits per weight. At decode the head GEMV reads the whole matrix per token; these halve
//! (4-bit) or cut by a fifth (6-bit) the bytes of the 8-bit head.
//!
//! `d · q` is exact in f32 (an 11-bit significand times at most 6 bits), so a kernel that widens
//! a block and then runs the f32 product's defined order (`float_gemv`) is bit-identical to the
//! scalar reference.
//!
//! Layout of a row, 16 weights (a group) at a time; codes are stored as `q + 8` (4-bit) or
//! `q + 32` (6-bit):
//! * 8 bytes of low nibbles: byte `i` holds weight `i` in bits 0–3 and weight `i + 8` in bits 4–7;
//! * 6-bit only, 4 more bytes of high bit pairs: byte `j` holds bits 4–5 of weights `j`, `j + 4`,
//!   `j + 8`, `j + 12` at bits 0, 2, 4, 6 (one 32-bit word, so a vector shift spreads them).
//!
//! Scales: `rows · cols / 32` f16 values, row-major.
//!
//! 4-bit rows whose length is a multiple of 64 also have an integer product ([`dot4_scalar`],
//! [`Dot4`]): activations at INT8 absmax per block of 32 ([`Int4HeadActs`]) meet the nibbles in
//! exact integer sums (VNNI `vpdpbusd`, AVX2 `vpmaddubsw`), so the codes are never widened.

use half::f16;

use crate::error::KernelError;

/// Weights sharing one scale.
pub const BLOCK: usize = 32;
/// Weights per group of the byte layout.
pub const GROUP: usize = 16;

/// Code width of a block-quantized matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockBits {
    Six,
    Four,
}

impl BlockBits {
    pub fn from_bits(bits: u8) -> Option<BlockBits> {
        match bits {
            6 => Some(BlockBits::Six),
            4 => Some(BlockBits::Four),
            _ => None,
        }
    }

    pub fn bits(self) -> u8 {
        match self {
            BlockBits::Six => 6,
            BlockBits::Four => 4,
        }
    }

    /// Bytes of one group of 16 weights.
    pub fn group_bytes(self) -> usize {
        match self {
            BlockBits::Six => 12,
            BlockBits::Four => 8,
        }
    }

    /// `2^(bits − 1)`: codes run over `−offset..offset`, stored as `q + offset`.
    pub fn offset(self) -> i32 {
        match self {
            BlockBits::Six => 32,
            BlockBits::Four => 8,
        }
    }

    /// Bytes of the codes of one row of `cols` weights (`cols` a multiple of [`BLOCK`]).
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / GROUP * self.group_bytes()
    }
}

/// Checks that `cols` can be block-quantized.
pub fn check_cols(cols: usize) -> Result<(), KernelError> {
    if cols == 0 || !cols.is_multiple_of(BLOCK) {
        return Err(KernelError::InvalidSize {
            what: "block-quantized columns",
            found: cols,
            reason: "must be a non-zero multiple of 32",
        });
    }
    Ok(())
}

/// Code `q` of weight `k` of one row's bytes.
#[inline]
pub fn code_at(bits: BlockBits, row: &[u8], k: usize) -> i32 {
    let (g, i) = (k / GROUP, k % GROUP);
    let base = g * bits.group_bytes();
    let low = if i < 8 {
        row[base + i] & 0x0F
    } else {
        row[base + i - 8] >> 4
    } as i32;
    let high = match bits {
        BlockBits::Four => 0,
        BlockBits::Six => ((row[base + 8 + i % 4] >> (2 * (i / 4))) & 3) as i32,
    };
    (low | high << 4) - bits.offset()
}

/// Weight `k` of a row: `d · q` (exact in f32).
#[inline]
pub fn value_at(bits: BlockBits, row: &[u8], row_scales: &[f16], k: usize) -> f32 {
    row_scales[k / BLOCK].to_f32() * code_at(bits, row, k) as f32
}

/// Codes and scales of `w` `[rows, cols]`. Each block's codes come from the candidate scale,
/// near `max|w| / 2^(bits−1)`, whose least-squares refit leaves the least squared error
/// (llama.cpp's quantizers search the same way); the refit scale is stored at f16.
pub fn quantize_rows(
    w: &[f32],
    rows: usize,
    cols: usize,
    bits: BlockBits,
) -> Result<(Vec<u8>, Vec<f16>), KernelError> {
    check_cols(cols)?;
    if w.len() != rows * cols {
        return Err(KernelError::LengthMismatch {
            what: "weights to block-quantize [rows, cols]",
            expected: rows * cols,
            found: w.len(),
        });
    }
    quantize_rows_from(rows, cols, bits, |r, out| {
        out.copy_from_slice(&w[r * cols..(r + 1) * cols])
    })
}

/// Rows quantized per part of [`quantize_rows_from`] (their f32 copy stays in cache).
const PART_ROWS: usize = 64;

/// [`quantize_rows`] of a matrix given a row at a time (`row_into(r, out)` writes row `r`'s
/// `cols` values), e.g. an f16 embedding: only a part's rows are ever widened to f32.
pub fn quantize_rows_from(
    rows: usize,
    cols: usize,
    bits: BlockBits,
    row_into: impl Fn(usize, &mut [f32]) + Sync,
) -> Result<(Vec<u8>, Vec<f16>), KernelError> {
    check_cols(cols)?;
    let row_bytes = bits.row_bytes(cols);
    let parts = rows.div_ceil(PART_ROWS);
    let avx2 = wide_quantizer_applies();
    let done = crate::parallel::map_parts(parts, |p| {
        let (r0, r1) = (PART_ROWS * p, (PART_ROWS * p + PART_ROWS).min(rows));
        let mut part = vec![0.0f32; (r1 - r0) * cols];
        for (r, out) in (r0..r1).zip(part.chunks_exact_mut(cols)) {
            row_into(r, out);
        }
        if let Some(k) = part
            .iter()
            .position(|v| !v.is_finite() || v.abs() > MAX_WEIGHT)
        {
            return Err(KernelError::InvalidSize {
                what: "weight to block-quantize (row-major index)",
                found: r0 * cols + k,
                reason: "must be finite and at most 65504 in magnitude (the f16 scale's range)",
            });
        }
        let mut codes = vec![0u8; (r1 - r0) * row_bytes];
        let mut scales = Vec::with_capacity((r1 - r0) * cols / BLOCK);
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU has AVX2 (checked by `wide_quantizer_applies`).
            unsafe { quantize_part_avx2(&part, cols, bits, &mut codes, &mut scales) };
            return Ok((codes, scales));
        }
        let _ = avx2;
        quantize_part(&part, cols, bits, &mut codes, &mut scales);
        Ok((codes, scales))
    });
    let mut codes = Vec::with_capacity(rows * row_bytes);
    let mut scales = Vec::with_capacity(rows * cols / BLOCK);
    for part in done {
        let (c, s) = part?;
        codes.extend_from_slice(&c);
        scales.extend_from_slice(&s);
    }
    Ok((codes, scales))
}

/// Whether [`quantize_rows`] runs [`quantize_part`] compiled for AVX2 (the same code, so the
/// same codes and scales bit for bit; wider vectors for its rounding and sums).
fn wide_quantizer_applies() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // `HBIT_KERNEL_PATH=scalar` runs the scalar build, as it does every kernel.
        crate::active_path().is_ok_and(|p| p != crate::KernelPath::Scalar)
            && std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`quantize_part`] compiled for AVX2.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_part_avx2(
    w: &[f32],
    cols: usize,
    bits: BlockBits,
    codes: &mut [u8],
    scales: &mut Vec<f16>,
) {
    quantize_part(w, cols, bits, codes, scales)
}

/// Rows `w` `[n, cols]` into `codes` `[n, row_bytes]`, their scales pushed onto `scales`.
#[inline(always)]
fn quantize_part(w: &[f32], cols: usize, bits: BlockBits, codes: &mut [u8], scales: &mut Vec<f16>) {
    let row_bytes = bits.row_bytes(cols);
    for (row, out) in w.chunks_exact(cols).zip(codes.chunks_exact_mut(row_bytes)) {
        for (b, block) in row.chunks_exact(BLOCK).enumerate() {
            let block: &[f32; BLOCK] = block.try_into().expect("chunks of BLOCK");
            let (d, q) = quantize_block(block, bits);
            scales.push(d);
            for (i, &qi) in q.iter().enumerate() {
                put_code(bits, out, b * BLOCK + i, qi);
            }
        }
    }
}

/// Largest weight magnitude [`quantize_rows`] takes: a block's scale is about `max|w| / 8` at
/// f16, whose largest finite value is 65504.
const MAX_WEIGHT: f32 = 65504.0;

/// One block's scale and codes (see [`quantize_rows`]).
#[inline(always)]
fn quantize_block(x: &[f32; BLOCK], bits: BlockBits) -> (f16, [i32; BLOCK]) {
    let n = bits.offset() as f32;
    let (lo, hi) = (-bits.offset(), bits.offset() - 1);
    // The element of largest magnitude, with its sign: it maps to −2^(bits−1), the code with no
    // positive twin, so the grid's extra level is not wasted.
    let m = x
        .iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let mut best = (f16::ZERO, [0i32; BLOCK]);
    if m == 0.0 || !m.is_finite() {
        return best;
    }
    let sum_sq = lanes_sum(|i| f64::from(x[i]) * f64::from(x[i]));
    let mut best_err = f64::INFINITY;
    for step in -4..=4 {
        let iscale = -(n + 0.1 * step as f32) / m;
        let mut q = [0i32; BLOCK];
        for (qi, &v) in q.iter_mut().zip(x) {
            *qi = crate::quant::round_clip_i32(v * iscale, lo, hi);
        }
        let qq: i32 = q.iter().map(|&qi| qi * qi).sum();
        if qq == 0 {
            continue;
        }
        // Least-squares scale for these codes (at f16, as stored), and the squared error it
        // leaves, Σ (x − d·q)² = Σx² − 2d·Σxq + d²·Σq², in one pass over the block.
        let xq = lanes_sum(|i| f64::from(x[i]) * f64::from(q[i]));
        let d = f16::from_f64(xq / f64::from(qq));
        let df = d.to_f64();
        let err = sum_sq - 2.0 * df * xq + df * df * f64::from(qq);
        if err < best_err {
            best_err = err;
            best = (d, q);
        }
    }
    best
}

/// `Σ term(i)` over a block in four interleaved partial sums (independent add chains; the
/// order is fixed, so the result is the same on every machine).
#[inline(always)]
fn lanes_sum(term: impl Fn(usize) -> f64) -> f64 {
    let mut acc = [0.0f64; 4];
    for c in 0..BLOCK / 4 {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += term(4 * c + l);
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

/// Stores code `q` of weight `k` into a row's bytes (the inverse of [`code_at`]).
#[inline(always)]
fn put_code(bits: BlockBits, row: &mut [u8], k: usize, q: i32) {
    let u = (q + bits.offset()) as u8;
    let (g, i) = (k / GROUP, k % GROUP);
    let base = g * bits.group_bytes();
    if i < 8 {
        row[base + i] = (row[base + i] & 0xF0) | (u & 0x0F);
    } else {
        row[base + i - 8] = (row[base + i - 8] & 0x0F) | ((u & 0x0F) << 4);
    }
    if bits == BlockBits::Six {
        let (j, shift) = (base + 8 + i % 4, 2 * (i / 4));
        row[j] = (row[j] & !(3 << shift)) | (((u >> 4) & 3) << shift);
    }
}

/// Weights per chunk of the 4-bit integer product: 32 bytes of codes, two blocks.
pub const CHUNK: usize = 64;

/// The weight of chunk byte `j` (0..64) once the chunk's 32 bytes are split into their low
/// nibbles (bytes 0–31) and high nibbles (bytes 32–63): see the layout in the module docs.
#[inline]
pub fn chunk_weight(j: usize) -> usize {
    let (half, jj) = (j / 32, j % 32);
    16 * (jj / 8) + 8 * half + jj % 8
}

/// Block (0 or 1) of a chunk's i32 lane `l` (bytes `4l..4l + 4`).
#[inline]
pub fn lane_block(l: usize) -> usize {
    (l % 8) / 4
}

/// Activations for the 4-bit integer product ([`dot4`]): per token and block of 32, INT8 absmax
/// codes `xq = RoundClip(x / s, −127, 127)`, `s = max|x| / 127`, in chunk order; and per chunk
/// lane the scale `s` and the offset term `8 · s · Σ xq` over the lane's four bytes, which
/// removes the `+ 8` of the stored codes.
#[derive(Debug, Clone)]
pub struct Int4HeadActs {
    cols: usize,
    /// `[tokens, cols]`, chunk-ordered.
    codes: Vec<i8>,
    /// `[tokens, cols / 64, 16]`.
    lane_scale: Vec<f32>,
    /// `[tokens, cols / 64, 16]`.
    lane_offset: Vec<f32>,
}

/// Whether the 4-bit integer product applies: 4-bit codes and whole chunks.
pub fn int4_product_applies(bits: BlockBits, cols: usize) -> bool {
    bits == BlockBits::Four && cols > 0 && cols.is_multiple_of(CHUNK)
}

impl Int4HeadActs {
    /// Quantizes `x` `[tokens, cols]` (`cols` a non-zero multiple of 64).
    pub fn new(x: &[f32], cols: usize) -> Int4HeadActs {
        assert!(cols > 0 && cols.is_multiple_of(CHUNK) && x.len().is_multiple_of(cols));
        let tokens = x.len() / cols;
        let chunks = cols / CHUNK;
        let mut codes = vec![0i8; x.len()];
        let mut lane_scale = vec![0.0f32; tokens * chunks * 16];
        let mut lane_offset = vec![0.0f32; tokens * chunks * 16];
        for t in 0..tokens {
            for c in 0..chunks {
                let xs = &x[t * cols + c * CHUNK..][..CHUNK];
                let mut q = [0i8; CHUNK];
                let mut scale = [0.0f32; 2];
                for (b, s) in scale.iter_mut().enumerate() {
                    let block = &xs[b * BLOCK..][..BLOCK];
                    let absmax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    *s = absmax / 127.0;
                    if block.iter().any(|v| !v.is_finite()) {
                        // A NaN or infinite hidden state gives NaN logits, as the float heads do.
                        *s = f32::NAN;
                    } else if absmax > 0.0 {
                        for (k, &v) in block.iter().enumerate() {
                            q[b * BLOCK + k] =
                                crate::quant::round_clip(v / *s, -127.0, 127.0) as i8;
                        }
                    }
                }
                let out = &mut codes[t * cols + c * CHUNK..][..CHUNK];
                for (j, o) in out.iter_mut().enumerate() {
                    *o = q[chunk_weight(j)];
                }
                let lanes = (t * chunks + c) * 16;
                for l in 0..16 {
                    let s = scale[lane_block(l)];
                    let sum: i32 = out[4 * l..4 * l + 4].iter().map(|&v| v as i32).sum();
                    lane_scale[lanes + l] = s;
                    lane_offset[lanes + l] = 8.0 * s * sum as f32;
                }
            }
        }
        Int4HeadActs {
            cols,
            codes,
            lane_scale,
            lane_offset,
        }
    }

    pub fn tokens(&self) -> usize {
        self.codes.len() / self.cols
    }
}

/// Row `row` (4-bit codes, `scales` its f16 block scales) times token `t` of `acts`, in the
/// defined order: per chunk and lane `l`, the exact integer `Σ (q + 8) · xq` over the lane's four
/// bytes, then `f = isum · s − offset` (one rounding) and `acc[l] += f · d` (one rounding);
/// then `a = acc[0..8] + acc[8..16]` lane-wise, reduced as
/// `((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7))`.
pub fn dot4_scalar(row: &[u8], scales: &[f16], acts: &Int4HeadActs, t: usize) -> f32 {
    let cols = acts.cols;
    let chunks = cols / CHUNK;
    let x = &acts.codes[t * cols..][..cols];
    let mut acc = [0.0f32; 16];
    for c in 0..chunks {
        let bytes = &row[c * 32..][..32];
        let xs = &x[c * CHUNK..][..CHUNK];
        let lanes = (t * chunks + c) * 16;
        for (l, a) in acc.iter_mut().enumerate() {
            let mut isum = 0i32;
            for j in 4 * l..4 * l + 4 {
                let code = if j < 32 {
                    bytes[j] & 0x0F
                } else {
                    bytes[j - 32] >> 4
                };
                isum += code as i32 * xs[j] as i32;
            }
            let f = (isum as f32).mul_add(acts.lane_scale[lanes + l], -acts.lane_offset[lanes + l]);
            let d = scales[2 * c + lane_block(l)].to_f32();
            *a = f.mul_add(d, *a);
        }
    }
    let s: [f32; 8] = std::array::from_fn(|l| acc[l] + acc[l + 8]);
    ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]))
}

/// The kernel that runs [`dot4_scalar`]'s product on a path, chosen once per matrix product from
/// what this CPU has (opaque, so safe code cannot pick one the CPU lacks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dot4(Dot4Kernel);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dot4Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl Dot4 {
    /// The fastest kernel `path` allows on this CPU (scalar for a path the CPU lacks).
    pub fn for_path(path: crate::KernelPath) -> Dot4 {
        #[cfg(target_arch = "x86_64")]
        if path.is_supported() && path != crate::KernelPath::Scalar {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            let vnni = has!("avx512f") && has!("avx512bw") && has!("avx512vnni");
            match path {
                crate::KernelPath::Avx512 if avx2 && vnni => return Dot4(Dot4Kernel::Avx512Vnni),
                _ if avx2 => return Dot4(Dot4Kernel::Avx2),
                _ => {}
            }
        }
        let _ = path;
        Dot4(Dot4Kernel::Scalar)
    }

    /// Row `row` (codes and block scales) times token `t` of `acts`, bit for bit
    /// [`dot4_scalar`] (for non-NaN values).
    pub fn dot(self, row: &[u8], scales: &[f16], acts: &Int4HeadActs, t: usize) -> f32 {
        match self.0 {
            Dot4Kernel::Scalar => dot4_scalar(row, scales, acts, t),
            // SAFETY: `for_path` chose this only after detecting AVX2, FMA and F16C; the
            // function asserts the slice lengths it reads.
            #[cfg(target_arch = "x86_64")]
            Dot4Kernel::Avx2 => unsafe { simd::dot4_avx2(row, scales, acts, t) },
            // SAFETY: as above, and AVX-512 F, BW and VNNI were detected too.
            #[cfg(target_arch = "x86_64")]
            Dot4Kernel::Avx512Vnni => unsafe { simd::dot4_avx512(row, scales, acts, t) },
        }
    }
}

/// Widening of one group (16 weights) to f32, `d · q` per lane, for the float product's tiles.
#[cfg(target_arch = "x86_64")]
pub(crate) mod simd {
    use super::{BlockBits, Int4HeadActs, CHUNK};
    // The float product's final reduction: the order [`super::dot4_scalar`] also uses.
    use crate::float_gemv::simd::{reduce, reduce_halves};
    use half::f16;
    use std::arch::x86_64::*;

    /// The two f16 block scales of chunk `c`, widened, in lanes 0 and 1.
    ///
    /// # Safety
    /// F16C must be present; `scales` must hold `2c + 2` values.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn chunk_scales(scales: &[f16], c: usize) -> __m128 {
        debug_assert!(scales.len() >= 2 * c + 2);
        // SAFETY: two f16 values (4 bytes) at 2c are in `scales` (caller).
        let word = unsafe { std::ptr::read_unaligned(scales.as_ptr().add(2 * c) as *const i32) };
        _mm_cvtph_ps(_mm_cvtsi32_si128(word))
    }

    /// [`super::dot4_scalar`] with `vpmaddubsw` / `vpmaddwd` (the same exact lane sums).
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be present; `row` and `scales` must hold the row's codes and
    /// scales for `acts`' columns, and `t` must be one of its tokens.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot4_avx2(row: &[u8], scales: &[f16], acts: &Int4HeadActs, t: usize) -> f32 {
        let cols = acts.cols;
        let chunks = cols / CHUNK;
        assert!(row.len() >= cols / 2 && scales.len() >= cols / 32 && t < acts.tokens());
        let x = acts.codes[t * cols..][..cols].as_ptr();
        let mask = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let spread = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for c in 0..chunks {
            let lanes = (t * chunks + c) * 16;
            // SAFETY: chunk c's 32 code bytes and 64 activation codes are within the row and
            // the token (asserted); the lane arrays hold 16 values per token and chunk.
            unsafe {
                let y = _mm256_loadu_si256(row.as_ptr().add(32 * c) as *const __m256i);
                let lo = _mm256_and_si256(y, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(y), mask);
                let x0 = _mm256_loadu_si256(x.add(CHUNK * c) as *const __m256i);
                let x1 = _mm256_loadu_si256(x.add(CHUNK * c + 32) as *const __m256i);
                let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x0), ones);
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x1), ones);
                let ls = acts.lane_scale.as_ptr().add(lanes);
                let lo_ = acts.lane_offset.as_ptr().add(lanes);
                let f0 = _mm256_fmsub_ps(
                    _mm256_cvtepi32_ps(p0),
                    _mm256_loadu_ps(ls),
                    _mm256_loadu_ps(lo_),
                );
                let f1 = _mm256_fmsub_ps(
                    _mm256_cvtepi32_ps(p1),
                    _mm256_loadu_ps(ls.add(8)),
                    _mm256_loadu_ps(lo_.add(8)),
                );
                let d = _mm256_permutevar8x32_ps(
                    _mm256_castps128_ps256(chunk_scales(scales, c)),
                    spread,
                );
                acc0 = _mm256_fmadd_ps(f0, d, acc0);
                acc1 = _mm256_fmadd_ps(f1, d, acc1);
            }
        }
        reduce(_mm256_add_ps(acc0, acc1))
    }

    /// [`super::dot4_scalar`] with AVX-512 VNNI `vpdpbusd` (the same exact lane sums).
    ///
    /// # Safety
    /// AVX-512 F, BW and VNNI, AVX2, FMA and F16C must be present; arguments as for
    /// [`dot4_avx2`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn dot4_avx512(row: &[u8], scales: &[f16], acts: &Int4HeadActs, t: usize) -> f32 {
        let cols = acts.cols;
        let chunks = cols / CHUNK;
        assert!(row.len() >= cols / 2 && scales.len() >= cols / 32 && t < acts.tokens());
        let x = acts.codes[t * cols..][..cols].as_ptr();
        let mask = _mm256_set1_epi8(0x0F);
        let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1);
        let mut acc = _mm512_setzero_ps();
        for c in 0..chunks {
            let lanes = (t * chunks + c) * 16;
            // SAFETY: as in `dot4_avx2`.
            unsafe {
                let y = _mm256_loadu_si256(row.as_ptr().add(32 * c) as *const __m256i);
                let lo = _mm256_and_si256(y, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(y), mask);
                let codes = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                let xv = _mm512_loadu_si512(x.add(CHUNK * c) as *const _);
                let isum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), codes, xv);
                let f = _mm512_fmsub_ps(
                    _mm512_cvtepi32_ps(isum),
                    _mm512_loadu_ps(acts.lane_scale.as_ptr().add(lanes)),
                    _mm512_loadu_ps(acts.lane_offset.as_ptr().add(lanes)),
                );
                let d =
                    _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(chunk_scales(scales, c)));
                acc = _mm512_fmadd_ps(f, d, acc);
            }
        }
        reduce_halves(acc)
    }

    /// Bits 4–5 of weight `i` sit in the group's high word at `8·(i % 4) + 2·(i / 4)`.
    const HIGH_SHIFTS: [i32; 16] = [0, 8, 16, 24, 2, 10, 18, 26, 4, 12, 20, 28, 6, 14, 22, 30];

    /// Weights 0–7 and 8–15 of the group at `p`, times `d`.
    ///
    /// # Safety
    /// AVX2 must be present; `p` must have the group's bytes readable (8, or 12 for 6 bits).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn group_avx2(bits: BlockBits, p: *const u8, d: f32) -> (__m256, __m256) {
        // SAFETY: the caller guarantees 8 readable bytes at `p`.
        let bytes = unsafe { _mm_loadl_epi64(p as *const __m128i) };
        let wide = _mm256_cvtepu8_epi32(bytes);
        let mut q0 = _mm256_and_si256(wide, _mm256_set1_epi32(0x0F));
        let mut q1 = _mm256_srli_epi32::<4>(wide);
        if bits == BlockBits::Six {
            // SAFETY: 12 readable bytes for 6 bits (caller); the word is bytes 8..12.
            let word = unsafe { std::ptr::read_unaligned(p.add(8) as *const i32) };
            let h = _mm256_set1_epi32(word);
            // SAFETY: HIGH_SHIFTS has 16 values; each load reads 8 of them.
            let (s0, s1) = unsafe {
                (
                    _mm256_loadu_si256(HIGH_SHIFTS.as_ptr() as *const __m256i),
                    _mm256_loadu_si256(HIGH_SHIFTS.as_ptr().add(8) as *const __m256i),
                )
            };
            let three = _mm256_set1_epi32(3);
            let h0 = _mm256_and_si256(_mm256_srlv_epi32(h, s0), three);
            let h1 = _mm256_and_si256(_mm256_srlv_epi32(h, s1), three);
            q0 = _mm256_or_si256(q0, _mm256_slli_epi32::<4>(h0));
            q1 = _mm256_or_si256(q1, _mm256_slli_epi32::<4>(h1));
        }
        let off = _mm256_set1_epi32(bits.offset());
        let dv = _mm256_set1_ps(d);
        (
            _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q0, off)), dv),
            _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q1, off)), dv),
        )
    }

    /// The group at `p` as one 16-lane vector, times `d`.
    ///
    /// # Safety
    /// AVX-512 F must be present; `p` as for [`group_avx2`].
    #[inline]
    #[target_feature(enable = "avx512f,avx2")]
    pub unsafe fn group_avx512(bits: BlockBits, p: *const u8, d: f32) -> __m512 {
        // SAFETY: the caller guarantees 8 readable bytes at `p`.
        let bytes = unsafe { _mm_loadl_epi64(p as *const __m128i) };
        let mask = _mm_set1_epi8(0x0F);
        let low = _mm_and_si128(bytes, mask);
        let high = _mm_and_si128(_mm_srli_epi16::<4>(bytes), mask);
        // Bytes 0–7: weights 0–7; bytes 8–15: weights 8–15.
        let mut q = _mm512_cvtepu8_epi32(_mm_unpacklo_epi64(low, high));
        if bits == BlockBits::Six {
            // SAFETY: 12 readable bytes for 6 bits (caller); the word is bytes 8..12.
            let word = unsafe { std::ptr::read_unaligned(p.add(8) as *const i32) };
            // SAFETY: HIGH_SHIFTS has 16 values.
            let shifts = unsafe { _mm512_loadu_si512(HIGH_SHIFTS.as_ptr() as *const _) };
            let h = _mm512_and_si512(
                _mm512_srlv_epi32(_mm512_set1_epi32(word), shifts),
                _mm512_set1_epi32(3),
            );
            q = _mm512_or_si512(q, _mm512_slli_epi32::<4>(h));
        }
        let q = _mm512_sub_epi32(q, _mm512_set1_epi32(bits.offset()));
        _mm512_mul_ps(_mm512_cvtepi32_ps(q), _mm512_set1_ps(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_the_layout_by_hand() {
        // Weight k of a 32-wide row gets code (k mod range) − offset: every code value, every
        // nibble and bit-pair position.
        for bits in [BlockBits::Six, BlockBits::Four] {
            let range = 2 * bits.offset();
            let mut row = vec![0u8; bits.row_bytes(64)];
            for k in 0..64 {
                put_code(bits, &mut row, k, (k as i32 * 7) % range - bits.offset());
            }
            for k in 0..64 {
                assert_eq!(
                    code_at(bits, &row, k),
                    (k as i32 * 7) % range - bits.offset()
                );
            }
        }
        // By hand, 4 bits: weight 0 = −8 (nibble 0), weight 8 = 7 (nibble 15) share byte 0.
        let mut row = vec![0u8; 16];
        put_code(BlockBits::Four, &mut row, 0, -8);
        put_code(BlockBits::Four, &mut row, 8, 7);
        assert_eq!(row[0], 0xF0);
        // 6 bits: weight 5 = 31 → stored 63 = 0b11_1111: low nibble 15 in byte 5, bits 4–5 (3)
        // at bit 2 of byte 8 + 5 % 4 = 9.
        let mut row = vec![0u8; 24];
        put_code(BlockBits::Six, &mut row, 5, 31);
        assert_eq!((row[5], row[9]), (0x0F, 0b1100));
    }

    #[test]
    fn known_block_quantizes_exactly() {
        // A block on the 4-bit grid of step 0.5 (−8·0.5 is the largest magnitude) is
        // reproduced exactly, scale and codes.
        let x: Vec<f32> = (0..32).map(|i| 0.5 * ((i % 16) as f32 - 8.0)).collect();
        let (codes, scales) = quantize_rows(&x, 1, 32, BlockBits::Four).unwrap();
        assert_eq!(scales, vec![f16::from_f32(0.5)]);
        for (k, v) in x.iter().enumerate() {
            assert_eq!(value_at(BlockBits::Four, &codes, &scales, k), *v);
        }
        // All zero: scale 0, every weight 0.
        let (codes, scales) = quantize_rows(&[0.0; 32], 1, 32, BlockBits::Six).unwrap();
        assert_eq!(scales, vec![f16::ZERO]);
        assert!((0..32).all(|k| value_at(BlockBits::Six, &codes, &scales, k) == 0.0));
    }

    #[test]
    fn error_within_one_step_and_six_bits_beat_four() {
        let (rows, cols) = (7, 96);
        let mut s = 12345u32;
        let w: Vec<f32> = (0..rows * cols)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5).powi(3)
            })
            .collect();
        let mut sq = [0.0f64; 2];
        for (n, bits) in [BlockBits::Six, BlockBits::Four].into_iter().enumerate() {
            let (codes, scales) = quantize_rows(&w, rows, cols, bits).unwrap();
            assert_eq!(codes.len(), rows * bits.row_bytes(cols));
            assert_eq!(scales.len(), rows * cols / BLOCK);
            for r in 0..rows {
                let row = &codes[r * bits.row_bytes(cols)..][..bits.row_bytes(cols)];
                let rs = &scales[r * cols / BLOCK..][..cols / BLOCK];
                for k in 0..cols {
                    let v = value_at(bits, row, rs, k);
                    let e = (v - w[r * cols + k]).abs();
                    // The refit scale can move the grid off the block's extreme a little:
                    // the error stays within one step.
                    assert!(
                        e <= rs[k / BLOCK].to_f32().abs() * 1.0 + 1e-7,
                        "{bits:?} {e}"
                    );
                    sq[n] += (e as f64).powi(2);
                }
            }
        }
        assert!(
            sq[0] * 8.0 < sq[1],
            "6-bit error {} vs 4-bit {}",
            sq[0],
            sq[1]
        );
    }

    #[test]
    fn int4_product_by_hand_and_on_every_path() {
        // Every weight 0.5 (the largest, positive, maps to q = −8 with d = −1/16), every
        // activation 1: 64 · 0.5 = 32 (activation codes 127 with scale 1/127, so only rounding
        // of that scale can move it).
        let w = vec![0.5f32; 64];
        let (codes, scales) = quantize_rows(&w, 1, 64, BlockBits::Four).unwrap();
        let acts = Int4HeadActs::new(&[1.0; 64], 64);
        assert!((dot4_scalar(&codes, &scales, &acts, 0) - 32.0).abs() < 1e-4);
        // Chunk order: byte j of a chunk is weight chunk_weight(j), a permutation.
        let mut seen: Vec<usize> = (0..CHUNK).map(chunk_weight).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..CHUNK).collect::<Vec<_>>());
        // Random rows and tokens: every path bit for bit the scalar definition.
        let (rows, cols, tokens) = (5, 320, 3);
        let mut s = 777u32;
        let mut next = || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        };
        let w: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
        let x: Vec<f32> = (0..tokens * cols).map(|_| next() * 3.0).collect();
        let (codes, scales) = quantize_rows(&w, rows, cols, BlockBits::Four).unwrap();
        let acts = Int4HeadActs::new(&x, cols);
        let rb = BlockBits::Four.row_bytes(cols);
        for path in crate::KernelPath::supported() {
            let dot = Dot4::for_path(path);
            for r in 0..rows {
                let (row, sc) = (
                    &codes[r * rb..][..rb],
                    &scales[r * cols / 32..][..cols / 32],
                );
                for t in 0..tokens {
                    let want = dot4_scalar(row, sc, &acts, t);
                    assert_eq!(
                        dot.dot(row, sc, &acts, t).to_bits(),
                        want.to_bits(),
                        "{path} {dot:?}"
                    );
                }
            }
        }
    }

    /// Distinct weights and activations, so a wrong chunk order, lane-to-block map or block
    /// scale would be far off: the integer product stays within its rounding of the exact one.
    #[test]
    fn int4_product_is_the_dot_product_to_rounding() {
        let (rows, cols, tokens) = (4, 192, 2);
        let mut s = 4242u32;
        let mut next = || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        };
        let w: Vec<f32> = (0..rows * cols)
            .map(|k| next() * (1.0 + (k % 7) as f32))
            .collect();
        let x: Vec<f32> = (0..tokens * cols)
            .map(|k| next() * (1.0 + (k % 5) as f32))
            .collect();
        let (codes, scales) = quantize_rows(&w, rows, cols, BlockBits::Four).unwrap();
        let acts = Int4HeadActs::new(&x, cols);
        let rb = BlockBits::Four.row_bytes(cols);
        for r in 0..rows {
            let (row, sc) = (
                &codes[r * rb..][..rb],
                &scales[r * cols / 32..][..cols / 32],
            );
            for t in 0..tokens {
                let xt = &x[t * cols..][..cols];
                let (mut exact, mut bound) = (0.0f64, 1e-4);
                for k in 0..cols {
                    let wk = value_at(BlockBits::Four, row, sc, k) as f64;
                    exact += wk * xt[k] as f64;
                    let blk = &xt[k / 32 * 32..][..32];
                    let step = blk.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64 / 127.0;
                    bound += wk.abs() * step * 0.5;
                }
                let got = dot4_scalar(row, sc, &acts, t) as f64;
                assert!(
                    (got - exact).abs() <= bound * 1.01,
                    "{got} vs {exact} (bound {bound})"
                );
            }
        }
        // A NaN activation gives a NaN result.
        let mut xn = x.clone();
        xn[5] = f32::NAN;
        let acts = Int4HeadActs::new(&xn, cols);
        assert!(dot4_scalar(&codes[..rb], &scales[..cols / 32], &acts, 0).is_nan());
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_avx2_quantizer_equals_the_scalar_one_bit_for_bit() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            eprintln!("no AVX2 here: the scalar quantizer is the only path");
            return;
        }
        let (rows, cols) = (5, 256);
        let mut state = 0x9E37_79B9u32;
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let u = (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                // Mixed magnitudes, an outlier per row, a zero block.
                if i % cols == 7 {
                    40.0 * u
                } else if (64..96).contains(&(i % cols)) && i / cols == 2 {
                    0.0
                } else {
                    u * (1 + i % 5) as f32
                }
            })
            .collect();
        for bits in [BlockBits::Four, BlockBits::Six] {
            let row_bytes = bits.row_bytes(cols);
            let (mut c1, mut s1) = (vec![0u8; rows * row_bytes], Vec::new());
            let (mut c2, mut s2) = (vec![0u8; rows * row_bytes], Vec::new());
            quantize_part(&w, cols, bits, &mut c1, &mut s1);
            // SAFETY: AVX2 was checked above.
            unsafe { quantize_part_avx2(&w, cols, bits, &mut c2, &mut s2) };
            assert_eq!(c1, c2);
            assert_eq!(
                s1.iter().map(|d| d.to_bits()).collect::<Vec<_>>(),
                s2.iter().map(|d| d.to_bits()).collect::<Vec<_>>()
            );
            // The row-at-a-time entry gives the same as the whole-matrix one.
            let from = quantize_rows_from(rows, cols, bits, |r, out| {
                out.copy_from_slice(&w[r * cols..(r + 1) * cols])
            })
            .unwrap();
            assert_eq!(from.0, c1);
            assert_eq!(from.1, s1);
        }
    }

    #[test]
    fn a_bad_weight_is_named_by_its_index_in_any_part() {
        // Row 70 lies in the second part of 64 rows: the index is the matrix's, not the part's.
        let (rows, cols) = (80, 32);
        let e = quantize_rows_from(rows, cols, BlockBits::Four, |r, out| {
            out.fill(0.25);
            if r == 70 {
                out[3] = f32::NAN;
            }
        })
        .unwrap_err();
        assert!(e.to_string().contains(&(70 * cols + 3).to_string()), "{e}");
    }

    #[test]
    fn bad_shapes_are_refused() {
        let e = quantize_rows(&[0.0; 48], 1, 48, BlockBits::Four).unwrap_err();
        assert!(e.to_string().contains("multiple of 32"), "{e}");
        let e = quantize_rows(&[0.0; 60], 2, 32, BlockBits::Four).unwrap_err();
        assert!(matches!(e, KernelError::LengthMismatch { .. }), "{e}");
        let mut w = vec![0.5f32; 64];
        w[40] = f32::INFINITY;
        let e = quantize_rows(&w, 2, 32, BlockBits::Six).unwrap_err();
        assert!(
            e.to_string().contains("finite") && e.to_string().contains("40"),
            "{e}"
        );
    }
}
