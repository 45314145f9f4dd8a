//! Next-token sampling: repetition penalty (CTRL / HF convention), presence and frequency
//! penalties (OpenAI convention, over the generated tokens), temperature, top-k, top-p
//! (nucleus), from a seeded generator so a seed reproduces a generation exactly. Temperature 0
//! is greedy (argmax, lowest id on ties).

use hbit_model::rng::SplitMix64;

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy; otherwise logits are divided by it.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p (1 = off).
    pub top_p: f32,
    /// Above 1, discourages tokens already in the context: positive logits divided, negative
    /// ones multiplied (1 = off).
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token already generated (0 = off).
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated (0 = off).
    pub frequency_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(EngineError::Input(format!(
                "sampling: temperature must be finite and >= 0, found {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(EngineError::Input(format!(
                "sampling: top-p must be in (0, 1], found {}",
                self.top_p
            )));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(EngineError::Input(format!(
                "sampling: repetition penalty must be finite and > 0, found {}",
                self.repetition_penalty
            )));
        }
        for (name, v) in [
            ("presence penalty", self.presence_penalty),
            ("frequency penalty", self.frequency_penalty),
        ] {
            if !(v.is_finite() && (-2.0..=2.0).contains(&v)) {
                return Err(EngineError::Input(format!(
                    "sampling: {name} must be in [-2, 2], found {v}"
                )));
            }
        }
        Ok(())
    }

    /// Whether sampling reads the tokens so far (any penalty on).
    pub fn reads_context(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
    }
}

/// One sequence's sampler.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
}

impl Sampler {
    /// `stream` separates the random streams of sequences sampled together.
    pub fn new(params: SamplingParams, stream: u64) -> Sampler {
        let seed = params.seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Sampler {
            params,
            rng: SplitMix64::new(seed),
        }
    }

