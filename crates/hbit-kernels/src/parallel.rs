//! A fork-join for the matrix kernels whose workers spin between jobs instead of sleeping.
//!
//! A decode step runs a few hundred GEMVs of 20–200 µs each. With a pool whose idle workers
//! sleep (rayon's), waking one costs tens of microseconds (more in a VM), so the caller usually
//! finishes the whole product alone before help arrives: measured here, two threads decoded only
//! 15% faster than one. These workers spin for [`SPIN`] after each job, so the next one starts
//! on every core at once, then park.
//!
//! The number of parts a job is split into follows the caller's rayon pool
//! (`rayon::current_num_threads()`), so `ThreadPool::install` still sets how many cores the
//! kernels use; this pool only supplies the threads.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

// The handoff's synchronization, swapped for loom's model-checked twins under `--cfg loom`
// (the `loom_tests` below explore every interleaving of a caller and a worker).
#[cfg(loom)]
use loom::sync::{
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    Condvar, Mutex,
};
#[cfg(not(loom))]
use std::sync::{
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    Condvar, Mutex,
};

thread_local! {
    /// Set while this thread runs parts of a job (and always on workers): a nested call runs
    /// inline.
    static INSIDE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Low 32 bits of the state meaning "every part claimed", whatever the job's part count.
const CLAIMED_ALL: u64 = u32::MAX as u64;

/// The epoch that tells workers to return (tests only; the process's pool lives forever).
#[cfg(any(test, loom))]
const CLOSED_EPOCH: u64 = u32::MAX as u64;

/// How long an idle worker spins before parking.
#[cfg_attr(loom, allow(dead_code))]
const SPIN: Duration = Duration::from_millis(2);

/// How long after its last job a kernel worker has parked: its spin, plus a margin for the
/// clock checks. A parked worker has handed its freed pages back to the OS (with the `allocator`
/// feature), so a resident-memory reading taken this long after a job counts none of them.
pub const PARKED_AFTER: Duration = Duration::from_millis(5);

/// Spins between two reads of the clock while waiting (a `pause` is tens of cycles, so this is
/// a few microseconds).
#[cfg_attr(loom, allow(dead_code))]
const CLOCK_EVERY: u32 = 128;

/// A job: `parts` calls of the closure, by part index. The pointer's lifetime is erased; see
/// the SAFETY argument in [`run_job`].
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    parts: u32,
}

// SAFETY: the closure is `Sync`, so calling it from several threads is allowed; the pointer is
// only dereferenced while the caller of `run_job` keeps the closure alive (see there).
unsafe impl Send for Job {}

struct Shared {
    /// High 32 bits: job epoch; low 32 bits: next part to claim.
    state: AtomicU64,
    /// Parts of the current job not finished yet.
    pending: AtomicUsize,
    /// Workers still allowed to join the current job (the caller's thread count minus one).
    slots: AtomicUsize,
    /// Set when a part of the current job panicked.
    panicked: AtomicBool,
    /// The current job, written before its epoch is published.
    job: Mutex<Option<Job>>,
    /// Parked workers wait here for the next epoch.
    wake: Condvar,
    /// How many workers are parked on `wake`. `notify_all` is a futex system call even with no
    /// waiter, so a publisher skips it when none is; the count and the epoch change under this
    /// lock, so no wake-up is lost.
    sleep_lock: Mutex<usize>,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            state: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            slots: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            job: Mutex::new(None),
            wake: Condvar::new(),
            sleep_lock: Mutex::new(0),
        }
    }
}

struct Pool {
    shared: &'static Shared,
    workers: usize,
    /// One job at a time: concurrent callers (e.g. two rayon tasks) take turns.
    submit: Mutex<()>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let shared: &'static Shared = Box::leak(Box::new(Shared::new()));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = cores.saturating_sub(1);
        for i in 0..workers {
            std::thread::Builder::new()
                .name(format!("hbit-kernel-{i}"))
                .spawn(move || worker(shared))
                .expect("spawning a kernel worker thread");
        }
        Pool {
            shared,
            workers,
            submit: Mutex::new(()),
        }
    })
}

