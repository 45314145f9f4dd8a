//! hbit's kernel layer: the math of BitNet v2 that training and inference share, with no
//! ML-framework dependency.
//!
//! * [`quant`] — ternary absmean weights (eqs. 1–2), INT8 absmax (eq. 5) and INT4 absmean (eq. 6)
//!   per-token activations.
//! * [`hadamard`] — the orthonormal fast Walsh–Hadamard transform of H-BitLinear (eqs. 3–4, 7–8),
//!   with Paley sizes 12/20/28·2^m in [`paley`].
//! * [`pack`] — 2-bit packed ternary layouts: [`pack::RowPacked`] for INT8 multiply-add kernels and
//!   [`pack::LutPacked`] for INT4 lookup-table kernels.
//! * [`matmul`] — `y[t, o] = alpha · s_x[t] · Σ_k Wq[o, k] · xq[t, k]` for one or many tokens,
//!   multi-threaded, on the scalar / AVX2 / AVX-512 path picked at run time by [`cpu`].
//! * [`float_gemv`] — the full-precision (f32 / f16) LM head, bit-identical on every path.
//! * [`block_quant`] — 6- and 4-bit block-quantized rows (one f16 scale per 32) for a smaller head.
//! * [`act`] — the GLU's SiLU with a vectorizing `exp`, shared by trainer and engine.
//! * [`attention`] — attention's scores, softmax numerators and weighted sums over f32 / f16
//!   cached rows; [`attention_int4`] the same products read from 4-bit codes in place.
//! * [`kv_codec`] — the KV cache's 2- to 8-bit absmax codes.
//! * [`norm`] — RMSNorm's per-row factor in a fixed summation order, shared by trainer and engine.
//! * [`peak`] — the machine's `vpmaddubsw` peak: the compute roofline the bench reports.
//! * [`scan`] — the vectorizing first-bad-value scan behind every validation of a large slice.
//!
//! `unsafe` is confined to this crate (the others forbid it), each block with a SAFETY note:
//! the SIMD kernels (each with a scalar reference and run-time dispatch), the lookup kernels'
//! uninitialized table storage (poisoned in debug builds), the matrix kernels' shared output
//! (disjoint rows, property-tested), the fork-join's erased closure lifetime ([`parallel`],
//! model checked with loom), the memory map ([`mapped`]) and the allocator's C calls.
//!
//! ```
//! use hbit_kernels::{matmul, quantize_activations, quantize_ternary, ActBits, LutPacked};
//!
//! // A [2, 4] weight matrix: alpha = mean|W| = 0.375, Wq = round(W / alpha) clipped to ±1.
//! let w = quantize_ternary(&[0.5, 0.0, -0.5, 0.5, 0.0, 0.5, 0.5, -0.5], 2, 4).unwrap();
//! assert_eq!((w.alpha, w.codes.as_slice()), (0.375, &[1, 0, -1, 1, 0, 1, 1, -1][..]));
//! // One token, INT4 absmean: beta = 1.25, codes = round(sqrt 7 / 1.25 · x) = [2, -2, 0, 6].
//! let x = quantize_activations(&[1.0, -1.0, 0.0, 3.0], 1, 4, ActBits::Int4).unwrap();
//! assert_eq!(x.token(0), &[2, -2, 0, 6]);
//! let mut y = vec![0.0; 2];
//! matmul::matmul_int4(&LutPacked::pack(&w), &x, &mut y).unwrap();
//! // Integer dots 2 + 6 = 8 and -2 - 6 = -8, times alpha · beta / sqrt 7.
//! let s = 0.375 * (1.25 / 7f32.sqrt());
//! assert_eq!(y, vec![s * 8.0, s * -8.0]);
//! ```

pub mod act;
#[cfg(feature = "allocator")]
pub mod allocator;
pub mod attention;
pub mod attention_int4;
pub mod block_quant;
pub mod cpu;
#[cfg(feature = "dense-baseline")]
pub mod dense;
pub mod error;
pub mod float_gemv;
pub mod hadamard;
pub mod kv_codec;
pub mod mapped;
pub mod matmul;
pub mod norm;
pub mod pack;
pub mod paley;
pub mod parallel;
pub mod peak;
pub mod quant;
#[cfg(target_arch = "x86_64")]
mod quant_avx2;
pub mod scan;

pub use cpu::{active_path, KernelPath};
pub use error::KernelError;
pub use float_gemv::{float_matmul, FloatWeights};
pub use hadamard::Hadamard;
pub use matmul::PackedTernary;
pub use pack::{LutPacked, PackedBytes, RowPacked, TriplePacked};
pub use quant::{
    quantize_activations, quantize_ternary, sparsify_topk_token, topk_count, ActBits,
    QuantizedActivations, TernaryWeights,
};
