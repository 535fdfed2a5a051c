//! The fill service (`GET /internal/fill`): one request is one whole chunk.
//!
//! A `ProxyHttp` with pingora-cache enabled. The cache key is the chunk's identity, the storage
//! is [`ChunkStorage`], and pingora's cache lock makes concurrent requests for one chunk wait
//! for a single origin GET; with streaming partial writes the waiters read the bytes as they
//! arrive. The upstream is the origin: `upstream_request_filter` replaces the request with the
//! driver's signed ranged GET pinned to the ETag, and `upstream_response_filter` checks the
//! origin's 206 (status, Content-Range, ETag, length) and turns it into the chunk's 200 before
//! pingora-cache sees it. Errors before the first body byte are retried with backoff and
//! jitter; after it, the response is aborted and nothing is stored.
//!
//! # Hooks, in the order Pingora calls them
//!
//! | hook | what it does |
//! |---|---|
//! | `request_filter` | Decodes and checks the query into a `Chunk` with `FillRequest::decode` (`origin` must be this replica's `origin.id`; `chunk_size` from 1 byte to the largest chunk of this replica's `chunking` ladder, `object_size > 0`, `index` inside the object). On the listening instance it then admits the peer (`admit_peer`): the shared secret (`403 AccessDenied`), then whether this replica coordinates the chunk (`409 NotCoordinator`). The in-process instance skips both checks. |
//! | `request_cache_filter` | Enables the cache with `ChunkStorage`, the shared `CacheLock`, and a lock wait timeout. |
//! | `cache_key_callback` | `CacheKey::new(chunk name, "")`, with the `Chunk` attached as a key extension (the storage needs its identity and length). |
//! | `cache_hit_filter` | Records where a hit came from (`memory` for a fill in flight, else `cachestore`). |
//! | `proxy_upstream_filter` | Only the lock's writer gets here. Re-checks the storage, then takes an origin permit, waiting at most the cache-lock timeout (then `503 SlowDown`). The permit is held until the origin's answer ends, not the requester's. |
//! | `upstream_peer` | The origin's address, resolved asynchronously and cached for 30 s. Sleeps the backoff on a retry. |
//! | `upstream_request_filter` | Replaces the request with the driver's signed, ETag-pinned ranged GET. |
//! | `upstream_response_filter` | Checks the answer: `206` (or `200` when the chunk is the whole object), exact `Content-Range`, same ETag, right `Content-Length`. Rewrites it to the chunk's own `200` and marks it accepted (`response_accepted`): from here on no retry is made. |
//! | `response_cache_filter` | `Cacheable` with Orca's own `CacheMeta` (fresh for ten years: the ETag is in the key). |
//! | `upstream_response_body_filter` | Counts the origin's bytes; at the end of its answer, returns the origin permit. |
//! | `fail_to_connect`, `error_while_proxy` | Decide whether to retry (see "Retries" in `docs/design.md`). A chunk GET that got no answer is counted as `orca_origin_requests_total{op="get",status="0"}`. |
//! | `response_filter` | Adds `x-orca-source` (`origin`, `memory` or `cachestore`), which the asking fill client counts. |
//! | `fail_to_proxy` | Returns the origin permit, then an S3 XML error before the first byte; after it, an abort. |
//! | `logging` | On the listening instance, a fill that went to the origin counts as `orca_chunk_reads_total{source="origin"}` here. One debug `fill request` line. |
//!
//! A chunk longer than `chunking.subrange_size` is answered in `request_filter` by a sub-range
//! fill ([`super::subrange`]): parallel ranged GETs over Orca's own connection pool, the
//! requester's part first, with the storage's flight registry as the single flight. The hooks
//! below then serve only chunks fetched in one GET (and such a chunk when the store gives no
//! spool).
//!
//! `POST /internal/purge` (a peer's part of a fleet-wide purge, [`super::purge`]) is answered in
//! `request_filter` too, after the shared secret; it never reaches the cache.

