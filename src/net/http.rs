//! HTTP plumbing shared by origin drivers (and the cache store): endpoint URLs, an async DNS
//! cache, and a small request/response exchange over Orca's connection pool.
//!
//! `HttpPeer::new` with a host name resolves synchronously and panics when resolution fails,
//! so names are resolved here with tokio's resolver, cached for [`DNS_TTL`], and peers are
//! built from socket addresses plus SNI.

use crate::net::pool::ConnPool;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use pingora::upstreams::peer::HttpPeer;
use pingora_http::{RequestHeader, ResponseHeader};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A response header as a string, if present and valid.
pub fn header_str<'a>(resp: &'a ResponseHeader, name: &str) -> Option<&'a str> {
    resp.headers.get(name).and_then(|v| v.to_str().ok())
}

/// How long a resolved address is reused.
pub const DNS_TTL: Duration = Duration::from_secs(30);

/// Idle pooled connections are closed after this long.
pub const POOL_IDLE: Duration = Duration::from_secs(60);

/// Why an endpoint URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url:?}: {reason}")]
pub struct EndpointError {
    /// The URL as given.
    pub url: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// A parsed `http(s)://host[:port]` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https`.
    pub tls: bool,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// Port (defaulted from the scheme).
    pub port: u16,
}

impl Endpoint {
    /// Parses an endpoint URL; config validation has already checked its shape.
    pub fn parse(url: &str) -> Result<Self, EndpointError> {
        let bad = |reason: &'static str| EndpointError {
            url: url.to_string(),
            reason,
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad("not an http:// or https:// URL"));
        };
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("an unclosed IPv6 literal"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("a bad port"))?,
                None => default_port,
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad("a bad port"))?),
                None => (authority.to_string(), default_port),
            }
        };
        Ok(Self { tls, host, port })
    }

    /// `host[:port]` as a `Host` header, the port omitted when it is the scheme's default.
    pub fn authority(&self) -> String {
        self.authority_for(&self.host)
    }

    /// The `Host` header for another host name on this endpoint's scheme and port.
    pub fn authority_for(&self, host: &str) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// An async, caching resolver of host names to socket addresses.
#[derive(Default)]
pub struct Resolver {
    cache: Mutex<HashMap<(String, u16), (SocketAddr, Instant)>>,
}

impl Resolver {
    /// Resolves `host:port`, from the cache when fresh. The lock is never held across the lookup.
    pub async fn resolve(&self, host: &str, port: u16) -> std::io::Result<SocketAddr> {
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let key = (host.to_string(), port);
        if let Some((addr, at)) = self.cache.lock().get(&key) {
            if at.elapsed() < DNS_TTL {
                return Ok(*addr);
            }
        }
        let addr = tokio::net::lookup_host((host, port))
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{host} resolved to no address")))?;
        self.cache.lock().insert(key, (addr, Instant::now()));
        Ok(addr)
    }
}

/// Builds a peer for a resolved address, with Orca's timeouts.
pub fn make_peer(addr: SocketAddr, tls: bool, sni: &str, timeout: Duration) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, tls, sni.to_string());
    peer.options.connection_timeout = Some(timeout.min(Duration::from_secs(10)));
    peer.options.total_connection_timeout = Some(timeout.min(Duration::from_secs(10)));
    peer.options.read_timeout = Some(timeout);
    peer.options.write_timeout = Some(timeout);
    peer.options.idle_timeout = Some(POOL_IDLE);
    peer
}

/// A small buffered answer (HEAD, listings, errors).
#[derive(Debug)]
pub struct Response {
    /// The response header.
    pub header: ResponseHeader,
    /// The whole body (bounded by the caller's limit).
    pub body: Bytes,
}

/// Why an exchange failed before an answer was in hand.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Connecting, writing or reading failed.
    #[error("{0}")]
    Io(Box<pingora_error::Error>),
    /// No answer within the deadline.
    #[error("timed out")]
    Timeout,
    /// The body was larger than the caller allows.
    #[error("response body over {0} bytes")]
    TooLarge(usize),
}

/// Sends one request without a body and reads the whole answer (at most `max_body` bytes),
/// reusing pooled connections. The connection goes back to the pool only after a complete,
/// well-framed answer.
pub async fn exchange(
    connector: &ConnPool,
    peer: &HttpPeer,
    req: RequestHeader,
    max_body: usize,
    deadline: Duration,
) -> Result<Response, ExchangeError> {
    match tokio::time::timeout(deadline, exchange_inner(connector, peer, req, max_body)).await {
        Ok(r) => r,
        Err(_) => Err(ExchangeError::Timeout),
    }
}

async fn exchange_inner(
    connector: &ConnPool,
    peer: &HttpPeer,
    req: RequestHeader,
    max_body: usize,
) -> Result<Response, ExchangeError> {
    // A reused connection may have been closed by the server since; try once more on a new one.
    for attempt in 0..2 {
        let (mut session, reused) = connector
            .get_http_session(peer)
            .await
            .map_err(ExchangeError::Io)?;
        let sent = async {
            session.write_request_header(Box::new(req.clone())).await?;
            session.finish_request_body().await?;
            session.read_response_header().await
        }
        .await;
        if let Err(e) = sent {
            if reused && attempt == 0 {
                continue;
            }
            return Err(ExchangeError::Io(e));
        }
        let header = session.response_header().cloned().ok_or_else(|| {
            ExchangeError::Io(pingora_error::Error::new_str("no response header"))
        })?;
        let mut body = BytesMut::new();
        while let Some(piece) = session
            .read_response_body()
            .await
            .map_err(ExchangeError::Io)?
        {
            if body.len() + piece.len() > max_body {
                return Err(ExchangeError::TooLarge(max_body));
            }
            body.extend_from_slice(&piece);
        }
        connector.release_http_session(session, peer).await;
        return Ok(Response {
            header,
            body: body.freeze(),
        });
    }
    Err(ExchangeError::Io(pingora_error::Error::new_str(
        "connection failed twice",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let e = Endpoint::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!((e.tls, e.host.as_str(), e.port), (false, "127.0.0.1", 9000));
        assert_eq!(e.authority(), "127.0.0.1:9000");
        let e = Endpoint::parse("https://s3.us-east-1.amazonaws.com/").unwrap();
        assert_eq!((e.tls, e.port), (true, 443));
        assert_eq!(
            e.authority_for("b.s3.us-east-1.amazonaws.com"),
            "b.s3.us-east-1.amazonaws.com"
        );
        let e = Endpoint::parse("http://[::1]:10000/devstoreaccount1").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 10000));
        assert_eq!(e.authority(), "[::1]:10000");
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("http://").is_err());
        assert!(Endpoint::parse("http://h:notaport").is_err());
    }

    #[tokio::test]
    async fn resolver_handles_literals_and_names() {
        let r = Resolver::default();
        let a = r.resolve("127.0.0.1", 80).await.unwrap();
        assert_eq!(a.port(), 80);
        let b = r.resolve("localhost", 81).await.unwrap();
        assert!(b.ip().is_loopback());
    }
}
