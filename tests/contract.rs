//! The receiver's contract, run against both stores: every test here runs once on
//! SQLite (`sqlite::name`) and once on PostgreSQL (`postgres::name`).

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Duration as Ttl;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;
use revoker::domain::alert::{CandidateItem, NewReport};
use revoker::domain::token::{Token, TokenHash};
use revoker::domain::Outcome;
use revoker::signature::ScannerSpec;
use revoker::store::{
    AttemptResult, Clock, DayTotals, NewToken, Notification, NotificationCounts,
    NotificationStatus, RecentItem, RecentReport, RecordOptions, RecordedReport, Requeue,
    RevocationAges, RevocationStore, ScannerTotals, SourceTotals, Stats, StoreError, Totals,
    ONCE_PER_BODY_WINDOW,
};

async fn run<F, Fut>(kind: Kind, test: F)
where
    F: FnOnce(Arc<TestDb>) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(db) = TestDb::new(kind).await else {
        return;
    };
    run_on(db, test).await
}

/// [`run`] on an empty database (no migration applied), for the tests about migrating.
async fn run_empty<F, Fut>(kind: Kind, test: F)
where
    F: FnOnce(Arc<TestDb>) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(db) = TestDb::empty(kind).await else {
        return;
    };
    run_on(db, test).await
}

/// PostgreSQL behind a real PgBouncer in transaction mode with two server connections
/// (so the app's and the test's pools meet on them), revoker told so (`--db-pooler
/// transaction`, migrations over the direct URL).
async fn run_pooled<F, Fut>(test: F)
where
    F: FnOnce(Arc<TestDb>) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(db) = TestDb::pooled(2).await else {
        return;
    };
    run_on(db, test).await
}

async fn run_on<F, Fut>(db: TestDb, test: F)
where
    F: FnOnce(Arc<TestDb>) -> Fut,
    Fut: Future<Output = ()>,
{
    let db = Arc::new(db);
    test(Arc::clone(&db)).await;
    if let Ok(db) = Arc::try_unwrap(db) {
        db.cleanup().await;
    }
}

/// Every test on SQLite (`sqlite::name`) and PostgreSQL (`postgres::name`); those
/// under `pooled` also on PostgreSQL behind a real PgBouncer in transaction mode
/// (`pooled::name`): every one whose subject is what the database does (not the HTTP
/// front, signatures or keys), except those about migrating (which goes over a direct
/// URL: tests/pooler.rs), about two databases, and those that take PostgreSQL down
/// (`Outage`): behind a pooler the database coming back is the pooler's to notice
/// (`server_login_retry`), and the pooler going away and coming back is
/// tests/pooler.rs's. Those under `empty` start from an empty database (they migrate
/// it themselves, step by step); the others from a migrated one ([`TestDb::new`]).
macro_rules! contract {
    (
        pooled: [$($p:ident),* $(,)?],
        direct: [$($d:ident),* $(,)?],
        empty: [$($e:ident),* $(,)?] $(,)?
    ) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $p() {
                    super::run(super::Kind::Sqlite, super::$p).await
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $d() {
                    super::run(super::Kind::Sqlite, super::$d).await
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $e() {
                    super::run_empty(super::Kind::Sqlite, super::$e).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $p() {
                    super::run(super::Kind::Postgres, super::$p).await
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $d() {
                    super::run(super::Kind::Postgres, super::$d).await
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $e() {
                    super::run_empty(super::Kind::Postgres, super::$e).await
                }
            )*
        }
        mod pooled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $p() {
                    super::run_pooled(super::$p).await
                }
            )*
        }
    };
}

contract!(
    pooled: [
        bulk_insert_is_all_or_nothing,
        a_delivery_of_more_candidates_than_sqlite_binds_revokes_each,
        import_stores_only_new_hashes_and_answers_what_is_stored,
        nul_characters_in_open_strings_never_block_revocation,
        every_string_is_stored_as_sent_whatever_it_holds,
        revokes_minted_token_and_labels_every_item,
        second_identical_delivery_revokes_nothing_twice,
        expired_token_is_revoked_as_true_positive,
        same_token_twice_in_one_batch_is_revoked_once,
        non_candidates_never_reach_the_database,
        two_instances_racing_revoke_each_token_exactly_once,
        no_raw_token_is_stored,
        preview_reports_without_writing,
        stats_match_a_known_sequence_of_deliveries,
        stats_cap_recent_reports_items_and_sources,
        stats_on_an_empty_database,
        a_delivery_queues_one_notification_per_token_it_flips,
        claims_lease_due_notifications_and_count_attempts,
        finished_and_requeued_notifications_change_what_claims_see,
        after_a_takeover_a_late_success_counts_and_a_late_retry_does_not,
        concurrent_claimers_on_two_stores_never_share_a_notification,
        outbox_batches_turned_on_two_stores_notify_each_token_once,
        a_transaction_of_the_outbox_turns_about_5000_notifications,
        a_repeated_body_is_one_report_within_the_window,
        a_repeat_recorded_without_its_tokens_found_inside_records_them,
        a_repeat_whose_token_a_newly_enabled_format_takes_records_it,
        identical_bodies_racing_on_two_instances_leave_one_report,
        a_record_past_its_deadline_is_rolled_back_by_the_database,
        the_retention_purge_removes_old_metadata_everywhere_and_keeps_the_counts,
        the_retention_purge_goes_in_batches_bounded_by_reports_and_items,
        a_scanner_url_that_reads_purged_does_not_keep_the_source,
        the_retention_pass_deletes_body_claims_past_their_week,
    ],
    direct: [
        a_delivery_past_its_deadline_gets_503_and_writes_nothing,
        empty_array_is_answered_with_empty_feedback,
        forged_deliveries_get_401_and_record_nothing,
        missing_or_malformed_signature_headers_get_401,
        signed_but_malformed_body_gets_400_and_records_nothing,
        unknown_scanner_paths_and_methods_get_json_errors,
        oversized_bodies_get_413_without_being_read,
        key_source_down_without_cached_keys_gets_503,
        database_unavailable_gets_503_then_retry_gets_full_answer,
        openssl_signed_fixture_is_accepted_from_a_key_file,
        a_failed_record_report_queues_no_notification,
        notification_ids_are_uuids_distinct_across_databases,
        the_consistency_check_finds_rows_of_no_report,
        the_outbox_is_read_on_a_database_without_batches,
        an_older_binary_still_records_its_token_ages,
    ],
    empty: [
        migrating_a_database_with_notifications_gives_each_its_own_id,
        dropping_the_foreign_keys_keeps_every_row,
    ],
);

async fn app_for(db: &TestDb) -> (TestApp, KeyServer) {
    let keys = KeyServer::with_test_keys().await;
    let app = spawn_app(db, &keys, TestOptions::default()).await;
    (app, keys)
}

async fn revokes_minted_token_and_labels_every_item(db: Arc<TestDb>) {
    let (app, _keys) = app_for(&db).await;
    let live = app.mint("alice/my-crate", Ttl::minutes(30)).await;
    let unknown = Token::generate();
    let body = alert_body(&[
        "junk",
        live.expose_secret(),
        unknown.expose_secret(),
        "cio_tp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa000000",
    ]);
    let answer = app.deliver(&Signer::test(), body).await;
    assert_eq!(
        answer.labels(),
        [
            "false_positive",
            "true_positive",
            "false_positive",
            "false_positive"
        ]
    );
    let entries = answer.json.as_array().unwrap();
    assert_eq!(entries[1]["token_hash"], live.hash().to_hex());
    assert_eq!(entries[0]["token_hash"], TokenHash::of("junk").to_hex());
    assert_eq!(entries[1]["token_type"], "cio_tp");
    assert!(entries.iter().all(|e| e.get("token_raw").is_none()));

    let stored = app.store.token(&live.hash()).await.unwrap().unwrap();
    let report_id = stored.revoked_by.expect("revoked by the report");
    assert!(stored.revoked_at.is_some());
    assert_eq!(stored.owner, "alice/my-crate");

    let report = app.store.report(report_id).await.unwrap().unwrap();
    assert_eq!(report.scanner, "github");
    assert_eq!(report.key_id, KEY_ID);
    assert_eq!(report.item_count, 4);
    assert_eq!(report.counts.revoked, 1);
    assert_eq!(report.counts.unknown, 1);
    assert_eq!(report.counts.not_ours, 2);

    let items = app.store.report_items(report_id).await.unwrap();
    assert_eq!(items.len(), 2, "only candidates are stored as items");
    assert_eq!(items[0].position, 1);
    assert_eq!(items[0].outcome, Outcome::Revoked);
    assert_eq!(items[0].token_hash, live.hash());
    assert_eq!(
        items[0].url,
        "https://github.com/example/repo/blob/main/file1.txt"
    );
    assert_eq!(items[0].source, "content");
    assert_eq!(items[1].position, 2);
    assert_eq!(items[1].outcome, Outcome::Unknown);
    app.stop().await;
}

/// The scanner's retry of a body (after a 5xx, a timeout, a lost answer) is answered
/// from the first report and records nothing; a new body naming the same token is a
/// report of its own (`already_revoked`).
async fn second_identical_delivery_revokes_nothing_twice(db: Arc<TestDb>) {
    let (app, _keys) = app_for(&db).await;
    let t = app.mint("bob/pkg", Ttl::minutes(30)).await;
    let body = alert_body(&[t.expose_secret(), "junk"]);
    let signer = Signer::test();
    let first = app.deliver(&signer, body.clone()).await;
    let after_first = app.store.token(&t.hash()).await.unwrap().unwrap();
    let second = app.deliver(&signer, body.clone()).await;
    assert_eq!(first.labels(), second.labels());
    assert_eq!(first.json, second.json);
    let after_second = app.store.token(&t.hash()).await.unwrap().unwrap();
    assert_eq!(after_first.revoked_at, after_second.revoked_at);
    assert_eq!(after_first.revoked_by, after_second.revoked_by);
    assert_eq!(
        app.store.count_reports().await.unwrap(),
        1,
        "the same body is recorded once"
    );

    // The same token in another body: a second report, already revoked.
    let other = alert_body(&["junk", t.expose_secret()]);
    let third = app.deliver(&signer, other).await;
    assert_eq!(third.labels(), ["false_positive", "true_positive"]);
    assert_eq!(app.store.count_reports().await.unwrap(), 2);
    // (PostgreSQL takes an id from the sequence for the repeat too, and keeps it.)
    let first_id = after_first.revoked_by.unwrap();
    let mut second_report = None;
    for id in first_id + 1..first_id + 3 {
        second_report = second_report.or(app.store.report(id).await.unwrap());
    }
    let second_report = second_report.expect("second report row");
    assert_eq!(second_report.counts.revoked, 0);
    assert_eq!(second_report.counts.already_revoked, 1);
    app.stop().await;
}

async fn expired_token_is_revoked_as_true_positive(db: Arc<TestDb>) {
    let (app, _keys) = app_for(&db).await;
    let expired = app.mint("carol/pkg", Ttl::minutes(-5)).await;
    let answer = app
        .deliver(&Signer::test(), alert_body(&[expired.expose_secret()]))
        .await;
    assert_eq!(answer.labels(), ["true_positive"]);
    let stored = app.store.token(&expired.hash()).await.unwrap().unwrap();
    assert!(
        stored.revoked_at.is_some(),
        "expired tokens are revoked too"
    );
    let report = app
        .store
        .report(stored.revoked_by.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.counts.expired, 1);
    assert_eq!(report.counts.revoked, 0);
    app.stop().await;
}

async fn same_token_twice_in_one_batch_is_revoked_once(db: Arc<TestDb>) {
    let (app, _keys) = app_for(&db).await;
    let t = app.mint("dave/pkg", Ttl::minutes(30)).await;
    let answer = app
        .deliver(
            &Signer::test(),
            alert_body(&[t.expose_secret(), t.expose_secret()]),
        )
        .await;
    assert_eq!(answer.labels(), ["true_positive", "true_positive"]);
    let stored = app.store.token(&t.hash()).await.unwrap().unwrap();
    let items = app
        .store
        .report_items(stored.revoked_by.unwrap())
        .await
        .unwrap();
    assert_eq!(items.len(), 2, "both items recorded");
    assert!(items.iter().all(|i| i.token_hash == t.hash()));
    assert_eq!(app.store.count_reports().await.unwrap(), 1);
    app.stop().await;
}

async fn non_candidates_never_reach_the_database(db: Arc<TestDb>) {
    let (app, _keys) = app_for(&db).await;
    let mut junk: Vec<String> = (0..500).map(|i| format!("junk-{i}")).collect();
    // Right prefix, length and alphabet, wrong check digits.
    for _ in 0..500 {
        let t = Token::generate();
        let mut s = t.expose_secret().to_owned();
        let last = s.pop().unwrap();
        s.push(if last == 'A' { 'B' } else { 'A' });
        junk.push(s);
    }
    let refs: Vec<&str> = junk.iter().map(String::as_str).collect();
    let before = app.store.statements();
    let answer = app.deliver(&Signer::test(), alert_body(&refs)).await;
    assert_eq!(answer.labels().len(), 1000);
    assert!(answer.labels().iter().all(|l| l == "false_positive"));
    assert_eq!(
        app.store.statements(),
        before,
        "no statement for non-candidates"
    );
    assert_eq!(app.store.count_reports().await.unwrap(), 0);
    app.stop().await;
}

async fn empty_array_is_answered_with_empty_feedback(db: Arc<TestDb>) {
    let (app, _keys) = app_for(&db).await;
    let answer = app.deliver(&Signer::test(), b"[]".to_vec()).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json, serde_json::json!([]));
    app.stop().await;
}

async fn forged_deliveries_get_401_and_record_nothing(db: Arc<TestDb>) {
    let (app, keys) = app_for(&db).await;
    let t = app.mint("erin/pkg", Ttl::minutes(30)).await;
    let signer = Signer::test();
    let mut body = alert_body(&[t.expose_secret()]);
    body.push(b'\n');
    let sig = signer.sign(&body);

    // One byte changed (inside the URL, so the JSON stays valid).
    let mut changed = body.clone();
    let pos = changed.windows(4).position(|w| w == b"file").unwrap();
    changed[pos] = b'F';
    let a = app.post("github", Some(KEY_ID), Some(&sig), changed).await;
    assert_eq!((a.status, a.error_code()), (401, "bad_signature"));

    // Trailing newline removed.
    let trimmed = body[..body.len() - 1].to_vec();
    let a = app.post("github", Some(KEY_ID), Some(&sig), trimmed).await;
    assert_eq!((a.status, a.error_code()), (401, "bad_signature"));

    // Signed by another key, claiming the trusted key id.
    let other = Signer::from_fixture("keys/other-key.pem", KEY_ID);
    let a = app.deliver(&other, body.clone()).await;
    assert_eq!((a.status, a.error_code()), (401, "bad_signature"));

    // Unknown key id while a refetch is rate-limited (the start-up fetch was just now):
    // "retry later", never a final 401 that could drop a freshly rotated key's alert.
    app.keys_attempted("github").await;
    let fetches = keys.fetches();
    let a = app
        .post("github", Some("no-such-key"), Some(&sig), body.clone())
        .await;
    assert_eq!((a.status, a.error_code()), (503, "keys_unavailable"));
    assert_eq!(
        keys.fetches(),
        fetches,
        "no fetch inside the refetch interval"
    );

    // The untouched delivery still works afterwards: nothing was recorded before it.
    assert_eq!(app.store.count_reports().await.unwrap(), 0);
    assert!(!app.is_revoked(&t).await);
    let a = app.post("github", Some(KEY_ID), Some(&sig), body).await;
    assert_eq!(a.labels(), ["true_positive"]);
    app.stop().await;
}