use super::protocol::{
    request_id_of, FillRequest, FILL_PATH, REFUSED_HEADER, REQUEST_ID_HEADER, SECRET_HEADER,
    SOURCE_HEADER, UNCACHED_HEADER,
};
use super::purge::{purge_local, PurgeRequest, PURGE_PATH};
use crate::cachestore::storage::{cache_key, chunk_meta, ChunkHitHandler};
use crate::chunk::Chunk;
use crate::error::S3Error;
use crate::metrics::{
    ChunkSource, FILLS_INFLIGHT, FILL_JOINS, ORIGIN_BYTES, ORIGIN_REQUESTS, PEER_REJECTED,
};
use crate::net::http::header_str;
use crate::net::retry::{backoff, ATTEMPTS};
use crate::origin::OriginError;
use crate::state::Orca;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::upstreams::peer::HttpPeer;
use pingora_cache::{
    CacheKey, CacheMeta, ForcedFreshness, HitHandler, NoCacheReason, RespCacheable,
};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

/// Attempts of one chunk GET before its first byte, the first included.
pub const ORIGIN_ATTEMPTS: u32 = ATTEMPTS;

/// The fill service.
pub struct FillService {
    orca: Arc<Orca>,
    /// This replica's own edge calling in-process (trusted, any chunk), rather than peers on
    /// the listener (shared secret checked, coordinated chunks only).
    local: bool,
}

impl FillService {
    /// The fill service peers reach on the internal listener.
    pub fn for_peers(orca: Arc<Orca>) -> Self {
        Self { orca, local: false }
    }

    /// The instance this replica's edge calls in-process.
    pub fn for_local_edge(orca: Arc<Orca>) -> Self {
        Self { orca, local: true }
    }

    /// Checks a peer's request: the shared secret, then that this replica coordinates the
    /// chunk in its own view (else 409: the caller fills locally).
    fn admit_peer(&self, session: &Session, chunk: &Chunk) -> std::result::Result<(), S3Error> {
        if let Some(secret) = &self.orca.peer_secret {
            let given = session
                .req_header()
                .headers
                .get(SECRET_HEADER)
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            if !bool::from(subtle::ConstantTimeEq::ct_eq(given, secret.as_bytes())) {
                PEER_REJECTED.with_label_values(&["auth"]).inc();
                return Err(S3Error::new(
                    403,
                    "AccessDenied",
                    "Missing or wrong peer secret.",
                ));
            }
        }
        if self.orca.cluster.coordinator(&chunk.id).is_some() {
            PEER_REJECTED.with_label_values(&["not_coordinator"]).inc();
            return Err(S3Error::new(
                409,
                "NotCoordinator",
                "This replica does not coordinate the chunk; fill it locally.",
            ));
        }
        Ok(())
    }
}

impl FillService {
    /// Whether the request carries the cluster's shared secret (or none is configured).
    fn has_secret(&self, session: &Session) -> bool {
        let Some(secret) = &self.orca.peer_secret else {
            return true;
        };
        let given = session
            .req_header()
            .headers
            .get(SECRET_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        bool::from(subtle::ConstantTimeEq::ct_eq(given, secret.as_bytes()))
    }

    /// `POST /internal/purge` (see [`super::purge`]): the shared secret, then this replica's
    /// part of a purge, answered as JSON.
    async fn serve_purge(&self, session: &mut Session) -> Result<()> {
        let req = session.req_header();
        let decoded = if req.method != http::Method::POST {
            Err(S3Error::method_not_allowed())
        } else if !self.has_secret(session) {
            PEER_REJECTED.with_label_values(&["auth"]).inc();
            Err(S3Error::new(
                403,
                "AccessDenied",
                "Missing or wrong peer secret.",
            ))
        } else {
            PurgeRequest::decode(req.uri.query().unwrap_or(""))
                .map_err(|m| S3Error::new(400, "InvalidArgument", m))
        };
        let request = match decoded {
            Ok(r) => r,
            Err(e) => {
                let extra: &[(&'static str, &str)] = if e.status == 403 {
                    &[(REFUSED_HEADER, "secret")]
                } else {
                    &[]
                };
                let id = crate::error::request_id();
                return crate::error::write_error_with(session, &e, PURGE_PATH, &id, extra).await;
            }
        };
        let report = purge_local(&self.orca, &request).await;
        let body = serde_json::to_vec(&report)
            .map_err(|e| Error::because(ErrorType::InternalError, "purge report", e))?;
        let mut resp = ResponseHeader::build(200, Some(2))?;
        resp.insert_header("content-type", "application/json")?;
        resp.insert_header("content-length", body.len().to_string())?;
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await
    }

    /// Once this request's fill has failed for good before its answer was accepted (no retry
    /// follows), records the failure for the requests waiting on it, before Pingora releases
    /// the cache lock to them.
    fn remember_if_final(&self, ctx: &FillCtx, e: &Error) {
        if e.retry() || ctx.response_accepted || ctx.attempts == 0 {
            return;
        }
        if let Some(chunk) = &ctx.chunk {
            let error = ctx.error.clone().unwrap_or_else(|| error_of(e));
            self.orca.storage.record_failure(&chunk.id, error);
        }
    }
}

/// The origin error a Pingora error stands for (no answer at all: a timeout or a transient
/// failure).
fn error_of(e: &Error) -> OriginError {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            OriginError::Timeout
        }
        _ => OriginError::Transient(e.to_string()),
    }
}

