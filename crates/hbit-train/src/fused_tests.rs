//! Each fused op against candle's autograd of the same layer composed from elementary ops
//! (the formulation the model used before): forward values and every input gradient.

use super::*;
use candle_core::{DType, Device, Var, D};

use crate::rng::SplitMix64;

fn random(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    let mut rng = SplitMix64::new(seed);
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| (rng.normal() * scale) as f32).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// Gradients of `L = Σ c ⊙ y` with respect to every variable `y` depends on.
fn grads_of(y: &Tensor, c: &Tensor) -> candle_core::backprop::GradStore {
    (y * c).unwrap().sum_all().unwrap().backward().unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Largest |a − b| relative to the largest |b| (so near-zero entries do not dominate).
fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (g, w) = (values(got), values(want));
    let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
    let worst = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst <= tol * scale,
        "{what}: max |diff| {worst:e} > {tol:e} × max |want| {scale:e}"
    );
}

/// Relative tolerance for f32 results whose summation order differs.
const TOL: f32 = 2e-6;

#[test]
fn rms_norm_matches_composed_ops_forward_and_backward() {
    let eps = 1e-5f64;
    for (shape, n) in [(vec![3usize, 5, 24], 24usize), (vec![37, 12], 12)] {
        let x = Var::from_tensor(&random(&shape, 1, 2.0)).unwrap();
        let g = Var::from_tensor(&(random(&[n], 2, 0.3) + 1.0).unwrap()).unwrap();
        let c = random(&shape, 3, 1.0); // L = Σ c ⊙ y
        let fused = RmsNorm { eps: eps as f32 }
            .apply(x.as_tensor(), g.as_tensor())
            .unwrap();
        let xs = x.as_tensor();
        let inv = (xs.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + eps)
            .unwrap()
            .sqrt()
            .unwrap()
            .recip()
            .unwrap();
        let composed = xs
            .broadcast_mul(&inv)
            .unwrap()
            .broadcast_mul(g.as_tensor())
            .unwrap();
        assert_close("rms forward", &fused, &composed, TOL);
        let gf = grads_of(&fused, &c);
        let gc = grads_of(&composed, &c);
        assert_close("rms dx", gf.get(&x).unwrap(), gc.get(&x).unwrap(), 1e-5);
        assert_close("rms dg", gf.get(&g).unwrap(), gc.get(&g).unwrap(), 1e-5);
    }
    // A wrong gain length is a named error.
    let err = RmsNorm { eps: 1e-5 }
        .apply(&random(&[2, 4], 1, 1.0), &random(&[3], 1, 1.0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("gain has 3 values"), "{err}");
}

/// The model's previous RoPE: `x·cos + rotate_half(x)·sin` from candle ops.
fn composed_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let (_, _, t, hd) = x.dims4().unwrap();
    let cos = cos.narrow(0, 0, t).unwrap();
    let sin = sin.narrow(0, 0, t).unwrap();
    let x1 = x.narrow(D::Minus1, 0, hd / 2).unwrap();
    let x2 = x.narrow(D::Minus1, hd / 2, hd / 2).unwrap();
    let rotated = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
    (x.broadcast_mul(&cos).unwrap() + rotated.broadcast_mul(&sin).unwrap()).unwrap()
}

