//! What a string from outside may show of itself on an operator's terminal.
//!
//! Owns [`terminal_safe`], the one function every human-readable CLI output (tables,
//! summaries, error lines that quote input) passes outside text through, and
//! [`needs_escape`], the characters it escapes, which is also what `--owner` and
//! `--actor` refuse.
//!
//! Invariants:
//! - The output of [`terminal_safe`] holds no character for which [`needs_escape`] is
//!   true: no C0 control (U+0000–U+001F: ESC, newline, carriage return, tab…), no DEL
//!   (U+007F), no C1 control (U+0080–U+009F, CSI U+009B among them), and no Unicode
//!   bidirectional control: the embeddings and overrides U+202A–U+202E, the isolates
//!   U+2066–U+2069, and the three marks U+200E (LRM), U+200F (RLM) and U+061C (ALM).
//!   The marks are escaped too: they are invisible and reorder the neutral characters
//!   around them (a `/`, a digit, a `.`), and nothing an operator reads needs them.
//!   So a value can neither move the cursor, clear the screen, start a line of its own
//!   (a forged row or log line) nor make its text read in another order.
//! - Each such character is shown as its Rust escape: `\n`, `\r`, `\t`, `\0`, `\x1b`
//!   (ASCII), `\u{9b}`, `\u{202e}` (the others); every other character is unchanged,
//!   and a string with nothing to escape is borrowed, not copied.
//! - A backslash is left as it is: the escaped form is for reading, not for parsing
//!   back, and Windows paths and regular expressions in reports stay legible. So the
//!   text `\x1b` in a value and an escaped ESC look alike; `--json` output (which
//!   serde escapes, and which needs no more) has the exact value.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` is escaped by [`terminal_safe`]: a C0 or C1 control, DEL, or a Unicode
/// bidirectional control or mark.
pub fn needs_escape(c: char) -> bool {
    // `char::is_control` is the Cc category: exactly U+0000–U+001F and U+007F–U+009F.
    c.is_control() || is_bidi_control(c)
}

/// The Unicode bidirectional formatting characters: embeddings and overrides
/// (U+202A–U+202E), isolates (U+2066–U+2069) and the marks LRM, RLM and ALM.
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// `s` with every character of [`needs_escape`] shown as its Rust escape (`\x1b`,
/// `\n`, `\u{202e}`), everything else unchanged; borrowed when there is nothing to
/// escape.
pub fn terminal_safe(s: &str) -> Cow<'_, str> {
    let Some(first) = s.find(needs_escape) else {
        return Cow::Borrowed(s);
    };
    let mut out = String::with_capacity(s.len() + 8);
    out.push_str(&s[..first]);
    for c in s[first..].chars() {
        if !needs_escape(c) {
            out.push(c);
            continue;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if c.is_ascii() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn controls_and_bidi_are_escaped_as_rust_does() {
        assert_eq!(
            terminal_safe("a\x1b[2Jb\nFAKE LOG LINE\r\t\0\x7f"),
            "a\\x1b[2Jb\\nFAKE LOG LINE\\r\\t\\0\\x7f"
        );
        assert_eq!(
            terminal_safe("\u{9b}31m\u{80}\u{9f}"),
            "\\u{9b}31m\\u{80}\\u{9f}"
        );
        assert_eq!(terminal_safe("a\u{202e}b"), "a\\u{202e}b");
        for (c, shown) in [
            ('\u{202a}', "\\u{202a}"),
            ('\u{202d}', "\\u{202d}"),
            ('\u{2066}', "\\u{2066}"),
            ('\u{2069}', "\\u{2069}"),
            ('\u{200e}', "\\u{200e}"),
            ('\u{200f}', "\\u{200f}"),
            ('\u{61c}', "\\u{61c}"),
        ] {
            assert_eq!(terminal_safe(&format!("x{c}y")), format!("x{shown}y"));
        }
    }

    #[test]
    fn everything_else_is_unchanged_and_borrowed() {
        for s in [
            "",
            "alice/widget",
            "https://github.com/acme/w/blob/4be1d0c/release.sh#L12",
            "C:\\Users\\dana\\.npmrc",
            "\\x1b is text here",
            "é ü 日本語 עברית العربية 🦀",
            "\u{a0}\u{ad}\u{200b}\u{2028}\u{2070}\u{202f}",
        ] {
            assert!(
                matches!(terminal_safe(s), Cow::Borrowed(b) if b == s),
                "{s:?}"
            );
        }
        // Only the escaped characters change around the others.
        assert_eq!(terminal_safe("日\n本\u{202e}語"), "日\\n本\\u{202e}語");
    }

    #[test]
    fn the_escaped_set_is_cc_and_the_bidi_controls() {
        let escaped: Vec<u32> = (0..=0x10FFFF)
            .filter_map(char::from_u32)
            .filter(|&c| needs_escape(c))
            .map(u32::from)
            .collect();
        let mut expected: Vec<u32> = (0..=0x1F).chain(0x7F..=0x9F).collect();
        expected.extend([0x61C, 0x200E, 0x200F]);
        expected.extend(0x202A..=0x202E);
        expected.extend(0x2066..=0x2069);
        expected.sort_unstable();
        assert_eq!(escaped, expected);
    }

    /// Strings with many of the characters that must be escaped, and their neighbours.
    fn hostile() -> impl Strategy<Value = String> {
        let c = prop_oneof![
            any::<char>(),
            (0u32..=0x9F).prop_map(|u| char::from_u32(u).unwrap()),
            prop::sample::select(vec![
                '\u{61C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}',
                '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}', '\u{2029}', '\\', 'x',
                'u', '{', '}',
            ]),
        ];
        prop::collection::vec(c, 0..40).prop_map(|cs| cs.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn output_never_holds_a_character_to_escape(s in hostile()) {
            let shown = terminal_safe(&s);
            prop_assert!(!shown.chars().any(needs_escape), "{:?} → {:?}", s, shown);
            // One line, whatever the input.
            prop_assert_eq!(shown.lines().count(), usize::from(!shown.is_empty()));
            // Unchanged (and borrowed) exactly when there was nothing to escape.
            prop_assert_eq!(
                matches!(shown, Cow::Borrowed(_)),
                !s.chars().any(needs_escape)
            );
            // Every character that needs none is kept, in order.
            let kept: String = s.chars().filter(|&c| !needs_escape(c)).collect();
            let mut rest = shown.chars();
            prop_assert!(kept.chars().all(|k| rest.any(|c| c == k)));
        }
    }
}
