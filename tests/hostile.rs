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

/// Polls `probe` every 50 ms without blocking the runtime, at most `limit`; whether it held.
async fn wait_for(limit: std::time::Duration, mut probe: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if probe() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Open descriptors of a process.
fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Resident memory of a process, in KiB.
fn rss_kib_of(pid: u32) -> u64 {
    rss_bytes(pid) / 1024
}

/// Opens `idle` connections that never send a byte and `drips` whose header drips a byte
/// every 100 ms and never ends (slowloris); waits until orca has accepted them (its descriptor
/// count is `expect_fds`, bounded wait); serves well-behaved reads meanwhile, byte-exact; then
/// closes them all and waits for orca's descriptors to come back to `fds0`. Returns orca's
/// descriptors and RSS (KiB) during the attack, and its RSS after.
async fn attack(
    s: &Stack,
    data: &[u8],
    idle: usize,
    drips: usize,
    fds0: usize,
    expect_fds: usize,
) -> (usize, u64, u64) {
    let pid = s.orca.pid();
    let url = s.url("k");
    let addr: std::net::SocketAddr = s.orca.edge_addr().parse().unwrap();
    // In batches that orca has accepted before the next: a burst past the kernel's accept
    // queue (somaxconn, 4096) would leave connections the client thinks open that the server
    // only sees after SYN-ACK retries, or never.
    let mut held = Vec::with_capacity(idle);
    while held.len() < idle {
        let n = (idle - held.len()).min(500);
        let batch = tokio::task::spawn_blocking(move || {
            (0..n)
                .map(|_| std::net::TcpStream::connect(addr).unwrap())
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        held.extend(batch);
        // (less a few: pooled origin connections may close meanwhile)
        let want = fds0 + held.len() - 8;
        let ok = wait_for(std::time::Duration::from_secs(30), || fds_of(pid) >= want).await;
        assert!(ok, "orca accepted {} of {want} descriptors", fds_of(pid));
    }
    let idle = held;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut dripping = Vec::new();
    for i in 0..drips {
        let stop = stop.clone();
        dripping.push(tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let Ok(mut c) = tokio::net::TcpStream::connect(addr).await else {
                return;
            };
            let head = format!("GET /{BUCKET}/k HTTP/1.1\r\nHost: x\r\nX-Drip-{i}: ");
            if c.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            // Bounded: at most 600 bytes (a minute), or until the test stops it.
            for _ in 0..600 {
                if stop.load(std::sync::atomic::Ordering::Relaxed)
                    || c.write_all(b"a").await.is_err()
                {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }));
    }
    let accepted = wait_for(std::time::Duration::from_secs(60), || {
        fds_of(pid) + 8 >= expect_fds
    })
    .await;
    let (fds1, rss1) = (fds_of(pid), rss_kib_of(pid));
    assert!(
        accepted,
        "orca holds {fds1} descriptors, expected >= {expect_fds}\n{}",
        s.orca.log_tail()
    );

    // Meanwhile well-behaved clients are served, ranges and whole objects, byte-exact.
    for i in 0..20u64 {
        let (first, last) = (i * 150_000, i * 150_000 + 99_999);
        let r = http_get(&url, Some(&format!("bytes={first}-{last}")))
            .await
            .unwrap();
        assert_eq!(r.status, 206);
        assert_eq!(r.body, &data[first as usize..=last as usize]);
    }
    let r = http_get(&url, None).await.unwrap();
    assert_eq!(sha256_hex(&r.body), sha256_hex(data));

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for d in dripping {
        d.await.unwrap();
    }
    drop(idle);
    let released = wait_for(std::time::Duration::from_secs(60), || {
        fds_of(pid) <= fds0 + 8
    })
    .await;
    let fds2 = fds_of(pid);
    assert!(
        released,
        "descriptors {fds0} before, {fds2} after the attack"
    );
    (fds1, rss1, rss_kib_of(pid))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_and_a_header_drip_leave_others_served_and_go_away() {
    const IDLE: usize = 10_000;
    const DRIPS: usize = 200;
    let s = Stack::start(Origin::S3, BUCKET, |c| c.log_level("debug")).await;
    let data = deterministic_bytes(91, 3 * 1024 * 1024 + 11);
    s.put("k", &data).await;
    // Warm: the baseline includes the pools and caches a served read leaves.
    let r = http_get(&s.url("k"), None).await.unwrap();
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    let pid = s.orca.pid();
    let (fds0, rss0) = (fds_of(pid), rss_kib_of(pid));

    // Under the default limits.max_connections (16384) every connection is held. Twice: the
    // memory an attack took is given back after it (orca trims the allocator once a burst of
    // connections has closed), so a second one starts from the same place.
    let mut report = Vec::new();
    for round in 1..=2 {
        let (fds1, rss1, _) = attack(&s, &data, IDLE, DRIPS, fds0, fds0 + IDLE + DRIPS).await;
        // What an open connection costs is bounded (docs/reliability.md: about 40 KiB in a
        // release build; a debug build's tasks are larger): 64 KiB here.
        let per_conn = rss1.saturating_sub(rss0) * 1024 / (IDLE + DRIPS) as u64;
        assert!(
            per_conn <= 64 * 1024,
            "{per_conn} bytes of RSS per idle connection"
        );
        let back = wait_for(std::time::Duration::from_secs(30), || {
            rss_kib_of(pid) <= rss0 + 32 * 1024
        })
        .await;
        let rss2 = rss_kib_of(pid);
        report.push(format!(
            "round {round}: descriptors {fds0} -> {fds1} -> {}; RSS MiB {} -> {} -> {}",
            fds_of(pid),
            rss0 / 1024,
            rss1 / 1024,
            rss2 / 1024
        ));
        let trims: Vec<String> = s
            .orca
            .log()
            .lines()
            .filter(|l| {
                l.contains("trim") || l.contains("background") || l.contains("edge_connections")
            })
            .map(str::to_string)
            .collect();
        assert!(
            back,
            "RSS did not come back: {report:?}; open connections {}; trims logged: {trims:?}",
            s.orca.metric_value("orca_edge_connections")
        );
    }
    eprintln!("orca under {IDLE} idle and {DRIPS} dripping connections: {report:#?}");
    assert_eq!(
        s.orca.metric_value("orca_edge_connections_refused_total"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_are_closed_at_accept() {
    const MAX: usize = 64;
    let s = Stack::start(Origin::S3, BUCKET, |c| {
        c.log_level("info")
            .extra_yaml(&format!("limits:\n  max_connections: {MAX}\n"))
    })
    .await;
    let data = deterministic_bytes(92, 3 * 1024 * 1024 + 11);
    s.put("k", &data).await;
    let r = http_get(&s.url("k"), None).await.unwrap();
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    let pid = s.orca.pid();
    let fds0 = fds_of(pid);
    let addr: std::net::SocketAddr = s.orca.edge_addr().parse().unwrap();
    let idle: Vec<_> = tokio::task::spawn_blocking(move || {
        (0..1000)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect()
    })
    .await
    .unwrap();
    // Orca accepts each and closes all but MAX of them at once.
    let refused = wait_for(std::time::Duration::from_secs(60), || {
        s.orca.metric_value("orca_edge_connections_refused_total") >= (1000 - MAX) as f64
    })
    .await;
    let held = fds_of(pid);
    assert!(refused, "{}", s.orca.log_tail());
    assert!(
        held <= fds0 + MAX + 8,
        "{held} descriptors with {MAX} connections allowed"
    );
    assert_eq!(s.orca.metric_value("orca_edge_connections"), MAX as f64);
    // The refused ones see their connection closed without an answer.
    let closed = idle
        .iter()
        .filter(|c| {
            use std::io::Read;
            c.set_read_timeout(Some(std::time::Duration::from_millis(200)))
                .unwrap();
            matches!((&**c).read(&mut [0u8; 1]), Ok(0) | Err(_))
        })
        .count();
    assert!(closed >= 1000 - MAX, "{closed} connections closed");
    drop(idle);
    assert!(
        wait_for(std::time::Duration::from_secs(30), || s
            .orca
            .metric_value("orca_edge_connections")
            == 0.0)
        .await
    );
    let r = http_get(&s.url("k"), None).await.unwrap();
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
}
