//! The chunk pipeline of one GET: the chunks of the client's range, fetched in parallel up to
//! `chunking.readahead` ahead of the one being sent, delivered strictly in order.
//!
//! Memory: every started chunk holds a reservation from the process-wide read-ahead budget
//! (`limits.readahead_memory`) for the bytes it may buffer, until it has been sent. A chunk
//! read ahead reserves its whole slice: its bytes come as fast as its source gives them. The
//! chunk being sent next (the *head*) reserves at most [`HEAD_WINDOW`]: its reader passes on
//! no more than that ahead of the client, whatever the source (a hit in a RAM tier reserves
//! the chunk it keeps alive). The head waits for its reservation; chunks ahead of it start only
//! when the budget has room at once *and* a whole largest chunk stays free after them, so
//! read-ahead (which a slow client may hold for long) never starves another request's head,
//! and the process never buffers more than the budget however many clients there are.
//!
//! A hit that gains nothing from reading ahead (a local-disk store, or a fill in flight whose
//! bytes are already in memory) is opened ahead and its first piece read, then handed to the
//! pipeline, which reads the rest as the client takes it.
//!
//! The last chunk of a range, when it is the one to send next, the store holds it and it is
//! read on demand (the usual warm GET of a small object: one chunk in the `fs` store), is
//! opened and its first piece read in the request's own task: no task is spawned and no
//! channel made for it (issue 15). Everything else (misses, fills in flight, hits read ahead,
//! the chunks of a range before its last) gets a task of its own, so chunks arrive in
//! parallel.

use super::EdgeShared;
use crate::cachestore::storage::ChunkHit;
use crate::cachestore::StoreError;
use crate::chunk::{chunk_span, slice_in_chunk, ByteRange, Chunk, ChunkId, ObjectVersion};
use crate::error::S3Error;
use crate::fill::{FillBody, FillError, PieceSink};
use crate::metrics::{ChunkSource, FILL_JOINS, PEER_FILLS, READAHEAD_WAIT_TIMEOUTS};
use crate::origin::OriginError;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

