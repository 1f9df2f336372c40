//! The 30-day purge of GitHub Metadata through the `revoker` binary, on SQLite and
//! PostgreSQL: `serve` purges on its own (`--retention`), `revoker purge` once. What the
//! purge leaves and removes row by row is in the contract suite
//! (`the_retention_purge_removes_old_metadata_everywhere_and_keeps_the_counts`).

mod common;

use chrono::Duration as Ttl;
use common::*;
use revoker::store::PURGED;

/// `serve --retention 3s`: its passes run every 750 ms and purge what is older than
/// 2.25 s, so a delivery is purged within about 3 s, by the server alone.
async fn serve_purges_on_its_own(kind: Kind) {
    let Some(db) = TestDb::new(kind).await else {
        return;
    };
    let server = ServeProcess::start(db.url(), &["--retention", "3s"], false);
    let store = open_store(db.url()).await;
    let token = mint_many(store.as_ref(), "acme/widget", 1, Ttl::hours(1)).await;
    let answer = server
        .deliver(&Signer::test(), alert_body(&[token[0].expose_secret()]))
        .await;
    assert_eq!(answer.labels(), ["true_positive"]);
    let report = store.token(&token[0].hash()).await.unwrap().unwrap();
    let report = report.revoked_by.unwrap();
    assert_ne!(store.report_items(report).await.unwrap()[0].url, PURGED);

    let line = server.wait_for_log("retention: purged url, source and type");
    assert!(
        line.contains("reports=1") && line.contains("notifications=1"),
        "{line}"
    );
    let item = &store.report_items(report).await.unwrap()[0];
    assert_eq!((item.url.as_str(), item.source.as_str()), (PURGED, PURGED));
    let n = store.list_notifications(None, 10).await.unwrap();
    assert_eq!(n[0].url, PURGED);
    assert!(!db.dump().await.contains("github.com/example/repo"));
    server.stop();
}

#[tokio::test]
async fn serve_purges_on_its_own_on_sqlite() {
    serve_purges_on_its_own(Kind::Sqlite).await;
}

#[tokio::test]
async fn serve_purges_on_its_own_on_postgres() {
    serve_purges_on_its_own(Kind::Postgres).await;
}

fn purge(db: &TestDb, extra: &[&str]) -> String {
    run_ok(
        revoker_command()
            .args(["purge", "--database-url", db.url()])
            .args(extra),
    )
}

/// `revoker purge` with the default 30 days: a report of 31 days ago is purged, one of
/// 29 days ago is not; a second run finds nothing.
async fn purge_once(kind: Kind) {
    let Some(db) = TestDb::new(kind).await else {
        return;
    };
    let server = ServeProcess::start(db.url(), &[], false);
    let store = open_store(db.url()).await;
    let tokens = mint_many(store.as_ref(), "acme/widget", 2, Ttl::hours(1)).await;
    let mut reports = Vec::new();
    for t in &tokens {
        let answer = server
            .deliver(&Signer::test(), alert_body(&[t.expose_secret()]))
            .await;
        assert_eq!(answer.labels(), ["true_positive"]);
        reports.push(
            store
                .token(&t.hash())
                .await
                .unwrap()
                .unwrap()
                .revoked_by
                .unwrap(),
        );
    }
    server.stop();
    db.age_report(reports[0], 31).await;
    db.age_report(reports[1], 29).await;

    let out = purge(&db, &[]);
    assert!(
        out.contains("older than 30days: 1 report(s) (1 item(s)), 1 notification(s)"),
        "{out}"
    );
    assert_eq!(store.report_items(reports[0]).await.unwrap()[0].url, PURGED);
    assert_ne!(store.report_items(reports[1]).await.unwrap()[0].url, PURGED);
    let out = purge(&db, &[]);
    assert!(
        out.contains(": 0 report(s) (0 item(s)), 0 notification(s)"),
        "{out}"
    );
    // REVOKER_RETENTION, as serve reads it.
    let out = revoker_command()
        .args(["purge", "--database-url", db.url()])
        .env("REVOKER_RETENTION", "28d")
        .output()
        .unwrap();
    let out = String::from_utf8(out.stdout).unwrap();
    assert!(out.contains("older than 28days: 1 report(s)"), "{out}");
    assert_eq!(store.report_items(reports[1]).await.unwrap()[0].url, PURGED);

    // A database behind this binary's schema is refused, not migrated behind the
    // operator's back (older instances may still run on it).
    let newest =
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)";
    assert_eq!(db.execute(newest).await, 1);
    let out = revoker_command()
        .args(["purge", "--database-url", db.url()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("run `revoker migrate` first"), "{stderr}");
}

#[tokio::test]
async fn purge_once_on_sqlite() {
    purge_once(Kind::Sqlite).await;
}

#[tokio::test]
async fn purge_once_on_postgres() {
    purge_once(Kind::Postgres).await;
}

#[test]
fn a_zero_retention_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("r.db").display());
    let out = serve_command(&url)
        .args(["--retention", "0s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--retention must be longer than 0"),
        "{stderr}"
    );
}
