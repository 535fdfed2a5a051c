//! The local tier in front of the shared store (`cachestore.local` with `driver: s3`), end to
//! end: a fleet of `orca` binaries sharing a moto bucket as their cache store, each with a
//! bounded local directory. The shared store is reached through a counting proxy, so the
//! tests count every request a read makes of it; each replica reaches the origin (moto)
//! through a proxy of its own. Counts come from the proxies and from Orca's metrics, never
//! from time.

#![allow(clippy::unwrap_used)]

mod common;

use ::orca::cachestore::s3::S3Store;
use ::orca::chunk::ChunkId;
use common::orca::{metric_value, metric_value_opt, yaml_str};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MIB: usize = 1 << 20;
const BUCKET: &str = "bkt";
const STORE_BUCKET: &str = "orca-cache";
/// Fills in flight per replica (`limits.origin_concurrency`).
const CONCURRENCY: u32 = 4;
const WAIT: Duration = Duration::from_secs(60);

/// The shared [`common::Fleet`] with a proxy in front of the shared store and each replica's
/// local tier.
struct Fleet {
    inner: common::Fleet,
    /// In front of the shared store, for every replica: counts what reads cost it.
    store_proxy: FaultProxy,
    /// Each replica's local tier root.
    local_roots: Vec<PathBuf>,
}

impl std::ops::Deref for Fleet {
    type Target = common::Fleet;
    fn deref(&self) -> &common::Fleet {
        &self.inner
    }
}

impl Fleet {
    /// `n` replicas, each a peer of the others, sharing the store bucket, each with a local
    /// tier of `local_max` (and no `min_free`, so the bound is `local_max` on any disk).
    async fn start(n: usize, local_max: &str) -> Fleet {
        let moto = Moto::start();
        let store_proxy = FaultProxy::start(&moto.endpoint());
        let store = store_proxy.endpoint();
        let inner = common::Fleet::start_on(moto, n, &[BUCKET, STORE_BUCKET], |m| {
            let root = m.dir.join(format!("local-{}", m.index));
            let cluster = if n > 1 {
                m.everyone("")
            } else {
                String::new()
            };
            m.config()
                .chunk_size("1MiB")
                .readahead(2)
                .origin_concurrency(CONCURRENCY)
                .env("ORCA_CACHESTORE_ACCESS_KEY_ID", "test")
                .env("ORCA_CACHESTORE_SECRET_ACCESS_KEY", "test")
                .extra_yaml(&format!(
                    "{cluster}cachestore:\n  driver: s3\n  s3:\n    endpoint: {store}\n    bucket: {STORE_BUCKET}\n    path_style: true\n  local:\n    root: {}\n    max_size: {local_max}\n    min_free: 0\n",
                    yaml_str(&root.to_string_lossy()),
                ))
        })
        .await;
        let local_roots = (0..n)
            .map(|i| inner.dir.path().join(format!("local-{i}")))
            .collect();
        Fleet {
            inner,
            store_proxy,
            local_roots,
        }
    }

    async fn get_range_exact(
        &self,
        replica: usize,
        key: &str,
        data: &[u8],
        first: usize,
        last: usize,
    ) {
        let orca = &self.replicas[replica];
        let range = format!("bytes={first}-{last}");
        let r = http_get(&orca.object_url(BUCKET, key), Some(&range))
            .await
            .unwrap_or_else(|e| {
                panic!("GET {key} {range} via {replica}: {e}\n{}", orca.log_tail())
            });
        assert_eq!(
            r.status,
            206,
            "GET {key} {range} via {replica}\n{}",
            orca.log_tail()
        );
        assert_eq!(
            r.body,
            &data[first..=last],
            "GET {key} {range} via {replica}"
        );
    }

    /// Origin chunk GETs (ranged) across the fleet of objects whose key contains `part`.
    fn origin_gets_of(&self, part: &str) -> usize {
        self.proxies
            .iter()
            .flat_map(|p| p.counts().log)
            .filter(|r| r.method == "GET" && r.range.is_some() && r.path().contains(part))
            .count()
    }

    /// The sum over the replicas of a metric.
    async fn sum(&self, query: &str) -> f64 {
        let mut sum = 0.0;
        for r in &self.replicas {
            sum += r.metric_value_async(query).await;
        }
        sum
    }

    async fn local_chunks(&self, replica: usize) -> f64 {
        self.replicas[replica]
            .metric_value_async("orca_cachestore_chunks{tier=\"local\"}")
            .await
    }

    /// Waits until every replica's local tier holds at least `n` chunks.
    async fn wait_local_chunks(&self, n: f64) {
        for orca in &self.replicas {
            orca.wait_metric_at_least("orca_cachestore_chunks{tier=\"local\"}", n, WAIT)
                .await;
        }
    }

