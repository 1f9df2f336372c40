//! The test oracle: a second, simpler reading of an alert array, kept only to check the
//! one parser production uses ([`super::measure`] → [`super::compact`] →
//! [`super::FeedbackChunks`]), which the webhook, the Token Revocation API and replay all
//! go through. Nothing outside tests and benches calls it.
//!
//! It builds every item ([`parse`]), classifies them at once ([`classify`]), and writes
//! the whole answer ([`feedback_json`]): simple enough to be obviously right, too
//! costly in memory for a delivery (nothing is counted before it is allocated). The
//! property test below holds the two paths to the same candidates, keys, counts and
//! answer bytes for arbitrary bodies.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{
    candidate, parse_error, AlertItem, CandidateItem, FeedbackRef, Hex, Inside, NewReport,
    ParseError,
};
use crate::domain::format::Formats;
use crate::domain::outcome::Outcome;
use crate::domain::token::TokenHash;

/// Parses the verified body into every item at once. Borrows strings from it where
/// possible. Errors as [`super::measure`]'s.
pub fn parse(body: &[u8]) -> Result<Vec<AlertItem<'_>>, ParseError> {
    serde_json::from_slice(body).map_err(parse_error)
}

/// The result of classifying every item of a delivery.
#[derive(Debug)]
pub struct Classified {
    /// SHA-256 of every item's token, input order (the feedback needs them all).
    pub hashes: Vec<TokenHash>,
    /// For each item: `None` if it is not ours (decided offline), else its index in
    /// `candidates`.
    pub candidate_index: Vec<Option<usize>>,
    /// The item's own tokens, then those found inside items (see the module docs).
    pub candidates: Vec<CandidateItem>,
    pub not_ours: u32,
    /// How many of `candidates` were found inside items (the last ones).
    pub found_inside: u32,
}

