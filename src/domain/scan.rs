//! Finding tokens in bytes nobody parsed: a report read as text, a scanner's body that
//! is no alert array.
//!
//! - [`plain`]: every `cio_tp_` followed by 36 letters or digits, at **every** position
//!   where the prefix starts (a token cut short and followed by a whole one yields both:
//!   a scan that stops after each match would swallow the second's first letters).
//!   Whatever surrounds it: a token glued to other text has leaked all the same; the
//!   check digits decide later whether it is ours.
//! - [`escaped`]: the same written with JSON `\u00XX` escapes for some characters (a
//!   JSON string read as text), decoded.
//! - [`all`]: both, by position.
//!
//! Check digits are not looked at here.

use std::sync::OnceLock;

use regex::bytes::Regex;

use super::token::{PREFIX, TOKEN_LEN};

/// Bytes of the longest match: a token with every character escaped (`\u0063…`).
pub const MAX_MATCH: usize = 6 * TOKEN_LEN;

/// Every plain token-shaped run, as (start, token), in order (runs may overlap).
pub fn plain(hay: &[u8]) -> impl Iterator<Item = (usize, &str)> + '_ {
    memchr::memmem::find_iter(hay, PREFIX.as_bytes()).filter_map(move |at| {
        let run = hay.get(at..at + TOKEN_LEN)?;
        if !run[PREFIX.len()..].iter().all(u8::is_ascii_alphanumeric) {
            return None;
        }
        Some((at, std::str::from_utf8(run).ok()?))
    })
}

/// A token with some characters written as JSON `\u00XX` escapes: each character
/// literal or escaped. Only the escapes of `cio_tp_` and of letters and digits match.
fn escaped_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        let unit = |c: char| {
            let literal = regex::escape(&c.to_string());
            format!(r"(?:{literal}|\\u00{:02x})", c as u32)
        };
        let prefix: String = PREFIX.chars().map(unit).collect();
        let alnum = r"(?:[0-9A-Za-z]|\\u00(?:3[0-9]|4[1-9a-fA-F]|5[0-9aA]|6[1-9a-fA-F]|7[0-9aA]))";
        let pattern = format!("(?i:{prefix}){alnum}{{{}}}", TOKEN_LEN - PREFIX.len());
        Regex::new(&pattern).expect("the escaped token pattern is a valid regex")
    })
}

/// Every token written with at least one escape, decoded, as (start, token), in order;
/// one per position where such a run starts.
pub fn escaped(hay: &[u8]) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    if memchr::memmem::find(hay, br"\u00").is_none()
        && memchr::memmem::find(hay, br"\U00").is_none()
    {
        return found;
    }
    let re = escaped_regex();
    let mut from = 0;
    while let Some(m) = re.find_at(hay, from) {
        if m.as_bytes().contains(&b'\\') {
            if let Some(token) = unescape(m.as_bytes()) {
                found.push((m.start(), token));
            }
        }
        from = m.start() + 1;
    }
    found
}

/// [`plain`] and [`escaped`] together, by position.
pub fn all(hay: &[u8]) -> Vec<(usize, String)> {
    let mut found: Vec<(usize, String)> = plain(hay).map(|(at, t)| (at, t.to_owned())).collect();
    let escaped = escaped(hay);
    if !escaped.is_empty() {
        found.extend(escaped);
        found.sort_by_key(|&(at, _)| at);
    }
    found
}

/// The token an escaped match stands for; `None` unless it decodes to `cio_tp_` and 36
/// letters or digits (an uppercase prefix, say).
fn unescape(bytes: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(TOKEN_LEN);
    let mut rest = bytes;
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'\\' {
            let hex = std::str::from_utf8(tail.get(1..5)?).ok()?;
            out.push(char::from_u32(u32::from_str_radix(hex, 16).ok()?)?);
            rest = &tail[5..];
        } else {
            out.push(char::from(b));
            rest = tail;
        }
    }
    let whole = plain(out.as_bytes())
        .next()
        .is_some_and(|(at, t)| at == 0 && t.len() == out.len());
    whole.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "cio_tp_ACAyMYNZERnTTS1iqvGWBaE8Nt8Ebu052fSx";

    #[test]
    fn a_token_after_a_cut_off_one_is_found() {
        let cut = format!("cio_tp_{}{A}", "a".repeat(35));
        let found: Vec<&str> = plain(cut.as_bytes()).map(|(_, t)| t).collect();
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[1], A);
        let cut = format!("{}{A}", &A[..40]);
        assert_eq!(plain(cut.as_bytes()).last().unwrap().1, A);
    }

    #[test]
    fn escaped_tokens_are_decoded_once_each() {
        let hay = format!(
            "x \\u0063{} {A} \\u0043IO_TP_{} {}\\u005fx",
            &A[1..],
            &A[7..],
            &A[..42]
        );
        let found = all(hay.as_bytes());
        let tokens: Vec<&str> = found.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(tokens, [A, A], "{found:?}");
        assert!(found[0].0 < found[1].0);
        let every: String = A.bytes().map(|b| format!("\\u{b:04x}")).collect();
        assert_eq!(every.len(), MAX_MATCH);
        assert_eq!(escaped(every.as_bytes()), [(0, A.to_owned())]);
    }
}
