//! TLS on the edge and internal ports, with the clients people use: curl `--cacert`, the aws
//! CLI `--ca-bundle`, boto3 `verify=`; a certificate replaced on disk and reloaded on `SIGHUP`
//! while a download is in flight; a fleet whose peers fill over TLS checked against
//! `cluster.peer_ca`, and a peer whose certificate another CA signed, refused.
//!
//! The certificates are made by the test with the `openssl` command line tool.

#![allow(clippy::unwrap_used)]

mod common;

use ::orca::chunk::ChunkId;
use ::orca::cluster::rendezvous;
use common::orca::yaml_str;
use common::pki::Ca;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const MIB: usize = 1 << 20;

fn tls_yaml(key: &str, cert: &Path, key_file: &Path) -> String {
    format!(
        "  {key}:\n    cert: {}\n    key: {}\n",
        yaml_str(&cert.to_string_lossy()),
        yaml_str(&key_file.to_string_lossy())
    )
}

/// The `listen` section for `ports` on 127.0.0.1, with `tls` lines added under it.
fn listen_yaml(ports: OrcaPorts, tls: &str) -> String {
    format!(
        "listen:\n  edge: \"127.0.0.1:{}\"\n  internal: \"127.0.0.1:{}\"\n  ops: \"127.0.0.1:{}\"\n{tls}",
        ports.edge, ports.internal, ports.ops
    )
}

