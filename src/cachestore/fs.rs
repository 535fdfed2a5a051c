//! The `fs` cache store: chunks as files under a local directory.
//!
//! Layout: `ROOT/v1/ab/cd/<object hash>-<index>` for committed chunks and `ROOT/tmp/` for
//! commits in progress. A commit writes a temp file in the same filesystem, fsyncs it, then
//! `link(2)`s it to its final name: `link` fails with `EEXIST` instead of replacing, so a chunk
//! appears whole or not at all and is never clobbered; losing that race is success.
//!
//! Each process writes its temp files in a directory of its own, `ROOT/tmp/<instance>/` (a random
//! name), and holds an exclusive `flock` on its `.lock` file for as long as it runs. At start,
//! every other instance directory whose lock can be taken belongs to a process that is gone (the
//! kernel drops the lock with its last descriptor, however the process ended) and is removed;
//! one whose lock is held belongs to a running Orca (`orca -t`, or the old process during a `-u`
//! upgrade) and is left alone. A pid would not do: in a container Orca is pid 1 at every start.
//! Temp files of older releases (`ROOT/tmp/<pid>.<seq>.<chunk>.tmp`) are removed unless their
//! pid is another live process.
//!
//! The store is bounded (`cachestore.fs.max_size`, `min_free`, `low_watermark`): every commit
//! reserves its bytes in the index of [`super::evict`] first, every hit counts for the eviction
//! policy, and the [`Evictor`] deletes chunks in the background.

use super::buf::PIECE;
use super::evict::{on_disk, Evictor, OpenFiles, Reservation, Space};
use super::spool::{read_piece, Spool};
use super::{CacheStore, ChunkRead, CommitOutcome, StoreError, TierState};
use crate::chunk::{ChunkId, CACHE_VERSION};
use crate::config::FsLimits;
use crate::metrics::TIER_STORE;
use async_trait::async_trait;
use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::num::NonZeroUsize;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Open chunk files kept for reuse, so a warm hit costs neither an `open(2)` nor a trip to the
/// blocking pool. A committed chunk file never changes (its name covers the object's ETag and
/// the chunk's length, and commits never replace), so a kept descriptor always reads the right
/// bytes, even after the file was unlinked; its disk space is freed when it leaves this cache
/// (the evictor takes evicted files out; a file deleted by hand is dropped at its next read).
const OPEN_FILES: usize = 256;

/// A cache store in a local directory.
pub struct FsStore {
    root: PathBuf,
    chunks: PathBuf,
    /// This process's temp directory, `ROOT/tmp/<instance>/`.
    tmp: PathBuf,
    /// Holds the instance directory's lock while the store lives; removes the directory when
    /// dropped (a crash leaves it to the next start).
    _instance: Instance,
    seq: AtomicU64,
    open_files: OpenFiles,
    /// The index of the chunk files and the bound (shared with the evictor).
    space: Arc<Space>,
    /// The tier's name in `orca inspect` and `orca purge`: `fs`, or `local` in front of a
    /// shared store.
    tier_name: &'static str,
}

impl FsStore {
    /// Opens (creating if needed) a store at `root` bounded by `limits`: removes temp files left
    /// by a crash and checks that the root is writable by committing and removing a probe file.
    /// The index starts empty: [`FsStore::evictor`], run as a background service, rebuilds it.
    pub fn open(root: &Path, limits: &FsLimits) -> Result<Self, StoreError> {
        Self::open_as(root, limits, TIER_STORE)
    }

