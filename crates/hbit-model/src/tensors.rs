//! The checkpoint's tensor names and shapes (HF BitNet / LLaMA keys, DESIGN.md §3), shared by the
//! training checkpoint, the packer and the inference engine so the three cannot disagree.

use crate::config::{ModelConfig, Proj};

pub const EMBED_TOKENS: &str = "model.embed_tokens.weight";
pub const FINAL_NORM: &str = "model.norm.weight";
pub const LM_HEAD: &str = "lm_head.weight";

/// `model.layers.{layer}`
pub fn layer_prefix(layer: usize) -> String {
    format!("model.layers.{layer}")
}

/// `model.layers.{layer}.{proj key}.weight`
pub fn proj_weight(layer: usize, proj: Proj) -> String {
    format!("{}.{}.weight", layer_prefix(layer), proj.key())
}

/// RMSNorm before the attention block (its gain's key below `model.layers.N.`).
pub const INPUT_NORM: &str = "input_layernorm";
/// BitNet's SubLN before W_o.
pub const ATTN_SUB_NORM: &str = "self_attn.attn_sub_norm";
/// RMSNorm before the FFN block.
pub const POST_ATTENTION_NORM: &str = "post_attention_layernorm";
/// BitNet's SubLN before W_down.
pub const FFN_SUB_NORM: &str = "mlp.ffn_sub_norm";

/// The four norm gains of a layer, by their key below `model.layers.N.`.
pub const LAYER_NORMS: [&str; 4] = [INPUT_NORM, ATTN_SUB_NORM, POST_ATTENTION_NORM, FFN_SUB_NORM];

/// `model.layers.{layer}.{norm}.weight`
pub fn layer_norm(layer: usize, norm: &str) -> String {
    format!("{}.{norm}.weight", layer_prefix(layer))
}

/// Whether a tensor name is an RMSNorm gain.
pub fn is_norm(name: &str) -> bool {
    name.ends_with("norm.weight")
}

/// Every tensor of a config's checkpoint with its shape, in the canonical order.
pub fn parameter_shapes(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let h = config.hidden_size;
    let mut shapes = vec![(EMBED_TOKENS.to_string(), vec![config.vocab_size, h])];
    for l in 0..config.num_layers {
        shapes.push((layer_norm(l, INPUT_NORM), vec![h]));
        for proj in [Proj::Q, Proj::K, Proj::V, Proj::O] {
            let (o, i) = config.proj_shape(proj);
            shapes.push((proj_weight(l, proj), vec![o, i]));
        }
        shapes.push((layer_norm(l, ATTN_SUB_NORM), vec![h]));
        shapes.push((layer_norm(l, POST_ATTENTION_NORM), vec![h]));
        for proj in [Proj::Gate, Proj::Up, Proj::Down] {
            let (o, i) = config.proj_shape(proj);
            shapes.push((proj_weight(l, proj), vec![o, i]));
        }
        shapes.push((layer_norm(l, FFN_SUB_NORM), vec![config.intermediate_size]));
    }
    shapes.push((FINAL_NORM.to_string(), vec![h]));
    if !config.tie_word_embeddings {
        shapes.push((LM_HEAD.to_string(), vec![config.vocab_size, h]));
    }
    shapes
}
