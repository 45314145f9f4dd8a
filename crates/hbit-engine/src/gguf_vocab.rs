//! GGUF vocabularies (`tokenizer.ggml.*`) and HF `tokenizer.json`, both ways.
//!
//! Reading rebuilds the tokenizer llama.cpp would run, so hbit and llama.cpp / bitnet.cpp give
//! the same token ids for the same text:
//! * `gpt2` byte-level BPE, split by the regexes its `tokenizer.ggml.pre` names (GPT-2's own,
//!   llama.cpp's `default` sequence, or Llama-3's, which Falcon3 and Falcon-E reuse);
//! * `llama` SentencePiece BPE: pieces merged by score (highest first), text prefixed with "▁"
//!   and spaces written as "▁", byte tokens `<0xXX>` for characters outside the vocabulary. As
//!   transformers' Llama converter does, every split of a piece into two pieces becomes a merge
//!   ranked by the piece's score, so BPE picks the merge llama.cpp's best-score search picks.
//!
//! Writing covers hbit's own tokenizers (byte-level BPE) as a `gpt2` vocabulary.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value as Json};

use crate::error::{EngineError, Result};
use crate::gguf::{Gguf, GgufWriter, Value};
use hbit_model::ModelConfig;

/// ggml's token types.
const TOKEN_NORMAL: i32 = 1;
const TOKEN_UNKNOWN: i32 = 2;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_UNUSED: i32 = 5;

/// GPT-2's pre-tokenizer regex (llama.cpp `gpt-2`).
const GPT2_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama-3's (llama.cpp `llama-bpe`, as in Meta's tokenizer.json).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// llama.cpp's `default` pre-tokenizer: these regexes, each splitting the previous pieces.
const DEFAULT_SPLITS: [&str; 4] = [
    r"[\p{P}\$\+<=>\^~\|]+",
    GPT2_SPLIT,
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];
/// `tokenizer.ggml.pre` names that llama.cpp (and bitnet.cpp for `falcon_e`) runs with the
/// Llama-3 regex and merges skipped for whole-word tokens.
const LLAMA3_NAMES: [&str; 6] = [
    "llama-bpe",
    "llama3",
    "llama-v3",
    "falcon3",
    "falcon_e",
    "falcon-h1",
];

/// SentencePiece's word-boundary mark.
const SPACE_MARK: &str = "\u{2581}";

/// The vocabulary's model, its pre-tokenizer name, and the BOS / EOS ids llama.cpp uses:
/// explicit ids, else the model's defaults (`llama`: 1 and 2), and BOS only when the file
/// says to add it (default: yes for `llama` and Llama-3 vocabularies, no for `gpt2`).
pub fn special_ids(file: &Gguf) -> (Option<u32>, Option<u32>) {
    let model = file.get("tokenizer.ggml.model").and_then(Value::as_str);
    let pre = file.get("tokenizer.ggml.pre").and_then(Value::as_str);
    let id = |key: &str| {
        file.get(&format!("tokenizer.ggml.{key}"))
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
    };
    let spm = model == Some("llama");
    let (bos, eos) = (
        id("bos_token_id").or(spm.then_some(1)),
        id("eos_token_id").or(spm.then_some(2)),
    );
    let add_bos_default = spm || pre.is_some_and(|p| LLAMA3_NAMES.contains(&p));
    let add_bos = match file.get("tokenizer.ggml.add_bos_token") {
        Some(Value::Bool(b)) => *b,
        _ => add_bos_default,
    };
    (bos.filter(|_| add_bos), eos)
}

/// An HF `tokenizer.json` for the file's vocabulary; `None` when it has none or one of a kind
/// hbit does not rebuild (a tokenizer that looked right but split text wrongly would be worse
/// than none: the user passes `--tokenizer`).
pub fn tokenizer_json(file: &Gguf) -> Result<Option<String>> {
    let model = file.get("tokenizer.ggml.model").and_then(Value::as_str);
    let tokenizer = match model {
        Some("gpt2") => {
            let pre = file.get("tokenizer.ggml.pre").and_then(Value::as_str);
            let Some(splits) = byte_level_splits(pre) else {
                return Ok(None);
            };
            byte_level_bpe(file, splits)?
        }
        Some("llama") => sentencepiece_bpe(file)?,
        _ => return Ok(None),
    };
    Ok(Some(tokenizer.to_string()))
}

