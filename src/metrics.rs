//! Every metric Orca exports: names and labels live here and nowhere else (documented in
//! `docs/operations.md`, "Metrics").
//!
//! One registry, served by the ops service. Counters are plain statics so the hot path pays
//! an atomic add, not a lookup by name.

use once_cell::sync::{Lazy, OnceCell};
use prometheus::{
    register_histogram_vec_with_registry, register_int_counter_vec_with_registry,
    register_int_counter_with_registry, register_int_gauge_vec_with_registry,
    register_int_gauge_with_registry, Encoder, Histogram, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Registry, TextEncoder,
};

/// The registry the ops service renders.
pub static REGISTRY: Lazy<Registry> = Lazy::new(Registry::new);

macro_rules! metric {
    ($name:ident, $ty:ty, $init:expr) => {
        #[doc = concat!("The `", stringify!($name), "` metric.")]
        pub static $name: Lazy<$ty> = Lazy::new(|| $init.expect("metric registers once"));
    };
}

metric!(
    EDGE_REQUESTS,
    IntCounterVec,
    register_int_counter_vec_with_registry!(
        "orca_edge_requests_total",
        "Client requests answered by the edge, by method and status",
        &["method", "status"],
        REGISTRY
    )
);
metric!(
    EDGE_DURATION,
    HistogramVec,
    register_histogram_vec_with_registry!(
        "orca_edge_request_duration_seconds",
        "Time from request to the last byte sent, by method",
        &["method"],
        vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0],
        REGISTRY
    )
);
metric!(
    EDGE_BYTES_SENT,
    IntCounter,
    register_int_counter_with_registry!(
        "orca_edge_bytes_sent_total",
        "Body bytes sent to clients",
        REGISTRY
    )
);
metric!(
    CHUNK_READS,
    IntCounterVec,
    register_int_counter_vec_with_registry!(
        "orca_chunk_reads_total",
        "Chunks read by client requests, by where their bytes came from",
        &["source"],
        REGISTRY
    )
);
metric!(
    ORIGIN_REQUESTS,
    IntCounterVec,
    register_int_counter_vec_with_registry!(
        "orca_origin_requests_total",
        "Requests sent to the origin, by operation and status (0 = no answer)",
        &["op", "status"],
        REGISTRY
    )
);
metric!(
    ORIGIN_BYTES,
    IntCounter,
    register_int_counter_with_registry!(
        "orca_origin_bytes_total",
        "Chunk body bytes received from the origin",
        REGISTRY
    )
);
metric!(
    FILL_BUFFERED_BYTES,
    IntGauge,
    register_int_gauge_with_registry!(
        "orca_fill_buffered_bytes",
        "Chunk bytes held in memory by fills in flight and their commits (the fills' windows)",
        REGISTRY
    )
);
metric!(
    FILLS_INFLIGHT,
    IntGauge,
    register_int_gauge_with_registry!(
        "orca_fills_inflight",
        "Chunk fills from the origin in flight",
        REGISTRY
    )
);
metric!(
    FILL_JOINS,
    IntCounter,
    register_int_counter_with_registry!(
        "orca_fill_joins_total",
        "Chunk reads that joined a fill already in flight",
        REGISTRY
    )
);
metric!(
    COMMITS,
    IntCounterVec,
    register_int_counter_vec_with_registry!(
        "orca_cachestore_commits_total",
        "Chunk commits to the cache store, by result",
        &["result"],
        REGISTRY
    )
);
/// `tier` of the `orca_cachestore_*` size families: the cache store itself; the bounded `fs`
/// store reports as this tier.
pub const TIER_STORE: &str = "store";
/// `tier` of the `orca_cachestore_*` size families: the RAM tier (`cachestore.memory`).
pub const TIER_MEMORY: &str = "memory";
/// `tier` of the `orca_cachestore_*` size families: the local disk tier in front of a shared
/// `s3` store (`cachestore.local`).
pub const TIER_LOCAL: &str = "local";

