//! Object GET and HEAD: metadata, conditionals, ranges, response headers, and the chunk stream.

use super::conditional::{self, Outcome};
use super::pipeline::Pipeline;
use super::request::{query_params, RESPONSE_OVERRIDES};
use super::{internal, Answer, EdgeCtx, EdgeService};
use crate::chunk::{parse_range, ByteRange, ObjectVersion, RangeRequest};
use crate::error::S3Error;
use crate::metrics::EDGE_BYTES_SENT;
use crate::origin::ObjectMeta;
use pingora::protocols::http::ServerSession as Session;
use pingora_error::Result;
use pingora_http::ResponseHeader;

/// How the response to an object request is shaped beyond its status and length.
struct Shape {
    /// `response-*` overrides from the query.
    overrides: Vec<(&'static str, String)>,
    /// Send the object's checksums (whole-object GET, or HEAD, asked with checksum mode).
    checksums: bool,
}

fn checksum_mode(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get("x-amz-checksum-mode")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("enabled"))
}

fn overrides(session: &Session) -> std::result::Result<Vec<(&'static str, String)>, S3Error> {
    let params = query_params(session.req_header())?;
    Ok(RESPONSE_OVERRIDES
        .iter()
        .filter_map(|(param, header)| {
            params
                .iter()
                .rev()
                .find(|(n, _)| n == param)
                .map(|(_, v)| (*header, v.clone()))
        })
        .collect())
}

impl EdgeService {
    fn object_headers(
        &self,
        status: u16,
        meta: &ObjectMeta,
        content_length: u64,
        ctx: &EdgeCtx,
        shape: &Shape,
    ) -> Result<ResponseHeader> {
        let mut resp = ResponseHeader::build(status, Some(16))?;
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
        for (name, value) in &shape.overrides {
            resp.insert_header(*name, value)?;
        }
        if shape.checksums {
            for (name, value) in &meta.checksums {
                resp.insert_header(name.clone(), value)?;
            }
        }
        resp.insert_header("x-amz-request-id", &ctx.request_id)?;
        Ok(resp)
    }

    /// Resolves the object and its preconditions; `Ok(None)` when a 304 was written.
    async fn resolve(
        &self,
        session: &mut Session,
        ctx: &mut EdgeCtx,
        bucket: &str,
        key: &str,
    ) -> std::result::Result<Option<(ObjectMeta, bool)>, S3Error> {
        let meta = self
            .orca
            .metadata
            .get(bucket, key)
            .await
            .map_err(|e| e.to_s3())?;
        let last_modified = meta
            .last_modified
            .as_deref()
            .and_then(|lm| httpdate::parse_http_date(lm).ok());
        match conditional::evaluate(&session.req_header().headers, &meta.etag, last_modified) {
            Outcome::Failed => Err(S3Error::new(
                412,
                "PreconditionFailed",
                "At least one of the pre-conditions you specified did not hold",
            )),
            Outcome::NotModified => {
                let mut resp = ResponseHeader::build(304, Some(4)).map_err(internal)?;
                (|| -> Result<()> {
                    resp.insert_header("etag", format!("\"{}\"", meta.etag))?;
                    if let Some(lm) = &meta.last_modified {
                        resp.insert_header("last-modified", lm)?;
                    }
                    resp.insert_header("x-amz-request-id", &ctx.request_id)?;
                    Ok(())
                })()
                .map_err(internal)?;
                ctx.status = 304;
                session
                    .write_response_header(Box::new(resp))
                    .await
                    .map_err(internal)?;
                Ok(None)
            }
            Outcome::Proceed { use_range } => Ok(Some((meta, use_range))),
        }
    }