/// Why a range's bytes stopped coming.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PipelineError {
    /// The object's or the origin's failure (as a fill service reported it, or the fill
    /// client's own: no answer, a broken body).
    #[error(transparent)]
    Origin(#[from] OriginError),
    /// No read-ahead budget came free within `limits.readahead_wait`: the replica is busy
    /// (503 SlowDown before the first byte, as S3 asks clients to back off).
    #[error("no read-ahead memory free within {0:?}")]
    Busy(std::time::Duration),
    /// This replica's fill service had no origin fill slot free within its deadline (the
    /// cache-lock timeout): 503 SlowDown before the first byte, as for [`PipelineError::Busy`].
    #[error("no origin fill slot free in time")]
    FillBusy,
    /// The cache store failed in the middle of a chunk it had started to serve.
    #[error("reading chunk {chunk} from the cache store: {source}")]
    Store {
        /// The chunk's name.
        chunk: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
}

impl PipelineError {
    /// The S3 error a client sees when this happens before its first byte.
    pub(crate) fn to_s3(&self) -> S3Error {
        match self {
            PipelineError::Origin(e) => e.to_s3(),
            PipelineError::Busy(_) => S3Error::slow_down(
                "Please reduce your request rate: the cache is short of read-ahead memory.",
            ),
            PipelineError::FillBusy => S3Error::slow_down(
                "Please reduce your request rate: no origin fill slot came free in time.",
            ),
            PipelineError::Store { .. } => S3Error::internal(self.to_string()),
        }
    }
}

/// A piece of chunk bytes or the reason the chunk failed.
type PieceResult = Result<Bytes, PipelineError>;

/// The budget is counted in KiB so a `u32` reservation covers any chunk size.
pub fn budget_units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

/// The most bytes the reader of the chunk being sent next passes on ahead of the client (four
/// store pieces, as a fill's window): what the head chunk reserves from the read-ahead budget,
/// so a request waiting for its first byte holds this much, not a whole chunk (128 MiB in the
/// default ladder's last tier, which let only 8 cold GETs of large objects start at once with
/// the default budget). Its source is read at the client's pace: a peer's fill service goes on
/// filling while its write to this replica waits, and a shared store's read is a stream.
pub const HEAD_WINDOW: u64 = 1 << 20;

/// The sending half of a chunk's pieces. A chunk read ahead sends without bound (its
/// reservation covers its whole slice); the head sends at most its window ahead of the client:
/// each piece takes its size (in budget units, at most the whole window) from `window`, given
/// back when the pipeline takes the piece ([`PieceRx::recv`]).
struct PieceTx {
    tx: UnboundedSender<PieceResult>,
    window: Option<Window>,
}

/// A head chunk's window between its reader task and the pipeline.
#[derive(Clone)]
struct Window {
    room: Arc<Semaphore>,
    /// Its size in budget units: a piece larger than the window takes all of it.
    units: u32,
}

impl Window {
    fn units_of(&self, piece: &Bytes) -> u32 {
        budget_units(piece.len() as u64).min(self.units)
    }
}

impl PieceTx {
    /// Passes on a failure (never held back: the pipeline stops at it).
    fn fail(&self, e: PipelineError) {
        let _ = self.tx.send(Err(e));
    }
}

impl crate::fill::PieceSink for PieceTx {
    async fn put(&self, piece: Bytes) -> bool {
        if let Some(window) = &self.window {
            // No deadline of its own: the pipeline takes pieces as its client does, and a
            // client that stops is ended by its write timeout, which drops the pipeline and
            // aborts this task.
            match window.room.acquire_many(window.units_of(&piece)).await {
                Ok(taken) => taken.forget(),
                Err(_) => return false,
            }
        }
        self.tx.send(Ok(piece)).is_ok()
    }
}

/// The receiving half of a chunk's pieces.
struct PieceRx {
    rx: UnboundedReceiver<PieceResult>,
    window: Option<Window>,
}

impl PieceRx {
    async fn recv(&mut self) -> Option<PieceResult> {
        let got = self.rx.recv().await;
        if let (Some(Ok(piece)), Some(window)) = (&got, &self.window) {
            window.room.add_permits(window.units_of(piece) as usize);
        }
        got
    }
}

impl Drop for PieceRx {
    fn drop(&mut self) {
        // A reader waiting for room learns at once that no one takes its pieces any more.
        if let Some(window) = &self.window {
            window.room.close();
        }
    }
}

/// A chunk's piece channel: bounded by a window of `window` bytes, or without bound (`None`).
fn piece_channel(window: Option<u64>) -> (PieceTx, PieceRx) {
    let (tx, rx) = unbounded_channel();
    let window = window.map(|bytes| {
        let units = budget_units(bytes).max(1);
        Window {
            room: Arc::new(Semaphore::new(units as usize)),
            units,
        }
    });
    (
        PieceTx {
            tx,
            window: window.clone(),
        },
        PieceRx { rx, window },
    )
}

struct Running {
    /// The chunk, named in errors.
    id: ChunkId,
    /// A piece read already, sent before anything else (the first piece of a hit opened in
    /// the request's task).
    first: Option<Bytes>,
    /// The chunk's own reader task; `None` for a hit opened in the request's task.
    spawned: Option<Spawned>,
    /// The on-demand hit once handed over: the rest of the chunk is read from it.
    hit: Option<ChunkHit>,
    /// This chunk's share of the read-ahead budget, held while its bytes may be buffered:
    /// returned as soon as the chunk is an on-demand hit (read as the client takes it).
    reservation: Option<OwnedSemaphorePermit>,
}

/// A chunk's reader task and what it hands back.
struct Spawned {
    rx: PieceRx,
    /// An on-demand hit, handed over before `rx` closes.
    hit_rx: oneshot::Receiver<ChunkHit>,
    task: JoinHandle<()>,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // A client that went away stops its reads; fills already asked of the fill service
        // finish there and are stored.
        self.task.abort();
    }
}

