//! Sub-range fills (issue 15): a chunk longer than `chunking.subrange_size` is fetched as
//! parallel ranged GETs pinned to its ETag, the requester's part first; it is still stored
//! whole and once, and an ETag change on any sub-range fails the whole chunk.
//!
//! Real servers: moto as the origin, the fault proxy between Orca and the origin, the orca
//! binary. Assertions are on bytes, on the order and ranges of the GETs the origin saw, on
//! metrics and on the store's contents read directly; never on wall-clock time.

#![allow(clippy::unwrap_used)]

mod common;

use common::orca::yaml_str;
use common::*;
use std::time::Duration;

const MIB: usize = 1 << 20;
const WAIT: Duration = Duration::from_secs(60);

/// One 8 MiB chunk per 8 MiB of object, fetched as 1 MiB sub-ranges by `streams` GETs at once,
/// into an `fs` store in `root` bounded by its own size (the shared machines' disks run near
/// full, and the default `min_free` would refuse every commit).
fn config(c: OrcaConfig, root: &std::path::Path, streams: usize) -> OrcaConfig {
    let yaml = format!(
        "cachestore:\n  driver: fs\n  fs:\n    root: {}\n    max_size: 1GiB\n    min_free: 0\n\
         chunking:\n  size: 8MiB\n  tiers: []\n  subrange_size: 1MiB\n  subrange_streams: {streams}\n",
        yaml_str(&root.to_string_lossy())
    );
    c.cache_root(root).extra_yaml(&yaml)
}

/// A rule that changes nothing, to let the next GET of `key` through untouched (the proxy
/// applies the first matching rule).
fn pass_once(key: &str) -> FaultRule {
    FaultRule::new(Fault::StripRequestHeader("x-not-sent".into()))
        .method("GET")
        .path_contains(&format!("/{key}"))
        .times(1)
}

/// The byte ranges `[a, b)` of the origin GETs of `key`, in the order the origin saw them.
fn origin_ranges(s: &Stack, key: &str) -> Vec<(usize, usize)> {
    let suffix = format!("/{}/{key}", s.bucket);
    s.proxy
        .counts()
        .log
        .iter()
        .filter(|r| r.method == "GET" && r.path().ends_with(&suffix))
        .map(|r| {
            assert!(r.header("if-match").is_some(), "a GET not pinned: {r:?}");
            let range = r
                .range
                .as_deref()
                .or_else(|| r.header("x-ms-range"))
                .expect("a ranged GET");
            let (a, b) = range
                .strip_prefix("bytes=")
                .and_then(|v| v.split_once('-'))
                .expect("bytes=a-b");
            (a.parse().unwrap(), b.parse::<usize>().unwrap() + 1)
        })
        .collect()
}

/// Asserts that the GETs of `key` covered `[0, len)` exactly once.
fn fetched_once(s: &Stack, key: &str, len: usize) {
    let mut ranges = origin_ranges(s, key);
    ranges.sort_unstable();
    let mut at = 0;
    for (a, b) in &ranges {
        assert_eq!(*a, at, "a gap or a byte fetched twice: {ranges:?}");
        at = *b;
    }
    assert_eq!(at, len, "{ranges:?}");
}

const COMMITTED: &str = "orca_cachestore_commits_total{result=\"committed\"}";

