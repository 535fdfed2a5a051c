//! Tests of the whole pipeline, text to [`Config`], with a fake environment.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use super::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A fake environment holding exactly `pairs`.
fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

fn aws_env() -> impl Fn(&str) -> Option<String> {
    env_of(&[
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "not-a-real-secret"),
    ])
}

fn ok(text: &str) -> Config {
    from_yaml_str_with_env(text, &aws_env()).unwrap()
}

fn err_with(text: &str, env: &dyn Fn(&str) -> Option<String>) -> ConfigError {
    from_yaml_str_with_env(text, env).unwrap_err()
}

fn err(text: &str) -> ConfigError {
    err_with(text, &aws_env())
}

/// The validation problems of `text`, as `key: message` lines.
fn problems(text: &str) -> Vec<String> {
    match err(text) {
        ConfigError::Invalid { problems } => problems.iter().map(ToString::to_string).collect(),
        other => panic!("expected validation problems, got {other}"),
    }
}

const MINIMAL: &str = "origin:\n  id: my-origin\n";

#[test]
fn defaults_from_a_file_with_only_origin_id() {
    let config = ok(MINIMAL);
    assert_eq!(
        config.listen,
        Listen {
            edge: "0.0.0.0:8443".into(),
            internal: "0.0.0.0:8444".into(),
            ops: "0.0.0.0:8442".into(),
            edge_tls: None,
            internal_tls: None,
        }
    );
    assert_eq!(config.origin.id, "my-origin");
    assert_eq!(
        config.origin.driver,
        OriginDriver::S3(S3OriginConfig {
            endpoint: "https://s3.us-east-1.amazonaws.com".into(),
            region: "us-east-1".into(),
            path_style: false,
            // aws_env()'s keys are read by the default chain's first link.
            credentials: S3Credentials::DefaultChain,
        })
    );
    assert_eq!(
        config.edge,
        EdgeConfig {
            virtual_host_suffix: None,
            buckets: vec![],
            auth: EdgeAuthConfig::default(),
        }
    );
    assert_eq!(
        config.cachestore,
        CacheStoreConfig::Fs {
            root: std::path::absolute("./data/cache").unwrap(),
            limits: FsLimits {
                max_size: None,
                min_free: SizeOrPercent::Percent(5),
                low_watermark: SizeOrPercent::Percent(90),
            },
        }
    );
    assert_eq!(
        config.chunking,
        Chunking {
            base: 8 * MIB,
            tiers: vec![
                Tier {
                    min_object_size: GIB,
                    size: 64 * MIB
                },
                Tier {
                    min_object_size: 10 * GIB,
                    size: 128 * MIB
                },
            ],
            readahead: 8,
            subrange_size: 8 * MIB,
            subrange_streams: 4,
        }
    );
    assert_eq!(
        config.metadata,
        MetadataConfig {
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            max_entries: 100_000,
        }
    );
    assert_eq!(config.catalog.max_entries, 1_000_000);
    assert_eq!(
        config.limits,
        Limits {
            origin_concurrency: 64,
            readahead_memory: GIB,
            origin_timeout: Duration::from_secs(30),
            client_write_timeout: Duration::from_secs(60),
            readahead_wait: Duration::from_secs(10),
            max_connections: 16384,
        }
    );
    assert_eq!(
        config.cluster,
        ClusterConfig {
            peers: vec![],
            dns: None,
            self_addr: None,
            shared_secret_env: None,
            peer_ca: None,
            peer_server_name: None,
        }
    );
    assert_eq!(
        config.logging,
        Logging {
            level: "info".into(),
            format: LogFormat::Json,
        }
    );
}

#[test]
fn empty_sections_and_empty_file() {
    // A section whose keys are all commented out is null in YAML: it means "defaults".
    let config = ok("origin:\n  id: x\ncluster:\n  # peers: []\nlimits:\nchunking:\n  tiers:\n");
    assert_eq!(
        config.chunking.tiers.len(),
        2,
        "null tiers = default ladder"
    );
    assert!(config.cluster.peers.is_empty());

    for text in ["", "# only a comment\n", "---\n"] {
        let problems = problems(text);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("origin.id: required"),
            "{problems:?}"
        );
    }
}

#[test]
fn missing_origin_id_names_the_key() {
    let e = err("listen:\n  edge: 0.0.0.0:9443\n");
    assert_eq!(e.problems().len(), 1);
    assert_eq!(e.problems()[0].key, "origin.id");
    assert!(e.to_string().starts_with("origin.id: required"), "{e}");

    let problems = problems("origin:\n  id: \"\"\n");
    assert_eq!(problems, vec!["origin.id: must not be empty".to_owned()]);
}

#[test]
fn unknown_keys_name_the_key_and_section() {
    let e = err("origin:\n  id: x\nfoo: 1\n");
    match &e {
        ConfigError::UnknownKey {
            key, section, line, ..
        } => {
            assert_eq!(key, "foo");
            assert_eq!(section, "");
            assert_eq!(*line, Some(3));
        }
        other => panic!("{other}"),
    }
    let msg = e.to_string();
    assert!(
        msg.starts_with("unknown key \"foo\" at the top level"),
        "{msg}"
    );
    assert!(msg.contains("`listen`"), "lists the accepted keys: {msg}");

    let e = err("origin:\n  id: x\ncachestore:\n  fs:\n    root: /tmp/x\n    rot: 1\n");
    let msg = e.to_string();
    assert!(
        msg.starts_with(
            "unknown key \"rot\" at cachestore.fs (expected one of `root`, `max_size`, \
             `min_free`, `low_watermark`)"
        ),
        "{msg}"
    );
    assert!(msg.contains("line 6"), "{msg}");

    let e = err("origin:\n  id: x\nchunking:\n  tiers:\n    - { min_object_size: 1GiB, size: 8MiB, extra: 1 }\n");
    assert!(
        e.to_string()
            .starts_with("unknown key \"extra\" at chunking.tiers[0]"),
        "{e}"
    );

    // A section of the contract spelled wrongly.
    let e = err("origin:\n  id: x\ncache:\n  fs: {}\n");
    assert!(e.to_string().starts_with("unknown key \"cache\""), "{e}");
}

