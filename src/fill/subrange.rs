//! Sub-range fills: a chunk longer than `chunking.subrange_size` is fetched from the origin
//! as parallel ranged GETs, the requester's part first.
//!
//! The fill service ([`super::service`]) hands such a chunk here from `request_filter`,
//! before pingora-cache is involved: pingora's miss handler takes the body in order, and the
//! point is to take it out of order. The storage's flight registry is the single flight
//! instead of pingora's cache lock: [`ChunkStorage::begin_sparse`] registers the fill unless
//! one is in flight, and every other request for the chunk (this replica's edge, peers, the
//! fill service again) reads that flight.
//!
//! # The fetch
//!
//! The chunk is cut into aligned sub-ranges of `chunking.subrange_size` bytes. The one that
//! holds the requester's first byte is split there: its part from that byte on is fetched
//! first, then the sub-ranges after it (the requester reads on), then the part before the
//! requester's byte and the sub-ranges before it. `chunking.subrange_streams` workers take
//! sub-ranges from that queue, each a GET of its own pinned to the chunk's ETag with
//! `If-Match`, checked like a chunk GET (`206`, exact `Content-Range`, the same ETag, the
//! right `Content-Length`). The first worker holds the fill's `limits.origin_concurrency`
//! permit (waited for, at most the cache-lock timeout); the others take spare permits only
//! (never waited for), so a busy replica fetches with fewer streams, down to one, and never
//! runs more origin GETs than its permits.
//!
//! # A broken GET
//!
//! No byte is fetched twice. A sub-range GET that breaks (no answer, a `5xx`, a reset, a body
//! cut short, a timeout), before its first byte or after it, is resumed: the bytes received
//! are written, and a GET for the rest of the sub-range goes out, pinned to the same ETag,
//! after the retry backoff ([`crate::net::retry::backoff`]), at most [`ORIGIN_ATTEMPTS`] GETs
//! per sub-range in all. Any answer that is not the pinned object's (`412`, another ETag, a
//! `Content-Range` of another length), a refusal, a sub-range still broken after its last
//! attempt, or a failed spool write fails the whole fill.
//!
//! # Where the bytes go
//!
//! Each worker writes its bytes straight to the fill's spool at their offset (`pwrite` on the
//! blocking pool, in batches of one store piece, 256 KiB), and the flight records which byte
//! ranges are present; readers read the spool where their next byte is present and wait
//! otherwise (each wait bounded by the stall timeout). A worker does not read from the origin
//! while its batch is being written, so a fill holds at most `subrange_streams` batches plus
//! one origin read each: 4 x (256 KiB + 64 KiB) = 1.25 MiB at the defaults, counted in
//! `orca_fill_buffered_bytes` (see "Memory" in `docs/design.md`).
//!
//! # The end
//!
//! When every sub-range is in, the flight checks that the present ranges are exactly the
//! chunk (its length) and is committed from the spool once, in the background, as any fill.
//! A failed sub-range fails the flight: its readers get an error, never a clean end, the
//! failure is recorded for the requests that read the flight (they answer it rather than ask
//! the origin again), the spool is removed and nothing is stored. A fill task that dies drops
//! its [`SparseFill`], which fails the flight the same way.
//!
//! # The answer
//!
//! A request that names its part of the chunk (`from`/`to`, [`super::protocol`]) is answered
//! that part alone, `206` with `Content-Range`; one that does not is answered the whole chunk,
//! `200`. The header goes out with the first byte, so a fill that fails before it is answered
//! with the origin's error, as a chunk GET's is.

use super::protocol::SOURCE_HEADER;
use super::service::{check_range_response, ORIGIN_ATTEMPTS};
use crate::cachestore::buf::PIECE;
use crate::cachestore::storage::{ChunkHit, SparseBegin, SparseFill};
use crate::chunk::Chunk;
use crate::config::validated::Chunking;
use crate::error::S3Error;
use crate::metrics::{
    ChunkSource, FILLS_INFLIGHT, FILL_BUFFERED_BYTES, FILL_JOINS, ORIGIN_BYTES, ORIGIN_REQUESTS,
};
use crate::net::pool::ConnPool;
use crate::net::retry::backoff;
use crate::origin::OriginError;
use crate::state::Orca;
use bytes::Bytes;
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

