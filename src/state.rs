//! The state Orca's services share: the configuration, the origin driver, the chunk storage
//! and its cache lock, the metadata cache, the budgets and the cluster view. Built once at
//! start by [`Orca::build`]; the services hold it behind an `Arc`. It holds no service itself
//! (the edge's clients of the fill service live in the edge), so nothing here depends on the
//! services that use it.

use crate::cachestore::evict::Evictor;
use crate::cachestore::fs::FsStore;
use crate::cachestore::fs::SpoolDir;
use crate::cachestore::s3::S3Store;
use crate::cachestore::storage::ChunkStorage;
use crate::cachestore::tiered::TieredStore;
use crate::cachestore::CacheStore;
use crate::cluster::{Cluster, PeerSource};
use crate::config::{CacheStoreConfig, Config, LocalTier, OriginDriver, S3Credentials};
use crate::credentials::aws::AwsChain;
use crate::credentials::azure::EntraChain;
use crate::metadata::{MetadataCache, OriginHealth};
use crate::metrics::TIER_LOCAL;
use crate::origin::s3::S3Origin;
use crate::origin::Origin;
use crate::s3client::{S3Auth, S3Client};
use anyhow::{bail, Context};
use aws_credential_types::Credentials;
use parking_lot::Mutex;
use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Everything the services share.
pub struct Orca {
    /// The validated configuration.
    pub config: Config,
    /// The origin driver.
    pub origin: Arc<dyn Origin>,
    /// The pingora-cache storage over the cache store (leaked once: pingora wants `'static`).
    pub storage: &'static ChunkStorage,
    /// The fill service's cache lock (one origin fill per chunk per replica).
    pub cache_lock: &'static CacheKeyLockImpl,
    /// HEAD results.
    pub metadata: MetadataCache,
    /// Consecutive credential refusals by the origin.
    pub health: Arc<OriginHealth>,
    /// `limits.origin_concurrency` permits: origin fills in flight.
    pub origin_permits: Arc<Semaphore>,
    /// The cluster's shared secret: peers must present it, and it is sent to them.
    pub peer_secret: Option<String>,
    /// The peer set and each chunk's coordinator.
    pub cluster: Arc<Cluster>,
    /// Why the cache store failed its start-up checks, if it did (`/readyz` says it).
    pub store_problem: Option<String>,
    /// The bounded `fs` store's (or local tier's) index rebuild and eviction, taken by `app`
    /// to run as a background service.
    pub evictor: Mutex<Option<Evictor>>,
    /// The AWS default credential chains in use (`origin.s3`, `cachestore.s3`): `/readyz`
    /// says which source each one found, or why it found none.
    pub credential_chains: Vec<Arc<AwsChain>>,
    /// The Entra ID source of `origin.azureblob` (`credentials: entra`): `/readyz` says which
    /// one it is, or why it has no token.
    pub entra: Option<Arc<EntraChain>>,
}

