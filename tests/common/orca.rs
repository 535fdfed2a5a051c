//! `OrcaProcess`: the `orca` binary started from a generated configuration on free ports of
//! 127.0.0.1, with its log in a file, stopped by pid on drop.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::httpc::blocking_get;
use super::{file_tail, free_port, ChildGuard, READY_TIMEOUT};

/// The `orca` binary cargo built for this integration test (env `ORCA_BIN` overrides).
pub fn orca_bin() -> PathBuf {
    match std::env::var_os("ORCA_BIN") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_BIN_EXE_orca")),
    }
}

/// The three listening ports of one Orca process (all on 127.0.0.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrcaPorts {
    /// `listen.edge`.
    pub edge: u16,
    /// `listen.internal`.
    pub internal: u16,
    /// `listen.ops`.
    pub ops: u16,
}

impl OrcaPorts {
    /// Three distinct free ports.
    pub fn free() -> OrcaPorts {
        for _ in 0..100 {
            let (edge, internal, ops) = (free_port(), free_port(), free_port());
            if edge != internal && internal != ops && edge != ops {
                return OrcaPorts {
                    edge,
                    internal,
                    ops,
                };
            }
        }
        panic!("could not find three distinct free ports");
    }
}

/// The generated Orca configuration (see docs/configuration.md).
///
/// `extra_yaml` is appended to the generated YAML; a top-level key in it (a line starting in
/// column 0, e.g. `limits:` or `cluster:`) replaces the generated section of that name.
#[derive(Debug, Clone)]
pub struct OrcaConfig {
    /// `origin.s3.endpoint`, e.g. a [`super::FaultProxy::endpoint`].
    pub origin_endpoint: String,
    /// `origin.id`.
    pub origin_id: String,
    /// `origin.s3.region`.
    pub region: String,
    /// `chunking.size` (e.g. `1MiB`); `chunking.tiers` is `[]`.
    pub chunk_size: String,
    /// `chunking.readahead`.
    pub readahead: u32,
    /// `metadata.ttl` (e.g. `60s`).
    pub metadata_ttl: String,
    /// `metadata.negative_ttl` (e.g. `10s`).
    pub negative_ttl: String,
    /// `limits.origin_concurrency`.
    pub origin_concurrency: u32,
    /// `cachestore.fs.root`; `None`: `cache/` in the process's temp dir.
    pub cache_root: Option<PathBuf>,
    /// Listening ports; `None`: three free ports.
    pub ports: Option<OrcaPorts>,
    /// `logging.level` and env `ORCA_LOG_LEVEL`.
    pub log_level: String,
    /// YAML appended to the generated configuration (see the type docs).
    pub extra_yaml: String,
    /// YAML appended to the generated Pingora server configuration.
    pub pingora_extra_yaml: String,
    /// Extra environment variables for the process (applied last).
    pub env: Vec<(String, String)>,
    /// The binary; `None`: [`orca_bin`].
    pub binary: Option<PathBuf>,
    /// Start-up waits for `/healthz` only, not `/readyz` (a test of a process that is not
    /// ready from the start).
    pub unready_at_start: bool,
    /// Host names that resolve to 127.0.0.1 for this process only (see [`OrcaConfig::host`]).
    pub hosts: Vec<String>,
}

impl OrcaConfig {
    /// Test defaults: origin id `test-origin`, region us-east-1, path-style, 1MiB chunks, no
    /// tiers, readahead 4, TTLs 60s / 10s, origin concurrency 16, log level debug.
    pub fn new(origin_endpoint: &str) -> OrcaConfig {
        OrcaConfig {
            origin_endpoint: origin_endpoint.to_string(),
            origin_id: "test-origin".to_string(),
            region: "us-east-1".to_string(),
            chunk_size: "1MiB".to_string(),
            readahead: 4,
            metadata_ttl: "60s".to_string(),
            negative_ttl: "10s".to_string(),
            origin_concurrency: 16,
            cache_root: None,
            ports: None,
            log_level: "debug".to_string(),
            extra_yaml: String::new(),
            pingora_extra_yaml: String::new(),
            env: Vec::new(),
            binary: None,
            unready_at_start: false,
            hosts: Vec::new(),
        }
    }

