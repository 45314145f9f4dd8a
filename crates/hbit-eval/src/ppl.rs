//! Perplexity on the inference engine, as lm-evaluation-harness's rolling loglikelihood
//! computes it: the text's tokens follow one prefix token (end-of-text / BOS) so the first token
//! is scored too, and every token is scored exactly once. The text is scored in chunks of
//! `stride` tokens; each chunk is predicted by one forward pass over a window of at most
//! `context` tokens ending with the chunk, so every scored token sees at least
//! `context - stride + 1` tokens before it (all of them while the text is shorter than the
//! window). `stride = context` (the default of `hbit eval ppl`) is lm-evaluation-harness's
//! rolling windows, which overlap by the one token that conditions each window's first target;
//! a smaller stride trades time for context.

use hbit_engine::EngineError;
use hbit_engine::KvBits;
use hbit_engine::{Engine, Logits};

type Result<T> = std::result::Result<T, EngineError>;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perplexity {
    /// Tokens scored (every token of the text).
    pub tokens: usize,
    /// Σ −ln p(token | context), nats.
    pub nll_sum: f64,
    pub windows: usize,
}

impl Perplexity {
    pub fn mean_nll(&self) -> f64 {
        self.nll_sum / self.tokens.max(1) as f64
    }

    pub fn perplexity(&self) -> f64 {
        self.mean_nll().exp()
    }

    /// Bits per byte of the scored text, `bytes` long in UTF-8 ([`bits_per_byte`]).
    pub fn bits_per_byte(&self, bytes: usize) -> f64 {
        bits_per_byte(self.nll_sum, bytes as u64)
    }
}

/// Bits per byte: a total negative log-likelihood `nll_nats` (natural log) in bits, over the
/// `bytes` UTF-8 bytes of the text it scored, so models with different tokenizers compare.
/// NaN for no bytes.
pub fn bits_per_byte(nll_nats: f64, bytes: u64) -> f64 {
    if bytes == 0 {
        return f64::NAN;
    }
    nll_nats / std::f64::consts::LN_2 / bytes as f64
}

/// A window length each method accepts: at least `min` tokens, at most the model's positions.
fn check_context(engine: &Engine, context: usize, min: usize) -> Result<()> {
    let max = engine.config().max_position_embeddings;
    if context < min || context > max {
        return Err(EngineError::Input(format!(
            "perplexity: context {context} must be in {min}..={max} (max_position_embeddings)"
        )));
    }
    Ok(())
}

/// `ln softmax(logits)[target]`, computed stably in f64.
pub fn log_prob(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    logits[target as usize] as f64 - max - sum.ln()
}

/// Rolling perplexity of `tokens` after `prefix` (see module docs). `on_window(done, total)`
/// reports progress.
pub fn perplexity(
    engine: &Engine,
    prefix: u32,
    tokens: &[u32],
    context: usize,
    stride: usize,
    kv: KvBits,
    on_window: &mut dyn FnMut(usize, usize),
) -> Result<Perplexity> {
    if tokens.is_empty() {
        return Err(EngineError::Input(
            "perplexity: the text has no tokens".into(),
        ));
    }
    check_context(engine, context, 1)?;
    if stride == 0 || stride > context {
        return Err(EngineError::Input(format!(
            "perplexity: stride {stride} must be in 1..={context} (the context)"
        )));
    }
    // seq[0] is the prefix; seq[i] for i >= 1 is tokens[i - 1], scored from seq[..i].
    let mut seq = Vec::with_capacity(tokens.len() + 1);
    seq.push(prefix);
    seq.extend_from_slice(tokens);
    let n = seq.len();
    let total = (n - 1).div_ceil(stride);
    let mut result = Perplexity {
        tokens: 0,
        nll_sum: 0.0,
        windows: total,
    };
    let v = engine.config().vocab_size;
    for (w, first) in (1..n).step_by(stride).enumerate() {
        // Targets first..last, predicted by the window seq[start..last - 1] of at most `context`
        // tokens (row r predicts seq[start + r + 1]); start <= first - 1 as stride <= context.
        let last = (first + stride).min(n);
        let start = (last - 1).saturating_sub(context);
        let mut cache = engine.new_cache(kv);
        let logits = engine
            .forward(&mut [&mut cache], &[&seq[start..last - 1]], Logits::All)?
            .remove(0);
        for (target, &token) in seq.iter().enumerate().take(last).skip(first) {
            let row = target - 1 - start;
            result.nll_sum -= log_prob(&logits[row * v..(row + 1) * v], token);
            result.tokens += 1;
        }
        on_window(w + 1, total);
    }
    Ok(result)
}

