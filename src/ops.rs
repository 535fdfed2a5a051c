//! The ops service: `/healthz`, `/readyz` and `/metrics` (Prometheus text), and cache control
//! under `/cache/` ([`crate::cachectl`]).

use crate::cachectl::CacheCtl;
use crate::edge::auth::EdgeAuth;
use crate::metrics;
use crate::state::Orca;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long `/readyz` waits for the listeners to accept their test connections (both are
/// tried at once, well within a Kubernetes probe's default 1 s timeout).
const LISTENER_CHECK: Duration = Duration::from_millis(500);

/// The ops service.
pub struct OpsService {
    orca: Arc<Orca>,
    /// The edge's client authentication: not ready until its reload handler is installed.
    edge_auth: Arc<EdgeAuth>,
    /// Set once the edge and fill listeners have accepted a connection. Pingora binds each
    /// service's listeners in that service's own runtime, so this port can answer before the
    /// edge accepts anything; until then `/readyz` connects to both to find out.
    listening: AtomicBool,
    /// Warm, purge and inspect (`/cache/...`).
    cachectl: Arc<CacheCtl>,
}

impl OpsService {
    /// Ops over shared state.
    pub fn new(orca: Arc<Orca>, edge_auth: Arc<EdgeAuth>, cachectl: Arc<CacheCtl>) -> Self {
        Self {
            orca,
            edge_auth,
            listening: AtomicBool::new(false),
            cachectl,
        }
    }

    /// The listeners not accepting connections yet, as readiness problems.
    async fn listener_problems(&self) -> Vec<String> {
        if self.listening.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let listen = &self.orca.config.listen;
        let check = |key: &'static str, addr: String| async move {
            let target = addr.parse::<SocketAddr>().ok().map(reachable)?;
            let connected =
                tokio::time::timeout(LISTENER_CHECK, tokio::net::TcpStream::connect(target)).await;
            (!matches!(connected, Ok(Ok(_))))
                .then(|| format!("{key} {addr} is not accepting connections yet"))
        };
        let (edge, internal) = tokio::join!(
            check("listen.edge", listen.edge.clone()),
            check("listen.internal", listen.internal.clone())
        );
        let problems: Vec<String> = edge.into_iter().chain(internal).collect();
        if problems.is_empty() {
            self.listening.store(true, Ordering::Relaxed);
        }
        problems
    }
}

/// The address to connect to for a listener on `addr`: loopback for a wildcard address.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[async_trait]
impl ServeHttp for OpsService {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/healthz" => reply(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                let mut problems = self.listener_problems().await;
                problems.extend(self.orca.readiness_problems());
                problems.extend(self.edge_auth.readiness_problem());
                // Which source the AWS credential chains use, after the verdict (no secret).
                let mut sources = self.orca.credential_sources().join("\n");
                if !sources.is_empty() {
                    sources.push('\n');
                }
                if problems.is_empty() {
                    reply(200, "text/plain", format!("ready\n{sources}").into_bytes())
                } else {
                    let mut body = problems.join("\n");
                    body.push('\n');
                    body.push_str(&sources);
                    reply(503, "text/plain", body.into_bytes())
                }
            }
            "/metrics" => reply(200, "text/plain; version=0.0.4", metrics::render()),
            path if path.starts_with(crate::cachectl::PREFIX) => {
                self.cachectl.handle(session).await
            }
            _ => reply(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listeners_are_checked_on_loopback() {
        let v4: SocketAddr = "0.0.0.0:8443".parse().unwrap_or_else(|_| unreachable!());
        let v6: SocketAddr = "[::]:8444".parse().unwrap_or_else(|_| unreachable!());
        let named: SocketAddr = "10.1.2.3:8443".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(reachable(v4).to_string(), "127.0.0.1:8443");
        assert_eq!(reachable(v6).to_string(), "[::1]:8444");
        assert_eq!(reachable(named), named);
    }
}
