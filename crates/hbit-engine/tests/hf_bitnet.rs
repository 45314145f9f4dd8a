//! The microsoft/bitnet-b1.58-2B-4T checkpoint layout, on a `micro` model written in that
//! layout: it loads, packs, and reproduces the latent model; `weight_scale` divides.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::bf16;
use hbit_engine::format::load_packed;
use hbit_engine::hf_bitnet::{pack_hf_codes, unpack_hf_codes};
use hbit_engine::pack::{load_checkpoint_dir, pack_checkpoint};
use hbit_engine::{Engine, KvBits, Logits, Weights};
use hbit_kernels::{quantize_ternary, ActBits};
use hbit_train::config::{preset, HiddenAct, Variant};
use hbit_train::{BitnetModel, ModelConfig};
use safetensors::tensor::{Dtype, TensorView};

fn config() -> ModelConfig {
    preset("micro", Variant::BitnetB158, ActBits::Int8)
        .unwrap()
        .with_quantization(Variant::BitnetB158, ActBits::Int8, HiddenAct::Relu2)
        .unwrap()
}

fn latent() -> HashMap<String, Vec<f32>> {
    let model = BitnetModel::init(&config(), 31).unwrap();
    model
        .named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

/// Writes the checkpoint in the 2B4T layout; `scale_of(alpha)` is what goes in `weight_scale`.
fn write_hf(dir: &Path, scale_of: impl Fn(f32) -> f32) {
    std::fs::create_dir_all(dir).unwrap();
    let c = config();
    let hf_config = serde_json::json!({
        "architectures": ["BitNetForCausalLM"], "model_type": "bitnet",
        "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads, "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_position_embeddings, "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta, "hidden_act": "relu2", "tie_word_embeddings": true,
        "bos_token_id": 1, "eos_token_id": [2, 3], "torch_dtype": "bfloat16",
        "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                "quantization_mode": "offline"}
    });
    std::fs::write(dir.join("config.json"), hf_config.to_string()).unwrap();
    let mut blobs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, shape) in hbit_model::parameter_shapes(&c) {
        let values = &latent()[&name];
        if shape.len() == 2 && name.contains("layers") {
            let (rows, cols) = (shape[0], shape[1]);
            let q = quantize_ternary(values, rows, cols).unwrap();
            blobs.push((
                name.clone(),
                Dtype::U8,
                vec![rows / 4, cols],
                pack_hf_codes(&q.codes, rows, cols),
            ));
            let s = bf16::from_f32(scale_of(q.alpha)).to_le_bytes().to_vec();
            blobs.push((format!("{name}_scale"), Dtype::BF16, vec![1], s));
        } else {
            let bytes = values
                .iter()
                .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
                .collect();
            blobs.push((name, Dtype::BF16, shape, bytes));
        }
    }
    let views: Vec<(String, TensorView)> = blobs
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

fn logits(weights: Weights) -> Vec<f32> {
    let engine = Engine::new(weights);
    let mut cache = engine.new_cache(KvBits::F32);
    let toks: Vec<u32> = (0..24).map(|i| (i * 37 + 5) % 512).collect();
    engine
        .forward(&mut [&mut cache], &[&toks], Logits::All)
        .unwrap()
        .remove(0)
}

fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hbit-hf-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// bf16 embeddings, norms and scales (2B4T stores bf16) keep the logits within this of the
/// latent f32 model.
const BF16_REL_TOL: f32 = 5e-2;

#[test]
fn hf_bitnet_layout_loads_and_weight_scale_divides() {
    let want =
        logits(Weights::from_latent(&config(), &latent(), false, Path::new("<latent>")).unwrap());

    // The 2B4T convention: weight_scale = 1 / mean|W|, so W = code / weight_scale.
    let dir = tempdir("divide");
    write_hf(&dir, |alpha| 1.0 / alpha);
    let (weights, tokenizer) = load_checkpoint_dir(&dir, false).unwrap();
    assert!(tokenizer.is_none());
    assert_eq!(weights.config.eos_token_id, Some(2));
    assert_eq!(weights.config.hidden_act, HiddenAct::Relu2);
    assert_eq!(weights.config.variant, Variant::BitnetB158);
    let got = logits(weights);
    let diff = rel_diff(&got, &want);
    assert!(diff < BF16_REL_TOL, "dividing reading: {diff}");

    // Read the other way (a writer that stored alpha itself), the same loader is far off:
    // only the dividing reading reproduces the model.
    let wrong = tempdir("multiply");
    write_hf(&wrong, |alpha| alpha);
    let off = rel_diff(
        &logits(load_checkpoint_dir(&wrong, false).unwrap().0),
        &want,
    );
    assert!(
        off > 20.0 * diff.max(1e-3),
        "multiplying reading should not match: {off} vs {diff}"
    );

    println!("relative logit difference: weight_scale divides {diff:.2e}, multiplies {off:.2e}");
    // Packing it gives the same model.
    let out = dir.join("packed.hbit");
    pack_checkpoint(&dir, &out, false, hbit_engine::Int4Layout::native(), None).unwrap();
    assert!(logits(load_packed(&out).unwrap().weights) == got);
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&wrong).unwrap();
}

