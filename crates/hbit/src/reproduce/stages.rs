//! The study as typed stages: what [`plan`] lists and how [`Study::run`] carries out each one,
//! in this process (training, PTQ and evaluation are library calls, not child processes).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hbit_engine::KvBits;
use hbit_eval::ppl::perplexity;
use hbit_eval::{load_docs, Task};
use hbit_model::files::CONFIG_FILE;
use serde_json::json;

use super::{
    Model, Study, A48, ATTENTION_SETTINGS, B158, B158_A4, NOROT_A4, NOROT_A8, QUAROT, SPINQUANT,
    V2A4, V2A8, WROT_A4, WROT_A8,
};
use crate::engine_cmds::{load_model, load_tokenizer};
use crate::eval_cmd::{prefix_token, run_task};
use crate::model_cmds::{ptq, PtqArgs};
use crate::stats_cmd::{activations, ActivationsArgs};
use crate::train_cmd::{self, TokenizerTrainArgs, TrainArgs};
use hbit_train::tokenizer::token_byte_lengths;

/// One stage of the study. Each leaves a file behind, so a rerun skips it.
#[derive(Debug, PartialEq)]
pub enum Stage {
    /// The BPE tokenizer every model shares, trained on `--data`.
    Tokenizer,
    /// A from-scratch run of `variant` at a8 to the a4 switch, in `{model}-part`.
    TrainA8Part {
        model: &'static Model,
        variant: &'static str,
    },
    /// The a8 run to the end of its schedule: a copy of its part, resumed.
    FinishA8 { model: &'static Model },
    /// Continue-training of `from`'s part at a4 to the end of the schedule, reusing its
    /// optimizer state, as `variant` when given (a4.8 from b1.58).
    ContinueA4 {
        from: &'static Model,
        model: &'static Model,
        variant: Option<&'static str>,
    },
    /// A post-training baseline of the finished b1.58 model.
    Ptq {
        model: &'static Model,
        rotation: &'static str,
    },
    /// WikiText-2 perplexity and the tasks of `model` under attention setting `setting`
    /// ([`ATTENTION_SETTINGS`]).
    Evaluate {
        model: &'static Model,
        setting: usize,
    },
    /// Activation statistics before and after the Hadamard (Figures 2–3).
    Activations { model: &'static Model },
    /// `paper-tables.md`, rewritten every time.
    Report,
}

/// What running a stage did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ran,
    /// Its file was there already.
    AlreadyDone,
    /// Its input is missing (no WikiText-2 for the activation statistics).
    Skipped,
}

/// Every stage of the study, in an order where each one's inputs come before it.
pub fn plan() -> Vec<Stage> {
    let mut stages = vec![Stage::Tokenizer];
    // BitNet b1.58, then a4.8 continued from its a8 checkpoint (keeping its SwiGLU: the
    // quantization changes, the network does not).
    let b158 = &B158;
    stages.push(Stage::TrainA8Part {
        model: b158,
        variant: "bitnet_b158",
    });
    stages.push(Stage::FinishA8 { model: b158 });
    stages.push(Stage::ContinueA4 {
        from: b158,
        model: &A48,
        variant: Some("bitnet_a48"),
    });
    // BitNet v2 and the two ablations: a8 to the end, and a4 from the switch.
    for (a8, a4, variant) in [
        (&V2A8, &V2A4, "bitnet_v2"),
        (&NOROT_A8, &NOROT_A4, "bitnet_v2_no_rotation"),
        (&WROT_A8, &WROT_A4, "bitnet_v2_weight_rotation"),
    ] {
        stages.push(Stage::TrainA8Part { model: a8, variant });
        stages.push(Stage::FinishA8 { model: a8 });
        stages.push(Stage::ContinueA4 {
            from: a8,
            model: a4,
            variant: None,
        });
    }
    // Post-training baselines from the finished b1.58 model.
    stages.push(Stage::Ptq {
        model: &QUAROT,
        rotation: "hadamard",
    });
    stages.push(Stage::Ptq {
        model: &SPINQUANT,
        rotation: "spinquant",
    });
    stages.push(Stage::Ptq {
        model: &B158_A4,
        rotation: "none",
    });
    for model in [
        &B158, &A48, &V2A8, &V2A4, &NOROT_A8, &NOROT_A4, &WROT_A8, &WROT_A4, &QUAROT, &SPINQUANT,
        &B158_A4,
    ] {
        stages.push(Stage::Evaluate { model, setting: 0 });
    }
    for model in [&V2A8, &V2A4] {
        for setting in 1..ATTENTION_SETTINGS.len() {
            stages.push(Stage::Evaluate { model, setting });
        }
    }
    // Figures 2–3: b1.58 against BitNet v2 at a8, and v2 a4.
    for model in [&B158, &V2A8, &V2A4] {
        stages.push(Stage::Activations { model });
    }
    stages.push(Stage::Report);
    stages
}

/// What the extra seeds repeat: BitNet b1.58 and BitNet v2 at a8 and a4, and their
/// WikiText-2 and task results at 16-bit KV (the tokenizer is the main study's).
pub fn seed_plan() -> Vec<Stage> {
    vec![
        Stage::TrainA8Part {
            model: &B158,
            variant: "bitnet_b158",
        },
        Stage::FinishA8 { model: &B158 },
        Stage::TrainA8Part {
            model: &V2A8,
            variant: "bitnet_v2",
        },
        Stage::FinishA8 { model: &V2A8 },
        Stage::ContinueA4 {
            from: &V2A8,
            model: &V2A4,
            variant: None,
        },
        Stage::Evaluate {
            model: &B158,
            setting: 0,
        },
        Stage::Evaluate {
            model: &V2A8,
            setting: 0,
        },
        Stage::Evaluate {
            model: &V2A4,
            setting: 0,
        },
    ]
}

impl Stage {
    /// A short name for the timings and logs: the stage and its model's key.
    pub fn name(&self) -> String {
        match self {
            Stage::Tokenizer => "tokenizer".into(),
            Stage::TrainA8Part { model, .. } => format!("train {}-part (a8)", model.key),
            Stage::FinishA8 { model } => format!("train {} (a8, to the end)", model.key),
            Stage::ContinueA4 { model, .. } => format!("train {} (a4)", model.key),
            Stage::Ptq { model, .. } => format!("ptq {}", model.key),
            Stage::Evaluate { model, setting } => {
                format!("evaluate {}{}", model.key, ATTENTION_SETTINGS[*setting].0)
            }
            Stage::Activations { model } => format!("activations {}", model.key),
            Stage::Report => "report".into(),
        }
    }
}

impl Study<'_> {
    /// Carries out `stage` unless its file is there, and appends the time it took (also when a
    /// training run was interrupted: its steps are done) to the timings.
    pub fn run(&self, stage: &Stage) -> Result<Outcome> {
        let started = std::time::Instant::now();
        let result = self.run_untimed(stage);
        let worked = matches!(result, Ok(Outcome::Ran)) || train_cmd::interrupted();
        if worked && *stage != Stage::Report {
            // The timings are a record, not a result: failing to write one loses that line only.
            if let Err(e) = self.log_timing(stage, started.elapsed().as_secs_f64()) {
                eprintln!("reproduce: warning: {e:#}");
            }
        }
        result
    }

