//! Continuous batching. One engine thread owns the model and runs a loop of engine steps; each
//! step takes in new requests, drops finished and abandoned ones, and runs one forward call over
//! every running sequence: a decode token for each sequence that is generating, and a chunk of
//! prompt for those still prefilling. While sequences generate, the chunk is sized from measured
//! step times so that a step with prefill takes about `step_time_factor` decode steps (a long
//! new prompt does not stall the running streams), more when many requests wait for their first
//! token per running stream; with nothing generating, it is the whole `prefill_chunk`.
//!
//! Admission: at most `max_seqs` sequences run, their KV caches reserved up to prompt +
//! `max_tokens` within a byte budget; up to `max_queue` more wait in arrival order; beyond that
//! a request is refused at once. A request whose receiver is dropped (the client went away) is
//! freed at the next step.
//!
//! Batching changes no result: each sequence's logits are those of the sequence alone (the
//! engine's batched and chunked forward calls are exact, see its parity tests), and each
//! sequence samples from its own seeded generator.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use hbit_engine::{Engine, Finish, KvBits, KvCache, Logits, Sampler, SamplingParams, TextStream};
use tokenizers::Tokenizer;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::metrics::Metrics;
use crate::prefix_cache::PrefixCache;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Sequences run together at most.
    pub max_seqs: usize,
    /// Requests that may wait for a slot; one more is refused.
    pub max_queue: usize,
    /// Positions a sequence may use (prompt + answer), at most the model's context.
    pub ctx: usize,
    pub kv_bits: KvBits,
    /// Bytes the running sequences' KV caches may reserve in all.
    pub kv_budget_bytes: usize,
    /// Most prompt tokens prefilled per engine step, over all sequences.
    pub prefill_chunk: usize,
    /// While sequences are generating, a step that also prefills aims to take at most this
    /// many times a decode-only step, so prompts that arrive do not stall running streams.
    pub step_time_factor: f64,
    /// Bytes of finished sequences' caches kept for prompt-prefix reuse (0 = off).
    pub prefix_cache_bytes: usize,
}

impl SchedulerConfig {
    /// Defaults for a model: `max_seqs` sequences of a full `ctx` fit the KV budget.
    pub fn for_model(engine: &Engine, max_seqs: usize, ctx: usize, kv_bits: KvBits) -> Self {
        SchedulerConfig {
            max_seqs,
            max_queue: 64,
            ctx,
            kv_bits,
            kv_budget_bytes: max_seqs * KvCache::bytes_for(engine.config(), kv_bits, ctx),
            prefill_chunk: 256,
            step_time_factor: 2.5,
            prefix_cache_bytes: 256 << 20,
        }
    }
}

/// One generation request, tokenized and checked.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// The answer ends before the first of these strings.
    pub stop: Vec<String>,
    /// Token ids that end the answer (end of text / end of turn); not part of it.
    pub end_tokens: Vec<u32>,
    /// Report each token's log-probability and this many alternatives.
    pub logprobs: Option<usize>,
}

/// A token's log-probability under the model (the raw distribution, before penalties,
/// temperature and truncation) and the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens taken from the prefix cache instead of prefilled.
    pub cached_tokens: usize,
}

/// What a request's receiver gets, in order: tokens, then one `Done` (or an `Error`).
#[derive(Debug, Clone)]
pub enum Event {
    /// A generated token and the output text it made final (possibly empty).
    Token {
        token: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// The end: any text held back until now, why it stopped, token counts.
    Done {
        text: String,
        finish: Finish,
        usage: Usage,
    },
    Error(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("the server is busy: {running} running and {waiting} waiting requests (limit {limit}); retry later")]
    QueueFull {
        running: usize,
        waiting: usize,
        limit: usize,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("the engine has stopped")]
    Stopped,
}

struct Submission {
    request: Request,
    events: UnboundedSender<Event>,
    submitted: Instant,
    /// Counts the request in flight until dropped.
    _slot: Slot,
}

/// One unit of the in-flight count, given back when the request ends in any way.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A handle to the engine thread; cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    submit: mpsc::Sender<Submission>,
    in_flight: Arc<AtomicUsize>,
    /// Cleared when the engine thread ends (an engine panic included).
    alive: Arc<AtomicBool>,
    limit: usize,
    vocab_size: usize,
    ctx: usize,
    metrics: Arc<Metrics>,
}

