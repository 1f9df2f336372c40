//! PostgreSQL behind a real PgBouncer in transaction mode (issue 18): migrations go over
//! `--migrate-database-url`; with `--db-pooler transaction` every command and six
//! `serve` instances work through the pooler alone; the pooler restarting mid-delivery
//! loses nothing; and what cannot work says so in words, never `prepared statement
//! "sqlx_s_1" already exists`. (The contract suite runs through the pooler too:
//! `tests/contract.rs`, `pooled::*`.)
//!
//! Needs Debian's `pgbouncer` (`.ci/run` installs it); without it the tests skip, unless
//! `CI` is set.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use revoker::domain::token::Token;

use common::*;

/// A fresh, empty PostgreSQL database (the tests that take it migrate it themselves,
/// over the direct URL) behind a PgBouncer in transaction mode with one server
/// connection: every client meets what the others left on it. `db.url()` is the
/// pooler's, `db.direct_url()` the database's.
async fn pooled() -> Option<TestDb> {
    TestDb::empty_pooled(1).await
}

/// The stderr of a command that must have failed.
fn refused(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "succeeded: {stderr}");
    stderr
}

fn migrate_command(args: &[&str]) -> std::process::Command {
    let mut cmd = revoker_command();
    cmd.arg("migrate").args(args);
    cmd
}

fn migrate(args: &[&str]) -> std::process::Output {
    migrate_command(args).output().unwrap()
}

#[tokio::test]
async fn migrations_go_over_the_direct_url_beside_a_pooled_one() {
    let Some(db) = pooled().await else {
        return;
    };
    let pooled_url = db.url().to_owned();
    let out = migrate(&[
        "--database-url",
        &pooled_url,
        "--migrate-database-url",
        db.direct_url(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with(&format!("applied {} migration(s)", postgres_migrations())),
        "{stdout}"
    );
    // Applied on the database itself.
    let applied = db
        .texts("SELECT count(*)::text FROM _sqlx_migrations WHERE success")
        .await;
    assert_eq!(applied, [postgres_migrations().to_string()]);
    // The same from the environment.
    let out = revoker_command()
        .args(["migrate", "--database-url", &pooled_url])
        .env("REVOKER_MIGRATE_DATABASE_URL", db.direct_url())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!(
            "no migrations pending ({} applied)",
            postgres_migrations()
        )),
        "{stdout}"
    );
    db.cleanup().await;
}

/// `token mint` through the pooler (`--db-pooler transaction`), migrated over the direct
/// URL; and a migrate URL that names another database is refused, not taken for this
/// one.
#[tokio::test]
async fn mint_migrates_over_the_direct_url_and_checks_it_was_this_database() {
    let Some(db) = pooled().await else {
        return;
    };
    let pooled_url = db.url().to_owned();
    run_ok(
        revoker_command()
            .args(["token", "mint", "--owner", "team", "--ttl", "1h"])
            .args([
                "--database-url",
                &pooled_url,
                "--db-pooler",
                "transaction",
                "--migrate-database-url",
                db.direct_url(),
            ]),
    );
    let minted = db.texts("SELECT count(*)::text FROM tokens").await;
    assert_eq!(minted, ["1"]);

    // Empty: with no migration applied, it cannot pass for the migrated one.
    let Some(other) = TestDb::empty(Kind::Postgres).await else {
        return;
    };
    let out = revoker_command()
        .args(["token", "mint", "--owner", "team", "--ttl", "1h"])
        .args([
            "--database-url",
            other.url(),
            "--migrate-database-url",
            db.direct_url(),
        ])
        .output()
        .unwrap();
    let stderr = refused(&out);
    assert!(
        stderr.contains("must name the same database as --database-url"),
        "{stderr}"
    );
    other.cleanup().await;
    db.cleanup().await;
}

/// Leaves prepared statements under sqlx's names on the pooler's one server connection
/// (as a previous revoker process does): what a transaction-mode pooler hands the next
/// client. Whatever the connection held before is deallocated first.
async fn plant_prepared_statements(pooled_url: &str) {
    use sqlx::Connection;
    let mut other = sqlx::PgConnection::connect(pooled_url).await.unwrap();
    let prepare: String = std::iter::once("DEALLOCATE ALL;".to_owned())
        .chain((1..=20).map(|i| format!("PREPARE sqlx_s_{i} AS SELECT {i};")))
        .collect();
    sqlx::raw_sql(&prepare).execute(&mut other).await.unwrap();
    other.close().await.unwrap();
}

