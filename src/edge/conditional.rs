//! Client conditionals (`If-Match`, `If-None-Match`, `If-Modified-Since`,
//! `If-Unmodified-Since`, `If-Range`), evaluated as S3 does against the ETag and
//! Last-Modified that Orca pinned for the object. No origin request is involved: the aws CLI's
//! CRT client sends `If-Match` on every ranged part, and those must be cache hits.

use crate::origin::unquote_etag;
use http::HeaderMap;
use std::time::SystemTime;

/// What the preconditions allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Serve. `use_range` is false when an `If-Range` did not match: the whole object, 200.
    Proceed {
        /// Honour the `Range` header.
        use_range: bool,
    },
    /// 304 Not Modified (GET and HEAD).
    NotModified,
    /// 412 PreconditionFailed.
    Failed,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Whether an entity-tag list (`"a", "b"` or `*`) names `etag`.
fn etag_list_matches(list: &str, etag: &str) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|t| t == "*" || unquote_etag(t) == etag)
}

fn date(headers: &HeaderMap, name: &str) -> Option<SystemTime> {
    header(headers, name).and_then(|v| httpdate::parse_http_date(v).ok())
}

/// Evaluates the client's preconditions (RFC 9110 order, as S3 applies it): `If-Match`, else
/// `If-Unmodified-Since`; then `If-None-Match`, else `If-Modified-Since`; then `If-Range`.
/// Dates that do not parse are ignored, as S3 ignores them.
pub fn evaluate(headers: &HeaderMap, etag: &str, last_modified: Option<SystemTime>) -> Outcome {
    if let Some(list) = header(headers, "if-match") {
        if !etag_list_matches(list, etag) {
            return Outcome::Failed;
        }
    } else if let (Some(since), Some(lm)) = (date(headers, "if-unmodified-since"), last_modified) {
        if lm > since {
            return Outcome::Failed;
        }
    }
    if let Some(list) = header(headers, "if-none-match") {
        if etag_list_matches(list, etag) {
            return Outcome::NotModified;
        }
    } else if let (Some(since), Some(lm)) = (date(headers, "if-modified-since"), last_modified) {
        if lm <= since {
            return Outcome::NotModified;
        }
    }
    let use_range = match header(headers, "if-range") {
        None => true,
        Some(v) if v.starts_with('"') || v.starts_with("W/") => unquote_etag(v) == etag,
        Some(v) => match (httpdate::parse_http_date(v).ok(), last_modified) {
            (Some(d), Some(lm)) => d == lm,
            _ => false,
        },
    };
    Outcome::Proceed { use_range }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const LM: &str = "Wed, 21 Oct 2026 07:28:00 GMT";
    const BEFORE: &str = "Tue, 20 Oct 2026 07:28:00 GMT";
    const AFTER: &str = "Thu, 22 Oct 2026 07:28:00 GMT";

    fn eval(pairs: &[(&str, &str)]) -> Outcome {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        evaluate(&h, "abc", httpdate::parse_http_date(LM).ok())
    }

    const GO: Outcome = Outcome::Proceed { use_range: true };

    #[test]
    fn if_match() {
        assert_eq!(eval(&[("if-match", "\"abc\"")]), GO);
        assert_eq!(eval(&[("if-match", "\"x\", \"abc\"")]), GO);
        assert_eq!(eval(&[("if-match", "*")]), GO);
        assert_eq!(eval(&[("if-match", "\"x\"")]), Outcome::Failed);
        // If-Match wins over If-Unmodified-Since.
        assert_eq!(
            eval(&[("if-match", "\"abc\""), ("if-unmodified-since", BEFORE)]),
            GO
        );
    }

    #[test]
    fn if_unmodified_since() {
        assert_eq!(eval(&[("if-unmodified-since", AFTER)]), GO);
        assert_eq!(eval(&[("if-unmodified-since", LM)]), GO);
        assert_eq!(eval(&[("if-unmodified-since", BEFORE)]), Outcome::Failed);
        assert_eq!(eval(&[("if-unmodified-since", "garbage")]), GO);
    }

    #[test]
    fn if_none_match_and_if_modified_since() {
        assert_eq!(eval(&[("if-none-match", "\"abc\"")]), Outcome::NotModified);
        assert_eq!(
            eval(&[("if-none-match", "W/\"abc\"")]),
            Outcome::NotModified
        );
        assert_eq!(eval(&[("if-none-match", "*")]), Outcome::NotModified);
        assert_eq!(eval(&[("if-none-match", "\"x\"")]), GO);
        assert_eq!(eval(&[("if-modified-since", LM)]), Outcome::NotModified);
        assert_eq!(eval(&[("if-modified-since", AFTER)]), Outcome::NotModified);
        assert_eq!(eval(&[("if-modified-since", BEFORE)]), GO);
        // If-None-Match decides alone when both are present.
        assert_eq!(
            eval(&[("if-none-match", "\"x\""), ("if-modified-since", AFTER)]),
            GO
        );
        // A failed If-Match is a 412 even when If-None-Match would say 304.
        assert_eq!(
            eval(&[("if-match", "\"x\""), ("if-none-match", "\"abc\"")]),
            Outcome::Failed
        );
    }

    #[test]
    fn if_range() {
        assert_eq!(eval(&[("if-range", "\"abc\"")]), GO);
        assert_eq!(
            eval(&[("if-range", "\"x\"")]),
            Outcome::Proceed { use_range: false }
        );
        assert_eq!(eval(&[("if-range", LM)]), GO);
        assert_eq!(
            eval(&[("if-range", AFTER)]),
            Outcome::Proceed { use_range: false }
        );
        let _ = Duration::ZERO;
    }
}
