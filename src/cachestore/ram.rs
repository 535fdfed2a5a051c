//! The RAM tier (`cachestore.memory.max_size`): the hottest chunks kept in memory, in front
//! of every store.
//!
//! [`RamTier`] holds whole chunks, each as one contiguous `Bytes`, under the same S3-FIFO
//! policy as the bounded `fs` store (`policy::S3Fifo`): a new chunk enters the small queue and
//! is evicted from there unless it is read again, so a one-pass scan churns through a tenth of
//! the tier and never reaches the chunks read again and again; a chunk whose ghost is still
//! remembered comes back straight into the main queue.
//!
//! **The bound.** The tier never holds more than `max_size` bytes, however many clients read:
//! an admission *reserves* its chunk's bytes before it collects a single piece
//! ([`RamTier::reserve`]), evicting synchronously (under the tier's lock, a few map operations)
//! until stored plus reserved bytes fit, and is refused when they cannot (every other byte is
//! reserved by admissions in progress). The bytes gauge (`orca_cachestore_bytes{tier="memory"}`)
//! counts stored and reserved bytes, so it is an upper bound of what the tier holds.
//!
//! **Admission** (see `storage`): a read that takes a whole chunk, from the store (a hit) or
//! from a fill (its writer's own read of the flight), keeps the pieces it passes on (reference
//! counts, never copies, on the client's path); once it has them all, a background task copies
//! them into one buffer of the chunk's exact length and inserts it. The copy is the price of an
//! exact bound: the pieces a store or an origin hands over live in buffers larger than their
//! bytes (a 100 KiB piece of the `fs` store sits in a pooled 260 KiB buffer), which a tier
//! holding them would keep without counting. Copies run one at a time, off the client's path,
//! so their transient memory is at most one chunk. A reader that stops early or fails admits
//! nothing and releases its reservation.
//!
//! **Hits** never touch the store: the reader slices the stored buffer (no copy) into pieces of
//! at most [`PIECE`] bytes. A reader keeps the chunk alive until it is done, even if the chunk
//! is evicted meanwhile; the edge counts such bytes in its read-ahead budget (the hit's
//! `buffered`), so they are bounded by `limits.readahead_memory`, not by the tier.
//!
//! Purge removes a chunk from the tier and cancels its admission in progress; a reader that
//! opened the chunk in the store before the purge and asks for its admission after it is
//! refused too (the tier's purge epoch, taken before the store read). A chunk whose ETag
//! changed is another key: the old one is never read again and leaves with eviction.

use super::admit::Admit;
use super::buf::PIECE;
use super::policy::{Key, S3Fifo};
use super::{ChunkRead, StoreError};
use crate::chunk::ChunkId;
use crate::metrics::{
    CACHESTORE_BYTES, CACHESTORE_CAPACITY, CACHESTORE_CHUNKS, CACHESTORE_EVICTED_BYTES,
    CACHESTORE_EVICTIONS, TIER_MEMORY,
};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// A chunk in the tier.
struct Stored {
    bytes: Bytes,
}

struct Inner {
    policy: S3Fifo,
    chunks: HashMap<Key, Stored>,
    /// Bytes reserved by admissions in progress.
    reserved: u64,
    /// Admissions in progress, one per chunk, with their token (a purge cancels one by
    /// removing it).
    admitting: HashMap<Key, u64>,
}

/// The RAM tier. See the module documentation.
pub struct RamTier {
    capacity: u64,
    inner: Mutex<Inner>,
    next_token: AtomicU64,
    /// Purges so far (see [`RamTier::epoch`]); changed under `inner`'s lock.
    purges: AtomicU64,
    /// One copy into a stored buffer at a time (its transient memory is one chunk).
    copies: Semaphore,
}

impl RamTier {
    /// A tier holding at most `capacity` bytes (not 0).
    pub fn new(capacity: u64) -> Self {
        let tier = Self {
            capacity,
            inner: Mutex::new(Inner {
                policy: S3Fifo::default(),
                chunks: HashMap::new(),
                reserved: 0,
                admitting: HashMap::new(),
            }),
            next_token: AtomicU64::new(1),
            purges: AtomicU64::new(0),
            copies: Semaphore::new(1),
        };
        tier.publish(&tier.inner.lock());
        tier
    }