impl Scheduler {
    /// Starts the engine thread (on `threads` cores, default all).
    pub fn start(
        engine: Engine,
        tokenizer: Arc<Tokenizer>,
        config: SchedulerConfig,
        threads: Option<usize>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Scheduler> {
        let (submit, inbox) = mpsc::channel();
        let alive = Arc::new(AtomicBool::new(true));
        let handle = Scheduler {
            submit,
            in_flight: Arc::new(AtomicUsize::new(0)),
            alive: alive.clone(),
            limit: config.max_seqs + config.max_queue,
            vocab_size: engine.config().vocab_size,
            ctx: config.ctx,
            metrics: metrics.clone(),
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.unwrap_or(0))
            .thread_name(|i| format!("hbit-engine-{i}"))
            .build()
            .map_err(std::io::Error::other)?;
        std::thread::Builder::new()
            .name("hbit-scheduler".into())
            .spawn(move || {
                let _alive = AliveGuard(alive);
                pool.install(|| EngineLoop::new(engine, tokenizer, config, metrics).run(inbox))
            })?;
        Ok(handle)
    }

    /// The most positions (prompt + answer) a request may use.
    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// Queues `request`; its events arrive on the receiver. Dropping the receiver cancels it.
    pub fn submit(&self, request: Request) -> Result<UnboundedReceiver<Event>, SubmitError> {
        check_request(&request, self.vocab_size, self.ctx)?;
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .map_err(|_| self.queue_full_error())?;
        let slot = Slot(self.in_flight.clone());
        let (events, receiver) = unbounded_channel();
        self.submit
            .send(Submission {
                request,
                events,
                submitted: Instant::now(),
                _slot: slot,
            })
            .map_err(|_| SubmitError::Stopped)?;
        Ok(receiver)
    }

    /// Requests running or waiting.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Whether a new request would be refused for a full queue now.
    pub fn is_full(&self) -> bool {
        self.in_flight() >= self.limit
    }

    /// The error a refused request gets.
    pub fn queue_full_error(&self) -> SubmitError {
        SubmitError::QueueFull {
            running: self.metrics.running.get(),
            waiting: self.metrics.waiting.get(),
            limit: self.limit,
        }
    }

    /// Whether the engine thread still runs.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

/// Clears the liveness flag when the engine thread ends, by return or by panic.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn check_request(r: &Request, vocab_size: usize, ctx: usize) -> Result<(), SubmitError> {
    let invalid = |m: String| Err(SubmitError::Invalid(m));
    if r.prompt.is_empty() {
        return invalid("the prompt is empty".into());
    }
    if let Some(&bad) = r.prompt.iter().find(|&&t| t as usize >= vocab_size) {
        return invalid(format!(
            "prompt token id {bad} is outside the vocabulary (vocab_size {vocab_size})"
        ));
    }
    if r.max_tokens == 0 {
        return invalid("max_tokens must be at least 1".into());
    }
    if r.prompt.len().saturating_add(r.max_tokens) > ctx {
        return invalid(format!(
            "this model's maximum context length is {ctx} tokens; the prompt has {} tokens and \
             max_tokens asks for {} more",
            r.prompt.len(),
            r.max_tokens
        ));
    }
    if r.stop.iter().any(String::is_empty) {
        return invalid("stop strings must not be empty".into());
    }
    r.sampling.validate().or_else(|e| invalid(e.to_string()))
}

/// A running sequence.
struct Sequence {
    request: Request,
    events: UnboundedSender<Event>,
    cache: KvCache,
    /// Prompt tokens in the cache.
    fed: usize,
    /// The last sampled token, to run next.
    pending: Option<u32>,
    generated: Vec<u32>,
    sampler: Sampler,
    text: TextStream,
    cached_tokens: usize,
    reserved_bytes: usize,
    submitted: Instant,
    last_token: Option<Instant>,
    _slot: Slot,
}

impl Sequence {
    fn prefilling(&self) -> bool {
        self.fed < self.request.prompt.len()
    }
}

struct EngineLoop {
    engine: Engine,
    tokenizer: Arc<Tokenizer>,
    config: SchedulerConfig,
    metrics: Arc<Metrics>,
    waiting: VecDeque<Submission>,
    running: Vec<Sequence>,
    prefix: PrefixCache,
    reserved_bytes: usize,
    clock: StepClock,
}

/// Running estimates of step times, for sizing prefill chunks.
#[derive(Default)]
struct StepClock {
    /// Seconds a decode token adds to a step (from steps that only decode).
    per_decode_token: Option<f64>,
    /// Seconds a prompt token adds to a step.
    per_prefill_token: Option<f64>,
}

impl StepClock {
    /// Weight of a new measurement in the running averages.
    const NEW: f64 = 0.25;

