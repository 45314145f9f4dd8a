//! `hbit eval ...`: evaluation on the inference engine (what is evaluated is what is served).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use hbit_engine::{Engine, KvBits};
use hbit_eval::ppl::{perplexity, perplexity_llama_cpp, perplexity_windows, window_scores};
use hbit_eval::report::{table1, ModelRow};
use hbit_eval::{encode_pair, load_docs, score_requests, score_task, Request, Task, TaskResult};
use indicatif::{ProgressBar, ProgressStyle};
use tokenizers::Tokenizer;

use crate::engine_cmds::{load_model, load_tokenizer, model_or_bundled};

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Perplexity of a text file: rolling windows as lm-evaluation-harness's loglikelihood_rolling.
    Ppl(PplArgs),
    /// Zero-shot tasks (ARC, HellaSwag, PIQA, WinoGrande, LAMBADA) scored as lm-evaluation-harness.
    Tasks(TasksArgs),
}

#[derive(Args)]
pub struct TasksArgs {
    /// Packed model file (`hbit pack`) or checkpoint directory [default: the bundled model].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Task names as lm-evaluation-harness spells them, comma-separated, or `all`: arc_easy,
    /// arc_challenge, hellaswag, piqa, winogrande, lambada_openai (or lambada).
    #[arg(long)]
    task: String,
    /// The task's data file in its official layout, or a directory holding the files under
    /// their official names (e.g. ../shared/data). Repeat to search several directories.
    #[arg(long, required = true)]
    data: Vec<PathBuf>,
    /// Score only the first N documents of each task.
    #[arg(long)]
    limit: Option<usize>,
    /// KV-cache storage while scoring: 32, 16, 8, 4 or 3 bits.
    #[arg(long, default_value = "16")]
    kv_bits: String,
    /// LM head: 16 (as stored: the model's own score), 8 (absmax per row), 6 or 4 (an f16 scale
    /// per 32 weights; 4 is what `generate` and `serve` use by default).
    #[arg(long, default_value_t = 16)]
    head_bits: u8,
    /// Quantize queries to this many bits per head (the paper's 4-bit Q).
    #[arg(long)]
    q_bits: Option<u32>,
    /// Tokens per batched forward call (contexts plus continuations).
    #[arg(long, default_value = "2048")]
    batch_tokens: usize,
    /// HF tokenizer.json (default: the one inside the model).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Token every request starts with (default: the model's BOS, else the tokenizer's
    /// end-of-text token, the document separator our models train with).
    #[arg(long)]
    prefix_token: Option<u32>,
    /// Row name in the Markdown table (default: the model's file name).
    #[arg(long)]
    name: Option<String>,
    /// Also write the Markdown table (paper's Table 1 layout) to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct PplArgs {
    /// Packed model file (`hbit pack`) or checkpoint directory [default: the bundled model].
    #[arg(long)]
    model: Option<PathBuf>,
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
    /// LM head: 16 (as stored: the model's own score), 8 (absmax per row), 6 or 4 (an f16 scale
    /// per 32 weights; 4 is what `generate` and `serve` use by default).
    #[arg(long, default_value_t = 16)]
    head_bits: u8,
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
    /// How windows are cut and scored: rolling (lm-evaluation-harness: every token once,
    /// after the prefix token), llama-cpp (llama.cpp's `llama-perplexity`: --context-sized
    /// chunks starting with BOS, the second half of each scored), to compare with llama.cpp and
    /// bitnet.cpp, or windows (independent --context-sized windows and no prefix, each window's
    /// first token context only, as a plain PyTorch evaluation loop scores; bits per byte over
    /// the scored tokens' bytes).
    #[arg(long, default_value = "rolling")]
    method: String,
}

pub fn run(cmd: EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::Ppl(args) => ppl(&args),
        EvalCommand::Tasks(args) => tasks(&args),
    }
}

