//! The shared S3 cache store against moto: no-clobber commits under a race, the versioning
//! gate, the self-test that refuses a store ignoring `If-None-Match: *`, and S3 Express One
//! Zone directory buckets (signature checked against botocore; sessions against moto behind a
//! proxy that answers the `CreateSession` moto lacks).

#![allow(clippy::unwrap_used)]

mod common;

use ::orca::cachestore::s3::S3Store;
use ::orca::cachestore::{CacheStore, CommitOutcome};
use ::orca::chunk::ChunkId;
use ::orca::s3client::{S3Auth, S3Client};
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

/// Runs `orca -t` with moto (at `origin`) as the origin and the cache bucket `bucket` at
/// `store`; returns whether it passed and its stderr.
fn orca_check(origin: &str, store: &str, bucket: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orca.yaml");
    std::fs::write(
        &path,
        format!(
            "origin:\n  id: o\n  s3:\n    endpoint: {origin}\n    path_style: true\n{}",
            cache_yaml(store, bucket)
        ),
    )
    .unwrap();
    let mut cmd = Command::new(orca_bin());
    cmd.args(["-t", "--config"])
        .arg(&path)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("ORCA_CACHESTORE_ACCESS_KEY_ID", "test")
        .env("ORCA_CACHESTORE_SECRET_ACCESS_KEY", "test");
    let out = run_bounded(&mut cmd, None, CLIENT_DEADLINE);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An S3 Express `CreateSession` answer with these session credentials, as the test proxy
/// gives it in front of moto (which has no CreateSession).
fn create_session_answer(key_id: &str, secret: &str, token: &str) -> Fault {
    Fault::Respond(
        200,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CreateSessionResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Credentials><SessionToken>{token}</SessionToken><SecretAccessKey>{secret}</SecretAccessKey><AccessKeyId>{key_id}</AccessKeyId><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials></CreateSessionResult>"
        ),
    )
}

