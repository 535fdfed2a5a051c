//! Purge on one replica, and its fan-out request on the internal port.
//!
//! `POST /internal/purge?bucket=B&key=K&shared=0|1&version=<size>.<etag>...` asks a replica to
//! drop an object: every chunk of each version named (and of the version its own metadata cache
//! pinned) from every tier of its store, the shared tier only with `shared=1`, and to forget
//! the object's metadata. It answers a [`ReplicaReport`] as JSON. Peers must present the
//! cluster's shared secret, as fill requests do (`403` otherwise). The replica an operator asks
//! (`POST /cache/purge` on its ops port) purges itself with the shared tier, then asks every
//! peer without it (the shared store is purged once).

use super::protocol::SECRET_HEADER;
use crate::cachestore::TierState;
use crate::chunk::{chunk_count, Chunk, ObjectVersion};
use crate::net::encode::encode_query_value;
use crate::net::oneshot;
use crate::state::Orca;
use futures::StreamExt;
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The purge path on the internal port.
pub const PURGE_PATH: &str = "/internal/purge";

/// Chunks removed at once on one replica (each is a file or a store request).
const PURGE_CONCURRENCY: usize = 16;

/// Errors kept per tier in a report (the count is always complete).
const KEPT_ERRORS: usize = 5;

/// One object version to drop: what a HEAD pinned.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PurgedVersion {
    /// The ETag, unquoted.
    pub etag: String,
    /// The object's size.
    pub size: u64,
}

/// A purge request to one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeRequest {
    /// The bucket (container).
    pub bucket: String,
    /// The key.
    pub key: String,
    /// Versions whose chunks to drop (the replica adds the one its metadata pinned).
    pub versions: Vec<PurgedVersion>,
    /// Whether to purge the shared tier too.
    pub shared: bool,
}

impl PurgeRequest {
    /// The request's path and query.
    pub fn path_and_query(&self) -> String {
        let mut q = format!(
            "{PURGE_PATH}?bucket={}&key={}&shared={}",
            encode_query_value(&self.bucket),
            encode_query_value(&self.key),
            u8::from(self.shared)
        );
        for v in &self.versions {
            q.push_str(&format!(
                "&version={}",
                encode_query_value(&format!("{}.{}", v.size, v.etag))
            ));
        }
        q
    }

    /// Parses a purge query (`400`'s message on error).
    pub fn decode(query: &str) -> Result<Self, String> {
        let (mut bucket, mut key, mut shared, mut versions) = (None, None, false, Vec::new());
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| format!("{name} is not valid UTF-8"))?
                .into_owned();
            match name {
                "bucket" => bucket = Some(value),
                "key" => key = Some(value),
                "shared" => shared = value == "1",
                "version" => {
                    let (size, etag) = value
                        .split_once('.')
                        .and_then(|(s, e)| Some((s.parse::<u64>().ok()?, e)))
                        .filter(|(_, e)| !e.is_empty())
                        .ok_or_else(|| format!("version {value:?} is not <size>.<etag>"))?;
                    versions.push(PurgedVersion {
                        etag: etag.to_string(),
                        size,
                    });
                }
                _ => {}
            }
        }
        match (bucket, key) {
            (Some(bucket), Some(key)) if !bucket.is_empty() && !key.is_empty() => Ok(Self {
                bucket,
                key,
                versions,
                shared,
            }),
            _ => Err("bucket and key are required".into()),
        }
    }
}

/// What one tier lost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierTotals {
    /// Whether every replica sees this tier.
    pub shared: bool,
    /// Chunks removed.
    pub chunks: u64,
    /// Bytes removed.
    pub bytes: u64,
    /// Chunks the tier failed to remove (or to say whether it held them).
    pub errors: u64,
    /// The first few of those failures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error_samples: Vec<String>,
}

/// What one replica removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaReport {
    /// The replica (its internal address, as its peers name it).
    pub replica: String,
    /// Whether it answered; `false` with `error` when it could not be asked.
    pub reached: bool,
    /// Why it could not be asked, or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The versions it dropped (those asked, and the one its metadata had pinned).
    pub versions: Vec<PurgedVersion>,
    /// Whether its metadata cache held the object (now forgotten).
    pub metadata_forgotten: bool,
    /// Per tier (`memory`, `fs`, `local`, `s3`): what was removed.
    pub tiers: BTreeMap<String, TierTotals>,
}

impl ReplicaReport {
    /// A replica that could not be asked.
    pub fn unreached(replica: &str, error: String) -> Self {
        Self {
            replica: replica.to_string(),
            reached: false,
            error: Some(error),
            ..Self::default()
        }
    }

