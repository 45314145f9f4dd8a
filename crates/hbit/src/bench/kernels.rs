//! `hbit bench kernels`: ternary×INT8 and ternary×INT4 against the memory roofline and a dense
//! f32 matmul of the same shape, measured in one run on one machine.
//!
//! Batch 1 (GEMV) is memory-bound, so its weights cycle through copies totalling at least
//! max(1 GiB, 4 × last-level cache): every call reads its weights from DRAM, as a decode step of
//! a real model does. The GEMVs of a shape and a plain read of a buffer of that size alternate
//! round by round, and each GEMV's fraction of bandwidth is taken against the read of the same
//! rounds (a `memory_read` record with that shape and batch 1). With `--cold-mib` under 4 × the
//! last-level cache (or no cache size known) the reads may come from cache, so the summary gives
//! no fraction: the records still carry GB/s and weights/s. Larger batches reuse one matrix
//! (compute-bound); their INT8 and INT4 cases alternate the same way.

use super::membw::{last_level_cache_bytes, ColdBuffer};
use anyhow::{bail, Context, Result};
use hbit_kernels::dense::dense_matmul_f32;
use hbit_kernels::matmul::{matmul_int4, matmul_int4_triples, matmul_int8};
use hbit_kernels::{
    active_path, quantize_activations, ActBits, Hadamard, KernelPath, LutPacked, RowPacked,
    TriplePacked,
};
use hbit_model::rng::SplitMix64;
use serde::Serialize;
use std::time::Instant;

/// Weight shapes `[out, in]`: the paper's Table 8 models, then BitNet b1.58 2B4T.
const SHAPES: [(usize, usize); 12] = [
    (4096, 1024),
    (1024, 4096),
    (8192, 2048),
    (2048, 8192),
    (8192, 4096),
    (4096, 8192),
    (16384, 4096),
    (4096, 16384),
    (6912, 2560),
    (2560, 6912),
    (2560, 2560),
    (640, 2560),
];
const BATCHES: [usize; 4] = [1, 8, 32, 128];
const HADAMARD_SIZES: [usize; 5] = [1024, 2048, 4096, 8192, 16384];
/// Attention histories `(positions, head size, query heads per KV head)`: a decode step of the
/// e2e bench at ≈700M (hd 96, no grouping) and ≈2B (hd 128, 4 query heads per KV head), about
/// 144 positions in.
const ATTENTION_SHAPES: [(usize, usize, usize); 2] = [(144, 96, 1), (144, 128, 4)];

const QUICK_SHAPES: [(usize, usize); 2] = [(8192, 2048), (2560, 6912)];
const QUICK_BATCHES: [usize; 3] = [1, 8, 128];
const QUICK_HADAMARD_SIZES: [usize; 1] = [8192];

#[derive(clap::Args)]
pub struct KernelsArgs {
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// A representative subset that runs in under 30 seconds.
    #[arg(long)]
    quick: bool,
    /// Thread counts to measure, comma-separated (default: all cores).
    #[arg(long, value_delimiter = ',')]
    threads: Vec<usize>,
    /// Minimum measured seconds per case (default 0.5, or 0.15 with --quick).
    #[arg(long)]
    min_time: Option<f64>,
    /// MiB of weight copies that batch-1 cases cycle through, and of the DRAM read they are
    /// compared with (default max(1024, 4 × LLC); below 4 × LLC no fraction of bandwidth is
    /// given).
    #[arg(long)]
    cold_mib: Option<usize>,
    /// Weight shapes OUTxIN to measure instead of the built-in list, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_shape)]
    shapes: Vec<(usize, usize)>,
    /// Batch sizes to measure instead of the built-in list, comma-separated.
    #[arg(long, value_delimiter = ',')]
    batches: Vec<usize>,
    /// Skip the dense f32 baseline (for quick kernel experiments; the summary then omits the
    /// ratios against it).
    #[arg(long)]
    no_dense: bool,
}

fn parse_shape(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("shape '{s}': expected OUTxIN, e.g. 8192x2048"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|e| format!("shape '{s}': {e}"))
    };
    Ok((parse(a)?, parse(b)?))
}

