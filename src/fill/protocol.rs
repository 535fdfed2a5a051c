//! The fill protocol on the wire: `GET /internal/fill?<chunk>` asks a fill service for one
//! whole chunk. The request names the object version and the chunk (origin id, bucket, key,
//! ETag, chunk size, index, object size); [`FillRequest`] encodes and decodes it, and the
//! headers both sides use are defined beside it.
//!
//! The receiver recomputes the chunk's identity from the fields rather than trusting a name
//! sent by the caller: a chunk is stored under the name its fields hash to, so a request can
//! never make a replica store bytes under another chunk's name.

use crate::chunk::{Chunk, ObjectVersion};
use crate::config::validated::MAX_CHUNK_SIZE;
use crate::error::S3Error;
use crate::net::encode::encode_query_value;
use percent_encoding::percent_decode_str;
use std::sync::Arc;

/// The path of the fill service.
pub const FILL_PATH: &str = "/internal/fill";

/// Header carrying the cluster's shared secret on peer fill requests.
pub const SECRET_HEADER: &str = "x-orca-peer-secret";

/// Header on the fill service's `403` when it refused the caller's shared secret (its code is
/// `AccessDenied`, as an origin's refusal of an object is too: the header tells them apart).
pub const REFUSED_HEADER: &str = "x-orca-peer-refused";

/// Header carrying the id of the edge request a fill serves (the client's `x-amz-request-id`),
/// so the coordinator's log lines for the fill name it. At most [`MAX_REQUEST_ID`] characters
/// of `[A-Za-z0-9_-]`; anything else is ignored.
pub const REQUEST_ID_HEADER: &str = "x-orca-request-id";

/// Longest request id a fill service takes from [`REQUEST_ID_HEADER`].
pub const MAX_REQUEST_ID: usize = 64;

/// The request id of a fill request's [`REQUEST_ID_HEADER`] value, when well-formed.
pub fn request_id_of(value: &[u8]) -> Option<&str> {
    let ok = !value.is_empty()
        && value.len() <= MAX_REQUEST_ID
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
    ok.then(|| std::str::from_utf8(value).ok()).flatten()
}

/// Header naming where the fill service's bytes came from (`origin`, `memory`, `cachestore`).
pub const SOURCE_HEADER: &str = "x-orca-source";

/// Header of an answer whose bytes are not kept (a fill that went on without a flight: its
/// cache-lock wait timed out, or the storage refused it one): its body is the only copy, and
/// the requester must read it. Without it, the answer's bytes are a fill in flight in the
/// answering replica's storage, or stored there.
pub const UNCACHED_HEADER: &str = "x-orca-uncached";

/// One fill request: a chunk of one object version, and the part of it the requester needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillRequest {
    /// The chunk asked for.
    pub chunk: Chunk,
    /// The bytes `[from, to)` of the chunk the requester needs, when not the whole chunk
    /// (query fields `from` and `to`). A fill service that fetches the chunk as sub-ranges
    /// ([`super::subrange`]) fetches this part first and answers it alone (`206`); one that
    /// fetches the chunk in one GET answers the whole chunk (`200`), as a replica that does
    /// not know the fields does.
    pub range: Option<(u64, u64)>,
}

/// The query's fields, in the order they are written.
const FIELDS: [&str; 7] = [
    "origin",
    "bucket",
    "key",
    "etag",
    "chunk_size",
    "index",
    "object_size",
];

impl FillRequest {
    /// A request for `chunk`.
    pub fn new(chunk: Chunk) -> Self {
        Self { chunk, range: None }
    }

    /// A request for bytes `[from, to)` of `chunk` (the whole chunk when that is all of it).
    pub fn for_range(chunk: Chunk, (from, to): (u64, u64)) -> Self {
        let to = to.min(chunk.len);
        let range = (from < to && (from, to) != (0, chunk.len)).then_some((from, to));
        Self { chunk, range }
    }

    /// The request's path and query (`/internal/fill?...`).
    pub fn path_and_query(&self) -> String {
        let v = &self.chunk.version;
        let mut pq = format!(
            "{FILL_PATH}?origin={}&bucket={}&key={}&etag={}&chunk_size={}&index={}&object_size={}",
            encode_query_value(&v.origin_id),
            encode_query_value(&v.bucket),
            encode_query_value(&v.key),
            encode_query_value(&v.etag),
            self.chunk.id.chunk_size,
            self.chunk.id.index,
            v.size,
        );
        if let Some((from, to)) = self.range {
            pq.push_str(&format!("&from={from}&to={to}"));
        }
        pq
    }