    fn blend(old: Option<f64>, new: f64) -> Option<f64> {
        Some(old.map_or(new, |o| o + Self::NEW * (new - o)))
    }

    /// Records a step of `decode_rows` decode tokens and `prefill_rows` prompt tokens.
    fn record(&mut self, decode_rows: usize, prefill_rows: usize, seconds: f64) {
        if prefill_rows == 0 {
            if decode_rows > 0 {
                let per_token = seconds / decode_rows as f64;
                self.per_decode_token = Self::blend(self.per_decode_token, per_token);
            }
            return;
        }
        let decode_part = decode_rows as f64 * self.per_decode_token.unwrap_or(0.0);
        let per_token = ((seconds - decode_part) / prefill_rows as f64).max(1e-7);
        self.per_prefill_token = Self::blend(self.per_prefill_token, per_token);
    }

    /// Prompt tokens for the next step, up to `cap`. While `decoding` sequences stream, a step
    /// with prefill may last `factor` decode steps, and longer in proportion to how many
    /// sequences (`prefilling`) wait for their first token per stream it delays.
    fn prefill_budget(&self, decoding: usize, prefilling: usize, cap: usize, factor: f64) -> usize {
        /// Fewest prompt tokens a step takes (and the probe size before any estimate).
        const MIN: usize = 16;
        if decoding == 0 {
            return cap;
        }
        match (self.per_decode_token, self.per_prefill_token) {
            (Some(d), Some(p)) => {
                let decode_step = d * decoding as f64;
                let waiting_per_stream = (prefilling as f64 / decoding as f64).max(1.0);
                let room = (factor - 1.0).max(0.0) * decode_step / p * waiting_per_stream;
                (room as usize).clamp(MIN.min(cap), cap)
            }
            _ => (2 * MIN).min(cap),
        }
    }
}

impl EngineLoop {
    fn new(
        engine: Engine,
        tokenizer: Arc<Tokenizer>,
        config: SchedulerConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        EngineLoop {
            prefix: PrefixCache::new(config.prefix_cache_bytes),
            engine,
            tokenizer,
            config,
            metrics,
            waiting: VecDeque::new(),
            running: Vec::new(),
            reserved_bytes: 0,
            clock: StepClock::default(),
        }
    }

