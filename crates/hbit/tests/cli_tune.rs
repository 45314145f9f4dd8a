//! `hbit tune` and `hbit cpu` through the binary, with the profile in a private cache
//! directory: tune writes one (an a4 and an a8 model, layouts and thread splits), cpu lists it,
//! a damaged one is ignored with a warning,
//! HBIT_TUNE=off ignores it, and a rows layout cannot be written to a file.

use std::path::Path;
use std::process::{Command, Output};

fn hbit(args: &[&str], cache: &Path, tune: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hbit"))
        .args(args)
        .env("XDG_CACHE_HOME", cache)
        .env("HBIT_TUNE", tune)
        .output()
        .expect("running hbit")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tune_writes_a_profile_that_cpu_lists_and_bad_ones_are_ignored() {
    let dir = std::env::temp_dir().join(format!("hbit-cli-tune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (cache, model) = (dir.join("cache"), dir.join("micro-a4"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    // A micro BitNet v2 model with `bits`-bit activations at `out`.
    let init = |bits: &str, out: &Path| {
        let made = hbit(
            &[
                "init",
                "--preset",
                "micro",
                "--variant",
                "bitnet_v2",
                "--act-bits",
                bits,
                "--out",
                &s(out),
            ],
            &cache,
            "on",
        );
        assert!(made.status.success(), "{:?}", text(&made));
    };
    init("4", &model);

    // Before tuning: the built-in choice.
    let (out, _) = text(&hbit(&["cpu", "--no-bandwidth"], &cache, "on"));
    assert!(out.contains("a4 layout: built-in"), "{out}");

    let tuned = hbit(
        &["tune", "--model", &s(&model), "--threads", "1"],
        &cache,
        "on",
    );
    let (out, err) = text(&tuned);
    assert!(tuned.status.success(), "{err}");
    assert!(
        out.contains("| 64 × 64 | 4 | 1 |") && out.contains("wrote"),
        "{out}"
    );
    let profiles: Vec<_> = std::fs::read_dir(cache.join("hbit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(profiles.len(), 1, "{profiles:?}");
    let profile: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&profiles[0]).unwrap()).unwrap();
    // Micro's a4 kernel calls (q/k/v 128×64 together, o 64×64, gate/up 384×64 together, down
    // 64×192) × 4 buckets, each with the built-in split and the candidates timed.
    let timings = profile["timings"].as_array().unwrap();
    assert_eq!(timings.len(), 4 * 4);
    assert_eq!(profile["threads"], 1);
    let calls: std::collections::BTreeSet<(u64, u64)> = timings
        .iter()
        .map(|t| (t["rows"].as_u64().unwrap(), t["cols"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        calls,
        [(64, 64), (64, 192), (128, 64), (384, 64)]
            .into_iter()
            .collect()
    );
    for t in timings {
        let triples = t["splits"]["triples"].as_object().unwrap();
        assert!(triples.contains_key("auto") && triples.contains_key("rows/1"));
        // Tables built per share grow with the prompt: not a prefill candidate.
        let prefill = t["bucket"] == "33+";
        assert_eq!(triples.contains_key("own-tables/1"), !prefill, "{t}");
    }

    let (out, _) = text(&hbit(&["cpu", "--no-bandwidth"], &cache, "on"));
    assert!(out.contains("64 × 192 (4-bit input), batch 33+:"), "{out}");

    // An a8 model: one layout, its thread splits tuned into the same profile.
    let a8 = dir.join("micro-a8");
    init("8", &a8);
    let tuned = hbit(
        &["tune", "--model", &s(&a8), "--threads", "1"],
        &cache,
        "on",
    );
    let (out, err) = text(&tuned);
    assert!(tuned.status.success(), "{err}");
    assert!(out.contains("| 128 × 64 | 8 | 1 | - | - |"), "{out}");
    let (out, _) = text(&hbit(&["cpu", "--no-bandwidth"], &cache, "on"));
    assert!(
        out.contains("128 × 64 (8-bit input), batch 1: rows"),
        "{out}"
    );
    assert!(out.contains("128 × 64 (4-bit input), batch 1:"), "{out}");
    let (out, _) = text(&hbit(&["cpu", "--no-bandwidth"], &cache, "off"));
    assert!(out.contains("a4 layout: built-in"), "{out}");

    // A damaged profile: a warning naming it, then the built-in choice.
    std::fs::write(&profiles[0], "{\"schema\": 1, \"timings\": [").unwrap();
    let (out, err) = text(&hbit(&["cpu", "--no-bandwidth"], &cache, "on"));
    assert!(
        err.contains("ignoring the tune profile") && err.contains("does not parse"),
        "{err}"
    );
    assert!(out.contains("a4 layout: built-in"), "{out}");

    // rows is a load-time layout: no file of it.
    let packed = dir.join("rows.hbit");
    let refused = hbit(
        &[
            "pack",
            "--model",
            &s(&model),
            "--out",
            &s(&packed),
            "--int4-layout",
            "rows",
        ],
        &cache,
        "on",
    );
    let (_, err) = text(&refused);
    assert!(
        !refused.status.success() && err.contains("rows is chosen at load"),
        "{err}"
    );
    assert!(!packed.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
