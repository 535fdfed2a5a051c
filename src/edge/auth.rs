//! Client authentication on the edge: checks each request's AWS Signature Version 4 against the
//! keys of `edge.auth.credentials_file`, as S3 checks it, and says which buckets the caller may
//! read ([`Access`]).
//!
//! Both forms S3 accepts are verified: the `Authorization: AWS4-HMAC-SHA256 ...` header and
//! presigned query URLs (`X-Amz-Algorithm`, `X-Amz-Credential`, `X-Amz-Date`, `X-Amz-Expires`,
//! `X-Amz-SignedHeaders`, `X-Amz-Signature`). The canonical request follows S3's rules: the path
//! as sent, decoded once and encoded again with S3's URI encoding (never double-encoded, never
//! normalised: `//` and `..` stay), every query parameter sorted, the signed headers with their
//! values trimmed, and the payload hash taken as sent (`UNSIGNED-PAYLOAD`, `STREAMING-*` or a
//! hex digest). Signatures are compared in constant time. Failures get S3's codes: `400` for a
//! malformed header or query, `403` for a wrong key, signature, time or bucket.
//!
//! Why hand-written: `aws-sigv4` signs requests; it has no verifier, and a signer cannot be
//! reused as one because it builds the canonical request from an `http::Request` it normalises
//! its own way, while a verifier must rebuild exactly the request the client signed from what
//! arrived (the raw path and query, the headers the client named). The primitives are the
//! crate's: [`generate_signing_key`] and [`calculate_signature`].
//!
//! Deriving the signing key costs four HMACs; it is cached per credential scope (key, day,
//! region, service) so a request with a known scope costs one SHA-256 of its canonical request
//! and one HMAC. The cache belongs to one generation of keys, so a reload that changes a secret
//! never verifies against the old one.
//!
//! The keys are read again on `SIGHUP` ([`SighupReloader`]). Pingora 0.9.1 does not handle
//! `SIGHUP` (its default action would end the process), so the reloader installs a Tokio signal
//! handler from a Pingora background service; `/readyz` waits for it.

use crate::config::validated::{BucketGrant, ClientKey, EdgeAuthConfig};
use crate::edge::request::S3Request;
use crate::error::S3Error;
use crate::metrics::{EDGE_AUTH_REJECTIONS, EDGE_AUTH_RELOADS};
use crate::net::tls::CertReloader;
use async_trait::async_trait;
use aws_sigv4::sign::v4::{calculate_signature, generate_signing_key};
use lru::LruCache;
use parking_lot::{Mutex, RwLock};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora_http::RequestHeader;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

/// How far a header-signed request's time may be from Orca's clock (S3's 15 minutes).
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// The longest `X-Amz-Expires` S3 accepts: 7 days.
pub const MAX_PRESIGNED_EXPIRY: u64 = 7 * 24 * 3600;

/// Signing keys kept per key generation. Each is one credential scope: a key, a day, a region.
const SIGNING_KEY_CACHE: usize = 4096;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// What the caller of one request may read.
#[derive(Debug, Clone, Default)]
pub enum Access {
    /// Authentication is off, or the request is anonymous and `edge.auth.required` is false:
    /// every bucket the edge serves.
    #[default]
    Open,
    /// A verified key: its buckets.
    Key(Arc<ClientKey>),
}

impl Access {
    /// Whether the request may go on to `request`: `403 AccessDenied` when it names a bucket the
    /// key is not granted.
    ///
    /// # Errors
    ///
    /// `403 AccessDenied`.
    pub fn authorize(&self, request: &S3Request) -> Result<(), S3Error> {
        let Access::Key(key) = self else {
            return Ok(());
        };
        let bucket = match request {
            S3Request::GetObject { bucket, .. }
            | S3Request::HeadObject { bucket, .. }
            | S3Request::ListObjects { bucket, .. }
            | S3Request::HeadBucket { bucket }
            | S3Request::GetBucketLocation { bucket } => bucket,
            S3Request::ListBuckets => return Ok(()),
        };
        if key.buckets.allows(bucket) {
            Ok(())
        } else {
            tracing::debug!(access_key_id = %key.access_key_id, %bucket, "bucket not granted to the key");
            Err(rejected(access_denied()))
        }
    }

