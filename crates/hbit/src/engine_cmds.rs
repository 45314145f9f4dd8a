//! `hbit pack`, `hbit generate` and the engine side of `hbit logits`: the inference engine from
//! the command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use clap::Args;
use hbit_engine::format::{load_packed_opts, LoadMode, Verify};
use hbit_engine::pack::{load_checkpoint_dir, pack_checkpoint, read_chat_template};
use hbit_engine::{generate, Engine, GenerateOptions, KvBits, Logits, SamplingParams};
use tokenizers::Tokenizer;

/// A model ready to run, with its tokenizer and chat template texts.
pub struct LoadedModel {
    pub engine: Engine,
    pub tokenizer_json: Option<String>,
    pub chat_template: Option<String>,
}

/// The model shipped in the repository (`models/`, see its model card), used when a command is
/// given no `--model`.
pub const BUNDLED_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../models/hbit-tiny-v2-a4.hbit"
);

/// The LM head that generation and serving use when `--head-bits` is not given: the smallest
/// whose cost on WikiText-2 stayed within 0.5% bits per byte, and no slower than 8 bits where its
/// integer product applies (reports/head-quantization.md).
pub const DEFAULT_HEAD_BITS: u8 = 4;

/// Puts the LM head at `requested` bits, else at [`DEFAULT_HEAD_BITS`] where the hidden size is a
/// multiple of 64 (the 4-bit integer product's chunk) and at 8 bits elsewhere; returns the bits
/// used.
pub fn apply_head_bits(engine: &mut Engine, requested: Option<u8>) -> Result<u8> {
    let bits = match requested {
        Some(b) => b,
        None if engine.weights.head().cols.is_multiple_of(64) => DEFAULT_HEAD_BITS,
        None => 8,
    };
    engine
        .use_head_bits(bits)
        .with_context(|| format!("--head-bits {bits}"))?;
    Ok(bits)
}

/// `--model`, else the bundled model (with a clear error if this binary was moved away from
/// the repository it was built in).
pub fn model_or_bundled(model: &Option<PathBuf>) -> Result<PathBuf> {
    if let Some(m) = model {
        return Ok(m.clone());
    }
    let bundled = PathBuf::from(BUNDLED_MODEL);
    if !bundled.is_file() {
        bail!(
            "no --model given and the bundled model {} is missing (this binary was built in a checkout that has moved); pass --model FILE",
            bundled.display()
        );
    }
    // Shown to users: without the `crates/hbit/../..` detour.
    Ok(bundled.canonicalize().unwrap_or(bundled))
}

/// Loads a packed model file (read into memory, or mapped when `HBIT_LOAD=map`), or packs a
/// checkpoint directory (training layout or microsoft/bitnet-b1.58-2B-4T layout) in memory,
/// embeddings kept at f32 so its logits match the training framework's.
pub fn load_model(path: &Path) -> Result<LoadedModel> {
    let loaded = load_model_as_stored(path)?;
    // a4 projections in the layout this CPU's tune profile chooses (`hbit tune`).
    let Some(layout) = loaded.engine.weights.int4_layout() else {
        // INT8 inputs have one layout; the profile's thread splits still apply.
        if let Some(profile) = crate::tune::current_profile() {
            crate::tune::pin_splits(&profile);
        }
        return Ok(loaded);
    };
    // A large model tunes briefly on first use where the profile lacks its shapes.
    let profile = if crate::tune::enabled() {
        let signature = crate::cpu_cmd::CpuSignature::detect();
        crate::tune::profile_path(&signature).and_then(|at| {
            crate::tune::profile_for(
                &loaded.engine.weights,
                &at,
                &signature,
                LAYOUT_NOTE_MIN_BYTES,
            )
        })
    } else {
        None
    };
    let Some(profile) = profile else {
        // Which INT4 layout a file holds matters for speed only; say so where the weights are
        // large enough for it to show (not for the bundled tiny model).
        let native = hbit_engine::Int4Layout::native();
        let large = loaded.engine.weights.ternary_bytes() > LAYOUT_NOTE_MIN_BYTES;
        if layout != native && large {
            eprintln!(
                "note: {} holds its INT4 projections in the {} layout; this CPU's built-in choice \
                 is the {} layout (`hbit tune --model {}` measures which is faster here)",
                path.display(),
                layout.name(),
                native.name(),
                path.display()
            );
        }
        return Ok(loaded);
    };
    let LoadedModel {
        engine,
        tokenizer_json,
        chat_template,
    } = loaded;
    let (weights, note) = crate::tune::apply_profile(engine.weights, Some(&profile));
    if let Some(note) = note {
        eprintln!("note: {}: {note}", path.display());
    }
    Ok(LoadedModel {
        engine: Engine::new(weights),
        tokenizer_json,
        chat_template,
    })
}

