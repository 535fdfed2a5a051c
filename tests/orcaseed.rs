//! `orcaseed` against real stores: moto (S3) and Azurite (Azure Blob), each started on a free
//! port of 127.0.0.1. The binary is run as users run it, and what it wrote is read back with
//! other clients. Also: `hack/dev-up.sh` / `hack/dev-down.sh` bring up and tear down a fleet.
#![allow(clippy::unwrap_used)]

mod common;

use common::azurite::{AzClient, Azurite, KEY};
use common::{block_on, create_bucket, get_object, run_bounded, sha256_hex, Moto};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// Upper bound of one orcaseed run in these tests.
const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// The store under test, with a client that reads back what orcaseed wrote.
enum Target {
    S3(Moto),
    Azure(Azurite, AzClient),
}

impl Target {
    fn moto() -> Target {
        Target::S3(Moto::start())
    }

    fn azurite() -> Target {
        let azurite = Azurite::start();
        let client = AzClient::new(&azurite);
        Target::Azure(azurite, client)
    }

    fn scheme(&self) -> &'static str {
        match self {
            Target::S3(_) => "s3",
            Target::Azure(..) => "az",
        }
    }

    fn url(&self, bucket: &str, prefix: &str) -> String {
        format!("{}://{bucket}/{prefix}", self.scheme())
    }

    fn create(&self, bucket: &str) {
        match self {
            Target::S3(moto) => block_on(create_bucket(&moto.endpoint(), bucket)),
            Target::Azure(_, client) => block_on(client.create_container(bucket)),
        }
    }

    /// The object's bytes, `None` when it does not exist.
    fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        match self {
            Target::S3(moto) => block_on(get_object(&moto.endpoint(), bucket, key)),
            Target::Azure(_, client) => {
                let r = block_on(client.send("GET", bucket, Some(key), &[], &[], vec![]));
                match r.status {
                    200 => Some(r.body),
                    404 => None,
                    s => panic!("GET {bucket}/{key}: {s}"),
                }
            }
        }
    }

    /// Runs orcaseed against this store, stdin closed.
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orcaseed"));
        cmd.env_remove("AZURE_STORAGE_SAS_TOKEN")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE");
        match self {
            Target::S3(moto) => {
                cmd.args(["--endpoint-url", &moto.endpoint()])
                    .env("AWS_ACCESS_KEY_ID", "test")
                    .env("AWS_SECRET_ACCESS_KEY", "test");
            }
            Target::Azure(azurite, _) => {
                cmd.args([
                    "--endpoint-url",
                    &format!("http://{}/devstoreaccount1", azurite.addr()),
                ])
                .env("AZURE_STORAGE_KEY", KEY);
            }
        }
        cmd.arg("--no-progress").args(args);
        run_bounded(&mut cmd, None, RUN_DEADLINE)
    }

    /// Runs orcaseed and panics unless it succeeds; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "orcaseed {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `orcaseed list`: key -> (size, etag).
    fn list(&self, bucket: &str, prefix: &str) -> BTreeMap<String, (u64, String)> {
        self.ok(&["list", &self.url(bucket, prefix)])
            .lines()
            .map(|line| {
                let fields: Vec<&str> = line.split('\t').collect();
                assert_eq!(fields.len(), 3, "list line {line:?}");
                (
                    fields[0].to_string(),
                    (fields[1].parse().unwrap(), fields[2].to_string()),
                )
            })
            .collect()
    }
}

/// `generate --seed 7` twice, with concurrency 1 and 5: the same bytes object by object;
/// within a run every object differs; the first bytes are the documented generator's.
fn generate_is_the_same_whatever_the_concurrency(t: &Target) {
    let bucket = "seeded";
    t.create(bucket);
    // 1300 KiB: two pieces of the writer, the second not a whole number of 8-byte words.
    let common = ["--count", "5", "--size", "1300KiB", "--seed", "7"];
    let mut one = vec!["generate", "--concurrency", "1"];
    one.extend(common);
    let url_a = t.url(bucket, "a");
    one.push(&url_a);
    let printed = t.ok(&one);
    assert!(printed.contains("5 objects"), "{printed}");
    let mut five = vec!["generate", "--concurrency", "5"];
    five.extend(common);
    let url_b = t.url(bucket, "b/");
    five.push(&url_b);
    t.ok(&five);

    let mut sums = BTreeSet::new();
    for i in 0..5 {
        let key = format!("obj-{i:06}");
        let a = t.get(bucket, &format!("a/{key}")).unwrap();
        let b = t.get(bucket, &format!("b/{key}")).unwrap();
        assert_eq!(a.len(), 1300 * 1024, "{key}");
        assert_eq!(sha256_hex(&a), sha256_hex(&b), "{key} differs between runs");
        sums.insert(sha256_hex(&a));
        if i == 0 {
            // The first word of object 0 of seed 7, pinned in src/seed/gen.rs.
            assert_eq!(hex::encode(&a[..8]), "0b4ccfcf1d0aadb4");
        }
    }
    assert_eq!(sums.len(), 5, "objects within a run must differ");
    let listed = t.list(bucket, "a/");
    assert_eq!(listed.len(), 5);
    assert!(listed
        .values()
        .all(|(size, etag)| *size == 1300 * 1024 && !etag.is_empty()));
}

