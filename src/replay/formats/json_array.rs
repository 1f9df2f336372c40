//! The streaming reader shared by the JSON-array formats (github, gitleaks).
//!
//! Owns [`ReportItem`] (what one array element yields), the serde visitor that walks the
//! top-level array, and what happens to whatever is not in the format's shape.
//!
//! Invariants:
//! - The array is never held whole: each element is parsed (as a JSON value), turned
//!   into occurrences and handed to the sink before the next one is read.
//! - Nothing is skipped: an element the format's type cannot read, and every token in an
//!   element that the format's fields did not yield (`finding.value`, a note, a key),
//!   is an occurrence located by its JSON path (`report.json:[3].finding.value`).
//! - Invalid JSON (a syntax error, a truncated file, a top level that is no array)
//!   does not end the reading: from the start of the element it happened in, the rest
//!   of the file is scanned as text, and the place is named in [`super::ReadStats`].
//! - A sink refusal stops reading and is returned as that refusal.

use std::cell::RefCell;
use std::fmt;
use std::io::{self, Read};
use std::marker::PhantomData;
use std::rc::Rc;

use serde::de::{self, Deserialize, SeqAccess, Visitor};
use serde_json::Value;

use super::{text, without_bom, Emitter, FormatError, Found, TEXT_CHUNK};

/// One element of a JSON-array report.
pub(super) trait ReportItem: for<'de> Deserialize<'de> {
    /// What the report should look like, for messages.
    const EXPECTED: &'static str;
    /// Appends this element's occurrences to `out`; `false` if the element is not in
    /// the format's shape (it is then named as unstructured).
    fn occurrences(self, origin: &str, out: &mut Vec<Found>) -> bool;
}

/// The bytes the JSON parser has taken since the last whole element (and the byte
/// before them, which the parser may have peeked at), with the line they start on: what
/// is scanned as text if the parser gives up.
#[derive(Default)]
pub(super) struct Taken {
    bytes: Vec<u8>,
    line: u64,
}

impl Taken {
    /// An element is done: forget its bytes but the last.
    pub(super) fn element_done(&mut self) {
        let keep_from = self.bytes.len().saturating_sub(1);
        self.line += memchr::memchr_iter(b'\n', &self.bytes[..keep_from]).count() as u64;
        self.bytes.drain(..keep_from);
    }
}

/// The reader under the parser, recording into [`Taken`].
pub(super) struct Recorder<'r> {
    inner: &'r mut dyn Read,
    taken: Rc<RefCell<Taken>>,
}

impl Read for Recorder<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.taken.borrow_mut().bytes.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// The parser the JSON readers drive.
pub(super) type JsonDe<'r> = serde_json::Deserializer<serde_json::de::IoRead<Recorder<'r>>>;

/// Runs `parse` over the JSON in `reader` (a leading BOM dropped, only whitespace
/// allowed after it); `parse` calls [`Taken::element_done`] after each part it has
/// handed on, and keeps a sink refusal in its last argument. If the JSON is invalid,
/// the bytes from the last part handed on to the end are scanned as text and the place
/// is named in the stats.
pub(super) fn read_json<'s, R: Read>(
    reader: R,
    origin: &str,
    out: &mut Emitter<'s>,
    expected: &str,
    parse: impl FnOnce(
        &mut JsonDe<'_>,
        &mut Emitter<'s>,
        Rc<RefCell<Taken>>,
        &mut Option<FormatError>,
    ) -> Result<(), serde_json::Error>,
) -> Result<(), FormatError> {
    let mut reader = without_bom(reader)?;
    let taken = Rc::new(RefCell::new(Taken {
        bytes: Vec::new(),
        line: 1,
    }));
    let mut stopped = None;
    let result = {
        let recorder = Recorder {
            inner: &mut reader,
            taken: Rc::clone(&taken),
        };
        let mut de = serde_json::Deserializer::from_reader(recorder);
        parse(&mut de, &mut *out, Rc::clone(&taken), &mut stopped).and_then(|()| de.end())
    };
    if let Some(e) = stopped {
        return Err(e);
    }
    let Err(e) = result else {
        return Ok(());
    };
    if e.classify() == serde_json::error::Category::Io {
        return Err(FormatError::Io(e.into()));
    }
    // Not JSON from here on (or not the expected JSON at all): the part it happened
    // in, and everything after it, as text.
    let Taken { bytes, line } = std::mem::take(&mut *taken.borrow_mut());
    out.stats.unstructured(|| {
        format!(
            "{origin}:{line} onwards ({} at line {}, column {}; expected {expected}), scanned as text",
            json_problem(&e),
            e.line(),
            e.column(),
        )
    });
    text::read(
        io::Cursor::new(bytes).chain(reader),
        origin,
        out,
        TEXT_CHUNK,
        line,
    )
}

/// Visits the top-level array, handing each element's occurrences to the sink as soon
/// as the element is parsed.
struct ArrayVisitor<'a, 's, T> {
    origin: &'a str,
    out: &'a mut Emitter<'s>,
    taken: Rc<RefCell<Taken>>,
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
        let mut index = 0usize;
        while let Some(value) = seq.next_element::<Value>()? {
            self.taken.borrow_mut().element_done();
            let place = format!("{}:[{index}]", self.origin);
            let emitted = self.out.element(&value, &place, |batch| {
                T::deserialize(&value).is_ok_and(|item| item.occurrences(self.origin, batch))
            });
            if let Err(e) = emitted {
                *self.stopped = Some(e);
                return Err(de::Error::custom("stopped by the sink"));
            }
            index += 1;
        }
        Ok(())
    }
}

