//! `orcaseed`: fills an S3 bucket or an Azure container with test data, lists it and deletes
//! it (`docs/orcaseed.md`). The store's settings go through Orca's own configuration: an
//! `origin` section (from `--config`, with the flags on top) is validated as Orca validates it,
//! so credentials come from the same places (the section's keys, env `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, env `AZURE_STORAGE_KEY`, a SAS token), and the
//! requests are signed by the same code as Orca's origin drivers. `src/bin/orcaseed.rs` is the
//! thin binary.

pub mod gen;
pub mod progress;
pub mod store;

use crate::config::units::{parse_duration, parse_size};
use crate::config::{ConfigError, OriginDriver};
use clap::{Args, Parser, Subcommand};
use futures::{StreamExt, TryStreamExt};
use indicatif::HumanBytes;
use progress::Progress;
use serde_norway::{Mapping, Value};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use store::{max_single_put, Body, Store};

/// Objects above this size need `--force` (a typo such as `10GiB` for `10MiB` is expensive).
pub const FORCE_ABOVE: u64 = 1 << 30;

/// Why `orcaseed` stopped. The message names the object (`PUT s3://bucket/key: ...`) or the
/// setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The command line asks for something orcaseed will not do. Exit 2.
    #[error("{0}")]
    Usage(String),
    /// A deletion was not confirmed. Exit 2; nothing was deleted.
    #[error("{0}")]
    Refused(String),
    /// The store's settings do not validate. Exit 2.
    #[error(
        "the store's settings (the origin section of --config, the flags, the environment):\n{0}"
    )]
    Config(#[from] ConfigError),
    /// The validated settings could not be turned into a client. Exit 2.
    #[error("{0}")]
    Setup(String),
    /// A request failed or was refused. Exit 1.
    #[error("{op} {url}: {detail}")]
    Op {
        /// `PUT`, `LIST` or `DELETE`.
        op: &'static str,
        /// `s3://bucket/key` or `az://container/key`.
        url: String,
        /// The store's status and error code, or what failed on the way.
        detail: String,
    },
    /// A local file could not be read. Exit 1.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl SeedError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        SeedError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// The process exit code: 2 for usage, settings and refusals, 1 for failed operations.
    pub fn exit_code(&self) -> u8 {
        match self {
            SeedError::Usage(_)
            | SeedError::Refused(_)
            | SeedError::Config(_)
            | SeedError::Setup(_) => 2,
            SeedError::Op { .. } | SeedError::Io { .. } => 1,
        }
    }
}

/// `orcaseed`'s command line.
#[derive(Debug, Parser)]
#[command(
    name = "orcaseed",
    version,
    about = "Seeds an S3 bucket or an Azure container with test data, lists it and deletes it",
    after_help = "Locations are s3://bucket/prefix or az://container/prefix. \
                  Credentials: env AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (S3), \
                  AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN (Azure), or the origin section \
                  of an Orca configuration (--config). See docs/orcaseed.md."
)]
pub struct Cli {
    /// Where the store is and how to sign.
    #[command(flatten)]
    pub store: StoreArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The store's settings on the command line; each one overrides `--config`'s `origin` section.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// An Orca configuration file: its `origin` section (endpoint, region, path style,
    /// credentials) describes the store.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The S3 endpoint (moto: http://127.0.0.1:9000; path style unless --virtual-hosted), or
    /// the Azure blob service URL (Azurite: http://127.0.0.1:10000/devstoreaccount1).
    #[arg(long, global = true, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// S3 signing region (default us-east-1).
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// Address buckets as bucket.host even with --endpoint-url.
    #[arg(long, global = true)]
    pub virtual_hosted: bool,
    /// Azure storage account (default devstoreaccount1, Azurite's).
    #[arg(long, global = true)]
    pub account: Option<String>,
    /// An Azure SAS token instead of the account key.
    #[arg(
        long,
        global = true,
        env = "AZURE_STORAGE_SAS_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub sas_token: Option<String>,
    /// Deadline of each network step: connecting, each write, each answer.
    #[arg(long, global = true, default_value = "30s", value_parser = duration_arg)]
    pub timeout: Duration,
    /// Plain lines even on a terminal (no progress bar).
    #[arg(long, global = true)]
    pub no_progress: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Writes COUNT generated objects of SIZE bytes under a prefix (keys PREFIX/obj-000000...).
    /// Object i's bytes depend only on --seed and i, whatever --concurrency.
    Generate {
        /// s3://bucket/prefix or az://container/prefix.
        location: String,
        /// How many objects.
        #[arg(long)]
        count: u64,
        /// Size of each object: 10MiB, 1GB, 4096...
        #[arg(long, value_parser = size_arg)]
        size: u64,
        /// The run's seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Objects written at once.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
        concurrency: u16,
        /// Allow objects above 1 GiB.
        #[arg(long)]
        force: bool,
        /// Create the bucket or container first when it does not exist.
        #[arg(long)]
        create_bucket: bool,
    },
    /// Uploads a file, or a directory recursively (keys relative to it, under the prefix).
    Upload {
        /// A file or a directory.
        path: PathBuf,
        /// s3://bucket/prefix or az://container/prefix (a file to a location without a
        /// trailing slash takes that key).
        location: String,
        /// Files written at once.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
        concurrency: u16,
        /// Allow files above 1 GiB.
        #[arg(long)]
        force: bool,
        /// Create the bucket or container first when it does not exist.
        #[arg(long)]
        create_bucket: bool,
    },
    /// Creates a bucket or container (one that exists already is fine).
    CreateBucket {
        /// s3://bucket or az://container.
        location: String,
    },
    /// Lists the objects under a prefix: key, size and ETag, tab-separated.
    List {
        /// s3://bucket/prefix or az://container/prefix (the prefix as written: `a` matches
        /// `a/x` and `ab`).
        location: String,
    },
    /// Deletes every object under a prefix, after asking (or with --yes).
    Delete {
        /// s3://bucket/prefix or az://container/prefix (the prefix as written).
        location: String,
        /// Do not ask (scripts). Without it, orcaseed asks on a terminal and refuses otherwise.
        #[arg(long, short)]
        yes: bool,
        /// Objects deleted at once.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
        concurrency: u16,
    },
}

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    match parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be more than 0".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// A parsed `s3://bucket/prefix` or `az://container/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// `az://`.
    pub azure: bool,
    /// The bucket or container.
    pub bucket: String,
    /// The key prefix (may be empty).
    pub prefix: String,
}