/// A 4 KiB range at the end of a cold chunk is fetched first, by a GET of its own, and served
/// while the origin still drips the rest of the chunk; the chunk is then stored whole, every
/// byte fetched once. Seen failing against a build that fetches the chunk in one GET (the
/// first GET is `bytes=0-8388607`, and the client's range waits for the whole chunk) and one
/// that fetches the sub-ranges in order from the chunk's start (the tail comes last).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_at_the_end_of_a_chunk_is_served_while_the_rest_still_arrives() {
    let root = tempfile::tempdir().unwrap();
    let s = Stack::start(Origin::S3, "subchunk", |c| config(c, root.path(), 2)).await;
    let len = 8 * MIB;
    let data = deterministic_bytes(21, len);
    s.put("big", &data).await;
    // The first GET (the client's part) goes through; every other one drips: 1 MiB takes
    // 16 pauses of 150 ms.
    s.proxy.push_fault(pass_once("big"));
    s.proxy.push_fault(
        FaultRule::new(Fault::Drip(64 * 1024, Duration::from_millis(150)))
            .method("GET")
            .path_contains("/big")
            .times(100),
    );
    let tail = format!("bytes={}-{}", len - 4096, len - 1);
    let r = http_get(&s.url("big"), Some(&tail)).await.unwrap();
    assert_eq!(r.status, 206);
    assert!(r.body == data[len - 4096..], "the tail's bytes differ");
    // Answered while the fill goes on: nothing committed, no chunk file yet, and the first
    // origin GET was the client's part.
    let ranges = origin_ranges(&s, "big");
    assert_eq!(
        ranges[0],
        (len - 4096, len),
        "the client's part first: {ranges:?}"
    );
    assert_eq!(s.orca.metric_value_async(COMMITTED).await, 0.0);
    assert_eq!(
        fsstore::chunk_file_count(root.path()),
        0,
        "stored before the rest arrived"
    );
    // Then the chunk lands whole, each byte fetched once, by 1 MiB sub-ranges.
    s.orca.wait_metric_at_least(COMMITTED, 1.0, WAIT).await;
    s.proxy.clear_faults();
    fetched_once(&s, "big", len);
    let ranges = origin_ranges(&s, "big");
    assert!(ranges.iter().all(|(a, b)| b - a <= MIB), "{ranges:?}");
    assert_eq!(
        ranges.len(),
        9,
        "8 sub-ranges, the client's split off: {ranges:?}"
    );
    assert_eq!(
        s.orca.metric_value_async("orca_origin_bytes_total").await,
        len as f64
    );
    assert_eq!(
        s.orca
            .metric_value_async("orca_origin_requests_total{op=\"get\",status=\"206\"}")
            .await,
        ranges.len() as f64
    );
    assert_eq!(fsstore::chunk_file_count(root.path()), 1);
    served_from_the_store(&s, "big", &data).await;
    fsstore::no_spool_left(&root.path().join("tmp")).await;
}

/// The object changes between two sub-range GETs of one fill (the second is answered with
/// another ETag, or `412`): the whole chunk fails, nothing is stored, no spool is left, and
/// the next read fills it anew. Seen failing against a build that checks the ETag of the
/// first sub-range only (the client got the whole object, `200`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etag_change_between_sub_ranges_fails_the_whole_chunk() {
    let root = tempfile::tempdir().unwrap();
    let s = Stack::start(Origin::S3, "subchunk", |c| config(c, root.path(), 2)).await;
    let len = 8 * MIB;
    for (key, fault) in object_changed(["changed", "refused"]) {
        let data = deterministic_bytes(22, len);
        s.put(key, &data).await;
        s.proxy.push_fault(pass_once(key));
        s.proxy.push_fault(
            FaultRule::new(fault)
                .method("GET")
                .path_contains(&format!("/{key}"))
                .times(1),
        );
        match http_get(&s.url(key), None).await {
            Ok(r) => assert_ne!(r.status, 200, "{key}: a complete answer"),
            Err(HttpError::Body { received, .. }) => {
                assert!(received.len() < len, "{key}");
                assert!(received == data[..received.len()], "{key}: not a prefix");
            }
            Err(e) => panic!("{key}: no answer: {e:?}"),
        }
        assert!(
            origin_ranges(&s, key).len() >= 2,
            "{key}: two sub-range GETs"
        );
        nothing_stored(&s, root.path(), key).await;
    }
    // The next read fills anew and stores the chunk whole.
    let data = deterministic_bytes(22, len);
    refilled_whole(&s, root.path(), "changed", &data).await;
}

