//! What an S3 client asked: the bucket, the key and the operation, from the request line.

use crate::config::EdgeConfig;
use crate::error::S3Error;
use crate::origin::ListRequest;
use http::Method;
use percent_encoding::percent_decode;
use pingora_http::RequestHeader;

/// An edge request, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum S3Request {
    /// `GET /{bucket}/{key}`.
    GetObject {
        /// Bucket.
        bucket: String,
        /// Key, decoded.
        key: String,
    },
    /// `HEAD /{bucket}/{key}`.
    HeadObject {
        /// Bucket.
        bucket: String,
        /// Key, decoded.
        key: String,
    },
    /// `GET /{bucket}` with listing parameters (v1 or v2).
    ListObjects {
        /// Bucket.
        bucket: String,
        /// What to list.
        request: ListRequest,
    },
    /// `HEAD /{bucket}`.
    HeadBucket {
        /// Bucket.
        bucket: String,
    },
    /// `GET /{bucket}?location`.
    GetBucketLocation {
        /// Bucket.
        bucket: String,
    },
    /// `GET /`.
    ListBuckets,
}

/// Query parameters that never change what is read: presigned-URL parameters (SigV4's
/// `X-Amz-*`, and SigV2's `AWSAccessKeyId`, `Signature`, `Expires`, which boto3 still makes by
/// default for us-east-1) and SDK markers.
fn is_neutral_param(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("x-amz-")
        || matches!(
            lower.as_str(),
            "x-id" | "awsaccesskeyid" | "signature" | "expires"
        )
}

/// `response-*` overrides of response headers (GetObject / HeadObject).
pub const RESPONSE_OVERRIDES: [(&str, &str); 6] = [
    ("response-content-type", "content-type"),
    ("response-content-language", "content-language"),
    ("response-expires", "expires"),
    ("response-cache-control", "cache-control"),
    ("response-content-disposition", "content-disposition"),
    ("response-content-encoding", "content-encoding"),
];

/// The decoded query parameters of a request, in order.
pub fn query_params(req: &RequestHeader) -> Result<Vec<(String, String)>, S3Error> {
    let mut out = Vec::new();
    if let Some(q) = req.uri.query() {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            out.push((decode_strict(name)?, decode_strict(value)?));
        }
    }
    Ok(out)
}

fn not_implemented(what: &str) -> S3Error {
    S3Error::new(
        501,
        "NotImplemented",
        format!("Orca does not serve {what}; it is a read-only cache of objects and listings."),
    )
}

/// Builds a listing from a bucket GET's parameters; anything else is not served.
fn list_request(params: &[(String, String)]) -> Result<ListRequest, S3Error> {
    let mut r = ListRequest::default();
    let invalid = |m: String| S3Error::new(400, "InvalidArgument", m);
    for (name, value) in params {
        match name.as_str() {
            "list-type" if value == "2" => r.v2 = true,
            "list-type" => return Err(invalid(format!("list-type {value:?} is not 2"))),
            "prefix" => r.prefix = Some(value.clone()),
            "delimiter" => r.delimiter = Some(value.clone()),
            "max-keys" => {
                r.max_keys = Some(value.parse().map_err(|_| {
                    invalid(format!(
                        "max-keys must be a non-negative integer, got {value:?}"
                    ))
                })?)
            }
            "continuation-token" => r.continuation_token = Some(value.clone()),
            "start-after" => r.start_after = Some(value.clone()),
            "fetch-owner" => r.fetch_owner = Some(value == "true"),
            "marker" => r.marker = Some(value.clone()),
            "encoding-type" if value == "url" => r.encoding_url = true,
            "encoding-type" => return Err(invalid(format!("encoding-type {value:?} is not url"))),
            n if is_neutral_param(n) => {}
            other => return Err(not_implemented(&format!("the {other:?} sub-resource"))),
        }
    }
    Ok(r)
}

/// Decodes a percent-encoded path piece strictly: a `%` not followed by two hex digits, or
/// bytes that are not UTF-8, are an `InvalidURI`, never a guess at another key.
pub fn decode_strict(raw: &str) -> Result<String, S3Error> {
    let invalid = || S3Error::new(400, "InvalidURI", "Couldn't parse the specified URI.");
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let ok = bytes.len() > i + 2
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit();
            if !ok {
                return Err(invalid());
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    percent_decode(bytes)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| invalid())
}

