//! Issue 26's reproductions, through the real binary: a token hidden in an encoding
//! is found, revoked and stored nowhere; forged requests are no deliveries; the
//! `Authorization` scheme's case does not matter.

mod common;

use chrono::Duration as Ttl;
use common::*;
use revoker::domain::token::Token;

/// `text` and what it reads as with its percent-encoding or JSON escapes undone (once
/// and twice, by decoders that are not the service's).
fn decodings(text: &str) -> Vec<String> {
    let percent = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let json = |s: &str| {
        let re = regex::Regex::new(r"\\[uU]00([0-9a-fA-F]{2})").unwrap();
        re.replace_all(&s.replace("\\\\", "\\"), |c: &regex::Captures<'_>| {
            char::from(u8::from_str_radix(&c[1], 16).unwrap()).to_string()
        })
        .into_owned()
    };
    let mut all = vec![text.to_owned()];
    for _ in 0..2 {
        let next: Vec<String> = all.iter().flat_map(|s| [percent(s), json(s)]).collect();
        all.extend(next);
    }
    all
}

/// Whether `text` holds the secret part of `token` in any of [`decodings`].
fn holds(text: &str, token: &Token) -> bool {
    let secret = &token.expose_secret()[7..37];
    decodings(text).iter().any(|d| d.contains(secret))
}

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
            assert!(!holds(text, t), "{} in {place}", t.hash().prefix());
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
        logs.matches("refused before its signature verified")
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