/// Connections to the origin for sub-range GETs (Pingora's upstream is not used for them).
static POOL: Lazy<ConnPool> = Lazy::new(ConnPool::new);

/// Whether `chunk` is fetched as sub-ranges under `chunking`.
pub fn eligible(chunking: &Chunking, chunk: &Chunk) -> bool {
    chunking.subrange_size > 0 && chunk.len > chunking.subrange_size
}

/// The sub-ranges `[a, b)` (chunk offsets) of a chunk of `len` bytes cut every `size` bytes,
/// in the order they are fetched for a requester whose first byte is `from`: its part of its
/// sub-range, the sub-ranges after it, the part before it, the sub-ranges before that.
pub fn plan(len: u64, size: u64, from: u64) -> Vec<(u64, u64)> {
    let size = size.max(1);
    let from = from.min(len.saturating_sub(1));
    let aligned = |k: u64| (k * size, ((k + 1) * size).min(len));
    let count = len.div_ceil(size);
    let k0 = from / size;
    let (start0, end0) = aligned(k0);
    let mut out = vec![(from, end0)];
    out.extend((k0 + 1..count).map(aligned));
    if from > start0 {
        out.push((start0, from));
    }
    out.extend((0..k0).map(aligned));
    out
}

/// Serves a fill request for `chunk` (eligible) by a sub-range fill: from a fill in flight or
/// the store, else a fill of its own. `Ok(None)`: the store gives no spool for it; fill it in
/// order (the caller goes on with pingora's path). Sets `source` once it is known.
pub(super) async fn serve(
    orca: &Arc<Orca>,
    session: &mut Session,
    chunk: &Chunk,
    range: Option<(u64, u64)>,
    vouched: bool,
    request_id: &str,
    source: &mut Option<ChunkSource>,
) -> Result<Option<()>> {
    let started = tokio::time::Instant::now();
    let (from, to) = range.unwrap_or((0, chunk.len));
    let storage = orca.storage;
    if let Some(hit) = storage
        .open_range_for_fill(chunk, (from, to), vouched)
        .await
    {
        return answer_found(
            orca, session, chunk, range, hit, started, request_id, source,
        )
        .await;
    }
    // Wait for an origin permit, but join a fill of this chunk that another caller starts
    // meanwhile (it needs no permit of ours), and look again once the permit is ours: a fill
    // that ended while this request waited left the chunk stored (or its failure recorded),
    // and filling it again would fetch its bytes twice.
    let wait = orca.lock_timeout();
    let deadline = started + wait;
    let acquire = orca.origin_permits.clone().acquire_owned();
    tokio::pin!(acquire);
    let permit = loop {
        let changes = storage.flight_changes();
        tokio::pin!(changes);
        changes.as_mut().enable();
        if let Some(hit) = storage.join_flight(chunk, (from, to)) {
            return answer_found(
                orca, session, chunk, range, hit, started, request_id, source,
            )
            .await;
        }
        tokio::select! {
            permit = &mut acquire => match permit {
                Ok(permit) => break permit,
                Err(_) => return Error::e_explain(ErrorType::InternalError, "origin permits closed"),
            },
            () = &mut changes => {}
            () = tokio::time::sleep_until(deadline) => {
                write_s3(session, &super::service::no_origin_slot(wait), request_id).await?;
                return Ok(Some(()));
            }
        }
    };
    if let Some(e) = storage.failure_since(&chunk.id, started) {
        // A fill of this chunk failed while this request waited: its answer, not a new try
        // (N waiters must not become N more rounds of origin attempts).
        drop(permit);
        *source = Some(ChunkSource::Origin);
        return write_s3(session, &e.to_s3(), request_id).await.map(Some);
    }
    if let Some(hit) = storage
        .open_range_for_fill(chunk, (from, to), vouched)
        .await
    {
        drop(permit);
        return answer_found(
            orca, session, chunk, range, hit, started, request_id, source,
        )
        .await;
    }
    match storage.begin_sparse(chunk, (from, to)).await {
        Ok(SparseBegin::Joined(hit)) => {
            drop(permit);
            FILL_JOINS.inc();
            *source = Some(ChunkSource::Memory);
            let hit = (hit, ChunkSource::Memory);
            answer(orca, session, chunk, range, hit, started, request_id)
                .await
                .map(Some)
        }
        Ok(SparseBegin::Started(fill, hit)) => {
            FILLS_INFLIGHT.inc();
            tokio::spawn(run_fill(orca.clone(), fill, permit, from));
            *source = Some(ChunkSource::Origin);
            // The requester's own fill: its bytes come from the origin (the edge counts it so).
            let hit = (hit, ChunkSource::Origin);
            answer(orca, session, chunk, range, hit, started, request_id)
                .await
                .map(Some)
        }
        Ok(SparseBegin::NoSpool) => Ok(None),
        Err(m) => {
            write_s3(session, &S3Error::slow_down(m), request_id).await?;
            Ok(Some(()))
        }
    }
}

