//! The HTTP front: axum routes for OpenAI's endpoints and the server's own, API-key checks, CORS,
//! body limits and timeouts, one log line per request. Handlers only parse, tokenize and relay
//! events: the model runs on the scheduler's thread, never on the async runtime.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::{json, Value};
use tokenizers::Tokenizer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use crate::chat_template::{ChatTemplate, Message};
use crate::metrics::Metrics;
use crate::openai::{
    chat_logprobs_json, completion_logprobs_json, finish_reason, parse_request, usage_json,
    ApiError, Endpoint, Parsed, Prompt, ShownLogprob,
};
use crate::scheduler::{Event, Request as GenRequest, Scheduler, SubmitError};

/// How the server is reached and guarded.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Accepted API keys; empty = no key needed.
    pub api_keys: Vec<String>,
    /// Origins allowed by CORS (`*` = any); empty = CORS off.
    pub cors_origins: Vec<String>,
    /// Serve `GET /metrics`.
    pub metrics: bool,
    /// Largest request body.
    pub body_limit: usize,
    /// A client must send its request headers, and then its body, within this time.
    pub read_timeout: Duration,
    /// Log one line per request to stderr.
    pub log_requests: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            api_keys: Vec::new(),
            cors_origins: Vec::new(),
            metrics: false,
            body_limit: 4 << 20,
            read_timeout: Duration::from_secs(30),
            log_requests: true,
        }
    }
}

/// A loaded model behind the scheduler.
pub struct ServedModel {
    pub id: String,
    pub scheduler: Scheduler,
    pub tokenizer: Arc<Tokenizer>,
    pub template: ChatTemplate,
    /// Prepended to text prompts that do not start with it (as in training).
    pub bos_token: Option<u32>,
    /// Token ids that end an answer (end of text, end of turn).
    pub end_tokens: Vec<u32>,
    pub vocab_size: usize,
    pub created: u64,
}

/// What every handler sees. The model arrives once loaded; until then `/health` answers 503.
pub struct AppState {
    pub model: OnceLock<Arc<ServedModel>>,
    /// Set when loading failed: `/health` reports it.
    pub load_error: OnceLock<String>,
    pub config: HttpConfig,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    pub fn new(config: HttpConfig, metrics: Arc<Metrics>) -> Arc<AppState> {
        Arc::new(AppState {
            model: OnceLock::new(),
            load_error: OnceLock::new(),
            config,
            metrics,
        })
    }

    fn ready(&self) -> Result<Arc<ServedModel>, ApiError> {
        self.model.get().cloned().ok_or_else(|| {
            ApiError::new(
                503,
                "server_error",
                "the model is still loading; retry shortly",
            )
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        (status, Json(self.body())).into_response()
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let mut app = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize));
    if state.config.metrics {
        app = app.route("/metrics", get(metrics));
    }
    let mut app = app
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ))
        .route("/health", get(health))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), log_request));
    if let Some(cors) = cors_layer(&state.config.cors_origins) {
        app = app.layer(cors);
    }
    app.with_state(state)
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            // Whatever the client's preflight asks for (the OpenAI SDKs send their own
            // `x-stainless-*` headers); the origin list is what guards.
            .allow_headers(AllowHeaders::mirror_request()),
    )
}

/// Serves `router` on `listener` until `shutdown` completes. Each connection must send its
/// headers within the read timeout (a stalled client cannot hold a connection open forever).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (socket, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of file descriptors and the like: wait a moment rather than spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let _ = socket.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(read_timeout)
                .keep_alive(true);
            let _ = builder
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}

async fn log_request(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    match status {
        200..=299 => state.metrics.http_2xx.add(1),
        400..=499 => state.metrics.http_4xx.add(1),
        500..=599 => state.metrics.http_5xx.add(1),
        _ => {}
    }
    if state.config.log_requests {
        eprintln!(
            "{} {method} {path} {status} {:.1} ms",
            unix_seconds(),
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    response
}

async fn require_api_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let keys = &state.config.api_keys;
    if keys.is_empty()
        || keys
            .iter()
            .any(|k| presented_key_matches(request.headers(), k))
    {
        return next.run(request).await;
    }
    ApiError::new(
        401,
        "invalid_request_error",
        "missing or incorrect API key: send `Authorization: Bearer KEY` or `x-api-key: KEY`",
    )
    .with_code("invalid_api_key")
    .into_response()
}

fn presented_key_matches(headers: &HeaderMap, key: &str) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let plain = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    [bearer, plain]
        .into_iter()
        .flatten()
        .any(|given| constant_time_eq(given.trim().as_bytes(), key.as_bytes()))
}

