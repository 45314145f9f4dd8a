//! `hbit verify`: is this model file the one that was written? A packed file's content
//! checksum, or a training checkpoint's manifest of per-file CRC-32s.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use hbit_engine::checksum::ChecksumStatus;
use hbit_engine::format::{load_packed_opts, LoadMode, Verify};

#[derive(Args)]
pub struct VerifyArgs {
    /// Packed model file (`hbit pack`) or training checkpoint directory.
    #[arg(long)]
    model: PathBuf,
}

pub fn verify(args: &VerifyArgs) -> Result<()> {
    let path = &args.model;
    if path.is_dir() {
        let files = hbit_train::checkpoint::check_manifest(path)?;
        println!(
            "{}: ok, {} files match the manifest ({})",
            path.display(),
            files.len(),
            files.join(", ")
        );
        return Ok(());
    }
    if hbit_engine::gguf_model::is_gguf(path) {
        bail!(
            "{}: GGUF files record no content checksum, so there is nothing to verify against \
             (`hbit gguf inspect` checks its structure; `hbit pack` makes a checksummed file)",
            path.display()
        );
    }
    // Loading checks the structure too: tensors, shapes, codes, finite scales.
    let packed = load_packed_opts(path, LoadMode::Read, Verify::Checksum)?;
    match packed.checksum {
        ChecksumStatus::Verified(sum) => {
            println!(
                "{}: ok, {sum} ({} bytes, {} parameters)",
                path.display(),
                packed.file_bytes,
                packed.weights.config.parameter_count()
            );
            Ok(())
        }
        ChecksumStatus::Absent => bail!(
            "{}: records no content checksum (packed by an hbit from before checksums); its \
             structure is valid; `hbit pack` it again to add one",
            path.display()
        ),
        ChecksumStatus::Skipped => unreachable!("verification was asked for"),
    }
}
