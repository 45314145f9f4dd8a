//! Post-training quantization baselines of the paper's Table 4, applied to a trained BitNet
//! b1.58 checkpoint without any training:
//!
//! - **QuaRot-style rotation**: an online randomized Hadamard transform `R = H·D` (D a random
//!   ±1 diagonal) before every projection, and weights `Q_w(W·Rᵀ)` quantized by absmean as the
//!   paper does for its baselines (§3.2: rotations kept online for activations, RMSNorm scales
//!   not fused into projections). Every projection input in this architecture comes straight from
//!   an RMSNorm, so D folds exactly into that norm's gain (`g ← D·g`) and the columns of the
//!   projections reading it (`W ← W·D`); the variant `bitnet_b158_quarot` then applies `H` online
//!   and quantizes `W·D·H`. Unquantized, `(W·D·H)(H·D·x) = W·x`.
//! - **No rotation**: the same weights with INT4 activations, the floor the rotation improves on
//!   (written as `bitnet_v2_no_rotation`, which is b1.58's computation at any activation width).

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use hbit_kernels::quant::ActBits;
use hbit_model::rng::SplitMix64;
use hbit_model::tensors::{self, layer_norm, proj_weight};
use hbit_model::{ModelConfig, Proj, Variant};

use crate::error::TrainError;
use crate::model::BitnetModel;

type Result<T> = std::result::Result<T, TrainError>;

/// Each norm and the projections that read its output.
pub(crate) const NORM_READERS: [(&str, &[Proj]); 4] = [
    (tensors::INPUT_NORM, &[Proj::Q, Proj::K, Proj::V]),
    (tensors::ATTN_SUB_NORM, &[Proj::O]),
    (tensors::POST_ATTENTION_NORM, &[Proj::Gate, Proj::Up]),
    (tensors::FFN_SUB_NORM, &[Proj::Down]),
];

/// How `hbit ptq` treats the b1.58 model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// Randomized Hadamard before every projection (QuaRot-style).
    Hadamard,
    /// None: only the activation bits change.
    None,
}

impl Rotation {
    pub fn parse(s: &str) -> Result<Rotation> {
        match s {
            "hadamard" | "quarot" => Ok(Rotation::Hadamard),
            "none" => Ok(Rotation::None),
            other => Err(TrainError::Input(format!(
                "--rotation {other}: expected hadamard (QuaRot-style), spinquant or none"
            ))),
        }
    }
}

pub(crate) fn latent(model: &BitnetModel) -> Result<HashMap<String, Vec<f32>>> {
    model
        .named_vars()
        .into_iter()
        .map(|(n, v)| Ok((n, v.as_tensor().flatten_all()?.to_vec1::<f32>()?)))
        .collect()
}

/// Multiplies each norm gain and the input columns of the projections reading it by one
/// seeded random sign per channel. Exact: |D·x| = |x| per element, so absmax / absmean scales,
/// codes up to sign, and the ternary weights up to the same signs are all unchanged.
pub fn fold_random_signs(
    config: &ModelConfig,
    tensors: &mut HashMap<String, Vec<f32>>,
    seed: u64,
) -> Result<()> {
    let mut rng = SplitMix64::new(seed);
    for l in 0..config.num_layers {
        for (norm, readers) in NORM_READERS {
            let name = layer_norm(l, norm);
            let gain = tensors
                .get_mut(&name)
                .ok_or_else(|| TrainError::Input(format!("tensor `{name}` is missing")))?;
            let signs: Vec<f32> = (0..gain.len())
                .map(|_| if rng.next_u64() & 1 == 1 { -1.0 } else { 1.0 })
                .collect();
            gain.iter_mut().zip(&signs).for_each(|(g, s)| *g *= s);
            for &proj in readers {
                let name = proj_weight(l, proj);
                let w = tensors
                    .get_mut(&name)
                    .ok_or_else(|| TrainError::Input(format!("tensor `{name}` is missing")))?;
                for row in w.chunks_exact_mut(signs.len()) {
                    row.iter_mut().zip(&signs).for_each(|(v, s)| *v *= s);
                }
            }
        }
    }
    Ok(())
}

