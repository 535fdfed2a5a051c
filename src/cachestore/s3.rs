//! The `s3` cache store: chunks as objects in a shared S3-compatible bucket (MinIO, Ceph RGW,
//! VAST, S3 Express, ...), for a fleet of replicas.
//!
//! Objects are named `v1/ab/<object hash>-<index>`. A commit is `PutObject` with
//! `If-None-Match: *` and a declared `Content-Length`: 412 (or 409, a concurrent conditional
//! write) means another writer's copy is there, which is success. Hits are ranged GETs streamed
//! in the pieces the connection delivers, never one buffer per chunk.
//!
//! Two start-up checks guard the no-clobber rule. A bucket with versioning enabled or suspended
//! is refused outright: conditional puts do not protect versions, and old versions would pile
//! up. A store that ignores `If-None-Match: *` (the second put of a probe object succeeds) is
//! refused for commits, and `/readyz` says why.
//!
//! An S3 Express One Zone directory bucket (`name--zone-id--x-s3`) has no versioning: the
//! versioning check is replaced by `CreateSession`, and every request is signed with the
//! session the client keeps (see [`crate::s3client`]).

use super::buf::PIECE;
use super::fs::SpoolDir;
use super::spool::{read_piece, Spool};
use super::{CacheStore, ChunkRead, CommitOutcome, StoreError, TierState};
use crate::chunk::{ChunkId, CACHE_VERSION};
use crate::net::http::header_str;
use crate::s3client::{S3Body, S3Client, S3ClientError};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;

/// A cache store in an S3-compatible bucket.
pub struct S3Store {
    client: Arc<S3Client>,
    bucket: String,
    /// Why commits are refused (the self-test failed), if they are.
    refused: Option<String>,
    /// Where fills spool their chunks before the PUT (none: a fill holds its chunk in memory).
    spools: Option<Arc<SpoolDir>>,
}

fn client_error(context: impl Into<String>) -> impl FnOnce(S3ClientError) -> StoreError {
    let context = context.into();
    move |source| StoreError::Client { context, source }
}

fn status_error(context: impl Into<String>, status: u16, body: &[u8]) -> StoreError {
    let body = String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned();
    StoreError::Status {
        context: context.into(),
        status,
        body,
    }
}

impl S3Store {
    /// A store over `client`'s `bucket`. Run [`S3Store::check`] before serving.
    pub fn new(client: S3Client, bucket: &str) -> Self {
        Self {
            // The cache store is where S3 Express directory buckets are supported.
            client: Arc::new(client.with_directory_buckets()),
            bucket: bucket.to_string(),
            refused: None,
            spools: None,
        }
    }

    /// Fills spool their chunks to temp files in `dir` (see [`super::spool`]), and a commit
    /// PUTs the file: a fill then holds only a window of its chunk in memory.
    pub fn spool_in(&mut self, dir: SpoolDir) {
        self.spools = Some(Arc::new(dir));
    }

    /// The object name of a chunk.
    pub fn object_key(id: &ChunkId) -> String {
        let hex = id.object_hex();
        format!("v{CACHE_VERSION}/{}/{}", &hex[0..2], id.name())
    }

