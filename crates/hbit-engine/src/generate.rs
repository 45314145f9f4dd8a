//! Batched generation: every prompt prefilled in one forward call (GEMM over all prompt tokens),
//! then one decode call per step for every unfinished sequence (GEMM over the batch), so
//! throughput grows with the batch. Text streams out as it becomes valid UTF-8, holding back
//! any tail that could still become a stop string ([`crate::text_stream`]).

use std::time::Instant;

use tokenizers::Tokenizer;

use crate::error::{EngineError, Result};
use crate::forward::{Engine, Logits};
use crate::kv::{KvBits, KvCache};
use crate::sample::{Sampler, SamplingParams};
use crate::text_stream::TextStream;

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    /// Generation stops before the first occurrence of any of these in the output text.
    pub stop: Vec<String>,
    /// Token ids that end a sequence (end of text); not part of the output.
    pub end_tokens: Vec<u32>,
    pub sampling: SamplingParams,
    pub kv_bits: KvBits,
}

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// `max_tokens` reached.
    Length,
    /// A stop string appeared.
    Stop,
    /// An end-of-text token was sampled.
    EndOfText,
    /// The context (max_position_embeddings) is full.
    Context,
}

impl Finish {
    pub fn name(self) -> &'static str {
        match self {
            Finish::Length => "length",
            Finish::Stop => "stop",
            Finish::EndOfText => "end_of_text",
            Finish::Context => "context",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated token ids (the end-of-text token excluded).
    pub tokens: Vec<u32>,
    /// Generated text, cut before a stop string.
    pub text: String,
    pub finish: Finish,
    pub prompt_tokens: usize,
}

/// Timing of one batched generation.
#[derive(Debug, Clone, Copy, Default)]
pub struct GenerateStats {
    pub prefill_tokens: usize,
    pub prefill_seconds: f64,
    /// Tokens produced by decode steps (the first token of each sequence comes from prefill).
    pub decode_tokens: usize,
    pub decode_seconds: f64,
    /// Bytes held by the KV caches at the end.
    pub kv_bytes: usize,
}

/// Generates a continuation of every prompt, batched. `on_text(i, piece)` receives each
/// sequence's text as it becomes final.
pub fn generate(
    engine: &Engine,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    on_text: &mut dyn FnMut(usize, &str),
) -> Result<(Vec<Generation>, GenerateStats)> {
    options.sampling.validate()?;
    if options.stop.iter().any(String::is_empty) {
        return Err(EngineError::Input("stop strings must not be empty".into()));
    }
    let context = engine.config().max_position_embeddings;
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(EngineError::Input(format!("prompt {i} is empty")));
        }
        if p.len() > context {
            return Err(EngineError::Input(format!(
                "prompt {i} has {} tokens, more than the model's context of {context} (max_position_embeddings)",
                p.len()
            )));
        }
    }
    let n = prompts.len();
    // Each cache sized once for its prompt and answer: no history copied as it grows.
    let mut caches: Vec<KvCache> = prompts
        .iter()
        .map(|p| {
            let mut cache = engine.new_cache(options.kv_bits);
            cache.reserve(p.len().saturating_add(options.max_tokens));
            cache
        })
        .collect();
    let mut samplers: Vec<Sampler> = (0..n)
        .map(|i| Sampler::new(options.sampling.clone(), i as u64))
        .collect();
    let mut streams: Vec<TextStream> = (0..n).map(|_| TextStream::default()).collect();
    let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut finish: Vec<Option<Finish>> = vec![None; n];
    let mut stats = GenerateStats {
        prefill_tokens: prompts.iter().map(Vec::len).sum(),
        ..Default::default()
    };

    let start = Instant::now();
    let lists: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
    let mut logits = engine.forward(&mut refs, &lists, Logits::Last)?;
    stats.prefill_seconds = start.elapsed().as_secs_f64();
    let mut active: Vec<usize> = (0..n).collect();
    if options.max_tokens == 0 {
        finish.iter_mut().for_each(|f| *f = Some(Finish::Length));
        active.clear();
    }
    let decode_start = Instant::now();
    let mut first_step = true;
    while !active.is_empty() {
        let mut next_tokens = Vec::with_capacity(active.len());
        for (j, &i) in active.iter().enumerate() {
            let token = samplers[i].sample(&logits[j], &prompts[i], &outputs[i]);
            if options.end_tokens.contains(&token) {
                finish[i] = Some(Finish::EndOfText);
                continue;
            }
            outputs[i].push(token);
            let (piece, stopped) = streams[i].update(tokenizer, &outputs[i], &options.stop)?;
            if !piece.is_empty() {
                on_text(i, &piece);
            }
            if stopped {
                finish[i] = Some(Finish::Stop);
            } else if outputs[i].len() >= options.max_tokens {
                finish[i] = Some(Finish::Length);
            } else if prompts[i].len() + outputs[i].len() > context {
                // The token just sampled cannot be fed: every position is used.
                finish[i] = Some(Finish::Context);
            } else {
                next_tokens.push((i, token));
            }
        }
        if !first_step {
            stats.decode_tokens += active.len();
        }
        first_step = false;
        active = next_tokens.iter().map(|&(i, _)| i).collect();
        if active.is_empty() {
            break;
        }
        let step: Vec<[u32; 1]> = next_tokens.iter().map(|&(_, t)| [t]).collect();
        let lists: Vec<&[u32]> = step.iter().map(|t| t.as_slice()).collect();
        let mut refs: Vec<&mut KvCache> = caches
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| active.contains(i))
            .map(|(_, c)| c)
            .collect();
        logits = engine.forward(&mut refs, &lists, Logits::Last)?;
    }
    stats.decode_seconds = decode_start.elapsed().as_secs_f64();
    stats.kv_bytes = caches.iter().map(KvCache::bytes).sum();
    let mut results = Vec::with_capacity(n);
    for i in 0..n {
        let tail = streams[i].finish();
        if !tail.is_empty() {
            on_text(i, &tail);
        }
        results.push(Generation {
            tokens: std::mem::take(&mut outputs[i]),
            text: streams[i].take_text(),
            finish: finish[i].unwrap_or(Finish::Length),
            prompt_tokens: prompts[i].len(),
        });
    }
    Ok((results, stats))
}