/// The post-training-quantized model of a trained `bitnet_b158` model at `bits` activations.
pub fn post_training_quantize(
    model: &BitnetModel,
    rotation: Rotation,
    bits: ActBits,
    seed: u64,
) -> Result<BitnetModel> {
    let config = model.config();
    if config.variant != Variant::BitnetB158 {
        return Err(TrainError::Input(format!(
            "post-training rotation starts from a bitnet_b158 model; this one is {}",
            config.variant.name()
        )));
    }
    let mut tensors = latent(model)?;
    let variant = match rotation {
        Rotation::Hadamard => {
            fold_random_signs(config, &mut tensors, seed)?;
            Variant::BitnetB158Quarot
        }
        // b1.58's computation at any activation width (the config keeps `bitnet_b158` for a8).
        Rotation::None if bits == ActBits::Int8 => Variant::BitnetB158,
        Rotation::None => Variant::BitnetV2NoRotation,
    };
    let new_config = config.with_quantization(variant, bits, config.hidden_act)?;
    let shapes: HashMap<String, Vec<usize>> = hbit_model::parameter_shapes(&new_config)
        .into_iter()
        .collect();
    let tensors = tensors
        .into_iter()
        .map(|(name, data)| {
            let shape = shapes[&name].clone();
            Ok((name, Tensor::from_vec(data, shape, &Device::Cpu)?))
        })
        .collect::<Result<HashMap<_, _>>>()?;
    BitnetModel::from_tensors(&new_config, tensors, std::path::Path::new("<ptq>"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::preset;

    fn logits(model: &BitnetModel, tokens: &[u32]) -> Vec<f32> {
        let t = Tensor::from_vec(tokens.to_vec(), (1, tokens.len()), &Device::Cpu).unwrap();
        model
            .forward(&t)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn random_signs_fold_exactly() {
        let config = preset("micro", Variant::BitnetB158, ActBits::Int8).unwrap();
        let model = BitnetModel::init(&config, 9).unwrap();
        let mut tensors = latent(&model).unwrap();
        fold_random_signs(&config, &mut tensors, 3).unwrap();
        let flipped = tensors
            .iter()
            .filter(|(n, v)| latent(&model).unwrap()[*n] != **v)
            .count();
        assert_eq!(
            flipped,
            config.num_layers * (4 + 7),
            "every norm and projection changes"
        );
        let shapes: HashMap<String, Vec<usize>> =
            hbit_model::parameter_shapes(&config).into_iter().collect();
        let folded = BitnetModel::from_tensors(
            &config,
            tensors
                .into_iter()
                .map(|(n, d)| {
                    let s = shapes[&n].clone();
                    (n, Tensor::from_vec(d, s, &Device::Cpu).unwrap())
                })
                .collect(),
            std::path::Path::new("<test>"),
        )
        .unwrap();
        let tokens = [1, 50, 200, 7, 300, 9];
        let (a, b) = (logits(&model, &tokens), logits(&folded, &tokens));
        let diff = a
            .iter()
            .zip(&b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff < 1e-5, "sign folding changed the logits by {diff}");
    }

    #[test]
    fn ptq_writes_the_rotated_variant_and_refuses_other_models() {
        let config = preset("micro", Variant::BitnetB158, ActBits::Int8).unwrap();
        let model = BitnetModel::init(&config, 9).unwrap();
        let q = post_training_quantize(&model, Rotation::Hadamard, ActBits::Int4, 1).unwrap();
        assert_eq!(q.config().variant, Variant::BitnetB158Quarot);
        assert_eq!(q.config().activation_bits, ActBits::Int4);
        for proj in Proj::ALL {
            let iq = q.config().input_quant(proj);
            assert!(iq.hadamard && iq.rotate_weight, "{proj:?}");
        }
        let out = logits(&q, &[1, 2, 3]);
        assert!(out.iter().all(|v| v.is_finite()));
        let plain = post_training_quantize(&model, Rotation::None, ActBits::Int4, 1).unwrap();
        assert_eq!(plain.config().variant, Variant::BitnetV2NoRotation);
        assert!(Proj::ALL
            .iter()
            .all(|&p| !plain.config().input_quant(p).hadamard));
        let v2 = BitnetModel::init(
            &preset("micro", Variant::BitnetV2, ActBits::Int8).unwrap(),
            1,
        )
        .unwrap();
        let e = post_training_quantize(&v2, Rotation::Hadamard, ActBits::Int4, 1).unwrap_err();
        assert!(
            e.to_string().contains("starts from a bitnet_b158 model"),
            "{e}"
        );
        assert!(Rotation::parse("spin").is_err());
    }
}
