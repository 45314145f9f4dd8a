//! Activation statistics on a `micro` model: observing changes no logit, every layer and site is
//! seen once per token, and the Hadamard view keeps each token's energy (it is orthonormal).

use std::collections::HashMap;
use std::path::Path;

use hbit_engine::{Engine, KvBits, Logits, Site, Weights};
use hbit_eval::activations::ActivationCollector;
use hbit_kernels::ActBits;
use hbit_train::config::{preset, Variant};
use hbit_train::BitnetModel;

fn engine(variant: Variant) -> Engine {
    let config = preset("micro", variant, ActBits::Int8).unwrap();
    let model = BitnetModel::init(&config, 23).unwrap();
    let latent: HashMap<String, Vec<f32>> = model
        .named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    Engine::new(Weights::from_latent(&config, &latent, false, Path::new("<test>")).unwrap())
}

#[test]
fn observing_changes_nothing_and_sees_every_site() {
    let engine = engine(Variant::BitnetV2);
    let tokens: Vec<u32> = (0..30).map(|i| (i * 53 + 1) % 512).collect();
    let plain = {
        let mut cache = engine.new_cache(KvBits::F32);
        engine
            .forward(&mut [&mut cache], &[&tokens], Logits::All)
            .unwrap()
    };
    let mut seen: HashMap<(usize, Site), usize> = HashMap::new();
    let observed = {
        let mut cache = engine.new_cache(KvBits::F32);
        let mut observe =
            |l: usize, s: Site, v: &[f32]| *seen.entry((l, s)).or_default() += v.len();
        engine
            .forward_observed(
                &mut [&mut cache],
                &[&tokens],
                Logits::All,
                Some(&mut observe),
            )
            .unwrap()
    };
    assert_eq!(plain, observed);
    let c = engine.config();
    assert_eq!(seen.len(), c.num_layers * 4);
    for ((_, site), n) in seen {
        let cols = if site == Site::Down {
            c.intermediate_size
        } else {
            c.hidden_size
        };
        assert_eq!(n, tokens.len() * cols, "{site:?}");
    }
}

#[test]
fn hadamard_view_keeps_energy_and_caps_rows() {
    for variant in [Variant::BitnetV2, Variant::BitnetB158] {
        let engine = engine(variant);
        let windows: Vec<Vec<u32>> = (0..3u32)
            .map(|w| (0..20).map(|i| (w * 97 + i * 31) % 512).collect())
            .collect();
        let mut collector = ActivationCollector::new(50); // 60 tokens offered, 50 kept
        collector.run(&engine, &windows).unwrap();
        let summaries = collector.summaries(21);
        // Both views of every (layer, site): the micro widths 64 and 192 = 12·16 have transforms.
        assert_eq!(
            summaries.len(),
            engine.config().num_layers * 4 * 2,
            "{variant:?}"
        );
        for pair in summaries.chunks(2) {
            let (before, after) = (&pair[0], &pair[1]);
            assert!(!before.rotated && after.rotated);
            assert_eq!(before.count, after.count);
            assert_eq!(before.histogram.iter().sum::<u64>() as usize, before.count);
            let cols = if before.site == Site::Down { 192 } else { 64 };
            assert_eq!(before.count, 50 * cols, "{:?}", before.site);
            // E[x²] = std² + mean² is preserved by an orthonormal transform of every row.
            let energy = |s: &hbit_eval::activations::Summary| s.std * s.std + s.mean * s.mean;
            let (e0, e1) = (energy(before), energy(after));
            assert!(
                (e0 - e1).abs() <= 1e-4 * e0,
                "{:?}: {e0} vs {e1}",
                before.site
            );
        }
    }
}
