//! `hbit reproduce`: the paper's experiments at a scale this machine trains, in one resumable
//! command. On the same tokens and seed it trains BitNet b1.58 (a8), BitNet v2 a8, BitNet v2 a4
//! (continued from a8 for the last share of tokens, reusing the optimizer state), BitNet a4.8
//! (continued from the b1.58 a8 checkpoint), and the two rotation ablations at a8 and a4; it
//! derives the post-training baselines from the b1.58 model (QuaRot-style rotation + A4,
//! SpinQuant's learned rotations + A4, and A4 without rotation); it evaluates every model on the engine (WikiText-2 perplexity, the six
//! tasks, KV / QKV at 8, 4 and 3 bits for BitNet v2, activation statistics) and writes
//! `paper-tables.md` laid out like the paper's Tables 1–5, with the paper's numbers beside ours.
//!
//! The study is a list of typed stages ([`stages::plan`]) run in order in this process: the
//! tokenizer, each training run, each post-training baseline, each evaluation, the activation
//! statistics, the report. Every stage leaves a file behind (a checkpoint at its target step, a
//! result JSON); a rerun skips what exists and resumes an interrupted training run from its last
//! checkpoint. `commands.txt` logs the `hbit` command line equivalent to each tokenizer, training
//! and PTQ stage run.

mod report;
mod stages;
#[cfg(test)]
mod tests;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use hbit_eval::Task;
use hbit_model::files::TOKENIZER_FILE;

use stages::{plan, seed_plan, Stage};

/// Appends `line` to the log at `path` (created when missing).
fn append_line(path: &Path, line: &str) -> Result<()> {
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("{}: cannot append to it", path.display()))?;
    writeln!(log, "{line}")?;
    Ok(())
}

/// The stage timings' file in the report directory.
pub const TIMINGS_FILE: &str = "timings.jsonl";

#[derive(Args, Clone)]
pub struct ReproduceArgs {
    /// Model size preset (micro for a smoke run, tiny for the report).
    #[arg(long, default_value = "tiny")]
    pub(crate) preset: String,
    /// Training text: files or directories (e.g. ../shared/data/pretrain).
    #[arg(long, required = true, num_args = 1..)]
    pub(crate) data: Vec<PathBuf>,
    /// Report directory: paper-tables.md, results/, activations/, plots, commands.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Where checkpoints go [default: .hbit-cache/reproduce-PRESET]; kept out of the report.
    #[arg(long)]
    pub(crate) runs: Option<PathBuf>,
    /// Optimizer steps of every from-scratch run.
    #[arg(long, default_value_t = 200)]
    pub(crate) steps: u64,
    /// Share of the steps trained at a4 (BitNet v2 a4, a4.8, ablations) after a8; paper: 5%.
    #[arg(long, default_value_t = 0.05)]
    pub(crate) a4_share: f64,
    /// Sequences per step.
    #[arg(long, default_value_t = 8)]
    pub(crate) batch_size: usize,
    /// Tokens per sequence [default: the preset's context].
    #[arg(long)]
    pub(crate) seq_len: Option<usize>,
    /// BPE vocabulary trained on --data.
    #[arg(long, default_value_t = 4096)]
    pub(crate) vocab_size: usize,
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// More seeds for BitNet b1.58, BitNet v2 a8 and v2 a4 (comma-separated), trained and
    /// evaluated after the main study under `seed<N>/`, so the tables give mean and spread.
    #[arg(long, value_delimiter = ',')]
    pub(crate) extra_seeds: Vec<u64>,
    /// Directories searched for evaluation data: `wikitext2/wiki.test.raw` and the task files
    /// under their official names [default: the parent of the first --data, then the bundled
    /// WinoGrande / LAMBADA fixtures].
    #[arg(long)]
    pub(crate) eval_data: Vec<PathBuf>,
    /// Documents per task (0: all).
    #[arg(long, default_value_t = 500)]
    pub(crate) task_limit: usize,
    /// WikiText-2 tokens scored (0: all).
    #[arg(long, default_value_t = 0)]
    pub(crate) ppl_tokens: usize,
    /// Tokens run for the activation statistics.
    #[arg(long, default_value_t = 2048)]
    pub(crate) stats_tokens: usize,
    /// Cayley SGD steps of the SpinQuant baseline (4 calibration sequences each).
    #[arg(long, default_value_t = 100)]
    pub(crate) spinquant_steps: usize,
}

