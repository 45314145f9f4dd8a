//! GGUF vocabularies rebuilt as HF tokenizers give llama.cpp's token ids: a SentencePiece
//! (`llama`) vocabulary against a direct implementation of llama.cpp's best-score merge search
//! on seeded random text, and known answers worked out by hand; `gpt2` vocabularies split by
//! the regexes their `tokenizer.ggml.pre` names; BOS rules.

use std::path::Path;

use hbit_engine::gguf::{Gguf, GgufWriter, Value};
use hbit_engine::gguf_vocab::{special_ids, tokenizer_json};
use hbit_model::rng::SplitMix64;
use tokenizers::Tokenizer;

const MARK: char = '\u{2581}';

fn gguf(keys: Vec<(&str, Value)>) -> Gguf {
    let mut w = GgufWriter::new();
    for (k, v) in keys {
        w.metadata(k, v);
    }
    Gguf::parse(Path::new("vocab.gguf"), w.to_bytes().unwrap()).unwrap()
}

fn strings(items: &[String]) -> Value {
    Value::Array(items.iter().cloned().map(Value::String).collect())
}

/// A small SentencePiece vocabulary: unknown, BOS, EOS, 256 byte tokens, single characters and
/// merged pieces with distinct scores (longer pieces score higher, as SentencePiece BPE's
/// merge order gives), and one user-defined token.
fn spm_vocab() -> (Vec<String>, Vec<f32>, Vec<i32>) {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    let m = MARK;
    let pieces = [
        format!("{m}"),
        "a".into(),
        "b".into(),
        "c".into(),
        "d".into(),
        "e".into(),
        "h".into(),
        "l".into(),
        "o".into(),
        "r".into(),
        "t".into(),
        "w".into(),
        "ab".into(),
        "bc".into(),
        "he".into(),
        "ll".into(),
        "or".into(),
        format!("{m}t"),
        format!("{m}h"),
        format!("{m}w"),
        format!("{m}a"),
        "llo".into(),
        format!("{m}he"),
        format!("{m}the"),
        format!("{m}hello"),
        format!("{m}wor"),
        "ld".into(),
        format!("{m}world"),
        "abc".into(),
        format!("{m}abc"),
        "é".into(),
    ];
    let mut scores = vec![0.0; tokens.len()];
    for (i, p) in pieces.iter().enumerate() {
        tokens.push(p.clone());
        types.push(1);
        // Distinct: longer pieces first, then a per-piece offset.
        scores.push(p.chars().count() as f32 * 10.0 - i as f32 * 0.01);
    }
    tokens.push("<|user|>".into());
    types.push(4);
    scores.push(0.0);
    (tokens, scores, types)
}

fn spm_file(add_space_prefix: Option<bool>) -> Gguf {
    let (tokens, scores, types) = spm_vocab();
    let mut keys = vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        (
            "tokenizer.ggml.scores",
            Value::Array(scores.into_iter().map(Value::F32).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
    ];
    if let Some(p) = add_space_prefix {
        keys.push(("tokenizer.ggml.add_space_prefix", Value::Bool(p)));
    }
    gguf(keys)
}

/// llama.cpp's SentencePiece tokenization (llm_tokenizer_spm): user-defined tokens split out
/// first; each other fragment gets "▁" in front when it follows the start or a special token,
/// spaces become "▁", then adjacent symbols merge, best-scoring union first (ties: leftmost),
/// and a symbol that is not a token becomes its UTF-8 bytes' `<0xXX>` tokens.
fn llama_cpp_spm(text: &str, tokens: &[String], scores: &[f32], types: &[i32]) -> Vec<u32> {
    let id = |s: &str| tokens.iter().position(|t| t == s).map(|i| i as u32);
    let specials: Vec<(usize, &String)> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| types[*i] == 4)
        .collect();
    let mut out = Vec::new();
    let mut rest = text;
    let mut after_special = true;
    while !rest.is_empty() {
        let next = specials
            .iter()
            .filter_map(|(i, s)| rest.find(s.as_str()).map(|at| (at, *i, s.len())))
            .min();
        let (fragment, special) = match next {
            Some((0, i, len)) => {
                out.push(i as u32);
                rest = &rest[len..];
                after_special = true;
                continue;
            }
            Some((at, i, len)) => (&rest[..at], Some((i, at + len))),
            None => (rest, None),
        };
        let prefixed = if after_special {
            format!(" {fragment}")
        } else {
            fragment.to_string()
        };
        let escaped = prefixed.replace(' ', &MARK.to_string());
        let mut symbols: Vec<String> = escaped.chars().map(String::from).collect();
        loop {
            let best = (0..symbols.len().saturating_sub(1))
                .filter_map(|i| {
                    let union = format!("{}{}", symbols[i], symbols[i + 1]);
                    id(&union).map(|t| (scores[t as usize], i))
                })
                // Highest score; the leftmost among equals.
                .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
            let Some((_, i)) = best else { break };
            let right = symbols.remove(i + 1);
            symbols[i].push_str(&right);
        }
        for s in symbols {
            match id(&s) {
                Some(t) => out.push(t),
                None => out.extend(s.bytes().map(|b| id(&format!("<0x{b:02X}>")).unwrap())),
            }
        }
        after_special = false;
        match special {
            Some((i, end)) => {
                out.push(i as u32);
                rest = &rest[end..];
                after_special = true;
            }
            None => rest = "",
        }
    }
    out
}

