//! The S3 origin driver: SigV4-signed HEAD and ranged GET against AWS S3 or any S3-compatible
//! endpoint, path-style or virtual-hosted.

use super::{
    classify_refusal, classify_status, strong_etag, ListRequest, ObjectMeta, Origin, OriginError,
};
use crate::chunk::Chunk;
use crate::error::code_from_xml;
use crate::metrics::ORIGIN_REQUESTS;
use crate::net::http::{header_str, ExchangeError};
use crate::net::retry::with_retries;
use crate::s3client::{S3Client, S3ClientError};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::upstreams::peer::HttpPeer;
use pingora_http::{RequestHeader, ResponseHeader};
use std::time::Duration;

/// Largest listing answer read from the origin (1000 keys of 1 KiB each fit many times over).
const MAX_LIST_BODY: usize = 64 << 20;

/// Headers S3 returns with an object that clients expect back unchanged.
const PASSTHROUGH: &[&str] = &[
    "content-encoding",
    "content-disposition",
    "content-language",
    "cache-control",
    "expires",
    "x-amz-server-side-encryption",
    "x-amz-storage-class",
    "x-amz-version-id",
    "x-amz-tagging-count",
];

pub use crate::s3client::S3Auth;

/// An S3 or S3-compatible origin.
pub struct S3Origin {
    client: S3Client,
}

impl S3Origin {
    /// A driver for `endpoint` (`http(s)://host[:port]`).
    pub fn new(
        endpoint: &str,
        region: &str,
        path_style: bool,
        auth: S3Auth,
        timeout: Duration,
    ) -> Result<Self, S3ClientError> {
        Ok(Self {
            client: S3Client::new(endpoint, region, path_style, auth, timeout)?,
        })
    }

    /// Builds and signs a request (see [`S3Client::signed_request`]).
    pub fn signed_request(
        &self,
        method: &str,
        bucket: &str,
        key: Option<&str>,
        query: &str,
        extra: &[(&str, &str)],
    ) -> Result<RequestHeader, OriginError> {
        self.client
            .signed_request(method, bucket, key, query, extra)
            .map_err(|e| OriginError::Protocol(e.to_string()))
    }

    /// Makes sure the client can sign: with the default credential chain, loads credentials
    /// when there are none usable (a refresh before expiry runs in the background).
    async fn prepare(&self, bucket: &str) -> Result<(), OriginError> {
        self.client
            .prepare(bucket)
            .await
            .map_err(|e| OriginError::Transient(e.to_string()))
    }