metric!(
    CACHESTORE_BYTES,
    IntGaugeVec,
    register_int_gauge_vec_with_registry!(
        "orca_cachestore_bytes",
        "Bytes the cache holds on disk (chunk files and their directories, as du counts them), by tier",
        &["tier"],
        REGISTRY
    )
);
metric!(
    CACHESTORE_CHUNKS,
    IntGaugeVec,
    register_int_gauge_vec_with_registry!(
        "orca_cachestore_chunks",
        "Chunks the cache holds, by tier",
        &["tier"],
        REGISTRY
    )
);
metric!(
    CACHESTORE_CAPACITY,
    IntGaugeVec,
    register_int_gauge_vec_with_registry!(
        "orca_cachestore_capacity_bytes",
        "The bound the cache is held to now (max_size, or less when min_free demands), by tier",
        &["tier"],
        REGISTRY
    )
);
metric!(
    CACHESTORE_EVICTIONS,
    IntCounterVec,
    register_int_counter_vec_with_registry!(
        "orca_cachestore_evictions_total",
        "Chunks evicted to keep the cache within its bound, by tier",
        &["tier"],
        REGISTRY
    )
);
metric!(
    CACHESTORE_EVICTED_BYTES,
    IntCounterVec,
    register_int_counter_vec_with_registry!(
        "orca_cachestore_evicted_bytes_total",
        "Bytes freed by evictions, by tier",
        &["tier"],
        REGISTRY
    )
);
metric!(
    READAHEAD_WAIT_TIMEOUTS,
    IntCounter,
    register_int_counter_with_registry!(
        "orca_readahead_wait_timeouts_total",
        "GETs answered 503 SlowDown because no read-ahead memory came free within limits.readahead_wait",
        REGISTRY
    )
);
metric!(
    EDGE_CONNECTIONS,
    IntGauge,
    register_int_gauge_with_registry!(
        "orca_edge_connections",
        "Client connections the edge holds open (at most limits.max_connections)",
        REGISTRY
    )
);
metric!(
    EDGE_CONNECTIONS_REFUSED,
    IntCounter,
    register_int_counter_with_registry!(
        "orca_edge_connections_refused_total",
        "Client connections closed at accept because limits.max_connections were open",
        REGISTRY
    )
);
metric!(
    PEER_FILLS,
    IntCounterVec,
    register_int_counter_vec_with_registry!(
        "orca_peer_fills_total",
        "Chunk fills asked of a peer, by result",
        &["result"],
        REGISTRY
    )
);
metric!(
    PEER_REJECTED,
    IntCounterVec,
    register_int_counter_vec_with_registry!(
        "orca_peer_requests_rejected_total",
        "Fill requests from peers refused, by reason (auth = no or wrong shared secret, not_coordinator = 409)",
        &["reason"],
        REGISTRY
    )
);
metric!(
    CLUSTER_PEERS,
    IntGauge,
    register_int_gauge_with_registry!(
        "orca_cluster_peers",
        "Replicas in the current peer set, self included",
        REGISTRY
    )
);

metric!(
    EDGE_AUTH_REJECTIONS,
    IntCounterVec,
    register_int_counter_vec_with_registry!(
        "orca_edge_auth_rejections_total",
        "Client requests refused by edge authentication, by S3 error code",
        &["code"],
        REGISTRY
    )
);
metric!(
    EDGE_AUTH_RELOADS,
    IntCounterVec,
    register_int_counter_vec_with_registry!(
        "orca_edge_auth_reloads_total",
        "Reloads of edge.auth.credentials_file on SIGHUP, by result (ok, error)",
        &["result"],
        REGISTRY
    )
);
metric!(
    TLS_RELOADS,
    IntCounterVec,
    register_int_counter_vec_with_registry!(
        "orca_tls_reloads_total",
        "Reloads of a TLS listener's certificate and key on SIGHUP, by listener (edge, internal) and result (ok, error)",
        &["listener", "result"],
        REGISTRY
    )
);
/// Where a chunk's bytes came from, as `orca_chunk_reads_total{source}` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkSource {
    /// A fill in flight in this process.
    Memory,
    /// The RAM tier (`cachestore.memory`); counted as `memory` too.
    RamTier,
    /// The cache store.
    CacheStore,
    /// This request's own fill from the origin.
    Origin,
    /// The chunk's coordinator, another replica.
    Peer,
}

impl ChunkSource {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ChunkSource::Memory | ChunkSource::RamTier => "memory",
            ChunkSource::CacheStore => "cachestore",
            ChunkSource::Origin => "origin",
            ChunkSource::Peer => "peer",
        }
    }

    /// Parses a label value (the fill service reports its source in a header).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "memory" => ChunkSource::Memory,
            "cachestore" => ChunkSource::CacheStore,
            "origin" => ChunkSource::Origin,
            "peer" => ChunkSource::Peer,
            _ => return None,
        })
    }

    /// Counts one chunk read from this source (through a handle resolved once: no label
    /// hashing or lock per chunk).
    pub fn count(self) {
        static HANDLES: Lazy<[IntCounter; 4]> =
            Lazy::new(|| SOURCE_LABELS.map(|label| CHUNK_READS.with_label_values(&[label])));
        HANDLES[self.slot()].inc();
    }

    /// This source's counter in [`SOURCE_LABELS`]: by label, not by discriminant (`RamTier`
    /// shares `memory`'s counter).
    fn slot(self) -> usize {
        match self {
            ChunkSource::Memory | ChunkSource::RamTier => 0,
            ChunkSource::CacheStore => 1,
            ChunkSource::Origin => 2,
            ChunkSource::Peer => 3,
        }
    }
}

