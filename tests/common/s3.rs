//! A tiny S3 client for seeding a test origin (moto) over plain HTTP, path-style. Requests carry a
//! dummy SigV4-shaped `Authorization` (access key `test`, the one Orca's tests sign with): moto does
//! not check signatures by default, but it answers 403 to anonymous GET / HEAD. Failures panic
//! with the server's answer: these are test fixtures, not code under test.
//!
//! Keys are percent-encoded per byte (see [`encode_key`]). Keys with a `.` or `..` path segment
//! cannot be sent through reqwest (its URL parser removes dot segments); use
//! [`super::httpc::raw_request`] for those.

use super::httpc::{http_client, send, HttpError, HttpResponse};

/// Percent-encodes an S3 key for a URL path the way S3 (SigV4) wants it: every byte except
/// `A-Z a-z 0-9 - _ . ~` and `/` becomes `%XX` (uppercase hex), so spaces, `+`, `%`, UTF-8, `//`
/// and a trailing `/` survive.
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() * 3);
    for &b in key.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `endpoint/bucket/encoded-key` (path-style). `endpoint` may end with `/`.
pub fn object_url(endpoint: &str, bucket: &str, key: &str) -> String {
    format!(
        "{}/{}/{}",
        endpoint.trim_end_matches('/'),
        bucket,
        encode_key(key)
    )
}

/// `endpoint/bucket`.
pub fn bucket_url(endpoint: &str, bucket: &str) -> String {
    format!("{}/{}", endpoint.trim_end_matches('/'), bucket)
}

/// What a HEAD of an object reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHead {
    /// Content-Length.
    pub size: u64,
    /// ETag as sent (quoted).
    pub etag: String,
    /// Last-Modified, if sent.
    pub last_modified: Option<String>,
    /// Content-Type, if sent.
    pub content_type: Option<String>,
}

/// A SigV4-shaped `Authorization` value moto accepts (it does not verify signatures by default).
pub const DUMMY_AUTHORIZATION: &str = "AWS4-HMAC-SHA256 \
    Credential=test/20250101/us-east-1/s3/aws4_request, \
    SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=00";

/// Adds [`DUMMY_AUTHORIZATION`] and the `x-amz-date` / `x-amz-content-sha256` headers that go with
/// it, so moto treats the request as authenticated (as account 123456789012).
pub fn with_dummy_auth(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    request
        .header("Authorization", DUMMY_AUTHORIZATION)
        .header("x-amz-date", "20250101T000000Z")
        .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
}

/// `GET url` straight to an S3 server (moto, or a [`super::FaultProxy`] in front of it) with the
/// dummy authorization and an optional Range.
pub async fn s3_get(url: &str, range: Option<&str>) -> Result<HttpResponse, HttpError> {
    let mut request = with_dummy_auth(http_client().get(url));
    if let Some(range) = range {
        request = request.header("Range", range);
    }
    send(request).await
}

/// `HEAD url` straight to an S3 server with the dummy authorization.
pub async fn s3_head(url: &str) -> Result<HttpResponse, HttpError> {
    send(with_dummy_auth(http_client().head(url))).await
}

async fn call(
    what: &str,
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> HttpResponse {
    let mut request = with_dummy_auth(http_client().request(method, url));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    match send(request).await {
        Ok(response) => response,
        Err(e) => panic!("{what} {url}: {e}"),
    }
}

fn expect_success(what: &str, url: &str, response: &HttpResponse) {
    assert!(
        (200..300).contains(&response.status),
        "{what} {url}: status {} body {}",
        response.status,
        response.text()
    );
}

/// Creates `bucket` (in us-east-1). An already existing bucket owned by us is fine.
pub async fn create_bucket(endpoint: &str, bucket: &str) {
    let url = bucket_url(endpoint, bucket);
    let response = call("create bucket", reqwest::Method::PUT, &url, &[], None).await;
    if response.status == 409 && response.text().contains("BucketAlreadyOwnedByYou") {
        return;
    }
    expect_success("create bucket", &url, &response);
}

/// Enables (`true`) or suspends (`false`) versioning on `bucket`.
pub async fn put_bucket_versioning(endpoint: &str, bucket: &str, enabled: bool) {
    let url = format!("{}?versioning", bucket_url(endpoint, bucket));
    let status = if enabled { "Enabled" } else { "Suspended" };
    let body = format!(
        "<VersioningConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
         <Status>{status}</Status></VersioningConfiguration>"
    );
    let response = call(
        "put bucket versioning",
        reqwest::Method::PUT,
        &url,
        &[],
        Some(body.into_bytes()),
    )
    .await;
    expect_success("put bucket versioning", &url, &response);
}

/// Puts an object and returns its ETag as sent (quoted).
pub async fn put_object(
    endpoint: &str,
    bucket: &str,
    key: &str,
    data: impl Into<Vec<u8>>,
) -> String {
    put_object_with(endpoint, bucket, key, data, &[]).await
}

/// Puts an object with extra headers (e.g. `Content-Type`) and returns its ETag (quoted).
pub async fn put_object_with(
    endpoint: &str,
    bucket: &str,
    key: &str,
    data: impl Into<Vec<u8>>,
    headers: &[(&str, &str)],
) -> String {
    let url = object_url(endpoint, bucket, key);
    let response = call(
        "put object",
        reqwest::Method::PUT,
        &url,
        headers,
        Some(data.into()),
    )
    .await;
    expect_success("put object", &url, &response);
    response
        .header("etag")
        .unwrap_or_else(|| panic!("put object {url}: no ETag in the answer"))
        .to_string()
}

/// Deletes an object (S3 answers 204 also when it did not exist).
pub async fn delete_object(endpoint: &str, bucket: &str, key: &str) {
    let url = object_url(endpoint, bucket, key);
    let response = call("delete object", reqwest::Method::DELETE, &url, &[], None).await;
    expect_success("delete object", &url, &response);
}

/// HEADs an object: `None` on 404, panics on any other non-2xx.
pub async fn head_object(endpoint: &str, bucket: &str, key: &str) -> Option<ObjectHead> {
    let url = object_url(endpoint, bucket, key);
    let response = call("head object", reqwest::Method::HEAD, &url, &[], None).await;
    if response.status == 404 {
        return None;
    }
    expect_success("head object", &url, &response);
    let size = response
        .header("content-length")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("head object {url}: no Content-Length"));
    Some(ObjectHead {
        size,
        etag: response.header("etag").unwrap_or_default().to_string(),
        last_modified: response.header("last-modified").map(str::to_string),
        content_type: response.header("content-type").map(str::to_string),
    })
}

/// GETs a whole object: `None` on 404, panics on any other non-2xx or a short body.
pub async fn get_object(endpoint: &str, bucket: &str, key: &str) -> Option<Vec<u8>> {
    let url = object_url(endpoint, bucket, key);
    let response = call("get object", reqwest::Method::GET, &url, &[], None).await;
    if response.status == 404 {
        return None;
    }
    expect_success("get object", &url, &response);
    Some(response.body)
}
