//! Chunk identity and chunk arithmetic: pure, no I/O, no async.
//!
//! Every object version (origin, bucket, key, ETag) is split into fixed-size chunks. A chunk is
//! named by [`ChunkId`]: the SHA-256 of the length-prefixed version fields plus the chunk size,
//! and the chunk index. That one name is the cache-store path, the pingora-cache key and (for the
//! cluster) the input of the rendezvous choice, so no two places can disagree on where a chunk
//! lives. The byte-range helpers map a client's HTTP `Range` onto chunk indices.

mod range;

pub use range::{parse_range, ByteRange, RangeRequest};

use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::Arc;

/// Bumped when the naming scheme or the stored format changes, so a new release never reads
/// chunks written under an older scheme (they simply become unreachable and age out).
pub const CACHE_VERSION: u32 = 1;

/// One immutable version of an object at the origin: what a HEAD pinned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectVersion {
    /// The configured `origin.id`.
    pub origin_id: String,
    /// The bucket (S3) or container (Azure) at the origin.
    pub bucket: String,
    /// The object key, unencoded.
    pub key: String,
    /// The origin's ETag without quotes; never empty (an empty ETag is refused at HEAD time).
    pub etag: String,
    /// The object's size in bytes.
    pub size: u64,
}

/// The identity of one chunk: which version, which chunk size, which index.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ChunkId {
    /// hex(sha256(version, origin_id, bucket, key, etag, chunk_size)), length-prefixed fields.
    object_hash: [u8; 32],
    /// The chunk size this object is split with (from the size ladder).
    pub chunk_size: u64,
    /// Zero-based chunk index.
    pub index: u64,
}

impl ChunkId {
    /// Names chunk `index` of `version` split into `chunk_size` pieces.
    pub fn new(version: &ObjectVersion, chunk_size: u64, index: u64) -> Self {
        Self::from_fields(
            &version.origin_id,
            &version.bucket,
            &version.key,
            &version.etag,
            chunk_size,
            index,
        )
    }

    /// Names a chunk from its raw fields (what the fill RPC carries).
    pub fn from_fields(
        origin_id: &str,
        bucket: &str,
        key: &str,
        etag: &str,
        chunk_size: u64,
        index: u64,
    ) -> Self {
        let mut h = Sha256::new();
        h.update(CACHE_VERSION.to_be_bytes());
        for field in [origin_id, bucket, key, etag] {
            // Length prefixes keep ("ab","c") and ("a","bc") apart.
            h.update((field.len() as u64).to_be_bytes());
            h.update(field.as_bytes());
        }
        h.update(chunk_size.to_be_bytes());
        Self {
            object_hash: h.finalize().into(),
            chunk_size,
            index,
        }
    }

    /// The object-level hash in hex (64 characters).
    pub fn object_hex(&self) -> String {
        hex::encode(self.object_hash)
    }

    /// The chunk's name, `<object hex>-<index>`: the cache key and the stored object's name.
    pub fn name(&self) -> String {
        format!("{}-{}", self.object_hex(), self.index)
    }

    /// Parses a [`ChunkId::name`] back (the chunk size is not part of the name; pass it). The
    /// `fs` store's start-up scan names the files it finds with it.
    pub fn parse_name(name: &str, chunk_size: u64) -> Option<Self> {
        let (hex_part, idx) = name.split_once('-')?;
        let mut object_hash = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut object_hash).ok()?;
        Some(Self {
            object_hash,
            chunk_size,
            index: idx.parse().ok()?,
        })
    }

    /// A stable 64-bit digest of the chunk (object hash and index), for placement decisions.
    pub fn placement_digest(&self) -> [u8; 40] {
        let mut out = [0u8; 40];
        out[..32].copy_from_slice(&self.object_hash);
        out[32..].copy_from_slice(&self.index.to_be_bytes());
        out
    }

    /// Byte offset of this chunk in the object.
    pub fn offset(&self) -> u64 {
        self.index.saturating_mul(self.chunk_size)
    }

    /// The chunk's exact length in an object of `object_size` bytes:
    /// `min(chunk_size, object_size - offset)`, or 0 for an index past the end.
    pub fn expected_len(&self, object_size: u64) -> u64 {
        object_size
            .saturating_sub(self.offset())
            .min(self.chunk_size)
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name(), self.chunk_size)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())
    }
}

