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
//!
//! `unsafe` lives only in the SIMD modules, each block with a SAFETY note.

pub mod cpu;
#[cfg(feature = "dense-baseline")]
pub mod dense;
pub mod error;
pub mod hadamard;
pub mod matmul;
pub mod pack;
pub mod paley;
pub mod quant;

pub use cpu::{active_path, KernelPath};
pub use error::KernelError;
pub use hadamard::Hadamard;
pub use pack::{LutPacked, RowPacked};
pub use quant::{
    quantize_activations, quantize_ternary, ActBits, QuantizedActivations, TernaryWeights,
};
