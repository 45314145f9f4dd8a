//! OpenAI's request and response shapes for `/v1/completions` and `/v1/chat/completions`:
//! request bodies checked field by field into a [`Parsed`] request (every error names its field,
//! as OpenAI's `param`), and the JSON of responses and stream chunks.
//!
//! A field hbit does not implement is refused (400) when it would change the output, so no
//! client gets a silently different answer; fields that change nothing (`user`, `store`,
//! `metadata`, `service_tier`) are accepted.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::chat_template::Message;
use crate::scheduler::{TokenLogprob, Usage};
use hbit_engine::{Finish, SamplingParams};

/// An error in OpenAI's envelope: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }

    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message, "type": self.kind, "param": self.param, "code": self.code,
        }})
    }
}

/// Which endpoint a body is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

/// Fields both endpoints take.
const COMMON_FIELDS: &[&str] = &[
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "seed",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "stream",
    "stream_options",
    "user",
    "ignore_eos",
    "logit_bias",
    "logprobs",
    // Accepted, and refused unless they ask for nothing beyond plain text:
    "response_format",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    // Accepted; they change no output:
    "store",
    "metadata",
    "service_tier",
];
const COMPLETION_FIELDS: &[&str] = &["prompt", "echo", "suffix", "best_of"];
const CHAT_FIELDS: &[&str] = &["messages", "max_completion_tokens", "top_logprobs"];

#[derive(Deserialize)]
struct Common {
    model: Option<String>,
    max_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    stop: Option<Stop>,
    seed: Option<i64>,
    repetition_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    n: Option<i64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    ignore_eos: Option<bool>,
    logit_bias: Option<Map<String, Value>>,
    response_format: Option<Value>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    functions: Option<Vec<Value>>,
    function_call: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct CompletionOnly {
    prompt: Option<PromptInput>,
    logprobs: Option<i64>,
    echo: Option<bool>,
    suffix: Option<String>,
    best_of: Option<i64>,
}

/// A completion prompt: text or token ids, alone or in a list of one.
#[derive(Deserialize)]
#[serde(untagged)]
enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Deserialize)]
struct ChatOnly {
    messages: Option<Vec<ChatMessage>>,
    max_completion_tokens: Option<i64>,
    logprobs: Option<bool>,
    top_logprobs: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatMessage {
    role: String,
    content: Option<Content>,
    #[allow(dead_code)] // OpenAI's participant name: accepted, not rendered
    name: Option<String>,
    // What clients send back with an assistant turn they received (the SDKs' `model_dump()`):
    // accepted while empty, refused when they carry tool calls or audio this server cannot
    // render.
    #[allow(dead_code)]
    refusal: Option<Value>,
    #[allow(dead_code)]
    annotations: Option<Value>,
    tool_calls: Option<Value>,
    function_call: Option<Value>,
    audio: Option<Value>,
    tool_call_id: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

/// A completion's prompt as the client gave it.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
    Chat(Vec<Message>),
}

/// A request body, checked.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub endpoint: Endpoint,
    pub model: Option<String>,
    pub prompt: Prompt,
    /// `None`: up to the end of the context.
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
    /// Alternatives per token when log-probabilities are asked for.
    pub logprobs: Option<usize>,
}

/// Most stop strings a request may give.
const MAX_STOP: usize = 16;
/// Longest stop string: each is matched against the answer's tail at every token.
const MAX_STOP_BYTES: usize = 256;

