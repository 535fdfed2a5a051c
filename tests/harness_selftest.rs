//! Tests of the test harness itself (`tests/common`) against a real moto server. Orca is not
//! involved.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::httpc::{decode_chunked, parse_raw_response};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1024 * 1024;

// ---- pure helpers ------------------------------------------------------------------------------

#[test]
fn encode_key_table() {
    let cases = [
        ("plain/key.bin", "plain/key.bin"),
        ("AZaz09-_.~", "AZaz09-_.~"),
        ("with space", "with%20space"),
        ("plus+sign", "plus%2Bsign"),
        ("percent%20", "percent%2520"),
        ("a//b", "a//b"),
        ("dir/", "dir/"),
        ("/leading", "/leading"),
        ("q?x=1&y#z", "q%3Fx%3D1%26y%23z"),
        ("ünï", "%C3%BCn%C3%AF"),
        ("日本", "%E6%97%A5%E6%9C%AC"),
        ("emoji😀", "emoji%F0%9F%98%80"),
        ("star*paren()!'", "star%2Aparen%28%29%21%27"),
        ("colon:semi;comma,at@", "colon%3Asemi%3Bcomma%2Cat%40"),
        ("", ""),
    ];
    for (key, want) in cases {
        assert_eq!(encode_key(key), want, "key {key:?}");
    }
    assert_eq!(
        object_url("http://h:1/", "bkt", "a b/c"),
        "http://h:1/bkt/a%20b/c"
    );
}

#[test]
fn deterministic_bytes_is_reproducible() {
    let a = deterministic_bytes(7, 1000);
    assert_eq!(a.len(), 1000);
    assert_eq!(a, deterministic_bytes(7, 1000));
    assert_ne!(a, deterministic_bytes(8, 1000));
    assert_eq!(&deterministic_bytes(7, 4096)[..1000], &a[..]);
    assert!(deterministic_bytes(1, 0).is_empty());
    assert_eq!(deterministic_bytes(1, 3).len(), 3);
    // Not degenerate: many distinct byte values.
    let distinct: std::collections::HashSet<u8> = a.iter().copied().collect();
    assert!(distinct.len() > 200);
}

