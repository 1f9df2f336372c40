//! The dependency rule of `src/lib.rs`, checked: modules form layers and a module uses
//! only modules of lower layers. Reads every `crate::` path (and `use crate::{…}` group)
//! in the library's source, outside comments, and fails on any edge that points
//! sideways or up, naming the file and line. Also: the binary's `main.rs` only parses
//! and dispatches, and no source file is over the size limit outside its tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layers of `src/lib.rs`, lowest first. A module may use modules of lower layers only.
const LAYERS: &[&[&str]] = &[
    &["domain", "support", "telemetry"],
    &["metrics"],
    &["signature", "store"],
    &["notify", "replay"],
    &["http"],
    &["config"],
    &["startup"],
];

/// Lines of code (tests excluded) above which a source file should be split.
const MAX_FILE_LINES: usize = 600;

/// Lines `src/main.rs` may have: parse, telemetry, dispatch.
const MAX_MAIN_LINES: usize = 60;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a library file belongs to (`src/http/admin.rs` → `http`), or
/// `None` for `lib.rs` and the binary (`main.rs`, `cmd/`).
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src()).expect("under src");
    let first = rel.components().next()?.as_os_str().to_string_lossy();
    let name = first.trim_end_matches(".rs").to_owned();
    match name.as_str() {
        "lib" | "main" | "cmd" => None,
        _ => Some(name),
    }
}

/// The code of a line without its `//` comment (doc comments included).
fn code(line: &str) -> &str {
    match line.find("//") {
        Some(at) => &line[..at],
        None => line,
    }
}

/// Every top-level module named after `crate::` in `text`: `crate::store::X` gives
/// `store`; `crate::{domain::X, store}` gives both.
fn crate_refs(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        // `$crate::` or an identifier ending in `crate` is not the crate root.
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for part in inner.split(',') {
                let head: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !head.is_empty() {
                    found.push(head);
                }
            }
        } else {
            let head: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !head.is_empty() {
                found.push(head);
            }
        }
    }
    found
}

/// Library edges `(from, to, "file:line")`, one per reference.
fn edges() -> Vec<(String, String, String)> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    let mut edges = Vec::new();
    for file in files {
        let Some(from) = module_of(&file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("readable source");
        // A `use crate::{…}` group may span lines: join each statement's lines.
        let mut statement = String::new();
        let mut start = 0;
        for (n, line) in text.lines().enumerate() {
            let c = code(line);
            if statement.is_empty() {
                start = n + 1;
            }
            statement.push_str(c);
            statement.push(' ');
            let open = statement.matches('{').count() > statement.matches('}').count();
            if open && statement.contains("crate::{") {
                continue;
            }
            for to in crate_refs(&statement) {
                if to != from {
                    let at = format!("{}:{start}", file.strip_prefix(src()).unwrap().display());
                    edges.push((from.clone(), to, at));
                }
            }
            statement.clear();
        }
    }
    edges
}

#[test]
fn the_reader_sees_crate_paths() {
    assert_eq!(crate_refs("use crate::store::X;"), ["store"]);
    assert_eq!(
        crate_refs("use crate::{domain::Outcome, store, support::retry};"),
        ["domain", "store", "support"]
    );
    assert_eq!(
        crate_refs("$crate::x; my_crate::y; a(crate::http::f)"),
        ["http"]
    );
    assert_eq!(code("let a = 1; // crate::http"), "let a = 1; ");
}

#[test]
fn every_library_module_has_a_layer() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut missing: Vec<String> = files
        .iter()
        .filter_map(|f| module_of(f))
        .filter(|m| layer_of(m).is_none())
        .collect();
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "modules without a layer (add them to LAYERS here and to the table in src/lib.rs): {missing:?}"
    );
}

#[test]
fn dependencies_point_down_only() {
    let edges = edges();
    assert!(
        edges.iter().any(|(f, t, _)| f == "http" && t == "store"),
        "the reader found no http → store edge; it is not reading the source"
    );
    let mut back: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (from, to, at) in edges {
        let (Some(lf), Some(lt)) = (layer_of(&from), layer_of(&to)) else {
            continue; // an unknown module fails `every_library_module_has_a_layer`
        };
        if lt >= lf {
            back.entry((from, to)).or_default().push(at);
        }
    }
    let report: Vec<String> = back
        .iter()
        .map(|((f, t), at)| format!("{f} → {t} at {}", at.join(", ")))
        .collect();
    assert!(
        report.is_empty(),
        "edges against the layering of src/lib.rs (a module may use lower layers only):\n{}",
        report.join("\n")
    );
}

/// Lines of a file before its `#[cfg(test)]` module.
fn code_lines(text: &str) -> usize {
    text.lines()
        .take_while(|l| !l.trim_start().starts_with("#[cfg(test)]"))
        .count()
}

#[test]
fn no_source_file_is_too_long() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = code_lines(&std::fs::read_to_string(f).unwrap());
            (n > MAX_FILE_LINES).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    long.sort();
    assert!(
        long.is_empty(),
        "files over {MAX_FILE_LINES} lines outside their tests: {long:?}"
    );
}

#[test]
fn main_only_parses_and_dispatches() {
    let main = std::fs::read_to_string(src().join("main.rs")).unwrap();
    let lines = main.lines().count();
    assert!(
        lines <= MAX_MAIN_LINES,
        "src/main.rs has {lines} lines; commands belong in src/cmd/"
    );
    for forbidden in ["sqlx", "store::", "reqwest", "serde_json"] {
        assert!(
            !main.contains(forbidden),
            "src/main.rs uses {forbidden}; commands belong in src/cmd/"
        );
    }
}
