//! Perplexity on the engine: every token scored once, and the sums equal the training
//! framework's cross-entropy on the same windows.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use hbit_engine::{Engine, KvBits, Weights};
use hbit_eval::ppl::perplexity;
use hbit_kernels::ActBits;
use hbit_train::config::{preset, Variant};
use hbit_train::BitnetModel;

fn setup() -> (BitnetModel, Engine) {
    let config = preset("micro", Variant::BitnetV2, ActBits::Int4).unwrap();
    let model = BitnetModel::init(&config, 41).unwrap();
    let latent: HashMap<String, Vec<f32>> = model
        .named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    let weights = Weights::from_latent(&config, &latent, false, Path::new("<test>")).unwrap();
    (model, Engine::new(weights))
}

/// Σ −ln p over the targets seq[1..] of one window seq, by the training framework.
fn framework_nll(model: &BitnetModel, seq: &[u32]) -> f64 {
    let n = seq.len() - 1;
    let inputs = Tensor::from_vec(seq[..n].to_vec(), (1, n), &Device::Cpu).unwrap();
    let targets = Tensor::from_vec(seq[1..].to_vec(), (1, n), &Device::Cpu).unwrap();
    let mean: f32 = model.loss(&inputs, &targets).unwrap().to_scalar().unwrap();
    mean as f64 * n as f64
}

/// Σ −ln p of targets seq[first..last], predicted by the framework from the window
/// seq[start..last - 1].
fn framework_nll_of(
    model: &BitnetModel,
    seq: &[u32],
    start: usize,
    first: usize,
    last: usize,
) -> f64 {
    let window = &seq[start..last - 1];
    let t = Tensor::from_vec(window.to_vec(), (1, window.len()), &Device::Cpu).unwrap();
    let logits: Vec<Vec<f32>> = model
        .forward(&t)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    (first..last)
        .map(|target| -hbit_eval::ppl::log_prob(&logits[target - 1 - start], seq[target]))
        .sum()
}

/// Σ −ln p agree to f32 rounding of the framework's mean loss.
const NLL_REL_TOL: f64 = 1e-5;

