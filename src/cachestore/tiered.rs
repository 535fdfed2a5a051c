//! The local tier in front of a shared store (`cachestore.local` with `driver: s3`).
//!
//! [`TieredStore`] is one [`CacheStore`] over two: a bounded [`FsStore`] on the replica's own
//! disk (its metrics say `tier="local"`, its evictor runs like the `fs` store's) and the shared
//! store (the source of truth, `tier="store"`).
//!
//! - **read**: the local tier first; a hit there never touches the shared store. A local miss
//!   (or a local read that fails: a vanished or damaged file) reads the shared store, and the
//!   chunk is *admitted* to the local tier:
//!   - a read of the whole chunk is admitted as it streams through to the reader: the pieces
//!     the reader passes on are kept (reference counts, not copies) and committed locally in
//!     the background after the last one, so the reader is never delayed and no more than that
//!     chunk is held. A reader that stops early or fails admits nothing.
//!   - a read of part of a chunk (a client's range inside it) cannot give the whole chunk, so a
//!     background task reads the whole chunk from the shared store and commits it locally (one
//!     more request to the shared store, once per chunk and replica): a client that reads a hot
//!     object in ranges, as multipart downloaders do, gets it into the local tier too.
//!
//!   At most `max_admissions` admissions run at once, and one per chunk; a read that finds no
//!   slot streams without admission. That bounds the memory they hold to `max_admissions`
//!   chunks.
//! - **commit** (a fill): the shared store first, with its no-clobber rule, then the local
//!   tier. The shared store's outcome is the commit's outcome; a local failure is logged.
//! - **prefetch**: follows the tier that answered ([`ChunkRead::prefetch_hint`]): a local hit
//!   is read as the client takes it, a shared hit ahead of it.
//!
//! A chunk gone from either tier (evicted, deleted by a lifecycle rule or by hand) is a miss of
//! that tier: gone from both, it is filled again.

use super::admit::{Admit, Admitting};
use super::fs::FsStore;
use super::spool::Spool;
use super::storage::COMMIT_TIMEOUT;
use super::{check_commit_len, CacheStore, ChunkRead, CommitOutcome, StoreError, TierState};
use crate::chunk::ChunkId;
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A local tier in front of a shared store.
pub struct TieredStore {
    local: Arc<dyn CacheStore>,
    shared: Arc<dyn CacheStore>,
    /// Admissions collecting pieces or committing them now.
    admissions: Arc<Semaphore>,
    /// The chunks those admissions are for (one admission per chunk at a time).
    admitting: Arc<Mutex<HashSet<ChunkId>>>,
}

impl TieredStore {
    /// The bounded `local` store (its evictor is run by the caller) in front of `shared`, with
    /// at most `max_admissions` shared hits being admitted to the local tier at once.
    pub fn new(local: FsStore, shared: Arc<dyn CacheStore>, max_admissions: usize) -> Self {
        Self::over(Arc::new(local), shared, max_admissions)
    }

    fn over(
        local: Arc<dyn CacheStore>,
        shared: Arc<dyn CacheStore>,
        max_admissions: usize,
    ) -> Self {
        Self {
            local,
            shared,
            admissions: Arc::new(Semaphore::new(max_admissions.max(1))),
            admitting: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// A slot to admit `id`: `None` when every slot is taken or `id` is being admitted.
    fn slot(&self, id: &ChunkId) -> Option<Slot> {
        let permit = self.admissions.clone().try_acquire_owned().ok()?;
        if !self.admitting.lock().insert(id.clone()) {
            return None;
        }
        Some(Slot {
            id: id.clone(),
            admitting: self.admitting.clone(),
            _permit: permit,
        })
    }

    /// Reads the whole chunk of `slot` from the shared store and commits it locally, in the
    /// background.
    fn promote(&self, slot: Slot, len: u64) {
        let (local, shared) = (self.local.clone(), self.shared.clone());
        tokio::spawn(async move {
            let id = &slot.id;
            // Bounded as a fill's commit is: a stalled store must not keep the slot.
            let result = tokio::time::timeout(COMMIT_TIMEOUT, async {
                let Some(mut reader) = shared.read(id, len, 0, len).await? else {
                    return Ok(None);
                };
                let (mut pieces, mut got) = (Vec::new(), 0u64);
                while let Some(piece) = reader.next_piece().await? {
                    got += piece.len() as u64;
                    if got > len {
                        break;
                    }
                    pieces.push(piece);
                }
                // A length that does not add up is refused by the commit.
                local.commit(id, pieces, len).await.map(Some)
            })
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::io(
                    "promotion to the local tier",
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
                ))
            });
            match result {
                Ok(outcome) => tracing::trace!(chunk = %id, ?outcome, "promoted to the local tier"),
                Err(e) => tracing::warn!(chunk = %id, error = %e, "local tier promotion failed"),
            }
            drop(slot);
        });
    }
}