fn ppl(args: &PplArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.data)
        .with_context(|| format!("{}: cannot read as UTF-8 text", args.data.display()))?;
    let model = model_or_bundled(&args.model)?;
    let mut loaded = load_model(&model)?;
    loaded
        .engine
        .use_head_bits(args.head_bits)
        .context("--head-bits")?;
    let tokenizer = load_tokenizer(&loaded, args.tokenizer.as_deref(), &model)?;
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
    let context = args
        .context
        .unwrap_or(config.max_position_embeddings.min(2048));
    let stride = args.stride.unwrap_or(context);
    let kv = KvBits::parse(&args.kv_bits)?;
    let start = Instant::now();
    let show = !args.json;
    let mut progress = |done, total| {
        if show {
            eprint!("\rwindow {done}/{total}");
        }
    };
    let p = match args.method.as_str() {
        "rolling" => {
            let prefix = prefix_token(args.prefix_token, engine, &tokenizer)?;
            perplexity(engine, prefix, &tokens, context, stride, kv, &mut progress)?
        }
        "llama-cpp" => {
            if args.stride.is_some() || args.prefix_token.is_some() {
                bail!("--method llama-cpp scores llama.cpp's chunks: --stride and --prefix-token do not apply");
            }
            let bos = config.bos_token_id;
            perplexity_llama_cpp(engine, bos, &tokens, context, kv, &mut progress)?
        }
        "windows" => {
            if args.stride.is_some() || args.prefix_token.is_some() {
                bail!("--method windows scores independent windows: --stride and --prefix-token do not apply");
            }
            perplexity_windows(engine, &tokens, context, kv, &mut progress)?
        }
        other => bail!("--method {other:?}: expected rolling, windows or llama-cpp"),
    };
    if show {
        eprintln!();
    }
    let seconds = start.elapsed().as_secs_f64();
    let words = text.split_whitespace().count().max(1);
    // Word perplexity needs every token scored once (the rolling method). Bits per byte are
    // over the bytes of the scored tokens: the whole text for rolling, all but each window's
    // first token for windows; llama.cpp's chunks score half of them, so none there.
    let whole_text = args.method == "rolling";
    let word_ppl = whole_text.then(|| (p.nll_sum / words as f64).exp());
    let bpb = match args.method.as_str() {
        "rolling" => Some(p.bits_per_byte(text.len())),
        "windows" => {
            let lengths = hbit_train::tokenizer::token_byte_lengths(&tokenizer);
            let scored_bytes: usize = tokens
                .iter()
                .enumerate()
                .filter(|&(i, _)| window_scores(i, context, tokens.len()))
                .map(|(_, &id)| lengths.get(id as usize).copied().unwrap_or(0) as usize)
                .sum();
            Some(p.bits_per_byte(scored_bytes))
        }
        _ => None,
    };
    let report = serde_json::json!({
        "model": model.display().to_string(),
        "data": args.data.display().to_string(),
        "method": args.method,
        "tokens": p.tokens,
        "windows": p.windows,
        "context": context,
        "stride": stride,
        "kv_bits": kv.name(),
        "head_bits": args.head_bits,
        "nll_sum": p.nll_sum,
        "mean_nll": p.mean_nll(),
        "perplexity": p.perplexity(),
        "word_perplexity": word_ppl,
        "bits_per_byte": bpb,
        "seconds": seconds,
        "tokens_per_s": p.tokens as f64 / seconds.max(1e-9),
    });
    if args.json {
        println!("{report}");
    } else {
        let whole = match (word_ppl, bpb) {
            (Some(w), Some(b)) => format!(", word perplexity {w:.4}, bits per byte {b:.4}"),
            (None, Some(b)) => {
                format!(", bits per byte {b:.4} (independent windows: each window's first token unscored)")
            }
            _ => " (llama.cpp's method: the second half of each chunk scored)".to_string(),
        };
        println!(
            "{}: {} tokens in {} windows (context {context}, stride {stride}, KV {})\n\
             token perplexity {:.4} (mean NLL {:.4} nats){whole}\n\
             {:.1} s, {:.0} tokens/s",
            args.data.display(),
            p.tokens,
            p.windows,
            kv.name(),
            p.perplexity(),
            p.mean_nll(),
            seconds,
            p.tokens as f64 / seconds.max(1e-9)
        );
    }
    Ok(())
}

/// The token a scored text starts with: the explicit one, else the model's BOS, else the
/// tokenizer's end-of-text (the document separator hbit's models train with).
pub(crate) fn prefix_token(
    explicit: Option<u32>,
    engine: &Engine,
    tokenizer: &Tokenizer,
) -> Result<u32> {
    let end_of_text = ["<|endoftext|>", "<|end_of_text|>", "</s>"]
        .iter()
        .find_map(|t| tokenizer.token_to_id(t));
    explicit
        .or(engine.config().bos_token_id)
        .or(end_of_text)
        .context(
            "the model has no BOS and the tokenizer no end-of-text token: pass --prefix-token ID",
        )
}

fn parse_tasks(list: &str) -> Result<Vec<Task>> {
    if list == "all" {
        return Ok(Task::ALL.to_vec());
    }
    let mut tasks = Vec::new();
    for name in list.split(',').map(str::trim) {
        let t = Task::parse(name)?;
        if !tasks.contains(&t) {
            tasks.push(t);
        }
    }
    Ok(tasks)
}

