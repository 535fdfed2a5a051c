//! End-to-end cases that hold whatever the origin: `tests/core.rs` runs them on moto and
//! `tests/azure.rs` on Azurite, each on a fresh [`Stack`]. An origin-specific test calls the case
//! and then checks what only its origin has on the same stack.

use std::path::Path;
use std::time::Duration;

use ::orca::chunk::ChunkId;

use super::{
    deterministic_bytes, http_get, http_head, sha256_hex, Fault, FaultRule, HttpError, OrcaProcess,
    RequestRecord, Stack,
};

const MIB: usize = 1 << 20;

/// One object a store check knows: its key, unquoted ETag and bytes.
pub type Stored<'a> = (&'a str, &'a str, &'a [u8]);

/// Waits (at most 10 s) until no fill is in flight and the commit counters stop moving, so a
/// store check sees every commit the reads before it started (commits run in the background).
pub async fn settle_commits(s: &Stack) {
    settle_commits_of(&s.orca).await;
}

/// [`settle_commits`] for one replica.
pub async fn settle_commits_of(orca: &OrcaProcess) {
    let mut last = None;
    let mut stable = 0;
    for _ in 0..100 {
        let inflight = orca.metric_value_async("orca_fills_inflight").await;
        let commits = orca
            .metric_value_async("orca_cachestore_commits_total")
            .await;
        if inflight == 0.0 && last == Some(commits) {
            stable += 1;
            if stable >= 3 {
                return;
            }
        } else {
            stable = 0;
        }
        last = Some(commits);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "fills or commits still moving after 10 s\n{}",
        orca.log_tail()
    );
}

/// Each chunk of `objects` (1 MiB chunks of `bucket`, `origin_id`) by its name: the object's
/// key and the origin's bytes for that chunk.
pub fn good_chunks<'a>(
    origin_id: &str,
    bucket: &str,
    objects: &[Stored<'a>],
) -> std::collections::HashMap<String, (String, &'a [u8])> {
    good_chunks_sized(origin_id, bucket, objects, MIB as u64)
}

/// [`good_chunks`] for chunks of `chunk` bytes.
pub fn good_chunks_sized<'a>(
    origin_id: &str,
    bucket: &str,
    objects: &[Stored<'a>],
    chunk: u64,
) -> std::collections::HashMap<String, (String, &'a [u8])> {
    let mut good = std::collections::HashMap::new();
    for (key, etag, data) in objects {
        for index in 0..(data.len() as u64).div_ceil(chunk) {
            let id = ChunkId::from_fields(origin_id, bucket, key, etag, chunk, index);
            let start = (index * chunk) as usize;
            let end = (start + chunk as usize).min(data.len());
            good.insert(id.name(), (key.to_string(), &data[start..end]));
        }
    }
    good
}