/// 32 readers at once, whole and ranged, of a cold object of three chunks (8, 8 and 4 MiB,
/// each fetched as sub-ranges, the first GETs slowed so readers pile onto fills in flight):
/// every reader gets its bytes, and the origin sends each byte of the object once. Seen
/// failing against a build whose fill service starts a fill of its own when one is in flight
/// (bytes fetched twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_bytes_per_object_stay_one_under_32_readers() {
    let root = tempfile::tempdir().unwrap();
    let s = Stack::start(Origin::S3, "subchunk", |c| config(c, root.path(), 4)).await;
    let len = 20 * MIB;
    let data = std::sync::Arc::new(deterministic_bytes(23, len));
    s.put("many", &data).await;
    s.proxy.push_fault(
        FaultRule::new(Fault::Drip(256 * 1024, Duration::from_millis(100)))
            .method("GET")
            .path_contains("/many")
            .times(6),
    );
    let mut readers = Vec::new();
    for i in 0..32usize {
        let url = s.url("many");
        let data = data.clone();
        readers.push(tokio::spawn(async move {
            // Every fourth reader reads it all; the others a range somewhere in it.
            let range = (i % 4 != 0).then(|| {
                let a = (i * 2_654_435) % (len - 1);
                let b = (a + 1 + (i * 97_531) % (3 * MIB)).min(len);
                (a, b)
            });
            let header = range.map(|(a, b)| format!("bytes={a}-{}", b - 1));
            let r = http_get(&url, header.as_deref()).await.unwrap();
            let (a, b) = range.unwrap_or((0, len));
            assert_eq!(r.status, if range.is_some() { 206 } else { 200 });
            assert!(r.body == data[a..b], "reader {i}: bytes {a}..{b} differ");
        }));
    }
    for r in readers {
        tokio::time::timeout(WAIT * 2, r).await.unwrap().unwrap();
    }
    s.orca.wait_metric_at_least(COMMITTED, 3.0, WAIT).await;
    fetched_once(&s, "many", len);
    assert_eq!(
        s.orca.metric_value_async("orca_origin_bytes_total").await,
        len as f64,
        "origin bytes / object bytes = 1.00"
    );
    assert_eq!(fsstore::chunk_file_count(root.path()), 3);
}

/// The same with Azure Blob (Azurite): sub-range GETs use `x-ms-range` with `If-Match`, the
/// client's tail part first, the chunk fetched once; another ETag on the second sub-range
/// stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_sub_ranges_are_pinned_and_a_changed_blob_stores_nothing() {
    let root = tempfile::tempdir().unwrap();
    let s = Stack::start(Origin::Azure, "subchunk", |c| config(c, root.path(), 2)).await;
    let len = 8 * MIB;
    let data = deterministic_bytes(26, len);
    s.put("changed", &data).await;
    s.put("big", &data).await;
    s.proxy.push_fault(pass_once("changed"));
    s.proxy.push_fault(
        FaultRule::new(Fault::ReplaceEtag("\"0x8DCBADBADBADBAD\"".into()))
            .method("GET")
            .path_contains("/changed")
            .times(1),
    );
    match http_get(&s.url("changed"), None).await {
        Ok(r) => assert_ne!(r.status, 200, "a complete answer"),
        Err(HttpError::Body { received, .. }) => assert!(received.len() < len),
        Err(e) => panic!("no answer: {e:?}"),
    }
    fsstore::no_spool_left(&root.path().join("tmp")).await;
    assert_eq!(
        fsstore::chunk_file_count(root.path()),
        0,
        "a chunk was stored"
    );
    let tail = format!("bytes={}-{}", len - 4096, len - 1);
    let r = http_get(&s.url("big"), Some(&tail)).await.unwrap();
    assert_eq!(r.status, 206);
    assert!(r.body == data[len - 4096..], "the tail's bytes differ");
    assert_eq!(origin_ranges(&s, "big")[0], (len - 4096, len));
    s.orca.wait_metric_at_least(COMMITTED, 1.0, WAIT).await;
    fetched_once(&s, "big", len);
    let r = http_get(&s.url("big"), None).await.unwrap();
    assert!(r.body == data, "the stored chunk's bytes differ");
    assert_eq!(fsstore::chunk_file_count(root.path()), 1);
}