/// The regexes of a `gpt2` vocabulary's pre-tokenizer, and whether whole pre-tokens found in
/// the vocabulary skip the merges; `None` for names not rebuilt here.
fn byte_level_splits(pre: Option<&str>) -> Option<(Vec<&'static str>, bool)> {
    match pre {
        Some("gpt-2") => Some((vec![GPT2_SPLIT], false)),
        // llama.cpp runs its default pre-tokenizer when the key is missing.
        None | Some("default") => Some((DEFAULT_SPLITS.to_vec(), false)),
        Some(name) if LLAMA3_NAMES.contains(&name) => Some((vec![LLAMA3_SPLIT], true)),
        Some(_) => None,
    }
}

/// `key`'s array of strings.
fn strings(file: &Gguf, key: &str) -> Result<Vec<String>> {
    let items = file
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| EngineError::format(&file.path, format!("{key}: expected an array")))?;
    items
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| EngineError::format(&file.path, format!("{key}: expected strings")))
        })
        .collect()
}

/// `tokenizer.ggml.token_type` (normal where absent), one per token.
fn token_types(file: &Gguf, count: usize) -> Result<Vec<i32>> {
    let Some(types) = file
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
    else {
        return Ok(vec![TOKEN_NORMAL; count]);
    };
    if types.len() != count {
        return Err(EngineError::format(
            &file.path,
            format!(
                "tokenizer.ggml.token_type: {} entries for {count} tokens",
                types.len()
            ),
        ));
    }
    Ok(types
        .iter()
        .map(|v| v.as_f64().map_or(TOKEN_NORMAL, |x| x as i32))
        .collect())
}

/// Token → id, refusing a token string twice (llama.cpp does too: ids would be ambiguous).
fn vocab_map(file: &Gguf, tokens: &[String]) -> Result<serde_json::Map<String, Json>> {
    let mut vocab = serde_json::Map::new();
    for (i, t) in tokens.iter().enumerate() {
        if vocab.insert(t.clone(), json!(i)).is_some() {
            return Err(EngineError::format(
                &file.path,
                format!("tokenizer.ggml.tokens: {t:?} appears twice"),
            ));
        }
    }
    Ok(vocab)
}

/// Control and unknown tokens as special added tokens, user-defined ones as plain added
/// tokens: matched whole in the text before anything else, as llama.cpp does.
fn added_tokens(tokens: &[String], types: &[i32]) -> Vec<Json> {
    tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter_map(|(i, (t, &kind))| {
            let special = match kind {
                TOKEN_CONTROL | TOKEN_UNKNOWN => true,
                TOKEN_USER_DEFINED => false,
                _ => return None,
            };
            Some(
                json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                        "rstrip": false, "normalized": false, "special": special}),
            )
        })
        .collect()
}

fn byte_level_bpe(file: &Gguf, (splits, ignore_merges): (Vec<&str>, bool)) -> Result<Json> {
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let merges = strings(file, "tokenizer.ggml.merges")?;
    let types = token_types(file, tokens.len())?;
    let vocab = vocab_map(file, &tokens)?;
    let byte_level = |use_regex: bool| {
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
               "use_regex": use_regex})
    };
    // GPT-2's regex is ByteLevel's own; the others split first, then map bytes.
    let pre_tokenizer = if splits == [GPT2_SPLIT] {
        byte_level(true)
    } else {
        let mut steps: Vec<Json> = splits
            .iter()
            .map(|r| {
                json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated",
                       "invert": false})
            })
            .collect();
        steps.push(byte_level(false));
        json!({"type": "Sequence", "pretokenizers": steps})
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(&tokens, &types),
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": byte_level(true),
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
            "vocab": vocab, "merges": merges,
        },
    }))
}

