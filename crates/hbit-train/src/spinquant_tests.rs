//! SpinQuant tests: the folds are exact in full precision (with non-trivial gains, GQA and an
//! untied head), the learned rotations stay orthogonal, and the rotation gradient is the chain
//! rule's (it vanishes exactly where the loss cannot depend on the rotation).

use super::*;
use crate::config::preset;
use crate::rng::SplitMix64;

/// A micro b1.58 model (GQA: 4 query heads, 2 KV heads) whose norm gains are far from 1, so a
/// fold that forgot a gain would show.
fn model_with_gains(seed: u64) -> BitnetModel {
    let config = preset("micro", Variant::BitnetB158, ActBits::Int8).unwrap();
    let model = BitnetModel::init(&config, seed).unwrap();
    let mut rng = SplitMix64::new(seed ^ 0xABCD);
    let shapes: HashMap<String, Vec<usize>> =
        hbit_model::parameter_shapes(&config).into_iter().collect();
    let tensors = latent(&model)
        .unwrap()
        .into_iter()
        .map(|(name, mut data)| {
            if tensors::is_norm(&name) {
                data.iter_mut()
                    .for_each(|g| *g = 0.5 + rng.next_u64() as f32 / u64::MAX as f32);
            }
            let shape = shapes[&name].clone();
            (name, Tensor::from_vec(data, shape, &Device::Cpu).unwrap())
        })
        .collect();
    BitnetModel::from_tensors(&config, tensors, Path::new("<test>")).unwrap()
}

fn batch(config: &ModelConfig, rows: usize, len: usize, seed: u64) -> (Tensor, Tensor) {
    let mut rng = SplitMix64::new(seed);
    let mut ids = |n| -> Vec<u32> {
        (0..n)
            .map(|_| (rng.next_u64() % config.vocab_size as u64) as u32)
            .collect()
    };
    let inputs = Tensor::from_vec(ids(rows * len), (rows, len), &Device::Cpu).unwrap();
    let targets = Tensor::from_vec(ids(rows * len), (rows, len), &Device::Cpu).unwrap();
    (inputs, targets)
}

