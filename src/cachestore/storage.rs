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
//!
//! Memory: a flight holds at most its window of its chunk: [`FLIGHT_WINDOW`] while a few fills
//! spool at once, a share of [`SHARED_WINDOWS`] (never under [`MIN_WINDOW`]) when more do, so
//! that many cold fills at once cost a fixed total rather than a window each. Every piece is
//! also written to the flight's spool (a temp file the store provides, [`super::spool`]) by a
//! task of its own; spooled pieces are dropped beyond half the window, readers behind what is
//! held read the spool (a quarter window at a time), the writer waits while the window is
//! full, and the commit hands the store the spool, not the bytes. A flight without a spool
//! keeps its whole chunk, as all did before.

use super::admit::Admitting;
use super::buf::PIECE;
use super::catalog::Catalog;
use super::ram::RamTier;
use super::spool::{read_piece, Spool};
use super::{CacheStore, ChunkRead, CommitOutcome, StoreError, TierState};
use crate::chunk::{Chunk, ChunkId};
use crate::metrics::{ChunkSource, COMMITS, FILL_BUFFERED_BYTES};
use crate::origin::OriginError;
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
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// A commit that has not landed after this long is abandoned (counted as an error): the
/// chunk stays a miss, and its bytes leave memory.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Builds the pingora cache key of a chunk: its name, with the [`Chunk`] itself attached
/// (`CacheKey::extensions`) so the storage knows the chunk behind the key and its length.
/// `vouched`: whether this replica can vouch for the chunk's length (it comes from its own
/// HEAD), or only a requester says so (a peer's fill request).
pub fn cache_key(chunk: &Chunk, vouched: bool) -> CacheKey {
    let mut key = CacheKey::new(chunk.id.name(), "");
    key.extensions.insert(chunk.clone());
    if !vouched {
        key.extensions.insert(Unvouched);
    }
    key
}

/// Key extension marking a chunk whose length only its requester vouches for.
#[derive(Debug, Clone, Copy)]
struct Unvouched;

/// The most of its chunk a fill that spools keeps in memory (plus one origin piece) while at
/// most [`SHARED_WINDOWS`] / `FLIGHT_WINDOW` fills spool at once: its writer waits while this
/// much is held, until the spool has written it out. Four store pieces ([`PIECE`]): the spool
/// writes a batch of about half of it per trip to the blocking pool, while the origin fills
/// the other half.
pub const FLIGHT_WINDOW: u64 = 4 * PIECE as u64;

/// The memory the windows of all spooling fills share (8 MiB: eight full windows). With more
/// fills spooling at once, each window is this divided among them, so 64 cold fills cost
/// 8 MiB, not 64 MiB: a fill's spool, not its window, is what lets readers catch up, and a
/// small window only means more, smaller trips to the blocking pool.
pub const SHARED_WINDOWS: u64 = 8 * FLIGHT_WINDOW;

/// The smallest window a fill's share shrinks to (half a store piece): below it each spool
/// write and each spool read of a reader behind would be a few origin pieces, and the trips
/// to the blocking pool would cost more than the memory saved. With more than
/// `SHARED_WINDOWS / MIN_WINDOW` (64) fills spooling, the total is that many times this.
pub const MIN_WINDOW: u64 = PIECE as u64 / 2;

const _: () = assert!(MIN_WINDOW <= FLIGHT_WINDOW && MIN_WINDOW >= 4 * 1024);

/// The count of fills spooling at once in one [`ChunkStorage`], from which each one's window is
/// derived.
#[derive(Default)]
struct SpoolWindows {
    spooling: AtomicUsize,
}

impl SpoolWindows {
    /// Counts a spooling fill in until the slot is dropped.
    fn join(self: &Arc<Self>) -> WindowSlot {
        self.spooling.fetch_add(1, Ordering::Relaxed);
        WindowSlot(self.clone())
    }

    /// A spooling fill's window now: [`FLIGHT_WINDOW`] while the windows fit in
    /// [`SHARED_WINDOWS`], else its share of it, at least [`MIN_WINDOW`].
    fn window(&self) -> u64 {
        let n = self.spooling.load(Ordering::Relaxed).max(1) as u64;
        (SHARED_WINDOWS / n).clamp(MIN_WINDOW, FLIGHT_WINDOW)
    }
}

/// A spooling fill's place in [`SpoolWindows`], held while it holds pieces.
struct WindowSlot(Arc<SpoolWindows>);