#[tokio::test]
async fn through_the_pooler_alone_the_error_says_what_to_do() {
    let Some(db) = pooled().await else {
        return;
    };
    let pooled_url = db.url().to_owned();
    // Another client has left prepared statements under sqlx's names on the pooler's one
    // server connection (as a previous revoker process does): what a transaction-mode
    // pooler hands the next client.
    plant_prepared_statements(&pooled_url).await;

    let out = migrate(&["--database-url", &pooled_url]);
    let stderr = refused(&out);
    assert!(
        stderr.contains("connection pooler in transaction mode"),
        "{stderr}"
    );
    assert!(stderr.contains("--migrate-database-url"), "{stderr}");
    assert!(stderr.contains("--db-pooler transaction"), "{stderr}");
    assert!(!stderr.contains("sqlx_s_"), "the raw error: {stderr}");

    // A command that opens an existing (migrated) database says the same, not "no
    // revoker tables". The statements are planted again: PgBouncer may have closed the
    // server connection the refused command left mid-transaction (CI saw it do so).
    run_ok(&mut migrate_command(&["--database-url", db.direct_url()]));
    plant_prepared_statements(&pooled_url).await;
    let out = revoker_command()
        .args(["token", "list", "--database-url", &pooled_url])
        .output()
        .unwrap();
    let stderr = refused(&out);
    assert!(stderr.contains("--db-pooler transaction"), "{stderr}");
    assert!(!stderr.contains("no revoker tables"), "{stderr}");
    db.cleanup().await;
}

/// `--db-pooler transaction` without a direct URL: `migrate` refuses and says what to
/// give it, writing nothing; `token mint` refuses an unmigrated database the same way;
/// once migrated over the direct URL, every command works through the pooler alone.
#[tokio::test]
async fn behind_the_pooler_commands_work_and_migrations_need_the_direct_url() {
    let Some(db) = pooled().await else {
        return;
    };
    let pooled_args = ["--database-url", db.url(), "--db-pooler", "transaction"];
    let no_schema = "SELECT coalesce(to_regclass('_sqlx_migrations')::text, 'none')";

    let out = migrate(&pooled_args);
    let stderr = refused(&out);
    assert!(stderr.contains("--migrate-database-url"), "{stderr}");
    assert!(stderr.contains("pooler in transaction mode"), "{stderr}");
    assert_eq!(db.texts(no_schema).await, ["none"]);

    let mint = |extra: &[&str]| {
        revoker_command()
            .args(["token", "mint", "--owner", "pooled/team", "--ttl", "1h"])
            .args(pooled_args)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = mint(&[]);
    let stderr = refused(&out);
    assert!(
        stderr.contains(&format!(
            "0 of this binary's {} migrations",
            postgres_migrations()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("revoker migrate"), "{stderr}");
    assert_eq!(db.texts(no_schema).await, ["none"]);

    // Migrated over the direct URL (the pooled flags stay as they are)…
    let out = migrate(
        &[
            &pooled_args[..],
            &["--migrate-database-url", db.direct_url()],
        ]
        .concat(),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .starts_with(&format!("applied {} migration(s)", postgres_migrations())),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // …then the pooler alone serves every command.
    let out = mint(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let listed = run_ok(
        revoker_command()
            .args(["token", "list", "--owner", "pooled/team"])
            .args(pooled_args),
    );
    assert_eq!(listed.lines().count(), 2, "{listed}");
    let mut show = revoker_command()
        .args(["token", "show", "-"])
        .args(pooled_args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(show.stdin.take().unwrap(), "{token}").unwrap();
    let shown = show.wait_with_output().unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("live"), "{shown}");
    assert!(shown.contains("pooled/team"), "{shown}");

    // An up-to-date database needs no migrate URL; a replay revokes through the pooler
    // and its notification is listed.
    let up_to_date = run_ok(&mut migrate_command(&pooled_args));
    assert!(
        up_to_date.starts_with(&format!(
            "no migrations pending ({} applied)",
            postgres_migrations()
        )),
        "{up_to_date}"
    );
    let dir = tempfile::tempdir().unwrap();
    let leak = dir.path().join("leak.log");
    std::fs::write(&leak, format!("deploy log: {token}\n")).unwrap();
    let replayed = run_ok(
        revoker_command()
            .args(["replay", "--actor", "sec@example.com"])
            .args(pooled_args)
            .arg(&leak),
    );
    assert!(replayed.contains("tokens revoked now: 1"), "{replayed}");
    assert!(!replayed.contains(&token), "the raw token in: {replayed}");
    assert_eq!(
        db.texts("SELECT count(*)::text FROM tokens WHERE revoked_at IS NOT NULL")
            .await,
        ["1"]
    );
    let notifications = run_ok(revoker_command().args(["notify", "list"]).args(pooled_args));
    assert!(notifications.contains("pending"), "{notifications}");
    assert!(notifications.contains("pooled/team"), "{notifications}");

    // A schema from a newer release (a migration this binary does not know) is refused,
    // as sqlx's migrator refuses it on a direct connection.
    db.execute(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99990101000000, 'from a newer release', true, '\\x00', 0)",
    )
    .await;
    let stderr = refused(&mint(&[]));
    assert!(stderr.contains("belongs to a newer release"), "{stderr}");
    let stderr = refused(&migrate(&pooled_args));
    assert!(stderr.contains("belongs to a newer release"), "{stderr}");
    db.cleanup().await;
}

#[test]
fn sqlite_with_db_pooler_transaction_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("r.db").display());
    let out = revoker_command()
        .args([
            "migrate",
            "--database-url",
            &url,
            "--db-pooler",
            "transaction",
        ])
        .output()
        .unwrap();
    let stderr = refused(&out);
    assert!(
        stderr.contains("--db-pooler transaction is for PostgreSQL"),
        "{stderr}"
    );
    assert!(!dir.path().join("r.db").exists(), "created the file anyway");
}

/// The largest number of revoker's connections PostgreSQL shows for one database,
/// sampled every few milliseconds from a connection to another database until stopped.
/// revoker names its connections `revoker` and PgBouncer passes the name on; the test's
/// own direct connections (its checks) have none.
struct ConnectionSampler {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<(i64, usize)>,
}

impl ConnectionSampler {
    async fn start(db: &TestDb) -> ConnectionSampler {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&postgres_admin_url())
            .await
            .unwrap();
        let name = db.name().to_owned();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let (mut max, mut samples) = (0, 0);
            while !*stopped.borrow() {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity
                         WHERE datname = $1 AND application_name = 'revoker'",
                )
                .bind(&name)
                .fetch_one(&mut admin)
                .await
                .unwrap();
                max = max.max(n);
                samples += 1;
                let _ = tokio::time::timeout(Duration::from_millis(5), stopped.changed()).await;
            }
            (max, samples)
        });
        ConnectionSampler { stop, task }
    }

    /// The most connections seen, and how many samples were taken.
    async fn finish(self) -> (i64, usize) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap()
    }
}

