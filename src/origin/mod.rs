//! Origins: where objects really live (S3 and S3-compatible stores; Azure Blob later).
//!
//! An [`Origin`] answers HEAD for an object and builds the signed, ETag-pinned ranged GET that
//! the fill service sends through Pingora. Every answer maps to a small typed set,
//! [`OriginError`], and from there to exactly one S3 error the edge can send.

pub mod azureblob;
pub(crate) mod s3;

use crate::chunk::Chunk;
use crate::error::S3Error;
use crate::net::encode::encode_query_value;
use crate::net::http::header_str;
use async_trait::async_trait;
use pingora::upstreams::peer::HttpPeer;
use pingora_http::{RequestHeader, ResponseHeader};

/// What a HEAD of an object pinned: its size, version and the headers S3 clients expect back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Size in bytes.
    pub size: u64,
    /// ETag without quotes; never empty.
    pub etag: String,
    /// `Last-Modified`, as the origin wrote it (an HTTP date).
    pub last_modified: Option<String>,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// Other headers S3 returns with the object (Content-Encoding, Cache-Control,
    /// `x-amz-meta-*`, ...), passed back to clients unchanged.
    pub extra_headers: Vec<(String, String)>,
    /// `x-amz-checksum-*` (and `x-amz-checksum-type`) of the whole object, sent back only where
    /// S3 would: a whole-object GET or a HEAD that asked with `x-amz-checksum-mode: ENABLED`.
    pub checksums: Vec<(String, String)>,
}

impl ObjectMeta {
    /// Whether the stored checksums cover the whole object as one value (not a composite of
    /// parts, `...-N`), so they can be checked against a whole-object GET.
    pub fn has_full_object_checksum(&self) -> bool {
        let composite = self
            .checksums
            .iter()
            .any(|(n, v)| (n == "x-amz-checksum-type" && v == "COMPOSITE") || v.contains('-'));
        !composite
            && self
                .checksums
                .iter()
                .any(|(n, _)| n != "x-amz-checksum-type")
    }
}

/// A listing as S3 clients ask for it: ListObjectsV2 (`list-type=2`) or ListObjects (v1).
/// Values are decoded; drivers encode them for their origin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListRequest {
    /// ListObjectsV2 when true, ListObjects (v1) otherwise.
    pub v2: bool,
    /// `prefix`.
    pub prefix: Option<String>,
    /// `delimiter`.
    pub delimiter: Option<String>,
    /// `max-keys`.
    pub max_keys: Option<u32>,
    /// v2 `continuation-token`.
    pub continuation_token: Option<String>,
    /// v2 `start-after`.
    pub start_after: Option<String>,
    /// v2 `fetch-owner`.
    pub fetch_owner: Option<bool>,
    /// v1 `marker`.
    pub marker: Option<String>,
    /// `encoding-type=url`: keys and prefixes in the answer are URL-encoded.
    pub encoding_url: bool,
}

