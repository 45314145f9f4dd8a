//! Typed errors of the model description. Each names the file or field, and what was expected
//! versus found.

use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    /// A configuration field is invalid.
    #[error("config field `{field}`: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
    /// A configuration file is invalid; wraps the field error with the file.
    #[error("{}: {source}", path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<ConfigError>,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but is not valid JSON of the expected shape.
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
}

impl ConfigError {
    pub fn io(path: &Path, source: std::io::Error) -> ConfigError {
        ConfigError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Attaches the file a field error came from.
    pub fn in_file(self, path: &Path) -> ConfigError {
        match self {
            e @ ConfigError::Field { .. } => ConfigError::InFile {
                path: path.to_path_buf(),
                source: Box::new(e),
            },
            other => other,
        }
    }
}