    /// [`FsStore::open`] for a store whose `orca_cachestore_*` metrics carry `tier` (the
    /// local tier in front of a shared store reports as `local`).
    pub fn open_as(root: &Path, limits: &FsLimits, tier: &'static str) -> Result<Self, StoreError> {
        let chunks = root.join(format!("v{CACHE_VERSION}"));
        let tmp_root = root.join("tmp");
        for dir in [&chunks, &tmp_root] {
            fs::create_dir_all(dir)
                .map_err(|e| StoreError::io(format!("create {}", dir.display()), e))?;
        }

        // Leftovers first, then this process's own directory (so it is never taken for one).
        let removed = clean_tmp(&tmp_root)?;
        if removed > 0 {
            tracing::info!(removed, root = %root.display(), "removed temp files left by a crash");
        }
        let instance = Instance::create(&tmp_root)?;
        let open_files: OpenFiles = Arc::new(Mutex::new(LruCache::new(
            NonZeroUsize::new(OPEN_FILES).unwrap_or(NonZeroUsize::MIN),
        )));
        let space = Space::open(root, &chunks, limits, open_files.clone(), tier)?;
        let store = Self {
            root: root.to_path_buf(),
            chunks,
            tmp: instance.dir.clone(),
            _instance: instance,
            seq: AtomicU64::new(0),
            open_files,
            space,
            tier_name: if tier == crate::metrics::TIER_LOCAL {
                "local"
            } else {
                "fs"
            },
        };
        store.probe()?;
        Ok(store)
    }

    /// The background service that rebuilds the index and evicts (one per store).
    pub fn evictor(&self) -> Evictor {
        Evictor::new(self.space.clone())
    }

    #[cfg(test)]
    pub(crate) fn space(&self) -> &Arc<Space> {
        &self.space
    }

    /// The file a committed chunk lives in.
    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.object_hex();
        self.chunks
            .join(&hex[0..2])
            .join(&hex[2..4])
            .join(id.name())
    }

    fn probe(&self) -> Result<(), StoreError> {
        let tmp = self.tmp.join("probe");
        let dst = self.root.join(format!(".probe-{}", std::process::id()));
        let check = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(b"orca")?;
            f.sync_all()?;
            let _ = fs::remove_file(&dst);
            fs::hard_link(&tmp, &dst)?;
            Ok(())
        };
        let result = check();
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_file(&dst);
        result.map_err(|e| {
            StoreError::Check(format!(
                "cache root {} is not writable (write, fsync and link a probe file): {e}",
                self.root.display()
            ))
        })
    }

    fn tmp_path(&self, id: &ChunkId) -> PathBuf {
        self.tmp.join(format!(
            "{}.{}.tmp",
            self.seq.fetch_add(1, Ordering::Relaxed),
            id.name()
        ))
    }
}

/// Whether process `pid` is alive (Linux `/proc`; elsewhere every owner counts as gone).
fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// The temp directories this process created, for [`remove_own_temp_dirs`]: the store itself
/// is leaked into Pingora's `'static` storage and never dropped.
static OWN_TEMP_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes this process's temp directories (for `orca -t`, which builds a store and exits; a
/// running Orca's is removed by the next start, once its lock is gone).
pub fn remove_own_temp_dirs() {
    for dir in OWN_TEMP_DIRS.lock().drain(..) {
        let _ = fs::remove_dir_all(dir);
    }
}

/// This process's temp directory and the lock that marks it as in use.
struct Instance {
    dir: PathBuf,
    /// The open `.lock` file with the exclusive `flock` on it.
    _lock: File,
}

impl Instance {
    fn create(tmp_root: &Path) -> Result<Self, StoreError> {
        let dir = tmp_root.join(format!("{:016x}", rand::random::<u64>()));
        let io = |what: &str, e| StoreError::io(format!("{what} {}", dir.display()), e);
        fs::create_dir(&dir).map_err(|e| io("create", e))?;
        let lock = File::create(dir.join(".lock")).map_err(|e| io("create the lock in", e))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| io("lock", e.into()))?;
        OWN_TEMP_DIRS.lock().push(dir.clone());
        Ok(Self { dir, _lock: lock })
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        OWN_TEMP_DIRS.lock().retain(|d| d != &self.dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A directory of spools outside any `fs` store (the `s3` store without a local tier):
/// `ROOT/<instance>/`, locked and cleaned of crashed processes' directories as a store's temp
/// directory is.
pub struct SpoolDir {
    instance: Instance,
    seq: AtomicU64,
}

impl SpoolDir {
    /// Creates `root` if needed, removes what crashed processes left there and makes this
    /// process's own directory in it.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(root)
            .map_err(|e| StoreError::io(format!("create {}", root.display()), e))?;
        let removed = clean_tmp(root)?;
        if removed > 0 {
            tracing::info!(removed, root = %root.display(), "removed spools left by a crash");
        }
        Ok(Self {
            instance: Instance::create(root)?,
            seq: AtomicU64::new(0),
        })
    }

    /// A new spool for a fill of `id`. Blocking.
    pub fn spool(&self, id: &ChunkId) -> Result<Spool, StoreError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        Spool::create(self.instance.dir.join(format!("{seq}.{}.tmp", id.name())))
    }
}

