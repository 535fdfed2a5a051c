//! Shared Key authorization of Azure Blob Storage requests.
//!
//! Written here rather than taken from a crate: the official `azure_storage_blob` 1.x signs only
//! with Entra ID tokens or SAS URLs, and the old `azure_storage_blobs` (which had Shared Key) is
//! deprecated. `azure_core` still gives the HMAC-SHA256 and base64; this module builds the
//! string-to-sign of
//! <https://learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key> (the
//! 2009-09-19-and-later form) around it.
//!
//! The string-to-sign is
//!
//! ```text
//! VERB \n Content-Encoding \n Content-Language \n Content-Length \n Content-MD5 \n
//! Content-Type \n Date \n If-Modified-Since \n If-Match \n If-None-Match \n
//! If-Unmodified-Since \n Range \n CanonicalizedHeaders CanonicalizedResource
//! ```
//!
//! - Content-Length is empty when it is 0 or absent (every GET and HEAD).
//! - CanonicalizedHeaders: every `x-ms-*` header, name lowercased, sorted by name, each
//!   `name:value\n` with the value's runs of whitespace folded to one space.
//! - CanonicalizedResource: `/account` followed by the request path *as sent* (percent-encoded),
//!   then `\nname:value` for each query parameter, names lowercased and sorted, values decoded.
//!   With a path-style endpoint that itself has a path (Azurite:
//!   `http://127.0.0.1:10000/devstoreaccount1`) the path starts with the account, so the
//!   account appears twice: `/devstoreaccount1/devstoreaccount1/container/blob`.

use azure_core::credentials::Secret;
use std::fmt;

/// The `x-ms-version` Orca speaks: the newest Azurite 3.35 accepts, and one Azure serves.
pub const API_VERSION: &str = "2025-11-05";

/// The standard headers that have their own line in the string-to-sign, in order.
const STANDARD_HEADERS: [&str; 11] = [
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
];

/// An account name and its shared key; signs requests. The key is never printed.
#[derive(Clone)]
pub struct SharedKey {
    account: String,
    key: Secret,
}

impl fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedKey({}, <redacted>)", self.account)
    }
}

/// Why a key cannot sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The account key is not base64 (as the portal and Azurite give it).
    #[error("the account key is not valid base64")]
    BadKey,
}

impl SharedKey {
    /// A signer for `account` with its base64 key (as the Azure portal shows it). Fails when the
    /// key is not base64, so a typo is caught at start-up rather than on every request.
    pub fn new(account: &str, key_base64: &str) -> Result<Self, SignError> {
        let key = key_base64.trim();
        match azure_core::base64::decode(key) {
            Ok(bytes) if !bytes.is_empty() => Ok(Self {
                account: account.to_string(),
                key: Secret::new(key.to_string()),
            }),
            _ => Err(SignError::BadKey),
        }
    }

    /// The account name.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The string-to-sign of a request.
    ///
    /// `path` is the path exactly as sent (percent-encoded, starting with `/`), `query` the
    /// query parameters with *decoded* values, `headers` every header that will be sent (names in
    /// any case; `Host` and other non-`x-ms-` headers outside the standard list are ignored).
    pub fn string_to_sign(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> String {
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim())
                .unwrap_or("")
        };
        let mut s = String::with_capacity(256);
        s.push_str(&method.to_ascii_uppercase());
        s.push('\n');
        for name in STANDARD_HEADERS {
            let value = find(name);
            // Since version 2015-02-21 a zero Content-Length is signed as an empty string.
            if !(name == "content-length" && value == "0") {
                s.push_str(value);
            }
            s.push('\n');
        }

        let mut ms: Vec<(String, String)> = headers
            .iter()
            .filter(|(n, _)| n.len() > 5 && n[..5].eq_ignore_ascii_case("x-ms-"))
            .map(|(n, v)| (n.to_ascii_lowercase(), fold_whitespace(v)))
            .collect();
        ms.sort();
        for (name, value) in ms {
            s.push_str(&name);
            s.push(':');
            s.push_str(&value);
            s.push('\n');
        }

        s.push('/');
        s.push_str(&self.account);
        s.push_str(path);
        let mut params: Vec<(String, &str)> = query
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), *v))
            .collect();
        params.sort();
        let mut i = 0;
        while i < params.len() {
            // A parameter given more than once is signed once, its values sorted and joined.
            let name = params[i].0.clone();
            let mut values = Vec::new();
            while i < params.len() && params[i].0 == name {
                values.push(params[i].1);
                i += 1;
            }
            s.push('\n');
            s.push_str(&name);
            s.push(':');
            s.push_str(&values.join(","));
        }
        s
    }

    /// The `Authorization` header value: `SharedKey account:base64(hmac-sha256(key, sts))`.
    pub fn authorization(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Result<String, SignError> {
        let signature = self.sign(&self.string_to_sign(method, path, query, headers))?;
        Ok(format!("SharedKey {}:{signature}", self.account))
    }

    /// `base64(hmac-sha256(key, string_to_sign))`: the signature of a Shared Key request, and
    /// also of a SAS token (whose string-to-sign differs; operators and tests build those).
    pub fn sign(&self, string_to_sign: &str) -> Result<String, SignError> {
        azure_core::hmac::hmac_sha256(string_to_sign, &self.key).map_err(|_| SignError::BadKey)
    }
}

