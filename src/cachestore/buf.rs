//! Read buffers for chunk pieces, recycled.
//!
//! A warm read copies each piece from the page cache into a buffer that becomes the `Bytes`
//! written to the socket. A fresh large allocation per piece costs more than the copy itself:
//! the allocator maps new pages, and the kernel faults and zeroes each one (measured: about
//! 0.2 CPU seconds per GiB served). Full-size buffers therefore go back to a small pool when
//! their `Bytes` is dropped (after the socket write), and the next piece reuses them.
//!
//! Buffers are also page-aligned. The kernel's copy into user memory (`rep movsb`) runs about
//! ten times slower into a destination that is not 64-byte aligned, on this project's machines
//! 1.5 GB/s against 14 GB/s, and a plain `Vec` of this size starts 16 bytes into a page.

use bytes::Bytes;
use parking_lot::Mutex;

/// The size of a pooled buffer: the largest piece a store reads at once.
pub const PIECE: usize = 256 * 1024;

/// Reads smaller than this get an exact allocation instead of a pooled buffer: a 4 KiB
/// object should not pin a 256 KiB buffer.
const SMALL: usize = 64 * 1024;

/// Alignment of a piece's first byte (a page: also good for `O_DIRECT`-style copies).
const ALIGN: usize = 4096;

/// Idle buffers kept (at most `POOLED x PIECE` = 16 MiB). Buffers in use are bounded by the
/// read-ahead budget like any other chunk bytes; this bounds only the idle ones.
const POOLED: usize = 64;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A buffer for one piece of at most [`PIECE`] bytes.
pub struct PieceBuf {
    /// `PIECE + ALIGN` bytes for a pooled buffer (the piece starts at `start`, page-aligned),
    /// exactly the read's length for a small one.
    data: Vec<u8>,
    start: usize,
    len: usize,
}

impl PieceBuf {
    /// A buffer with room for `want` bytes (at most [`PIECE`]).
    pub fn take(want: usize) -> Self {
        let want = want.min(PIECE);
        if want < SMALL {
            return Self {
                data: vec![0; want],
                start: 0,
                len: want,
            };
        }
        let data = POOL.lock().pop().unwrap_or_else(|| vec![0; PIECE + ALIGN]);
        // Moving a `Vec` does not move its heap buffer, so the offset stays valid.
        let start = data.as_ptr().align_offset(ALIGN).min(ALIGN);
        Self {
            data,
            start,
            len: want,
        }
    }

    /// The bytes to read into.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.data[self.start..self.start + self.len]
    }

    /// The first `n` bytes read, as `Bytes` that return the buffer to the pool when dropped.
    pub fn into_bytes(mut self, n: usize) -> Bytes {
        self.len = n.min(self.len);
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for PieceBuf {
    fn as_ref(&self) -> &[u8] {
        &self.data[self.start..self.start + self.len]
    }
}

impl Drop for PieceBuf {
    fn drop(&mut self) {
        if self.data.len() == PIECE + ALIGN {
            let mut pool = POOL.lock();
            if pool.len() < POOLED {
                pool.push(std::mem::take(&mut self.data));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_and_small_reads_are_exact() {
        let mut b = PieceBuf::take(PIECE);
        assert_eq!(b.as_mut_slice().as_ptr() as usize % ALIGN, 0);
        assert_eq!(b.as_mut_slice().len(), PIECE);
        b.as_mut_slice()[..3].copy_from_slice(b"abc");
        let ptr = b.data.as_ptr();
        let bytes = b.into_bytes(3);
        assert_eq!(&bytes[..], b"abc");
        let slice = bytes.slice(1..);
        drop(bytes);
        assert_eq!(&slice[..], b"bc");
        // Still referenced by the slice: not back yet.
        assert!(!POOL.lock().iter().any(|v| v.as_ptr() == ptr));
        drop(slice);
        // (nextest runs each test in its own process, so no other test takes it meanwhile.)
        assert!(POOL.lock().iter().any(|v| v.as_ptr() == ptr));
        let small = PieceBuf::take(4096);
        assert_eq!(small.data.len(), 4096);
        assert_eq!(small.as_ref().len(), 4096);
    }
}
