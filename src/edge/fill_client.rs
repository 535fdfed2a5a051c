//! The edge's client of a fill service: one HTTP GET per missing chunk, streamed into the
//! chunk's buffer as it arrives.
//!
//! A peer's fill service is reached over Orca's connection pool ([`crate::origin::pool`]).
//! This replica's own fill service is reached in-process: a second instance of the fill proxy
//! (sharing the storage and the cache lock with the listening one) served over an in-memory
//! duplex stream. That costs no socket, and it keeps working during a graceful shutdown, when
//! Pingora has closed the listeners but in-flight downloads still need their remaining chunks.
//!
//! The whole response is always drained at network speed, whatever the client's speed: the
//! fill service paces its origin read by this reader, so a reader that stopped to wait for a
//! slow client would slow every request joined to that chunk.

use crate::error::code_from_xml;
use crate::fill::FillService;
use crate::fill::SOURCE_HEADER;
use crate::metrics::ChunkSource;
use crate::origin::http::make_peer;
use crate::origin::pool::ConnPool;
use crate::origin::OriginError;
use bytes::Bytes;
use once_cell::sync::OnceCell;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::client::HttpSession as ClientSession;
use pingora::protocols::http::v1::client::HttpSession as H1Client;
use pingora::protocols::http::ServerSession;
use pingora::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use pingora_proxy::HttpProxy;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;

/// Buffer of the in-memory stream to the local fill service.
const LOCAL_PIPE: usize = 512 * 1024;

/// Largest error body read from a fill service.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A piece of chunk bytes or the reason the chunk failed.
pub type PieceResult = Result<Bytes, OriginError>;

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
            FillError::Unreachable(m) | FillError::Broken(m) => OriginError::Transient(m),
        }
    }
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
    /// This replica's own, in-process (set once the server's configuration is known).
    Local {
        proxy: OnceCell<Arc<HttpProxy<FillService>>>,
        /// Never signalled: the in-process fill service outlives the listeners.
        shutdown: watch::Receiver<bool>,
        _keep: watch::Sender<bool>,
    },
}

impl FillClient {
    /// A client of the fill service at `addr` (another replica). `read_timeout` bounds the
    /// wait for each piece, which includes waiting on another caller's origin fill.
    pub fn remote(addr: SocketAddr, read_timeout: Duration, secret: Option<String>) -> Self {
        let mut peer = make_peer(addr, false, "", read_timeout);
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

    /// A client of this replica's own fill service, in-process; call [`FillClient::set_local`]
    /// before the first fetch.
    pub fn local(read_timeout: Duration) -> Self {
        let (keep, shutdown) = watch::channel(false);
        Self {
            target: Target::Local {
                proxy: OnceCell::new(),
                shutdown,
                _keep: keep,
            },
            authority: "orca.internal".to_string(),
            read_timeout,
            secret: None,
        }
    }

    /// Hands the in-process fill proxy to a local client (no-op for a remote one).
    pub fn set_local(&self, fill: Arc<HttpProxy<FillService>>) {
        if let Target::Local { proxy, .. } = &self.target {
            let _ = proxy.set(fill);
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
                let proxy = proxy
                    .get()
                    .cloned()
                    .ok_or_else(|| "local fill service not started".to_string())?;
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

    /// Fetches one chunk (`query` from `FillSpec::query`) and sends bytes `[from, to)` of it
    /// to `tx`, adding what it sent to `sent`. Returns where the fill service got the bytes.
    /// The body length is checked against `expected_len`: a short body is an error, never a
    /// complete chunk.
    pub async fn fetch(
        &self,
        query: &str,
        expected_len: u64,
        (from, to): (u64, u64),
        tx: &UnboundedSender<PieceResult>,
        sent: &mut u64,
    ) -> Result<ChunkSource, FillError> {
        let unreachable = |m: String| FillError::Unreachable(format!("fill service: {m}"));
        let mut req =
            RequestHeader::build("GET", format!("/internal/fill?{query}").as_bytes(), None)
                .map_err(|e| unreachable(e.to_string()))?;
        req.insert_header("host", &self.authority)
            .map_err(|e| unreachable(e.to_string()))?;
        if let Some(secret) = &self.secret {
            req.insert_header(crate::cluster::SECRET_HEADER, secret)
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
            if status != 200 {
                let mut body = Vec::new();
                while let Ok(Some(piece)) = session.read_response_body().await {
                    if body.len() + piece.len() > MAX_ERROR_BODY {
                        break;
                    }
                    body.extend_from_slice(&piece);
                }
                let code = code_from_xml(&body).unwrap_or_default();
                return Err(match (status, code.as_str()) {
                    (409, _) => FillError::NotCoordinator,
                    (403, "AccessDenied") => FillError::Refused,
                    _ => FillError::Origin(OriginError::from_s3_code(&code, status)),
                });
            }
            let source = resp
                .headers
                .get(SOURCE_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(ChunkSource::parse)
                .unwrap_or(ChunkSource::Origin);
            let mut offset = 0u64;
            loop {
                match session.read_response_body().await {
                    Ok(Some(piece)) => {
                        let start = offset;
                        let end = offset + piece.len() as u64;
                        offset = end;
                        if end > expected_len {
                            return Err(FillError::Broken(
                                "fill body longer than the chunk".into(),
                            ));
                        }
                        if end <= from || start >= to {
                            continue;
                        }
                        let lo = from.saturating_sub(start) as usize;
                        let hi = (to.min(end) - start) as usize;
                        *sent += (hi - lo) as u64;
                        // The client went away: stop; the fill service finishes the fill.
                        if tx.send(Ok(piece.slice(lo..hi))).is_err() {
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
            if offset != expected_len {
                return Err(FillError::Broken(format!(
                    "body ended at {offset} of {expected_len} bytes"
                )));
            }
            tracing::trace!(reused, "fill answered; connection back to the pool");
            self.release(session).await;
            return Ok(source);
        }
        Err(last_err.unwrap_or_else(|| unreachable("connection failed".into())))
    }
}
