//! Model shapes for speed measurements with random ternary weights (`hbit init --dummy`,
//! `hbit bench e2e`): bitnet.cpp's benchmark presets and the paper's sizes.

use anyhow::{bail, Result};
use hbit_kernels::ActBits;
use hbit_model::config::{preset, ConfigFile, QuantizationFile};
use hbit_model::{ModelConfig, Variant};

/// Shape names: bitnet.cpp's ≈125M / ≈700M / ≈2B presets and the paper's 400M / 1.3B.
pub const SHAPES: [&str; 5] = ["b125m", "b700m", "b2b", "400m", "1.3b"];

/// The config of a benchmark shape as BitNet v2 at `bits` activations.
pub fn shape_config(shape: &str, bits: ActBits) -> Result<ModelConfig> {
    // (hidden, FFN, layers, heads, KV heads, vocab, context, squared-ReLU GLU)
    let (h, ffn, layers, heads, kv, vocab, ctx, relu2) = match shape {
        "b125m" => (768, 3072, 12, 12, 12, 32002, 2048, false),
        "b700m" => (1536, 4096, 24, 16, 16, 32002, 2048, false),
        // BitNet b1.58 2B4T: squared-ReLU GLU, GQA 20/5, Llama-3 vocabulary.
        "b2b" => (2560, 6912, 30, 20, 5, 128256, 4096, true),
        "400m" | "1.3b" => return Ok(preset(shape, Variant::BitnetV2, bits)?),
        other => bail!("unknown shape {other:?}; expected one of {SHAPES:?}"),
    };
    let file = ConfigFile {
        hidden_size: h,
        intermediate_size: ffn,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        vocab_size: vocab,
        max_position_embeddings: ctx,
        rms_norm_eps: 1e-5,
        rope_theta: 500000.0,
        hidden_act: if relu2 { "relu2" } else { "silu" }.into(),
        tie_word_embeddings: true,
        bos_token_id: None,
        eos_token_id: None,
        quantization: QuantizationFile {
            variant: Variant::BitnetV2.name().into(),
            weight_bits: 1.58,
            activation_bits: bits.bits(),
            hadamard: Variant::BitnetV2.hadamard_projections(),
            topk_keep: None,
            // 6912 = 27·256 has no exact Hadamard: block-diagonal with 256-blocks.
            hadamard_block: (ffn == 6912).then_some(256),
        },
    };
    Ok(ModelConfig::from_file(&file)?)
}
