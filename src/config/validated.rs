//! The configuration the rest of Orca uses: types that cannot hold a bad value, built by
//! `config::validate` from the file structs of [`super::file`] plus the environment
//! (credentials, `ORCA_SELF`, `ORCA_LOG_LEVEL`), and the [`Problem`]s reported when that fails.
//! Secrets held here are never printed: the credential types redact them in `Debug`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use super::client_keys::{BucketGrant, ClientKey};
use super::units::SizeOrPercent;

/// The largest chunk size accepted anywhere in the ladder. A chunk is read, hashed and sent as
/// one unit; beyond 4GiB a single fill is too long to retry sensibly.
pub const MAX_CHUNK_SIZE: u64 = 4 << 30;

/// The largest `chunking.readahead`: more chunks in flight per client only multiplies memory.
pub const MAX_READAHEAD: usize = 64;

/// Log levels accepted by `logging.level` and `ORCA_LOG_LEVEL`.
pub const LOG_LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// A lookup of one environment variable; `None` when it is unset. Tests pass a fake one.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the offending key, e.g. `chunking.tiers[1].min_object_size`.
    pub key: String,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Listening addresses.
    pub listen: Listen,
    /// The origin and how to reach it.
    pub origin: OriginConfig,
    /// The client-facing S3 surface.
    pub edge: EdgeConfig,
    /// Where chunks are stored.
    pub cachestore: CacheStoreConfig,
    /// Chunk sizes and read-ahead.
    pub chunking: Chunking,
    /// The HEAD-result cache.
    pub metadata: MetadataConfig,
    /// The record of chunks recently found missing from the store.
    pub catalog: CatalogConfig,
    /// Concurrency and memory bounds.
    pub limits: Limits,
    /// Peers and discovery.
    pub cluster: ClusterConfig,
    /// Log level and format.
    pub logging: Logging,
    /// Cache control on the ops port.
    pub ops: super::ops::OpsConfig,
    /// The RAM tier in front of the store (`cachestore.memory`).
    pub memory_tier: MemoryTier,
}

/// The three listening addresses, each a `host:port` that parses as a [`SocketAddr`](std::net::SocketAddr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Clients: S3-style GET / HEAD / List.
    pub edge: String,
    /// Peers: chunk fills.
    pub internal: String,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub ops: String,
    /// TLS on the edge port (the files were readable and matched at validation).
    pub edge_tls: Option<crate::net::tls::TlsFiles>,
    /// TLS on the internal port (as `edge_tls`).
    pub internal_tls: Option<crate::net::tls::TlsFiles>,
}

/// The origin: its identity and its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginConfig {
    /// Part of every chunk's identity: changing it starts the cache cold. Never empty.
    pub id: String,
    /// How to reach the origin.
    pub driver: OriginDriver,
}

/// The kind of origin, with its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginDriver {
    /// S3 or an S3-compatible server.
    S3(S3OriginConfig),
    /// Azure Blob Storage (or Azurite).
    AzureBlob(AzureBlobConfig),
}

/// An S3 (or S3-compatible) origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3OriginConfig {
    /// `http://` or `https://` URL with a host and no path or query, without a trailing slash.
    pub endpoint: String,
    /// The `SigV4` signing region.
    pub region: String,
    /// `endpoint/bucket/key` rather than `bucket.endpoint/key`.
    pub path_style: bool,
    /// How requests are signed.
    pub credentials: S3Credentials,
}

/// How requests to an S3 endpoint are signed.
#[derive(Clone, PartialEq, Eq)]
pub enum S3Credentials {
    /// `SigV4` with these keys.
    Static {
        /// The access key id.
        access_key_id: String,
        /// The secret access key. Never logged.
        secret_access_key: String,
        /// The session token of temporary credentials. Never logged.
        session_token: Option<String>,
    },
    /// Unsigned requests (public buckets).
    Anonymous,
    /// No keys configured: the AWS default credential chain (env, shared files with
    /// `AWS_PROFILE`, web identity, container credentials, EC2 IMDSv2), looked up at start
    /// and refreshed before expiry (`credentials::aws`).
    DefaultChain,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            S3Credentials::Static {
                access_key_id,
                session_token,
                ..
            } => f
                .debug_struct("Static")
                .field("access_key_id", access_key_id)
                .field("secret_access_key", &"<redacted>")
                .field(
                    "session_token",
                    &session_token.as_ref().map(|_| "<redacted>"),
                )
                .finish(),
            S3Credentials::Anonymous => f.write_str("Anonymous"),
            S3Credentials::DefaultChain => f.write_str("DefaultChain"),
        }
    }
}

/// An Azure Blob Storage origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureBlobConfig {
    /// The storage account name.
    pub account: String,
    /// The blob service URL (may carry a path, as Azurite's `/devstoreaccount1`), no trailing
    /// slash.
    pub endpoint: String,
    /// How requests are authorized.
    pub credentials: AzureCredentials,
}