/// Folds runs of whitespace to one space and trims the ends, as the canonical headers require.
fn fold_whitespace(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `x-ms-date`: now, as an RFC 1123 date.
pub fn now_rfc1123() -> String {
    azure_core::time::to_rfc7231(&azure_core::time::OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Azurite's well-known development key (public, printed in Microsoft's docs).
    const AZURITE_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    #[test]
    fn keys_must_be_base64() {
        assert!(SharedKey::new("devstoreaccount1", AZURITE_KEY).is_ok());
        assert_eq!(
            SharedKey::new("a", "not base64!").unwrap_err(),
            SignError::BadKey
        );
        assert_eq!(SharedKey::new("a", "").unwrap_err(), SignError::BadKey);
        let dbg = format!("{:?}", SharedKey::new("acct", AZURITE_KEY).unwrap());
        assert!(!dbg.contains("Eby8"), "{dbg}");
    }

    #[test]
    fn string_to_sign_of_a_ranged_get_on_azurite() {
        let k = SharedKey::new("devstoreaccount1", AZURITE_KEY).unwrap();
        let sts = k.string_to_sign(
            "GET",
            "/devstoreaccount1/data/dir/a%20b%2Bc",
            &[],
            &[
                ("host", "127.0.0.1:10000"),
                ("x-ms-version", API_VERSION),
                ("X-Ms-Date", "Mon, 02 Mar 2026 10:00:00 GMT"),
                ("x-ms-range", "bytes=0-1048575"),
                ("if-match", "\"0x8DC0FFEE\""),
            ],
        );
        assert_eq!(
            sts,
            "GET\n\n\n\n\n\n\n\n\"0x8DC0FFEE\"\n\n\n\n\
             x-ms-date:Mon, 02 Mar 2026 10:00:00 GMT\nx-ms-range:bytes=0-1048575\n\
             x-ms-version:2025-11-05\n\
             /devstoreaccount1/devstoreaccount1/data/dir/a%20b%2Bc"
        );
    }

    #[test]
    fn string_to_sign_of_a_listing_and_a_put() {
        let k = SharedKey::new("myaccount", AZURITE_KEY).unwrap();
        let sts = k.string_to_sign(
            "GET",
            "/mycontainer",
            &[
                ("restype", "container"),
                ("comp", "list"),
                ("prefix", "a b/"),
                ("Marker", "m2"),
                ("include", "metadata"),
                ("include", "deleted"),
            ],
            &[("x-ms-date", "d"), ("x-ms-version", "v")],
        );
        assert_eq!(
            sts,
            "GET\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:d\nx-ms-version:v\n/myaccount/mycontainer\n\
             comp:list\ninclude:deleted,metadata\nmarker:m2\nprefix:a b/\nrestype:container"
        );
        let put = k.string_to_sign(
            "PUT",
            "/c/b",
            &[],
            &[
                ("Content-Length", "11"),
                ("Content-Type", "text/plain"),
                ("x-ms-blob-type", "BlockBlob"),
                ("x-ms-meta-Color", "  sky   blue "),
            ],
        );
        assert_eq!(
            put,
            "PUT\n\n\n11\n\ntext/plain\n\n\n\n\n\n\n\
             x-ms-blob-type:BlockBlob\nx-ms-meta-color:sky blue\n/myaccount/c/b"
        );
        let zero = k.string_to_sign("PUT", "/c", &[], &[("content-length", "0")]);
        assert!(zero.starts_with("PUT\n\n\n\n\n"), "{zero:?}");
    }

    /// A vector checked against Azurite 3.35: `curl -I` of
    /// `http://127.0.0.1:PORT/devstoreaccount1/vec?restype=container` with these headers and
    /// this Authorization answered 200 on a container `vec` (and 403 with one byte changed).
    #[test]
    fn signature_vector_accepted_by_azurite() {
        let k = SharedKey::new("devstoreaccount1", AZURITE_KEY).unwrap();
        let auth = k
            .authorization(
                "HEAD",
                "/devstoreaccount1/vec",
                &[("restype", "container")],
                &[
                    ("x-ms-date", "Mon, 02 Mar 2026 10:00:00 GMT"),
                    ("x-ms-version", API_VERSION),
                ],
            )
            .unwrap();
        assert_eq!(auth, AZURITE_VECTOR);
    }

    const AZURITE_VECTOR: &str =
        "SharedKey devstoreaccount1:0vFHKed8LDuYVZPcAhLPeUvf+qRUT5wvZVYlXCBdgA8=";

    #[test]
    fn dates_are_rfc1123() {
        let d = now_rfc1123();
        assert!(d.ends_with(" GMT") && d.len() == 29, "{d}");
    }
}
