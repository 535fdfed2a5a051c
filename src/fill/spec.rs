//! The fill RPC's parameters: the full chunk identity and the object size, validated.

use crate::chunk::{chunk_count, ChunkId};
use crate::error::S3Error;
use crate::origin::encode_query_value;
use percent_encoding::percent_decode_str;

/// A validated `/internal/fill` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillSpec {
    /// Bucket at the origin.
    pub bucket: String,
    /// Object key, decoded.
    pub key: String,
    /// Pinned ETag, unquoted.
    pub etag: String,
    /// Chunk size the object is split with.
    pub chunk_size: u64,
    /// Chunk index.
    pub index: u64,
    /// Object size.
    pub object_size: u64,
    /// The chunk's identity (derived).
    pub id: ChunkId,
    /// The chunk's exact length (derived).
    pub expected_len: u64,
}

impl FillSpec {
    /// The query string of a fill request for chunk `index` of an object version.
    pub fn query(
        origin_id: &str,
        bucket: &str,
        key: &str,
        etag: &str,
        chunk_size: u64,
        index: u64,
        object_size: u64,
    ) -> String {
        format!(
            "origin={}&bucket={}&key={}&etag={}&chunk_size={chunk_size}&index={index}&object_size={object_size}",
            encode_query_value(origin_id),
            encode_query_value(bucket),
            encode_query_value(key),
            encode_query_value(etag),
        )
    }

    /// Parses and validates a fill query for this replica's origin.
    pub fn from_query(query: &str, origin_id: &str) -> Result<Self, S3Error> {
        let bad = |m: String| S3Error::new(400, "InvalidArgument", m);
        let mut fields: [Option<String>; 7] = Default::default();
        const NAMES: [&str; 7] = [
            "origin",
            "bucket",
            "key",
            "etag",
            "chunk_size",
            "index",
            "object_size",
        ];
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let Some(slot) = NAMES.iter().position(|n| *n == name) else {
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
        if chunk_size > crate::config::validated::MAX_CHUNK_SIZE {
            return Err(bad(format!(
                "chunk_size {chunk_size} is over the limit of {}",
                crate::config::validated::MAX_CHUNK_SIZE
            )));
        }
        if index >= chunk_count(object_size, chunk_size) {
            return Err(bad(format!(
                "index {index} is past the last chunk of a {object_size}-byte object"
            )));
        }
        let id = ChunkId::from_fields(&origin, &bucket, &key, &etag, chunk_size, index);
        let expected_len = id.expected_len(object_size);
        Ok(Self {
            bucket,
            key,
            etag,
            chunk_size,
            index,
            object_size,
            id,
            expected_len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_awkward_keys() {
        let key = "a b+c%d/ünï//x/";
        let q = FillSpec::query("o", "bkt", key, "e&1", 10, 2, 25);
        let s = FillSpec::from_query(&q, "o").unwrap();
        assert_eq!((s.key.as_str(), s.etag.as_str()), (key, "e&1"));
        assert_eq!((s.index, s.expected_len), (2, 5));
        assert_eq!(s.id, ChunkId::from_fields("o", "bkt", key, "e&1", 10, 2));
    }

    #[test]
    fn rejects_bad_values() {
        let ok = |q: &str| FillSpec::from_query(q, "o");
        assert!(ok(&FillSpec::query("o", "b", "k", "e", 10, 3, 25)).is_err()); // past the end
        assert!(ok(&FillSpec::query("o", "b", "k", "e", 0, 0, 25)).is_err());
        assert!(ok(&FillSpec::query("o", "b", "k", "e", 8 << 30, 0, 25)).is_err());
        assert!(ok(&FillSpec::query("o", "b", "k", "e", 10, 0, 0)).is_err());
        assert!(ok(&FillSpec::query("other", "b", "k", "e", 10, 0, 25)).is_err());
        assert!(ok("origin=o&bucket=b&key=k&etag=e&chunk_size=x&index=0&object_size=1").is_err());
        assert!(ok("origin=o&bucket=b&key=k&etag=e&chunk_size=-1&index=0&object_size=1").is_err());
        assert!(ok("origin=o&key=k&etag=e&chunk_size=1&index=0&object_size=1").is_err());
        assert_eq!(ok("").unwrap_err().status, 400);
    }
}