    /// Waits until the local tiers of the fleet hold at least `n` chunks in all (a fill's
    /// commit writes the shared store first, then the coordinator's local tier).
    async fn wait_fleet_local_chunks(&self, n: f64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut sum = 0.0;
            for i in 0..self.replicas.len() {
                sum += self.local_chunks(i).await;
            }
            if sum >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the fleet's local tiers hold {sum} chunks, never {n}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn chunk_id(key: &str, etag: &str, index: u64) -> ChunkId {
    ChunkId::from_fields("test-origin", BUCKET, key, etag, MIB as u64, index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_warm_read_of_a_hot_object_makes_no_request_to_the_shared_store() {
    let fleet = Fleet::start(3, "64MiB").await;
    let data = deterministic_bytes(1, 4 * MIB);
    fleet.put("hot/object", &data).await;
    // Cold: filled by the chunks' coordinators, committed to the shared store and their tiers.
    fleet.get_exact(0, "hot/object", &data).await;
    assert_eq!(fleet.origin_gets_of("hot/"), 4);
    fleet.wait_fleet_local_chunks(4.0).await;
    // Warm-up through each replica: shared hits, admitted to each local tier.
    for i in 0..3 {
        fleet.get_exact(i, "hot/object", &data).await;
    }
    fleet.wait_local_chunks(4.0).await;
    let store_gets = fleet.store_proxy.counts().gets();
    assert!(store_gets > 0, "the warm-up read the shared store");

    fleet.store_proxy.reset_counts();
    let hits_before = fleet
        .sum("orca_chunk_reads_total{source=\"cachestore\"}")
        .await;
    for round in 0..3 {
        for i in 0..3 {
            fleet.get_exact(i, "hot/object", &data).await;
        }
        let counts = fleet.store_proxy.counts();
        assert_eq!(
            counts.total,
            0,
            "round {round}: warm reads asked the shared store: {:?}",
            counts
                .log
                .iter()
                .map(|r| format!("{} {}", r.method, r.target))
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(
        fleet.origin_gets_of("hot/"),
        4,
        "no origin GET after the cold read"
    );
    let hits_after = fleet
        .sum("orca_chunk_reads_total{source=\"cachestore\"}")
        .await;
    assert_eq!(
        hits_after - hits_before,
        36.0,
        "3 rounds x 3 replicas x 4 chunks, all hits"
    );
    // The shared store itself publishes no size; the local tiers do.
    for r in &fleet.replicas {
        let metrics = r.metrics_async().await;
        assert!(
            metric_value(&metrics, "orca_cachestore_bytes{tier=\"local\"}") >= 4.0 * MIB as f64
        );
        let capacity = metric_value(&metrics, "orca_cachestore_capacity_bytes{tier=\"local\"}");
        assert!(capacity <= 64.0 * MIB as f64);
        assert_eq!(
            metric_value_opt(&metrics, "orca_cachestore_bytes{tier=\"store\"}"),
            None
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ranged_warm_reads_inside_chunks_make_no_request_to_the_shared_store_either() {
    let fleet = Fleet::start(2, "64MiB").await;
    let data = deterministic_bytes(3, 2 * MIB);
    fleet.put("ranged/object", &data).await;
    // Inside chunk 0 and inside chunk 1: no read of a whole chunk, ever.
    let ranges = [(100, 199), (MIB + 5, MIB + 4100)];
    for (first, last) in ranges {
        fleet
            .get_range_exact(0, "ranged/object", &data, first, last)
            .await;
    }
    assert_eq!(fleet.origin_gets_of("ranged/"), 2, "fills are whole chunks");
    fleet.wait_fleet_local_chunks(2.0).await;
    // Warm-up: partial shared hits, each promoting its whole chunk to the local tier.
    for i in 0..2 {
        for (first, last) in ranges {
            fleet
                .get_range_exact(i, "ranged/object", &data, first, last)
                .await;
        }
    }
    fleet.wait_local_chunks(2.0).await;
    fleet.store_proxy.reset_counts();
    for i in 0..2 {
        for (first, last) in ranges {
            fleet
                .get_range_exact(i, "ranged/object", &data, first, last)
                .await;
        }
        fleet.get_exact(i, "ranged/object", &data).await;
    }
    let counts = fleet.store_proxy.counts();
    assert_eq!(
        counts.total,
        0,
        "warm ranged reads asked the shared store: {:?}",
        counts
            .log
            .iter()
            .map(|r| format!("{} {}", r.method, r.target))
            .collect::<Vec<_>>()
    );
    assert_eq!(fleet.origin_gets_of("ranged/"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_deleted_from_the_shared_store_and_the_local_tiers_is_refilled_once() {
    let fleet = Fleet::start(2, "64MiB").await;
    let data = deterministic_bytes(2, 2 * MIB);
    let etag = fleet.put("gone/object", &data).await;
    fleet.get_exact(0, "gone/object", &data).await;
    fleet.wait_fleet_local_chunks(2.0).await;
    for i in 0..2 {
        fleet.get_exact(i, "gone/object", &data).await;
    }
    fleet.wait_local_chunks(2.0).await;
    assert_eq!(fleet.origin_gets_of("gone/"), 2);

    // Chunk 1 vanishes everywhere: a lifecycle rule on the bucket, a hand on each disk.
    let id = chunk_id("gone/object", &etag, 1);
    let object = S3Store::object_key(&id);
    let store = fleet.moto.endpoint();
    assert!(head_object(&store, STORE_BUCKET, &object).await.is_some());
    delete_object(&store, STORE_BUCKET, &object).await;
    for root in &fleet.local_roots {
        std::fs::remove_file(fs_chunk_path(root, &id)).unwrap();
    }
    // Every replica reads it again: one fill from the origin, and the fleet has it again.
    fleet.get_exact(1, "gone/object", &data).await;
    assert_eq!(
        fleet.origin_gets_of("gone/"),
        3,
        "{}",
        fleet.replicas[1].log_tail()
    );
    let mut stored = None;
    for _ in 0..600 {
        stored = head_object(&store, STORE_BUCKET, &object)
            .await
            .map(|h| h.size);
        if stored.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stored, Some(MIB as u64), "the chunk was stored again");
    for i in 0..2 {
        fleet.get_exact(i, "gone/object", &data).await;
    }
    assert_eq!(fleet.origin_gets_of("gone/"), 3, "refilled once, then hits");
    // Both local tiers have it again, and then a warm read costs the shared store nothing.
    let back = poll_until(WAIT, || {
        fleet
            .local_roots
            .iter()
            .all(|r| fs_chunk_path(r, &id).exists())
            .then_some(())
    });
    assert!(back.is_some(), "admitted to both local tiers again");
    fleet.store_proxy.reset_counts();
    for i in 0..2 {
        fleet.get_exact(i, "gone/object", &data).await;
    }
    assert_eq!(fleet.store_proxy.counts().total, 0);
    for r in &fleet.replicas {
        assert_eq!(
            r.metric_value_async("orca_edge_requests_total{status=\"200\"}")
                .await,
            4.0
        );
    }
}

/// The directory's size as `du` counts it (blocks, hard links once), in bytes.
fn du(dir: &Path) -> u64 {
    // Files come and go while it walks (commits, evictions): its complaints are expected.
    let out = Command::new("du")
        .args(["-s", "-B1"])
        .arg(dir)
        .output()
        .expect("run du");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_local_tier_keeps_its_bound_and_what_it_evicted_comes_from_the_shared_store() {
    let bound = 8 * MIB as u64;
    let fleet = Fleet::start(1, "8MiB").await;
    let root = fleet.local_roots[0].clone();
    // 8 objects of 4 chunks: 32 chunks, four times the bound.
    let mut objects = Vec::new();
    for i in 0..8u64 {
        let key = format!("scan/{i}");
        let data = deterministic_bytes(100 + i, 4 * MIB);
        fleet.put(&key, &data).await;
        objects.push((key, data));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, root) = (stop.clone(), root.clone());
        std::thread::spawn(move || {
            let mut max = 0;
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                max = max.max(du(&root));
                std::thread::sleep(Duration::from_millis(2));
            }
            max
        })
    };
    for (key, data) in &objects {
        fleet.get_exact(0, key, data).await;
    }
    let orca = &fleet.replicas[0];
    orca.wait_metric_at_least("orca_cachestore_commits_total", 32.0, WAIT)
        .await;
    // The second pass: what the local tier evicted is read from the shared store, not the
    // origin.
    for (key, data) in &objects {
        fleet.get_exact(0, key, data).await;
    }
    stop.store(true, Ordering::Relaxed);
    let max = sampler.join().unwrap();
    // The fs store's documented overshoot (one 4 KiB block per commit in progress), plus up
    // to one chunk for a `du` walk that races evictions and commits.
    let limit = bound + u64::from(CONCURRENCY) * 4096 + MIB as u64;
    eprintln!("largest local tier seen: {max} bytes (bound {bound}, limit {limit})");
    assert!(
        max <= limit,
        "local tier reached {max} bytes, limit {limit}"
    );
    assert_eq!(
        fleet.origin_gets_of("scan/"),
        32,
        "evicted chunks came from the shared store"
    );
    assert!(fleet.store_proxy.counts().gets() >= 32);
    let metrics = orca.metrics_async().await;
    let evicted = metric_value(&metrics, "orca_cachestore_evictions_total{tier=\"local\"}");
    assert!(evicted >= 24.0, "{evicted} local evictions");
    assert_eq!(
        metric_value_opt(&metrics, "orca_cachestore_evictions_total{tier=\"store\"}"),
        None,
        "only the local tier evicts"
    );
    // The bytes gauge agrees with the directory within a chunk, once commits settled.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let gauge = orca
            .metric_value_async("orca_cachestore_bytes{tier=\"local\"}")
            .await;
        let on_disk = du(&root) as f64;
        if (gauge - on_disk).abs() <= MIB as f64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the local bytes gauge ({gauge}) never agreed with du ({on_disk})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(du(&root) <= bound + u64::from(CONCURRENCY) * 4096);
}