fn tasks(args: &TasksArgs) -> Result<()> {
    let tasks = parse_tasks(&args.task)?;
    if let Some(file) = args.data.iter().find(|d| !d.is_dir()) {
        if tasks.len() > 1 || args.data.len() > 1 {
            bail!(
                "--data {}: a file serves one task alone; give directories for several tasks",
                file.display()
            );
        }
    }
    if let Some(b) = args.q_bits {
        if !(2..=8).contains(&b) {
            bail!("--q-bits {b}: expected 2..=8");
        }
    }
    // Read every task's data first, so a bad file fails before any model time is spent.
    let mut loaded_tasks = Vec::new();
    for &task in &tasks {
        let path = locate(task, &args.data)?;
        let docs = load_docs(task, &path, args.limit)?;
        loaded_tasks.push((task, path, docs));
    }
    let kv = KvBits::parse(&args.kv_bits)?;
    let model = model_or_bundled(&args.model)?;
    let mut loaded = load_model(&model)?;
    loaded.engine.q_bits = args.q_bits;
    loaded
        .engine
        .use_head_bits(args.head_bits)
        .context("--head-bits")?;
    let tokenizer = load_tokenizer(&loaded, args.tokenizer.as_deref(), &model)?;
    let engine = &loaded.engine;
    let prefix = prefix_token(args.prefix_token, engine, &tokenizer)?;

    let mut results = Vec::new();
    let mut json_tasks = Vec::new();
    for (task, path, docs) in &loaded_tasks {
        let (result, j) = run_task(
            engine,
            &tokenizer,
            prefix,
            (*task, path, docs),
            kv,
            args.batch_tokens,
            !args.json,
        )?;
        let seconds = j["seconds"].as_f64().unwrap_or(0.0);
        if !args.json {
            let norm = result
                .acc_norm
                .map(|(v, se)| format!(", acc_norm {:.2} ± {:.2}", 100.0 * v, 100.0 * se))
                .unwrap_or_default();
            let ppl = result
                .perplexity
                .map(|p| format!(", perplexity {p:.2}"))
                .unwrap_or_default();
            println!(
                "{:<15} {} docs: acc {:.2} ± {:.2}{norm}{ppl} ({seconds:.1} s)",
                task.name(),
                result.docs,
                100.0 * result.acc,
                100.0 * result.acc_stderr,
            );
        }
        json_tasks.push(j);
        results.push(result);
    }
    let name = args.name.clone().unwrap_or_else(|| {
        model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| model.display().to_string())
    });
    let table = table1(&[ModelRow {
        name,
        size: format!("{:.1}M", engine.config().parameter_count() as f64 / 1e6),
        perplexity: None,
        bits_per_byte: None,
        results,
    }]);
    if let Some(md) = &args.markdown {
        hbit_train::checkpoint::write_file_atomic(md, table.as_bytes())?;
    }
    if args.json {
        let report = serde_json::json!({
            "model": model.display().to_string(),
            "kv_bits": kv.name(),
            "head_bits": args.head_bits,
            "q_bits": args.q_bits,
            "limit": args.limit,
            "prefix_token": prefix,
            "tasks": json_tasks,
            "table": table,
        });
        println!("{report}");
    } else {
        println!("\n{table}");
    }
    Ok(())
}

/// The task's file: the one file given, else the first directory holding it under an official
/// name.
fn locate(task: Task, data: &[PathBuf]) -> Result<PathBuf> {
    let mut errors = Vec::new();
    for d in data {
        match task.locate(d) {
            Ok(p) => return Ok(p),
            Err(e) => errors.push(e.to_string()),
        }
    }
    bail!("{}", errors.join("; "))
}

/// Scores one task's documents on `engine` (every request after `prefix`) and returns the
/// metrics and their JSON (with data path, request count and seconds).
pub(crate) fn run_task(
    engine: &Engine,
    tokenizer: &Tokenizer,
    prefix: u32,
    (task, path, docs): (Task, &std::path::Path, &[hbit_eval::Doc]),
    kv: KvBits,
    batch_tokens: usize,
    show_progress: bool,
) -> Result<(TaskResult, serde_json::Value)> {
    let start = Instant::now();
    let mut requests = Vec::new();
    for (d, doc) in docs.iter().enumerate() {
        for (context, continuation) in &doc.requests {
            let (ctx, cont) = encode_pair(tokenizer, context, continuation)
                .with_context(|| format!("{}: document {}", path.display(), d + 1))?;
            let mut with_prefix = Vec::with_capacity(ctx.len() + 1);
            with_prefix.push(prefix);
            with_prefix.extend(ctx);
            requests.push(Request {
                context: with_prefix,
                continuation: cont,
            });
        }
    }
    let bar = if show_progress {
        ProgressBar::new(requests.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{:<15} {{bar:30}} {{pos}}/{{len}} requests [{{elapsed_precise}} < {{eta_precise}}]",
            task.name()
        ))
        .expect("static template"),
    );
    let scores = score_requests(engine, &requests, kv, batch_tokens, &mut |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    let result = score_task(task, docs, &scores)?;
    let mut j = result.to_json();
    j["data"] = serde_json::json!(path.display().to_string());
    j["requests"] = serde_json::json!(requests.len());
    j["seconds"] = serde_json::json!(start.elapsed().as_secs_f64());
    Ok((result, j))
}