#[test]
fn head_split_with_rope_and_merge_match_composed_ops_forward_and_backward() {
    let (b, t, n, hd, max_pos) = (2usize, 11usize, 3usize, 8usize, 16usize);
    let mut cos = Vec::new();
    let mut sin = Vec::new();
    for p in 0..max_pos {
        for _ in 0..2 {
            for i in 0..hd / 2 {
                let angle = p as f64 * 10000f64.powf(-(2.0 * i as f64) / hd as f64);
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
    }
    let cos_t = Tensor::from_vec(cos.clone(), (max_pos, hd), &Device::Cpu).unwrap();
    let sin_t = Tensor::from_vec(sin.clone(), (max_pos, hd), &Device::Cpu).unwrap();
    let tables = Arc::new(RopeTables {
        cos,
        sin,
        head_dim: hd,
    });
    let x = Var::from_tensor(&random(&[b, t, n * hd], 4, 1.0)).unwrap();
    let c = random(&[b, n, t, hd], 5, 1.0);
    let to_heads = |x: &Tensor| {
        x.reshape((b, t, n, hd))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    for rope in [None, Some(tables.clone())] {
        let fused = Heads::split(n, hd, rope.clone())
            .apply(x.as_tensor())
            .unwrap();
        let composed = match rope {
            Some(_) => composed_rope(&to_heads(x.as_tensor()), &cos_t, &sin_t),
            None => to_heads(x.as_tensor()),
        };
        assert_close("split forward", &fused, &composed, TOL);
        let gf = grads_of(&fused, &c);
        let gc = grads_of(&composed, &c);
        assert_close("split dx", gf.get(&x).unwrap(), gc.get(&x).unwrap(), TOL);
    }
    // Merge is the plain inverse layout; merging a rope-free split gives the input back.
    let y = Var::from_tensor(&random(&[b, n, t, hd], 6, 1.0)).unwrap();
    let merged = Heads::merge(n, hd).apply(y.as_tensor()).unwrap();
    let composed = y
        .as_tensor()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, t, n * hd))
        .unwrap();
    assert_close("merge forward", &merged, &composed, 0.0);
    let back = Heads::split(n, hd, None).apply(&merged).unwrap();
    assert_close("split ∘ merge", &back, y.as_tensor(), 0.0);
    let cm = random(&[b, t, n * hd], 7, 1.0);
    let gf = grads_of(&merged, &cm);
    let gc = grads_of(&composed, &cm);
    assert_close("merge dy", gf.get(&y).unwrap(), gc.get(&y).unwrap(), 0.0);
    let err = Heads::split(n, hd, Some(tables))
        .apply(&random(&[1, 17, n * hd], 1, 1.0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("17 positions exceed the table's 16"), "{err}");
    let err = Heads::split(n, hd, None)
        .apply(&random(&[1, 2, 5], 1, 1.0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("expects [B, T, 24]"), "{err}");
}

#[test]
fn glu_matches_composed_ops_forward_and_backward() {
    let shape = [4usize, 7, 10];
    for act in [HiddenAct::Silu, HiddenAct::Relu2] {
        let g = Var::from_tensor(&random(&shape, 8, 2.0)).unwrap();
        let u = Var::from_tensor(&random(&shape, 9, 1.0)).unwrap();
        let c = random(&shape, 10, 1.0);
        let fused = Glu { act }.apply(g.as_tensor(), u.as_tensor()).unwrap();
        let activated = match act {
            HiddenAct::Relu2 => g.as_tensor().relu().unwrap().sqr().unwrap(),
            HiddenAct::Silu => g.as_tensor().silu().unwrap(),
        };
        let composed = (activated * u.as_tensor()).unwrap();
        assert_close("glu forward", &fused, &composed, TOL);
        let gf = grads_of(&fused, &c);
        let gc = grads_of(&composed, &c);
        assert_close("glu dgate", gf.get(&g).unwrap(), gc.get(&g).unwrap(), 1e-5);
        assert_close("glu dup", gf.get(&u).unwrap(), gc.get(&u).unwrap(), TOL);
    }
}

#[test]
fn causal_softmax_matches_masked_softmax_forward_and_backward() {
    let (t, scale) = (9usize, 0.125f32);
    let s = Var::from_tensor(&random(&[2, 3, t, t], 6, 3.0)).unwrap();
    let c = random(&[2, 3, t, t], 7, 1.0);
    let fused = CausalSoftmax { scale }.apply(s.as_tensor()).unwrap();
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    let mask = Tensor::from_vec(mask, (t, t), &Device::Cpu).unwrap();
    let scores = (s.as_tensor() * scale as f64)
        .unwrap()
        .broadcast_add(&mask)
        .unwrap();
    let composed = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
    assert_close("softmax forward", &fused, &composed, TOL);
    // Masked entries are exactly zero and each row sums to one.
    let p = values(&fused);
    for (r, row) in p.chunks(t).enumerate() {
        let i = r % t;
        assert!(row[i + 1..].iter().all(|&v| v == 0.0), "row {r}");
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
    let gf = grads_of(&fused, &c);
    let gc = grads_of(&composed, &c);
    assert_close("softmax dS", gf.get(&s).unwrap(), gc.get(&s).unwrap(), 1e-5);
}

#[test]
fn cross_entropy_matches_candle_nn_and_its_gradient_is_softmax_minus_onehot() {
    let (n, v) = (13usize, 29usize);
    let logits = Var::from_tensor(&random(&[n, v], 8, 2.0)).unwrap();
    let targets: Vec<u32> = (0..n).map(|i| ((i * 7 + 3) % v) as u32).collect();
    let targets = Tensor::from_vec(targets, n, &Device::Cpu).unwrap();
    let fused = cross_entropy(logits.as_tensor(), &targets).unwrap();
    let reference = candle_nn::loss::cross_entropy(logits.as_tensor(), &targets).unwrap();
    assert_close("loss", &fused, &reference, TOL);
    assert_eq!(fused.dtype(), DType::F32);
    // Scale the loss so the upstream gradient is not 1.
    let gf = (&fused * 3.0).unwrap().backward().unwrap();
    let gc = (&reference * 3.0).unwrap().backward().unwrap();
    assert_close(
        "dlogits",
        gf.get(&logits).unwrap(),
        gc.get(&logits).unwrap(),
        1e-5,
    );
    // Each row of dlogits sums to zero (softmax sums to one, the one-hot to one).
    for row in values(gf.get(&logits).unwrap()).chunks(v) {
        assert!(row.iter().sum::<f32>().abs() < 1e-6);
    }
    let bad = Tensor::from_vec(vec![v as u32; n], n, &Device::Cpu).unwrap();
    let err = cross_entropy(logits.as_tensor(), &bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("target 29 is outside the vocabulary of 29"),
        "{err}"
    );
}
