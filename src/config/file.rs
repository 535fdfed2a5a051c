//! The configuration file as operators write it: serde structs that mirror the YAML keys of
//! `docs/configuration.md` one for one, with `deny_unknown_fields` everywhere so a typo is an error rather
//! than a silently ignored key. Defaults live here, next to the keys; the only value without one
//! is `origin.id`, which stays an `Option` so that its absence is reported by validation together
//! with every other problem. Nothing here checks cross-field rules or reads the environment: that
//! is [`super::validated`]'s job.

use serde::{Deserialize, Deserializer};

use super::units::{ByteSize, HumanDuration, SizeOrPercent};

/// Deserializes a section that may be written as an empty key (`cluster:` with everything under
/// it commented out, which YAML reads as null) as its default.
fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping of keys")]
pub struct OrcaFile {
    /// `listen`: the three listening addresses.
    #[serde(deserialize_with = "null_default")]
    pub listen: ListenFile,
    /// `origin`: where objects come from.
    #[serde(deserialize_with = "null_default")]
    pub origin: OriginFile,
    /// `edge`: the client-facing S3 surface.
    #[serde(deserialize_with = "null_default")]
    pub edge: EdgeFile,
    /// `cachestore`: where chunks are kept.
    #[serde(deserialize_with = "null_default")]
    pub cachestore: CacheStoreFile,
    /// `chunking`: chunk sizes and read-ahead.
    #[serde(deserialize_with = "null_default")]
    pub chunking: ChunkingFile,
    /// `metadata`: the HEAD-result cache.
    #[serde(deserialize_with = "null_default")]
    pub metadata: MetadataFile,
    /// `catalog`: the in-memory record of chunks recently found missing from the store.
    #[serde(deserialize_with = "null_default")]
    pub catalog: CatalogFile,
    /// `limits`: concurrency and memory bounds.
    #[serde(deserialize_with = "null_default")]
    pub limits: LimitsFile,
    /// `cluster`: peers and discovery.
    #[serde(deserialize_with = "null_default")]
    pub cluster: ClusterFile,
    /// `logging`: level and format.
    #[serde(deserialize_with = "null_default")]
    pub logging: LoggingFile,
    /// `ops`: cache control on the ops port.
    #[serde(deserialize_with = "null_default")]
    pub ops: super::ops::OpsFile,
}

/// `listen`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping of keys")]
pub struct ListenFile {
    /// Client-facing S3 port. Default `0.0.0.0:8443`.
    pub edge: String,
    /// Peer-to-peer chunk fills. Default `0.0.0.0:8444`.
    pub internal: String,
    /// `/healthz`, `/readyz`, `/metrics`. Default `0.0.0.0:8442`.
    pub ops: String,
    /// TLS on the edge port: certificate and key PEM files. Default: plain HTTP.
    pub edge_tls: Option<TlsFile>,
    /// TLS on the internal (fill) port. Default: plain HTTP.
    pub internal_tls: Option<TlsFile>,
}

/// `listen.edge_tls`, `listen.internal_tls`: a certificate chain and its key, as PEM files.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping of keys")]
pub struct TlsFile {
    /// The certificate chain, leaf first. Required.
    pub cert: Option<String>,
    /// The leaf's private key. Required.
    pub key: Option<String>,
    /// Offer HTTP/2 (ALPN `h2`, then `http/1.1`). Edge only. Default false.
    pub http2: bool,
}

impl Default for ListenFile {
    fn default() -> Self {
        ListenFile {
            edge: "0.0.0.0:8443".to_owned(),
            internal: "0.0.0.0:8444".to_owned(),
            ops: "0.0.0.0:8442".to_owned(),
            edge_tls: None,
            internal_tls: None,
        }
    }
}

/// `origin.driver`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum OriginDriverName {
    /// `s3`: S3 or any S3-compatible server (the default).
    #[default]
    #[serde(rename = "s3")]
    S3,
    /// `azureblob`: Azure Blob Storage (or Azurite).
    #[serde(rename = "azureblob")]
    AzureBlob,
}