/// One measurement; `--json` prints exactly these fields.
#[derive(Serialize, Clone)]
struct Record {
    kernel: &'static str,
    path: String,
    act_bits: u32,
    batch: usize,
    rows: usize,
    cols: usize,
    threads: usize,
    /// Seconds per call.
    seconds: f64,
    /// Giga-operations per second (a multiply-add counts as 2; for the Hadamard, one add or
    /// subtract counts as 1).
    gops: f64,
    /// Gigabytes of weights (or, for the Hadamard and memory read, of data) per second.
    gbps: f64,
    /// Billions of weights per second (`rows · cols` per call; 0 where there is no matrix).
    gweights: f64,
}

/// A target of the kernel issue, checked on this run's numbers.
#[derive(Serialize)]
struct Summary {
    summary: &'static str,
    threads: usize,
    value: f64,
    target: f64,
    pass: bool,
    detail: String,
}

/// A uniform value in [-1, 1) with 24 random bits, from the project's shared generator.
fn uniform_pm1(rng: &mut SplitMix64) -> f32 {
    (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
}

/// Random packed bytes in which every 2-bit field is a valid code (0, 1 or 2): for shapes with
/// no padding (cols % 256 == 0, rows % 16 == 0) this is a uniformly random ternary matrix in
/// either layout.
fn random_codes(bytes: usize, rng: &mut SplitMix64) -> Vec<u8> {
    let valid: Vec<u8> = (0..=255u8).filter(|b| b & (b >> 1) & 0x55 == 0).collect();
    (0..bytes)
        .map(|_| valid[rng.below(valid.len() as u64) as usize])
        .collect()
}

/// Seconds per call: the best of [`ROUNDS`] rounds, each averaging calls over `min_time /
/// ROUNDS` seconds. The minimum over rounds discounts interference from other tenants of the
/// machine (measured here: the same case varies by up to 1.7× between runs).
fn measure(min_time: f64, mut call: impl FnMut(usize) -> Result<()>) -> Result<f64> {
    call(0)?; // warm-up
    let mut calls = 0;
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let first = calls;
        while calls == first || start.elapsed().as_secs_f64() < min_time / ROUNDS as f64 {
            call(calls)?;
            calls += 1;
        }
        best = best.min(start.elapsed().as_secs_f64() / (calls - first) as f64);
    }
    Ok(best)
}

/// Rounds per measurement.
const ROUNDS: usize = 5;

/// Seconds per call of kernels whose ratios are targets, measured in alternating rounds (a round
/// of each in turn, [`ROUNDS`] times, the best round of each). Measuring one case after the
/// other let a change in the machine's load between them masquerade as a speed difference;
/// alternating exposes all of them to the same minutes.
fn measure_alternating(
    min_time: f64,
    calls: &mut [&mut dyn FnMut() -> Result<()>],
) -> Result<Vec<f64>> {
    for call in calls.iter_mut() {
        call()?; // warm-up
    }
    let mut best = vec![f64::INFINITY; calls.len()];
    for _ in 0..ROUNDS {
        for (call, best) in calls.iter_mut().zip(best.iter_mut()) {
            let start = Instant::now();
            let mut n = 0usize;
            while n == 0 || start.elapsed().as_secs_f64() < min_time / ROUNDS as f64 {
                call()?;
                n += 1;
            }
            *best = best.min(start.elapsed().as_secs_f64() / n as f64);
        }
    }
    Ok(best)
}

/// Copies of `item` totalling at least `cold_bytes` (at least one), all resident.
fn cold_copies<T: Clone>(item: T, item_bytes: usize, cold_bytes: usize) -> Vec<T> {
    let n = cold_bytes.div_ceil(item_bytes).max(1);
    vec![item; n]
}

struct Bench {
    min_time: f64,
    cold_bytes: usize,
    threads: usize,
    path: String,
    records: Vec<Record>,
}

