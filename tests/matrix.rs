//! The fault matrix (issue 12, docs/reliability.md "Fault matrix"): each origin fault the
//! fault-injecting proxy can produce, against each way a read meets it. Every cell asserts the
//! same promises:
//!
//! - the client gets the exact bytes or a visible error (an S3 error status, or an aborted body
//!   whose bytes are a prefix of the object), never a complete-looking wrong answer;
//! - no wrong chunk is in the store (read directly, right after the faulty read);
//! - no request outlives its documented deadline (each read runs under a bound derived from
//!   docs/reliability.md's deadline table; a hang fails the cell);
//! - readiness stays up (none of these faults is a credential refusal), and a clean read
//!   afterwards is exact.
//!
//! Scenarios here: a cold read by one client, two clients joining one fill, and a cold read
//! of a chunk fetched as sub-ranges (each origin fault); a peer fill whose coordinator is sick (frozen, black-holed, failing, resetting,
//! dripping); a read of a chunk the shared `s3` store or the `fs` store holds while the store
//! misbehaves.

#![allow(clippy::unwrap_used)]

mod common;

use ::orca::cachestore::s3::S3Store;
use ::orca::chunk::ChunkId;
use common::cases::{
    assert_fs_store_holds_only_good_chunks, assert_store_holds_only_good_chunks, good_chunks,
    settle_commits_of, Stored,
};
use common::*;
use std::time::Duration;

const MIB: usize = 1 << 20;
const BUCKET: &str = "matrix";
/// `limits.origin_timeout` in these tests (*t*): stalls past it fail quickly.
const T_SECS: u64 = 2;
/// The longest a cell's read may take: a fill's three attempts with their backoff, each piece
/// wait (5t + 5 s), with room for a slow machine. Far below what a hang would take.
const CELL_DEADLINE: Duration = Duration::from_secs(90);

/// What a cell must end in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The exact bytes (the fault is survivable: slow, or transient before the first byte).
    Exact,
    /// A visible error: an S3 error status or an aborted body (never exact: the fault ruins
    /// the only attempt that may be made).
    Error,
    /// This S3 error status.
    Status(u16),
    /// Either, by timing: a fill that dies before any reader has taken a byte of its chunk is
    /// filled again (the read is exact); one that dies under a reader aborts that read. (A
    /// reset can also discard the bytes already sent, so Orca sees no body at all.)
    ExactOrError,
}

/// How one read ended (the fields are for the report, printed with `Debug`).
#[derive(Debug)]
#[allow(dead_code)]
enum Outcome {
    Exact,
    /// An S3 error answer: status and code.
    Status(u16, String),
    /// Status and first bytes sent, then the body aborted after this many bytes (a prefix).
    Aborted(usize),
}

struct Case {
    name: &'static str,
    /// The faults, for the object `key`.
    faults: fn(&str) -> Vec<FaultRule>,
    expect: Expect,
}

fn chunk_gets(key: &str, fault: Fault, n: usize) -> FaultRule {
    FaultRule::new(fault)
        .method("GET")
        .with_range()
        .path_contains(&format!("/{key}"))
        .times(n)
}

const CASES: &[Case] = &[
    Case {
        name: "body-cut-short",
        faults: |k| vec![chunk_gets(k, Fault::CutBodyAfter(100_000), 1)],
        expect: Expect::ExactOrError,
    },
    Case {
        name: "reset-after-n-bytes",
        faults: |k| vec![chunk_gets(k, Fault::ResetAfter(100_000), 1)],
        expect: Expect::ExactOrError,
    },
    Case {
        name: "stall-mid-body",
        faults: |k| {
            vec![chunk_gets(
                k,
                Fault::StallBodyAfter(100_000, Duration::from_secs(3 * T_SECS)),
                1,
            )]
        },
        expect: Expect::ExactOrError,
    },
    Case {
        name: "slow-drip",
        // 1 MiB in 64 KiB pieces 100 ms apart: slow, but every read makes progress within t.
        faults: |k| {
            vec![chunk_gets(
                k,
                Fault::Drip(64 * 1024, Duration::from_millis(100)),
                4,
            )]
        },
        expect: Expect::Exact,
    },
    Case {
        name: "500-then-recovery",
        faults: |k| vec![chunk_gets(k, Fault::Status(500), 2)],
        expect: Expect::Exact,
    },
    Case {
        name: "503-then-recovery",
        faults: |k| vec![chunk_gets(k, Fault::Status(503), 2)],
        expect: Expect::Exact,
    },
    Case {
        name: "etag-dropped",
        faults: |k| {
            vec![FaultRule::new(Fault::StripResponseHeader("ETag".into()))
                .method("HEAD")
                .path_contains(&format!("/{k}"))
                .times(1)]
        },
        expect: Expect::Status(502),
    },
    Case {
        name: "etag-changed-mid-read",
        faults: |k| {
            vec![chunk_gets(
                k,
                Fault::ReplaceEtag("\"0123456789abcdef0123456789abcdef\"".into()),
                1,
            )]
        },
        expect: Expect::Error,
    },
    Case {
        name: "403-on-one-key",
        faults: |k| {
            vec![FaultRule::new(Fault::Status(403))
                .path_contains(&format!("/{k}"))
                .times(20)]
        },
        expect: Expect::Status(403),
    },
];