/// Parses a client request against the edge configuration.
pub fn parse(req: &RequestHeader, edge: &EdgeConfig) -> Result<S3Request, S3Error> {
    let method = req.method.clone();
    if method != Method::GET && method != Method::HEAD {
        return Err(S3Error::method_not_allowed());
    }
    let path = req.uri.path();
    // Host names are case-insensitive; bucket names are lowercase.
    let host = req
        .headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(|h| {
            h.rsplit_once(':').map_or(h, |(name, port)| {
                if port.bytes().all(|c| c.is_ascii_digit()) {
                    name
                } else {
                    h
                }
            })
        })
        .unwrap_or("")
        .to_ascii_lowercase();
    let rest = path.strip_prefix('/').unwrap_or(path);
    let virtual_bucket = edge.virtual_host_suffix.as_deref().and_then(|suffix| {
        host.strip_suffix(suffix.to_ascii_lowercase().as_str())
            .and_then(|b| b.strip_suffix('.'))
            .filter(|b| !b.is_empty())
    });
    let (bucket, raw_key) = match virtual_bucket {
        Some(b) => (b.to_string(), rest),
        None => {
            let (b, k) = rest.split_once('/').unwrap_or((rest, ""));
            (decode_strict(b)?, k)
        }
    };
    let params = query_params(req)?;
    if bucket.is_empty() {
        return match method {
            Method::GET => Ok(S3Request::ListBuckets),
            _ => Err(S3Error::method_not_allowed()),
        };
    }
    if !edge.buckets.is_empty() && !edge.buckets.contains(&bucket) {
        return Err(S3Error::new(403, "AccessDenied", "Access Denied"));
    }
    let key = decode_strict(raw_key)?;
    if key.is_empty() {
        if method == Method::HEAD {
            return Ok(S3Request::HeadBucket { bucket });
        }
        if params.iter().any(|(n, _)| n == "location") {
            return Ok(S3Request::GetBucketLocation { bucket });
        }
        let request = list_request(&params)?;
        return Ok(S3Request::ListObjects { bucket, request });
    }
    for (name, value) in &params {
        let overriding = RESPONSE_OVERRIDES.iter().any(|(p, _)| p == name);
        // The "null" version of an unversioned object is the object itself.
        let null_version = name == "versionId" && value == "null";
        if !overriding && !null_version && !is_neutral_param(name) {
            return Err(not_implemented(&format!(
                "the {name:?} sub-resource or parameter"
            )));
        }
    }
    Ok(if method == Method::HEAD {
        S3Request::HeadObject { bucket, key }
    } else {
        S3Request::GetObject { bucket, key }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, host: &str) -> RequestHeader {
        let mut r = RequestHeader::build(method, path.as_bytes(), None).unwrap();
        r.insert_header("host", host).unwrap();
        r
    }

    fn edge(suffix: Option<&str>, buckets: &[&str]) -> EdgeConfig {
        EdgeConfig {
            virtual_host_suffix: suffix.map(str::to_string),
            buckets: buckets.iter().map(|b| b.to_string()).collect(),
            auth: Default::default(),
        }
    }

    fn get(bucket: &str, key: &str) -> S3Request {
        S3Request::GetObject {
            bucket: bucket.into(),
            key: key.into(),
        }
    }

    #[test]
    fn path_style_keys_decode_exactly() {
        let e = edge(None, &[]);
        assert_eq!(
            parse(&req("GET", "/b/a%20b%2Bc", "h"), &e),
            Ok(get("b", "a b+c"))
        );
        assert_eq!(parse(&req("GET", "/b/a+b", "h"), &e), Ok(get("b", "a+b")));
        assert_eq!(
            parse(&req("GET", "/b/d//x/", "h"), &e),
            Ok(get("b", "d//x/"))
        );
        assert_eq!(parse(&req("GET", "/b/a%2Fb", "h"), &e), Ok(get("b", "a/b")));
        assert_eq!(parse(&req("GET", "/b/../x", "h"), &e), Ok(get("b", "../x")));
        assert_eq!(
            parse(&req("HEAD", "/b/%C3%BC", "h"), &e),
            Ok(S3Request::HeadObject {
                bucket: "b".into(),
                key: "ü".into()
            })
        );
    }

    #[test]
    fn bad_input_gets_the_right_error() {
        let e = edge(None, &[]);
        assert_eq!(
            parse(&req("GET", "/b/a%zz", "h"), &e).unwrap_err().code,
            "InvalidURI"
        );
        assert_eq!(
            parse(&req("GET", "/b/a%C3", "h"), &e).unwrap_err().code,
            "InvalidURI"
        );
        assert_eq!(
            parse(&req("GET", "/b/a%", "h"), &e).unwrap_err().code,
            "InvalidURI"
        );
        assert_eq!(parse(&req("PUT", "/b/k", "h"), &e).unwrap_err().status, 405);
        assert_eq!(
            parse(&req("DELETE", "/b/k", "h"), &e).unwrap_err().status,
            405
        );
        assert_eq!(
            parse(&req("POST", "/b/k", "h"), &e).unwrap_err().status,
            405
        );
        assert_eq!(
            parse(&req("GET", "/b/k?acl", "h"), &e).unwrap_err().status,
            501
        );
        assert_eq!(
            parse(&req("GET", "/b/k?versionId=3", "h"), &e)
                .unwrap_err()
                .status,
            501
        );
        assert_eq!(parse(&req("GET", "/", "h"), &e), Ok(S3Request::ListBuckets));
        assert_eq!(
            parse(&req("GET", "/b?acl", "h"), &e).unwrap_err().status,
            501
        );
        assert_eq!(
            parse(&req("GET", "/b?versions", "h"), &e)
                .unwrap_err()
                .status,
            501
        );
        assert_eq!(
            parse(&req("GET", "/b?uploads", "h"), &e)
                .unwrap_err()
                .status,
            501
        );
        assert_eq!(
            parse(&req("GET", "/b?max-keys=x", "h"), &e)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            parse(&req("GET", "/b?prefix=%zz", "h"), &e)
                .unwrap_err()
                .code,
            "InvalidURI"
        );
    }

    #[test]
    fn bucket_operations() {
        let e = edge(None, &[]);
        assert_eq!(
            parse(&req("HEAD", "/b", "h"), &e),
            Ok(S3Request::HeadBucket { bucket: "b".into() })
        );
        assert_eq!(
            parse(&req("GET", "/b?location", "h"), &e),
            Ok(S3Request::GetBucketLocation { bucket: "b".into() })
        );
        let p = "/b/?list-type=2&prefix=a%20b%2F&delimiter=%2F&max-keys=3&continuation-token=t%2B&start-after=x&fetch-owner=true&encoding-type=url";
        let Ok(S3Request::ListObjects { bucket, request }) = parse(&req("GET", p, "h"), &e) else {
            panic!("not a listing");
        };
        assert_eq!(bucket, "b");
        assert!(request.v2 && request.encoding_url);
        assert_eq!(request.prefix.as_deref(), Some("a b/"));
        assert_eq!(request.delimiter.as_deref(), Some("/"));
        assert_eq!(request.max_keys, Some(3));
        assert_eq!(request.continuation_token.as_deref(), Some("t+"));
        assert_eq!(request.fetch_owner, Some(true));
        let Ok(S3Request::ListObjects { request, .. }) =
            parse(&req("GET", "/b?marker=m&prefix=p", "h"), &e)
        else {
            panic!("not a listing");
        };
        assert!(!request.v2);
        assert_eq!(request.marker.as_deref(), Some("m"));
    }

    #[test]
    fn presigned_parameters_do_not_change_the_object() {
        let e = edge(None, &[]);
        let v2 = "/b/k?AWSAccessKeyId=AK&Signature=abc%3D&Expires=1700000000&versionId=null";
        assert_eq!(parse(&req("GET", v2, "h"), &e), Ok(get("b", "k")));
        let p = "/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc&x-id=GetObject&response-content-type=text%2Fplain";
        assert_eq!(parse(&req("GET", p, "h"), &e), Ok(get("b", "k")));
    }

    #[test]
    fn virtual_hosted_and_allowlist() {
        let e = edge(Some("orca.example.com"), &["b"]);
        assert_eq!(
            parse(&req("GET", "/dir/k", "b.orca.example.com:8443"), &e),
            Ok(get("b", "dir/k"))
        );
        assert_eq!(
            parse(&req("GET", "/b/k", "localhost:8443"), &e),
            Ok(get("b", "k"))
        );
        assert_eq!(
            parse(&req("GET", "/other/k", "localhost"), &e)
                .unwrap_err()
                .code,
            "AccessDenied"
        );
    }
}
