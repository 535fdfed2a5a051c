//! The `pingora_cache::Storage` adaptor over a [`CacheStore`], with the registry of fills in
//! flight.
//!
//! A fill registers a [`Flight`] when pingora-cache asks for a miss handler. Every byte the
//! origin sends is appended to it (as the same `Bytes`, never copied), and readers (the cache
//! lock's waiters, and the edge's in-process reads) stream from it as the bytes arrive:
//! streaming partial writes. When the last byte is in and the length equals the chunk's
//! expected length, the flight is marked complete and committed to the store in the
//! background (commit after serve); until that commit lands the flight keeps serving the chunk.
//! A writer that goes away without finishing fails its flight: readers get an error, never a
//! clean end of stream, and the flight leaves the registry at once so the next caller starts a
//! fresh fill.

use super::{CacheStore, ChunkRead, CommitOutcome, StoreError};
use crate::catalog::Catalog;
use crate::chunk::ChunkId;
use crate::metrics::{ChunkSource, COMMITS};
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use pingora_cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeType,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, CacheMeta, PurgeOutcome, PurgeTarget, Storage};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// A commit that has not landed after this long is abandoned (counted as an error): the
/// chunk stays a miss, and its bytes leave memory.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(120);

/// What the fill service attaches to a chunk's cache key (`CacheKey::extensions`) so the
/// storage knows the chunk behind the key and its exact length.
#[derive(Debug, Clone)]
pub struct ChunkKeyInfo {
    /// The chunk.
    pub id: ChunkId,
    /// Its exact length (`ChunkId::expected_len` of the object size).
    pub expected_len: u64,
}

/// Builds the pingora cache key of a chunk: its name, with [`ChunkKeyInfo`] attached.
pub fn cache_key(id: &ChunkId, expected_len: u64) -> CacheKey {
    let mut key = CacheKey::new(id.name(), "");
    key.extensions.insert(ChunkKeyInfo {
        id: id.clone(),
        expected_len,
    });
    key
}

#[derive(Default)]
struct FlightState {
    pieces: Vec<Bytes>,
    len: u64,
    /// `None` while writing; `Some(Ok)` once whole and checked; `Some(Err)` when it failed.
    done: Option<std::result::Result<(), String>>,
}

/// A chunk being filled, readable while it is written.
pub struct Flight {
    name: String,
    id: ChunkId,
    expected_len: u64,
    tag: u64,
    state: Mutex<FlightState>,
    changed: watch::Sender<()>,
    /// One of the registry's permits, held while the flight is in the registry: it bounds the
    /// chunks held in memory by fills and commits to `limits.origin_concurrency`.
    permit: Mutex<Option<OwnedSemaphorePermit>>,
}

impl Flight {
    fn append(&self, data: Bytes) -> std::result::Result<(), String> {
        {
            let mut s = self.state.lock();
            let new_len = s.len + data.len() as u64;
            if new_len > self.expected_len {
                return Err(format!(
                    "chunk {} longer than its expected {} bytes",
                    self.name, self.expected_len
                ));
            }
            s.len = new_len;
            if !data.is_empty() {
                s.pieces.push(data);
            }
        }
        self.changed.send_replace(());
        Ok(())
    }

    fn finish(&self, result: std::result::Result<(), String>) {
        {
            let mut s = self.state.lock();
            if s.done.is_none() {
                s.done = Some(result);
            }
        }
        self.changed.send_replace(());
    }

    fn pieces(&self) -> (Vec<Bytes>, u64) {
        let s = self.state.lock();
        (s.pieces.clone(), s.len)
    }
}

/// Reads bytes `[from, to)` of a flight as they arrive.
pub struct FlightReader {
    flight: Arc<Flight>,
    rx: watch::Receiver<()>,
    next_piece: usize,
    /// Offset in the chunk of the start of `next_piece`.
    piece_offset: u64,
    from: u64,
    to: u64,
}