/// An origin permit, and the fill counted in `orca_fills_inflight`, for as long as the origin's
/// answer lasts: taken in `proxy_upstream_filter`, dropped when that answer ends (its last byte
/// in `upstream_response_body_filter`, or the fill's final failure in `fail_to_proxy`), not
/// when the requester has read the answer. This replica's edge asks for chunks ahead of the one
/// it sends and reads their answers in order: a permit held until then would let answers read
/// later hold every permit while the chunk read next waits for one, a cycle.
struct InflightGuard {
    _permit: OwnedSemaphorePermit,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        FILLS_INFLIGHT.dec();
    }
}

/// Per-request state of a fill.
#[derive(Default)]
pub struct FillCtx {
    chunk: Option<Chunk>,
    attempts: u32,
    /// The origin's answer passed its checks and went to pingora-cache (a miss handler may
    /// exist): from here on a retry would register a second writer, so none is made.
    response_accepted: bool,
    source: Option<ChunkSource>,
    error: Option<OriginError>,
    inflight: Option<InflightGuard>,
    /// The fill's own refusal before any origin request (no origin permit within the
    /// deadline): answered as it is by `fail_to_proxy`.
    refusal: Option<S3Error>,
    /// When the request arrived: a fill that failed after it (one it may have waited on) is
    /// answered with that failure.
    started: Option<tokio::time::Instant>,
    /// The id of the edge request this fill serves (`x-orca-request-id`, from the edge of
    /// this replica or a peer's), or a fresh one: named in this fill's log lines and errors.
    request_id: String,
}

fn origin_err(e: &OriginError) -> Box<Error> {
    let et = match e {
        OriginError::Timeout => ErrorType::ConnectTimedout,
        _ => ErrorType::HTTPStatus(e.to_s3().status),
    };
    let mut err = Error::explain(et, e.to_string());
    err.set_retry(e.is_retryable());
    err
}

#[async_trait]
impl ProxyHttp for FillService {
    type CTX = FillCtx;

