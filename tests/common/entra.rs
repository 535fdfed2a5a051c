//! Entra ID on loopback, for `origin.azureblob.credentials: entra` (tests/credentials.rs):
//!
//! - [`OauthAzurite`]: Azurite over HTTPS (a certificate from a test CA, [`super::pki::Ca`])
//!   with `--oauth basic`, which accepts `Authorization: Bearer` tokens after checking their
//!   lifetime (`nbf`, `exp`), issuer (`https://sts.windows.net/...`) and audience
//!   (`https://storage.azure.com`), not their signature (Azurite 3.35,
//!   `dist/src/blob/authentication/BlobTokenAuthenticator.js`). Seeded with Shared Key through
//!   curl (the tests' reqwest has no TLS). Its `--debug` log records each request's headers, so
//!   a test can see which token Orca sent.
//! - [`TokenEndpoint`]: Entra ID's v2 token endpoint over HTTPS (`POST
//!   /{tenant}/oauth2/v2.0/token`, form-encoded `client_credentials` with a `client_secret` or a
//!   `client_assertion` of type jwt-bearer: workload identity), and the IMDS managed identity
//!   endpoint over HTTP (`GET /metadata/identity/oauth2/token?api-version&resource`, only with
//!   `Metadata: true`), both minting unsigned JWTs Azurite's basic mode accepts. No real server
//!   of either protocol can run here.

use super::azurite::{Azurite, BlobRequest, ACCOUNT, KEY};
use super::pki::Ca;
use super::run_bounded;
use ::orca::origin::azureblob::sign::SharedKey;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The scope Orca asks for, and the resource IMDS is asked for.
pub const SCOPE: &str = "https://storage.azure.com/.default";
pub const RESOURCE: &str = "https://storage.azure.com";
/// What Azurite's basic OAuth accepts as audience and issuer.
pub const AUDIENCE: &str = "https://storage.azure.com";
pub const ISSUER_PREFIX: &str = "https://sts.windows.net/";

/// base64url without padding (JWT segments).
pub fn b64url(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An unsigned JWT with Entra's claims: audience `aud`, issuer for `tenant`, valid from a minute
/// ago until `exp`; `uti` tells tokens apart.
pub fn jwt(aud: &str, tenant: &str, exp: i64, uti: &str) -> String {
    let header = r#"{"typ":"JWT","alg":"RS256","kid":"orca-test"}"#;
    let now = now_secs();
    let claims = format!(
        r#"{{"aud":"{aud}","iss":"{ISSUER_PREFIX}{tenant}/","iat":{},"nbf":{},"exp":{exp},"appid":"orca","tid":"{tenant}","uti":"{uti}","ver":"1.0"}}"#,
        now - 60,
        now - 60
    );
    format!(
        "{}.{}.{}",
        b64url(header.as_bytes()),
        b64url(claims.as_bytes()),
        b64url(b"not-signed-azurite-basic-mode-skips-signatures")
    )
}

/// Azurite over HTTPS with `--oauth basic`, its CA, and its debug log.
pub struct OauthAzurite {
    pub azurite: Azurite,
    pub ca: Ca,
    debug_log: PathBuf,
    dir: tempfile::TempDir,
}

impl OauthAzurite {
    pub fn start() -> OauthAzurite {
        let dir = tempfile::Builder::new()
            .prefix("orca-entra-")
            .tempdir()
            .unwrap();
        let ca = Ca::new(dir.path(), "entra-ca");
        let (cert, key) = ca.leaf("azurite", "a1");
        let debug_log = dir.path().join("azurite-debug.log");
        let azurite = Azurite::start_with(&[
            "--cert".into(),
            cert.to_string_lossy().into_owned(),
            "--key".into(),
            key.to_string_lossy().into_owned(),
            "--oauth".into(),
            "basic".into(),
            "--debug".into(),
            debug_log.to_string_lossy().into_owned(),
        ]);
        OauthAzurite {
            azurite,
            ca,
            debug_log,
            dir,
        }
    }

    /// `https://127.0.0.1:PORT/devstoreaccount1`.
    pub fn endpoint(&self) -> String {
        format!("https://{}/{ACCOUNT}", self.azurite.addr())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Azurite's debug log (every request's headers).
    pub fn debug_log(&self) -> String {
        std::fs::read_to_string(&self.debug_log).unwrap_or_default()
    }

    /// One request with curl: Shared Key when `bearer` is `None`, else that token. Returns
    /// the status and the body.
    pub fn send(
        &self,
        method: &str,
        (container, blob): (&str, Option<&str>),
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: &[u8],
        bearer: Option<&str>,
    ) -> (u16, String) {
        let base = format!("https://{}", self.azurite.addr());
        let request =
            BlobRequest::new(method, &base, (container, blob), query, headers, body.len());
        let all = request.header_refs();
        let auth = match bearer {
            Some(t) => format!("Bearer {t}"),
            None => SharedKey::new(ACCOUNT, KEY)
                .unwrap()
                .authorization(method, &request.path, query, &all)
                .unwrap(),
        };
        let url = request.url.clone();
        let body_file = self.dir.path().join("curl-body");
        let out_file = self.dir.path().join("curl-out");
        std::fs::write(&body_file, body).unwrap();
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "60",
            "-X",
            method,
            "-w",
            "%{http_code}",
        ])
        .arg("--cacert")
        .arg(self.ca.cert())
        .arg("-o")
        .arg(&out_file)
        // curl's own defaults would change what was signed.
        .args(["-H", "Content-Type:", "-H", "Expect:", "-H", "Accept:"]);
        for (name, value) in &all {
            if *name != "content-length" {
                cmd.args(["-H", &format!("{name}: {value}")]);
            }
        }
        cmd.args(["-H", &format!("authorization: {auth}")]);
        if method == "PUT" {
            cmd.arg("--data-binary")
                .arg(format!("@{}", body_file.display()));
        }
        cmd.arg(&url);
        let out = run_bounded(&mut cmd, None, Duration::from_secs(90));
        assert!(
            out.status.success(),
            "curl {method} {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let body = std::fs::read_to_string(&out_file).unwrap_or_default();
        (status, body)
    }

    pub fn create_container(&self, name: &str) {
        let (status, body) = self.send(
            "PUT",
            (name, None),
            &[("restype", "container")],
            &[],
            b"",
            None,
        );
        assert_eq!(status, 201, "create container {name}: {body}");
    }

    pub fn put_blob(&self, container: &str, name: &str, data: &[u8]) {
        let (status, body) = self.send(
            "PUT",
            (container, Some(name)),
            &[],
            &[("x-ms-blob-type", "BlockBlob")],
            data,
            None,
        );
        assert_eq!(status, 201, "put {name}: {body}");
    }

    /// Get Blob with a bearer token, as Azurite answers it.
    pub fn get_with_token(&self, container: &str, name: &str, token: &str) -> (u16, String) {
        self.send("GET", (container, Some(name)), &[], &[], b"", Some(token))
    }
}

