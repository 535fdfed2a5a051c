//! Replays every input kept for the fuzz targets (`fuzz/corpus/<target>/`, and the inputs that
//! once broke something, `fuzz/regressions/<target>/`) through the same entry points the
//! fuzzers drive (`orca::fuzzing`), so a parser change that brings back an old finding, or
//! breaks a promise on a known input, fails the ordinary test run. Fuzzing itself is
//! `hack/fuzz.sh DURATION` (docs/reliability.md).

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_kept_fuzz_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for (name, target) in orca::fuzzing::TARGETS {
        let corpus = inputs(&root.join("corpus").join(name));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{name}/ is empty or missing: every target keeps its seeds"
        );
        let binary = root.join("fuzz_targets").join(format!("{name}.rs"));
        assert!(binary.is_file(), "no fuzz target {}", binary.display());
        for path in corpus
            .into_iter()
            .chain(inputs(&root.join("regressions").join(name)))
        {
            let data = std::fs::read(&path).expect("read input");
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(
                outcome.is_ok(),
                "{name}: {} broke its target",
                path.display()
            );
            replayed += 1;
        }
    }
    eprintln!("replayed {replayed} inputs");
}