impl Orca {
    /// Builds the shared state: origin driver, cache store (with its start-up checks),
    /// metadata cache and budgets.
    pub fn build(config: Config) -> anyhow::Result<Arc<Self>> {
        let timeout = config.limits.origin_timeout;
        let mut credential_chains = Vec::new();
        let mut entra = None;
        let origin: Arc<dyn Origin> = match &config.origin.driver {
            OriginDriver::S3(s3) => {
                let chain = AwsChain::for_section("origin.s3", &s3.credentials, &s3.region);
                if let Some(chain) = &chain {
                    load_at_start(chain)?;
                    credential_chains.push(chain.clone());
                }
                Arc::new(
                    S3Origin::new(
                        &s3.endpoint,
                        &s3.region,
                        s3.path_style,
                        s3_auth(&s3.credentials, chain.as_ref()),
                        timeout,
                    )
                    .context("origin.s3.endpoint")?,
                )
            }
            OriginDriver::AzureBlob(az) => {
                let azure = crate::origin::azureblob::AzureBlobOrigin::from_config(az, timeout)
                    .context("origin.azureblob")?;
                if let Some(chain) = azure.entra() {
                    entra_at_start(chain)?;
                    entra = Some(chain.clone());
                }
                Arc::new(azure)
            }
        };
        let mut store_problem = None;
        let mut evictor = None;
        let store: Arc<dyn CacheStore> = match &config.cachestore {
            CacheStoreConfig::Fs { root, limits } => {
                let fs = FsStore::open(root, limits)
                    .with_context(|| format!("cachestore.fs.root {}", root.display()))?;
                evictor = Some(fs.evictor());
                Arc::new(fs)
            }
            CacheStoreConfig::S3 {
                endpoint,
                region,
                bucket,
                path_style,
                credentials,
                local,
            } => {
                // One chain for the checker and the store: the credentials the checks loaded
                // are the store's first.
                let chain = AwsChain::for_section("cachestore.s3", credentials, region);
                if let Some(chain) = &chain {
                    credential_chains.push(chain.clone());
                }
                let client = |t| {
                    let auth = s3_auth(credentials, chain.as_ref());
                    S3Client::new(endpoint, region, *path_style, auth, t)
                        .context("cachestore.s3.endpoint")
                };
                // The checks run now, before Pingora starts, on a runtime and a client of
                // their own: nothing of them survives into the server's runtimes.
                let checker = S3Store::new(client(timeout)?, bucket);
                let verdict = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("runtime for the cache store checks")?
                    .block_on(checker.check())?;
                let mut s3 = S3Store::new(client(timeout)?, bucket);
                if let Some(reason) = verdict {
                    tracing::error!(%reason, "cache store refused for commits");
                    s3.refuse_commits(reason.clone());
                    store_problem = Some(reason);
                }
                match local {
                    Some(LocalTier { root, limits }) => {
                        let local = FsStore::open_as(root, limits, TIER_LOCAL)
                            .with_context(|| format!("cachestore.local.root {}", root.display()))?;
                        evictor = Some(local.evictor());
                        // As many admissions collecting a shared hit at once as fills in
                        // flight: at most that many chunks held for the local tier.
                        Arc::new(TieredStore::new(
                            local,
                            Arc::new(s3),
                            config.limits.origin_concurrency,
                        ))
                    }
                    None => {
                        // Fills spool their chunks under the temp directory before the PUT.
                        let dir = std::env::temp_dir().join("orca-spool");
                        s3.spool_in(
                            SpoolDir::open(&dir)
                                .with_context(|| format!("spool directory {}", dir.display()))?,
                        );
                        Arc::new(s3)
                    }
                }
            }
        };
        let mut storage = ChunkStorage::new(
            store,
            config.catalog.max_entries,
            config.limits.origin_concurrency,
            Self::stall_timeout_for(&config),
        );
        if config.memory_tier.max_size > 0 {
            storage = storage.with_ram(Arc::new(crate::cachestore::ram::RamTier::new(
                config.memory_tier.max_size,
            )));
        }
        let storage: &'static ChunkStorage = Box::leak(Box::new(storage));
        let lock_age = Self::lock_timeout_for(&config);
        let cache_lock: &'static CacheKeyLockImpl = Box::leak(CacheLock::new_boxed(lock_age));
        let health = Arc::new(OriginHealth::default());
        let metadata = MetadataCache::new(
            origin.clone(),
            config.metadata.ttl,
            config.metadata.negative_ttl,
            config.metadata.max_entries,
            health.clone(),
        );
        let (cluster, peer_secret) = build_cluster(&config)?;
        Ok(Arc::new(Self {
            origin_permits: Arc::new(Semaphore::new(config.limits.origin_concurrency)),
            config,
            origin,
            storage,
            cache_lock,
            metadata,
            health,
            peer_secret,
            cluster: Arc::new(cluster),
            store_problem,
            evictor: Mutex::new(evictor),
            credential_chains,
            entra,
        }))
    }

    fn lock_timeout_for(config: &Config) -> Duration {
        // Longer than the slowest fill (every attempt timing out, plus backoff), so waiters do
        // not give up on a fill that is still going and stampede the origin.
        config.limits.origin_timeout * (crate::net::retry::ATTEMPTS + 1) + Duration::from_secs(5)
    }

    /// How long a reader of a fill in flight waits for its next byte: a healthy writer
    /// appends at least once per origin read (each bounded by `origin_timeout`), unless its
    /// own downstream is slow, which `client_write_timeout` bounds.
    fn stall_timeout_for(config: &Config) -> Duration {
        config
            .limits
            .origin_timeout
            .max(config.limits.client_write_timeout)
            + Duration::from_secs(5)
    }

    /// How long a cache-lock waiter waits for another request's fill.
    pub fn lock_timeout(&self) -> Duration {
        Self::lock_timeout_for(&self.config)
    }

    /// How long the edge waits for each piece of a fill it asked for: a fill may wait on
    /// another caller's origin fill (the lock timeout) and then make its own.
    pub fn fill_read_timeout(&self) -> Duration {
        self.lock_timeout() + self.config.limits.origin_timeout
    }

    /// Why the replica is not ready (empty when it is). During a graceful shutdown the ops
    /// listener is closed with the others, so probes see the replica go away.
    pub fn readiness_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(p) = &self.store_problem {
            problems.push(p.clone());
        }
        if !self.cluster.has_peer_set() {
            problems.push("peer discovery has not produced a peer set yet".to_string());
        }
        for chain in &self.credential_chains {
            if let Some(e) = chain.problem() {
                problems.push(e.to_string());
            }
        }
        if let Some(e) = self.entra.as_ref().and_then(|c| c.problem()) {
            problems.push(e.to_string());
        }
        if !self.health.credentials_ok() {
            problems.push(format!(
                "origin refused credentials {} times in a row",
                OriginHealth::MAX_AUTH_FAILURES
            ));
        }
        problems
    }
}

