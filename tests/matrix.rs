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
//! Scenarios here: a cold read by one client, and two clients joining one fill. The peer
//! (sick coordinator) and shared-store columns are in `cluster.rs` and `s3store.rs` so far.

#![allow(clippy::unwrap_used)]

mod common;

use common::cases::assert_store_holds_only_good_chunks;
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
    let Ok(answer) = tokio::time::timeout(CELL_DEADLINE, http_get(&s.url(key), None)).await else {
        panic!(
            "{cell}: the read hung past {CELL_DEADLINE:?}\n{}",
            s.orca.log_tail()
        )
    };
    match answer {
        Ok(r) if r.status == 200 => {
            assert!(
                r.body == data,
                "{cell}: 200 with {} bytes that are not the object's ({} bytes)",
                r.body.len(),
                data.len()
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
            assert_eq!(status, 200, "{cell}: an aborted {status}");
            assert!(received.len() < data.len(), "{cell}");
            assert!(
                received == data[..received.len()],
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

/// Runs every case with `readers` clients reading the object at once (1: a cold read; 2: a
/// joiner of the first reader's fill).
async fn run(readers: usize, scenario: &str) {
    let s = Stack::start(Origin::S3, BUCKET, |c| {
        c.log_level("info").extra_yaml(&format!(
            "limits:\n  origin_concurrency: 16\n  origin_timeout: {T_SECS}s\nmetadata:\n  ttl: 60s\n  negative_ttl: 1s\n"
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
            check(&cell, case.expect, outcome);
        }
        assert!(
            s.proxy.counts().log.iter().any(|r| r.fault.is_some()),
            "{cell}: the fault never fired"
        );
        s.proxy.clear_faults();
        stored.push((key.clone(), etag, data.clone()));
        let objects: Vec<(&str, &str, &[u8])> = stored
            .iter()
            .map(|(k, e, d)| (k.as_str(), e.as_str(), d.as_slice()))
            .collect();
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