#[test]
fn bad_values_name_the_key_path() {
    let e = err("origin:\n  id: x\nchunking:\n  tiers:\n    - { min_object_size: 1GiB, size: 64MiB }\n    - { min_object_size: 2GiB, size: 8XB }\n");
    match &e {
        ConfigError::Value { key, line, .. } => {
            assert_eq!(key, "chunking.tiers[1].size");
            assert_eq!(*line, Some(6));
        }
        other => panic!("{other}"),
    }
    assert!(
        e.to_string()
            .starts_with("chunking.tiers[1].size: invalid size \"8XB\""),
        "{e}"
    );

    let e = err("origin:\n  id: x\nmetadata:\n  ttl: 5\n");
    assert!(
        e.to_string()
            .starts_with("metadata.ttl: invalid duration \"5\": needs a unit, e.g. 5s"),
        "{e}"
    );
    let e = err("origin:\n  id: x\nlimits:\n  origin_timeout: 5 parsecs\n");
    assert!(
        e.to_string()
            .starts_with("limits.origin_timeout: invalid duration \"5 parsecs\""),
        "{e}"
    );
    let e = err("origin:\n  id: x\nlogging:\n  format: xml\n");
    assert!(
        e.to_string()
            .starts_with("logging.format: unknown variant `xml`"),
        "{e}"
    );
    let e = err("origin:\n  id: x\n  driver: gcs\n");
    assert!(
        e.to_string()
            .starts_with("origin.driver: unknown variant `gcs`"),
        "{e}"
    );
    let e = err("origin:\n  id: x\nlimits:\n  origin_concurrency: -1\n");
    assert!(
        e.to_string().starts_with("limits.origin_concurrency: "),
        "{e}"
    );
    let e = err("- a\n- b\n");
    assert!(
        e.to_string().starts_with("(top level): invalid type"),
        "{e}"
    );
}

#[test]
fn malformed_yaml_gives_the_line() {
    let e = err("origin:\n  id: x\nchunking:\n  size: [8MiB\n  readahead: 2\n");
    match &e {
        ConfigError::Yaml { line, .. } => assert!(matches!(line, Some(4..=6)), "{e}"),
        other => panic!("{other}"),
    }
    assert!(e.to_string().starts_with("malformed YAML at line "), "{e}");

    let e = err("origin:\n  id: x\n   bad: indent\n");
    let ConfigError::Yaml { line: Some(3), .. } = &e else {
        panic!("{e:?}")
    };
    assert!(e.to_string().contains("line 3"), "{e}");

    // A duplicate key is reported at the mapping that holds it, naming the key.
    let e = err("origin:\n  id: x\nlimits:\n  origin_concurrency: 1\n  origin_concurrency: 2\n");
    assert!(matches!(e, ConfigError::Yaml { line: Some(4), .. }), "{e}");
    assert!(e.to_string().contains("\"origin_concurrency\""), "{e}");
}

#[test]
fn tiers_must_be_ascending_and_sizes_valid() {
    let problems = problems(
        "origin:\n  id: x\nchunking:\n  size: 0\n  tiers:\n    - { min_object_size: 10GiB, size: 64MiB }\n    - { min_object_size: 1GiB, size: 0 }\n    - { min_object_size: 1GiB, size: 5GiB }\n  readahead: 65\n",
    );
    assert_eq!(
        problems,
        vec![
            "chunking.size: must be greater than 0".to_owned(),
            "chunking.tiers[1].size: must be greater than 0".to_owned(),
            "chunking.tiers[1].min_object_size: tiers must be strictly ascending: 1073741824 is \
             not greater than chunking.tiers[0].min_object_size (10737418240)"
                .to_owned(),
            "chunking.tiers[2].size: 5368709120 bytes is more than the 4GiB limit".to_owned(),
            "chunking.tiers[2].min_object_size: tiers must be strictly ascending: 1073741824 is \
             not greater than chunking.tiers[1].min_object_size (1073741824)"
                .to_owned(),
            "chunking.readahead: 65 is more than the limit of 64".to_owned(),
        ]
    );
}

#[test]
fn explicit_empty_tiers_means_no_tiers() {
    let config = ok("origin:\n  id: x\nchunking:\n  size: 4MiB\n  tiers: []\n  readahead: 0\n");
    assert!(config.chunking.tiers.is_empty());
    assert_eq!(config.chunking.chunk_size_for(100 * GIB), 4 * MIB);
    assert_eq!(config.chunking.readahead, 0);
    let config = ok("origin:\n  id: x\nchunking:\n  size: 4GiB\n  tiers: []\nlimits:\n  readahead_memory: 4GiB\n");
    assert_eq!(config.chunking.base, 4 * GIB);
}

#[test]
fn chunk_size_for_picks_the_largest_applicable_tier() {
    let chunking = ok(MINIMAL).chunking;
    assert_eq!(chunking.chunk_size_for(0), 8 * MIB);
    assert_eq!(chunking.chunk_size_for(GIB - 1), 8 * MIB);
    assert_eq!(chunking.chunk_size_for(GIB), 64 * MIB);
    assert_eq!(chunking.chunk_size_for(10 * GIB - 1), 64 * MIB);
    assert_eq!(chunking.chunk_size_for(10 * GIB), 128 * MIB);
    assert_eq!(chunking.chunk_size_for(u64::MAX), 128 * MIB);
    assert_eq!(chunking.max_chunk_size(), 128 * MIB);
}

#[test]
fn the_removed_memory_chunks_key_is_refused_by_name() {
    let problems = problems("origin:\n  id: x\nlimits:\n  memory_chunks: 0\n");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("limits.memory_chunks: removed"),
        "{problems:?}"
    );
}