    /// The bound.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes held: stored, plus reserved by admissions in progress.
    pub fn bytes(&self) -> u64 {
        let inner = self.inner.lock();
        inner.policy.bytes() + inner.reserved
    }

    /// Chunks stored.
    pub fn chunks(&self) -> usize {
        self.inner.lock().policy.len()
    }

    fn publish(&self, inner: &Inner) {
        let held = inner.policy.bytes() + inner.reserved;
        CACHESTORE_BYTES
            .with_label_values(&[TIER_MEMORY])
            .set(i64::try_from(held).unwrap_or(i64::MAX));
        CACHESTORE_CHUNKS
            .with_label_values(&[TIER_MEMORY])
            .set(i64::try_from(inner.policy.len()).unwrap_or(i64::MAX));
        CACHESTORE_CAPACITY
            .with_label_values(&[TIER_MEMORY])
            .set(i64::try_from(self.capacity).unwrap_or(i64::MAX));
    }

    /// A reader over bytes `[from, to)` of a stored chunk of length `len`; `None` when it is
    /// not here (or is stored with another length). Counts as a read for the policy.
    pub fn get(&self, id: &ChunkId, len: u64, from: u64, to: u64) -> Option<RamReader> {
        let key = id.placement_digest();
        let bytes = {
            let mut inner = self.inner.lock();
            let stored = inner.chunks.get(&key)?;
            if stored.bytes.len() as u64 != len {
                return None;
            }
            let bytes = stored.bytes.clone();
            inner.policy.touch(&key);
            bytes
        };
        let to = to.min(len) as usize;
        let from = (from as usize).min(to);
        Some(RamReader {
            rest: bytes.slice(from..to),
        })
    }

    /// The stored length of a chunk, `None` when it is not here (`orca inspect`).
    pub fn stat(&self, id: &ChunkId) -> Option<u64> {
        let inner = self.inner.lock();
        inner
            .chunks
            .get(&id.placement_digest())
            .map(|s| s.bytes.len() as u64)
    }

    /// The tier's purge count. A reader takes it before it opens a chunk in the store and
    /// hands it to [`RamTier::reserve`]: a purge in between (which removed the chunk from the
    /// store after the reader opened it, and from the tier before the admission began) makes
    /// the admission refused, so purged bytes never enter the tier.
    pub fn epoch(&self) -> u64 {
        self.purges.load(Ordering::Acquire)
    }

    /// Removes a chunk and cancels its admission in progress (`orca purge`); its length when
    /// it was stored. Admissions asked for with an earlier [`RamTier::epoch`] are refused.
    pub fn remove(&self, id: &ChunkId) -> Option<u64> {
        let key = id.placement_digest();
        let removed = {
            let mut inner = self.inner.lock();
            self.purges.fetch_add(1, Ordering::AcqRel);
            inner.admitting.remove(&key);
            let removed = inner.chunks.remove(&key);
            inner.policy.remove(&key);
            self.publish(&inner);
            removed
        };
        // Dropped outside the lock (freeing a large buffer is not free).
        removed.map(|s| s.bytes.len() as u64)
    }

    /// Room for a chunk of `len` bytes about to be read whole: `None` when it is stored
    /// already, being admitted, larger than the tier, when a purge came after `epoch` (the
    /// tier's [`RamTier::epoch`] when the reader began), or when no room can be made (the rest
    /// is reserved by admissions in progress). Evicts synchronously to make the room.
    pub fn reserve(self: &Arc<Self>, id: &ChunkId, len: u64, epoch: u64) -> Option<Admission> {
        if len == 0 || len > self.capacity {
            return None;
        }
        let key = id.placement_digest();
        let mut victims = Vec::new();
        let token = {
            let mut inner = self.inner.lock();
            // Purges change the epoch under this lock: none can slip in after this look.
            if self.purges.load(Ordering::Acquire) != epoch
                || inner.chunks.contains_key(&key)
                || inner.admitting.contains_key(&key)
            {
                return None;
            }
            // The rest of the tier is reserved by admissions in progress: no eviction can make
            // room, so evict nothing (a refusal must not empty the tier).
            if inner.reserved + len > self.capacity {
                return None;
            }
            let now = Instant::now();
            while inner.policy.bytes() + inner.reserved + len > self.capacity {
                let Some((victim, size)) = inner.policy.evict(self.capacity, now, None) else {
                    break;
                };
                if let Some(stored) = inner.chunks.remove(&victim) {
                    victims.push(stored);
                }
                CACHESTORE_EVICTIONS.with_label_values(&[TIER_MEMORY]).inc();
                CACHESTORE_EVICTED_BYTES
                    .with_label_values(&[TIER_MEMORY])
                    .inc_by(size);
            }
            let token = if inner.policy.bytes() + inner.reserved + len <= self.capacity {
                let token = self.next_token.fetch_add(1, Ordering::Relaxed);
                inner.reserved += len;
                inner.admitting.insert(key, token);
                Some(token)
            } else {
                None
            };
            self.publish(&inner);
            token
        };
        drop(victims);
        Some(Admission {
            tier: self.clone(),
            key,
            token: token?,
            len,
        })
    }