    /// The start-up checks. `Err` for a store that must not be used at all (missing or
    /// versioned bucket, unreachable); `Ok(Some(reason))` when commits must be refused (the
    /// conditional put is ignored); `Ok(None)` when all is well.
    pub async fn check(&self) -> Result<Option<String>, StoreError> {
        let b = &self.bucket;
        if self.client.is_directory(b) {
            // S3 Express One Zone: directory buckets have no versioning (and no
            // GetBucketVersioning). CreateSession proves the bucket and the keys.
            self.client
                .prepare(b)
                .await
                .map_err(|e| StoreError::Check(format!("cachestore.s3.bucket: {e}")))?;
        } else {
            self.check_unversioned().await?;
        }
        // Self-test: the second no-clobber put of one probe object must be refused.
        let probe = format!(
            "orca-selftest/{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let body = [Bytes::from_static(b"orca no-clobber self-test")];
        let first = self.put_if_absent(&probe, &body).await?;
        let second = self.put_if_absent(&probe, &body).await?;
        self.delete(&probe).await;
        if first != CommitOutcome::Committed {
            return Err(StoreError::Check(format!(
                "cachestore.s3: a fresh probe object {probe:?} already existed"
            )));
        }
        if second == CommitOutcome::Committed {
            return Ok(Some(format!(
                "cache store bucket {b:?} ignores If-None-Match: * (a second no-clobber put succeeded); commits are off"
            )));
        }
        Ok(None)
    }

    /// Refuses a bucket that is missing, unreachable, or has (or had) versioning on.
    async fn check_unversioned(&self) -> Result<(), StoreError> {
        let b = &self.bucket;
        let req = self
            .client
            .request("GET", b, None, "versioning=", &[])
            .await
            .map_err(|e| StoreError::Check(format!("cachestore.s3: {e}")))?;
        let resp = self.client.send(b, req, 64 * 1024).await.map_err(|e| {
            StoreError::Check(format!("cachestore.s3: bucket {b:?} unreachable: {e}"))
        })?;
        match resp.header.status.as_u16() {
            200 => {}
            404 => {
                return Err(StoreError::Check(format!(
                    "cachestore.s3.bucket: bucket {b:?} does not exist"
                )))
            }
            s => {
                return Err(StoreError::Check(format!(
                    "cachestore.s3: bucket {b:?} answered {s} to GetBucketVersioning (check the credentials)"
                )))
            }
        }
        let text = String::from_utf8_lossy(&resp.body);
        for state in ["Enabled", "Suspended"] {
            if text.contains(&format!("<Status>{state}</Status>")) {
                return Err(StoreError::Check(format!(
                    "cachestore.s3.bucket: bucket {b:?} has versioning {state}; Orca needs an unversioned bucket (no-clobber puts do not protect versions)"
                )));
            }
        }
        Ok(())
    }

    /// Turns commits off for the reason given (the self-test failed).
    pub fn refuse_commits(&mut self, reason: String) {
        self.refused = Some(reason);
    }

    async fn put_if_absent(
        &self,
        key: &str,
        pieces: &[Bytes],
    ) -> Result<CommitOutcome, StoreError> {
        let resp = self
            .client
            .put(&self.bucket, key, pieces, &[("if-none-match", "*")])
            .await
            .map_err(client_error(format!("put {key}")))?;
        match resp.header.status.as_u16() {
            200 | 201 => Ok(CommitOutcome::Committed),
            // 412: the object exists. 409: a concurrent conditional write is in progress.
            412 | 409 => Ok(CommitOutcome::Lost),
            s => Err(status_error(format!("put {key}"), s, &resp.body)),
        }
    }

    /// Deletes a chunk's object, checking the answer (S3 answers 204 whether or not it was
    /// there).
    async fn remove(&self, id: &ChunkId) -> Result<(), String> {
        let key = Self::object_key(id);
        let req = self
            .client
            .request("DELETE", &self.bucket, Some(&key), "", &[])
            .await
            .map_err(|e| format!("delete {key}: {e}"))?;
        let resp = self
            .client
            .send(&self.bucket, req, 64 * 1024)
            .await
            .map_err(|e| format!("delete {key}: {e}"))?;
        match resp.header.status.as_u16() {
            200 | 204 | 404 => Ok(()),
            s => Err(status_error(format!("delete {key}"), s, &resp.body).to_string()),
        }
    }

    /// [`S3Store::put_if_absent`] of a chunk spooled to a file, read a piece at a time.
    async fn put_spool_if_absent(
        &self,
        key: &str,
        spool: &Spool,
        len: u64,
    ) -> Result<CommitOutcome, StoreError> {
        let file = spool.file().clone();
        let mut pos = 0u64;
        let mut next = || {
            let (file, at) = (file.clone(), pos);
            let want = (len - at).min(PIECE as u64) as usize;
            pos += want as u64;
            async move {
                if want == 0 {
                    return Ok(None);
                }
                read_piece(&file, at, want)
                    .await
                    .map(Some)
                    .map_err(std::io::Error::other)
            }
        };
        let resp = self
            .client
            .put_body(&self.bucket, key, len, &[("if-none-match", "*")], &mut next)
            .await
            .map_err(client_error(format!("put {key}")))?;
        match resp.header.status.as_u16() {
            200 | 201 => Ok(CommitOutcome::Committed),
            412 | 409 => Ok(CommitOutcome::Lost),
            s => Err(status_error(format!("put {key}"), s, &resp.body)),
        }
    }

    async fn delete(&self, key: &str) {
        if let Ok(req) = self
            .client
            .request("DELETE", &self.bucket, Some(key), "", &[])
            .await
        {
            let _ = self.client.send(&self.bucket, req, 64 * 1024).await;
        }
    }
}

#[async_trait]
impl CacheStore for S3Store {
    async fn stat(&self, id: &ChunkId) -> Result<Option<u64>, StoreError> {
        let key = Self::object_key(id);
        let req = self
            .client
            .request("HEAD", &self.bucket, Some(&key), "", &[])
            .await
            .map_err(client_error(format!("stat {key}")))?;
        let resp = self
            .client
            .send(&self.bucket, req, 64 * 1024)
            .await
            .map_err(|e| client_error(format!("stat {key}"))(e.into()))?;
        match resp.header.status.as_u16() {
            200 => Ok(header_str(&resp.header, "content-length").and_then(|v| v.parse().ok())),
            404 => Ok(None),
            s => Err(status_error(format!("stat {key}"), s, &resp.body)),
        }
    }

