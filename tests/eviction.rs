//! The bounded `fs` store end to end: the `orca` binary in front of moto (through the counting
//! proxy), with `cachestore.fs.max_size` a couple of dozen chunks. The store's real size is
//! sampled while clients read four times the bound (on a tmpfs of its own, read atomically,
//! where the test can mount one; else with `du`); the hot set survives a scan; a restart keeps
//! the chunks and the policy's state; a tiny filesystem fills up; a chunk deleted by hand is
//! filled again. Counts come from the proxy and from Orca's metrics, never from time.

#![allow(clippy::unwrap_used)]

mod common;

use ::orca::chunk::ChunkId;
use common::orca::yaml_str;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MIB: usize = 1 << 20;
const BUCKET: &str = "bkt";
/// The bound of most tests: 24 chunks of 1 MiB.
const BOUND: u64 = 24 * MIB as u64;
/// Fills in flight (`limits.origin_concurrency`).
const CONCURRENCY: u32 = 4;
/// The documented overshoot (docs/operations.md, "Sizing the fs store"): chunks none (a commit
/// reserves its bytes before writing), plus at most one 4 KiB block per commit in progress (a
/// directory that grows as the chunk is linked into it, measured right after).
const OVERSHOOT: u64 = CONCURRENCY as u64 * 4096;
const COMMIT_WAIT: Duration = Duration::from_secs(60);

struct Stack {
    moto: Moto,
    proxy: FaultProxy,
    orca: OrcaProcess,
    /// The cache root's parent, removed after Orca stopped (fields drop in order).
    _dir: tempfile::TempDir,
}

/// Test defaults for the bounded store: 4 fills in flight, read-ahead 2, `max_size` as given.
fn bounded(c: OrcaConfig, root: &Path, max_size: &str) -> OrcaConfig {
    c.origin_concurrency(CONCURRENCY)
        .readahead(2)
        .cache_root(root)
        .extra_yaml(&format!(
            "cachestore:\n  driver: fs\n  fs:\n    root: {}\n    max_size: {max_size}\n",
            yaml_str(&root.to_string_lossy())
        ))
}

impl Stack {
    /// moto, the proxy, and Orca with a cache root `configure` is told about.
    async fn start(configure: impl FnOnce(OrcaConfig, &Path) -> OrcaConfig) -> Stack {
        let moto = Moto::start();
        create_bucket(&moto.endpoint(), BUCKET).await;
        let proxy = FaultProxy::start(&moto.endpoint());
        let dir = tempfile::Builder::new()
            .prefix("orca-evict-")
            .tempdir()
            .unwrap();
        let root = dir.path().join("cache");
        let orca = OrcaProcess::start(configure(OrcaConfig::new(&proxy.endpoint()), &root));
        Stack {
            moto,
            proxy,
            orca,
            _dir: dir,
        }
    }

    async fn put(&self, key: &str, data: &[u8]) -> String {
        let etag = put_object(&self.moto.endpoint(), BUCKET, key, data.to_vec()).await;
        etag.trim_matches('"').to_string()
    }

    async fn get_exact(&self, key: &str, data: &[u8]) {
        let r = http_get(&self.orca.object_url(BUCKET, key), None)
            .await
            .unwrap_or_else(|e| panic!("GET {key}: {e}\n{}", self.orca.log_tail()));
        assert_eq!(r.status, 200, "GET {key}\n{}", self.orca.log_tail());
        assert_eq!(sha256_hex(&r.body), sha256_hex(data), "GET {key}");
    }

    /// Origin chunk GETs of objects whose key contains `part`.
    fn origin_gets_of(&self, part: &str) -> usize {
        self.proxy
            .counts()
            .log
            .iter()
            .filter(|r| r.method == "GET" && r.range.is_some() && r.path().contains(part))
            .count()
    }

    fn metric(&self, q: &str) -> f64 {
        self.orca.metric_value(q)
    }

