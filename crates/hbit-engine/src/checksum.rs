//! Content checksum of a packed model file: XXH3-64 over its header metadata (all but the
//! checksum itself) and every tensor's bytes, each taken in name order, so the value does not
//! depend on how the container lays tensors out. Recorded in the metadata at `hbit pack` time
//! and checked on load, so a flipped byte is an error naming the file rather than a silently
//! different model.

use std::collections::HashMap;
use std::path::Path;

use xxhash_rust::xxh3::Xxh3;

use crate::error::{EngineError, Result};

/// Metadata key holding the checksum, `xxh3-64:<16 hex digits>`.
pub const CHECKSUM_KEY: &str = "checksum";
const ALGORITHM: &str = "xxh3-64";

/// What loading found out about a file's checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChecksumStatus {
    /// Recorded and equal to the contents' hash.
    Verified(String),
    /// The file has none (packed before checksums, or written by another tool).
    Absent,
    /// Not checked (`--no-verify`).
    Skipped,
}

/// The checksum of `metadata` (the checksum key excluded) and `tensors` (name, bytes).
/// Each field is length-prefixed, so no two different contents share an input stream.
pub fn content_checksum<'a>(
    metadata: &HashMap<String, String>,
    tensors: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> String {
    let mut hasher = Xxh3::new();
    let mut field = |bytes: &[u8]| {
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    let mut keys: Vec<&String> = metadata.keys().filter(|k| *k != CHECKSUM_KEY).collect();
    keys.sort();
    for key in keys {
        field(key.as_bytes());
        field(metadata[key].as_bytes());
    }
    let mut tensors: Vec<(&str, &[u8])> = tensors.into_iter().collect();
    tensors.sort_by_key(|(name, _)| *name);
    for (name, bytes) in tensors {
        field(name.as_bytes());
        field(bytes);
    }
    format!("{ALGORITHM}:{:016x}", hasher.digest())
}

/// Compares the recorded checksum (if any) with the contents' hash.
pub fn verify<'a>(
    path: &Path,
    metadata: &HashMap<String, String>,
    tensors: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<ChecksumStatus> {
    let Some(recorded) = metadata.get(CHECKSUM_KEY) else {
        return Ok(ChecksumStatus::Absent);
    };
    if !recorded.starts_with(&format!("{ALGORITHM}:")) {
        return Err(EngineError::format(
            path,
            format!(
                "metadata `{CHECKSUM_KEY}`: expected \"{ALGORITHM}:<hex>\", found {recorded:?}"
            ),
        ));
    }
    let actual = content_checksum(metadata, tensors);
    if *recorded != actual {
        return Err(EngineError::format(
            path,
            format!(
                "content checksum mismatch: the header records {recorded}, the contents hash to \
                 {actual}; the file is corrupt (a changed or lost byte), so fetch or pack it \
                 again (--no-verify loads it anyway)"
            ),
        ));
    }
    Ok(ChecksumStatus::Verified(actual))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_order_of_tensors_and_keys_does_not_matter_but_every_byte_does() {
        let m = meta(&[("format", "hbit-packed"), ("config", "{}")]);
        let a = content_checksum(&m, [("x", &[1u8, 2][..]), ("y", &[3u8][..])]);
        let b = content_checksum(&m, [("y", &[3u8][..]), ("x", &[1u8, 2][..])]);
        assert_eq!(a, b);
        assert!(a.starts_with("xxh3-64:") && a.len() == "xxh3-64:".len() + 16);
        // Moving a byte across a tensor boundary changes the hash (length prefixes).
        let moved = content_checksum(&m, [("x", &[1u8][..]), ("y", &[2u8, 3][..])]);
        assert_ne!(a, moved);
        let flipped = content_checksum(&m, [("x", &[1u8, 2][..]), ("y", &[2u8][..])]);
        assert_ne!(a, flipped);
        let other_meta = meta(&[("format", "hbit-packed"), ("config", "{ }")]);
        assert_ne!(
            a,
            content_checksum(&other_meta, [("x", &[1u8, 2][..]), ("y", &[3u8][..])])
        );
        // The recorded checksum itself is not hashed.
        let mut with_sum = m.clone();
        with_sum.insert(CHECKSUM_KEY.into(), a.clone());
        assert_eq!(
            a,
            content_checksum(&with_sum, [("x", &[1u8, 2][..]), ("y", &[3u8][..])])
        );
    }

    #[test]
    fn verify_names_the_file_and_both_values() {
        let path = Path::new("model.hbit");
        let mut m = meta(&[("format", "hbit-packed")]);
        let data = [7u8; 5];
        assert_eq!(
            verify(path, &m, [("w", &data[..])]).unwrap(),
            ChecksumStatus::Absent
        );
        let sum = content_checksum(&m, [("w", &data[..])]);
        m.insert(CHECKSUM_KEY.into(), sum.clone());
        assert_eq!(
            verify(path, &m, [("w", &data[..])]).unwrap(),
            ChecksumStatus::Verified(sum.clone())
        );
        let e = verify(path, &m, [("w", &[7u8, 7, 7, 7, 6][..])])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model.hbit") && e.contains(&sum) && e.contains("mismatch"),
            "{e}"
        );
        m.insert(CHECKSUM_KEY.into(), "md5:00".into());
        let e = verify(path, &m, [("w", &data[..])])
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected \"xxh3-64:<hex>\""), "{e}");
    }
}