/// Removes what crashed processes left in `ROOT/tmp`: every instance directory whose lock can
/// be taken (its process is gone), and older releases' `<pid>.<seq>.<chunk>.tmp` files whose pid
/// is not another live process. Returns the files removed.
fn clean_tmp(tmp_root: &Path) -> Result<usize, StoreError> {
    let mut removed = 0;
    let entries = fs::read_dir(tmp_root)
        .map_err(|e| StoreError::io(format!("list {}", tmp_root.display()), e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            let Ok(lock) = File::open(path.join(".lock")) else {
                // No lock file: a directory that never became an instance (a crash in between).
                removed += remove_dir(&path);
                continue;
            };
            let free =
                rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive);
            if free.is_ok() {
                removed += remove_dir(&path);
            }
            continue;
        }
        let owner = entry
            .file_name()
            .to_str()
            .and_then(|n| n.split('.').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        // This process's own pid names no commit of its own yet (it is starting): a container
        // restarted as pid 1 finds its predecessor's leftovers under its own pid.
        let owner_alive = owner.is_some_and(|p| p != std::process::id() && process_alive(p));
        if !owner_alive && fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes a leftover instance directory; returns the temp files it held.
fn remove_dir(dir: &Path) -> usize {
    let files = fs::read_dir(dir)
        .map(|d| d.flatten().filter(|e| e.file_name() != ".lock").count())
        .unwrap_or(0);
    match fs::remove_dir_all(dir) {
        Ok(()) => files,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a crashed process's temp files");
            0
        }
    }
}

/// Whether an I/O error means the filesystem (or the user's quota) is full.
fn is_out_of_space(e: &StoreError) -> bool {
    matches!(e, StoreError::Io { source, .. }
        if matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)))
}

/// Writes `pieces` to `tmp`, fsyncs, and links it to `final_path` without replacing. On
/// success the chunk enters the index with the blocks its file uses, and `reservation` is
/// released; on failure it is released by its drop.
fn commit_blocking(
    final_path: &Path,
    tmp: &Path,
    pieces: &[Bytes],
    space: &Space,
    key: [u8; 40],
    reservation: Reservation,
) -> Result<CommitOutcome, StoreError> {
    if final_path.exists() {
        return Ok(CommitOutcome::Lost);
    }
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp)
            .map_err(|e| StoreError::io(format!("create {}", tmp.display()), e))?;
        for piece in pieces {
            f.write_all(piece)
                .map_err(|e| StoreError::io(format!("write {}", tmp.display()), e))?;
        }
        Ok(f)
    })();
    let result = match written {
        Ok(f) => link_blocking(final_path, tmp, &f, space, key, reservation),
        Err(e) => {
            // The evictor makes room before the next commit comes.
            if is_out_of_space(&e) {
                space.out_of_space();
            }
            Err(e)
        }
    };
    let _ = fs::remove_file(tmp);
    result
}

