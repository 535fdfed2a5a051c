//! Hostile and malformed client input (issue 12): each gets a bounded, documented answer
//! (`docs/reliability.md`), and a well-behaved client is served right after. Real orca binary,
//! moto behind it, raw requests so nothing normalizes what is sent.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;

const BUCKET: &str = "bkt";

async fn raw_get(addr: &str, target: &str, headers: &[(&str, &str)]) -> RawResponse {
    raw_request(addr, "GET", target, headers).await.unwrap()
}

fn text(r: &RawResponse) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_get_bounded_answers() {
    let s = Stack::start(Origin::S3, BUCKET, |c| c).await;
    let data = deterministic_bytes(90, 4096);
    s.put("k", &data).await;
    let addr = s.orca.edge_addr();
    let path = format!("/{BUCKET}/k");

    // A 64 KiB header is within Pingora's header limit: served.
    let big = "a".repeat(64 * 1024);
    let r = raw_get(&addr, &path, &[("x-big", &big)]).await;
    assert_eq!((r.status, r.body.as_slice()), (200, data.as_slice()));

    // 1,000 ranges: like S3, a multi-range request gets the whole object (one 200), never a
    // multipart answer assembled from a thousand pieces.
    let ranges: Vec<String> = (0..1000).map(|i| format!("{}-{}", i * 2, i * 2)).collect();
    let header = format!("bytes={}", ranges.join(","));
    let r = raw_get(&addr, &path, &[("range", &header)]).await;
    assert_eq!((r.status, r.body.as_slice()), (200, data.as_slice()));

    // A NUL in a key is a key like any other: asked at the origin, which has none.
    let r = raw_get(&addr, &format!("/{BUCKET}/a%00b"), &[]).await;
    assert_eq!(r.status, 404, "{}", text(&r));
    assert!(text(&r).contains("NoSuchKey"), "{}", text(&r));

    // Bytes that are not UTF-8 once decoded: 400 InvalidURI, no origin request.
    let before = s.proxy.counts().total;
    let r = raw_get(&addr, &format!("/{BUCKET}/a%FFb"), &[]).await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(text(&r).contains("InvalidURI"), "{}", text(&r));
    assert_eq!(s.proxy.counts().total, before);

    // Dot segments are part of the key (S3 does not normalize paths): the bucket stays the one
    // the allowlist checked, and the origin is asked for that bucket's "../other/k".
    let r = raw_get(&addr, &format!("/{BUCKET}/../other/k"), &[]).await;
    assert_eq!(r.status, 404, "{}", text(&r));
    let log = s.proxy.counts().log;
    assert!(
        log.iter()
            .any(|q| q.target.starts_with(&format!("/{BUCKET}/../other/k"))),
        "{log:?}"
    );
    assert!(
        !log.iter().any(|q| q.target.starts_with("/other/")),
        "{log:?}"
    );

    // A well-behaved client right after, and the process is healthy.
    let ok = http_get(&s.url("k"), None).await.unwrap();
    assert_eq!((ok.status, ok.body), (200, data));
    assert_eq!(s.orca.ops_get("/healthz").0, 200);
}
