//! The RAM tier (`cachestore.memory.max_size`), end to end: the orca binary with moto as the
//! origin (through the counting proxy) and as the shared store (through a second counting
//! proxy), or with a bounded `fs` store. Hot reads come from memory and make no request of the
//! store or the origin; many clients reading many objects keep the tier within its bound (its
//! bytes gauge, sampled throughout) and the process's RSS within the bound plus a fixed
//! overhead; a purge drops chunks from the tier. Every byte is checked.

#![allow(clippy::unwrap_used)]

mod common;

use common::orca::{metric_value, yaml_str};
use common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MIB: usize = 1 << 20;
const WAIT: Duration = Duration::from_secs(60);
const STORE_BUCKET: &str = "orca-cache";
const TOKEN: &str = "memory-tier-t0ken";

fn memory_bytes(metrics: &str) -> f64 {
    metric_value(metrics, "orca_cachestore_bytes{tier=\"memory\"}")
}

/// Hot reads are served by the RAM tier: `orca_chunk_reads_total{source="memory"}` counts
/// them, and neither the shared store nor the origin sees a request (counted by their
/// proxies). The tier was filled by the cold read's fill itself. A purge drops the chunks from
/// the tier (and the store): the next read fills again.
///
/// Seen failing against deliberately broken builds: with the tier never consulted on reads,
/// the store proxy counts 16 GETs; with fills not admitted (only store hits), the tier never
/// reaches 4 chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reads_come_from_memory_and_never_touch_the_store_or_the_origin() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let moto = Moto::start();
    create_bucket(&moto.endpoint(), STORE_BUCKET).await;
    let store_proxy = FaultProxy::start(&moto.endpoint());
    let s = Stack::start(Origin::S3, "hot", |c| {
        c.chunk_size("1MiB")
            .env("ORCA_CACHESTORE_ACCESS_KEY_ID", "test")
            .env("ORCA_CACHESTORE_SECRET_ACCESS_KEY", "test")
            .extra_yaml(&format!(
                "cachestore:\n  driver: s3\n  s3:\n    endpoint: {}\n    bucket: {STORE_BUCKET}\n    path_style: true\n  memory:\n    max_size: 16MiB\nops:\n  admin_token_file: {}\n",
                store_proxy.endpoint(),
                yaml_str(&token_file.to_string_lossy()),
            ))
    })
    .await;
    let data = deterministic_bytes(13, 4 * MIB);
    s.put("obj", &data).await;
    let get = |range: Option<String>| {
        let url = s.url("obj");
        async move { http_get(&url, range.as_deref()).await.unwrap() }
    };
    let r = get(None).await;
    assert_eq!(r.status, 200, "{}", s.orca.log_tail());
    assert!(r.body == data, "cold read byte-exact");
    assert_eq!(s.origin_gets(), 4);
    // Admitted from the fill (its writer's read of the whole chunk), off the client's path.
    s.orca
        .wait_metric_at_least("orca_cachestore_chunks{tier=\"memory\"}", 4.0, WAIT)
        .await;
    let metrics = s.orca.metrics_async().await;
    assert_eq!(memory_bytes(&metrics), (4 * MIB) as f64);
    assert_eq!(
        metric_value(&metrics, "orca_cachestore_capacity_bytes{tier=\"memory\"}"),
        (16 * MIB) as f64
    );
    let memory_before = metric_value(&metrics, "orca_chunk_reads_total{source=\"memory\"}");
    let store_before = metric_value(&metrics, "orca_chunk_reads_total{source=\"cachestore\"}");
    store_proxy.reset_counts();

    for _ in 0..3 {
        let r = get(None).await;
        assert_eq!(r.status, 200);
        assert!(r.body == data, "warm read byte-exact");
    }
    // Ranges inside a chunk and across two.
    for (first, last) in [(100, 4099), (MIB - 10, MIB + 10), (3 * MIB, 4 * MIB - 1)] {
        let r = get(Some(format!("bytes={first}-{last}"))).await;
        assert_eq!(r.status, 206);
        assert_eq!(r.body, &data[first..=last]);
    }
    let counts = store_proxy.counts();
    assert_eq!(
        counts.total,
        0,
        "hot reads asked the store: {:?}",
        counts
            .log
            .iter()
            .map(|r| format!("{} {}", r.method, r.target))
            .collect::<Vec<_>>()
    );
    assert_eq!(s.origin_gets(), 4, "no origin GET after the cold read");
    let metrics = s.orca.metrics_async().await;
    assert_eq!(
        metric_value(&metrics, "orca_chunk_reads_total{source=\"memory\"}") - memory_before,
        (3 * 4 + 1 + 2 + 1) as f64,
        "every chunk read came from memory"
    );
    assert_eq!(
        metric_value(&metrics, "orca_chunk_reads_total{source=\"cachestore\"}"),
        store_before
    );

    // A purge drops the chunks from the tier (and the store): the next read fills again.
    let url = format!("{}/cache/purge?bucket=hot&key=obj", s.orca.ops_url());
    let r = send(
        http_client()
            .post(&url)
            .header("authorization", format!("Bearer {TOKEN}")),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let report: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let memory = &report["replicas"][0]["tiers"]["memory"];
    assert_eq!(memory["chunks"], 4, "{report}");
    let metrics = s.orca.metrics_async().await;
    assert_eq!(memory_bytes(&metrics), 0.0);
    let r = get(None).await;
    assert!(r.body == data);
    assert_eq!(s.origin_gets(), 8, "purged from every tier: filled again");
}