impl FlightReader {
    fn new(flight: Arc<Flight>, from: u64, to: u64) -> Self {
        let rx = flight.changed.subscribe();
        let to = to.min(flight.expected_len);
        Self {
            flight,
            rx,
            next_piece: 0,
            piece_offset: 0,
            from: from.min(to),
            to,
        }
    }
}

#[async_trait]
impl ChunkRead for FlightReader {
    async fn next_piece(&mut self) -> std::result::Result<Option<Bytes>, StoreError> {
        loop {
            if self.piece_offset >= self.to {
                return Ok(None);
            }
            self.rx.borrow_and_update();
            let next = {
                let s = self.flight.state.lock();
                match s.pieces.get(self.next_piece) {
                    Some(p) => Ok(Some(p.clone())),
                    None => match &s.done {
                        None => Ok(None),
                        Some(Ok(())) => Err(None),
                        Some(Err(e)) => Err(Some(e.clone())),
                    },
                }
            };
            match next {
                Ok(Some(piece)) => {
                    self.next_piece += 1;
                    let start = self.piece_offset;
                    let end = start + piece.len() as u64;
                    self.piece_offset = end;
                    if end <= self.from {
                        continue;
                    }
                    let lo = self.from.saturating_sub(start) as usize;
                    let hi = (self.to.min(end) - start) as usize;
                    return Ok(Some(piece.slice(lo..hi)));
                }
                Ok(None) => {
                    if self.rx.changed().await.is_err() {
                        return Err(StoreError::io(
                            format!("fill of {}", self.flight.name),
                            std::io::Error::other("writer vanished"),
                        ));
                    }
                }
                // Complete, yet short of `to`: cannot happen for a checked flight; be loud.
                Err(None) => {
                    return Err(StoreError::io(
                        format!("fill of {}", self.flight.name),
                        std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "flight ended early",
                        ),
                    ))
                }
                Err(Some(e)) => {
                    return Err(StoreError::io(
                        format!("fill of {}", self.flight.name),
                        std::io::Error::other(e),
                    ))
                }
            }
        }
    }
}

/// The pingora-cache storage of chunks: in-flight registry, catalog and store.
pub struct ChunkStorage {
    store: Arc<dyn CacheStore>,
    catalog: Catalog,
    flights: Mutex<HashMap<String, Arc<Flight>>>,
    /// Bounds the flights in the registry, committing ones included.
    flight_permits: Arc<Semaphore>,
    next_tag: AtomicU64,
}

/// A reader of a chunk, and where its bytes come from.
pub struct ChunkHit {
    /// `Memory` for a fill in flight, `CacheStore` for a stored chunk.
    pub source: ChunkSource,
    /// The reader.
    pub reader: Box<dyn ChunkRead>,
    /// Read as the client takes the bytes, not ahead of it (bytes already in memory, or a
    /// store that does not gain from reading ahead: [`CacheStore::prefetch_hits`]).
    pub on_demand: bool,
}

impl ChunkStorage {
    /// Wraps a store, with at most `max_flights` chunks filling or committing at once. Leaked
    /// by the caller once, at start-up: pingora wants `&'static`.
    pub fn new(store: Arc<dyn CacheStore>, catalog_entries: usize, max_flights: usize) -> Self {
        Self {
            store,
            catalog: Catalog::new(catalog_entries),
            flights: Mutex::new(HashMap::new()),
            flight_permits: Arc::new(Semaphore::new(max_flights.max(1))),
            next_tag: AtomicU64::new(1),
        }
    }

