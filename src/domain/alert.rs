//! A scanner's alert, from verified body bytes to feedback.
//!
//! Data flows one way, in two passes over the verified body that never build the items,
//! so a delivery's memory is reserved before any of it is allocated: [`measure`] (the
//! shape checked, the memory counted) → [`compact`] (`alert/compact.rs`: hashes, check
//! digits; non-candidates never reach the database) → one store call
//! ([`Compact::take_report`], [`Compact::set_outcomes`]) → [`FeedbackChunks`] (one
//! entry per input item, input order, never the raw token).
//! This is the one parser: the webhook, the Token Revocation API and replay (which
//! writes each batch as an alert array) all go through it. `oracle` (`alert/oracle.rs`,
//! hidden from the docs) reads the same shape the simple way, every item at once, for
//! tests and benches only: the check that the two agree lives there.
//!
//! Error messages never quote the body: a JSON error names only its kind and position,
//! because the offending text may be a token.
//!
//! A token of ours anywhere else in an item (its `url`, `source`, `type`, GitLab's
//! `location`, or inside a `token` that is not one token as a whole), plain or under
//! percent-encoding and JSON escapes ([`scan::all`]), has leaked all the same: it
//! becomes a candidate of its own, after the items the scanner sent (position
//! `item count + k`), with [`CandidateItem::found_in`] saying where (`items[3].url`),
//! once per delivery. The answer keeps one entry per item sent; the report counts the
//! found ones as items too.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::format::Formats;
use super::outcome::Label;
use super::redact::redact_tokens;
use super::scan;
use super::token::TokenHash;

mod compact;
#[doc(hidden)]
pub mod oracle;
pub use compact::{
    compact, compact_bytes, measure, Compact, FeedbackChunks, ItemRef, Sizes, FOUND_INSIDE_TEXT,
};

/// One item of a delivery. Unknown fields are ignored; `type`, `url` and `source` are
/// open strings and may be missing or null.
#[derive(Debug, Deserialize)]
pub struct AlertItem<'a> {
    #[serde(borrow)]
    pub token: Cow<'a, str>,
    #[serde(rename = "type", default, borrow)]
    pub token_type: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub url: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub source: Option<Cow<'a, str>>,
    /// GitLab's Token Revocation API names the place `location`: stored as the `url`
    /// when there is none.
    #[serde(default, borrow)]
    pub location: Option<Cow<'a, str>>,
}

impl AlertItem<'_> {
    /// Where the leak is: `url`, else `location`.
    fn place(&self) -> Option<&str> {
        self.url.as_deref().or(self.location.as_deref())
    }

    /// Every valid token of an enabled format inside this item's strings other than its
    /// own whole `token` (`own_is_candidate`: the `token` is one, so there is nothing
    /// else in it), with the field it was found in and its key (the hash it is stored
    /// by).
    fn tokens_inside(
        &self,
        own_is_candidate: bool,
        formats: Formats,
        mut f: impl FnMut(&'static str, TokenHash),
    ) {
        let fields = [
            ("token", (!own_is_candidate).then_some(&*self.token)),
            ("type", self.token_type.as_deref()),
            ("url", self.url.as_deref()),
            ("source", self.source.as_deref()),
            ("location", self.location.as_deref()),
        ];
        for (name, text) in fields {
            let Some(text) = text else { continue };
            if !scan::may_hold_token(text.as_bytes(), formats) {
                continue; // most urls, sources and types: nothing to decode
            }
            for (_, found) in scan::all(text.as_bytes(), formats) {
                // A `token` that is token-shaped as a whole was checked already.
                let whole_token = name == "token" && found == text;
                if whole_token {
                    continue;
                }
                if let Some(format) = formats.recognise(&found) {
                    f(name, format.key(&found));
                }
            }
        }
    }
}

