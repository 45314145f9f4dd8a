//! The server end to end on the bundled model, over loopback HTTP: answers equal the engine's
//! own generation, streams follow OpenAI's order, batching and the prefix cache change no token,
//! disconnects free their slot, admission refuses with 429, keys and bad input get their 4xx.
//! Every server listens on 127.0.0.1 on a port of the OS's choosing, and every request is
//! bounded in count and time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hbit_engine::format::load_packed;
use hbit_engine::{generate, Engine, GenerateOptions, KvBits, SamplingParams};
use hbit_serve::chat_template::ChatTemplate;
use hbit_serve::client::{post_json, request, send};
use hbit_serve::http::{AppState, HttpConfig};
use hbit_serve::metrics::Metrics;
use hbit_serve::scheduler::SchedulerConfig;
use hbit_serve::{bundled_model, start_model, RunningServer};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

struct Options {
    http: HttpConfig,
    max_seqs: usize,
    max_queue: usize,
    prefill_chunk: usize,
    prefix_cache_bytes: usize,
    load: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            http: HttpConfig {
                log_requests: false,
                metrics: true,
                ..HttpConfig::default()
            },
            max_seqs: 16,
            max_queue: 64,
            prefill_chunk: 256,
            prefix_cache_bytes: 64 << 20,
            load: true,
        }
    }
}

fn engine_and_tokenizer() -> (Engine, Tokenizer) {
    let packed = load_packed(&bundled_model()).expect("the bundled model loads");
    let tokenizer = Tokenizer::from_bytes(
        packed
            .tokenizer_json
            .expect("it carries a tokenizer")
            .as_bytes(),
    )
    .unwrap();
    (Engine::new(packed.weights), tokenizer)
}

struct Server {
    running: RunningServer,
    state: Arc<AppState>,
}

impl Server {
    fn start(options: Options) -> Server {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let metrics = Arc::new(Metrics::default());
        let state = AppState::new(options.http, metrics.clone());
        let running = RunningServer::start(listener, state.clone(), 2, false).unwrap();
        if options.load {
            let (engine, tokenizer) = engine_and_tokenizer();
            let ctx = engine.config().max_position_embeddings;
            let mut config =
                SchedulerConfig::for_model(&engine, options.max_seqs, ctx, KvBits::F16);
            config.max_queue = options.max_queue;
            config.prefill_chunk = options.prefill_chunk;
            config.prefix_cache_bytes = options.prefix_cache_bytes;
            let template = ChatTemplate::builtin("<|endoftext|>", "<|endoftext|>");
            let model = start_model(
                "tiny",
                engine,
                tokenizer,
                template,
                config,
                Some(1),
                metrics,
            )
            .unwrap();
            assert!(state.model.set(Arc::new(model)).is_ok());
        }
        Server { running, state }
    }

    fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = post_json(self.addr(), path, &body).unwrap();
        let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        (r.status, v)
    }

    /// The `data:` payloads of a streamed answer.
    fn stream(&self, path: &str, body: Value) -> Vec<String> {
        let open = send(
            self.addr(),
            "POST",
            path,
            &[],
            Some(body.to_string().as_bytes()),
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(open.status, 200);
        assert!(open
            .headers
            .iter()
            .any(|(n, v)| n == "content-type" && v.starts_with("text/event-stream")));
        open.events().map(|e| e.unwrap().1).collect()
    }

    fn metric(&self, line_start: &str) -> f64 {
        let text = self.state.metrics.render();
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {line_start}"))
    }
}