/// What the pipeline learnt of a chunk in the store before it started the chunk's task.
enum Looked {
    /// Nothing: the task looks.
    No,
    /// The store (or a fill in flight) has it, opened: the task reads it.
    Hit(ChunkHit),
    /// A miss, or a store read that failed before its first byte: the task fills.
    Miss,
}

/// Keeps of a chunk's reservation only what its hit's reader may hold ahead of the client (an
/// in-process stream's buffer, a RAM tier's chunk; nothing for a flight or a store read). The
/// reservation always covers that: a chunk read ahead reserved its whole slice, and the head
/// opens a RAM tier hit only when it reserved for one
/// ([`crate::cachestore::storage::ChunkStorage::in_ram`]).
fn shrink(
    reservation: Option<OwnedSemaphorePermit>,
    hit: &ChunkHit,
) -> Option<OwnedSemaphorePermit> {
    let keep = budget_units(hit.buffered) as usize;
    debug_assert!(
        keep <= reservation
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits),
        "a hit holds more than its chunk reserved"
    );
    reservation.and_then(|mut r| {
        if keep == 0 {
            None
        } else {
            r.split(keep.min(r.num_permits()))
        }
    })
}

/// Opens bytes `[from, to)` of `chunk` in the storage; in the RAM tier too only with `ram` (the
/// chunk's reservation covers the slice a RAM tier reader keeps alive).
async fn open_chunk(
    edge: &EdgeShared,
    chunk: &Chunk,
    (from, to): (u64, u64),
    ram: bool,
) -> Option<ChunkHit> {
    let storage = &edge.orca.storage;
    if ram {
        storage.open(chunk, from, to).await
    } else {
        storage.open_outside_ram(chunk, from, to).await
    }
}

/// Waits for `units` of the read-ahead budget, at most `limits.readahead_wait`.
async fn wait_for_budget(
    edge: &EdgeShared,
    units: u32,
) -> Result<OwnedSemaphorePermit, PipelineError> {
    let wait = edge.orca.config.limits.readahead_wait;
    let budget = edge.readahead_budget.clone();
    match tokio::time::timeout(wait, budget.acquire_many_owned(units)).await {
        Ok(permit) => permit.map_err(|_| OriginError::Transient("shutting down".into()).into()),
        Err(_) => {
            READAHEAD_WAIT_TIMEOUTS.inc();
            Err(PipelineError::Busy(wait))
        }
    }
}

/// The ordered stream of a range's bytes.
pub struct Pipeline {
    edge: Arc<EdgeShared>,
    version: Arc<ObjectVersion>,
    chunk_size: u64,
    range: ByteRange,
    next_index: u64,
    last_index: u64,
    readahead: usize,
    /// Budget units that read-ahead must leave free for other requests' current chunks.
    reserve: usize,
    queue: VecDeque<Running>,
    /// The edge request's id, sent with its fill requests (see [`Pipeline::for_request`]).
    request_id: Arc<str>,
}

impl Pipeline {
    /// A pipeline over `range` of `version`.
    pub(crate) fn new(
        edge: Arc<EdgeShared>,
        version: ObjectVersion,
        chunk_size: u64,
        range: ByteRange,
    ) -> Self {
        let (first, last) = chunk_span(range, chunk_size);
        let chunking = &edge.orca.config.chunking;
        let readahead = chunking.readahead;
        let reserve = budget_units(chunking.max_chunk_size()) as usize;
        Self {
            edge,
            version: Arc::new(version),
            chunk_size,
            range,
            next_index: first,
            last_index: last,
            readahead,
            reserve,
            queue: VecDeque::new(),
            request_id: Arc::from(""),
        }
    }

    /// Sends `request_id` (the client's `x-amz-request-id`) with this pipeline's fill
    /// requests, local and peer, so the replica that fills a chunk logs it.
    #[must_use]
    pub(crate) fn for_request(mut self, request_id: &str) -> Self {
        self.request_id = Arc::from(request_id);
        self
    }