#[test]
fn sha256_hex_known_values() {
    assert_eq!(
        sha256_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn metric_value_parses_prometheus_text() {
    let text = r#"# HELP orca_chunk_reads_total chunks read
# TYPE orca_chunk_reads_total counter
orca_chunk_reads_total{source="origin"} 3
orca_chunk_reads_total{source="cachestore"} 5
orca_chunk_reads_total{source="memory"} 1e1
orca_edge_requests_total{method="GET",status="200"} 7
orca_edge_requests_total{method="GET",status="206"} 2
orca_edge_requests_total{method="HEAD",status="200"} 1
orca_edge_bytes_sent_total 12345
orca_weird{a="x,y",b="q\"uote"} 4 1700000000000
orca_edge_request_duration_seconds_bucket{method="GET",le="+Inf"} 9
orca_edge_request_duration_seconds_sum{method="GET"} 0.5
orca_edge_request_duration_seconds_count{method="GET"} 9
"#;
    assert_eq!(
        metric_value(text, r#"orca_chunk_reads_total{source="origin"}"#),
        3.0
    );
    assert_eq!(metric_value(text, "orca_chunk_reads_total"), 18.0);
    assert_eq!(
        metric_value(text, r#"orca_edge_requests_total{method="GET"}"#),
        9.0
    );
    assert_eq!(
        metric_value(
            text,
            r#"orca_edge_requests_total{method="GET",status="206"}"#
        ),
        2.0
    );
    assert_eq!(metric_value(text, "orca_edge_bytes_sent_total"), 12345.0);
    assert_eq!(metric_value(text, r#"orca_weird{a="x,y"}"#), 4.0);
    assert_eq!(metric_value(text, r#"orca_weird{b="q\"uote"}"#), 4.0);
    // A name or label set that matches nothing fails: a renamed metric must not read as 0.
    for absent in [
        "orca_edge_request_duration_seconds",
        r#"orca_chunk_reads_total{source="peer"}"#,
        r#"orca_chunk_reads_total{sauce="origin"}"#,
    ] {
        let got = std::panic::catch_unwind(|| metric_value(text, absent));
        assert!(got.is_err(), "{absent} read as {got:?}");
    }
    assert_eq!(
        metric_value(text, "orca_edge_request_duration_seconds_count"),
        9.0
    );
    assert_eq!(metric_value_opt(text, "orca_missing"), None);
    assert_eq!(
        metric_value_opt(text, r#"orca_chunk_reads_total{source="peer"}"#),
        None
    );
}

#[test]
fn raw_response_parsing_and_chunked_decoding() {
    let (body, done) = decode_chunked(b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n");
    assert_eq!(body, b"hello world");
    assert!(done);
    let (body, done) = decode_chunked(b"5\r\nhel");
    assert_eq!(body, b"hel");
    assert!(!done);

    let r = parse_raw_response(
        b"HTTP/1.1 206 Partial\r\nContent-Length: 4\r\n\r\nabcd",
        false,
    )
    .unwrap();
    assert_eq!(
        (r.status, r.body.as_slice(), r.complete),
        (206, &b"abcd"[..], true)
    );
    let r =
        parse_raw_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabcd", false).unwrap();
    assert!(!r.complete);
    let r = parse_raw_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true).unwrap();
    assert!(r.complete && r.body.is_empty());
    assert_eq!(r.header("content-length"), Some("10"));
}

#[test]
fn orca_config_yaml_shape_and_overrides() {
    let ports = OrcaPorts {
        edge: 1001,
        internal: 1002,
        ops: 1003,
    };
    let cfg = OrcaConfig::new("http://127.0.0.1:9999").readahead(2);
    let yaml = cfg.to_yaml(&ports, std::path::Path::new("/tmp/c"));
    for needle in [
        "edge: \"127.0.0.1:1001\"",
        "internal: \"127.0.0.1:1002\"",
        "ops: \"127.0.0.1:1003\"",
        "id: \"test-origin\"",
        "driver: s3",
        "endpoint: \"http://127.0.0.1:9999\"",
        "path_style: true",
        "root: \"/tmp/c\"",
        "size: 1MiB",
        "tiers: []",
        "readahead: 2",
        "ttl: 60s",
        "negative_ttl: 10s",
        "origin_concurrency: 16",
        "format: text",
    ] {
        assert!(yaml.contains(needle), "{needle:?} missing from\n{yaml}");
    }
    // A top-level key in extra_yaml replaces the generated section.
    let yaml = cfg
        .extra_yaml(
            "limits:\n  origin_concurrency: 3\n  readahead_memory: 256MiB\ncluster:\n  peers: []\n",
        )
        .to_yaml(&ports, std::path::Path::new("/tmp/c"));
    assert_eq!(yaml.matches("limits:").count(), 1, "{yaml}");
    assert!(yaml.contains("origin_concurrency: 3"));
    assert!(!yaml.contains("origin_concurrency: 16"));
    assert!(yaml.contains("cluster:\n  peers: []"));
    let pingora = OrcaConfig::new("x").to_pingora_yaml(std::path::Path::new("/d"));
    assert!(pingora.contains("version: 1"));
    assert!(pingora.contains("threads: 2"));
    assert!(pingora.contains("pid_file: \"/d/orca.pid\""));
    assert!(pingora.contains("upgrade_sock: \"/d/orca_upgrade.sock\""));
    assert!(pingora.contains("grace_period_seconds: 1"));
    assert!(pingora.contains("graceful_shutdown_timeout_seconds: 1"));
    // Pingora itself accepts it.
    let conf = pingora_core::server::configuration::ServerConf::from_yaml(&pingora).unwrap();
    assert_eq!(conf.threads, 2);
    assert_eq!(conf.grace_period_seconds, Some(1));
    assert_eq!(conf.pid_file, "/d/orca.pid");
}

#[test]
fn poll_until_and_block_on() {
    let mut n = 0;
    assert_eq!(
        poll_until(Duration::from_secs(5), || {
            n += 1;
            (n == 3).then_some(n)
        }),
        Some(3)
    );
    assert_eq!(poll_until(Duration::from_millis(50), || None::<()>), None);
    assert_eq!(block_on(async { 7 }), 7);
}

#[test]
fn child_guard_kills_on_drop() {
    let child = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    let pid = child.id();
    {
        let _guard = ChildGuard::new("sleep", child);
        assert!(pid_alive(pid));
    }
    assert!(!pid_alive(pid), "pid {pid} still alive after drop");
}

fn pid_alive(pid: u32) -> bool {
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

// ---- against moto ------------------------------------------------------------------------------

async fn moto_with_object(len: usize) -> (Moto, String, String, Vec<u8>) {
    let moto = Moto::start();
    let bucket = unique_name("selftest");
    let key = "data/object.bin".to_string();
    create_bucket(&moto.endpoint(), &bucket).await;
    let data = deterministic_bytes(42, len);
    let etag = put_object(&moto.endpoint(), &bucket, &key, data.clone()).await;
    assert!(etag.starts_with('"') && etag.ends_with('"'), "etag {etag}");
    (moto, bucket, key, data)
}

#[tokio::test]
async fn moto_seed_and_range_get_through_proxy() {
    let (moto, bucket, key, data) = moto_with_object(3 * MIB).await;
    let head = head_object(&moto.endpoint(), &bucket, &key).await.unwrap();
    assert_eq!(head.size, 3 * MIB as u64);

    let proxy = FaultProxy::start(&moto.addr());
    let url = object_url(&proxy.endpoint(), &bucket, &key);
    let r = s3_get(&url, Some("bytes=1048576-2097151")).await.unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 1048576-2097151/{}", 3 * MIB).as_str())
    );
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data[MIB..2 * MIB]));

    let r = s3_get(&url, None).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));

    let r = s3_head(&url).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("3145728"));

    let list = s3_get(
        &format!("{}/{bucket}?list-type=2&prefix=data/", proxy.endpoint()),
        None,
    )
    .await
    .unwrap();
    assert_eq!(list.status, 200);
    assert!(
        list.text().contains("<Key>data/object.bin</Key>"),
        "{}",
        list.text()
    );

    let counts = proxy.counts();
    assert_eq!(counts.gets_with_range, 1);
    assert_eq!(counts.gets_without_range, 1);
    assert_eq!(counts.heads, 1);
    assert_eq!(counts.lists, 1);
    assert_eq!(counts.total, 4);
    assert_eq!(counts.gets(), 2);
    assert_eq!(counts.log[0].method, "GET");
    assert_eq!(
        counts.log[0].range.as_deref(),
        Some("bytes=1048576-2097151")
    );
    assert_eq!(counts.log[0].target, format!("/{bucket}/data/object.bin"));
    assert_eq!(counts.log[0].path(), format!("/{bucket}/data/object.bin"));
    assert!(counts.log[0].fault.is_none());
    assert_eq!(
        counts.log[3].target,
        format!("/{bucket}?list-type=2&prefix=data/")
    );

    proxy.reset_counts();
    assert_eq!(proxy.counts(), Counts::default());
}

#[tokio::test]
async fn proxy_keeps_downstream_connections_alive() {
    let (moto, bucket, key, data) = moto_with_object(100_000).await;
    let proxy = FaultProxy::start(&moto.endpoint());
    let client = http_client();
    let url = object_url(&proxy.endpoint(), &bucket, &key);
    for i in 0..5u64 {
        let start = i * 1000;
        let r = common::httpc::send(
            with_dummy_auth(client.get(&url))
                .header("Range", format!("bytes={start}-{}", start + 999)),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 206);
        assert_eq!(r.body, &data[start as usize..start as usize + 1000]);
    }
    let counts = proxy.counts();
    assert_eq!(counts.gets_with_range, 5);
    assert_eq!(
        counts.connections, 1,
        "the client's connection was not reused"
    );

    // Two pipelined requests on one raw connection.
    let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let path = format!("/{bucket}/{key}");
    let auth = DUMMY_AUTHORIZATION;
    let requests = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nRange: bytes=0-9\r\n\r\n\
         HEAD {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(requests.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("HTTP/1.1 206").count(), 1, "{text}");
    assert_eq!(text.matches("HTTP/1.1 200").count(), 1, "{text}");
    let first = parse_raw_response(&raw, false).unwrap();
    assert_eq!(first.body, &data[..10]);
}

#[tokio::test]
async fn cut_body_is_a_body_error_and_next_request_passes() {
    let (moto, bucket, key, data) = moto_with_object(3 * MIB).await;
    let proxy = FaultProxy::start(&moto.addr());
    let url = object_url(&proxy.endpoint(), &bucket, &key);

    proxy.push_fault(Fault::CutBodyAfter(1000));
    let err = s3_get(&url, None).await.unwrap_err();
    match &err {
        HttpError::Body {
            status, received, ..
        } => {
            assert_eq!(*status, 200);
            assert_eq!(received.len(), 1000);
            assert_eq!(&received[..], &data[..1000]);
        }
        other => panic!("expected a body error, got {other}"),
    }
    assert!(err.is_body_error());
    assert_eq!(proxy.pending_faults(), 0);

    let r = s3_get(&url, None).await.unwrap();
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));

    // Reset: also a body error.
    proxy.push_fault(FaultRule::new(Fault::ResetAfter(5000)).with_range());
    let err = s3_get(&url, Some("bytes=0-999999")).await.unwrap_err();
    assert!(err.is_body_error(), "{err}");
    if let HttpError::Body { received, .. } = &err {
        assert!(received.len() <= 5000);
    }
    let counts = proxy.counts();
    assert_eq!(counts.log[0].fault, Some(Fault::CutBodyAfter(1000)));
    assert_eq!(counts.log[1].fault, None);
    assert_eq!(counts.log[2].fault, Some(Fault::ResetAfter(5000)));

    // Cut at 0: the head arrives, the body does not.
    proxy.push_fault(Fault::CutBodyAfter(0));
    let err = s3_get(&url, Some("bytes=0-99")).await.unwrap_err();
    assert_eq!(err.status(), Some(206));
}

#[tokio::test]
async fn status_fault_then_pass_and_predicates() {
    let (moto, bucket, key, data) = moto_with_object(10_000).await;
    let proxy = FaultProxy::start(&moto.addr());
    let url = object_url(&proxy.endpoint(), &bucket, &key);
    let client = http_client();

    // Does not match (other path), stays queued.
    proxy.push_fault(FaultRule::new(Fault::Status(500)).path_contains("/nope/"));
    // Matches GETs with a range, twice.
    proxy.push_fault(
        FaultRule::new(Fault::Status(503))
            .method("GET")
            .path_contains("object.bin")
            .with_range()
            .times(2),
    );
    assert_eq!(proxy.pending_faults(), 3);

    // A HEAD and a range-less GET are not matched.
    let r = s3_head(&url).await.unwrap();
    assert_eq!(r.status, 200);
    let r = s3_get(&url, None).await.unwrap();
    assert_eq!(r.body, data);

    // Two 503s on one kept-alive connection, then the real answer.
    for _ in 0..2 {
        let r = common::httpc::send(with_dummy_auth(client.get(&url)).header("Range", "bytes=0-9"))
            .await
            .unwrap();
        assert_eq!(r.status, 503);
        assert!(r.text().contains("<Code>SlowDown</Code>"), "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/xml"));
    }
    let r = common::httpc::send(with_dummy_auth(client.get(&url)).header("Range", "bytes=0-9"))
        .await
        .unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &data[..10]);
    assert_eq!(proxy.pending_faults(), 1);
    proxy.clear_faults();
    assert_eq!(proxy.pending_faults(), 0);

    // A faulted HEAD answers the status without a body.
    proxy.push_fault(FaultRule::new(Fault::Status(404)).method("HEAD"));
    let r = s3_head(&url).await.unwrap();
    assert_eq!(r.status, 404);
    assert!(r.body.is_empty());

    let counts = proxy.counts();
    assert_eq!(counts.heads, 2);
    assert_eq!(counts.gets_with_range, 3);
    assert_eq!(counts.gets_without_range, 1);
    assert_eq!(counts.total, 6);
}

#[tokio::test]
async fn replace_etag_and_stalls() {
    let (moto, bucket, key, data) = moto_with_object(200_000).await;
    let proxy = FaultProxy::start(&moto.addr());
    let url = object_url(&proxy.endpoint(), &bucket, &key);

    let real = s3_head(&url).await.unwrap();
    let real_etag = real.header("etag").unwrap().to_string();

    proxy.push_fault(Fault::ReplaceEtag("\"changed\"".to_string()));
    let r = s3_get(&url, Some("bytes=0-99")).await.unwrap();
    assert_eq!(r.header("etag"), Some("\"changed\""));
    assert_eq!(r.body, &data[..100]);

    let r = s3_head(&url).await.unwrap();
    assert_eq!(r.header("etag"), Some(real_etag.as_str()));

    // Stalls delay but do not change the answer.
    proxy.push_fault(Fault::Stall(Duration::from_millis(100)));
    let r = s3_get(&url, None).await.unwrap();
    assert_eq!(r.body, data);
    proxy.push_fault(Fault::StallBodyAfter(1000, Duration::from_millis(100)));
    let r = s3_get(&url, None).await.unwrap();
    assert_eq!(r.body, data);

    // Close without an answer: a request-level error.
    proxy.push_fault(Fault::CloseWithoutResponse);
    let err = s3_get(&url, None).await.unwrap_err();
    assert!(!err.is_body_error(), "{err}");
}

/// A black hole sends nothing and never asks the upstream; a set response header replaces the
/// upstream's value and leaves the body alone.
#[tokio::test]
async fn black_hole_and_set_response_header() {
    let (moto, bucket, key, data) = moto_with_object(200_000).await;
    let proxy = FaultProxy::start(&moto.addr());
    let url = object_url(&proxy.endpoint(), &bucket, &key);

    proxy.push_fault(Fault::BlackHole(Duration::from_secs(60)));
    let silent = tokio::time::timeout(Duration::from_millis(500), s3_get(&url, None)).await;
    assert!(silent.is_err(), "a black hole answered: {silent:?}");
    // The next request is answered: the rule was used once.
    let r = s3_get(&url, Some("bytes=0-99")).await.unwrap();
    assert_eq!(r.body, &data[..100]);

    proxy.push_fault(Fault::SetResponseHeader(
        "Content-Range".into(),
        "bytes 5-104/200000".into(),
    ));
    let r = s3_get(&url, Some("bytes=0-99")).await.unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 5-104/200000"));
    assert_eq!(r.body, &data[..100]);
}

#[tokio::test]
async fn odd_keys_round_trip_through_moto_and_proxy() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.addr());
    let bucket = unique_name("keys");
    create_bucket(&moto.endpoint(), &bucket).await;
    let keys = [
        "with space.txt",
        "plus+sign",
        "percent%20literal",
        "ünïcødé/日本語.bin",
        "tilde~under_dash-dot.",
        "q?x=1&y#z",
        "dir/",
        "a//b",
        "emoji😀",
        "star*(paren)!'",
    ];
    for (i, key) in keys.iter().enumerate() {
        let data = deterministic_bytes(i as u64, 1000 + i);
        put_object(&moto.endpoint(), &bucket, key, data.clone()).await;
        let head = head_object(&moto.endpoint(), &bucket, key)
            .await
            .unwrap_or_else(|| panic!("HEAD {key:?}: 404"));
        assert_eq!(head.size, data.len() as u64, "key {key:?}");
        let got = get_object(&moto.endpoint(), &bucket, key).await;
        assert_eq!(got.as_deref(), Some(&data[..]), "key {key:?}");
        let r = s3_get(&object_url(&proxy.endpoint(), &bucket, key), None)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "key {key:?} via proxy");
        assert_eq!(r.body, data, "key {key:?} via proxy");
    }
    // The listing knows every key, as stored.
    let list = s3_get(
        &format!("{}?list-type=2", bucket_url(&moto.endpoint(), &bucket)),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        list.text().matches("<Key>").count(),
        keys.len(),
        "{}",
        list.text()
    );

    delete_object(&moto.endpoint(), &bucket, "plus+sign").await;
    assert!(head_object(&moto.endpoint(), &bucket, "plus+sign")
        .await
        .is_none());
    assert!(head_object(&moto.endpoint(), &bucket, "plus sign")
        .await
        .is_none());
}

