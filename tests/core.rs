//! End-to-end behaviour of one Orca replica in front of moto's S3 server: cold and warm reads,
//! ranges, origin economy, version changes, faults and the fs store's contents.
//!
//! Every test starts its own moto, counting/fault proxy and `orca` process on free loopback
//! ports; bytes are compared by sha256 and origin requests are counted by the proxy and by
//! Orca's metrics. No test measures time.

#![allow(clippy::unwrap_used)]

mod common;

use common::cases::{
    self, assert_aborted_after_the_first_byte, assert_store_holds_only_good_chunks, faulted_range,
    ONE_SECOND_TIMEOUT,
};
use common::*;
use std::time::Duration;

const MIB: usize = 1 << 20;
const BUCKET: &str = "bkt";

/// moto, a counting/fault proxy in front of it, and Orca reading through the proxy.
async fn stack(configure: impl FnOnce(OrcaConfig) -> OrcaConfig) -> Stack {
    Stack::start(Origin::S3, BUCKET, configure).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_then_warm_reads_are_byte_exact_and_warm_reads_skip_the_origin() {
    let s = stack(|c| c).await;
    cases::cold_then_warm_reads(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_are_answered_as_s3_does() {
    let s = stack(|c| c).await;
    cases::ranges_are_answered_as_s3_does(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_reads_fetch_each_chunk_from_the_origin_once() {
    let s = stack(|c| c).await;
    cases::concurrent_cold_reads_fetch_each_chunk_once(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_object_is_served_after_the_ttl_and_never_mixed() {
    let s = stack(|c| c.metadata_ttl("1s").readahead(2)).await;
    cases::a_replaced_object_is_served_after_the_ttl_and_never_mixed(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_is_a_visible_error_and_never_stored() {
    let s = stack(|c| c).await;
    cases::a_body_cut_after_the_first_byte_aborts_and_is_never_stored(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_mid_body_is_a_visible_error_and_never_stored() {
    let s = stack(|c| c).await;
    let data = deterministic_bytes(4, 3 * MIB);
    let etag = s.put("reset", &data).await;
    let r = http_get(&s.url("reset"), Some("bytes=0-0")).await.unwrap();
    assert_eq!(r.status, 206);
    s.proxy.push_fault(
        FaultRule::new(Fault::ResetAfter(300_000))
            .method("GET")
            .with_range()
            .times(1),
    );
    assert_aborted_after_the_first_byte(&s, "reset", &data).await;
    let (range, same) = faulted_range(&s);
    assert_eq!(same, 1, "the reset chunk GET ({range}) was retried");
    assert_store_holds_only_good_chunks(&s, &[("reset", &etag, &data)], false).await;
    let r = http_get(&s.url("reset"), None).await.unwrap();
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    assert_store_holds_only_good_chunks(&s, &[("reset", &etag, &data)], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_origin_errors_are_retried_before_the_first_byte() {
    let s = stack(|c| c).await;
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
    assert_store_holds_only_good_chunks(&s, &[("flaky", &etag, &data)], true).await;
    // An origin that keeps failing: a proper XML error before any byte, after the documented
    // 3 attempts (one chunk, so one fill makes them all).
    let one = deterministic_bytes(51, MIB);
    s.put("down", &one).await;
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
    assert_eq!(s.requests_for("GET", "down"), 3, "attempts at the origin");
    assert_eq!(s.proxy.pending_faults(), 7);
    assert_eq!(
        s.orca
            .metric_value("orca_origin_requests_total{op=\"get\",status=\"503\"}"),
        5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etag_change_between_head_and_get_is_refused_and_recovers() {
    let s = stack(|c| c).await;
    // One chunk, so the faulted GET is the first chunk's: refused before any byte is sent.
    let one = deterministic_bytes(6, MIB);
    let etag_one = s.put("moving", &one).await;
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
    assert_store_holds_only_good_chunks(
        &s,
        &[("moving", &etag_one, &one), ("real", &etag_v2, &v2)],
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_s3_xml_with_a_request_id() {
    let s = stack(|c| c).await;
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
    let r = http_get(&s.url("missing"), None).await.unwrap();
    assert_eq!(r.status, 404);
    assert!(r.text().contains("<Code>NoSuchKey</Code>"), "{}", r.text());
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
    let s = stack(|c| {
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
    let s = stack(|c| c).await;
    cases::a_cut_right_after_the_origin_header_fails_cleanly_without_a_second_writer(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_never_answers_is_a_504_after_three_attempts_per_client() {
    let s = stack(|c| c.extra_yaml(cases::ONE_SECOND_TIMEOUT)).await;
    cases::an_origin_that_never_answers_is_a_504_after_three_attempts_per_client(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_answer_is_retried_once_for_all_its_waiters() {
    let s = stack(|c| c.extra_yaml(ONE_SECOND_TIMEOUT)).await;
    let data = deterministic_bytes(71, MIB);
    let etag = s.put("slow", &data).await;
    s.proxy.push_fault(
        FaultRule::new(Fault::Stall(Duration::from_secs(4)))
            .method("GET")
            .with_range()
            .times(1),
    );
    let mut readers = Vec::new();
    for _ in 0..4 {
        let url = s.url("slow");
        readers.push(tokio::spawn(async move { http_get(&url, None).await }));
    }
    for r in readers {
        let r = r.await.unwrap().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    }
    // One timed-out attempt and one retry, whatever the number of readers.
    assert_eq!(s.origin_gets(), 2, "{:?}", s.proxy.counts().log);
    assert_store_holds_only_good_chunks(&s, &[("slow", &etag, &data)], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_mid_chunk_aborts_and_is_never_stored() {
    let s = stack(|c| c.extra_yaml(ONE_SECOND_TIMEOUT)).await;
    let data = deterministic_bytes(72, 2 * MIB);
    let etag = s.put("stuck", &data).await;
    let r = http_get(&s.url("stuck"), Some("bytes=0-0")).await.unwrap();
    assert_eq!(r.status, 206);
    // Chunk 1's answer is accepted, then its body stops for longer than the read deadline.
    s.proxy.push_fault(
        FaultRule::new(Fault::StallBodyAfter(100_000, Duration::from_secs(4)))
            .method("GET")
            .with_range()
            .times(1),
    );
    assert_aborted_after_the_first_byte(&s, "stuck", &data).await;
    let (range, same) = faulted_range(&s);
    assert_eq!(same, 1, "the stalled chunk GET ({range}) was retried");
    assert_store_holds_only_good_chunks(&s, &[("stuck", &etag, &data)], false).await;
    let r = http_get(&s.url("stuck"), None).await.unwrap();
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    assert_store_holds_only_good_chunks(&s, &[("stuck", &etag, &data)], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_closes_without_answering_is_retried_up_to_the_cap() {
    let s = stack(|c| c).await;
    let data = deterministic_bytes(73, MIB);
    s.put("hangup", &data).await;
    s.proxy.push_fault(
        FaultRule::new(Fault::CloseWithoutResponse)
            .method("GET")
            .with_range()
            .times(2),
    );
    let r = http_get(&s.url("hangup"), None).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    assert_eq!(s.origin_gets(), 3, "2 unanswered + 1");
    // Never answered at all: a 502 after 3 attempts.
    s.put("gone", &data).await;
    s.proxy.push_fault(
        FaultRule::new(Fault::CloseWithoutResponse)
            .method("GET")
            .path_contains("/gone")
            .times(10),
    );
    let r = http_get(&s.url("gone"), None).await.unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.text().contains("<Code>OriginUnavailable</Code>"),
        "{}",
        r.text()
    );
    assert_eq!(s.requests_for("GET", "gone"), 3);
    assert_eq!(s.proxy.pending_faults(), 7);
    assert_eq!(
        s.orca
            .metric_value("orca_origin_requests_total{op=\"get\",status=\"0\"}"),
        5.0
    );
}