/// Reads `key` whole, bounded by [`CELL_DEADLINE`], and classifies the answer. Panics on a
/// hang and on a wrong answer: a success with other bytes, or an abort after bytes that are
/// not the object's.
async fn read(s: &Stack, key: &str, data: &[u8], cell: &str) -> Outcome {
    read_at(&s.url(key), None, data, cell, || s.orca.log_tail()).await
}

/// Reads `url` (bytes `range`, first and last, or all), bounded by [`CELL_DEADLINE`], and
/// classifies the answer; `want` is what the read must give (the range's bytes). Panics on a
/// hang (with `log()`) and on a wrong answer.
async fn read_at(
    url: &str,
    range: Option<(usize, usize)>,
    want: &[u8],
    cell: &str,
    log: impl Fn() -> String,
) -> Outcome {
    let header = range.map(|(first, last)| format!("bytes={first}-{last}"));
    let Ok(answer) = tokio::time::timeout(CELL_DEADLINE, http_get(url, header.as_deref())).await
    else {
        panic!("{cell}: the read hung past {CELL_DEADLINE:?}\n{}", log())
    };
    let ok = if range.is_some() { 206 } else { 200 };
    match answer {
        Ok(r) if r.status == ok => {
            assert!(
                r.body == want,
                "{cell}: {ok} with {} bytes that are not the object's ({} bytes)",
                r.body.len(),
                want.len()
            );
            Outcome::Exact
        }
        Ok(r) => {
            let text = String::from_utf8_lossy(&r.body).into_owned();
            let code = text
                .split("<Code>")
                .nth(1)
                .and_then(|t| t.split("</Code>").next())
                .unwrap_or_else(|| {
                    panic!("{cell}: status {} without an S3 error: {text}", r.status)
                })
                .to_string();
            assert!(r.status >= 400, "{cell}: status {}", r.status);
            Outcome::Status(r.status, code)
        }
        Err(HttpError::Body {
            status, received, ..
        }) => {
            assert_eq!(status, ok, "{cell}: an aborted {status}");
            assert!(received.len() < want.len(), "{cell}");
            assert!(
                received == want[..received.len()],
                "{cell}: the bytes before the abort are not the object's"
            );
            Outcome::Aborted(received.len())
        }
        Err(e) => panic!("{cell}: no answer at all: {e:?}"),
    }
}

fn check(cell: &str, expect: Expect, outcome: &Outcome) {
    let ok = match (expect, outcome) {
        (Expect::Exact, Outcome::Exact) => true,
        (Expect::Error, Outcome::Status(..) | Outcome::Aborted(_)) => true,
        (Expect::Status(want), Outcome::Status(got, _)) => want == *got,
        (Expect::ExactOrError, _) => true,
        _ => false,
    };
    assert!(ok, "{cell}: expected {expect:?}, got {outcome:?}");
}

/// How the cold chunk is fetched from the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// One GET per chunk, in order (1 MiB chunks: the object is four).
    InOrder,
    /// 2 MiB chunks (the object is two, 2 MiB and 1 MiB + 5), each fetched as 1 MiB
    /// sub-ranges by two GETs at once. A GET that breaks mid-body is resumed from the byte reached, so a cut,
    /// a reset or a stall on one sub-range leaves the read exact.
    SubRange,
}

/// What a cell must end in, for `fill`.
fn expect_for(case: &Case, fill: Fill) -> Expect {
    match (fill, case.name) {
        (Fill::SubRange, "body-cut-short" | "reset-after-n-bytes" | "stall-mid-body") => {
            Expect::Exact
        }
        _ => case.expect,
    }
}

/// Runs every case with `readers` clients reading the object at once (1: a cold read; 2: a
/// joiner of the first reader's fill).
async fn run(readers: usize, scenario: &str) {
    run_with(readers, scenario, Fill::InOrder).await
}