/// Parses and checks a request body for `endpoint`.
pub fn parse_request(body: &[u8], endpoint: Endpoint) -> Result<Parsed, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(None, format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(fields) = &value else {
        return Err(ApiError::invalid(
            None,
            "the request body must be a JSON object",
        ));
    };
    let own = match endpoint {
        Endpoint::Completions => COMPLETION_FIELDS,
        Endpoint::Chat => CHAT_FIELDS,
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| !COMMON_FIELDS.contains(&k.as_str()) && !own.contains(&k.as_str()))
    {
        return Err(ApiError::invalid(
            Some(unknown),
            format!("Unrecognized request argument supplied: {unknown}"),
        ));
    }
    let common: Common = typed(&value)?;
    let mut parsed = Parsed {
        endpoint,
        model: common.model.clone(),
        prompt: Prompt::Text(String::new()),
        max_tokens: None,
        sampling: sampling(&common)?,
        stop: stop_strings(common.stop)?,
        stream: common.stream.unwrap_or(false),
        include_usage: false,
        ignore_eos: common.ignore_eos.unwrap_or(false),
        logprobs: None,
    };
    if let Some(options) = common.stream_options {
        if !parsed.stream {
            return Err(ApiError::invalid(
                Some("stream_options"),
                "stream_options is only allowed when stream is true",
            ));
        }
        parsed.include_usage = options.include_usage.unwrap_or(false);
    }
    match common.n {
        None | Some(1) => {}
        Some(n) => {
            return Err(ApiError::invalid(
                Some("n"),
                format!("n = {n}: this server returns one choice per request (n = 1)"),
            ))
        }
    }
    refuse_unsupported(&common.logit_bias, &common.response_format)?;
    for (name, given) in [
        (
            "tools",
            common.tools.as_ref().is_some_and(|t| !t.is_empty()),
        ),
        (
            "functions",
            common.functions.as_ref().is_some_and(|t| !t.is_empty()),
        ),
        (
            "tool_choice",
            matches!(&common.tool_choice, Some(v) if v != "none"),
        ),
        (
            "function_call",
            matches!(&common.function_call, Some(v) if v != "none"),
        ),
    ] {
        if given {
            return Err(ApiError::invalid(
                Some(name),
                format!("{name}: tool and function calling is not supported by this server"),
            ));
        }
    }
    let max_tokens = match endpoint {
        Endpoint::Completions => {
            let only: CompletionOnly = typed(&value)?;
            parsed.prompt = completion_prompt(only.prompt)?;
            if only.echo == Some(true) {
                return Err(ApiError::invalid(Some("echo"), "echo is not supported"));
            }
            if only.suffix.is_some_and(|s| !s.is_empty()) {
                return Err(ApiError::invalid(Some("suffix"), "suffix is not supported"));
            }
            if let Some(b) = only.best_of.filter(|&b| b != 1) {
                return Err(ApiError::invalid(
                    Some("best_of"),
                    format!("best_of = {b}: only 1 is supported"),
                ));
            }
            parsed.logprobs = match only.logprobs {
                None => None,
                Some(k @ 0..=20) => Some(k as usize),
                Some(k) => {
                    return Err(ApiError::invalid(
                        Some("logprobs"),
                        format!("logprobs must be between 0 and 20, found {k}"),
                    ))
                }
            };
            common.max_tokens
        }
        Endpoint::Chat => {
            let only: ChatOnly = typed(&value)?;
            parsed.prompt = Prompt::Chat(chat_messages(only.messages)?);
            parsed.logprobs = match (only.logprobs, only.top_logprobs) {
                (Some(true), None) => Some(0),
                (Some(true), Some(k @ 0..=20)) => Some(k as usize),
                (_, Some(k)) if !(0..=20).contains(&k) => {
                    return Err(ApiError::invalid(
                        Some("top_logprobs"),
                        format!("top_logprobs must be between 0 and 20, found {k}"),
                    ))
                }
                (_, Some(_)) => {
                    return Err(ApiError::invalid(
                        Some("top_logprobs"),
                        "top_logprobs requires logprobs to be true",
                    ))
                }
                _ => None,
            };
            only.max_completion_tokens.or(common.max_tokens)
        }
    };
    parsed.max_tokens = match max_tokens {
        None => None,
        Some(n) if n >= 1 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        Some(n) => {
            let name = match endpoint {
                Endpoint::Chat if fields.contains_key("max_completion_tokens") => {
                    "max_completion_tokens"
                }
                _ => "max_tokens",
            };
            return Err(ApiError::invalid(
                Some(name),
                format!("{name} must be at least 1, found {n}"),
            ));
        }
    };
    Ok(parsed)
}

/// Deserializes `value` into `T`, naming the field of the first error.
fn typed<T: DeserializeOwned>(value: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let param = path.split(['.', '[']).next().unwrap_or("").to_string();
        ApiError::invalid(
            (!param.is_empty() && param != "?").then_some(param.as_str()),
            format!("{path}: {inner}"),
        )
    })
}