/// Decides offline which items are candidates (a token of an enabled format: prefix,
/// length, alphabet, check digits where it has them); then the tokens found inside the
/// items (see the module docs).
pub fn classify(items: &[AlertItem<'_>], formats: Formats) -> Classified {
    let mut hashes = Vec::with_capacity(items.len());
    let mut candidate_index = Vec::with_capacity(items.len());
    let mut candidates = Vec::new();
    let mut inside = Inside::default();
    let mut not_ours = 0;
    for (position, item) in items.iter().enumerate() {
        hashes.push(TokenHash::of(&item.token));
        let own = formats.recognise(&item.token);
        if let Some(format) = own {
            candidate_index.push(Some(candidates.len()));
            candidates.push(candidate(item, position, format.key(&item.token)));
        } else {
            candidate_index.push(None);
            not_ours += 1;
        }
        inside.collect(item, position, own.is_some(), formats);
    }
    let found_inside = inside.append_to(&mut candidates, items.len());
    Classified {
        found_inside,
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
            item_count: self.hashes.len() as u32 + self.found_inside,
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

/// The 200 response body: one feedback entry per item, input order, serialised
/// straight from the parsed request; the same bytes as [`super::FeedbackChunks`] writes.
pub fn feedback_json(
    items: &[AlertItem<'_>],
    hashes: &[TokenHash],
    outcomes: &[Outcome],
) -> Vec<u8> {
    // Each type as echoed: any token in it redacted.
    let types: Vec<std::borrow::Cow<'_, str>> = items
        .iter()
        .map(|item| {
            crate::domain::redact::redact_tokens(item.token_type.as_deref().unwrap_or_default())
        })
        .collect();
    struct Entries<'a>(
        &'a [std::borrow::Cow<'a, str>],
        &'a [TokenHash],
        &'a [Outcome],
    );
    impl Serialize for Entries<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(self.0.iter().zip(self.1).zip(self.2).map(
                |((token_type, hash), outcome)| FeedbackRef {
                    token_hash: Hex(hash),
                    token_type,
                    label: (*outcome).into(),
                },
            ))
        }
    }
    let mut out = Vec::with_capacity(items.len() * 120 + 2);
    serde_json::to_writer(&mut out, &Entries(&types, hashes, outcomes))
        .expect("serialising to memory cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::domain::alert::{compact, measure};
    use crate::domain::format::{crates_io_api, crates_io_trustpub};
    use crate::domain::token::Token;

    /// A token of any format.
    fn token() -> impl Strategy<Value = String> {
        (0..3usize).prop_map(|format| match format {
            0 => Token::generate().expose_secret().to_owned(),
            1 => crates_io_trustpub::tests::generate(),
            _ => crates_io_api::tests::generate(),
        })
    }

    /// What an item's field might hold: anything, a token as a whole, a token among
    /// other text (plain or percent-encoded), or one of our shape that is no token.
    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            ".{0,40}",
            token(),
            (
                token(),
                "[ a-z/?=&.:]{0,8}",
                "[ /?=&.:][ a-z]{0,7}",
                any::<bool>()
            )
                .prop_map(|(t, pre, post, encoded)| {
                    let t = if encoded {
                        t.replacen('_', "%5F", 1)
                    } else {
                        t
                    };
                    format!("{pre}{t}{post}")
                }),
            Just("cio_tp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa000000".to_owned()),
        ]
    }

    /// An alert item: a `token` (sometimes not a string), the open fields present,
    /// null or missing.
    fn item() -> impl Strategy<Value = serde_json::Value> {
        let open = || {
            prop::option::of(prop_oneof![
                4 => field().prop_map(serde_json::Value::String),
                1 => Just(serde_json::Value::Null),
            ])
        };
        (
            prop_oneof![
                20 => field().prop_map(serde_json::Value::String),
                1 => Just(serde_json::json!(5)),
            ],
            open(),
            open(),
            open(),
            open(),
        )
            .prop_map(|(token, ty, url, source, location)| {
                let mut m = serde_json::Map::new();
                m.insert("token".into(), token);
                for (name, value) in [
                    ("type", ty),
                    ("url", url),
                    ("source", source),
                    ("location", location),
                ] {
                    if let Some(v) = value {
                        m.insert(name.into(), v);
                    }
                }
                serde_json::Value::Object(m)
            })
    }

    /// Everything both paths say of one candidate.
    fn fields(c: &CandidateItem) -> impl PartialEq + std::fmt::Debug + '_ {
        (
            c.position,
            c.hash,
            &c.token_type,
            &c.source,
            &c.url,
            &c.found_in,
        )
    }

    /// The oracle and the one parser agree on `body`: both refuse it, or they find the
    /// same candidates (strings, keys, places), counts and report, and write the same
    /// answer bytes (in any chunk size).
    fn agree(
        body: &[u8],
        formats: Formats,
        picks: &[usize],
        chunk: usize,
    ) -> Result<(), TestCaseError> {
        let (items, sizes) = match (parse(body), measure(body, formats)) {
            (Ok(items), Ok(sizes)) => (items, sizes),
            (Err(a), Err(b)) => {
                prop_assert_eq!(a, b);
                return Ok(());
            }
            (a, b) => {
                return Err(TestCaseError::fail(format!(
                    "oracle ok: {}, measure ok: {}",
                    a.is_ok(),
                    b.is_ok()
                )))
            }
        };
        let oracle = classify(&items, formats);
        let mut delivery = compact(bytes::Bytes::copy_from_slice(body), &sizes, formats)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(sizes.items, items.len());
        prop_assert!(sizes.candidates >= delivery.candidates.len());
        prop_assert_eq!(oracle.not_ours, delivery.not_ours);
        prop_assert_eq!(oracle.found_inside, delivery.found_inside);
        prop_assert_eq!(
            oracle.candidates.iter().map(fields).collect::<Vec<_>>(),
            delivery.candidates.iter().map(fields).collect::<Vec<_>>()
        );
        let keys: Vec<(TokenHash, Option<TokenHash>)> = oracle
            .hashes
            .iter()
            .zip(&oracle.candidate_index)
            .map(|(&whole, i)| (whole, i.map(|i| oracle.candidates[i].hash)))
            .collect();
        prop_assert_eq!(keys, delivery.keys().collect::<Vec<_>>());

        let expected = oracle.into_report("s", "k", DateTime::UNIX_EPOCH, || [7; 32]);
        let report = delivery.take_report("s", "k", DateTime::UNIX_EPOCH, |_| [7; 32]);
        prop_assert_eq!(
            expected.map(|r| (r.item_count, r.not_ours, r.candidates.len())),
            report.map(|r| (r.item_count, r.not_ours, r.candidates.len()))
        );

        let candidate_outcomes: Vec<Outcome> = (0..oracle.candidates.len())
            .map(|i| Outcome::ALL[picks.get(i).copied().unwrap_or(0) % Outcome::ALL.len()])
            .collect();
        let outcomes = oracle.outcomes(&candidate_outcomes);
        delivery.set_outcomes(&candidate_outcomes);
        prop_assert_eq!(&outcomes, &delivery.outcomes().collect::<Vec<_>>());
        let whole = feedback_json(&items, &oracle.hashes, &outcomes);
        let mut chunks = delivery.feedback(chunk);
        let mut streamed = Vec::new();
        while let Some(piece) = chunks.next_chunk() {
            streamed.extend(piece);
        }
        prop_assert_eq!(String::from_utf8(whole), String::from_utf8(streamed));
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Alert arrays of every kind of item, with escaped `cio` now and then.
        #[test]
        fn the_oracle_and_the_one_parser_agree_on_alert_arrays(
            items in prop::collection::vec(item(), 0..12),
            escape in any::<bool>(),
            all in any::<bool>(),
            picks in prop::collection::vec(any::<usize>(), 0..40),
            chunk in 1..400usize,
        ) {
            let mut body = serde_json::to_string(&items).unwrap();
            if escape {
                // `cio` cannot be inside an escape sequence (`i` is no hex digit).
                body = body.replace("cio", "\\u0063io");
            }
            let formats = if all { Formats::ALL } else { Formats::DEFAULT };
            agree(body.as_bytes(), formats, &picks, chunk)?;
        }

        /// Any bytes: refused by both alike, or read alike.
        #[test]
        fn the_oracle_and_the_one_parser_agree_on_any_bytes(
            body in prop::collection::vec(any::<u8>(), 0..256),
            chunk in 1..64usize,
        ) {
            agree(&body, Formats::ALL, &[], chunk)?;
        }
    }
}