    /// The next piece of the range, `Ok(None)` at its end.
    pub async fn next_piece(&mut self) -> Result<Option<Bytes>, PipelineError> {
        loop {
            self.top_up().await?;
            let Some(head) = self.queue.front_mut() else {
                return Ok(None);
            };
            if let Some(piece) = head.first.take() {
                return Ok(Some(piece));
            }
            if let Some(hit) = head.hit.as_mut() {
                match hit.reader.next_piece().await {
                    Ok(Some(piece)) => return Ok(Some(piece)),
                    Ok(None) => {
                        self.queue.pop_front();
                        continue;
                    }
                    // Bytes of this chunk were sent already: the response cannot be mended.
                    Err(source) => {
                        return Err(PipelineError::Store {
                            chunk: head.id.to_string(),
                            source,
                        })
                    }
                }
            }
            let Some(spawned) = head.spawned.as_mut() else {
                // A hit opened here, read to its end.
                self.queue.pop_front();
                continue;
            };
            match spawned.rx.recv().await {
                Some(Ok(piece)) => return Ok(Some(piece)),
                Some(Err(e)) => return Err(e),
                None => match spawned.hit_rx.try_recv() {
                    Ok(hit) => {
                        head.reservation = shrink(head.reservation.take(), &hit);
                        head.hit = Some(hit);
                    }
                    Err(_) => {
                        self.queue.pop_front();
                    }
                },
            }
        }
    }

    async fn top_up(&mut self) -> Result<(), PipelineError> {
        while self.next_index <= self.last_index && self.queue.len() <= self.readahead {
            let index = self.next_index;
            let chunk =
                Chunk::new(self.version.clone(), self.chunk_size, index).ok_or_else(|| {
                    OriginError::Protocol(format!("chunk {index} is past the object's end"))
                })?;
            let (from, to) = slice_in_chunk(self.range, self.chunk_size, index, chunk.len);
            let head = self.queue.is_empty();
            // The head's window (see [`HEAD_WINDOW`]); none for a chunk read ahead.
            let window = head.then(|| (to - from).min(HEAD_WINDOW));
            // Whether this chunk's reservation covers a RAM tier hit, which keeps its whole
            // slice alive: a chunk read ahead reserves its slice anyway; the head only when the
            // tier holds the chunk (looked at, not opened, before the wait: a waiting head
            // keeps nothing alive), and otherwise never opens the tier.
            let mut ram = true;
            let mut reservation = if let Some(window) = window {
                // The chunk to send next waits for its share, but not forever: memory held
                // by other clients (slow ones included) is released by their own write
                // timeouts, and until then this request is better answered "slow down".
                ram = self.edge.orca.storage.in_ram(&chunk);
                let units = budget_units(if ram { to - from } else { window });
                wait_for_budget(&self.edge, units).await?
            } else {
                let units = budget_units(to - from);
                let budget = &self.edge.readahead_budget;
                if budget.available_permits() < units as usize + self.reserve {
                    break;
                }
                match budget.clone().try_acquire_many_owned(units) {
                    Ok(r) => r,
                    Err(_) => break,
                }
            };
            let mut looked = Looked::No;
            if head && index == self.last_index {
                // The chunk to send next and the range's last (a one-chunk range: a small
                // object): a hit read on demand is served from this task. (Not an earlier
                // chunk: the chunks after it start only once it is looked up, and a shared
                // store's lookup is a round trip.)
                looked = match open_chunk(&self.edge, &chunk, (from, to), ram).await {
                    Some(hit) if hit.on_demand && hit.source == ChunkSource::CacheStore => {
                        match open_here(&chunk, hit, reservation).await {
                            Ok(running) => {
                                self.queue.push_back(running);
                                self.next_index += 1;
                                continue;
                            }
                            Err(back) => {
                                reservation = back;
                                Looked::Miss
                            }
                        }
                    }
                    Some(hit) => Looked::Hit(hit),
                    None => Looked::Miss,
                };
            }
            let (tx, rx) = piece_channel(window);
            let (hit_tx, hit_rx) = oneshot::channel();
            let id = chunk.id.clone();
            let task = tokio::spawn(read_chunk(
                self.edge.clone(),
                chunk,
                (from, to),
                self.request_id.clone(),
                (looked, ram),
                tx,
                hit_tx,
            ));
            self.queue.push_back(Running {
                id,
                first: None,
                spawned: Some(Spawned { rx, hit_rx, task }),
                hit: None,
                reservation: Some(reservation),
            });
            self.next_index += 1;
        }
        Ok(())
    }
}

