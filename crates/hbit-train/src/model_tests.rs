//! Model tests: STE / eq. (8) gradients of H-BitLinear by hand, causality, variant switching.

use super::*;
use crate::config::{preset, Variant};
use hbit_kernels::quant::{quantize_activations, quantize_ternary, ActBits};
use hbit_kernels::Hadamard;

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn h_bitlinear_gradients_are_ste_through_quantizers_and_hadamard_of_gradient() {
    // y = Qw(W) · Qa(H x); L = sum(c ⊙ y). STE + eq. (8):
    //   dL/dx = H (Qw(W)ᵀ c),  dL/dW = cᵀ Qa(H x).
    let (tokens, n_in, n_out) = (3usize, 8usize, 5usize);
    let ws: Vec<f32> = (0..n_out * n_in)
        .map(|i| ((i * 37 % 17) as f32 - 8.0) * 0.05)
        .collect();
    let xs: Vec<f32> = (0..tokens * n_in)
        .map(|i| ((i * 11 % 13) as f32 - 6.0) * 0.3)
        .collect();
    let cs: Vec<f32> = (0..tokens * n_out)
        .map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.5)
        .collect();
    for bits in [ActBits::Int8, ActBits::Int4] {
        let quant = InputQuant {
            hadamard: true,
            topk_keep: None,
            bits,
            rotate_weight: false,
        };
        let w =
            Var::from_tensor(&Tensor::from_vec(ws.clone(), (n_out, n_in), &Device::Cpu).unwrap())
                .unwrap();
        let x =
            Var::from_tensor(&Tensor::from_vec(xs.clone(), (tokens, n_in), &Device::Cpu).unwrap())
                .unwrap();
        let config = preset("micro", Variant::BitnetV2, bits).unwrap();
        let lin = BitLinear::new(
            w.clone(),
            quant,
            &config,
            true,
            &mut HadamardCache::default(),
        )
        .unwrap();
        let y = lin.forward(x.as_tensor()).unwrap();
        let c = Tensor::from_vec(cs.clone(), (tokens, n_out), &Device::Cpu).unwrap();
        let grads = (&y * &c).unwrap().sum_all().unwrap().backward().unwrap();

        // The same quantities from the kernel layer, by hand.
        let h = Hadamard::new(n_in).unwrap();
        let mut hx = xs.clone();
        h.apply(&mut hx).unwrap();
        let xq = quantize_activations(&hx, tokens, n_in, bits).unwrap();
        let xd = xq.dequantize();
        let wd = quantize_ternary(&ws, n_out, n_in).unwrap().dequantize();
        let yv = values(&y);
        for t in 0..tokens {
            for o in 0..n_out {
                let want: f32 = (0..n_in).map(|k| wd[o * n_in + k] * xd[t * n_in + k]).sum();
                assert!((yv[t * n_out + o] - want).abs() < 1e-5, "forward {bits:?}");
            }
        }
        let gx = values(grads.get(&x).unwrap());
        let mut want_gx: Vec<f32> = (0..tokens * n_in)
            .map(|i| {
                let (t, k) = (i / n_in, i % n_in);
                (0..n_out)
                    .map(|o| wd[o * n_in + k] * cs[t * n_out + o])
                    .sum()
            })
            .collect();
        h.apply(&mut want_gx).unwrap(); // eq. (8)
        for (g, w) in gx.iter().zip(&want_gx) {
            assert!(
                (g - w).abs() < 1e-5,
                "dL/dx {bits:?}: {gx:?} vs {want_gx:?}"
            );
        }
        let gw = values(grads.get(&w).unwrap());
        for o in 0..n_out {
            for k in 0..n_in {
                let want: f32 = (0..tokens)
                    .map(|t| cs[t * n_out + o] * xd[t * n_in + k])
                    .sum();
                assert!((gw[o * n_in + k] - want).abs() < 1e-5, "dL/dW {bits:?}");
            }
        }
    }
}

