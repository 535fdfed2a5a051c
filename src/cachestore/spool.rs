//! Spools: the temporary file a fill writes its chunk to as the bytes arrive.
//!
//! A fill keeps only a small window of its chunk in memory ([`super::storage`]); every byte
//! it receives is also written, in order, to a [`Spool`], a temp file of the store's. Readers
//! that fall behind the window read the bytes from there. Once the whole chunk is in and its
//! length checked, the store commits the spool: the `fs` store fsyncs and links it (no byte of
//! the chunk is held in memory for the commit), the `s3` store PUTs it from the file, and a
//! local tier in front of the shared store does both. A spool that is never committed (a
//! failed fill, a failed commit) is removed when it is dropped; one left by a crash is removed
//! with its instance directory at the next start (see [`super::fs`]).

use super::buf::{PieceBuf, PIECE};
use super::evict::Reservation;
use super::StoreError;
use bytes::Bytes;
use parking_lot::Mutex;
use rustix::io::{Errno, ReadWriteFlags};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, IoSliceMut};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Whether `preadv2(RWF_NOWAIT)` works here (Linux 4.14+, and the filesystem must support
/// it); cleared on the first `EOPNOTSUPP`.
static NOWAIT: AtomicBool = AtomicBool::new(true);

/// A chunk's temp file, written in order from offset 0.
pub struct Spool {
    file: Arc<File>,
    path: PathBuf,
    /// The room a bounded store reserved for it (released if it is never committed).
    reservation: Mutex<Option<Reservation>>,
}

impl Spool {
    /// Creates `path` (which must not exist). Blocking: call it on the blocking pool.
    pub fn create(path: PathBuf) -> Result<Self, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StoreError::io(format!("create {}", path.display()), e))?;
        Ok(Self {
            file: Arc::new(file),
            path,
            reservation: Mutex::new(None),
        })
    }

    /// Keeps `reservation` (a bounded store's room for the chunk) with the spool.
    pub(crate) fn hold(self, reservation: Reservation) -> Self {
        *self.reservation.lock() = Some(reservation);
        self
    }

    /// The reservation kept with the spool, for its commit.
    pub(crate) fn take_reservation(&self) -> Option<Reservation> {
        self.reservation.lock().take()
    }

    /// Writes `pieces` at `offset`, in order. Blocking: call it on the blocking pool.
    pub fn write_at(&self, pieces: &[Bytes], mut offset: u64) -> std::io::Result<()> {
        for piece in pieces {
            self.file.write_all_at(piece, offset)?;
            offset += piece.len() as u64;
        }
        Ok(())
    }

    /// The open file (its descriptor stays readable after the name is unlinked or linked
    /// elsewhere).
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// The temp file's name.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        // Committed: the chunk lives on under its own name (a link) or in the shared store.
        // Not committed: the temp file goes. Either way the temp name is no longer needed.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads `want` (at most [`PIECE`]) bytes at `pos` of `file` into a recycled buffer: from the
/// page cache on this thread with `preadv2(RWF_NOWAIT)` when they are there, else on the
/// blocking pool. A file shorter than `pos + want` is an error.
pub async fn read_piece(file: &Arc<File>, pos: u64, want: usize) -> Result<Bytes, StoreError> {
    let want = want.min(PIECE);
    let mut buf = PieceBuf::take(want);
    if let Some(n) = read_cached(file, buf.as_mut_slice(), pos) {
        return Ok(buf.into_bytes(n));
    }
    let file = file.clone();
    let (buf, read) = tokio::task::spawn_blocking(move || {
        let read = file.read_exact_at(buf.as_mut_slice(), pos);
        (buf, read)
    })
    .await
    .map_err(|e| StoreError::io("read task", std::io::Error::other(e)))?;
    match read {
        Ok(()) => Ok(buf.into_bytes(want)),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Err(StoreError::io(
            "read chunk",
            std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "chunk file shorter than its length",
            ),
        )),
        Err(e) => Err(StoreError::io("read chunk", e)),
    }
}

/// Whatever part of `buf.len()` bytes at `pos` is in the page cache; `None` when none is, or
/// when the read should go through the blocking pool (which reports real errors).
fn read_cached(file: &File, buf: &mut [u8], pos: u64) -> Option<usize> {
    if !NOWAIT.load(Ordering::Relaxed) {
        return None;
    }
    let mut slices = [IoSliceMut::new(buf)];
    match rustix::io::preadv2(file, &mut slices, pos, ReadWriteFlags::NOWAIT) {
        Ok(0) => None,
        Ok(n) => Some(n),
        Err(Errno::OPNOTSUPP) | Err(Errno::NOSYS) => {
            NOWAIT.store(false, Ordering::Relaxed);
            None
        }
        // `EAGAIN`: not in the page cache.
        Err(_) => None,
    }
}
