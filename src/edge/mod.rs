//! The edge service: the S3 surface clients talk to.
//!
//! A plain Pingora HTTP server application ([`EdgeService::serve`] per request): parse the S3
//! request ([`request`]), then answer an object GET or HEAD
//! ([`object`]) or a bucket-level request ([`bucket`]). An object GET resolves the object
//! through the metadata cache, evaluates the client's conditionals ([`conditional`]), maps the
//! `Range` onto chunks and streams them in order through a [`pipeline`]. The status line is
//! written only once the first byte of the first chunk is in hand, so a failure before that is
//! a proper S3 XML error; a failure after it aborts the connection, so the client sees a short
//! body, never a silently truncated success.

pub mod auth;
mod bucket;
pub mod conditional;
pub mod limit;
mod object;
pub mod pipeline;
pub mod request;

use crate::error::S3Error;
use crate::error::{request_id, write_error};
use crate::fill::FillClients;
use crate::metrics;
use crate::state::Orca;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use request::S3Request;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// The edge service: a plain HTTP server application (`HttpServerApp`), not a Pingora proxy.
/// It answers every request itself, so a proxy's per-request machinery (its session wrapper,
/// phases, modules and the boxed request future) bought nothing and cost every small GET about
/// a sixth of its instructions (`docs/benchmarks.md`, "Small objects").
pub struct EdgeService {
    orca: Arc<Orca>,
    shared: Arc<EdgeShared>,
    /// Client authentication (`edge.auth`): built by `app`, which also runs its reloader and
    /// lets `/readyz` ask it.
    auth: Arc<auth::EdgeAuth>,
}

/// What every request's chunk pipeline uses.
pub(crate) struct EdgeShared {
    /// The replica's shared state.
    orca: Arc<Orca>,
    /// This replica's fill service and its peers'.
    fills: FillClients,
    /// `limits.readahead_memory` in KiB: bytes the edge may buffer across all requests.
    readahead_budget: Arc<Semaphore>,
}

impl EdgeService {
    /// An edge over shared state, asking `fills` for the chunks it misses and checking
    /// clients with `auth`.
    pub fn new(orca: Arc<Orca>, fills: FillClients, auth: Arc<auth::EdgeAuth>) -> Self {
        let budget = pipeline::budget_units(orca.config.limits.readahead_memory) as usize;
        let shared = Arc::new(EdgeShared {
            orca: orca.clone(),
            fills,
            readahead_budget: Arc::new(Semaphore::new(budget)),
        });
        Self { orca, shared, auth }
    }
}

/// Per-request state, for metrics and logs.
pub struct EdgeCtx {
    start: Instant,
    status: u16,
    request_id: String,
    /// What the caller may read, once its signature is checked (`auth`).
    access: auth::Access,
}

/// What a handler returns: `Ok` once it wrote its response, or the error to answer with.
type Answer = std::result::Result<(), S3Error>;

fn internal(e: Box<Error>) -> S3Error {
    S3Error::internal(e.to_string())
}

#[async_trait]
impl HttpServerApp for EdgeService {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // A connection waiting for its next request closes when the server shuts down.
        let mut stopping = shutdown.clone();
        let read = tokio::select! {
            biased;
            read = session.read_request() => read,
            Ok(_) = stopping.wait_for(|stop| *stop) => return None,
        };
        match read {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                // A malformed request gets a 400; any other read error is a broken connection.
                if matches!(e.etype, ErrorType::InvalidHTTPHeader) {
                    let _ = session.respond_error(400).await;
                }
                session.shutdown().await;
                return None;
            }
        }
        // CONNECT changes the message framing: refused and the connection closed.
        if session.req_header().method == http::Method::CONNECT {
            let _ = session.respond_error(405).await;
            session.shutdown().await;
            return None;
        }
        if *shutdown.borrow() {
            // Shutting down soon: this is the connection's last request.
            session.set_keepalive(None);
        }
        let mut ctx = EdgeCtx {
            start: Instant::now(),
            status: 0,
            request_id: request_id(),
            access: auth::Access::Open,
        };
        let whole = self.serve(&mut session, &mut ctx).await;
        let status = match session.response_written() {
            // Aborted after the headers: the client got a broken response.
            Some(_) if !whole => 0,
            Some(resp) => resp.status.as_u16(),
            None => ctx.status,
        };
        let method = &session.req_header().method;
        metrics::edge_request_done(method, status, ctx.start.elapsed().as_secs_f64());
        tracing::debug!(
            request_id = %ctx.request_id,
            method = %method,
            // The path only: a presigned URL's query carries its signature.
            path = %session.req_header().uri.path(),
            status,
            ms = ctx.start.elapsed().as_millis() as u64,
            "edge request"
        );
        if !whole {
            // The connection is dropped: the client sees a short body, never a truncated
            // success.
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        session
            .finish()
            .await
            .ok()
            .flatten()
            .map(|s| ReusedHttpStream::from_reusable_stream(s, settings))
    }
}