    /// Adds one chunk's removal, per tier.
    pub fn add(&mut self, tiers: Vec<TierState>) {
        for t in tiers {
            let totals = self.tiers.entry(t.tier.to_string()).or_default();
            totals.shared = t.shared;
            match t.bytes {
                Ok(Some(bytes)) => {
                    totals.chunks += 1;
                    totals.bytes += bytes;
                }
                Ok(None) => {}
                Err(e) => {
                    totals.errors += 1;
                    if totals.error_samples.len() < KEPT_ERRORS {
                        totals.error_samples.push(e);
                    }
                }
            }
        }
    }
}

/// Purges an object on this replica: forgets its metadata, then removes every chunk of each
/// version (those asked and the one pinned here) from every tier (the shared one only with
/// `req.shared`).
pub async fn purge_local(orca: &Orca, req: &PurgeRequest) -> ReplicaReport {
    let mut versions = req.versions.clone();
    let pinned = orca.metadata.peek(&req.bucket, &req.key);
    // Forgotten first: a read from now on HEADs the origin again and pins what is there.
    orca.metadata.invalidate(&req.bucket, &req.key);
    if let Some(meta) = &pinned {
        versions.push(PurgedVersion {
            etag: meta.etag.clone(),
            size: meta.size,
        });
    }
    versions.sort();
    versions.dedup();
    let mut report = ReplicaReport {
        replica: orca.cluster.self_addr().to_string(),
        reached: true,
        metadata_forgotten: pinned.is_some(),
        versions: versions.clone(),
        ..ReplicaReport::default()
    };
    let chunks = version_chunks(orca, &req.bucket, &req.key, &versions);
    let mut removals = futures::stream::iter(chunks)
        .map(|chunk| async move { orca.storage.purge(&chunk.id, req.shared).await })
        .buffer_unordered(PURGE_CONCURRENCY);
    while let Some(tiers) = removals.next().await {
        report.add(tiers);
    }
    // A read that pinned the old version while the chunks went may have pinned it again.
    orca.metadata.invalidate(&req.bucket, &req.key);
    tracing::info!(bucket = %req.bucket, key = %req.key, versions = versions.len(), shared = req.shared, "purged");
    report
}

/// Every chunk of each version, split as reads split it (the chunk size the ladder gives
/// the version's size).
pub fn version_chunks<'a>(
    orca: &'a Orca,
    bucket: &'a str,
    key: &'a str,
    versions: &'a [PurgedVersion],
) -> impl Iterator<Item = Chunk> + 'a {
    versions.iter().flat_map(move |v| {
        let version = Arc::new(ObjectVersion {
            origin_id: orca.config.origin.id.clone(),
            bucket: bucket.to_string(),
            key: key.to_string(),
            etag: v.etag.clone(),
            size: v.size,
        });
        let chunk_size = orca.config.chunking.chunk_size_for(v.size);
        (0..chunk_count(v.size, chunk_size))
            .filter_map(move |i| Chunk::new(version.clone(), chunk_size, i))
    })
}

/// Asks `peer` (its internal `host:port`) to purge, with the cluster's `secret`.
pub async fn ask_peer(
    peer: &str,
    secret: Option<&str>,
    req: &PurgeRequest,
    deadline: Duration,
) -> ReplicaReport {
    let headers: Vec<(&str, &str)> = secret.map(|s| (SECRET_HEADER, s)).into_iter().collect();
    match oneshot::request(peer, "POST", &req.path_and_query(), &headers, deadline).await {
        Ok(a) if a.status == 200 => match serde_json::from_slice::<ReplicaReport>(&a.body) {
            Ok(mut r) => {
                r.replica = peer.to_string();
                r
            }
            Err(e) => ReplicaReport::unreached(peer, format!("unreadable answer: {e}")),
        },
        Ok(a) => ReplicaReport::unreached(
            peer,
            format!(
                "answered {}: {}",
                a.status,
                String::from_utf8_lossy(&a.body).trim()
            ),
        ),
        Err(e) => ReplicaReport::unreached(peer, format!("unreachable: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let req = PurgeRequest {
            bucket: "b".into(),
            key: "a b/ü&c.bin".into(),
            versions: vec![
                PurgedVersion {
                    etag: "abc-2".into(),
                    size: 10,
                },
                PurgedVersion {
                    etag: "0x8D.E".into(),
                    size: 7,
                },
            ],
            shared: false,
        };
        let pq = req.path_and_query();
        let query = pq.strip_prefix("/internal/purge?").unwrap();
        assert_eq!(PurgeRequest::decode(query).unwrap(), req);
        assert!(PurgeRequest::decode("bucket=b").is_err());
        assert!(PurgeRequest::decode("bucket=b&key=k&version=x.e").is_err());
        assert!(PurgeRequest::decode("bucket=b&key=k&version=3.").is_err());
    }
}
