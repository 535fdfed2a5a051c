//! The client's `Range` header, as S3 reads it: one `bytes=` range or nothing.

/// An inclusive byte range `[start, end]` inside an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive.
    pub end: u64,
}

impl ByteRange {
    /// Number of bytes in the range.
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// Always false: a `ByteRange` holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// What a `Range` header asks of an object of a known size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: serve the whole object with 200. S3 ignores several ranges, other
    /// units and syntax it cannot read, and so do we.
    Whole,
    /// A satisfiable single range: 206.
    Partial(ByteRange),
    /// A well-formed range that cannot be satisfied: 416 with `Content-Range: bytes */SIZE`.
    Unsatisfiable,
}

/// Interprets a `Range` header value against an object of `size` bytes.
///
/// `bytes=a-b`, `bytes=a-` and `bytes=-n` are understood; an end past the object is clamped,
/// a suffix longer than the object is the whole object (as 206). A start past the end, a
/// zero-length suffix or any range on a zero-byte object is unsatisfiable. Anything else
/// (several ranges, `bytes=10-5`, other units, garbage) is ignored.
pub fn parse_range(header: Option<&[u8]>, size: u64) -> RangeRequest {
    let Some(raw) = header else {
        return RangeRequest::Whole;
    };
    let Ok(text) = std::str::from_utf8(raw) else {
        return RangeRequest::Whole;
    };
    let text = text.trim();
    let Some(spec) = text
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case("bytes="))
        .map(|_| text[6..].trim())
    else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeRequest::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if a.is_empty() {
        // Suffix: the last n bytes.
        if !digits(b) {
            return RangeRequest::Whole;
        }
        let Ok(n) = b.parse::<u64>() else {
            // More digits than u64 holds: longer than any object.
            return if size == 0 {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial(ByteRange {
                    start: 0,
                    end: size - 1,
                })
            };
        };
        if n == 0 || size == 0 {
            return RangeRequest::Unsatisfiable;
        }
        return RangeRequest::Partial(ByteRange {
            start: size.saturating_sub(n),
            end: size - 1,
        });
    }
    if !digits(a) || !(b.is_empty() || digits(b)) {
        return RangeRequest::Whole;
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeRequest::Unsatisfiable;
    };
    let end = if b.is_empty() {
        u64::MAX
    } else {
        // More digits than u64 holds: past any object's end.
        b.parse::<u64>().unwrap_or(u64::MAX)
    };
    if end < start {
        return RangeRequest::Whole;
    }
    if start >= size {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Partial(ByteRange {
        start,
        end: end.min(size - 1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(h: &str, size: u64) -> RangeRequest {
        parse_range(Some(h.as_bytes()), size)
    }
    fn part(start: u64, end: u64) -> RangeRequest {
        RangeRequest::Partial(ByteRange { start, end })
    }

    #[test]
    fn single_ranges() {
        assert_eq!(p("bytes=0-0", 10), part(0, 0));
        assert_eq!(p("bytes=9-9", 10), part(9, 9));
        assert_eq!(p("bytes=0-99", 10), part(0, 9));
        assert_eq!(p("bytes=3-", 10), part(3, 9));
        assert_eq!(p("bytes=-3", 10), part(7, 9));
        assert_eq!(p("bytes=-30", 10), part(0, 9));
        assert_eq!(p("Bytes= 2-4 ", 10), part(2, 4));
        assert_eq!(p("bytes=0-99999999999999999999999", 10), part(0, 9));
        assert_eq!(p("bytes=-99999999999999999999999", 10), part(0, 9));
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(p("bytes=10-", 10), RangeRequest::Unsatisfiable);
        assert_eq!(p("bytes=10-20", 10), RangeRequest::Unsatisfiable);
        assert_eq!(p("bytes=-0", 10), RangeRequest::Unsatisfiable);
        assert_eq!(p("bytes=0-0", 0), RangeRequest::Unsatisfiable);
        assert_eq!(p("bytes=-5", 0), RangeRequest::Unsatisfiable);
        assert_eq!(
            p("bytes=99999999999999999999999-", 10),
            RangeRequest::Unsatisfiable
        );
    }

    #[test]
    fn ignored_as_s3_does() {
        assert_eq!(parse_range(None, 10), RangeRequest::Whole);
        assert_eq!(p("bytes=0-1,3-4", 10), RangeRequest::Whole);
        assert_eq!(p("items=0-1", 10), RangeRequest::Whole);
        assert_eq!(p("bytes=5-2", 10), RangeRequest::Whole);
        assert_eq!(p("bytes=abc", 10), RangeRequest::Whole);
        assert_eq!(p("bytes=-", 10), RangeRequest::Whole);
        assert_eq!(p("bytes=1-x", 10), RangeRequest::Whole);
        assert_eq!(p("bytes=+1-2", 10), RangeRequest::Whole);
        assert_eq!(p("", 10), RangeRequest::Whole);
        assert_eq!(parse_range(Some(&[0xff, 0xfe]), 10), RangeRequest::Whole);
    }
}
