//! Leak-report formats: turn a security team's report into a stream of leaked-token
//! occurrences ([`Found`]).
//!
//! Supported inputs (see [`Format`]), one file each:
//! - **github** (`github.rs`): a GitHub secret-scanning webhook body (a JSON array of
//!   `{"token", "type", "url", "source"}`) or GitHub's REST export of its alerts (`secret`,
//!   `html_url`, `secret_type`); every element's token is taken as-is.
//! - **gitleaks** (`gitleaks.rs`): a gitleaks v8 JSON report (array of findings).
//! - **trufflehog** (`trufflehog.rs`): trufflehog v3 `--json` output, one JSON object
//!   per line; other lines are scanned as text.
//! - **gitlab** (`gitlab.rs`), **sarif** (`sarif.rs`), **json** (any other JSON
//!   document): whole JSON documents, walked by `walk.rs`.
//! - **text** (`text.rs`): anything else (log dumps, pasted incidents, binary junk);
//!   every token of the enabled formats (`--token-formats`; `cio_tp_[0-9A-Za-z]{36}` by
//!   default), whatever surrounds it.
//!
//! The two JSON-array formats share one streaming reader (`json_array.rs`).
//!
//! This file owns what every format shares: the [`Format`] names and [`detect`], the
//! [`read_report`] dispatch, the [`Found`]/[`ReadStats`]/[`FormatError`] types, the
//! redacting emitter, the JSON sweep and BOM removal (token matching is
//! [`crate::domain::scan`]).
//!
//! Invariants:
//! - Memory is bounded by the largest element, whatever the report size: JSON arrays
//!   are streamed element by element (serde `Visitor` + `SeqAccess`, never a `Vec` of
//!   the whole report; an element is held whole, as a `Value` and its bytes), JSON
//!   documents walked with only their known elements held (`walk.rs`),
//!   trufflehog lines are capped at [`MAX_LINE`] bytes, and text is scanned in
//!   [`TEXT_CHUNK`]-byte chunks with an overlap so a token across a chunk border is
//!   found exactly once.
//! - Nothing is skipped (tested as a property in `invariant.rs`): every token in the
//!   bytes is an occurrence, and every token in a JSON string a reader decodes. What a
//!   format's own fields do not yield is found by the JSON sweep ([`sweep_json`], located
//!   by JSON path) or the text scan; parts not in the format's shape are counted and
//!   named in [`ReadStats`].
//! - Occurrences are yielded in file order, element by element (within a JSON element:
//!   the format's own fields first, then the sweep's, object keys in sorted order).
//!   Strings with wrong check digits are still yielded: classifying them (`not_ours`)
//!   is the caller's job.
//! - No raw token ever appears in a [`FormatError`] (Display or Debug) or in the `Debug`
//!   output of a [`Found`]: JSON errors carry a position and a category only, because
//!   serde's own messages quote the offending value.
//! - Every `cio_tp_…` in a found occurrence's free-text fields (type, url, source) is
//!   redacted before the sink sees it ([`Emitter::emit`]).

mod github;
mod gitlab;
mod gitleaks;
mod json_array;
mod sarif;
mod text;
mod trufflehog;
mod walk;

#[cfg(test)]
mod invariant;
#[cfg(test)]
mod testutil;

use std::fmt;
use std::io::{self, BufRead, Read};
use std::str::FromStr;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::domain::redact::redact_tokens;
use crate::domain::token::TokenHash;
use crate::domain::Formats;

pub use text::TEXT_CHUNK;
pub use trufflehog::MAX_LINE;

/// The report formats [`read_report`] understands. A format's name is its variant's
/// lowercase name, derived once by `strum` (`as_str`, `Display`); `FromStr` matches
/// against those names.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::Display, strum::VariantArray,
)]
#[strum(serialize_all = "lowercase")]
pub enum Format {
    Github,
    Gitleaks,
    Trufflehog,
    Gitlab,
    Sarif,
    Json,
    Text,
}

impl Format {
    /// Every format, in the order they are listed to users.
    pub const ALL: &'static [Format] = <Format as strum::VariantArray>::VARIANTS;

