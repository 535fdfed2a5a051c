//! Cache stores: where whole chunks are kept, behind one trait.
//!
//! [`CacheStore`] is what a driver implements: stat, ranged read and a no-clobber commit. The
//! `fs` driver keeps chunks in a local directory (one machine), held to a size bound by the
//! index and evictor of [`evict`] with the S3-FIFO policy of `policy`; the shared `s3` driver (a
//! fleet) implements the same trait. [`storage::ChunkStorage`] adapts any store to
//! `pingora_cache::Storage`, adds the registry of fills in flight (streaming partial writes) and
//! the presence catalog. [`tiered`] puts a bounded `fs` store (the local tier) in front of the
//! shared store.

pub(crate) mod admit;
pub(crate) mod buf;
pub(crate) mod catalog;
pub(crate) mod evict;
pub(crate) mod fs;
#[cfg(test)]
pub(crate) mod mem;
mod policy;
pub mod ram;
pub mod s3;
pub(crate) mod spool;
pub(crate) mod storage;
pub(crate) mod tiered;

use crate::chunk::ChunkId;
use async_trait::async_trait;
use bytes::Bytes;
use spool::Spool;
use std::sync::Arc;

/// What a store can fail with. Callers treat every store failure on a read as a miss: a broken
/// cache must never make Orca worse than no cache.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O operation on the store failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A stored chunk does not have the length its identity demands (it is quarantined).
    #[error("stored chunk {name} has {found} bytes, expected {expected}")]
    Corrupt {
        /// The chunk's name.
        name: String,
        /// Bytes found.
        found: u64,
        /// Bytes expected.
        expected: u64,
    },
    /// The bytes handed to a commit do not add up to the declared length.
    #[error("commit of {name}: {got} bytes handed over, {declared} declared")]
    LengthMismatch {
        /// The chunk's name.
        name: String,
        /// Bytes handed over.
        got: u64,
        /// Bytes declared.
        declared: u64,
    },
    /// The store's S3 client failed: it could not reach, sign for or read the store.
    #[error("{context}: {source}")]
    Client {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: crate::s3client::S3ClientError,
    },
    /// The store answered with a status that means neither success nor "not there".
    #[error("{context}: HTTP {status}: {body}")]
    Status {
        /// What was being done.
        context: String,
        /// The HTTP status.
        status: u16,
        /// The start of the answer's body (an S3 XML error, usually).
        body: String,
    },
    /// The store's answer does not fit the request (e.g. a ranged read answered with other
    /// bytes): nothing of it is used.
    #[error("{context}: {detail}")]
    Protocol {
        /// What was being done.
        context: String,
        /// What did not fit.
        detail: String,
    },
    /// The store is at its bound and the evictor made no room in time (`fs` store); nothing
    /// was written.
    #[error("no room for chunk {name} within the cache store's bound")]
    Full {
        /// The chunk's name.
        name: String,
    },
    /// The store refused its start-up checks.
    #[error("cache store check failed: {0}")]
    Check(String),
}

impl StoreError {
    /// Wraps an I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Checks, before anything is written, that the pieces handed to a commit add up to the
/// declared length (every driver's first step).
pub fn check_commit_len(id: &ChunkId, pieces: &[Bytes], len: u64) -> Result<(), StoreError> {
    let got: u64 = pieces.iter().map(|p| p.len() as u64).sum();
    if got == len {
        Ok(())
    } else {
        Err(StoreError::LengthMismatch {
            name: id.name(),
            got,
            declared: len,
        })
    }
}

/// The result of a successful commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// This commit made the chunk visible.
    Committed,
    /// Another writer had already committed it: the chunk is there, which is success.
    Lost,
}

/// A sequential reader over part of a stored chunk.
#[async_trait]
pub trait ChunkRead: Send + Sync {
    /// The next piece, or `None` at the end of the requested range.
    async fn next_piece(&mut self) -> Result<Option<Bytes>, StoreError>;

