//! `hbit serve` (the OpenAI-compatible server) and `hbit chat` (a terminal chat on the same
//! scheduler, template and stop rules).

use std::io::{BufRead, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use hbit_engine::{Engine, KvBits};
use hbit_serve::chat_template::{ChatTemplate, Message};
use hbit_serve::http::{AppState, HttpConfig};
use hbit_serve::metrics::Metrics;
use hbit_serve::scheduler::{Event, Request, SchedulerConfig};
use hbit_serve::{start_model, RunningServer};
use tokenizers::Tokenizer;

use crate::engine_cmds::{load_model, load_tokenizer, model_or_bundled, SamplingArgs};

/// What `serve` and `chat` share: the model and how it runs.
#[derive(Args)]
pub struct ModelArgs {
    /// Packed model file (`hbit pack`) or checkpoint directory [default: the bundled model].
    #[arg(long)]
    model: Option<PathBuf>,
    /// HF tokenizer.json (default: the one inside the model).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// A Jinja chat template (HF semantics) instead of the model's own or the built-in one.
    #[arg(long)]
    chat_template: Option<PathBuf>,
    /// Most positions (prompt + answer) of a sequence [default: the model's context].
    #[arg(long)]
    ctx: Option<usize>,
    /// KV-cache storage: 16 (f16), 8, 4 or 3 bits, or 32.
    #[arg(long, default_value = "16")]
    kv_bits: String,
    /// LM head: 16 (as stored), 8 (absmax per row), 6 or 4 (an f16 scale per 32 weights): a copy
    /// made at load with fewer bytes per decode step [default: 4 where the hidden size is a
    /// multiple of 64, else 8]
    #[arg(long)]
    head_bits: Option<u8>,
    /// Threads for the model (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Sequences decoded together at most.
    #[arg(long, default_value_t = 16)]
    max_seqs: usize,
    /// Requests that may wait for a slot; the next one gets 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Require this API key (`Authorization: Bearer KEY` or `x-api-key: KEY`).
    #[arg(long, conflicts_with = "api_key_file")]
    api_key: Option<String>,
    /// Require one of the API keys in this file (one per line).
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// Allow these origins cross-origin requests (comma-separated; `*` for any). Off by default.
    #[arg(long, value_delimiter = ',')]
    cors_origins: Vec<String>,
    /// Serve Prometheus metrics at GET /metrics.
    #[arg(long)]
    metrics: bool,
    /// The model's name in the API [default: the model file's stem].
    #[arg(long)]
    model_name: Option<String>,
    /// Most prompt tokens prefilled per engine step, over all new requests. While answers
    /// stream, steps take fewer (sized so a step with prefill lasts about --step-time-factor
    /// decode steps).
    #[arg(long, default_value_t = 256)]
    prefill_chunk: usize,
    /// How much longer than a decode-only step a step that also prefills may take while
    /// answers stream (the running streams' inter-token latency against new prompts' wait).
    #[arg(long, default_value_t = 2.5)]
    step_time_factor: f64,
    /// MiB of finished requests' KV caches kept to skip the prefill of shared prompt prefixes.
    #[arg(long, default_value_t = 256)]
    prefix_cache_mib: usize,
    /// MiB the running sequences' KV caches may reserve [default: --max-seqs full contexts].
    #[arg(long)]
    kv_budget_mib: Option<usize>,
    /// Largest request body, KiB.
    #[arg(long, default_value_t = 4096)]
    body_limit_kib: usize,
    /// Seconds a client has to send its request headers, and then its body.
    #[arg(long, default_value_t = 30)]
    read_timeout: u64,
    /// No per-request log lines.
    #[arg(long)]
    quiet: bool,
}

/// A model loaded for serving: engine, tokenizer, template, name.
pub struct ServingModel {
    pub engine: Engine,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub name: String,
    pub ctx: usize,
    pub kv_bits: KvBits,
    pub threads: Option<usize>,
}

impl ModelArgs {
    fn kv_bits(&self) -> Result<KvBits> {
        KvBits::parse(&self.kv_bits).with_context(|| format!("--kv-bits {}", self.kv_bits))
    }

    fn load(&self) -> Result<ServingModel> {
        let kv_bits = self.kv_bits()?;
        let path = model_or_bundled(&self.model)?;
        let mut loaded = load_model(&path)?;
        crate::engine_cmds::apply_head_bits(&mut loaded.engine, self.head_bits)?;
        let tokenizer = load_tokenizer(&loaded, self.tokenizer.as_deref(), &path)?;
        let config = loaded.engine.config();
        let context = config.max_position_embeddings;
        let ctx = match self.ctx {
            None => context,
            Some(n) if (2..=context).contains(&n) => n,
            Some(n) => bail!("--ctx {n}: expected 2..={context} (the model's context)"),
        };
        let token = |id: Option<u32>| {
            id.and_then(|i| tokenizer.id_to_token(i))
                .unwrap_or_default()
        };
        let (bos, eos) = (token(config.bos_token_id), token(config.eos_token_id));
        let template = match &self.chat_template {
            Some(file) => {
                let source = std::fs::read_to_string(file)
                    .with_context(|| format!("--chat-template {}", file.display()))?;
                ChatTemplate::new(&source, &file.display().to_string(), &bos, &eos)?
            }
            None => match &loaded.chat_template {
                Some(source) => ChatTemplate::new(source, &path.display().to_string(), &bos, &eos)?,
                None => ChatTemplate::builtin(&bos, &eos),
            },
        };
        let name = model_name(&path);
        Ok(ServingModel {
            engine: loaded.engine,
            tokenizer,
            template,
            name,
            ctx,
            kv_bits,
            threads: self.threads,
        })
    }
}

/// `model.hbit` → `model`; a directory → its name.
fn model_name(path: &Path) -> String {
    let stem = if path.is_dir() {
        path.file_name()
    } else {
        path.file_stem()
    };
    stem.map_or("hbit".to_string(), |s| s.to_string_lossy().to_string())
}

fn api_keys(args: &ServeArgs) -> Result<Vec<String>> {
    if let Some(k) = &args.api_key {
        if k.trim().is_empty() {
            bail!("--api-key is empty");
        }
        return Ok(vec![k.trim().to_string()]);
    }
    let Some(file) = &args.api_key_file else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("--api-key-file {}", file.display()))?;
    let keys: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    if keys.is_empty() {
        bail!("--api-key-file {}: no keys in it", file.display());
    }
    Ok(keys)
}

