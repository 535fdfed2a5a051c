//! Orca against origins that check its signatures: moto with authentication turned on, and
//! `s3s-fs`, a second S3 implementation (installed by hack/test.sh). A wrong signature from Orca
//! fails loudly here; a wrong secret is a 502 OriginAuthFailed and turns `/readyz` false.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::process::Command;

const MIB: usize = 1 << 20;

/// Runs a Python snippet (boto3), at most [`CLIENT_DEADLINE`], and returns its stdout; panics
/// with stderr on failure.
fn python(script: &str, args: &[&str]) -> String {
    run_python(script, args, "")
}

/// Seeds `bucket` on an S3 endpoint with signed requests; prints nothing.
const SEED: &str = r#"
import sys, boto3
from botocore.config import Config
endpoint, ak, sk, bucket, path = sys.argv[1:6]
# Plain signed uploads: the servers here verify SigV4 but not boto3's trailing checksums.
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id=ak, aws_secret_access_key=sk,
                  config=Config(request_checksum_calculation="when_required"))
s3.create_bucket(Bucket=bucket)
data = open(path, "rb").read()
# No '+' in these keys: moto's signature check mishandles it even for boto3 (its bug, not
# Orca's); keys with '+' are read through Orca in tests/core.rs and tests/s3_surface.rs.
for key in ["big.bin", "dir/a b~c.bin", "dir/sub/x.txt", "dir/sub/y.txt", "other.txt"]:
    s3.put_object(Bucket=bucket, Key=key, Body=data if key == "big.bin" else key.encode())
"#;

/// Lists a bucket with boto3 (v2 with a delimiter, then v1), as JSON.
const LIST: &str = r#"
import sys, json, boto3
endpoint, ak, sk, bucket, shape = sys.argv[1:6]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id=ak, aws_secret_access_key=sk)
# moto's signature check refuses any query value with a '/', even boto3's own: "plain" lists
# without a prefix or delimiter there.
kw = {"Prefix": "dir/", "Delimiter": "/"} if shape == "full" else {}
v2 = s3.list_objects_v2(Bucket=bucket, **kw)
v1 = s3.list_objects(Bucket=bucket)
out = {
    "v2_keys": [(o["Key"], o["Size"], o.get("ETag")) for o in v2.get("Contents", [])],
    "v2_prefixes": [p["Prefix"] for p in v2.get("CommonPrefixes", [])],
    "v1_keys": [(o["Key"], o["Size"]) for o in v1.get("Contents", [])],
}
print(json.dumps(out, sort_keys=True))
"#;

fn write_data(dir: &std::path::Path, data: &[u8]) -> String {
    let path = dir.join("big.bin");
    std::fs::write(&path, data).unwrap();
    path.to_string_lossy().to_string()
}