/// The WinoGrande and LAMBADA fixtures (hand-written, official layouts), written beside the
/// runs so the pipeline finds them on a machine without the repository.
const FIXTURES: [(&str, &str); 2] = [
    (
        "winogrande/dev.jsonl",
        include_str!("../../../hbit-eval/tests/fixtures/winogrande/dev.jsonl"),
    ),
    (
        "lambada/lambada_test.jsonl",
        include_str!("../../../hbit-eval/tests/fixtures/lambada/lambada_test.jsonl"),
    ),
];

/// One trained or derived model of the study.
#[derive(Debug, PartialEq)]
pub struct Model {
    /// Its directory under the runs and its result file's name.
    pub key: &'static str,
    pub label: &'static str,
}

const B158: Model = Model {
    key: "b158-a8",
    label: "BitNet b1.58",
};
const A48: Model = Model {
    key: "a48",
    label: "BitNet a4.8",
};
const V2A8: Model = Model {
    key: "v2-a8",
    label: "BitNet v2 (a8)",
};
const V2A4: Model = Model {
    key: "v2-a4",
    label: "BitNet v2 (a4)",
};
const NOROT_A8: Model = Model {
    key: "norot-a8",
    label: "No rotation (a8)",
};
const NOROT_A4: Model = Model {
    key: "norot-a4",
    label: "No rotation (a4)",
};
const WROT_A8: Model = Model {
    key: "wrot-a8",
    label: "Weight & activation rotation (a8)",
};
const WROT_A4: Model = Model {
    key: "wrot-a4",
    label: "Weight & activation rotation (a4)",
};
const QUAROT: Model = Model {
    key: "quarot-a4",
    label: "BitNet b1.58 + QuaRot-style rotation, A4 (PTQ)",
};
const SPINQUANT: Model = Model {
    key: "spinquant-a4",
    label: "BitNet b1.58 + SpinQuant (learned rotations), A4 (PTQ)",
};
const B158_A4: Model = Model {
    key: "b158-a4-ptq",
    label: "BitNet b1.58, A4 without rotation (PTQ)",
};

/// KV / QKV settings of Tables 2–3: (suffix, label, kv bits, q bits).
pub const ATTENTION_SETTINGS: [(&str, &str, &str, Option<u32>); 5] = [
    ("", "16-bit KV (f16)", "16", None),
    ("-kv8", "w/ 8-bit KV", "8", None),
    ("-kv4", "w/ 4-bit KV", "4", None),
    ("-qkv4", "w/ 4-bit QKV", "4", Some(4)),
    ("-q4kv3", "w/ 4-bit Q, 3-bit KV", "3", Some(4)),
];

/// A study in progress: its arguments and where everything goes. The main study runs at
/// `--seed`; [`Study::for_seed`] gives the same study at another seed, with its own run and
/// result directories and the shared tokenizer, command log and timings.
pub struct Study<'a> {
    args: &'a ReproduceArgs,
    seed: u64,
    runs: PathBuf,
    results: PathBuf,
    tokenizer: PathBuf,
    eval_dirs: Vec<PathBuf>,
    commands: PathBuf,
    /// One JSON line per stage run: what, how long, on which CPU.
    timings: PathBuf,
    /// Step where a8 stops for the a4 continuations.
    switch_step: u64,
}

/// `hbit reproduce`: every stage of the study, then where the tables are.
pub fn reproduce(args: &ReproduceArgs) -> Result<()> {
    let study = Study::new(args)?;
    for stage in plan() {
        study.run(&stage)?;
    }
    for &seed in &args.extra_seeds {
        let at_seed = study.for_seed(seed);
        for stage in seed_plan() {
            at_seed.run(&stage)?;
        }
    }
    if !args.extra_seeds.is_empty() {
        study.run(&Stage::Report)?;
    }
    eprintln!(
        "reproduce: wrote {}",
        args.out.join("paper-tables.md").display()
    );
    Ok(())
}

