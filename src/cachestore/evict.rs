//! The size bound of the `fs` store: an in-memory index of the chunk files, the accounting of
//! the space they use, and the evictor that keeps it within `cachestore.fs.*`.
//!
//! [`Space`] knows every chunk file (its name as a 40-byte key, the blocks it uses, its policy
//! state in `policy::S3Fifo`) and the directories holding them, so it knows what `du` would say
//! without asking the disk. A commit reserves its bytes *before* writing (`Space::reserve`):
//! when they would take the store over its bound it wakes the evictor at once and waits (it runs
//! in the background, after its client was served) until the evictor has made room. So the
//! store never holds more than its bound: the overshoot that fills in flight could add is zero,
//! because their bytes are counted before they reach the disk. Reads touch the index (a lock and
//! a hash lookup) and never wait for it.
//!
//! The [`Evictor`] runs as a Pingora background service, on its own thread: it rebuilds the
//! index after a restart by scanning the directory (readiness does not wait for it; until it is
//! done the bound applies to what is known, and `statvfs` keeps `min_free`), and then evicts when
//! the store crosses its bound or the filesystem's free space drops below `min_free`, down to
//! the low watermark. It looks at `statvfs` on every wake-up and at least every [`TICK`].

use super::policy::{Key, S3Fifo};
use super::StoreError;
use crate::config::{FsLimits, SizeOrPercent};
use crate::metrics::{
    CACHESTORE_BYTES, CACHESTORE_CAPACITY, CACHESTORE_CHUNKS, CACHESTORE_EVICTED_BYTES,
    CACHESTORE_EVICTIONS, TIER_LOCAL,
};
use async_trait::async_trait;
use lru::LruCache;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How often the evictor looks at the filesystem's free space when nothing wakes it.
pub const TICK: Duration = Duration::from_secs(1);

/// A chunk committed this recently is not evicted while the store is within its bound (it is
/// likely to be read again at once: the rest of its object, other clients joining). Above the
/// bound the bound wins.
pub const RECENT: Duration = Duration::from_secs(3);

/// How long a commit waits for the evictor to make room before it gives up (counted as an
/// error; the chunk stays a miss). Eviction is a few `unlink`s, so this is only reached when
/// the evictor cannot run.
pub const ROOM_WAIT: Duration = Duration::from_secs(5);

/// Victims picked per round; the index's lock is not held while they are unlinked.
const BATCH: usize = 64;

/// Filesystem blocks are counted in these (what a small file costs at least, on most
/// filesystems), until the real count is known from `stat`.
const BLOCK: u64 = 4096;

/// Where the policy's state is saved at a graceful stop (`ROOT/policy-v1`), to be read back at
/// the next start: 42 bytes per chunk (key, queue, reads) after [`SAVED_MAGIC`].
const SAVED: &str = "policy-v1";
const SAVED_MAGIC: &[u8] = b"orca fs policy v1\n";
const SAVED_RECORD: usize = 42;

/// The open chunk files the `fs` store keeps, by chunk key (shared so the evictor can close
/// evicted ones).
pub(crate) type OpenFiles = Arc<Mutex<LruCache<Key, Arc<File>>>>;

/// Bytes a file or directory uses on disk, as `du` counts them.
pub(super) fn on_disk(m: &fs::Metadata) -> u64 {
    m.blocks() * 512
}

/// A chunk's key as its file name, `<64 hex>-<index>`.
pub(crate) fn key_name(key: &Key) -> String {
    let mut index = [0u8; 8];
    index.copy_from_slice(&key[32..]);
    format!("{}-{}", hex::encode(&key[..32]), u64::from_be_bytes(index))
}

/// Size and free space of the filesystem holding `path`, in bytes.
fn statvfs(path: &Path) -> std::io::Result<(u64, u64)> {
    let s = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
    Ok((
        s.f_blocks.saturating_mul(s.f_frsize),
        s.f_bavail.saturating_mul(s.f_frsize),
    ))
}

