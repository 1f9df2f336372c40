//! A scanner's alert, from verified body bytes to feedback.
//!
//! Data flows one way: [`parse`] (JSON array of items) → [`classify`] (check digits,
//! hashes; non-candidates never reach the database) → one store call → [`feedback_json`]
//! (one entry per input item, input order, never the raw token).
//!
//! Error messages never quote the body: a JSON error names only its kind and position,
//! because the offending text may be a token.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::outcome::{Label, Outcome};
use super::redact::redact_tokens;
use super::token::{self, TokenHash};

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
}

/// One candidate item of a delivery (a well-formed `cio_tp_` token).
#[derive(Debug, Clone)]
pub struct CandidateItem {
    /// Index of the item in the delivery, so rows can be matched to the input.
    pub position: u32,
    pub hash: TokenHash,
    pub token_type: String,
    pub source: String,
    pub url: String,
}

/// An accepted delivery that has at least one candidate, ready to be recorded.
#[derive(Debug, Clone)]
pub struct NewReport {
    pub scanner: String,
    pub key_id: String,
    pub received_at: DateTime<Utc>,
    pub body_sha256: [u8; 32],
    /// Number of items in the delivery, candidates or not.
    pub item_count: u32,
    /// Number of items that were not candidates (answered without the database).
    pub not_ours: u32,
    pub candidates: Vec<CandidateItem>,
}

/// Why a body is not a JSON array of alert objects. Never contains body text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("body is not a JSON array of alert objects with a string `token` ({kind} at line {line}, column {column})")]
pub struct ParseError {
    pub kind: &'static str,
    pub line: usize,
    pub column: usize,
}

/// Parses the verified body. Borrows strings from it where possible.
pub fn parse(body: &[u8]) -> Result<Vec<AlertItem<'_>>, ParseError> {
    serde_json::from_slice(body).map_err(|e| ParseError {
        kind: match e.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "wrong shape",
            serde_json::error::Category::Eof => "unexpected end",
        },
        line: e.line(),
        column: e.column(),
    })
}

