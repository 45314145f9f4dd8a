//! `hbit bench e2e`: whole-model prefill and decode tokens/s of the inference engine on models
//! with random ternary weights in bitnet.cpp's benchmark shapes and the paper's sizes, with the
//! resident memory each costs.
//!
//! Prefill: one sequence of `--prefill-tokens` tokens in one forward call (llama-bench's pp).
//! Decode: `--batch` sequences, each after a 1-token prompt, advanced `--decode-tokens` steps
//! together (llama-bench's tg at batch 1), greedy. Each case is the best of `--rounds`, with the
//! median of the rounds beside it.
//!
//! With `--alternate`, every act-bits model of a shape is loaded at once and the rounds take
//! turns (a8, a4, a8, a4, …), so an a4 / a8 ratio compares the same minutes of a machine whose
//! speed drifts between them; each a4 case then also reports the median over rounds of its
//! ratio to the a8 round beside it. Resident memory is not attributed to a model then (every
//! model is resident), so it is reported only without `--alternate`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use hbit_engine::format::{load_packed_opts, LoadMode};
use hbit_engine::sample::argmax;
use hbit_engine::{Engine, Int4Layout, KvBits, KvCache, Logits};
use hbit_kernels::ActBits;
use hbit_model::rng::SplitMix64;

#[derive(Args)]
pub struct E2eArgs {
    /// Shapes: b125m, b700m, b2b (bitnet.cpp's presets), 400m, 1.3b (the paper's).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "b125m,b700m,b2b,400m,1.3b"
    )]
    shapes: Vec<String>,
    /// Activation bits of the BitNet v2 models.
    #[arg(long, value_delimiter = ',', default_value = "8,4")]
    act_bits: Vec<u8>,
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Sequences decoded together.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    batch: Vec<usize>,
    /// KV-cache storage (16 = f16; 8, 4, 3 = absmax integers).
    #[arg(long, value_delimiter = ',', default_value = "16,4")]
    kv_bits: Vec<String>,
    /// LM head widths: 16 (as stored, f16), 8 (absmax per row), 6 and 4 (an f16 scale per 32
    /// weights); each but 16 a copy made at load.
    #[arg(long, value_delimiter = ',', default_value = "16")]
    head_bits: Vec<u8>,
    /// Layouts of the a4 models' projections: pairs (two weights per table lookup), triples
    /// (three), rows (the INT8 multiply-add kernels on the 4-bit codes; re-laid out at load from
    /// a pairs file), native (this CPU's built-in choice).
    #[arg(long, value_delimiter = ',', default_value = "native")]
    int4_layout: Vec<String>,
    /// How the model file comes into memory: read (a private copy, the default) and/or map.
    #[arg(long, value_delimiter = ',', default_value = "read")]
    load: Vec<String>,
    #[arg(long, default_value_t = 128)]
    prefill_tokens: usize,
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// Measurements per case; the best is reported, and the median beside it.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// A fast subset: b125m, 2 threads, batch 1, KV f16, 64 prefill and 16 decode tokens.
    #[arg(long)]
    quick: bool,
    /// Where the dummy models are written once and reused.
    #[arg(long, default_value = ".hbit-cache/dummy")]
    cache_dir: PathBuf,
    /// One JSON object per measurement.
    #[arg(long)]
    json: bool,
    /// Load a shape's act-bits models together and alternate their rounds, reporting each a4
    /// case's median ratio to the a8 rounds beside it (`decode_vs_int8_median`,
    /// `prefill_vs_int8_median`); resident memory is then not reported.
    #[arg(long)]
    alternate: bool,
    /// Thread splits of the kernel calls: builtin (the kernels' rules by shape) or tuned (those
    /// this CPU's tune profile pins, as loading a model does, at the thread count it was
    /// measured on; `hbit tune --model M` writes it).
    #[arg(long, default_value = "builtin")]
    splits: String,
}