#[derive(Default)]
struct State {
    policy: S3Fifo,
    /// Leaf (`ab/cd`) and top (`ab`) directories known, and what they and the store's own
    /// directories use.
    leaves: HashMap<[u8; 2], u64>,
    tops: HashSet<u8>,
    dir_bytes: u64,
    /// Commits in progress: reserved before their first byte is written.
    reserved: u64,
    /// Victims picked and being unlinked: still on disk.
    unlinking: u64,
    /// Commits waiting for room (their bytes).
    waiting: u64,
    evicting: HashSet<Key>,
    /// The bound now: `max_size`, or less when `min_free` demands.
    capacity: u64,
    /// Where eviction stops.
    low_mark: u64,
    /// A commit hit `ENOSPC` since the last pass.
    enospc: bool,
    /// The `tier` label of this store's `orca_cachestore_*` metrics (`store`, or `local` for
    /// the local tier in front of a shared store).
    tier: &'static str,
}

impl State {
    fn stored(&self) -> u64 {
        self.policy.bytes() + self.dir_bytes
    }

    fn used(&self) -> u64 {
        self.stored() + self.reserved + self.unlinking
    }
}

/// The index and accounting of one bounded `fs` store.
pub struct Space {
    root: PathBuf,
    chunks_dir: PathBuf,
    max_size: u64,
    min_free: SizeOrPercent,
    low_watermark: SizeOrPercent,
    state: Mutex<State>,
    /// Wakes the evictor (a commit crossed the bound, `ENOSPC`, a scan batch).
    wake: Notify,
    /// Wakes commits waiting for room after each round of eviction.
    room: Notify,
    open_files: OpenFiles,
}

/// Bytes reserved by a commit in progress; given back when dropped unless the commit landed.
pub(crate) struct Reservation {
    space: Arc<Space>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut st = self.space.state.lock();
        st.reserved -= self.bytes;
    }
}

/// A commit waiting for room: its bytes count in `State::waiting` (the evictor makes room for
/// them) until it stops waiting, however it stops (a cancelled commit included).
struct Waiting<'a> {
    space: &'a Space,
    bytes: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.space.state.lock().waiting -= self.bytes;
    }
}

impl Space {
    /// Resolves the bound against the filesystem holding `root` (whose `v1` and `tmp`
    /// directories, and this process's temp directory, exist) and starts with an empty index;
    /// the [`Evictor`] fills it.
    pub(crate) fn open(
        root: &Path,
        chunks_dir: &Path,
        limits: &FsLimits,
        open_files: OpenFiles,
        tier: &'static str,
    ) -> Result<Arc<Self>, StoreError> {
        let (fs_size, _) =
            statvfs(root).map_err(|e| StoreError::io(format!("statvfs {}", root.display()), e))?;
        let max_size = limits.max_size.unwrap_or(fs_size / 10 * 9);
        if let SizeOrPercent::Size(low) = limits.low_watermark {
            if low >= max_size {
                let section = if tier == TIER_LOCAL {
                    "cachestore.local"
                } else {
                    "cachestore.fs"
                };
                return Err(StoreError::Check(format!(
                    "{section}.low_watermark: {low} bytes must be below the bound \
                     ({max_size} bytes: 90% of the filesystem of {}, as {section}.max_size \
                     is unset)",
                    root.display()
                )));
            }
        }
        let mut dir_bytes = 0;
        for dir in [
            root.to_path_buf(),
            chunks_dir.to_path_buf(),
            root.join("tmp"),
        ] {
            dir_bytes += fs::metadata(&dir).map(|m| on_disk(&m)).unwrap_or(0);
        }
        // The processes' temp directories (`tmp/<instance>/`, this one's included) and their
        // lock files, as `du` counts them.
        for entry in fs::read_dir(root.join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.path().is_dir() {
                for f in [entry.path(), entry.path().join(".lock")] {
                    dir_bytes += fs::metadata(&f).map(|m| on_disk(&m)).unwrap_or(0);
                }
            }
        }
        let space = Arc::new(Space {
            root: root.to_path_buf(),
            chunks_dir: chunks_dir.to_path_buf(),
            max_size,
            min_free: limits.min_free,
            low_watermark: limits.low_watermark,
            state: Mutex::new(State {
                dir_bytes,
                tier,
                ..State::default()
            }),
            wake: Notify::new(),
            room: Notify::new(),
            open_files,
        });
        space.refresh();
        tracing::info!(
            root = %root.display(),
            tier,
            max_size,
            capacity = space.state.lock().capacity,
            "fs cache store bounded"
        );
        Ok(space)
    }

