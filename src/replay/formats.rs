//! Leak-report formats: turn a security team's report into a stream of leaked-token
//! occurrences ([`Found`]).
//!
//! Supported inputs (see [`Format`]):
//! - **github**: a GitHub secret-scanning webhook body, a JSON array of
//!   `{"token", "type", "url", "source"}`; every element's `token` is taken as-is.
//! - **gitleaks**: a gitleaks v8 JSON report (array of findings).
//! - **trufflehog**: trufflehog v3 `--json` output, one JSON object per line; log noise
//!   mixed into the file is skipped and counted.
//! - **text**: anything else (log dumps, pasted incidents, binary junk); every
//!   `cio_tp_[0-9A-Za-z]{36}` that is not part of a longer alphanumeric run.
//!
//! Invariants:
//! - Memory is bounded whatever the report size: JSON arrays are streamed element by
//!   element (serde `Visitor` + `SeqAccess`, never a `Vec` of the whole report),
//!   trufflehog lines are capped at [`MAX_LINE`] bytes, and text is scanned in
//!   [`TEXT_CHUNK`]-byte chunks with an overlap so a token across a chunk border is
//!   found exactly once.
//! - Occurrences are yielded in file order. Strings with wrong check digits are still
//!   yielded: classifying them (`not_ours`) is the caller's job.
//! - No raw token ever appears in a [`FormatError`] (Display or Debug) or in the `Debug`
//!   output of a [`Found`]: JSON errors carry a position and a category only, because
//!   serde's own messages quote the offending value.

use std::fmt;
use std::io::{self, BufRead, Read};
use std::marker::PhantomData;
use std::str::FromStr;
use std::sync::OnceLock;

use regex::bytes::Regex;
use serde::de::{self, Deserialize, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::domain::redact::redact_tokens;
use crate::domain::token::{TokenHash, PREFIX, TOKEN_LEN};

/// Size of one read when scanning free text.
pub const TEXT_CHUNK: usize = 64 * 1024;
/// Longest trufflehog line that is parsed; longer lines are skipped (and counted).
pub const MAX_LINE: usize = 16 * 1024 * 1024;
/// Bytes kept from one text chunk to the next: a whole token plus the byte before it
/// (needed to check that the match is not the tail of a longer run).
const OVERLAP: usize = TOKEN_LEN + 1;

/// The report formats [`read_report`] understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Github,
    Gitleaks,
    Trufflehog,
    Text,
}

impl Format {
    /// Every format, in the order they are listed to users.
    pub const ALL: [Format; 4] = [
        Format::Github,
        Format::Gitleaks,
        Format::Trufflehog,
        Format::Text,
    ];

    /// The name accepted by [`Format::from_str`].
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Github => "github",
            Format::Gitleaks => "gitleaks",
            Format::Trufflehog => "trufflehog",
            Format::Text => "text",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = String;

    /// Case-insensitive. The error does not echo the input (it could be a pasted secret).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Format::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                "unknown report format: expected one of github, gitleaks, trufflehog, text"
                    .to_owned()
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
    /// Occurrences handed to the sink (and accepted by it).
    pub found: u64,
    /// Trufflehog lines that were not JSON objects or were longer than [`MAX_LINE`];
    /// GitHub-format elements without a `token` string.
    pub skipped_lines: u64,
    /// Bytes read from the report.
    pub bytes: u64,
}

/// Why a report could not be read to the end. Never contains a token.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("could not read the report: {0}")]
    Io(#[from] std::io::Error),
    /// `what` is a category, never text from the report.
    #[error("malformed report at line {line}, column {column}: {what}")]
    Json {
        line: usize,
        column: usize,
        what: String,
    },
    /// The sink refused an occurrence; reading stopped there.
    #[error("stopped while handling the report: {0}")]
    Sink(String),
}

/// Guesses the format from the first bytes of a file (callers pass up to 64 KiB).
///
/// - `[` followed by `]` or by an object: gitleaks if the first object has a `Secret`
///   or `RuleID` key, github otherwise. (`[` followed by anything else, such as a log
///   line `[2024-05-17 …]`, is text.)
/// - `{` whose first line is a JSON object with `SourceMetadata` or `DetectorName`:
///   trufflehog.
/// - anything else: text.
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

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
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
                    if contains(rest, b"\"Secret\"") || contains(rest, b"\"RuleID\"") {
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
    let first_line = match s.iter().position(|&b| b == b'\n') {
        Some(end) => &s[..end],
        None => s,
    };
    let has_keys =
        |m: &Map<String, Value>| m.contains_key("SourceMetadata") || m.contains_key("DetectorName");
    match serde_json::from_slice::<Map<String, Value>>(first_line) {
        Ok(m) if has_keys(&m) => Format::Trufflehog,
        Ok(_) => Format::Text,
        // A first line longer than the head: decide on the keys seen so far.
        Err(e)
            if e.is_eof()
                && (contains(first_line, b"\"SourceMetadata\"")
                    || contains(first_line, b"\"DetectorName\"")) =>
        {
            Format::Trufflehog
        }
        Err(_) => Format::Text,
    }
}

/// Streams every occurrence to `sink` in file order. `origin` is the file name (for
/// text/gitleaks locations). A sink error stops reading and is returned as
/// [`FormatError::Sink`].
pub fn read_report<R: BufRead>(
    reader: R,
    format: Format,
    origin: &str,
    sink: &mut dyn FnMut(Found) -> Result<(), String>,
) -> Result<ReadStats, FormatError> {
    let mut out = Emitter {
        sink,
        stats: ReadStats::default(),
    };
    match format {
        Format::Github => read_json_array::<_, GithubItem>(reader, origin, &mut out)?,
        Format::Gitleaks => read_json_array::<_, GitleaksFinding>(reader, origin, &mut out)?,
        Format::Trufflehog => read_trufflehog(reader, origin, &mut out, MAX_LINE)?,
        Format::Text => read_text(reader, origin, &mut out, TEXT_CHUNK)?,
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
        (self.sink)(found).map_err(FormatError::Sink)?;
        self.stats.found += 1;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Token matching

fn token_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        let pattern = format!(
            "{}[0-9A-Za-z]{{{}}}",
            regex::escape(PREFIX),
            TOKEN_LEN - PREFIX.len()
        );
        Regex::new(&pattern).expect("the token pattern is a valid regex")
    })
}

