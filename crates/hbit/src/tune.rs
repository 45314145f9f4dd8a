//! `hbit tune`: how this CPU multiplies each of a model's products fastest, measured per
//! product shape and batch bucket, and remembered per CPU in a profile under the user cache
//! directory (`$XDG_CACHE_HOME/hbit`, else `~/.cache/hbit`), keyed by the CPU signature and
//! hbit's version. Two choices are measured:
//!
//! * the **layout** of a4 models' projections: two weights per lookup (`pairs`), three
//!   (`triples`), or the INT8 multiply-add kernels on the 4-bit codes (`rows`). Loading an a4
//!   model re-lays its projections out in the chosen layout;
//! * the **thread split** of each kernel call (`hbit_kernels::matmul::Split`: row shares per
//!   thread, tables built per share or once, rows or token tiles split), for a8 models too.
//!   Loading a model pins the splits that take less than 1/1.1 of the built-in rules' time.
//!
//! `HBIT_TUNE=off` keeps the file's layout and the built-in splits. Every layout and split
//! gives the same integers, so the choices change speed only, never a result. Shapes are the
//! engine's kernel calls: q/k/v together, W_o, gate/up together, W_down
//! (`hbit_engine::weights::PRODUCT_GROUPS`).
//!
//! Without a profile for a large a4 model's shapes, loading it tunes the layout briefly first
//! (only the decode and prefill buckets the choice reads, one progress line) and saves the
//! result; `hbit tune` measures every bucket, layout and split.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use hbit_engine::weights::TernaryMatrix;
use hbit_engine::{Int4Layout, Weights};
use hbit_kernels::matmul::{Bucket, ProductKind, Split, SplitKey};
use hbit_kernels::quant::{quantize_activations, ActBits, TernaryWeights};
use serde::{Deserialize, Serialize};

use crate::cpu_cmd::CpuSignature;

/// Batch buckets: a name and the token count measured for it.
pub const BUCKETS: [(&str, usize); 4] = [("1", 1), ("2-8", 4), ("9-32", 16), ("33+", 64)];
const DECODE_BUCKET: &str = BUCKETS[0].0;
const PREFILL_BUCKET: &str = BUCKETS[3].0;

/// Bumped when the profile's meaning changes (the kernels it timed, its fields): part of the
/// file name and checked on read. 2: shapes are kernel calls (q/k/v, gate/up together), with
/// input widths and thread splits.
const PROFILE_SCHEMA: u32 = 2;

const LAYOUTS: [Int4Layout; 3] = [Int4Layout::Pairs, Int4Layout::Triples, Int4Layout::Rows];

/// The name profiles give the kernels' built-in split rules.
pub const AUTO_SPLIT: &str = "auto";

/// How much faster than the built-in rules a split must measure to be pinned: timing the
/// built-in rules against their own explicit twin is not exact on a shared VM
/// (reports/kernels.md, "Seventeenth session").
const SPLIT_MIN_SPEEDUP: f64 = 1.1;

/// The split that will run for one measured call, layout and bucket, and its seconds: the
/// fastest candidate where the built-in rules take more than [`SPLIT_MIN_SPEEDUP`] times as
/// long, else the built-in rules (`None`). `None` seconds where the built-in rules were not
/// timed.
fn split_to_run(by_split: &BTreeMap<String, f64>) -> (Option<Split>, Option<f64>) {
    let Some(&auto) = by_split.get(AUTO_SPLIT) else {
        return (None, None);
    };
    let best = by_split
        .iter()
        .filter_map(|(name, &s)| Some((name.parse::<Split>().ok()?, s)))
        .filter(|&(split, _)| split != Split::Builtin)
        .min_by(|a, b| a.1.total_cmp(&b.1));
    match best {
        Some((split, s)) if auto > s * SPLIT_MIN_SPEEDUP => (Some(split), Some(s)),
        _ => (None, Some(auto)),
    }
}

