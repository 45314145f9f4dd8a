//! hbit's inference engine, on the kernel layer alone (no ML framework on the hot path).
//!
//! Map: [`tensor_io`] (safetensors decoding, finiteness checks; a leaf) serves the readers:
//! [`checkpoint`] (training checkpoints), [`hf_bitnet`] (microsoft/bitnet-b1.58-2B-4T's
//! layout) and [`format`] (the packed model file, read into memory or memory-mapped, its contents checked
//! against a [`checksum`]). [`pack`]
//! picks the source layout and writes packed files. [`gguf`] reads and writes llama.cpp's and
//! bitnet.cpp's container (I2_S, TQ1_0, TQ2_0, Q6_K, floats). [`weights`] (packed projections,
//! norms, embeddings) feed [`forward`] (batched prefill and decode over per-sequence [`kv`] caches at
//! f32/f16/int8/int4/int3); [`sample`], [`text_stream`] and [`generate`] turn logits into text.

#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod checksum;
pub mod error;
pub mod format;
pub mod forward;
pub mod generate;
pub mod gguf;
pub mod gguf_model;
pub mod gguf_vocab;
pub mod hf_bitnet;
pub mod kv;
pub mod pack;
pub mod sample;
pub mod tensor_io;
pub mod text_stream;
pub mod weights;

pub use error::EngineError;
pub use forward::{Engine, Logits, Observer, Site};
pub use generate::{generate, Finish, GenerateOptions, GenerateStats, Generation};
pub use kv::{KvBits, KvCache};
pub use sample::{Sampler, SamplingParams};
pub use text_stream::TextStream;
pub use weights::{Int4Layout, Weights};