/// Equality whose time does not depend on where the inputs first differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        404,
        "invalid_request_error",
        format!("no route {} {}", request.method(), request.uri().path()),
    )
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    if let Some(m) = state.model.get() {
        if !m.scheduler.is_alive() {
            let body = json!({"status": "error", "error": "the engine thread has stopped"});
            return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        }
        return (StatusCode::OK, Json(json!({"status": "ok"}))).into_response();
    }
    let body = match state.load_error.get() {
        Some(e) => json!({"status": "error", "error": e}),
        None => json!({"status": "loading"}),
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let m = state.ready()?;
    Ok(Json(json!({"object": "list", "data": [{
        "id": m.id, "object": "model", "created": m.created, "owned_by": "hbit",
        "max_model_len": m.scheduler.ctx(),
    }]})))
}

/// Reads the whole body within the read timeout and the size limit.
async fn read_body(state: &AppState, body: Body) -> Result<Bytes, ApiError> {
    let limit = state.config.body_limit;
    match tokio::time::timeout(state.config.read_timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::new(
            408,
            "invalid_request_error",
            "the request body did not arrive in time",
        )),
        Ok(Err(_)) => Err(ApiError::new(
            413,
            "invalid_request_error",
            format!("the request body is larger than {limit} bytes"),
        )),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

async fn tokenize(State(state): State<Arc<AppState>>, body: Body) -> Result<Json<Value>, ApiError> {
    let m = state.ready()?;
    let bytes = read_body(&state, body).await?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid(None, format!("the request body is not valid JSON: {e}")))?;
    let add_special = match value.get("add_special_tokens") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid(
                Some("add_special_tokens"),
                "add_special_tokens must be a boolean",
            ))
        }
    };
    let ctx = m.scheduler.ctx();
    let tokens = tokio::task::spawn_blocking(move || tokenize_body(&m, &value, add_special))
        .await
        .map_err(|e| ApiError::new(500, "server_error", format!("tokenizing: {e}")))??;
    Ok(Json(json!({
        "tokens": tokens, "count": tokens.len(), "max_model_len": ctx,
    })))
}

/// The token ids a `/tokenize` body asks for: of `prompt`, or of `messages` rendered by the chat
/// template.
fn tokenize_body(m: &ServedModel, value: &Value, add_special: bool) -> Result<Vec<u32>, ApiError> {
    Ok(match (value.get("prompt"), value.get("messages")) {
        (Some(Value::String(p)), None) => m.encode(p, add_special)?,
        (None, Some(_)) => {
            let mut wrapped = value.clone();
            if let Some(o) = wrapped.as_object_mut() {
                o.remove("add_special_tokens");
                o.remove("add_generation_prompt");
            }
            let parsed = parse_request(
                &serde_json::to_vec(&wrapped).unwrap_or_default(),
                Endpoint::Chat,
            )?;
            let Prompt::Chat(messages) = parsed.prompt else {
                return Err(ApiError::invalid(
                    Some("messages"),
                    "messages must be a list",
                ));
            };
            let add_generation_prompt = value
                .get("add_generation_prompt")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            m.encode_chat(&messages, add_generation_prompt, add_special)?
        }
        _ => {
            return Err(ApiError::invalid(
                Some("prompt"),
                "give either \"prompt\" (a string) or \"messages\"",
            ))
        }
    })
}

