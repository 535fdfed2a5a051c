//! A small S3 client: SigV4-signed requests (aws-sigv4), path-style or virtual-hosted
//! addressing, async cached DNS, connections kept alive by [`crate::net::pool`]. The S3
//! origin driver and the shared S3 cache store both use it; it knows nothing of chunks or of
//! origins.
//!
//! S3 Express One Zone directory buckets (named `base--zone-id--x-s3`) authorize data requests
//! with sessions: `CreateSession` (signed with the client's own keys, service `s3express`)
//! returns credentials that last 5 minutes; requests are then signed with those (service
//! `s3express`) and carry the session token in `x-amz-s3session-token`. The client keeps one
//! session per directory bucket and renews it after [`EXPRESS_SESSION_REUSE`].

use crate::credentials::aws::{AwsChain, ChainError};
use crate::error::xml_text;
use crate::net::encode::encode_key;
use crate::net::http::{
    exchange, make_peer, Endpoint, EndpointError, ExchangeError, Resolver, Response,
};
use crate::net::pool::ConnPool;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora_http::{RequestHeader, ResponseHeader};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// When an S3 Express session is renewed: they last 5 minutes.
pub const EXPRESS_SESSION_REUSE: Duration = Duration::from_secs(240);

/// How long an S3 Express session is used at most, while one caller renews it: 30 s are left
/// for the time between S3 making it and Orca receiving it, and for requests in flight.
const EXPRESS_SESSION_USABLE: Duration = Duration::from_secs(270);

/// Whether `bucket` is an S3 Express One Zone directory bucket (its name ends in `--x-s3`).
pub fn is_directory_bucket(bucket: &str) -> bool {
    bucket.ends_with("--x-s3")
}