/// Reads a whole JSON array of `T` (and only whitespace after it); whatever is not
/// valid JSON is scanned as text.
pub(super) fn read<R: Read, T: ReportItem>(
    reader: R,
    origin: &str,
    out: &mut Emitter<'_>,
) -> Result<(), FormatError> {
    read_json(
        reader,
        origin,
        out,
        T::EXPECTED,
        |de, out, taken, stopped| {
            let visitor = ArrayVisitor::<T> {
                origin,
                out,
                taken,
                stopped,
                item: PhantomData,
            };
            serde::Deserializer::deserialize_seq(de, visitor)
        },
    )
}

/// What is wrong with the JSON, in words that never quote it (serde's own messages
/// quote the offending value, which may be a token).
fn json_problem(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Eof => "unexpected end of input (truncated report?)",
        Category::Syntax => "invalid JSON syntax",
        Category::Data | Category::Io => "not the expected JSON shape",
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::Formats;
    use std::cell::Cell;
    use std::io;
    use std::rc::Rc;

    use super::super::testutil::*;
    use super::super::{read_report, Format, ReadStats};
    use super::*;
    use crate::domain::token::PREFIX;

    /// Every token found and the unstructured parts; the reading must succeed.
    fn read_ok(input: &str, format: Format) -> (Vec<String>, ReadStats) {
        let (all, stats) = read_all(input.as_bytes(), format, "r").unwrap();
        (all.into_iter().map(|f| f.token).collect(), stats)
    }

    #[test]
    fn invalid_json_is_scanned_as_text_and_named_without_the_token() {
        let cases: Vec<(Format, String, Vec<&str>)> = vec![
            // Elements of another shape are swept as JSON, not refused.
            (Format::Github, format!("[\"{A}\"]"), vec![A]),
            // No array at all, a missing comma, trailing junk, a truncated file.
            (Format::Github, format!("{{\"token\":\"{A}\"}}"), vec![A]),
            (Format::Github, format!("\"{A}\""), vec![A]),
            (Format::Github, format!("[{{\"token\":\"{A}\"}} {{\"token\":\"{B}\"}}]"), vec![A, B]),
            (Format::Github, format!("[{{\"token\":\"{A}\"}}] {B}"), vec![A, B]),
            (Format::Github, format!("[{{\"token\":\"{A}\","), vec![A]),
            (Format::Github, format!("[{{\"token\":\"{A}\",\"type\":[\"{B}\"]}}]"), vec![A, B]),
            (Format::Gitleaks, format!("[{{\"Secret\":\"{A}\",\"StartLine\":1}},\n{{\"Secret\":\"{B}\",\"File\":{{\"{C}\":1}}}}]"), vec![A, C, B]),
            (Format::Gitleaks, format!("[{{\"Secret\":\"{A}\nx\"}}]"), vec![A]),
            (Format::Gitleaks, format!("[\n {B}\n]"), vec![B]),
            (Format::Github, format!("[1{A}]"), vec![A]),
        ];
        for (format, input, expected) in cases {
            let (tokens, stats) = read_ok(&input, format);
            assert_eq!(tokens, expected, "{input:?}");
            assert!(stats.unstructured >= 1, "{input:?}");
            let shown = format!("{stats:?}");
            for t in [A, B, C] {
                assert!(
                    !shown.contains(&t[PREFIX.len()..PREFIX.len() + 20]),
                    "{shown}"
                );
            }
        }
        // Named where it broke: the element on line 2 and everything after it, as text
        // from its own line, after the first element was read as JSON.
        let input = format!("[{{\"token\":\"{A}\",\"url\":\"u\"}},\n  {B} ]\n{C}\n");
        let (all, stats) = read_all(input.as_bytes(), Format::Github, "r").unwrap();
        assert_eq!(
            all,
            vec![
                found(A, "", "u", ""),
                found(B, "cio_tp", "r:2", "text"),
                found(C, "cio_tp", "r:3", "text"),
            ]
        );
        assert_eq!(stats.unstructured, 1);
        assert!(
            stats.unstructured_at[0]
                .starts_with("r:1 onwards (invalid JSON syntax at line 2, column 3;"),
            "{stats:?}"
        );
    }

    #[test]
    fn tokens_outside_the_formats_fields_are_found_with_their_path() {
        let input = format!(
            r#"[{{"finding":{{"value":"{A}"}}}}, {{"token":"{B}","note":"also {C} and {B}","{D}":[[1,"{E}"]]}}, 7, null, {{"odd key":"x{F}y"}}]"#
        );
        let (all, stats) = read_all(input.as_bytes(), Format::Github, "r.json").unwrap();
        assert_eq!(
            all,
            vec![
                found(A, "cio_tp", "r.json:[0].finding.value", "json"),
                found(B, "", "", ""),
                // Keys in sorted order (serde_json's map).
                found(D, "cio_tp", "r.json:[1].cio_tp_[redacted]", "json"),
                found(E, "cio_tp", "r.json:[1].cio_tp_[redacted][0][1]", "json"),
                found(C, "cio_tp", "r.json:[1].note", "json"),
                found(F, "cio_tp", "r.json:[4][\"odd key\"]", "json"),
            ]
        );
        // Not in the github shape: the first, the number, the null, the last.
        assert_eq!(stats.unstructured, 4);
        assert_eq!(stats.unstructured_at[0], "r.json:[0]");
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
        read_report(
            io::BufReader::new(reader),
            Format::Github,
            Formats::DEFAULT,
            "g",
            &mut |f| {
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
            },
        )
        .unwrap();
        assert_eq!(i, n as u64);
    }
}
