//! Wiring: builds the shared state and the one Pingora `Server` with its three services.
//!
//! Nothing here spawns a task or opens a connection: Pingora may fork (`-d`) when it runs, so
//! connectors and tasks are created lazily inside its runtimes.

use crate::cachestore::fs::FsStore;
use crate::cachestore::s3::S3Store;
use crate::cachestore::storage::ChunkStorage;
use crate::cachestore::CacheStore;
use crate::cluster::{Cluster, PeerSource};
use crate::config::{CacheStoreConfig, Config, OriginDriver, S3Credentials};
use crate::edge::auth::EdgeAuth;
use crate::edge::fill_client::FillClient;
use crate::edge::pipeline::budget_units;
use crate::edge::EdgeService;
use crate::fill::FillService;
use crate::metadata::{MetadataCache, OriginHealth};
use crate::ops::OpsService;
use crate::origin::s3::S3Origin;
use crate::origin::Origin;
use crate::s3::{S3Auth, S3Client};
use anyhow::{bail, Context};
use aws_credential_types::Credentials;
use pingora::apps::http_app::HttpServer;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::Opt;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_proxy::{http_proxy, http_proxy_service_with_name};
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
    /// `limits.readahead_memory` in KiB: bytes the edge may buffer across all requests.
    pub readahead_budget: Arc<Semaphore>,
    /// The edge's client of this replica's fill service.
    pub fill_client: FillClient,
    /// The peer set and each chunk's coordinator.
    pub cluster: Arc<Cluster>,
    /// Why the cache store failed its start-up checks, if it did (`/readyz` says it).
    pub store_problem: Option<String>,
    /// The edge's client authentication (`edge.auth`).
    pub edge_auth: Arc<EdgeAuth>,
}

