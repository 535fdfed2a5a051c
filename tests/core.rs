//! End-to-end behaviour of one Orca replica in front of moto's S3 server: cold and warm reads,
//! ranges, origin economy, version changes, faults and the fs store's contents.
//!
//! Every test starts its own moto, counting/fault proxy and `orca` process on free loopback
//! ports; bytes are compared by sha256 and origin requests are counted by the proxy and by
//! Orca's metrics. No test measures time.

#![allow(clippy::unwrap_used)]

mod common;

use ::orca::chunk::ChunkId;
use common::*;
use std::path::Path;
use std::time::Duration;

const MIB: usize = 1 << 20;
const BUCKET: &str = "bkt";

/// moto, a counting/fault proxy in front of it, and Orca reading through the proxy.
struct Stack {
    moto: Moto,
    proxy: FaultProxy,
    orca: OrcaProcess,
}

impl Stack {
    async fn start(configure: impl FnOnce(OrcaConfig) -> OrcaConfig) -> Stack {
        let moto = Moto::start();
        create_bucket(&moto.endpoint(), BUCKET).await;
        let proxy = FaultProxy::start(&moto.endpoint());
        let orca = OrcaProcess::start(configure(OrcaConfig::new(&proxy.endpoint())));
        Stack { moto, proxy, orca }
    }

    /// Uploads straight to moto; returns the unquoted ETag.
    async fn put(&self, key: &str, data: &[u8]) -> String {
        let etag = put_object(&self.moto.endpoint(), BUCKET, key, data.to_vec()).await;
        etag.trim_matches('"').to_string()
    }

    fn url(&self, key: &str) -> String {
        self.orca.object_url(BUCKET, key)
    }

    fn origin_gets(&self) -> usize {
        self.proxy.counts().gets_with_range
    }
}

