//! Network plumbing at the bottom of the crate, shared by the origin drivers, the cache store
//! and the fill client: endpoint parsing and an async DNS cache ([`http`]), Orca's own
//! connection pool ([`pool`]), one retry policy ([`retry`]) and S3's URL encoding ([`encode`]).
//! Nothing here knows about chunks, objects or the cluster.

pub mod encode;
pub mod http;
pub mod oneshot;
pub mod pool;
pub mod retry;
pub mod tls;
