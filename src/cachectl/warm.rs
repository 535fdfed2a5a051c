//! Warm jobs: enumerate a prefix (or one object) at the origin and fill every chunk not yet
//! cached, each through its coordinator, as a client's read would.
//!
//! A job runs in the ops service's runtime. It lists the prefix a page at a time (so its
//! memory does not grow with the prefix), pins each object with the metadata cache's HEAD (the
//! same version reads pin), and asks for each chunk the store does not hold: the coordinator's
//! fill service when that is a peer, else this replica's own (in-process), exactly as the
//! edge's pipeline does. The coordinator fetches a chunk from the origin once, fleet-wide,
//! whoever else asks; a chunk it already holds costs no origin request. At most the job's
//! concurrency of chunks are asked at once. The bytes are drained and dropped here: the
//! coordinator stores them.

use super::CacheCtl;
use crate::chunk::{chunk_count, Chunk, ObjectVersion};
use crate::error::xml_text;
use crate::fill::FillError;
use crate::metrics::ChunkSource;
use crate::origin::{ListRequest, OriginError};
use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// Error messages kept per job (the count is always complete).
const KEPT_ERRORS: usize = 10;

/// Keys asked per listing page.
const LIST_PAGE: u32 = 1000;

/// What a warm job covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WarmTarget {
    /// The bucket (container).
    pub bucket: String,
    /// Every object whose key starts with this (empty: the whole bucket).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Exactly this object (no listing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Listing and filling.
    Running,
    /// Every chunk is cached (or was tried: see `errors`).
    Done,
    /// Stopped by `DELETE /cache/jobs/{id}`.
    Cancelled,
}

/// Counters of a job, readable while it runs.
#[derive(Default)]
struct Progress {
    objects_total: AtomicU64,
    objects_done: AtomicU64,
    chunks_total: AtomicU64,
    chunks_done: AtomicU64,
    chunks_fetched: AtomicU64,
    chunks_cached: AtomicU64,
    bytes_total: AtomicU64,
    bytes_done: AtomicU64,
    errors: AtomicU64,
    listing_complete: AtomicBool,
}

/// One warm job.
pub struct Job {
    /// Its id (16 hex digits).
    pub id: String,
    target: WarmTarget,
    concurrency: usize,
    started_at: u64,
    finished_at: AtomicU64,
    progress: Progress,
    state: Mutex<JobState>,
    error_samples: Mutex<Vec<String>>,
    cancel: watch::Sender<bool>,
}

/// A done/total pair.
#[derive(Serialize)]
struct Count {
    done: u64,
    total: u64,
}

