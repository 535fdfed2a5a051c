//! The rules: turns the file structs of [`super::file`] and the environment into the validated
//! [`Config`], walking the whole file and collecting every [`Problem`], each naming its key, so
//! an operator fixes a config in one round instead of one error at a time. Credentials are
//! resolved here (file, then environment), as are the `ORCA_SELF` and `ORCA_LOG_LEVEL` overrides.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::file::MemoryTierFile;
use super::file::{
    AzureBlobFile, AzureCredentialsName, CacheStoreDriverName, CacheStoreFile, ChunkingFile,
    ClusterFile, EdgeAuthFile, EdgeFile, FsStoreFile, LimitsFile, ListenFile, LogFormatName,
    LoggingFile, MetadataFile, OrcaFile, OriginDriverName, OriginFile, S3OriginFile, S3StoreFile,
    TlsFile,
};
use super::units::SizeOrPercent;
use super::validated::MemoryTier;
use super::validated::{
    AzureBlobConfig, AzureCredentials, CacheStoreConfig, CatalogConfig, Chunking, ClusterConfig,
    Config, DnsConfig, EdgeAuthConfig, EdgeConfig, EntraSource, EnvLookup, FsLimits, Limits,
    Listen, LocalTier, LogFormat, Logging, MetadataConfig, OriginConfig, OriginDriver, Problem,
    S3Credentials, S3OriginConfig, Tier, LOG_LEVELS, MAX_CHUNK_SIZE, MAX_READAHEAD,
    MAX_SUBRANGE_STREAMS, MIN_SUBRANGE_SIZE,
};
use crate::net::tls::TlsFiles;

/// Collects problems while validation walks the file.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// Runs `check`, records its error under `key`, and returns the value when it passed.
    fn check<T>(&mut self, key: impl Into<String>, result: Result<T, String>) -> Option<T> {
        result.map_err(|message| self.push(key, message)).ok()
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// The environment, with empty values read as unset (`FOO=` in a shell or a manifest usually
/// means "not configured").
struct Env<'a>(EnvLookup<'a>);

impl Env<'_> {
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|v| !v.is_empty())
    }
}

/// Turns the file into a [`Config`], reading the environment through `env`.
///
/// # Errors
///
/// Every problem found, in file order, each naming its key.
pub fn validate(file: OrcaFile, env: EnvLookup<'_>) -> Result<Config, Vec<Problem>> {
    let env = Env(env);
    let mut p = Problems::default();

    let listen = listen(&mut p, file.listen);
    let origin = origin(&mut p, file.origin, &env);
    let edge = edge(&mut p, file.edge, &env);
    let memory_tier = memory_tier(&mut p, &file.cachestore.memory);
    let cachestore = cachestore(&mut p, file.cachestore, &env);
    let chunking = chunking(&mut p, file.chunking);
    fs_bound_holds_a_chunk(&mut p, cachestore.as_ref(), chunking.as_ref());
    memory_tier_holds_a_chunk(&mut p, &memory_tier, chunking.as_ref());
    let metadata = metadata(&mut p, &file.metadata);
    let catalog = CatalogConfig {
        max_entries: file.catalog.max_entries,
    };
    let limits = limits(&mut p, &file.limits, chunking.as_ref());
    let cluster = cluster(&mut p, file.cluster, &env);
    peer_tls_consistent(&mut p, listen.as_ref(), cluster.as_ref());
    let logging = logging(&mut p, file.logging, &env);
    let ops = super::ops::validate(file.ops).map_err(|problems| {
        for (key, message) in problems {
            p.push(key, message);
        }
    });

    match (
        listen, origin, edge, cachestore, chunking, metadata, limits, cluster, logging,
    ) {
        (
            Some(listen),
            Some(origin),
            Some(edge),
            Some(cachestore),
            Some(chunking),
            Some(metadata),
            Some(limits),
            Some(cluster),
            Some(logging),
        ) if p.0.is_empty() => Ok(Config {
            listen,
            origin,
            edge,
            cachestore,
            chunking,
            metadata,
            catalog,
            limits,
            cluster,
            logging,
            ops: ops.unwrap_or_default(),
            memory_tier,
        }),
        _ => Err(p.0),
    }
}

/// `Some(value)` when no problem was recorded since `before`.
fn unless_new_problems<T>(p: &Problems, before: usize, value: T) -> Option<T> {
    (p.len() == before).then_some(value)
}

