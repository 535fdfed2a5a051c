//! `FaultProxy`: an in-process HTTP/1.1 proxy in front of a real server (moto) that counts the
//! requests it forwards and injects the faults no real server produces: an error status, a body
//! cut short (FIN or RST), a changed ETag, a stalled head or body.
//!
//! It runs on its own thread with its own tokio runtime, so it works from sync tests and from
//! `#[tokio::test]` alike, and stops when dropped. Downstream connections are kept alive (a
//! pooling client such as Orca's Pingora connector can send many requests on one); every request
//! goes upstream on a fresh connection with `Connection: close`.

use std::io;
use std::net::TcpListener as StdTcpListener;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Bound of every socket read and write of the proxy.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound of a stall fault.
pub const MAX_STALL: Duration = Duration::from_secs(120);
const MAX_HEAD: usize = 64 * 1024;
const MAX_LINE: usize = 16 * 1024;
const MAX_REQUESTS_PER_CONNECTION: usize = 1_000_000;

/// A fault applied to one forwarded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and a small S3 XML error body, without contacting the upstream
    /// (503 → `SlowDown`, 500 → `InternalError`, 403 → `AccessDenied`, 404 → `NoSuchKey`,
    /// 412 → `PreconditionFailed`, others → `InjectedFault`). The connection stays usable.
    Status(u16),
    /// Send the real head (with the original framing) and only this many body bytes, then close
    /// the connection cleanly (FIN). For a chunked body, raw (framed) bytes are counted.
    CutBodyAfter(usize),
    /// Like `CutBodyAfter` but end with a TCP reset (RST) instead of a FIN.
    ResetAfter(usize),
    /// Replace the value of the response's ETag header verbatim (pass quotes yourself, e.g.
    /// `"\"abc\""`); add the header when the upstream sent none.
    ReplaceEtag(String),
    /// Hold the response head this long (at most [`MAX_STALL`]) before sending it.
    Stall(Duration),
    /// Send this many body bytes, pause for the duration (at most [`MAX_STALL`]), then send the
    /// rest.
    StallBodyAfter(usize, Duration),
    /// Close the downstream connection without answering (after reading the request).
    CloseWithoutResponse,
    /// Forward the request without this header (case-insensitive), as a store that ignores
    /// it would behave (e.g. `If-None-Match` on a PUT).
    StripRequestHeader(String),
    /// Forward the request with this header (name, value) added, as a front that authorizes
    /// requests would (e.g. moto, which refuses unsigned GETs, behind an anonymous client). The
    /// request log keeps the request as it arrived.
    AddRequestHeader(String, String),
    /// Answer with this status and XML body, without contacting the upstream: a part of an API
    /// that the real server lacks (e.g. S3 Express One Zone's `CreateSession` in front of moto).
    Respond(u16, String),
    /// Remove this response header (case-insensitive), e.g. an origin that sends no `ETag`.
    StripResponseHeader(String),
    /// Send the body this many bytes at a time with this pause between pieces (each pause at
    /// most [`MAX_STALL`]): a slow but live origin.
    Drip(usize, Duration),
    /// Read the request, never contact the upstream, send nothing for this long (at most
    /// [`MAX_STALL`]), then drop the connection: a peer or store cut off by the network (or
    /// frozen) behind a hop that still accepts connections.
    BlackHole(Duration),
    /// Set this response header (name, value), replacing every value it had or adding it: a
    /// hop or server that answers with a wrong header (e.g. a `Content-Range` for other bytes
    /// than the body carries).
    SetResponseHeader(String, String),
}

/// A fault with the predicate selecting the requests it applies to, and how many times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    /// Only requests with this method (case-insensitive); `None`: any.
    pub method: Option<String>,
    /// Only requests whose path+query contains this (as sent, i.e. percent-encoded).
    pub path_contains: Option<String>,
    /// `Some(true)`: only requests with a Range header; `Some(false)`: only without.
    pub has_range: Option<bool>,
    /// How many matching requests get the fault (then the rule is removed).
    pub times: usize,
    /// The fault.
    pub fault: Fault,
}

impl FaultRule {
    /// A rule matching the next request of any kind, once.
    pub fn new(fault: Fault) -> Self {
        FaultRule {
            method: None,
            path_contains: None,
            has_range: None,
            times: 1,
            fault,
        }
    }