/// The result of classifying every item of a delivery.
#[derive(Debug)]
pub struct Classified {
    /// SHA-256 of every item's token, input order (the feedback needs them all).
    pub hashes: Vec<TokenHash>,
    /// For each item: `None` if it is not ours (decided offline), else its index in
    /// `candidates`.
    pub candidate_index: Vec<Option<usize>>,
    pub candidates: Vec<CandidateItem>,
    pub not_ours: u32,
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

/// Decides offline which items are candidates: prefix, length, alphabet, check digits.
pub fn classify(items: &[AlertItem<'_>]) -> Classified {
    let mut hashes = Vec::with_capacity(items.len());
    let mut candidate_index = Vec::with_capacity(items.len());
    let mut candidates = Vec::new();
    let mut not_ours = 0;
    for (position, item) in items.iter().enumerate() {
        let hash = TokenHash::of(&item.token);
        hashes.push(hash);
        if token::validate(&item.token).is_ok() {
            candidate_index.push(Some(candidates.len()));
            candidates.push(CandidateItem {
                position: position as u32,
                hash,
                token_type: storable(item.token_type.as_deref()),
                source: storable(item.source.as_deref()),
                url: storable(item.url.as_deref()),
            });
        } else {
            candidate_index.push(None);
            not_ours += 1;
        }
    }
    Classified {
        hashes,
        candidate_index,
        candidates,
        not_ours,
    }
}

impl Classified {
    /// The report to record, or `None` when no item is a candidate (then nothing is
    /// written: a flood of junk costs no database statement).
    pub fn into_report(
        &self,
        scanner: &str,
        key_id: &str,
        received_at: DateTime<Utc>,
        body_sha256: impl FnOnce() -> [u8; 32],
    ) -> Option<NewReport> {
        if self.candidates.is_empty() {
            return None;
        }
        Some(NewReport {
            scanner: scanner.to_owned(),
            key_id: key_id.to_owned(),
            received_at,
            body_sha256: body_sha256(),
            item_count: self.hashes.len() as u32,
            not_ours: self.not_ours,
            candidates: self.candidates.clone(),
        })
    }

    /// The outcome of every item, input order, given the candidates' outcomes.
    pub fn outcomes(&self, candidate_outcomes: &[Outcome]) -> Vec<Outcome> {
        self.candidate_index
            .iter()
            .map(|i| match i {
                Some(i) => candidate_outcomes[*i],
                None => Outcome::NotOurs,
            })
            .collect()
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

/// The 200 response body: one feedback entry per item, input order, serialised
/// straight from the parsed request (a 100,000-item flood allocates no entry).
pub fn feedback_json(
    items: &[AlertItem<'_>],
    hashes: &[TokenHash],
    outcomes: &[Outcome],
) -> Vec<u8> {
    struct Entries<'a, 'b>(&'a [AlertItem<'b>], &'a [TokenHash], &'a [Outcome]);
    impl Serialize for Entries<'_, '_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(
                self.0
                    .iter()
                    .zip(self.1)
                    .zip(self.2)
                    .map(|((item, hash), outcome)| FeedbackRef {
                        token_hash: Hex(hash),
                        token_type: item.token_type.as_deref().unwrap_or_default(),
                        label: (*outcome).into(),
                    }),
            )
        }
    }
    let mut out = Vec::with_capacity(items.len() * 120 + 2);
    serde_json::to_writer(&mut out, &Entries(items, hashes, outcomes))
        .expect("serialising to memory cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::token::Token;

    #[test]
    fn parses_github_shape_and_ignores_extra_fields() {
        let body =
            br#"[{"token":"a","type":"cio_tp","url":"https://x","source":"content","extra":1},
                        {"token":"b","url":null}]"#;
        let items = parse(body).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].token, "a");
        assert_eq!(items[0].token_type.as_deref(), Some("cio_tp"));
        assert_eq!(items[1].url, None);
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
            let err = parse(body.as_bytes()).unwrap_err().to_string();
            assert!(!err.contains(t.expose_secret()), "{err}");
            assert!(!err.contains(&t.expose_secret()[7..20]), "{err}");
        }
    }

    #[test]
    fn rejects_items_without_string_token() {
        assert!(parse(br#"[{"type":"x"}]"#).is_err());
        assert!(parse(br#"[{"token":5}]"#).is_err());
        assert!(parse(br#"[1]"#).is_err());
        assert!(parse(br#"{}"#).is_err());
        assert!(parse(b"").is_err());
        assert_eq!(parse(b"[]").unwrap().len(), 0);
    }

    #[test]
    fn classifies_offline_and_keeps_order() {
        let good = Token::generate();
        let body = format!(
            r#"[{{"token":"junk"}},{{"token":"{}","type":"t"}},{{"token":"cio_tp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa000000"}}]"#,
            good.expose_secret()
        );
        let items = parse(body.as_bytes()).unwrap();
        let c = classify(&items);
        assert_eq!(c.not_ours, 2);
        assert_eq!(c.candidates.len(), 1);
        assert_eq!(c.candidates[0].position, 1);
        assert_eq!(c.candidates[0].hash, good.hash());
        let outcomes = c.outcomes(&[Outcome::Revoked]);
        assert_eq!(
            outcomes,
            vec![Outcome::NotOurs, Outcome::Revoked, Outcome::NotOurs]
        );
        let fb: Vec<Feedback> =
            serde_json::from_slice(&feedback_json(&items, &c.hashes, &outcomes)).unwrap();
        assert_eq!(fb.len(), 3);
        assert_eq!(fb[1].label, Label::TruePositive);
        assert_eq!(fb[1].token_type, "t");
        assert_eq!(fb[0].label, Label::FalsePositive);
        assert_eq!(fb[0].token_hash, TokenHash::of("junk").to_hex());
    }

    #[test]
    fn no_candidates_means_no_report() {
        let items = parse(br#"[{"token":"junk"}]"#).unwrap();
        let c = classify(&items);
        assert!(c
            .into_report("github", "k", Utc::now(), || [0; 32])
            .is_none());
    }
}
