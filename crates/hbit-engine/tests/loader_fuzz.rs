//! Every model-file reader against damaged and hostile input: seeded random mutations and
//! truncations of valid files (the packed model, a training checkpoint's safetensors and
//! config.json, tokenizer.json, a GGUF model), plus hand-made hostile headers (absurd lengths, counts and
//! shapes, overlapping tensors, offsets past the end). Each case must end in a clear error or a
//! valid load, never a panic; a packed file whose weights changed must fail its checksum.
//!
//! `HBIT_FUZZ_CASES=N` sets the cases per reader (default 2000); the README gives a longer run.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use hbit_engine::format::{load_packed_opts, write_packed, LoadMode, Verify};
use hbit_engine::gguf_model::{read_gguf_model, write_gguf_model, GgufQuant};
use hbit_engine::pack::load_checkpoint_dir;
use hbit_engine::Weights;
use hbit_kernels::ActBits;
use hbit_model::rng::SplitMix64;
use hbit_model::ModelConfig;
use hbit_train::config::{preset, Variant};
use hbit_train::BitnetModel;

fn cases() -> u64 {
    std::env::var("HBIT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hbit-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One random damage: byte changes (mostly in the first `head` bytes, where structure lives),
/// a truncation, a cut or repeated span, or an extreme little-endian integer written over
/// eight bytes.
fn mutate(good: &[u8], head: usize, rng: &mut SplitMix64) -> Vec<u8> {
    let mut bytes = good.to_vec();
    let pick = |rng: &mut SplitMix64, len: usize| -> usize {
        let len = len.max(1);
        if rng.below(10) < 7 {
            rng.below(head.min(len) as u64) as usize
        } else {
            rng.below(len as u64) as usize
        }
    };
    match rng.below(6) {
        0 | 1 => {
            for _ in 0..1 + rng.below(4) {
                let at = pick(rng, bytes.len());
                if at < bytes.len() {
                    bytes[at] = rng.next_u64() as u8;
                }
            }
        }
        2 => bytes.truncate(rng.below(good.len() as u64) as usize),
        3 => {
            let at = pick(rng, bytes.len());
            let end = (at + 1 + rng.below(64) as usize).min(bytes.len());
            bytes.drain(at..end);
        }
        4 => {
            let at = pick(rng, bytes.len());
            let end = (at + 1 + rng.below(64) as usize).min(bytes.len());
            let span = bytes[at..end].to_vec();
            bytes.splice(at..at, span);
        }
        _ => {
            let extremes = [
                0u64,
                1,
                u64::MAX,
                1 << 40,
                u32::MAX as u64,
                good.len() as u64,
            ];
            let value = extremes[rng.below(extremes.len() as u64) as usize];
            let at = pick(rng, bytes.len());
            if at + 8 <= bytes.len() {
                bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
        }
    }
    bytes
}

/// Runs `load` on every case, failing with the case number if one panics.
fn never_panics(reader: &str, mut case: impl FnMut(u64)) {
    for i in 0..cases() {
        let outcome = catch_unwind(AssertUnwindSafe(|| case(i)));
        assert!(outcome.is_ok(), "{reader}: case {i} panicked");
    }
}

fn micro_model(variant: Variant, bits: ActBits) -> (ModelConfig, BitnetModel) {
    let config = preset("micro", variant, bits).unwrap();
    let model = BitnetModel::init(&config, 9).unwrap();
    (config, model)
}

fn packed_bytes(dir: &Path) -> Vec<u8> {
    let (config, model) = micro_model(Variant::BitnetV2, ActBits::Int4);
    let latent = latent_values(&model);
    let weights = Weights::from_latent(&config, &latent, true, Path::new("<test>")).unwrap();
    let path = dir.join("good.hbit");
    write_packed(&path, &weights, Some("{\"not\": \"checked here\"}"), None).unwrap();
    std::fs::read(&path).unwrap()
}

fn header_len(bytes: &[u8]) -> usize {
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

#[test]
fn damaged_packed_files_are_errors_and_changed_weights_fail_the_checksum() {
    let dir = tempdir("packed");
    let good = packed_bytes(&dir);
    let head = header_len(&good);
    let path = dir.join("case.hbit");
    let mut rng = SplitMix64::new(1);
    never_panics("packed file", |_| {
        let bytes = mutate(&good, head, &mut rng);
        std::fs::write(&path, &bytes).unwrap();
        let unchecked = load_packed_opts(&path, LoadMode::Read, Verify::Skip);
        let checked = load_packed_opts(&path, LoadMode::Map, Verify::Checksum);
        if let Err(e) = &checked {
            assert!(e.to_string().contains("case.hbit"), "{e}");
        }
        // Same length, same header, some data byte changed: only the checksum can tell.
        let data_changed = bytes.len() == good.len()
            && bytes[..head] == good[..head]
            && bytes[head..] != good[head..];
        if data_changed {
            let e = checked
                .err()
                .expect("changed weights must fail the checksum");
            assert!(e.to_string().contains("checksum mismatch"), "{e}");
        }
        drop(unchecked);
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Rewrites a packed file's safetensors header with `edit` applied to its JSON.
fn with_header(good: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let head = header_len(good);
    let mut json: serde_json::Value = serde_json::from_slice(&good[8..head]).unwrap();
    edit(&mut json);
    let text = serde_json::to_vec(&json).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&good[head..]);
    out
}

#[test]
fn hostile_packed_headers_are_errors_naming_the_file() {
    let dir = tempdir("hostile");
    let good = packed_bytes(&dir);
    let name = "model.layers.0.mlp.down_proj.weight";
    let other = "model.layers.1.mlp.down_proj.weight";
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    for len in [u64::MAX, 1 << 40, good.len() as u64, 0] {
        let mut b = good.clone();
        b[..8].copy_from_slice(&len.to_le_bytes());
        cases.push(("header length", b));
    }
    cases.push((
        "overlapping tensors",
        with_header(&good, |j| {
            j[name]["data_offsets"] = j[other]["data_offsets"].clone()
        }),
    ));
    cases.push((
        "offsets past the end",
        with_header(&good, |j| {
            j[name]["data_offsets"] = serde_json::json!([1u64 << 40, (1u64 << 40) + 64])
        }),
    ));
    cases.push((
        "absurd shape",
        with_header(&good, |j| {
            j[name]["shape"] = serde_json::json!([1u64 << 40, 1u64 << 40])
        }),
    ));
    let config = |edit: &dyn Fn(&mut serde_json::Value)| {
        with_header(&good, |j| {
            let mut c: serde_json::Value =
                serde_json::from_str(j["__metadata__"]["config"].as_str().unwrap()).unwrap();
            edit(&mut c);
            j["__metadata__"]["config"] = serde_json::Value::String(c.to_string());
        })
    };
    cases.push((
        "layer count 2^40",
        config(&|c| c["num_hidden_layers"] = serde_json::json!(1u64 << 40)),
    ));
    cases.push((
        "vocabulary 2^62",
        config(&|c| c["vocab_size"] = serde_json::json!(1u64 << 62)),
    ));
    cases.push((
        "hidden size 0",
        config(&|c| c["hidden_size"] = serde_json::json!(0)),
    ));
    cases.push((
        "heads 0",
        config(&|c| c["num_attention_heads"] = serde_json::json!(0)),
    ));
    for (what, bytes) in cases {
        let path = dir.join("hostile.hbit");
        std::fs::write(&path, &bytes).unwrap();
        for verify in [Verify::Skip, Verify::Checksum] {
            let outcome = catch_unwind(|| load_packed_opts(&path, LoadMode::Read, verify));
            let result = outcome.unwrap_or_else(|_| panic!("{what}: panicked"));
            let e = result.err().unwrap_or_else(|| panic!("{what}: loaded"));
            assert!(e.to_string().contains("hostile.hbit"), "{what}: {e}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn damaged_training_checkpoints_are_errors() {
    let dir = tempdir("checkpoint");
    let (_, model) = micro_model(Variant::BitnetB158, ActBits::Int8);
    let good_dir = dir.join("good");
    hbit_train::checkpoint::save_model(&good_dir, &model, None).unwrap();
    let weights = std::fs::read(good_dir.join("model.safetensors")).unwrap();
    let config = std::fs::read(good_dir.join("config.json")).unwrap();
    let case_dir = dir.join("case");
    std::fs::create_dir_all(&case_dir).unwrap();
    let mut rng = SplitMix64::new(2);
    let weights_head = header_len(&weights);
    never_panics("checkpoint", |i| {
        // Alternate: damaged weights with a good config, damaged config with good weights.
        let (w, c) = if i % 2 == 0 {
            (mutate(&weights, weights_head, &mut rng), config.clone())
        } else {
            (weights.clone(), mutate(&config, config.len(), &mut rng))
        };
        std::fs::write(case_dir.join("model.safetensors"), &w).unwrap();
        std::fs::write(case_dir.join("config.json"), &c).unwrap();
        if let Err(e) = load_checkpoint_dir(&case_dir, false) {
            let text = e.to_string();
            assert!(
                text.contains("model.safetensors") || text.contains("config.json"),
                "{text}"
            );
        }
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn damaged_config_files_are_errors_naming_the_field() {
    let dir = tempdir("config");
    let (config, _) = micro_model(Variant::BitnetV2, ActBits::Int8);
    let good = config.to_json().into_bytes();
    let path = dir.join("config.json");
    let mut rng = SplitMix64::new(3);
    never_panics("config.json", |_| {
        std::fs::write(&path, mutate(&good, good.len(), &mut rng)).unwrap();
        if let Err(e) = ModelConfig::load(&path) {
            assert!(e.to_string().contains("config.json"), "{e}");
        }
    });
    // Absurd sizes that parse are refused by validation, not by an allocation.
    for (field, value) in [
        ("num_hidden_layers", 1u64 << 40),
        ("vocab_size", 1 << 62),
        ("hidden_size", 1 << 50),
        ("num_attention_heads", 0),
        ("intermediate_size", 0),
    ] {
        let mut json: serde_json::Value = serde_json::from_slice(&good).unwrap();
        json[field] = serde_json::json!(value);
        std::fs::write(&path, json.to_string()).unwrap();
        let e = ModelConfig::load(&path).err();
        let e = e.unwrap_or_else(|| panic!("{field} = {value} accepted"));
        assert!(e.to_string().contains(field), "{field}: {e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn damaged_tokenizer_files_are_errors() {
    let text = "the quick brown fox jumps over the lazy dog. ".repeat(40);
    let tokenizer = hbit_train::tokenizer::train_bpe([text.as_str()].into_iter(), 300, false)
        .expect("a tiny BPE trains");
    let good = tokenizer.to_string(false).unwrap().into_bytes();
    let dir = tempdir("tokenizer");
    let path = dir.join("tokenizer.json");
    let mut rng = SplitMix64::new(4);
    never_panics("tokenizer.json", |_| {
        std::fs::write(&path, mutate(&good, good.len(), &mut rng)).unwrap();
        match hbit_train::tokenizer::load_tokenizer(&path) {
            // Whatever loads must also encode and decode without panicking.
            Ok(t) => {
                if let Ok(enc) = t.encode("the lazy dog", false) {
                    let _ = t.decode(enc.get_ids(), false);
                }
            }
            Err(e) => assert!(e.to_string().contains("tokenizer.json"), "{e}"),
        }
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn damaged_gguf_models_are_errors_naming_the_file() {
    let dir = tempdir("gguf");
    let (config, model) = micro_model(Variant::BitnetB158, ActBits::Int8);
    let latent = latent_values(&model);
    let weights = Weights::from_latent(&config, &latent, false, Path::new("<test>")).unwrap();
    let path = dir.join("case.gguf");
    write_gguf_model(&weights, None, None, GgufQuant::F16, &path).unwrap();
    let good = std::fs::read(&path).unwrap();
    // Metadata and tensor infos come first; the data section starts after them.
    let head = good.len() - weights.ternary_bytes().min(good.len() / 2);
    let mut rng = SplitMix64::new(5);
    never_panics("gguf", |_| {
        std::fs::write(&path, mutate(&good, head, &mut rng)).unwrap();
        if let Err(e) = read_gguf_model(&path, false) {
            assert!(e.to_string().contains("case.gguf"), "{e}");
        }
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every parameter of `model` as a flat vector, by name.
fn latent_values(model: &BitnetModel) -> HashMap<String, Vec<f32>> {
    model
        .named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}