/// How requests to Azure Blob Storage are authorized.
#[derive(Clone, PartialEq, Eq)]
pub enum AzureCredentials {
    /// The account's shared key (base64), from `account_key` or env `AZURE_STORAGE_KEY`.
    SharedKey(String),
    /// A SAS token, without the leading `?`.
    Sas(String),
    /// Entra ID bearer tokens (`credentials: entra`), from the source the environment names.
    Entra(EntraSource),
}

/// Where Entra ID tokens come from (`origin.azureblob.credentials: entra`), chosen from the
/// environment in the order of Azure's SDKs: a client secret, workload identity, managed
/// identity.
#[derive(Clone, PartialEq, Eq)]
pub enum EntraSource {
    /// `AZURE_CLIENT_SECRET` with `AZURE_TENANT_ID` and `AZURE_CLIENT_ID`: a service
    /// principal's secret.
    ClientSecret {
        /// `AZURE_TENANT_ID`.
        tenant_id: String,
        /// `AZURE_CLIENT_ID`.
        client_id: String,
        /// `AZURE_CLIENT_SECRET`.
        secret: String,
    },
    /// `AZURE_FEDERATED_TOKEN_FILE` with `AZURE_TENANT_ID` and `AZURE_CLIENT_ID` (AKS
    /// workload identity's webhook sets all three): the file's token is exchanged for one.
    WorkloadIdentity {
        /// `AZURE_TENANT_ID`.
        tenant_id: String,
        /// `AZURE_CLIENT_ID`.
        client_id: String,
        /// `AZURE_FEDERATED_TOKEN_FILE`, read again at each exchange (the kubelet rotates it).
        token_file: String,
    },
    /// Neither of the above: the VM's or node's managed identity through IMDS; with
    /// `AZURE_CLIENT_ID`, that user-assigned identity.
    ManagedIdentity {
        /// `AZURE_CLIENT_ID`, when set.
        client_id: Option<String>,
    },
}

impl EntraSource {
    /// The name `/readyz` and the log use.
    pub fn name(&self) -> &'static str {
        match self {
            EntraSource::ClientSecret { .. } => "client-secret",
            EntraSource::WorkloadIdentity { .. } => "workload-identity",
            EntraSource::ManagedIdentity { .. } => "managed-identity",
        }
    }
}

impl fmt::Debug for EntraSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.write_str(self.name())
    }
}

impl fmt::Debug for AzureCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AzureCredentials::SharedKey(_) => f.write_str("SharedKey(<redacted>)"),
            AzureCredentials::Sas(_) => f.write_str("Sas(<redacted>)"),
            AzureCredentials::Entra(source) => write!(f, "Entra({source:?})"),
        }
    }
}

/// The client-facing S3 surface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeConfig {
    /// With `orca.example.com`, `Host: bucket.orca.example.com` addresses `bucket`. Lowercase,
    /// no leading dot; `None` when virtual-hosted style is off.
    pub virtual_host_suffix: Option<String>,
    /// Buckets clients may read; empty allows any bucket the origin serves.
    pub buckets: Vec<String>,
    /// Client authentication.
    pub auth: EdgeAuthConfig,
}

/// `edge.auth`: who may read through the edge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgeAuthConfig {
    /// Unsigned requests are refused (`403 AccessDenied`).
    pub required: bool,
    /// Where the keys were read from (read again on `SIGHUP`); `None`: no keys, and signatures
    /// are not checked (only possible with `required: false`).
    pub credentials_file: Option<PathBuf>,
    /// The keys read from `credentials_file` at start-up.
    pub keys: Vec<ClientKey>,
}

/// Where chunks are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStoreConfig {
    /// A local directory (one machine).
    Fs {
        /// The directory holding the chunks.
        root: PathBuf,
        /// Its size bound.
        limits: FsLimits,
    },
    /// A bucket shared by a cluster.
    S3 {
        /// `http://` or `https://` URL with a host and no path, without a trailing slash.
        endpoint: String,
        /// The `SigV4` signing region.
        region: String,
        /// The bucket.
        bucket: String,
        /// `endpoint/bucket/key` rather than `bucket.endpoint/key`.
        path_style: bool,
        /// How requests are signed.
        credentials: S3Credentials,
        /// The bounded local tier in front of the bucket (`cachestore.local`), if any.
        local: Option<LocalTier>,
    },
}

/// The local tier in front of a shared store (`cachestore.local`): a bounded directory on the
/// replica's own disk holding the chunks it reads most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTier {
    /// The directory holding the chunks.
    pub root: PathBuf,
    /// Its size bound.
    pub limits: FsLimits,
}

/// The size bound of the `fs` store (`cachestore.fs.max_size`, `min_free`, `low_watermark`).
/// Percentages are resolved at start, against the filesystem the root is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsLimits {
    /// The most the store may hold; `None`: 90 % of the filesystem's size at start. Never 0,
    /// and at least the largest chunk.
    pub max_size: Option<u64>,
    /// Space to leave free on the filesystem: a size, or a percentage (below 100) of it.
    pub min_free: SizeOrPercent,
    /// Where eviction stops: a percentage (1 to 99) of the bound, or a size (above 0, and below
    /// `max_size` when that is set).
    pub low_watermark: SizeOrPercent,
}