/// Answers from `hit` (a fill in flight, counted as a join, or a stored chunk) and records
/// where its bytes came from in `source`.
#[allow(clippy::too_many_arguments)]
async fn answer_found(
    orca: &Orca,
    session: &mut Session,
    chunk: &Chunk,
    range: Option<(u64, u64)>,
    hit: ChunkHit,
    started: tokio::time::Instant,
    request_id: &str,
    source: &mut Option<ChunkSource>,
) -> Result<Option<()>> {
    if hit.source == ChunkSource::Memory {
        FILL_JOINS.inc();
    }
    *source = Some(hit.source);
    let from_where = hit.source;
    answer(
        orca,
        session,
        chunk,
        range,
        (hit, from_where),
        started,
        request_id,
    )
    .await
    .map(Some)
}

async fn write_s3(session: &mut Session, e: &S3Error, request_id: &str) -> Result<()> {
    let resource = session.req_header().uri.path().to_string();
    crate::error::write_error(session, e, &resource, request_id).await
}

/// Answers bytes `[from, to)` of `hit` (`206`), or the whole chunk (`200`) when the request
/// named no range, naming `source` in `x-orca-source`. The header goes with the first byte: a
/// fill that fails before it is answered with its error.
async fn answer(
    orca: &Orca,
    session: &mut Session,
    chunk: &Chunk,
    range: Option<(u64, u64)>,
    (mut hit, source): (ChunkHit, ChunkSource),
    started: tokio::time::Instant,
    request_id: &str,
) -> Result<()> {
    let (from, to) = range.unwrap_or((0, chunk.len));
    let first = match hit.reader.next_piece().await {
        Ok(Some(piece)) => piece,
        Ok(None) => {
            return Error::e_explain(
                ErrorType::ReadError,
                "the chunk ended before its first byte",
            )
        }
        Err(e) => {
            let oe = orca
                .storage
                .failure_since(&chunk.id, started)
                .unwrap_or_else(|| OriginError::Transient(format!("fill of {}: {e}", chunk.id)));
            tracing::debug!(request_id, chunk = %chunk.id, error = %oe, "sub-range fill failed before the first byte");
            return write_s3(session, &oe.to_s3(), request_id).await;
        }
    };
    let expected = to - from;
    let mut resp = ResponseHeader::build(if range.is_some() { 206 } else { 200 }, Some(4))?;
    resp.insert_header("content-length", expected.to_string())?;
    resp.insert_header("content-type", "application/octet-stream")?;
    if range.is_some() {
        resp.insert_header(
            "content-range",
            format!("bytes {from}-{}/{}", to - 1, chunk.len),
        )?;
    }
    resp.insert_header(SOURCE_HEADER, source.as_str())?;
    session.write_response_header(Box::new(resp), false).await?;
    let mut sent = first.len() as u64;
    session
        .write_response_body(Some(first), sent >= expected)
        .await?;
    while sent < expected {
        let piece = hit
            .reader
            .next_piece()
            .await
            .map_err(|e| Error::because(ErrorType::ReadError, "reading the chunk's fill", e))?
            .ok_or_else(|| {
                Error::explain(
                    ErrorType::ReadError,
                    format!("chunk ended at {sent} of {expected} bytes"),
                )
            })?;
        sent += piece.len() as u64;
        session
            .write_response_body(Some(piece), sent >= expected)
            .await?;
    }
    Ok(())
}