/// What [`TokenEndpoint`] accepts and hands out.
#[derive(Clone, Debug)]
pub struct TokenConf {
    pub tenant: String,
    pub client_id: String,
    /// The client secret it accepts (client secret flow).
    pub secret: Option<String>,
    /// The file whose content it accepts as `client_assertion` (workload identity).
    pub assertion_file: Option<PathBuf>,
    /// Lifetime of the tokens handed out.
    pub expires_in: i64,
    /// Audience of the tokens handed out.
    pub audience: String,
}

struct Shared {
    conf: Mutex<TokenConf>,
    /// Tokens handed out, in order.
    issued: Mutex<Vec<String>>,
    /// Requests refused (a wrong secret, assertion, tenant, client, scope or header).
    refused: AtomicUsize,
    /// Token requests after the first wait (at most 4 s) while set.
    hold: AtomicBool,
    /// Token requests received (answered or not yet).
    requests: AtomicUsize,
    tls: Arc<rustls::ServerConfig>,
}

/// Entra's token endpoint (HTTPS) and IMDS (HTTP) on loopback, each on a thread of its own,
/// stopped on drop.
pub struct TokenEndpoint {
    https_port: u16,
    http_port: u16,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl TokenEndpoint {
    /// Serves with a certificate for 127.0.0.1 from `ca`.
    pub fn start(ca: &Ca, conf: TokenConf) -> TokenEndpoint {
        let (cert, key) = ca.leaf("login", "b2");
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&key).unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let shared = Arc::new(Shared {
            conf: Mutex::new(conf),
            issued: Mutex::new(Vec::new()),
            refused: AtomicUsize::new(0),
            hold: AtomicBool::new(false),
            requests: AtomicUsize::new(0),
            tls: Arc::new(tls),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut ports = Vec::new();
        for https in [true, false] {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            ports.push(listener.local_addr().unwrap().port());
            let (shared, stop) = (shared.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let shared = shared.clone();
                            std::thread::spawn(move || serve(stream, &shared, https));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }));
        }
        TokenEndpoint {
            https_port: ports[0],
            http_port: ports[1],
            shared,
            stop,
            threads,
        }
    }

    /// `AZURE_AUTHORITY_HOST`.
    pub fn authority_host(&self) -> String {
        format!("https://127.0.0.1:{}", self.https_port)
    }

    /// `AZURE_POD_IDENTITY_AUTHORITY_HOST` (IMDS).
    pub fn imds_host(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn issued(&self) -> Vec<String> {
        self.shared.issued.lock().unwrap().clone()
    }

    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    pub fn hold(&self, on: bool) {
        self.shared.hold.store(on, Ordering::SeqCst);
    }

    pub fn set_expires_in(&self, secs: i64) {
        self.shared.conf.lock().unwrap().expires_in = secs;
    }
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, shared: &Shared, https: bool) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    if https {
        let Ok(conn) = rustls::ServerConnection::new(shared.tls.clone()) else {
            return;
        };
        let mut tls = rustls::StreamOwned::new(conn, stream);
        exchange(&mut tls, shared, true);
        tls.conn.send_close_notify();
        let _ = tls.flush();
    } else {
        let mut plain = stream;
        exchange(&mut plain, shared, false);
    }
}

