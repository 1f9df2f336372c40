//! The promise of replay, as a property: every token of an enabled format in a report's
//! bytes is an occurrence, whatever format was detected or forced; so is every one
//! inside a decoded JSON string (a JSON reader decodes it; read as text, a token with
//! `\u00XX` escapes is decoded by the text scan). Checked against
//! a scan of every position on generated JSON arrays, JSON documents (objects with SARIF's
//! and GitLab's keys among others), JSON lines, text, and JSON broken at a random place.
//! Tokens are also planted percent-encoded and JSON-escaped in any mix (issue 26): each
//! such token, wherever its encoded form is whole in the bytes or in a decoded string,
//! must be found too. Every case runs with `cio_tp` alone (the default) and with every
//! format enabled (issue 27): tokens of crates.io's two formats are planted too, glued
//! to letters, and `cio_tp` tokens whose first 39 characters pass crates.io's
//! one-character check.
use crate::domain::Formats;
use std::cell::RefCell;
use std::collections::BTreeSet;

use proptest::prelude::*;
use serde_json::Value;

use super::{detect, read_report, Format};

/// A token-shaped string: the prefix and 36 characters (check digits not computed:
/// the readers do not look at them, unless two formats' strings start at one place);
/// or a valid token of any format ([`valid_token`]).
fn token() -> BoxedStrategy<String> {
    prop_oneof![
        2 => "[0-9A-Za-z]{36}".prop_map(|tail| format!("cio_tp_{tail}")),
        3 => valid_token(),
    ]
    .boxed()
}

/// A valid token of one of the formats: `cio_tp` (now and then one whose first 39
/// characters are also a valid trusted-publishing token), `crates_io_trustpub`,
/// `crates_io_api`.
fn valid_token() -> BoxedStrategy<String> {
    use crate::domain::format::crates_io_trustpub::check_character;
    use crate::domain::format::{generate, FORMATS};
    use crate::domain::token::check_digits;
    let ours = |random: String| {
        let check = check_digits(random.as_bytes());
        format!("cio_tp_{random}{}", std::str::from_utf8(&check).unwrap())
    };
    prop_oneof![
        2 => "[0-9A-Za-z]{30}".prop_map(ours),
        // Random parts whose first 31 characters give the 32nd as crates.io's check:
        // the first 39 characters of the token are a trusted-publishing token.
        1 => "[0-9A-Za-z]{30}".prop_filter_map("no trustpub inside", move |random| {
            (0..62u8).find_map(|i| {
                let mut r = random.clone().into_bytes();
                r[24] = crate::domain::token::encode_base62(u32::from(i))[5];
                let t = ours(String::from_utf8(r).unwrap());
                (check_character(&t.as_bytes()[7..38]) == t.as_bytes()[38]).then_some(t)
            })
        }),
        2 => "[0-9A-Za-z]{31}".prop_map(|random| {
            let check = check_character(random.as_bytes()) as char;
            format!("cio_tp_{random}{check}")
        }),
        2 => "[0-9A-Za-z]{32}".prop_map(|random| format!("cio{random}")),
        // Every listed format, a fourth one too.
        1 => (0..FORMATS.len()).prop_map(|i| generate(FORMATS[i])),
    ]
    .boxed()
}

thread_local! {
    /// Every token planted encoded by [`hidden_token`] since the last case ended: (its
    /// encoded form, the token). Shrinking regenerates values, so stale ones are kept
    /// out by [`expected`], which takes only those whose encoded form is in the document.
    static HIDDEN: RefCell<Vec<(String, String)>> = const { RefCell::new(Vec::new()) };
}

/// A token written with some characters percent-encoded or JSON-escaped (one layer:
/// serde's escaping of the JSON string, or the text scan reading it, adds the next).
fn hidden_token() -> impl Strategy<Value = String> {
    (valid_token(), crate::domain::scan::planted::encoding()).prop_map(|(t, (ways, _))| {
        let encoded = crate::domain::scan::planted::write(&t, &ways, 0);
        HIDDEN.with(|h| h.borrow_mut().push((encoded.clone(), t)));
        encoded
    })
}

/// Text around tokens: letters (which glue onto a token), separators, JSON's special
/// characters, a newline, non-ASCII; occasionally a near-token.
fn filler() -> impl Strategy<Value = String> {
    prop_oneof![
        20 => "[a-z0-9 =:/._-]{0,12}",
        5 => "[\"\\\\\n\t{}\\[\\],é]{0,4}",
        5 => Just("cio_tp_short".to_owned()),
        // A token cut short: the next token's first letters complete it.
        3 => (0usize..36).prop_map(|n| format!("cio_tp_{}", "a".repeat(n))),
        5 => Just(String::new()),
        // Longer than a text chunk (64 KiB): tokens on both sides of a chunk border.
        1 => (60_000usize..70_000).prop_map(|n| ".".repeat(n)),
    ]
}

