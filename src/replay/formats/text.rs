//! The **text** format: any bytes (log dumps, pasted incidents, binary junk), scanned
//! for every token of the enabled formats (`cio_tp_[0-9A-Za-z]{36}` by default; see
//! [`crate::domain::scan::plain`]), whatever surrounds it, each typed by its format. The
//! other readers use it for whatever they cannot parse.
//!
//! Invariants:
//! - The input is read in [`TEXT_CHUNK`]-byte chunks; the buffer never holds more than
//!   one chunk plus an overlap of the longest match (moved back over an escape or a run
//!   of backslashes it would start in), so a token across a chunk border is found, and
//!   found once: a token found again in the next round is told by where it ends.
//! - A token written with JSON `\u00XX` escapes (`\u0063io_tp_…`, a JSON string read
//!   as text) or percent-encoded (`cio%5Ftp%5F…`), in any mix of up to
//!   [`MAX_LAYERS`](crate::domain::scan::MAX_LAYERS) layers, is found too, decoded.
//! - Locations are `origin:line` with 1-based line numbers counted over every `\n`
//!   (from a given first line when the text is the rest of another report).

use std::io::{self, Read};

use super::{Emitter, FormatError, Found};
use crate::domain::scan::{self, MAX_MATCH};

/// Size of one read when scanning free text.
pub const TEXT_CHUNK: usize = 64 * 1024;
/// Bytes kept from one text chunk to the next: the longest match.
const OVERLAP: usize = MAX_MATCH;
/// Bytes the kept part may reach further back, so it does not start inside an escape or
/// a run of backslashes (which would decode differently than in the whole input).
const SLACK: usize = 32;

/// Whether a byte can be part of an escape (`%XX`, `\uXXXX`, `\\`).
fn in_escape(b: u8) -> bool {
    matches!(b, b'\\' | b'%' | b'u' | b'U') || b.is_ascii_hexdigit()
}

fn count_newlines(bytes: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', bytes).count() as u64
}