fn listen(p: &mut Problems, file: ListenFile) -> Option<Listen> {
    let before = p.len();
    let mut seen: Vec<(SocketAddr, &str)> = Vec::new();
    for (key, addr) in [
        ("listen.edge", &file.edge),
        ("listen.internal", &file.internal),
        ("listen.ops", &file.ops),
    ] {
        match addr.parse::<SocketAddr>() {
            Ok(sock) => {
                if let Some((_, other)) = seen
                    .iter()
                    .find(|(s, _)| s.port() != 0 && s.port() == sock.port() && s.ip() == sock.ip())
                {
                    p.push(key, format!("\"{addr}\" is already used by {other}"));
                }
                seen.push((sock, key));
            }
            Err(_) => p.push(
                key,
                format!("\"{addr}\" is not an ip:port address, e.g. 0.0.0.0:8443 or [::]:8443"),
            ),
        }
    }
    let edge_tls = file
        .edge_tls
        .and_then(|t| tls_files(p, "listen.edge_tls", t));
    let internal_tls = file
        .internal_tls
        .and_then(|t| tls_files(p, "listen.internal_tls", t));
    unless_new_problems(
        p,
        before,
        Listen {
            edge: file.edge,
            internal: file.internal,
            ops: file.ops,
            edge_tls,
            internal_tls,
        },
    )
}

/// Checks a listener's `{cert, key}`: both given, both readable PEM, the key going with the
/// certificate. Each problem names the key of the file at fault.
fn tls_files(p: &mut Problems, key: &str, file: TlsFile) -> Option<TlsFiles> {
    use crate::net::tls::{load_certified_key, TlsFileError};
    let (Some(cert), Some(private)) = (&file.cert, &file.key) else {
        for (name, value) in [("cert", &file.cert), ("key", &file.key)] {
            if value.is_none() {
                p.push(
                    format!("{key}.{name}"),
                    format!("required when {key} is set: a PEM file"),
                );
            }
        }
        return None;
    };
    if file.http2 && key != "listen.edge_tls" {
        p.push(
            format!("{key}.http2"),
            "only the edge offers HTTP/2 (peers speak HTTP/1.1)",
        );
    }
    let files = TlsFiles {
        cert: PathBuf::from(cert),
        key: PathBuf::from(private),
        http2: file.http2,
    };
    match load_certified_key(&files) {
        Ok(_) => Some(files),
        Err(e) => {
            let at = match &e {
                TlsFileError::Mismatch { .. } => key.to_string(),
                TlsFileError::Read { path, .. }
                | TlsFileError::Pem { path, .. }
                | TlsFileError::NoCertificate { path }
                | TlsFileError::BadCertificate { path, .. }
                | TlsFileError::NoKey { path } => {
                    let name = if *path == files.cert { "cert" } else { "key" };
                    format!("{key}.{name}")
                }
            };
            p.push(at, e.to_string());
            None
        }
    }
}

/// Peers of a replica whose internal port speaks TLS must be dialled over TLS: with
/// `listen.internal_tls` and peers, `cluster.peer_ca` is required.
fn peer_tls_consistent(p: &mut Problems, listen: Option<&Listen>, cluster: Option<&ClusterConfig>) {
    let (Some(listen), Some(cluster)) = (listen, cluster) else {
        return;
    };
    let clustered = !cluster.peers.is_empty() || cluster.dns.is_some();
    if listen.internal_tls.is_some() && clustered && cluster.peer_ca.is_none() {
        p.push(
            "cluster.peer_ca",
            "required with listen.internal_tls and peers: the CA (PEM) that the peers' \
             internal certificates chain to, so peers are dialled over TLS and verified",
        );
    }
}

fn origin(p: &mut Problems, file: OriginFile, env: &Env<'_>) -> Option<OriginConfig> {
    let id = match file.id {
        None => {
            p.push(
                "origin.id",
                "required: a name for the origin (part of every chunk's identity), e.g. my-origin",
            );
            None
        }
        Some(id) if id.trim().is_empty() => {
            p.push("origin.id", "must not be empty");
            None
        }
        Some(id) if id.chars().any(char::is_control) => {
            p.push("origin.id", "must not contain control characters");
            None
        }
        Some(id) => Some(id),
    };
    let driver = match file.driver {
        OriginDriverName::S3 => s3_origin(p, file.s3, env).map(OriginDriver::S3),
        OriginDriverName::AzureBlob => {
            azure_origin(p, file.azureblob, env).map(OriginDriver::AzureBlob)
        }
    };
    Some(OriginConfig {
        id: id?,
        driver: driver?,
    })
}

fn s3_origin(p: &mut Problems, file: S3OriginFile, env: &Env<'_>) -> Option<S3OriginConfig> {
    let region = p.check("origin.s3.region", region(&file.region));
    let endpoint = match &file.endpoint {
        Some(endpoint) => p.check("origin.s3.endpoint", endpoint_url(endpoint, false)),
        None => Some(format!("https://s3.{}.amazonaws.com", file.region)),
    };
    let credentials = s3_credentials(
        p,
        &CredentialSources {
            section: "origin.s3",
            access_key_id: file.access_key_id,
            secret_access_key: file.secret_access_key,
            session_token: file.session_token,
            anonymous: Some(file.anonymous),
            env_access_key_id: "AWS_ACCESS_KEY_ID",
            env_secret_access_key: "AWS_SECRET_ACCESS_KEY",
            env_session_token: Some("AWS_SESSION_TOKEN"),
            chain_reads_env: true,
        },
        env,
    );
    Some(S3OriginConfig {
        endpoint: endpoint?,
        region: region?,
        path_style: file.path_style,
        credentials: credentials?,
    })
}