/// Fsyncs the complete temp file `tmp` (open as `file`) and links it to `final_path` without
/// replacing. On success the chunk enters the index with the blocks its file uses, and
/// `reservation` is released; on failure it is released by its drop. The temp name is left
/// to the caller to remove.
fn link_blocking(
    final_path: &Path,
    tmp: &Path,
    file: &File,
    space: &Space,
    key: [u8; 40],
    reservation: Reservation,
) -> Result<CommitOutcome, StoreError> {
    let result = (|| {
        file.sync_all()
            .map_err(|e| StoreError::io(format!("fsync {}", tmp.display()), e))?;
        let blocks = file.metadata().map(|m| on_disk(&m)).unwrap_or(0);
        if let Some(parent) = final_path.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| StoreError::io(format!("create {}", parent.display()), e))?;
        }
        // A crash here loses at most the link: the chunk is simply missing, never partial.
        match fs::hard_link(tmp, final_path) {
            Ok(()) => Ok((CommitOutcome::Committed, blocks)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok((CommitOutcome::Lost, 0)),
            Err(e) => Err(StoreError::io(format!("link {}", final_path.display()), e)),
        }
    })();
    match result {
        Ok((CommitOutcome::Committed, blocks)) => {
            space.committed(key, blocks, reservation);
            Ok(CommitOutcome::Committed)
        }
        Ok((outcome, _)) => Ok(outcome),
        Err(e) => {
            // The evictor makes room before the next commit comes.
            if is_out_of_space(&e) {
                space.out_of_space();
            }
            Err(e)
        }
    }
}

/// Commits a fill's spool: its length checked against `len`, then fsynced and linked as
/// [`link_blocking`] does. No byte of the chunk is in memory: a commit that outlives its
/// timeout holds only the file's descriptor.
fn commit_spool_blocking(
    final_path: &Path,
    spool: &Spool,
    len: u64,
    space: &Space,
    key: [u8; 40],
    reservation: Reservation,
    name: String,
) -> Result<CommitOutcome, StoreError> {
    let tmp = spool.path();
    let found = spool
        .file()
        .metadata()
        .map_err(|e| StoreError::io(format!("stat {}", tmp.display()), e))?
        .len();
    if found != len {
        return Err(StoreError::LengthMismatch {
            name,
            got: found,
            declared: len,
        });
    }
    if final_path.exists() {
        return Ok(CommitOutcome::Lost);
    }
    link_blocking(final_path, tmp, spool.file(), space, key, reservation)
}