#[test]
fn unpacking_follows_the_hf_layout_and_refuses_code_3() {
    // 8 rows, 1 column: packed row 0 holds rows 0, 2, 4, 6 in fields 0..4; row 1 the odd rows.
    let codes: Vec<i8> = vec![-1, 0, 1, -1, 0, 1, 1, 0];
    let packed = pack_hf_codes(&codes, 8, 1);
    // Even rows -1, 1, 0, 1 -> codes 0, 2, 1, 2 in fields 0..4; odd rows 0, -1, 1, 0 -> 1, 0, 2, 1.
    assert_eq!(packed, vec![0b10_01_10_00, 0b01_10_00_01]);
    assert_eq!(unpack_hf_codes(&packed, 8, 1).unwrap(), codes);
    let e = unpack_hf_codes(&[0b11, 0], 8, 1).unwrap_err();
    assert!(e.contains("code 3"), "{e}");
}

/// hbit's HF export reads back through the HF reader to the same config and bit-identical
/// logits, for both FFN activations; a BitNet v2 model is refused.
#[test]
fn an_hf_export_reads_back_to_the_same_logits() {
    let dir = std::env::temp_dir().join(format!("hbit-hf-export-{}", std::process::id()));
    for act in [HiddenAct::Relu2, HiddenAct::Silu] {
        let c = preset("micro", Variant::BitnetB158, ActBits::Int8)
            .unwrap()
            .with_quantization(Variant::BitnetB158, ActBits::Int8, act)
            .unwrap();
        let model = BitnetModel::init(&c, 17).unwrap();
        let latent: HashMap<String, Vec<f32>> = model
            .named_vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
            .collect();
        let weights = || Weights::from_latent(&c, &latent, false, Path::new("<test>")).unwrap();
        hbit_engine::hf_bitnet::write_hf_bitnet(&weights(), None, Some("{{ x }}"), &dir).unwrap();
        let (back, tokenizer) = load_checkpoint_dir(&dir, false).unwrap();
        assert!(tokenizer.is_none());
        assert_eq!(back.config, c);
        assert_eq!(
            logits(back).iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            logits(weights())
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
            "{act:?}"
        );
        assert_eq!(
            hbit_engine::pack::read_chat_template(&dir)
                .unwrap()
                .as_deref(),
            Some("{{ x }}")
        );
    }
    // An earlier export is replaced whole; a directory holding anything else is left alone.
    let c = config();
    let w = Weights::from_latent(&c, &latent(), false, Path::new("<test>")).unwrap();
    hbit_engine::hf_bitnet::write_hf_bitnet(&w, None, None, &dir).unwrap();
    assert!(!dir.join("tokenizer_config.json").exists());
    let mine = dir.join("notes.txt");
    std::fs::write(&mine, "keep me").unwrap();
    let e = hbit_engine::hf_bitnet::write_hf_bitnet(&w, None, None, &dir)
        .unwrap_err()
        .to_string();
    assert!(e.contains("notes.txt"), "{e}");
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "keep me");
    std::fs::remove_file(&mine).unwrap();
    for bad in [Path::new("."), Path::new("..")] {
        assert!(hbit_engine::hf_bitnet::write_hf_bitnet(&w, None, None, bad).is_err());
    }
    let leftovers = std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("hbit-hf-export") && e.path() != dir)
        .count();
    assert_eq!(leftovers, 0, "temporary directories left behind");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Variants transformers' BitNet class does not compute travel with hbit's modeling file and