#[test]
fn generate_is_the_same_whatever_the_concurrency_on_moto() {
    generate_is_the_same_whatever_the_concurrency(&Target::moto());
}

#[test]
fn generate_is_the_same_whatever_the_concurrency_on_azurite() {
    generate_is_the_same_whatever_the_concurrency(&Target::azurite());
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// `upload` of a directory (keys relative to it), `list`, `delete` refused with stdin closed
/// and no `--yes` (nothing deleted), then `delete --yes` of the prefix only.
fn upload_list_delete(t: &Target) {
    let bucket = "uploads";
    t.create(bucket);
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("a.txt", b"hello\n".to_vec()),
        ("empty", Vec::new()),
        // Larger than one piece of the writer: streamed from disk in pieces.
        ("sub/dir/big.bin", common::deterministic_bytes(3, 2_621_447)),
        ("sub/c d+e.txt", b"awkward name\n".to_vec()),
    ];
    for (rel, data) in &files {
        write(dir.path(), rel, data);
    }
    // Something outside the prefix, which delete must leave alone.
    t.ok(&[
        "generate",
        "--count",
        "1",
        "--size",
        "10",
        &t.url(bucket, "keep/"),
    ]);

    let printed = t.ok(&["upload", dir.path().to_str().unwrap(), &t.url(bucket, "up")]);
    assert!(printed.contains("4 objects"), "{printed}");
    let listed = t.list(bucket, "up/");
    let want: BTreeMap<String, u64> = files
        .iter()
        .map(|(rel, data)| (format!("up/{rel}"), data.len() as u64))
        .collect();
    let got: BTreeMap<String, u64> = listed.iter().map(|(k, (s, _))| (k.clone(), *s)).collect();
    assert_eq!(got, want);
    for (rel, data) in &files {
        assert_eq!(
            t.get(bucket, &format!("up/{rel}")).as_deref(),
            Some(&data[..]),
            "{rel}"
        );
    }

    // A single file to a key.
    t.ok(&[
        "upload",
        dir.path().join("a.txt").to_str().unwrap(),
        &t.url(bucket, "one/renamed.txt"),
    ]);
    assert_eq!(
        t.get(bucket, "one/renamed.txt").as_deref(),
        Some(&b"hello\n"[..])
    );

    // No --yes and stdin closed: refused, exit 2, nothing deleted.
    let refused = t.run(&["delete", &t.url(bucket, "up/")]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--yes") && stderr.contains("4 objects"),
        "{stderr}"
    );
    assert_eq!(t.list(bucket, "up/").len(), 4);

    let printed = t.ok(&["delete", "--yes", &t.url(bucket, "up/")]);
    assert!(printed.contains("4 objects"), "{printed}");
    assert!(t.list(bucket, "up/").is_empty());
    assert_eq!(t.get(bucket, "up/a.txt"), None);
    assert_eq!(t.list(bucket, "keep/").len(), 1);
    assert_eq!(t.list(bucket, "one/").len(), 1);
    // Deleting an empty prefix is not an error.
    let printed = t.ok(&["delete", "--yes", &t.url(bucket, "up/")]);
    assert!(printed.contains("nothing under"), "{printed}");
}

#[test]
fn upload_list_delete_on_moto() {
    upload_list_delete(&Target::moto());
}

#[test]
fn upload_list_delete_on_azurite() {
    upload_list_delete(&Target::azurite());
}