/// Two readers of a cold chunk wait for the replica's only origin permit, which another
/// chunk's (dripping) fill holds. The first to get it starts the sub-range fill; the second
/// joins that fill as soon as it is registered instead of waiting for a permit it does not
/// need, and every byte is fetched once. Seen failing before the fix: the second reader kept
/// waiting for the permit while the fill it could read went on, and was answered
/// `503 SlowDown` at the lock timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_waiting_for_an_origin_permit_joins_the_fill_that_starts_meanwhile() {
    let root = tempfile::tempdir().unwrap();
    // One origin permit; the lock timeout is 500 ms x 4 + 5 s = 7 s.
    let s = Stack::start(Origin::S3, "subchunk-join", |c| {
        config(c, root.path(), 1)
            .extra_yaml("limits:\n  origin_concurrency: 1\n  origin_timeout: 500ms\n")
    })
    .await;
    let small = deterministic_bytes(22, MIB);
    let big = deterministic_bytes(23, 8 * MIB);
    s.put("hold", &small).await;
    s.put("big", &big).await;
    // Every GET drips 128 KiB per 150 ms: `hold` (one chunk, one GET) keeps the permit about
    // 1.2 s; `big` (8 sub-ranges, one stream) fills in about 10 s, past the lock timeout.
    s.proxy.push_fault(
        FaultRule::new(Fault::Drip(128 * 1024, Duration::from_millis(150)))
            .method("GET")
            .times(100),
    );
    let url = s.url("hold");
    let hold = tokio::spawn(async move { http_get(&url, None).await.unwrap() });
    for _ in 0..500 {
        if s.proxy
            .counts()
            .log
            .iter()
            .any(|r| r.method == "GET" && r.path().ends_with("/hold"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Both readers of `big` miss and wait for the permit `hold`'s fill has.
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let url = s.url("big");
            tokio::spawn(async move { http_get(&url, None).await.unwrap() })
        })
        .collect();
    let hold = hold.await.unwrap();
    assert_eq!(hold.status, 200);
    assert!(hold.body == small, "hold's bytes differ");
    for (i, r) in readers.into_iter().enumerate() {
        let r = r.await.unwrap();
        assert_eq!(
            r.status,
            200,
            "reader {i}: {}",
            String::from_utf8_lossy(&r.body[..r.body.len().min(300)])
        );
        assert!(r.body == big, "reader {i}'s bytes differ");
    }
    s.proxy.clear_faults();
    fetched_once(&s, "big", 8 * MIB);
    assert_eq!(
        s.orca.metric_value_async("orca_origin_bytes_total").await,
        (9 * MIB) as f64
    );
}

/// The two ways an origin says the object changed under a pinned GET, one per key: another
/// ETag in its answer, or `412` to its `If-Match`.
fn object_changed([other_etag, refused]: [&str; 2]) -> [(&str, Fault); 2] {
    [
        (
            other_etag,
            Fault::ReplaceEtag("\"0123456789abcdef0123456789abcdef\"".into()),
        ),
        (refused, Fault::Status(412)),
    ]
}

/// A failed fill of `key` left nothing: no spool, no chunk file, no commit.
async fn nothing_stored(s: &Stack, root: &std::path::Path, key: &str) {
    fsstore::no_spool_left(&root.join("tmp")).await;
    assert_eq!(
        fsstore::chunk_file_count(root),
        0,
        "{key}: a chunk was stored"
    );
    assert_eq!(s.orca.metric_value_async(COMMITTED).await, 0.0, "{key}");
}

/// The next read of `key` (the store's only chunk) fills it anew: its bytes are `data` and the
/// chunk is stored whole.
async fn refilled_whole(s: &Stack, root: &std::path::Path, key: &str, data: &[u8]) {
    let r = http_get(&s.url(key), None).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body == data, "{key}: the refill's bytes differ");
    s.orca.wait_metric_at_least(COMMITTED, 1.0, WAIT).await;
    assert_eq!(fsstore::chunk_file_count(root), 1);
}