/// Claims the next part of epoch `epoch`, if any remain.
fn claim(shared: &Shared, epoch: u64, parts: u32) -> Option<u32> {
    let mut state = shared.state.load(Ordering::Acquire);
    loop {
        if state >> 32 != epoch || (state as u32) >= parts {
            return None;
        }
        match shared.state.compare_exchange_weak(
            state,
            state + 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return Some(state as u32),
            Err(now) => state = now,
        }
    }
}

/// Runs every claimable part of the job of `epoch`.
fn work_on(shared: &Shared, epoch: u64) {
    let job = *shared.job.lock().unwrap_or_else(|e| e.into_inner());
    let Some(job) = job else { return };
    while let Some(part) = claim(shared, epoch, job.parts) {
        // SAFETY: a part of `epoch` was claimed, so the job of `epoch` is not finished: its
        // caller is still inside `run_job`, keeping the closure alive, and cannot publish the
        // next job until this part's `pending` decrement below. The job read above belongs to
        // `epoch`: before rewriting the slot, a caller marks the finished epoch's parts all
        // claimed (`CLAIMED_ALL`), so a stale reader of a newer slot can claim nothing.
        let f = unsafe { &*job.f };
        // A panicking part must still count as finished, or its caller would wait forever; the
        // caller re-raises it.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(part as usize))).is_err() {
            shared.panicked.store(true, Ordering::Release);
        }
        shared.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

fn worker(shared: &'static Shared) {
    // A part that itself calls `run_parts` runs it inline (the submit lock is held by the caller
    // this part belongs to).
    INSIDE.with(|c| c.set(true));
    serve(shared);
}

/// A worker's loop: wait for each new epoch (spinning, then parked), join its job if a slot is
/// free, run parts until none is left. Returns only at [`CLOSED_EPOCH`] (tests).
fn serve(shared: &Shared) {
    let mut seen = 0u64;
    // Spin only after a job this worker took part in: a worker beyond the caller's thread count
    // parks at once instead of burning a core.
    let mut joined = false;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        let mut epoch = shared.state.load(Ordering::Acquire) >> 32;
        while epoch == seen {
            spins = spins.wrapping_add(1);
            if !joined || spin_expired(spins, start) {
                // About to sleep: hand this thread's freed memory back first. A part's
                // temporaries (a prefill's sums, megabytes) stayed resident in this worker's heap
                // until the heap was next used, which an idle engine never does (≈ 4 MB of a
                // ≈125M model's 107 MB at batch 16). Decode steps follow each other within the
                // spin, so a generating engine never pays for this.
                #[cfg(feature = "allocator")]
                if joined {
                    crate::allocator::release_freed_pages();
                }
                let mut parked = shared.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
                // Re-check under the lock: the publisher reads the count while holding it.
                if shared.state.load(Ordering::Acquire) >> 32 == seen {
                    *parked += 1;
                    parked = shared.wake.wait(parked).unwrap_or_else(|e| e.into_inner());
                    *parked -= 1;
                }
                drop(parked);
            } else {
                spin_pause();
            }
            epoch = shared.state.load(Ordering::Acquire) >> 32;
        }
        #[cfg(any(test, loom))]
        if epoch == CLOSED_EPOCH {
            return;
        }
        seen = epoch;
        joined = shared
            .slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if joined {
            work_on(shared, epoch);
        }
    }
}

/// Whether an idle worker has spun for [`SPIN`]. The clock is read once per [`CLOCK_EVERY`]
/// spins: reading it each time (a vDSO call) took 11% of a batch-16 decode's samples, issue
/// slots a sibling vCPU can use. Under loom a worker parks at once (time is not modelled).
#[cfg(not(loom))]
fn spin_expired(spins: u32, start: Instant) -> bool {
    spins.is_multiple_of(CLOCK_EVERY) && start.elapsed() > SPIN
}

#[cfg(loom)]
fn spin_expired(_spins: u32, _start: Instant) -> bool {
    true
}