    /// Sends a signed request without a body and returns the whole (bounded) answer.
    pub async fn send(
        &self,
        op: &'static str,
        bucket: &str,
        req: RequestHeader,
        max_body: usize,
    ) -> Result<crate::net::http::Response, OriginError> {
        match self.client.send(bucket, req, max_body).await {
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
}

impl S3Origin {
    /// Why a HEAD was refused. A HEAD's answer has no body, so nothing tells a refused key
    /// from a refused object; a GET does (its `<Code>`): of one byte of the object, or of an
    /// empty listing of the bucket. Counted as `orca_origin_requests_total{op="probe"}`.
    async fn refusal(&self, bucket: &str, key: Option<&str>, status: u16) -> OriginError {
        let req = match key {
            Some(k) => self.signed_request("GET", bucket, Some(k), "", &[("range", "bytes=0-0")]),
            None => self.signed_request("GET", bucket, None, "list-type=2&max-keys=0", &[]),
        };
        let answer = match req {
            Ok(req) => self.send("probe", bucket, req, 64 * 1024).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(resp) => match resp.header.status.as_u16() {
                s @ (401 | 403) => refusal_of(s, &resp.body),
                // The GET was allowed (or the object is gone): the credentials work, so the
                // HEAD's refusal was about this object or bucket; a 401 is the credentials'.
                200..=299 | 404 | 416 if status == 403 => OriginError::AccessDenied,
                200..=299 | 404 | 416 => OriginError::Auth(status),
                // No verdict (a 5xx, say): unknown, so neither cached nor counted.
                s => OriginError::Transient(format!("HEAD {status}, then GET {s}")),
            },
            Err(e) => e,
        }
    }
}

/// A refusal with an S3 XML error body: by its `<Code>`; a 403 without one is taken as a
/// refusal of the object or bucket, a 401 without one as a refusal of the credentials.
fn refusal_of(status: u16, body: &[u8]) -> OriginError {
    let unknown = if status == 401 {
        OriginError::Auth(status)
    } else {
        OriginError::AccessDenied
    };
    classify_refusal(status, code_from_xml(body).as_deref(), unknown)
}

#[async_trait]
impl Origin for S3Origin {
    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta, OriginError> {
        self.prepare(bucket).await?;
        // Ask for the object's checksums too; they are sent back only where S3 would.
        let req = self.signed_request(
            "HEAD",
            bucket,
            Some(key),
            "",
            &[("x-amz-checksum-mode", "ENABLED")],
        )?;
        let resp = self.send("head", bucket, req, 64 * 1024).await?;
        let h = &resp.header;
        let status = h.status.as_u16();
        if status == 404 {
            // A HEAD's 404 has no body to say whether the key or the bucket is missing; ask.
            return Err(match self.head_bucket(bucket).await {
                Err(OriginError::BucketNotFound) => OriginError::BucketNotFound,
                _ => OriginError::NotFound,
            });
        }
        if status == 401 || status == 403 {
            return Err(self.refusal(bucket, Some(key), status).await);
        }
        if status != 200 {
            return Err(classify_status(status));
        }
        let size = header_str(h, "content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| OriginError::Protocol("HEAD without Content-Length".into()))?;
        // No ETag, or only a weak one: no version can be pinned.
        let etag = header_str(h, "etag")
            .and_then(strong_etag)
            .ok_or(OriginError::MissingETag)?;
        let mut extra_headers = Vec::new();
        let mut checksums = Vec::new();
        for (name, value) in h.headers.iter() {
            let n = name.as_str();
            let Ok(v) = value.to_str() else { continue };
            if PASSTHROUGH.contains(&n) || n.starts_with("x-amz-meta-") {
                extra_headers.push((n.to_string(), v.to_string()));
            } else if n.starts_with("x-amz-checksum-") {
                checksums.push((n.to_string(), v.to_string()));
            }
        }
        Ok(ObjectMeta {
            size,
            etag: etag.to_string(),
            last_modified: header_str(h, "last-modified").map(str::to_string),
            content_type: header_str(h, "content-type").map(str::to_string),
            extra_headers,
            checksums,
        })
    }

    async fn list(&self, bucket: &str, request: &ListRequest) -> Result<Bytes, OriginError> {
        with_retries(OriginError::is_retryable, |_| async {
            self.prepare(bucket).await?;
            let req = self.signed_request("GET", bucket, None, &request.query(), &[])?;
            let resp = self.send("list", bucket, req, MAX_LIST_BODY).await?;
            match resp.header.status.as_u16() {
                200 => Ok(resp.body),
                404 => Err(OriginError::BucketNotFound),
                s @ (401 | 403) => Err(refusal_of(s, &resp.body)),
                s => Err(classify_status(s)),
            }
        })
        .await
    }

    async fn head_bucket(&self, bucket: &str) -> Result<(), OriginError> {
        self.prepare(bucket).await?;
        let req = self.signed_request("HEAD", bucket, None, "", &[])?;
        let resp = self.send("head", bucket, req, 64 * 1024).await?;
        match resp.header.status.as_u16() {
            200 => Ok(()),
            404 => Err(OriginError::BucketNotFound),
            s @ (401 | 403) => Err(self.refusal(bucket, None, s).await),
            s => Err(classify_status(s)),
        }
    }

    fn region(&self) -> &str {
        self.client.region()
    }

    async fn chunk_peer(&self, bucket: &str) -> Result<HttpPeer, OriginError> {
        // The chunk request is signed right after, synchronously.
        self.prepare(bucket).await?;
        self.client
            .peer(bucket)
            .await
            .map_err(|e| OriginError::Transient(e.to_string()))
    }

    fn classify(&self, resp: &ResponseHeader) -> OriginError {
        // A chunk GET's refusal is read before its body: with the HEAD accepted moments ago,
        // a 403 is this object's (the next HEAD tells a refused key apart).
        match resp.status.as_u16() {
            403 => OriginError::AccessDenied,
            s => classify_status(s),
        }
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
        self.signed_request(
            "GET",
            bucket,
            Some(key),
            "",
            &[("range", &range), ("if-match", &if_match)],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::test_chunk;
    use aws_credential_types::Credentials;

    fn origin(path_style: bool) -> S3Origin {
        S3Origin::new(
            "http://127.0.0.1:9000",
            "us-east-1",
            path_style,
            S3Auth::Sign(Credentials::new("AKID", "SECRET", None, None, "test")),
            Duration::from_secs(5),
        )
        .unwrap()
    }

    #[test]
    fn path_and_virtual_hosted_addressing() {
        let o = origin(true);
        assert_eq!(o.client.path_for("bkt", Some("a b/c")), "/bkt/a%20b/c");
        assert_eq!(o.client.path_for("bkt", None), "/bkt");
        assert_eq!(origin(false).client.path_for("bkt", None), "/");
        let req = o
            .chunk_request(&test_chunk("bkt", "k", "etag1", 10))
            .unwrap();
        assert_eq!(req.uri.path(), "/bkt/k");
        assert_eq!(req.headers.get("host").unwrap(), "127.0.0.1:9000");
        assert_eq!(req.headers.get("range").unwrap(), "bytes=0-9");
        assert_eq!(req.headers.get("if-match").unwrap(), "\"etag1\"");
        let auth = req.headers.get("authorization").unwrap().to_str().unwrap();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKID/"));
        assert!(auth.contains("SignedHeaders=host;if-match;range;x-amz-content-sha256;x-amz-date"));
        assert_eq!(
            req.headers.get("x-amz-content-sha256").unwrap(),
            "UNSIGNED-PAYLOAD"
        );

        let v = origin(false);
        let req = v
            .chunk_request(&test_chunk("bkt", "dir//x/", "e", 1))
            .unwrap();
        assert_eq!(req.uri.path(), "/dir//x/");
        assert_eq!(req.headers.get("host").unwrap(), "bkt.127.0.0.1:9000");
    }

    #[test]
    fn anonymous_requests_are_unsigned() {
        let o = S3Origin::new(
            "https://s3.amazonaws.com",
            "us-east-1",
            false,
            S3Auth::Anonymous,
            Duration::from_secs(5),
        )
        .unwrap();
        let req = o.chunk_request(&test_chunk("b", "k", "e", 2)).unwrap();
        assert!(req.headers.get("authorization").is_none());
        assert_eq!(req.headers.get("host").unwrap(), "b.s3.amazonaws.com");
    }
}
