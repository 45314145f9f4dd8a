//! `hbit tune`: which weight layout this CPU multiplies a4 models' projections fastest in,
//! measured per projection shape and batch bucket, and remembered per CPU in a profile under
//! the user cache directory (`$XDG_CACHE_HOME/hbit`, else `~/.cache/hbit`), keyed by the CPU
//! signature and hbit's version. Loading an a4 model re-lays its projections out in the chosen
//! layout (`HBIT_TUNE=off` keeps the file's). Every layout gives the same integers, so the
//! choice changes speed only, never a result.
//!
//! The candidates are the three exact layouts for 4-bit inputs: two weights per lookup
//! (`pairs`), three (`triples`), and the INT8 multiply-add kernels on the 4-bit codes (`rows`).
//! Kernel tiles and thread splits keep their built-in choices.
//!
//! Without a profile for a large a4 model's shapes, loading it tunes briefly first (only the
//! decode and prefill buckets the choice reads, one progress line) and saves the result;
//! `hbit tune` measures every bucket.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use hbit_engine::weights::TernaryMatrix;
use hbit_engine::{Int4Layout, Weights};
use hbit_kernels::quant::{quantize_activations, ActBits, TernaryWeights};
use hbit_model::Proj;
use serde::{Deserialize, Serialize};

use crate::cpu_cmd::CpuSignature;

/// Batch buckets: a name and the token count measured for it.
pub const BUCKETS: [(&str, usize); 4] = [("1", 1), ("2-8", 4), ("9-32", 16), ("33+", 64)];
const DECODE_BUCKET: &str = BUCKETS[0].0;
const PREFILL_BUCKET: &str = BUCKETS[3].0;

/// Bumped when the profile's meaning changes (the kernels it timed, its fields): part of the
/// file name and checked on read.
const PROFILE_SCHEMA: u32 = 1;

const LAYOUTS: [Int4Layout; 3] = [Int4Layout::Pairs, Int4Layout::Triples, Int4Layout::Rows];

/// One measured shape at one bucket: seconds per product in each layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShapeTiming {
    pub rows: usize,
    pub cols: usize,
    pub bucket: String,
    pub tokens: usize,
    /// Layout name → best seconds per product.
    pub seconds: BTreeMap<String, f64>,
}

/// What `hbit tune` wrote for this CPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub schema: u32,
    pub hbit_version: String,
    pub signature: String,
    /// Threads the timings ran on.
    pub threads: usize,
    pub timings: Vec<ShapeTiming>,
}

impl Profile {
    fn empty(signature: &CpuSignature, threads: usize) -> Profile {
        Profile {
            schema: PROFILE_SCHEMA,
            hbit_version: env!("CARGO_PKG_VERSION").to_string(),
            signature: signature.key(),
            threads,
            timings: Vec::new(),
        }
    }

    fn timing(&self, rows: usize, cols: usize, bucket: &str) -> Option<&ShapeTiming> {
        self.timings
            .iter()
            .find(|t| t.rows == rows && t.cols == cols && t.bucket == bucket)
    }

    /// Replaces or adds `timing`.
    fn record(&mut self, timing: ShapeTiming) {
        self.timings
            .retain(|t| (t.rows, t.cols, &t.bucket) != (timing.rows, timing.cols, &timing.bucket));
        self.timings.push(timing);
    }

    /// The layout with the least decode time (bucket 1) over `shapes` (each `(rows, cols)` once
    /// per projection that has it); ties within 2% go to the one with the least prefill time
    /// (bucket 33+). `None` when a shape was never measured.
    pub fn choose(&self, shapes: &[(usize, usize)]) -> Option<Int4Layout> {
        let total = |bucket: &str, layout: Int4Layout| -> Option<f64> {
            shapes
                .iter()
                .map(|&(r, c)| {
                    self.timing(r, c, bucket)?
                        .seconds
                        .get(layout.name())
                        .copied()
                })
                .sum()
        };
        let decode: Vec<(Int4Layout, f64)> = LAYOUTS
            .iter()
            .map(|&l| Some((l, total(DECODE_BUCKET, l)?)))
            .collect::<Option<_>>()?;
        let best = decode.iter().map(|d| d.1).fold(f64::INFINITY, f64::min);
        decode
            .iter()
            .filter(|(_, s)| *s <= best * 1.02)
            .map(|&(l, _)| (l, total(PREFILL_BUCKET, l).unwrap_or(f64::INFINITY)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(l, _)| l)
    }
}

/// The profile directory: `$XDG_CACHE_HOME/hbit`, else `$HOME/.cache/hbit`.
pub fn profile_dir() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache"),
    };
    Some(base.join("hbit"))
}