/// One measured kernel call at one bucket: seconds per product in each layout and split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShapeTiming {
    pub rows: usize,
    pub cols: usize,
    /// Input width: 4 (every layout measured) or 8 (the multiply-add kernel alone).
    pub bits: u8,
    pub bucket: String,
    pub tokens: usize,
    /// Layout name → best seconds per product over the splits measured.
    pub seconds: BTreeMap<String, f64>,
    /// Layout name → split name (`auto`: the built-in rules) → seconds per product; only the
    /// built-in rules where a first-use tune measured the layouts alone.
    pub splits: BTreeMap<String, BTreeMap<String, f64>>,
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

/// The kernel family a layout runs for inputs `bits` wide.
fn product_kind(layout: Int4Layout, bits: u8) -> ProductKind {
    match (bits, layout) {
        (4, Int4Layout::Pairs) => ProductKind::Int4Pairs,
        (4, Int4Layout::Triples) => ProductKind::Int4Triples,
        _ => ProductKind::Int8Rows,
    }
}

/// The layout name a kernel family runs (`rows` for the multiply-add kernel).
pub fn kind_name(kind: ProductKind) -> &'static str {
    match kind {
        ProductKind::Int8Rows => Int4Layout::Rows.name(),
        ProductKind::Int4Pairs => Int4Layout::Pairs.name(),
        ProductKind::Int4Triples => Int4Layout::Triples.name(),
    }
}

