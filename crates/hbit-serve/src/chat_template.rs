//! Chat templates: a conversation rendered to the prompt text a model was tuned on, with the
//! Jinja semantics of HF transformers' `apply_chat_template` (blocks trimmed and left-stripped,
//! `raise_exception`, `strftime_now`, Python string methods, `bos_token` / `eos_token` /
//! `add_generation_prompt` in scope), so a checkpoint's own `chat_template` renders as it does
//! in Python.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::{Environment, ErrorKind, Value};
use serde::Serialize;

/// The template of hbit's own models, which are base models with no chat tokens: turns as
/// `User:` / `Assistant:` paragraphs, a system message as a first paragraph of its own. The
/// answer ends where the model starts the next user turn (see [`BUILTIN_STOP`]).
pub const BUILTIN_TEMPLATE: &str = "\
{%- for message in messages -%}
{%- if message['role'] == 'system' or message['role'] == 'developer' -%}
{{ message['content'] | trim }}{{ '\\n\\n' }}
{%- elif message['role'] == 'user' -%}
{{ 'User: ' }}{{ message['content'] | trim }}{{ '\\n\\n' }}
{%- elif message['role'] == 'assistant' -%}
{{ 'Assistant: ' }}{{ message['content'] | trim }}{{ '\\n\\n' }}
{%- else -%}
{{ raise_exception('unsupported role: ' ~ message['role'] ~ ' (expected system, user or assistant)') }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}";

/// Text that ends an answer under [`BUILTIN_TEMPLATE`]: the model beginning the next turn.
pub const BUILTIN_STOP: &[&str] = &["\nUser:"];

/// Special tokens that end a turn in the common chat formats (Llama 3, ChatML, Phi, Gemma,
/// SentencePiece); those present in a model's vocabulary end generation.
pub const END_OF_TURN_TOKENS: &[&str] = &[
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "</s>",
];

/// One message of a conversation, as OpenAI's chat API and HF templates name its fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template text does not compile.
    #[error("chat template does not parse: {0}")]
    Syntax(String),
    /// Rendering failed, including the template's own `raise_exception`.
    #[error("chat template: {0}")]
    Render(String),
}

/// A compiled chat template and the special-token strings it sees.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where the text came from (shown in errors and `/v1/models`).
    pub origin: String,
    pub bos_token: String,
    pub eos_token: String,
    /// Extra stop strings that end an answer (the built-in template's next-turn marker).
    pub stop: Vec<String>,
    /// Unix time `strftime_now` reports when set (0: the clock), for reproducible renders.
    fixed_time: Arc<AtomicU64>,
}

impl ChatTemplate {
    /// Compiles `source` with HF's settings.
    pub fn new(
        source: &str,
        origin: &str,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<ChatTemplate, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        let fixed_time = Arc::new(AtomicU64::new(0));
        let clock = fixed_time.clone();
        env.add_function("strftime_now", move |format: String| {
            let secs = match clock.load(Ordering::Relaxed) {
                0 => SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                fixed => fixed,
            };
            strftime(secs, &format)
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| TemplateError::Syntax(format!("{origin}: {e:#}")))?;
        Ok(ChatTemplate {
            env,
            origin: origin.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            stop: Vec::new(),
            fixed_time,
        })
    }

    /// Makes `strftime_now` report Unix time `secs` instead of the clock's.
    pub fn fix_time(&self, secs: u64) {
        self.fixed_time.store(secs, Ordering::Relaxed);
    }

    /// hbit's built-in template ([`BUILTIN_TEMPLATE`]) with the model's BOS / EOS strings.
    pub fn builtin(bos_token: &str, eos_token: &str) -> ChatTemplate {
        let mut t = ChatTemplate::new(BUILTIN_TEMPLATE, "built-in", bos_token, eos_token)
            .expect("the built-in template compiles (tested)");
        t.stop = BUILTIN_STOP.iter().map(|s| s.to_string()).collect();
        t
    }

    /// Renders `messages`, ending with the assistant's turn opening when `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| TemplateError::Render(e.to_string()))?;
        // As transformers renders: `tools` and `documents` given, as none.
        let ctx = minijinja::context! {
            messages => messages,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
            add_generation_prompt => add_generation_prompt,
            tools => (),
            documents => (),
        };
        template.render(ctx).map_err(|e| {
            // `raise_exception` carries the template's own message: show it alone.
            let detail = e.detail().map(str::to_string);
            match (e.kind(), detail) {
                (ErrorKind::InvalidOperation, Some(d)) => TemplateError::Render(d),
                _ => TemplateError::Render(format!("{e:#}")),
            }
        })
    }
}

fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// `strftime_now(format)` of the templates (`%d %b %Y` in Llama 3.2's "Today Date"): Unix time
/// `secs` (UTC) formatted with the strftime directives %Y %y %m %d %e %B %b %A %a %H %M
/// %S %j %%.
pub fn strftime(secs: u64, format: &str) -> Result<String, minijinja::Error> {
    let days = (secs / 86_400) as i64;
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let (h, m, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let piece = match chars.next() {
            Some('Y') => year.to_string(),
            Some('y') => format!("{:02}", year.rem_euclid(100)),
            Some('m') => format!("{month:02}"),
            Some('d') => format!("{day:02}"),
            Some('e') => format!("{day:>2}"),
            Some('B') => MONTHS[month as usize - 1].to_string(),
            Some('b') => MONTHS[month as usize - 1][..3].to_string(),
            Some('A') => WEEKDAYS[weekday].to_string(),
            Some('a') => WEEKDAYS[weekday][..3].to_string(),
            Some('H') => format!("{h:02}"),
            Some('M') => format!("{m:02}"),
            Some('S') => format!("{s:02}"),
            Some('j') => format!("{day_of_year:03}"),
            Some('%') => "%".to_string(),
            other => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: unsupported directive %{}",
                        other.map_or(String::new(), String::from)
                    ),
                ))
            }
        };
        out.push_str(&piece);
    }
    Ok(out)
}

/// Proleptic Gregorian date of day `z` since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the inverse of [`civil_from_days`]).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_template_renders_turns_and_the_generation_prompt() {
        let t = ChatTemplate::builtin("<|endoftext|>", "<|endoftext|>");
        let messages = [
            Message::new("system", " Be brief. "),
            Message::new("user", "Hi"),
            Message::new("assistant", "Hello."),
            Message::new("user", "Who are you?\n"),
        ];
        assert_eq!(
            t.render(&messages, true).unwrap(),
            "Be brief.\n\nUser: Hi\n\nAssistant: Hello.\n\nUser: Who are you?\n\nAssistant:"
        );
        assert_eq!(t.render(&messages[1..2], false).unwrap(), "User: Hi\n\n");
        let err = t.render(&[Message::new("tool", "x")], true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "chat template: unsupported role: tool (expected system, user or assistant)"
        );
    }

    #[test]
    fn hf_semantics_trim_blocks_python_methods_and_bos() {
        // trim_blocks drops the newline after a block tag; lstrip_blocks the indentation
        // before one; `.strip()` and `.title()` are Python's string methods.
        let source = "{{ bos_token }}\n  {% for m in messages %}\n[{{ m.role.title() }}] {{ m.content.strip() }}\n  {% endfor %}\n{% if add_generation_prompt %}[Assistant]{% endif %}";
        let t = ChatTemplate::new(source, "test", "<s>", "</s>").unwrap();
        let out = t
            .render(
                &[
                    Message::new("user", "  hi  "),
                    Message::new("assistant", "yo"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(out, "<s>\n[User] hi\n[Assistant] yo\n[Assistant]");
    }

    #[test]
    fn syntax_errors_name_the_origin() {
        let err = ChatTemplate::new("{% for %}", "model.hbit", "", "")
            .err()
            .expect("a broken template is refused");
        assert!(err.to_string().contains("model.hbit"), "{err}");
    }

    #[test]
    fn strftime_known_dates() {
        // 2024-07-26 00:00:00 UTC = 1721952000; 2000-02-29 12:34:56 = 951827696.
        assert_eq!(strftime(1_721_952_000, "%d %b %Y").unwrap(), "26 Jul 2024");
        assert_eq!(
            strftime(951_827_696, "%A %Y-%m-%d %H:%M:%S %j %y %%").unwrap(),
            "Tuesday 2000-02-29 12:34:56 060 00 %"
        );
        assert_eq!(strftime(0, "%a %e %B").unwrap(), "Thu  1 January");
        assert!(strftime(0, "%Q").is_err());
    }
}