#[test]
fn logits_are_causal_and_finite_for_every_variant() {
    let tokens_a = [5u32, 17, 300, 2, 9, 44];
    let mut tokens_b = tokens_a;
    tokens_b[4] = 123; // change a later token
    for (variant, bits) in [
        (Variant::BitnetB158, ActBits::Int8),
        (Variant::BitnetV2, ActBits::Int8),
        (Variant::BitnetV2, ActBits::Int4),
        (Variant::BitnetA48, ActBits::Int4),
        (Variant::BitnetV2NoRotation, ActBits::Int4),
        (Variant::BitnetV2WeightRotation, ActBits::Int8),
    ] {
        let cfg = preset("micro", variant, bits).unwrap();
        let model = BitnetModel::init(&cfg, 3).unwrap();
        let run = |t: &[u32]| {
            let input = Tensor::from_vec(t.to_vec(), (1, t.len()), &Device::Cpu).unwrap();
            let l = model.forward(&input).unwrap();
            assert_eq!(l.dims(), &[1, t.len(), cfg.vocab_size]);
            values(&l)
        };
        let (la, lb) = (run(&tokens_a), run(&tokens_b));
        let v = cfg.vocab_size;
        assert!(la.iter().all(|x| x.is_finite()));
        assert_eq!(
            la[..4 * v],
            lb[..4 * v],
            "{variant:?}: positions 0-3 saw token 4"
        );
        assert_ne!(
            la[4 * v..],
            lb[4 * v..],
            "{variant:?}: position 4 ignored its token"
        );
    }
}

#[test]
fn batch_rows_are_independent() {
    let cfg = preset("micro", Variant::BitnetV2, ActBits::Int4).unwrap();
    let model = BitnetModel::init(&cfg, 9).unwrap();
    let a = [1u32, 2, 3, 4];
    let b = [9u32, 8, 7, 6];
    let both = Tensor::from_vec([a, b].concat(), (2, 4), &Device::Cpu).unwrap();
    let lb = values(&model.forward(&both).unwrap());
    let la = values(
        &model
            .forward(&Tensor::from_vec(a.to_vec(), (1, 4), &Device::Cpu).unwrap())
            .unwrap(),
    );
    let n = 4 * cfg.vocab_size;
    for (x, y) in lb[..n].iter().zip(&la) {
        assert!((x - y).abs() < 1e-5);
    }
}

#[test]
fn switching_activation_bits_shares_parameters_and_changes_the_forward() {
    let a8 = preset("micro", Variant::BitnetV2, ActBits::Int8).unwrap();
    let model8 = BitnetModel::init(&a8, 5).unwrap();
    let a4 = a8
        .with_quantization(Variant::BitnetV2, ActBits::Int4, a8.hidden_act)
        .unwrap();
    let model4 = model8.with_config(&a4).unwrap();
    let input = Tensor::from_vec(vec![1u32, 2, 3], (1, 3), &Device::Cpu).unwrap();
    let (l8, l4) = (
        values(&model8.forward(&input).unwrap()),
        values(&model4.forward(&input).unwrap()),
    );
    assert_ne!(l8, l4);
    // Same Var objects: an update through one model is seen by the other.
    let (_, w8) = &model8.named_vars()[2];
    let (_, w4) = &model4.named_vars()[2];
    w8.set(&w8.zeros_like().unwrap()).unwrap();
    assert!(values(w4.as_tensor()).iter().all(|&v| v == 0.0));
    // A different architecture is refused.
    let other = preset("tiny", Variant::BitnetV2, ActBits::Int4).unwrap();
    assert!(model8.with_config(&other).is_err());
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let cfg = preset("micro", Variant::BitnetV2, ActBits::Int8).unwrap();
    let model = BitnetModel::init(&cfg, 1).unwrap();
    let too_long = Tensor::zeros(
        (1, cfg.max_position_embeddings + 1),
        DType::U32,
        &Device::Cpu,
    )
    .unwrap();
    assert!(model
        .forward(&too_long)
        .unwrap_err()
        .to_string()
        .contains("max_position_embeddings"));
    let bad_id = Tensor::from_vec(vec![1u32, 512], (1, 2), &Device::Cpu).unwrap();
    assert!(model
        .forward(&bad_id)
        .unwrap_err()
        .to_string()
        .contains("token id 512"));
}
