//! What single configuration keys do, end to end: `chunking.tiers` choosing an object's chunk
//! size, `metadata.max_entries` evicting remembered objects, an `anonymous` origin sending
//! unsigned requests, and `logging.format: json` writing one JSON object per line.
//!
//! Each test starts its own moto, counting proxy and `orca` on free loopback ports and counts
//! what reached the origin; nothing measures time.

#![allow(clippy::unwrap_used)]

mod common;

use common::cases::assert_store_holds_only_good_chunks;
use common::*;

const MIB: usize = 1 << 20;
const BUCKET: &str = "settings";

/// The chunk GET ranges the origin saw for `key`, in arrival order.
fn ranges_of(s: &Stack, key: &str) -> Vec<String> {
    let suffix = format!("/{BUCKET}/{key}");
    s.proxy
        .counts()
        .log
        .iter()
        .filter(|r| r.method == "GET" && r.path().ends_with(&suffix))
        .map(|r| r.range.clone().unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunking_tiers_choose_the_chunk_size_by_object_size() {
    // 1 MiB chunks below 3 MiB, 2 MiB chunks from 3 MiB on.
    let s = Stack::start(Origin::S3, BUCKET, |c| {
        c.extra_yaml(
            "chunking:\n  size: 1MiB\n  tiers:\n    - { min_object_size: 3MiB, size: 2MiB }\n  readahead: 4\n",
        )
    })
    .await;
    let small = deterministic_bytes(80, 3 * MIB - 1);
    let big = deterministic_bytes(81, 5 * MIB);
    s.put("small", &small).await;
    s.put("big", &big).await;
    for (key, data) in [("small", &small), ("big", &big)] {
        let r = http_get(&s.url(key), None).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(sha256_hex(&r.body), sha256_hex(data), "{key}");
    }
    let mut small_ranges = ranges_of(&s, "small");
    small_ranges.sort();
    assert_eq!(
        small_ranges,
        [
            "bytes=0-1048575",
            "bytes=1048576-2097151",
            "bytes=2097152-3145726"
        ]
    );
    let mut big_ranges = ranges_of(&s, "big");
    big_ranges.sort();
    assert_eq!(
        big_ranges,
        [
            "bytes=0-2097151",
            "bytes=2097152-4194303",
            "bytes=4194304-5242879"
        ]
    );
    // Ranged reads of the big object land in its 2 MiB chunks: no new origin GET.
    let r = http_get(&s.url("big"), Some("bytes=2097150-2097153"))
        .await
        .unwrap();
    assert_eq!((r.status, &r.body[..]), (206, &big[2_097_150..=2_097_153]));
    assert_eq!(ranges_of(&s, "big").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_max_entries_evicts_the_least_recently_used_object() {
    let s = Stack::start(Origin::S3, BUCKET, |c| {
        c.extra_yaml("metadata:\n  ttl: 60s\n  negative_ttl: 10s\n  max_entries: 2\n")
    })
    .await;
    for key in ["a", "b", "c"] {
        s.put(key, key.as_bytes()).await;
    }
    let read = |key: &'static str| {
        let url = s.url(key);
        async move {
            let r = http_get(&url, None).await.unwrap();
            assert_eq!((r.status, &r.body[..]), (200, key.as_bytes()));
        }
    };
    let heads = |key| s.requests_for("HEAD", key);
    // a, b, c: three HEADs; only b and c are remembered (two entries).
    read("a").await;
    read("b").await;
    read("c").await;
    assert_eq!((heads("a"), heads("b"), heads("c")), (1, 1, 1));
    // c then b again: remembered, no HEAD. b is now the most recently used.
    read("c").await;
    read("b").await;
    assert_eq!((heads("a"), heads("b"), heads("c")), (1, 1, 1));
    // a again: forgotten, so a second HEAD; it evicts c, the least recently used.
    read("a").await;
    assert_eq!((heads("a"), heads("b"), heads("c")), (2, 1, 1));
    read("b").await;
    assert_eq!(heads("b"), 1);
    read("c").await;
    assert_eq!(heads("c"), 2);
    // The chunks themselves stayed cached: one GET per object in all.
    for key in ["a", "b", "c"] {
        assert_eq!(s.requests_for("GET", key), 1, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_origin_gets_unsigned_requests() {
    let s = Stack::start(Origin::S3, BUCKET, |c| {
        let endpoint = c.origin_endpoint.clone();
        c.extra_yaml(&format!(
            "origin:\n  id: test-origin\n  s3:\n    endpoint: {endpoint}\n    region: us-east-1\n    path_style: true\n    anonymous: true\n"
        ))
    })
    .await;
    // moto refuses unsigned GETs and HEADs; the proxy lets them through as a public bucket
    // would (its log keeps what Orca sent).
    s.proxy.push_fault(
        FaultRule::new(Fault::AddRequestHeader(
            "Authorization".into(),
            DUMMY_AUTHORIZATION.into(),
        ))
        .times(1000),
    );
    let data = deterministic_bytes(82, 2 * MIB + 3);
    let etag = s.put("public/obj.bin", &data).await;
    let r = http_get(&s.url("public/obj.bin"), None).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    let log = s.proxy.counts().log;
    assert!(log.len() >= 4, "{log:?}");
    for request in &log {
        for header in ["authorization", "x-amz-security-token"] {
            assert!(
                request.header(header).is_none(),
                "{header} sent to an anonymous origin: {request:?}"
            );
        }
    }
    assert_store_holds_only_good_chunks(&s, &[("public/obj.bin", &etag, &data)], true).await;
}

/// Reads Orca's log on stdin and checks that every line Orca wrote is one JSON object with a
/// timestamp, a level and fields; prints how many lines, and how many were `edge request`s.
const JSON_LINES: &str = r#"
import json, sys
lines = [l for l in sys.stdin.read().splitlines() if l and not l.startswith("=== tests/common")]
edge = 0
for l in lines:
    o = json.loads(l)
    assert isinstance(o, dict), l
    assert "timestamp" in o and "level" in o and isinstance(o.get("fields"), dict), l
    if o["fields"].get("message") == "edge request":
        edge += 1
print(len(lines), edge)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logging_writes_one_object_per_line() {
    let s = Stack::start(Origin::S3, BUCKET, |c| {
        c.extra_yaml("logging:\n  level: debug\n  format: json\n")
    })
    .await;
    let data = deterministic_bytes(83, MIB + 1);
    s.put("logged", &data).await;
    for _ in 0..2 {
        let r = http_get(&s.url("logged"), None).await.unwrap();
        assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    }
    // The edge writes its request line when the request ends, which may be just after the
    // client has its last byte: read the log until both lines are there (bounded).
    let mut out = String::new();
    let mut counts = vec![0, 0];
    for _ in 0..50 {
        out = run_python(JSON_LINES, &[], &s.orca.log());
        counts = out.split_whitespace().map(|n| n.parse().unwrap()).collect();
        if counts[1] >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(counts[0] >= 5, "{out}");
    assert!(counts[1] >= 2, "no edge request lines: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_hosted_origin_gets_the_bucket_in_its_host_name() {
    // `path_style: false`: the origin is asked at `BUCKET.s3.orca.test:PORT` for `/key`. The
    // names resolve to the counting proxy for the orca process only (OrcaConfig::host); moto
    // takes the bucket from the Host header as S3 does.
    const DOMAIN: &str = "s3.orca.test";
    let s = Stack::start(Origin::S3, BUCKET, |c| {
        let port = c.origin_endpoint.rsplit(':').next().unwrap().to_string();
        c.extra_yaml(&format!(
            "origin:\n  id: test-origin\n  s3:\n    endpoint: http://{DOMAIN}:{port}\n    region: us-east-1\n    path_style: false\n"
        ))
        .host(DOMAIN)
        .host(&format!("{BUCKET}.{DOMAIN}"))
    })
    .await;
    let data = deterministic_bytes(84, 2 * MIB + 5);
    s.put("vhost/obj.bin", &data).await;
    let r = http_get(&s.url("vhost/obj.bin"), None).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    let listing = http_get(
        &format!(
            "{}?list-type=2&prefix=vhost/",
            bucket_url(&s.orca.edge_url(), BUCKET)
        ),
        None,
    )
    .await
    .unwrap();
    assert_eq!(listing.status, 200, "{}", listing.text());
    assert!(
        listing.text().contains("<Key>vhost/obj.bin</Key>"),
        "{}",
        listing.text()
    );

    let log = s.proxy.counts().log;
    let expected_host = format!("{BUCKET}.{DOMAIN}:");
    // HEAD, 3 chunk GETs and the listing, every one addressed by host name, none by path.
    assert!(log.len() >= 5, "{log:?}");
    for request in &log {
        let host = request.header("host").unwrap_or_default();
        assert!(host.starts_with(&expected_host), "{request:?}");
        assert!(
            !request.path().starts_with(&format!("/{BUCKET}")),
            "path-style request to a virtual-hosted origin: {request:?}"
        );
    }
    let gets: Vec<&str> = log
        .iter()
        .filter(|r| r.method == "GET" && r.range.is_some())
        .map(|r| r.path())
        .collect();
    assert_eq!(gets, vec!["/vhost/obj.bin"; 3], "{log:?}");
}