/// Where S3 credentials may come from, for one section.
struct CredentialSources {
    /// `origin.s3` or `cachestore.s3`.
    section: &'static str,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
    /// `None` when the section has no `anonymous` key.
    anonymous: Option<bool>,
    env_access_key_id: &'static str,
    env_secret_access_key: &'static str,
    env_session_token: Option<&'static str>,
    /// Whether the default chain reads the section's env variables itself (the `AWS_*` ones):
    /// then they select the chain rather than static keys.
    chain_reads_env: bool,
}

/// Resolves S3 credentials: `anonymous: true`, else both keys from the section, else both keys
/// from the environment.
fn s3_credentials(
    p: &mut Problems,
    src: &CredentialSources,
    env: &Env<'_>,
) -> Option<S3Credentials> {
    let section = src.section;
    let before = p.len();
    let in_file: Vec<&str> = [
        ("access_key_id", &src.access_key_id),
        ("secret_access_key", &src.secret_access_key),
        ("session_token", &src.session_token),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.as_ref().map(|_| name))
    .collect();

    if src.anonymous == Some(true) {
        if !in_file.is_empty() {
            p.push(
                format!("{section}.anonymous"),
                format!(
                    "anonymous: true cannot be combined with {}; remove one or the other",
                    in_file.join(" / ")
                ),
            );
        }
        return unless_new_problems(p, before, S3Credentials::Anonymous);
    }

    for (name, value) in [
        ("access_key_id", &src.access_key_id),
        ("secret_access_key", &src.secret_access_key),
        ("session_token", &src.session_token),
    ] {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            p.push(format!("{section}.{name}"), "must not be empty when set");
        }
    }
    match (&src.access_key_id, &src.secret_access_key) {
        (Some(id), Some(secret)) => {
            return unless_new_problems(
                p,
                before,
                S3Credentials::Static {
                    access_key_id: id.clone(),
                    secret_access_key: secret.clone(),
                    session_token: src.session_token.clone(),
                },
            );
        }
        (Some(_), None) => {
            p.push(
                format!("{section}.secret_access_key"),
                "missing: access_key_id is set, so secret_access_key must be too",
            );
            return None;
        }
        (None, Some(_)) => {
            p.push(
                format!("{section}.access_key_id"),
                "missing: secret_access_key is set, so access_key_id must be too",
            );
            return None;
        }
        (None, None) => {
            if src.session_token.is_some() {
                p.push(
                    format!("{section}.session_token"),
                    "set without access_key_id and secret_access_key",
                );
                return None;
            }
        }
    }

    env_credentials(p, src, env)
}

/// The last resort of [`s3_credentials`]: both keys from the environment (or, for variables
/// the chain reads itself, the chain), half a pair as a problem, or the default chain.
fn env_credentials(
    p: &mut Problems,
    src: &CredentialSources,
    env: &Env<'_>,
) -> Option<S3Credentials> {
    let section = src.section;
    let (id_var, secret_var) = (src.env_access_key_id, src.env_secret_access_key);
    match (env.get(id_var), env.get(secret_var)) {
        (Some(_), Some(_)) if src.chain_reads_env => Some(S3Credentials::DefaultChain),
        (Some(access_key_id), Some(secret_access_key)) => Some(S3Credentials::Static {
            access_key_id,
            secret_access_key,
            session_token: src.env_session_token.and_then(|var| env.get(var)),
        }),
        (Some(_), None) => {
            p.push(
                section,
                format!("env {id_var} is set but {secret_var} is not"),
            );
            None
        }
        (None, Some(_)) => {
            p.push(
                section,
                format!("env {secret_var} is set but {id_var} is not"),
            );
            None
        }
        // No keys anywhere: the default chain (the shared files, web identity, container
        // credentials, IMDS); it reports at start and in /readyz what it found.
        (None, None) => Some(S3Credentials::DefaultChain),
    }
}

/// Azurite's well-known development account and its blob endpoint.
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_ENDPOINT: &str = "http://127.0.0.1:10000/devstoreaccount1";

