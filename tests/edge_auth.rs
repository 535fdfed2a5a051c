//! Client authentication on the edge (`edge.auth`), with the clients people use: the aws CLI,
//! boto3 (path-style and virtual-hosted, presigned URLs) and curl, against the real `orca`
//! binary reading from moto. Also the credentials file reloaded on `SIGHUP`, and a bad file
//! refused at start-up.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_norway::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const MIB: usize = 1 << 20;
const BUCKET: &str = "authdata";
const OTHER: &str = "otherdata";
const KEY: &str = "dir/data file+1.bin";

const READER: (&str, &str) = ("AKIAORCAREADER000001", "reader-secret-Zq81x");
const OTHER_KEY: (&str, &str) = ("AKIAORCAOTHER0000001", "other-secret-Pw27k");
const NEWCOMER: (&str, &str) = ("AKIAORCANEWCOMER0001", "newcomer-secret-Lk55m");
/// Upper bound of one client run.
const CLIENT_DEADLINE_SECS: &str = "120";

fn client_script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/s3_auth.py")
}

/// The credentials file: the reader key inline, the other key's secret from the environment.
fn keys_yaml(keys: &[(&str, &str, &str)]) -> String {
    let mut s = String::from("keys:\n");
    for (id, secret, buckets) in keys {
        s.push_str(&format!(
            "  - access_key_id: {id}\n    {secret}\n    buckets: {buckets}\n"
        ));
    }
    s
}

fn inline(secret: &str) -> String {
    format!("secret_access_key: \"{secret}\"")
}

/// Orca with `edge.auth.required` and `keys` as its credentials file (written in `dir`).
fn start_orca(moto: &Moto, dir: &Path, keys: &str) -> OrcaProcess {
    start_orca_with(moto, dir, keys, true)
}

fn start_orca_with(moto: &Moto, dir: &Path, keys: &str, required: bool) -> OrcaProcess {
    let file = dir.join("edge-keys.yaml");
    std::fs::write(&file, keys).unwrap();
    OrcaProcess::start(
        OrcaConfig::new(&moto.endpoint())
            .extra_yaml(&format!(
                "edge:\n  virtual_host_suffix: orca.test\n  auth:\n    required: {required}\n    credentials_file: \"{}\"\n",
                file.display()
            ))
            .env("ORCA_TEST_OTHER_SECRET", OTHER_KEY.1),
    )
}