impl ListRequest {
    /// The query parameters, in S3's names, with decoded values.
    pub fn params(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if self.v2 {
            p.push(("list-type", "2".to_string()));
        }
        let mut opt = |name: &'static str, v: &Option<String>| {
            if let Some(v) = v {
                p.push((name, v.clone()));
            }
        };
        opt("prefix", &self.prefix);
        opt("delimiter", &self.delimiter);
        opt("continuation-token", &self.continuation_token);
        opt("start-after", &self.start_after);
        opt("marker", &self.marker);
        if let Some(m) = self.max_keys {
            p.push(("max-keys", m.to_string()));
        }
        if let Some(f) = self.fetch_owner {
            p.push(("fetch-owner", f.to_string()));
        }
        if self.encoding_url {
            p.push(("encoding-type", "url".to_string()));
        }
        p
    }

    /// The encoded query string (`a=b&c=d`, names sorted as SigV4 canonicalizes them).
    pub fn query(&self) -> String {
        let mut params = self.params();
        params.sort();
        params
            .iter()
            .map(|(k, v)| format!("{k}={}", encode_query_value(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// The small set of things an origin can answer, each with one meaning for callers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    /// 404 NoSuchKey: the key is not at the origin.
    #[error("object not found at origin")]
    NotFound,
    /// 404 NoSuchBucket: the bucket or container is not at the origin.
    #[error("bucket not found at origin")]
    BucketNotFound,
    /// 502 OriginAuthFailed: the origin refused Orca's credentials themselves (an unknown or
    /// disabled key, a wrong secret, an expired token: see [`CREDENTIAL_CODES`]). Counted by
    /// `OriginHealth`: three in a row make the replica unready.
    #[error("origin refused credentials (status {0})")]
    Auth(u16),
    /// 403 AccessDenied: the origin refused this object or bucket to credentials it otherwise
    /// accepts (a policy, or S3's 403 for a missing key without `s3:ListBucket`). The client's
    /// own answer, not the replica's health.
    #[error("origin denied access to this object or bucket")]
    AccessDenied,
    /// 503 OriginObjectChanged: the ETag pinned by HEAD no longer matches (If-Match failed).
    #[error("object changed at origin while being read")]
    ETagChanged,
    /// 502 OriginMissingETag: the origin answered without a strong ETag (none, or only a weak
    /// `W/` one, which `If-Match` never matches), so versions cannot be told apart and nothing
    /// may be cached.
    #[error("origin answered without a strong ETag")]
    MissingETag,
    /// 501 UnsupportedBlobType: an Azure page or append blob.
    #[error("unsupported blob type {0}")]
    UnsupportedType(String),
    /// 502 OriginUnavailable: connection failures and 5xx; retried before the first byte.
    #[error("origin unavailable: {0}")]
    Transient(String),
    /// 504 OriginTimeout: the origin did not answer in time; retried before the first byte.
    #[error("origin timed out")]
    Timeout,
    /// 502 OriginUnavailable: an answer that fits nothing above (a 400, a wrong Content-Range).
    #[error("unexpected origin answer: {0}")]
    Protocol(String),
}

impl OriginError {
    /// Worth another try (before the first byte reached anyone).
    pub fn is_retryable(&self) -> bool {
        matches!(self, OriginError::Transient(_) | OriginError::Timeout)
    }

    /// Kept for the metadata cache's negative TTL: asking again soon gives the same answer.
    pub fn is_negative_cacheable(&self) -> bool {
        matches!(
            self,
            OriginError::NotFound
                | OriginError::BucketNotFound
                | OriginError::MissingETag
                | OriginError::UnsupportedType(_)
                | OriginError::AccessDenied
        )
    }

    /// The error a client sees.
    pub fn to_s3(&self) -> S3Error {
        match self {
            OriginError::NotFound => S3Error::no_such_key(),
            OriginError::BucketNotFound => S3Error::no_such_bucket(),
            OriginError::Auth(s) => S3Error::new(
                502,
                "OriginAuthFailed",
                format!("The origin refused Orca's credentials (HTTP {s})."),
            ),
            OriginError::AccessDenied => S3Error::new(
                403,
                "AccessDenied",
                "The origin denied access to this object or bucket.",
            ),
            OriginError::ETagChanged => S3Error::new(
                503,
                "OriginObjectChanged",
                "The object changed at the origin while it was being read; retry.",
            ),
            OriginError::MissingETag => S3Error::new(
                502,
                "OriginMissingETag",
                "The origin answered without a strong ETag (none, or a weak one); Orca cannot cache such objects.",
            ),
            OriginError::UnsupportedType(t) => S3Error::new(
                501,
                "UnsupportedBlobType",
                format!("Only block blobs are served; this blob is a {t}."),
            ),
            OriginError::Transient(m) => S3Error::new(
                502,
                "OriginUnavailable",
                format!("The origin is unavailable: {m}"),
            ),
            OriginError::Timeout => {
                S3Error::new(504, "OriginTimeout", "The origin did not answer in time.")
            }
            OriginError::Protocol(m) => S3Error::new(
                502,
                "OriginUnavailable",
                format!("The origin gave an unexpected answer: {m}"),
            ),
        }
    }

    /// Whether `code` is one [`OriginError::to_s3`] produces: the origin's verdict as a fill
    /// service relays it (anything else is the fill service's own failure).
    pub fn is_origin_code(code: &str) -> bool {
        matches!(
            code,
            "NoSuchKey"
                | "NoSuchBucket"
                | "OriginAuthFailed"
                | "AccessDenied"
                | "OriginObjectChanged"
                | "OriginMissingETag"
                | "UnsupportedBlobType"
                | "OriginTimeout"
                | "OriginUnavailable"
        )
    }

    /// The error behind an S3 code a fill service answered with (see [`OriginError::to_s3`]).
    pub fn from_s3_code(code: &str, status: u16) -> Self {
        match code {
            "NoSuchKey" => OriginError::NotFound,
            "NoSuchBucket" => OriginError::BucketNotFound,
            "OriginAuthFailed" => OriginError::Auth(status),
            "AccessDenied" if status == 403 => OriginError::AccessDenied,
            "OriginObjectChanged" => OriginError::ETagChanged,
            "OriginMissingETag" => OriginError::MissingETag,
            "UnsupportedBlobType" => OriginError::UnsupportedType("non-block blob".into()),
            "OriginTimeout" => OriginError::Timeout,
            other => OriginError::Transient(format!("fill answered {status} {other}")),
        }
    }
}

/// An origin driver.
///
/// `head` is called by the metadata cache (once per object per TTL). `chunk_peer` and
/// `chunk_request` are called by the fill service's `upstream_peer` and
/// `upstream_request_filter` hooks: Pingora sends the request and streams the body.
#[async_trait]
pub trait Origin: Send + Sync + 'static {
    /// HEAD of an object. `Err(MissingETag)` when the origin gives no ETag.
    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta, OriginError>;

    /// A listing of `bucket`, answered as S3's `ListBucketResult` XML (drivers of other
    /// stores translate). `Err(BucketNotFound)` when the bucket does not exist.
    async fn list(&self, bucket: &str, request: &ListRequest) -> Result<bytes::Bytes, OriginError>;

    /// Whether `bucket` exists: `Ok(())`, or `Err(BucketNotFound)`.
    async fn head_bucket(&self, bucket: &str) -> Result<(), OriginError>;

    /// The region buckets live in, for `GetBucketLocation` (S3 origins).
    fn region(&self) -> &str {
        "us-east-1"
    }

    /// The peer chunk GETs for `bucket` go to (its address resolved asynchronously, cached).
    async fn chunk_peer(&self, bucket: &str) -> Result<HttpPeer, OriginError>;

    /// The signed GET of `chunk`'s bytes of its object, pinned to its version with `If-Match`.
    fn chunk_request(&self, chunk: &Chunk) -> Result<RequestHeader, OriginError> {
        self.range_request(chunk, chunk.offset(), chunk.last_byte())
    }

    /// The signed GET of bytes `first..=last` of `chunk`'s object (object offsets, inclusive,
    /// as HTTP ranges count), pinned to the chunk's version with `If-Match`: a sub-range of a
    /// chunk fill ([`crate::fill::subrange`]).
    fn range_request(
        &self,
        chunk: &Chunk,
        first: u64,
        last: u64,
    ) -> Result<RequestHeader, OriginError>;

    /// Classifies a chunk GET answer that is not a 206/200 (called before any byte is used).
    fn classify(&self, resp: &ResponseHeader) -> OriginError {
        classify_status(resp.status.as_u16())
    }

    /// The ETag of a chunk GET answer, unquoted.
    fn etag_of(&self, resp: &ResponseHeader) -> Option<String> {
        // A weak ETag is kept as sent, so it never equals the strong one a chunk is pinned to.
        header_str(resp, "etag").map(|e| strong_etag(e).unwrap_or(e).to_string())
    }
}

/// Error codes (S3's `<Code>`, Azure's `x-ms-error-code`) that say the credentials themselves
/// were refused, as opposed to a refusal of one object or bucket.
pub const CREDENTIAL_CODES: &[&str] = &[
    // S3 and S3-compatible stores.
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
    "RequestTimeTooSkewed",
    // Azure Blob. `AuthorizationFailure` is what Azurite answers to a wrong Shared Key or SAS
    // signature, and what Azure answers when the account's network rules refuse the replica:
    // both concern every request, not one blob. Per-resource refusals
    // (`AuthorizationPermissionMismatch`, `AuthorizationResourceTypeMismatch`...) are not here.
    "AuthenticationFailed",
    "InvalidAuthenticationInfo",
    "AuthorizationFailure",
];

/// Maps a refusal (401 or 403) by its error code: a credential code is [`OriginError::Auth`],
/// any other code is [`OriginError::AccessDenied`]. Without a code, `when_unknown` decides.
pub fn classify_refusal(status: u16, code: Option<&str>, when_unknown: OriginError) -> OriginError {
    match code {
        Some(c) if CREDENTIAL_CODES.contains(&c) => OriginError::Auth(status),
        Some(_) => OriginError::AccessDenied,
        None => when_unknown,
    }
}

/// The default status mapping shared by drivers.
pub fn classify_status(status: u16) -> OriginError {
    match status {
        404 => OriginError::NotFound,
        401 | 403 => OriginError::Auth(status),
        412 => OriginError::ETagChanged,
        408 | 429 | 500..=599 => OriginError::Transient(format!("HTTP {status}")),
        s => OriginError::Protocol(format!("HTTP {s}")),
    }
}

/// A strong entity tag without its quotes; `None` for a weak (`W/`) or empty one. Only a
/// strong ETag pins a version: `If-Match` compares strongly, so a weak one never matches.
pub fn strong_etag(etag: &str) -> Option<&str> {
    let e = etag.trim();
    if e.starts_with("W/") {
        return None;
    }
    Some(e.trim_matches('"')).filter(|e| !e.is_empty())
}

/// Strips the quotes (and a weak `W/` prefix) from an entity tag (for comparing a client's
/// conditional headers, where weak comparison applies).
pub fn unquote_etag(etag: &str) -> &str {
    let e = etag.trim();
    let e = e.strip_prefix("W/").unwrap_or(e);
    e.trim_matches('"')
}

/// A whole small object as one chunk, for the drivers' request tests.
#[cfg(test)]
pub(crate) fn test_chunk(bucket: &str, key: &str, etag: &str, len: u64) -> Chunk {
    let version = crate::chunk::ObjectVersion {
        origin_id: "test".into(),
        bucket: bucket.into(),
        key: key.into(),
        etag: etag.into(),
        size: len,
    };
    Chunk::new(std::sync::Arc::new(version), len, 0).expect("a non-empty object")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_unquote() {
        assert_eq!(unquote_etag("\"abc\""), "abc");
        assert_eq!(unquote_etag("W/\"abc\""), "abc");
        assert_eq!(unquote_etag("abc"), "abc");
        assert_eq!(strong_etag("\"abc\""), Some("abc"));
        assert_eq!(strong_etag("W/\"abc\""), None);
        assert_eq!(strong_etag("\"\""), None);
    }

    #[test]
    fn list_queries_are_canonical() {
        let r = ListRequest {
            v2: true,
            prefix: Some("a b/".into()),
            delimiter: Some("/".into()),
            max_keys: Some(2),
            continuation_token: Some("tok+en=".into()),
            encoding_url: true,
            ..ListRequest::default()
        };
        assert_eq!(
            r.query(),
            "continuation-token=tok%2Ben%3D&delimiter=%2F&encoding-type=url&list-type=2&max-keys=2&prefix=a%20b%2F"
        );
        assert_eq!(ListRequest::default().query(), "");
    }

    #[test]
    fn statuses_classify() {
        assert_eq!(classify_status(404), OriginError::NotFound);
        assert_eq!(classify_status(403), OriginError::Auth(403));
        let unknown = || OriginError::Auth(403);
        for code in [
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "ExpiredToken",
            "AuthenticationFailed",
        ] {
            assert_eq!(
                classify_refusal(403, Some(code), unknown()),
                OriginError::Auth(403)
            );
        }
        assert_eq!(
            classify_refusal(403, Some("AccessDenied"), unknown()),
            OriginError::AccessDenied
        );
        assert_eq!(
            classify_refusal(403, None, unknown()),
            OriginError::Auth(403)
        );
        assert_eq!(OriginError::AccessDenied.to_s3().status, 403);
        assert!(!OriginError::AccessDenied.is_retryable());
        assert_eq!(classify_status(412), OriginError::ETagChanged);
        assert!(classify_status(503).is_retryable());
        assert!(!classify_status(400).is_retryable());
        assert_eq!(OriginError::ETagChanged.to_s3().status, 503);
        assert_eq!(OriginError::Timeout.to_s3().code, "OriginTimeout");
    }
}
