//! The chunk pipeline of one GET: the chunks of the client's range, fetched in parallel up to
//! `chunking.readahead` ahead of the one being sent, delivered strictly in order.
//!
//! Memory: every started chunk holds a reservation of its bytes from the process-wide
//! read-ahead budget (`limits.readahead_memory`) until it has been sent. The chunk being sent
//! waits for its reservation; chunks ahead of it start only when the budget has room at once
//! *and* a whole largest chunk stays free after them, so read-ahead (which a slow client may
//! hold for long) never starves another request's current chunk, and the process never
//! buffers more than the budget however many clients there are.
//!
//! A hit that gains nothing from reading ahead (a local-disk store, or a fill in flight whose
//! bytes are already in memory) is opened ahead and its first piece read, then handed to the
//! pipeline, which reads the rest as the client takes it.

use super::fill_client::{FillError, PieceResult};
use crate::app::Orca;
use crate::cachestore::storage::ChunkHit;
use crate::chunk::{chunk_span, slice_in_chunk, ByteRange, ChunkId, ObjectVersion};
use crate::fill::FillSpec;
use crate::metrics::{ChunkSource, FILL_JOINS, PEER_FILLS};
use crate::origin::OriginError;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio::task::JoinHandle;

/// The budget is counted in KiB so a `u32` reservation covers any chunk size.
pub fn budget_units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

struct Running {
    rx: UnboundedReceiver<PieceResult>,
    /// An on-demand hit, handed over before `rx` closes.
    hit_rx: oneshot::Receiver<ChunkHit>,
    /// The on-demand hit once handed over: the rest of the chunk is read from it.
    hit: Option<ChunkHit>,
    task: JoinHandle<()>,
    _reservation: OwnedSemaphorePermit,
}

impl Drop for Running {
    fn drop(&mut self) {
        // A client that went away stops its reads; fills already asked of the fill service
        // finish there and are stored.
        self.task.abort();
    }
}

/// The ordered stream of a range's bytes.
pub struct Pipeline {
    orca: Arc<Orca>,
    version: Arc<ObjectVersion>,
    chunk_size: u64,
    range: ByteRange,
    next_index: u64,
    last_index: u64,
    readahead: usize,
    /// Budget units that read-ahead must leave free for other requests' current chunks.
    reserve: usize,
    queue: VecDeque<Running>,
}

impl Pipeline {
    /// A pipeline over `range` of `version`.
    pub fn new(orca: Arc<Orca>, version: ObjectVersion, chunk_size: u64, range: ByteRange) -> Self {
        let (first, last) = chunk_span(range, chunk_size);
        let readahead = orca.config.chunking.readahead;
        let reserve = budget_units(orca.config.chunking.max_chunk_size()) as usize;
        Self {
            orca,
            version: Arc::new(version),
            chunk_size,
            range,
            next_index: first,
            last_index: last,
            readahead,
            reserve,
            queue: VecDeque::new(),
        }
    }

    /// The next piece of the range, `Ok(None)` at its end.
    pub async fn next_piece(&mut self) -> Result<Option<Bytes>, OriginError> {
        loop {
            self.top_up().await?;
            let Some(head) = self.queue.front_mut() else {
                return Ok(None);
            };
            if let Some(hit) = head.hit.as_mut() {
                match hit.reader.next_piece().await {
                    Ok(Some(piece)) => return Ok(Some(piece)),
                    Ok(None) => {
                        self.queue.pop_front();
                        continue;
                    }
                    // Bytes of this chunk were sent already: the response cannot be mended.
                    Err(e) => {
                        return Err(OriginError::Transient(format!(
                            "reading a cached chunk: {e}"
                        )))
                    }
                }
            }
            match head.rx.recv().await {
                Some(Ok(piece)) => return Ok(Some(piece)),
                Some(Err(e)) => return Err(e),
                None => match head.hit_rx.try_recv() {
                    Ok(hit) => head.hit = Some(hit),
                    Err(_) => {
                        self.queue.pop_front();
                    }
                },
            }
        }
    }

    async fn top_up(&mut self) -> Result<(), OriginError> {
        while self.next_index <= self.last_index && self.queue.len() <= self.readahead {
            let index = self.next_index;
            let id = ChunkId::new(&self.version, self.chunk_size, index);
            let len = id.expected_len(self.version.size);
            let (from, to) = slice_in_chunk(self.range, self.chunk_size, index, len);
            let units = budget_units(to - from);
            let budget = self.orca.readahead_budget.clone();
            let reservation = if self.queue.is_empty() {
                budget
                    .acquire_many_owned(units)
                    .await
                    .map_err(|_| OriginError::Transient("shutting down".into()))?
            } else {
                if budget.available_permits() < units as usize + self.reserve {
                    break;
                }
                match budget.try_acquire_many_owned(units) {
                    Ok(r) => r,
                    Err(_) => break,
                }
            };
            let (tx, rx) = unbounded_channel();
            let (hit_tx, hit_rx) = oneshot::channel();
            let task = tokio::spawn(read_chunk(
                self.orca.clone(),
                self.version.clone(),
                id,
                len,
                from,
                to,
                tx,
                hit_tx,
            ));
            self.queue.push_back(Running {
                rx,
                hit_rx,
                hit: None,
                task,
                _reservation: reservation,
            });
            self.next_index += 1;
        }
        Ok(())
    }
}

