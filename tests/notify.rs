//! Owner notifications end to end: the real receiver revokes tokens, its worker POSTs
//! each notification to a real HTTP server on loopback (the owner's webhook), which
//! checks the HMAC signature and records what it got.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Duration as Ttl;
use common::*;
use revoker::domain::token::Token;
use revoker::notify::NotifySettings;
use revoker::store::{NotificationCounts, NotificationStatus};

/// Fast settings for tests: short backoff and poll, few attempts.
fn fast(url: &str, max_attempts: u32) -> NotifySettings {
    let mut s = NotifySettings::new(url, SECRET);
    s.timeout = Duration::from_secs(2);
    s.max_attempts = max_attempts;
    s.backoff_base = Duration::from_millis(40);
    s.backoff_max = Duration::from_millis(200);
    s.poll_interval = Duration::from_millis(50);
    s
}

/// A receiver on SQLite whose worker notifies with `settings`, its keys loaded.
async fn app_with_hook(settings: NotifySettings) -> TestApp {
    TestApp::sqlite()
        .notify(settings)
        .wait_for_keys()
        .start()
        .await
}

/// Waits until the notification counts are `done` (or panics after `within`).
async fn wait_for_counts(
    app: &TestApp,
    within: Duration,
    done: impl Fn(&NotificationCounts) -> bool,
) {
    let counts = async || app.store.notification_counts().await.unwrap();
    eventually(within, "notification counts", counts, done).await;
}

async fn wait_until_delivered(app: &TestApp, n: i64) {
    wait_for_counts(app, Duration::from_secs(15), |c| c.delivered >= n).await;
}