async fn run_with(readers: usize, scenario: &str, fill: Fill) {
    let (size, chunking) = match fill {
        Fill::InOrder => ("1MiB", String::new()),
        Fill::SubRange => (
            "2MiB",
            "chunking:\n  size: 2MiB\n  tiers: []\n  subrange_size: 1MiB\n  subrange_streams: 2\n"
                .to_string(),
        ),
    };
    let s = Stack::start(Origin::S3, BUCKET, |c| {
        c.chunk_size(size).log_level("info").extra_yaml(&format!(
            "limits:\n  origin_concurrency: 16\n  origin_timeout: {T_SECS}s\nmetadata:\n  ttl: 60s\n  negative_ttl: 1s\n{chunking}"
        ))
    })
    .await;
    let mut stored: Vec<(String, String, Vec<u8>)> = Vec::new();
    let mut report = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let cell = format!("{scenario} x {}", case.name);
        let key = format!("{scenario}/{}", case.name);
        let data = deterministic_bytes(200 + i as u64, 3 * MIB + 5);
        let etag = s.put(&key, &data).await;
        s.proxy.clear_faults();
        for rule in (case.faults)(&key) {
            s.proxy.push_fault(rule);
        }
        let reads = (0..readers).map(|_| read(&s, &key, &data, &cell));
        let outcomes = futures::future::join_all(reads).await;
        for outcome in &outcomes {
            check(&cell, expect_for(case, fill), outcome);
        }
        assert!(
            s.proxy.counts().log.iter().any(|r| r.fault.is_some()),
            "{cell}: the fault never fired"
        );
        s.proxy.clear_faults();
        stored.push((key.clone(), etag, data.clone()));
        let objects = views(&stored);
        // Right after the faulty read, before a clean one could repair anything.
        assert_store_holds_only_good_chunks(&s, &objects, false).await;
        let (ready, body) = s.orca.ops_get("/readyz");
        assert_eq!(ready, 200, "{cell}: readiness after the fault: {body}");
        // The clean read is exact and leaves only good chunks. An error answered from the
        // object's metadata is remembered for `metadata.negative_ttl` (1 s here): wait it out.
        if matches!(case.expect, Expect::Status(_)) {
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        let clean = read(&s, &key, &data, &format!("{cell} (clean read)")).await;
        check(&format!("{cell} (clean read)"), Expect::Exact, &clean);
        assert_store_holds_only_good_chunks(&s, &objects, false).await;
        report.push(format!("{cell}: {outcomes:?}"));
    }
    eprintln!("{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_origin_fault_on_a_cold_read() {
    run(1, "cold").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_origin_fault_on_a_fill_with_a_joiner() {
    run(2, "joiner").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_origin_fault_on_a_sub_range_fill() {
    run_with(1, "subrange", Fill::SubRange).await;
}

// ---------------------------------------------------------------------------------------------
// The peer column: the reader's replica (0) is not the chunk's coordinator (1), and the
// coordinator is sick. Every peer fill to replica 1 passes a fault proxy in front of its
// internal port.

/// What makes the coordinator sick in a peer cell.
#[derive(Debug, Clone, Copy)]
enum Sickness {
    /// The coordinator's process is stopped (`SIGSTOP`) during the read, resumed after.
    Frozen,
    /// A fault on the fill requests that reach it.
    Fault(fn() -> Fault),
}

struct PeerCase {
    name: &'static str,
    sickness: Sickness,
    expect: Expect,
    /// Whether replica 0 falls back to its own fill (so its origin proxy sees every chunk
    /// once, and the coordinator's none from this read); otherwise the coordinator fills.
    fallback: bool,
    /// Whether the fault looks like no answer, so replica 0 skips the coordinator for
    /// `PEER_DOWN_BACKOFF` (5 s) afterwards.
    no_answer: bool,
}

const PEER_CASES: &[PeerCase] = &[
    PeerCase {
        name: "frozen",
        sickness: Sickness::Frozen,
        expect: Expect::Exact,
        fallback: true,
        no_answer: true,
    },
    PeerCase {
        name: "black-holed",
        // Longer than the edge's piece deadline (5t + 5 s).
        sickness: Sickness::Fault(|| Fault::BlackHole(Duration::from_secs(8 * T_SECS + 10))),
        expect: Expect::Exact,
        fallback: true,
        no_answer: true,
    },
    PeerCase {
        name: "500",
        sickness: Sickness::Fault(|| Fault::Status(500)),
        expect: Expect::Exact,
        fallback: true,
        no_answer: false,
    },
    PeerCase {
        name: "503",
        sickness: Sickness::Fault(|| Fault::Status(503)),
        expect: Expect::Exact,
        fallback: true,
        no_answer: false,
    },
    PeerCase {
        name: "reset-mid-fill",
        sickness: Sickness::Fault(|| Fault::ResetAfter(100_000)),
        expect: Expect::Exact,
        fallback: true,
        no_answer: false,
    },
    PeerCase {
        name: "dripping",
        // 1 MiB in 64 KiB pieces 100 ms apart: slow, but live.
        sickness: Sickness::Fault(|| Fault::Drip(64 * 1024, Duration::from_millis(100))),
        expect: Expect::Exact,
        fallback: false,
        no_answer: false,
    },
];

/// Resumes a stopped replica when dropped (also when a cell panics).
struct Resume<'a>(&'a OrcaProcess);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        self.0.signal("CONT");
    }
}