/// Checks the fs store directly, after [`settle_commits`]: every file under `ROOT/v1` is a chunk
/// of one of `objects` (chunks of the replica's `chunk_size`, Orca's `origin.id`) holding exactly the origin's bytes for
/// that chunk; nothing else is stored. With `all`, every chunk of every object is there too (and
/// a missing `v1/` fails); without it an absent `v1/` means nothing was stored, which passes.
pub async fn assert_store_holds_only_good_chunks(s: &Stack, objects: &[Stored<'_>], all: bool) {
    assert_fs_store_holds_only_good_chunks(&s.orca, &s.bucket, objects, all).await;
}

/// [`assert_store_holds_only_good_chunks`] for the fs store of any replica reading `bucket`.
pub async fn assert_fs_store_holds_only_good_chunks(
    orca: &OrcaProcess,
    bucket: &str,
    objects: &[Stored<'_>],
    all: bool,
) {
    settle_commits_of(orca).await;
    // The chunk size the replica was started with (`OrcaConfig::chunk_size`, in MiB).
    let chunk = orca
        .config()
        .chunk_size
        .strip_suffix("MiB")
        .and_then(|n| n.parse::<u64>().ok())
        .map_or(MIB as u64, |n| n * MIB as u64);
    let good = good_chunks_sized(&orca.config().origin_id, bucket, objects, chunk);
    let root = orca.cache_root().join("v1");
    let found = stored_files(&root);
    assert!(
        found.is_some() || !all,
        "no store directory {} where chunks are expected",
        root.display()
    );
    let mut seen = std::collections::HashSet::new();
    for path in found.unwrap_or_default() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let Some((key, want)) = good.get(&name) else {
            panic!(
                "{} is no chunk of {:?}\n{}",
                path.display(),
                objects.iter().map(|o| o.0).collect::<Vec<_>>(),
                orca.log_tail()
            );
        };
        let got = std::fs::read(&path).unwrap();
        assert_eq!(
            (got.len(), sha256_hex(&got)),
            (want.len(), sha256_hex(want)),
            "stored chunk {name} of {key} differs from the origin's bytes"
        );
        seen.insert(name);
    }
    if all {
        let missing: Vec<_> = good.keys().filter(|n| !seen.contains(*n)).collect();
        assert!(missing.is_empty(), "chunks not stored: {missing:?}");
    }
}

/// Every file under `root` (recursively); `None` when `root` does not exist.
fn stored_files(root: &Path) -> Option<Vec<std::path::PathBuf>> {
    if !root.exists() {
        return None;
    }
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    Some(files)
}

/// Objects of 0, 1, MiB-1, MiB, MiB+1 and 17 MiB bytes, read cold then warm: byte-exact, each
/// chunk fetched from the origin once, warm reads from the store (or a fill still in flight).
pub async fn cold_then_warm_reads(s: &Stack) {
    let sizes = [0, 1, MIB - 1, MIB, MIB + 1, 17 * MIB];
    for (i, size) in sizes.iter().enumerate() {
        let key = format!("sizes/{size}");
        let data = deterministic_bytes(i as u64, *size);
        s.put(&key, &data).await;
        let cold = http_get(&s.url(&key), None).await.unwrap();
        assert_eq!(cold.status, 200, "cold {key}: {}", cold.text());
        assert_eq!(
            cold.header("content-length"),
            Some(size.to_string().as_str())
        );
        assert_eq!(sha256_hex(&cold.body), sha256_hex(&data), "cold {key}");
        let before = s.origin_gets();
        let warm = http_get(&s.url(&key), None).await.unwrap();
        assert_eq!(warm.status, 200, "warm {key}");
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

/// Single ranges on and around chunk boundaries, open-ended and suffix ranges, a start past the
/// end (416), several ranges and bad syntax (the whole object, 200), HEAD, and a zero-byte
/// object; every chunk fetched from the origin once whatever the number of ranges.
pub async fn ranges_are_answered_as_s3_does(s: &Stack) {
    let size = 17 * MIB;
    let data = deterministic_bytes(17, size);
    let etag = s.put("ranged", &data).await;
    let url = s.url("ranged");
    let m = MIB as u64;
    let last = size as u64 - 1;
    let mut cases: Vec<(u64, u64)> = vec![(0, 0), (last, last), (m - 5, 2 * m + 5), (1000, 5 * m)];
    for boundary in [m, 2 * m, 3 * m, 8 * m, 16 * m] {
        cases.extend([
            (boundary - 1, boundary - 1),
            (boundary, boundary),
            (boundary - 1, boundary),
        ]);
    }
    for (a, b) in cases {
        let r = http_get(&url, Some(&format!("bytes={a}-{b}")))
            .await
            .unwrap();
        assert_eq!(r.status, 206, "bytes={a}-{b}: {}", r.text());
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {a}-{b}/{size}").as_str())
        );
        assert!(r.body == data[a as usize..=b as usize], "bytes={a}-{b}");
    }
    // Open-ended and suffix ranges.
    let r = http_get(&url, Some("bytes=-100")).await.unwrap();
    assert_eq!((r.status, &r.body[..]), (206, &data[size - 100..]));
    let r = http_get(&url, Some("bytes=16000000-")).await.unwrap();
    assert_eq!(r.status, 206);
    assert!(r.body == data[16_000_000..]);
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
    // The ranges touched chunks 0-5, 7, 8, 15 and 16, each fetched from the origin once.
    assert_eq!(s.origin_gets(), 10);
    // A suffix longer than the object, an end past the object: all of it from byte 0 or 10.
    let r = http_get(&url, Some("bytes=-99999999")).await.unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 0-{last}/{size}").as_str())
    );
    let r = http_get(&url, Some("bytes=10-99999999")).await.unwrap();
    assert_eq!(r.status, 206);
    assert!(r.body == data[10..]);
    // Several ranges or bad syntax: the whole object with 200.
    for header in ["bytes=0-1,5-6", "bytes=5-2", "bytes=abc", "items=0-1"] {
        let r = http_get(&url, Some(header)).await.unwrap();
        assert_eq!(r.status, 200, "{header}");
        assert_eq!(sha256_hex(&r.body), sha256_hex(&data), "{header}");
    }
    let whole = http_get(&url, None).await.unwrap();
    assert_eq!(sha256_hex(&whole.body), sha256_hex(&data));
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
    assert_eq!(s.origin_gets(), 17);
}

/// 32 clients cold-reading one 16 MiB object at once: one HEAD and one GET per chunk at the
/// origin, the rest joined fills in flight or read the store.
pub async fn concurrent_cold_reads_fetch_each_chunk_once(s: &Stack) {
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
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(sha256_hex(&r.body), want);
    }
    assert_eq!(s.origin_gets(), 16, "{}", s.origin_log_tail());
    assert_eq!(s.requests_for("HEAD", "sixteen"), 1);
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
    let committed = s
        .orca
        .wait_metric_at_least(
            "orca_cachestore_commits_total{result=\"committed\"}",
            16.0,
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(committed, 16.0);
}

/// An object replaced at the origin: within the metadata TTL the pinned version whole (or an
/// error), never a mix; after it, the new version whole. Chunk GETs carry `If-Match`.
pub async fn a_replaced_object_is_served_after_the_ttl_and_never_mixed(s: &Stack) {
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
    let pinned = s
        .proxy
        .counts()
        .log
        .iter()
        .filter(|r| r.header("if-match").is_some() && r.method == "GET")
        .count();
    assert!(pinned >= 2, "chunk GETs were not pinned with If-Match");
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

/// `limits` with `origin_timeout: 1s` (the test default concurrency kept): every origin
/// deadline is short, so a stalled origin costs a test about a second per attempt.
pub const ONE_SECOND_TIMEOUT: &str = "limits:\n  origin_concurrency: 16\n  origin_timeout: 1s\n";

/// The byte range a chunk GET asked for: `Range` (S3) or `x-ms-range` (Azure).
pub fn chunk_range(r: &RequestRecord) -> Option<String> {
    r.range
        .clone()
        .or_else(|| r.header("x-ms-range").map(str::to_string))
}

/// A fault on every chunk GET of `key` (whatever header the origin takes the range in), `n`
/// times.
pub fn on_chunk_gets_of(key: &str, fault: Fault, n: usize) -> FaultRule {
    FaultRule::new(fault)
        .method("GET")
        .path_contains(&format!("/{key}"))
        .times(n)
}

/// The faulted request of the proxy's log: (its range, how many requests asked for that range).
pub fn faulted_range(s: &Stack) -> (String, usize) {
    let log = s.proxy.counts().log;
    let faulted = log
        .iter()
        .find(|r| r.fault.is_some())
        .unwrap_or_else(|| panic!("no request was faulted: {log:?}"));
    let range = chunk_range(faulted).expect("a chunk GET has a range");
    let same = log
        .iter()
        .filter(|r| chunk_range(r).as_deref() == Some(range.as_str()))
        .count();
    (range, same)
}

/// Reads `key` whole after a fault that hits a chunk other than the first, whose bytes are
/// already cached: the status and first bytes have gone out, so the failure must abort the
/// body, never complete it; what did arrive is a prefix of the object.
pub async fn assert_aborted_after_the_first_byte(s: &Stack, key: &str, data: &[u8]) {
    match http_get(&s.url(key), None).await {
        Ok(r) => panic!(
            "a failed fill after the first byte gave a complete-looking answer: status {}, {} bytes",
            r.status,
            r.body.len()
        ),
        Err(HttpError::Body {
            status, received, ..
        }) => {
            assert_eq!(status, 200);
            assert!(received.len() < data.len());
            assert!(
                received == data[..received.len()],
                "the bytes before the abort are not the object's"
            );
        }
        Err(e) => panic!("no answer at all: {e:?}"),
    }
}

/// A chunk's body cut after the client has its status and first bytes: an aborted body, no
/// retry of the accepted answer, nothing stored (checked before any other read), and the next
/// read exact.
pub async fn a_body_cut_after_the_first_byte_aborts_and_is_never_stored(s: &Stack) {
    let data = deterministic_bytes(3, 3 * MIB);
    let etag = s.put("cut", &data).await;
    // Chunk 0 cached first, so the whole read's status and first bytes leave before the cut.
    let r = http_get(&s.url("cut"), Some("bytes=0-0")).await.unwrap();
    assert_eq!(r.status, 206);
    s.proxy
        .push_fault(on_chunk_gets_of("cut", Fault::CutBodyAfter(100_000), 1));
    assert_aborted_after_the_first_byte(s, "cut", &data).await;
    // The accepted answer was not retried by that read.
    let (range, same) = faulted_range(s);
    assert_eq!(same, 1, "the cut chunk GET ({range}) was retried");
    // Nothing wrong was stored, checked before any other read can quarantine it.
    assert_store_holds_only_good_chunks(s, &[("cut", &etag, &data)], false).await;
    let r = http_get(&s.url("cut"), None).await.unwrap();
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    assert_store_holds_only_good_chunks(s, &[("cut", &etag, &data)], true).await;
}

/// The origin's header arrives and is accepted, then the connection closes before any body
/// byte: a proper S3 error status (no byte has gone out), no retry (no second writer), nothing
/// stored, and the next read exact.
pub async fn a_cut_right_after_the_origin_header_fails_cleanly_without_a_second_writer(s: &Stack) {
    let data = deterministic_bytes(10, MIB);
    let etag = s.put("zero", &data).await;
    s.proxy
        .push_fault(on_chunk_gets_of("zero", Fault::CutBodyAfter(0), 1));
    // No byte has gone to the client: the failure is a proper S3 error status, not a 200
    // with an aborted body.
    let r = http_get(&s.url("zero"), None).await.unwrap();
    assert!(r.status >= 500, "status {}: {}", r.status, r.text());
    assert!(r.text().contains("<Error>"), "{}", r.text());
    assert!(r.header("x-amz-request-id").is_some());
    assert_eq!(s.origin_gets(), 1, "the accepted answer was retried");
    assert_store_holds_only_good_chunks(s, &[("zero", &etag, &data)], false).await;
    let r = http_get(&s.url("zero"), None).await.unwrap();
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    assert_eq!(s.orca.ops_get("/healthz").0, 200);
    assert!(!s.orca.log().contains("panicked"), "{}", s.orca.log_tail());
    assert_store_holds_only_good_chunks(s, &[("zero", &etag, &data)], true).await;
}

/// An origin whose answers never come within `limits.origin_timeout` (run with
/// [`ONE_SECOND_TIMEOUT`]): `504 OriginTimeout` after 3 attempts, shared by the two clients
/// that asked for the chunk at once.
pub async fn an_origin_that_never_answers_is_a_504_after_three_attempts_shared_by_waiters(
    s: &Stack,
) {
    let data = deterministic_bytes(70, MIB);
    s.put("mute", &data).await;
    // Every chunk GET's answer is held past the 1 s read deadline.
    s.proxy.push_fault(on_chunk_gets_of(
        "mute",
        Fault::Stall(Duration::from_secs(4)),
        10,
    ));
    // Two clients on one chunk: the second waits on the first's fill (the cache lock). When
    // that fill fails for good (its 3 attempts), the waiter gets the same answer instead of
    // becoming the writer and making 3 attempts of its own.
    let url = s.url("mute");
    let second = tokio::spawn(async move { http_get(&url, None).await });
    let r = http_get(&s.url("mute"), None).await.unwrap();
    let r2 = second.await.unwrap().unwrap();
    for r in [&r, &r2] {
        assert_eq!(r.status, 504, "{}", r.text());
        assert!(
            r.text().contains("<Code>OriginTimeout</Code>"),
            "{}",
            r.text()
        );
        assert!(r.header("x-amz-request-id").is_some());
    }
    assert_eq!(s.origin_gets(), 3, "{:?}", s.proxy.counts().log);
    assert_eq!(
        s.orca
            .metric_value("orca_origin_requests_total{op=\"get\",status=\"0\"}"),
        3.0
    );
    assert_eq!(s.proxy.pending_faults(), 7);
}