    /// The buckets ListBuckets answers: the key's buckets within `allowlist` (`edge.buckets`,
    /// empty for any). `None` when neither names any bucket.
    #[must_use]
    pub fn visible_buckets(&self, allowlist: &[String]) -> Option<Vec<String>> {
        match self {
            Access::Key(key) => match &key.buckets {
                BucketGrant::Only(list) => Some(
                    list.iter()
                        .filter(|b| allowlist.is_empty() || allowlist.contains(b))
                        .cloned()
                        .collect(),
                ),
                BucketGrant::Any => (!allowlist.is_empty()).then(|| allowlist.to_vec()),
            },
            Access::Open => (!allowlist.is_empty()).then(|| allowlist.to_vec()),
        }
    }
}

/// One generation of keys, with the signing keys derived from them.
struct KeySet {
    keys: HashMap<String, Arc<ClientKey>>,
    /// Derived signing keys by credential scope (`AKID/YYYYMMDD/region/service/aws4_request`).
    /// Only scopes that verified a request are kept, so unsigned guesses cannot evict them.
    signing_keys: Mutex<LruCache<String, [u8; 32]>>,
}

impl KeySet {
    fn new(keys: &[ClientKey]) -> Self {
        Self {
            keys: keys
                .iter()
                .map(|k| (k.access_key_id.clone(), Arc::new(k.clone())))
                .collect(),
            signing_keys: Mutex::new(LruCache::new(
                NonZeroUsize::new(SIGNING_KEY_CACHE).expect("a non-zero constant"),
            )),
        }
    }
}

/// The edge's authenticator: the keys in force and how to check a request against them.
pub struct EdgeAuth {
    /// `edge.auth.required`: anonymous requests are refused.
    required: bool,
    /// `edge.auth.credentials_file`; `None` turns checking off.
    file: Option<PathBuf>,
    /// The keys in force. Readers clone the `Arc` and let go of the lock at once.
    keys: RwLock<Arc<KeySet>>,
    /// Set once the `SIGHUP` handler is installed (`/readyz` waits for it: before that a
    /// `SIGHUP` would end the process).
    sighup_ready: AtomicBool,
}

impl EdgeAuth {
    /// The authenticator of `edge.auth`, with the keys validation read.
    #[must_use]
    pub fn new(config: &EdgeAuthConfig) -> Self {
        Self {
            required: config.required,
            file: config.credentials_file.clone(),
            keys: RwLock::new(Arc::new(KeySet::new(&config.keys))),
            sighup_ready: AtomicBool::new(false),
        }
    }

    /// Checks the request's signature now; see [`EdgeAuth::check_at`].
    ///
    /// # Errors
    ///
    /// As [`EdgeAuth::check_at`].
    pub fn check(&self, req: &RequestHeader) -> Result<Access, S3Error> {
        self.check_at(req, SystemTime::now())
    }

    /// Checks the request's signature as of `now`. Without a credentials file every request is
    /// [`Access::Open`]; with one, a signed request must verify, and an anonymous one is open
    /// unless `edge.auth.required`.
    ///
    /// # Errors
    ///
    /// The S3 error to answer with (`400` malformed, `403` refused).
    pub fn check_at(&self, req: &RequestHeader, now: SystemTime) -> Result<Access, S3Error> {
        if self.file.is_none() {
            return Ok(Access::Open);
        }
        let keys = self.keys.read().clone();
        match verify(&keys, req, now) {
            Ok(Some(key)) => Ok(Access::Key(key)),
            Ok(None) if self.required => Err(rejected(access_denied())),
            Ok(None) => Ok(Access::Open),
            Err(e) => Err(rejected(e)),
        }
    }