#[test]
fn client_waits_are_bounded_and_positive() {
    let config =
        ok("origin:\n  id: x\nlimits:\n  client_write_timeout: 5s\n  readahead_wait: 250ms\n");
    assert_eq!(config.limits.client_write_timeout, Duration::from_secs(5));
    assert_eq!(config.limits.readahead_wait, Duration::from_millis(250));
    let config = ok("origin:\n  id: x\nlimits:\n  max_connections: 100\n");
    assert_eq!(config.limits.max_connections, 100);
    assert_eq!(
        problems("origin:\n  id: x\nlimits:\n  max_connections: 0\n"),
        vec!["limits.max_connections: must be greater than 0".to_owned()]
    );
    let problems =
        problems("origin:\n  id: x\nlimits:\n  client_write_timeout: 0s\n  readahead_wait: 0ms\n");
    assert_eq!(
        problems,
        vec![
            "limits.client_write_timeout: must be greater than 0".to_owned(),
            "limits.readahead_wait: must be greater than 0".to_owned(),
        ]
    );
}

#[test]
fn readahead_memory_must_hold_the_largest_chunk() {
    let problems = problems("origin:\n  id: x\nlimits:\n  readahead_memory: 64MiB\n  origin_concurrency: 0\n  origin_timeout: 0s\n");
    assert_eq!(
        problems,
        vec![
            "limits.origin_concurrency: must be greater than 0".to_owned(),
            "limits.origin_timeout: must be greater than 0".to_owned(),
            "limits.readahead_memory: 67108864 bytes is less than the largest chunk size \
             (134217728 bytes); it must hold at least one chunk"
                .to_owned(),
        ]
    );
    let config = ok("origin:\n  id: x\nlimits:\n  readahead_memory: 128MiB\n  origin_concurrency: 16\n  origin_timeout: 250ms\n");
    assert_eq!(config.limits.readahead_memory, 128 * MIB);
    assert_eq!(config.limits.origin_concurrency, 16);
    assert_eq!(config.limits.origin_timeout, Duration::from_millis(250));
}

#[test]
fn every_problem_is_reported_together() {
    let text = "\
listen:
  edge: nowhere
origin:
  driver: s3
  s3:
    endpoint: ftp://example.com
metadata:
  max_entries: 0
logging:
  level: loud
";
    let e = err_with(text, &env_of(&[]));
    let keys: Vec<&str> = e.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "listen.edge",
            "origin.id",
            "origin.s3.endpoint",
            "metadata.max_entries",
            "logging.level",
        ]
    );
    let display = e.to_string();
    assert_eq!(display.lines().count(), 5, "{display}");
    for line in display.lines() {
        assert!(line.contains(": "), "{line}");
    }
    assert!(display.contains("listen.edge: \"nowhere\" is not an ip:port address"));
    assert!(display.contains("origin.s3.endpoint: \"ftp://example.com\" must start with http"));
    assert!(
        display.contains("logging.level: \"loud\" is not one of trace, debug, info, warn, error")
    );
}

#[test]
fn listen_addresses() {
    let config = ok("listen:\n  edge: 127.0.0.1:1\n  internal: \"[::1]:2\"\n  ops: 0.0.0.0:3\norigin:\n  id: x\n");
    assert_eq!(config.listen.internal, "[::1]:2");
    let problems = problems("listen:\n  edge: 0.0.0.0:8443\n  internal: 0.0.0.0:8443\n  ops: localhost:80\norigin:\n  id: x\n");
    assert_eq!(
        problems,
        vec![
            "listen.internal: \"0.0.0.0:8443\" is already used by listen.edge".to_owned(),
            "listen.ops: \"localhost:80\" is not an ip:port address, e.g. 0.0.0.0:8443 or [::]:8443"
                .to_owned(),
        ]
    );
}

#[test]
fn s3_endpoints_are_checked_and_normalized() {
    let endpoint = |e: &str| {
        let text = format!("origin:\n  id: x\n  s3:\n    endpoint: \"{e}\"\n");
        from_yaml_str_with_env(&text, &aws_env()).map(|c| match c.origin.driver {
            OriginDriver::S3(s3) => s3.endpoint,
            OriginDriver::AzureBlob(_) => unreachable!(),
        })
    };
    assert_eq!(
        endpoint("http://127.0.0.1:9000").unwrap(),
        "http://127.0.0.1:9000"
    );
    assert_eq!(
        endpoint("http://127.0.0.1:9000/").unwrap(),
        "http://127.0.0.1:9000"
    );
    assert_eq!(
        endpoint("HTTPS://minio.local").unwrap(),
        "https://minio.local"
    );
    assert_eq!(endpoint("http://[::1]:9000/").unwrap(), "http://[::1]:9000");
    for bad in [
        "127.0.0.1:9000",
        "ftp://host",
        "http://host/path",
        "http://host:9000/?x=1",
        "http://user:pw@host",
        "http://host:99999",
        "http:///nohost",
        "",
        "http://host#frag",
    ] {
        let e = endpoint(bad).unwrap_err();
        let p = e.problems();
        assert_eq!(p.len(), 1, "{bad}: {e}");
        assert_eq!(p[0].key, "origin.s3.endpoint", "{bad}: {e}");
        assert!(p[0].message.contains(&format!("\"{bad}\"")), "{bad}: {e}");
    }
    // The default endpoint follows the region.
    let config = ok("origin:\n  id: x\n  s3:\n    region: eu-west-3\n");
    let OriginDriver::S3(s3) = config.origin.driver else {
        panic!()
    };
    assert_eq!(s3.endpoint, "https://s3.eu-west-3.amazonaws.com");
}

