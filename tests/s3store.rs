//! The shared S3 cache store against moto: no-clobber commits under a race, the versioning
//! gate, and the self-test that refuses a store ignoring `If-None-Match: *`.

#![allow(clippy::unwrap_used)]

mod common;

use ::orca::cachestore::s3::S3Store;
use ::orca::cachestore::{CacheStore, CommitOutcome};
use ::orca::chunk::ChunkId;
use ::orca::s3::{S3Auth, S3Client};
use aws_credential_types::Credentials;
use bytes::Bytes;
use common::*;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

fn store(endpoint: &str, bucket: &str) -> S3Store {
    let client = S3Client::new(
        endpoint,
        "us-east-1",
        true,
        S3Auth::Sign(Credentials::new("test", "test", None, None, "test")),
        Duration::from_secs(10),
    )
    .unwrap();
    S3Store::new(client, bucket)
}

fn cache_yaml(endpoint: &str, bucket: &str) -> String {
    format!(
        "cachestore:\n  driver: s3\n  s3:\n    endpoint: {endpoint}\n    region: us-east-1\n    bucket: {bucket}\n    path_style: true\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_commits_all_succeed_and_leave_one_exact_object() {
    let moto = Moto::start();
    create_bucket(&moto.endpoint(), "cache").await;
    let s = Arc::new(store(&moto.endpoint(), "cache"));
    assert_eq!(s.check().await.unwrap(), None);
    let id = ChunkId::from_fields("o", "b", "k", "e", 1 << 20, 0);
    let data = Bytes::from(deterministic_bytes(1, 300_000));
    let mut writers = Vec::new();
    for _ in 0..8 {
        let (s, id, data) = (s.clone(), id.clone(), data.clone());
        writers.push(tokio::spawn(async move {
            // Handed over in pieces, as a fill hands them over.
            let pieces = vec![data.slice(..100_000), data.slice(100_000..)];
            s.commit(&id, pieces, 300_000).await
        }));
    }
    let mut committed = 0;
    for w in writers {
        match w.await.unwrap().unwrap() {
            CommitOutcome::Committed => committed += 1,
            CommitOutcome::Lost => {}
        }
    }
    // moto may let two racing conditional puts both win; both hold the same bytes.
    assert!(committed >= 1);
    assert_eq!(s.stat(&id).await.unwrap(), Some(300_000));
    let mut reader = s.read(&id, 300_000, 1000, 250_000).await.unwrap().unwrap();
    let mut got = Vec::new();
    while let Some(p) = reader.next_piece().await.unwrap() {
        got.extend_from_slice(&p);
    }
    assert_eq!(got, &data[1000..250_000]);
    // A later commit of the same chunk is Lost: the object is not rewritten.
    let again = s.commit(&id, vec![data.clone()], 300_000).await.unwrap();
    assert_eq!(again, CommitOutcome::Lost);
    // A length that does not add up is refused before anything is sent.
    assert!(s
        .commit(&id, vec![data.slice(..10)], 300_000)
        .await
        .is_err());
    // A chunk that is not there is a miss.
    let other = ChunkId::from_fields("o", "b", "k", "e", 1 << 20, 1);
    assert!(s.read(&other, 10, 0, 10).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_versioned_cache_bucket_is_refused_at_start_by_name() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    for (bucket, enable) in [("versioned-cache", true), ("suspended-cache", false)] {
        create_bucket(&moto.endpoint(), bucket).await;
        put_bucket_versioning(&moto.endpoint(), bucket, true).await;
        if !enable {
            put_bucket_versioning(&moto.endpoint(), bucket, false).await;
        }
        let path = dir.path().join(format!("{bucket}.yaml"));
        std::fs::write(
            &path,
            format!(
                "origin:\n  id: o\n  s3:\n    endpoint: {}\n    path_style: true\n{}",
                moto.endpoint(),
                cache_yaml(&moto.endpoint(), bucket)
            ),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_orca"))
            .args(["-t", "--config"])
            .arg(&path)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("ORCA_CACHESTORE_ACCESS_KEY_ID", "test")
            .env("ORCA_CACHESTORE_SECRET_ACCESS_KEY", "test")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bucket} accepted");
        assert!(stderr.contains(bucket), "{stderr}");
        assert!(stderr.contains("versioning"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_ignores_conditional_puts_is_refused_and_readyz_says_why() {
    let moto = Moto::start();
    create_bucket(&moto.endpoint(), "origin-bucket").await;
    create_bucket(&moto.endpoint(), "cache").await;
    // The cache store is reached through a proxy that drops If-None-Match from every request.
    let lax = FaultProxy::start(&moto.endpoint());
    lax.push_fault(FaultRule::new(Fault::StripRequestHeader("if-none-match".into())).times(1000));
    let orca = OrcaProcess::start(
        OrcaConfig::new(&moto.endpoint())
            .extra_yaml(&cache_yaml(&lax.endpoint(), "cache"))
            .env("ORCA_CACHESTORE_ACCESS_KEY_ID", "test")
            .env("ORCA_CACHESTORE_SECRET_ACCESS_KEY", "test"),
    );
    let (status, body) = orca.ops_get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("If-None-Match"), "{body}");
    // Reads still work (straight from the origin); nothing is committed to such a store.
    let data = deterministic_bytes(2, 3 << 20);
    put_object(&moto.endpoint(), "origin-bucket", "k", data.clone()).await;
    let r = http_get(&orca.object_url("origin-bucket", "k"), None)
        .await
        .unwrap();
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    let errors = orca.wait_metric_at_least(
        "orca_cachestore_commits_total{result=\"error\"}",
        3.0,
        Duration::from_secs(20),
    );
    assert_eq!(errors, 3.0);
    assert_eq!(
        orca.metric_value("orca_cachestore_commits_total{result=\"committed\"}"),
        0.0
    );
}