fn azure_origin(p: &mut Problems, file: AzureBlobFile, env: &Env<'_>) -> Option<AzureBlobConfig> {
    let before = p.len();
    let (account, endpoint) = match (file.account, file.endpoint) {
        (None, None) => (AZURITE_ACCOUNT.to_owned(), AZURITE_ENDPOINT.to_owned()),
        (account, endpoint) => {
            let account = account.unwrap_or_else(|| AZURITE_ACCOUNT.to_owned());
            let endpoint =
                endpoint.unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"));
            (account, endpoint)
        }
    };
    let valid_account = (3..=24).contains(&account.len())
        && account
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !valid_account {
        p.push(
            "origin.azureblob.account",
            format!(
                "\"{account}\" is not a storage account name (3-24 lowercase letters and digits)"
            ),
        );
    }
    let endpoint = p.check("origin.azureblob.endpoint", endpoint_url(&endpoint, true));

    let credentials = match file.credentials {
        Some(AzureCredentialsName::Entra) => {
            entra_credentials(p, file.account_key.is_some(), file.sas_token.is_some(), env)
        }
        Some(AzureCredentialsName::SharedKey) if file.sas_token.is_some() => {
            p.push(
                "origin.azureblob.sas_token",
                "set with credentials: shared_key; remove one of them",
            );
            None
        }
        Some(AzureCredentialsName::Sas) if file.sas_token.is_none() => {
            p.push(
                "origin.azureblob.sas_token",
                "required with credentials: sas (the token, with or without its leading ?)",
            );
            None
        }
        _ => key_or_sas(p, file.account_key, file.sas_token, env),
    };
    match &credentials {
        Some(AzureCredentials::SharedKey(key)) if key.trim().is_empty() => {
            p.push("origin.azureblob.account_key", "must not be empty when set");
        }
        Some(AzureCredentials::Sas(sas)) if sas.trim().is_empty() => {
            p.push("origin.azureblob.sas_token", "must not be empty when set");
        }
        _ => {}
    }
    let config = AzureBlobConfig {
        account,
        endpoint: endpoint?,
        credentials: credentials?,
    };
    unless_new_problems(p, before, config)
}

/// `credentials: entra`: no key or SAS beside it, and a source the environment describes
/// completely (a half-set one is a problem naming the missing variable, not a silent fall
/// to managed identity).
fn entra_credentials(
    p: &mut Problems,
    has_key: bool,
    has_sas: bool,
    env: &Env<'_>,
) -> Option<AzureCredentials> {
    let before = p.len();
    if has_key {
        p.push(
            "origin.azureblob.account_key",
            "set with credentials: entra; remove one of them",
        );
    }
    if has_sas {
        p.push(
            "origin.azureblob.sas_token",
            "set with credentials: entra; remove one of them",
        );
    }
    if let Some(host) = env.get("AZURE_AUTHORITY_HOST") {
        if !host.starts_with("https://") {
            p.push(
                "origin.azureblob.credentials",
                format!("entra: env AZURE_AUTHORITY_HOST must be an https:// URL, not \"{host}\""),
            );
        }
    }
    let mut need = |var: &str, because: &str| {
        let value = env.get(var);
        if value.is_none() {
            p.push(
                "origin.azureblob.credentials",
                format!("entra: env {because} is set but {var} is not"),
            );
        }
        value.unwrap_or_default()
    };
    let source = if let Some(secret) = env.get("AZURE_CLIENT_SECRET") {
        EntraSource::ClientSecret {
            tenant_id: need("AZURE_TENANT_ID", "AZURE_CLIENT_SECRET"),
            client_id: need("AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"),
            secret,
        }
    } else if let Some(token_file) = env.get("AZURE_FEDERATED_TOKEN_FILE") {
        EntraSource::WorkloadIdentity {
            tenant_id: need("AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE"),
            client_id: need("AZURE_CLIENT_ID", "AZURE_FEDERATED_TOKEN_FILE"),
            token_file,
        }
    } else {
        EntraSource::ManagedIdentity {
            client_id: env.get("AZURE_CLIENT_ID"),
        }
    };
    (p.len() == before).then_some(AzureCredentials::Entra(source))
}

/// Without `credentials: entra`: a shared key or a SAS token, whichever is set.
fn key_or_sas(
    p: &mut Problems,
    account_key: Option<String>,
    sas_token: Option<String>,
    env: &Env<'_>,
) -> Option<AzureCredentials> {
    match (account_key, sas_token) {
        (Some(_), Some(_)) => {
            p.push(
                "origin.azureblob",
                "set either account_key or sas_token, not both",
            );
            None
        }
        (Some(key), None) => Some(AzureCredentials::SharedKey(key)),
        (None, Some(sas)) => Some(AzureCredentials::Sas(
            sas.strip_prefix('?').unwrap_or(&sas).to_owned(),
        )),
        (None, None) => {
            let key = env.get("AZURE_STORAGE_KEY");
            if key.is_none() {
                p.push(
                    "origin.azureblob",
                    "no credentials found: set env AZURE_STORAGE_KEY, or account_key or \
                     sas_token under origin.azureblob, or credentials: entra (Entra ID)",
                );
            }
            key.map(AzureCredentials::SharedKey)
        }
    }
}

fn edge(p: &mut Problems, file: EdgeFile, env: &Env<'_>) -> Option<EdgeConfig> {
    let before = p.len();
    let suffix = file.virtual_host_suffix.trim();
    let suffix = suffix
        .strip_prefix('.')
        .unwrap_or(suffix)
        .to_ascii_lowercase();
    let virtual_host_suffix = if suffix.is_empty() {
        None
    } else {
        p.check("edge.virtual_host_suffix", hostname(&suffix));
        Some(suffix)
    };
    let mut seen = HashSet::new();
    for (i, bucket) in file.buckets.iter().enumerate() {
        let key = format!("edge.buckets[{i}]");
        if bucket.is_empty() {
            p.push(key, "must not be empty");
        } else if bucket.contains('/') || bucket.chars().any(char::is_whitespace) {
            p.push(key, format!("\"{bucket}\" is not a bucket name"));
        } else if !seen.insert(bucket.as_str()) {
            p.push(key, format!("\"{bucket}\" is listed twice"));
        }
    }
    let auth = edge_auth(p, file.auth, env);
    unless_new_problems(
        p,
        before,
        EdgeConfig {
            virtual_host_suffix,
            buckets: file.buckets,
            auth: auth?,
        },
    )
}

