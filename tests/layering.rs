//! The crate's module map, checked: every `crate::` path in `src/` points at a module in the
//! same layer or a lower one, and the modules' import graph has no cycle. The layers are the
//! ones `src/lib.rs` and `docs/design.md` describe; a new module must be added here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Layer of each top-level module: imports may only point down (or sideways, without cycles).
const LAYERS: &[(&str, u8)] = &[
    ("app", 5),
    ("fuzzing", 5),
    ("edge", 4),
    ("ops", 4),
    ("cachectl", 4),
    ("fill", 3),
    ("seed", 3),
    ("state", 2),
    ("origin", 1),
    ("cachestore", 1),
    ("metadata", 1),
    ("cluster", 1),
    ("s3client", 0),
    ("net", 0),
    ("chunk", 0),
    ("config", 0),
    ("error", 0),
    ("metrics", 0),
    ("telemetry", 0),
    ("credentials", 0),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// The top-level module a file under `src/` belongs to (`None` for lib.rs, main.rs and the other
/// binaries in `src/bin/`, which sit above every layer).
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (name != "lib" && name != "main" && name != "bin").then_some(name)
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a file's code (not its comments) names with `crate::`.
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
            rest = after;
        }
    }
    found
}

#[test]
fn imports_point_down_and_never_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let Some(module) = module_of(rel) else {
            continue;
        };
        let Some(own) = layer(&module) else {
            problems.push(format!(
                "{}: module {module} has no layer in tests/layering.rs",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("readable source");
        for target in imports(&text) {
            if target == module {
                continue;
            }
            match layer(&target) {
                None => problems.push(format!(
                    "{}: crate::{target} is not a known module",
                    rel.display()
                )),
                Some(l) if l > own => problems.push(format!(
                    "{}: {module} (layer {own}) imports crate::{target} (layer {l})",
                    rel.display()
                )),
                Some(_) => {
                    graph.entry(module.clone()).or_default().insert(target);
                }
            }
        }
    }
    // Sideways imports inside a layer are fine as long as they form no cycle.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        problems: &mut Vec<String>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(at) = path.iter().position(|p| p == node) {
            problems.push(format!(
                "import cycle: {} -> {node}",
                path[at..].join(" -> ")
            ));
            return;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done, problems);
        }
        path.pop();
        done.insert(node.to_string());
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done, &mut problems);
    }
    assert!(
        problems.is_empty(),
        "module map broken:\n{}",
        problems.join("\n")
    );
    assert!(
        graph.len() >= 10,
        "the check saw too few modules: {graph:?}"
    );
}

#[test]
fn the_checker_sees_an_upward_import() {
    // The parser itself: a `crate::` path in code counts, one in a comment does not.
    let text = "use crate::edge::EdgeService;\n// crate::app in a comment\nfn f() { crate::metrics::init(); }";
    let found = imports(text);
    assert!(found.contains("edge") && found.contains("metrics"));
    assert!(!found.contains("app"));
}
