//! The metadata cache: what a HEAD of each object said, kept for a TTL.
//!
//! One HEAD per object is in flight at a time: the first caller leads, later callers wait for
//! its answer. A finished flight leaves the table *before* its waiters are woken, so a caller
//! arriving after that starts a fresh HEAD instead of inheriting a transient failure.
//! Successes are kept for `ttl`; answers that will not change soon (404, missing ETag,
//! unsupported blob type) for `negative_ttl`; transient failures are not kept at all.

use crate::net::retry::with_retries;
use crate::origin::{ObjectMeta, Origin, OriginError};
use lru::LruCache;
use parking_lot::Mutex;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

type HeadResult = Result<ObjectMeta, OriginError>;

enum Step {
    Join(watch::Receiver<Option<HeadResult>>),
    Lead(u64, watch::Sender<Option<HeadResult>>),
}

enum Slot {
    Ready {
        result: HeadResult,
        expires: Instant,
    },
    Flight {
        id: u64,
        rx: watch::Receiver<Option<HeadResult>>,
    },
}

/// Counts consecutive credential refusals by the origin (`/readyz` turns false at 3), and
/// remembers the last object they happened on, which [`HealthProbe`] asks again until the
/// origin accepts the credentials (an unready replica gets no traffic to do it).
#[derive(Default)]
pub struct OriginHealth {
    auth_failures: AtomicU32,
    /// What the last credential refusal was about: a bucket, and the key when it was about an
    /// object. The probe asks it again.
    last_refused: Mutex<Option<(String, Option<String>)>>,
}

impl OriginHealth {
    /// Consecutive refusals after which the replica reports not ready.
    pub const MAX_AUTH_FAILURES: u32 = 3;

    /// Records an origin answer.
    pub fn record<T>(&self, result: &Result<T, OriginError>) {
        match result {
            Err(OriginError::Auth(_)) => {
                self.auth_failures.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if !e.is_negative_cacheable() => {}
            _ => self.auth_failures.store(0, Ordering::Relaxed),
        }
    }

    /// Records an origin answer about `bucket` (and `key`, for an object): a credential
    /// refusal names what the probe asks again.
    pub fn record_for<T>(&self, bucket: &str, key: Option<&str>, result: &Result<T, OriginError>) {
        if matches!(result, Err(OriginError::Auth(_))) {
            *self.last_refused.lock() = Some((bucket.to_string(), key.map(str::to_string)));
        }
        self.record(result);
    }

    /// Whether the origin accepts Orca's credentials (fewer than 3 refusals in a row).
    pub fn credentials_ok(&self) -> bool {
        self.auth_failures.load(Ordering::Relaxed) < Self::MAX_AUTH_FAILURES
    }
}

/// The HEAD cache.
pub struct MetadataCache {
    origin: Arc<dyn Origin>,
    ttl: Duration,
    negative_ttl: Duration,
    entries: Mutex<LruCache<(String, String), Slot>>,
    next_flight: AtomicU64,
    health: Arc<OriginHealth>,
}

impl MetadataCache {
    /// A cache in front of `origin`.
    pub fn new(
        origin: Arc<dyn Origin>,
        ttl: Duration,
        negative_ttl: Duration,
        max_entries: usize,
        health: Arc<OriginHealth>,
    ) -> Self {
        Self {
            origin,
            ttl,
            negative_ttl,
            entries: Mutex::new(LruCache::new(
                NonZeroUsize::new(max_entries.max(1)).unwrap_or(NonZeroUsize::MIN),
            )),
            next_flight: AtomicU64::new(1),
            health,
        }
    }