    pub(super) async fn head_object(
        &self,
        session: &mut Session,
        ctx: &mut EdgeCtx,
        bucket: &str,
        key: &str,
    ) -> Answer {
        let Some((meta, use_range)) = self.resolve(session, ctx, bucket, key).await? else {
            return Ok(());
        };
        // A HEAD with a Range describes that part, as S3 answers it: 206 with its
        // Content-Range and length, or 416.
        let (status, part) = match requested_range(session, use_range, meta.size) {
            RangeRequest::Unsatisfiable => {
                let mut resp = ResponseHeader::build(416, Some(3)).map_err(internal)?;
                resp.insert_header("content-range", format!("bytes */{}", meta.size))
                    .and_then(|_| resp.insert_header("x-amz-request-id", &ctx.request_id))
                    .map_err(internal)?;
                ctx.status = 416;
                return session
                    .write_response_header(Box::new(resp))
                    .await
                    .map_err(internal);
            }
            RangeRequest::Partial(r) => (206, Some(r)),
            RangeRequest::Whole => (200, None),
        };
        let shape = Shape {
            overrides: overrides(session)?,
            checksums: status == 200 && checksum_mode(session),
        };
        let len = part.map_or(meta.size, |r| r.len());
        let mut resp = self
            .object_headers(status, &meta, len, ctx, &shape)
            .map_err(internal)?;
        if let Some(r) = part {
            resp.insert_header(
                "content-range",
                format!("bytes {}-{}/{}", r.start, r.end, meta.size),
            )
            .map_err(internal)?;
        }
        ctx.status = status;
        session
            .write_response_header(Box::new(resp))
            .await
            .map_err(internal)
    }

    pub(super) async fn get_object(
        &self,
        session: &mut Session,
        ctx: &mut EdgeCtx,
        bucket: &str,
        key: &str,
    ) -> Answer {
        let Some((meta, use_range)) = self.resolve(session, ctx, bucket, key).await? else {
            return Ok(());
        };
        let (status, range) = match requested_range(session, use_range, meta.size) {
            RangeRequest::Unsatisfiable => return self.unsatisfiable(session, ctx, &meta).await,
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
        // Checksums describe the whole object: never on a part (boto3 would reject them).
        let shape = Shape {
            overrides: overrides(session)?,
            checksums: status == 200 && checksum_mode(session) && meta.has_full_object_checksum(),
        };
        let Some(range) = range else {
            // A zero-byte object: nothing to fetch.
            let resp = self
                .object_headers(200, &meta, 0, ctx, &shape)
                .map_err(internal)?;
            ctx.status = 200;
            return session
                .write_response_header(Box::new(resp))
                .await
                .map_err(internal);
        };
        let chunk_size = self.orca.config.chunking.chunk_size_for(meta.size);
        let version = ObjectVersion {
            origin_id: self.orca.config.origin.id.clone(),
            bucket: bucket.to_string(),
            key: key.to_string(),
            etag: meta.etag.clone(),
            size: meta.size,
        };
        let mut pipeline = Pipeline::new(self.shared.clone(), version, chunk_size, range)
            .for_request(&ctx.request_id);
        // Status only after the first byte is in hand.
        let first = pipeline
            .next_piece()
            .await
            .map_err(|e| e.to_s3())?
            .ok_or_else(|| S3Error::internal("empty first chunk"))?;
        let mut resp = self
            .object_headers(status, &meta, range.len(), ctx, &shape)
            .map_err(internal)?;
        if status == 206 {
            resp.insert_header(
                "content-range",
                format!("bytes {}-{}/{}", range.start, range.end, meta.size),
            )
            .map_err(internal)?;
        }
        ctx.status = status;
        session
            .write_response_header(Box::new(resp))
            .await
            .map_err(internal)?;
        let mut sent = 0u64;
        let mut piece = Some(first);
        while let Some(p) = piece {
            sent += p.len() as u64;
            EDGE_BYTES_SENT.inc_by(p.len() as u64);
            let last = sent >= range.len();
            session
                .write_response_body(p, last)
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
    ) -> Answer {
        let e = S3Error::invalid_range();
        let resource = session.req_header().uri.path().to_string();
        let body = e.to_xml(&resource, &ctx.request_id);
        let range = ("content-range", format!("bytes */{}", meta.size));
        self.write_body(session, ctx, 416, "application/xml", body, &[range])
            .await
    }
}

/// The client's `Range` over an object of `size` bytes (ignored when an `If-Range` did not
/// match: `use_range` false).
fn requested_range(session: &Session, use_range: bool, size: u64) -> RangeRequest {
    let header = session
        .req_header()
        .headers
        .get("range")
        .filter(|_| use_range)
        .map(|v| v.as_bytes());
    parse_range(header, size)
}