async fn detokenize(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let m = state.ready()?;
    let bytes = read_body(&state, body).await?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid(None, format!("the request body is not valid JSON: {e}")))?;
    let tokens: Vec<u32> = value
        .get("tokens")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| ApiError::invalid(Some("tokens"), "tokens must be a list of token ids"))?;
    if let Some(bad) = tokens.iter().find(|&&t| t as usize >= m.vocab_size) {
        return Err(ApiError::invalid(
            Some("tokens"),
            format!(
                "token id {bad} is outside the vocabulary (vocab_size {})",
                m.vocab_size
            ),
        ));
    }
    let text = tokio::task::spawn_blocking(move || m.tokenizer.decode(&tokens, false))
        .await
        .map_err(|e| ApiError::new(500, "server_error", format!("detokenizing: {e}")))?
        .map_err(|e| ApiError::new(500, "server_error", format!("detokenizing: {e}")))?;
    Ok(Json(json!({"prompt": text})))
}

/// `max_tokens` of a completion that names none (OpenAI's default).
const DEFAULT_COMPLETION_TOKENS: usize = 16;

impl ServedModel {
    /// Token ids of a text prompt, with the model's BOS first when `add_special`.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, ApiError> {
        let mut ids = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| ApiError::invalid(Some("prompt"), format!("tokenizing: {e}")))?
            .get_ids()
            .to_vec();
        if let Some(bos) = self.bos_token.filter(|_| add_special) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// Token ids of a conversation rendered by the chat template.
    pub fn encode_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        add_special: bool,
    ) -> Result<Vec<u32>, ApiError> {
        let text = self
            .template
            .render(messages, add_generation_prompt)
            .map_err(|e| ApiError::invalid(Some("messages"), e.to_string()))?;
        self.encode(&text, add_special)
    }

    /// The generation request a parsed body asks for.
    fn request(&self, parsed: &Parsed) -> Result<GenRequest, ApiError> {
        let prompt = match &parsed.prompt {
            Prompt::Text(t) => self.encode(t, true)?,
            Prompt::Tokens(t) => t.clone(),
            Prompt::Chat(messages) => self.encode_chat(messages, true, true)?,
        };
        if prompt.is_empty() {
            return Err(ApiError::invalid(Some("prompt"), "the prompt is empty"));
        }
        if let Some(bad) = prompt.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(ApiError::invalid(
                Some("prompt"),
                format!(
                    "token id {bad} is outside the vocabulary (vocab_size {})",
                    self.vocab_size
                ),
            ));
        }
        let ctx = self.scheduler.ctx();
        if prompt.len() >= ctx {
            return Err(ApiError::invalid(
                Some(if parsed.endpoint == Endpoint::Chat { "messages" } else { "prompt" }),
                format!(
                    "this model's maximum context length is {ctx} tokens; the prompt has {} tokens, \
                     leaving no room for an answer",
                    prompt.len()
                ),
            )
            .with_code("context_length_exceeded"));
        }
        // OpenAI's defaults: 16 tokens for a completion, the rest of the context for a chat.
        let room = ctx - prompt.len();
        let max_tokens = parsed.max_tokens.unwrap_or(match parsed.endpoint {
            Endpoint::Completions => DEFAULT_COMPLETION_TOKENS.min(room),
            Endpoint::Chat => room,
        });
        if prompt.len().saturating_add(max_tokens) > ctx {
            return Err(ApiError::invalid(
                Some("max_tokens"),
                format!(
                    "this model's maximum context length is {ctx} tokens; the prompt has {} tokens \
                     and max_tokens asks for {max_tokens} more",
                    prompt.len()
                ),
            )
            .with_code("context_length_exceeded"));
        }
        let mut stop = parsed.stop.clone();
        if parsed.endpoint == Endpoint::Chat {
            stop.extend(self.template.stop.iter().cloned());
        }
        Ok(GenRequest {
            prompt,
            max_tokens,
            sampling: parsed.sampling.clone(),
            stop,
            end_tokens: if parsed.ignore_eos {
                Vec::new()
            } else {
                self.end_tokens.clone()
            },
            logprobs: parsed.logprobs,
        })
    }

    fn token_text(&self, token: u32) -> String {
        self.tokenizer.decode(&[token], false).unwrap_or_default()
    }
}

async fn completions(State(state): State<Arc<AppState>>, body: Body) -> Response {
    generate(state, body, Endpoint::Completions).await
}

async fn chat_completions(State(state): State<Arc<AppState>>, body: Body) -> Response {
    generate(state, body, Endpoint::Chat).await
}

