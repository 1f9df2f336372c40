//! PostgreSQL behind a real PgBouncer in transaction mode (issue 18, first part):
//! migrations go over `--migrate-database-url`, and what cannot work through the pooler
//! says so in words, never `prepared statement "sqlx_s_1" already exists`.
//!
//! Needs Debian's `pgbouncer` (`.ci/run` installs it); without it the tests skip, unless
//! `CI` is set.

mod common;

use std::sync::Once;

use common::*;

/// A fresh PostgreSQL database and a PgBouncer (transaction mode, one server
/// connection, so a second client meets the first one's prepared statements) in front.
async fn pooled() -> Option<(TestDb, PgBouncer)> {
    let db = TestDb::new(Kind::Postgres).await?;
    let Some(bouncer) = PgBouncer::start(db.url(), 1) else {
        static NOTICE: Once = Once::new();
        skip_unless_ci(&NOTICE, "no pgbouncer", "apt-get install pgbouncer");
        return None;
    };
    Some((db, bouncer))
}

fn migrate(args: &[&str]) -> std::process::Output {
    revoker_command()
        .arg("migrate")
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn migrations_go_over_the_direct_url_beside_a_pooled_one() {
    let Some((db, bouncer)) = pooled().await else {
        return;
    };
    let pooled_url = bouncer.url(db.url());
    let out = migrate(&[
        "--database-url",
        &pooled_url,
        "--migrate-database-url",
        db.url(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("applied 7 migration(s)"), "{stdout}");
    // Applied on the database itself.
    let applied = db
        .texts("SELECT count(*)::text FROM _sqlx_migrations WHERE success")
        .await;
    assert_eq!(applied, ["7"]);
    // The same from the environment.
    let out = revoker_command()
        .args(["migrate", "--database-url", &pooled_url])
        .env("REVOKER_MIGRATE_DATABASE_URL", db.url())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("no migrations pending (7 applied)"),
        "{stdout}"
    );
    db.cleanup().await;
}

#[tokio::test]
async fn through_the_pooler_alone_the_error_says_what_to_do() {
    let Some((db, bouncer)) = pooled().await else {
        return;
    };
    let pooled_url = bouncer.url(db.url());
    // Two clients in turn on the pooler's one server connection: the second finds the
    // first one's prepared statements there.
    let runs: Vec<std::process::Output> = (0..2)
        .map(|_| migrate(&["--database-url", &pooled_url]))
        .collect();
    let second = &runs[1];
    assert!(!second.status.success());
    for run in &runs {
        let stderr = String::from_utf8_lossy(&run.stderr);
        if run.status.success() {
            continue;
        }
        assert!(
            stderr.contains("connection pooler in transaction mode"),
            "{stderr}"
        );
        assert!(stderr.contains("--migrate-database-url"), "{stderr}");
        assert!(!stderr.contains("sqlx_s_"), "the raw error: {stderr}");
    }
    db.cleanup().await;
}
