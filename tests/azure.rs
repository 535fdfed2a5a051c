//! Orca in front of Azure Blob Storage, played by Azurite (installed by hack/install-azurite.sh,
//! found at `$AZURITE_BLOB` or `~/.cache/orca-azurite/node_modules/.bin/azurite-blob`).
//!
//! Every test starts its own Azurite on a free loopback port, seeds it with requests signed by
//! Orca's own Shared Key signer, puts a counting/fault proxy in front of it and reads through an
//! `orca` process with S3 clients (HTTP, boto3, the aws CLI). Bytes are compared by sha256;
//! origin requests are counted at the proxy (Azure ranges travel in `x-ms-range`, so ranged
//! GETs are counted by that header, not by the proxy's `Range`-based counter).

#![allow(clippy::unwrap_used)]

mod common;

use ::orca::net::encode::encode_query_value;
use ::orca::origin::azureblob::sign::{SharedKey, API_VERSION};
use common::azurite::{AzClient, Azurite, ACCOUNT, CONTAINER, KEY, WRONG_KEY};
use common::cases;
use common::*;
use std::collections::BTreeMap;
use std::process::Command;

const MIB: usize = 1 << 20;
async fn stack(configure: impl FnOnce(OrcaConfig) -> OrcaConfig) -> Stack {
    Stack::start(Origin::Azure, CONTAINER, configure).await
}