/// 32 clients read 96 distinct 1 MiB objects (six times the tier's 16 MiB) in a shuffled
/// order, a hot eighth of them over and over: the tier's bytes gauge, sampled throughout,
/// never exceeds its bound; the process's RSS grows by at most the bound plus a fixed overhead
/// (the read-ahead budget, the fills' windows, buffers; measured in `docs/operations.md`);
/// every byte is exact; the tier evicts and serves hits.
///
/// Seen failing against a deliberately broken build (no room made before an admission: the
/// tier grows with every chunk read): the gauge reached 96 MiB and RSS grew by 108 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_clients_keep_the_tier_and_the_process_within_the_bound() {
    const BOUND: u64 = 16 * MIB as u64;
    const OBJECTS: usize = 96;
    const CLIENTS: usize = 32;
    /// What the process may grow by besides the tier: the read-ahead budget (16 MiB here:
    /// it also bounds evicted chunks that readers still hold), and 40 MiB for the rest (the
    /// fills' windows, one admission's copy, idle piece buffers, connections, allocator
    /// slack). Measured: 14 MiB of growth with the tier off, 51 to 56 MiB with it on (16 of it
    /// the tier); see docs/operations.md.
    const OVERHEAD: u64 = 16 * MIB as u64 + 40 * MIB as u64;
    let root = tempfile::tempdir().unwrap();
    let s = Stack::start(Origin::S3, "many", |c| {
        c.chunk_size("1MiB")
            .readahead(2)
            .origin_concurrency(4)
            .cache_root(root.path())
            .extra_yaml(&format!(
                "cachestore:\n  driver: fs\n  fs:\n    root: {}\n    max_size: 1GiB\n    min_free: 0\n  memory:\n    max_size: {BOUND}\nlimits:\n  origin_concurrency: 4\n  readahead_memory: 16MiB\n",
                yaml_str(&root.path().to_string_lossy()),
            ))
    })
    .await;
    let objects: Vec<Vec<u8>> = (0..OBJECTS)
        .map(|i| deterministic_bytes(1000 + i as u64, MIB))
        .collect();
    for (i, data) in objects.iter().enumerate() {
        s.put(&format!("o{i}"), data).await;
    }
    s.put("small", b"warm up").await;
    let r = http_get(&s.url("small"), None).await.unwrap();
    assert_eq!(r.body, b"warm up");
    let pid = s.orca.pid();
    let baseline = rss_bytes(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let max_rss = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, max_rss) = (stop.clone(), max_rss.clone());
        let metrics_url = format!("{}/metrics", s.orca.ops_url());
        tokio::spawn(async move {
            let (mut max_gauge, mut samples) = (0.0f64, 0u32);
            // Bounded: at most 10 minutes of samples.
            for _ in 0..30_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(r) = http_get(&metrics_url, None).await {
                    max_gauge = max_gauge.max(memory_bytes(&r.text()));
                    samples += 1;
                }
                max_rss.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (max_gauge, samples)
        })
    };
    let objects = Arc::new(objects);
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (objects, url) = (objects.clone(), s.url(""));
        clients.push(tokio::spawn(async move {
            // A fixed pseudo-random walk: every object once per client over the run, and
            // the hot eighth (o0..o11) between every two reads.
            let mut x = (c as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            for step in 0..2 * OBJECTS / 4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = if step % 2 == 0 {
                    (x % (OBJECTS as u64 / 8)) as usize
                } else {
                    (x % OBJECTS as u64) as usize
                };
                let r = http_get(&format!("{url}o{i}"), None).await.unwrap();
                assert_eq!(r.status, 200, "client {c} o{i}");
                assert!(r.body == objects[i], "client {c} o{i}: bytes differ");
            }
        }));
    }
    for c in clients {
        tokio::time::timeout(Duration::from_secs(300), c)
            .await
            .expect("clients done in time")
            .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let (max_gauge, samples) = sampler.await.unwrap();
    let metrics = s.orca.metrics_async().await;
    let grown = max_rss.load(Ordering::Relaxed).saturating_sub(baseline);
    eprintln!(
        "RSS grew by {} MiB (baseline {} MiB); the tier's gauge reached {} MiB",
        grown / MIB as u64,
        baseline / MIB as u64,
        max_gauge / MIB as f64
    );
    assert!(samples >= 5, "{samples} samples");
    assert!(
        max_gauge <= BOUND as f64,
        "the tier's bytes gauge reached {max_gauge} (bound {BOUND})"
    );
    assert!(memory_bytes(&metrics) <= BOUND as f64);
    let evictions = metric_value(&metrics, "orca_cachestore_evictions_total{tier=\"memory\"}");
    assert!(evictions > 0.0, "six times the bound went through it");
    let evicted_bytes = metric_value(
        &metrics,
        "orca_cachestore_evicted_bytes_total{tier=\"memory\"}",
    );
    // Every chunk is 1 MiB, but for the 7-byte warm-up object's.
    assert!(
        evicted_bytes > (evictions - 1.0) * MIB as f64 && evicted_bytes <= evictions * MIB as f64,
        "{evictions} evictions freed {evicted_bytes} bytes"
    );
    let hits = metric_value(&metrics, "orca_chunk_reads_total{source=\"memory\"}");
    assert!(hits > 0.0, "the hot objects were served from memory");
    eprintln!("{hits} memory hits; {evictions} evictions");
    assert!(
        grown <= BOUND + OVERHEAD,
        "RSS grew by {} MiB, more than the bound plus the overhead ({} MiB)",
        grown / MIB as u64,
        (BOUND + OVERHEAD) / MIB as u64
    );
}