/// One round of a wait loop: a `pause`, or under loom a yield to the model's scheduler.
#[cfg(not(loom))]
fn spin_pause() {
    std::hint::spin_loop();
}

#[cfg(loom)]
fn spin_pause() {
    loom::thread::yield_now();
}

/// Closes `shared`'s workers: they return from [`serve`] (tests).
#[cfg(test)]
fn close(shared: &Shared) {
    let _g = shared.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
    shared
        .state
        .store(CLOSED_EPOCH << 32 | CLAIMED_ALL, Ordering::Release);
    shared.wake.notify_all();
}

/// Calls `f(0..parts)` spread over the caller and the spinning workers, returning when all are
/// done. At most `rayon::current_num_threads()` threads take part (the caller included).
pub fn run_parts(parts: usize, f: &(dyn Fn(usize) + Sync)) {
    let threads = rayon::current_num_threads();
    let pool = pool();
    if parts <= 1 || threads <= 1 || pool.workers == 0 || INSIDE.with(|c| c.get()) {
        (0..parts).for_each(f);
        return;
    }
    INSIDE.with(|c| c.set(true));
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            INSIDE.with(|c| c.set(false));
        }
    }
    let _reset = Reset;
    let _turn = pool.submit.lock().unwrap_or_else(|e| e.into_inner());
    let parts32 = u32::try_from(parts)
        .ok()
        .filter(|&p| p < u32::MAX)
        .expect("fewer than 2^32 - 1 parts");
    // SAFETY: the submit lock makes this the only caller of `run_job` on the pool's `Shared`,
    // and `threads > 1` here.
    let (own, panicked) = unsafe { run_job(pool.shared, parts32, threads, f) };
    if let Err(payload) = own {
        std::panic::resume_unwind(payload);
    }
    if panicked {
        panic!("a part of a parallel kernel job panicked on a kernel worker thread");
    }
}

/// The caller's side of one job on `shared` (one caller at a time): publish it to at most
/// `threads − 1` workers, run parts itself, wait until every part has finished, retire it.
/// Returns the caller's own parts' outcome and whether a worker's part panicked.
///
/// # Safety
/// No other call of `run_job` on `shared` runs at the same time (a second caller would close
/// this job's epoch and reset `pending`, so this one could return while a worker still runs
/// `f`), and `threads ≥ 1`.
unsafe fn run_job(
    shared: &Shared,
    parts: u32,
    threads: usize,
    f: &(dyn Fn(usize) + Sync),
) -> (std::thread::Result<()>, bool) {
    // SAFETY: erasing the closure's lifetime is sound because this function does not return
    // until `pending` reaches zero, i.e. until every part (the only code that dereferences the
    // pointer) has finished.
    let f_static: *const (dyn Fn(usize) + Sync) = unsafe {
        std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f)
    };
    let previous = shared.state.load(Ordering::Acquire) >> 32;
    // Close the previous epoch for stale workers before the job slot changes (see `work_on`).
    shared
        .state
        .store(previous << 32 | CLAIMED_ALL, Ordering::Release);
    shared.panicked.store(false, Ordering::Release);
    shared.pending.store(parts as usize, Ordering::Release);
    // At most `threads` participants (the caller and `threads - 1` workers), so an `install`-ed
    // pool of n threads keeps the kernels on n cores.
    shared.slots.store(threads - 1, Ordering::Release);
    *shared.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(Job { f: f_static, parts });
    let epoch = previous + 1;
    {
        let parked = shared.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
        shared.state.store(epoch << 32, Ordering::Release);
        if *parked > 0 {
            shared.wake.notify_all();
        }
    }
    // The caller's own parts: a panic there is caught too, because the closure must outlive
    // every part the workers are still running.
    let own = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work_on(shared, epoch)));
    let mut spins = 0u32;
    while shared.pending.load(Ordering::Acquire) != 0 {
        // A worker preempted mid-part (an oversubscribed machine) gets the core back sooner.
        spins += 1;
        if spins.is_multiple_of(1 << 14) {
            std::thread::yield_now();
        } else {
            spin_pause();
        }
    }
    *shared.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
    (own, shared.panicked.load(Ordering::Acquire))
}

