//! Rendezvous (highest-random-weight) choice of a chunk's coordinator. Pure: no I/O.
//!
//! The score of a peer for a chunk is the first 8 bytes (big-endian) of
//! `sha256("orca-rendezvous-v1" || u64be(len(peer)) || peer || object_hash || u64be(index))`,
//! where `peer` is the peer's address as configured (`host:port`) and `object_hash || index` is
//! [`ChunkId::placement_digest`], the same identity that names the chunk in the store. The peer
//! with the highest score coordinates the chunk (ties, which need a SHA-256 collision in 64 bits,
//! go to the smaller address). Every replica and every release computes the same choice: the
//! vectors in the tests pin it, and changing it is a breaking change for mixed-version fleets.
//! Adding or removing a peer moves only the chunks whose highest score changes, about 1/N.

use crate::chunk::ChunkId;
use sha2::{Digest, Sha256};

const DOMAIN: &[u8] = b"orca-rendezvous-v1";

/// The score of `peer` for `chunk`.
pub fn score(peer: &str, chunk: &ChunkId) -> u64 {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update((peer.len() as u64).to_be_bytes());
    h.update(peer.as_bytes());
    h.update(chunk.placement_digest());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The coordinator of `chunk` among `peers` (`None` for an empty set).
pub fn choose<'a>(peers: &'a [String], chunk: &ChunkId) -> Option<&'a str> {
    peers
        .iter()
        .map(|p| (score(p, chunk), p))
        .max_by(|(sa, pa), (sb, pb)| sa.cmp(sb).then_with(|| pb.cmp(pa)))
        .map(|(_, p)| p.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(i: u64) -> ChunkId {
        ChunkId::from_fields("origin", "bucket", "key", "etag", 8 << 20, i)
    }

    fn peers(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("10.0.0.{i}:8444")).collect()
    }

    #[test]
    fn pinned_vectors() {
        // A change here re-routes every chunk of a running fleet: do not change it lightly.
        assert_eq!(score("10.0.0.1:8444", &chunk(0)), 0x3bad_0d81_be8d_92e2);
        let p = peers(3);
        let chosen: Vec<&str> = (0..6).map(|i| choose(&p, &chunk(i)).unwrap()).collect();
        // Computed independently (Python hashlib) from the definition in the module docs.
        assert_eq!(
            chosen,
            [
                "10.0.0.3:8444",
                "10.0.0.2:8444",
                "10.0.0.3:8444",
                "10.0.0.1:8444",
                "10.0.0.1:8444",
                "10.0.0.3:8444"
            ]
        );
    }

    #[test]
    fn empty_and_single() {
        assert_eq!(choose(&[], &chunk(0)), None);
        let one = peers(1);
        assert_eq!(choose(&one, &chunk(7)), Some("10.0.0.1:8444"));
    }

    #[test]
    fn the_order_of_the_list_does_not_matter() {
        let mut p = peers(5);
        let before: Vec<String> = (0..200)
            .map(|i| choose(&p, &chunk(i)).unwrap().to_string())
            .collect();
        p.reverse();
        let after: Vec<String> = (0..200)
            .map(|i| choose(&p, &chunk(i)).unwrap().to_string())
            .collect();
        assert_eq!(before, after);
    }

    #[test]
    fn spread_is_even_over_100k_chunks_and_5_peers() {
        let p = peers(5);
        let mut counts = std::collections::HashMap::new();
        let n = 100_000u64;
        for i in 0..n {
            let id =
                ChunkId::from_fields("o", "b", &format!("key-{}", i / 64), "e", 8 << 20, i % 64);
            *counts
                .entry(choose(&p, &id).unwrap().to_string())
                .or_insert(0u64) += 1;
        }
        for (peer, c) in counts {
            let share = c as f64 / n as f64 * 100.0;
            assert!((share - 20.0).abs() <= 3.0, "{peer} has {share:.2}%");
        }
    }

    #[test]
    fn adding_a_peer_moves_only_chunks_to_it() {
        let four = peers(4);
        let five = peers(5);
        let mut moved = 0;
        for i in 0..10_000 {
            let id = ChunkId::from_fields("o", "b", &format!("k{}", i / 16), "e", 1 << 20, i % 16);
            let a = choose(&four, &id).unwrap();
            let b = choose(&five, &id).unwrap();
            if a != b {
                assert_eq!(b, "10.0.0.5:8444", "a chunk moved between old peers");
                moved += 1;
            }
        }
        // About a fifth of the chunks move, all to the new peer.
        assert!((1500..2500).contains(&moved), "{moved} moved");
    }
}
