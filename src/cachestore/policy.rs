//! The eviction policy of the bounded `fs` store: S3-FIFO, weighted by bytes.
//!
//! Three FIFO queues (Yang et al., "FIFO queues are all you need for cache eviction", SOSP
//! 2023). A new chunk enters the *small* queue. When it reaches the small queue's tail it moves
//! to the *main* queue if it was read since it entered, and is evicted otherwise, leaving its
//! fingerprint in the *ghost* queue; a chunk whose fingerprint is there when it comes back
//! enters the main queue directly. The main queue is a CLOCK: an entry that was read goes round
//! again with one read less (counts stop at [`MAX_FREQ`]). The small queue is evicted from while
//! it holds more than a tenth of the capacity.
//!
//! So a one-pass scan (a batch job reading a dataset once) churns through the small queue and
//! never reaches the chunks read again and again, which plain LRU would flush; and promotion
//! needs a second read, which costs one atomic-free counter bump per hit. Pure logic: no I/O, no
//! clock of its own (callers pass `now`), so it is tested below with exact sequences.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// A chunk as the policy knows it: the object hash and the index (`ChunkId::placement_digest`),
/// 40 bytes instead of the 70-character name.
pub(crate) type Key = [u8; 40];

/// Reads remembered per entry: enough to tell "read once" from "hot" without letting a chunk
/// that was hot long ago stay forever.
const MAX_FREQ: u8 = 3;

/// The small queue is evicted from first while it holds more than capacity / this (S3-FIFO's
/// 10 %).
const SMALL_SHARE_DIVISOR: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

#[derive(Debug)]
struct Entry {
    size: u64,
    freq: u8,
    queue: Queue,
    /// Tells a live queue slot from a stale one left by [`S3Fifo::remove`].
    generation: u32,
    /// When the chunk was committed; `None` for chunks found on disk at start.
    born: Option<Instant>,
}

/// The policy state of every chunk in the store.
#[derive(Debug, Default)]
pub(crate) struct S3Fifo {
    entries: HashMap<Key, Entry>,
    /// Front = tail (oldest), back = head (newest). Slots of removed entries stay until popped.
    small: VecDeque<(Key, u32)>,
    main: VecDeque<(Key, u32)>,
    small_bytes: u64,
    main_bytes: u64,
    small_live: usize,
    main_live: usize,
    ghost: HashSet<u64>,
    ghost_order: VecDeque<u64>,
    next_generation: u32,
}

/// A short fingerprint for the ghost queue (it holds names only, not entries).
fn fingerprint(key: &Key) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&key[..8]);
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[32..40]);
    u64::from_le_bytes(a) ^ u64::from_be_bytes(b).rotate_left(17)
}

