//! Issue 26's reproductions, through the real binary: a token hidden in an encoding
//! is found, revoked and stored nowhere; forged requests are no deliveries; the
//! `Authorization` scheme's case does not matter.

mod common;

use chrono::Duration as Ttl;
use common::*;
use proptest::prelude::*;
use revoker::domain::redact::redact_tokens;
use revoker::domain::scan::planted;
use revoker::domain::token::Token;

async fn hidden_tokens_are_revoked_and_stored_nowhere(kind: Kind) {
    let Some(db) = TestDb::new(kind).await else {
        return;
    };
    let store = open_migrated_store(&db).await;
    let a = mint_many(store.as_ref(), "alice/pkg", 1, Ttl::hours(1))
        .await
        .remove(0);
    let b = mint_many(store.as_ref(), "bob/pkg", 1, Ttl::hours(1))
        .await
        .remove(0);
    let c = mint_many(store.as_ref(), "carol/pkg", 1, Ttl::hours(1))
        .await
        .remove(0);
    let d = mint_many(store.as_ref(), "dave/pkg", 1, Ttl::hours(1))
        .await
        .remove(0);
    let secret = |t: &Token| t.expose_secret()[7..].to_owned();
    let server = ServeProcess::start(db.url(), &[], false);
    let body = serde_json::to_vec(&serde_json::json!([
        {"token": a.expose_secret(), "type": "cio_tp", "source": "content",
         "url": format!("https://x/?q=cio%5Ftp%5F{}", secret(&b))},
        {"token": "junk", "type": format!("%63io_tp_{}", secret(&c)),
         "url": "https://x/", "source": format!("\\u0063io%5ftp_{}", secret(&d))},
    ]))
    .unwrap();
    let answer = server.deliver(&Signer::test(), body).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    // One entry per item sent, whatever was found inside them.
    assert_eq!(answer.labels(), ["true_positive", "false_positive"]);
    for t in [&a, &b, &c, &d] {
        let hashes = [t.hash()];
        let preview = store.preview(&hashes, chrono::Utc::now()).await.unwrap();
        assert_eq!(
            preview.get(&t.hash()).map(|o| o.as_str()),
            Some("already_revoked"),
            "{} is revoked",
            t.hash().prefix()
        );
    }
    let found_in = db
        .texts("SELECT coalesce(found_in, '-') FROM report_items ORDER BY position")
        .await;
    assert_eq!(
        found_in,
        ["-", "items[0].url", "items[1].type", "items[1].source"]
    );
    assert!(db.inconsistencies().await.is_empty());

    // Nowhere: not in a table, the stats, the dashboard's data, notify list, the logs.
    let mut places = vec![("the database".to_owned(), db.dump().await)];
    places.push((
        "/api/stats".into(),
        server.admin_get("/api/stats", None).await.text,
    ));
    places.push((
        "/metrics".into(),
        server.admin_get("/metrics", None).await.text,
    ));
    for json in [false, true] {
        let mut cmd = revoker_command();
        cmd.args(["notify", "list", "--database-url", db.url()]);
        if json {
            cmd.arg("--json");
        }
        places.push((format!("notify list (json: {json})"), run_ok(&mut cmd)));
    }
    // Each owner's notification, as their webhook gets it (A's owner is told of the
    // url that held B).
    let hook = Webhook::start().await;
    run_ok(
        revoker_command()
            .args(["notify", "run", "--database-url", db.url()])
            .args(["--notify-webhook", &hook.url, "--notify-secret", SECRET]),
    );
    let sent = hook.wait_for(4).await;
    for (i, n) in sent.iter().enumerate() {
        assert!(n.signature_ok);
        places.push((
            format!("owner notification {i}"),
            String::from_utf8_lossy(&n.body).into_owned(),
        ));
    }
    assert!(
        sent.iter()
            .any(|n| String::from_utf8_lossy(&n.body).contains("https://x/?q=cio_tp_[redacted]")),
        "A's owner is told where (redacted)"
    );
    places.push(("the logs".into(), server.stop()));
    for (place, text) in &places {
        for t in [&a, &b, &c, &d] {
            assert!(!holds_secret(text, t), "{} in {place}", t.hash().prefix());
        }
    }
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_tokens_are_revoked_and_stored_nowhere_sqlite() {
    hidden_tokens_are_revoked_and_stored_nowhere(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_tokens_are_revoked_and_stored_nowhere_postgres() {
    hidden_tokens_are_revoked_and_stored_nowhere(Kind::Postgres).await;
}

/// The value of one sample line of a Prometheus page (0 when absent).
fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_requests_are_no_deliveries_and_log_no_warning() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let server = ServeProcess::start(db.url(), &["--admin-token", "s3cret-admin-token"], false);
    let body = b"[]".to_vec();
    let good = Signer::test().sign(&body);
    let forged = Signer::from_fixture("keys/other-key.pem", KEY_ID).sign(&body);
    for _ in 0..3 {
        assert_eq!(
            server.post("github", None, None, body.clone()).await.status,
            401
        );
        // An unknown key id: 401 once the keys fetched for it do not list it, 503 while
        // the refetch interval holds the next fetch back (a genuine rotation retries).
        let a = server
            .post("github", Some("no-such-key"), Some(&good), body.clone())
            .await;
        assert!(matches!(a.status, 401 | 503), "{}", a.status);
        let a = server
            .post("github", Some(KEY_ID), Some(&forged), body.clone())
            .await;
        assert_eq!(a.status, 401);
    }
    assert_eq!(server.deliver(&Signer::test(), body).await.status, 200);
    let page = server
        .admin_get("/metrics", Some("s3cret-admin-token"))
        .await
        .text;
    assert_eq!(
        sample(
            &page,
            r#"revoker_deliveries_total{scanner="github",status="200"}"#
        ),
        1.0,
        "{page}"
    );
    assert!(!page.contains(r#"status="401""#), "{page}");
    assert!(!page.contains(r#"status="503""#), "{page}");
    assert_eq!(
        sample(
            &page,
            r#"revoker_delivery_duration_seconds_count{scanner="github"}"#
        ),
        1.0
    );
    let rejected = |reason: &str| {
        sample(
            &page,
            &format!(r#"revoker_rejected_requests_total{{scanner="github",reason="{reason}"}}"#),
        )
    };
    assert_eq!(rejected("bad_signature_header"), 3.0);
    assert_eq!(rejected("bad_signature"), 3.0);
    assert_eq!(
        rejected("unknown_key") + rejected("unknown_key_unconfirmed"),
        3.0,
        "{page}"
    );
    // The on-call panel saw one delivery and no failure.
    let stats: serde_json::Value = serde_json::from_str(
        &server
            .admin_get("/api/stats", Some("s3cret-admin-token"))
            .await
            .text,
    )
    .unwrap();
    let text = stats.to_string();
    assert!(!text.contains("401"), "{text}");
    let logs = server.stop();
    assert!(!logs.contains("WARN"), "{logs}");
    assert_eq!(
        logs.matches("refused before its signature or token verified")
            .count(),
        9,
        "each refusal is one debug line"
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorization_scheme_is_case_insensitive() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let server = ServeProcess::start(
        db.url(),
        &[
            "--admin-token",
            "s3cret-admin-token",
            "--revocation-api-token",
            "s3cret-revocation-api-token",
        ],
        false,
    );
    let client = reqwest::Client::new();
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        for path in ["/metrics", "/api/stats"] {
            let status = client
                .get(format!("{}{path}", server.admin))
                .header("authorization", format!("{scheme} s3cret-admin-token"))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 200, "{scheme} on {path}");
        }
        let status = client
            .get(format!("{}/v1/revocable_token_types", server.base))
            .header(
                "authorization",
                format!("{scheme}  s3cret-revocation-api-token"),
            )
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{scheme} on the Revocation API");
    }
    // Another scheme, or a wrong token, is still refused.
    let status = client
        .get(format!("{}/metrics", server.admin))
        .header("authorization", "Basic s3cret-admin-token")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
    server.stop();
    db.cleanup().await;
}

proptest! {
    /// Random text with tokens of every format planted in any mix of encodings (within
    /// the three layers revoker undoes): once redacted, no decoding of it holds any
    /// token's secret part.
    /// (Fails with `scan::runs` looking at the input alone.)
    #[test]
    fn no_decoding_of_a_redacted_string_holds_a_secret(
        parts in prop::collection::vec(
            (
                // No `%` or `\` beside a planted token: one would join its escapes and
                // take a layer more to undo.
                "[ a-zA-Z0-9/?=&.:_#-]{0,12}",
                prop::collection::vec(prop::sample::select(&planted::WAYS[..]), 1..12),
                0u8..3,
                // The token's format: ours, crates.io's trusted publishing, its API.
                0..3usize,
            ),
            1..4,
        ),
        tail in "[ a-zA-Z0-9/?=&.:_#-]{0,12}",
    ) {
        let tokens: Vec<String> = parts
            .iter()
            .map(|(_, _, _, format)| match format {
                0 => Token::generate().expose_secret().to_owned(),
                1 => trustpub_token(),
                _ => api_token(),
            })
            .collect();
        let mut s = String::new();
        for ((text, ways, outer, _), t) in parts.iter().zip(&tokens) {
            s.push_str(text);
            s.push_str(&planted::write(t, ways, *outer));
        }
        s.push_str(&tail);
        let r = redact_tokens(&s);
        prop_assert!(r.contains("[redacted]"));
        for t in &tokens {
            prop_assert!(!holds_secret_of(&r, t), "{s:?} -> {r:?}");
        }
    }
}

/// `io_tp_` after a character of several bytes, where anyone can put it (the scanner path
/// segment) or a scanner does (a url): answered, nothing panics (found by the second
/// review: the redaction sliced inside `é`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_after_a_multibyte_character_is_redacted_without_a_panic() {
    let app = TestApp::sqlite().start().await;
    let t = app.mint("multibyte/pkg", Ttl::minutes(30)).await;
    let secret = &t.expose_secret()[7..];
    let a = app
        .post(&format!("%C3%A9io_tp_{secret}"), None, None, b"[]".to_vec())
        .await;
    assert_eq!(
        (a.status, a.error_code()),
        (404, "unknown_scanner"),
        "{}",
        a.text
    );
    let body = serde_json::to_vec(&serde_json::json!([
        {"token": t.expose_secret(), "url": format!("éio_tp_{secret} é%20io_tp_{secret}")},
    ]))
    .unwrap();
    let a = app.deliver(&Signer::test(), body).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.labels(), ["true_positive"]);
    app.stop().await;
}
