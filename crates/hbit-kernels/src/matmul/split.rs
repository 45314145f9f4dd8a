//! How one product's work is cut across the threads, and this CPU's measured choices.
//!
//! Each kernel has built-in rules by shape (`super::mad_shares_per_thread`,
//! `super::triple_own_tables`, …). A [`Split`] names one of those choices explicitly, so
//! `hbit tune` can time each and [`choose_splits`] can pin the fastest per product kind, shape
//! and batch bucket for the rest of the process, for pools of the thread count they were
//! measured on. Every split computes the same i32 sums and the same epilogue, so the choice
//! changes speed only, never a result.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

/// One way to cut a product across the threads of the current pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Split {
    /// The kernel's built-in rules by shape, whatever is pinned (what a tuner compares with).
    Builtin,
    /// Contiguous row shares, `shares` per thread, claimed dynamically. The lookup layouts
    /// first build every token's tables once, in pieces over the threads (two fork-joins).
    Rows { shares: usize },
    /// Lookup layouts: row shares, each building its own tables on its own core (one
    /// fork-join, the build repeated per share). The multiply-add kernel has no tables: for it
    /// this is [`Split::Rows`].
    RowsOwnTables { shares: usize },
    /// Lookup layouts: tables built once, then token tiles split, `shares` per thread, each
    /// part reading all the weights. The multiply-add kernel splits rows: for it this is
    /// [`Split::Rows`].
    Tokens { shares: usize },
}

/// The most shares per thread a split takes: finer cuts only add fork-join work.
pub const MAX_SHARES: usize = 64;

impl Split {
    /// Shares per thread, within 1..=[`MAX_SHARES`] (one for [`Split::Builtin`], which the
    /// kernels resolve to a concrete split first).
    pub fn shares(self) -> usize {
        match self {
            Split::Builtin => 1,
            Split::Rows { shares } | Split::RowsOwnTables { shares } | Split::Tokens { shares } => {
                shares.clamp(1, MAX_SHARES)
            }
        }
    }

    /// The splits `hbit tune` times for `kind` at `tokens` tokens on `threads` threads: the
    /// built-in rules' choices and their neighbours. Tables built per share cost each share
    /// every token's build, which grows with the prompt, so they are candidates only for the
    /// buckets up to [`OWN_TABLES_MAX_TOKENS`] (a prefill bucket holds any length). A token split
    /// needs a token tile per thread, so it is left out where there are fewer.
    pub fn candidates(kind: ProductKind, tokens: usize, threads: usize) -> Vec<Split> {
        match kind {
            ProductKind::Int8Rows => [1, 2, 4, 8].map(|shares| Split::Rows { shares }).to_vec(),
            ProductKind::Int4Pairs | ProductKind::Int4Triples => {
                let mut all = Vec::new();
                if tokens <= OWN_TABLES_MAX_TOKENS {
                    all.extend([1, 2].map(|shares| Split::RowsOwnTables { shares }));
                }
                all.extend([1, 4].map(|shares| Split::Rows { shares }));
                if tokens.div_ceil(kind.token_tile()) >= threads.max(1) {
                    all.push(Split::Tokens { shares: 2 });
                }
                all
            }
        }
    }
}

/// The most tokens for which tables built per share are a candidate split: the end of the
/// batch bucket (9–32).
pub const OWN_TABLES_MAX_TOKENS: usize = 32;

/// `auto`, `rows/4`, `own-tables/1`, `tokens/2`: the names profiles store.
impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Split::Builtin => write!(f, "auto"),
            Split::Rows { shares } => write!(f, "rows/{shares}"),
            Split::RowsOwnTables { shares } => write!(f, "own-tables/{shares}"),
            Split::Tokens { shares } => write!(f, "tokens/{shares}"),
        }
    }
}

impl std::str::FromStr for Split {
    type Err = String;

    fn from_str(s: &str) -> Result<Split, String> {
        if s == "auto" {
            return Ok(Split::Builtin);
        }
        let bad = || {
            format!("split {s:?}: expected auto, rows/N, own-tables/N or tokens/N (1 ≤ N ≤ {MAX_SHARES})")
        };
        let (kind, shares) = s.split_once('/').ok_or_else(bad)?;
        let shares: usize = shares.parse().map_err(|_| bad())?;
        if !(1..=MAX_SHARES).contains(&shares) {
            return Err(bad());
        }
        match kind {
            "rows" => Ok(Split::Rows { shares }),
            "own-tables" => Ok(Split::RowsOwnTables { shares }),
            "tokens" => Ok(Split::Tokens { shares }),
            _ => Err(bad()),
        }
    }
}

