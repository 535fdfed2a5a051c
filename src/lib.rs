//! Orca: a chunked, read-through cache for S3 and Azure Blob origins, on Pingora.
pub mod app;
pub mod cachestore;
pub mod catalog;
pub mod chunk;
pub mod cluster;
pub mod config;
pub mod edge;
pub mod error;
pub mod fill;
pub mod metadata;
pub mod metrics;
pub mod ops;
pub mod origin;
pub mod s3;
pub mod telemetry;