/// A hit of the chunk to send next, opened in the request's task: its first piece read (so a
/// store that fails before its first byte still leaves the chunk to a fill) and counted.
/// `Err` (with the reservation) when that first read failed.
async fn open_here(
    chunk: &Chunk,
    mut hit: ChunkHit,
    reservation: OwnedSemaphorePermit,
) -> Result<Running, OwnedSemaphorePermit> {
    match hit.reader.next_piece().await {
        Ok(first) => {
            count_hit(&hit);
            Ok(Running {
                id: chunk.id.clone(),
                first,
                spawned: None,
                reservation: shrink(Some(reservation), &hit),
                hit: Some(hit),
            })
        }
        Err(e) => {
            tracing::warn!(chunk = %chunk.id, error = %e, "chunk read failed before its first byte");
            Err(reservation)
        }
    }
}

/// Reads bytes `[from, to)` of one chunk into `tx`: in-process from a fill in flight or the
/// store when it is there (as `looked` says, or after a look of its own); else from the chunk's coordinator when that is another replica;
/// else (or when the coordinator cannot help) through this replica's own fill service, which
/// fetches it from the origin once, whoever else asks. An on-demand hit goes to `hit_tx`
/// after its first piece.
async fn read_chunk(
    edge: Arc<EdgeShared>,
    chunk: Chunk,
    (from, to): (u64, u64),
    request_id: Arc<str>,
    (looked, ram): (Looked, bool),
    tx: PieceTx,
    hit_tx: oneshot::Sender<ChunkHit>,
) {
    let orca = &edge.orca;
    let mut hit_tx = hit_tx;
    // Bytes of the chunk sent so far: a store read that broke off is continued from there.
    let mut sent = 0u64;
    let hit = match looked {
        Looked::No => open_chunk(&edge, &chunk, (from, to), ram).await,
        Looked::Hit(hit) => Some(hit),
        Looked::Miss => None,
    };
    if let Some(hit) = hit {
        match pass_hit(&chunk, hit, true, &tx, hit_tx).await {
            Passed::Done => return,
            Passed::Broke {
                hit_tx: back,
                sent: n,
            } => {
                hit_tx = back;
                sent = n;
            }
        }
    }
    if let Some(peer) = orca.cluster.coordinator(&chunk.id) {
        if !edge.fills.is_down(&peer) {
            // Boxed, as the local fill below: an HTTP exchange's future is tens of KiB, and
            // held inline it made this task's future as large, copied whole into every spawn
            // (a profile of warm 4 KiB GETs found most of their instructions in that copy).
            match Box::pin(fetch_from_peer(
                &edge,
                &peer,
                &chunk,
                (from + sent, to),
                &request_id,
                &tx,
                &mut sent,
            ))
            .await
            {
                Ok(()) => {
                    PEER_FILLS.with_label_values(&["ok"]).inc();
                    ChunkSource::Peer.count();
                    return;
                }
                // The origin's verdict as the coordinator relays it (not found, changed,
                // unavailable after the coordinator's retries...): the same from here, and
                // asking the origin again from every replica would multiply its load.
                Err(FillError::Origin(e)) if e != OriginError::Timeout => {
                    return fail(&edge, &chunk, &tx, e)
                }
                // The coordinator's own trouble (its internal error, a timeout of its own, no
                // answer, a refusal): fill here.
                Err(e) => {
                    let result = if e == FillError::NotCoordinator {
                        "not_coordinator"
                    } else {
                        "error"
                    };
                    PEER_FILLS.with_label_values(&[result]).inc();
                    tracing::debug!(request_id = %request_id, chunk = %chunk.id, peer, error = ?e, sent, "peer fill failed; filling locally");
                    if matches!(e, FillError::Unreachable(_)) {
                        edge.fills.mark_down(&peer);
                    }
                }
            }
        }
    }
    // Locally, from where the peer left off (nothing was sent twice), through this replica's
    // own fill service, in-process. Once it answers, the chunk is a fill in flight in this
    // process's storage (or stored): it is read from there as the client takes it, and the
    // answer is dropped (the fill goes on into its spool without it). A chunk read ahead then
    // holds no in-process stream and no piece written to it while it waits its turn, and
    // its bytes are not copied through the stream. An answer that is the bytes' only copy (a
    // fill that went on uncached), or a chunk the storage no longer has (its fill failed
    // since), is read from the answer itself.
    match Box::pin(
        edge.fills
            .local()
            .open(&chunk, (from + sent, to), &request_id),
    )
    .await
    {
        Ok((source, body)) => {
            let stored = if body.kept() {
                open_chunk(&edge, &chunk, (from + sent, to), ram).await
            } else {
                None
            };
            let hit = stored.unwrap_or_else(|| ChunkHit {
                source,
                reader: Box::new(body),
                on_demand: true,
                buffered: FillBody::BUFFERED.min(to - from - sent),
            });
            match pass_hit(&chunk, hit, false, &tx, hit_tx).await {
                Passed::Done => source.count(),
                Passed::Broke { .. } => {
                    let e =
                        OriginError::Transient(format!("the fill of chunk {} broke off", chunk.id));
                    fail(&edge, &chunk, &tx, e)
                }
            }
        }
        Err(FillError::Busy) => {
            tx.fail(PipelineError::FillBusy);
        }
        Err(e) => fail(&edge, &chunk, &tx, e.into_origin()),
    }
}