/// A string with 0–2 tokens planted among filler.
fn planted() -> impl Strategy<Value = String> {
    let token = || prop_oneof![3 => token(), 1 => hidden_token()];
    (
        filler(),
        prop::option::of(token()),
        filler(),
        prop::option::of(token()),
        filler(),
    )
        .prop_map(|(a, t1, b, t2, c)| {
            format!(
                "{a}{}{b}{}{c}",
                t1.unwrap_or_default(),
                t2.unwrap_or_default()
            )
        })
}

/// Keys the readers know and keys they do not.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "token", "type", "url", "source", "secret", "secret_type", "html_url",
            "Secret", "Match", "RuleID", "File", "StartLine", "Raw", "RawV2",
            "DetectorName", "SourceMetadata", "finding", "value", "note",
        ])
        .prop_map(str::to_owned),
        1 => planted(),
    ]
}

/// Any JSON value, tokens planted in strings and keys, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        4 => planted().prop_map(Value::String),
        1 => any::<i32>().prop_map(Value::from),
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A report and whether a JSON reader may be expected to decode its strings.
#[derive(Debug, Clone)]
struct Doc {
    bytes: Vec<u8>,
    /// Strings whose tokens count even when they are escaped in the bytes.
    decoded: Vec<String>,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Array,
    /// One JSON object: a SARIF log, a GitLab report, a chat export.
    Document,
    Lines,
    Text,
    Broken,
}

/// Every string in a value, keys included.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(m) => m.iter().for_each(|(k, x)| {
            out.push(k.clone());
            strings(x, out)
        }),
        _ => {}
    }
}

/// JSON text with, now and then, a token's `c` written as `\u0063`: the token is then
/// only in the decoded string, not in the bytes.
fn to_json(v: &Value, escape: bool, pretty: bool) -> String {
    let text = if pretty {
        serde_json::to_string_pretty(v).unwrap()
    } else {
        serde_json::to_string(v).unwrap()
    };
    if escape {
        text.replacen("cio_tp_", "\\u0063io_tp_", 1)
    } else {
        text
    }
}