    /// Reads the credentials file again; on success its keys replace the ones in force (and the
    /// cached signing keys go with the old ones). Returns the number of keys now in force.
    ///
    /// # Errors
    ///
    /// Why the file was refused; the keys in force stay.
    pub fn reload(&self) -> Result<usize, crate::config::client_keys::KeysFileError> {
        let Some(path) = &self.file else {
            return Ok(0);
        };
        let keys = crate::config::client_keys::load(path, &crate::config::process_env)?;
        *self.keys.write() = Arc::new(KeySet::new(&keys));
        Ok(keys.len())
    }

    /// The background service that handles `SIGHUP`: it reloads the keys, and without a
    /// credentials file it only says there is nothing to reload (the signal never ends Orca).
    #[must_use]
    pub fn reloader(self: &Arc<Self>) -> SighupReloader {
        SighupReloader(self.clone(), None)
    }

    /// Why the replica is not ready yet, for `/readyz`.
    #[must_use]
    pub fn readiness_problem(&self) -> Option<String> {
        (!self.sighup_ready.load(Ordering::Acquire))
            .then(|| "the SIGHUP handler is not installed yet".to_string())
    }
}

/// Reloads `edge.auth.credentials_file` (and the TLS listeners' certificates, when given) on
/// every `SIGHUP`, as a Pingora background service.
pub struct SighupReloader(Arc<EdgeAuth>, Option<CertReloader>);

impl SighupReloader {
    /// Also reloads the TLS listeners' certificates on each `SIGHUP` (before the keys), under
    /// the same handler, so `/readyz` covers both.
    #[must_use]
    pub fn with_certificates(mut self, certs: CertReloader) -> Self {
        self.1 = (!certs.is_empty()).then_some(certs);
        self
    }
}

