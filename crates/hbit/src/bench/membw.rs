//! Memory read bandwidth: the roofline that batch-1 (GEMV) kernels are held against.

use rayon::prelude::*;
use std::time::Instant;

/// A buffer larger than the last-level cache, written once so its pages are resident.
pub struct ColdBuffer {
    data: Vec<u64>,
}

impl ColdBuffer {
    pub fn new(bytes: usize) -> Self {
        let n = bytes / 8;
        let data: Vec<u64> = (0..n as u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        Self { data }
    }

    /// Bytes in the buffer.
    pub fn bytes(&self) -> usize {
        self.data.len() * 8
    }

    /// Best of `reps` full reads with the current rayon pool, in bytes per second.
    pub fn read_bandwidth(&self, reps: usize) -> f64 {
        let mut best = f64::INFINITY;
        for _ in 0..reps {
            let start = Instant::now();
            self.read_once();
            best = best.min(start.elapsed().as_secs_f64());
        }
        self.bytes() as f64 / best
    }

    /// One full read, split across the current rayon pool.
    pub fn read_once(&self) {
        let threads = rayon::current_num_threads();
        let chunk = self.data.len().div_ceil(threads);
        // Eight independent xor lanes per chunk let the compiler use wide loads; the result is
        // kept so the reads cannot be optimized away.
        let sink = self
            .data
            .par_chunks(chunk)
            .map(|c| {
                let mut lanes = [0u64; 8];
                for block in c.chunks_exact(8) {
                    for (l, v) in lanes.iter_mut().zip(block) {
                        *l ^= v;
                    }
                }
                lanes.iter().fold(0, |a, b| a ^ b)
            })
            .reduce(|| 0, |a, b| a ^ b);
        std::hint::black_box(sink);
    }
}

/// Size of the last-level cache in bytes as the OS reports it (largest cache index), if known.
pub fn last_level_cache_bytes() -> Option<usize> {
    crate::cpu_cmd::CpuSignature::detect().last_level_cache_bytes()
}
