//! The S3 surface Orca's edge serves, exercised with the clients people use (boto3, the aws CLI,
//! curl, rclone, pyarrow) and with raw HTTP: listings, odd keys, conditionals, presigned URLs,
//! multi-part downloads, virtual-hosted requests, checksums, and what is refused.
//!
//! Every test starts its own moto, counting proxy and `orca` (1 MiB chunks) on free loopback
//! ports. Bytes are compared by sha256 against what was uploaded; origin requests are counted
//! by the proxy and Orca's metrics; nothing measures time. The Python clients are small
//! scripts in `tests/clients/` that print JSON (installed by hack/install-test-deps.sh).

#![allow(clippy::unwrap_used)]

mod common;

use common::httpc::{parse_raw_response, raw_exchange};
use common::*;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const MIB: usize = 1 << 20;
const BUCKET: &str = "surface";
/// Upper bound of one client run (aws, rclone, python, curl).
const CLIENT_DEADLINE: Duration = Duration::from_secs(180);

macro_rules! client_script {
    ($name:literal) => {
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/", $name)
    };
}

/// moto, a counting proxy in front of it, and Orca reading through the proxy; bucket
/// [`BUCKET`] exists.
async fn stack(configure: impl FnOnce(OrcaConfig) -> OrcaConfig) -> Stack {
    Stack::start(Origin::S3, BUCKET, configure).await
}

/// What this file asks of a [`Stack`] beyond the shared helpers.
trait Surface {
    /// `http://127.0.0.1:EDGE`.
    fn edge(&self) -> String;
    /// Object GETs that reached the origin (ranged or not).
    fn object_gets(&self) -> usize;
}

impl Surface for Stack {
    fn edge(&self) -> String {
        self.orca.edge_url()
    }

    fn object_gets(&self) -> usize {
        self.proxy.counts().gets()
    }
}

/// Chunks (1 MiB) of an object of `size` bytes: the origin GETs a cold read makes.
fn chunks(size: usize) -> usize {
    size.div_ceil(MIB)
}

/// Sets the environment every client runs with: test credentials, no profile, no CA bundle,
/// no proxies, no instance metadata, no retries (an error from Orca must not be hidden).
fn client_env(cmd: &mut Command) -> &mut Command {
    for name in [
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_CA_BUNDLE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(name);
    }
    cmd.env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env("NO_PROXY", "127.0.0.1,localhost")
}

/// Runs a client to completion (at most [`CLIENT_DEADLINE`], then it is killed by pid) and
/// returns its stdout; panics with its stderr when it fails.
fn run(cmd: &mut Command) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    client_env(cmd)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (run hack/install-test-deps.sh)"));
    let mut guard = ChildGuard::new("client", child);
    let status = guard.wait_timeout(CLIENT_DEADLINE);
    guard.kill();
    let stdout = std::fs::read(&out_path).unwrap_or_default();
    let stderr =
        String::from_utf8_lossy(&std::fs::read(&err_path).unwrap_or_default()).into_owned();
    match status {
        None => panic!("{cmd:?} still running after {CLIENT_DEADLINE:?}; stderr:\n{stderr}"),
        Some(s) if !s.success() => {
            let shown = &stdout[..stdout.len().min(4096)];
            panic!(
                "{cmd:?} failed ({s}); stderr:\n{stderr}\nstdout:\n{}",
                String::from_utf8_lossy(shown)
            )
        }
        Some(_) => stdout,
    }
}

/// Runs a script of `tests/clients/` and parses the JSON it prints.
fn run_script<T: serde::de::DeserializeOwned>(script: &str, args: &[&str]) -> T {
    let out = run(Command::new("python3").arg(script).args(args));
    serde_norway::from_slice(&out).unwrap_or_else(|e| {
        panic!(
            "{script}: unparsable output {e}: {}",
            String::from_utf8_lossy(&out)
        )
    })
}

/// Uploads straight to moto with a raw request: works for every key, also those with `.` or
/// `..` segments that reqwest's URL parser would rewrite.
async fn raw_put(addr: &str, bucket: &str, key: &str, data: &[u8]) {
    let target = format!("/{bucket}/{}", encode_key(key));
    let mut request = format!(
        "PUT {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {DUMMY_AUTHORIZATION}\r\n\
         x-amz-date: 20250101T000000Z\r\nx-amz-content-sha256: UNSIGNED-PAYLOAD\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        data.len()
    )
    .into_bytes();
    request.extend_from_slice(data);
    let raw = raw_exchange(addr, &request).await.unwrap();
    let response = parse_raw_response(&raw, false).unwrap();
    assert_eq!(
        response.status,
        200,
        "raw PUT {target}: {}",
        String::from_utf8_lossy(&response.body)
    );
}

/// A raw request to `addr` with a chosen Host header.
async fn raw_with_host(addr: &str, method: &str, target: &str, host: &str) -> RawResponse {
    let request =
        format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let raw = raw_exchange(addr, request.as_bytes()).await.unwrap();
    parse_raw_response(&raw, method == "HEAD").unwrap()
}

/// What follows the first `n` whitespace-separated fields of `line` (a name with spaces stays
/// whole).
fn after_fields(line: &str, n: usize) -> &str {
    let mut rest = line.trim_start();
    for _ in 0..n {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        rest = rest[end..].trim_start();
    }
    rest
}

fn body_text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