async fn missing_or_malformed_signature_headers_get_401(db: Arc<TestDb>) {
    let (app, _keys) = app_for(&db).await;
    let body = alert_body(&["junk"]);
    let sig = Signer::test().sign(&body);
    for (key_id, signature) in [
        (None, Some(sig.as_str())),
        (Some(KEY_ID), None),
        (None, None),
        (Some(KEY_ID), Some("%%%not-base64%%%")),
        (Some(KEY_ID), Some("aGVsbG8gd29ybGQ=")), // base64, but not DER
    ] {
        let a = app.post("github", key_id, signature, body.clone()).await;
        assert_eq!(a.status, 401, "{key_id:?} {signature:?}: {}", a.text);
        assert_eq!(a.error_code(), "bad_signature_header");
        assert!(a.json["message"].as_str().unwrap().len() > 10);
    }
    // Header names match case-insensitively (HTTP/1.1 lower-cases nothing for us).
    let resp = app
        .client
        .post(format!("{}/secret-scanning/github", app.base))
        .header("GITHUB-PUBLIC-KEY-IDENTIFIER", KEY_ID)
        .header("github-public-key-signature", &sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    app.stop().await;
}

async fn signed_but_malformed_body_gets_400_and_records_nothing(db: Arc<TestDb>) {
    let (app, _keys) = app_for(&db).await;
    let t = app.mint("frank/pkg", Ttl::minutes(30)).await;
    let signer = Signer::test();
    for body in [
        format!(r#"{{"token":"{}"}}"#, t.expose_secret()),
        format!(r#"["{}"]"#, t.expose_secret()),
        format!(r#"[{{"token":"{}","type":5}}]"#, t.expose_secret()),
        format!(r#"[{{"tokens":"{}"}}]"#, t.expose_secret()),
        format!(r#"[{{"token":"{}""#, t.expose_secret()),
        String::new(),
    ] {
        let a = app.deliver(&signer, body.clone().into_bytes()).await;
        assert_eq!(a.status, 400, "{body}: {}", a.text);
        assert_eq!(a.error_code(), "bad_body");
        assert!(
            !a.text.contains(t.expose_secret()),
            "error echoes the token"
        );
    }
    assert_eq!(app.store.count_reports().await.unwrap(), 0);
    assert!(!app.is_revoked(&t).await);
    app.stop().await;
}

async fn unknown_scanner_paths_and_methods_get_json_errors(db: Arc<TestDb>) {
    let (app, _keys) = app_for(&db).await;
    let body = alert_body(&["junk"]);
    let sig = Signer::test().sign(&body);
    let a = app.post("gitlab", Some(KEY_ID), Some(&sig), body).await;
    assert_eq!((a.status, a.error_code()), (404, "unknown_scanner"));
    let resp = app
        .client
        .get(format!("{}/nope", app.base))
        .send()
        .await
        .unwrap();
    let a = Answer::from(resp).await;
    assert_eq!((a.status, a.error_code()), (404, "not_found"));
    let resp = app
        .client
        .get(format!("{}/secret-scanning/github", app.base))
        .send()
        .await
        .unwrap();
    let a = Answer::from(resp).await;
    assert_eq!((a.status, a.error_code()), (405, "method_not_allowed"));
    app.stop().await;
}

async fn oversized_bodies_get_413_without_being_read(db: Arc<TestDb>) {
    let keys = KeyServer::with_test_keys().await;
    let app = spawn_app(
        &*db,
        &keys,
        TestOptions {
            max_body: 64 * 1024,
            ..TestOptions::default()
        },
    )
    .await;
    let signer = Signer::test();
    // Declared too large: refused from the Content-Length alone.
    let big = vec![b' '; 64 * 1024 + 1];
    let a = app.deliver(&signer, big).await;
    assert_eq!((a.status, a.error_code()), (413, "payload_too_large"));

    // Chunked, no Content-Length: refused once the limit is crossed, even though the
    // client announces far more (it never sends it all).
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /secret-scanning/github HTTP/1.1\r\nHost: {addr}\r\n\
         Github-Public-Key-Identifier: {KEY_ID}\r\nGithub-Public-Key-Signature: {}\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
        signer.sign(b"[]")
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 16 * 1024];
    let started = Instant::now();
    let mut sent = 0usize;
    // Keep sending until the server answers or 1 MiB is out: it must answer first.
    let mut buf = vec![0u8; 4096];
    let answer = loop {
        let write = async {
            stream
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            stream.write_all(&chunk).await?;
            stream.write_all(b"\r\n").await
        };
        if write.await.is_err() {
            break String::new();
        }
        sent += chunk.len();
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(20), stream.read(&mut buf)).await
        {
            break String::from_utf8_lossy(&buf[..n]).into_owned();
        }
        assert!(sent <= 1 << 20, "server read 1 MiB without refusing");
    };
    assert!(answer.starts_with("HTTP/1.1 413"), "got {answer:?}");
    assert!(sent < 1 << 20);
    assert!(started.elapsed() < Duration::from_secs(5));
    app.stop().await;
}

async fn key_source_down_without_cached_keys_gets_503(db: Arc<TestDb>) {
    let keys = KeyServer::start(KeyMode::Status(502)).await;
    let app = spawn_app(&*db, &keys, TestOptions::default()).await;
    let t = app.mint("gina/pkg", Ttl::minutes(30)).await;
    let a = app
        .deliver(&Signer::test(), alert_body(&[t.expose_secret()]))
        .await;
    assert_eq!((a.status, a.error_code()), (503, "keys_unavailable"));
    assert_eq!(a.retry_after.as_deref(), Some("7"));
    assert_eq!(app.store.count_reports().await.unwrap(), 0);
    assert!(!app.is_revoked(&t).await);
    app.stop().await;
}

async fn database_unavailable_gets_503_then_retry_gets_full_answer(db: Arc<TestDb>) {
    let keys = KeyServer::with_test_keys().await;
    let app = spawn_app(
        &*db,
        &keys,
        TestOptions {
            db_timeout: Duration::from_millis(700),
            ..TestOptions::default()
        },
    )
    .await;
    let t = app.mint("hank/pkg", Ttl::minutes(30)).await;
    let body = alert_body(&["junk", t.expose_secret()]);
    let signer = Signer::test();

    let outage = Outage::start(&db).await;
    let a = app.deliver(&signer, body.clone()).await;
    assert_eq!((a.status, a.error_code()), (503, "database_unavailable"));
    assert_eq!(a.retry_after.as_deref(), Some("7"));
    assert!(
        !a.text.contains("sqlx") && !a.text.contains("pool"),
        "internal cause leaked: {}",
        a.text
    );
    outage.end(&db).await;

    // Nothing of the refused delivery was written.
    assert_eq!(app.store.count_reports().await.unwrap(), 0);
    assert!(!app.is_revoked(&t).await);

    // The scanner's retry gets the complete answer.
    let a = app.deliver(&signer, body).await;
    assert_eq!(a.labels(), ["false_positive", "true_positive"]);
    assert!(app.is_revoked(&t).await);
    app.stop().await;
}

async fn openssl_signed_fixture_is_accepted_from_a_key_file(db: Arc<TestDb>) {
    let keys = KeyServer::start(KeyMode::Status(500)).await;
    let app = spawn_app(
        &*db,
        &keys,
        TestOptions {
            extra_scanners: vec![ScannerSpec {
                name: "local".into(),
                source: fixture("keys/test-keys.json").display().to_string(),
            }],
            ..TestOptions::default()
        },
    )
    .await;
    let body = std::fs::read(fixture("deliveries/sample.json")).unwrap();
    assert_eq!(
        body.last(),
        Some(&b'\n'),
        "fixture keeps its trailing newline"
    );
    let sig = fixture_string("deliveries/sample.json.sig");
    let a = app
        .post("local", Some(KEY_ID), Some(sig.trim()), body.clone())
        .await;
    assert_eq!(
        a.labels(),
        ["false_positive", "false_positive", "false_positive"]
    );
    assert_eq!(a.json[0]["token_type"], "cio_tp");
    // The well-formed one reached the database and was recorded as unknown.
    let report = app.store.report(1).await.unwrap().unwrap();
    assert_eq!(report.scanner, "local");
    assert_eq!(report.counts.unknown, 1);
    assert_eq!(report.counts.not_ours, 2);
    // Without its trailing newline the OpenSSL signature no longer matches.
    let a = app
        .post(
            "local",
            Some(KEY_ID),
            Some(sig.trim()),
            body[..body.len() - 1].to_vec(),
        )
        .await;
    assert_eq!(a.status, 401);
    app.stop().await;
}

async fn two_instances_racing_revoke_each_token_exactly_once(db: Arc<TestDb>) {
    let keys = KeyServer::with_test_keys().await;
    let a = spawn_app(&*db, &keys, TestOptions::default()).await;
    let b = spawn_app(&*db, &keys, TestOptions::default()).await;
    let signer = Signer::test();
    for round in 0..5 {
        let mut tokens = Vec::new();
        for _ in 0..40 {
            tokens.push(a.mint(&format!("race/{round}"), Ttl::minutes(30)).await);
        }
        // Both deliveries carry every token, in opposite orders.
        let fwd: Vec<&str> = tokens.iter().map(|t| t.expose_secret()).collect();
        let rev: Vec<&str> = fwd.iter().rev().copied().collect();
        let (ra, rb) = tokio::join!(
            a.deliver(&signer, alert_body(&fwd)),
            b.deliver(&signer, alert_body(&rev))
        );
        assert!(ra.labels().iter().all(|l| l == "true_positive"));
        assert!(rb.labels().iter().all(|l| l == "true_positive"));
        for t in &tokens {
            let stored = a.store.token(&t.hash()).await.unwrap().unwrap();
            let winner = stored.revoked_by.unwrap();
            let mut revoked = 0;
            let mut already = 0;
            for report in (winner - 6)..=(winner + 6) {
                for item in a.store.report_items(report).await.unwrap() {
                    if item.token_hash == t.hash() {
                        match item.outcome {
                            Outcome::Revoked => {
                                assert_eq!(report, winner);
                                revoked += 1
                            }
                            Outcome::AlreadyRevoked => already += 1,
                            other => panic!("unexpected outcome {other:?}"),
                        }
                    }
                }
            }
            assert_eq!((revoked, already), (1, 1), "round {round}");
        }
    }
    a.stop().await;
    b.stop().await;
}

async fn no_raw_token_is_stored(db: Arc<TestDb>) {
    let (app, _keys) = app_for(&db).await;
    let minted = app.mint("ivy/pkg", Ttl::minutes(30)).await;
    let unknown = Token::generate();
    let a = app
        .deliver(
            &Signer::test(),
            alert_body(&[minted.expose_secret(), unknown.expose_secret()]),
        )
        .await;
    assert_eq!(a.labels(), ["true_positive", "false_positive"]);
    let dump = db.dump().await;
    assert!(dump.contains("ivy/pkg"), "dump covers the tables");
    for t in [&minted, &unknown] {
        let raw = t.expose_secret();
        assert!(!dump.contains(raw));
        assert!(!dump.contains(&raw[7..37]), "random part stored");
    }
    assert!(!a.text.contains(minted.expose_secret()));
    app.stop().await;
}

/// Signs and POSTs a hand-built delivery to `scanner`: items of (token, source, url).
async fn deliver_items(app: &TestApp, scanner: &str, items: &[(&str, &str, &str)]) -> Answer {
    let items: Vec<serde_json::Value> = items
        .iter()
        .map(|(token, source, url)| {
            serde_json::json!({ "token": token, "type": "cio_tp", "url": url, "source": source })
        })
        .collect();
    let body = serde_json::to_vec(&items).unwrap();
    let sig = Signer::test().sign(&body);
    app.post(scanner, Some(KEY_ID), Some(&sig), body).await
}

/// Inserts a token created `age` before `now`, expiring `ttl` after `now`.
async fn insert_aged(
    app: &TestApp,
    now: chrono::DateTime<chrono::Utc>,
    age: Ttl,
    ttl: Ttl,
) -> Token {
    let t = Token::generate();
    app.store
        .insert_token(&NewToken {
            hash: t.hash(),
            owner: "stats/pkg".into(),
            created_at: now - age,
            expires_at: now + ttl,
        })
        .await
        .unwrap();
    t
}

fn recent_item(t: &Token, outcome: Outcome, source: &str, url: &str) -> RecentItem {
    RecentItem {
        token_hash_prefix: t.hash().prefix(),
        outcome,
        source: source.into(),
        url: url.into(),
    }
}

/// Totals: reports, items, occurrences by outcome, then distinct tokens revoked (live,
/// expired).
fn totals(
    reports: i64,
    items: i64,
    [revoked, already_revoked, expired, unknown, not_ours]: [i64; 5],
    [tokens_revoked, tokens_expired]: [i64; 2],
) -> Totals {
    Totals {
        reports,
        items,
        revoked,
        already_revoked,
        expired,
        unknown,
        not_ours,
        tokens_revoked,
        tokens_expired,
    }
}

async fn preview_reports_without_writing(db: Arc<TestDb>) {
    let (app, _keys) = app_for(&db).await;
    let live = app.mint("preview/live", Ttl::minutes(30)).await;
    let expired = app.mint("preview/expired", Ttl::minutes(-5)).await;
    let revoked = app.mint("preview/revoked", Ttl::minutes(30)).await;
    let unknown = Token::generate();
    let a = app
        .deliver(&Signer::test(), alert_body(&[revoked.expose_secret()]))
        .await;
    assert_eq!(a.labels(), ["true_positive"]);

    let minted = [&live, &expired, &revoked];
    let mut before = Vec::new();
    for t in minted {
        before.push(app.store.token(&t.hash()).await.unwrap().unwrap());
    }
    let reports_before = app.store.count_reports().await.unwrap();
    assert_eq!(reports_before, 1);

    let statements = app.store.statements();
    let preview = app
        .store
        .preview(
            &[
                live.hash(),
                expired.hash(),
                revoked.hash(),
                unknown.hash(),
                live.hash(), // a repeated hash gets one entry
            ],
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(
        app.store.statements(),
        statements + db.counted(1),
        "preview is one statement"
    );
    let expected: HashMap<TokenHash, Outcome> = [
        (live.hash(), Outcome::Revoked),
        (expired.hash(), Outcome::Expired),
        (revoked.hash(), Outcome::AlreadyRevoked),
        (unknown.hash(), Outcome::Unknown),
    ]
    .into_iter()
    .collect();
    assert_eq!(preview, expected);

    // Nothing was written.
    assert_eq!(app.store.count_reports().await.unwrap(), reports_before);
    for (t, was) in minted.into_iter().zip(&before) {
        let now = app.store.token(&t.hash()).await.unwrap().unwrap();
        assert_eq!(&now, was, "preview changed a token");
    }
    assert!(app.store.token(&unknown.hash()).await.unwrap().is_none());

    // Empty input: empty answer, no statement.
    let statements = app.store.statements();
    let empty = app.store.preview(&[], chrono::Utc::now()).await.unwrap();
    assert!(empty.is_empty());
    assert_eq!(app.store.statements(), statements);
    app.stop().await;
}

async fn stats_match_a_known_sequence_of_deliveries(db: Arc<TestDb>) {
    let keys = KeyServer::with_test_keys().await;
    let app = spawn_app(
        &*db,
        &keys,
        TestOptions {
            extra_scanners: vec![ScannerSpec {
                name: "local".into(),
                source: fixture("keys/test-keys.json").display().to_string(),
            }],
            ..TestOptions::default()
        },
    )
    .await;
    let started = chrono::Utc::now();
    let hour = Ttl::hours(1);
    let t1 = insert_aged(&app, started, Ttl::seconds(100), hour).await;
    let t2 = insert_aged(&app, started, Ttl::seconds(200), hour).await;
    let t3 = insert_aged(&app, started, Ttl::seconds(300), hour).await;
    let t4 = insert_aged(&app, started, Ttl::seconds(400), hour).await;
    let t5 = insert_aged(&app, started, Ttl::seconds(500), hour).await;
    let te = insert_aged(&app, started, Ttl::seconds(1000), Ttl::seconds(-10)).await;
    // Minted, never reported: not part of the ages.
    let _idle = insert_aged(&app, started, Ttl::seconds(50), hour).await;
    let u1 = Token::generate();
    let u2 = Token::generate();

    // 1. github, source "content": revoked 2, unknown 1, not_ours 1.
    let a = app
        .deliver(
            &Signer::test(),
            alert_body(&[
                t1.expose_secret(),
                "junk",
                u1.expose_secret(),
                t2.expose_secret(),
            ]),
        )
        .await;
    assert_eq!(
        a.labels(),
        [
            "true_positive",
            "false_positive",
            "false_positive",
            "true_positive"
        ]
    );
    // 2. github, sources "commit" and "npm": revoked 1, already 1, expired 1, unknown 1,
    //    not_ours 1.
    let commit_url = "https://github.com/example/repo/commit/0123abcd";
    let npm_url = "https://www.npmjs.com/package/leaky/v/1.0.0";
    let a = deliver_items(
        &app,
        "github",
        &[
            (t3.expose_secret(), "commit", commit_url),
            (t1.expose_secret(), "commit", commit_url),
            (te.expose_secret(), "npm", npm_url),
            (u2.expose_secret(), "npm", npm_url),
            ("junk2", "npm", npm_url),
        ],
    )
    .await;
    assert_eq!(a.labels().len(), 5);
    // 3. scanner "local", source "content": revoked 2, unknown 1.
    let body = alert_body(&[t4.expose_secret(), u1.expose_secret(), t5.expose_secret()]);
    let sig = Signer::test().sign(&body);
    let a = app.post("local", Some(KEY_ID), Some(&sig), body).await;
    assert_eq!(a.labels().len(), 3);

    let r1 = app.store.token(&t1.hash()).await.unwrap().unwrap();
    let r3 = app.store.token(&t3.hash()).await.unwrap().unwrap();
    let r4 = app.store.token(&t4.hash()).await.unwrap().unwrap();
    let ids = [
        r1.revoked_by.unwrap(),
        r3.revoked_by.unwrap(),
        r4.revoked_by.unwrap(),
    ];
    assert!(ids[0] < ids[1] && ids[1] < ids[2], "{ids:?}");
    let mut reports = Vec::new();
    for id in ids {
        reports.push(app.store.report(id).await.unwrap().unwrap());
    }

    let since = (started - Ttl::minutes(1)).date_naive();
    let stats = app.store.stats(since).await.unwrap();

    // Occurrences: 5 revoked; distinct tokens: t1..t5 live, te expired.
    assert_eq!(stats.totals, totals(3, 12, [5, 1, 1, 3, 2], [5, 1]));
    assert_eq!(
        stats.by_scanner,
        [
            ScannerTotals {
                scanner: "github".into(),
                totals: totals(2, 9, [3, 1, 1, 2, 2], [3, 1]),
            },
            ScannerTotals {
                scanner: "local".into(),
                totals: totals(1, 3, [2, 0, 0, 1, 0], [2, 0]),
            },
        ]
    );
    // content 6 first; commit and npm tie on 2 and go by name.
    assert_eq!(
        stats.by_source,
        [
            SourceTotals {
                source: "content".into(),
                items: 6,
                revoked: 4,
                already_revoked: 0,
                expired: 0,
                unknown: 2,
            },
            SourceTotals {
                source: "commit".into(),
                items: 2,
                revoked: 1,
                already_revoked: 1,
                expired: 0,
                unknown: 0,
            },
            SourceTotals {
                source: "npm".into(),
                items: 2,
                revoked: 0,
                already_revoked: 0,
                expired: 1,
                unknown: 1,
            },
        ]
    );

    // Daily: one entry per UTC day of the stored received_at (today, unless the test ran
    // across midnight).
    let per_report = [
        totals(1, 4, [2, 0, 0, 1, 1], [2, 0]),
        totals(1, 5, [1, 1, 1, 1, 1], [1, 1]),
        totals(1, 3, [2, 0, 0, 1, 0], [2, 0]),
    ];
    let mut expected_daily: Vec<DayTotals> = Vec::new();
    for (r, t) in reports.iter().zip(&per_report) {
        let day = r.received_at.date_naive();
        match expected_daily.last_mut() {
            Some(d) if d.day == day => {
                d.totals.reports += t.reports;
                d.totals.items += t.items;
                d.totals.revoked += t.revoked;
                d.totals.already_revoked += t.already_revoked;
                d.totals.expired += t.expired;
                d.totals.unknown += t.unknown;
                d.totals.not_ours += t.not_ours;
                d.totals.tokens_revoked += t.tokens_revoked;
                d.totals.tokens_expired += t.tokens_expired;
            }
            _ => expected_daily.push(DayTotals {
                day,
                totals: t.clone(),
            }),
        }
    }
    assert_eq!(stats.daily, expected_daily);
    if expected_daily.len() == 1 {
        assert_eq!(stats.daily[0].day, chrono::Utc::now().date_naive());
        assert_eq!(stats.daily[0].totals, stats.totals);
    }
    // `since` is a UTC day, inclusive: from the last report's day on, that day's reports.
    let last_day = reports[2].received_at.date_naive();
    let later = app.store.stats(last_day).await.unwrap();
    assert_eq!(later.daily, expected_daily[expected_daily.len() - 1..]);
    assert_eq!(later.totals, stats.totals, "totals are all-time");
    // From the day after every report: no day.
    let none = app.store.stats(last_day.succ_opt().unwrap()).await.unwrap();
    assert!(none.daily.is_empty());

    // Ages of the six tokens revoked by a report (t1, t2, t3, te, t4, t5), from the
    // stored timestamps at millisecond precision; nearest rank: median = 3rd of 6,
    // p95 = 6th of 6; each reported as the upper bound of its histogram bucket.
    let mut ages = Vec::new();
    for t in [&t1, &t2, &t3, &te, &t4, &t5] {
        let r = app.store.token(&t.hash()).await.unwrap().unwrap();
        assert!(r.revoked_by.is_some());
        ages.push(r.revoked_at.unwrap().timestamp_millis() - r.created_at.timestamp_millis());
    }
    ages.sort();
    assert_eq!(
        stats.revocation_ages,
        RevocationAges {
            count: 6,
            median_seconds: Some(bucket_upper_seconds(ages[2])),
            p95_seconds: Some(bucket_upper_seconds(ages[5])),
        }
    );
    // 300 s lies in [300, 330) s; 1,000 s in [910, 1,000) or, a little later, [1,000,
    // 1,100) s: at most 15 % above the true value.
    let median = stats.revocation_ages.median_seconds.unwrap();
    let p95 = stats.revocation_ages.p95_seconds.unwrap();
    assert!(
        (300.0..=330.0).contains(&median) && median >= ages[2] as f64 / 1000.0,
        "median {median}"
    );
    assert!(
        (1000.0..=1100.0).contains(&p95) && p95 > ages[5] as f64 / 1000.0,
        "p95 {p95}"
    );

    // Recent: newest first, with every item in position order.
    let file = |i: usize| format!("https://github.com/example/repo/blob/main/file{i}.txt");
    let expected_items = [
        vec![
            recent_item(&t1, Outcome::Revoked, "content", &file(0)),
            recent_item(&u1, Outcome::Unknown, "content", &file(2)),
            recent_item(&t2, Outcome::Revoked, "content", &file(3)),
        ],
        vec![
            recent_item(&t3, Outcome::Revoked, "commit", commit_url),
            recent_item(&t1, Outcome::AlreadyRevoked, "commit", commit_url),
            recent_item(&te, Outcome::Expired, "npm", npm_url),
            recent_item(&u2, Outcome::Unknown, "npm", npm_url),
        ],
        vec![
            recent_item(&t4, Outcome::Revoked, "content", &file(0)),
            recent_item(&u1, Outcome::Unknown, "content", &file(1)),
            recent_item(&t5, Outcome::Revoked, "content", &file(2)),
        ],
    ];
    let expected_recent: Vec<RecentReport> = reports
        .iter()
        .zip(expected_items)
        .rev()
        .map(|(r, items)| RecentReport {
            id: r.id,
            received_at: r.received_at,
            scanner: r.scanner.clone(),
            key_id: r.key_id.clone(),
            item_count: r.item_count,
            counts: r.counts,
            items,
        })
        .collect();
    assert_eq!(stats.recent, expected_recent);
    assert_eq!(
        stats.recent.iter().map(|r| r.id).collect::<Vec<_>>(),
        [ids[2], ids[1], ids[0]]
    );
    assert_eq!(stats.recent[0].scanner, "local");
    assert_eq!(stats.recent[1].counts.expired, 1);
    assert_eq!(stats.recent[2].item_count, 4);
    app.stop().await;
}

async fn stats_cap_recent_reports_items_and_sources(db: Arc<TestDb>) {
    let (app, _keys) = app_for(&db).await;
    // 20 small reports (one unknown token, source "content"), then one with 25 items of
    // 25 distinct sources.
    for _ in 0..20 {
        let t = Token::generate();
        let a = app
            .deliver(&Signer::test(), alert_body(&[t.expose_secret()]))
            .await;
        assert_eq!(a.labels().len(), 1);
    }
    let big: Vec<(Token, String, String)> = (0..25)
        .map(|i| {
            (
                Token::generate(),
                format!("s{:02}", 24 - i),
                format!("https://example.com/{i}"),
            )
        })
        .collect();
    let refs: Vec<(&str, &str, &str)> = big
        .iter()
        .map(|(t, s, u)| (t.expose_secret(), s.as_str(), u.as_str()))
        .collect();
    let a = deliver_items(&app, "github", &refs).await;
    assert_eq!(a.labels().len(), 25);

    let stats = app
        .store
        .stats((chrono::Utc::now() - Ttl::days(1)).date_naive())
        .await
        .unwrap();
    assert_eq!(stats.totals.reports, 21);
    assert_eq!(stats.totals.items, 45);
    assert_eq!(stats.totals.unknown, 45);

    // Top 20 sources: content (20 items), then the first 19 names of the 1-item tie.
    assert_eq!(stats.by_source.len(), 20);
    assert_eq!(stats.by_source[0].source, "content");
    assert_eq!(stats.by_source[0].items, 20);
    let names: Vec<String> = stats.by_source[1..]
        .iter()
        .map(|s| s.source.clone())
        .collect();
    let expected: Vec<String> = (0..19).map(|i| format!("s{i:02}")).collect();
    assert_eq!(names, expected);
    assert!(stats.by_source[1..]
        .iter()
        .all(|s| (s.items, s.unknown) == (1, 1)));

    // Last 20 reports: ids 21 down to 2; the newest shows its first 20 items only.
    let ids: Vec<i64> = stats.recent.iter().map(|r| r.id).collect();
    assert_eq!(ids, (2..=21).rev().collect::<Vec<i64>>());
    let newest = &stats.recent[0];
    assert_eq!(newest.item_count, 25);
    assert_eq!(newest.counts.unknown, 25);
    let shown: Vec<RecentItem> = big[..20]
        .iter()
        .map(|(t, s, u)| recent_item(t, Outcome::Unknown, s, u))
        .collect();
    assert_eq!(newest.items, shown);
    assert!(stats.recent[1..].iter().all(|r| r.items.len() == 1));
    app.stop().await;
}

async fn stats_on_an_empty_database(db: Arc<TestDb>) {
    let (app, _keys) = app_for(&db).await;
    let stats = app
        .store
        .stats((chrono::Utc::now() - Ttl::days(30)).date_naive())
        .await
        .unwrap();
    assert_eq!(stats.totals, totals(0, 0, [0; 5], [0; 2]));
    assert!(stats.by_scanner.is_empty());
    assert!(stats.by_source.is_empty());
    assert!(stats.daily.is_empty());
    assert_eq!(
        stats.revocation_ages,
        RevocationAges {
            count: 0,
            median_seconds: None,
            p95_seconds: None,
        }
    );
    assert!(stats.recent.is_empty());
    assert_eq!(stats, Stats::default());

    // A minted but never reported token is not an age either.
    app.mint("idle/pkg", Ttl::minutes(30)).await;
    let stats = app
        .store
        .stats(chrono::Utc::now().date_naive())
        .await
        .unwrap();
    assert_eq!(stats, Stats::default());
    app.stop().await;
}

/// Deliveries as large as SQLite's revoking statement binds one parameter per hash
/// (30,000 distinct hashes), and of 32,763: with the statement's four other parameters
/// one more than SQLite allows (32,766), so it must read them from JSON. Every stored
/// live token flips and each item gets its own outcome; the stored ones already revoked
/// and the unknown ones are told apart as in a small delivery; still one revoking
/// statement.
async fn a_delivery_of_more_candidates_than_sqlite_binds_revokes_each(db: Arc<TestDb>) {
    let store = open_migrated_store(&*db).await;
    let now = now_ms();
    let at_most = revokes_each_of(&db, store.as_ref(), 30_000, now).await;
    let past = revokes_each_of(&db, store.as_ref(), 32_763, now + Ttl::seconds(2)).await;

    // On SQLite, as many statements as a delivery of one live and one unknown token,
    // and one more: a large delivery's page cache (`store/sqlite/record.rs`, any
    // delivery past 256 distinct hashes), whatever its size. (PostgreSQL's delivery is
    // one statement whatever its size; behind a pooler the count also holds the
    // statements that prepare it on a server connection.)
    if db.kind() != Kind::Sqlite {
        return;
    }
    let live = Token::generate();
    store
        .insert_tokens(&[NewToken {
            hash: live.hash(),
            owner: "one/owner".into(),
            created_at: now,
            expires_at: now + Ttl::minutes(30),
        }])
        .await
        .unwrap();
    let before = store.statements();
    let small = record_at(
        store.as_ref(),
        &[&live, &Token::generate()],
        now + Ttl::seconds(4),
    )
    .await;
    assert_eq!(small.tokens_revoked, 1);
    let one = store.statements() - before;
    assert_eq!((at_most, past), (one + 1, one + 1));
}

/// A delivery of `distinct` hashes received at `at`: `distinct - 2` stored tokens (two of
/// them revoked by an earlier delivery), two unknown ones, and the first stored token
/// again at the end. Checks every outcome, the revoked rows and the notifications;
/// returns the statements the delivery took.
async fn revokes_each_of(
    db: &TestDb,
    store: &dyn RevocationStore,
    distinct: usize,
    at: chrono::DateTime<chrono::Utc>,
) -> u64 {
    let stored: Vec<Token> = (0..distinct - 2).map(|_| Token::generate()).collect();
    let rows: Vec<NewToken> = stored
        .iter()
        .map(|t| NewToken {
            hash: t.hash(),
            owner: "many/owner".into(),
            created_at: at - Ttl::minutes(1),
            expires_at: at + Ttl::minutes(30),
        })
        .collect();
    store.insert_tokens(&rows).await.unwrap();
    db.expand_outbox().await;
    let pending = store.notification_counts().await.unwrap().pending;
    let earlier = [&stored[10_000], &stored[distinct - 3]];
    assert_eq!(record_at(store, &earlier, at).await.tokens_revoked, 2);
    let unknown = [Token::generate(), Token::generate()];
    let mut items: Vec<&Token> = stored.iter().collect();
    items.insert(9_999, &unknown[0]);
    items.push(&unknown[1]);
    // The first token again at the end: one hash, flipped once, two items.
    items.push(&stored[0]);

    let before = store.statements();
    let recorded = record_at(store, &items, at + Ttl::seconds(1)).await;
    let statements = store.statements() - before;

    let flipped = distinct as u32 - 4;
    assert_eq!(recorded.tokens_revoked, flipped);
    assert_eq!(
        (
            recorded.counts.revoked,
            recorded.counts.already_revoked,
            recorded.counts.unknown,
            recorded.counts.expired
        ),
        (flipped + 1, 2, 2, 0)
    );
    for (i, t) in items.iter().enumerate() {
        let expected = if unknown.iter().any(|u| u.hash() == t.hash()) {
            Outcome::Unknown
        } else if earlier.iter().any(|e| e.hash() == t.hash()) {
            Outcome::AlreadyRevoked
        } else {
            Outcome::Revoked
        };
        assert_eq!(recorded.outcomes[i], expected, "item {i}");
    }
    for i in [0, 9_998, 9_999, 10_001, distinct - 4] {
        let token = store.token(&stored[i].hash()).await.unwrap().unwrap();
        assert_eq!(
            token.revoked_by,
            Some(recorded.report_id),
            "stored token {i}"
        );
    }
    // One notification per flipped token, the two earlier ones included (as the
    // deliveries count them), and as many rows once the outbox turned the batch.
    db.expand_outbox().await;
    let queued = store.notification_counts().await.unwrap().pending - pending;
    assert_eq!(queued, distinct as i64 - 2);
    let rows = db
        .texts(&format!(
            "SELECT CAST(count(*) AS TEXT) FROM notifications WHERE report_id = {}",
            recorded.report_id
        ))
        .await;
    assert_eq!(rows, [flipped.to_string()]);
    statements
}

async fn bulk_insert_is_all_or_nothing(db: Arc<TestDb>) {
    let store = open_migrated_store(&*db).await;
    let now = chrono::Utc::now();
    let new = |t: &Token| revoker::store::NewToken {
        hash: t.hash(),
        owner: "bulk/owner".into(),
        created_at: now,
        expires_at: now + Ttl::minutes(30),
    };
    let tokens: Vec<Token> = (0..3).map(|_| Token::generate()).collect();
    let rows: Vec<_> = tokens.iter().map(new).collect();
    let before = store.statements();
    store.insert_tokens(&rows).await.unwrap();
    assert_eq!(store.statements(), before + db.counted(1), "one statement");
    for t in &tokens {
        let stored = store.token(&t.hash()).await.unwrap().expect("inserted");
        assert_eq!(stored.owner, "bulk/owner");
        assert!(stored.revoked_at.is_none());
    }
    // A batch containing an existing hash fails whole: the fresh token is not inserted.
    let fresh = Token::generate();
    let err = store.insert_tokens(&[new(&fresh), new(&tokens[1])]).await;
    assert!(err.is_err());
    assert!(store.token(&fresh.hash()).await.unwrap().is_none());
    store.insert_tokens(&[]).await.unwrap();
}

/// `token import`'s statements: new hashes are inserted as given, stored ones never
/// change and are answered as stored; `revoke_imported` revokes only live ones. One
/// statement each on PostgreSQL (through a pooler too), a transaction of two on SQLite.
async fn import_stores_only_new_hashes_and_answers_what_is_stored(db: Arc<TestDb>) {
    use revoker::store::{ImportToken, StoredToken, NEVER_EXPIRES};
    let store = open_migrated_store(&*db).await;
    let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc();
    let token = |n: u8, owner: &str, format: &'static str, revoked: Option<&str>| ImportToken {
        hash: TokenHash([n; 32]),
        owner: owner.into(),
        format,
        created_at: at("2026-01-01T00:00:00Z"),
        expires_at: NEVER_EXPIRES,
        revoked_at: revoked.map(at),
    };
    let first = [
        token(1, "alice", "crates_io_api", None),
        token(2, "bob", "crates_io_trustpub", Some("2026-02-01T00:00:00Z")),
    ];
    let before = store.statements();
    let answer = store.import_tokens(&first).await.unwrap();
    let statements = match db.kind() {
        Kind::Sqlite => 4,
        Kind::Postgres => db.counted(1),
    };
    assert_eq!(store.statements(), before + statements);
    let mut inserted = answer.inserted.clone();
    inserted.sort();
    assert_eq!(inserted, [TokenHash([1; 32]), TokenHash([2; 32])]);
    assert!(answer.stored.is_empty());
    let stored = store.token(&TokenHash([2; 32])).await.unwrap().unwrap();
    assert_eq!(stored.format, "crates_io_trustpub");
    assert_eq!(stored.expires_at, NEVER_EXPIRES);
    assert_eq!(stored.revoked_at, Some(at("2026-02-01T00:00:00Z")));
    assert_eq!(stored.revoked_by, None);

    // Again with other values, beside a new one: only the new one is written.
    let second = [
        token(1, "mallory", "cio_tp", Some("2026-03-01T00:00:00Z")),
        token(3, "carol", "cio_tp", None),
    ];
    let answer = store.import_tokens(&second).await.unwrap();
    assert_eq!(answer.inserted, [TokenHash([3; 32])]);
    assert_eq!(
        answer.stored,
        [StoredToken {
            hash: TokenHash([1; 32]),
            owner: "alice".into(),
            format: "crates_io_api".into(),
            revoked: false,
        }]
    );
    let one = store.token(&TokenHash([1; 32])).await.unwrap().unwrap();
    assert_eq!((one.owner.as_str(), one.revoked_at), ("alice", None));

    // Revoking: the live one at its instant; the revoked one keeps its own.
    let before = store.statements();
    let revoked = store
        .revoke_imported(&[
            (TokenHash([1; 32]), at("2026-04-01T00:00:00Z")),
            (TokenHash([2; 32]), at("2026-04-01T00:00:00Z")),
        ])
        .await
        .unwrap();
    assert_eq!(revoked, [TokenHash([1; 32])]);
    assert_eq!(store.statements(), before + db.counted(1));
    let one = store.token(&TokenHash([1; 32])).await.unwrap().unwrap();
    assert_eq!(one.revoked_at, Some(at("2026-04-01T00:00:00Z")));
    let two = store.token(&TokenHash([2; 32])).await.unwrap().unwrap();
    assert_eq!(two.revoked_at, Some(at("2026-02-01T00:00:00Z")));

    // Nothing to do: no statement.
    let before = store.statements();
    store.import_tokens(&[]).await.unwrap();
    assert!(store.revoke_imported(&[]).await.unwrap().is_empty());
    assert_eq!(store.statements(), before);
}

async fn nul_characters_in_open_strings_never_block_revocation(db: Arc<TestDb>) {
    let (app, _keys) = app_for(&db).await;
    let t = app.mint("nul/pkg", Ttl::minutes(30)).await;
    let body = serde_json::to_vec(&serde_json::json!([{
        "token": t.expose_secret(), "type": "cio\u{0}tp",
        "url": "https://x/a\u{0}b", "source": "con\u{0}tent"
    }]))
    .unwrap();
    let a = app.deliver(&Signer::test(), body).await;
    assert_eq!(a.labels(), ["true_positive"], "{}", a.text);
    assert_eq!(
        a.json[0]["token_type"], "cio\u{0}tp",
        "feedback echoes the type as sent"
    );
    let stored = app.store.token(&t.hash()).await.unwrap().unwrap();
    let items = app
        .store
        .report_items(stored.revoked_by.unwrap())
        .await
        .unwrap();
    assert_eq!(items[0].url, "https://x/a\u{FFFD}b");
    assert_eq!(items[0].source, "con\u{FFFD}tent");
    app.stop().await;
}

/// Every string of a report comes back from the database as it was recorded, whatever
/// SQL, PostgreSQL's array syntax or a terminal would make of it. Behind a pooler the
/// revoking call carries its arguments as literals (`store/postgres/pooled.rs`): this is
/// the escaping's test against the real parser, with strings made of quotes,
/// backslashes, braces, commas, `NULL`, `E'`, dollar quotes and multi-byte characters.
async fn every_string_is_stored_as_sent_whatever_it_holds(db: Arc<TestDb>) {
    if db.kind() == Kind::Postgres {
        // A database whose sessions read `NULL` in an array literal as the text "NULL":
        // the literals' transaction says what it means (review finding).
        let sql = format!("ALTER DATABASE \"{}\" SET array_nulls = off", db.name());
        db.texts(&sql).await;
    }
    let store = open_migrated_store(&*db).await;
    let pieces = [
        "'",
        "''",
        "\\",
        "\\'",
        "\"",
        "\\\"",
        "{",
        "}",
        ",",
        "NULL",
        "null",
        " ",
        "E'",
        "$$",
        "$f$",
        ";",
        "--",
        "/*",
        "\n",
        "\t",
        "\r",
        "\u{1b}[2J",
        "é",
        "😀",
        "\u{202E}",
        "\\x00",
        "a",
        "(",
        ")",
        "[",
        "]",
        "::text",
        "\u{FFFD}",
    ];
    // A fixed sequence of strings made of those pieces (an LCG: the same every run).
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = |n: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize % n
    };
    let mut string =
        |max: usize| -> String { (0..next(max)).map(|_| pieces[next(pieces.len())]).collect() };
    let mut candidates = Vec::new();
    for position in 0..300u32 {
        candidates.push(CandidateItem {
            position,
            hash: {
                let mut h = [0xAB; 32];
                h[..4].copy_from_slice(&position.to_be_bytes());
                TokenHash(h)
            },
            token_type: string(6),
            source: string(6),
            url: string(12),
            found_in: (position % 3 == 0).then(|| string(4)),
        });
    }
    // One string of each piece alone, and the empty string.
    for (i, piece) in pieces.iter().enumerate() {
        let c = &mut candidates[i];
        (c.url, c.source, c.token_type) = (piece.to_string(), String::new(), piece.to_string());
    }
    // Twice: 60 candidates (behind a pooler, a call with its arguments as literals)
    // and all 300 (bound: past `LITERALS_UP_TO`).
    for (n, size) in [60, 300].into_iter().enumerate() {
        let mut report =
            one_item_report(TokenHash([7 + n as u8; 32]), "content", chrono::Utc::now());
        report.scanner = format!("sc'an\\ner\"{{,}}{n}");
        report.key_id = "k\\ey'; DROP TABLE tokens; --".into();
        report.item_count = size as u32;
        report.candidates = candidates[..size].to_vec();
        let recorded = store
            .record_report(
                &report,
                RecordOptions {
                    deadline: Some(Instant::now() + Duration::from_secs(10)),
                    once_per_body: true,
                },
            )
            .await
            .unwrap();
        let items = store.report_items(recorded.report_id).await.unwrap();
        assert_eq!(items.len(), size);
        for (item, sent) in items.iter().zip(&candidates) {
            assert_eq!(item.position, sent.position);
            assert_eq!(item.token_hash, sent.hash);
            assert_eq!(item.token_type, sent.token_type);
            assert_eq!(item.source, sent.source);
            assert_eq!(item.url, sent.url);
            assert_eq!(item.found_in, sent.found_in);
            assert_eq!(item.outcome, Outcome::Unknown);
        }
        let sql = format!(
            "SELECT scanner || '|' || key_id FROM reports WHERE id = {}",
            recorded.report_id
        );
        assert_eq!(
            db.texts(&sql).await,
            [format!("{}|{}", report.scanner, report.key_id)]
        );
        // The same body is claimed: once per body.
        let options = RecordOptions {
            deadline: None,
            once_per_body: true,
        };
        assert!(
            store
                .record_report(&report, options)
                .await
                .unwrap()
                .duplicate
        );
    }
    // The tokens table is still there.
    assert!(store.token(&TokenHash([1; 32])).await.unwrap().is_none());
}

async fn a_delivery_past_its_deadline_gets_503_and_writes_nothing(db: Arc<TestDb>) {
    let keys = KeyServer::with_test_keys().await;
    let app = spawn_app(
        &*db,
        &keys,
        TestOptions {
            request_timeout: Duration::from_millis(600),
            db_timeout: Duration::from_secs(5),
            ..TestOptions::default()
        },
    )
    .await;
    let t = app.mint("slow/pkg", Ttl::minutes(30)).await;
    let body = alert_body(&[t.expose_secret()]);
    let outage = Outage::start(&db).await;
    let started = Instant::now();
    let a = app.deliver(&Signer::test(), body.clone()).await;
    let took = started.elapsed();
    outage.end(&db).await;
    assert_eq!(a.status, 503, "{}", a.text);
    assert!(
        matches!(a.error_code(), "timeout" | "database_unavailable"),
        "{}",
        a.text
    );
    assert!(a.retry_after.is_some());
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    assert!(!app.is_revoked(&t).await);
    assert_eq!(app.store.count_reports().await.unwrap(), 0);
    let a = app.deliver(&Signer::test(), body).await;
    assert_eq!(a.labels(), ["true_positive"]);
    app.stop().await;
}

// ---------------------------------------------------------------- owner notifications

/// Now, at the millisecond: what both backends store exactly.
fn now_ms() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(chrono::Utc::now().timestamp_millis()).unwrap()
}

/// A migrated store of its own on the test database.
async fn notification_store(db: &TestDb) -> Arc<dyn RevocationStore> {
    open_migrated_store(db).await
}

/// Records a delivery of `tokens` (item i at position i, url `https://example.com/i`)
/// received at `at`, straight through the store.
async fn record_at(
    store: &dyn RevocationStore,
    tokens: &[&Token],
    at: chrono::DateTime<chrono::Utc>,
) -> RecordedReport {
    let candidates = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| CandidateItem {
            position: i as u32,
            hash: t.hash(),
            token_type: "cio_tp".into(),
            source: "content".into(),
            url: format!("https://example.com/{i}"),
            found_in: None,
        })
        .collect::<Vec<_>>();
    store
        .record_report(
            &NewReport {
                scanner: "github".into(),
                key_id: KEY_ID.into(),
                received_at: at,
                body_sha256: [7; 32],
                item_count: candidates.len() as u32,
                not_ours: 0,
                candidates,
            },
            RecordOptions::default(),
        )
        .await
        .unwrap()
}

fn ids(ns: &[Notification]) -> Vec<i64> {
    ns.iter().map(|n| n.id).collect()
}

async fn all_notifications(store: &dyn RevocationStore) -> Vec<Notification> {
    store.list_notifications(None, 10_000).await.unwrap()
}

async fn notification_of(store: &dyn RevocationStore, t: &Token) -> Option<Notification> {
    all_notifications(store)
        .await
        .into_iter()
        .find(|n| n.token_hash == t.hash())
}

fn counts(pending: i64, delivered: i64, failed: i64) -> NotificationCounts {
    NotificationCounts {
        pending,
        delivered,
        failed,
    }
}

/// The rollups' counts agree with the expected numbers, and with a count of the rows.
async fn assert_counts(store: &dyn RevocationStore, pending: i64, delivered: i64, failed: i64) {
    assert_eq!(
        store.notification_counts().await.unwrap(),
        counts(pending, delivered, failed)
    );
    let rows = store.list_notifications(None, u32::MAX).await.unwrap();
    let of = |s: NotificationStatus| rows.iter().filter(|n| n.status == s).count() as i64;
    assert_eq!(
        (
            of(NotificationStatus::Pending),
            of(NotificationStatus::Delivered),
            of(NotificationStatus::Failed)
        ),
        (pending, delivered, failed)
    );
}

async fn a_delivery_queues_one_notification_per_token_it_flips(db: Arc<TestDb>) {
    let (app, _keys) = app_for(&db).await;
    let live1 = app.mint("alice/one", Ttl::minutes(30)).await;
    let live2 = app.mint("bob/two", Ttl::minutes(30)).await;
    let expired = app.mint("carol/old", Ttl::minutes(-5)).await;
    let earlier = app.mint("dave/earlier", Ttl::minutes(30)).await;
    let unknown = Token::generate();
    let idle = app.mint("erin/idle", Ttl::minutes(30)).await;

    // An earlier delivery revokes (and queues) `earlier`.
    let a = app
        .deliver(&Signer::test(), alert_body(&[earlier.expose_secret()]))
        .await;
    assert_eq!(a.labels(), ["true_positive"]);
    let first = all_notifications(app.store.as_ref()).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].owner, "dave/earlier");

    // live1 is named twice: first as a commit, last on npm. The commit is where it
    // was found first.
    let items = [
        ("junk", "content", "https://example.com/junk"),
        (
            live1.expose_secret(),
            "commit",
            "https://github.com/o/r/commit/1",
        ),
        (
            expired.expose_secret(),
            "npm",
            "https://www.npmjs.com/package/old",
        ),
        (
            unknown.expose_secret(),
            "content",
            "https://example.com/unknown",
        ),
        (
            earlier.expose_secret(),
            "content",
            "https://example.com/earlier",
        ),
        (live2.expose_secret(), "gist", "https://gist.github.com/o/2"),
        (
            live1.expose_secret(),
            "npm",
            "https://www.npmjs.com/package/one",
        ),
    ];
    let a = deliver_items(&app, "github", &items).await;
    assert_eq!(
        a.labels(),
        [
            "false_positive",
            "true_positive",
            "true_positive",
            "false_positive",
            "true_positive",
            "true_positive",
            "true_positive"
        ]
    );
    let report_id = app
        .store
        .token(&live1.hash())
        .await
        .unwrap()
        .unwrap()
        .revoked_by
        .unwrap();
    let report = app.store.report(report_id).await.unwrap().unwrap();

    let all = all_notifications(app.store.as_ref()).await;
    assert_eq!(all.len(), 4, "{all:?}");
    let listed = ids(&all);
    let mut newest_first = listed.clone();
    newest_first.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(listed, newest_first, "listed newest first");
    assert_eq!(
        *listed.last().unwrap(),
        first[0].id,
        "the earlier one is oldest"
    );

    let queued: Vec<&Notification> = all.iter().filter(|n| n.report_id == report_id).collect();
    assert_eq!(queued.len(), 3, "live1, live2 and expired: {queued:?}");
    let expect = [
        (
            &live1,
            "alice/one",
            "https://github.com/o/r/commit/1",
            "commit",
            false,
        ),
        (
            &live2,
            "bob/two",
            "https://gist.github.com/o/2",
            "gist",
            false,
        ),
        (
            &expired,
            "carol/old",
            "https://www.npmjs.com/package/old",
            "npm",
            true,
        ),
    ];
    for (t, owner, url, source, was_expired) in expect {
        let n = queued
            .iter()
            .find(|n| n.token_hash == t.hash())
            .unwrap_or_else(|| panic!("no notification for {owner}"));
        let stored = app.store.token(&t.hash()).await.unwrap().unwrap();
        assert_eq!(n.owner, owner);
        assert_eq!(n.scanner, "github");
        assert_eq!(
            (n.url.as_str(), n.source.as_str()),
            (url, source),
            "{owner}"
        );
        assert_eq!(n.revoked_at, report.received_at);
        assert_eq!(Some(n.revoked_at), stored.revoked_at);
        assert_eq!(n.expired, was_expired, "{owner}");
        assert_eq!(n.status, NotificationStatus::Pending);
        assert_eq!(n.attempts, 0);
        assert_eq!(n.next_attempt_at, report.received_at);
        assert_eq!((&n.last_error, &n.delivered_at), (&None, &None));
    }
    for t in [&unknown, &idle] {
        assert!(notification_of(app.store.as_ref(), t).await.is_none());
    }
    assert_eq!(
        app.store.notification_counts().await.unwrap(),
        counts(4, 0, 0)
    );

    // The same tokens again, in a new body (a report of its own), flip nothing and
    // queue nothing; the same body again is answered from its report.
    let mut reversed = items;
    reversed.reverse();
    let again = deliver_items(&app, "github", &reversed).await;
    let mut labels = a.labels();
    labels.reverse();
    assert_eq!(again.labels(), labels);
    let repeat = deliver_items(&app, "github", &items).await;
    assert_eq!(repeat.json, a.json);
    assert_eq!(all_notifications(app.store.as_ref()).await, all);
    assert_eq!(
        app.store.notification_counts().await.unwrap(),
        counts(4, 0, 0)
    );
    assert_eq!(app.store.count_reports().await.unwrap(), 3);
    let problems = db.inconsistencies().await;
    assert!(problems.is_empty(), "{problems:?}");
    app.stop().await;

    // The consistency check sees a notification that disagrees with its token, and a
    // revoked token without one.
    let id = queued[0].id;
    assert_eq!(
        db.execute(&format!(
            "UPDATE notifications SET owner = 'mallory' WHERE id = {id}"
        ))
        .await,
        1
    );
    let problems = db.inconsistencies().await;
    assert!(
        problems.len() == 1 && problems[0].starts_with("1 notifications disagreeing"),
        "{problems:?}"
    );
    db.execute(&format!("DELETE FROM notifications WHERE id = {id}"))
        .await;
    let problems = db.inconsistencies().await;
    assert!(
        problems.len() == 1 && problems[0].starts_with("1 revoked tokens without"),
        "{problems:?}"
    );
}

