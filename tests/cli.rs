//! The `orca` command line: `orca -t --config F` validates, exits non-zero on a bad file and
//! names the key (or the line); the shipped configuration files are valid; the cache store's
//! start-up checks run.

#![allow(clippy::unwrap_used)]

mod common;

use common::{orca_bin, run_bounded, CLIENT_DEADLINE};
use std::path::Path;
use std::process::{Command, Output};

/// `orca ARGS` with test credentials and none of the variables that would change the outcome,
/// bounded in time.
fn orca(args: &[&str], env: &[(&str, &str)]) -> Output {
    // A configuration without `cachestore.fs.root` uses ./data/cache: not in the checkout.
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(orca_bin());
    cmd.current_dir(cwd.path())
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env_remove("ORCA_LOG_LEVEL")
        .env_remove("ORCA_SELF")
        .env_remove("ORCA_CONFIG")
        .envs(env.iter().copied());
    run_bounded(&mut cmd, None, CLIENT_DEADLINE)
}

fn check(dir: &Path, yaml: &str) -> Output {
    let path = dir.join("orca.yaml");
    std::fs::write(&path, yaml).unwrap();
    orca(&["-t", "--config", path.to_str().unwrap()], &[])
}

fn valid(root: &Path) -> String {
    format!(
        "origin:\n  id: test\n  s3:\n    endpoint: http://127.0.0.1:9\n    path_style: true\n\
         cachestore:\n  fs:\n    root: {}\n",
        root.display()
    )
}

#[test]
fn a_valid_configuration_passes() {
    let dir = tempfile::tempdir().unwrap();
    let out = check(dir.path(), &valid(&dir.path().join("cache")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn each_bad_configuration_fails_naming_its_key_or_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let base = valid(&root);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "missing origin.id",
            base.replace("  id: test\n", ""),
            "origin.id",
        ),
        (
            "unknown key",
            format!("{base}limits:\n  origin_concurency: 4\n"),
            "origin_concurency",
        ),
        (
            "tiers not ascending",
            format!(
                "{base}chunking:\n  tiers:\n    - {{ min_object_size: 10GiB, size: 64MiB }}\n    - {{ min_object_size: 1GiB, size: 128MiB }}\n"
            ),
            "chunking.tiers[1].min_object_size",
        ),
        (
            "zero chunk size",
            format!("{base}chunking:\n  size: 0\n"),
            "chunking.size",
        ),
        (
            "bad duration",
            format!("{base}metadata:\n  ttl: 5 fortnights\n"),
            "metadata.ttl",
        ),
        (
            "malformed YAML",
            format!("{base}limits: [unclosed\n"),
            "line",
        ),
    ];
    for (what, yaml, needle) in cases {
        let out = check(dir.path(), &yaml);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(
            stderr.contains(needle),
            "{what}: {stderr:?} does not name {needle:?}"
        );
    }
}

#[test]
fn the_shipped_configuration_files_are_valid() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let dir = tempfile::tempdir().unwrap();
    for name in ["orca.yaml", "orca-minimal.yaml"] {
        // Point the cache root somewhere writable; everything else is as shipped.
        let text = std::fs::read_to_string(conf.join(name)).unwrap();
        let text = text.replace("./data/cache", &dir.path().join("cache").to_string_lossy());
        let out = check(dir.path(), &text);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn an_unwritable_cache_root_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = check(dir.path(), &valid(Path::new("/proc/orca-not-writable")));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cachestore.fs.root"), "{stderr}");
}

#[test]
fn crash_leftovers_are_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    // Named as Orca names them (`<pid>.<seq>.<chunk>.tmp`), by a process that is gone.
    std::fs::write(
        root.join("tmp").join("4294967294.0.abc-0.tmp"),
        b"half a chunk",
    )
    .unwrap();
    let out = check(dir.path(), &valid(&root));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
}

#[test]
fn exit_codes_tell_a_bad_configuration_from_a_failed_start() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "origin:\n  s3: {}\n").unwrap();
    let bad = bad.to_str().unwrap();
    // An invalid configuration: 2, with or without -t, naming the file.
    for args in [vec!["-t", "--config", bad], vec!["--config", bad]] {
        let out = orca(&args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("orca: invalid configuration"), "{stderr}");
        assert!(stderr.contains(bad), "{stderr}");
    }
    // A valid configuration whose cache root cannot be written: a failed -t build is 2, a
    // failed start is 1.
    let unwritable = dir.path().join("unwritable.yaml");
    std::fs::write(&unwritable, valid(Path::new("/proc/orca-not-writable"))).unwrap();
    let unwritable = unwritable.to_str().unwrap();
    let out = orca(&["-t", "--config", unwritable], &[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pingora = dir.path().join("pingora.yaml");
    std::fs::write(
        &pingora,
        format!(
            "---\nversion: 1\npid_file: {0}/orca.pid\nupgrade_sock: {0}/upgrade.sock\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = orca(
        &["--config", unwritable, "-c", pingora.to_str().unwrap()],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("orca: cannot start"), "{stderr}");
    assert!(stderr.contains("cachestore.fs.root"), "{stderr}");
    // No configuration at all: clap's usage error, 2.
    let out = orca(&["-t"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}

#[test]
fn orca_config_names_the_file_when_config_is_not_given() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("from-env.yaml");
    std::fs::write(&path, valid(&dir.path().join("cache"))).unwrap();
    let out = orca(&["-t"], &[("ORCA_CONFIG", path.to_str().unwrap())]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("configuration {} is valid", path.display())),
        "{stdout}"
    );
    // --config wins over ORCA_CONFIG.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "not: [valid\n").unwrap();
    let out = orca(
        &["-t", "--config", path.to_str().unwrap()],
        &[("ORCA_CONFIG", bad.to_str().unwrap())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = orca(&["-t"], &[("ORCA_CONFIG", bad.to_str().unwrap())]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(bad.to_str().unwrap()));
}

/// In a container Orca is pid 1 at every start, so a pid cannot tell a crashed process's
/// commits in progress from a running one's. Each process writes in a directory of its own and
/// holds a lock on it: a directory whose lock is free belongs to a process that is gone and is
/// removed at start; one whose lock is held (a running Orca) is left alone.
#[test]
fn a_crashed_instances_temp_directory_is_removed_and_a_running_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let tmp = root.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let crashed = tmp.join("00000000deadbeef");
    std::fs::create_dir_all(&crashed).unwrap();
    std::fs::write(crashed.join(".lock"), b"").unwrap();
    std::fs::write(crashed.join("0.abc-0.tmp"), b"half a chunk").unwrap();
    let running = tmp.join("00000000c0ffee00");
    std::fs::create_dir_all(&running).unwrap();
    let lock = std::fs::File::create(running.join(".lock")).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    std::fs::write(running.join("0.abc-1.tmp"), b"in progress").unwrap();
    let out = check(dir.path(), &valid(&root));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !crashed.exists(),
        "the crashed instance's leftovers are removed"
    );
    assert!(
        running.join("0.abc-1.tmp").exists(),
        "a running instance's commit is kept"
    );
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(
        left,
        vec![running.clone()],
        "orca -t leaves no directory of its own"
    );
    drop(lock);
}
