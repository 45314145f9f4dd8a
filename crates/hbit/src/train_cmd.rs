//! `hbit tokenizer train` and `hbit train`: the CLI around the training layer, with a progress
//! bar, JSON-lines metrics, a PNG loss curve, and Ctrl-C that saves before exiting.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use hbit_kernels::quant::ActBits;
use hbit_model::files::{CONFIG_FILE, TOKENIZER_FILE, TRAINER_STATE_FILE};
use hbit_train::checkpoint::load_model;
use hbit_train::config::{preset, HiddenAct, ModelConfig, Variant};
use hbit_train::data::{read_documents, tokenize_cached, PackedData};
use hbit_train::schedule::{paper_learning_rates, Schedule};
use hbit_train::tokenizer::{load_tokenizer, save_tokenizer, token_byte_lengths, train_bpe};
use hbit_train::trainer::{StepReport, Trainer, TrainerState};
use hbit_train::BitnetModel;
use indicatif::{ProgressBar, ProgressStyle};

use crate::plot::plot_loss_curve;

#[derive(Subcommand)]
pub enum TokenizerCommand {
    /// Train a byte-level BPE on text files, directories or JSONL and write tokenizer.json.
    Train(TokenizerTrainArgs),
}

#[derive(Args)]
pub struct TokenizerTrainArgs {
    /// Text files, directories (recursive: .txt .md .text .jsonl) or JSONL files with "text".
    #[arg(long, required = true, num_args = 1..)]
    pub(crate) data: Vec<PathBuf>,
    /// Vocabulary size, <|endoftext|> included.
    #[arg(long, default_value_t = 4096)]
    pub(crate) vocab_size: usize,
    /// Output tokenizer.json.
    #[arg(long)]
    pub(crate) out: PathBuf,
}

impl TokenizerTrainArgs {
    /// The arguments of `hbit tokenizer train` for this run.
    pub fn command_line(&self) -> Vec<String> {
        let mut v = vec!["tokenizer".to_string(), "train".into(), "--data".into()];
        v.extend(self.data.iter().map(|p| p.display().to_string()));
        v.extend([
            "--vocab-size".to_string(),
            self.vocab_size.to_string(),
            "--out".into(),
            self.out.display().to_string(),
        ]);
        v
    }
}

