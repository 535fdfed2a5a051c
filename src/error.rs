//! The S3 errors Orca answers with, and their XML.
//!
//! Every failure a client can see is one [`S3Error`]: a status, an S3 error code and a message.
//! Origin faults are mapped here once (see [`crate::origin::OriginError::to_s3`]).

use bytes::Bytes;
use pingora::protocols::http::ServerSession;
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use rand::Rng;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

/// An error answer to a client, in S3's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Error {
    /// HTTP status.
    pub status: u16,
    /// S3 error code (`NoSuchKey`, `InvalidRange`, ...).
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl S3Error {
    /// Builds an error.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 404 NoSuchKey.
    pub fn no_such_key() -> Self {
        Self::new(404, "NoSuchKey", "The specified key does not exist.")
    }

    /// 404 NoSuchBucket.
    pub fn no_such_bucket() -> Self {
        Self::new(404, "NoSuchBucket", "The specified bucket does not exist.")
    }

    /// 416 InvalidRange.
    pub fn invalid_range() -> Self {
        Self::new(
            416,
            "InvalidRange",
            "The requested range is not satisfiable",
        )
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "The specified method is not allowed against this resource. Orca is read-only.",
        )
    }

    /// 503 SlowDown: the client should back off and retry (S3's own answer under load).
    pub fn slow_down(message: impl Into<String>) -> Self {
        Self::new(503, "SlowDown", message)
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// The XML body: `<Error><Code/><Message/><Resource/><RequestId/></Error>`.
    pub fn to_xml(&self, resource: &str, request_id: &str) -> Bytes {
        let mut s = String::with_capacity(256);
        s.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>");
        s.push_str(self.code);
        s.push_str("</Code><Message>");
        xml_escape_into(&mut s, &self.message);
        s.push_str("</Message><Resource>");
        xml_escape_into(&mut s, resource);
        s.push_str("</Resource><RequestId>");
        xml_escape_into(&mut s, request_id);
        let _ = write!(s, "</RequestId></Error>");
        Bytes::from(s)
    }
}

impl std::fmt::Display for S3Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for S3Error {}

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

/// A session an S3 error can be written to: the edge's (a plain HTTP server session) or the
/// fill service's (a Pingora proxy session).
pub trait Respond: Send {
    /// The request being answered.
    fn request(&self) -> &RequestHeader;
    /// Writes the response header (`end`: no body follows).
    fn send_header(
        &mut self,
        resp: Box<ResponseHeader>,
        end: bool,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Writes the whole body.
    fn send_body(&mut self, body: Bytes) -> impl Future<Output = Result<()>> + Send;
}

impl Respond for Session {
    fn request(&self) -> &RequestHeader {
        self.req_header()
    }

    async fn send_header(&mut self, resp: Box<ResponseHeader>, end: bool) -> Result<()> {
        self.write_response_header(resp, end).await
    }

    async fn send_body(&mut self, body: Bytes) -> Result<()> {
        self.write_response_body(Some(body), true).await
    }
}

impl Respond for ServerSession {
    fn request(&self) -> &RequestHeader {
        self.req_header()
    }

    async fn send_header(&mut self, resp: Box<ResponseHeader>, _end: bool) -> Result<()> {
        // A body-less answer ends when the session is finished.
        self.write_response_header(resp).await
    }

    async fn send_body(&mut self, body: Bytes) -> Result<()> {
        self.write_response_body(body, true).await
    }
}

/// Writes an S3 XML error as the whole response, under the request's id.
pub async fn write_error(
    session: &mut impl Respond,
    e: &S3Error,
    resource: &str,
    request_id: &str,
) -> Result<()> {
    write_error_with(session, e, resource, request_id, &[]).await
}

/// [`write_error`] with extra response headers.
pub async fn write_error_with(
    session: &mut impl Respond,
    e: &S3Error,
    resource: &str,
    request_id: &str,
    extra: &[(&'static str, &str)],
) -> Result<()> {
    let body = e.to_xml(resource, request_id);
    let mut resp = ResponseHeader::build(e.status, Some(4 + extra.len()))?;
    resp.insert_header("content-type", "application/xml")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("x-amz-request-id", request_id)?;
    for (name, value) in extra {
        resp.insert_header(*name, *value)?;
    }
    let head = session.request().method == http::Method::HEAD;
    session.send_header(Box::new(resp), head).await?;
    if !head {
        session.send_body(body).await?;
    }
    Ok(())
}

/// Appends `text` to `out` with XML's five special characters escaped.
pub fn xml_escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
}

/// Pulls `<Code>` out of an S3 XML error body (the fill service and origins answer with one).
pub fn code_from_xml(body: &[u8]) -> Option<String> {
    xml_text(body, "Code")
}

/// The text of the first `<tag>` element of a small XML answer, unescaped and trimmed.
pub fn xml_text(body: &[u8], tag: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&format!("</{tag}>"))? + start;
    let raw = text[start..end].trim();
    Some(
        quick_xml::escape::unescape(raw)
            .map(|t| t.into_owned())
            .unwrap_or_else(|_| raw.to_string()),
    )
}

/// The character an XML entity reference stands for: a character reference (`&#38;`) or one of
/// XML's five named entities. Err names an entity XML does not define.
pub fn xml_entity(r: &quick_xml::events::BytesRef<'_>) -> Result<char, String> {
    match r.resolve_char_ref().map_err(|e| e.to_string())? {
        Some(c) => Ok(c),
        None => match &**r {
            b"amp" => Ok('&'),
            b"lt" => Ok('<'),
            b"gt" => Ok('>'),
            b"quot" => Ok('"'),
            b"apos" => Ok('\''),
            other => Err(format!(
                "unknown entity &{};",
                String::from_utf8_lossy(other)
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_escapes_and_round_trips_code() {
        let e = S3Error::no_such_key();
        let xml = e.to_xml("/b/a<b>&'\"", "req1");
        let s = std::str::from_utf8(&xml).unwrap_or_default();
        assert!(s.contains("<Resource>/b/a&lt;b&gt;&amp;&apos;&quot;</Resource>"));
        assert!(s.contains("<RequestId>req1</RequestId>"));
        assert_eq!(code_from_xml(&xml).as_deref(), Some("NoSuchKey"));
        assert_eq!(code_from_xml(b"junk"), None);
    }
}
