//! The zero-downtime upgrade, shown: a second Orca started with `-u` takes the listeners of the
//! first when it gets `SIGQUIT`; a download in flight on the first finishes byte-exact while new
//! connections reach the second (each request found by its `x-amz-request-id` in the new
//! process's log and not in the old one's). On plain HTTP and on a TLS edge; every client is
//! curl, so every request is a new connection.

#![allow(clippy::unwrap_used)]

mod common;

use common::orca::yaml_str;
use common::pki::Ca;
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

/// Whether `log` has the `edge request` line of request `id`.
fn served(log: &str, id: &str) -> bool {
    let field = format!("request_id={id}");
    log.lines()
        .any(|l| l.contains("edge request") && l.contains(&field))
}

/// Whether the `edge request` line of `id` shows up in the log at `path` within 10 s (it is
/// written after the response's last byte).
fn served_soon(path: &Path, id: &str) -> bool {
    poll_until(Duration::from_secs(10), || {
        served(&std::fs::read_to_string(path).unwrap_or_default(), id).then_some(())
    })
    .is_some()
}

/// GETs `url` with curl (trusting `ca` when given), writes the body to `out`, and returns the
/// response's `x-amz-request-id`. Panics when curl fails.
fn curl(url: &str, ca: Option<&Path>, out: &Path) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "-D", "-", "-o"]).arg(out);
    if let Some(ca) = ca {
        cmd.arg("--cacert").arg(ca);
    }
    let head = String::from_utf8(run_client(cmd.arg(url))).unwrap();
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-amz-request-id")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no x-amz-request-id in {head}"))
}

#[test]
fn an_upgrade_hands_over_the_listeners_without_cutting_a_download() {
    block_on(upgrade(false));
}

#[test]
fn an_upgrade_hands_over_tls_listeners_without_cutting_a_download() {
    block_on(upgrade(true));
}

async fn upgrade(tls: bool) {
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "upgrade-ca");
    let (cert, key) = ca.leaf("orca-upgrade", "3003");
    let ca_path = ca.cert();
    let ca_arg = tls.then_some(ca_path.as_path());
    let moto = Moto::start();
    create_bucket(&moto.endpoint(), "upgrade").await;
    let data = deterministic_bytes(21, 32 * MIB);
    put_object(&moto.endpoint(), "upgrade", "big", data.clone()).await;
    put_object(&moto.endpoint(), "upgrade", "small", b"hello".to_vec()).await;
    // Pingora's own lifecycle lines (info) show when the old process stops accepting; a grace
    // period long enough for the slow download below.
    let ports = OrcaPorts::free();
    let mut config = OrcaConfig::new(&moto.endpoint())
        .ports(ports)
        .env("ORCA_LOG", "debug,pingora_core=info")
        .pingora_extra_yaml("grace_period_seconds: 30");
    if tls {
        config = config.extra_yaml(&format!(
            "listen:\n  edge: \"127.0.0.1:{}\"\n  internal: \"127.0.0.1:{}\"\n  ops: \"127.0.0.1:{}\"\n  edge_tls:\n    cert: {}\n    key: {}\n",
            ports.edge,
            ports.internal,
            ports.ops,
            yaml_str(&cert.to_string_lossy()),
            yaml_str(&key.to_string_lossy())
        ));
    }
    let old = OrcaProcess::start(config);
    let scheme = if tls { "https" } else { "http" };
    let url = |key: &str| format!("{scheme}://127.0.0.1:{}/upgrade/{key}", ports.edge);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("big.bin");
    // 32 MiB at 2 MiB/s: still running when the listeners change hands.
    let mut download = Command::new("curl");
    download
        .args(["-sS", "--fail", "--limit-rate", "2M", "-o"])
        .arg(&target)
        .arg(url("big"));
    if let Some(ca) = ca_arg {
        download.arg("--cacert").arg(ca);
    }
    let mut download = ChildGuard::new("curl", download.spawn().unwrap());
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
    let small = dir.path().join("small");
    for i in 0..5 {
        let id = curl(&url("small"), ca_arg, &small);
        assert_eq!(std::fs::read(&small).unwrap(), b"hello");
        assert!(
            served_soon(&new_log, &id),
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
    let again = dir.path().join("again.bin");
    let id = curl(&url("big"), ca_arg, &again);
    assert_eq!(
        sha256_hex(&std::fs::read(&again).unwrap()),
        sha256_hex(&data)
    );
    assert!(served_soon(&new_log, &id), "{}", file_tail(&new_log, 40));
    new.kill();
}
