//! The `orca` command line: `orca -t --config F` validates, exits non-zero on a bad file and
//! names the key (or the line); the shipped configuration files are valid; the cache store's
//! start-up checks run.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

const ORCA: &str = env!("CARGO_BIN_EXE_orca");

fn check(dir: &Path, yaml: &str) -> Output {
    let path = dir.join("orca.yaml");
    std::fs::write(&path, yaml).unwrap();
    Command::new(ORCA)
        .args(["-t", "--config"])
        .arg(&path)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env_remove("ORCA_LOG_LEVEL")
        .env_remove("ORCA_SELF")
        .output()
        .unwrap()
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