impl<'a> Study<'a> {
    /// Checks the arguments, creates the directories and writes the bundled task fixtures.
    pub fn new(args: &'a ReproduceArgs) -> Result<Study<'a>> {
        if !(0.0..1.0).contains(&args.a4_share) {
            bail!("--a4-share {}: expected a share in [0, 1)", args.a4_share);
        }
        let switch_step = args.steps - (args.steps as f64 * args.a4_share).round() as u64;
        if switch_step == 0 || switch_step == args.steps {
            bail!(
                "--steps {} with --a4-share {} leaves no a8 or no a4 steps",
                args.steps,
                args.a4_share
            );
        }
        let mut seeds = vec![args.seed];
        for &s in &args.extra_seeds {
            if seeds.contains(&s) {
                bail!("--extra-seeds: seed {s} is given twice (or is --seed)");
            }
            seeds.push(s);
        }
        let runs = args
            .runs
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!(".hbit-cache/reproduce-{}", args.preset)));
        for dir in [&runs, &args.out, &args.out.join("results")] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("{}: cannot create", dir.display()))?;
        }
        let fixtures = runs.join("fixtures");
        for (name, text) in FIXTURES {
            let path = fixtures.join(name);
            std::fs::create_dir_all(path.parent().expect("fixture paths have a directory"))?;
            std::fs::write(&path, text).with_context(|| format!("{}", path.display()))?;
        }
        let mut eval_dirs = args.eval_data.clone();
        if eval_dirs.is_empty() {
            if let Some(parent) = args.data[0].parent().filter(|p| p.is_dir()) {
                eval_dirs.push(parent.to_path_buf());
            }
        }
        eval_dirs.push(fixtures);
        Ok(Study {
            args,
            seed: args.seed,
            tokenizer: runs.join(TOKENIZER_FILE),
            runs,
            results: args.out.join("results"),
            eval_dirs,
            commands: args.out.join("commands.txt"),
            timings: args.out.join(TIMINGS_FILE),
            switch_step,
        })
    }

    /// The study at `seed`: runs under `<runs>/seed<N>`, results under `results/seed<N>`.
    pub fn for_seed(&self, seed: u64) -> Study<'a> {
        Study {
            args: self.args,
            seed,
            runs: self.runs.join(format!("seed{seed}")),
            results: self.results.join(format!("seed{seed}")),
            tokenizer: self.tokenizer.clone(),
            eval_dirs: self.eval_dirs.clone(),
            commands: self.commands.clone(),
            timings: self.timings.clone(),
            switch_step: self.switch_step,
        }
    }

    /// The run directory of `key`.
    pub fn dir(&self, key: &str) -> PathBuf {
        self.runs.join(key)
    }

    /// Appends `hbit ARGS` to `commands.txt` (and says it on stderr).
    fn log_command(&self, args: &[String]) -> Result<()> {
        let line = format!("hbit {}", args.join(" "));
        eprintln!("reproduce: {line}");
        append_line(&self.commands, &line)
    }

    fn find_eval_file(&self, relative: &str) -> Option<PathBuf> {
        self.eval_dirs
            .iter()
            .map(|d| d.join(relative))
            .find(|p| p.is_file())
    }

    fn task_file(&self, task: Task) -> Option<PathBuf> {
        self.eval_dirs.iter().find_map(|d| task.locate(d).ok())
    }

    /// The trainer state of the run in `dir`, if it has a checkpoint.
    fn state_of(dir: &Path) -> Result<Option<hbit_train::trainer::TrainerState>> {
        let state = dir.join(hbit_model::files::TRAINER_STATE_FILE);
        if !state.is_file() {
            return Ok(None);
        }
        Ok(Some(hbit_train::trainer::TrainerState::load(&state)?))
    }
}