impl Orca {
    /// Builds the shared state: origin driver, cache store (with its start-up checks),
    /// metadata cache and budgets.
    pub fn build(config: Config) -> anyhow::Result<Arc<Self>> {
        let timeout = config.limits.origin_timeout;
        let origin: Arc<dyn Origin> = match &config.origin.driver {
            OriginDriver::S3(s3) => Arc::new(
                S3Origin::new(
                    &s3.endpoint,
                    &s3.region,
                    s3.path_style,
                    s3_auth(&s3.credentials),
                    timeout,
                )
                .map_err(anyhow::Error::msg)
                .context("origin.s3.endpoint")?,
            ),
            OriginDriver::AzureBlob(az) => Arc::new(
                crate::origin::azureblob::AzureBlobOrigin::from_config(az, timeout)
                    .map_err(anyhow::Error::msg)
                    .context("origin.azureblob")?,
            ),
        };
        let mut store_problem = None;
        let store: Arc<dyn CacheStore> = match &config.cachestore {
            CacheStoreConfig::Fs { root } => Arc::new(
                FsStore::open(root)
                    .with_context(|| format!("cachestore.fs.root {}", root.display()))?,
            ),
            CacheStoreConfig::S3 {
                endpoint,
                region,
                bucket,
                path_style,
                credentials,
            } => {
                let client = |t| {
                    S3Client::new(endpoint, region, *path_style, s3_auth(credentials), t)
                        .map_err(anyhow::Error::msg)
                        .context("cachestore.s3.endpoint")
                };
                // The checks run now, before Pingora starts, on a runtime and a client of
                // their own: nothing of them survives into the server's runtimes.
                let checker = S3Store::new(client(timeout)?, bucket);
                let verdict = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("runtime for the cache store checks")?
                    .block_on(checker.check())
                    .map_err(anyhow::Error::msg)?;
                let mut s3 = S3Store::new(client(timeout)?, bucket);
                if let Some(reason) = verdict {
                    tracing::error!(%reason, "cache store refused for commits");
                    s3.refuse_commits(reason.clone());
                    store_problem = Some(reason);
                }
                Arc::new(s3)
            }
        };
        let storage: &'static ChunkStorage = Box::leak(Box::new(ChunkStorage::new(
            store,
            config.catalog.max_entries,
            config.limits.origin_concurrency,
        )));
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
        let fill_client = FillClient::local(lock_age + timeout);
        let cluster = Arc::new(build_cluster(&config, lock_age + timeout)?);
        let budget = budget_units(config.limits.readahead_memory) as usize;
        let edge_auth = Arc::new(EdgeAuth::new(&config.edge.auth));
        Ok(Arc::new(Self {
            origin_permits: Arc::new(Semaphore::new(config.limits.origin_concurrency)),
            readahead_budget: Arc::new(Semaphore::new(budget)),
            config,
            origin,
            storage,
            cache_lock,
            metadata,
            health,
            fill_client,
            cluster,
            store_problem,
            edge_auth,
        }))
    }

    fn lock_timeout_for(config: &Config) -> Duration {
        // Longer than the slowest fill (every attempt timing out, plus backoff), so waiters do
        // not give up on a fill that is still going and stampede the origin.
        config.limits.origin_timeout * (crate::fill::ORIGIN_ATTEMPTS + 1) + Duration::from_secs(5)
    }

    /// How long a cache-lock waiter waits for another request's fill.
    pub fn lock_timeout(&self) -> Duration {
        Self::lock_timeout_for(&self.config)
    }

    /// Why the replica is not ready (empty when it is). During a graceful shutdown the ops
    /// listener is closed with the others, so probes see the replica go away.
    pub fn readiness_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(p) = &self.store_problem {
            problems.push(p.clone());
        }
        if let Some(p) = self.edge_auth.readiness_problem() {
            problems.push(p);
        }
        if !self.cluster.has_peer_set() {
            problems.push("peer discovery has not produced a peer set yet".to_string());
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

/// The signing identity of a credentials section.
fn s3_auth(credentials: &S3Credentials) -> S3Auth {
    match credentials {
        S3Credentials::Anonymous => S3Auth::Anonymous,
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

/// The cluster view from `cluster.*`: alone, a static list, or DNS discovery.
fn build_cluster(config: &Config, read_timeout: Duration) -> anyhow::Result<Cluster> {
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
    Ok(Cluster::new(&self_addr, source, secret, read_timeout))
}

/// The edge's per-connection write buffer.
const EDGE_WRITE_BUFFER: usize = 64 * 1024;

/// Builds the Pingora server with the edge, fill and ops services.
pub fn build_server(opt: Opt, config: Config) -> anyhow::Result<Server> {
    crate::metrics::init();
    let listen = config.listen.clone();
    let orca = Orca::build(config)?;
    let mut server = Server::new(Some(opt)).context("pingora server configuration (-c)")?;
    server.bootstrap();
    let conf = server.configuration.clone();

    let mut edge = http_proxy_service_with_name(&conf, EdgeService::new(orca.clone()), "edge");
    // A write buffer that holds a response header and a small body, so a small object goes
    // out in one write instead of two (Pingora's default buffers 1460 bytes; a body piece
    // larger than the buffer still goes straight to the socket, uncopied).
    edge.add_listener(
        ListenerConfig::tcp(listen.edge.as_str()).l4_buffer(L4BufferSettings {
            read: None,
            write: Some(EDGE_WRITE_BUFFER),
        }),
    );
    // The edge reaches this replica's fill service in-process, through its own instance.
    let local_fill = Arc::new(http_proxy(&conf, FillService::for_local_edge(orca.clone())));
    orca.fill_client.set_local(local_fill);
    let mut fill =
        http_proxy_service_with_name(&conf, FillService::for_peers(orca.clone()), "fill");
    let dns = orca.cluster.dns_refresher();
    let auth_reloader = orca.edge_auth.reloader();
    fill.add_tcp(&listen.internal);
    let mut ops = Service::new(
        "ops".to_string(),
        HttpServer::new_app(OpsService::new(orca)),
    );
    ops.add_tcp(&listen.ops);
    ops.threads = Some(1);

    server.add_service(edge);
    server.add_service(fill);
    server.add_service(ops);
    if let Some(dns) = dns {
        server.add_service(background_service("peer discovery", dns));
    }
    if let Some(reloader) = auth_reloader {
        server.add_service(background_service("edge credentials reload", reloader));
    }
    Ok(server)
}
