//! The **trufflehog** format: trufflehog v3 `--json` output, one JSON object per line.
//!
//! Invariants:
//! - A line is never held beyond [`MAX_LINE`] bytes (plus one): a longer line is
//!   scanned as text while it is read, and named as unstructured.
//! - Lines that are not JSON objects (banners, log lines, junk) are scanned as text
//!   (`origin:line`) and named as unstructured; blank lines are passed over.
//! - The tokens are the `cio_tp_…` strings of `Raw`, or of `RawV2` when `Raw` has none;
//!   any other token anywhere in the record is found by the JSON sweep
//!   (`origin:line.path`). The location is the source's `link`, else a blob URL for an
//!   https repository, else `file:line`, else the report's own `origin:line`.

use std::io::{self, BufRead, Read};

use serde_json::{Map, Value};

use super::{
    file_location, non_empty, scalar_text, text, tokens_in_first, without_bom, Emitter,
    FormatError, Found, TEXT_CHUNK,
};

/// Longest trufflehog line that is parsed; longer lines are skipped (and counted).
pub const MAX_LINE: usize = 16 * 1024 * 1024;

enum Line {
    Eof,
    Complete,
    TooLong,
}

/// Reads one line (without its `\n`) into `line`, holding at most `cap + 1` bytes; of a
/// longer line, the rest is left unread ([`Line::TooLong`]).
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
    Ok(Line::TooLong)
}

/// The rest of the current line of a `BufRead` (its `\n` included), then end of input.
struct RestOfLine<'a, R> {
    inner: &'a mut R,
    done: bool,
}

impl<R: BufRead> Read for RestOfLine<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.done || out.is_empty() {
            return Ok(0);
        }
        let buf = self.inner.fill_buf()?;
        if buf.is_empty() {
            self.done = true;
            return Ok(0);
        }
        let len = match memchr::memchr(b'\n', buf) {
            Some(i) => {
                self.done = i < out.len();
                (i + 1).min(out.len())
            }
            None => buf.len().min(out.len()),
        };
        out[..len].copy_from_slice(&buf[..len]);
        self.inner.consume(len);
        Ok(len)
    }
}

/// Reads every line, parsing lines of at most `cap` bytes.
pub(super) fn read<R: BufRead>(
    reader: R,
    origin: &str,
    out: &mut Emitter<'_>,
    cap: usize,
) -> Result<(), FormatError> {
    let mut reader = without_bom(reader)?;
    let mut line = Vec::new();
    let mut line_no = 0u64;
    loop {
        let kind = read_capped_line(&mut reader, &mut line, cap)?;
        line_no += 1;
        match kind {
            Line::Eof => return Ok(()),
            Line::TooLong => {
                // Scanned while it is read: the part held, then the rest of the line.
                out.stats.unstructured(|| format!("{origin}:{line_no}"));
                let held = io::Cursor::new(std::mem::take(&mut line));
                let rest = RestOfLine {
                    inner: &mut reader,
                    done: false,
                };
                text::read(held.chain(rest), origin, out, TEXT_CHUNK, line_no)?;
                continue;
            }
            Line::Complete => {}
        }
        if line.trim_ascii().is_empty() {
            continue;
        }
        let Ok(mut record) = serde_json::from_slice::<Map<String, Value>>(&line) else {
            out.stats.unstructured(|| format!("{origin}:{line_no}"));
            text::read(&line[..], origin, out, TEXT_CHUNK, line_no)?;
            continue;
        };
        record_occurrences(&mut record, origin, line_no, out)?;
        if line.capacity() > 1024 * 1024 {
            line = Vec::new(); // do not keep a huge buffer after one big line
        }
    }
}

/// Emits the tokens of one parsed record (line `line_no` of the report).
fn record_occurrences(
    record: &mut Map<String, Value>,
    origin: &str,
    line_no: u64,
    out: &mut Emitter<'_>,
) -> Result<(), FormatError> {
    // Both the record's own fields and anything else in it.
    let record = Value::Object(std::mem::take(record));
    out.element(&record, &format!("{origin}:{line_no}"), |batch| {
        if let Value::Object(fields) = &record {
            structured(fields, origin, line_no, batch);
        }
        true
    })
}

/// The occurrences trufflehog's own fields name.
fn structured(record: &Map<String, Value>, origin: &str, line_no: u64, out: &mut Vec<Found>) {
    let text = |key: &str| record.get(key).and_then(Value::as_str).unwrap_or("");
    let tokens = tokens_in_first([text("Raw"), text("RawV2")]);
    if tokens.is_empty() {
        return;
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
    out.extend(tokens.into_iter().map(|token| Found {
        token: token.to_owned(),
        token_type: token_type.to_owned(),
        url: url.clone(),
        source: source.clone(),
    }));
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{Format, ReadStats};
    use super::*;

    fn with_cap(input: &[u8], origin: &str, cap: usize) -> (Vec<Found>, ReadStats) {
        collect(input, |reader, out| read(reader, origin, out, cap))
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
        assert_eq!(stats.unstructured, 1, "the log line in the middle");
    }

    #[test]
    fn trufflehog_noise_lines_are_scanned_as_text_and_named() {
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
        // The line that is a record followed by text is scanned as text.
        assert_eq!(all, vec![at(A), found(B, "cio_tp", "th:11", "text"), at(C)]);
        // banner, log line, 42, [1,2], "str", unterminated, binary, record + trailing text
        assert_eq!(stats.unstructured, 8);
        assert_eq!(stats.unstructured_at[0], "th:1");
    }

    #[test]
    fn trufflehog_overlong_lines_are_scanned_without_buffering() {
        let small = |raw: &str| format!(r#"{{"DetectorName":"X","Raw":"{raw}"}}"#);
        let long = format!(
            r#"{{"DetectorName":"X","Raw":"{A}","pad":"{}"}}"#,
            "p".repeat(500)
        );
        // `collect` checks that the overlong lines were consumed to the end.
        let input = format!("{}\n{long}\n{}\n{long}", small(B), small(C));
        let (all, stats) = with_cap(input.as_bytes(), "big.jsonl", 100);
        assert_eq!(
            all,
            vec![
                found(B, "X", "big.jsonl:1", "trufflehog"),
                found(A, "cio_tp", "big.jsonl:2", "text"),
                found(C, "X", "big.jsonl:3", "trufflehog"),
                found(A, "cio_tp", "big.jsonl:4", "text"),
            ]
        );
        assert_eq!(stats.unstructured, 2);
        assert_eq!(stats.unstructured_at, ["big.jsonl:2", "big.jsonl:4"]);

        // A line of exactly the cap is still read.
        let exact = small(D);
        let (all, stats) = with_cap(format!("{exact}\n").as_bytes(), "e", exact.len());
        assert_eq!(all.len(), 1);
        assert_eq!(stats.unstructured, 0);
        let (all, stats) = with_cap(exact.as_bytes(), "e", exact.len() - 1);
        assert_eq!(all, vec![found(D, "cio_tp", "e:1", "text")]);
        assert_eq!(stats.unstructured, 1);
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
            // Raw has a token: RawV2 is not read as trufflehog's; the sweep finds E.
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
                found(E, "cio_tp", "rep.jsonl:7.RawV2", "json"),
            ]
        );
        assert_eq!(stats.unstructured, 0);
    }
}