fn logits(model: &BitnetModel, tokens: &Tensor) -> Vec<f32> {
    model
        .forward(tokens)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_relative_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

#[test]
fn folded_rotations_leave_the_full_precision_logits_unchanged() {
    let model = model_with_gains(3);
    let fused = FusedWeights::new(&model).unwrap();
    let (tokens, _) = batch(model.config(), 2, 12, 1);
    let reference = logits(&model.unquantized().unwrap(), &tokens);
    for seed in [0, 7] {
        let rotations = Rotations::random_hadamard(model.config(), seed);
        let rotated = fused.model(&rotations, ActBits::Int4).unwrap();
        assert_eq!(rotated.config().variant, Variant::BitnetB158SpinQuant);
        assert!(!rotated.config().tie_word_embeddings);
        let diff = max_relative_diff(
            &reference,
            &logits(&rotated.unquantized().unwrap(), &tokens),
        );
        assert!(
            diff < 2e-5,
            "seed {seed}: logits moved by {diff} (relative)"
        );
        // Quantized, the rotation matters: against the same fused model without rotations.
        let identity = Rotations {
            r1: Orthogonal::identity(model.config().hidden_size),
            r2: vec![Orthogonal::identity(model.config().head_dim); model.config().num_layers],
        };
        let unrotated = logits(&fused.model(&identity, ActBits::Int4).unwrap(), &tokens);
        assert!(max_relative_diff(&unrotated, &logits(&rotated, &tokens)) > 1e-3);
    }
    // A fold that skipped R2 on either side of attention would not cancel: check one does.
    let rotations = Rotations::random_hadamard(model.config(), 1);
    let (r1, mut r2) = rotations.tensors().unwrap();
    let mut broken = fused.fold(&r1, &r2).unwrap();
    let identity = Tensor::eye(model.config().head_dim, DType::F32, &Device::Cpu).unwrap();
    r2[0] = identity;
    let wo = fused
        .fold(&r1, &r2)
        .unwrap()
        .remove(&proj_weight(0, Proj::O))
        .unwrap();
    broken.insert(proj_weight(0, Proj::O), wo);
    let broken = fused.model_of(broken, ActBits::Int4).unwrap();
    let diff = max_relative_diff(&reference, &logits(&broken.unquantized().unwrap(), &tokens));
    assert!(diff > 1e-2, "a missing R2 went unnoticed ({diff})");
}

#[test]
fn the_rotation_gradient_is_the_chain_rules() {
    let model = model_with_gains(5);
    let fused = FusedWeights::new(&model).unwrap();
    let rotations = Rotations::random_hadamard(model.config(), 2);
    let (inputs, targets) = batch(model.config(), 2, 16, 9);
    // Riemannian generator A = G·Rᵀ − R·Gᵀ, in max norm.
    let generator = |r: &Orthogonal, g: &[f64]| -> f64 {
        let (n, d) = (r.size(), r.data());
        let mut worst = 0.0f64;
        for i in 0..n {
            for j in 0..n {
                let gr: f64 = (0..n).map(|k| g[i * n + k] * d[j * n + k]).sum();
                let rg: f64 = (0..n).map(|k| d[i * n + k] * g[j * n + k]).sum();
                worst = worst.max((gr - rg).abs());
            }
        }
        worst
    };
    let (_, g1, g2) = fused
        .loss_and_gradients(&rotations, ActBits::Int4, &inputs, &targets, true)
        .unwrap();
    let (_, f1, f2) = fused
        .loss_and_gradients(&rotations, ActBits::Int4, &inputs, &targets, false)
        .unwrap();
    // Quantized, the loss depends on the rotation; in full precision it cannot, so the
    // gradient there has no component along the manifold (only the chain rule gives that).
    let quantized = generator(&rotations.r1, &g1);
    let full = generator(&rotations.r1, &f1);
    assert!(quantized > 1e-4, "no quantized gradient ({quantized})");
    assert!(
        full < 1e-3 * quantized,
        "full precision {full} vs {quantized}"
    );
    for l in 0..2 {
        let quantized = generator(&rotations.r2[l], &g2[l]);
        let full = generator(&rotations.r2[l], &f2[l]);
        assert!(quantized > 1e-5, "R2[{l}]: no quantized gradient");
        assert!(
            full < 1e-3 * quantized,
            "R2[{l}]: full precision {full} vs {quantized}"
        );
    }
}

#[test]
fn learning_keeps_the_rotations_orthogonal_and_the_model_exact() {
    let model = model_with_gains(11);
    let config = model.config().clone();
    let mut rng = SplitMix64::new(4);
    let tokens: Vec<u32> = (0..4000)
        .map(|_| (rng.next_u64() % config.vocab_size as u64) as u32)
        .collect();
    let data = PackedData::new(tokens, 32, 0.0, 0).unwrap();
    let options = SpinQuantOptions {
        steps: 6,
        learning_rate: 1.5,
        batch_size: 2,
        seed: 3,
    };
    let mut seen = Vec::new();
    let rotated = spinquant(&model, ActBits::Int4, &data, &options, |s| seen.push(*s)).unwrap();
    assert_eq!(seen.len(), 6);
    assert!(seen.iter().all(|s| s.loss.is_finite() && s.step_size > 0.0));
    // The steps moved the model away from its random-Hadamard start.
    let start = FusedWeights::new(&model)
        .unwrap()
        .model(
            &Rotations::random_hadamard(&config, options.seed),
            ActBits::Int4,
        )
        .unwrap();
    let (tokens, _) = batch(&config, 1, 20, 8);
    assert!(max_relative_diff(&logits(&start, &tokens), &logits(&rotated, &tokens)) > 1e-4);
    let diff = max_relative_diff(
        &logits(&model.unquantized().unwrap(), &tokens),
        &logits(&rotated.unquantized().unwrap(), &tokens),
    );
    assert!(
        diff < 2e-5,
        "learned rotations changed the function by {diff}"
    );
    assert_eq!(rotated.config().activation_bits, ActBits::Int4);
    // Only a b1.58 model is a SpinQuant starting point.
    let v2 = BitnetModel::init(
        &preset("micro", Variant::BitnetV2, ActBits::Int8).unwrap(),
        1,
    )
    .unwrap();
    let e = spinquant(&v2, ActBits::Int4, &data, &options, |_| {}).unwrap_err();
    assert!(
        e.to_string().contains("starts from a bitnet_b158 model"),
        "{e}"
    );
}