#[async_trait]
impl CacheStore for FsStore {
    async fn stat(&self, id: &ChunkId) -> Result<Option<u64>, StoreError> {
        match tokio::fs::metadata(self.chunk_path(id)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(format!("stat {}", id.name()), e)),
        }
    }

    async fn read(
        &self,
        id: &ChunkId,
        expected_len: u64,
        from: u64,
        to: u64,
    ) -> Result<Option<Box<dyn ChunkRead>>, StoreError> {
        let key = id.placement_digest();
        let (pos, end) = (from.min(expected_len), to.min(expected_len));
        let cached = self.open_files.lock().get(&key).cloned();
        // A kept descriptor is checked like a fresh open (an `fstat`, no disk I/O): a file
        // truncated behind Orca's back is quarantined, not read short forever, and a file
        // deleted (by hand) is a miss, filled again, and its space is freed.
        let cached = match cached.map(|f| {
            let m = f.metadata().ok();
            (f, m)
        }) {
            Some((file, Some(m))) if m.len() == expected_len && m.nlink() > 0 => {
                Some((file, on_disk(&m)))
            }
            Some(_) => {
                self.open_files.lock().pop(&key);
                None
            }
            None => None,
        };
        let (file, bytes) = match cached {
            Some(hit) => hit,
            None => {
                let path = self.chunk_path(id);
                let label = id.name();
                let opened =
                    tokio::task::spawn_blocking(move || open_checked(&path, expected_len, label))
                        .await
                        .map_err(|e| StoreError::io("open task", std::io::Error::other(e)))?;
                if !matches!(opened, Ok(Some(_))) {
                    self.space.forget(&key);
                }
                let Some((file, bytes)) = opened? else {
                    return Ok(None);
                };
                let file = Arc::new(file);
                self.open_files.lock().put(key, file.clone());
                // The evictor may have unlinked it between the open and the put, after taking
                // it out of the kept set: keep no descriptor of a deleted file.
                if file.metadata().map(|m| m.nlink()).unwrap_or(0) == 0 {
                    self.open_files.lock().pop(&key);
                }
                (file, bytes)
            }
        };
        self.space.touch(&key, bytes);
        Ok(Some(Box::new(FsReader { file, pos, end })))
    }

    async fn commit(
        &self,
        id: &ChunkId,
        pieces: Vec<Bytes>,
        len: u64,
    ) -> Result<CommitOutcome, StoreError> {
        super::check_commit_len(id, &pieces, len)?;
        let key = id.placement_digest();
        // Room first: a commit that would take the store over its bound waits here (in the
        // background, after its client was served) for the evictor it wakes.
        let reservation = self.space.reserve(&key, len).await?;
        let final_path = self.chunk_path(id);
        let tmp = self.tmp_path(id);
        let space = self.space.clone();
        tokio::task::spawn_blocking(move || {
            commit_blocking(&final_path, &tmp, &pieces, &space, key, reservation)
        })
        .await
        .map_err(|e| StoreError::io("commit task", std::io::Error::other(e)))?
    }

    async fn spool(&self, id: &ChunkId, len: u64) -> Result<Option<Spool>, StoreError> {
        // Room first, as for a commit: a spool is the chunk's file before its link. A store
        // the evictor cannot make room in (within its wait) still gets the spool, unreserved:
        // the bound is overshot by the spools in flight rather than the chunk kept in memory;
        // its commit then waits for room again, and gives up if none comes.
        let reservation = match self.space.reserve(&id.placement_digest(), len).await {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(chunk = %id, error = %e, "no room reserved for a fill's spool; spooling unreserved");
                None
            }
        };
        let path = self.tmp_path(id);
        let spool = tokio::task::spawn_blocking(move || Spool::create(path))
            .await
            .map_err(|e| StoreError::io("spool task", std::io::Error::other(e)))??;
        Ok(Some(match reservation {
            Some(r) => spool.hold(r),
            None => spool,
        }))
    }

    async fn commit_spool(
        &self,
        id: &ChunkId,
        spool: Arc<Spool>,
        len: u64,
    ) -> Result<CommitOutcome, StoreError> {
        let key = id.placement_digest();
        // The room reserved with the spool (or, for a spool of another store's, now).
        let reservation = match spool.take_reservation() {
            Some(r) => r,
            None => self.space.reserve(&key, len).await?,
        };
        let final_path = self.chunk_path(id);
        let space = self.space.clone();
        let name = id.name();
        tokio::task::spawn_blocking(move || {
            commit_spool_blocking(&final_path, &spool, len, &space, key, reservation, name)
        })
        .await
        .map_err(|e| StoreError::io("commit task", std::io::Error::other(e)))?
    }

    fn driver(&self) -> &'static str {
        "fs"
    }

    async fn locate(&self, id: &ChunkId) -> Vec<TierState> {
        vec![TierState {
            tier: self.tier_name,
            shared: false,
            bytes: self.stat(id).await.map_err(|e| e.to_string()),
        }]
    }

    async fn purge(&self, id: &ChunkId, _shared: bool) -> Vec<TierState> {
        let key = id.placement_digest();
        let path = self.chunk_path(id);
        let removed = match tokio::fs::metadata(&path).await {
            Ok(m) => match tokio::fs::remove_file(&path).await {
                Ok(()) => Ok(Some(m.len())),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("remove {}: {e}", path.display())),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("stat {}: {e}", path.display())),
        };
        // No kept descriptor and no index entry of a removed file: its space is free now.
        self.open_files.lock().pop(&key);
        self.space.forget(&key);
        vec![TierState {
            tier: self.tier_name,
            shared: false,
            bytes: removed,
        }]
    }
}