    /// Only requests with `method`.
    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_string());
        self
    }

    /// Only requests whose path+query contains `fragment`.
    pub fn path_contains(mut self, fragment: &str) -> Self {
        self.path_contains = Some(fragment.to_string());
        self
    }

    /// Only requests with a Range header.
    pub fn with_range(mut self) -> Self {
        self.has_range = Some(true);
        self
    }

    /// Only requests without a Range header.
    pub fn without_range(mut self) -> Self {
        self.has_range = Some(false);
        self
    }

    /// Apply to `n` matching requests instead of one.
    pub fn times(mut self, n: usize) -> Self {
        self.times = n;
        self
    }

    fn matches(&self, method: &str, target: &str, range: Option<&str>) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| target.contains(p))
            && self.has_range.is_none_or(|want| want == range.is_some())
    }
}

impl From<Fault> for FaultRule {
    fn from(fault: Fault) -> Self {
        FaultRule::new(fault)
    }
}

/// One request the proxy received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// Method as sent.
    pub method: String,
    /// Path and query as sent.
    pub target: String,
    /// The Range header, if any.
    pub range: Option<String>,
    /// All request headers in order.
    pub headers: Vec<(String, String)>,
    /// The fault applied to it, if any.
    pub fault: Option<Fault>,
}

impl RequestRecord {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// Request counts since start or the last [`FaultProxy::reset_counts`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// GETs of an object with a Range header.
    pub gets_with_range: usize,
    /// GETs of an object without a Range header.
    pub gets_without_range: usize,
    /// HEADs (objects and buckets).
    pub heads: usize,
    /// GETs of a bucket (`/bucket` or `/bucket/`, with or without a query: ListObjects v1/v2,
    /// and other bucket sub-resources) and of `/` (ListBuckets).
    pub lists: usize,
    /// Every request, whatever its method (faulted ones included).
    pub total: usize,
    /// Downstream connections accepted (a pooling client reuses them).
    pub connections: usize,
    /// Every request, in arrival order.
    pub log: Vec<RequestRecord>,
}

impl Counts {
    /// All object GETs (`gets_with_range + gets_without_range`).
    pub fn gets(&self) -> usize {
        self.gets_with_range + self.gets_without_range
    }
}

#[derive(Default)]
struct State {
    counts: Counts,
    rules: Vec<FaultRule>,
}

type Shared = Arc<Mutex<State>>;

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // A panicking test thread must not poison the proxy for the Drop that follows.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// The fault-injecting, counting proxy. See the module docs.
pub struct FaultProxy {
    port: u16,
    upstream: String,
    shared: Shared,
    shutdown: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("port", &self.port)
            .field("upstream", &self.upstream)
            .finish()
    }
}