    /// Waits until `n` commits in all have landed (committed, lost or failed).
    async fn wait_commits(&self, n: f64) {
        let got = self
            .orca
            .wait_metric_at_least("orca_cachestore_commits_total", n, COMMIT_WAIT)
            .await;
        assert!(got >= n, "{got} of {n} commits\n{}", self.orca.log_tail());
    }
}

/// The directory's size as `du` counts it (blocks, hard links once), in bytes.
fn du(dir: &Path) -> u64 {
    // Files come and go while it walks (commits, evictions): its complaints are expected.
    let out = Command::new("du")
        .args(["-s", "-B1"])
        .arg(dir)
        .output()
        .expect("run du");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Bytes used on the filesystem holding `dir` (`statvfs`: one atomic reading, unlike a walk).
fn fs_used(dir: &Path) -> u64 {
    let s = rustix::fs::statvfs(dir).unwrap();
    (s.f_blocks - s.f_bfree) * s.f_frsize
}

/// How the store's size is read while it changes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Gauge {
    /// The store has a tmpfs of its own: its used blocks are the store's `du`, read atomically.
    OwnFs,
    /// `du` of the directory: a walk, which can count a chunk evicted behind it and one
    /// committed ahead of it, so it may read up to about one chunk more than ever was there.
    Du,
}

impl Gauge {
    fn read(self, dir: &Path) -> u64 {
        match self {
            Gauge::OwnFs => fs_used(dir),
            Gauge::Du => du(dir),
        }
    }

    /// What the sampling itself may add on top of the documented overshoot.
    fn slack(self) -> u64 {
        match self {
            Gauge::OwnFs => 0,
            Gauge::Du => MIB as u64,
        }
    }
}

/// Samples the store's size on a thread until stopped (bounded to 100,000 samples).
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u64, usize)>>,
}

impl Sampler {
    fn start(dir: PathBuf, gauge: Gauge) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut max, mut samples) = (0, 0);
            while !flag.load(Ordering::Relaxed) && samples < 100_000 {
                max = max.max(gauge.read(&dir));
                samples += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            (max, samples)
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    /// The largest size seen and the number of samples.
    fn finish(mut self) -> (u64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A tmpfs of 64 MiB for the store alone where the test can mount one, so its size can be
/// read atomically; else `du` (the reason is printed).
fn own_fs() -> (Option<TinyFs>, Gauge) {
    match TinyFs::mount("64m") {
        Some(fs) => (Some(fs), Gauge::OwnFs),
        None => {
            eprintln!("sampling with du instead (up to one chunk of walk error allowed)");
            (None, Gauge::Du)
        }
    }
}

/// Chunk files under `root/v1`, by name.
fn chunk_files(root: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![root.join("v1")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((entry.file_name().to_string_lossy().to_string(), path));
            }
        }
    }
    out
}