/// A `llama` (SentencePiece BPE) vocabulary as the equivalent HF BPE with byte fallback.
fn sentencepiece_bpe(file: &Gguf) -> Result<Json> {
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let types = token_types(file, tokens.len())?;
    let scores: Vec<f64> = match file.get("tokenizer.ggml.scores").and_then(Value::as_array) {
        Some(s) if s.len() == tokens.len() => s.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect(),
        Some(s) => {
            return Err(EngineError::format(
                &file.path,
                format!(
                    "tokenizer.ggml.scores: {} entries for {} tokens",
                    s.len(),
                    tokens.len()
                ),
            ))
        }
        None => {
            return Err(EngineError::format(
                &file.path,
                "tokenizer.ggml.scores is missing (a llama vocabulary merges by score)",
            ))
        }
    };
    let vocab = vocab_map(file, &tokens)?;
    let unk_id = file
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(Value::as_u64)
        .unwrap_or(0) as usize;
    let space_prefix = !matches!(
        file.get("tokenizer.ggml.add_space_prefix"),
        Some(Value::Bool(false))
    );
    let mut normalizers = Vec::new();
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": SPACE_MARK}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if space_prefix {
        normalizers.push(json!({"type": "Prepend", "prepend": SPACE_MARK}));
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": SPACE_MARK}));
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(&tokens, &types),
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": tokens.get(unk_id),
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges_by_score(&tokens, &scores),
        },
    }))
}

/// Every split of a piece into two pieces of the vocabulary, ranked by the whole piece's score
/// (highest first; ties: longer left half, then longer right half, then vocabulary order of
/// the piece and of the halves). BPE applying these ranks merges, at each step, the adjacent
/// pair whose union scores highest: llama.cpp's SentencePiece search.
fn merges_by_score(tokens: &[String], scores: &[f64]) -> Vec<Json> {
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    struct Merge<'a> {
        left: &'a str,
        right: &'a str,
        score: f64,
        left_chars: usize,
        right_chars: usize,
    }
    let mut merges = Vec::new();
    for (piece, &score) in tokens.iter().zip(scores) {
        let mut local: Vec<(usize, usize, Merge)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (left, right) = piece.split_at(at);
                let (&l, &r) = (ids.get(left)?, ids.get(right)?);
                Some((
                    l,
                    r,
                    Merge {
                        left,
                        right,
                        score,
                        left_chars: left.chars().count(),
                        right_chars: right.chars().count(),
                    },
                ))
            })
            .collect();
        local.sort_by_key(|(l, r, _)| (*l, *r));
        merges.extend(local.into_iter().map(|(_, _, m)| m));
    }
    // Stable: equal keys keep the order above.
    merges.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.left_chars.cmp(&a.left_chars))
            .then(b.right_chars.cmp(&a.right_chars))
    });
    // Each (left, right) comes from one piece only: pieces are unique.
    merges
        .into_iter()
        .map(|m| json!([m.left, m.right]))
        .collect()
}

/// llama.cpp's name for an HF byte-level pre-tokenizer: `gpt-2` for ByteLevel with its own
/// regex, `llama-bpe` for Llama-3's Split then ByteLevel; `None` for any other splitting.
fn pre_tokenizer_name(pre: &Json) -> Option<&'static str> {
    let byte_level = |p: &Json, regex: bool| {
        p["type"].as_str() == Some("ByteLevel") && p["use_regex"].as_bool().unwrap_or(true) == regex
    };
    if byte_level(pre, true) {
        return Some("gpt-2");
    }
    let steps = pre["pretokenizers"].as_array()?;
    match steps.as_slice() {
        [split, last]
            if split["type"].as_str() == Some("Split")
                && split["pattern"]["Regex"].as_str() == Some(LLAMA3_SPLIT)
                && byte_level(last, false) =>
        {
            Some("llama-bpe")
        }
        [only] if byte_level(only, true) => Some("gpt-2"),
        _ => None,
    }
}