/// The signing identity of a credentials section (`chain`: its default chain, when it uses
/// one; also `orcaseed`'s).
pub(crate) fn s3_auth(credentials: &S3Credentials, chain: Option<&Arc<AwsChain>>) -> S3Auth {
    match credentials {
        S3Credentials::Anonymous => S3Auth::Anonymous,
        S3Credentials::DefaultChain => match chain {
            Some(chain) => S3Auth::Chain(chain.clone()),
            None => S3Auth::Anonymous,
        },
        S3Credentials::Static {
            access_key_id,
            secret_access_key,
            session_token,
        } => S3Auth::Sign(Credentials::new(
            access_key_id,
            secret_access_key,
            session_token.clone(),
            None,
            "orca-config",
        )),
    }
}

/// Loads the chain's first credentials before Pingora starts, on a runtime of its own (the
/// chain's HTTP client keeps no connection, so nothing of it survives into the server's
/// runtimes), so the log says at start which source is in use. A failure is not fatal: it is
/// logged, `/readyz` reports it, and the first request tries again.
fn load_at_start(chain: &Arc<AwsChain>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime for the credentials' first load")?;
    if let Err(e) = runtime.block_on(chain.ensure()) {
        tracing::error!(error = %e, "no AWS credentials at start; retrying on the first request");
    }
    Ok(())
}

/// Fetches the first Entra ID token before Pingora starts, as [`load_at_start`] does for AWS
/// credentials: the log says at start which source is in use; a failure is logged, `/readyz`
/// reports it, and the first request tries again. Waits at most [`ENTRA_START_DEADLINE`]
/// (IMDS out of reach takes its retries a minute to give up), so `orca -t` and a start
/// without the identity endpoint stay quick.
fn entra_at_start(chain: &Arc<EntraChain>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime for the first Entra ID token")?;
    // The timer is made inside the runtime (a tokio timer needs one).
    match runtime.block_on(async { tokio::time::timeout(ENTRA_START_DEADLINE, chain.ensure()).await }) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, "no Entra ID token at start; retrying on the first request");
        }
        Err(_) => tracing::error!(
            source = chain.source(),
            "no Entra ID token within {ENTRA_START_DEADLINE:?} of start; retrying on the first request"
        ),
    }
    Ok(())
}

/// How long the start waits for the first Entra ID token.
const ENTRA_START_DEADLINE: Duration = Duration::from_secs(10);

impl Orca {
    /// What `/readyz` says besides the verdict: which source each default chain uses
    /// (`credentials: origin.s3 web-identity`), and the Entra ID source
    /// (`credentials: origin.azureblob entra workload-identity`).
    pub fn credential_sources(&self) -> Vec<String> {
        let mut sources: Vec<String> = self
            .credential_chains
            .iter()
            .filter_map(|c| {
                c.source()
                    .map(|s| format!("credentials: {} {s}", c.section()))
            })
            .collect();
        if let Some(chain) = &self.entra {
            sources.push(format!(
                "credentials: origin.azureblob entra {}",
                chain.source()
            ));
        }
        sources
    }
}

/// The cluster view from `cluster.*` (alone, a static list, or DNS discovery) and the
/// shared secret.
fn build_cluster(config: &Config) -> anyhow::Result<(Cluster, Option<String>)> {
    let c = &config.cluster;
    let source = match (&c.dns, c.peers.is_empty()) {
        (Some(dns), _) => PeerSource::Dns {
            name: dns.name.clone(),
            port: dns.port,
            refresh: dns.refresh,
        },
        (None, false) => PeerSource::Static(c.peers.clone()),
        (None, true) => PeerSource::Alone,
    };
    let self_addr = match (&source, &c.self_addr) {
        (PeerSource::Alone, _) => config.listen.internal.clone(),
        (_, Some(s)) => s.clone(),
        (_, None) => bail!("cluster.self: required with peers or dns (env ORCA_SELF)"),
    };
    let secret = match &c.shared_secret_env {
        Some(var) => Some(
            std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .with_context(|| format!("cluster.shared_secret_env: {var} is not set"))?,
        ),
        None => None,
    };
    if secret.is_none() && !matches!(source, PeerSource::Alone) {
        // Anyone who reaches the fill port can then make this replica fetch chunks from the
        // origin (its own fill requests name the object's size; they cannot delete stored
        // chunks, but they cost origin traffic).
        tracing::warn!(
            internal = %config.listen.internal,
            "cluster.shared_secret_env is not set: the fill port accepts fill requests from anyone who reaches it"
        );
    }
    Ok((Cluster::new(&self_addr, source), secret))
}