/// `origin`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping of keys")]
pub struct OriginFile {
    /// Part of every chunk's identity. Required: validation reports it when missing.
    pub id: Option<String>,
    /// Which of the two sections below is used. Default `s3`.
    pub driver: OriginDriverName,
    /// Used when `driver: s3`.
    #[serde(deserialize_with = "null_default")]
    pub s3: S3OriginFile,
    /// Used when `driver: azureblob`.
    #[serde(deserialize_with = "null_default")]
    pub azureblob: AzureBlobFile,
}

/// `origin.s3`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping of keys")]
pub struct S3OriginFile {
    /// Default `https://s3.{region}.amazonaws.com`.
    pub endpoint: Option<String>,
    /// Default `us-east-1`.
    pub region: String,
    /// `https://endpoint/bucket/key` rather than `https://bucket.endpoint/key`. Default false.
    pub path_style: bool,
    /// Static key id; prefer env `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// Static secret; prefer env `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
    /// Optional session token going with the static keys.
    pub session_token: Option<String>,
    /// Send unsigned requests (public buckets). Default false.
    pub anonymous: bool,
}

impl Default for S3OriginFile {
    fn default() -> Self {
        S3OriginFile {
            endpoint: None,
            region: "us-east-1".to_owned(),
            path_style: false,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            anonymous: false,
        }
    }
}

/// `origin.azureblob`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping of keys")]
pub struct AzureBlobFile {
    /// Storage account name. Default `devstoreaccount1` (Azurite).
    pub account: Option<String>,
    /// Default: Azurite's `http://127.0.0.1:10000/devstoreaccount1` when `account` is also
    /// omitted, else `https://{account}.blob.core.windows.net`.
    pub endpoint: Option<String>,
    /// A SAS token (with or without the leading `?`).
    pub sas_token: Option<String>,
    /// The shared key; prefer env `AZURE_STORAGE_KEY`.
    pub account_key: Option<String>,
    /// How requests are authorized: `shared_key`, `sas` or `entra` (Entra ID bearer tokens
    /// from workload identity, a client secret or managed identity). Default: `sas` when
    /// `sas_token` is set, else `shared_key`.
    pub credentials: Option<AzureCredentialsName>,
}

/// `origin.azureblob.credentials`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AzureCredentialsName {
    /// The account's shared key (`account_key` or env `AZURE_STORAGE_KEY`).
    SharedKey,
    /// A SAS token (`sas_token`).
    Sas,
    /// Entra ID tokens, from the environment the platform sets (see `docs/azure.md`).
    Entra,
}

/// `edge`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping of keys")]
pub struct EdgeFile {
    /// `orca.example.com` makes `bucket.orca.example.com/key` mean `bucket/key`. Default "" (off).
    pub virtual_host_suffix: String,
    /// Allowlist of client-visible buckets; empty (the default) allows any.
    #[serde(deserialize_with = "null_default")]
    pub buckets: Vec<String>,
    /// `edge.auth`: client authentication (SigV4).
    #[serde(deserialize_with = "null_default")]
    pub auth: EdgeAuthFile,
}

/// `edge.auth`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping of keys")]
pub struct EdgeAuthFile {
    /// Refuse unsigned requests. Default false.
    pub required: bool,
    /// The YAML file of client keys (see `config::client_keys`). Default none.
    pub credentials_file: Option<String>,
}

/// `cachestore.driver`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum CacheStoreDriverName {
    /// `fs`: a local directory (the default, one machine).
    #[default]
    #[serde(rename = "fs")]
    Fs,
    /// `s3`: a bucket shared by a cluster.
    #[serde(rename = "s3")]
    S3,
}

/// `cachestore`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping of keys")]
pub struct CacheStoreFile {
    /// Which of the two sections below is used. Default `fs`.
    pub driver: CacheStoreDriverName,
    /// Used when `driver: fs`.
    #[serde(deserialize_with = "null_default")]
    pub fs: FsStoreFile,
    /// Used when `driver: s3`.
    #[serde(deserialize_with = "null_default")]
    pub s3: S3StoreFile,
    /// With `driver: s3`: a bounded local tier in front of the shared store (same keys as
    /// `fs`). Default unset (off).
    pub local: Option<FsStoreFile>,
    /// The RAM tier in front of the store. Default off.
    #[serde(deserialize_with = "null_default")]
    pub memory: MemoryTierFile,
}