/// A job as `GET /cache/jobs/{id}` answers it.
#[derive(Serialize)]
pub struct JobView {
    id: String,
    state: JobState,
    #[serde(flatten)]
    target: WarmTarget,
    concurrency: usize,
    /// Whether the listing has ended (until then the totals grow).
    listing_complete: bool,
    objects: Count,
    chunks: Count,
    /// Chunks a coordinator fetched from the origin for this job.
    chunks_fetched: u64,
    /// Chunks already cached (here, in the shared store, or at their coordinator).
    chunks_cached: u64,
    bytes: Count,
    errors: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    error_samples: Vec<String>,
    /// Unix seconds.
    started_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<u64>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Job {
    fn new(target: WarmTarget, concurrency: usize) -> Self {
        Self {
            id: format!("{:016x}", rand::random::<u64>()),
            target,
            concurrency,
            started_at: now_secs(),
            finished_at: AtomicU64::new(0),
            progress: Progress::default(),
            state: Mutex::new(JobState::Running),
            error_samples: Mutex::new(Vec::new()),
            cancel: watch::channel(false).0,
        }
    }

    /// The job's state now.
    pub fn state(&self) -> JobState {
        *self.state.lock()
    }

    /// Asks the job to stop (it stops at once: chunks in flight are abandoned).
    pub fn cancel(&self) {
        self.cancel.send_replace(true);
    }

    fn error(&self, message: String) {
        self.progress.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(job = %self.id, error = %message, "warm job error");
        let mut samples = self.error_samples.lock();
        if samples.len() < KEPT_ERRORS {
            samples.push(message);
        }
    }

    fn finish(&self, state: JobState) {
        *self.state.lock() = state;
        self.finished_at.store(now_secs(), Ordering::Relaxed);
    }

    /// The job's progress as JSON-ready values.
    pub fn view(&self) -> JobView {
        let p = &self.progress;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let finished = get(&self.finished_at);
        JobView {
            id: self.id.clone(),
            state: self.state(),
            target: self.target.clone(),
            concurrency: self.concurrency,
            listing_complete: p.listing_complete.load(Ordering::Relaxed),
            objects: Count {
                done: get(&p.objects_done),
                total: get(&p.objects_total),
            },
            chunks: Count {
                done: get(&p.chunks_done),
                total: get(&p.chunks_total),
            },
            chunks_fetched: get(&p.chunks_fetched),
            chunks_cached: get(&p.chunks_cached),
            bytes: Count {
                done: get(&p.bytes_done),
                total: get(&p.bytes_total),
            },
            errors: get(&p.errors),
            error_samples: self.error_samples.lock().clone(),
            started_at: self.started_at,
            finished_at: (finished > 0).then_some(finished),
        }
    }
}

/// Why a job was not started.
#[derive(Debug, PartialEq, Eq)]
pub enum StartError {
    /// `ops.max_jobs` jobs are running.
    TooMany(usize),
}

/// The replica's warm jobs: at most `ops.max_jobs` running and `ops.kept_jobs` finished ones.
#[derive(Default)]
pub struct Jobs {
    /// By id; finished ones leave oldest first.
    jobs: Mutex<BTreeMap<String, Arc<Job>>>,
    /// Ids of finished jobs, oldest first.
    finished: Mutex<std::collections::VecDeque<String>>,
}

impl Jobs {
    /// A job by id.
    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.jobs.lock().get(id).cloned()
    }

    /// Every kept job, running ones included.
    pub fn all(&self) -> Vec<Arc<Job>> {
        let mut all: Vec<_> = self.jobs.lock().values().cloned().collect();
        all.sort_by_key(|j| j.started_at);
        all
    }

    fn admit(&self, job: Arc<Job>, max_running: usize) -> Result<(), StartError> {
        let mut jobs = self.jobs.lock();
        let running = jobs
            .values()
            .filter(|j| j.state() == JobState::Running)
            .count();
        if running >= max_running {
            return Err(StartError::TooMany(max_running));
        }
        jobs.insert(job.id.clone(), job);
        Ok(())
    }

    fn retire(&self, id: &str, kept: usize) {
        let mut finished = self.finished.lock();
        finished.push_back(id.to_string());
        while finished.len() > kept {
            if let Some(old) = finished.pop_front() {
                self.jobs.lock().remove(&old);
            }
        }
    }
}

/// Starts a warm job of `target` with `concurrency` chunks in flight (already capped).
pub fn start(
    ctl: &Arc<CacheCtl>,
    target: WarmTarget,
    concurrency: usize,
) -> Result<Arc<Job>, StartError> {
    let job = Arc::new(Job::new(target, concurrency));
    ctl.jobs.admit(job.clone(), ctl.orca.config.ops.max_jobs)?;
    tracing::info!(job = %job.id, target = ?job.target, concurrency, "warm job started");
    let (ctl, running) = (ctl.clone(), job.clone());
    tokio::spawn(async move {
        let mut cancelled = running.cancel.subscribe();
        let state = tokio::select! {
            () = run(&ctl, &running) => JobState::Done,
            _ = cancelled.wait_for(|c| *c) => JobState::Cancelled,
        };
        running.finish(state);
        let v = running.view();
        tracing::info!(job = %running.id, ?state, chunks = v.chunks.done, fetched = v.chunks_fetched, errors = v.errors, "warm job ended");
        ctl.jobs.retire(&running.id, ctl.orca.config.ops.kept_jobs);
    });
    Ok(job)
}

