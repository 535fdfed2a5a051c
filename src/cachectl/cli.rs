//! The `orca warm`, `orca purge` and `orca inspect` subcommands: clients of a replica's cache
//! control on its ops port (`--ops http://host:8442`), with the admin token from
//! `--token-file` or `ORCA_ADMIN_TOKEN`.
//!
//! Exit codes: 0 done; 1 the operation failed or was incomplete (a warm with errors, a purge
//! that could not reach every replica, a refusal, an unreachable ops port); 2 a usage error;
//! 130 a warm cancelled with Ctrl-C (the job is cancelled on the replica too).

use crate::net::encode::encode_query_value;
use crate::net::oneshot;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long one request to the ops port may take (a purge waits for every peer).
const REQUEST_DEADLINE: Duration = Duration::from_secs(120);

/// How often a running warm job's progress is read.
const POLL: Duration = Duration::from_millis(500);

/// Polls in a row that may fail before `orca warm` gives up on the ops port.
const POLL_FAILURES: u32 = 10;

/// A plain progress line at most this often when stdout is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(2);

/// Cache-control subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Fill every chunk of a prefix (or one object) not yet cached, each by its coordinator.
    Warm {
        /// s3://bucket/prefix (s3://bucket/ for the whole bucket).
        target: String,
        /// Warm exactly this object, not every key starting with it.
        #[arg(long)]
        exact: bool,
        /// Chunks fetched at once (default: the replica's ops.warm_concurrency).
        #[arg(long)]
        concurrency: Option<usize>,
        /// Start the job, print its id and return.
        #[arg(long)]
        detach: bool,
        /// The ops port and its token.
        #[command(flatten)]
        ops: OpsArgs,
    },
    /// Drop an object from every tier of every replica and forget its metadata fleet-wide.
    Purge {
        /// s3://bucket/key.
        target: String,
        /// The ops port and its token.
        #[command(flatten)]
        ops: OpsArgs,
    },
    /// Show an object's pinned version, its chunks, their coordinators and where they are.
    Inspect {
        /// s3://bucket/key.
        target: String,
        /// The ops port and its token.
        #[command(flatten)]
        ops: OpsArgs,
    },
}

/// Where the ops port is and how to authenticate.
#[derive(Args, Debug)]
pub struct OpsArgs {
    /// The replica's ops port.
    #[arg(long, env = "ORCA_OPS", default_value = "http://127.0.0.1:8442")]
    ops: String,
    /// A file holding the admin token (the replica's ops.admin_token_file, or the peers'
    /// shared secret); else ORCA_ADMIN_TOKEN.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Print the replica's JSON answer instead of a summary.
    #[arg(long)]
    json: bool,
}

/// A failure, with the exit code it ends with.
struct Failed(u8, String);

fn usage(m: impl Into<String>) -> Failed {
    Failed(2, m.into())
}

fn failed(m: impl Into<String>) -> Failed {
    Failed(1, m.into())
}

/// Runs a subcommand to its end.
pub fn run(command: Command) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("orca: cannot start a runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(command)) {
        Ok(code) => ExitCode::from(code),
        Err(Failed(code, message)) => {
            eprintln!("orca: {message}");
            ExitCode::from(code)
        }
    }
}