/// This CPU's profile file (the name carries a hash of the signature and hbit's version).
pub fn profile_path(signature: &CpuSignature) -> Option<PathBuf> {
    let key = format!(
        "{}|{}|{PROFILE_SCHEMA}",
        signature.key(),
        env!("CARGO_PKG_VERSION")
    );
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    Some(profile_dir()?.join(format!("tune-{hash:016x}.json")))
}

/// Whether profiles are used (`HBIT_TUNE=off` turns them off).
pub fn enabled() -> bool {
    let value = std::env::var("HBIT_TUNE")
        .unwrap_or_default()
        .to_ascii_lowercase();
    !matches!(value.as_str(), "off" | "0" | "false" | "no")
}

/// The profile at `path` if it is this CPU's and this version's; a stale or damaged one is
/// ignored with a warning.
pub fn read_profile(path: &Path, signature: &CpuSignature) -> Option<Profile> {
    let text = std::fs::read_to_string(path).ok()?;
    let warn = |why: String| {
        eprintln!(
            "warning: ignoring the tune profile {}: {why}",
            path.display()
        )
    };
    let profile: Profile = match serde_json::from_str(&text) {
        Ok(p) => p,
        Err(e) => {
            warn(format!("it does not parse ({e}); `hbit tune` rewrites it"));
            return None;
        }
    };
    if profile.signature != signature.key()
        || profile.hbit_version != env!("CARGO_PKG_VERSION")
        || profile.schema != PROFILE_SCHEMA
    {
        warn(format!(
            "written for {} by hbit {}, this is {} with hbit {}",
            profile.signature,
            profile.hbit_version,
            signature.key(),
            env!("CARGO_PKG_VERSION")
        ));
        return None;
    }
    Some(profile)
}

/// This CPU's profile, when tuning is on and one exists.
pub fn current_profile() -> Option<Profile> {
    if !enabled() {
        return None;
    }
    let signature = CpuSignature::detect();
    read_profile(&profile_path(&signature)?, &signature)
}

/// `(rows, cols)` of every projection of `weights` whose input is 4-bit.
pub fn int4_shapes(weights: &Weights) -> Vec<(usize, usize)> {
    let c = &weights.config;
    (0..c.num_layers)
        .flat_map(|_| Proj::ALL)
        .filter(|&p| c.input_quant(p).bits == ActBits::Int4)
        .map(|p| c.proj_shape(p))
        .collect()
}

/// `weights` in the layout the profile chooses for them, and what was done (for a note), or
/// the weights as they came when there is nothing to choose or no profile covers them.
pub fn apply_profile(weights: Weights, profile: Option<&Profile>) -> (Weights, Option<String>) {
    let (Some(current), Some(profile)) = (weights.int4_layout(), profile) else {
        return (weights, None);
    };
    let Some(chosen) = profile.choose(&int4_shapes(&weights)) else {
        return (weights, None);
    };
    if chosen == current {
        return (weights, None);
    }
    let start = Instant::now();
    let relaid = weights.with_int4_layout(chosen);
    let note = format!(
        "INT4 projections re-laid out {} → {} for this CPU (tune profile; {:.2} s; HBIT_TUNE=off keeps the file's)",
        current.name(),
        chosen.name(),
        start.elapsed().as_secs_f64()
    );
    (relaid, Some(note))
}