impl Location {
    /// Parses a location.
    pub fn parse(s: &str) -> Result<Self, SeedError> {
        let (azure, rest) = if let Some(r) = s.strip_prefix("s3://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("az://") {
            (true, r)
        } else {
            return Err(SeedError::Usage(format!(
                "{s:?} is not a location: write s3://bucket/prefix or az://container/prefix"
            )));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(SeedError::Usage(format!("{s:?} names no bucket")));
        }
        Ok(Location {
            azure,
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// The prefix as a folder: empty, or ending in `/`.
    fn folder(&self) -> String {
        if self.prefix.is_empty() || self.prefix.ends_with('/') {
            self.prefix.clone()
        } else {
            format!("{}/", self.prefix)
        }
    }
}

/// The `origin` section the flags (over `--config`'s) describe, as YAML for Orca's validation.
fn origin_yaml(args: &StoreArgs, azure: bool) -> Result<String, SeedError> {
    let mut origin = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| SeedError::io(path, e))?;
            let file: Value = serde_norway::from_str(&text).map_err(|e| {
                SeedError::Usage(format!("{}: malformed YAML: {e}", path.display()))
            })?;
            match file.get("origin") {
                Some(Value::Mapping(m)) => m.clone(),
                _ => Mapping::new(),
            }
        }
        None => Mapping::new(),
    };
    let key = |k: &str| Value::String(k.to_string());
    if !origin.contains_key("id") {
        origin.insert(key("id"), key("orcaseed"));
    }
    let (driver, section_name) = if azure {
        ("azureblob", "azureblob")
    } else {
        ("s3", "s3")
    };
    origin.insert(key("driver"), key(driver));
    let mut section = match origin.get(section_name) {
        Some(Value::Mapping(m)) => m.clone(),
        _ => Mapping::new(),
    };
    if let Some(url) = &args.endpoint_url {
        section.insert(key("endpoint"), key(url));
        if !azure {
            section.insert(key("path_style"), Value::Bool(!args.virtual_hosted));
        }
    } else if args.virtual_hosted && !azure {
        section.insert(key("path_style"), Value::Bool(false));
    }
    if azure {
        if let Some(account) = &args.account {
            section.insert(key("account"), key(account));
        }
        if let Some(sas) = &args.sas_token {
            section.remove("account_key");
            section.insert(key("sas_token"), key(sas));
        }
    } else if let Some(region) = &args.region {
        section.insert(key("region"), key(region));
    }
    origin.insert(key(section_name), Value::Mapping(section));
    let mut top = Mapping::new();
    top.insert(key("origin"), Value::Mapping(origin));
    serde_norway::to_string(&Value::Mapping(top))
        .map_err(|e| SeedError::Setup(format!("cannot write the origin section: {e}")))
}