/// come back to the same logits bit for bit.
#[test]
fn remote_code_exports_read_back_to_the_same_logits() {
    let dir = std::env::temp_dir().join(format!("hbit-hf-remote-{}", std::process::id()));
    for (variant, bits) in [
        (Variant::BitnetV2, ActBits::Int8),
        (Variant::BitnetV2, ActBits::Int4),
        (Variant::BitnetA48, ActBits::Int4),
        (Variant::BitnetV2WeightRotation, ActBits::Int4),
        (Variant::BitnetV2NoRotation, ActBits::Int4),
    ] {
        let c = preset("micro", variant, bits).unwrap();
        let model = BitnetModel::init(&c, 1).unwrap();
        let latent: HashMap<String, Vec<f32>> = model
            .named_vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
            .collect();
        let weights = || Weights::from_latent(&c, &latent, false, Path::new("<test>")).unwrap();
        hbit_engine::hf_bitnet::write_hf_bitnet(&weights(), None, None, &dir).unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["model_type"], "hbit_bitnet");
        assert!(config.get("quantization_config").is_none());
        assert_eq!(
            config["auto_map"]["AutoModelForCausalLM"],
            "modeling_hbit_bitnet.HbitBitnetForCausalLM"
        );
        assert_eq!(config["hbit_quantization"]["variant"], variant.name());
        for file in ["modeling_hbit_bitnet.py", "configuration_hbit_bitnet.py"] {
            assert!(dir.join(file).is_file(), "{file}");
        }
        let (back, _) = load_checkpoint_dir(&dir, false).unwrap();
        assert_eq!(back.config, c, "{}", variant.name());
        assert!(
            logits(back) == logits(weights()),
            "{} a{}",
            variant.name(),
            bits.bits()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A training checkpoint's HF export keeps its latent weights: hbit reads the directory back as
/// a checkpoint (same logits as the source) and the trainer can start from it.
#[test]
fn latent_exports_read_back_as_checkpoints() {
    let dir = std::env::temp_dir().join(format!("hbit-hf-latent-{}", std::process::id()));
    let c = preset("micro", Variant::BitnetV2, ActBits::Int4).unwrap();
    let model = BitnetModel::init(&c, 5).unwrap();
    let latent: HashMap<String, Vec<f32>> = model
        .named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    hbit_engine::hf_bitnet::write_hf_latent(&c, &latent, None, None, &dir).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["hbit_quantization"]["weights"], "latent");
    assert_eq!(config["hbit_quantization"]["activation_bits"], 4);
    let (back, _) = load_checkpoint_dir(&dir, false).unwrap();
    assert_eq!(back.config, c);
    let want = Weights::from_latent(&c, &latent, false, Path::new("<test>")).unwrap();
    assert!(logits(back) == logits(want));
    let trainable = hbit_train::checkpoint::load_model(&dir).unwrap();
    assert_eq!(trainable.config(), &c);
    std::fs::remove_dir_all(&dir).unwrap();
}
