//! `hbit bench serve`: a bounded loopback load generator for an OpenAI-compatible server, hbit's
//! own (started in this process) or another one on this machine (`--url`, e.g. llama-server).
//! At each concurrency, a fixed number of streamed completions with token-id prompts of a fixed
//! length and a fixed answer length (end of text ignored); reports generated tokens/s, time to
//! first token and inter-token latency (p50 / p99), errors and the server's peak resident
//! memory. With `--vs-engine`, the same batch runs through the engine's own `generate` between
//! the server's rounds, and the ratio says what the scheduler and HTTP cost.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use hbit_engine::{generate, Engine, GenerateOptions, KvBits, SamplingParams};
use hbit_kernels::ActBits;
use hbit_model::rng::SplitMix64;
use hbit_serve::chat_template::ChatTemplate;
use hbit_serve::client::send;
use hbit_serve::http::{AppState, HttpConfig};
use hbit_serve::metrics::Metrics;
use hbit_serve::scheduler::SchedulerConfig;
use hbit_serve::{start_model, RunningServer};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

use crate::engine_cmds::{load_model, load_tokenizer, model_or_bundled};

#[derive(Args)]
pub struct ServeBenchArgs {
    /// A server already running on this machine (loopback only), e.g. http://127.0.0.1:8081;
    /// default: start hbit's server in this process.
    #[arg(long)]
    url: Option<String>,
    /// Model for the in-process server: a packed file or checkpoint [default: the bundled
    /// model, or --shape].
    #[arg(long, conflicts_with = "shape")]
    model: Option<PathBuf>,
    /// A random-weight model of a benchmark shape (b125m, b700m, b2b, 400m, 1.3b), as
    /// `hbit bench e2e` uses.
    #[arg(long)]
    shape: Option<String>,
    /// Activation bits of the --shape model.
    #[arg(long, default_value_t = 4)]
    act_bits: u8,
    /// Concurrent clients, one level after another.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32")]
    concurrency: Vec<usize>,
    /// Requests per level [default: twice the concurrency, at least 4].
    #[arg(long)]
    requests: Option<usize>,
    /// Prompt length, tokens.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Answer length, tokens.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Threads of the in-process engine (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// KV-cache storage of the in-process server.
    #[arg(long, default_value = "16")]
    kv_bits: String,
    /// Most prompt tokens prefilled per engine step (the in-process server's --prefill-chunk).
    #[arg(long, default_value_t = 256)]
    prefill_chunk: usize,
    /// The in-process server's --step-time-factor (a huge value: always the whole chunk).
    #[arg(long, default_value_t = 2.5)]
    step_time_factor: f64,
    /// Also run each level's batch through the engine's `generate` alone (same lengths), in
    /// turn with the server's rounds, and report the server's share of it.
    #[arg(long)]
    vs_engine: bool,
    /// Rounds per level (each round: `requests` requests; with --vs-engine, one engine batch
    /// after each); the median round is reported.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Meanwhile, one more client keeps sending prompts of this many tokens (one answer token
    /// each): the streams' inter-token latency while long prompts keep arriving.
    #[arg(long)]
    arrivals: Option<usize>,
    /// Repeat each level's rounds for this many seconds, printing each round's tokens/s and
    /// the server's resident memory (a soak: memory must stop growing).
    #[arg(long)]
    soak: Option<u64>,
    /// Vocabulary size of the --url server's model: prompt token ids are drawn below it.
    #[arg(long, default_value_t = 32000)]
    vocab: usize,
    /// Process id of the --url server, to report its peak resident memory.
    #[arg(long)]
    pid: Option<u32>,
    /// API key to send.
    #[arg(long)]
    api_key: Option<String>,
    /// Seconds one request may take before it counts as an error.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// One JSON object per level.
    #[arg(long)]
    json: bool,
    /// A fast smoke run: the bundled model, concurrency 1 and 4, 16-token prompts and answers.
    #[arg(long)]
    quick: bool,
    /// Where --shape models are written once and reused.
    #[arg(long, default_value = ".hbit-cache/dummy")]
    cache_dir: PathBuf,
}