    /// The name accepted by [`Format::from_str`].
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl FromStr for Format {
    type Err = String;

    /// Case-insensitive, surrounding blanks ignored. The error does not echo the input
    /// (it could be a pasted secret).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Format::ALL
            .iter()
            .copied()
            .find(|f| f.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = Format::ALL.iter().map(|f| f.as_str()).collect();
                format!(
                    "unknown report format: expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// One occurrence of a (possible) token in a report.
///
/// `Debug` shows a hash prefix instead of the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Found {
    /// The raw string as found. A secret.
    pub token: String,
    /// The scanner's name for what it found (GitHub `type`, gitleaks `RuleID`, …).
    pub token_type: String,
    /// Where it was found: a link if the report has one, else `file:line`.
    pub url: String,
    /// Which scanner or input produced it (`gitleaks`, `trufflehog:…`, `text`, GitHub's `source`).
    pub source: String,
}

impl fmt::Debug for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Found")
            .field(
                "token",
                &format_args!("sha256:{}…", TokenHash::of(&self.token).prefix()),
            )
            .field("token_type", &self.token_type)
            .field("url", &self.url)
            .field("source", &self.source)
            .finish()
    }
}

/// What a [`read_report`] call went through.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReadStats {
    /// Parts of the report not in its format's shape (an array element without the
    /// format's token field, a line that is not a JSON object or is longer than
    /// [`MAX_LINE`], the rest of a file after invalid JSON). None is skipped: each was
    /// scanned for tokens as JSON or text instead.
    pub unstructured: u64,
    /// Where the first [`NAMED_PARTS`] of them are (`file:[3]`, `file:12`, …).
    pub unstructured_at: Vec<String>,
}

/// How many unstructured parts [`ReadStats`] names.
pub const NAMED_PARTS: usize = 10;

impl ReadStats {
    fn unstructured(&mut self, place: impl FnOnce() -> String) {
        self.unstructured += 1;
        if self.unstructured_at.len() < NAMED_PARTS {
            self.unstructured_at.push(place());
        }
    }
}

/// Why a report could not be read to the end. Never contains a token.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("could not read the report: {0}")]
    Io(#[from] std::io::Error),
    /// The sink refused an occurrence; reading stopped there.
    #[error("stopped while handling the report: {0}")]
    Sink(String),
}

// ---------------------------------------------------------------------------------------
// Detection

/// Guesses the format from the first bytes of a file (callers pass up to 64 KiB).
///
/// - `[` followed by `]` or by an object: gitleaks if the first object has a `Secret`
///   or `RuleID` key, github otherwise. (`[` followed by anything else, such as a log
///   line `[2024-05-17 …]`, is text.)
/// - `{` whose first line is a JSON object with `SourceMetadata` or `DetectorName`:
///   trufflehog.
/// - one JSON object (as far as the head shows): sarif if it mentions `"runs"` and
///   SARIF, gitlab if it mentions `"vulnerabilities"`, json otherwise.
/// - anything else (JSON lines of logs among it): text.
pub fn detect(head: &[u8]) -> Format {
    let s = skip_ws_and_bom(head);
    match s.first() {
        Some(b'[') => detect_array(&s[1..]),
        Some(b'{') => detect_json_lines(s),
        _ => Format::Text,
    }
}

fn skip_ws_and_bom(mut s: &[u8]) -> &[u8] {
    loop {
        if let Some(rest) = s.strip_prefix(b"\xEF\xBB\xBF") {
            s = rest;
        } else if let Some((first, rest)) = s.split_first() {
            if first.is_ascii_whitespace() {
                s = rest;
            } else {
                return s;
            }
        } else {
            return s;
        }
    }
}

/// Whether `hay` contains any of the `keys` as text (a head cut inside a JSON value).
fn mentions_any(hay: &[u8], keys: &[&str]) -> bool {
    keys.iter()
        .any(|key| memchr::memmem::find(hay, key.as_bytes()).is_some())
}

fn detect_array(after_bracket: &[u8]) -> Format {
    let rest = skip_ws_and_bom(after_bracket);
    match rest.first() {
        Some(b']') => Format::Github,
        Some(b'{') => {
            let mut de = serde_json::Deserializer::from_slice(rest);
            match Map::<String, Value>::deserialize(&mut de) {
                Ok(first) if first.contains_key("Secret") || first.contains_key("RuleID") => {
                    Format::Gitleaks
                }
                Ok(_) => Format::Github,
                // The head stops inside the first element: look for the keys as text.
                Err(e) if e.is_eof() => {
                    if mentions_any(rest, &["\"Secret\"", "\"RuleID\""]) {
                        Format::Gitleaks
                    } else {
                        Format::Github
                    }
                }
                Err(_) => Format::Text,
            }
        }
        // `[]` cut short by the head, or an empty file after `[`.
        None => Format::Github,
        _ => Format::Text,
    }
}