pub fn tokenizer(cmd: TokenizerCommand) -> Result<()> {
    match cmd {
        TokenizerCommand::Train(args) => {
            let docs = read_documents(&args.data)?;
            let bytes: usize = docs.iter().map(|d| d.text.len()).sum();
            let start = Instant::now();
            let tok = train_bpe(docs.iter().map(|d| d.text.as_str()), args.vocab_size, true)?;
            save_tokenizer(&tok, &args.out)?;
            println!(
                "wrote {} ({} tokens, trained on {} documents / {:.1} MB in {:.1} s)",
                args.out.display(),
                tok.get_vocab_size(true),
                docs.len(),
                bytes as f64 / 1e6,
                start.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Training text: files, directories or JSONL (evaluation-set directories are refused).
    #[arg(long, required = true, num_args = 1..)]
    pub(crate) data: Vec<PathBuf>,
    /// Run directory: checkpoint (config, weights, optimizer, trainer state, tokenizer),
    /// metrics.jsonl and loss.png.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Start from this checkpoint's weights (e.g. from `hbit init`); else --preset.
    #[arg(long, conflicts_with_all = ["resume", "init_from"])]
    pub(crate) model: Option<PathBuf>,
    /// Fresh model of this preset (micro, tiny, 400m, ...), vocabulary from the tokenizer.
    #[arg(long, conflicts_with_all = ["model", "resume", "init_from"])]
    pub(crate) preset: Option<String>,
    #[command(flatten)]
    pub(crate) shape_overrides: crate::model_cmds::ShapeArgs,
    /// Variant of a fresh --preset model, or the variant to continue as with --init-from.
    #[arg(long)]
    pub(crate) variant: Option<String>,
    /// Activation bits (8 or 4): of a fresh model, or the switch of --init-from (a8 → a4).
    #[arg(long)]
    pub(crate) act_bits: Option<u8>,
    /// GLU activation (silu or relu2) when continuing with --init-from (a4.8 uses relu2).
    #[arg(long)]
    pub(crate) hidden_act: Option<String>,
    /// Continue the run in --out exactly where its checkpoint stopped.
    #[arg(long)]
    pub(crate) resume: bool,
    /// Continue-train from this checkpoint's weights, optimizer moments and schedule position
    /// under new quantization (--act-bits / --variant), writing to --out.
    #[arg(long)]
    pub(crate) init_from: Option<PathBuf>,
    /// tokenizer.json (default: the one in --model / --init-from / --out).
    #[arg(long)]
    pub(crate) tokenizer: Option<PathBuf>,
    /// Total optimizer steps of the schedule [default: 1000; with --init-from, the source's].
    #[arg(long)]
    pub(crate) steps: Option<u64>,
    /// Stop (and save) after this step while keeping the full schedule, e.g. 950 of 1000 before
    /// continuing a4.
    #[arg(long)]
    pub(crate) stop_after: Option<u64>,
    /// Linear warm-up steps (paper: 375 at full scale).
    #[arg(long)]
    pub(crate) warmup: Option<u64>,
    /// Stage-1 peak LR (default: paper Table 9 for the preset).
    #[arg(long)]
    pub(crate) lr1: Option<f64>,
    /// Stage-2 peak LR from the midpoint.
    #[arg(long)]
    pub(crate) lr2: Option<f64>,
    /// Stage-1 weight decay (stage 2: 0).
    #[arg(long, default_value_t = 0.1)]
    pub(crate) weight_decay: f64,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 8)]
    pub(crate) batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub(crate) grad_accum: usize,
    /// Tokens per sequence (default: the model's max_position_embeddings).
    #[arg(long)]
    pub(crate) seq_len: Option<usize>,
    /// Global gradient-norm clip (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) clip: f64,
    /// Seed of the data split and order.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Share of sequences held out for validation.
    #[arg(long, default_value_t = 0.02)]
    pub(crate) val_fraction: f64,
    /// Validation every N steps (0 = only at the end).
    #[arg(long, default_value_t = 100)]
    pub(crate) eval_every: u64,
    /// Validation sequences per evaluation.
    #[arg(long, default_value_t = 64)]
    pub(crate) eval_sequences: usize,
    /// Checkpoint every N steps (always at the end and on Ctrl-C).
    #[arg(long, default_value_t = 200)]
    pub(crate) checkpoint_every: u64,
    /// Token cache directory.
    #[arg(long, default_value = ".hbit-cache")]
    pub(crate) cache_dir: PathBuf,
    /// No progress bar (logs one line per evaluation instead).
    #[arg(long)]
    pub(crate) quiet: bool,
    /// Split each micro-batch into N runs of sequences trained at once, one thread each
    /// (default: the CPU's threads, at most the batch size; 1 = one batch whose ops use every
    /// thread). The update equals the unsharded one up to float summation order.
    #[arg(long)]
    pub(crate) data_shards: Option<usize>,
}

impl TrainArgs {
    /// Parses `hbit train …` arguments (`line[0]` is `train`) as the command line does, so a
    /// logged command and the run it starts cannot differ (`hbit reproduce`).
    pub fn parse_command_line(line: &[String]) -> Result<TrainArgs> {
        #[derive(clap::Parser)]
        struct Train {
            #[command(flatten)]
            args: TrainArgs,
        }
        use clap::Parser;
        Ok(Train::try_parse_from(line)
            .map_err(|e| anyhow::anyhow!("hbit {}: {e}", line.join(" ")))?
            .args)
    }
}

/// The tokenizer file to use: explicit, else the one inside the source checkpoint.
fn tokenizer_path(args: &TrainArgs, source: Option<&Path>) -> Result<PathBuf> {
    if let Some(t) = &args.tokenizer {
        return Ok(t.clone());
    }
    if let Some(dir) = source {
        let t = dir.join(TOKENIZER_FILE);
        if t.is_file() {
            return Ok(t);
        }
    }
    bail!("no tokenizer: pass --tokenizer FILE (make one with `hbit tokenizer train`)")
}

pub fn train(args: &TrainArgs) -> Result<()> {
    if args.shape_overrides.is_set() && args.preset.is_none() {
        bail!(
            "--hidden-size, --intermediate-size, --layers, --heads and --kv-heads change the shape \
             of a fresh --preset model; a checkpoint keeps its own"
        );
    }
    let shards = data_shards(args.data_shards)?;
    let source: Option<&Path> = if args.resume {
        Some(&args.out)
    } else {
        args.init_from.as_deref().or(args.model.as_deref())
    };
    // A crash during a checkpoint save leaves a whole copy beside the directory: put it back.
    if let Some(dir) = source {
        if let Some(which) = hbit_train::checkpoint::recover(dir)? {
            eprintln!(
                "{}: restored the checkpoint from its {which} copy (a save was cut short)",
                dir.display()
            );
        }
    }
    let tok_path = tokenizer_path(args, source)?;
    let tokenizer = load_tokenizer(&tok_path)?;
    let vocab = tokenizer.get_vocab_size(true);

    let (tokens, hit) = tokenize_cached(&args.data, &tokenizer, &args.cache_dir)?;
    eprintln!(
        "data: {} tokens ({})",
        tokens.len(),
        if hit {
            "token cache hit"
        } else {
            "tokenized and cached"
        }
    );

    let mut trainer = if args.resume {
        if !args.out.join(TRAINER_STATE_FILE).is_file() {
            bail!(
                "--resume: {} holds no trainer checkpoint ({TRAINER_STATE_FILE} missing)",
                args.out.display()
            );
        }
        let state = TrainerState::load(&args.out.join(TRAINER_STATE_FILE))?;
        let data = PackedData::new(tokens, state.seq_len, state.val_fraction, state.seed)?;
        Trainer::from_checkpoint(&args.out, data, None)?
    } else if let Some(from) = &args.init_from {
        refuse_overwrite(&args.out)?;
        let state = TrainerState::load(&from.join(TRAINER_STATE_FILE))?;
        let base = ModelConfig::load(&from.join(CONFIG_FILE))?;
        let variant = match &args.variant {
            Some(v) => Variant::parse(v)?,
            None => base.variant,
        };
        let bits = match args.act_bits {
            Some(b) => {
                ActBits::from_bits(b).with_context(|| format!("--act-bits {b}: expected 8 or 4"))?
            }
            None => base.activation_bits,
        };
        let act = match &args.hidden_act {
            Some(a) => HiddenAct::parse(a)?,
            None => base.hidden_act,
        };
        let config = base.with_quantization(variant, bits, act)?;
        let data = PackedData::new(tokens, state.seq_len, state.val_fraction, state.seed)?;
        let mut t = Trainer::from_checkpoint(from, data, Some(&config))?;
        if let Some(steps) = args.steps {
            if steps <= t.state.step {
                bail!(
                    "--steps {steps}: the source checkpoint is already at step {}",
                    t.state.step
                );
            }
            t.state.schedule.total_steps = steps;
        }
        t
    } else {
        refuse_overwrite(&args.out)?;
        let (model, preset_name) = fresh_model(args, vocab)?;
        if model.config().vocab_size < vocab {
            bail!(
                "the model's vocab_size {} is smaller than the tokenizer's {vocab} ({})",
                model.config().vocab_size,
                tok_path.display()
            );
        }
        let seq_len = args
            .seq_len
            .unwrap_or(model.config().max_position_embeddings);
        let data = PackedData::new(tokens, seq_len, args.val_fraction, args.seed)?;
        let (lr1, lr2) = paper_learning_rates(&preset_name);
        let steps = args.steps.unwrap_or(1000);
        let schedule = Schedule {
            total_steps: steps,
            warmup_steps: args.warmup.unwrap_or((steps / 20).min(375)),
            lr1: args.lr1.unwrap_or(lr1),
            lr2: args.lr2.unwrap_or(lr2),
            weight_decay: args.weight_decay,
        };
        let bits = model.config().activation_bits.bits();
        let state = TrainerState {
            grad_accum: args.grad_accum,
            clip: args.clip,
            ..TrainerState::new(&data, schedule, args.seed, args.batch_size, bits)
        };
        Trainer::new(model, data, state)?
    };
    trainer.set_data_shards(shards)?;
    run_loop(args, &mut trainer, &tok_path)
}

/// The data shards a training run uses (`--data-shards`, default the CPU's threads). With more
/// than one, candle's own thread pool is made single-threaded (unless `CANDLE_NUM_THREADS` says
/// otherwise): each shard's thread then runs its ops alone instead of queueing for the pool.
/// Call before the first tensor op, which sizes that pool.
pub fn data_shards(requested: Option<usize>) -> Result<usize> {
    let shards = match requested {
        Some(0) => bail!("--data-shards: expected at least 1, found 0"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    if shards > 1 && std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    Ok(shards)
}

fn refuse_overwrite(out: &Path) -> Result<()> {
    if out.join(CONFIG_FILE).exists() {
        bail!(
            "{}: a checkpoint already exists there (continue it with --resume, or choose another --out)",
            out.display()
        );
    }
    Ok(())
}

/// The model of a fresh run and the preset name (for the default learning rates).
fn fresh_model(args: &TrainArgs, vocab: usize) -> Result<(BitnetModel, String)> {
    if let Some(dir) = &args.model {
        return Ok((load_model(dir)?, "custom".into()));
    }
    let name = args
        .preset
        .as_deref()
        .context("give --model DIR (from `hbit init`), --preset P, --resume or --init-from")?;
    let variant = Variant::parse(args.variant.as_deref().unwrap_or("bitnet_v2"))?;
    let bits =
        ActBits::from_bits(args.act_bits.unwrap_or(8)).context("--act-bits: expected 8 or 4")?;
    let mut file = preset(name, variant, bits)?.to_file();
    args.shape_overrides.apply(&mut file);
    file.vocab_size = vocab;
    file.bos_token_id = Some(0);
    file.eos_token_id = Some(0);
    let config = ModelConfig::from_file(&file)?;
    Ok((BitnetModel::init(&config, args.seed)?, name.to_string()))
}

/// Set by the first Ctrl-C during a training run: the run saves its checkpoint and stops. It
/// stays set for the life of the process (`hbit reproduce` then stops after the run).
static STOP: AtomicBool = AtomicBool::new(false);
/// Whether a training loop is running, i.e. whether Ctrl-C should save rather than exit.
static TRAINING: AtomicBool = AtomicBool::new(false);

/// Installs the process's one Ctrl-C handler (a second `set_handler` fails; `hbit reproduce`
/// trains many runs): during a training loop the first Ctrl-C asks it to save and stop;
/// anywhere else, or a second time, the process exits at once (status 130).
fn install_ctrl_c() -> Result<()> {
    static INSTALLED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            ctrlc::set_handler(|| {
                if !TRAINING.load(Ordering::SeqCst) || STOP.swap(true, Ordering::SeqCst) {
                    std::process::exit(130);
                }
            })
            .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| anyhow::anyhow!("installing the Ctrl-C handler: {e}"))
}

/// Whether Ctrl-C stopped a training run of this process (its checkpoint was saved).
pub fn interrupted() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Marks a training loop as running for the Ctrl-C handler, until dropped.
struct TrainingLoop;

impl TrainingLoop {
    fn start() -> Result<TrainingLoop> {
        install_ctrl_c()?;
        TRAINING.store(true, Ordering::SeqCst);
        Ok(TrainingLoop)
    }
}

impl Drop for TrainingLoop {
    fn drop(&mut self) {
        TRAINING.store(false, Ordering::SeqCst);
    }
}

fn run_loop(args: &TrainArgs, trainer: &mut Trainer, tok_path: &Path) -> Result<()> {
    let _running = TrainingLoop::start()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let metrics_path = args.out.join("metrics.jsonl");

    let total = trainer.state.schedule.total_steps;
    let last = args.stop_after.unwrap_or(total).min(total);
    let cfg = trainer.model.config().clone();
    eprintln!(
        "training {} a{} ({:.2} M parameters): steps {}..{last} of {total}, {} tokens/step, {} train / {} validation sequences, {} data shards",
        cfg.variant.name(),
        cfg.activation_bits.bits(),
        cfg.parameter_count() as f64 / 1e6,
        trainer.state.step,
        trainer.state.tokens_per_step(),
        trainer.data().train_sequences(),
        trainer.data().validation_sequences(),
        trainer.data_shards(),
    );
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(last)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .expect("static template"),
    );
    bar.set_position(trainer.state.step);
    let tok_copy = (!args.out.join(TOKENIZER_FILE).exists()).then_some(tok_path);
    let val_bytes = validation_bytes(trainer, args.eval_sequences, tok_path)?;
    let mut window_start = Instant::now();
    let mut window_tokens = 0u64;
    let mut interrupted = false;
    while trainer.state.step < last {
        let report = trainer.step()?;
        window_tokens += trainer.state.tokens_per_step();
        let tokens_per_s = window_tokens as f64 / window_start.elapsed().as_secs_f64();
        let at_eval = args.eval_every > 0 && report.step.is_multiple_of(args.eval_every);
        let val = if at_eval || report.step == last {
            trainer.validation_loss(args.eval_sequences)?
        } else {
            None
        };
        let val_bpb = val.and_then(|v| val_bytes.as_ref().map(|b| b.bits_per_byte(v)));
        write_metrics(
            &metrics_path,
            &report,
            tokens_per_s,
            cfg.activation_bits.bits(),
            val,
            val_bpb,
        )?;
        bar.set_position(report.step);
        bar.set_message(format!(
            "loss {:.3}{}{} | {:.0} tok/s",
            report.loss,
            val.map(|v| format!(" val {v:.3}")).unwrap_or_default(),
            val_bpb
                .map(|b| format!(" ({b:.3} bits/byte)"))
                .unwrap_or_default(),
            tokens_per_s
        ));
        if args.quiet && val.is_some() {
            eprintln!(
                "step {} loss {:.4} val {:.4}{} lr {:.2e} {:.0} tok/s",
                report.step,
                report.loss,
                val.unwrap_or(f64::NAN),
                val_bpb
                    .map(|b| format!(" ({b:.4} bits/byte)"))
                    .unwrap_or_default(),
                report.lr,
                tokens_per_s
            );
        }
        if report.step.is_multiple_of(100) {
            window_start = Instant::now();
            window_tokens = 0;
        }
        interrupted = STOP.load(Ordering::SeqCst);
        let at_checkpoint =
            args.checkpoint_every > 0 && report.step.is_multiple_of(args.checkpoint_every);
        if at_checkpoint || interrupted || report.step == last {
            trainer.save(&args.out, tok_copy)?;
        }
        if interrupted {
            break;
        }
    }
    bar.finish();
    if let Err(e) = plot_loss_curve(&metrics_path, &args.out.join("loss.png")) {
        eprintln!("warning: loss curve not drawn: {e:#}");
    }
    if interrupted {
        eprintln!(
            "interrupted: checkpoint saved at step {} in {} (continue with --resume)",
            trainer.state.step,
            args.out.display()
        );
    } else {
        eprintln!(
            "saved step {} to {} ({} tokens seen)",
            trainer.state.step,
            args.out.display(),
            trainer.state.tokens_seen
        );
    }
    Ok(())
}

/// The targets [`Trainer::validation_loss`] scores: their count and their UTF-8 bytes.
struct ValidationText {
    tokens: u64,
    bytes: u64,
}

impl ValidationText {
    /// Bits per byte of a mean validation loss (nats per target token).
    fn bits_per_byte(&self, mean_loss: f64) -> f64 {
        hbit_eval::ppl::bits_per_byte(mean_loss * self.tokens as f64, self.bytes)
    }
}

/// The validation targets' text size, for bits per byte (`None` without validation sequences
/// or when they stand for no text).
fn validation_bytes(
    trainer: &Trainer,
    eval_sequences: usize,
    tok_path: &Path,
) -> Result<Option<ValidationText>> {
    let n = trainer.data().validation_sequences().min(eval_sequences);
    if n == 0 {
        return Ok(None);
    }
    let lengths = token_byte_lengths(&load_tokenizer(tok_path)?);
    let (_, targets) = trainer.data().validation_batch(0, n);
    let bytes = targets
        .iter()
        .map(|&t| lengths.get(t as usize).copied().unwrap_or(0) as u64)
        .sum();
    Ok((bytes > 0).then_some(ValidationText {
        tokens: targets.len() as u64,
        bytes,
    }))
}

/// Appends one line. The file is reopened per line because checkpoint saves swap the run
/// directory in by rename (carrying metrics.jsonl over); a handle held across a save would keep
/// writing into the replaced directory's file and the lines would be lost.
fn write_metrics(
    path: &Path,
    r: &StepReport,
    tokens_per_s: f64,
    act_bits: u8,
    val: Option<f64>,
    val_bits_per_byte: Option<f64>,
) -> Result<()> {
    let mut line = serde_json::json!({
        "step": r.step,
        "tokens": r.tokens,
        "loss": r.loss,
        "lr": r.lr,
        "weight_decay": r.weight_decay,
        "grad_norm": r.grad_norm,
        "tokens_per_s": tokens_per_s,
        "act_bits": act_bits,
    });
    if let Some(v) = val {
        line["val_loss"] = v.into();
    }
    if let Some(b) = val_bits_per_byte {
        line["val_bits_per_byte"] = b.into();
    }
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(out, "{line}").with_context(|| format!("appending to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_command_line_parses_to_its_run_and_bad_ones_are_errors() {
        let line: Vec<String> = [
            "train",
            "--data",
            "a",
            "b",
            "--out",
            "o",
            "--quiet",
            "--eval-every",
            "5",
            "--init-from",
            "p",
            "--act-bits",
            "4",
            "--variant",
            "bitnet_a48",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let a = TrainArgs::parse_command_line(&line).unwrap();
        assert_eq!(a.data, [PathBuf::from("a"), PathBuf::from("b")]);
        assert_eq!(
            (a.out, a.quiet, a.eval_every),
            (PathBuf::from("o"), true, 5)
        );
        assert_eq!(a.init_from, Some(PathBuf::from("p")));
        assert_eq!(
            (a.act_bits, a.variant.as_deref()),
            (Some(4), Some("bitnet_a48"))
        );
        // Defaults as on the command line.
        assert_eq!((a.batch_size, a.seed, a.eval_sequences), (8, 0, 64));
        let mut bad = line.clone();
        bad.push("--no-such-flag".into());
        let err = TrainArgs::parse_command_line(&bad).unwrap_err().to_string();
        assert!(err.contains("--no-such-flag"), "{err}");
    }
}