/// A match `hay[start..end]` counts only if it is not part of a longer string: not
/// preceded by `[0-9A-Za-z_]` and not followed by `[0-9A-Za-z]`.
///
/// Matches never overlap (the 36 characters after the prefix contain no `_`), so
/// rejecting one never hides another.
fn standalone(hay: &[u8], start: usize, end: usize) -> bool {
    let before_ok =
        start == 0 || !(hay[start - 1].is_ascii_alphanumeric() || hay[start - 1] == b'_');
    let after_ok = hay.get(end).is_none_or(|b| !b.is_ascii_alphanumeric());
    before_ok && after_ok
}

/// Every standalone token in a (small) string, in order.
fn tokens_in(s: &str) -> impl Iterator<Item = &str> + '_ {
    token_regex()
        .find_iter(s.as_bytes())
        .filter(move |m| standalone(s.as_bytes(), m.start(), m.end()))
        // The pattern is ASCII, so the match is on character boundaries.
        .map(move |m| &s[m.start()..m.end()])
}

// ---------------------------------------------------------------------------------------
// Byte counting and BOM

/// Counts the bytes taken from the report.
struct Counting<R> {
    inner: R,
    bytes: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counting<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.inner.consume(amt);
        self.bytes += amt as u64;
    }
}

type WithoutBom<R> = io::Chain<io::Cursor<Vec<u8>>, Counting<R>>;

/// Drops a leading UTF-8 byte-order mark (serde_json rejects it); everything else is
/// passed through unchanged.
fn without_bom<R: Read>(reader: R) -> io::Result<WithoutBom<R>> {
    let mut counting = Counting {
        inner: reader,
        bytes: 0,
    };
    let mut head = [0u8; 3];
    let mut n = 0;
    while n < head.len() {
        match counting.read(&mut head[n..]) {
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
    Ok(io::Cursor::new(kept).chain(counting))
}

// ---------------------------------------------------------------------------------------
// JSON arrays (github, gitleaks), streamed element by element

/// One element of a JSON-array report.
trait ReportItem: for<'de> Deserialize<'de> {
    /// What the report should look like, for error messages.
    const EXPECTED: &'static str;
    /// Appends this element's occurrences to `out`; `false` if the element had nothing
    /// usable and counts as skipped.
    fn occurrences(self, origin: &str, out: &mut Vec<Found>) -> bool;
}

/// One element of a GitHub webhook body.
#[derive(serde::Deserialize)]
struct GithubItem {
    #[serde(default)]
    token: Option<String>,
    #[serde(default, rename = "type")]
    token_type: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

impl ReportItem for GithubItem {
    const EXPECTED: &'static str =
        "a JSON array of {\"token\", \"type\", \"url\", \"source\"} objects";

    fn occurrences(self, _origin: &str, out: &mut Vec<Found>) -> bool {
        let Some(token) = self.token else {
            return false;
        };
        out.push(Found {
            token,
            token_type: self.token_type.unwrap_or_default(),
            url: self.url.unwrap_or_default(),
            source: self.source.unwrap_or_default(),
        });
        true
    }
}

/// The fields of a gitleaks v8 finding that matter here; the others are ignored.
#[derive(serde::Deserialize)]
struct GitleaksFinding {
    #[serde(default, rename = "Secret")]
    secret: Option<String>,
    #[serde(default, rename = "Match")]
    matched: Option<String>,
    #[serde(default, rename = "RuleID")]
    rule_id: Option<String>,
    #[serde(default, rename = "Link")]
    link: Option<String>,
    #[serde(default, rename = "File")]
    file: Option<String>,
    #[serde(default, rename = "StartLine")]
    start_line: Option<Value>,
    #[serde(default, rename = "Commit")]
    commit: Option<String>,
}

impl ReportItem for GitleaksFinding {
    const EXPECTED: &'static str = "a gitleaks JSON report (an array of finding objects)";

    fn occurrences(self, origin: &str, out: &mut Vec<Found>) -> bool {
        let secret = self.secret.as_deref().unwrap_or("");
        let mut tokens: Vec<&str> = tokens_in(secret).collect();
        if tokens.is_empty() {
            tokens = tokens_in(self.matched.as_deref().unwrap_or("")).collect();
        }
        if tokens.is_empty() {
            return true;
        }
        let token_type = non_empty(self.rule_id.as_deref()).unwrap_or("gitleaks");
        let url = match non_empty(self.link.as_deref()) {
            Some(link) => link.to_owned(),
            None => {
                let file = non_empty(self.file.as_deref()).unwrap_or(origin);
                let mut url = match self.start_line.as_ref().and_then(scalar_text) {
                    Some(line) => format!("{file}:{line}"),
                    None => file.to_owned(),
                };
                if let Some(commit) = non_empty(self.commit.as_deref()) {
                    url.push_str(" @ ");
                    url.extend(commit.chars().take(12));
                }
                url
            }
        };
        out.extend(tokens.into_iter().map(|token| Found {
            token: token.to_owned(),
            token_type: token_type.to_owned(),
            url: url.clone(),
            source: "gitleaks".to_owned(),
        }));
        true
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

/// Visits the top-level array, handing each element's occurrences to the sink as soon
/// as the element is parsed.
struct ArrayVisitor<'a, 's, T> {
    origin: &'a str,
    out: &'a mut Emitter<'s>,
    /// The sink's refusal, kept aside: serde only carries its own error type.
    stopped: &'a mut Option<FormatError>,
    item: PhantomData<T>,
}

impl<'de, T: ReportItem> Visitor<'de> for ArrayVisitor<'_, '_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTED)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut batch = Vec::new();
        while let Some(item) = seq.next_element::<T>()? {
            if !item.occurrences(self.origin, &mut batch) {
                self.out.stats.skipped_lines += 1;
            }
            for found in batch.drain(..) {
                if let Err(e) = self.out.emit(found) {
                    *self.stopped = Some(e);
                    return Err(de::Error::custom("stopped by the sink"));
                }
            }
        }
        Ok(())
    }
}

fn read_json_array<R: Read, T: ReportItem>(
    reader: R,
    origin: &str,
    out: &mut Emitter<'_>,
) -> Result<(), FormatError> {
    let mut reader = without_bom(reader)?;
    let mut stopped = None;
    let result = {
        let mut de = serde_json::Deserializer::from_reader(&mut reader);
        let visitor = ArrayVisitor::<T> {
            origin,
            out: &mut *out,
            stopped: &mut stopped,
            item: PhantomData,
        };
        serde::Deserializer::deserialize_seq(&mut de, visitor).and_then(|()| de.end())
    };
    out.stats.bytes = reader.get_ref().1.bytes;
    if let Some(e) = stopped {
        return Err(e);
    }
    result.map_err(|e| json_error(e, T::EXPECTED))
}

/// A serde_json error without its message: serde quotes the offending value, which may
/// be a token. I/O errors come from the reader and are passed through.
fn json_error(e: serde_json::Error, expected: &str) -> FormatError {
    use serde_json::error::Category;
    let (line, column) = (e.line(), e.column());
    let what = match e.classify() {
        Category::Io => return FormatError::Io(e.into()),
        Category::Eof => {
            format!("unexpected end of input (truncated report?); expected {expected}")
        }
        Category::Syntax => format!("invalid JSON syntax; expected {expected}"),
        Category::Data => format!("wrong JSON type or shape; expected {expected}"),
    };
    FormatError::Json { line, column, what }
}

// ---------------------------------------------------------------------------------------
// trufflehog: JSON lines

enum Line {
    Eof,
    Complete,
    TooLong,
}

/// Reads one line (without its `\n`) into `line`, holding at most `cap + 1` bytes; a
/// longer line is consumed and dropped.
fn read_capped_line<R: BufRead>(
    reader: &mut R,
    line: &mut Vec<u8>,
    cap: usize,
) -> io::Result<Line> {
    line.clear();
    let n = reader
        .by_ref()
        .take(cap as u64 + 1)
        .read_until(b'\n', line)?;
    if n == 0 {
        return Ok(Line::Eof);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        return Ok(Line::Complete);
    }
    if line.len() <= cap {
        return Ok(Line::Complete); // the last line, without a newline
    }
    // Too long: drop the rest of the line without keeping it.
    line.clear();
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            break;
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                break;
            }
            None => {
                let len = buf.len();
                reader.consume(len);
            }
        }
    }
    Ok(Line::TooLong)
}

