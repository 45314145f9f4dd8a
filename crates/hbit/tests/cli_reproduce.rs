//! `hbit reproduce` end to end at `micro` scale: every model trained and derived, every table
//! written, and a rerun resumes: it redoes only what is missing.

use std::path::Path;
use std::process::Command;

fn reproduce(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_hbit"))
        .arg("reproduce")
        .args(args)
        .output()
        .expect("running hbit");
    assert!(
        out.status.success(),
        "hbit reproduce failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).unwrap().lines().count()
}

#[test]
fn reproduce_at_micro_scale_and_resume() {
    let dir = std::env::temp_dir().join(format!("hbit-cli-reproduce-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (corpus, eval, out, runs) = (
        dir.join("corpus"),
        dir.join("eval"),
        dir.join("report"),
        dir.join("runs"),
    );
    std::fs::create_dir_all(&corpus).unwrap();
    std::fs::create_dir_all(eval.join("wikitext2")).unwrap();
    std::fs::write(
        corpus.join("text.txt"),
        "The cat sat on the mat. A dog ran to the park and back again. \n".repeat(300),
    )
    .unwrap();
    std::fs::write(
        eval.join("wikitext2/wiki.test.raw"),
        " = Cats = \n The cat sat on the mat near the dog . \n".repeat(20),
    )
    .unwrap();
    std::fs::write(
        eval.join("arc_easy_test.jsonl"),
        "{\"question\": \"Where did the cat sit?\", \"choices\": [\"on the mat\", \"in the sky\"], \"gold\": 0}\n",
    )
    .unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let args = [
        "--preset",
        "micro",
        "--data",
        &s(&corpus),
        "--out",
        &s(&out),
        "--runs",
        &s(&runs),
        "--steps",
        "10",
        "--a4-share",
        "0.2",
        "--batch-size",
        "2",
        "--vocab-size",
        "300",
        "--eval-data",
        &s(&eval),
        "--stats-tokens",
        "64",
        "--spinquant-steps",
        "3",
    ];
    reproduce(&args);

    let tables = std::fs::read_to_string(out.join("paper-tables.md")).unwrap();
    for heading in [
        "## Table 1",
        "## Table 2",
        "## Table 3",
        "## Table 4",
        "## Table 5",
        "## Figures 2–3",
    ] {
        assert!(tables.contains(heading), "missing {heading}:\n{tables}");
    }
    // Eleven models at f16 KV, and four more attention settings for each BitNet v2.
    let results = std::fs::read_dir(out.join("results")).unwrap().count();
    assert_eq!(results, 11 + 2 * 4);
    let v2a4: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results/v2-a4.json")).unwrap())
            .unwrap();
    assert!(v2a4["wikitext2"]["perplexity"].as_f64().unwrap() > 1.0);
    let tasks: Vec<&str> = v2a4["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task"].as_str().unwrap())
        .collect();
    // ARC-Easy from --eval-data; WinoGrande and LAMBADA from the bundled fixtures.
    assert_eq!(tasks, ["arc_easy", "winogrande", "lambada_openai"]);
    for m in ["b158-a8", "v2-a8", "v2-a4"] {
        assert!(
            out.join("activations")
                .join(m)
                .join("down_proj.png")
                .is_file(),
            "{m}"
        );
    }
    for m in ["b158-a8", "a48", "v2-a8", "v2-a4", "norot-a4", "wrot-a4"] {
        assert!(out.join(format!("plots/{m}-loss.png")).is_file(), "{m}");
    }
    // The a4 runs continued from the a8 checkpoint at step 8 (80% of 10 steps).
    let quarot: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(runs.join("quarot-a4/config.json")).unwrap())
            .unwrap();
    assert_eq!(quarot["quantization"]["variant"], "bitnet_b158_quarot");
    let spin: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(runs.join("spinquant-a4/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(spin["quantization"]["variant"], "bitnet_b158_spinquant");
    assert_eq!(
        spin["quantization"]["hadamard"],
        serde_json::json!(["down_proj"])
    );

    // Resume: a finished study reruns nothing; a lost run and a lost result are redone alone.
    let commands = out.join("commands.txt");
    let before = lines(&commands);
    reproduce(&args);
    assert_eq!(
        lines(&commands),
        before,
        "a finished study ran commands again"
    );
    std::fs::remove_dir_all(runs.join("wrot-a4")).unwrap();
    std::fs::remove_file(out.join("results/wrot-a4.json")).unwrap();
    reproduce(&args);
    assert_eq!(lines(&commands), before + 1);
    let last = std::fs::read_to_string(&commands).unwrap();
    assert!(last.lines().last().unwrap().contains("--out") && last.contains("wrot-a4 "));
    assert!(out.join("results/wrot-a4.json").is_file());
}