/// Object GETs of `key` that reached the origin through `proxy`.
fn origin_gets_of(proxy: &FaultProxy, key: &str) -> usize {
    proxy
        .counts()
        .log
        .iter()
        .filter(|r| r.method == "GET" && r.range.is_some() && r.path().ends_with(key))
        .count()
}

/// A key for `data` (whose ETag is `etag`) all of whose 1 MiB chunks replica `coordinator`
/// coordinates.
fn key_coordinated_by(fleet: &Fleet, prefix: &str, etag: &str, len: usize, who: usize) -> String {
    let chunks = (len as u64).div_ceil(MIB as u64);
    (0..256)
        .map(|n| format!("{prefix}-{n}"))
        .find(|key| {
            (0..chunks).all(|i| {
                let id = ChunkId::from_fields("test-origin", BUCKET, key, etag, MIB as u64, i);
                fleet.coordinator(&id) == who
            })
        })
        .expect("a key whose chunks one replica coordinates, in 256 tries")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sick_coordinator_on_a_peer_fill() {
    let fleet = Fleet::start_behind_peer_proxies(2, &[BUCKET], |m| {
        m.config().log_level("info").extra_yaml(&format!(
            "{}limits:\n  origin_concurrency: 16\n  origin_timeout: {T_SECS}s\n  client_write_timeout: {T_SECS}s\nmetadata:\n  ttl: 60s\n",
            m.everyone("")
        ))
    })
    .await;
    let (entry, coordinator) = (&fleet.replicas[0], &fleet.replicas[1]);
    let logs = || {
        format!(
            "{}\n--- coordinator ---\n{}",
            entry.log_tail(),
            coordinator.log_tail()
        )
    };
    let mut stored: Vec<(String, String, Vec<u8>)> = Vec::new();
    let mut report = Vec::new();
    for (i, case) in PEER_CASES.iter().enumerate() {
        let cell = format!("peer x {}", case.name);
        // Two whole chunks, both coordinated by replica 1.
        let data = deterministic_bytes(300 + i as u64, 2 * MIB);
        let etag = fleet.put(&format!("peer/probe-{i}"), &data).await;
        let key = key_coordinated_by(&fleet, &format!("peer/{}", case.name), &etag, data.len(), 1);
        assert_eq!(fleet.put(&key, &data).await, etag);
        for p in fleet.proxies.iter().chain(&fleet.peer_proxies) {
            p.reset_counts();
        }
        let outcome = {
            let _resume = match case.sickness {
                Sickness::Frozen => {
                    coordinator.signal("STOP");
                    Some(Resume(coordinator))
                }
                Sickness::Fault(fault) => {
                    fleet.peer_proxies[1].push_fault(
                        FaultRule::new(fault())
                            .path_contains("/internal/fill")
                            .times(2),
                    );
                    None
                }
            };
            let outcome = read_at(&entry.object_url(BUCKET, &key), None, &data, &cell, logs).await;
            // Counted before the coordinator resumes (it may then answer what it was asked).
            let (mine, theirs) = (
                origin_gets_of(&fleet.proxies[0], &key),
                origin_gets_of(&fleet.proxies[1], &key),
            );
            (outcome, mine, theirs)
        };
        let (outcome, mine, theirs) = outcome;
        check(&cell, case.expect, &outcome);
        let asked = fleet.peer_proxies[1].counts().log;
        assert!(
            asked.iter().any(|r| r.target.contains("/internal/fill")),
            "{cell}: replica 0 never asked the coordinator"
        );
        if case.fallback {
            // The fallback happened, once per chunk.
            assert_eq!(mine, 2, "{cell}: replica 0's own origin GETs\n{}", logs());
            if !matches!(case.sickness, Sickness::Frozen) {
                assert!(
                    asked.iter().any(|r| r.fault.is_some()),
                    "{cell}: the fault never fired"
                );
            }
        } else {
            assert_eq!((mine, theirs), (0, 2), "{cell}: origin GETs by replica");
        }
        fleet.peer_proxies[1].clear_faults();
        stored.push((key.clone(), etag.clone(), data.clone()));
        let objects = views(&stored);
        for r in &fleet.replicas {
            assert_fs_store_holds_only_good_chunks(r, BUCKET, &objects, false).await;
            let (ready, body) = r.ops_get("/readyz");
            assert_eq!(ready, 200, "{cell}: readiness after the fault: {body}");
        }
        // A failure that looked like no answer has replica 0 skip the coordinator for
        // `PEER_DOWN_BACKOFF` (5 s): let it pass, so the clean reads and the next cell ask it.
        if case.no_answer {
            tokio::time::sleep(Duration::from_millis(5200)).await;
        }
        for (n, r) in fleet.replicas.iter().enumerate() {
            let clean = format!("{cell} (clean read through replica {n})");
            let got = read_at(&r.object_url(BUCKET, &key), None, &data, &clean, logs).await;
            check(&clean, Expect::Exact, &got);
        }
        for r in &fleet.replicas {
            assert_fs_store_holds_only_good_chunks(r, BUCKET, &objects, false).await;
        }
        report.push(format!(
            "{cell}: {outcome:?}, origin GETs {mine} + {theirs}"
        ));
    }
    eprintln!("{report:#?}");
}

// ---------------------------------------------------------------------------------------------
// The store column: a chunk the store holds is read while the store misbehaves. The shared
// `s3` store is moto behind a fault proxy; the `fs` store is a directory changed by hand.

const STORE_BUCKET: &str = "orca-cache";

/// What a store cell does to the store.
#[derive(Clone, Copy)]
enum StoreFault {
    /// This fault on the store's chunk GETs, `n` times.
    Proxy(fn() -> Fault, usize),
    /// Chunk 1's object deleted from the bucket.
    Deleted,
}

struct StoreCase {
    name: &'static str,
    fault: StoreFault,
    /// The client's read: bytes `first..=last`, or the whole object.
    range: Option<(usize, usize)>,
    expect: Expect,
}

/// A read inside chunk 0 (not the whole chunk): a store's `200` cannot answer it.
const INSIDE: Option<(usize, usize)> = Some((100_000, 299_999));

const STORE_CASES: &[StoreCase] = &[
    StoreCase {
        name: "500",
        fault: StoreFault::Proxy(|| Fault::Status(500), 3),
        range: None,
        expect: Expect::Exact,
    },
    StoreCase {
        name: "503",
        fault: StoreFault::Proxy(|| Fault::Status(503), 3),
        range: None,
        expect: Expect::Exact,
    },
    StoreCase {
        name: "reset-mid-get",
        fault: StoreFault::Proxy(|| Fault::ResetAfter(100_000), 1),
        range: None,
        expect: Expect::Exact,
    },
    StoreCase {
        name: "stall",
        // Past the store's read timeout (t).
        fault: StoreFault::Proxy(|| Fault::Stall(Duration::from_secs(3 * T_SECS)), 1),
        range: None,
        expect: Expect::Exact,
    },
    StoreCase {
        name: "ignores-range",
        fault: StoreFault::Proxy(|| Fault::StripRequestHeader("range".into()), 3),
        range: INSIDE,
        expect: Expect::Exact,
    },
    StoreCase {
        name: "wrong-content-range",
        // The right length, other bytes: a hop that answered another range.
        fault: StoreFault::Proxy(
            || Fault::SetResponseHeader("Content-Range".into(), "bytes 0-199999/1048576".into()),
            3,
        ),
        range: INSIDE,
        expect: Expect::Exact,
    },
    StoreCase {
        name: "truncated-body",
        fault: StoreFault::Proxy(|| Fault::CutBodyAfter(100_000), 1),
        range: None,
        expect: Expect::Exact,
    },
    StoreCase {
        name: "deleted-by-hand",
        fault: StoreFault::Deleted,
        range: None,
        expect: Expect::Exact,
    },
];

/// The objects of a column so far, as the store checks take them.
fn views(stored: &[(String, String, Vec<u8>)]) -> Vec<Stored<'_>> {
    stored
        .iter()
        .map(|(k, e, d)| (k.as_str(), e.as_str(), d.as_slice()))
        .collect()
}