async fn claims_lease_due_notifications_and_count_attempts(db: Arc<TestDb>) {
    let store = notification_store(&db).await;
    let tokens = mint_many(store.as_ref(), "claim/pkg", 5, Ttl::hours(2)).await;
    let refs: Vec<&Token> = tokens.iter().collect();
    let t0 = now_ms();
    let lease = Duration::from_secs(30);
    let secs = |s: i64| t0 + Ttl::seconds(s);
    record_at(store.as_ref(), &refs[..3], t0).await;
    record_at(store.as_ref(), &refs[3..], secs(600)).await;
    let all = all_notifications(store.as_ref()).await;
    let mut due_first: Vec<i64> = all
        .iter()
        .filter(|n| n.next_attempt_at == t0)
        .map(|n| n.id)
        .collect();
    due_first.sort_unstable();
    assert_eq!(due_first.len(), 3);

    // Nothing is due before the first delivery's time; a zero limit claims nothing.
    assert!(store
        .claim_notifications(Clock::At(t0 - Ttl::milliseconds(1)), lease, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .claim_notifications(Clock::At(t0), lease, 0)
        .await
        .unwrap()
        .is_empty());

    // The limit is respected, oldest due first, by id among equals.
    let statements = store.statements();
    let a = store
        .claim_notifications(Clock::At(t0), lease, 2)
        .await
        .unwrap();
    assert_eq!(
        store.statements(),
        statements + db.counted(2),
        "a claim is one statement, after one read finding no outbox batch queued"
    );
    assert_eq!(ids(&a), due_first[..2]);
    assert!(a
        .iter()
        .all(|n| n.attempts == 1 && n.status == NotificationStatus::Pending));
    let b = store
        .claim_notifications(Clock::At(t0), lease, 10)
        .await
        .unwrap();
    assert_eq!(
        ids(&b),
        due_first[2..],
        "the rest of the due ones, not the later ones"
    );
    assert_eq!(b[0].attempts, 1);

    // Leased: nobody gets them until the lease has run out (exactly at its end).
    assert!(store
        .claim_notifications(Clock::At(t0), lease, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .claim_notifications(Clock::At(secs(30) - Ttl::milliseconds(1)), lease, 10)
        .await
        .unwrap()
        .is_empty());
    let c = store
        .claim_notifications(Clock::At(secs(30)), lease, 10)
        .await
        .unwrap();
    assert_eq!(ids(&c), due_first, "taken over after the lease");
    assert!(c.iter().all(|n| n.attempts == 2), "{c:?}");
    assert!(c.iter().all(|n| n.next_attempt_at == t0));

    // At the second delivery's time: all five, oldest due first.
    let d = store
        .claim_notifications(Clock::At(secs(600)), lease, 10)
        .await
        .unwrap();
    assert_eq!(d.len(), 5);
    assert_eq!(ids(&d[..3]), due_first);
    assert!(d[..3].iter().all(|n| n.attempts == 3));
    assert!(d[3..]
        .iter()
        .all(|n| n.attempts == 1 && n.next_attempt_at == secs(600)));
    assert!(d[3].id < d[4].id);
    // Claiming counts attempts only: the rows stay pending.
    assert_counts(store.as_ref(), 5, 0, 0).await;
    let listed = all_notifications(store.as_ref()).await;
    let attempts: HashMap<i64, u32> = listed.iter().map(|n| (n.id, n.attempts)).collect();
    for n in &d {
        assert_eq!(attempts[&n.id], n.attempts);
    }
}

/// Row 11f: worker A's lease runs out mid-send and worker B takes the row over. A's
/// late "retry" or "failed" must not touch B's claim (B is still sending), but A's late
/// success counts: the owner got it, and it must not be sent again for nothing. B's
/// result after that changes nothing.
/// Checked against (SQLite statements): the delivered statement skipping rows another
/// claim holds (`AND (locked_until IS NULL OR locked_until <= $2)`: A's late success is
/// dropped, the row stays pending to be sent again); the retry statement without its
/// lease condition (A's late retry re-schedules B's row and drops B's lease).
async fn after_a_takeover_a_late_success_counts_and_a_late_retry_does_not(db: Arc<TestDb>) {
    let store = notification_store(&db).await;
    let tokens = mint_many(store.as_ref(), "late/pkg", 2, Ttl::hours(2)).await;
    let refs: Vec<&Token> = tokens.iter().collect();
    let t0 = now_ms();
    let lease = Duration::from_secs(30);
    let secs = |s: i64| t0 + Ttl::seconds(s);
    record_at(store.as_ref(), &refs, t0).await;
    let by_a = store
        .claim_notifications(Clock::At(t0), lease, 10)
        .await
        .unwrap();
    assert_eq!(by_a.len(), 2);
    let by_b = store
        .claim_notifications(Clock::At(secs(31)), lease, 10)
        .await
        .unwrap();
    assert_eq!(ids(&by_b), ids(&by_a), "taken over after A's lease");
    let row = |id: i64| {
        let store = Arc::clone(&store);
        async move {
            all_notifications(store.as_ref())
                .await
                .into_iter()
                .find(|n| n.id == id)
                .unwrap()
        }
    };
    let (first, second) = (by_a[0].id, by_a[1].id);
    let held_by_b = row(first).await;
    assert_eq!(held_by_b.locked_until, Some(secs(61)));

    // A's late retry and late failure: B's claim stands.
    store
        .finish_notification(
            &by_a[0],
            &AttemptResult::Retry {
                error: "late".into(),
                retry_in: Duration::from_secs(3600),
            },
            Clock::At(secs(40)),
        )
        .await
        .unwrap();
    store
        .finish_notification(
            &by_a[1],
            &AttemptResult::Failed {
                error: "late".into(),
            },
            Clock::At(secs(40)),
        )
        .await
        .unwrap();
    assert_eq!(row(first).await, held_by_b);
    assert_eq!(row(second).await.status, NotificationStatus::Pending);
    assert_eq!(row(second).await.locked_until, Some(secs(61)));

    // A's late success counts.
    store
        .finish_notification(&by_a[0], &AttemptResult::Delivered, Clock::At(secs(45)))
        .await
        .unwrap();
    let delivered = row(first).await;
    assert_eq!(delivered.status, NotificationStatus::Delivered);
    assert_eq!(delivered.delivered_at, Some(secs(45)));
    assert_eq!(delivered.attempts, 2);
    // B's result afterwards changes nothing; the other row is B's to finish.
    store
        .finish_notification(
            &by_b[0],
            &AttemptResult::Retry {
                error: "HTTP 503".into(),
                retry_in: Duration::from_secs(60),
            },
            Clock::At(secs(50)),
        )
        .await
        .unwrap();
    assert_eq!(row(first).await, delivered);
    let b_second = by_b.iter().find(|n| n.id == second).unwrap();
    store
        .finish_notification(b_second, &AttemptResult::Delivered, Clock::At(secs(50)))
        .await
        .unwrap();
    assert_counts(store.as_ref(), 0, 2, 0).await;
}

async fn finished_and_requeued_notifications_change_what_claims_see(db: Arc<TestDb>) {
    let store = notification_store(&db).await;
    let tokens = mint_many(store.as_ref(), "finish/pkg", 4, Ttl::hours(2)).await;
    let refs: Vec<&Token> = tokens.iter().collect();
    let t0 = now_ms();
    let min = |m: i64| t0 + Ttl::minutes(m);
    let lease = Duration::from_secs(30);
    record_at(store.as_ref(), &refs, t0).await;
    let claimed = store
        .claim_notifications(Clock::At(t0), lease, 10)
        .await
        .unwrap();
    let [n0, n1, n2, n3] = ids(&claimed)[..] else {
        panic!("four claimed: {claimed:?}")
    };
    // A claim as its worker holds it: what finish_notification is given.
    let held = |id: i64| claimed.iter().find(|n| n.id == id).cloned().unwrap();
    let get = |id: i64| {
        let store = Arc::clone(&store);
        async move {
            all_notifications(store.as_ref())
                .await
                .into_iter()
                .find(|n| n.id == id)
                .unwrap()
        }
    };

    let statements = store.statements();
    store
        .finish_notification(
            &held(n0),
            &AttemptResult::Delivered,
            Clock::At(t0 + Ttl::seconds(1)),
        )
        .await
        .unwrap();
    assert_eq!(store.statements(), statements + db.counted(1));
    store
        .finish_notification(
            &held(n1),
            &AttemptResult::Retry {
                error: "HTTP 502 from the webhook".into(),
                retry_in: Duration::from_secs(5 * 60),
            },
            Clock::At(t0),
        )
        .await
        .unwrap();
    store
        .finish_notification(
            &held(n2),
            &AttemptResult::Failed {
                error: "HTTP 410 gone".into(),
            },
            Clock::At(t0),
        )
        .await
        .unwrap();
    // n3 stays leased, as if its worker were still sending it.
    assert_counts(store.as_ref(), 2, 1, 1).await;

    let delivered = store
        .list_notifications(Some(NotificationStatus::Delivered), 10)
        .await
        .unwrap();
    assert_eq!(ids(&delivered), [n0]);
    assert_eq!(delivered[0].delivered_at, Some(t0 + Ttl::seconds(1)));
    assert_eq!(
        (delivered[0].attempts, &delivered[0].last_error),
        (1, &None)
    );
    let failed = store
        .list_notifications(Some(NotificationStatus::Failed), 10)
        .await
        .unwrap();
    assert_eq!(ids(&failed), [n2]);
    assert_eq!(failed[0].last_error.as_deref(), Some("HTTP 410 gone"));
    assert_eq!(failed[0].delivered_at, None);
    let pending = store
        .list_notifications(Some(NotificationStatus::Pending), 10)
        .await
        .unwrap();
    assert_eq!(ids(&pending), [n3, n1], "newest first");
    assert_eq!(pending[1].next_attempt_at, min(5));
    assert_eq!(
        pending[1].last_error.as_deref(),
        Some("HTTP 502 from the webhook")
    );
    assert_eq!(pending[1].attempts, 1);
    assert_eq!(
        ids(&store.list_notifications(None, 2).await.unwrap()),
        [n3, n2],
        "limit, newest first"
    );

    // After n3's lease: only n3 (n1 waits until its retry time; delivered and failed
    // are never claimed). Then it is delivered.
    let c = store
        .claim_notifications(Clock::At(min(1)), lease, 10)
        .await
        .unwrap();
    assert_eq!(ids(&c), [n3]);
    assert_eq!(c[0].attempts, 2);
    store
        .finish_notification(&c[0], &AttemptResult::Delivered, Clock::At(min(1)))
        .await
        .unwrap();
    // At the retry time: n1, its previous error still on record until this attempt ends.
    let c = store
        .claim_notifications(Clock::At(min(5)), lease, 10)
        .await
        .unwrap();
    assert_eq!(ids(&c), [n1]);
    assert_eq!(
        (c[0].attempts, c[0].last_error.as_deref()),
        (2, Some("HTTP 502 from the webhook"))
    );
    store
        .finish_notification(
            &c[0],
            &AttemptResult::Failed {
                error: "gave up".into(),
            },
            Clock::At(min(5)),
        )
        .await
        .unwrap();
    assert_counts(store.as_ref(), 0, 2, 2).await;
    assert!(store
        .claim_notifications(Clock::At(min(60)), lease, 10)
        .await
        .unwrap()
        .is_empty());

    // A late result for a delivered notification (a worker whose lease ran out) does
    // not undo the delivery.
    let before = get(n0).await;
    store
        .finish_notification(
            &held(n0),
            &AttemptResult::Retry {
                error: "late".into(),
                retry_in: Duration::from_secs(60),
            },
            Clock::At(min(5)),
        )
        .await
        .unwrap();
    store
        .finish_notification(
            &held(n0),
            &AttemptResult::Failed {
                error: "late".into(),
            },
            Clock::At(min(5)),
        )
        .await
        .unwrap();
    assert_eq!(get(n0).await, before);

    // Re-queue one: delivered ones stay as they are, unknown ids are reported.
    assert_eq!(
        store
            .requeue_notification(n0, Clock::At(min(6)))
            .await
            .unwrap(),
        Requeue::AlreadyDelivered
    );
    assert_eq!(get(n0).await, before);
    assert_eq!(
        store
            .requeue_notification(n0 + n1 + n2 + n3 + 1000, Clock::At(min(6)))
            .await
            .unwrap(),
        Requeue::NotFound
    );
    assert_eq!(
        store
            .requeue_notification(n2, Clock::At(min(6)))
            .await
            .unwrap(),
        Requeue::Requeued
    );
    let r = get(n2).await;
    assert_eq!(r.status, NotificationStatus::Pending);
    assert_eq!(
        (r.attempts, r.next_attempt_at, r.last_error),
        (0, min(6), None)
    );
    assert_counts(store.as_ref(), 1, 2, 1).await;

    // Re-queue every failed one: just n1 now.
    assert_eq!(store.requeue_failed(Clock::At(min(7))).await.unwrap(), 1);
    assert_eq!(store.requeue_failed(Clock::At(min(7))).await.unwrap(), 0);
    assert_counts(store.as_ref(), 2, 2, 0).await;
    let r = get(n1).await;
    assert_eq!(
        (r.status, r.attempts, r.next_attempt_at),
        (NotificationStatus::Pending, 0, min(7))
    );
    assert_eq!(r.last_error, None);

    // Each is due at its re-queue time, with a fresh attempt count.
    let long = Duration::from_secs(3600);
    let c = store
        .claim_notifications(Clock::At(min(6)), long, 10)
        .await
        .unwrap();
    assert_eq!(ids(&c), [n2]);
    assert_eq!(c[0].attempts, 1);
    let first_claim_of_n2 = c[0].clone();
    let c = store
        .claim_notifications(Clock::At(min(7)), long, 10)
        .await
        .unwrap();
    assert_eq!(ids(&c), [n1], "n2 is leased");
    // A leased one is being sent: re-queueing it now could send it twice at once.
    let lease_of_n1 = c[0].locked_until.expect("a claim holds a lease");
    assert_eq!(lease_of_n1, min(67));
    let before = get(n1).await;
    assert_eq!(
        store
            .requeue_notification(n1, Clock::At(min(8)))
            .await
            .unwrap(),
        Requeue::InFlight(lease_of_n1)
    );
    assert_eq!(get(n1).await, before, "an in-flight one is left alone");
    assert!(store
        .claim_notifications(Clock::At(min(8)), long, 10)
        .await
        .unwrap()
        .is_empty());

    // n2's worker stalls past its lease; another claim takes n2 over. The stalled
    // worker's late Retry or Failed changes nothing; the new holder's result counts.
    let c = store
        .claim_notifications(Clock::At(min(66)), long, 10)
        .await
        .unwrap();
    assert_eq!(ids(&c), [n2]);
    assert_eq!(c[0].attempts, 2);
    let second_claim_of_n2 = c[0].clone();
    let held_by_second = get(n2).await;
    for late in [
        AttemptResult::Failed {
            error: "stalled worker gave up".into(),
        },
        AttemptResult::Retry {
            error: "stalled worker".into(),
            retry_in: Duration::from_secs(4 * 60),
        },
    ] {
        store
            .finish_notification(&first_claim_of_n2, &late, Clock::At(min(66)))
            .await
            .unwrap();
        assert_eq!(get(n2).await, held_by_second, "{late:?} from a lost claim");
    }
    store
        .finish_notification(
            &second_claim_of_n2,
            &AttemptResult::Retry {
                error: "HTTP 503".into(),
                retry_in: Duration::from_secs(14 * 60),
            },
            Clock::At(min(66)),
        )
        .await
        .unwrap();
    let r = get(n2).await;
    assert_eq!(
        (
            r.status,
            r.next_attempt_at,
            r.locked_until,
            r.last_error.as_deref()
        ),
        (NotificationStatus::Pending, min(80), None, Some("HTTP 503"))
    );
    // Not held any more: re-queueing works again, and the n1 lease has run out too.
    assert_eq!(
        store
            .requeue_notification(n2, Clock::At(min(68)))
            .await
            .unwrap(),
        Requeue::Requeued
    );
    assert_eq!(
        store
            .requeue_notification(n1, Clock::At(min(68)))
            .await
            .unwrap(),
        Requeue::Requeued
    );
    let c = store
        .claim_notifications(Clock::At(min(68)), long, 10)
        .await
        .unwrap();
    assert_eq!(ids(&c), [n1, n2]);
    assert!(c.iter().all(|n| n.attempts == 1));
    let problems = db.inconsistencies().await;
    assert!(problems.is_empty(), "{problems:?}");
}

async fn concurrent_claimers_on_two_stores_never_share_a_notification(db: Arc<TestDb>) {
    let first = notification_store(&db).await;
    let second = open_store(&*db).await;
    let tokens = mint_many(first.as_ref(), "race/pkg", 200, Ttl::hours(2)).await;
    let refs: Vec<&Token> = tokens.iter().collect();
    let t0 = now_ms();
    for (i, chunk) in refs.chunks(50).enumerate() {
        record_at(first.as_ref(), chunk, t0 + Ttl::milliseconds(i as i64)).await;
    }
    let queued: Vec<i64> = ids(&all_notifications(first.as_ref()).await);
    assert_eq!(queued.len(), 200);

    // Four claimers, two per store, each taking small batches until nothing is left.
    let now = t0 + Ttl::seconds(1);
    let claimer = |store: Arc<dyn RevocationStore>| {
        tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = store
                    .claim_notifications(Clock::At(now), Duration::from_secs(3600), 3)
                    .await
                    .unwrap();
                if batch.is_empty() {
                    return got;
                }
                assert!(batch.len() <= 3);
                got.extend(batch.iter().map(|n| n.id));
                tokio::task::yield_now().await;
            }
        })
    };
    let handles = [
        claimer(Arc::clone(&first)),
        claimer(Arc::clone(&second)),
        claimer(Arc::clone(&first)),
        claimer(Arc::clone(&second)),
    ];
    let mut per_claimer = Vec::new();
    for h in handles {
        per_claimer.push(h.await.unwrap());
    }
    let mut claimed: Vec<i64> = per_claimer.iter().flatten().copied().collect();
    let total = claimed.len();
    claimed.sort_unstable();
    claimed.dedup();
    assert_eq!(total, claimed.len(), "a notification was claimed twice");
    let mut expected = queued.clone();
    expected.sort_unstable();
    assert_eq!(claimed, expected, "every notification claimed");
    let sizes: Vec<usize> = per_claimer.iter().map(Vec::len).collect();
    assert!(
        sizes.iter().filter(|&&n| n > 0).count() >= 2,
        "no contention: {sizes:?}"
    );
    // One attempt each, as stored.
    let stored = all_notifications(second.as_ref()).await;
    assert!(
        stored.iter().all(|n| n.attempts == 1),
        "attempts counted twice"
    );
}