/// Opens a committed chunk file and checks its length: `None` when it is not there; a file of
/// the wrong length is removed (so the next fill can commit a good copy) and reported. With the
/// file, the bytes it uses on disk.
fn open_checked(
    path: &Path,
    expected_len: u64,
    name: String,
) -> Result<Option<(File, u64)>, StoreError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(format!("open {}", path.display()), e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| StoreError::io(format!("stat {}", path.display()), e))?;
    let found = meta.len();
    if found != expected_len {
        let _ = fs::remove_file(path);
        return Err(StoreError::Corrupt {
            name,
            found,
            expected: expected_len,
        });
    }
    Ok(Some((file, on_disk(&meta))))
}

/// Reads a chunk file in pieces of at most [`PIECE`] bytes into recycled buffers.
///
/// A piece in the page cache is read right here with `preadv2(RWF_NOWAIT)`, which copies what
/// is cached and never waits for the disk; only a piece that needs the disk goes to the
/// blocking pool ([`read_piece`]). The buffer becomes the `Bytes` written to the socket: one
/// copy in user space.
struct FsReader {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

#[async_trait]
impl ChunkRead for FsReader {
    async fn next_piece(&mut self) -> Result<Option<Bytes>, StoreError> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let want = (self.end - self.pos).min(PIECE as u64) as usize;
        let piece = read_piece(&self.file, self.pos, want).await?;
        self.pos += piece.len() as u64;
        Ok(Some(piece))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn id(i: u64) -> ChunkId {
        ChunkId::from_fields("o", "b", "k", "e", 10, i)
    }