/// The layouts measured for inputs `bits` wide.
fn layouts_for(bits: u8) -> &'static [Int4Layout] {
    if bits == 4 {
        &LAYOUTS
    } else {
        &LAYOUTS[2..]
    }
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

    fn timing(&self, rows: usize, cols: usize, bits: u8, bucket: &str) -> Option<&ShapeTiming> {
        self.timings
            .iter()
            .find(|t| t.rows == rows && t.cols == cols && t.bits == bits && t.bucket == bucket)
    }

    /// Replaces or adds `timing`.
    fn record(&mut self, timing: ShapeTiming) {
        let key = |t: &ShapeTiming| (t.rows, t.cols, t.bits, t.bucket.clone());
        self.timings.retain(|t| key(t) != key(&timing));
        self.timings.push(timing);
    }

    /// The a4 layout with the least decode time (bucket 1) over `shapes` (each `(rows, cols)`
    /// once per kernel call that has it); ties within 2% go to the one with the least prefill
    /// time (bucket 33+). `None` when a shape was never measured.
    pub fn choose(&self, shapes: &[(usize, usize)]) -> Option<Int4Layout> {
        let total = |bucket: &str, layout: Int4Layout| -> Option<f64> {
            shapes
                .iter()
                .map(|&(r, c)| {
                    self.timing(r, c, 4, bucket)?
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

    /// The splits to pin: for every measured kernel call, layout and bucket, the one
    /// [`split_to_run`] finds faster than the built-in rules.
    pub fn chosen_splits(&self) -> BTreeMap<SplitKey, Split> {
        let mut chosen = BTreeMap::new();
        for t in &self.timings {
            let Some(bucket) = Bucket::parse(&t.bucket) else {
                continue;
            };
            for (layout, splits) in &t.splits {
                let Some(&layout) = LAYOUTS.iter().find(|l| l.name() == layout) else {
                    continue;
                };
                if let (Some(split), Some(s)) = split_to_run(splits) {
                    let key = SplitKey {
                        kind: product_kind(layout, t.bits),
                        rows: t.rows,
                        cols: t.cols,
                        bucket,
                    };
                    // The same kernel on 4- and 8-bit inputs (rows): the faster measurement.
                    let keep = chosen
                        .get(&key)
                        .is_none_or(|&(_, old): &(Split, f64)| s < old);
                    if keep {
                        chosen.insert(key, (split, s));
                    }
                }
            }
        }
        chosen
            .into_iter()
            .map(|(k, (split, _))| (k, split))
            .collect()
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

/// `(rows, cols)` of every kernel call of `weights` whose input is 4-bit (once per layer that
/// makes it).
pub fn int4_shapes(weights: &Weights) -> Vec<(usize, usize)> {
    weights
        .products()
        .into_iter()
        .filter(|p| p.bits == ActBits::Int4)
        .map(|p| (p.rows, p.cols))
        .collect()
}

/// `(rows, cols, input bits)` of every distinct kernel call of `weights`.
fn call_shapes(weights: &Weights) -> Vec<(usize, usize, u8)> {
    let mut shapes: Vec<(usize, usize, u8)> = weights
        .products()
        .into_iter()
        .map(|p| (p.rows, p.cols, p.bits.bits()))
        .collect();
    shapes.sort_unstable();
    shapes.dedup();
    shapes
}

/// `weights` in the layout the profile chooses for them, and what was done (for a note), or
/// the weights as they came when there is nothing to choose or no profile covers them. Pins
/// the profile's thread splits too ([`pin_splits`]).
pub fn apply_profile(weights: Weights, profile: Option<&Profile>) -> (Weights, Option<String>) {
    let Some(profile) = profile else {
        return (weights, None);
    };
    let pinned = pin_splits(profile);
    let splits_note = (pinned > 0).then(|| format!("{pinned} thread splits pinned (tune profile)"));
    let Some(current) = weights.int4_layout() else {
        return (weights, splits_note);
    };
    let Some(chosen) = profile.choose(&int4_shapes(&weights)) else {
        return (weights, splits_note);
    };
    if chosen == current {
        return (weights, splits_note);
    }
    let start = Instant::now();
    let relaid = weights.with_int4_layout(chosen);
    let note = format!(
        "INT4 projections re-laid out {} → {} for this CPU (tune profile; {:.2} s; HBIT_TUNE=off keeps the file's){}",
        current.name(),
        chosen.name(),
        start.elapsed().as_secs_f64(),
        splits_note.map_or(String::new(), |n| format!("; {n}"))
    );
    (relaid, Some(note))
}

/// Pins the profile's faster-than-built-in thread splits for this process
/// ([`Profile::chosen_splits`]); the kernels use them on pools of the thread count the profile
/// was measured on (which split wins depends on how many threads share it), wherever the
/// engine runs (a server's own pool included). Returns how many.
pub fn pin_splits(profile: &Profile) -> usize {
    let chosen = profile.chosen_splits();
    let n = chosen.len();
    hbit_kernels::matmul::choose_splits(profile.threads, chosen);
    n
}

/// A `rows × cols` ternary matrix in `layout` for inputs `bits` wide, and `tokens` inputs.
struct Operands {
    /// Copies enough to fill `cold_bytes`: the engine's products read their weights from DRAM
    /// whatever the batch (a model's weights are many times the last-level cache), so each
    /// product timed reads a copy no recent one has read.
    matrices: Vec<TernaryMatrix>,
    x: hbit_kernels::QuantizedActivations,
}

impl Operands {
    fn new(
        rows: usize,
        cols: usize,
        layout: Int4Layout,
        bits: u8,
        tokens: usize,
        cold_bytes: usize,
    ) -> Result<Operands> {
        let bits = ActBits::from_bits(bits).context("input bits: 4 or 8")?;
        let mut state = 0x2545_F491_4F6C_DD1Du64 ^ (rows * 31 + cols) as u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let codes: Vec<i8> = (0..rows * cols).map(|_| (next() % 3) as i8 - 1).collect();
        let w = TernaryWeights::from_codes(rows, cols, 0.5, codes)?;
        let one = TernaryMatrix::pack_with(&w, bits, layout);
        // Bounded for tiny matrices, whose products are latency-bound anyway.
        let copies = cold_bytes.div_ceil(one.bytes().max(1)).clamp(1, 4096);
        let x: Vec<f32> = (0..tokens * cols)
            .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        Ok(Operands {
            matrices: (0..copies).map(|_| one.clone()).collect(),
            x: quantize_activations(&x, tokens, cols, bits)?,
        })
    }

    /// Best seconds per product for each of `splits`. The splits take turns,
    /// [`PRODUCTS_PER_TURN`] products each per round, after a warm-up of [`WARM_UP`] on each:
    /// timed one after another, the first came out slower than its own twin (the kernel workers
    /// and the clock settling; reports/kernels.md, "Seventeenth session"). Every product reads
    /// the next copy in turn.
    fn time(&self, splits: &[Split]) -> Result<Vec<f64>> {
        let rows = self.matrices[0].rows();
        let mut y = vec![0.0f32; self.x.tokens * rows];
        let copies = self.matrices.len();
        let mut next_copy = 0;
        let mut run = |y: &mut [f32], split: Split| {
            let m = &self.matrices[next_copy];
            next_copy = (next_copy + 1) % copies;
            hbit_engine::weights::matmul_many_split(&[m], &self.x, &mut [y], Some(split))
        };
        for &split in splits {
            let start = Instant::now();
            while start.elapsed() < WARM_UP {
                run(&mut y, split)?;
            }
        }
        let mut best = vec![f64::INFINITY; splits.len()];
        for _round in 0..ROUNDS {
            for (b, &split) in best.iter_mut().zip(splits) {
                for _ in 0..PRODUCTS_PER_TURN {
                    let start = Instant::now();
                    run(&mut y, split)?;
                    *b = b.min(start.elapsed().as_secs_f64());
                }
            }
        }
        Ok(best)
    }
}

/// How long each split runs before it is timed.
const WARM_UP: std::time::Duration = std::time::Duration::from_millis(20);
/// Turns each split takes.
const ROUNDS: usize = 3;
/// Products timed per split and turn.
const PRODUCTS_PER_TURN: usize = 16;

/// The buckets a first-use tune measures: those [`Profile::choose`] reads.
const FIRST_USE_BUCKETS: [(&str, usize); 2] = [BUCKETS[0], BUCKETS[3]];

/// Bytes batch-1 measurements cycle through: 4 × the last-level cache (a decode step reads its
/// weights from DRAM), 256 MiB at least, since cpu0's cache may be one of several (per CCD).
fn cold_bytes(signature: &CpuSignature) -> usize {
    (4 * signature.last_level_cache_bytes().unwrap_or(0)).max(256 << 20)
}

/// Times every layout (for 4-bit inputs; the multiply-add kernel for 8-bit ones) for each
/// kernel call shape `(rows, cols, bits)` at each bucket on `threads` threads, with the
/// built-in split and, when `with_splits`, every candidate split; records each into `profile`
/// and hands it to `each` (for a table row or progress).
fn measure_into(
    profile: &mut Profile,
    shapes: &[(usize, usize, u8)],
    buckets: &[(&str, usize)],
    cold_bytes: usize,
    threads: usize,
    with_splits: bool,
    mut each: impl FnMut(&ShapeTiming),
) -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    for &(rows, cols, bits) in shapes {
        for &(bucket, tokens) in buckets {
            let mut seconds = BTreeMap::new();
            let mut splits = BTreeMap::new();
            for &layout in layouts_for(bits) {
                let operands = Operands::new(rows, cols, layout, bits, tokens, cold_bytes)?;
                // The built-in rules whatever a loaded model pinned in this process.
                let mut candidates = vec![Split::Builtin];
                if with_splits {
                    let kind = product_kind(layout, bits);
                    candidates.extend(Split::candidates(kind, tokens, threads));
                }
                let times = pool.install(|| operands.time(&candidates))?;
                let by_split: BTreeMap<String, f64> = candidates
                    .iter()
                    .zip(times)
                    .map(|(split, s)| (split.to_string(), s))
                    .collect();
                // The layout's time with the split loading will run, which the layout choice
                // compares.
                let (_, runs) = split_to_run(&by_split);
                seconds.insert(layout.name().to_string(), runs.unwrap_or(f64::INFINITY));
                splits.insert(layout.name().to_string(), by_split);
            }
            let timing = ShapeTiming {
                rows,
                cols,
                bits,
                bucket: bucket.to_string(),
                tokens,
                seconds,
                splits,
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
    let covered = |p: &Profile, &(r, c, bits): &(usize, usize, u8)| {
        FIRST_USE_BUCKETS
            .iter()
            .all(|(bucket, _)| p.timing(r, c, bits, bucket).is_some())
    };
    let missing: Vec<(usize, usize, u8)> = call_shapes(weights)
        .into_iter()
        .filter(|&(_, _, bits)| bits == 4)
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
        false,
        |_| eprint!("."),
    );
    if let Err(e) = measured {
        eprintln!(" failed ({e:#}); keeping the file's layout");
        return None;
    }
    // Another process may have saved shapes meanwhile: keep those not measured here.
    if let Some(on_disk) = read_profile(path, signature).filter(|p| p.threads == threads) {
        for t in on_disk.timings {
            if profile.timing(t.rows, t.cols, t.bits, &t.bucket).is_none() {
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
    let shapes = call_shapes(&weights);
    if shapes.is_empty() {
        bail!("{}: the model has no ternary projections", path.display());
    }
    let signature = CpuSignature::detect();
    let threads = args.threads.unwrap_or_else(rayon::current_num_threads);
    let out = profile_path(&signature).context("no cache directory: set XDG_CACHE_HOME or HOME")?;
    let mut profile = read_profile(&out, &signature)
        .filter(|p| p.threads == threads)
        .unwrap_or_else(|| Profile::empty(&signature, threads));
    println!(
        "tuning {} kernel calls × {} batch buckets, every layout and thread split, on {} \
         ({threads} threads)",
        shapes.len(),
        BUCKETS.len(),
        signature.key()
    );
    println!(
        "| call (rows × cols) | input bits | batch | pairs µs | triples µs | rows µs | fastest | \
         best split | built-in ÷ best | runs |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let row = |t: &ShapeTiming| {
        let Some((fastest, _)) = t.seconds.iter().min_by(|a, b| a.1.total_cmp(b.1)) else {
            return;
        };
        let by_split = t.splits.get(fastest);
        let (split, best) = by_split
            .and_then(|m| m.iter().min_by(|a, b| a.1.total_cmp(b.1)))
            .map_or((AUTO_SPLIT, f64::NAN), |(name, &s)| (name.as_str(), s));
        let auto = by_split.and_then(|m| m.get(AUTO_SPLIT)).copied();
        let runs = by_split
            .and_then(|m| split_to_run(m).0)
            .map_or(AUTO_SPLIT.to_string(), |s| s.to_string());
        let us = |l: &str| {
            t.seconds
                .get(l)
                .map_or("-".to_string(), |s| format!("{:.1}", s * 1e6))
        };
        println!(
            "| {} × {} | {} | {} | {} | {} | {} | {fastest} | {split} | {:.2} | {runs} |",
            t.rows,
            t.cols,
            t.bits,
            t.bucket,
            us("pairs"),
            us("triples"),
            us("rows"),
            auto.map_or(f64::NAN, |a| a / best)
        );
    };
    measure_into(
        &mut profile,
        &shapes,
        &BUCKETS,
        cold_bytes(&signature),
        threads,
        true,
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
    let pinned = profile.chosen_splits().len();
    std::fs::create_dir_all(out.parent().expect("a profile path has a directory"))
        .with_context(|| format!("creating {}", out.display()))?;
    let json = serde_json::to_string_pretty(&profile)?;
    hbit_train::checkpoint::write_file_atomic(&out, json.as_bytes())?;
    let layout = match (weights.int4_layout(), chosen) {
        (None, _) => String::new(),
        (Some(_), Some(l)) => format!("its a4 projections will load in the {} layout, ", l.name()),
        (Some(_), None) => "its a4 projections keep the file's layout, ".to_string(),
    };
    println!(
        "wrote {}; {layout}{pinned} kernel calls × buckets (of every profiled model) will run a \
         split other than the built-in one",
        out.display(),
    );
    Ok(())
}

/// The kernel layer's pinned splits are one per process, and loading a model re-pins them from
/// the user's profile: tests that pin and check them, or load models, take turns, or one's
/// reset lands between another's pin and its check.
#[cfg(test)]
pub(crate) fn global_pins() -> std::sync::MutexGuard<'static, ()> {
    static PINS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    PINS.lock().unwrap_or_else(|e| e.into_inner())
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
            bits: 4,
            bucket: bucket.into(),
            tokens: 1,
            seconds: [("pairs", pairs), ("triples", triples), ("rows", rows_s)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            splits: BTreeMap::new(),
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
    fn buckets_are_the_kernels_buckets() {
        let kernels: Vec<(&str, usize)> =
            Bucket::ALL.iter().map(|b| (b.name(), b.tokens())).collect();
        assert_eq!(kernels, BUCKETS);
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
    fn measurement_runs_every_layout_and_split() {
        let mut p = profile(Vec::new());
        let mut seen = Vec::new();
        measure_into(
            &mut p,
            &[(32, 96, 4), (48, 96, 8)],
            &[("1", 1), ("9-32", 16)],
            1 << 16,
            2,
            true,
            |t| seen.push((t.rows, t.bits, t.bucket.clone())),
        )
        .unwrap();
        assert_eq!(seen.len(), 4);
        for t in &p.timings {
            let layouts: Vec<&str> = layouts_for(t.bits).iter().map(|l| l.name()).collect();
            assert_eq!(
                t.seconds
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .len(),
                layouts.len()
            );
            for l in layouts {
                let by_split = &t.splits[l];
                let kind = product_kind(*LAYOUTS.iter().find(|x| x.name() == l).unwrap(), t.bits);
                // The built-in rules and every candidate, each timed.
                assert_eq!(
                    by_split.len(),
                    1 + Split::candidates(kind, t.tokens, 2).len()
                );
                assert!(by_split.values().all(|s| s.is_finite() && *s > 0.0));
                // The layout's time is that of the split loading would run.
                assert_eq!(Some(t.seconds[l]), split_to_run(by_split).1);
            }
        }
    }

    #[test]
    fn splits_are_pinned_only_where_they_beat_the_builtin_rules() {
        let _pins = super::global_pins();
        let with_splits = |rows, bucket: &str, layout: &str, splits: &[(&str, f64)]| {
            let mut t = timing(rows, 64, bucket, 1.0, 1.0, 1.0);
            t.splits.insert(
                layout.to_string(),
                splits.iter().map(|&(n, s)| (n.to_string(), s)).collect(),
            );
            t
        };
        let p = profile(vec![
            // 15% faster than the built-in rules: pinned.
            with_splits(
                48,
                "1",
                "triples",
                &[("auto", 1.0), ("rows/2", 0.85), ("own-tables/1", 1.0)],
            ),
            // 5% faster: noise, not pinned.
            with_splits(48, "33+", "triples", &[("auto", 1.0), ("tokens/2", 0.95)]),
            // No built-in timing to compare with (a first-use tune): nothing pinned.
            with_splits(96, "1", "pairs", &[("rows/4", 0.1)]),
            // The multiply-add kernel.
            with_splits(96, "2-8", "rows", &[("auto", 2.0), ("rows/8", 1.0)]),
        ]);
        let chosen = p.chosen_splits();
        let key = |kind, rows, bucket| SplitKey {
            kind,
            rows,
            cols: 64,
            bucket,
        };
        assert_eq!(
            chosen,
            BTreeMap::from([
                (
                    key(ProductKind::Int4Triples, 48, Bucket::One),
                    Split::Rows { shares: 2 }
                ),
                (
                    key(ProductKind::Int8Rows, 96, Bucket::Few),
                    Split::Rows { shares: 8 }
                ),
            ])
        );
        // Pinned for pools of the profile's thread count only.
        let k = key(ProductKind::Int8Rows, 96, Bucket::Few);
        assert_eq!(pin_splits(&p), 2);
        assert_eq!(
            hbit_kernels::matmul::chosen_split(&k, p.threads),
            Some(Split::Rows { shares: 8 })
        );
        assert_eq!(hbit_kernels::matmul::chosen_split(&k, p.threads + 1), None);
        hbit_kernels::matmul::choose_splits(0, BTreeMap::new());
        // The time a layout is chosen by is the time of the split that will run.
        let mut by_split = BTreeMap::from([("auto".to_string(), 1.0), ("rows/2".into(), 0.95)]);
        assert_eq!(split_to_run(&by_split), (None, Some(1.0)));
        by_split.insert("rows/4".into(), 0.8);
        assert_eq!(
            split_to_run(&by_split),
            (Some(Split::Rows { shares: 4 }), Some(0.8))
        );
        by_split.remove("auto");
        assert_eq!(split_to_run(&by_split), (None, None));
    }

    #[test]
    fn relayout_keeps_logits() {
        let _pins = super::global_pins();
        // A profile that prefers rows re-lays a4 weights out; the products are unchanged.
        let config =
            hbit_model::config::preset("micro", hbit_model::Variant::BitnetV2, ActBits::Int4)
                .unwrap();
        let weights = Weights::random(&config, 3, true)
            .unwrap()
            .with_int4_layout(Int4Layout::Pairs);
        let shapes = int4_shapes(&weights);
        let mut p = profile(Vec::new());
        p.threads = rayon::current_num_threads();
        // Rows fastest, and a split other than the built-in one (rows cut in eight shares per
        // thread) pinned for every call at the decode bucket and at 2-8 tokens, which the
        // 4-token forward below runs.
        for &(r, c) in &shapes {
            for bucket in ["1", "2-8"] {
                let mut t = timing(r, c, bucket, 3.0, 2.0, 1.0);
                t.splits.insert(
                    "rows".into(),
                    BTreeMap::from([("auto".into(), 1.0), ("rows/8".into(), 0.5)]),
                );
                p.record(t);
            }
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
        let note = note.unwrap();
        assert!(note.contains("pairs → rows"), "{note}");
        assert!(note.contains("8 thread splits pinned"), "{note}");
        let key = SplitKey {
            kind: ProductKind::Int8Rows,
            rows: shapes[0].0,
            cols: shapes[0].1,
            bucket: Bucket::Few,
        };
        let threads = rayon::current_num_threads();
        assert_eq!(
            hbit_kernels::matmul::chosen_split(&key, threads),
            Some(Split::Rows { shares: 8 })
        );
        assert!(engine(relaid) == want);
        hbit_kernels::matmul::choose_splits(0, BTreeMap::new());
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
        shapes.sort_unstable();
        shapes.dedup();
        // q/k/v together, W_o, gate/up together, W_down.
        assert_eq!(shapes.len(), 4, "{shapes:?}");
        for &(r, c) in &shapes {
            for bucket in ["1", "33+"] {
                let t = p.timing(r, c, 4, bucket).expect("measured");
                assert_eq!(t.seconds.len(), LAYOUTS.len());
                // A first use times the built-in splits only.
                assert!(t.splits.values().all(|m| m.keys().eq([AUTO_SPLIT])));
            }
            assert!(p.timing(r, c, 4, "2-8").is_none());
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
