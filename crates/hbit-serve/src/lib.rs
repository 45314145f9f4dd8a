//! hbit's server: OpenAI's API over the inference engine with continuous batching.
//!
//! Map: [`scheduler`] (the engine thread: admission, chunked prefill, batched decode, cancel)
//! with [`prefix_cache`]; [`chat_template`] (HF-compatible Jinja rendering); [`openai`]
//! (request checks, response shapes); [`http`] (axum routes, keys, CORS, limits);
//! [`metrics`] (Prometheus text); [`client`] (a loopback HTTP client for tests and benches).

#![forbid(unsafe_code)]

pub mod chat_template;
pub mod client;
pub mod http;
pub mod metrics;
pub mod openai;
pub mod prefix_cache;
pub mod scheduler;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hbit_engine::Engine;
use tokenizers::Tokenizer;

use crate::chat_template::{ChatTemplate, END_OF_TURN_TOKENS};
use crate::http::ServedModel;
use crate::metrics::Metrics;
use crate::scheduler::{Scheduler, SchedulerConfig};

/// The model shipped in the repository (`models/`), the default of `hbit serve` and the model
/// of this crate's tests.
pub fn bundled_model() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/hbit-tiny-v2-a4.hbit"
    ))
}

/// Token ids that end an answer: the config's EOS, the template's EOS, and the end-of-text /
/// end-of-turn tokens of the common formats that the vocabulary has.
pub fn end_tokens(eos: Option<u32>, tokenizer: &Tokenizer, template: &ChatTemplate) -> Vec<u32> {
    let mut end: Vec<u32> = eos.into_iter().collect();
    let names = END_OF_TURN_TOKENS
        .iter()
        .copied()
        .chain([template.eos_token.as_str()]);
    for name in names.filter(|n| !n.is_empty()) {
        end.extend(tokenizer.token_to_id(name));
    }
    end.sort_unstable();
    end.dedup();
    end
}

/// Starts the engine thread for `engine` and returns the model as the HTTP layer serves it.
pub fn start_model(
    id: &str,
    engine: Engine,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    config: SchedulerConfig,
    threads: Option<usize>,
    metrics: Arc<Metrics>,
) -> std::io::Result<ServedModel> {
    let tokenizer = Arc::new(tokenizer);
    let end_tokens = end_tokens(engine.config().eos_token_id, &tokenizer, &template);
    let bos_token = engine.config().bos_token_id;
    let vocab_size = engine.config().vocab_size;
    let scheduler = Scheduler::start(engine, tokenizer.clone(), config, threads, metrics)?;
    Ok(ServedModel {
        id: id.to_string(),
        scheduler,
        tokenizer,
        template,
        bos_token,
        end_tokens,
        vocab_size,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    })
}

/// A server running on its own thread and tokio runtime; stopped when dropped.
pub struct RunningServer {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl RunningServer {
    /// Serves `state` on `listener` (already bound) with `workers` runtime threads, until
    /// dropped or, with `stop_on_signal`, until SIGINT / SIGTERM.
    pub fn start(
        listener: std::net::TcpListener,
        state: Arc<http::AppState>,
        workers: usize,
        stop_on_signal: bool,
    ) -> std::io::Result<RunningServer> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name("hbit-http")
            .enable_all()
            .build()?;
        let read_timeout = state.config.read_timeout;
        let thread = std::thread::Builder::new()
            .name("hbit-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    let app = http::router(state);
                    http::serve(listener, app, read_timeout, async {
                        match stop_on_signal {
                            true => tokio::select! {
                                _ = stop => {}
                                _ = termination() => {}
                            },
                            false => {
                                let _ = stop.await;
                            }
                        }
                    })
                    .await
                })
            })?;
        Ok(RunningServer {
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// Waits until the server stops (it stops when dropped, or on its own after an error).
    pub fn wait(mut self) -> std::io::Result<()> {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(std::io::Error::other("the server thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Polls `GET /health` until it answers 200 or `timeout` passes.
pub fn wait_until_healthy(addr: SocketAddr, timeout: Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if let Ok(r) = client::request(addr, "GET", "/health", &[], None) {
            if r.status == 200 {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_tokens_are_the_eos_and_the_turn_ends_the_vocabulary_has() {
        let json = r#"{"version":"1.0","added_tokens":[
            {"id":3,"content":"<|eot_id|>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
            {"id":4,"content":"<|custom_end|>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
            "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
            "model":{"type":"WordLevel","vocab":{"a":0,"b":1,"<unk>":2,"<|eot_id|>":3,"<|custom_end|>":4},"unk_token":"<unk>"}}"#;
        let tokenizer = Tokenizer::from_bytes(json.as_bytes()).unwrap();
        let plain = ChatTemplate::builtin("", "");
        assert_eq!(end_tokens(None, &tokenizer, &plain), [3]);
        assert_eq!(end_tokens(Some(1), &tokenizer, &plain), [1, 3]);
        // A template's own EOS string ends answers too.
        let custom = ChatTemplate::new("x", "test", "", "<|custom_end|>").unwrap();
        assert_eq!(end_tokens(Some(3), &tokenizer, &custom), [3, 4]);
    }
}