/// Names S3 clients use that a URL mangles easily, and the 1024-character limit.
fn tricky_names() -> Vec<String> {
    vec![
        "with space/and+plus%percent.bin".to_string(),
        "ünïcødé/日本語 ✓.txt".to_string(),
        "runs//of///slashes/".to_string() + "x",
        "q&a=<tag>'\"#?.bin".to_string(),
        format!("long/{}", "n".repeat(1024 - 5)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_and_warm_reads_are_byte_exact_with_s3_headers() {
    let s = stack(|c| c).await;
    cases::cold_then_warm_reads(&s).await;

    // Names with spaces, unicode, '+', '%', runs of '/', XML and URL specials, 1024 characters.
    for (i, key) in tricky_names().iter().enumerate() {
        let data = deterministic_bytes(100 + i as u64, 1000 + i);
        s.az().put_blob(CONTAINER, key, &data).await;
        let r = http_get(&s.url(key), None).await.unwrap();
        assert_eq!(r.status, 200, "{key}: {}", r.text());
        assert_eq!(sha256_hex(&r.body), sha256_hex(&data), "{key}");
    }

    // HEAD: size, quoted ETag, Last-Modified, content headers and metadata as S3 names them.
    let data = deterministic_bytes(9, 4321);
    let etag = s
        .az()
        .put_blob_with(
            CONTAINER,
            "meta/doc.txt",
            &data,
            &[
                ("x-ms-blob-content-type", "text/plain; charset=utf-8"),
                ("x-ms-blob-cache-control", "max-age=60"),
                ("x-ms-blob-content-language", "en"),
                ("x-ms-meta-color", "blue"),
                ("x-ms-meta-Owner", "team a"),
            ],
        )
        .await;
    let props = s.az().properties(CONTAINER, "meta/doc.txt").await;
    let h = http_head(&s.url("meta/doc.txt")).await.unwrap();
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-length"), Some("4321"));
    assert_eq!(h.header("etag"), Some(format!("\"{etag}\"").as_str()));
    assert_eq!(
        h.header("last-modified"),
        Some(props.header("last-modified").as_str())
    );
    assert_eq!(h.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(h.header("cache-control"), Some("max-age=60"));
    assert_eq!(h.header("content-language"), Some("en"));
    assert_eq!(h.header("x-amz-meta-color"), Some("blue"));
    assert_eq!(h.header("x-amz-meta-owner"), Some("team a"));
    assert_eq!(h.header("accept-ranges"), Some("bytes"));
    assert!(h.header("x-ms-meta-color").is_none());
    let g = http_get(&s.url("meta/doc.txt"), None).await.unwrap();
    assert_eq!(g.header("etag"), h.header("etag"));
    assert_eq!(g.header("x-amz-meta-color"), Some("blue"));

    // Missing blob, missing container, a bucket name no container can have.
    let r = http_get(&s.url("no/such/blob"), None).await.unwrap();
    assert_eq!(r.status, 404);
    assert!(r.text().contains("<Code>NoSuchKey</Code>"), "{}", r.text());
    let r = http_get(&s.orca.object_url("nosuchcontainer", "k"), None)
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert!(
        r.text().contains("<Code>NoSuchBucket</Code>"),
        "{}",
        r.text()
    );
    let r = http_get(&s.orca.object_url("Not.A.Container", "k"), None)
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert!(
        r.text().contains("<Code>NoSuchBucket</Code>"),
        "{}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_are_answered_as_s3_does() {
    let s = stack(|c| c).await;
    cases::ranges_are_answered_as_s3_does(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_and_append_blobs_are_501_and_remembered() {
    let s = stack(|c| c.negative_ttl("30s")).await;
    s.az().put_page_blob(CONTAINER, "disk.vhd").await;
    s.az().put_append_blob(CONTAINER, "app.log").await;
    for key in ["disk.vhd", "app.log"] {
        for _ in 0..3 {
            let r = http_get(&s.url(key), None).await.unwrap();
            assert_eq!(r.status, 501, "{key}: {}", r.text());
            assert!(
                r.text().contains("<Code>UnsupportedBlobType</Code>"),
                "{}",
                r.text()
            );
        }
        let h = http_head(&s.url(key)).await.unwrap();
        assert_eq!(h.status, 501);
        assert_eq!(
            s.requests_for("HEAD", key),
            1,
            "{key}: a second origin request"
        );
        assert_eq!(s.requests_for("GET", key), 0, "{key}: bytes were asked for");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_refused_and_readiness_follows_the_origin() {
    // A key the account does not have: 502 OriginAuthFailed, never a 200; /readyz false at 3.
    let s = Stack::start_azure(WRONG_KEY, CONTAINER, |c| c).await;
    s.az().put_blob(CONTAINER, "k", b"secret bytes").await;
    assert_eq!(s.orca.ops_get("/readyz").0, 200);
    for _ in 0..3 {
        let r = http_get(&s.url("k"), None).await.unwrap();
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(
            r.text().contains("<Code>OriginAuthFailed</Code>"),
            "{}",
            r.text()
        );
    }
    let (status, body) = s.orca.ops_get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("credentials"), "{body}");
    let r = http_get(
        &format!("{}/{CONTAINER}?list-type=2", s.orca.edge_url()),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(s.origin_gets(), 0);
    drop(s);

    // The right key, and the origin refusing three HEADs in a row (injected): not ready; the
    // next success makes it ready again, in the same process.
    let s = stack(|c| c).await;
    let data = deterministic_bytes(3, 1000);
    s.az().put_blob(CONTAINER, "k", &data).await;
    s.proxy
        .push_fault(FaultRule::new(Fault::Status(403)).method("HEAD").times(3));
    for _ in 0..3 {
        let r = http_get(&s.url("k"), None).await.unwrap();
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(r.text().contains("OriginAuthFailed"), "{}", r.text());
    }
    assert_eq!(s.orca.ops_get("/readyz").0, 503);
    let r = http_get(&s.url("k"), None).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, data);
    assert_eq!(s.orca.ops_get("/readyz").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_blob_is_served_after_the_ttl_and_never_mixed() {
    let s = stack(|c| c.metadata_ttl("1s").readahead(2)).await;
    cases::a_replaced_object_is_served_after_the_ttl_and_never_mixed(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_after_the_first_byte_aborts_and_is_never_stored() {
    let s = stack(|c| c).await;
    cases::a_body_cut_after_the_first_byte_aborts_and_is_never_stored(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_right_after_the_origin_header_fails_cleanly_without_a_second_writer() {
    let s = stack(|c| c).await;
    cases::a_cut_right_after_the_origin_header_fails_cleanly_without_a_second_writer(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_never_answers_is_a_504_after_three_attempts_per_client() {
    let s = stack(|c| c.extra_yaml(cases::ONE_SECOND_TIMEOUT)).await;
    cases::an_origin_that_never_answers_is_a_504_after_three_attempts_per_client(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_reads_fetch_each_chunk_once() {
    let s = stack(|c| c).await;
    cases::concurrent_cold_reads_fetch_each_chunk_once(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_origin_errors_are_retried() {
    let s = stack(|c| c).await;
    let data = deterministic_bytes(4, 2 * MIB + 1);
    s.az().put_blob(CONTAINER, "flaky", &data).await;
    s.proxy
        .push_fault(FaultRule::new(Fault::Status(503)).method("HEAD"));
    s.proxy.push_fault(
        FaultRule::new(Fault::Status(500))
            .method("GET")
            .path_contains("/flaky")
            .times(2),
    );
    s.proxy
        .push_fault(FaultRule::new(Fault::Status(503)).path_contains("comp=list"));
    let r = http_get(&s.url("flaky"), None).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    let r = http_get(
        &format!("{}/{CONTAINER}?list-type=2", s.orca.edge_url()),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("<Key>flaky</Key>"), "{}", r.text());
    assert_eq!(s.proxy.pending_faults(), 0);
}

/// An account SAS (`ss=b`, `srt=sco`, `sp=rl`) for Azurite, signed with the account key as
/// Azure's 2020-12-06+ account SAS string-to-sign prescribes.
fn account_sas(key: &str) -> String {
    let expiry = "2099-01-01T00:00:00Z";
    let sts = format!("{ACCOUNT}\nrl\nb\nsco\n\n{expiry}\n\n\n{API_VERSION}\n\n");
    let sig = SharedKey::new(ACCOUNT, key).unwrap().sign(&sts).unwrap();
    format!(
        "sv={API_VERSION}&ss=b&srt=sco&sp=rl&se={}&sig={}",
        encode_query_value(expiry),
        encode_query_value(&sig)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sas_token_reads_and_lists_and_a_bad_one_is_refused() {
    let azurite = Azurite::start();
    let az = AzClient::new(&azurite);
    az.create_container(CONTAINER).await;
    let data = deterministic_bytes(8, 3 * MIB + 7);
    az.put_blob(CONTAINER, "dir/sas blob+1", &data).await;
    let proxy = FaultProxy::start(&azurite.addr());
    let endpoint = format!("{}/{ACCOUNT}", proxy.endpoint());
    let config = |sas: &str| {
        OrcaConfig::new(&endpoint).extra_yaml(&format!(
            "origin:\n  id: az-sas\n  driver: azureblob\n  azureblob:\n    account: {ACCOUNT}\n    endpoint: {endpoint}\n    sas_token: \"?{sas}\"\n"
        ))
    };
    let sas = account_sas(KEY);
    let sig = sas.rsplit_once("sig=").unwrap().1.to_string();
    let orca = OrcaProcess::start(config(&sas));
    let r = http_get(&orca.object_url(CONTAINER, "dir/sas blob+1"), None)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
    let r = http_get(
        &format!("{}/{CONTAINER}?list-type=2&prefix=dir%2F", orca.edge_url()),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("<Key>dir/sas blob+1</Key>"),
        "{}",
        r.text()
    );
    let log = proxy.counts().log;
    assert!(!log.is_empty());
    for req in &log {
        assert!(req.header("authorization").is_none(), "{req:?}");
        assert!(
            req.target.contains("&sig=") || req.target.contains("?sig="),
            "{req:?}"
        );
    }
    // Secrets stay out of the log (debug level here), whether encoded or not.
    let text = orca.log();
    assert!(!text.contains(&sig), "the SAS signature was logged");
    assert!(!text.contains(
        &sig.replace("%2B", "+")
            .replace("%2F", "/")
            .replace("%3D", "=")
    ));
    drop(orca);

    let wrong_sas = account_sas(WRONG_KEY);
    let wrong_sig = wrong_sas.rsplit_once("sig=").unwrap().1.to_string();
    let wrong = OrcaProcess::start(config(&wrong_sas));
    let r = http_get(&wrong.object_url(CONTAINER, "dir/sas blob+1"), None)
        .await
        .unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.text().contains("<Code>OriginAuthFailed</Code>"),
        "{}",
        r.text()
    );
    assert!(
        !wrong.log().contains(&wrong_sig),
        "the SAS signature was logged"
    );
}

/// Pages listings through Orca with boto3 (v2 and v1, prefixes, delimiters, start-after, small
/// MaxKeys) and compares every result with what S3 would list for the uploaded set, given on
/// stdin as {key: [size, etag]}.
const LISTING: &str = r#"
import sys, json, boto3, datetime
from botocore.config import Config
from botocore.exceptions import ClientError
edge, bucket, missing = sys.argv[1:4]
uploaded = json.loads(sys.stdin.read())
s3 = boto3.client("s3", endpoint_url=edge, region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test",
                  config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}))
keys = sorted(uploaded)  # code point order == UTF-8 byte order

def expect(prefix="", delimiter="", after=""):
    contents, prefixes = [], []
    for k in keys:
        if not k.startswith(prefix):
            continue
        if delimiter:
            i = k.find(delimiter, len(prefix))
            if i >= 0:
                p = k[:i + len(delimiter)]
                if p > after and p not in prefixes:
                    prefixes.append(p)
                continue
        if k > after:
            contents.append([k, uploaded[k][0], '"' + uploaded[k][1] + '"'])
    return contents, prefixes

def check_page(r, max_keys):
    n = len(r.get("Contents", [])) + len(r.get("CommonPrefixes", []))
    assert n <= max_keys, (n, max_keys)
    for o in r.get("Contents", []):
        assert isinstance(o["LastModified"], datetime.datetime), o
    return n

def v2(max_keys, **kw):
    contents, prefixes, pages, token = [], [], 0, None
    for _ in range(200):
        args = dict(kw, MaxKeys=max_keys)
        if token:
            args["ContinuationToken"] = token
        r = s3.list_objects_v2(Bucket=bucket, **args)
        pages += 1
        n = check_page(r, max_keys)
        assert r["KeyCount"] == n, (r["KeyCount"], n)
        contents += [[o["Key"], o["Size"], o["ETag"]] for o in r.get("Contents", [])]
        prefixes += [p["Prefix"] for p in r.get("CommonPrefixes", [])]
        if not r["IsTruncated"]:
            assert "NextContinuationToken" not in r
            return contents, prefixes, pages
        token = r["NextContinuationToken"]
    raise Exception("too many pages")

def v1(max_keys, **kw):
    contents, prefixes, pages, marker = [], [], 0, kw.pop("Marker", None)
    for _ in range(200):
        args = dict(kw, MaxKeys=max_keys)
        if marker:
            args["Marker"] = marker
        r = s3.list_objects(Bucket=bucket, **args)
        pages += 1
        check_page(r, max_keys)
        contents += [[o["Key"], o["Size"], o["ETag"]] for o in r.get("Contents", [])]
        prefixes += [p["Prefix"] for p in r.get("CommonPrefixes", [])]
        if not r["IsTruncated"]:
            return contents, prefixes, pages
        marker = r.get("NextMarker") or r["Contents"][-1]["Key"]
    raise Exception("too many pages")

def v1_by_last_key(max_keys):
    # A client that ignores NextMarker and resumes after the last key, as S3 allows.
    contents, pages, marker = [], 0, None
    for _ in range(200):
        args = {"MaxKeys": max_keys}
        if marker:
            args["Marker"] = marker
        r = s3.list_objects(Bucket=bucket, **args)
        pages += 1
        contents += [[o["Key"], o["Size"], o["ETag"]] for o in r.get("Contents", [])]
        if not r["IsTruncated"]:
            return contents, [], pages
        marker = r["Contents"][-1]["Key"]
    raise Exception("too many pages")

cases = {
    "v2": (v2, 4, {}, {}),
    "v2-default-max": (v2, 1000, {}, {}),
    "v2-prefix": (v2, 3, {"Prefix": "dir/"}, {"prefix": "dir/"}),
    "v2-delimiter": (v2, 2, {"Delimiter": "/"}, {"delimiter": "/"}),
    "v2-prefix-delimiter": (v2, 2, {"Prefix": "dir/", "Delimiter": "/"}, {"prefix": "dir/", "delimiter": "/"}),
    "v2-unicode-prefix": (v2, 1, {"Prefix": "ünï"}, {"prefix": "ünï"}),
    "v2-start-after": (v2, 3, {"StartAfter": "dir/m"}, {"after": "dir/m"}),
    "v2-start-after-delimiter": (v2, 2, {"StartAfter": "dir/", "Delimiter": "/"}, {"after": "dir/", "delimiter": "/"}),
    "v1": (v1, 4, {}, {}),
    "v1-delimiter": (v1, 2, {"Delimiter": "/"}, {"delimiter": "/"}),
    "v1-prefix-delimiter": (v1, 3, {"Prefix": "dir/", "Delimiter": "/"}, {"prefix": "dir/", "delimiter": "/"}),
    "v1-marker": (v1, 5, {"Marker": "dir/m"}, {"after": "dir/m"}),
    "v1-by-last-key": (lambda m: v1_by_last_key(m), 3, None, {}),
}
pages = {}
for name, (fn, max_keys, kw, exp) in cases.items():
    got = fn(max_keys) if kw is None else fn(max_keys, **kw)
    want = expect(**exp)
    assert [got[0], got[1]] == [want[0], want[1]], f"{name}:\n got  {got[:2]}\n want {want}"
    pages[name] = got[2]

s3.head_bucket(Bucket=bucket)
for call in (lambda: s3.head_bucket(Bucket=missing), lambda: s3.list_objects_v2(Bucket=missing)):
    try:
        call()
        raise Exception("a missing container answered")
    except ClientError as e:
        assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 404, e.response
print(json.dumps(pages, sort_keys=True))
"#;

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_through_boto3_match_the_upload() {
    let s = stack(|c| c).await;
    let mut names: Vec<String> = [
        "a.txt",
        "b b.txt",
        "dir/a",
        "dir/b+c",
        "dir/m 1",
        "dir/n%41",
        "dir/q&a<b>.txt",
        "dir/sub/x",
        "dir/sub/y",
        "dir/sub2/z",
        "dir/ü/ñ.bin",
        "dir//double",
        "e/1",
        "e/2",
        "e/3",
        "x+y",
        "z",
        "zz/top",
        "ünï",
        "ünïcode/k",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    names.extend((0..6).map(|i| format!("f/{i:02}")));
    let mut uploaded = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let data = deterministic_bytes(i as u64, 10 + i * 7);
        let etag = s.az().put_blob(CONTAINER, name, &data).await;
        uploaded.insert(name.clone(), (data.len(), etag));
    }
    let json = format!(
        "{{{}}}",
        uploaded
            .iter()
            .map(|(k, (size, etag))| format!("{}: [{size}, {}]", json_str(k), json_str(etag)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let edge = s.orca.edge_url();
    let out = run_python(LISTING, &[&edge, CONTAINER, "nosuchcontainer"], &json);
    let pages: BTreeMap<String, u64> = out
        .trim()
        .trim_matches(|c| c == '{' || c == '}')
        .split(", ")
        .map(|kv| {
            let (k, v) = kv.split_once(": ").unwrap();
            (k.trim_matches('"').to_string(), v.parse().unwrap())
        })
        .collect();
    for case in ["v2", "v1", "v2-delimiter", "v1-delimiter", "v2-prefix"] {
        assert!(pages[case] >= 3, "{case}: only {} pages", pages[case]);
    }
    assert_eq!(pages["v2-default-max"], 1);
    let s3_pages: u64 = pages.values().sum();
    let azure_pages = s
        .proxy
        .counts()
        .log
        .iter()
        .filter(|r| r.target.contains("comp=list"))
        .count() as u64;
    // One List Blobs request per S3 page (Azure's page ends where S3's does), plus the listing
    // of the missing container.
    assert!(
        azure_pages <= s3_pages + 1,
        "{azure_pages} List Blobs requests for {s3_pages} S3 pages"
    );

    // Without encoding-type the XML escapes what it must; with it, keys are percent-encoded.
    let url = format!(
        "{edge}/{CONTAINER}?list-type=2&prefix={}",
        encode_query_value("dir/q")
    );
    let r = http_get(&url, None).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let xml = r.text();
    assert!(xml.contains("<Key>dir/q&amp;a&lt;b&gt;.txt</Key>"), "{xml}");
    assert!(xml.contains("<KeyCount>1</KeyCount>"), "{xml}");
    assert!(xml.contains("<IsTruncated>false</IsTruncated>"), "{xml}");
    assert!(
        xml.contains(&format!(
            "<ETag>&quot;{}&quot;</ETag>",
            uploaded["dir/q&a<b>.txt"].1
        )),
        "{xml}"
    );
    let r = http_get(&format!("{url}&encoding-type=url"), None)
        .await
        .unwrap();
    let xml = r.text();
    assert!(xml.contains("<Key>dir/q%26a%3Cb%3E.txt</Key>"), "{xml}");
    assert!(xml.contains("<EncodingType>url</EncodingType>"), "{xml}");
    assert!(
        regex_like_s3_time(&xml),
        "LastModified is not in S3's format: {xml}"
    );
}

/// `<LastModified>YYYY-MM-DDTHH:MM:SS.000Z</LastModified>`.
fn regex_like_s3_time(xml: &str) -> bool {
    let Some(start) = xml.find("<LastModified>") else {
        return false;
    };
    let value = &xml[start + "<LastModified>".len()..];
    let Some(end) = value.find("</LastModified>") else {
        return false;
    };
    let v = &value.as_bytes()[..end];
    v.len() == 24
        && v.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_and_boto3_list_and_download_byte_exact() {
    let s = stack(|c| c).await;
    // Larger than the aws CLI's 8 MiB multipart threshold: it reads with parallel ranges.
    let big = deterministic_bytes(42, 10 * MIB + 12345);
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("dir/data file+1.bin", big.clone()),
        ("dir/small.txt", b"small".to_vec()),
        ("dir/ünï/deep.bin", deterministic_bytes(5, MIB + 3)),
    ];
    for (name, data) in &files {
        s.az().put_blob(CONTAINER, name, data).await;
    }
    let edge = s.orca.edge_url();
    let listing = String::from_utf8(run_client(
        Command::new("aws")
            .args(["--endpoint-url", &edge, "s3", "ls", "--recursive"])
            .arg(format!("s3://{CONTAINER}/")),
    ))
    .unwrap();
    for (name, data) in &files {
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!(" {name}")))
            .unwrap_or_else(|| panic!("{name} not listed:\n{listing}"));
        assert!(line.contains(&format!(" {} ", data.len())), "{line}");
    }
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("one.bin");
    run_client(
        Command::new("aws")
            .args(["--endpoint-url", &edge, "s3", "cp", "--only-show-errors"])
            .arg(format!("s3://{CONTAINER}/dir/data file+1.bin"))
            .arg(&target),
    );
    assert_eq!(
        sha256_hex(&std::fs::read(&target).unwrap()),
        sha256_hex(&big)
    );
    let tree = dir.path().join("tree");
    run_client(
        Command::new("aws")
            .args([
                "--endpoint-url",
                &edge,
                "s3",
                "cp",
                "--recursive",
                "--only-show-errors",
            ])
            .arg(format!("s3://{CONTAINER}/dir/"))
            .arg(&tree),
    );
    for (name, data) in &files {
        let local = tree.join(name.strip_prefix("dir/").unwrap());
        assert_eq!(
            sha256_hex(&std::fs::read(&local).unwrap()),
            sha256_hex(data),
            "{name}"
        );
    }
    let gets = s.origin_gets();
    assert_eq!(gets, 11 + 1 + 2, "each chunk once, whatever the client");

    let script = format!(
        "import boto3, hashlib, sys\n\
         s3 = boto3.client('s3', endpoint_url='{edge}')\n\
         pages = s3.get_paginator('list_objects_v2').paginate(\n\
         \x20   Bucket='{CONTAINER}', Prefix='dir/', PaginationConfig={{'PageSize': 1}})\n\
         for page in pages:\n\
         \x20   for o in page.get('Contents', []):\n\
         \x20       body = s3.get_object(Bucket='{CONTAINER}', Key=o['Key'])['Body'].read()\n\
         \x20       assert len(body) == o['Size']\n\
         \x20       sys.stdout.write(hashlib.sha256(body).hexdigest() + '\\t' + o['Key'] + '\\n')\n"
    );
    let out =
        String::from_utf8(run_client(Command::new("python3").arg("-c").arg(&script))).unwrap();
    let mut got: Vec<(String, String)> = out
        .lines()
        .map(|l| {
            let (h, k) = l.split_once('\t').unwrap();
            (k.to_string(), h.to_string())
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> = files
        .iter()
        .map(|(n, d)| (n.to_string(), sha256_hex(d)))
        .collect();
    want.sort();
    assert_eq!(got, want, "boto3 list + get_object");
    assert_eq!(s.origin_gets(), gets, "boto3's reads were all warm");
}

#[test]
fn the_azure_example_configuration_is_valid() {
    let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/orca-azure.yaml");
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(conf)
        .unwrap()
        .replace("./data/cache", &dir.path().join("cache").to_string_lossy());
    let path = dir.path().join("orca.yaml");
    std::fs::write(&path, text).unwrap();
    let check = |key: Option<&str>| {
        let mut cmd = Command::new(orca_bin());
        cmd.args(["-t", "--config"])
            .arg(&path)
            .env_remove("AZURE_STORAGE_KEY");
        if let Some(k) = key {
            cmd.env("AZURE_STORAGE_KEY", k);
        }
        run_bounded(&mut cmd, None, CLIENT_DEADLINE)
    };
    let out = check(Some(KEY));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = check(None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("origin.azureblob"));
    let out = check(Some("not base64!"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("base64"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