#[test]
fn s3_credentials_resolution() {
    let creds = |text: &str, env: &[(&str, &str)]| {
        from_yaml_str_with_env(text, &env_of(env)).map(|c| match c.origin.driver {
            OriginDriver::S3(s3) => s3.credentials,
            OriginDriver::AzureBlob(_) => unreachable!(),
        })
    };
    let full_env = [
        ("AWS_ACCESS_KEY_ID", "envid"),
        ("AWS_SECRET_ACCESS_KEY", "envsecret"),
        ("AWS_SESSION_TOKEN", "envtoken"),
    ];

    // From the environment: through the default chain, whose first link reads it.
    assert_eq!(
        creds(MINIMAL, &full_env).unwrap(),
        S3Credentials::DefaultChain
    );
    // The file wins over the environment.
    let in_file =
        "origin:\n  id: x\n  s3:\n    access_key_id: fileid\n    secret_access_key: filesecret\n";
    assert_eq!(
        creds(in_file, &full_env).unwrap(),
        S3Credentials::Static {
            access_key_id: "fileid".into(),
            secret_access_key: "filesecret".into(),
            session_token: None,
        }
    );
    // Anonymous needs nothing, and wins over the environment.
    let anonymous = "origin:\n  id: x\n  s3:\n    anonymous: true\n";
    assert_eq!(creds(anonymous, &[]).unwrap(), S3Credentials::Anonymous);
    assert_eq!(
        creds(anonymous, &full_env).unwrap(),
        S3Credentials::Anonymous
    );

    // Anonymous together with keys is a conflict.
    let e = creds(
        "origin:\n  id: x\n  s3:\n    anonymous: true\n    access_key_id: a\n    secret_access_key: b\n",
        &[],
    )
    .unwrap_err();
    assert_eq!(e.problems()[0].key, "origin.s3.anonymous");
    assert!(
        e.to_string()
            .contains("cannot be combined with access_key_id / secret_access_key"),
        "{e}"
    );

    // Half a pair names the missing half.
    let e = creds("origin:\n  id: x\n  s3:\n    access_key_id: a\n", &full_env).unwrap_err();
    assert_eq!(
        e.to_string(),
        "origin.s3.secret_access_key: missing: access_key_id is set, so secret_access_key must be too"
    );
    let e = creds("origin:\n  id: x\n  s3:\n    secret_access_key: b\n", &[]).unwrap_err();
    assert_eq!(e.problems()[0].key, "origin.s3.access_key_id");
    let e = creds("origin:\n  id: x\n  s3:\n    session_token: t\n", &full_env).unwrap_err();
    assert_eq!(e.problems()[0].key, "origin.s3.session_token");
    let e = creds(MINIMAL, &[("AWS_ACCESS_KEY_ID", "id")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "origin.s3: env AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not"
    );

    // Nothing at all: the default chain; an empty env value counts as unset.
    assert_eq!(
        creds(
            MINIMAL,
            &[("AWS_ACCESS_KEY_ID", ""), ("AWS_SECRET_ACCESS_KEY", "")],
        )
        .unwrap(),
        S3Credentials::DefaultChain
    );
}

#[test]
fn credentials_are_redacted_in_debug() {
    let config = from_yaml_str_with_env(
        "origin:\n  id: x\n  s3:\n    access_key_id: AKIDEXAMPLE\n    secret_access_key: supersecret\n    session_token: sessiontoken\n",
        &env_of(&[]),
    )
    .unwrap();
    let debug = format!("{config:?}");
    assert!(debug.contains("AKIDEXAMPLE"));
    assert!(!debug.contains("supersecret"), "{debug}");
    assert!(!debug.contains("sessiontoken"), "{debug}");
    assert_eq!(
        format!("{:?}", AzureCredentials::SharedKey("k3y".into())),
        "SharedKey(<redacted>)"
    );
}

#[test]
fn azure_origin() {
    let azure = |text: &str, env: &[(&str, &str)]| {
        from_yaml_str_with_env(text, &env_of(env)).map(|c| match c.origin.driver {
            OriginDriver::AzureBlob(a) => a,
            OriginDriver::S3(_) => unreachable!(),
        })
    };
    let key_env = [("AZURE_STORAGE_KEY", "c2VjcmV0")];
    let a = azure("origin:\n  id: x\n  driver: azureblob\n", &key_env).unwrap();
    assert_eq!(a.account, "devstoreaccount1");
    assert_eq!(a.endpoint, "http://127.0.0.1:10000/devstoreaccount1");
    assert_eq!(
        a.credentials,
        AzureCredentials::SharedKey("c2VjcmV0".into())
    );

    let a = azure(
        "origin:\n  id: x\n  driver: azureblob\n  azureblob:\n    account: myacct\n    sas_token: \"?sv=2024&sig=abc\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(a.endpoint, "https://myacct.blob.core.windows.net");
    assert_eq!(
        a.credentials,
        AzureCredentials::Sas("sv=2024&sig=abc".into())
    );

    let a = azure(
        "origin:\n  id: x\n  driver: azureblob\n  azureblob:\n    endpoint: http://127.0.0.1:10000/devstoreaccount1/\n    account_key: a2V5\n",
        &key_env,
    )
    .unwrap();
    assert_eq!(a.endpoint, "http://127.0.0.1:10000/devstoreaccount1");
    assert_eq!(a.credentials, AzureCredentials::SharedKey("a2V5".into()));

    let e = azure("origin:\n  id: x\n  driver: azureblob\n", &[]).unwrap_err();
    assert!(
        e.to_string().starts_with(
            "origin.azureblob: no credentials found: set env AZURE_STORAGE_KEY, or account_key or sas_token"
        ),
        "{e}"
    );
    let e = azure(
        "origin:\n  id: x\n  driver: azureblob\n  azureblob:\n    account: Bad_Name\n    account_key: k\n    sas_token: s\n",
        &[],
    )
    .unwrap_err();
    let keys: Vec<&str> = e.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, vec!["origin.azureblob.account", "origin.azureblob"]);

    // The s3 section is not consulted for an azure origin, so S3 credentials are not needed.
    assert!(azure(
        "origin:\n  id: x\n  driver: azureblob\n  s3:\n    endpoint: bad\n",
        &key_env
    )
    .is_ok());
}

#[test]
fn edge_settings() {
    let config = ok(
        "origin:\n  id: x\nedge:\n  virtual_host_suffix: .Orca.Example.com\n  buckets: [a, b]\n",
    );
    assert_eq!(
        config.edge.virtual_host_suffix.as_deref(),
        Some("orca.example.com")
    );
    assert_eq!(config.edge.buckets, vec!["a".to_owned(), "b".to_owned()]);
    let problems = problems("origin:\n  id: x\nedge:\n  virtual_host_suffix: \"http://x/\"\n  buckets: [a, a, \"\", b/c]\n");
    let keys: Vec<&str> = problems
        .iter()
        .map(|p| p.split(':').next().unwrap())
        .collect();
    assert_eq!(
        keys,
        vec![
            "edge.virtual_host_suffix",
            "edge.buckets[1]",
            "edge.buckets[2]",
            "edge.buckets[3]"
        ]
    );
}

#[test]
fn s3_cachestore() {
    let text = "origin:\n  id: x\ncachestore:\n  driver: s3\n";
    // Without ORCA_CACHESTORE_* keys: the default chain (which reads AWS_* itself).
    let config = from_yaml_str_with_env(text, &aws_env()).unwrap();
    assert!(matches!(
        config.cachestore,
        CacheStoreConfig::S3 {
            credentials: S3Credentials::DefaultChain,
            ..
        }
    ));
    let e = err_with(text, &env_of(&[("ORCA_CACHESTORE_ACCESS_KEY_ID", "cid")]));
    assert!(
        e.to_string()
            .contains("ORCA_CACHESTORE_SECRET_ACCESS_KEY is not"),
        "{e}"
    );

    let env = env_of(&[
        ("AWS_ACCESS_KEY_ID", "a"),
        ("AWS_SECRET_ACCESS_KEY", "b"),
        ("ORCA_CACHESTORE_ACCESS_KEY_ID", "cid"),
        ("ORCA_CACHESTORE_SECRET_ACCESS_KEY", "csecret"),
    ]);
    let config = from_yaml_str_with_env(text, &env).unwrap();
    assert_eq!(
        config.cachestore,
        CacheStoreConfig::S3 {
            endpoint: "http://127.0.0.1:9000".into(),
            region: "us-east-1".into(),
            bucket: "orca-cache".into(),
            path_style: true,
            credentials: S3Credentials::Static {
                access_key_id: "cid".into(),
                secret_access_key: "csecret".into(),
                session_token: None,
            },
            local: None,
        }
    );

    let e = err("origin:\n  id: x\ncachestore:\n  driver: s3\n  s3:\n    bucket: Bad_Bucket\n    access_key_id: a\n    secret_access_key: b\n");
    assert_eq!(e.problems().len(), 1, "{e}");
    assert_eq!(e.problems()[0].key, "cachestore.s3.bucket");

    // An s3 section with driver fs is ignored, as in the contract's example.
    let config = ok("origin:\n  id: x\ncachestore:\n  driver: fs\n  fs:\n    root: /var/cache/orca\n  s3:\n    bucket: orca-cache\n");
    assert_eq!(
        config.cachestore,
        CacheStoreConfig::Fs {
            root: PathBuf::from("/var/cache/orca"),
            limits: FsLimits::default(),
        }
    );
}

#[test]
fn cluster_settings_and_orca_self() {
    let config = ok(
        "origin:\n  id: x\ncluster:\n  peers: [10.0.0.1:8444, \"orca-1.orca:8444\"]\n  self: 10.0.0.1:8444\n",
    );
    assert_eq!(config.cluster.peers.len(), 2);
    assert_eq!(config.cluster.self_addr.as_deref(), Some("10.0.0.1:8444"));

    // ORCA_SELF wins over `self`.
    let text = "origin:\n  id: x\ncluster:\n  peers: [10.0.0.1:8444, 10.0.0.2:8444]\n  self: 10.0.0.1:8444\n";
    let env = env_of(&[
        ("AWS_ACCESS_KEY_ID", "a"),
        ("AWS_SECRET_ACCESS_KEY", "b"),
        ("ORCA_SELF", "10.0.0.2:8444"),
    ]);
    let config = from_yaml_str_with_env(text, &env).unwrap();
    assert_eq!(config.cluster.self_addr.as_deref(), Some("10.0.0.2:8444"));
    let env = env_of(&[
        ("AWS_ACCESS_KEY_ID", "a"),
        ("AWS_SECRET_ACCESS_KEY", "b"),
        ("ORCA_SELF", "10.0.0.9:8444"),
    ]);
    let e = err_with(text, &env);
    assert!(
        e.to_string()
            .contains("(from env ORCA_SELF) is not in cluster.peers"),
        "{e}"
    );

    // DNS discovery, with its defaults.
    let config = ok("origin:\n  id: x\ncluster:\n  dns: { name: orca-peers.orca.svc.cluster.local }\n  self: 10.1.2.3:8444\n");
    assert_eq!(
        config.cluster.dns,
        Some(DnsConfig {
            name: "orca-peers.orca.svc.cluster.local".into(),
            port: 8444,
            refresh: Duration::from_secs(5),
        })
    );

    let problems = problems("origin:\n  id: x\ncluster:\n  peers: [10.0.0.1:8444, nope, 10.0.0.1:8444]\n  dns: { name: \"\", port: 0, refresh: 0s }\n");
    let keys: Vec<&str> = problems
        .iter()
        .map(|p| p.split(": ").next().unwrap())
        .collect();
    assert_eq!(
        keys,
        vec![
            "cluster.peers[1]",
            "cluster.peers[2]",
            "cluster.dns.name",
            "cluster.dns.port",
            "cluster.dns.refresh",
            "cluster",
            "cluster.self",
        ]
    );
}

#[test]
fn shared_secret_env_must_be_set() {
    let text = "origin:\n  id: x\ncluster:\n  shared_secret_env: ORCA_PEER_SECRET\n";
    let e = err(text);
    assert!(
        e.to_string()
            .starts_with("cluster.shared_secret_env: env ORCA_PEER_SECRET is not set"),
        "{e}"
    );
    let env = env_of(&[
        ("AWS_ACCESS_KEY_ID", "a"),
        ("AWS_SECRET_ACCESS_KEY", "b"),
        ("ORCA_PEER_SECRET", "s"),
    ]);
    let config = from_yaml_str_with_env(text, &env).unwrap();
    assert_eq!(
        config.cluster.shared_secret_env.as_deref(),
        Some("ORCA_PEER_SECRET")
    );
    let problems = problems("origin:\n  id: x\ncluster:\n  shared_secret_env: \"1BAD-NAME\"\n");
    assert!(
        problems[0].contains("is not an environment variable name"),
        "{problems:?}"
    );
}

#[test]
fn orca_log_level_overrides_the_file() {
    let text = "origin:\n  id: x\nlogging:\n  level: warn\n  format: text\n";
    let config = ok(text);
    assert_eq!(config.logging.level, "warn");
    assert_eq!(config.logging.format, LogFormat::Text);

    let env = env_of(&[
        ("AWS_ACCESS_KEY_ID", "a"),
        ("AWS_SECRET_ACCESS_KEY", "b"),
        ("ORCA_LOG_LEVEL", "DEBUG"),
    ]);
    let config = from_yaml_str_with_env(text, &env).unwrap();
    assert_eq!(config.logging.level, "debug");

    let env = env_of(&[
        ("AWS_ACCESS_KEY_ID", "a"),
        ("AWS_SECRET_ACCESS_KEY", "b"),
        ("ORCA_LOG_LEVEL", "chatty"),
    ]);
    let e = err_with(text, &env);
    assert_eq!(
        e.to_string(),
        "logging.level: \"chatty\" (from env ORCA_LOG_LEVEL) is not one of trace, debug, info, warn, error"
    );
}

#[test]
fn sizes_in_every_form() {
    let config = ok("origin:\n  id: x\nchunking:\n  size: 1048576\n  tiers:\n    - { min_object_size: 1GB, size: \"2 MiB\" }\n    - { min_object_size: 1TiB, size: 4mib }\n");
    assert_eq!(config.chunking.base, MIB);
    assert_eq!(
        config.chunking.tiers,
        vec![
            Tier {
                min_object_size: 1_000_000_000,
                size: 2 * MIB
            },
            Tier {
                min_object_size: 1 << 40,
                size: 4 * MIB
            },
        ]
    );
    let e = err("origin:\n  id: x\nchunking:\n  size: 1.5MiB\n");
    assert!(
        e.to_string()
            .starts_with("chunking.size: invalid size \"1.5MiB\""),
        "{e}"
    );
    let e = err("origin:\n  id: x\nchunking:\n  size: -8\n");
    assert!(
        e.to_string()
            .starts_with("chunking.size: invalid size \"-8\""),
        "{e}"
    );
}

#[test]
fn yaml_merge_keys_work() {
    let config = ok(
        "origin:\n  id: x\nlimits:\n  <<: { origin_concurrency: 8 }\n  readahead_memory: 512MiB\n",
    );
    assert_eq!(config.limits.origin_concurrency, 8);
    assert_eq!(config.limits.readahead_memory, 512 * MIB);
}

#[test]
fn load_reports_the_path_of_an_unreadable_file() {
    let e = load(std::path::Path::new("/nonexistent/orca.yaml")).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(e.to_string().contains("/nonexistent/orca.yaml"), "{e}");
    assert!(std::error::Error::source(&e).is_some());
}

#[test]
fn shipped_config_files_validate() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conf");

    let config = load_with_env(&dir.join("orca.yaml"), &aws_env()).unwrap();
    assert_eq!(config.origin.id, "local-s3");
    assert_eq!(
        config.origin.driver,
        OriginDriver::S3(S3OriginConfig {
            endpoint: "http://127.0.0.1:9000".into(),
            region: "us-east-1".into(),
            path_style: true,
            // aws_env()'s keys are read by the default chain's first link.
            credentials: S3Credentials::DefaultChain,
        })
    );
    // Apart from the origin, the shipped file spells out the defaults.
    let defaults = ok(MINIMAL);
    assert_eq!(config.listen, defaults.listen);
    assert_eq!(config.edge, defaults.edge);
    assert_eq!(config.cachestore, defaults.cachestore);
    assert_eq!(config.chunking, defaults.chunking);
    assert_eq!(config.metadata, defaults.metadata);
    assert_eq!(config.catalog, defaults.catalog);
    assert_eq!(config.limits, defaults.limits);
    assert_eq!(config.cluster, defaults.cluster);
    assert_eq!(config.logging, defaults.logging);

    // Without credentials in the environment, the default chain is asked at start.
    let config = load_with_env(&dir.join("orca.yaml"), &env_of(&[])).unwrap();
    assert!(matches!(
        config.origin.driver,
        OriginDriver::S3(S3OriginConfig {
            credentials: S3Credentials::DefaultChain,
            ..
        })
    ));

    let minimal = load_with_env(&dir.join("orca-minimal.yaml"), &aws_env()).unwrap();
    assert_eq!(minimal.origin.id, "my-origin");
    assert_eq!(minimal, defaults);
}