/// Which kernel family runs a product: the key's first part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProductKind {
    /// [`crate::RowPacked`] by INT8 (or INT4) codes: multiply-adds.
    Int8Rows,
    /// [`crate::LutPacked`] by INT4 codes: two weights per lookup.
    Int4Pairs,
    /// [`crate::TriplePacked`] by INT4 codes: three weights per lookup.
    Int4Triples,
}

impl ProductKind {
    fn token_tile(self) -> usize {
        match self {
            ProductKind::Int8Rows => 1,
            ProductKind::Int4Pairs => crate::cpu::active_path()
                .map_or(1, |p| super::lut::LutTile::for_path(p).token_tile()),
            ProductKind::Int4Triples => super::triple::TOKEN_TILE,
        }
    }
}

/// The batch buckets splits are chosen per: a decode step (1 token), a few sequences (2–8),
/// a batch (9–32), a prefill (33 and more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bucket {
    One,
    Few,
    Batch,
    Prefill,
}

impl Bucket {
    pub const ALL: [Bucket; 4] = [Bucket::One, Bucket::Few, Bucket::Batch, Bucket::Prefill];

    pub fn of(tokens: usize) -> Bucket {
        match tokens {
            0 | 1 => Bucket::One,
            2..=8 => Bucket::Few,
            9..=32 => Bucket::Batch,
            _ => Bucket::Prefill,
        }
    }

    /// `1`, `2-8`, `9-32`, `33+`.
    pub fn name(self) -> &'static str {
        match self {
            Bucket::One => "1",
            Bucket::Few => "2-8",
            Bucket::Batch => "9-32",
            Bucket::Prefill => "33+",
        }
    }

    /// The token count a tuner measures the bucket at.
    pub fn tokens(self) -> usize {
        match self {
            Bucket::One => 1,
            Bucket::Few => 4,
            Bucket::Batch => 16,
            Bucket::Prefill => 64,
        }
    }

    /// The bucket named `name` ([`Bucket::name`]).
    pub fn parse(name: &str) -> Option<Bucket> {
        Bucket::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// A product as the splits are chosen for it: kernel family, rows of all the matrices the
/// call multiplies together (q/k/v, gate/up), their columns, and the batch bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SplitKey {
    pub kind: ProductKind,
    pub rows: usize,
    pub cols: usize,
    pub bucket: Bucket,
}

/// Whether any split was chosen: products skip the lock while none was.
static ANY_CHOSEN: AtomicBool = AtomicBool::new(false);
/// The pinned splits and the pool size they were measured on.
static CHOSEN: RwLock<(usize, BTreeMap<SplitKey, Split>)> = RwLock::new((0, BTreeMap::new()));

/// Pins `chosen`, measured on pools of `threads` threads, for the rest of the process
/// (replacing what was pinned before). Products on a pool of another size, and products without
/// an entry, keep the built-in rules: which split wins depends on how many threads share it.
pub fn choose_splits(threads: usize, chosen: BTreeMap<SplitKey, Split>) {
    let any = !chosen.is_empty();
    *CHOSEN.write().unwrap_or_else(|e| e.into_inner()) = (threads, chosen);
    ANY_CHOSEN.store(any, Ordering::Release);
}

/// The split pinned for `key` on a pool of `threads` threads, if any.
pub fn chosen_split(key: &SplitKey, threads: usize) -> Option<Split> {
    if !ANY_CHOSEN.load(Ordering::Acquire) {
        return None;
    }
    let chosen = CHOSEN.read().unwrap_or_else(|e| e.into_inner());
    if chosen.0 != threads {
        return None;
    }
    chosen.1.get(key).copied()
}

/// The split a product runs: `explicit` when given, else the one pinned for its key and the
/// current pool's size, else the kernel's built-in rule (also for an explicit
/// [`Split::Builtin`]).
pub(super) fn resolve(
    explicit: Option<Split>,
    kind: ProductKind,
    rows: usize,
    cols: usize,
    tokens: usize,
    builtin: impl FnOnce() -> Split,
) -> Split {
    let pinned = || {
        let key = SplitKey {
            kind,
            rows,
            cols,
            bucket: Bucket::of(tokens),
        };
        chosen_split(&key, rayon::current_num_threads())
    };
    match explicit.or_else(pinned) {
        Some(Split::Builtin) | None => builtin(),
        Some(split) => split,
    }
}