/// An owner-notification webhook on loopback that answers 204 and keeps every request's
/// `Idempotency-Key` (the notification's id).
async fn webhook() -> (String, Arc<Mutex<Vec<String>>>) {
    use axum::{http::HeaderMap, routing::post, Router};
    let keys = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&keys);
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap| {
            let seen = Arc::clone(&seen);
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                seen.lock().unwrap().push(key);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, keys)
}

/// Many instances, few connections, exactly once: six `revoker serve` processes with
/// ten connections each (60 client connections) behind PgBouncer with
/// `default_pool_size = 4`, every one running the outbox. 300 overlapping deliveries
/// naming 100 tokens (each in nine of them, on different instances): every token
/// revoked once, one notification per token sent once, and PostgreSQL never shows
/// more than the pooler's four connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_instances_behind_four_server_connections_revoke_each_token_once() {
    use sqlx::Connection;
    const INSTANCES: usize = 6;
    const TOKENS: usize = 100;
    const DELIVERIES: usize = 300;
    let Some(db) = TestDb::pooled(4).await else {
        return;
    };
    // Migrated over the direct URL beforehand (the instances only check it), and the
    // tokens minted on a direct connection closed before anything is counted.
    run_ok(revoker_command().args(["migrate", "--database-url", db.direct_url()]));
    let tokens: Vec<Token> = (0..TOKENS).map(|_| Token::generate()).collect();
    {
        let mut direct = sqlx::PgConnection::connect(db.direct_url()).await.unwrap();
        let hashes: Vec<Vec<u8>> = tokens
            .iter()
            .map(|t| t.hash().as_bytes().to_vec())
            .collect();
        sqlx::query(
            "INSERT INTO tokens (hash, owner, created_at, expires_at)
             SELECT h, 'scale/out', now(), now() + interval '1 hour' FROM unnest($1::bytea[]) h",
        )
        .bind(&hashes)
        .execute(&mut direct)
        .await
        .unwrap();
        direct.close().await.unwrap();
    }
    let sampler = ConnectionSampler::start(&db).await;

    let (hook, received) = webhook().await;
    let instances: Vec<ServeProcess> = (0..INSTANCES)
        .map(|_| {
            ServeProcess::start(
                db.url(),
                &[
                    "--db-pooler",
                    "transaction",
                    "--db-max-connections",
                    "10",
                    "--notify-webhook",
                    &hook,
                    "--notify-secret",
                    "scale-out-secret",
                    "--notify-poll-interval",
                    "100ms",
                ],
                false,
            )
        })
        .collect();

    // Delivery i names tokens i, i+33 and i+67 (mod 100), rotated by i / 100 so that
    // no two bodies are the same: each token in nine deliveries, sent to instance
    // i mod 6, all at once.
    let signer = Signer::test();
    let answers = futures::future::join_all((0..DELIVERIES).map(|i| {
        let mut named: Vec<&str> = [i, i + 33, i + 67]
            .iter()
            .map(|k| tokens[k % TOKENS].expose_secret())
            .collect();
        named.rotate_left(i / TOKENS);
        instances[i % INSTANCES].deliver(&signer, alert_body(&named))
    }))
    .await;
    for a in &answers {
        assert_eq!(a.labels(), ["true_positive"; 3], "{}", a.text);
    }

    // Every notification sent: the outbox says delivered, so nothing more will be sent.
    eventually(
        Duration::from_secs(60),
        "every notification delivered",
        async || {
            db.texts("SELECT count(*)::text FROM notifications WHERE status = 'delivered'")
                .await
        },
        |n| n == &[TOKENS.to_string()],
    )
    .await;
    let (max_server_connections, samples) = sampler.finish().await;
    let pools = db.pooler_show("POOLS").await;
    let clients = db.pooler_show("CLIENTS").await;
    // Stopped before the webhook's count is read: a late second send would be in it.
    for instance in instances {
        instance.stop();
    }

    assert_eq!(
        db.texts("SELECT count(*)::text FROM reports").await,
        [DELIVERIES.to_string()]
    );
    assert_eq!(
        db.texts("SELECT count(*)::text FROM tokens WHERE revoked_at IS NOT NULL")
            .await,
        [TOKENS.to_string()]
    );
    assert_eq!(
        db.texts(
            "SELECT count(*)::text || ' ' || count(DISTINCT token_hash)::text
             FROM report_items WHERE outcome = 'revoked'"
        )
        .await,
        [format!("{TOKENS} {TOKENS}")],
        "each token revoked by exactly one delivery"
    );
    assert_eq!(
        db.texts("SELECT count(*)::text FROM report_items WHERE outcome = 'already_revoked'")
            .await,
        [(3 * DELIVERIES - TOKENS).to_string()]
    );
    db.expand_outbox().await;
    assert_eq!(
        db.texts(
            "SELECT count(*)::text || ' ' || count(DISTINCT token_hash)::text FROM notifications"
        )
        .await,
        [format!("{TOKENS} {TOKENS}")]
    );
    let problems = db.inconsistencies().await;
    assert!(problems.is_empty(), "{problems:?}");
    let mut sent = received.lock().unwrap().clone();
    assert_eq!(sent.len(), TOKENS, "one request per notification");
    sent.sort();
    sent.dedup();
    assert_eq!(sent.len(), TOKENS, "no notification sent twice");

    let clients_seen = clients.len();
    eprintln!(
        "6 instances x 10: {clients_seen} client connections at the pooler, at most \
         {max_server_connections} server connections in PostgreSQL ({samples} samples); pools: {pools:?}"
    );
    assert!(samples >= 10, "the sampler barely ran: {samples}");
    assert!(
        (1..=4).contains(&max_server_connections),
        "PostgreSQL saw {max_server_connections} connections behind a pooler of 4"
    );
    assert!(
        (5..=60).contains(&clients_seen),
        "{clients_seen} client connections from six pools of ten"
    );
    db.cleanup().await;
}

