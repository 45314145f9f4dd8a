//! Training data: text files, directories and JSONL (`text` field) → tokens, cached once on disk,
//! packed into fixed-length sequences, split into train / held-out validation, shuffled by seed.
//!
//! Documents are joined with the tokenizer's `<|endoftext|>` so sequences may cross document
//! boundaries (GPT-style packing); no padding, no token lost.

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use crate::checkpoint::write_file_atomic;
use crate::error::TrainError;
use crate::rng::SplitMix64;
use crate::tokenizer::{encode, end_of_text_id};

type Result<T> = std::result::Result<T, TrainError>;

/// Directory names of the evaluation sets; training on them would void the evaluation.
const EVALUATION_SET_DIRS: [&str; 7] = [
    "wikitext2",
    "arc",
    "hellaswag",
    "piqa",
    "winogrande",
    "lambada",
    "lambada_openai",
];

/// One training document and where it came from.
#[derive(Debug, Clone)]
pub struct Document {
    pub source: PathBuf,
    pub text: String,
}

/// Files under the given paths (recursively, sorted) that hold text: `.txt`, `.md`, `.text`,
/// `.jsonl`.
pub fn list_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if let Some(bad) = path
            .components()
            .filter_map(|c| c.as_os_str().to_str())
            .find(|c| EVALUATION_SET_DIRS.contains(c))
        {
            return Err(TrainError::Input(format!(
                "{}: lies in an evaluation-set directory ({bad}); evaluation data never goes \
                 into training",
                path.display()
            )));
        }
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| TrainError::io(path, e))?
                .map(|e| e.map(|e| e.path()).map_err(|err| TrainError::io(path, err)))
                .collect::<Result<_>>()?;
            entries.sort();
            let nested: Vec<PathBuf> = entries
                .into_iter()
                .filter(|p| p.is_dir() || is_text_file(p))
                .collect();
            files.extend(list_files(&nested)?);
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            return Err(TrainError::Io {
                path: path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file or directory",
                ),
            });
        }
    }
    Ok(files)
}

fn is_text_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("txt" | "md" | "text" | "jsonl")
    )
}

/// UTF-8 text, or Latin-1 for files that are not UTF-8 (one Gutenberg file is ISO-8859-1);
/// CRLF becomes LF.
fn decode_text(bytes: Vec<u8>) -> String {
    let text = match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => e.into_bytes().iter().map(|&b| b as char).collect(),
    };
    text.replace("\r\n", "\n")
}

/// Reads every document under `paths`: a text file is one document, a JSONL line one document.
pub fn read_documents(paths: &[PathBuf]) -> Result<Vec<Document>> {
    let mut docs = Vec::new();
    for file in list_files(paths)? {
        let bytes = std::fs::read(&file).map_err(|e| TrainError::io(&file, e))?;
        if file.extension().and_then(|e| e.to_str()) == Some("jsonl") {
            for (n, line) in decode_text(bytes).lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let bad = |message: String| TrainError::Parse {
                    path: file.clone(),
                    message: format!("line {}: {message}", n + 1),
                };
                let value: serde_json::Value =
                    serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
                let text = value
                    .get("text")
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| bad("expected an object with a string field \"text\"".into()))?;
                docs.push(Document {
                    source: file.clone(),
                    text: text.to_string(),
                });
            }
        } else {
            docs.push(Document {
                source: file.clone(),
                text: decode_text(bytes),
            });
        }
    }
    if docs.iter().all(|d| d.text.trim().is_empty()) {
        return Err(TrainError::Input(format!(
            "no text found under {paths:?} (expected .txt/.md/.text files or .jsonl with a \"text\" field)"
        )));
    }
    Ok(docs)
}

