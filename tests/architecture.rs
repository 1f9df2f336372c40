//! The dependency rule of `src/lib.rs`, checked: modules form layers and a module uses
//! only modules of lower layers. Reads every `crate::` path (and `use crate::{…}` group)
//! in the library's source, outside comments, and fails on any edge that points
//! sideways or up, naming the file and line. Also: the binary's `main.rs` only parses
//! and dispatches, and no source file is over the size limit outside its tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layers of `src/lib.rs`, lowest first. A module may use modules of lower layers only.
const LAYERS: &[&[&str]] = &[
    &["activity", "domain", "support", "telemetry", "tls"],
    &["metrics"],
    &["signature", "store"],
    &["import", "notify", "replay", "retention"],
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

/// The module path of a library file: `src/http/admin.rs` → `["http", "admin"]`,
/// `src/store/mod.rs` → `["store"]`; `None` for `lib.rs` and the binary (`main.rs`,
/// `cmd/`).
fn module_path(path: &Path) -> Option<Vec<String>> {
    let rel = path.strip_prefix(src()).expect("under src");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned()
        })
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    match parts.first().map(String::as_str) {
        None | Some("lib" | "main" | "cmd") => None,
        _ => Some(parts),
    }
}

/// The source with comments, string literals and char literals blanked out (newlines
/// kept, so byte offsets still give line numbers): what is left is code.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, c: u8| out.push(if c == b'\n' { b'\n' } else { b' ' });
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                blank(&mut out, b[i]);
                i += 1;
            }
        } else if rest.starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if rest.starts_with(b"r\"") || rest.starts_with(b"r#") {
            // Raw string: r"…" or r#…#"…"#…#.
            let hashes = rest[1..].iter().take_while(|&&c| c == b'#').count();
            if rest.get(1 + hashes) != Some(&b'"') {
                out.push(b[i]);
                i += 1;
                continue;
            }
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            let body = i + 2 + hashes;
            let end = b[body..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(b.len(), |p| body + p + close.len());
            for &c in &b[i..end] {
                blank(&mut out, c);
            }
            i = end;
        } else if b[i] == b'"' {
            blank(&mut out, b[i]);
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    blank(&mut out, b[i]);
                    i += 1;
                }
                blank(&mut out, b[i]);
                i += 1;
            }
            if i < b.len() {
                blank(&mut out, b[i]);
                i += 1;
            }
        } else if b[i] == b'\'' && (rest.get(2) == Some(&b'\'') || (rest.get(1) == Some(&b'\\'))) {
            // A char literal ('x', '\n', '\u{…}'); a lifetime ('a) has no closing quote.
            let len = rest[1..]
                .iter()
                .skip(1)
                .position(|&c| c == b'\'')
                .map_or(1, |p| p + 3);
            for &c in &rest[..len.min(rest.len())] {
                blank(&mut out, c);
            }
            i += len.min(rest.len());
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first segment of each path in a use-tree group body (`a::{b}, c, self`), at the
/// group's own depth only: `domain::{Outcome, TokenHash}, http::AppState` gives
/// `domain` and `http`.
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut item_start = 0;
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                heads.push(ident(group[item_start..at].trim()).to_owned());
                return heads.into_iter().filter(|h| !h.is_empty()).collect();
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                heads.push(ident(group[item_start..at].trim()).to_owned());
                item_start = at + 1;
            }
            _ => {}
        }
    }
    heads.into_iter().filter(|h| !h.is_empty()).collect()
}

/// The top-level modules a path starting at `after` (just past `crate::`) names.
fn heads_at(after: &str) -> Vec<String> {
    let heads = match after.trim_start().strip_prefix('{') {
        Some(group) => group_heads(group),
        None => vec![ident(after.trim_start()).to_owned()],
    };
    // `self` and `*` name no module.
    heads
        .into_iter()
        .filter(|h| !h.is_empty() && h != "self")
        .collect()
}

