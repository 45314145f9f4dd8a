//! Golden renders of real models' chat templates (Llama 3, 3.1, 3.2 and
//! microsoft/bitnet-b1.58-2B-4T, texts and sources in `chat_templates/`), against what Python's
//! jinja2 renders with transformers' settings (`scripts/chat_template_goldens.py`).

use std::path::PathBuf;

use hbit_serve::chat_template::{ChatTemplate, Message};
use serde_json::Value;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/chat_templates")
}

fn template(name: &str) -> ChatTemplate {
    let source = std::fs::read_to_string(dir().join(format!("{name}.jinja"))).unwrap();
    let t = ChatTemplate::new(&source, name, "<|begin_of_text|>", "<|eot_id|>").unwrap();
    t.fix_time(1_721_952_000); // 2024-07-26, the date the goldens were rendered with
    t
}

fn conversations() -> [(&'static str, Vec<Message>, bool); 3] {
    let c2 = vec![
        Message::new("system", "You are terse."),
        Message::new("user", "What is 2+2?"),
        Message::new("assistant", "4"),
        Message::new("user", "  And 3+3?  "),
    ];
    let c3 = c2[..3].to_vec();
    [
        ("C1", vec![Message::new("user", "Hello!")], true),
        ("C2", c2, true),
        ("C3", c3, false),
    ]
}

#[test]
fn templates_render_as_transformers_does() {
    let goldens: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("goldens.json")).unwrap())
            .unwrap();
    let names = ["llama3", "llama3_1", "llama3_2", "bitnet_2b4t"];
    for name in names {
        let t = template(name);
        for (case, messages, add_generation_prompt) in conversations() {
            let want = goldens[name][case]
                .as_str()
                .unwrap_or_else(|| panic!("no golden for {name} {case}"));
            let got = t.render(&messages, add_generation_prompt).unwrap();
            assert_eq!(got, want, "{name} {case}");
        }
    }
}

#[test]
fn strftime_now_follows_the_clock_it_is_given() {
    let extra: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("goldens_extra.json")).unwrap())
            .unwrap();
    let t = template("llama3_2");
    t.fix_time(1_735_776_000); // 2025-01-02
    let got = t.render(&[Message::new("user", "Hello!")], true).unwrap();
    assert_eq!(
        got,
        extra["llama3_2_C1_strftime_2025-01-02"].as_str().unwrap()
    );
}

#[test]
fn a_templates_own_exception_is_the_error_message() {
    // The built-in template refuses roles it does not know, in its own words.
    let t = ChatTemplate::builtin("", "");
    let err = t
        .render(&[Message::new("narrator", "x")], true)
        .unwrap_err();
    assert!(
        err.to_string().contains("unsupported role: narrator"),
        "{err}"
    );
}
