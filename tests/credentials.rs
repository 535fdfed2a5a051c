//! The AWS default credential chain (`origin.s3` without keys), each source once, against moto
//! with signature checking on: moto accepting Orca's requests shows the signature is right, and
//! the `Credential=` of the `Authorization` header the test proxy saw shows which key signed
//! them. Sources: env; a profile file (`role_arn` + `source_profile` through moto's STS, and
//! `credential_process`); web identity through moto's STS (`AWS_ENDPOINT_URL_STS`); container
//! credentials and EC2 IMDSv2 from [`CredEndpoint`], a small endpoint here (no real server of
//! those protocols exists to run). Also: credentials about to expire are refreshed in the
//! background while requests keep signing with the current ones.
//!
//! Entra ID for the Azure origin (`credentials: entra`), each source once (a client secret,
//! workload identity, managed identity through IMDS), against Azurite's OAuth mode over HTTPS
//! with tokens from [`common::entra::TokenEndpoint`]; the refresh and the secrets check too.
//!
//! moto checks signatures once `INITIAL_NO_AUTH_ACTION_COUNT` actions were served; the set-up
//! below makes exactly [`setup_actions`] of them.

#![allow(clippy::unwrap_used)]

mod common;

use common::orca::yaml_str;
use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Objects seeded in bucket `creds`.
const OBJECTS: usize = 16;

/// Creates (unauthenticated: the first 5 actions) an IAM user with a key and a role, both
/// allowed everything; then, signed with the user's key, the bucket, its objects and
/// `sessions` AssumeRole sessions. Prints `ak sk role_arn`, then `ak sk token` per session.
const SETUP: &str = r#"
import sys, json, boto3
from botocore.config import Config
ep, n = sys.argv[1], int(sys.argv[2])
kw = dict(endpoint_url=ep, region_name="us-east-1")
iam = boto3.client("iam", aws_access_key_id="x", aws_secret_access_key="x", **kw)
allow = json.dumps({"Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
iam.create_user(UserName="orca")
iam.put_user_policy(UserName="orca", PolicyName="all", PolicyDocument=allow)
key = iam.create_access_key(UserName="orca")["AccessKey"]
trust = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
    "Principal": {"AWS": "*"}, "Action": ["sts:AssumeRole", "sts:AssumeRoleWithWebIdentity"]}]})
role = iam.create_role(RoleName="orca-reader", AssumeRolePolicyDocument=trust)["Role"]["Arn"]
iam.put_role_policy(RoleName="orca-reader", PolicyName="all", PolicyDocument=allow)
ak, sk = key["AccessKeyId"], key["SecretAccessKey"]
s3 = boto3.client("s3", aws_access_key_id=ak, aws_secret_access_key=sk,
                  config=Config(request_checksum_calculation="when_required"), **kw)
s3.create_bucket(Bucket="creds")
for i in range(16):
    s3.put_object(Bucket="creds", Key=f"obj-{i}", Body=(f"object {i} " * 1000).encode())
sts = boto3.client("sts", aws_access_key_id=ak, aws_secret_access_key=sk, **kw)
print(ak, sk, role)
for i in range(n):
    c = sts.assume_role(RoleArn=role, RoleSessionName=f"s{i}")["Credentials"]
    print(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"])
"#;

/// Asks moto with a wrong secret: it must refuse (signature checking is on).
const REFUSED: &str = r#"
import sys, boto3, botocore
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id=sys.argv[2], aws_secret_access_key="wrong")
try:
    s3.head_object(Bucket="creds", Key="obj-0")
    print("accepted")
except botocore.exceptions.ClientError as e:
    print(e.response["Error"]["Code"])
"#;

/// How many actions [`SETUP`] makes with `sessions` sessions.
fn setup_actions(sessions: usize) -> usize {
    5 + 1 + OBJECTS + sessions
}

/// One set of keys.
#[derive(Clone, Debug)]
struct Keys {
    ak: String,
    sk: String,
    token: Option<String>,
}

/// moto with signature checking, seeded; a proxy in front of it that logs what Orca sends.
struct Account {
    moto: Moto,
    proxy: FaultProxy,
    user: Keys,
    role_arn: String,
    sessions: Vec<Keys>,
    _dir: tempfile::TempDir,
}

impl Account {
    /// `unauthenticated_after_setup`: actions moto still serves unchecked after the set-up
    /// (web identity's AssumeRoleWithWebIdentity is unsigned by design).
    fn start(sessions: usize, unauthenticated_after_setup: usize) -> Account {
        let count = setup_actions(sessions) + unauthenticated_after_setup;
        let moto = Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", &count.to_string())]);
        let out = run_python(SETUP, &[&moto.endpoint(), &sessions.to_string()], "");
        let mut lines = out.lines();
        let first: Vec<&str> = lines.next().unwrap().split(' ').collect();
        let keys = |l: &str| {
            let f: Vec<&str> = l.split(' ').collect();
            Keys {
                ak: f[0].into(),
                sk: f[1].into(),
                token: Some(f[2].into()),
            }
        };
        let proxy = FaultProxy::start(&moto.addr());
        Account {
            user: Keys {
                ak: first[0].into(),
                sk: first[1].into(),
                token: None,
            },
            role_arn: first[2].into(),
            sessions: lines.map(keys).collect(),
            proxy,
            moto,
            _dir: tempfile::tempdir().unwrap(),
        }
    }

    fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Orca reading moto through the proxy, with no keys in its configuration or its env and
    /// no shared files (the chain finds only what `env` adds).
    fn orca(&self, env: &[(&str, &str)]) -> OrcaProcess {
        let mut config = OrcaConfig::new(&self.proxy.endpoint())
            .env("AWS_ACCESS_KEY_ID", "")
            .env("AWS_SECRET_ACCESS_KEY", "")
            .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/aws-credentials",
            );
        for (k, v) in env {
            config = config.env(k, v);
        }
        OrcaProcess::start(config)
    }

    /// The access key ids that signed the S3 requests the proxy saw, in order.
    fn keys_seen(&self) -> Vec<String> {
        self.proxy
            .counts()
            .log
            .iter()
            .filter(|r| r.target.starts_with("/creds"))
            .map(|r| credential_of(r.header("authorization").unwrap_or("")))
            .collect()
    }

    /// moto refuses a wrong secret: its signature checking is on.
    fn assert_signatures_are_checked(&self) {
        let refused = run_python(REFUSED, &[&self.moto.endpoint(), &self.user.ak], "");
        assert_eq!(refused.trim(), "403", "moto does not check signatures");
    }
}

/// The access key id of a SigV4 `Authorization` header (`""` when unsigned).
fn credential_of(authorization: &str) -> String {
    authorization
        .split("Credential=")
        .nth(1)
        .and_then(|c| c.split('/').next())
        .unwrap_or("")
        .to_string()
}

/// Reads `obj-{i}` through Orca: 200 and its bytes.
async fn read_ok(orca: &OrcaProcess, i: usize) {
    let r = http_get(&orca.object_url("creds", &format!("obj-{i}")), None)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "obj-{i}: {}\n{}", r.text(), orca.log_tail());
    assert_eq!(r.body, format!("object {i} ").repeat(1000).as_bytes());
}

/// `/readyz` is 200 and names the source; the log names it too.
fn assert_source(orca: &OrcaProcess, source: &str) {
    let (status, body) = orca.ops_get("/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!("credentials: origin.s3 {source}\n")),
        "{body}"
    );
    assert!(
        orca.log().contains(&format!("credentials: {source}")),
        "{}",
        orca.log_tail()
    );
}

