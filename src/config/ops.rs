//! The `ops` section: cache control on the ops port (`orca warm`, `orca purge`, `orca
//! inspect`): who may use it and how much a warm job may take.

use serde::Deserialize;
use std::path::PathBuf;

/// `ops`, as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping of keys")]
pub struct OpsFile {
    /// A file holding the token the cache-control endpoints ask for (instead of the peers'
    /// shared secret). Default: none.
    pub admin_token_file: Option<PathBuf>,
    /// Chunks one warm job fetches at once when the request does not say. Default 4.
    pub warm_concurrency: usize,
    /// The most a warm request may ask for. Default 16.
    pub warm_max_concurrency: usize,
    /// Warm jobs running at once on a replica. Default 2.
    pub max_jobs: usize,
    /// Finished jobs kept for reading (the oldest is dropped first). Default 32.
    pub kept_jobs: usize,
}

impl Default for OpsFile {
    fn default() -> Self {
        Self {
            admin_token_file: None,
            warm_concurrency: 4,
            warm_max_concurrency: 16,
            max_jobs: 2,
            kept_jobs: 32,
        }
    }
}

/// `ops`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsConfig {
    /// The admin token's file, read at start; `None`: the peers' shared secret is the token.
    pub admin_token_file: Option<PathBuf>,
    /// Default chunks in flight per warm job; 1 ..= `warm_max_concurrency`.
    pub warm_concurrency: usize,
    /// Most chunks in flight per warm job; always > 0.
    pub warm_max_concurrency: usize,
    /// Running warm jobs; always > 0.
    pub max_jobs: usize,
    /// Finished jobs kept.
    pub kept_jobs: usize,
}

impl Default for OpsConfig {
    fn default() -> Self {
        let f = OpsFile::default();
        Self {
            admin_token_file: None,
            warm_concurrency: f.warm_concurrency,
            warm_max_concurrency: f.warm_max_concurrency,
            max_jobs: f.max_jobs,
            kept_jobs: f.kept_jobs,
        }
    }
}

/// Checks `ops`: every problem as `(key, message)`.
pub(super) fn validate(file: OpsFile) -> Result<OpsConfig, Vec<(&'static str, String)>> {
    let mut problems = Vec::new();
    if file
        .admin_token_file
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        problems.push(("ops.admin_token_file", "must not be empty".to_string()));
    }
    if file.warm_max_concurrency == 0 {
        problems.push((
            "ops.warm_max_concurrency",
            "must be greater than 0".to_string(),
        ));
    }
    if file.warm_concurrency == 0 || file.warm_concurrency > file.warm_max_concurrency {
        problems.push((
            "ops.warm_concurrency",
            format!(
                "must be from 1 to ops.warm_max_concurrency ({}), got {}",
                file.warm_max_concurrency, file.warm_concurrency
            ),
        ));
    }
    if file.max_jobs == 0 {
        problems.push(("ops.max_jobs", "must be greater than 0".to_string()));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(OpsConfig {
        admin_token_file: file.admin_token_file,
        warm_concurrency: file.warm_concurrency,
        warm_max_concurrency: file.warm_max_concurrency,
        max_jobs: file.max_jobs,
        kept_jobs: file.kept_jobs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bad_value_names_its_key() {
        let bad = OpsFile {
            admin_token_file: Some(PathBuf::new()),
            warm_concurrency: 20,
            warm_max_concurrency: 16,
            max_jobs: 0,
            kept_jobs: 0,
        };
        let keys: Vec<&str> = validate(bad)
            .unwrap_err()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            keys,
            [
                "ops.admin_token_file",
                "ops.warm_concurrency",
                "ops.max_jobs"
            ]
        );
        assert_eq!(validate(OpsFile::default()), Ok(OpsConfig::default()));
    }
}
