//! PostgreSQL failover: a real primary with a real hot standby (`common::Cluster`), the
//! primary killed as a crash would (`pg_ctl -m immediate stop`) under a steady stream
//! of signed deliveries, the standby promoted; revoker given both hosts in one URL
//! (`target_session_attrs=read-write`) finds the new primary by itself.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use revoker::domain::token::Token;

/// What one delivery of one token got, in order.
#[derive(Debug, Clone)]
struct Sent {
    token: usize,
    status: u16,
    at: Instant,
    text: String,
}

/// Delivers each token in its own signed delivery from `workers` workers, each retrying
/// a 503 (after 50 ms) until it is answered 200 or `give_up` passes; returns every answer.
async fn stream(
    app: Arc<TestApp>,
    tokens: Arc<Vec<Token>>,
    workers: usize,
    pace: Duration,
    give_up: Duration,
) -> Vec<Sent> {
    let next = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (app, tokens, next, sent) = (
            Arc::clone(&app),
            Arc::clone(&tokens),
            Arc::clone(&next),
            Arc::clone(&sent),
        );
        tasks.push(tokio::spawn(async move {
            let signer = Signer::test();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= tokens.len() {
                    return;
                }
                let body = alert_body(&[tokens[i].expose_secret()]);
                loop {
                    let a = app.deliver(&signer, body.clone()).await;
                    sent.lock().unwrap().push(Sent {
                        token: i,
                        status: a.status,
                        at: Instant::now(),
                        text: a.text.clone(),
                    });
                    if a.status != 503 || started.elapsed() > give_up {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(pace).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(sent).unwrap().into_inner().unwrap()
}

/// Synchronous replication: every delivery answered 200 before, during or after the
/// failover is revoked on the new primary with its report; every one refused meanwhile
/// was a 503 and completes on retry; revoker answers 200 again within its
/// `--request-timeout` of the promotion, with no restart, and `/readyz` is not ready in
/// between. An app given only the old primary's URL stays down (the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronous_standby_promoted_loses_no_acknowledged_revocation() {
    none_lost(Front::HostList).await;
}

/// The same guarantees behind PgBouncer in transaction mode (`--db-pooler transaction`):
/// the operator repoints the pooler's `[databases]` entry at the promoted standby and
/// `RELOAD`s it; revoker, which only knows the pooler, carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_pgbouncer_repointed_at_the_promoted_standby_no_acknowledged_revocation_is_lost() {
    none_lost(Front::PgBouncer).await;
}

/// A synchronous failover through `front`: every token answered 200 is revoked on the
/// new primary (and every other check of [`failover`]).
async fn none_lost(front: Front) {
    let Some(run) = failover(Replication::Synchronous, front).await else {
        return;
    };
    assert!(
        run.lost.is_empty(),
        "tokens answered 200 and not revoked on the new primary: {:?}",
        run.lost
    );
}

/// Asynchronous replication, measured: the same run; a commit acknowledged by the
/// primary but not yet on the standby when it died is gone after the promotion (with
/// its report: the database stays consistent). The count is printed; it may be 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asynchronous_standby_promoted_may_lose_acknowledged_revocations() {
    let Some(run) = failover(Replication::Asynchronous, Front::HostList).await else {
        return;
    };
    eprintln!(
        "asynchronous: {} of {} acknowledged revocations missing after the promotion",
        run.lost.len(),
        run.acknowledged
    );
}

/// What a failover run found.
struct Run {
    /// Tokens answered 200 that the new primary does not have revoked.
    lost: Vec<usize>,
    acknowledged: usize,
}

/// How revoker reaches the database.
#[derive(Clone, Copy, PartialEq)]
enum Front {
    /// Both hosts in one URL, `target_session_attrs=read-write`.
    HostList,
    /// PgBouncer in transaction mode, repointed by hand after the promotion; migrations
    /// over the primary's direct URL.
    PgBouncer,
}

/// Through a pooler, migrating over a direct URL.
struct Pooled {
    url: String,
    migrate: String,
}

impl DbTarget for Pooled {
    fn target_url(&self) -> &str {
        &self.url
    }
    fn pooler(&self) -> revoker::store::Pooler {
        revoker::store::Pooler::Transaction
    }
    fn migrate_url(&self) -> Option<&str> {
        Some(&self.migrate)
    }
}

/// A stream of deliveries on a primary and standby with `replication`, the primary
/// killed and the standby promoted midway; every check but the lost revocations'.
async fn failover(replication: Replication, front: Front) -> Option<Run> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("revoker=warn")
        .with_ansi(false)
        .with_test_writer()
        .try_init();
    let cluster = Cluster::start(replication).await?;
    let keys = KeyServer::with_test_keys().await;
    let request_timeout = Duration::from_secs(5);
    // The outbox runs on the instance under test, sending to a real webhook.
    let hook = Webhook::start().await;
    let mut notify = revoker::notify::NotifySettings::new(&hook.url, SECRET);
    notify.timeout = Duration::from_secs(2);
    notify.backoff_base = Duration::from_millis(40);
    notify.backoff_max = Duration::from_millis(200);
    notify.poll_interval = Duration::from_millis(50);
    let options = |notify| TestOptions {
        request_timeout,
        db_timeout: Duration::from_secs(2),
        notify,
        ..TestOptions::default()
    };
    let primary = cluster.url(cluster.primary_port);
    let bouncer = match front {
        Front::HostList => None,
        Front::PgBouncer => {
            // A failed server login is retried after server_login_retry (15 s by
            // default): the repointed pooler would wait that long.
            let Some(bouncer) = PgBouncer::start_with(&primary, 4, "server_login_retry = 1\n")
            else {
                assert!(!in_ci(), "CI: pgbouncer is missing");
                return None;
            };
            Some(bouncer)
        }
    };
    let app = Arc::new(match &bouncer {
        None => {
            let url = cluster.multi_host_url("read-write");
            spawn_app(&url, &keys, options(Some(notify))).await
        }
        Some(b) => {
            let target = Pooled {
                url: b.url(&primary),
                migrate: primary.clone(),
            };
            spawn_app(&target, &keys, options(Some(notify))).await
        }
    });
    let old_only = spawn_app(&primary, &keys, options(None)).await;
    let mut tokens = Vec::new();
    for i in 0..240 {
        tokens.push(
            app.mint(&format!("failover/{i}"), chrono::Duration::hours(1))
                .await,
        );
    }
    let control = app
        .mint("failover/control", chrono::Duration::hours(1))
        .await;
    let tokens = Arc::new(tokens);

    let load = tokio::spawn(stream(
        Arc::clone(&app),
        Arc::clone(&tokens),
        4,
        Duration::from_millis(10),
        Duration::from_secs(60),
    ));
    // Some deliveries acknowledged first.
    eventually(
        Duration::from_secs(20),
        "40 tokens revoked before the kill",
        async || {
            cluster
                .texts(
                    cluster.primary_port,
                    "revoker",
                    "SELECT count(*)::text FROM tokens WHERE revoked_at IS NOT NULL",
                )
                .await
                .unwrap_or_default()
        },
        |n| n.first().and_then(|n| n.parse::<u32>().ok()).unwrap_or(0) >= 40,
    )
    .await;
    let killed = Instant::now();
    cluster.kill_primary();
    // Not ready while no host takes writes.
    eventually(
        Duration::from_secs(10),
        "/readyz not ready with the primary gone",
        async || app.admin_get("/readyz", None).await.status,
        |s| *s == 503,
    )
    .await;
    cluster.promote_standby();
    if let Some(b) = &bouncer {
        b.repoint(&primary, cluster.standby_port).await;
    }
    let promoted = Instant::now();
    eventually(
        request_timeout,
        "/readyz ready again on the promoted standby",
        async || app.admin_get("/readyz", None).await.status,
        |s| *s == 200,
    )
    .await;
    let sent = load.await.unwrap();

    // Every answer a 200 or a 503 (never a 4xx), and every token finally a 200.
    let odd: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.status != 200 && s.status != 503)
        .collect();
    assert!(odd.is_empty(), "answers other than 200 and 503: {odd:?}");
    let mut last = vec![0u16; tokens.len()];
    for s in &sent {
        last[s.token] = s.status;
    }
    let last_refusal = sent
        .iter()
        .rev()
        .find(|s| s.status == 503)
        .map(|s| s.text.clone());
    assert!(
        last.iter().all(|s| *s == 200),
        "every refused delivery completes on retry; last refusal: {last_refusal:?}; {:?}",
        last.iter().enumerate().filter(|(_, s)| **s != 200).count()
    );
    let refused = sent.iter().filter(|s| s.status == 503).count();
    // PgBouncer holds queries in its queue while it has no server to run them on, so a
    // failover shorter than the deadline may refuse none there.
    assert!(
        refused > 0 || front == Front::PgBouncer,
        "the failover was felt: no delivery was refused"
    );
    // Back within --request-timeout of the promotion.
    let first_after = sent
        .iter()
        .filter(|s| s.status == 200 && s.at > promoted)
        .map(|s| s.at)
        .min()
        .expect("a 200 after the promotion");
    let outage = first_after.duration_since(killed);
    assert!(
        first_after.duration_since(promoted) < request_timeout,
        "answered 200 again {:?} after the promotion",
        first_after.duration_since(promoted)
    );
    eprintln!(
        "kill to promotion {:?}, kill to first 200 {outage:?}, {refused} deliveries refused",
        promoted.duration_since(killed)
    );

    // Every owner notification sent across the failover, exactly once, and none left
    // pending or leased on the new primary (synchronous: an asynchronous standby may
    // have lost a revocation, its claim or its result).
    if replication == Replication::Synchronous {
        hook.wait_for(tokens.len()).await;
        eventually(
            Duration::from_secs(10),
            "every notification delivered on the new primary",
            async || {
                cluster
                    .texts(
                        cluster.standby_port,
                        "revoker",
                        "SELECT status || ' ' || count(*) FROM notifications GROUP BY status",
                    )
                    .await
                    .unwrap_or_default()
            },
            |rows| *rows == [format!("delivered {}", tokens.len())],
        )
        .await;
        let received = hook.received();
        let keys_now: std::collections::HashSet<&str> = received
            .iter()
            .map(|r| r.idempotency_key.as_str())
            .collect();
        assert_eq!(
            keys_now.len(),
            tokens.len(),
            "one notification per revoked token"
        );
        // The worker records a result again until the database takes it (within the
        // claim's lease), so none was sent twice.
        assert_eq!(
            received.len(),
            tokens.len(),
            "each notification sent exactly once"
        );
        eprintln!(
            "notifications: {} sent for {} tokens ({} sent again after the failover)",
            received.len(),
            keys_now.len(),
            received.len() - keys_now.len()
        );
    }
    // revoker's connections to the new primary say who they are, as before the switch.
    if front == Front::HostList {
        let named = cluster
            .texts(
                cluster.standby_port,
                "postgres",
                "SELECT count(*)::text FROM pg_stat_activity
                 WHERE datname = 'revoker' AND application_name = 'revoker'",
            )
            .await
            .unwrap();
        assert_ne!(named, ["0"], "application_name after the switch");
    }
    // On the new primary: every token answered 200 is revoked, by a report with its item.
    let standby = cluster.url(cluster.standby_port);
    let store = revoker::store::connect(&standby, &revoker::store::PoolSettings::default())
        .await
        .unwrap();
    let mut lost = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let stored = store.token(&t.hash()).await.unwrap().expect("minted");
        match stored.revoked_by {
            Some(by) => {
                let items = store.report_items(by).await.unwrap();
                assert!(
                    items.iter().any(|it| it.token_hash == t.hash()),
                    "token {i}"
                );
            }
            None => lost.push(i),
        }
    }
    let db = TestDb::Postgres {
        admin_url: format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            cluster.standby_port
        ),
        name: cluster.database.clone(),
        url: standby,
        pooled: None,
    };
    let problems = db.inconsistencies().await;
    assert!(problems.is_empty(), "{problems:?}");

    // The control: given only the old primary, revoker cannot revoke.
    let a = old_only
        .deliver(&Signer::test(), alert_body(&[control.expose_secret()]))
        .await;
    assert_eq!(a.status, 503, "{}", a.text);
    Some(Run {
        lost,
        acknowledged: tokens.len(),
    })
}

