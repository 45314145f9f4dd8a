//! `hbit init` and `hbit logits`: create a checkpoint, and print the training framework's
//! forward pass so independent implementations can be compared against it.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use hbit_kernels::quant::ActBits;
use hbit_train::checkpoint::{load_model, save_model, CONFIG_FILE};
use hbit_train::config::preset;
use hbit_train::{BitnetModel, Variant};

#[derive(Args)]
pub struct InitArgs {
    /// Architecture preset: micro (tests), tiny (≈6 M, trains here in under an hour), or the
    /// paper's Table 8 sizes 400m, 1.3b, 3b, 7b.
    #[arg(long)]
    preset: String,
    /// bitnet_b158, bitnet_v2, bitnet_a48, bitnet_v2_no_rotation or bitnet_v2_weight_rotation.
    #[arg(long, default_value = "bitnet_v2")]
    variant: String,
    /// Activation bits: 8 (INT8 absmax, eq. 5) or 4 (INT4 absmean, eq. 6).
    #[arg(long, default_value_t = 8)]
    act_bits: u8,
    /// Seed of the N(0, 0.02²) initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Vocabulary size (default: the preset's).
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Output checkpoint directory.
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing checkpoint at --out.
    #[arg(long)]
    force: bool,
}

pub fn init(args: &InitArgs) -> Result<()> {
    let bits = ActBits::from_bits(args.act_bits)
        .with_context(|| format!("--act-bits {}: expected 8 or 4", args.act_bits))?;
    let variant = Variant::parse(&args.variant)?;
    let mut config = preset(&args.preset, variant, bits)?;
    if let Some(v) = args.vocab_size {
        let mut file = config.to_file();
        file.vocab_size = v;
        config = hbit_train::ModelConfig::from_file(&file)?;
    }
    if args.out.join(CONFIG_FILE).exists() && !args.force {
        bail!(
            "{}: a checkpoint already exists there (pass --force to replace it)",
            args.out.display()
        );
    }
    let params = config.parameter_count();
    if params > 2_000_000_000 {
        bail!(
            "preset {} has {params} parameters: countable here, but too large to initialise on \
             this machine",
            args.preset
        );
    }
    let model = BitnetModel::init(&config, args.seed)?;
    save_model(&args.out, &model, None)?;
    println!(
        "wrote {} ({} {} a{}, {:.2} M parameters, seed {})",
        args.out.display(),
        args.preset,
        variant.name(),
        bits.bits(),
        params as f64 / 1e6,
        args.seed
    );
    Ok(())
}

#[derive(Args)]
pub struct LogitsArgs {
    /// Checkpoint directory (config.json + model.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Comma-separated token ids, e.g. 1,2,3.
    #[arg(long)]
    tokens: String,
    /// Print {"logits": [[...], ...]}, one row per position.
    #[arg(long)]
    json: bool,
}

pub fn parse_token_list(text: &str) -> Result<Vec<u32>> {
    let ids: Result<Vec<u32>> = text
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<u32>()
                .with_context(|| format!("--tokens: {s:?} is not a token id"))
        })
        .collect();
    let ids = ids?;
    if ids.is_empty() {
        bail!("--tokens: no token ids given");
    }
    Ok(ids)
}

pub fn logits(args: &LogitsArgs) -> Result<()> {
    let ids = parse_token_list(&args.tokens)?;
    let model = load_model(&args.model)?;
    let n = ids.len();
    let input = Tensor::from_vec(ids.clone(), (1, n), &Device::Cpu)?;
    let logits: Vec<Vec<f32>> = model.forward(&input)?.squeeze(0)?.to_vec2()?;
    if args.json {
        println!("{}", serde_json::json!({ "logits": logits }));
        return Ok(());
    }
    println!("position  token  top-5 next-token ids (logit)");
    for (pos, (id, row)) in ids.iter().zip(&logits).enumerate() {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let top: Vec<String> = order[..5.min(row.len())]
            .iter()
            .map(|&i| format!("{i} ({:.3})", row[i]))
            .collect();
        println!("{pos:>8}  {id:>5}  {}", top.join(", "));
    }
    Ok(())
}
