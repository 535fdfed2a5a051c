//! Shared helpers of Orca's integration tests: real servers started as processes on free ports
//! (moto, Azurite, the `orca` binary), a `Stack` of origin, fault proxy and Orca with the origin
//! as a parameter, the cases both origins run, a tiny S3 seeding client, a fault-injecting HTTP
//! proxy, and HTTP helpers that report a truncated body as an error.
//!
//! Every test file does `mod common;`. Everything here is bounded in time and count, and every
//! process is stopped by pid when its guard drops (also when a test panics).
#![allow(dead_code)]
#![allow(unused_imports)]
#![allow(clippy::unwrap_used)]

pub mod azurite;
pub mod cases;
pub mod entra;
pub mod fleet;
pub mod fsstore;
pub mod httpc;
pub mod moto;
pub mod orca;
pub mod pki;
pub mod proxy;
pub mod s3;
pub mod stack;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub use self::fleet::{fs_chunk_path, Fleet, Member};
pub use self::httpc::{
    blocking_get, http_client, http_get, http_head, http_request, raw_request, send, HttpError,
    HttpResponse, RawResponse,
};
pub use self::moto::Moto;
pub use self::orca::{
    metric_value, metric_value_opt, orca_bin, OrcaConfig, OrcaPorts, OrcaProcess, StartFailure,
};
pub use self::proxy::{Counts, Fault, FaultProxy, FaultRule, RequestRecord};
pub use self::s3::{
    bucket_url, create_bucket, delete_object, encode_key, get_object, head_object, object_url,
    put_bucket_versioning, put_object, put_object_with, s3_get, s3_head, with_dummy_auth,
    ObjectHead, DUMMY_AUTHORIZATION,
};
pub use self::stack::{Origin, OriginServer, Stack};

/// Upper bound for one readiness wait (moto, orca).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A free TCP port on 127.0.0.1 (bind port 0, read it, release it).
///
/// There is a small window in which another process could take the port; tests accept it.
/// Resident memory (`VmRSS`) of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Owns a child process and stops it by pid when dropped (SIGKILL, then wait), so a panicking test
/// never leaks a process.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    name: String,
}

