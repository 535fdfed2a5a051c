//! The miss catalog: chunks this replica found missing from the cache store moments ago.
//!
//! A cold miss used to ask the store three times before the origin GET: the edge's lookup, the
//! fill service's cache lookup, and the writer's re-check once it held the cache lock. With a
//! shared `s3` store each of those is a request. The edge's lookup records the miss here; the
//! fill service's lookups within [`MISS_TTL`] trust it and skip the store, so a cold miss
//! costs one store request. The catalog is never the source of truth for a hit: a recorded
//! miss is voided when this replica commits the chunk (even while the read that recorded it was
//! under way), and it expires after [`MISS_TTL`].
//! The only cost of a stale entry (another replica committed the chunk meanwhile) is a
//! redundant fill, never a wrong byte: commits are no-clobber.

use crate::chunk::ChunkId;
use lru::LruCache;
use parking_lot::Mutex;
use std::num::NonZeroUsize;
use std::time::Duration;
use tokio::time::Instant;

/// How long a recorded miss is trusted: long enough to cover one cold miss's lookups (the
/// edge's, then the fill service's), short enough that a chunk another replica committed is
/// seen again at once.
pub const MISS_TTL: Duration = Duration::from_secs(2);

/// A bounded LRU of chunks recently found missing (or committed), with when.
pub struct Catalog {
    entries: Mutex<LruCache<ChunkId, Entry>>,
}

#[derive(Clone, Copy)]
struct Entry {
    /// Missing from the store (else: committed by this replica).
    missing: bool,
    /// When the store read that found it missing began, or when the commit landed.
    at: Instant,
}

impl Catalog {
    /// A catalog holding at most `max_entries` chunks (at least one).
    pub fn new(max_entries: usize) -> Self {
        let cap = NonZeroUsize::new(max_entries.max(1)).unwrap_or(NonZeroUsize::MIN);
        Self {
            entries: Mutex::new(LruCache::new(cap)),
        }
    }

    /// Records that a store read begun at `since` did not find `id`. A commit of `id` that
    /// landed after `since` wins: the read may simply have been too early.
    pub fn record_miss(&self, id: &ChunkId, since: Instant) {
        let mut entries = self.entries.lock();
        if let Some(e) = entries.peek(id) {
            if !e.missing && e.at >= since {
                return;
            }
        }
        entries.put(
            id.clone(),
            Entry {
                missing: true,
                at: since,
            },
        );
    }

    /// Records that this replica committed `id` (any miss recorded before is void).
    pub fn committed(&self, id: &ChunkId) {
        self.entries.lock().put(
            id.clone(),
            Entry {
                missing: false,
                at: Instant::now(),
            },
        );
    }

    /// Whether `id` was found missing within the last [`MISS_TTL`].
    pub fn recently_missing(&self, id: &ChunkId) -> bool {
        let mut entries = self.entries.lock();
        match entries.peek(id) {
            Some(e) if e.missing && e.at.elapsed() < MISS_TTL => true,
            Some(e) if e.at.elapsed() >= MISS_TTL => {
                entries.pop(id);
                false
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u64) -> ChunkId {
        ChunkId::from_fields("o", "b", "k", "e", 8, i)
    }

    #[test]
    fn bounded_and_forgettable() {
        let c = Catalog::new(2);
        let now = Instant::now();
        c.record_miss(&id(0), now);
        c.record_miss(&id(1), now);
        assert!(c.recently_missing(&id(0)));
        c.record_miss(&id(2), now); // evicts the least recently used: 0 (peek does not promote)
        assert!(!c.recently_missing(&id(0)));
        assert!(c.recently_missing(&id(1)) && c.recently_missing(&id(2)));
        c.committed(&id(1));
        assert!(!c.recently_missing(&id(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_commit_after_the_read_began_voids_its_miss() {
        let c = Catalog::new(8);
        let read_began = Instant::now();
        tokio::time::advance(Duration::from_millis(5)).await;
        c.committed(&id(0)); // a fill committed while the read was under way
        c.record_miss(&id(0), read_began);
        assert!(
            !c.recently_missing(&id(0)),
            "the commit is newer than the read"
        );
        tokio::time::advance(Duration::from_millis(5)).await;
        c.record_miss(&id(0), Instant::now()); // a read begun after the commit (evicted since)
        assert!(c.recently_missing(&id(0)));
    }

    #[tokio::test(start_paused = true)]
    async fn misses_expire() {
        let c = Catalog::new(8);
        c.record_miss(&id(0), Instant::now());
        tokio::time::advance(MISS_TTL / 2).await;
        assert!(c.recently_missing(&id(0)));
        tokio::time::advance(MISS_TTL).await;
        assert!(!c.recently_missing(&id(0)));
    }
}
