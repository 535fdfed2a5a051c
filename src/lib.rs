//! Orca: a chunked, read-through cache for S3 and Azure Blob origins, on Pingora.
//!
//! # Layout
//!
//! Modules are layered; each imports only from layers below it (`tests/layering.rs` checks it):
//!
//! | layer | modules | owns |
//! |---|---|---|
//! | 5 | `app`, `fuzzing` | wiring: the Pingora server and its services (`main.rs` calls it); the fuzz targets' entry points |
//! | 4 | `edge`, `ops`, `cachectl` | the S3 surface clients talk to; health, readiness and metrics; cache control (warm, purge, inspect) on the ops port and its `orca` subcommands |
//! | 3 | `fill` | the fill protocol: request, service (pingora-cache over the origin), clients |
//! | 3 | `seed` | `orcaseed` (`src/bin/orcaseed.rs`): test data written to, listed in and deleted from an S3 bucket or Azure container |
//! | 2 | `state` | the state the services share, built from the configuration |
//! | 1 | `origin`, `cachestore`, `metadata`, `cluster` | origin drivers; chunk stores and the pingora-cache storage; HEAD cache; peer set and rendezvous |
//! | 0 | `s3client`, `net`, `chunk`, `config`, `error`, `metrics`, `telemetry`, `credentials` | S3 requests and signing; HTTP plumbing; chunk identity and math; configuration; S3 errors; metric names; logging; cloud credential chains |
//!
//! The request path: `edge` parses an S3 request, resolves the object through `metadata`, and
//! streams its chunks from `cachestore` (hits) or through `fill` (misses, to the chunk's
//! coordinator from `cluster`, which fetches it from `origin` once). See `docs/design.md`.

pub mod app;
pub mod cachectl;
pub mod cachestore;
pub mod chunk;
pub mod cluster;
pub mod config;
pub mod credentials;
pub(crate) mod edge;
pub(crate) mod error;
pub(crate) mod fill;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod metadata;
pub(crate) mod metrics;
pub mod net;
pub(crate) mod ops;
pub mod origin;
pub mod s3client;
pub mod seed;
pub(crate) mod state;
pub mod telemetry;