#[test]
fn fs_store_bounds() {
    let config = ok("origin:\n  id: x\ncachestore:\n  fs:\n    max_size: 100GiB\n    min_free: 20GiB\n    low_watermark: 80GiB\n");
    assert_eq!(
        config.cachestore,
        CacheStoreConfig::Fs {
            root: std::path::absolute("./data/cache").unwrap(),
            limits: FsLimits {
                max_size: Some(100 * GIB),
                min_free: SizeOrPercent::Size(20 * GIB),
                low_watermark: SizeOrPercent::Size(80 * GIB),
            },
        }
    );
    let config =
        ok("origin:\n  id: x\ncachestore:\n  fs:\n    min_free: 0%\n    low_watermark: 75%\n");
    let CacheStoreConfig::Fs { limits, .. } = config.cachestore else {
        panic!("fs");
    };
    assert_eq!(limits.min_free, SizeOrPercent::Percent(0));
    assert_eq!(limits.low_watermark, SizeOrPercent::Percent(75));

    // Every problem, each naming its key.
    let got = problems("origin:\n  id: x\ncachestore:\n  fs:\n    max_size: 0\n    min_free: 100%\n    low_watermark: 100%\n");
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got[0].starts_with("cachestore.fs.max_size: must be greater than 0"),
        "{got:?}"
    );
    assert!(
        got[1].starts_with("cachestore.fs.min_free: 100%"),
        "{got:?}"
    );
    assert!(
        got[2].starts_with("cachestore.fs.low_watermark: 100% must be between 1% and 99%"),
        "{got:?}"
    );
    let got = problems(
        "origin:\n  id: x\ncachestore:\n  fs:\n    max_size: 10GiB\n    low_watermark: 10GiB\n",
    );
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with(
            "cachestore.fs.low_watermark: 10737418240 bytes must be below cachestore.fs.max_size"
        ),
        "{got:?}"
    );
    let got = problems("origin:\n  id: x\ncachestore:\n  fs:\n    low_watermark: 0%\n");
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("cachestore.fs.low_watermark: 0% must be between"),
        "{got:?}"
    );
    let got = problems("origin:\n  id: x\ncachestore:\n  fs:\n    max_size: 4MiB\n");
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with(
            "cachestore.fs.max_size: 4194304 bytes is less than the largest chunk size \
             (134217728 bytes)"
        ),
        "{got:?}"
    );
    // Malformed values name the key too.
    let e = err("origin:\n  id: x\ncachestore:\n  fs:\n    min_free: 2.5%\n");
    assert!(
        e.to_string()
            .starts_with("cachestore.fs.min_free: invalid percentage \"2.5%\": fractions"),
        "{e}"
    );
    let e = err("origin:\n  id: x\ncachestore:\n  fs:\n    max_size: 10%\n");
    assert!(
        e.to_string()
            .starts_with("cachestore.fs.max_size: invalid size \"10%\""),
        "{e}"
    );
    // The fs keys are not checked with driver: s3 (as the s3 section is not with driver: fs).
    let config = ok("origin:\n  id: x\ncachestore:\n  driver: s3\n  fs:\n    max_size: 0\n  s3:\n    access_key_id: a\n    secret_access_key: b\n");
    assert!(matches!(config.cachestore, CacheStoreConfig::S3 { .. }));
}