/// Held by the tests that pin splits: the pinned table is one per process.
#[cfg(test)]
pub(super) static PIN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_are_refused() {
        for kind in [
            ProductKind::Int8Rows,
            ProductKind::Int4Pairs,
            ProductKind::Int4Triples,
        ] {
            for split in Split::candidates(kind, 64, 2) {
                assert_eq!(split.to_string().parse::<Split>(), Ok(split));
            }
        }
        assert_eq!("auto".parse::<Split>(), Ok(Split::Builtin));
        assert_eq!(Split::Builtin.to_string(), "auto");
        assert_eq!("rows/64".parse::<Split>(), Ok(Split::Rows { shares: 64 }));
        let huge = "tokens/9223372036854775808";
        for bad in [
            "rows",
            "rows/0",
            "rows/x",
            "cols/2",
            "",
            "tokens/-1",
            "rows/65",
            huge,
        ] {
            assert!(bad.parse::<Split>().is_err(), "{bad}");
        }
        // Built by hand past the bound: clamped, so threads × shares cannot overflow.
        assert_eq!(Split::Tokens { shares: usize::MAX }.shares(), MAX_SHARES);
        assert_eq!(Split::Rows { shares: 0 }.shares(), 1);
    }

    #[test]
    fn buckets_cover_every_token_count_and_their_measured_sizes() {
        assert_eq!(Bucket::of(1), Bucket::One);
        assert_eq!(Bucket::of(2), Bucket::Few);
        assert_eq!(Bucket::of(8), Bucket::Few);
        assert_eq!(Bucket::of(9), Bucket::Batch);
        assert_eq!(Bucket::of(32), Bucket::Batch);
        assert_eq!(Bucket::of(33), Bucket::Prefill);
        for b in Bucket::ALL {
            assert_eq!(Bucket::of(b.tokens()), b);
            assert_eq!(Bucket::parse(b.name()), Some(b));
        }
        assert_eq!(Bucket::parse("7"), None);
    }

    #[test]
    fn candidates_leave_out_splits_that_cannot_pay() {
        let has_tokens = |tokens| {
            Split::candidates(ProductKind::Int4Triples, tokens, 2)
                .iter()
                .any(|s| matches!(s, Split::Tokens { .. }))
        };
        assert!(!has_tokens(1));
        assert!(!has_tokens(8)); // one 8-token tile
        assert!(has_tokens(16));
        let has_own_tables = |tokens| {
            Split::candidates(ProductKind::Int4Pairs, tokens, 2)
                .iter()
                .any(|s| matches!(s, Split::RowsOwnTables { .. }))
        };
        assert!(has_own_tables(1) && has_own_tables(32));
        assert!(!has_own_tables(Bucket::Prefill.tokens()));
    }

    #[test]
    fn explicit_beats_pinned_beats_builtin_on_the_pinned_pool_size() {
        let _pinning = PIN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // A key no other test's products use (rows no model has).
        let key = SplitKey {
            kind: ProductKind::Int4Pairs,
            rows: 7,
            cols: 13,
            bucket: Bucket::Few,
        };
        let builtin = || Split::Rows { shares: 4 };
        let pool = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
        };
        let resolved = |threads, explicit, tokens| {
            pool(threads).install(|| resolve(explicit, key.kind, 7, 13, tokens, builtin))
        };
        assert_eq!(resolved(2, None, 3), builtin());
        choose_splits(2, BTreeMap::from([(key, Split::Tokens { shares: 2 })]));
        assert_eq!(resolved(2, None, 3), Split::Tokens { shares: 2 });
        // Another pool size, another bucket of the same shape: the built-in rule.
        assert_eq!(resolved(3, None, 3), builtin());
        assert_eq!(resolved(2, None, 1), builtin());
        // Explicit splits win; an explicit Builtin ignores what is pinned.
        let explicit = Split::RowsOwnTables { shares: 2 };
        assert_eq!(resolved(2, Some(explicit), 3), explicit);
        assert_eq!(resolved(2, Some(Split::Builtin), 3), builtin());
        choose_splits(2, BTreeMap::new());
        assert_eq!(resolved(2, None, 3), builtin());
    }
}
