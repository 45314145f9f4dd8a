//! `hbit serve` and `hbit chat` through the binary: the server answers as `hbit generate
//! --greedy` does and stops on SIGTERM; the chat keeps history, resets and quits; bad flags fail
//! with an error naming them. Servers listen on 127.0.0.1 only, on ports the OS picks.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hbit_serve::client::{post_json, request};

fn hbit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hbit"))
}

/// A loopback port free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn serve_answers_as_generate_does_and_stops_on_sigterm() {
    let port = free_port();
    let mut child = hbit()
        .args([
            "serve",
            "--port",
            &port.to_string(),
            "--threads",
            "1",
            "--quiet",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        hbit_serve::wait_until_healthy(addr, Duration::from_secs(60)),
        "the server did not become healthy"
    );
    let body =
        serde_json::json!({"prompt": "Once upon a time", "max_tokens": 20, "temperature": 0});
    let answer = post_json(addr, "/v1/completions", &body)
        .unwrap()
        .json()
        .unwrap();
    let text = answer["choices"][0]["text"].as_str().unwrap().to_string();
    let out = hbit()
        .args([
            "generate",
            "--prompt",
            "Once upon a time",
            "--max-tokens",
            "20",
            "--greedy",
        ])
        .output()
        .unwrap();
    let generated = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        generated.trim_end_matches('\n'),
        format!("Once upon a time{text}")
    );
    let models = request(addr, "GET", "/v1/models", &[], None)
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(models["data"][0]["id"], "hbit-tiny-v2-a4");

    // SIGTERM: the server stops and exits cleanly.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = Instant::now();
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn serve_refuses_bad_flags_with_an_error_naming_them() {
    let cases: [(&[&str], &str); 5] = [
        (&["--ctx", "100000"], "--ctx 100000"),
        (&["--kv-bits", "5"], "--kv-bits 5"),
        (&["--step-time-factor", "0.5"], "--step-time-factor"),
        (
            &["--api-key-file", "/nonexistent/keys"],
            "/nonexistent/keys",
        ),
        (&["--max-seqs", "0"], "--max-seqs"),
    ];
    for (flags, expected) in cases {
        let port = free_port().to_string();
        let out = hbit()
            .args(["serve", "--port", &port])
            .args(flags)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flags:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{flags:?}: {stderr}");
    }
}

#[test]
fn chat_keeps_history_resets_and_quits() {
    let mut child = hbit()
        .args([
            "chat",
            "--temperature",
            "0",
            "--max-tokens",
            "8",
            "--threads",
            "1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"Hello there\nTell me more\n/reset\nHello there\n/quit\nnever read\n")
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    // Four prompts were shown for four inputs before /quit; the answer to the first message
    // comes again after /reset (greedy, same history).
    let answers: Vec<&str> = stdout.split("> ").skip(1).collect();
    assert_eq!(answers.len(), 5, "{stdout:?}");
    assert_eq!(answers[2].trim(), "(history cleared)");
    assert_eq!(answers[0], answers[3], "a reset conversation starts over");
    assert_ne!(answers[0].trim(), "", "no answer: {stdout:?}");
}