/// How [`pass_hit`] ended.
enum Passed {
    /// Every byte went to `tx`, or the hit was handed over, or the client went away.
    Done,
    /// The hit failed before its first byte, or a cache store's read broke off after `sent`
    /// bytes: the caller gets the rest elsewhere (a broken cache must not cost the client its
    /// response when the origin can give the rest).
    Broke {
        hit_tx: oneshot::Sender<ChunkHit>,
        sent: u64,
    },
}

/// Passes a hit's bytes to `tx`: all of them, or for an on-demand hit its first piece, then
/// the hit itself to `hit_tx` (the pipeline reads the rest as the client takes it). `count`:
/// count the hit by its source. [`Passed::Broke`] when the hit failed before its first byte,
/// or a cache store's read failed after some: the caller fills the rest instead.
async fn pass_hit(
    chunk: &Chunk,
    mut hit: ChunkHit,
    count: bool,
    tx: &PieceTx,
    hit_tx: oneshot::Sender<ChunkHit>,
) -> Passed {
    let mut sent = 0u64;
    loop {
        match hit.reader.next_piece().await {
            Ok(Some(piece)) => {
                sent += piece.len() as u64;
                if !tx.put(piece).await {
                    return Passed::Done;
                }
                if hit.on_demand {
                    // The rest is read by the pipeline as the client takes it; `tx` is
                    // dropped after the hand-over, so the pipeline finds the hit then.
                    // Counted now: the pipeline may never ask past the last byte.
                    if count {
                        count_hit(&hit);
                    }
                    let _ = hit_tx.send(hit);
                    return Passed::Done;
                }
            }
            Ok(None) => {
                if count {
                    count_hit(&hit);
                }
                return Passed::Done;
            }
            Err(e) if sent == 0 => {
                tracing::warn!(chunk = %chunk.id, error = %e, "chunk read failed before its first byte");
                return Passed::Broke { hit_tx, sent };
            }
            Err(e) if hit.source == ChunkSource::CacheStore => {
                tracing::warn!(chunk = %chunk.id, error = %e, sent, "cache store read broke off; reading the rest elsewhere");
                return Passed::Broke { hit_tx, sent };
            }
            Err(source) => {
                tx.fail(PipelineError::Store {
                    chunk: chunk.id.name(),
                    source,
                });
                return Passed::Done;
            }
        }
    }
}

