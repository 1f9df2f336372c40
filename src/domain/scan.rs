//! Finding tokens in bytes nobody parsed (a report read as text, a scanner's body that
//! is no alert array) and in every string of a delivery, whatever encoding hides them.
//! Which tokens: those of the enabled [`Formats`] (redaction: of every known format).
//!
//! - [`plain`]: every string of an enabled format's shape (`cio_tp_` + 36 letters or
//!   digits, `cio` + 32, …) at **every** position where a prefix starts (a token cut
//!   short and followed by a whole one yields both: a scan that stops after each match
//!   would swallow the second's first letters). Whatever surrounds it: a token glued to
//!   other text has leaked all the same. Where two formats' strings start at one place,
//!   [`Formats::token_at`] picks one (the longest whose check passes); a string of our
//!   shape with wrong check digits is still yielded, for the caller to count as not
//!   ours.
//! - [`all`]: [`plain`] in the bytes as they are and in up to [`MAX_LAYERS`] layers of
//!   decoding, each undoing percent-encoding (`%XX`, either case) and JSON escapes
//!   (`\u00XX`, `\\`) wherever they appear, in any mix and any subset of the
//!   characters: `cio%5Ftp%5F…`, `%63io_tp_…`, `\u0063io_tp_…`, `%5Cu0063io_tp_…`,
//!   `cio%255Ftp…` (twice encoded). Each token once per place (its start in the input),
//!   decoded.
//! - [`runs`]: where in the input every known prefix and the letters and digits after
//!   it are, in any of those layers: what [`crate::domain::redact`] replaces.
//!
//! One pass undoes both kinds of escape, so an escape of one kind can swallow the `c`
//! of a prefix whose other characters are escaped the other way (`%4cio\u005ftp_…`:
//! one JSON pass alone gives `%4cio_tp_…`, both together `Lio_tp_…`; `c` is the only
//! hex digit in the prefixes). So a prefix without its `c` (`io_tp_`, `io`) and a
//! token's letters or digits right after an escape's byte counts too: [`all`] takes it
//! when `c` and it are a token of an enabled format (check digits passed; any
//! well-formed one without them), [`runs`] redacts it from the escape that swallowed
//! the `c`.
//!
//! A decoded layer remembers, for each of its bytes, the input bytes it stands for, so
//! a token found three layers down is placed (and redacted) in the input.

use std::ops::Range;

use super::format::{self, Formats};

/// Layers of encoding undone beyond the input itself: a URL encoded twice inside a
/// JSON string read as text is three.
pub const MAX_LAYERS: usize = 3;

/// Bytes one decoded byte stands for at most in a layer (`\u00XX`).
const WIDEST_ESCAPE: usize = 6;

/// Bytes of the longest match in the input: the longest token of any format with every
/// character escaped in every layer.
pub const MAX_MATCH: usize = format::MAX_LEN * WIDEST_ESCAPE.pow(MAX_LAYERS as u32);

/// Calls `f(start, token)` for every token-shaped run of an enabled format in `hay`, at
/// every place a prefix starts ([`Formats::token_at`] picks the format), prefix by
/// prefix (runs may overlap).
fn each_plain<'h>(hay: &'h [u8], formats: Formats, mut f: impl FnMut(usize, &'h str)) {
    for prefix in formats.prefixes() {
        for at in format::find_iter(hay, prefix) {
            let Some(len) = formats.token_at(hay, at, prefix) else {
                continue;
            };
            if let Ok(token) = std::str::from_utf8(&hay[at..at + len]) {
                f(at, token);
            }
        }
    }
}

/// Every plain token-shaped run of an enabled format, as (start, token), by start (runs
/// may overlap).
pub fn plain(hay: &[u8], formats: Formats) -> Vec<(usize, &str)> {
    let mut found = Vec::new();
    each_plain(hay, formats, |at, token| found.push((at, token)));
    found.sort_by_key(|&(at, _)| at);
    found
}

/// Whether `hay` may hold an escape any layer could undo: a `%` or a `\`. Without
/// one, the input is its only layer.
fn may_be_encoded(hay: &[u8]) -> bool {
    memchr::memchr2(b'%', b'\\', hay).is_some()
}