/// RELIABILITY: the pooler restarting mid-delivery. A delivery's revoking statement
/// waits for a row lock another session holds (inside its transaction, as every
/// statement behind a transaction-mode pooler), PgBouncer is killed under it: the
/// answer is 503 and nothing is recorded (the server session, its client gone, never
/// sees a COMMIT). While the pooler is down deliveries get 503 (after `--db-timeout`:
/// connecting is retried until then); once it is back, the scanner's retry of the same
/// body gets the whole answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pooler_restarting_mid_delivery_gets_503_loses_nothing_and_the_retry_completes() {
    let Some(mut db) = TestDb::pooled(2).await else {
        return;
    };
    let keys = KeyServer::with_test_keys().await;
    let app = spawn_app(
        &db,
        &keys,
        TestOptions {
            db_timeout: Duration::from_secs(2),
            ..TestOptions::default()
        },
    )
    .await;
    let held = app
        .mint("restart/held", chrono::Duration::minutes(30))
        .await;
    let free = app
        .mint("restart/free", chrono::Duration::minutes(30))
        .await;
    let body = alert_body(&[free.expose_secret(), held.expose_secret()]);
    let lock = LockHolder::take(&db, &held.hash()).await;

    let waiting_for_lock = format!(
        "SELECT count(*)::text FROM pg_stat_activity
         WHERE datname = '{}' AND wait_event_type = 'Lock'",
        db.name()
    );
    let signer = Signer::test();
    let (answer, ()) = tokio::join!(app.deliver(&signer, body.clone()), async {
        eventually(
            Duration::from_secs(10),
            "the delivery waiting for the held row",
            async || db.texts(&waiting_for_lock).await,
            |n| n == &["1"],
        )
        .await;
        db.bouncer_mut().unwrap().kill();
    });
    assert_eq!(answer.status, 503, "{}", answer.text);
    assert_eq!(
        answer.error_code(),
        "database_unavailable",
        "{}",
        answer.text
    );
    assert!(answer.retry_after.is_some());

    // The server session still waits for the row; once it has it, it finds its client
    // gone and rolls back. Nothing of the delivery remains once it has ended.
    lock.release().await;
    let sessions = format!(
        "SELECT concat_ws(' ', pid, state, left(query, 60)) FROM pg_stat_activity
         WHERE datname = '{}' AND pid <> pg_backend_pid()",
        db.name()
    );
    eventually(
        Duration::from_secs(10),
        "the orphaned server session ended",
        async || db.texts(&sessions).await,
        |n| n.is_empty(),
    )
    .await;
    assert_eq!(db.texts("SELECT count(*)::text FROM reports").await, ["0"]);
    assert_eq!(
        db.texts("SELECT count(*)::text FROM tokens WHERE revoked_at IS NOT NULL")
            .await,
        ["0"]
    );
    assert_eq!(
        db.texts(
            "SELECT count(*)::text FROM notifications
             UNION ALL SELECT count(*)::text FROM notification_batches"
        )
        .await,
        ["0", "0"]
    );

    // The pooler is down: a delivery is answered 503, nothing recorded.
    let down = app.deliver(&Signer::test(), body.clone()).await;
    assert_eq!(down.status, 503, "{}", down.text);
    assert_eq!(down.error_code(), "database_unavailable");
    assert_eq!(db.texts("SELECT count(*)::text FROM reports").await, ["0"]);

    // Back: the retry of the same body gets the whole answer, each token revoked once.
    db.bouncer_mut().unwrap().restart();
    let retry = app.deliver(&Signer::test(), body).await;
    assert_eq!(retry.labels(), ["true_positive", "true_positive"]);
    assert!(app.is_revoked(&held).await && app.is_revoked(&free).await);
    assert_eq!(db.texts("SELECT count(*)::text FROM reports").await, ["1"]);
    let problems = db.inconsistencies().await;
    assert!(problems.is_empty(), "{problems:?}");
    app.stop().await;
    db.cleanup().await;
}

