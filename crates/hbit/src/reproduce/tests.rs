//! The study as a library: its plan's order, and a `micro` study run stage by stage in this
//! process, resumed after losing a run and a result.

use std::path::{Path, PathBuf};

use super::report::{mean_sd, t_interval_95};
use super::stages::{plan, seed_plan, Outcome, Stage};
use super::{ReproduceArgs, Study, B158, QUAROT, SPINQUANT, V2A4, V2A8, WROT_A4};

/// Which model's files a stage writes (`None`: shared files).
fn writes(stage: &Stage) -> Option<&'static str> {
    match stage {
        Stage::FinishA8 { model } | Stage::ContinueA4 { model, .. } | Stage::Ptq { model, .. } => {
            Some(model.key)
        }
        _ => None,
    }
}

#[test]
fn every_stage_comes_after_its_inputs() {
    let stages = plan();
    let at = |want: &Stage| stages.iter().position(|s| s == want).unwrap();
    let made = |key: &str| {
        stages
            .iter()
            .position(|s| writes(s) == Some(key))
            .unwrap_or_else(|| panic!("nothing makes {key}"))
    };
    assert_eq!(stages[0], Stage::Tokenizer);
    assert_eq!(stages.last(), Some(&Stage::Report));
    for (i, stage) in stages.iter().enumerate() {
        match stage {
            Stage::FinishA8 { model } => {
                assert!(
                    at(&Stage::TrainA8Part {
                        model,
                        variant: variant_of(&stages, model)
                    }) < i
                )
            }
            Stage::ContinueA4 { from, .. } => {
                assert!(
                    at(&Stage::TrainA8Part {
                        model: from,
                        variant: variant_of(&stages, from)
                    }) < i
                )
            }
            Stage::Ptq { .. } => assert!(made(B158.key) < i),
            Stage::Evaluate { model, .. } | Stage::Activations { model } => {
                assert!(made(model.key) < i, "{stage:?}")
            }
            _ => {}
        }
    }
    // Eleven models at f16 KV, four more attention settings for each BitNet v2, stats for three.
    let evaluations = stages
        .iter()
        .filter(|s| matches!(s, Stage::Evaluate { .. }));
    assert_eq!(evaluations.count(), 11 + 2 * 4);
    for model in [&V2A8, &V2A4] {
        for setting in 0..5 {
            assert!(stages.contains(&Stage::Evaluate { model, setting }));
        }
    }
    let stats = stages
        .iter()
        .filter(|s| matches!(s, Stage::Activations { .. }));
    assert_eq!(stats.count(), 3);
}

