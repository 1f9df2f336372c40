//! Faults and scale-out with real processes and real databases: several receivers on
//! one database, database connections killed mid-delivery, a database that turns
//! read-only, SIGTERM with deliveries in flight, oversized bodies against a process
//! whose memory is read from /proc, and (ignored by default, run by `.ci/run`) a 60 s
//! soak.
//!
//! After each fault the database is checked with [`TestDb::inconsistencies`]: report
//! counts match their items, every revoked token was revoked by exactly one report.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Duration as Ttl;
use common::*;
use rand::seq::SliceRandom;
use revoker::domain::token::Token;
use sqlx::Connection;

// ------------------------------------------------------------ several receivers

/// Three `revoker serve` processes started together on one fresh database (so they
/// also race to migrate it), 50 concurrent deliveries spread over them. The 100 live
/// tokens are each named by several deliveries; every delivery also names a token we
/// never issued and a string that is no token.
async fn three_processes_revoke_each_token_exactly_once(kind: Kind) {
    let Some(db) = TestDb::empty(kind).await else {
        return;
    };
    let url = db.url().to_owned();
    let procs: Vec<ServeProcess> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| ServeProcess::start(&url, &[], false)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let store = open_store(db.url()).await;
    let live = mint_many(store.as_ref(), "scale/pkg", 100, Ttl::hours(1)).await;

    let mut rng = rand::thread_rng();
    let deliveries: Vec<Vec<String>> = (0..50)
        .map(|i| {
            // Tokens 2i and 2i+1 make sure every token is named at least once; 18 more
            // at random overlap with other deliveries. No token twice in one delivery.
            let mut picked: Vec<&Token> = vec![&live[2 * i], &live[2 * i + 1]];
            let others: Vec<&Token> = live
                .iter()
                .enumerate()
                .filter(|(j, _)| *j / 2 != i)
                .map(|(_, t)| t)
                .collect();
            picked.extend(others.choose_multiple(&mut rng, 18));
            let mut raw: Vec<String> = picked
                .iter()
                .map(|t| t.expose_secret().to_owned())
                .collect();
            raw.push(Token::generate().expose_secret().to_owned());
            raw.push(format!("not-a-token-{i}"));
            raw.shuffle(&mut rng);
            raw
        })
        .collect();
    let live_raw: std::collections::HashSet<String> =
        live.iter().map(|t| t.expose_secret().to_owned()).collect();

    let client = reqwest::Client::new();
    let answers = futures::future::join_all(deliveries.iter().enumerate().map(|(i, raw)| {
        let refs: Vec<&str> = raw.iter().map(String::as_str).collect();
        send_delivery(&client, &procs[i % 3].base, alert_body(&refs))
    }))
    .await;

    if answers
        .iter()
        .any(|a| a.as_ref().map_or(true, |a| a.status != 200))
    {
        // Say why: the processes' logs name the database error behind a 503.
        let logs: Vec<String> = procs.into_iter().map(|p| p.stop()).collect();
        panic!(
            "not every delivery got 200: {:?}\n--- logs ---\n{}",
            answers
                .iter()
                .map(|a| a.as_ref().map(|a| (a.status, a.text.clone())))
                .collect::<Vec<_>>(),
            logs.join("\n---\n")
        );
    }
    for (raw, answer) in deliveries.iter().zip(&answers) {
        let a = answer.as_ref().expect("every delivery is answered");
        assert_eq!(a.status, 200, "{}", a.text);
        let expected: Vec<&str> = raw
            .iter()
            .map(|t| {
                if live_raw.contains(t) {
                    "true_positive"
                } else {
                    "false_positive"
                }
            })
            .collect();
        assert_eq!(a.labels(), expected, "every item answered, in order");
    }
    // Every live token revoked, by exactly one report.
    for t in &live {
        let stored = store.token(&t.hash()).await.unwrap().unwrap();
        assert!(stored.revoked_at.is_some());
    }
    assert_eq!(store.count_reports().await.unwrap(), 50);
    let problems = db.inconsistencies().await;
    assert!(problems.is_empty(), "{problems:?}");
    // Across all reports, 100 items say `revoked` (one per token) and the other
    // mentions of live tokens say `already_revoked`.
    let stats = store
        .stats((chrono::Utc::now() - Ttl::days(1)).date_naive())
        .await
        .unwrap();
    assert_eq!(stats.totals.revoked, 100);
    assert_eq!(stats.totals.already_revoked, 50 * 20 - 100);
    assert_eq!(stats.totals.unknown, 50);

    let mut logs = String::new();
    for p in procs {
        logs.push_str(&p.stop());
    }
    assert!(
        !logs.contains("deadlock detected") && !logs.contains("could not serialize access"),
        "a retryable conflict surfaced: {logs}"
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_on_one_postgres_revoke_each_token_exactly_once() {
    three_processes_revoke_each_token_exactly_once(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_on_one_sqlite_file_revoke_each_token_exactly_once() {
    three_processes_revoke_each_token_exactly_once(Kind::Sqlite).await;
}

// ------------------------------------------------------------ database faults

/// PostgreSQL up, but the receiver's one connection (`--db-max-connections 1`) is held
/// by a delivery waiting for a row lock another session holds: the next delivery waits
/// `--db-timeout` (1 s) for a connection, then gets `503 database_unavailable`, nothing
/// written; once the lock goes, the first completes and the retry of the second too.
/// Checked against the pool's acquire timeout not being set from `--db-timeout` (the
/// second delivery then waits out `--request-timeout`, 12 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_busy_pool_waits_db_timeout_then_503() {
    let Some(db) = TestDb::new(Kind::Postgres).await else {
        return;
    };
    let proc = ServeProcess::start(
        db.url(),
        &["--db-max-connections", "1", "--db-timeout", "1s"],
        false,
    );
    let store = open_store(db.url()).await;
    let tokens = mint_many(store.as_ref(), "pool/pkg", 2, Ttl::hours(1)).await;
    let mut holder = sqlx::PgConnection::connect(db.url()).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT 1 FROM tokens WHERE hash = $1 FOR UPDATE")
        .bind(tokens[0].hash().as_bytes().as_slice())
        .execute(&mut holder)
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let first_body = alert_body(&[tokens[0].expose_secret()]);
    let first = {
        let (client, base) = (client.clone(), proc.base.clone());
        tokio::spawn(async move { send_delivery(&client, &base, first_body).await })
    };
    // The first delivery holds the pool's one connection, waiting for the lock.
    eventually(
        Duration::from_secs(10),
        "the first delivery waiting for the lock",
        async || -> i64 {
            sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&mut holder)
            .await
            .unwrap()
        },
        |waiting| *waiting == 1,
    )
    .await;
    let second_body = alert_body(&[tokens[1].expose_secret()]);
    let started = Instant::now();
    let second = send_delivery(&client, &proc.base, second_body.clone())
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(second.status, 503, "{}", second.text);
    assert_eq!(
        second.error_code(),
        "database_unavailable",
        "{}",
        second.text
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "answered after {took:?}, not after --db-timeout"
    );
    assert!(store
        .token(&tokens[1].hash())
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_none());
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.labels(), ["true_positive"]);
    let retry = send_delivery(&client, &proc.base, second_body)
        .await
        .unwrap();
    assert_eq!(retry.labels(), ["true_positive"]);
    assert_eq!(store.count_reports().await.unwrap(), 2);
    proc.stop();
    db.cleanup().await;
}

/// Another session holds what a delivery needs (PostgreSQL: the token's row lock;
/// SQLite: the write lock) for longer than `--request-timeout`. The delivery is answered
/// 503 `timeout` saying the database rolled it back, and that is true: the scanner's
/// retry, after the lock is gone, is what revokes the token (its `revoked_at` is the
/// retry's). A third sending of the same body gets the same answer; one report.
/// Checked against the delivery statement in autocommit with no deadline (main before
/// this test): the first attempt committed when the lock went, the retry was answered
/// from it, and `revoked_at` predated the release.
async fn a_lock_held_past_the_request_timeout_gets_a_true_503(kind: Kind) {
    let Some(db) = TestDb::new(kind).await else {
        return;
    };
    let proc = ServeProcess::start(
        db.url(),
        &["--request-timeout", "2s", "--db-timeout", "5s"],
        false,
    );
    let store = open_store(db.url()).await;
    let t = mint_many(store.as_ref(), "held/pkg", 1, Ttl::hours(1))
        .await
        .remove(0);
    let body = alert_body(&[t.expose_secret(), "junk"]);
    let client = reqwest::Client::new();

    let holder = LockHolder::take(&db, &t.hash()).await;
    let started = Instant::now();
    let held = send_delivery(&client, &proc.base, body.clone())
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(held.status, 503, "{}", held.text);
    assert_eq!(held.error_code(), "timeout", "{}", held.text);
    assert!(held.text.contains("nothing was recorded"), "{}", held.text);
    assert!(held.retry_after.is_some());
    assert!(
        took < Duration::from_millis(2500),
        "answered after {took:?}"
    );
    holder.release().await;
    let released = chrono::Utc::now();

    let retry = send_delivery(&client, &proc.base, body.clone())
        .await
        .unwrap();
    assert_eq!(retry.labels(), ["true_positive", "false_positive"]);
    let stored = store.token(&t.hash()).await.unwrap().unwrap();
    let revoked_at = stored.revoked_at.expect("revoked by the retry");
    assert!(
        revoked_at >= released - Ttl::milliseconds(5),
        "revoked at {revoked_at}, before the lock was released at {released}: the 503 was untrue"
    );
    let third = send_delivery(&client, &proc.base, body).await.unwrap();
    assert_eq!(third.status, 200, "{}", third.text);
    assert_eq!(third.json, retry.json);
    assert_eq!(store.count_reports().await.unwrap(), 1);
    let logs = proc.stop();
    assert!(logs.contains("answered from its report"), "{logs}");
    let problems = db.inconsistencies().await;
    assert!(problems.is_empty(), "{problems:?}");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lock_held_past_the_request_timeout_gets_a_true_503() {
    a_lock_held_past_the_request_timeout_gets_a_true_503(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_lock_held_past_the_request_timeout_gets_a_true_503() {
    a_lock_held_past_the_request_timeout_gets_a_true_503(Kind::Sqlite).await;
}

/// While 30 deliveries run, every connection of the receiver's that is running a
/// statement is terminated, again and again. Each delivery gets either its complete answer or 503
/// with Retry-After; the database stays consistent; once the killing stops, the
/// scanner's retries all get complete answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_killed_mid_delivery() {
    let Some(db) = TestDb::new(Kind::Postgres).await else {
        return;
    };
    let TestDb::Postgres {
        admin_url, name, ..
    } = &db
    else {
        unreachable!()
    };
    let keys = KeyServer::with_test_keys().await;
    let app = spawn_app(db.url(), &keys, TestOptions::default()).await;
    app.keys_attempted("github").await;
    let live = mint_many(app.store.as_ref(), "killed/pkg", 600, Ttl::hours(1)).await;
    // 30 deliveries of 40 tokens: 20 of their own, 20 shared with the next one.
    let bodies: Vec<Vec<u8>> = (0..30)
        .map(|i| {
            let raw: Vec<&str> = (0..40)
                .map(|k| live[(i * 20 + k) % live.len()].expose_secret())
                .collect();
            alert_body(&raw)
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (stop, killed) = (Arc::clone(&stop), Arc::clone(&killed));
        let (admin_url, name) = (admin_url.clone(), name.clone());
        tokio::spawn(async move {
            let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = $1 AND pid <> pg_backend_pid() AND state = 'active') k",
                )
                .bind(&name)
                .fetch_one(&mut admin)
                .await
                .unwrap();
                killed.fetch_add(n as usize, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let signer = Signer::test();
    let answers =
        futures::future::join_all(bodies.iter().map(|b| app.deliver(&signer, b.clone()))).await;
    stop.store(true, Ordering::Relaxed);
    killer.await.unwrap();
    assert!(
        killed.load(Ordering::Relaxed) > 0,
        "the fault never happened"
    );

    let mut refused = 0;
    for a in &answers {
        match a.status {
            200 => assert_eq!(a.labels(), vec!["true_positive"; 40]),
            503 => {
                refused += 1;
                assert_eq!(a.error_code(), "database_unavailable", "{}", a.text);
                assert_eq!(a.retry_after.as_deref(), Some("7"));
            }
            s => panic!("unexpected {s}: {}", a.text),
        }
    }
    eprintln!(
        "killed {} backends; {refused} of 30 deliveries got 503",
        killed.load(Ordering::Relaxed)
    );
    let problems = db.inconsistencies().await;
    assert!(problems.is_empty(), "half-written: {problems:?}");
    // A refused delivery left no report behind.
    assert_eq!(
        app.store.count_reports().await.unwrap(),
        (30 - refused) as i64
    );

    // The scanner retries what was refused; every answer is complete now.
    for (b, a) in bodies.iter().zip(&answers) {
        if a.status == 503 {
            let retry = app.deliver(&Signer::test(), b.clone()).await;
            assert_eq!(retry.status, 200, "{}", retry.text);
            assert_eq!(retry.labels(), vec!["true_positive"; 40]);
        }
    }
    for t in &live {
        assert!(app.is_revoked(t).await);
    }
    let problems = db.inconsistencies().await;
    assert!(problems.is_empty(), "{problems:?}");
    app.stop().await;
    db.cleanup().await;
}

/// A PostgreSQL database switched to read-only under a running receiver: deliveries
/// get 503, `/readyz` says `read_only`, nothing is written; switched back, the retry
/// gets the full answer. A receiver started on a read-only database refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_turning_read_only_gets_503_and_not_ready() {
    let Some(db) = TestDb::new(Kind::Postgres).await else {
        return;
    };
    let TestDb::Postgres {
        admin_url, name, ..
    } = &db
    else {
        unreachable!()
    };
    let keys = KeyServer::with_test_keys().await;
    let app = spawn_app(db.url(), &keys, TestOptions::default()).await;
    app.keys_attempted("github").await;
    let t = app.mint("ro/pkg", Ttl::hours(1)).await;
    let body = alert_body(&[t.expose_secret()]);

    let mut admin = sqlx::PgConnection::connect(admin_url).await.unwrap();
    let set_read_only = |on: bool| {
        [
            format!("ALTER DATABASE {name} SET default_transaction_read_only = {on}"),
            // Sessions read the setting when they start.
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            ),
        ]
    };
    for sql in set_read_only(true) {
        sqlx::query(&sql).execute(&mut admin).await.unwrap();
    }
    let a = app.deliver(&Signer::test(), body.clone()).await;
    // Said as what it is (not "unavailable"): the database answers and takes no writes.
    assert_eq!(
        (a.status, a.error_code()),
        (503, "database_read_only"),
        "{}",
        a.text
    );
    assert!(a.text.contains("takes no writes"), "{}", a.text);
    assert_eq!(a.retry_after.as_deref(), Some("7"));
    let ready = app.admin_get("/readyz", None).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json["database"], "read_only", "{}", ready.text);

    // A new receiver on the read-only database says why it cannot serve.
    let out = serve_command(db.url()).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("read-only"), "{stderr}");

    for sql in set_read_only(false) {
        sqlx::query(&sql).execute(&mut admin).await.unwrap();
    }
    assert!(!app.is_revoked(&t).await);
    assert_eq!(app.store.count_reports().await.unwrap(), 0);
    let a = app.deliver(&Signer::test(), body).await;
    assert_eq!(a.labels(), ["true_positive"], "{}", a.text);
    assert!(app.is_revoked(&t).await);
    let ready = app.admin_get("/readyz", None).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    app.stop().await;
    db.cleanup().await;
}

/// SQLite opened read-only (`?mode=ro`): `serve` refuses to start and says why, and a
/// mint says it cannot store the token. (A file turning read-only under a running
/// process cannot be staged here: the tests run as root, which ignores file modes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_sqlite_is_refused_with_a_clear_error() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    open_store(db.url()).await.migrate().await.unwrap();
    let ro = format!("{}?mode=ro", db.url());
    let out = serve_command(&ro).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("read-only"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let out = revoker_command()
        .args(["token", "mint", "--owner", "x", "--database-url", &ro])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "no token printed that was not stored"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("readonly database"));
}

// ------------------------------------------------------------ shutdown

/// SIGTERM once 20 deliveries of 300 tokens are known to be accepted (the server has
/// logged the start of all 20 requests, at `debug`): every one of them gets its complete
/// answer, 200, and the process exits 0. Three deliveries sent after the signal are
/// answered 200 or not taken (refused, or closed before their request was read), and a
/// second process answers those.
/// Checked against replacing the graceful shutdown with `std::process::exit(0)` right
/// after "shutdown signal received": the accepted deliveries lose their connection and
/// the test fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_deliveries_in_flight_loses_nothing() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let server = ServeProcess::start(db.url(), &["--shutdown-timeout", "20s"], false);
    let store = open_store(db.url()).await;
    let live = mint_many(store.as_ref(), "term/pkg", 23 * 300, Ttl::hours(1)).await;
    let mut bodies: Vec<Vec<u8>> = live
        .chunks(300)
        .map(|c| alert_body(&c.iter().map(Token::expose_secret).collect::<Vec<_>>()))
        .collect();
    let late_bodies = bodies.split_off(20);
    let client = reqwest::Client::new();
    let send = |body: Vec<u8>| {
        let (client, base) = (client.clone(), server.base.clone());
        tokio::spawn(async move { send_delivery(&client, &base, body).await })
    };
    let before = server.logs().matches("started processing request").count();
    let tasks: Vec<_> = bodies.iter().cloned().map(send).collect();
    let accepted = "started processing request";
    tokio::task::block_in_place(|| server.wait_for_log_count(accepted, before + 20));
    let signalled = Instant::now();
    server.terminate();
    server.wait_for_log("shutdown signal received");
    let late: Vec<_> = late_bodies.iter().cloned().map(send).collect();
    let mut server = server;
    let logs = tokio::task::spawn_blocking(move || server.wait_for_exit())
        .await
        .unwrap();
    let took = signalled.elapsed();

    for task in tasks {
        let a = task
            .await
            .unwrap()
            .expect("an accepted delivery is answered");
        assert_eq!(a.status, 200, "{}\n{logs}", a.text);
        assert_eq!(a.labels(), vec!["true_positive"; 300]);
    }
    let mut to_retry = Vec::new();
    for (task, body) in late.into_iter().zip(late_bodies) {
        match task.await.unwrap() {
            Ok(a) => assert_eq!(a.status, 200, "{}", a.text),
            // Not known to be accepted: refused at connect, or the connection was
            // closed before its request was read. Either way the scanner retries.
            Err(_) => to_retry.push(body),
        }
    }
    let answered_late = 3 - to_retry.len();
    eprintln!(
        "exited {took:?} after SIGTERM; 20 accepted answered 200; of 3 sent after it, \
         {answered_late} answered, {} refused",
        to_retry.len()
    );
    assert_eq!(
        store.count_reports().await.unwrap(),
        20 + answered_late as i64
    );
    let problems = db.inconsistencies().await;
    assert!(problems.is_empty(), "{problems:?}");

    let server = ServeProcess::start(db.url(), &[], false);
    for body in to_retry {
        let a = send_delivery(&client, &server.base, body).await.unwrap();
        assert_eq!(a.labels(), vec!["true_positive"; 300]);
    }
    for t in &live {
        let stored = store.token(&t.hash()).await.unwrap().unwrap();
        assert!(stored.revoked_at.is_some());
    }
    assert_eq!(store.count_reports().await.unwrap(), 23);
    assert!(db.inconsistencies().await.is_empty());
    server.stop();
}

