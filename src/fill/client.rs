//! The fill protocol's client: one HTTP GET per missing chunk, streamed to the caller as it
//! arrives, and [`FillClients`], the edge's set of them: this replica's own fill service and
//! one client per peer, with the back-off that skips a peer which refused a connection.
//!
//! A peer's fill service is reached over Orca's connection pool ([`crate::net::pool`]).
//! This replica's own fill service is reached in-process: a second instance of the fill proxy
//! (sharing the storage and the cache lock with the listening one) served over an in-memory
//! duplex stream. That costs no socket, and it keeps working during a graceful shutdown, when
//! Pingora has closed the listeners but in-flight downloads still need their remaining chunks.
//!
//! [`FillClient::fetch`] passes the answer on as fast as its [`PieceSink`] takes it: the
//! edge's sink for a chunk read ahead takes everything at once (its read-ahead reservation
//! covers the chunk), the one for the chunk being sent takes a small window ahead of the
//! client. Reading a peer's answer at the client's pace slows no one else: the fill service
//! keeps filling into its flight while a write to its requester is pending (see
//! `FillService`), and every other reader reads the flight.

use super::protocol::{
    FillRequest, REFUSED_HEADER, REQUEST_ID_HEADER, SECRET_HEADER, SOURCE_HEADER, UNCACHED_HEADER,
};
use super::service::FillService;
use crate::cachestore::{ChunkRead, StoreError};
use crate::chunk::Chunk;
use crate::cluster::Cluster;
use crate::error::code_from_xml;
use crate::metrics::ChunkSource;
use crate::net::http::{make_peer, Resolver};
use crate::net::pool::ConnPool;
use crate::origin::OriginError;
use bytes::Bytes;
use parking_lot::Mutex;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::client::HttpSession as ClientSession;
use pingora::protocols::http::v1::client::HttpSession as H1Client;
use pingora::protocols::http::ServerSession;
use pingora::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use pingora_proxy::HttpProxy;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use tokio::sync::watch;

/// Buffer of the in-memory stream to the local fill service. Small: a chunk the edge reads
/// ahead from a fill here fills this buffer and then waits for its client, so it is held once
/// per cold chunk read ahead, by every client at once; the fill goes on into its spool
/// meanwhile, and the stream only has to keep up with the origin's pieces (Pingora reads a
/// body 64 KiB at a time).
const LOCAL_PIPE: usize = 64 * 1024;

/// Largest error body read from a fill service.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Where [`FillClient::fetch`] puts the bytes it reads, as they arrive.
pub trait PieceSink: Sync {
    /// Passes on one piece, waiting while the reader has no room for it; `false` once the
    /// reader is gone.
    fn put(&self, piece: Bytes) -> impl std::future::Future<Output = bool> + Send;
}

/// Why a fill request did not deliver its chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FillError {
    /// The object's own failure (not found, changed, origin down...), as the fill service
    /// reported it: the same anywhere, so it goes to the client.
    Origin(OriginError),
    /// 409: the peer does not coordinate this chunk in its own view.
    NotCoordinator,
    /// 403: the peer refused this replica's shared secret.
    Refused,
    /// The peer failed on its own (an answer that is not an origin's verdict: its internal
    /// error, a timeout of its own): another replica may well succeed.
    PeerFailed(String),
    /// 503 SlowDown: the fill service had no origin fill slot free within its deadline (the
    /// cache-lock timeout). Elsewhere there may be one; when it is this replica's own, the
    /// client is told to slow down.
    Busy,
    /// No answer: connecting, sending or reading the header failed.
    Unreachable(String),
    /// The answer broke off after its header (the bytes before went to the caller).
    Broken(String),
}

impl FillError {
    /// The error a client sees when nothing else can be tried.
    pub fn into_origin(self) -> OriginError {
        match self {
            FillError::Origin(e) => e,
            FillError::NotCoordinator => {
                OriginError::Transient("fill service is not the coordinator".into())
            }
            FillError::Refused => OriginError::Transient("fill service refused the secret".into()),
            FillError::Busy => {
                OriginError::Transient("fill service had no origin fill slot free".into())
            }
            FillError::Unreachable(m) | FillError::Broken(m) | FillError::PeerFailed(m) => {
                OriginError::Transient(m)
            }
        }
    }
}

