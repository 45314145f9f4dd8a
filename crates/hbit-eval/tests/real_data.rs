//! Real-data test: the official evaluation files in `../shared/data` parse into the documents
//! their SOURCES.md describes (counts, choice counts, label balance) and known items come out
//! exactly as lm-evaluation-harness builds them.
//!
//! `.ci/run` runs it with `HBIT_DATA_DIR=$PWD/../shared/data cargo test -p hbit-eval --test
//! real_data -- --ignored`. Asked to run without the data, it fails (never skips).

use std::collections::BTreeMap;
use std::path::PathBuf;

use hbit_eval::{load_docs, Task};

fn data_dir() -> PathBuf {
    let dir = PathBuf::from(
        std::env::var("HBIT_DATA_DIR")
            .expect("HBIT_DATA_DIR must point at the shared data directory (e.g. ../shared/data)"),
    );
    assert!(
        dir.join("hellaswag").is_dir(),
        "{}: the evaluation sets are missing",
        dir.display()
    );
    dir
}

/// How many documents have each number of choices.
fn choice_counts(docs: &[hbit_eval::Doc]) -> BTreeMap<usize, usize> {
    let mut m = BTreeMap::new();
    for d in docs {
        *m.entry(d.requests.len()).or_default() += 1;
    }
    m
}

#[test]
#[ignore = "needs the shared data: HBIT_DATA_DIR=/abs/path/shared/data cargo test -p hbit-eval --test real_data -- --ignored"]
fn official_files_parse_as_documented() {
    let dir = data_dir();
    let load = |task: Task| {
        let path = task.locate(&dir).unwrap();
        load_docs(task, &path, None).unwrap()
    };

    // ARC test sets (SOURCES.md: Easy 2365×4, 7×3, 4×5; Challenge 1165×4, 4×3, 3×5).
    let easy = load(Task::ArcEasy);
    assert_eq!(
        choice_counts(&easy),
        BTreeMap::from([(3, 7), (4, 2365), (5, 4)])
    );
    let challenge = load(Task::ArcChallenge);
    assert_eq!(
        choice_counts(&challenge),
        BTreeMap::from([(3, 4), (4, 1165), (5, 3)])
    );
    assert_eq!(
        easy[0].requests[0],
        (
            "Question: Which statement best explains why photosynthesis is the foundation of \
             most food webs?\nAnswer:"
                .to_string(),
            " Sunlight is the source of energy for nearly all ecosystems.".to_string()
        )
    );
    assert_eq!(easy[1].gold, 1);

    // The HF-layout dev sets resolve answerKey against the labels (digits included).
    for (file, n) in [
        ("arc/ARC-Easy-Dev.hf.jsonl", 570),
        ("arc/ARC-Challenge-Dev.hf.jsonl", 299),
    ] {
        let docs = load_docs(Task::ArcEasy, &dir.join(file), None).unwrap();
        assert_eq!(docs.len(), n, "{file}");
    }

    // HellaSwag: 10042 documents of 4 endings; the first one as lm-evaluation-harness builds it.
    let hs = load(Task::Hellaswag);
    assert_eq!(choice_counts(&hs), BTreeMap::from([(4, 10042)]));
    assert_eq!(hs[0].gold, 3);
    assert_eq!(
        hs[0].requests[3],
        (
            "Roof shingle removal: A man is sitting on a roof. He".to_string(),
            " starts pulling up roofing on a roof.".to_string()
        )
    );
    // No bracketed WikiHow tags survive the preprocessing.
    assert!(hs
        .iter()
        .flat_map(|d| &d.requests)
        .all(|(c, e)| !c.contains("[step]") && !c.contains("[title]") && !e.contains("[step]")));

    // PIQA: 1838 documents, labels from valid-labels.lst (910 × 0, 928 × 1).
    let piqa = load(Task::Piqa);
    assert_eq!(piqa.len(), 1838);
    let ones = piqa.iter().filter(|d| d.gold == 1).count();
    assert_eq!((piqa.len() - ones, ones), (910, 928));
    assert_eq!(
        piqa[0].requests[0].0,
        "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    );
}
