//! `hbit eval ...`: evaluation on the inference engine (what is evaluated is what is served).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use hbit_engine::eval::perplexity;
use hbit_engine::KvBits;

use crate::engine_cmds::{load_model, load_tokenizer};

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Perplexity of a text file: rolling windows as lm-evaluation-harness's loglikelihood_rolling.
    Ppl(PplArgs),
}

#[derive(Args)]
pub struct PplArgs {
    /// Packed model file (`hbit pack`) or checkpoint directory.
    #[arg(long)]
    model: PathBuf,
    /// A UTF-8 text file, scored as one document.
    #[arg(long)]
    data: PathBuf,
    /// Tokens per window (default: the model's max_position_embeddings, at most 2048).
    #[arg(long)]
    context: Option<usize>,
    /// New tokens scored per window (default: the context; smaller gives more context per token).
    #[arg(long)]
    stride: Option<usize>,
    /// KV-cache storage while scoring: 32, 16, 8, 4 or 3 bits.
    #[arg(long, default_value = "16")]
    kv_bits: String,
    /// HF tokenizer.json (default: the one inside the model).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Token that precedes the text so its first token is scored (default: the model's BOS, else
    /// the tokenizer's end-of-text token).
    #[arg(long)]
    prefix_token: Option<u32>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::Ppl(args) => ppl(&args),
    }
}

fn ppl(args: &PplArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.data)
        .with_context(|| format!("{}: cannot read as UTF-8 text", args.data.display()))?;
    let loaded = load_model(&args.model)?;
    let tokenizer = load_tokenizer(&loaded, args.tokenizer.as_deref(), &args.model)?;
    let engine = &loaded.engine;
    let config = engine.config();
    let tokens = tokenizer
        .encode(text.as_str(), false)
        .map_err(|e| anyhow::anyhow!("{}: tokenizing: {e}", args.data.display()))?
        .get_ids()
        .to_vec();
    if tokens.is_empty() {
        bail!("{}: no tokens to score", args.data.display());
    }
    let end_of_text = ["<|endoftext|>", "<|end_of_text|>", "</s>"]
        .iter()
        .find_map(|t| tokenizer.token_to_id(t));
    let Some(prefix) = args.prefix_token.or(config.bos_token_id).or(end_of_text) else {
        bail!(
            "the model has no BOS and the tokenizer no end-of-text token: pass --prefix-token ID"
        );
    };
    let context = args
        .context
        .unwrap_or(config.max_position_embeddings.min(2048));
    let stride = args.stride.unwrap_or(context);
    let kv = KvBits::parse(&args.kv_bits)?;
    let start = Instant::now();
    let show = !args.json;
    let p = perplexity(
        engine,
        prefix,
        &tokens,
        context,
        stride,
        kv,
        &mut |done, total| {
            if show {
                eprint!("\rwindow {done}/{total}");
            }
        },
    )?;
    if show {
        eprintln!();
    }
    let seconds = start.elapsed().as_secs_f64();
    let bytes = text.len();
    let words = text.split_whitespace().count().max(1);
    let report = serde_json::json!({
        "model": args.model.display().to_string(),
        "data": args.data.display().to_string(),
        "tokens": p.tokens,
        "windows": p.windows,
        "context": context,
        "stride": stride,
        "kv_bits": kv.name(),
        "nll_sum": p.nll_sum,
        "mean_nll": p.mean_nll(),
        "perplexity": p.perplexity(),
        "word_perplexity": (p.nll_sum / words as f64).exp(),
        "bits_per_byte": p.nll_sum / bytes as f64 / std::f64::consts::LN_2,
        "seconds": seconds,
        "tokens_per_s": p.tokens as f64 / seconds.max(1e-9),
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "{}: {} tokens in {} windows (context {context}, stride {stride}, KV {})\n\
             token perplexity {:.4} (mean NLL {:.4} nats), word perplexity {:.4}, bits per byte {:.4}\n\
             {:.1} s, {:.0} tokens/s",
            args.data.display(),
            p.tokens,
            p.windows,
            kv.name(),
            p.perplexity(),
            p.mean_nll(),
            (p.nll_sum / words as f64).exp(),
            p.nll_sum / bytes as f64 / std::f64::consts::LN_2,
            seconds,
            p.tokens as f64 / seconds.max(1e-9)
        );
    }
    Ok(())
}
