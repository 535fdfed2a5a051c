//! The clients people read S3 with, through Orca: the aws CLI, boto3 and curl, each byte-exact
//! by sha256, cold then warm (installed by hack/install-test-deps.sh).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::process::Command;

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_boto3_and_curl_read_byte_exact() {
    let moto = Moto::start();
    create_bucket(&moto.endpoint(), "clients").await;
    let proxy = FaultProxy::start(&moto.endpoint());
    let orca = OrcaProcess::start(OrcaConfig::new(&proxy.endpoint()));
    // Multi-chunk (1 MiB chunks) and larger than the aws CLI's 8 MiB multipart threshold, so
    // the CLI reads it with parallel ranged GETs.
    let data = deterministic_bytes(42, 10 * MIB + 12345);
    put_object(
        &moto.endpoint(),
        "clients",
        "dir/data file+1.bin",
        data.clone(),
    )
    .await;
    let want = sha256_hex(&data);
    let dir = tempfile::tempdir().unwrap();
    let edge = orca.edge_url();

    for pass in ["cold", "warm"] {
        let target = dir.path().join(format!("aws-{pass}.bin"));
        run_client(
            Command::new("aws")
                .args(["--endpoint-url", &edge, "s3", "cp"])
                .arg("s3://clients/dir/data file+1.bin")
                .arg(&target)
                .arg("--only-show-errors"),
        );
        assert_eq!(
            sha256_hex(&std::fs::read(&target).unwrap()),
            want,
            "aws {pass}"
        );
    }
    let origin_gets = proxy.counts().gets_with_range;
    assert_eq!(origin_gets, 11, "each chunk once, whatever the client");

    let script = format!(
        "import boto3, hashlib, sys\n\
         s3 = boto3.client('s3', endpoint_url='{edge}')\n\
         body = s3.get_object(Bucket='clients', Key='dir/data file+1.bin')['Body'].read()\n\
         part = s3.get_object(Bucket='clients', Key='dir/data file+1.bin', Range='bytes=1048570-1048580')['Body'].read()\n\
         sys.stdout.write(hashlib.sha256(body).hexdigest() + ' ' + part.hex())\n"
    );
    let out =
        String::from_utf8(run_client(Command::new("python3").arg("-c").arg(&script))).unwrap();
    let (whole, part) = out.split_once(' ').unwrap();
    assert_eq!(whole, want, "boto3 get_object");
    assert_eq!(
        part,
        hex_of(&data[1048570..=1048580]),
        "boto3 ranged get_object"
    );

    let url = orca.object_url("clients", "dir/data file+1.bin");
    let out = run_client(Command::new("curl").args(["-sS", "--fail", "-r", "0-99", &url]));
    assert_eq!(out, &data[..100]);
    let out = run_client(Command::new("curl").args(["-sS", "--fail", "-r", "-7", &url]));
    assert_eq!(out, &data[data.len() - 7..]);
    // Everything after the aws CLI's cold pass came from the cache store.
    assert_eq!(proxy.counts().gets_with_range, origin_gets);
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