/// The revoking statement queues one outbox batch per delivery; four turners on two
/// stores (two instances) racing over 120 of them (more than one transaction's 100)
/// turn each exactly once: one notification per token, none left queued.
async fn outbox_batches_turned_on_two_stores_notify_each_token_once(db: Arc<TestDb>) {
    let first = notification_store(&db).await;
    let second = open_store(&*db).await;
    let tokens = mint_many(first.as_ref(), "batch/pkg", 360, Ttl::hours(2)).await;
    let refs: Vec<&Token> = tokens.iter().collect();
    let t0 = now_ms();
    for (i, chunk) in refs.chunks(3).enumerate() {
        record_at(first.as_ref(), chunk, t0 + Ttl::milliseconds(i as i64)).await;
    }
    assert_eq!(
        db.texts("SELECT CAST(count(*) AS TEXT) FROM notification_batches")
            .await,
        ["120"],
        "one batch per delivery"
    );
    assert_eq!(
        db.texts("SELECT CAST(count(*) AS TEXT) FROM notifications")
            .await,
        ["0"],
        "no notification row written by the deliveries themselves"
    );

    let turner = |store: Arc<dyn RevocationStore>| {
        tokio::spawn(async move { store.expand_notifications().await.unwrap() })
    };
    let handles = [
        turner(Arc::clone(&first)),
        turner(Arc::clone(&second)),
        turner(Arc::clone(&first)),
        turner(Arc::clone(&second)),
    ];
    let mut turned = 0;
    for h in handles {
        turned += h.await.unwrap();
    }
    assert_eq!(turned, 120, "each batch turned once");

    // Nothing left: one read says so.
    let statements = second.statements();
    assert_eq!(second.expand_notifications().await.unwrap(), 0);
    assert_eq!(second.statements(), statements + db.counted(1));

    let all = all_notifications(first.as_ref()).await;
    assert_eq!(all.len(), 360);
    let mut hashes: Vec<_> = all.iter().map(|n| n.token_hash).collect();
    hashes.sort_unstable();
    hashes.dedup();
    assert_eq!(hashes.len(), 360, "one notification per token");
    for n in &all {
        let i = refs.iter().position(|t| t.hash() == n.token_hash).unwrap();
        assert_eq!(n.url, format!("https://example.com/{}", i % 3));
        assert_eq!(n.revoked_at, t0 + Ttl::milliseconds((i / 3) as i64));
        assert_eq!(n.next_attempt_at, n.revoked_at);
    }
    let problems = db.inconsistencies().await;
    assert!(problems.is_empty(), "{problems:?}");
}

