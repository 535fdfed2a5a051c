//! Cache control on the ops port: warm a prefix, purge an object fleet-wide, inspect what the
//! cache holds of an object (`docs/operations.md`, "Cache control"; the contract is
//! `docs/cachectl.md`). The `orca warm/purge/inspect` subcommands ([`cli`]) call it.
//!
//! | request | answer |
//! |---|---|
//! | `POST /cache/warm?bucket=B&prefix=P` (or `&key=K`; `&concurrency=N`) | `202`, the job |
//! | `GET /cache/jobs`, `GET /cache/jobs/{id}` | the jobs, a job (progress) |
//! | `DELETE /cache/jobs/{id}` | `200`, the job, cancelled |
//! | `POST /cache/purge?bucket=B&key=K` | `200` (`502` when a replica could not be reached), what was removed per replica and tier |
//! | `GET /cache/inspect?bucket=B&key=K` | the pinned version, its chunks, their coordinators and tiers |
//!
//! Every path asks for `Authorization: Bearer <token>` when a token is configured: the file
//! `ops.admin_token_file` names, else the peers' shared secret (`cluster.shared_secret_env`).
//! Without either the endpoints are open, as the fill port is; a warning says so at start.

pub mod cli;
mod warm;

use crate::fill::purge::{ask_peer, purge_local, PurgeRequest, PurgedVersion, ReplicaReport};
use crate::fill::FillClients;
use crate::origin::OriginError;
use crate::state::Orca;
use anyhow::Context;
use futures::StreamExt;
use http::{Method, Response};
use percent_encoding::percent_decode_str;
use pingora::protocols::http::ServerSession;
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
pub use warm::{Job, JobState, Jobs, WarmTarget};

/// The path prefix of cache control on the ops port.
pub const PREFIX: &str = "/cache/";

/// How long a purge waits for each peer's answer.
const PEER_PURGE_DEADLINE: Duration = Duration::from_secs(60);

/// Chunks an inspect looks up at once.
const INSPECT_CONCURRENCY: usize = 16;

/// Most chunks an inspect lists (an object of more is listed up to here, `truncated`).
const INSPECT_MAX_CHUNKS: u64 = 10_000;

/// Cache control over a replica's shared state.
pub struct CacheCtl {
    orca: Arc<Orca>,
    /// The warm jobs' fill clients: this replica's own fill service and its peers'.
    fills: FillClients,
    jobs: Jobs,
    /// What callers must present; `None`: open.
    token: Option<String>,
}

