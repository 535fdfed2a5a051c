//! `limits.max_connections`: a cap on the client connections the edge holds open.
//!
//! Every open connection costs memory whether or not it ever sends a byte: Pingora's task for
//! it, its header buffer, its write buffer (about 40 KiB, measured in `tests/hostile.rs`). With
//! no cap, 10,000 idle connections held 430 MiB, and a client that opens more could push a
//! replica past its memory limit. [`ConnectionLimit`] wraps the edge's Pingora app: a
//! connection accepted while `max_connections` are open is closed at once (counted in
//! `orca_edge_connections_refused_total`), before anything is allocated for it. A kept-alive
//! connection takes a permit again for each request, so at the cap a new connection can take
//! the place of an idle kept-alive one, which is then closed after its response. Idle
//! connections also end by themselves: Pingora closes one that sends nothing for 60 s.

use crate::metrics::{EDGE_CONNECTIONS, EDGE_CONNECTIONS_REFUSED};
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// A Pingora app that serves at most `max` connections at once through `inner`.
pub struct ConnectionLimit<A> {
    inner: Arc<A>,
    permits: Arc<Semaphore>,
}

impl<A> ConnectionLimit<A> {
    /// `inner`, at most `max` connections at once.
    pub fn new(inner: A, max: usize) -> Self {
        Self {
            inner: Arc::new(inner),
            permits: Arc::new(Semaphore::new(max)),
        }
    }
}

/// The most connections open at once since memory was last trimmed.
static HIGH_WATER: AtomicI64 = AtomicI64::new(0);

/// The open-connections gauge, moved for as long as a connection holds its permit.
struct Open;

impl Open {
    fn new() -> Self {
        EDGE_CONNECTIONS.inc();
        HIGH_WATER.fetch_max(EDGE_CONNECTIONS.get(), Ordering::Relaxed);
        Open
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        EDGE_CONNECTIONS.dec();
        let open = EDGE_CONNECTIONS.get();
        let high = HIGH_WATER.load(Ordering::Relaxed);
        // One closing connection wins the exchange and trims, off the runtime's workers.
        if high - open >= TRIM_AFTER_CLOSED
            && HIGH_WATER
                .compare_exchange(high, open, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn_blocking(move || {
                    let released = trim();
                    tracing::debug!(
                        closed = high - open,
                        released,
                        "memory trimmed after connections closed"
                    );
                });
            }
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ConnectionLimit<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Ok(_permit) = self.permits.try_acquire() else {
            EDGE_CONNECTIONS_REFUSED.inc();
            // Dropping the stream closes the connection.
            return None;
        };
        let _open = Open::new();
        self.inner.process_new(session, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// Connections that must have closed since the high-water mark before memory is trimmed.
///
/// glibc's allocator keeps freed memory in its per-thread arenas for reuse and returns little
/// of it: after 10,000 idle connections closed, a replica kept the 360 MiB they had used, and a
/// second identical burst, served from other arenas, added 240 MiB more (`tests/hostile.rs`).
/// When the open-connection count has fallen this far from its high-water mark, the connection
/// whose close crosses it calls `malloc_trim(0)` on the blocking pool, which releases the free
/// pages of every arena, and the mark starts again from there: after a burst closes, at most
/// this many connections' memory (about 10 MiB) is left untrimmed. A steady load never pays. Other C libraries (musl) have no such
/// call: there it does nothing.
const TRIM_AFTER_CLOSED: i64 = 256;

/// `malloc_trim(0)`: whether glibc released memory.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() -> bool {
    // SAFETY: malloc_trim takes no pointers and only walks the allocator's own arenas under
    // their locks; it is safe to call from any thread at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}