/// [`load_model`] with the weights in the layout the file or checkpoint gives them.
pub fn load_model_as_stored(path: &Path) -> Result<LoadedModel> {
    if hbit_engine::gguf_model::is_gguf(path) {
        let m = hbit_engine::gguf_model::read_gguf_model(path, false)?;
        return Ok(LoadedModel {
            engine: Engine::new(m.weights),
            tokenizer_json: m.tokenizer_json,
            chat_template: m.chat_template,
        });
    }
    if path.is_dir() {
        let (weights, tokenizer_json) = load_checkpoint_dir(path, false)?;
        return Ok(LoadedModel {
            engine: Engine::new(weights),
            tokenizer_json,
            chat_template: read_chat_template(path)?,
        });
    }
    let packed = load_packed_opts(path, LoadMode::from_env()?, verify_mode())?;
    Ok(LoadedModel {
        engine: Engine::new(packed.weights),
        tokenizer_json: packed.tokenizer_json,
        chat_template: packed.chat_template,
    })
}

/// A layout a model file can hold (`rows` is a load-time choice only).
pub fn file_layout(name: &str) -> Result<hbit_engine::Int4Layout> {
    match hbit_engine::Int4Layout::parse(name)? {
        hbit_engine::Int4Layout::Rows => bail!(
            "--int4-layout rows: model files hold pairs or triples; rows is chosen at load \
             (`hbit tune`)"
        ),
        layout => Ok(layout),
    }
}

/// Set by `--no-verify` (a global flag, so every command that loads a model honours it).
static CHECKSUMS_OFF: AtomicBool = AtomicBool::new(false);

/// Packed models load without checking their content checksum from now on.
pub fn skip_checksums() {
    CHECKSUMS_OFF.store(true, Ordering::Relaxed);
}

/// Whether loads check checksums (`--no-verify` turns it off).
pub fn verify_mode() -> Verify {
    if CHECKSUMS_OFF.load(Ordering::Relaxed) {
        Verify::Skip
    } else {
        Verify::Checksum
    }
}

/// Ternary bytes above which loading a model whose INT4 layout is not this CPU's faster one
/// prints a note.
const LAYOUT_NOTE_MIN_BYTES: usize = 16 << 20;

#[derive(Args)]
pub struct PackArgs {
    /// Training checkpoint directory (config.json, model.safetensors, tokenizer.json), an HF
    /// BitNet checkpoint, or a GGUF BitNet model (bitnet.cpp's I2_S, llama.cpp's TQ1_0/TQ2_0).
    #[arg(long)]
    model: PathBuf,
    /// Output packed model file (one file; read into memory or memory-mapped when loaded).
    #[arg(long)]
    out: PathBuf,
    /// Storage of the embedding and LM head: f16 (half the bytes a decode step reads) or f32.
    #[arg(long, default_value = "f16")]
    embed_dtype: String,
    /// Layout of projections with INT4 inputs: pairs (2 bits per weight, two weights per table
    /// lookup; fastest on AVX2), triples (1.67 bits per weight, three per lookup; fastest on
    /// AVX-512 with VBMI and VNNI) or native (the faster one on this CPU).
    #[arg(long, default_value = "native")]
    int4_layout: String,
    /// A Jinja chat template to store in the model [default: the checkpoint's
    /// tokenizer_config.json `chat_template`, if any].
    #[arg(long)]
    chat_template: Option<PathBuf>,
}