/// One admission's share of the bound: a permit, and its chunk in the set being admitted.
struct Slot {
    id: ChunkId,
    admitting: Arc<Mutex<HashSet<ChunkId>>>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admitting.lock().remove(&self.id);
    }
}

#[async_trait]
impl CacheStore for TieredStore {
    async fn stat(&self, id: &ChunkId) -> Result<Option<u64>, StoreError> {
        match self.local.stat(id).await {
            Ok(Some(len)) => return Ok(Some(len)),
            Ok(None) => {}
            Err(e) => tracing::debug!(chunk = %id, error = %e, "local tier stat failed"),
        }
        self.shared.stat(id).await
    }

    async fn read(
        &self,
        id: &ChunkId,
        expected_len: u64,
        from: u64,
        to: u64,
    ) -> Result<Option<Box<dyn ChunkRead>>, StoreError> {
        match self.local.read(id, expected_len, from, to).await {
            Ok(Some(inner)) => {
                return Ok(Some(Box::new(
                    Admitting::new(inner, None).with_prefetch(self.local.prefetch_hits()),
                )))
            }
            Ok(None) => {}
            // A damaged local copy is removed by the local store; the shared one is read.
            Err(e) => {
                tracing::warn!(chunk = %id, error = %e, "local tier read failed; reading the shared store");
            }
        }
        let Some(inner) = self.shared.read(id, expected_len, from, to).await? else {
            return Ok(None);
        };
        let slot = self.slot(id);
        if slot.is_none() {
            tracing::debug!(chunk = %id, "no local tier admission slot free, or one in progress");
        }
        let whole = from == 0 && to >= expected_len;
        let admission = match slot {
            Some(slot) if whole => Some(Box::new(Admission {
                local: self.local.clone(),
                len: expected_len,
                slot,
            }) as Box<dyn Admit>),
            Some(slot) => {
                self.promote(slot, expected_len);
                None
            }
            None => None,
        };
        Ok(Some(Box::new(
            Admitting::new(inner, admission).with_prefetch(self.shared.prefetch_hits()),
        )))
    }

    async fn commit(
        &self,
        id: &ChunkId,
        pieces: Vec<Bytes>,
        len: u64,
    ) -> Result<CommitOutcome, StoreError> {
        check_commit_len(id, &pieces, len)?;
        // The shared store is the source of truth: it is written first. The local copy is
        // written whatever it said: the bytes are whole, and this replica's reads gain from it
        // even while the shared store refuses commits.
        let shared = self.shared.commit(id, pieces.clone(), len).await;
        if let Err(e) = self.local.commit(id, pieces, len).await {
            tracing::warn!(chunk = %id, error = %e, "local tier commit failed");
        }
        shared
    }

    /// Fills spool to the local tier's temp directory: the same file is PUT to the shared
    /// store and then linked into the local tier.
    async fn spool(&self, id: &ChunkId, len: u64) -> Result<Option<Spool>, StoreError> {
        self.local.spool(id, len).await
    }

    async fn commit_spool(
        &self,
        id: &ChunkId,
        spool: Arc<Spool>,
        len: u64,
    ) -> Result<CommitOutcome, StoreError> {
        // As `commit`: the shared store first, the local copy whatever it said.
        let shared = self.shared.commit_spool(id, spool.clone(), len).await;
        if let Err(e) = self.local.commit_spool(id, spool, len).await {
            tracing::warn!(chunk = %id, error = %e, "local tier commit failed");
        }
        shared
    }

    fn driver(&self) -> &'static str {
        "s3+local"
    }

    async fn locate(&self, id: &ChunkId) -> Vec<TierState> {
        let mut tiers = self.local.locate(id).await;
        tiers.extend(self.shared.locate(id).await);
        tiers
    }

    async fn purge(&self, id: &ChunkId, shared: bool) -> Vec<TierState> {
        // The shared copy first: a read between the two finds the local copy, never promotes
        // the shared one back.
        let mut tiers = if shared {
            self.shared.purge(id, true).await
        } else {
            Vec::new()
        };
        tiers.splice(0..0, self.local.purge(id, shared).await);
        tiers
    }

    fn prefetch_hits(&self) -> bool {
        self.shared.prefetch_hits()
    }
}