pub fn serve(args: &ServeArgs) -> Result<()> {
    if args.max_seqs == 0 {
        bail!("--max-seqs must be at least 1");
    }
    args.model.kv_bits()?;
    if !(args.step_time_factor >= 1.0 && args.step_time_factor.is_finite()) {
        bail!(
            "--step-time-factor {}: expected a number >= 1",
            args.step_time_factor
        );
    }
    let config = HttpConfig {
        api_keys: api_keys(args)?,
        cors_origins: args.cors_origins.clone(),
        metrics: args.metrics,
        body_limit: args.body_limit_kib.saturating_mul(1024),
        read_timeout: Duration::from_secs(args.read_timeout.max(1)),
        log_requests: !args.quiet,
    };
    // Listen first, so `/health` answers 503 while the model loads.
    let address = format!("{}:{}", args.host, args.port);
    let listener =
        TcpListener::bind(&address).with_context(|| format!("listening on {address}"))?;
    let metrics = Arc::new(Metrics::default());
    let state = AppState::new(config, metrics.clone());
    let server = RunningServer::start(listener, state.clone(), 2, true)?;
    eprintln!(
        "hbit serve: listening on http://{} (loading the model)",
        server.addr
    );
    let model = match args.model.load() {
        Ok(m) => m,
        Err(e) => {
            let _ = state.load_error.set(format!("{e:#}"));
            return Err(e);
        }
    };
    let mut scheduler =
        SchedulerConfig::for_model(&model.engine, args.max_seqs, model.ctx, model.kv_bits);
    scheduler.max_queue = args.max_queue;
    scheduler.prefill_chunk = args.prefill_chunk.max(1);
    if !(args.step_time_factor >= 1.0 && args.step_time_factor.is_finite()) {
        bail!(
            "--step-time-factor {}: expected a number >= 1",
            args.step_time_factor
        );
    }
    scheduler.step_time_factor = args.step_time_factor;
    scheduler.prefix_cache_bytes = args.prefix_cache_mib << 20;
    if let Some(mib) = args.kv_budget_mib {
        scheduler.kv_budget_bytes = mib << 20;
    }
    let name = args.model_name.clone().unwrap_or(model.name);
    let c = model.engine.config();
    eprintln!(
        "hbit serve: model `{}` ({} a{}, context {}, KV {}), template {}, up to {} sequences",
        name,
        c.variant.name(),
        c.activation_bits.bits(),
        model.ctx,
        model.kv_bits.name(),
        model.template.origin,
        args.max_seqs
    );
    let served = start_model(
        &name,
        model.engine,
        model.tokenizer,
        model.template,
        scheduler,
        model.threads,
        metrics,
    )?;
    if state.model.set(Arc::new(served)).is_err() {
        bail!("the model was set twice");
    }
    eprintln!("hbit serve: ready");
    server.wait()?;
    eprintln!("hbit serve: stopped");
    Ok(())
}

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A system message that opens the conversation.
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub fn chat(args: &ChatArgs) -> Result<()> {
    let model = args.model.load()?;
    let sampling = args.sampling.params();
    sampling.validate()?;
    let scheduler = SchedulerConfig::for_model(&model.engine, 1, model.ctx, model.kv_bits);
    let served = start_model(
        &model.name,
        model.engine,
        model.tokenizer,
        model.template,
        scheduler,
        model.threads,
        Arc::new(Metrics::default()),
    )?;
    let opening: Vec<Message> = args
        .system
        .iter()
        .map(|s| Message::new("system", s))
        .collect();
    let mut history = opening.clone();
    eprintln!(
        "hbit chat with `{}` (template {}): type a message; /reset clears the history, /quit ends",
        served.id, served.template.origin
    );
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    let mut line = String::new();
    loop {
        print!("> ");
        stdout.flush().ok();
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            println!();
            return Ok(());
        }
        let input = line.trim();
        match input {
            "" => continue,
            "/quit" | "/exit" => return Ok(()),
            "/reset" => {
                history = opening.clone();
                println!("(history cleared)");
                continue;
            }
            _ => {}
        }
        history.push(Message::new("user", input));
        let prompt = match served.encode_chat(&history, true, true) {
            Ok(p) => p,
            Err(e) => {
                history.pop();
                eprintln!("error: {}", e.message);
                continue;
            }
        };
        let room = served.scheduler.ctx().saturating_sub(prompt.len());
        if room == 0 {
            history.pop();
            eprintln!(
                "error: the conversation fills the context ({} tokens); /reset to start over",
                served.scheduler.ctx()
            );
            continue;
        }
        let mut stop = served.template.stop.clone();
        stop.dedup();
        let request = Request {
            prompt,
            max_tokens: args.max_tokens.min(room),
            sampling: sampling.clone(),
            stop,
            end_tokens: served.end_tokens.clone(),
            logprobs: None,
        };
        let mut events = served.scheduler.submit(request)?;
        let mut answer = String::new();
        while let Some(event) = events.blocking_recv() {
            match event {
                Event::Token { text, .. } => {
                    print!("{text}");
                    answer.push_str(&text);
                }
                Event::Done { text, .. } => {
                    print!("{text}");
                    answer.push_str(&text);
                    break;
                }
                Event::Error(e) => {
                    eprintln!("\nerror: {e}");
                    break;
                }
            }
            stdout.flush().ok();
        }
        println!();
        history.push(Message::new("assistant", answer.trim()));
    }
}