/// The text streamed in `events` (completions or chat chunks).
fn streamed_text(events: &[String]) -> String {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .flat_map(|v| v["choices"].as_array().cloned().unwrap_or_default())
        .map(|c| {
            c["text"]
                .as_str()
                .or(c["delta"]["content"].as_str())
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

const PROMPTS: [&str; 8] = [
    "Once upon a time",
    "The king said to his son",
    "It was a dark and stormy night, and the rain fell in torrents",
    "She",
    "In the beginning",
    "My dear friend, I write to you from",
    "The cat sat on the mat. The dog",
    "Tom and Lily went to the park to play with their ball. They",
];

#[test]
fn streamed_and_whole_answers_equal_the_engines_greedy_generation() {
    let server = Server::start(Options::default());
    let (engine, tokenizer) = engine_and_tokenizer();
    for prompt in &PROMPTS[..3] {
        let body = json!({"prompt": prompt, "max_tokens": 24, "temperature": 0});
        let (status, whole) = server.post("/v1/completions", body.clone());
        assert_eq!(status, 200, "{whole}");
        let text = whole["choices"][0]["text"].as_str().unwrap();
        let mut streaming = body.clone();
        streaming["stream"] = json!(true);
        let events = server.stream("/v1/completions", streaming);
        assert_eq!(streamed_text(&events), text, "{prompt}: stream vs whole");

        // `hbit generate --greedy`: the BOS first, greedy, the model's end tokens.
        let (_, tokens) = server.post("/tokenize", json!({"prompt": prompt}));
        let ids: Vec<u32> = serde_json::from_value(tokens["tokens"].clone()).unwrap();
        assert_eq!(ids[0], 0, "the bundled model's BOS");
        assert_eq!(whole["usage"]["prompt_tokens"], tokens["count"]);
        let options = GenerateOptions {
            max_tokens: 24,
            stop: Vec::new(),
            end_tokens: engine.config().eos_token_id.into_iter().collect(),
            sampling: SamplingParams::default(),
            kv_bits: KvBits::F16,
        };
        let (out, _) = generate(&engine, &tokenizer, &[ids], &options, &mut |_, _| {}).unwrap();
        assert_eq!(out[0].text, text, "{prompt}: server vs engine");
        assert_eq!(
            whole["usage"]["completion_tokens"],
            json!(out[0].tokens.len())
        );
    }
}

#[test]
fn chat_streams_follow_openais_order() {
    let server = Server::start(Options::default());
    let body = json!({
        "model": "tiny",
        "messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello"}],
        "max_completion_tokens": 12, "temperature": 0, "stream": true,
        "stream_options": {"include_usage": true},
    });
    let events = server.stream("/v1/chat/completions", body.clone());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 12);
    let with_choices = &chunks[..chunks.len() - 1];
    for (i, c) in with_choices.iter().enumerate() {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["usage"], Value::Null, "only the last chunk carries usage");
        let finish = &c["choices"][0]["finish_reason"];
        match i + 1 == with_choices.len() {
            true => assert_eq!(finish, "length"),
            false => assert_eq!(finish, &Value::Null, "chunk {i}"),
        }
        if i > 0 {
            assert!(c["choices"][0]["delta"].get("role").is_none());
        }
    }
    let mut whole_body = body;
    whole_body["stream"] = json!(false);
    whole_body.as_object_mut().unwrap().remove("stream_options");
    let (status, whole) = server.post("/v1/chat/completions", whole_body);
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        whole["choices"][0]["message"]["content"].as_str().unwrap(),
        streamed_text(&events)
    );
    assert_eq!(
        whole["usage"]["prompt_tokens"],
        usage["usage"]["prompt_tokens"]
    );
    // The chat prompt's tokens as /tokenize renders them.
    let (_, t) = server.post(
        "/tokenize",
        json!({"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello"}]}),
    );
    assert_eq!(t["count"], whole["usage"]["prompt_tokens"]);
}

/// Each prompt's greedy answer as `(tokens as text pieces, text)`, from the completions API
/// with `logprobs: 0` (one entry per generated token).
fn answer(addr: SocketAddr, prompt: &str, max_tokens: usize) -> (Vec<String>, String) {
    let body = json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                      "logprobs": 0, "ignore_eos": true});
    let r = post_json(addr, "/v1/completions", &body).unwrap();
    assert_eq!(r.status, 200);
    let v = r.json().unwrap();
    let tokens = serde_json::from_value(v["choices"][0]["logprobs"]["tokens"].clone()).unwrap();
    (
        tokens,
        v["choices"][0]["text"].as_str().unwrap().to_string(),
    )
}

#[test]
fn concurrent_greedy_requests_equal_their_serial_answers_token_for_token() {
    // Small prefill chunks, so long prompts are split over steps that also decode others.
    let server = Server::start(Options {
        prefill_chunk: 5,
        prefix_cache_bytes: 0,
        ..Options::default()
    });
    let serial: Vec<_> = PROMPTS
        .iter()
        .map(|p| answer(server.addr(), p, 32))
        .collect();
    let (steps, tokens) = (
        server.metric("hbit_engine_steps_total"),
        server.metric("hbit_engine_step_tokens_total"),
    );
    let addr = server.addr();
    let threads: Vec<_> = PROMPTS
        .iter()
        .map(|p| std::thread::spawn(move || answer(addr, p, 32)))
        .collect();
    let concurrent: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (i, (a, b)) in serial.iter().zip(&concurrent).enumerate() {
        assert_eq!(a.0.len(), 32);
        assert_eq!(
            a, b,
            "prompt {i}: batched answer differs from its answer alone"
        );
    }
    // The concurrent requests did share steps (at most 5 prompt tokens or 1 decode token a
    // step alone).
    let per_step = (server.metric("hbit_engine_step_tokens_total") - tokens)
        / (server.metric("hbit_engine_steps_total") - steps);
    assert!(per_step > 3.0, "{per_step} tokens per step: not batched");
}

