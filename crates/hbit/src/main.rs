//! `hbit`: BitNet v2 — ternary weights, native 4-bit activations, H-BitLinear — from training
//! to a fast CPU engine. This binary is the one entry point; each job is a subcommand.

#![forbid(unsafe_code)]

mod bench;
mod cli_reference;
mod cpu_cmd;
mod demo;
mod engine_cmds;
mod eval_cmd;
mod gguf_cmd;
mod model_cmds;
mod plot;
mod reproduce;
mod serve_cmd;
mod stats_cmd;
mod train_cmd;
mod tune;
mod verify_cmd;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};

/// mimalloc with freed pages kept mapped (see `hbit_kernels::allocator` for the measurement).
#[global_allocator]
static ALLOCATOR: hbit_kernels::allocator::MiMalloc = hbit_kernels::allocator::MiMalloc;

/// How long freed memory stays mapped: long enough to reuse buffers across decode steps, short
/// enough that a long `generate` or `eval` run gives back what a large batch used.
const KEEP_FREED_PAGES_MS: i64 = 10_000;

/// Training never returns freed memory: a step frees and reallocates the same buffers, and even
/// with a 10 s delay mimalloc handed some back (measured over 6 steps of `hbit bench train`:
/// 3310 vs 1149 page faults, and 6% more tokens/s without them). A training process's memory is
/// its peak anyway.
const TRAINING_KEEP_FREED_PAGES_MS: i64 = -1;

#[derive(Parser)]
#[command(
    name = "hbit",
    version,
    about = "BitNet v2 in Rust: 1.58-bit weights, native 4-bit activations, H-BitLinear"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Load packed model files without checking their content checksum (for a file known to
    /// be good: saves one pass over its bytes).
    #[arg(long, global = true)]
    no_verify: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Measure speed: kernels against the machine's memory bandwidth and a dense f32 baseline.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
    /// The main demo on the bundled model: generate, INT4 vs INT8 decode speed, outliers.
    Demo(demo::DemoArgs),
    /// Write a randomly initialised training checkpoint (config.json + model.safetensors).
    Init(model_cmds::InitArgs),
    /// Print a model's logits for a token sequence (training framework, or --engine).
    Logits(model_cmds::LogitsArgs),
    /// Post-training baselines from a trained b1.58 model: QuaRot-style or SpinQuant rotation + A4
    /// (Table 4).
    Ptq(model_cmds::PtqArgs),
    /// Pack a training checkpoint into a packed inference model file (2-bit ternary weights).
    Pack(engine_cmds::PackArgs),
    /// Write a model for another engine: GGUF (bitnet.cpp, llama.cpp; BitNet b1.58 a8) or HF
    /// (transformers; every variant, with a remote-code modeling file where needed).
    Export(engine_cmds::ExportArgs),
    /// GGUF files (llama.cpp, bitnet.cpp): inspect what hbit reads from them.
    Gguf {
        #[command(subcommand)]
        what: gguf_cmd::GgufCommand,
    },
    /// Evaluate a model on the inference engine: perplexity and zero-shot tasks.
    Eval {
        #[command(subcommand)]
        what: eval_cmd::EvalCommand,
    },
    /// The paper's experiments at small scale: train every variant, evaluate, write Tables 1–5.
    Reproduce(Box<reproduce::ReproduceArgs>),
    /// Activation statistics: outliers of each projection's input, before and after Hadamard.
    Stats {
        #[command(subcommand)]
        what: stats_cmd::StatsCommand,
    },
    /// Generate text with the inference engine, streaming; --batch-file runs prompts batched.
    Generate(Box<engine_cmds::GenerateArgs>),
    /// Train a tokenizer.
    Tokenizer {
        #[command(subcommand)]
        what: train_cmd::TokenizerCommand,
    },
    /// Train a model: a8 from scratch, --init-from for a8 → a4 continue-training, --resume.
    Train(Box<train_cmd::TrainArgs>),
    /// Serve the model over HTTP: OpenAI's completions and chat API, continuous batching.
    Serve(Box<serve_cmd::ServeArgs>),
    /// Chat with the model in the terminal (the server's template and stop rules).
    Chat(Box<serve_cmd::ChatArgs>),
    /// Check a model file's content checksum (packed file) or its manifest (checkpoint).
    Verify(verify_cmd::VerifyArgs),
    /// Write the command-line reference (docs/cli.md) from this parser.
    CliReference(cli_reference::CliReferenceArgs),
    /// Show this CPU's signature (vendor, family/model, features, cores, caches), its DRAM read
    /// bandwidth, the kernel paths it runs and the one in use (HBIT_KERNEL_PATH forces a lower one).
    Cpu(cpu_cmd::CpuArgs),
    /// Measure which weight layout (a4 models) and which thread split (every model) this CPU
    /// runs each of a model's kernel calls fastest with, per batch bucket, and remember them in
    /// a profile under the user cache directory; loading then re-lays the model out and pins
    /// the faster splits (HBIT_TUNE=off keeps the file's layout and the built-in splits).
    Tune(tune::TuneArgs),
}

fn main() -> std::process::ExitCode {
    exit_quietly_on_broken_pipe();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole context chain on one line, without a backtrace.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `hbit … | head` closes the pipe early, and std's print macros then panic; a command-line
/// tool ends quietly instead, with the status a SIGPIPE death would give (128 + 13).
fn exit_quietly_on_broken_pipe() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default_hook(info);
    }));
}

fn run(cli: Cli) -> Result<()> {
    let trains = matches!(
        cli.command,
        Command::Train(_)
            | Command::Reproduce(_)
            | Command::Bench {
                what: bench::BenchCommand::Train(_)
            }
    );
    hbit_kernels::allocator::keep_freed_pages(if trains {
        TRAINING_KEEP_FREED_PAGES_MS
    } else {
        KEEP_FREED_PAGES_MS
    });
    if !trains {
        // Inference holds one big model buffer and many small allocations; huge pages only
        // inflate the latter's resident memory (see the function's note).
        hbit_kernels::allocator::no_transparent_huge_pages();
    }
    if matches!(cli.command, Command::Reproduce(_)) {
        // Its training stages shard their batches; candle's pool must be sized for that before
        // any stage (post-training quantization included) first uses it.
        train_cmd::data_shards(None)?;
    }
    if cli.no_verify {
        engine_cmds::skip_checksums();
    }
    match cli.command {
        Command::Bench { what } => bench::run(what),
        Command::Demo(args) => demo::demo(&args),
        Command::Init(args) => model_cmds::init(&args),
        Command::Logits(args) => model_cmds::logits(&args),
        Command::Pack(args) => engine_cmds::pack(&args),
        Command::Gguf { what } => gguf_cmd::run(what),
        Command::Export(args) => engine_cmds::export(&args),
        Command::Ptq(args) => model_cmds::ptq(&args),
        Command::Generate(args) => engine_cmds::generate_cmd(&args),
        Command::Eval { what } => eval_cmd::run(what),
        Command::Stats { what } => stats_cmd::run(what),
        Command::Reproduce(args) => reproduce::reproduce(&args),
        Command::Tokenizer { what } => train_cmd::tokenizer(what),
        Command::Train(args) => train_cmd::train(&args),
        Command::Serve(args) => serve_cmd::serve(&args),
        Command::CliReference(args) => cli_reference::run(&args, Cli::command()),
        Command::Chat(args) => serve_cmd::chat(&args),
        Command::Verify(args) => verify_cmd::verify(&args),
        Command::Cpu(args) => cpu_cmd::cpu(&args),
        Command::Tune(args) => tune::tune(&args),
    }
}