/// Resident set size of this process (Linux `/proc/self/statm`), bytes.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Resident bytes once the allocator has handed back what was freed (its retained pages are not
/// the engine's memory): on this thread at once, on the kernel workers as they park.
fn resident_bytes_in_use() -> Option<u64> {
    hbit_kernels::allocator::release_freed_pages();
    std::thread::sleep(hbit_kernels::parallel::PARKED_AFTER);
    resident_bytes()
}

/// The dummy model file of a shape, written by a child `hbit init --dummy` (so its build-time
/// allocations never count toward this process's resident memory).
pub(crate) fn dummy_model(
    dir: &Path,
    shape: &str,
    bits: ActBits,
    layout: Option<Int4Layout>,
) -> Result<PathBuf> {
    let path = match layout {
        Some(l) => dir.join(format!("{shape}-v2-a{}-{}.hbit", bits.bits(), l.name())),
        None => dir.join(format!("{shape}-v2-a{}.hbit", bits.bits())),
    };
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let exe = std::env::current_exe().context("locating the hbit executable")?;
    let out = std::process::Command::new(exe)
        .args(["init", "--dummy", "--shape", shape, "--act-bits"])
        .arg(bits.bits().to_string())
        .args(["--int4-layout", layout.map_or("native", Int4Layout::name)])
        .arg("--out")
        .arg(&path)
        .output()
        .context("running hbit init --dummy")?;
    // The child's report goes to stderr: stdout carries only measurements (JSON lines).
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!(
            "hbit init --dummy --shape {shape} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(path)
}

/// A model of a shape, loaded for measurement.
struct LoadedModel {
    bits: ActBits,
    layout: Option<Int4Layout>,
    file_bytes: u64,
    engine: Engine,
}

struct Measured {
    prefill_tok_s: f64,
    decode_tok_s: f64,
    kv_bytes: usize,
    /// The process's resident bytes at the end of the decode, every cache alive, freed memory
    /// handed back ([`resident_bytes_in_use`]).
    resident: u64,
    /// The same, read first, with the allocator's freed pages still counted.
    resident_uncollected: u64,
}

/// A case over its rounds: the best (reported as `prefill_tok_s` / `decode_tok_s`) and every
/// round, whose median is reported beside it for comparisons against tools that report a mean
/// (llama-bench).
struct Rounds {
    best: Measured,
    /// Every round's tokens/s, in round order.
    prefill_each: Vec<f64>,
    decode_each: Vec<f64>,
}

impl Rounds {
    /// Median over rounds of this case's tokens/s over `base`'s in the same round:
    /// (prefill, decode).
    fn ratio_to(&self, base: &Rounds) -> (f64, f64) {
        let ratio = |a: &[f64], b: &[f64]| median(a.iter().zip(b).map(|(x, y)| x / y).collect());
        (
            ratio(&self.prefill_each, &base.prefill_each),
            ratio(&self.decode_each, &base.decode_each),
        )
    }
}

/// Median of `v` (the mean of the middle two for an even count); `v` is not empty.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn random_tokens(n: usize, vocab: usize, rng: &mut SplitMix64) -> Vec<u32> {
    (0..n).map(|_| rng.below(vocab as u64) as u32).collect()
}

/// Best and median of `rounds` measurements of each engine (this machine's speed varies between
/// runs; the best round is the one least disturbed). The engines take turns round by round.
fn measure_rounds(
    engines: &[&Engine],
    batch: usize,
    kv: KvBits,
    prefill: usize,
    decode: usize,
    rounds: usize,
) -> Result<Vec<Rounds>> {
    let mut all: Vec<Vec<Measured>> = engines.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds.max(1) {
        for (engine, rounds) in engines.iter().zip(&mut all) {
            rounds.push(measure(engine, batch, kv, prefill, decode)?);
        }
    }
    Ok(all.into_iter().map(summarize).collect())
}