impl Drop for WindowSlot {
    fn drop(&mut self) {
        self.0.spooling.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a flight stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FlightStatus {
    /// The writer is still appending.
    Filling,
    /// Every byte is in and the length checked: readers may read to the end.
    Complete,
    /// The writer failed or went away: readers get this error, never a clean end.
    Failed(String),
}

struct FlightState {
    /// The chunk's bytes held in memory, in order; the first starts at `base`.
    pieces: VecDeque<Bytes>,
    /// The number of pieces dropped from the front of `pieces` so far (readers' hints are
    /// counted from the first piece ever appended).
    front_index: usize,
    /// Offset of the first piece held; the bytes before it are only in the spool.
    base: u64,
    /// Bytes appended.
    len: u64,
    /// Bytes written to the spool (whole pieces: always a piece boundary).
    spooled: u64,
    /// Why the spool failed: the flight then keeps the rest of its chunk in memory.
    spool_error: Option<String>,
    status: FlightStatus,
    /// A sub-range fill ([`SparseFill`]): the byte ranges of the chunk written to the spool so
    /// far, sorted and merged. Such a flight holds no piece: its writers write each sub-range
    /// straight to the spool at its offset, in any order, and readers read the spool where
    /// their next byte is present. `len`, `base` and `spooled` all count the bytes written.
    sparse: Option<Vec<(u64, u64)>>,
    /// A spooling flight's place among the windows that share [`SHARED_WINDOWS`], until it
    /// drops its pieces for good.
    slot: Option<WindowSlot>,
}

impl FlightState {
    /// Drops spooled pieces from the front while more than `keep` bytes are held; returns the
    /// bytes dropped.
    fn trim(&mut self, keep: u64) -> u64 {
        let mut freed = 0;
        while let Some(front) = self.pieces.front() {
            let n = front.len() as u64;
            if self.base + n > self.spooled || self.len - self.base <= keep {
                break;
            }
            self.pieces.pop_front();
            self.front_index += 1;
            self.base += n;
            freed += n;
        }
        freed
    }

    /// Drops every piece held, for good (the flight's window goes back to the others); returns
    /// the bytes dropped.
    fn clear(&mut self) -> u64 {
        let freed = self.len - self.base;
        self.front_index += self.pieces.len();
        self.pieces.clear();
        self.base = self.len;
        self.slot = None;
        freed
    }
}

/// What a reader finds at its position in a flight.
enum Next {
    /// The next piece.
    Piece(Bytes),
    /// The next bytes (this many) are no longer in memory: read them from the spool.
    Spool(Arc<Spool>, usize),
    /// Nothing yet: wait for the writer.
    Wait,
    /// The flight is complete and the reader has had every byte.
    End,
    /// The flight failed.
    Failed(String),
}

/// A chunk being filled, readable while it is written.
///
/// With a spool (every production store has one), the flight holds at most its window of its
/// chunk in memory ([`SpoolWindows::window`]: [`FLIGHT_WINDOW`], or a share of
/// [`SHARED_WINDOWS`] when many fills spool): every piece is also written to the spool by a
/// task of its own, spooled pieces beyond half the window are dropped, and the writer waits
/// while the window is full. Readers behind what is held read the spool. Without a spool (a
/// store that has none, or one that failed), the flight holds its whole chunk until it is
/// committed, bounded by the flight permits.
pub struct Flight {
    name: String,
    chunk: Chunk,
    tag: u64,
    state: Mutex<FlightState>,
    changed: watch::Sender<()>,
    /// One of the registry's permits, held while the flight is in the registry: it bounds the
    /// fills and commits in flight to `limits.origin_concurrency`.
    permit: Mutex<Option<OwnedSemaphorePermit>>,
    spool: Option<Arc<Spool>>,
    /// The storage's count of spooling fills, which sets this one's window.
    windows: Arc<SpoolWindows>,
}

/// The fill of chunk `id` in the registry `flights`, unless there is none or it failed.
fn live_in(flights: &HashMap<ChunkId, Arc<Flight>>, id: &ChunkId) -> Option<Arc<Flight>> {
    flights.get(id).filter(|f| !f.failed()).cloned()
}

impl Flight {
    /// A flight; one with a spool counts among the spooling fills that share the windows'
    /// memory until it drops its pieces.
    fn new(
        chunk: Chunk,
        tag: u64,
        permit: OwnedSemaphorePermit,
        spool: Option<Spool>,
        windows: &Arc<SpoolWindows>,
    ) -> Self {
        let (changed, _) = watch::channel(());
        Self {
            name: chunk.id.name(),
            chunk,
            tag,
            state: Mutex::new(FlightState {
                pieces: VecDeque::new(),
                front_index: 0,
                base: 0,
                len: 0,
                spooled: 0,
                spool_error: None,
                status: FlightStatus::Filling,
                sparse: None,
                slot: spool.is_some().then(|| windows.join()),
            }),
            changed,
            permit: Mutex::new(Some(permit)),
            spool: spool.map(Arc::new),
            windows: windows.clone(),
        }
    }

    /// The most of its chunk this flight holds now (with a spool; see [`SpoolWindows`]).
    fn window(&self) -> u64 {
        self.windows.window()
    }

    /// Appends a piece. With a spool, then waits while the window is full, at most `stall`
    /// (a spool that makes no progress for that long fails the fill).
    async fn append(&self, data: Bytes, stall: Duration) -> std::result::Result<(), String> {
        {
            let mut s = self.state.lock();
            let new_len = s.len + data.len() as u64;
            if new_len > self.chunk.len {
                return Err(format!(
                    "chunk {} longer than its expected {} bytes",
                    self.name, self.chunk.len
                ));
            }
            s.len = new_len;
            if !data.is_empty() {
                FILL_BUFFERED_BYTES.add(data.len() as i64);
                s.pieces.push_back(data);
            }
        }
        self.changed.send_replace(());
        if self.spool.is_none() {
            return Ok(());
        }
        self.wait_for_room(stall).await
    }

    /// Waits while the window is full, at most `stall` without progress of the spool.
    async fn wait_for_room(&self, stall: Duration) -> std::result::Result<(), String> {
        let mut rx = self.changed.subscribe();
        loop {
            {
                let mut s = self.state.lock();
                if s.spool_error.is_some() || s.status != FlightStatus::Filling {
                    return Ok(());
                }
                let window = self.window();
                if s.len - s.base < window {
                    return Ok(());
                }
                // Full. What is spooled is on disk: drop it down to half the window before
                // waiting. The spool task trims after each write, but with the window of that
                // moment; when more fills began since, the window shrank, and waiting while
                // holding only spooled bytes would wait for a spool write that never comes
                // (until the stall deadline failed the fill).
                let freed = s.trim(window / 2);
                let room = s.len - s.base < window;
                drop(s);
                FILL_BUFFERED_BYTES.sub(freed as i64);
                if room {
                    return Ok(());
                }
            }
            match tokio::time::timeout(stall, rx.changed()).await {
                Ok(_) => {}
                Err(_) => {
                    return Err(format!(
                        "the spool of chunk {} made no progress in {stall:?}",
                        self.name
                    ))
                }
            }
        }
    }

    /// Ends the flight (the first end wins: a complete flight is never failed afterwards).
    fn finish(&self, status: FlightStatus) {
        {
            let mut s = self.state.lock();
            if s.status == FlightStatus::Filling {
                s.status = status;
            }
        }
        self.changed.send_replace(());
    }

    fn failed(&self) -> bool {
        matches!(self.state.lock().status, FlightStatus::Failed(_))
    }

    fn len(&self) -> u64 {
        self.state.lock().len
    }

    /// What a reader at `pos` (reading up to `to`) finds next. `hint` is the reader's last
    /// piece (its index and offset), so a reader walks the pieces held once, not from the
    /// front at every step.
    fn next(&self, pos: u64, to: u64, hint: &mut Option<(usize, u64)>) -> Next {
        let s = self.state.lock();
        if let FlightStatus::Failed(e) = &s.status {
            return Next::Failed(e.clone());
        }
        if let Some(present) = &s.sparse {
            let Some(&(_, end)) = present.iter().find(|(a, b)| *a <= pos && pos < *b) else {
                return match &s.status {
                    FlightStatus::Filling => Next::Wait,
                    _ => Next::End,
                };
            };
            return match &self.spool {
                Some(spool) => {
                    let want = (end.min(to) - pos).min(PIECE as u64);
                    Next::Spool(spool.clone(), want as usize)
                }
                None => Next::Failed("a sub-range fill without a spool".into()),
            };
        }
        if pos < s.base {
            return match &self.spool {
                Some(spool) => {
                    // A quarter window at a time: what a reader behind holds in passing
                    // shrinks with the window, so readers of many fills at once hold little
                    // (32 KiB each at the smallest window, a store piece at the largest).
                    let want = (s.base - pos).min(to - pos).min(self.window() / 4);
                    Next::Spool(spool.clone(), want as usize)
                }
                // Pieces are only dropped once spooled.
                None => Next::Failed("bytes dropped without a spool".into()),
            };
        }
        let (mut idx, mut off) = match *hint {
            Some((i, o)) if i >= s.front_index && o <= pos => (i, o),
            _ => (s.front_index, s.base),
        };
        while let Some(p) = s.pieces.get(idx - s.front_index) {
            let end = off + p.len() as u64;
            if pos < end {
                *hint = Some((idx, off));
                let lo = (pos - off) as usize;
                let hi = (end.min(to) - off) as usize;
                return Next::Piece(p.slice(lo..hi));
            }
            idx += 1;
            off = end;
        }
        *hint = Some((idx, off));
        match &s.status {
            FlightStatus::Filling => Next::Wait,
            _ => Next::End,
        }
    }

    /// Every piece, for a commit without a spool (which never dropped one).
    fn pieces(&self) -> (Vec<Bytes>, u64) {
        let s = self.state.lock();
        (s.pieces.iter().cloned().collect(), s.len)
    }

    /// Drops the pieces held once they are not needed: the flight failed, or every byte is
    /// in the spool (its readers read the rest there).
    fn release(&self) {
        let freed = {
            let mut s = self.state.lock();
            let spooled = self.spool.is_some()
                && s.spool_error.is_none()
                && s.status == FlightStatus::Complete
                && s.spooled == s.len;
            if spooled || matches!(s.status, FlightStatus::Failed(_)) {
                s.clear()
            } else {
                0
            }
        };
        FILL_BUFFERED_BYTES.sub(freed as i64);
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        let s = self.state.get_mut();
        FILL_BUFFERED_BYTES.sub((s.len - s.base) as i64);
    }
}

/// Writes a flight's pieces to its spool as they arrive, and drops the spooled ones beyond
/// half its window. Ends when every byte is spooled after the flight completed, when it failed, or
/// when the spool fails (the flight then keeps the rest in memory); a flight that gets no new
/// byte for `stall` is given up (its readers and writer have the same deadline).
async fn spool_flight(flight: Arc<Flight>, spool: Arc<Spool>, stall: Duration) {
    let mut rx = flight.changed.subscribe();
    loop {
        rx.borrow_and_update();
        let (batch, at) = {
            let s = flight.state.lock();
            if s.spool_error.is_some() || matches!(s.status, FlightStatus::Failed(_)) {
                return;
            }
            if s.spooled == s.len && s.status == FlightStatus::Complete {
                return;
            }
            let mut off = s.base;
            let mut batch = Vec::new();
            for p in &s.pieces {
                if off >= s.spooled {
                    batch.push(p.clone());
                }
                off += p.len() as u64;
            }
            (batch, s.spooled)
        };
        if batch.is_empty() {
            if tokio::time::timeout(stall, rx.changed()).await.is_err() {
                let mut s = flight.state.lock();
                if s.status == FlightStatus::Filling {
                    s.spool_error = Some(format!("no new byte in {stall:?}"));
                }
                return;
            }
            continue;
        }
        let n: u64 = batch.iter().map(|p| p.len() as u64).sum();
        let writer = spool.clone();
        let written = tokio::task::spawn_blocking(move || writer.write_at(&batch, at))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        let freed = {
            let mut s = flight.state.lock();
            match written {
                Ok(()) => {
                    s.spooled = at + n;
                    s.trim(flight.window() / 2)
                }
                Err(e) => {
                    tracing::warn!(chunk = %flight.name, error = %e, "writing the fill's spool failed; it keeps its chunk in memory and is not committed");
                    s.spool_error = Some(e.to_string());
                    // It keeps its chunk now: no window to share.
                    s.slot = None;
                    0
                }
            }
        };
        FILL_BUFFERED_BYTES.sub(freed as i64);
        flight.changed.send_replace(());
    }
}

/// Reads bytes `[from, to)` of a flight as they arrive.
pub struct FlightReader {
    flight: Arc<Flight>,
    /// The longest wait for the next byte.
    stall_timeout: Duration,
    rx: watch::Receiver<()>,
    /// The next byte to read.
    pos: u64,
    to: u64,
    /// The piece last read (index, offset), where the search for the next one starts.
    hint: Option<(usize, u64)>,
}

impl FlightReader {
    fn new(flight: Arc<Flight>, from: u64, to: u64, stall_timeout: Duration) -> Self {
        let rx = flight.changed.subscribe();
        let to = to.min(flight.chunk.len);
        Self {
            flight,
            stall_timeout,
            rx,
            pos: from.min(to),
            to,
            hint: None,
        }
    }
}

#[async_trait]
impl ChunkRead for FlightReader {
    async fn next_piece(&mut self) -> std::result::Result<Option<Bytes>, StoreError> {
        loop {
            if self.pos >= self.to {
                return Ok(None);
            }
            self.rx.borrow_and_update();
            let fault = |kind, e: &str| {
                StoreError::io(
                    format!("fill of {}", self.flight.name),
                    std::io::Error::new(kind, e.to_string()),
                )
            };
            match self.flight.next(self.pos, self.to, &mut self.hint) {
                Next::Piece(piece) => {
                    self.pos += piece.len() as u64;
                    return Ok(Some(piece));
                }
                Next::Spool(spool, want) => {
                    let piece = read_piece(spool.file(), self.pos, want).await?;
                    self.pos += piece.len() as u64;
                    return Ok(Some(piece));
                }
                Next::Wait => {
                    match tokio::time::timeout(self.stall_timeout, self.rx.changed()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => {
                            return Err(fault(std::io::ErrorKind::Other, "writer vanished"))
                        }
                        Err(_) => {
                            return Err(fault(
                                std::io::ErrorKind::TimedOut,
                                "no new byte from the fill within the stall timeout",
                            ))
                        }
                    }
                }
                // Complete, yet short of `to`: cannot happen for a checked flight; be loud.
                Next::End => {
                    return Err(fault(
                        std::io::ErrorKind::UnexpectedEof,
                        "flight ended early",
                    ))
                }
                Next::Failed(e) => return Err(fault(std::io::ErrorKind::Other, &e)),
            }
        }
    }
}

/// How long a failed fill's error is kept for the callers that were waiting on it.
const FAILURE_MEMORY: Duration = Duration::from_secs(600);

/// The pingora-cache storage of chunks: in-flight registry, miss catalog and store.
pub struct ChunkStorage {
    /// The last fill failure of each chunk (when, and the origin's answer), for the callers
    /// that waited on that fill (see [`ChunkStorage::failure_since`]).
    failures: Mutex<lru::LruCache<ChunkId, (tokio::time::Instant, OriginError)>>,
    store: Arc<dyn CacheStore>,
    /// Chunks the edge found missing just now, which the fill service's lookups trust.
    misses: Catalog,
    flights: Mutex<HashMap<ChunkId, Arc<Flight>>>,
    /// Told whenever a flight enters or leaves the registry: a sub-range fill's requester
    /// waiting for an origin permit joins a flight that another caller started meanwhile
    /// instead of waiting for a permit it would not need ([`ChunkStorage::flight_changes`]).
    flights_changed: tokio::sync::Notify,
    /// Bounds the flights in the registry, committing ones included.
    flight_permits: Arc<Semaphore>,
    /// The spooling flights, whose windows share [`SHARED_WINDOWS`].
    windows: Arc<SpoolWindows>,
    next_tag: AtomicU64,
    /// How long a flight's reader waits for its next byte before it gives up: a writer that
    /// stopped (its own downstream stalled, or a frozen peer) must not hold its readers.
    stall_timeout: Duration,
    /// The RAM tier (`cachestore.memory`), if any: looked at before the store, and filled
    /// from whole-chunk reads of the store and of fills.
    ram: Option<Arc<RamTier>>,
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
    /// Bytes the reader may hold ahead of the client (an in-process stream's buffer), which
    /// the edge keeps counted in its read-ahead budget; 0 for a hit read straight from memory
    /// or the store.
    pub buffered: u64,
}

impl ChunkStorage {
    /// Wraps a store, with at most `max_flights` chunks filling or committing at once; a
    /// reader of a fill in flight that sees no new byte for `stall_timeout` fails. Leaked by
    /// the caller once, at start-up: pingora wants `&'static`.
    pub fn new(
        store: Arc<dyn CacheStore>,
        catalog_entries: usize,
        max_flights: usize,
        stall_timeout: Duration,
    ) -> Self {
        Self {
            failures: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(4096).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
            stall_timeout,
            store,
            misses: Catalog::new(catalog_entries),
            flights: Mutex::new(HashMap::new()),
            flights_changed: tokio::sync::Notify::new(),
            flight_permits: Arc::new(Semaphore::new(max_flights.max(1))),
            windows: Arc::default(),
            next_tag: AtomicU64::new(1),
            ram: None,
        }
    }

    /// Puts the RAM tier `ram` in front of the store.
    #[must_use]
    pub fn with_ram(mut self, ram: Arc<RamTier>) -> Self {
        self.ram = Some(ram);
        self
    }

    /// Wraps a reader of the whole chunk `chunk` so that the RAM tier admits it once every
    /// byte has passed through, when the tier grants it room and no purge came after `epoch`
    /// (the tier's epoch when the reader began: [`ChunkStorage::ram_epoch`]).
    fn admitting(
        &self,
        chunk: &Chunk,
        reader: Box<dyn ChunkRead>,
        epoch: u64,
    ) -> Box<dyn ChunkRead> {
        match self
            .ram
            .as_ref()
            .and_then(|r| r.reserve(&chunk.id, chunk.len, epoch))
        {
            Some(admission) => Box::new(Admitting::new(reader, Some(Box::new(admission)))),
            None => reader,
        }
    }

    /// The RAM tier's purge epoch (0 without a tier), taken before a store read whose chunk
    /// may be admitted.
    fn ram_epoch(&self) -> u64 {
        self.ram.as_ref().map_or(0, |r| r.epoch())
    }

    /// Opens bytes `[from, to)` of a chunk: from a fill in flight if there is one, else from the
    /// store. `None` is a miss; a store failure is logged and reported as a miss. The miss is
    /// recorded, so the fill service that is asked next does not ask the store again.
    pub async fn open(&self, chunk: &Chunk, from: u64, to: u64) -> Option<ChunkHit> {
        self.lookup_chunk(chunk, from, to, false, true, true).await
    }

    /// [`ChunkStorage::open`] without the RAM tier: for the edge's chunk to send next when it
    /// reserved read-ahead memory for a window, not for the whole chunk a RAM tier reader keeps
    /// alive (see [`ChunkHit::buffered`] and [`ChunkStorage::in_ram`]). A chunk in the tier is
    /// in a flight or the store too.
    pub async fn open_outside_ram(&self, chunk: &Chunk, from: u64, to: u64) -> Option<ChunkHit> {
        self.lookup_chunk(chunk, from, to, false, true, false).await
    }

    /// [`ChunkStorage::open`] for the fill service: a miss recorded within
    /// [`super::catalog::MISS_TTL`] is trusted instead of asking the store again. With
    /// `vouched` false (a peer's request: its object size is only its word), a stored chunk of
    /// another length is a miss for this request and is left in place: the store deletes a
    /// wrong-length chunk only for a length this replica vouches for.
    pub async fn open_for_fill(&self, chunk: &Chunk, vouched: bool) -> Option<ChunkHit> {
        self.lookup_chunk(chunk, 0, chunk.len, true, vouched, true)
            .await
    }

    /// [`ChunkStorage::open_for_fill`] of bytes `[from, to)` only (a sub-range fill's
    /// requester).
    pub async fn open_range_for_fill(
        &self,
        chunk: &Chunk,
        (from, to): (u64, u64),
        vouched: bool,
    ) -> Option<ChunkHit> {
        self.lookup_chunk(chunk, from, to, true, vouched, true)
            .await
    }

    /// Whether the RAM tier holds `chunk` now (a look, no read: it keeps nothing alive).
    pub fn in_ram(&self, chunk: &Chunk) -> bool {
        self.ram
            .as_ref()
            .is_some_and(|r| r.stat(&chunk.id) == Some(chunk.len))
    }

    /// `for_fill`: a read for the fill service's answer, which trusts a recent miss and admits
    /// nothing to the RAM tier. Only the edge's own read ([`ChunkStorage::open`]) admits a
    /// whole chunk: the fill service's requester is this replica's edge, which reads the chunk
    /// from here again once the fill has started and drops the answer, or a peer, whose word
    /// for the chunk's length this replica cannot vouch for. `ram`: look in the RAM tier too.
    async fn lookup_chunk(
        &self,
        chunk: &Chunk,
        from: u64,
        to: u64,
        for_fill: bool,
        vouched: bool,
        ram: bool,
    ) -> Option<ChunkHit> {
        let admit = !for_fill && vouched && from == 0 && to >= chunk.len;
        if let Some(flight) = self.live_flight(&chunk.id) {
            let reader = Box::new(FlightReader::new(flight, from, to, self.stall_timeout));
            return Some(ChunkHit {
                source: ChunkSource::Memory,
                // The fill's bytes, admitted once they have all passed through (a fill that
                // fails admits nothing).
                reader: if admit {
                    self.admitting(chunk, reader, self.ram_epoch())
                } else {
                    reader
                },
                on_demand: true,
                buffered: 0,
            });
        }
        if let Some(reader) = self
            .ram
            .as_ref()
            .filter(|_| ram)
            .and_then(|r| r.get(&chunk.id, chunk.len, from, to))
        {
            return Some(ChunkHit {
                source: ChunkSource::RamTier,
                reader: Box::new(reader),
                on_demand: true,
                // A reader keeps its chunk alive even once the tier evicts it: the edge keeps
                // these bytes counted in its read-ahead budget until they are sent.
                buffered: to.min(chunk.len).saturating_sub(from),
            });
        }
        if for_fill && self.misses.recently_missing(&chunk.id) {
            return None;
        }
        let read_began = tokio::time::Instant::now();
        if !vouched {
            // Look before reading: `read` would delete a chunk whose length differs.
            match self.store.stat(&chunk.id).await {
                Ok(Some(len)) if len == chunk.len => {}
                Ok(Some(len)) => {
                    tracing::warn!(chunk = %chunk.id, stored = len, asked = chunk.len, "a fill request names another length than the stored chunk's; left in place");
                    return None;
                }
                Ok(None) => {
                    self.misses.record_miss(&chunk.id, read_began);
                    return None;
                }
                Err(e) => {
                    tracing::warn!(chunk = %chunk.id, error = %e, "cache store stat failed; treating as a miss");
                    return None;
                }
            }
        }
        // Before the read: a purge that removes the chunk once the store has opened it must
        // keep the tier from admitting it.
        let epoch = self.ram_epoch();
        match self.store.read(&chunk.id, chunk.len, from, to).await {
            Ok(Some(reader)) => Some(ChunkHit {
                source: ChunkSource::CacheStore,
                on_demand: !reader
                    .prefetch_hint()
                    .unwrap_or_else(|| self.store.prefetch_hits()),
                reader: if admit {
                    self.admitting(chunk, reader, epoch)
                } else {
                    reader
                },
                buffered: 0,
            }),
            Ok(None) => {
                self.misses.record_miss(&chunk.id, read_began);
                None
            }
            // Not recorded as a miss: a store that failed to answer may well hold the chunk,
            // and the fill service should ask it again rather than go to the origin.
            Err(e) => {
                tracing::warn!(chunk = %chunk.id, error = %e, "cache store read failed; treating as a miss");
                None
            }
        }
    }

    /// Bytes `[from, to)` of a live fill of `chunk` in flight, if there is one: the registry
    /// only (no store request), so cheap enough to ask again on every
    /// [`ChunkStorage::flight_changes`].
    pub fn join_flight(&self, chunk: &Chunk, (from, to): (u64, u64)) -> Option<ChunkHit> {
        let flight = self.flights.lock().get(&chunk.id).cloned()?;
        (!flight.failed()).then(|| ChunkHit {
            source: ChunkSource::Memory,
            reader: Box::new(FlightReader::new(flight, from, to, self.stall_timeout)),
            on_demand: true,
            buffered: 0,
        })
    }

    /// Completes when a flight next enters or leaves the registry. Enable it (`enable()` on
    /// the pinned future) before looking at the registry, so a change between the look and
    /// the wait is not missed.
    pub fn flight_changes(&self) -> tokio::sync::futures::Notified<'_> {
        self.flights_changed.notified()
    }

    /// Records that a fill of `id` failed before its first byte with `error` (the origin's
    /// answer after all its attempts).
    pub fn record_failure(&self, id: &ChunkId, error: OriginError) {
        self.failures
            .lock()
            .put(id.clone(), (tokio::time::Instant::now(), error));
    }

    /// The failure of a fill of `id` that ended after `since`, if there was one: a request that
    /// waited on that fill (pingora's cache lock) gets its answer instead of asking the origin
    /// all over again, one waiter after another. A request that began after it fills afresh:
    /// failures are never replayed to later callers.
    pub fn failure_since(&self, id: &ChunkId, since: tokio::time::Instant) -> Option<OriginError> {
        let mut failures = self.failures.lock();
        match failures.peek(id) {
            Some((at, e)) if *at >= since && at.elapsed() < FAILURE_MEMORY => Some(e.clone()),
            Some((at, _)) if at.elapsed() >= FAILURE_MEMORY => {
                failures.pop(id);
                None
            }
            _ => None,
        }
    }

    /// Whether a whole chunk is here: a fill in flight, or stored with its length (`orca
    /// warm` skips it). A store that cannot answer counts as a miss.
    pub async fn holds(&self, chunk: &Chunk) -> bool {
        if self.live_flight(&chunk.id).is_some() {
            return true;
        }
        matches!(self.store.stat(&chunk.id).await, Ok(Some(len)) if len == chunk.len)
    }

    /// Where a chunk is stored, per tier (`orca inspect`), and whether a fill of it is in
    /// flight in this process.
    pub async fn locate(&self, id: &ChunkId) -> (Vec<TierState>, bool) {
        let in_flight = self.flights.lock().get(id).is_some_and(|f| !f.failed());
        let mut tiers = self.store.locate(id).await;
        if let Some(ram) = &self.ram {
            tiers.insert(
                0,
                TierState {
                    tier: crate::metrics::TIER_MEMORY,
                    shared: false,
                    bytes: Ok(ram.stat(id)),
                },
            );
        }
        (tiers, in_flight)
    }

    /// Removes a chunk from every tier of the store (the shared one only with `shared`), per
    /// tier what was removed (`orca purge`). A fill of it in flight is not stopped: it was
    /// asked for by a read that pinned that version, and it lands as that read's chunk.
    pub async fn purge(&self, id: &ChunkId, shared: bool) -> Vec<TierState> {
        // The RAM tier last: a read between the two could otherwise admit the chunk again
        // from the store.
        let mut tiers = self.store.purge(id, shared).await;
        if let Some(ram) = &self.ram {
            tiers.insert(
                0,
                TierState {
                    tier: crate::metrics::TIER_MEMORY,
                    shared: false,
                    bytes: Ok(ram.remove(id)),
                },
            );
        }
        tiers
    }

    fn key_chunk(key: &CacheKey) -> Result<Chunk> {
        key.extensions.get::<Chunk>().cloned().ok_or_else(|| {
            Error::explain(
                ErrorType::InternalError,
                "chunk cache key without its Chunk",
            )
        })
    }

    /// Registers `flight` as the one fill of its chunk, unless a live fill of the chunk is in
    /// the registry already: then that flight is returned and `flight` is not registered (the
    /// caller joins the live one and drops its own). A failed flight still in the registry is
    /// replaced. Both fill paths claim through here, under the registry's lock, so at most one
    /// live flight per chunk exists: the in-order fill (pingora's miss path) never replaces a
    /// sub-range fill in flight, nor the other way round, and a second in-order writer (after
    /// a cache-lock timeout) reads the first one's flight instead of fetching the chunk again.
    fn claim_fill(&self, flight: &Arc<Flight>) -> Option<Arc<Flight>> {
        {
            let mut flights = self.flights.lock();
            if let Some(live) = live_in(&flights, &flight.chunk.id) {
                return Some(live);
            }
            flights.insert(flight.chunk.id.clone(), flight.clone());
        }
        self.flights_changed.notify_waiters();
        None
    }

    /// The fill of chunk `id` in flight, unless there is none or it failed.
    fn live_flight(&self, id: &ChunkId) -> Option<Arc<Flight>> {
        live_in(&self.flights.lock(), id)
    }

    /// A flight permit, waited for at most the stall timeout: a permit comes back when a
    /// commit lands, which waits on the store alone, so a longer wait means a sick store.
    async fn flight_permit(&self) -> std::result::Result<OwnedSemaphorePermit, String> {
        tokio::time::timeout(
            self.stall_timeout,
            self.flight_permits.clone().acquire_owned(),
        )
        .await
        .map_err(|_| format!("no fill slot free within {:?}", self.stall_timeout))?
        .map_err(|_| "flight permits closed".to_string())
    }

    /// The miss handler of an in-order fill that found `live` filling its chunk: its
    /// downstream reads that flight (the handler's write tag is that flight's), and the
    /// origin's bytes it still receives are dropped.
    fn joined_handler(&'static self, live: Arc<Flight>) -> MissHandler {
        tracing::debug!(chunk = %live.name, tag = live.tag, "a fill of the chunk is in flight; the in-order fill reads it");
        Box::new(ChunkMissHandler {
            storage: self,
            tag: live.tag.to_be_bytes(),
            flight: live,
            finished: false,
            joined: true,
        })
    }

    fn remove_flight(&self, flight: &Arc<Flight>) {
        {
            let mut flights = self.flights.lock();
            // Only this flight: a newer writer's flight under the same chunk stays.
            if flights
                .get(&flight.chunk.id)
                .is_some_and(|f| Arc::ptr_eq(f, flight))
            {
                flights.remove(&flight.chunk.id);
            }
        }
        self.flights_changed.notify_waiters();
        // Out of the registry: its slot is free for the next fill, and its memory goes
        // (its readers, if any, read the rest from its spool).
        flight.permit.lock().take();
        flight.release();
    }

    fn commit_in_background(&'static self, flight: Arc<Flight>) {
        tokio::spawn(async move {
            let result =
                match tokio::time::timeout(COMMIT_TIMEOUT, self.commit_flight(&flight)).await {
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
                Ok(_) => self.misses.committed(&flight.chunk.id),
                Err(e) => {
                    tracing::warn!(chunk = %flight.name, error = %e, "commit to the cache store failed")
                }
            }
            // Only now may readers go to the store: the registry served the chunk until here.
            self.remove_flight(&flight);
        });
    }
}

impl ChunkStorage {
    /// Commits a complete flight: from its spool once the spool task has written the last
    /// byte, else (no spool, or one that failed before any piece was dropped) from memory.
    async fn commit_flight(
        &self,
        flight: &Arc<Flight>,
    ) -> std::result::Result<CommitOutcome, StoreError> {
        let id = &flight.chunk.id;
        if let Some(spool) = &flight.spool {
            let mut rx = flight.changed.subscribe();
            loop {
                // Some(true): spooled, commit the spool; Some(false): commit from memory.
                let ready = {
                    let s = flight.state.lock();
                    match &s.spool_error {
                        Some(_) if s.base == 0 => Some(false),
                        Some(e) => {
                            return Err(StoreError::io(
                                format!("spool of {}", flight.name),
                                std::io::Error::other(e.clone()),
                            ))
                        }
                        None if s.spooled == s.len => Some(true),
                        None => None,
                    }
                };
                match ready {
                    Some(true) => {
                        let len = flight.len();
                        return self.store.commit_spool(id, spool.clone(), len).await;
                    }
                    Some(false) => break,
                    // Bounded by the caller's COMMIT_TIMEOUT.
                    None => {
                        let _ = rx.changed().await;
                    }
                }
            }
        }
        let (pieces, len) = flight.pieces();
        self.store.commit(id, pieces, len).await
    }
}

/// What [`ChunkStorage::begin_sparse`] found.
pub enum SparseBegin {
    /// A fill of the chunk is in flight already: read it.
    Joined(ChunkHit),
    /// This caller fills the chunk: write its sub-ranges to the [`SparseFill`]; the hit
    /// reads the caller's own range of it as the bytes arrive.
    Started(SparseFill, ChunkHit),
    /// The store gives no spool for the chunk (none, or it failed): fill it in order.
    NoSpool,
}

impl ChunkStorage {
    /// Registers a sub-range fill of `chunk` (see [`SparseFill`]) unless a fill of it is in
    /// flight already, and opens bytes `[from, to)` of whichever flight it is. Waits for a
    /// flight permit (as [`Storage::get_miss_handler`] does), at most the stall timeout.
    pub async fn begin_sparse(
        &'static self,
        chunk: &Chunk,
        (from, to): (u64, u64),
    ) -> std::result::Result<SparseBegin, String> {
        let hit = |flight: Arc<Flight>| ChunkHit {
            source: ChunkSource::Memory,
            reader: Box::new(FlightReader::new(flight, from, to, self.stall_timeout)),
            on_demand: true,
            buffered: 0,
        };
        if let Some(flight) = self.live_flight(&chunk.id) {
            return Ok(SparseBegin::Joined(hit(flight)));
        }
        let permit = self.flight_permit().await?;
        let spool = match self.store.spool(&chunk.id, chunk.len).await {
            Ok(Some(spool)) => spool,
            Ok(None) => return Ok(SparseBegin::NoSpool),
            Err(e) => {
                tracing::warn!(chunk = %chunk.id, error = %e, "cannot create the fill's spool; filling it in order");
                return Ok(SparseBegin::NoSpool);
            }
        };
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let mut flight = Flight::new(chunk.clone(), tag, permit, Some(spool), &self.windows);
        // It holds no piece: no window of the shared memory.
        let state = flight.state.get_mut();
        state.sparse = Some(Vec::new());
        state.slot = None;
        let flight = Arc::new(flight);
        // Claimed by another caller meanwhile (a sub-range fill, or an in-order fill of
        // pingora's miss path): join it (ours, unused, goes with its permit and spool).
        if let Some(other) = self.claim_fill(&flight) {
            return Ok(SparseBegin::Joined(hit(other)));
        }
        tracing::debug!(chunk = %flight.name, tag, "sub-range fill registered");
        let reader = hit(flight.clone());
        Ok(SparseBegin::Started(
            SparseFill {
                storage: self,
                flight,
                finished: false,
            },
            reader,
        ))
    }
}

/// The writer of a sub-range fill: a flight whose chunk arrives as byte ranges in any order,
/// each written straight to the spool at its offset (`pwrite`); readers are told which ranges
/// are present (see [`FlightState::sparse`]). No byte of the chunk is held by the flight: the
/// only memory is what each writer holds while its write is on the blocking pool. Complete
/// when every byte is written once; then committed from the spool, as any spooled fill. A
/// writer dropped before [`SparseFill::finish`] fails the flight: readers get an error, the
/// spool goes, nothing is stored.
pub struct SparseFill {
    storage: &'static ChunkStorage,
    flight: Arc<Flight>,
    finished: bool,
}

impl SparseFill {
    /// Tells the flight's readers the fill is still at work (a new attempt at a sub-range):
    /// each wait for a byte restarts its no-progress deadline.
    pub fn alive(&self) {
        self.flight.changed.send_replace(());
    }