    /// Appends one line to the timings: the stage, its seed, seconds, CPU and hbit version.
    fn log_timing(&self, stage: &Stage, seconds: f64) -> Result<()> {
        let cpu = crate::cpu_cmd::CpuSignature::detect();
        let line = json!({
            "stage": stage.name(),
            "seed": self.seed,
            "seconds": seconds,
            "interrupted": train_cmd::interrupted(),
            "cpu": cpu.model_name,
            "cpu_signature": cpu.key(),
            "hbit": env!("CARGO_PKG_VERSION"),
            "finished_unix": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        });
        super::append_line(&self.timings, &line.to_string())
    }

    /// Carries out `stage` unless its file is there. A training run Ctrl-C stopped (its
    /// checkpoint saved) ends the study with an error, so no later stage reads a partial run;
    /// Ctrl-C outside a training run ends the process at once.
    fn run_untimed(&self, stage: &Stage) -> Result<Outcome> {
        let outcome = match *stage {
            Stage::Tokenizer => self.train_tokenizer()?,
            Stage::TrainA8Part { model, variant } => self.train_a8_part(model, variant)?,
            Stage::FinishA8 { model } => self.finish_a8(model)?,
            Stage::ContinueA4 {
                from,
                model,
                variant,
            } => self.continue_a4(from, model, variant)?,
            Stage::Ptq { model, rotation } => self.post_training(model, rotation)?,
            Stage::Evaluate { model, setting } => self.evaluate(model.key, setting)?,
            Stage::Activations { model } => self.activation_statistics(model)?,
            Stage::Report => {
                self.write_report()?;
                Outcome::Ran
            }
        };
        if train_cmd::interrupted() {
            bail!("interrupted: the run's checkpoint is saved; rerun the same command to resume");
        }
        Ok(outcome)
    }

