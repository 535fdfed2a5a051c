//! The HTTP client the AWS credential providers (STS, IMDS, container endpoints) send their
//! requests with: Orca's own Pingora connector (rustls), behind smithy's [`HttpClient`] trait;
//! [`send_once`] is also what the Azure identity client ([`super::azure_http`]) sends with.
//!
//! aws-config's own client (hyper-rustls over aws-lc-sys) would be a second TLS stack with a C
//! build. Credential requests are rare (one per credential lifetime) and small, so each one
//! opens a connection of its own and closes it: nothing pooled outlives the runtime it was
//! opened on (the first fetch runs at start-up, on a runtime of its own).

use crate::net::http::{make_peer, Endpoint, Resolver};
use crate::net::pool::ConnPool;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use pingora_http::RequestHeader;
use std::sync::Arc;
use std::time::Duration;

/// The largest credential answer read (an STS answer is about 2 KiB).
const MAX_BODY: usize = 256 * 1024;

/// Connect and read deadlines when the provider sets none.
const DEFAULT_CONNECT: Duration = Duration::from_secs(5);
const DEFAULT_READ: Duration = Duration::from_secs(10);

/// Smithy's [`HttpClient`] over Orca's connector.
#[derive(Debug, Clone, Default)]
pub struct OrcaHttpClient;

impl HttpClient for OrcaHttpClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(OrcaConnector {
            connect: settings.connect_timeout().unwrap_or(DEFAULT_CONNECT),
            read: settings.read_timeout().unwrap_or(DEFAULT_READ),
            resolver: Arc::new(Resolver::default()),
        })
    }
}

/// One provider's connector, with its deadlines.
#[derive(Clone)]
struct OrcaConnector {
    connect: Duration,
    read: Duration,
    resolver: Arc<Resolver>,
}

impl std::fmt::Debug for OrcaConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrcaConnector")
            .field("connect", &self.connect)
            .field("read", &self.read)
            .finish()
    }
}

impl HttpConnector for OrcaConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let this = self.clone();
        HttpConnectorFuture::new(async move {
            let deadline = this.connect + this.read;
            match tokio::time::timeout(deadline, this.exchange(request)).await {
                Ok(r) => r,
                Err(_) => Err(ConnectorError::timeout(
                    format!("no answer within {deadline:?}").into(),
                )),
            }
        })
    }
}

fn user_error(e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::user(e.to_string().into())
}

fn io_error(e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::io(e.to_string().into())
}

impl OrcaConnector {
    async fn exchange(&self, request: HttpRequest) -> Result<HttpResponse, ConnectorError> {
        let body: Bytes = match request.body().bytes() {
            Some(b) => Bytes::copy_from_slice(b),
            None => return Err(user_error("a streaming request body")),
        };
        let headers = request.headers().iter().map(|(n, v)| (n, v.as_bytes()));
        let answer = send_once(
            request.method(),
            request.uri(),
            headers,
            body,
            self.connect,
            self.read,
            &self.resolver,
        )
        .await
        .map_err(|e| match e {
            OnceError::Request(m) => user_error(m),
            OnceError::Io(m) => io_error(m),
        })?;
        let status = StatusCode::try_from(answer.status).map_err(io_error)?;
        let mut response = HttpResponse::new(status, SdkBody::from(answer.body));
        for (name, value) in answer.headers {
            response.headers_mut().append(name, value);
        }
        Ok(response)
    }
}

/// Why [`send_once`] failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OnceError {
    /// The request cannot be sent as given (a bad URL or header).
    #[error("{0}")]
    Request(String),
    /// Connecting, writing or reading failed.
    #[error("{0}")]
    Io(String),
}

/// A whole answer of [`send_once`]: status, headers (those with text values), body.
pub(crate) struct OnceAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Sends one request on a connection of its own (closed after the answer; see the module's
/// comment) and reads the whole answer, up to [`MAX_BODY`]. Shared by the AWS providers'
/// client and the Azure identity one ([`super::azure_http`]). No overall deadline: callers
/// put one around it.
pub(crate) async fn send_once<'a>(
    method: &str,
    url: &str,
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    body: Bytes,
    connect: Duration,
    read: Duration,
    resolver: &Resolver,
) -> Result<OnceAnswer, OnceError> {
    let bad = |e: &dyn std::fmt::Display| OnceError::Request(e.to_string());
    let io = |e: &dyn std::fmt::Display| OnceError::Io(e.to_string());
    let uri: http::Uri = url.parse().map_err(|e| bad(&e))?;
    let scheme = uri.scheme_str().unwrap_or("http");
    let authority = uri
        .authority()
        .ok_or_else(|| OnceError::Request("a URL without a host".into()))?;
    let endpoint = Endpoint::parse(&format!("{scheme}://{authority}")).map_err(|e| bad(&e))?;
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = RequestHeader::build(method, target.as_bytes(), None).map_err(|e| bad(&e))?;
    req.insert_header("host", endpoint.authority())
        .map_err(|e| bad(&e))?;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        req.append_header(name.to_string(), value)
            .map_err(|e| bad(&e))?;
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT") {
        req.insert_header("content-length", body.len().to_string())
            .map_err(|e| bad(&e))?;
    }
    let addr = resolver
        .resolve(&endpoint.host, endpoint.port)
        .await
        .map_err(|e| io(&e))?;
    let mut peer = make_peer(addr, endpoint.tls, &endpoint.host, read);
    peer.options.connection_timeout = Some(connect);
    peer.options.total_connection_timeout = Some(connect);
    // A connection of its own, closed after the answer (see the module's comment).
    let pool = ConnPool::new();
    let (mut session, _) = pool.get_http_session(&peer).await.map_err(|e| io(&e))?;
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(|e| io(&e))?;
    if !body.is_empty() {
        session
            .write_request_body(body, false)
            .await
            .map_err(|e| io(&e))?;
    }
    session.finish_request_body().await.map_err(|e| io(&e))?;
    session.read_response_header().await.map_err(|e| io(&e))?;
    let header = session
        .response_header()
        .cloned()
        .ok_or_else(|| OnceError::Io("no response header".into()))?;
    let mut answer = Vec::new();
    while let Some(piece) = session.read_response_body().await.map_err(|e| io(&e))? {
        if answer.len() + piece.len() > MAX_BODY {
            return Err(OnceError::Io(format!("an answer over {MAX_BODY} bytes")));
        }
        answer.extend_from_slice(&piece);
    }
    let headers = header
        .headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    Ok(OnceAnswer {
        status: header.status.as_u16(),
        headers,
        body: answer,
    })
}