/// `edge.auth`: the credentials file is read now, so a bad one stops the start (and `orca -t`).
fn edge_auth(p: &mut Problems, file: EdgeAuthFile, env: &Env<'_>) -> Option<EdgeAuthConfig> {
    let path = file
        .credentials_file
        .filter(|f| !f.trim().is_empty())
        .map(PathBuf::from);
    let Some(path) = path else {
        if file.required {
            p.push(
                "edge.auth.required",
                "true needs edge.auth.credentials_file (the keys clients sign with)",
            );
            return None;
        }
        return Some(EdgeAuthConfig::default());
    };
    let keys = super::client_keys::load(&path, &|name| env.get(name));
    let keys = p.check(
        "edge.auth.credentials_file",
        keys.map_err(|e| e.to_string()),
    )?;
    Some(EdgeAuthConfig {
        required: file.required,
        credentials_file: Some(path),
        keys,
    })
}

fn cachestore(p: &mut Problems, file: CacheStoreFile, env: &Env<'_>) -> Option<CacheStoreConfig> {
    match file.driver {
        CacheStoreDriverName::Fs => {
            if file.local.is_some() {
                p.push(
                    "cachestore.local",
                    "is a tier in front of a shared store: only with driver: s3 \
                     (the fs store is already local)",
                );
            }
            if file.fs.root.trim().is_empty() {
                p.push("cachestore.fs.root", "must not be empty");
                return None;
            }
            let limits = fs_limits(p, "cachestore.fs", &file.fs)?;
            // Resolved now, against the directory Orca was started from: with `-d` the daemon
            // changes its working directory to `/` after the configuration is read
            // (tests/daemon.rs).
            let root = match std::path::absolute(&file.fs.root) {
                Ok(root) => root,
                Err(e) => {
                    p.push(
                        "cachestore.fs.root",
                        format!("cannot resolve against the working directory: {e}"),
                    );
                    return None;
                }
            };
            Some(CacheStoreConfig::Fs { root, limits })
        }
        CacheStoreDriverName::S3 => s3_cachestore(p, file.s3, file.local, env),
    }
}

/// `cachestore.local`: the same keys as `cachestore.fs`.
fn local_tier(p: &mut Problems, file: FsStoreFile) -> Option<LocalTier> {
    if file.root.trim().is_empty() {
        p.push("cachestore.local.root", "must not be empty");
        return None;
    }
    let limits = fs_limits(p, "cachestore.local", &file)?;
    // Resolved now, as `cachestore.fs.root` is: `-d` moves the daemon to `/`.
    let root = match std::path::absolute(&file.root) {
        Ok(root) => root,
        Err(e) => {
            p.push(
                "cachestore.local.root",
                format!("cannot resolve against the working directory: {e}"),
            );
            return None;
        }
    };
    Some(LocalTier { root, limits })
}

/// The bound of an `fs` directory: `section` is `cachestore.fs` or `cachestore.local`.
fn fs_limits(p: &mut Problems, section: &str, file: &FsStoreFile) -> Option<FsLimits> {
    let before = p.len();
    let max_size = file.max_size.map(|m| m.0);
    if max_size == Some(0) {
        p.push(format!("{section}.max_size"), "must be greater than 0");
    }
    if let SizeOrPercent::Percent(pc) = file.min_free {
        if pc >= 100 {
            p.push(
                format!("{section}.min_free"),
                format!("{pc}% leaves no room for the cache; use less than 100%"),
            );
        }
    }
    match (file.low_watermark, max_size) {
        (SizeOrPercent::Percent(pc), _) if !(1..=99).contains(&pc) => p.push(
            format!("{section}.low_watermark"),
            format!("{pc}% must be between 1% and 99% of the bound"),
        ),
        (SizeOrPercent::Size(0), _) => {
            p.push(format!("{section}.low_watermark"), "must be greater than 0");
        }
        (SizeOrPercent::Size(low), Some(max)) if max > 0 && low >= max => p.push(
            format!("{section}.low_watermark"),
            format!("{low} bytes must be below {section}.max_size ({max} bytes)"),
        ),
        _ => {}
    }
    unless_new_problems(
        p,
        before,
        FsLimits {
            max_size,
            min_free: file.min_free,
            low_watermark: file.low_watermark,
        },
    )
}

/// `cachestore.memory`: 0 is off.
fn memory_tier(_p: &mut Problems, file: &MemoryTierFile) -> MemoryTier {
    MemoryTier {
        max_size: file.max_size.0,
    }
}

