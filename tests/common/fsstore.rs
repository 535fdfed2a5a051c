//! What an `fs` cache store holds on disk, read straight from its directory: chunk files under
//! `ROOT/v1/`, spools (a fill's temp files) under `ROOT/tmp/<instance>/`.

use std::path::Path;
use std::time::Duration;

/// The chunk files the fs store in `root` holds.
pub fn chunk_file_count(root: &Path) -> usize {
    fn walk(dir: &Path) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| {
                if e.path().is_dir() {
                    walk(&e.path())
                } else {
                    1
                }
            })
            .sum()
    }
    walk(&root.join("v1"))
}

/// The files under the store's temp directory `tmp` (`ROOT/tmp`), instance locks aside.
pub fn spool_files(tmp: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(tmp) else {
        return out;
    };
    for d in dirs.flatten() {
        if !d.path().is_dir() {
            out.push(d.file_name().to_string_lossy().to_string());
            continue;
        }
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            if name != ".lock" {
                out.push(name);
            }
        }
    }
    out
}

/// Waits (at most 10 s) until `tmp` holds no spool (a failed fill's spool goes when its last
/// reader does).
pub async fn no_spool_left(tmp: &Path) {
    for _ in 0..500 {
        if spool_files(tmp).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("spools left in {}: {:?}", tmp.display(), spool_files(tmp));
}