/// Runs a client under `timeout`, with only the credentials given (none from this process).
fn client(program: &str, args: &[&str], creds: (&str, &str)) -> Output {
    Command::new("timeout")
        .arg(CLIENT_DEADLINE_SECS)
        .arg(program)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", creds.0)
        .env("AWS_SECRET_ACCESS_KEY", creds.1)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_CA_BUNDLE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_S3")
        .env("NO_PROXY", "127.0.0.1,localhost,orca.test")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

/// boto3 operations (see tests/clients/s3_auth.py); one result per operation.
fn boto3(endpoint: &str, creds: (&str, &str), style: &str, ops: &str) -> Vec<Value> {
    let out = client(
        "python3",
        &[client_script(), endpoint, creds.0, creds.1, style, ops],
        ("", ""),
    );
    assert!(
        out.status.success(),
        "s3_auth.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_norway::from_slice(&out.stdout).unwrap();
    v["results"].as_sequence().unwrap().clone()
}

fn error_of(result: &Value) -> (String, u64) {
    (
        result["error"].as_str().unwrap_or("").to_string(),
        result["status"].as_u64().unwrap_or(0),
    )
}

/// `curl URL`: (status, body).
fn curl(url: &str) -> (u16, Vec<u8>) {
    curl_with(url, &[])
}

/// `curl ARGS URL`: (status, body).
fn curl_with(url: &str, args: &[&str]) -> (u16, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    let out = Command::new("timeout")
        .arg(CLIENT_DEADLINE_SECS)
        .arg("curl")
        .args(args)
        .args(["-sS", "-o"])
        .arg(&body)
        .args(["-w", "%{http_code}", url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (status, std::fs::read(&body).unwrap_or_default())
}

fn xml_code(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.split("<Code>")
        .nth(1)
        .and_then(|rest| rest.split("</Code>").next())
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_sign_and_orca_checks_as_s3_does() {
    let moto = Moto::start();
    create_bucket(&moto.endpoint(), BUCKET).await;
    create_bucket(&moto.endpoint(), OTHER).await;
    let data = deterministic_bytes(14, 3 * MIB + 321);
    put_object(&moto.endpoint(), BUCKET, KEY, data.clone()).await;
    put_object(
        &moto.endpoint(),
        OTHER,
        "small.txt",
        b"other bucket".to_vec(),
    )
    .await;
    let want = sha256_hex(&data);
    let dir = tempfile::tempdir().unwrap();
    let orca = start_orca(
        &moto,
        dir.path(),
        &keys_yaml(&[
            (READER.0, &inline(READER.1), "[authdata]"),
            (
                OTHER_KEY.0,
                "secret_access_key_env: ORCA_TEST_OTHER_SECRET",
                "[otherdata]",
            ),
        ]),
    );
    let edge = orca.edge_url();

    // aws CLI, the right key: byte-exact (multi-chunk, so ranged GETs run too).
    let target = dir.path().join("aws.bin");
    let out = client(
        "aws",
        &[
            "--endpoint-url",
            &edge,
            "s3",
            "cp",
            &format!("s3://{BUCKET}/{KEY}"),
            target.to_str().unwrap(),
            "--only-show-errors",
        ],
        READER,
    );
    assert!(
        out.status.success(),
        "aws s3 cp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sha256_hex(&std::fs::read(&target).unwrap()),
        want,
        "aws s3 cp"
    );

    // aws CLI refusals, each with S3's code.
    let s3api_get = |creds: (&str, &str), bucket: &str, key: &str| {
        let out = client(
            "aws",
            &[
                "--endpoint-url",
                &edge,
                "s3api",
                "get-object",
                "--bucket",
                bucket,
                "--key",
                key,
                dir.path().join("x").to_str().unwrap(),
            ],
            creds,
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = s3api_get((READER.0, "not-the-secret"), BUCKET, KEY);
    assert!(
        !ok && err.contains("SignatureDoesNotMatch"),
        "wrong secret: {err}"
    );
    let (ok, err) = s3api_get(("AKIAORCANOSUCHKEY001", READER.1), BUCKET, KEY);
    assert!(
        !ok && err.contains("InvalidAccessKeyId"),
        "unknown key: {err}"
    );
    let (ok, err) = s3api_get(READER, OTHER, "small.txt");
    assert!(
        !ok && err.contains("AccessDenied"),
        "bucket not granted: {err}"
    );
    let (ok, err) = s3api_get(READER, BUCKET, KEY);
    assert!(ok, "aws s3api get-object: {err}");
    assert_eq!(
        sha256_hex(&std::fs::read(dir.path().join("x")).unwrap()),
        want
    );

    // rclone (the Go SDK's signer): the right key reads and lists, a wrong secret is refused.
    let rclone = |secret: &str, args: &[&str]| {
        let config = dir.path().join("rclone.conf");
        std::fs::write(
            &config,
            format!(
                "[orca]\ntype = s3\nprovider = Other\nenv_auth = false\naccess_key_id = {}\n\
                 secret_access_key = {secret}\nendpoint = {edge}\nregion = us-east-1\n",
                READER.0
            ),
        )
        .unwrap();
        let mut all = vec![
            "--config",
            config.to_str().unwrap(),
            "--retries",
            "1",
            "--low-level-retries",
            "1",
        ];
        all.extend_from_slice(args);
        client("rclone", &all, ("", ""))
    };
    let out = rclone(READER.1, &["cat", &format!("orca:{BUCKET}/{KEY}")]);
    assert!(
        out.status.success(),
        "rclone cat: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256_hex(&out.stdout), want, "rclone cat");
    let out = rclone(READER.1, &["lsf", "-R", &format!("orca:{BUCKET}")]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("data file+1.bin"),
        "rclone lsf: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = rclone("not-the-secret", &["cat", &format!("orca:{BUCKET}/{KEY}")]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("SignatureDoesNotMatch"),
        "rclone, wrong secret: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // boto3, path-style: GET, a range, HEAD, ListObjectsV2, ListBuckets (only the key's
    // buckets), a bucket not granted, presigned URLs.
    let ops = format!(
        r#"[{{"op":"get","bucket":"{BUCKET}","key":"{KEY}"}},
            {{"op":"get","bucket":"{BUCKET}","key":"{KEY}","range":"bytes=1048570-1048580"}},
            {{"op":"head","bucket":"{BUCKET}","key":"{KEY}"}},
            {{"op":"list","bucket":"{BUCKET}","prefix":"dir/"}},
            {{"op":"list_buckets"}},
            {{"op":"get","bucket":"{OTHER}","key":"small.txt"}},
            {{"op":"head","bucket":"{OTHER}","key":"small.txt"}},
            {{"op":"presign","bucket":"{BUCKET}","key":"{KEY}","expires":3600}},
            {{"op":"presign","bucket":"{BUCKET}","key":"{KEY}","expires":1}},
            {{"op":"get_skewed","bucket":"{BUCKET}","key":"{KEY}","minutes":20}}]"#
    );
    let r = boto3(&edge, READER, "path", &ops);
    assert_eq!(
        r[0]["sha256"].as_str(),
        Some(want.as_str()),
        "boto3 get: {:?}",
        r[0]
    );
    assert_eq!(
        r[1]["sha256"].as_str(),
        Some(sha256_hex(&data[1048570..=1048580]).as_str()),
        "range: {:?}",
        r[1]
    );
    assert_eq!(
        r[2]["len"].as_u64(),
        Some(data.len() as u64),
        "head: {:?}",
        r[2]
    );
    assert_eq!(
        r[3]["keys"].as_sequence().map(|k| k.len()),
        Some(1),
        "list: {:?}",
        r[3]
    );
    assert_eq!(r[3]["keys"][0].as_str(), Some(KEY));
    let buckets: Vec<&str> = r[4]["buckets"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        buckets,
        [BUCKET],
        "ListBuckets answers the key's buckets only"
    );
    assert_eq!(
        error_of(&r[5]),
        ("AccessDenied".into(), 403),
        "get, bucket not granted"
    );
    assert_eq!(error_of(&r[6]).1, 403, "head, bucket not granted");
    assert_eq!(
        error_of(&r[9]),
        ("RequestTimeTooSkewed".into(), 403),
        "20 minutes in the past"
    );

    // The presigned URL, with curl: byte-exact; the 1-second one once expired: S3's answer.
    let long = r[7]["url"].as_str().unwrap();
    assert!(long.contains("X-Amz-Signature="), "SigV4 presigned: {long}");
    let (status, body) = curl(long);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(sha256_hex(&body), want, "presigned GET");
    std::thread::sleep(Duration::from_secs(3));
    let (status, body) = curl(r[8]["url"].as_str().unwrap());
    assert_eq!((status, xml_code(&body).as_str()), (403, "AccessDenied"));
    assert!(String::from_utf8_lossy(&body).contains("Request has expired"));
    // The aws CLI presigns with SigV2 unless told to use SigV4 (s3.signature_version).
    let aws_config = dir.path().join("aws-config");
    std::fs::write(
        &aws_config,
        "[default]\ns3 =\n    signature_version = s3v4\n",
    )
    .unwrap();
    let out = Command::new("timeout")
        .args([
            CLIENT_DEADLINE_SECS,
            "aws",
            "--endpoint-url",
            &edge,
            "s3",
            "presign",
        ])
        .arg(format!("s3://{BUCKET}/{KEY}"))
        .env("AWS_CONFIG_FILE", &aws_config)
        .env("AWS_ACCESS_KEY_ID", READER.0)
        .env("AWS_SECRET_ACCESS_KEY", READER.1)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .output()
        .unwrap();
    let cli_url = String::from_utf8(out.stdout).unwrap();
    assert!(
        cli_url.contains("X-Amz-Signature="),
        "aws s3 presign: {cli_url} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, body) = curl(cli_url.trim());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(sha256_hex(&body), want, "aws s3 presign");
    // A presigned URL whose signature was tampered with.
    let (status, body) = curl(&long.replace("X-Amz-Expires=3600", "X-Amz-Expires=3601"));
    assert_eq!(
        (status, xml_code(&body).as_str()),
        (403, "SignatureDoesNotMatch")
    );

    // Anonymous curl.
    let (status, body) = curl(&orca.object_url(BUCKET, KEY));
    assert_eq!(
        (status, xml_code(&body).as_str()),
        (403, "AccessDenied"),
        "anonymous"
    );

    // boto3 with a wrong secret and with an unknown key.
    let get = format!(r#"[{{"op":"get","bucket":"{BUCKET}","key":"{KEY}"}}]"#);
    let r = boto3(&edge, (READER.0, "not-the-secret"), "path", &get);
    assert_eq!(error_of(&r[0]), ("SignatureDoesNotMatch".into(), 403));
    let r = boto3(&edge, ("AKIAORCANOSUCHKEY001", READER.1), "path", &get);
    assert_eq!(error_of(&r[0]), ("InvalidAccessKeyId".into(), 403));

    // boto3, virtual-hosted (Host: authdata.orca.test:PORT), signed over that host.
    let virtual_edge = format!("http://orca.test:{}", orca.ports().edge);
    let ops = format!(
        r#"[{{"op":"get","bucket":"{BUCKET}","key":"{KEY}","range":"bytes=0-99"}},
            {{"op":"head","bucket":"{BUCKET}","key":"{KEY}"}},
            {{"op":"list","bucket":"{BUCKET}","prefix":"dir/"}},
            {{"op":"get","bucket":"{OTHER}","key":"small.txt"}},
            {{"op":"presign","bucket":"{BUCKET}","key":"{KEY}","expires":3600}}]"#
    );
    let r = boto3(&virtual_edge, READER, "virtual", &ops);
    assert_eq!(
        r[0]["sha256"].as_str(),
        Some(sha256_hex(&data[..100]).as_str()),
        "virtual get: {:?}",
        r[0]
    );
    assert_eq!(
        r[1]["len"].as_u64(),
        Some(data.len() as u64),
        "virtual head: {:?}",
        r[1]
    );
    assert_eq!(
        r[2]["keys"][0].as_str(),
        Some(KEY),
        "virtual list: {:?}",
        r[2]
    );
    assert_eq!(error_of(&r[3]), ("AccessDenied".into(), 403));
    // A virtual-hosted presigned URL, signed over Host: authdata.orca.test:PORT.
    let url = r[4]["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("http://{BUCKET}.orca.test:")),
        "{url}"
    );
    let resolve = format!("{BUCKET}.orca.test:{}:127.0.0.1", orca.ports().edge);
    let (status, body) = curl_with(url, &["--resolve", &resolve]);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(sha256_hex(&body), want, "virtual-hosted presigned GET");

    // The other key, its secret from the environment: its own bucket only.
    let ops = format!(
        r#"[{{"op":"get","bucket":"{OTHER}","key":"small.txt"}},{{"op":"get","bucket":"{BUCKET}","key":"{KEY}"}}]"#
    );
    let r = boto3(&edge, OTHER_KEY, "path", &ops);
    assert_eq!(
        r[0]["sha256"].as_str(),
        Some(sha256_hex(b"other bucket").as_str())
    );
    assert_eq!(error_of(&r[1]), ("AccessDenied".into(), 403));

    // The ops port needs no signature; refusals are counted by code.
    let metrics = orca.metrics();
    for code in [
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "AccessDenied",
        "RequestTimeTooSkewed",
    ] {
        assert!(
            metric_value(
                &metrics,
                &format!("orca_edge_auth_rejections_total{{code=\"{code}\"}}")
            ) >= 1.0,
            "{code} not counted"
        );
    }
    // No secret and no client signature in the log (it runs at debug level).
    let log = orca.log();
    for secret in [READER.1, OTHER_KEY.1] {
        assert!(!log.contains(secret), "a secret is in the log");
    }
    let signature = long.split("X-Amz-Signature=").nth(1).unwrap();
    assert!(!log.contains(signature), "a client signature is in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_credentials_file_and_a_bad_file_keeps_the_keys() {
    let moto = Moto::start();
    create_bucket(&moto.endpoint(), BUCKET).await;
    put_object(&moto.endpoint(), BUCKET, "k.txt", b"hello".to_vec()).await;
    let dir = tempfile::tempdir().unwrap();
    let orca = start_orca(
        &moto,
        dir.path(),
        &keys_yaml(&[(READER.0, &inline(READER.1), "[authdata]")]),
    );
    // /readyz waits for the SIGHUP handler: before it, SIGHUP would end the process.
    let ready = poll_until(Duration::from_secs(20), || {
        (orca.ops_get("/readyz").0 == 200).then_some(())
    });
    assert!(ready.is_some(), "not ready: {:?}", orca.ops_get("/readyz"));
    let edge = orca.edge_url();
    let get = r#"[{"op":"get","bucket":"authdata","key":"k.txt"}]"#;
    let hello = sha256_hex(b"hello");
    assert_eq!(
        boto3(&edge, READER, "path", get)[0]["sha256"].as_str(),
        Some(hello.as_str())
    );
    assert_eq!(
        error_of(&boto3(&edge, NEWCOMER, "path", get)[0]).0,
        "InvalidAccessKeyId"
    );

    // The reader removed, a newcomer added.
    let file = dir.path().join("edge-keys.yaml");
    std::fs::write(
        &file,
        keys_yaml(&[(NEWCOMER.0, &inline(NEWCOMER.1), "[\"*\"]")]),
    )
    .unwrap();
    orca.signal("HUP");
    let ok = orca
        .wait_metric_at_least(
            "orca_edge_auth_reloads_total{result=\"ok\"}",
            1.0,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(ok, 1.0, "reload not counted\n{}", orca.log_tail());
    assert_eq!(
        boto3(&edge, NEWCOMER, "path", get)[0]["sha256"].as_str(),
        Some(hello.as_str())
    );
    assert_eq!(
        error_of(&boto3(&edge, READER, "path", get)[0]).0,
        "InvalidAccessKeyId"
    );

    // A broken file: the reload fails, says why, and the newcomer still reads.
    std::fs::write(
        &file,
        "keys:\n  - access_key_id: AKIAORCABROKEN000001\n    secret_access_key: [oops\n",
    )
    .unwrap();
    orca.signal("HUP");
    let errors = orca
        .wait_metric_at_least(
            "orca_edge_auth_reloads_total{result=\"error\"}",
            1.0,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        errors,
        1.0,
        "failed reload not counted\n{}",
        orca.log_tail()
    );
    let mut orca = orca;
    assert!(orca.try_wait().is_none(), "SIGHUP must not end the process");
    assert_eq!(
        boto3(&edge, NEWCOMER, "path", get)[0]["sha256"].as_str(),
        Some(hello.as_str())
    );
    let log = orca.log();
    assert!(
        log.contains("edge credentials not reloaded"),
        "{}",
        orca.log_tail()
    );
    assert!(
        log.contains("edge-keys.yaml line"),
        "the reason names the file and line: {}",
        orca.log_tail()
    );
    for secret in [READER.1, NEWCOMER.1] {
        assert!(!log.contains(secret), "a secret is in the log");
    }
}

/// The migration step: keys deployed, `required: false`. Signed requests are verified and
/// limited to their key's buckets; unsigned ones still pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_required_false_signatures_are_checked_and_anonymous_reads_pass() {
    let moto = Moto::start();
    create_bucket(&moto.endpoint(), BUCKET).await;
    create_bucket(&moto.endpoint(), OTHER).await;
    put_object(&moto.endpoint(), BUCKET, "k.txt", b"hello".to_vec()).await;
    put_object(
        &moto.endpoint(),
        OTHER,
        "small.txt",
        b"other bucket".to_vec(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let orca = start_orca_with(
        &moto,
        dir.path(),
        &keys_yaml(&[(READER.0, &inline(READER.1), "[authdata]")]),
        false,
    );
    let (status, body) = curl(&orca.object_url(OTHER, "small.txt"));
    assert_eq!(
        (status, body.as_slice()),
        (200, b"other bucket".as_slice()),
        "anonymous"
    );
    let ops = r#"[{"op":"get","bucket":"authdata","key":"k.txt"},{"op":"get","bucket":"otherdata","key":"small.txt"}]"#;
    let r = boto3(&orca.edge_url(), READER, "path", ops);
    assert_eq!(r[0]["sha256"].as_str(), Some(sha256_hex(b"hello").as_str()));
    assert_eq!(
        error_of(&r[1]),
        ("AccessDenied".into(), 403),
        "bucket not granted"
    );
    let r = boto3(&orca.edge_url(), (READER.0, "not-the-secret"), "path", ops);
    assert_eq!(error_of(&r[0]), ("SignatureDoesNotMatch".into(), 403));
    // A placeholder key, as clients used before: refused once keys are deployed.
    let r = boto3(&orca.edge_url(), ("test", "test"), "path", ops);
    assert_eq!(error_of(&r[0]), ("InvalidAccessKeyId".into(), 403));
}

/// `orca -t` with `edge:` replaced by `edge_yaml`: (success, stderr).
fn check_config(dir: &Path, edge_yaml: &str) -> (bool, String) {
    let path = dir.join("orca.yaml");
    std::fs::write(
        &path,
        format!(
            "origin:\n  id: test\n  s3:\n    endpoint: http://127.0.0.1:9\n    path_style: true\n\
             cachestore:\n  fs:\n    root: {}\n{edge_yaml}",
            dir.join("cache").display()
        ),
    )
    .unwrap();
    let out = Command::new(orca_bin())
        .args(["-t", "--config"])
        .arg(&path)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env_remove("ORCA_LOG_LEVEL")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_credentials_file_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.yaml");
    let edge = format!(
        "edge:\n  auth:\n    required: true\n    credentials_file: {}\n",
        keys.display()
    );

    let (ok, err) = check_config(dir.path(), &edge);
    assert!(
        !ok && err.contains("edge.auth.credentials_file") && err.contains("keys.yaml"),
        "missing file: {err}"
    );

    std::fs::write(
        &keys,
        "keys:\n  - access_key_id: AK1\n    secret_access_key: s\n    buckets: [a\n",
    )
    .unwrap();
    let (ok, err) = check_config(dir.path(), &edge);
    assert!(!ok && err.contains("keys.yaml line"), "malformed: {err}");

    std::fs::write(&keys, "keys:\n  - access_key_id: AK1\n    secret_access_key_env: ORCA_UNSET_FOR_TEST\n    buckets: [a]\n").unwrap();
    let (ok, err) = check_config(dir.path(), &edge);
    assert!(
        !ok && err.contains("keys[0] \"AK1\" (line 2)") && err.contains("ORCA_UNSET_FOR_TEST"),
        "env secret: {err}"
    );

    let (ok, err) = check_config(dir.path(), "edge:\n  auth:\n    required: true\n");
    assert!(
        !ok && err.contains("edge.auth.required"),
        "required without a file: {err}"
    );

    std::fs::write(
        &keys,
        "keys:\n  - access_key_id: AK1\n    secret_access_key: s\n    buckets: [a]\n",
    )
    .unwrap();
    let (ok, err) = check_config(dir.path(), &edge);
    assert!(ok, "a good file: {err}");
}
