//! Activation statistics of the paper's Figures 2–3: the inputs of every BitLinear, per layer,
//! as they arrive (before any Hadamard transform) and after the orthonormal Hadamard transform of
//! their width (the one H-BitLinear applies; for a model without it, the transform it would
//! apply). Outliers show as heavy tails: a kurtosis far above a Gaussian's 3, a large
//! max / mean-|x| ratio, and values that the INT4 absmean quantizer (eq. 6) clips.

use std::collections::BTreeMap;

use hbit_engine::{Engine, KvBits, Logits, Site};
use hbit_kernels::quant::{abs_sum_f32, QUANT_EPS, SQRT_7};
use hbit_kernels::Hadamard;
use hbit_model::ModelConfig;
use serde_json::{json, Value};

use crate::error::{EvalError, Result};

/// Values of one (layer, site): `[rows, cols]` as observed, and Hadamard-transformed.
struct SiteValues {
    cols: usize,
    before: Vec<f32>,
    /// Absent when the width has no Hadamard transform (see [`hbit_model::ModelConfig`]).
    after: Option<Vec<f32>>,
}

/// Collects projection inputs during forward passes, up to `max_rows` tokens per site.
pub struct ActivationCollector {
    max_rows: usize,
    hadamards: BTreeMap<usize, Option<Hadamard>>,
    sites: BTreeMap<(usize, Site), SiteValues>,
}

/// Distribution summary of one (layer, site, before/after).
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub layer: usize,
    pub site: Site,
    /// After the Hadamard transform.
    pub rotated: bool,
    pub count: usize,
    pub mean: f64,
    pub std: f64,
    /// Pearson kurtosis E[(x−μ)⁴]/σ⁴ (3 for a Gaussian).
    pub kurtosis: f64,
    pub max_abs: f64,
    pub mean_abs: f64,
    /// Share of values the per-token INT4 absmean quantizer (eq. 6) clips to −8 or 7.
    pub int4_clipped: f64,
    /// `bins` equal-width counts over [−max_abs, max_abs].
    pub histogram: Vec<u64>,
}

impl Summary {
    pub fn max_over_mean_abs(&self) -> f64 {
        self.max_abs / self.mean_abs.max(f64::MIN_POSITIVE)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "layer": self.layer,
            "site": self.site.name(),
            "hadamard": self.rotated,
            "count": self.count,
            "mean": self.mean,
            "std": self.std,
            "kurtosis": self.kurtosis,
            "max_abs": self.max_abs,
            "mean_abs": self.mean_abs,
            "max_over_mean_abs": self.max_over_mean_abs(),
            "int4_clipped": self.int4_clipped,
            "histogram": {"lo": -self.max_abs, "hi": self.max_abs, "counts": self.histogram},
        })
    }
}

/// Share of `row`'s values that eq. (6) clips: |round(√7·x/(β+ε))| beyond −8..7, β = mean|x|.
fn int4_clipped_in_row(row: &[f32]) -> usize {
    // The quantizer's own summation order, so borderline values clip exactly as in the model.
    let beta = abs_sum_f32(row) / row.len() as f32;
    let scale = SQRT_7 / (beta + QUANT_EPS);
    row.iter()
        .filter(|&&v| {
            let q = (scale * v).round();
            !(-8.0..=7.0).contains(&q)
        })
        .count()
}

/// Summary of `values` `[rows, cols]`.
pub fn summarize(
    layer: usize,
    site: Site,
    rotated: bool,
    values: &[f32],
    cols: usize,
    bins: usize,
) -> Summary {
    let n = values.len().max(1) as f64;
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
    let (mut m2, mut m4, mut max_abs, mut sum_abs) = (0.0, 0.0, 0.0f64, 0.0);
    for &v in values {
        let d = v as f64 - mean;
        m2 += d * d;
        m4 += d * d * d * d;
        max_abs = max_abs.max((v as f64).abs());
        sum_abs += (v as f64).abs();
    }
    let (m2, m4) = (m2 / n, m4 / n);
    let mut histogram = vec![0u64; bins.max(1)];
    let last = histogram.len() - 1;
    if max_abs > 0.0 {
        let width = 2.0 * max_abs / histogram.len() as f64;
        for &v in values {
            let b = ((v as f64 + max_abs) / width) as usize;
            histogram[b.min(last)] += 1;
        }
    } else {
        histogram[last.div_ceil(2)] = values.len() as u64;
    }
    let clipped: usize = values.chunks_exact(cols).map(int4_clipped_in_row).sum();
    Summary {
        layer,
        site,
        rotated,
        count: values.len(),
        mean,
        std: m2.sqrt(),
        kurtosis: if m2 > 0.0 { m4 / (m2 * m2) } else { 0.0 },
        max_abs,
        mean_abs: sum_abs / n,
        int4_clipped: clipped as f64 / n,
        histogram,
    }
}