/// OpenAI's 429 for a full queue.
fn queue_full(scheduler: &crate::scheduler::Scheduler) -> ApiError {
    let e = scheduler.queue_full_error();
    ApiError::new(429, "requests", e.to_string()).with_code("rate_limit_exceeded")
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn response_id(endpoint: Endpoint) -> String {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let prefix = match endpoint {
        Endpoint::Completions => "cmpl",
        Endpoint::Chat => "chatcmpl",
    };
    format!("{prefix}-{:x}{n:06x}", unix_seconds())
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn generate(state: Arc<AppState>, body: Body, endpoint: Endpoint) -> Response {
    match start_generation(&state, body, endpoint).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn start_generation(
    state: &Arc<AppState>,
    body: Body,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    let model = state.ready()?;
    let bytes = read_body(state, body).await?;
    let parsed = parse_request(&bytes, endpoint)?;
    if let Some(name) = parsed.model.as_deref().filter(|n| *n != model.id) {
        return Err(ApiError::new(
            404,
            "invalid_request_error",
            format!(
                "the model `{name}` does not exist; this server serves `{}`",
                model.id
            ),
        )
        .with_code("model_not_found"));
    }
    // A full server refuses before spending any work on the prompt.
    if model.scheduler.is_full() {
        state.metrics.rejected.add(1);
        return Err(queue_full(&model.scheduler));
    }
    // Template rendering and tokenization are CPU work: off the async workers.
    let request = {
        let (model, parsed) = (model.clone(), parsed.clone());
        tokio::task::spawn_blocking(move || model.request(&parsed))
            .await
            .map_err(|e| {
                ApiError::new(500, "server_error", format!("preparing the prompt: {e}"))
            })??
    };
    let events = model.scheduler.submit(request).map_err(|e| match e {
        SubmitError::QueueFull { .. } => {
            state.metrics.rejected.add(1);
            ApiError::new(429, "requests", e.to_string()).with_code("rate_limit_exceeded")
        }
        SubmitError::Invalid(m) => ApiError::invalid(None, m),
        SubmitError::Stopped => ApiError::new(503, "server_error", e.to_string()),
    })?;
    let answer = Answer {
        id: response_id(endpoint),
        created: unix_seconds(),
        model: model.clone(),
        endpoint,
        logprobs: parsed.logprobs.is_some(),
        text_offset: 0,
    };
    if parsed.stream {
        Ok(stream_answer(answer, events, parsed.include_usage).into_response())
    } else {
        Ok(collect_answer(answer, events).await.into_response())
    }
}

/// What the response chunks of one request share.
struct Answer {
    id: String,
    created: u64,
    model: Arc<ServedModel>,
    endpoint: Endpoint,
    logprobs: bool,
    /// Bytes of text sent so far (the completions API's `text_offset`).
    text_offset: usize,
}

impl Answer {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Completions, _) => "text_completion",
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
        }
    }

    fn envelope(&self, choices: Value, chunk: bool) -> Value {
        json!({
            "id": self.id, "object": self.object(chunk), "created": self.created,
            "model": self.model.id, "choices": choices,
        })
    }

    fn logprobs_json(&mut self, tokens: &[ShownLogprob]) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        match self.endpoint {
            Endpoint::Chat => chat_logprobs_json(tokens),
            Endpoint::Completions => {
                let v = completion_logprobs_json(tokens, self.text_offset);
                self.text_offset += tokens.iter().map(|t| t.text.len()).sum::<usize>();
                v
            }
        }
    }

    /// One streamed choice carrying `text`.
    fn chunk(&mut self, text: &str, tokens: &[ShownLogprob], finish: Option<&str>) -> Value {
        let logprobs = self.logprobs_json(tokens);
        let choice = match self.endpoint {
            Endpoint::Completions => json!({
                "index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish,
            }),
            Endpoint::Chat => {
                let delta = if text.is_empty() && finish.is_some() {
                    json!({})
                } else {
                    json!({"content": text})
                };
                json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
        };
        self.envelope(json!([choice]), true)
    }
}

fn sse_json(v: &Value) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(v.to_string()))
}