#[test]
fn the_prefix_cache_returns_the_tokens_of_a_cold_prefill() {
    let cold = Server::start(Options {
        prefix_cache_bytes: 0,
        ..Options::default()
    });
    let warm = Server::start(Options::default());
    let history = "User: Tell me about the sea.\n\nAssistant: The sea is wide and deep, and the \
                   ships sail on it all day long.\n\n";
    let first = format!("{history}User: And the sky?\n\nAssistant:");
    let second = format!("{history}User: And the mountains?\n\nAssistant:");
    for prompt in [&first, &second] {
        let body = json!({"prompt": prompt, "max_tokens": 16, "temperature": 0, "logprobs": 0});
        let (_, a) = cold.post("/v1/completions", body.clone());
        let (_, b) = warm.post("/v1/completions", body);
        assert_eq!(
            a["choices"][0]["logprobs"]["tokens"],
            b["choices"][0]["logprobs"]["tokens"]
        );
        assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
        assert_eq!(a["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
        if prompt == &second {
            let cached = b["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap();
            assert!(
                cached > 20,
                "the shared history was served from the cache: {cached}"
            );
            assert_eq!(
                warm.metric("hbit_prefix_cache_hit_tokens_total") as u64,
                cached
            );
        }
    }
}

#[test]
fn a_client_that_disconnects_frees_its_sequence() {
    let server = Server::start(Options::default());
    let body = json!({"prompt": "Once", "max_tokens": 240, "temperature": 0, "ignore_eos": true,
                      "stream": true});
    let open = send(
        server.addr(),
        "POST",
        "/v1/completions",
        &[],
        Some(body.to_string().as_bytes()),
        Duration::from_secs(30),
    )
    .unwrap();
    let mut events = open.events();
    let _first = events.next().unwrap().unwrap();
    drop(events); // closes the connection mid-answer
    let start = Instant::now();
    while server.metric("hbit_running_sequences") > 0.0 && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(server.metric("hbit_running_sequences"), 0.0);
    assert_eq!(
        server.metric("hbit_sequences_total{outcome=\"cancelled\"}"),
        1.0
    );
    assert_eq!(
        server.metric("hbit_sequences_total{outcome=\"completed\"}"),
        0.0
    );
    assert!(server.metric("hbit_generation_tokens_total") < 240.0);
}

#[test]
fn a_full_queue_answers_429_at_once() {
    let server = Server::start(Options {
        max_seqs: 2,
        max_queue: 2,
        ..Options::default()
    });
    let body = json!({"prompt": "Once", "max_tokens": 240, "temperature": 0, "ignore_eos": true,
                      "stream": true});
    // Four streams hold the two slots and the two queue places (their headers mean admitted).
    let held: Vec<_> = (0..4)
        .map(|_| {
            send(
                server.addr(),
                "POST",
                "/v1/completions",
                &[],
                Some(body.to_string().as_bytes()),
                Duration::from_secs(30),
            )
            .unwrap()
        })
        .collect();
    assert!(held.iter().all(|r| r.status == 200));
    let start = Instant::now();
    let (status, err) = server.post("/v1/completions", body);
    assert_eq!(status, 429, "{err}");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(err["error"]["code"], "rate_limit_exceeded");
    assert!(err["error"]["message"].as_str().unwrap().contains("busy"));
    assert_eq!(server.metric("hbit_requests_rejected_total"), 1.0);
    drop(held);
}

#[test]
fn api_keys_guard_everything_but_health() {
    let server = Server::start(Options {
        http: HttpConfig {
            api_keys: vec!["sesame".into()],
            log_requests: false,
            ..HttpConfig::default()
        },
        ..Options::default()
    });
    let models = |headers: &[(&str, &str)]| {
        request(server.addr(), "GET", "/v1/models", headers, None)
            .unwrap()
            .status
    };
    assert_eq!(models(&[]), 401);
    assert_eq!(models(&[("Authorization", "Bearer wrong")]), 401);
    assert_eq!(models(&[("Authorization", "Bearer sesame")]), 200);
    assert_eq!(models(&[("x-api-key", "sesame")]), 200);
    let r = request(server.addr(), "GET", "/health", &[], None).unwrap();
    assert_eq!(r.status, 200);
    let r = post_json(server.addr(), "/v1/completions", &json!({"prompt": "x"})).unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.json().unwrap()["error"]["code"], "invalid_api_key");
}

#[test]
fn health_is_503_while_loading() {
    let server = Server::start(Options {
        load: false,
        ..Options::default()
    });
    let r = request(server.addr(), "GET", "/health", &[], None).unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.json().unwrap()["status"], "loading");
    let (status, _) = server.post("/v1/completions", json!({"prompt": "x"}));
    assert_eq!(status, 503);
}

#[test]
fn bad_input_gets_a_4xx_naming_the_problem() {
    let server = Server::start(Options {
        http: HttpConfig {
            body_limit: 64 << 10,
            read_timeout: Duration::from_secs(1),
            log_requests: false,
            ..HttpConfig::default()
        },
        ..Options::default()
    });
    let long = "word ".repeat(400);
    let cases = [
        (json!({"prompt": long}), 400, Some("prompt")),
        (
            json!({"prompt": "x", "max_tokens": -1}),
            400,
            Some("max_tokens"),
        ),
        (
            json!({"prompt": "x", "max_tokens": 1_000_000}),
            400,
            Some("max_tokens"),
        ),
        (
            json!({"prompt": "x", "temperature": "hot"}),
            400,
            Some("temperature"),
        ),
        (json!({"prompt": 5}), 400, Some("prompt")),
        (json!({"prompt": [99_999_999]}), 400, Some("prompt")),
        (json!({"prompt": "x", "best": 1}), 400, Some("best")),
        (json!({"prompt": "x", "n": 3}), 400, Some("n")),
        (json!({"prompt": "x", "model": "gpt-9"}), 404, None),
    ];
    for (body, status, param) in cases {
        let (got, err) = server.post("/v1/completions", body.clone());
        assert_eq!(got, status, "{body}: {err}");
        assert_eq!(err["error"]["param"].as_str(), param, "{body}: {err}");
        assert!(!err["error"]["message"].as_str().unwrap().is_empty());
    }
    let chat = json!({"messages": [{"role": "tool", "content": "x"}]});
    let (status, err) = server.post("/v1/chat/completions", chat);
    assert_eq!(status, 400);
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unsupported role"));
    // Invalid UTF-8, not JSON, too large.
    let raw = |body: &[u8]| {
        request(server.addr(), "POST", "/v1/completions", &[], Some(body))
            .unwrap()
            .status
    };
    assert_eq!(raw(b"{\"prompt\": \"\xff\xfe\"}"), 400);
    assert_eq!(raw(b"not json"), 400);
    assert_eq!(raw(&vec![b' '; 100 << 10]), 413);
    let r = request(server.addr(), "GET", "/v2/nothing", &[], None).unwrap();
    assert_eq!(r.status, 404);
    let (status, _) = server.post("/detokenize", json!({"tokens": [1, 99_999_999]}));
    assert_eq!(status, 400);

    // A stalled body: 408 after the read timeout; stalled headers: the connection closes.
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"pro")
        .unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let start = Instant::now();
    s.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "a stalled client was not dropped"
    );
    // The server still answers.
    let (status, _) = server.post("/v1/completions", json!({"prompt": "x", "max_tokens": 2}));
    assert_eq!(status, 200);
}

