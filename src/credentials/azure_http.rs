//! The HTTP client the Entra ID credentials of `azure_identity` send their token requests
//! with: Orca's own Pingora connector ([`super::http::send_once`]), behind azure_core's
//! [`HttpClient`] trait. azure_core's own client is reqwest with a rustls of its own (a second
//! TLS stack); token requests are rare (one per token lifetime) and small, so each opens a
//! connection of its own, as the AWS providers' do.
//!
//! The managed identity credential asks IMDS at the fixed `http://169.254.169.254`. As in
//! Azure's Python, .NET and Java SDKs, env `AZURE_POD_IDENTITY_AUTHORITY_HOST` (a base URL)
//! sends those requests elsewhere (a node-local identity proxy; the tests' IMDS endpoint).
//!
//! The identity endpoint is trusted as every origin is: the platform's roots, or the CA file
//! named by `SSL_CERT_FILE` (`docs/azure.md`).

use super::http::{send_once, OnceError};
use crate::net::http::Resolver;
use async_trait::async_trait;
use azure_core::error::{Error, ErrorKind};
use azure_core::http::headers::Headers;
use azure_core::http::{AsyncRawResponse, Body, HttpClient, Request, StatusCode};
use bytes::Bytes;
use std::time::Duration;

/// Where IMDS answers on every Azure VM.
const IMDS_ORIGIN: &str = "http://169.254.169.254";

/// Connect and whole-exchange deadlines of one token request. azure_core retries (IMDS: up to
/// about a minute, as Azure's guidance asks), each attempt bounded by these.
const CONNECT: Duration = Duration::from_secs(5);
const EXCHANGE: Duration = Duration::from_secs(20);

/// azure_core's [`HttpClient`] over Orca's connector.
pub struct OrcaAzureHttp {
    /// `AZURE_POD_IDENTITY_AUTHORITY_HOST` without its trailing `/`, if set.
    imds_override: Option<String>,
    resolver: Resolver,
}

impl std::fmt::Debug for OrcaAzureHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrcaAzureHttp")
            .field("imds_override", &self.imds_override)
            .finish_non_exhaustive()
    }
}

impl OrcaAzureHttp {
    /// A client reading `AZURE_POD_IDENTITY_AUTHORITY_HOST` now.
    pub fn new() -> Self {
        let imds_override = std::env::var("AZURE_POD_IDENTITY_AUTHORITY_HOST")
            .ok()
            .map(|v| v.trim().trim_end_matches('/').to_string())
            .filter(|v| !v.is_empty());
        Self {
            imds_override,
            resolver: Resolver::default(),
        }
    }

    /// The URL a request goes to: IMDS's moved to the override, any other unchanged.
    fn target(&self, url: &str) -> String {
        match (&self.imds_override, url.strip_prefix(IMDS_ORIGIN)) {
            (Some(base), Some(rest)) if rest.is_empty() || rest.starts_with('/') => {
                format!("{base}{rest}")
            }
            _ => url.to_string(),
        }
    }
}

impl Default for OrcaAzureHttp {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl HttpClient for OrcaAzureHttp {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let body = match request.body() {
            Body::Bytes(b) => Bytes::copy_from_slice(b),
            Body::SeekableStream(_) => {
                return Err(Error::with_message(
                    ErrorKind::Other,
                    "a streaming request body",
                ))
            }
        };
        let url = self.target(request.url().as_str());
        let headers = request
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str().as_bytes()));
        let method = request.method().as_str();
        let sent = send_once(
            method,
            &url,
            headers,
            body,
            CONNECT,
            EXCHANGE,
            &self.resolver,
        );
        let answer = match tokio::time::timeout(EXCHANGE, sent).await {
            Ok(Ok(a)) => a,
            // The message names the host and what failed; never the request's body or headers.
            Ok(Err(OnceError::Request(m))) => {
                return Err(Error::with_message(ErrorKind::Other, m));
            }
            Ok(Err(OnceError::Io(m))) => {
                return Err(Error::with_message(ErrorKind::Io, m));
            }
            Err(_) => {
                return Err(Error::with_message(
                    ErrorKind::Io,
                    format!("no answer within {EXCHANGE:?}"),
                ))
            }
        };
        let mut headers = Headers::new();
        for (name, value) in answer.headers {
            headers.insert(name, value);
        }
        Ok(AsyncRawResponse::from_bytes(
            StatusCode::from(answer.status),
            headers,
            answer.body,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_imds_requests_move() {
        let client = OrcaAzureHttp {
            imds_override: Some("http://127.0.0.1:9".into()),
            resolver: Resolver::default(),
        };
        assert_eq!(
            client.target("http://169.254.169.254/metadata/identity/oauth2/token?a=b"),
            "http://127.0.0.1:9/metadata/identity/oauth2/token?a=b"
        );
        assert_eq!(
            client.target("https://login.microsoftonline.com/t/oauth2/v2.0/token"),
            "https://login.microsoftonline.com/t/oauth2/v2.0/token"
        );
        assert_eq!(
            client.target("http://169.254.169.2540/x"),
            "http://169.254.169.2540/x"
        );
    }
}
