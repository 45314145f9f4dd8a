//! Typed errors of the training layer. Each names the file, tensor or field, and what was
//! expected versus found.

use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TrainError {
    /// An invalid configuration (field or file).
    #[error(transparent)]
    Config(#[from] hbit_model::ConfigError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but cannot be parsed (JSON, safetensors, tokenizer).
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// A checkpoint tensor is missing, has the wrong shape or dtype, or holds non-finite values.
    #[error("{}: tensor `{tensor}`: {message}", path.display())]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    /// Bad user input outside files (token ids, sequence lengths, flags).
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Kernel(#[from] hbit_kernels::KernelError),
    #[error("tensor framework: {0}")]
    Candle(#[from] candle_core::Error),
}

impl TrainError {
    pub fn io(path: &Path, source: std::io::Error) -> TrainError {
        TrainError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