#[test]
fn cors_is_off_unless_origins_are_given() {
    let preflight = |addr| {
        request(
            addr,
            "OPTIONS",
            "/v1/completions",
            &[
                ("Origin", "http://app.example"),
                ("Access-Control-Request-Method", "POST"),
            ],
            None,
        )
        .unwrap()
    };
    let off = Server::start(Options::default());
    assert!(preflight(off.addr())
        .header("access-control-allow-origin")
        .is_none());
    let on = Server::start(Options {
        http: HttpConfig {
            cors_origins: vec!["http://app.example".into()],
            api_keys: vec!["k".into()],
            log_requests: false,
            ..HttpConfig::default()
        },
        ..Options::default()
    });
    let r = preflight(on.addr());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://app.example")
    );
}

#[test]
fn seeded_sampling_reproduces_and_metrics_render() {
    let server = Server::start(Options::default());
    let body = json!({"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0.9,
                      "top_p": 0.9, "seed": 7, "presence_penalty": 0.5});
    let (_, a) = server.post("/v1/completions", body.clone());
    let (_, b) = server.post("/v1/completions", body.clone());
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    let r = request(server.addr(), "GET", "/metrics", &[], None).unwrap();
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body).unwrap();
    assert!(text.contains("hbit_generation_tokens_total 32"), "{text}");
    assert!(text.contains("# TYPE hbit_time_to_first_token_seconds histogram"));
}
