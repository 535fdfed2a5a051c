//! HTTP client helpers: reqwest-based async requests that report a truncated body as an error,
//! and a raw HTTP/1.1 exchange (async and blocking) for byte-exact requests.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Per-request timeout of [`http_client`] (the whole exchange, body included).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// Per-read timeout of the raw helpers.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A complete response: status, headers and the whole body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body (empty for HEAD).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` as text, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why a request failed. A body cut short is [`HttpError::Body`], never a success.
#[derive(Clone)]
pub enum HttpError {
    /// Connecting, sending, or reading the response head failed.
    Request(String),
    /// The head arrived but the body failed or was shorter than its Content-Length.
    Body {
        /// Status of the head that did arrive.
        status: u16,
        /// Headers of the head that did arrive.
        headers: HeaderMap,
        /// The bytes received before the failure.
        received: Vec<u8>,
        /// What went wrong.
        error: String,
    },
}

impl std::fmt::Debug for HttpError {
    // Bodies can be megabytes: show their length, not their bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Request(e) => write!(f, "Request({e})"),
            HttpError::Body {
                status,
                headers,
                received,
                error,
            } => write!(
                f,
                "Body {{ status: {status}, headers: {headers:?}, received: {} bytes, error: {error} }}",
                received.len()
            ),
        }
    }
}

impl HttpError {
    /// True for a body-level failure (a head arrived, the body did not complete).
    pub fn is_body_error(&self) -> bool {
        matches!(self, HttpError::Body { .. })
    }

    /// Status of the head, for body errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Body { status, .. } => Some(*status),
            HttpError::Request(_) => None,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Request(e) => write!(f, "request failed: {e}"),
            HttpError::Body {
                status,
                received,
                error,
                ..
            } => write!(
                f,
                "body failed after status {status} and {} bytes: {error}",
                received.len()
            ),
        }
    }
}

impl std::error::Error for HttpError {}

/// A reqwest client for tests: HTTP/1.1 only, no system proxy, a 120 s timeout per request.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(CLIENT_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .expect("build reqwest client")
}

/// Error text with the whole source chain (reqwest hides the interesting part in sources).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    let mut depth = 0;
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
        depth += 1;
        if depth > 16 {
            break;
        }
    }
    text
}

/// Sends `request` and reads the whole body. A body that fails or ends before its Content-Length
/// is an [`HttpError::Body`] carrying what did arrive.
pub async fn send(request: reqwest::RequestBuilder) -> Result<HttpResponse, HttpError> {
    let (client, request) = request.build_split();
    let request = request.map_err(|e| HttpError::Request(error_chain(&e)))?;
    let is_head = request.method() == reqwest::Method::HEAD;
    let mut response = client
        .execute(request)
        .await
        .map_err(|e| HttpError::Request(error_chain(&e)))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(bytes)) => body.extend_from_slice(&bytes),
            Ok(None) => break,
            Err(e) => {
                return Err(HttpError::Body {
                    status,
                    headers,
                    received: body,
                    error: error_chain(&e),
                })
            }
        }
    }
    let no_body = is_head || status == 204 || status == 304 || (100..200).contains(&status);
    if !no_body {
        let declared = headers
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok());
        if let Some(declared) = declared {
            if declared != body.len() {
                let error = format!(
                    "Content-Length {declared} but {} bytes received",
                    body.len()
                );
                return Err(HttpError::Body {
                    status,
                    headers,
                    received: body,
                    error,
                });
            }
        }
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// `GET url` with an optional `Range` header value (e.g. `"bytes=0-99"`).
pub async fn http_get(url: &str, range: Option<&str>) -> Result<HttpResponse, HttpError> {
    let mut request = http_client().get(url);
    if let Some(range) = range {
        request = request.header("Range", range);
    }
    send(request).await
}

/// `HEAD url`.
pub async fn http_head(url: &str) -> Result<HttpResponse, HttpError> {
    send(http_client().head(url)).await
}

/// Any method with extra headers and an optional body.
pub async fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Result<HttpResponse, HttpError> {
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|e| HttpError::Request(format!("bad method {method:?}: {e}")))?;
    let mut request = http_client().request(method, url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    send(request).await
}

/// A response parsed from raw bytes by [`parse_raw_response`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Headers in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body: de-chunked when chunked, else the bytes after the head (at most Content-Length).
    pub body: Vec<u8>,
    /// False when the body ended before its framing said it would.
    pub complete: bool,
}