/// `f(0..parts)` through [`run_parts`], results in part order.
pub fn map_parts<T: Send>(parts: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let slots: Vec<Mutex<Option<T>>> = (0..parts).map(|_| Mutex::new(None)).collect();
    run_parts(parts, &|i| {
        let value = f(i);
        *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
    });
    slots
        .into_iter()
        .map(|s| {
            s.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("run_parts runs every part")
        })
        .collect()
}

/// Below this many values, row-wise work stays on the calling thread.
const PARALLEL_ROW_VALUES: usize = 1 << 14;

/// Below this many values, element-wise work stays on the calling thread, where a fork-join
/// (about a microsecond) would cost more than the work.
const PARALLEL_RUN_VALUES: usize = 2048;

/// `f(i, run_i)` for consecutive runs of `run` values of `x` (the last may be shorter; run `i`
/// starts at `i · run`), split across threads when `x` is large: element-wise work whose split
/// need not follow rows.
pub fn for_runs(x: &mut [f32], run: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if x.len() >= PARALLEL_RUN_VALUES && x.len() > run {
        for_each_row(x, run, f);
    } else {
        x.chunks_mut(run).enumerate().for_each(|(i, r)| f(i, r));
    }
}

/// `f(i, row_i)` for every row of `x` (`cols` wide), split across threads when `x` is large.
/// The split runs on these spinning workers, not on rayon's pool: a rayon job would wake
/// rayon's threads while a kernel worker still spins, three busy threads on two cores (measured:
/// 10% of a prefill's samples were that spin).
pub fn for_rows(x: &mut [f32], cols: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if x.len() >= PARALLEL_ROW_VALUES && x.len() > cols {
        for_each_row(x, cols, f);
    } else {
        x.chunks_exact_mut(cols)
            .enumerate()
            .for_each(|(i, r)| f(i, r));
    }
}