#[tokio::test]
async fn signed_style_requests_see_unsigned_seeds() {
    // Orca signs with access key "test"; moto must put those requests in the same account as
    // the unsigned seeding requests.
    let (moto, bucket, key, data) = moto_with_object(1000).await;
    let auth = "AWS4-HMAC-SHA256 Credential=test/20250101/us-east-1/s3/aws4_request, \
                SignedHeaders=host;x-amz-date, Signature=0000";
    let r = http_request(
        "GET",
        &object_url(&moto.endpoint(), &bucket, &key),
        &[
            ("Authorization", auth),
            ("x-amz-date", "20250101T000000Z"),
            ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, data);
}

#[tokio::test]
async fn proxy_passes_chunked_and_close_delimited_bodies() {
    // A minimal upstream that answers: chunked, then close-delimited, per connection.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        for i in 0..4 {
            let (mut s, _) = upstream.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
            let text = String::from_utf8_lossy(&got).to_lowercase();
            assert!(text.contains("connection: close"), "{text}");
            let answer: &[u8] = if i % 2 == 0 {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close"
            };
            s.write_all(answer).await.unwrap();
            s.shutdown().await.unwrap();
        }
    });
    let proxy = FaultProxy::start(&upstream_addr);
    let client = http_client();
    let base = proxy.endpoint();
    let r = common::httpc::send(client.get(format!("{base}/b/k")))
        .await
        .unwrap();
    assert_eq!(r.body, b"hello world");
    let r = common::httpc::send(client.get(format!("{base}/b/k")))
        .await
        .unwrap();
    assert_eq!(r.body, b"until close");
    // Cutting a chunked body is a body error.
    proxy.push_fault(Fault::CutBodyAfter(8));
    let err = common::httpc::send(client.get(format!("{base}/b/k")))
        .await
        .unwrap_err();
    assert!(err.is_body_error(), "{err}");
    let r = common::httpc::send(client.get(format!("{base}/b/k")))
        .await
        .unwrap();
    assert_eq!(r.body, b"until close");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(proxy.counts().gets_without_range, 4);
}

