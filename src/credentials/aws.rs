//! The AWS default credential chain, for an S3 section (`origin.s3`, `cachestore.s3`) that
//! sets no keys: the providers of `aws-config`, tried in the SDKs' order, each tagged with the
//! name Orca reports (`/readyz`, the log): `env` (`AWS_ACCESS_KEY_ID`...), `profile` (the shared
//! config and credentials files with `AWS_PROFILE`: keys, `role_arn` + `source_profile`,
//! `credential_process`), `web-identity` (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`: EKS
//! IRSA), `container` (`AWS_CONTAINER_CREDENTIALS_FULL_URI` / `_RELATIVE_URI` with
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN(_FILE)`: ECS, EKS Pod Identity) and `imds` (EC2 IMDSv2).
//!
//! Credentials are cached here, not by the SDK's identity cache: the SDK's lazy cache makes
//! every caller wait for a refresh once the credentials are inside its buffer. Here requests
//! sign with the cached credentials until they are within [`EXPIRED_WITHIN`] of their expiry;
//! from [`REFRESH_BEFORE`] before it, the first request to notice starts one refresh in the
//! background and every request (that one included) goes on signing with the current ones.
//! Only a request that finds no usable credentials waits, for one load shared by all waiters.

use super::http::OrcaHttpClient;
use crate::config::S3Credentials;
use aws_config::ecs::EcsCredentialsProvider;
use aws_config::environment::credentials::EnvironmentVariableCredentialsProvider;
use aws_config::imds::credentials::ImdsCredentialsProvider;
use aws_config::profile::ProfileFileCredentialsProvider;
use aws_config::provider_config::ProviderConfig;
use aws_config::web_identity_token::WebIdentityTokenCredentialsProvider;
use aws_config::Region;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_smithy_types::error::display::DisplayErrorContext;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How long before their expiry temporary credentials are refreshed (in the background).
/// EC2 and ECS hand out new credentials at least 5 minutes before the old ones expire.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);

/// Credentials this close to their expiry are not used to sign: a request signed now must
/// still reach the origin while they are valid.
pub const EXPIRED_WITHIN: Duration = Duration::from_secs(15);

/// After a failed background refresh, the next one starts no sooner than this.
const RETRY_REFRESH_AFTER: Duration = Duration::from_secs(5);

/// After a refresh that brought credentials already due for one (a source that hands out
/// short-lived ones, or IMDS extending expired ones), the next one starts no sooner than this.
const REFRESH_AGAIN_AFTER: Duration = Duration::from_secs(30);

/// Why no credentials could be had from the chain. Cheap to clone: the callers that waited
/// for one load share its failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{section}: no AWS credentials from the default chain: {detail}")]
pub struct ChainError {
    /// `origin.s3` or `cachestore.s3`.
    pub section: &'static str,
    /// What the providers said (never a secret: the providers' errors carry none).
    pub detail: String,
}

/// The cached credentials, where they came from, and the refresh bookkeeping.
#[derive(Default)]
struct State {
    current: Option<(Credentials, &'static str)>,
    /// A background refresh is under way.
    refreshing: bool,
    /// The last failed load: when, and why.
    failure: Option<(Instant, ChainError)>,
    /// No background refresh starts before this.
    quiet_until: Option<Instant>,
}

/// The default chain of one S3 section, with its cache.
pub struct AwsChain {
    section: &'static str,
    links: Vec<(&'static str, SharedCredentialsProvider)>,
    state: Mutex<State>,
    /// One load at a time.
    flight: tokio::sync::Mutex<()>,
    /// Loads made (each one asks the providers until one answers).
    loads: AtomicU64,
}

impl std::fmt::Debug for AwsChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials themselves.
        f.debug_struct("AwsChain")
            .field("section", &self.section)
            .field("source", &self.source())
            .finish()
    }
}

impl AwsChain {
    /// The chain of a configuration section whose credentials are `credentials`: one for
    /// [`S3Credentials::DefaultChain`], none for keys or anonymous requests.
    pub fn for_section(
        section: &'static str,
        credentials: &S3Credentials,
        region: &str,
    ) -> Option<Arc<Self>> {
        matches!(credentials, S3Credentials::DefaultChain).then(|| Self::new(section, region))
    }

    /// The chain for `section`, reading the process environment and the shared files. STS
    /// (web identity, `role_arn`) is asked in `AWS_REGION` (or `AWS_DEFAULT_REGION`), else in
    /// the section's `region`. Builds only: nothing is fetched or spawned.
    pub fn new(section: &'static str, region: &str) -> Arc<Self> {
        let region = ["AWS_REGION", "AWS_DEFAULT_REGION"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|r| !r.trim().is_empty()))
            .unwrap_or_else(|| region.to_string());
        let conf = ProviderConfig::default()
            .with_http_client(OrcaHttpClient)
            .with_region(Some(Region::new(region)));
        let links: Vec<(&'static str, SharedCredentialsProvider)> = vec![
            (
                "env",
                SharedCredentialsProvider::new(EnvironmentVariableCredentialsProvider::new()),
            ),
            (
                "profile",
                SharedCredentialsProvider::new(
                    ProfileFileCredentialsProvider::builder()
                        .configure(&conf)
                        .build(),
                ),
            ),
            (
                "web-identity",
                SharedCredentialsProvider::new(
                    WebIdentityTokenCredentialsProvider::builder()
                        .configure(&conf)
                        .build(),
                ),
            ),
            (
                "container",
                SharedCredentialsProvider::new(
                    EcsCredentialsProvider::builder().configure(&conf).build(),
                ),
            ),
            (
                "imds",
                SharedCredentialsProvider::new(
                    ImdsCredentialsProvider::builder().configure(&conf).build(),
                ),
            ),
        ];
        Arc::new(Self {
            section,
            links,
            state: Mutex::new(State::default()),
            flight: tokio::sync::Mutex::new(()),
            loads: AtomicU64::new(0),
        })
    }

    /// The section this chain signs for.
    pub fn section(&self) -> &'static str {
        self.section
    }

    /// Credentials to sign with now, if there are usable ones.
    pub fn current(&self) -> Option<Credentials> {
        let state = self.state.lock();
        let (creds, _) = state.current.as_ref()?;
        usable(creds, SystemTime::now()).then(|| creds.clone())
    }

    /// The provider the current credentials came from (`env`, `profile`, `web-identity`,
    /// `container`, `imds`), if any were loaded.
    pub fn source(&self) -> Option<&'static str> {
        self.state.lock().current.as_ref().map(|(_, s)| *s)
    }

    /// Why there are no usable credentials, when the last load failed and none are cached.
    pub fn problem(&self) -> Option<ChainError> {
        if self.current().is_some() {
            return None;
        }
        self.state.lock().failure.as_ref().map(|(_, e)| e.clone())
    }

    /// How many loads were made (tests and the log).
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// Makes sure [`AwsChain::current`] has credentials: returns at once when it does
    /// (starting a background refresh when they are due for one); otherwise waits for one
    /// load shared by every caller waiting, and returns its failure to all of them.
    pub async fn ensure(self: &Arc<Self>) -> Result<(), ChainError> {
        let now = SystemTime::now();
        let start_refresh = {
            let mut state = self.state.lock();
            match &state.current {
                Some((creds, _)) if usable(creds, now) => {
                    let quiet = state.quiet_until.is_some_and(|t| Instant::now() < t);
                    let start = due(creds, now) && !state.refreshing && !quiet;
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
                let chain = self.clone();
                tokio::spawn(async move {
                    // Cleared however the task ends (its runtime may be dropped first).
                    let _refreshing = RefreshingFlag(&chain);
                    let _one = chain.flight.lock().await;
                    let result = chain.load().await;
                    let mut state = chain.state.lock();
                    state.quiet_until = match &result {
                        Err(_) => Some(Instant::now() + RETRY_REFRESH_AFTER),
                        Ok(()) => state
                            .current
                            .as_ref()
                            .filter(|(c, _)| due(c, SystemTime::now()))
                            .map(|_| Instant::now() + REFRESH_AGAIN_AFTER),
                    };
                    drop(state);
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "AWS credentials refresh failed; signing with the current ones until they expire");
                    }
                });
                return Ok(());
            }
            Some(false) => return Ok(()),
            None => {}
        }
        let asked = Instant::now();
        let _one = self.flight.lock().await;
        if self.current().is_some() {
            return Ok(());
        }
        if let Some((at, e)) = &self.state.lock().failure {
            if *at >= asked {
                return Err(e.clone());
            }
        }
        self.load().await
    }

    /// Asks the providers in order; the first that has credentials wins. A provider that is
    /// configured but fails ends the search (as in the SDKs): its error is the answer.
    async fn load(&self) -> Result<(), ChainError> {
        self.loads.fetch_add(1, Ordering::Relaxed);
        let mut skipped = Vec::new();
        let fail = |detail: String| ChainError {
            section: self.section,
            detail,
        };
        let result = 'search: {
            for (name, provider) in &self.links {
                match provider.provide_credentials().await {
                    Ok(creds) => break 'search Ok((creds, *name)),
                    Err(CredentialsError::CredentialsNotLoaded(_)) => skipped.push(*name),
                    Err(e) => {
                        break 'search Err(fail(format!("{name}: {}", DisplayErrorContext(&e))))
                    }
                }
            }
            Err(fail(format!(
                "none of {} had credentials (see docs/operations.md, Credentials)",
                skipped.join(", ")
            )))
        };
        let mut state = self.state.lock();
        match result {
            Ok((creds, name)) => {
                let expires_in = creds
                    .expiry()
                    .and_then(|e| e.duration_since(SystemTime::now()).ok());
                let changed = state.current.as_ref().map(|(_, s)| *s) != Some(name);
                if changed {
                    tracing::info!(
                        section = self.section,
                        source = name,
                        ?expires_in,
                        "credentials: {name}"
                    );
                } else {
                    tracing::debug!(
                        section = self.section,
                        source = name,
                        ?expires_in,
                        "credentials refreshed"
                    );
                }
                state.current = Some((creds, name));
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
struct RefreshingFlag<'a>(&'a AwsChain);

impl Drop for RefreshingFlag<'_> {
    fn drop(&mut self) {
        self.0.state.lock().refreshing = false;
    }
}

/// Whether `creds` may still sign at `now`.
fn usable(creds: &Credentials, now: SystemTime) -> bool {
    creds.expiry().is_none_or(|e| e > now + EXPIRED_WITHIN)
}

/// Whether `creds` are due for a refresh at `now`.
fn due(creds: &Credentials, now: SystemTime) -> bool {
    creds.expiry().is_some_and(|e| e <= now + REFRESH_BEFORE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expiring_in(secs: u64) -> Credentials {
        Credentials::new(
            "AKID",
            "secret",
            None,
            Some(SystemTime::now() + Duration::from_secs(secs)),
            "test",
        )
    }

    #[test]
    fn credentials_are_used_until_just_before_expiry_and_refreshed_well_before() {
        let now = SystemTime::now();
        let long = expiring_in(3600);
        assert!(usable(&long, now) && !due(&long, now));
        let soon = expiring_in(240);
        assert!(usable(&soon, now) && due(&soon, now));
        let almost = expiring_in(5);
        assert!(!usable(&almost, now));
        let forever = Credentials::new("AKID", "secret", None, None, "test");
        assert!(usable(&forever, now) && !due(&forever, now));
    }
}