/// One candidate item of a delivery (a token of an enabled format).
#[derive(Debug, Clone)]
pub struct CandidateItem {
    /// Index of the item in the delivery, so rows can be matched to the input.
    pub position: u32,
    /// The token's key: the hash its format stores ([`crate::domain::Format::key`]; the
    /// SHA-256 of the whole token but for formats that hash part of it). Not always the
    /// feedback's `token_hash`, which is the whole string's.
    pub hash: TokenHash,
    pub token_type: String,
    pub source: String,
    pub url: String,
    /// `None` for an item's own `token`; for a token found elsewhere in the delivery,
    /// where (`items[3].url`): its position is then past the items the scanner sent.
    pub found_in: Option<String>,
}

/// An accepted delivery that has at least one candidate, ready to be recorded.
#[derive(Debug, Clone)]
pub struct NewReport {
    pub scanner: String,
    pub key_id: String,
    pub received_at: DateTime<Utc>,
    pub body_sha256: [u8; 32],
    /// Number of items: those the scanner sent, candidates or not, and the tokens found
    /// inside them (see the module docs).
    pub item_count: u32,
    /// Number of items that were not candidates (answered without the database).
    pub not_ours: u32,
    pub candidates: Vec<CandidateItem>,
}

/// The scanner name of reports made by hand (`revoker token revoke`).
pub const MANUAL_SCANNER: &str = "manual";

/// The scanner name of reports made by a token's holder (`DELETE /v1/tokens/current`,
/// `POST /oauth/revoke`).
pub const HOLDER_SCANNER: &str = "holder";

impl NewReport {
    /// A report of one token revoked by hand by `actor` (`revoker token revoke`): scanner
    /// [`MANUAL_SCANNER`], the actor as its key id, type the token's format, source
    /// `manual`, no url. Its body hash digests the token's hash, the actor and the time,
    /// so it is a report of its own.
    pub fn manual(hash: TokenHash, format: &str, actor: &str, at: DateTime<Utc>) -> NewReport {
        Self::one(
            MANUAL_SCANNER,
            b"revoker token revoke\0",
            hash,
            format,
            actor,
            at,
        )
    }

    /// A report of one token revoked by its holder through `endpoint`
    /// (`DELETE /v1/tokens/current`): scanner and source [`HOLDER_SCANNER`], the endpoint
    /// as its key id, type the token's format, no url; a report of its own, as
    /// [`manual`](Self::manual)'s.
    pub fn holder(hash: TokenHash, format: &str, endpoint: &str, at: DateTime<Utc>) -> NewReport {
        Self::one(
            HOLDER_SCANNER,
            b"revoker holder\0",
            hash,
            format,
            endpoint,
            at,
        )
    }

    fn one(
        scanner: &str,
        tag: &[u8],
        hash: TokenHash,
        format: &str,
        key_id: &str,
        at: DateTime<Utc>,
    ) -> NewReport {
        use sha2::{Digest, Sha256};
        let mut digest = Sha256::new();
        digest.update(tag);
        digest.update(hash.as_bytes());
        digest.update(key_id.as_bytes());
        digest.update(at.to_rfc3339().as_bytes());
        NewReport {
            scanner: scanner.to_owned(),
            key_id: key_id.to_owned(),
            received_at: at,
            body_sha256: digest.finalize().into(),
            item_count: 1,
            not_ours: 0,
            candidates: vec![CandidateItem {
                position: 0,
                hash,
                token_type: format.to_owned(),
                source: scanner.to_owned(),
                url: String::new(),
                found_in: None,
            }],
        }
    }
}

/// Why a body is not a JSON array of alert objects. Never contains body text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("body is not a JSON array of alert objects with a string `token` ({kind} at line {line}, column {column})")]
pub struct ParseError {
    pub kind: &'static str,
    pub line: usize,
    pub column: usize,
}

/// An open string from the body (url, source, type), made storable everywhere: any
/// `cio_tp_…` in it is redacted (a leak's URL or a sloppy scanner can carry the token
/// itself, and no raw token may reach the database), and NUL becomes U+FFFD
/// (PostgreSQL `text` cannot hold `\0`, and a delivery must never fail on it).
fn storable(s: Option<&str>) -> String {
    let s = redact_tokens(s.unwrap_or_default());
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.into_owned()
    }
}