impl ActivationCollector {
    pub fn new(max_rows: usize) -> ActivationCollector {
        ActivationCollector {
            max_rows,
            hadamards: BTreeMap::new(),
            sites: BTreeMap::new(),
        }
    }

    /// Runs `windows` (token sequences, each from an empty cache) through `engine`, observing.
    pub fn run(&mut self, engine: &Engine, windows: &[Vec<u32>]) -> Result<()> {
        let config = engine.config().clone();
        for window in windows {
            if window.is_empty() {
                return Err(EvalError::Input("an empty token window".into()));
            }
            let mut cache = engine.new_cache(KvBits::F32);
            let mut observe = |layer: usize, site: Site, values: &[f32]| {
                self.observe(&config, layer, site, values)
            };
            engine.forward_observed(
                &mut [&mut cache],
                &[window],
                Logits::Last,
                Some(&mut observe),
            )?;
        }
        Ok(())
    }

    /// Adds the rows of `values` that fit under the cap.
    pub fn observe(&mut self, config: &ModelConfig, layer: usize, site: Site, values: &[f32]) {
        let cols = match site {
            Site::Qkv | Site::O | Site::GateUp => config.hidden_size,
            Site::Down => config.intermediate_size,
        };
        let hadamard = self
            .hadamards
            .entry(cols)
            .or_insert_with(|| config.hadamard(cols).ok());
        let entry = self
            .sites
            .entry((layer, site))
            .or_insert_with(|| SiteValues {
                cols,
                before: Vec::new(),
                after: hadamard.as_ref().map(|_| Vec::new()),
            });
        let room = self.max_rows.saturating_sub(entry.before.len() / cols);
        let take = &values[..(values.len() / cols).min(room) * cols];
        entry.before.extend_from_slice(take);
        if let (Some(h), Some(after)) = (hadamard.as_ref(), entry.after.as_mut()) {
            let start = after.len();
            after.extend_from_slice(take);
            for row in after[start..].chunks_exact_mut(cols) {
                // The width was accepted when the transform was built.
                let _ = h.apply(row);
            }
        }
    }

    /// Every (layer, site) summarized before and (where defined) after the transform.
    pub fn summaries(&self, bins: usize) -> Vec<Summary> {
        let mut out = Vec::new();
        for (&(layer, site), v) in &self.sites {
            out.push(summarize(layer, site, false, &v.before, v.cols, bins));
            if let Some(after) = &v.after {
                out.push(summarize(layer, site, true, after, v.cols, bins));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_and_clipping_by_hand() {
        // One token [1, −1, 1, −1, 8, 0, 0, 0]: mean 1, mean|x| = 12/8 = 1.5, max 8.
        let row = [1.0, -1.0, 1.0, -1.0, 8.0, 0.0, 0.0, 0.0];
        let s = summarize(0, Site::O, false, &row, 8, 4);
        assert!((s.mean - 1.0).abs() < 1e-12);
        // Central values: 0,−2,0,−2,7,−1,−1,−1 → m2 = 60/8 = 7.5, m4 = (16+16+2401+3)/8.
        assert!((s.std - 7.5f64.sqrt()).abs() < 1e-12);
        assert!((s.kurtosis - (2436.0 / 8.0) / 56.25).abs() < 1e-12);
        assert_eq!((s.max_abs, s.mean_abs), (8.0, 1.5));
        assert!((s.max_over_mean_abs() - 8.0 / 1.5).abs() < 1e-12);
        // √7/1.5 · 8 = 14.1 → clipped; √7/1.5 · 1 = 1.76 → kept.
        assert_eq!(s.int4_clipped, 1.0 / 8.0);
        // Bins of width 4 over [−8, 8]: [−8,−4) none, [−4,0) two, [0,4) five, [4,8] one.
        assert_eq!(s.histogram, vec![0, 2, 5, 1]);
    }

    #[test]
    fn a_flat_row_clips_nothing_and_a_gaussian_like_kurtosis_is_small() {
        let flat = [0.5f32; 16];
        let s = summarize(0, Site::Down, false, &flat, 16, 3);
        assert_eq!(s.int4_clipped, 0.0);
        assert_eq!(s.kurtosis, 0.0); // no spread at all
        assert_eq!(s.histogram, vec![0, 0, 16]);
    }
}