/// The store of `location`, its settings validated as Orca validates its origin.
fn open(args: &StoreArgs, location: &Location) -> Result<Store, SeedError> {
    let yaml = origin_yaml(args, location.azure)?;
    // The process environment, less Orca's own service settings (`ORCA_SELF`,
    // `ORCA_LOG_LEVEL`...): they describe a replica, not the store, and must not fail this.
    let env = |name: &str| {
        (!name.starts_with("ORCA_"))
            .then(|| crate::config::process_env(name))
            .flatten()
    };
    let config = crate::config::from_yaml_str_with_env(&yaml, &env)?;
    let driver: &OriginDriver = &config.origin.driver;
    Store::new(driver, &location.bucket, args.timeout)
}

/// Refuses objects above [`FORCE_ABOVE`] without `--force`, and above one PUT's limit.
fn check_size(what: &str, size: u64, force: bool, azure: bool) -> Result<(), SeedError> {
    let limit = max_single_put(azure);
    if size > limit {
        return Err(SeedError::Usage(format!(
            "{what} is {}, above the {} one PUT can carry (orcaseed does no multipart upload)",
            HumanBytes(size),
            HumanBytes(limit)
        )));
    }
    if size > FORCE_ABOVE && !force {
        return Err(SeedError::Usage(format!(
            "{what} is {}, above 1 GiB per object; pass --force to write it",
            HumanBytes(size)
        )));
    }
    Ok(())
}

/// PUTs `objects` (key, body), `concurrency` at a time; stops at the first failure.
async fn put_all(
    store: &Store,
    objects: Vec<(String, Body)>,
    concurrency: usize,
    plain: bool,
    summary: &str,
) -> Result<(), SeedError> {
    let total: u64 = objects.iter().map(|(_, b)| b.len()).sum();
    let progress = Progress::new("put", objects.len() as u64, total, plain);
    let result = futures::stream::iter(objects)
        .map(Ok)
        .try_for_each_concurrent(concurrency, |(key, body)| {
            let progress = &progress;
            async move {
                store.put(&key, &body, &|n| progress.bytes(n)).await?;
                progress.object(&store.url(&key), body.len());
                Ok(())
            }
        })
        .await;
    match result {
        Ok(()) => {
            progress.finish(summary);
            Ok(())
        }
        Err(e) => {
            progress.abandon();
            Err(e)
        }
    }
}

/// What `generate` writes.
struct GenerateSpec {
    count: u64,
    size: u64,
    seed: u64,
    concurrency: u16,
    force: bool,
    create_bucket: bool,
}

async fn generate(
    args: &StoreArgs,
    location: &Location,
    spec: GenerateSpec,
) -> Result<(), SeedError> {
    let GenerateSpec {
        count,
        size,
        seed,
        concurrency,
        force,
        create_bucket,
    } = spec;
    if count == 0 {
        return Err(SeedError::Usage("--count must be at least 1".into()));
    }
    check_size("--size", size, force, location.azure)?;
    let store = open(args, location)?;
    if create_bucket {
        store.create_bucket().await?;
    }
    let folder = location.folder();
    let objects = (0..count)
        .map(|i| {
            (
                format!("{folder}obj-{i:06}"),
                Body::Generated {
                    seed: gen::object_seed(seed, i),
                    len: size,
                },
            )
        })
        .collect();
    let summary = format!("generated under {} (seed {seed})", store.url(&folder));
    put_all(
        &store,
        objects,
        concurrency.into(),
        args.no_progress,
        &summary,
    )
    .await
}

/// The files under `root` (itself when it is a file), with their paths relative to it, sorted.
/// Symbolic links to files are followed; links to directories are skipped (no cycles).
fn walk(root: &Path) -> Result<Vec<(PathBuf, String, u64)>, SeedError> {
    let meta = std::fs::metadata(root).map_err(|e| SeedError::io(root, e))?;
    if meta.is_file() {
        let name = root
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| SeedError::Usage(format!("{}: not a UTF-8 name", root.display())))?;
        return Ok(vec![(root.to_owned(), name.to_string(), meta.len())]);
    }
    let mut out = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| SeedError::io(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| SeedError::io(&dir, e))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| SeedError::io(&path, e))?;
            let meta = std::fs::metadata(&path).map_err(|e| SeedError::io(&path, e))?;
            if meta.is_dir() {
                if kind.is_symlink() {
                    eprintln!(
                        "orcaseed: skipping {} (a link to a directory)",
                        path.display()
                    );
                } else {
                    dirs.push(path);
                }
                continue;
            }
            if !meta.is_file() {
                continue;
            }
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let mut key = String::new();
            for part in rel.components() {
                let part = part.as_os_str().to_str().ok_or_else(|| {
                    SeedError::Usage(format!("{}: not a UTF-8 name", path.display()))
                })?;
                if !key.is_empty() {
                    key.push('/');
                }
                key.push_str(part);
            }
            out.push((path, key, meta.len()));
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