fn doc() -> impl Strategy<Value = Doc> {
    let array = (
        prop::collection::vec(json_value(), 0..8),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(items, escape, pretty)| {
            let v = Value::Array(items);
            let mut decoded = Vec::new();
            strings(&v, &mut decoded);
            Doc {
                bytes: to_json(&v, escape, pretty).into_bytes(),
                decoded,
                kind: Kind::Array,
            }
        });
    let line = prop_oneof![
        3 => (prop::collection::btree_map(key(), json_value(), 0..5), any::<bool>())
            .prop_map(|(m, escape)| (Value::Object(m.into_iter().collect()), escape)),
        1 => planted().prop_map(|s| (Value::String(s), false)),
        // Not JSON: a log line (`Null` marks it; its text is the planted string).
        1 => planted().prop_map(|s| (Value::Array(vec![Value::Null, Value::String(s)]), false)),
    ];
    let lines = prop::collection::vec(line, 0..8).prop_map(|lines| {
        let mut bytes = Vec::new();
        let mut decoded = Vec::new();
        for (value, escape) in lines {
            match &value {
                Value::Array(log) if log.first() == Some(&Value::Null) => {
                    bytes.extend_from_slice(b"log: ");
                    bytes.extend_from_slice(log[1].as_str().unwrap().as_bytes());
                }
                _ => {
                    if value.is_object() {
                        strings(&value, &mut decoded);
                    }
                    bytes.extend_from_slice(to_json(&value, escape, false).as_bytes());
                }
            }
            bytes.push(b'\n');
        }
        Doc {
            bytes,
            decoded,
            kind: Kind::Lines,
        }
    });
    let document = (
        prop::collection::btree_map(
            prop_oneof![
                1 => Just("runs".to_owned()),
                1 => Just("vulnerabilities".to_owned()),
                1 => Just("$schema".to_owned()),
                3 => key(),
            ],
            prop_oneof![
                1 => prop::collection::vec(
                    prop::collection::btree_map(
                        prop_oneof![Just("results".to_owned()), key()],
                        json_value(),
                        0..4,
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                    0..4,
                )
                .prop_map(Value::Array),
                2 => json_value(),
            ],
            0..6,
        ),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(m, escape, pretty)| {
            let v = Value::Object(m.into_iter().collect());
            let mut decoded = Vec::new();
            strings(&v, &mut decoded);
            Doc {
                bytes: to_json(&v, escape, pretty).into_bytes(),
                decoded,
                kind: Kind::Document,
            }
        });
    let text = prop::collection::vec(planted(), 0..10).prop_map(|parts| Doc {
        bytes: parts.join("\n").into_bytes(),
        decoded: Vec::new(),
        kind: Kind::Text,
    });
    let broken = (
        prop::collection::vec(json_value(), 1..6),
        any::<prop::sample::Index>(),
        prop_oneof![
            Just(None),
            Just(Some(b'x')),
            Just(Some(b'{')),
            Just(Some(b'"'))
        ],
    )
        .prop_map(|(items, at, junk)| {
            let mut bytes = to_json(&Value::Array(items), false, true).into_bytes();
            let at = at.index(bytes.len() + 1);
            match junk {
                None => bytes.truncate(at),
                Some(b) => bytes.insert(at, b),
            }
            Doc {
                bytes,
                decoded: Vec::new(),
                kind: Kind::Broken,
            }
        });
    prop_oneof![array, document, lines, text, broken]
}

/// Every token of `formats` at any position of `hay`, the plainest scan there is,
/// written here and not taken from the readers: where strings of several formats start,
/// the longest that is a valid token; failing that, the longest of a format's shape,
/// unless an escape (`%`, `\\`) follows within the longest token's length. Which shape
/// is longest there depends on the view: a reader that reads JSON as text undoes the
/// JSON escape of a prefix and the percent-encoding after it in one pass, where the
/// JSON string already decoded holds the percent-encoding as is (`\u0063io_tp_` + 33
/// letters + `%63…`: a trusted-publishing shape of 32 in the string, a `cio_tp` shape of
/// 36 in the text). A shape fails its check: it is never a live token, and a valid token
/// wins over any shape in every view.
fn every_token(hay: &[u8], formats: Formats) -> Vec<String> {
    (0..hay.len())
        .filter_map(|at| {
            let near = &hay[at..(at + crate::domain::format::MAX_LEN).min(hay.len())];
            let stable = !near.iter().any(|&b| b == b'%' || b == b'\\');
            let mut valid: Option<&[u8]> = None;
            let mut shaped: Option<&[u8]> = None;
            for f in formats.iter() {
                let Some(run) = hay.get(at..at + f.token_len()) else {
                    continue;
                };
                if !run.starts_with(f.prefix.as_bytes())
                    || !run[f.prefix.len()..].iter().all(u8::is_ascii_alphanumeric)
                {
                    continue;
                }
                let best = if f.matches(std::str::from_utf8(run).unwrap()) {
                    &mut valid
                } else {
                    &mut shaped
                };
                if best.is_none_or(|b| b.len() < run.len()) {
                    *best = Some(run);
                }
            }
            valid.or(shaped.filter(|_| stable))
        })
        .map(|run| String::from_utf8(run.to_vec()).unwrap())
        .collect()
}

/// What the reader must find: every token in the bytes, plus every one in the decoded
/// strings when `decoding`.
fn expected(doc: &Doc, decoding: bool, formats: Formats) -> BTreeSet<String> {
    let mut set: BTreeSet<String> = every_token(&doc.bytes, formats).into_iter().collect();
    if decoding {
        for s in &doc.decoded {
            set.extend(every_token(s.as_bytes(), formats));
        }
    }
    let whole_in = |encoded: &str| {
        let bytes = encoded.as_bytes();
        doc.bytes.windows(bytes.len()).any(|w| w == bytes)
            || (decoding && doc.decoded.iter().any(|s| s.contains(encoded)))
    };
    HIDDEN.with(|h| {
        for (encoded, token) in h.borrow().iter() {
            if formats.recognise(token).is_some() && whole_in(encoded) {
                set.insert(token.clone());
            }
        }
    });
    set
}

fn found(doc: &Doc, format: Format, formats: Formats) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    read_report(&doc.bytes[..], format, formats, "doc", &mut |f| {
        set.insert(f.token);
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{format}: {e}"));
    set
}

/// Whether every token of the document's decoded strings must be found: always where
/// they are tracked (every reader decodes JSON strings, or finds a token written with
/// `\u00XX` escapes when it reads JSON as text).
fn decodes(_format: Format, kind: Kind) -> bool {
    matches!(kind, Kind::Array | Kind::Document | Kind::Lines)
}

/// Every reader, with `formats` enabled, finds every token `doc` holds.
fn every_reader_finds_every_token(doc: &Doc, formats: Formats) -> Result<(), TestCaseError> {
    let detected = detect(&doc.bytes);
    for &format in std::iter::once(&detected).chain(Format::ALL) {
        let want = expected(doc, decodes(format, doc.kind), formats);
        let got = found(doc, format, formats);
        let missed: Vec<_> = want.difference(&got).collect();
        prop_assert!(
            missed.is_empty(),
            "{format} (detected {detected}, formats {formats}) missed {missed:?} in {:?}",
            String::from_utf8_lossy(&doc.bytes)
        );
    }
    HIDDEN.with(|h| h.borrow_mut().clear());
    Ok(())
}

proptest! {
    // 200 cases for each set of formats, each read by every reader: two tests, so the
    // test harness runs them on two threads (one took 116 s of a debug build's suite).
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn every_token_in_a_report_is_an_occurrence(doc in doc()) {
        every_reader_finds_every_token(&doc, Formats::DEFAULT)?;
    }

    #[test]
    fn every_token_of_every_format_in_a_report_is_an_occurrence(doc in doc()) {
        every_reader_finds_every_token(&doc, Formats::ALL)?;
    }
}
