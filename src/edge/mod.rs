//! The edge service: the S3 surface clients talk to.
//!
//! Everything happens in `request_filter`, which writes the whole response and returns
//! `Ok(true)`: parse the S3 request, resolve the object through the metadata cache, map the
//! client's `Range` onto chunks, and stream the chunks in order through a [`pipeline`]. The
//! status line is written only once the first byte of the first chunk is in hand, so a failure
//! before that is a proper S3 XML error; a failure after it aborts the connection, so the
//! client sees a short body, never a silently truncated success.

pub mod fill_client;
pub mod pipeline;
pub mod request;

use crate::app::Orca;
use crate::chunk::{parse_range, ByteRange, ObjectVersion, RangeRequest};
use crate::error::S3Error;
use crate::fill::write_error;
use crate::metrics::{EDGE_BYTES_SENT, EDGE_DURATION, EDGE_REQUESTS};
use crate::origin::ObjectMeta;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use rand::Rng;
use request::S3Request;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A fresh request id: 16 hex characters, unique within the process and unlikely across.
pub fn request_id() -> String {
    static PREFIX: once_cell::sync::Lazy<u32> =
        once_cell::sync::Lazy::new(|| rand::thread_rng().gen());
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{:08X}{:08X}",
        *PREFIX,
        NEXT.fetch_add(1, Ordering::Relaxed) as u32
    )
}

/// The edge service.
pub struct EdgeService {
    orca: Arc<Orca>,
}

impl EdgeService {
    /// An edge over shared state.
    pub fn new(orca: Arc<Orca>) -> Self {
        Self { orca }
    }
}

/// Per-request state, for metrics and logs.
pub struct EdgeCtx {
    start: Instant,
    status: u16,
    request_id: String,
}

#[async_trait]
impl ProxyHttp for EdgeService {
    type CTX = EdgeCtx;

