//! The presence catalog: a bounded LRU of chunk names known to be in the cache store.
//!
//! It only saves a `stat` on hot chunks; it is never the source of truth. A name in the catalog
//! whose read then misses is forgotten, and the store's key set stays authoritative.

use lru::LruCache;
use parking_lot::Mutex;
use std::num::NonZeroUsize;

/// Presence-only LRU of chunk names.
pub struct Catalog {
    entries: Mutex<LruCache<String, ()>>,
}

impl Catalog {
    /// A catalog holding at most `max_entries` names (at least one).
    pub fn new(max_entries: usize) -> Self {
        let cap = NonZeroUsize::new(max_entries.max(1)).unwrap_or(NonZeroUsize::MIN);
        Self {
            entries: Mutex::new(LruCache::new(cap)),
        }
    }

    /// Whether `name` is known to be stored (and marks it recently used).
    pub fn contains(&self, name: &str) -> bool {
        self.entries.lock().get(name).is_some()
    }

    /// Records that `name` is stored.
    pub fn record(&self, name: String) {
        self.entries.lock().put(name, ());
    }

    /// Forgets `name` (its read missed or failed).
    pub fn forget(&self, name: &str) {
        self.entries.lock().pop(name);
    }

    /// Number of names held.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// Whether the catalog is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_lru() {
        let c = Catalog::new(2);
        c.record("a".into());
        c.record("b".into());
        assert!(c.contains("a"));
        c.record("c".into()); // evicts b, the least recently used
        assert!(!c.contains("b"));
        assert!(c.contains("a") && c.contains("c"));
        c.forget("a");
        assert!(!c.contains("a"));
        assert_eq!(c.len(), 1);
    }
}