    fn run(mut self, inbox: mpsc::Receiver<Submission>) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                self.publish_gauges();
                match inbox.recv() {
                    Ok(s) => self.waiting.push_back(s),
                    Err(_) => return, // every handle dropped: shut down
                }
            }
            while let Ok(s) = inbox.try_recv() {
                self.waiting.push_back(s);
            }
            self.drop_abandoned();
            self.admit();
            self.publish_gauges();
            if !self.running.is_empty() {
                self.step();
            }
        }
    }

    fn publish_gauges(&self) {
        self.metrics.running.set(self.running.len());
        self.metrics.waiting.set(self.waiting.len());
        self.metrics.kv_reserved_bytes.set(self.reserved_bytes);
        self.metrics.prefix_cache_bytes.set(self.prefix.bytes());
    }

    /// Frees the sequences and queue entries whose client has gone.
    fn drop_abandoned(&mut self) {
        let before = self.waiting.len() + self.running.len();
        self.waiting.retain(|s| !s.events.is_closed());
        let mut freed = 0;
        self.running.retain(|s| {
            let gone = s.events.is_closed();
            if gone {
                freed += s.reserved_bytes;
            }
            !gone
        });
        self.reserved_bytes -= freed;
        let dropped = before - self.waiting.len() - self.running.len();
        self.metrics.cancelled.add(dropped as u64);
    }

    /// Moves waiting requests into the batch, in arrival order, while slots and KV budget last.
    fn admit(&mut self) {
        while self.running.len() < self.config.max_seqs {
            let Some(next) = self.waiting.front() else {
                break;
            };
            let r = &next.request;
            let positions = (r.prompt.len() + r.max_tokens).min(self.config.ctx);
            let bytes = KvCache::bytes_for(self.engine.config(), self.config.kv_bits, positions);
            // A request always runs when nothing else does, whatever the budget.
            if self.reserved_bytes + bytes > self.config.kv_budget_bytes && !self.running.is_empty()
            {
                break;
            }
            let s = self.waiting.pop_front().expect("checked above");
            let (mut cache, cached_tokens) = match self.prefix.lookup(&s.request.prompt) {
                Some(hit) => (hit.cache, hit.tokens),
                None => (self.engine.new_cache(self.config.kv_bits), 0),
            };
            cache.reserve(positions);
            self.metrics.prefix_hit_tokens.add(cached_tokens as u64);
            self.metrics
                .prompt_tokens
                .add(s.request.prompt.len() as u64);
            self.reserved_bytes += bytes;
            self.running.push(Sequence {
                // Stream 0, as `hbit generate` samples a single prompt: same seed, same text.
                sampler: Sampler::new(s.request.sampling.clone(), 0),
                request: s.request,
                events: s.events,
                cache,
                fed: cached_tokens,
                pending: None,
                generated: Vec::new(),
                text: TextStream::default(),
                cached_tokens,
                reserved_bytes: bytes,
                submitted: s.submitted,
                last_token: None,
                _slot: s._slot,
            });
        }
    }

    /// One forward call over the batch, then sampling for every sequence that reached a token.
    fn step(&mut self) {
        let started = Instant::now();
        let prefilling = self.running.iter().filter(|s| s.prefilling()).count();
        let mut budget = self.clock.prefill_budget(
            self.running.len() - prefilling,
            prefilling,
            self.config.prefill_chunk.max(1),
            self.config.step_time_factor,
        );
        // (index in `running`, tokens to run)
        let mut plan: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
        for (i, s) in self.running.iter().enumerate() {
            if s.prefilling() {
                if budget == 0 {
                    continue;
                }
                let take = budget.min(s.request.prompt.len() - s.fed);
                budget -= take;
                plan.push((i, s.fed..s.fed + take));
            } else {
                plan.push((i, 0..1));
            }
        }
        let decode_rows = plan
            .iter()
            .filter(|(i, _)| !self.running[*i].prefilling())
            .count();
        let mut caches: Vec<&mut KvCache> = Vec::with_capacity(plan.len());
        let mut lists: Vec<&[u32]> = Vec::with_capacity(plan.len());
        let mut planned = plan.iter().peekable();
        for (i, s) in self.running.iter_mut().enumerate() {
            let Some((_, range)) = planned.next_if(|(j, _)| *j == i) else {
                continue;
            };
            let Sequence {
                cache,
                request,
                pending,
                fed,
                ..
            } = s;
            caches.push(cache);
            lists.push(match *fed < request.prompt.len() {
                true => &request.prompt[range.clone()],
                false => pending.as_slice(),
            });
        }
        let tokens_run: usize = lists.iter().map(|l| l.len()).sum();
        let result = self.engine.forward(&mut caches, &lists, Logits::Last);
        drop(caches);
        self.clock.record(
            decode_rows,
            tokens_run - decode_rows,
            started.elapsed().as_secs_f64(),
        );
        self.metrics.steps.add(1);
        self.metrics.step_tokens.add(tokens_run as u64);
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                // Not expected (inputs are checked on submit): fail this step's sequences.
                let message = format!("engine: {e}");
                let failed: Vec<usize> = plan.iter().map(|(i, _)| *i).collect();
                for &i in failed.iter().rev() {
                    let s = self.running.remove(i);
                    self.reserved_bytes -= s.reserved_bytes;
                    let _ = s.events.send(Event::Error(message.clone()));
                    self.metrics.failed.add(1);
                }
                return;
            }
        };
        let mut finished: Vec<usize> = Vec::new();
        for ((i, range), logits) in plan.iter().zip(&logits) {
            let s = &mut self.running[*i];
            if s.prefilling() {
                s.fed = range.end;
                if s.prefilling() {
                    continue; // more prompt to run before the first token
                }
            }
            if self.sample_one(*i, logits) {
                finished.push(*i);
            }
        }
        for &i in finished.iter().rev() {
            let s = self.running.remove(i);
            self.finish(s);
        }
        self.metrics
            .step_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// Samples sequence `i`'s next token from `logits`; true when the sequence is done.
    fn sample_one(&mut self, i: usize, logits: &[f32]) -> bool {
        let s = &mut self.running[i];
        let token = s.sampler.sample(logits, &s.request.prompt, &s.generated);
        let now = Instant::now();
        match s.last_token {
            None => self
                .metrics
                .time_to_first_token
                .observe((now - s.submitted).as_secs_f64()),
            Some(t) => self
                .metrics
                .inter_token_latency
                .observe((now - t).as_secs_f64()),
        }
        s.last_token = Some(now);
        if s.request.end_tokens.contains(&token) {
            s.pending = None;
            return self.end(i, Finish::EndOfText);
        }
        let logprob = s.request.logprobs.map(|k| token_logprob(logits, token, k));
        s.generated.push(token);
        s.pending = Some(token);
        self.metrics.generated_tokens.add(1);
        let (text, stopped) = match s
            .text
            .update(&self.tokenizer, &s.generated, &s.request.stop)
        {
            Ok(update) => update,
            Err(e) => {
                let _ = s.events.send(Event::Error(e.to_string()));
                self.metrics.failed.add(1);
                return true;
            }
        };
        let _ = s.events.send(Event::Token {
            token,
            text,
            logprob,
        });
        if stopped {
            return self.end(i, Finish::Stop);
        }
        if s.generated.len() >= s.request.max_tokens {
            return self.end(i, Finish::Length);
        }
        if s.request.prompt.len() + s.generated.len() >= self.config.ctx {
            return self.end(i, Finish::Context);
        }
        false
    }

    /// Sends sequence `i`'s `Done` event; true (the sequence is done).
    fn end(&mut self, i: usize, finish: Finish) -> bool {
        let s = &mut self.running[i];
        let usage = Usage {
            prompt_tokens: s.request.prompt.len(),
            completion_tokens: s.generated.len(),
            cached_tokens: s.cached_tokens,
        };
        let text = s.text.finish();
        let _ = s.events.send(Event::Done {
            text,
            finish,
            usage,
        });
        self.metrics.completed.add(1);
        true
    }

    /// Releases a finished sequence's reservation and keeps its cache for prefix reuse.
    fn finish(&mut self, s: Sequence) {
        self.reserved_bytes -= s.reserved_bytes;
        let cached = s.cache.len();
        let mut tokens = s.request.prompt;
        tokens.extend_from_slice(&s.generated);
        tokens.truncate(cached);
        if tokens.len() == cached {
            self.prefix.insert(tokens, s.cache);
        }
    }
}