/// One transaction of the outbox turns batches until they make 5,000 notifications
/// (the last one whole): three deliveries of 2,600 revoked tokens take two rounds, so
/// a write on SQLite's one writer stays short however large the deliveries are.
async fn a_transaction_of_the_outbox_turns_about_5000_notifications(db: Arc<TestDb>) {
    let store = notification_store(&db).await;
    let tokens = mint_many(store.as_ref(), "large/pkg", 3 * 2_600, Ttl::hours(2)).await;
    let refs: Vec<&Token> = tokens.iter().collect();
    let t0 = now_ms();
    for (i, chunk) in refs.chunks(2_600).enumerate() {
        record_at(store.as_ref(), chunk, t0 + Ttl::milliseconds(i as i64)).await;
    }
    let statements = store.statements();
    assert_eq!(store.expand_notifications().await.unwrap(), 3);
    // A round is the read finding a batch queued, then the turning: one statement on
    // PostgreSQL, BEGIN, DELETE … RETURNING, INSERT, COMMIT on SQLite; then the read
    // finding none. Two rounds (2,600 + 2,600, then 2,600), not one.
    let round = match db.kind() {
        Kind::Sqlite => 1 + 4,
        Kind::Postgres => db.counted(2),
    };
    assert_eq!(
        store.statements() - statements,
        2 * round + db.counted(1),
        "two rounds"
    );
    assert_eq!(all_notifications(store.as_ref()).await.len(), 3 * 2_600);
    let problems = db.inconsistencies().await;
    assert!(problems.is_empty(), "{problems:?}");
}