fn json(r: &Received) -> serde_json::Value {
    serde_json::from_slice(&r.body).expect("the body is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_revoked_token_is_notified_once_signed_and_without_the_token() {
    let hook = Webhook::start().await;
    let app = app_with_hook(fast(&hook.url, 5)).await;
    let a = app.mint("alice/crate-a", Ttl::hours(1)).await;
    let b = app.mint("bob/crate-b", Ttl::hours(1)).await;
    let unknown = Token::generate();

    // a twice in one delivery, b once, an unknown token; then the same delivery again.
    let body = serde_json::to_vec(&serde_json::json!([
        {"token": a.expose_secret(), "type": "cio_tp", "url": "https://github.com/o/r/blob/main/ci.yml", "source": "content"},
        {"token": a.expose_secret(), "type": "cio_tp", "url": "https://github.com/o/r/issues/7", "source": "issue"},
        {"token": b.expose_secret(), "type": "cio_tp", "url": "https://github.com/o/r/blob/main/.env", "source": "content"},
        {"token": unknown.expose_secret(), "type": "cio_tp", "url": "https://github.com/o/r/blob/main/x", "source": "content"},
    ]))
    .unwrap();
    let first = app.deliver(&Signer::test(), body.clone()).await;
    assert_eq!(
        first.labels(),
        [
            "true_positive",
            "true_positive",
            "true_positive",
            "false_positive"
        ]
    );
    let again = app.deliver(&Signer::test(), body).await;
    assert_eq!(again.status, 200);

    let got = hook.wait_for(2).await;
    wait_until_delivered(&app, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // nothing more arrives
    let got_later = hook.received();
    assert_eq!(got_later.len(), 2, "{got_later:?}");

    let by_owner: HashMap<String, &Received> = got
        .iter()
        .map(|r| (json(r)["owner"].as_str().unwrap().to_owned(), r))
        .collect();
    let ra = by_owner["alice/crate-a"];
    let pa = json(ra);
    assert!(ra.signature_ok, "HMAC-SHA256 over the body verifies");
    assert_eq!(ra.attempt, "1");
    assert_eq!(pa["event"], "token.revoked");
    // The key is the notification's public id: a UUIDv7 minted by the database, the
    // same in the header and the body (not the per-database row number).
    assert_eq!(pa["id"].as_str(), Some(ra.idempotency_key.as_str()));
    assert!(is_uuid_v7(&ra.idempotency_key), "{}", ra.idempotency_key);
    assert_eq!(pa["token"]["type"], "cio_tp");
    assert_eq!(pa["token"]["hash_prefix"], a.hash().prefix());
    assert_eq!(pa["token"]["sha256"], a.hash().to_hex());
    assert_eq!(pa["found"]["scanner"], "github");
    // Where it was first named in the delivery.
    assert_eq!(
        pa["found"]["url"],
        "https://github.com/o/r/blob/main/ci.yml"
    );
    assert_eq!(pa["found"]["source"], "content");
    assert_eq!(pa["expired"], false);
    assert_eq!(pa["report_id"], 1);
    assert!(by_owner["bob/crate-b"].signature_ok);
    assert_ne!(by_owner["bob/crate-b"].idempotency_key, ra.idempotency_key);
    for r in &got {
        let text = String::from_utf8_lossy(&r.body);
        for t in [&a, &b, &unknown] {
            assert!(!text.contains(t.expose_secret()), "raw token in {text}");
            assert!(!text.contains(&t.expose_secret()[7..37]));
        }
    }

    let stats = app.admin_get("/api/stats", None).await;
    assert_eq!(
        stats.json["notifications"]["delivered"], 2,
        "{}",
        stats.text
    );
    assert_eq!(stats.json["notifications"]["pending"], 0);
    let m = app.admin_get("/metrics", None).await.text;
    assert!(
        m.contains(r#"revoker_notification_attempts_total{result="delivered"} 2"#),
        "{m}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_is_down_then_up_gets_the_notification_after_retries() {
    // A port nothing listens on yet: connection refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/owner-hook");
    let app = app_with_hook(fast(&url, 20)).await;
    let t = app.mint("carol/pkg", Ttl::hours(1)).await;
    let a = app
        .deliver(&Signer::test(), alert_body(&[t.expose_secret()]))
        .await;
    assert_eq!(a.labels(), ["true_positive"]);

    // Attempts fail while nothing listens.
    let first = async || app.store.list_notifications(None, 10).await.unwrap()[0].clone();
    let n = eventually(Duration::from_secs(10), "no retries", first, |n| {
        n.attempts >= 2
    })
    .await;
    assert_eq!(n.status, NotificationStatus::Pending);
    let error = n.last_error.clone().unwrap();
    assert!(error.contains("request failed"), "{error}");
    assert!(
        !error.contains(&url),
        "the webhook URL is kept out: {error}"
    );
    // Up, but answering 503 twice first.
    let hook = Hook::default();
    hook.fail_first.store(2, Ordering::SeqCst);
    let webhook = Webhook::start_on(port, hook).await;
    let got = webhook.wait_for(3).await;
    wait_until_delivered(&app, 1).await;
    assert_eq!(got.len(), 3, "two 503s, then delivered: {got:?}");
    // Every attempt is the same notification: same key, same bytes, valid signature.
    assert!(got
        .iter()
        .all(|r| r.idempotency_key == got[0].idempotency_key));
    assert!(got.iter().all(|r| r.body == got[0].body && r.signature_ok));
    let attempts: Vec<u32> = got.iter().map(|r| r.attempt.parse().unwrap()).collect();
    assert!(
        attempts.windows(2).all(|w| w[1] == w[0] + 1),
        "{attempts:?}"
    );
    let n = &app.store.list_notifications(None, 10).await.unwrap()[0];
    assert_eq!(n.status, NotificationStatus::Delivered);
    assert!(n.delivered_at.is_some());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_failing_webhook_marks_the_notification_failed_until_retried() {
    let hook = Webhook::start().await;
    hook.hook.always_fail.store(true, Ordering::SeqCst);
    let app = app_with_hook(fast(&hook.url, 3)).await;
    let t = app.mint("dave/pkg", Ttl::hours(1)).await;
    app.deliver(&Signer::test(), alert_body(&[t.expose_secret()]))
        .await;

    wait_for_counts(&app, Duration::from_secs(10), |c| c.failed == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hook.received().len(), 3, "exactly the attempt limit");
    let n = &app
        .store
        .list_notifications(Some(NotificationStatus::Failed), 10)
        .await
        .unwrap()[0];
    assert_eq!(n.attempts, 3);
    assert_eq!(n.last_error.as_deref(), Some("webhook answered HTTP 500"));
    let stats = app.admin_get("/api/stats", None).await;
    assert_eq!(stats.json["notifications"]["failed"], 1, "{}", stats.text);
    let m = app.admin_get("/metrics", None).await.text;
    assert!(
        m.contains(r#"revoker_notification_attempts_total{result="retry"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"revoker_notification_attempts_total{result="failed"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"revoker_notifications{status="failed"} 1"#),
        "{m}"
    );
    let db = app.stop_keeping_db().await;

    // The operator's view and tools, through the binary.
    let list = revoker_command()
        .args(["notify", "list", "--failed", "--database-url", db.url()])
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("failed") && text.contains("webhook answered HTTP 500"),
        "{text}"
    );
    assert!(text.contains(&t.hash().prefix()), "{text}");
    assert!(!text.contains(t.expose_secret()));
    // The operator sees the id the webhook got.
    assert!(text.contains(&hook.received()[0].idempotency_key), "{text}");

    // Still failing: `notify run` has nothing due, and says one is failed (exit 1).
    let run = |extra: &[&str]| {
        revoker_command()
            .args(["notify", "run", "--database-url", db.url()])
            .args(["--notify-webhook", &hook.url, "--notify-secret", SECRET])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 failed"));

    hook.hook.always_fail.store(false, Ordering::SeqCst);
    let retry = revoker_command()
        .args(["notify", "retry", "--failed", "--database-url", db.url()])
        .output()
        .unwrap();
    assert!(retry.status.success());
    assert!(String::from_utf8_lossy(&retry.stdout).contains("re-queued 1"));
    let out = run(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("delivered 1"));
    let got = hook.received();
    assert_eq!(got.len(), 4);
    assert_eq!(got[3].attempt, "1", "re-queued with a fresh attempt count");
    assert_eq!(got[3].idempotency_key, got[0].idempotency_key);
    // A delivered notification is not sent again.
    let id = got[0].idempotency_key.clone();
    let again = revoker_command()
        .args(["notify", "retry", &id, "--database-url", db.url()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already delivered"));
    // Its row number names it too; an id of no notification is refused.
    let retry = |id: &str| {
        revoker_command()
            .args(["notify", "retry", id, "--database-url", db.url()])
            .output()
            .unwrap()
    };
    let by_row = retry("1");
    assert!(String::from_utf8_lossy(&by_row.stderr).contains("already delivered"));
    let unknown = retry("01890000-0000-7000-8000-000000000000");
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr)
            .contains("no notification 01890000-0000-7000-8000-000000000000"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
}

/// Shutdown while a notification is on the wire: the worker finishes the send and
/// records it before the application returns, instead of leaving the row leased (and
/// sent again after the lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_the_send_in_flight_and_records_it() {
    let hook = Webhook::start().await;
    hook.hook.delay_ms.store(1500, Ordering::SeqCst);
    let app = app_with_hook(fast(&hook.url, 5)).await;
    let store = Arc::clone(&app.store);
    let token = app.mint("carol/crate-c", Ttl::hours(1)).await;
    let answer = app
        .deliver(&Signer::test(), alert_body(&[token.expose_secret()]))
        .await;
    assert_eq!(answer.labels(), ["true_positive"]);
    hook.wait_for(1).await; // on the wire: the webhook answers in 1.5 s

    let stopping = Instant::now();
    let db = app.stop_keeping_db().await;
    let waited = stopping.elapsed();
    let rows = store.list_notifications(None, 10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].status, rows[0].attempts, rows[0].locked_until),
        (NotificationStatus::Delivered, 1, None),
        "recorded before the application returned"
    );
    assert!(
        waited >= Duration::from_millis(500),
        "stopped after {waited:?}"
    );
    assert!(waited < Duration::from_secs(10), "stopped after {waited:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hook.received().len(), 1, "and not sent again");
    db.cleanup().await;
}

/// Two receivers on one database, both running the worker against one webhook: 40
/// tokens, each reported through both instances twice, give 40 notifications, each
/// received exactly once.
async fn two_instances_notify_each_token_once(kind: Kind) {
    let hook = Webhook::start().await;
    let notifying = TestApp::builder(kind).notify(fast(&hook.url, 5));
    let Some(one) = notifying.wait_for_keys().start_or_skip().await else {
        return;
    };
    let two = one.another().await;
    let tokens = mint_many(one.store.as_ref(), "shared/pkg", 40, Ttl::hours(1)).await;
    let raw: Vec<&str> = tokens.iter().map(Token::expose_secret).collect();
    let signer = Signer::test();
    let mut sends = Vec::new();
    for chunk in raw.chunks(10) {
        for app in [&one, &two, &one, &two] {
            sends.push(app.deliver(&signer, alert_body(chunk)));
        }
    }
    for a in futures::future::join_all(sends).await {
        assert_eq!(a.labels(), vec!["true_positive"; 10]);
    }
    wait_until_delivered(&one, 40).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = hook.received();
    let mut keys_seen: HashMap<String, usize> = HashMap::new();
    for r in &got {
        *keys_seen.entry(r.idempotency_key.clone()).or_default() += 1;
    }
    assert_eq!(keys_seen.len(), 40);
    assert!(keys_seen.values().all(|&n| n == 1), "{keys_seen:?}");
    let prefixes: std::collections::HashSet<String> = got
        .iter()
        .map(|r| json(r)["token"]["hash_prefix"].as_str().unwrap().to_owned())
        .collect();
    let expected: std::collections::HashSet<String> =
        tokens.iter().map(|t| t.hash().prefix()).collect();
    assert_eq!(prefixes, expected);
    let problems = one.db().inconsistencies().await;
    assert!(problems.is_empty(), "{problems:?}");
    two.stop().await;
    one.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_postgres_notify_each_token_once() {
    two_instances_notify_each_token_once(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_sqlite_notify_each_token_once() {
    two_instances_notify_each_token_once(Kind::Sqlite).await;
}

#[test]
fn serve_refuses_half_or_unsafe_notification_settings() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("r.db").display());
    let serve = |extra: &[&str]| {
        let out = serve_command(&db).args(extra).output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(serve(&["--notify-webhook", "https://hooks.example.com/x"]).contains("--notify-secret"));
    assert!(serve(&["--notify-secret", "s"]).contains("--notify-webhook is not"));
    assert!(serve(&[
        "--notify-webhook",
        "http://hooks.example.com/x",
        "--notify-secret",
        "s"
    ])
    .contains("https"));
}

/// `revoker notify retry` on a notification a worker is sending (its lease runs) is
/// refused, naming when the lease ends, and leaves the row as it was: the worker's
/// result is still the one recorded.
/// Checked against dropping the lease check from `notify retry` (the row is re-queued
/// with a fresh attempt count while the worker still holds it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_refuses_a_notification_being_sent() {
    let app = TestApp::sqlite().wait_for_keys().start().await;
    let t = app.mint("erin/pkg", Ttl::hours(1)).await;
    let answer = app
        .deliver(&Signer::test(), alert_body(&[t.expose_secret()]))
        .await;
    assert_eq!(answer.labels(), ["true_positive"]);
    let store = Arc::clone(&app.store);
    let db = app.stop_keeping_db().await;
    // A worker's claim: leased for an hour, one attempt counted.
    let claimed = store
        .claim_notifications(
            revoker::store::Clock::Database,
            Duration::from_secs(3600),
            10,
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let before = store.list_notifications(None, 10).await.unwrap();

    let out = revoker_command()
        .args(["notify", "retry", &claimed[0].public_id])
        .args(["--database-url", db.url()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("being sent right now"), "{stderr}");
    let after = store.list_notifications(None, 10).await.unwrap();
    assert_eq!(after, before, "the row is untouched");
    assert_eq!(after[0].attempts, 1);
    assert_eq!(after[0].status, NotificationStatus::Pending);
}

/// `serve`/`notify run` flags sending to `hook` with a per-request timeout.
fn notify_args<'a>(hook: &'a Webhook, timeout: &'a str) -> [&'a str; 6] {
    [
        "--notify-webhook",
        &hook.url,
        "--notify-secret",
        SECRET,
        "--notify-timeout",
        timeout,
    ]
}

/// `revoker notify run` (a second worker, as a real process): whether it exited 0,
/// and what it printed.
fn notify_run(db: &TestDb, hook: &Webhook) -> (bool, String) {
    let out = tokio::task::block_in_place(|| {
        revoker_command()
            .args(["notify", "run", "--database-url", db.url()])
            .args(notify_args(hook, "5s"))
            .output()
            .unwrap()
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The one notification in the database.
async fn only_notification(db: &TestDb) -> revoker::store::Notification {
    let rows = open_store(db.url())
        .await
        .list_notifications(None, 10)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows.into_iter().next().unwrap()
}

/// A `serve` process on `db` notifying `hook`, and one live token delivered to it
/// (answered `true_positive`).
async fn serve_and_revoke_one(db: &TestDb, args: &[&str]) -> ServeProcess {
    let server = ServeProcess::start(db.url(), args, false);
    let store = open_store(db.url()).await;
    let token = mint_many(store.as_ref(), "worker/pkg", 1, Ttl::hours(1)).await;
    let answer = server
        .deliver(&Signer::test(), alert_body(&[token[0].expose_secret()]))
        .await;
    assert_eq!(answer.labels(), ["true_positive"]);
    server
}

/// Row 11f, for real: the worker of a `serve` process is killed (SIGKILL) while the
/// webhook holds its request. The row stays leased for 2 × `--notify-timeout` + 30 s
/// from the claim, by the database; a second worker (`revoker notify run`) leaves it
/// alone until then, and after the lease takes it over and sends the same notification
/// again: same `Idempotency-Key`, byte-identical body, attempt 2.
/// The lease's end is moved an hour back instead of waiting its 40 s.
/// Checked against: a lease of 2 × `--notify-timeout` without the 30 s margin, and of
/// one timeout (`NotifySettings::lease`); both fail the lease-length assertion.
async fn a_worker_killed_mid_send_is_taken_over_after_its_lease(kind: Kind) {
    let Some(db) = TestDb::new(kind).await else {
        return;
    };
    let hook = Webhook::start().await;
    hook.hook.delay_ms.store(120_000, Ordering::SeqCst); // holds the first request
    let sent = chrono::Utc::now();
    let server = serve_and_revoke_one(&db, &notify_args(&hook, "5s")).await;
    let first = hook.wait_for(1).await.remove(0);
    let received = chrono::Utc::now();
    tokio::task::block_in_place(|| server.kill());

    let row = only_notification(&db).await;
    assert_eq!((row.status, row.attempts), (NotificationStatus::Pending, 1));
    let lease_end = row.locked_until.expect("still leased by the dead worker");
    // Claimed between `sent` and `received`.
    let lease = Ttl::seconds(2 * 5 + 30);
    let slack = Ttl::milliseconds(50);
    assert!(
        lease_end - received <= lease + slack && lease_end - sent >= lease - slack,
        "lease ends {lease_end}, claimed between {sent} and {received}"
    );

    let (ok, out) = notify_run(&db, &hook);
    assert!(!ok && out.contains("delivered 0"), "{out}");
    assert_eq!(
        hook.received().len(),
        1,
        "not taken over before the lease ends"
    );

    let moved = match kind {
        Kind::Sqlite => {
            db.execute("UPDATE notifications SET locked_until = locked_until - 3600000")
                .await
        }
        Kind::Postgres => {
            db.execute("UPDATE notifications SET locked_until = locked_until - interval '1 hour'")
                .await
        }
    };
    assert_eq!(moved, 1);
    hook.hook.delay_ms.store(0, Ordering::SeqCst);
    let (ok, out) = notify_run(&db, &hook);
    assert!(ok && out.contains("delivered 1"), "{out}");
    let got = hook.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].idempotency_key, first.idempotency_key);
    assert_eq!(got[1].body, first.body, "byte-identical");
    assert_eq!((got[1].attempt.as_str(), got[1].signature_ok), ("2", true));
    let row = only_notification(&db).await;
    assert_eq!(
        (row.status, row.attempts, row.locked_until),
        (NotificationStatus::Delivered, 2, None)
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_send_on_sqlite_is_taken_over_after_its_lease() {
    a_worker_killed_mid_send_is_taken_over_after_its_lease(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_send_on_postgres_is_taken_over_after_its_lease() {
    a_worker_killed_mid_send_is_taken_over_after_its_lease(Kind::Postgres).await;
}

/// Row 11h, for real: SIGTERM to `serve` while its worker waits for the webhook's
/// answer (1.5 s). The process exits only after the send is answered and recorded:
/// delivered, one attempt, no lease left, sent once.
/// Checked against: `run_until_stopped` not waiting for the worker task (the process
/// exits with the row leased and pending, to be sent again after the lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_notification_in_flight_finish_and_records_it() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let hook = Webhook::start().await;
    hook.hook.delay_ms.store(1500, Ordering::SeqCst);
    let mut args = notify_args(&hook, "5s").to_vec();
    args.extend(["--shutdown-timeout", "20s"]);
    let mut server = serve_and_revoke_one(&db, &args).await;
    hook.wait_for(1).await;
    server.terminate();
    let logs = tokio::task::block_in_place(|| server.wait_for_exit());
    assert!(logs.contains("delivery worker stopped"), "{logs}");
    let row = only_notification(&db).await;
    assert_eq!(
        (row.status, row.attempts, row.locked_until),
        (NotificationStatus::Delivered, 1, None),
        "{logs}"
    );
    assert_eq!(hook.received().len(), 1);
    db.cleanup().await;
}

/// Row 11h's cut-off, for real: the webhook never answers within the
/// `--shutdown-timeout` (1 s; the request's own timeout is 60 s). SIGTERM ends the
/// process about 1 s later, saying so; the row stays pending under its lease, to be
/// sent again once the lease has run out (the at-least-once of 11f).
/// Checked against: no shutdown deadline (the process waits for the 60 s request
/// timeout and the exit-time assertion fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cuts_a_hanging_notification_off_at_the_shutdown_timeout() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let hook = Webhook::start().await;
    hook.hook.delay_ms.store(120_000, Ordering::SeqCst);
    let mut args = notify_args(&hook, "60s").to_vec();
    args.extend(["--shutdown-timeout", "1s"]);
    let mut server = serve_and_revoke_one(&db, &args).await;
    hook.wait_for(1).await;
    let signalled = Instant::now();
    server.terminate();
    let logs = tokio::task::block_in_place(|| server.wait_for_exit());
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "exited {took:?} after SIGTERM"
    );
    assert!(
        logs.contains("did not finish within the shutdown timeout"),
        "{logs}"
    );
    let row = only_notification(&db).await;
    assert_eq!((row.status, row.attempts), (NotificationStatus::Pending, 1));
    let lease_left = row.locked_until.expect("leased") - chrono::Utc::now();
    assert!(
        lease_left > Ttl::seconds(100) && lease_left <= Ttl::seconds(150),
        "{lease_left}"
    );
    db.cleanup().await;
}