/// Perplexity as llama.cpp's `llama-perplexity` computes it by default, to compare numbers with
/// llama.cpp and bitnet.cpp: the text's tokens, after `bos` when the model adds one, are cut into
/// `n_ctx`-token chunks (a last partial chunk is dropped); each chunk's first token becomes `bos`
/// (when there is one) and only its second half is scored: row `j` for `n_ctx/2 <= j < n_ctx - 1`
/// predicts token `j + 1`.
pub fn perplexity_llama_cpp(
    engine: &Engine,
    bos: Option<u32>,
    tokens: &[u32],
    n_ctx: usize,
    kv: KvBits,
    on_window: &mut dyn FnMut(usize, usize),
) -> Result<Perplexity> {
    check_context(engine, n_ctx, 4)?;
    let mut seq = Vec::with_capacity(tokens.len() + 1);
    seq.extend(bos);
    seq.extend_from_slice(tokens);
    let chunks = seq.len() / n_ctx;
    if chunks < 2 {
        return Err(EngineError::Input(format!(
            "perplexity: {} tokens make fewer than two chunks of {n_ctx} (llama.cpp's minimum)",
            seq.len()
        )));
    }
    let v = engine.config().vocab_size;
    let first = n_ctx / 2;
    let mut result = Perplexity {
        tokens: 0,
        nll_sum: 0.0,
        windows: chunks,
    };
    for c in 0..chunks {
        let mut chunk = seq[c * n_ctx..(c + 1) * n_ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        let mut cache = engine.new_cache(kv);
        let logits = engine
            .forward(&mut [&mut cache], &[&chunk], Logits::All)?
            .remove(0);
        for j in first..n_ctx - 1 {
            result.nll_sum -= log_prob(&logits[j * v..(j + 1) * v], chunk[j + 1]);
            result.tokens += 1;
        }
        on_window(c + 1, chunks);
    }
    Ok(result)
}

/// Perplexity over independent, non-overlapping windows of `context` tokens and no prefix, as a
/// plain PyTorch evaluation loop computes it (`model(ids[i:i+n][:-1])` against `ids[i+1:i+n]`):
/// the text's tokens are cut into windows of `context` (the last may be shorter); each window's
/// first token is context only, the others are scored from the window's earlier tokens. Token
/// `i` of the text is scored exactly when [`window_scores`]`(i, context, tokens.len())`.
pub fn perplexity_windows(
    engine: &Engine,
    tokens: &[u32],
    context: usize,
    kv: KvBits,
    on_window: &mut dyn FnMut(usize, usize),
) -> Result<Perplexity> {
    check_context(engine, context, 2)?;
    if tokens.len() < 2 {
        return Err(EngineError::Input(format!(
            "perplexity: {} tokens leave nothing to score after a window's first",
            tokens.len()
        )));
    }
    let windows: Vec<&[u32]> = tokens.chunks(context).filter(|w| w.len() >= 2).collect();
    let v = engine.config().vocab_size;
    let mut result = Perplexity {
        tokens: 0,
        nll_sum: 0.0,
        windows: windows.len(),
    };
    for (w, window) in windows.iter().enumerate() {
        let mut cache = engine.new_cache(kv);
        let logits = engine
            .forward(
                &mut [&mut cache],
                &[&window[..window.len() - 1]],
                Logits::All,
            )?
            .remove(0);
        for (row, &target) in window[1..].iter().enumerate() {
            result.nll_sum -= log_prob(&logits[row * v..(row + 1) * v], target);
            result.tokens += 1;
        }
        on_window(w + 1, windows.len());
    }
    Ok(result)
}

/// Whether [`perplexity_windows`] scores token `i` of the text: all but each window's first
/// (and a lone last token, which starts a window of one).
pub fn window_scores(i: usize, context: usize, tokens: usize) -> bool {
    !i.is_multiple_of(context) && i < tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_per_byte_by_hand() {
        // Four tokens, each one of 256 equally likely: 4 · 8 = 32 bits. Over 8 bytes of text
        // that is 4 bits per byte; over 32 bytes, 1.
        let nll = 4.0 * 256f64.ln();
        assert!((bits_per_byte(nll, 8) - 4.0).abs() < 1e-12);
        assert!((bits_per_byte(nll, 32) - 1.0).abs() < 1e-12);
        // Probability 1/2 per token, 3 tokens over "héllo" (6 bytes): 3 bits / 6 bytes.
        let p = Perplexity {
            tokens: 3,
            nll_sum: 3.0 * 2f64.ln(),
            windows: 1,
        };
        assert!((p.bits_per_byte("héllo".len()) - 0.5).abs() < 1e-12);
        assert!(bits_per_byte(1.0, 0).is_nan());
    }

    #[test]
    fn log_prob_known_answers() {
        // softmax([0, ln 3]) = [1/4, 3/4].
        let l = [0.0, 3f32.ln()];
        assert!((log_prob(&l, 0) - 0.25f64.ln()).abs() < 1e-7);
        assert!((log_prob(&l, 1) - 0.75f64.ln()).abs() < 1e-7);
        // Shift invariance and no overflow at large logits.
        let big = [1000.0, 1000.0 + 3f32.ln()];
        assert!((log_prob(&big, 1) - 0.75f64.ln()).abs() < 1e-4);
    }
}