impl Bench {
    /// Records one case: `kernel` with `act_bits`-bit activations (32 = f32), `batch` tokens
    /// through a `[rows, cols]` matrix, `seconds` per call doing `work = (ops, bytes)`.
    fn push(
        &mut self,
        (kernel, act_bits): (&'static str, u32),
        batch: usize,
        shape: (usize, usize),
        seconds: f64,
        (ops, bytes): (f64, f64),
    ) {
        self.records.push(Record {
            kernel,
            path: match kernel {
                "dense_f32" => "gemm".into(),
                "memory_read" => "scalar".into(),
                _ => self.path.clone(),
            },
            act_bits,
            batch,
            rows: shape.0,
            cols: shape.1,
            threads: self.threads,
            seconds,
            gops: ops / seconds / 1e9,
            gbps: bytes / seconds / 1e9,
            gweights: if kernel == "memory_read" || kernel == "hadamard" {
                0.0
            } else {
                (shape.0 * shape.1) as f64 / seconds / 1e9
            },
        });
    }

    fn ternary(
        &mut self,
        (rows, cols): (usize, usize),
        batches: &[usize],
        membw: &ColdBuffer,
        rng: &mut SplitMix64,
    ) -> Result<()> {
        if cols % 256 != 0 || rows % 16 != 0 {
            bail!("bench shape {rows}x{cols}: needs cols % 256 == 0 and rows % 16 == 0");
        }
        let row_bytes = rows * cols / 4;
        let row = RowPacked::from_parts(rows, cols, 0.7, random_codes(row_bytes, rng))?;
        let lut = LutPacked::from_parts(rows, cols, 0.7, random_codes(row_bytes, rng))?;
        // The three-weights-per-lookup layout of the same weights (1.67 bits per weight).
        let triples = TriplePacked::pack(&lut.unpack());
        let flops = |b: usize| 2.0 * (rows * cols * b) as f64;
        for &batch in batches {
            let x: Vec<f32> = (0..batch * cols).map(|_| uniform_pm1(rng)).collect();
            let x8 = quantize_activations(&x, batch, cols, ActBits::Int8)?;
            let x4 = quantize_activations(&x, batch, cols, ActBits::Int4)?;
            let mut y = vec![0.0f32; batch * rows];
            let bytes = row_bytes as f64;
            if batch == 1 {
                // Both kernels and the memory read alternate round by round, so each GEMV's
                // fraction of bandwidth compares speeds of the same minutes (the read measured
                // once at the start of a run varied 16.8–31.5 GB/s between runs).
                let copies8 = cold_copies(row.clone(), row_bytes, self.cold_bytes);
                let copies4 = cold_copies(lut.clone(), row_bytes, self.cold_bytes);
                let copies3 = cold_copies(triples.clone(), triples.bytes(), self.cold_bytes);
                cycle_warm(&copies8, |w| Ok(matmul_int8(w, &x8, &mut y)?))?;
                cycle_warm(&copies4, |w| Ok(matmul_int4(w, &x4, &mut y)?))?;
                cycle_warm(&copies3, |w| Ok(matmul_int4_triples(w, &x4, &mut y)?))?;
                let (mut i8, mut i4, mut i3) = (0usize, 0usize, 0usize);
                let (mut y4, mut y3) = (y.clone(), y.clone());
                let seconds = measure_alternating(
                    self.min_time,
                    &mut [
                        &mut || {
                            i8 += 1;
                            Ok(matmul_int8(&copies8[i8 % copies8.len()], &x8, &mut y)?)
                        },
                        &mut || {
                            i4 += 1;
                            Ok(matmul_int4(&copies4[i4 % copies4.len()], &x4, &mut y4)?)
                        },
                        &mut || {
                            membw.read_once();
                            Ok(())
                        },
                        &mut || {
                            i3 += 1;
                            let w = &copies3[i3 % copies3.len()];
                            Ok(matmul_int4_triples(w, &x4, &mut y3)?)
                        },
                    ],
                )?;
                drop((copies8, copies4, copies3));
                let read_bytes = membw.bytes() as f64;
                self.push(
                    ("memory_read", 0),
                    batch,
                    (rows, cols),
                    seconds[2],
                    (0.0, read_bytes),
                );
                self.push(
                    ("ternary_int8", 8),
                    batch,
                    (rows, cols),
                    seconds[0],
                    (flops(batch), bytes),
                );
                self.push(
                    ("ternary_int4", 4),
                    batch,
                    (rows, cols),
                    seconds[1],
                    (flops(batch), bytes),
                );
                self.push(
                    ("ternary_int4_triples", 4),
                    batch,
                    (rows, cols),
                    seconds[3],
                    (flops(batch), triples.bytes() as f64),
                );
            } else {
                let (mut y4, mut y3) = (y.clone(), y.clone());
                let seconds = measure_alternating(
                    self.min_time,
                    &mut [
                        &mut || Ok(matmul_int8(&row, &x8, &mut y)?),
                        &mut || Ok(matmul_int4(&lut, &x4, &mut y4)?),
                        &mut || Ok(matmul_int4_triples(&triples, &x4, &mut y3)?),
                    ],
                )?;
                let (s8, s4) = (seconds[0], seconds[1]);
                self.push(
                    ("ternary_int4_triples", 4),
                    batch,
                    (rows, cols),
                    seconds[2],
                    (flops(batch), triples.bytes() as f64),
                );
                self.push(
                    ("ternary_int8", 8),
                    batch,
                    (rows, cols),
                    s8,
                    (flops(batch), bytes),
                );
                self.push(
                    ("ternary_int4", 4),
                    batch,
                    (rows, cols),
                    s4,
                    (flops(batch), bytes),
                );
            }
        }
        Ok(())
    }

    fn dense(
        &mut self,
        (rows, cols): (usize, usize),
        batches: &[usize],
        rng: &mut SplitMix64,
    ) -> Result<()> {
        let w: Vec<f32> = (0..rows * cols).map(|_| uniform_pm1(rng)).collect();
        let bytes = (rows * cols * 4) as f64;
        let threads = self.threads;
        for &batch in batches {
            let x: Vec<f32> = (0..batch * cols).map(|_| uniform_pm1(rng)).collect();
            let mut y = vec![0.0f32; batch * rows];
            let flops = 2.0 * (rows * cols * batch) as f64;
            let s = if batch == 1 {
                let copies = cold_copies(w.clone(), rows * cols * 4, self.cold_bytes);
                cycle_warm(&copies, |w| {
                    Ok(dense_matmul_f32(w, rows, cols, &x, 1, &mut y, threads)?)
                })?;
                measure(self.min_time, |i| {
                    Ok(dense_matmul_f32(
                        &copies[i % copies.len()],
                        rows,
                        cols,
                        &x,
                        1,
                        &mut y,
                        threads,
                    )?)
                })?
            } else {
                measure(self.min_time, |_| {
                    Ok(dense_matmul_f32(
                        &w, rows, cols, &x, batch, &mut y, threads,
                    )?)
                })?
            };
            self.push(("dense_f32", 32), batch, (rows, cols), s, (flops, bytes));
        }
        Ok(())
    }

    /// Attention over a cached history of `positions` for `heads` query heads sharing one KV
    /// head (scores, then the weighted sum of values), as a decode step runs it on one thread,
    /// caches warm: from an f16 cache, from a 4-bit cache widened 64 positions at a time into
    /// f32 (the engine's path for a prefill's many rows), and from a 4-bit cache read in place
    /// (`attention_int4`; on CPUs without its kernel, widened as well). Alternating rounds.
    /// A record's `act_bits` is the cache's width, `batch` the query heads, `rows` the
    /// positions, `cols` the head size; GOPS counts 2 operations per multiply-add of both
    /// products for every head; GB/s the cache bytes read (codes and scales).
    fn attention(
        &mut self,
        (positions, hd, heads): (usize, usize, usize),
        rng: &mut SplitMix64,
    ) -> Result<()> {
        use half::f16;
        use hbit_kernels::attention::{self, HistoryRows};
        use hbit_kernels::attention_int4::{self, Int4Rows};
        use hbit_kernels::kv_codec;
        let path = active_path()?;
        let q: Vec<f32> = (0..heads * hd).map(|_| uniform_pm1(rng)).collect();
        let keys: Vec<f32> = (0..positions * hd).map(|_| uniform_pm1(rng)).collect();
        let values: Vec<f32> = (0..positions * hd).map(|_| uniform_pm1(rng)).collect();
        let k16: Vec<f16> = keys.iter().map(|&v| f16::from_f32(v)).collect();
        let v16: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
        let quantize = |x: &[f32]| -> Result<(Vec<u8>, Vec<f32>)> {
            let mut codes = vec![0u8; x.len() / 2];
            let scales = x
                .chunks(hd)
                .zip(codes.chunks_mut(hd / 2))
                .map(|(row, out)| kv_codec::quantize_row(path, 4, row, out))
                .collect::<Result<Vec<f32>, _>>()?;
            Ok((codes, scales))
        };
        let (kc, ks) = quantize(&keys)?;
        let (vc, vs) = quantize(&values)?;
        let scale = 1.0 / (hd as f32).sqrt();
        let (mut scores, mut out) = (vec![0.0f32; heads * positions], vec![0.0f32; heads * hd]);
        let mut f16_call = || -> Result<()> {
            out.fill(0.0);
            for ((qh, sc), o) in q
                .chunks(hd)
                .zip(scores.chunks_mut(positions))
                .zip(out.chunks_mut(hd))
            {
                attention::scores(path, qh, HistoryRows::F16(&k16), scale, sc)?;
                attention::weighted_sum(path, sc, HistoryRows::F16(&v16), o)?;
            }
            Ok(())
        };
        const CHUNK: usize = 64;
        let mut widened = vec![0.0f32; CHUNK * hd];
        let (mut scores2, mut out2) = (vec![0.0f32; heads * positions], vec![0.0f32; heads * hd]);
        let mut widened_call = || -> Result<()> {
            out2.fill(0.0);
            for (codes, scales, is_values) in [(&kc, &ks, false), (&vc, &vs, true)] {
                for c0 in (0..positions).step_by(CHUNK) {
                    let c1 = (c0 + CHUNK).min(positions);
                    let buf = &mut widened[..(c1 - c0) * hd];
                    let rows = &codes[c0 * hd / 2..c1 * hd / 2];
                    kv_codec::dequantize_rows(path, 4, hd, rows, &scales[c0..c1], buf)?;
                    let history = HistoryRows::F32(buf);
                    for (j, qh) in q.chunks(hd).enumerate() {
                        let sc = &mut scores2[j * positions + c0..j * positions + c1];
                        if is_values {
                            let o = &mut out2[j * hd..(j + 1) * hd];
                            attention::weighted_sum(path, sc, history, o)?;
                        } else {
                            attention::scores(path, qh, history, scale, sc)?;
                        }
                    }
                }
            }
            Ok(())
        };
        let (mut scores3, mut out3) = (vec![0.0f32; heads * positions], vec![0.0f32; heads * hd]);
        let mut in_place_call = || -> Result<()> {
            let k = Int4Rows {
                codes: &kc,
                scales: &ks,
            };
            attention_int4::scores_int4(path, &q, hd, k, scale, &mut scores3)?;
            out3.fill(0.0);
            let v = Int4Rows {
                codes: &vc,
                scales: &vs,
            };
            attention_int4::weighted_sum_int4(path, &scores3, hd, v, &mut out3)?;
            Ok(())
        };
        let s = measure_alternating(
            self.min_time,
            &mut [&mut f16_call, &mut widened_call, &mut in_place_call],
        )?;
        // Same codes, so the widened and in-place paths agree bit for bit.
        if scores2 != scores3 || out2 != out3 {
            bail!("attention over 4-bit codes: in place and widened results differ");
        }
        let ops = 4.0 * (heads * positions * hd) as f64;
        let (b16, b4) = ((4 * positions * hd) as f64, (positions * (hd + 8)) as f64);
        let shape = (positions, hd);
        self.push(("attention_f16", 16), heads, shape, s[0], (ops, b16));
        self.push(("attention_int4_widened", 4), heads, shape, s[1], (ops, b4));
        self.push(("attention_int4", 4), heads, shape, s[2], (ops, b4));
        if !attention_int4::reads_codes_in_place(path, hd, heads) {
            // No in-place kernel on this CPU: say that the record measured the widening.
            if let Some(r) = self.records.last_mut() {
                r.path = format!("{path} (widened)");
            }
        }
        Ok(())
    }

    fn hadamard(&mut self, sizes: &[usize], rng: &mut SplitMix64) -> Result<()> {
        for &n in sizes {
            let h = Hadamard::new(n)?;
            let mut x: Vec<f32> = (0..n).map(|_| uniform_pm1(rng)).collect();
            let s = measure(self.min_time, |_| Ok(h.apply(&mut x)?))?;
            let ops = (n * n.trailing_zeros() as usize) as f64;
            self.push(("hadamard", 32), 1, (1, n), s, (ops, (8 * n) as f64));
        }
        Ok(())
    }
}

/// Touches every copy once, so the timed calls start in the steady state of the cycle.
fn cycle_warm<T>(copies: &[T], mut call: impl FnMut(&T) -> Result<()>) -> Result<()> {
    copies.iter().try_for_each(&mut call)
}

/// Seconds one timed `vpmaddubsw` peak run lasts.
const PEAK_SECONDS: f64 = 0.05;

/// The `vpmaddubsw` peak (`hbit_kernels::peak`) on every thread of the current pool at once:
/// the compute roofline beside the GEMMs, as the memory read is the GEMVs'. Best of three runs
/// of about [`PEAK_SECONDS`]; a multiply-add counts as 2 operations, as in the kernels' GOPS.
fn madd_peak(path: KernelPath, threads: usize) -> Result<Record> {
    let timed = |rounds: usize| -> Result<f64> {
        let start = Instant::now();
        let sums = rayon::broadcast(|_| hbit_kernels::peak::madd_chains(path, rounds));
        let seconds = start.elapsed().as_secs_f64();
        for sum in sums {
            std::hint::black_box(sum?);
        }
        Ok(seconds)
    };
    let probe = 1 << 16;
    let per_round = timed(probe)?.max(1e-9) / probe as f64;
    let rounds = ((PEAK_SECONDS / per_round) as usize).max(probe);
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        best = best.min(timed(rounds)?);
    }
    let ops = 2.0 * (threads * rounds * hbit_kernels::peak::byte_macs_per_round(path)) as f64;
    Ok(Record {
        kernel: "madd_peak",
        path: path.to_string(),
        act_bits: 8,
        batch: 0,
        rows: 0,
        cols: 0,
        threads,
        seconds: best,
        gops: ops / best / 1e9,
        gbps: 0.0,
        gweights: 0.0,
    })
}