/// Behind a pooler the wait for a server connection happens in the pooler's queue; the
/// database's share of the deadline is what is left after it. A delivery that queued
/// for most of its time and then meets a held row lock is cancelled by PostgreSQL before
/// its deadline, and nothing is recorded. (Here the wait is sqlx's check of the idle
/// connection when the pool hands it out, before the budget is taken; a connection the
/// pool opens afresh waits with the call's first round trip instead, which is why pooled
/// mode also bounds that round trip by the budget on its own side. This test does not
/// isolate that second case.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_in_the_poolers_queue_counts_against_the_deadline() {
    use revoker::store::{RecordOptions, StoreError};
    use sqlx::Connection;
    let Some(db) = TestDb::pooled(1).await else {
        return;
    };
    let store = open_migrated_store(&db).await;
    let t = mint_many(
        store.as_ref(),
        "queued/pkg",
        1,
        chrono::Duration::minutes(30),
    )
    .await
    .remove(0);
    // Another client holds the pooler's one server connection in a transaction; the
    // token's row is locked directly, past the deadline.
    let mut holder = sqlx::PgConnection::connect(db.url()).await.unwrap();
    sqlx::raw_sql("BEGIN; SELECT 1")
        .execute(&mut holder)
        .await
        .unwrap();
    let lock = LockHolder::take(&db, &t.hash()).await;

    // A store of its own, on the pooler.
    let fresh = open_store(&db).await;
    let report = one_item_report(t.hash(), "content", chrono::Utc::now());
    let started = std::time::Instant::now();
    let deadline = Duration::from_secs(3);
    let options = RecordOptions {
        deadline: Some(started + deadline),
        once_per_body: true,
    };
    let (recorded, ()) = tokio::join!(fresh.record_report(&report, options), async {
        eventually(
            Duration::from_secs(5),
            "the delivery queued in the pooler",
            async || db.pooler_show("POOLS").await[0]["cl_waiting"].clone(),
            |waiting| waiting == "1",
        )
        .await;
        // Most of the deadline spent in the queue, then the server connection.
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        sqlx::raw_sql("COMMIT").execute(&mut holder).await.unwrap();
    });
    let took = started.elapsed();
    assert!(
        matches!(recorded, Err(StoreError::DeadlineExceeded)),
        "{recorded:?}"
    );
    assert!(took < deadline, "PostgreSQL gave up after {took:?}");
    lock.release().await;
    assert_eq!(db.texts("SELECT count(*)::text FROM reports").await, ["0"]);
    let retried = fresh
        .record_report(&report, RecordOptions::default())
        .await
        .unwrap();
    assert_eq!(retried.tokens_revoked, 1);
    db.cleanup().await;
}

