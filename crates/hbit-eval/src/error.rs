//! Typed errors of evaluation: each names the file and line, or the input, at fault.

use std::path::PathBuf;

use hbit_engine::EngineError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum EvalError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A data file does not have the task's layout (bad JSON, missing field, bad label).
    #[error("{}:{line}: {message}", path.display())]
    Format {
        path: PathBuf,
        /// 1-based line number (0: the file as a whole).
        line: usize,
        message: String,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Bad request or option: unknown task, empty continuation, bad batch size.
    #[error("{0}")]
    Input(String),
}

pub type Result<T> = std::result::Result<T, EvalError>;