    /// Sets `origin.id`.
    pub fn origin_id(mut self, id: &str) -> Self {
        self.origin_id = id.to_string();
        self
    }

    /// Sets `chunking.size`.
    pub fn chunk_size(mut self, size: &str) -> Self {
        self.chunk_size = size.to_string();
        self
    }

    /// Sets `chunking.readahead`.
    pub fn readahead(mut self, n: u32) -> Self {
        self.readahead = n;
        self
    }

    /// Sets `metadata.ttl`.
    pub fn metadata_ttl(mut self, ttl: &str) -> Self {
        self.metadata_ttl = ttl.to_string();
        self
    }

    /// Sets `metadata.negative_ttl`.
    pub fn negative_ttl(mut self, ttl: &str) -> Self {
        self.negative_ttl = ttl.to_string();
        self
    }

    /// Sets `limits.origin_concurrency`.
    pub fn origin_concurrency(mut self, n: u32) -> Self {
        self.origin_concurrency = n;
        self
    }

    /// Sets `cachestore.fs.root` (e.g. shared between a process and its successor).
    pub fn cache_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.cache_root = Some(root.into());
        self
    }

    /// Uses these ports instead of free ones (e.g. peers that must know each other's ports).
    pub fn ports(mut self, ports: OrcaPorts) -> Self {
        self.ports = Some(ports);
        self
    }

    /// Sets the log level.
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_string();
        self
    }

    /// Appends YAML (a top-level key replaces the generated section of that name).
    pub fn extra_yaml(mut self, yaml: &str) -> Self {
        if !self.extra_yaml.is_empty() && !self.extra_yaml.ends_with('\n') {
            self.extra_yaml.push('\n');
        }
        self.extra_yaml.push_str(yaml);
        self
    }

    /// Appends YAML to the Pingora server configuration.
    pub fn pingora_extra_yaml(mut self, yaml: &str) -> Self {
        self.pingora_extra_yaml.push_str(yaml);
        self.pingora_extra_yaml.push('\n');
        self
    }

    /// Adds an environment variable for the process.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Start-up waits for `/healthz` only: the process is not expected to be ready.
    pub fn unready_at_start(mut self) -> Self {
        self.unready_at_start = true;
        self
    }

    /// Makes `name` resolve to 127.0.0.1 for this process only: the process runs in its own
    /// mount namespace (`unshare --mount`, which needs root, as tests here run) with a copy of
    /// `/etc/hosts` plus these names bind-mounted over `/etc/hosts`. Names such as
    /// `bucket.s3.orca.test` need this: the machine resolves only what `/etc/hosts` and DNS say,
    /// and `*.localhost` is not special to glibc. The pid is orca's own (`unshare` without
    /// `--fork` and `exec` keep it).
    pub fn host(mut self, name: &str) -> Self {
        self.hosts.push(name.to_string());
        self
    }

    /// Uses another binary.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// The Orca YAML for these ports and cache root.
    pub fn to_yaml(&self, ports: &OrcaPorts, cache_root: &Path) -> String {
        let replaced: Vec<&str> = self
            .extra_yaml
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with([' ', '\t', '#', '-']) && l.contains(':'))
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect();
        let sections: Vec<(&str, String)> = vec![
            (
                "listen",
                format!(
                    "listen:\n  edge: {}\n  internal: {}\n  ops: {}\n",
                    yaml_str(&format!("127.0.0.1:{}", ports.edge)),
                    yaml_str(&format!("127.0.0.1:{}", ports.internal)),
                    yaml_str(&format!("127.0.0.1:{}", ports.ops)),
                ),
            ),
            (
                "origin",
                format!(
                    "origin:\n  id: {}\n  driver: s3\n  s3:\n    endpoint: {}\n    region: {}\n    path_style: true\n",
                    yaml_str(&self.origin_id),
                    yaml_str(&self.origin_endpoint),
                    yaml_str(&self.region),
                ),
            ),
            (
                "cachestore",
                format!(
                    "cachestore:\n  driver: fs\n  fs:\n    root: {}\n",
                    yaml_str(&cache_root.to_string_lossy())
                ),
            ),
            (
                "chunking",
                format!(
                    "chunking:\n  size: {}\n  tiers: []\n  readahead: {}\n",
                    self.chunk_size, self.readahead
                ),
            ),
            (
                "metadata",
                format!(
                    "metadata:\n  ttl: {}\n  negative_ttl: {}\n",
                    self.metadata_ttl, self.negative_ttl
                ),
            ),
            (
                "limits",
                format!(
                    "limits:\n  origin_concurrency: {}\n",
                    self.origin_concurrency
                ),
            ),
            (
                "logging",
                format!(
                    "logging:\n  level: {}\n  format: text\n",
                    yaml_str(&self.log_level)
                ),
            ),
        ];
        let mut yaml = String::from("# generated by tests/common/orca.rs\n");
        for (name, text) in sections {
            if !replaced.contains(&name) {
                yaml.push_str(&text);
            }
        }
        if !self.extra_yaml.is_empty() {
            yaml.push_str(&self.extra_yaml);
            if !yaml.ends_with('\n') {
                yaml.push('\n');
            }
        }
        yaml
    }

    /// The Pingora server YAML with its pid file and upgrade socket in `dir`.
    pub fn to_pingora_yaml(&self, dir: &Path) -> String {
        let generated = format!(
            "version: 1\nthreads: 2\npid_file: {}\nupgrade_sock: {}\n\
             grace_period_seconds: 1\ngraceful_shutdown_timeout_seconds: 1\n",
            yaml_str(&dir.join("orca.pid").to_string_lossy()),
            yaml_str(&dir.join("orca_upgrade.sock").to_string_lossy()),
        );
        // A key set in `pingora_extra_yaml` replaces the generated line of that name.
        let overridden: Vec<&str> = self
            .pingora_extra_yaml
            .lines()
            .filter_map(|l| l.split_once(':').map(|(k, _)| k.trim()))
            .collect();
        let mut yaml = String::from("---\n");
        for line in generated.lines() {
            let key = line.split(':').next().unwrap_or("").trim();
            if !overridden.contains(&key) {
                yaml.push_str(line);
                yaml.push('\n');
            }
        }
        yaml.push_str(&self.pingora_extra_yaml);
        yaml
    }
}