/// Reads through Orca: the big object whole and by range, HEAD, a missing key, and a listing
/// compared with the same listing done against the origin directly.
async fn reads_are_exact(
    orca: &OrcaProcess,
    origin: &str,
    (ak, sk): (&str, &str),
    list_shape: &str,
    data: &[u8],
) {
    let url = orca.object_url("sig", "big.bin");
    let r = http_get(&url, None).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sha256_hex(&r.body), sha256_hex(data));
    let r = http_get(&url, Some("bytes=1048575-2097152")).await.unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &data[1048575..=2097152]);
    let h = http_head(&url).await.unwrap();
    assert_eq!(h.status, 200);
    assert_eq!(
        h.header("content-length"),
        Some(data.len().to_string().as_str())
    );
    let r = http_get(&orca.object_url("sig", "dir/a b~c.bin"), None)
        .await
        .unwrap();
    assert_eq!(r.body, b"dir/a b~c.bin");
    let r = http_get(&orca.object_url("sig", "missing"), None)
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert!(r.text().contains("NoSuchKey"), "{}", r.text());
    let through = python(LIST, &[&orca.edge_url(), "x", "y", "sig", list_shape]);
    let direct = python(LIST, &[origin, ak, sk, "sig", list_shape]);
    assert_eq!(through, direct);
    assert!(through.contains("dir/sub/"), "{through}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_with_signature_checking_accepts_orca_and_refuses_a_wrong_secret() {
    // The first four actions are unauthenticated: enough to create a user with a key.
    let moto = Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "4")]);
    let creds = python(
        r#"
import sys, json, boto3
iam = boto3.client("iam", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="x", aws_secret_access_key="x")
iam.create_user(UserName="orca")
iam.put_user_policy(UserName="orca", PolicyName="all", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
key = iam.create_access_key(UserName="orca")["AccessKey"]
print(key["AccessKeyId"], key["SecretAccessKey"])
"#,
        &[&moto.endpoint()],
    );
    let (ak, sk) = creds.trim().split_once(' ').unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = deterministic_bytes(77, 3 * MIB + 17);
    python(
        SEED,
        &[
            &moto.endpoint(),
            ak,
            sk,
            "sig",
            &write_data(dir.path(), &data),
        ],
    );
    // Authentication is on now: an unsigned or wrongly signed request is refused.
    let refused = python(
        r#"
import sys, boto3, botocore
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id=sys.argv[2], aws_secret_access_key="wrong")
try:
    s3.head_object(Bucket="sig", Key="other.txt")
    print("accepted")
except botocore.exceptions.ClientError as e:
    print(e.response["Error"]["Code"])
"#,
        &[&moto.endpoint(), ak],
    );
    assert_eq!(refused.trim(), "403", "moto does not check signatures");

    let orca = OrcaProcess::start(
        OrcaConfig::new(&moto.endpoint())
            .env("AWS_ACCESS_KEY_ID", ak)
            .env("AWS_SECRET_ACCESS_KEY", sk),
    );
    reads_are_exact(&orca, &moto.endpoint(), (ak, sk), "plain", &data).await;

    let wrong = OrcaProcess::start(
        OrcaConfig::new(&moto.endpoint())
            .env("AWS_ACCESS_KEY_ID", ak)
            .env("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
    );
    assert_eq!(wrong.ops_get("/readyz").0, 200);
    for _ in 0..3 {
        let r = http_get(&wrong.object_url("sig", "big.bin"), None)
            .await
            .unwrap();
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(
            r.text().contains("<Code>OriginAuthFailed</Code>"),
            "{}",
            r.text()
        );
    }
    let (status, body) = wrong.ops_get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("credentials"), "{body}");
}

/// `s3s-fs` on a free port, stopped by pid.
struct S3sFs {
    _child: ChildGuard,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl S3sFs {
    fn start(ak: &str, sk: &str) -> S3sFs {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let log_path = dir.path().join("s3s.log");
        let program = std::env::var("S3S_FS").unwrap_or_else(|_| "s3s-fs".into());
        let (child, port) =
            spawn_on_free_port("s3s-fs", &log_path, "hack/test.sh installs it", |port| {
                let mut cmd = Command::new(&program);
                cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--access-key", ak, "--secret-key", sk])
                    .arg(&root);
                cmd
            });
        S3sFs {
            _child: child,
            endpoint: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3s_fs_as_the_origin_checks_orcas_signatures() {
    let (ak, sk) = ("orcakey", "orcasecret");
    let origin = S3sFs::start(ak, sk);
    let dir = tempfile::tempdir().unwrap();
    let data = deterministic_bytes(78, 4 * MIB + 3);
    python(
        SEED,
        &[
            &origin.endpoint,
            ak,
            sk,
            "sig",
            &write_data(dir.path(), &data),
        ],
    );
    let orca = OrcaProcess::start(
        OrcaConfig::new(&origin.endpoint)
            .env("AWS_ACCESS_KEY_ID", ak)
            .env("AWS_SECRET_ACCESS_KEY", sk),
    );
    reads_are_exact(&orca, &origin.endpoint, (ak, sk), "full", &data).await;
    // Warm: the whole object again, from the cache store.
    let gets = orca.metric_value("orca_origin_requests_total{op=\"get\"}");
    let r = http_get(&orca.object_url("sig", "big.bin"), None)
        .await
        .unwrap();
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    assert_eq!(
        orca.metric_value("orca_origin_requests_total{op=\"get\"}"),
        gets
    );

    let wrong = OrcaProcess::start(
        OrcaConfig::new(&origin.endpoint)
            .env("AWS_ACCESS_KEY_ID", ak)
            .env("AWS_SECRET_ACCESS_KEY", "wrong"),
    );
    let r = http_get(&wrong.object_url("sig", "big.bin"), None)
        .await
        .unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("OriginAuthFailed"), "{}", r.text());
}