    /// Opens bytes `[from, to)` of a chunk: from a fill in flight if there is one, else from the
    /// store. `Ok(None)` is a miss. A store failure is logged and reported as a miss.
    pub async fn open(
        &self,
        id: &ChunkId,
        expected_len: u64,
        from: u64,
        to: u64,
    ) -> Option<ChunkHit> {
        let name = id.name();
        let flight = self.flights.lock().get(&name).cloned();
        if let Some(flight) = flight {
            let failed = matches!(flight.state.lock().done, Some(Err(_)));
            if !failed {
                return Some(ChunkHit {
                    source: ChunkSource::Memory,
                    reader: Box::new(FlightReader::new(flight, from, to)),
                    on_demand: true,
                });
            }
        }
        match self.store.read(id, expected_len, from, to).await {
            Ok(Some(reader)) => {
                self.catalog.record(name);
                Some(ChunkHit {
                    source: ChunkSource::CacheStore,
                    reader,
                    on_demand: !self.store.prefetch_hits(),
                })
            }
            Ok(None) => {
                self.catalog.forget(&name);
                None
            }
            Err(e) => {
                self.catalog.forget(&name);
                tracing::warn!(chunk = %name, error = %e, "cache store read failed; treating as a miss");
                None
            }
        }
    }

    fn key_info(key: &CacheKey) -> Result<ChunkKeyInfo> {
        key.extensions
            .get::<ChunkKeyInfo>()
            .cloned()
            .ok_or_else(|| {
                Error::explain(
                    ErrorType::InternalError,
                    "chunk cache key without ChunkKeyInfo",
                )
            })
    }

    fn remove_flight(&self, flight: &Arc<Flight>) {
        {
            let mut flights = self.flights.lock();
            if flights
                .get(&flight.name)
                .is_some_and(|f| Arc::ptr_eq(f, flight))
            {
                flights.remove(&flight.name);
            }
        }
        // Out of the registry: its slot is free for the next fill.
        flight.permit.lock().take();
    }

    fn commit_in_background(&'static self, flight: Arc<Flight>) {
        tokio::spawn(async move {
            let (pieces, len) = flight.pieces();
            let result = match tokio::time::timeout(
                COMMIT_TIMEOUT,
                self.store.commit(&flight.id, pieces, len),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(StoreError::io(
                    format!("commit of {}", flight.name),
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
                )),
            };
            let label = match &result {
                Ok(CommitOutcome::Committed) => "committed",
                Ok(CommitOutcome::Lost) => "lost",
                Err(_) => "error",
            };
            COMMITS.with_label_values(&[label]).inc();
            tracing::debug!(chunk = %flight.name, result = label, "chunk commit");
            match result {
                Ok(_) => self.catalog.record(flight.name.clone()),
                Err(e) => {
                    tracing::warn!(chunk = %flight.name, error = %e, "commit to the cache store failed")
                }
            }
            // Only now may readers go to the store: the registry served the chunk until here.
            self.remove_flight(&flight);
        });
    }
}

/// The header a stored chunk is served with by the fill service.
pub fn chunk_meta(len: u64) -> Result<CacheMeta> {
    let mut header = ResponseHeader::build(200, Some(2))?;
    header.insert_header("content-length", len.to_string())?;
    header.insert_header("content-type", "application/octet-stream")?;
    let now = SystemTime::now();
    // Chunks never go stale: the ETag is part of the key.
    let forever = now + Duration::from_secs(10 * 365 * 24 * 3600);
    Ok(CacheMeta::new(forever, now, 0, 0, header))
}

/// A hit handler over a [`ChunkHit`].
pub struct ChunkHitHandler {
    /// Where the bytes come from (the fill service reports it to its caller).
    pub source: ChunkSource,
    reader: Box<dyn ChunkRead>,
}

