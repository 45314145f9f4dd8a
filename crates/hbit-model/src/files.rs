//! The file names inside a checkpoint directory (DESIGN.md §3), one home for the trainer that
//! writes them and the engine that reads them.

/// The model's configuration (HF keys plus `quantization`).
pub const CONFIG_FILE: &str = "config.json";
/// The weights, HF tensor names ([`crate::tensors`]).
pub const MODEL_FILE: &str = "model.safetensors";
/// The HF tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// HF's tokenizer settings, where a checkpoint keeps its chat template.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// A training checkpoint's AdamW moments (resumed by `--resume` and the a8 → a4 continuation).
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// A training checkpoint's step, schedule and data position.
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";
/// Written last into a checkpoint: every other file's length and CRC-32, so a directory a crash
/// tore is told from a complete one.
pub const MANIFEST_FILE: &str = "manifest.json";