/// An item's own token as a candidate, its strings made storable.
fn candidate(item: &AlertItem<'_>, position: usize, hash: TokenHash) -> CandidateItem {
    CandidateItem {
        position: position as u32,
        hash,
        token_type: storable(item.token_type.as_deref()),
        source: storable(item.source.as_deref()),
        url: storable(item.place()),
        found_in: None,
    }
}

/// Tokens found inside items ([`AlertItem::tokens_inside`]), kept until every item's
/// own token is known: then each becomes a candidate once, unless the delivery sends it
/// as an item's token anyway.
#[derive(Default)]
struct Inside(Vec<CandidateItem>);

/// Bytes of each of `type`, `url` and `source` a token found inside an item keeps (cut at
/// a character boundary after redaction): one item can hold a token every 43 bytes, and
/// each copying the item's whole strings would cost the square of their size.
pub const FOUND_TEXT_MAX: usize = 128;

/// `s` cut to at most `max` bytes at a character boundary, in a string of its own size.
fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl Inside {
    fn collect(
        &mut self,
        item: &AlertItem<'_>,
        position: usize,
        own_is_candidate: bool,
        formats: Formats,
    ) {
        // The item's strings made storable once, then cut, for every token found in it.
        let mut base: Option<CandidateItem> = None;
        item.tokens_inside(own_is_candidate, formats, |field, key| {
            let base = base.get_or_insert_with(|| {
                let whole = candidate(item, position, TokenHash::of(""));
                CandidateItem {
                    token_type: cut(&whole.token_type, FOUND_TEXT_MAX),
                    source: cut(&whole.source, FOUND_TEXT_MAX),
                    url: cut(&whole.url, FOUND_TEXT_MAX),
                    ..whole
                }
            });
            let mut c = base.clone();
            c.hash = key;
            c.found_in = Some(format!("items[{position}].{field}"));
            self.0.push(c);
        });
    }

    /// The found candidates not already among `candidates`, numbered from `items` on,
    /// appended to them; how many.
    fn append_to(self, candidates: &mut Vec<CandidateItem>, items: usize) -> u32 {
        if self.0.is_empty() {
            return 0;
        }
        let mut seen: std::collections::HashSet<TokenHash> =
            candidates.iter().map(|c| c.hash).collect();
        let mut appended = 0;
        for mut c in self.0 {
            if seen.insert(c.hash) {
                c.position = items as u32 + appended;
                candidates.push(c);
                appended += 1;
            }
        }
        appended
    }
}

/// One entry of the 200 response body, as a client reads it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Feedback {
    pub token_hash: String,
    pub token_type: String,
    pub label: Label,
}

/// A hash serialised as 64 lower-case hex characters, formatted on the stack.
struct Hex<'a>(&'a TokenHash);

impl Serialize for Hex<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 64];
        hex::encode_to_slice(self.0.as_bytes(), &mut buf).expect("64 bytes fit 32 in hex");
        s.serialize_str(std::str::from_utf8(&buf).expect("hex is ASCII"))
    }
}

/// A feedback entry borrowing from the request: no allocation per item.
#[derive(Serialize)]
struct FeedbackRef<'a> {
    token_hash: Hex<'a>,
    token_type: &'a str,
    label: Label,
}

/// Calls `f` on every item of a JSON array of alert objects, one at a time (no `Vec` of
/// items is built). Errors name only their kind and position ([`ParseError`]).
fn each_item<'b>(body: &'b [u8], f: impl FnMut(AlertItem<'b>)) -> Result<(), ParseError> {
    struct Each<F>(F);
    impl<'de, F: FnMut(AlertItem<'de>)> serde::de::Visitor<'de> for Each<F> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array of alert objects")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
            while let Some(item) = seq.next_element::<AlertItem<'de>>()? {
                (self.0)(item);
            }
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    serde::Deserializer::deserialize_seq(&mut de, Each(f))
        .and_then(|()| de.end())
        .map_err(parse_error)
}