/// The best of one engine's rounds (not empty), and each round's tokens/s.
fn summarize(all: Vec<Measured>) -> Rounds {
    let prefill_each: Vec<f64> = all.iter().map(|m| m.prefill_tok_s).collect();
    let decode_each: Vec<f64> = all.iter().map(|m| m.decode_tok_s).collect();
    let best = Measured {
        prefill_tok_s: prefill_each.iter().copied().fold(0.0, f64::max),
        decode_tok_s: decode_each.iter().copied().fold(0.0, f64::max),
        kv_bytes: all[0].kv_bytes,
        resident: all.iter().map(|m| m.resident).max().unwrap_or(0),
        resident_uncollected: all
            .iter()
            .map(|m| m.resident_uncollected)
            .max()
            .unwrap_or(0),
    };
    Rounds {
        best,
        prefill_each,
        decode_each,
    }
}

fn measure(
    engine: &Engine,
    batch: usize,
    kv: KvBits,
    prefill: usize,
    decode: usize,
) -> Result<Measured> {
    let vocab = engine.config().vocab_size;
    let mut rng = SplitMix64::new(1);
    // Warm-up: page the mapped weights in, spin the thread pool up.
    let mut warm = engine.new_cache(kv);
    engine.forward(
        &mut [&mut warm],
        &[&random_tokens(4, vocab, &mut rng)],
        Logits::Last,
    )?;

    let prompt = random_tokens(prefill, vocab, &mut rng);
    // Caches sized up front, as `generate` does: growth would copy the history mid-measurement.
    let mut cache = engine.new_cache(kv);
    cache.reserve(prefill);
    let t = Instant::now();
    engine.forward(&mut [&mut cache], &[&prompt], Logits::Last)?;
    let prefill_tok_s = prefill as f64 / t.elapsed().as_secs_f64();

    let mut caches: Vec<KvCache> = (0..batch)
        .map(|_| {
            let mut cache = engine.new_cache(kv);
            cache.reserve(decode);
            cache
        })
        .collect();
    let mut next: Vec<[u32; 1]> = (0..batch)
        .map(|_| [rng.below(vocab as u64) as u32])
        .collect();
    let t = Instant::now();
    for _ in 0..decode {
        let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
        let lists: Vec<&[u32]> = next.iter().map(|n| n.as_slice()).collect();
        let logits = engine.forward(&mut refs, &lists, Logits::Last)?;
        for (n, l) in next.iter_mut().zip(&logits) {
            n[0] = argmax(l);
        }
    }
    let decode_tok_s = (batch * decode) as f64 / t.elapsed().as_secs_f64();
    // Read while every cache is alive: the KV bytes reported beside it are these caches'.
    let resident_uncollected = resident_bytes().unwrap_or(0);
    let resident = resident_bytes_in_use().unwrap_or(0);
    Ok(Measured {
        prefill_tok_s,
        decode_tok_s,
        kv_bytes: caches.iter().map(KvCache::bytes).sum::<usize>() + cache.bytes(),
        resident,
        resident_uncollected,
    })
}