// ------------------------------------------------------------ memory

/// 40 bodies far over `--max-body` (1 MiB): half declare 256 MiB in Content-Length,
/// half stream chunked without a length. All get 413, and the process's peak RSS
/// hardly moves: nothing is buffered beyond the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_and_leave_memory_flat() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let server = ServeProcess::start(db.url(), &["--max-body", "1MiB"], false);
    let client = reqwest::Client::new();
    // Warm up: keys loaded, a real delivery processed.
    let a = send_delivery(&client, &server.base, alert_body(&["junk"]))
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    let (rss_before, peak_before) = server.memory_kib();

    let addr = server.base.trim_start_matches("http://").to_owned();
    let chunk = vec![b'['; 64 * 1024];
    let mut sent_total = 0usize;
    let mut statuses: HashMap<String, usize> = HashMap::new();
    for i in 0..40 {
        let chunked = i % 2 == 1;
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let length = if chunked {
            "Transfer-Encoding: chunked".to_owned()
        } else {
            format!("Content-Length: {}", 256u64 << 20)
        };
        let head = format!(
            "POST /secret-scanning/github HTTP/1.1\r\nHost: {addr}\r\n\
             Github-Public-Key-Identifier: {KEY_ID}\r\nGithub-Public-Key-Signature: {}\r\n\
             {length}\r\n\r\n",
            Signer::test().sign(b"[]")
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let (mut rd, mut wr) = stream.into_split();
        // Keep sending (up to 32 MiB) until the server has answered and closed.
        let writer = {
            let chunk = chunk.clone();
            tokio::spawn(async move {
                let mut sent = 0usize;
                while sent < 32 << 20 {
                    let r = if chunked {
                        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
                        framed.extend_from_slice(&chunk);
                        framed.extend_from_slice(b"\r\n");
                        wr.write_all(&framed).await
                    } else {
                        wr.write_all(&chunk).await
                    };
                    if r.is_err() {
                        break;
                    }
                    sent += chunk.len();
                }
                sent
            })
        };
        let mut answer = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut answer))
            .await
            .expect("answered")
            .unwrap();
        let status = String::from_utf8_lossy(&answer[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        *statuses.entry(status).or_default() += 1;
        drop(rd);
        sent_total += tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .expect("the writer stops once the server closes or 32 MiB are sent")
            .unwrap();
    }
    let (rss_after, peak_after) = server.memory_kib();
    eprintln!(
        "40 oversized bodies, ≥{} MiB offered: RSS {} → {} KiB, peak {} → {} KiB",
        sent_total >> 20,
        rss_before,
        rss_after,
        peak_before,
        peak_after
    );
    assert_eq!(
        statuses.get("HTTP/1.1 413 Payload Too Large"),
        Some(&40),
        "{statuses:?}"
    );
    // 40 bodies of 256 MiB would be 10 GiB; the limit is 1 MiB. Allow allocator noise.
    assert!(
        peak_after - peak_before < 24 * 1024,
        "peak RSS grew by {} KiB",
        peak_after - peak_before
    );
    let logs = server.stop();
    assert!(logs.contains("payload_too_large"), "{logs}");
}