async fn dispatch(command: Command) -> Result<u8, Failed> {
    match command {
        Command::Warm {
            target,
            exact,
            concurrency,
            detach,
            ops,
        } => {
            let (bucket, key) = parse_target(&target)?;
            let client = Client::new(&ops)?;
            let mut query = format!("bucket={}", encode_query_value(&bucket));
            if exact {
                if key.is_empty() {
                    return Err(usage("--exact needs a key: s3://bucket/key"));
                }
                query.push_str(&format!("&key={}", encode_query_value(&key)));
            } else {
                query.push_str(&format!("&prefix={}", encode_query_value(&key)));
            }
            if let Some(c) = concurrency {
                query.push_str(&format!("&concurrency={c}"));
            }
            let job = client
                .call("POST", &format!("/cache/warm?{query}"), 202)
                .await?;
            let id = job["id"].as_str().unwrap_or_default().to_string();
            if detach {
                if ops.json {
                    println!("{job:#}");
                } else {
                    println!("warm job {id} started on {}", client.authority);
                }
                return Ok(0);
            }
            follow(&client, &id, ops.json).await
        }
        Command::Purge { target, ops } => {
            let (bucket, key) = parse_target(&target)?;
            if key.is_empty() {
                return Err(usage("purge needs an object: s3://bucket/key"));
            }
            let client = Client::new(&ops)?;
            let path = format!(
                "/cache/purge?bucket={}&key={}",
                encode_query_value(&bucket),
                encode_query_value(&key)
            );
            let (status, report) = client.send("POST", &path).await?;
            if status != 200 && status != 502 {
                return Err(failed(refusal(status, &report)));
            }
            if ops.json {
                println!("{report:#}");
            } else {
                print_purge(&target, &report);
            }
            Ok(if status == 200 { 0 } else { 1 })
        }
        Command::Inspect { target, ops } => {
            let (bucket, key) = parse_target(&target)?;
            if key.is_empty() {
                return Err(usage("inspect needs an object: s3://bucket/key"));
            }
            let client = Client::new(&ops)?;
            let path = format!(
                "/cache/inspect?bucket={}&key={}",
                encode_query_value(&bucket),
                encode_query_value(&key)
            );
            let report = client.call("GET", &path, 200).await?;
            if ops.json {
                println!("{report:#}");
            } else {
                print_inspect(&target, &report);
            }
            Ok(0)
        }
    }
}

/// `s3://bucket/key` into its bucket and key (the key may be empty).
fn parse_target(target: &str) -> Result<(String, String), Failed> {
    let rest = target
        .strip_prefix("s3://")
        .ok_or_else(|| usage(format!("{target:?} is not s3://bucket/key")))?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(usage(format!("{target:?} names no bucket")));
    }
    Ok((bucket.to_string(), key.to_string()))
}

struct Client {
    authority: String,
    token: Option<String>,
}

impl Client {
    fn new(args: &OpsArgs) -> Result<Self, Failed> {
        let authority = args
            .ops
            .strip_prefix("http://")
            .ok_or_else(|| usage(format!("--ops {:?} is not http://host:port", args.ops)))?
            .trim_end_matches('/')
            .to_string();
        if authority.is_empty() || authority.contains('/') {
            return Err(usage(format!(
                "--ops {:?} is not http://host:port",
                args.ops
            )));
        }
        let token = match &args.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| usage(format!("--token-file {}: {e}", path.display())))?
                    .trim()
                    .to_string(),
            ),
            None => std::env::var("ORCA_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        };
        Ok(Self { authority, token })
    }

    async fn send(&self, method: &str, path: &str) -> Result<(u16, Value), Failed> {
        let bearer = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .as_deref()
            .map(|b| ("authorization", b))
            .into_iter()
            .collect();
        let answer = oneshot::request(&self.authority, method, path, &headers, REQUEST_DEADLINE)
            .await
            .map_err(|e| failed(format!("ops port {}: {e}", self.authority)))?;
        let value = serde_json::from_slice(&answer.body).unwrap_or_else(|_| {
            Value::String(String::from_utf8_lossy(&answer.body).trim().to_string())
        });
        Ok((answer.status, value))
    }

    /// `send`, failing unless the status is `want`.
    async fn call(&self, method: &str, path: &str, want: u16) -> Result<Value, Failed> {
        let (status, value) = self.send(method, path).await?;
        if status == want {
            Ok(value)
        } else {
            Err(failed(refusal(status, &value)))
        }
    }
}

fn refusal(status: u16, body: &Value) -> String {
    let message = body["error"]
        .as_str()
        .map_or_else(|| body.to_string(), str::to_string);
    format!("the ops port answered {status}: {message}")
}

