//! The AWS default credential chain, for an S3 section (`origin.s3`, `cachestore.s3`) that
//! sets no keys: the providers of `aws-config`, tried in the SDKs' order, each tagged with the
//! name Orca reports (`/readyz`, the log): `env` (`AWS_ACCESS_KEY_ID`...), `profile` (the shared
//! config and credentials files with `AWS_PROFILE`: keys, `role_arn` + `source_profile`,
//! `credential_process`), `web-identity` (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`: EKS
//! IRSA), `container` (`AWS_CONTAINER_CREDENTIALS_FULL_URI` / `_RELATIVE_URI` with
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN(_FILE)`: ECS, EKS Pod Identity) and `imds` (EC2 IMDSv2).
//!
//! Credentials are cached by [`super::cache::Cached`], not by the SDK's identity cache (whose
//! lazy refresh makes every caller wait once the credentials are inside its buffer): requests
//! sign with the current credentials while a refresh runs in the background.

use super::cache::{Cached, Fetch};
use super::http::OrcaHttpClient;
use crate::config::S3Credentials;
use async_trait::async_trait;
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
use std::sync::Arc;
use std::time::SystemTime;

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

/// The providers of one S3 section's default chain, in order, each with the name Orca reports.
pub struct AwsLinks {
    section: &'static str,
    links: Vec<(&'static str, SharedCredentialsProvider)>,
}

/// The default chain of one S3 section, with its cache: the credentials and the provider they
/// came from.
pub type AwsChain = Cached<AwsLinks>;

impl std::fmt::Debug for AwsChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials themselves.
        f.debug_struct("AwsChain")
            .field("section", &self.section())
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
        Arc::new(Self::wrap(AwsLinks { section, links }))
    }

    /// The section this chain signs for.
    pub fn section(&self) -> &'static str {
        self.source_of().section
    }

    /// Credentials to sign with now, if there are usable ones.
    pub fn current(&self) -> Option<Credentials> {
        self.usable_value().map(|(creds, _)| creds)
    }

    /// The provider the current credentials came from (`env`, `profile`, `web-identity`,
    /// `container`, `imds`), if any were loaded.
    pub fn source(&self) -> Option<&'static str> {
        self.peek(|(_, name)| *name)
    }

    /// How many loads were made (tests and the log).
    pub fn loads(&self) -> u64 {
        self.fetches()
    }
}

#[async_trait]
impl Fetch for AwsLinks {
    type Value = (Credentials, &'static str);
    type Error = ChainError;
    const WHAT: &'static str = "AWS credentials";

    /// Asks the providers in order; the first that has credentials wins. A provider that is
    /// configured but fails ends the search (as in the SDKs): its error is the answer.
    async fn fetch(&self, previous: Option<&Self::Value>) -> Result<Self::Value, ChainError> {
        let mut skipped = Vec::new();
        let fail = |detail: String| ChainError {
            section: self.section,
            detail,
        };
        let (creds, name) = 'search: {
            for (name, provider) in &self.links {
                match provider.provide_credentials().await {
                    Ok(creds) => break 'search (creds, *name),
                    Err(CredentialsError::CredentialsNotLoaded(_)) => skipped.push(*name),
                    Err(e) => return Err(fail(format!("{name}: {}", DisplayErrorContext(&e)))),
                }
            }
            return Err(fail(format!(
                "none of {} had credentials (see docs/operations.md, Credentials)",
                skipped.join(", ")
            )));
        };
        let expires_in = creds
            .expiry()
            .and_then(|e| e.duration_since(SystemTime::now()).ok());
        if previous.map(|(_, s)| *s) != Some(name) {
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
        Ok((creds, name))
    }

    fn expiry((creds, _): &Self::Value) -> Option<SystemTime> {
        creds.expiry()
    }
}