    /// The object's metadata, from the cache or from one HEAD shared with concurrent callers.
    pub async fn get(&self, bucket: &str, key: &str) -> HeadResult {
        let k = (bucket.to_string(), key.to_string());
        // Bounded: each pass either returns or waits on a flight that then ends.
        for _ in 0..8 {
            let step = {
                let mut entries = self.entries.lock();
                match entries.get(&k) {
                    Some(Slot::Ready { result, expires }) if Instant::now() < *expires => {
                        return result.clone();
                    }
                    Some(Slot::Flight { rx, .. }) => Step::Join(rx.clone()),
                    // Claim the flight in the same critical section that found none, so two
                    // first callers never both lead.
                    _ => {
                        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
                        let (tx, rx) = watch::channel(None);
                        entries.put(k.clone(), Slot::Flight { id, rx });
                        Step::Lead(id, tx)
                    }
                }
            };
            match step {
                Step::Join(mut rx) => {
                    // The leader either sends an answer or drops its sender (cancelled); in the
                    // latter case its guard has removed the flight, so just look again.
                    if let Ok(v) = rx.wait_for(Option::is_some).await {
                        if let Some(result) = v.clone() {
                            return result;
                        }
                    }
                }
                Step::Lead(id, tx) => return self.lead(k, id, tx).await,
            }
        }
        Err(OriginError::Transient(
            "metadata lookups kept being cancelled".into(),
        ))
    }

    /// What a fresh HEAD pinned for an object, if anything, without asking the origin (`orca
    /// inspect`, `orca purge`).
    pub fn peek(&self, bucket: &str, key: &str) -> Option<ObjectMeta> {
        let k = (bucket.to_string(), key.to_string());
        match self.entries.lock().peek(&k) {
            Some(Slot::Ready {
                result: Ok(meta),
                expires,
            }) if Instant::now() < *expires => Some(meta.clone()),
            _ => None,
        }
    }

    /// Drops what is known of an object (its ETag no longer matches the origin's). A HEAD in
    /// flight is dropped too: it may have started before the change, so its answer is handed
    /// to its waiters but not kept.
    pub fn invalidate(&self, bucket: &str, key: &str) {
        let k = (bucket.to_string(), key.to_string());
        self.entries.lock().pop(&k);
    }

    async fn lead(
        &self,
        k: (String, String),
        id: u64,
        tx: watch::Sender<Option<HeadResult>>,
    ) -> HeadResult {
        let guard = FlightGuard {
            cache: self,
            key: &k,
            id,
        };
        let result = self.head_with_retries(&k.0, &k.1).await;
        self.health.record_for(&k.0, Some(&k.1), &result);
        let keep_for = match &result {
            Ok(_) => Some(self.ttl),
            Err(e) if e.is_negative_cacheable() => Some(self.negative_ttl),
            Err(_) => None,
        };
        {
            // Replace our flight with the answer (or nothing) before waking anyone.
            let mut entries = self.entries.lock();
            let ours = matches!(entries.peek(&k), Some(Slot::Flight { id: f, .. }) if *f == id);
            if ours {
                entries.pop(&k);
                if let Some(ttl) = keep_for.filter(|t| !t.is_zero()) {
                    entries.put(
                        k.clone(),
                        Slot::Ready {
                            result: result.clone(),
                            expires: Instant::now() + ttl,
                        },
                    );
                }
            }
        }
        std::mem::forget(guard);
        tx.send_replace(Some(result.clone()));
        result
    }

    async fn head_with_retries(&self, bucket: &str, key: &str) -> HeadResult {
        with_retries(OriginError::is_retryable, |attempt| async move {
            let result = self.origin.head(bucket, key).await;
            if let Err(e) = &result {
                tracing::debug!(bucket, key, attempt, error = %e, "HEAD failed");
            }
            result
        })
        .await
    }
}

/// First and longest wait between probes of an origin that refuses the credentials.
const PROBE_FIRST: Duration = Duration::from_secs(1);
const PROBE_MAX: Duration = Duration::from_secs(60);

/// Brings readiness back by itself: while the origin refuses the credentials, HEADs the last
/// refused object again, waiting 1 s, then twice as long each time up to 60 s. The first
/// answer that is not a credential refusal makes the replica ready again (a Pingora
/// background service; the credentials may have been fixed at the origin or, for sources
/// that refresh, in Orca).
pub struct HealthProbe {
    health: Arc<OriginHealth>,
    origin: Arc<dyn Origin>,
}

impl HealthProbe {
    /// A probe of `origin` for `health`.
    pub fn new(health: Arc<OriginHealth>, origin: Arc<dyn Origin>) -> Self {
        Self { health, origin }
    }