/// A RAM tier smaller than the largest chunk would never admit one.
fn memory_tier_holds_a_chunk(p: &mut Problems, tier: &MemoryTier, chunking: Option<&Chunking>) {
    let Some(largest) = chunking.map(Chunking::max_chunk_size) else {
        return;
    };
    if tier.max_size > 0 && tier.max_size < largest {
        p.push(
            "cachestore.memory.max_size",
            format!(
                "{} bytes is less than the largest chunk size ({largest} bytes); \
                 it must hold at least one chunk (or be 0: no RAM tier)",
                tier.max_size
            ),
        );
    }
}

/// A bound smaller than the largest chunk would evict every chunk it commits.
fn fs_bound_holds_a_chunk(
    p: &mut Problems,
    cachestore: Option<&CacheStoreConfig>,
    chunking: Option<&Chunking>,
) {
    let bounded = match cachestore {
        Some(CacheStoreConfig::Fs { limits, .. }) => Some(("cachestore.fs", limits)),
        Some(CacheStoreConfig::S3 {
            local: Some(local), ..
        }) => Some(("cachestore.local", &local.limits)),
        _ => None,
    };
    if let (Some((section, limits)), Some(chunking)) = (bounded, chunking) {
        let largest = chunking.max_chunk_size();
        if let Some(max) = limits.max_size.filter(|m| *m < largest) {
            p.push(
                format!("{section}.max_size"),
                format!(
                    "{max} bytes is less than the largest chunk size ({largest} bytes); \
                     it must hold at least one chunk"
                ),
            );
        }
    }
}

fn s3_cachestore(
    p: &mut Problems,
    file: S3StoreFile,
    local: Option<FsStoreFile>,
    env: &Env<'_>,
) -> Option<CacheStoreConfig> {
    let local = local.map(|l| local_tier(p, l));
    let endpoint = p.check(
        "cachestore.s3.endpoint",
        endpoint_url(&file.endpoint, false),
    );
    let region = p.check("cachestore.s3.region", region(&file.region));
    let bucket = p.check("cachestore.s3.bucket", bucket_name(&file.bucket));
    let credentials = s3_credentials(
        p,
        &CredentialSources {
            section: "cachestore.s3",
            access_key_id: file.access_key_id,
            secret_access_key: file.secret_access_key,
            session_token: None,
            anonymous: None,
            env_access_key_id: "ORCA_CACHESTORE_ACCESS_KEY_ID",
            env_secret_access_key: "ORCA_CACHESTORE_SECRET_ACCESS_KEY",
            env_session_token: None,
            chain_reads_env: false,
        },
        env,
    );
    bucket?;
    Some(CacheStoreConfig::S3 {
        endpoint: endpoint?,
        region: region?,
        bucket: file.bucket,
        path_style: file.path_style,
        credentials: credentials?,
        local: match local {
            Some(tier) => Some(tier?),
            None => None,
        },
    })
}

fn chunk_size(value: u64) -> Result<u64, String> {
    if value == 0 {
        Err("must be greater than 0".to_owned())
    } else if value > MAX_CHUNK_SIZE {
        Err(format!("{value} bytes is more than the 4GiB limit"))
    } else {
        Ok(value)
    }
}

fn chunking(p: &mut Problems, file: ChunkingFile) -> Option<Chunking> {
    let before = p.len();
    let base = p.check("chunking.size", chunk_size(file.size.0));
    let tiers_file = file.tiers.unwrap_or_else(ChunkingFile::default_tiers);
    let mut tiers = Vec::with_capacity(tiers_file.len());
    for (i, tier) in tiers_file.iter().enumerate() {
        p.check(format!("chunking.tiers[{i}].size"), chunk_size(tier.size.0));
        if let Some(prev) = i.checked_sub(1).and_then(|j| tiers_file.get(j)) {
            if tier.min_object_size <= prev.min_object_size {
                p.push(
                    format!("chunking.tiers[{i}].min_object_size"),
                    format!(
                        "tiers must be strictly ascending: {} is not greater than \
                         chunking.tiers[{}].min_object_size ({})",
                        tier.min_object_size.0,
                        i - 1,
                        prev.min_object_size.0
                    ),
                );
            }
        }
        tiers.push(Tier {
            min_object_size: tier.min_object_size.0,
            size: tier.size.0,
        });
    }
    if file.readahead > MAX_READAHEAD {
        p.push(
            "chunking.readahead",
            format!(
                "{} is more than the limit of {MAX_READAHEAD}",
                file.readahead
            ),
        );
    }
    let subrange_size = file.subrange_size.0;
    if subrange_size != 0 && !(MIN_SUBRANGE_SIZE..=MAX_CHUNK_SIZE).contains(&subrange_size) {
        p.push(
            "chunking.subrange_size",
            format!("{subrange_size} bytes is outside 1MiB..=4GiB (0 turns sub-range fills off)"),
        );
    }
    if !(1..=MAX_SUBRANGE_STREAMS).contains(&file.subrange_streams) {
        p.push(
            "chunking.subrange_streams",
            format!(
                "{} is outside 1..={MAX_SUBRANGE_STREAMS}",
                file.subrange_streams
            ),
        );
    }
    unless_new_problems(
        p,
        before,
        Chunking {
            base: base?,
            tiers,
            readahead: file.readahead,
            subrange_size,
            subrange_streams: file.subrange_streams,
        },
    )
}