/// Checks the fs store directly: every stored chunk of the object holds exactly the origin's
/// bytes for that chunk, and nothing else is stored for it under another name.
fn assert_store_holds_only_good_chunks(root: &Path, key: &str, etag: &str, data: &[u8]) {
    let chunk = MIB as u64;
    let mut good = std::collections::HashMap::new();
    for index in 0..(data.len() as u64).div_ceil(chunk) {
        let id = ChunkId::from_fields("test-origin", BUCKET, key, etag, chunk, index);
        let start = (index * chunk) as usize;
        let end = (start + MIB).min(data.len());
        good.insert(id.name(), &data[start..end]);
    }
    let mut stack = vec![root.join("v1")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if let Some(want) = good.get(&name) {
                let got = std::fs::read(&path).unwrap();
                assert_eq!(
                    sha256_hex(&got),
                    sha256_hex(want),
                    "stored chunk {name} differs from the origin's bytes"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_then_warm_reads_are_byte_exact_and_warm_reads_skip_the_origin() {
    let s = Stack::start(|c| c).await;
    let sizes = [0, 1, MIB - 1, MIB, MIB + 1, 17 * MIB];
    for (i, size) in sizes.iter().enumerate() {
        let key = format!("sizes/{size}");
        let data = deterministic_bytes(i as u64, *size);
        s.put(&key, &data).await;
        let cold = http_get(&s.url(&key), None).await.unwrap();
        assert_eq!(cold.status, 200, "cold {key}");
        assert_eq!(
            cold.header("content-length"),
            Some(size.to_string().as_str())
        );
        assert_eq!(sha256_hex(&cold.body), sha256_hex(&data), "cold {key}");
        let before = s.origin_gets();
        let warm = http_get(&s.url(&key), None).await.unwrap();
        assert_eq!(sha256_hex(&warm.body), sha256_hex(&data), "warm {key}");
        assert_eq!(
            s.origin_gets(),
            before,
            "a warm read of {key} went to the origin"
        );
    }
    // 0 + 1 + 1 + 1 + 2 + 17 chunk GETs in all, each exactly once.
    assert_eq!(s.origin_gets(), 22);
    assert_eq!(
        s.orca
            .metric_value("orca_origin_requests_total{op=\"get\"}"),
        22.0
    );
    assert_eq!(
        s.orca
            .metric_value("orca_chunk_reads_total{source=\"origin\"}"),
        22.0
    );
    // Warm reads come from the store, or from the registry while a commit is still landing.
    let warm = s
        .orca
        .metric_value("orca_chunk_reads_total{source=\"cachestore\"}")
        + s.orca
            .metric_value("orca_chunk_reads_total{source=\"memory\"}");
    assert_eq!(warm, 22.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_are_answered_as_s3_does() {
    let s = Stack::start(|c| c).await;
    let size = 3 * MIB + 5;
    let data = deterministic_bytes(7, size);
    let etag = s.put("ranged", &data).await;
    let url = s.url("ranged");
    let m = MIB as u64;
    let last = size as u64 - 1;
    let mut cases: Vec<(u64, u64)> = vec![(0, 0), (last, last), (m - 5, 2 * m + 5)];
    for boundary in [m, 2 * m, 3 * m] {
        for (a, b) in [
            (boundary - 1, boundary - 1),
            (boundary, boundary),
            (boundary - 1, boundary),
        ] {
            cases.push((a, b));
        }
    }
    for (a, b) in cases {
        let r = http_get(&url, Some(&format!("bytes={a}-{b}")))
            .await
            .unwrap();
        assert_eq!(r.status, 206, "bytes={a}-{b}");
        assert_eq!(r.body, &data[a as usize..=b as usize], "bytes={a}-{b}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {a}-{b}/{size}").as_str())
        );
    }
    // Open-ended, suffix, suffix longer than the object, end past the object.
    let r = http_get(&url, Some("bytes=3145700-")).await.unwrap();
    assert_eq!((r.status, &r.body[..]), (206, &data[3145700..]));
    let r = http_get(&url, Some("bytes=-10")).await.unwrap();
    assert_eq!((r.status, &r.body[..]), (206, &data[size - 10..]));
    let r = http_get(&url, Some("bytes=-99999999")).await.unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 0-{last}/{size}").as_str())
    );
    let r = http_get(&url, Some("bytes=10-99999999")).await.unwrap();
    assert_eq!((r.status, &r.body[..]), (206, &data[10..]));
    // Start past the end: 416 with the size.
    let r = http_get(&url, Some(&format!("bytes={size}-")))
        .await
        .unwrap();
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{size}").as_str())
    );
    assert!(
        r.text().contains("<Code>InvalidRange</Code>"),
        "{}",
        r.text()
    );
    // Several ranges or bad syntax: the whole object with 200.
    for header in ["bytes=0-1,5-6", "bytes=5-2", "bytes=abc", "items=0-1"] {
        let r = http_get(&url, Some(header)).await.unwrap();
        assert_eq!(r.status, 200, "{header}");
        assert_eq!(sha256_hex(&r.body), sha256_hex(&data), "{header}");
    }
    // HEAD: the headers S3 clients rely on.
    let h = http_head(&url).await.unwrap();
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-length"), Some(size.to_string().as_str()));
    assert_eq!(h.header("etag"), Some(format!("\"{etag}\"").as_str()));
    assert_eq!(h.header("accept-ranges"), Some("bytes"));
    assert!(h.header("last-modified").is_some());
    assert!(h.header("x-amz-request-id").is_some());
    // A zero-byte object: 200 empty; a range on it: 416.
    s.put("empty", b"").await;
    let r = http_get(&s.url("empty"), None).await.unwrap();
    assert_eq!((r.status, r.body.len()), (200, 0));
    let r = http_get(&s.url("empty"), Some("bytes=0-0")).await.unwrap();
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */0"));
    // Every chunk was fetched from the origin once, whatever the number of ranges.
    assert_eq!(s.origin_gets(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_reads_fetch_each_chunk_from_the_origin_once() {
    let s = Stack::start(|c| c).await;
    let data = deterministic_bytes(16, 16 * MIB);
    s.put("sixteen", &data).await;
    let want = sha256_hex(&data);
    let mut readers = Vec::new();
    for _ in 0..32 {
        let url = s.url("sixteen");
        readers.push(tokio::spawn(async move { http_get(&url, None).await }));
    }
    for r in readers {
        let r = r.await.unwrap().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(sha256_hex(&r.body), want);
    }
    assert_eq!(s.origin_gets(), 16, "{:?}", s.proxy.counts().log.len());
    assert_eq!(s.proxy.counts().heads, 1);
    assert_eq!(
        s.orca
            .metric_value("orca_origin_requests_total{op=\"get\"}"),
        16.0
    );
    assert_eq!(
        s.orca
            .metric_value("orca_chunk_reads_total{source=\"origin\"}"),
        16.0
    );
    // 32 readers x 16 chunks: the rest came from fills in flight or from the store.
    let total = s.orca.metric_value("orca_chunk_reads_total");
    assert_eq!(total, 32.0 * 16.0);
    let joins = s.orca.metric_value("orca_fill_joins_total");
    assert_eq!(
        joins,
        s.orca
            .metric_value("orca_chunk_reads_total{source=\"memory\"}")
    );
    // Warm: zero more origin GETs.
    let r = http_get(&s.url("sixteen"), None).await.unwrap();
    assert_eq!(sha256_hex(&r.body), want);
    assert_eq!(s.origin_gets(), 16);
    s.orca.wait_metric_at_least(
        "orca_cachestore_commits_total{result=\"committed\"}",
        16.0,
        Duration::from_secs(20),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_object_is_served_after_the_ttl_and_never_mixed() {
    let s = Stack::start(|c| c.metadata_ttl("1s").readahead(2)).await;
    let v1 = deterministic_bytes(1, 4 * MIB);
    let v2 = deterministic_bytes(2, 4 * MIB);
    s.put("obj", &v1).await;
    // Read only the first chunk, so later chunks of v1 are not cached yet.
    let r = http_get(&s.url("obj"), Some("bytes=0-9")).await.unwrap();
    assert_eq!(r.body, &v1[..10]);
    s.put("obj", &v2).await;
    // Within the TTL the pinned version is v1: chunk 0 is cached, the others are asked of the
    // origin with If-Match v1 and refused. The answer is v1 whole, or an error: never a mix.
    match http_get(&s.url("obj"), None).await {
        Ok(r) if r.status == 200 => assert_eq!(sha256_hex(&r.body), sha256_hex(&v1)),
        Ok(r) => {
            assert_eq!(r.status, 503, "{}", r.text());
            assert!(r.text().contains("OriginObjectChanged"), "{}", r.text());
        }
        Err(e) => assert!(e.is_body_error(), "{e:?}"),
    }
    // After the TTL (and at once after a refused If-Match), the new version, whole.
    let mut got_v2 = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Ok(r) = http_get(&s.url("obj"), None).await {
            if r.status == 200 {
                let h = sha256_hex(&r.body);
                assert!(
                    h == sha256_hex(&v1) || h == sha256_hex(&v2),
                    "a mixed response"
                );
                if h == sha256_hex(&v2) {
                    got_v2 = true;
                    break;
                }
            }
        }
    }
    assert!(got_v2, "the new version was never served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_is_a_visible_error_and_never_stored() {
    let s = Stack::start(|c| c).await;
    let data = deterministic_bytes(3, 3 * MIB);
    let etag = s.put("cut", &data).await;
    s.proxy.push_fault(
        FaultRule::new(Fault::CutBodyAfter(100_000))
            .method("GET")
            .with_range()
            .times(1),
    );
    match http_get(&s.url("cut"), None).await {
        Ok(r) => {
            // The cut hit a chunk whose bytes had not reached the client: an XML error, or a
            // complete and exact body (never a short "success").
            assert_ne!(r.status, 200, "a cut body was served as complete");
            assert!(r.text().contains("<Error>"), "{}", r.text());
        }
        Err(e) => assert!(e.is_body_error(), "{e:?}"),
    }
    // Nothing wrong was stored: the next read is exact.
    let r = http_get(&s.url("cut"), None).await.unwrap();
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    assert_store_holds_only_good_chunks(s.orca.cache_root(), "cut", &etag, &data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_mid_body_is_a_visible_error_and_never_stored() {
    let s = Stack::start(|c| c).await;
    let data = deterministic_bytes(4, 3 * MIB);
    let etag = s.put("reset", &data).await;
    s.proxy.push_fault(
        FaultRule::new(Fault::ResetAfter(300_000))
            .method("GET")
            .with_range()
            .times(1),
    );
    match http_get(&s.url("reset"), None).await {
        Ok(r) => assert_ne!(r.status, 200, "a reset body was served as complete"),
        Err(e) => assert!(e.is_body_error(), "{e:?}"),
    }
    let r = http_get(&s.url("reset"), None).await.unwrap();
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    assert_store_holds_only_good_chunks(s.orca.cache_root(), "reset", &etag, &data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_origin_errors_are_retried_before_the_first_byte() {
    let s = Stack::start(|c| c).await;
    let data = deterministic_bytes(5, 2 * MIB);
    let etag = s.put("flaky", &data).await;
    // Two 503s for the first chunk GET, then the origin recovers.
    s.proxy.push_fault(
        FaultRule::new(Fault::Status(503))
            .method("GET")
            .with_range()
            .times(2),
    );
    let r = http_get(&s.url("flaky"), None).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    assert_eq!(s.origin_gets(), 4, "2 refused + 2 chunks");
    assert_store_holds_only_good_chunks(s.orca.cache_root(), "flaky", &etag, &data);
    // An origin that keeps failing: a proper XML error before any byte.
    s.put("down", &data).await;
    s.proxy.push_fault(
        FaultRule::new(Fault::Status(503))
            .method("GET")
            .path_contains("/down")
            .times(10),
    );
    let r = http_get(&s.url("down"), None).await.unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.text().contains("<Code>OriginUnavailable</Code>"),
        "{}",
        r.text()
    );
    assert!(r.header("x-amz-request-id").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etag_change_between_head_and_get_is_refused_and_recovers() {
    let s = Stack::start(|c| c).await;
    // One chunk, so the faulted GET is the first chunk's: refused before any byte is sent.
    let one = deterministic_bytes(6, MIB);
    s.put("moving", &one).await;
    // The origin answers the chunk GET with another ETag: the object changed under us.
    s.proxy.push_fault(
        FaultRule::new(Fault::ReplaceEtag(
            "\"0123456789abcdef0123456789abcdef\"".into(),
        ))
        .method("GET")
        .with_range()
        .times(1),
    );
    let r = http_get(&s.url("moving"), None).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text().contains("<Code>OriginObjectChanged</Code>"),
        "{}",
        r.text()
    );
    let r = http_get(&s.url("moving"), None).await.unwrap();
    assert_eq!(sha256_hex(&r.body), sha256_hex(&one));

    // A real change at the origin after HEAD: moto refuses the pinned If-Match with 412.
    let data = deterministic_bytes(61, 2 * MIB);
    let v2 = deterministic_bytes(60, 2 * MIB);
    s.put("real", &data).await;
    let h = http_head(&s.url("real")).await.unwrap();
    assert_eq!(h.status, 200);
    let etag_v2 = s.put("real", &v2).await;
    let r = http_get(&s.url("real"), None).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("OriginObjectChanged"));
    // The refusal dropped the pinned version: the next read is the new one, whole.
    let r = http_get(&s.url("real"), None).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(sha256_hex(&r.body), sha256_hex(&v2));
    assert_store_holds_only_good_chunks(s.orca.cache_root(), "real", &etag_v2, &v2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_s3_xml_with_a_request_id() {
    let s = Stack::start(|c| c).await;
    s.put("here", b"x").await;
    let r = http_get(&s.url("missing"), None).await.unwrap();
    assert_eq!(r.status, 404);
    let text = r.text();
    assert!(text.contains("<Code>NoSuchKey</Code>"), "{text}");
    let id = r.header("x-amz-request-id").unwrap().to_string();
    assert!(
        text.contains(&format!("<RequestId>{id}</RequestId>")),
        "{text}"
    );
    assert!(
        text.contains(&format!("<Resource>/{BUCKET}/missing</Resource>")),
        "{text}"
    );
    // The 404 is kept for the negative TTL: one HEAD for two misses.
    let heads = s.proxy.counts().heads;
    let _ = http_get(&s.url("missing"), None).await.unwrap();
    assert_eq!(s.proxy.counts().heads, heads);
    for method in ["PUT", "POST", "DELETE"] {
        let r = http_request(method, &s.url("here"), &[], Some(b"data".to_vec()))
            .await
            .unwrap();
        assert_eq!(r.status, 405, "{method}");
        assert!(r.text().contains("<Code>MethodNotAllowed</Code>"));
    }
    let r = raw_request(
        &s.orca.edge_addr(),
        "GET",
        &format!("/{BUCKET}/bad%zzkey"),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("InvalidURI"));
    let r = http_get(&format!("{}?acl", s.url("here")), None)
        .await
        .unwrap();
    assert_eq!(r.status, 501);
    // Ops.
    assert_eq!(s.orca.ops_get("/healthz").0, 200);
    assert_eq!(s.orca.ops_get("/readyz").0, 200);
    let metrics = s.orca.metrics();
    for family in [
        "orca_edge_requests_total",
        "orca_edge_request_duration_seconds",
        "orca_edge_bytes_sent_total",
        "orca_chunk_reads_total",
        "orca_origin_requests_total",
        "orca_origin_bytes_total",
        "orca_fills_inflight",
        "orca_fill_joins_total",
        "orca_cachestore_commits_total",
    ] {
        assert!(metrics.contains(family), "{family} missing from /metrics");
    }
    assert!(
        s.orca
            .metric_value("orca_edge_requests_total{method=\"GET\",status=\"404\"}")
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_download_finish() {
    let s = Stack::start(|c| {
        c.readahead(1)
            .pingora_extra_yaml("grace_period_seconds: 5\n")
    })
    .await;
    let data = deterministic_bytes(9, 8 * MIB);
    s.put("long", &data).await;
    let client = http_client();
    let mut resp = client.get(s.url("long")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = Vec::new();
    let mut signalled = false;
    while let Some(piece) = resp.chunk().await.unwrap() {
        got.extend_from_slice(&piece);
        if !signalled && got.len() >= 64 * 1024 {
            // Mid-download: most chunks are not fetched yet (read-ahead 1).
            s.orca.sigterm();
            signalled = true;
        }
        // A slow reader: the rest of the chunks are fetched after the signal.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(signalled);
    assert_eq!(sha256_hex(&got), sha256_hex(&data));
    assert_eq!(s.origin_gets(), 8);
    let mut orca = s.orca;
    let status = orca.wait_exit(Duration::from_secs(30));
    assert!(status.is_some(), "orca did not exit after the grace period");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_right_after_the_origin_header_fails_cleanly_without_a_second_writer() {
    let s = Stack::start(|c| c).await;
    let data = deterministic_bytes(10, MIB);
    let etag = s.put("zero", &data).await;
    // The origin's 206 header arrives and is accepted, then the connection closes before any
    // body byte: no retry may register a second writer for the chunk.
    s.proxy.push_fault(
        FaultRule::new(Fault::CutBodyAfter(0))
            .method("GET")
            .with_range()
            .times(1),
    );
    match http_get(&s.url("zero"), None).await {
        Ok(r) => {
            assert_ne!(r.status, 200, "an empty body was served as complete");
            assert!(r.text().contains("<Error>"), "{}", r.text());
        }
        Err(e) => assert!(e.is_body_error(), "{e:?}"),
    }
    assert_eq!(s.origin_gets(), 1, "the accepted answer was retried");
    let r = http_get(&s.url("zero"), None).await.unwrap();
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    assert_eq!(s.orca.ops_get("/healthz").0, 200);
    assert!(!s.orca.log().contains("panicked"), "{}", s.orca.log_tail());
    assert_store_holds_only_good_chunks(s.orca.cache_root(), "zero", &etag, &data);
}
