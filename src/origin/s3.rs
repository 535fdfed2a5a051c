//! The S3 origin driver: SigV4-signed HEAD and ranged GET against AWS S3 or any S3-compatible
//! endpoint, path-style or virtual-hosted.

use super::http::ExchangeError;
use super::{
    classify_status, header_str, unquote_etag, ListRequest, ObjectMeta, Origin, OriginError,
};
use crate::metrics::ORIGIN_REQUESTS;
use crate::s3::S3Client;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
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

pub use crate::s3::S3Auth;

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
    ) -> Result<Self, String> {
        Ok(Self {
            client: S3Client::new(endpoint, region, path_style, auth, timeout)?,
        })
    }

    /// The origin-form path of `bucket/key` (or of the bucket itself when `key` is `None`).
    pub fn path_for(&self, bucket: &str, key: Option<&str>) -> String {
        self.client.path_for(bucket, key)
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
            .map_err(OriginError::Protocol)
    }

    /// Sends a signed request without a body and returns the whole (bounded) answer.
    pub async fn send(
        &self,
        op: &'static str,
        bucket: &str,
        req: RequestHeader,
        max_body: usize,
    ) -> Result<super::http::Response, OriginError> {
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

#[async_trait]
impl Origin for S3Origin {
    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta, OriginError> {
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
        if status != 200 {
            return Err(classify_status(status));
        }
        let size = header_str(h, "content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| OriginError::Protocol("HEAD without Content-Length".into()))?;
        let etag = header_str(h, "etag").map(unquote_etag).unwrap_or_default();
        if etag.is_empty() {
            return Err(OriginError::MissingETag);
        }
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
        let mut attempt = 0;
        loop {
            attempt += 1;
            let req = self.signed_request("GET", bucket, None, &request.query(), &[])?;
            let result = self.send("list", bucket, req, MAX_LIST_BODY).await;
            let result = match result {
                Ok(resp) if resp.header.status.as_u16() == 200 => Ok(resp.body),
                Ok(resp) => Err(match resp.header.status.as_u16() {
                    404 => OriginError::BucketNotFound,
                    s => classify_status(s),
                }),
                Err(e) => Err(e),
            };
            match result {
                Err(e) if e.is_retryable() && attempt < crate::metadata::HEAD_ATTEMPTS => {
                    tokio::time::sleep(crate::metadata::backoff(attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn head_bucket(&self, bucket: &str) -> Result<(), OriginError> {
        let req = self.signed_request("HEAD", bucket, None, "", &[])?;
        let resp = self.send("head", bucket, req, 64 * 1024).await?;
        match resp.header.status.as_u16() {
            200 => Ok(()),
            404 => Err(OriginError::BucketNotFound),
            s => Err(classify_status(s)),
        }
    }

    fn region(&self) -> &str {
        self.client.region()
    }

    async fn chunk_peer(&self, bucket: &str) -> Result<HttpPeer, OriginError> {
        self.client
            .peer(bucket)
            .await
            .map_err(OriginError::Transient)
    }

    fn chunk_request(
        &self,
        bucket: &str,
        key: &str,
        etag: &str,
        start: u64,
        end: u64,
    ) -> Result<RequestHeader, OriginError> {
        let range = format!("bytes={start}-{end}");
        let if_match = format!("\"{etag}\"");
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
        assert_eq!(o.path_for("bkt", Some("a b/c")), "/bkt/a%20b/c");
        assert_eq!(o.path_for("bkt", None), "/bkt");
        assert_eq!(origin(false).path_for("bkt", None), "/");
        let req = o.chunk_request("bkt", "k", "etag1", 0, 9).unwrap();
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
        let req = v.chunk_request("bkt", "dir//x/", "e", 0, 0).unwrap();
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
        let req = o.chunk_request("b", "k", "e", 0, 1).unwrap();
        assert!(req.headers.get("authorization").is_none());
        assert_eq!(req.headers.get("host").unwrap(), "b.s3.amazonaws.com");
    }
}