/// sha256 of every regular file under `root`, by path relative to it.
fn tree_digests(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    for _ in 0..10_000 {
        let Some(dir) = stack.pop() else { break };
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_string_lossy();
                out.insert(rel.into_owned(), sha256_hex(&std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// 1. Listings
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct ListingResult {
    orca_sends: HashMap<String, usize>,
    pages: HashMap<String, usize>,
    keys: usize,
}

/// 25 keys under several prefixes, with spaces, `+`, `=&` and unicode.
const LISTING_KEYS: [&str; 25] = [
    "a/1.txt",
    "a/2.txt",
    "a/3.txt",
    "a/4.txt",
    "a/5.txt",
    "a/6.txt",
    "a/b/1",
    "a/b/2",
    "a/c/1",
    "a/ünï/x",
    "b/1",
    "b/2",
    "c/1",
    "d/1",
    "dir with space/file one.txt",
    "dir with space/file two.txt",
    "ünïcødé/文件.bin",
    "ünïcødé/данные",
    "top key 1",
    "top+plus",
    "z1",
    "z2",
    "zz/deep/er/key",
    "ü-top",
    "k=v&x",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_through_orca_equal_the_origins() {
    let s = stack(|c| c).await;
    for (i, key) in LISTING_KEYS.iter().enumerate() {
        s.put(key, &deterministic_bytes(i as u64, 37 * i + 1)).await;
    }
    let edge = s.edge();
    let origin = s.moto().endpoint();
    let r: ListingResult = run_script(
        client_script!("s3_listing.py"),
        &[&edge, &origin, BUCKET, "no-such-bucket"],
    );
    assert_eq!(r.keys, LISTING_KEYS.len());
    for case in [
        "v2",
        "v2-delimiter",
        "v2-prefix-delimiter",
        "v1",
        "v1-prefix",
    ] {
        assert!(
            r.pages[case] >= 3,
            "{case}: only {} pages of 4 keys",
            r.pages[case]
        );
    }
    // With a delimiter, moto's v1 max-keys counts only Contents (S3 counts CommonPrefixes
    // too), so these page less often; they still page.
    for case in ["v1-delimiter", "v1-prefix-delimiter"] {
        assert!(r.pages[case] >= 2, "{case}: {} pages", r.pages[case]);
    }
    // Listings are passed through: one origin listing per client listing.
    let client_lists = r.orca_sends.get("ListObjectsV2").copied().unwrap_or(0)
        + r.orca_sends.get("ListObjects").copied().unwrap_or(0);
    assert_eq!(s.proxy.counts().lists, client_lists, "{:?}", r.orca_sends);

    // Without encoding-type (boto3 always asks for it), raw: the origin's XML, byte for byte.
    for query in [
        "list-type=2&prefix=%C3%BC",
        "list-type=2&prefix=dir%20with%20space%2F&max-keys=1",
        "list-type=2&delimiter=%2F&start-after=b&fetch-owner=true",
        "prefix=top%2B&delimiter=%2F",
        "marker=a%2Fb&max-keys=3",
        "list-type=2&prefix=a%2F&delimiter=%2F&max-keys=2&encoding-type=url",
    ] {
        let through = http_get(&format!("{edge}/{BUCKET}?{query}"), None)
            .await
            .unwrap();
        let direct = s3_get(&format!("{origin}/{BUCKET}?{query}"), None)
            .await
            .unwrap();
        assert_eq!(
            (through.status, direct.status),
            (200, 200),
            "{query}: {}",
            through.text()
        );
        assert_eq!(through.text(), direct.text(), "{query}");
        assert!(
            through.text().contains("<ListBucketResult"),
            "{query}: {}",
            through.text()
        );
    }
    assert_eq!(s.object_gets(), 0, "a listing read an object");
}

// ---------------------------------------------------------------------------------------------
// 2. Keys
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct DigestsResult {
    sha256: Vec<String>,
    sizes: Vec<usize>,
}

/// 1024 bytes of UTF-8 (S3's limit), with two-byte characters.
fn longest_key() -> String {
    let mut key = String::from("long/");
    key.push_str(&"é".repeat(500));
    while key.len() < 1024 {
        key.push('x');
    }
    assert_eq!(key.len(), 1024);
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_keys_round_trip_byte_exact_with_boto3_and_curl() {
    let s = stack(|c| c).await;
    let long = longest_key();
    let keys: Vec<&str> = vec![
        "a b.txt",
        "plus+sign",
        "percent%20literal",
        "tilde~x",
        "ünïcødé/文件",
        "double//slash",
        "trailing/",
        "dir/../dotdot",
        "./dot",
        &long,
        "encoded%2Fslash",
        // Beyond the usual suspects: URL delimiters, a control character, astral UTF-8,
        // glob characters, escaped dots, and a key that is only a dot segment.
        "q?x#frag&y=z",
        "tab\tkey",
        "emoji😀",
        "[br]{ce}",
        "%2e%2e/x",
        "..",
    ];
    let mut data = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        // One multi-chunk object among them, with a unicode key.
        let size = if key.starts_with("ünï") {
            MIB + MIB / 2
        } else {
            1000 * i + 7
        };
        let bytes = deterministic_bytes(100 + i as u64, size);
        raw_put(&s.moto().addr(), BUCKET, key, &bytes).await;
        data.push(bytes);
    }
    let want: Vec<String> = data.iter().map(|d| sha256_hex(d)).collect();

    // boto3 get_object, cold.
    let edge = s.edge();
    let mut args = vec![edge.as_str(), BUCKET];
    args.extend(keys.iter().copied());
    let r: DigestsResult = run_script(client_script!("s3_get_keys.py"), &args);
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(r.sizes[i], data[i].len(), "boto3 size of {key:?}");
        assert_eq!(r.sha256[i], want[i], "boto3 bytes of {key:?}");
    }
    let cold_gets = s.object_gets();
    let total_chunks: usize = data.iter().map(|d| chunks(d.len())).sum();
    assert_eq!(cold_gets, total_chunks, "each chunk of each key once");

    // curl with its own encoding (per path segment), warm.
    for (i, key) in keys.iter().enumerate() {
        let url = s.url(key);
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--fail", "--globoff"]);
        if key.split('/').any(|seg| seg == "." || seg == "..") {
            cmd.arg("--path-as-is");
        }
        let out = run(cmd.arg(&url));
        assert_eq!(sha256_hex(&out), want[i], "curl bytes of {key:?} ({url})");
    }
    // curl given the key as it is, where the key needs no escaping to mean itself in a URL
    // path (no ' ', '%', '?', '#' or tab): curl sends it as it sees fit (UTF-8 included).
    for (i, key) in keys.iter().enumerate() {
        if key.contains([' ', '%', '?', '#', '\t']) {
            continue;
        }
        let url = format!("{edge}/{BUCKET}/{key}");
        let out =
            run(Command::new("curl").args(["-sS", "--fail", "--globoff", "--path-as-is", &url]));
        assert_eq!(sha256_hex(&out), want[i], "curl, unescaped {key:?}");
    }
    assert_eq!(s.object_gets(), cold_gets, "curl re-read from the origin");

    // Raw HEAD and a ranged GET of the dot-segment keys (no client rewrites them here).
    for (i, key) in keys.iter().enumerate() {
        let target = format!("/{BUCKET}/{}", encode_key(key));
        let r = raw_request(
            &s.orca.edge_addr(),
            "GET",
            &target,
            &[("Range", "bytes=1-5")],
        )
        .await
        .unwrap();
        assert_eq!(r.status, 206, "{target}");
        assert_eq!(r.body, &data[i][1..=5], "{target}");
    }

    // Malformed percent-encoding: 400 InvalidURI, never a guess at another key.
    for target in [
        format!("/{BUCKET}/bad%zz"),
        format!("/{BUCKET}/bad%2"),
        format!("/{BUCKET}/bad%"),
    ] {
        let r = raw_request(&s.orca.edge_addr(), "GET", &target, &[])
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{target}: {}", body_text(&r.body));
        assert!(
            body_text(&r.body).contains("<Code>InvalidURI</Code>"),
            "{target}: {}",
            body_text(&r.body)
        );
    }
    let out = run(Command::new("curl").args([
        "-sS",
        "--path-as-is",
        "-w",
        "\n%{http_code}",
        &format!("{edge}/{BUCKET}/bad%zz"),
    ]));
    let out = body_text(&out);
    assert!(
        out.ends_with("\n400") && out.contains("<Code>InvalidURI</Code>"),
        "curl bad%zz: {out}"
    );
    assert_eq!(s.object_gets(), cold_gets);
}

// ---------------------------------------------------------------------------------------------
// 3. Conditionals
// ---------------------------------------------------------------------------------------------

/// (case, request headers, status of a whole GET or HEAD, status of a ranged GET)
type ConditionalCase<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, u16);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditionals_answer_as_s3_without_origin_requests() {
    let s = stack(|c| c).await;
    let data = deterministic_bytes(3, 3 * MIB + 17);
    let etag = format!("\"{}\"", s.put("cond/object.bin", &data).await);
    let url = s.url("cond/object.bin");
    // Warm: every chunk in the store, the metadata pinned.
    let warm = http_get(&url, None).await.unwrap();
    assert_eq!(sha256_hex(&warm.body), sha256_hex(&data));
    let head = http_head(&url).await.unwrap();
    assert_eq!(head.header("etag"), Some(etag.as_str()));
    let lm_text = head.header("last-modified").unwrap().to_string();
    let lm = httpdate::parse_http_date(&lm_text).unwrap();
    let day = Duration::from_secs(86_400);
    let before = httpdate::fmt_http_date(lm - day);
    let after = httpdate::fmt_http_date(lm + day);
    // Every request that reached the origin, not only object GETs: a conditional answered by
    // a HEAD or a listing at the origin would be a miss too.
    let requests = s.origin_requests();

    let wrong = "\"00000000000000000000000000000000\"";
    let range = "bytes=100-199";
    let cases: Vec<ConditionalCase> = vec![
        ("If-Match right", vec![("If-Match", &etag)], 200, 206),
        ("If-Match *", vec![("If-Match", "*")], 200, 206),
        ("If-Match wrong", vec![("If-Match", wrong)], 412, 412),
        (
            "If-None-Match right",
            vec![("If-None-Match", &etag)],
            304,
            304,
        ),
        ("If-None-Match *", vec![("If-None-Match", "*")], 304, 304),
        (
            "If-None-Match wrong",
            vec![("If-None-Match", wrong)],
            200,
            206,
        ),
        (
            "If-Modified-Since Last-Modified",
            vec![("If-Modified-Since", &lm_text)],
            304,
            304,
        ),
        (
            "If-Modified-Since a day before",
            vec![("If-Modified-Since", &before)],
            200,
            206,
        ),
        (
            "If-Unmodified-Since Last-Modified",
            vec![("If-Unmodified-Since", &lm_text)],
            200,
            206,
        ),
        (
            "If-Unmodified-Since a day after",
            vec![("If-Unmodified-Since", &after)],
            200,
            206,
        ),
        (
            "If-Unmodified-Since a day before",
            vec![("If-Unmodified-Since", &before)],
            412,
            412,
        ),
        // S3's documented pairs: If-Match true wins over If-Unmodified-Since false; If-None-Match
        // false (the ETag matches) with If-Modified-Since true is a 304.
        (
            "If-Match right + If-Unmodified-Since before",
            vec![("If-Match", &etag), ("If-Unmodified-Since", &before)],
            200,
            206,
        ),
        (
            "If-None-Match right + If-Modified-Since before",
            vec![("If-None-Match", &etag), ("If-Modified-Since", &before)],
            304,
            304,
        ),
        (
            "If-Match wrong + If-None-Match right",
            vec![("If-Match", wrong), ("If-None-Match", &etag)],
            412,
            412,
        ),
        // If-Range: a match serves the range, a mismatch the whole object.
        ("If-Range right ETag", vec![("If-Range", &etag)], 200, 206),
        ("If-Range wrong ETag", vec![("If-Range", wrong)], 200, 200),
        (
            "If-Range Last-Modified",
            vec![("If-Range", &lm_text)],
            200,
            206,
        ),
        ("If-Range other date", vec![("If-Range", &before)], 200, 200),
    ];
    for (case, headers, whole_status, ranged_status) in &cases {
        // A HEAD with a Range answers as the GET would, without the body (S3 sends 206).
        for (method, ranged) in [
            ("GET", false),
            ("GET", true),
            ("HEAD", false),
            ("HEAD", true),
        ] {
            let mut h = headers.clone();
            if ranged {
                h.push(("Range", range));
            }
            let want = if ranged {
                *ranged_status
            } else {
                *whole_status
            };
            let r = http_request(method, &url, &h, None).await.unwrap();
            let what = format!("{case}, {method}{}", if ranged { " ranged" } else { "" });
            assert_eq!(r.status, want, "{what}: {}", r.text());
            match want {
                200 => {
                    assert_eq!(
                        r.header("content-length"),
                        Some(data.len().to_string().as_str()),
                        "{what}"
                    );
                    if method == "GET" {
                        assert_eq!(sha256_hex(&r.body), sha256_hex(&data), "{what}");
                    }
                }
                206 => {
                    if method == "GET" {
                        assert_eq!(r.body, &data[100..200], "{what}");
                    } else {
                        assert_eq!(r.header("content-length"), Some("100"), "{what}");
                    }
                    let content_range = format!("bytes 100-199/{}", data.len());
                    assert_eq!(
                        r.header("content-range"),
                        Some(content_range.as_str()),
                        "{what}"
                    );
                }
                304 => {
                    assert!(r.body.is_empty(), "{what}");
                    assert_eq!(r.header("etag"), Some(etag.as_str()), "{what}");
                }
                412 => {
                    if method == "GET" {
                        assert!(
                            r.text().contains("<Code>PreconditionFailed</Code>"),
                            "{what}: {}",
                            r.text()
                        );
                    }
                }
                _ => unreachable!(),
            }
        }
    }
    assert_eq!(
        s.origin_requests(),
        requests,
        "conditional requests on a warm object went to the origin: {:?}",
        s.proxy.counts().log[requests..]
            .iter()
            .map(|r| format!("{} {}", r.method, r.target))
            .collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Presigned URLs
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct PresignResult {
    url: String,
    style: String,
}

/// A presigned URL made by boto3 (`signature`: `s3v4` or `default`) is fetched twice with
/// curl, then through reqwest, ranged, unsigned and with a fresh signature: every fetch after
/// the first is served from the cache.
async fn presigned_fetches_share_the_cache(signature: &str, want_style: &str) {
    let s = stack(|c| c).await;
    let key = "presigned/data file.bin";
    let data = deterministic_bytes(4, 2 * MIB + MIB / 2);
    s.put(key, &data).await;
    let want = sha256_hex(&data);
    let edge = s.edge();
    let signed: PresignResult = run_script(
        client_script!("s3_presign.py"),
        &[&edge, BUCKET, key, signature],
    );
    assert_eq!(signed.style, want_style, "{}", signed.url);
    assert!(signed.url.starts_with(&edge), "{}", signed.url);

    let first = run(Command::new("curl").args(["-sS", "--fail-with-body", &signed.url]));
    assert_eq!(sha256_hex(&first), want, "first presigned fetch");
    let cold = s.proxy.counts().gets_with_range;
    assert_eq!(cold, chunks(data.len()), "each chunk once");
    let second = run(Command::new("curl").args(["-sS", "--fail-with-body", &signed.url]));
    assert_eq!(sha256_hex(&second), want, "second presigned fetch");
    assert_eq!(
        s.proxy.counts().gets_with_range,
        cold,
        "the second presigned fetch went to the origin"
    );

    let r = http_get(&signed.url, None).await.unwrap();
    assert_eq!((r.status, sha256_hex(&r.body)), (200, want.clone()));
    let r = http_get(&signed.url, Some("bytes=1048570-1048580"))
        .await
        .unwrap();
    assert_eq!((r.status, &r.body[..]), (206, &data[1048570..=1048580]));
    let r = http_get(&s.url(key), None).await.unwrap();
    assert_eq!((r.status, sha256_hex(&r.body)), (200, want.clone()));
    let again: PresignResult = run_script(
        client_script!("s3_presign.py"),
        &[&edge, BUCKET, key, signature],
    );
    let out = run(Command::new("curl").args(["-sS", "--fail-with-body", &again.url]));
    assert_eq!(sha256_hex(&out), want, "another signature");
    // A signed response-content-disposition override: applied, and still a cache hit.
    let disposition = "attachment; filename=\"data file.bin\"";
    let with_override: PresignResult = run_script(
        client_script!("s3_presign.py"),
        &[&edge, BUCKET, key, signature, disposition],
    );
    let r = http_get(&with_override.url, None).await.unwrap();
    assert_eq!((r.status, sha256_hex(&r.body)), (200, want.clone()));
    assert_eq!(
        r.headers
            .get("content-disposition")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        Some(disposition.to_string()),
        "{}",
        with_override.url
    );
    assert_eq!(s.proxy.counts().gets_with_range, cold);
    assert_eq!(
        s.orca
            .metric_value("orca_chunk_reads_total{source=\"origin\"}"),
        cold as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_sigv4_urls_are_cache_hits() {
    presigned_fetches_share_the_cache("s3v4", "v4").await;
}

/// boto3's `generate_presigned_url` without a configured signature version signs S3 URLs in
/// us-east-1 with SigV2 query parameters (`AWSAccessKeyId`, `Signature`, `Expires`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn presigned_sigv2_urls_from_boto3_defaults_are_cache_hits() {
    presigned_fetches_share_the_cache("default", "v2").await;
}

// ---------------------------------------------------------------------------------------------
// 5. Real clients: aws CLI, boto3's transfer manager, rclone, pyarrow
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_cp_and_sync_are_byte_exact_and_warm_runs_skip_the_origin() {
    let s = stack(|c| c).await;
    let edge = s.edge();
    // cp: bigger than the CLI's 8 MiB multipart threshold, so parallel ranged GETs.
    let big = deterministic_bytes(51, 10 * MIB + 4321);
    s.put("cp/big object.bin", &big).await;
    let dir = tempfile::tempdir().unwrap();
    for pass in ["cold", "warm"] {
        let target = dir.path().join(format!("cp-{pass}.bin"));
        run(Command::new("aws")
            .args(["--endpoint-url", &edge, "s3", "cp", "--only-show-errors"])
            .arg(format!("s3://{BUCKET}/cp/big object.bin"))
            .arg(&target));
        assert_eq!(
            sha256_hex(&std::fs::read(&target).unwrap()),
            sha256_hex(&big),
            "aws s3 cp {pass}"
        );
        assert_eq!(s.object_gets(), chunks(big.len()), "aws s3 cp {pass}");
    }
    let parts = s
        .orca
        .metric_value("orca_edge_requests_total{method=\"GET\",status=\"206\"}");
    assert!(
        parts >= 4.0,
        "aws s3 cp made {parts} ranged GETs in two runs"
    );

    // sync of a prefix: several files, one multi-chunk, nested, with a space and unicode.
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("a.txt", deterministic_bytes(52, 1234)),
        ("sub/b.bin", deterministic_bytes(53, 300_000)),
        ("big.bin", deterministic_bytes(54, 9 * MIB + 77)),
        ("space name.txt", deterministic_bytes(55, 10)),
        ("ünï/c.txt", deterministic_bytes(56, MIB + 1)),
    ];
    let mut want = BTreeMap::new();
    for (name, data) in &files {
        s.put(&format!("sync/{name}"), data).await;
        want.insert(name.to_string(), sha256_hex(data));
    }
    // Outside the prefix: must not be copied.
    s.put("syncx/not-me.txt", b"no").await;
    let listed = body_text(&run(Command::new("aws")
        .args(["--endpoint-url", &edge, "s3", "ls"])
        .arg(format!("s3://{BUCKET}/sync/"))));
    let mut names: Vec<&str> = listed
        .lines()
        .map(|l| {
            let l = l.trim_start();
            l.strip_prefix("PRE ")
                .unwrap_or_else(|| after_fields(l, 3))
                .trim()
        })
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["a.txt", "big.bin", "space name.txt", "sub/", "ünï/"],
        "aws s3 ls: {listed}"
    );
    let before = s.object_gets();
    let sync_chunks: usize = files.iter().map(|(_, d)| chunks(d.len())).sum();
    for pass in ["cold", "warm"] {
        let target = dir.path().join(format!("sync-{pass}"));
        run(Command::new("aws")
            .args(["--endpoint-url", &edge, "s3", "sync", "--only-show-errors"])
            .arg(format!("s3://{BUCKET}/sync/"))
            .arg(&target));
        assert_eq!(tree_digests(&target), want, "aws s3 sync {pass}");
        assert_eq!(
            s.object_gets(),
            before + sync_chunks,
            "aws s3 sync {pass}: origin GETs"
        );
    }
}

#[derive(Debug, Deserialize)]
struct DownloadResult {
    sha256: String,
    size: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_download_file_with_parallel_parts_is_byte_exact() {
    let s = stack(|c| c).await;
    let key = "transfer/parts.bin";
    let data = deterministic_bytes(6, 5 * MIB + 333);
    s.put(key, &data).await;
    let edge = s.edge();
    let dir = tempfile::tempdir().unwrap();
    for pass in ["cold", "warm"] {
        let dest = dir.path().join(pass);
        let r: DownloadResult = run_script(
            client_script!("s3_download.py"),
            &[&edge, BUCKET, key, dest.to_str().unwrap()],
        );
        assert_eq!(r.size, data.len(), "download_file {pass}");
        assert_eq!(r.sha256, sha256_hex(&data), "download_file {pass}");
        assert_eq!(
            s.object_gets(),
            chunks(data.len()),
            "download_file {pass}: origin GETs"
        );
    }
    // It did read in parts: more than one ranged GET reached the edge.
    let ranged = s
        .orca
        .metric_value("orca_edge_requests_total{method=\"GET\",status=\"206\"}");
    assert!(ranged >= 12.0, "download_file made {ranged} ranged GETs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rclone_copy_and_ls_through_orca() {
    let s = stack(|c| c).await;
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("rc/one.txt", deterministic_bytes(71, 4321)),
        ("rc/dir/two.bin", deterministic_bytes(72, 2 * MIB + 200)),
        ("rc/ünï space.txt", deterministic_bytes(73, 99)),
        ("other/three.txt", deterministic_bytes(74, 12)),
    ];
    for (key, data) in &files {
        s.put(key, data).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rclone.conf");
    std::fs::write(
        &config,
        format!(
            "[orca]\ntype = s3\nprovider = Other\nenv_auth = false\naccess_key_id = test\n\
             secret_access_key = test\nendpoint = {}\nregion = us-east-1\n",
            s.edge()
        ),
    )
    .unwrap();
    let rclone = |args: &[&str]| {
        let mut cmd = Command::new("rclone");
        cmd.arg("--config")
            .arg(&config)
            .args(["--retries", "1", "--low-level-retries", "1"])
            .args(args);
        run(&mut cmd)
    };

    let listed = body_text(&rclone(&["ls", &format!("orca:{BUCKET}")]));
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    for line in listed.lines() {
        let (size, name) = line.trim_start().split_once(' ').unwrap();
        got.insert(name.to_string(), size.parse().unwrap());
    }
    let want: BTreeMap<String, usize> = files
        .iter()
        .map(|(k, d)| (k.to_string(), d.len()))
        .collect();
    assert_eq!(got, want, "rclone ls");

    let want: BTreeMap<String, String> = files
        .iter()
        .filter_map(|(k, d)| {
            k.strip_prefix("rc/")
                .map(|n| (n.to_string(), sha256_hex(d)))
        })
        .collect();
    let rc_chunks: usize = files
        .iter()
        .filter(|(k, _)| k.starts_with("rc/"))
        .map(|(_, d)| chunks(d.len()))
        .sum();
    for pass in ["cold", "warm"] {
        let target = dir.path().join(pass);
        rclone(&[
            "copy",
            &format!("orca:{BUCKET}/rc"),
            target.to_str().unwrap(),
        ]);
        assert_eq!(tree_digests(&target), want, "rclone copy {pass}");
        assert_eq!(
            s.object_gets(),
            rc_chunks,
            "rclone copy {pass}: origin GETs"
        );
    }
}

#[derive(Debug, Deserialize)]
struct ParquetResult {
    rows: usize,
    row_groups: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyarrow_reads_parquet_through_orca() {
    let s = stack(|c| c).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table.parquet");
    let written: ParquetResult = run_script(
        client_script!("s3_parquet.py"),
        &["write", path.to_str().unwrap()],
    );
    assert!(written.row_groups >= 3, "{written:?}");
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 2 * MIB, "the file should span chunks");
    let key = "tables/t1.parquet";
    s.put(key, &bytes).await;
    let edge = s.edge();
    for pass in ["cold", "warm"] {
        let read: ParquetResult = run_script(
            client_script!("s3_parquet.py"),
            &["read", &edge, BUCKET, key],
        );
        assert_eq!(
            (read.rows, read.row_groups),
            (written.rows, written.row_groups),
            "pyarrow {pass}"
        );
        assert_eq!(
            s.object_gets(),
            chunks(bytes.len()),
            "pyarrow {pass}: origin GETs"
        );
    }
    // And the whole file, byte-exact.
    let r = http_get(&s.url(key), None).await.unwrap();
    assert_eq!(sha256_hex(&r.body), sha256_hex(&bytes));
}

// ---------------------------------------------------------------------------------------------
// 6. Virtual-hosted requests and the bucket allowlist
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_hosted_requests_and_the_bucket_allowlist() {
    // moto wants bucket names of three characters or more: bkt1 / bkt2 stand for b1 / b2.
    let s = stack(|c| c.extra_yaml("edge:\n  virtual_host_suffix: orca.test\n  buckets: [bkt1]\n"))
        .await;
    create_bucket(&s.moto().endpoint(), "bkt1").await;
    create_bucket(&s.moto().endpoint(), "bkt2").await;
    let data = deterministic_bytes(8, MIB + 5);
    put_object(&s.moto().endpoint(), "bkt1", "dir/key.bin", data.clone()).await;
    put_object(&s.moto().endpoint(), "bkt2", "key", b"secret".to_vec()).await;
    let addr = s.orca.edge_addr();
    let port = s.orca.ports().edge;
    let host = format!("bkt1.orca.test:{port}");

    let r = raw_with_host(&addr, "GET", "/dir/key.bin", &host).await;
    assert_eq!(r.status, 200, "{}", body_text(&r.body));
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    // reqwest with a Host header, ranged.
    let r = send(
        http_client()
            .get(format!("{}/dir/key.bin", s.edge()))
            .header("Host", &host)
            .header("Range", "bytes=1048570-1048580"),
    )
    .await
    .unwrap();
    assert_eq!((r.status, &r.body[..]), (206, &data[1048570..=1048580]));
    // Without a port, and HEAD of the bucket, and a listing.
    let r = raw_with_host(&addr, "HEAD", "/dir/key.bin", "bkt1.orca.test").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some(data.len().to_string().as_str())
    );
    let r = raw_with_host(&addr, "HEAD", "/", &host).await;
    assert_eq!(r.status, 200, "HeadBucket, virtual-hosted");
    let r = raw_with_host(&addr, "GET", "/?location", &host).await;
    assert_eq!(r.status, 200);
    assert!(
        body_text(&r.body).contains("<LocationConstraint"),
        "{}",
        body_text(&r.body)
    );
    let r = raw_with_host(&addr, "GET", "/?list-type=2&prefix=dir%2F", &host).await;
    assert_eq!(r.status, 200);
    assert!(
        body_text(&r.body).contains("<Key>dir/key.bin</Key>"),
        "{}",
        body_text(&r.body)
    );
    // Path-style keeps working next to it.
    let r = http_get(&s.orca.object_url("bkt1", "dir/key.bin"), None)
        .await
        .unwrap();
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));

    // Outside the allowlist: 403 AccessDenied, path-style or virtual-hosted, and no origin
    // request.
    let total = s.proxy.counts().total;
    for (target, host) in [
        ("/bkt2/key".to_string(), addr.clone()),
        ("/key".to_string(), format!("bkt2.orca.test:{port}")),
        (format!("/{BUCKET}/anything"), addr.clone()),
        ("/bkt2?list-type=2".to_string(), addr.clone()),
    ] {
        let r = raw_with_host(&addr, "GET", &target, &host).await;
        assert_eq!(r.status, 403, "{host}{target}: {}", body_text(&r.body));
        assert!(
            body_text(&r.body).contains("<Code>AccessDenied</Code>"),
            "{host}{target}: {}",
            body_text(&r.body)
        );
    }
    for (target, host) in [
        ("/bkt2".to_string(), addr.clone()),
        ("/".to_string(), format!("bkt2.orca.test:{port}")),
        ("/key".to_string(), format!("bkt2.orca.test:{port}")),
    ] {
        let r = raw_with_host(&addr, "HEAD", &target, &host).await;
        assert_eq!(r.status, 403, "HEAD {host}{target}");
    }
    assert_eq!(
        s.proxy.counts().total,
        total,
        "a refused bucket reached the origin"
    );

    // ListBuckets names the allowlist.
    let r = raw_with_host(&addr, "GET", "/", &addr).await;
    assert_eq!(r.status, 200);
    let xml = body_text(&r.body);
    assert!(xml.contains("<ListAllMyBucketsResult"), "{xml}");
    assert!(xml.contains("<Name>bkt1</Name>"), "{xml}");
    assert!(!xml.contains("bkt2") && !xml.contains(BUCKET), "{xml}");
    let out = body_text(&run(Command::new("aws").args([
        "--endpoint-url",
        &s.edge(),
        "s3",
        "ls",
    ])));
    assert_eq!(
        out.lines()
            .map(|l| l.split_whitespace().last().unwrap_or(""))
            .collect::<Vec<_>>(),
        ["bkt1"],
        "aws s3 ls: {out}"
    );
}

/// Host names are case-insensitive (RFC 9110 §4.2.3, RFC 3986 §3.2.2): `bkt1.Orca.TEST` names
/// the same virtual host as `bkt1.orca.test`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn virtual_hosted_host_names_are_case_insensitive() {
    let s = stack(|c| c.extra_yaml("edge:\n  virtual_host_suffix: orca.test\n")).await;
    create_bucket(&s.moto().endpoint(), "bkt1").await;
    let data = deterministic_bytes(12, 1000);
    put_object(&s.moto().endpoint(), "bkt1", "dir/key.bin", data.clone()).await;
    let port = s.orca.ports().edge;
    for host in [
        format!("bkt1.Orca.TEST:{port}"),
        "bkt1.orca.TEST".to_string(),
    ] {
        let r = raw_with_host(&s.orca.edge_addr(), "GET", "/dir/key.bin", &host).await;
        assert_eq!(r.status, 200, "Host: {host}: {}", body_text(&r.body));
        assert_eq!(sha256_hex(&r.body), sha256_hex(&data), "Host: {host}");
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Checksums
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct ChecksumResult {
    put_checksum: String,
    whole_sha256: String,
    whole_checksum: Option<String>,
    range_sha256: String,
    range_checksum: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_object_checksums_only_on_whole_object_reads() {
    let s = stack(|c| c).await;
    let key = "sums/object.bin";
    let data = deterministic_bytes(9, 2 * MIB + 99);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    std::fs::write(&file, &data).unwrap();
    let edge = s.edge();
    let origin = s.moto().endpoint();
    let (start, end) = (1000usize, MIB + 1000);
    let r: ChecksumResult = run_script(
        client_script!("s3_checksum.py"),
        &[
            &origin,
            &edge,
            BUCKET,
            key,
            file.to_str().unwrap(),
            &start.to_string(),
            &end.to_string(),
        ],
    );
    assert_eq!(r.whole_sha256, sha256_hex(&data));
    assert_eq!(
        r.whole_checksum.as_deref(),
        Some(r.put_checksum.as_str()),
        "boto3 got (and validated) the whole-object checksum"
    );
    assert_eq!(r.range_sha256, sha256_hex(&data[start..=end]));
    assert_eq!(r.range_checksum, None, "a checksum on a part");

    let url = s.url(key);
    let mode = ("x-amz-checksum-mode", "ENABLED");
    let whole = http_request("GET", &url, &[mode], None).await.unwrap();
    assert_eq!(whole.status, 200);
    assert_eq!(sha256_hex(&whole.body), sha256_hex(&data));
    assert_eq!(
        whole.header("x-amz-checksum-sha256"),
        Some(r.put_checksum.as_str())
    );
    let head = http_request("HEAD", &url, &[mode], None).await.unwrap();
    assert_eq!(
        head.header("x-amz-checksum-sha256"),
        Some(r.put_checksum.as_str()),
        "HEAD with checksum mode"
    );
    for range in ["bytes=0-99", "bytes=1048576-", "bytes=0-", "bytes=-10"] {
        let part = http_request("GET", &url, &[mode, ("Range", range)], None)
            .await
            .unwrap();
        assert_eq!(part.status, 206, "{range}");
        assert_eq!(
            part.header("x-amz-checksum-sha256"),
            None,
            "{range}: a whole-object checksum on a part"
        );
    }
    let plain = http_get(&url, None).await.unwrap();
    assert_eq!(
        plain.header("x-amz-checksum-sha256"),
        None,
        "a checksum without checksum mode"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Sub-resources and writes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_resources_are_not_implemented_and_writes_not_allowed() {
    let s = stack(|c| c).await;
    let data = deterministic_bytes(10, 1000);
    s.put("obj", &data).await;
    let edge = s.edge();
    let total = s.proxy.counts().total;

    for query in [
        "acl",
        "tagging",
        "versions",
        "uploads",
        "policy",
        "lifecycle",
    ] {
        for path in [format!("/{BUCKET}"), format!("/{BUCKET}/obj")] {
            let url = format!("{edge}{path}?{query}");
            let r = http_get(&url, None).await.unwrap();
            assert_eq!(r.status, 501, "GET {path}?{query}: {}", r.text());
            assert!(
                r.text().contains("<Code>NotImplemented</Code>"),
                "GET {path}?{query}: {}",
                r.text()
            );
            assert!(
                r.header("content-type").is_some_and(|t| t.contains("xml")),
                "GET {path}?{query}: {:?}",
                r.header("content-type")
            );
        }
    }
    let r = http_get(&format!("{edge}/{BUCKET}/obj?versionId=abc"), None)
        .await
        .unwrap();
    assert_eq!(r.status, 501, "versionId: {}", r.text());
    // ListBuckets without an allowlist.
    let r = http_get(&format!("{edge}/"), None).await.unwrap();
    assert_eq!(r.status, 501, "GET /: {}", r.text());
    assert!(r.text().contains("<Code>NotImplemented</Code>"));

    for (method, path) in [
        ("PUT", format!("/{BUCKET}/obj")),
        ("PUT", format!("/{BUCKET}/new")),
        ("DELETE", format!("/{BUCKET}/obj")),
        ("POST", format!("/{BUCKET}/obj?uploads")),
        ("PUT", format!("/{BUCKET}")),
        ("DELETE", format!("/{BUCKET}")),
        ("PUT", "/newbucket".to_string()),
    ] {
        let r = http_request(method, &format!("{edge}{path}"), &[], Some(b"x".to_vec()))
            .await
            .unwrap();
        assert_eq!(r.status, 405, "{method} {path}: {}", r.text());
        assert!(
            r.text().contains("<Code>MethodNotAllowed</Code>"),
            "{method} {path}: {}",
            r.text()
        );
    }
    assert_eq!(
        s.proxy.counts().total,
        total,
        "a refused request reached the origin"
    );
    // Nothing changed at the origin.
    assert_eq!(
        get_object(&s.moto().endpoint(), BUCKET, "obj").await,
        Some(data.clone())
    );
    assert_eq!(head_object(&s.moto().endpoint(), BUCKET, "new").await, None);

    // What is served next to them: response-* overrides.
    let r = http_get(
        &format!(
            "{}?response-content-type=text%2Fplain&response-content-disposition=attachment%3B%20filename%3D%22x.txt%22&response-cache-control=no-cache",
            s.url("obj")
        ),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, data);
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(
        r.header("content-disposition"),
        Some("attachment; filename=\"x.txt\"")
    );
    assert_eq!(r.header("cache-control"), Some("no-cache"));
}

// ---------------------------------------------------------------------------------------------
// 9. Object headers
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_headers_are_the_origins() {
    let s = stack(|c| c).await;
    let key = "headers/report.csv";
    let data = deterministic_bytes(11, MIB + 10);
    put_object_with(
        &s.moto().endpoint(),
        BUCKET,
        key,
        data.clone(),
        &[
            ("Content-Type", "text/csv; charset=utf-8"),
            ("Cache-Control", "max-age=60"),
            ("Content-Disposition", "attachment; filename=\"report.csv\""),
            ("Content-Language", "de-CH"),
            ("Expires", "Thu, 01 Dec 2044 16:00:00 GMT"),
            ("x-amz-meta-owner", "team-a"),
            ("x-amz-meta-run-id", "42"),
        ],
    )
    .await;
    let origin = s3_head(&object_url(&s.moto().endpoint(), BUCKET, key))
        .await
        .unwrap();
    assert_eq!(origin.status, 200);
    let names = [
        "content-length",
        "etag",
        "last-modified",
        "content-type",
        "cache-control",
        "content-disposition",
        "content-language",
        "expires",
        "x-amz-meta-owner",
        "x-amz-meta-run-id",
    ];
    // The origin has every one of them: a header both sides lack would pass unseen.
    for name in names {
        assert!(origin.header(name).is_some(), "the origin has no {name}");
    }
    for method in ["HEAD", "GET"] {
        let r = http_request(method, &s.url(key), &[], None).await.unwrap();
        assert_eq!(r.status, 200, "{method}");
        for name in names {
            assert_eq!(
                r.header(name),
                origin.header(name),
                "{method}: header {name}"
            );
        }
        if method == "GET" {
            assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
        }
    }
    // A ranged GET carries them too.
    let r = http_get(&s.url(key), Some("bytes=5-9")).await.unwrap();
    assert_eq!((r.status, &r.body[..]), (206, &data[5..=9]));
    for name in ["etag", "content-type", "x-amz-meta-owner", "cache-control"] {
        assert_eq!(r.header(name), origin.header(name), "ranged: header {name}");
    }
}
