//! The machine's peak rate of `vpmaddubsw`, the multiply-add the INT8 kernels are built on: the
//! compute roofline of batched (GEMM) products, as the memory read bandwidth is the GEMV's.
//! `hbit bench kernels` reports it beside the kernels.
//!
//! The loop is [`CHAINS`] independent accumulators, each step `acc ← acc + maddubs(acc, 3)`:
//! every 16-bit lane adds `sat16(u8(lo) · 3 + u8(hi) · 3)` of its own two bytes. The chains hide
//! the instruction's latency, so the loop runs at the instruction's throughput; the result is a
//! checksum that the scalar path reproduces bit for bit (the known answer of the tests).

use crate::cpu::KernelPath;
use crate::error::KernelError;

/// Independent accumulators: more than latency × throughput of `vpmaddubsw` on current cores.
pub const CHAINS: usize = 12;

/// 16-bit lanes of one 256-bit accumulator; the scalar path emulates one such register per chain.
const LANES_256: usize = 16;

/// The signed byte every step multiplies by.
const FACTOR: i8 = 3;

/// Byte multiply-adds one round performs on `path` (each chain, each byte of its register).
pub fn byte_macs_per_round(path: KernelPath) -> usize {
    let lanes = match path {
        KernelPath::Avx512 => 2 * LANES_256,
        _ => LANES_256,
    };
    CHAINS * lanes * 2
}

/// Runs `rounds` rounds of the chains on `path` and returns their checksum (the wrapping sum
/// of every 16-bit lane of every chain).
pub fn madd_chains(path: KernelPath, rounds: usize) -> Result<u32, KernelError> {
    path.check_supported()?;
    Ok(match path {
        KernelPath::Scalar => scalar(rounds, LANES_256),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `check_supported` confirmed AVX2.
        KernelPath::Avx2 => unsafe { simd::avx2(rounds) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `check_supported` confirmed AVX-512 F and BW.
        KernelPath::Avx512 => unsafe { simd::avx512(rounds) },
        // No NEON chains yet: the scalar ones stand in on AArch64.
        _ => scalar(rounds, LANES_256),
    })
}

/// Chain `c` starts with every byte equal to `c + 1`.
fn start_byte(chain: usize) -> u8 {
    chain as u8 + 1
}

/// One step of one 16-bit lane: `acc + sat16(u8(lo) · 3 + u8(hi) · 3)`, wrapping.
fn step(acc: u16) -> u16 {
    let [lo, hi] = acc.to_le_bytes();
    let f = FACTOR as i32;
    let sum = (lo as i32 * f + hi as i32 * f).clamp(i16::MIN as i32, i16::MAX as i32);
    acc.wrapping_add(sum as i16 as u16)
}

/// The definition, one lane at a time, for registers of `lanes` 16-bit lanes.
fn scalar(rounds: usize, lanes: usize) -> u32 {
    let mut acc: Vec<u16> = (0..CHAINS)
        .flat_map(|c| std::iter::repeat_n(u16::from_le_bytes([start_byte(c); 2]), lanes))
        .collect();
    for _ in 0..rounds {
        for a in acc.iter_mut() {
            *a = step(*a);
        }
    }
    acc.iter().fold(0u32, |s, &a| s.wrapping_add(a as u32))
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{start_byte, CHAINS, FACTOR};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU supports AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn avx2(rounds: usize) -> u32 {
        let f = _mm256_set1_epi8(FACTOR);
        let mut acc: [__m256i; CHAINS] =
            std::array::from_fn(|c| _mm256_set1_epi8(start_byte(c) as i8));
        for _ in 0..rounds {
            for a in acc.iter_mut() {
                *a = _mm256_add_epi16(*a, _mm256_maddubs_epi16(*a, f));
            }
        }
        let mut lanes = [0u16; 16];
        let mut sum = 0u32;
        for a in acc {
            // SAFETY: `lanes` holds 32 bytes.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, a) };
            sum = lanes.iter().fold(sum, |s, &l| s.wrapping_add(l as u32));
        }
        sum
    }

    /// # Safety
    /// The CPU supports AVX-512 F and BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn avx512(rounds: usize) -> u32 {
        let f = _mm512_set1_epi8(FACTOR);
        let mut acc: [__m512i; CHAINS] =
            std::array::from_fn(|c| _mm512_set1_epi8(start_byte(c) as i8));
        for _ in 0..rounds {
            for a in acc.iter_mut() {
                *a = _mm512_add_epi16(*a, _mm512_maddubs_epi16(*a, f));
            }
        }
        let mut lanes = [0u16; 32];
        let mut sum = 0u32;
        for a in acc {
            // SAFETY: `lanes` holds 64 bytes.
            unsafe { _mm512_storeu_si512(lanes.as_mut_ptr() as *mut __m512i, a) };
            sum = lanes.iter().fold(sum, |s, &l| s.wrapping_add(l as u32));
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lane_step_known_answers() {
        // Bytes (1, 1): 1·3 + 1·3 = 6 added to 0x0101.
        assert_eq!(step(0x0101), 0x0107);
        // Bytes (255, 255) are unsigned: 255·3 · 2 = 1530, added to 0xFFFF (wraps to 1529).
        assert_eq!(step(0xFFFF), 1529);
        // The pair sum saturates only beyond i16, which 3·(255+255) never reaches.
        assert_eq!(step(0x00FF), 0x00FF + 765);
    }

    #[test]
    fn checksum_known_answer_after_one_round() {
        // Chain c: every lane 0x0101·(c+1) + 6·(c+1) = 263·(c+1); 16 lanes; c = 0..12.
        let want: u32 = (1..=CHAINS as u32).map(|k| 16 * 263 * k).sum();
        assert_eq!(madd_chains(KernelPath::Scalar, 1).unwrap(), want);
    }

    #[test]
    fn every_supported_path_equals_the_scalar_definition() {
        for path in KernelPath::supported() {
            for rounds in [0usize, 1, 2, 7, 100, 1001] {
                let lanes = byte_macs_per_round(path) / CHAINS / 2;
                assert_eq!(
                    madd_chains(path, rounds).unwrap(),
                    scalar(rounds, lanes),
                    "{path}, {rounds} rounds"
                );
            }
        }
    }
}