async fn upload(
    args: &StoreArgs,
    path: &Path,
    location: &Location,
    concurrency: u16,
    force: bool,
    create_bucket: bool,
) -> Result<(), SeedError> {
    let is_file = std::fs::metadata(path)
        .map_err(|e| SeedError::io(path, e))?
        .is_file();
    let files = walk(path)?;
    let folder = location.folder();
    let mut objects = Vec::with_capacity(files.len());
    for (file, rel, len) in files {
        check_size(&file.display().to_string(), len, force, location.azure)?;
        let key = if is_file && !location.prefix.is_empty() && !location.prefix.ends_with('/') {
            location.prefix.clone()
        } else {
            format!("{folder}{rel}")
        };
        objects.push((key, Body::File { path: file, len }));
    }
    if objects.is_empty() {
        println!("nothing to upload under {}", path.display());
        return Ok(());
    }
    let store = open(args, location)?;
    if create_bucket {
        store.create_bucket().await?;
    }
    let to = match objects.as_slice() {
        [(key, _)] if is_file => key.clone(),
        _ => folder,
    };
    let summary = format!("uploaded {} to {}", path.display(), store.url(&to));
    put_all(
        &store,
        objects,
        concurrency.into(),
        args.no_progress,
        &summary,
    )
    .await
}

async fn list(args: &StoreArgs, location: &Location) -> Result<(), SeedError> {
    let store = open(args, location)?;
    let objects = store.list(&location.prefix).await?;
    let mut out = std::io::stdout().lock();
    let mut total = 0u64;
    for o in &objects {
        total += o.size;
        // A closed stdout (`| head`) ends the listing quietly.
        if writeln!(out, "{}\t{}\t{}", o.key, o.size, o.etag).is_err() {
            return Ok(());
        }
    }
    let _ = out.flush();
    eprintln!(
        "{} objects, {} under {}",
        objects.len(),
        HumanBytes(total),
        store.url(&location.prefix)
    );
    Ok(())
}

/// Asks on the terminal whether to delete; `false` unless the answer is `y` or `yes`.
fn confirm(question: &str) -> bool {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    match std::io::stdin().lock().read_line(&mut answer) {
        Ok(_) => matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"),
        Err(_) => false,
    }
}

async fn delete(
    args: &StoreArgs,
    location: &Location,
    yes: bool,
    concurrency: u16,
) -> Result<(), SeedError> {
    let store = open(args, location)?;
    let where_ = store.url(&location.prefix);
    let objects = store.list(&location.prefix).await?;
    if objects.is_empty() {
        println!("nothing under {where_}");
        return Ok(());
    }
    let total: u64 = objects.iter().map(|o| o.size).sum();
    let what = format!(
        "{} objects ({}) under {where_}",
        objects.len(),
        HumanBytes(total)
    );
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(SeedError::Refused(format!(
                "not deleting {what}: stdin is not a terminal, so nobody can confirm; \
                 pass --yes to delete without asking"
            )));
        }
        if !confirm(&format!("delete {what}?")) {
            return Err(SeedError::Refused(format!(
                "not deleting {what}: not confirmed"
            )));
        }
    }
    let progress = Progress::new("deleted", objects.len() as u64, total, args.no_progress);
    let result = futures::stream::iter(objects)
        .map(Ok)
        .try_for_each_concurrent(usize::from(concurrency), |o| {
            let (progress, store) = (&progress, &store);
            async move {
                store.delete(&o.key).await?;
                progress.bytes(o.size);
                progress.object(&store.url(&o.key), o.size);
                Ok(())
            }
        })
        .await;
    match result {
        Ok(()) => {
            progress.finish(&format!("deleted under {where_}"));
            Ok(())
        }
        Err(e) => {
            progress.abandon();
            Err(e)
        }
    }
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<(), SeedError> {
    let args = &cli.store;
    match &cli.command {
        Command::Generate {
            location,
            count,
            size,
            seed,
            concurrency,
            force,
            create_bucket,
        } => {
            let spec = GenerateSpec {
                count: *count,
                size: *size,
                seed: *seed,
                concurrency: *concurrency,
                force: *force,
                create_bucket: *create_bucket,
            };
            generate(args, &Location::parse(location)?, spec).await
        }
        Command::Upload {
            path,
            location,
            concurrency,
            force,
            create_bucket,
        } => {
            let location = Location::parse(location)?;
            upload(args, path, &location, *concurrency, *force, *create_bucket).await
        }
        Command::CreateBucket { location } => {
            let location = Location::parse(location)?;
            let store = open(args, &location)?;
            store.create_bucket().await?;
            println!("{} is there", store.url(""));
            Ok(())
        }
        Command::List { location } => list(args, &Location::parse(location)?).await,
        Command::Delete {
            location,
            yes,
            concurrency,
        } => delete(args, &Location::parse(location)?, *yes, *concurrency).await,
    }
}

