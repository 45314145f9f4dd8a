//! `hbit bench ...`: measured speed, printed as a table or as JSON lines.

mod e2e;
mod kernels;
pub(crate) mod membw;
mod serve;
mod train;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Ternary×INT8 and ternary×INT4 matrix kernels, the Hadamard transform, a dense f32 matmul
    /// of the same shapes (the `gemm` crate) and the machine's memory read bandwidth, in one run.
    Kernels(kernels::KernelsArgs),
    /// Training tokens/s of a preset (default tiny), beside the same step in PyTorch when it is
    /// installed (scripts/bench_train_torch.py).
    Train(train::TrainBenchArgs),
    /// Whole-model prefill and decode tokens/s and resident memory of the inference engine on
    /// random-weight models in bitnet.cpp's benchmark shapes and the paper's sizes.
    E2e(e2e::E2eArgs),
    /// Load an OpenAI-compatible server over loopback (hbit's own, in process, or --url):
    /// generated tokens/s, time to first token, inter-token latency, errors, peak memory.
    Serve(serve::ServeBenchArgs),
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Kernels(args) => kernels::run(&args),
        BenchCommand::Train(args) => train::run(&args),
        BenchCommand::E2e(args) => e2e::run(&args),
        BenchCommand::Serve(args) => serve::run(&args),
    }
}