pub fn pack(args: &PackArgs) -> Result<()> {
    let half = match args.embed_dtype.as_str() {
        "f16" => true,
        "f32" => false,
        other => bail!("--embed-dtype {other:?}: expected f16 or f32"),
    };
    let layout = file_layout(&args.int4_layout)?;
    let template = match &args.chat_template {
        Some(file) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("--chat-template {}", file.display()))?,
        ),
        None => None,
    };
    let weights = pack_checkpoint(&args.model, &args.out, half, layout, template)?;
    let size = std::fs::metadata(&args.out)
        .with_context(|| args.out.display().to_string())?
        .len();
    let c = &weights.config;
    let layout = match weights.int4_layout() {
        Some(l) => format!(", INT4 layout {}", l.name()),
        None => String::new(),
    };
    println!(
        "wrote {} ({} a{}, {:.2} MB: {:.2} MB ternary weights, embeddings {}{layout})",
        args.out.display(),
        c.variant.name(),
        c.activation_bits.bits(),
        size as f64 / 1e6,
        weights.ternary_bytes() as f64 / 1e6,
        args.embed_dtype
    );
    Ok(())
}

/// Engine logits for `hbit logits --engine`: `[T, V]` rows.
pub fn engine_logits(model: &Path, ids: &[u32], kv_bits: &str) -> Result<Vec<Vec<f32>>> {
    let loaded = load_model(model)?;
    let engine = loaded.engine;
    let mut cache = engine.new_cache(KvBits::parse(kv_bits)?);
    let flat = engine
        .forward(&mut [&mut cache], &[ids], Logits::All)?
        .remove(0);
    Ok(flat
        .chunks(engine.config().vocab_size)
        .map(<[f32]>::to_vec)
        .collect())
}

/// Sampling flags, as `generate` and `chat` take them.
#[derive(Args)]
pub struct SamplingArgs {
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Above 1, discourages repeating context tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Greedy decoding (same as --temperature 0).
    #[arg(long)]
    greedy: bool,
}

impl SamplingArgs {
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: if self.greedy { 0.0 } else { self.temperature },
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            ..Default::default()
        }
    }
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Packed model file (`hbit pack`) or training checkpoint directory [default: the bundled
    /// model].
    #[arg(long)]
    model: Option<PathBuf>,
    /// The prompt to continue.
    #[arg(long, conflicts_with = "batch_file")]
    prompt: Option<String>,
    /// Many prompts, batched together: one per line (or JSON lines with a "prompt" field).
    #[arg(long)]
    batch_file: Option<PathBuf>,
    /// HF tokenizer.json (default: the one inside the model).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Most tokens to generate per prompt.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Stop before this text (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// KV-cache storage: 16 (f16), 8, 4 or 3 bits (absmax per token and head), or 32.
    #[arg(long, default_value = "16")]
    kv_bits: String,
    /// Quantize queries to this many bits (the paper's 4-bit QKV, with --kv-bits 4).
    #[arg(long)]
    q_bits: Option<u32>,
    /// LM head: 16 (as stored), 8 (absmax per row), 6 or 4 (an f16 scale per 32 weights): a copy
    /// made at load with fewer bytes per decode step [default: 4 where the hidden size is a
    /// multiple of 64, else 8]
    #[arg(long)]
    head_bits: Option<u8>,
    /// Threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// One JSON object per prompt instead of text.
    #[arg(long)]
    json: bool,
}

fn read_prompts(args: &GenerateArgs) -> Result<Vec<String>> {
    if let Some(p) = &args.prompt {
        return Ok(vec![p.clone()]);
    }
    let Some(path) = &args.batch_file else {
        bail!("give --prompt TEXT or --batch-file FILE");
    };
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut prompts = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        if line.trim_start().starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}: line {}: invalid JSON", path.display(), i + 1))?;
            let p = v["prompt"].as_str().with_context(|| {
                format!(
                    "{}: line {}: no string field \"prompt\"",
                    path.display(),
                    i + 1
                )
            })?;
            prompts.push(p.to_string());
        } else {
            prompts.push(line.to_string());
        }
    }
    if prompts.is_empty() {
        bail!("{}: no prompts", path.display());
    }
    Ok(prompts)
}