#[async_trait]
impl BackgroundService for SighupReloader {
    /// Installs the handler (from then on `SIGHUP` no longer ends the process), then reloads
    /// once per signal until shutdown. A reload that fails keeps the keys in force and says why.
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(err) => {
                tracing::error!(%err, "cannot install the SIGHUP handler: edge.auth.credentials_file will not be reloaded");
                return;
            }
        };
        self.0.sighup_ready.store(true, Ordering::Release);
        let file = self.0.file.as_deref();
        if let Some(file) = file {
            tracing::info!(file = %file.display(), "SIGHUP reloads the edge's credentials file");
        }
        if let Some(certs) = &self.1 {
            tracing::info!(listeners = ?certs.listeners(), "SIGHUP reloads the TLS certificates");
        }
        loop {
            tokio::select! {
                got = hangups.recv() => {
                    if got.is_none() {
                        return;
                    }
                    if let Some(certs) = &self.1 {
                        certs.reload_all();
                    }
                    let Some(file) = file else {
                        if self.1.is_none() {
                            tracing::info!("SIGHUP: nothing to reload (no edge.auth.credentials_file, no TLS listener)");
                        }
                        continue;
                    };
                    match self.0.reload() {
                        Ok(keys) => {
                            EDGE_AUTH_RELOADS.with_label_values(&["ok"]).inc();
                            tracing::info!(file = %file.display(), keys, "edge credentials reloaded");
                        }
                        Err(err) => {
                            EDGE_AUTH_RELOADS.with_label_values(&["error"]).inc();
                            tracing::error!(%err, "edge credentials not reloaded; the keys in force stay");
                        }
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Counts a refusal by its S3 code.
fn rejected(e: S3Error) -> S3Error {
    EDGE_AUTH_REJECTIONS.with_label_values(&[e.code]).inc();
    e
}

fn access_denied() -> S3Error {
    S3Error::new(403, "AccessDenied", "Access Denied")
}

fn header_malformed(detail: &str) -> S3Error {
    S3Error::new(
        400,
        "AuthorizationHeaderMalformed",
        format!("The authorization header is malformed; {detail}"),
    )
}

fn query_error(message: impl Into<String>) -> S3Error {
    S3Error::new(400, "AuthorizationQueryParametersError", message)
}

fn signature_mismatch() -> S3Error {
    S3Error::new(
        403,
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
    )
}

fn sigv2_refused() -> S3Error {
    S3Error::new(
        400,
        "InvalidRequest",
        "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256.",
    )
}

/// Which form of signature, and its parts, before any key is looked at.
struct Signed<'a> {
    /// `AKID/YYYYMMDD/region/service/aws4_request`, as sent (the signing-key cache's key).
    credential: String,
    access_key_id: &'a str,
    scope_date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
    /// The time in the string to sign, `YYYYMMDDTHHMMSSZ`.
    timestamp: String,
    payload_hash: String,
    /// Presigned: `X-Amz-Signature` is left out of the canonical query.
    presigned: bool,
}

/// Verifies `req`: `Ok(None)` for an anonymous request, `Ok(Some(key))` for a good signature.
fn verify(
    keys: &KeySet,
    req: &RequestHeader,
    now: SystemTime,
) -> Result<Option<Arc<ClientKey>>, S3Error> {
    let params = query_pairs(req.uri.query().unwrap_or(""))?;
    let header = req.headers.get("authorization");
    let param = |name: &str| param(&params, name);
    let query_v4 = ["X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature"]
        .iter()
        .any(|n| param(n).is_some());
    let query_v2 = param("AWSAccessKeyId").is_some() || param("Signature").is_some();
    if header.is_some() && (query_v4 || query_v2) {
        return Err(S3Error::new(
            400,
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified",
        ));
    }
    let signed = if let Some(value) = header {
        let value = value
            .to_str()
            .map_err(|_| header_malformed("the header is not ASCII."))?;
        if value.starts_with("AWS ") {
            return Err(sigv2_refused());
        }
        let Some(rest) = value.strip_prefix(ALGORITHM).filter(|r| r.starts_with(' ')) else {
            return Err(S3Error::new(
                400,
                "InvalidArgument",
                "Unsupported Authorization Type",
            ));
        };
        from_header(req, rest, now)?
    } else if query_v4 {
        from_query(req, &params, now)?
    } else if query_v2 {
        return Err(sigv2_refused());
    } else {
        return Ok(None);
    };
    if req.headers.contains_key("x-amz-security-token") || param("X-Amz-Security-Token").is_some() {
        // Orca's keys are long-term keys: a session token belongs to credentials it never issued.
        return Err(S3Error::new(
            400,
            "InvalidToken",
            "The provided token is malformed or otherwise invalid.",
        ));
    }
    // S3 refuses x-amz-* headers (and Host) that the signature does not cover.
    let unsigned = req.headers.keys().any(|name| {
        let n = name.as_str();
        (n.starts_with("x-amz-") || n == "host") && !signed.signed_headers.contains(&n)
    });
    if unsigned {
        return Err(S3Error::new(
            403,
            "AccessDenied",
            "There were headers present in the request which were not signed",
        ));
    }
    let Some(key) = keys.keys.get(signed.access_key_id) else {
        tracing::debug!(access_key_id = %signed.access_key_id, "unknown access key id");
        return Err(S3Error::new(
            403,
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
        ));
    };
    let canonical = canonical_request(req, &params, &signed)?;
    let string_to_sign = format!(
        "{ALGORITHM}\n{}\n{}/{}/{}/aws4_request\n{}",
        signed.timestamp,
        signed.scope_date,
        signed.region,
        signed.service,
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let cached = keys
        .signing_keys
        .lock()
        .get(signed.credential.as_str())
        .copied();
    let signing_key = match cached {
        Some(k) => k,
        None => {
            let day = parse_scope_date(signed.scope_date).ok_or_else(|| {
                header_malformed("the Credential is mal-formed; expecting \"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\".")
            })?;
            let derived =
                generate_signing_key(&key.secret_access_key, day, signed.region, signed.service);
            let mut k = [0u8; 32];
            k.copy_from_slice(derived.as_ref());
            k
        }
    };
    let expected = calculate_signature(signing_key, string_to_sign.as_bytes());
    if !bool::from(expected.as_bytes().ct_eq(signed.signature.as_bytes())) {
        tracing::debug!(access_key_id = %signed.access_key_id, "signature does not match");
        return Err(signature_mismatch());
    }
    if cached.is_none() {
        keys.signing_keys.lock().put(signed.credential, signing_key);
    }
    Ok(Some(key.clone()))
}

/// The parts of `Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`.
fn from_header<'a>(
    req: &'a RequestHeader,
    rest: &'a str,
    now: SystemTime,
) -> Result<Signed<'a>, S3Error> {
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        match part.split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed_headers = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => {
                return Err(header_malformed(&format!(
                    "the authorization component \"{part}\" is malformed."
                )))
            }
        }
    }
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(header_malformed(
            "the authorization header requires three components: Credential, SignedHeaders, and Signature.",
        ));
    };
    let scope = scope(credential).map_err(|why| header_malformed(&why))?;
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    let no_date = || {
        S3Error::new(
            403,
            "AccessDenied",
            "AWS authentication requires a valid Date or x-amz-date header",
        )
    };
    let (time, timestamp) = match header("x-amz-date") {
        Some(v) => (parse_amz_date(v).ok_or_else(no_date)?, v.to_string()),
        None => {
            let t = header("date")
                .and_then(|d| httpdate::parse_http_date(d).ok())
                .ok_or_else(no_date)?;
            (t, format_amz_date(t))
        }
    };
    if timestamp[..8] != *scope.date {
        return Err(header_malformed(
            "Invalid credential date. Date is not the same as X-Amz-Date.",
        ));
    }
    let skew = now.duration_since(time).unwrap_or_else(|e| e.duration());
    if skew > MAX_SKEW {
        return Err(S3Error::new(
            403,
            "RequestTimeTooSkewed",
            "The difference between the request time and the current time is too large.",
        ));
    }
    let Some(payload_hash) = header("x-amz-content-sha256") else {
        return Err(S3Error::new(
            400,
            "InvalidRequest",
            "Missing required header for this request: x-amz-content-sha256",
        ));
    };
    check_payload_hash(req, payload_hash)?;
    Ok(Signed {
        credential: credential.to_string(),
        access_key_id: scope.access_key_id,
        scope_date: scope.date,
        region: scope.region,
        service: scope.service,
        signed_headers: signed_headers.split(';').collect(),
        signature,
        timestamp,
        payload_hash: payload_hash.to_string(),
        presigned: false,
    })
}