    /// Ends an admission: its reservation becomes the stored chunk (when `bytes` is given and
    /// the admission was not cancelled), or is released.
    fn settle(&self, key: Key, token: u64, len: u64, bytes: Option<Bytes>) {
        let mut inner = self.inner.lock();
        inner.reserved -= len;
        let ours = inner.admitting.get(&key) == Some(&token);
        if ours {
            inner.admitting.remove(&key);
        }
        if let (true, Some(bytes)) = (ours, bytes) {
            // Within the bound: these bytes were counted in `reserved` until now.
            if inner.policy.insert(key, len, Instant::now()) {
                inner.chunks.insert(key, Stored { bytes });
            }
        }
        self.publish(&inner);
    }
}

/// An admission in progress: the chunk's bytes reserved in the tier until the reader has
/// passed every piece on (`admit::Admitting` keeps them). Dropped before that, it releases its
/// reservation.
pub struct Admission {
    tier: Arc<RamTier>,
    key: Key,
    token: u64,
    len: u64,
}

impl Admit for Admission {
    fn chunk_len(&self) -> u64 {
        self.len
    }

    /// Copies the pieces into one buffer and stores it, in the background.
    fn admit(self: Box<Self>, pieces: Vec<Bytes>) {
        let mut this = *self;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // Dropped: the reservation is released.
        };
        runtime.spawn(async move {
            let permit = this.tier.copies.acquire().await;
            let len = this.len as usize;
            let whole = tokio::task::spawn_blocking(move || {
                let mut whole = BytesMut::with_capacity(len);
                for p in &pieces {
                    whole.extend_from_slice(p);
                }
                whole.freeze()
            })
            .await;
            drop(permit);
            if let Ok(whole) = whole {
                let (key, token, len) = (this.key, this.token, this.len);
                // Settled here; `Drop` then finds the token gone and does nothing.
                this.token = 0;
                this.tier.settle(key, token, len, Some(whole));
            }
        });
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.token != 0 {
            self.tier.settle(self.key, self.token, self.len, None);
        }
    }
}

/// A reader of a chunk in the tier: slices of its buffer, never a copy.
pub struct RamReader {
    rest: Bytes,
}

