//! Byte-level BPE tokenizers (HF `tokenizers`): training on a corpus, loading any `tokenizer.json`.

use std::collections::HashSet;
use std::path::Path;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

use crate::error::TrainError;

/// The document separator (GPT-2 convention), id 0 in tokenizers trained here. It is also the
/// BOS / EOS token of models trained on them.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Trains a byte-level BPE of `vocab_size` tokens (special token included) on `documents`.
/// Every byte is in the initial alphabet, so any text encodes without unknown tokens.
pub fn train_bpe<'a>(
    documents: impl Iterator<Item = &'a str> + Send,
    vocab_size: usize,
    show_progress: bool,
) -> Result<Tokenizer, TrainError> {
    let alphabet_size = ByteLevel::alphabet().len() + 1;
    if vocab_size <= alphabet_size {
        return Err(TrainError::Input(format!(
            "--vocab-size {vocab_size}: a byte-level BPE needs more than {alphabet_size} tokens \
             (256 bytes + {END_OF_TEXT})"
        )));
    }
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(show_progress)
        .special_tokens(vec![AddedToken::from(END_OF_TEXT.to_string(), true)])
        .initial_alphabet(alphabet)
        .build()
        .into();
    let mut tokenizer: Tokenizer = TokenizerBuilder::<
        ModelWrapper,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default().into())
    .with_pre_tokenizer(Some(ByteLevel::new(false, true, true).into()))
    .with_decoder(Some(ByteLevel::default().into()))
    .build()
    .map_err(|e| TrainError::Input(format!("building the tokenizer: {e}")))?
    .into();
    tokenizer
        .train(&mut trainer, documents)
        .map_err(|e| TrainError::Input(format!("training the tokenizer: {e}")))?;
    Ok(tokenizer)
}

/// How many bytes of UTF-8 text each token id stands for, for bits per byte over token
/// streams. A byte-level BPE maps each character of a token to one byte; special tokens
/// (`<|endoftext|>`) stand for no text. Other tokenizers: the byte length of the token decoded
/// alone.
pub fn token_byte_lengths(tokenizer: &Tokenizer) -> Vec<u32> {
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let byte_level = matches!(tokenizer.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
    let special: HashSet<u32> = tokenizer
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special)
        .map(|(id, _)| id)
        .collect();
    (0..tokenizer.get_vocab_size(true) as u32)
        .map(|id| {
            if special.contains(&id) {
                return 0;
            }
            let Some(token) = tokenizer.id_to_token(id) else {
                return 0;
            };
            if byte_level && token.chars().all(|c| alphabet.contains(&c)) {
                token.chars().count() as u32
            } else {
                tokenizer
                    .decode(&[id], false)
                    .map_or(0, |text| text.len() as u32)
            }
        })
        .collect()
}

/// Loads an HF `tokenizer.json`; errors name the file.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer, TrainError> {
    if !path.is_file() {
        return Err(TrainError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer file not found"),
        });
    }
    let json = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    parse_tokenizer(&json, path)
}

/// Parses a `tokenizer.json` text that came from `origin` (a file, or a model file embedding
/// it). The tokenizers crate panics on some malformed decoder sections instead of returning an
/// error; that panic becomes an error here, so damaged input never aborts a command.
pub fn parse_tokenizer(json: &[u8], origin: &Path) -> Result<Tokenizer, TrainError> {
    let parsed = std::panic::catch_unwind(|| Tokenizer::from_bytes(json));
    let message = match parsed {
        Ok(Ok(tokenizer)) => return Ok(tokenizer),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "its structure is malformed".to_string(),
    };
    Err(TrainError::Parse {
        path: origin.to_path_buf(),
        message: format!("not a valid tokenizer.json ({message})"),
    })
}

/// Writes a tokenizer to `path` via a temporary file and rename.
pub fn save_tokenizer(tokenizer: &Tokenizer, path: &Path) -> Result<(), TrainError> {
    let json = tokenizer
        .to_string(false)
        .map_err(|e| TrainError::Input(format!("serializing the tokenizer: {e}")))?;
    crate::checkpoint::write_file_atomic(path, json.as_bytes())
}

/// Token ids of `text` (no special tokens added).
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, TrainError> {
    Ok(tokenizer
        .encode(text, false)
        .map_err(|e| TrainError::Input(format!("tokenizing: {e}")))?
        .get_ids()
        .to_vec())
}

/// The id of the document separator, if the tokenizer has one.
pub fn end_of_text_id(tokenizer: &Tokenizer) -> Option<u32> {
    tokenizer.token_to_id(END_OF_TEXT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trains_round_trips_and_saves() {
        let text = "the quick brown fox jumps over the lazy dog. the dog sleeps. ".repeat(50);
        let docs = [text.as_str(), "ünïcödé and emoji 🦀 survive byte-level BPE"];
        let tok = train_bpe(docs.iter().copied(), 300, false).unwrap();
        // At most the requested size (a small corpus can run out of merges seen twice).
        let size = tok.get_vocab_size(true);
        assert!(size > 257 && size <= 300, "vocab {size}");
        assert_eq!(end_of_text_id(&tok), Some(0));
        for d in docs {
            let ids = encode(&tok, d).unwrap();
            assert_eq!(tok.decode(&ids, false).unwrap(), d);
        }
        // Merges learned: the repeated text takes fewer tokens than bytes.
        assert!(encode(&tok, &text).unwrap().len() < text.len() / 3);
        let path = std::env::temp_dir().join(format!("hbit-tok-{}.json", std::process::id()));
        save_tokenizer(&tok, &path).unwrap();
        let back = load_tokenizer(&path).unwrap();
        assert_eq!(
            encode(&back, docs[1]).unwrap(),
            encode(&tok, docs[1]).unwrap()
        );
        std::fs::write(&path, b"{not json").unwrap();
        let err = load_tokenizer(&path).unwrap_err().to_string();
        assert!(
            err.contains("hbit-tok-") && err.contains("tokenizer.json"),
            "{err}"
        );
        std::fs::remove_file(&path).unwrap();
        assert!(train_bpe(docs.iter().copied(), 200, false).is_err());
    }

    /// By hand: a space and `t` are one byte each, `é` two, `🦀` four, `<|endoftext|>` none;
    /// and the tokens of any text add up to its UTF-8 length.
    #[test]
    fn token_byte_lengths_add_up_to_the_text() {
        let text = "the café serves 🦀 stew. the café closes. ".repeat(30);
        let tok = train_bpe([text.as_str()].into_iter(), 300, false).unwrap();
        let lengths = token_byte_lengths(&tok);
        assert_eq!(lengths.len(), tok.get_vocab_size(true));
        assert_eq!(lengths[end_of_text_id(&tok).unwrap() as usize], 0);
        for (piece, bytes) in [(" ", 1), ("t", 1), ("é", 2), ("🦀", 4), (" café", 6)] {
            let ids = encode(&tok, piece).unwrap();
            let sum: u32 = ids.iter().map(|&id| lengths[id as usize]).sum();
            assert_eq!(sum, bytes, "{piece:?} as {ids:?}");
        }
        for sample in [text.as_str(), "ünïcödé, 中文 and 🦀🦀 unseen in training"] {
            let ids = encode(&tok, sample).unwrap();
            let sum: u64 = ids.iter().map(|&id| lengths[id as usize] as u64).sum();
            assert_eq!(sum, sample.len() as u64);
        }
    }
}