/// The `type` of the first item for which `refused` holds (`None` inside: the item has
/// no `type`), read one item at a time without building them; `None` when every item
/// passes. Errors as [`measure`]'s.
#[allow(clippy::type_complexity)]
pub fn first_type_where(
    body: &[u8],
    refused: impl Fn(Option<&str>) -> bool,
) -> Result<Option<Option<String>>, ParseError> {
    let mut first = None;
    each_item(body, |item| {
        if first.is_none() && refused(item.token_type.as_deref()) {
            first = Some(item.token_type.as_deref().map(str::to_owned));
        }
    })?;
    Ok(first)
}

fn parse_error(e: serde_json::Error) -> ParseError {
    ParseError {
        kind: match e.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "wrong shape",
            serde_json::error::Category::Eof => "unexpected end",
        },
        line: e.line(),
        column: e.column(),
    }
}

#[cfg(test)]
mod tests {
    use super::oracle::{classify, feedback_json, parse};
    use super::*;
    use crate::domain::outcome::Outcome;
    use crate::domain::token::Token;

    /// Both passes of the one parser over `body`.
    fn deliver(body: &[u8], formats: Formats) -> Result<Compact, ParseError> {
        let sizes = measure(body, formats)?;
        let delivery = compact(bytes::Bytes::copy_from_slice(body), &sizes, formats)?;
        assert_eq!(sizes.items, delivery.len());
        Ok(delivery)
    }

    /// The whole answer of a delivery whose outcomes are set.
    fn answer(delivery: Compact) -> Vec<Feedback> {
        let mut chunks = delivery.feedback(1 << 16);
        let mut bytes = Vec::new();
        while let Some(piece) = chunks.next_chunk() {
            bytes.extend(piece);
        }
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn parses_github_shape_and_ignores_extra_fields() {
        let body =
            br#"[{"token":"a","type":"cio_tp","url":"https://x","source":"content","extra":1},
                        {"token":"b","url":null}]"#;
        let delivery = deliver(body, Formats::DEFAULT).unwrap();
        assert_eq!(delivery.len(), 2);
        let hashes: Vec<_> = delivery.keys().collect();
        assert_eq!(
            hashes,
            [(TokenHash::of("a"), None), (TokenHash::of("b"), None)]
        );
        let types: Vec<String> = answer(delivery).into_iter().map(|f| f.token_type).collect();
        assert_eq!(types, ["cio_tp", ""]);
    }

    #[test]
    fn a_token_in_a_type_is_not_echoed_in_the_answer() {
        let t = Token::generate();
        let body = format!(
            r#"[{{"token": "x", "type": "ours: {}"}}]"#,
            t.expose_secret()
        );
        let delivery = deliver(body.as_bytes(), Formats::DEFAULT).unwrap();
        let types: Vec<String> = answer(delivery).into_iter().map(|f| f.token_type).collect();
        assert_eq!(types, ["ours: cio_tp_[redacted]"]);
    }