    fn part_dir(&self, model: &Model) -> PathBuf {
        self.dir(&format!("{}-part", model.key))
    }

    fn train_tokenizer(&self) -> Result<Outcome> {
        if self.tokenizer.is_file() {
            return Ok(Outcome::AlreadyDone);
        }
        let args = TokenizerTrainArgs {
            data: self.args.data.clone(),
            vocab_size: self.args.vocab_size,
            out: self.tokenizer.clone(),
        };
        self.log_command(&args.command_line())?;
        train_cmd::tokenizer(train_cmd::TokenizerCommand::Train(args))?;
        Ok(Outcome::Ran)
    }

    /// The `hbit train` flags every training run of the study shares.
    fn common(&self, out: &Path) -> Vec<String> {
        let mut v = vec!["--data".to_string()];
        v.extend(self.args.data.iter().map(|p| p.display().to_string()));
        v.extend(strings(&["--out", &out.display().to_string(), "--quiet"]));
        v.extend(strings(&[
            "--eval-every",
            &(self.args.steps / 4).max(1).to_string(),
            "--eval-sequences",
            "32",
            "--checkpoint-every",
            &(self.args.steps / 10).max(1).to_string(),
        ]));
        v
    }

    /// Brings `dir` to `target` steps: nothing if it is there, a resume if it has a checkpoint,
    /// else `start` (the arguments of a fresh run). The arguments are the logged command line
    /// itself, parsed as `hbit train` parses it, so the log and the run cannot differ.
    fn train_to(&self, dir: &Path, target: u64, start: Option<Vec<String>>) -> Result<Outcome> {
        let state = Self::state_of(dir)?;
        if let Some(s) = state.as_ref().filter(|s| s.seed != self.seed) {
            bail!(
                "{}: this run was trained at seed {}, the study is at seed {}; give it its own \
                 --runs directory (or the seed it was run with)",
                dir.display(),
                s.seed,
                self.seed
            );
        }
        let line = match state.map(|s| s.step) {
            Some(step) if step >= target => return Ok(Outcome::AlreadyDone),
            Some(_) => {
                let mut a = strings(&["train", "--resume"]);
                a.extend(self.common(dir));
                a.extend(strings(&["--stop-after", &target.to_string()]));
                a
            }
            None => {
                start.with_context(|| format!("{}: no checkpoint to resume from", dir.display()))?
            }
        };
        let args = TrainArgs::parse_command_line(&line)?;
        self.log_command(&line)?;
        train_cmd::train(&args)?;
        Ok(Outcome::Ran)
    }

    fn train_a8_part(&self, model: &Model, variant: &str) -> Result<Outcome> {
        let dir = self.part_dir(model);
        let a = self.args;
        let mut start = strings(&["train"]);
        start.extend(self.common(&dir));
        start.extend(strings(&[
            "--tokenizer",
            &self.tokenizer.display().to_string(),
            "--preset",
            &a.preset,
            "--variant",
            variant,
            "--act-bits",
            "8",
            "--steps",
            &a.steps.to_string(),
            "--stop-after",
            &self.switch_step.to_string(),
            "--batch-size",
            &a.batch_size.to_string(),
            "--seed",
            &self.seed.to_string(),
        ]));
        if let Some(l) = a.seq_len {
            start.extend(strings(&["--seq-len", &l.to_string()]));
        }
        self.train_to(&dir, self.switch_step, Some(start))
    }

