//! No wait cycles (docs/reliability.md, "No wait cycles"): the permits a cold read waits for
//! are held only as long as their own work lasts, every wait for one has a deadline, and an
//! answer of the fill service to this replica's own edge is not cut while the edge reads it in
//! order, however slowly. Each shown against real moto behind the fault proxy and the real
//! orca binary.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

const MIB: usize = 1 << 20;
const BUCKET: &str = "bkt";

/// Far longer than the reads below take when nothing waits in a cycle, far shorter than the
/// 60 s `limits.client_write_timeout` that used to break such a cycle: a read still running at
/// this deadline is hung, not slow.
const CYCLE_DEADLINE: Duration = Duration::from_secs(30);

/// Origin chunk GETs of `key` started so far.
fn chunk_gets_of(s: &Stack, key: &str) -> usize {
    s.proxy
        .counts()
        .log
        .iter()
        .filter(|r| r.method == "GET" && r.path().ends_with(&format!("/{key}")))
        .count()
}

/// Several clients read multi-chunk cold objects at once, with fewer origin permits than the
/// chunks each reads ahead. The edge asks for chunks ahead of the one it sends and reads their
/// answers in order; an origin permit held until the edge had read its chunk's answer made a
/// cycle (every permit held by answers read later, the chunk read next waiting for a permit)
/// that nothing broke until the fill's 60 s write timeout. Every read completes, byte-exact.
/// Seen failing before the fix: the reads were still waiting at the deadline (in each of two
/// runs); with it they take a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_reads_ahead_of_few_origin_permits_never_wait_in_a_cycle() {
    let s = Stack::start(Origin::S3, BUCKET, |c| {
        c.chunk_size("1MiB").readahead(4).origin_concurrency(1)
    })
    .await;
    let objects: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            (
                format!("cold-{i}"),
                deterministic_bytes(60 + i, 6 * MIB + 1000),
            )
        })
        .collect();
    for (key, data) in &objects {
        s.put(key, data).await;
    }
    let reads = objects.iter().map(|(key, data)| {
        let url = s.orca.object_url(BUCKET, key);
        async move {
            let r = http_get(&url, None)
                .await
                .unwrap_or_else(|e| panic!("GET {key}: {e}"));
            assert_eq!(r.status, 200, "GET {key}: {}", r.text());
            assert_eq!(sha256_hex(&r.body), sha256_hex(data), "GET {key}");
        }
    });
    let all = futures::future::join_all(reads);
    if tokio::time::timeout(CYCLE_DEADLINE, all).await.is_err() {
        panic!(
            "cold reads still waiting after {CYCLE_DEADLINE:?}: a wait cycle\n{}",
            s.orca.log_tail()
        );
    }
    // The permits all came back: no fill is counted in flight any more.
    let mut inflight = f64::NAN;
    for _ in 0..200 {
        inflight = s.orca.metric_value_async("orca_fills_inflight").await;
        if inflight == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(inflight, 0.0, "orca_fills_inflight");
}

/// A fill that finds every origin permit taken waits for one at most the cache-lock timeout
/// (`origin_timeout` x 4 + 5 s: 13 s here), then answers `503 SlowDown`, and the client is
/// told the same: not a hang until the permit comes free, nor the edge giving up on its fill
/// (its read timeout, 15 s here, answered `502 OriginUnavailable`). Seen failing before the
/// fix: the fill waited on and the client got that `502` from the edge's read timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_that_gets_no_origin_permit_in_time_is_told_to_slow_down() {
    let s = Stack::start(Origin::S3, BUCKET, |c| {
        c.chunk_size("512KiB")
            .origin_concurrency(1)
            .extra_yaml("limits:\n  origin_concurrency: 1\n  origin_timeout: 2s\n")
    })
    .await;
    let slow = deterministic_bytes(70, 512 * 1024);
    s.put("slow", &slow).await;
    let other = deterministic_bytes(71, 1000);
    s.put("other", &other).await;
    // The only permit goes to a live origin that takes ~19 s over the one chunk of `slow`
    // (8 KiB every 300 ms: each read well inside `origin_timeout`).
    s.proxy.push_fault(
        FaultRule::new(Fault::Drip(8 * 1024, Duration::from_millis(300)))
            .method("GET")
            .path_contains("/slow"),
    );
    let slow_url = s.orca.object_url(BUCKET, "slow");
    let slow_read = tokio::spawn(async move { http_get(&slow_url, None).await });
    for _ in 0..200 {
        if chunk_gets_of(&s, "slow") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(chunk_gets_of(&s, "slow"), 1, "the slow chunk GET started");
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        http_get(&s.orca.object_url(BUCKET, "other"), None),
    )
    .await
    .expect("answered")
    .unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("<Code>SlowDown</Code>"), "{}", r.text());
    assert_eq!(
        chunk_gets_of(&s, "other"),
        0,
        "no origin GET without a permit"
    );
    slow_read.abort();
}

/// Reads `path` from `addr` over a small receive window, `piece` bytes every `pause`: a
/// client that is slow but never stops. Returns the status, the Content-Length and the body
/// received before the end of the stream (the connection is closed after the answer).
async fn slow_read(addr: &str, path: &str, piece: usize, pause: Duration) -> (u16, usize, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(32 * 1024).unwrap();
    let mut stream = socket.connect(addr.parse().unwrap()).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; piece];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
            .await
            .expect("a byte within 30 s")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        tokio::time::sleep(pause).await;
    }
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&got[..end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .expect("a Content-Length");
    (status, length, got[end + 4..].to_vec())
}

/// A client slower than the read-ahead (the chunks it is ahead of wait unread in the fill
/// service's answers to this replica's own edge for longer than `limits.client_write_timeout`)
/// but never stopped gets the whole object: that timeout is for a requester that stops
/// reading, and the edge reads its own fill answers in order as its client takes them. Seen
/// failing before the fix: the response was aborted at chunk 6 ("fill answer: body cut").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_reading_in_order_is_not_cut_by_its_own_read_ahead() {
    let s = Stack::start(Origin::S3, BUCKET, |c| {
        c.chunk_size("1MiB")
            .readahead(8)
            .extra_yaml("limits:\n  origin_concurrency: 16\n  client_write_timeout: 2s\n")
    })
    .await;
    let data = deterministic_bytes(80, 14 * MIB);
    s.put("slowly", &data).await;
    // 32 KiB every 30 ms (about 1 MB/s): every write to the client progresses well inside
    // 2 s, while the answers of the chunks 8 ahead wait unread until the 8 MiB before them
    // (less what the sockets' buffers take, a few MB on loopback) are read: seconds.
    let (status, length, body) = slow_read(
        &s.orca.edge_addr(),
        &format!("/{BUCKET}/slowly"),
        32 * 1024,
        Duration::from_millis(30),
    )
    .await;
    assert_eq!((status, length), (200, data.len()));
    assert_eq!(
        body.len(),
        data.len(),
        "the answer was cut\n{}",
        s.orca.log_tail()
    );
    assert_eq!(sha256_hex(&body), sha256_hex(&data));
}