/// The value of the query parameter `name` (a value that is not UTF-8 reads as empty).
fn param<'p>(params: &'p [Param], name: &str) -> Option<&'p str> {
    params
        .iter()
        .find(|(n, _)| n.as_slice() == name.as_bytes())
        .map(|(_, v)| std::str::from_utf8(v).unwrap_or(""))
}

/// The parts of a presigned URL's `X-Amz-*` parameters.
fn from_query<'a>(
    req: &RequestHeader,
    params: &'a [Param],
    now: SystemTime,
) -> Result<Signed<'a>, S3Error> {
    let param = |name: &str| param(params, name);
    let (
        Some(algorithm),
        Some(credential),
        Some(signature),
        Some(date),
        Some(signed_headers),
        Some(expires),
    ) = (
        param("X-Amz-Algorithm"),
        param("X-Amz-Credential"),
        param("X-Amz-Signature"),
        param("X-Amz-Date"),
        param("X-Amz-SignedHeaders"),
        param("X-Amz-Expires"),
    )
    else {
        return Err(query_error(
            "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters.",
        ));
    };
    if algorithm != ALGORITHM {
        return Err(query_error(
            "X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"",
        ));
    }
    let scope = scope(credential).map_err(|why| {
        query_error(format!(
            "Error parsing the X-Amz-Credential parameter; {why}"
        ))
    })?;
    let time = parse_amz_date(date).ok_or_else(|| {
        query_error("X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
    })?;
    let expires: i64 = expires
        .parse()
        .map_err(|_| query_error("X-Amz-Expires should be a number"))?;
    let expires =
        u64::try_from(expires).map_err(|_| query_error("X-Amz-Expires must be non-negative"))?;
    if expires > MAX_PRESIGNED_EXPIRY {
        return Err(query_error(
            "X-Amz-Expires must be less than a week (in seconds) that is; 604800",
        ));
    }
    if date[..8] != *scope.date {
        return Err(query_error(format!(
            "Invalid credential date \"{}\". This date is not the same as X-Amz-Date: \"{}\".",
            scope.date,
            &date[..8]
        )));
    }
    if time > now + MAX_SKEW {
        return Err(S3Error::new(
            403,
            "AccessDenied",
            "Request is not valid yet",
        ));
    }
    if now > time + Duration::from_secs(expires) {
        return Err(S3Error::new(403, "AccessDenied", "Request has expired"));
    }
    let payload_hash = param("X-Amz-Content-Sha256").unwrap_or("UNSIGNED-PAYLOAD");
    check_payload_hash(req, payload_hash)?;
    Ok(Signed {
        credential: credential.to_string(),
        access_key_id: scope.access_key_id,
        scope_date: scope.date,
        region: scope.region,
        service: scope.service,
        signed_headers: signed_headers.split(';').collect(),
        signature,
        timestamp: date.to_string(),
        payload_hash: payload_hash.to_string(),
        presigned: true,
    })
}