/// Why an S3 request could not be built, sent or answered. Cheap to clone: callers waiting
/// for one CreateSession share its failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum S3ClientError {
    /// The endpoint URL is not usable.
    #[error("endpoint {0}")]
    Endpoint(#[from] EndpointError),
    /// The request could not be built or signed.
    #[error("cannot {what}: {source}")]
    Build {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// A directory bucket's request with no session to sign it.
    #[error("no S3 Express session for bucket {0:?} (CreateSession failed or was not made)")]
    NoSession(String),
    /// CreateSession was refused or its answer lacks the session.
    #[error("CreateSession on {bucket:?}: {detail}")]
    Session {
        /// The directory bucket.
        bucket: String,
        /// What went wrong (the HTTP status and S3 error code, or what was missing).
        detail: String,
    },
    /// The store's host name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The host name.
        host: String,
        /// The resolver's error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Connecting, writing or reading failed.
    #[error("{0}")]
    Io(#[source] Arc<pingora_error::Error>),
    /// No complete answer within the deadline.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// The answer's body was larger than the caller allows.
    #[error("response body over {0} bytes")]
    TooLarge(usize),
    /// The default credential chain has no usable credentials.
    #[error("{0}")]
    Credentials(#[from] ChainError),
}

impl S3ClientError {
    fn build(what: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        S3ClientError::Build {
            what,
            source: Arc::new(e),
        }
    }

    fn io(e: Box<pingora_error::Error>) -> Self {
        S3ClientError::Io(Arc::from(e))
    }
}

impl From<ExchangeError> for S3ClientError {
    fn from(e: ExchangeError) -> Self {
        match e {
            ExchangeError::Io(e) => S3ClientError::io(e),
            ExchangeError::Timeout => S3ClientError::Timeout("request"),
            ExchangeError::TooLarge(n) => S3ClientError::TooLarge(n),
        }
    }
}

/// How a request is signed.
enum Signer {
    /// The client's own keys, for service `s3` (or `s3express` for CreateSession).
    Own(Credentials, &'static str),
    /// An S3 Express session's credentials.
    Session(Credentials),
    /// Not at all.
    Unsigned,
}

/// Signing identity: static keys, the default credential chain, or none for public buckets.
#[derive(Clone)]
pub enum S3Auth {
    /// Sign with these credentials.
    Sign(Credentials),
    /// Sign with what the AWS default credential chain hands out (cached, refreshed before
    /// expiry: see [`S3Client::prepare`]).
    Chain(Arc<AwsChain>),
    /// Send unsigned requests (public buckets).
    Anonymous,
}

impl std::fmt::Debug for S3Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        match self {
            S3Auth::Sign(c) => write!(f, "Sign({})", c.access_key_id()),
            S3Auth::Chain(c) => write!(f, "Chain({:?})", c.source()),
            S3Auth::Anonymous => write!(f, "Anonymous"),
        }
    }
}

/// An S3 (or S3-compatible) endpoint with its credentials.
pub struct S3Client {
    endpoint: Endpoint,
    region: String,
    path_style: bool,
    auth: S3Auth,
    timeout: Duration,
    resolver: Resolver,
    /// Kept-alive connections (its transport connector is built on first use, inside a
    /// runtime: nothing is spawned before Pingora forks).
    connector: ConnPool,
    /// S3 Express sessions by directory bucket, with when they were made.
    sessions: parking_lot::Mutex<HashMap<String, (Credentials, Instant)>>,
    /// One CreateSession at a time (callers that waited find the new session).
    session_flight: tokio::sync::Mutex<()>,
    /// The last failed CreateSession, when and why: callers that waited for it get its error
    /// instead of trying again one after another.
    session_failure: parking_lot::Mutex<Option<(Instant, S3ClientError)>>,
    /// Whether `--x-s3` bucket names are S3 Express directory buckets (the cache store's
    /// client); an origin's client signs every bucket as a plain one.
    directory_buckets: bool,
}

impl S3Client {
    /// A client of `endpoint` (`http(s)://host[:port]`).
    pub fn new(
        endpoint: &str,
        region: &str,
        path_style: bool,
        auth: S3Auth,
        timeout: Duration,
    ) -> Result<Self, S3ClientError> {
        Ok(Self {
            endpoint: Endpoint::parse(endpoint)?,
            region: region.to_string(),
            path_style,
            auth,
            timeout,
            resolver: Resolver::default(),
            connector: ConnPool::new(),
            sessions: parking_lot::Mutex::new(HashMap::new()),
            session_flight: tokio::sync::Mutex::new(()),
            session_failure: parking_lot::Mutex::new(None),
            directory_buckets: false,
        })
    }

    /// Treats bucket names ending in `--x-s3` as S3 Express One Zone directory buckets
    /// (sessions from CreateSession sign their requests).
    pub fn with_directory_buckets(mut self) -> Self {
        self.directory_buckets = true;
        self
    }

    /// Whether requests for `bucket` are signed with S3 Express sessions.
    pub fn is_directory(&self, bucket: &str) -> bool {
        self.directory_buckets && is_directory_bucket(bucket)
    }

    /// Makes sure requests for `bucket` can be signed: for an S3 Express directory bucket,
    /// fetches its session with CreateSession, or renews it once it is
    /// [`EXPRESS_SESSION_REUSE`] old; for any other bucket, nothing. While a session is renewed,
    /// the other callers keep using the old one (it is still valid): only a missing or expired
    /// session makes them wait, for one CreateSession between them.
    pub async fn prepare(&self, bucket: &str) -> Result<(), S3ClientError> {
        if let S3Auth::Chain(chain) = &self.auth {
            chain.ensure().await?;
        }
        if !self.is_directory(bucket) {
            return Ok(());
        }
        let due = |age: Option<Duration>| age.is_none_or(|a| a >= EXPRESS_SESSION_REUSE);
        if !due(self.session_age(bucket)) {
            return Ok(());
        }
        if self.session(bucket).is_some() {
            // Due for renewal but still valid: one caller renews, the others go on with it.
            if let Ok(_one) = self.session_flight.try_lock() {
                if due(self.session_age(bucket)) {
                    if let Err(e) = self.create_session(bucket).await {
                        tracing::warn!(bucket, error = %e, "S3 Express session renewal failed; retrying on the next request");
                    }
                }
            }
            if self.session(bucket).is_some() {
                return Ok(());
            }
        }
        // No valid session: wait for one CreateSession between all callers.
        let asked = Instant::now();
        let _one = self.session_flight.lock().await;
        if self.session(bucket).is_some() {
            return Ok(());
        }
        if let Some((when, error)) = self.session_failure.lock().clone() {
            if when >= asked {
                return Err(error);
            }
        }
        self.create_session(bucket).await.inspect_err(|e| {
            *self.session_failure.lock() = Some((Instant::now(), e.clone()));
        })
    }

    /// CreateSession on a directory bucket; the session replaces the previous one.
    async fn create_session(&self, bucket: &str) -> Result<(), S3ClientError> {
        let session_error = |detail: String| S3ClientError::Session {
            bucket: bucket.to_string(),
            detail,
        };
        let own = match self.own_credentials() {
            Ok(own) => own,
            Err(S3ClientError::Credentials(e)) => return Err(e.into()),
            Err(_) => {
                return Err(session_error(
                    "an S3 Express directory bucket needs credentials to create sessions".into(),
                ))
            }
        };
        let req = self.sign_with(
            "GET",
            bucket,
            None,
            "session=",
            &[],
            Signer::Own(own, "s3express"),
            SystemTime::now(),
        )?;
        let resp = self
            .send(bucket, req, 64 * 1024)
            .await
            .map_err(|e| session_error(S3ClientError::from(e).to_string()))?;
        let status = resp.header.status.as_u16();
        let field = |tag: &str| xml_text(&resp.body, tag).filter(|v| !v.is_empty());
        if status != 200 {
            let code = field("Code").unwrap_or_else(|| "no error code".into());
            return Err(session_error(format!("HTTP {status} {code}")));
        }
        let (Some(id), Some(secret), Some(token)) = (
            field("AccessKeyId"),
            field("SecretAccessKey"),
            field("SessionToken"),
        ) else {
            return Err(session_error(
                "the answer lacks the session credentials".into(),
            ));
        };
        let creds = Credentials::new(id, secret, Some(token), None, "s3express-session");
        self.sessions
            .lock()
            .insert(bucket.to_string(), (creds, Instant::now()));
        Ok(())
    }

    /// The current session of a directory bucket, if it is still valid.
    fn session(&self, bucket: &str) -> Option<Credentials> {
        let sessions = self.sessions.lock();
        let (creds, made) = sessions.get(bucket)?;
        (made.elapsed() < EXPRESS_SESSION_USABLE).then(|| creds.clone())
    }

    /// Makes the directory bucket's session `by` older (tests of renewal and expiry).
    #[doc(hidden)]
    pub fn age_session(&self, bucket: &str, by: Duration) {
        if let Some((_, made)) = self.sessions.lock().get_mut(bucket) {
            *made = made.checked_sub(by).unwrap_or(*made);
        }
    }

    /// How old the directory bucket's session is, if it has one.
    fn session_age(&self, bucket: &str) -> Option<Duration> {
        self.sessions
            .lock()
            .get(bucket)
            .map(|(_, made)| made.elapsed())
    }

    /// The client's own credentials: the static keys, or the chain's current ones (which
    /// [`S3Client::prepare`] made sure of).
    fn own_credentials(&self) -> Result<Credentials, S3ClientError> {
        match &self.auth {
            S3Auth::Sign(creds) => Ok(creds.clone()),
            S3Auth::Chain(chain) => chain.current().ok_or_else(|| {
                S3ClientError::Credentials(chain.problem().unwrap_or_else(|| ChainError {
                    section: chain.section(),
                    detail: "not loaded yet".into(),
                }))
            }),
            S3Auth::Anonymous => Err(S3ClientError::build(
                "sign",
                std::io::Error::other("anonymous: no credentials"),
            )),
        }
    }

    /// The default credential chain this client signs with, if it does.
    pub fn chain(&self) -> Option<&Arc<AwsChain>> {
        match &self.auth {
            S3Auth::Chain(chain) => Some(chain),
            _ => None,
        }
    }

    /// The region requests are signed for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The host name requests for `bucket` go to.
    fn host_for(&self, bucket: &str) -> String {
        if self.path_style {
            self.endpoint.host.clone()
        } else {
            format!("{bucket}.{}", self.endpoint.host)
        }
    }

    /// The origin-form path of `bucket/key`, or of the bucket itself when `key` is `None`
    /// (`/bucket` path-style, as the SDKs send it, or `/` virtual-hosted).
    pub fn path_for(&self, bucket: &str, key: Option<&str>) -> String {
        match (self.path_style, key) {
            (true, Some(key)) => format!("/{}/{}", encode_key(bucket), encode_key(key)),
            (true, None) => format!("/{}", encode_key(bucket)),
            (false, Some(key)) => format!("/{}", encode_key(key)),
            (false, None) => "/".to_string(),
        }
    }

    /// Builds and signs a request. `query` is already encoded (`a=b&c=d`); the signer
    /// canonicalizes it. The payload is signed as `UNSIGNED-PAYLOAD`. For a directory bucket,
    /// [`S3Client::prepare`] must have been called first.
    pub fn signed_request(
        &self,
        method: &str,
        bucket: &str,
        key: Option<&str>,
        query: &str,
        extra: &[(&str, &str)],
    ) -> Result<RequestHeader, S3ClientError> {
        let signer = match &self.auth {
            S3Auth::Anonymous => Signer::Unsigned,
            _ if self.is_directory(bucket) => Signer::Session(
                self.session(bucket)
                    .ok_or_else(|| S3ClientError::NoSession(bucket.to_string()))?,
            ),
            _ => Signer::Own(self.own_credentials()?, "s3"),
        };
        self.sign_with(method, bucket, key, query, extra, signer, SystemTime::now())
    }

    /// [`S3Client::prepare`], then [`S3Client::signed_request`]: the way async callers build a
    /// request, so a directory bucket's session is never left out.
    pub async fn request(
        &self,
        method: &str,
        bucket: &str,
        key: Option<&str>,
        query: &str,
        extra: &[(&str, &str)],
    ) -> Result<RequestHeader, S3ClientError> {
        self.prepare(bucket).await?;
        self.signed_request(method, bucket, key, query, extra)
    }

    /// [`S3Client::signed_request`] signed with an S3 Express session's credentials at `time`
    /// (tests compare this with other SigV4 implementations).
    #[doc(hidden)]
    pub fn sign_with_session_at(
        &self,
        method: &str,
        bucket: &str,
        key: Option<&str>,
        extra: &[(&str, &str)],
        session: Credentials,
        time: SystemTime,
    ) -> Result<RequestHeader, S3ClientError> {
        self.sign_with(
            method,
            bucket,
            key,
            "",
            extra,
            Signer::Session(session),
            time,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn sign_with(
        &self,
        method: &str,
        bucket: &str,
        key: Option<&str>,
        query: &str,
        extra: &[(&str, &str)],
        signer: Signer,
        time: SystemTime,
    ) -> Result<RequestHeader, S3ClientError> {
        let host = self.endpoint.authority_for(&self.host_for(bucket));
        let mut path = self.path_for(bucket, key);
        if !query.is_empty() {
            path.push('?');
            path.push_str(query);
        }
        let mut req = RequestHeader::build(method, path.as_bytes(), Some(8))
            .map_err(|e| S3ClientError::build("build the request", *e))?;
        let bad = |e: pingora_error::BError| S3ClientError::build("set a header", *e);
        req.insert_header("host", &host).map_err(bad)?;
        for (name, value) in extra {
            req.insert_header(name.to_string(), *value).map_err(bad)?;
        }
        let (creds, service, session) = match signer {
            Signer::Unsigned => return Ok(req),
            Signer::Own(creds, service) => (creds, service, false),
            Signer::Session(creds) => (creds, "s3express", true),
        };
        {
            let scheme = if self.endpoint.tls { "https" } else { "http" };
            let url = format!("{scheme}://{host}{path}");
            let mut headers: Vec<(&str, &str)> = vec![("host", host.as_str())];
            headers.extend(extra.iter().copied());
            let mut settings = SigningSettings::default();
            // The key is encoded once, by encode_key, and signed as sent.
            settings.percent_encoding_mode = PercentEncodingMode::Single;
            settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
            settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
            if session {
                // S3 Express takes the session token in its own (signed) header.
                settings.session_token_name_override = Some("x-amz-s3session-token");
            }
            let identity = creds.into();
            let params = v4::SigningParams::builder()
                .identity(&identity)
                .region(&self.region)
                .name(service)
                .time(time)
                .settings(settings)
                .build()
                .map_err(|e| S3ClientError::build("set the signing parameters", e))?
                .into();
            let signable = SignableRequest::new(
                method,
                url,
                headers.into_iter(),
                SignableBody::UnsignedPayload,
            )
            .map_err(|e| S3ClientError::build("sign", e))?;
            let (instructions, _) = sign(signable, &params)
                .map_err(|e| S3ClientError::build("sign", e))?
                .into_parts();
            for (name, value) in instructions.headers() {
                req.insert_header(name.to_string(), value).map_err(bad)?;
            }
        }
        Ok(req)
    }

    /// The peer requests for `bucket` go to (its address resolved asynchronously, cached).
    pub async fn peer(&self, bucket: &str) -> Result<HttpPeer, S3ClientError> {
        let host = self.host_for(bucket);
        let addr = self
            .resolver
            .resolve(&host, self.endpoint.port)
            .await
            .map_err(|e| S3ClientError::Resolve {
                host: host.clone(),
                source: Arc::new(e),
            })?;
        Ok(make_peer(addr, self.endpoint.tls, &host, self.timeout))
    }

    /// Sends a request without a body and reads the whole (bounded) answer.
    pub async fn send(
        &self,
        bucket: &str,
        req: RequestHeader,
        max_body: usize,
    ) -> Result<Response, ExchangeError> {
        let peer = self.peer(bucket).await.map_err(|e| {
            ExchangeError::Io(pingora_error::Error::because(
                pingora_error::ErrorType::ConnectError,
                "resolving the store",
                e,
            ))
        })?;
        exchange(&self.connector, &peer, req, max_body, self.timeout).await
    }

    /// PUTs `pieces` (declared as `Content-Length: len`) and reads the (small) answer. The
    /// connection is pooled again only after a complete exchange.
    pub async fn put(
        &self,
        bucket: &str,
        key: &str,
        pieces: &[Bytes],
        extra: &[(&str, &str)],
    ) -> Result<Response, S3ClientError> {
        let len: u64 = pieces.iter().map(|p| p.len() as u64).sum();
        let mut body = pieces.iter().cloned();
        self.put_body(bucket, key, len, extra, &mut || {
            let next = body.next();
            async move { Ok(next) }
        })
        .await
    }

    /// PUTs exactly `len` bytes produced by `next` (declared as `Content-Length: len`) and
    /// reads the (small) answer. A body that fails or does not add up to `len` is never
    /// finished: the connection is dropped mid-body, so the store keeps nothing of it.
    pub async fn put_body<F, Fut>(
        &self,
        bucket: &str,
        key: &str,
        len: u64,
        extra: &[(&str, &str)],
        next: &mut F,
    ) -> Result<Response, S3ClientError>
    where
        F: FnMut() -> Fut + Send,
        Fut: std::future::Future<Output = Result<Option<Bytes>, std::io::Error>> + Send,
    {
        let len_text = len.to_string();
        let mut headers: Vec<(&str, &str)> = vec![("content-length", &len_text)];
        headers.extend(extra.iter().copied());
        let req = self.request("PUT", bucket, Some(key), "", &headers).await?;
        let peer = self.peer(bucket).await?;
        let connector = &self.connector;
        let exchange = async {
            let (mut session, _) = connector
                .get_http_session(&peer)
                .await
                .map_err(S3ClientError::io)?;
            session
                .write_request_header(Box::new(req))
                .await
                .map_err(S3ClientError::io)?;
            let mut sent = 0u64;
            loop {
                let piece = next().await.map_err(|e| {
                    S3ClientError::io(pingora_error::Error::because(
                        pingora_error::ErrorType::ReadError,
                        "reading the body to PUT",
                        e,
                    ))
                })?;
                let Some(piece) = piece else { break };
                sent += piece.len() as u64;
                if sent > len {
                    break;
                }
                session
                    .write_request_body(piece, false)
                    .await
                    .map_err(S3ClientError::io)?;
            }
            if sent != len {
                // Dropped unfinished: the store sees a short body and stores nothing.
                return Err(S3ClientError::io(pingora_error::Error::explain(
                    pingora_error::ErrorType::ReadError,
                    format!("the body to PUT has {sent} bytes, {len} declared"),
                )));
            }
            session
                .finish_request_body()
                .await
                .map_err(S3ClientError::io)?;
            let resp = read_whole(&mut session, 64 * 1024).await?;
            connector.release_http_session(session, &peer).await;
            Ok::<_, S3ClientError>(resp)
        };
        // The timeout covers a put of a whole chunk: generous, but bounded.
        tokio::time::timeout(self.timeout * 4, exchange)
            .await
            .map_err(|_| S3ClientError::Timeout("PUT"))?
    }

    /// Starts a GET (ranged when `range` is set) and returns the header and a body reader
    /// that streams the answer in the pieces the connection delivers.
    pub async fn get_stream(
        self: &Arc<Self>,
        bucket: &str,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<(ResponseHeader, S3Body), S3ClientError> {
        let range_text = range.map(|(a, b)| format!("bytes={a}-{b}"));
        let extra: Vec<(&str, &str)> = range_text
            .as_deref()
            .map(|r| vec![("range", r)])
            .unwrap_or_default();
        let req = self.request("GET", bucket, Some(key), "", &extra).await?;
        let peer = self.peer(bucket).await?;
        let connector = &self.connector;
        let (mut session, _) = connector
            .get_http_session(&peer)
            .await
            .map_err(S3ClientError::io)?;
        let head = tokio::time::timeout(self.timeout, async {
            session.write_request_header(Box::new(req)).await?;
            session.finish_request_body().await?;
            session.read_response_header().await
        })
        .await
        .map_err(|_| S3ClientError::Timeout("GET"))?;
        head.map_err(S3ClientError::io)?;
        let header = session.response_header().cloned().ok_or_else(no_header)?;
        Ok((
            header,
            S3Body {
                client: self.clone(),
                peer,
                session: Some(session),
            },
        ))
    }
}

/// The body of a streamed GET; the connection goes back to the pool after a complete body.
pub struct S3Body {
    client: Arc<S3Client>,
    peer: HttpPeer,
    session: Option<HttpSession>,
}

impl S3Body {
    /// The next piece, `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Bytes>, S3ClientError> {
        let Some(session) = self.session.as_mut() else {
            return Ok(None);
        };
        match session.read_response_body().await {
            Ok(Some(piece)) => Ok(Some(piece)),
            Ok(None) => {
                if let Some(s) = self.session.take() {
                    self.client
                        .connector
                        .release_http_session(s, &self.peer)
                        .await;
                }
                Ok(None)
            }
            Err(e) => {
                self.session = None;
                Err(S3ClientError::io(e))
            }
        }
    }

    /// Reads the rest of a small body (error answers).
    pub async fn text(mut self) -> String {
        let mut out = Vec::new();
        while let Ok(Some(p)) = self.next().await {
            if out.len() > 64 * 1024 {
                break;
            }
            out.extend_from_slice(&p);
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// A session that answered without a response header: Pingora's client reports a header it
/// could not read as an error, so this only happens if the session was misused.
fn no_header() -> S3ClientError {
    S3ClientError::io(pingora_error::Error::explain(
        pingora_error::ErrorType::InvalidHTTPHeader,
        "no response header",
    ))
}

async fn read_whole(session: &mut HttpSession, max: usize) -> Result<Response, S3ClientError> {
    session
        .read_response_header()
        .await
        .map_err(S3ClientError::io)?;
    let header = session.response_header().cloned().ok_or_else(no_header)?;
    let mut body = Vec::new();
    while let Some(p) = session
        .read_response_body()
        .await
        .map_err(S3ClientError::io)?
    {
        if body.len() + p.len() > max {
            return Err(S3ClientError::TooLarge(max));
        }
        body.extend_from_slice(&p);
    }
    Ok(Response {
        header,
        body: Bytes::from(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> S3Client {
        S3Client::new(
            "https://s3.example.test",
            "us-east-1",
            true,
            S3Auth::Sign(Credentials::new("AKID", "secret", None, None, "test")),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn authorization(req: &RequestHeader) -> String {
        req.headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn only_the_cache_stores_client_treats_x_s3_names_as_directory_buckets() {
        // An origin's client: an S3-compatible store may well have such a bucket name.
        let origin = client();
        assert!(!origin.is_directory("data--use1-az4--x-s3"));
        let req = origin
            .signed_request("GET", "data--use1-az4--x-s3", Some("k"), "", &[])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(authorization(&req).contains("/us-east-1/s3/aws4_request"));
        assert!(req.headers.get("x-amz-s3session-token").is_none());
        // The cache store's client: no session yet, so nothing can be signed.
        let store = client().with_directory_buckets();
        assert!(store.is_directory("data--use1-az4--x-s3"));
        assert!(!store.is_directory("data"));
        let err = store
            .signed_request("GET", "data--use1-az4--x-s3", Some("k"), "", &[])
            .unwrap_err();
        assert!(err.to_string().contains("no S3 Express session"), "{err}");
        assert!(store
            .signed_request("GET", "data", Some("k"), "", &[])
            .is_ok());
    }
}
