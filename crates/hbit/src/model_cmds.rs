//! `hbit init` and `hbit logits`: create a checkpoint, and print the training framework's
//! forward pass so independent implementations can be compared against it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use hbit_kernels::quant::ActBits;
use hbit_train::checkpoint::{load_model, save_model, CONFIG_FILE};
use hbit_train::config::{preset, ConfigFile};
use hbit_train::{BitnetModel, Variant};

/// Changes to a preset's shape, for a model between or beside the presets (e.g. a reference
/// implementation's 4-layer `tiny` with FFN 1024).
#[derive(Args, Debug, Default, Clone)]
pub struct ShapeArgs {
    /// Hidden size instead of the preset's.
    #[arg(long)]
    pub(crate) hidden_size: Option<usize>,
    /// GLU (FFN) size instead of the preset's: 2^m or 12·2^m where W_down has a Hadamard.
    #[arg(long)]
    pub(crate) intermediate_size: Option<usize>,
    /// Number of transformer layers instead of the preset's.
    #[arg(long)]
    pub(crate) layers: Option<usize>,
    /// Attention heads instead of the preset's.
    #[arg(long)]
    pub(crate) heads: Option<usize>,
    /// Key/value heads (GQA) instead of the preset's; defaults to --heads when that is given.
    #[arg(long)]
    pub(crate) kv_heads: Option<usize>,
}

impl ShapeArgs {
    pub fn is_set(&self) -> bool {
        self.hidden_size.is_some()
            || self.intermediate_size.is_some()
            || self.layers.is_some()
            || self.heads.is_some()
            || self.kv_heads.is_some()
    }

    /// `file` with the given fields replaced; the caller validates through
    /// `ModelConfig::from_file`, which names any field that makes no model.
    pub fn apply(&self, file: &mut ConfigFile) {
        if let Some(v) = self.hidden_size {
            file.hidden_size = v;
        }
        if let Some(v) = self.intermediate_size {
            file.intermediate_size = v;
        }
        if let Some(v) = self.layers {
            file.num_hidden_layers = v;
        }
        if let Some(v) = self.heads {
            file.num_attention_heads = v;
            file.num_key_value_heads = v;
        }
        if let Some(v) = self.kv_heads {
            file.num_key_value_heads = v;
        }
    }
}

#[derive(Args)]
pub struct InitArgs {
    /// Architecture preset: micro (tests), tiny (≈6 M, trains here in under an hour), or the
    /// paper's Table 8 sizes 400m, 1.3b, 3b, 7b.
    #[arg(long, required_unless_present = "dummy")]
    preset: Option<String>,
    /// Write a packed inference model with random ternary weights instead (for speed
    /// measurements): --out is then a file.
    #[arg(long, requires = "shape")]
    dummy: bool,
    /// With --dummy: b125m, b700m, b2b (bitnet.cpp's benchmark presets), 400m or 1.3b.
    #[arg(long)]
    shape: Option<String>,
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
    #[command(flatten)]
    shape_overrides: ShapeArgs,
    /// Output checkpoint directory.
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing checkpoint at --out.
    #[arg(long)]
    force: bool,
    /// With --dummy and --act-bits 4: layout of the INT4 projections, pairs (2 bits per
    /// weight), triples (1.67 bits, three weights per lookup) or native (this CPU's faster one).
    #[arg(long, default_value = "native")]
    int4_layout: String,
}

pub fn init(args: &InitArgs) -> Result<()> {
    let bits = ActBits::from_bits(args.act_bits)
        .with_context(|| format!("--act-bits {}: expected 8 or 4", args.act_bits))?;
    if args.dummy {
        if args.shape_overrides.is_set() {
            bail!("--hidden-size, --intermediate-size, --layers, --heads and --kv-heads change a --preset; --dummy takes a --shape");
        }
        let shape = args.shape.as_deref().unwrap_or_default();
        let layout = crate::engine_cmds::file_layout(&args.int4_layout)?;
        return init_dummy(shape, bits, layout, args.seed, &args.out, args.force);
    }
    let preset_name = args.preset.as_deref().unwrap_or_default();
    let variant = Variant::parse(&args.variant)?;
    let mut file = preset(preset_name, variant, bits)?.to_file();
    if let Some(v) = args.vocab_size {
        file.vocab_size = v;
    }
    args.shape_overrides.apply(&mut file);
    let config = hbit_train::ModelConfig::from_file(&file)?;
    if args.out.join(CONFIG_FILE).exists() && !args.force {
        bail!(
            "{}: a checkpoint already exists there (pass --force to replace it)",
            args.out.display()
        );
    }
    let params = config.parameter_count();
    if params > 2_000_000_000 {
        bail!(
            "preset {preset_name} has {params} parameters: countable here, but too large to \
             initialise on this machine"
        );
    }
    let model = BitnetModel::init(&config, args.seed)?;
    save_model(&args.out, &model, None)?;
    println!(
        "wrote {} ({} {} a{}, {:.2} M parameters, seed {})",
        args.out.display(),
        preset_name,
        variant.name(),
        bits.bits(),
        params as f64 / 1e6,
        args.seed
    );
    Ok(())
}