fn read_trufflehog<R: BufRead>(
    reader: R,
    origin: &str,
    out: &mut Emitter<'_>,
    cap: usize,
) -> Result<(), FormatError> {
    let mut reader = without_bom(reader)?;
    let mut line = Vec::new();
    let mut line_no = 0u64;
    let result = loop {
        let kind = match read_capped_line(&mut reader, &mut line, cap) {
            Ok(kind) => kind,
            Err(e) => break Err(FormatError::Io(e)),
        };
        line_no += 1;
        match kind {
            Line::Eof => break Ok(()),
            Line::TooLong => {
                out.stats.skipped_lines += 1;
                continue;
            }
            Line::Complete => {}
        }
        if line.trim_ascii().is_empty() {
            continue;
        }
        let Ok(record) = serde_json::from_slice::<Map<String, Value>>(&line) else {
            out.stats.skipped_lines += 1;
            continue;
        };
        if let Err(e) = trufflehog_record(&record, origin, line_no, out) {
            break Err(e);
        }
        if line.capacity() > 1024 * 1024 {
            line = Vec::new(); // do not keep a huge buffer after one big line
        }
    };
    out.stats.bytes = reader.get_ref().1.bytes;
    result
}

fn trufflehog_record(
    record: &Map<String, Value>,
    origin: &str,
    line_no: u64,
    out: &mut Emitter<'_>,
) -> Result<(), FormatError> {
    let text = |key: &str| record.get(key).and_then(Value::as_str).unwrap_or("");
    let mut tokens: Vec<&str> = tokens_in(text("Raw")).collect();
    if tokens.is_empty() {
        tokens = tokens_in(text("RawV2")).collect();
    }
    if tokens.is_empty() {
        return Ok(());
    }
    // SourceMetadata.Data.{Git|Github|Gitlab|Filesystem|…}: the one source object.
    let meta = record
        .get("SourceMetadata")
        .and_then(|m| m.get("Data"))
        .and_then(Value::as_object)
        .and_then(|data| data.values().find_map(Value::as_object));
    let field = |key: &str| {
        meta.and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let line = meta.and_then(|m| m.get("line")).and_then(scalar_text);
    let url = if let Some(link) = field("link") {
        link.to_owned()
    } else if let (Some(repo), Some(commit), Some(file)) =
        (field("repository"), field("commit"), field("file"))
    {
        if repo.starts_with("https://") {
            let repo = repo.trim_end_matches('/');
            let repo = repo.strip_suffix(".git").unwrap_or(repo);
            match &line {
                Some(line) => format!("{repo}/blob/{commit}/{file}#L{line}"),
                None => format!("{repo}/blob/{commit}/{file}"),
            }
        } else {
            file_location(file, line.as_deref())
        }
    } else if let Some(file) = field("file") {
        file_location(file, line.as_deref())
    } else {
        format!("{origin}:{line_no}")
    };
    let token_type = non_empty(Some(text("DetectorName"))).unwrap_or("trufflehog");
    let source = match non_empty(Some(text("SourceName"))) {
        Some(name) => format!("trufflehog:{name}"),
        None => "trufflehog".to_owned(),
    };
    for token in tokens {
        out.emit(Found {
            token: token.to_owned(),
            token_type: token_type.to_owned(),
            url: url.clone(),
            source: source.clone(),
        })?;
    }
    Ok(())
}

fn file_location(file: &str, line: Option<&str>) -> String {
    match line {
        Some(line) => format!("{file}:{line}"),
        None => file.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------
// Free text: fixed-size chunks with an overlap

fn count_newlines(bytes: &[u8]) -> u64 {
    // Word at a time: this crate is built without optimisation in debug builds.
    let mut chunks = bytes.chunks_exact(8);
    let mut n = 0u64;
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
        // Bytes equal to b'\n' become 0x00; then the classic "has zero byte" trick, per byte.
        let x = word ^ 0x0A0A_0A0A_0A0A_0A0A;
        let zero =
            !(((x & 0x7F7F_7F7F_7F7F_7F7F) + 0x7F7F_7F7F_7F7F_7F7F) | x | 0x7F7F_7F7F_7F7F_7F7F);
        n += u64::from(zero.count_ones());
    }
    n + chunks.remainder().iter().filter(|&&b| b == b'\n').count() as u64
}

/// Fills `buf[*filled..target]` from `reader`; `true` once the reader is exhausted.
fn fill<R: Read>(
    reader: &mut R,
    buf: &mut [u8],
    filled: &mut usize,
    target: usize,
    bytes: &mut u64,
) -> io::Result<bool> {
    while *filled < target {
        match reader.read(&mut buf[*filled..target]) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                *filled += n;
                *bytes += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

fn read_text<R: Read>(
    mut reader: R,
    origin: &str,
    out: &mut Emitter<'_>,
    chunk: usize,
) -> Result<(), FormatError> {
    let re = token_regex();
    let chunk = chunk.max(1);
    let mut buf = vec![0u8; chunk + OVERLAP];
    let mut filled = 0usize;
    // Matches starting before `scan_from` were already handled in an earlier round.
    let mut scan_from = 0usize;
    // `line` is the 1-based line number at `buf[line_pos]`.
    let mut line = 1u64;
    let mut line_pos = 0usize;
    let mut bytes = 0u64;
    loop {
        let target = filled + chunk;
        let read = fill(&mut reader, &mut buf, &mut filled, target, &mut bytes);
        out.stats.bytes = bytes;
        let eof = read?;
        let hay = &buf[..filled];
        for m in re.find_iter(hay) {
            let (start, end) = (m.start(), m.end());
            if start < scan_from {
                continue;
            }
            if end >= filled && !eof {
                break; // the byte after the match is not read yet: next round
            }
            if !standalone(hay, start, end) {
                continue;
            }
            line += count_newlines(&hay[line_pos..start]);
            line_pos = start;
            out.emit(Found {
                token: String::from_utf8_lossy(&hay[start..end]).into_owned(),
                token_type: "cio_tp".to_owned(),
                url: format!("{origin}:{line}"),
                source: "text".to_owned(),
            })?;
        }
        if eof {
            return Ok(());
        }
        // Every match starting before `decided` had its following byte available.
        let decided = filled.saturating_sub(TOKEN_LEN);
        let keep = filled.min(OVERLAP);
        let drop = filled - keep;
        if line_pos < drop {
            line += count_newlines(&buf[line_pos..drop]);
            line_pos = drop;
        }
        buf.copy_within(drop..filled, 0);
        filled = keep;
        line_pos -= drop;
        scan_from = scan_from.max(decided).saturating_sub(drop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::io::Cursor;
    use std::path::PathBuf;
    use std::rc::Rc;

    // Test-only tokens from fixtures/reports (see its README).
    const A: &str = "cio_tp_ACAyMYNZERnTTS1iqvGWBaE8Nt8Ebu052fSx";
    const B: &str = "cio_tp_lXgcmdQXsufD3qUOXbNKdAwgXN8can1OoeWU";
    const C: &str = "cio_tp_gzqdfPXHzUfToQmeSRY4KCBCZSwhHN3JuWiw";
    const D: &str = "cio_tp_UzdWnDTOCvFft4g9hLRxgLPPrU2Q2u0VTqp6";
    const E: &str = "cio_tp_JjEvY1YIYnsep3zgvn2VOaIUCH3De43QC7H5";
    const F: &str = "cio_tp_0GhNi68shQanwvDbxHn0vr39EirQPp0U6m2n";
    const G: &str = "cio_tp_ojjsMe6M8Hsh5Bv3dofjGTBOJrx9cc3gqZqc";
    const H: &str = "cio_tp_xy2X5r57IONveWxzHdypVCsUbBAwzK0P2RTI";
    const I: &str = "cio_tp_KWbNbgECMszLtziYYiiX4cSqjLtyS83Z17Wl";
    const W1: &str = "cio_tp_vNB0ydMX6C31JZeQJfMdjqVzKYsJre1OfZo8";
    const W2: &str = "cio_tp_uxMOcdHPqJmyGIZN831DqPA6VL1iFV3fuuHn";
    const W3: &str = "cio_tp_j2tjkXBuQiaUlctrjEt7hpZWULQcSo39yV6H";
    const KNOWN: &str = "cio_tp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1yLcDB";

    fn fixture(name: &str) -> Vec<u8> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/reports")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn found(token: &str, token_type: &str, url: &str, source: &str) -> Found {
        Found {
            token: token.into(),
            token_type: token_type.into(),
            url: url.into(),
            source: source.into(),
        }
    }

    fn read_all(
        input: &[u8],
        format: Format,
        origin: &str,
    ) -> Result<(Vec<Found>, ReadStats), FormatError> {
        let mut all = Vec::new();
        let stats = read_report(input, format, origin, &mut |f| {
            all.push(f);
            Ok(())
        })?;
        assert_eq!(stats.found, all.len() as u64);
        Ok((all, stats))
    }

    fn text_with_chunk(input: &[u8], chunk: usize) -> Vec<Found> {
        let mut all = Vec::new();
        let mut sink = |f| {
            all.push(f);
            Ok(())
        };
        let mut out = Emitter {
            sink: &mut sink,
            stats: ReadStats::default(),
        };
        read_text(input, "t", &mut out, chunk).unwrap();
        assert_eq!(out.stats.bytes, input.len() as u64);
        all
    }

    fn trufflehog_with_cap(input: &[u8], origin: &str, cap: usize) -> (Vec<Found>, ReadStats) {
        let mut all = Vec::new();
        let mut sink = |f| {
            all.push(f);
            Ok(())
        };
        let mut out = Emitter {
            sink: &mut sink,
            stats: ReadStats::default(),
        };
        read_trufflehog(input, origin, &mut out, cap).unwrap();
        let stats = out.stats;
        (all, stats)
    }

    /// (line, token) by a naive whole-buffer scan, for comparison.
    fn reference_scan(input: &[u8]) -> Vec<(u64, String)> {
        token_regex()
            .find_iter(input)
            .filter(|m| standalone(input, m.start(), m.end()))
            .map(|m| {
                let line = 1 + input[..m.start()].iter().filter(|&&b| b == b'\n').count();
                (
                    line as u64,
                    String::from_utf8(m.as_bytes().to_vec()).unwrap(),
                )
            })
            .collect()
    }

    fn as_pairs(found: &[Found]) -> Vec<(u64, String)> {
        found
            .iter()
            .map(|f| {
                let line = f.url.rsplit(':').next().unwrap().parse().unwrap();
                (line, f.token.clone())
            })
            .collect()
    }

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
        for f in Format::ALL {
            assert_eq!(f.as_str().parse::<Format>(), Ok(f));
            assert_eq!(f.as_str().to_uppercase().parse::<Format>(), Ok(f));
            assert_eq!(f.to_string(), f.as_str());
        }
        assert_eq!("GitLeaks".parse::<Format>(), Ok(Format::Gitleaks));
        let err = "sarif".parse::<Format>().unwrap_err();
        for name in ["github", "gitleaks", "trufflehog", "text"] {
            assert!(err.contains(name), "{err}");
        }
        let err = A.parse::<Format>().unwrap_err();
        assert!(!err.contains(A));
    }

    #[test]
    fn github_fixture() {
        let (all, stats) =
            read_all(&fixture("github.json"), Format::Github, "github.json").unwrap();
        let commit = "2f5c9d1e0b7a4c3d8e6f1a2b3c4d5e6f7a8b9c0d";
        assert_eq!(
            all,
            vec![
                found(
                    H,
                    "cio_tp",
                    &format!("https://github.com/octo-org/octo-app/blob/{commit}/.env.example#L3"),
                    "content"
                ),
                found(
                    W3,
                    "cio_tp",
                    &format!("https://github.com/octo-org/octo-app/commit/{commit}"),
                    "commit"
                ),
                found(
                    I,
                    "cio_tp",
                    "https://gist.github.com/octocat/aa5a315d61ae9438b18d",
                    "gist_content"
                ),
                found("cio_tp_notARealToken", "cio_tp", "", "issue_comment"),
                found(I, "CIO_TP", "", ""),
            ]
        );
        assert_eq!(stats.skipped_lines, 0);
        assert_eq!(stats.bytes, fixture("github.json").len() as u64);
    }

    #[test]
    fn gitleaks_fixture() {
        let (all, stats) =
            read_all(&fixture("gitleaks.json"), Format::Gitleaks, "gitleaks.json").unwrap();
        let rule = "cio-trusted-publishing-token";
        let repo = "https://github.com/acme/widget-publisher";
        assert_eq!(
            all,
            vec![
                found(A, rule, ".github/workflows/publish.yml:31 @ 9f1c2a7b3d4e", "gitleaks"),
                found(
                    B,
                    rule,
                    &format!(
                        "{repo}/blob/4be1d0c93a5f7e2b8c6d1a0f9e8d7c6b5a493821/scripts/release.sh#L12"
                    ),
                    "gitleaks"
                ),
                found(
                    A,
                    "generic-api-key",
                    "docs/TROUBLESHOOTING.md:88 @ 0c8e2f4a6b1d",
                    "gitleaks"
                ),
                found(W1, rule, "tests/fixtures/tokens.txt:3 @ 5d2a9e7c1b3f", "gitleaks"),
                found(
                    C,
                    rule,
                    &format!(
                        "{repo}/blob/1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d/.env.production#L4"
                    ),
                    "gitleaks"
                ),
            ]
        );
        assert_eq!(stats.skipped_lines, 0);
        assert_eq!(stats.bytes, fixture("gitleaks.json").len() as u64);
    }

    #[test]
    fn trufflehog_fixture() {
        let (all, stats) =
            read_all(&fixture("trufflehog.jsonl"), Format::Trufflehog, "th.jsonl").unwrap();
        assert_eq!(
            all,
            vec![
                found(
                    C,
                    "CustomRegex",
                    "https://github.com/acme/widget-publisher/blob/7c2e9a4b1d8f3e6a0b5c2d9e4f7a1b3c6d8e0f52/ci/publish.env#L7",
                    "trufflehog:trufflehog - git"
                ),
                found(
                    D,
                    "CustomRegex",
                    "/home/dev/acme/.npmrc:3",
                    "trufflehog:trufflehog - filesystem"
                ),
                found(
                    D,
                    "CustomRegex",
                    "https://github.com/acme/docs/blob/d41e8b2a7c9f0e3d6b1a4c7e9f2d5b8a0c3e6f17/setup.md#L42",
                    "trufflehog:trufflehog - github"
                ),
            ]
        );
        assert_eq!(stats.skipped_lines, 1, "the log line in the middle");
        assert_eq!(stats.bytes, fixture("trufflehog.jsonl").len() as u64);
    }

    #[test]
    fn incident_text_fixture() {
        let (all, stats) =
            read_all(&fixture("incident.txt"), Format::Text, "incident.txt").unwrap();
        assert_eq!(
            all,
            vec![
                found(E, "cio_tp", "incident.txt:12", "text"),
                found(F, "cio_tp", "incident.txt:14", "text"),
                found(E, "cio_tp", "incident.txt:20", "text"),
                found(W2, "cio_tp", "incident.txt:22", "text"),
            ]
        );
        assert!(
            !all.iter().any(|f| f.token == G),
            "G is part of a longer run"
        );
        assert_eq!(stats.skipped_lines, 0);
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
        assert_eq!(detect(b"{\"level\":\"info\"}\n"), Format::Text);
        assert_eq!(detect(b"{ not json\n"), Format::Text);
        assert_eq!(detect(b"\xff\xfe binary"), Format::Text);
        assert_eq!(detect(A.as_bytes()), Format::Text);
    }

    #[test]
    fn text_token_across_the_64k_border_is_found_once() {
        // Put the token at every offset around the first chunk border, with a newline
        // before it so the line number is checked too.
        for start in TEXT_CHUNK - TOKEN_LEN - 3..=TEXT_CHUNK + 2 {
            let mut input = vec![b'.'; start];
            for i in (0..start.saturating_sub(1)).step_by(1000) {
                input[i] = b'\n';
            }
            let newlines_before = input.iter().filter(|&&b| b == b'\n').count();
            input.extend_from_slice(A.as_bytes());
            input.extend_from_slice(b" tail\nmore\n");
            let (all, _) = read_all(&input, Format::Text, "big.log").unwrap();
            assert_eq!(
                all,
                vec![found(
                    A,
                    "cio_tp",
                    &format!("big.log:{}", newlines_before + 1),
                    "text"
                )],
                "token at offset {start}"
            );
        }
    }

    #[test]
    fn text_border_rejections_use_bytes_from_the_neighbouring_chunk() {
        // A token ending exactly at the border followed by an alnum in the next chunk,
        // and a token starting right after an alnum at the end of the previous chunk.
        let mut followed = vec![b' '; TEXT_CHUNK - TOKEN_LEN];
        followed.extend_from_slice(A.as_bytes());
        followed.extend_from_slice(b"Z and more");
        assert_eq!(followed[TEXT_CHUNK], b'Z');
        assert!(read_all(&followed, Format::Text, "x").unwrap().0.is_empty());

        let mut preceded = vec![b' '; TEXT_CHUNK - 1];
        preceded.push(b'q');
        preceded.extend_from_slice(A.as_bytes());
        assert!(read_all(&preceded, Format::Text, "x").unwrap().0.is_empty());

        // Same layout with a separator: found.
        let mut ok = vec![b' '; TEXT_CHUNK - 1];
        ok.push(b'=');
        ok.extend_from_slice(A.as_bytes());
        assert_eq!(read_all(&ok, Format::Text, "x").unwrap().0.len(), 1);
    }

    #[test]
    fn text_chunking_agrees_with_a_whole_buffer_scan() {
        // Dense input: tokens, near-tokens and newlines at many alignments.
        let mut input = Vec::new();
        let pieces: [&[u8]; 9] = [
            A.as_bytes(),
            b"\n",
            b" ",
            b"x",
            b"_",
            W1.as_bytes(),
            b"cio_tp_short ",
            b"\xff\xfe",
            b"\r\n",
        ];
        let mut state = 7u32;
        for _ in 0..600 {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            input.extend_from_slice(pieces[(state >> 16) as usize % pieces.len()]);
        }
        let expected = reference_scan(&input);
        assert!(expected.len() > 20, "the input should contain tokens");
        for chunk in [1, 2, 7, 43, 44, 45, 46, 64, 100, 1000, TEXT_CHUNK] {
            assert_eq!(
                as_pairs(&text_with_chunk(&input, chunk)),
                expected,
                "chunk {chunk}"
            );
        }
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
        for name in [
            "incident.txt",
            "github.json",
            "gitleaks.json",
            "trufflehog.jsonl",
        ] {
            let data = fixture(name);
            let format = detect(&data);
            let (expected, expected_stats) = read_all(&data, format, name).unwrap();
            let mut all = Vec::new();
            let reader = io::BufReader::with_capacity(
                3,
                Trickle {
                    data: &data,
                    step: 0,
                },
            );
            let stats = read_report(reader, format, name, &mut |f| {
                all.push(f);
                Ok(())
            })
            .unwrap();
            assert_eq!(all, expected, "{name}");
            assert_eq!(stats, expected_stats, "{name}");
        }
    }

    #[test]
    fn text_longer_runs_are_not_tokens() {
        let input = format!(
            "a {A}x b\nc x{A} d\ne _{A} f\ng {A}_ h\ni {A}\nj \"{KNOWN}\"\nk {}\n",
            &A[..TOKEN_LEN - 1]
        );
        let (all, _) = read_all(input.as_bytes(), Format::Text, "o").unwrap();
        assert_eq!(
            all,
            vec![
                // Followed by `_`: the token itself ends there (only alnum extends it).
                found(A, "cio_tp", "o:4", "text"),
                found(A, "cio_tp", "o:5", "text"),
                found(KNOWN, "cio_tp", "o:6", "text"),
            ]
        );
    }

    #[test]
    fn text_with_non_utf8_bytes_around_tokens() {
        let mut input = b"\xff\xfe\x00caf\xe9 ".to_vec();
        input.extend_from_slice(A.as_bytes());
        input.extend_from_slice(b"\xe9\n\x80\x81");
        input.extend_from_slice(KNOWN.as_bytes());
        input.extend_from_slice(b"\xc3\n");
        let (all, stats) = read_all(&input, Format::Text, "dump.bin").unwrap();
        assert_eq!(
            all,
            vec![
                found(A, "cio_tp", "dump.bin:1", "text"),
                found(KNOWN, "cio_tp", "dump.bin:2", "text"),
            ]
        );
        assert_eq!(stats.bytes, input.len() as u64);
    }

    #[test]
    fn trufflehog_noise_lines_are_skipped_and_counted() {
        let record = |raw: &str| {
            format!(
                r#"{{"SourceMetadata":{{"Data":{{"Filesystem":{{"file":"a.env","line":2}}}}}},"SourceName":"trufflehog - filesystem","DetectorName":"CustomRegex","Raw":"{raw}"}}"#
            )
        };
        let mut input = Vec::new();
        input.extend_from_slice(b"\xF0\x9F\x90\xB7\xF0\x9F\x94\x91\xF0\x9F\x90\xB7  TruffleHog. Unearth your secrets.\n");
        input.extend_from_slice(record(A).as_bytes());
        input.extend_from_slice(b"\n\n   \r\n");
        input.extend_from_slice(
            b"2024-05-17T14:20:01Z\tinfo-0\ttrufflehog\trunning source\t{\"with_units\": true}\n",
        );
        input.extend_from_slice(b"42\n[1,2]\n\"str\"\n{\"unterminated\": \n\xff\xfe{}\n");
        input.extend_from_slice(format!("{} trailing\n", record(B)).as_bytes());
        input.extend_from_slice(record(C).as_bytes()); // last line without newline
        let (all, stats) = read_all(&input, Format::Trufflehog, "th").unwrap();
        let at = |t| {
            found(
                t,
                "CustomRegex",
                "a.env:2",
                "trufflehog:trufflehog - filesystem",
            )
        };
        assert_eq!(all, vec![at(A), at(C)]);
        // banner, log line, 42, [1,2], "str", unterminated, binary, record + trailing text
        assert_eq!(stats.skipped_lines, 8);
        assert_eq!(stats.bytes, input.len() as u64);
    }

    #[test]
    fn trufflehog_overlong_lines_are_skipped_without_buffering() {
        let small = |raw: &str| format!(r#"{{"DetectorName":"X","Raw":"{raw}"}}"#);
        let long = format!(
            r#"{{"DetectorName":"X","Raw":"{A}","pad":"{}"}}"#,
            "p".repeat(500)
        );
        let input = format!("{}\n{long}\n{}\n{long}", small(B), small(C));
        let (all, stats) = trufflehog_with_cap(input.as_bytes(), "big.jsonl", 100);
        assert_eq!(
            all,
            vec![
                found(B, "X", "big.jsonl:1", "trufflehog"),
                found(C, "X", "big.jsonl:3", "trufflehog"),
            ]
        );
        assert_eq!(stats.skipped_lines, 2);
        assert_eq!(stats.bytes, input.len() as u64);

        // A line of exactly the cap is still read.
        let exact = small(D);
        let (all, stats) = trufflehog_with_cap(format!("{exact}\n").as_bytes(), "e", exact.len());
        assert_eq!(all.len(), 1);
        assert_eq!(stats.skipped_lines, 0);
        let (all, stats) = trufflehog_with_cap(exact.as_bytes(), "e", exact.len() - 1);
        assert!(all.is_empty());
        assert_eq!(stats.skipped_lines, 1);
    }

    #[test]
    fn trufflehog_locations() {
        let rec = |data: &str, raw: &str, raw2: &str| {
            format!(
                r#"{{"SourceMetadata":{{"Data":{data}}},"SourceName":"","DetectorName":"","Raw":"{raw}","RawV2":"{raw2}"}}"#
            )
        };
        let lines = [
            // Link wins.
            rec(
                r#"{"Github":{"link":"https://gh/x#L1","repository":"https://gh/r","commit":"c","file":"f","line":1}}"#,
                A,
                "",
            ),
            // https repository: blob URL, `.git` and trailing slash removed.
            rec(
                r#"{"Gitlab":{"repository":"https://gitlab.com/g/p.git","commit":"abc","file":"d/e.txt","line":9}}"#,
                A,
                "",
            ),
            rec(
                r#"{"Git":{"repository":"https://example.com/r/","commit":"abc","file":"x"}}"#,
                A,
                "",
            ),
            // ssh repository: file:line.
            rec(
                r#"{"Git":{"repository":"git@github.com:o/r.git","commit":"abc","file":"k.env","line":"5"}}"#,
                A,
                "",
            ),
            // No location: report file and line.
            rec(r#"{}"#, A, ""),
            // Raw without a token: RawV2 is used; several tokens in one record.
            rec(
                r#"{"Filesystem":{"file":"f.txt","line":4}}"#,
                "user:pw",
                &format!("{B} {C}"),
            ),
            // Raw has a token: RawV2 is ignored.
            rec(r#"{"Filesystem":{"file":"g.txt"}}"#, D, E),
        ];
        let input = lines.join("\n");
        let (all, stats) = read_all(input.as_bytes(), Format::Trufflehog, "rep.jsonl").unwrap();
        let f = |t, url: &str| found(t, "trufflehog", url, "trufflehog");
        assert_eq!(
            all,
            vec![
                f(A, "https://gh/x#L1"),
                f(A, "https://gitlab.com/g/p/blob/abc/d/e.txt#L9"),
                f(A, "https://example.com/r/blob/abc/x"),
                f(A, "k.env:5"),
                f(A, "rep.jsonl:5"),
                f(B, "f.txt:4"),
                f(C, "f.txt:4"),
                f(D, "g.txt"),
            ]
        );
        assert_eq!(stats.skipped_lines, 0);
    }

    #[test]
    fn gitleaks_fallbacks() {
        let input = format!(
            r#"[
              {{"Secret":"REDACTED","Match":"token: {A}","File":"a.yml","StartLine":3}},
              {{"Secret":"{B}","Match":"{C}","RuleID":"","Link":"","File":"","StartLine":7,"Commit":"abc"}},
              {{"Secret":"{D} {E}","RuleID":"r"}},
              {{"Secret":"{F}x","Match":"nope"}},
              {{"Secret":null,"Match":null,"File":null,"StartLine":null,"Commit":null,"Tags":["a",{{"b":[1]}}]}}
            ]"#
        );
        let (all, stats) = read_all(input.as_bytes(), Format::Gitleaks, "report.json").unwrap();
        assert_eq!(
            all,
            vec![
                found(A, "gitleaks", "a.yml:3", "gitleaks"),
                found(B, "gitleaks", "report.json:7 @ abc", "gitleaks"),
                found(D, "r", "report.json", "gitleaks"),
                found(E, "r", "report.json", "gitleaks"),
            ]
        );
        assert_eq!(stats.skipped_lines, 0);
    }

    #[test]
    fn github_items_without_a_token_are_skipped() {
        let input = format!(
            r#"[{{"type":"x"}}, {{"token":null}}, {{"token":"{A}","type":null,"url":null,"source":null,"extra":[1,{{}}]}}, {{}}]"#
        );
        let (all, stats) = read_all(input.as_bytes(), Format::Github, "g").unwrap();
        assert_eq!(all, vec![found(A, "", "", "")]);
        assert_eq!(stats.skipped_lines, 3);
        let (all, stats) = read_all(b" [ ] \n", Format::Github, "g").unwrap();
        assert!(all.is_empty());
        assert_eq!(stats.bytes, 6);
    }

    #[test]
    fn json_reports_with_a_bom() {
        let mut input = b"\xEF\xBB\xBF".to_vec();
        input.extend_from_slice(format!(r#"[{{"token":"{A}"}}]"#).as_bytes());
        let (all, stats) = read_all(&input, Format::Github, "g").unwrap();
        assert_eq!(all, vec![found(A, "", "", "")]);
        assert_eq!(stats.bytes, input.len() as u64);

        let mut input = b"\xEF\xBB\xBF".to_vec();
        input.extend_from_slice(format!(r#"{{"Raw":"{A}"}}"#).as_bytes());
        let (all, _) = read_all(&input, Format::Trufflehog, "t").unwrap();
        assert_eq!(all, vec![found(A, "trufflehog", "t:1", "trufflehog")]);
    }

    #[test]
    fn malformed_json_errors_never_show_the_token() {
        let cases: Vec<(Format, String)> = vec![
            // serde would quote the string in "invalid type: string \"…\"".
            (Format::Github, format!("[\"{A}\"]")),
            (Format::Github, format!("{{\"token\":\"{A}\"}}")),
            (Format::Github, format!("\"{A}\"")),
            (Format::Github, format!("[{{\"token\":\"{A}\"}} {{\"token\":\"{B}\"}}]")),
            (Format::Github, format!("[{{\"token\":\"{A}\"}}] {B}")),
            (Format::Github, format!("[{{\"token\":\"{A}\",")),
            (Format::Github, format!("[{{\"token\":\"{A}\",\"type\":[\"{B}\"]}}]")),
            (Format::Gitleaks, format!("[{{\"Secret\":\"{A}\",\"StartLine\":1}},\n{{\"Secret\":\"{B}\",\"File\":{{\"{C}\":1}}}}]")),
            (Format::Gitleaks, format!("[{{\"Secret\":\"{A}\nx\"}}]")),
            (Format::Gitleaks, format!("[\n {B}\n]")),
        ];
        for (format, input) in cases {
            let mut seen = Vec::new();
            let err = read_report(input.as_bytes(), format, "r", &mut |f| {
                seen.push(f);
                Ok(())
            })
            .unwrap_err();
            assert!(
                matches!(err, FormatError::Json { line, .. } if line >= 1),
                "{err}"
            );
            let shown = format!("{err} {err:?}");
            for t in [A, B, C] {
                assert!(!shown.contains(t), "{shown}");
                assert!(
                    !shown.contains(&t[PREFIX.len()..PREFIX.len() + 20]),
                    "{shown}"
                );
            }
        }
        // The position is right: second line, after the first element.
        let err = read_all(
            format!("[{{\"token\":\"{A}\"}},\n  {A} ]").as_bytes(),
            Format::Github,
            "r",
        )
        .unwrap_err();
        match err {
            FormatError::Json { line, column, .. } => assert_eq!((line, column), (2, 3)),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn elements_before_a_syntax_error_are_still_delivered() {
        let input = format!("[{{\"token\":\"{A}\"}}, {{\"token\":\"{B}\"}}, oops]");
        let mut seen = Vec::new();
        let err = read_report(input.as_bytes(), Format::Github, "r", &mut |f| {
            seen.push(f.token);
            Ok(())
        })
        .unwrap_err();
        assert!(matches!(err, FormatError::Json { .. }));
        assert_eq!(seen, vec![A, B]);
    }

    #[test]
    fn a_sink_error_stops_reading() {
        for name in [
            "github.json",
            "gitleaks.json",
            "trufflehog.jsonl",
            "incident.txt",
        ] {
            let data = fixture(name);
            let mut calls = 0;
            let err = read_report(&data[..], detect(&data), name, &mut |_| {
                calls += 1;
                if calls == 2 {
                    Err("database is gone".to_owned())
                } else {
                    Ok(())
                }
            })
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
        for format in Format::ALL {
            let err =
                read_report(io::BufReader::new(Failing), format, "f", &mut |_| Ok(())).unwrap_err();
            assert!(
                matches!(err, FormatError::Io(ref e) if e.kind() == io::ErrorKind::BrokenPipe),
                "{format}: {err:?}"
            );
        }
        // Failing in the middle of a JSON array.
        let reader = Cursor::new(b"[{\"token\":\"x\"},".to_vec()).chain(Failing);
        let err = read_report(io::BufReader::new(reader), Format::Github, "f", &mut |_| {
            Ok(())
        })
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

    /// Produces `lines` lines of a fixed 1,000-line block without storing them, and
    /// counts how many bytes it has handed out.
    struct GeneratedLog {
        block: Vec<u8>,
        pos: usize,
        remaining_blocks: usize,
        produced: Rc<Cell<u64>>,
    }

    impl Read for GeneratedLog {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pos == self.block.len() {
                if self.remaining_blocks == 0 {
                    return Ok(0);
                }
                self.remaining_blocks -= 1;
                self.pos = 0;
            }
            let n = buf.len().min(self.block.len() - self.pos);
            buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
            self.pos += n;
            self.produced.set(self.produced.get() + n as u64);
            Ok(n)
        }
    }

    #[test]
    fn a_million_line_text_report_is_streamed() {
        const LINES: usize = 1_000_000;
        const BLOCK_LINES: usize = 1_000;
        // Line k (0-based in the block) has a token when k % 100 == 42; others are noise.
        let mut block = Vec::new();
        let mut line_start = Vec::new();
        for k in 0..BLOCK_LINES {
            line_start.push(block.len() as u64);
            if k % 100 == 42 {
                block.extend_from_slice(
                    format!("14:02:{:02} runner-{k} env CIO_TOKEN={A}\n", k % 60).as_bytes(),
                );
            } else {
                block.extend_from_slice(
                    format!("14:02:{:02} runner-{k} step ok\n", k % 60).as_bytes(),
                );
            }
        }
        let produced = Rc::new(Cell::new(0u64));
        let reader = GeneratedLog {
            block: block.clone(),
            pos: block.len(),
            remaining_blocks: LINES / BLOCK_LINES,
            produced: Rc::clone(&produced),
        };
        let mut count = 0u64;
        let mut max_read_ahead = 0u64;
        let mut last_line = 0u64;
        let stats = read_report(
            io::BufReader::new(reader),
            Format::Text,
            "huge.log",
            &mut |f| {
                let line: u64 = f.url.strip_prefix("huge.log:").unwrap().parse().unwrap();
                let (b, k) = (
                    (line - 1) / BLOCK_LINES as u64,
                    (line - 1) % BLOCK_LINES as u64,
                );
                if k % 100 != 42 || f.token != A {
                    return Err(format!("unexpected occurrence on line {line}"));
                }
                let offset = b * block.len() as u64 + line_start[k as usize];
                max_read_ahead = max_read_ahead.max(produced.get().saturating_sub(offset));
                last_line = line;
                count += 1;
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(count, (LINES / 100) as u64);
        assert_eq!(stats.found, count);
        assert_eq!(last_line, (LINES - BLOCK_LINES + 943) as u64);
        assert_eq!(
            stats.bytes,
            block.len() as u64 * (LINES / BLOCK_LINES) as u64
        );
        // Occurrences arrive while reading, never more than a couple of buffers ahead.
        assert!(
            max_read_ahead <= 2 * (TEXT_CHUNK as u64 + 8 * 1024),
            "read {max_read_ahead} bytes ahead"
        );
    }

    #[test]
    fn a_single_huge_line_without_newlines() {
        // 100 MiB, one line, a token every MiB, each one across a 64 KiB chunk border.
        let mut block = vec![b'a'; 1024 * 1024];
        block[TEXT_CHUNK - 20] = b' ';
        block[TEXT_CHUNK - 20 + 1..TEXT_CHUNK - 20 + 1 + TOKEN_LEN].copy_from_slice(A.as_bytes());
        block[TEXT_CHUNK - 20 + 1 + TOKEN_LEN] = b' ';
        let produced = Rc::new(Cell::new(0));
        let reader = GeneratedLog {
            pos: block.len(),
            block,
            remaining_blocks: 100,
            produced,
        };
        let mut urls = Vec::new();
        let stats = read_report(io::BufReader::new(reader), Format::Text, "one", &mut |f| {
            urls.push(f.url);
            Ok(())
        })
        .unwrap();
        assert_eq!(urls, vec!["one:1".to_owned(); 100]);
        assert_eq!(stats.bytes, 100 * 1024 * 1024);
    }

    /// A JSON array of `n` GitHub items, generated on the fly.
    struct GeneratedArray {
        n: usize,
        next: usize,
        pending: Vec<u8>,
        produced: Rc<Cell<u64>>,
    }

    impl Read for GeneratedArray {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pending.is_empty() {
                if self.next > self.n {
                    return Ok(0);
                }
                self.pending = if self.next == self.n {
                    b"\n]\n".to_vec()
                } else {
                    let sep = if self.next == 0 { "[\n" } else { ",\n" };
                    format!(r#"{sep}{{"token":"{A}","type":"cio_tp","url":"https://x/{}","source":"content"}}"#, self.next)
                        .into_bytes()
                };
                self.next += 1;
            }
            let n = buf.len().min(self.pending.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            self.produced.set(self.produced.get() + n as u64);
            Ok(n)
        }
    }

    #[test]
    fn json_arrays_are_streamed_element_by_element() {
        let n = 20_000;
        let produced = Rc::new(Cell::new(0u64));
        let reader = GeneratedArray {
            n,
            next: 0,
            pending: Vec::new(),
            produced: Rc::clone(&produced),
        };
        let mut i = 0u64;
        let stats = read_report(io::BufReader::new(reader), Format::Github, "g", &mut |f| {
            assert_eq!(f.url, format!("https://x/{i}"));
            // Items are < 130 bytes: element i arrives before the reader has produced
            // much more than the element itself plus one 8 KiB buffer.
            let limit = (i + 1) * 130 + 8 * 1024 + 16;
            if produced.get() > limit {
                return Err(format!(
                    "item {i} delivered after reading {} bytes",
                    produced.get()
                ));
            }
            i += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(stats.found, n as u64);
        assert_eq!(i, n as u64);
    }
}