/// The `tokenizer.ggml.*` keys of an HF byte-level BPE `tokenizer.json` (llama.cpp's `gpt2`
/// model): tokens by id, their types (special added tokens are control tokens), merges, and
/// the model's BOS / EOS ids.
pub(crate) fn write_vocabulary(w: &mut GgufWriter, text: &str, c: &ModelConfig) -> Result<()> {
    let bad = |m: &str| EngineError::Tokenizer(format!("GGUF export: tokenizer.json {m}"));
    let v: Json = serde_json::from_str(text).map_err(|e| bad(&format!("is not JSON ({e})")))?;
    let model = &v["model"];
    let byte_level = |part: &str| {
        v[part]["type"].as_str() == Some("ByteLevel")
            || v[part]["pretokenizers"]
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p["type"].as_str() == Some("ByteLevel")))
    };
    if model["type"].as_str() != Some("BPE")
        || !byte_level("pre_tokenizer")
        || !byte_level("decoder")
    {
        return Err(bad(
            "is not a byte-level BPE (only those are written as llama.cpp's gpt2 vocabulary)",
        ));
    }
    let pre = pre_tokenizer_name(&v["pre_tokenizer"]).ok_or_else(|| {
        bad(
            "splits text with a pre-tokenizer llama.cpp has no name for (GPT-2's ByteLevel \
             regex and Llama-3's Split are written)",
        )
    })?;
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| bad("has no model.vocab"))?;
    let mut tokens = vec![String::new(); c.vocab_size];
    let mut types = vec![TOKEN_NORMAL; c.vocab_size];
    let mut place = |token: &str, id: u64| -> Result<()> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            bad(&format!(
                "token {token:?} has id {id} ≥ the model's vocabulary"
            ))
        })?;
        *slot = token.to_string();
        Ok(())
    };
    for (token, id) in vocab {
        place(
            token,
            id.as_u64().ok_or_else(|| bad("has a non-integer id"))?,
        )?;
    }
    for t in v["added_tokens"].as_array().into_iter().flatten() {
        let (Some(token), Some(id)) = (t["content"].as_str(), t["id"].as_u64()) else {
            continue;
        };
        place(token, id)?;
        types[id as usize] = match t["special"].as_bool() {
            Some(true) => TOKEN_CONTROL,
            _ => TOKEN_USER_DEFINED,
        };
    }
    // Ids no token claims (a vocabulary smaller than the embedding) get unused placeholders.
    for (i, t) in tokens.iter_mut().enumerate() {
        if t.is_empty() {
            *t = format!("[PAD{i}]");
            types[i] = TOKEN_UNUSED;
        }
    }
    // llama.cpp refuses a vocabulary with a token string twice.
    let mut seen = HashSet::new();
    if let Some(t) = tokens.iter().find(|t| !seen.insert(t.as_str())) {
        return Err(bad(&format!("has the token {t:?} twice")));
    }
    let merges: Vec<Value> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            Json::String(s) => Some(s.clone()),
            Json::Array(pair) => Some(format!(
                "{} {}",
                pair.first()?.as_str()?,
                pair.get(1)?.as_str()?
            )),
            _ => None,
        })
        .map(Value::String)
        .collect();
    w.metadata("tokenizer.ggml.model", Value::String("gpt2".into()))
        .metadata("tokenizer.ggml.pre", Value::String(pre.into()))
        .metadata(
            "tokenizer.ggml.tokens",
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        )
        .metadata(
            "tokenizer.ggml.token_type",
            Value::Array(types.into_iter().map(Value::I32).collect()),
        )
        .metadata("tokenizer.ggml.merges", Value::Array(merges));
    // hbit starts every sequence with the model's BOS when it has one; say so, as llama.cpp
    // adds none for a gpt2 vocabulary unless told.
    w.metadata(
        "tokenizer.ggml.add_bos_token",
        Value::Bool(c.bos_token_id.is_some()),
    );
    if let Some(b) = c.bos_token_id {
        w.metadata("tokenizer.ggml.bos_token_id", Value::U32(b));
    }
    if let Some(e) = c.eos_token_id {
        w.metadata("tokenizer.ggml.eos_token_id", Value::U32(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_tokenizers_are_named_as_llama_cpp_names_them() {
        let byte_level = |regex: bool| json!({"type": "ByteLevel", "use_regex": regex});
        assert_eq!(pre_tokenizer_name(&byte_level(true)), Some("gpt-2"));
        let split =
            |r: &str| json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated"});
        let llama3 = json!({"type": "Sequence",
                            "pretokenizers": [split(LLAMA3_SPLIT), byte_level(false)]});
        assert_eq!(pre_tokenizer_name(&llama3), Some("llama-bpe"));
        let other = json!({"type": "Sequence",
                           "pretokenizers": [split(r"\p{N}"), byte_level(false)]});
        assert_eq!(pre_tokenizer_name(&other), None);
        assert_eq!(pre_tokenizer_name(&byte_level(false)), None);
    }
}