/// The values of `orca_chunk_reads_total`'s `source` label.
const SOURCE_LABELS: [&str; 4] = ["memory", "cachestore", "origin", "peer"];

/// Counts an answered edge request (`orca_edge_requests_total`) and observes its duration
/// (`orca_edge_request_duration_seconds`). GET and HEAD with the usual statuses go through
/// handles resolved on first use, so the hot path formats no status and hashes no label;
/// other answers are looked up by their labels.
pub fn edge_request_done(method: &http::Method, status: u16, seconds: f64) {
    const STATUSES: [u16; 6] = [200, 206, 304, 404, 403, 412];
    const METHODS: [&str; 2] = ["GET", "HEAD"];
    static COUNTERS: [OnceCell<IntCounter>; 12] = [const { OnceCell::new() }; 12];
    static DURATIONS: [OnceCell<Histogram>; 2] = [const { OnceCell::new() }; 2];
    let m = match *method {
        http::Method::GET => Some(0),
        http::Method::HEAD => Some(1),
        _ => None,
    };
    let Some(m) = m else {
        EDGE_REQUESTS
            .with_label_values(&[method.as_str(), &status.to_string()])
            .inc();
        EDGE_DURATION
            .with_label_values(&[method.as_str()])
            .observe(seconds);
        return;
    };
    match STATUSES.iter().position(|s| *s == status) {
        Some(i) => COUNTERS[m * STATUSES.len() + i]
            .get_or_init(|| EDGE_REQUESTS.with_label_values(&[METHODS[m], &status.to_string()]))
            .inc(),
        None => EDGE_REQUESTS
            .with_label_values(&[METHODS[m], &status.to_string()])
            .inc(),
    }
    DURATIONS[m]
        .get_or_init(|| EDGE_DURATION.with_label_values(&[METHODS[m]]))
        .observe(seconds);
}

/// Forces every family into the registry so `/metrics` lists them from the first scrape.
pub fn init() {
    Lazy::force(&EDGE_REQUESTS);
    Lazy::force(&EDGE_DURATION);
    Lazy::force(&EDGE_BYTES_SENT);
    Lazy::force(&CHUNK_READS);
    for s in SOURCE_LABELS {
        CHUNK_READS.with_label_values(&[s]);
    }
    Lazy::force(&ORIGIN_REQUESTS);
    Lazy::force(&ORIGIN_BYTES);
    Lazy::force(&FILLS_INFLIGHT);
    Lazy::force(&FILL_BUFFERED_BYTES);
    Lazy::force(&FILL_JOINS);
    Lazy::force(&COMMITS);
    for r in ["committed", "lost", "error"] {
        COMMITS.with_label_values(&[r]);
    }
    Lazy::force(&READAHEAD_WAIT_TIMEOUTS);
    Lazy::force(&EDGE_CONNECTIONS);
    Lazy::force(&EDGE_CONNECTIONS_REFUSED);
    // The size families get their `tier` labels from the stores that have them (the bounded
    // `fs` store: `store`), so a store without a bound shows no made-up zeros.
    Lazy::force(&CACHESTORE_BYTES);
    Lazy::force(&CACHESTORE_CHUNKS);
    Lazy::force(&CACHESTORE_CAPACITY);
    Lazy::force(&CACHESTORE_EVICTIONS);
    Lazy::force(&CACHESTORE_EVICTED_BYTES);
    Lazy::force(&PEER_FILLS);
    for r in ["ok", "not_coordinator", "error"] {
        PEER_FILLS.with_label_values(&[r]);
    }
    for r in ["auth", "not_coordinator"] {
        PEER_REJECTED.with_label_values(&[r]);
    }
    for c in [
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "RequestTimeTooSkewed",
    ] {
        EDGE_AUTH_REJECTIONS.with_label_values(&[c]);
    }
    for r in ["ok", "error"] {
        EDGE_AUTH_RELOADS.with_label_values(&[r]);
    }
    // Alone until the cluster says otherwise: the set always holds this replica.
    CLUSTER_PEERS.set(1);
}

/// Renders the registry as Prometheus text.
pub fn render() -> Vec<u8> {
    let mut buf = Vec::with_capacity(8192);
    // Encoding into a Vec cannot fail for well-formed families.
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each source is counted under its own label. The counters were once indexed by the enum's
    /// discriminant, and the RAM tier's variant shifted every later source one label on
    /// (a cache-store hit counted as `origin`, an origin read as `peer`, a peer's out of
    /// bounds); `cluster.rs`'s per-replica origin counts caught it (48 for 24).
    #[test]
    fn each_source_counts_under_its_own_label() {
        use ChunkSource::*;
        for s in [Memory, RamTier, CacheStore, Origin, Peer] {
            assert_eq!(SOURCE_LABELS[s.slot()], s.as_str(), "{s:?}");
        }
    }
}
