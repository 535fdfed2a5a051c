//! The cache both credential sources share ([`super::aws`] and [`super::azure`]): the value a
//! source fetched (AWS credentials, an Entra ID token), used until it is within
//! [`EXPIRED_WITHIN`] of its expiry, and refreshed in the background from [`REFRESH_BEFORE`]
//! before it.
//!
//! The SDKs' own caches refresh on the caller's request once a value is due (aws-config's lazy
//! cache, azure_identity's token cache), so every request that finds it due waits. Here the
//! first request to notice starts one refresh in the background and every request (that one
//! included) goes on with the current value. Only a request that finds no usable value waits,
//! for one fetch shared by all waiters, whose failure they all get.

use async_trait::async_trait;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How long before its expiry a value is refreshed (in the background). EC2 and ECS hand out
/// new credentials at least 5 minutes before the old ones expire.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);

/// A value this close to its expiry is not used: a request signed now must still reach the
/// origin while it is valid.
pub const EXPIRED_WITHIN: Duration = Duration::from_secs(15);

/// After a failed background refresh, the next one starts no sooner than this.
const RETRY_REFRESH_AFTER: Duration = Duration::from_secs(5);

/// After a refresh that brought a value already due for one (a source that hands out
/// short-lived ones, or IMDS extending expired ones), the next one starts no sooner than this.
const REFRESH_AGAIN_AFTER: Duration = Duration::from_secs(30);

/// A source of expiring values.
#[async_trait]
pub trait Fetch: Send + Sync + 'static {
    /// What is fetched; cheap to clone.
    type Value: Clone + Send + Sync + 'static;
    /// Why nothing could be fetched; cheap to clone (waiters share it).
    type Error: Clone + std::fmt::Display + Send + Sync + 'static;
    /// What a failed refresh is logged as (`AWS credentials`, `Entra ID token`).
    const WHAT: &'static str;

    /// Fetches a new value. `previous` is the cached one, if any (for the log: a first value
    /// or a new source is worth an info line, a refresh a debug one).
    async fn fetch(&self, previous: Option<&Self::Value>) -> Result<Self::Value, Self::Error>;

    /// When `value` expires; `None`: never.
    fn expiry(value: &Self::Value) -> Option<SystemTime>;
}

/// The cached value and the refresh bookkeeping.
struct State<V, E> {
    current: Option<V>,
    /// A background refresh is under way.
    refreshing: bool,
    /// The last failed fetch: when, and why.
    failure: Option<(Instant, E)>,
    /// No background refresh starts before this.
    quiet_until: Option<Instant>,
}

/// A [`Fetch`] source with its cache.
pub struct Cached<F: Fetch> {
    source: F,
    state: Mutex<State<F::Value, F::Error>>,
    /// One fetch at a time.
    flight: tokio::sync::Mutex<()>,
    /// Fetches made.
    fetches: AtomicU64,
}

impl<F: Fetch> Cached<F> {
    /// An empty cache of `source`: nothing is fetched or spawned.
    pub fn wrap(source: F) -> Self {
        Self {
            source,
            state: Mutex::new(State {
                current: None,
                refreshing: false,
                failure: None,
                quiet_until: None,
            }),
            flight: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
        }
    }

    /// The source.
    pub fn source_of(&self) -> &F {
        &self.source
    }

    /// The value to use now, if there is a usable one.
    pub fn usable_value(&self) -> Option<F::Value> {
        let state = self.state.lock();
        let value = state.current.as_ref()?;
        usable(F::expiry(value), SystemTime::now()).then(|| value.clone())
    }

    /// `f` of the cached value, usable or not, if one was fetched.
    pub fn peek<R>(&self, f: impl FnOnce(&F::Value) -> R) -> Option<R> {
        self.state.lock().current.as_ref().map(f)
    }

    /// Why there is no usable value, when the last fetch failed and none is cached.
    pub fn problem(&self) -> Option<F::Error> {
        if self.usable_value().is_some() {
            return None;
        }
        self.state.lock().failure.as_ref().map(|(_, e)| e.clone())
    }

    /// How many fetches were made (tests and the log).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Makes sure [`Cached::usable_value`] has a value: returns at once when it does (starting
    /// a background refresh when it is due for one); otherwise waits for one fetch shared by
    /// every caller waiting, and returns its failure to all of them.
    pub async fn ensure(self: &Arc<Self>) -> Result<(), F::Error> {
        let now = SystemTime::now();
        let start_refresh = {
            let mut state = self.state.lock();
            match state.current.as_ref().map(F::expiry) {
                Some(expiry) if usable(expiry, now) => {
                    let quiet = state.quiet_until.is_some_and(|t| Instant::now() < t);
                    let start = due(expiry, now) && !state.refreshing && !quiet;
                    if start {
                        state.refreshing = true;
                    }
                    Some(start)
                }
                _ => None,
            }
        };
        match start_refresh {
            Some(true) => {
                let cache = self.clone();
                tokio::spawn(async move {
                    // Cleared however the task ends (its runtime may be dropped first).
                    let _refreshing = RefreshingFlag(&cache);
                    let _one = cache.flight.lock().await;
                    let result = cache.fetch().await;
                    let mut state = cache.state.lock();
                    state.quiet_until = match &result {
                        Err(_) => Some(Instant::now() + RETRY_REFRESH_AFTER),
                        Ok(()) => state
                            .current
                            .as_ref()
                            .filter(|v| due(F::expiry(v), SystemTime::now()))
                            .map(|_| Instant::now() + REFRESH_AGAIN_AFTER),
                    };
                    drop(state);
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "{} refresh failed; using the current ones until they expire", F::WHAT);
                    }
                });
                return Ok(());
            }
            Some(false) => return Ok(()),
            None => {}
        }
        let asked = Instant::now();
        let _one = self.flight.lock().await;
        if self.usable_value().is_some() {
            return Ok(());
        }
        if let Some((at, e)) = &self.state.lock().failure {
            if *at >= asked {
                return Err(e.clone());
            }
        }
        self.fetch().await
    }

    /// One fetch, its result kept.
    async fn fetch(&self) -> Result<(), F::Error> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let previous = self.state.lock().current.clone();
        let result = self.source.fetch(previous.as_ref()).await;
        let mut state = self.state.lock();
        match result {
            Ok(value) => {
                state.current = Some(value);
                state.failure = None;
                Ok(())
            }
            Err(e) => {
                state.failure = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }
}

/// Clears [`State::refreshing`] when a background refresh ends.
struct RefreshingFlag<'a, F: Fetch>(&'a Cached<F>);

impl<F: Fetch> Drop for RefreshingFlag<'_, F> {
    fn drop(&mut self) {
        self.0.state.lock().refreshing = false;
    }
}

/// Whether a value expiring at `expiry` may still be used at `now`.
fn usable(expiry: Option<SystemTime>, now: SystemTime) -> bool {
    expiry.is_none_or(|e| e > now + EXPIRED_WITHIN)
}

/// Whether a value expiring at `expiry` is due for a refresh at `now`.
fn due(expiry: Option<SystemTime>, now: SystemTime) -> bool {
    expiry.is_some_and(|e| e <= now + REFRESH_BEFORE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_used_until_just_before_expiry_and_refreshed_well_before() {
        let now = SystemTime::now();
        let at = |s| Some(now + Duration::from_secs(s));
        assert!(usable(at(3600), now) && !due(at(3600), now));
        assert!(usable(at(240), now) && due(at(240), now));
        assert!(!usable(at(5), now));
        assert!(usable(None, now) && !due(None, now));
    }
}
