//! Availability and correctness under odd origins and requesters (issue 12's bugs), each shown
//! against real moto behind the fault-injecting proxy and the real orca binary.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;

const MIB: usize = 1 << 20;
const BUCKET: &str = "bkt";

/// moto, a counting/fault proxy in front of it, and Orca reading through the proxy.
struct Origin {
    moto: Moto,
    proxy: FaultProxy,
    orca: OrcaProcess,
}

impl Origin {
    async fn start(configure: impl FnOnce(OrcaConfig) -> OrcaConfig) -> Origin {
        let moto = Moto::start();
        create_bucket(&moto.endpoint(), BUCKET).await;
        let proxy = FaultProxy::start(&moto.endpoint());
        let orca = OrcaProcess::start(configure(OrcaConfig::new(&proxy.endpoint())));
        Origin { moto, proxy, orca }
    }

    async fn put(&self, key: &str, data: &[u8]) -> String {
        let etag = put_object(&self.moto.endpoint(), BUCKET, key, data.to_vec()).await;
        etag.trim_matches('"').to_string()
    }
}

/// GETs `url` and checks the answer is S3's `403 AccessDenied`.
async fn assert_access_denied(url: &str) {
    let r = http_get(url, None).await.unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("<Code>AccessDenied</Code>"),
        "{}",
        r.text()
    );
}

/// An origin that marks its ETags weak (`W/"..."`) cannot have a version pinned: `If-Match`
/// compares strongly, so a strict origin refuses every chunk GET. Orca answers at once with
/// `502 OriginMissingETag` (kept for the negative TTL) instead of pinning the weak tag as if it
/// were strong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weak_etag_is_refused_not_pinned_as_a_strong_one() {
    let s = Origin::start(|c| c).await;
    let data = deterministic_bytes(41, MIB / 2);
    let etag = s.put("weak", &data).await;
    s.proxy.push_fault(
        FaultRule::new(Fault::ReplaceEtag(format!("W/\"{etag}\"")))
            .method("HEAD")
            .times(5),
    );
    let got = http_get(&s.orca.object_url(BUCKET, "weak"), None)
        .await
        .unwrap();
    assert_eq!(got.status, 502, "{}", got.text());
    assert!(got.text().contains("OriginMissingETag"), "{}", got.text());
    assert_eq!(
        s.proxy.counts().gets_with_range,
        0,
        "no chunk GET was pinned to it"
    );
}

/// The fill service bounds the chunk a requester may name by this replica's own ladder: a
/// peer (or anyone on the internal port) asking for a 4 GiB "chunk" gets `400`, and the
/// replica never holds more than its largest configured chunk for one fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_request_for_a_chunk_larger_than_the_ladder_is_refused() {
    let s = Origin::start(|c| c.chunk_size("1MiB")).await;
    let data = deterministic_bytes(42, 3 * MIB);
    let etag = s.put("big", &data).await;
    let query = |chunk_size: u64| {
        format!(
            "{}/internal/fill?origin=test-origin&bucket={BUCKET}&key=big&etag={etag}&chunk_size={chunk_size}&index=0&object_size={}",
            s.orca.internal_url(),
            data.len()
        )
    };
    let refused = http_get(&query(4 << 30), None).await.unwrap();
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(refused.text().contains("chunk_size"), "{}", refused.text());
    assert_eq!(s.proxy.counts().gets_with_range, 0);
    // The ladder's own chunk size is served.
    let ok = http_get(&query(MIB as u64), None).await.unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.body, &data[..MIB]);
}

/// S3 answers `403`, not `404`, for a missing key when the role lacks `s3:ListBucket`, and for
/// a bucket that is someone else's. That is the object's answer, not the replica's health: the
/// client gets `403 AccessDenied` (which SDKs do not retry), and readiness stays up however
/// many there are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_object_is_access_denied_and_readiness_stays_up() {
    let s = Origin::start(|c| c).await;
    let data = deterministic_bytes(43, 1000);
    s.put("open", &data).await;
    s.put("secret", &data).await;
    // Every request for this key is refused (a HEAD without a body, a GET with S3's
    // AccessDenied XML), as a bucket policy would.
    s.proxy.push_fault(
        FaultRule::new(Fault::Status(403))
            .path_contains("/bkt/secret")
            .times(100),
    );
    for _ in 0..5 {
        assert_access_denied(&s.orca.object_url(BUCKET, "secret")).await;
    }
    assert_eq!(
        s.orca.ops_get("/readyz").0,
        200,
        "a refused object is not a sick replica"
    );
    let r = http_get(&s.orca.object_url(BUCKET, "open"), None)
        .await
        .unwrap();
    assert_eq!((r.status, r.body), (200, data));
}