#[async_trait]
impl HandleHit for ChunkHitHandler {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        self.reader
            .next_piece()
            .await
            .map_err(|e| Error::because(ErrorType::ReadError, "reading cached chunk", e))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// The miss handler: appends the origin's bytes to the flight.
struct ChunkMissHandler {
    storage: &'static ChunkStorage,
    flight: Arc<Flight>,
    tag: [u8; 8],
    finished: bool,
}

#[async_trait]
impl HandleMiss for ChunkMissHandler {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.flight
            .append(data)
            .map_err(|m| Error::explain(ErrorType::InternalError, m))
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        self.finished = true;
        let (_, len) = self.flight.pieces();
        if len != self.flight.expected_len {
            let msg = format!(
                "chunk {} ended at {len} of {} bytes",
                self.flight.name, self.flight.expected_len
            );
            self.flight.finish(Err(msg.clone()));
            self.storage.remove_flight(&self.flight);
            return Error::e_explain(ErrorType::InternalError, msg);
        }
        self.flight.finish(Ok(()));
        tracing::debug!(chunk = %self.flight.name, len, "fill complete; committing in the background");
        self.storage.commit_in_background(self.flight.clone());
        Ok(MissFinishType::Created(len as usize))
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        Some(&self.tag)
    }
}

impl Drop for ChunkMissHandler {
    fn drop(&mut self) {
        if !self.finished {
            tracing::debug!(chunk = %self.flight.name, "fill abandoned before its end");
            self.flight.finish(Err("the fill was abandoned".into()));
            self.storage.remove_flight(&self.flight);
        }
    }
}

#[async_trait]
impl Storage for ChunkStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let info = Self::key_info(key)?;
        let Some(hit) = self
            .open(&info.id, info.expected_len, 0, info.expected_len)
            .await
        else {
            return Ok(None);
        };
        let handler = ChunkHitHandler {
            source: hit.source,
            reader: hit.reader,
        };
        Ok(Some((chunk_meta(info.expected_len)?, Box::new(handler))))
    }

    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        streaming_write_tag: Option<&[u8]>,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let info = Self::key_info(key)?;
        let tag = streaming_write_tag
            .and_then(|t| <[u8; 8]>::try_from(t).ok())
            .map(u64::from_be_bytes);
        let flight = self.flights.lock().get(&info.id.name()).cloned();
        match (flight, tag) {
            (Some(f), Some(tag)) if f.tag == tag => {
                let handler = ChunkHitHandler {
                    // The writer's own downstream: the bytes are this request's origin fill.
                    source: ChunkSource::Origin,
                    reader: Box::new(FlightReader::new(f, 0, info.expected_len)),
                };
                Ok(Some((chunk_meta(info.expected_len)?, Box::new(handler))))
            }
            _ => self.lookup(key, trace).await,
        }
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        _meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let info = Self::key_info(key)?;
        // Waits while `max_flights` chunks are filling or committing: memory stays bounded
        // however fast the origin is and however slow the store.
        let permit = self
            .flight_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::explain(ErrorType::InternalError, "flight permits closed"))?;
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let (changed, _) = watch::channel(());
        let flight = Arc::new(Flight {
            name: info.id.name(),
            id: info.id,
            expected_len: info.expected_len,
            tag,
            state: Mutex::new(FlightState::default()),
            changed,
            permit: Mutex::new(Some(permit)),
        });
        tracing::debug!(chunk = %flight.name, tag, "fill registered");
        // A newer writer replaces an older one (e.g. after a lock timeout); the older flight's
        // readers keep their Arc and finish or fail with it.
        self.flights
            .lock()
            .insert(flight.name.clone(), flight.clone());
        Ok(Box::new(ChunkMissHandler {
            storage: self,
            flight,
            tag: tag.to_be_bytes(),
            finished: false,
        }))
    }

    async fn purge(
        &'static self,
        _target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        // Chunks are immutable and named by version; eviction is the store's business
        // (directory sweeps, bucket lifecycle rules). Nothing to purge in-process but the
        // catalog's memory of it, which `open` corrects by itself.
        Ok(PurgeOutcome::NotFound)
    }

    async fn update_meta(
        &'static self,
        _key: &CacheKey,
        _meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        // Chunks never revalidate (the ETag is in the key).
        Ok(false)
    }

    fn support_streaming_partial_write(&self) -> bool {
        true
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}
