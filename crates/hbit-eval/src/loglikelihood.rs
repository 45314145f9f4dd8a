//! `log p(continuation | context)` on the engine, as lm-evaluation-harness's `loglikelihood`
//! request computes it: the sum of the continuation tokens' log-probabilities, and whether each
//! continuation token is the argmax at its position ("greedy", LAMBADA's accuracy).
//!
//! Requests that share a context (a multiple-choice document's choices) share its prefill: the
//! context runs once, its KV cache is cloned for each continuation, and all continuations of a
//! batch run in one batched forward call. The engine's cached forward equals a full recomputation
//! bit for bit, so sharing changes speed, not scores.

use hbit_engine::{Engine, KvBits, KvCache, Logits};
use tokenizers::Tokenizer;

use crate::error::{EvalError, Result};
use crate::ppl::log_prob;

/// One scoring request in token ids. `context` holds everything before the continuation,
/// including any prefix token (BOS / end-of-text); it must not be empty, since its last token's
/// logits predict the continuation's first token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Σ ln p(continuation token | everything before it), nats.
    pub logprob: f64,
    /// Every continuation token is the (first) argmax of its position's logits.
    pub greedy: bool,
}

/// Splits `context + continuation` into token ids as lm-evaluation-harness's `_encode_pair`
/// does: trailing whitespace of the context moves to the front of the continuation, the whole string
/// is encoded once and the context alone once, and the continuation is the whole encoding's
/// tokens after the context's (so word-boundary merges match how the model saw whole text).
pub fn encode_pair(
    tokenizer: &Tokenizer,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let trimmed = context.trim_end(); // Python's rstrip(): any trailing whitespace
    let moved = &context[trimmed.len()..];
    let continuation = format!("{moved}{continuation}");
    let encode = |s: &str| -> Result<Vec<u32>> {
        Ok(tokenizer
            .encode(s, false)
            .map_err(|e| EvalError::Tokenizer(format!("encoding {s:?}: {e}")))?
            .get_ids()
            .to_vec())
    };
    let whole = encode(&format!("{trimmed}{continuation}"))?;
    let context_ids = if trimmed.is_empty() {
        Vec::new()
    } else {
        encode(trimmed)?
    };
    let continuation_ids = whole.get(context_ids.len()..).unwrap_or_default().to_vec();
    if continuation_ids.is_empty() {
        return Err(EvalError::Input(format!(
            "continuation {continuation:?} after context {trimmed:?} encodes to no tokens"
        )));
    }
    Ok((context_ids, continuation_ids))
}

/// The context tokens a request is scored with: lm-evaluation-harness keeps the last
/// `max_len + 1` tokens of context + continuation, so a long context loses its start.
fn kept_context(request: &Request, max_len: usize) -> Result<&[u32]> {
    let (ctx, cont) = (&request.context, &request.continuation);
    if cont.is_empty() {
        return Err(EvalError::Input(
            "a request has an empty continuation".into(),
        ));
    }
    if ctx.is_empty() {
        return Err(EvalError::Input(
            "a request has an empty context: give it a prefix token to condition on".into(),
        ));
    }
    if cont.len() > max_len {
        return Err(EvalError::Input(format!(
            "a continuation of {} tokens exceeds the model's context of {max_len}",
            cont.len()
        )));
    }
    // Inputs are context + continuation minus its last token, at most max_len of them.
    let inputs = ctx.len() + cont.len() - 1;
    Ok(&ctx[inputs.saturating_sub(max_len)..])
}

/// A continuation longer than the model's context is scored in pieces of half the context, each
/// after everything before it (truncated on the left like any request), so every token keeps at
/// least half a window of history; the pieces' scores add up. Returns the pieces and, for each
/// piece, the index of the request it belongs to.
fn split_long(requests: &[Request], max_len: usize) -> (Vec<Request>, Vec<usize>) {
    let piece = (max_len / 2).max(1);
    let mut pieces = Vec::with_capacity(requests.len());
    let mut owner = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        if r.continuation.len() <= max_len {
            pieces.push(r.clone());
            owner.push(i);
            continue;
        }
        for start in (0..r.continuation.len()).step_by(piece) {
            let end = (start + piece).min(r.continuation.len());
            let mut context = r.context.clone();
            context.extend_from_slice(&r.continuation[..start]);
            pieces.push(Request {
                context,
                continuation: r.continuation[start..end].to_vec(),
            });
            owner.push(i);
        }
    }
    (pieces, owner)
}

/// First index of the largest logit (torch.argmax's tie rule).
fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best
}