    /// Picks the next token from `logits` `[V]` given the sequence so far: the `prompt` and the
    /// tokens `generated` after it.
    pub fn sample(&mut self, logits: &[f32], prompt: &[u32], generated: &[u32]) -> u32 {
        let p = &self.params;
        let mut logits = logits.to_vec();
        if p.repetition_penalty != 1.0 {
            let mut seen = vec![false; logits.len()];
            for &t in prompt.iter().chain(generated) {
                if let Some(s) = seen.get_mut(t as usize) {
                    *s = true;
                }
            }
            for (l, _) in logits.iter_mut().zip(&seen).filter(|(_, s)| **s) {
                *l = if *l > 0.0 {
                    *l / p.repetition_penalty
                } else {
                    *l * p.repetition_penalty
                };
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            // logit[t] -= count[t] · frequency + (count[t] > 0) · presence
            let mut count = vec![0u32; logits.len()];
            for &t in generated {
                if let Some(c) = count.get_mut(t as usize) {
                    *c += 1;
                }
            }
            for (l, &c) in logits.iter_mut().zip(&count).filter(|(_, c)| **c > 0) {
                *l -= c as f32 * p.frequency_penalty + p.presence_penalty;
            }
        }
        if p.temperature == 0.0 {
            return argmax(&logits);
        }
        // Candidates by descending logit (ties: lower id first), cut by top-k.
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&a, &b| {
            logits[b as usize]
                .total_cmp(&logits[a as usize])
                .then(a.cmp(&b))
        });
        if p.top_k > 0 {
            order.truncate(p.top_k);
        }
        let max = logits[order[0] as usize];
        let mut probs: Vec<f64> = order
            .iter()
            .map(|&t| (((logits[t as usize] - max) / p.temperature) as f64).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
        if p.top_p < 1.0 {
            let mut cumulative = 0.0;
            let keep = probs
                .iter()
                .position(|q| {
                    cumulative += q;
                    cumulative >= p.top_p as f64
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            order.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.rng.next_f64() * total;
        for (&t, &q) in order.iter().zip(&probs) {
            r -= q;
            if r < 0.0 {
                return t;
            }
        }
        *order.last().expect("at least one candidate")
    }
}

/// Index of the largest value; the lowest index on ties.
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: usize, top_p: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            ..Default::default()
        }
    }

    #[test]
    fn greedy_is_argmax_and_penalty_applies() {
        let logits = [1.0, 3.0, 3.0, -1.0];
        let mut s = Sampler::new(SamplingParams::default(), 0);
        assert_eq!(s.sample(&logits, &[], &[]), 1); // tie -> lower id
        let mut s = Sampler::new(
            SamplingParams {
                repetition_penalty: 2.0,
                ..Default::default()
            },
            0,
        );
        // 1 was seen: 3.0 / 2 = 1.5 < 3.0 at id 2.
        assert_eq!(s.sample(&logits, &[1], &[]), 2);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = [0.5, 2.0, 1.9, 0.0];
        for p in [params(1.0, 1, 1.0), params(1.0, 0, 1e-6)] {
            let mut s = Sampler::new(p, 3);
            for _ in 0..20 {
                assert_eq!(s.sample(&logits, &[], &[]), 1);
            }
        }
    }

    #[test]
    fn sampling_follows_the_softmax_and_reproduces_with_a_seed() {
        // p = softmax([0, ln 3]) = [0.25, 0.75].
        let logits = [0.0, 3f32.ln()];
        let mut s = Sampler::new(params(1.0, 0, 1.0), 42);
        let draws: Vec<u32> = (0..4000).map(|_| s.sample(&logits, &[], &[])).collect();
        let share = draws.iter().filter(|&&t| t == 1).count() as f64 / 4000.0;
        assert!((share - 0.75).abs() < 0.03, "{share}");
        let mut again = Sampler::new(params(1.0, 0, 1.0), 42);
        let replay: Vec<u32> = (0..4000).map(|_| again.sample(&logits, &[], &[])).collect();
        assert_eq!(draws, replay);
        let mut other = Sampler::new(params(1.0, 0, 1.0), 43);
        let different: Vec<u32> = (0..4000).map(|_| other.sample(&logits, &[], &[])).collect();
        assert_ne!(draws, different);
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // p = [0.5, 0.3, 0.2]: top-p 0.7 keeps ids 0 and 1 only.
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let mut s = Sampler::new(params(1.0, 0, 0.7), 1);
        let draws: Vec<u32> = (0..2000).map(|_| s.sample(&logits, &[], &[])).collect();
        assert!(!draws.contains(&2));
        assert!(draws.contains(&1));
    }

    #[test]
    fn presence_and_frequency_penalties_count_generated_tokens_only() {
        let logits = [2.0, 1.5, 0.5];
        let penalized = |presence, frequency| SamplingParams {
            presence_penalty: presence,
            frequency_penalty: frequency,
            ..Default::default()
        };
        // Token 0 in the prompt only: no penalty, still the argmax.
        let mut s = Sampler::new(penalized(1.0, 0.0), 0);
        assert_eq!(s.sample(&logits, &[0, 0], &[]), 0);
        // Generated once: 2.0 − 1.0 = 1.0 < 1.5.
        assert_eq!(s.sample(&logits, &[], &[0]), 1);
        // Frequency 0.2, generated twice: 2.0 − 0.4 = 1.6 > 1.5; three times: 1.4 < 1.5.
        let mut s = Sampler::new(penalized(0.0, 0.2), 0);
        assert_eq!(s.sample(&logits, &[], &[0, 0]), 0);
        assert_eq!(s.sample(&logits, &[], &[0, 0, 0]), 1);
        // A negative presence penalty favours what was said: 0.5 + 1.8 > 2.0.
        let mut s = Sampler::new(penalized(-1.8, 0.0), 0);
        assert_eq!(s.sample(&logits, &[], &[2]), 2);
    }

    #[test]
    fn bad_params_are_refused() {
        assert!(params(-1.0, 0, 1.0).validate().is_err());
        assert!(params(1.0, 0, 0.0).validate().is_err());
        assert!(params(f32::NAN, 0, 1.0).validate().is_err());
        assert!(params(0.7, 40, 0.9).validate().is_ok());
        let presence = SamplingParams {
            presence_penalty: 2.5,
            ..Default::default()
        };
        assert!(presence.validate().is_err());
    }
}