/// Reads `key` whole again: its bytes are `data` and the origin saw no new GET of it (the
/// chunk was stored whole).
async fn served_from_the_store(s: &Stack, key: &str, data: &[u8]) {
    let gets = origin_ranges(s, key).len();
    let r = http_get(&s.url(key), None).await.unwrap();
    assert!(r.body == data, "{key}: the stored chunk's bytes differ");
    assert_eq!(
        origin_ranges(s, key).len(),
        gets,
        "{key}: served from the store"
    );
}

/// The GETs of `key` the origin saw, in order, with the fault each got.
fn origin_gets(s: &Stack, key: &str) -> Vec<((usize, usize), Option<Fault>)> {
    let suffix = format!("/{}/{key}", s.bucket);
    let faults: Vec<_> = s
        .proxy
        .counts()
        .log
        .iter()
        .filter(|r| r.method == "GET" && r.path().ends_with(&suffix))
        .map(|r| r.fault.clone())
        .collect();
    origin_ranges(s, key).into_iter().zip(faults).collect()
}

/// The first sub-range GET of a cold chunk is cut mid-body (a FIN, then on another key a
/// reset): the fill asks for the rest of that sub-range alone, pinned to the same ETag, and
/// the read is exact; the origin sent each byte of the object once (Orca read each once) and
/// the chunk is stored. Seen failing before sub-range GETs were resumed: the cut failed the
/// whole chunk (the client's body aborted after the cut's bytes, nothing stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_range_cut_mid_body_is_resumed_from_the_byte_reached() {
    let root = tempfile::tempdir().unwrap();
    let s = Stack::start(Origin::S3, "subchunk", |c| config(c, root.path(), 2)).await;
    let len = 8 * MIB;
    const CUT: usize = 300_000;
    for (n, (key, fault)) in [
        ("cut", Fault::CutBodyAfter(CUT)),
        ("reset", Fault::ResetAfter(CUT)),
    ]
    .into_iter()
    .enumerate()
    {
        let data = deterministic_bytes(30 + n as u64, len);
        s.put(key, &data).await;
        let bytes_before = s.orca.metric_value_async("orca_origin_bytes_total").await;
        s.proxy.push_fault(
            FaultRule::new(fault)
                .method("GET")
                .path_contains(&format!("/{key}"))
                .times(1),
        );
        let r = http_get(&s.url(key), None).await.unwrap();
        assert_eq!(r.status, 200, "{key}");
        assert!(r.body == data, "{key}: the bytes differ");
        s.orca
            .wait_metric_at_least(COMMITTED, (n + 1) as f64, WAIT)
            .await;
        let gets = origin_gets(&s, key);
        // The cut GET (the first, the client's sub-range), then one for its rest.
        let ((a0, b0), fault) = gets[0].clone();
        assert!(
            fault.is_some(),
            "{key}: the first GET was not cut: {gets:?}"
        );
        let resumed: Vec<_> = gets[1..]
            .iter()
            .filter(|((a, b), _)| *b == b0 && *a > a0)
            .collect();
        assert_eq!(resumed.len(), 1, "{key}: one GET for the rest: {gets:?}");
        let ((r0, _), _) = resumed[0];
        assert!(*r0 <= a0 + CUT, "{key}: bytes skipped: {gets:?}");
        // Every other byte of the chunk once: the sub-ranges, with the cut one counted from
        // the resume on.
        let mut ranges: Vec<_> = gets[1..].iter().map(|(r, _)| *r).collect();
        ranges.push((a0, *r0));
        ranges.sort_unstable();
        let mut at = 0;
        for (a, b) in &ranges {
            assert_eq!(*a, at, "{key}: a gap or a byte fetched twice: {gets:?}");
            at = *b;
        }
        assert_eq!(at, len, "{key}: {gets:?}");
        assert_eq!(
            gets.len(),
            9,
            "{key}: 8 sub-ranges and one resume: {gets:?}"
        );
        assert_eq!(
            s.orca.metric_value_async("orca_origin_bytes_total").await - bytes_before,
            len as f64,
            "{key}: origin bytes / object bytes = 1.00"
        );
        assert_eq!(fsstore::chunk_file_count(root.path()), n + 1, "{key}");
        // Stored whole: the next read is a hit.
        served_from_the_store(&s, key, &data).await;
    }
    fsstore::no_spool_left(&root.path().join("tmp")).await;
}

