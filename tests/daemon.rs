//! `orca -d`: the process puts itself in the background, writes Pingora's `pid_file`, serves,
//! and stops on `SIGTERM` sent to the pid in that file (docs/operations.md, "Running in the
//! background"). The real binary, no origin needed: only the ops port is asked.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{blocking_get, orca_bin, OrcaConfig, OrcaPorts, READY_TIMEOUT};

/// Kills the daemon by its pid (SIGKILL) if the test ends before it stopped it.
struct DaemonGuard(Option<u32>);

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// Whether `pid` is a live (not zombie) process. A daemon is not our child: once it exits it
/// is reaped by init, or stays a zombie where init does not reap (some containers).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

fn read_pid(pid_file: &Path) -> Option<u32> {
    std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

#[test]
fn daemon_writes_its_pid_file_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let ports = OrcaPorts::free();
    // The origin is never asked: only /healthz is.
    let config = OrcaConfig::new("http://127.0.0.1:9");
    let config_path = dir.path().join("orca.yaml");
    let pingora_path = dir.path().join("pingora.yaml");
    let pid_file = dir.path().join("orca.pid");
    std::fs::write(
        &config_path,
        config.to_yaml(&ports, &dir.path().join("cache")),
    )
    .unwrap();
    // pid_file and upgrade_sock in the temp dir, grace periods of 1 s.
    std::fs::write(&pingora_path, config.to_pingora_yaml(dir.path())).unwrap();
    let log_path = dir.path().join("orca.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let log_tail = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let mut guard = DaemonGuard(None);
    let mut parent = Command::new(orca_bin())
        .arg("-d")
        .arg("--config")
        .arg(&config_path)
        .arg("-c")
        .arg(&pingora_path)
        .current_dir(dir.path())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env_remove("ORCA_CONFIG")
        .env_remove("ORCA_SELF")
        .env_remove("ORCA_LOG_LEVEL")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let parent_pid = parent.id();

    // The process we started returns once the daemon is forked off, with status 0.
    let deadline = Instant::now() + READY_TIMEOUT;
    let status = loop {
        if let Some(status) = parent.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = parent.kill();
            let _ = parent.wait();
            panic!(
                "orca -d did not return within {READY_TIMEOUT:?}\n{}",
                log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "orca -d exited {status}\n{}", log_tail());

    // The pid file names the daemon: another process than the one we started, running orca.
    let deadline = Instant::now() + READY_TIMEOUT;
    let pid = loop {
        if let Some(pid) = read_pid(&pid_file) {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "no pid in {} after {READY_TIMEOUT:?}\n{}",
            pid_file.display(),
            log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    guard.0 = Some(pid);
    assert_ne!(
        pid, parent_pid,
        "the pid file names the process that returned"
    );
    assert!(
        alive(pid),
        "pid {pid} from the pid file is not running\n{}",
        log_tail()
    );
    let exe: PathBuf = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(
        exe.canonicalize().unwrap(),
        orca_bin().canonicalize().unwrap(),
        "pid {pid} from the pid file is not the orca binary"
    );

    // It serves.
    let ops = SocketAddr::from(([127, 0, 0, 1], ports.ops));
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match blocking_get(ops, "/healthz", Duration::from_secs(2)) {
            Ok(response) if response.status == 200 => break,
            other => assert!(
                Instant::now() < deadline,
                "the daemon's /healthz did not answer 200 within {READY_TIMEOUT:?} \
                 (last: {:?})\n{}",
                other.map(|r| r.status),
                log_tail()
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // SIGTERM to the pid from the file stops it (grace periods of 1 s each).
    let sent = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -TERM {pid} failed");
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "the daemon (pid {pid}) still runs 30 s after SIGTERM\n{}",
            log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    guard.0 = None;
    assert!(
        blocking_get(ops, "/healthz", Duration::from_secs(2)).is_err(),
        "the ops port still answers after the daemon exited"
    );
}