/// How peers are dialled over TLS (`cluster.peer_ca`, `cluster.peer_server_name`).
#[derive(Clone)]
pub struct PeerTls {
    /// The only CA peers' certificates may chain to (the system's roots are not used).
    pub ca: Arc<pingora::protocols::tls::CaType>,
    /// The name peers' certificates are checked for; `None`: each peer's host as the peer
    /// list spells it (a name or an IP address).
    pub server_name: Option<String>,
}

/// A client of one fill service.
pub struct FillClient {
    target: Target,
    authority: String,
    read_timeout: Duration,
    /// The cluster's shared secret, sent to peers.
    secret: Option<String>,
}

// One client per peer, made once: the size of the larger variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Target {
    /// Another replica's fill service.
    Remote { peer: HttpPeer, connector: ConnPool },
    /// This replica's own, in-process.
    Local {
        proxy: Arc<HttpProxy<FillService>>,
        /// Never signalled: the in-process fill service outlives the listeners.
        shutdown: watch::Receiver<bool>,
        _keep: watch::Sender<bool>,
    },
}

impl FillClient {
    /// A client of the fill service at `addr` (another replica). `read_timeout` bounds the
    /// wait for each piece, which includes waiting on another caller's origin fill.
    /// With `tls`, the connection is TLS, and the peer's certificate must chain to `tls.ca`
    /// and name `host` (or `tls.server_name`): Pingora's rustls connector checks both, and
    /// skips every check when the name is empty, so it never is.
    pub fn remote(
        addr: SocketAddr,
        host: &str,
        tls: Option<&PeerTls>,
        read_timeout: Duration,
        secret: Option<String>,
    ) -> Self {
        let mut peer = match tls {
            Some(tls) => {
                let name = tls.server_name.as_deref().unwrap_or(host);
                let mut peer = make_peer(addr, true, name, read_timeout);
                peer.options.ca = Some(tls.ca.clone());
                peer.options.verify_cert = true;
                peer.options.verify_hostname = true;
                peer
            }
            None => make_peer(addr, false, "", read_timeout),
        };
        peer.options.connection_timeout = Some(Duration::from_secs(10));
        peer.options.total_connection_timeout = Some(Duration::from_secs(10));
        Self {
            target: Target::Remote {
                peer,
                connector: ConnPool::new(),
            },
            authority: addr.to_string(),
            read_timeout,
            secret,
        }
    }

    /// A client of this replica's own fill service, in-process.
    pub fn local(proxy: Arc<HttpProxy<FillService>>, read_timeout: Duration) -> Self {
        let (keep, shutdown) = watch::channel(false);
        Self {
            target: Target::Local {
                proxy,
                shutdown,
                _keep: keep,
            },
            authority: "orca.internal".to_string(),
            read_timeout,
            secret: None,
        }
    }

