//! Real-data test: a `micro` model's validation loss falls on real English text.
//!
//! Needs the shared corpus; `.ci/run` runs it with `HBIT_DATA_DIR=$PWD/../shared/data cargo test -p
//! hbit-train --test real_data -- --ignored`. Asked to run without the data, it fails (never
//! skips).

use std::path::PathBuf;

use hbit_kernels::quant::ActBits;
use hbit_train::config::{preset, Variant};
use hbit_train::data::{read_documents, tokenize_cached, PackedData};
use hbit_train::schedule::Schedule;
use hbit_train::tokenizer::train_bpe;
use hbit_train::trainer::{Trainer, TrainerState};
use hbit_train::BitnetModel;

fn data_dir() -> PathBuf {
    let dir = std::env::var("HBIT_DATA_DIR")
        .expect("HBIT_DATA_DIR must point at the shared data directory (e.g. ../shared/data)");
    let corpus = PathBuf::from(dir).join("pretrain/tiny_shakespeare");
    assert!(
        corpus.is_dir(),
        "{} is missing: the real-data test needs the shared corpus",
        corpus.display()
    );
    corpus
}

#[test]
#[ignore = "needs the shared corpus: HBIT_DATA_DIR=/abs/path/shared/data cargo test -p hbit-train --test real_data -- --ignored"]
fn micro_loss_falls_on_real_text() {
    let corpus = data_dir();
    let docs = read_documents(std::slice::from_ref(&corpus)).unwrap();
    let tokenizer = train_bpe(docs.iter().map(|d| d.text.as_str()), 512, false).unwrap();
    let cache = std::env::temp_dir().join(format!("hbit-real-data-{}", std::process::id()));
    let (tokens, _) = tokenize_cached(&[corpus], &tokenizer, &cache).unwrap();
    let data = PackedData::new(tokens, 64, 0.02, 0).unwrap();
    let config = preset("micro", Variant::BitnetV2, ActBits::Int8).unwrap();
    let schedule = Schedule {
        total_steps: 60,
        warmup_steps: 5,
        lr1: 3e-3,
        lr2: 2e-3,
        weight_decay: 0.1,
    };
    let state = TrainerState::new(&data, schedule, 0, 8, 8);
    let mut trainer = Trainer::new(BitnetModel::init(&config, 0).unwrap(), data, state).unwrap();
    let before = trainer.validation_loss(32).unwrap().unwrap();
    while !trainer.finished() {
        trainer.step().unwrap();
    }
    let after = trainer.validation_loss(32).unwrap().unwrap();
    // ln(512) = 6.24 at the start; 30k tokens of Shakespeare take a micro model well below it.
    assert!(before > 6.0, "initial loss {before}");
    assert!(
        after < before - 1.0,
        "validation loss {before:.3} -> {after:.3}"
    );
    std::fs::remove_dir_all(&cache).ok();
}