    /// Whether this hit is worth reading ahead of the client, when the store's answer depends
    /// on where the hit came from (a local tier in front of a shared store); `None` (the
    /// default): [`CacheStore::prefetch_hits`] says.
    fn prefetch_hint(&self) -> Option<bool> {
        None
    }
}

/// One tier's part in a chunk: what [`CacheStore::locate`] found there, or what
/// [`CacheStore::purge`] removed from it.
#[derive(Debug, Clone)]
pub struct TierState {
    /// The tier: `fs` (the `fs` store), `local` (the local tier in front of a shared store) or
    /// `s3` (the shared store).
    pub tier: &'static str,
    /// Whether every replica sees this tier (the shared `s3` store).
    pub shared: bool,
    /// The chunk's stored bytes (found, or removed), `None` when it was not there, or why the
    /// tier could not tell.
    pub bytes: Result<Option<u64>, String>,
}

/// A cache-store driver.
#[async_trait]
pub trait CacheStore: Send + Sync + 'static {
    /// The stored length of a chunk, `None` when it is not stored.
    async fn stat(&self, id: &ChunkId) -> Result<Option<u64>, StoreError>;

    /// A reader over bytes `[from, to)` of a stored chunk whose length must be `expected_len`;
    /// `None` when it is not stored. A stored chunk of another length is reported as
    /// [`StoreError::Corrupt`] and removed, so it is filled again.
    async fn read(
        &self,
        id: &ChunkId,
        expected_len: u64,
        from: u64,
        to: u64,
    ) -> Result<Option<Box<dyn ChunkRead>>, StoreError>;

    /// Stores a whole chunk atomically and without clobbering: the chunk becomes visible only
    /// complete, and when another writer won the race the outcome is [`CommitOutcome::Lost`].
    /// `pieces` must add up to `len`, which is checked before anything is written.
    async fn commit(
        &self,
        id: &ChunkId,
        pieces: Vec<Bytes>,
        len: u64,
    ) -> Result<CommitOutcome, StoreError>;

    /// A temp file for a fill of `id` to write its bytes to as they arrive (see
    /// [`spool`]), so the fill holds only a window of the chunk in memory. `None` (the
    /// default): the store has nowhere to spool, and a fill holds its whole chunk in memory
    /// until [`CacheStore::commit`]. A bounded store reserves the chunk's `len` bytes for
    /// the spool first: spools count against its bound.
    async fn spool(&self, _id: &ChunkId, _len: u64) -> Result<Option<Spool>, StoreError> {
        Ok(None)
    }

    /// Commits a chunk whose `len` bytes were all written to `spool` (one of this store's), as
    /// atomically and without clobbering as [`CacheStore::commit`]. The file's length is
    /// checked against `len` before anything becomes visible.
    async fn commit_spool(
        &self,
        id: &ChunkId,
        _spool: Arc<Spool>,
        _len: u64,
    ) -> Result<CommitOutcome, StoreError> {
        Err(StoreError::Check(format!(
            "commit of {}: the {} store keeps no spools",
            id.name(),
            self.driver()
        )))
    }

    /// The driver's name for logs (`fs`, `s3`).
    fn driver(&self) -> &'static str;

    /// Where a chunk is stored, one entry per tier (`orca inspect`). The default asks
    /// [`CacheStore::stat`] and names the tier after [`CacheStore::driver`].
    async fn locate(&self, id: &ChunkId) -> Vec<TierState> {
        vec![TierState {
            tier: self.driver(),
            shared: false,
            bytes: self.stat(id).await.map_err(|e| e.to_string()),
        }]
    }

    /// Removes a chunk from every tier (`orca purge`), one entry per tier: the bytes removed,
    /// `None` when it was not there. With `shared` false a shared tier is left alone (another
    /// replica purges it for the fleet). Removing a chunk that is not there is no error.
    async fn purge(&self, id: &ChunkId, shared: bool) -> Vec<TierState>;

    /// Whether a hit is worth reading ahead of the client, in parallel with the chunk being
    /// sent (a network store, where each stream is slow), rather than as the client takes it
    /// (a local disk, where reading ahead only holds memory).
    fn prefetch_hits(&self) -> bool {
        false
    }
}