pub fn run(args: &KernelsArgs) -> Result<()> {
    let path = active_path().context("choosing the kernel path")?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let thread_counts = if args.threads.is_empty() {
        vec![cores]
    } else {
        args.threads.clone()
    };
    if thread_counts.contains(&0) {
        bail!("--threads: thread counts must be at least 1");
    }
    let llc = last_level_cache_bytes();
    let cold_bytes = match args.cold_mib {
        Some(mib) => mib << 20,
        None => (1usize << 30).max(4 * llc.unwrap_or(0)),
    };
    // A fraction of bandwidth means something only against DRAM: a buffer of 4 × LLC or more.
    let dram_reference = llc.is_some_and(|l| cold_bytes >= 4 * l);
    if !dram_reference {
        eprintln!(
            "hbit bench kernels: batch-1 weights cycle through {} MiB, under 4 × the last-level \
             cache ({}): reads may come from cache, so no fraction of bandwidth is given",
            cold_bytes >> 20,
            llc.map(|b| format!("{} MiB", b >> 20))
                .unwrap_or_else(|| "unknown".into())
        );
    }
    let min_time = args.min_time.unwrap_or(if args.quick { 0.15 } else { 0.5 });
    let (mut shapes, mut batches, hadamard_sizes): (&[(usize, usize)], &[usize], &[usize]) =
        if args.quick {
            (&QUICK_SHAPES, &QUICK_BATCHES, &QUICK_HADAMARD_SIZES)
        } else {
            (&SHAPES, &BATCHES, &HADAMARD_SIZES)
        };
    if !args.shapes.is_empty() {
        shapes = &args.shapes;
    }
    if !args.batches.is_empty() {
        batches = &args.batches;
    }
    if batches.contains(&0) {
        bail!("--batches: batch sizes must be at least 1");
    }
    if !args.json {
        println!(
            "hbit bench kernels: path {path}, {cores} cores, LLC {}, batch-1 weights cycle through {} MiB",
            llc.map(|b| format!("{} MiB", b >> 20)).unwrap_or_else(|| "unknown".into()),
            cold_bytes >> 20
        );
    }
    let membw_buffer = ColdBuffer::new(cold_bytes);
    let mut all = Vec::new();
    let mut summaries = Vec::new();
    for &threads in &thread_counts {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        let mut bench = Bench {
            min_time,
            cold_bytes,
            threads,
            path: path.to_string(),
            records: Vec::new(),
        };
        pool.install(|| -> Result<()> {
            let bw = membw_buffer.read_bandwidth(5);
            bench.records.push(Record {
                kernel: "memory_read",
                path: "scalar".into(),
                act_bits: 0,
                batch: 0,
                rows: 0,
                cols: 0,
                threads,
                seconds: cold_bytes as f64 / bw,
                gops: 0.0,
                gbps: bw / 1e9,
                gweights: 0.0,
            });
            emit(args.json, bench.records.last().unwrap());
            bench.records.push(madd_peak(path, threads)?);
            emit(args.json, bench.records.last().unwrap());
            let mut rng = SplitMix64::new(0x5EED_1234_ABCD_0001);
            for &shape in shapes {
                let n = bench.records.len();
                bench.ternary(shape, batches, &membw_buffer, &mut rng)?;
                if !args.no_dense {
                    bench.dense(shape, batches, &mut rng)?;
                }
                bench.records[n..].iter().for_each(|r| emit(args.json, r));
            }
            let n = bench.records.len();
            bench.hadamard(hadamard_sizes, &mut rng)?;
            for shape in ATTENTION_SHAPES {
                bench.attention(shape, &mut rng)?;
            }
            bench.records[n..].iter().for_each(|r| emit(args.json, r));
            Ok(())
        })?;
        summaries.extend(summarize(&bench.records, threads, dram_reference));
        all.extend(bench.records);
    }
    if !args.json {
        println!("\nTargets (ratios from this run):");
    }
    for s in &summaries {
        if args.json {
            println!("{}", serde_json::to_string(s)?);
        } else {
            println!(
                "  [{}] {:<34} threads {}: {:>8.3} (target {:.2}) {}",
                if s.pass { "pass" } else { "MISS" },
                s.summary,
                s.threads,
                s.value,
                s.target,
                s.detail
            );
        }
    }
    Ok(())
}