    fn finish_a8(&self, model: &Model) -> Result<Outcome> {
        let dir = self.dir(model.key);
        if !dir.exists() {
            let tmp = self.dir(&format!("{}.copying", model.key));
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp)?;
            }
            std::fs::create_dir_all(&tmp)?;
            for entry in std::fs::read_dir(self.part_dir(model))? {
                let entry = entry?;
                if entry.path().is_file() {
                    std::fs::copy(entry.path(), tmp.join(entry.file_name()))?;
                }
            }
            std::fs::rename(&tmp, &dir)?;
        }
        self.train_to(&dir, self.args.steps, None)
    }

    fn continue_a4(&self, from: &Model, model: &Model, variant: Option<&str>) -> Result<Outcome> {
        let dir = self.dir(model.key);
        let mut start = strings(&["train"]);
        start.extend(self.common(&dir));
        start.extend(strings(&[
            "--init-from",
            &self.part_dir(from).display().to_string(),
            "--act-bits",
            "4",
        ]));
        if let Some(v) = variant {
            start.extend(strings(&["--variant", v]));
        }
        self.train_to(&dir, self.args.steps, Some(start))
    }

    fn post_training(&self, model: &Model, rotation: &str) -> Result<Outcome> {
        let dir = self.dir(model.key);
        if dir.join(CONFIG_FILE).is_file() {
            return Ok(Outcome::AlreadyDone);
        }
        let args = PtqArgs {
            model: self.dir(B158.key),
            out: dir,
            rotation: rotation.to_string(),
            act_bits: 4,
            seed: self.seed,
            // SpinQuant calibrates on the study's training text.
            data: match rotation {
                "spinquant" => self.args.data.clone(),
                _ => Vec::new(),
            },
            steps: self.args.spinquant_steps,
            lr: 1.5,
            batch_size: 4,
            seq_len: self.args.seq_len,
            cache_dir: ".hbit-cache".into(),
        };
        self.log_command(&args.command_line())?;
        ptq(&args)?;
        Ok(Outcome::Ran)
    }

    /// Perplexity and tasks of one model under one attention setting, cached as JSON.
    fn evaluate(&self, key: &str, setting: usize) -> Result<Outcome> {
        let (suffix, _, kv, q_bits) = ATTENTION_SETTINGS[setting];
        let out = self.results.join(format!("{key}{suffix}.json"));
        if out.is_file() {
            return Ok(Outcome::AlreadyDone);
        }
        eprintln!("reproduce: evaluating {key}{suffix}");
        let path = self.dir(key);
        let mut loaded = load_model(&path)?;
        loaded.engine.q_bits = q_bits;
        let tokenizer = load_tokenizer(&loaded, None, &path)?;
        let engine = &loaded.engine;
        let prefix = prefix_token(None, engine, &tokenizer)?;
        let kv = KvBits::parse(kv)?;
        let mut report = json!({"model": key, "kv_bits": kv.name(), "q_bits": q_bits});
        if let Some(wiki) = self.find_eval_file("wikitext2/wiki.test.raw") {
            let text =
                std::fs::read_to_string(&wiki).with_context(|| format!("{}", wiki.display()))?;
            let mut ids = tokenizer
                .encode(text.as_str(), false)
                .map_err(|e| anyhow::anyhow!("tokenizing {}: {e}", wiki.display()))?
                .get_ids()
                .to_vec();
            if self.args.ppl_tokens > 0 {
                ids.truncate(self.args.ppl_tokens);
            }
            // The UTF-8 bytes of the scored tokens (the whole text unless --ppl-tokens cuts it).
            let lengths = token_byte_lengths(&tokenizer);
            let bytes: usize = ids
                .iter()
                .map(|&id| lengths.get(id as usize).copied().unwrap_or(0) as usize)
                .sum();
            let context = engine.config().max_position_embeddings.min(2048);
            let p = perplexity(engine, prefix, &ids, context, context, kv, &mut |_, _| {})?;
            report["wikitext2"] = json!({
                "data": wiki.display().to_string(),
                "tokens": p.tokens,
                "bytes": bytes,
                "context": context,
                "perplexity": p.perplexity(),
                "bits_per_byte": p.bits_per_byte(bytes),
            });
        }
        let mut tasks = Vec::new();
        for task in Task::ALL {
            let Some(file) = self.task_file(task) else {
                continue;
            };
            let limit = (self.args.task_limit > 0).then_some(self.args.task_limit);
            let docs = load_docs(task, &file, limit)?;
            let (_, j) = run_task(
                engine,
                &tokenizer,
                prefix,
                (task, &file, &docs),
                kv,
                2048,
                true,
            )?;
            tasks.push(j);
        }
        report["tasks"] = json!(tasks);
        std::fs::create_dir_all(&self.results)
            .with_context(|| format!("{}: cannot create", self.results.display()))?;
        hbit_train::checkpoint::write_file_atomic(&out, report.to_string().as_bytes())?;
        Ok(Outcome::Ran)
    }

    fn activation_statistics(&self, model: &Model) -> Result<Outcome> {
        let out = self.args.out.join("activations").join(model.key);
        if out.join("activations.json").is_file() {
            return Ok(Outcome::AlreadyDone);
        }
        let Some(text) = self.find_eval_file("wikitext2/wiki.test.raw") else {
            eprintln!("reproduce: no wikitext2/wiki.test.raw, skipping activation statistics");
            return Ok(Outcome::Skipped);
        };
        activations(&ActivationsArgs {
            model: Some(self.dir(model.key)),
            data: Some(text),
            prompt: None,
            tokens: self.args.stats_tokens,
            context: None,
            out,
            bins: 81,
            tokenizer: None,
            prefix_token: None,
            no_plots: false,
            json: false,
        })?;
        Ok(Outcome::Ran)
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}
