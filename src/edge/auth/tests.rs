//! Unit tests of the verifier: AWS's documented SigV4 examples for S3, requests signed by the
//! `aws-sigv4` signer (a second, independent implementation of the canonical request), and
//! every refusal with S3's code.

#![allow(clippy::unwrap_used)]

use super::*;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest,
    SignatureLocation, SigningSettings, UriPathNormalizationMode,
};
use aws_sigv4::sign::v4 as sigv4;

/// The key of AWS's documentation examples.
const DOC_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
const DOC_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

fn key(id: &str, secret: &str, buckets: BucketGrant) -> ClientKey {
    ClientKey {
        access_key_id: id.into(),
        secret_access_key: secret.into(),
        buckets,
    }
}

fn auth(required: bool) -> EdgeAuth {
    EdgeAuth::new(&EdgeAuthConfig {
        required,
        credentials_file: Some("/nonexistent/keys.yaml".into()),
        keys: vec![
            key(
                DOC_KEY,
                DOC_SECRET,
                BucketGrant::Only(vec!["examplebucket".into()]),
            ),
            key("AKIDOTHER", "other-secret", BucketGrant::Any),
        ],
    })
}

/// `YYYYMMDDTHHMMSSZ` as a time.
fn at(stamp: &str) -> SystemTime {
    parse_amz_date(stamp).unwrap()
}

fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> RequestHeader {
    let mut r = RequestHeader::build(method, target.as_bytes(), None).unwrap();
    for (n, v) in headers {
        r.append_header(n.to_string(), *v).unwrap();
    }
    r
}

fn code(result: Result<Access, S3Error>) -> (u16, &'static str, String) {
    let e = result.unwrap_err();
    (e.status, e.code, e.message)
}

fn key_of(result: Result<Access, S3Error>) -> String {
    match result {
        Ok(Access::Key(k)) => k.access_key_id.clone(),
        Ok(Access::Open) => "open".into(),
        Err(e) => panic!("refused: {e}"),
    }
}