/// A command opens a database as it is (`notify list`, `token show`): one the current
/// migrations have not reached has no batch table, and its notifications are still
/// read, listed and counted in stats.
async fn the_outbox_is_read_on_a_database_without_batches(db: Arc<TestDb>) {
    let store = notification_store(&db).await;
    let tokens = mint_many(store.as_ref(), "older/pkg", 2, Ttl::hours(2)).await;
    let refs: Vec<&Token> = tokens.iter().collect();
    record_at(store.as_ref(), &refs, now_ms()).await;
    assert_eq!(store.expand_notifications().await.unwrap(), 1);
    db.execute("DROP TABLE notification_batches").await;
    assert_eq!(all_notifications(store.as_ref()).await.len(), 2);
    assert!(store
        .notification_of_token(&tokens[0].hash())
        .await
        .unwrap()
        .is_some());
    let stats = store
        .stats(chrono::NaiveDate::from_ymd_opt(2020, 1, 1).unwrap())
        .await
        .unwrap();
    assert_eq!(stats.recent_revocations.len(), 2);
    assert_eq!(store.expand_notifications().await.unwrap(), 0);
}

async fn a_failed_record_report_queues_no_notification(db: Arc<TestDb>) {
    let store = notification_store(&db).await;
    let tokens = mint_many(store.as_ref(), "fail/pkg", 2, Ttl::hours(2)).await;
    let refs: Vec<&Token> = tokens.iter().collect();
    let report = |candidates: Vec<CandidateItem>| NewReport {
        scanner: "github".into(),
        key_id: KEY_ID.into(),
        received_at: now_ms(),
        body_sha256: [9; 32],
        item_count: candidates.len() as u32,
        not_ours: 0,
        candidates,
    };
    let item = |t: &Token, position: u32| CandidateItem {
        position,
        hash: t.hash(),
        token_type: "cio_tp".into(),
        source: "content".into(),
        url: format!("https://example.com/{position}"),
        found_in: None,
    };
    let nothing_written = || async {
        assert_eq!(store.count_reports().await.unwrap(), 0);
        assert_counts(store.as_ref(), 0, 0, 0).await;
        assert!(all_notifications(store.as_ref()).await.is_empty());
        for t in &tokens {
            let stored = store.token(&t.hash()).await.unwrap().unwrap();
            assert_eq!(stored.revoked_at, None);
        }
    };

    // The database is down.
    let short = revoker::store::connect(
        db.url(),
        &revoker::store::PoolSettings {
            acquire_timeout: Duration::from_millis(700),
            ..revoker::store::PoolSettings::default()
        },
    )
    .await
    .unwrap();
    let outage = Outage::start(&db).await;
    let failed = short
        .record_report(
            &report(vec![item(&tokens[0], 0), item(&tokens[1], 1)]),
            RecordOptions::default(),
        )
        .await;
    outage.end(&db).await;
    assert!(failed.is_err());
    nothing_written().await;

    // The statement fails after the tokens were flipped (a trigger refuses the report's
    // items, written after the revoking UPDATE on both backends): the revocation and the
    // notifications go together.
    let refused = "items refused by the test";
    match db.kind() {
        Kind::Sqlite => {
            db.execute(&format!(
                "CREATE TRIGGER refuse_items BEFORE INSERT ON report_item_sets
                 BEGIN SELECT RAISE(ABORT, '{refused}'); END"
            ))
            .await;
        }
        Kind::Postgres => {
            db.execute(&format!(
                "CREATE FUNCTION refuse_items() RETURNS trigger LANGUAGE plpgsql
                 AS $$ BEGIN RAISE EXCEPTION '{refused}'; END $$"
            ))
            .await;
            db.execute(
                "CREATE TRIGGER refuse_items BEFORE INSERT ON report_item_sets
                 FOR EACH ROW EXECUTE FUNCTION refuse_items()",
            )
            .await;
        }
    }
    let failed = store
        .record_report(
            &report(vec![item(&tokens[0], 0), item(&tokens[1], 1)]),
            RecordOptions::default(),
        )
        .await;
    let err = failed.expect_err("the items were refused");
    assert!(format!("{err:?}").contains(refused), "{err:?}");
    nothing_written().await;
    db.execute(match db.kind() {
        Kind::Sqlite => "DROP TRIGGER refuse_items",
        Kind::Postgres => "DROP TRIGGER refuse_items ON report_item_sets",
    })
    .await;

    // The retry succeeds and queues both.
    let recorded = record_at(store.as_ref(), &refs, now_ms()).await;
    assert_eq!(recorded.tokens_revoked, 2);
    let all = all_notifications(store.as_ref()).await;
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|n| n.report_id == recorded.report_id));
    let problems = db.inconsistencies().await;
    assert!(problems.is_empty(), "{problems:?}");
}

// ---------------------------------------------------------------- once per body, deadlines

const ONCE: RecordOptions = RecordOptions {
    deadline: None,
    once_per_body: true,
};

/// A report of `tokens` (item i at position i + 1, after one junk item) from `scanner`,
/// whose body digest is `sha`, received at `at`.
fn body_report(
    scanner: &str,
    tokens: &[Token],
    sha: u8,
    at: chrono::DateTime<chrono::Utc>,
) -> NewReport {
    let candidates: Vec<CandidateItem> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| CandidateItem {
            position: i as u32 + 1,
            hash: t.hash(),
            token_type: "cio_tp".into(),
            source: "content".into(),
            url: format!("https://example.com/{i}"),
            found_in: None,
        })
        .collect();
    NewReport {
        scanner: scanner.into(),
        key_id: KEY_ID.into(),
        received_at: at,
        body_sha256: [sha; 32],
        item_count: candidates.len() as u32 + 1,
        not_ours: 1,
        candidates,
    }
}

/// A body an older release recorded without looking inside its items, delivered again
/// within the window: the tokens found inside are recorded and revoked now, as a report
/// of their own (not a 503 for a week), and a further repeat is answered from both.
async fn a_repeat_recorded_without_its_tokens_found_inside_records_them(db: Arc<TestDb>) {
    let store = notification_store(&db).await;
    let tokens = mint_many(store.as_ref(), "inside/pkg", 2, Ttl::hours(2)).await;
    let older = body_report("github", &tokens[..1], 7, now_ms());
    let first = store.record_report(&older, ONCE).await.unwrap();
    assert!(!first.duplicate);
    let mut now_with = body_report("github", &tokens[..1], 7, now_ms());
    let mut inside = now_with.candidates[0].clone();
    inside.hash = tokens[1].hash();
    inside.position = now_with.item_count;
    inside.found_in = Some("items[1].url".into());
    now_with.candidates.push(inside);
    now_with.item_count += 1;
    let repeat = store.record_report(&now_with, ONCE).await.unwrap();
    assert!(repeat.duplicate);
    assert_eq!(repeat.report_id, first.report_id);
    assert_eq!(repeat.outcomes, [Outcome::Revoked, Outcome::Revoked]);
    assert_eq!(repeat.tokens_revoked, 1);
    assert!(repeat.unrecorded.is_empty());
    assert_eq!(store.count_reports().await.unwrap(), 2);
    let again = store.record_report(&now_with, ONCE).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.outcomes, [Outcome::Revoked, Outcome::Revoked]);
    assert_eq!(again.tokens_revoked, 0);
    assert_eq!(store.count_reports().await.unwrap(), 2);
    assert_eq!(all_notifications(store.as_ref()).await.len(), 2);

    // A release that finds one more token inside the same body: it is recorded too (a
    // report of the tokens missing now), not answered `unknown` from the last one.
    let third = mint_many(store.as_ref(), "inside/pkg3", 1, Ttl::hours(2)).await;
    let mut more = now_with.clone();
    let mut inside = more.candidates[1].clone();
    inside.hash = third[0].hash();
    inside.position = more.item_count;
    more.candidates.push(inside);
    more.item_count += 1;
    let later = store.record_report(&more, ONCE).await.unwrap();
    assert!(later.duplicate);
    assert_eq!(
        later.outcomes,
        [Outcome::Revoked, Outcome::AlreadyRevoked, Outcome::Revoked]
    );
    assert_eq!(later.tokens_revoked, 1);
    assert_eq!(store.count_reports().await.unwrap(), 3);
    assert_eq!(all_notifications(store.as_ref()).await.len(), 3);
    assert!(db.inconsistencies().await.is_empty());
}

/// A body recorded before a token format was enabled (`--token-formats`), delivered
/// again: an item's own token that is a candidate now was not one then. It is recorded
/// and revoked now, as a report of its own, not answered `unknown` nor refused 503.
async fn a_repeat_whose_token_a_newly_enabled_format_takes_records_it(db: Arc<TestDb>) {
    let store = notification_store(&db).await;
    let tokens = mint_many(store.as_ref(), "formats/pkg", 2, Ttl::hours(2)).await;
    // Then: the second item was not ours (its format was not enabled).
    let mut then = body_report("github", &tokens[..1], 9, now_ms());
    then.item_count += 1;
    then.not_ours += 1;
    let first = store.record_report(&then, ONCE).await.unwrap();
    assert!(!first.duplicate);
    // Now: the same body, both items candidates.
    let now = body_report("github", &tokens, 9, now_ms());
    let repeat = store.record_report(&now, ONCE).await.unwrap();
    assert!(repeat.duplicate);
    assert_eq!(repeat.report_id, first.report_id);
    assert_eq!(repeat.outcomes, [Outcome::Revoked, Outcome::Revoked]);
    assert_eq!(repeat.tokens_revoked, 1);
    assert!(store
        .token(&tokens[1].hash())
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());
    assert_eq!(store.count_reports().await.unwrap(), 2);
    let again = store.record_report(&now, ONCE).await.unwrap();
    assert_eq!(again.outcomes, [Outcome::Revoked, Outcome::Revoked]);
    assert_eq!(store.count_reports().await.unwrap(), 2);
    assert_eq!(all_notifications(store.as_ref()).await.len(), 2);
    assert!(db.inconsistencies().await.is_empty());
}