impl CacheCtl {
    /// Cache control for a replica, its warm jobs filling through `fills`. Reads
    /// `ops.admin_token_file`.
    ///
    /// # Errors
    ///
    /// The admin token file cannot be read or is empty.
    pub fn new(orca: Arc<Orca>, fills: FillClients) -> anyhow::Result<Self> {
        let token = match &orca.config.ops.admin_token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("ops.admin_token_file {}", path.display()))?;
                let token = text.trim().to_string();
                anyhow::ensure!(
                    !token.is_empty(),
                    "ops.admin_token_file {} is empty",
                    path.display()
                );
                Some(token)
            }
            None => orca.peer_secret.clone(),
        };
        if token.is_none() {
            tracing::warn!(
                ops = %orca.config.listen.ops,
                "neither ops.admin_token_file nor cluster.shared_secret_env is set: cache control on the ops port (warm, purge, inspect) is open to anyone who reaches it"
            );
        }
        Ok(Self {
            orca,
            fills,
            jobs: Jobs::default(),
            token,
        })
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        bool::from(subtle::ConstantTimeEq::ct_eq(
            given.trim().as_bytes(),
            token.as_bytes(),
        ))
    }

    /// Answers a request under [`PREFIX`].
    pub async fn handle(self: &Arc<Self>, session: &ServerSession) -> Response<Vec<u8>> {
        if !self.authorized(session) {
            return error(
                403,
                "cache control needs the admin token: Authorization: Bearer <token>",
            );
        }
        let req = session.req_header();
        let (method, path) = (req.method.clone(), req.uri.path().to_string());
        let query = parse_query(req.uri.query().unwrap_or(""));
        let rest = path.strip_prefix(PREFIX).unwrap_or("");
        match (method, rest) {
            (Method::POST, "warm") => self.warm(&query),
            (Method::GET, "jobs") => {
                let jobs: Vec<_> = self.jobs.all().iter().map(|j| j.view()).collect();
                reply(200, &json!({ "jobs": jobs }))
            }
            (Method::POST, "purge") => match object_of(&query) {
                Ok((bucket, key)) => {
                    let report = self.purge(bucket, key).await;
                    reply(if report.complete { 200 } else { 502 }, &report)
                }
                Err(e) => *e,
            },
            (Method::GET, "inspect") => match object_of(&query) {
                Ok((bucket, key)) => self.inspect(bucket, key).await,
                Err(e) => *e,
            },
            (m, r) if r.starts_with("jobs/") => {
                let id = &r["jobs/".len()..];
                let Some(job) = self.jobs.get(id) else {
                    return error(
                        404,
                        &format!("no job {id:?} (finished jobs are kept up to ops.kept_jobs)"),
                    );
                };
                match m {
                    Method::GET => reply(200, &job.view()),
                    Method::DELETE => {
                        job.cancel();
                        // The job's task records the end; until it has, say what was asked.
                        for _ in 0..50 {
                            if job.state() != JobState::Running {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        reply(200, &job.view())
                    }
                    _ => error(405, "jobs/{id} answers GET and DELETE"),
                }
            }
            (_, "warm" | "jobs" | "purge" | "inspect") => {
                error(405, "warm and purge are POST; jobs and inspect are GET")
            }
            _ => error(404, "unknown cache-control path"),
        }
    }

    fn warm(self: &Arc<Self>, query: &HashMap<String, String>) -> Response<Vec<u8>> {
        let Some(bucket) = query.get("bucket").filter(|b| !b.is_empty()) else {
            return error(400, "bucket is required");
        };
        let key = query.get("key").filter(|k| !k.is_empty()).cloned();
        let prefix = query.get("prefix").cloned();
        if key.is_some() && prefix.is_some() {
            return error(400, "give prefix or key, not both");
        }
        let ops = &self.orca.config.ops;
        let concurrency = match query.get("concurrency").map(|c| c.parse::<usize>()) {
            None => ops.warm_concurrency,
            Some(Ok(n)) if (1..=ops.warm_max_concurrency).contains(&n) => n,
            Some(_) => {
                return error(
                    400,
                    &format!(
                        "concurrency must be from 1 to ops.warm_max_concurrency ({})",
                        ops.warm_max_concurrency
                    ),
                )
            }
        };
        let target = WarmTarget {
            bucket: bucket.clone(),
            prefix: if key.is_some() {
                None
            } else {
                Some(prefix.unwrap_or_default())
            },
            key,
        };
        match warm::start(self, target, concurrency) {
            Ok(job) => reply(202, &job.view()),
            Err(warm::StartError::TooMany(n)) => error(
                429,
                &format!("{n} warm jobs are running (ops.max_jobs); wait for one or cancel it"),
            ),
        }
    }

    /// Purges an object fleet-wide: the versions this replica and the origin know of, from
    /// every tier of this replica and the shared store, then from every peer's own tiers.
    async fn purge(&self, bucket: &str, key: &str) -> PurgeReport {
        let mut versions = Vec::new();
        let (origin, origin_error) = match self.orca.origin.head(bucket, key).await {
            Ok(meta) => {
                let v = PurgedVersion {
                    etag: meta.etag,
                    size: meta.size,
                };
                versions.push(v.clone());
                (Some(v), None)
            }
            Err(OriginError::NotFound) => (None, None),
            Err(e) => (None, Some(e.to_string())),
        };
        let mut request = PurgeRequest {
            bucket: bucket.to_string(),
            key: key.to_string(),
            versions,
            shared: true,
        };
        let mut own = purge_local(&self.orca, &request).await;
        // The peers are told every version known here; the shared store is purged here, once.
        request.versions.clone_from(&own.versions);
        request.shared = false;
        let self_addr = self.orca.cluster.self_addr().to_string();
        let peers: Vec<String> = self
            .orca
            .cluster
            .peers()
            .iter()
            .filter(|p| **p != self_addr)
            .cloned()
            .collect();
        let secret = self.orca.peer_secret.as_deref();
        let mut others: Vec<ReplicaReport> = futures::stream::iter(peers)
            .map(|peer| {
                let request = &request;
                async move { ask_peer(&peer, secret, request, PEER_PURGE_DEADLINE).await }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        others.sort_by(|a, b| a.replica.cmp(&b.replica));
        // A version only a peer had pinned may have chunks in the shared store too.
        let mut extra: Vec<PurgedVersion> = others
            .iter()
            .flat_map(|r| r.versions.iter())
            .filter(|v| !own.versions.contains(v))
            .cloned()
            .collect();
        extra.sort();
        extra.dedup();
        if !extra.is_empty() {
            let more = purge_local(
                &self.orca,
                &PurgeRequest {
                    versions: extra,
                    shared: true,
                    ..request.clone()
                },
            )
            .await;
            merge(&mut own, more);
        }
        let complete = others.iter().all(|r| r.reached);
        let mut replicas = vec![own];
        replicas.extend(others);
        PurgeReport {
            bucket: bucket.to_string(),
            key: key.to_string(),
            origin,
            origin_error,
            complete,
            replicas,
        }
    }

    async fn inspect(&self, bucket: &str, key: &str) -> Response<Vec<u8>> {
        let pinned = self.orca.metadata.peek(bucket, key);
        let (version, from) = match &pinned {
            Some(meta) => (Some((meta.etag.clone(), meta.size)), "pinned"),
            None => match self.orca.origin.head(bucket, key).await {
                Ok(meta) => (Some((meta.etag, meta.size)), "origin"),
                Err(OriginError::NotFound) => (None, "origin"),
                Err(e) => return error(502, &format!("HEAD of {bucket}/{key} at the origin: {e}")),
            },
        };
        let replica = self.orca.cluster.self_addr().to_string();
        let Some((etag, size)) = version else {
            return reply(
                200,
                &json!({
                    "bucket": bucket, "key": key, "replica": replica,
                    "pinned": null, "version": null, "chunks": [],
                }),
            );
        };
        let versions = [PurgedVersion {
            etag: etag.clone(),
            size,
        }];
        let chunk_size = self.orca.config.chunking.chunk_size_for(size);
        let chunks: Vec<_> = crate::fill::purge::version_chunks(&self.orca, bucket, key, &versions)
            .take(usize::try_from(INSPECT_MAX_CHUNKS).unwrap_or(usize::MAX))
            .collect();
        let total = crate::chunk::chunk_count(size, chunk_size);
        let orca = &self.orca;
        let mut views: Vec<ChunkView> = futures::stream::iter(chunks)
            .map(|chunk| async move {
                let (tiers, in_flight) = orca.storage.locate(&chunk.id).await;
                ChunkView {
                    index: chunk.id.index,
                    offset: chunk.offset(),
                    length: chunk.len,
                    name: chunk.id.name(),
                    coordinator: orca
                        .cluster
                        .coordinator(&chunk.id)
                        .unwrap_or_else(|| orca.cluster.self_addr().to_string()),
                    in_flight,
                    tiers: tiers
                        .into_iter()
                        .map(|t| {
                            let v = match t.bytes {
                                Ok(Some(b)) => json!(b),
                                Ok(None) => json!(null),
                                Err(e) => json!({ "error": e }),
                            };
                            (t.tier.to_string(), v)
                        })
                        .collect(),
                }
            })
            .buffered(INSPECT_CONCURRENCY)
            .collect()
            .await;
        views.sort_by_key(|c| c.index);
        let held = views
            .iter()
            .filter(|c| c.tiers.values().any(serde_json::Value::is_u64))
            .count();
        reply(
            200,
            &json!({
                "bucket": bucket,
                "key": key,
                "replica": replica,
                "pinned": pinned.map(|m| json!({ "etag": m.etag, "size": m.size })),
                "version": { "etag": etag, "size": size, "from": from },
                "chunk_size": chunk_size,
                "chunk_count": total,
                "chunks_cached": held,
                "truncated": total > INSPECT_MAX_CHUNKS,
                "chunks": views,
            }),
        )
    }
}

/// One chunk as inspect shows it.
#[derive(Serialize)]
struct ChunkView {
    index: u64,
    offset: u64,
    length: u64,
    name: String,
    /// The replica whose fill service fetches it (its internal address).
    coordinator: String,
    /// A fill of it is in flight on this replica.
    in_flight: bool,
    /// Per tier of this replica's store (and the shared store): bytes stored, or null.
    tiers: BTreeMap<String, serde_json::Value>,
}

/// A fleet-wide purge's answer.
#[derive(Serialize)]
pub struct PurgeReport {
    bucket: String,
    key: String,
    /// The origin's current version (purged too: its chunks may be cached already).
    origin: Option<PurgedVersion>,
    /// Why the origin's HEAD failed (the versions the replicas knew of are purged anyway).
    #[serde(skip_serializing_if = "Option::is_none")]
    origin_error: Option<String>,
    /// Every replica answered.
    complete: bool,
    /// This replica first, then its peers.
    replicas: Vec<ReplicaReport>,
}

fn merge(into: &mut ReplicaReport, more: ReplicaReport) {
    for v in more.versions {
        if !into.versions.contains(&v) {
            into.versions.push(v);
        }
    }
    for (tier, t) in more.tiers {
        let e = into.tiers.entry(tier).or_default();
        e.shared = t.shared;
        e.chunks += t.chunks;
        e.bytes += t.bytes;
        e.errors += t.errors;
        e.error_samples.extend(t.error_samples);
    }
}

/// The `bucket` and `key` parameters, both required.
fn object_of(q: &HashMap<String, String>) -> Result<(&str, &str), Box<Response<Vec<u8>>>> {
    match (q.get("bucket"), q.get("key")) {
        (Some(b), Some(k)) if !b.is_empty() && !k.is_empty() => Ok((b, k)),
        _ => Err(Box::new(error(400, "bucket and key are required"))),
    }
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
            // Strictly percent-decoded, as the edge decodes keys: `+` is a plus.
            let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
            (decode(n), decode(v))
        })
        .collect()
}

fn reply<T: Serialize + ?Sized>(status: u16, body: &T) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(body).unwrap_or_default();
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn error(status: u16, message: &str) -> Response<Vec<u8>> {
    reply(status, &json!({ "error": message }))
}