pub fn load_tokenizer(
    model: &LoadedModel,
    explicit: Option<&Path>,
    model_path: &Path,
) -> Result<Tokenizer> {
    let tok = match (explicit, &model.tokenizer_json) {
        (Some(p), _) => hbit_train::tokenizer::load_tokenizer(p)?,
        (None, Some(json)) => hbit_train::tokenizer::parse_tokenizer(json.as_bytes(), model_path)
            .context("the tokenizer embedded in the model")?,
        (None, None) => bail!(
            "{}: the model carries no tokenizer; pass --tokenizer tokenizer.json",
            model_path.display()
        ),
    };
    Ok(tok)
}

pub fn generate_cmd(args: &GenerateArgs) -> Result<()> {
    if let Some(t) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("--threads")?;
    }
    if let Some(b) = args.q_bits {
        if !(2..=8).contains(&b) {
            bail!("--q-bits {b}: expected 2..=8");
        }
    }
    let prompts = read_prompts(args)?;
    let model = model_or_bundled(&args.model)?;
    let mut loaded = load_model(&model)?;
    loaded.engine.q_bits = args.q_bits;
    apply_head_bits(&mut loaded.engine, args.head_bits)?;
    let tokenizer = load_tokenizer(&loaded, args.tokenizer.as_deref(), &model)?;
    let mut encoded = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let ids = tokenizer
            .encode(p.as_str(), false)
            .map_err(|e| anyhow::anyhow!("prompt {i}: tokenizing: {e}"))?
            .get_ids()
            .to_vec();
        encoded.push(ids);
    }
    let config = loaded.engine.config();
    prepend_bos(config, &mut encoded);
    let end_tokens = end_tokens(config, &tokenizer);
    let options = GenerateOptions {
        max_tokens: args.max_tokens,
        stop: args.stop.clone(),
        end_tokens,
        sampling: args.sampling.params(),
        kv_bits: KvBits::parse(&args.kv_bits)?,
    };
    let single = prompts.len() == 1 && !args.json;
    if single {
        print!("{}", prompts[0]);
        std::io::stdout().flush().ok();
    }
    let mut on_text = |_: usize, piece: &str| {
        if single {
            print!("{piece}");
            std::io::stdout().flush().ok();
        }
    };
    let (outputs, stats) = generate(&loaded.engine, &tokenizer, &encoded, &options, &mut on_text)?;
    if single {
        println!();
    } else {
        for (i, (p, g)) in prompts.iter().zip(&outputs).enumerate() {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "index": i, "prompt": p, "text": g.text, "tokens": g.tokens,
                        "prompt_tokens": g.prompt_tokens, "finish": g.finish.name(),
                    })
                );
            } else {
                println!("--- {i} ({}) ---\n{p}{}", g.finish.name(), g.text);
            }
        }
    }
    eprintln!(
        "[{} prompt(s), KV {}: prefill {} tokens in {:.2} s ({:.1} tok/s), decode {} tokens in {:.2} s ({:.1} tok/s)]",
        prompts.len(),
        options.kv_bits.name(),
        stats.prefill_tokens,
        stats.prefill_seconds,
        stats.prefill_tokens as f64 / stats.prefill_seconds.max(1e-9),
        stats.decode_tokens,
        stats.decode_seconds,
        stats.decode_tokens as f64 / stats.decode_seconds.max(1e-9),
    );
    Ok(())
}

