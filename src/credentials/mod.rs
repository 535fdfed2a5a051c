//! Credentials the clouds hand out: the AWS default credential chain ([`aws`]) for S3
//! sections without keys, cached and refreshed before expiry, and the HTTP client its
//! providers use ([`http`]), built on Orca's own connector; Entra ID tokens for the Azure
//! origin ([`azure`]), over the same connector ([`azure_http`]); both cached and refreshed in
//! the background by [`cache`].

pub mod aws;
pub mod azure;
pub mod azure_http;
pub mod cache;
pub mod http;