#[derive(Args)]
pub struct LogitsArgs {
    /// Checkpoint directory (config.json + model.safetensors); with --engine also a packed
    /// model file.
    #[arg(long)]
    model: PathBuf,
    /// Comma-separated token ids, e.g. 1,2,3.
    #[arg(long)]
    tokens: String,
    /// Run the inference engine (packed integer kernels) instead of the training framework.
    #[arg(long)]
    engine: bool,
    /// With --engine: KV-cache storage, 32 (exact), 16, 8, 4 or 3 bits.
    #[arg(long, default_value = "32")]
    kv_bits: String,
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
    let logits: Vec<Vec<f32>> = if args.engine {
        crate::engine_cmds::engine_logits(&args.model, &ids, &args.kv_bits)?
    } else {
        let model = load_model(&args.model)?;
        let input = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu)?;
        model.forward(&input)?.squeeze(0)?.to_vec2()?
    };
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

/// `hbit init --dummy`: a packed BitNet v2 model of a benchmark shape with random weights.
pub fn init_dummy(
    shape: &str,
    bits: ActBits,
    int4_layout: hbit_engine::Int4Layout,
    seed: u64,
    out: &std::path::Path,
    force: bool,
) -> Result<()> {
    let config = hbit_model::config::bench_shape(shape, bits)?;
    if out.exists() && !force {
        bail!("{}: exists (pass --force to replace it)", out.display());
    }
    let weights = hbit_engine::Weights::random(&config, seed, true)?.with_int4_layout(int4_layout);
    hbit_engine::format::write_packed(out, &weights, None, None)?;
    let size = std::fs::metadata(out)
        .with_context(|| out.display().to_string())?
        .len();
    println!(
        "wrote {} (dummy {shape}, bitnet_v2 a{}, {:.1} M parameters, {:.1} MB)",
        out.display(),
        bits.bits(),
        config.parameter_count() as f64 / 1e6,
        size as f64 / 1e6
    );
    Ok(())
}

#[derive(Args)]
pub struct PtqArgs {
    /// A trained bitnet_b158 checkpoint directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Output checkpoint directory (must not hold a checkpoint yet).
    #[arg(long)]
    pub out: PathBuf,
    /// hadamard: QuaRot-style randomized Hadamard before every projection; spinquant: rotations
    /// learned on calibration text (--data) by Cayley SGD, folded into the weights, with an
    /// online Hadamard before W_down; none: only the activation bits change.
    #[arg(long, default_value = "hadamard")]
    pub rotation: String,
    /// Activation bits of the quantized model.
    #[arg(long, default_value_t = 4)]
    pub act_bits: u8,
    /// Seed of the random signs (QuaRot), of the initial Hadamards and calibration order
    /// (SpinQuant).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// SpinQuant: calibration text, files or directories (e.g. the model's training data).
    #[arg(long, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// SpinQuant: Cayley SGD steps.
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// SpinQuant: Cayley SGD learning rate (decays linearly to zero).
    #[arg(long, default_value_t = 1.5)]
    pub lr: f64,
    /// SpinQuant: calibration sequences per step.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// SpinQuant: tokens per calibration sequence [default: the model's context, at most 256].
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// SpinQuant: token cache directory (shared with `hbit train`).
    #[arg(long, default_value = ".hbit-cache")]
    pub cache_dir: PathBuf,
}

impl PtqArgs {
    /// The arguments of `hbit ptq` for this run.
    pub fn command_line(&self) -> Vec<String> {
        let mut line = vec![
            "ptq".to_string(),
            "--model".into(),
            self.model.display().to_string(),
            "--out".into(),
            self.out.display().to_string(),
            "--rotation".into(),
            self.rotation.clone(),
            "--act-bits".into(),
            self.act_bits.to_string(),
            "--seed".into(),
            self.seed.to_string(),
        ];
        if self.rotation == "spinquant" {
            line.push("--data".into());
            line.extend(self.data.iter().map(|p| p.display().to_string()));
            line.extend([
                "--steps".into(),
                self.steps.to_string(),
                "--lr".into(),
                self.lr.to_string(),
                "--batch-size".into(),
                self.batch_size.to_string(),
                "--cache-dir".into(),
                self.cache_dir.display().to_string(),
            ]);
            if let Some(n) = self.seq_len {
                line.extend(["--seq-len".into(), n.to_string()]);
            }
        }
        line
    }
}

