//! Typed errors of the inference engine. Each names the file, tensor or input, and what was
//! expected versus found.

use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a model of the expected format (truncated, wrong magic, bad header).
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    /// A tensor is missing, has the wrong dtype or shape, or holds invalid values.
    #[error("{}: tensor `{tensor}`: {message}", path.display())]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    #[error(transparent)]
    Config(#[from] hbit_model::ConfigError),
    #[error(transparent)]
    Kernel(#[from] hbit_kernels::KernelError),
    /// Bad user input: token ids, prompt lengths, sampling settings.
    #[error("{0}")]
    Input(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

impl EngineError {
    pub fn io(path: &Path, source: std::io::Error) -> EngineError {
        EngineError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn format(path: &Path, message: impl Into<String>) -> EngineError {
        EngineError::Format {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    pub fn tensor(path: &Path, tensor: &str, message: impl Into<String>) -> EngineError {
        EngineError::Tensor {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            message: message.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;
