//! Entra ID bearer tokens for the Azure origin (`origin.azureblob.credentials: entra`), from the
//! source the environment names (`config::EntraSource`): `client-secret`
//! (`ClientSecretCredential`), `workload-identity` (`WorkloadIdentityCredential`: AKS, the
//! kubelet's token file exchanged at the authority host) or `managed-identity`
//! (`ManagedIdentityCredential`: IMDS), all from `azure_identity` over Orca's own HTTP client
//! ([`super::azure_http`]). Tokens are for the scope `https://storage.azure.com/.default`.
//!
//! Tokens are cached by [`super::cache::Cached`], as the AWS chain's credentials are:
//! azure_identity's own cache refreshes inline, on the caller's request, once a token is within
//! 5 minutes of its expiry. Here requests go on with the cached token while a refresh runs in
//! the background (azure_identity's cache then finds the token due and asks the endpoint).

use super::azure_http::OrcaAzureHttp;
use super::cache::{Cached, Fetch};
use crate::config::EntraSource;
use async_trait::async_trait;
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::{ClientOptions, ExponentialRetryOptions, RetryOptions, Transport};
use azure_identity::{
    ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The scope of Azure Storage's data plane.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

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
pub struct Token {
    /// The `Authorization` header's value, `Bearer <token>`, built once per token.
    header: Arc<str>,
    expires: SystemTime,
}

/// One Entra ID source: the credential and its name.
pub struct EntraSourceCredential {
    source: &'static str,
    credential: Arc<dyn TokenCredential>,
}

/// One Entra ID source with its token cache.
pub type EntraChain = Cached<EntraSourceCredential>;

impl std::fmt::Debug for EntraChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("EntraChain")
            .field("source", &self.source())
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
        Ok(Arc::new(Self::wrap(EntraSourceCredential {
            source: name,
            credential,
        })))
    }

    /// The source's name (`/readyz`, the log).
    pub fn source(&self) -> &'static str {
        self.source_of().source
    }

    /// The `Authorization` value to send now (`Bearer ...`), if there is a usable token.
    pub fn authorization(&self) -> Option<Arc<str>> {
        self.usable_value().map(|token| token.header)
    }

    /// Whether there is a usable token, for `/readyz`.
    pub fn has_token(&self) -> bool {
        self.usable_value().is_some()
    }
}

#[async_trait]
impl Fetch for EntraSourceCredential {
    type Value = Token;
    type Error = EntraError;
    const WHAT: &'static str = "Entra ID token";

    /// Asks the credential for a token (its own cache answers while the token is more than 5
    /// minutes from expiry, so a refresh from [`super::cache::REFRESH_BEFORE`] gets a new one).
    async fn fetch(&self, previous: Option<&Token>) -> Result<Token, EntraError> {
        let asked = self.credential.get_token(&[STORAGE_SCOPE], None);
        let token = match tokio::time::timeout(FETCH_DEADLINE, asked).await {
            Ok(Ok(token)) => {
                let expires = SystemTime::UNIX_EPOCH
                    + Duration::from_secs(
                        u64::try_from(token.expires_on.unix_timestamp()).unwrap_or(0),
                    );
                Token {
                    header: format!("Bearer {}", token.token.secret()).into(),
                    expires,
                }
            }
            Ok(Err(e)) => {
                return Err(EntraError {
                    source_name: self.source,
                    detail: e.to_string(),
                })
            }
            Err(_) => {
                return Err(EntraError {
                    source_name: self.source,
                    detail: format!("no token within {FETCH_DEADLINE:?}"),
                })
            }
        };
        let expires_in = token.expires.duration_since(SystemTime::now()).ok();
        if previous.is_none() {
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
        Ok(token)
    }

    fn expiry(token: &Token) -> Option<SystemTime> {
        Some(token.expires)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