/// `AKID/YYYYMMDD/region/service/aws4_request`.
struct Scope<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
}

/// Parses a credential scope. Any region is accepted: Orca is not in one, and the region is
/// bound by the signature anyway. The service must be `s3`.
fn scope(credential: &str) -> Result<Scope<'_>, String> {
    let malformed = || {
        "the Credential is mal-formed; expecting \"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\"."
            .to_string()
    };
    let parts: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, terminal] = parts[..] else {
        return Err(malformed());
    };
    if access_key_id.is_empty() || region.is_empty() || parse_scope_date(date).is_none() {
        return Err(malformed());
    }
    if service != "s3" {
        return Err(format!(
            "incorrect service \"{service}\". This endpoint belongs to \"s3\"."
        ));
    }
    if terminal != "aws4_request" {
        return Err(format!(
            "incorrect terminal \"{terminal}\". This endpoint uses \"aws4_request\"."
        ));
    }
    Ok(Scope {
        access_key_id,
        date,
        region,
        service,
    })
}

/// The payload hash is taken as sent; only its form is checked, and a digest must be that of
/// the (empty) body Orca reads: the edge serves only GET and HEAD.
fn check_payload_hash(req: &RequestHeader, hash: &str) -> Result<(), S3Error> {
    const FORMS: [&str; 6] = [
        "UNSIGNED-PAYLOAD",
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
        "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD",
        "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER",
    ];
    if FORMS.contains(&hash) {
        return Ok(());
    }
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(S3Error::new(
            400,
            "InvalidArgument",
            "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER, STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD, STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER or a valid sha256 value.",
        ));
    }
    let has_body = req.headers.contains_key("transfer-encoding")
        || req
            .headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    if !has_body && !hash.eq_ignore_ascii_case(EMPTY_SHA256) {
        return Err(S3Error::new(
            400,
            "XAmzContentSHA256Mismatch",
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        ));
    }
    Ok(())
}