/// Best seconds per product of a `rows × cols` ternary matrix in `layout` with `tokens` 4-bit
/// inputs. Batch 1 cycles through copies filling `cold_bytes`, so a matrix that fits in cache is
/// still read from DRAM as in a real decode step.
fn measure(
    rows: usize,
    cols: usize,
    layout: Int4Layout,
    tokens: usize,
    cold_bytes: usize,
) -> Result<f64> {
    let mut state = 0x2545_F491_4F6C_DD1Du64 ^ (rows * 31 + cols) as u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let codes: Vec<i8> = (0..rows * cols).map(|_| (next() % 3) as i8 - 1).collect();
    let w = TernaryWeights::from_codes(rows, cols, 0.5, codes)?;
    let one = TernaryMatrix::pack_with(&w, ActBits::Int4, layout);
    let copies = if tokens == 1 {
        // Bounded for tiny matrices, whose products are latency-bound anyway.
        cold_bytes.div_ceil(one.bytes().max(1)).clamp(1, 4096)
    } else {
        1
    };
    let matrices: Vec<TernaryMatrix> = (0..copies).map(|_| one.clone()).collect();
    let x: Vec<f32> = (0..tokens * cols)
        .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let xq = quantize_activations(&x, tokens, cols, ActBits::Int4)?;
    let mut y = vec![0.0f32; tokens * rows];
    let reps = (copies * 3).max(8);
    matrices[0].matmul(&xq, &mut y)?; // warm-up
    let mut best = f64::INFINITY;
    for rep in 0..reps {
        let start = Instant::now();
        matrices[rep % copies].matmul(&xq, &mut y)?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// The buckets a first-use tune measures: those [`Profile::choose`] reads.
const FIRST_USE_BUCKETS: [(&str, usize); 2] = [BUCKETS[0], BUCKETS[3]];

/// Bytes batch-1 measurements cycle through: 4 × the last-level cache (a decode step reads its
/// weights from DRAM), 256 MiB at least, since cpu0's cache may be one of several (per CCD).
fn cold_bytes(signature: &CpuSignature) -> usize {
    (4 * signature.last_level_cache_bytes().unwrap_or(0)).max(256 << 20)
}

/// Times every layout for each shape at each bucket on `threads` threads, recording each into
/// `profile` and handing it to `each` (for a table row or progress).
fn measure_into(
    profile: &mut Profile,
    shapes: &[(usize, usize)],
    buckets: &[(&str, usize)],
    cold_bytes: usize,
    threads: usize,
    mut each: impl FnMut(&ShapeTiming),
) -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    for &(rows, cols) in shapes {
        for &(bucket, tokens) in buckets {
            let mut seconds = BTreeMap::new();
            for layout in LAYOUTS {
                let s = pool.install(|| measure(rows, cols, layout, tokens, cold_bytes))?;
                seconds.insert(layout.name().to_string(), s);
            }
            let timing = ShapeTiming {
                rows,
                cols,
                bucket: bucket.to_string(),
                tokens,
                seconds,
            };
            each(&timing);
            profile.record(timing);
        }
    }
    Ok(())
}

/// This CPU's profile for `weights`, tuning briefly first where it lacks one of their shapes
/// and their ternary weights exceed `min_bytes` (below that the layout's speed hardly shows):
/// the missing shapes at the decode and prefill buckets, added to the profile at `path`, which
/// is then saved. It never tunes where it could not save (so it does not tune on every load),
/// nor into a profile measured on another thread count (which it would replace); the timings
/// another process saved meanwhile are kept. `None` when there is nothing to choose by.
pub fn profile_for(
    weights: &Weights,
    path: &Path,
    signature: &CpuSignature,
    min_bytes: usize,
) -> Option<Profile> {
    let existing = read_profile(path, signature);
    let mut shapes = int4_shapes(weights);
    shapes.sort_unstable();
    shapes.dedup();
    let covered = |p: &Profile, &(r, c): &(usize, usize)| {
        FIRST_USE_BUCKETS
            .iter()
            .all(|(bucket, _)| p.timing(r, c, bucket).is_some())
    };
    let missing: Vec<(usize, usize)> = shapes
        .into_iter()
        .filter(|s| !existing.as_ref().is_some_and(|p| covered(p, s)))
        .collect();
    if missing.is_empty() || weights.ternary_bytes() <= min_bytes {
        return existing;
    }
    let threads = rayon::current_num_threads();
    if existing.as_ref().is_some_and(|p| p.threads != threads) {
        return existing;
    }
    if let Err(e) = check_writable(path) {
        eprintln!(
            "note: not tuning this CPU for the model: the profile cannot be saved ({e:#}); \
             the file's layout stays (HBIT_TUNE=off silences this)"
        );
        return existing;
    }
    let mut profile = existing.unwrap_or_else(|| Profile::empty(signature, threads));
    eprint!(
        "tuning this CPU for {} new INT4 weight shapes (first use; a few seconds; `hbit tune` \
         measures every batch size, HBIT_TUNE=off skips) ",
        missing.len()
    );
    let start = Instant::now();
    let measured = measure_into(
        &mut profile,
        &missing,
        &FIRST_USE_BUCKETS,
        cold_bytes(signature),
        threads,
        |_| eprint!("."),
    );
    if let Err(e) = measured {
        eprintln!(" failed ({e:#}); keeping the file's layout");
        return None;
    }
    // Another process may have saved shapes meanwhile: keep those not measured here.
    if let Some(on_disk) = read_profile(path, signature).filter(|p| p.threads == threads) {
        for t in on_disk.timings {
            if profile.timing(t.rows, t.cols, &t.bucket).is_none() {
                profile.record(t);
            }
        }
    }
    let saved = serde_json::to_string_pretty(&profile)
        .map_err(anyhow::Error::from)
        .and_then(|json| {
            Ok(hbit_train::checkpoint::write_file_atomic(
                path,
                json.as_bytes(),
            )?)
        });
    match saved {
        Ok(()) => eprintln!(
            " {:.1} s; saved in {}",
            start.elapsed().as_secs_f64(),
            path.display()
        ),
        Err(e) => eprintln!(" {:.1} s; not saved ({e:#})", start.elapsed().as_secs_f64()),
    }
    Some(profile)
}

/// Whether a profile can be written at `path`: its directory is created and a probe file written
/// and removed there.
fn check_writable(path: &Path) -> Result<()> {
    let dir = path.parent().context("a profile path has a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("writing in {}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

#[derive(Args)]
pub struct TuneArgs {
    /// The model whose projection shapes are measured: packed file, checkpoint directory or
    /// GGUF [default: the bundled model].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Threads (default: all cores, as the engine uses).
    #[arg(long)]
    threads: Option<usize>,
}

/// `hbit tune`.
pub fn tune(args: &TuneArgs) -> Result<()> {
    let path = crate::engine_cmds::model_or_bundled(&args.model)?;
    // The file's own layout: a profile already there must not re-lay it out first.
    let weights = crate::engine_cmds::load_model_as_stored(&path)?
        .engine
        .weights;
    let mut shapes = int4_shapes(&weights);
    if shapes.is_empty() {
        bail!(
            "{}: no projection takes 4-bit inputs, so there is no layout to choose (INT8 inputs \
             have one kernel)",
            path.display()
        );
    }
    shapes.sort_unstable();
    shapes.dedup();
    let signature = CpuSignature::detect();
    let threads = args.threads.unwrap_or_else(rayon::current_num_threads);
    let out = profile_path(&signature).context("no cache directory: set XDG_CACHE_HOME or HOME")?;
    let mut profile = read_profile(&out, &signature)
        .filter(|p| p.threads == threads)
        .unwrap_or_else(|| Profile::empty(&signature, threads));
    println!(
        "tuning {} shapes × {} batch buckets × {} layouts on {} ({threads} threads)",
        shapes.len(),
        BUCKETS.len(),
        LAYOUTS.len(),
        signature.key()
    );
    println!("| shape (rows × cols) | batch | pairs µs | triples µs | rows µs | fastest |");
    println!("|---|---|---|---|---|---|");
    let row = |t: &ShapeTiming| {
        let fastest = t
            .seconds
            .iter()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .map(|(l, _)| l.clone())
            .unwrap_or_default();
        let us = |l: &str| t.seconds.get(l).map_or(f64::NAN, |s| s * 1e6);
        println!(
            "| {} × {} | {} | {:.1} | {:.1} | {:.1} | {fastest} |",
            t.rows,
            t.cols,
            t.bucket,
            us("pairs"),
            us("triples"),
            us("rows")
        );
    };
    measure_into(
        &mut profile,
        &shapes,
        &BUCKETS,
        cold_bytes(&signature),
        threads,
        row,
    )?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    // What loading pays to re-lay this model out in each other layout.
    if let Some(current) = weights.int4_layout() {
        for layout in LAYOUTS.into_iter().filter(|&l| l != current) {
            let copy = weights.clone();
            let start = Instant::now();
            let relaid = pool.install(|| copy.with_int4_layout(layout));
            let seconds = start.elapsed().as_secs_f64();
            drop(relaid);
            println!(
                "re-laying this model's INT4 projections out {} → {}: {seconds:.2} s",
                current.name(),
                layout.name()
            );
        }
    }
    let chosen = profile.choose(&int4_shapes(&weights));
    std::fs::create_dir_all(out.parent().expect("a profile path has a directory"))
        .with_context(|| format!("creating {}", out.display()))?;
    let json = serde_json::to_string_pretty(&profile)?;
    hbit_train::checkpoint::write_file_atomic(&out, json.as_bytes())?;
    println!(
        "wrote {}; this model's a4 projections will load in the {} layout",
        out.display(),
        chosen.map_or("file's", Int4Layout::name)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(
        rows: usize,
        cols: usize,
        bucket: &str,
        pairs: f64,
        triples: f64,
        rows_s: f64,
    ) -> ShapeTiming {
        ShapeTiming {
            rows,
            cols,
            bucket: bucket.into(),
            tokens: 1,
            seconds: [("pairs", pairs), ("triples", triples), ("rows", rows_s)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
    }

    fn profile(timings: Vec<ShapeTiming>) -> Profile {
        Profile {
            schema: PROFILE_SCHEMA,
            hbit_version: env!("CARGO_PKG_VERSION").into(),
            signature: "test".into(),
            threads: 2,
            timings,
        }
    }

    #[test]
    fn the_choice_minimizes_decode_then_prefill() {
        // Decode: triples 3 + 3, rows 2 + 5, pairs 4 + 4 → triples (6 < 7 < 8) over two shapes,
        // one of them used twice.
        let p = profile(vec![
            timing(8, 8, "1", 4.0, 3.0, 2.0),
            timing(8, 16, "1", 2.0, 1.5, 2.5),
            timing(8, 8, "33+", 1.0, 1.0, 1.0),
            timing(8, 16, "33+", 1.0, 1.0, 1.0),
        ]);
        assert_eq!(
            p.choose(&[(8, 8), (8, 16), (8, 16)]),
            Some(Int4Layout::Triples)
        );
        // Decode within 2%: prefill decides.
        let p = profile(vec![
            timing(8, 8, "1", 9.0, 1.00, 1.01),
            timing(8, 8, "33+", 1.0, 5.0, 2.0),
        ]);
        assert_eq!(p.choose(&[(8, 8)]), Some(Int4Layout::Rows));
        // A shape never measured: no choice.
        assert_eq!(p.choose(&[(8, 8), (4, 4)]), None);
        // Recording a shape again replaces it.
        let mut p = p;
        p.record(timing(8, 8, "1", 0.1, 9.0, 9.0));
        assert_eq!(p.timings.len(), 2);
        assert_eq!(p.choose(&[(8, 8)]), Some(Int4Layout::Pairs));
    }

    #[test]
    fn stale_or_damaged_profiles_are_ignored() {
        let dir = std::env::temp_dir().join(format!("hbit-tune-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sig = CpuSignature::from_cpuinfo("vendor_id : X\n", 2, Vec::new());
        let path = dir.join("p.json");
        let mut p = profile(vec![timing(8, 8, "1", 1.0, 2.0, 3.0)]);
        p.signature = sig.key();
        std::fs::write(&path, serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(read_profile(&path, &sig), Some(p.clone()));
        // Another CPU's, another version's, a damaged file: none used.
        let other = CpuSignature::from_cpuinfo("vendor_id : Y\n", 2, Vec::new());
        assert_eq!(read_profile(&path, &other), None);
        p.hbit_version = "0.0.0-old".into();
        std::fs::write(&path, serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(read_profile(&path, &sig), None);
        std::fs::write(&path, "{\"hbit_version\": ").unwrap();
        assert_eq!(read_profile(&path, &sig), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn measurement_runs_every_layout_and_relayout_keeps_logits() {
        for layout in LAYOUTS {
            for tokens in [1, 4] {
                let s = measure(32, 96, layout, tokens, 1 << 16).unwrap();
                assert!(s.is_finite() && s > 0.0, "{layout:?} {tokens}");
            }
        }
        // A profile that prefers rows re-lays a4 weights out; the products are unchanged.
        let config =
            hbit_model::config::preset("micro", hbit_model::Variant::BitnetV2, ActBits::Int4)
                .unwrap();
        let weights = Weights::random(&config, 3, true)
            .unwrap()
            .with_int4_layout(Int4Layout::Pairs);
        let shapes = int4_shapes(&weights);
        let mut p = profile(Vec::new());
        for &(r, c) in &shapes {
            p.record(timing(r, c, "1", 3.0, 2.0, 1.0));
        }
        let engine = |w: Weights| {
            let e = hbit_engine::Engine::new(w);
            let mut cache = e.new_cache(hbit_engine::KvBits::F16);
            e.forward(
                &mut [&mut cache],
                &[&[1, 5, 9, 2]],
                hbit_engine::Logits::Last,
            )
            .unwrap()
        };
        let want = engine(weights.clone());
        let (relaid, note) = apply_profile(weights, Some(&p));
        assert_eq!(relaid.int4_layout(), Some(Int4Layout::Rows));
        assert!(note.unwrap().contains("pairs → rows"));
        assert!(engine(relaid) == want);
    }

    #[test]
    fn first_use_tunes_missing_shapes_once_and_saves_them() {
        let dir = std::env::temp_dir().join(format!("hbit-first-use-{}", std::process::id()));
        let path = dir.join("nested").join("profile.json");
        let sig = CpuSignature::detect();
        let config =
            hbit_model::config::preset("micro", hbit_model::Variant::BitnetV2, ActBits::Int4)
                .unwrap();
        let weights = Weights::random(&config, 5, true).unwrap();
        // Smaller than the threshold: no tuning, no file.
        assert!(profile_for(&weights, &path, &sig, usize::MAX).is_none());
        assert!(!path.exists());
        // First use: every shape at the decode and prefill buckets, saved where asked.
        let p = profile_for(&weights, &path, &sig, 0).unwrap();
        let mut shapes = int4_shapes(&weights);
        shapes.dedup();
        for &(r, c) in &shapes {
            for bucket in ["1", "33+"] {
                let t = p.timing(r, c, bucket).expect("measured");
                assert_eq!(t.seconds.len(), LAYOUTS.len());
            }
            assert!(p.timing(r, c, "2-8").is_none());
        }
        assert!(p.choose(&shapes).is_some());
        let saved = read_profile(&path, &sig).expect("saved");
        let keys = |p: &Profile| {
            let mut k: Vec<_> = p
                .timings
                .iter()
                .map(|t| (t.rows, t.cols, t.bucket.clone()))
                .collect();
            k.sort();
            k
        };
        assert_eq!(keys(&saved), keys(&p));
        // Second use: read back, nothing measured again.
        assert_eq!(profile_for(&weights, &path, &sig, 0), Some(saved.clone()));
        // A profile measured on another thread count is left as it is.
        let mut other = saved;
        other.threads += 1;
        other.timings.clear();
        std::fs::write(&path, serde_json::to_string(&other).unwrap()).unwrap();
        assert_eq!(profile_for(&weights, &path, &sig, 0), Some(other.clone()));
        assert_eq!(read_profile(&path, &sig), Some(other));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