/// A failed request: exit 1 and a message naming the object and the store's error code.
fn a_missing_bucket_fails_naming_the_key(t: &Target, code: &str) {
    let out = t.run(&[
        "generate",
        "--count",
        "2",
        "--size",
        "1KiB",
        "--concurrency",
        "1",
        &t.url("no-such-bucket", "x/"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let key = format!("PUT {}://no-such-bucket/x/obj-000000", t.scheme());
    assert!(stderr.contains(&key), "{stderr}");
    assert!(stderr.contains(code), "{stderr}");
    let out = t.run(&["list", &t.url("no-such-bucket", "")]);
    assert_eq!(out.status.code(), Some(1));
    // Above 1 GiB without --force: refused before any request, naming the flag.
    let out = t.run(&[
        "generate",
        "--count",
        "1",
        "--size",
        "2GiB",
        &t.url("x", ""),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
}

#[test]
fn a_missing_bucket_fails_naming_the_key_on_moto() {
    a_missing_bucket_fails_naming_the_key(&Target::moto(), "NoSuchBucket");
}

#[test]
fn a_missing_container_fails_naming_the_key_on_azurite() {
    a_missing_bucket_fails_naming_the_key(&Target::azurite(), "ContainerNotFound");
}

/// The processes of a fleet hack/dev-up.sh started, by the pids it recorded.
struct Fleet {
    dir: tempfile::TempDir,
    base: u16,
    /// The pids read after dev-up, killed on drop if still running whatever the pid files say.
    started: std::cell::RefCell<Vec<(&'static str, &'static str, u32)>>,
}

/// What each recorded process runs (a word of its command line), as hack/dev-down.sh checks.
const FLEET: &[(&str, &str)] = &[
    ("moto", "moto_server"),
    ("azurite", "azurite"),
    ("replica1", "conf/replica1.yaml"),
    ("replica2", "conf/replica2.yaml"),
    ("replica3", "conf/replica3.yaml"),
];

/// Whether `pid` runs a program whose command line contains `word` (a zombie does not).
fn runs(pid: u32, word: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            String::from_utf8_lossy(&c)
                .replace('\0', " ")
                .contains(word)
        })
        .unwrap_or(false)
}

impl Fleet {
    /// A base port whose eleven ports (moto, Azurite, three replicas' three) are all free,
    /// below Linux's ephemeral range (32768 and up), so that no `free_port()` of another test
    /// takes one of them between this check and dev-up's start.
    fn free_base() -> u16 {
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        for attempt in 0..200u32 {
            let base = 20_000 + ((std::process::id() * 7 + attempt * 97) % 120) as u16 * 100;
            let ports = [0, 1, 10, 11, 12, 20, 21, 22, 30, 31, 32].map(|d| base + d);
            if ports.iter().all(|p| free(*p)) {
                return base;
            }
        }
        panic!("no free block of ports for the fleet");
    }

    fn script(&self, name: &str) -> Output {
        let repo = env!("CARGO_MANIFEST_DIR");
        let mut cmd = Command::new("bash");
        cmd.arg(format!("{repo}/hack/{name}"))
            .env("ORCA_DEV_DIR", self.dir.path())
            .env("ORCA_DEV_BASE_PORT", self.base.to_string())
            .env("ORCA_DEV_SKIP_INSTALL", "1")
            .env("ORCA_BIN", common::orca_bin())
            .env("ORCASEED_BIN", env!("CARGO_BIN_EXE_orcaseed"))
            .env("AZURITE_BLOB", common::azurite::azurite_bin());
        run_bounded(&mut cmd, None, Duration::from_secs(240))
    }

    /// The pids dev-up recorded.
    fn pids(&self) -> Vec<(&'static str, &'static str, u32)> {
        FLEET
            .iter()
            .filter_map(|(name, word)| {
                let file = self.dir.path().join(format!("run/{name}.pid"));
                let pid = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
                Some((*name, *word, pid))
            })
            .collect()
    }
}

impl Drop for Fleet {
    /// Whatever happened in the test, nothing it started outlives it.
    fn drop(&mut self) {
        let mut all = self.started.borrow().clone();
        all.extend(self.pids());
        if all.iter().any(|(_, word, pid)| runs(*pid, word)) {
            let _ = self.script("dev-down.sh");
        }
        for (_, word, pid) in all {
            if runs(pid, word) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// `hack/dev-up.sh` brings up moto, Azurite and three replicas and seeds them; a second run
/// leaves the same fleet; one GET through each replica is byte-exact; `orca warm`, `inspect`
/// and `purge` work as the quickstart shows; `hack/dev-down.sh` stops every process dev-up
/// started (checked by pid) and frees the ports. This is the quickstart, run as written.
#[test]
fn dev_up_serves_through_each_replica_and_dev_down_leaves_nothing() {
    let fleet = Fleet {
        dir: tempfile::Builder::new()
            .prefix("orca-dev-")
            .tempdir()
            .unwrap(),
        base: Fleet::free_base(),
        started: Default::default(),
    };
    let up = fleet.script("dev-up.sh");
    *fleet.started.borrow_mut() = fleet.pids();
    let printed = String::from_utf8_lossy(&up.stdout).into_owned();
    assert!(
        up.status.success(),
        "dev-up failed: {}\n{printed}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(printed.contains("The fleet is up"), "{printed}");
    assert!(printed.contains("hack/dev-down.sh"), "{printed}");
    let pids = fleet.pids();
    assert_eq!(pids.len(), FLEET.len(), "recorded pids: {pids:?}");
    for (name, word, pid) in &pids {
        assert!(runs(*pid, word), "{name} (pid {pid}) is not running");
    }

    // Idempotent: the second run finds the fleet up and starts nothing.
    let again = fleet.script("dev-up.sh");
    assert!(again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("already up"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    assert_eq!(fleet.pids(), pids);

    // Seeded by orcaseed with --seed 1: the bytes are known without asking the origin.
    let size = 20 << 20;
    let want = orca::seed::gen::piece(orca::seed::gen::object_seed(1, 0), 0, size);
    for i in 1..=3u16 {
        let url = format!(
            "http://127.0.0.1:{}/demo/big/obj-000000",
            fleet.base + 10 * i
        );
        let got = block_on(common::http_get(&url, None)).unwrap();
        assert_eq!(got.status, 200, "replica {i}");
        assert!(got.body == want[..], "replica {i}: bytes differ");
    }

    // The quickstart's cache control (docs/quickstart.md, section 7): warm the whole `big/`
    // prefix through replica 1, inspect and purge one object through the others; the token is
    // the fleet's peer secret.
    let orca_cli = |args: &[&str]| {
        let mut cmd = Command::new(common::orca_bin());
        cmd.args(args)
            .arg("--token-file")
            .arg(fleet.dir.path().join("peer-secret"));
        run_bounded(&mut cmd, None, Duration::from_secs(120))
    };
    let ops = |i: u16| format!("http://127.0.0.1:{}", fleet.base + 10 * i + 2);
    let warm = orca_cli(&["warm", "s3://demo/big/", "--ops", &ops(1)]);
    let said =
        String::from_utf8_lossy(&warm.stdout).into_owned() + &String::from_utf8_lossy(&warm.stderr);
    assert!(warm.status.success(), "orca warm: {said}");
    assert!(said.contains("objects 3/3, chunks 9/9"), "{said}");
    let inspect = orca_cli(&["inspect", "s3://demo/big/obj-000000", "--ops", &ops(2)]);
    let said = String::from_utf8_lossy(&inspect.stdout).into_owned();
    assert!(inspect.status.success(), "orca inspect: {said}");
    assert!(said.contains("3 chunks, 3 cached"), "{said}");
    let purge = orca_cli(&["purge", "s3://demo/big/obj-000000", "--ops", &ops(3)]);
    let said = String::from_utf8_lossy(&purge.stdout).into_owned();
    assert!(purge.status.success(), "orca purge: {said}");
    assert!(said.contains("s3 3 chunks"), "{said}");
    // Purged everywhere, still served right: filled again from the origin.
    let got = block_on(common::http_get(
        &format!("http://127.0.0.1:{}/demo/big/obj-000000", fleet.base + 20),
        None,
    ))
    .unwrap();
    assert!(got.body == want[..], "after the purge: bytes differ");

    let down = fleet.script("dev-down.sh");
    assert!(
        down.status.success(),
        "dev-down failed: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    for (name, word, pid) in &pids {
        assert!(!runs(*pid, word), "{name} (pid {pid}) is still running");
    }
    for d in [0u16, 1, 10, 11, 12, 20, 21, 22, 30, 31, 32] {
        let port = fleet.base + d;
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "something still listens on {port}"
        );
    }
}

/// Azure with a SAS token (env `AZURE_STORAGE_SAS_TOKEN`, no account key): write, list and
/// delete. An account SAS (`ss=b`, `srt=sco`, `sp=rwdlc`) signed as Azure's 2020-12-06+
/// account SAS string-to-sign prescribes.
#[test]
fn a_sas_token_writes_lists_and_deletes_on_azurite() {
    use orca::net::encode::encode_query_value;
    use orca::origin::azureblob::sign::{SharedKey, API_VERSION};
    let t = Target::azurite();
    t.create("sas");
    let expiry = "2099-01-01T00:00:00Z";
    let account = common::azurite::ACCOUNT;
    let sts = format!("{account}\nrwdlc\nb\nsco\n\n{expiry}\n\n\n{API_VERSION}\n\n");
    let sig = SharedKey::new(account, KEY).unwrap().sign(&sts).unwrap();
    let sas = format!(
        "sv={API_VERSION}&ss=b&srt=sco&sp=rwdlc&se={}&sig={}",
        encode_query_value(expiry),
        encode_query_value(&sig)
    );
    let Target::Azure(azurite, _) = &t else {
        unreachable!()
    };
    let run = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orcaseed"));
        cmd.env_remove("AZURE_STORAGE_KEY")
            .env("AZURE_STORAGE_SAS_TOKEN", &sas)
            .args([
                "--no-progress",
                "--endpoint-url",
                &format!("http://{}/devstoreaccount1", azurite.addr()),
            ])
            .args(args);
        run_bounded(&mut cmd, None, RUN_DEADLINE)
    };
    let out = run(&["generate", "--count", "2", "--size", "3KiB", "az://sas/g/"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(t.get("sas", "g/obj-000001").map(|b| b.len()), Some(3072));
    let out = run(&["list", "az://sas/g/"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    let out = run(&["delete", "--yes", "az://sas/g/"]);
    assert!(out.status.success());
    assert_eq!(t.get("sas", "g/obj-000000"), None);
    // A token that does not sign: refused, naming the object.
    let bad = sas.replace("sp=rwdlc", "sp=rwdl");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orcaseed"));
    cmd.env_remove("AZURE_STORAGE_KEY")
        .env("AZURE_STORAGE_SAS_TOKEN", &bad)
        .args([
            "--no-progress",
            "--endpoint-url",
            &format!("http://{}/devstoreaccount1", azurite.addr()),
            "generate",
            "--count",
            "1",
            "--size",
            "1",
            "az://sas/bad/",
        ]);
    let out = run_bounded(&mut cmd, None, RUN_DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("PUT az://sas/bad/obj-000000: HTTP 403"),
        "{stderr}"
    );
}

/// The store's settings from an Orca configuration (`--config`): its `origin.s3` section, with
/// the keys written in it and none in the environment.
#[test]
fn the_origin_section_of_an_orca_config_is_used() {
    let moto = Moto::start();
    block_on(create_bucket(&moto.endpoint(), "fromconfig"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("orca.yaml");
    std::fs::write(
        &config,
        format!(
            "origin:\n  id: x\n  s3:\n    endpoint: {}\n    path_style: true\n    \
             access_key_id: file-id\n    secret_access_key: file-secret\ncachestore:\n  driver: fs\n",
            moto.endpoint()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orcaseed"));
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .args(["--no-progress", "--config", config.to_str().unwrap()])
        .args([
            "generate",
            "--count",
            "1",
            "--size",
            "1KiB",
            "s3://fromconfig/c/",
        ]);
    let out = run_bounded(&mut cmd, None, RUN_DEADLINE);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = block_on(get_object(&moto.endpoint(), "fromconfig", "c/obj-000000")).unwrap();
    assert_eq!(got.len(), 1024);
    // Without keys anywhere, the default credential chain is asked, as Orca asks it; when it
    // finds nothing either, the run fails saying so.
    std::fs::write(
        &config,
        format!(
            "origin:\n  id: x\n  s3:\n    endpoint: {}\n",
            moto.endpoint()
        ),
    )
    .unwrap();
    let nowhere = dir.path().join("no-such-aws-file");
    cmd.env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", &nowhere)
        .env("AWS_SHARED_CREDENTIALS_FILE", &nowhere)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
    let out = run_bounded(&mut cmd, None, RUN_DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.to_lowercase().contains("credentials"), "{stderr}");
}