    /// The chunk being filled.
    pub fn chunk(&self) -> &Chunk {
        &self.flight.chunk
    }

    /// Writes `pieces` at `offset` of the chunk (a part no write covered before).
    pub async fn write_at(
        &self,
        offset: u64,
        pieces: Vec<Bytes>,
    ) -> std::result::Result<(), String> {
        let n: u64 = pieces.iter().map(|p| p.len() as u64).sum();
        if n == 0 {
            return Ok(());
        }
        let end = offset + n;
        if end > self.flight.chunk.len {
            return Err(format!(
                "bytes {offset}..{end} run past chunk {}'s {} bytes",
                self.flight.name, self.flight.chunk.len
            ));
        }
        let Some(spool) = self.flight.spool.clone() else {
            return Err("a sub-range fill without a spool".into());
        };
        if self.flight.failed() {
            return Err("the fill failed".into());
        }
        tokio::task::spawn_blocking(move || spool.write_at(&pieces, offset))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("writing the spool of {}: {e}", self.flight.name))?;
        {
            let mut s = self.flight.state.lock();
            let present = s.sparse.get_or_insert_with(Vec::new);
            if present.iter().any(|(a, b)| *a < end && offset < *b) {
                return Err(format!(
                    "bytes {offset}..{end} of {} written twice",
                    self.flight.name
                ));
            }
            present.push((offset, end));
            present.sort_unstable();
            let mut merged: Vec<(u64, u64)> = Vec::with_capacity(present.len());
            for &(a, b) in present.iter() {
                match merged.last_mut() {
                    Some(last) if last.1 == a => last.1 = b,
                    _ => merged.push((a, b)),
                }
            }
            *present = merged;
            s.len += n;
            s.base += n;
            s.spooled += n;
        }
        self.flight.changed.send_replace(());
        Ok(())
    }

