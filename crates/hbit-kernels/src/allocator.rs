//! The process-wide allocator for hbit's binaries: mimalloc, told to keep freed pages mapped.
//!
//! Training on candle allocates and frees tensors of tens of MB many times per step (every op
//! writes a fresh output). glibc serves blocks that large with a fresh `mmap` each time, so every
//! op pays page faults and kernel zeroing: measured on `hbit bench train`, the kernel's share was
//! 11 of 27 CPU-seconds. mimalloc reuses freed memory from its own arenas, but by default returns
//! ("purges") pages idle for a second, which is shorter than one training step of the `tiny`
//! preset on two cores, so the same faults come back. [`keep_freed_pages`] lengthens that delay;
//! [`release_freed_pages`] hands retained pages back on demand (before reading resident memory).
//!
//! The three calls into mimalloc's C API and one `prctl` live here, per the project rule that
//! `unsafe` stays in the kernel crate.

pub use mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (index 15 in both the v2 and v3 headers
/// that `libmimalloc-sys` 0.1.49 builds).
const MI_OPTION_PURGE_DELAY: i32 = 15;

extern "C" {
    fn mi_option_set(option: i32, value: std::os::raw::c_long);
    fn mi_option_get(option: i32) -> std::os::raw::c_long;
    fn mi_collect(force: bool);
}

/// Keeps freed pages mapped for `millis` milliseconds before mimalloc returns them to the OS
/// (`-1`: never). Takes effect for memory freed after the call.
pub fn keep_freed_pages(millis: i64) {
    let value = std::os::raw::c_long::try_from(millis.max(-1)).unwrap_or(std::os::raw::c_long::MAX);
    // SAFETY: `mi_option_set` only stores an integer in mimalloc's option table (thread-safe,
    // valid at any time); the option index is the one mimalloc's header defines for the
    // purge delay, and any value is accepted (negative means never purge).
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, value) }
}

/// Returns the memory freed so far to the OS now, whatever the purge delay: for measuring
/// resident memory without counting the allocator's retained pages.
pub fn release_freed_pages() {
    // SAFETY: `mi_collect` frees mimalloc's own retained memory; it touches no live allocation
    // and may be called from any thread at any time.
    unsafe { mi_collect(true) }
}

/// Turns transparent huge pages off for this process (Linux `PR_SET_THP_DISABLE`; elsewhere a
/// no-op). Returns whether they are off.
///
/// Why: mimalloc advises its arenas for huge pages, so the first small allocation a thread makes
/// in a fresh 2 MiB region makes all 2 MiB resident. On the 73.5 MB ≈125M a4 model that was
/// most of the engine's resident memory beyond file + KV (one reading: 9.8 MB with huge pages,
/// 3.4 MB without). Decode lost nothing measurable (≈700M, batch 1 and 16, three alternating
/// pairs: 81–85 against 73–84 t/s and 329–354 against 320–326). Training keeps them: its
/// tensors are tens of MB each.
pub fn no_transparent_huge_pages() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)` only sets a flag of this process; it
        // reads and writes no memory of ours.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1 as libc::c_ulong, 0, 0, 0) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// The purge delay in force, in milliseconds (`-1`: never).
// `c_long` is `i64` here but `i32` on other targets, so the conversion is not always a no-op.
#[allow(clippy::useless_conversion)]
pub fn freed_pages_delay() -> i64 {
    // SAFETY: `mi_option_get` only reads mimalloc's option table (initialising it from the
    // environment on first use); the index is the purge delay's, as above.
    i64::from(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel reports the flag back: `THP_enabled: 0` in `/proc/self/status` (Linux ≥ 5.0).
    #[cfg(target_os = "linux")]
    #[test]
    fn huge_pages_turn_off_for_the_process() {
        assert!(no_transparent_huge_pages());
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("THP_enabled:"))
            .expect("THP_enabled in /proc/self/status");
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }

    #[test]
    fn purge_delay_round_trips_through_mimalloc() {
        keep_freed_pages(12_345);
        assert_eq!(freed_pages_delay(), 12_345);
        keep_freed_pages(-7); // anything negative means "never"
        assert_eq!(freed_pages_delay(), -1);
    }
}
