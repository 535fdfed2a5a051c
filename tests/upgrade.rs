//! The zero-downtime upgrade, shown: a second Orca started with `-u` takes the listeners of the
//! first when it gets `SIGQUIT`; a download in flight on the first finishes byte-exact while new
//! connections reach the second (each request found by its `x-amz-request-id` in the new
//! process's log and not in the old one's).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const MIB: usize = 1 << 20;

/// Starts the successor: `orca --config F -c P -u` on the files of `old`, logging to `log`.
fn spawn_successor(old: &OrcaProcess, log: &Path) -> ChildGuard {
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(orca_bin())
        .arg("--config")
        .arg(old.dir().join("orca.yaml"))
        .arg("-c")
        .arg(old.dir().join("pingora.yaml"))
        .arg("-u")
        .current_dir(old.dir())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("ORCA_LOG", "debug,pingora_core=info")
        .env_remove("ORCA_CONFIG")
        .env_remove("ORCA_SELF")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    ChildGuard::new("orca -u", child)
}

/// Lines of `log` that are `edge request` lines for request `id`.
fn served(log: &str, id: &str) -> bool {
    let field = format!("request_id={id}");
    log.lines()
        .any(|l| l.contains("edge request") && l.contains(&field))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_hands_over_the_listeners_without_cutting_a_download() {
    let moto = Moto::start();
    create_bucket(&moto.endpoint(), "upgrade").await;
    let data = deterministic_bytes(21, 32 * MIB);
    put_object(&moto.endpoint(), "upgrade", "big", data.clone()).await;
    put_object(&moto.endpoint(), "upgrade", "small", b"hello".to_vec()).await;
    // Pingora's own lifecycle lines (info) show when the old process stops accepting; a grace
    // period long enough for the slow download below.
    let old = OrcaProcess::start(
        OrcaConfig::new(&moto.endpoint())
            .env("ORCA_LOG", "debug,pingora_core=info")
            .pingora_extra_yaml("grace_period_seconds: 30"),
    );
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("big.bin");
    // 32 MiB at 2 MiB/s: still running when the listeners change hands.
    let mut download = ChildGuard::new(
        "curl",
        Command::new("curl")
            .args(["-sS", "--fail", "--limit-rate", "2M", "-o"])
            .arg(&target)
            .arg(old.object_url("upgrade", "big"))
            .spawn()
            .unwrap(),
    );
    let started = poll_until(Duration::from_secs(30), || {
        let len = std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
        (len > 0).then_some(len)
    });
    assert!(started.is_some(), "the download did not start");

    // The successor waits (about 5 s) on the upgrade socket for the listeners.
    let new_log = dir.path().join("new.log");
    let mut new = spawn_successor(&old, &new_log);
    let sock = old.dir().join("orca_upgrade.sock");
    let waiting = poll_until(Duration::from_secs(30), || sock.exists().then_some(()));
    assert!(
        waiting.is_some(),
        "the successor never opened {}:\n{}",
        sock.display(),
        file_tail(&new_log, 40)
    );
    old.signal("QUIT");
    // The old process hands its sockets over, accepts for 5 s more, then closes its
    // listeners: from then on every new connection is the new process's.
    let closed = poll_until(Duration::from_secs(30), || {
        old.log()
            .contains("Graceful shutdown started")
            .then_some(())
    });
    assert!(
        closed.is_some(),
        "the old process did not start its shutdown:\n{}",
        old.log_tail()
    );
    assert!(
        new.try_wait().is_none(),
        "the successor exited:\n{}",
        file_tail(&new_log, 40)
    );
    let at_handover = std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
    assert!(
        download.try_wait().is_none() && at_handover < data.len() as u64,
        "the download had ended before the old process closed its listeners: nothing shown"
    );
    for i in 0..5 {
        let got = http_get(&old.object_url("upgrade", "small"), None)
            .await
            .unwrap();
        assert_eq!((got.status, got.body.as_slice()), (200, &b"hello"[..]));
        let id = got.header("x-amz-request-id").unwrap().to_string();
        let found = poll_until(Duration::from_secs(10), || {
            served(&std::fs::read_to_string(&new_log).unwrap_or_default(), &id).then_some(())
        });
        assert!(
            found.is_some(),
            "request {i} ({id}) is not in the new process's log:\n{}",
            file_tail(&new_log, 40)
        );
        assert!(
            !served(&old.log(), &id),
            "request {i} ({id}) reached the old process"
        );
    }

    // The download that started on the old process ends whole.
    let status = download.wait_timeout(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "the download in flight failed: {status:?}\n{}",
        old.log_tail()
    );
    assert_eq!(
        sha256_hex(&std::fs::read(&target).unwrap()),
        sha256_hex(&data),
        "the download that spanned the upgrade"
    );
    // And the new process serves the big object too.
    let got = http_get(&old.object_url("upgrade", "big"), None)
        .await
        .unwrap();
    assert_eq!(sha256_hex(&got.body), sha256_hex(&data));
    new.kill();
}