/// Follows a warm job to its end, with a progress bar on a terminal and plain lines otherwise;
/// Ctrl-C cancels it.
async fn follow(client: &Client, id: &str, json: bool) -> Result<u8, Failed> {
    // Installed before anything is printed: a Ctrl-C from then on cancels the job.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| failed(format!("cannot catch Ctrl-C: {e}")))?;
    let terminal = std::io::stdout().is_terminal() && !json;
    let bar = if terminal {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stdout());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Some(bar)
    } else {
        None
    };
    if !json {
        println!("warm job {id} on {}", client.authority);
    }
    let path = format!("/cache/jobs/{id}");
    let (mut last_line, mut failures) = (None::<Instant>, 0u32);
    loop {
        let job = match client.call("GET", &path, 200).await {
            Ok(job) => {
                failures = 0;
                job
            }
            Err(Failed(_, m)) => {
                failures += 1;
                if failures >= POLL_FAILURES {
                    return Err(failed(format!("lost the job: {m}")));
                }
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        let state = job["state"].as_str().unwrap_or("").to_string();
        let done = state != "running";
        match &bar {
            Some(bar) => {
                bar.set_length(job["bytes"]["total"].as_u64().unwrap_or(0));
                bar.set_position(job["bytes"]["done"].as_u64().unwrap_or(0));
                bar.set_message(counts(&job));
            }
            None if !json && (done || last_line.is_none_or(|t| t.elapsed() >= PLAIN_EVERY)) => {
                println!("{} {}", plain_progress(&job), counts(&job));
                last_line = Some(Instant::now());
            }
            None => {}
        }
        if done {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            if json {
                println!("{job:#}");
            } else {
                println!("{state}: {}", counts(&job));
                for e in job["error_samples"].as_array().into_iter().flatten() {
                    println!("  error: {}", e.as_str().unwrap_or_default());
                }
            }
            let errors = job["errors"].as_u64().unwrap_or(0);
            return Ok(if state == "done" && errors == 0 { 0 } else { 1 });
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = interrupt.recv() => {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                let answer = client.call("DELETE", &path, 200).await;
                match answer {
                    Ok(job) => eprintln!("orca: warm job {id} cancelled: {}", counts(&job)),
                    Err(Failed(_, m)) => eprintln!("orca: cancelling warm job {id}: {m}"),
                }
                return Ok(130);
            }
        }
    }
}

fn plain_progress(job: &Value) -> String {
    let (done, total) = (
        job["bytes"]["done"].as_u64().unwrap_or(0),
        job["bytes"]["total"].as_u64().unwrap_or(0),
    );
    let listing = !job["listing_complete"].as_bool().unwrap_or(true);
    let pct = (done * 100)
        .checked_div(total)
        .unwrap_or(if listing { 0 } else { 100 });
    format!("{pct:>3}% {}/{}", human(done), human(total))
}

fn counts(job: &Value) -> String {
    let n = |a: &str, b: &str| job[a][b].as_u64().unwrap_or(0);
    let listing = if job["listing_complete"].as_bool().unwrap_or(true) {
        ""
    } else {
        " so far, listing"
    };
    format!(
        "objects {}/{}, chunks {}/{} ({} fetched from the origin, {} already cached), errors {}{listing}",
        n("objects", "done"),
        n("objects", "total"),
        n("chunks", "done"),
        n("chunks", "total"),
        job["chunks_fetched"].as_u64().unwrap_or(0),
        job["chunks_cached"].as_u64().unwrap_or(0),
        job["errors"].as_u64().unwrap_or(0),
    )
}

fn print_purge(target: &str, report: &Value) {
    let origin = match &report["origin"] {
        Value::Null => report["origin_error"].as_str().map_or_else(
            || "not found at the origin".to_string(),
            |e| format!("origin HEAD failed: {e}"),
        ),
        v => format!(
            "origin has etag {} ({})",
            v["etag"].as_str().unwrap_or_default(),
            human(v["size"].as_u64().unwrap_or(0))
        ),
    };
    println!("purged {target}; {origin}");
    for r in report["replicas"].as_array().into_iter().flatten() {
        let name = r["replica"].as_str().unwrap_or("?");
        if !r["reached"].as_bool().unwrap_or(false) {
            println!(
                "  {name}: NOT PURGED: {}",
                r["error"].as_str().unwrap_or("?")
            );
            continue;
        }
        let versions = r["versions"].as_array().map_or(0, Vec::len);
        let metadata = if r["metadata_forgotten"].as_bool().unwrap_or(false) {
            "metadata forgotten"
        } else {
            "no metadata held"
        };
        let mut tiers = Vec::new();
        for (tier, t) in r["tiers"].as_object().into_iter().flatten() {
            let mut s = format!(
                "{tier} {} chunks, {}",
                t["chunks"].as_u64().unwrap_or(0),
                human(t["bytes"].as_u64().unwrap_or(0))
            );
            if t["errors"].as_u64().unwrap_or(0) > 0 {
                s.push_str(&format!(" ({} errors)", t["errors"]));
            }
            tiers.push(s);
        }
        println!(
            "  {name}: {versions} version(s), {metadata}; removed: {}",
            if tiers.is_empty() {
                "nothing".to_string()
            } else {
                tiers.join("; ")
            }
        );
    }
    if report["complete"].as_bool() != Some(true) {
        println!("incomplete: a replica above was not purged; run the purge again once it is up");
    }
}

fn print_inspect(target: &str, report: &Value) {
    println!("{target} on {}", report["replica"].as_str().unwrap_or("?"));
    match &report["pinned"] {
        Value::Null => println!("pinned: not cached (no metadata held)"),
        p => println!(
            "pinned: etag {}, {} bytes",
            p["etag"].as_str().unwrap_or_default(),
            p["size"]
        ),
    }
    let v = &report["version"];
    if v.is_null() {
        println!("not found at the origin");
        return;
    }
    if v["from"] == "origin" {
        println!(
            "origin: etag {}, {} bytes (chunks below are of this version)",
            v["etag"].as_str().unwrap_or_default(),
            v["size"]
        );
    }
    println!(
        "chunk size {}, {} chunks, {} cached on this replica or the shared store",
        human(report["chunk_size"].as_u64().unwrap_or(0)),
        report["chunk_count"],
        report["chunks_cached"]
    );
    println!(
        "{:>6} {:>12} {:>10}  {:<22} {:<18} name",
        "index", "offset", "length", "coordinator", "tiers"
    );
    for c in report["chunks"].as_array().into_iter().flatten() {
        let mut tiers: Vec<String> = c["tiers"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, b)| b.is_u64())
            .map(|(t, _)| t.clone())
            .collect();
        if c["in_flight"].as_bool() == Some(true) {
            tiers.push("in-flight".into());
        }
        let tiers = if tiers.is_empty() {
            "-".to_string()
        } else {
            tiers.join(",")
        };
        println!(
            "{:>6} {:>12} {:>10}  {:<22} {:<18} {}",
            c["index"].as_u64().unwrap_or(0),
            c["offset"].as_u64().unwrap_or(0),
            c["length"].as_u64().unwrap_or(0),
            c["coordinator"].as_str().unwrap_or_default(),
            tiers,
            c["name"].as_str().unwrap_or_default()
        );
    }
    if report["truncated"].as_bool() == Some(true) {
        println!("(more chunks not listed)");
    }
}

/// `12.0 MiB`-style sizes.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_sizes() {
        assert_eq!(
            parse_target("s3://b/a/k").ok(),
            Some(("b".to_string(), "a/k".to_string()))
        );
        assert_eq!(
            parse_target("s3://b").ok(),
            Some(("b".into(), String::new()))
        );
        assert!(parse_target("b/k").is_err());
        assert!(parse_target("s3:///k").is_err());
        assert_eq!(human(512), "512 B");
        assert_eq!(human(24 << 20), "24.0 MiB");
    }
}
