//! Trainer tests: resume equals uninterrupted training bit for bit; a8 → a4 continue-training
//! reuses the moments; the loss falls.

use super::*;
use crate::config::{preset, Variant};
use hbit_kernels::quant::ActBits;

fn temp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("hbit-trainer-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A structured token stream (a repeating pattern with noise) the micro model can learn.
fn stream(n: usize) -> Vec<u32> {
    let mut rng = crate::rng::SplitMix64::new(11);
    (0..n)
        .map(|i| {
            if rng.below(10) == 0 {
                rng.below(512) as u32
            } else {
                ((i * 7) % 50) as u32
            }
        })
        .collect()
}

fn state(total_steps: u64, data: &PackedData) -> TrainerState {
    let schedule = Schedule {
        total_steps,
        warmup_steps: 2,
        lr1: 3e-3,
        lr2: 2e-3,
        weight_decay: 0.1,
    };
    TrainerState {
        grad_accum: 2,
        ..TrainerState::new(data, schedule, 5, 2, 8)
    }
}

#[test]
fn resume_equals_uninterrupted_training_bit_for_bit() {
    let cfg = preset("micro", Variant::BitnetV2, ActBits::Int8).unwrap();
    let data = PackedData::new(stream(4000), 16, 0.1, 1).unwrap();
    let mut straight = Trainer::new(
        BitnetModel::init(&cfg, 2).unwrap(),
        data.clone(),
        state(6, &data),
    )
    .unwrap();
    for _ in 0..6 {
        straight.step().unwrap();
    }

    let dir = temp("resume");
    let mut first = Trainer::new(
        BitnetModel::init(&cfg, 2).unwrap(),
        data.clone(),
        state(6, &data),
    )
    .unwrap();
    for _ in 0..3 {
        first.step().unwrap();
    }
    first.save(&dir, None).unwrap();
    drop(first);
    let mut resumed = Trainer::from_checkpoint(&dir, data.clone(), None).unwrap();
    assert_eq!(resumed.state.step, 3);
    while !resumed.finished() {
        resumed.step().unwrap();
    }
    assert_eq!(resumed.state, straight.state);
    assert_eq!(
        resumed.parameter_values().unwrap(),
        straight.parameter_values().unwrap()
    );

    // Other data is refused, naming the state file.
    let other = PackedData::new(stream(3000), 16, 0.1, 1).unwrap();
    let err = Trainer::from_checkpoint(&dir, other, None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("trainer_state.json"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a4_continue_training_reuses_moments_and_loss_falls() {
    let cfg = preset("micro", Variant::BitnetV2, ActBits::Int8).unwrap();
    let data = PackedData::new(stream(8000), 16, 0.1, 1).unwrap();
    let mut t = Trainer::new(
        BitnetModel::init(&cfg, 4).unwrap(),
        data.clone(),
        state(40, &data),
    )
    .unwrap();
    let before = t.validation_loss(8).unwrap().unwrap();
    for _ in 0..36 {
        t.step().unwrap();
    }
    let after_a8 = t.validation_loss(8).unwrap().unwrap();
    assert!(after_a8 < before - 1.0, "a8 loss {before} -> {after_a8}");
    let dir = temp("a4");
    t.save(&dir, None).unwrap();

    let a4 = cfg
        .with_quantization(Variant::BitnetV2, ActBits::Int4, cfg.hidden_act)
        .unwrap();
    let mut t4 = Trainer::from_checkpoint(&dir, data, Some(&a4)).unwrap();
    assert_eq!(t4.model.config().activation_bits, ActBits::Int4);
    assert_eq!(t4.state.stages, vec![(0, 8), (36, 4)]);
    assert_eq!(
        t4.optimizer.steps, 36,
        "moments and bias-correction step carried over"
    );
    let a4_start = t4.validation_loss(8).unwrap().unwrap();
    while !t4.finished() {
        t4.step().unwrap();
    }
    let a4_end = t4.validation_loss(8).unwrap().unwrap();
    assert!(
        a4_end.is_finite() && a4_end < before - 1.0,
        "a4 {a4_start} -> {a4_end}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A trainer of batch `batch` (grad_accum 2) on the micro model, `shards` data shards.
fn sharded(batch: usize, shards: usize, data: &PackedData) -> Trainer {
    let cfg = preset("micro", Variant::BitnetV2, ActBits::Int8).unwrap();
    let mut t = Trainer::new(
        BitnetModel::init(&cfg, 3).unwrap(),
        data.clone(),
        TrainerState {
            batch_size: batch,
            ..state(6, data)
        },
    )
    .unwrap();
    t.set_data_shards(shards).unwrap();
    t
}

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

#[test]
fn data_shards_give_the_batch_loss_and_gradient_up_to_rounding() {
    let data = PackedData::new(stream(6000), 16, 0.1, 1).unwrap();
    // Even and uneven splits (5 sequences: runs of 2 and 3, weighted 2/5 and 3/5), and more
    // shards asked for than sequences (capped at the batch size).
    for (batch, shards, used) in [(4, 2, 2), (5, 2, 2), (3, 8, 3)] {
        let mut whole = sharded(batch, 1, &data);
        let mut split = sharded(batch, shards, &data);
        assert_eq!((whole.data_shards(), split.data_shards()), (1, used));
        let (a, b) = (whole.step().unwrap(), split.step().unwrap());
        assert!(
            relative(b.loss, a.loss) < 1e-5,
            "batch {batch}, {shards} shards: loss {} vs {}",
            b.loss,
            a.loss
        );
        assert!(
            relative(b.grad_norm, a.grad_norm) < 1e-4,
            "batch {batch}, {shards} shards: gradient norm {} vs {}",
            b.grad_norm,
            a.grad_norm
        );
        let (va, vb) = (
            whole.validation_loss(7).unwrap().unwrap(),
            split.validation_loss(7).unwrap().unwrap(),
        );
        assert!(relative(vb, va) < 1e-5, "validation {vb} vs {va}");
    }
}

#[test]
fn a_sharded_run_repeats_itself_bit_for_bit() {
    let data = PackedData::new(stream(6000), 16, 0.1, 1).unwrap();
    let mut a = sharded(5, 2, &data);
    let mut b = sharded(5, 2, &data);
    for _ in 0..3 {
        let (ra, rb) = (a.step().unwrap(), b.step().unwrap());
        assert_eq!(ra.loss.to_bits(), rb.loss.to_bits());
    }
    assert_eq!(a.parameter_values().unwrap(), b.parameter_values().unwrap());
}