fn metadata(p: &mut Problems, file: &MetadataFile) -> Option<MetadataConfig> {
    if file.max_entries == 0 {
        p.push("metadata.max_entries", "must be greater than 0");
        return None;
    }
    Some(MetadataConfig {
        ttl: file.ttl.0,
        negative_ttl: file.negative_ttl.0,
        max_entries: file.max_entries,
    })
}

fn limits(p: &mut Problems, file: &LimitsFile, chunking: Option<&Chunking>) -> Option<Limits> {
    let before = p.len();
    if file.origin_concurrency == 0 {
        p.push("limits.origin_concurrency", "must be greater than 0");
    }
    if file.origin_timeout.0.is_zero() {
        p.push("limits.origin_timeout", "must be greater than 0");
    }
    if file.memory_chunks.is_some() {
        p.push(
            "limits.memory_chunks",
            "removed: it never had an effect; the RAM tier is bounded in bytes \
             (cachestore.memory.max_size); delete the key",
        );
    }
    if file.client_write_timeout.0.is_zero() {
        p.push("limits.client_write_timeout", "must be greater than 0");
    }
    if file.readahead_wait.0.is_zero() {
        p.push("limits.readahead_wait", "must be greater than 0");
    }
    if file.max_connections == 0 {
        p.push("limits.max_connections", "must be greater than 0");
    }
    if let Some(largest) = chunking.map(Chunking::max_chunk_size) {
        if file.readahead_memory.0 < largest {
            p.push(
                "limits.readahead_memory",
                format!(
                    "{} bytes is less than the largest chunk size ({largest} bytes); \
                     it must hold at least one chunk",
                    file.readahead_memory.0
                ),
            );
        }
    }
    unless_new_problems(
        p,
        before,
        Limits {
            origin_concurrency: file.origin_concurrency,
            readahead_memory: file.readahead_memory.0,
            origin_timeout: file.origin_timeout.0,
            client_write_timeout: file.client_write_timeout.0,
            readahead_wait: file.readahead_wait.0,
            max_connections: file.max_connections,
        },
    )
}

fn cluster(p: &mut Problems, file: ClusterFile, env: &Env<'_>) -> Option<ClusterConfig> {
    let before = p.len();
    let mut seen = HashSet::new();
    for (i, peer) in file.peers.iter().enumerate() {
        let key = format!("cluster.peers[{i}]");
        if p.check(key.clone(), host_port(peer)).is_some() && !seen.insert(peer.as_str()) {
            p.push(key, format!("\"{peer}\" is listed twice"));
        }
    }
    let dns = file.dns.map(|dns| {
        if dns.name.is_empty() {
            p.push(
                "cluster.dns.name",
                "required when cluster.dns is set, e.g. orca-peers.orca.svc.cluster.local",
            );
        } else {
            p.check("cluster.dns.name", hostname(&dns.name));
        }
        if dns.port == 0 {
            p.push("cluster.dns.port", "must not be 0");
        }
        if dns.refresh.0.is_zero() {
            p.push("cluster.dns.refresh", "must be greater than 0");
        }
        DnsConfig {
            name: dns.name,
            port: dns.port,
            refresh: dns.refresh.0,
        }
    });
    if !file.peers.is_empty() && dns.is_some() {
        p.push(
            "cluster",
            "peers and dns are mutually exclusive: use a static list or DNS discovery",
        );
    }

    let (self_addr, self_source) = match env.get("ORCA_SELF") {
        Some(addr) => (Some(addr), "env ORCA_SELF"),
        None => (file.self_addr, "cluster.self"),
    };
    if let Some(addr) = &self_addr {
        if let Err(message) = host_port(addr) {
            p.push("cluster.self", format!("{message} (from {self_source})"));
        } else if !file.peers.is_empty() && !file.peers.contains(addr) {
            p.push(
                "cluster.self",
                format!(
                    "\"{addr}\" (from {self_source}) is not in cluster.peers; list this \
                     replica's own address there exactly as peers reach it"
                ),
            );
        }
    } else if !file.peers.is_empty() || dns.is_some() {
        p.push(
            "cluster.self",
            "required with cluster.peers or cluster.dns: this replica's internal host:port as \
             peers see it (or env ORCA_SELF)",
        );
    }

    if let Some(var) = &file.shared_secret_env {
        shared_secret_env(p, var, env);
    }
    if let Some(ca) = &file.peer_ca {
        if let Err(e) = crate::net::tls::load_ca(std::path::Path::new(ca)) {
            p.push("cluster.peer_ca", e.to_string());
        }
    }
    if let Some(name) = &file.peer_server_name {
        if file.peer_ca.is_none() {
            p.push(
                "cluster.peer_server_name",
                "only with cluster.peer_ca (it names what peers' certificates are checked for)",
            );
        } else if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
            p.push(
                "cluster.peer_server_name",
                format!("\"{name}\" is not a DNS name or an IP address"),
            );
        }
    }

    unless_new_problems(
        p,
        before,
        ClusterConfig {
            peers: file.peers,
            dns,
            self_addr,
            shared_secret_env: file.shared_secret_env,
            peer_ca: file.peer_ca.map(PathBuf::from),
            peer_server_name: file.peer_server_name,
        },
    )
}