fn emit(json: bool, r: &Record) {
    if json {
        println!("{}", serde_json::to_string(r).expect("records serialize"));
    } else {
        println!(
            "{:<13} {:<7} a{:<2} batch {:>4} {:>6}x{:<6} threads {} {:>10.1} us {:>9.1} GOPS {:>7.2} GB/s {:>7.2} Gweights/s",
            r.kernel,
            r.path,
            r.act_bits,
            r.batch,
            r.rows,
            r.cols,
            r.threads,
            r.seconds * 1e6,
            r.gops,
            r.gbps,
            r.gweights
        );
    }
}

/// The targets, each the worst case over the shapes measured; the batch-1 fractions of
/// bandwidth only when `dram_reference` (weights and the read they are compared with are DRAM
/// sized).
fn summarize(records: &[Record], threads: usize, dram_reference: bool) -> Vec<Summary> {
    let find = |kernel: &str, batch: usize, rows: usize, cols: usize| {
        records
            .iter()
            .find(|r| r.kernel == kernel && r.batch == batch && r.rows == rows && r.cols == cols)
    };
    let mut out = Vec::new();
    // Each GEMV against the memory read measured alongside it (same shape, alternating
    // rounds), else against the run's first read.
    let first_read = records
        .iter()
        .find(|r| r.kernel == "memory_read" && r.batch == 0)
        .map(|r| r.gbps);
    let bandwidth_for = |r: &Record| {
        find("memory_read", 1, r.rows, r.cols)
            .map(|m| m.gbps)
            .or(first_read)
    };
    let worst = |name: &'static str, target: f64, pairs: Vec<(f64, String)>| -> Option<Summary> {
        let (value, detail) = pairs.into_iter().min_by(|a, b| a.0.total_cmp(&b.0))?;
        Some(Summary {
            summary: name,
            threads,
            value,
            target,
            pass: value >= target,
            detail,
        })
    };
    let gemv = |kernel: &'static str| {
        records
            .iter()
            .filter(move |r| r.kernel == kernel && r.batch == 1)
    };
    for (kernel, name) in [
        ("ternary_int8", "batch1_int8_fraction_of_bandwidth"),
        ("ternary_int4", "batch1_int4_fraction_of_bandwidth"),
        (
            "ternary_int4_triples",
            "batch1_int4_triples_fraction_of_bandwidth",
        ),
    ]
    .into_iter()
    .filter(|_| dram_reference)
    {
        let pairs = gemv(kernel)
            .filter_map(|r| {
                let bw = bandwidth_for(r)?;
                Some((
                    r.gbps / bw,
                    format!(
                        "worst {}x{}: {:.1} of {:.1} GB/s",
                        r.rows, r.cols, r.gbps, bw
                    ),
                ))
            })
            .collect();
        out.extend(worst(name, 0.85, pairs));
    }
    for (kernel, name) in [
        ("ternary_int8", "batch1_int8_vs_dense_f32"),
        ("ternary_int4", "batch1_int4_vs_dense_f32"),
        ("ternary_int4_triples", "batch1_int4_triples_vs_dense_f32"),
    ] {
        let pairs = gemv(kernel)
            .filter_map(|r| {
                Some((
                    find("dense_f32", 1, r.rows, r.cols)?.seconds / r.seconds,
                    format!("worst {}x{}", r.rows, r.cols),
                ))
            })
            .collect();
        out.extend(worst(name, 10.0, pairs));
    }
    let pairs = records
        .iter()
        .filter(|r| r.kernel == "ternary_int8" && r.batch == 128)
        .filter_map(|r| {
            Some((
                find("dense_f32", 128, r.rows, r.cols)?.seconds / r.seconds,
                format!("worst {}x{}", r.rows, r.cols),
            ))
        })
        .collect();
    out.extend(worst("batch128_int8_vs_dense_f32", 3.0, pairs));
    let pairs = records
        .iter()
        .filter(|r| r.kernel == "ternary_int4" && r.batch >= 8)
        .filter_map(|r| {
            Some((
                find("ternary_int8", r.batch, r.rows, r.cols)?.seconds / r.seconds,
                format!("worst {}x{} batch {}", r.rows, r.cols, r.batch),
            ))
        })
        .collect();
    out.extend(worst("batch8plus_int4_vs_int8", 1.3, pairs));
    let pairs = records
        .iter()
        .filter(|r| r.kernel == "ternary_int4_triples" && r.batch >= 8)
        .filter_map(|r| {
            Some((
                find("ternary_int8", r.batch, r.rows, r.cols)?.seconds / r.seconds,
                format!("worst {}x{} batch {}", r.rows, r.cols, r.batch),
            ))
        })
        .collect();
    out.extend(worst("batch8plus_int4_triples_vs_int8", 1.3, pairs));
    if let (Some(h), Some(g)) = (
        find("hadamard", 1, 1, 8192),
        find("ternary_int8", 1, 8192, 2048),
    ) {
        // Stated as "GEMV time / Hadamard time", so that higher is better like the others: the
        // target "< 5%" is a ratio above 20.
        out.push(Summary {
            summary: "gemv_8192x2048_over_hadamard_8192",
            threads,
            value: g.seconds / h.seconds,
            target: 20.0,
            pass: g.seconds / h.seconds > 20.0,
            detail: format!(
                "Hadamard is {:.2}% of the GEMV",
                100.0 * h.seconds / g.seconds
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kernel: &'static str, batch: usize, shape: (usize, usize), gbps: f64) -> Record {
        Record {
            kernel,
            path: "avx2".into(),
            act_bits: 8,
            batch,
            rows: shape.0,
            cols: shape.1,
            threads: 2,
            seconds: 1.0,
            gops: 1.0,
            gbps,
            gweights: 1.0,
        }
    }

    #[test]
    fn gemv_fractions_use_the_read_measured_alongside() {
        let records = vec![
            // A slow first read would make every fraction look better than it is.
            record("memory_read", 0, (0, 0), 16.0),
            record("memory_read", 1, (640, 2560), 28.0),
            record("ternary_int8", 1, (640, 2560), 21.0),
            record("ternary_int4", 1, (640, 2560), 14.0),
            // No read alongside: the first read is the fallback.
            record("ternary_int8", 1, (2560, 2560), 15.0),
            record("ternary_int4", 1, (2560, 2560), 15.2),
        ];
        let summaries = summarize(&records, 2, true);
        let get = |name: &str| summaries.iter().find(|s| s.summary == name).unwrap();
        let int8 = get("batch1_int8_fraction_of_bandwidth");
        assert_eq!(int8.value, 0.75);
        assert!(!int8.pass, "target 0.85: {}", int8.detail);
        assert_eq!(int8.detail, "worst 640x2560: 21.0 of 28.0 GB/s");
        let int4 = get("batch1_int4_fraction_of_bandwidth");
        assert_eq!(int4.value, 0.5);
        assert!(!int4.pass);
        // Weights cycling through less than 4 × LLC: no fraction at all.
        let in_cache = summarize(&records, 2, false);
        assert!(in_cache
            .iter()
            .all(|s| !s.summary.contains("fraction_of_bandwidth")));
    }
}