/// A model with a BOS token sees it first, as in training; the KV cache keeps that position at
/// 8 bits.
pub fn prepend_bos(config: &hbit_model::ModelConfig, prompts: &mut [Vec<u32>]) {
    if let Some(bos) = config.bos_token_id {
        for ids in prompts {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
    }
}

/// Token ids that end generation: the config's EOS and the end-of-text tokens of the common
/// tokenizer families (GPT-2 style as trained here, Llama-3 base and instruct, SentencePiece).
pub fn end_tokens(config: &hbit_model::ModelConfig, tokenizer: &Tokenizer) -> Vec<u32> {
    let mut end: Vec<u32> = config.eos_token_id.into_iter().collect();
    for name in ["<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "</s>"] {
        end.extend(tokenizer.token_to_id(name));
    }
    end
}

#[derive(Args)]
pub struct ExportArgs {
    /// Format: gguf (bitnet.cpp / llama.cpp: a file) or hf (a directory for transformers:
    /// its BitNetForCausalLM for BitNet b1.58 a8, hbit's remote-code model for the others).
    #[arg(long)]
    format: String,
    /// GGUF storage of the ternary projections: i2_s (bitnet.cpp, exact), tq2_0 or tq1_0
    /// (llama.cpp; scale rounded to f16), f16. Not used by --format hf.
    #[arg(long, default_value = "i2_s")]
    quant: String,
    /// The model: a packed file, a checkpoint directory or a GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// Output file (gguf) or directory (hf), replaced whole or not at all.
    #[arg(long)]
    out: PathBuf,
    /// With --format hf and a training checkpoint: write its ternary codes (inference) instead
    /// of the latent float weights (the default there, so PyTorch can train on).
    #[arg(long)]
    packed: bool,
}

/// `hbit export`: a model in another ecosystem's format.
pub fn export(args: &ExportArgs) -> Result<()> {
    use hbit_engine::gguf_model::{write_gguf_model, GgufQuant};
    let training_checkpoint = args.model.is_dir()
        && !hbit_engine::hf_bitnet::is_hf_bitnet(&args.model)
        && args.model.join(hbit_model::files::MODEL_FILE).is_file();
    if args.format == "hf" && training_checkpoint && !args.packed {
        let ckpt = hbit_engine::checkpoint::read_checkpoint(&args.model)?;
        let path = args.model.join(hbit_model::files::MODEL_FILE);
        let mut tensors = ckpt.tensors;
        if ckpt.config.tie_word_embeddings {
            tensors.remove(hbit_model::tensors::LM_HEAD); // HF writes the tied head in some files
        }
        let latent = hbit_engine::checkpoint::checked_latent(&ckpt.config, tensors, &path)?;
        hbit_engine::hf_bitnet::write_hf_latent(
            &ckpt.config,
            &latent,
            ckpt.tokenizer_json.as_deref(),
            read_chat_template(&args.model)?.as_deref(),
            &args.out,
        )?;
        println!(
            "wrote {} (hbit's HbitBitnetForCausalLM with latent weights, trainable in PyTorch: \
             load with trust_remote_code=True)",
            args.out.display()
        );
        return Ok(());
    }
    // Written out, so the layout the file gives is the one to keep.
    let loaded = load_model_as_stored(&args.model)?;
    match args.format.as_str() {
        "gguf" => {}
        "hf" => {
            hbit_engine::hf_bitnet::write_hf_bitnet(
                &loaded.engine.weights,
                loaded.tokenizer_json.as_deref(),
                loaded.chat_template.as_deref(),
                &args.out,
            )?;
            let c = &loaded.engine.weights.config;
            let class = if hbit_engine::hf_bitnet::needs_remote_code(c) {
                "hbit's HbitBitnetForCausalLM with its modeling file: load with \
                 trust_remote_code=True"
            } else {
                "transformers' BitNetForCausalLM"
            };
            println!("wrote {} ({class})", args.out.display());
            return Ok(());
        }
        other => bail!("--format {other:?}: expected gguf or hf"),
    }
    let quant = GgufQuant::parse(&args.quant)?;
    if loaded.tokenizer_json.is_none() {
        bail!(
            "{}: the model carries no tokenizer, and bitnet.cpp / llama.cpp load no GGUF without \
             a vocabulary (pack or train the model with its tokenizer.json)",
            args.model.display()
        );
    }
    write_gguf_model(
        &loaded.engine.weights,
        loaded.tokenizer_json.as_deref(),
        loaded.chat_template.as_deref(),
        quant,
        &args.out,
    )?;
    let size = std::fs::metadata(&args.out)
        .with_context(|| args.out.display().to_string())?
        .len();
    println!(
        "wrote {} (GGUF, projections {}, {:.2} MB)",
        args.out.display(),
        args.quant,
        size as f64 / 1e6
    );
    Ok(())
}
