//! Golden test: hbit's candle model against an independent PyTorch implementation
//! (`scripts/golden_reference.py`, written from the paper's equations) on a committed `micro`
//! checkpoint: logits, loss and gradients for every variant on the same latent weights.
//!
//! Regenerate with:
//! `python3 scripts/golden_reference.py crates/hbit-train/tests/golden/micro crates/hbit-train/tests/golden/micro/golden.json`

use std::path::Path;

use candle_core::{Device, Tensor};
use hbit_kernels::quant::ActBits;
use hbit_train::checkpoint::load_model;
use hbit_train::config::{HiddenAct, Variant};
use serde_json::Value;

/// Logits: both sides compute the same quantized products in f32, in different summation orders.
/// The reference only accepts well-conditioned inputs (no quantizer input within float noise of a
/// rounding boundary, no top-K near-tie), so every code agrees and only rounding remains: the
/// measured worst difference is 2.1e-7; this allows 10×.
const LOGIT_ABS_TOL: f32 = 2e-6;
/// Mean cross-entropy over 16 positions.
const LOSS_ABS_TOL: f64 = 2e-6;
/// Gradients, relative to the tensor's gradient norm (elementwise values span decades).
const GRAD_REL_TOL: f64 = 1e-4;

fn golden() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/micro/golden.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn micro_model_matches_pytorch_reference_for_every_variant() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/micro");
    let base = load_model(&dir).unwrap();
    let g = golden();
    let seqs: Vec<Vec<u32>> = g["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| floats(s).into_iter().map(|x| x as u32).collect())
        .collect();
    let t = seqs[0].len() - 1;
    let inputs: Vec<u32> = seqs.iter().flat_map(|s| s[..t].to_vec()).collect();
    let targets: Vec<u32> = seqs.iter().flat_map(|s| s[1..].to_vec()).collect();
    let inputs = Tensor::from_vec(inputs, (seqs.len(), t), &Device::Cpu).unwrap();
    let targets = Tensor::from_vec(targets, (seqs.len(), t), &Device::Cpu).unwrap();

    for r in g["results"].as_array().unwrap() {
        let variant = Variant::parse(r["variant"].as_str().unwrap()).unwrap();
        let bits = ActBits::from_bits(r["activation_bits"].as_u64().unwrap() as u8).unwrap();
        let act = if variant == Variant::BitnetA48 {
            HiddenAct::Relu2
        } else {
            HiddenAct::Silu
        };
        let cfg = base.config().with_quantization(variant, bits, act).unwrap();
        let model = base.with_config(&cfg).unwrap();
        let name = format!("{} a{}", variant.name(), bits.bits());

        let logits: Vec<Vec<f32>> = model
            .forward(&inputs)
            .unwrap()
            .get(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        let mut worst = 0f32;
        for (row, want) in logits.iter().zip(r["logits_seq0"].as_array().unwrap()) {
            for (a, b) in row.iter().zip(floats(want)) {
                worst = worst.max((a - b as f32).abs());
            }
        }
        // Visible with `cargo test -p hbit-train --test golden -- --nocapture`.
        eprintln!("{name}: worst logit difference {worst:.2e}");
        assert!(worst <= LOGIT_ABS_TOL, "{name}: logits differ by {worst}");

        let loss = model.loss(&inputs, &targets).unwrap();
        let loss_value = loss.to_scalar::<f32>().unwrap() as f64;
        let want_loss = r["loss"].as_f64().unwrap();
        assert!(
            (loss_value - want_loss).abs() <= LOSS_ABS_TOL,
            "{name}: loss {loss_value} vs {want_loss}"
        );

        let grads = loss.backward().unwrap();
        let vars = model.named_vars();
        for (tensor, want_norm) in r["grad_norms"].as_object().unwrap() {
            let want_norm = want_norm.as_f64().unwrap();
            let var = &vars.iter().find(|(n, _)| n == tensor).unwrap().1;
            let got: Vec<f32> = grads
                .get(var)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let norm = got.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            assert!(
                (norm - want_norm).abs() <= GRAD_REL_TOL * want_norm.max(1e-6),
                "{name}: |grad {tensor}| {norm} vs {want_norm}"
            );
            if let Some(full) = r["grads"].get(tensor) {
                let diff = got
                    .iter()
                    .zip(floats(full))
                    .map(|(&a, b)| (a as f64 - b).powi(2))
                    .sum::<f64>()
                    .sqrt();
                assert!(
                    diff <= GRAD_REL_TOL * want_norm.max(1e-6),
                    "{name}: grad {tensor} differs by {diff} (norm {want_norm})"
                );
            }
        }
    }
}