/// A whole shared hit being admitted to the local tier (`admit::Admitting` keeps its pieces).
struct Admission {
    local: Arc<dyn CacheStore>,
    len: u64,
    /// Held until the local commit is done (dropped with the admission when it is skipped).
    slot: Slot,
}

impl Admit for Admission {
    fn chunk_len(&self) -> u64 {
        self.len
    }

    /// Commits the collected chunk to the local tier in the background.
    fn admit(self: Box<Self>, pieces: Vec<Bytes>) {
        let Admission { local, len, slot } = *self;
        tokio::spawn(async move {
            let id = &slot.id;
            match local.commit(id, pieces, len).await {
                Ok(outcome) => tracing::trace!(chunk = %id, ?outcome, "admitted to the local tier"),
                Err(e) => tracing::warn!(chunk = %id, error = %e, "local tier admission failed"),
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cachestore::mem::MemStore;
    use crate::config::{FsLimits, SizeOrPercent};
    use crate::metrics::TIER_LOCAL;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    const LEN: u64 = 64 * 1024;

    fn id(i: u64) -> ChunkId {
        ChunkId::from_fields("o", "b", "k", "e", LEN, i)
    }

    fn bytes(i: u64) -> Bytes {
        Bytes::from(vec![i as u8; LEN as usize])
    }

    struct Tiers {
        store: TieredStore,
        local: Arc<FsStore>,
        shared: Arc<MemStore>,
        _dir: tempfile::TempDir,
    }

    fn tiers(max_admissions: usize) -> Tiers {
        let dir = tempfile::tempdir().unwrap();
        let limits = FsLimits {
            max_size: Some(1 << 30),
            min_free: SizeOrPercent::Size(0),
            low_watermark: SizeOrPercent::Percent(90),
        };
        let local = Arc::new(FsStore::open_as(dir.path(), &limits, TIER_LOCAL).unwrap());
        let shared = Arc::new(MemStore::new());
        let store = TieredStore::over(local.clone(), shared.clone(), max_admissions);
        Tiers {
            store,
            local,
            shared,
            _dir: dir,
        }
    }

    async fn drain(mut r: Box<dyn ChunkRead>) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(p) = r.next_piece().await.unwrap() {
            out.extend_from_slice(&p);
        }
        out
    }

    /// Waits (bounded) until the local tier holds `id`.
    async fn wait_local(local: &FsStore, id: &ChunkId) -> bool {
        for _ in 0..500 {
            if local.stat(id).await.unwrap().is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shared_hit_is_admitted_and_then_read_locally_only() {
        let t = tiers(4);
        t.shared.commit(&id(1), vec![bytes(1)], LEN).await.unwrap();
        let r = t.store.read(&id(1), LEN, 0, LEN).await.unwrap().unwrap();
        assert_eq!(r.prefetch_hint(), Some(t.shared.prefetch_hits()));
        assert_eq!(drain(r).await, bytes(1));
        assert_eq!(t.shared.reads.load(Ordering::Relaxed), 1);
        assert!(wait_local(&t.local, &id(1)).await, "admitted locally");
        for _ in 0..3 {
            let r = t.store.read(&id(1), LEN, 0, LEN).await.unwrap().unwrap();
            assert_eq!(
                r.prefetch_hint(),
                Some(false),
                "a local hit is read on demand"
            );
            assert_eq!(drain(r).await, bytes(1));
        }
        // A ranged local hit too.
        let r = t.store.read(&id(1), LEN, 10, 20).await.unwrap().unwrap();
        assert_eq!(drain(r).await, vec![1u8; 10]);
        assert_eq!(
            t.shared.reads.load(Ordering::Relaxed),
            1,
            "local hits never ask the shared store"
        );
    }

    /// The in-memory store, saying (as the `s3` store does) that its hits are worth reading
    /// ahead.
    struct Networked(Arc<MemStore>);

    #[async_trait]
    impl CacheStore for Networked {
        async fn stat(&self, id: &ChunkId) -> Result<Option<u64>, StoreError> {
            self.0.stat(id).await
        }
        async fn read(
            &self,
            id: &ChunkId,
            expected_len: u64,
            from: u64,
            to: u64,
        ) -> Result<Option<Box<dyn ChunkRead>>, StoreError> {
            self.0.read(id, expected_len, from, to).await
        }
        async fn commit(
            &self,
            id: &ChunkId,
            pieces: Vec<Bytes>,
            len: u64,
        ) -> Result<CommitOutcome, StoreError> {
            self.0.commit(id, pieces, len).await
        }
        fn driver(&self) -> &'static str {
            "networked"
        }
        async fn purge(&self, id: &ChunkId, shared: bool) -> Vec<TierState> {
            self.0.purge(id, shared).await
        }
        fn prefetch_hits(&self) -> bool {
            true
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_storage_reads_ahead_shared_hits_and_reads_local_hits_on_demand() {
        use crate::cachestore::storage::ChunkStorage;
        use crate::chunk::{Chunk, ObjectVersion};
        let t = tiers(4);
        let store = Arc::new(TieredStore::over(
            t.local.clone(),
            Arc::new(Networked(t.shared.clone())),
            4,
        ));
        let storage = ChunkStorage::new(store, 64, 4, Duration::from_secs(30));
        let version = ObjectVersion {
            origin_id: "o".into(),
            bucket: "b".into(),
            key: "k".into(),
            etag: "e".into(),
            size: LEN,
        };
        let chunk = Chunk::new(Arc::new(version), LEN, 0).unwrap();
        t.shared
            .commit(&chunk.id, vec![bytes(7)], LEN)
            .await
            .unwrap();
        let hit = storage.open(&chunk, 0, LEN).await.unwrap();
        assert!(!hit.on_demand, "a shared hit is read ahead");
        assert_eq!(drain(hit.reader).await, bytes(7));
        assert!(wait_local(&t.local, &chunk.id).await);
        let hit = storage.open(&chunk, 0, LEN).await.unwrap();
        assert!(hit.on_demand, "a local hit is read as the client takes it");
        assert_eq!(drain(hit.reader).await, bytes(7));
        assert_eq!(t.shared.reads.load(Ordering::Relaxed), 1);
    }

    /// Waits (bounded) until `n` admission slots are free.
    async fn wait_free_slots(store: &TieredStore, n: usize) -> bool {
        for _ in 0..500 {
            if store.admissions.available_permits() == n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn early_stopped_and_unslotted_reads_admit_nothing() {
        let t = tiers(1);
        for i in 1..=2 {
            t.shared.commit(&id(i), vec![bytes(i)], LEN).await.unwrap();
        }
        // Stopped before its end.
        let r = t.store.read(&id(1), LEN, 0, LEN).await.unwrap().unwrap();
        drop(r);
        assert_eq!(
            t.store.admissions.available_permits(),
            1,
            "no admission left"
        );
        assert!(t.store.admitting.lock().is_empty());
        assert_eq!(
            t.local.stat(&id(1)).await.unwrap(),
            None,
            "nothing admitted"
        );
        // While one admission holds the only slot, reads of another chunk and of the same one
        // stream without one.
        let held = t.store.read(&id(1), LEN, 0, LEN).await.unwrap().unwrap();
        for i in [2, 1] {
            let r = t.store.read(&id(i), LEN, 0, LEN).await.unwrap().unwrap();
            assert_eq!(drain(r).await, bytes(i));
            let r = t.store.read(&id(i), LEN, 0, 10).await.unwrap().unwrap();
            assert_eq!(drain(r).await, vec![i as u8; 10]);
            // Only `held`'s admission holds a slot: none other is collecting or committing.
            assert_eq!(t.store.admissions.available_permits(), 0);
        }
        assert_eq!(
            t.local.stat(&id(1)).await.unwrap(),
            None,
            "nothing admitted"
        );
        // The slot holder, read to its end, admits; its slot comes back after the commit.
        assert_eq!(drain(held).await, bytes(1));
        assert!(wait_local(&t.local, &id(1)).await);
        assert!(wait_free_slots(&t.store, 1).await, "the slot was released");
        assert!(t.store.admitting.lock().is_empty());
        assert_eq!(
            t.local.stat(&id(2)).await.unwrap(),
            None,
            "chunk 2 never had a slot"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partial_shared_hit_promotes_the_whole_chunk() {
        let t = tiers(4);
        t.shared.commit(&id(1), vec![bytes(1)], LEN).await.unwrap();
        let r = t.store.read(&id(1), LEN, 100, 200).await.unwrap().unwrap();
        assert_eq!(drain(r).await, vec![1u8; 100]);
        assert!(wait_local(&t.local, &id(1)).await, "promoted");
        assert!(wait_free_slots(&t.store, 4).await);
        // The partial read and the promotion's whole read.
        assert_eq!(t.shared.reads.load(Ordering::Relaxed), 2);
        let r = t.local.read(&id(1), LEN, 0, LEN).await.unwrap().unwrap();
        assert_eq!(drain(r).await, bytes(1), "the whole chunk, exact");
        let r = t.store.read(&id(1), LEN, 100, 200).await.unwrap().unwrap();
        assert_eq!(r.prefetch_hint(), Some(false));
        assert_eq!(drain(r).await, vec![1u8; 100]);
        assert_eq!(
            t.shared.reads.load(Ordering::Relaxed),
            2,
            "then a local hit"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_writes_both_tiers_and_a_vanished_chunk_is_a_miss() {
        let t = tiers(4);
        let out = t.store.commit(&id(2), vec![bytes(2)], LEN).await.unwrap();
        assert_eq!(out, CommitOutcome::Committed);
        assert_eq!(t.shared.get(&id(2)), Some(bytes(2)));
        assert_eq!(t.local.stat(&id(2)).await.unwrap(), Some(LEN));
        // A second commit loses in the shared store: the outcome is the shared store's.
        let again = t.store.commit(&id(2), vec![bytes(2)], LEN).await.unwrap();
        assert_eq!(again, CommitOutcome::Lost);
        // Gone from the local tier: read from the shared store, and admitted again.
        std::fs::remove_file(t.local.chunk_path(&id(2))).unwrap();
        let r = t.store.read(&id(2), LEN, 0, LEN).await.unwrap().unwrap();
        assert_eq!(drain(r).await, bytes(2));
        assert_eq!(t.shared.reads.load(Ordering::Relaxed), 1);
        assert!(wait_local(&t.local, &id(2)).await);
        // Gone from both: a miss, not an error.
        std::fs::remove_file(t.local.chunk_path(&id(2))).unwrap();
        t.shared.remove(&id(2));
        assert!(t.store.read(&id(2), LEN, 0, LEN).await.unwrap().is_none());
        assert_eq!(t.store.stat(&id(2)).await.unwrap(), None);
        // A length that does not add up is refused before either tier is written.
        assert!(t
            .store
            .commit(&id(3), vec![bytes(3).slice(..10)], LEN)
            .await
            .is_err());
        assert!(t.shared.get(&id(3)).is_none());
        assert_eq!(t.local.stat(&id(3)).await.unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_local_copy_is_replaced_from_the_shared_store() {
        let t = tiers(4);
        t.store.commit(&id(4), vec![bytes(4)], LEN).await.unwrap();
        // Truncated behind Orca's back.
        std::fs::write(t.local.chunk_path(&id(4)), b"short").unwrap();
        let r = t.store.read(&id(4), LEN, 0, LEN).await.unwrap().unwrap();
        assert_eq!(drain(r).await, bytes(4));
        assert!(wait_local(&t.local, &id(4)).await);
        let r = t.local.read(&id(4), LEN, 0, LEN).await.unwrap().unwrap();
        assert_eq!(drain(r).await, bytes(4));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn purge_removes_the_local_copy_and_the_shared_one_only_when_asked() {
        let t = tiers(4);
        t.store.commit(&id(5), vec![bytes(5)], LEN).await.unwrap();
        let found = |tiers: Vec<TierState>| -> Vec<(&'static str, Option<u64>)> {
            tiers
                .into_iter()
                .map(|t| (t.tier, t.bytes.unwrap()))
                .collect()
        };
        assert_eq!(
            found(t.store.locate(&id(5)).await),
            [("local", Some(LEN)), ("memory", Some(LEN))]
        );
        // A peer's purge leaves the shared store to the replica asked.
        assert_eq!(
            found(t.store.purge(&id(5), false).await),
            [("local", Some(LEN))]
        );
        assert_eq!(
            found(t.store.locate(&id(5)).await),
            [("local", None), ("memory", Some(LEN))]
        );
        assert_eq!(
            found(t.store.purge(&id(5), true).await),
            [("local", None), ("memory", Some(LEN))]
        );
        assert_eq!(
            found(t.store.purge(&id(5), true).await),
            [("local", None), ("memory", None)]
        );
        assert!(t.store.read(&id(5), LEN, 0, LEN).await.unwrap().is_none());
    }
}