/// The serial number (hex, uppercase) and subject of the certificate the server at
/// `127.0.0.1:port` presents to a new connection, as `openssl s_client` sees it, verified
/// against `ca`.
fn served_certificate(port: u16, ca: &Path) -> (String, String) {
    let out = run_bounded(
        Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .arg("-CAfile")
            .arg(ca)
            .args(["-verify_return_error", "-servername", "localhost"]),
        Some(b""),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("Verify return code: 0 (ok)"),
        "s_client to {port}: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Feed the presented certificate to `openssl x509`.
    let begin = text.find("-----BEGIN CERTIFICATE-----").unwrap();
    let end = text.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    let out = run_bounded(
        Command::new("openssl").args(["x509", "-noout", "-serial", "-subject"]),
        Some(&text.as_bytes()[begin..end]),
        Duration::from_secs(30),
    );
    let info = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {info}"))
            .trim()
            .to_string()
    };
    (field("serial="), field("subject="))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_over_tls_serves_curl_the_aws_cli_and_boto3_byte_exact() {
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "orca-test-ca");
    let (cert, key) = ca.leaf("orca-edge", "1001");
    let moto = Moto::start();
    create_bucket(&moto.endpoint(), "tls").await;
    let proxy = FaultProxy::start(&moto.endpoint());
    let ports = OrcaPorts::free();
    let orca = OrcaProcess::start(
        OrcaConfig::new(&proxy.endpoint())
            .ports(ports)
            .extra_yaml(&listen_yaml(ports, &tls_yaml("edge_tls", &cert, &key))),
    );
    // Larger than the aws CLI's 8 MiB multipart threshold: it reads with parallel ranged GETs.
    let data = deterministic_bytes(14, 10 * MIB + 777);
    put_object(&moto.endpoint(), "tls", "dir/obj.bin", data.clone()).await;
    let want = sha256_hex(&data);
    let edge = format!("https://127.0.0.1:{}", ports.edge);
    let url = format!("{edge}/tls/dir/obj.bin");
    let ca_path = ca.cert();
    let ca_arg = ca_path.to_str().unwrap();

    // curl: the whole object, then two ranges on one kept-alive connection.
    let out = run_client(Command::new("curl").args(["-sS", "--fail", "--cacert", ca_arg, &url]));
    assert_eq!(sha256_hex(&out), want, "curl --cacert");
    let range = Command::new("curl")
        .args(["-sS", "-v", "--fail", "--cacert", ca_arg, "-r", "5-9", &url])
        .args(["--next", "-sS", "-v", "--fail", "--cacert", ca_arg])
        .args(["-r", "1048570-1048580", &url])
        .output()
        .unwrap();
    assert!(range.status.success());
    let mut expected = data[5..=9].to_vec();
    expected.extend_from_slice(&data[1048570..=1048580]);
    assert_eq!(range.stdout, expected, "two ranges over one connection");
    let verbose = String::from_utf8_lossy(&range.stderr);
    assert!(
        verbose.contains("Re-using existing connection") || verbose.contains("Reusing existing"),
        "the second request did not reuse the TLS connection:\n{verbose}"
    );
    // The certificate is checked: without the CA curl refuses it, and plain HTTP gets nothing.
    let refused = run_bounded(
        Command::new("curl").args(["-sS", "--fail", &url]),
        None,
        CLIENT_DEADLINE,
    );
    assert!(!refused.status.success(), "curl trusted an unknown CA");
    let plain = run_bounded(
        Command::new("curl").args([
            "-sS",
            "--fail",
            "--max-time",
            "10",
            &format!("http://127.0.0.1:{}/tls/dir/obj.bin", ports.edge),
        ]),
        None,
        CLIENT_DEADLINE,
    );
    assert!(
        !plain.status.success(),
        "plain HTTP was served on the TLS port"
    );

    // The aws CLI with --ca-bundle.
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("aws.bin");
    run_client(
        Command::new("aws")
            .args(["--endpoint-url", &edge, "--ca-bundle", ca_arg, "s3", "cp"])
            .arg("s3://tls/dir/obj.bin")
            .arg(&target)
            .arg("--only-show-errors"),
    );
    assert_eq!(
        sha256_hex(&std::fs::read(&target).unwrap()),
        want,
        "aws --ca-bundle"
    );

    // boto3 with verify=.
    let script = format!(
        "import boto3, hashlib, sys\n\
         s3 = boto3.client('s3', endpoint_url='{edge}', verify='{ca_arg}')\n\
         body = s3.get_object(Bucket='tls', Key='dir/obj.bin')['Body'].read()\n\
         sys.stdout.write(hashlib.sha256(body).hexdigest())\n"
    );
    let out =
        String::from_utf8(run_client(Command::new("python3").arg("-c").arg(&script))).unwrap();
    assert_eq!(out, want, "boto3 verify=");
    let (serial, subject) = served_certificate(ports.edge, &ca.cert());
    assert_eq!(
        (serial.as_str(), subject.as_str()),
        ("1001", "CN = orca-edge")
    );
    drop(orca);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_replaced_and_reloaded_on_sighup_leaves_the_download_in_flight_whole() {
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "orca-test-ca");
    let (first_cert, first_key) = ca.leaf("orca-first", "A001");
    let (second_cert, second_key) = ca.leaf("orca-second", "B002");
    // The files Orca reads, replaced in place (as a secret mount or cert-manager does).
    let cert = pki.path().join("tls.crt");
    let key = pki.path().join("tls.key");
    std::fs::copy(&first_cert, &cert).unwrap();
    std::fs::copy(&first_key, &key).unwrap();

    let moto = Moto::start();
    create_bucket(&moto.endpoint(), "tls").await;
    let proxy = FaultProxy::start(&moto.endpoint());
    let ports = OrcaPorts::free();
    let orca = OrcaProcess::start(
        OrcaConfig::new(&proxy.endpoint())
            .ports(ports)
            .extra_yaml(&listen_yaml(ports, &tls_yaml("edge_tls", &cert, &key))),
    );
    // The reloader has installed its handler once it says so.
    let installed = poll_until(Duration::from_secs(30), || {
        orca.log()
            .contains("SIGHUP reloads the TLS certificates")
            .then_some(())
    });
    assert!(installed.is_some(), "no reloader:\n{}", orca.log_tail());
    assert_eq!(
        served_certificate(ports.edge, &ca.cert()),
        ("A001".to_string(), "CN = orca-first".to_string())
    );

    let data = deterministic_bytes(15, 16 * MIB);
    put_object(&moto.endpoint(), "tls", "big", data.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("big.bin");
    // A slow reader: 16 MiB at 2 MiB/s.
    let mut download = ChildGuard::new(
        "curl",
        Command::new("curl")
            .args(["-sS", "--fail", "--limit-rate", "2M", "--cacert"])
            .arg(ca.cert())
            .arg("-o")
            .arg(&target)
            .arg(format!("https://127.0.0.1:{}/tls/big", ports.edge))
            .spawn()
            .unwrap(),
    );
    let started = poll_until(Duration::from_secs(30), || {
        let len = std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
        (len > 0).then_some(len)
    });
    assert!(started.is_some(), "the download did not start");

    // Replace both files and reload.
    std::fs::copy(&second_cert, &cert).unwrap();
    std::fs::copy(&second_key, &key).unwrap();
    orca.signal("HUP");
    let reloaded = poll_until(Duration::from_secs(30), || {
        orca.log()
            .contains("TLS certificate reloaded")
            .then_some(())
    });
    assert!(reloaded.is_some(), "no reload:\n{}", orca.log_tail());
    let at_reload = std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
    // New connections see the new certificate while the old one is still being read.
    assert_eq!(
        served_certificate(ports.edge, &ca.cert()),
        ("B002".to_string(), "CN = orca-second".to_string())
    );
    assert_eq!(
        orca.metric_value("orca_tls_reloads_total{listener=\"edge\",result=\"ok\"}"),
        1.0
    );

    // A broken file is refused on reload; the certificate in force stays.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    orca.signal("HUP");
    let refused = poll_until(Duration::from_secs(30), || {
        orca.log()
            .contains("TLS certificate not reloaded")
            .then_some(())
    });
    assert!(refused.is_some(), "no refusal:\n{}", orca.log_tail());
    assert_eq!(
        orca.metric_value("orca_tls_reloads_total{listener=\"edge\",result=\"error\"}"),
        1.0
    );
    assert_eq!(served_certificate(ports.edge, &ca.cert()).0, "B002");

    let status = download.wait_timeout(Duration::from_secs(120));
    assert!(
        status.is_some_and(|s| s.success()),
        "the download in flight failed: {status:?}"
    );
    assert!(
        at_reload < data.len() as u64,
        "the download had ended before the reload ({at_reload} bytes): nothing was shown"
    );
    assert_eq!(
        sha256_hex(&std::fs::read(&target).unwrap()),
        sha256_hex(&data),
        "the download that spanned the reload"
    );
}

#[test]
fn a_missing_or_mismatched_certificate_is_refused_at_load_naming_the_key() {
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "orca-test-ca");
    let (cert, key) = ca.leaf("one", "1");
    let (_other_cert, other_key) = ca.leaf("two", "2");
    let missing = pki.path().join("missing.pem");
    let cases = [
        (
            tls_yaml("edge_tls", &missing, &other_key),
            "listen.edge_tls.cert",
        ),
        (
            tls_yaml("internal_tls", &cert, &missing),
            "listen.internal_tls.key",
        ),
        // A key that is not the certificate's.
        (tls_yaml("edge_tls", &cert, &other_key), "listen.edge_tls:"),
        (
            "  edge_tls:\n    key: \"/x\"\n".to_string(),
            "listen.edge_tls.cert",
        ),
        // Peers speak HTTP/1.1.
        (
            tls_yaml("internal_tls", &cert, &key) + "    http2: true\n",
            "listen.internal_tls.http2",
        ),
    ];
    for (tls, named) in cases {
        let config = format!("{}origin:\n  id: t\n", listen_yaml(OrcaPorts::free(), &tls));
        let file = pki.path().join("orca.yaml");
        std::fs::write(&file, config).unwrap();
        let out = run_bounded(
            Command::new(orca_bin())
                .arg("-t")
                .arg("--config")
                .arg(&file),
            None,
            CLIENT_DEADLINE,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{tls}: {stderr}");
        assert!(
            stderr.contains(named),
            "{tls}: {named} not named in {stderr}"
        );
    }
    // A peer CA that is not a certificate.
    let config = format!(
        "origin:\n  id: t\ncluster:\n  peer_ca: {}\n",
        yaml_str(&other_key.to_string_lossy())
    );
    let file = pki.path().join("orca.yaml");
    std::fs::write(&file, config).unwrap();
    let out = run_bounded(
        Command::new(orca_bin())
            .arg("-t")
            .arg("--config")
            .arg(&file),
        None,
        CLIENT_DEADLINE,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cluster.peer_ca"), "{stderr}");
    // TLS on the internal port with peers needs the CA to dial them with; a server name
    // needs a CA; a server name must be a DNS name or an IP address.
    let ports = OrcaPorts::free();
    let clustered = format!(
        "{}origin:\n  id: t\ncluster:\n  peers: [\"127.0.0.1:{}\", \"127.0.0.1:1\"]\n  self: \"127.0.0.1:{}\"\n",
        listen_yaml(ports, &tls_yaml("internal_tls", &cert, &key)),
        ports.internal,
        ports.internal
    );
    let ca_line = format!("  peer_ca: {}\n", yaml_str(&ca.cert().to_string_lossy()));
    for (more, named) in [
        (String::new(), "cluster.peer_ca: required"),
        (
            "  peer_server_name: orca.test\n".to_string(),
            "cluster.peer_server_name",
        ),
        (
            format!("{ca_line}  peer_server_name: \"not a name\"\n"),
            "cluster.peer_server_name",
        ),
    ] {
        std::fs::write(&file, format!("{clustered}{more}")).unwrap();
        let out = run_bounded(
            Command::new(orca_bin())
                .arg("-t")
                .arg("--config")
                .arg(&file),
            None,
            CLIENT_DEADLINE,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{more}: {stderr}");
        assert!(stderr.contains(named), "{more}: {named} not in {stderr}");
    }
    // And with the CA the same file is valid.
    std::fs::write(&file, format!("{clustered}{ca_line}")).unwrap();
    let out = run_bounded(
        Command::new(orca_bin())
            .arg("-t")
            .arg("--config")
            .arg(&file)
            .current_dir(pki.path())
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test"),
        None,
        CLIENT_DEADLINE,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two replicas whose internal ports speak TLS. `rogue`: replica 1's certificate is signed by
/// another CA than the one `cluster.peer_ca` names.
struct TlsFleet {
    inner: Fleet,
    _pki: tempfile::TempDir,
}

impl std::ops::Deref for TlsFleet {
    type Target = Fleet;
    fn deref(&self) -> &Fleet {
        &self.inner
    }
}

impl TlsFleet {
    async fn start(rogue: bool) -> TlsFleet {
        Self::start_with(rogue, "IP:127.0.0.1,DNS:localhost", "").await
    }

    /// With the replicas' certificates for `san`, and `cluster:` lines `more` (e.g.
    /// `peer_server_name`).
    async fn start_with(rogue: bool, san: &str, more: &str) -> TlsFleet {
        let pki = tempfile::tempdir().unwrap();
        let ca = Ca::new(pki.path(), "fleet-ca");
        let other = Ca::new(pki.path(), "other-ca");
        let leaves = [
            ca.leaf_for("replica-0", "10", san),
            if rogue {
                other.leaf_for("replica-1", "11", san)
            } else {
                ca.leaf_for("replica-1", "11", san)
            },
        ];
        let inner = Fleet::start(2, &["fleet"], |m| {
            let (cert, key) = &leaves[m.index];
            m.config()
                // The fill client's trace line says whether a pooled connection was reused.
                .env("ORCA_LOG", "debug,orca::fill::client=trace")
                .extra_yaml(&listen_yaml(m.ports, &tls_yaml("internal_tls", cert, key)))
                .extra_yaml(&m.everyone(&format!(
                    "  peer_ca: {}\n{more}",
                    yaml_str(&ca.cert().to_string_lossy())
                )))
        })
        .await;
        TlsFleet { inner, _pki: pki }
    }

    /// The chunk indices of an `n`-chunk object (1 MiB chunks) whose coordinator is replica 1.
    fn coordinated_by_1(&self, key: &str, etag: &str, n: u64) -> Vec<u64> {
        let mut peers = self.addrs.clone();
        peers.sort();
        (0..n)
            .filter(|i| {
                let id = ChunkId::from_fields("test-origin", "fleet", key, etag, MIB as u64, *i);
                rendezvous::choose(&peers, &id) == Some(self.addrs[1].as_str())
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_fill_over_tls_verified_against_the_peer_ca() {
    let fleet = TlsFleet::start(false).await;
    let data = deterministic_bytes(16, 16 * MIB);
    let etag = put_object(&fleet.moto.endpoint(), "fleet", "obj", data.clone()).await;
    let etag = etag.trim_matches('"');
    let theirs = fleet.coordinated_by_1("obj", etag, 16);
    assert!(!theirs.is_empty(), "no chunk coordinated by replica 1");
    let got = http_get(&fleet.replicas[0].object_url("fleet", "obj"), None)
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(sha256_hex(&got.body), sha256_hex(&data));
    // Replica 1 fetched its chunks from the origin and handed them over TLS.
    assert_eq!(
        fleet.replicas[0].metric_value("orca_peer_fills_total{result=\"ok\"}"),
        theirs.len() as f64
    );
    assert_eq!(fleet.proxies[1].counts().gets_with_range, theirs.len());
    assert_eq!(fleet.proxies[0].counts().gets_with_range, 16 - theirs.len());
    // SIGHUP reloads the internal listener's certificate too.
    fleet.replicas[1].signal("HUP");
    fleet.replicas[1]
        .wait_metric_at_least(
            "orca_tls_reloads_total{listener=\"internal\",result=\"ok\"}",
            1.0,
            Duration::from_secs(30),
        )
        .await;
    // TLS connections to the peer are pooled: a second object's peer fills reuse them.
    let second = deterministic_bytes(20, 16 * MIB);
    put_object(&fleet.moto.endpoint(), "fleet", "second", second.clone()).await;
    let got = http_get(&fleet.replicas[0].object_url("fleet", "second"), None)
        .await
        .unwrap();
    assert_eq!(sha256_hex(&got.body), sha256_hex(&second));
    let reused = fleet.replicas[0]
        .log()
        .lines()
        .filter(|l| l.contains("fill answered; connection back to the pool"))
        .filter(|l| l.contains("reused=true"))
        .count();
    assert!(
        reused >= 1,
        "no peer fill reused a pooled TLS connection\n{}",
        fleet.replicas[0].log_tail()
    );
    // The internal port speaks only TLS.
    let plain = http_get(
        &format!("{}/internal/fill", fleet.replicas[1].internal_url()),
        None,
    )
    .await;
    assert!(
        plain
            .as_ref()
            .map_or(true, |r| r.status != 400 && r.status != 403),
        "plain HTTP answered on the TLS internal port: {:?}",
        plain.map(|r| r.status)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_certificate_the_peer_ca_did_not_sign_is_refused_and_filled_locally() {
    let fleet = TlsFleet::start(true).await;
    let data = deterministic_bytes(17, 16 * MIB);
    let etag = put_object(&fleet.moto.endpoint(), "fleet", "obj", data.clone()).await;
    let theirs = fleet.coordinated_by_1("obj", etag.trim_matches('"'), 16);
    assert!(!theirs.is_empty(), "no chunk coordinated by replica 1");
    // Through replica 0: the handshake with replica 1 fails, so replica 0 fills those chunks
    // itself; the client sees every byte.
    let got = http_get(&fleet.replicas[0].object_url("fleet", "obj"), None)
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(sha256_hex(&got.body), sha256_hex(&data));
    assert_eq!(fleet.proxies[0].counts().gets_with_range, 16);
    assert_eq!(
        fleet.proxies[1].counts().gets_with_range,
        0,
        "the rogue peer was asked for a fill"
    );
    assert!(fleet.replicas[0].metric_value("orca_peer_fills_total{result=\"error\"}") >= 1.0);
    assert_eq!(
        fleet.replicas[0].metric_value("orca_peer_fills_total{result=\"ok\"}"),
        0.0
    );
    let log = fleet.replicas[0].log();
    assert!(
        log.contains("peer unreachable; filling locally for a while"),
        "{}",
        fleet.replicas[0].log_tail()
    );
}

/// Starts `orca --config` with `yaml` (and the generated Pingora configuration) in `dir`, its
/// log in `dir/orca.log`, with `args` added.
fn spawn_orca(dir: &Path, config: &OrcaConfig, yaml: &str, args: &[&str]) -> ChildGuard {
    let config_path = dir.join("orca.yaml");
    let pingora_path = dir.join("pingora.yaml");
    std::fs::write(&config_path, yaml).unwrap();
    std::fs::write(&pingora_path, config.to_pingora_yaml(dir)).unwrap();
    let log = std::fs::File::create(dir.join("orca.log")).unwrap();
    let child = Command::new(orca_bin())
        .arg("--config")
        .arg(&config_path)
        .arg("-c")
        .arg(&pingora_path)
        .args(args)
        .current_dir(dir)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env_remove("ORCA_SELF")
        .env_remove("ORCA_CONFIG")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    ChildGuard::new("orca", child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_and_internal_ports_listen_on_their_own_interfaces() {
    // 127.0.0.2 and 127.0.0.3 are loopback addresses too (Linux routes all of 127/8 to lo).
    let moto = Moto::start();
    create_bucket(&moto.endpoint(), "ifaces").await;
    let dir = tempfile::tempdir().unwrap();
    let ports = OrcaPorts::free();
    let config = OrcaConfig::new(&moto.endpoint()).extra_yaml(&format!(
        "listen:\n  edge: \"127.0.0.1:{}\"\n  internal: \"127.0.0.3:{}\"\n  ops: \"127.0.0.2:{}\"\n",
        ports.edge, ports.internal, ports.ops
    ));
    let yaml = config.to_yaml(&ports, &dir.path().join("cache"));
    let mut orca = spawn_orca(dir.path(), &config, &yaml, &[]);
    let ops = std::net::SocketAddr::from(([127, 0, 0, 2], ports.ops));
    let ready = poll_until(Duration::from_secs(30), || {
        assert!(
            orca.try_wait().is_none(),
            "orca exited:\n{}",
            file_tail(&dir.path().join("orca.log"), 40)
        );
        blocking_get(ops, "/readyz", Duration::from_secs(2))
            .ok()
            .filter(|r| r.status == 200)
    });
    assert!(
        ready.is_some(),
        "not ready on {ops}:\n{}",
        file_tail(&dir.path().join("orca.log"), 40)
    );
    let connects = |ip: [u8; 4], port: u16| {
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from((ip, port)),
            Duration::from_secs(2),
        )
        .is_ok()
    };
    // Each port answers on its own address only.
    assert!(connects([127, 0, 0, 3], ports.internal));
    assert!(!connects([127, 0, 0, 1], ports.internal));
    assert!(!connects([127, 0, 0, 1], ports.ops));
    assert!(!connects([127, 0, 0, 2], ports.edge));
    let data = deterministic_bytes(18, 1000);
    put_object(&moto.endpoint(), "ifaces", "k", data.clone()).await;
    let got = http_get(&format!("http://127.0.0.1:{}/ifaces/k", ports.edge), None)
        .await
        .unwrap();
    assert_eq!(got.body, data);
    let metrics = blocking_get(ops, "/metrics", Duration::from_secs(10)).unwrap();
    assert_eq!(metrics.status, 200);
}

/// The lines of `log` that carry `message` and every one of `fields`.
fn lines_with(log: &str, message: &str, fields: &[&str]) -> usize {
    log.lines()
        .filter(|l| l.contains(message) && fields.iter().all(|f| l.contains(f)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_request_id_travels_with_peer_fills_into_the_coordinators_log() {
    let fleet = TlsFleet::start(false).await;
    let data = deterministic_bytes(19, 16 * MIB);
    let etag = put_object(&fleet.moto.endpoint(), "fleet", "traced", data.clone()).await;
    let theirs = fleet.coordinated_by_1("traced", etag.trim_matches('"'), 16);
    assert!(!theirs.is_empty(), "no chunk coordinated by replica 1");
    let got = http_get(&fleet.replicas[0].object_url("fleet", "traced"), None)
        .await
        .unwrap();
    assert_eq!(sha256_hex(&got.body), sha256_hex(&data));
    let id = got.header("x-amz-request-id").unwrap().to_string();
    let field = format!("request_id={id}");
    // The entry replica logged the request; the coordinator logged one fill and one origin GET
    // for each of its chunks under the same id; the entry replica its own fills.
    let followed = poll_until(Duration::from_secs(30), || {
        let entry = fleet.replicas[0].log();
        let coordinator = fleet.replicas[1].log();
        let counts = (
            lines_with(&entry, "edge request", &[&field]),
            lines_with(&coordinator, "fill request", &[&field, "local=false"]),
            lines_with(&coordinator, "origin chunk GET", &[&field]),
            lines_with(&entry, "fill request", &[&field, "local=true"]),
        );
        (counts == (1, theirs.len(), theirs.len(), 16 - theirs.len())).then_some(counts)
    });
    assert!(
        followed.is_some(),
        "request {id} not followed across the fleet ({} chunks on replica 1)\n--- replica 0 ---\n{}\n--- replica 1 ---\n{}",
        theirs.len(),
        fleet.replicas[0].log_tail(),
        fleet.replicas[1].log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_offers_http2_over_tls_when_asked() {
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "orca-test-ca");
    let (cert, key) = ca.leaf("orca-h2", "2002");
    let moto = Moto::start();
    create_bucket(&moto.endpoint(), "tls").await;
    let proxy = FaultProxy::start(&moto.endpoint());
    let data = deterministic_bytes(22, 3 * MIB + 5);
    put_object(&moto.endpoint(), "tls", "h2.bin", data.clone()).await;
    let ca_path = ca.cert();
    let ca_arg = ca_path.to_str().unwrap();
    // (http2 key, the HTTP version curl --http2 ends up with)
    for (http2, version) in [(true, "2"), (false, "1.1")] {
        let ports = OrcaPorts::free();
        let mut tls = tls_yaml("edge_tls", &cert, &key);
        tls.push_str(&format!("    http2: {http2}\n"));
        let orca = OrcaProcess::start(
            OrcaConfig::new(&proxy.endpoint())
                .ports(ports)
                .extra_yaml(&listen_yaml(ports, &tls)),
        );
        let url = format!("https://127.0.0.1:{}/tls/h2.bin", ports.edge);
        let dir = tempfile::tempdir().unwrap();
        let body = dir.path().join("body");
        let curl = |extra: &[&str], target: &Path| {
            let out = run_client(
                Command::new("curl")
                    .args([
                        "-sS",
                        "--http2",
                        "--cacert",
                        ca_arg,
                        "-w",
                        "%{http_version} %{http_code}",
                    ])
                    .args(extra)
                    .arg("-o")
                    .arg(target)
                    .arg(&url),
            );
            String::from_utf8(out).unwrap()
        };
        assert_eq!(curl(&[], &body), format!("{version} 200"), "http2: {http2}");
        assert_eq!(
            sha256_hex(&std::fs::read(&body).unwrap()),
            sha256_hex(&data)
        );
        assert_eq!(
            curl(&["-r", "1048570-1048580"], &body),
            format!("{version} 206")
        );
        assert_eq!(std::fs::read(&body).unwrap(), &data[1048570..=1048580]);
        // An S3 error over the same protocol.
        let missing = run_client(Command::new("curl").args([
            "-sS",
            "--http2",
            "--cacert",
            ca_arg,
            "-w",
            " %{http_version} %{http_code}",
            &format!("https://127.0.0.1:{}/tls/nope", ports.edge),
        ]));
        let missing = String::from_utf8(missing).unwrap();
        assert!(
            missing.contains("NoSuchKey") && missing.ends_with(&format!(" {version} 404")),
            "{missing}"
        );
        drop(orca);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_server_name_is_the_name_peer_certificates_are_checked_for() {
    // Certificates for a service name only (as with DNS discovery, where peers are pod IPs).
    let san = "DNS:orca-peers.test";
    for (server_name, accepted) in [("orca-peers.test", true), ("other.test", false)] {
        let fleet =
            TlsFleet::start_with(false, san, &format!("  peer_server_name: {server_name}\n")).await;
        let data = deterministic_bytes(23, 16 * MIB);
        let etag = put_object(&fleet.moto.endpoint(), "fleet", "named", data.clone()).await;
        let theirs = fleet.coordinated_by_1("named", etag.trim_matches('"'), 16);
        assert!(!theirs.is_empty(), "no chunk coordinated by replica 1");
        let got = http_get(&fleet.replicas[0].object_url("fleet", "named"), None)
            .await
            .unwrap();
        assert_eq!(sha256_hex(&got.body), sha256_hex(&data), "{server_name}");
        let peer_ok = fleet.replicas[0].metric_value("orca_peer_fills_total{result=\"ok\"}");
        if accepted {
            assert_eq!(peer_ok, theirs.len() as f64, "{server_name}");
            assert_eq!(fleet.proxies[1].counts().gets_with_range, theirs.len());
        } else {
            assert_eq!(peer_ok, 0.0, "a certificate for another name was accepted");
            assert_eq!(fleet.proxies[1].counts().gets_with_range, 0);
            assert_eq!(fleet.proxies[0].counts().gets_with_range, 16);
        }
    }
}