    fn new_ctx(&self) -> Self::CTX {
        FillCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        ctx.started = Some(tokio::time::Instant::now());
        ctx.request_id = session
            .req_header()
            .headers
            .get(REQUEST_ID_HEADER)
            .and_then(|v| request_id_of(v.as_bytes()))
            .map_or_else(crate::error::request_id, str::to_string);
        // A peer that stops reading (a frozen process) fails its own request after this long
        // without progress, and its connection and task are freed. A healthy peer reads a chunk
        // it reads ahead at network speed, and the chunk its client needs next at most a window
        // ahead of that client: it stops reading only while its client does, and its own
        // write timeout to that client (`client_write_timeout`) ends the request first, which
        // closes this connection. Twice that here, so a slow but live client never ends the
        // peer's answer (the peer would fill the rest itself: origin bytes twice). This
        // replica's own edge reads its answers in order as its client takes them: an answer
        // of a chunk read ahead may rightly wait unread for as long as the client takes over
        // the chunks before it. The edge's own write timeout bounds that (a client that stops
        // reading fails its request, which drops the in-process stream and ends this answer
        // at once), so the in-process instance sets none. Either way the fill itself goes on
        // into its flight.
        if !self.local {
            session.set_write_timeout(Some(
                self.orca
                    .config
                    .limits
                    .client_write_timeout
                    .saturating_mul(2),
            ));
        }
        if session.req_header().uri.path() == PURGE_PATH {
            self.serve_purge(session).await?;
            return Ok(true);
        }
        // Pingora's cancel-safe writes: its proxy loop keeps reading the origin into the
        // flight while a write to this requester is pending, so the flight keeps filling
        // (into its spool) whatever its first reader does.
        session.set_proxy_tasks_enabled(true);
        let req = session.req_header();
        let result = if req.method != http::Method::GET {
            Err(S3Error::method_not_allowed())
        } else if req.uri.path() != FILL_PATH {
            Err(S3Error::new(
                404,
                "NoSuchResource",
                "Unknown internal path.",
            ))
        } else {
            let config = &self.orca.config;
            FillRequest::decode(
                req.uri.query().unwrap_or(""),
                &config.origin.id,
                config.chunking.max_chunk_size(),
            )
        };
        let result = result.and_then(|request| {
            if !self.local {
                self.admit_peer(session, &request.chunk)?;
            }
            Ok(request)
        });
        match result {
            Ok(request) => {
                ctx.chunk = Some(request.chunk.clone());
                // A large chunk: parallel sub-range GETs, the requester's part first, outside
                // pingora-cache (see `super::subrange`). Without a spool, in order as below.
                if super::subrange::eligible(&self.orca.config.chunking, &request.chunk) {
                    let served = super::subrange::serve(
                        &self.orca,
                        session,
                        &request.chunk,
                        request.range,
                        self.local,
                        &ctx.request_id,
                        &mut ctx.source,
                    )
                    .await?;
                    if served.is_some() {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Err(e) => {
                let resource = session.req_header().uri.path().to_string();
                // Only `admit_peer` refuses with 403 here: mark it as the secret's refusal.
                let extra: &[(&'static str, &str)] = if e.status == 403 {
                    &[(REFUSED_HEADER, "secret")]
                } else {
                    &[]
                };
                crate::error::write_error_with(session, &e, &resource, &ctx.request_id, extra)
                    .await?;
                Ok(true)
            }
        }
    }

    fn request_cache_filter(&self, session: &mut Session, _ctx: &mut Self::CTX) -> Result<()> {
        let overrides = {
            let mut o = pingora_cache::CacheOptionOverrides::default();
            o.wait_timeout = Some(self.orca.lock_timeout());
            o
        };
        session.cache.enable(
            self.orca.storage,
            None,
            None,
            Some(self.orca.cache_lock),
            Some(overrides),
        );
        Ok(())
    }

    fn cache_key_callback(&self, _session: &Session, ctx: &mut Self::CTX) -> Result<CacheKey> {
        let chunk = ctx_chunk(ctx)?.clone();
        // A peer's request carries its own word for the object's size (the chunk's length).
        Ok(cache_key(&chunk, self.local))
    }

    async fn cache_hit_filter(
        &self,
        _session: &mut Session,
        _meta: &CacheMeta,
        hit_handler: &mut HitHandler,
        _is_fresh: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<ForcedFreshness>> {
        let source = hit_handler
            .as_any()
            .downcast_ref::<ChunkHitHandler>()
            .map(|h| h.source)
            .unwrap_or(ChunkSource::CacheStore);
        if source == ChunkSource::Memory {
            FILL_JOINS.inc();
        }
        ctx.source = Some(source);
        Ok(None)
    }

    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<bool> {
        // Only the cache lock's writer gets here. Its lookup may have missed just before
        // another writer registered its fill and released the lock; look again now that the
        // lock is ours, so a chunk is never fetched twice.
        if ctx.attempts == 0 && ctx.inflight.is_none() {
            let chunk = ctx_chunk(ctx)?.clone();
            if let Some(hit) = self.orca.storage.open_for_fill(&chunk, self.local).await {
                // Let the waiters look again (they will find the same chunk), then serve it.
                session.cache.disable(NoCacheReason::DeclinedToUpstream);
                if hit.source == ChunkSource::Memory {
                    FILL_JOINS.inc();
                }
                ctx.source = Some(hit.source);
                serve_hit(session, hit, chunk.len).await?;
                return Ok(false);
            }
        }
        // The fill this request waited on (the cache lock) failed after all its attempts:
        // that is this request's answer too. Without this, each waiter would become the
        // writer in turn and make its own attempts: N waiting clients, 3N origin requests.
        if ctx.attempts == 0 && ctx.inflight.is_none() {
            let chunk = ctx_chunk(ctx)?.clone();
            let since = ctx.started.unwrap_or_else(tokio::time::Instant::now);
            if let Some(e) = self.orca.storage.failure_since(&chunk.id, since) {
                tracing::debug!(chunk = %chunk.id, error = %e, "the fill waited on failed; answering its error");
                let mut err = origin_err(&e);
                err.set_retry(false);
                ctx.error = Some(e);
                return Err(err);
            }
        }
        // One origin fill per chunk per replica, at most `origin_concurrency` at once. A permit
        // is held only while an origin answer is being read (see `InflightGuard`), so one
        // comes free within an origin request's time; the wait is bounded all the same, by
        // the cache-lock timeout (the lock this writer holds lasts no longer either), and
        // then answered "slow down" rather than held on.
        if ctx.inflight.is_none() {
            // Counted from the request's start: a waiter that took over the lock after waiting
            // on it must not wait a whole timeout again, past the edge's own deadline.
            let started = ctx.started.unwrap_or_else(tokio::time::Instant::now);
            let wait = self.orca.lock_timeout().saturating_sub(started.elapsed());
            let acquire = self.orca.origin_permits.clone().acquire_owned();
            let permit = match tokio::time::timeout(wait, acquire).await {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) => {
                    return Error::e_explain(ErrorType::InternalError, "origin permits closed")
                }
                Err(_) => {
                    let chunk = ctx_chunk(ctx)?;
                    tracing::warn!(request_id = %ctx.request_id, chunk = %chunk.id, ?wait, "no origin permit came free in time; answering 503 SlowDown");
                    ctx.refusal = Some(no_origin_slot(wait));
                    return Error::e_explain(
                        ErrorType::HTTPStatus(503),
                        "no origin permit within the cache-lock timeout",
                    );
                }
            };
            FILLS_INFLIGHT.inc();
            ctx.inflight = Some(InflightGuard { _permit: permit });
        }
        ctx.source = Some(ChunkSource::Origin);
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        if ctx.attempts > 0 {
            tokio::time::sleep(backoff(ctx.attempts)).await;
        }
        ctx.attempts += 1;
        ctx.error = None;
        let chunk = ctx_chunk(ctx)?.clone();
        match self.orca.origin.chunk_peer(&chunk.version.bucket).await {
            Ok(peer) => Ok(Box::new(peer)),
            Err(e) => {
                let mut err = origin_err(&e);
                err.set_retry(e.is_retryable() && ctx.attempts < ORIGIN_ATTEMPTS);
                ctx.error = Some(e);
                self.remember_if_final(ctx, &err);
                Err(err)
            }
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let chunk = ctx_chunk(ctx)?.clone();
        match self.orca.origin.chunk_request(&chunk) {
            Ok(req) => {
                tracing::debug!(
                    request_id = %ctx.request_id,
                    chunk = %chunk.id,
                    bucket = %chunk.version.bucket,
                    key = %chunk.version.key,
                    etag = %crate::chunk::etag_short(&chunk.version.etag),
                    start = chunk.offset(),
                    end = chunk.last_byte(),
                    attempt = ctx.attempts,
                    "origin chunk GET"
                );
                *upstream_request = req;
                Ok(())
            }
            Err(e) => {
                let err = origin_err(&e);
                ctx.error = Some(e);
                Err(err)
            }
        }
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        ORIGIN_REQUESTS
            .with_label_values(&["get", resp.status.as_str()])
            .inc();
        let chunk = ctx_chunk(ctx)?.clone();
        if let Err(e) = check_chunk_response(&*self.orca.origin, &chunk, resp) {
            let v = &chunk.version;
            match &e {
                // The next HEAD pins the new version.
                OriginError::ETagChanged => self.orca.metadata.invalidate(&v.bucket, &v.key),
                // A chunk GET's refusal comes without its code (the body is not read): let
                // the next HEAD of the object tell the credentials' refusal from the object's,
                // and leave the credentials' health alone meanwhile.
                OriginError::AccessDenied => self.orca.metadata.invalidate(&v.bucket, &v.key),
                _ => self
                    .orca
                    .health
                    .record_for::<()>(&v.bucket, Some(&v.key), &Err(e.clone())),
            }
            tracing::warn!(request_id = %ctx.request_id, chunk = %chunk.id, status, error = %e, attempt = ctx.attempts, "origin chunk GET failed");
            let mut err = origin_err(&e);
            err.set_retry(e.is_retryable() && ctx.attempts < ORIGIN_ATTEMPTS);
            ctx.error = Some(e);
            self.remember_if_final(ctx, &err);
            return Err(err);
        }
        // The chunk's own 200: whole, self-contained, exactly its expected length.
        ctx.response_accepted = true;
        resp.set_status(200)?;
        resp.remove_header("content-range");
        resp.insert_header("content-length", chunk.len.to_string())?;
        Ok(())
    }

    fn response_cache_filter(
        &self,
        _session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<RespCacheable> {
        match (&ctx.chunk, resp.status.as_u16()) {
            (Some(chunk), 200) => Ok(RespCacheable::Cacheable(chunk_meta(chunk.len)?)),
            _ => Ok(RespCacheable::Uncacheable(NoCacheReason::OriginNotCache)),
        }
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        if let Some(b) = body {
            ORIGIN_BYTES.inc_by(b.len() as u64);
        }
        if end_of_stream {
            // The origin's answer is whole (it goes on into the flight): its permit is free
            // for another fill, however long the requester takes to read this answer.
            ctx.inflight = None;
        }
        Ok(None)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // A fill that goes on uncached (its cache-lock wait timed out, or the storage refused
        // it a flight) is not read into a flight ahead of its requester: Pingora reads the
        // origin only as fast as this answer is written, holding an origin permit meanwhile.
        // An answer to this replica's own edge then gets the write timeout after all, so an
        // answer read ahead and left unread cannot hold that permit for longer.
        if !session.cache.enabled() {
            if self.local {
                session.set_write_timeout(Some(self.orca.config.limits.client_write_timeout));
            }
            // The answer is the bytes' only copy: this replica's edge reads it rather than
            // the storage (see `FillBody::kept`).
            resp.insert_header(UNCACHED_HEADER, "1")?;
        }
        if let Some(source) = ctx.source {
            resp.insert_header(SOURCE_HEADER, source.as_str())?;
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ORIGIN_REQUESTS.with_label_values(&["get", "0"]).inc();
        e.set_retry(ctx.attempts < ORIGIN_ATTEMPTS);
        self.remember_if_final(ctx, &e);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        _session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("origin {peer}"));
        if ctx.error.is_none() && !ctx.response_accepted {
            // No answer at all (reset, timeout, a pooled connection the origin had closed).
            ORIGIN_REQUESTS.with_label_values(&["get", "0"]).inc();
        }
        // Retry only before the origin's answer was accepted, only what may succeed next
        // time (no answer, 5xx, timeouts: not 403, 404 or 412), and at most ORIGIN_ATTEMPTS.
        let retryable = ctx.error.as_ref().is_none_or(OriginError::is_retryable);
        e.set_retry(!ctx.response_accepted && retryable && ctx.attempts < ORIGIN_ATTEMPTS);
        self.remember_if_final(ctx, &e);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        // The fill is over (no retry follows): its origin permit is free before this answer
        // is written.
        ctx.inflight = None;
        if session.response_written().is_some() {
            // Headers are out: abort, so the caller sees a short body, never a clean end.
            if self.local && matches!(e.etype, ErrorType::WriteError | ErrorType::ConnectionClosed)
            {
                // This replica's edge drops its answer once the fill has started and reads the
                // chunk from the storage; a sub-range fill goes on in its own task.
                tracing::debug!(error = %e, "the edge stopped reading its fill's answer");
            } else {
                tracing::warn!(error = %e, "fill failed after its first byte; aborting");
            }
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let s3 = match ctx.refusal.take() {
            Some(refusal) => refusal,
            None => ctx.error.clone().unwrap_or_else(|| error_of(e)).to_s3(),
        };
        let resource = session.req_header().uri.path().to_string();
        let _ = crate::error::write_error(session, &s3, &resource, &ctx.request_id).await;
        FailToProxy {
            error_code: s3.status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        // A peer's fill that went to the origin is counted here, on the replica that fetched
        // it; the asking replica counts it as `peer`. Summed over a fleet, `origin` equals the
        // origin chunk GETs.
        if !self.local && e.is_none() && ctx.source == Some(ChunkSource::Origin) {
            ChunkSource::Origin.count();
        }
        if let Some(chunk) = &ctx.chunk {
            tracing::debug!(
                request_id = %ctx.request_id,
                local = self.local,
                chunk = %chunk.id,
                phase = ?session.cache.phase(),
                source = ctx.source.map(ChunkSource::as_str),
                attempts = ctx.attempts,
                error = e.map(|e| e.to_string()),
                "fill request"
            );
        }
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &Self::CTX,
        _error: &Error,
        context: ProxyWarnLogContext,
    ) -> bool {
        // This replica's edge reads a fill from the storage once it started (it drops its
        // in-process request after the header): that the fill goes on without a reader is
        // the design, not news. A peer that stopped reading is worth its warning.
        self.local && matches!(context, ProxyWarnLogContext::DownstreamCache)
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, _error: &Error) -> bool {
        // Logged once by Orca with context; pingora's line would repeat it.
        true
    }
}

/// Checks an origin answer to a chunk GET: a 206 with the exact Content-Range and the pinned
/// ETag (or a 200 carrying the whole object when the chunk is the whole object).
fn check_chunk_response(
    origin: &dyn crate::origin::Origin,
    chunk: &Chunk,
    resp: &ResponseHeader,
) -> std::result::Result<(), OriginError> {
    check_range_response(origin, chunk, chunk.offset(), chunk.last_byte(), resp)
}

/// Checks an origin answer to a GET of bytes `start..=end` of `chunk`'s object: a 206 with
/// the exact Content-Range and the pinned ETag (or a 200 when the range is the whole object).
pub(super) fn check_range_response(
    origin: &dyn crate::origin::Origin,
    chunk: &Chunk,
    start: u64,
    end: u64,
    resp: &ResponseHeader,
) -> std::result::Result<(), OriginError> {
    let status = resp.status.as_u16();
    let size = chunk.version.size;
    match status {
        206 => {
            let want = format!("bytes {start}-{end}/{size}");
            let got = header_str(resp, "content-range").unwrap_or("");
            if got.trim() != want {
                // A different total means a different object: the version changed.
                let total = got
                    .rsplit('/')
                    .next()
                    .and_then(|t| t.trim().parse::<u64>().ok());
                if total.is_some_and(|t| t != size) {
                    return Err(OriginError::ETagChanged);
                }
                return Err(OriginError::Protocol(format!(
                    "Content-Range {got:?}, expected {want:?}"
                )));
            }
        }
        200 if start == 0 && end + 1 == size => {}
        _ => return Err(origin.classify(resp)),
    }
    match origin.etag_of(resp) {
        Some(etag) if etag == chunk.version.etag => {}
        Some(_) => return Err(OriginError::ETagChanged),
        None => return Err(OriginError::MissingETag),
    }
    let want_len = end + 1 - start;
    if let Some(len) = header_str(resp, "content-length").and_then(|v| v.trim().parse::<u64>().ok())
    {
        if len != want_len {
            return Err(OriginError::Protocol(format!(
                "Content-Length {len}, expected {want_len}"
            )));
        }
    }
    Ok(())
}

/// The answer to a fill that got no origin permit within `wait`: `503 SlowDown`, which the
/// asking edge passes on to its client and a peer takes as "fill it yourself".
pub(super) fn no_origin_slot(wait: Duration) -> S3Error {
    S3Error::slow_down(format!("No origin fill slot came free within {wait:?}."))
}

/// The chunk `request_filter` decoded (every later hook runs after it succeeded).
fn ctx_chunk(ctx: &FillCtx) -> Result<&Chunk> {
    ctx.chunk
        .as_ref()
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "fill without a chunk"))
}

/// Serves a whole chunk from a hit (a fill in flight or the store) as the response.
async fn serve_hit(
    session: &mut Session,
    mut hit: crate::cachestore::storage::ChunkHit,
    expected_len: u64,
) -> Result<()> {
    let mut resp = ResponseHeader::build(200, Some(3))?;
    resp.insert_header("content-length", expected_len.to_string())?;
    resp.insert_header("content-type", "application/octet-stream")?;
    resp.insert_header(SOURCE_HEADER, hit.source.as_str())?;
    session.write_response_header(Box::new(resp), false).await?;
    let mut sent = 0u64;
    while let Some(piece) = hit
        .reader
        .next_piece()
        .await
        .map_err(|e| Error::because(ErrorType::ReadError, "reading chunk", e))?
    {
        sent += piece.len() as u64;
        session
            .write_response_body(Some(piece), sent >= expected_len)
            .await?;
    }
    if sent != expected_len {
        return Error::e_explain(
            ErrorType::ReadError,
            format!("chunk ended at {sent} of {expected_len} bytes"),
        );
    }
    Ok(())
}
