//! Entry points for the fuzzers in `fuzz/` and for the corpus replay in `tests/fuzz_replay.rs`.
//!
//! Each target takes arbitrary bytes, feeds them to one of the parsers that read what a client,
//! a peer, an origin or an operator sends, and panics only when that parser panics or breaks a
//! promise its documentation makes (the promises are asserted here, so the fuzzer looks for
//! wrong answers as well as crashes). Not part of Orca's API: the names may change with the
//! parsers. `docs/reliability.md` lists the targets and how long each has been fuzzed.

use crate::chunk::{parse_range, RangeRequest};
use crate::config::client_keys::{BucketGrant, ClientKey};
use crate::config::{EdgeAuthConfig, EdgeConfig};
use crate::edge::auth::EdgeAuth;
use crate::edge::request::{self, S3Request};
use crate::error::S3Error;
use crate::fill::protocol::FillRequest;
use pingora_http::RequestHeader;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// A fuzz target: a name (the `fuzz/` binary and its corpus directory) and its entry point.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    ("range", range),
    ("s3_request", s3_request),
    ("fill_query", fill_query),
    ("azure_listing", azure_listing),
    ("config", config),
    ("sigv4", sigv4),
];

/// The largest chunk the fill-query target accepts (the default ladder's largest).
const MAX_CHUNK: u64 = 128 << 20;

/// Splits off a leading big-endian `u64` (missing bytes are zero).
fn split_u64(data: &[u8]) -> (u64, &[u8]) {
    let n = data.len().min(8);
    let mut word = [0u8; 8];
    word[8 - n..].copy_from_slice(&data[..n]);
    (u64::from_be_bytes(word), &data[n..])
}

/// An error a parser returned: a client error, a refusal or `501 NotImplemented` (an S3
/// operation Orca does not serve), never another server error.
fn assert_client_error(e: &S3Error, what: &str) {
    assert!(
        ((400..500).contains(&e.status) || e.status == 501) && !e.code.is_empty(),
        "{what}: {} {} is not a client error",
        e.status,
        e.code
    );
}

/// A request header from `METHOD TARGET\nName: value\n...`; `None` where the http crate
/// refuses a part (Pingora's parser would have refused the request before Orca saw it).
fn request_from(data: &[u8]) -> Option<RequestHeader> {
    let mut lines = data.split(|b| *b == b'\n');
    let first = lines.next()?;
    let space = first.iter().position(|b| *b == b' ')?;
    let method = std::str::from_utf8(&first[..space]).ok()?;
    let mut req = RequestHeader::build(method, &first[space + 1..], None).ok()?;
    for line in lines {
        let colon = line.iter().position(|b| *b == b':')?;
        let name = std::str::from_utf8(&line[..colon]).ok()?.to_string();
        let value = line[colon + 1..].trim_ascii();
        let value = http::HeaderValue::from_bytes(value).ok()?;
        req.append_header(name, value).ok()?;
    }
    Some(req)
}

/// `Range` against an object size: the first 8 bytes are the size, the rest the header value.
/// Promise: a partial answer lies inside the object and holds at least one byte.
pub fn range(data: &[u8]) {
    let (size, header) = split_u64(data);
    if let RangeRequest::Partial(r) = parse_range(Some(header), size) {
        assert!(
            r.start <= r.end && r.end < size,
            "range {r:?} outside a {size}-byte object"
        );
    }
}

/// An S3 request line and headers (see [`request_from`]), parsed as the edge does, with and
/// without virtual-hosted buckets (`*.orca.test`). Promise: errors are 4xx with a code; an
/// object request names a non-empty bucket and key.
pub fn s3_request(data: &[u8]) {
    let Some(req) = request_from(data) else {
        return;
    };
    for suffix in [None, Some("orca.test".to_string())] {
        let edge = EdgeConfig {
            virtual_host_suffix: suffix,
            buckets: Vec::new(),
            auth: EdgeAuthConfig::default(),
        };
        match request::parse(&req, &edge) {
            Ok(S3Request::GetObject { bucket, key } | S3Request::HeadObject { bucket, key }) => {
                assert!(!bucket.is_empty() && !key.is_empty(), "{bucket:?}/{key:?}");
            }
            Ok(
                S3Request::ListObjects { bucket, .. }
                | S3Request::HeadBucket { bucket }
                | S3Request::GetBucketLocation { bucket },
            ) => assert!(!bucket.is_empty()),
            Ok(S3Request::ListBuckets) => {}
            Err(e) => assert_client_error(&e, "edge request"),
        }
    }
    if let Err(e) = request::query_params(&req) {
        assert_client_error(&e, "query");
    }
}

/// A fill query (the part after `?`). Promise: errors are 400s; an accepted request names a
/// chunk inside its object no larger than the cap, and encodes back to a query that decodes
/// to the same request.
pub fn fill_query(data: &[u8]) {
    let query = String::from_utf8_lossy(data);
    match FillRequest::decode(&query, "o", MAX_CHUNK) {
        Ok(fill) => {
            let c = &fill.chunk;
            assert!(c.id.chunk_size <= MAX_CHUNK && c.len > 0 && c.len <= c.id.chunk_size);
            assert!(c.id.index * c.id.chunk_size < c.version.size);
            let again = fill.path_and_query();
            let (_, q) = again.split_once('?').expect("a fill path has a query");
            let back = FillRequest::decode(q, "o", MAX_CHUNK).expect("own encoding decodes");
            assert_eq!(back, fill, "fill query does not round-trip");
        }
        Err(e) => assert_eq!(e.status, 400, "{}", e.message),
    }
}

/// An Azure List Blobs response body. Promise: no panic, whatever the document.
pub fn azure_listing(data: &[u8]) {
    let _ = crate::origin::azureblob::list::parse_enumeration(data);
}

/// Orca's configuration file. Promise: no panic; an error names something.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let no_env = |_: &str| None;
    if let Err(e) = crate::config::from_yaml_str_with_env(text, &no_env) {
        assert!(!e.to_string().is_empty());
    }
}

/// A request as [`s3_request`] reads it, checked by the edge's SigV4 verifier with two keys
/// (one of them AWS's documented example key) at a fixed time. Promise: errors are 4xx.
pub fn sigv4(data: &[u8]) {
    static AUTH: OnceLock<EdgeAuth> = OnceLock::new();
    let auth = AUTH.get_or_init(|| {
        EdgeAuth::new(&EdgeAuthConfig {
            required: true,
            credentials_file: Some("/nonexistent/orca-fuzz-keys.yaml".into()),
            keys: vec![
                ClientKey {
                    access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
                    secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
                    buckets: BucketGrant::Only(vec!["examplebucket".into()]),
                },
                ClientKey {
                    access_key_id: "AKIDFUZZ".into(),
                    secret_access_key: "fuzz".into(),
                    buckets: BucketGrant::Any,
                },
            ],
        })
    });
    let Some(req) = request_from(data) else {
        return;
    };
    // 2013-05-24T00:00:00Z, the date of AWS's signature examples.
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_369_353_600);
    if let Err(e) = auth.check_at(&req, now) {
        assert_client_error(&e, "sigv4");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_take_empty_and_simple_inputs() {
        for (_, target) in TARGETS {
            target(b"");
            target(b"GET /b/k HTTP/1.1\nHost: b.orca.test");
        }
        range(b"\0\0\0\0\0\0\0\x10bytes=0-");
        fill_query(b"origin=o&bucket=b&key=k&etag=e&chunk_size=4&index=1&object_size=6");
    }
}