#[async_trait]
impl ChunkRead for RamReader {
    async fn next_piece(&mut self) -> Result<Option<Bytes>, StoreError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let n = self.rest.len().min(PIECE);
        Ok(Some(self.rest.split_to(n)))
    }

    fn prefetch_hint(&self) -> Option<bool> {
        Some(false)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cachestore::admit::Admitting;
    use std::time::Duration;

    const LEN: u64 = 64 * 1024;

    fn id(i: u64) -> ChunkId {
        ChunkId::from_fields("o", "b", "k", "e", 1 << 40, i)
    }

    fn byte(i: u64, at: usize) -> u8 {
        (i as usize * 7 + at % 251) as u8
    }

    fn pieces(i: u64, len: u64, piece: usize) -> Vec<Bytes> {
        let data: Vec<u8> = (0..len as usize).map(|at| byte(i, at)).collect();
        data.chunks(piece).map(Bytes::copy_from_slice).collect()
    }

    struct Pieces(std::collections::VecDeque<Bytes>);

    #[async_trait]
    impl ChunkRead for Pieces {
        async fn next_piece(&mut self) -> Result<Option<Bytes>, StoreError> {
            Ok(self.0.pop_front())
        }
    }

    /// Reads chunk `i` whole through an admission, if the tier grants one.
    async fn admit(tier: &Arc<RamTier>, i: u64, len: u64) -> bool {
        let Some(a) = tier.reserve(&id(i), len, tier.epoch()) else {
            return false;
        };
        let mut r = Admitting::new(
            Box::new(Pieces(pieces(i, len, 10_000).into())),
            Some(Box::new(a)),
        );
        while r.next_piece().await.unwrap().is_some() {}
        true
    }

    async fn wait_stored(tier: &RamTier, i: u64) -> bool {
        for _ in 0..500 {
            if tier.stat(&id(i)).is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    async fn read(tier: &RamTier, i: u64, len: u64, from: u64, to: u64) -> Option<Vec<u8>> {
        let mut r = tier.get(&id(i), len, from, to)?;
        let mut out = Vec::new();
        while let Some(p) = r.next_piece().await.unwrap() {
            assert!(p.len() <= PIECE);
            out.extend_from_slice(&p);
        }
        Some(out)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_admitted_chunk_is_read_back_exact_whole_and_in_part() {
        let tier = Arc::new(RamTier::new(4 * LEN));
        assert!(admit(&tier, 1, LEN).await);
        assert!(wait_stored(&tier, 1).await);
        let want: Vec<u8> = (0..LEN as usize).map(|at| byte(1, at)).collect();
        assert_eq!(read(&tier, 1, LEN, 0, LEN).await.unwrap(), want);
        assert_eq!(
            read(&tier, 1, LEN, 100, 30_000).await.unwrap(),
            want[100..30_000]
        );
        assert!(
            read(&tier, 1, LEN + 1, 0, LEN).await.is_none(),
            "another length"
        );
        assert!(read(&tier, 2, LEN, 0, LEN).await.is_none());
        assert_eq!((tier.bytes(), tier.chunks()), (LEN, 1));
        // Stored already: no second admission.
        assert!(tier.reserve(&id(1), LEN, tier.epoch()).is_none());
        // Purged: gone.
        assert_eq!(tier.remove(&id(1)), Some(LEN));
        assert!(read(&tier, 1, LEN, 0, LEN).await.is_none());
        assert_eq!(tier.bytes(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_that_stops_early_admits_nothing_and_frees_its_room() {
        let tier = Arc::new(RamTier::new(2 * LEN));
        let a = tier.reserve(&id(1), LEN, tier.epoch()).unwrap();
        assert_eq!(tier.bytes(), LEN, "reserved before any byte is read");
        assert!(
            tier.reserve(&id(1), LEN, tier.epoch()).is_none(),
            "one admission per chunk"
        );
        let mut short = pieces(1, LEN, 10_000);
        short.pop();
        let mut r = Admitting::new(Box::new(Pieces(short.into())), Some(Box::new(a)));
        while r.next_piece().await.unwrap().is_some() {}
        drop(r);
        assert_eq!(tier.bytes(), 0);
        let a = tier.reserve(&id(1), LEN, tier.epoch()).unwrap();
        drop(a);
        assert_eq!((tier.bytes(), tier.chunks()), (0, 0));
        // A chunk larger than the tier is never admitted.
        assert!(tier.reserve(&id(2), 2 * LEN + 1, tier.epoch()).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_purge_cancels_an_admission_in_progress() {
        let tier = Arc::new(RamTier::new(2 * LEN));
        let a = tier.reserve(&id(1), LEN, tier.epoch()).unwrap();
        assert_eq!(tier.remove(&id(1)), None);
        let mut r = Admitting::new(
            Box::new(Pieces(pieces(1, LEN, 10_000).into())),
            Some(Box::new(a)),
        );
        while r.next_piece().await.unwrap().is_some() {}
        for _ in 0..100 {
            if tier.bytes() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!((tier.bytes(), tier.chunks()), (0, 0), "not admitted");
        assert_eq!(tier.stat(&id(1)), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_purge_after_a_reader_opened_the_store_keeps_its_bytes_out() {
        let tier = Arc::new(RamTier::new(2 * LEN));
        // A reader takes the epoch, then opens the chunk in the store; a purge removes it from
        // the store and then from the tier (not there yet); only then does the reader ask for
        // its admission.
        let epoch = tier.epoch();
        assert_eq!(tier.remove(&id(1)), None);
        assert!(tier.reserve(&id(1), LEN, epoch).is_none(), "purged bytes");
        assert_eq!(tier.bytes(), 0);
        // A purge of any chunk refuses admissions that began before it; later ones go on.
        let epoch = tier.epoch();
        assert_eq!(tier.remove(&id(7)), None);
        assert!(tier.reserve(&id(2), LEN, epoch).is_none());
        assert!(admit(&tier, 1, LEN).await);
        assert!(wait_stored(&tier, 1).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn eviction_keeps_the_bound_and_counts_what_it_frees() {
        let tier = Arc::new(RamTier::new(4 * LEN));
        let before = CACHESTORE_EVICTIONS.with_label_values(&[TIER_MEMORY]).get();
        let before_bytes = CACHESTORE_EVICTED_BYTES
            .with_label_values(&[TIER_MEMORY])
            .get();
        for i in 0..10 {
            assert!(admit(&tier, i, LEN).await);
            assert!(wait_stored(&tier, i).await);
            assert!(tier.bytes() <= 4 * LEN);
        }
        assert_eq!(tier.chunks(), 4);
        let evicted = CACHESTORE_EVICTIONS.with_label_values(&[TIER_MEMORY]).get() - before;
        assert_eq!(evicted, 6);
        assert_eq!(
            CACHESTORE_EVICTED_BYTES
                .with_label_values(&[TIER_MEMORY])
                .get()
                - before_bytes,
            6 * LEN
        );
        assert_eq!(
            CACHESTORE_BYTES.with_label_values(&[TIER_MEMORY]).get(),
            4 * LEN as i64
        );
        assert_eq!(CACHESTORE_CHUNKS.with_label_values(&[TIER_MEMORY]).get(), 4);
        // The oldest unread ones went; the last four are here.
        for i in 6..10 {
            assert!(tier.stat(&id(i)).is_some(), "chunk {i}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunk_read_again_survives_a_scan() {
        let tier = Arc::new(RamTier::new(10 * LEN));
        assert!(admit(&tier, 0, LEN).await);
        assert!(wait_stored(&tier, 0).await);
        for i in 100..140 {
            assert!(read(&tier, 0, LEN, 0, 10).await.is_some(), "at {i}");
            assert!(admit(&tier, i, LEN).await);
            assert!(wait_stored(&tier, i).await);
        }
        assert!(tier.stat(&id(0)).is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_admissions_never_take_the_tier_over_its_bound() {
        let cap = 5 * LEN + LEN / 2;
        let tier = Arc::new(RamTier::new(cap));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let (tier, stop) = (tier.clone(), stop.clone());
            tokio::spawn(async move {
                let mut max = 0;
                let mut samples = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    max = max.max(tier.bytes());
                    samples += 1;
                    tokio::task::yield_now().await;
                }
                (max, samples)
            })
        };
        let mut tasks = Vec::new();
        for t in 0..32u64 {
            let tier = tier.clone();
            tasks.push(tokio::spawn(async move {
                let mut admitted = 0;
                for j in 0..10u64 {
                    let i = t * 1000 + j;
                    // Lengths vary, so room is made for chunks of every size.
                    let len = LEN / 2 + (i % 5) * LEN / 4;
                    // Refused while the rest of the tier is reserved by others: try again.
                    for _ in 0..10_000 {
                        if admit(&tier, i, len).await {
                            admitted += 1;
                            break;
                        }
                        tokio::task::yield_now().await;
                    }
                    assert!(tier.bytes() <= cap);
                    if let Some(bytes) = read(&tier, i, len, 0, len).await {
                        let want: Vec<u8> = (0..len as usize).map(|at| byte(i, at)).collect();
                        assert_eq!(bytes, want, "chunk {i}");
                    }
                }
                admitted
            }));
        }
        let mut admitted = 0;
        for t in tasks {
            admitted += t.await.unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let (max, samples) = sampler.await.unwrap();
        assert!(samples > 0 && max <= cap, "max {max} of {cap}");
        assert_eq!(admitted, 320, "every chunk was admitted in the end");
        // Every admission settled: nothing reserved is left, and what is stored fits.
        for _ in 0..200 {
            if tier.inner.lock().reserved == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let inner = tier.inner.lock();
        assert_eq!(inner.reserved, 0);
        assert!(inner.admitting.is_empty());
        assert!(inner.policy.bytes() <= cap);
        let stored: u64 = inner.chunks.values().map(|s| s.bytes.len() as u64).sum();
        assert_eq!(stored, inner.policy.bytes());
    }
}