    /// One probe, if one is due: `true` when the replica is (again) healthy.
    async fn probe_once(&self) -> bool {
        if self.health.credentials_ok() {
            return true;
        }
        let Some((bucket, key)) = self.health.last_refused.lock().clone() else {
            return false;
        };
        let result = match &key {
            Some(key) => self.origin.head(&bucket, key).await.map(|_| ()),
            None => self.origin.head_bucket(&bucket).await,
        };
        tracing::info!(
            bucket,
            key,
            error = result.as_ref().err().map(|e| e.to_string()),
            "origin credentials probe"
        );
        self.health.record(&result);
        self.health.credentials_ok()
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for HealthProbe {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut wait = PROBE_FIRST;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            wait = if self.probe_once().await {
                PROBE_FIRST
            } else {
                (wait * 2).min(PROBE_MAX)
            };
        }
    }
}

/// Removes a flight whose leader was cancelled, so waiters and later callers start afresh.
struct FlightGuard<'a> {
    cache: &'a MetadataCache,
    key: &'a (String, String),
    id: u64,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut entries = self.cache.entries.lock();
        if matches!(entries.peek(self.key), Some(Slot::Flight { id, .. }) if *id == self.id) {
            entries.pop(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::OriginError;
    use async_trait::async_trait;
    use pingora::upstreams::peer::HttpPeer;
    use pingora_http::RequestHeader;
    use std::collections::VecDeque;
    use std::sync::atomic::AtomicUsize;

    /// A scripted origin for the cache's own logic (the drivers are tested against real
    /// servers); each HEAD pops the next answer after an optional gate.
    struct Scripted {
        answers: Mutex<VecDeque<HeadResult>>,
        heads: AtomicUsize,
        gate: tokio::sync::Semaphore,
    }

    #[async_trait]
    impl Origin for Scripted {
        async fn head(&self, _b: &str, _k: &str) -> HeadResult {
            self.heads.fetch_add(1, Ordering::SeqCst);
            let _p = self.gate.acquire().await;
            self.answers
                .lock()
                .pop_front()
                .unwrap_or(Err(OriginError::NotFound))
        }
        async fn list(
            &self,
            _b: &str,
            _r: &crate::origin::ListRequest,
        ) -> Result<bytes::Bytes, OriginError> {
            Err(OriginError::Timeout)
        }
        async fn head_bucket(&self, _b: &str) -> Result<(), OriginError> {
            Err(OriginError::Timeout)
        }
        async fn chunk_peer(&self, _b: &str) -> Result<HttpPeer, OriginError> {
            Err(OriginError::Timeout)
        }
        fn range_request(
            &self,
            _c: &crate::chunk::Chunk,
            _first: u64,
            _last: u64,
        ) -> Result<RequestHeader, OriginError> {
            Err(OriginError::Timeout)
        }
    }

    fn meta(etag: &str) -> ObjectMeta {
        ObjectMeta {
            size: 10,
            etag: etag.into(),
            last_modified: None,
            content_type: None,
            extra_headers: vec![],
            checksums: vec![],
        }
    }

    fn cache(answers: Vec<HeadResult>, open: bool) -> (Arc<Scripted>, MetadataCache) {
        let o = Arc::new(Scripted {
            answers: Mutex::new(answers.into()),
            heads: AtomicUsize::new(0),
            gate: tokio::sync::Semaphore::new(if open { 1000 } else { 0 }),
        });
        let c = MetadataCache::new(
            o.clone(),
            Duration::from_secs(60),
            Duration::from_secs(10),
            100,
            Arc::new(OriginHealth::default()),
        );
        (o, c)
    }

    #[tokio::test]
    async fn positive_and_negative_answers_are_kept() {
        let (o, c) = cache(vec![Ok(meta("e1")), Err(OriginError::NotFound)], true);
        assert_eq!(c.get("b", "k").await, Ok(meta("e1")));
        assert_eq!(c.get("b", "k").await, Ok(meta("e1")));
        assert_eq!(c.get("b", "gone").await, Err(OriginError::NotFound));
        assert_eq!(c.get("b", "gone").await, Err(OriginError::NotFound));
        assert_eq!(o.heads.load(Ordering::SeqCst), 2);
        c.invalidate("b", "k");
        let _ = c.get("b", "k").await;
        assert_eq!(o.heads.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn expired_entries_are_fetched_again() {
        let (o, c) = cache(vec![Ok(meta("e1")), Ok(meta("e2"))], true);
        let c = MetadataCache {
            ttl: Duration::ZERO,
            ..c
        };
        assert_eq!(c.get("b", "k").await.unwrap().etag, "e1");
        assert_eq!(c.get("b", "k").await.unwrap().etag, "e2");
        assert_eq!(o.heads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn transient_failures_are_not_replayed_to_late_callers() {
        // Three transient failures exhaust one leader's retries; the next caller must HEAD
        // again and get the success, not the stale failure.
        let transient = || Err(OriginError::Transient("503".into()));
        let (o, c) = cache(
            vec![transient(), transient(), transient(), Ok(meta("e"))],
            true,
        );
        assert!(matches!(
            c.get("b", "k").await,
            Err(OriginError::Transient(_))
        ));
        assert_eq!(c.get("b", "k").await, Ok(meta("e")));
        assert_eq!(o.heads.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_head() {
        let (o, c) = cache(vec![Ok(meta("e"))], false);
        let c = Arc::new(c);
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move { c.get("b", "k").await }));
        }
        // Let every caller reach the flight, then let the one HEAD through.
        while o.heads.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        o.gate.add_permits(1000);
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(meta("e")));
        }
        assert_eq!(o.heads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answer_invalidated_in_flight_is_not_kept() {
        let (o, c) = cache(vec![Ok(meta("old")), Ok(meta("new"))], false);
        let c = Arc::new(c);
        let first = {
            let c = c.clone();
            tokio::spawn(async move { c.get("b", "k").await })
        };
        while o.heads.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // The object changed while the HEAD was out: its answer goes to its caller only.
        c.invalidate("b", "k");
        o.gate.add_permits(1000);
        assert_eq!(first.await.unwrap().unwrap().etag, "old");
        assert_eq!(c.get("b", "k").await.unwrap().etag, "new");
        assert_eq!(o.heads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_probe_brings_readiness_back_once_the_origin_accepts() {
        // Refuses twice more, then accepts.
        let origin = Arc::new(Scripted {
            answers: Mutex::new(VecDeque::from([
                Err(OriginError::Auth(403)),
                Err(OriginError::Auth(403)),
                Ok(meta("e")),
            ])),
            heads: AtomicUsize::new(0),
            gate: tokio::sync::Semaphore::new(1000),
        });
        let health = Arc::new(OriginHealth::default());
        let probe = HealthProbe::new(health.clone(), origin.clone());
        assert!(probe.probe_once().await, "healthy: nothing to probe");
        for _ in 0..3 {
            health.record_for::<()>("b", Some("k"), &Err(OriginError::Auth(403)));
        }
        assert!(!health.credentials_ok());
        assert!(!probe.probe_once().await);
        assert!(!probe.probe_once().await);
        assert!(probe.probe_once().await, "the third probe is accepted");
        assert!(health.credentials_ok());
        // A refusal of one object (not the credentials) never counts.
        for _ in 0..5 {
            health.record::<()>(&Err(OriginError::AccessDenied));
        }
        assert!(health.credentials_ok());
    }

    #[test]
    fn health_counts_consecutive_refusals() {
        let h = OriginHealth::default();
        for _ in 0..2 {
            h.record::<()>(&Err(OriginError::Auth(403)));
        }
        assert!(h.credentials_ok());
        h.record::<()>(&Err(OriginError::Auth(403)));
        assert!(!h.credentials_ok());
        h.record(&Ok(()));
        assert!(h.credentials_ok());
    }
}