impl S3Fifo {
    /// Bytes of all entries.
    pub(crate) fn bytes(&self) -> u64 {
        self.small_bytes + self.main_bytes
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether `key` is tracked.
    #[cfg(test)]
    pub(crate) fn contains(&self, key: &Key) -> bool {
        self.entries.contains_key(key)
    }

    fn generation(&mut self) -> u32 {
        self.next_generation = self.next_generation.wrapping_add(1);
        self.next_generation
    }

    fn push(&mut self, key: Key, size: u64, queue: Queue, born: Option<Instant>, oldest: bool) {
        let generation = self.generation();
        self.entries.insert(
            key,
            Entry {
                size,
                freq: 0,
                queue,
                generation,
                born,
            },
        );
        let (q, bytes, live) = match queue {
            Queue::Small => (&mut self.small, &mut self.small_bytes, &mut self.small_live),
            Queue::Main => (&mut self.main, &mut self.main_bytes, &mut self.main_live),
        };
        if oldest {
            q.push_front((key, generation));
        } else {
            q.push_back((key, generation));
        }
        *bytes += size;
        *live += 1;
    }

    /// A chunk just committed: into the small queue, or the main queue when its ghost is
    /// there. Protected from eviction for a while after `now` (see [`S3Fifo::evict`]).
    /// `false` (and nothing changes) when it is already tracked.
    pub(crate) fn insert(&mut self, key: Key, size: u64, now: Instant) -> bool {
        if self.entries.contains_key(&key) {
            return false;
        }
        let fp = fingerprint(&key);
        let queue = if self.ghost.remove(&fp) {
            Queue::Main
        } else {
            Queue::Small
        };
        self.push(key, size, queue, Some(now), false);
        true
    }

    /// A chunk found on disk at start: into the main queue at its tail, unprotected and with no
    /// reads, so it goes before anything committed or read since, unless it is read again.
    pub(crate) fn restore(&mut self, key: Key, size: u64) -> bool {
        if self.entries.contains_key(&key) {
            return false;
        }
        self.push(key, size, Queue::Main, None, true);
        true
    }

    /// A chunk as a saved snapshot had it ([`S3Fifo::snapshot`]), at the head of its queue:
    /// restoring a snapshot in its order rebuilds the queues. Unprotected.
    pub(crate) fn restore_saved(&mut self, key: Key, size: u64, main: bool, freq: u8) -> bool {
        if self.entries.contains_key(&key) {
            return false;
        }
        let queue = if main { Queue::Main } else { Queue::Small };
        self.push(key, size, queue, None, false);
        if let Some(e) = self.entries.get_mut(&key) {
            e.freq = freq.min(MAX_FREQ);
        }
        true
    }

    /// Every entry as `(key, in main, reads)`, each queue from tail to head (small first), for
    /// saving across a restart.
    pub(crate) fn snapshot(&self) -> Vec<(Key, bool, u8)> {
        let mut out = Vec::with_capacity(self.entries.len());
        for (queue, main) in [(&self.small, false), (&self.main, true)] {
            for (key, generation) in queue {
                if let Some(e) = self.entries.get(key) {
                    if e.generation == *generation && (e.queue == Queue::Main) == main {
                        out.push((*key, main, e.freq));
                    }
                }
            }
        }
        out
    }

    /// A read of a tracked chunk; `false` when it is not tracked.
    pub(crate) fn touch(&mut self, key: &Key) -> bool {
        match self.entries.get_mut(key) {
            Some(e) => {
                e.freq = (e.freq + 1).min(MAX_FREQ);
                true
            }
            None => false,
        }
    }

    /// Forgets a chunk (it vanished or was quarantined); its size when it was tracked.
    pub(crate) fn remove(&mut self, key: &Key) -> Option<u64> {
        let e = self.entries.remove(key)?;
        match e.queue {
            Queue::Small => {
                self.small_bytes -= e.size;
                self.small_live -= 1;
            }
            Queue::Main => {
                self.main_bytes -= e.size;
                self.main_live -= 1;
            }
        }
        self.compact();
        Some(e.size)
    }

    /// Drops stale slots once they outnumber the live ones, so removals cost O(1) amortized.
    fn compact(&mut self) {
        let entries = &self.entries;
        let live = |(k, g): &(Key, u32)| entries.get(k).is_some_and(|e| e.generation == *g);
        if self.small.len() > 2 * self.small_live + 64 {
            self.small.retain(live);
        }
        if self.main.len() > 2 * self.main_live + 64 {
            self.main.retain(live);
        }
    }

    fn remember_ghost(&mut self, key: &Key) {
        let fp = fingerprint(key);
        if self.ghost.insert(fp) {
            self.ghost_order.push_back(fp);
        }
        // As many ghosts as live entries (at least 64): enough to recognize a chunk that comes
        // back within about one turn of the cache.
        let cap = self.entries.len().max(64);
        while self.ghost_order.len() > cap {
            if let Some(old) = self.ghost_order.pop_front() {
                self.ghost.remove(&old);
            }
        }
    }

    /// Picks the next victim and forgets it: `(key, size)`, or `None` when nothing may go.
    ///
    /// `capacity` sizes the small queue's share. With `protect = Some(d)`, entries committed
    /// less than `d` before `now` are not evicted, and when the queue whose turn it is holds
    /// only such entries, nothing is: protection makes eviction stop early, never take an
    /// older, hotter chunk instead. With `None` nothing is protected (the store is over its
    /// bound: better a recent chunk than the bound).
    pub(crate) fn evict(
        &mut self,
        capacity: u64,
        now: Instant,
        protect: Option<Duration>,
    ) -> Option<(Key, u64)> {
        let small_first = self.small_bytes > capacity / SMALL_SHARE_DIVISOR || self.main_live == 0;
        let order = if small_first {
            [Queue::Small, Queue::Main]
        } else {
            [Queue::Main, Queue::Small]
        };
        for queue in order {
            let outcome = match queue {
                Queue::Small => self.evict_small(now, protect),
                Queue::Main => self.evict_main(now, protect),
            };
            match outcome {
                Pick::Victim(key, size) => {
                    self.compact();
                    return Some((key, size));
                }
                Pick::Protected => return None,
                Pick::Empty => {}
            }
        }
        None
    }

    fn protected(e: &Entry, now: Instant, protect: Option<Duration>) -> bool {
        match (protect, e.born) {
            (Some(d), Some(born)) => now.saturating_duration_since(born) < d,
            _ => false,
        }
    }

    fn evict_small(&mut self, now: Instant, protect: Option<Duration>) -> Pick {
        let mut skipped = false;
        // Each live slot is looked at most once per call: it is evicted, promoted or skipped.
        for _ in 0..self.small.len() {
            let Some((key, generation)) = self.small.pop_front() else {
                break;
            };
            let Some(e) = self.entries.get_mut(&key) else {
                continue;
            };
            if e.generation != generation || e.queue != Queue::Small {
                continue;
            }
            if Self::protected(e, now, protect) {
                self.small.push_back((key, generation));
                skipped = true;
                continue;
            }
            let size = e.size;
            if e.freq >= 1 {
                // Read since it entered: it is worth keeping.
                e.freq = 0;
                e.queue = Queue::Main;
                self.small_bytes -= size;
                self.small_live -= 1;
                self.main_bytes += size;
                self.main_live += 1;
                self.main.push_back((key, generation));
                continue;
            }
            self.entries.remove(&key);
            self.small_bytes -= size;
            self.small_live -= 1;
            self.remember_ghost(&key);
            return Pick::Victim(key, size);
        }
        if skipped {
            Pick::Protected
        } else {
            Pick::Empty
        }
    }

    fn evict_main(&mut self, now: Instant, protect: Option<Duration>) -> Pick {
        let mut skipped = false;
        // Every entry loses a read per turn, so after MAX_FREQ + 1 turns one is unread.
        let bound = self.main.len() * (usize::from(MAX_FREQ) + 1);
        for _ in 0..bound {
            let Some((key, generation)) = self.main.pop_front() else {
                break;
            };
            let Some(e) = self.entries.get_mut(&key) else {
                continue;
            };
            if e.generation != generation || e.queue != Queue::Main {
                continue;
            }
            if Self::protected(e, now, protect) {
                self.main.push_back((key, generation));
                skipped = true;
                continue;
            }
            if e.freq > 0 {
                e.freq -= 1;
                self.main.push_back((key, generation));
                continue;
            }
            let size = e.size;
            self.entries.remove(&key);
            self.main_bytes -= size;
            self.main_live -= 1;
            return Pick::Victim(key, size);
        }
        if skipped {
            Pick::Protected
        } else {
            Pick::Empty
        }
    }
}

/// What a look at one queue found.
enum Pick {
    Victim(Key, u64),
    /// Nothing evictable, but protected entries were skipped.
    Protected,
    /// Nothing there.
    Empty,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn k(i: u64) -> Key {
        let mut key = [0u8; 40];
        key[..8].copy_from_slice(&i.to_le_bytes());
        key[32..].copy_from_slice(&i.to_be_bytes());
        key
    }

