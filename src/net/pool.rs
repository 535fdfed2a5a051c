//! Keep-alive connections to HTTP peers (origins, the S3 cache store, other replicas' fill
//! services): opened by Pingora's transport connector, kept idle here between requests.
//!
//! Why not Pingora's own pool: in pingora 0.9, `TransportConnector::reused_stream` waits for
//! the idle poller to release a pooled connection and then takes it with `Arc::try_unwrap`,
//! which races the poller dropping its `Arc` on a multi-thread runtime
//! (cloudflare/pingora#998). The loser is a healthy connection thrown away: measured here,
//! about one in 30 peer fills dialled a new connection. This pool hands a connection over by
//! moving it out of a `Vec` under a short lock, so a released connection is always reusable.
//!
//! There is no background poller: a connection the server closed while idle shows up as
//! readable (EOF) when it is taken, and is dropped then. Connections idle longer than their
//! peer's idle timeout are dropped when taken, and by a sweep over every peer at most every
//! [`SWEEP_EVERY`] when any connection is released, so connections to an address no longer
//! used (DNS moved on) are closed too.

use futures::FutureExt;
use parking_lot::Mutex;
use pingora::connectors::TransportConnector;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v1::client::HttpSession as H1Session;
use pingora::protocols::Stream;
use pingora::upstreams::peer::{HttpPeer, Peer};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// Idle connections kept per peer; more are closed when released. Each one was in use by
/// one request at once, so this only bounds a burst's leftovers.
const MAX_IDLE_PER_PEER: usize = 128;

/// How often a release sweeps every peer's idle connections for expired ones.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// An idle connection, since when, and how long it may stay idle.
struct Entry {
    stream: Stream,
    since: Instant,
    max_idle: Duration,
}

impl Entry {
    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.since) >= self.max_idle
    }
}

struct Idle {
    by_peer: HashMap<u64, Vec<Entry>>,
    last_sweep: Instant,
}

/// Pooled HTTP/1.1 connections, keyed by the peer's reuse hash (address, TLS, SNI).
pub struct ConnPool {
    // Built on first use, inside a runtime: nothing is spawned before Pingora forks.
    transport: once_cell::sync::OnceCell<TransportConnector>,
    idle: Mutex<Idle>,
    sweep_every: Duration,
}

impl Default for ConnPool {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnPool {
    /// An empty pool.
    pub fn new() -> Self {
        Self {
            transport: once_cell::sync::OnceCell::new(),
            idle: Mutex::new(Idle {
                by_peer: HashMap::new(),
                last_sweep: Instant::now(),
            }),
            sweep_every: SWEEP_EVERY,
        }
    }

    /// A session to `peer` (a pooled connection when one is alive) and whether it was
    /// reused. The session's read and write timeouts are the peer's.
    pub async fn get_http_session(
        &self,
        peer: &HttpPeer,
    ) -> pingora_error::Result<(HttpSession, bool)> {
        let (stream, reused) = match self.take_idle(peer) {
            Some(stream) => (stream, true),
            None => {
                let transport = self.transport.get_or_init(|| TransportConnector::new(None));
                (transport.new_stream(peer).await?, false)
            }
        };
        let mut h1 = H1Session::new_with_options(stream, peer);
        h1.read_timeout = peer.options.read_timeout;
        h1.write_timeout = peer.options.write_timeout;
        Ok((HttpSession::H1(h1), reused))
    }

    /// Gives a finished session back: its connection is kept when the answer was complete,
    /// well framed and allows keep-alive; otherwise it is closed.
    pub async fn release_http_session(&self, session: HttpSession, peer: &HttpPeer) {
        let HttpSession::H1(mut h1) = session else {
            return;
        };
        h1.respect_keepalive();
        let Some(stream) = h1.reuse().await else {
            return;
        };
        let now = Instant::now();
        let entry = Entry {
            stream,
            since: now,
            max_idle: peer.idle_timeout().unwrap_or(Duration::MAX),
        };
        // Closed after the lock is released (closing is a syscall).
        let mut closing = Vec::new();
        {
            let mut idle = self.idle.lock();
            if now.saturating_duration_since(idle.last_sweep) >= self.sweep_every {
                idle.last_sweep = now;
                for list in idle.by_peer.values_mut() {
                    let (old, kept) = std::mem::take(list)
                        .into_iter()
                        .partition(|e| e.expired(now));
                    *list = kept;
                    closing.extend::<Vec<Entry>>(old);
                }
                idle.by_peer.retain(|_, list| !list.is_empty());
            }
            let list = idle.by_peer.entry(peer.reuse_hash()).or_default();
            if list.len() < MAX_IDLE_PER_PEER {
                list.push(entry);
            } else {
                closing.push(entry);
            }
        }
        drop(closing);
    }

