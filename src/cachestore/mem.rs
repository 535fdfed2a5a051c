//! An in-memory [`CacheStore`] for unit tests of the storage machinery: chunks in a map, a
//! count of the reads it served, and a gate that holds commits back until a test opens it.

use super::{check_commit_len, CacheStore, ChunkRead, CommitOutcome, StoreError, TierState};
use crate::chunk::ChunkId;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Semaphore;

/// Chunks kept in a map.
pub(crate) struct MemStore {
    chunks: Mutex<HashMap<ChunkId, Bytes>>,
    /// Reads asked of the store (hits and misses).
    pub(crate) reads: AtomicU64,
    /// Commits wait for a permit here; tests add permits to let commits land.
    gate: Semaphore,
}

impl MemStore {
    /// A store whose commits land at once.
    pub(crate) fn new() -> Self {
        Self::gated(Semaphore::MAX_PERMITS)
    }

    /// A store whose first `open` commits land at once and later ones wait for [`MemStore::open_gate`].
    pub(crate) fn gated(open: usize) -> Self {
        Self {
            chunks: Mutex::new(HashMap::new()),
            reads: AtomicU64::new(0),
            gate: Semaphore::new(open),
        }
    }

    /// Lets `n` more commits land.
    pub(crate) fn open_gate(&self, n: usize) {
        self.gate.add_permits(n);
    }

    /// Removes a chunk, as a lifecycle rule or a hand would.
    pub(crate) fn remove(&self, id: &ChunkId) {
        self.chunks.lock().remove(id);
    }

    /// The stored bytes of a chunk.
    pub(crate) fn get(&self, id: &ChunkId) -> Option<Bytes> {
        self.chunks.lock().get(id).cloned()
    }
}

struct MemReader(Option<Bytes>);

#[async_trait]
impl ChunkRead for MemReader {
    async fn next_piece(&mut self) -> Result<Option<Bytes>, StoreError> {
        Ok(self.0.take().filter(|b| !b.is_empty()))
    }
}

#[async_trait]
impl CacheStore for MemStore {
    async fn stat(&self, id: &ChunkId) -> Result<Option<u64>, StoreError> {
        Ok(self.get(id).map(|b| b.len() as u64))
    }

    async fn read(
        &self,
        id: &ChunkId,
        expected_len: u64,
        from: u64,
        to: u64,
    ) -> Result<Option<Box<dyn ChunkRead>>, StoreError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let Some(bytes) = self.get(id) else {
            return Ok(None);
        };
        if bytes.len() as u64 != expected_len {
            self.chunks.lock().remove(id);
            return Err(StoreError::Corrupt {
                name: id.name(),
                found: bytes.len() as u64,
                expected: expected_len,
            });
        }
        let to = to.min(expected_len) as usize;
        let from = (from as usize).min(to);
        Ok(Some(Box::new(MemReader(Some(bytes.slice(from..to))))))
    }

    async fn commit(
        &self,
        id: &ChunkId,
        pieces: Vec<Bytes>,
        len: u64,
    ) -> Result<CommitOutcome, StoreError> {
        check_commit_len(id, &pieces, len)?;
        let permit = self.gate.acquire().await;
        permit
            .map_err(|_| StoreError::Check("gate closed".into()))?
            .forget();
        let mut whole = BytesMut::with_capacity(len as usize);
        for p in &pieces {
            whole.extend_from_slice(p);
        }
        let mut chunks = self.chunks.lock();
        if chunks.contains_key(id) {
            return Ok(CommitOutcome::Lost);
        }
        chunks.insert(id.clone(), whole.freeze());
        Ok(CommitOutcome::Committed)
    }

    fn driver(&self) -> &'static str {
        "memory"
    }

    async fn purge(&self, id: &ChunkId, _shared: bool) -> Vec<TierState> {
        let removed = self.chunks.lock().remove(id).map(|b| b.len() as u64);
        vec![TierState {
            tier: "memory",
            shared: false,
            bytes: Ok(removed),
        }]
    }
}
