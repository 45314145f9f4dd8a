//! Task scoring on a `micro` model against log-likelihoods worked out independently: the
//! training framework's forward over each request's whole text, log-softmax at the continuation
//! positions, summed by hand. Also: sharing a context's prefill and batching change no score,
//! and lm-evaluation-harness's context/continuation split of the text.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use hbit_engine::{Engine, KvBits, Weights};
use hbit_eval::ppl::log_prob;
use hbit_eval::{encode_pair, score_requests, Request, Score};
use hbit_kernels::ActBits;
use hbit_train::config::{preset, Variant};
use hbit_train::tokenizer::train_bpe;
use hbit_train::BitnetModel;

fn setup(variant: Variant, bits: ActBits) -> (BitnetModel, Engine) {
    let config = preset("micro", variant, bits).unwrap();
    let model = BitnetModel::init(&config, 17).unwrap();
    let latent: HashMap<String, Vec<f32>> = model
        .named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    let weights = Weights::from_latent(&config, &latent, false, Path::new("<test>")).unwrap();
    (model, Engine::new(weights))
}

/// The framework's score of one request: inputs are context + continuation without its last
/// token, the last `max_len` of them (lm-evaluation-harness's left truncation); the last
/// `continuation.len()` rows predict the continuation. Returns the score and the smallest gap
/// between the top two logits over those rows (how safe the greedy flag is to compare).
fn framework_score(model: &BitnetModel, r: &Request, max_len: usize) -> (Score, f32) {
    let mut whole = r.context.clone();
    whole.extend_from_slice(&r.continuation);
    let inputs = &whole[..whole.len() - 1];
    let inputs = &inputs[inputs.len().saturating_sub(max_len)..];
    let t = Tensor::from_vec(inputs.to_vec(), (1, inputs.len()), &Device::Cpu).unwrap();
    let logits: Vec<Vec<f32>> = model
        .forward(&t)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    let rows = &logits[logits.len() - r.continuation.len()..];
    let mut score = Score {
        logprob: 0.0,
        greedy: true,
    };
    let mut gap = f32::INFINITY;
    for (row, &token) in rows.iter().zip(&r.continuation) {
        score.logprob += log_prob(row, token);
        let mut sorted = row.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        gap = gap.min(sorted[0] - sorted[1]);
        score.greedy &= row[token as usize] == sorted[0];
    }
    (score, gap)
}

fn requests() -> Vec<Request> {
    let seq = |start: u32, n: u32| -> Vec<u32> { (0..n).map(|i| (start + i * 37) % 512).collect() };
    let mut rs = Vec::new();
    // A document with four choices of different lengths after one shared context, one of them
    // a single token (scored from the context's last row alone).
    let ctx = seq(3, 20);
    for (start, n) in [(100, 5), (7, 1), (250, 9), (401, 3)] {
        rs.push(Request {
            context: ctx.clone(),
            continuation: seq(start, n),
        });
    }
    // WinoGrande-like: two contexts, one continuation.
    for start in [11, 12] {
        rs.push(Request {
            context: seq(start, 8),
            continuation: seq(77, 6),
        });
    }
    // Longer than the model's 64 positions: the context's start is dropped.
    rs.push(Request {
        context: seq(5, 70),
        continuation: seq(9, 4),
    });
    // A one-token context (the prefix token alone).
    rs.push(Request {
        context: vec![0],
        continuation: seq(300, 7),
    });
    rs
}

/// Σ ln p of a handful of tokens, from logits with equal summation in both engines up to f32
/// rounding: relative agreement well inside 1e-5 (the engine's parity tolerance).
const LOGPROB_REL_TOL: f64 = 1e-5;

#[test]
fn scores_equal_the_frameworks_log_likelihoods_for_every_variant() {
    for (variant, bits) in [
        (Variant::BitnetV2, ActBits::Int4),
        (Variant::BitnetV2, ActBits::Int8),
        (Variant::BitnetB158, ActBits::Int8),
    ] {
        let (model, engine) = setup(variant, bits);
        let max_len = engine.config().max_position_embeddings;
        let rs = requests();
        let got = score_requests(&engine, &rs, KvBits::F32, 4096, &mut |_, _| {}).unwrap();
        assert_eq!(got.len(), rs.len());
        for (i, (r, g)) in rs.iter().zip(&got).enumerate() {
            let (want, gap) = framework_score(&model, r, max_len);
            assert!(
                (g.logprob - want.logprob).abs() <= LOGPROB_REL_TOL * want.logprob.abs(),
                "{variant:?} a{bits:?} request {i}: {} vs {}",
                g.logprob,
                want.logprob
            );
            if gap > 1e-3 {
                assert_eq!(g.greedy, want.greedy, "{variant:?} request {i}");
            }
        }
    }
}

#[test]
fn sharing_and_batching_change_no_score() {
    let (_, engine) = setup(Variant::BitnetV2, ActBits::Int4);
    let rs = requests();
    for kv in [KvBits::F32, KvBits::Int4] {
        let batched = score_requests(&engine, &rs, kv, 4096, &mut |_, _| {}).unwrap();
        // One request at a time, no sharing: each alone in its own call.
        let single: Vec<Score> = rs
            .iter()
            .flat_map(|r| {
                score_requests(&engine, std::slice::from_ref(r), kv, 1, &mut |_, _| {}).unwrap()
            })
            .collect();
        assert_eq!(batched, single, "{kv:?}");
        // A small budget splits the groups over several calls; progress reaches the end.
        let mut last = (0, 0);
        let split = score_requests(&engine, &rs, kv, 30, &mut |d, t| last = (d, t)).unwrap();
        assert_eq!(batched, split, "{kv:?}");
        assert_eq!(last, (rs.len(), rs.len()));
    }
}

#[test]
fn lm_eval_context_continuation_split() {
    let corpus =
        "Question: is the sky blue?\nAnswer: yes it is. The cat sat on the mat. ".repeat(40);
    let tok = train_bpe(std::iter::once(corpus.as_str()), 300, false).unwrap();
    let ids = |s: &str| tok.encode(s, false).unwrap().get_ids().to_vec();
    // The continuation is the whole text's tokens after the context's.
    let (ctx, cont) = encode_pair(&tok, "Question: is the sky blue?\nAnswer:", " yes").unwrap();
    assert_eq!(ctx, ids("Question: is the sky blue?\nAnswer:"));
    let whole = ids("Question: is the sky blue?\nAnswer: yes");
    assert_eq!([ctx.clone(), cont.clone()].concat(), whole);
    // Trailing whitespace of the context moves to the continuation.
    let moved = encode_pair(&tok, "Question: is the sky blue?\nAnswer: ", "yes").unwrap();
    assert_eq!(moved, (ctx, cont));
    // Nothing to score is an error, not an empty request.
    let e = encode_pair(&tok, "The cat", "").unwrap_err();
    assert!(e.to_string().contains("encodes to no tokens"), "{e}");
}