/// `f(i, row_i)` for every `cols`-wide row of `x` (the last row shorter if `x.len()` is not a
/// multiple of `cols`), the rows split into contiguous shares run through [`run_parts`] (one
/// share per thread of the caller's pool).
pub fn for_each_row<T: Send>(x: &mut [T], cols: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let cols = cols.max(1);
    let rows = x.len().div_ceil(cols);
    let parts = rayon::current_num_threads().clamp(1, rows.max(1));
    let share = rows.div_ceil(parts).max(1);
    let chunks: Vec<Mutex<(usize, &mut [T])>> = x
        .chunks_mut(share * cols)
        .enumerate()
        .map(|(i, c)| Mutex::new((i * share, c)))
        .collect();
    run_parts(chunks.len(), &|p| {
        // Each part locks only its own chunk: never contended.
        let mut guard = chunks[p].lock().unwrap_or_else(|e| e.into_inner());
        let (first, chunk) = &mut *guard;
        for (j, row) in chunk.chunks_mut(cols).enumerate() {
            f(*first + j, row);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn for_rows_and_for_runs_visit_each_piece_once_with_its_index() {
        // Below and above the thresholds that move the work onto the workers.
        for (len, width) in [(96, 8), (1 << 15, 64), (5000, 512), (4097, 512)] {
            let mut x = vec![-1.0f32; len];
            if len % width == 0 {
                for_rows(&mut x, width, |i, row| {
                    row.iter_mut().for_each(|v| *v = i as f32)
                });
                let want: Vec<f32> = (0..len).map(|k| (k / width) as f32).collect();
                assert_eq!(x, want, "rows of {width} over {len}");
            }
            let mut y = vec![-1.0f32; len];
            for_runs(&mut y, width, |i, run| {
                run.iter_mut().for_each(|v| *v = i as f32)
            });
            let want: Vec<f32> = (0..len).map(|k| (k / width) as f32).collect();
            assert_eq!(y, want, "runs of {width} over {len}");
        }
    }
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_part_runs_exactly_once() {
        for parts in [0usize, 1, 2, 3, 17, 256] {
            for _round in 0..50 {
                let hits: Vec<AtomicU32> = (0..parts).map(|_| AtomicU32::new(0)).collect();
                run_parts(parts, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                    "{parts} parts"
                );
            }
        }
    }

    #[test]
    fn for_each_row_visits_every_row_once_with_its_index() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        // Lengths that are and are not a multiple of the row width (a short last row).
        for len in [5usize, 10, 15, 35, 320, 3, 17, 321] {
            let mut x = vec![0u32; len];
            pool.install(|| {
                for_each_row(&mut x, 5, |i, row| {
                    row.iter_mut().for_each(|v| *v += i as u32 + 1)
                })
            });
            for (i, row) in x.chunks(5).enumerate() {
                assert!(
                    row.iter().all(|&v| v == i as u32 + 1),
                    "{len} values: row {i} = {row:?}"
                );
            }
        }
    }

    #[test]
    fn a_panicking_part_is_reported_and_the_pool_keeps_working() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.install(|| {
                run_parts(16, &|i| {
                    if i == 7 {
                        panic!("part 7");
                    }
                })
            })
        }));
        assert!(result.is_err());
        let hits: Vec<AtomicU32> = (0..16).map(|_| AtomicU32::new(0)).collect();
        pool.install(|| {
            run_parts(16, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            })
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn concurrent_callers_take_turns() {
        let total = AtomicU32::new(0);
        rayon::scope(|s| {
            for _ in 0..4 {
                s.spawn(|_| {
                    for _ in 0..20 {
                        run_parts(8, &|_| {
                            total.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 4 * 20 * 8);
    }

    /// The handoff on a private pool with one worker, caller and worker as plain threads: jobs
    /// of every size run each part once, the worker joins, and `close` ends it.
    #[test]
    fn a_private_pool_runs_jobs_and_closes() {
        let shared = Shared::new();
        std::thread::scope(|scope| {
            let worker = scope.spawn(|| serve(&shared));
            for parts in [1u32, 2, 5, 64] {
                for _round in 0..20 {
                    let hits: Vec<AtomicU32> = (0..parts).map(|_| AtomicU32::new(0)).collect();
                    // SAFETY: this thread is the pool's only caller.
                    let (own, panicked) = unsafe {
                        run_job(&shared, parts, 2, &|i| {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                        })
                    };
                    assert!(own.is_ok() && !panicked);
                    assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                }
            }
            close(&shared);
            worker.join().unwrap();
        });
    }

    /// A worker that parked after its spin is woken by the next job and takes a part: each of
    /// the job's two parts waits (bounded) until both have started, which only happens if the
    /// worker runs one while the caller runs the other.
    #[test]
    fn a_parked_worker_wakes_for_the_next_job() {
        let shared = Shared::new();
        /// Closes the pool however the test ends, so the scope's join cannot hang on a parked
        /// worker after a failed assertion.
        struct Closer<'a>(&'a Shared);
        impl Drop for Closer<'_> {
            fn drop(&mut self) {
                close(self.0);
            }
        }
        std::thread::scope(|scope| {
            let _closer = Closer(&shared);
            scope.spawn(|| serve(&shared));
            for round in 0..3 {
                // SAFETY: this thread is the pool's only caller.
                let (own, panicked) = unsafe { run_job(&shared, 2, 2, &|_| {}) };
                assert!(own.is_ok() && !panicked);
                // The idle worker parks within SPIN (bounded wait: a loaded machine may run it
                // late).
                let deadline = Instant::now() + Duration::from_secs(5);
                let mut parked = *shared.sleep_lock.lock().unwrap();
                while parked == 0 && Instant::now() < deadline {
                    std::thread::sleep(SPIN);
                    parked = *shared.sleep_lock.lock().unwrap();
                }
                assert_eq!(parked, 1, "round {round}: the idle worker has parked");
                let started = AtomicU32::new(0);
                let met = AtomicU32::new(0);
                // SAFETY: as above.
                let (own, panicked) = unsafe {
                    run_job(&shared, 2, 2, &|_| {
                        started.fetch_add(1, Ordering::AcqRel);
                        let deadline = Instant::now() + Duration::from_secs(5);
                        while started.load(Ordering::Acquire) < 2 && Instant::now() < deadline {
                            std::hint::spin_loop();
                        }
                        if started.load(Ordering::Acquire) == 2 {
                            met.fetch_add(1, Ordering::AcqRel);
                        }
                    })
                };
                assert!(own.is_ok() && !panicked);
                assert_eq!(
                    met.load(Ordering::Acquire),
                    2,
                    "round {round}: the parked worker never joined the job"
                );
            }
        });
    }
}

/// Model checks of the fork-join handoff: `RUSTFLAGS="--cfg loom" cargo test -p hbit-kernels
/// --lib --release loom` (`.ci/run` runs it). loom runs a caller and a worker through every
/// interleaving (bounded preemptions) and fails on a deadlock, a lost wake-up, or a read not
/// ordered after the write it needs.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;

    /// Outputs written by parts, one slot each, read by the caller after the join: the pattern
    /// of the matrix kernels' shared output (disjoint writes during a job, reads after it).
    /// loom's cell records every access, so a read not ordered after its write fails the test.
    struct Slots(Vec<UnsafeCell<usize>>);

    // SAFETY: parts write disjoint slots and the caller reads them only after `run_job`
    // returns; the model check below is what verifies this.
    unsafe impl Sync for Slots {}

    impl Slots {
        fn new(n: usize) -> Slots {
            Slots((0..n).map(|_| UnsafeCell::new(usize::MAX)).collect())
        }
        fn write(&self, i: usize, v: usize) {
            // SAFETY: slot i belongs to part i alone (loom checks it).
            self.0[i].with_mut(|p| unsafe { *p = v });
        }
        fn read(&self, i: usize) -> usize {
            // SAFETY: no part runs any more (loom checks it).
            self.0[i].with(|p| unsafe { *p })
        }
    }

    fn model(test: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(test);
    }

    #[test]
    fn loom_every_part_runs_once_and_its_write_is_seen_after_the_join() {
        model(|| {
            let shared = Arc::new(Shared::new());
            let worker = {
                let shared = shared.clone();
                loom::thread::spawn(move || serve(&shared))
            };
            let slots = Slots::new(3);
            // SAFETY: the model's main thread is the only caller.
            let (own, panicked) = unsafe { run_job(&shared, 3, 2, &|i| slots.write(i, i + 10)) };
            assert!(own.is_ok() && !panicked);
            for i in 0..3 {
                assert_eq!(slots.read(i), i + 10);
            }
            close(&shared);
            worker.join().unwrap();
        });
    }

    /// A worker still holding the first job when the second is published must not call the
    /// first job's closure, whose captures the caller has reused by then (the lifetime the
    /// handoff erases): the caller's write to `first` after the first join would race with it.
    /// Nor may it run a part of the second job under the first's epoch (a second job with more
    /// parts is what exposes that).
    #[test]
    fn loom_a_stale_worker_never_runs_a_finished_job() {
        model(|| {
            let shared = Arc::new(Shared::new());
            let worker = {
                let shared = shared.clone();
                loom::thread::spawn(move || serve(&shared))
            };
            let first = Slots::new(2);
            // SAFETY: the model's main thread is the only caller.
            let (own, panicked) = unsafe { run_job(&shared, 2, 2, &|i| first.write(i, 1)) };
            assert!(own.is_ok() && !panicked);
            // The first closure's captures are dead from here on: overwrite them.
            first.write(0, 0);
            first.write(1, 0);
            let second = Slots::new(3);
            // SAFETY: as above.
            let (own, panicked) = unsafe { run_job(&shared, 3, 2, &|i| second.write(i, 2)) };
            assert!(own.is_ok() && !panicked);
            assert_eq!((first.read(0), first.read(1)), (0, 0));
            assert_eq!((second.read(0), second.read(1), second.read(2)), (2, 2, 2));
            close(&shared);
            worker.join().unwrap();
        });
    }
}