impl EdgeService {
    /// Answers one request. `false`: the response was aborted (after its headers, or its
    /// error could not be written), and the connection must close.
    async fn serve(&self, session: &mut ServerSession, ctx: &mut EdgeCtx) -> bool {
        // A client that stops reading fails its own request after this long without progress,
        // releasing what it held (read-ahead budget, fills it waited on), instead of holding
        // it for as long as its connection stays open.
        session.set_write_timeout(Some(self.orca.config.limits.client_write_timeout));
        // Signature first (as S3 does), then what is asked, then whether the key may ask it.
        let parsed = self.auth.check(session.req_header()).and_then(|access| {
            let request = request::parse(session.req_header(), &self.orca.config.edge)?;
            access.authorize(&request)?;
            ctx.access = access;
            Ok(request)
        });
        let outcome = match parsed {
            Err(e) => Err(e),
            Ok(S3Request::GetObject { bucket, key }) => {
                self.get_object(session, ctx, &bucket, &key).await
            }
            Ok(S3Request::HeadObject { bucket, key }) => {
                self.head_object(session, ctx, &bucket, &key).await
            }
            Ok(S3Request::ListObjects { bucket, request }) => {
                self.list_objects(session, ctx, &bucket, &request).await
            }
            Ok(S3Request::HeadBucket { bucket }) => self.head_bucket(session, ctx, &bucket).await,
            Ok(S3Request::GetBucketLocation { bucket }) => {
                self.bucket_location(session, ctx, &bucket).await
            }
            Ok(S3Request::ListBuckets) => self.list_buckets(session, ctx).await,
        };
        match outcome {
            Ok(()) => true,
            Err(e) if session.response_written().is_none() => {
                ctx.status = e.status;
                let resource = session.req_header().uri.path().to_string();
                write_error(session, &e, &resource, &ctx.request_id)
                    .await
                    .is_ok()
            }
            Err(e) => {
                tracing::warn!(request_id = %ctx.request_id, error = %e, "response aborted after its headers");
                false
            }
        }
    }
}

impl EdgeService {
    /// Writes a complete response with a body (and any extra headers).
    async fn write_body(
        &self,
        session: &mut ServerSession,
        ctx: &mut EdgeCtx,
        status: u16,
        content_type: &str,
        body: Bytes,
        extra: &[(&'static str, String)],
    ) -> Answer {
        let mut resp = ResponseHeader::build(status, Some(4)).map_err(internal)?;
        let head = session.req_header().method == http::Method::HEAD;
        (|| -> Result<()> {
            resp.insert_header("content-type", content_type)?;
            resp.insert_header("content-length", body.len().to_string())?;
            resp.insert_header("x-amz-request-id", &ctx.request_id)?;
            for (name, value) in extra {
                resp.insert_header(*name, value)?;
            }
            Ok(())
        })()
        .map_err(internal)?;
        ctx.status = status;
        session
            .write_response_header(Box::new(resp))
            .await
            .map_err(internal)?;
        if !head {
            session
                .write_response_body(body, true)
                .await
                .map_err(internal)?;
        }
        Ok(())
    }
}