/// `token import` through the pooler alone (`--db-pooler transaction`, migrated over the
/// direct URL by the first run): a batch lands, importing again changes nothing, a
/// contradicting line is refused and a line's `revoked_at` revokes a stored live token,
/// with sqlx's statement names taken on the one server connection by another client.
#[tokio::test]
async fn token_import_works_behind_the_pooler() {
    let Some(db) = pooled().await else {
        return;
    };
    let pooled_url = db.url().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let import = |lines: &[String], migrate: bool| {
        let path = dir.path().join("tokens.jsonl");
        std::fs::write(&path, lines.join("\n")).unwrap();
        let mut cmd = revoker_command();
        cmd.args(["token", "import"]).arg(&path).args([
            "--json",
            "--database-url",
            &pooled_url,
            "--db-pooler",
            "transaction",
        ]);
        if migrate {
            cmd.args(["--migrate-database-url", db.direct_url()]);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let summary: serde_json::Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|_| panic!("no summary: {stdout}{stderr}"));
        (out.status.code(), summary, stderr)
    };
    let line = |n: u8, owner: &str, extra: &str| {
        format!(
            r#"{{"sha256": "{}", "format": "crates_io_api", "owner": "{owner}"{extra}}}"#,
            hex::encode([n; 32])
        )
    };
    let lines: Vec<String> = (1..=50).map(|n| line(n, "pooled/team", "")).collect();
    let (code, summary, stderr) = import(&lines, true);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(summary["imported"], 50, "{summary}");
    assert_eq!(
        db.texts("SELECT count(*)::text FROM tokens WHERE format = 'crates_io_api'")
            .await,
        ["50"]
    );

    plant_prepared_statements(&pooled_url).await;
    let mut again = lines.clone();
    again.push(line(1, "someone-else", ""));
    again.push(line(
        2,
        "pooled/team",
        r#", "revoked_at": "2026-05-01T00:00:00Z""#,
    ));
    let (code, summary, stderr) = import(&again, false);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        (
            &summary["unchanged"],
            &summary["revoked"],
            &summary["refused"]
        ),
        (&50.into(), &1.into(), &1.into()),
        "{summary}"
    );
    assert!(
        stderr.contains("line 51: refused: contradicts the stored token: another owner"),
        "{stderr}"
    );
    assert!(!stderr.contains("sqlx_s_"), "{stderr}");
    assert_eq!(
        db.texts("SELECT count(*)::text FROM tokens WHERE revoked_at IS NOT NULL AND owner = 'pooled/team'")
            .await,
        ["1"]
    );
    db.cleanup().await;
}