fn sampling(c: &Common) -> Result<SamplingParams, ApiError> {
    let range = |name: &str, v: Option<f32>, lo: f32, hi: f32, default: f32| match v {
        None => Ok(default),
        Some(x) if x.is_finite() && x >= lo && x <= hi => Ok(x),
        Some(x) => Err(ApiError::invalid(
            Some(name),
            format!("{name} must be between {lo} and {hi}, found {x}"),
        )),
    };
    let top_p = range("top_p", c.top_p, 0.0, 1.0, 1.0)?;
    if top_p == 0.0 {
        return Err(ApiError::invalid(Some("top_p"), "top_p must be above 0"));
    }
    let repetition_penalty = range("repetition_penalty", c.repetition_penalty, 0.01, 10.0, 1.0)?;
    let top_k = match c.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
        Some(k) => {
            return Err(ApiError::invalid(
                Some("top_k"),
                format!("top_k must be -1 (off) or positive, found {k}"),
            ))
        }
    };
    Ok(SamplingParams {
        temperature: range("temperature", c.temperature, 0.0, 2.0, 1.0)?,
        top_k,
        top_p,
        repetition_penalty,
        presence_penalty: range("presence_penalty", c.presence_penalty, -2.0, 2.0, 0.0)?,
        frequency_penalty: range("frequency_penalty", c.frequency_penalty, -2.0, 2.0, 0.0)?,
        // A seed given as any 64-bit integer reproduces the answer; without one, each request
        // samples afresh, as OpenAI's API does.
        seed: c.seed.map_or_else(fresh_seed, |s| s as u64),
    })
}

fn stop_strings(stop: Option<Stop>) -> Result<Vec<String>, ApiError> {
    let list = match stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if list.len() > MAX_STOP {
        return Err(ApiError::invalid(
            Some("stop"),
            format!("at most {MAX_STOP} stop strings, found {}", list.len()),
        ));
    }
    if list.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            Some("stop"),
            "stop strings must not be empty",
        ));
    }
    if let Some(long) = list.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid(
            Some("stop"),
            format!(
                "stop strings may be at most {MAX_STOP_BYTES} bytes, found one of {}",
                long.len()
            ),
        ));
    }
    Ok(list)
}

fn refuse_unsupported(
    logit_bias: &Option<Map<String, Value>>,
    response_format: &Option<Value>,
) -> Result<(), ApiError> {
    if logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(ApiError::invalid(
            Some("logit_bias"),
            "logit_bias is not supported by this server",
        ));
    }
    match response_format {
        None | Some(Value::Null) => Ok(()),
        Some(v) if v.get("type").and_then(Value::as_str) == Some("text") => Ok(()),
        Some(_) => Err(ApiError::invalid(
            Some("response_format"),
            "response_format: only {\"type\": \"text\"} is supported",
        )),
    }
}

fn completion_prompt(prompt: Option<PromptInput>) -> Result<Prompt, ApiError> {
    let one = |n: usize| {
        Err(ApiError::invalid(
            Some("prompt"),
            format!("prompt: a list of {n} prompts; this server takes one prompt per request"),
        ))
    };
    match prompt {
        None => Err(ApiError::invalid(Some("prompt"), "prompt is required")),
        Some(PromptInput::Text(t)) => Ok(Prompt::Text(t)),
        Some(PromptInput::Tokens(t)) => Ok(Prompt::Tokens(t)),
        Some(PromptInput::Texts(mut v)) if v.len() == 1 => Ok(Prompt::Text(v.remove(0))),
        Some(PromptInput::TokenLists(mut v)) if v.len() == 1 => Ok(Prompt::Tokens(v.remove(0))),
        Some(PromptInput::Texts(v)) => one(v.len()),
        Some(PromptInput::TokenLists(v)) => one(v.len()),
    }
}

fn chat_messages(messages: Option<Vec<ChatMessage>>) -> Result<Vec<Message>, ApiError> {
    let messages =
        messages.ok_or_else(|| ApiError::invalid(Some("messages"), "messages is required"))?;
    if messages.is_empty() {
        return Err(ApiError::invalid(
            Some("messages"),
            "messages must not be empty",
        ));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        let carried = [
            ("tool_calls", &m.tool_calls),
            ("function_call", &m.function_call),
            ("audio", &m.audio),
            ("tool_call_id", &m.tool_call_id),
        ];
        if let Some((field, _)) = carried.iter().find(|(_, v)| !is_empty(v)) {
            return Err(ApiError::invalid(
                Some("messages"),
                format!("messages[{i}].{field}: tool calls and audio are not supported"),
            ));
        }
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.into_iter().enumerate() {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(ApiError::invalid(
                                Some("messages"),
                                format!(
                                    "messages[{i}].content[{j}]: content of type {kind:?} is not \
                                     supported (text only)"
                                ),
                            ))
                        }
                    }
                }
                text
            }
        };
        out.push(Message {
            role: m.role,
            content,
        });
    }
    Ok(out)
}