    /// Ends the fill: complete (committed in the background) when every byte of the chunk
    /// was written, else failed.
    pub fn finish(mut self) -> std::result::Result<(), String> {
        self.finished = true;
        let whole = {
            let s = self.flight.state.lock();
            s.sparse.as_deref() == Some(&[(0, self.flight.chunk.len)][..])
        };
        if !whole {
            let msg = format!(
                "chunk {} ended at {} of {} bytes",
                self.flight.name,
                self.flight.len(),
                self.flight.chunk.len
            );
            self.fail_now(msg.clone());
            return Err(msg);
        }
        self.flight.finish(FlightStatus::Complete);
        tracing::debug!(chunk = %self.flight.name, "sub-range fill complete; committing in the background");
        self.storage.commit_in_background(self.flight.clone());
        Ok(())
    }

    /// Fails the fill: its readers get `msg`, nothing is stored, the next caller refills.
    pub fn fail(mut self, msg: String) {
        self.finished = true;
        self.fail_now(msg);
    }

    fn fail_now(&self, msg: String) {
        self.flight.finish(FlightStatus::Failed(msg));
        self.storage.remove_flight(&self.flight);
    }
}

impl Drop for SparseFill {
    fn drop(&mut self) {
        if !self.finished {
            tracing::debug!(chunk = %self.flight.name, "sub-range fill abandoned before its end");
            self.fail_now("the fill was abandoned".into());
        }
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
    /// `flight` is another writer's live fill, found by [`ChunkStorage::claim_fill`]: this
    /// handler never writes, finishes or fails it (its own writer does), and drops the
    /// origin's bytes it is given.
    joined: bool,
}

#[async_trait]
impl HandleMiss for ChunkMissHandler {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.joined {
            return Ok(());
        }
        self.flight
            .append(data, self.storage.stall_timeout)
            .await
            .map_err(|m| Error::explain(ErrorType::InternalError, m))
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        self.finished = true;
        if self.joined {
            return Ok(MissFinishType::Appended(0, None));
        }
        let len = self.flight.len();
        if len != self.flight.chunk.len {
            let msg = format!(
                "chunk {} ended at {len} of {} bytes",
                self.flight.name, self.flight.chunk.len
            );
            self.flight.finish(FlightStatus::Failed(msg.clone()));
            self.storage.remove_flight(&self.flight);
            return Error::e_explain(ErrorType::InternalError, msg);
        }
        self.flight.finish(FlightStatus::Complete);
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
        if !self.finished && !self.joined {
            tracing::debug!(chunk = %self.flight.name, "fill abandoned before its end");
            self.flight
                .finish(FlightStatus::Failed("the fill was abandoned".into()));
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
        let chunk = Self::key_chunk(key)?;
        let vouched = key.extensions.get::<Unvouched>().is_none();
        let Some(hit) = self.open_for_fill(&chunk, vouched).await else {
            return Ok(None);
        };
        let handler = ChunkHitHandler {
            source: hit.source,
            reader: hit.reader,
        };
        Ok(Some((chunk_meta(chunk.len)?, Box::new(handler))))
    }

    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        streaming_write_tag: Option<&[u8]>,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let chunk = Self::key_chunk(key)?;
        let tag = streaming_write_tag
            .and_then(|t| <[u8; 8]>::try_from(t).ok())
            .map(u64::from_be_bytes);
        let flight = self.flights.lock().get(&chunk.id).cloned();
        match (flight, tag) {
            (Some(f), Some(tag)) if f.tag == tag => {
                let handler = ChunkHitHandler {
                    // The writer's own downstream: the bytes are this request's origin fill.
                    source: ChunkSource::Origin,
                    // Not admitted to the RAM tier from here: this replica's edge reads its
                    // fill again from the storage, which admits it (see `lookup_chunk`).
                    reader: Box::new(FlightReader::new(f, 0, chunk.len, self.stall_timeout)),
                };
                Ok(Some((chunk_meta(chunk.len)?, Box::new(handler))))
            }
            // The writer's flight left the registry: committed (a hit now), or another
            // writer's fill that this writer joined and that failed meanwhile. pingora-cache
            // panics on no body reader for a writer: answer an error instead.
            (_, tag) => match self.lookup(key, trace).await? {
                None if tag.is_some() => Error::e_explain(
                    ErrorType::InternalError,
                    format!(
                        "the fill of {} ended before its writer could read it",
                        chunk.id
                    ),
                ),
                found => Ok(found),
            },
        }
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        _meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let chunk = Self::key_chunk(key)?;
        // A live fill of the chunk is in flight already (a sub-range fill, or an older writer
        // this one's cache lock timed out on): this writer reads it and needs neither a flight
        // permit nor a spool, so it does not wait for either (`claim_fill` below is the final
        // check, for a fill registered while this one waited).
        if let Some(live) = self.live_flight(&chunk.id) {
            return Ok(self.joined_handler(live));
        }
        // Waits while `max_flights` chunks are filling or committing: memory stays bounded
        // however fast the origin is and however slow the store. A flight's permit comes back
        // when its commit lands, which waits on nothing but the store (never on a reader); the
        // wait is bounded all the same, by the stall timeout, and then fails this fill (as
        // `begin_sparse` does) rather than hangs it.
        let permit = self
            .flight_permit()
            .await
            .map_err(|m| Error::explain(ErrorType::InternalError, m))?;
        // The spool the fill writes its chunk to as it arrives (a temp file of the store's).
        let spool = match self.store.spool(&chunk.id, chunk.len).await {
            Ok(spool) => spool,
            Err(e) => {
                tracing::warn!(chunk = %chunk.id, error = %e, "cannot create the fill's spool; it keeps its chunk in memory");
                None
            }
        };
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let flight = Arc::new(Flight::new(chunk, tag, permit, spool, &self.windows));
        // A fill of the chunk registered while this one waited: this writer must not replace
        // it, and reads it instead; its own flight, permit and spool go unused.
        if let Some(live) = self.claim_fill(&flight) {
            return Ok(self.joined_handler(live));
        }
        if let Some(spool) = &flight.spool {
            tokio::spawn(spool_flight(
                flight.clone(),
                spool.clone(),
                self.stall_timeout,
            ));
        }
        tracing::debug!(chunk = %flight.name, tag, spooled = flight.spool.is_some(), "fill registered");
        Ok(Box::new(ChunkMissHandler {
            storage: self,
            flight,
            tag: tag.to_be_bytes(),
            finished: false,
            joined: false,
        }))
    }