/// AWS's "GET Object" example (virtual-hosted, with a Range header), from "Signature
/// Calculations for the Authorization Header" in the S3 API reference.
fn doc_get_object(signature: &str) -> RequestHeader {
    let authz = format!(
        "AWS4-HMAC-SHA256 Credential={DOC_KEY}/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature={signature}"
    );
    request(
        "GET",
        "/test.txt",
        &[
            ("Host", "examplebucket.s3.amazonaws.com"),
            ("Authorization", &authz),
            ("Range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
        ],
    )
}

const DOC_GET_SIGNATURE: &str = "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41";

#[test]
fn aws_documented_examples_verify() {
    let a = auth(true);
    let now = at("20130524T000500Z");
    assert_eq!(
        key_of(a.check_at(&doc_get_object(DOC_GET_SIGNATURE), now)),
        DOC_KEY
    );

    // "GET Bucket Lifecycle": a sub-resource without a value.
    let lifecycle = request(
        "GET",
        "/?lifecycle",
        &[
            ("Host", "examplebucket.s3.amazonaws.com"),
            ("Authorization", &format!("AWS4-HMAC-SHA256 Credential={DOC_KEY}/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;x-amz-content-sha256;x-amz-date,Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543")),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
        ],
    );
    assert_eq!(key_of(a.check_at(&lifecycle, now)), DOC_KEY);

    // "Get Bucket (List Objects)": parameters sorted by name in the canonical query.
    let list = request(
        "GET",
        "/?max-keys=2&prefix=J",
        &[
            ("Host", "examplebucket.s3.amazonaws.com"),
            ("Authorization", &format!("AWS4-HMAC-SHA256 Credential={DOC_KEY}/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;x-amz-content-sha256;x-amz-date,Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
        ],
    );
    assert_eq!(key_of(a.check_at(&list, now)), DOC_KEY);

    // "Authenticating Requests: Using Query Parameters": the presigned GET example, valid 24 h.
    let presigned = format!(
        "/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={DOC_KEY}%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
    );
    let req = request(
        "GET",
        &presigned,
        &[("Host", "examplebucket.s3.amazonaws.com")],
    );
    assert_eq!(key_of(a.check_at(&req, at("20130524T230000Z"))), DOC_KEY);
    // One second past its 86400 seconds: S3's answer for an expired URL.
    assert_eq!(
        code(a.check_at(&req, at("20130525T000001Z"))),
        (403, "AccessDenied", "Request has expired".into())
    );
    assert_eq!(
        code(a.check_at(&req, at("20130523T234000Z"))),
        (403, "AccessDenied", "Request is not valid yet".into())
    );
}

#[test]
fn refusals_carry_s3_codes() {
    let a = auth(true);
    let now = at("20130524T000500Z");
    // One character of the signature changed.
    let wrong = DOC_GET_SIGNATURE.replace("f0e8", "f0e9");
    assert_eq!(
        code(a.check_at(&doc_get_object(&wrong), now)).1,
        "SignatureDoesNotMatch"
    );
    // Upper-case hex is not what S3 computes.
    let upper = DOC_GET_SIGNATURE.to_ascii_uppercase();
    assert_eq!(
        code(a.check_at(&doc_get_object(&upper), now)).1,
        "SignatureDoesNotMatch"
    );
    // 20 minutes later: too skewed (and 20 minutes earlier).
    assert_eq!(
        code(a.check_at(&doc_get_object(DOC_GET_SIGNATURE), at("20130524T002000Z"))),
        (
            403,
            "RequestTimeTooSkewed",
            "The difference between the request time and the current time is too large.".into()
        )
    );
    assert_eq!(
        code(a.check_at(&doc_get_object(DOC_GET_SIGNATURE), at("20130523T234000Z"))).1,
        "RequestTimeTooSkewed"
    );
    // Anonymous, when required.
    let anonymous = request("GET", "/examplebucket/test.txt", &[("Host", "h")]);
    assert_eq!(
        code(a.check_at(&anonymous, now)),
        (403, "AccessDenied", "Access Denied".into())
    );
    assert!(matches!(
        auth(false).check_at(&anonymous, now),
        Ok(Access::Open)
    ));
    // An unknown key.
    let unknown = doc_get_object(DOC_GET_SIGNATURE);
    let mut unknown_req = unknown.clone();
    let authz = unknown
        .headers
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap()
        .replace(DOC_KEY, "AKIANOSUCHKEY");
    unknown_req.insert_header("authorization", authz).unwrap();
    assert_eq!(code(a.check_at(&unknown_req, now)).1, "InvalidAccessKeyId");
    // Without a credentials file nothing is checked.
    let off = EdgeAuth::new(&EdgeAuthConfig::default());
    assert!(matches!(
        off.check_at(&doc_get_object("junk"), now),
        Ok(Access::Open)
    ));
}

#[test]
fn malformed_requests_get_400s() {
    let a = auth(false);
    let now = at("20130524T000500Z");
    let with_authz = |authz: &str| {
        request(
            "GET",
            "/b/k",
            &[
                ("Host", "h"),
                ("Authorization", authz),
                ("x-amz-content-sha256", EMPTY_SHA256),
                ("x-amz-date", "20130524T000000Z"),
            ],
        )
    };
    let cred = format!("Credential={DOC_KEY}/20130524/us-east-1/s3/aws4_request");
    let sh = "SignedHeaders=host;x-amz-content-sha256;x-amz-date";
    for (authz, want_code, want_text) in [
        (format!("AWS4-HMAC-SHA256 {cred}, {sh}"), "AuthorizationHeaderMalformed", "requires three components"),
        (format!("AWS4-HMAC-SHA256 Credential={DOC_KEY}/2013/us-east-1/s3/aws4_request, {sh}, Signature=ab"), "AuthorizationHeaderMalformed", "the Credential is mal-formed"),
        (format!("AWS4-HMAC-SHA256 Credential={DOC_KEY}/20130524/us-east-1/ec2/aws4_request, {sh}, Signature=ab"), "AuthorizationHeaderMalformed", "incorrect service \"ec2\""),
        (format!("AWS4-HMAC-SHA256 Credential={DOC_KEY}/20130524/us-east-1/s3/aws5_request, {sh}, Signature=ab"), "AuthorizationHeaderMalformed", "incorrect terminal"),
        (format!("AWS4-HMAC-SHA256 Credential={DOC_KEY}/20130523/us-east-1/s3/aws4_request, {sh}, Signature=ab"), "AuthorizationHeaderMalformed", "Invalid credential date"),
        (format!("AWS {DOC_KEY}:c2lnbmF0dXJl"), "InvalidRequest", "Please use AWS4-HMAC-SHA256"),
        ("Bearer abc".to_string(), "InvalidArgument", "Unsupported Authorization Type"),
    ] {
        let e = a.check_at(&with_authz(&authz), now).unwrap_err();
        assert_eq!((e.status, e.code), (400, want_code), "{authz}: {e}");
        assert!(e.message.contains(want_text), "{authz}: {e}");
    }
    // No date at all.
    let no_date = request(
        "GET",
        "/b/k",
        &[
            ("Host", "h"),
            (
                "Authorization",
                &format!("AWS4-HMAC-SHA256 {cred}, {sh}, Signature=ab"),
            ),
            ("x-amz-content-sha256", EMPTY_SHA256),
        ],
    );
    assert_eq!(code(a.check_at(&no_date, now)).1, "AccessDenied");
    // No payload hash.
    let no_hash = request(
        "GET",
        "/b/k",
        &[
            ("Host", "h"),
            (
                "Authorization",
                &format!("AWS4-HMAC-SHA256 {cred}, {sh}, Signature=ab"),
            ),
            ("x-amz-date", "20130524T000000Z"),
        ],
    );
    assert_eq!(code(a.check_at(&no_hash, now)).1, "InvalidRequest");
    // A payload hash that is not one.
    let bad_hash = request(
        "GET",
        "/b/k",
        &[
            ("Host", "h"),
            (
                "Authorization",
                &format!("AWS4-HMAC-SHA256 {cred}, {sh}, Signature=ab"),
            ),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-content-sha256", "xyz"),
        ],
    );
    assert_eq!(code(a.check_at(&bad_hash, now)).1, "InvalidArgument");
    // An x-amz-* header the signature does not cover.
    let mut unsigned = doc_get_object(DOC_GET_SIGNATURE);
    unsigned
        .insert_header("x-amz-checksum-mode", "ENABLED")
        .unwrap();
    assert_eq!(
        code(a.check_at(&unsigned, now)),
        (
            403,
            "AccessDenied",
            "There were headers present in the request which were not signed".into()
        )
    );
    // SigV2 presigned, and both mechanisms at once.
    let v2 = request(
        "GET",
        "/b/k?AWSAccessKeyId=AK&Signature=x&Expires=1",
        &[("Host", "h")],
    );
    assert_eq!(code(a.check_at(&v2, now)).1, "InvalidRequest");
    let mut both = doc_get_object(DOC_GET_SIGNATURE);
    both.set_uri(
        "/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            .parse()
            .unwrap(),
    );
    assert_eq!(code(a.check_at(&both, now)).1, "InvalidArgument");

    let q = |query: &str| {
        a.check_at(
            &request("GET", &format!("/b/k?{query}"), &[("Host", "h")]),
            now,
        )
        .unwrap_err()
    };
    let good = format!("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={DOC_KEY}%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-SignedHeaders=host&X-Amz-Signature=ab");
    for (extra, want) in [
        ("", "requires the X-Amz-Algorithm"),
        ("&X-Amz-Expires=604801", "must be less than a week"),
        ("&X-Amz-Expires=-1", "must be non-negative"),
        ("&X-Amz-Expires=soon", "should be a number"),
    ] {
        let e = q(&format!("{good}{extra}"));
        assert_eq!(
            (e.status, e.code),
            (400, "AuthorizationQueryParametersError"),
            "{extra}"
        );
        assert!(e.message.contains(want), "{extra}: {e}");
    }
    let e = q(&(good.replace("AWS4-HMAC-SHA256&", "AWS4-HMAC-SHA1&") + "&X-Amz-Expires=60"));
    assert!(e.message.contains("only supports"), "{e}");
    let e = q(&(good.replace("X-Amz-Date=20130524", "X-Amz-Date=20130525") + "&X-Amz-Expires=60"));
    assert!(e.message.contains("Invalid credential date"), "{e}");
    let e = q(&(good.replace("T000000Z", "T0000Z") + "&X-Amz-Expires=60"));
    assert!(e.message.contains("ISO8601"), "{e}");
    // A session token: Orca's keys never come with one.
    let e = q(&format!(
        "{good}&X-Amz-Expires=3600&X-Amz-Security-Token=tok"
    ));
    assert_eq!(e.code, "InvalidToken");
}

/// Signs a request with the `aws-sigv4` crate, as S3 SDKs do (single encoding, no path
/// normalisation, `x-amz-content-sha256`), in the header or as a presigned URL.
fn sign_with_sdk(
    secret: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    time: SystemTime,
    presign: Option<Duration>,
) -> RequestHeader {
    let creds = Credentials::new("AKIDOTHER", secret, None, None, "test");
    let identity = creds.into();
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    if let Some(expires) = presign {
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(expires);
    } else {
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    let params = sigv4::SigningParams::builder()
        .identity(&identity)
        .region("eu-central-1")
        .name("s3")
        .time(time)
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let host = headers.iter().find(|(n, _)| *n == "host").unwrap().1;
    let url = format!("http://{host}{target}");
    let body = if presign.is_some() {
        SignableBody::UnsignedPayload
    } else {
        SignableBody::Bytes(b"")
    };
    let signable = SignableRequest::new(method, &url, headers.iter().copied(), body).unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut target = target.to_string();
    for (i, (name, value)) in instructions.params().iter().enumerate() {
        let sep = if i == 0 && !target.contains('?') {
            '?'
        } else {
            '&'
        };
        let mut encoded = String::new();
        uri_encode_into(&mut encoded, value.as_bytes(), true);
        target.push_str(&format!("{sep}{name}={encoded}"));
    }
    let mut req = request(method, &target, headers);
    for (name, value) in instructions.headers() {
        req.insert_header(name.to_string(), value).unwrap();
    }
    req
}

#[test]
fn requests_signed_by_the_sdk_signer_verify() {
    let a = auth(true);
    let t = at("20240229T235959Z");
    // Paths as an SDK sends them: encoded once; S3 neither normalises nor decodes `+`.
    let targets = [
        "/bucket/plain.txt",
        "/bucket/dir/a%20b%2Bc%3D%26.bin",
        "/bucket/d//x/../y/./z",
        "/bucket/%C3%BCber%E2%82%AC",
        "/bucket/~tilde_-.x",
        "/bucket/?list-type=2&prefix=a%20b%2F&delimiter=%2F&max-keys=3",
        "/bucket/k?response-content-disposition=attachment%3B%20filename%3D%22x%20y.txt%22&x-id=GetObject",
        "/?location",
        "/",
    ];
    for target in targets {
        for presign in [None, Some(Duration::from_secs(3600))] {
            // A presigned URL covers only what the signer chose to sign: no x-amz-* header
            // may come on top (S3 refuses those too).
            let headers: &[(&str, &str)] = if presign.is_some() {
                &[
                    ("host", "bucket.orca.example:8443"),
                    ("range", "bytes=0-99"),
                ]
            } else {
                &[
                    ("host", "bucket.orca.example:8443"),
                    ("range", "bytes=0-99"),
                    ("x-amz-checksum-mode", "ENABLED"),
                ]
            };
            let req = sign_with_sdk("other-secret", "GET", target, headers, t, presign);
            assert_eq!(
                key_of(a.check_at(&req, t + Duration::from_secs(60))),
                "AKIDOTHER",
                "{target} presign={presign:?}"
            );
            let bad = sign_with_sdk(
                "not-the-secret",
                "GET",
                target,
                &[("host", "h")],
                t,
                presign,
            );
            assert_eq!(
                code(a.check_at(&bad, t)).1,
                "SignatureDoesNotMatch",
                "{target}"
            );
        }
    }
    // HEAD, and a header with inner runs of spaces (folded to one in the canonical form).
    let req = sign_with_sdk(
        "other-secret",
        "HEAD",
        "/b/k",
        &[("host", "h"), ("x-amz-meta-note", "a   b  ")],
        t,
        None,
    );
    assert_eq!(key_of(a.check_at(&req, t)), "AKIDOTHER");
    // The method is signed.
    let mut as_head = sign_with_sdk("other-secret", "GET", "/b/k", &[("host", "h")], t, None);
    as_head.set_method(http::Method::HEAD);
    assert_eq!(code(a.check_at(&as_head, t)).1, "SignatureDoesNotMatch");
    // So is the key: another path under the same signature fails.
    let mut moved = sign_with_sdk("other-secret", "GET", "/b/k", &[("host", "h")], t, None);
    moved.set_uri("/b/k2".parse().unwrap());
    assert_eq!(code(a.check_at(&moved, t)).1, "SignatureDoesNotMatch");
}

#[test]
fn payload_hashes_are_taken_as_sent() {
    // The doc key signs with a streaming payload value: it is part of the canonical request.
    let a = auth(true);
    let t = at("20240101T120000Z");
    for hash in [
        "UNSIGNED-PAYLOAD",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
    ] {
        let mut req = request(
            "GET",
            "/b/k",
            &[
                ("host", "h"),
                ("x-amz-content-sha256", hash),
                ("x-amz-date", "20240101T120000Z"),
            ],
        );
        let signed = Signed {
            credential: String::new(),
            access_key_id: "AKIDOTHER",
            scope_date: "20240101",
            region: "us-east-1",
            service: "s3",
            signed_headers: vec!["host", "x-amz-content-sha256", "x-amz-date"],
            signature: "",
            timestamp: "20240101T120000Z".into(),
            payload_hash: hash.into(),
            presigned: false,
        };
        let canonical = canonical_request(&req, &[], &signed).unwrap();
        assert!(canonical.ends_with(&format!("\n{hash}")));
        let sts = format!(
            "AWS4-HMAC-SHA256\n20240101T120000Z\n20240101/us-east-1/s3/aws4_request\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let k = generate_signing_key("other-secret", at("20240101T000000Z"), "us-east-1", "s3");
        let sig = calculate_signature(k, sts.as_bytes());
        req.insert_header(
            "authorization",
            format!("AWS4-HMAC-SHA256 Credential=AKIDOTHER/20240101/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={sig}"),
        )
        .unwrap();
        assert_eq!(key_of(a.check_at(&req, t)), "AKIDOTHER", "{hash}");
    }
}

#[test]
fn date_header_stands_in_for_x_amz_date() {
    let a = auth(true);
    let t = at("20240101T120000Z");
    let mut req = request(
        "GET",
        "/b/k",
        &[
            ("host", "h"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("date", "Mon, 01 Jan 2024 12:00:00 GMT"),
        ],
    );
    let signed = Signed {
        credential: String::new(),
        access_key_id: "AKIDOTHER",
        scope_date: "20240101",
        region: "us-east-1",
        service: "s3",
        signed_headers: vec!["date", "host", "x-amz-content-sha256"],
        signature: "",
        timestamp: "20240101T120000Z".into(),
        payload_hash: EMPTY_SHA256.into(),
        presigned: false,
    };
    let canonical = canonical_request(&req, &[], &signed).unwrap();
    let sts = format!(
        "AWS4-HMAC-SHA256\n20240101T120000Z\n20240101/us-east-1/s3/aws4_request\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let k = generate_signing_key("other-secret", at("20240101T000000Z"), "us-east-1", "s3");
    let sig = calculate_signature(k, sts.as_bytes());
    req.insert_header(
        "authorization",
        format!("AWS4-HMAC-SHA256 Credential=AKIDOTHER/20240101/us-east-1/s3/aws4_request, SignedHeaders=date;host;x-amz-content-sha256, Signature={sig}"),
    )
    .unwrap();
    assert_eq!(key_of(a.check_at(&req, t)), "AKIDOTHER");
}

#[test]
fn buckets_and_bucket_listing_follow_the_key() {
    let only = Access::Key(Arc::new(key(
        "A",
        "s",
        BucketGrant::Only(vec!["a".into(), "b".into()]),
    )));
    let any = Access::Key(Arc::new(key("B", "s", BucketGrant::Any)));
    let get = |b: &str| S3Request::GetObject {
        bucket: b.into(),
        key: "k".into(),
    };
    assert!(only.authorize(&get("a")).is_ok());
    assert_eq!(only.authorize(&get("c")).unwrap_err().code, "AccessDenied");
    assert_eq!(
        only.authorize(&S3Request::HeadBucket { bucket: "c".into() })
            .unwrap_err()
            .code,
        "AccessDenied"
    );
    assert!(only.authorize(&S3Request::ListBuckets).is_ok());
    assert!(any.authorize(&get("c")).is_ok());
    let allow = vec!["b".to_string(), "c".to_string()];
    assert_eq!(
        only.visible_buckets(&[]),
        Some(vec!["a".into(), "b".into()])
    );
    assert_eq!(only.visible_buckets(&allow), Some(vec!["b".into()]));
    assert_eq!(any.visible_buckets(&allow), Some(allow.clone()));
    assert_eq!(any.visible_buckets(&[]), None);
    assert_eq!(Access::Open.visible_buckets(&[]), None);
}

#[test]
fn signing_keys_are_cached_per_scope_and_dropped_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.yaml");
    std::fs::write(&path, "keys:\n  - access_key_id: AKIDOTHER\n    secret_access_key: other-secret\n    buckets: [\"*\"]\n").unwrap();
    let a = EdgeAuth::new(&EdgeAuthConfig {
        required: true,
        credentials_file: Some(path.clone()),
        keys: crate::config::client_keys::load(&path, &|_| None).unwrap(),
    });
    let t = at("20240301T000000Z");
    let req = sign_with_sdk("other-secret", "GET", "/b/k", &[("host", "h")], t, None);
    // A refused request caches nothing.
    let bad = sign_with_sdk("wrong", "GET", "/b/k", &[("host", "h")], t, None);
    assert!(a.check_at(&bad, t).is_err());
    assert_eq!(a.keys.read().signing_keys.lock().len(), 0);
    assert!(a.check_at(&req, t).is_ok());
    assert!(a.check_at(&req, t).is_ok());
    assert_eq!(a.keys.read().signing_keys.lock().len(), 1);
    // A reload with a new secret: the old signature no longer verifies.
    std::fs::write(&path, "keys:\n  - access_key_id: AKIDOTHER\n    secret_access_key: rotated\n    buckets: [\"*\"]\n").unwrap();
    assert_eq!(a.reload().unwrap(), 1);
    assert_eq!(code(a.check_at(&req, t)).1, "SignatureDoesNotMatch");
    // A broken file keeps the keys in force.
    std::fs::write(&path, "keys: [\n").unwrap();
    assert!(a
        .reload()
        .unwrap_err()
        .to_string()
        .contains("keys.yaml line"));
    let rotated = sign_with_sdk("rotated", "GET", "/b/k", &[("host", "h")], t, None);
    assert!(a.check_at(&rotated, t).is_ok());
}

#[test]
fn dates_round_trip() {
    for stamp in [
        "19700101T000000Z",
        "20000229T235959Z",
        "20130524T000000Z",
        "20991231T120000Z",
    ] {
        assert_eq!(format_amz_date(at(stamp)), stamp);
    }
    for bad in [
        "20130230T000000Z",
        "20131324T000000Z",
        "20130524T240000Z",
        "20130524 000000Z",
        "2013052T000000Z",
    ] {
        assert!(parse_amz_date(bad).is_none(), "{bad}");
    }
    let t = httpdate::parse_http_date("Fri, 24 May 2013 00:00:00 GMT").unwrap();
    assert_eq!(format_amz_date(t), "20130524T000000Z");
}

/// This thread's CPU time (user + system, from `/proc/thread-self/stat`, in 10 ms ticks): on a
/// shared machine the wall clock also counts the time other processes had the CPU.
fn thread_cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // The fields after the command name, which is in parentheses; utime and stime are the
    // 14th and 15th fields of the line.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<u64> = rest
        .split(' ')
        .skip(11)
        .take(2)
        .map(|f| f.parse().unwrap())
        .collect();
    Duration::from_millis((fields[0] + fields[1]) * 10)
}

/// Runs `f` `n` times: (wall time, thread CPU time) per run.
fn cost(n: u32, mut f: impl FnMut()) -> (Duration, Duration) {
    let (wall, cpu) = (std::time::Instant::now(), thread_cpu_time());
    for _ in 0..n {
        f();
    }
    (wall.elapsed() / n, (thread_cpu_time() - cpu) / n)
}

/// The cost of verifying one header-signed GET with its signing key cached (a hit), and of its
/// parts. Run by hand, optimized:
/// `cargo test --release --lib verify_cost -- --ignored --nocapture`; see docs/benchmarks.md.
#[test]
#[ignore = "a measurement, not a check: run it by hand"]
fn verify_cost() {
    let a = auth(true);
    let t = at("20240229T235959Z");
    let req = sign_with_sdk(
        "other-secret",
        "GET",
        "/bucket/dir/object-00042.parquet",
        &[("host", "orca.internal:8443"), ("range", "bytes=0-1048575")],
        t,
        None,
    );
    assert!(a.check_at(&req, t).is_ok());
    let n = 500_000;
    let verify = cost(n, || assert!(a.check_at(&req, t).is_ok()));
    let derive = cost(n, || {
        std::hint::black_box(generate_signing_key(
            "other-secret",
            t,
            "eu-central-1",
            "s3",
        ));
    });
    let parse = cost(n, || {
        let params = query_pairs(req.uri.query().unwrap_or("")).unwrap();
        let rest = req.headers.get("authorization").unwrap().to_str().unwrap();
        let signed = from_header(&req, &rest[ALGORITHM.len()..], t).unwrap();
        std::hint::black_box(canonical_request(&req, &params, &signed).unwrap());
    });
    println!("per request (wall, thread CPU): verify with the signing key cached {verify:?}; deriving a signing key {derive:?}; parsing and building the canonical request {parse:?}");
}
