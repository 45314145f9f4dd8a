//! Batched generation on a `micro` model: batch equals one-by-one under greedy decoding, seeds
//! reproduce, stop strings cut, streaming adds up to the final text, bad prompts are refused.

use std::collections::HashMap;
use std::path::Path;

use hbit_engine::{generate, Engine, Finish, GenerateOptions, KvBits, SamplingParams, Weights};
use hbit_kernels::ActBits;
use hbit_train::config::{preset, Variant};
use hbit_train::tokenizer::{encode, train_bpe};
use hbit_train::BitnetModel;
use tokenizers::Tokenizer;

fn setup() -> (Engine, Tokenizer) {
    let text = "the quick brown fox jumps over the lazy dog. a cat sat on the mat. ".repeat(40);
    let tokenizer = train_bpe([text.as_str()].into_iter(), 400, false).unwrap();
    let config = preset("micro", Variant::BitnetV2, ActBits::Int4).unwrap();
    let model = BitnetModel::init(&config, 17).unwrap();
    let latent: HashMap<String, Vec<f32>> = model
        .named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    let weights = Weights::from_latent(&config, &latent, true, Path::new("<test>")).unwrap();
    (Engine::new(weights), tokenizer)
}

fn options(max_tokens: usize, sampling: SamplingParams) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        stop: Vec::new(),
        end_tokens: Vec::new(),
        sampling,
        kv_bits: KvBits::Int4,
    }
}

#[test]
fn batch_equals_one_by_one_and_streams_add_up() {
    let (engine, tok) = setup();
    let prompts: Vec<Vec<u32>> = ["the quick", "a cat sat on", "lazy"]
        .iter()
        .map(|p| encode(&tok, p).unwrap())
        .collect();
    let opts = options(12, SamplingParams::default());
    let mut streamed = vec![String::new(); prompts.len()];
    let (batch, stats) = generate(&engine, &tok, &prompts, &opts, &mut |i, s| {
        streamed[i].push_str(s)
    })
    .unwrap();
    assert_eq!(
        stats.prefill_tokens,
        prompts.iter().map(Vec::len).sum::<usize>()
    );
    for (i, p) in prompts.iter().enumerate() {
        let (alone, _) = generate(
            &engine,
            &tok,
            std::slice::from_ref(p),
            &opts,
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(batch[i].tokens, alone[0].tokens, "sequence {i}");
        assert_eq!(batch[i].tokens.len(), 12);
        assert_eq!(batch[i].finish, Finish::Length);
        assert_eq!(streamed[i], batch[i].text, "sequence {i}");
        assert_eq!(batch[i].text, tok.decode(&batch[i].tokens, true).unwrap());
    }
}

#[test]
fn seeded_sampling_reproduces() {
    let (engine, tok) = setup();
    let prompts = vec![encode(&tok, "the").unwrap(); 2];
    let sampling = |seed| SamplingParams {
        temperature: 1.0,
        top_k: 50,
        top_p: 0.95,
        repetition_penalty: 1.1,
        seed,
        ..Default::default()
    };
    let run = |seed| {
        generate(
            &engine,
            &tok,
            &prompts,
            &options(16, sampling(seed)),
            &mut |_, _| {},
        )
        .unwrap()
        .0
    };
    let a = run(7);
    let b = run(7);
    let c = run(8);
    assert_eq!(a[0].tokens, b[0].tokens);
    assert_eq!(a[1].tokens, b[1].tokens);
    // Different streams per sequence and per seed.
    assert_ne!(a[0].tokens, a[1].tokens);
    assert_ne!(a[0].tokens, c[0].tokens);
}

#[test]
fn stop_strings_cut_and_end_tokens_end() {
    let (engine, tok) = setup();
    let prompt = vec![encode(&tok, "the quick").unwrap()];
    let (free, _) = generate(
        &engine,
        &tok,
        &prompt,
        &options(32, SamplingParams::default()),
        &mut |_, _| {},
    )
    .unwrap();
    let text = &free[0].text;
    // A stop string taken from the middle of the free-running output.
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 4, "{text:?}");
    let mid = chars.len() / 2;
    let stop: String = chars[mid - 1..mid + 1].iter().collect();
    let cut = text.find(&stop).unwrap();
    let mut opts = options(32, SamplingParams::default());
    opts.stop = vec![stop.clone()];
    let mut streamed = String::new();
    let (stopped, _) = generate(&engine, &tok, &prompt, &opts, &mut |_, s| {
        streamed.push_str(s)
    })
    .unwrap();
    assert_eq!(stopped[0].finish, Finish::Stop);
    assert_eq!(stopped[0].text, text[..cut]);
    assert_eq!(
        streamed,
        text[..cut],
        "streaming never shows the stop string"
    );
    // The first free-running token as an end token: nothing is generated.
    let mut opts = options(16, SamplingParams::default());
    opts.end_tokens = vec![free[0].tokens[0]];
    let (ended, _) = generate(&engine, &tok, &prompt, &opts, &mut |_, _| {}).unwrap();
    assert_eq!(ended[0].finish, Finish::EndOfText);
    assert!(ended[0].tokens.is_empty());
}

#[test]
fn bad_prompts_are_refused() {
    let (engine, tok) = setup();
    let context = engine.config().max_position_embeddings;
    let opts = options(4, SamplingParams::default());
    let e = generate(
        &engine,
        &tok,
        &[vec![1; context + 1]],
        &opts,
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("context"), "{e}");
    let mut empty_stop = options(4, SamplingParams::default());
    empty_stop.stop = vec![String::new()];
    let e = generate(&engine, &tok, &[vec![1]], &empty_stop, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("stop strings"), "{e}");
    let e = generate(&engine, &tok, &[vec![]], &opts, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    let e = generate(&engine, &tok, &[vec![100_000]], &opts, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    // Near the end of the context, generation uses every position: a prompt of C - 2 tokens
    // feeds two more (positions C - 2 and C - 1) and samples a third from the last.
    let run = |prompt: Vec<u32>| {
        let opts = options(10, SamplingParams::default());
        generate(&engine, &tok, &[prompt], &opts, &mut |_, _| {})
            .unwrap()
            .0
            .remove(0)
    };
    let near = run(vec![5; context - 2]);
    assert_eq!((near.finish, near.tokens.len()), (Finish::Context, 3));
    let full = run(vec![5; context]);
    assert_eq!((full.finish, full.tokens.len()), (Finish::Context, 1));
}