/// Decrements `orca_fills_inflight` when the fill ends.
struct Inflight;

impl Drop for Inflight {
    fn drop(&mut self) {
        FILLS_INFLIGHT.dec();
    }
}

/// Bytes a worker holds between the origin and the spool, counted in
/// `orca_fill_buffered_bytes` until they are written (or dropped).
#[derive(Default)]
struct Held(u64);

impl Held {
    fn add(&mut self, n: u64) {
        self.0 += n;
        FILL_BUFFERED_BYTES.add(n as i64);
    }

    fn clear(&mut self) {
        FILL_BUFFERED_BYTES.sub(self.0 as i64);
        self.0 = 0;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Fetches the chunk of `fill` as sub-ranges, `from` (the requester's first byte) first, and
/// ends the fill: complete and committed, or failed with nothing stored.
async fn run_fill(orca: Arc<Orca>, fill: SparseFill, permit: OwnedSemaphorePermit, from: u64) {
    let _inflight = Inflight;
    let chunking = &orca.config.chunking;
    let chunk = fill.chunk().clone();
    let plan = plan(chunk.len, chunking.subrange_size, from);
    let streams = chunking.subrange_streams.min(plan.len()).max(1);
    let mut permits = vec![permit];
    while permits.len() < streams {
        match orca.origin_permits.clone().try_acquire_owned() {
            Ok(p) => permits.push(p),
            Err(_) => break,
        }
    }
    tracing::debug!(chunk = %chunk.id, subranges = plan.len(), streams = permits.len(), from, "sub-range fill");
    let queue = Arc::new(Mutex::new(VecDeque::from(plan)));
    let fill = Arc::new(fill);
    let mut workers = tokio::task::JoinSet::new();
    // The requester's GET goes out first: the other workers start once its answer has begun
    // (or its worker ended), so the origin sees it before any other and it has the origin's
    // first-byte time to itself.
    let (sent_tx, sent_rx) = tokio::sync::watch::channel(false);
    let mut sent_tx = Some(sent_tx);
    for permit in permits {
        let (orca, fill, queue) = (orca.clone(), fill.clone(), queue.clone());
        let first = sent_tx.take();
        let mut sent_rx = sent_rx.clone();
        workers.spawn(async move {
            let _permit = permit;
            if first.is_none() {
                let _ = sent_rx.wait_for(|sent| *sent).await;
            }
            let mut first = first;
            loop {
                let next = queue.lock().pop_front();
                let Some((a, b)) = next else {
                    return Ok(());
                };
                fetch_subrange(&orca, &fill, a, b, first.take().as_ref()).await?;
            }
        });
    }
    let mut failure = None;
    while let Some(done) = workers.join_next().await {
        let error = match done {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(e) => OriginError::Transient(format!("sub-range worker: {e}")),
        };
        if failure.is_none() {
            // One sub-range failed: the chunk fails whole; the others stop now.
            failure = Some(error);
            queue.lock().clear();
            workers.abort_all();
        }
    }
    let fill = match Arc::try_unwrap(fill) {
        Ok(fill) => fill,
        // Every worker has ended: cannot happen. Dropping the last `Arc` fails the flight.
        Err(_) => return,
    };
    match failure {
        None => {
            if let Err(m) = fill.finish() {
                tracing::warn!(chunk = %chunk.id, error = %m, "sub-range fill incomplete; not stored");
            }
        }
        Some(e) => {
            let v = &chunk.version;
            match &e {
                OriginError::ETagChanged | OriginError::AccessDenied => {
                    orca.metadata.invalidate(&v.bucket, &v.key)
                }
                _ => orca
                    .health
                    .record_for::<()>(&v.bucket, Some(&v.key), &Err(e.clone())),
            }
            tracing::warn!(chunk = %chunk.id, error = %e, "sub-range fill failed; nothing stored");
            // Recorded before the flight fails: its readers answer this error.
            orca.storage.record_failure(&chunk.id, e.clone());
            fill.fail(e.to_string());
        }
    }
}

/// Fetches bytes `[a, b)` of the fill's chunk into it, at most [`ORIGIN_ATTEMPTS`] GETs. A GET
/// that breaks (no answer, a `5xx`, a reset, a body cut short, a timeout) is followed by one
/// for the rest: from its first byte not yet written, pinned to the same ETag, after the
/// retry backoff. Every byte received is written before the next GET, so none is fetched
/// twice. An answer that is not the pinned object's (`412`, another ETag, a wrong
/// `Content-Range`), a refusal, or a failed spool write fails the sub-range at once.
async fn fetch_subrange(
    orca: &Orca,
    fill: &SparseFill,
    a: u64,
    b: u64,
    sent: Option<&tokio::sync::watch::Sender<bool>>,
) -> std::result::Result<(), OriginError> {
    let mut at = a;
    let mut attempt = 0;
    loop {
        attempt += 1;
        // The fill is alive: its readers' no-progress deadline starts again with each
        // attempt (a GET that waits out the origin timeout, then a retry, must not make the
        // requester give up on a fill that then succeeds).
        fill.alive();
        match get_once(orca, fill, at, b, sent).await {
            Ok(()) => return Ok(()),
            // Broken after its last byte was written: nothing is left to fetch (a GET of
            // `[b, b)` would be an invalid range).
            Err(broken) if broken.resumable && broken.reached >= b => return Ok(()),
            Err(broken) if broken.resumable && attempt < ORIGIN_ATTEMPTS => {
                tracing::debug!(chunk = %fill.chunk().id, a, b, from = at, reached = broken.reached, attempt, error = %broken.error, "sub-range GET broke; fetching the rest");
                at = broken.reached;
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(broken) => return Err(broken.error),
        }
    }
}

/// How a sub-range GET failed.
struct Broken {
    error: OriginError,
    /// The chunk offset up to which its bytes are written to the fill.
    reached: u64,
    /// Another GET from `reached` may succeed (a transient failure of this one).
    resumable: bool,
}

/// One GET of bytes `[a, b)` of the fill's chunk; `sent` is told once the answer's header is in.
async fn get_once(
    orca: &Orca,
    fill: &SparseFill,
    a: u64,
    b: u64,
    sent: Option<&tokio::sync::watch::Sender<bool>>,
) -> std::result::Result<(), Broken> {
    let chunk = fill.chunk();
    let before = |error: OriginError| Broken {
        resumable: error.is_retryable(),
        error,
        reached: a,
    };
    let no_answer = |e: Box<Error>| {
        ORIGIN_REQUESTS.with_label_values(&["get", "0"]).inc();
        before(timeout_or_transient(&e))
    };
    let peer = orca
        .origin
        .chunk_peer(&chunk.version.bucket)
        .await
        .map_err(before)?;
    let (first, last) = (chunk.offset() + a, chunk.offset() + b - 1);
    let req = orca
        .origin
        .range_request(chunk, first, last)
        .map_err(before)?;
    tracing::debug!(chunk = %chunk.id, start = first, end = last, "origin sub-range GET");
    let (mut session, _reused) = POOL.get_http_session(&peer).await.map_err(no_answer)?;
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(no_answer)?;
    session.finish_request_body().await.map_err(no_answer)?;
    session.read_response_header().await.map_err(no_answer)?;
    // The requester's GET has its answer under way: the other workers may start. (Told once
    // it was merely written, the origin could still see another worker's GET first: two
    // connections race through every hop.)
    if let Some(sent) = sent {
        sent.send_replace(true);
    }
    let resp = session
        .response_header()
        .cloned()
        .ok_or_else(|| before(OriginError::Transient("no response header".into())))?;
    ORIGIN_REQUESTS
        .with_label_values(&["get", resp.status.as_str()])
        .inc();
    check_range_response(&*orca.origin, chunk, first, last, &resp).map_err(before)?;
    let mut at = a;
    let mut batch: Vec<Bytes> = Vec::new();
    let mut held = Held::default();
    let broken = |at: u64, error: OriginError| Broken {
        error,
        reached: at,
        resumable: true,
    };
    let cut = |at: u64, m: String| {
        OriginError::Transient(format!(
            "sub-range {a}..{b} of chunk {} broke at {at}: {m}",
            chunk.id
        ))
    };
    loop {
        let piece = match session.read_response_body().await {
            Ok(piece) => piece,
            Err(e) => {
                // The bytes received before the break are kept: the next GET asks for the rest.
                let error = match timeout_or_transient(&e) {
                    OriginError::Timeout => OriginError::Timeout,
                    _ => cut(at + held.0, e.to_string()),
                };
                let n = held.0;
                if n > 0 {
                    write(fill, at, &mut batch).await?;
                    held.clear();
                    at += n;
                }
                return Err(broken(at, error));
            }
        };
        let end = match &piece {
            Some(p) => {
                ORIGIN_BYTES.inc_by(p.len() as u64);
                at + held.0 + p.len() as u64
            }
            None => at + held.0,
        };
        if end > b {
            // More than asked: not the answer to this request.
            return Err(Broken {
                error: OriginError::Protocol(format!(
                    "sub-range {a}..{b} of chunk {} ran to {end}",
                    chunk.id
                )),
                reached: at,
                resumable: false,
            });
        }
        let last_piece = piece.is_none();
        if let Some(p) = piece {
            held.add(p.len() as u64);
            batch.push(p);
        }
        if held.0 >= PIECE as u64 || (last_piece && held.0 > 0) {
            let n = held.0;
            write(fill, at, &mut batch).await?;
            held.clear();
            at += n;
        }
        if last_piece {
            break;
        }
    }
    if at != b {
        return Err(broken(at, cut(at, format!("ended short of {b}"))));
    }
    POOL.release_http_session(session, &peer).await;
    Ok(())
}

/// Writes `batch` at `at` of the fill. A failed write is final: the spool is the fill's.
async fn write(
    fill: &SparseFill,
    at: u64,
    batch: &mut Vec<Bytes>,
) -> std::result::Result<(), Broken> {
    fill.write_at(at, std::mem::take(batch))
        .await
        .map_err(|m| Broken {
            error: OriginError::Transient(m),
            reached: at,
            resumable: false,
        })
}

/// A GET that got no (whole) answer: a timeout, or a transient failure.
fn timeout_or_transient(e: &Error) -> OriginError {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            OriginError::Timeout
        }
        _ => OriginError::Transient(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_requesters_part_comes_first_and_every_byte_once() {
        // 10 bytes cut every 4: [0,4) [4,8) [8,10).
        assert_eq!(plan(10, 4, 0), vec![(0, 4), (4, 8), (8, 10)]);
        assert_eq!(plan(10, 4, 9), vec![(9, 10), (8, 9), (0, 4), (4, 8)]);
        assert_eq!(plan(10, 4, 5), vec![(5, 8), (8, 10), (4, 5), (0, 4)]);
        assert_eq!(plan(10, 4, 4), vec![(4, 8), (8, 10), (0, 4)]);
        for len in 1..40u64 {
            for size in 1..12u64 {
                for from in 0..len {
                    let mut p = plan(len, size, from);
                    assert_eq!(p[0].0, from);
                    p.sort_unstable();
                    let mut at = 0;
                    for (a, b) in p {
                        assert!(a == at && b > a, "{len} {size} {from}");
                        at = b;
                    }
                    assert_eq!(at, len);
                }
            }
        }
    }
}
