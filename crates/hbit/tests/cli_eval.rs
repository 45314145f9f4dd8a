//! `hbit eval tasks` end to end through the binary on a `micro` model: every task's official
//! layout (small files written here and the WinoGrande / LAMBADA fixtures), JSON and Markdown
//! results, and clear errors for bad tasks and data.

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

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../hbit-eval/tests/fixtures")
}

#[test]
fn eval_tasks_on_every_layout() {
    let dir = std::env::temp_dir().join(format!("hbit-cli-eval-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ckpt = dir.join("ckpt");
    ok(&[
        "init",
        "--preset",
        "micro",
        "--variant",
        "bitnet_v2",
        "--act-bits",
        "4",
        "--seed",
        "5",
        "--out",
        s(&ckpt),
    ]);
    let corpus = dir.join("corpus.txt");
    std::fs::write(
        &corpus,
        "Question: what do plants need? Answer: sunlight and water. The man sat on a roof. "
            .repeat(40),
    )
    .unwrap();
    let tok = dir.join("tok.json");
    ok(&[
        "tokenizer",
        "train",
        "--data",
        s(&corpus),
        "--vocab-size",
        "300",
        "--out",
        s(&tok),
    ]);

    // ARC (HF layout), HellaSwag and PIQA (with its labels file) in their official layouts.
    let data = dir.join("data");
    std::fs::create_dir_all(data.join("piqa")).unwrap();
    std::fs::write(
        data.join("arc_easy_test.jsonl"),
        r#"{"id": "q1", "question": "What do plants need?", "choices": {"text": ["sunlight", "rocks", "noise"], "label": ["A", "B", "C"]}, "answerKey": "A"}
{"id": "q2", "question": "Which is hot?", "choices": {"text": ["ice", "fire"], "label": ["1", "2"]}, "answerKey": "2"}
"#,
    )
    .unwrap();
    std::fs::write(
        data.join("hellaswag_val.jsonl"),
        r#"{"ind": 1, "activity_label": "Roofing", "ctx_a": "A man is on a roof.", "ctx_b": "he", "ctx": "A man is on a roof. he", "split": "val", "split_type": "indomain", "label": 0, "endings": ["pulls up shingles.", "eats [title] a cake.", "sings.", "sleeps."], "source_id": "x"}
"#,
    )
    .unwrap();
    std::fs::write(
        data.join("piqa/valid.jsonl"),
        r#"{"goal": "Water a plant", "sol1": "pour water on the soil", "sol2": "pour sand on the leaves"}
{"goal": "Cool tea", "sol1": "wait a while", "sol2": "boil it"}
"#,
    )
    .unwrap();
    std::fs::write(data.join("piqa/valid-labels.lst"), "0\n0\n").unwrap();

    let out = ok(&[
        "eval",
        "tasks",
        "--model",
        s(&ckpt),
        "--tokenizer",
        s(&tok),
        "--task",
        "arc_easy,hellaswag,piqa,winogrande,lambada_openai",
        "--data",
        s(&data),
        "--data",
        s(&fixtures()),
        "--json",
        "--batch-tokens",
        "64",
        "--markdown",
        s(&dir.join("table.md")),
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let tasks = v["tasks"].as_array().unwrap();
    let by_name = |n: &str| tasks.iter().find(|t| t["task"] == n).unwrap();
    for (name, docs, requests) in [
        ("arc_easy", 2, 5),
        ("hellaswag", 1, 4),
        ("piqa", 2, 4),
        ("winogrande", 12, 24),
        ("lambada_openai", 10, 10),
    ] {
        let t = by_name(name);
        assert_eq!(t["docs"], docs, "{name}");
        assert_eq!(t["requests"], requests, "{name}");
        let acc = t["acc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{name}: {acc}");
    }
    assert!(by_name("winogrande").get("acc_norm").is_none());
    assert!(by_name("lambada_openai")["perplexity"].as_f64().unwrap() > 1.0);
    let table = std::fs::read_to_string(dir.join("table.md")).unwrap();
    assert_eq!(table, v["table"].as_str().unwrap());
    assert!(
        table.starts_with("| Models | Size | PPL↓ | ARCc↑"),
        "{table}"
    );

    // The same task from a file, with --limit; `lambada` names lambada_openai.
    let one = ok(&[
        "eval",
        "tasks",
        "--model",
        s(&ckpt),
        "--tokenizer",
        s(&tok),
        "--task",
        "lambada",
        "--data",
        s(&fixtures().join("lambada/lambada_test.jsonl")),
        "--limit",
        "3",
        "--json",
    ]);
    let v1: serde_json::Value = serde_json::from_str(one.trim()).unwrap();
    assert_eq!(v1["tasks"][0]["task"], "lambada_openai");
    assert_eq!(v1["tasks"][0]["docs"], 3);

    // Activation statistics: JSON for 2 layers × 4 sites × (before, after) and four PNGs.
    let act = dir.join("act");
    let stats = ok(&[
        "stats",
        "activations",
        "--model",
        s(&ckpt),
        "--tokenizer",
        s(&tok),
        "--prompt",
        "The man sat on a roof. Question: what do plants need?",
        "--out",
        s(&act),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(stats.trim()).unwrap();
    assert_eq!(v["sites"].as_array().unwrap().len(), 16);
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(act.join("activations.json")).unwrap())
            .unwrap();
    assert_eq!(on_disk, v);
    for site in ["qkv", "o_proj", "gate_up", "down_proj"] {
        let png = std::fs::read(act.join(format!("{site}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{site}");
    }
    let e = err(&[
        "stats",
        "activations",
        "--model",
        s(&ckpt),
        "--tokenizer",
        s(&tok),
    ]);
    assert!(e.contains("give --data FILE or --prompt TEXT"), "{e}");

    // The demo on this model: generation, INT4 vs INT8 decode speed, outliers.
    let demo = ok(&[
        "demo",
        "--model",
        s(&ckpt),
        "--tokenizer",
        s(&tok),
        "--max-tokens",
        "4",
        "--decode-tokens",
        "4",
        "--rounds",
        "1",
    ]);
    for section in [
        "== generation",
        "INT4 activations",
        "INT8 activations",
        "INT4 / INT8 =",
        "W_down (H-BitLinear in v2)",
        "W_q, W_k, W_v",
    ] {
        assert!(demo.contains(section), "missing {section}:\n{demo}");
    }

    // Errors name the problem.
    let base = ["eval", "tasks", "--model", s(&ckpt), "--tokenizer", s(&tok)];
    let e = err(&[&base[..], &["--task", "mmlu", "--data", s(&data)]].concat());
    assert!(e.contains("unknown task `mmlu`"), "{e}");
    let e = err(&[&base[..], &["--task", "arc_challenge", "--data", s(&data)]].concat());
    assert!(e.contains("no arc_challenge file found"), "{e}");
    let bad = dir.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"goal\": \"x\", \"sol1\": \"a\", \"sol2\": \"b\", \"label\": 1}\n{oops\n",
    )
    .unwrap();
    let e = err(&[&base[..], &["--task", "piqa", "--data", s(&bad)]].concat());
    assert!(e.contains("bad.jsonl:2: not a JSON object"), "{e}");
    std::fs::write(data.join("piqa/valid-labels.lst"), "0\n").unwrap();
    let e = err(&[&base[..], &["--task", "piqa", "--data", s(&data)]].concat());
    assert!(e.contains("valid.jsonl:2: no label for this line"), "{e}");
    let e = err(&[&base[..], &["--task", "piqa,arc_easy", "--data", s(&bad)]].concat());
    assert!(e.contains("a file serves one task alone"), "{e}");
}