/// A double-quoted YAML string.
pub fn yaml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Why [`OrcaProcess::try_start`] failed.
#[derive(Debug)]
pub struct StartFailure {
    /// The process exited saying a port it was given is in use (taken after it was chosen).
    pub address_in_use: bool,
    /// The whole story: status, configuration, log tail.
    pub message: String,
}

/// A running `orca` process. Dropping it kills the process by pid (and removes its temp dir).
#[derive(Debug)]
pub struct OrcaProcess {
    // Field order: the process stops before its directory is removed.
    child: ChildGuard,
    config: OrcaConfig,
    ports: OrcaPorts,
    cache_root: PathBuf,
    config_path: PathBuf,
    pingora_path: PathBuf,
    log_path: PathBuf,
    dir: tempfile::TempDir,
}

impl OrcaProcess {
    /// Writes the configuration, starts `orca --config orca.yaml -c pingora.yaml` and waits (at
    /// most 30 s) until `GET /readyz` on the ops port answers 200 (its listeners accept and its
    /// origin and store are usable; with [`OrcaConfig::unready_at_start`], only `/healthz` and
    /// the edge port). When the process exits at start because a free port it was given was
    /// taken meanwhile, it is started again on other ports (unless the ports were fixed with
    /// [`OrcaConfig::ports`]). Panics with the log tail on failure.
    pub fn start(config: OrcaConfig) -> OrcaProcess {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(config.clone()) {
                Ok(process) => return process,
                Err(failure)
                    if failure.address_in_use
                        && config.ports.is_none()
                        && attempt < super::BIND_ATTEMPTS => {}
                Err(failure) => panic!("{}", failure.message),
            }
        }
    }

    /// As [`OrcaProcess::start`] but once, and returning why it failed (a fleet whose replicas
    /// name each other's ports retries all of them).
    pub fn try_start(config: OrcaConfig) -> Result<OrcaProcess, StartFailure> {
        let dir = tempfile::Builder::new()
            .prefix("orca-test-")
            .tempdir()
            .expect("tempdir");
        let ports = config.ports.unwrap_or_else(OrcaPorts::free);
        let cache_root = config
            .cache_root
            .clone()
            .unwrap_or_else(|| dir.path().join("cache"));
        std::fs::create_dir_all(&cache_root).expect("create cache root");
        let config_path = dir.path().join("orca.yaml");
        let pingora_path = dir.path().join("pingora.yaml");
        std::fs::write(&config_path, config.to_yaml(&ports, &cache_root)).expect("write orca.yaml");
        std::fs::write(&pingora_path, config.to_pingora_yaml(dir.path()))
            .expect("write pingora.yaml");
        let log_path = dir.path().join("orca.log");
        let child = spawn(&config, &config_path, &pingora_path, &log_path, dir.path());
        let mut process = OrcaProcess {
            child,
            config,
            ports,
            cache_root,
            config_path,
            pingora_path,
            log_path,
            dir,
        };
        process.wait_ready()?;
        Ok(process)
    }

    /// Stops this process (SIGTERM, at most 10 s, then SIGKILL) and starts a new one with the
    /// same configuration, ports, cache root and directory (the log is appended to).
    pub fn restart(mut self) -> OrcaProcess {
        self.sigterm();
        if self.wait_exit(Duration::from_secs(10)).is_none() {
            self.child.kill();
        }
        self.child.kill();
        self.child = spawn(
            &self.config,
            &self.config_path,
            &self.pingora_path,
            &self.log_path,
            self.dir.path(),
        );
        if let Err(failure) = self.wait_ready() {
            panic!("{}", failure.message);
        }
        self
    }

    fn wait_ready(&mut self) -> Result<(), StartFailure> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.ports.ops));
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last;
        loop {
            if let Some(status) = self.child.try_wait() {
                let log = self.log();
                return Err(StartFailure {
                    address_in_use: super::says_address_in_use(&log),
                    message: format!(
                        "orca exited during start-up: {status}\n--- config ---\n{}\n--- orca log tail ---\n{}",
                        std::fs::read_to_string(&self.config_path).unwrap_or_default(),
                        self.log_tail()
                    ),
                });
            }
            // Pingora retries a bind that finds its port taken instead of exiting: give up at
            // once, so the caller can choose other ports.
            let log = self.log();
            if log.contains(" is in use, will try again") {
                self.child.kill();
                return Err(StartFailure {
                    address_in_use: true,
                    message: format!("a port of orca is in use\n{}", self.log_tail()),
                });
            }
            let path = if self.config.unready_at_start {
                "/healthz"
            } else {
                "/readyz"
            };
            match blocking_get(addr, path, Duration::from_secs(2)) {
                Ok(response) if response.status == 200 => {
                    let edge = SocketAddr::from(([127, 0, 0, 1], self.ports.edge));
                    if TcpStream::connect_timeout(&edge, Duration::from_millis(200)).is_ok() {
                        return Ok(());
                    }
                    last = "the edge port is not accepting yet".to_string();
                }
                Ok(response) => {
                    last = format!(
                        "{path}: status {} {}",
                        response.status,
                        String::from_utf8_lossy(&response.body).trim()
                    )
                }
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                let tail = self.log_tail();
                self.child.kill();
                return Err(StartFailure {
                    address_in_use: false,
                    message: format!(
                        "orca not ready after {READY_TIMEOUT:?} (last: {last})\n--- orca log tail ---\n{tail}"
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:EDGE`.
    pub fn edge_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.edge)
    }

    /// `http://127.0.0.1:OPS`.
    pub fn ops_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.ops)
    }

    /// `http://127.0.0.1:INTERNAL`.
    pub fn internal_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.internal)
    }

    /// `127.0.0.1:EDGE` (for raw requests).
    pub fn edge_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.edge)
    }

    /// `127.0.0.1:INTERNAL` (as peers see it).
    pub fn internal_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.internal)
    }

    /// `edge_url()/bucket/encoded-key`.
    pub fn object_url(&self, bucket: &str, key: &str) -> String {
        super::s3::object_url(&self.edge_url(), bucket, key)
    }

    /// The ports.
    pub fn ports(&self) -> OrcaPorts {
        self.ports
    }

    /// The cache store root directory (`cachestore.fs.root`).
    pub fn cache_root(&self) -> &Path {
        &self.cache_root
    }

    /// The process's temp directory (configs, pid file, log, default cache root).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &OrcaConfig {
        &self.config
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// `GET /metrics` on the ops port (blocking, bounded); panics on failure.
    pub fn metrics(&self) -> String {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.ports.ops));
        match blocking_get(addr, "/metrics", Duration::from_secs(10)) {
            Ok(response) if response.status == 200 && response.complete => {
                String::from_utf8_lossy(&response.body).into_owned()
            }
            Ok(response) => panic!(
                "GET /metrics: status {} (complete: {})\n{}",
                response.status,
                response.complete,
                String::from_utf8_lossy(&response.body)
            ),
            Err(e) => panic!(
                "GET /metrics: {e}\n--- orca log tail ---\n{}",
                self.log_tail()
            ),
        }
    }

    /// The sum of the samples matching `query` (e.g. `orca_chunk_reads_total{source="origin"}`;
    /// a bare name sums all its label sets). Panics when no sample matches (a renamed metric or
    /// label must fail, not read as 0). See [`metric_value`].
    pub fn metric_value(&self, query: &str) -> f64 {
        metric_value(&self.metrics(), query)
    }

    /// Like [`OrcaProcess::metric_value`], for async tests: the scrape does not block a tokio
    /// worker.
    pub async fn metric_value_async(&self, query: &str) -> f64 {
        metric_value(&self.metrics_async().await, query)
    }

    /// `GET /metrics` on the ops port without blocking the runtime; panics on failure.
    pub async fn metrics_async(&self) -> String {
        let url = format!("{}/metrics", self.ops_url());
        match super::httpc::http_get(&url, None).await {
            Ok(response) if response.status == 200 => response.text(),
            Ok(response) => panic!("GET /metrics: status {}", response.status),
            Err(e) => panic!(
                "GET /metrics: {e}\n--- orca log tail ---\n{}",
                self.log_tail()
            ),
        }
    }

    /// Polls the metrics (every 20 ms, at most `timeout`, without blocking the runtime) until
    /// `query` reaches at least `min`, and returns the value read. Panics at the deadline with
    /// the last value and the log tail: a wait whose result is dropped still asserts.
    pub async fn wait_metric_at_least(&self, query: &str, min: f64, timeout: Duration) -> f64 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let metrics = self.metrics_async().await;
            let last = metric_value_opt(&metrics, query);
            if let Some(value) = last.filter(|v| *v >= min) {
                return value;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{query} did not reach {min} within {timeout:?} (last: {last:?})\n--- orca log tail ---\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET path` on the ops port: (status, body).
    pub fn ops_get(&self, path: &str) -> (u16, String) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.ports.ops));
        match blocking_get(addr, path, Duration::from_secs(10)) {
            Ok(response) => (
                response.status,
                String::from_utf8_lossy(&response.body).into_owned(),
            ),
            Err(e) => panic!("GET {path} on ops: {e}"),
        }
    }

    /// The last 80 lines of the log.
    pub fn log_tail(&self) -> String {
        file_tail(&self.log_path, 80)
    }

    /// The whole log as text.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Sends SIGTERM by pid.
    pub fn sigterm(&self) {
        self.child.signal("TERM");
    }

    /// Sends `signal` (e.g. `"INT"`, `"QUIT"`) by pid.
    pub fn signal(&self, signal: &str) {
        self.child.signal(signal);
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.child.wait_timeout(timeout)
    }

    /// The exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait()
    }

    /// Kills it now (SIGKILL by pid).
    pub fn kill(&mut self) {
        self.child.kill();
    }
}

fn spawn(
    config: &OrcaConfig,
    config_path: &Path,
    pingora_path: &Path,
    log_path: &Path,
    dir: &Path,
) -> ChildGuard {
    let mut log: File = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .expect("open orca log");
    let _ = writeln!(log, "=== tests/common: starting orca ===");
    let log_err = log.try_clone().expect("clone log handle");
    let binary = config.binary.clone().unwrap_or_else(orca_bin);
    let mut command = if config.hosts.is_empty() {
        Command::new(&binary)
    } else {
        let hosts = dir.join("hosts");
        let mut text = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("127.0.0.1 {}\n", config.hosts.join(" ")));
        std::fs::write(&hosts, text).expect("write hosts file");
        let mut c = Command::new("unshare");
        c.arg("--mount")
            .arg("sh")
            .arg("-c")
            .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
            .arg(&hosts)
            .arg(&binary);
        c
    };
    command
        .arg("--config")
        .arg(config_path)
        .arg("-c")
        .arg(pingora_path)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err));
    for name in [
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_ENDPOINT_URL",
        "ORCA_CONFIG",
        "ORCA_SELF",
        "ORCA_PEER_SECRET",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        command.env_remove(name);
    }
    command
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", &config.region)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("ORCA_LOG_LEVEL", &config.log_level)
        .env("RUST_BACKTRACE", "1");
    for (name, value) in &config.env {
        command.env(name, value);
    }
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    ChildGuard::new("orca", child)
}

/// Label pairs of one sample or query.
type Labels = Vec<(String, String)>;

/// Parses one `name{label="value",...}` selector (value-less) or sample line prefix. Returns the
/// name, the labels, and the rest of the line after the selector.
fn parse_selector(text: &str) -> Option<(String, Labels, &str)> {
    let text = text.trim_start();
    let name_end = text
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(text.len());
    let name = text[..name_end].to_string();
    if name.is_empty() {
        return None;
    }
    let mut rest = &text[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let mut chars = after_brace.char_indices().peekable();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i + 1);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    // A quoted value follows.
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return None;
                    }
                    let mut value = String::new();
                    let mut closed = false;
                    while let Some((_, c)) = chars.next() {
                        match c {
                            '\\' => match chars.next().map(|(_, c)| c) {
                                Some('n') => value.push('\n'),
                                Some(other) => value.push(other),
                                None => return None,
                            },
                            '"' => {
                                closed = true;
                                break;
                            }
                            c => value.push(c),
                        }
                    }
                    if !closed {
                        return None;
                    }
                    labels.push((std::mem::take(&mut key).trim().to_string(), value));
                }
                c => key.push(c),
            }
        }
        rest = &after_brace[end?..];
    }
    Some((name, labels, rest))
}

/// Sums the samples of Prometheus text `metrics` that match `query`: same name, and every label of
/// the query present with the same value (extra labels on the sample are fine). A bare name sums
/// all its label sets. Panics when no sample matches (Orca lists every label set it has from
/// the first scrape, so an absent series is a renamed metric or label, or a typo in the test)
/// and on an unparsable query; [`metric_value_opt`] is for series that may not exist yet.
pub fn metric_value(metrics: &str, query: &str) -> f64 {
    metric_value_opt(metrics, query).unwrap_or_else(|| {
        let families: std::collections::BTreeSet<&str> = metrics
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .filter(|n| !n.is_empty())
            .collect();
        panic!("no sample matches {query}; the families are {families:?}")
    })
}

/// Like [`metric_value`] but `None` when no sample matches.
pub fn metric_value_opt(metrics: &str, query: &str) -> Option<f64> {
    let (want_name, want_labels, _) =
        parse_selector(query).unwrap_or_else(|| panic!("bad metric query {query:?}"));
    let mut sum = None;
    for line in metrics.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, labels, rest)) = parse_selector(line) else {
            continue;
        };
        if name != want_name {
            continue;
        }
        let matches = want_labels
            .iter()
            .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v));
        if !matches {
            continue;
        }
        let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        sum = Some(sum.unwrap_or(0.0) + value);
    }
    sum
}