/// The same scanner's same bytes within [`ONCE_PER_BODY_WINDOW`] are answered from the
/// first report, nothing written; older than the window, from another scanner, or
/// without `once_per_body` (local replay), they are a report of their own.
async fn a_repeated_body_is_one_report_within_the_window(db: Arc<TestDb>) {
    let store = notification_store(&db).await;
    let tokens = mint_many(store.as_ref(), "once/pkg", 2, Ttl::hours(2)).await;
    let now = now_ms();
    let first = store
        .record_report(&body_report("github", &tokens, 1, now), ONCE)
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.outcomes, [Outcome::Revoked, Outcome::Revoked]);
    assert_eq!(first.tokens_revoked, 2);
    let statements = store.statements();
    let repeat = store
        .record_report(&body_report("github", &tokens, 1, now_ms()), ONCE)
        .await
        .unwrap();
    assert!(repeat.duplicate);
    assert_eq!(repeat.report_id, first.report_id);
    assert_eq!(
        repeat.outcomes, first.outcomes,
        "the first answer, not already_revoked"
    );
    assert_eq!(repeat.counts, first.counts);
    assert_eq!(repeat.tokens_revoked, 0);
    let notifications = all_notifications(store.as_ref()).await;
    assert_eq!(notifications.len(), 2, "queued once");
    assert_eq!(store.count_reports().await.unwrap(), 1);
    assert!(store.statements() > statements);

    // Another scanner's identical bytes, and local replay's, are reports of their own.
    let other = store
        .record_report(&body_report("gitlab", &tokens, 1, now_ms()), ONCE)
        .await
        .unwrap();
    assert!(!other.duplicate);
    assert_eq!(other.outcomes, [Outcome::AlreadyRevoked; 2]);
    let replayed = store
        .record_report(
            &body_report("github", &tokens, 1, now_ms()),
            RecordOptions::default(),
        )
        .await
        .unwrap();
    assert!(!replayed.duplicate);
    assert_eq!(store.count_reports().await.unwrap(), 3);

    // A body first delivered longer ago than the window is recorded anew, and its
    // repeats are then answered from the new report.
    let long_ago = now - chrono::TimeDelta::from_std(ONCE_PER_BODY_WINDOW).unwrap() - Ttl::hours(1);
    let old = store
        .record_report(&body_report("github", &tokens, 2, long_ago), ONCE)
        .await
        .unwrap();
    assert!(!old.duplicate);
    let renewed = store
        .record_report(&body_report("github", &tokens, 2, now_ms()), ONCE)
        .await
        .unwrap();
    assert!(!renewed.duplicate, "older than the window");
    assert_ne!(renewed.report_id, old.report_id);
    let again = store
        .record_report(&body_report("github", &tokens, 2, now_ms()), ONCE)
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.report_id, renewed.report_id);
    assert_eq!(store.count_reports().await.unwrap(), 5);
    let problems = db.inconsistencies().await;
    assert!(problems.is_empty(), "{problems:?}");
}

/// Eight identical deliveries at once, on two instances (two pools): one report, one
/// revocation and one notification per token, and every answer the same.
async fn identical_bodies_racing_on_two_instances_leave_one_report(db: Arc<TestDb>) {
    let a = notification_store(&db).await;
    let b = open_store(&*db).await;
    let tokens = Arc::new(mint_many(a.as_ref(), "race/pkg", 40, Ttl::hours(2)).await);
    let at = now_ms();
    let runs: Vec<_> = (0..8)
        .map(|i| {
            let store = Arc::clone(if i % 2 == 0 { &a } else { &b });
            let tokens = Arc::clone(&tokens);
            tokio::spawn(async move {
                store
                    .record_report(&body_report("github", &tokens, 3, at), ONCE)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut answers = Vec::new();
    for run in runs {
        answers.push(run.await.unwrap());
    }
    let fresh: Vec<_> = answers.iter().filter(|r| !r.duplicate).collect();
    assert_eq!(fresh.len(), 1, "exactly one recorded it");
    for r in &answers {
        assert_eq!(r.report_id, fresh[0].report_id);
        assert_eq!(r.outcomes, vec![Outcome::Revoked; 40]);
    }
    assert_eq!(answers.iter().map(|r| r.tokens_revoked).sum::<u32>(), 40);
    assert_eq!(a.count_reports().await.unwrap(), 1);
    assert_eq!(all_notifications(a.as_ref()).await.len(), 40);
    let problems = db.inconsistencies().await;
    assert!(problems.is_empty(), "{problems:?}");
}

/// Another session holds what the delivery needs (PostgreSQL: the token's row lock;
/// SQLite: the write lock) past the delivery's deadline: the database gives up and rolls
/// back before the deadline, so nothing lands later. Checked against removing the
/// deadline's `SET LOCAL statement_timeout` (PostgreSQL) or `busy_timeout` cut (SQLite):
/// the record then waits for the lock and the 3 s guard below fails the test.
async fn a_record_past_its_deadline_is_rolled_back_by_the_database(db: Arc<TestDb>) {
    let store = notification_store(&db).await;
    let tokens = mint_many(store.as_ref(), "held/pkg", 1, Ttl::hours(2)).await;
    let hash = tokens[0].hash();
    // The lock holder: an open transaction of another connection.
    let holder = LockHolder::take(&db, &hash).await;
    let options = RecordOptions {
        deadline: Some(Instant::now() + Duration::from_millis(800)),
        once_per_body: true,
    };
    let started = Instant::now();
    let report = body_report("github", &tokens, 4, now_ms());
    let result = tokio::time::timeout(
        Duration::from_secs(3),
        store.record_report(&report, options),
    )
    .await
    .expect("the database gave up by the deadline");
    let took = started.elapsed();
    assert!(
        matches!(result, Err(StoreError::DeadlineExceeded)),
        "{result:?}"
    );
    assert!(took < Duration::from_millis(800), "gave up after {took:?}");
    holder.release().await;
    assert_eq!(store.count_reports().await.unwrap(), 0);
    assert_eq!(store.token(&hash).await.unwrap().unwrap().revoked_at, None);
    // The retry records it whole, and the connection waits for locks as before.
    let retried = store.record_report(&report, ONCE).await.unwrap();
    assert!(!retried.duplicate);
    assert_eq!(retried.outcomes, [Outcome::Revoked]);
    assert_eq!(store.count_reports().await.unwrap(), 1);
}

/// SQLite: one process's deliveries take the write lock in turn. While the first waits
/// for the lock another session holds, a second waits behind it without sending a
/// statement, and gives up at its deadline having sent none; once the lock is free,
/// both record. Without the turn (`Store::writer`), the second sends its `BEGIN` and its
/// report row and waits in SQLite's busy handler, which sleeps up to 100 ms between
/// tries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_deliveries_of_one_process_take_the_write_lock_in_turn() {
    let db = TestDb::new(Kind::Sqlite).await.expect("SQLite");
    let store = notification_store(&db).await;
    let tokens = mint_many(store.as_ref(), "turn/pkg", 2, Ttl::hours(2)).await;
    let holder = LockHolder::take(&db, &tokens[0].hash()).await;
    let before = store.statements();
    let first = {
        let store = Arc::clone(&store);
        let report = body_report("github", &tokens[..1], 4, now_ms());
        tokio::spawn(async move { store.record_report(&report, ONCE).await })
    };
    // The first has sent its BEGIN and its report row, which waits for the lock.
    while store.statements() < before + 2 {
        tokio::task::yield_now().await;
    }
    let waiting = store.statements();
    let second = body_report("github", &tokens[1..], 5, now_ms());
    let result = store
        .record_report(
            &second,
            RecordOptions {
                deadline: Some(Instant::now() + Duration::from_millis(300)),
                once_per_body: true,
            },
        )
        .await;
    assert!(
        matches!(result, Err(StoreError::DeadlineExceeded)),
        "{result:?}"
    );
    assert_eq!(
        store.statements(),
        waiting,
        "the second sent nothing while the first had the turn"
    );
    holder.release().await;
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.outcomes, [Outcome::Revoked]);
    let second = store.record_report(&second, ONCE).await.unwrap();
    assert_eq!(second.outcomes, [Outcome::Revoked]);
    assert_eq!(store.count_reports().await.unwrap(), 2);
}

// ---------------------------------------------------------------- notification ids

async fn notification_ids_are_uuids_distinct_across_databases(db: Arc<TestDb>) {
    // Two databases of the same kind (staging and production, or a restored copy),
    // each queueing its first notification: the same row id, different public ids.
    let other = TestDb::new(db.kind()).await.expect("a second database");
    let mut firsts = Vec::new();
    for url in [db.url(), other.url()] {
        let store = open_store(url).await;
        store.migrate().await.unwrap();
        let tokens = mint_many(store.as_ref(), "ids/pkg", 3, Ttl::hours(1)).await;
        let refs: Vec<&Token> = tokens.iter().collect();
        record_at(store.as_ref(), &refs, now_ms()).await;
        let all = all_notifications(store.as_ref()).await;
        assert_eq!(all.len(), 3);
        let mut public: Vec<&str> = all.iter().map(|n| n.public_id.as_str()).collect();
        assert!(public.iter().all(|p| is_uuid_v7(p)), "{public:?}");
        public.sort_unstable();
        public.dedup();
        assert_eq!(public.len(), 3, "distinct within one database");
        let first = all.iter().min_by_key(|n| n.id).unwrap().clone();
        // Found by its public id, in any case.
        let found = store
            .notification_by_public_id(&first.public_id.to_uppercase())
            .await
            .unwrap();
        assert_eq!(found.as_ref(), Some(&first));
        assert_eq!(
            store.notification_by_public_id("not-a-uuid").await.unwrap(),
            None
        );
        firsts.push(first);
    }
    assert_eq!(firsts[0].id, firsts[1].id, "row ids count per database");
    assert_ne!(
        firsts[0].public_id, firsts[1].public_id,
        "public ids never collide across databases"
    );
    other.cleanup().await;
}

/// Applies this backend's migrations up to and including `version`, from the
/// migrations folder (the same files the binary embeds).
async fn migrate_to(db: &TestDb, version: i64) {
    let dir = match db.kind() {
        Kind::Sqlite => "migrations/sqlite",
        Kind::Postgres => "migrations/postgres",
    };
    let all =
        sqlx::migrate::Migrator::new(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
            .await
            .unwrap();
    let mut upto = sqlx::migrate::Migrator::DEFAULT;
    upto.migrations = all
        .migrations
        .iter()
        .filter(|m| m.version <= version)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    match db.kind() {
        Kind::Sqlite => {
            let opts =
                <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(db.url())
                    .unwrap()
                    .create_if_missing(true);
            let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
            upto.run(&pool).await.unwrap();
            pool.close().await;
        }
        Kind::Postgres => {
            let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
            upto.run(&pool).await.unwrap();
            pool.close().await;
        }
    }
}

/// Migrations 0011 (PostgreSQL) and 0013 (SQLite, which rebuilds both tables) drop the
/// foreign keys of `tokens` and `report_items`, and 0014 moves each report's items into
/// one row (`report_items` is a view over them since): every row is kept as it was
/// (position gaps and `found_in` included), and the store reads them.
async fn dropping_the_foreign_keys_keeps_every_row(db: Arc<TestDb>) {
    let sqlite = db.kind() == Kind::Sqlite;
    migrate_to(&db, if sqlite { 12 } else { 10 }).await;
    let hash = |i: u32| {
        if sqlite {
            format!("X'{i:064x}'")
        } else {
            format!("'\\x{i:064x}'::bytea")
        }
    };
    let (t0, t1) = if sqlite {
        ("1700000000000", "1700000600000")
    } else {
        (
            "'2023-11-14T22:13:20Z'::timestamptz",
            "'2023-11-14T22:23:20Z'::timestamptz",
        )
    };
    db.execute(&format!(
        "INSERT INTO reports (id, scanner, key_id, received_at, body_sha256, item_count,
                              not_ours, revoked, already_revoked, expired, unknown)
         VALUES (7, 'github', 'key', {t1}, {}, 4, 1, 2, 0, 0, 1)",
        hash(99)
    ))
    .await;
    for (i, revoked, format) in [
        (1, true, "cio_tp"),
        (2, true, "crates_io_api"),
        (3, false, "cio_tp"),
    ] {
        let (at, by) = if revoked { (t1, "7") } else { ("NULL", "NULL") };
        db.execute(&format!(
            "INSERT INTO tokens (hash, owner, created_at, expires_at, revoked_at, revoked_by, format)
             VALUES ({}, 'own/er{i}', {t0}, {t1}, {at}, {by}, '{format}')",
            hash(i)
        ))
        .await;
    }
    for (position, token, outcome, found_in) in [
        (0, 1, "revoked", "NULL"),
        (1, 2, "revoked", "'items[1].url'"),
        (3, 50, "unknown", "NULL"),
    ] {
        db.execute(&format!(
            "INSERT INTO report_items (report_id, position, token_hash, token_type, source, url,
                                       outcome, found_in)
             VALUES (7, {position}, {}, 'cio_tp', 'commit', 'https://example.com/{position}',
                     '{outcome}', {found_in})",
            hash(token)
        ))
        .await;
    }
    let hex = if sqlite {
        "lower(hex({}))"
    } else {
        "encode({}, 'hex')"
    };
    let dump = || async {
        let tokens = db
            .texts(&format!(
                "SELECT concat_ws('|', {}, owner, created_at, expires_at,
                                  coalesce(revoked_at || '', '-'), coalesce(revoked_by || '', '-'), format)
                 FROM tokens ORDER BY hash",
                hex.replace("{}", "hash")
            ))
            .await;
        let items = db
            .texts(&format!(
                "SELECT concat_ws('|', report_id, position, {}, token_type, source, url, outcome,
                                  coalesce(found_in, '-'))
                 FROM report_items ORDER BY report_id, position",
                hex.replace("{}", "token_hash")
            ))
            .await;
        (tokens, items)
    };
    let before = dump().await;
    assert_eq!((before.0.len(), before.1.len()), (3, 3));

    let store = notification_store(&db).await;
    assert_eq!(dump().await, before, "every row kept as it was");
    let items = store.report_items(7).await.unwrap();
    assert_eq!(
        items.iter().map(|i| i.position).collect::<Vec<_>>(),
        [0, 1, 3]
    );
    assert_eq!(items[1].found_in.as_deref(), Some("items[1].url"));
    let revoked_by: Vec<String> = db
        .texts("SELECT coalesce(revoked_by || '', '-') FROM tokens ORDER BY hash")
        .await;
    assert_eq!(revoked_by, ["7", "7", "-"]);
    // The keys are gone: items of no report are taken, and the consistency check finds
    // them (a report's items are one row since migration 0014).
    db.execute("UPDATE report_item_sets SET report_id = 8")
        .await;
    assert!(
        db.inconsistencies()
            .await
            .contains(&"3 report items of no report".to_owned()),
        "{:?}",
        db.inconsistencies().await
    );
}

async fn migrating_a_database_with_notifications_gives_each_its_own_id(db: Arc<TestDb>) {
    // A database as 0003 left it, with notifications already queued (and one deleted,
    // so the row-id high-water mark is above the last row).
    migrate_to(&db, 3).await;
    let (time, yes) = match db.kind() {
        Kind::Sqlite => ("1700000000000", "1"),
        Kind::Postgres => ("now()", "true"),
    };
    for i in 0..6 {
        let hash = format!("{i:064x}");
        let hash = match db.kind() {
            Kind::Sqlite => format!("X'{hash}'"),
            Kind::Postgres => format!("'\\x{hash}'::bytea"),
        };
        db.execute(&format!(
            "INSERT INTO notifications (token_hash, report_id, owner, scanner, url, source,
                                        revoked_at, expired, next_attempt_at, status)
             VALUES ({hash}, 1, 'old/pkg', 'github', 'https://example.com/{i}', 'content',
                     {time}, {yes}, {time}, '{}')",
            if i % 2 == 0 { "pending" } else { "delivered" }
        ))
        .await;
    }
    db.execute("DELETE FROM notifications WHERE id = 6").await;

    // Then the current binary's migrations.
    let store = notification_store(&db).await;
    let before = all_notifications(store.as_ref()).await;
    assert_eq!(ids(&before), [5, 4, 3, 2, 1], "rows and row ids kept");
    let mut public: Vec<&str> = before.iter().map(|n| n.public_id.as_str()).collect();
    assert!(public.iter().all(|p| is_uuid_v7(p)), "{public:?}");
    public.sort_unstable();
    public.dedup();
    assert_eq!(public.len(), 5, "each existing row its own id");
    assert_eq!(
        before
            .iter()
            .filter(|n| n.status == NotificationStatus::Delivered)
            .count(),
        2
    );

    // A new row (queued by the revoking statement, which does not name the column)
    // gets one too, and its row id is not a reused one.
    let tokens = mint_many(store.as_ref(), "new/pkg", 1, Ttl::hours(1)).await;
    record_at(store.as_ref(), &[&tokens[0]], now_ms()).await;
    let after = all_notifications(store.as_ref()).await;
    let new = &after[0];
    assert_eq!(
        new.id, 7,
        "the row id high-water mark survives the migration"
    );
    assert!(is_uuid_v7(&new.public_id), "{}", new.public_id);
    assert!(before.iter().all(|n| n.public_id != new.public_id));

    // Found by it.
    let found = store
        .notification_by_public_id(&new.public_id)
        .await
        .unwrap()
        .expect("found by its public id");
    assert_eq!(found.id, new.id);
    // SQLite refuses a duplicate (a unique index). On PostgreSQL the ids are unique by
    // construction (74 random bits after the millisecond): migration 0011 put a BRIN
    // index in place of the unique B-tree every revocation wrote.
    let dup = "UPDATE notifications SET public_id = \
               (SELECT public_id FROM notifications WHERE id = 1) WHERE id = 2";
    match &*db {
        TestDb::Sqlite { url, .. } => {
            use sqlx::Connection;
            let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
            let refused = sqlx::query(dup).execute(&mut c).await.is_err();
            assert!(refused, "a duplicate public id is refused");
        }
        TestDb::Postgres { .. } => {
            let method = db
                .texts(
                    "SELECT am.amname FROM pg_class c JOIN pg_am am ON am.oid = c.relam
                     WHERE c.relname = 'notifications_public_id'",
                )
                .await;
            assert_eq!(method, ["brin"]);
        }
    }
}

