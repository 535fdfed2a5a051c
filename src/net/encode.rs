//! Percent-encoding as S3 canonicalizes it: one function for paths and one for query values,
//! so the string Orca signs is the string it sends.

/// Percent-encodes an object key for a URL path exactly as S3 canonicalizes it: every byte but
/// `A-Z a-z 0-9 - _ . ~` and `/` is encoded, so spaces, `+`, `%` and unicode survive and runs of
/// `/` stay literal. The same string is signed and sent, so signatures always match.
pub fn encode_key(key: &str) -> String {
    encode_bytes(key, true)
}

/// Percent-encodes a query-string value (everything but the unreserved set).
pub fn encode_query_value(value: &str) -> String {
    encode_bytes(value, false)
}

fn encode_bytes(s: &str, keep_slash: bool) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len() + 8);
    for &b in s.as_bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/');
        if keep {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_encode_as_s3_canonicalizes() {
        assert_eq!(encode_key("a b+c%d~e"), "a%20b%2Bc%25d~e");
        assert_eq!(encode_key("dir//x/"), "dir//x/");
        assert_eq!(encode_key("ünï"), "%C3%BCn%C3%AF");
        assert_eq!(encode_key("../x"), "../x");
        assert_eq!(encode_query_value("a/b c"), "a%2Fb%20c");
        let long = "k".repeat(1024);
        assert_eq!(encode_key(&long), long);
    }
}
