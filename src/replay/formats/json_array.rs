//! The streaming reader shared by the JSON-array formats (github, gitleaks).
//!
//! Owns [`ReportItem`] (what one array element yields), the serde visitor that walks the
//! top-level array, and the translation of serde_json errors into [`FormatError`].
//!
//! Invariants:
//! - The array is never held whole: each element is deserialized, turned into
//!   occurrences and handed to the sink before the next one is read.
//! - A sink refusal stops reading and is returned as that refusal, not as a JSON error.
//! - A JSON error keeps its position and category but never serde's message, which
//!   quotes the offending value (possibly a token).

use std::fmt;
use std::io::Read;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, SeqAccess, Visitor};

use super::{without_bom, Emitter, FormatError, Found};

/// One element of a JSON-array report.
pub(super) trait ReportItem: for<'de> Deserialize<'de> {
    /// What the report should look like, for error messages.
    const EXPECTED: &'static str;
    /// Appends this element's occurrences to `out`; `false` if the element had nothing
    /// usable and counts as skipped.
    fn occurrences(self, origin: &str, out: &mut Vec<Found>) -> bool;
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

/// Reads a whole JSON array of `T` (and only whitespace after it).
pub(super) fn read<R: Read, T: ReportItem>(
    reader: R,
    origin: &str,
    out: &mut Emitter<'_>,
) -> Result<(), FormatError> {
    let reader = without_bom(reader)?;
    let mut stopped = None;
    let result = {
        let mut de = serde_json::Deserializer::from_reader(reader);
        let visitor = ArrayVisitor::<T> {
            origin,
            out: &mut *out,
            stopped: &mut stopped,
            item: PhantomData,
        };
        serde::Deserializer::deserialize_seq(&mut de, visitor).and_then(|()| de.end())
    };
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

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::io;
    use std::rc::Rc;

    use super::super::testutil::*;
    use super::super::{read_report, Format};
    use super::*;
    use crate::domain::token::PREFIX;

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
        read_report(io::BufReader::new(reader), Format::Github, "g", &mut |f| {
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
        assert_eq!(i, n as u64);
    }
}