    /// A session to the fill service and whether it was a reused connection.
    async fn session(&self) -> Result<(ClientSession, bool), String> {
        match &self.target {
            Target::Remote { peer, connector } => connector
                .get_http_session(peer)
                .await
                .map_err(|e| e.to_string()),
            Target::Local {
                proxy, shutdown, ..
            } => {
                let proxy = proxy.clone();
                let (client_io, server_io) = tokio::io::duplex(LOCAL_PIPE);
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let session = ServerSession::new_http1(Box::new(server_io));
                    let _ = proxy.process_new_http(session, &shutdown).await;
                });
                let mut h1 = H1Client::new(Box::new(client_io));
                h1.read_timeout = Some(self.read_timeout);
                Ok((ClientSession::H1(h1), false))
            }
        }
    }

    async fn release(&self, session: ClientSession) {
        if let Target::Remote { peer, connector } = &self.target {
            connector.release_http_session(session, peer).await;
        }
    }

    /// Fetches one chunk and puts bytes `[from, to)` of it into `tx`, adding what it put to
    /// `sent`, for the edge request `request_id` (sent in `x-orca-request-id`, so the fill
    /// service's log lines name it; empty: not sent). Returns where the fill service got the
    /// bytes. The body length is checked against the chunk's length: a short body is an error,
    /// never a complete chunk. Only bytes go to `tx`; failures are returned.
    pub async fn fetch(
        &self,
        chunk: &Chunk,
        (from, to): (u64, u64),
        request_id: &str,
        tx: &impl PieceSink,
        sent: &mut u64,
    ) -> Result<ChunkSource, FillError> {
        let expected_len = chunk.len;
        let (mut session, reused, source, ranged) =
            self.answer(chunk, (from, to), request_id).await?;
        // A `206` is the asked part alone; a `200` the whole chunk.
        let (mut offset, body_end) = ranged.unwrap_or((0, expected_len));
        loop {
            match session.read_response_body().await {
                Ok(Some(piece)) => {
                    let start = offset;
                    let end = offset + piece.len() as u64;
                    offset = end;
                    if end > body_end {
                        return Err(FillError::Broken("fill body longer than the chunk".into()));
                    }
                    if end <= from || start >= to {
                        continue;
                    }
                    let lo = from.saturating_sub(start) as usize;
                    let hi = (to.min(end) - start) as usize;
                    *sent += (hi - lo) as u64;
                    // The client went away: stop; the fill service finishes the fill.
                    if !tx.put(piece.slice(lo..hi)).await {
                        return Ok(source);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(FillError::Broken(format!(
                        "body cut at {offset} of {expected_len} bytes: {e}"
                    )))
                }
            }
        }
        if offset != body_end {
            return Err(FillError::Broken(format!(
                "body ended at {offset} of {body_end} bytes"
            )));
        }
        tracing::trace!(reused, "fill answered; connection back to the pool");
        self.release(session).await;
        Ok(source)
    }

    /// Asks for one chunk and returns, once the fill service has answered `200`, where it
    /// gets the bytes and a reader of bytes `[from, to)` of the answer's body, to be read as
    /// the caller's client takes them. For this replica's own fill service that costs no
    /// more than the in-memory stream's buffer: the fill goes on into its spool while the
    /// reader waits (see `FillService`).
    pub async fn open(
        &self,
        chunk: &Chunk,
        (from, to): (u64, u64),
        request_id: &str,
    ) -> Result<(ChunkSource, FillBody), FillError> {
        let (session, _, source, ranged) = self.answer(chunk, (from, to), request_id).await?;
        let kept = session
            .response_header()
            .is_some_and(|r| !r.headers.contains_key(UNCACHED_HEADER));
        Ok((
            source,
            FillBody {
                kept,
                session: tokio::sync::Mutex::new(session),
                offset: ranged.map_or(0, |(from, _)| from),
                from,
                to: to.min(chunk.len),
                expected_len: chunk.len,
            },
        ))
    }

    /// Sends the fill request for bytes `range` of `chunk` and reads the answer's header: the
    /// session, whether it was a reused connection, where the fill service gets the bytes,
    /// and the part of the chunk the body holds when it is not the whole chunk (a `206`, whose
    /// `Content-Range` must be the part asked for); a refusal or an error answer is returned
    /// as its [`FillError`]. `request_id`: as for [`FillClient::fetch`].
    async fn answer(
        &self,
        chunk: &Chunk,
        range: (u64, u64),
        request_id: &str,
    ) -> Result<(ClientSession, bool, ChunkSource, Option<(u64, u64)>), FillError> {
        let unreachable = |m: String| FillError::Unreachable(format!("fill service: {m}"));
        let request = FillRequest::for_range(chunk.clone(), range);
        let path = request.path_and_query();
        let mut req = RequestHeader::build("GET", path.as_bytes(), None)
            .map_err(|e| unreachable(e.to_string()))?;
        req.insert_header("host", &self.authority)
            .map_err(|e| unreachable(e.to_string()))?;
        if !request_id.is_empty() {
            req.insert_header(REQUEST_ID_HEADER, request_id)
                .map_err(|e| unreachable(e.to_string()))?;
        }
        if let Some(secret) = &self.secret {
            req.insert_header(SECRET_HEADER, secret)
                .map_err(|e| unreachable(e.to_string()))?;
        }
        let mut last_err = None;
        // A pooled connection may have been closed by the server; one retry on a fresh one.
        for attempt in 0..2 {
            let (mut session, reused) = self.session().await.map_err(unreachable)?;
            let head = async {
                session.write_request_header(Box::new(req.clone())).await?;
                session.finish_request_body().await?;
                session.read_response_header().await
            }
            .await;
            if let Err(e) = head {
                tracing::debug!(reused, attempt, error = %e, "fill request failed before its answer");
                last_err = Some(unreachable(e.to_string()));
                if reused && attempt == 0 {
                    continue;
                }
                break;
            }
            let Some(resp) = session.response_header().cloned() else {
                return Err(unreachable("no response header".into()));
            };
            let status = resp.status.as_u16();
            let ranged = match (status, request.range) {
                (206, Some((from, to))) => {
                    let want = format!("bytes {from}-{}/{}", to - 1, chunk.len);
                    let got = resp
                        .headers
                        .get("content-range")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    if got != want {
                        return Err(FillError::PeerFailed(format!(
                            "fill service answered Content-Range {got:?}, expected {want:?}"
                        )));
                    }
                    Some((from, to))
                }
                _ => None,
            };
            if status != 200 && ranged.is_none() {
                let mut body = Vec::new();
                while let Ok(Some(piece)) = session.read_response_body().await {
                    if body.len() + piece.len() > MAX_ERROR_BODY {
                        break;
                    }
                    body.extend_from_slice(&piece);
                }
                let code = code_from_xml(&body).unwrap_or_default();
                let refused = resp.headers.get(REFUSED_HEADER).is_some();
                return Err(match (status, code.as_str()) {
                    (409, _) => FillError::NotCoordinator,
                    (503, "SlowDown") => FillError::Busy,
                    (403, _) if refused => FillError::Refused,
                    // The origin's verdict, as the peer relayed it.
                    (_, c) if OriginError::is_origin_code(c) => {
                        FillError::Origin(OriginError::from_s3_code(c, status))
                    }
                    _ => FillError::PeerFailed(format!("fill service answered {status} {code}")),
                });
            }
            let source = resp
                .headers
                .get(SOURCE_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(ChunkSource::parse)
                .unwrap_or(ChunkSource::Origin);
            return Ok((session, reused, source, ranged));
        }
        Err(last_err.unwrap_or_else(|| unreachable("connection failed".into())))
    }
}

/// The body of a fill service's answer, read on demand: bytes `[from, to)` of the chunk, the
/// length checked (a body that ends short of `to`, or runs past the chunk, is an error).
pub struct FillBody {
    /// The answer's bytes are kept by the answering replica (see [`FillBody::kept`]).
    kept: bool,
    /// Behind a lock only to be `Sync` (one reader uses it).
    session: tokio::sync::Mutex<ClientSession>,
    /// Bytes of the body read so far.
    offset: u64,
    from: u64,
    to: u64,
    expected_len: u64,
}

impl FillBody {
    /// The most a reader of this replica's own fill service holds ahead of its client: the
    /// in-process stream's buffer and the piece being written to it (at most a store piece).
    pub const BUFFERED: u64 = (LOCAL_PIPE + crate::cachestore::buf::PIECE) as u64;

    /// Whether the answer's bytes are kept by the replica that answered: a fill in flight in
    /// its storage, or a stored chunk (not one that went on uncached, whose answer is the
    /// only copy). For this replica's own fill service, the caller may then read the chunk
    /// from the storage it shares and drop this answer: the fill goes on without it.
    pub fn kept(&self) -> bool {
        self.kept
    }
}

#[async_trait::async_trait]
impl ChunkRead for FillBody {
    async fn next_piece(&mut self) -> Result<Option<Bytes>, StoreError> {
        let broken = |m: String| StoreError::io("fill answer", std::io::Error::other(m));
        let session = self.session.get_mut();
        loop {
            if self.offset >= self.to {
                return Ok(None);
            }
            match session.read_response_body().await {
                Ok(Some(piece)) => {
                    let start = self.offset;
                    let end = start + piece.len() as u64;
                    self.offset = end;
                    if end > self.expected_len {
                        return Err(broken("fill body longer than the chunk".into()));
                    }
                    if end <= self.from {
                        continue;
                    }
                    let lo = self.from.saturating_sub(start) as usize;
                    let hi = (self.to.min(end) - start) as usize;
                    return Ok(Some(piece.slice(lo..hi)));
                }
                Ok(None) => {
                    return Err(broken(format!(
                        "body ended at {} of {} bytes",
                        self.offset, self.expected_len
                    )))
                }
                Err(e) => {
                    return Err(broken(format!(
                        "body cut at {} of {} bytes: {e}",
                        self.offset, self.expected_len
                    )))
                }
            }
        }
    }
}

/// How long a peer that refused a connection is skipped.
pub const PEER_DOWN_BACKOFF: Duration = Duration::from_secs(5);

/// The edge's fill clients: this replica's own fill service and one client per peer.
pub struct FillClients {
    local: FillClient,
    /// The service `local` reaches (for [`FillClients::sibling`]).
    local_proxy: Arc<HttpProxy<FillService>>,
    cluster: Arc<Cluster>,
    peers: Mutex<Peers>,
    /// The peers' read timeout (see [`FillClient::remote`]).
    read_timeout: Duration,
    /// The cluster's shared secret, sent to peers.
    secret: Option<String>,
    resolver: Resolver,
    /// TLS to peers, when `cluster.peer_ca` is set.
    peer_tls: Option<PeerTls>,
    /// The cluster generation `peers` was last pruned at.
    pruned_at: AtomicU64,
}

#[derive(Default)]
struct Peers {
    clients: HashMap<String, Arc<FillClient>>,
    /// Peers that refused a connection, skipped until the instant given.
    down: HashMap<String, Instant>,
}

impl FillClients {
    /// The clients of a replica: `local` is its own in-process fill service; peers are taken
    /// from `cluster` as they are asked for.
    pub fn new(
        local: Arc<HttpProxy<FillService>>,
        cluster: Arc<Cluster>,
        read_timeout: Duration,
        secret: Option<String>,
    ) -> Self {
        Self {
            local: FillClient::local(local.clone(), read_timeout),
            local_proxy: local,
            pruned_at: AtomicU64::new(cluster.generation()),
            cluster,
            peers: Mutex::new(Peers::default()),
            read_timeout,
            secret,
            resolver: Resolver::default(),
            peer_tls: None,
        }
    }

    /// Dials peers over TLS with `tls` (`None`: plain HTTP).
    #[must_use]
    pub fn with_peer_tls(mut self, tls: Option<PeerTls>) -> Self {
        self.peer_tls = tls;
        self
    }

    /// A second set with the same local service, cluster, timeout, secret and peer TLS, and
    /// peer clients and back-offs of its own (e.g. for warm jobs next to the edge).
    #[must_use]
    pub fn sibling(&self) -> Self {
        Self::new(
            self.local_proxy.clone(),
            self.cluster.clone(),
            self.read_timeout,
            self.secret.clone(),
        )
        .with_peer_tls(self.peer_tls.clone())
    }

    /// This replica's own fill service.
    pub fn local(&self) -> &FillClient {
        &self.local
    }

    /// Forgets clients and back-offs of peers that left the peer set (once per change).
    fn prune(&self) {
        let generation = self.cluster.generation();
        if self.pruned_at.swap(generation, Ordering::Relaxed) == generation {
            return;
        }
        let members = self.cluster.peers();
        let mut peers = self.peers.lock();
        peers.clients.retain(|p, _| members.contains(p));
        peers.down.retain(|p, _| members.contains(p));
    }

    /// Whether `peer` refused a connection within the back-off.
    pub fn is_down(&self, peer: &str) -> bool {
        self.prune();
        let mut peers = self.peers.lock();
        match peers.down.get(peer) {
            Some(until) if Instant::now() < *until => true,
            Some(_) => {
                peers.down.remove(peer);
                false
            }
            None => false,
        }
    }

    /// Skips `peer` for [`PEER_DOWN_BACKOFF`] and forgets its connections.
    pub fn mark_down(&self, peer: &str) {
        tracing::warn!(peer, "peer unreachable; filling locally for a while");
        let mut peers = self.peers.lock();
        peers
            .down
            .insert(peer.to_string(), Instant::now() + PEER_DOWN_BACKOFF);
        peers.clients.remove(peer);
    }

    /// The fill client of `peer` (`host:port`, its name resolved asynchronously, once).
    pub async fn peer(&self, peer: &str) -> Result<Arc<FillClient>, FillError> {
        self.prune();
        if let Some(c) = self.peers.lock().clients.get(peer) {
            return Ok(c.clone());
        }
        let (host, port) = peer
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
            .ok_or_else(|| FillError::Unreachable(format!("peer {peer:?} is not host:port")))?;
        let addr = self
            .resolver
            .resolve(host, port)
            .await
            .map_err(|e| FillError::Unreachable(format!("cannot resolve peer {peer}: {e}")))?;
        let client = Arc::new(FillClient::remote(
            addr,
            host,
            self.peer_tls.as_ref(),
            self.read_timeout,
            self.secret.clone(),
        ));
        Ok(self
            .peers
            .lock()
            .clients
            .entry(peer.to_string())
            .or_insert(client)
            .clone())
    }
}
