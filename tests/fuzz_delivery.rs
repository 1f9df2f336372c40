//! Property-based fuzzing of the delivery path, headers and body through the one
//! parser production uses (`measure` → `compact` → `FeedbackChunks`, as the webhook,
//! the Token Revocation API and replay run it): no input may panic, and whatever
//! parses gets exactly one feedback entry per item, never echoing a token.
//! Adversarial shapes: non-UTF-8 bytes, deep nesting, huge strings, numbers where
//! strings belong, many tiny items, duplicates, empty arrays.

use proptest::prelude::*;

use revoker::domain::alert::{self, Feedback};
use revoker::domain::redact::redact_tokens;
use revoker::domain::token::{Token, TokenHash};
use revoker::domain::{Formats, Outcome};
use revoker::signature;

/// Runs the whole offline path; returns the number of items if the body parsed.
fn deliver(body: &[u8]) -> Option<usize> {
    let sizes = alert::measure(body, Formats::ALL).ok()?;
    let mut delivery = alert::compact(bytes::Bytes::copy_from_slice(body), &sizes, Formats::ALL)
        .expect("a body that measured is read");
    let items = delivery.len();
    assert_eq!(sizes.items, items);
    assert!(sizes.candidates >= delivery.candidates.len());
    assert_eq!(
        delivery.candidates.len() - delivery.found_inside as usize + delivery.not_ours as usize,
        items
    );
    let candidates = delivery.candidates.len();
    delivery.set_outcomes(&vec![Outcome::Unknown; candidates]);
    let mut chunks = delivery.feedback(4096);
    let mut json = Vec::new();
    while let Some(piece) = chunks.next_chunk() {
        json.extend(piece);
    }
    let feedback: Vec<Feedback> = serde_json::from_slice(&json).expect("feedback is JSON");
    assert_eq!(feedback.len(), items);
    // The tokens as sent, read by the test oracle only to check the answer against them
    // (serde reads an item written as an array too: `["token", null]`).
    let sent = alert::oracle::parse(body).expect("what measure reads, the oracle reads");
    assert_eq!(sent.len(), items);
    let text = String::from_utf8(json).expect("feedback is UTF-8");
    for (entry, item) in feedback.iter().zip(&sent) {
        assert_eq!(entry.token_hash, TokenHash::of(&item.token).to_hex());
        // The type as sent, any token in it redacted (so a type that merely repeats the
        // item's string is not echoed either).
        let sent_type = item.token_type.as_deref().unwrap_or_default();
        assert_eq!(entry.token_type, redact_tokens(sent_type));
        // (A one-character "token" can occur in hex by chance; real ones cannot.)
        if item.token.len() >= 16 {
            assert!(!entry.token_hash.contains(item.token.as_ref()));
            assert!(!text.contains(item.token.as_ref()));
        }
    }
    Some(items)
}

/// A JSON value of a shape a scanner might plausibly (or implausibly) send.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| serde_json::json!(f)),
        ".{0,40}".prop_map(serde_json::Value::String),
        Just(serde_json::Value::String(
            Token::generate().expose_secret().to_owned()
        )),
        Just(serde_json::Value::String("cio_tp_".repeat(20))),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("token".to_owned()),
                    Just("type".to_owned()),
                    Just("url".to_owned()),
                    Just("source".to_owned()),
                    "[a-z]{1,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An alert item with correct or wrong types in each field.
fn alert_item() -> impl Strategy<Value = serde_json::Value> {
    (
        prop_oneof![
            3 => Just(serde_json::json!(Token::generate().expose_secret())),
            2 => ".{0,60}".prop_map(serde_json::Value::String),
            1 => json_value(),
        ],
        prop::option::of(prop_oneof![
            ".{0,20}".prop_map(serde_json::Value::String),
            json_value()
        ]),
        prop::option::of(".{0,80}".prop_map(serde_json::Value::String)),
        prop::option::of(".{0,20}".prop_map(serde_json::Value::String)),
    )
        .prop_map(|(token, ty, url, source)| {
            let mut m = serde_json::Map::new();
            m.insert("token".into(), token);
            if let Some(t) = ty {
                m.insert("type".into(), t);
            }
            if let Some(u) = url {
                m.insert("url".into(), u);
            }
            if let Some(s) = source {
                m.insert("source".into(), s);
            }
            serde_json::Value::Object(m)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = deliver(&body);
    }

    #[test]
    fn arbitrary_json_never_panics(value in json_value()) {
        let body = serde_json::to_vec(&value).unwrap();
        let _ = deliver(&body);
    }

    #[test]
    fn alert_arrays_parse_when_tokens_are_strings(items in prop::collection::vec(alert_item(), 0..40)) {
        let body = serde_json::to_vec(&items).unwrap();
        let all_strings = items.iter().all(|i| {
            i["token"].is_string()
                && ["type", "url", "source"].iter().all(|k| i.get(*k).is_none_or(|v| v.is_string() || v.is_null()))
        });
        let parsed = deliver(&body);
        prop_assert_eq!(parsed.is_some(), all_strings, "{}", String::from_utf8_lossy(&body));
        if let Some(n) = parsed {
            prop_assert_eq!(n, items.len());
        }
    }

    #[test]
    fn invalid_utf8_inside_strings_is_an_error_not_a_panic(
        prefix in prop::collection::vec(any::<u8>(), 0..20),
        bad in 0x80u8..=0xff,
    ) {
        let mut body = br#"[{"token":""#.to_vec();
        body.extend_from_slice(&prefix);
        body.push(bad);
        body.extend_from_slice(br#""}]"#);
        let _ = deliver(&body);
    }

    #[test]
    fn signature_headers_never_panic(header in ".{0,200}", bytes in prop::collection::vec(any::<u8>(), 0..100)) {
        let _ = signature::decode_signature(&header);
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let _ = signature::decode_signature(&b64);
    }
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    for depth in [100usize, 1_000, 100_000] {
        let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(deliver(body.as_bytes()).is_none(), "depth {depth}");
        let body = format!("{}{}", r#"[{"token":"#.repeat(depth), "}]".repeat(depth));
        assert!(deliver(body.as_bytes()).is_none());
    }
}

#[test]
fn huge_strings_and_many_tiny_items_are_answered() {
    let huge = "x".repeat(4 << 20);
    let body = serde_json::to_vec(&serde_json::json!([{ "token": huge, "url": huge }])).unwrap();
    assert_eq!(deliver(&body), Some(1));

    // ~8 MiB of the smallest items: one answer each.
    let n = 8 << 20 >> 4;
    let mut body = String::with_capacity(n * 16);
    body.push('[');
    for i in 0..n {
        if i > 0 {
            body.push(',');
        }
        body.push_str(r#"{"token":""}"#);
    }
    body.push(']');
    assert_eq!(deliver(body.as_bytes()), Some(n));

    // Duplicates and empties.
    let t = Token::generate();
    let body = serde_json::to_vec(&serde_json::json!([
        {"token": t.expose_secret()}, {"token": t.expose_secret()}, {"token": ""}
    ]))
    .unwrap();
    assert_eq!(deliver(&body), Some(3));
    assert_eq!(deliver(b"[]"), Some(0));
    assert_eq!(deliver(b"  [ ]  "), Some(0));
    assert_eq!(deliver(br#"[{"token": 5}]"#), None);
    assert_eq!(deliver(br#"[{"token": "a", "type": 5}]"#), None);
    assert_eq!(
        deliver(br#"[{"token": "a", "extra": [1, {"x": null}]}]"#),
        Some(1)
    );
}