/// A seed for a request that gave none: the clock and a counter, mixed.
fn fresh_seed() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    hbit_model::rng::SplitMix64::new(nanos ^ n.rotate_left(32)).next_u64()
}

/// Absent, null, or an empty list, object or string.
fn is_empty(v: &Option<Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        Some(Value::String(t)) => t.is_empty(),
        Some(_) => false,
    }
}

pub fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop | Finish::EndOfText => "stop",
        Finish::Length | Finish::Context => "length",
    }
}

pub fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

/// One generated token with its log-probability, as the response shows it.
#[derive(Debug, Clone)]
pub struct ShownLogprob {
    pub text: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

impl ShownLogprob {
    pub fn new(token_text: impl Fn(u32) -> String, token: u32, lp: &TokenLogprob) -> ShownLogprob {
        ShownLogprob {
            text: token_text(token),
            logprob: lp.logprob,
            top: lp.top.iter().map(|&(t, l)| (token_text(t), l)).collect(),
        }
    }
}

/// Chat's `logprobs`: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
pub fn chat_logprobs_json(tokens: &[ShownLogprob]) -> Value {
    let entry = |text: &str, logprob: f32| json!({"token": text, "logprob": logprob, "bytes": text.as_bytes()});
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut e = entry(&t.text, t.logprob);
            e["top_logprobs"] = t.top.iter().map(|(s, l)| entry(s, *l)).collect();
            e
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// The completions API's `logprobs`: parallel lists, and `text_offset` from `offset` on.
pub fn completion_logprobs_json(tokens: &[ShownLogprob], offset: usize) -> Value {
    let mut at = offset;
    let offsets: Vec<usize> = tokens
        .iter()
        .map(|t| {
            let o = at;
            at += t.text.len();
            o
        })
        .collect();
    let top: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut m = Map::new();
            for (s, l) in &t.top {
                m.entry(s.clone()).or_insert(json!(l));
            }
            Value::Object(m)
        })
        .collect();
    json!({
        "tokens": tokens.iter().map(|t| t.text.clone()).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": offsets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str, endpoint: Endpoint) -> Result<Parsed, ApiError> {
        parse_request(body.as_bytes(), endpoint)
    }

    fn param_of(body: &str, endpoint: Endpoint) -> Option<String> {
        parse(body, endpoint).unwrap_err().param
    }

    #[test]
    fn a_full_completion_request_parses() {
        let p = parse(
            r#"{"model":"m","prompt":"Hi","max_tokens":5,"temperature":0,"top_p":0.9,"top_k":4,
                "stop":["a","b"],"seed":-3,"presence_penalty":0.5,"frequency_penalty":0.25,
                "repetition_penalty":1.1,"n":1,"stream":true,"stream_options":{"include_usage":true},
                "user":"u","logprobs":2,"ignore_eos":true}"#,
            Endpoint::Completions,
        )
        .unwrap();
        assert_eq!(p.prompt, Prompt::Text("Hi".into()));
        assert_eq!(p.max_tokens, Some(5));
        assert_eq!(p.stop, ["a", "b"]);
        assert!(p.stream && p.include_usage && p.ignore_eos);
        assert_eq!(p.logprobs, Some(2));
        let s = &p.sampling;
        assert_eq!((s.temperature, s.top_k, s.top_p), (0.0, 4, 0.9));
        assert_eq!((s.presence_penalty, s.frequency_penalty), (0.5, 0.25));
        assert_eq!(s.seed, (-3i64) as u64);
    }