/// Scores every request (see module docs). Consecutive requests with the same context share
/// one prefill; a continuation longer than the context is scored in pieces ([`split_long`]). `batch_tokens` bounds the tokens of one batched forward call (contexts plus
/// continuations); a group larger than that still runs whole. `progress(done, total)` counts
/// requests.
pub fn score_requests(
    engine: &Engine,
    requests: &[Request],
    kv: KvBits,
    batch_tokens: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Score>> {
    if batch_tokens == 0 {
        return Err(EvalError::Input("batch_tokens must be at least 1".into()));
    }
    let max_len = engine.config().max_position_embeddings;
    let (pieces, owner) = split_long(requests, max_len);
    if pieces.len() != requests.len() {
        let scores = score_pieces(engine, &pieces, kv, batch_tokens, &mut |done, _| {
            progress(
                owner.get(done.saturating_sub(1)).map_or(0, |&o| o + 1),
                requests.len(),
            )
        })?;
        let mut merged = vec![
            Score {
                logprob: 0.0,
                greedy: true,
            };
            requests.len()
        ];
        for (s, &o) in scores.iter().zip(&owner) {
            merged[o].logprob += s.logprob;
            merged[o].greedy &= s.greedy;
        }
        return Ok(merged);
    }
    score_pieces(engine, requests, kv, batch_tokens, progress)
}

/// [`score_requests`] for requests whose continuations fit the context.
fn score_pieces(
    engine: &Engine,
    requests: &[Request],
    kv: KvBits,
    batch_tokens: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Score>> {
    let max_len = engine.config().max_position_embeddings;
    let vocab = engine.config().vocab_size;
    let contexts = requests
        .iter()
        .map(|r| kept_context(r, max_len))
        .collect::<Result<Vec<_>>>()?;
    // Groups of consecutive requests with equal contexts: (context, first request, end).
    let mut groups: Vec<(&[u32], usize, usize)> = Vec::new();
    for (i, ctx) in contexts.iter().enumerate() {
        match groups.last_mut() {
            Some((c, _, end)) if c == ctx => *end = i + 1,
            _ => groups.push((ctx, i, i + 1)),
        }
    }
    let mut scores = Vec::with_capacity(requests.len());
    let mut next = 0;
    while next < groups.len() {
        // Take groups while they fit the token budget (at least one).
        let mut end = next;
        let mut tokens = 0;
        while end < groups.len() {
            let (ctx, a, b) = groups[end];
            let group_tokens = ctx.len()
                + requests[a..b]
                    .iter()
                    .map(|r| r.continuation.len())
                    .sum::<usize>();
            if end > next && tokens + group_tokens > batch_tokens {
                break;
            }
            tokens += group_tokens;
            end += 1;
        }
        let batch = &groups[next..end];
        // 1. Each context once; its last row predicts every continuation's first token.
        let mut caches: Vec<KvCache> = batch.iter().map(|_| engine.new_cache(kv)).collect();
        let context_tokens: Vec<&[u32]> = batch.iter().map(|g| g.0).collect();
        let first_logits = {
            let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
            engine.forward(&mut refs, &context_tokens, Logits::Last)?
        };
        // 2. Every continuation but its last token, on a copy of its context's cache.
        let mut rest_caches = Vec::new();
        let mut rest_tokens: Vec<&[u32]> = Vec::new();
        for (g, &(_, a, b)) in batch.iter().enumerate() {
            for r in &requests[a..b] {
                if r.continuation.len() > 1 {
                    rest_caches.push(caches[g].clone());
                    rest_tokens.push(&r.continuation[..r.continuation.len() - 1]);
                }
            }
        }
        let mut rest_logits = if rest_tokens.is_empty() {
            Vec::new()
        } else {
            let mut refs: Vec<&mut KvCache> = rest_caches.iter_mut().collect();
            engine.forward(&mut refs, &rest_tokens, Logits::All)?
        }
        .into_iter();
        // 3. Score in request order.
        for (g, &(_, a, b)) in batch.iter().enumerate() {
            for r in &requests[a..b] {
                let rest = if r.continuation.len() > 1 {
                    rest_logits.next().unwrap_or_default()
                } else {
                    Vec::new()
                };
                let rows =
                    std::iter::once(first_logits[g].as_slice()).chain(rest.chunks_exact(vocab));
                let mut score = Score {
                    logprob: 0.0,
                    greedy: true,
                };
                for (row, &token) in rows.zip(&r.continuation) {
                    score.logprob += log_prob(row, token);
                    score.greedy &= argmax(row) == token as usize;
                }
                scores.push(score);
            }
        }
        next = end;
        progress(scores.len(), requests.len());
    }
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(context: &[u32], continuation: &[u32]) -> Request {
        Request {
            context: context.to_vec(),
            continuation: continuation.to_vec(),
        }
    }

    #[test]
    fn long_contexts_lose_their_start_as_lm_eval_truncates() {
        // max_len 4: inputs = context + continuation[..-1] keep their last 4 tokens.
        let r = request(&[1, 2, 3, 4, 5], &[6, 7]);
        assert_eq!(kept_context(&r, 4).unwrap(), &[3, 4, 5]);
        let short = request(&[1, 2], &[3]);
        assert_eq!(kept_context(&short, 4).unwrap(), &[1, 2]);
        // The continuation alone fills the window: one context token stays.
        let full = request(&[1, 2, 3], &[4, 5, 6, 7]);
        assert_eq!(kept_context(&full, 4).unwrap(), &[3]);
    }

    #[test]
    fn bad_requests_are_errors_that_say_why() {
        let msg = |r: Request| kept_context(&r, 4).unwrap_err().to_string();
        assert!(msg(request(&[1], &[])).contains("empty continuation"));
        assert!(msg(request(&[], &[1])).contains("empty context"));
        assert!(msg(request(&[1], &[1, 2, 3, 4, 5])).contains("exceeds the model's context of 4"));
    }

    #[test]
    fn long_continuations_split_into_half_context_pieces_after_their_history() {
        let short = request(&[9], &[1, 2]);
        let long = request(&[9], &[1, 2, 3, 4, 5]);
        let (pieces, owner) = split_long(&[short.clone(), long], 4);
        assert_eq!(owner, vec![0, 1, 1, 1]);
        assert_eq!(pieces[0], short);
        assert_eq!(pieces[1], request(&[9], &[1, 2]));
        assert_eq!(pieces[2], request(&[9, 1, 2], &[3, 4]));
        assert_eq!(pieces[3], request(&[9, 1, 2, 3, 4], &[5]));
    }

    #[test]
    fn argmax_takes_the_first_of_equal_maxima() {
        assert_eq!(argmax(&[0.0, 2.0, 2.0, 1.0]), 1);
        assert_eq!(argmax(&[-1.0]), 0);
    }
}
