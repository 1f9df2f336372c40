//! Forgeries that must all be refused with 401 and leave nothing recorded: a signature
//! from another curve, a key id that belongs to another scanner, and a genuine delivery
//! replayed to a different scanner. (Changed bytes, a trailing newline added or removed,
//! and another key under the trusted id are in `contract.rs`.)

mod common;

use std::time::Duration;

use chrono::Duration as Ttl;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgeries_get_401_and_record_nothing() {
    // `partner` reads `fixtures/keys/partner-keys.json`, which reuses the id
    // `revoker-test-key-1` for a different key and lists `partner-key-1`.
    let app = TestApp::sqlite()
        .keys_refetch_interval(Duration::ZERO)
        .scanner("partner", fixture("keys/partner-keys.json").display())
        .wait_for_keys()
        .start()
        .await;
    let t = app.mint("forge/pkg", Ttl::minutes(30)).await;
    let body = alert_body(&[t.expose_secret()]);

    // 1. A signature made on another curve (P-384) over the exact fixture bytes.
    let fixture_body = std::fs::read(fixture("deliveries/sample.json")).unwrap();
    let p384 = fixture_string("deliveries/sample.json.p384.sig");
    let a = app
        .post("github", Some(KEY_ID), Some(p384.trim()), fixture_body)
        .await;
    assert_eq!(a.status, 401, "{}", a.text);

    // 2. A key id that exists, but at another scanner: unknown here, even after a refetch.
    let partner_signer = Signer::from_fixture("keys/other-key.pem", "partner-key-1");
    let a = app.deliver(&partner_signer, body.clone()).await;
    assert_eq!(
        (a.status, a.error_code()),
        (401, "unknown_key"),
        "{}",
        a.text
    );

    // 3. A genuine GitHub delivery replayed to another scanner: the same key id names a
    //    different key there, so the signature does not verify.
    let genuine = Signer::test().sign(&body);
    let a = app
        .post("partner", Some(KEY_ID), Some(&genuine), body.clone())
        .await;
    assert_eq!(
        (a.status, a.error_code()),
        (401, "bad_signature"),
        "{}",
        a.text
    );

    // 4. The reverse: partner's genuine signature replayed to github.
    let partner_sig = Signer::from_fixture("keys/other-key.pem", KEY_ID).sign(&body);
    let a = app
        .post("github", Some(KEY_ID), Some(&partner_sig), body.clone())
        .await;
    assert_eq!(
        (a.status, a.error_code()),
        (401, "bad_signature"),
        "{}",
        a.text
    );

    // Nothing was accepted: no report, the token is live, and metrics agree.
    assert_eq!(app.store.count_reports().await.unwrap(), 0);
    assert!(!app.is_revoked(&t).await);
    let m = app.admin_get("/metrics", None).await.text;
    assert!(!m.contains(r#"status="200""#), "{m}");
    // Forgeries are not deliveries (issue 26): counted as rejected requests, by reason.
    assert!(!m.contains("revoker_deliveries_total{"), "{m}");
    let rejected = |scanner: &str, reason: &str| {
        format!(r#"revoker_rejected_requests_total{{scanner="{scanner}",reason="{reason}"}} 1"#)
    };
    for (scanner, reason) in [
        ("github", "bad_signature_header"),
        ("github", "unknown_key"),
        ("github", "bad_signature"),
        ("partner", "bad_signature"),
    ] {
        assert!(
            m.contains(&rejected(scanner, reason)),
            "{scanner} {reason}: {m}"
        );
    }

    // Each scanner still accepts its own genuine deliveries.
    let a = app
        .post("github", Some(KEY_ID), Some(&genuine), body.clone())
        .await;
    assert_eq!(a.labels(), ["true_positive"]);
    let a = app
        .post("partner", Some(KEY_ID), Some(&partner_sig), body)
        .await;
    assert_eq!(a.labels(), ["true_positive"], "already revoked, still ours");
    app.stop().await;
}
