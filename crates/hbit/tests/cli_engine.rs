//! The engine commands end to end through the binary: init → pack → logits (framework vs
//! engine) → generate, and clear errors for bad models and prompts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn hbit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hbit"))
        .args(args)
        .output()
        .expect("running hbit")
}

fn ok(args: &[&str]) -> String {
    let out = hbit(args);
    assert!(
        out.status.success(),
        "hbit {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn err(args: &[&str]) -> String {
    let out = hbit(args);
    assert!(!out.status.success(), "hbit {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hbit-cli-engine-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn logits(json: &str) -> Vec<Vec<f64>> {
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn init_pack_logits_generate() {
    let dir = tempdir("flow");
    let ckpt = dir.join("ckpt");
    let model = dir.join("model.hbit");
    ok(&[
        "init",
        "--preset",
        "micro",
        "--variant",
        "bitnet_v2",
        "--act-bits",
        "4",
        "--seed",
        "3",
        "--out",
        s(&ckpt),
    ]);
    let packed = ok(&[
        "pack",
        "--model",
        s(&ckpt),
        "--out",
        s(&model),
        "--embed-dtype",
        "f32",
    ]);
    assert!(packed.contains("bitnet_v2 a4"), "{packed}");
    // Either INT4 layout on request (the default is this CPU's faster one).
    let layouts = [dir.join("pairs.hbit"), dir.join("triples.hbit")];
    for (path, layout) in layouts.iter().zip(["pairs", "triples"]) {
        let out = ok(&[
            "pack",
            "--model",
            s(&ckpt),
            "--out",
            s(path),
            "--embed-dtype",
            "f32",
            "--int4-layout",
            layout,
        ]);
        assert!(out.contains(&format!("INT4 layout {layout}")), "{out}");
    }

    // Framework and engine (from the checkpoint and from the packed files) agree.
    let tokens = "5,17,300,2,99,45";
    let framework = logits(&ok(&[
        "logits",
        "--model",
        s(&ckpt),
        "--tokens",
        tokens,
        "--json",
    ]));
    for m in [&ckpt, &model, &layouts[0], &layouts[1]] {
        let engine = logits(&ok(&[
            "logits",
            "--model",
            s(m),
            "--tokens",
            tokens,
            "--json",
            "--engine",
        ]));
        assert_eq!(engine.len(), 6);
        let scale = framework
            .iter()
            .flatten()
            .fold(0.0f64, |a, b| a.max(b.abs()));
        let diff = framework
            .iter()
            .flatten()
            .zip(engine.iter().flatten())
            .fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
        assert!(diff / scale < 1e-5, "{}: {diff}", m.display());
    }

    // A tokenizer, then generation from the packed model (greedy: reproducible).
    let text = dir.join("corpus.txt");
    std::fs::write(
        &text,
        "the cat sat on the mat. the dog sat on the log. ".repeat(50),
    )
    .unwrap();
    let tok = dir.join("tok.json");
    ok(&[
        "tokenizer",
        "train",
        "--data",
        s(&text),
        "--vocab-size",
        "300",
        "--out",
        s(&tok),
    ]);
    let gen = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            s(&model),
            "--tokenizer",
            s(&tok),
            "--max-tokens",
            "6",
            "--greedy",
        ];
        args.extend_from_slice(extra);
        ok(&args)
    };
    let a = gen(&["--prompt", "the cat"]);
    assert!(a.starts_with("the cat"), "{a}");
    assert_eq!(a, gen(&["--prompt", "the cat"]));
    assert_ne!(
        gen(&["--prompt", "the cat", "--kv-bits", "3", "--q-bits", "4"]),
        ""
    );

    // Perplexity of the corpus on the engine: every token scored, a finite perplexity.
    let ppl = ok(&[
        "eval",
        "ppl",
        "--model",
        s(&model),
        "--tokenizer",
        s(&tok),
        "--data",
        s(&text),
        "--context",
        "32",
        "--stride",
        "16",
        "--json",
    ]);
    let ppl: serde_json::Value = serde_json::from_str(ppl.trim()).unwrap();
    assert!(ppl["tokens"].as_u64().unwrap() > 100, "{ppl}");
    assert_eq!(
        ppl["windows"].as_u64().unwrap(),
        ppl["tokens"].as_u64().unwrap().div_ceil(16)
    );
    let p = ppl["perplexity"].as_f64().unwrap();
    assert!(p.is_finite() && p > 1.0, "{ppl}");

    // A batch file of prompts, JSON out.
    let batch = dir.join("prompts.txt");
    std::fs::write(&batch, "the cat\n{\"prompt\": \"the dog\"}\n").unwrap();
    let out = gen(&["--batch-file", s(&batch), "--json"]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["prompt"], "the dog");
    assert_eq!(lines[0]["finish"], "length");
    assert_eq!(lines[0]["tokens"].as_array().unwrap().len(), 6);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_models_and_prompts_are_clear_errors() {
    let dir = tempdir("errors");
    let model = dir.join("model.hbit");
    ok(&[
        "init",
        "--dummy",
        "--shape",
        "b125m",
        "--act-bits",
        "4",
        "--out",
        s(&model),
    ]);
    // Truncated file.
    let bytes = std::fs::read(&model).unwrap();
    let cut = dir.join("cut.hbit");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = err(&["generate", "--model", s(&cut), "--prompt", "hi"]);
    assert!(
        e.contains("cut.hbit") && e.contains("not a complete hbit packed model"),
        "{e}"
    );
    // Not a model.
    let e = err(&[
        "logits",
        "--engine",
        "--model",
        s(&dir.join("missing.hbit")),
        "--tokens",
        "1",
    ]);
    assert!(e.contains("missing.hbit"), "{e}");
    // No tokenizer inside a dummy model.
    let e = err(&["generate", "--model", s(&model), "--prompt", "hi"]);
    assert!(e.contains("no tokenizer"), "{e}");
    // An unknown INT4 layout is named, and nothing is written.
    let quads = dir.join("quads.hbit");
    let e = err(&[
        "init",
        "--dummy",
        "--shape",
        "b125m",
        "--act-bits",
        "4",
        "--int4-layout",
        "quads",
        "--out",
        s(&quads),
    ]);
    assert!(
        e.contains("INT4 weight layout") && e.contains("quads"),
        "{e}"
    );
    assert!(!quads.exists());
    // Token ids outside the vocabulary.
    let e = err(&[
        "logits",
        "--engine",
        "--model",
        s(&model),
        "--tokens",
        "999999",
    ]);
    assert!(e.contains("outside the vocabulary"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The bundled model (models/, committed with its model card) is what commands use without
/// `--model`: it loads, carries its tokenizer, and generates reproducibly.
#[test]
fn bundled_model_is_the_default() {
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/hbit-tiny-v2-a4.hbit");
    assert!(bundled.is_file(), "{} is missing", bundled.display());
    let args = [
        "generate",
        "--prompt",
        "Once upon a time",
        "--max-tokens",
        "8",
        "--greedy",
    ];
    let default = ok(&args);
    let explicit = ok(&[&args[..], &["--model", s(&bundled)]].concat());
    assert_eq!(default, explicit);
    assert!(
        default.starts_with("Once upon a time") && default.len() > 16,
        "{default}"
    );
    // The default LM head is the 4-bit copy (hidden 256 is a multiple of 64); other widths
    // run, and one that does not exist is named.
    assert_eq!(default, ok(&[&args[..], &["--head-bits", "4"]].concat()));
    for bits in ["16", "8", "6"] {
        let text = ok(&[&args[..], &["--head-bits", bits]].concat());
        assert!(text.starts_with("Once upon a time"), "{bits}: {text}");
    }
    let e = err(&[&args[..], &["--head-bits", "5"]].concat());
    assert!(
        e.contains("--head-bits 5") && e.contains("expected 16"),
        "{e}"
    );
    let logits_json = logits(&ok(&[
        "logits",
        "--engine",
        "--model",
        s(&bundled),
        "--tokens",
        "0,1,2",
        "--json",
    ]));
    assert_eq!(logits_json.len(), 3);
    assert_eq!(logits_json[0].len(), 8192); // the bundled model's vocabulary
}

/// `bench e2e --alternate` loads a shape's a8 and a4 models together and takes their rounds in
/// turn: with one round (`--quick`), the a4 line's ratio is exactly its tokens/s over the a8
/// line's, the a8 line has none, and resident memory is not attributed to either model.
#[test]
fn bench_e2e_alternate_reports_ratios_to_int8() {
    let dir = tempdir("alternate");
    let out = ok(&[
        "bench",
        "e2e",
        "--quick",
        "--alternate",
        "--json",
        "--cache-dir",
        s(&dir),
    ]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    let (a8, a4) = (&lines[0], &lines[1]);
    assert_eq!(
        (a8["act_bits"].as_u64(), a4["act_bits"].as_u64()),
        (Some(8), Some(4))
    );
    for line in &lines {
        assert_eq!(line["alternated"], true);
        assert!(line["rss_bytes"].is_null() && line["rss_uncollected_bytes"].is_null());
        assert!(line["decode_tok_s"].as_f64().unwrap() > 0.0);
    }
    assert!(a8["decode_vs_int8_median"].is_null() && a8["prefill_vs_int8_median"].is_null());
    for (ratio, speed) in [
        ("decode_vs_int8_median", "decode_tok_s"),
        ("prefill_vs_int8_median", "prefill_tok_s"),
    ] {
        let want = a4[speed].as_f64().unwrap() / a8[speed].as_f64().unwrap();
        // Within an ulp or two: serde_json's default float parsing is not exactly rounded.
        let got = a4[ratio].as_f64().unwrap();
        assert!(
            (got - want).abs() <= 1e-12 * want,
            "{ratio}: {got} vs {want}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn verify_catches_a_flipped_byte_and_no_verify_skips_the_check() {
    let dir = tempdir("verify");
    let ckpt = dir.join("ckpt");
    let model = dir.join("model.hbit");
    ok(&["init", "--preset", "micro", "--out", s(&ckpt)]);
    ok(&["pack", "--model", s(&ckpt), "--out", s(&model)]);
    let report = ok(&["verify", "--model", s(&model)]);
    assert!(report.contains("ok, xxh3-64:"), "{report}");

    // One bit of the embedding (the file's last tensor bytes): loads refuse, naming the file.
    let mut bytes = std::fs::read(&model).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x01;
    let damaged = dir.join("damaged.hbit");
    std::fs::write(&damaged, &bytes).unwrap();
    let e = err(&["verify", "--model", s(&damaged)]);
    assert!(
        e.contains("damaged.hbit") && e.contains("checksum mismatch"),
        "{e}"
    );
    let generate = [
        "logits",
        "--engine",
        "--model",
        s(&damaged),
        "--tokens",
        "1,2",
    ];
    let e = err(&generate);
    assert!(e.contains("checksum mismatch"), "{e}");
    // `--no-verify` is global: accepted before or after the subcommand.
    let mut skipped = generate.to_vec();
    skipped.push("--no-verify");
    ok(&skipped);
    ok(&[&["--no-verify"][..], &generate[..]].concat());

    // A checkpoint is checked against its manifest.
    let listed = ok(&["verify", "--model", s(&ckpt)]);
    assert!(listed.contains("model.safetensors"), "{listed}");
    let weights = ckpt.join("model.safetensors");
    let mut w = std::fs::read(&weights).unwrap();
    let last = w.len() - 1;
    w[last] ^= 0x80;
    std::fs::write(&weights, &w).unwrap();
    let e = err(&["verify", "--model", s(&ckpt)]);
    assert!(
        e.contains("model.safetensors") && e.contains("manifest.json"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A reader that stops early (`hbit … | head`) ends the command quietly, not with a panic.
#[test]
fn a_closed_stdout_pipe_is_not_a_panic() {
    let dir = tempdir("pipe");
    let ckpt = dir.join("ckpt");
    ok(&["init", "--preset", "micro", "--out", s(&ckpt)]);
    let tokens: Vec<String> = (0..48).map(|i| (i * 7 % 512).to_string()).collect();
    // 48 positions x 512 logits of JSON: far more than a pipe buffer holds, so the writer
    // blocks until the reader is gone and then meets a broken pipe.
    let mut child = Command::new(env!("CARGO_BIN_EXE_hbit"))
        .args([
            "logits",
            "--model",
            s(&ckpt),
            "--tokens",
            &tokens.join(","),
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141));
    std::fs::remove_dir_all(&dir).unwrap();
}