/// Reads bytes `[from, to)` of one chunk into `tx`: in-process from a fill in flight or the
/// store when it is there; else from the chunk's coordinator when that is another replica;
/// else (or when the coordinator cannot help) through this replica's own fill service, which
/// fetches it from the origin once, whoever else asks. An on-demand hit goes to `hit_tx`
/// after its first piece.
#[allow(clippy::too_many_arguments)]
async fn read_chunk(
    orca: Arc<Orca>,
    version: Arc<ObjectVersion>,
    id: ChunkId,
    len: u64,
    from: u64,
    to: u64,
    tx: UnboundedSender<PieceResult>,
    hit_tx: oneshot::Sender<ChunkHit>,
) {
    if let Some(mut hit) = orca.storage.open(&id, len, from, to).await {
        let mut sent = 0u64;
        loop {
            match hit.reader.next_piece().await {
                Ok(Some(piece)) => {
                    sent += piece.len() as u64;
                    if tx.send(Ok(piece)).is_err() {
                        return;
                    }
                    if hit.on_demand {
                        // The rest is read by the pipeline as the client takes it; `tx` is
                        // dropped after the hand-over, so the pipeline finds the hit then.
                        // Counted now: the pipeline may never ask past the last byte.
                        count_hit(&hit);
                        let _ = hit_tx.send(hit);
                        return;
                    }
                }
                Ok(None) => {
                    count_hit(&hit);
                    return;
                }
                Err(e) if sent == 0 => {
                    // A store that fails before the first byte is a miss: fill instead.
                    tracing::warn!(chunk = %id, error = %e, "chunk read failed; filling instead");
                    break;
                }
                Err(e) => {
                    let _ = tx.send(Err(OriginError::Transient(format!(
                        "reading chunk {id}: {e}"
                    ))));
                    return;
                }
            }
        }
    }
    let query = FillSpec::query(
        &version.origin_id,
        &version.bucket,
        &version.key,
        &version.etag,
        id.chunk_size,
        id.index,
        version.size,
    );
    let mut sent = 0u64;
    if let Some(peer) = orca.cluster.coordinator(&id) {
        if !orca.cluster.is_down(&peer) {
            match fetch_from_peer(&orca, &peer, &query, len, (from, to), &tx, &mut sent).await {
                Ok(()) => {
                    PEER_FILLS.with_label_values(&["ok"]).inc();
                    ChunkSource::Peer.count();
                    return;
                }
                Err(FillError::Origin(e)) => return fail(&orca, &version, &tx, e),
                Err(e) => {
                    let result = if e == FillError::NotCoordinator {
                        "not_coordinator"
                    } else {
                        "error"
                    };
                    PEER_FILLS.with_label_values(&[result]).inc();
                    tracing::debug!(chunk = %id, peer, error = ?e, sent, "peer fill failed; filling locally");
                    if matches!(e, FillError::Unreachable(_)) {
                        orca.cluster.mark_down(&peer);
                    }
                }
            }
        }
    }
    // Locally, from where the peer left off (nothing was sent twice).
    let mut more = 0u64;
    match orca
        .fill_client
        .fetch(&query, len, (from + sent, to), &tx, &mut more)
        .await
    {
        Ok(source) => source.count(),
        Err(e) => fail(&orca, &version, &tx, e.into_origin()),
    }
}

async fn fetch_from_peer(
    orca: &Orca,
    peer: &str,
    query: &str,
    len: u64,
    range: (u64, u64),
    tx: &UnboundedSender<PieceResult>,
    sent: &mut u64,
) -> Result<(), FillError> {
    let client = orca
        .cluster
        .client(peer)
        .await
        .map_err(FillError::Unreachable)?;
    client.fetch(query, len, range, tx, sent).await.map(|_| ())
}

/// Counts a hit by where its bytes come from (a join of a fill in flight also as a join).
fn count_hit(hit: &ChunkHit) {
    hit.source.count();
    if hit.source == ChunkSource::Memory {
        FILL_JOINS.inc();
    }
}

fn fail(orca: &Orca, version: &ObjectVersion, tx: &UnboundedSender<PieceResult>, e: OriginError) {
    if e == OriginError::ETagChanged {
        orca.metadata.invalidate(&version.bucket, &version.key);
    }
    let _ = tx.send(Err(e));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_counts_kib_rounding_up() {
        assert_eq!(budget_units(0), 0);
        assert_eq!(budget_units(1), 1);
        assert_eq!(budget_units(1024), 1);
        assert_eq!(budget_units(1025), 2);
        assert_eq!(budget_units(128 << 20), 128 * 1024);
    }
}
