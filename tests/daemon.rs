//! `orca -d`: the process puts itself in the background, writes Pingora's `pid_file`, serves,
//! and stops on `SIGTERM` sent to the pid in that file (docs/operations.md, "Running in the
//! background"), with a relative cache root kept where it was started. The real binary, and
//! moto as the origin of the second test.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    blocking_get, create_bucket, orca_bin, put_object, s3_get, Moto, OrcaConfig, OrcaPorts,
    READY_TIMEOUT,
};

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

/// A daemon started with `orca -d` in `dir` (its working directory), known by the pid in its
/// pid file. Killed by that pid (SIGKILL) if the test ends before [`Daemon::stop`].
struct Daemon {
    guard: DaemonGuard,
    pid: u32,
    ports: OrcaPorts,
    log_path: PathBuf,
}

impl Daemon {
    /// Writes the configuration into `dir`, runs `orca -d` there, and checks that the process
    /// it started returns 0, that the pid file names another, live process running the orca
    /// binary, and that its `/healthz` answers 200 (each within [`READY_TIMEOUT`]).
    fn start(dir: &Path, config: &OrcaConfig, cache_root: &Path) -> Daemon {
        let ports = OrcaPorts::free();
        let config_path = dir.join("orca.yaml");
        let pingora_path = dir.join("pingora.yaml");
        let pid_file = dir.join("orca.pid");
        std::fs::write(&config_path, config.to_yaml(&ports, cache_root)).unwrap();
        // pid_file and upgrade_sock in `dir`, grace periods of 1 s.
        std::fs::write(&pingora_path, config.to_pingora_yaml(dir)).unwrap();
        let log_path = dir.join("orca.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let log_tail = || std::fs::read_to_string(&log_path).unwrap_or_default();

        let mut parent = Command::new(orca_bin())
            .arg("-d")
            .arg("--config")
            .arg(&config_path)
            .arg("-c")
            .arg(&pingora_path)
            .current_dir(dir)
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
        let guard = DaemonGuard(Some(pid));
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
        Daemon {
            guard,
            pid,
            ports,
            log_path,
        }
    }

    fn log_tail(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGTERM to the pid from the file; it must exit within 30 s (grace periods of 1 s) and
    /// its ops port close.
    fn stop(mut self) {
        let pid = self.pid;
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
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.guard.0 = None;
        let ops = SocketAddr::from(([127, 0, 0, 1], self.ports.ops));
        assert!(
            blocking_get(ops, "/healthz", Duration::from_secs(2)).is_err(),
            "the ops port still answers after the daemon exited"
        );
    }
}

#[test]
fn daemon_writes_its_pid_file_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // The origin is never asked: only /healthz is.
    let config = OrcaConfig::new("http://127.0.0.1:9");
    let daemon = Daemon::start(dir.path(), &config, &dir.path().join("cache"));
    daemon.stop();
}

/// The daemon changes its working directory to `/`, after Orca has read its configuration: a
/// relative `cachestore.fs.root` (the shipped default is `./data/cache`) must still name the
/// directory under the one Orca was started from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_keeps_a_relative_cache_root_where_it_was_started() {
    let moto = Moto::start();
    create_bucket(&moto.endpoint(), "bucket").await;
    let data: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    put_object(&moto.endpoint(), "bucket", "object", data.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = OrcaConfig::new(&moto.endpoint()).chunk_size("1MiB");
    let daemon = Daemon::start(dir.path(), &config, Path::new("data/cache"));

    let url = format!("http://127.0.0.1:{}/bucket/object", daemon.ports.edge);
    let response = s3_get(&url, None).await.unwrap();
    assert_eq!(response.status, 200, "{}", daemon.log_tail());
    assert!(response.body == data, "the body differs from the object");

    // The 3 chunks are committed in the background after the response: under the directory
    // the daemon was started from.
    let chunks = dir.path().join("data/cache/v1");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = count_files(&chunks);
        if found == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{found} chunk files under {} after 30 s, 3 expected\n{}",
            chunks.display(),
            daemon.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.stop();
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                count_files(&path)
            } else {
                1
            }
        })
        .sum()
}