/// Credentials the origin refuses (`InvalidAccessKeyId`) make the replica unready after three
/// refusals in a row; once the origin accepts them again, a background probe makes it ready
/// again with no client request (an unready pod gets no traffic that could do it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_make_the_replica_unready_until_a_probe_sees_them_accepted() {
    let s = Origin::start(|c| c).await;
    let data = deterministic_bytes(44, 1000);
    s.put("k", &data).await;
    let refused = "<Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided does not exist in our records.</Message></Error>";
    // Three client GETs, each a HEAD and a GET that reads the code, then the probe's first
    // round; after that the origin accepts again.
    s.proxy.push_fault(
        FaultRule::new(Fault::Respond(403, refused.into()))
            .path_contains("/bkt/k")
            .times(8),
    );
    for _ in 0..3 {
        let r = http_get(&s.orca.object_url(BUCKET, "k"), None)
            .await
            .unwrap();
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(r.text().contains("OriginAuthFailed"), "{}", r.text());
    }
    let (status, body) = s.orca.ops_get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("credentials"), "{body}");
    // No client request from here on: the probe alone brings readiness back.
    let mut ready = false;
    for _ in 0..300 {
        if s.orca.ops_get("/readyz").0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready, "readiness came back by itself");
    assert!(
        s.orca
            .metric_value("orca_origin_requests_total{op=\"probe\"}")
            >= 3.0,
        "refusals were told apart by GETs"
    );
    let r = http_get(&s.orca.object_url(BUCKET, "k"), None)
        .await
        .unwrap();
    assert_eq!((r.status, r.body), (200, data));
}

/// Opens a connection that asks for `path` and then never reads: the way a stuck client (or a
/// frozen process) holds a response. The small receive buffer makes the stall bite at once.
async fn stalled_client(addr: &str, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr.parse().unwrap()).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    stream
}

/// Clients that stop reading a large object must not take the replica's read-ahead memory
/// for good: each fails its own request after `limits.client_write_timeout` without progress,
/// and meanwhile a request that finds no memory free waits at most `limits.readahead_wait`,
/// then is told to slow down. Every request of a well-behaved client completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_do_not_starve_the_others() {
    let s = Origin::start(|c| {
        c.chunk_size("1MiB").readahead(4).extra_yaml(
            "limits:\n  readahead_memory: 4MiB\n  client_write_timeout: 2s\n  readahead_wait: 1s\n",
        )
    })
    .await;
    let big = deterministic_bytes(45, 48 * MIB);
    s.put("big", &big).await;
    let small = deterministic_bytes(46, 1024);
    s.put("small", &small).await;
    let addr = s.orca.edge_addr();
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(stalled_client(&addr, &format!("/{BUCKET}/big")).await);
    }
    // Give the stalled requests time to take the budget and fill their socket buffers.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut served = 0;
    let mut slowed = 0;
    for _ in 0..20 {
        let r = http_get(&s.orca.object_url(BUCKET, "small"), None)
            .await
            .expect("answered, not hung");
        match r.status {
            200 => {
                assert_eq!(r.body, small);
                served += 1;
            }
            503 => {
                assert!(r.text().contains("SlowDown"), "{}", r.text());
                slowed += 1;
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
        if served >= 3 {
            break;
        }
    }
    assert!(served >= 3, "served {served}, slowed down {slowed}");
    drop(stalled);
    // The stalled requests' memory came back: a whole read of the large object works.
    let r = http_get(&s.orca.object_url(BUCKET, "big"), None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(sha256_hex(&r.body), sha256_hex(&big));
}

/// Cold GETs of objects whose chunks are as large as the whole read-ahead budget all start at
/// once: while it waits for the origin's first byte, the chunk a GET sends next holds a window
/// of the budget (`edge::pipeline::HEAD_WINDOW`, 1 MiB), not its whole length. Every GET gets
/// its bytes, none is told to slow down, and each chunk is fetched once.
///
/// Seen failing before the fix (the benchmark's figure 11 found it: 64 cold readers of 128 MiB
/// chunks, 13 answered `503 SlowDown`): the first GET reserved its whole 8 MiB chunk, all of
/// the budget, while the origin held its answer for 3 s, and the others waited past
/// `limits.readahead_wait` (1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_gets_of_chunks_as_large_as_the_read_ahead_budget_all_start() {
    const GETS: usize = 4;
    // One origin GET per chunk (`subrange_size: 0`), so each GET waits for one held answer.
    let s = Origin::start(|c| {
        c.extra_yaml(
            "chunking:\n  size: 8MiB\n  tiers: []\n  readahead: 0\n  subrange_size: 0\nlimits:\n  readahead_memory: 8MiB\n  readahead_wait: 1s\n",
        )
    })
    .await;
    let mut objects = Vec::new();
    for i in 0..GETS {
        let data = deterministic_bytes(60 + i as u64, 8 * MIB);
        s.put(&format!("large-{i}"), &data).await;
        objects.push(data);
    }
    // Each chunk GET's answer is held for 3 s: every GET waits that long for its first byte.
    s.proxy.push_fault(
        FaultRule::new(Fault::Stall(std::time::Duration::from_secs(3)))
            .method("GET")
            .with_range()
            .path_contains("/large-")
            .times(GETS),
    );
    let gets: Vec<_> = (0..GETS)
        .map(|i| {
            let url = s.orca.object_url(BUCKET, &format!("large-{i}"));
            tokio::spawn(async move { http_get(&url, None).await })
        })
        .collect();
    for (i, get) in gets.into_iter().enumerate() {
        let r = get.await.unwrap().unwrap();
        assert_eq!(r.status, 200, "large-{i}: {}", r.text());
        assert!(r.body == objects[i], "large-{i}: the bytes differ");
    }
    assert_eq!(
        s.orca
            .metric_value_async("orca_readahead_wait_timeouts_total")
            .await,
        0.0,
        "no GET waited past limits.readahead_wait"
    );
    assert_eq!(
        s.proxy.counts().gets_with_range,
        GETS,
        "one origin GET per chunk"
    );
    assert_eq!(s.proxy.pending_faults(), 0, "every chunk GET was held");
}

/// A chunk GET refused by the origin (a KMS key the role cannot use, credentials that expired
/// while the HEAD was still cached) reaches the client as `403 AccessDenied`, whichever replica
/// fetched it, never as a retryable `502`; it does not count against readiness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_chunk_get_is_access_denied() {
    let s = Origin::start(|c| c).await;
    let data = deterministic_bytes(47, 1000);
    s.put("kms", &data).await;
    s.proxy.push_fault(
        FaultRule::new(Fault::Status(403))
            .method("GET")
            .with_range()
            .path_contains("/bkt/kms")
            .times(10),
    );
    for _ in 0..3 {
        assert_access_denied(&s.orca.object_url(BUCKET, "kms")).await;
    }
    assert_eq!(s.orca.ops_get("/readyz").0, 200);
}

