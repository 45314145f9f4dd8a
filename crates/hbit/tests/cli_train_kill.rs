//! `hbit train` killed with SIGKILL at random moments of a run that saves every step: every
//! time, `--resume` picks up a whole checkpoint and the run reaches its last step.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn hbit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hbit"))
}

/// The step of the checkpoint a resume would load (after recovering a cut-short save), 0 when
/// there is none yet.
fn saved_step(run: &std::path::Path) -> u64 {
    let _ = hbit_train::checkpoint::recover(run);
    std::fs::read_to_string(run.join("trainer_state.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["step"].as_u64())
        .unwrap_or(0)
}

#[test]
fn a_run_killed_at_random_moments_resumes_to_the_end() {
    let dir = std::env::temp_dir().join(format!("hbit-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let corpus = dir.join("corpus.txt");
    std::fs::write(
        &corpus,
        "The cat sat on the mat. A dog ran to the park and back again. \n".repeat(400),
    )
    .unwrap();
    let tok = dir.join("tok.json");
    let s = |p: &PathBuf| p.to_str().unwrap().to_string();
    let out = hbit()
        .args([
            "tokenizer",
            "train",
            "--data",
            &s(&corpus),
            "--vocab-size",
            "300",
        ])
        .args(["--out", &s(&tok)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = dir.join("run");
    let steps = 600;
    let common = |c: &mut Command| {
        c.args(["--data", &s(&corpus), "--out", &s(&run), "--quiet"])
            .args(["--checkpoint-every", "1", "--eval-every", "0"])
            .args(["--cache-dir", &s(&dir.join("cache"))])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
    };
    let mut first = hbit();
    first.args(["train", "--preset", "micro", "--variant", "bitnet_b158"]);
    first.args(["--tokenizer", &s(&tok), "--steps", &steps.to_string()]);
    first.args(["--batch-size", "2", "--seq-len", "32"]);
    common(&mut first);
    // Kill points spread over the run (its length varies with the machine), bounded in count.
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut kills = 0;
    let mut last_saved = 0;
    let mut child = first.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(100 + rng % 600));
        if child.try_wait().unwrap().is_some() || kills == 8 || Instant::now() > deadline {
            break;
        }
        child.kill().unwrap(); // SIGKILL: no handler runs
        child.wait().unwrap();
        kills += 1;
        // Whatever the kill interrupted, the checkpoint on disk never goes back in time.
        let saved = saved_step(&run);
        assert!(
            saved >= last_saved,
            "kill {kills}: step {saved} after {last_saved}"
        );
        last_saved = saved;
        // The next run resumes (or starts over when the kill came before the first save).
        let mut next = hbit();
        if run.join("trainer_state.json").exists() || run.with_extension("old").exists() {
            next.args(["train", "--resume"]);
        } else {
            let _ = std::fs::remove_dir_all(&run);
            next.args(["train", "--preset", "micro", "--variant", "bitnet_b158"]);
            next.args(["--tokenizer", &s(&tok), "--steps", &steps.to_string()]);
            next.args(["--batch-size", "2", "--seq-len", "32"]);
        }
        common(&mut next);
        child = next.spawn().unwrap();
    }
    let status = child.wait_with_output().unwrap();
    assert!(
        status.status.success(),
        "after {kills} kills: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    // Finish whatever the last kill left (a resume of a finished run does nothing).
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("trainer_state.json")).unwrap())
            .unwrap();
    assert_eq!(state["step"], steps, "after {kills} kills");
    assert!(kills >= 4, "only {kills} kills landed before the run ended");
    for leftover in ["partial", "old"] {
        assert!(!run.with_extension(leftover).exists(), "{leftover} left");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