/// Lists and warms; returns when every chunk was tried.
async fn run(ctl: &Arc<CacheCtl>, job: &Arc<Job>) {
    let permits = Arc::new(Semaphore::new(job.concurrency));
    let mut tasks = JoinSet::new();
    let target = &job.target;
    if let Some(key) = &target.key {
        job.progress.objects_total.fetch_add(1, Ordering::Relaxed);
        job.progress.listing_complete.store(true, Ordering::Relaxed);
        warm_object(ctl, job, key, None, &permits, &mut tasks).await;
    } else {
        let mut token = None;
        loop {
            let request = ListRequest {
                v2: true,
                prefix: target.prefix.clone().filter(|p| !p.is_empty()),
                max_keys: Some(LIST_PAGE),
                continuation_token: token.take(),
                ..ListRequest::default()
            };
            let page = match ctl.orca.origin.list(&target.bucket, &request).await {
                Ok(body) => parse_page(&body),
                Err(e) => {
                    job.error(format!("listing {}: {e}", target.bucket));
                    break;
                }
            };
            for (_, size) in &page.objects {
                job.progress.objects_total.fetch_add(1, Ordering::Relaxed);
                job.progress.bytes_total.fetch_add(*size, Ordering::Relaxed);
            }
            for (key, size) in page.objects {
                warm_object(ctl, job, &key, Some(size), &permits, &mut tasks).await;
            }
            match page.next {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        job.progress.listing_complete.store(true, Ordering::Relaxed);
    }
    while tasks.join_next().await.is_some() {}
}

/// Pins one object and queues its chunks (each waits for one of the job's permits).
async fn warm_object(
    ctl: &Arc<CacheCtl>,
    job: &Arc<Job>,
    key: &str,
    listed_size: Option<u64>,
    permits: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
) {
    let p = &job.progress;
    let bucket = &job.target.bucket;
    let meta = match ctl.orca.metadata.get(bucket, key).await {
        Ok(meta) => meta,
        Err(e) => {
            job.error(format!("{bucket}/{key}: {e}"));
            p.objects_done.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    // The HEAD's size is the one reads split by; the listing's may be older.
    let listed = listed_size.unwrap_or(0);
    if meta.size >= listed {
        p.bytes_total
            .fetch_add(meta.size - listed, Ordering::Relaxed);
    } else {
        p.bytes_total
            .fetch_sub(listed - meta.size, Ordering::Relaxed);
    }
    let chunk_size = ctl.orca.config.chunking.chunk_size_for(meta.size);
    let count = chunk_count(meta.size, chunk_size);
    p.chunks_total.fetch_add(count, Ordering::Relaxed);
    let version = Arc::new(ObjectVersion {
        origin_id: ctl.orca.config.origin.id.clone(),
        bucket: bucket.clone(),
        key: key.to_string(),
        etag: meta.etag.clone(),
        size: meta.size,
    });
    let left = Arc::new(AtomicU64::new(count));
    if count == 0 {
        p.objects_done.fetch_add(1, Ordering::Relaxed);
        return;
    }
    for index in 0..count {
        let Some(chunk) = Chunk::new(version.clone(), chunk_size, index) else {
            continue;
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        // Reap finished tasks, so the set holds at most `concurrency` of them.
        while tasks.try_join_next().is_some() {}
        let (ctl, job, left) = (ctl.clone(), job.clone(), left.clone());
        tasks.spawn(async move {
            let result = warm_chunk(&ctl, &chunk).await;
            let p = &job.progress;
            match result {
                Ok(ChunkSource::Origin) => {
                    p.chunks_fetched.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {
                    p.chunks_cached.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => job.error(format!(
                    "{}/{} chunk {}: {}",
                    chunk.version.bucket, chunk.version.key, chunk.id.index, e
                )),
            }
            p.chunks_done.fetch_add(1, Ordering::Relaxed);
            p.bytes_done.fetch_add(chunk.len, Ordering::Relaxed);
            if left.fetch_sub(1, Ordering::Relaxed) == 1 {
                p.objects_done.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
}

/// The sink of a fill asked for no bytes of its chunk.
struct NoBytes;

impl crate::fill::PieceSink for NoBytes {
    async fn put(&self, _piece: Bytes) -> bool {
        true
    }
}

/// Makes sure one chunk is cached: nothing when this replica's store holds it; else asks its
/// coordinator (a peer, or this replica) to fill it, as the edge's pipeline does, and drains
/// the answer. Where the bytes came from says whether the origin was asked.
async fn warm_chunk(ctl: &CacheCtl, chunk: &Chunk) -> Result<ChunkSource, OriginError> {
    if ctl.orca.storage.holds(chunk).await {
        return Ok(ChunkSource::CacheStore);
    }
    // The fill's request id, as an edge request's would travel (docs/cluster.md).
    let rid = crate::error::request_id();
    // A range of no bytes drains and checks the whole body, and puts nothing.
    let tx = NoBytes;
    let mut sent = 0u64;
    if let Some(peer) = ctl.orca.cluster.coordinator(&chunk.id) {
        if !ctl.fills.is_down(&peer) {
            let asked = match ctl.fills.peer(&peer).await {
                Ok(client) => client.fetch(chunk, (0, 0), &rid, &tx, &mut sent).await,
                Err(e) => Err(e),
            };
            match asked {
                Ok(source) => return Ok(source),
                Err(FillError::Origin(e)) if e != OriginError::Timeout => return Err(e),
                Err(e) => {
                    tracing::debug!(chunk = %chunk.id, peer, error = ?e, "warm: peer fill failed; filling locally");
                    if matches!(e, FillError::Unreachable(_)) {
                        ctl.fills.mark_down(&peer);
                    }
                }
            }
        }
    }
    ctl.fills
        .local()
        .fetch(chunk, (0, 0), &rid, &tx, &mut sent)
        .await
        .map_err(FillError::into_origin)
}

/// One page of a ListObjectsV2 answer: the objects (key, size) and the next token.
struct Page {
    objects: Vec<(String, u64)>,
    next: Option<String>,
}

/// Reads a ListObjectsV2 answer (S3's, or the Azure driver's translation of List Blobs).
fn parse_page(body: &[u8]) -> Page {
    let text = String::from_utf8_lossy(body);
    let mut objects = Vec::new();
    for part in text.split("<Contents>").skip(1) {
        let part = part.split("</Contents>").next().unwrap_or("");
        let key = xml_text(part.as_bytes(), "Key");
        let size = xml_text(part.as_bytes(), "Size").and_then(|s| s.parse::<u64>().ok());
        if let (Some(key), Some(size)) = (key, size) {
            objects.push((key, size));
        }
    }
    let truncated = xml_text(body, "IsTruncated").is_some_and(|t| t == "true");
    let next = xml_text(body, "NextContinuationToken").filter(|t| truncated && !t.is_empty());
    Page { objects, next }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_give_keys_sizes_and_the_next_token() {
        let xml = b"<?xml version=\"1.0\"?><ListBucketResult><Name>b</Name><IsTruncated>true</IsTruncated>\
            <Contents><Key>a&amp;b</Key><Size>10</Size><ETag>&quot;x&quot;</ETag></Contents>\
            <Contents><Key>c</Key><Size>0</Size></Contents>\
            <NextContinuationToken>tok</NextContinuationToken></ListBucketResult>";
        let page = parse_page(xml);
        assert_eq!(
            page.objects,
            vec![("a&b".to_string(), 10), ("c".to_string(), 0)]
        );
        assert_eq!(page.next.as_deref(), Some("tok"));
        let last =
            parse_page(b"<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>");
        assert!(last.objects.is_empty() && last.next.is_none());
    }

    #[test]
    fn finished_jobs_are_kept_up_to_the_bound_and_running_ones_capped() {
        let jobs = Jobs::default();
        let target = WarmTarget {
            bucket: "b".into(),
            prefix: None,
            key: None,
        };
        let a = Arc::new(Job::new(target.clone(), 1));
        let b = Arc::new(Job::new(target.clone(), 1));
        jobs.admit(a.clone(), 1).unwrap();
        assert_eq!(jobs.admit(b.clone(), 1), Err(StartError::TooMany(1)));
        a.finish(JobState::Done);
        jobs.retire(&a.id, 1);
        jobs.admit(b.clone(), 1).unwrap();
        b.finish(JobState::Cancelled);
        jobs.retire(&b.id, 1);
        assert!(jobs.get(&a.id).is_none(), "the oldest finished job leaves");
        assert_eq!(
            jobs.get(&b.id).map(|j| j.state()),
            Some(JobState::Cancelled)
        );
    }
}