async fn fetch_from_peer(
    edge: &EdgeShared,
    peer: &str,
    chunk: &Chunk,
    range: (u64, u64),
    request_id: &str,
    tx: &PieceTx,
    sent: &mut u64,
) -> Result<(), FillError> {
    let client = edge.fills.peer(peer).await?;
    client
        .fetch(chunk, range, request_id, tx, sent)
        .await
        .map(|_| ())
}

/// Counts a hit by where its bytes come from (a join of a fill in flight also as a join).
fn count_hit(hit: &ChunkHit) {
    hit.source.count();
    if hit.source == ChunkSource::Memory {
        FILL_JOINS.inc();
    }
}

fn fail(edge: &EdgeShared, chunk: &Chunk, tx: &PieceTx, e: OriginError) {
    if e == OriginError::ETagChanged {
        let v = &chunk.version;
        edge.orca.metadata.invalidate(&v.bucket, &v.key);
    }
    tx.fail(e.into());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head's window: a piece takes its size from the window and gives it back when taken,
    /// so the reader is held once the window is full; a piece larger than the window passes
    /// alone; an empty piece takes nothing; a reader waiting for room is told when the
    /// receiver goes.
    #[tokio::test]
    async fn a_head_window_holds_the_reader_at_its_size() {
        use crate::fill::PieceSink;
        use std::time::Duration;
        let (tx, mut rx) = piece_channel(Some(4096));
        let kib = Bytes::from(vec![7u8; 1024]);
        for _ in 0..4 {
            assert!(tx.put(kib.clone()).await);
        }
        // Full: the fifth KiB waits until a piece is taken.
        let blocked = tokio::time::timeout(Duration::from_millis(50), tx.put(kib.clone())).await;
        assert!(blocked.is_err(), "a full window took another piece");
        assert_eq!(rx.recv().await.unwrap().unwrap().len(), 1024);
        assert!(tx.put(kib.clone()).await);
        for _ in 0..4 {
            rx.recv().await.unwrap().unwrap();
        }
        // Empty again: a piece larger than the window passes alone, an empty one is free.
        assert!(tx.put(Bytes::from(vec![1u8; 10_000])).await);
        assert!(tx.put(Bytes::new()).await);
        let blocked = tokio::time::timeout(Duration::from_millis(50), tx.put(kib.clone())).await;
        assert!(
            blocked.is_err(),
            "a window held by a large piece took another"
        );
        assert_eq!(rx.recv().await.unwrap().unwrap().len(), 10_000);
        assert_eq!(rx.recv().await.unwrap().unwrap().len(), 0);
        // A failure is never held back, and the window's room is all back.
        tx.fail(PipelineError::FillBusy);
        assert!(rx.recv().await.unwrap().is_err());
        assert_eq!(rx.window.as_ref().unwrap().room.available_permits(), 4);
        // Full, then the receiver goes: the waiting reader is told at once.
        for _ in 0..4 {
            assert!(tx.put(kib.clone()).await);
        }
        let waiting = tokio::spawn(async move { tx.put(kib).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(rx);
        assert!(!waiting.await.unwrap(), "told that no one takes its pieces");
    }

    /// Without a window (a chunk read ahead, whose reservation covers its slice) nothing waits.
    #[tokio::test]
    async fn a_chunk_read_ahead_is_not_held() {
        use crate::fill::PieceSink;
        let (tx, mut rx) = piece_channel(None);
        for _ in 0..64 {
            assert!(tx.put(Bytes::from(vec![0u8; 64 * 1024])).await);
        }
        drop(tx);
        let mut n = 0;
        while let Some(piece) = rx.recv().await {
            n += piece.unwrap().len();
        }
        assert_eq!(n, 64 * 64 * 1024);
    }

    #[test]
    fn budget_counts_kib_rounding_up() {
        assert_eq!(budget_units(0), 0);
        assert_eq!(budget_units(1), 1);
        assert_eq!(budget_units(1024), 1);
        assert_eq!(budget_units(1025), 2);
        assert_eq!(budget_units(128 << 20), 128 * 1024);
    }
}