/// A sub-range cut on every attempt: three GETs for it (each for the rest of the one before),
/// then the whole chunk fails: the client's body aborts after a prefix, nothing is stored, no
/// spool is left; once the origin is well the next read fills the chunk, exact. Seen failing
/// before sub-range GETs were resumed: one GET for that sub-range, not three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_range_cut_on_every_attempt_fails_the_chunk_and_the_next_read_refills() {
    let root = tempfile::tempdir().unwrap();
    // One stream: the sub-ranges are fetched one after the other, the faults land in order.
    let s = Stack::start(Origin::S3, "subchunk", |c| config(c, root.path(), 1)).await;
    let len = 8 * MIB;
    const CUT: usize = 300_000;
    let data = deterministic_bytes(32, len);
    s.put("broken", &data).await;
    s.proxy.push_fault(
        FaultRule::new(Fault::CutBodyAfter(CUT))
            .method("GET")
            .path_contains("/broken")
            .times(3),
    );
    match http_get(&s.url("broken"), None).await {
        Ok(r) => assert_ne!(r.status, 200, "a complete answer"),
        Err(HttpError::Body { received, .. }) => {
            assert!(received.len() < len);
            assert!(received == data[..received.len()], "not a prefix");
        }
        Err(e) => panic!("no answer: {e:?}"),
    }
    let gets = origin_gets(&s, "broken");
    assert_eq!(
        gets.len(),
        3,
        "three attempts at the first sub-range: {gets:?}"
    );
    for (i, ((a, b), fault)) in gets.iter().enumerate() {
        assert!(fault.is_some(), "{gets:?}");
        assert_eq!(*b, MIB, "{gets:?}");
        assert!(
            *a <= i * CUT,
            "each GET from where the one before broke: {gets:?}"
        );
        if i > 0 {
            assert!(*a > gets[i - 1].0 .0, "{gets:?}");
        }
    }
    nothing_stored(&s, root.path(), "broken").await;
    // The origin is well again: the next read fills the chunk anew.
    s.proxy.clear_faults();
    refilled_whole(&s, root.path(), "broken", &data).await;
}

/// A sub-range GET is cut, and the GET for its rest finds the object replaced (another ETag,
/// or `412` to its `If-Match`): the whole chunk fails, nothing is stored. Seen failing before
/// sub-range GETs were resumed: the cut failed the chunk, and no GET for the rest went out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_replaced_before_a_resume_fails_the_whole_chunk() {
    let root = tempfile::tempdir().unwrap();
    let s = Stack::start(Origin::S3, "subchunk", |c| config(c, root.path(), 1)).await;
    let len = 8 * MIB;
    for (key, fault) in object_changed(["replaced", "precondition"]) {
        let data = deterministic_bytes(33, len);
        s.put(key, &data).await;
        s.proxy.push_fault(
            FaultRule::new(Fault::CutBodyAfter(300_000))
                .method("GET")
                .path_contains(&format!("/{key}"))
                .times(1),
        );
        s.proxy.push_fault(
            FaultRule::new(fault)
                .method("GET")
                .path_contains(&format!("/{key}"))
                .times(1),
        );
        match http_get(&s.url(key), None).await {
            Ok(r) => assert_ne!(r.status, 200, "{key}: a complete answer"),
            Err(HttpError::Body { received, .. }) => {
                assert!(received.len() < len, "{key}");
                assert!(received == data[..received.len()], "{key}: not a prefix");
            }
            Err(e) => panic!("{key}: no answer: {e:?}"),
        }
        let gets = origin_gets(&s, key);
        assert_eq!(gets.len(), 2, "{key}: the cut GET and its resume: {gets:?}");
        assert!(
            gets[1].0 .0 > 0 && gets[1].0 .1 == MIB,
            "{key}: the second GET is for the rest: {gets:?}"
        );
        assert!(gets.iter().all(|(_, f)| f.is_some()), "{key}: {gets:?}");
        nothing_stored(&s, root.path(), key).await;
    }
}