impl Default for FsLimits {
    fn default() -> Self {
        FsLimits {
            max_size: None,
            min_free: SizeOrPercent::Percent(5),
            low_watermark: SizeOrPercent::Percent(90),
        }
    }
}

/// The chunk-size ladder and read-ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunking {
    /// Chunk size for objects below every tier. In `1..=MAX_CHUNK_SIZE`.
    pub base: u64,
    /// Larger chunk sizes for larger objects, `min_object_size` strictly ascending.
    pub tiers: Vec<Tier>,
    /// Chunks fetched ahead of the one being sent; 0 = sequential. At most [`MAX_READAHEAD`].
    pub readahead: usize,
    /// Chunks longer than this are fetched as parallel ranged GETs of this size; 0 = off.
    /// Otherwise in `MIN_SUBRANGE_SIZE..=MAX_CHUNK_SIZE`.
    pub subrange_size: u64,
    /// Origin GETs of one sub-range fill at once, in `1..=MAX_SUBRANGE_STREAMS`.
    pub subrange_streams: usize,
}

/// The smallest `chunking.subrange_size` (besides 0): smaller ranges cost more in requests
/// (each is a billed GET and a round trip) than they gain in parallelism.
pub const MIN_SUBRANGE_SIZE: u64 = 1 << 20;

/// The most origin GETs one chunk fill may run at once (`chunking.subrange_streams`).
pub const MAX_SUBRANGE_STREAMS: usize = 16;

/// One rung of the chunk-size ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tier {
    /// Objects at least this large use `size`.
    pub min_object_size: u64,
    /// The chunk size. In `1..=MAX_CHUNK_SIZE`.
    pub size: u64,
}

impl Chunking {
    #[must_use]
    /// The chunk size for an object of `object_size` bytes: the size of the last tier whose
    /// `min_object_size <= object_size`, else the base size.
    pub fn chunk_size_for(&self, object_size: u64) -> u64 {
        self.tiers
            .iter()
            .rev()
            .find(|tier| tier.min_object_size <= object_size)
            .map_or(self.base, |tier| tier.size)
    }

    #[must_use]
    /// The largest chunk size in the ladder: the most one chunk buffer may hold.
    pub fn max_chunk_size(&self) -> u64 {
        self.tiers
            .iter()
            .map(|tier| tier.size)
            .fold(self.base, u64::max)
    }
}

/// The HEAD-result cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataConfig {
    /// How long a HEAD result is trusted.
    pub ttl: Duration,
    /// How long a negative answer (404, unsupported type, missing `ETag`) is trusted.
    pub negative_ttl: Duration,
    /// Entries kept; always > 0.
    pub max_entries: usize,
}

/// The record of chunks recently found missing from the cachestore (see `cachestore::catalog`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogConfig {
    /// Entries kept.
    pub max_entries: usize,
}

/// Concurrency and memory bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Chunk fills in flight to the origin per replica; always > 0.
    pub origin_concurrency: usize,
    /// Bytes the edge may buffer for read-ahead across all clients; at least the largest chunk.
    pub readahead_memory: u64,
    /// Connect / first-byte timeout of one origin request; always > 0.
    pub origin_timeout: Duration,
    /// A client write that makes no progress this long fails its request; always > 0.
    pub client_write_timeout: Duration,
    /// The longest a GET waits for read-ahead budget before `503 SlowDown`; always > 0.
    pub readahead_wait: Duration,
    /// Client connections the edge holds at once (more are closed at accept); always > 0.
    pub max_connections: usize,
}

/// Peers and discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Static peer list of `host:port` internal addresses; empty with no `dns` = alone.
    pub peers: Vec<String>,
    /// DNS discovery; never set together with `peers`.
    pub dns: Option<DnsConfig>,
    /// This replica's internal `host:port` as peers see it (`ORCA_SELF` wins over `self`).
    /// Always set when `peers` or `dns` is.
    pub self_addr: Option<String>,
    /// Name of the env var holding the peers' shared secret; the variable was set and
    /// non-empty at validation time.
    pub shared_secret_env: Option<String>,
    /// CA certificates (PEM, readable at validation) that peers' internal certificates must
    /// chain to; set, peers are dialled over TLS.
    pub peer_ca: Option<PathBuf>,
    /// The name peers' certificates are checked for; `None`: each peer's host. Only with
    /// `peer_ca`.
    pub peer_server_name: Option<String>,
}

/// DNS peer discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// The name whose addresses are the peers.
    pub name: String,
    /// The peers' internal port; never 0.
    pub port: u16,
    /// How often the name is resolved again; always > 0.
    pub refresh: Duration,
}

/// Log level and format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logging {
    /// One of [`LOG_LEVELS`], lowercase.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// The RAM tier (`cachestore.memory`): the hottest chunks kept in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryTier {
    /// The most it holds, in bytes; 0: no RAM tier. Otherwise at least the largest chunk.
    pub max_size: u64,
}