fn detect_json_lines(s: &[u8]) -> Format {
    let first_line = match memchr::memchr(b'\n', s) {
        Some(end) => &s[..end],
        None => s,
    };
    let has_keys =
        |m: &Map<String, Value>| m.contains_key("SourceMetadata") || m.contains_key("DetectorName");
    match serde_json::from_slice::<Map<String, Value>>(first_line) {
        Ok(m) if has_keys(&m) => return Format::Trufflehog,
        // A first line longer than the head: decide on the keys seen so far.
        Err(e)
            if e.is_eof()
                && mentions_any(first_line, &["\"SourceMetadata\"", "\"DetectorName\""]) =>
        {
            return Format::Trufflehog
        }
        _ => {}
    }
    // One JSON object (or the head of one), or something else: JSON lines of logs, or
    // text that starts with `{`.
    match serde_json::from_slice::<Map<String, Value>>(s) {
        Ok(_) => {}
        Err(e) if e.is_eof() => {}
        Err(_) => return Format::Text,
    }
    if mentions_any(s, &["\"runs\""]) && mentions_any(s, &["sarif", "SARIF"]) {
        Format::Sarif
    } else if mentions_any(s, &["\"vulnerabilities\""]) {
        Format::Gitlab
    } else {
        Format::Json
    }
}

// ---------------------------------------------------------------------------------------
// Reading

/// Streams every occurrence to `sink` in file order. `origin` is the file name (for
/// text/gitleaks locations). A sink error stops reading and is returned as
/// [`FormatError::Sink`].
pub fn read_report<R: BufRead>(
    reader: R,
    format: Format,
    formats: Formats,
    origin: &str,
    sink: &mut dyn FnMut(Found) -> Result<(), String>,
) -> Result<ReadStats, FormatError> {
    let _looking_for = LookingFor::set(formats);
    // Locations and the unstructured parts' names carry it: no raw token in it.
    let origin = &*redact_tokens(origin);
    let mut out = Emitter {
        sink,
        stats: ReadStats::default(),
    };
    match format {
        Format::Github => json_array::read::<_, github::GithubItem>(reader, origin, &mut out)?,
        Format::Gitleaks => {
            json_array::read::<_, gitleaks::GitleaksFinding>(reader, origin, &mut out)?
        }
        Format::Trufflehog => trufflehog::read(reader, origin, &mut out, MAX_LINE)?,
        Format::Gitlab => walk::read::<_, gitlab::GitlabReport>(reader, origin, &mut out)?,
        Format::Sarif => walk::read::<_, sarif::SarifLog>(reader, origin, &mut out)?,
        Format::Json => walk::read::<_, walk::AnyJson>(reader, origin, &mut out)?,
        Format::Text => text::read(reader, origin, &mut out, TEXT_CHUNK, 1)?,
    }
    Ok(out.stats)
}

/// The sink plus the running statistics.
struct Emitter<'s> {
    sink: &'s mut dyn FnMut(Found) -> Result<(), String>,
    stats: ReadStats,
}

impl Emitter<'_> {
    /// Hands one occurrence on with every `cio_tp_…` in its free-text fields redacted:
    /// a file name, link or rule name may itself carry a token, and those fields reach
    /// the output, the database and (remote mode) another receiver.
    fn emit(&mut self, mut found: Found) -> Result<(), FormatError> {
        for field in [&mut found.token_type, &mut found.url, &mut found.source] {
            if let std::borrow::Cow::Owned(redacted) = redact_tokens(field) {
                *field = redacted;
            }
        }
        (self.sink)(found).map_err(FormatError::Sink)
    }

    /// [`Self::emit`] for each, stopping at the first refusal.
    fn emit_all(&mut self, batch: impl IntoIterator<Item = Found>) -> Result<(), FormatError> {
        batch.into_iter().try_for_each(|found| self.emit(found))
    }

    /// One parsed JSON element at `place`: what `own` takes from the format's fields
    /// (`false`: the element is not in the format's shape, and is named as
    /// unstructured), then every other token in it ([`sweep_json`]), in that order.
    fn element(
        &mut self,
        value: &Value,
        place: &str,
        own: impl FnOnce(&mut Vec<Found>) -> bool,
    ) -> Result<(), FormatError> {
        let mut batch = Vec::new();
        if !own(&mut batch) {
            self.stats.unstructured(|| place.to_owned());
        }
        sweep_json(value, place, &mut batch);
        self.emit_all(batch)
    }
}

