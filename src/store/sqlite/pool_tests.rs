//! The pool's connections as deliveries leave them: the statement cache, the page
//! cache, and a transaction SQLite rolled back on its own.

use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::{Connection, Sqlite};

use super::*;
use crate::domain::alert::{CandidateItem, NewReport};
use crate::store::{RecordOptions, RevocationStore};

/// A migrated store on a file of its own with one pooled connection, and `n` stored
/// tokens (hashes of "pooled {i}").
async fn one_connection_store(dir: &tempfile::TempDir, n: u32) -> (Store<Sqlite>, String) {
    let url = format!("sqlite://{}", dir.path().join("pool.db").display());
    let settings = PoolSettings {
        create_if_missing: true,
        max_connections: 1,
        ..PoolSettings::default()
    };
    let store = Store::<Sqlite>::connect(&url, &settings).await.unwrap();
    Sqlite::migrate(&store.pool).await.unwrap();
    let now = Utc::now();
    let tokens: Vec<NewToken> = (0..n)
        .map(|i| NewToken {
            hash: TokenHash::of(&format!("pooled {i}")),
            owner: "pool/owner".into(),
            created_at: now,
            expires_at: now + chrono::Duration::hours(1),
        })
        .collect();
    store.insert_tokens(&tokens).await.unwrap();
    (store, url)
}

/// A delivery of the stored tokens `range`, its body hash `body`.
fn delivery(range: std::ops::Range<u32>, body: u8) -> NewReport {
    let candidates: Vec<CandidateItem> = range
        .enumerate()
        .map(|(position, i)| CandidateItem {
            position: position as u32,
            hash: TokenHash::of(&format!("pooled {i}")),
            token_type: "cio_tp".into(),
            source: "content".into(),
            url: format!("https://example.com/{i}"),
            found_in: None,
        })
        .collect();
    NewReport {
        scanner: "github".into(),
        key_id: "pool-key".into(),
        received_at: Utc::now(),
        body_sha256: [body; 32],
        item_count: candidates.len() as u32,
        not_ours: 0,
        candidates,
    }
}

/// A delivery with a deadline cuts its connection's `busy_timeout` to the budget left,
/// a number of milliseconds that differs from one delivery to the next: that statement
/// is not kept in the connection's cache, where each would push out a statement the
/// deliveries use.
#[tokio::test]
async fn deliveries_near_their_deadline_do_not_fill_the_statement_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = one_connection_store(&dir, 10).await;
    let cached = || async { store.pool.acquire().await.unwrap().cached_statements_size() };
    let near = |i: u64| RecordOptions {
        deadline: Some(Instant::now() + Duration::from_millis(2_000 + 37 * i)),
        once_per_body: false,
    };
    store
        .record_report(&delivery(0..1, 0), near(0))
        .await
        .unwrap();
    let after_one = cached().await;
    for i in 1..6u32 {
        let report = delivery(i..i + 1, i as u8);
        store.record_report(&report, near(i.into())).await.unwrap();
    }
    assert_eq!(cached().await, after_one, "statements cached per budget");
}

/// `PRAGMA cache_size` of `conn`.
async fn cache_of(conn: &mut sqlx::SqliteConnection) -> i64 {
    sqlx::query_scalar("PRAGMA cache_size")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// A delivery of more than 256 distinct hashes raises its connection's page cache to
/// 16 MiB (`record.rs`), a smaller one does not; the connection comes back to the pool
/// with the usual 2,000 KiB, also when the delivery was dropped mid-transaction (its
/// caller gave up), so the pool's connections do not keep a delivery's pages.
#[tokio::test]
async fn a_large_delivery_s_page_cache_is_put_back_when_its_connection_returns() {
    use super::record::{record, CACHE_RAISED_ABOVE};
    let dir = tempfile::tempdir().unwrap();
    let large = CACHE_RAISED_ABOVE as u32 + 1;
    let (store, url) = one_connection_store(&dir, 3 * large).await;
    {
        let mut conn = store.pool.acquire().await.unwrap();
        assert_eq!(cache_of(&mut conn).await, -2000);
        let small = delivery(0..CACHE_RAISED_ABOVE as u32, 1);
        record(&store, &mut conn, &small, RecordOptions::default())
            .await
            .unwrap();
        assert_eq!(cache_of(&mut conn).await, -2000, "a small one");
        let large = delivery(large..2 * large, 2);
        record(&store, &mut conn, &large, RecordOptions::default())
            .await
            .unwrap();
        assert_eq!(cache_of(&mut conn).await, -16384, "a large one");
    }
    let cache = || async { cache_of(&mut store.pool.acquire().await.unwrap()).await };
    assert_eq!(cache().await, -2000, "back in the pool");

    // Dropped while it waits for the write lock inside its transaction: once it has
    // counted its first statement after `BEGIN` (the report row), which waits.
    let mut other = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let before = store.statements();
    let report = delivery(2 * large..3 * large, 3);
    // Boxed: dropping it drops the delivery (a `tokio::pin!`ned one lives to the end of
    // the test, holding the one connection).
    let mut delivering = Box::pin(store.record_report(&report, RecordOptions::default()));
    let in_transaction = async {
        // The cache, `BEGIN`, the report row.
        while store.statements() < before + 3 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::select! {
        done = &mut delivering => panic!("the delivery did not wait for the lock: {done:?}"),
        () = in_transaction => {}
    }
    drop(delivering);
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    assert_eq!(
        cache().await,
        -2000,
        "after a delivery dropped mid-transaction"
    );
}

/// SQLite rolls a transaction back whole when a statement that keeps no statement
/// journal fails (here the revoking `UPDATE` finds the database full), and sqlx's own
/// rollback then fails, so by sqlx's count the connection is still in a transaction.
/// Handed out again, its next `begin` would be a savepoint, and rolling that back (as a
/// repeated delivery does) would leave a transaction open, holding the write lock from
/// every other connection. The pool closes such a connection instead.
#[tokio::test]
async fn a_transaction_sqlite_rolled_back_whole_is_not_handed_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let (store, url) = one_connection_store(&dir, 3_000).await;
    {
        // The one connection may not grow the file any more.
        let mut conn = store.pool.acquire().await.unwrap();
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        sqlx::query(&format!("PRAGMA max_page_count = {pages}"))
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    let before = store.statements();
    let full = store
        .record_report(&delivery(0..3_000, 1), RecordOptions::default())
        .await;
    assert!(
        matches!(&full, Err(StoreError::Database(sqlx::Error::Database(e))) if primary_code(e.as_ref()) == Some(13)),
        "SQLITE_FULL: {full:?}"
    );
    // In the fourth statement (a large delivery's page cache, `BEGIN`, the report row,
    // the revoking `UPDATE`, which keeps no statement journal): later ones keep one, and
    // SQLite would undo only the statement there, leaving nothing for this test to show.
    assert_eq!(store.statements() - before, 4, "the UPDATE filled the file");

    // What a rolled-back repeat does on the connection the pool hands out next: begin,
    // write, roll back.
    {
        let mut conn = store.pool.acquire().await.unwrap();
        assert!(!conn.is_in_transaction());
        let mut tx = conn.begin().await.unwrap();
        sqlx::query("UPDATE tokens SET owner = owner WHERE hash = ?1")
            .bind(TokenHash::of("pooled 1").as_bytes().as_slice())
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
    }
    // Another connection can take the write lock at once.
    let mut other = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("PRAGMA busy_timeout = 0")
        .execute(&mut other)
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .expect("the write lock is free");
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
}