/// Decodes one `application/x-www-form-urlencoded` value or query value.
fn form_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

fn pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (form_decode(k), form_decode(v))
        })
        .collect()
}

fn get<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// One request per connection.
fn exchange<S: Read + Write>(stream: &mut S, shared: &Shared, https: bool) {
    let mut buf = Vec::new();
    let mut piece = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return;
        }
        match stream.read(&mut piece) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&piece[..n]),
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    if req.parse(&buf[..head_end]).is_err() {
        return;
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::to_string)
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(64 * 1024);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        match stream.read(&mut piece) {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&piece[..n]),
        }
    }
    let method = req.method.unwrap_or("").to_string();
    let target = req.path.unwrap_or("").to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let conf = shared.conf.lock().unwrap().clone();
    let refuse = |status: u16, error: &str, description: &str, code: u32| {
        shared.refused.fetch_add(1, Ordering::SeqCst);
        (
            status,
            format!(
                r#"{{"error":"{error}","error_description":"AADSTS{code}: {description}","error_codes":[{code}]}}"#
            ),
        )
    };
    let (status, answer) = if https {
        let form = pairs(&String::from_utf8_lossy(&body));
        let secret_ok = match (get(&form, "client_secret"), &conf.secret) {
            (Some(given), Some(want)) => given == want,
            _ => false,
        };
        let assertion_ok = match (get(&form, "client_assertion"), &conf.assertion_file) {
            (Some(given), Some(file)) => {
                get(&form, "client_assertion_type")
                    == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                    && std::fs::read_to_string(file).unwrap_or_default() == given
            }
            _ => false,
        };
        if method != "POST" || path != format!("/{}/oauth2/v2.0/token", conf.tenant) {
            refuse(400, "invalid_request", "Tenant not found.", 90002)
        } else if get(&form, "grant_type") != Some("client_credentials")
            || get(&form, "client_id") != Some(conf.client_id.as_str())
        {
            refuse(400, "unauthorized_client", "Application not found.", 700016)
        } else if get(&form, "scope") != Some(SCOPE) {
            refuse(400, "invalid_scope", "The scope is not valid.", 70011)
        } else if !secret_ok && !assertion_ok {
            refuse(
                401,
                "invalid_client",
                "Invalid client secret or assertion.",
                7000215,
            )
        } else {
            let token = mint(shared, &conf);
            (
                200,
                format!(
                    r#"{{"token_type":"Bearer","expires_in":{0},"ext_expires_in":{0},"access_token":"{token}"}}"#,
                    conf.expires_in
                ),
            )
        }
    } else {
        let q = pairs(query);
        if method != "GET" || path != "/metadata/identity/oauth2/token" {
            (404, String::new())
        } else if header("metadata").as_deref() != Some("true") {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            (
                400,
                r#"{"error":"invalid_request","error_description":"Required metadata header not specified"}"#.to_string(),
            )
        } else if get(&q, "api-version").is_none()
            || get(&q, "resource") != Some(RESOURCE)
            || get(&q, "client_id").is_some_and(|c| c != conf.client_id)
        {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            (
                400,
                r#"{"error":"invalid_request","error_description":"Identity not found"}"#
                    .to_string(),
            )
        } else {
            let token = mint(shared, &conf);
            let exp = now_secs() + conf.expires_in;
            (
                200,
                format!(
                    r#"{{"access_token":"{token}","client_id":"{}","expires_in":"{}","expires_on":"{exp}","ext_expires_in":"{}","not_before":"{}","resource":"{RESOURCE}","token_type":"Bearer"}}"#,
                    conf.client_id,
                    conf.expires_in,
                    conf.expires_in,
                    now_secs() - 60
                ),
            )
        }
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
        answer.len()
    );
    let _ = stream.flush();
}

/// Hands out the next token (waiting while `hold` is set, for every token but the first).
fn mint(shared: &Shared, conf: &TokenConf) -> String {
    let n = shared.requests.fetch_add(1, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(4);
    while n > 0 && shared.hold.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let token = jwt(
        &conf.audience,
        &conf.tenant,
        now_secs() + conf.expires_in,
        &format!("orca-test-token-{n}"),
    );
    shared.issued.lock().unwrap().push(token.clone());
    token
}

impl TokenEndpoint {
    /// Tokens handed out from now on are for `audience`.
    pub fn set_audience(&self, audience: &str) {
        self.shared.conf.lock().unwrap().audience = audience.to_string();
    }
}