#[test]
fn local_tier_in_front_of_the_shared_store() {
    const S3: &str = "origin:\n  id: x\ncachestore:\n  driver: s3\n  s3:\n    access_key_id: a\n    secret_access_key: b\n";
    // Unset: off.
    let CacheStoreConfig::S3 { local, .. } = ok(S3).cachestore else {
        panic!("s3");
    };
    assert_eq!(local, None);
    let CacheStoreConfig::S3 { local, .. } = ok(&format!("{S3}  local:\n")).cachestore else {
        panic!("s3");
    };
    assert_eq!(local, None, "an empty section is off");
    // The keys and defaults of cachestore.fs.
    let config = ok(&format!(
        "{S3}  local:\n    root: /var/cache/orca-local\n    max_size: 200GiB\n    min_free: 10%\n    low_watermark: 150GiB\n"
    ));
    let CacheStoreConfig::S3 { local, bucket, .. } = config.cachestore else {
        panic!("s3");
    };
    assert_eq!(bucket, "orca-cache");
    assert_eq!(
        local,
        Some(LocalTier {
            root: PathBuf::from("/var/cache/orca-local"),
            limits: FsLimits {
                max_size: Some(200 * GIB),
                min_free: SizeOrPercent::Percent(10),
                low_watermark: SizeOrPercent::Size(150 * GIB),
            },
        })
    );
    let CacheStoreConfig::S3 { local, .. } = ok(&format!("{S3}  local: {{}}\n")).cachestore else {
        panic!("s3");
    };
    assert_eq!(
        local,
        Some(LocalTier {
            root: std::path::absolute("./data/cache").unwrap(),
            limits: FsLimits::default(),
        })
    );

    // Every problem, each naming its key under cachestore.local.
    let got = problems(&format!("{S3}  local:\n    root: \" \"\n"));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("cachestore.local.root: must not be empty"),
        "{got:?}"
    );
    let got = problems(&format!(
        "{S3}  local:\n    max_size: 0\n    min_free: 100%\n    low_watermark: 100%\n"
    ));
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got[0].starts_with("cachestore.local.max_size: must be greater than 0"),
        "{got:?}"
    );
    assert!(
        got[1].starts_with("cachestore.local.min_free: 100%"),
        "{got:?}"
    );
    assert!(
        got[2].starts_with("cachestore.local.low_watermark: 100% must be between 1% and 99%"),
        "{got:?}"
    );
    let got = problems(&format!(
        "{S3}  local:\n    max_size: 10GiB\n    low_watermark: 10GiB\n"
    ));
    assert!(
        got[0].starts_with(
            "cachestore.local.low_watermark: 10737418240 bytes must be below cachestore.local.max_size"
        ),
        "{got:?}"
    );
    let got = problems(&format!("{S3}  local:\n    max_size: 4MiB\n"));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with(
            "cachestore.local.max_size: 4194304 bytes is less than the largest chunk size"
        ),
        "{got:?}"
    );
    // Problems of the local tier and of the s3 section are all reported.
    let got = problems("origin:\n  id: x\ncachestore:\n  driver: s3\n  s3:\n    bucket: Bad_Bucket\n    access_key_id: a\n    secret_access_key: b\n  local:\n    max_size: 0\n");
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got.iter()
            .any(|g| g.starts_with("cachestore.local.max_size")),
        "{got:?}"
    );
    assert!(
        got.iter().any(|g| g.starts_with("cachestore.s3.bucket")),
        "{got:?}"
    );
    // Unknown keys are named.
    let e = err(&format!("{S3}  local:\n    rot: /x\n"));
    assert!(e.to_string().contains("cachestore.local"), "{e}");
    assert!(e.to_string().contains("rot"), "{e}");
    // Only in front of a shared store.
    let got = problems("origin:\n  id: x\ncachestore:\n  local:\n    root: /x\n");
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with(
            "cachestore.local: is a tier in front of a shared store: only with driver: s3"
        ),
        "{got:?}"
    );
}