/// Puts `data` as `key`, reads it once through the fleet's first replica (exact: that fills
/// the store) and adds it to `stored`; returns its ETag and URL.
async fn put_and_fill(
    fleet: &Fleet,
    key: &str,
    data: &[u8],
    cell: &str,
    stored: &mut Vec<(String, String, Vec<u8>)>,
) -> (String, String) {
    let orca = &fleet.replicas[0];
    let etag = fleet.put(key, data).await;
    let url = orca.object_url(BUCKET, key);
    let first = read_at(&url, None, data, &format!("{cell} (filling read)"), || {
        orca.log_tail()
    })
    .await;
    check(cell, Expect::Exact, &first);
    stored.push((key.to_string(), etag.clone(), data.to_vec()));
    (etag, url)
}

/// The chunk objects in the store bucket (a ListObjectsV2 straight to moto).
async fn store_objects(moto: &str) -> Vec<String> {
    let url = format!(
        "{}?list-type=2&max-keys=1000",
        bucket_url(moto, STORE_BUCKET)
    );
    let r = s3_get(&url, None).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
        .split("<Key>")
        .skip(1)
        .filter_map(|t| t.split("</Key>").next())
        .map(str::to_string)
        .collect()
}

/// Reads the store bucket straight: every object in it is a chunk of `objects` with exactly
/// the origin's bytes; with `all`, every chunk is there.
async fn assert_bucket_holds_only_good_chunks(
    orca: &OrcaProcess,
    moto: &str,
    objects: &[Stored<'_>],
    all: bool,
) {
    settle_commits_of(orca).await;
    let good = good_chunks("test-origin", BUCKET, objects);
    let found = store_objects(moto).await;
    // An object's name ends in its chunk's name (`S3Store::object_key`).
    let names: Vec<&str> = found.iter().filter_map(|o| o.rsplit('/').next()).collect();
    for (object, name) in found.iter().zip(&names) {
        let (key, want) = good
            .get(*name)
            .unwrap_or_else(|| panic!("{object} in the store is no chunk of the objects"));
        let got = get_object(moto, STORE_BUCKET, object).await.unwrap();
        assert!(
            got == *want,
            "stored chunk {object} of {key} differs from the origin's bytes"
        );
    }
    if all {
        let missing: Vec<_> = good
            .keys()
            .filter(|n| !names.contains(&n.as_str()))
            .collect();
        assert!(missing.is_empty(), "chunks not stored: {missing:?}");
    }
}

/// One replica whose shared `s3` store (a bucket of the origin's moto) is behind a fault
/// proxy, returned with the fleet.
async fn store_fleet() -> (Fleet, FaultProxy) {
    let moto = Moto::start();
    let store_proxy = FaultProxy::start(&moto.endpoint());
    let store = store_proxy.endpoint();
    let fleet = Fleet::start_on(moto, 1, &[BUCKET, STORE_BUCKET], |m| {
        m.config()
            .log_level("info")
            .env("ORCA_CACHESTORE_ACCESS_KEY_ID", "test")
            .env("ORCA_CACHESTORE_SECRET_ACCESS_KEY", "test")
            .extra_yaml(&format!(
                "limits:\n  origin_concurrency: 16\n  origin_timeout: {T_SECS}s\n  client_write_timeout: {T_SECS}s\nmetadata:\n  ttl: 60s\ncachestore:\n  driver: s3\n  s3:\n    endpoint: {store}\n    bucket: {STORE_BUCKET}\n    path_style: true\n"
            ))
    })
    .await;
    (fleet, store_proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shared_store_fault_on_a_read() {
    let (fleet, store_proxy) = store_fleet().await;
    let orca = &fleet.replicas[0];
    let moto = fleet.moto.endpoint();
    let logs = || orca.log_tail();
    let mut stored: Vec<(String, String, Vec<u8>)> = Vec::new();
    let mut report = Vec::new();
    for (i, case) in STORE_CASES.iter().enumerate() {
        let cell = format!("s3 store x {}", case.name);
        let key = format!("store/{}", case.name);
        let data = deterministic_bytes(400 + i as u64, 2 * MIB + 5);
        // Fill the store, then read it back under the fault.
        let (etag, url) = put_and_fill(&fleet, &key, &data, &cell, &mut stored).await;
        let objects = views(&stored);
        assert_bucket_holds_only_good_chunks(orca, &moto, &objects, true).await;
        fleet.proxies[0].reset_counts();
        store_proxy.reset_counts();
        match case.fault {
            StoreFault::Proxy(fault, n) => store_proxy.push_fault(
                FaultRule::new(fault())
                    .method("GET")
                    .path_contains(&format!("/{STORE_BUCKET}/v"))
                    .times(n),
            ),
            StoreFault::Deleted => {
                let id = ChunkId::from_fields("test-origin", BUCKET, &key, &etag, MIB as u64, 1);
                delete_object(&moto, STORE_BUCKET, &S3Store::object_key(&id)).await;
            }
        }
        let want = match case.range {
            Some((first, last)) => &data[first..=last],
            None => &data[..],
        };
        let outcome = read_at(&url, case.range, want, &cell, logs).await;
        check(&cell, case.expect, &outcome);
        if let StoreFault::Proxy(..) = case.fault {
            assert!(
                store_proxy.counts().log.iter().any(|r| r.fault.is_some()),
                "{cell}: the fault never fired"
            );
        }
        let refills = origin_gets_of(&fleet.proxies[0], &key);
        let faulted: Vec<String> = store_proxy
            .counts()
            .log
            .iter()
            .filter(|r| r.fault.is_some())
            .map(|r| r.range.clone().unwrap_or_default())
            .collect();
        store_proxy.clear_faults();
        assert_bucket_holds_only_good_chunks(orca, &moto, &objects, false).await;
        let (ready, body) = orca.ops_get("/readyz");
        assert_eq!(ready, 200, "{cell}: readiness after the fault: {body}");
        let clean = format!("{cell} (clean read)");
        let got = read_at(&url, None, &data, &clean, logs).await;
        check(&clean, Expect::Exact, &got);
        assert_bucket_holds_only_good_chunks(orca, &moto, &objects, false).await;
        report.push(format!(
            "{cell}: {outcome:?}, origin GETs {refills}, faulted store GETs {faulted:?}"
        ));
    }
    eprintln!("{report:#?}");
}

/// What an fs cell does to a chunk file by hand.
type Damage = fn(&std::path::Path);

/// Whether this process runs as root (the kernel then ignores directory permissions).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fs_store_fault_on_a_read() {
    let fleet = Fleet::start(1, &[BUCKET], |m| {
        m.config().log_level("info").extra_yaml(&format!(
            "limits:\n  origin_concurrency: 16\n  origin_timeout: {T_SECS}s\nmetadata:\n  ttl: 60s\n"
        ))
    })
    .await;
    let orca = &fleet.replicas[0];
    let root = orca.cache_root().to_path_buf();
    let logs = || orca.log_tail();
    let mut stored: Vec<(String, String, Vec<u8>)> = Vec::new();
    let cases: &[(&str, Damage)] = &[
        ("chunk-truncated", |path| {
            let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            file.set_len(MIB as u64 / 2).unwrap();
        }),
        ("chunk-deleted", |path| std::fs::remove_file(path).unwrap()),
    ];
    for (i, (name, damage)) in cases.iter().enumerate() {
        let cell = format!("fs store x {name}");
        let key = format!("fs/{name}");
        let data = deterministic_bytes(500 + i as u64, 2 * MIB + 5);
        let (etag, url) = put_and_fill(&fleet, &key, &data, &cell, &mut stored).await;
        let objects = views(&stored);
        assert_fs_store_holds_only_good_chunks(orca, BUCKET, &objects, true).await;
        let id = ChunkId::from_fields("test-origin", BUCKET, &key, &etag, MIB as u64, 1);
        damage(&fs_chunk_path(&root, &id));
        fleet.proxies[0].reset_counts();
        let outcome = read_at(&url, None, &data, &cell, logs).await;
        check(&cell, Expect::Exact, &outcome);
        assert_eq!(
            origin_gets_of(&fleet.proxies[0], &key),
            1,
            "{cell}: the damaged chunk is filled again, once"
        );
        // Refilled, and nothing else changed.
        assert_fs_store_holds_only_good_chunks(orca, BUCKET, &objects, true).await;
        let (ready, body) = orca.ops_get("/readyz");
        assert_eq!(ready, 200, "{cell}: readiness after the fault: {body}");
    }
    // A store directory made read-only: commits fail, reads are served from the origin.
    if running_as_root() {
        eprintln!(
            "skipped fs store x read-only: running as root, the kernel lets root write to a \
             read-only directory (CAP_DAC_OVERRIDE), so the fault cannot be made"
        );
        return;
    }
    let cell = "fs store x read-only";
    let data = deterministic_bytes(510, 2 * MIB + 5);
    fleet.put("fs/read-only", &data).await;
    let mut dirs = vec![root.clone()];
    let mut all = Vec::new();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.path().is_dir() {
                dirs.push(entry.path());
            }
        }
        all.push(dir);
    }
    let set_mode = |mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        for dir in &all {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    };
    set_mode(0o555);
    let url = orca.object_url(BUCKET, "fs/read-only");
    let outcome = read_at(&url, None, &data, cell, logs).await;
    set_mode(0o755);
    check(cell, Expect::Exact, &outcome);
    assert_eq!(
        origin_gets_of(&fleet.proxies[0], "fs/read-only"),
        3,
        "{cell}: each chunk from the origin once"
    );
    let objects = views(&stored);
    assert_fs_store_holds_only_good_chunks(orca, BUCKET, &objects, false).await;
    let (ready, body) = orca.ops_get("/readyz");
    assert_eq!(ready, 200, "{cell}: readiness after the fault: {body}");
}