/// A fill request names the object's size, and so the chunk's length, on its own word. A wrong
/// one (a buggy or hostile caller on the internal port) must not make the replica delete the
/// good chunk it has stored as "the wrong length".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_request_with_a_wrong_object_size_does_not_delete_a_good_chunk() {
    let s = Origin::start(|c| c.chunk_size("1MiB")).await;
    let data = deterministic_bytes(48, 1000);
    let etag = s.put("k", &data).await;
    let r = http_get(&s.orca.object_url(BUCKET, "k"), None)
        .await
        .unwrap();
    assert_eq!((r.status, r.body), (200, data.clone()));
    let committed = s
        .orca
        .wait_metric_at_least(
            "orca_cachestore_commits_total{result=\"committed\"}",
            1.0,
            std::time::Duration::from_secs(30),
        )
        .await;
    assert!(committed >= 1.0, "the chunk was committed");
    s.proxy.reset_counts();
    // The same chunk (same chunk size and index) of a "1001-byte" object.
    let bogus = format!(
        "{}/internal/fill?origin=test-origin&bucket={BUCKET}&key=k&etag={etag}&chunk_size={}&index=0&object_size=1001",
        s.orca.internal_url(),
        MIB
    );
    let answer = http_get(&bogus, None).await.unwrap();
    assert_ne!(answer.status, 200, "a 1001-byte chunk cannot be served");
    // The stored chunk is still there: the next read makes no origin GET.
    let before = s.proxy.counts().gets_with_range;
    let r = http_get(&s.orca.object_url(BUCKET, "k"), None)
        .await
        .unwrap();
    assert_eq!((r.status, r.body), (200, data));
    assert_eq!(
        s.proxy.counts().gets_with_range,
        before,
        "served from the store, not refilled"
    );
}

/// `SIGHUP` (what operators and tools send to "reload") never ends Orca: without a credentials
/// file there is nothing to reload, and the process goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_without_a_credentials_file_does_not_end_orca() {
    let mut s = Origin::start(|c| c).await;
    let data = deterministic_bytes(49, 1000);
    s.put("k", &data).await;
    s.orca.signal("HUP");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(s.orca.try_wait().is_none(), "SIGHUP ended orca");
    let r = http_get(&s.orca.object_url(BUCKET, "k"), None)
        .await
        .unwrap();
    assert_eq!((r.status, r.body), (200, data));
}