    async fn purge(
        &'static self,
        _target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        // Chunks are immutable and named by version; eviction is the store's business
        // (directory sweeps, bucket lifecycle rules). Nothing to purge in-process.
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

#[cfg(test)]
mod tests {
    //! The flight machinery driven through the `Storage` trait, as pingora-cache drives it,
    //! over an in-memory store. Time is paused: a reader that is never woken fails its
    //! `timeout` at once instead of hanging the test.
    use super::*;
    use crate::cachestore::mem::MemStore;
    use crate::chunk::ObjectVersion;
    use pingora_cache::trace::Span;
    use std::time::Duration;

    /// Long enough for any in-process step; with paused time it costs nothing.
    const WAIT: Duration = Duration::from_secs(60);
    /// The storage's stall timeout in these tests (longer than any test waits on purpose).
    const STALL: Duration = Duration::from_secs(30);

    fn chunk(size: u64, index: u64) -> Chunk {
        let version = ObjectVersion {
            origin_id: "o".into(),
            bucket: "b".into(),
            key: "k".into(),
            etag: "e".into(),
            size,
        };
        Chunk::new(Arc::new(version), 10, index).expect("inside the object")
    }

    fn storage(store: Arc<MemStore>, max_flights: usize) -> &'static ChunkStorage {
        Box::leak(Box::new(ChunkStorage::new(store, 64, max_flights, STALL)))
    }

    async fn miss_handler(storage: &'static ChunkStorage, chunk: &Chunk) -> MissHandler {
        let meta = chunk_meta(chunk.len).expect("meta");
        let span = Span::inactive().handle();
        tokio::time::timeout(
            WAIT,
            storage.get_miss_handler(&cache_key(chunk, true), &meta, &span),
        )
        .await
        .expect("a flight permit")
        .expect("a miss handler")
    }

    async fn read_all(reader: &mut Box<dyn ChunkRead>) -> std::result::Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        while let Some(p) = tokio::time::timeout(WAIT, reader.next_piece())
            .await
            .expect("no lost wake-up")?
        {
            out.extend_from_slice(&p);
        }
        Ok(out)
    }

