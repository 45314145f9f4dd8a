//! `hbit demo`: the README's main command. On the bundled BitNet v2 a4 model (or `--model`), with
//! no data to fetch: generate text from a prompt, measure INT4 against INT8 decode speed on the
//! same ternary weights, and show the outliers of each projection's input before and after the
//! Hadamard transform on a built-in passage.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use hbit_engine::{
    generate, Engine, GenerateOptions, Int4Layout, KvBits, Logits, SamplingParams, Site,
};
use hbit_eval::activations::{ActivationCollector, Summary};
use hbit_kernels::ActBits;

use crate::engine_cmds::{end_tokens, load_model, load_tokenizer, model_or_bundled, prepend_bos};
use crate::eval_cmd::prefix_token;

const DEMO_PROMPT: &str = "Once upon a time, there was a little girl named Lily. She";

/// A passage written for this demo (plain narrative English, like most of the training text),
/// run through the model for the activation statistics.
const STATS_PASSAGE: &str = "The old lighthouse stood at the edge of the harbor, and every \
evening the keeper climbed its narrow stairs to light the lamp. Ships far out at sea watched for \
its slow turning beam, and the fishermen said that as long as the light burned, no boat from the \
village would be lost. One winter the storms came early. Snow covered the rocks, the wind pulled \
at the shutters, and the sea rose higher than anyone could remember. The keeper was old and his \
knees were stiff, but he did not miss a single night. His granddaughter carried oil up the steps \
for him, and together they kept the lamp bright until spring. When the weather turned warm again, \
the whole village came down to the shore to thank them, and the children painted the door of the \
lighthouse a bright and cheerful red.";

#[derive(Args)]
pub struct DemoArgs {
    /// Packed model file or checkpoint directory [default: the bundled model].
    #[arg(long)]
    model: Option<PathBuf>,
    /// HF tokenizer.json (default: the one inside the model).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// The prompt to continue.
    #[arg(long, default_value = DEMO_PROMPT)]
    prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 48)]
    max_tokens: usize,
    /// Decode steps timed per speed measurement.
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// Speed measurements per activation width (the best is shown).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Worker threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
}