/// `cachestore.memory`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping of keys")]
pub struct MemoryTierFile {
    /// The most the RAM tier holds, in bytes. Default 0: no RAM tier.
    pub max_size: ByteSize,
}

impl Default for MemoryTierFile {
    fn default() -> Self {
        MemoryTierFile {
            max_size: ByteSize(0),
        }
    }
}

/// `cachestore.fs`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping of keys")]
pub struct FsStoreFile {
    /// Directory holding the chunks. Default `./data/cache`.
    pub root: String,
    /// The most the store may hold. Default unset: 90 % of the filesystem's size at start.
    pub max_size: Option<ByteSize>,
    /// Space to leave free on the filesystem (a size or a percentage of it). Default 5%.
    pub min_free: SizeOrPercent,
    /// Where eviction stops (a percentage of the bound, or a size). Default 90%.
    pub low_watermark: SizeOrPercent,
}

impl Default for FsStoreFile {
    fn default() -> Self {
        FsStoreFile {
            root: "./data/cache".to_owned(),
            max_size: None,
            min_free: SizeOrPercent::Percent(5),
            low_watermark: SizeOrPercent::Percent(90),
        }
    }
}

/// `cachestore.s3`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping of keys")]
pub struct S3StoreFile {
    /// Default `http://127.0.0.1:9000`.
    pub endpoint: String,
    /// Default `us-east-1`.
    pub region: String,
    /// Default `orca-cache`.
    pub bucket: String,
    /// Default true (most self-hosted S3 servers want it).
    pub path_style: bool,
    /// Static key id; prefer env `ORCA_CACHESTORE_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// Static secret; prefer env `ORCA_CACHESTORE_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
}

impl Default for S3StoreFile {
    fn default() -> Self {
        S3StoreFile {
            endpoint: "http://127.0.0.1:9000".to_owned(),
            region: "us-east-1".to_owned(),
            bucket: "orca-cache".to_owned(),
            path_style: true,
            access_key_id: None,
            secret_access_key: None,
        }
    }
}

/// One entry of `chunking.tiers`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping such as { min_object_size: 1GiB, size: 64MiB }"
)]
pub struct TierFile {
    /// Objects at least this large use `size`.
    pub min_object_size: ByteSize,
    /// The chunk size for those objects.
    pub size: ByteSize,
}

/// `chunking`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping of keys")]
pub struct ChunkingFile {
    /// Base chunk size. Default 8MiB.
    pub size: ByteSize,
    /// `None` when the key is omitted (or null): the default ladder applies. `Some(vec![])` when
    /// written as `[]`: no tiers at all.
    pub tiers: Option<Vec<TierFile>>,
    /// Chunks fetched ahead of the one being sent. Default 8.
    pub readahead: usize,
    /// Chunks longer than this are fetched from the origin as parallel ranged GETs of this
    /// size, the requester's part first. Default 8MiB; 0 = one GET per chunk.
    pub subrange_size: ByteSize,
    /// Origin GETs one such fill runs at once, spare `limits.origin_concurrency` permits
    /// allowing. Default 4.
    pub subrange_streams: usize,
}

impl Default for ChunkingFile {
    fn default() -> Self {
        ChunkingFile {
            size: ByteSize::mib(8),
            tiers: None,
            readahead: 8,
            subrange_size: ByteSize::mib(8),
            subrange_streams: 4,
        }
    }
}

impl ChunkingFile {
    /// The ladder used when `chunking.tiers` is omitted: 64MiB chunks from 1GiB objects up,
    /// 128MiB from 10GiB.
    #[must_use]
    pub fn default_tiers() -> Vec<TierFile> {
        vec![
            TierFile {
                min_object_size: ByteSize::gib(1),
                size: ByteSize::mib(64),
            },
            TierFile {
                min_object_size: ByteSize::gib(10),
                size: ByteSize::mib(128),
            },
        ]
    }
}