    /// Parses and validates a fill query for this replica's origin (`origin_id`): every field
    /// present, numbers in range, the chunk size at most `max_chunk_size` (this replica's
    /// largest configured chunk: a requester cannot make it hold more for one fill), the index
    /// inside the object. Errors are `400 InvalidArgument`.
    pub fn decode(query: &str, origin_id: &str, max_chunk_size: u64) -> Result<Self, S3Error> {
        let bad = |m: String| S3Error::new(400, "InvalidArgument", m);
        let mut fields: [Option<String>; 7] = Default::default();
        let (mut from, mut to) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if name == "from" || name == "to" {
                let n = value.parse::<u64>().map_err(|_| {
                    bad(format!(
                        "{name} must be a non-negative integer, got {value:?}"
                    ))
                })?;
                *(if name == "from" { &mut from } else { &mut to }) = Some(n);
                continue;
            }
            let Some(slot) = FIELDS.iter().position(|n| *n == name) else {
                continue;
            };
            let value = percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| bad(format!("{name} is not valid UTF-8")))?;
            fields[slot] = Some(value.into_owned());
        }
        let [origin, bucket, key, etag, chunk_size, index, object_size] =
            fields.map(|f| f.unwrap_or_default());
        let num = |name: &str, v: &str| {
            v.parse::<u64>()
                .map_err(|_| bad(format!("{name} must be a non-negative integer, got {v:?}")))
        };
        if origin != origin_id {
            return Err(bad(format!(
                "origin {origin:?} is not this replica's origin"
            )));
        }
        if bucket.is_empty() || key.is_empty() || etag.is_empty() {
            return Err(bad("bucket, key and etag are required".into()));
        }
        let chunk_size = num("chunk_size", &chunk_size)?;
        let index = num("index", &index)?;
        let object_size = num("object_size", &object_size)?;
        if chunk_size == 0 || object_size == 0 {
            return Err(bad("chunk_size and object_size must be > 0".into()));
        }
        let limit = max_chunk_size.min(MAX_CHUNK_SIZE);
        if chunk_size > limit {
            return Err(bad(format!(
                "chunk_size {chunk_size} is over this replica's largest chunk, {limit} bytes"
            )));
        }
        let version = Arc::new(ObjectVersion {
            origin_id: origin,
            bucket,
            key,
            etag,
            size: object_size,
        });
        let chunk = Chunk::new(version, chunk_size, index).ok_or_else(|| {
            bad(format!(
                "index {index} is past the last chunk of a {object_size}-byte object"
            ))
        })?;
        match (from, to) {
            (None, None) => Ok(Self::new(chunk)),
            (Some(from), Some(to)) if from < to && to <= chunk.len => {
                Ok(Self::for_range(chunk, (from, to)))
            }
            (Some(from), Some(to)) => Err(bad(format!(
                "from {from} and to {to} are not a range inside the chunk's {} bytes",
                chunk.len
            ))),
            _ => Err(bad("from and to go together".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::ChunkId;

    fn request(origin: &str, key: &str, etag: &str, cs: u64, index: u64, size: u64) -> String {
        // Encoded by hand, so out-of-range values can be written too.
        format!(
            "origin={}&bucket=b&key={}&etag={}&chunk_size={cs}&index={index}&object_size={size}",
            encode_query_value(origin),
            encode_query_value(key),
            encode_query_value(etag)
        )
    }

    #[test]
    fn round_trips_awkward_keys() {
        let key = "a b+c%d/ünï//x/";
        let version = Arc::new(ObjectVersion {
            origin_id: "o".into(),
            bucket: "bkt".into(),
            key: key.into(),
            etag: "e&1".into(),
            size: 25,
        });
        let sent = FillRequest::new(Chunk::new(version, 10, 2).expect("chunk 2"));
        let pq = sent.path_and_query();
        let query = pq.strip_prefix("/internal/fill?").expect("fill path");
        let got = FillRequest::decode(query, "o", 10).expect("decodes");
        assert_eq!(got, sent);
        assert_eq!((got.chunk.id.index, got.chunk.len), (2, 5));
        assert_eq!(
            got.chunk.id,
            ChunkId::from_fields("o", "bkt", key, "e&1", 10, 2)
        );
    }

    #[test]
    fn request_ids_are_taken_only_when_well_formed() {
        assert_eq!(request_id_of(b"0123abcdEF-_"), Some("0123abcdEF-_"));
        assert_eq!(request_id_of(b""), None);
        assert_eq!(request_id_of(b"a b"), None);
        assert_eq!(request_id_of(b"id\r\nx-evil: 1"), None);
        assert_eq!(request_id_of("é".as_bytes()), None);
        assert!(request_id_of(&[b'a'; MAX_REQUEST_ID]).is_some());
        assert_eq!(request_id_of(&[b'a'; MAX_REQUEST_ID + 1]), None);
    }

    #[test]
    fn rejects_bad_values() {
        let ok = |q: &str| FillRequest::decode(q, "o", 1 << 20);
        assert!(ok(&request("o", "k", "e", 10, 3, 25)).is_err()); // past the end
        assert!(ok(&request("o", "k", "e", 0, 0, 25)).is_err());
        assert!(ok(&request("o", "k", "e", 8 << 30, 0, 25)).is_err());
        assert!(ok(&request("o", "k", "e", 10, 0, 0)).is_err());
        assert!(ok(&request("other", "k", "e", 10, 0, 25)).is_err());
        assert!(ok(&request("o", "k", "e", 10, 2, 25)).is_ok());
        assert!(ok(&request("o", "k", "e", 1 << 20, 0, 25)).is_ok());
        assert!(ok(&request("o", "k", "e", (1 << 20) + 1, 0, 25)).is_err()); // over the ladder
        assert!(ok("origin=o&bucket=b&key=k&etag=e&chunk_size=x&index=0&object_size=1").is_err());
        assert!(ok("origin=o&bucket=b&key=k&etag=e&chunk_size=-1&index=0&object_size=1").is_err());
        assert!(ok("origin=o&key=k&etag=e&chunk_size=1&index=0&object_size=1").is_err());
        assert_eq!(ok("").unwrap_err().status, 400);
        // The requester's part of the chunk.
        let base = request("o", "k", "e", 10, 2, 25); // 5 bytes
        let got = ok(&format!("{base}&from=1&to=4")).unwrap();
        assert_eq!(got.range, Some((1, 4)));
        assert_eq!(ok(&format!("{base}&from=0&to=5")).unwrap().range, None);
        assert!(ok(&format!("{base}&from=3&to=3")).is_err());
        assert!(ok(&format!("{base}&from=0&to=6")).is_err());
        assert!(ok(&format!("{base}&from=1")).is_err());
        assert!(ok(&format!("{base}&from=x&to=2")).is_err());
        let pq = got.path_and_query();
        let back = FillRequest::decode(pq.split_once('?').unwrap().1, "o", 1 << 20).unwrap();
        assert_eq!(back, got);
    }
}
