//! A reader that keeps the pieces of a whole chunk as it passes them on, so that a tier can
//! admit the chunk once every byte has gone through: the RAM tier (`ram`) and the local tier in
//! front of a shared store (`tiered`). It keeps references to the pieces, never copies, on the
//! client's path; what the tier does with them (a copy into one buffer, a commit to disk) runs
//! in the background.

use super::{ChunkRead, StoreError};
use async_trait::async_trait;
use bytes::Bytes;

/// A tier's admission of one chunk, granted before the read began.
pub(crate) trait Admit: Send + Sync {
    /// The chunk's length: the pieces must add up to exactly this.
    fn chunk_len(&self) -> u64;

    /// Every byte has passed through: admit them (in the background). An admission dropped
    /// without this call admits nothing and releases what it holds.
    fn admit(self: Box<Self>, pieces: Vec<Bytes>);
}

struct Kept {
    admission: Box<dyn Admit>,
    pieces: Vec<Bytes>,
    got: u64,
}

/// Wraps a reader of a whole chunk; admits it when the last byte passes through. A read that
/// fails, ends short or runs long admits nothing.
pub(crate) struct Admitting {
    inner: Box<dyn ChunkRead>,
    /// Overrides the inner reader's prefetch hint (`None`: the inner reader's).
    prefetch: Option<bool>,
    kept: Option<Kept>,
}

impl Admitting {
    /// Wraps `inner`, a reader of the whole chunk `admission` is for (`None`: nothing to admit,
    /// the wrapper only passes the pieces on).
    pub(crate) fn new(inner: Box<dyn ChunkRead>, admission: Option<Box<dyn Admit>>) -> Self {
        Self {
            inner,
            prefetch: None,
            kept: admission.map(|admission| Kept {
                admission,
                pieces: Vec::new(),
                got: 0,
            }),
        }
    }

    /// Reports `prefetch` as the reader's prefetch hint, whatever the inner reader says.
    pub(crate) fn with_prefetch(mut self, prefetch: bool) -> Self {
        self.prefetch = Some(prefetch);
        self
    }
}

#[async_trait]
impl ChunkRead for Admitting {
    async fn next_piece(&mut self) -> Result<Option<Bytes>, StoreError> {
        let piece = match self.inner.next_piece().await {
            Ok(p) => p,
            Err(e) => {
                self.kept = None;
                return Err(e);
            }
        };
        match &piece {
            Some(p) => {
                if let Some(kept) = &mut self.kept {
                    kept.got += p.len() as u64;
                    let len = kept.admission.chunk_len();
                    if kept.got > len {
                        // More bytes than the chunk has: nothing of it is admitted.
                        self.kept = None;
                    } else {
                        kept.pieces.push(p.clone());
                        if kept.got == len {
                            // Every byte is here: admit now (the client may never ask past
                            // the last byte).
                            if let Some(kept) = self.kept.take() {
                                kept.admission.admit(kept.pieces);
                            }
                        }
                    }
                }
            }
            // Ended short of the chunk's length: nothing is admitted.
            None => self.kept = None,
        }
        Ok(piece)
    }

    fn prefetch_hint(&self) -> Option<bool> {
        self.prefetch.or_else(|| self.inner.prefetch_hint())
    }
}