    fn new_ctx(&self) -> Self::CTX {
        EdgeCtx {
            start: Instant::now(),
            status: 0,
            request_id: request_id(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let resource = session.req_header().uri.path().to_string();
        let request = request::parse(session.req_header(), &self.orca.config.edge);
        let outcome = match request {
            Err(e) => Err(e),
            Ok(S3Request::HeadObject { bucket, key }) => {
                self.head_object(session, ctx, &bucket, &key).await
            }
            Ok(S3Request::GetObject { bucket, key }) => {
                self.get_object(session, ctx, &bucket, &key).await
            }
        };
        match outcome {
            Ok(()) => Ok(true),
            Err(e) if session.response_written().is_none() => {
                ctx.status = e.status;
                write_error(session, &e, &resource, &ctx.request_id).await?;
                Ok(true)
            }
            Err(e) => {
                // Headers are out: abort the connection so the client sees a short body.
                Err(Error::explain(
                    ErrorType::HTTPStatus(e.status),
                    format!("aborted after headers: {e}"),
                ))
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        // request_filter answers every request itself.
        Error::e_explain(ErrorType::InternalError, "the edge has no upstream")
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        if session.response_written().is_some() {
            tracing::warn!(request_id = %ctx.request_id, error = %e, "response aborted after its headers");
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let s3 = S3Error::internal(e.to_string());
        let resource = session.req_header().uri.path().to_string();
        let _ = write_error(session, &s3, &resource, &ctx.request_id).await;
        ctx.status = s3.status;
        FailToProxy {
            error_code: s3.status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        let method = session.req_header().method.as_str().to_string();
        let status = match (e, session.response_written()) {
            (_, Some(resp)) => resp.status.as_u16(),
            (Some(_), None) => 0,
            (None, None) => ctx.status,
        };
        let status = if e.is_some() && session.response_written().is_some() {
            // Aborted after the headers: report it as what the client got, a broken response.
            0
        } else {
            status
        };
        EDGE_REQUESTS
            .with_label_values(&[&method, &status.to_string()])
            .inc();
        EDGE_DURATION
            .with_label_values(&[&method])
            .observe(ctx.start.elapsed().as_secs_f64());
        tracing::debug!(
            request_id = %ctx.request_id,
            method = %method,
            // The path only: a presigned URL's query carries its signature.
            path = %session.req_header().uri.path(),
            status,
            ms = ctx.start.elapsed().as_millis() as u64,
            "edge request"
        );
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, _error: &Error) -> bool {
        true
    }
}

impl EdgeService {
    fn object_headers(
        &self,
        status: u16,
        meta: &ObjectMeta,
        content_length: u64,
        ctx: &EdgeCtx,
    ) -> Result<ResponseHeader> {
        let mut resp = ResponseHeader::build(status, Some(12))?;
        resp.insert_header("content-length", content_length.to_string())?;
        resp.insert_header("etag", format!("\"{}\"", meta.etag))?;
        if let Some(lm) = &meta.last_modified {
            resp.insert_header("last-modified", lm)?;
        }
        resp.insert_header(
            "content-type",
            meta.content_type
                .as_deref()
                .unwrap_or("binary/octet-stream"),
        )?;
        resp.insert_header("accept-ranges", "bytes")?;
        for (name, value) in &meta.extra_headers {
            resp.append_header(name.clone(), value)?;
        }
        resp.insert_header("x-amz-request-id", &ctx.request_id)?;
        Ok(resp)
    }

    async fn head_object(
        &self,
        session: &mut Session,
        ctx: &mut EdgeCtx,
        bucket: &str,
        key: &str,
    ) -> std::result::Result<(), S3Error> {
        let meta = self
            .orca
            .metadata
            .get(bucket, key)
            .await
            .map_err(|e| e.to_s3())?;
        let resp = self
            .object_headers(200, &meta, meta.size, ctx)
            .map_err(|e| S3Error::internal(e.to_string()))?;
        ctx.status = 200;
        session
            .write_response_header(Box::new(resp), true)
            .await
            .map_err(|e| S3Error::internal(e.to_string()))
    }

    async fn get_object(
        &self,
        session: &mut Session,
        ctx: &mut EdgeCtx,
        bucket: &str,
        key: &str,
    ) -> std::result::Result<(), S3Error> {
        let meta = self
            .orca
            .metadata
            .get(bucket, key)
            .await
            .map_err(|e| e.to_s3())?;
        let range_header = session
            .req_header()
            .headers
            .get("range")
            .map(|v| v.as_bytes());
        let (status, range) = match parse_range(range_header, meta.size) {
            RangeRequest::Unsatisfiable => {
                return self.unsatisfiable(session, ctx, &meta).await;
            }
            RangeRequest::Partial(r) => (206, Some(r)),
            RangeRequest::Whole if meta.size == 0 => (200, None),
            RangeRequest::Whole => (
                200,
                Some(ByteRange {
                    start: 0,
                    end: meta.size - 1,
                }),
            ),
        };
        let Some(range) = range else {
            // A zero-byte object: nothing to fetch.
            let resp = self
                .object_headers(200, &meta, 0, ctx)
                .map_err(|e| S3Error::internal(e.to_string()))?;
            ctx.status = 200;
            return session
                .write_response_header(Box::new(resp), true)
                .await
                .map_err(|e| S3Error::internal(e.to_string()));
        };
        let chunk_size = self.orca.config.chunking.chunk_size_for(meta.size);
        let version = ObjectVersion {
            origin_id: self.orca.config.origin.id.clone(),
            bucket: bucket.to_string(),
            key: key.to_string(),
            etag: meta.etag.clone(),
            size: meta.size,
        };
        let mut pipeline = pipeline::Pipeline::new(self.orca.clone(), version, chunk_size, range);
        // Status only after the first byte is in hand.
        let first = pipeline
            .next_piece()
            .await
            .map_err(|e| e.to_s3())?
            .ok_or_else(|| S3Error::internal("empty first chunk"))?;
        let mut resp = self
            .object_headers(status, &meta, range.len(), ctx)
            .map_err(|e| S3Error::internal(e.to_string()))?;
        if status == 206 {
            resp.insert_header(
                "content-range",
                format!("bytes {}-{}/{}", range.start, range.end, meta.size),
            )
            .map_err(|e| S3Error::internal(e.to_string()))?;
        }
        ctx.status = status;
        session
            .write_response_header(Box::new(resp), false)
            .await
            .map_err(|e| S3Error::internal(e.to_string()))?;
        let mut sent = 0u64;
        let mut piece = Some(first);
        while let Some(p) = piece {
            sent += p.len() as u64;
            EDGE_BYTES_SENT.inc_by(p.len() as u64);
            let last = sent >= range.len();
            session
                .write_response_body(Some(p), last)
                .await
                .map_err(|e| S3Error::new(499, "ClientGone", e.to_string()))?;
            if last {
                break;
            }
            piece = pipeline.next_piece().await.map_err(|e| e.to_s3())?;
        }
        if sent != range.len() {
            return Err(S3Error::internal(format!(
                "sent {sent} of {} bytes",
                range.len()
            )));
        }
        Ok(())
    }

    async fn unsatisfiable(
        &self,
        session: &mut Session,
        ctx: &mut EdgeCtx,
        meta: &ObjectMeta,
    ) -> std::result::Result<(), S3Error> {
        let e = S3Error::invalid_range();
        let resource = session.req_header().uri.path().to_string();
        let body: Bytes = e.to_xml(&resource, &ctx.request_id);
        let build = || -> Result<ResponseHeader> {
            let mut resp = ResponseHeader::build(416, Some(5))?;
            resp.insert_header("content-type", "application/xml")?;
            resp.insert_header("content-length", body.len().to_string())?;
            resp.insert_header("content-range", format!("bytes */{}", meta.size))?;
            resp.insert_header("x-amz-request-id", &ctx.request_id)?;
            Ok(resp)
        };
        let resp = build().map_err(|e| S3Error::internal(e.to_string()))?;
        ctx.status = 416;
        session
            .write_response_header(Box::new(resp), false)
            .await
            .and(Ok(()))
            .map_err(|e: Box<Error>| S3Error::internal(e.to_string()))?;
        session
            .write_response_body(Some(body), true)
            .await
            .map_err(|e| S3Error::internal(e.to_string()))
    }
}