/// A secret must appear nowhere in Orca's log.
fn assert_not_logged(orca: &OrcaProcess, keys: &Keys) {
    let log = orca.log();
    assert!(!log.contains(&keys.sk), "secret logged");
    if let Some(t) = &keys.token {
        assert!(!log.contains(t.as_str()), "session token logged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_keys_sign_through_the_chains_first_link() {
    let acct = Account::start(0, 0);
    let orca = acct.orca(&[
        ("AWS_ACCESS_KEY_ID", &acct.user.ak),
        ("AWS_SECRET_ACCESS_KEY", &acct.user.sk),
    ]);
    read_ok(&orca, 0).await;
    assert_source(&orca, "env");
    let seen = acct.keys_seen();
    assert!(
        !seen.is_empty() && seen.iter().all(|k| *k == acct.user.ak),
        "{seen:?}"
    );
    assert_not_logged(&orca, &acct.user);
    acct.assert_signatures_are_checked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_assumes_its_role_through_sts_or_runs_its_credential_process() {
    let acct = Account::start(1, 0);
    let config = acct.dir().join("config");
    let creds_json = acct.dir().join("process.json");
    let process = acct.dir().join("process.sh");
    let session = &acct.sessions[0];
    std::fs::write(
        &creds_json,
        format!(
            "{{\"Version\": 1, \"AccessKeyId\": \"{}\", \"SecretAccessKey\": \"{}\", \"SessionToken\": \"{}\"}}",
            session.ak,
            session.sk,
            session.token.as_deref().unwrap()
        ),
    )
    .unwrap();
    std::fs::write(
        &process,
        format!("#!/bin/sh\ncat '{}'\n", creds_json.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&process, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        &config,
        format!(
            "[profile base]\naws_access_key_id = {}\naws_secret_access_key = {}\n\n\
             [profile reader]\nrole_arn = {}\nsource_profile = base\nrole_session_name = orca\n\n\
             [profile proc]\ncredential_process = {}\n",
            acct.user.ak,
            acct.user.sk,
            acct.role_arn,
            process.display()
        ),
    )
    .unwrap();
    let config_path = config.to_string_lossy().to_string();

    // role_arn + source_profile: AssumeRole (signed with the base keys) through the proxy.
    let orca = acct.orca(&[
        ("AWS_CONFIG_FILE", &config_path),
        ("AWS_PROFILE", "reader"),
        ("AWS_ENDPOINT_URL_STS", &acct.proxy.endpoint()),
    ]);
    read_ok(&orca, 0).await;
    assert_source(&orca, "profile");
    let log = acct.proxy.counts().log;
    let assume: Vec<&RequestRecord> = log.iter().filter(|r| r.method == "POST").collect();
    assert_eq!(assume.len(), 1, "one AssumeRole: {log:?}");
    assert_eq!(
        credential_of(assume[0].header("authorization").unwrap_or("")),
        acct.user.ak
    );
    let seen = acct.keys_seen();
    assert!(!seen.is_empty(), "{log:?}");
    assert!(
        seen.iter()
            .all(|k| k.starts_with("ASIA") && *k != acct.user.ak && *k != session.ak),
        "signed with the assumed role's key: {seen:?}"
    );
    assert_not_logged(&orca, &acct.user);
    drop(orca);

    // credential_process.
    acct.proxy.reset_counts();
    let orca = acct.orca(&[("AWS_CONFIG_FILE", &config_path), ("AWS_PROFILE", "proc")]);
    read_ok(&orca, 1).await;
    assert_source(&orca, "profile");
    let seen = acct.keys_seen();
    assert!(
        !seen.is_empty() && seen.iter().all(|k| *k == session.ak),
        "{seen:?}"
    );
    assert_not_logged(&orca, session);
    acct.assert_signatures_are_checked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_identity_assumes_the_role_through_motos_sts() {
    // AssumeRoleWithWebIdentity is unsigned (the token is the proof), and moto checks every
    // service's signatures once on: the one unchecked action left is Orca's, made at start.
    let acct = Account::start(0, 1);
    let token = acct.dir().join("token");
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJvcmNhIn0.c2ln").unwrap();
    let orca = acct.orca(&[
        ("AWS_WEB_IDENTITY_TOKEN_FILE", &token.to_string_lossy()),
        ("AWS_ROLE_ARN", &acct.role_arn),
        ("AWS_ROLE_SESSION_NAME", "orca-irsa"),
        ("AWS_ENDPOINT_URL_STS", &acct.proxy.endpoint()),
    ]);
    read_ok(&orca, 0).await;
    read_ok(&orca, 1).await;
    assert_source(&orca, "web-identity");
    let log = acct.proxy.counts().log;
    let sts: Vec<&RequestRecord> = log.iter().filter(|r| r.method == "POST").collect();
    assert_eq!(sts.len(), 1, "one AssumeRoleWithWebIdentity: {log:?}");
    assert!(sts[0].header("authorization").is_none(), "{:?}", sts[0]);
    let seen = acct.keys_seen();
    assert!(seen.len() >= 4, "{seen:?}");
    assert!(
        seen.iter().all(|k| k.starts_with("ASIA") && *k == seen[0]),
        "{seen:?}"
    );
    acct.assert_signatures_are_checked();
}

/// The JSON both endpoints answer with (the ECS format; IMDS adds `Code`, `Type`...).
fn credentials_json(keys: &Keys, expires_in: Duration, imds: bool) -> String {
    let expiration = rfc3339(SystemTime::now() + expires_in);
    let extra = if imds {
        format!(
            "\"Code\": \"Success\", \"LastUpdated\": \"{}\", \"Type\": \"AWS-HMAC\", ",
            rfc3339(SystemTime::now())
        )
    } else {
        "\"RoleArn\": \"arn:aws:iam::123456789012:role/orca-reader\", ".to_string()
    };
    format!(
        "{{{extra}\"AccessKeyId\": \"{}\", \"SecretAccessKey\": \"{}\", \"Token\": \"{}\", \"Expiration\": \"{expiration}\"}}",
        keys.ak,
        keys.sk,
        keys.token.as_deref().unwrap_or("")
    )
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// What [`CredEndpoint`] serves.
#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    /// ECS / EKS Pod Identity: `GET` with `Authorization: <token>`.
    Container,
    /// EC2 IMDSv2: `PUT /latest/api/token` with a TTL, then the role, then its credentials,
    /// each with `x-aws-ec2-metadata-token`.
    Imds,
}

const ROLE: &str = "orca-instance-role";
const CONTAINER_PATH: &str = "/v2/credentials/orca-task";

/// A small credentials endpoint on loopback (its own thread; stopped on drop). Hands out
/// `keys[n % len]` for the n-th credentials fetch, expiring `expires_in` from then; fetches
/// after the first wait (at most 4 s) while `hold` is set.
struct CredEndpoint {
    addr: String,
    fetches: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    hold: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct EndpointConf {
    protocol: Protocol,
    keys: Vec<Keys>,
    expires_in: Duration,
    /// Container: the `Authorization` value expected; IMDS: the session token handed out.
    token: String,
}

impl CredEndpoint {
    fn start(conf: EndpointConf) -> CredEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let fetches = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let hold = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, r, h, s) = (fetches.clone(), refused.clone(), hold.clone(), stop.clone());
        let conf = Arc::new(Mutex::new(conf));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (conf, f, r, h) = (conf.clone(), f.clone(), r.clone(), h.clone());
                        std::thread::spawn(move || serve(stream, &conf, &f, &r, &h));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        CredEndpoint {
            addr,
            fetches,
            refused,
            hold,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for CredEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request per connection (the answer closes it).
fn serve(
    mut stream: TcpStream,
    conf: &Mutex<EndpointConf>,
    fetches: &AtomicUsize,
    refused: &AtomicUsize,
    hold: &AtomicBool,
) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = Vec::new();
    let mut piece = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
        match stream.read(&mut piece) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&piece[..n]),
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    if req.parse(&buf).is_err() {
        return;
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::to_string)
    };
    let (method, path) = (req.method.unwrap_or(""), req.path.unwrap_or(""));
    let (protocol, token, expires_in) = {
        let c = conf.lock().unwrap();
        (c.protocol, c.token.clone(), c.expires_in)
    };
    let mut extra_headers = String::new();
    let (status, body) = match protocol {
        Protocol::Container if method == "GET" && path == CONTAINER_PATH => {
            if header("authorization").as_deref() == Some(token.as_str()) {
                (200, None)
            } else {
                refused.fetch_add(1, Ordering::SeqCst);
                (
                    401,
                    Some("{\"message\": \"bad authorization token\"}".to_string()),
                )
            }
        }
        Protocol::Imds if method == "PUT" && path == "/latest/api/token" => {
            match header("x-aws-ec2-metadata-token-ttl-seconds")
                .and_then(|t| t.parse::<u32>().ok())
                .filter(|t| (1..=21600).contains(t))
            {
                Some(ttl) => {
                    extra_headers = format!("x-aws-ec2-metadata-token-ttl-seconds: {ttl}\r\n");
                    (200, Some(token.clone()))
                }
                None => (400, Some(String::new())),
            }
        }
        Protocol::Imds if method == "GET" && path.starts_with("/latest/meta-data/") => {
            if header("x-aws-ec2-metadata-token").as_deref() != Some(token.as_str()) {
                refused.fetch_add(1, Ordering::SeqCst);
                (401, Some(String::new()))
            } else if path == "/latest/meta-data/iam/security-credentials/" {
                (200, Some(ROLE.to_string()))
            } else if path == format!("/latest/meta-data/iam/security-credentials/{ROLE}") {
                (200, None)
            } else {
                (404, Some(String::new()))
            }
        }
        _ => (404, Some(String::new())),
    };
    let body = match body {
        Some(b) => b,
        None => {
            // A credentials fetch.
            let n = fetches.fetch_add(1, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(4);
            while n > 0 && hold.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let c = conf.lock().unwrap();
            let keys = &c.keys[n % c.keys.len()];
            credentials_json(keys, expires_in, protocol == Protocol::Imds)
        }
    };
    let content_type = if body.starts_with('{') {
        "application/json"
    } else {
        "text/plain"
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{extra_headers}connection: close\r\n\r\n{body}",
        body.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_credentials_with_an_authorization_token_file() {
    let acct = Account::start(1, 0);
    let session = acct.sessions[0].clone();
    let endpoint = CredEndpoint::start(EndpointConf {
        protocol: Protocol::Container,
        keys: vec![session.clone()],
        expires_in: Duration::from_secs(3600),
        token: "Bearer-orca-pod-identity-token".into(),
    });
    let token_file = acct.dir().join("eks-pod-identity-token");
    std::fs::write(&token_file, "Bearer-orca-pod-identity-token").unwrap();
    let orca = acct.orca(&[
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            &format!("{}{CONTAINER_PATH}", endpoint.url()),
        ),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            &token_file.to_string_lossy(),
        ),
    ]);
    read_ok(&orca, 0).await;
    assert_source(&orca, "container");
    assert_eq!(endpoint.fetches(), 1);
    assert_eq!(endpoint.refused.load(Ordering::SeqCst), 0);
    let seen = acct.keys_seen();
    assert!(
        !seen.is_empty() && seen.iter().all(|k| *k == session.ak),
        "{seen:?}"
    );
    assert_not_logged(&orca, &session);
    acct.assert_signatures_are_checked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec2_imdsv2_credentials() {
    let acct = Account::start(1, 0);
    let session = acct.sessions[0].clone();
    let endpoint = CredEndpoint::start(EndpointConf {
        protocol: Protocol::Imds,
        keys: vec![session.clone()],
        expires_in: Duration::from_secs(6 * 3600),
        token: "AQAEAimds-session-token==".into(),
    });
    let orca = acct.orca(&[
        ("AWS_EC2_METADATA_DISABLED", "false"),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &endpoint.url()),
    ]);
    read_ok(&orca, 0).await;
    assert_source(&orca, "imds");
    assert_eq!(endpoint.fetches(), 1);
    assert_eq!(endpoint.refused.load(Ordering::SeqCst), 0);
    let seen = acct.keys_seen();
    assert!(
        !seen.is_empty() && seen.iter().all(|k| *k == session.ak),
        "{seen:?}"
    );
    assert_not_logged(&orca, &session);
    acct.assert_signatures_are_checked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_about_to_expire_are_replaced_in_the_background_without_a_failed_request() {
    let acct = Account::start(3, 0);
    // Every set handed out expires in 4 minutes: inside the refresh window (5 minutes), so
    // each one is due for a refresh as soon as it is loaded, yet usable.
    let endpoint = CredEndpoint::start(EndpointConf {
        protocol: Protocol::Container,
        keys: acct.sessions.clone(),
        expires_in: Duration::from_secs(240),
        token: "pod-token".into(),
    });
    let orca = acct.orca(&[
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            &format!("{}{CONTAINER_PATH}", endpoint.url()),
        ),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "pod-token"),
    ]);
    assert_eq!(endpoint.fetches(), 1, "loaded once at start");
    // The refresh the first request starts is held at the endpoint: requests meanwhile are
    // signed with the current credentials and none waits for it.
    endpoint.hold.store(true, Ordering::SeqCst);
    for i in 0..3 {
        read_ok(&orca, i).await;
    }
    assert_eq!(
        endpoint.fetches(),
        2,
        "one refresh in flight, not one per request"
    );
    let seen = acct.keys_seen();
    assert!(
        seen.iter().all(|k| *k == acct.sessions[0].ak),
        "signed with the first set while the refresh is held: {seen:?}"
    );
    endpoint.hold.store(false, Ordering::SeqCst);
    // Once the refresh is in, requests sign with the second set (each read is of an object
    // not read before: a cache hit would ask the origin nothing).
    let mut i = 3;
    while !acct.keys_seen().contains(&acct.sessions[1].ak) {
        assert!(
            i < OBJECTS,
            "never signed with the refreshed set: {:?}",
            acct.keys_seen()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        read_ok(&orca, i).await;
        i += 1;
    }
    // Every request was answered 200 (read_ok), the endpoint was asked at most once per
    // request plus the start, and always with the right token.
    assert!(endpoint.fetches() <= i + 1, "{}", endpoint.fetches());
    assert_eq!(endpoint.refused.load(Ordering::SeqCst), 0);
    assert_not_logged(&orca, &acct.sessions[1]);
}

/// Reads through Orca with boto3 (header-signed GET, then a presigned URL it prints); prints
/// the header signature, then the URL.
const CLIENT: &str = r#"
import sys, boto3
from botocore.config import Config
ep, ak, sk = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=ep, region_name="us-east-1",
                  aws_access_key_id=ak, aws_secret_access_key=sk,
                  config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
sent = []
def keep(request, **kw):
    a = request.headers["Authorization"]
    sent.append(a.decode() if isinstance(a, bytes) else a)
s3.meta.events.register("before-send.s3.*", keep)
body = s3.get_object(Bucket="creds", Key="obj-2")["Body"].read()
assert body == ("object 2 " * 1000).encode(), "bytes differ"
print(sent[-1].split("Signature=")[1])
print(s3.generate_presigned_url("get_object", Params={"Bucket": "creds", "Key": "obj-3"},
                                ExpiresIn=300))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_token_or_signature_reaches_the_debug_log_or_the_metrics() {
    let acct = Account::start(1, 0);
    // The shared cache bucket, created with the user's (checked) keys.
    run_python(
        r#"
import sys, boto3
boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
             aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3]
             ).create_bucket(Bucket="orca-cache")
"#,
        &[&acct.moto.endpoint(), &acct.user.ak, &acct.user.sk],
        "",
    );
    let session = acct.sessions[0].clone();
    let pod_token = "pod-identity-token-Xq93LmZ";
    let endpoint = CredEndpoint::start(EndpointConf {
        protocol: Protocol::Container,
        keys: vec![session.clone()],
        expires_in: Duration::from_secs(3600),
        token: pod_token.into(),
    });
    let client = ("AKIAORCACLIENT000001", "client-secret-Vb71qPw");
    let keys = acct.dir().join("edge-keys.yaml");
    std::fs::write(
        &keys,
        format!(
            "keys:\n  - access_key_id: {}\n    secret_access_key_env: ORCA_TEST_CLIENT_SECRET\n    buckets: [creds]\n",
            client.0
        ),
    )
    .unwrap();
    let config = OrcaConfig::new(&acct.proxy.endpoint())
        .log_level("debug")
        .extra_yaml(&format!(
            "edge:\n  auth:\n    required: true\n    credentials_file: {}\n\
             cachestore:\n  driver: s3\n  s3:\n    endpoint: {}\n    bucket: orca-cache\n    path_style: true\n",
            yaml_str(&keys.to_string_lossy()),
            yaml_str(&acct.proxy.endpoint())
        ))
        .env("ORCA_TEST_CLIENT_SECRET", client.1)
        .env("ORCA_CACHESTORE_ACCESS_KEY_ID", &acct.user.ak)
        .env("ORCA_CACHESTORE_SECRET_ACCESS_KEY", &acct.user.sk)
        .env("AWS_ACCESS_KEY_ID", "")
        .env("AWS_SECRET_ACCESS_KEY", "")
        .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        .env(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            &format!("{}{CONTAINER_PATH}", endpoint.url()),
        )
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN", pod_token);
    let orca = OrcaProcess::start(config);
    let out = run_python(CLIENT, &[&orca.edge_url(), client.0, client.1], "");
    let mut lines = out.lines();
    let header_signature = lines.next().unwrap().trim().to_string();
    let presigned = lines.next().unwrap().trim().to_string();
    let r = http_get(&presigned, None).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, "object 3 ".repeat(1000).as_bytes());
    let url_signature = presigned
        .split("X-Amz-Signature=")
        .nth(1)
        .unwrap()
        .to_string();
    // The reads went through the chain's session (with its token) and the store.
    let seen = acct.keys_seen();
    assert!(seen.contains(&session.ak), "{seen:?}");
    assert!(
        acct.proxy
            .counts()
            .log
            .iter()
            .any(|r| r.method == "PUT" && r.target.starts_with("/orca-cache/")),
        "nothing committed to the store"
    );

    assert_secrets_absent(
        &orca,
        &[
            ("the store's secret", acct.user.sk.as_str()),
            ("the session's secret", session.sk.as_str()),
            ("the session token", session.token.as_deref().unwrap()),
            ("the container authorization token", pod_token),
            ("the client's secret", client.1),
            ("the client's header signature", header_signature.as_str()),
            ("the presigned URL's signature", url_signature.as_str()),
        ],
    );
}

/// Orca logged at debug level, and no secret is in any line of its log or metrics.
fn assert_secrets_absent(orca: &OrcaProcess, secrets: &[(&str, &str)]) {
    let log = orca.log();
    assert!(
        log.contains("DEBUG"),
        "not a debug log: {}",
        orca.log_tail()
    );
    let metrics = orca.metrics();
    for (what, secret) in secrets {
        assert!(secret.len() >= 16, "{what} too short to search for");
        for (place, text) in [("log", &log), ("metrics", &metrics)] {
            if let Some(line) = text.lines().find(|l| l.contains(secret)) {
                panic!("{what} is in the {place}: {line}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_that_finds_nothing_makes_readyz_say_why_and_requests_fail_cleanly() {
    let moto = Moto::start();
    let orca = OrcaProcess::start(
        OrcaConfig::new(&moto.endpoint())
            .unready_at_start()
            .env("AWS_ACCESS_KEY_ID", "")
            .env("AWS_SECRET_ACCESS_KEY", "")
            .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/aws-credentials",
            ),
    );
    let (status, body) = orca.ops_get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("origin.s3: no AWS credentials from the default chain: none of env, profile, web-identity, container, imds had credentials"),
        "{body}"
    );
    assert!(!body.contains("credentials: origin.s3"), "{body}");
    let r = http_get(&orca.object_url("creds", "obj-0"), None)
        .await
        .unwrap();
    assert!(r.status >= 500, "{} {}", r.status, r.text());
    assert!(r.text().contains("<Error>"), "{}", r.text());
    assert!(
        orca.log().contains("no AWS credentials at start"),
        "{}",
        orca.log_tail()
    );
}

// ---- Entra ID: origin.azureblob.credentials: entra ----

use common::entra::{jwt, OauthAzurite, TokenConf, TokenEndpoint, AUDIENCE};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT_ID: &str = "5e1c1f2a-8a0b-4c47-9a43-0rcaclient01";
const CLIENT_SECRET: &str = "entra-client-secret-Zq81Xv~pL";
const ENTRA_CONTAINER: &str = "entra";
/// Blobs seeded in [`ENTRA_CONTAINER`]: each is read once per test (a cache hit would ask the
/// origin nothing).
const BLOBS: usize = 12;

fn blob_bytes(i: usize) -> Vec<u8> {
    deterministic_bytes(i as u64 + 7, 200_000 + i * 1000)
}

/// Azurite in OAuth mode with [`BLOBS`] blobs, and a token endpoint trusting it to the same CA.
struct EntraRig {
    az: OauthAzurite,
    tokens: TokenEndpoint,
}

impl EntraRig {
    fn start(secret: Option<&str>, assertion_file: Option<&str>, expires_in: i64) -> EntraRig {
        let az = OauthAzurite::start();
        az.create_container(ENTRA_CONTAINER);
        for i in 0..BLOBS {
            az.put_blob(ENTRA_CONTAINER, &format!("blob-{i}"), &blob_bytes(i));
        }
        let tokens = TokenEndpoint::start(
            &az.ca,
            TokenConf {
                tenant: TENANT.into(),
                client_id: CLIENT_ID.into(),
                secret: secret.map(str::to_string),
                assertion_file: assertion_file.map(|f| az.dir().join(f)),
                expires_in,
                audience: AUDIENCE.into(),
            },
        );
        EntraRig { az, tokens }
    }

    /// Orca on the HTTPS Azurite with `credentials: entra` and `env` (the source's variables).
    fn config(&self, env: &[(&str, &str)]) -> OrcaConfig {
        let mut config = OrcaConfig::new(&self.az.endpoint())
            .origin_id("az")
            .extra_yaml(&format!(
                "origin:\n  id: az\n  driver: azureblob\n  azureblob:\n    account: devstoreaccount1\n    endpoint: {}\n    credentials: entra\n",
                yaml_str(&self.az.endpoint())
            ))
            // The test CA, for Azurite and the token endpoint (docs/azure.md).
            .env("SSL_CERT_FILE", &self.az.ca.cert().to_string_lossy())
            .env("AZURE_STORAGE_KEY", "");
        for (name, value) in env {
            config = config.env(name, value);
        }
        config
    }

    fn client_secret_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_AUTHORITY_HOST", self.tokens.authority_host()),
            ("AZURE_TENANT_ID", TENANT.into()),
            ("AZURE_CLIENT_ID", CLIENT_ID.into()),
            ("AZURE_CLIENT_SECRET", CLIENT_SECRET.into()),
        ]
    }

    fn orca(&self, env: &[(&'static str, String)]) -> OrcaProcess {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        OrcaProcess::start(self.config(&env))
    }
}

/// Reads `blob-{i}` through Orca: 200 and its bytes.
async fn read_blob(orca: &OrcaProcess, i: usize) {
    let r = http_get(
        &orca.object_url(ENTRA_CONTAINER, &format!("blob-{i}")),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "blob-{i}: {}\n{}", r.text(), orca.log_tail());
    assert!(r.body == blob_bytes(i), "blob-{i}: bytes differ");
}

/// `/readyz` is 200 and names the Entra source; so does the log.
fn assert_entra_source(orca: &OrcaProcess, source: &str) {
    let (status, body) = orca.ops_get("/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!("credentials: origin.azureblob entra {source}\n")),
        "{body}"
    );
    assert!(
        orca.log().contains(&format!("credentials: entra {source}")),
        "{}",
        orca.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_client_secret_tokens_are_accepted_by_azurites_oauth_mode() {
    let rig = EntraRig::start(Some(CLIENT_SECRET), None, 3600);
    // Azurite checks tokens: a good one is accepted, an expired one or one for another audience
    // refused (so Orca's reads below show that its tokens pass those checks).
    let exp = |s: i64| {
        i64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap()
            + s
    };
    let good = jwt(AUDIENCE, TENANT, exp(600), "probe-good");
    assert_eq!(
        rig.az.get_with_token(ENTRA_CONTAINER, "blob-0", &good).0,
        200
    );
    let expired = jwt(AUDIENCE, TENANT, exp(-120), "probe-expired");
    let (status, body) = rig.az.get_with_token(ENTRA_CONTAINER, "blob-0", &expired);
    assert!(status == 401 || status == 403, "{status} {body}");
    assert!(body.contains("expired"), "{body}");
    let vault = jwt("https://vault.azure.net", TENANT, exp(600), "probe-aud");
    let (status, body) = rig.az.get_with_token(ENTRA_CONTAINER, "blob-0", &vault);
    assert!(status == 401 || status == 403, "{status} {body}");

    let orca = rig.orca(&rig.client_secret_env());
    assert_entra_source(&orca, "client-secret");
    // Get Blob Properties, Get Blob and List Blobs, each with the bearer token.
    for i in 0..3 {
        read_blob(&orca, i).await;
    }
    let r = http_head(&orca.object_url(ENTRA_CONTAINER, "blob-3"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some(blob_bytes(3).len().to_string().as_str())
    );
    let r = http_get(
        &format!(
            "{}/{ENTRA_CONTAINER}?list-type=2&prefix=blob-1",
            orca.edge_url()
        ),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("<Key>blob-10</Key>"), "{}", r.text());
    // One token for all of it, sent as a bearer token Azurite saw.
    let issued = rig.tokens.issued();
    assert_eq!(issued.len(), 1, "one token fetched");
    assert_eq!(rig.tokens.refused(), 0);
    assert!(
        rig.az
            .debug_log()
            .contains(&format!("Bearer {}", issued[0])),
        "Azurite never saw the token"
    );
    drop(orca);

    // A wrong secret: no token; /readyz says why, and reads fail cleanly.
    let mut env = rig.client_secret_env();
    env[3].1 = "not-the-secret-at-all".into();
    let env2: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let orca = OrcaProcess::start(rig.config(&env2).unready_at_start());
    let (status, body) = orca.ops_get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("origin.azureblob: no Entra ID token from client-secret"),
        "{body}"
    );
    let r = http_get(&orca.object_url(ENTRA_CONTAINER, "blob-4"), None)
        .await
        .unwrap();
    assert!(r.status >= 500, "{} {}", r.status, r.text());
    drop(orca);

    // Tokens Azurite refuses (another audience) reach it from Orca and come back as the
    // origin refusing Orca's credentials.
    let rig_tokens = &rig.tokens;
    rig_tokens.set_audience("https://vault.azure.net");
    let orca = rig.orca(&rig.client_secret_env());
    let r = http_get(&orca.object_url(ENTRA_CONTAINER, "blob-5"), None)
        .await
        .unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("OriginAuthFailed"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_workload_identity_exchanges_the_federated_token_file() {
    let rig = EntraRig::start(None, Some("federated-token"), 3600);
    // What the kubelet projects into the pod (no newline; the exchange sends it as
    // client_assertion).
    let file = rig.az.dir().join("federated-token");
    let federated = jwt(
        "api://AzureADTokenExchange",
        TENANT,
        4_000_000_000,
        "kubelet",
    );
    std::fs::write(&file, federated).unwrap();
    let orca = rig.orca(&[
        ("AZURE_AUTHORITY_HOST", rig.tokens.authority_host()),
        ("AZURE_TENANT_ID", TENANT.into()),
        ("AZURE_CLIENT_ID", CLIENT_ID.into()),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            file.to_string_lossy().into_owned(),
        ),
    ]);
    assert_entra_source(&orca, "workload-identity");
    for i in 0..2 {
        read_blob(&orca, i).await;
    }
    assert_eq!(rig.tokens.issued().len(), 1);
    assert_eq!(rig.tokens.refused(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_managed_identity_asks_imds_with_the_metadata_header() {
    let rig = EntraRig::start(None, None, 3600);
    // IMDS refuses a request without `Metadata: true`.
    let r = http_get(
        &format!(
            "{}/metadata/identity/oauth2/token?api-version=2019-08-01&resource=https%3A%2F%2Fstorage.azure.com",
            rig.tokens.imds_host()
        ),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(rig.tokens.refused(), 1);
    // A user-assigned identity, picked by its client id.
    let orca = rig.orca(&[
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST", rig.tokens.imds_host()),
        ("AZURE_CLIENT_ID", CLIENT_ID.into()),
    ]);
    assert_entra_source(&orca, "managed-identity");
    for i in 0..2 {
        read_blob(&orca, i).await;
    }
    assert_eq!(rig.tokens.issued().len(), 1);
    assert_eq!(rig.tokens.refused(), 1, "Orca's request was refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_tokens_about_to_expire_are_replaced_in_the_background_without_a_failed_request() {
    // Every token lives 2 minutes: inside the refresh window (5 minutes), so each is due for a
    // refresh as soon as it is fetched, yet usable.
    let rig = EntraRig::start(Some(CLIENT_SECRET), None, 120);
    let orca = rig.orca(&rig.client_secret_env());
    assert_eq!(rig.tokens.issued().len(), 1, "fetched once at start");
    let first = rig.tokens.issued()[0].clone();
    // The refresh the first read starts is held at the endpoint: reads meanwhile carry the
    // current token and none waits for it.
    rig.tokens.hold(true);
    for i in 0..3 {
        read_blob(&orca, i).await;
    }
    assert_eq!(
        rig.tokens.requests(),
        2,
        "one refresh in flight, not one per request"
    );
    assert_eq!(rig.tokens.issued().len(), 1);
    assert!(rig.az.debug_log().contains(&format!("Bearer {first}")));
    rig.tokens.hold(false);
    // Once the refresh is in, reads carry the second token.
    let mut i = 3;
    loop {
        let issued = rig.tokens.issued();
        if issued.len() >= 2
            && rig
                .az
                .debug_log()
                .contains(&format!("Bearer {}", issued[1]))
        {
            break;
        }
        assert!(i < BLOBS, "never sent the refreshed token");
        tokio::time::sleep(Duration::from_millis(100)).await;
        read_blob(&orca, i).await;
        i += 1;
    }
    assert_eq!(rig.tokens.refused(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_secret_or_bearer_token_reaches_the_debug_log_or_the_metrics() {
    let rig = EntraRig::start(Some(CLIENT_SECRET), None, 3600);
    let env: Vec<(&str, String)> = rig.client_secret_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let orca = OrcaProcess::start(rig.config(&env).log_level("debug"));
    for i in 0..3 {
        read_blob(&orca, i).await;
    }
    let token = rig.tokens.issued()[0].clone();
    assert!(rig.az.debug_log().contains(&format!("Bearer {token}")));
    // The token's signature part alone, too (a log could cut the token elsewhere).
    let signature = token.rsplit('.').next().unwrap().to_string();
    assert_secrets_absent(
        &orca,
        &[
            ("the client secret", CLIENT_SECRET),
            ("the bearer token", token.as_str()),
            (
                "the bearer token's claims",
                token.split('.').nth(1).unwrap(),
            ),
            ("the bearer token's signature", signature.as_str()),
        ],
    );
}