/// `metadata`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping of keys")]
pub struct MetadataFile {
    /// How long a HEAD result is trusted. Default 60s.
    pub ttl: HumanDuration,
    /// How long a 404 (or another negative answer) is trusted. Default 10s.
    pub negative_ttl: HumanDuration,
    /// Default 100000.
    pub max_entries: usize,
}

impl Default for MetadataFile {
    fn default() -> Self {
        MetadataFile {
            ttl: HumanDuration::secs(60),
            negative_ttl: HumanDuration::secs(10),
            max_entries: 100_000,
        }
    }
}

/// `catalog`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping of keys")]
pub struct CatalogFile {
    /// Chunks remembered as present in the cachestore. Default 1000000.
    pub max_entries: usize,
}

impl Default for CatalogFile {
    fn default() -> Self {
        CatalogFile {
            max_entries: 1_000_000,
        }
    }
}

/// `limits`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping of keys")]
pub struct LimitsFile {
    /// Chunk fills in flight to the origin per replica. Default 64.
    pub origin_concurrency: usize,
    /// Removed: it never had an effect. Kept only to answer a configuration that still sets it
    /// with a message saying so (the RAM tier is bounded in bytes: `cachestore.memory.max_size`).
    pub memory_chunks: Option<serde_norway::Value>,
    /// Bytes the edge may buffer for read-ahead across all clients. Default 1GiB.
    pub readahead_memory: ByteSize,
    /// Connect / first-byte timeout of one origin request. Default 30s.
    pub origin_timeout: HumanDuration,
    /// How long a write to a client may make no progress before its request fails. Default 60s.
    pub client_write_timeout: HumanDuration,
    /// How long a GET may wait for read-ahead budget before it is answered `503 SlowDown`.
    /// Default 10s.
    pub readahead_wait: HumanDuration,
    /// Client connections the edge holds open at once; more are closed at accept. Default 16384.
    pub max_connections: usize,
}

impl Default for LimitsFile {
    fn default() -> Self {
        LimitsFile {
            origin_concurrency: 64,
            memory_chunks: None,
            readahead_memory: ByteSize::gib(1),
            origin_timeout: HumanDuration::secs(30),
            client_write_timeout: HumanDuration::secs(60),
            readahead_wait: HumanDuration::secs(10),
            max_connections: 16384,
        }
    }
}

/// `cluster.dns`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping of keys")]
pub struct DnsFile {
    /// The name whose A/AAAA records are the peers (a headless Service). Required in the section.
    pub name: String,
    /// The peers' internal port. Default 8444.
    pub port: u16,
    /// How often the name is resolved again. Default 5s.
    pub refresh: HumanDuration,
}

impl Default for DnsFile {
    fn default() -> Self {
        DnsFile {
            name: String::new(),
            port: 8444,
            refresh: HumanDuration::secs(5),
        }
    }
}

/// `cluster`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping of keys")]
pub struct ClusterFile {
    /// Static peer list (`host:port` of each internal listener). Empty (the default) = alone.
    #[serde(deserialize_with = "null_default")]
    pub peers: Vec<String>,
    /// DNS discovery instead of a static list.
    pub dns: Option<DnsFile>,
    /// This replica's internal address as peers see it; env `ORCA_SELF` wins.
    #[serde(rename = "self")]
    pub self_addr: Option<String>,
    /// Name of the env var holding the peers' shared secret.
    pub shared_secret_env: Option<String>,
    /// CA certificates (PEM) that peers' internal certificates must chain to; set, peers are
    /// dialled over TLS.
    pub peer_ca: Option<String>,
    /// The name peers' certificates are checked for; default: each peer's host.
    pub peer_server_name: Option<String>,
}

/// `logging.format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormatName {
    /// One JSON object per line (the default).
    #[default]
    Json,
    /// Human-readable lines.
    Text,
}

/// `logging`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping of keys")]
pub struct LoggingFile {
    /// trace, debug, info, warn or error. Default info; env `ORCA_LOG_LEVEL` wins.
    pub level: String,
    /// Default json.
    pub format: LogFormatName,
}

impl Default for LoggingFile {
    fn default() -> Self {
        LoggingFile {
            level: "info".to_owned(),
            format: LogFormatName::Json,
        }
    }
}