#[test]
fn moto_stops_on_drop_and_proxy_stops_on_drop() {
    let moto = Moto::start();
    let pid = moto.pid();
    assert!(pid_alive(pid));
    let proxy = FaultProxy::start(&moto.addr());
    let addr = proxy.addr();
    assert!(std::net::TcpStream::connect(&addr).is_ok());
    drop(proxy);
    assert!(std::net::TcpStream::connect(&addr).is_err());
    drop(moto);
    assert!(!pid_alive(pid), "moto pid {pid} alive after drop");
}

/// A stand-in for the `orca` binary (the real one is tested elsewhere): a Python script that
/// reads the generated config, serves `/healthz`, `/readyz` and `/metrics` on the ops port (and the same on
/// the edge port, which `OrcaProcess::start` waits for too), and exits 0 on SIGTERM. It exercises `OrcaProcess`'s start, readiness, metrics, restart and stop logic.
const FAKE_ORCA: &str = r#"#!/usr/bin/env python3
import http.server, os, re, signal, sys, threading
config = open(sys.argv[sys.argv.index("--config") + 1]).read()
assert "-c" in sys.argv
ops = int(re.search(r'ops: "127\.0\.0\.1:(\d+)"', config).group(1))
edge = int(re.search(r'edge: "127\.0\.0\.1:(\d+)"', config).group(1))
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path in ("/healthz", "/readyz"):
            body = b"ok"
        elif self.path == "/metrics":
            body = b'# TYPE orca_chunk_reads_total counter\norca_chunk_reads_total{source="origin"} 2\norca_chunk_reads_total{source="memory"} 3\n'
        else:
            body = b"nope"
            self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        print("request", *args, flush=True)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