    async fn read(
        &self,
        id: &ChunkId,
        expected_len: u64,
        from: u64,
        to: u64,
    ) -> Result<Option<Box<dyn ChunkRead>>, StoreError> {
        let key = Self::object_key(id);
        let to = to.min(expected_len);
        if from >= to {
            return Ok(Some(Box::new(S3Reader {
                body: None,
                left: 0,
            })));
        }
        let (header, body) = self
            .client
            .get_stream(&self.bucket, &key, Some((from, to - 1)))
            .await
            .map_err(client_error(format!("get {key}")))?;
        let whole = from == 0 && to == expected_len;
        let range_answer = match header.status.as_u16() {
            206 => match header_str(&header, "content-range") {
                Some(r) => Some(r.trim()),
                None => {
                    return Err(StoreError::Protocol {
                        context: format!("get {key}"),
                        detail: "a 206 without Content-Range".into(),
                    })
                }
            },
            // A 200 is the whole object: usable only when the whole chunk was asked for (a
            // store that ignores `Range` must never have its first bytes served as others).
            200 if whole => None,
            200 => {
                return Err(StoreError::Protocol {
                    context: format!("get {key} bytes {from}-{}", to - 1),
                    detail: "the store ignored Range and answered the whole object".into(),
                })
            }
            404 => return Ok(None),
            s => {
                let text = body.text().await;
                return Err(status_error(format!("get {key}"), s, text.as_bytes()));
            }
        };
        // The stored object must have the chunk's exact length: `Content-Range`'s total for a
        // 206, `Content-Length` for a 200.
        let total = match range_answer {
            Some(r) => r.rsplit('/').next().and_then(|t| t.parse::<u64>().ok()),
            None => header_str(&header, "content-length").and_then(|v| v.trim().parse().ok()),
        };
        if total != Some(expected_len) {
            drop(body);
            self.delete(&key).await;
            return Err(StoreError::Corrupt {
                name: id.name(),
                found: total.unwrap_or(0),
                expected: expected_len,
            });
        }
        // And a 206 must carry exactly the bytes asked for.
        if let Some(r) = range_answer {
            let want = format!("bytes {from}-{}/{expected_len}", to - 1);
            if r != want {
                return Err(StoreError::Protocol {
                    context: format!("get {key}"),
                    detail: format!("Content-Range {r:?}, expected {want:?}"),
                });
            }
        }
        Ok(Some(Box::new(S3Reader {
            body: Some(body),
            left: to - from,
        })))
    }