    #[test]
    fn parse_errors_never_quote_the_body() {
        let t = Token::generate();
        for body in [
            format!(r#"["{}"]"#, t.expose_secret()),
            format!(r#"[{{"token": 1, "type": "{}"}}]"#, t.expose_secret()),
            format!(r#"{{"token": "{}"}}"#, t.expose_secret()),
            format!(r#"[{{"token": "{}""#, t.expose_secret()),
        ] {
            let sizes = measure(body.as_bytes(), Formats::DEFAULT);
            let compacted = compact(body.clone().into(), &Sizes::default(), Formats::DEFAULT);
            for err in [sizes.unwrap_err(), compacted.unwrap_err()] {
                let err = err.to_string();
                assert!(!err.contains(t.expose_secret()), "{err}");
                assert!(!err.contains(&t.expose_secret()[7..20]), "{err}");
            }
        }
    }

    #[test]
    fn rejects_items_without_string_token() {
        for body in [
            &br#"[{"type":"x"}]"#[..],
            br#"[{"token":5}]"#,
            b"[1]",
            b"{}",
            b"",
        ] {
            assert!(measure(body, Formats::DEFAULT).is_err());
            assert!(parse(body).is_err(), "the oracle agrees");
        }
        assert_eq!(deliver(b"[]", Formats::DEFAULT).unwrap().len(), 0);
    }

    #[test]
    fn classifies_offline_and_keeps_order() {
        let good = Token::generate();
        let body = format!(
            r#"[{{"token":"junk"}},{{"token":"{}","type":"t"}},{{"token":"cio_tp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa000000"}}]"#,
            good.expose_secret()
        );
        let mut c = deliver(body.as_bytes(), Formats::DEFAULT).unwrap();
        assert_eq!(c.not_ours, 2);
        assert_eq!(c.candidates.len(), 1);
        assert_eq!(c.candidates[0].position, 1);
        assert_eq!(c.candidates[0].hash, good.hash());
        let keys: Vec<Option<TokenHash>> = c.keys().map(|(_, key)| key).collect();
        assert_eq!(keys, [None, Some(good.hash()), None]);
        c.set_outcomes(&[Outcome::Revoked]);
        let outcomes: Vec<Outcome> = c.outcomes().collect();
        assert_eq!(
            outcomes,
            vec![Outcome::NotOurs, Outcome::Revoked, Outcome::NotOurs]
        );
        let fb = answer(c);
        assert_eq!(fb.len(), 3);
        assert_eq!(fb[1].label, Label::TruePositive);
        assert_eq!(fb[1].token_type, "t");
        assert_eq!(fb[0].label, Label::FalsePositive);
        assert_eq!(fb[0].token_hash, TokenHash::of("junk").to_hex());
    }

    /// What a candidate stores of the open strings: as sent, but with any token
    /// redacted and NUL replaced. Checked against `storable` returning an empty or a
    /// fixed string (cargo mutants).
    #[test]
    fn candidates_keep_their_strings_storable() {
        let good = Token::generate();
        let other = Token::generate();
        let body = serde_json::json!([{
            "token": good.expose_secret(),
            "type": "cio_tp",
            "url": format!("https://x.test/blob/a.env?t={}", other.expose_secret()),
            "source": "con\u{0}tent",
        }])
        .to_string();
        let c = deliver(body.as_bytes(), Formats::DEFAULT).unwrap();
        let item = &c.candidates[0];
        assert_eq!(item.token_type, "cio_tp");
        assert_eq!(item.url, "https://x.test/blob/a.env?t=cio_tp_[redacted]");
        assert_eq!(item.source, "con\u{FFFD}tent");
    }

    #[test]
    fn compact_answers_exactly_like_the_whole_feedback_in_any_chunk_size() {
        let good = Token::generate();
        let body = format!(
            r#"[{{"token":"junk","type":"a\u0041"}},{{"token":"{}","type":"t","url":"u"}},{{"token":""}},{{"token":"x","type":null}}]"#,
            good.expose_secret()
        );
        let items = parse(body.as_bytes()).unwrap();
        let classified = classify(&items, Formats::DEFAULT);
        let outcomes = classified.outcomes(&[Outcome::Revoked]);
        let whole = feedback_json(&items, &classified.hashes, &outcomes);

        let sizes = measure(body.as_bytes(), Formats::DEFAULT).unwrap();
        assert_eq!((sizes.items, sizes.candidates), (4, 1));
        assert!(compact_bytes(&sizes) >= 4 * std::mem::size_of::<ItemRef>());
        for chunk in [1, 50, 1 << 16] {
            let mut delivery =
                compact(bytes::Bytes::from(body.clone()), &sizes, Formats::DEFAULT).unwrap();
            assert_eq!(delivery.not_ours, 3);
            let report = delivery
                .take_report("github", "k", Utc::now(), |_| [0; 32])
                .unwrap();
            assert_eq!(report.candidates[0].position, 1);
            assert_eq!(report.item_count, 4);
            delivery.set_outcomes(&[Outcome::Revoked]);
            let mut chunks = delivery.feedback(chunk);
            let mut streamed = Vec::new();
            while let Some(piece) = chunks.next_chunk() {
                streamed.extend(piece);
            }
            assert_eq!(
                String::from_utf8(streamed).unwrap(),
                String::from_utf8(whole.clone()).unwrap()
            );
        }
        assert_eq!(std::mem::size_of::<ItemRef>(), 44);
        assert_eq!(
            compact(
                bytes::Bytes::from_static(b"[]"),
                &Sizes::default(),
                Formats::DEFAULT
            )
            .unwrap()
            .feedback(10)
            .next_chunk()
            .unwrap(),
            b"[]"
        );
    }

    /// Every item's `type` comes back in the answer as sent, escaped or not, and
    /// `measure` counts the copies exactly. Checked against the text count summed
    /// wrongly (cargo mutants: `+` as `-` or `*` in `measure`).
    #[test]
    fn types_come_back_as_sent_and_text_is_counted_exactly() {
        let good = Token::generate();
        let body = format!(
            r#"[{{"token":"junk","type":"plain-type"}},{{"token":"x","type":"esc\u0061ped"}},{{"token":"{}","type":"t2","url":"uu","source":"sss"}}]"#,
            good.expose_secret()
        );
        let sizes = measure(body.as_bytes(), Formats::DEFAULT).unwrap();
        // Every `type` is copied (serde never borrows into an `Option<Cow<str>>`), then
        // the candidate's stored type, url and source.
        let bound = |n: usize| n * 3 + 16;
        assert_eq!(
            sizes.text_bytes,
            bound(10) + bound(7) + bound(2) + (bound(2) + bound(2) + bound(3))
        );
        let mut delivery = compact(bytes::Bytes::from(body), &sizes, Formats::DEFAULT).unwrap();
        assert_eq!((delivery.len(), delivery.is_empty()), (3, false));
        delivery.set_outcomes(&[Outcome::Revoked]);
        let mut chunks = delivery.feedback(1 << 16);
        let answer: Vec<Feedback> = serde_json::from_slice(&chunks.next_chunk().unwrap()).unwrap();
        let types: Vec<&str> = answer.iter().map(|f| f.token_type.as_str()).collect();
        assert_eq!(types, ["plain-type", "escaped", "t2"]);
    }

    /// A token of ours anywhere in an item, encoded or not, is a candidate of its own
    /// after the items sent (once per delivery), and no stored string keeps it.
    #[test]
    fn tokens_found_inside_items_are_candidates_after_the_items() {
        let [a, b, c, d] = [(); 4].map(|()| Token::generate());
        let secret = |t: &Token| t.expose_secret()[7..].to_owned();
        let body = serde_json::json!([
            {"token": a.expose_secret(), "type": "t", "source": "content",
             "url": format!("https://x/?q=cio%5Ftp%5F{}", secret(&b))},
            {"token": format!("junk %63io_tp_{}", secret(&c)),
             "location": format!("\\u0063io_tp_{}", secret(&d))},
            {"token": b.expose_secret(), "url": format!("see {}", d.expose_secret())},
        ])
        .to_string();
        let sizes = measure(body.as_bytes(), Formats::DEFAULT).unwrap();
        assert!(sizes.candidates >= 4, "{sizes:?}");
        let mut delivery =
            compact(bytes::Bytes::from(body.clone()), &sizes, Formats::DEFAULT).unwrap();
        let found: Vec<(u32, TokenHash, Option<String>)> = delivery
            .candidates
            .iter()
            .map(|c| (c.position, c.hash, c.found_in.clone()))
            .collect();
        assert_eq!(
            found,
            [
                (0, a.hash(), None),
                (2, b.hash(), None),
                (3, c.hash(), Some("items[1].token".to_owned())),
                (4, d.hash(), Some("items[1].location".to_owned())),
            ]
        );
        for stored in &delivery.candidates {
            for t in [&a, &b, &c, &d] {
                assert!(!stored.url.contains(&secret(t)), "{}", stored.url);
            }
        }
        assert_eq!(delivery.candidates[0].url, "https://x/?q=cio_tp_[redacted]");
        assert_eq!(delivery.candidates[3].url, "cio_tp_[redacted]");
        let report = delivery
            .take_report("github", "k", Utc::now(), |_| [0; 32])
            .unwrap();
        assert_eq!((report.item_count, report.not_ours), (5, 1));
        delivery.set_outcomes(&[Outcome::Revoked; 4]);
        let answer: Vec<Feedback> =
            serde_json::from_slice(&delivery.feedback(1 << 16).next_chunk().unwrap()).unwrap();
        let labels: Vec<Label> = answer.iter().map(|f| f.label).collect();
        assert_eq!(
            labels,
            [
                Label::TruePositive,
                Label::FalsePositive,
                Label::TruePositive
            ]
        );
        // The oracle finds the same.
        let items = parse(body.as_bytes()).unwrap();
        let classified = classify(&items, Formats::DEFAULT);
        let same: Vec<(u32, TokenHash, Option<String>)> = classified
            .candidates
            .iter()
            .map(|c| (c.position, c.hash, c.found_in.clone()))
            .collect();
        assert_eq!(same, found);
        let report = classified
            .into_report("replay", "k", Utc::now(), || [0; 32])
            .unwrap();
        assert_eq!(report.item_count, 5);
    }

    /// A field that is a token of ours as a whole is found too; a `token` that is
    /// token-shaped as a whole but not ours is not looked at twice.
    #[test]
    fn a_field_that_is_a_token_as_a_whole_is_found() {
        let t = Token::generate();
        let body = serde_json::json!([
            {"token": "cio_tp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa000000", "url": t.expose_secret()},
        ])
        .to_string();
        let c = deliver(body.as_bytes(), Formats::DEFAULT).unwrap();
        assert_eq!(c.candidates.len(), 1);
        assert_eq!(c.candidates[0].hash, t.hash());
        assert_eq!(c.candidates[0].found_in.as_deref(), Some("items[0].url"));
        assert_eq!(c.candidates[0].url, "cio_tp_[redacted]");
        assert_eq!((c.found_inside, c.keys().next().unwrap().1), (1, None));
    }

    proptest::proptest! {
        /// Deliveries: a token of any format planted in any field, in any mix of
        /// encodings within `scan::MAX_LAYERS`, among other text, is found (every format
        /// enabled); no stored string of any candidate keeps its secret part, in any
        /// encoding.
        #[test]
        fn every_planted_token_is_found_and_none_is_stored(
            (ways, outer) in crate::domain::scan::planted::encoding(),
            field in 0..5usize,
            format in 0..crate::domain::format::FORMATS.len(),
            pre in "[ a-z/?=&.:]{0,8}",
            post in "[ /?=&.:][ a-z/?=&.:]{0,7}",
        ) {
            use crate::domain::format::{generate, FORMATS};
            let token = generate(FORMATS[format]);
            let key = FORMATS[format].key(&token);
            let secret = &token[token.len() - 30..];
            let hidden = format!(
                "{pre}{}{post}",
                crate::domain::scan::planted::write(&token, &ways, outer)
            );
            let name = ["token", "type", "url", "source", "location"][field];
            let mut item = serde_json::json!({"token": "junk"});
            item[name] = serde_json::Value::String(hidden.clone());
            let body = serde_json::json!([item]).to_string();
            let sizes = measure(body.as_bytes(), Formats::ALL).unwrap();
            let delivery = compact(bytes::Bytes::from(body), &sizes, Formats::ALL).unwrap();
            proptest::prop_assert!(sizes.candidates >= delivery.candidates.len());
            let c = delivery.candidates.iter().find(|c| c.hash == key);
            proptest::prop_assert!(c.is_some(), "{hidden:?} not found");
            let c = c.unwrap();
            proptest::prop_assert_eq!(c.found_in.clone(), Some(format!("items[0].{name}")));
            for stored in [&c.url, &c.source, &c.token_type] {
                proptest::prop_assert!(!stored.contains(secret));
                proptest::prop_assert!(crate::domain::scan::all(stored.as_bytes(), Formats::ALL).is_empty(), "{stored:?}");
            }
        }
    }

    #[test]
    fn no_candidates_means_no_report() {
        let mut c = deliver(br#"[{"token":"junk"}]"#, Formats::DEFAULT).unwrap();
        assert!(c
            .take_report("github", "k", Utc::now(), |_| [0; 32])
            .is_none());
    }
}
