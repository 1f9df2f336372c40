//! The admin listener: exact metrics after a known sequence, the stats API over HTTP,
//! bearer auth, health and readiness, and the loopback guard.

mod common;

use std::time::Duration;

use chrono::Duration as Ttl;
use common::*;
use revoker::config::Settings;
use revoker::signature::ScannerSpec;
use revoker::startup::Application;

/// The value of one sample line `name{labels} value` in a Prometheus text page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_happened() {
    let app = TestApp::sqlite().wait_for_keys().start().await;
    let live = app.mint("alice/a", Ttl::minutes(30)).await;
    let expired = app.mint("alice/b", Ttl::minutes(-1)).await;
    let signer = Signer::test();

    let body = alert_body(&[
        live.expose_secret(),
        expired.expose_secret(),
        "junk",
        "junk2",
    ]);
    assert_eq!(app.deliver(&signer, body.clone()).await.status, 200);
    // The same tokens in another body: all already revoked now.
    let reordered = alert_body(&[
        expired.expose_secret(),
        live.expose_secret(),
        "junk2",
        "junk",
    ]);
    assert_eq!(app.deliver(&signer, reordered).await.status, 200);
    // The first body again: answered from its report, its outcomes not counted again.
    assert_eq!(app.deliver(&signer, body.clone()).await.status, 200);
    let forged = Signer::from_fixture("keys/other-key.pem", KEY_ID);
    assert_eq!(app.deliver(&forged, body.clone()).await.status, 401);
    let sig = signer.sign(&body);
    let a = app
        .post("random-name", Some(KEY_ID), Some(&sig), body)
        .await;
    assert_eq!(a.status, 404);

    let m = app.admin_get("/metrics", None).await;
    assert_eq!(m.status, 200);
    let page = &m.text;
    // Neither the forgery (401) nor the misaddressed request (404) is a delivery.
    assert!(!page.contains(r#"status="401""#), "{page}");
    assert!(!page.contains(r#"status="404""#), "{page}");
    let expect = [
        (
            r#"revoker_deliveries_total{scanner="github",status="200"}"#,
            3.0,
        ),
        // Forged and misaddressed requests are no deliveries (issue 26).
        (
            r#"revoker_rejected_requests_total{scanner="github",reason="bad_signature"}"#,
            1.0,
        ),
        (
            r#"revoker_rejected_requests_total{scanner="_unknown",reason="unknown_scanner"}"#,
            1.0,
        ),
        (
            r#"revoker_items_total{scanner="github",outcome="revoked"}"#,
            1.0,
        ),
        (
            r#"revoker_items_total{scanner="github",outcome="expired"}"#,
            1.0,
        ),
        (
            r#"revoker_items_total{scanner="github",outcome="already_revoked"}"#,
            2.0,
        ),
        (
            r#"revoker_items_total{scanner="github",outcome="not_ours"}"#,
            4.0,
        ),
        ("revoker_revocations_total", 2.0),
        (
            r#"revoker_key_fetches_total{scanner="github",result="ok"}"#,
            1.0,
        ),
        (r#"revoker_key_cache_keys{scanner="github"}"#, 1.0),
        (
            r#"revoker_delivery_duration_seconds_count{scanner="github"}"#,
            3.0,
        ),
        (
            r#"revoker_db_statement_duration_seconds_count{operation="record_report"}"#,
            3.0,
        ),
        // The database's outbox, though this app sends nothing (no --notify-webhook):
        // one notification per token revoked, both waiting.
        (r#"revoker_notifications{status="pending"}"#, 2.0),
        (r#"revoker_notifications{status="delivered"}"#, 0.0),
        (r#"revoker_notifications{status="failed"}"#, 0.0),
    ];
    for (series, value) in expect {
        assert_eq!(sample(page, series), Some(value), "{series} in\n{page}");
    }
    assert!(sample(
        page,
        r#"revoker_items_total{scanner="github",outcome="unknown"}"#
    )
    .is_none());
    let age = sample(page, r#"revoker_key_cache_age_seconds{scanner="github"}"#).unwrap();
    assert!((0.0..60.0).contains(&age), "{age}");
    assert!(
        !page.contains("random-name"),
        "unconfigured names never become labels"
    );
    assert!(!page.contains(live.expose_secret()));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_api_serves_thirty_days_and_recent_reports() {
    let app = TestApp::sqlite().start().await;
    let live = app.mint("alice/a", Ttl::minutes(30)).await;
    let body = alert_body(&[live.expose_secret(), "junk"]);
    assert_eq!(app.deliver(&Signer::test(), body).await.status, 200);

    let s = app.admin_get("/api/stats", None).await;
    assert_eq!(s.status, 200, "{}", s.text);
    let j = &s.json;
    assert_eq!(j["totals"]["reports"], 1);
    assert_eq!(j["totals"]["revoked"], 1);
    assert_eq!(j["totals"]["not_ours"], 1);
    let daily = j["daily"].as_array().unwrap();
    assert_eq!(daily.len(), 30);
    let today = chrono::Utc::now().date_naive().to_string();
    assert_eq!(daily[29]["day"], today);
    assert_eq!(daily[29]["revoked"], 1);
    assert_eq!(daily[0]["reports"], 0);
    let recent = j["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!(
        recent[0]["items"][0]["token_hash_prefix"],
        live.hash().prefix()
    );
    assert!(!s.text.contains(live.expose_secret()));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_guards_metrics_and_stats_but_not_the_page() {
    let app = TestApp::sqlite().admin_token("s3cret-admin").start().await;
    for path in ["/metrics", "/api/stats"] {
        let a = app.admin_get(path, None).await;
        assert_eq!((a.status, a.error_code()), (401, "unauthorized"), "{path}");
        let a = app.admin_get(path, Some("s3cret-admiN")).await;
        assert_eq!(a.status, 401, "{path} with a wrong token");
        let a = app.admin_get(path, Some("s3cret-admin")).await;
        assert_eq!(a.status, 200, "{path} with the token: {}", a.text);
    }
    // The whole refusal: status, body and the challenge header.
    let refused = app
        .client
        .get(format!("{}/api/stats", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers().get("www-authenticate").unwrap(), "Bearer");
    assert!(refused.headers().get("retry-after").is_none());
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "error": "unauthorized",
            "message": "this endpoint needs Authorization: Bearer <admin token>"
        })
    );
    let page = app.admin_get("/dashboard", None).await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("<html") || page.text.contains("<!doctype"));
    assert!(!page.text.contains("s3cret-admin"));
    assert_eq!(app.admin_get("/healthz", None).await.status, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_listener_serves_health_but_never_metrics() {
    let app = TestApp::sqlite().start().await;
    for path in ["/metrics", "/api/stats", "/dashboard"] {
        let a = app.get(path).await;
        assert_eq!(a.status, 404, "{path} on the public listener");
    }
    assert_eq!(app.get("/healthz").await.status, 200);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.json["status"], "ready");
    assert_eq!(ready.json["database"], "ok");
    assert_eq!(ready.json["scanners"]["github"]["keys"], 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_without_keys_and_recovers() {
    let app = TestApp::sqlite()
        .keys(KeyMode::Status(503))
        .keys_refetch_interval(Duration::ZERO)
        .start()
        .await;
    let r = app.admin_get("/readyz", None).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.json["status"], "not_ready");
    assert_eq!(r.json["database"], "ok");
    assert_eq!(r.json["scanners"]["github"]["keys"], 0);
    assert_eq!(
        app.admin_get("/healthz", None).await.status,
        200,
        "alive anyway"
    );
    app.keys().set_mode(KeyMode::test_keys());
    let r = app.admin_get("/readyz", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_admin_listener_requires_a_token() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let mut settings = Settings::new(
        db.url(),
        vec![ScannerSpec {
            name: "github".into(),
            source: fixture("keys/test-keys.json").display().to_string(),
        }],
    );
    settings.admin_listen = "0.0.0.0:0".into();
    let err = Application::build(settings.clone())
        .await
        .err()
        .expect("refused to start");
    assert!(err.to_string().contains("--admin-token"), "{err:#}");
    settings.admin_token = Some(secrecy::SecretString::from("t0ken".to_owned()));
    assert!(Application::build(settings).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_answer_503_while_the_database_is_down() {
    // PostgreSQL: refusing connections is a real outage for readers too (a SQLite
    // writer's lock would not stop a WAL reader).
    let Some(app) = TestApp::builder(Kind::Postgres)
        .db_timeout(Duration::from_millis(500))
        .start_or_skip()
        .await
    else {
        return;
    };
    assert_eq!(app.admin_get("/api/stats", None).await.status, 200);
    let pending = r#"revoker_notifications{status="pending"}"#;
    let m = app.admin_get("/metrics", None).await;
    assert_eq!(sample(&m.text, pending), Some(0.0), "{}", m.text);
    assert_eq!(
        sample(&m.text, "revoker_database_up"),
        Some(1.0),
        "{}",
        m.text
    );
    let outage = Outage::start(app.db()).await;
    let s = app.admin_get("/api/stats", None).await;
    // Metrics still answer, without notification counts they cannot read (never stale
    // ones).
    let m = app.admin_get("/metrics", None).await;
    outage.end(app.db()).await;
    assert_eq!(m.status, 200);
    assert!(!m.text.contains("revoker_notifications{"), "{}", m.text);
    assert_eq!(
        sample(&m.text, "revoker_database_up"),
        Some(0.0),
        "{}",
        m.text
    );
    assert_eq!(s.status, 503, "{}", s.text);
    assert_eq!(
        s.json,
        serde_json::json!({
            "error": "database_unavailable",
            "message": "cannot read stats from the database"
        })
    );
    assert_eq!(s.retry_after, None);
    // Back once the database is.
    let s = app.admin_get("/api/stats", None).await;
    assert_eq!(s.status, 200, "{}", s.text);
    let m = app.admin_get("/metrics", None).await;
    assert_eq!(sample(&m.text, pending), Some(0.0), "{}", m.text);
    assert_eq!(
        sample(&m.text, "revoker_database_up"),
        Some(1.0),
        "{}",
        m.text
    );
    app.stop().await;
}

/// The public `/readyz` is open to anyone: however many calls arrive, at most one
/// readiness check (one database statement: the ping) per second, shared by all
/// concurrent callers. The admin one checks on every call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_readiness_costs_at_most_one_database_probe_per_second() {
    let app = TestApp::sqlite().wait_for_keys().start().await;
    let started = std::time::Instant::now();
    let before = app.store.statements();
    // 100 at once, then 100 one after the other.
    let answers = futures::future::join_all((0..100).map(|_| app.get("/readyz"))).await;
    for _ in 0..100 {
        let a = app.get("/readyz").await;
        assert_eq!(a.status, 200, "{}", a.text);
    }
    let probes = app.store.statements() - before;
    let seconds = started.elapsed().as_secs();
    assert!(answers
        .iter()
        .all(|a| a.status == 200 && a.json["status"] == "ready"));
    assert_eq!(answers[0].json["database"], "ok");
    assert!(probes >= 1, "the first call checks");
    assert!(
        probes <= seconds + 1,
        "{probes} database probes for 200 calls in {seconds} s"
    );

    // The admin listener checks every time.
    let before = app.store.statements();
    for _ in 0..5 {
        assert_eq!(app.admin_get("/readyz", None).await.status, 200);
    }
    assert_eq!(app.store.statements() - before, 5);
    app.stop().await;
}

/// The admin `/readyz` reports the owner-notification worker when one is configured,
/// and leaves it out otherwise; the public one never shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_readiness_reports_the_notification_worker() {
    let mut notify = revoker::notify::NotifySettings::new("http://127.0.0.1:1/hook", "s");
    notify.poll_interval = Duration::from_secs(3600);
    let app = TestApp::sqlite()
        .notify(notify)
        .wait_for_keys()
        .start()
        .await;
    let r = app.admin_get("/readyz", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json["notifier"],
        serde_json::json!({ "running": true, "restarts": 0 })
    );
    let public = app.get("/readyz").await;
    assert_eq!(public.status, 200);
    assert!(public.json.get("notifier").is_none(), "{}", public.text);
    let status = app.state.notifier.as_ref().unwrap().status().clone();
    app.stop().await;
    assert!(!status.running(), "a stopped worker is not running");

    let plain = TestApp::sqlite().wait_for_keys().start().await;
    let r = plain.admin_get("/readyz", None).await;
    assert!(r.json.get("notifier").is_none(), "{}", r.text);
    plain.stop().await;
}