fn tokenizer(file: &Gguf) -> Tokenizer {
    let json = tokenizer_json(file).unwrap().expect("a tokenizer");
    Tokenizer::from_bytes(json.as_bytes()).unwrap()
}

fn ids(t: &Tokenizer, text: &str) -> Vec<u32> {
    t.encode(text, false).unwrap().get_ids().to_vec()
}

#[test]
fn sentencepiece_known_answers() {
    let file = spm_file(None);
    let t = tokenizer(&file);
    let (tokens, _, _) = spm_vocab();
    let names = |text: &str| -> Vec<String> {
        ids(&t, text)
            .iter()
            .map(|&i| tokens[i as usize].clone())
            .collect()
    };
    let m = MARK;
    // "▁hello" and "▁world" are pieces; the space before "world" is its word mark.
    assert_eq!(
        names("hello world"),
        [format!("{m}hello"), format!("{m}world")]
    );
    // "▁abc": ▁ a b c → "ab" (19.88) beats "bc" (19.87) and "▁a" (19.80) → ▁ ab c → "abc"
    // (29.72) → ▁ abc → "▁abc" (39.71).
    assert_eq!(names("abc"), [format!("{m}abc")]);
    // A character outside the vocabulary falls back to its UTF-8 bytes; "é" is a piece.
    assert_eq!(
        names("ç"),
        [format!("{m}"), "<0xC3>".into(), "<0xA7>".into()]
    );
    assert_eq!(names("é"), [format!("{m}"), "é".into()]);
    // A user-defined token is matched whole, and the text after it gets a word mark again.
    assert_eq!(
        names("the<|user|>the"),
        [format!("{m}the"), "<|user|>".into(), format!("{m}the")]
    );
    // Decoding drops the leading word mark's space and turns bytes back into text.
    let enc = ids(&t, "hello ç world");
    assert_eq!(t.decode(&enc, false).unwrap(), "hello ç world");
}

#[test]
fn sentencepiece_matches_llama_cpp_on_random_text() {
    let file = spm_file(None);
    let t = tokenizer(&file);
    let (tokens, scores, types) = spm_vocab();
    let alphabet: Vec<&str> = vec![
        "a", "b", "c", "d", "e", "h", "l", "o", "r", "t", "w", " ", " ", "é", "ç", "日", "\n",
        "<|user|>", "hello", "world", "the",
    ];
    let mut rng = SplitMix64::new(7);
    for case in 0..2000 {
        let len = rng.below(12) as usize;
        let text: String = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
            .collect();
        let want = llama_cpp_spm(&text, &tokens, &scores, &types);
        assert_eq!(ids(&t, &text), want, "case {case}: {text:?}");
    }
}

#[test]
fn without_space_prefix_no_word_mark_is_added() {
    let file = spm_file(Some(false));
    let t = tokenizer(&file);
    let (tokens, _, _) = spm_vocab();
    let got: Vec<&str> = ids(&t, "he")
        .iter()
        .map(|&i| tokens[i as usize].as_str())
        .collect();
    assert_eq!(got, ["he"]);
    assert_eq!(t.decode(&ids(&t, " hello"), false).unwrap(), " hello");
}