/// The byte ranges of inline modules (`mod name { … }`) in `code`.
fn inline_modules(code: &str) -> Vec<std::ops::Range<usize>> {
    let bytes = code.as_bytes();
    let mut ranges = Vec::new();
    let mut at = 0;
    while let Some(p) = code[at..].find("mod ") {
        let pos = at + p;
        at = pos + 4;
        if pos > 0 && (bytes[pos - 1].is_ascii_alphanumeric() || bytes[pos - 1] == b'_') {
            continue;
        }
        let name = ident(&code[at..]);
        let after = code[at + name.len()..].trim_start();
        if name.is_empty() || !after.starts_with('{') {
            continue; // `mod name;`: another file
        }
        let open = code.len() - after.len();
        let mut depth = 0;
        for (i, c) in code[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        ranges.push(open..open + i);
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    ranges
}

/// `(top-level module, byte offset)` for every path in `code` that starts at the crate
/// root: `crate::x`, `$crate::x`, and `super::…::x` where the `super`s climb from
/// where they stand (the file's module path `module`, plus any inline `mod` around
/// them) to the root.
fn root_refs(code: &str, module: &[String]) -> Vec<(String, usize)> {
    let inline = inline_modules(code);
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let starts_word =
        |at: usize| at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
    let mut at = 0;
    while let Some(p) = code[at..].find("crate::") {
        let pos = at + p;
        at = pos + "crate::".len();
        let dollar = pos > 0 && bytes[pos - 1] == b'$';
        if dollar || starts_word(pos) {
            for h in heads_at(&code[at..]) {
                found.push((h, pos));
            }
        }
    }
    let mut at = 0;
    while let Some(p) = code[at..].find("super::") {
        let pos = at + p;
        at = pos + "super::".len();
        if !starts_word(pos) || (pos >= 2 && &code[pos - 2..pos] == "::") {
            continue; // the middle of a `super::super::` chain
        }
        let mut climbs = 1;
        let mut rest = &code[at..];
        while let Some(r) = rest.trim_start().strip_prefix("super::") {
            climbs += 1;
            rest = r;
        }
        // `super` from `a::b` is `a`; inside an inline `mod tests { … }` of `a::b` it
        // is `a::b`.
        let depth = module.len() + inline.iter().filter(|r| r.contains(&pos)).count();
        if climbs >= depth {
            for h in heads_at(rest) {
                found.push((h, pos));
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
        let Some(module) = module_path(&file) else {
            continue;
        };
        let code = code_only(&std::fs::read_to_string(&file).expect("readable source"));
        for (to, pos) in root_refs(&code, &module) {
            if to != module[0] {
                let line = code[..pos].matches('\n').count() + 1;
                let at = format!("{}:{line}", file.strip_prefix(src()).unwrap().display());
                edges.push((module[0].clone(), to, at));
            }
        }
    }
    edges
}

#[test]
fn the_reader_sees_crate_paths() {
    let refs = |code: &str, module: &[&str]| -> Vec<String> {
        let module: Vec<String> = module.iter().map(|s| s.to_string()).collect();
        root_refs(&code_only(code), &module)
            .into_iter()
            .map(|(h, _)| h)
            .collect()
    };
    assert_eq!(refs("use crate::store::X;", &["http"]), ["store"]);
    assert_eq!(
        refs(
            "use crate::{domain::{Outcome, TokenHash}, store, support::retry};",
            &["http"]
        ),
        ["domain", "store", "support"]
    );
    assert_eq!(
        refs(
            "use crate::{\n    domain::Outcome,\n    http::AppState,\n};",
            &["store"]
        ),
        ["domain", "http"]
    );
    assert_eq!(
        refs("$crate::store::x(); my_crate::y;", &["domain"]),
        ["store"]
    );
    // `super` reaches the root from a top-level file, and from deeper files only with
    // enough of them.
    assert_eq!(refs("use super::http::AppState;", &["notify"]), ["http"]);
    assert_eq!(
        refs("use super::rows::Row;", &["store", "sqlite"]),
        Vec::<String>::new()
    );
    assert_eq!(
        refs("use super::super::http::X;", &["store", "sqlite"]),
        ["http"]
    );
    // Inside an inline module, `super` is the file's own module.
    assert_eq!(
        refs(
            "mod tests {\n use super::*;\n use super::parse_size;\n}",
            &["config"]
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        refs("mod tests {\n use super::super::http::X;\n}", &["config"]),
        ["http"]
    );
    // Comments and strings are not code; code after a string on the same line is.
    assert_eq!(
        refs(
            r#"// crate::http
let u = "sqlite://x crate::http"; crate::store::f(); /* crate::http */ let c = '"';"#,
            &["notify"]
        ),
        ["store"]
    );
    assert_eq!(
        refs(
            r##"let s = r#"crate::http "quoted""#; fn f<'a>(x: &'a str) { crate::store::g(x) }"##,
            &["notify"]
        ),
        ["store"]
    );
}

#[test]
fn every_crate_path_names_a_module_with_a_layer() {
    let mut unknown: Vec<String> = edges()
        .into_iter()
        .filter(|(_, to, _)| layer_of(to).is_none())
        .map(|(from, to, at)| format!("{from} → {to} at {at}"))
        .collect();
    unknown.sort();
    assert!(
        unknown.is_empty(),
        "crate:: paths to names that are no module in the layer table: {unknown:?}"
    );
}

#[test]
fn every_library_module_has_a_layer() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut missing: Vec<String> = files
        .iter()
        .filter_map(|f| module_path(f).map(|m| m[0].clone()))
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

/// Lines of a file outside its `#[cfg(test)] mod … { … }` block (a test-only
/// one-line item such as `#[cfg(test)] mod testutil;` still counts).
fn code_lines(text: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let starts_tests = |i: usize| {
        lines[i].trim_start().starts_with("#[cfg(test)]")
            && lines[i + 1..]
                .iter()
                .find(|l| !l.trim().is_empty())
                .is_some_and(|l| {
                    let l = l.trim_start();
                    l.starts_with("mod ") && l.trim_end().ends_with('{')
                })
    };
    (0..lines.len())
        .find(|&i| starts_tests(i))
        .unwrap_or(lines.len())
}

#[test]
fn test_blocks_do_not_count_but_test_only_items_do() {
    let text = "a\n#[cfg(test)]\nmod testutil;\nb\n#[cfg(test)]\nmod tests {\n x\n}\n";
    assert_eq!(code_lines(text), 4);
    assert_eq!(code_lines("a\nb\n"), 2);
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