    #[test]
    fn prompts_take_every_openai_form_of_one_prompt() {
        let prompt = |v: &str| parse(&format!(r#"{{"prompt":{v}}}"#), Endpoint::Completions);
        assert_eq!(
            prompt("[1,2,3]").unwrap().prompt,
            Prompt::Tokens(vec![1, 2, 3])
        );
        assert_eq!(prompt(r#"["x"]"#).unwrap().prompt, Prompt::Text("x".into()));
        assert_eq!(prompt("[[4]]").unwrap().prompt, Prompt::Tokens(vec![4]));
        assert_eq!(
            prompt(r#"["x","y"]"#).unwrap_err().param.as_deref(),
            Some("prompt")
        );
        assert_eq!(prompt("[-1]").unwrap_err().param.as_deref(), Some("prompt"));
    }

    #[test]
    fn chat_messages_take_text_parts_and_logprobs() {
        let p = parse(
            r#"{"messages":[{"role":"system","content":"S"},
                {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
                "max_completion_tokens":7,"logprobs":true,"top_logprobs":3}"#,
            Endpoint::Chat,
        )
        .unwrap();
        assert_eq!(
            p.prompt,
            Prompt::Chat(vec![
                Message::new("system", "S"),
                Message::new("user", "ab")
            ])
        );
        assert_eq!((p.max_tokens, p.logprobs), (Some(7), Some(3)));
        let image =
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#;
        assert_eq!(param_of(image, Endpoint::Chat).as_deref(), Some("messages"));
    }

    #[test]
    fn bad_bodies_name_their_field() {
        let cases = [
            (r#"{"prompt":"x","max_tokens":-5}"#, "max_tokens"),
            (r#"{"prompt":"x","max_tokens":"ten"}"#, "max_tokens"),
            (r#"{"prompt":"x","temperature":3}"#, "temperature"),
            (r#"{"prompt":"x","top_p":0}"#, "top_p"),
            (r#"{"prompt":"x","top_k":-2}"#, "top_k"),
            (r#"{"prompt":"x","n":2}"#, "n"),
            (r#"{"prompt":"x","stop":[""]}"#, "stop"),
            (r#"{"prompt":"x","stop":7}"#, "stop"),
            (r#"{"prompt":"x","logit_bias":{"5":10}}"#, "logit_bias"),
            (
                r#"{"prompt":"x","response_format":{"type":"json_object"}}"#,
                "response_format",
            ),
            (r#"{"prompt":"x","tools":[{"type":"function"}]}"#, "tools"),
            (r#"{"prompt":"x","echo":true}"#, "echo"),
            (r#"{"prompt":"x","logprobs":21}"#, "logprobs"),
            (r#"{"prompt":"x","frobnicate":1}"#, "frobnicate"),
            (
                r#"{"prompt":"x","stream_options":{"include_usage":true}}"#,
                "stream_options",
            ),
            (
                r#"{"prompt":"x","presence_penalty":2.5}"#,
                "presence_penalty",
            ),
            (r#"{"prompt":"x","messages":[]}"#, "messages"),
        ];
        for (body, field) in cases {
            let err = parse(body, Endpoint::Completions).unwrap_err();
            assert_eq!(err.status, 400, "{body}");
            assert_eq!(err.param.as_deref(), Some(field), "{body}: {}", err.message);
        }
        let long_stop = format!(r#"{{"prompt":"x","stop":"{}"}}"#, "A".repeat(300));
        assert_eq!(
            param_of(&long_stop, Endpoint::Completions).as_deref(),
            Some("stop")
        );
        let chat = [
            (r#"{"messages":"hi"}"#, "messages"),
            (r#"{"messages":[]}"#, "messages"),
            (
                r#"{"messages":[{"role":"user"}],"top_logprobs":2}"#,
                "top_logprobs",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_completion_tokens":0}"#,
                "max_completion_tokens",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"prompt":"x"}"#,
                "prompt",
            ),
        ];
        for (body, field) in chat {
            let err = parse(body, Endpoint::Chat).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(field), "{body}: {}", err.message);
        }
        for body in ["", "[1]", "{\"prompt\":", "\"x\""] {
            assert_eq!(parse(body, Endpoint::Completions).unwrap_err().status, 400);
        }
        // Invalid UTF-8 inside a string.
        let bad = b"{\"prompt\":\"\xff\xfe\"}";
        assert_eq!(
            parse_request(bad, Endpoint::Completions)
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn logprob_shapes() {
        let t = [
            ShownLogprob {
                text: "ab".into(),
                logprob: -0.5,
                top: vec![("ab".into(), -0.5), ("c".into(), -1.0)],
            },
            ShownLogprob {
                text: "c".into(),
                logprob: -2.0,
                top: vec![],
            },
        ];
        let c = completion_logprobs_json(&t, 3);
        assert_eq!(c["text_offset"], json!([3, 5]));
        assert_eq!(c["tokens"], json!(["ab", "c"]));
        assert_eq!(c["top_logprobs"][0]["c"], json!(-1.0));
        let chat = chat_logprobs_json(&t);
        assert_eq!(chat["content"][0]["bytes"], json!([97, 98]));
        assert_eq!(chat["content"][0]["top_logprobs"][1]["token"], json!("c"));
    }
}
