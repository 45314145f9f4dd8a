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
    /// Timed optimizer steps per round (after one untimed warm-up step).
    #[arg(long, default_value_t = 5)]
    steps: u64,
    /// Rounds, alternating hbit and PyTorch so both see the same machine load; each side's best
    /// round is reported (this 2-vCPU machine varies by ±20% from minute to minute).
    #[arg(long, default_value_t = 3)]
    rounds: u64,
    /// Skip the PyTorch side.
    #[arg(long)]
    no_torch: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Data shards per step, as `hbit train --data-shards` (default: the CPU's threads).
    #[arg(long)]
    data_shards: Option<usize>,
}

pub fn run(args: &TrainBenchArgs) -> Result<()> {
    let shards = crate::train_cmd::data_shards(args.data_shards)?;
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
    trainer.set_data_shards(shards)?;
    trainer.step()?; // warm-up: allocator, thread pool
    let tokens = (args.steps as usize * args.batch_size * args.seq_len) as f64;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/bench_train_torch.py"
    );
    let config_json = serde_json::to_string(&config.to_file())?;
    let mut ours: Vec<f64> = Vec::new(); // seconds per round
    let mut theirs: Vec<f64> = Vec::new();
    let mut torch_skipped = args.no_torch;
    for _ in 0..args.rounds.max(1) {
        let start = Instant::now();
        for _ in 0..args.steps {
            trainer.step()?;
        }
        ours.push(start.elapsed().as_secs_f64());
        if torch_skipped {
            continue;
        }
        match run_torch(script, &config_json, args) {
            Ok(seconds) => theirs.push(seconds),
            Err(why) => {
                eprintln!("PyTorch side skipped: {why}");
                torch_skipped = true;
            }
        }
    }
    let best = |rounds: &[f64]| rounds.iter().copied().fold(f64::INFINITY, f64::min);
    let ours_best = best(&ours);
    let shards = Some(trainer.data_shards());
    report(
        args,
        "hbit (candle)",
        shards,
        tokens / ours_best,
        ours_best,
        &ours,
    );
    if theirs.is_empty() {
        return Ok(());
    }
    let theirs_best = best(&theirs);
    report(
        args,
        "pytorch",
        None,
        tokens / theirs_best,
        theirs_best,
        &theirs,
    );
    let ratio = theirs_best / ours_best;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"summary": "train_tokens_per_s_vs_pytorch", "value": ratio, "target": 1.0, "pass": ratio >= 1.0})
        );
    } else {
        println!("hbit / PyTorch: {ratio:.2}× (best rounds; target ≥ 1.0×)");
    }
    Ok(())
}

/// One PyTorch round: `--steps` timed steps of the same model; returns its seconds.
fn run_torch(
    script: &str,
    config_json: &str,
    args: &TrainBenchArgs,
) -> std::result::Result<f64, String> {
    let out = Command::new("python3")
        .arg(script)
        .args(["--config-json", config_json])
        .args(["--act-bits", &args.act_bits.to_string()])
        .args(["--batch-size", &args.batch_size.to_string()])
        .args(["--seq-len", &args.seq_len.to_string()])
        .args(["--steps", &args.steps.to_string()])
        .output()
        .map_err(|e| format!("cannot run python3 ({e})"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(stderr.lines().last().unwrap_or("failed").to_string());
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim())
        .map_err(|e| format!("bench_train_torch.py printed {line:?}: {e}"))?;
    v["seconds"]
        .as_f64()
        .ok_or_else(|| format!("bench_train_torch.py printed no seconds: {line:?}"))
}

/// One side's result: tokens/s and seconds of its best round, every round's seconds, and for
/// hbit its data-shard count.
fn report(
    args: &TrainBenchArgs,
    engine: &str,
    shards: Option<usize>,
    tokens_per_s: f64,
    seconds: f64,
    rounds: &[f64],
) {
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "bench": "train", "engine": engine, "preset": args.preset,
                "act_bits": args.act_bits, "batch": args.batch_size, "seq_len": args.seq_len,
                "steps": args.steps, "seconds": seconds, "tokens_per_s": tokens_per_s,
                "round_seconds": rounds, "data_shards": shards,
            })
        );
    } else {
        let all: Vec<String> = rounds.iter().map(|s| format!("{s:.2}")).collect();
        let sharded = shards.map_or(String::new(), |n| format!(", {n} data shards"));
        println!(
            "{engine:>14}: {tokens_per_s:8.0} tokens/s  ({} a{}, batch {}×{}{sharded}, {} steps in {seconds:.2} s; rounds {} s)",
            args.preset, args.act_bits, args.batch_size, args.seq_len, args.steps, all.join(" / ")
        );
    }
}