print("fake orca pid", os.getpid(), "ops", ops, "key", os.environ.get("AWS_ACCESS_KEY_ID"),
      "level", os.environ.get("ORCA_LOG_LEVEL"), flush=True)
edge_server = http.server.HTTPServer(("127.0.0.1", edge), Handler)
threading.Thread(target=edge_server.serve_forever, daemon=True).start()
http.server.HTTPServer(("127.0.0.1", ops), Handler).serve_forever()
"#;

#[test]
fn orca_process_lifecycle_with_a_stand_in_binary() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("fake-orca");
    std::fs::write(&script, FAKE_ORCA).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let orca = OrcaProcess::start(OrcaConfig::new("http://127.0.0.1:9").binary(&script));
    assert!(orca.cache_root().is_dir());
    assert!(orca.cache_root().starts_with(orca.dir()));
    assert!(orca.edge_url().starts_with("http://127.0.0.1:"));
    assert_eq!(
        orca.metric_value(r#"orca_chunk_reads_total{source="origin"}"#),
        2.0
    );
    assert_eq!(orca.metric_value("orca_chunk_reads_total"), 5.0);
    assert_eq!(
        block_on(orca.wait_metric_at_least("orca_chunk_reads_total", 5.0, Duration::from_secs(5))),
        5.0
    );
    // Start-up waited for /readyz; an unknown path is a 404.
    assert_eq!(orca.ops_get("/readyz").0, 200);
    assert_eq!(orca.ops_get("/nope").0, 404);
    // A series that is not there fails the test instead of reading as 0.
    let absent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        orca.metric_value(r#"orca_chunk_reads_total{source="peer"}"#)
    }));
    assert!(absent.is_err(), "an absent series read as a number");
    assert!(
        orca.log_tail().contains("key test level debug"),
        "{}",
        orca.log_tail()
    );

    let first_pid = orca.pid();
    let mut orca = orca.restart();
    assert_ne!(orca.pid(), first_pid);
    assert!(!pid_alive(first_pid));
    assert_eq!(orca.log().matches("fake orca pid").count(), 2);

    orca.sigterm();
    let status = orca
        .wait_exit(Duration::from_secs(10))
        .expect("exit after SIGTERM");
    assert!(status.success(), "{status}");

    // Kill on drop.
    let orca = OrcaProcess::start(OrcaConfig::new("http://127.0.0.1:9").binary(&script));
    let pid = orca.pid();
    drop(orca);
    assert!(!pid_alive(pid));
}