#[test]
fn the_ram_tier_is_off_by_default_and_bounded_in_bytes() {
    assert_eq!(
        ok(MINIMAL).memory_tier,
        crate::config::MemoryTier { max_size: 0 }
    );
    let config = ok("origin:\n  id: x\ncachestore:\n  memory:\n    max_size: 2GiB\n");
    assert_eq!(config.memory_tier.max_size, 2 * GIB);
    // With either driver, and an empty section is off.
    let config = ok("origin:\n  id: x\ncachestore:\n  memory: {}\n");
    assert_eq!(config.memory_tier.max_size, 0);
    // Smaller than the largest chunk (128 MiB in the default ladder): refused by name.
    let got = problems("origin:\n  id: x\ncachestore:\n  memory:\n    max_size: 64MiB\n");
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with(
            "cachestore.memory.max_size: 67108864 bytes is less than the largest chunk size"
        ),
        "{got:?}"
    );
    let e = err("origin:\n  id: x\ncachestore:\n  memory:\n    size: 1GiB\n");
    assert!(e.to_string().contains("cachestore.memory"), "{e}");
    let e = err("origin:\n  id: x\ncachestore:\n  memory:\n    max_size: lots\n");
    assert!(e.to_string().contains("cachestore.memory.max_size"), "{e}");
}