    async fn read_all(store: &FsStore, id: &ChunkId, len: u64, from: u64, to: u64) -> Vec<u8> {
        let mut r = store.read(id, len, from, to).await.unwrap().unwrap();
        let mut out = Vec::new();
        while let Some(p) = r.next_piece().await.unwrap() {
            out.extend_from_slice(&p);
        }
        out
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn commit_then_read_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path(), &FsLimits::default()).unwrap();
        assert_eq!(store.stat(&id(0)).await.unwrap(), None);
        let pieces = vec![Bytes::from_static(b"hello "), Bytes::from_static(b"world")];
        let out = store.commit(&id(0), pieces, 11).await.unwrap();
        assert_eq!(out, CommitOutcome::Committed);
        assert_eq!(store.stat(&id(0)).await.unwrap(), Some(11));
        assert_eq!(read_all(&store, &id(0), 11, 0, 11).await, b"hello world");
        assert_eq!(read_all(&store, &id(0), 11, 6, 8).await, b"wo");
        assert!(store.read(&id(1), 11, 0, 11).await.unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn racing_writers_both_succeed_with_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FsStore::open(dir.path(), &FsLimits::default()).unwrap());
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.commit(&id(3), vec![Bytes::from_static(b"0123456789")], 10)
                    .await
            }));
        }
        let mut committed = 0;
        for t in tasks {
            match t.await.unwrap().unwrap() {
                CommitOutcome::Committed => committed += 1,
                CommitOutcome::Lost => {}
            }
        }
        assert_eq!(committed, 1);
        assert_eq!(read_all(&store, &id(3), 10, 0, 10).await, b"0123456789");
        assert_eq!(
            temp_files(dir.path()),
            Vec::<String>::new(),
            "no temp file left"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn length_mismatch_is_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path(), &FsLimits::default()).unwrap();
        let err = store
            .commit(&id(0), vec![Bytes::from_static(b"short")], 10)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::LengthMismatch { .. }));
        assert_eq!(store.stat(&id(0)).await.unwrap(), None);
    }

    /// The temp files under `ROOT/tmp` (instance directories' contents, locks aside).
    fn temp_files(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in fs::read_dir(root.join("tmp")).unwrap().flatten() {
            if e.path().is_dir() {
                for f in fs::read_dir(e.path()).unwrap().flatten() {
                    let name = f.file_name().to_string_lossy().to_string();
                    if name != ".lock" {
                        out.push(format!("{}/{name}", e.file_name().to_string_lossy()));
                    }
                }
            } else {
                out.push(e.file_name().to_string_lossy().to_string());
            }
        }
        out.sort();
        out
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn crash_leftovers_are_never_served_and_cleaned_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        // A running Orca (its instance directory locked) with a commit in progress.
        let running = FsStore::open(dir.path(), &FsLimits::default()).unwrap();
        let in_progress = running.tmp_path(&id(1));
        fs::write(&in_progress, b"partial").unwrap();
        // A crashed instance's directory (nobody holds its lock) with a half-written chunk.
        let crashed = tmp.join("00000000deadbeef");
        fs::create_dir(&crashed).unwrap();
        fs::write(crashed.join(".lock"), b"").unwrap();
        fs::write(crashed.join(format!("0.{}.tmp", id(0).name())), b"partial").unwrap();
        // Older releases' names: a pid that is gone, and this process's own pid, which is what
        // a container restarted as pid 1 finds its predecessor's leftovers under.
        fs::write(
            tmp.join(format!("{}.0.{}.tmp", u32::MAX - 1, id(2).name())),
            b"p",
        )
        .unwrap();
        fs::write(
            tmp.join(format!("{}.0.{}.tmp", std::process::id(), id(3).name())),
            b"p",
        )
        .unwrap();
        assert!(
            running.read(&id(0), 7, 0, 7).await.unwrap().is_none(),
            "never served"
        );
        let _next = FsStore::open(dir.path(), &FsLimits::default()).unwrap();
        let running_dir = in_progress
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        assert_eq!(
            temp_files(dir.path()),
            vec![format!("{running_dir}/0.{}.tmp", id(1).name())],
            "only the running instance's commit in progress is left"
        );
        drop(running);
        assert!(
            !in_progress.parent().unwrap().exists(),
            "a store removes its own directory"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn wrong_length_file_is_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path(), &FsLimits::default()).unwrap();
        store
            .commit(&id(0), vec![Bytes::from_static(b"abc")], 3)
            .await
            .unwrap();
        let err = store.read(&id(0), 10, 0, 10).await.err().unwrap();
        assert!(matches!(err, StoreError::Corrupt { .. }));
        assert_eq!(store.stat(&id(0)).await.unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_kept_file_truncated_behind_orcas_back_is_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path(), &FsLimits::default()).unwrap();
        let good = vec![Bytes::from_static(b"0123456789")];
        store.commit(&id(5), good.clone(), 10).await.unwrap();
        // Read once: the descriptor is kept.
        assert_eq!(read_all(&store, &id(5), 10, 0, 10).await, b"0123456789");
        std::fs::OpenOptions::new()
            .write(true)
            .open(store.chunk_path(&id(5)))
            .unwrap()
            .set_len(4)
            .unwrap();
        let err = store.read(&id(5), 10, 0, 10).await.err().unwrap();
        assert!(matches!(err, StoreError::Corrupt { found: 4, .. }), "{err}");
        assert_eq!(store.stat(&id(5)).await.unwrap(), None);
        // The next fill can commit a good copy, and it is what is read.
        assert_eq!(
            store.commit(&id(5), good, 10).await.unwrap(),
            CommitOutcome::Committed
        );
        assert_eq!(read_all(&store, &id(5), 10, 2, 6).await, b"2345");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_kept_file_deleted_by_hand_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path(), &FsLimits::default()).unwrap();
        let good = vec![Bytes::from_static(b"0123456789")];
        store.commit(&id(6), good.clone(), 10).await.unwrap();
        assert_eq!(read_all(&store, &id(6), 10, 0, 10).await, b"0123456789");
        fs::remove_file(store.chunk_path(&id(6))).unwrap();
        // The kept descriptor would still read the bytes: the deleted file must be a miss, so
        // it is filled again and its space is freed.
        assert!(store.read(&id(6), 10, 0, 10).await.unwrap().is_none());
        assert_eq!(store.space().usage().2, 0, "the index forgot it");
        assert_eq!(
            store.commit(&id(6), good, 10).await.unwrap(),
            CommitOutcome::Committed
        );
    }

    #[test]
    fn unwritable_root_is_refused() {
        let err = FsStore::open(Path::new("/proc/orca-cannot-write"), &FsLimits::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("/proc/orca-cannot-write"), "{err}");
    }
}