/// SpinQuant's rotations learned for the checkpoint at `args.model` on `args.data`.
fn spinquant_ptq(args: &PtqArgs, bits: ActBits, tokenizer: &Path) -> Result<BitnetModel> {
    use hbit_train::data::{tokenize_cached, PackedData};
    use hbit_train::spinquant::{spinquant, SpinQuantOptions};
    if args.data.is_empty() {
        bail!("--rotation spinquant learns its rotations on calibration text: give --data");
    }
    let model = load_model(&args.model)?;
    let context = model.config().max_position_embeddings;
    if args.seq_len.is_some_and(|n| n == 0 || n > context) {
        bail!(
            "--seq-len {}: expected 1..={context} (the model's context)",
            args.seq_len.unwrap_or(0)
        );
    }
    if model.config().variant != hbit_train::Variant::BitnetB158 {
        bail!(
            "{}: SpinQuant starts from a bitnet_b158 model; this one is {}",
            args.model.display(),
            model.config().variant.name()
        );
    }
    let tokenizer = hbit_train::tokenizer::load_tokenizer(tokenizer).with_context(|| {
        format!(
            "{}: SpinQuant tokenizes its calibration text with the checkpoint's tokenizer",
            args.model.display()
        )
    })?;
    let (tokens, _) = tokenize_cached(&args.data, &tokenizer, &args.cache_dir)?;
    let seq_len = args
        .seq_len
        .unwrap_or(model.config().max_position_embeddings.min(256));
    let data = PackedData::new(tokens, seq_len, 0.0, args.seed)?;
    let options = SpinQuantOptions {
        steps: args.steps,
        learning_rate: args.lr,
        batch_size: args.batch_size,
        seed: args.seed,
    };
    let every = (args.steps / 10).max(1);
    let started = std::time::Instant::now();
    let rotated = spinquant(&model, bits, &data, &options, |s| {
        if s.step % every == 0 || s.step + 1 == args.steps {
            eprintln!(
                "spinquant step {:>4}/{}: calibration loss {:.4} (a{} quantized), step size {:.3e}, {:.0} s",
                s.step + 1,
                args.steps,
                s.loss,
                bits.bits(),
                s.step_size,
                started.elapsed().as_secs_f64()
            );
        }
    })?;
    Ok(rotated)
}

/// `hbit ptq`: the post-training baselines of the paper's Table 4 from a trained b1.58 model.
pub fn ptq(args: &PtqArgs) -> Result<()> {
    use hbit_train::ptq::{post_training_quantize, Rotation};
    if args.out.join(CONFIG_FILE).exists() {
        bail!(
            "{}: a checkpoint already exists there; choose another --out",
            args.out.display()
        );
    }
    let bits = ActBits::from_bits(args.act_bits)
        .with_context(|| format!("--act-bits {}: expected 8 or 4", args.act_bits))?;
    let tokenizer = args.model.join(hbit_train::checkpoint::TOKENIZER_FILE);
    let quantized = if args.rotation == "spinquant" {
        spinquant_ptq(args, bits, &tokenizer)?
    } else {
        if !args.data.is_empty() {
            bail!(
                "--data is SpinQuant's calibration text; --rotation {} uses none",
                args.rotation
            );
        }
        let rotation = Rotation::parse(&args.rotation)?;
        post_training_quantize(&load_model(&args.model)?, rotation, bits, args.seed)?
    };
    save_model(
        &args.out,
        &quantized,
        tokenizer.is_file().then_some(tokenizer.as_path()),
    )?;
    println!(
        "{} → {} ({} a{}, rotation {})",
        args.model.display(),
        args.out.display(),
        quantized.config().variant.name(),
        bits.bits(),
        args.rotation
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Ptq {
        #[command(flatten)]
        args: PtqArgs,
    }

    /// The line `hbit reproduce` logs for a PTQ stage runs that stage.
    #[test]
    fn a_ptq_command_line_parses_back_to_its_run() {
        let args = PtqArgs {
            model: "runs/b158-a8".into(),
            out: "runs/quarot a4".into(),
            rotation: "spinquant".into(),
            act_bits: 8,
            seed: 3,
            data: vec!["../shared/data/pretrain".into()],
            steps: 7,
            lr: 0.5,
            batch_size: 2,
            seq_len: Some(64),
            cache_dir: "c d".into(),
        };
        let back = Ptq::try_parse_from(args.command_line()).unwrap().args;
        assert_eq!(
            (
                back.model,
                back.out,
                back.rotation,
                back.act_bits,
                back.seed,
                back.data,
                (back.steps, back.lr, back.batch_size, back.seq_len),
                back.cache_dir
            ),
            (
                args.model,
                args.out,
                args.rotation,
                args.act_bits,
                args.seed,
                args.data,
                (args.steps, args.lr, args.batch_size, args.seq_len),
                args.cache_dir
            )
        );
    }
}