/// Fills `buf[*filled..target]` from `reader`; `true` once the reader is exhausted.
fn fill<R: Read>(
    reader: &mut R,
    buf: &mut [u8],
    filled: &mut usize,
    target: usize,
) -> io::Result<bool> {
    while *filled < target {
        match reader.read(&mut buf[*filled..target]) {
            Ok(0) => return Ok(true),
            Ok(n) => *filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Scans the whole input, `chunk` bytes per round, its first byte on line `first_line`.
pub(super) fn read<R: Read>(
    mut reader: R,
    origin: &str,
    out: &mut Emitter<'_>,
    chunk: usize,
    first_line: u64,
) -> Result<(), FormatError> {
    let chunk = chunk.max(1);
    let mut buf = vec![0u8; chunk + OVERLAP + SLACK];
    // Where `buf[0]` is in the input, and where the tokens emitted lately end (in the
    // input): a token found again in the next round, at a start its new context moved,
    // ends at the same byte and is not emitted twice.
    let mut base = 0u64;
    let mut emitted: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
    let mut filled = 0usize;
    // `line` is the 1-based line number at `buf[line_pos]`.
    let mut line = first_line;
    let mut line_pos = 0usize;
    let mut found = Vec::new();
    loop {
        let target = filled + chunk;
        let eof = fill(&mut reader, &mut buf, &mut filled, target)?;
        let hay = &buf[..filled];
        // A match starting before `decided` is whole in `hay`; later ones wait for the
        // next round, which keeps them.
        let decided = if eof {
            filled
        } else {
            filled.saturating_sub(MAX_MATCH)
        };
        // Whole in `hay` (starting before `decided`), and not emitted yet (by its end: a
        // new context may move a token's start, never its end).
        found.extend(
            scan::all_placed(hay, super::looking_for())
                .into_iter()
                .filter(|(start, end, _)| {
                    *start < decided && !emitted.contains(&(base + *end as u64))
                }),
        );
        for (start, end, token) in found.drain(..) {
            if start >= line_pos {
                line += count_newlines(&hay[line_pos..start]);
            } else {
                line -= count_newlines(&hay[start..line_pos]);
            }
            line_pos = start;
            emitted.push_back(base + end as u64);
            out.emit(Found {
                token_type: super::type_of(&token),
                token,
                url: format!("{origin}:{line}"),
                source: "text".to_owned(),
            })?;
        }
        if eof {
            return Ok(());
        }
        let keep = filled.min(OVERLAP);
        let mut drop = filled - keep;
        while drop > 0 && filled - drop < OVERLAP + SLACK && in_escape(buf[drop - 1]) {
            drop -= 1;
        }
        let keep = filled - drop;
        if line_pos < drop {
            line += count_newlines(&buf[line_pos..drop]);
            line_pos = drop;
        }
        buf.copy_within(drop..filled, 0);
        filled = keep;
        line_pos -= drop;
        base += drop as u64;
        emitted.retain(|&end| end > base);
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::Formats;
    use std::cell::Cell;
    use std::rc::Rc;

    use super::super::testutil::*;
    use super::super::{read_report, tokens_in, Format};
    use super::*;
    use crate::domain::token::TOKEN_LEN;

    fn with_chunk(input: &[u8], chunk: usize) -> Vec<Found> {
        collect(input, |reader, out| read(reader, "t", out, chunk, 1)).0
    }

    /// (line, token) by a naive whole-buffer scan, for comparison.
    fn reference_scan(input: &[u8]) -> Vec<(u64, String)> {
        scan::all(input, Formats::DEFAULT)
            .into_iter()
            .map(|(start, token)| {
                let line = 1 + input[..start].iter().filter(|&&b| b == b'\n').count();
                (line as u64, token)
            })
            .collect()
    }

    /// A token with every character escaped in every layer (the longest match) at
    /// every offset around the point where a round stops deciding (`filled -
    /// MAX_MATCH`) and around the read border: found once, on its line.
    #[test]
    fn the_longest_escaped_token_across_the_decision_border_is_found_once() {
        let escape = |s: &str| -> String { s.bytes().map(|b| format!("\\u{b:04x}")).collect() };
        let every = escape(&escape(&escape(A)));
        assert_eq!(every.len(), MAX_MATCH);
        let around = |at: usize| at - 3..=at + 3;
        for start in around(TEXT_CHUNK - MAX_MATCH).chain(around(TEXT_CHUNK - MAX_MATCH / 2)) {
            let mut input = vec![b'.'; start];
            input[0] = b'\n';
            input.extend_from_slice(every.as_bytes());
            input.extend_from_slice(b" tail\n");
            let found = with_chunk(&input, TEXT_CHUNK);
            let got: Vec<(&str, &str)> = found
                .iter()
                .map(|f| (f.token.as_str(), f.url.as_str()))
                .collect();
            assert_eq!(got, [(A, "t:2")], "escaped token at offset {start}");
        }
    }

    /// A JSON string escaped twice (`\\\\u0063io_tp_…`) one byte before the point where
    /// a round stops deciding, and a run of nine backslashes before `u0063io_tp_…`
    /// there: the next round starts inside the escape or the run, and still each token is
    /// found exactly once (found by the review: twice, and not at all).
    #[test]
    fn backslashes_across_the_decision_border_are_decoded_as_in_the_whole_input() {
        let chunk = 20_000;
        for token in [
            format!("\\\\u0063io_tp_{}", &A[7..]),
            format!("{}u0063io_tp_{}", "\\".repeat(9), &A[7..]),
        ] {
            for shift in 0..4 {
                let mut input = vec![b'x'; chunk - MAX_MATCH - 1 - shift];
                input.extend_from_slice(token.as_bytes());
                input.extend(std::iter::repeat_n(b'y', 2 * chunk));
                assert_eq!(scan::all(&input, Formats::DEFAULT).len(), 1);
                let found = with_chunk(&input, chunk);
                assert_eq!(found.len(), 1, "{token} shifted {shift}: {found:?}");
            }
        }
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
    fn incident_text_fixture() {
        let (all, stats) =
            read_all(&fixture("incident.txt"), Format::Text, "incident.txt").unwrap();
        assert_eq!(
            all,
            vec![
                found(E, "cio_tp", "incident.txt:12", "text"),
                found(F, "cio_tp", "incident.txt:14", "text"),
                // Glued to a longer run of letters: still found (check digits decide).
                found(G, "cio_tp", "incident.txt:15", "text"),
                found(E, "cio_tp", "incident.txt:20", "text"),
                found(W2, "cio_tp", "incident.txt:22", "text"),
            ]
        );
        assert_eq!(stats.unstructured, 0);
    }

    #[test]
    fn newlines_are_counted_anywhere() {
        assert_eq!(count_newlines(b""), 0);
        assert_eq!(count_newlines(b"no newline"), 0);
        let mut bytes = vec![b'x'; 1000];
        for i in [0, 7, 8, 63, 64, 500, 999] {
            bytes[i] = b'\n';
        }
        assert_eq!(count_newlines(&bytes), 7);
        assert_eq!(count_newlines(&bytes[1..999]), 5);
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
    fn text_tokens_glued_to_the_neighbouring_chunk_are_found_once() {
        // A token ending exactly at the border followed by an alnum in the next chunk,
        // and a token starting right after an alnum at the end of the previous chunk.
        let mut followed = vec![b' '; TEXT_CHUNK - TOKEN_LEN];
        followed.extend_from_slice(A.as_bytes());
        followed.extend_from_slice(b"Z and more");
        assert_eq!(followed[TEXT_CHUNK], b'Z');
        let tokens = |input: &[u8]| -> Vec<String> {
            let all = read_all(input, Format::Text, "x").unwrap().0;
            all.into_iter().map(|f| f.token).collect()
        };
        assert_eq!(tokens(&followed), [A]);

        let mut preceded = vec![b' '; TEXT_CHUNK - 1];
        preceded.push(b'q');
        preceded.extend_from_slice(A.as_bytes());
        assert_eq!(tokens(&preceded), [A]);
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
                as_pairs(&with_chunk(&input, chunk)),
                expected,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn text_tokens_inside_longer_runs_are_found() {
        let input = format!(
            "a {A}x b\nc x{A} d\ne _{A} f\ng {A}_ h\ni {A}\nj \"{KNOWN}\"\nk {}\n",
            &A[..TOKEN_LEN - 1]
        );
        let (all, _) = read_all(input.as_bytes(), Format::Text, "o").unwrap();
        // A leaked token glued to other text has leaked all the same; a 35-character
        // run after the prefix is no token.
        let lines: Vec<String> = all.iter().map(|f| f.url.clone()).collect();
        assert_eq!(lines, ["o:1", "o:2", "o:3", "o:4", "o:5", "o:6"]);
        assert!(all[..5].iter().all(|f| f.token == A));
        assert_eq!(all[5].token, KNOWN);
        // Small fields (gitleaks, trufflehog) apply the same rule.
        assert_eq!(
            tokens_in(&input).collect::<Vec<_>>(),
            [A, A, A, A, A, KNOWN]
        );
    }

    #[test]
    fn tokens_written_with_json_escapes_are_found_decoded() {
        let escaped_c = A.replacen('c', "\\u0063", 1);
        let escaped_tail = format!(
            "{}\\u00{:02X}",
            &B[..TOKEN_LEN - 1],
            B.as_bytes()[TOKEN_LEN - 1]
        );
        let all_escaped: String = C.bytes().map(|b| format!("\\u{:04x}", b)).collect();
        let input = format!(
            "{{\"a\": \"{escaped_c}\"}}\nplain {D} and {escaped_tail}\n{all_escaped}\n\
             not ours: \\u0063io_tp_short \\u0043IO_TP_{} {}\\u005fx\n",
            &E[7..],
            &F[..TOKEN_LEN - 1]
        );
        for chunk in [1, 7, 64, 300, TEXT_CHUNK] {
            let got: Vec<(String, String)> = with_chunk(input.as_bytes(), chunk)
                .into_iter()
                .map(|f| (f.token, f.url))
                .collect();
            let want: Vec<(String, String)> = [(A, "t:1"), (D, "t:2"), (B, "t:2"), (C, "t:3")]
                .iter()
                .map(|(t, l)| (t.to_string(), l.to_string()))
                .collect();
            assert_eq!(got, want, "chunk {chunk}");
        }
    }

    #[test]
    fn text_with_non_utf8_bytes_around_tokens() {
        let mut input = b"\xff\xfe\x00caf\xe9 ".to_vec();
        input.extend_from_slice(A.as_bytes());
        input.extend_from_slice(b"\xe9\n\x80\x81");
        input.extend_from_slice(KNOWN.as_bytes());
        input.extend_from_slice(b"\xc3\n");
        // `read_all` also checks that every byte was read.
        let (all, _) = read_all(&input, Format::Text, "dump.bin").unwrap();
        assert_eq!(
            all,
            vec![
                found(A, "cio_tp", "dump.bin:1", "text"),
                found(KNOWN, "cio_tp", "dump.bin:2", "text"),
            ]
        );
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
        read_report(
            io::BufReader::new(reader),
            Format::Text,
            Formats::DEFAULT,
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
        assert_eq!(last_line, (LINES - BLOCK_LINES + 943) as u64);
        // The whole report was read.
        assert_eq!(
            produced.get(),
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
            produced: Rc::clone(&produced),
        };
        let mut urls = Vec::new();
        read_report(
            io::BufReader::new(reader),
            Format::Text,
            Formats::DEFAULT,
            "one",
            &mut |f| {
                urls.push(f.url);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(urls, vec!["one:1".to_owned(); 100]);
        assert_eq!(produced.get(), 100 * 1024 * 1024);
    }
}