/// SSE: the chat role first, a chunk per piece of text, the finish reason in the last choice,
/// the usage alone when asked for, then `[DONE]`.
fn stream_answer(
    mut answer: Answer,
    events: tokio::sync::mpsc::UnboundedReceiver<Event>,
    include_usage: bool,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let mut first: Vec<Result<SseEvent, Infallible>> = Vec::new();
    if answer.endpoint == Endpoint::Chat {
        let mut role = answer.envelope(
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""},
                    "logprobs": null, "finish_reason": null}]),
            true,
        );
        if include_usage {
            role["usage"] = Value::Null;
        }
        first.push(sse_json(&role));
    }
    // Set once the answer has ended properly (its `Done` or its error sent).
    let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ended_in_body = ended.clone();
    let mut done = false;
    let body = UnboundedReceiverStream::new(events).flat_map(move |event| {
        let mut out = Vec::new();
        let with_usage = |mut v: Value| {
            if include_usage {
                v["usage"] = Value::Null;
            }
            v
        };
        match event {
            Event::Token {
                token,
                text,
                logprob,
            } => {
                let shown: Vec<ShownLogprob> = logprob
                    .iter()
                    .map(|lp| ShownLogprob::new(|t| answer.model.token_text(t), token, lp))
                    .collect();
                if !text.is_empty() || !shown.is_empty() {
                    out.push(sse_json(&with_usage(answer.chunk(&text, &shown, None))));
                }
            }
            Event::Done {
                text,
                finish,
                usage,
            } => {
                let last = answer.chunk(&text, &[], Some(finish_reason(finish)));
                out.push(sse_json(&with_usage(last)));
                if include_usage {
                    let mut u = answer.envelope(json!([]), true);
                    u["usage"] = usage_json(&usage);
                    out.push(sse_json(&u));
                }
                done = true;
            }
            Event::Error(message) => {
                out.push(sse_json(
                    &ApiError::new(500, "server_error", message).body(),
                ));
                done = true;
            }
        }
        if done {
            ended_in_body.store(true, Ordering::Relaxed);
            out.push(Ok(SseEvent::default().data("[DONE]")));
        }
        stream::iter(out)
    });
    // The events ended with no `Done` (the engine thread stopped): say so, rather than let
    // the client take a cut answer for a whole one.
    let tail = stream::once(async move {
        match ended.load(Ordering::Relaxed) {
            true => Vec::new(),
            false => vec![
                sse_json(
                    &ApiError::new(
                        500,
                        "server_error",
                        "the engine stopped before the answer was complete",
                    )
                    .body(),
                ),
                Ok(SseEvent::default().data("[DONE]")),
            ],
        }
    })
    .flat_map(stream::iter);
    Sse::new(stream::iter(first).chain(body).chain(tail))
}

/// The whole answer as one response.
async fn collect_answer(
    mut answer: Answer,
    mut events: tokio::sync::mpsc::UnboundedReceiver<Event>,
) -> Result<Json<Value>, ApiError> {
    let mut text = String::new();
    let mut shown: Vec<ShownLogprob> = Vec::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Token {
                token,
                text: piece,
                logprob,
            } => {
                text.push_str(&piece);
                if let Some(lp) = &logprob {
                    shown.push(ShownLogprob::new(|t| answer.model.token_text(t), token, lp));
                }
            }
            Event::Done {
                text: tail,
                finish,
                usage,
            } => {
                text.push_str(&tail);
                let logprobs = answer.logprobs_json(&shown);
                let choice = match answer.endpoint {
                    Endpoint::Completions => json!({
                        "index": 0, "text": text, "logprobs": logprobs,
                        "finish_reason": finish_reason(finish),
                    }),
                    Endpoint::Chat => json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": null},
                        "logprobs": logprobs, "finish_reason": finish_reason(finish),
                    }),
                };
                let mut v = answer.envelope(json!([choice]), false);
                v["usage"] = usage_json(&usage);
                return Ok(Json(v));
            }
            Event::Error(message) => return Err(ApiError::new(500, "server_error", message)),
        }
    }
    Err(ApiError::new(
        500,
        "server_error",
        "the engine stopped before the answer was complete",
    ))
}
