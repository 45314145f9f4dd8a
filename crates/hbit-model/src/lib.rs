//! The BitNet v2 model as data, free of any ML framework: its validated configuration
//! ([`config`]: `config.json`, variants, presets), its checkpoint tensor and file names
//! ([`tensors`], [`files`]) and the seeded generator both sides draw from ([`rng`]).
//! The training layer (candle) and the inference engine (kernel layer only) both build on it, so
//! the two read the same model the same way.

#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod files;
pub mod rng;
pub mod tensors;

pub use config::{HiddenAct, InputQuant, ModelConfig, Proj, Variant};
pub use error::ConfigError;
pub use tensors::parameter_shapes;