/// One chunk of one object version: the typed identity that travels from the edge through the
/// fill protocol to the store and the origin request. The [`ChunkId`] (and so its hash) is
/// computed once, when the chunk is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The object version the chunk belongs to.
    pub version: Arc<ObjectVersion>,
    /// The chunk's identity: its store name, cache key and rendezvous input.
    pub id: ChunkId,
    /// Its exact length: `min(chunk_size, size - offset)`.
    pub len: u64,
}

impl Chunk {
    /// Chunk `index` of `version` split into `chunk_size` pieces; `None` when the index is past
    /// the object's last chunk (or the chunk size is 0).
    pub fn new(version: Arc<ObjectVersion>, chunk_size: u64, index: u64) -> Option<Self> {
        if chunk_size == 0 || index >= chunk_count(version.size, chunk_size) {
            return None;
        }
        let id = ChunkId::new(&version, chunk_size, index);
        let len = id.expected_len(version.size);
        Some(Self { version, id, len })
    }

    /// The chunk's first byte in the object.
    pub fn offset(&self) -> u64 {
        self.id.offset()
    }

    /// The chunk's last byte in the object (inclusive, as HTTP ranges count).
    pub fn last_byte(&self) -> u64 {
        self.offset() + self.len - 1
    }
}

/// Number of chunks in an object of `object_size` bytes.
pub fn chunk_count(object_size: u64, chunk_size: u64) -> u64 {
    object_size.div_ceil(chunk_size)
}

/// The inclusive chunk-index span covering bytes `[start, end]` (inclusive) of the object.
pub fn chunk_span(range: ByteRange, chunk_size: u64) -> (u64, u64) {
    (range.start / chunk_size, range.end / chunk_size)
}

/// The piece of chunk `index` that range `range` needs, as an offset range inside the chunk
/// `[from, to)`.
pub fn slice_in_chunk(range: ByteRange, chunk_size: u64, index: u64, chunk_len: u64) -> (u64, u64) {
    let chunk_start = index * chunk_size;
    let from = range.start.saturating_sub(chunk_start).min(chunk_len);
    let to = (range.end + 1).saturating_sub(chunk_start).min(chunk_len);
    (from, to.max(from))
}