// ---------------------------------------------------------------- the database's clock

/// PostgreSQL: leases are stamped and judged by the database's clock (`now()`), not by
/// the clock of the host that claims. Instance A claims a notification for an hour.
/// Instance B runs on a host whose clock is two hours ahead: as the worker and
/// `revoker notify retry` do, it claims and re-queues by the database's clock, so it
/// leaves A's lease alone. The old statements judged the lease by the claimer's own
/// reading of its clock; that claim is replayed at the end and takes the row over,
/// which is the double send this prevents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_leases_are_judged_by_the_database_clock() {
    let Some(db) = TestDb::new(Kind::Postgres).await else {
        return;
    };
    let a = notification_store(&db).await;
    let b = open_store(&db).await;
    let tokens = mint_many(a.as_ref(), "clock/pkg", 1, Ttl::hours(1)).await;
    record_at(a.as_ref(), &[&tokens[0]], now_ms()).await;

    let hour = Duration::from_secs(3600);
    let claimed = a
        .claim_notifications(Clock::Database, hour, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    // Stamped by the database: its own now() plus the lease.
    let left: f64 = {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(db.url()).await.unwrap();
        sqlx::query_scalar(
            "SELECT extract(epoch FROM locked_until - now())::float8 FROM notifications",
        )
        .fetch_one(&mut c)
        .await
        .unwrap()
    };
    assert!((3590.0..=3600.0).contains(&left), "lease ends in {left} s");

    // B, whose host clock reads two hours later, by the database's clock: held.
    let skewed_host_now = chrono::Utc::now() + Ttl::hours(2);
    assert!(b
        .claim_notifications(Clock::Database, hour, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        b.requeue_notification(claimed[0].id, Clock::Database)
            .await
            .unwrap(),
        Requeue::InFlight(_)
    ));
    // B changed nothing: the row is as A's claim left it.
    assert_eq!(all_notifications(b.as_ref()).await[0], {
        let mut n = claimed[0].clone();
        n.attempts = 1;
        n
    });

    // What the old claim did: B's own reading as "now" finds the lease over.
    let stolen = b
        .claim_notifications(Clock::At(skewed_host_now), hour, 10)
        .await
        .unwrap();
    assert_eq!(
        ids(&stolen),
        ids(&claimed),
        "judged by the host clock: taken over"
    );
    db.cleanup().await;
}

async fn the_retention_purge_removes_old_metadata_everywhere_and_keeps_the_counts(db: Arc<TestDb>) {
    use revoker::store::{Purged, PURGED};
    let (app, _keys) = app_for(&db).await;
    let store = app.store.as_ref();
    let (a1, a2) = (
        app.mint("old/one", Ttl::hours(1)).await,
        app.mint("old/two", Ttl::hours(1)).await,
    );
    let b = app.mint("new/one", Ttl::hours(1)).await;
    let item = |t: &Token, n: u32| {
        serde_json::json!({
            "token": t.expose_secret(), "type": format!("old_type_{n}"),
            "url": format!("https://github.com/old/repo/blob/main/leak{n}.txt"),
            "source": format!("old_source_{n}"),
        })
    };
    let deliver = |items: Vec<serde_json::Value>| {
        let body = serde_json::to_vec(&items).unwrap();
        let sig = Signer::test().sign(&body);
        let app = &app;
        async move { app.post("github", Some(KEY_ID), Some(&sig), body).await }
    };
    // Report A, 31 days old: two revocations and a re-report of one of them.
    let a = deliver(vec![item(&a1, 1), item(&a2, 2), item(&a1, 3)]).await;
    assert_eq!(a.labels(), ["true_positive"; 3]);
    let report_a = store
        .token(&a1.hash())
        .await
        .unwrap()
        .unwrap()
        .revoked_by
        .unwrap();
    // Report B, today.
    let fresh = serde_json::json!({
        "token": b.expose_secret(), "type": "new_type",
        "url": "https://github.com/new/repo/blob/main/fresh.txt", "source": "new_source",
    });
    assert_eq!(deliver(vec![fresh]).await.labels(), ["true_positive"]);
    db.age_report(report_a, 31).await;
    let stats_before = store
        .stats((chrono::Utc::now() - Ttl::days(60)).date_naive())
        .await
        .unwrap();

    let purged = revoker::retention::purge(store, Duration::from_secs(30 * 86400))
        .await
        .unwrap();
    assert_eq!(
        purged,
        Purged {
            reports: 1,
            items: 3,
            notifications: 2,
            bodies: 0,
        }
    );

    // Nothing of A's metadata is left in any row of any table; B's is whole.
    let dump = db.dump().await;
    for gone in ["old_type_", "old_source_", "github.com/old/repo"] {
        assert!(!dump.contains(gone), "{gone} survived the purge:\n{dump}");
    }
    for kept in [
        "new_type",
        "new_source",
        "github.com/new/repo/blob/main/fresh.txt",
    ] {
        assert!(dump.contains(kept), "{kept} was purged too early");
    }
    for i in store.report_items(report_a).await.unwrap() {
        assert_eq!(
            (i.token_type.as_str(), i.source.as_str(), i.url.as_str()),
            (PURGED, PURGED, PURGED)
        );
    }
    // The notifications of A (pending: no webhook) go without url and source if sent.
    for t in [&a1, &a2] {
        let n = notification_of(store, t).await.unwrap();
        assert_eq!((n.url.as_str(), n.source.as_str()), (PURGED, PURGED));
        let payload: serde_json::Value =
            serde_json::from_slice(&revoker::notify::payload_body(&n)).unwrap();
        assert!(payload["found"]["url"].is_null(), "{payload}");
        assert!(payload["found"]["source"].is_null(), "{payload}");
        assert_eq!(payload["found"]["scanner"], "github");
    }
    let n = notification_of(store, &b).await.unwrap();
    assert_eq!(n.url, "https://github.com/new/repo/blob/main/fresh.txt");

    // Hashes, outcomes, counts and timestamps stay: the stats' totals are the same.
    let stats_after = store
        .stats((chrono::Utc::now() - Ttl::days(60)).date_naive())
        .await
        .unwrap();
    assert_eq!(stats_after.totals, stats_before.totals);
    assert_eq!(stats_after.by_scanner, stats_before.by_scanner);
    assert_eq!(stats_after.daily, stats_before.daily);
    assert_eq!(stats_after.revocation_ages, stats_before.revocation_ages);
    // The per-source rollup follows the items: A's three now count under '(purged)', no
    // old source is named any more, and the sources still add up to the same items.
    let purged_source = stats_after
        .by_source
        .iter()
        .find(|s| s.source == PURGED)
        .unwrap();
    assert_eq!(purged_source.items, 3);
    assert!(stats_before
        .by_source
        .iter()
        .any(|s| s.source == "old_source_1"));
    assert!(!stats_after
        .by_source
        .iter()
        .any(|s| s.source.starts_with("old_source_")));
    let items = |s: &Stats| s.by_source.iter().map(|s| s.items).sum::<i64>();
    assert_eq!(items(&stats_after), items(&stats_before));
    assert!(store
        .token(&a1.hash())
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());
    let problems = db.inconsistencies().await;
    assert!(problems.is_empty(), "{problems:?}");

    // A second pass finds nothing; a shorter retention reaches B.
    let again = revoker::retention::purge(store, Duration::from_secs(30 * 86400)).await;
    assert_eq!(again.unwrap(), Purged::default());
    let now = revoker::retention::purge(store, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        now,
        Purged {
            reports: 1,
            items: 1,
            notifications: 1,
            bodies: 0,
        }
    );
    app.stop().await;
}

async fn the_retention_purge_goes_in_batches_bounded_by_reports_and_items(db: Arc<TestDb>) {
    use revoker::store::Purged;
    let (app, _keys) = app_for(&db).await;
    let store = app.store.as_ref();
    let mut reports = Vec::new();
    for _ in 0..5 {
        let t = [
            app.mint("o/p", Ttl::hours(1)).await,
            app.mint("o/p", Ttl::hours(1)).await,
        ];
        let body = alert_body(&[t[0].expose_secret(), t[1].expose_secret()]);
        assert_eq!(app.deliver(&Signer::test(), body).await.labels().len(), 2);
        let id = store
            .token(&t[0].hash())
            .await
            .unwrap()
            .unwrap()
            .revoked_by
            .unwrap();
        reports.push(id);
    }
    for id in &reports {
        db.age_report(*id, 31).await;
    }
    let before = chrono::Utc::now() - Ttl::days(30);
    // Items: reports of 2 items each, at most 3 items before the last report: 2 reports.
    let batch = store.purge_metadata(before, 200, 3).await.unwrap();
    assert_eq!((batch.reports, batch.items), (2, 4));
    // Reports: at most 1.
    let batch = store.purge_metadata(before, 1, 1000).await.unwrap();
    assert_eq!((batch.reports, batch.items), (1, 2));
    // A report larger than the item bound still goes, alone.
    let batch = store.purge_metadata(before, 200, 1).await.unwrap();
    assert_eq!((batch.reports, batch.items), (1, 2));
    // The oldest went first: the last report is the one left.
    for id in &reports[..4] {
        assert_eq!(
            store.report_items(*id).await.unwrap()[0].url,
            revoker::store::PURGED
        );
    }
    assert_ne!(
        store.report_items(reports[4]).await.unwrap()[0].url,
        revoker::store::PURGED
    );
    let rest = store.purge_metadata(before, 200, 1000).await.unwrap();
    assert_eq!(rest.reports, 1);
    let none = store.purge_metadata(before, 200, 1000).await.unwrap();
    assert_eq!(none, Purged::default());
    // A retention of ten thousand years: nothing is that old (and PostgreSQL is not
    // asked about a timestamp it refuses).
    let far = Duration::from_secs(10_000 * 365 * 86_400);
    assert_eq!(
        revoker::retention::purge(store, far).await.unwrap(),
        Purged::default()
    );
    let problems = db.inconsistencies().await;
    assert!(problems.is_empty(), "{problems:?}");
    app.stop().await;
}

/// A scanner's own url "(purged)" must not hide the notification's source from the purge.
async fn a_scanner_url_that_reads_purged_does_not_keep_the_source(db: Arc<TestDb>) {
    use revoker::store::PURGED;
    let (app, _keys) = app_for(&db).await;
    let store = app.store.as_ref();
    let t = app.mint("o/p", Ttl::hours(1)).await;
    let a = deliver_items(
        &app,
        "github",
        &[(t.expose_secret(), "secret_source", PURGED)],
    )
    .await;
    assert_eq!(a.labels(), ["true_positive"]);
    let report = store
        .token(&t.hash())
        .await
        .unwrap()
        .unwrap()
        .revoked_by
        .unwrap();
    db.age_report(report, 31).await;
    revoker::retention::purge(store, Duration::from_secs(30 * 86400))
        .await
        .unwrap();
    let n = notification_of(store, &t).await.unwrap();
    assert_eq!(n.source, PURGED);
    assert!(!db.dump().await.contains("secret_source"));
    app.stop().await;
}

/// What the foreign keys on `report_items.report_id` and `tokens.revoked_by` refused
/// until migrations 0011 (PostgreSQL) and 0013 (SQLite) dropped them, the consistency
/// check finds: rows naming a report that does not exist.
async fn the_consistency_check_finds_rows_of_no_report(db: Arc<TestDb>) {
    let store = notification_store(&db).await;
    let tokens = mint_many(store.as_ref(), "orphans/pkg", 1, Ttl::hours(2)).await;
    store
        .record_report(&body_report("github", &tokens, 3, now_ms()), ONCE)
        .await
        .unwrap();
    assert_eq!(db.inconsistencies().await, Vec::<String>::new());
    let plant = [
        (
            "UPDATE tokens SET revoked_by = 999999",
            "tokens revoked by no report there is",
        ),
        (
            "UPDATE report_item_sets SET report_id = 999999",
            "report items of no report",
        ),
        (
            "UPDATE notifications SET report_id = 999999",
            "notifications of no report",
        ),
    ];
    for (sql, what) in plant {
        db.execute(sql).await;
        let found = db.inconsistencies().await;
        assert!(
            found.iter().any(|f| f == &format!("1 {what}")),
            "{what}: {found:?}"
        );
    }
}

/// The once-per-body claims (`delivered_bodies`) past their week and a day go with the
/// retention pass, in batches, whatever the retention; younger ones stay (those within
/// the week still hold their body); a body whose claim went is recorded again as any body past its week is.
async fn the_retention_pass_deletes_body_claims_past_their_week(db: Arc<TestDb>) {
    let store = notification_store(&db).await;
    let tokens = mint_many(store.as_ref(), "claims/pkg", 4, Ttl::hours(2)).await;
    let week = Ttl::from_std(ONCE_PER_BODY_WINDOW).unwrap();
    let old = now_ms() - week - Ttl::days(1) - Ttl::hours(1);
    // Two bodies claimed over eight days ago, one an hour ago, one a week and an hour
    // ago (past the window, within the day's margin).
    let at_the_edge = now_ms() - week - Ttl::hours(1);
    for (i, at) in [
        (0u8, old),
        (1, old),
        (2, now_ms() - Ttl::hours(1)),
        (3, at_the_edge),
    ] {
        let r = body_report("github", &tokens[i as usize..=i as usize], 40 + i, at);
        store.record_report(&r, ONCE).await.unwrap();
    }
    let hex = match db.kind() {
        Kind::Sqlite => "hex(body_sha256)",
        Kind::Postgres => "upper(encode(body_sha256, 'hex'))",
    };
    let sql = format!("SELECT {hex} FROM delivered_bodies ORDER BY 1");
    let claims = || db.texts(&sql);
    assert_eq!(claims().await.len(), 4);
    let purged = revoker::retention::purge(store.as_ref(), Duration::from_secs(365 * 86_400))
        .await
        .unwrap();
    assert_eq!(purged.bodies, 2, "{purged:?}");
    assert_eq!(
        claims().await,
        [hex::encode_upper([42u8; 32]), hex::encode_upper([43u8; 32])]
    );
    // The young claim still holds its body: a repeat is answered from its report.
    let repeat = body_report("github", &tokens[2..3], 42, now_ms());
    assert!(store.record_report(&repeat, ONCE).await.unwrap().duplicate);
    // An old body again: a report of its own, as it was before the purge.
    let again = body_report("github", &tokens[0..1], 40, now_ms());
    let again = store.record_report(&again, ONCE).await.unwrap();
    assert!(!again.duplicate);
    assert_eq!(again.outcomes, [Outcome::AlreadyRevoked]);
    // Nothing left to delete.
    let purged = revoker::retention::purge(store.as_ref(), Duration::from_secs(365 * 86_400))
        .await
        .unwrap();
    assert_eq!(purged.bodies, 0);
    assert!(db.inconsistencies().await.is_empty());
}

/// During an upgrade older instances keep running on the migrated database: the statement
/// of a binary from before migration 0010 still writes `stats_ages` with its old key
/// (0010 added `stats_format_ages` beside it instead of re-keying it).
async fn an_older_binary_still_records_its_token_ages(db: Arc<TestDb>) {
    let _store = notification_store(&db).await;
    let older = "INSERT INTO stats_ages (bucket, slot, tokens) VALUES (3, 0, 1)
                 ON CONFLICT (bucket, slot) DO UPDATE SET tokens = stats_ages.tokens + excluded.tokens";
    db.execute(older).await;
    db.execute(older).await;
    assert_eq!(
        db.texts("SELECT CAST(tokens AS TEXT) FROM stats_ages")
            .await,
        ["2"]
    );
}