    async fn commit(
        &self,
        id: &ChunkId,
        pieces: Vec<Bytes>,
        len: u64,
    ) -> Result<CommitOutcome, StoreError> {
        super::check_commit_len(id, &pieces, len)?;
        if let Some(reason) = &self.refused {
            return Err(StoreError::Check(reason.clone()));
        }
        self.put_if_absent(&Self::object_key(id), &pieces).await
    }

    async fn spool(&self, id: &ChunkId, _len: u64) -> Result<Option<Spool>, StoreError> {
        let Some(dir) = self.spools.clone() else {
            return Ok(None);
        };
        let id = id.clone();
        tokio::task::spawn_blocking(move || dir.spool(&id).map(Some))
            .await
            .map_err(|e| StoreError::io("spool task", std::io::Error::other(e)))?
    }

    async fn commit_spool(
        &self,
        id: &ChunkId,
        spool: Arc<Spool>,
        len: u64,
    ) -> Result<CommitOutcome, StoreError> {
        if let Some(reason) = &self.refused {
            return Err(StoreError::Check(reason.clone()));
        }
        let key = Self::object_key(id);
        let found = spool
            .file()
            .metadata()
            .map_err(|e| StoreError::io(format!("stat {}", spool.path().display()), e))?
            .len();
        if found != len {
            return Err(StoreError::LengthMismatch {
                name: id.name(),
                got: found,
                declared: len,
            });
        }
        self.put_spool_if_absent(&key, &spool, len).await
    }

    fn prefetch_hits(&self) -> bool {
        true
    }

    fn driver(&self) -> &'static str {
        "s3"
    }

    async fn locate(&self, id: &ChunkId) -> Vec<TierState> {
        vec![TierState {
            tier: "s3",
            shared: true,
            bytes: self.stat(id).await.map_err(|e| e.to_string()),
        }]
    }

    async fn purge(&self, id: &ChunkId, shared: bool) -> Vec<TierState> {
        if !shared {
            return Vec::new();
        }
        let bytes = match self.stat(id).await {
            Ok(Some(len)) => self.remove(id).await.map(|()| Some(len)),
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        };
        vec![TierState {
            tier: "s3",
            shared: true,
            bytes,
        }]
    }
}

/// Streams a ranged GET of a stored chunk; a body that ends early is an error.
struct S3Reader {
    body: Option<S3Body>,
    left: u64,
}

#[async_trait]
impl ChunkRead for S3Reader {
    async fn next_piece(&mut self) -> Result<Option<Bytes>, StoreError> {
        let Some(body) = self.body.as_mut() else {
            return Ok(None);
        };
        match body.next().await.map_err(client_error("read chunk"))? {
            Some(piece) => {
                let n = (piece.len() as u64).min(self.left);
                self.left -= n;
                Ok(Some(piece.slice(..n as usize)))
            }
            None if self.left == 0 => {
                self.body = None;
                Ok(None)
            }
            None => Err(StoreError::io(
                "read chunk",
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{} bytes missing", self.left),
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_keys_are_versioned_and_fanned_out() {
        let id = ChunkId::from_fields("o", "b", "k", "e", 10, 3);
        let key = S3Store::object_key(&id);
        assert!(key.starts_with(&format!("v1/{}/", &id.object_hex()[..2])));
        assert!(key.ends_with("-3"));
    }
}
