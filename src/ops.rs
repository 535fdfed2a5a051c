//! The ops service: `/healthz`, `/readyz` and `/metrics` (Prometheus text).

use crate::app::Orca;
use crate::metrics;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

/// The ops service.
pub struct OpsService {
    orca: Arc<Orca>,
}

impl OpsService {
    /// Ops over shared state.
    pub fn new(orca: Arc<Orca>) -> Self {
        Self { orca }
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
                let problems = self.orca.readiness_problems();
                if problems.is_empty() {
                    reply(200, "text/plain", b"ready\n".to_vec())
                } else {
                    let mut body = problems.join("\n");
                    body.push('\n');
                    reply(503, "text/plain", body.into_bytes())
                }
            }
            "/metrics" => reply(200, "text/plain; version=0.0.4", metrics::render()),
            _ => reply(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}