/// The old primary stays up but takes no writes (demoted: `default_transaction_read_only`
/// set and reloaded) while the standby is promoted. The pool's connections to it are
/// alive and pass sqlx's check, so only revoker's "made before the switch" rule lets
/// them go: every delivery after the first 200 on the new primary is a 200 too (with
/// those connections kept, some would land on the read-only host and get 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_an_old_primary_that_is_alive_but_read_only_are_let_go() {
    let Some(cluster) = Cluster::start(Replication::Synchronous).await else {
        return;
    };
    let keys = KeyServer::with_test_keys().await;
    let url = cluster.multi_host_url("read-write");
    let app = spawn_app(&url, &keys, TestOptions::default()).await;
    let mut tokens = Vec::new();
    for i in 0..160 {
        tokens.push(
            app.mint(&format!("demoted/{i}"), chrono::Duration::hours(1))
                .await,
        );
    }
    let signer = Signer::test();
    // Fill the pool with connections to the primary: concurrent deliveries.
    let first: Vec<_> = futures::future::join_all(
        tokens[..5]
            .iter()
            .map(|t| app.deliver(&signer, alert_body(&[t.expose_secret()]))),
    )
    .await;
    assert!(first.iter().all(|a| a.status == 200), "{first:?}");
    cluster
        .texts(
            cluster.primary_port,
            "postgres",
            "ALTER SYSTEM SET default_transaction_read_only = on",
        )
        .await
        .unwrap();
    cluster
        .texts(
            cluster.primary_port,
            "postgres",
            "SELECT pg_reload_conf()::text",
        )
        .await
        .unwrap();
    cluster.promote_standby();
    // The first 200 on the new primary, then every delivery a 200.
    let mut next = 5;
    let started = Instant::now();
    loop {
        assert!(
            next < tokens.len(),
            "no 200 after the switch: every delivery met the read-only old primary"
        );
        let a = app
            .deliver(&signer, alert_body(&[tokens[next].expose_secret()]))
            .await;
        next += 1;
        if a.status == 200 {
            break;
        }
        assert_eq!(a.status, 503, "{}", a.text);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no 200 after the switch"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for batch in tokens[next..].chunks(5) {
        let answers: Vec<_> = futures::future::join_all(
            batch
                .iter()
                .map(|t| app.deliver(&signer, alert_body(&[t.expose_secret()]))),
        )
        .await;
        for a in &answers {
            assert_eq!(a.status, 200, "after the switch: {}", a.text);
        }
    }
    let revoked = cluster
        .texts(
            cluster.standby_port,
            "revoker",
            "SELECT count(*)::text FROM tokens WHERE revoked_at IS NOT NULL",
        )
        .await
        .unwrap();
    // All but those refused before the switch (tokens 5 to next - 2).
    let refused = next - 6;
    assert_eq!(revoked, [(tokens.len() - refused).to_string()]);
}
