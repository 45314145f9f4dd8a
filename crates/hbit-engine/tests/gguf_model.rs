//! hbit models through GGUF and back: the same logits bit for bit (I2_S), the same codes with
//! the scale rounded to f16 (TQ types), the vocabulary intact, and models bitnet.cpp would run
//! differently refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::f16;
use hbit_engine::gguf::{GgmlType, Gguf, Value};
use hbit_engine::gguf_model::{read_gguf_model, write_gguf_model, GgufQuant};
use hbit_engine::{Engine, KvBits, Logits, Weights};
use hbit_kernels::ActBits;
use hbit_train::config::{preset, Variant};
use hbit_train::{BitnetModel, ModelConfig};

fn weights(config: &ModelConfig, seed: u64) -> Weights {
    let model = BitnetModel::init(config, seed).unwrap();
    let latent: HashMap<String, Vec<f32>> = model
        .named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    Weights::from_latent(config, &latent, false, Path::new("<test>")).unwrap()
}

fn logits(weights: Weights, tokens: &[u32]) -> Vec<f32> {
    let engine = Engine::new(weights);
    let mut cache = engine.new_cache(KvBits::F16);
    let mut out = engine
        .forward(&mut [&mut cache], &[tokens], Logits::All)
        .unwrap()
        .remove(0);
    out.extend(
        engine
            .forward(&mut [&mut cache], &[&[7]], Logits::Last)
            .unwrap()
            .remove(0),
    );
    out
}

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hbit-gguf-model-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn an_i2s_export_reads_back_to_the_same_logits() {
    let d = dir("i2s");
    for relu2 in [false, true] {
        // Rows of 256 and 768 columns: whole I2_S blocks per row, as bitnet.cpp reads them.
        let mut config = preset("tiny", Variant::BitnetB158, ActBits::Int8).unwrap();
        if relu2 {
            config.hidden_act = hbit_model::config::HiddenAct::Relu2;
        }
        let path = d.join(format!("m-{relu2}.gguf"));
        write_gguf_model(&weights(&config, 3), None, None, GgufQuant::I2S, &path).unwrap();
        let file = Gguf::read(&path).unwrap();
        let arch = if relu2 { "bitnet-b1.58" } else { "bitnet" };
        assert_eq!(
            file.get("general.architecture").and_then(Value::as_str),
            Some(arch)
        );
        assert_eq!(
            file.tensor("blk.1.ffn_down.weight").unwrap().ty,
            GgmlType::I2S
        );
        assert_eq!(
            file.tensor("blk.1.ffn_down.weight").unwrap().shape(),
            [256, 768]
        );
        let model = read_gguf_model(&path, false).unwrap();
        assert!(model.tokenizer_json.is_none() && model.chat_template.is_none());
        let back = model.weights;
        assert_eq!(back.config, config);
        let toks = [1u32, 5, 9, 200, 4095, 3];
        let want = logits(weights(&config, 3), &toks);
        let got = logits(back, &toks);
        assert_eq!(
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{arch}"
        );
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn tq_and_f16_exports_keep_the_codes_with_the_scale_at_f16() {
    let d = dir("tq");
    // Rows of 256 and 768 columns fill TQ's 256-weight blocks.
    let config = preset("tiny", Variant::BitnetB158, ActBits::Int8).unwrap();
    let original = weights(&config, 5);
    for quant in [GgufQuant::TQ2_0, GgufQuant::TQ1_0, GgufQuant::F16] {
        let path = d.join(format!("{quant:?}.gguf"));
        write_gguf_model(&original, None, None, quant, &path).unwrap();
        let back = read_gguf_model(&path, false).unwrap().weights;
        for (a, b) in original.layers.iter().zip(&back.layers) {
            for p in hbit_model::Proj::ALL {
                let (x, y) = (
                    a.projection(p).weight.unpack(),
                    b.projection(p).weight.unpack(),
                );
                assert_eq!(x.codes, y.codes, "{quant:?} {p:?}");
                assert_eq!(f16::from_f32(x.alpha).to_f32(), y.alpha, "{quant:?} {p:?}");
            }
        }
    }
    // The micro model's 64-column rows fill neither TQ's nor I2_S's blocks: clear errors.
    let micro = preset("micro", Variant::BitnetB158, ActBits::Int8).unwrap();
    let e = write_gguf_model(
        &weights(&micro, 1),
        None,
        None,
        GgufQuant::TQ2_0,
        &d.join("x.gguf"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("blocks of 256") && e.contains("64 columns"),
        "{e}"
    );
    let e = write_gguf_model(
        &weights(&micro, 1),
        None,
        None,
        GgufQuant::I2S,
        &d.join("x.gguf"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("I2_S") && e.contains("64 columns"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn models_bitnet_cpp_would_run_differently_are_refused() {
    let d = dir("refuse");
    for (variant, bits, why) in [
        (Variant::BitnetV2, ActBits::Int8, "Hadamard"),
        (Variant::BitnetA48, ActBits::Int4, "8 bits"),
        (Variant::BitnetV2NoRotation, ActBits::Int4, "8 bits"),
    ] {
        let config = preset("micro", variant, bits).unwrap();
        let out = d.join("m.gguf");
        let e = write_gguf_model(&weights(&config, 1), None, None, GgufQuant::I2S, &out)
            .unwrap_err()
            .to_string();
        assert!(e.contains(why) && e.contains(variant.name()), "{e}");
        assert!(!out.exists());
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn the_vocabulary_travels_as_a_gpt2_tokenizer() {
    let d = dir("vocab");
    let text = "the quick brown fox jumps over the lazy dog; ünïcode 🦀 too. ".repeat(40);
    let tok = hbit_train::tokenizer::train_bpe([text.as_str()].into_iter(), 300, false).unwrap();
    let json = tok.to_string(false).unwrap();
    let mut config = preset("micro", Variant::BitnetB158, ActBits::Int8).unwrap();
    (config.bos_token_id, config.eos_token_id) = (Some(0), Some(0));
    let path = d.join("m.gguf");
    let template = "{% for m in messages %}{{ m.content }}{% endfor %}";
    let weights2 = weights(&config, 2);
    write_gguf_model(
        &weights2,
        Some(&json),
        Some(template),
        GgufQuant::F16,
        &path,
    )
    .unwrap();
    let file = Gguf::read(&path).unwrap();
    assert_eq!(
        file.get("tokenizer.ggml.model").and_then(Value::as_str),
        Some("gpt2")
    );
    let tokens = file
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .unwrap();
    assert_eq!(tokens.len(), config.vocab_size);
    let model = read_gguf_model(&path, false).unwrap();
    assert_eq!(model.chat_template.as_deref(), Some(template));
    let back = tokenizers::Tokenizer::from_bytes(model.tokenizer_json.unwrap().as_bytes()).unwrap();
    for sample in [text.as_str(), "<|endoftext|>unseen wörds, 中文"] {
        let a = tok.encode(sample, false).unwrap();
        let b = back.encode(sample, false).unwrap();
        assert_eq!(a.get_ids(), b.get_ids(), "{sample}");
        assert_eq!(back.decode(b.get_ids(), false).unwrap(), sample);
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_gguf_with_a_stray_tensor_or_another_architecture_is_refused() {
    let d = dir("stray");
    let config = preset("micro", Variant::BitnetB158, ActBits::Int8).unwrap();
    let path = d.join("m.gguf");
    write_gguf_model(&weights(&config, 4), None, None, GgufQuant::F16, &path).unwrap();
    // Rewrite with one more tensor.
    let file = Gguf::read(&path).unwrap();
    let mut w = hbit_engine::gguf::GgufWriter::new();
    for (k, v) in &file.metadata {
        w.metadata(k, v.clone());
    }
    for t in &file.tensors {
        w.tensor(&t.name, &t.shape(), t.ty, file.data(t).to_vec())
            .unwrap();
    }
    w.tensor("blk.0.extra.weight", &[4], GgmlType::F32, vec![0; 16])
        .unwrap();
    w.write(&path).unwrap();
    let e = read_gguf_model(&path, false).err().unwrap().to_string();
    assert!(
        e.contains("blk.0.extra.weight") && e.contains("unexpected"),
        "{e}"
    );
    // An architecture that is not BitNet.
    let mut w = hbit_engine::gguf::GgufWriter::new();
    w.metadata("general.architecture", Value::String("llama".into()));
    w.write(&path).unwrap();
    let e = read_gguf_model(&path, false).err().unwrap().to_string();
    assert!(
        e.contains("general.architecture") && e.contains("llama"),
        "{e}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// Random byte changes of a whole model file: reading it as a model never panics (a damaged
/// layer count, shape or type is an error).
#[test]
fn damaged_model_files_never_panic() {
    let d = dir("fuzz");
    let config = preset("micro", Variant::BitnetB158, ActBits::Int8).unwrap();
    let path = d.join("m.gguf");
    write_gguf_model(&weights(&config, 6), None, None, GgufQuant::F16, &path).unwrap();
    let good = std::fs::read(&path).unwrap();
    let mut rng = hbit_model::rng::SplitMix64::new(5);
    // The header and tensor infos, where a change alters structure rather than values.
    let head = 4096.min(good.len());
    for round in 0..300 {
        let mut bytes = good.clone();
        for _ in 0..1 + rng.next_u64() % 3 {
            let at = (rng.next_u64() % head as u64) as usize;
            bytes[at] = rng.next_u64() as u8;
        }
        if round % 50 == 0 {
            // A layer count of 2^40 must not drive an allocation.
            let at = bytes.windows(18).position(|w| w == b"bitnet.block_count");
            if let Some(at) = at {
                let value = at + 18 + 4;
                bytes[value..value + 4].copy_from_slice(&u32::MAX.to_le_bytes());
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        let _ = read_gguf_model(&path, false);
    }
    std::fs::remove_dir_all(&d).unwrap();
}
