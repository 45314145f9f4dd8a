//! The prefix cache: KV caches of finished sequences kept under a byte budget, so a request
//! that shares a prompt prefix with an earlier one (a system prompt, a chat history) starts
//! from a copy of that cache cut to the shared part instead of prefilling it again. The engine
//! computes each position from the tokens before it alone, so the copy holds exactly what a
//! cold prefill would (tested in the engine's parity tests).

use hbit_engine::KvCache;

struct Entry {
    tokens: Vec<u32>,
    cache: KvCache,
    /// Larger = used more recently.
    last_used: u64,
}

/// Finished sequences' caches, most recently used kept first when the budget is exceeded.
pub struct PrefixCache {
    entries: Vec<Entry>,
    budget_bytes: usize,
    clock: u64,
}

/// A cache to start a sequence from, and how many of its prompt tokens it already holds.
pub struct Hit {
    pub cache: KvCache,
    pub tokens: usize,
}

impl PrefixCache {
    pub fn new(budget_bytes: usize) -> PrefixCache {
        PrefixCache {
            entries: Vec::new(),
            budget_bytes,
            clock: 0,
        }
    }

    pub fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.cache.bytes()).sum()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The longest cached prefix of `prompt`, leaving at least its last token to run (its
    /// logits give the first answer token). `None` when no entry shares a token.
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<Hit> {
        let limit = prompt.len().saturating_sub(1);
        let (best, shared) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.tokens, prompt).min(limit)))
            .max_by_key(|&(i, n)| (n, self.entries[i].last_used))?;
        if shared == 0 {
            return None;
        }
        self.clock += 1;
        let entry = &mut self.entries[best];
        entry.last_used = self.clock;
        let cache = entry.cache.prefix(shared);
        Some(Hit {
            cache,
            tokens: shared,
        })
    }

    /// Keeps `cache`, which holds the KV of `tokens`, replacing entries it extends; then drops
    /// the least recently used entries beyond the budget.
    pub fn insert(&mut self, tokens: Vec<u32>, mut cache: KvCache) {
        if tokens.is_empty() || cache.len() != tokens.len() || cache.bytes() > self.budget_bytes {
            // Nothing to keep, or an entry the budget cannot hold (which would evict all).
            return;
        }
        cache.shrink_to_fit();
        if self
            .entries
            .iter()
            .any(|e| common_prefix(&e.tokens, &tokens) == tokens.len())
        {
            // Already covered by an entry at least as long.
            return;
        }
        self.entries
            .retain(|e| common_prefix(&e.tokens, &tokens) < e.tokens.len());
        self.clock += 1;
        self.entries.push(Entry {
            tokens,
            cache,
            last_used: self.clock,
        });
        while self.bytes() > self.budget_bytes {
            let Some(oldest) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].last_used)
            else {
                break;
            };
            self.entries.swap_remove(oldest);
        }
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hbit_engine::{Engine, KvBits, Logits};
    use std::sync::OnceLock;

    fn engine() -> &'static Engine {
        static ENGINE: OnceLock<Engine> = OnceLock::new();
        ENGINE.get_or_init(|| {
            let packed = hbit_engine::format::load_packed(&crate::bundled_model()).unwrap();
            Engine::new(packed.weights)
        })
    }

    /// A real cache of `len` positions (the values do not matter here; the engine's parity
    /// tests check them).
    fn cache_of(len: usize) -> KvCache {
        let engine = engine();
        let mut c = engine.new_cache(KvBits::F16);
        let tokens: Vec<u32> = (1..=len as u32).collect();
        if len > 0 {
            engine
                .forward(&mut [&mut c], &[&tokens], Logits::Last)
                .unwrap();
        }
        c
    }

    #[test]
    fn longest_shared_prefix_wins_and_leaves_a_token_to_run() {
        let mut pc = PrefixCache::new(usize::MAX);
        pc.insert(vec![1, 2, 3, 4], cache_of(4));
        pc.insert(vec![1, 2, 9], cache_of(3));
        let hit = pc.lookup(&[1, 2, 3, 4, 5]).unwrap();
        assert_eq!((hit.tokens, hit.cache.len()), (4, 4));
        // The whole prompt cached: the last token still runs.
        let hit = pc.lookup(&[1, 2, 3, 4]).unwrap();
        assert_eq!((hit.tokens, hit.cache.len()), (3, 3));
        let hit = pc.lookup(&[1, 2, 9, 9]).unwrap();
        assert_eq!(hit.tokens, 3);
        assert!(pc.lookup(&[7, 1, 2]).is_none());
        assert!(pc.lookup(&[1]).is_none());
    }

    #[test]
    fn an_extension_replaces_its_prefix_and_the_budget_evicts_the_oldest() {
        let mut pc = PrefixCache::new(usize::MAX);
        pc.insert(vec![1, 2], cache_of(2));
        pc.insert(vec![1, 2, 3], cache_of(3));
        assert_eq!(pc.len(), 1);
        pc.insert(vec![1], cache_of(1)); // covered: not kept
        assert_eq!(pc.len(), 1);
        let one = cache_of(8).bytes();
        let mut pc = PrefixCache::new(2 * one);
        pc.insert(vec![1; 8], cache_of(8));
        pc.insert(vec![2; 8], cache_of(8));
        assert!(pc.lookup(&[1, 1, 5]).is_some()); // [1; 8] is now the most recent
        pc.insert(vec![3; 8], cache_of(8));
        assert_eq!(pc.len(), 2);
        assert!(
            pc.lookup(&[2, 2, 5]).is_none(),
            "the least recently used went first"
        );
        assert!(pc.lookup(&[1, 1, 5]).is_some());
        assert!(pc.bytes() <= 2 * one);
        // An entry larger than the whole budget is not kept, and evicts nothing.
        let mut pc = PrefixCache::new(one);
        pc.insert(vec![1; 8], cache_of(8));
        pc.insert(vec![2; 16], cache_of(16));
        assert_eq!(pc.len(), 1);
        assert!(pc.lookup(&[1, 1, 5]).is_some());
    }
}