/// log p(token) under softmax(logits), with the `k` most likely tokens (ties: lower id first).
pub fn token_logprob(logits: &[f32], token: u32, k: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let total: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let log_z = max as f64 + total.ln();
    let lp = |t: usize| (f64::from(logits[t]) - log_z) as f32;
    let mut top: Vec<(u32, f32)> = Vec::new();
    if k > 0 {
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        let k = k.min(order.len());
        let by_logit = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        order.select_nth_unstable_by(k - 1, by_logit);
        order.truncate(k);
        order.sort_by(by_logit);
        top = order.into_iter().map(|t| (t, lp(t as usize))).collect();
    }
    TokenLogprob {
        logprob: lp(token as usize),
        top,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefill_chunks_shrink_to_keep_steps_near_the_factor() {
        let mut clock = StepClock::default();
        // Nothing decoding: the whole cap. Decoding, no estimates yet: a 32-token probe.
        assert_eq!(clock.prefill_budget(0, 3, 256, 2.5), 256);
        assert_eq!(clock.prefill_budget(4, 1, 256, 2.5), 32);
        // 16 decode tokens in 48 ms (3 ms each); 32 prompt tokens added 64 ms to such a step.
        clock.record(16, 0, 0.048);
        clock.record(16, 32, 0.112);
        // (2.5 − 1) · 48 ms / 2 ms = 36 tokens keep a 16-stream step at 2.5 decode steps.
        assert_eq!(clock.prefill_budget(16, 1, 256, 2.5), 36);
        assert_eq!(clock.prefill_budget(16, 1, 20, 2.5), 20);
        // Fewer streams, a shorter decode step: less room. 8 streams: 18 tokens.
        assert_eq!(clock.prefill_budget(8, 1, 256, 2.5), 18);
        // Three sequences waiting per stream delayed: three times the room.
        assert_eq!(clock.prefill_budget(8, 24, 256, 2.5), 54);
        // A very fast decode step still lets 16 prompt tokens through.
        let mut fast = StepClock::default();
        fast.record(1, 0, 0.001);
        fast.record(0, 100, 0.2);
        assert_eq!(fast.prefill_budget(1, 1, 256, 2.5), 16);
    }

    #[test]
    fn logprobs_are_a_log_softmax_with_ranked_alternatives() {
        // softmax([ln 1, ln 2, ln 1]) = [0.25, 0.5, 0.25].
        let logits = [0.0, 2f32.ln(), 0.0];
        let lp = token_logprob(&logits, 0, 2);
        assert!((lp.logprob - 0.25f32.ln()).abs() < 1e-6);
        assert_eq!(lp.top.len(), 2);
        assert_eq!((lp.top[0].0, lp.top[1].0), (1, 0)); // tie between 0 and 2: lower id
        assert!((lp.top[0].1 - 0.5f32.ln()).abs() < 1e-6);
        assert!(token_logprob(&logits, 2, 0).top.is_empty());
        assert_eq!(token_logprob(&logits, 2, 10).top.len(), 3);
    }
}