/// A write fault of the shared store: the fault, on which requests, how many times.
struct WriteCase {
    name: &'static str,
    fault: fn() -> Fault,
    /// `Some("PUT")`: the store's writes only; `None`: every request (an unreachable store).
    method: Option<&'static str>,
}

const WRITE_CASES: &[WriteCase] = &[
    WriteCase {
        name: "put-500",
        fault: || Fault::Status(500),
        method: Some("PUT"),
    },
    WriteCase {
        name: "put-503",
        fault: || Fault::Status(503),
        method: Some("PUT"),
    },
    WriteCase {
        name: "put-closed",
        fault: || Fault::CloseWithoutResponse,
        method: Some("PUT"),
    },
    WriteCase {
        name: "put-black-holed",
        // Past the store's timeout (t): a slow or frozen store.
        fault: || Fault::BlackHole(Duration::from_secs(3 * T_SECS)),
        method: Some("PUT"),
    },
    WriteCase {
        name: "unreachable",
        fault: || Fault::BlackHole(Duration::from_secs(3 * T_SECS)),
        method: None,
    },
];

/// The shared store fails its writes (or every request) while a cold object is read through
/// it: the client gets exact bytes from the origin whatever the store does, the failed commits
/// are counted as errors, nothing partial is ever in the bucket, readiness stays up, and once
/// the store is back the next read stores the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shared_store_write_fault_on_a_cold_read() {
    let (fleet, store_proxy) = store_fleet().await;
    let orca = &fleet.replicas[0];
    let moto = fleet.moto.endpoint();
    let logs = || orca.log_tail();
    let errors = "orca_cachestore_commits_total{result=\"error\"}";
    let mut stored: Vec<(String, String, Vec<u8>)> = Vec::new();
    let mut report = Vec::new();
    for (i, case) in WRITE_CASES.iter().enumerate() {
        let cell = format!("s3 store x {}", case.name);
        let key = format!("write/{}", case.name);
        let data = deterministic_bytes(600 + i as u64, 2 * MIB + 5);
        let etag = fleet.put(&key, &data).await;
        let url = orca.object_url(BUCKET, &key);
        let errors_before = orca.metric_value_async(errors).await;
        let mut rule = FaultRule::new((case.fault)())
            .path_contains(&format!("/{STORE_BUCKET}/v"))
            .times(1000);
        if let Some(method) = case.method {
            rule = rule.method(method);
        }
        store_proxy.reset_counts();
        store_proxy.push_fault(rule);
        let outcome = read_at(&url, None, &data, &cell, logs).await;
        check(&cell, Expect::Exact, &outcome);
        // Every chunk's commit failed: counted, and nothing of this object is in the bucket.
        orca.wait_metric_at_least(errors, errors_before + 3.0, CELL_DEADLINE)
            .await;
        assert!(
            store_proxy.counts().log.iter().any(|r| r.fault.is_some()),
            "{cell}: the fault never fired"
        );
        store_proxy.clear_faults();
        let objects = views(&stored);
        assert_bucket_holds_only_good_chunks(orca, &moto, &objects, true).await;
        let (ready, body) = orca.ops_get("/readyz");
        assert_eq!(ready, 200, "{cell}: readiness after the fault: {body}");
        // The store is back: the next read fills the object again and stores every chunk.
        fleet.proxies[0].reset_counts();
        let clean = format!("{cell} (clean read)");
        let got = read_at(&url, None, &data, &clean, logs).await;
        check(&clean, Expect::Exact, &got);
        let refills = origin_gets_of(&fleet.proxies[0], &key);
        stored.push((key.clone(), etag, data));
        let objects = views(&stored);
        assert_bucket_holds_only_good_chunks(orca, &moto, &objects, true).await;
        report.push(format!(
            "{cell}: {outcome:?}, commit errors {}, origin GETs after {refills}",
            orca.metric_value_async(errors).await - errors_before
        ));
    }
    eprintln!("{report:#?}");
}