pub fn demo(args: &DemoArgs) -> Result<()> {
    if let Some(t) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("--threads")?;
    }
    let path = model_or_bundled(&args.model)?;
    let mut loaded = load_model(&path)?;
    let head_bits = crate::engine_cmds::apply_head_bits(&mut loaded.engine, None)?;
    let tokenizer = load_tokenizer(&loaded, args.tokenizer.as_deref(), &path)?;
    let engine = &loaded.engine;
    let c = engine.config();
    println!(
        "model: {} — {} a{}, {:.2} M parameters, {} layers, hidden {}, {:.1} MB on disk",
        path.display(),
        c.variant.name(),
        c.activation_bits.bits(),
        c.parameter_count() as f64 / 1e6,
        c.num_layers,
        c.hidden_size,
        std::fs::metadata(&path).map_or(0.0, |m| m.len() as f64 / 1e6)
    );

    // 1. Generation, streamed.
    println!("\n== generation (temperature 0.8, top-k 40, seed 0; {head_bits}-bit LM head)");
    let mut prompt = vec![tokenizer
        .encode(args.prompt.as_str(), false)
        .map_err(|e| anyhow::anyhow!("tokenizing the prompt: {e}"))?
        .get_ids()
        .to_vec()];
    prepend_bos(c, &mut prompt);
    let options = GenerateOptions {
        max_tokens: args.max_tokens,
        stop: Vec::new(),
        end_tokens: end_tokens(c, &tokenizer),
        sampling: SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 1.0,
            repetition_penalty: 1.1,
            seed: 0,
            ..Default::default()
        },
        kv_bits: KvBits::F16,
    };
    print!("{}", args.prompt);
    std::io::stdout().flush().ok();
    generate(engine, &tokenizer, &prompt, &options, &mut |_, piece| {
        print!("{piece}");
        std::io::stdout().flush().ok();
    })?;
    println!();

    // 2. INT4 against INT8 decode on the same ternary weights.
    println!(
        "\n== decode speed, batch 1, {} threads, best of {} × {} tokens",
        rayon::current_num_threads(),
        args.rounds,
        args.decode_tokens
    );
    let other = match c.activation_bits {
        ActBits::Int4 => ActBits::Int8,
        ActBits::Int8 => ActBits::Int4,
    };
    // INT4 weights in this CPU's faster layout: the tune profile's when it covers the model
    // (load_model applied it), else the built-in choice (the bundled file holds pairs).
    let native = Int4Layout::native();
    let tuned = crate::tune::current_profile()
        .and_then(|p| p.choose(&crate::tune::int4_shapes(&engine.weights)))
        .is_some();
    let relaid = match engine.weights.int4_layout() {
        Some(layout) if layout != native && !tuned => {
            Some(Engine::new(engine.weights.clone().with_int4_layout(native)))
        }
        _ => None,
    };
    let engine_native = relaid.as_ref().unwrap_or(engine);
    let used = engine_native.weights.int4_layout().unwrap_or(native);
    let mut speeds = vec![(
        c.activation_bits,
        decode_speed(engine_native, &prompt[0], args)?,
    )];
    match engine.weights.with_activation_bits(other) {
        Ok(twin) => speeds.push((other, decode_speed(&Engine::new(twin), &prompt[0], args)?)),
        Err(e) => println!("(no INT{} twin of this variant: {e})", other.bits()),
    }
    for (bits, tps) in &speeds {
        println!(
            "INT{} activations ({}): {tps:.1} tokens/s",
            bits.bits(),
            match (bits, used) {
                (ActBits::Int4, Int4Layout::Triples) => {
                    "lookup-table kernels, three weights per lookup"
                }
                (ActBits::Int4, Int4Layout::Pairs) =>
                    "lookup-table kernels, two weights per lookup",
                (ActBits::Int4, Int4Layout::Rows) => "multiply-add kernels on 4-bit codes",
                (ActBits::Int8, _) => "multiply-add kernels",
            }
        );
    }
    if let [(first, s0), (_, s1)] = speeds.as_slice() {
        let (int4, int8) = if *first == ActBits::Int4 {
            (s0, s1)
        } else {
            (s1, s0)
        };
        println!("INT4 / INT8 = {:.2}×", int4 / int8);
    }

    // 3. Outliers before and after the Hadamard transform.
    let prefix = prefix_token(None, engine, &tokenizer)?;
    let mut window = vec![prefix];
    window.extend(
        tokenizer
            .encode(STATS_PASSAGE, false)
            .map_err(|e| anyhow::anyhow!("tokenizing the passage: {e}"))?
            .get_ids(),
    );
    window.truncate(c.max_position_embeddings);
    let mut collector = ActivationCollector::new(window.len());
    collector.run(engine, &[window.clone()])?;
    let summaries = collector.summaries(2);
    println!(
        "\n== outliers of each projection's input on a built-in passage ({} tokens), mean over {} layers: before → after the Hadamard transform",
        window.len(),
        c.num_layers
    );
    println!(
        "{:<28} {:>16} {:>18} {:>20}",
        "input of", "kurtosis", "max/mean-|x|", "INT4 clipped (%)"
    );
    for site in [Site::Down, Site::O, Site::GateUp, Site::Qkv] {
        let mean = |rotated: bool, f: &dyn Fn(&Summary) -> f64| {
            let v: Vec<f64> = summaries
                .iter()
                .filter(|s| s.site == site && s.rotated == rotated)
                .map(f)
                .collect();
            v.iter().sum::<f64>() / v.len().max(1) as f64
        };
        let pair = |f: &dyn Fn(&Summary) -> f64, digits: usize| {
            format!(
                "{:.*} → {:.*}",
                digits,
                mean(false, f),
                digits,
                mean(true, f)
            )
        };
        let label = match site {
            Site::Down => "W_down (H-BitLinear in v2)",
            Site::O => "W_o (H-BitLinear in v2)",
            Site::GateUp => "W_gate, W_up",
            Site::Qkv => "W_q, W_k, W_v",
        };
        println!(
            "{label:<28} {:>16} {:>18} {:>20}",
            pair(&|s| s.kurtosis, 1),
            pair(&|s| s.max_over_mean_abs(), 1),
            pair(&|s| 100.0 * s.int4_clipped, 2)
        );
    }
    println!(
        "(a Gaussian has kurtosis 3; `hbit stats activations` writes per-layer histograms like the paper's Figures 2–3)"
    );
    Ok(())
}

/// Decode tokens/s at batch 1 after prefilling `prompt` (greedy; best of `args.rounds`).
fn decode_speed(engine: &Engine, prompt: &[u32], args: &DemoArgs) -> Result<f64> {
    let room = engine
        .config()
        .max_position_embeddings
        .saturating_sub(prompt.len());
    let steps = args.decode_tokens.min(room).max(1);
    let mut best = 0.0f64;
    for _ in 0..args.rounds.max(1) {
        let mut cache = engine.new_cache(KvBits::F16);
        let mut logits = engine
            .forward(&mut [&mut cache], &[prompt], Logits::Last)?
            .remove(0);
        let start = Instant::now();
        for _ in 0..steps {
            let next = hbit_engine::sample::argmax(&logits);
            logits = engine
                .forward(&mut [&mut cache], &[&[next]], Logits::Last)?
                .remove(0);
        }
        best = best.max(steps as f64 / start.elapsed().as_secs_f64().max(1e-9));
    }
    Ok(best)
}