/// The canonical request S3 computes from what arrived.
fn canonical_request(
    req: &RequestHeader,
    params: &[Param],
    signed: &Signed<'_>,
) -> Result<String, S3Error> {
    let mut out = String::with_capacity(512);
    out.push_str(req.method.as_str());
    out.push('\n');
    // S3 decodes the path once and encodes it again: no double encoding, no normalisation.
    let path = decode(req.uri.path().as_bytes()).ok_or_else(invalid_uri)?;
    if path.is_empty() {
        out.push('/');
    }
    uri_encode_into(&mut out, &path, false);
    out.push('\n');
    let mut query: Vec<(String, String)> = params
        .iter()
        .filter(|(name, _)| !(signed.presigned && name.as_slice() == b"X-Amz-Signature"))
        .map(|(name, value)| {
            let (mut n, mut v) = (String::new(), String::new());
            uri_encode_into(&mut n, name, true);
            uri_encode_into(&mut v, value, true);
            (n, v)
        })
        .collect();
    query.sort_unstable();
    for (i, (name, value)) in query.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
    out.push('\n');
    for name in &signed.signed_headers {
        out.push_str(name);
        out.push(':');
        for (i, value) in req.headers.get_all(*name).iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let value = String::from_utf8_lossy(value.as_bytes());
            // Trimmed, with runs of spaces inside folded to one.
            let mut words = value.split_ascii_whitespace();
            if let Some(first) = words.next() {
                out.push_str(first);
                for word in words {
                    out.push(' ');
                    out.push_str(word);
                }
            }
        }
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed.signed_headers.join(";"));
    out.push('\n');
    out.push_str(&signed.payload_hash);
    Ok(out)
}

fn invalid_uri() -> S3Error {
    S3Error::new(400, "InvalidURI", "Couldn't parse the specified URI.")
}

/// A query parameter: its name and value, percent-decoded.
type Param = (Vec<u8>, Vec<u8>);

/// The query's parameters, each name and value percent-decoded (strictly: a `%` must start a
/// hex pair). `+` stays a `+`, as SDKs encode a space as `%20`.
fn query_pairs(query: &str) -> Result<Vec<Param>, S3Error> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((
                decode(name.as_bytes()).ok_or_else(invalid_uri)?,
                decode(value.as_bytes()).ok_or_else(invalid_uri)?,
            ))
        })
        .collect()
}

/// Percent-decodes `raw`; `None` for a `%` not followed by two hex digits.
fn decode(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hi = (*raw.get(i + 1)? as char).to_digit(16)?;
            let lo = (*raw.get(i + 2)? as char).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    Some(out)
}

/// S3's URI encoding: every byte but `A-Z a-z 0-9 - . _ ~` as `%XX` (upper-case hex); `/` kept
/// in paths, encoded in query names and values.
fn uri_encode_into(out: &mut String, bytes: &[u8], encode_slash: bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (b == b'/' && !encode_slash)
        {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn digits(s: &str) -> Option<i64> {
    s.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| s.parse().ok())
        .flatten()
}

/// `YYYYMMDD` as midnight UTC of a real day after 1970.
fn parse_scope_date(s: &str) -> Option<SystemTime> {
    // ASCII first: 8 bytes of other text need not split at 4 and 6 (found by fuzzing: a
    // client's credential scope could panic the request; fuzz/regressions/sigv4/).
    if s.len() != 8 || !s.is_ascii() {
        return None;
    }
    let (y, m, d) = (digits(&s[..4])?, digits(&s[4..6])?, digits(&s[6..8])?);
    let days = days_from_civil(y, m, d);
    if !(1..=12).contains(&m) || civil_from_days(days) != (y, m, d) {
        return None;
    }
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(days).ok()? * 86_400))
}

/// `YYYYMMDDTHHMMSSZ` (ISO 8601 basic, UTC), as `x-amz-date` and `X-Amz-Date` carry it.
fn parse_amz_date(s: &str) -> Option<SystemTime> {
    if s.len() != 16 || !s.is_ascii() || &s[8..9] != "T" || &s[15..] != "Z" {
        return None;
    }
    let day = parse_scope_date(&s[..8])?;
    let (h, m, sec) = (digits(&s[9..11])?, digits(&s[11..13])?, digits(&s[13..15])?);
    if h > 23 || m > 59 || sec > 60 {
        return None;
    }
    Some(day + Duration::from_secs(u64::try_from(h * 3600 + m * 60 + sec).ok()?))
}

/// The `YYYYMMDDTHHMMSSZ` form of a time (for a request dated by its `Date` header).
fn format_amz_date(t: SystemTime) -> String {
    let secs = i64::try_from(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())).unwrap_or(0);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests;