/// The binary's `main`: parses the command line, runs the command on a small runtime, prints
/// the error (naming the object) and returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("orcaseed: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orcaseed: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        let l = Location::parse("s3://b/p/q").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (l.azure, l.bucket.as_str(), l.prefix.as_str()),
            (false, "b", "p/q")
        );
        assert_eq!(l.folder(), "p/q/");
        let l = Location::parse("az://c").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (l.azure, l.bucket.as_str(), l.folder().as_str()),
            (true, "c", "")
        );
        assert!(Location::parse("http://b/p").is_err());
        assert!(Location::parse("s3:///p").is_err());
    }

    #[test]
    fn walking_a_directory_gives_relative_keys_and_skips_links_to_directories() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = dir.path();
        let write = |rel: &str, data: &[u8]| {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap_or(root))
                .unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(path, data).unwrap_or_else(|e| panic!("{e}"));
        };
        write("b.txt", b"12");
        write("a/c d.bin", b"123");
        write("a/deeper/e", b"");
        // A link back to the root would loop forever if it were followed.
        std::os::unix::fs::symlink(root, root.join("a/loop")).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(root.join("b.txt"), root.join("link.txt"))
            .unwrap_or_else(|e| panic!("{e}"));
        let found: Vec<(String, u64)> = walk(root)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|(_, key, len)| (key, len))
            .collect();
        let want = [
            ("a/c d.bin", 3),
            ("a/deeper/e", 0),
            ("b.txt", 2),
            ("link.txt", 2),
        ];
        assert_eq!(found, want.map(|(k, n)| (k.to_string(), n)).to_vec(),);
        // A file is itself, named by its file name.
        let one = walk(&root.join("b.txt")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].1, "b.txt");
    }

    #[test]
    fn sizes_above_a_gib_need_force() {
        assert!(check_size("x", 1 << 30, false, false).is_ok());
        let e = check_size("x", (1 << 30) + 1, false, false).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        assert!(check_size("x", 2 << 30, true, false).is_ok());
        assert!(check_size("x", 6 << 30, true, false).is_err());
        assert!(check_size("x", 5 << 30, true, true).is_err());
    }

    #[test]
    fn the_flags_go_into_an_origin_section() {
        let args = StoreArgs {
            config: None,
            endpoint_url: Some("http://127.0.0.1:9".into()),
            region: Some("eu-west-1".into()),
            virtual_hosted: false,
            account: None,
            sas_token: None,
            timeout: Duration::from_secs(1),
            no_progress: true,
        };
        let yaml = origin_yaml(&args, false).unwrap_or_else(|e| panic!("{e}"));
        let env = |name: &str| match name {
            "AWS_ACCESS_KEY_ID" => Some("id".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("secret".to_string()),
            _ => None,
        };
        let config = crate::config::from_yaml_str_with_env(&yaml, &env)
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let OriginDriver::S3(s3) = &config.origin.driver else {
            panic!("not s3: {yaml}");
        };
        assert_eq!(s3.endpoint, "http://127.0.0.1:9");
        assert_eq!(s3.region, "eu-west-1");
        assert!(s3.path_style);
        // No keys anywhere: the default credential chain, as Orca itself uses.
        let config = crate::config::from_yaml_str_with_env(&yaml, &|_| None)
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let OriginDriver::S3(s3) = &config.origin.driver else {
            panic!("not s3: {yaml}");
        };
        assert_eq!(s3.credentials, crate::config::S3Credentials::DefaultChain);
    }
}
