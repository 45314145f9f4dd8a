//! `hbit bench train`: training tokens/s of the `tiny` preset, and side by side in the same run
//! the same model step in PyTorch on this CPU (`scripts/bench_train_torch.py`) when PyTorch is
//! installed.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use hbit_kernels::quant::ActBits;
use hbit_train::config::{preset, Variant};
use hbit_train::data::PackedData;
use hbit_train::rng::SplitMix64;
use hbit_train::schedule::Schedule;
use hbit_train::trainer::{Trainer, TrainerState};
use hbit_train::BitnetModel;

#[derive(Args)]
pub struct TrainBenchArgs {
    /// Preset to measure.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Activation bits of the BitNet v2 model (8 or 4).
    #[arg(long, default_value_t = 8)]
    act_bits: u8,
    /// Sequences per step.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Timed optimizer steps (after one untimed warm-up step).
    #[arg(long, default_value_t = 5)]
    steps: u64,
    /// Skip the PyTorch side.
    #[arg(long)]
    no_torch: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &TrainBenchArgs) -> Result<()> {
    let bits = ActBits::from_bits(args.act_bits).context("--act-bits: expected 8 or 4")?;
    let config = preset(&args.preset, Variant::BitnetV2, bits)?;
    // Random tokens: the step's cost does not depend on the text.
    let mut rng = SplitMix64::new(1);
    let need = (args.steps as usize + 2) * args.batch_size * (args.seq_len + 1) + 1;
    let tokens: Vec<u32> = (0..need)
        .map(|_| rng.below(config.vocab_size as u64) as u32)
        .collect();
    let data = PackedData::new(tokens, args.seq_len, 0.0, 0)?;
    let schedule = Schedule {
        total_steps: args.steps + 1,
        warmup_steps: 1,
        lr1: 1e-3,
        lr2: 1e-3,
        weight_decay: 0.1,
    };
    let state = TrainerState::new(&data, schedule, 0, args.batch_size, args.act_bits);
    let mut trainer = Trainer::new(BitnetModel::init(&config, 0)?, data, state)?;
    trainer.step()?; // warm-up: allocator, thread pool
    let start = Instant::now();
    for _ in 0..args.steps {
        trainer.step()?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let tokens = (args.steps as usize * args.batch_size * args.seq_len) as f64;
    let ours = tokens / seconds;
    report(args, "hbit (candle)", ours, seconds);

    if args.no_torch {
        return Ok(());
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/bench_train_torch.py"
    );
    let output = Command::new("python3")
        .arg(script)
        .args(["--config-json", &serde_json::to_string(&config.to_file())?])
        .args(["--act-bits", &args.act_bits.to_string()])
        .args(["--batch-size", &args.batch_size.to_string()])
        .args(["--seq-len", &args.seq_len.to_string()])
        .args(["--steps", &args.steps.to_string()])
        .output();
    match output {
        Ok(out) if out.status.success() => {
            let line = String::from_utf8_lossy(&out.stdout);
            let v: serde_json::Value = serde_json::from_str(line.trim())
                .with_context(|| format!("bench_train_torch.py printed {line:?}"))?;
            let theirs = v["tokens_per_s"].as_f64().context("no tokens_per_s")?;
            report(
                args,
                "pytorch",
                theirs,
                v["seconds"].as_f64().unwrap_or(0.0),
            );
            let ratio = ours / theirs;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"summary": "train_tokens_per_s_vs_pytorch", "value": ratio, "target": 1.0, "pass": ratio >= 1.0})
                );
            } else {
                println!("hbit / PyTorch: {ratio:.2}× (target ≥ 1.0×)");
            }
        }
        Ok(out) => eprintln!(
            "PyTorch side skipped: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("failed")
        ),
        Err(e) => eprintln!("PyTorch side skipped: cannot run python3 ({e})"),
    }
    Ok(())
}

fn report(args: &TrainBenchArgs, engine: &str, tokens_per_s: f64, seconds: f64) {
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "bench": "train", "engine": engine, "preset": args.preset,
                "act_bits": args.act_bits, "batch": args.batch_size, "seq_len": args.seq_len,
                "steps": args.steps, "seconds": seconds, "tokens_per_s": tokens_per_s,
            })
        );
    } else {
        println!(
            "{engine:>14}: {tokens_per_s:8.0} tokens/s  ({} a{}, batch {}×{}, {} steps in {seconds:.2} s)",
            args.preset, args.act_bits, args.batch_size, args.seq_len, args.steps
        );
    }
}
