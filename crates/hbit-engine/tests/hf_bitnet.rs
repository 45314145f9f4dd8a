//! transformers' BitNet checkpoint layouts, on a `micro` model written in each: it loads, packs,
//! and reproduces the latent model only with the scale rule of its `linear_class` (`bitlinear`
//! divides, `autobitlinear` offline multiplies, online quantizes master weights); hbit's own
//! exports (every variant, packed or latent) read back exactly.

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
    latent_values(&BitnetModel::init(&config(), 31).unwrap())
}

/// How a test checkpoint stores its projections.
#[derive(Clone, Copy)]
enum Storage {
    /// Packed U8 codes and `weight_scale = scale_of(alpha)`.
    Packed,
    /// Float codes (ternary values 0, ±1) and `weight_scale = scale_of(alpha)`.
    FloatCodes,
    /// The latent master weights, no scale.
    Master,
}

/// Writes the checkpoint in transformers' BitNet layout with `quantization_config` =
/// `quant` and projections stored as `storage`.
fn write_hf(dir: &Path, quant: serde_json::Value, storage: Storage, scale_of: impl Fn(f32) -> f32) {
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
        "quantization_config": quant,
    });
    std::fs::write(dir.join("config.json"), hf_config.to_string()).unwrap();
    let mut blobs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, shape) in hbit_model::parameter_shapes(&c) {
        let values = &latent()[&name];
        let projection = shape.len() == 2 && name.contains("layers");
        if projection && !matches!(storage, Storage::Master) {
            let (rows, cols) = (shape[0], shape[1]);
            let q = quantize_ternary(values, rows, cols).unwrap();
            match storage {
                Storage::Packed => blobs.push((
                    name.clone(),
                    Dtype::U8,
                    vec![rows / 4, cols],
                    pack_hf_codes(&q.codes, rows, cols),
                )),
                _ => blobs.push((
                    name.clone(),
                    Dtype::BF16,
                    shape.clone(),
                    q.codes
                        .iter()
                        .flat_map(|&c| bf16::from_f32(c as f32).to_le_bytes())
                        .collect(),
                )),
            }
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

fn quant(class: &str, mode: &str) -> serde_json::Value {
    serde_json::json!({"quant_method": "bitnet", "linear_class": class, "quantization_mode": mode})
}

/// Logits of a checkpoint written as `quant` / `storage` with `scale_of`, relative to the
/// latent model's.
fn reading(tag: &str, q: serde_json::Value, storage: Storage, scale_of: fn(f32) -> f32) -> f32 {
    let want =
        logits(Weights::from_latent(&config(), &latent(), false, Path::new("<latent>")).unwrap());
    let dir = tempdir(tag);
    write_hf(&dir, q, storage, scale_of);
    let (weights, tokenizer) = load_checkpoint_dir(&dir, false).unwrap();
    assert!(tokenizer.is_none());
    assert_eq!(weights.config.eos_token_id, Some(2));
    assert_eq!(weights.config.hidden_act, HiddenAct::Relu2);
    assert_eq!(weights.config.variant, Variant::BitnetB158);
    let got = logits(weights);
    // Packing it gives the same model.
    let out = dir.join("packed.hbit");
    pack_checkpoint(&dir, &out, false, hbit_engine::Int4Layout::native(), None).unwrap();
    assert!(logits(load_packed(&out).unwrap().weights) == got, "{tag}");
    std::fs::remove_dir_all(&dir).unwrap();
    rel_diff(&got, &want)
}

#[test]
fn bitlinear_weight_scale_divides() {
    // Falcon3-1.58bit / Llama3-8B-1.58 / hbit's writer: weight_scale = 1 / mean|W|.
    let divide = reading(
        "bl-div",
        quant("bitlinear", "offline"),
        Storage::Packed,
        |a| 1.0 / a,
    );
    assert!(divide < BF16_REL_TOL, "dividing reading: {divide}");
    // No linear_class means bitlinear too, and its mode is ignored.
    let bare = serde_json::json!({"quant_method": "bitnet"});
    assert!(reading("bl-bare", bare, Storage::Packed, |a| 1.0 / a) < BF16_REL_TOL);
    // A writer that stored alpha itself is far off under this class.
    let off = reading(
        "bl-mul",
        quant("bitlinear", "online"),
        Storage::Packed,
        |a| a,
    );
    assert!(off > 20.0 * divide.max(1e-3), "{off} vs {divide}");
}

#[test]
fn autobitlinear_offline_weight_scale_multiplies() {
    // microsoft/bitnet-b1.58-2B-4T: AutoBitLinear multiplies its output by weight_scale.
    let q = || quant("autobitlinear", "offline");
    let multiply = reading("abl-mul", q(), Storage::Packed, |a| a);
    assert!(multiply < BF16_REL_TOL, "multiplying reading: {multiply}");
    // Float ternary values are read the same way.
    let floats = reading("abl-float", q(), Storage::FloatCodes, |a| a);
    assert!(floats < BF16_REL_TOL, "float codes: {floats}");
    let off = reading("abl-div", q(), Storage::Packed, |a| 1.0 / a);
    assert!(off > 20.0 * multiply.max(1e-3), "{off} vs {multiply}");
}

#[test]
fn autobitlinear_online_quantizes_master_weights() {
    // microsoft/bitnet-b1.58-2B-4T-bf16: bf16 master weights, absmean per tensor at load.
    let online = reading(
        "abl-online",
        quant("autobitlinear", "online"),
        Storage::Master,
        |a| a,
    );
    assert!(online < BF16_REL_TOL, "online: {online}");
}

#[test]
fn what_hbits_model_does_not_compute_is_refused() {
    let dir = tempdir("refused");
    let cases = [
        ("use_rms_norm", {
            let mut q = quant("bitlinear", "offline");
            q["use_rms_norm"] = true.into();
            q
        }),
        ("autobitlinear", quant("autobitlinear", "sometimes")),
    ];
    for (needle, q) in cases {
        write_hf(&dir, q, Storage::Packed, |a| 1.0 / a);
        let e = load_checkpoint_dir(&dir, false).err().unwrap().to_string();
        assert!(e.contains("config.json") && e.contains(needle), "{e}");
    }
    // A Llama-architecture 1.58-bit model (Falcon3): no sub-norms.
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config["model_type"] = "llama".into();
    config["quantization_config"] = quant("bitlinear", "offline");
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let e = load_checkpoint_dir(&dir, false).err().unwrap().to_string();
    assert!(e.contains("\"llama\"") && e.contains("sub-norms"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
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
        let latent = latent_values(&model);
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
        let latent = latent_values(&model);
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
    let latent = latent_values(&model);
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

/// Every parameter of `model` as a flat vector, by name.
fn latent_values(model: &BitnetModel) -> HashMap<String, Vec<f32>> {
    model
        .named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}
