//! What an S3 client asked: the bucket, the key and the operation, from the request line.

use crate::config::EdgeConfig;
use crate::error::S3Error;
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
}

/// Query parameters that never change which object is read: presigned-URL and SDK parameters.
fn is_neutral_param(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("x-amz-") || lower == "x-id" || lower.starts_with("response-")
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
        .unwrap_or("");
    let rest = path.strip_prefix('/').unwrap_or(path);
    let virtual_bucket = edge.virtual_host_suffix.as_deref().and_then(|suffix| {
        host.strip_suffix(suffix)
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
    if bucket.is_empty() {
        return Err(S3Error::new(
            501,
            "NotImplemented",
            "Listing buckets is not served by Orca.",
        ));
    }
    if !edge.buckets.is_empty() && !edge.buckets.contains(&bucket) {
        return Err(S3Error::new(403, "AccessDenied", "Access Denied"));
    }
    let key = decode_strict(raw_key)?;
    if let Some(q) = req.uri.query() {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let name = pair.split_once('=').map_or(pair, |(n, _)| n);
            if !is_neutral_param(name) {
                return Err(S3Error::new(
                    501,
                    "NotImplemented",
                    format!("Orca does not serve the {name:?} sub-resource or parameter."),
                ));
            }
        }
    }
    if key.is_empty() {
        return Err(S3Error::new(
            501,
            "NotImplemented",
            "Bucket operations (listing) are not served yet.",
        ));
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
        assert_eq!(parse(&req("GET", "/", "h"), &e).unwrap_err().status, 501);
    }

    #[test]
    fn presigned_parameters_do_not_change_the_object() {
        let e = edge(None, &[]);
        let p = "/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc&x-id=GetObject";
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
