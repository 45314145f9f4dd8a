//! hbit's training layer: the BitNet v2 model on candle with the paper's quantizers as custom ops
//! (straight-through estimator), its configuration and checkpoints.
//!
//! Map: [`config`] (config.json and presets) → [`model`] (the network, one code path for every
//! variant) built from [`ops`] (STE quantizers and the Hadamard with eq. 8's backward), saved and
//! loaded by [`checkpoint`]. Training: [`tokenizer`] and [`data`] feed [`trainer`], which steps
//! [`optim`] (AdamW) on the [`schedule`].

#![forbid(unsafe_code)]

pub mod checkpoint;
/// Re-exported from `hbit-model`, which the inference engine shares.
pub use hbit_model::config;
pub mod data;
pub mod error;
pub mod fused;
pub mod model;
pub mod ops;
pub mod optim;
pub mod ptq;
/// Re-exported from `hbit-model` (the engine samples with it too).
pub use hbit_model::rng;
pub mod schedule;
pub mod spinquant;
pub mod stiefel;
pub mod tokenizer;
pub mod trainer;

pub use config::{ModelConfig, Variant};
pub use error::TrainError;
pub use model::BitnetModel;
