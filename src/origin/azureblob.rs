//! The Azure Blob Storage origin driver: Get Blob Properties for HEAD, ranged Get Blob pinned
//! with `If-Match` for chunks, List Blobs translated to S3 listing XML, Get Container Properties
//! for HeadBucket. Requests are authorized with the account's Shared Key ([`sign`]), a SAS
//! token appended to the query, or an Entra ID bearer token (`Authorization: Bearer`, which
//! `x-ms-version` 2017-11-09 and later accept; Orca sends [`API_VERSION`]).
//!
//! What S3 clients see: the bucket is the container, the key is the blob name (encoded with
//! [`encode_key`], so spaces, `+`, `%`, unicode and runs of `/` read back byte-exact), ETags are
//! Azure's (quoted), `x-ms-meta-*` comes back as `x-amz-meta-*`. Only block blobs are served:
//! page and append blobs answer 501 `UnsupportedBlobType`.

pub(crate) mod list;
pub mod sign;

use super::{
    classify_refusal, classify_status, strong_etag, ListRequest, ObjectMeta, Origin, OriginError,
};
use crate::chunk::Chunk;
use crate::config::{AzureBlobConfig, AzureCredentials};
use crate::credentials::azure::{EntraChain, EntraError};
use crate::metrics::ORIGIN_REQUESTS;
use crate::net::encode::{encode_key, encode_query_value};
use crate::net::http::{
    exchange, header_str, make_peer, Endpoint, EndpointError, ExchangeError, Resolver,
};
use crate::net::pool::ConnPool;
use crate::net::retry::with_retries;
use async_trait::async_trait;
use bytes::Bytes;
use list::{AzurePage, Cursor};
use pingora::upstreams::peer::HttpPeer;
use pingora_http::{RequestHeader, ResponseHeader};
use sign::{SharedKey, API_VERSION};
use std::sync::Arc;
use std::time::Duration;

/// Largest List Blobs page read (5000 names of 1 KiB with their properties fit many times).
const MAX_LIST_BODY: usize = 64 << 20;

/// Blob properties S3 returns under the same header names, passed back to clients unchanged.
const PASSTHROUGH: &[&str] = &[
    "content-encoding",
    "content-disposition",
    "content-language",
    "cache-control",
];

/// The only blob type served.
const BLOCK_BLOB: &str = "BlockBlob";

/// How requests are authorized.
#[derive(Clone)]
pub enum AzureAuth {
    /// Shared Key: every request signed with the account key.
    SharedKey(SharedKey),
    /// A SAS token (without the leading `?`), appended to every request's query.
    Sas(String),
    /// Entra ID bearer tokens, fetched and refreshed by the chain.
    Entra(Arc<EntraChain>),
}

impl std::fmt::Debug for AzureAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        match self {
            AzureAuth::SharedKey(k) => write!(f, "SharedKey({})", k.account()),
            AzureAuth::Sas(_) => write!(f, "Sas(<redacted>)"),
            AzureAuth::Entra(chain) => write!(f, "Entra({})", chain.source()),
        }
    }
}

/// An Azure Blob Storage account (or Azurite).
pub struct AzureBlobOrigin {
    endpoint: Endpoint,
    /// The endpoint's path without a trailing slash (Azurite: `/devstoreaccount1`; Azure: empty):
    /// every request path starts with it.
    base_path: String,
    auth: AzureAuth,
    timeout: Duration,
    resolver: Resolver,
    /// Kept-alive connections (its transport connector is built on first use, inside a
    /// runtime: nothing is spawned before Pingora forks).
    connector: ConnPool,
}