    fn id(key: &Key) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&key[32..]);
        u64::from_be_bytes(b)
    }

    /// Evicts until at most `target` bytes are held; the victims' ids.
    fn evict_to(p: &mut S3Fifo, capacity: u64, target: u64, now: Instant) -> Vec<u64> {
        let mut out = Vec::new();
        while p.bytes() > target {
            let (key, _) = p.evict(capacity, now, None).unwrap();
            out.push(id(&key));
        }
        out
    }

    #[test]
    fn unread_chunks_go_first_in_arrival_order() {
        let now = Instant::now();
        let mut p = S3Fifo::default();
        for i in 0..10 {
            assert!(p.insert(k(i), 10, now));
        }
        assert!(!p.insert(k(3), 10, now), "a second insert changes nothing");
        assert_eq!(p.bytes(), 100);
        assert_eq!(evict_to(&mut p, 100, 70, now), vec![0, 1, 2]);
        assert_eq!(p.len(), 7);
    }

    #[test]
    fn the_hot_set_survives_a_one_pass_scan_larger_than_the_cache() {
        let now = Instant::now();
        let capacity = 100;
        let mut p = S3Fifo::default();
        // A hot set of 4 chunks, read many times.
        for i in 0..4 {
            p.insert(k(i), 10, now);
            for _ in 0..5 {
                p.touch(&k(i));
            }
        }
        // A scan of 1,000 cold chunks, each read once (by its own fill: no touch).
        for i in 1000..2000 {
            p.insert(k(i), 10, now);
            evict_to(&mut p, capacity, capacity, now);
            // The hot set keeps being read now and then, as a hot set is.
            if i % 20 == 0 {
                for h in 0..4 {
                    p.touch(&k(h));
                }
            }
        }
        for i in 0..4 {
            assert!(p.contains(&k(i)), "hot chunk {i} was evicted by the scan");
        }
        assert!(p.bytes() <= capacity);
    }

    #[test]
    fn plain_fifo_order_would_have_lost_the_hot_set() {
        // The same scan without any read of the hot set after it was promoted: the main queue
        // keeps it until its reads are used up, then lets it go (no chunk stays forever).
        let now = Instant::now();
        let mut p = S3Fifo::default();
        for i in 0..4 {
            p.insert(k(i), 10, now);
            p.touch(&k(i));
        }
        for i in 1000..1100 {
            p.insert(k(i), 10, now);
            evict_to(&mut p, 50, 50, now);
        }
        assert!(
            (0..4).all(|i| p.contains(&k(i))),
            "promoted chunks outlive the scan"
        );
        // Now the main queue must give: fill it with promoted chunks.
        for i in 2000..2010 {
            p.insert(k(i), 10, now);
            p.touch(&k(i));
            evict_to(&mut p, 50, 50, now);
        }
        assert!(
            (0..4).any(|i| !p.contains(&k(i))),
            "chunks no longer read are evicted in the end"
        );
    }

    #[test]
    fn a_chunk_that_comes_back_from_the_ghost_goes_to_main() {
        let now = Instant::now();
        let mut p = S3Fifo::default();
        p.insert(k(1), 10, now);
        p.insert(k(2), 10, now);
        assert_eq!(evict_to(&mut p, 20, 10, now), vec![1]);
        // k(1) comes back (filled again): straight into main, so the small queue's next
        // unread entry goes first.
        p.insert(k(1), 10, now);
        p.insert(k(3), 10, now);
        assert_eq!(evict_to(&mut p, 30, 20, now), vec![2]);
        assert!(p.contains(&k(1)));
    }

    #[test]
    fn recent_commits_are_protected_unless_the_bound_demands() {
        let t0 = Instant::now();
        let window = Duration::from_secs(5);
        let mut p = S3Fifo::default();
        p.insert(k(1), 10, t0);
        p.insert(k(2), 10, t0 + Duration::from_secs(4));
        let t = t0 + Duration::from_secs(6);
        // k(1) is 6 s old, k(2) 2 s: only k(1) may go.
        assert_eq!(p.evict(20, t, Some(window)).map(|(k, _)| id(&k)), Some(1));
        assert_eq!(p.evict(20, t, Some(window)), None);
        assert!(p.contains(&k(2)));
        // Without protection (over the bound), it goes too.
        assert_eq!(p.evict(20, t, None).map(|(k, _)| id(&k)), Some(2));
        assert_eq!(p.bytes(), 0);
    }

    #[test]
    fn protection_stops_eviction_instead_of_taking_a_hotter_chunk() {
        let t0 = Instant::now();
        let mut p = S3Fifo::default();
        // A promoted chunk in main, then a burst of fresh commits filling the small queue.
        p.insert(k(1), 10, t0);
        p.touch(&k(1));
        p.insert(k(2), 10, t0);
        assert_eq!(p.evict(100, t0, None).map(|(k, _)| id(&k)), Some(2));
        let t1 = t0 + Duration::from_secs(10);
        for i in 10..20 {
            p.insert(k(i), 10, t1);
        }
        // The small queue's turn, all of it recent: nothing goes, k(1) is not taken instead.
        assert_eq!(p.evict(100, t1, Some(Duration::from_secs(5))), None);
        assert!(p.contains(&k(1)));
        // Once they are old enough, the oldest fresh one goes.
        let t2 = t1 + Duration::from_secs(6);
        assert_eq!(
            p.evict(100, t2, Some(Duration::from_secs(5)))
                .map(|(k, _)| id(&k)),
            Some(10)
        );
    }

    #[test]
    fn restored_chunks_go_before_new_ones_unless_read() {
        let now = Instant::now();
        let mut p = S3Fifo::default();
        for i in 0..5 {
            p.restore(k(i), 10);
        }
        p.touch(&k(4));
        p.insert(k(10), 10, now);
        p.touch(&k(10));
        // Capacity 1000: the small queue is within its share, so main (restored) goes first,
        // the read one last.
        let victims = evict_to(&mut p, 1000, 20, now);
        assert_eq!(victims.len(), 4);
        assert!(
            !victims.contains(&4) && !victims.contains(&10),
            "{victims:?}"
        );
    }

    #[test]
    fn removed_entries_leave_no_trace_and_stale_slots_are_compacted() {
        let now = Instant::now();
        let mut p = S3Fifo::default();
        for i in 0..1000 {
            p.insert(k(i), 1, now);
        }
        for i in 0..999 {
            assert_eq!(p.remove(&k(i)), Some(1));
        }
        assert_eq!(p.remove(&k(0)), None);
        assert!(p.small.len() <= 2 * p.small_live + 64);
        assert_eq!(p.bytes(), 1);
        assert_eq!(p.evict(10, now, None).map(|(k, _)| id(&k)), Some(999));
        assert_eq!(p.evict(10, now, None), None);
        // Re-inserting a removed key works and counts once.
        p.insert(k(5), 7, now);
        assert_eq!(p.bytes(), 7);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn a_snapshot_restores_the_same_queues_and_counts() {
        let now = Instant::now();
        let mut p = S3Fifo::default();
        for i in 0..6 {
            p.insert(k(i), 10, now);
        }
        p.touch(&k(1));
        p.touch(&k(1));
        p.touch(&k(4));
        assert_eq!(evict_to(&mut p, 60, 50, now), vec![0]);
        // k(1) read twice, k(4) once, the rest unread.
        let snap = p.snapshot();
        let mut q = S3Fifo::default();
        for (key, main, freq) in &snap {
            assert!(q.restore_saved(*key, 10, *main, *freq));
        }
        assert_eq!(q.snapshot(), snap);
        // Both evict the same chunks in the same order.
        assert_eq!(evict_to(&mut p, 60, 0, now), evict_to(&mut q, 60, 0, now));
    }

    #[test]
    fn the_ghost_is_bounded() {
        let now = Instant::now();
        let mut p = S3Fifo::default();
        for i in 0..10_000 {
            p.insert(k(i), 1, now);
            evict_to(&mut p, 10, 10, now);
        }
        assert!(p.ghost.len() <= 64 && p.ghost_order.len() <= 64);
    }
}