/// Shortens an ETag for logs: ETags are not secret, but their full form is noise.
pub fn etag_short(etag: &str) -> &str {
    let e = etag.trim_matches('"');
    match e.char_indices().nth(8) {
        Some((i, _)) => &e[..i],
        None => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(key: &str, etag: &str) -> ObjectVersion {
        ObjectVersion {
            origin_id: "o".into(),
            bucket: "b".into(),
            key: key.into(),
            etag: etag.into(),
            size: 100,
        }
    }

    #[test]
    fn identity_pins_every_field_and_is_stable() {
        let a = ChunkId::new(&v("k", "e1"), 8, 0);
        assert_eq!(a, ChunkId::new(&v("k", "e1"), 8, 0));
        assert_ne!(a, ChunkId::new(&v("k", "e2"), 8, 0));
        assert_ne!(a, ChunkId::new(&v("k", "e1"), 16, 0));
        assert_ne!(a, ChunkId::new(&v("k", "e1"), 8, 1));
        assert_ne!(
            a.object_hex(),
            ChunkId::new(&v("k2", "e1"), 8, 0).object_hex()
        );
        // Pinned vector: a change here orphans every stored chunk; bump CACHE_VERSION instead.
        assert_eq!(
            ChunkId::from_fields("origin", "bucket", "key", "etag", 8 << 20, 3).name(),
            "b4cbc4ed4d9215e0472759c3e2bd2fba3e0c182809395a73060cf3c6174e39f2-3"
        );
    }

    #[test]
    fn length_prefix_separates_field_boundaries() {
        let a = ChunkId::from_fields("o", "ab", "c", "e", 8, 0);
        let b = ChunkId::from_fields("o", "a", "bc", "e", 8, 0);
        assert_ne!(a, b);
    }

    #[test]
    fn name_round_trips() {
        let a = ChunkId::new(&v("k", "e"), 1 << 20, 17);
        assert_eq!(ChunkId::parse_name(&a.name(), 1 << 20), Some(a));
        assert_eq!(ChunkId::parse_name("zz-1", 1), None);
        assert_eq!(ChunkId::parse_name("nodash", 1), None);
    }

    #[test]
    fn expected_len_at_every_boundary() {
        let cs = 10;
        let id = |i| ChunkId::from_fields("o", "b", "k", "e", cs, i);
        assert_eq!(id(0).expected_len(1), 1);
        assert_eq!(id(0).expected_len(9), 9);
        assert_eq!(id(0).expected_len(10), 10);
        assert_eq!(id(0).expected_len(11), 10);
        assert_eq!(id(1).expected_len(10), 0);
        assert_eq!(id(1).expected_len(11), 1);
        assert_eq!(id(1).expected_len(20), 10);
        assert_eq!(id(2).expected_len(25), 5);
        assert_eq!(id(u64::MAX).expected_len(25), 0);
    }

    #[test]
    fn chunks_exist_only_inside_the_object() {
        let version = Arc::new(v("k", "e"));
        let last = Chunk::new(version.clone(), 30, 3).expect("the last chunk");
        assert_eq!((last.offset(), last.len, last.last_byte()), (90, 10, 99));
        assert_eq!(last.id, ChunkId::new(&version, 30, 3));
        assert_eq!(Chunk::new(version.clone(), 30, 4), None);
        assert_eq!(Chunk::new(version, 0, 0), None);
    }

    #[test]
    fn chunk_count_at_boundaries() {
        assert_eq!(chunk_count(0, 10), 0);
        assert_eq!(chunk_count(1, 10), 1);
        assert_eq!(chunk_count(9, 10), 1);
        assert_eq!(chunk_count(10, 10), 1);
        assert_eq!(chunk_count(11, 10), 2);
        assert_eq!(chunk_count(170, 10), 17);
    }

    #[test]
    fn span_and_slices() {
        let r = ByteRange { start: 9, end: 20 };
        assert_eq!(chunk_span(r, 10), (0, 2));
        assert_eq!(slice_in_chunk(r, 10, 0, 10), (9, 10));
        assert_eq!(slice_in_chunk(r, 10, 1, 10), (0, 10));
        assert_eq!(slice_in_chunk(r, 10, 2, 10), (0, 1));
        let last = ByteRange { start: 24, end: 24 };
        assert_eq!(chunk_span(last, 10), (2, 2));
        assert_eq!(slice_in_chunk(last, 10, 2, 5), (4, 5));
    }

    #[test]
    fn etag_short_trims() {
        assert_eq!(etag_short("\"0123456789abcdef\""), "01234567");
        assert_eq!(etag_short("abc"), "abc");
    }

    proptest! {
        /// Every byte of a range is covered by exactly one chunk slice, in order.
        #[test]
        fn slices_tile_the_range(size in 1u64..5000, cs in 1u64..700, a in 0u64..5000, b in 0u64..5000) {
            let (start, end) = (a.min(b) % size, a.max(b) % size);
            let (start, end) = (start.min(end), start.max(end));
            let r = ByteRange { start, end };
            let (first, last) = chunk_span(r, cs);
            let mut next = start;
            for i in first..=last {
                let len = ChunkId::from_fields("o", "b", "k", "e", cs, i).expected_len(size);
                let (from, to) = slice_in_chunk(r, cs, i, len);
                prop_assert!(from < to);
                prop_assert_eq!(i * cs + from, next);
                next = i * cs + to;
            }
            prop_assert_eq!(next, end + 1);
        }
    }
}