impl std::fmt::Debug for AzureBlobOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureBlobOrigin")
            .field("endpoint", &self.endpoint)
            .field("base_path", &self.base_path)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// Why the Azure driver cannot be set up from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum AzureSetupError {
    /// `origin.azureblob.endpoint` is not usable.
    #[error("origin.azureblob.endpoint {0}")]
    Endpoint(#[from] EndpointError),
    /// The account key is not base64.
    #[error("origin.azureblob account key: {0}")]
    Key(String),
    /// azure_identity refused the Entra ID settings.
    #[error(transparent)]
    Entra(#[from] EntraError),
}

impl AzureBlobOrigin {
    /// A driver for the blob service at `endpoint` (`http(s)://host[:port][/path]`).
    pub fn new(
        endpoint: &str,
        auth: AzureAuth,
        timeout: Duration,
    ) -> Result<Self, AzureSetupError> {
        let parsed = Endpoint::parse(endpoint)?;
        let after_scheme = endpoint
            .split_once("://")
            .map(|(_, rest)| rest)
            .unwrap_or(endpoint);
        let base_path = after_scheme
            .find('/')
            .map(|i| after_scheme[i..].trim_end_matches('/').to_string())
            .unwrap_or_default();
        Ok(Self {
            endpoint: parsed,
            base_path,
            auth,
            timeout,
            resolver: Resolver::default(),
            connector: ConnPool::new(),
        })
    }

    /// The driver `origin.azureblob` describes; fails on a key that is not base64.
    pub fn from_config(
        config: &AzureBlobConfig,
        timeout: Duration,
    ) -> Result<Self, AzureSetupError> {
        let auth = match &config.credentials {
            AzureCredentials::SharedKey(key) => AzureAuth::SharedKey(
                SharedKey::new(&config.account, key)
                    .map_err(|e| AzureSetupError::Key(e.to_string()))?,
            ),
            AzureCredentials::Sas(sas) => AzureAuth::Sas(sas.clone()),
            AzureCredentials::Entra(source) => AzureAuth::Entra(EntraChain::new(source)?),
        };
        Self::new(&config.endpoint, auth, timeout)
    }

    /// The origin-form path of a container, or of a blob in it.
    pub fn path_for(&self, container: &str, blob: Option<&str>) -> String {
        match blob {
            Some(b) => format!(
                "{}/{}/{}",
                self.base_path,
                encode_key(container),
                encode_key(b)
            ),
            None => format!("{}/{}", self.base_path, encode_key(container)),
        }
    }

    /// Builds and authorizes a request without a body. `query` holds decoded values; they are
    /// encoded here, and the same values are signed.
    pub fn request(
        &self,
        method: &str,
        container: &str,
        blob: Option<&str>,
        query: &[(&str, &str)],
        extra: &[(&str, &str)],
    ) -> Result<RequestHeader, OriginError> {
        let path = self.path_for(container, blob);
        let mut target = path.clone();
        let mut sep = '?';
        for (name, value) in query {
            target.push(sep);
            target.push_str(name);
            target.push('=');
            target.push_str(&encode_query_value(value));
            sep = '&';
        }
        if let AzureAuth::Sas(sas) = &self.auth {
            target.push(sep);
            target.push_str(sas);
        }
        let host = self.endpoint.authority();
        let date = sign::now_rfc1123();
        let mut headers: Vec<(&str, &str)> = vec![
            ("host", host.as_str()),
            ("x-ms-date", date.as_str()),
            ("x-ms-version", API_VERSION),
        ];
        headers.extend(extra.iter().copied());
        let mut req = RequestHeader::build(method, target.as_bytes(), Some(headers.len() + 1))
            .map_err(|e| OriginError::Protocol(format!("cannot build request: {e}")))?;
        let bad = |e: pingora_error::BError| OriginError::Protocol(format!("bad header: {e}"));
        for (name, value) in &headers {
            req.insert_header(name.to_string(), *value).map_err(bad)?;
        }
        match &self.auth {
            AzureAuth::SharedKey(key) => {
                let auth = key
                    .authorization(method, &path, query, &headers)
                    .map_err(|e| OriginError::Protocol(format!("cannot sign: {e}")))?;
                req.insert_header("authorization", auth).map_err(bad)?;
            }
            AzureAuth::Entra(chain) => {
                // `prepare` ran just before; a token that expired since is a transient miss.
                let token = chain.authorization().ok_or_else(|| {
                    OriginError::Transient("no usable Entra ID token".to_string())
                })?;
                req.insert_header("authorization", &*token).map_err(bad)?;
            }
            AzureAuth::Sas(_) => {}
        }
        Ok(req)
    }

    /// [`AzureBlobOrigin::request`] after making sure it can be authorized (an Entra ID token
    /// fetched when there is no usable one): for callers outside the `Origin` methods
    /// (`orcaseed`'s writes).
    pub async fn authorized_request(
        &self,
        method: &str,
        container: &str,
        blob: Option<&str>,
        query: &[(&str, &str)],
        extra: &[(&str, &str)],
    ) -> Result<RequestHeader, OriginError> {
        self.prepare().await?;
        self.request(method, container, blob, query, extra)
    }

    /// The Entra ID chain, when requests carry its tokens.
    pub fn entra(&self) -> Option<&Arc<EntraChain>> {
        match &self.auth {
            AzureAuth::Entra(chain) => Some(chain),
            _ => None,
        }
    }

    /// Makes sure a request can be authorized: with Entra ID, fetches a token when there is
    /// no usable one (a refresh before expiry runs in the background).
    async fn prepare(&self) -> Result<(), OriginError> {
        match &self.auth {
            AzureAuth::Entra(chain) => chain
                .ensure()
                .await
                .map_err(|e| OriginError::Transient(e.to_string())),
            _ => Ok(()),
        }
    }

    /// Sends a request without a body and returns the whole (bounded) answer.
    async fn send(
        &self,
        op: &'static str,
        req: RequestHeader,
        max_body: usize,
    ) -> Result<crate::net::http::Response, OriginError> {
        let peer = self.peer().await?;
        match exchange(&self.connector, &peer, req, max_body, self.timeout).await {
            Ok(resp) => {
                ORIGIN_REQUESTS
                    .with_label_values(&[op, resp.header.status.as_str()])
                    .inc();
                Ok(resp)
            }
            Err(e) => {
                ORIGIN_REQUESTS.with_label_values(&[op, "0"]).inc();
                Err(match e {
                    ExchangeError::Timeout => OriginError::Timeout,
                    other => OriginError::Transient(other.to_string()),
                })
            }
        }
    }

    async fn peer(&self) -> Result<HttpPeer, OriginError> {
        let host = &self.endpoint.host;
        let addr = self
            .resolver
            .resolve(host, self.endpoint.port)
            .await
            .map_err(|e| OriginError::Transient(format!("cannot resolve {host}: {e}")))?;
        Ok(make_peer(addr, self.endpoint.tls, host, self.timeout))
    }

    /// One List Blobs page, retried with backoff on transient failures.
    async fn list_page(
        &self,
        container: &str,
        prefix: &str,
        delimiter: &str,
        marker: Option<String>,
        max_results: u32,
    ) -> Result<AzurePage, OriginError> {
        let max_results = max_results.to_string();
        let mut query: Vec<(&str, &str)> = vec![("restype", "container"), ("comp", "list")];
        if !prefix.is_empty() {
            query.push(("prefix", prefix));
        }
        if !delimiter.is_empty() {
            query.push(("delimiter", delimiter));
        }
        if let Some(m) = marker.as_deref() {
            query.push(("marker", m));
        }
        query.push(("maxresults", &max_results));
        with_retries(OriginError::is_retryable, |_| async {
            self.prepare().await?;
            let req = self.request("GET", container, None, &query, &[])?;
            let resp = self.send("list", req, MAX_LIST_BODY).await?;
            match resp.header.status.as_u16() {
                200 => list::parse_enumeration(&resp.body).map_err(OriginError::Protocol),
                404 => Err(OriginError::BucketNotFound),
                _ => Err(azure_error(&resp.header)),
            }
        })
        .await
    }
}

/// Maps an Azure error answer by its `x-ms-error-code` first, its status second.
pub fn azure_error(resp: &ResponseHeader) -> OriginError {
    let status = resp.status.as_u16();
    match header_str(resp, "x-ms-error-code") {
        Some("ContainerNotFound") => OriginError::BucketNotFound,
        Some("BlobNotFound") => OriginError::NotFound,
        Some("ConditionNotMet") => OriginError::ETagChanged,
        Some("BlobArchived") => {
            OriginError::Protocol("the blob is in the Archive tier; rehydrate it to read it".into())
        }
        // A refusal: of the credentials (AuthenticationFailed...) or of this blob or container
        // (AuthorizationFailure, AuthorizationPermissionMismatch...). Azure always sends the
        // code; a bare 401 or 403 came from something in between and counts as credentials.
        code @ Some(_) if status == 401 || status == 403 => {
            classify_refusal(status, code, OriginError::Auth(status))
        }
        _ => classify_status(status),
    }
}

/// Whether `name` can be an Azure container (3-63 lowercase letters, digits and single
/// hyphens, starting and ending with a letter or digit; or `$root`, `$web`, `$logs`). Other
/// S3 bucket names (dots, capitals) cannot exist at the origin: NoSuchBucket without asking.
pub fn is_container_name(name: &str) -> bool {
    if matches!(name, "$root" | "$web" | "$logs") {
        return true;
    }
    let b = name.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !name.contains("--")
}

#[async_trait]
impl Origin for AzureBlobOrigin {
    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta, OriginError> {
        if !is_container_name(bucket) {
            return Err(OriginError::BucketNotFound);
        }
        self.prepare().await?;
        let req = self.request("HEAD", bucket, Some(key), &[], &[])?;
        let resp = self.send("head", req, 64 * 1024).await?;
        let h = &resp.header;
        let status = h.status.as_u16();
        if status == 404 && header_str(h, "x-ms-error-code").is_none() {
            // No error code (a proxy in between): ask whether the container is there.
            return Err(match self.head_bucket(bucket).await {
                Err(OriginError::BucketNotFound) => OriginError::BucketNotFound,
                _ => OriginError::NotFound,
            });
        }
        if status != 200 {
            return Err(azure_error(h));
        }
        if let Some(t) = header_str(h, "x-ms-blob-type") {
            if t != BLOCK_BLOB {
                return Err(OriginError::UnsupportedType(t.to_string()));
            }
        }
        let size = header_str(h, "content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                OriginError::Protocol("Get Blob Properties without Content-Length".into())
            })?;
        // No ETag, or only a weak one: no version can be pinned.
        let etag = header_str(h, "etag")
            .and_then(strong_etag)
            .ok_or(OriginError::MissingETag)?;
        let mut extra_headers = Vec::new();
        for (name, value) in h.headers.iter() {
            let n = name.as_str();
            let Ok(v) = value.to_str() else { continue };
            if PASSTHROUGH.contains(&n) {
                extra_headers.push((n.to_string(), v.to_string()));
            } else if let Some(meta) = n.strip_prefix("x-ms-meta-") {
                extra_headers.push((format!("x-amz-meta-{meta}"), v.to_string()));
            }
        }
        Ok(ObjectMeta {
            size,
            etag: etag.to_string(),
            last_modified: header_str(h, "last-modified").map(str::to_string),
            content_type: header_str(h, "content-type").map(str::to_string),
            extra_headers,
            checksums: Vec::new(),
        })
    }

    async fn list(&self, bucket: &str, request: &ListRequest) -> Result<Bytes, OriginError> {
        if !is_container_name(bucket) {
            return Err(OriginError::BucketNotFound);
        }
        let max_keys = request
            .max_keys
            .unwrap_or(list::S3_MAX_KEYS)
            .min(list::S3_MAX_KEYS);
        // v2: the token wins over start-after, as in S3. v1: the marker is a key, or the token
        // Orca sent as NextMarker.
        let from = if request.v2 {
            request
                .continuation_token
                .as_deref()
                .or(request.start_after.as_deref())
        } else {
            request.marker.as_deref()
        };
        let cursor = from
            .filter(|s| !s.is_empty())
            .map(Cursor::from_client)
            .unwrap_or_default();
        let prefix = request.prefix.as_deref().unwrap_or("");
        let delimiter = request.delimiter.as_deref().unwrap_or("");
        let page = list::collect(cursor, max_keys, |marker, n| {
            self.list_page(bucket, prefix, delimiter, marker, n)
        })
        .await?;
        Ok(list::render(bucket, request, max_keys, &page))
    }

    async fn head_bucket(&self, bucket: &str) -> Result<(), OriginError> {
        if !is_container_name(bucket) {
            return Err(OriginError::BucketNotFound);
        }
        self.prepare().await?;
        let req = self.request("HEAD", bucket, None, &[("restype", "container")], &[])?;
        let resp = self.send("head", req, 64 * 1024).await?;
        match resp.header.status.as_u16() {
            200 => Ok(()),
            404 => Err(OriginError::BucketNotFound),
            _ => Err(azure_error(&resp.header)),
        }
    }

    async fn chunk_peer(&self, _bucket: &str) -> Result<HttpPeer, OriginError> {
        // The chunk request is authorized right after, synchronously.
        self.prepare().await?;
        self.peer().await
    }

    fn range_request(
        &self,
        chunk: &Chunk,
        first: u64,
        last: u64,
    ) -> Result<RequestHeader, OriginError> {
        let range = format!("bytes={first}-{last}");
        let if_match = format!("\"{}\"", chunk.version.etag);
        let (bucket, key) = (&chunk.version.bucket, chunk.version.key.as_str());
        self.request(
            "GET",
            bucket,
            Some(key),
            &[],
            &[("x-ms-range", &range), ("if-match", &if_match)],
        )
    }

    fn classify(&self, resp: &ResponseHeader) -> OriginError {
        azure_error(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::test_chunk;

    const AZURITE_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    fn azurite() -> AzureBlobOrigin {
        let key = SharedKey::new("devstoreaccount1", AZURITE_KEY).unwrap();
        AzureBlobOrigin::new(
            "http://127.0.0.1:10000/devstoreaccount1",
            AzureAuth::SharedKey(key),
            Duration::from_secs(5),
        )
        .unwrap()
    }

    #[test]
    fn paths_carry_the_endpoint_path_and_encoded_names() {
        let o = azurite();
        assert_eq!(
            o.path_for("data", Some("a b/+%/ü//x")),
            "/devstoreaccount1/data/a%20b/%2B%25/%C3%BC//x"
        );
        assert_eq!(o.path_for("data", None), "/devstoreaccount1/data");
        let real = AzureBlobOrigin::new(
            "https://acct.blob.core.windows.net",
            AzureAuth::Sas("sv=2025-11-05&sig=abc%3D".into()),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(real.path_for("c", Some("k")), "/c/k");
    }

    #[test]
    fn chunk_requests_are_signed_ranged_and_pinned() {
        let o = azurite();
        let req = o
            .chunk_request(&test_chunk("data", "dir/k 1", "0x8DC", 10))
            .unwrap();
        assert_eq!(req.uri.path(), "/devstoreaccount1/data/dir/k%201");
        assert_eq!(req.headers.get("host").unwrap(), "127.0.0.1:10000");
        assert_eq!(req.headers.get("x-ms-range").unwrap(), "bytes=0-9");
        assert_eq!(req.headers.get("if-match").unwrap(), "\"0x8DC\"");
        assert_eq!(req.headers.get("x-ms-version").unwrap(), API_VERSION);
        assert!(req.headers.get("range").is_none());
        let auth = req.headers.get("authorization").unwrap().to_str().unwrap();
        assert!(auth.starts_with("SharedKey devstoreaccount1:"), "{auth}");
    }

    #[test]
    fn sas_goes_in_the_query_unsigned() {
        let o = AzureBlobOrigin::new(
            "https://acct.blob.core.windows.net/",
            AzureAuth::Sas("sv=2025-11-05&sig=abc%3D".into()),
            Duration::from_secs(5),
        )
        .unwrap();
        let req = o
            .request(
                "GET",
                "c",
                None,
                &[("restype", "container"), ("prefix", "a b/")],
                &[],
            )
            .unwrap();
        assert_eq!(
            req.uri.to_string(),
            "/c?restype=container&prefix=a%20b%2F&sv=2025-11-05&sig=abc%3D"
        );
        assert!(req.headers.get("authorization").is_none());
        assert_eq!(
            req.headers.get("host").unwrap(),
            "acct.blob.core.windows.net"
        );
        assert!(!format!("{o:?}").contains("sig="));
    }

    #[test]
    fn errors_map_by_code_then_status() {
        let resp = |status: u16, code: Option<&str>| {
            let mut r = ResponseHeader::build(status, None).unwrap();
            if let Some(c) = code {
                r.insert_header("x-ms-error-code", c).unwrap();
            }
            r
        };
        let o = azurite();
        assert_eq!(
            o.classify(&resp(404, Some("ContainerNotFound"))),
            OriginError::BucketNotFound
        );
        assert_eq!(
            o.classify(&resp(404, Some("BlobNotFound"))),
            OriginError::NotFound
        );
        assert_eq!(
            o.classify(&resp(412, Some("ConditionNotMet"))),
            OriginError::ETagChanged
        );
        assert_eq!(o.classify(&resp(412, None)), OriginError::ETagChanged);
        assert_eq!(
            o.classify(&resp(403, Some("AuthenticationFailed"))),
            OriginError::Auth(403)
        );
        assert!(matches!(
            o.classify(&resp(409, Some("BlobArchived"))),
            OriginError::Protocol(m) if m.contains("Archive")
        ));
        assert!(o.classify(&resp(503, Some("ServerBusy"))).is_retryable());
        assert!(o
            .classify(&resp(500, Some("OperationTimedOut")))
            .is_retryable());
    }

    #[test]
    fn container_names() {
        for ok in ["abc", "my-container-1", "$root", &"a".repeat(63)] {
            assert!(is_container_name(ok), "{ok}");
        }
        for bad in [
            "ab",
            "My",
            "a.b",
            "-ab",
            "ab-",
            "a--b",
            "a_b",
            &"a".repeat(64),
        ] {
            assert!(!is_container_name(bad), "{bad}");
        }
    }

    #[test]
    fn bad_keys_fail_at_start_up() {
        let config = AzureBlobConfig {
            account: "acct".into(),
            endpoint: "https://acct.blob.core.windows.net".into(),
            credentials: AzureCredentials::SharedKey("not base64 !".into()),
        };
        let err = AzureBlobOrigin::from_config(&config, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("base64"), "{err}");
    }
}