/// One request's timings.
#[derive(Default)]
struct Sample {
    /// The request's place in its round (the first `concurrency` start together).
    index: usize,
    ttft: Option<f64>,
    gaps: Vec<f64>,
    tokens: usize,
    error: Option<String>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

/// Resolves `--url` to a loopback address (load is never sent anywhere else).
fn loopback(url: &str) -> Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("--url {url}: expected http://HOST:PORT"))?;
    let host_port = rest.split('/').next().unwrap_or(rest);
    let addr = host_port
        .to_socket_addrs()
        .with_context(|| format!("--url {url}"))?
        .next()
        .with_context(|| format!("--url {url}: no address"))?;
    if !addr.ip().is_loopback() {
        bail!("--url {url}: the load generator only targets this machine's loopback addresses");
    }
    Ok(addr)
}

/// A word-level tokenizer for a random-weight model: token `i` is the word `tI`.
fn synthetic_tokenizer(vocab: usize) -> Result<Tokenizer> {
    let words: serde_json::Map<String, Value> =
        (0..vocab).map(|i| (format!("t{i}"), json!(i))).collect();
    let spec = json!({
        "version": "1.0", "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": words, "unk_token": "t0"},
    });
    Tokenizer::from_bytes(spec.to_string().as_bytes())
        .map_err(|e| anyhow::anyhow!("synthetic tokenizer: {e}"))
}

/// The in-process server's model: engine and tokenizer.
fn local_model(args: &ServeBenchArgs) -> Result<(Engine, Tokenizer, String)> {
    if let Some(shape) = &args.shape {
        let bits = ActBits::from_bits(args.act_bits)
            .with_context(|| format!("--act-bits {}: expected 8 or 4", args.act_bits))?;
        let path = super::e2e::dummy_model(&args.cache_dir, shape, bits, None)?;
        // Built in this CPU's native layout; a benchmark neither tunes nor writes the cache.
        let mut loaded = crate::engine_cmds::load_model_as_stored(&path)?;
        // The LM head `hbit serve` runs by default.
        crate::engine_cmds::apply_head_bits(&mut loaded.engine, None)?;
        let tokenizer = synthetic_tokenizer(loaded.engine.config().vocab_size)?;
        return Ok((
            loaded.engine,
            tokenizer,
            format!("{shape}-v2-a{}", args.act_bits),
        ));
    }
    let path = model_or_bundled(&args.model)?;
    let mut loaded = load_model(&path)?;
    crate::engine_cmds::apply_head_bits(&mut loaded.engine, None)?;
    let tokenizer = load_tokenizer(&loaded, None, &path)?;
    let name = path
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().to_string());
    Ok((loaded.engine, tokenizer, name))
}

/// Peak resident memory (VmHWM) of process `pid` ("self" for this one), bytes.
fn peak_rss(pid: &str) -> Option<u64> {
    status_bytes(pid, "VmHWM:")
}

/// Resident memory (VmRSS) of process `pid` now, bytes.
fn current_rss(pid: &str) -> Option<u64> {
    status_bytes(pid, "VmRSS:")
}