fn chunk_name(key: &str, etag: &str, index: u64) -> String {
    ChunkId::from_fields("test-origin", BUCKET, key, etag, MIB as u64, index).name()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reading_four_times_the_bound_keeps_the_directory_within_it() {
    let (own, gauge) = own_fs();
    let own_root = own.as_ref().map(|fs| fs.dir.join("cache"));
    let s = Stack::start(|c, root| bounded(c, own_root.as_deref().unwrap_or(root), "24MiB")).await;
    // 25 objects of 4 chunks: 100 chunks, four times the bound.
    let mut objects = Vec::new();
    for i in 0..25u64 {
        let key = format!("data/{i}");
        let data = deterministic_bytes(100 + i, 4 * MIB);
        s.put(&key, &data).await;
        objects.push((key, data));
    }
    let root = s.orca.cache_root().to_path_buf();
    let sampler = Sampler::start(root.clone(), gauge);
    let objects = Arc::new(objects);
    let stack = Arc::new(s);
    // Four clients, each reading its share of the objects.
    let mut readers = Vec::new();
    for r in 0..4 {
        let (objects, stack) = (objects.clone(), stack.clone());
        readers.push(tokio::spawn(async move {
            for (key, data) in objects.iter().skip(r).step_by(4) {
                stack.get_exact(key, data).await;
            }
        }));
    }
    for r in readers {
        r.await.unwrap();
    }
    let s = stack;
    s.wait_commits(100.0).await;
    let (max_seen, samples) = sampler.finish();
    let log = s.orca.log_tail();
    eprintln!("largest size seen: {max_seen} bytes in {samples} samples (bound {BOUND})");
    assert!(samples >= 10, "only {samples} samples");
    assert!(
        max_seen <= BOUND + OVERSHOOT + gauge.slack(),
        "the store held {max_seen} bytes, over the bound {BOUND} + {OVERSHOOT}\n{log}"
    );
    assert_eq!(
        s.proxy.counts().gets_with_range,
        100,
        "each chunk fetched once"
    );
    assert_eq!(
        s.metric("orca_cachestore_commits_total{result=\"committed\"}"),
        100.0,
        "{log}"
    );
    // 100 MiB committed, at most 24 MiB kept: the rest was evicted, and counted.
    let evicted = s.metric("orca_cachestore_evicted_bytes_total{tier=\"store\"}");
    assert!(
        evicted >= (100 * MIB) as f64 - BOUND as f64,
        "evicted {evicted} bytes\n{log}"
    );
    let evictions = s.metric("orca_cachestore_evictions_total{tier=\"store\"}");
    assert!(evictions >= 76.0, "{evictions} evictions");
    let now = du(&root);
    let gauge = s.metric("orca_cachestore_bytes{tier=\"store\"}");
    assert!(
        (gauge - now as f64).abs() <= MIB as f64,
        "orca_cachestore_bytes {gauge} vs du {now}"
    );
    assert_eq!(
        s.metric("orca_cachestore_capacity_bytes{tier=\"store\"}"),
        BOUND as f64
    );
    let files = chunk_files(&root).len() as f64;
    assert_eq!(s.metric("orca_cachestore_chunks{tier=\"store\"}"), files);
    // Whatever is left reads back exact.
    for (key, data) in objects.iter() {
        s.get_exact(key, data).await;
    }
    drop(s);
    drop(own);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hot_set_survives_a_scan_of_several_times_the_bound() {
    let s = Stack::start(|c, root| bounded(c, root, "24MiB")).await;
    let hot = deterministic_bytes(7, 4 * MIB);
    s.put("hot/object", &hot).await;
    s.get_exact("hot/object", &hot).await;
    s.wait_commits(4.0).await;
    for _ in 0..4 {
        s.get_exact("hot/object", &hot).await;
    }
    assert_eq!(s.origin_gets_of("hot/"), 4);
    // A scan of 40 cold objects of 2 chunks: 80 MiB, more than three times the bound.
    for i in 0..40u64 {
        let key = format!("cold/{i}");
        let data = deterministic_bytes(1000 + i, 2 * MIB);
        s.put(&key, &data).await;
        s.get_exact(&key, &data).await;
    }
    s.wait_commits(84.0).await;
    assert!(
        s.metric("orca_cachestore_evictions_total{tier=\"store\"}") >= 50.0,
        "{}",
        s.orca.log_tail()
    );
    s.get_exact("hot/object", &hot).await;
    assert_eq!(
        s.origin_gets_of("hot/"),
        4,
        "the scan evicted the hot object\n{}",
        s.orca.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_chunks_and_the_bound() {
    let (own, gauge) = own_fs();
    let own_root = own.as_ref().map(|fs| fs.dir.join("cache"));
    let s = Stack::start(|c, root| bounded(c, own_root.as_deref().unwrap_or(root), "24MiB")).await;
    let mut first = Vec::new();
    for i in 0..20u64 {
        let key = format!("before/{i}");
        let data = deterministic_bytes(200 + i, MIB);
        let etag = s.put(&key, &data).await;
        s.get_exact(&key, &data).await;
        first.push((key, data, etag));
    }
    s.wait_commits(20.0).await;
    let Stack {
        moto,
        proxy,
        orca,
        _dir,
    } = s;
    let orca = orca.restart();
    let s = Stack {
        moto,
        proxy,
        orca,
        _dir,
    };
    // The index is rebuilt in the background (readiness did not wait for it): it finds every
    // chunk, including those nobody reads again.
    let known = s
        .orca
        .wait_metric_at_least("orca_cachestore_chunks{tier=\"store\"}", 20.0, COMMIT_WAIT)
        .await;
    assert_eq!(known, 20.0, "{}", s.orca.log_tail());
    // The first process saved what its policy had learned; the second read it back (the scan
    // logs it when its walk is done).
    assert!(
        s.orca
            .log()
            .contains("fs cache eviction state saved entries=20"),
        "{}",
        s.orca.log_tail()
    );
    let rebuilt = poll_until(COMMIT_WAIT, || {
        s.orca
            .log()
            .contains("fs cache index rebuilt")
            .then_some(())
    });
    assert!(rebuilt.is_some(), "{}", s.orca.log_tail());
    assert!(s.orca.log().contains("saved=20"), "{}", s.orca.log_tail());
    let gets = s.proxy.counts().gets_with_range;
    for (key, data, _) in first.iter().take(10) {
        s.get_exact(key, data).await;
    }
    assert_eq!(
        s.proxy.counts().gets_with_range,
        gets,
        "chunks stored before the restart went to the origin\n{}",
        s.orca.log_tail()
    );
    // Reading as much again keeps the bound, evicting chunks written before the restart.
    let root = s.orca.cache_root().to_path_buf();
    let sampler = Sampler::start(root.clone(), gauge);
    for i in 0..30u64 {
        let key = format!("after/{i}");
        let data = deterministic_bytes(300 + i, MIB);
        s.put(&key, &data).await;
        s.get_exact(&key, &data).await;
    }
    s.wait_commits(30.0).await;
    let (max_seen, _) = sampler.finish();
    assert!(
        max_seen <= BOUND + OVERSHOOT + gauge.slack(),
        "the store held {max_seen} bytes"
    );
    let names: Vec<String> = chunk_files(&root).into_iter().map(|(n, _)| n).collect();
    let survivors = first
        .iter()
        .filter(|(key, _, etag)| names.contains(&chunk_name(key, etag, 0)))
        .count();
    assert!(
        survivors < first.len(),
        "no chunk written before the restart was evicted"
    );
    assert!(s.metric("orca_cachestore_evictions_total{tier=\"store\"}") > 0.0);
    drop(s);
    drop(own);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_deleted_by_hand_is_a_miss_filled_once() {
    let s = Stack::start(|c, root| bounded(c, root, "24MiB")).await;
    let data = deterministic_bytes(9, 2 * MIB);
    let etag = s.put("gone/object", &data).await;
    s.get_exact("gone/object", &data).await;
    s.wait_commits(2.0).await;
    // Read warm once so the store keeps its descriptor open: deleting must still be a miss.
    s.get_exact("gone/object", &data).await;
    assert_eq!(s.origin_gets_of("gone/"), 2);
    let name = chunk_name("gone/object", &etag, 1);
    let (_, path) = chunk_files(s.orca.cache_root())
        .into_iter()
        .find(|(n, _)| *n == name)
        .expect("chunk 1 is stored");
    std::fs::remove_file(&path).unwrap();
    s.get_exact("gone/object", &data).await;
    assert_eq!(s.origin_gets_of("gone/"), 3, "{}", s.orca.log_tail());
    s.wait_commits(3.0).await;
    assert!(path.exists(), "the chunk was stored again");
    s.get_exact("gone/object", &data).await;
    assert_eq!(s.origin_gets_of("gone/"), 3, "refilled once, then a hit");
    assert_eq!(s.metric("orca_edge_requests_total{status=\"200\"}"), 4.0);
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop; `None` (with the reason
/// printed) where this test cannot mount one (not root, no `CAP_SYS_ADMIN`, no `mount`).
struct TinyFs {
    dir: PathBuf,
}

impl TinyFs {
    fn mount(size: &str) -> Option<TinyFs> {
        let dir = tempfile::Builder::new()
            .prefix("orca-tinyfs-")
            .tempdir()
            .unwrap()
            .keep();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(TinyFs { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs here ({}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                let _ = std::fs::remove_dir(&dir);
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                let _ = std::fs::remove_dir(&dir);
                None
            }
        }
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Fills the filesystem of `path` with a ballast file until it is full (bounded: 4,096 writes).
fn fill_up(path: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0x5au8; 64 * 1024];
    let mut written = 0;
    for _ in 0..4096 {
        match f.write(&block) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    let _ = f.sync_all();
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_filesystem_fills_up_and_eviction_brings_commits_back() {
    let Some(tiny) = TinyFs::mount("12m") else {
        return;
    };
    let root = tiny.dir.join("cache");
    // Defaults: max_size 90% of the 12 MiB filesystem, min_free 5%.
    let s = Stack::start(|c, _| {
        c.origin_concurrency(CONCURRENCY)
            .readahead(2)
            .cache_root(root.clone())
    })
    .await;
    let mut objects = Vec::new();
    for i in 0..6u64 {
        let key = format!("tiny/{i}");
        let data = deterministic_bytes(500 + i, MIB);
        let etag = s.put(&key, &data).await;
        s.get_exact(&key, &data).await;
        objects.push((key, data, etag));
    }
    s.wait_commits(6.0).await;
    let committed_before = s.metric("orca_cachestore_commits_total{result=\"committed\"}");
    assert_eq!(committed_before, 6.0, "{}", s.orca.log_tail());
    // Something else fills the disk.
    let ballast = fill_up(&tiny.dir.join("ballast"));
    assert!(ballast > 0);
    for i in 6..16u64 {
        let key = format!("tiny/{i}");
        let data = deterministic_bytes(500 + i, MIB);
        let etag = s.put(&key, &data).await;
        // Reads keep succeeding, from the origin, whatever the store does.
        s.get_exact(&key, &data).await;
        objects.push((key, data, etag));
    }
    s.wait_commits(16.0).await;
    let log = s.orca.log_tail();
    let errors = s.metric("orca_cachestore_commits_total{result=\"error\"}");
    let committed = s.metric("orca_cachestore_commits_total{result=\"committed\"}");
    eprintln!("after the disk filled: {committed} committed, {errors} failed (ENOSPC)");
    assert!(
        s.metric("orca_cachestore_evictions_total{tier=\"store\"}") >= 1.0,
        "nothing was evicted to make room\n{log}"
    );
    assert!(
        committed > committed_before,
        "no commit landed after the disk filled up\n{log}"
    );
    // Nothing partial is visible: every chunk file is a whole, exact chunk, and no temp file is
    // left behind.
    for (name, path) in chunk_files(&root) {
        let got = std::fs::read(&path).unwrap();
        let known = objects.iter().any(|(key, data, etag)| {
            name == chunk_name(key, etag, 0) && sha256_hex(&got) == sha256_hex(data)
        });
        assert!(
            known,
            "chunk file {name} is not a whole chunk of any object"
        );
    }
    // (The running process's own temp directory holds nothing but its lock.)
    for dir in std::fs::read_dir(root.join("tmp")).unwrap().flatten() {
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|f| f.file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(names, vec![".lock".to_string()], "{}", dir.path().display());
    }
    // And every object still reads back exact.
    for (key, data, _) in &objects {
        s.get_exact(key, data).await;
    }
    drop(s);
    drop(tiny);
}
