//! Entra ID bearer tokens for the Azure origin (`origin.azureblob.credentials: entra`), from the
//! source the environment names (`config::EntraSource`): `client-secret`
//! (`ClientSecretCredential`), `workload-identity` (`WorkloadIdentityCredential`: AKS, the
//! kubelet's token file exchanged at the authority host) or `managed-identity`
//! (`ManagedIdentityCredential`: IMDS), all from `azure_identity` over Orca's own HTTP client
//! ([`super::azure_http`]). Tokens are for the scope `https://storage.azure.com/.default`.
//!
//! Tokens are cached here as the AWS chain caches credentials ([`super::aws`]), with its
//! thresholds: azure_identity's own cache refreshes inline, on the caller's request, once a
//! token is within 5 minutes of its expiry. Here requests go on with the cached token until
//! it is within [`EXPIRED_WITHIN`] of expiry; from [`REFRESH_BEFORE`] before it, the first
//! request to notice starts one refresh in the background (azure_identity's cache then finds
//! the token due and asks the endpoint). Only a request that finds no usable token waits, for
//! one fetch shared by all waiters.

use super::aws::{EXPIRED_WITHIN, REFRESH_BEFORE};
use super::azure_http::OrcaAzureHttp;
use crate::config::EntraSource;
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::{ClientOptions, ExponentialRetryOptions, RetryOptions, Transport};
use azure_identity::{
    ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use parking_lot::Mutex;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The scope of Azure Storage's data plane.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

/// After a failed background refresh, the next one starts no sooner than this.
const RETRY_REFRESH_AFTER: Duration = Duration::from_secs(5);

/// After a refresh that brought a token already due for one (a source handing out
/// short-lived tokens), the next one starts no sooner than this.
const REFRESH_AGAIN_AFTER: Duration = Duration::from_secs(30);

/// A fetch that takes longer is abandoned (IMDS retries take up to about a minute).
const FETCH_DEADLINE: Duration = Duration::from_secs(90);

/// Why no token could be had. Cheap to clone: the callers that waited for one fetch share it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("origin.azureblob: no Entra ID token from {source_name}: {detail}")]
pub struct EntraError {
    /// `client-secret`, `workload-identity` or `managed-identity`.
    pub source_name: &'static str,
    /// What the credential said (azure_identity's messages carry no secret).
    pub detail: String,
}

/// A token and when it expires.
#[derive(Clone)]
struct Token {
    /// The `Authorization` header's value, `Bearer <token>`, built once per token.
    header: Arc<str>,
    expires: SystemTime,
}

/// The cached token and the refresh bookkeeping.
#[derive(Default)]
struct State {
    current: Option<Token>,
    /// A background refresh is under way.
    refreshing: bool,
    /// The last failed fetch: when, and why.
    failure: Option<(Instant, EntraError)>,
    /// No background refresh starts before this.
    quiet_until: Option<Instant>,
}

/// One Entra ID source with its cache.
pub struct EntraChain {
    source: &'static str,
    credential: Arc<dyn TokenCredential>,
    state: Mutex<State>,
    /// One fetch at a time.
    flight: tokio::sync::Mutex<()>,
    /// Fetches made.
    fetches: AtomicU64,
}

impl std::fmt::Debug for EntraChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("EntraChain")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl EntraChain {
    /// The credential `source` describes, over Orca's HTTP client. Builds only: nothing is
    /// fetched or spawned. Fails when azure_identity refuses the settings (a tenant id it
    /// cannot use, an authority host that is not https).
    pub fn new(source: &EntraSource) -> Result<Arc<Self>, EntraError> {
        // A few quick retries (0.2 s, 0.4 s, 0.8 s) rather than the SDK's minute: a failed
        // fetch is tried again by the next request or background refresh anyway. The managed
        // identity credential sets IMDS's own retry guidance over this.
        let client_options = || ClientOptions {
            transport: Some(Transport::new(Arc::new(OrcaAzureHttp::new()))),
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                initial_delay: azure_core::time::Duration::milliseconds(200),
                max_retries: 3,
                max_total_elapsed: azure_core::time::Duration::seconds(10),
                ..Default::default()
            }),
            ..Default::default()
        };
        let name = source.name();
        let refused = |e: azure_core::Error| EntraError {
            source_name: name,
            detail: e.to_string(),
        };
        let credential: Arc<dyn TokenCredential> = match source {
            EntraSource::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => ClientSecretCredential::new(
                tenant_id,
                client_id.clone(),
                Secret::new(secret.clone()),
                Some(ClientSecretCredentialOptions {
                    client_options: client_options(),
                }),
            )
            .map_err(refused)?,
            EntraSource::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                credential_options: ClientAssertionCredentialOptions {
                    client_options: client_options(),
                },
                client_id: Some(client_id.clone()),
                tenant_id: Some(tenant_id.clone()),
                token_file_path: Some(PathBuf::from(token_file)),
            }))
            .map_err(refused)?,
            EntraSource::ManagedIdentity { client_id } => {
                ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                    user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                    client_options: client_options(),
                }))
                .map_err(refused)?
            }
        };
        Ok(Arc::new(Self {
            source: name,
            credential,
            state: Mutex::new(State::default()),
            flight: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
        }))
    }

    /// The source's name (`/readyz`, the log).
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// The `Authorization` value to send now (`Bearer ...`), if there is a usable token.
    pub fn authorization(&self) -> Option<Arc<str>> {
        let state = self.state.lock();
        let token = state.current.as_ref()?;
        usable(token.expires, SystemTime::now()).then(|| token.header.clone())
    }

    /// Whether a token was fetched (and when it expires), for `/readyz`.
    pub fn has_token(&self) -> bool {
        self.authorization().is_some()
    }

    /// Why there is no usable token, when the last fetch failed and none is cached.
    pub fn problem(&self) -> Option<EntraError> {
        if self.has_token() {
            return None;
        }
        self.state.lock().failure.as_ref().map(|(_, e)| e.clone())
    }

    /// How many fetches were made.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Makes sure [`EntraChain::authorization`] has a token: returns at once when it does
    /// (starting a background refresh when it is due for one); otherwise waits for one fetch
    /// shared by every caller waiting, and returns its failure to all of them.
    pub async fn ensure(self: &Arc<Self>) -> Result<(), EntraError> {
        let now = SystemTime::now();
        let start_refresh = {
            let mut state = self.state.lock();
            match &state.current {
                Some(token) if usable(token.expires, now) => {
                    let quiet = state.quiet_until.is_some_and(|t| Instant::now() < t);
                    let start = due(token.expires, now) && !state.refreshing && !quiet;
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
                    let result = chain.fetch().await;
                    let mut state = chain.state.lock();
                    state.quiet_until = match &result {
                        Err(_) => Some(Instant::now() + RETRY_REFRESH_AFTER),
                        Ok(()) => state
                            .current
                            .as_ref()
                            .filter(|t| due(t.expires, SystemTime::now()))
                            .map(|_| Instant::now() + REFRESH_AGAIN_AFTER),
                    };
                    drop(state);
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "Entra ID token refresh failed; using the current token until it expires");
                    }
                });
                return Ok(());
            }
            Some(false) => return Ok(()),
            None => {}
        }
        let asked = Instant::now();
        let _one = self.flight.lock().await;
        if self.has_token() {
            return Ok(());
        }
        if let Some((at, e)) = &self.state.lock().failure {
            if *at >= asked {
                return Err(e.clone());
            }
        }
        self.fetch().await
    }

    /// Asks the credential for a token (its own cache answers while the token is more than 5
    /// minutes from expiry, so a refresh from [`REFRESH_BEFORE`] gets a new one).
    async fn fetch(&self) -> Result<(), EntraError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let asked = self.credential.get_token(&[STORAGE_SCOPE], None);
        let result = match tokio::time::timeout(FETCH_DEADLINE, asked).await {
            Ok(Ok(token)) => {
                let expires = SystemTime::UNIX_EPOCH
                    + Duration::from_secs(
                        u64::try_from(token.expires_on.unix_timestamp()).unwrap_or(0),
                    );
                Ok(Token {
                    header: format!("Bearer {}", token.token.secret()).into(),
                    expires,
                })
            }
            Ok(Err(e)) => Err(EntraError {
                source_name: self.source,
                detail: e.to_string(),
            }),
            Err(_) => Err(EntraError {
                source_name: self.source,
                detail: format!("no token within {FETCH_DEADLINE:?}"),
            }),
        };
        let mut state = self.state.lock();
        match result {
            Ok(token) => {
                let expires_in = token.expires.duration_since(SystemTime::now()).ok();
                if state.current.is_none() {
                    tracing::info!(
                        section = "origin.azureblob",
                        source = self.source,
                        ?expires_in,
                        "credentials: entra {}",
                        self.source
                    );
                } else {
                    tracing::debug!(
                        section = "origin.azureblob",
                        source = self.source,
                        ?expires_in,
                        "Entra ID token refreshed"
                    );
                }
                state.current = Some(token);
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
struct RefreshingFlag<'a>(&'a EntraChain);

impl Drop for RefreshingFlag<'_> {
    fn drop(&mut self) {
        self.0.state.lock().refreshing = false;
    }
}

/// Whether a token expiring at `expires` may still be sent at `now`.
fn usable(expires: SystemTime, now: SystemTime) -> bool {
    expires > now + EXPIRED_WITHIN
}

/// Whether a token expiring at `expires` is due for a refresh at `now`.
fn due(expires: SystemTime, now: SystemTime) -> bool {
    expires <= now + REFRESH_BEFORE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_used_until_just_before_expiry_and_refreshed_well_before() {
        let now = SystemTime::now();
        let at = |s| now + Duration::from_secs(s);
        assert!(usable(at(3600), now) && !due(at(3600), now));
        assert!(usable(at(240), now) && due(at(240), now));
        assert!(!usable(at(5), now));
    }

    #[test]
    fn a_bad_tenant_is_refused_when_built() {
        let e = EntraChain::new(&EntraSource::ClientSecret {
            tenant_id: "not a tenant/".into(),
            client_id: "c".into(),
            secret: "s3cr3t".into(),
        })
        .unwrap_err();
        assert_eq!(e.source_name, "client-secret");
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
    }
}