    /// The bound from `max_size`, and from the filesystem's free space less `min_free`.
    fn refresh(&self) {
        let stat = statvfs(&self.root);
        let mut st = self.state.lock();
        let mut capacity = self.max_size;
        match stat {
            Ok((total, avail)) => {
                let fits = (st.stored() + avail).saturating_sub(self.min_free.of(total));
                capacity = capacity.min(fits);
            }
            Err(e) => tracing::warn!(error = %e, "statvfs of the cache root failed"),
        }
        if st.enospc {
            // The disk is full at what the store holds now, whatever statvfs said.
            capacity = capacity.min(st.stored());
        }
        st.capacity = capacity;
        st.low_mark = match self.low_watermark {
            pct @ SizeOrPercent::Percent(_) => pct.of(capacity),
            SizeOrPercent::Size(low) => capacity.saturating_sub(self.max_size - low),
        };
        publish(&st);
    }

    /// Reserves `bytes` for a commit of `key` before anything is written. When they would take
    /// the store over its bound, wakes the evictor and waits for room, up to [`ROOM_WAIT`].
    pub(crate) async fn reserve(
        self: &Arc<Self>,
        key: &Key,
        len: u64,
    ) -> Result<Reservation, StoreError> {
        let bytes = {
            let st = self.state.lock();
            let dirs = if st.leaves.contains_key(&[key[0], key[1]]) {
                0
            } else {
                2 * BLOCK
            };
            len.div_ceil(BLOCK) * BLOCK + dirs
        };
        let deadline = tokio::time::Instant::now() + ROOM_WAIT;
        let mut waiting: Option<Waiting<'_>> = None;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            // No longer waiting while it looks (the guard takes the lock to say so).
            drop(waiting.take());
            {
                let mut st = self.state.lock();
                if st.used() + bytes <= st.capacity {
                    st.reserved += bytes;
                    return Ok(Reservation {
                        space: self.clone(),
                        bytes,
                    });
                }
                // Even an empty store could not take it: do not wait for nothing.
                if bytes + st.dir_bytes > st.capacity {
                    return Err(StoreError::Full {
                        name: key_name(key),
                    });
                }
                st.waiting += bytes;
            }
            waiting = Some(Waiting { space: self, bytes });
            self.wake.notify_one();
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(StoreError::Full {
                    name: key_name(key),
                });
            }
        }
    }

    /// A commit landed: the chunk is indexed with what its file really uses (`file_bytes`), and
    /// the directories it created are counted.
    pub(crate) fn committed(&self, key: Key, file_bytes: u64, mut reservation: Reservation) {
        self.note_dirs(key[0], key[1], true);
        let mut st = self.state.lock();
        st.policy.insert(key, file_bytes, Instant::now());
        // Released under the same lock, so `used` never counts the chunk twice or not at all.
        st.reserved -= std::mem::take(&mut reservation.bytes);
        publish(&st);
    }

    /// A commit failed for lack of space: the disk is full at what the store holds now.
    pub(crate) fn out_of_space(&self) {
        self.state.lock().enospc = true;
        self.wake.notify_one();
    }

    /// Counts the directories `ab/cd`: the top one once, the leaf one again each time (`grown`
    /// is set after a commit linked a file into it: a directory grows as entries are added).
    fn note_dirs(&self, ab: u8, cd: u8, grown: bool) {
        let (top, leaf) = {
            let st = self.state.lock();
            (!st.tops.contains(&ab), !st.leaves.contains_key(&[ab, cd]))
        };
        if !top && !leaf && !grown {
            return;
        }
        let hex = hex::encode([ab, cd]);
        let top_dir = self.chunks_dir.join(&hex[0..2]);
        let leaf_dir = top_dir.join(&hex[2..4]);
        let size = |p: &Path| fs::metadata(p).map(|m| on_disk(&m)).unwrap_or(0);
        let top_bytes = if top { size(&top_dir) } else { 0 };
        let leaf_bytes = size(&leaf_dir);
        let mut st = self.state.lock();
        if st.tops.insert(ab) {
            st.dir_bytes += top_bytes;
        }
        let old = st.leaves.insert([ab, cd], leaf_bytes).unwrap_or(0);
        st.dir_bytes = st.dir_bytes.saturating_sub(old) + leaf_bytes;
    }

    /// A read of a chunk file that uses `file_bytes`: counts for the policy. A file the index
    /// does not know (not scanned yet, or put there by hand) is indexed now.
    pub(crate) fn touch(&self, key: &Key, file_bytes: u64) {
        let mut st = self.state.lock();
        if st.policy.touch(key) || st.evicting.contains(key) {
            return;
        }
        st.policy.restore(*key, file_bytes);
        st.policy.touch(key);
        let over = st.used() > st.capacity;
        publish(&st);
        drop(st);
        if over {
            self.wake.notify_one();
        }
    }

    /// The chunk's file is gone or was quarantined.
    pub(crate) fn forget(&self, key: &Key) {
        let mut st = self.state.lock();
        if st.policy.remove(key).is_some() {
            publish(&st);
        }
    }

    /// Adds chunks found on disk (the start-up scan), unless already known.
    fn restore(&self, found: Vec<(Key, u64)>) {
        let mut st = self.state.lock();
        for (key, bytes) in found {
            if !st.evicting.contains(&key) {
                st.policy.restore(key, bytes);
            }
        }
        publish(&st);
    }

    /// Writes the policy's state to `ROOT/policy-v1` (a temp file, fsynced, renamed).
    fn save(&self) -> std::io::Result<usize> {
        let snapshot = self.state.lock().policy.snapshot();
        let mut buf = Vec::with_capacity(SAVED_MAGIC.len() + snapshot.len() * SAVED_RECORD);
        buf.extend_from_slice(SAVED_MAGIC);
        for (key, main, freq) in &snapshot {
            buf.extend_from_slice(key);
            buf.push(u8::from(*main));
            buf.push(*freq);
        }
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}.policy.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            fs::write(&tmp, &buf)?;
            File::open(&tmp)?.sync_all()?;
            fs::rename(&tmp, self.root.join(SAVED))
        };
        let result = write();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| snapshot.len())
    }

    /// Reads back a state saved by [`Space::save`] (and deletes it: it describes the store at
    /// one moment only). Each chunk still on disk enters its queue with its reads, in order.
    fn load_saved(&self) -> usize {
        let path = self.root.join(SAVED);
        let Ok(buf) = fs::read(&path) else {
            return 0;
        };
        let _ = fs::remove_file(&path);
        let Some(body) = buf.strip_prefix(SAVED_MAGIC) else {
            tracing::warn!(file = %path.display(), "unknown saved eviction state; ignored");
            return 0;
        };
        let mut loaded = 0;
        let mut batch = Vec::new();
        let flush = |batch: &mut Vec<(Key, u64, bool, u8)>| {
            let mut st = self.state.lock();
            for (key, bytes, main, freq) in batch.drain(..) {
                if !st.evicting.contains(&key) {
                    st.policy.restore_saved(key, bytes, main, freq);
                }
            }
            publish(&st);
        };
        for record in body.chunks_exact(SAVED_RECORD) {
            let Ok(key) = <Key>::try_from(&record[..40]) else {
                continue;
            };
            let name = key_name(&key);
            let file = self
                .chunks_dir
                .join(&name[0..2])
                .join(&name[2..4])
                .join(&name);
            let Ok(m) = fs::metadata(&file) else {
                continue;
            };
            self.note_dirs(key[0], key[1], false);
            batch.push((key, on_disk(&m), record[40] == 1, record[41]));
            loaded += 1;
            if batch.len() >= 1024 {
                flush(&mut batch);
            }
        }
        flush(&mut batch);
        loaded
    }

    /// Reads back the saved policy state, if any, then walks `ROOT/v1/ab/cd/` and indexes every
    /// other chunk file and every directory.
    fn scan(&self) {
        let started = Instant::now();
        let saved = self.load_saved();
        let list = |dir: &Path| -> Vec<fs::DirEntry> {
            match fs::read_dir(dir) {
                Ok(entries) => entries.flatten().collect(),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot list a cache directory");
                    Vec::new()
                }
            }
        };
        let mut files = 0u64;
        for top in list(&self.chunks_dir) {
            let Some(t) = dir_byte(&top) else { continue };
            for leaf in list(&top.path()) {
                let Some(l) = dir_byte(&leaf) else { continue };
                let mut found = Vec::new();
                for f in list(&leaf.path()) {
                    let name = f.file_name();
                    let Some(id) = name
                        .to_str()
                        .and_then(|n| crate::chunk::ChunkId::parse_name(n, 0))
                    else {
                        continue;
                    };
                    if let Ok(m) = f.metadata() {
                        found.push((id.placement_digest(), on_disk(&m)));
                    }
                }
                files += found.len() as u64;
                self.note_dirs(t, l, false);
                self.restore(found);
                let over = {
                    let st = self.state.lock();
                    st.used() > st.capacity
                };
                if over {
                    self.wake.notify_one();
                }
            }
        }
        let st = self.state.lock();
        tracing::info!(
            files,
            saved,
            bytes = st.stored(),
            ms = started.elapsed().as_millis() as u64,
            "fs cache index rebuilt"
        );
    }

    /// One round of the evictor: looks at the filesystem, then evicts if the store is over its
    /// bound (or a commit hit `ENOSPC`) until it is at the low watermark and every waiting
    /// commit fits.
    pub(crate) async fn pass(self: &Arc<Self>) {
        self.refresh();
        let mut started = false;
        loop {
            let batch = {
                let mut st = self.state.lock();
                // Only this loop unlinks, and it waits for each batch: nothing is being
                // unlinked now, so what stays is `used` less what this batch picks.
                let mut remaining = st.used();
                if !started && remaining + st.waiting <= st.capacity && !st.enospc {
                    break;
                }
                started = true;
                let now = Instant::now();
                let mut batch = Vec::new();
                while remaining + st.waiting > st.low_mark && batch.len() < BATCH {
                    // Over the bound (or out of disk), a recent chunk may go; between the
                    // bound and the low watermark it may not.
                    let hard = remaining + st.waiting > st.capacity || st.enospc;
                    let protect = (!hard).then_some(RECENT);
                    let capacity = st.capacity;
                    let Some((key, bytes)) = st.policy.evict(capacity, now, protect) else {
                        break;
                    };
                    st.unlinking += bytes;
                    st.evicting.insert(key);
                    remaining = remaining.saturating_sub(bytes);
                    batch.push((key, bytes));
                }
                batch
            };
            if batch.is_empty() {
                break;
            }
            let dir = self.chunks_dir.clone();
            let picked: Vec<(Key, u64)> = batch.clone();
            let removed = tokio::task::spawn_blocking(move || {
                batch
                    .into_iter()
                    .map(|(key, bytes)| {
                        let name = key_name(&key);
                        let path = dir.join(&name[0..2]).join(&name[2..4]).join(&name);
                        let result = fs::remove_file(&path);
                        (key, name, bytes, result)
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_else(|e| {
                // The deleting task died (a panic, or the runtime stopping): what it did is
                // unknown, so nothing is counted as evicted, and nothing stays counted twice.
                tracing::error!(error = %e, "the eviction task failed");
                picked
                    .into_iter()
                    .map(|(key, bytes)| {
                        let name = key_name(&key);
                        let result = Err(std::io::Error::from(ErrorKind::NotFound));
                        (key, name, bytes, result)
                    })
                    .collect()
            });
            let mut evicted = Vec::with_capacity(removed.len());
            {
                let mut st = self.state.lock();
                for (key, name, bytes, result) in removed {
                    st.unlinking -= bytes;
                    st.evicting.remove(&key);
                    match result {
                        Ok(()) => {
                            CACHESTORE_EVICTIONS.with_label_values(&[st.tier]).inc();
                            CACHESTORE_EVICTED_BYTES
                                .with_label_values(&[st.tier])
                                .inc_by(bytes);
                            tracing::trace!(chunk = %name, bytes, "evicted");
                        }
                        Err(e) if e.kind() == ErrorKind::NotFound => {}
                        Err(e) => {
                            tracing::error!(chunk = %name, error = %e, "cannot delete an evicted chunk file");
                        }
                    }
                    evicted.push(key);
                }
                publish(&st);
            }
            // Close kept descriptors of evicted files, so their space is freed now.
            let mut open = self.open_files.lock();
            for key in &evicted {
                open.pop(key);
            }
            drop(open);
            self.room.notify_waiters();
        }
        let mut st = self.state.lock();
        if st.enospc {
            st.enospc = false;
            drop(st);
            self.refresh();
        }
        self.room.notify_waiters();
    }

    /// Bytes used (chunks, directories, commits in progress), the current bound, and chunks.
    #[cfg(test)]
    pub(crate) fn usage(&self) -> (u64, u64, usize) {
        let st = self.state.lock();
        (st.used(), st.capacity, st.policy.len())
    }
}

/// The byte a two-hex-digit directory name stands for.
fn dir_byte(entry: &fs::DirEntry) -> Option<u8> {
    let name = entry.file_name();
    let name = name.to_str()?;
    if name.len() != 2 || !entry.file_type().ok()?.is_dir() {
        return None;
    }
    u8::from_str_radix(name, 16).ok()
}

fn publish(st: &State) {
    let bytes = i64::try_from(st.stored()).unwrap_or(i64::MAX);
    CACHESTORE_BYTES.with_label_values(&[st.tier]).set(bytes);
    CACHESTORE_CHUNKS
        .with_label_values(&[st.tier])
        .set(i64::try_from(st.policy.len()).unwrap_or(i64::MAX));
    CACHESTORE_CAPACITY
        .with_label_values(&[st.tier])
        .set(i64::try_from(st.capacity).unwrap_or(i64::MAX));
}

/// The background service that rebuilds the index at start and keeps the store within its
/// bound. Built by [`super::fs::FsStore::evictor`]; added to the server by `app`.
pub struct Evictor {
    space: Arc<Space>,
}

impl Evictor {
    pub(crate) fn new(space: Arc<Space>) -> Self {
        Self { space }
    }
}

#[async_trait]
impl BackgroundService for Evictor {
    /// Scans the directory in the blocking pool while the loop already enforces the bound on
    /// what is known; then evicts on every wake-up and every [`TICK`], until shutdown.
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let space = self.space.clone();
        let scan = tokio::task::spawn_blocking(move || space.scan());
        loop {
            self.space.pass().await;
            tokio::select! {
                () = self.space.wake.notified() => {}
                () = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => break,
            }
        }
        scan.abort();
        // A graceful stop: keep what the policy learned for the next start.
        let space = self.space.clone();
        match tokio::task::spawn_blocking(move || space.save()).await {
            Ok(Ok(entries)) => tracing::info!(entries, "fs cache eviction state saved"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot save the fs cache eviction state"),
            Err(e) => tracing::warn!(error = %e, "cannot save the fs cache eviction state"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cachestore::fs::FsStore;
    use crate::cachestore::{CacheStore, CommitOutcome};
    use crate::chunk::ChunkId;
    use crate::metrics::TIER_STORE;
    use bytes::Bytes;

    const KIB: u64 = 1024;

    fn id(i: u64) -> ChunkId {
        ChunkId::from_fields("o", "b", "k", "e", 64 * KIB, i)
    }

    fn limits(max: u64, low: SizeOrPercent) -> FsLimits {
        FsLimits {
            max_size: Some(max),
            min_free: SizeOrPercent::Size(0),
            low_watermark: low,
        }
    }

    /// What the evictor service does, without Pingora: a pass per wake-up or tick.
    fn drive(space: Arc<Space>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                space.pass().await;
                tokio::select! {
                    () = space.wake.notified() => {}
                    () = tokio::time::sleep(TICK) => {}
                }
            }
        })
    }

    fn data(i: u64, len: u64) -> Vec<Bytes> {
        vec![Bytes::from(vec![i as u8; len as usize])]
    }

    async fn read_all(store: &FsStore, id: &ChunkId, len: u64) -> Option<Vec<u8>> {
        let mut r = store.read(id, len, 0, len).await.unwrap()?;
        let mut out = Vec::new();
        while let Some(p) = r.next_piece().await.unwrap() {
            out.extend_from_slice(&p);
        }
        Some(out)
    }

    /// Bytes under `dir` as `du` counts them (blocks; hard links once).
    fn du(dir: &Path) -> u64 {
        let mut seen = HashSet::new();
        let mut total = 0;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            if let Ok(m) = fs::symlink_metadata(&d) {
                if seen.insert(m.ino()) {
                    total += on_disk(&m);
                }
            }
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                let m = e.metadata().unwrap();
                if m.is_dir() {
                    stack.push(e.path());
                } else if seen.insert(m.ino()) {
                    total += on_disk(&m);
                }
            }
        }
        total
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_never_take_the_store_over_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let max = 40 * 16 * KIB;
        let store = FsStore::open(dir.path(), &limits(max, SizeOrPercent::Percent(50))).unwrap();
        let space = store.space().clone();
        let evictor = drive(space.clone());
        for i in 0..200 {
            let out = store.commit(&id(i), data(i, 16 * KIB), 16 * KIB).await;
            assert_eq!(out.unwrap(), CommitOutcome::Committed);
            let (used, capacity, _) = space.usage();
            assert!(used <= capacity, "{used} > {capacity}");
            assert!(du(dir.path()) <= max, "du {} > {max}", du(dir.path()));
        }
        evictor.abort();
        let (used, _, chunks) = space.usage();
        let files = fs::read_dir(store.chunk_path(&id(0)).parent().unwrap())
            .unwrap()
            .count();
        assert_eq!(files, chunks);
        assert_eq!(used, du(dir.path()), "the index counts what du counts");
        // The newest chunks are there, exact.
        assert_eq!(
            read_all(&store, &id(199), 16 * KIB).await.unwrap(),
            vec![199u8; 16 * 1024]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunk_evicted_while_read_is_read_to_its_end_and_its_descriptor_dropped() {
        let dir = tempfile::tempdir().unwrap();
        // Room for one chunk: the next commit needs it gone, recent and read as it is.
        let len = 256 * KIB;
        let l = limits(400 * KIB, SizeOrPercent::Percent(50));
        let store = FsStore::open(dir.path(), &l).unwrap();
        let space = store.space().clone();
        let evictor = drive(space.clone());
        store.commit(&id(0), data(0, len), len).await.unwrap();
        // Opened (and its descriptor kept), not read yet.
        let mut reader = store.read(&id(0), len, 0, len).await.unwrap().unwrap();
        for i in 1..3 {
            store.commit(&id(i), data(i, len), len).await.unwrap();
        }
        evictor.abort();
        assert!(!store.chunk_path(&id(0)).exists(), "chunk 0 was evicted");
        let mut got = Vec::new();
        while let Some(p) = reader.next_piece().await.unwrap() {
            got.extend_from_slice(&p);
        }
        assert_eq!(got, vec![0u8; 256 * 1024]);
        let again = store.read(&id(0), len, 0, len).await.unwrap();
        assert!(
            again.is_none(),
            "an evicted chunk is a miss, not read from a kept descriptor"
        );
        assert!(CACHESTORE_EVICTIONS.with_label_values(&[TIER_STORE]).get() >= 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_directory_that_grows_is_counted_as_du_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            FsStore::open(dir.path(), &limits(1 << 30, SizeOrPercent::Percent(90))).unwrap();
        // 300 chunks of one object: one leaf directory, far past its first block on ext4.
        for i in 0..300 {
            store.commit(&id(i), data(i, 100), 100).await.unwrap();
        }
        assert_eq!(store.space().usage().0, du(dir.path()));
        // A restart's scan counts the same.
        drop(store);
        let store =
            FsStore::open(dir.path(), &limits(1 << 30, SizeOrPercent::Percent(90))).unwrap();
        let s = store.space().clone();
        tokio::task::spawn_blocking(move || s.scan()).await.unwrap();
        assert_eq!(
            store.space().usage(),
            (du(dir.path()), store.space().usage().1, 300)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_commit_that_finds_no_room_gives_up_after_its_wait() {
        let dir = tempfile::tempdir().unwrap();
        let len = 256 * KIB;
        let l = limits(400 * KIB, SizeOrPercent::Percent(50));
        let store = FsStore::open(dir.path(), &l).unwrap();
        store.commit(&id(0), data(0, len), len).await.unwrap();
        // No evictor runs: the second chunk does not fit, and waits ROOM_WAIT for nothing.
        let err = store.commit(&id(1), data(1, len), len).await.unwrap_err();
        assert!(matches!(err, StoreError::Full { .. }), "{err}");
        assert!(!store.chunk_path(&id(1)).exists());
        let counted = {
            let st = store.space().state.lock();
            (st.waiting, st.reserved)
        };
        assert_eq!(counted, (0, 0), "nothing left counted");
        // A chunk larger than the whole bound is refused at once, without waiting.
        let big = 512 * KIB;
        let before = tokio::time::Instant::now();
        let err = store.commit(&id(2), data(2, big), big).await.unwrap_err();
        assert!(matches!(err, StoreError::Full { .. }), "{err}");
        assert_eq!(tokio::time::Instant::now(), before);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_scan_indexes_what_an_earlier_process_stored() {
        let dir = tempfile::tempdir().unwrap();
        let l = limits(1 << 30, SizeOrPercent::Percent(90));
        {
            let store = FsStore::open(dir.path(), &l).unwrap();
            for i in 0..5 {
                store
                    .commit(&id(i), data(i, 10 * KIB), 10 * KIB)
                    .await
                    .unwrap();
            }
        }
        let store = FsStore::open(dir.path(), &l).unwrap();
        let space = store.space().clone();
        assert_eq!(space.usage().2, 0, "the index starts empty");
        // A read before the scan finds the file and indexes it.
        assert!(read_all(&store, &id(2), 10 * KIB).await.is_some());
        assert_eq!(space.usage().2, 1);
        let s = space.clone();
        tokio::task::spawn_blocking(move || s.scan()).await.unwrap();
        let (used, _, chunks) = space.usage();
        assert_eq!(chunks, 5);
        assert_eq!(used, du(dir.path()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_policy_state_survives_a_graceful_restart() {
        let dir = tempfile::tempdir().unwrap();
        let l = limits(1 << 30, SizeOrPercent::Percent(90));
        let before = {
            let store = FsStore::open(dir.path(), &l).unwrap();
            for i in 0..6 {
                store
                    .commit(&id(i), data(i, 10 * KIB), 10 * KIB)
                    .await
                    .unwrap();
            }
            for _ in 0..3 {
                read_all(&store, &id(2), 10 * KIB).await.unwrap();
            }
            let space = store.space().clone();
            assert_eq!(
                tokio::task::spawn_blocking(move || space.save())
                    .await
                    .unwrap()
                    .unwrap(),
                6
            );
            let snapshot = store.space().state.lock().policy.snapshot();
            snapshot
        };
        // One chunk vanished while Orca was stopped.
        let store = FsStore::open(dir.path(), &l).unwrap();
        fs::remove_file(store.chunk_path(&id(4))).unwrap();
        let space = store.space().clone();
        let s = space.clone();
        tokio::task::spawn_blocking(move || s.scan()).await.unwrap();
        let after = space.state.lock().policy.snapshot();
        let want: Vec<_> = before
            .into_iter()
            .filter(|(key, _, _)| *key != id(4).placement_digest())
            .collect();
        assert_eq!(after, want, "same queues, same order, same reads");
        assert!(after
            .iter()
            .any(|(key, _, freq)| *key == id(2).placement_digest() && *freq == 3));
        assert!(
            !dir.path().join(SAVED).exists(),
            "a saved state is used once"
        );
        assert_eq!(space.usage().0, du(dir.path()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn enospc_on_a_commit_is_an_error_that_leaves_nothing_and_evicts_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("tiny");
        fs::create_dir(&mnt).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
            .arg(&mnt)
            .output();
        match mounted {
            Ok(o) if o.status.success() => {}
            other => {
                eprintln!("SKIPPED: cannot mount a tmpfs here: {other:?}");
                return;
            }
        }
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&self.0)
                    .status();
            }
        }
        let _unmount = Unmount(mnt.clone());
        let root = mnt.join("cache");
        // A bound far larger than the filesystem, no min_free: only the disk limits the store.
        let store = FsStore::open(&root, &limits(1 << 30, SizeOrPercent::Percent(50))).unwrap();
        let space = store.space().clone();
        for i in 0..8 {
            store
                .commit(&id(i), data(i, 16 * KIB), 16 * KIB)
                .await
                .unwrap();
        }
        // Something else fills the disk, and the evictor has not looked yet.
        {
            use std::io::Write;
            let mut f = File::create(mnt.join("ballast")).unwrap();
            let block = vec![1u8; 4096];
            while f.write_all(&block).is_ok() {}
        }
        let err = store
            .commit(&id(100), data(100, 16 * KIB), 16 * KIB)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC)),
            "{err}"
        );
        assert!(
            !store.chunk_path(&id(100)).exists(),
            "nothing partial is visible"
        );
        // Nothing partial: this process's temp directory holds nothing but its lock.
        for d in fs::read_dir(root.join("tmp")).unwrap().flatten() {
            let names: Vec<_> = fs::read_dir(d.path())
                .unwrap()
                .flatten()
                .map(|f| f.file_name())
                .collect();
            assert_eq!(names, vec![std::ffi::OsString::from(".lock")]);
        }
        assert!(space.state.lock().enospc, "the evictor was told");
        // One pass of the evictor shrinks the store, and commits come back.
        space.pass().await;
        let (_, _, chunks) = space.usage();
        assert!(chunks < 8, "{chunks} chunks left");
        store
            .commit(&id(100), data(100, 16 * KIB), 16 * KIB)
            .await
            .unwrap();
        assert_eq!(
            read_all(&store, &id(100), 16 * KIB).await.unwrap(),
            vec![100u8; 16 * 1024]
        );
    }
}