fn gpt2_file(pre: Option<&str>, extra: Vec<(&'static str, Value)>) -> Gguf {
    // A byte-level vocabulary: every byte's character, plus a few merges.
    let bytes = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet();
    let mut tokens: Vec<String> = bytes.iter().map(|c| c.to_string()).collect();
    tokens.sort();
    // "Ġxy" has no merge that builds it: only whole-word lookup (Llama-3) reaches it.
    tokens.extend(["Ġt", "he", "Ġthe", "12", "123", "'M", "(he", "Ġxy"].map(String::from));
    let merges = ["Ġ t", "h e", "Ġt he", "1 2", "12 3", "' M", "( he"].map(String::from);
    let mut keys = vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        ("tokenizer.ggml.merges", strings(&merges)),
    ];
    if let Some(p) = pre {
        keys.push(("tokenizer.ggml.pre", Value::String(p.into())));
    }
    keys.extend(extra);
    gguf(keys)
}

#[test]
fn byte_level_vocabularies_split_as_their_pre_tokenizer_says() {
    let pieces = |pre: Option<&str>, text: &str| -> Vec<String> {
        let t = tokenizer(&gpt2_file(pre, vec![]));
        t.encode(text, false).unwrap().get_tokens().to_vec()
    };
    // GPT-2 keeps digit runs whole; Llama-3 and llama.cpp's default split them in threes.
    assert_eq!(pieces(Some("gpt-2"), "4123"), ["4", "123"]);
    // A file without tokenizer.ggml.pre gets llama.cpp's default, as llama.cpp does.
    assert_eq!(pieces(None, "4123"), ["4", "12", "3"]);
    assert_eq!(pieces(Some("llama-bpe"), "4123"), ["4", "12", "3"]);
    assert_eq!(pieces(Some("default"), "4123"), ["4", "12", "3"]);
    // Llama-3 matches contractions in any case; GPT-2 only in lower case.
    assert_eq!(pieces(Some("llama-bpe"), "I'M"), ["I", "'M"]);
    assert_eq!(pieces(Some("gpt-2"), "I'M"), ["I", "'", "M"]);
    // Llama-3 keeps a punctuation mark with the letters after it; GPT-2 does not.
    assert_eq!(pieces(Some("llama-bpe"), "(he"), ["(he"]);
    assert_eq!(pieces(Some("gpt-2"), "(he"), ["(", "he"]);
    // Llama-3 (and Falcon-E, its alias) takes a whole word found in the vocabulary as it is.
    assert_eq!(pieces(Some("falcon_e"), "the xy"), ["t", "he", "Ġxy"]);
    assert_eq!(pieces(Some("gpt-2"), "the xy"), ["t", "he", "Ġ", "x", "y"]);
    // Unknown pre-tokenizers are not guessed at.
    assert!(tokenizer_json(&gpt2_file(Some("qwen2"), vec![]))
        .unwrap()
        .is_none());
}

#[test]
fn bos_follows_llama_cpp_defaults() {
    let spm = spm_file(None);
    assert_eq!(special_ids(&spm), (Some(1), Some(2)));
    let no_bos = gpt2_file(
        Some("llama-bpe"),
        vec![
            ("tokenizer.ggml.bos_token_id", Value::U32(5)),
            ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        ],
    );
    assert_eq!(special_ids(&no_bos), (None, None));
    let llama3 = gpt2_file(
        Some("llama-bpe"),
        vec![("tokenizer.ggml.bos_token_id", Value::U32(5))],
    );
    assert_eq!(special_ids(&llama3), (Some(5), None));
    // gpt2 adds no BOS unless told.
    let gpt2 = gpt2_file(
        Some("gpt-2"),
        vec![("tokenizer.ggml.bos_token_id", Value::U32(5))],
    );
    assert_eq!(special_ids(&gpt2), (None, None));
}

#[test]
fn a_token_twice_is_refused() {
    let mut tokens: Vec<String> = spm_vocab().0;
    tokens.push("ab".into());
    let n = tokens.len();
    let file = gguf(vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        (
            "tokenizer.ggml.scores",
            Value::Array(vec![Value::F32(0.0); n]),
        ),
    ]);
    let e = tokenizer_json(&file).unwrap_err().to_string();
    assert!(
        e.contains("vocab.gguf") && e.contains("\"ab\" appears twice"),
        "{e}"
    );
}