    /// Waits (in paused time) until the background commit has landed and the flight left.
    async fn settle(storage: &ChunkStorage, chunk: &Chunk) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            if !storage.flights.lock().contains_key(&chunk.id) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("the flight never left the registry");
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_reader_gets_every_byte_and_commit_follows_the_last_one() {
        let store = Arc::new(MemStore::new());
        let storage = storage(store.clone(), 4);
        let c = chunk(25, 1);
        let mut writer = miss_handler(storage, &c).await;
        writer
            .write_body(Bytes::from_static(b"01234"), false)
            .await
            .unwrap();
        // Joins after the first piece, from an offset inside it.
        let mut late = storage.open(&c, 2, 10).await.expect("the flight").reader;
        let waiting = tokio::spawn(async move { read_all(&mut late).await });
        tokio::task::yield_now().await;
        writer
            .write_body(Bytes::from_static(b"56789"), true)
            .await
            .unwrap();
        assert_eq!(
            store.get(&c.id),
            None,
            "nothing is stored before the last byte"
        );
        writer.finish().await.unwrap();
        assert_eq!(waiting.await.unwrap().unwrap(), b"23456789");
        settle(storage, &c).await;
        assert_eq!(store.get(&c.id).as_deref(), Some(&b"0123456789"[..]));
        let mut hit = storage.open(&c, 0, 10).await.expect("stored").reader;
        assert_eq!(read_all(&mut hit).await.unwrap(), b"0123456789");
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_that_dies_fails_its_readers_and_frees_its_slot() {
        let store = Arc::new(MemStore::new());
        let storage = storage(store.clone(), 1);
        let c = chunk(25, 0);
        let mut writer = miss_handler(storage, &c).await;
        writer
            .write_body(Bytes::from_static(b"0123"), false)
            .await
            .unwrap();
        let mut reader = storage.open(&c, 0, 10).await.expect("the flight").reader;
        let waiting = tokio::spawn(async move { read_all(&mut reader).await });
        tokio::task::yield_now().await;
        drop(writer);
        assert!(
            waiting.await.unwrap().is_err(),
            "an error, never a clean end"
        );
        assert!(
            storage.open(&c, 0, 10).await.is_none(),
            "gone: the next caller refills"
        );
        assert_eq!(store.get(&c.id), None);
        // Its permit came back: with one permit, a new flight can start.
        let _again = miss_handler(storage, &c).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_fill_that_gets_no_flight_permit_fails_at_the_stall_timeout() {
        let store = Arc::new(MemStore::new());
        let storage = storage(store, 1);
        let held = chunk(25, 0);
        let _writer = miss_handler(storage, &held).await;
        // The only permit is held (a flight filling or committing): the next fill waits for
        // it no longer than the stall timeout, then fails; it never hangs.
        let other = chunk(25, 1);
        let meta = chunk_meta(other.len).expect("meta");
        let span = Span::inactive().handle();
        let started = tokio::time::Instant::now();
        let waited = tokio::time::timeout(
            STALL * 2,
            storage.get_miss_handler(&cache_key(&other, true), &meta, &span),
        )
        .await
        .expect("the wait has a deadline");
        let e = waited.err().expect("no permit, no miss handler");
        assert!(e.to_string().contains("no fill slot free"), "{e}");
        assert_eq!(started.elapsed(), STALL, "failed at the stall timeout");
        assert!(!storage.flights.lock().contains_key(&other.id));
    }

    #[tokio::test(start_paused = true)]
    async fn wrong_lengths_are_never_stored() {
        let store = Arc::new(MemStore::new());
        let storage = storage(store.clone(), 1);
        let c = chunk(25, 2); // 5 bytes
        let mut writer = miss_handler(storage, &c).await;
        assert!(writer
            .write_body(Bytes::from_static(b"012345"), false)
            .await
            .is_err());
        writer
            .write_body(Bytes::from_static(b"0123"), true)
            .await
            .unwrap();
        let mut reader = storage.open(&c, 0, 5).await.expect("the flight").reader;
        assert!(writer.finish().await.is_err(), "4 of 5 bytes");
        assert!(read_all(&mut reader).await.is_err());
        assert_eq!(store.get(&c.id), None);
        let _again = miss_handler(storage, &c).await; // the permit is back
    }

    #[tokio::test(start_paused = true)]
    async fn the_flight_serves_until_its_commit_lands_and_holds_its_permit() {
        let store = Arc::new(MemStore::gated(0));
        let storage = storage(store.clone(), 1);
        let (a, b) = (chunk(25, 0), chunk(25, 1));
        let mut writer = miss_handler(storage, &a).await;
        writer
            .write_body(Bytes::from_static(b"0123456789"), true)
            .await
            .unwrap();
        writer.finish().await.unwrap();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        // The commit is held: the chunk is still served from memory, never missing.
        let hit = storage
            .open(&a, 0, 10)
            .await
            .expect("served while committing");
        assert_eq!(hit.source, ChunkSource::Memory);
        // The committing flight still holds the only permit: a second fill waits.
        let meta = chunk_meta(b.len).unwrap();
        let span = Span::inactive().handle();
        let key = cache_key(&b, true);
        let blocked = tokio::time::timeout(
            Duration::from_secs(1),
            storage.get_miss_handler(&key, &meta, &span),
        )
        .await;
        assert!(blocked.is_err(), "memory is bounded by the flight permits");
        store.open_gate(1);
        settle(storage, &a).await;
        let hit = storage.open(&a, 0, 10).await.expect("stored");
        assert_eq!(hit.source, ChunkSource::CacheStore);
        let _b = miss_handler(storage, &b).await; // the permit came back with the commit
    }

    #[tokio::test(start_paused = true)]
    async fn a_cold_miss_asks_the_store_once() {
        let store = Arc::new(MemStore::new());
        let storage = storage(store.clone(), 4);
        let c = chunk(25, 0);
        let span = Span::inactive().handle();
        assert!(storage.open(&c, 0, 10).await.is_none()); // the edge's lookup
        assert!(storage
            .lookup(&cache_key(&c, true), &span)
            .await
            .unwrap()
            .is_none()); // the fill's
        assert!(storage.open_for_fill(&c, true).await.is_none()); // the writer's re-check
        assert_eq!(store.reads.load(Ordering::Relaxed), 1);
        // A commit by this replica voids the recorded miss at once.
        let mut writer = miss_handler(storage, &c).await;
        writer
            .write_body(Bytes::from_static(b"0123456789"), true)
            .await
            .unwrap();
        writer.finish().await.unwrap();
        settle(storage, &c).await;
        assert!(storage.open_for_fill(&c, true).await.is_some());
        // And a recorded miss is trusted only briefly.
        let d = chunk(25, 1);
        assert!(storage.open(&d, 0, 10).await.is_none());
        tokio::time::advance(super::super::catalog::MISS_TTL).await;
        let before = store.reads.load(Ordering::Relaxed);
        assert!(storage.open_for_fill(&d, true).await.is_none());
        assert_eq!(store.reads.load(Ordering::Relaxed), before + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_of_a_stalled_writer_gives_up_instead_of_waiting_forever() {
        let store = Arc::new(MemStore::new());
        let storage = storage(store.clone(), 4);
        let c = chunk(25, 0);
        let mut writer = miss_handler(storage, &c).await;
        writer
            .write_body(Bytes::from_static(b"0123"), false)
            .await
            .unwrap();
        // The writer stays alive but sends nothing more (its own downstream stopped reading).
        let mut reader = storage.open(&c, 0, 10).await.expect("the flight").reader;
        assert_eq!(
            reader.next_piece().await.unwrap().as_deref(),
            Some(&b"0123"[..])
        );
        let next = tokio::time::timeout(STALL * 2, reader.next_piece())
            .await
            .expect("the reader's own deadline fires first");
        assert!(
            next.is_err(),
            "a stall is an error, never a hang or a clean end"
        );
        drop(writer);
    }

    #[tokio::test(start_paused = true)]
    async fn a_length_only_a_requester_vouches_for_never_deletes_a_stored_chunk() {
        let store = Arc::new(MemStore::new());
        let storage = storage(store.clone(), 4);
        let good = chunk(25, 2); // 5 bytes
        store
            .commit(&good.id, vec![Bytes::from_static(b"01234")], 5)
            .await
            .unwrap();
        // The same chunk named with another object size (a bogus fill request: 27 bytes).
        let version = ObjectVersion {
            size: 27,
            ..(*good.version).clone()
        };
        let bogus = Chunk::new(Arc::new(version), 10, 2).unwrap();
        assert_eq!((bogus.id.clone(), bogus.len), (good.id.clone(), 7));
        assert!(storage.open_for_fill(&bogus, false).await.is_none());
        assert_eq!(
            store.get(&good.id).as_deref(),
            Some(&b"01234"[..]),
            "left in place"
        );
        let mut hit = storage.open(&good, 0, 5).await.expect("still a hit").reader;
        assert_eq!(read_all(&mut hit).await.unwrap(), b"01234");
        // A length this replica vouches for does quarantine a wrong-length chunk.
        assert!(storage.open(&bogus, 0, 7).await.is_none());
        assert_eq!(store.get(&good.id), None);
    }

    // Spooled fills, over a real `fs` store in a temp directory (real time: the spool writes
    // on the blocking pool).

    /// A chunk of `len` bytes (one chunk of an object of that size).
    fn big_chunk(len: u64) -> Chunk {
        let version = ObjectVersion {
            origin_id: "o".into(),
            bucket: "b".into(),
            key: "big".into(),
            etag: "e".into(),
            size: len,
        };
        Chunk::new(Arc::new(version), len, 0).expect("one chunk")
    }

    fn byte(i: u64) -> u8 {
        (i % 251) as u8
    }

    fn fs_storage(
        dir: &std::path::Path,
    ) -> (&'static ChunkStorage, Arc<super::super::fs::FsStore>) {
        fs_storage_with(dir, 4)
    }

    /// An `fs` store's storage with `max_flights` flight permits.
    fn fs_storage_with(
        dir: &std::path::Path,
        max_flights: usize,
    ) -> (&'static ChunkStorage, Arc<super::super::fs::FsStore>) {
        // Bounded by its own size alone: with the default `min_free` a machine whose disk runs
        // nearly full would refuse every commit.
        let limits = crate::config::FsLimits {
            max_size: Some(1 << 30),
            min_free: crate::config::SizeOrPercent::Size(0),
            ..Default::default()
        };
        let store = Arc::new(super::super::fs::FsStore::open(dir, &limits).unwrap());
        let storage = Box::leak(Box::new(ChunkStorage::new(
            store.clone(),
            64,
            max_flights,
            STALL,
        )));
        (storage, store)
    }

    /// The temp files of the store at `root` (its instance directories, locks aside).
    fn temp_files(root: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        for d in std::fs::read_dir(root.join("tmp")).unwrap().flatten() {
            for f in std::fs::read_dir(d.path()).unwrap().flatten() {
                let name = f.file_name().to_string_lossy().to_string();
                if name != ".lock" {
                    out.push(name);
                }
            }
        }
        out
    }

    fn held(flight: &Flight) -> u64 {
        let s = flight.state.lock();
        s.len - s.base
    }

    /// A chunk of `len` bytes of its own object `key`.
    fn keyed_chunk(key: &str, len: u64) -> Chunk {
        let version = ObjectVersion {
            origin_id: "o".into(),
            bucket: "b".into(),
            key: key.into(),
            etag: "e".into(),
            size: len,
        };
        Chunk::new(Arc::new(version), len, 0).expect("one chunk")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_spooling_fills_share_the_window_memory() {
        const FILLS: u64 = SHARED_WINDOWS / MIN_WINDOW; // 64: each at the smallest window
        const PIECE_LEN: u64 = 64 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let (storage, store) = fs_storage_with(dir.path(), FILLS as usize);
        let len = FLIGHT_WINDOW + 3 * PIECE_LEN + 12345;
        let mut fills = Vec::new();
        for i in 0..FILLS {
            let c = keyed_chunk(&format!("many-{i}"), len);
            let writer = miss_handler(storage, &c).await;
            let flight = storage.flights.lock().get(&c.id).cloned().unwrap();
            // A reader that joins at once and reads nothing until the fill is done: by then
            // most of the chunk is only in the spool.
            let behind = storage.open(&c, 0, len).await.expect("the flight").reader;
            fills.push((c, writer, flight, behind));
        }
        assert_eq!(storage.windows.window(), MIN_WINDOW);
        let flights: Arc<Vec<Arc<Flight>>> = Arc::new(fills.iter().map(|f| f.2.clone()).collect());
        // What every flight holds together: the shared total, plus the origin piece each one
        // may have appended beyond its window.
        let bound = SHARED_WINDOWS + FILLS * PIECE_LEN;
        let total = |flights: &[Arc<Flight>]| flights.iter().map(|f| held(f)).sum::<u64>();
        // All write at once, and all but their last piece before any finishes (so none has
        // left the registry and given its window back).
        let barrier = Arc::new(tokio::sync::Barrier::new(FILLS as usize));
        let mut tasks = Vec::new();
        for (i, (c, mut writer, flight, mut reader)) in fills.into_iter().enumerate() {
            let (flights, barrier) = (flights.clone(), barrier.clone());
            // Half the readers keep up with their writer; the other half read only once the
            // fill is done.
            let (live, behind) = if i % 2 == 0 {
                let live = tokio::spawn(async move { read_all(&mut reader).await });
                (Some(live), None)
            } else {
                (None, Some(reader))
            };
            tasks.push(tokio::spawn(async move {
                let (mut at, mut peak) = (0, 0);
                while at < len {
                    let n = PIECE_LEN.min(len - at);
                    let last = at + n == len;
                    if last {
                        barrier.wait().await;
                        peak = peak.max(total(&flights));
                    }
                    let data: Vec<u8> = (at..at + n).map(byte).collect();
                    tokio::time::timeout(WAIT, writer.write_body(Bytes::from(data), last))
                        .await
                        .expect("the spool keeps up")
                        .unwrap();
                    at += n;
                    let own = held(&flight);
                    assert!(own <= MIN_WINDOW + PIECE_LEN, "{own} bytes held after {at}");
                    peak = peak.max(total(&flights));
                }
                tokio::time::timeout(WAIT, writer.finish())
                    .await
                    .unwrap()
                    .unwrap();
                (c, peak, live, behind)
            }));
        }
        let want: Vec<u8> = (0..len).map(byte).collect();
        let mut done = Vec::new();
        for task in tasks {
            let (c, peak, live, behind) = task.await.unwrap();
            assert!(
                peak <= bound,
                "{peak} bytes held by {FILLS} fills, over {bound}"
            );
            let got = match (live, behind) {
                (Some(live), _) => live.await.unwrap().unwrap(),
                (None, Some(mut behind)) => read_all(&mut behind).await.unwrap(),
                (None, None) => unreachable!(),
            };
            assert!(got == want, "a reader of {} got other bytes", c.id);
            done.push(c);
        }
        for c in &done {
            settle(storage, c).await;
            let stored = std::fs::read(store.chunk_path(&c.id)).unwrap();
            assert!(stored == want, "{} stored other bytes", c.id);
        }
        assert_eq!(
            storage.windows.spooling.load(Ordering::Relaxed),
            0,
            "committed fills give their windows back"
        );
    }

    /// Writes `len` bytes in pieces of `piece`, checking after each that the flight holds at
    /// most its window (and the piece just appended).
    async fn write_spooled(writer: &mut MissHandler, flight: &Flight, len: u64, piece: u64) {
        write_within(writer, flight, 0..len, piece, FLIGHT_WINDOW).await;
    }

    /// Writes the chunk's bytes `range` (to its end) in pieces of `piece`, checking after each
    /// that the flight holds at most `window` and the piece just appended.
    async fn write_within(
        writer: &mut MissHandler,
        flight: &Flight,
        range: std::ops::Range<u64>,
        piece: u64,
        window: u64,
    ) {
        let mut at = range.start;
        while at < range.end {
            let n = piece.min(range.end - at);
            let data: Vec<u8> = (at..at + n).map(byte).collect();
            tokio::time::timeout(
                WAIT,
                writer.write_body(Bytes::from(data), at + n == range.end),
            )
            .await
            .expect("the spool keeps up")
            .unwrap();
            at += n;
            assert!(
                held(flight) <= window + piece,
                "{} bytes held after {at}",
                held(flight)
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spooled_fill_holds_its_window_and_readers_behind_it_read_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, store) = fs_storage(dir.path());
        let len = 8 * FLIGHT_WINDOW + 12345;
        let c = big_chunk(len);
        let mut writer = miss_handler(storage, &c).await;
        let flight = storage.flights.lock().get(&c.id).cloned().unwrap();
        assert!(flight.spool.is_some(), "the fs store spools");
        // A reader that joins at once but reads nothing until the end (a stalled client).
        let mut stalled = storage.open(&c, 0, len).await.expect("the flight").reader;
        write_spooled(&mut writer, &flight, len, 64 * 1024).await;
        // A reader joining late, from inside the part that is only in the spool.
        let mut late = storage
            .open(&c, 1000, len - 7)
            .await
            .expect("the flight")
            .reader;
        let late_bytes = read_all(&mut late).await.unwrap();
        assert_eq!(late_bytes, (1000..len - 7).map(byte).collect::<Vec<_>>());
        tokio::time::timeout(WAIT, writer.finish())
            .await
            .unwrap()
            .unwrap();
        // Committed from the spool: the stored chunk is exact, no temp file is left once the
        // flight's readers are done.
        settle(storage, &c).await;
        assert_eq!(
            held(&flight),
            0,
            "a committed flight's readers hold no memory"
        );
        let stalled_bytes = read_all(&mut stalled).await.unwrap();
        assert_eq!(stalled_bytes, (0..len).map(byte).collect::<Vec<_>>());
        let stored = std::fs::read(store.chunk_path(&c.id)).unwrap();
        assert_eq!(stored.len() as u64, len);
        assert!(stored == (0..len).map(byte).collect::<Vec<_>>());
        drop((stalled, late, flight));
        assert_eq!(temp_files(dir.path()), Vec::<String>::new());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_window_that_shrinks_under_a_full_writer_never_stalls_it() {
        const PIECE_LEN: u64 = 64 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let fills = (SHARED_WINDOWS / MIN_WINDOW) as usize;
        let (storage, store) = fs_storage_with(dir.path(), fills);
        let len = 2 * FLIGHT_WINDOW;
        let c = keyed_chunk("shrinks", len);
        let mut writer = miss_handler(storage, &c).await;
        let flight = storage.flights.lock().get(&c.id).cloned().unwrap();
        // Alone, it has the whole window: three quarters of it, all spooled by now, are held.
        let mut at = 0;
        while at < 3 * FLIGHT_WINDOW / 4 {
            let data: Vec<u8> = (at..at + PIECE_LEN).map(byte).collect();
            writer.write_body(Bytes::from(data), false).await.unwrap();
            at += PIECE_LEN;
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        while flight.state.lock().spooled < at {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the spool never caught up"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(held(&flight) >= FLIGHT_WINDOW / 2);
        // Then many more fills begin: its window shrinks under what it holds, and its spool
        // has nothing left to write.
        let mut others = Vec::new();
        for i in 1..fills {
            others.push(miss_handler(storage, &keyed_chunk(&format!("other-{i}"), len)).await);
        }
        assert_eq!(flight.window(), MIN_WINDOW);
        // The writer finds its window full: it drops what is spooled rather than wait for a
        // spool write that never comes (the stall deadline is the only other way out).
        tokio::time::timeout(Duration::from_secs(5), flight.wait_for_room(STALL))
            .await
            .expect("no wait for the spool")
            .unwrap();
        assert!(held(&flight) < MIN_WINDOW);
        // And the fill goes on in its small window to the end; a reader gets every byte.
        let mut reader = storage.open(&c, 0, len).await.expect("the flight").reader;
        write_within(&mut writer, &flight, at..len, PIECE_LEN, MIN_WINDOW).await;
        writer.finish().await.unwrap();
        assert_eq!(
            read_all(&mut reader).await.unwrap(),
            (0..len).map(byte).collect::<Vec<_>>()
        );
        settle(storage, &c).await;
        assert!(store.chunk_path(&c.id).exists());
        drop(others);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spooled_fill_that_dies_stores_nothing_and_removes_its_spool() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, store) = fs_storage(dir.path());
        let len = 4 * FLIGHT_WINDOW;
        let c = big_chunk(len);
        let mut writer = miss_handler(storage, &c).await;
        let flight = storage.flights.lock().get(&c.id).cloned().unwrap();
        let mut reader = storage.open(&c, 0, len).await.expect("the flight").reader;
        // Most of the chunk, much of it only in the spool by now; then the origin fails.
        write_spooled(&mut writer, &flight, 3 * FLIGHT_WINDOW, 64 * 1024).await;
        drop(writer);
        assert!(
            read_all(&mut reader).await.is_err(),
            "an error, never a clean end"
        );
        assert!(
            storage.open(&c, 0, len).await.is_none(),
            "the next reader refills"
        );
        assert!(!store.chunk_path(&c.id).exists(), "nothing stored");
        assert_eq!(held(&flight), 0, "a failed flight holds no memory");
        drop((reader, flight));
        // The spool task lets go of the flight once it sees the failure.
        for _ in 0..1000 {
            if temp_files(dir.path()).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            temp_files(dir.path()),
            Vec::<String>::new(),
            "the spool is removed"
        );
    }

    /// The bytes `a..b` of a `big_chunk`.
    fn bytes_of(a: u64, b: u64) -> Vec<Bytes> {
        vec![Bytes::from((a..b).map(byte).collect::<Vec<u8>>())]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sub_range_fill_serves_each_part_as_it_lands_and_commits_once_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, store) = fs_storage(dir.path());
        let len = 3 * FLIGHT_WINDOW;
        let c = big_chunk(len);
        let (fill, mut own) = match storage.begin_sparse(&c, (len - 100, len)).await.unwrap() {
            SparseBegin::Started(fill, hit) => (fill, hit.reader),
            _ => panic!("a new fill"),
        };
        // A second caller joins; so does the edge's lookup.
        let mut joined = match storage.begin_sparse(&c, (0, len)).await.unwrap() {
            SparseBegin::Joined(hit) => hit.reader,
            _ => panic!("joins the fill in flight"),
        };
        // The tail first: the requester reads it while the front is still missing.
        fill.write_at(len - FLIGHT_WINDOW, bytes_of(len - FLIGHT_WINDOW, len))
            .await
            .unwrap();
        assert_eq!(
            read_all(&mut own).await.unwrap(),
            (len - 100..len).map(byte).collect::<Vec<_>>()
        );
        let front = tokio::time::timeout(Duration::from_millis(50), joined.next_piece()).await;
        assert!(front.is_err(), "byte 0 is not there yet: the reader waits");
        // Each range once.
        assert!(fill
            .write_at(len - 10, bytes_of(len - 10, len))
            .await
            .is_err());
        fill.write_at(0, bytes_of(0, len - FLIGHT_WINDOW))
            .await
            .unwrap();
        assert!(
            !store.chunk_path(&c.id).exists(),
            "nothing stored before the end"
        );
        fill.finish().unwrap();
        assert_eq!(
            read_all(&mut joined).await.unwrap(),
            (0..len).map(byte).collect::<Vec<_>>()
        );
        settle(storage, &c).await;
        let stored = std::fs::read(store.chunk_path(&c.id)).unwrap();
        assert!(stored == (0..len).map(byte).collect::<Vec<_>>());
    }

    async fn read_hit(body: &mut HitHandler) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(p) = tokio::time::timeout(WAIT, body.read_body())
            .await
            .expect("no lost wake-up")
            .unwrap()
        {
            out.extend_from_slice(&p);
        }
        out
    }

    /// An in-order fill of a chunk that a sub-range fill is filling reads that fill at once:
    /// it waits for no flight permit (all of them may be held, here the only one by that very
    /// fill) and creates no spool. Seen failing before the check came first: the handler
    /// waited the whole stall timeout for the permit, then failed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_in_order_fill_of_a_chunk_in_flight_joins_it_without_a_permit() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, store) = fs_storage_with(dir.path(), 1);
        let len = 2 * FLIGHT_WINDOW;
        let c = big_chunk(len);
        let fill = match storage.begin_sparse(&c, (0, len)).await.unwrap() {
            SparseBegin::Started(fill, _) => fill,
            _ => panic!("a new fill"),
        };
        assert_eq!(storage.flight_permits.available_permits(), 0);
        let meta = chunk_meta(len).expect("meta");
        let span = Span::inactive().handle();
        let late = tokio::time::timeout(
            STALL / 4,
            storage.get_miss_handler(&cache_key(&c, true), &meta, &span),
        )
        .await
        .expect("no wait for a flight permit")
        .expect("a miss handler");
        let sparse = storage.flights.lock().get(&c.id).cloned().unwrap();
        assert_eq!(
            late.streaming_write_tag(),
            Some(&sparse.tag.to_be_bytes()[..])
        );
        assert_eq!(
            temp_files(dir.path()).len(),
            1,
            "one spool: the sub-range fill's"
        );
        drop(late);
        fill.write_at(0, bytes_of(0, len)).await.unwrap();
        fill.finish().unwrap();
        settle(storage, &c).await;
        let all: Vec<u8> = (0..len).map(byte).collect();
        assert!(std::fs::read(store.chunk_path(&c.id)).unwrap() == all);
    }

    /// The two fill paths race for one chunk: whichever claims it first is its one flight, the
    /// other reads that flight, and no writer ever replaces or removes another's live flight.
    /// Seen failing before `claim_fill`: the in-order fill's miss handler replaced the
    /// sub-range fill in the registry (every later reader read the in-order fill, and the
    /// sub-range fill's bytes were fetched twice).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_live_flight_per_chunk_whichever_fill_path_claims_it_first() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, store) = fs_storage(dir.path());
        let span = Span::inactive().handle();
        let len = 2 * FLIGHT_WINDOW;
        let all: Vec<u8> = (0..len).map(byte).collect();
        let registered = |c: &Chunk| storage.flights.lock().get(&c.id).cloned().unwrap();

        // A sub-range fill first; then the in-order path's miss handler.
        let c = big_chunk(len);
        let fill = match storage.begin_sparse(&c, (0, len)).await.unwrap() {
            SparseBegin::Started(fill, _) => fill,
            _ => panic!("a new fill"),
        };
        let sparse = registered(&c);
        let mut late = miss_handler(storage, &c).await;
        assert!(
            Arc::ptr_eq(&registered(&c), &sparse),
            "the in-order fill replaced the sub-range fill in flight"
        );
        // Its downstream reads the sub-range fill (its write tag is that flight's).
        assert_eq!(
            late.streaming_write_tag(),
            Some(&sparse.tag.to_be_bytes()[..])
        );
        let (_, mut body) = storage
            .lookup_streaming_write(&cache_key(&c, true), late.streaming_write_tag(), &span)
            .await
            .unwrap()
            .expect("the sub-range fill");
        // The origin bytes it is given go nowhere, and its end (here: its origin GET broke)
        // neither ends nor fails the flight it reads.
        late.write_body(Bytes::from(vec![0u8; 10]), false)
            .await
            .unwrap();
        drop(late);
        assert!(
            !sparse.failed(),
            "the in-order fill failed the sub-range fill"
        );
        assert!(Arc::ptr_eq(&registered(&c), &sparse));
        fill.write_at(0, bytes_of(0, len)).await.unwrap();
        fill.finish().unwrap();
        assert!(read_hit(&mut body).await == all);
        settle(storage, &c).await;
        assert!(std::fs::read(store.chunk_path(&c.id)).unwrap() == all);

        // An in-order fill first: a sub-range fill joins it, and so does a second in-order
        // writer (one whose cache lock timed out on the first).
        let d = big_chunk(len + 1);
        let mut first = miss_handler(storage, &d).await;
        let in_order = registered(&d);
        assert!(matches!(
            storage.begin_sparse(&d, (0, len + 1)).await.unwrap(),
            SparseBegin::Joined(_)
        ));
        let second = miss_handler(storage, &d).await;
        assert!(Arc::ptr_eq(&registered(&d), &in_order));
        drop(second);
        assert!(
            !in_order.failed(),
            "a joined writer ended the flight it read"
        );
        write_spooled(&mut first, &in_order, len + 1, 64 * 1024).await;
        first.finish().await.unwrap();
        settle(storage, &d).await;
        assert!(store.chunk_path(&d.id).exists());

        // A failed flight still in the registry is replaced, and its writer, ending after
        // that, never removes the newer flight.
        let e = big_chunk(len + 2);
        let old = miss_handler(storage, &e).await;
        let old_flight = registered(&e);
        old_flight.finish(FlightStatus::Failed("its origin GET broke".into()));
        let newer = match storage.begin_sparse(&e, (0, len + 2)).await.unwrap() {
            SparseBegin::Started(fill, _) => fill,
            _ => panic!("a failed flight is never joined"),
        };
        let newer_flight = registered(&e);
        assert!(!Arc::ptr_eq(&newer_flight, &old_flight));
        drop(old);
        assert!(
            Arc::ptr_eq(&registered(&e), &newer_flight),
            "an older writer removed a newer flight"
        );
        drop(newer);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sub_range_fill_that_ends_short_or_dies_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, store) = fs_storage(dir.path());
        let len = 2 * FLIGHT_WINDOW;
        let c = big_chunk(len);
        for finish in [true, false] {
            let (fill, _) = match storage.begin_sparse(&c, (0, len)).await.unwrap() {
                SparseBegin::Started(fill, hit) => (fill, hit),
                _ => panic!("a new fill"),
            };
            let mut reader = storage.open(&c, 0, len).await.expect("the flight").reader;
            fill.write_at(0, bytes_of(0, len - 1)).await.unwrap();
            if finish {
                assert!(fill.finish().is_err(), "one byte short");
            } else {
                drop(fill);
            }
            assert!(
                read_all(&mut reader).await.is_err(),
                "an error, never a clean end"
            );
            assert!(
                storage.open(&c, 0, len).await.is_none(),
                "the next reader refills"
            );
            assert!(!store.chunk_path(&c.id).exists());
        }
        assert_eq!(
            temp_files(dir.path()),
            Vec::<String>::new(),
            "no spool left"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spooled_fill_of_the_wrong_length_is_never_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, store) = fs_storage(dir.path());
        let len = 2 * FLIGHT_WINDOW;
        let c = big_chunk(len);
        let mut writer = miss_handler(storage, &c).await;
        let flight = storage.flights.lock().get(&c.id).cloned().unwrap();
        write_spooled(&mut writer, &flight, len - 1, 64 * 1024).await;
        assert!(writer.finish().await.is_err(), "one byte short");
        assert!(!store.chunk_path(&c.id).exists());
        assert!(storage.open(&c, 0, len).await.is_none());
    }
}