/// Checks that `cluster.shared_secret_env` names a variable that is set: a secret the operator
/// asked for but forgot to provide must not leave the internal port open.
fn shared_secret_env(p: &mut Problems, var: &str, env: &Env<'_>) {
    let valid_name = var
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_name {
        p.push(
            "cluster.shared_secret_env",
            format!("\"{var}\" is not an environment variable name"),
        );
    } else if env.get(var).is_none() {
        p.push(
            "cluster.shared_secret_env",
            format!(
                "env {var} is not set (or empty); set it on every replica, or remove \
                 shared_secret_env to leave the internal port open"
            ),
        );
    }
}

fn logging(p: &mut Problems, file: LoggingFile, env: &Env<'_>) -> Option<Logging> {
    let (level, source) = match env.get("ORCA_LOG_LEVEL") {
        Some(level) => (level, " (from env ORCA_LOG_LEVEL)"),
        None => (file.level, ""),
    };
    let level = level.trim().to_ascii_lowercase();
    if !LOG_LEVELS.contains(&level.as_str()) {
        p.push(
            "logging.level",
            format!(
                "\"{level}\"{source} is not one of {}",
                LOG_LEVELS.join(", ")
            ),
        );
        return None;
    }
    let format = match file.format {
        LogFormatName::Json => LogFormat::Json,
        LogFormatName::Text => LogFormat::Text,
    };
    Some(Logging { level, format })
}

/// Checks an `http://` / `https://` URL with a host and no query, and returns it without a
/// trailing slash. Without `allow_path` the URL must not have a path either.
fn endpoint_url(raw: &str, allow_path: bool) -> Result<String, String> {
    let bad = |why: &str| Err(format!("\"{raw}\" {why}"));
    let Ok(uri) = raw.parse::<http::Uri>() else {
        return bad("is not a URL, e.g. https://s3.us-east-1.amazonaws.com");
    };
    let scheme = match uri.scheme_str().map(str::to_ascii_lowercase) {
        Some(s) if s == "http" || s == "https" => s,
        _ => return bad("must start with http:// or https://"),
    };
    let Some(authority) = uri.authority() else {
        return bad("has no host");
    };
    if authority.as_str().contains('@') {
        return bad("must not carry credentials; use the credential settings instead");
    }
    if authority.host().is_empty() {
        return bad("has no host");
    }
    // `http::Uri` accepts any digits after the colon; the port must fit a u16.
    if let Some((_, port)) = authority.as_str().rsplit_once(':') {
        if !port.contains(']') && port.parse::<u16>().is_err() {
            return bad("has an invalid port");
        }
    }
    if uri.query().is_some() || raw.contains('#') {
        return bad("must not have a query or fragment");
    }
    let path = uri.path().trim_end_matches('/');
    if !path.is_empty() && !allow_path {
        return bad("must not have a path; buckets are addressed by path_style");
    }
    Ok(format!("{scheme}://{authority}{path}"))
}

/// Checks a `host:port` address as peers dial it: an IP or DNS name and a non-zero port.
fn host_port(addr: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "\"{addr}\" is not a host:port address, e.g. 10.0.0.5:8444"
        ))
    };
    if let Ok(sock) = addr.parse::<SocketAddr>() {
        return if sock.port() == 0 { bad() } else { Ok(()) };
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return bad();
    };
    match port.parse::<u16>() {
        Ok(port) if port != 0 => {}
        _ => return bad(),
    }
    if hostname(host).is_err() {
        return bad();
    }
    Ok(())
}

/// Checks a DNS name (letters, digits, `-` and `.`, no empty label).
fn hostname(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if valid {
        Ok(())
    } else {
        Err(format!("\"{name}\" is not a host name"))
    }
}

/// Checks a signing region name (e.g. `us-east-1`; S3-compatible servers accept others).
fn region(region: &str) -> Result<String, String> {
    if region.is_empty() {
        return Err("must not be empty, e.g. us-east-1".to_owned());
    }
    if !region
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!("\"{region}\" is not a region name, e.g. us-east-1"));
    }
    Ok(region.to_owned())
}

/// Checks an S3 bucket name: 3-63 lowercase letters, digits, `-` and `.`, starting and ending
/// with a letter or digit.
fn bucket_name(bucket: &str) -> Result<(), String> {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let valid = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && edge_ok(bucket.chars().next())
        && edge_ok(bucket.chars().last());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "\"{bucket}\" is not a bucket name (3-63 lowercase letters, digits, '-' and '.')"
        ))
    }
}