impl FaultProxy {
    /// Starts a proxy on a free port of 127.0.0.1 forwarding to `upstream` (`host:port`, e.g.
    /// `moto.addr()`; a leading `http://` is accepted). It accepts connections on return.
    pub fn start(upstream: &str) -> FaultProxy {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind fault proxy");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().expect("local_addr").port();
        let shared: Shared = Arc::new(Mutex::new(State::default()));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let thread = {
            let shared = shared.clone();
            let upstream = upstream.clone();
            std::thread::Builder::new()
                .name(format!("fault-proxy-{port}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .expect("fault proxy runtime");
                    runtime.block_on(accept_loop(listener, upstream, shared, shutdown_rx));
                    runtime.shutdown_timeout(Duration::from_secs(2));
                })
                .expect("spawn fault proxy thread")
        };
        FaultProxy {
            port,
            upstream,
            shared,
            shutdown,
            thread: Some(thread),
        }
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`: give this to Orca as its origin endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The upstream `host:port`.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// A snapshot of the counts and the request log.
    pub fn counts(&self) -> Counts {
        lock(&self.shared).counts.clone()
    }

    /// Zeroes the counts and clears the log (fault rules stay).
    pub fn reset_counts(&self) {
        lock(&self.shared).counts = Counts::default();
    }

    /// Queues a fault rule (a bare [`Fault`] matches the next request of any kind, once). Rules
    /// are tried in the order pushed; the first matching rule applies, one fault per request.
    pub fn push_fault(&self, rule: impl Into<FaultRule>) {
        let rule = rule.into();
        if rule.times > 0 {
            lock(&self.shared).rules.push(rule);
        }
    }

    /// Removes every queued fault rule.
    pub fn clear_faults(&self) {
        lock(&self.shared).rules.clear();
    }

    /// How many fault applications are still queued (sum of the rules' remaining `times`).
    pub fn pending_faults(&self) -> usize {
        lock(&self.shared).rules.iter().map(|r| r.times).sum()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: StdTcpListener,
    upstream: String,
    shared: Shared,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = TcpListener::from_std(listener).expect("tokio listener");
    let for_connections = shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                lock(&shared).counts.connections += 1;
                let upstream = upstream.clone();
                let shared = shared.clone();
                let mut shutdown = for_connections.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = shutdown.wait_for(|stop| *stop) => {}
                        _ = serve_connection(stream, upstream, shared) => {}
                    }
                });
            }
        }
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("fault proxy: {what} timed out"),
    )
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// A TCP stream with a read buffer (bytes read past the current message stay for the next).
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    fn new(stream: TcpStream) -> Self {
        Conn {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// Reads more into the buffer; `Ok(0)` at EOF.
    async fn fill(&mut self) -> io::Result<usize> {
        self.buf.reserve(64 * 1024);
        match tokio::time::timeout(IO_TIMEOUT, self.stream.read_buf(&mut self.buf)).await {
            Ok(result) => result,
            Err(_) => Err(timed_out("read")),
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match tokio::time::timeout(IO_TIMEOUT, self.stream.write_all(data)).await {
            Ok(result) => result,
            Err(_) => Err(timed_out("write")),
        }
    }

    /// A whole message head (through the blank line). `Ok(None)` on EOF before any byte.
    async fn read_head(&mut self) -> io::Result<Option<BytesMut>> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                return Ok(Some(self.buf.split_to(end + 4)));
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("message head too large"));
            }
            if self.fill().await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF inside a message head",
                ));
            }
        }
    }

    /// One line including its CRLF.
    async fn read_line(&mut self) -> io::Result<BytesMut> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                return Ok(self.buf.split_to(end + 2));
            }
            if self.buf.len() > MAX_LINE {
                return Err(invalid("line too long"));
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF inside a line",
                ));
            }
        }
    }

    /// Up to `max` bytes (at least one); `Ok(None)` at EOF.
    async fn take(&mut self, max: usize) -> io::Result<Option<Bytes>> {
        if self.buf.is_empty() && self.fill().await? == 0 {
            return Ok(None);
        }
        let n = self.buf.len().min(max);
        Ok(Some(self.buf.split_to(n).freeze()))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Where forwarded body bytes go, with the cut / stall budget of a fault.
struct Sink<'a> {
    out: Option<&'a mut Conn>,
    written: usize,
    limit: Option<usize>,
    stall: Option<(usize, Duration)>,
    drip: Option<(usize, Duration)>,
}

impl<'a> Sink<'a> {
    fn new(out: Option<&'a mut Conn>) -> Self {
        Sink {
            out,
            written: 0,
            limit: None,
            stall: None,
            drip: None,
        }
    }

    fn limit_reached(&self) -> bool {
        self.limit.is_some_and(|l| self.written >= l)
    }

    /// Forwards `data`; returns `true` when the cut limit has been reached (stop forwarding).
    async fn put(&mut self, mut data: &[u8]) -> io::Result<bool> {
        if let Some((at, pause)) = self.stall {
            if self.written + data.len() >= at {
                let first = at.saturating_sub(self.written);
                let (before, after) = data.split_at(first.min(data.len()));
                if self.emit(before).await? {
                    return Ok(true);
                }
                self.stall = None;
                tokio::time::sleep(pause.min(MAX_STALL)).await;
                data = after;
            }
        }
        if let Some((piece, pause)) = self.drip {
            for part in data.chunks(piece.max(1)) {
                if self.emit(part).await? {
                    return Ok(true);
                }
                tokio::time::sleep(pause.min(MAX_STALL)).await;
            }
            return Ok(self.limit_reached());
        }
        self.emit(data).await
    }

    async fn emit(&mut self, data: &[u8]) -> io::Result<bool> {
        let allowed = match self.limit {
            Some(limit) => limit.saturating_sub(self.written).min(data.len()),
            None => data.len(),
        };
        if allowed > 0 {
            if let Some(out) = self.out.as_deref_mut() {
                out.write_all(&data[..allowed]).await?;
            }
            self.written += allowed;
        }
        Ok(self.limit_reached())
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Copies `n` bytes from `src` into `sink`. `Ok(true)`: the sink's limit was reached.
async fn copy_exact(src: &mut Conn, sink: &mut Sink<'_>, mut n: u64) -> io::Result<bool> {
    while n > 0 {
        let max = usize::try_from(n).unwrap_or(usize::MAX);
        let Some(piece) = src.take(max).await? else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("EOF with {n} body bytes missing"),
            ));
        };
        n -= piece.len() as u64;
        if sink.put(&piece).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Copies a chunked body raw (framing included). `Ok(true)`: the sink's limit was reached.
async fn copy_chunked(src: &mut Conn, sink: &mut Sink<'_>) -> io::Result<bool> {
    for _ in 0..10_000_000 {
        let line = src.read_line().await?;
        if sink.put(&line).await? {
            return Ok(true);
        }
        let text = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
        let size_text = text.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size line {text:?}")))?;
        if size == 0 {
            for _ in 0..1000 {
                let trailer = src.read_line().await?;
                let last = &trailer[..] == b"\r\n";
                if sink.put(&trailer).await? {
                    return Ok(true);
                }
                if last {
                    return Ok(false);
                }
            }
            return Err(invalid("too many trailer lines"));
        }
        if copy_exact(src, sink, size + 2).await? {
            return Ok(true);
        }
    }
    Err(invalid("too many chunks"))
}

async fn copy_body(src: &mut Conn, sink: &mut Sink<'_>, framing: Framing) -> io::Result<bool> {
    if sink.limit_reached() {
        return Ok(true);
    }
    match framing {
        Framing::None => Ok(false),
        Framing::Length(n) => copy_exact(src, sink, n).await,
        Framing::Chunked => copy_chunked(src, sink).await,
        Framing::UntilClose => {
            for _ in 0..100_000_000u64 {
                let Some(piece) = src.take(64 * 1024).await? else {
                    return Ok(false);
                };
                if sink.put(&piece).await? {
                    return Ok(true);
                }
            }
            Err(invalid("body too long"))
        }
    }
}

/// A parsed message head.
struct Head {
    /// Request: method; response: unused.
    method: String,
    /// Request: target; response: reason phrase.
    target_or_reason: String,
    /// Response: status.
    status: u16,
    /// HTTP/1.x minor version.
    minor: u8,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Body framing by the headers (RFC 9112 §6.3); `request`: no body unless framed.
    fn framing(&self, request: bool) -> io::Result<Framing> {
        if self.has_token("transfer-encoding", "chunked") {
            return Ok(Framing::Chunked);
        }
        if let Some(cl) = self.header("content-length") {
            let n = cl
                .trim()
                .parse::<u64>()
                .map_err(|_| invalid(format!("bad Content-Length {cl:?}")))?;
            return Ok(Framing::Length(n));
        }
        Ok(if request {
            Framing::None
        } else {
            Framing::UntilClose
        })
    }
}

fn owned_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

fn parse_request(raw: &[u8]) -> io::Result<Head> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(raw) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(invalid("partial request head")),
        Err(e) => return Err(invalid(format!("bad request head: {e}"))),
    }
    Ok(Head {
        method: request.method.unwrap_or("").to_string(),
        target_or_reason: request.path.unwrap_or("").to_string(),
        status: 0,
        minor: request.version.unwrap_or(1),
        headers: owned_headers(request.headers),
    })
}

fn parse_response(raw: &[u8]) -> io::Result<Head> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(raw) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(invalid("partial response head")),
        Err(e) => return Err(invalid(format!("bad response head: {e}"))),
    }
    Ok(Head {
        method: String::new(),
        target_or_reason: response.reason.unwrap_or("").to_string(),
        status: response.code.unwrap_or(0),
        minor: response.version.unwrap_or(1),
        headers: owned_headers(response.headers),
    })
}

/// Hop-by-hop headers the proxy owns on both sides.
fn is_hop_header(name: &str) -> bool {
    ["connection", "keep-alive", "proxy-connection", "expect"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// Counts the request and picks the fault for it (consuming one application of the rule).
fn record(shared: &Shared, head: &Head) -> Option<Fault> {
    let method = head.method.as_str();
    let target = head.target_or_reason.as_str();
    let range = head.header("range");
    let mut state = lock(shared);
    let fault = match state
        .rules
        .iter()
        .position(|r| r.times > 0 && r.matches(method, target, range))
    {
        Some(i) => {
            let fault = state.rules[i].fault.clone();
            state.rules[i].times -= 1;
            if state.rules[i].times == 0 {
                state.rules.remove(i);
            }
            Some(fault)
        }
        None => None,
    };
    let counts = &mut state.counts;
    counts.total += 1;
    let path = target.split('?').next().unwrap_or("");
    let trimmed = path.trim_start_matches('/');
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    let bucket_level = !trimmed.contains('/');
    if method.eq_ignore_ascii_case("HEAD") {
        counts.heads += 1;
    } else if method.eq_ignore_ascii_case("GET") {
        if bucket_level {
            counts.lists += 1;
        } else if range.is_some() {
            counts.gets_with_range += 1;
        } else {
            counts.gets_without_range += 1;
        }
    }
    counts.log.push(RequestRecord {
        method: method.to_string(),
        target: target.to_string(),
        range: range.map(str::to_string),
        headers: head.headers.clone(),
        fault: fault.clone(),
    });
    fault
}

fn error_code(status: u16) -> &'static str {
    match status {
        500 => "InternalError",
        503 => "SlowDown",
        403 => "AccessDenied",
        404 => "NoSuchKey",
        412 => "PreconditionFailed",
        416 => "InvalidRange",
        _ => "InjectedFault",
    }
}

fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Injected")
}

/// Writes an S3-style XML error answer (no body for HEAD).
async fn write_error(
    down: &mut Conn,
    status: u16,
    head_request: bool,
    keep_alive: bool,
) -> io::Result<()> {
    let code = error_code(status);
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>Injected by FaultProxy</Message><RequestId>faultproxy</RequestId></Error>"
    );
    write_xml(down, status, &body, head_request, keep_alive).await
}

/// Writes an XML answer with this status and body (no body for HEAD).
async fn write_xml(
    down: &mut Conn,
    status: u16,
    body: &str,
    head_request: bool,
    keep_alive: bool,
) -> io::Result<()> {
    let mut answer = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         x-amz-request-id: faultproxy\r\n",
        reason(status),
        body.len()
    );
    if !keep_alive {
        answer.push_str("Connection: close\r\n");
    }
    answer.push_str("\r\n");
    if !head_request {
        answer.push_str(body);
    }
    down.write_all(answer.as_bytes()).await
}

/// Ends the connection with a FIN: shut down the write side, then wait (bounded) for the peer to
/// close so unread data does not turn the close into a reset.
async fn close_gracefully(down: &mut Conn) {
    let _ = tokio::time::timeout(IO_TIMEOUT, down.stream.shutdown()).await;
    let mut scratch = vec![0u8; 16 * 1024];
    let drain = async {
        for _ in 0..100_000 {
            match down.stream.read(&mut scratch).await {
                Ok(n) if n > 0 => continue,
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
}

/// Ends the connection with an RST.
fn close_with_reset(down: Conn) {
    let _ = down.stream.set_zero_linger();
    drop(down);
}

async fn serve_connection(stream: TcpStream, upstream: String, shared: Shared) {
    let mut down = Conn::new(stream);
    for _ in 0..MAX_REQUESTS_PER_CONNECTION {
        match serve_one(&mut down, &upstream, &shared).await {
            Ok(Next::KeepAlive) => continue,
            Ok(Next::Close) => {
                close_gracefully(&mut down).await;
                return;
            }
            Ok(Next::Reset) => {
                close_with_reset(down);
                return;
            }
            Ok(Next::Drop) | Err(_) => return,
        }
    }
}

/// What to do with the downstream connection after a request.
enum Next {
    KeepAlive,
    Close,
    Reset,
    Drop,
}

impl Next {
    /// After a complete answer: keep the connection or close it.
    fn after(keep_alive: bool) -> Next {
        if keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }
}

async fn serve_one(down: &mut Conn, upstream: &str, shared: &Shared) -> io::Result<Next> {
    let Some(raw_head) = down.read_head().await? else {
        return Ok(Next::Drop);
    };
    let request = parse_request(&raw_head)?;
    let keep_alive = request.minor >= 1 && !request.has_token("connection", "close");
    let head_request = request.method.eq_ignore_ascii_case("HEAD");
    let request_framing = request.framing(true)?;
    if request.has_token("expect", "100-continue") {
        down.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    let fault = record(shared, &request);

    match &fault {
        Some(Fault::Status(status)) => {
            copy_body(down, &mut Sink::new(None), request_framing).await?;
            write_error(down, *status, head_request, keep_alive).await?;
            return Ok(Next::after(keep_alive));
        }
        Some(Fault::Respond(status, body)) => {
            copy_body(down, &mut Sink::new(None), request_framing).await?;
            write_xml(down, *status, body, head_request, keep_alive).await?;
            return Ok(Next::after(keep_alive));
        }
        Some(Fault::CloseWithoutResponse) => {
            copy_body(down, &mut Sink::new(None), request_framing).await?;
            return Ok(Next::Close);
        }
        Some(Fault::BlackHole(pause)) => {
            copy_body(down, &mut Sink::new(None), request_framing).await?;
            tokio::time::sleep((*pause).min(MAX_STALL)).await;
            return Ok(Next::Drop);
        }
        _ => {}
    }

    // Upstream: a fresh connection per request.
    let connected = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(upstream)).await;
    let mut up = match connected {
        Ok(Ok(stream)) => Conn::new(stream),
        _ => {
            write_error(down, 502, head_request, false).await?;
            return Ok(Next::Close);
        }
    };
    let _ = up.stream.set_nodelay(true);
    let mut forward = format!(
        "{} {} HTTP/1.1\r\n",
        request.method, request.target_or_reason
    );
    let stripped = match &fault {
        Some(Fault::StripRequestHeader(h)) => Some(h.as_str()),
        _ => None,
    };
    for (name, value) in &request.headers {
        if !is_hop_header(name) && !stripped.is_some_and(|h| name.eq_ignore_ascii_case(h)) {
            forward.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    if let Some(Fault::AddRequestHeader(name, value)) = &fault {
        forward.push_str(&format!("{name}: {value}\r\n"));
    }
    forward.push_str("Connection: close\r\n\r\n");
    up.write_all(forward.as_bytes()).await?;
    copy_body(down, &mut Sink::new(Some(&mut up)), request_framing).await?;

    // Response head (skipping interim 1xx answers).
    let mut response = None;
    for _ in 0..8 {
        let Some(raw) = up.read_head().await? else {
            break;
        };
        let head = parse_response(&raw)?;
        if (100..200).contains(&head.status) && head.status != 101 {
            continue;
        }
        response = Some(head);
        break;
    }
    let Some(mut response) = response else {
        write_error(down, 502, head_request, false).await?;
        return Ok(Next::Close);
    };

    if let Some(Fault::ReplaceEtag(etag)) = &fault {
        match response
            .headers
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case("etag"))
        {
            Some((_, value)) => *value = etag.clone(),
            None => response.headers.push(("ETag".to_string(), etag.clone())),
        }
    }
    if let Some(Fault::SetResponseHeader(name, value)) = &fault {
        response
            .headers
            .retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        response.headers.push((name.clone(), value.clone()));
    }
    if let Some(Fault::StripResponseHeader(name)) = &fault {
        response
            .headers
            .retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }
    if let Some(Fault::Stall(pause)) = &fault {
        tokio::time::sleep((*pause).min(MAX_STALL)).await;
    }

    let no_body = head_request
        || response.status == 204
        || response.status == 304
        || (100..200).contains(&response.status);
    let framing = if no_body {
        Framing::None
    } else {
        response.framing(false)?
    };
    let keep_alive = keep_alive && framing != Framing::UntilClose;

    let mut answer = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status, response.target_or_reason
    );
    for (name, value) in &response.headers {
        if !is_hop_header(name) {
            answer.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    if !keep_alive {
        answer.push_str("Connection: close\r\n");
    }
    answer.push_str("\r\n");
    down.write_all(answer.as_bytes()).await?;

    let mut sink = Sink::new(Some(down));
    match &fault {
        Some(Fault::CutBodyAfter(n)) | Some(Fault::ResetAfter(n)) => sink.limit = Some(*n),
        Some(Fault::StallBodyAfter(n, pause)) => sink.stall = Some((*n, *pause)),
        Some(Fault::Drip(n, pause)) => sink.drip = Some((*n, *pause)),
        _ => {}
    }
    let cut = copy_body(&mut up, &mut sink, framing).await?;
    if cut {
        return Ok(match fault {
            Some(Fault::ResetAfter(_)) => Next::Reset,
            _ => Next::Close,
        });
    }
    Ok(Next::after(keep_alive))
}