/// One decoded layer: its bytes, and for each the input range it stands for.
struct Layer {
    bytes: Vec<u8>,
    spans: Vec<(u32, u32)>,
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The value of `n` hex digits at `at`, if they are all there.
fn hex_at(bytes: &[u8], at: usize, n: usize) -> Option<u32> {
    let digits = bytes.get(at..at + n)?;
    digits
        .iter()
        .try_fold(0u32, |v, &b| Some(v * 16 + u32::from(hex_value(b)?)))
}

/// `bytes` with one layer of escapes undone, or `None` when it holds none. `span(i)`
/// is the input range byte `i` stands for.
fn decode(bytes: &[u8], span: impl Fn(usize) -> (u32, u32)) -> Option<Layer> {
    if !may_be_encoded(bytes) {
        return None;
    }
    let mut out = Layer {
        bytes: Vec::with_capacity(bytes.len()),
        spans: Vec::with_capacity(bytes.len()),
    };
    let mut changed = false;
    let mut i = 0;
    while i < bytes.len() {
        let (decoded, width): (Option<char>, usize) = match bytes[i] {
            b'%' => (hex_at(bytes, i + 1, 2).and_then(char::from_u32), 3),
            b'\\' => match bytes.get(i + 1) {
                Some(b'u' | b'U') => (hex_at(bytes, i + 2, 4).and_then(char::from_u32), 6),
                Some(b'\\') => (Some('\\'), 2),
                _ => (None, 1),
            },
            _ => (None, 1),
        };
        let (from, to) = (span(i).0, span(i + width.min(bytes.len() - i) - 1).1);
        match decoded {
            // A `%XX` above 0x7F is one byte of a UTF-8 sequence, kept as that byte.
            Some(c) if bytes[i] == b'%' => {
                out.bytes.push(c as u32 as u8);
                out.spans.push((from, to));
                changed = true;
                i += width;
            }
            Some(c) => {
                let mut utf8 = [0u8; 4];
                for &b in c.encode_utf8(&mut utf8).as_bytes() {
                    out.bytes.push(b);
                    out.spans.push((from, to));
                }
                changed = true;
                i += width;
            }
            None => {
                out.bytes.push(bytes[i]);
                out.spans.push(span(i));
                i += 1;
            }
        }
    }
    changed.then_some(out)
}

/// Calls `f(layer bytes, span of byte i)` for the input and each decoded layer below
/// it, at most [`MAX_LAYERS`] of them, stopping when one holds no escape.
fn each_layer(hay: &[u8], mut f: impl FnMut(&[u8], &dyn Fn(usize) -> (u32, u32))) {
    let identity = |i: usize| (i as u32, i as u32 + 1);
    f(hay, &identity);
    let Some(mut layer) = decode(hay, identity) else {
        return;
    };
    for depth in 1..=MAX_LAYERS {
        let spans = std::mem::take(&mut layer.spans);
        let span = |i: usize| spans[i];
        f(&layer.bytes, &span);
        if depth == MAX_LAYERS {
            return;
        }
        match decode(&layer.bytes, span) {
            Some(next) => layer = next,
            None => return,
        }
    }
}

/// Every place in a layer where a prefix of `formats` without its `c` (`io_tp_`, `io`)
/// comes right after a byte that an escape decoded to (one whose input range is wider
/// than one byte) other than a `c`: that escape may have swallowed the `c` (see the
/// module docs). As (the escape's byte, where the `c`-less prefix starts, the prefix).
/// After a plain byte (`studio_tp_…`, `éio_tp_…`) nothing was swallowed.
fn swallowed_c(
    bytes: &[u8],
    span: &dyn Fn(usize) -> (u32, u32),
    formats: Formats,
    mut f: impl FnMut(usize, usize, &'static str),
) {
    for prefix in formats.prefixes() {
        let Some(after) = prefix.strip_prefix('c') else {
            continue;
        };
        for at in format::find_iter(bytes, after) {
            let Some(escape) = at.checked_sub(1) else {
                continue;
            };
            let (from, to) = span(escape);
            // A plain prefix (`plain` has it), or no escape before it: nothing here.
            if bytes[escape] != b'c' && to - from >= 2 {
                f(escape, at, prefix);
            }
        }
    }
}

/// [`swallowed_c`]'s places where the `c` and what follows are a token of an enabled
/// format: (the escape's byte, the byte after it, the token with its `c`). `io_tp_`
/// after other text is not made into an occurrence.
fn without_c(
    bytes: &[u8],
    span: &dyn Fn(usize) -> (u32, u32),
    formats: Formats,
    mut f: impl FnMut(usize, usize, String),
) {
    swallowed_c(bytes, span, formats, |escape, at, prefix| {
        // The token as if the `c` stood where the escape's byte is.
        let Some(len) = formats.token_at(bytes, escape, prefix) else {
            return;
        };
        let Ok(rest) = std::str::from_utf8(&bytes[at..escape + len]) else {
            return;
        };
        let token = format!("c{rest}");
        if formats.recognise(&token).is_some() {
            f(escape, at, token);
        }
    });
}

/// Bytes decoded at once: a longer input is decoded in windows of this size that
/// overlap by [`MAX_MATCH`], so what decoding holds at a time (its layers and the input
/// range of each of their bytes, about 20 times the window) stays bounded whatever the
/// size of the string (`--max-body` is 8 MiB by default).
pub const DECODE_WINDOW: usize = 128 << 10;

/// The memory [`all`] and [`runs`] may hold at once for decoding, at most.
pub const DECODE_SCRATCH: usize = 20 * (DECODE_WINDOW + MAX_MATCH);

/// `hay` in windows of [`DECODE_WINDOW`] bytes overlapping by [`MAX_MATCH`], with their
/// offsets (one window when it is shorter).
fn windows(hay: &[u8]) -> impl Iterator<Item = (usize, &[u8])> + '_ {
    (0..hay.len().max(1)).step_by(DECODE_WINDOW).map(move |at| {
        (
            at,
            &hay[at..(at + DECODE_WINDOW + MAX_MATCH).min(hay.len())],
        )
    })
}

/// Whether `hay` may hold a token of `formats` in any form [`all`] finds: a prefix, or
/// an escape. A cheap test that lets a string without either go unscanned.
pub fn may_hold_token(hay: &[u8], formats: Formats) -> bool {
    may_be_encoded(hay) || formats.any_prefix_in(hay)
}

/// Every token of an enabled format in `hay`, plain or under up to [`MAX_LAYERS`]
/// layers of percent-encoding and JSON escapes, decoded, as (start in `hay`, token), by
/// start; one per place (a token found in several layers, or with its `c` swallowed in
/// one, or in two windows, ends at the same input byte: the earliest start is kept).
pub fn all(hay: &[u8], formats: Formats) -> Vec<(usize, String)> {
    all_placed(hay, formats)
        .into_iter()
        .map(|(start, _, token)| (start, token))
        .collect()
}

/// [`all`] with where each token ends in `hay` too: (start, end, token), by start. The
/// end is where a token is the same token whatever came before it (the text reader
/// tells a token it emitted from another by it).
pub fn all_placed(hay: &[u8], formats: Formats) -> Vec<(usize, usize, String)> {
    if !may_be_encoded(hay) {
        return plain(hay, formats)
            .into_iter()
            .map(|(at, t)| (at, at + t.len(), t.to_owned()))
            .collect();
    }
    // (end in `hay`, start in `hay`, token)
    let mut found: Vec<(usize, usize, String)> = Vec::new();
    let mut windows = windows(hay).peekable();
    while let Some((offset, window)) = windows.next() {
        let last = windows.peek().is_none();
        all_in(window, offset, formats, last, &mut found);
    }
    found.sort_by(|a, b| (a.0, &a.2, a.1).cmp(&(b.0, &b.2, b.1)));
    found.dedup_by(|later, first| later.0 == first.0 && later.2 == first.2);
    let mut found: Vec<(usize, usize, String)> = found
        .into_iter()
        .map(|(end, start, token)| (start, end, token))
        .collect();
    found.sort_by_key(|&(at, _, _)| at);
    found
}

/// [`all`]'s tokens in one window at `offset`, as (end, start, token) in `hay`. Unless
/// this is the `last` window, a token is left out where a longer format with its prefix
/// would reach past the window's end: the window cut what [`Formats::token_at`] would
/// have seen, and the next window, which holds it whole, decides.
fn all_in(
    hay: &[u8],
    offset: usize,
    formats: Formats,
    last: bool,
    found: &mut Vec<(usize, usize, String)>,
) {
    let at_input = |n: u32| offset + n as usize;
    // Whether a token of `len` bytes at `at` of a layer of `layer_len` bytes was cut.
    let cut = |token: &str, at: usize, layer_len: usize| {
        !last
            && formats.iter().any(|f| {
                token.starts_with(f.prefix)
                    && f.token_len() > token.len()
                    && at + f.token_len() > layer_len
            })
    };
    each_layer(hay, |bytes, span| {
        each_plain(bytes, formats, |at, token| {
            if !cut(token, at, bytes.len()) {
                found.push((
                    at_input(span(at + token.len() - 1).1),
                    at_input(span(at).0),
                    token.to_owned(),
                ));
            }
        });
        without_c(bytes, span, formats, |from, at, token| {
            // `from` stands where the swallowed `c` would.
            if !cut(&token, from, bytes.len()) {
                found.push((
                    at_input(span(at + token.len() - 2).1),
                    at_input(span(from).0),
                    token,
                ));
            }
        });
    });
}

/// [`runs`] of one layer of a window at `offset`: (input range, prefix), unsorted.
fn runs_in(
    bytes: &[u8],
    span: &dyn Fn(usize) -> (u32, u32),
    offset: usize,
    found: &mut Vec<(Range<usize>, &'static str)>,
) {
    let run_after = |after: usize| {
        bytes[after..]
            .iter()
            .position(|b| !b.is_ascii_alphanumeric())
            .unwrap_or(bytes.len() - after)
    };
    let range =
        |from: usize, last: usize| offset + span(from).0 as usize..offset + span(last).1 as usize;
    // The fewest letters and digits after `prefix` that a format with it takes.
    let least = |prefix: &str, of: fn(&format::Format) -> usize| {
        Formats::ALL
            .iter()
            .filter(|f| f.prefix == prefix)
            .map(of)
            .min()
            .unwrap_or(0)
    };
    for prefix in Formats::ALL.prefixes() {
        let min = least(prefix, |f| f.redact_min);
        for at in format::find_iter(bytes, prefix) {
            let after = at + prefix.len();
            let run = run_after(after);
            if run >= min {
                found.push((range(at, after + run - 1), prefix));
            }
        }
    }
    // A prefix whose `c` an escape swallowed, before a whole secret part: redacted from
    // that escape on.
    swallowed_c(bytes, span, Formats::ALL, |from, at, prefix| {
        let after = at + prefix.len() - 1;
        let run = run_after(after);
        if run >= least(prefix, |f| f.body_len) {
            found.push((range(from, after + run - 1), prefix));
        }
    });
}

/// Where every prefix of a known format (enabled or not) and the letters and digits
/// right after it are in `hay`, in the input or in any decoded layer: input ranges,
/// sorted and merged, each with the prefix of its first run (what it is shown as once
/// redacted). `cio_tp_` is taken with any run after it (a cut token is a secret's
/// part); `cio` only before a whole token's worth ([`format::Format::redact_min`]).
pub fn runs(hay: &[u8]) -> Vec<(Range<usize>, &'static str)> {
    let mut found: Vec<(Range<usize>, &'static str)> = Vec::new();
    if may_be_encoded(hay) {
        for (offset, window) in windows(hay) {
            each_layer(window, |bytes, span| {
                runs_in(bytes, span, offset, &mut found)
            });
        }
    } else {
        runs_in(hay, &|i| (i as u32, i as u32 + 1), 0, &mut found);
    }
    found.sort_by_key(|(r, _)| r.start);
    let mut merged: Vec<(Range<usize>, &'static str)> = Vec::with_capacity(found.len());
    for (r, prefix) in found {
        match merged.last_mut() {
            Some((last, _)) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push((r, prefix)),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "cio_tp_ACAyMYNZERnTTS1iqvGWBaE8Nt8Ebu052fSx";

    /// Where [`runs`] are, without their prefixes.
    fn ranges(hay: &[u8]) -> Vec<Range<usize>> {
        runs(hay).into_iter().map(|(r, _)| r).collect()
    }

    fn tokens(hay: &str) -> Vec<String> {
        all(hay.as_bytes(), Formats::DEFAULT)
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }

    /// Every byte of `s` written as `%XX` (upper-case hex) or `\u00XX`.
    fn percent(s: &str) -> String {
        s.bytes().map(|b| format!("%{b:02X}")).collect()
    }
    fn json(s: &str) -> String {
        s.bytes().map(|b| format!("\\u{b:04x}")).collect()
    }

    #[test]
    fn a_token_after_a_cut_off_one_is_found() {
        let cut = format!("cio_tp_{}{A}", "a".repeat(35));
        let found: Vec<&str> = plain(cut.as_bytes(), Formats::DEFAULT)
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[1], A);
        let cut = format!("{}{A}", &A[..40]);
        assert_eq!(plain(cut.as_bytes(), Formats::DEFAULT).last().unwrap().1, A);
    }

    #[test]
    fn escaped_tokens_are_decoded_once_each() {
        let hay = format!(
            "x \\u0063{} {A} \\u0043IO_TP_{} {}\\u005fx",
            &A[1..],
            &A[7..],
            &A[..42]
        );
        let found = all(hay.as_bytes(), Formats::DEFAULT);
        let tokens: Vec<&str> = found.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(tokens, [A, A], "{found:?}");
        assert_eq!(found[0].0, 2);
        assert_eq!(found[1].0, hay.find(A).unwrap());
        assert_eq!(
            all(json(A).as_bytes(), Formats::DEFAULT),
            [(0, A.to_owned())]
        );
    }

    #[test]
    fn percent_encoded_tokens_in_any_subset_and_case_are_found() {
        let secret = &A[7..];
        for hay in [
            format!("https://x/?q=cio%5Ftp%5F{secret}"),
            format!("https://x/?q=cio%5ftp%5f{secret}&z=1"),
            format!("%63io_tp_{secret}"),
            format!("a={}", percent(A)),
            format!("cio_tp_{}{}", &secret[..10], percent(&secret[10..])),
            // Twice encoded (a URL in a URL's parameter), and percent over JSON.
            format!("u=cio%255Ftp%255F{secret}"),
            format!("%5Cu0063io_tp_{secret}"),
            // A JSON string escaped twice (`\\u0063` read as text).
            format!("\\\\u0063io_tp_{secret}"),
        ] {
            assert_eq!(tokens(&hay), [A], "{hay}");
        }
        // Not an encoding of ours: an upper-case prefix, a bad escape, a short run.
        for hay in [
            format!("%43IO_TP_{secret}"),
            format!("cio%5Gtp_{secret}"),
            format!("cio%5Ftp%5F{}", &secret[1..]),
        ] {
            assert!(tokens(&hay).is_empty(), "{hay}");
        }
    }

    /// An escape of one kind swallowing the `c` of a prefix escaped the other way: still
    /// the token (the review's inputs).
    #[test]
    fn a_c_swallowed_by_an_escape_before_it_is_still_found() {
        let b = crate::domain::token::Token::generate();
        let secret = &b.expose_secret()[7..];
        for hay in [
            format!("https://x/?q=\\u123cio%5Ftp_{secret}"),
            format!("%4cio\\u005ftp_{secret}"),
            format!("%2c%69%6F%5F%74%70_{secret}"),
        ] {
            assert_eq!(tokens(&hay), [b.expose_secret()], "{hay}");
            let runs = ranges(hay.as_bytes());
            assert_eq!(runs.len(), 1, "{hay}");
            assert_eq!(runs[0].end, hay.len(), "{hay}");
        }
        // `io_tp_` after other text is no occurrence unless it is a token of ours, and
        // after a plain byte (an escape elsewhere or not) nothing was swallowed: not
        // taken, not redacted, and no panic after a character of several bytes.
        assert!(tokens(&format!("radio_tp_{}%20", "a".repeat(36))).is_empty());
        for hay in [
            format!("studio_tp_{}", &A[7..]),
            format!("%20 studio_tp_{}", &A[7..]),
            format!("\\u00e9io_tp_{}", "a".repeat(36)),
            format!("éio_tp_{} %41", &A[7..]),
            format!("é\\u0069o_tp_{}", &A[7..]),
        ] {
            assert!(tokens(&hay).is_empty(), "{hay}");
            if !hay.starts_with('\\') {
                assert!(ranges(hay.as_bytes()).is_empty(), "{hay}");
            }
            let _ = crate::domain::redact::redact_tokens(&hay);
        }
    }

    /// A string longer than a decoding window: a token across the border of two
    /// windows is found once and redacted whole.
    #[test]
    fn tokens_across_decoding_windows_are_found_once() {
        for at in [DECODE_WINDOW - 30, DECODE_WINDOW - 3, DECODE_WINDOW + 2] {
            let mut hay = "%".to_owned() + &".".repeat(at - 1);
            hay.push_str(&percent(A));
            hay.push_str(&".".repeat(DECODE_WINDOW));
            let found = all(hay.as_bytes(), Formats::DEFAULT);
            assert_eq!(found, [(at, A.to_owned())], "at {at}");
            let runs = ranges(hay.as_bytes());
            assert_eq!(runs, vec![at..at + 3 * A.len()], "at {at}");
        }
    }

    /// A token whose start is in the overlap of two windows, cut short in the first:
    /// found once, whole, not also as the shorter format's string the cut leaves.
    #[test]
    fn a_token_cut_by_a_window_is_not_taken_for_a_shorter_one() {
        for cut in [36, 39, 41, 42] {
            let at = DECODE_WINDOW + MAX_MATCH - cut;
            let hay = "%".to_owned() + &".".repeat(at - 1) + A + " " + &".".repeat(100);
            assert_eq!(
                all(hay.as_bytes(), Formats::ALL),
                [(at, A.to_owned())],
                "cut {cut}"
            );
        }
    }

    /// Backslashes paired across a window's start: the window before decodes the token
    /// (the next one pairs them otherwise and would need a fourth layer); it is found.
    #[test]
    fn a_token_after_backslashes_across_a_window_start_is_found() {
        for n in [1, 3, 9, 17] {
            // `n` backslashes from the byte before the second window's start, then
            // `u0063`: decoded as a whole, `(n - 1) / 2` pairs and a `\u0063`.
            let mut hay = ".".repeat(DECODE_WINDOW - 1);
            hay.push_str(&"\\".repeat(n));
            hay.push_str(&format!("u0063{}", &A[1..]));
            hay.push_str(&".".repeat(100));
            let found = all(hay.as_bytes(), Formats::ALL);
            assert_eq!(found.len(), 1, "{n} backslashes: {found:?}");
            assert_eq!(found[0].1, A, "{n} backslashes");
        }
    }

    #[test]
    fn a_token_encoded_in_every_layer_fits_the_longest_match() {
        let deepest = json(&json(&json(A)));
        assert_eq!(deepest.len(), MAX_MATCH);
        assert_eq!(
            all(deepest.as_bytes(), Formats::DEFAULT),
            [(0, A.to_owned())]
        );
        let mixed = percent(&json(&percent(A)));
        assert!(mixed.len() <= MAX_MATCH);
        assert_eq!(tokens(&mixed), [A]);
        // One layer more than is undone: not found.
        assert!(tokens(&percent(&percent(&percent(&percent(A))))).is_empty());
    }

    /// crates.io's formats: found only when enabled, glued to letters, encoded, with the
    /// `c` swallowed; redacted whether enabled or not, and `cio` in a word is not.
    #[test]
    fn crates_io_tokens_are_found_when_enabled_and_always_redacted() {
        use crate::domain::format::{crates_io_api, crates_io_trustpub};
        let api = crates_io_api::tests::generate();
        let tp = crates_io_trustpub::tests::generate();
        let found = |hay: &str, formats| -> Vec<String> {
            all(hay.as_bytes(), formats)
                .into_iter()
                .map(|(_, t)| t)
                .collect()
        };
        for hay in [
            format!("key={api}, x"),
            format!("xx{api}yyyy"),
            format!("%63io{}", &api[3..]),
            format!("%4c\\u0069o{}", &api[3..]),
        ] {
            assert_eq!(found(&hay, Formats::ALL), [api.as_str()], "{hay}");
            assert!(found(&hay, Formats::DEFAULT).is_empty(), "{hay}");
            let redacted = crate::domain::redact::redact_tokens(&hay);
            assert!(!redacted.contains(&api[5..]), "{redacted}");
            assert!(redacted.contains("cio[redacted]"), "{redacted}");
        }
        for hay in [format!("t={tp} "), format!("t={tp}abcd")] {
            assert_eq!(found(&hay, Formats::ALL), [tp.as_str()], "{hay}");
            assert!(!crate::domain::redact::redact_tokens(&hay).contains(&tp[9..]));
        }
        // `cio` in words, or before fewer than 32 letters and digits: no token, no
        // redaction.
        for hay in [
            "precious Francisco delicious",
            "ciocio1234567890",
            "%20io and \\u0063io",
        ] {
            assert!(found(hay, Formats::ALL).is_empty(), "{hay}");
            assert_eq!(crate::domain::redact::redact_tokens(hay), hay);
        }
    }

    #[test]
    fn runs_are_input_ranges_of_every_layer_merged() {
        let hay = format!("a cio%5Ftp%5F{} b {A}. cio_tp_ %63io_tp_x", &A[7..]);
        let runs = ranges(hay.as_bytes());
        let shown: Vec<&str> = runs.iter().map(|r| &hay[r.clone()]).collect();
        assert_eq!(
            shown,
            [
                &format!("cio%5Ftp%5F{}", &A[7..]),
                A,
                "cio_tp_",
                "%63io_tp_x"
            ]
        );
        assert!(ranges(b"nothing here").is_empty());
    }
}

/// Tokens written in encodings, for the property tests of everything that must find or
/// redact them (deliveries, replay, redaction; `tests/leaks.rs` too, hence public).
#[doc(hidden)]
pub mod planted {
    /// How one character of a planted token is written.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Way {
        Plain,
        PercentUpper,
        PercentLower,
        Json,
    }

    /// Every [`Way`].
    pub const WAYS: [Way; 4] = [Way::Plain, Way::PercentUpper, Way::PercentLower, Way::Json];

    /// `token` with each character written its own way (`ways` cycles), then `outer`
    /// more layers that percent-encode each `%` and `\` of that (`%25`, `%5C`): within
    /// [`super::MAX_LAYERS`] when `outer` is below it.
    pub fn write(token: &str, ways: &[Way], outer: u8) -> String {
        let mut s: String = token
            .bytes()
            .zip(ways.iter().cycle())
            .map(|(b, way)| match way {
                Way::Plain => char::from(b).to_string(),
                Way::PercentUpper => format!("%{b:02X}"),
                Way::PercentLower => format!("%{b:02x}"),
                Way::Json => format!("\\u{b:04x}"),
            })
            .collect();
        for _ in 0..outer {
            s = s.replace('%', "%25").replace('\\', "%5C");
        }
        s
    }

    /// An encoding [`write`] takes: within [`super::MAX_LAYERS`] layers.
    #[cfg(test)]
    pub fn encoding() -> impl proptest::strategy::Strategy<Value = (Vec<Way>, u8)> {
        use proptest::prelude::*;
        (
            prop::collection::vec(prop::sample::select(&WAYS[..]), 1..12),
            0..=(super::MAX_LAYERS as u8 - 1),
        )
    }
}