/// Drops a leading UTF-8 byte-order mark (serde_json rejects it); everything else is
/// passed through unchanged.
fn without_bom<R: Read>(mut reader: R) -> io::Result<io::Chain<io::Cursor<Vec<u8>>, R>> {
    let mut head = [0u8; 3];
    let mut n = 0;
    while n < head.len() {
        match reader.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let kept = if head[..n] == *b"\xEF\xBB\xBF" {
        Vec::new()
    } else {
        head[..n].to_vec()
    };
    Ok(io::Cursor::new(kept).chain(reader))
}

// ---------------------------------------------------------------------------------------
// Token matching and small field helpers

thread_local! {
    /// The token formats the [`read_report`] running on this thread looks for: set for
    /// the call's duration, so every reader's matching sees it without each format's
    /// reader and item type passing it on.
    static LOOKING_FOR: std::cell::Cell<Formats> = const { std::cell::Cell::new(Formats::DEFAULT) };
}

/// Sets [`LOOKING_FOR`] until dropped, then puts back what was there.
struct LookingFor(Formats);

impl LookingFor {
    fn set(formats: Formats) -> LookingFor {
        LookingFor(LOOKING_FOR.with(|f| f.replace(formats)))
    }
}

impl Drop for LookingFor {
    fn drop(&mut self) {
        LOOKING_FOR.with(|f| f.set(self.0));
    }
}

/// The formats the running [`read_report`] looks for.
fn looking_for() -> Formats {
    LOOKING_FOR.with(std::cell::Cell::get)
}

/// The type an occurrence found by a scan (not named by the report) is given
/// ([`Formats::type_of`]).
fn type_of(token: &str) -> String {
    looking_for().type_of(token).to_owned()
}

/// Every token in a (small) string, in order: see [`crate::domain::scan::all`] (at
/// every position, whatever surrounds it, plain, percent-encoded or JSON-escaped).
fn tokens_in(s: &str) -> impl Iterator<Item = String> {
    crate::domain::scan::all(s.as_bytes(), looking_for())
        .into_iter()
        .map(|(_, t)| t)
}

/// Calls `f(token, path)` for every token in the strings of a decoded JSON value
/// (object keys included), arrays in order, object keys sorted (serde_json's map); `path` is the string's place below
/// `value`: `.key`, `["odd key"]`, `[3]`.
fn json_tokens(value: &Value, path: &mut String, f: &mut dyn FnMut(String, &str)) {
    match value {
        Value::String(s) => tokens_in(s).for_each(|t| f(t, path)),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                json_tokens(item, path, f);
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let len = path.len();
                push_key(path, key);
                tokens_in(key).for_each(|t| f(t, path));
                json_tokens(item, path, f);
                path.truncate(len);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Appends an object key to a JSON path: `.key`, or `["odd key"]` unless the key is
/// letters, digits, `_` and `-`.
fn push_key(path: &mut String, key: &str) {
    // A location is copied into every occurrence under it: a huge key is named by its
    // size (its tokens are still found, at this path).
    if key.len() > 100 {
        path.push_str(&format!("[<key of {} bytes>]", key.len()));
        return;
    }
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        path.push('.');
        path.push_str(key);
    } else {
        path.push_str(&format!("[{}]", Value::String(key.to_owned())));
    }
}

/// The occurrences a structured reader did not take from a parsed JSON element: every
/// token anywhere in it (see [`json_tokens`]) that is not among `out`'s tokens yet,
/// once each, located at `place` plus its path (`report.json:[3].finding.value`).
fn sweep_json(value: &Value, place: &str, out: &mut Vec<Found>) {
    let mut seen: std::collections::HashSet<String> = out.iter().map(|f| f.token.clone()).collect();
    let mut path = String::new();
    json_tokens(value, &mut path, &mut |token, path| {
        if seen.insert(token.clone()) {
            out.push(Found {
                token_type: type_of(&token),
                token,
                url: format!("{place}{path}"),
                source: "json".to_owned(),
            });
        }
    });
}

/// The tokens of the first field that has any (`Secret` before `Match`,
/// `Raw` before `RawV2`).
fn tokens_in_first(fields: [&str; 2]) -> Vec<String> {
    let [first, second] = fields;
    let tokens: Vec<String> = tokens_in(first).collect();
    if tokens.is_empty() {
        tokens_in(second).collect()
    } else {
        tokens
    }
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

/// A JSON number or non-empty string as text (line numbers come as either).
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// `file:line`, or `file` alone without a line.
fn file_location(file: &str, line: Option<&str>) -> String {
    match line {
        Some(line) => format!("{file}:{line}"),
        None => file.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use crate::domain::token::PREFIX;
    use std::io::Cursor;

    #[test]
    fn fixture_tokens_have_the_documented_validity() {
        for t in [A, B, C, D, E, F, G, H, I, KNOWN] {
            assert!(crate::domain::token::validate(t).is_ok(), "should be valid");
        }
        for t in [W1, W2, W3] {
            assert!(matches!(
                crate::domain::token::validate(t),
                Err(crate::domain::token::TokenError::InvalidChecksum { .. })
            ));
        }
    }

    #[test]
    fn format_names_round_trip() {
        for &f in Format::ALL {
            assert_eq!(f.as_str().parse::<Format>(), Ok(f));
            assert_eq!(f.as_str().to_uppercase().parse::<Format>(), Ok(f));
            assert_eq!(f.to_string(), f.as_str());
        }
        assert_eq!("GitLeaks".parse::<Format>(), Ok(Format::Gitleaks));
        assert_eq!(" text\n".parse::<Format>(), Ok(Format::Text));
        let err = "csv".parse::<Format>().unwrap_err();
        assert_eq!(
            err,
            "unknown report format: expected one of github, gitleaks, trufflehog, gitlab, sarif, json, text"
        );
        let err = A.parse::<Format>().unwrap_err();
        assert!(!err.contains(A));
    }

    #[test]
    fn detect_each_fixture() {
        assert_eq!(detect(&fixture("github.json")), Format::Github);
        assert_eq!(detect(&fixture("gitleaks.json")), Format::Gitleaks);
        assert_eq!(detect(&fixture("trufflehog.jsonl")), Format::Trufflehog);
        assert_eq!(detect(&fixture("incident.txt")), Format::Text);
        // Only the head of a file: cut inside the first element or the first line.
        assert_eq!(detect(&fixture("gitleaks.json")[..400]), Format::Gitleaks);
        assert_eq!(
            detect(&fixture("trufflehog.jsonl")[..300]),
            Format::Trufflehog
        );
        assert_eq!(detect(&fixture("github.json")[..60]), Format::Github);
    }

    #[test]
    fn detect_edge_cases() {
        assert_eq!(detect(b""), Format::Text);
        assert_eq!(detect(b"[]"), Format::Github);
        assert_eq!(detect(b" \n\t[ ]\n"), Format::Github);
        assert_eq!(
            detect(b"\xEF\xBB\xBF[{\"RuleID\":\"x\"}]"),
            Format::Gitleaks
        );
        assert_eq!(
            detect(b"\xEF\xBB\xBF  [{\"Secret\":\"x\"}]"),
            Format::Gitleaks
        );
        assert_eq!(
            detect(b"[{\"token\":\"x\",\"type\":\"t\"}]"),
            Format::Github
        );
        // Keys of nested objects do not count, only the first object's own keys.
        assert_eq!(
            detect(b"[{\"token\":\"x\",\"extra\":{\"Secret\":1}}]"),
            Format::Github
        );
        // A log line that happens to start with `[`.
        assert_eq!(
            detect(b"[2024-05-17 14:02:11] INFO started\n"),
            Format::Text
        );
        assert_eq!(detect(b"[{main}] started\n"), Format::Text);
        assert_eq!(detect(b"{\"DetectorName\":\"X\"}\n"), Format::Trufflehog);
        assert_eq!(
            detect(b"\xEF\xBB\xBF{\"SourceMetadata\":{}}"),
            Format::Trufflehog
        );
        assert_eq!(detect(b"{\"level\":\"info\"}\n"), Format::Json);
        assert_eq!(
            detect(b"{\"level\":\"info\"}\n{\"level\":\"warn\"}\n"),
            Format::Text
        );
        assert_eq!(detect(b"{\"messages\": [{\"text\""), Format::Json);
        assert_eq!(
            detect(b"{\"version\":\"15.0.7\",\"vulnerabilities\":["),
            Format::Gitlab
        );
        assert_eq!(
            detect(b"{\"$schema\":\"https://json.schemastore.org/sarif-2.1.0.json\",\"runs\":["),
            Format::Sarif
        );
        assert_eq!(detect(b"{ not json\n"), Format::Text);
        assert_eq!(detect(b"\xff\xfe binary"), Format::Text);
        assert_eq!(detect(A.as_bytes()), Format::Text);
    }

    /// A reader that returns at most a few bytes per call.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.step = self.step % 5 + 1;
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn short_reads_change_nothing() {
        for name in FIXTURES {
            let data = fixture(name);
            let format = detect(&data);
            let (expected, expected_stats) = read_all(&data, format, name).unwrap();
            let mut all = Vec::new();
            let mut reader = io::BufReader::with_capacity(
                3,
                Trickle {
                    data: &data,
                    step: 0,
                },
            );
            let stats = read_report(&mut reader, format, Formats::DEFAULT, name, &mut |f| {
                all.push(f);
                Ok(())
            })
            .unwrap();
            assert_eq!(all, expected, "{name}");
            assert_eq!(stats, expected_stats, "{name}");
            // Read to the end through every short read, nothing left behind.
            assert!(
                reader.get_ref().data.is_empty(),
                "{name}: not read to the end"
            );
            assert!(
                reader.buffer().is_empty(),
                "{name}: bytes left in the buffer"
            );
        }
    }

    #[test]
    fn json_reports_with_a_bom() {
        // `read_all` also checks that the whole input, BOM included, was read.
        let mut input = b"\xEF\xBB\xBF".to_vec();
        input.extend_from_slice(format!(r#"[{{"token":"{A}"}}]"#).as_bytes());
        let (all, _) = read_all(&input, Format::Github, "g").unwrap();
        assert_eq!(all, vec![found(A, "", "", "")]);

        let mut input = b"\xEF\xBB\xBF".to_vec();
        input.extend_from_slice(format!(r#"{{"Raw":"{A}"}}"#).as_bytes());
        let (all, _) = read_all(&input, Format::Trufflehog, "t").unwrap();
        assert_eq!(all, vec![found(A, "trufflehog", "t:1", "trufflehog")]);
    }

    #[test]
    fn a_sink_error_stops_reading() {
        for name in FIXTURES {
            let data = fixture(name);
            let mut calls = 0;
            let err = read_report(
                &data[..],
                detect(&data),
                Formats::DEFAULT,
                name,
                &mut |_| {
                    calls += 1;
                    if calls == 2 {
                        Err("database is gone".to_owned())
                    } else {
                        Ok(())
                    }
                },
            )
            .unwrap_err();
            assert_eq!(calls, 2, "{name}");
            match &err {
                FormatError::Sink(msg) => assert_eq!(msg, "database is gone"),
                other => panic!("{name}: {other}"),
            }
            assert_eq!(
                err.to_string(),
                "stopped while handling the report: database is gone"
            );
        }
    }

    #[test]
    fn io_errors_are_reported() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::BrokenPipe, "disk on fire"))
            }
        }
        for &format in Format::ALL {
            let err = read_report(
                io::BufReader::new(Failing),
                format,
                Formats::DEFAULT,
                "f",
                &mut |_| Ok(()),
            )
            .unwrap_err();
            assert!(
                matches!(err, FormatError::Io(ref e) if e.kind() == io::ErrorKind::BrokenPipe),
                "{format}: {err:?}"
            );
        }
        // Failing in the middle of a JSON array.
        let reader = Cursor::new(b"[{\"token\":\"x\"},".to_vec()).chain(Failing);
        let err = read_report(
            io::BufReader::new(reader),
            Format::Github,
            Formats::DEFAULT,
            "f",
            &mut |_| Ok(()),
        )
        .unwrap_err();
        assert!(
            matches!(err, FormatError::Io(ref e) if e.kind() == io::ErrorKind::BrokenPipe),
            "{err:?}"
        );
    }

    #[test]
    fn found_debug_hides_the_token() {
        let f = found(A, "cio_tp", "x:1", "text");
        let dbg = format!("{f:?}");
        assert!(!dbg.contains(A));
        assert!(!dbg.contains(&A[PREFIX.len()..]));
        assert!(dbg.contains(&TokenHash::of(A).prefix()), "{dbg}");
        assert!(dbg.contains("x:1"));
    }
}