#[test]
fn azure_entra_credentials() {
    let azure = |extra: &str, env: &[(&str, &str)]| {
        let text = format!(
            "origin:\n  id: x\n  driver: azureblob\n  azureblob:\n    account: acct\n    credentials: entra\n{extra}"
        );
        from_yaml_str_with_env(&text, &env_of(env)).map(|c| match c.origin.driver {
            OriginDriver::AzureBlob(a) => a.credentials,
            OriginDriver::S3(_) => unreachable!(),
        })
    };
    let ids = [("AZURE_TENANT_ID", "t"), ("AZURE_CLIENT_ID", "c")];
    // Nothing set: the managed identity (system-assigned); a client id picks a user-assigned one.
    assert_eq!(
        azure("", &[]).unwrap(),
        AzureCredentials::Entra(EntraSource::ManagedIdentity { client_id: None })
    );
    assert_eq!(
        azure("", &ids[1..]).unwrap(),
        AzureCredentials::Entra(EntraSource::ManagedIdentity {
            client_id: Some("c".into())
        })
    );
    // AKS workload identity's three variables.
    let mut env = ids.to_vec();
    env.push(("AZURE_FEDERATED_TOKEN_FILE", "/var/run/token"));
    assert_eq!(
        azure("", &env).unwrap(),
        AzureCredentials::Entra(EntraSource::WorkloadIdentity {
            tenant_id: "t".into(),
            client_id: "c".into(),
            token_file: "/var/run/token".into(),
        })
    );
    // A client secret wins, as in Azure's SDKs; it never shows in Debug.
    env.push(("AZURE_CLIENT_SECRET", "s3cr3t"));
    let creds = azure("", &env).unwrap();
    assert_eq!(
        creds,
        AzureCredentials::Entra(EntraSource::ClientSecret {
            tenant_id: "t".into(),
            client_id: "c".into(),
            secret: "s3cr3t".into(),
        })
    );
    assert!(!format!("{creds:?}").contains("s3cr3t"), "{creds:?}");
    // Half a source is a problem naming the missing variable.
    let e = azure(
        "",
        &[
            ("AZURE_FEDERATED_TOKEN_FILE", "/t"),
            ("AZURE_CLIENT_ID", "c"),
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("origin.azureblob.credentials: entra: env AZURE_FEDERATED_TOKEN_FILE is set but AZURE_TENANT_ID is not"),
        "{e}"
    );
    // A key or SAS beside it, and a plain-http authority host, are refused by name.
    let e = azure("    account_key: a2V5\n    sas_token: sv=1\n", &[]).unwrap_err();
    let keys: Vec<&str> = e.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        vec!["origin.azureblob.account_key", "origin.azureblob.sas_token"]
    );
    let e = azure("", &[("AZURE_AUTHORITY_HOST", "http://login.example")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("AZURE_AUTHORITY_HOST must be an https:// URL"),
        "{e}"
    );
    // credentials: sas without the token; shared_key with one.
    let base = "origin:\n  id: x\n  driver: azureblob\n  azureblob:\n    account: acct\n";
    let e =
        from_yaml_str_with_env(&format!("{base}    credentials: sas\n"), &env_of(&[])).unwrap_err();
    assert_eq!(e.problems()[0].key, "origin.azureblob.sas_token");
    let e = from_yaml_str_with_env(
        &format!("{base}    credentials: shared_key\n    sas_token: sv=1\n"),
        &env_of(&[("AZURE_STORAGE_KEY", "a2V5")]),
    )
    .unwrap_err();
    assert_eq!(e.problems()[0].key, "origin.azureblob.sas_token");
    let e = from_yaml_str_with_env(&format!("{base}    credentials: oauth\n"), &env_of(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("origin.azureblob.credentials"), "{e}");
}

#[test]
fn subrange_keys_are_checked_and_named() {
    let config = ok("origin:\n  id: x\nchunking:\n  subrange_size: 0\n  subrange_streams: 1\n");
    assert_eq!(config.chunking.subrange_size, 0);
    assert_eq!(config.chunking.subrange_streams, 1);
    let config = ok("origin:\n  id: x\nchunking:\n  subrange_size: 2MiB\n  subrange_streams: 16\n");
    assert_eq!(config.chunking.subrange_size, 2 * MIB);
    assert_eq!(config.chunking.subrange_streams, 16);
    let found =
        problems("origin:\n  id: x\nchunking:\n  subrange_size: 64KiB\n  subrange_streams: 0\n");
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("chunking.subrange_size: 65536 bytes")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("chunking.subrange_streams: 0 is outside")),
        "{found:?}"
    );
    let found = problems("origin:\n  id: x\nchunking:\n  subrange_streams: 17\n");
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("chunking.subrange_streams: 17")),
        "{found:?}"
    );
}