#[test]
fn rolling_perplexity_scores_every_token_once_and_matches_the_framework() {
    let (model, engine) = setup();
    let text: Vec<u32> = (0..150u32).map(|i| (i * 131 + 7) % 512).collect();
    let prefix = 0;
    let mut seq = vec![prefix];
    seq.extend_from_slice(&text);

    // stride = context = 64: targets 1..65 from the window seq[0..64], 65..129 from
    // seq[64..128] (both whole framework cross-entropies), and the last 22 targets 129..151
    // from a full window seq[86..150].
    let p = perplexity(&engine, prefix, &text, 64, 64, KvBits::F32, &mut |_, _| {}).unwrap();
    assert_eq!((p.tokens, p.windows), (150, 3));
    let want = framework_nll(&model, &seq[0..65])
        + framework_nll(&model, &seq[64..129])
        + framework_nll_of(&model, &seq, 86, 129, 151);
    assert!(
        (p.nll_sum - want).abs() < NLL_REL_TOL * want,
        "{} vs {want}",
        p.nll_sum
    );

    // Smaller strides still score every token exactly once, with more context each.
    for stride in [1, 7, 32] {
        let q = perplexity(
            &engine,
            prefix,
            &text,
            64,
            stride,
            KvBits::F32,
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(q.tokens, 150, "stride {stride}");
        assert_eq!(q.windows, 150usize.div_ceil(stride));
    }
    // A text shorter than the window is one forward pass over all of it.
    let short = perplexity(
        &engine,
        prefix,
        &text[..20],
        64,
        64,
        KvBits::F32,
        &mut |_, _| {},
    )
    .unwrap();
    let want = framework_nll(&model, &seq[..21]);
    assert!((short.nll_sum - want).abs() < NLL_REL_TOL * want);
    assert!((short.perplexity() - (want / 20.0).exp()).abs() < 1e-3 * short.perplexity());
}

#[test]
fn bad_settings_are_refused() {
    let (_, engine) = setup();
    let t = [1u32, 2, 3];
    let max = engine.config().max_position_embeddings;
    for (context, stride) in [(0, 1), (max + 1, 1), (8, 0), (8, 9)] {
        let e =
            perplexity(&engine, 0, &t, context, stride, KvBits::F16, &mut |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("perplexity"), "{e}");
    }
    assert!(perplexity(&engine, 0, &[], 8, 8, KvBits::F16, &mut |_, _| {}).is_err());
}

/// llama.cpp's method: BOS then the text, cut into 64-token chunks (the partial tail
/// dropped), each chunk starting with BOS, rows 32..63 scored.
#[test]
fn llama_cpp_perplexity_scores_the_second_half_of_bos_chunks() {
    let (model, engine) = setup();
    let text: Vec<u32> = (0..150u32).map(|i| (i * 131 + 7) % 512).collect();
    let bos = 1;
    let p = hbit_eval::ppl::perplexity_llama_cpp(
        &engine,
        Some(bos),
        &text,
        64,
        KvBits::F32,
        &mut |_, _| {},
    )
    .unwrap();
    // 151 tokens with BOS: two whole chunks; 31 targets each (rows 32..=62 predict 33..=63).
    assert_eq!((p.tokens, p.windows), (62, 2));
    let mut seq = vec![bos];
    seq.extend_from_slice(&text);
    let mut want = 0.0;
    for c in 0..2 {
        let mut chunk = seq[c * 64..(c + 1) * 64].to_vec();
        chunk[0] = bos;
        want += framework_nll_of(&model, &chunk, 0, 33, 64);
    }
    assert!(
        (p.nll_sum - want).abs() < NLL_REL_TOL * want,
        "{} vs {want}",
        p.nll_sum
    );
    // Without a BOS the text is chunked as it is; too little text for two chunks is an error.
    let plain =
        hbit_eval::ppl::perplexity_llama_cpp(&engine, None, &text, 64, KvBits::F32, &mut |_, _| {})
            .unwrap();
    assert_eq!(plain.windows, 2);
    assert!(hbit_eval::ppl::perplexity_llama_cpp(
        &engine,
        None,
        &text,
        128,
        KvBits::F32,
        &mut |_, _| {}
    )
    .is_err());
}

/// The windows method: independent 64-token windows, no prefix, each window's first token
/// context only; the sums equal the framework's loss on each window, and the scored tokens are
/// the ones `window_scores` names.
#[test]
fn window_perplexity_scores_all_but_each_windows_first_token() {
    let (model, engine) = setup();
    let text: Vec<u32> = (0..150u32).map(|i| (i * 97 + 3) % 512).collect();
    let p = hbit_eval::ppl::perplexity_windows(&engine, &text, 64, KvBits::F32, &mut |_, _| {})
        .unwrap();
    // Windows of 64, 64 and 22 tokens: 63 + 63 + 21 targets.
    assert_eq!((p.tokens, p.windows), (147, 3));
    let scored = (0..text.len())
        .filter(|&i| hbit_eval::ppl::window_scores(i, 64, text.len()))
        .count();
    assert_eq!(scored, p.tokens);
    let want: f64 = text.chunks(64).map(|w| framework_nll(&model, w)).sum();
    assert!(
        (p.nll_sum - want).abs() < NLL_REL_TOL * want,
        "{} vs {want}",
        p.nll_sum
    );
    // A window of one token scores nothing and is left out: 129 tokens make windows of 64, 64, 1.
    let q =
        hbit_eval::ppl::perplexity_windows(&engine, &text[..129], 64, KvBits::F32, &mut |_, _| {})
            .unwrap();
    assert_eq!((q.tokens, q.windows), (126, 2));
    assert!(!hbit_eval::ppl::window_scores(128, 64, 129));
    for bad in [1, 1 << 20] {
        assert!(
            hbit_eval::ppl::perplexity_windows(&engine, &text, bad, KvBits::F32, &mut |_, _| {})
                .is_err(),
            "context {bad}"
        );
    }
}