/// A `/proc/PID/status` field given in kB, in bytes.
fn status_bytes(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// One streamed request: prompt token ids, a fixed answer length.
fn one_request(
    addr: SocketAddr,
    body: &Value,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Sample {
    let mut sample = Sample::default();
    let start = Instant::now();
    let open = match send(
        addr,
        "POST",
        "/v1/completions",
        headers,
        Some(body.to_string().as_bytes()),
        timeout,
    ) {
        Ok(o) => o,
        Err(e) => {
            sample.error = Some(e.to_string());
            return sample;
        }
    };
    if open.status != 200 {
        let status = open.status;
        let text = open
            .read_all()
            .map(|r| String::from_utf8_lossy(&r.body).to_string());
        sample.error = Some(format!("HTTP {status}: {}", text.unwrap_or_default()));
        return sample;
    }
    let mut last: Option<Instant> = None;
    let mut chunks = 0;
    let mut ended = false;
    for event in open.events() {
        let (at, data) = match event {
            Ok(e) => e,
            Err(e) => {
                sample.error = Some(e.to_string());
                return sample;
            }
        };
        if data == "[DONE]" {
            ended = true;
            break;
        }
        let Ok(v) = serde_json::from_str::<Value>(&data) else {
            sample.error = Some(format!("not JSON: {data}"));
            return sample;
        };
        if let Some(e) = v.get("error") {
            sample.error = Some(format!("error event: {e}"));
            return sample;
        }
        // llama.cpp's own format ends with `"stop": true` (and no [DONE]).
        ended |= v["stop"] == Value::Bool(true);
        // OpenAI's chunks, or llama.cpp's own (`content`, `tokens_predicted` at the end),
        // which its server also sends from /v1/completions.
        if let Some(n) = v["usage"]["completion_tokens"]
            .as_u64()
            .or(v["tokens_predicted"].as_u64())
        {
            sample.tokens = n as usize;
        }
        let text = v["choices"][0]["text"]
            .as_str()
            .or(v["content"].as_str())
            .unwrap_or("");
        if text.is_empty() {
            continue;
        }
        chunks += 1;
        match last {
            None => sample.ttft = Some((at - start).as_secs_f64()),
            Some(prev) => sample.gaps.push((at - prev).as_secs_f64()),
        }
        last = Some(at);
    }
    if !ended {
        sample.error = Some("the stream ended before the answer did".into());
        return sample;
    }
    if sample.tokens == 0 {
        // A server that reports no usage: one chunk per token.
        sample.tokens = chunks;
    }
    sample
}

struct Level {
    concurrency: usize,
    requests: usize,
    tok_s: f64,
    engine_tok_s: Option<f64>,
    ttft: Vec<f64>,
    gaps: Vec<f64>,
    /// Inter-token gaps of requests sent after the first wave.
    steady_gaps: Vec<f64>,
    errors: usize,
    first_error: Option<String>,
}

/// `requests` requests from `concurrency` clients; generated tokens/s over the wall time.
/// Prompt `i` of a run: random token ids, its own seed, so no two requests of a run share a
/// prefix (the prefix cache would otherwise skip their prefill).
fn random_prompt(seed: u64, vocab: usize, len: usize) -> Vec<u32> {
    let mut rng = SplitMix64::new(seed);
    (0..len).map(|_| rng.below(vocab as u64) as u32).collect()
}

/// `requests` requests from `concurrency` clients, prompts seeded from `first_seed` on;
/// generated tokens/s over the wall time.
#[allow(clippy::too_many_arguments)]
fn run_level(
    addr: SocketAddr,
    concurrency: usize,
    requests: usize,
    first_seed: u64,
    args: &ServeBenchArgs,
    vocab: usize,
    prompt_tokens: usize,
    max_tokens: usize,
) -> (f64, Vec<Sample>) {
    let next = Arc::new(AtomicUsize::new(0));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let stop = AtomicBool::new(false);
    let mut wall = 0.0;
    std::thread::scope(|scope| {
        // With --arrivals: a client that keeps sending long prompts (one answer token each)
        // while the level runs; its requests count in no statistic.
        if let Some(long) = args.arrivals.filter(|&n| n > 0) {
            let stop = &stop;
            scope.spawn(move || {
                let mut seed = first_seed + 1_000_000;
                while !stop.load(Ordering::Relaxed) {
                    let body = json!({
                        "prompt": random_prompt(seed, vocab, long), "max_tokens": 1,
                        "temperature": 0, "ignore_eos": true,
                    });
                    seed += 1;
                    let key = args.api_key.as_ref().map(|k| format!("Bearer {k}"));
                    let headers: Vec<(&str, &str)> =
                        key.iter().map(|k| ("Authorization", k.as_str())).collect();
                    let answered = send(
                        addr,
                        "POST",
                        "/v1/completions",
                        &headers,
                        Some(body.to_string().as_bytes()),
                        Duration::from_secs(args.timeout),
                    )
                    .and_then(|r| r.read_all());
                    if !matches!(answered, Ok(ref r) if r.status == 200) {
                        // Refused (a prompt too long, a missing key): do not spin.
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            });
        }
        let mut clients = Vec::new();
        for _ in 0..concurrency {
            let (next, samples) = (next.clone(), samples.clone());
            clients.push(scope.spawn(move || {
                let key = args.api_key.as_ref().map(|k| format!("Bearer {k}"));
                let headers: Vec<(&str, &str)> =
                    key.iter().map(|k| ("Authorization", k.as_str())).collect();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        return;
                    }
                    let prompt = random_prompt(first_seed + i as u64, vocab, prompt_tokens);
                    let body = json!({
                        "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                        "ignore_eos": true, "stream": true,
                        "stream_options": {"include_usage": true},
                    });
                    let mut s =
                        one_request(addr, &body, &headers, Duration::from_secs(args.timeout));
                    s.index = i;
                    samples.lock().map(|mut v| v.push(s)).ok();
                }
            }));
        }
        for c in clients {
            let _ = c.join();
        }
        wall = start.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
    });
    let samples = Arc::try_unwrap(samples)
        .ok()
        .and_then(|m| m.into_inner().ok())
        .unwrap_or_default();
    let tokens: usize = samples.iter().map(|s| s.tokens).sum();
    (tokens as f64 / wall, samples)
}

/// Generated tokens/s of the engine's own `generate` on a batch of `batch` prompts.
fn engine_alone(
    first_seed: u64,
    engine: &Engine,
    tokenizer: &Tokenizer,
    batch: usize,
    prompt_tokens: usize,
    max_tokens: usize,
    kv: KvBits,
) -> Result<f64> {
    let vocab = engine.config().vocab_size;
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|i| random_prompt(first_seed + i as u64, vocab, prompt_tokens))
        .collect();
    let options = GenerateOptions {
        max_tokens,
        stop: Vec::new(),
        end_tokens: Vec::new(),
        sampling: SamplingParams::default(),
        kv_bits: kv,
    };
    let start = Instant::now();
    let (out, _) = generate(engine, tokenizer, &prompts, &options, &mut |_, _| {})?;
    let tokens: usize = out.iter().map(|g| g.tokens.len()).sum();
    Ok(tokens as f64 / start.elapsed().as_secs_f64())
}

pub fn run(args: &ServeBenchArgs) -> Result<()> {
    let (levels, prompt_tokens, max_tokens) = match args.quick {
        true => (vec![1, 4], 16, 16),
        false => (
            args.concurrency.clone(),
            args.prompt_tokens,
            args.max_tokens,
        ),
    };
    if levels.contains(&0) || prompt_tokens == 0 || max_tokens == 0 {
        bail!("--concurrency, --prompt-tokens and --max-tokens must be positive");
    }
    let kv = KvBits::parse(&args.kv_bits)?;
    let max_level = levels.iter().copied().max().unwrap_or(1);
    // The in-process server (kept for the whole run) and, for --vs-engine, a second engine.
    let mut server: Option<RunningServer> = None;
    let mut alone: Option<(Engine, Tokenizer)> = None;
    let (addr, vocab, label) = match &args.url {
        Some(url) => {
            if args.vs_engine {
                bail!("--vs-engine compares hbit's own server with its engine: leave out --url");
            }
            let addr = loopback(url)?;
            (addr, args.vocab.max(1), url.clone())
        }
        None => {
            let (engine, tokenizer, name) = local_model(args)?;
            let vocab = engine.config().vocab_size;
            let ctx = engine.config().max_position_embeddings;
            if prompt_tokens + max_tokens > ctx {
                bail!(
                    "--prompt-tokens + --max-tokens = {} exceed the model's context of {ctx}",
                    prompt_tokens + max_tokens
                );
            }
            // The engine alone for --vs-engine: a second copy of the model, idle while the
            // server runs and the other way round.
            if args.vs_engine {
                alone = Some((local_model(args)?.0, tokenizer.clone()));
            }
            let metrics = Arc::new(Metrics::default());
            let http = HttpConfig {
                log_requests: false,
                ..HttpConfig::default()
            };
            let state = AppState::new(http, metrics.clone());
            let mut config = SchedulerConfig::for_model(&engine, max_level, ctx, kv);
            config.max_queue = 4 * max_level.max(16);
            config.prefill_chunk = args.prefill_chunk.max(1);
            config.step_time_factor = args.step_time_factor.max(1.0);
            let template = ChatTemplate::builtin("", "");
            let model = start_model(
                &name,
                engine,
                tokenizer,
                template,
                config,
                args.threads,
                metrics,
            )?;
            if state.model.set(Arc::new(model)).is_err() {
                bail!("model set twice");
            }
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let running = RunningServer::start(listener, state, 2, false)?;
            let addr = running.addr;
            server = Some(running);
            (addr, vocab, format!("hbit serve ({name}, in process)"))
        }
    };
    if !args.json {
        println!("server: {label}; prompts {prompt_tokens} tokens, answers {max_tokens} tokens");
        println!(
            "{:>4} {:>5} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6}",
            "conc",
            "reqs",
            "gen tok/s",
            "engine t/s",
            "TTFT p50",
            "TTFT p99",
            "ITL p50",
            "ITL p99",
            "errors"
        );
    }
    // Warm-up, not measured: one request of the measured lengths (pages the weights in,
    // starts the threads), and one engine batch when it is compared.
    let warm = json!({
        "prompt": random_prompt(1, vocab, prompt_tokens), "max_tokens": max_tokens,
        "temperature": 0, "ignore_eos": true, "stream": true,
    });
    let key = args.api_key.as_ref().map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = key.iter().map(|k| ("Authorization", k.as_str())).collect();
    let _ = one_request(addr, &warm, &headers, Duration::from_secs(args.timeout));
    if let Some((engine, tokenizer)) = &alone {
        engine_alone(2, engine, tokenizer, 1, prompt_tokens, max_tokens, kv)?;
    }
    // Whose memory is reported: this process, or the --url server's --pid.
    let rss_pid: Option<String> = match (&args.url, args.pid) {
        (None, _) => Some("self".to_string()),
        (Some(_), Some(pid)) => Some(pid.to_string()),
        (Some(_), None) => None,
    };
    // Every prompt of the run is new (its own seed).
    let mut next_seed = 1000u64;
    for &c in &levels {
        let requests = args.requests.unwrap_or((2 * c).max(4));
        let mut level = Level {
            concurrency: c,
            requests,
            tok_s: 0.0,
            engine_tok_s: None,
            ttft: Vec::new(),
            gaps: Vec::new(),
            steady_gaps: Vec::new(),
            errors: 0,
            first_error: None,
        };
        let mut server_rounds = Vec::new();
        let mut engine_rounds = Vec::new();
        let level_start = Instant::now();
        let mut round = 0;
        // --rounds rounds, or with --soak as many as fit in its time.
        while match args.soak {
            Some(seconds) => level_start.elapsed().as_secs() < seconds,
            None => round < args.rounds.max(1),
        } {
            round += 1;
            let first_seed = next_seed;
            next_seed += requests as u64;
            let (tok_s, samples) = run_level(
                addr,
                c,
                requests,
                first_seed,
                args,
                vocab,
                prompt_tokens,
                max_tokens,
            );
            server_rounds.push(tok_s);
            if args.soak.is_some() {
                let errors = samples.iter().filter(|s| s.error.is_some()).count();
                println!(
                    "{}",
                    json!({
                        "soak_round": round, "concurrency": c,
                        "elapsed_s": level_start.elapsed().as_secs_f64(),
                        "generated_tok_s": tok_s, "errors": errors,
                        "rss_bytes": rss_pid.as_deref().and_then(current_rss),
                    })
                );
            }
            for s in samples {
                if let Some(e) = s.error {
                    level.errors += 1;
                    level.first_error.get_or_insert(e);
                    continue;
                }
                level.ttft.extend(s.ttft);
                if s.index >= c {
                    // Sent after the first wave: the steady state, without the start-up ramp
                    // in which every client's prompt arrived at once.
                    level.steady_gaps.extend(s.gaps.iter().copied());
                }
                level.gaps.extend(s.gaps);
            }
            if let Some((engine, tokenizer)) = &alone {
                let seed = next_seed;
                next_seed += c as u64;
                engine_rounds.push(engine_alone(
                    seed,
                    engine,
                    tokenizer,
                    c,
                    prompt_tokens,
                    max_tokens,
                    kv,
                )?);
            }
        }
        level.tok_s = median(server_rounds);
        if !engine_rounds.is_empty() {
            level.engine_tok_s = Some(median(engine_rounds));
        }
        report(&level, args.json, prompt_tokens, max_tokens);
    }
    let rss = rss_pid.as_deref().and_then(peak_rss);
    match (rss, args.json) {
        (Some(b), true) => println!("{}", json!({"peak_rss_bytes": b, "server": label})),
        (Some(b), false) => println!(
            "peak resident memory: {:.1} MiB",
            b as f64 / (1 << 20) as f64
        ),
        (None, _) => {}
    }
    drop(server);
    Ok(())
}

fn report(level: &Level, as_json: bool, prompt_tokens: usize, max_tokens: usize) {
    let mut ttft = level.ttft.clone();
    let mut gaps = level.gaps.clone();
    let mut steady = level.steady_gaps.clone();
    ttft.sort_by(f64::total_cmp);
    gaps.sort_by(f64::total_cmp);
    steady.sort_by(f64::total_cmp);
    let ms = |v: f64| v * 1e3;
    if as_json {
        println!(
            "{}",
            json!({
                "concurrency": level.concurrency, "requests": level.requests,
                "prompt_tokens": prompt_tokens, "max_tokens": max_tokens,
                "generated_tok_s": level.tok_s, "engine_tok_s": level.engine_tok_s,
                "vs_engine": level.engine_tok_s.map(|e| level.tok_s / e),
                "ttft_p50_ms": ms(percentile(&ttft, 0.5)), "ttft_p99_ms": ms(percentile(&ttft, 0.99)),
                "itl_p50_ms": ms(percentile(&gaps, 0.5)), "itl_p99_ms": ms(percentile(&gaps, 0.99)),
                "steady_itl_p50_ms": ms(percentile(&steady, 0.5)),
                "steady_itl_p99_ms": ms(percentile(&steady, 0.99)),
                "errors": level.errors, "first_error": level.first_error,
            })
        );
        return;
    }
    let engine = level.engine_tok_s.map_or("-".to_string(), |e| {
        format!("{e:.1} ({:.0}%)", 100.0 * level.tok_s / e)
    });
    println!(
        "{:>4} {:>5} {:>10.1} {:>10} {:>9.1}ms {:>9.1}ms {:>9.1}ms {:>9.1}ms {:>6}",
        level.concurrency,
        level.requests,
        level.tok_s,
        engine,
        ms(percentile(&ttft, 0.5)),
        ms(percentile(&ttft, 0.99)),
        ms(percentile(&gaps, 0.5)),
        ms(percentile(&gaps, 0.99)),
        level.errors
    );
    if let Some(e) = &level.first_error {
        println!("      first error: {e}");
    }
}