/// 64-bit FNV-1a, for cache keys (not security).
fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(hash, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

const CACHE_MAGIC: &[u8; 8] = b"HBITTOK1";

/// Tokens of every document under `paths`, each followed by `<|endoftext|>`, cached in
/// `cache_dir` under a key of the tokenizer and the files (path, size, mtime). Returns the tokens
/// and whether the cache was hit.
pub fn tokenize_cached(
    paths: &[PathBuf],
    tokenizer: &Tokenizer,
    cache_dir: &Path,
) -> Result<(Vec<u32>, bool)> {
    let files = list_files(paths)?;
    let tokenizer_json = tokenizer
        .to_string(false)
        .map_err(|e| TrainError::Input(format!("serializing the tokenizer: {e}")))?;
    let mut key = fnv1a(0xcbf2_9ce4_8422_2325, tokenizer_json.as_bytes());
    for f in &files {
        let meta = std::fs::metadata(f).map_err(|e| TrainError::io(f, e))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        key = fnv1a(key, f.to_string_lossy().as_bytes());
        key = fnv1a(key, &meta.len().to_le_bytes());
        key = fnv1a(key, &mtime.to_le_bytes());
    }
    let cache = cache_dir.join(format!("{key:016x}.tokens"));
    if let Ok(bytes) = std::fs::read(&cache) {
        if let Some(tokens) = parse_cache(&bytes) {
            return Ok((tokens, true));
        }
    }
    let eot = end_of_text_id(tokenizer).ok_or_else(|| {
        TrainError::Input(format!(
            "the tokenizer has no {} token to separate documents",
            crate::tokenizer::END_OF_TEXT
        ))
    })?;
    let mut tokens = Vec::new();
    for doc in read_documents(&files)? {
        tokens.extend(encode(tokenizer, &doc.text)?);
        tokens.push(eot);
    }
    let mut bytes = Vec::with_capacity(16 + 4 * tokens.len());
    bytes.extend_from_slice(CACHE_MAGIC);
    bytes.extend_from_slice(&(tokens.len() as u64).to_le_bytes());
    for t in &tokens {
        bytes.extend_from_slice(&t.to_le_bytes());
    }
    write_file_atomic(&cache, &bytes)?;
    Ok((tokens, false))
}

/// A cache file's tokens, or `None` if it is damaged (then it is rebuilt).
fn parse_cache(bytes: &[u8]) -> Option<Vec<u32>> {
    let body = bytes.strip_prefix(CACHE_MAGIC)?;
    let n = u64::from_le_bytes(body.get(..8)?.try_into().ok()?) as usize;
    let data = body.get(8..)?;
    if data.len() != n.checked_mul(4)? {
        return None;
    }
    Some(
        data.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// Packed sequences of `seq_len + 1` tokens (inputs and shifted targets), split into a training
/// set and a held-out validation set.
#[derive(Debug, Clone)]
pub struct PackedData {
    tokens: Vec<u32>,
    seq_len: usize,
    /// Share of windows held out (as asked; at least one window when non-zero).
    val_fraction: f64,
    /// Start offsets of training sequences (in token-stream order).
    train: Vec<usize>,
    /// Start offsets of validation sequences.
    validation: Vec<usize>,
}

impl PackedData {
    /// Chunks the stream into non-overlapping windows of `seq_len` targets; a `val_fraction`
    /// share of the windows, chosen with `seed`, is held out (at least one when the fraction is
    /// non-zero).
    pub fn new(
        tokens: Vec<u32>,
        seq_len: usize,
        val_fraction: f64,
        seed: u64,
    ) -> Result<PackedData> {
        if seq_len == 0 {
            return Err(TrainError::Input("sequence length must be positive".into()));
        }
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(TrainError::Input(format!(
                "validation fraction must be in [0, 1), found {val_fraction}"
            )));
        }
        let windows = tokens.len().saturating_sub(1) / seq_len;
        let n_val = if val_fraction > 0.0 {
            ((windows as f64 * val_fraction).round() as usize).max(1)
        } else {
            0
        };
        if windows < n_val + 1 {
            return Err(TrainError::Input(format!(
                "{} tokens make {windows} sequences of {seq_len}: too few for a training set \
                 and {n_val} validation sequences",
                tokens.len()
            )));
        }
        let mut starts: Vec<usize> = (0..windows).map(|w| w * seq_len).collect();
        SplitMix64::new(seed ^ 0x005E_ED0F_5A11).shuffle(&mut starts);
        let mut validation = starts.split_off(windows - n_val);
        let mut train = starts;
        train.sort_unstable();
        validation.sort_unstable();
        Ok(PackedData {
            tokens,
            seq_len,
            val_fraction,
            train,
            validation,
        })
    }

    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    pub fn val_fraction(&self) -> f64 {
        self.val_fraction
    }

    pub fn train_sequences(&self) -> usize {
        self.train.len()
    }

    pub fn validation_sequences(&self) -> usize {
        self.validation.len()
    }

    pub fn total_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// Inputs and targets (`[n, seq_len]` each, row-major) of the training sequences at stream
    /// positions `cursor..cursor + n`; the order is a fresh seeded shuffle in every epoch, so a
    /// cursor alone determines the batch (resume needs nothing else).
    pub fn train_batch(&self, cursor: u64, n: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
        let per_epoch = self.train.len() as u64;
        let mut order_epoch = u64::MAX;
        let mut order = Vec::new();
        let mut inputs = Vec::with_capacity(n * self.seq_len);
        let mut targets = Vec::with_capacity(n * self.seq_len);
        for i in 0..n as u64 {
            let position = cursor + i;
            let epoch = position / per_epoch;
            if epoch != order_epoch {
                order = self.train.clone();
                SplitMix64::new(seed.wrapping_add(epoch.wrapping_mul(0x9E37_79B9)))
                    .shuffle(&mut order);
                order_epoch = epoch;
            }
            let start = order[(position % per_epoch) as usize];
            self.push_window(start, &mut inputs, &mut targets);
        }
        (inputs, targets)
    }

    /// Validation sequences `first..first + n` (clamped to the set), as `train_batch`.
    pub fn validation_batch(&self, first: usize, n: usize) -> (Vec<u32>, Vec<u32>) {
        let mut inputs = Vec::new();
        let mut targets = Vec::new();
        for &start in self.validation.iter().skip(first).take(n) {
            self.push_window(start, &mut inputs, &mut targets);
        }
        (inputs, targets)
    }

    fn push_window(&self, start: usize, inputs: &mut Vec<u32>, targets: &mut Vec<u32>) {
        let window = &self.tokens[start..start + self.seq_len + 1];
        inputs.extend_from_slice(&window[..self.seq_len]);
        targets.extend_from_slice(&window[1..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hbit-data-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn reads_text_jsonl_and_directories_and_refuses_evaluation_sets() {
        let d = temp("read");
        std::fs::write(d.join("a.txt"), "first\r\ndocument").unwrap();
        std::fs::write(
            d.join("b.jsonl"),
            "{\"text\": \"one\"}\n\n{\"text\": \"two\"}\n",
        )
        .unwrap();
        std::fs::write(d.join("latin1.txt"), [b'c', b'a', b'f', 0xE9]).unwrap();
        std::fs::write(d.join("ignored.bin"), [0u8, 1, 2]).unwrap();
        let docs = read_documents(std::slice::from_ref(&d)).unwrap();
        let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
        assert_eq!(texts, vec!["first\ndocument", "one", "two", "café"]);

        std::fs::write(d.join("c.jsonl"), "{\"body\": 1}\n").unwrap();
        let err = read_documents(std::slice::from_ref(&d))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("c.jsonl") && err.contains("line 1") && err.contains("text"),
            "{err}"
        );

        let eval = d.join("hellaswag");
        std::fs::create_dir_all(&eval).unwrap();
        let err = read_documents(&[eval]).unwrap_err().to_string();
        assert!(err.contains("evaluation"), "{err}");
        let err = read_documents(&[d.join("missing")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn packing_split_and_batches_cover_every_window_once_per_epoch() {
        let tokens: Vec<u32> = (0..101).collect();
        let data = PackedData::new(tokens, 10, 0.2, 7).unwrap();
        assert_eq!(
            (data.train_sequences(), data.validation_sequences()),
            (8, 2)
        );
        // One epoch of training windows plus the validation windows = all 10 windows, disjoint.
        let (inputs, targets) = data.train_batch(0, 8, 3);
        let (vin, _) = data.validation_batch(0, 10);
        let mut firsts: Vec<u32> = inputs
            .chunks(10)
            .chain(vin.chunks(10))
            .map(|w| w[0])
            .collect();
        firsts.sort();
        assert_eq!(firsts, (0..10).map(|w| w * 10).collect::<Vec<u32>>());
        // Targets are inputs shifted by one.
        for (i, t) in inputs.chunks(10).zip(targets.chunks(10)) {
            assert_eq!(&i[1..], &t[..9]);
            assert_eq!(t[9], i[9] + 1);
        }
        // A cursor determines the batch; epochs reshuffle.
        assert_eq!(data.train_batch(5, 4, 3), data.train_batch(5, 4, 3));
        let (e0, _) = data.train_batch(0, 8, 3);
        let (e1, _) = data.train_batch(8, 8, 3);
        assert_ne!(e0, e1);
        assert!(PackedData::new((0..15).collect(), 10, 0.5, 1).is_err());
    }

    #[test]
    fn token_cache_hits_and_survives_damage() {
        let d = temp("cache");
        std::fs::write(d.join("a.txt"), "hello world, hello tokens").unwrap();
        let tok =
            crate::tokenizer::train_bpe(["hello world hello"].into_iter(), 270, false).unwrap();
        let cache = d.join("cache");
        let (t1, hit1) = tokenize_cached(&[d.join("a.txt")], &tok, &cache).unwrap();
        let (t2, hit2) = tokenize_cached(&[d.join("a.txt")], &tok, &cache).unwrap();
        assert_eq!((hit1, hit2), (false, true));
        assert_eq!(t1, t2);
        assert_eq!(*t1.last().unwrap(), 0, "documents end with <|endoftext|>");
        let file = std::fs::read_dir(&cache)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::write(&file, b"HBITTOK1garbage").unwrap();
        let (t3, hit3) = tokenize_cached(&[d.join("a.txt")], &tok, &cache).unwrap();
        assert_eq!((t3, hit3), (t1, false));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