impl RawResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Decodes a complete chunked body. Returns the payload and whether the terminating zero chunk
/// was seen (false: truncated).
pub fn decode_chunked(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    for _ in 0..1_000_000 {
        let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let line = String::from_utf8_lossy(&raw[..line_end]);
        let size_text = line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return (out, false);
        };
        raw = &raw[line_end + 2..];
        if size == 0 {
            return (out, true);
        }
        if raw.len() < size + 2 {
            out.extend_from_slice(&raw[..raw.len().min(size)]);
            return (out, false);
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
    (out, false)
}

/// Parses a whole raw response read until EOF. `head_request`: the request was HEAD (no body).
pub fn parse_raw_response(raw: &[u8], head_request: bool) -> Result<RawResponse, String> {
    let mut header_buf = [httparse::EMPTY_HEADER; 128];
    let mut parsed = httparse::Response::new(&mut header_buf);
    let head_len = match parsed.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(format!("incomplete response head ({} bytes)", raw.len()))
        }
        Err(e) => return Err(format!("bad response head: {e}")),
    };
    let status = parsed.code.unwrap_or(0);
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let rest = &raw[head_len..];
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let no_body = head_request || status == 204 || status == 304 || (100..200).contains(&status);
    let (body, complete) = if no_body {
        (Vec::new(), true)
    } else if find("transfer-encoding")
        .map(|v| v.to_ascii_lowercase().contains("chunked"))
        .unwrap_or(false)
    {
        decode_chunked(rest)
    } else if let Some(cl) = find("content-length").and_then(|v| v.trim().parse::<usize>().ok()) {
        let n = rest.len().min(cl);
        (rest[..n].to_vec(), rest.len() >= cl)
    } else {
        (rest.to_vec(), true)
    };
    Ok(RawResponse {
        status,
        headers,
        body,
        complete,
    })
}

/// Sends `request` (raw bytes; include `Connection: close`) to `addr` and reads until EOF (each
/// read bounded by 30 s, the whole exchange by 120 s). Returns everything read.
pub async fn raw_exchange(addr: &str, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let timeout_err =
        || std::io::Error::new(std::io::ErrorKind::TimedOut, "raw exchange timed out");
    let deadline = tokio::time::Instant::now() + CLIENT_TIMEOUT;
    let mut stream = tokio::time::timeout(READ_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| timeout_err())??;
    tokio::time::timeout(READ_TIMEOUT, stream.write_all(request))
        .await
        .map_err(|_| timeout_err())??;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let n = tokio::time::timeout(READ_TIMEOUT.min(left), stream.read(&mut buf))
            .await
            .map_err(|_| timeout_err())?;
        match n {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // A reset after data: return what arrived; the caller sees an incomplete body.
            Err(e) if !out.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// A one-shot raw request: `METHOD target HTTP/1.1` with `Host: addr`, `Connection: close` and
/// `headers`, parsed. For byte-exact targets reqwest would normalize (dot segments, odd escapes).
pub async fn raw_request(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<RawResponse, String> {
    let mut request = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    let raw = raw_exchange(addr, request.as_bytes())
        .await
        .map_err(|e| format!("raw request to {addr}: {e}"))?;
    parse_raw_response(&raw, method.eq_ignore_ascii_case("HEAD"))
}

/// True when `raw` holds a whole response whose body is framed (Content-Length or chunked) and
/// complete, or has no body by its status.
fn framed_and_complete(raw: &[u8]) -> bool {
    let Ok(parsed) = parse_raw_response(raw, false) else {
        return false;
    };
    let framed = parsed.header("content-length").is_some()
        || parsed.header("transfer-encoding").is_some()
        || parsed.status == 204
        || parsed.status == 304;
    framed && parsed.complete
}

/// Blocking `GET path` on `addr` (no reqwest, usable from sync and async code alike). Each read is
/// bounded by `timeout`, the whole exchange by 4 × `timeout`.
pub fn blocking_get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<RawResponse, String> {
    let deadline = Instant::now() + timeout * 4;
    let mut stream = StdTcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("socket timeouts: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if Instant::now() >= deadline {
            return Err(format!(
                "GET {path} on {addr}: exchange took over {:?}",
                timeout * 4
            ));
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                // Stop at the end of a framed body even if the server keeps the connection.
                if framed_and_complete(&out) {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read from {addr}: {e}")),
        }
    }
    parse_raw_response(&out, false)
}