    /// The most recently released live connection to `peer`, if any.
    fn take_idle(&self, peer: &HttpPeer) -> Option<Stream> {
        loop {
            let entry = self
                .idle
                .lock()
                .by_peer
                .get_mut(&peer.reuse_hash())?
                .pop()?;
            if entry.expired(Instant::now()) {
                continue;
            }
            let mut stream = entry.stream;
            // An idle connection has nothing to read: anything ready (EOF, an error, stray
            // bytes) means the server closed it or broke the protocol. `unconstrained`, so
            // tokio's cooperative budget cannot make a closed connection look idle.
            let mut probe = [0u8; 1];
            if tokio::task::unconstrained(stream.read(&mut probe))
                .now_or_never()
                .is_none()
            {
                return Some(stream);
            }
        }
    }

    /// Idle connections held for `peer` (tests and diagnostics).
    #[cfg(test)]
    fn idle_len(&self, peer: &HttpPeer) -> usize {
        self.idle
            .lock()
            .by_peer
            .get(&peer.reuse_hash())
            .map_or(0, |l| l.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::http::make_peer;
    use pingora_http::RequestHeader;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A loopback server answering every request on a connection with a 2-byte body; it
    /// closes each connection after `per_conn` answers. Returns its address and a counter of
    /// accepted connections.
    async fn server(
        per_conn: usize,
    ) -> (
        std::net::SocketAddr,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut pending = Vec::new();
                    let mut answered = 0;
                    while answered < per_conn {
                        let n = match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            pending.drain(..end + 4);
                            let _ = sock
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await;
                            answered += 1;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    async fn get(pool: &ConnPool, peer: &HttpPeer) -> bool {
        let (mut session, reused) = pool.get_http_session(peer).await.unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("host", "x").unwrap();
        session.write_request_header(Box::new(req)).await.unwrap();
        session.finish_request_body().await.unwrap();
        session.read_response_header().await.unwrap();
        while session.read_response_body().await.unwrap().is_some() {}
        pool.release_http_session(session, peer).await;
        reused
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sequential_requests_share_one_connection() {
        let (addr, accepted) = server(usize::MAX).await;
        let pool = ConnPool::new();
        let peer = make_peer(addr, false, "", Duration::from_secs(5));
        for i in 0..10_000 {
            let reused = get(&pool, &peer).await;
            assert_eq!(reused, i > 0, "request {i}");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(pool.idle_len(&peer), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_to_a_peer_no_longer_used_are_closed_by_the_sweep() {
        // Two peers (two servers); the first is used once and then never again, as when DNS
        // moves to another address.
        let (a, _) = server(usize::MAX).await;
        let (b, _) = server(usize::MAX).await;
        let mut pool = ConnPool::new();
        pool.sweep_every = Duration::from_millis(50);
        let mut old = make_peer(a, false, "", Duration::from_secs(5));
        old.options.idle_timeout = Some(Duration::from_millis(50));
        let new = make_peer(b, false, "", Duration::from_secs(5));
        get(&pool, &old).await;
        assert_eq!(pool.idle_len(&old), 1);
        tokio::time::sleep(Duration::from_millis(120)).await;
        get(&pool, &new).await;
        assert_eq!(pool.idle_len(&old), 0);
        assert!(!pool.idle.lock().by_peer.contains_key(&old.reuse_hash()));
        assert_eq!(pool.idle_len(&new), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_the_server_closed_is_not_reused() {
        // The server closes after one answer; the pool must notice the EOF and dial again
        // rather than hand out the dead connection.
        let (addr, accepted) = server(1).await;
        let pool = ConnPool::new();
        let peer = make_peer(addr, false, "", Duration::from_secs(5));
        for i in 0..5 {
            assert!(
                !get(&pool, &peer).await,
                "request {i} reused a closed connection"
            );
            // Let the server's close reach this side before the next request.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 5);
    }
}