/// The cache store's S3 client (directory buckets on) for `endpoint`, with the keys `AKIDOWN`.
fn express_client(endpoint: &str) -> Arc<S3Client> {
    Arc::new(
        S3Client::new(
            endpoint,
            "us-east-1",
            true,
            S3Auth::Sign(Credentials::new("AKIDOWN", "own", None, None, "test")),
            Duration::from_secs(10),
        )
        .unwrap()
        .with_directory_buckets(),
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
    for (bucket, enable) in [("versioned-cache", true), ("suspended-cache", false)] {
        create_bucket(&moto.endpoint(), bucket).await;
        put_bucket_versioning(&moto.endpoint(), bucket, true).await;
        if !enable {
            put_bucket_versioning(&moto.endpoint(), bucket, false).await;
        }
        let (passed, stderr) = orca_check(&moto.endpoint(), &moto.endpoint(), bucket);
        assert!(!passed, "{bucket} accepted");
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
            .env("ORCA_CACHESTORE_SECRET_ACCESS_KEY", "test")
            .unready_at_start(),
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
    let errors = orca
        .wait_metric_at_least(
            "orca_cachestore_commits_total{result=\"error\"}",
            3.0,
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(errors, 3.0);
    assert_eq!(
        orca.metric_value("orca_cachestore_commits_total{result=\"committed\"}"),
        0.0
    );
}

/// Signs a request for an S3 Express One Zone directory bucket with session credentials and
/// checks the Authorization header against botocore's own S3 Express signer, given the same
/// request, credentials and time: no S3 Express server runs on loopback, so the signature is
/// checked against a second implementation instead.
#[test]
fn s3_express_requests_are_signed_as_botocore_signs_them() {
    let client = S3Client::new(
        "https://s3express-use1-az4.us-east-1.amazonaws.com",
        "us-east-1",
        false,
        S3Auth::Sign(Credentials::new(
            "AKIDOWN",
            "own-secret",
            None,
            None,
            "test",
        )),
        Duration::from_secs(10),
    )
    .unwrap();
    let bucket = "orca-cache--use1-az4--x-s3";
    let session = Credentials::new(
        "ASIASESSION",
        "session/secret+key",
        Some("session-token/abc+def==".into()),
        None,
        "test",
    );
    // 2026-11-23T10:11:12Z.
    let time = std::time::UNIX_EPOCH + Duration::from_secs(1_795_428_672);
    let req = client
        .sign_with_session_at(
            "GET",
            bucket,
            Some("v1/ab/a key+1"),
            &[("range", "bytes=0-99")],
            session,
            time,
        )
        .unwrap();
    let header = |n: &str| {
        req.headers
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert_eq!(header("x-amz-s3session-token"), "session-token/abc+def==");
    assert!(req.headers.get("x-amz-security-token").is_none());
    let ours = header("authorization");
    assert!(
        ours.contains("Credential=ASIASESSION/20261123/us-east-1/s3express/aws4_request"),
        "{ours}"
    );
    let url = format!("https://{}{}", header("host"), req.uri);
    let theirs = run_client(Command::new("python3").args(["-c", BOTOCORE_S3EXPRESS, &url]));
    assert_eq!(ours, String::from_utf8_lossy(&theirs).trim());
}

const BOTOCORE_S3EXPRESS: &str = r#"
import sys, datetime
from unittest import mock
from botocore.auth import S3ExpressAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
url = sys.argv[1]
creds = Credentials("ASIASESSION", "session/secret+key", "session-token/abc+def==")
req = AWSRequest(method="GET", url=url, headers={"Range": "bytes=0-99"})
req.context["client_config"] = Config(s3={"payload_signing_enabled": False})
now = datetime.datetime(2026, 11, 23, 10, 11, 12)
with mock.patch("botocore.auth.get_current_datetime", return_value=now):
    S3ExpressAuth(creds, "s3express", "us-east-1", identity_cache=None).add_auth(req)
print(req.headers["Authorization"])
"#;

/// A directory bucket as the cache store. moto has no S3 Express, so a proxy in front of it
/// answers `CreateSession` (the one call moto lacks) and records every request; the rest goes
/// to moto. Orca must make one session and sign every store request with it, skip the
/// versioning check (directory buckets have none), pass the no-clobber self-test and commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_express_directory_bucket_works_as_the_cache_store() {
    let moto = Moto::start();
    let bucket = "orca-cache--use1-az4--x-s3";
    create_bucket(&moto.endpoint(), "origin-bucket").await;
    create_bucket(&moto.endpoint(), bucket).await;
    let express = FaultProxy::start(&moto.endpoint());
    let token = "emulated-session-token/1+2==";
    express.push_fault(
        FaultRule::new(create_session_answer(
            "ASIAEMULATED",
            "session-secret",
            token,
        ))
        .method("GET")
        .path_contains("?session")
        .times(1000),
    );
    let orca = OrcaProcess::start(
        OrcaConfig::new(&moto.endpoint())
            .extra_yaml(&cache_yaml(&express.endpoint(), bucket))
            .env("ORCA_CACHESTORE_ACCESS_KEY_ID", "AKIDOWN")
            .env("ORCA_CACHESTORE_SECRET_ACCESS_KEY", "own-secret"),
    );
    let (status, body) = orca.ops_get("/readyz");
    assert_eq!(status, 200, "{body}");
    let data = deterministic_bytes(9, 3 << 20);
    put_object(&moto.endpoint(), "origin-bucket", "k", data.clone()).await;
    let r = http_get(&orca.object_url("origin-bucket", "k"), None)
        .await
        .unwrap();
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    let committed = orca
        .wait_metric_at_least(
            "orca_cachestore_commits_total{result=\"committed\"}",
            3.0,
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(committed, 3.0);

    let log = express.counts().log;
    let sessions: Vec<_> = log
        .iter()
        .filter(|r| r.target.contains("?session"))
        .collect();
    // One session for the start-up check (its own client, in a runtime that ends with it) and
    // one for the running store, reused by every request since.
    assert_eq!(sessions.len(), 2, "{log:?}");
    for create in sessions {
        assert!(create.header("x-amz-s3session-token").is_none());
        let auth = create.header("authorization").unwrap_or_default();
        assert!(
            auth.contains("Credential=AKIDOWN/")
                && auth.contains("/us-east-1/s3express/aws4_request"),
            "{create:?}"
        );
    }
    assert!(
        !log.iter().any(|r| r.target.contains("versioning")),
        "{log:?}"
    );
    let data_requests: Vec<_> = log
        .iter()
        .filter(|r| !r.target.contains("?session"))
        .collect();
    // The self-test's two puts and its delete, and the three chunk commits at least.
    assert!(data_requests.len() >= 6, "{log:?}");
    for r in data_requests {
        assert_eq!(r.header("x-amz-s3session-token"), Some(token), "{r:?}");
        let auth = r.header("authorization").unwrap_or_default();
        assert!(
            auth.contains("Credential=ASIAEMULATED/") && auth.contains("/s3express/aws4_request"),
            "{r:?}"
        );
    }
}

/// A directory bucket whose CreateSession is refused stops `orca -t` with the bucket's name
/// and S3's error code (the keys lack `s3express:CreateSession`, or the bucket is not there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_s3_express_session_stops_orca_naming_the_bucket() {
    let moto = Moto::start();
    let bucket = "denied--use1-az4--x-s3";
    create_bucket(&moto.endpoint(), bucket).await;
    let express = FaultProxy::start(&moto.endpoint());
    express.push_fault(
        FaultRule::new(Fault::Status(403))
            .path_contains("?session")
            .times(10),
    );
    let (passed, stderr) = orca_check(&moto.endpoint(), &express.endpoint(), bucket);
    assert!(!passed, "accepted: {stderr}");
    assert!(stderr.contains(bucket), "{stderr}");
    assert!(stderr.contains("CreateSession"), "{stderr}");
    assert!(stderr.contains("AccessDenied"), "{stderr}");
    // Nothing but the session was asked for: no versioning call, no probe put.
    let log = express.counts().log;
    assert!(log.iter().all(|r| r.target.contains("?session")), "{log:?}");
}

/// S3 Express sessions are renewed after 4 minutes without failing requests, and a session
/// that could not be renewed stops signing once it has expired. (The session's age is moved
/// forward instead of waiting 4 minutes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_express_sessions_are_renewed_and_expire() {
    let moto = Moto::start();
    let bucket = "renew--use1-az4--x-s3";
    create_bucket(&moto.endpoint(), bucket).await;
    let express = FaultProxy::start(&moto.endpoint());
    let session_rule = |n: u32| {
        FaultRule::new(create_session_answer(
            &format!("ASIA{n}"),
            &format!("secret-{n}"),
            &format!("token-{n}"),
        ))
        .path_contains("?session")
        .times(1)
    };
    express.push_fault(session_rule(1));
    let client = express_client(&express.endpoint());
    let token_of = |c: &S3Client| {
        let req = c
            .signed_request("HEAD", bucket, Some("k"), "", &[])
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(
            req.headers
                .get("x-amz-s3session-token")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default(),
        )
    };
    client.prepare(bucket).await.unwrap();
    assert_eq!(token_of(&client).unwrap(), "token-1");
    // Young: no new session.
    client.prepare(bucket).await.unwrap();
    assert_eq!(express.counts().total, 1);

    // Due for renewal: the next caller renews it.
    express.push_fault(session_rule(2));
    client.age_session(bucket, Duration::from_secs(250));
    client.prepare(bucket).await.unwrap();
    assert_eq!(token_of(&client).unwrap(), "token-2");
    assert_eq!(express.counts().total, 2);

    // Due for renewal, and the renewal fails: the old session is still used while it lasts.
    express.push_fault(
        FaultRule::new(Fault::Status(503))
            .path_contains("?session")
            .times(1),
    );
    client.age_session(bucket, Duration::from_secs(250));
    client.prepare(bucket).await.unwrap();
    assert_eq!(token_of(&client).unwrap(), "token-2");
    assert_eq!(express.counts().total, 3);

    // Expired, and CreateSession fails: nothing can be signed; the error names the bucket.
    express.push_fault(
        FaultRule::new(Fault::Status(403))
            .path_contains("?session")
            .times(1),
    );
    client.age_session(bucket, Duration::from_secs(30));
    let e = client.prepare(bucket).await.unwrap_err().to_string();
    assert!(e.contains(bucket) && e.contains("AccessDenied"), "{e}");
    assert!(token_of(&client).unwrap_err().contains(bucket));

    // The next successful CreateSession restores signing.
    express.push_fault(session_rule(3));
    client.prepare(bucket).await.unwrap();
    assert_eq!(token_of(&client).unwrap(), "token-3");
    assert_eq!(express.counts().total, 5);
}

/// Callers waiting for a session while CreateSession fails get that failure, not one more
/// CreateSession each (a hung endpoint would otherwise cost each of them a timeout in turn).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_waiting_on_a_failed_s3_express_session_share_its_error() {
    let moto = Moto::start();
    let bucket = "shared--use1-az4--x-s3";
    create_bucket(&moto.endpoint(), bucket).await;
    let express = FaultProxy::start(&moto.endpoint());
    // A slow failure: held 300 ms, then moto's own answer, which carries no credentials.
    express.push_fault(
        FaultRule::new(Fault::Stall(Duration::from_millis(300)))
            .path_contains("?session")
            .times(10),
    );
    let client = express_client(&express.endpoint());
    let mut callers = Vec::new();
    for _ in 0..4 {
        let c = client.clone();
        callers.push(tokio::spawn(async move { c.prepare(bucket).await }));
    }
    for c in callers {
        let e = c.await.unwrap().unwrap_err().to_string();
        assert!(e.contains("CreateSession") && e.contains(bucket), "{e}");
    }
    assert_eq!(express.counts().total, 1, "{:?}", express.counts().log);
    // A later call tries again.
    assert!(client.prepare(bucket).await.is_err());
    assert_eq!(express.counts().total, 2);
}

/// A store (or a hop in front of it) that ignores `Range` answers a ranged read with the whole
/// object: its first bytes must never be served as the bytes asked for. A read of the whole
/// chunk may use the 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_ignores_range_is_never_served_from_the_wrong_offset() {
    let moto = Moto::start();
    let bucket = "ranges";
    create_bucket(&moto.endpoint(), bucket).await;
    let direct = store(&moto.endpoint(), bucket);
    let id = ChunkId::from_fields("o", "b", "k", "e", 1000, 0);
    let bytes: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        direct
            .commit(&id, vec![Bytes::from(bytes.clone())], 1000)
            .await
            .unwrap(),
        CommitOutcome::Committed
    );
    let proxy = FaultProxy::start(&moto.endpoint());
    proxy.push_fault(FaultRule::new(Fault::StripRequestHeader("range".into())).times(10));
    let ignoring = store(&proxy.endpoint(), bucket);
    // A range inside the chunk: the whole-object 200 is refused, not served from byte 0.
    let read = ignoring.read(&id, 1000, 100, 200).await;
    assert!(read.is_err(), "a 200 to a ranged read must not be used");
    // The chunk is still there (nothing was deleted for it) and reads correctly direct.
    let mut reader = direct.read(&id, 1000, 100, 200).await.unwrap().unwrap();
    let mut got = Vec::new();
    while let Some(p) = reader.next_piece().await.unwrap() {
        got.extend_from_slice(&p);
    }
    assert_eq!(got, bytes[100..200]);
    // The whole chunk through the same hop: a 200 of the whole object is exactly right.
    let mut reader = ignoring.read(&id, 1000, 0, 1000).await.unwrap().unwrap();
    let mut got = Vec::new();
    while let Some(p) = reader.next_piece().await.unwrap() {
        got.extend_from_slice(&p);
    }
    assert_eq!(got, bytes);
    assert!(proxy.counts().total >= 2);
}