pub fn run(args: &E2eArgs) -> Result<()> {
    match args.splits.as_str() {
        "builtin" => hbit_kernels::matmul::choose_splits(0, Default::default()),
        "tuned" => {
            let profile = crate::tune::current_profile().context(
                "--splits tuned: no tune profile for this CPU (run `hbit tune --model M`, and \
                 leave HBIT_TUNE on)",
            )?;
            let pinned = crate::tune::pin_splits(&profile);
            eprintln!(
                "--splits tuned: {pinned} kernel calls × buckets pinned from the profile, for \
                 {} threads (other thread counts run the built-in splits)",
                profile.threads
            );
        }
        other => bail!("--splits: expected builtin or tuned, found {other:?}"),
    }
    let (shapes, threads, batches, kv_names, prefill, decode) = if args.quick {
        (
            vec!["b125m".to_string()],
            vec![2],
            vec![1],
            vec!["16".to_string()],
            64,
            16,
        )
    } else {
        (
            args.shapes.clone(),
            args.threads.clone(),
            args.batch.clone(),
            args.kv_bits.clone(),
            args.prefill_tokens,
            args.decode_tokens,
        )
    };
    let rounds = if args.quick { 1 } else { args.rounds.max(1) };
    let kvs: Vec<KvBits> = kv_names
        .iter()
        .map(|k| KvBits::parse(k))
        .collect::<Result<_, _>>()?;
    if prefill == 0 || decode == 0 {
        bail!("--prefill-tokens and --decode-tokens must be positive");
    }
    let loads: Vec<LoadMode> = args
        .load
        .iter()
        .map(|m| LoadMode::parse(m).with_context(|| "--load"))
        .collect::<Result<_>>()?;
    if !args.json {
        println!(
            "{:<6} {:>4} {:>3} {:>7} {:>4} {:>3} {:>5} {:>4} {:>11} {:>11} {:>9} {:>9} {:>8} {:>11} {:>11} {:>9} {:>9}",
            "shape",
            "load",
            "act",
            "int4",
            "head",
            "thr",
            "batch",
            "kv",
            "prefill t/s",
            "decode t/s",
            "file MB",
            "RSS MB",
            "KV MB",
            "prefill med",
            "decode med",
            "pre/a8",
            "dec/a8"
        );
    }
    let layouts: Vec<Int4Layout> = args
        .int4_layout
        .iter()
        .map(|l| Int4Layout::parse(l))
        .collect::<hbit_engine::error::Result<_>>()?;
    // Each a4 model once per layout; a8 models have none.
    let mut models: Vec<(ActBits, Option<Int4Layout>)> = Vec::new();
    for &b in &args.act_bits {
        match ActBits::from_bits(b).with_context(|| format!("--act-bits {b}: expected 8 or 4"))? {
            ActBits::Int8 => models.push((ActBits::Int8, None)),
            ActBits::Int4 => models.extend(layouts.iter().map(|&l| (ActBits::Int4, Some(l)))),
        }
    }
    // Models measured together: all of a shape's with --alternate, else one at a time.
    let groups: Vec<Vec<(ActBits, Option<Int4Layout>)>> = if args.alternate {
        vec![models.clone()]
    } else {
        models.iter().map(|&m| vec![m]).collect()
    };
    for shape in &shapes {
        for (group, &load) in groups
            .iter()
            .flat_map(|g| loads.iter().map(move |l| (g, l)))
        {
            let before = resident_bytes_in_use().unwrap_or(0);
            let mut loaded = Vec::with_capacity(group.len());
            for &(bits, layout) in group {
                // Files hold pairs or triples; rows is a load-time relayout.
                let file_layout = layout.map(|l| match l {
                    Int4Layout::Rows => Int4Layout::Pairs,
                    other => other,
                });
                let path = dummy_model(&args.cache_dir, shape, bits, file_layout)?;
                let packed = load_packed_opts(&path, load, crate::engine_cmds::verify_mode())?;
                let weights = match layout {
                    Some(Int4Layout::Rows) => packed.weights.with_int4_layout(Int4Layout::Rows),
                    _ => packed.weights,
                };
                loaded.push(LoadedModel {
                    bits,
                    layout,
                    file_bytes: packed.file_bytes,
                    engine: Engine::new(weights),
                });
            }
            // Resident memory belongs to one model only when one is loaded.
            let attributed = loaded.len() == 1;
            let base = loaded.iter().position(|m| m.bits == ActBits::Int8);
            for &head in &args.head_bits {
                for model in &mut loaded {
                    model.engine.use_head_bits(head).context("--head-bits")?;
                }
                let head_name = match head {
                    8 => "int8",
                    6 => "q6",
                    4 => "q4",
                    _ => "f16",
                };
                let engines: Vec<&Engine> = loaded.iter().map(|m| &m.engine).collect();
                for &t in &threads {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build()?;
                    for &batch in &batches {
                        for &kv in &kvs {
                            let measured = pool.install(|| {
                                measure_rounds(&engines, batch, kv, prefill, decode, rounds)
                            })?;
                            for (i, (model, r)) in loaded.iter().zip(&measured).enumerate() {
                                let (b, layout, file_bytes) =
                                    (model.bits.bits(), model.layout, model.file_bytes);
                                let decode_bytes = model.engine.decode_weight_bytes();
                                let m = &r.best;
                                let rss = attributed.then(|| m.resident.saturating_sub(before));
                                let rss_uncollected = attributed
                                    .then(|| m.resident_uncollected.saturating_sub(before));
                                // Ratios to the a8 rounds beside this model's, when alternated.
                                let (prefill_vs, decode_vs) = match base {
                                    Some(bi) if bi != i => {
                                        let (p, d) = r.ratio_to(&measured[bi]);
                                        (Some(p), Some(d))
                                    }
                                    _ => (None, None),
                                };
                                if args.json {
                                    println!(
                                        "{}",
                                        serde_json::json!({
                                            "shape": shape, "load": load.name(), "act_bits": b,
                                            "int4_layout": layout.map(Int4Layout::name), "threads": t, "batch": batch,
                                            "kv_bits": kv.name(), "prefill_tokens": prefill,
                                            "prefill_tok_s": m.prefill_tok_s, "decode_tokens": decode,
                                            "decode_tok_s": m.decode_tok_s, "file_bytes": file_bytes,
                                            "decode_weight_bytes": decode_bytes,
                                            "rss_bytes": rss, "rss_uncollected_bytes": rss_uncollected, "kv_bytes": m.kv_bytes, "head": head_name, "rounds": rounds,
                                            "prefill_tok_s_median": median(r.prefill_each.clone()),
                                            "decode_tok_s_median": median(r.decode_each.clone()),
                                            "alternated": !attributed,
                                            "prefill_vs_int8_median": prefill_vs,
                                            "decode_vs_int8_median": decode_vs, "splits": args.splits,
                                        })
                                    );
                                } else {
                                    let mb = |v: Option<u64>| {
                                        v.map_or("-".to_string(), |v| {
                                            format!("{:.1}", v as f64 / 1e6)
                                        })
                                    };
                                    let ratio = |v: Option<f64>| {
                                        v.map_or("-".to_string(), |v| format!("{v:.3}"))
                                    };
                                    println!(
                                        "{:<6} {:>4} {:>3} {:>7} {:>4} {:>3} {:>5} {:>4} {:>11.1} {:>11.1} {:>9.1} {:>9} {:>8.2} {:>11.1} {:>11.1} {:>9} {:>9}",
                                        shape, load.name(), b, layout.map_or("-", Int4Layout::name), head_name, t, batch, kv.name(), m.prefill_tok_s, m.decode_tok_s,
                                        file_bytes as f64 / 1e6, mb(rss), m.kv_bytes as f64 / 1e6,
                                        median(r.prefill_each.clone()), median(r.decode_each.clone()), ratio(prefill_vs), ratio(decode_vs)
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{median, summarize, Measured};

    fn round(prefill_tok_s: f64, decode_tok_s: f64) -> Measured {
        Measured {
            prefill_tok_s,
            decode_tok_s,
            kv_bytes: 0,
            resident: 0,
            resident_uncollected: 0,
        }
    }

    /// Ratios pair rounds by index, then take the median: a slow round of both engines (the
    /// machine's, not the model's) leaves it alone, where the ratio of the two medians moves.
    #[test]
    fn ratio_pairs_rounds_then_takes_the_median() {
        let a4 = summarize(vec![
            round(20.0, 10.0),
            round(60.0, 30.0),
            round(18.0, 24.0),
        ]);
        let a8 = summarize(vec![round(10.0, 5.0), round(40.0, 20.0), round(12.0, 12.0)]);
        // Rounds' decode ratios 2.0, 1.5, 2.0; prefill 2.0, 1.5, 1.5.
        assert_eq!(a4.ratio_to(&a8), (1.5, 2.0));
        assert_eq!(
            (median(a4.decode_each), median(a8.decode_each)),
            (24.0, 12.0)
        );
        assert_eq!(a4.best.decode_tok_s, 30.0);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![7.0]), 7.0);
    }
}