fn variant_of(stages: &[Stage], model: &super::Model) -> &'static str {
    stages
        .iter()
        .find_map(|s| match s {
            Stage::TrainA8Part { model: m, variant } if *m == model => Some(*variant),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no a8 run of {}", model.key))
}

fn micro_args(dir: &Path) -> ReproduceArgs {
    let (corpus, eval) = (dir.join("corpus"), dir.join("eval"));
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
    ReproduceArgs {
        preset: "micro".into(),
        data: vec![corpus],
        out: dir.join("report"),
        runs: Some(dir.join("runs")),
        steps: 10,
        a4_share: 0.2,
        batch_size: 2,
        seq_len: None,
        vocab_size: 300,
        seed: 0,
        extra_seeds: Vec::new(),
        eval_data: vec![eval],
        task_limit: 500,
        ppl_tokens: 0,
        stats_tokens: 64,
        spinquant_steps: 3,
    }
}

fn run_all(study: &Study) -> Vec<(Stage, Outcome)> {
    plan()
        .into_iter()
        .map(|stage| {
            let outcome = study.run(&stage).unwrap();
            (stage, outcome)
        })
        .collect()
}

#[test]
fn a_micro_study_runs_in_process_and_resumes_only_what_is_lost() {
    let _pins = crate::tune::global_pins();
    let dir: PathBuf =
        std::env::temp_dir().join(format!("hbit-reproduce-lib-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let args = micro_args(&dir);
    let study = Study::new(&args).unwrap();
    assert_eq!(study.switch_step, 8);

    let first = run_all(&study);
    assert!(first.iter().all(|(_, o)| *o == Outcome::Ran), "{first:?}");
    let results = std::fs::read_dir(args.out.join("results")).unwrap().count();
    assert_eq!(results, 11 + 2 * 4);
    // Bits per byte beside perplexity: the same total NLL over the text's UTF-8 bytes (the
    // whole WikiText-2 file here, every byte of which the byte-level tokens cover).
    let v2a4: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(args.out.join("results/v2-a4.json")).unwrap(),
    )
    .unwrap();
    let wiki = &v2a4["wikitext2"];
    let text_bytes = std::fs::metadata(args.eval_data[0].join("wikitext2/wiki.test.raw"))
        .unwrap()
        .len();
    assert_eq!(wiki["bytes"].as_u64(), Some(text_bytes));
    let nll_bits = wiki["perplexity"].as_f64().unwrap().log2() * wiki["tokens"].as_f64().unwrap();
    let bpb = wiki["bits_per_byte"].as_f64().unwrap();
    assert!(
        (bpb - nll_bits / text_bytes as f64).abs() < 1e-9 * bpb,
        "{wiki}"
    );
    // Training logs validation bits per byte: below bits per token, as tokens are ≥ 1 byte.
    let metrics = std::fs::read_to_string(study.dir(V2A4.key).join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = metrics
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v.get("val_loss").is_some())
        .unwrap();
    let (val, val_bpb) = (
        last["val_loss"].as_f64().unwrap(),
        last["val_bits_per_byte"].as_f64(),
    );
    assert!(
        val_bpb.is_some_and(|b| b > 0.0 && b < val / std::f64::consts::LN_2),
        "{last}"
    );
    let tables = std::fs::read_to_string(args.out.join("paper-tables.md")).unwrap();
    assert!(tables.contains("| PPL↓ | BPB↓ |"), "{tables}");

    let quarot = std::fs::read_to_string(study.dir(QUAROT.key).join("config.json")).unwrap();
    assert!(quarot.contains("bitnet_b158_quarot"), "{quarot}");
    let spin = std::fs::read_to_string(study.dir(SPINQUANT.key).join("config.json")).unwrap();
    assert!(spin.contains("bitnet_b158_spinquant"), "{spin}");
    assert!(tables.contains(SPINQUANT.label), "{tables}");
    let commands = args.out.join("commands.txt");
    let logged = std::fs::read_to_string(&commands).unwrap();
    // The tokenizer, 4 × (a8 part, a8 finish, a4), 3 PTQ baselines: one command line each.
    assert_eq!(logged.lines().count(), 1 + 4 * 3 + 3, "{logged}");

    // A finished study reruns nothing but the report.
    let again = run_all(&study);
    for (stage, outcome) in &again {
        let want = match stage {
            Stage::Report => Outcome::Ran,
            _ => Outcome::AlreadyDone,
        };
        assert_eq!(*outcome, want, "{stage:?}");
    }

    // A lost run and its result are redone alone.
    std::fs::remove_dir_all(study.dir(WROT_A4.key)).unwrap();
    std::fs::remove_file(args.out.join("results/wrot-a4.json")).unwrap();
    let ran: Vec<Stage> = run_all(&study)
        .into_iter()
        .filter(|(_, o)| *o == Outcome::Ran)
        .map(|(s, _)| s)
        .collect();
    assert_eq!(
        ran,
        [
            Stage::ContinueA4 {
                from: &super::WROT_A8,
                model: &WROT_A4,
                variant: None
            },
            Stage::Evaluate {
                model: &WROT_A4,
                setting: 0
            },
            Stage::Report,
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_extra_seed_repeats_b158_and_v2_and_the_tables_give_mean_and_spread() {
    let _pins = crate::tune::global_pins();
    let dir: PathBuf =
        std::env::temp_dir().join(format!("hbit-reproduce-seeds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut args = micro_args(&dir);
    args.extra_seeds = vec![1];
    let study = Study::new(&args).unwrap();
    // Only what the extra seed needs from the main study: its tokenizer.
    assert_eq!(study.run(&Stage::Tokenizer).unwrap(), Outcome::Ran);
    let at_seed = study.for_seed(1);
    for stage in seed_plan() {
        assert_eq!(at_seed.run(&stage).unwrap(), Outcome::Ran, "{stage:?}");
    }
    for key in [B158.key, V2A8.key, V2A4.key] {
        assert!(args.out.join(format!("results/seed1/{key}.json")).is_file());
        assert!(dir.join(format!("runs/seed1/{key}/config.json")).is_file());
    }
    // The seed reached the training runs: seed 1's a8 part says so.
    let state =
        std::fs::read_to_string(dir.join("runs/seed1/b158-a8-part/trainer_state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["seed"], 1);
    // One timing line per stage that ran: the tokenizer and the seed's eight.
    let timings = std::fs::read_to_string(args.out.join(super::TIMINGS_FILE)).unwrap();
    let lines: Vec<serde_json::Value> = timings
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1 + seed_plan().len(), "{timings}");
    assert_eq!(lines[1]["stage"], "train b158-a8-part (a8)");
    assert_eq!(lines[1]["seed"], 1);
    assert!(lines.iter().all(|l| l["seconds"].as_f64().unwrap() > 0.0));

    // A rerun finds everything done and logs no time.
    for stage in seed_plan() {
        assert_eq!(
            at_seed.run(&stage).unwrap(),
            Outcome::AlreadyDone,
            "{stage:?}"
        );
    }
    let again = std::fs::read_to_string(args.out.join(super::TIMINGS_FILE)).unwrap();
    assert_eq!(again, timings);

    // The main study's seed-0 numbers come from its own files: v2 a4 has a result, v2 a8 none.
    std::fs::write(
        args.out.join("results/v2-a4.json"),
        r#"{"wikitext2": {"bits_per_byte": 3.5, "perplexity": 90.0}, "tasks": []}"#,
    )
    .unwrap();
    study.run(&Stage::Report).unwrap();
    let tables = std::fs::read_to_string(args.out.join("paper-tables.md")).unwrap();
    assert!(tables.contains("at 2 seeds"), "{tables}");
    assert!(
        tables.contains("| seed 0 | seed 1 | mean ± sd |"),
        "{tables}"
    );
    assert!(tables.contains("## Time per stage"), "{tables}");
    let cells = |prefix: &str| -> Vec<String> {
        let row = tables.lines().find(|l| l.starts_with(prefix)).unwrap();
        row.split('|').map(|c| c.trim().to_string()).collect()
    };
    let v2a4 = cells("| BitNet v2 (a4) | WikiText-2 bits/byte |");
    assert_eq!(v2a4[3], "3.5000", "{v2a4:?}");
    let seed1: f64 = v2a4[4].parse().unwrap();
    let mean = (3.5 + seed1) / 2.0;
    let sd = (3.5 - seed1).abs() / 2f64.sqrt();
    assert_eq!(v2a4[5], format!("{mean:.4} ± {sd:.4}"), "{v2a4:?}");
    let v2a8 = cells("| BitNet v2 (a8) | WikiText-2 bits/byte |");
    assert_eq!(v2a8[3], "–", "{v2a8:?}");
    assert_eq!(v2a8[5], format!("{} (1 seed)", v2a8[4]), "{v2a8:?}");
    // The paired difference exists for seed 1 only, so it has no interval.
    let diff = cells("| BitNet v2 (a4) − BitNet v2 (a8) |");
    assert_eq!(diff[3], "–", "{diff:?}");
    assert!(!diff[5].contains("95%"), "{diff:?}");

    // A study at another seed refuses runs trained at seed 1 instead of reusing them.
    let mut other = micro_args(&dir);
    other.seed = 5;
    other.runs = Some(dir.join("runs/seed1"));
    let err = Study::new(&other)
        .unwrap()
        .run(&Stage::TrainA8Part {
            model: &B158,
            variant: "bitnet_b158",
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("trained at seed 1, the study is at seed 5"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn t_interval_by_hand() {
    // [1, 2, 3]: mean 2, sd 1, t(0.975, 2) = 4.303, half width 4.303 / √3 = 2.4843.
    let (lo, hi) = t_interval_95(&[1.0, 2.0, 3.0]).unwrap();
    assert!(
        (lo + 0.48434).abs() < 1e-4 && (hi - 4.48434).abs() < 1e-4,
        "{lo} {hi}"
    );
    assert_eq!(t_interval_95(&[2.0, 2.0]), Some((2.0, 2.0)));
    assert_eq!(t_interval_95(&[1.0]), None);
}

#[test]
fn mean_and_sample_standard_deviation_by_hand() {
    assert_eq!(mean_sd(&[1.0, 2.0, 3.0]), "2.0000 ± 1.0000");
    assert_eq!(mean_sd(&[3.25, 3.25]), "3.2500 ± 0.0000");
    assert_eq!(mean_sd(&[0.5]), "0.5000 (1 seed)");
    assert_eq!(mean_sd(&[]), "–");
}

#[test]
fn a_seed_given_twice_is_refused() {
    let dir = std::env::temp_dir().join(format!("hbit-reproduce-twice-{}", std::process::id()));
    let mut args = micro_args(&dir);
    args.out = dir.join("never");
    for extra in [vec![0], vec![1, 1]] {
        args.extra_seeds = extra.clone();
        let err = Study::new(&args).err().expect("refused");
        assert!(err.to_string().contains("given twice"), "{extra:?}: {err}");
    }
    assert!(!args.out.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_shares_are_refused_before_anything_is_written() {
    let dir = std::env::temp_dir().join(format!("hbit-reproduce-bad-{}", std::process::id()));
    let mut args = micro_args(&dir);
    args.out = dir.join("never");
    for (steps, share) in [(10, 1.0), (10, -0.1), (10, 0.0), (1, 0.2)] {
        (args.steps, args.a4_share) = (steps, share);
        assert!(Study::new(&args).is_err(), "{steps} steps, share {share}");
    }
    assert!(!args.out.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