#[tokio::test]
async fn proxy_serves_concurrent_ranges() {
    let (moto, bucket, key, data) = moto_with_object(8 * MIB).await;
    let proxy = FaultProxy::start(&moto.addr());
    let url = object_url(&proxy.endpoint(), &bucket, &key);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let range = format!("bytes={}-{}", i * MIB, (i + 1) * MIB - 1);
                s3_get(&url, Some(&range)).await.unwrap()
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let r = task.await.unwrap();
        assert_eq!(r.status, 206);
        assert_eq!(
            sha256_hex(&r.body),
            sha256_hex(&data[i * MIB..(i + 1) * MIB])
        );
    }
    assert_eq!(proxy.counts().gets_with_range, 8);
}

/// A server's readiness is its own listener's: a port another process listens on (here this
/// test's own) is not the child's, so `spawn_on_free_port` starts the child again elsewhere
/// rather than talk to the wrong server (seen: moto's port taken by an Orca of another test, and
/// the test's bucket creation answered by Orca).
#[test]
fn a_listener_is_told_apart_from_another_process() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    assert!(listener_belongs_to(port, std::process::id()));
    let mut other = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    assert!(!listener_belongs_to(port, other.id()));
    drop(listener);
    assert!(!listener_belongs_to(port, std::process::id()));
    other.kill().unwrap();
    other.wait().unwrap();
}
