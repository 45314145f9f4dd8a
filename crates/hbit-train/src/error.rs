//! Typed errors of the training layer. Each names the file, tensor or field, and what was
//! expected versus found.

use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TrainError {
    /// A configuration field is invalid.
    #[error("config field `{field}`: {message}")]
    Config {
        field: &'static str,
        message: String,
    },
    /// A configuration file is invalid; wraps the field error with the file.
    #[error("{}: {source}", path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<TrainError>,
    },
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

    /// Attaches the file a config error came from.
    pub fn in_file(self, path: &Path) -> TrainError {
        match self {
            e @ TrainError::Config { .. } => TrainError::InFile {
                path: path.to_path_buf(),
                source: Box::new(e),
            },
            other => other,
        }
    }
}