impl ChildGuard {
    /// Wraps `child`; `name` is used in messages only.
    pub fn new(name: impl Into<String>, child: Child) -> Self {
        Self {
            child: Some(child),
            name: name.into(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// The exit status if the process has exited, without blocking.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends `signal` (e.g. `"TERM"`, `"INT"`, `"KILL"`) to the process by pid with `kill(1)`.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid();
        if pid == 0 {
            return;
        }
        let _ = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status();
    }

    /// Waits for the process to exit, at most `timeout` (polling every 20 ms).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (SIGKILL by pid) and reaps it. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    /// The name given at construction.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls until a TCP connection to `addr` succeeds or `timeout` passes. `alive` is called between
/// attempts and may return an error message (e.g. "the process exited") to stop early.
pub fn wait_for_port(
    addr: SocketAddr,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        alive()?;
        if Instant::now() >= deadline {
            return Err(format!("{addr} not accepting after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `lines` lines of a (log) file, or a note saying why it could not be read. Reads at
/// most the last 256 KiB.
pub fn file_tail(path: &Path, lines: usize) -> String {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("<cannot open {}: {e}>", path.display()),
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(256 * 1024);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return format!("<cannot seek {}>", path.display());
    }
    let mut buf = Vec::new();
    if let Err(e) = file.read_to_end(&mut buf) {
        return format!("<cannot read {}: {e}>", path.display());
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    all[from..].join("\n")
}

/// Polls `probe` every 20 ms until it returns `Some` or `timeout` passes (blocking). For effects
/// that land after a response (e.g. a cache store commit), never for timing assertions.
pub fn poll_until<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a future to completion on a fresh current-thread runtime (for sync tests). Do not call
/// from inside a tokio runtime.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

/// `len` pseudo-random bytes from `seed` (splitmix64 stream): fast and reproducible.
pub fn deterministic_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut state = seed;
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A unique-enough name (bucket names, key prefixes): `prefix` + pid + a process-wide counter,
/// lowercase, valid as an S3 bucket name when `prefix` is.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Upper bound of one client process (the aws CLI, python3, curl, rclone, `orca -t`).
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(180);

/// Runs `cmd` to completion, at most `deadline`, with `stdin` (if any) written to it, and
/// returns its output. Output goes to files (no pipe can fill up and stall the child). When the
/// deadline trips the child is killed by pid and the test panics with its stdout and stderr.
pub fn run_bounded(
    cmd: &mut std::process::Command,
    stdin: Option<&[u8]>,
    deadline: Duration,
) -> std::process::Output {
    use std::process::Stdio;
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(File::create(&out_path).expect("stdout file"))
    .stderr(File::create(&err_path).expect("stderr file"));
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (run hack/install-test-deps.sh)"));
    // A writer thread, so a child that does not read its input cannot stall the test.
    let writer = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => {
            let data = data.to_vec();
            Some(std::thread::spawn(move || {
                use std::io::Write;
                let _ = pipe.write_all(&data);
            }))
        }
        _ => None,
    };
    let mut guard = ChildGuard::new("client", child);
    let status = guard.wait_timeout(deadline);
    guard.kill();
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    let stdout = std::fs::read(&out_path).unwrap_or_default();
    let stderr = std::fs::read(&err_path).unwrap_or_default();
    let Some(status) = status else {
        panic!(
            "{cmd:?} still running after {deadline:?}, killed\n--- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    };
    std::process::Output {
        status,
        stdout,
        stderr,
    }
}

/// Runs a real S3 client (aws CLI, python3 with boto3, curl, ...) with placeholder credentials
/// and the region set, at most [`CLIENT_DEADLINE`], and returns its stdout; panics with its
/// stderr when it fails.
pub fn run_client(cmd: &mut std::process::Command) -> Vec<u8> {
    cmd.env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_CA_BUNDLE");
    let out = run_bounded(cmd, None, CLIENT_DEADLINE);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs a Python snippet (`python3 -c script args...`, e.g. boto3) with `stdin`, at most
/// [`CLIENT_DEADLINE`]; returns its stdout and panics with its stderr when it fails.
pub fn run_python(script: &str, args: &[&str], stdin: &str) -> String {
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c")
        .arg(script)
        .args(args)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_CA_BUNDLE");
    let out = run_bounded(&mut cmd, Some(stdin.as_bytes()), CLIENT_DEADLINE);
    assert!(
        out.status.success(),
        "python failed: {}\n--- stdout ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("python's stdout is UTF-8")
}

/// Whether a server's log says it could not bind its port (another process took the free port
/// between [`free_port`] and the bind): the caller retries with another port.
pub fn says_address_in_use(log: &str) -> bool {
    log.contains("Address already in use")
        || log.contains("EADDRINUSE")
        || log.contains("os error 98")
}

/// How many times a server whose free port was taken before it bound it is started again.
pub const BIND_ATTEMPTS: usize = 3;

/// Every socket row of `/proc/net/tcp` and `/proc/net/tcp6`, split into its columns
/// (`sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...`).
pub fn proc_tcp_rows() -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            rows.push(line.split_whitespace().map(str::to_string).collect());
        }
    }
    rows
}

/// The port of a `/proc/net/tcp*` address column (`0100007F:1F90`); 0 when unreadable.
pub fn proc_tcp_port(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .and_then(|p| u16::from_str_radix(p, 16).ok())
        .unwrap_or(0)
}

/// Process `pid` and its descendants (from each process's parent in `/proc/PID/stat`).
fn process_family(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|p| {
                    let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
                    // The parent is the second field after the parenthesised command name.
                    let (_, rest) = stat.rsplit_once(')')?;
                    Some((p, rest.split_whitespace().nth(1)?.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut family = vec![pid];
    let mut i = 0;
    while i < family.len() {
        let parent = family[i];
        for &(p, ppid) in &parents {
            if ppid == parent && !family.contains(&p) {
                family.push(p);
            }
        }
        i += 1;
    }
    family
}

/// Whether the socket listening on TCP `port` (loopback, IPv4 or IPv6) is held by process
/// `pid` or one of its descendants: the listener's inode (`/proc/net/tcp*`) among their
/// descriptors.
pub fn listener_belongs_to(port: u16, pid: u32) -> bool {
    // Columns: local address, state (0A: LISTEN), inode.
    let inodes: std::collections::HashSet<String> = proc_tcp_rows()
        .into_iter()
        .filter(|c| c.len() > 9 && proc_tcp_port(&c[1]) == port && c[3] == "0A")
        .map(|c| format!("socket:[{}]", c[9]))
        .collect();
    !inodes.is_empty()
        && process_family(pid).iter().any(|p| {
            std::fs::read_dir(format!("/proc/{p}/fd")).is_ok_and(|fds| {
                fds.flatten().any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|l| inodes.contains(l.to_string_lossy().as_ref()))
                })
            })
        })
}

/// Starts a server on a free port of 127.0.0.1 and waits (at most [`READY_TIMEOUT`]) until the
/// port accepts connections, on a listener of its own. `command(port)` builds the command line;
/// its stdout and stderr go to `log_path`. When the port was taken meanwhile (the server says
/// so, or another process holds the listener), it is started again on another port (at most
/// [`BIND_ATTEMPTS`] times); on any other failure this panics with `hint` (how to install it)
/// or the log's tail. `name` is for messages.
pub fn spawn_on_free_port(
    name: &str,
    log_path: &Path,
    hint: &str,
    mut command: impl FnMut(u16) -> std::process::Command,
) -> (ChildGuard, u16) {
    use std::process::Stdio;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let log = File::create(log_path).expect("create the server's log");
        let log_err = log.try_clone().expect("clone the log handle");
        let port = free_port();
        let child = command(port)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({hint}): {e}"));
        let mut child = ChildGuard::new(name, child);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let ready = wait_for_port(addr, READY_TIMEOUT, || match child.try_wait() {
            Some(status) => Err(format!("{name} exited early: {status}")),
            None => Ok(()),
        });
        // Another server started meanwhile (another test's) may have taken the port first: the
        // port then accepts, but not for this child, which fails to bind and exits. Ready only
        // when the listener is this child's (or its descendants').
        let ready = ready.and_then(|()| {
            if listener_belongs_to(port, child.pid()) {
                Ok(())
            } else {
                Err(format!("port {port} is another process's: address in use"))
            }
        });
        match ready {
            Ok(()) => return (child, port),
            Err(e) if attempt < BIND_ATTEMPTS && e.ends_with("address in use") => {
                child.kill();
                continue;
            }
            Err(e) => {
                child.kill();
                let tail = file_tail(log_path, 40);
                if attempt < BIND_ATTEMPTS && says_address_in_use(&tail) {
                    continue;
                }
                panic!("{name} did not become ready: {e}\n--- {name} log tail ---\n{tail}");
            }
        }
    }
}
