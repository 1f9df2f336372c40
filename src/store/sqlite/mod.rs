//! SQLite backend: the embedded default (`sqlite://revoker.db`).
//!
//! The file is created if missing and opened in WAL mode with `synchronous=FULL`, so a
//! revocation that was answered 200 survives a power cut. Timestamps are stored as Unix
//! epoch milliseconds. Variable-length inputs (hash lists, the rollups' rows) are bound as
//! one JSON text and expanded with `json_each`, so one statement serves any batch size (a
//! report's items are stored as that JSON, one row: migration 0014); the
//! revoking `UPDATE` of a delivery binds each hash as a parameter of its own instead, up
//! to 30,000 (`record.rs` says why).
//!
//! SQLite has one writer at a time; `record_report` starts with a write, so it takes the
//! write lock first and its reads inside the transaction are consistent. A connection
//! returns to the pool with the usual `busy_timeout`, and is closed instead when sqlx
//! still counts it inside a transaction it could not roll back, as when SQLite already
//! rolled it back on an error (`pool_tests.rs`).
//!
//! This file: the [`Backend`] impl (column codec, connect, migrate, ping, token
//! statements). `record.rs`: the revoking transaction and `preview`. `stats.rs`: the
//! stats statements. `outbox.rs`: the notification statements. `pool_tests.rs`: what
//! deliveries leave on the pool's connections.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};

use super::backend::{send_in, Backend, Background, Store};
use super::{ImportToken, ImportedBatch, NewToken, PoolSettings, StoreError};
use crate::domain::TokenHash;
use crate::support::retry;

mod outbox;
mod record;
mod stats;

/// SQLite's primary result code of a database error (extended codes carry it in the
/// low byte): 5 = SQLITE_BUSY, 8 = SQLITE_READONLY.
fn primary_code(e: &dyn sqlx::error::DatabaseError) -> Option<i32> {
    e.code()
        .and_then(|c| c.parse::<i32>().ok())
        .map(|c| c & 0xff)
}

/// How often a start retries a busy file or a raced migration (10 retries after the first
/// try), and how long it waits before retry n: 50 + 25·n ms.
const START_ATTEMPTS: u32 = 11;

fn start_pause(attempt: u32) -> Duration {
    Duration::from_millis(50 + u64::from(attempt) * 25)
}

/// A JSON array of lower-case hex hashes, for `json_each` + `unhex`.
fn hex_array(hashes: &[TokenHash]) -> String {
    let mut s = String::with_capacity(hashes.len() * 67 + 2);
    s.push('[');
    for (i, h) in hashes.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push('"');
        s.push_str(&h.to_hex());
        s.push('"');
    }
    s.push(']');
    s
}

/// A pooled connection's page cache (SQLite's default, said here: it is what a
/// connection goes back to after a large delivery raised it, `record.rs`): 2,000 KiB.
/// (The bundled SQLite keeps one page cache for all connections of the process and
/// frees pages while it holds more than the sum of theirs.)
const POOL_CACHE_SIZE: &str = "-2000";

/// Frames the WAL may hold before a writer checkpoints it in its own commit (SQLite's
/// `wal_autocheckpoint`; its default is 1,000). Above what one large delivery writes (a
/// 10,000-token one dirties about 11,000 pages of a large `tokens` table), so that it too
/// is answered before its pages are copied; at 2,000 its commit copied and synced them
/// first (~70 ms, a quarter of its time: BENCHMARKS.md). Past it, a writer's commit
/// still checkpoints: what keeps the WAL from growing without end when the
/// [`checkpointer`] falls behind (to about 80 MB of 4 KiB pages plus the largest
/// transaction; a reader's snapshot holds either back alike).
const WRITER_CHECKPOINT_PAGES: u32 = 20_000;

/// Copies the WAL's committed pages into the database file, on a connection of the
/// pool, in its own write turn: after the delivery that wrote them has been answered,
/// not inside its commit.
///
/// SQLite's default has the writer whose commit takes the WAL past 1,000 pages do it
/// inside that commit: a 1,000-token delivery dirties ~1,000 pages of a large `tokens`
/// table, so nearly every such delivery also wrote those pages to the database file and
/// synced it before it was answered (~20 ms of a 1,000-token delivery on 1,000,000
/// tokens). This task is woken when a write turn ends that brought this process's writes
/// since the last checkpoint to about
/// [`WAKE_AFTER_PAGES`](super::backend::WAKE_AFTER_PAGES) pages (every turn counts one;
/// `Store::wrote` adds a delivery's flipped tokens, the outbox's notifications, an
/// import's tokens, the purges' rows; a 1-token delivery counts two, so small ones wake
/// it rarely, and their WAL may also be checkpointed by a writer at
/// [`WRITER_CHECKPOINT_PAGES`]). It queues for the write turn like any write, so no write
/// of this process runs meanwhile: the `PASSIVE` checkpoint copies the whole WAL and the
/// next write starts it over, unless another process's checkpoint holds the lock or a
/// reader's snapshot still needs older frames (then it tries again, see the loop). It
/// takes a connection from the pool as any statement does (waiting, while it holds the
/// turn, at most `--db-timeout` when every connection is in use). (Run beside the writes
/// instead, it never caught up with them under a mass revocation: the WAL grew and
/// deliveries' p99 went from 0.3 to 1.4 s.) Durability is unchanged: a commit is durable
/// once its WAL frames are synced (`synchronous=FULL`), checkpointed or not.
fn checkpointer(pool: SqlitePool, writer: std::sync::Arc<tokio::sync::Mutex<()>>) -> Background {
    use std::sync::atomic::Ordering::Relaxed;
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (woken, counted) = (wake.clone(), written.clone());
    let task = tokio::spawn(async move {
        let mut copied_before = 0;
        loop {
            // One stored wake-up stands for any number of turns that ended meanwhile.
            woken.notified().await;
            let _turn = writer.lock().await;
            // (busy, frames in the WAL, frames copied). Busy: another process's
            // checkpoint holds the lock, the next write turn tries again. Fewer copied:
            // a reader's snapshot still needs older frames; again at the next turn if
            // this one got further, else once 256 more pages are written (a reader that
            // stays would otherwise cost every turn a checkpoint that copies nothing).
            // Meanwhile the writers' own checkpoint bounds the WAL.
            let done: Result<(i64, i64, i64), _> = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&pool)
                .await;
            let again = match done {
                Ok((0, log, copied)) if copied >= log => false,
                Ok((busy, log, copied)) => {
                    tracing::debug!(busy, log, copied, "WAL checkpoint incomplete");
                    let further = copied > copied_before;
                    copied_before = copied;
                    busy != 0 || further
                }
                Err(e) => {
                    // The pool closing, or the database gone: after the next 256 pages.
                    tracing::debug!(error = %e, "WAL checkpoint failed");
                    false
                }
            };
            if again {
                counted.fetch_add(super::backend::WAKE_AFTER_PAGES, Relaxed);
            }
        }
    });
    Background {
        task: task.abort_handle(),
        after_write: Some(wake),
        written,
    }
}

impl Backend for Sqlite {
    const ONE_WRITER: bool = true;

    /// Unix epoch milliseconds.
    type Time = i64;
    /// sqlx refuses a value out of `u32` range when it decodes the column.
    type Count = u32;
    /// `date(…)` gives `YYYY-MM-DD` text.
    type Day = String;
    /// A JSON array of hex hashes, expanded with `json_each` + `unhex`.
    type HashList<'a> = String;

    fn encode_time(t: DateTime<Utc>) -> i64 {
        t.timestamp_millis()
    }

    fn decode_time(ms: i64) -> Result<DateTime<Utc>, StoreError> {
        Utc.timestamp_millis_opt(ms)
            .single()
            .ok_or_else(|| StoreError::Corrupt(format!("timestamp {ms} out of range")))
    }

    fn decode_count(n: u32) -> Result<u32, StoreError> {
        Ok(n)
    }

    fn decode_position(n: u32) -> u32 {
        n
    }

    fn decode_day(day: String) -> Result<NaiveDate, StoreError> {
        NaiveDate::parse_from_str(&day, "%Y-%m-%d")
            .map_err(|_| StoreError::Corrupt(format!("day {day:?}")))
    }

    fn hash_list(hashes: &[TokenHash]) -> String {
        hex_array(hashes)
    }

    fn rows_affected(done: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    async fn connect(
        url: &str,
        settings: &PoolSettings,
    ) -> Result<(SqlitePool, Option<Background>), StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(settings.create_if_missing)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .pragma("wal_autocheckpoint", WRITER_CHECKPOINT_PAGES.to_string())
            .pragma("cache_size", POOL_CACHE_SIZE)
            .busy_timeout(settings.acquire_timeout);
        // A delivery near its deadline cuts its connection's busy_timeout, and a large
        // delivery raises its page cache (record.rs). A delivery does not put them back
        // (one whose caller gave up mid-transaction could not): every connection gets
        // the usual ones back when it returns to the pool, so the pool's connections do
        // not each keep a delivery's pages allocated.
        let usual = format!(
            "PRAGMA busy_timeout = {}; PRAGMA cache_size = {POOL_CACHE_SIZE}",
            settings.acquire_timeout.as_millis()
        );
        let pool_options = SqlitePoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .acquire_timeout(settings.acquire_timeout)
            .after_release(move |conn, _meta| {
                let usual = usual.clone();
                Box::pin(async move {
                    use sqlx::{Connection, Executor};
                    // Runs after the rollback of a transaction dropped unfinished.
                    conn.execute(usual.as_str()).await?;
                    // Still in a transaction by sqlx's count: sqlx's rollback of it
                    // failed, typically because SQLite had already rolled it back whole
                    // on an error (a full disk in a statement without a statement
                    // journal, or in `COMMIT`). Its next `begin` would be a savepoint,
                    // and a rollback of that leaves a transaction open, holding the
                    // write lock. Closed instead (closing rolls back whatever is open).
                    if conn.is_in_transaction() {
                        tracing::warn!(
                            "a database connection came back inside a transaction that \
                             could not be rolled back; closed"
                        );
                        return Ok(false);
                    }
                    Ok(true)
                })
            });
        // Switching a fresh file to WAL needs it to itself for a moment; a process
        // starting alongside another one can find it busy (SQLITE_BUSY) without the
        // busy handler being asked. Such a start waits and tries again.
        let busy = |e: &sqlx::Error, _attempt: u32| match e {
            sqlx::Error::Database(e) => primary_code(&**e) == Some(5),
            _ => false,
        };
        let pool = retry(START_ATTEMPTS, start_pause, busy, || {
            pool_options.clone().connect_with(options.clone())
        })
        .await?;
        Ok((pool, None))
    }

    fn after_writes(
        pool: &SqlitePool,
        writer: &std::sync::Arc<tokio::sync::Mutex<()>>,
    ) -> Option<Background> {
        Some(checkpointer(pool.clone(), writer.clone()))
    }

    fn known_migrations() -> usize {
        sqlx::migrate!("./migrations/sqlite").iter().count()
    }

    async fn migrate(pool: &SqlitePool) -> Result<(), StoreError> {
        // sqlx takes no lock for SQLite migrations, so processes starting together on
        // a fresh file race, and the loser fails on a table the winner has just
        // created. Each migration commits together with its row in _sqlx_migrations,
        // so the loser's next attempt sees it applied and goes on from there.
        let migrator = sqlx::migrate!("./migrations/sqlite");
        let raced = |e: &sqlx::migrate::MigrateError, attempt: u32| match e {
            sqlx::migrate::MigrateError::Execute(e)
            | sqlx::migrate::MigrateError::ExecuteMigration(e, _) => {
                tracing::debug!(attempt, error = %e, "migration raced another process; retrying");
                true
            }
            _ => false,
        };
        retry(START_ATTEMPTS, start_pause, raced, || migrator.run(pool)).await?;
        Ok(())
    }

    async fn ping(store: &Store<Self>) -> Result<(), StoreError> {
        // While a write of this process has the turn, the database is taking writes
        // (that write's own failure is answered by its caller): the probe does not queue
        // behind a mass revocation's deliveries, where it would find the database
        // unready for being busy.
        let Ok(_turn) = store.writer.try_lock() else {
            return Ok(());
        };
        store.statements.add(1);
        // A write that changes nothing: SQLite refuses it on a read-only file or
        // connection (SQLITE_READONLY, primary code 8) before looking at any row.
        match sqlx::query("DELETE FROM reports WHERE 0")
            .execute(&store.pool)
            .await
        {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if primary_code(&*e) == Some(8) => {
                Err(StoreError::ReadOnly)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn insert_tokens(store: &Store<Self>, tokens: &[NewToken]) -> Result<(), StoreError> {
        if tokens.is_empty() {
            return Ok(());
        }
        let rows: Vec<serde_json::Value> = tokens
            .iter()
            .map(|t| {
                serde_json::json!([
                    t.hash.to_hex(),
                    t.owner,
                    Self::encode_time(t.created_at),
                    Self::encode_time(t.expires_at)
                ])
            })
            .collect();
        store.statements.add(1);
        sqlx::query(
            "INSERT INTO tokens (hash, owner, created_at, expires_at)
             SELECT unhex(json_extract(value, '$[0]')), json_extract(value, '$[1]'),
                    json_extract(value, '$[2]'), json_extract(value, '$[3]')
             FROM json_each(?1)",
        )
        .bind(serde_json::Value::Array(rows).to_string())
        .execute(&store.pool)
        .await?;
        store.wrote(tokens.len());
        Ok(())
    }

    async fn import_tokens(
        store: &Store<Self>,
        tokens: &[ImportToken],
    ) -> Result<ImportedBatch, StoreError> {
        let rows: Vec<serde_json::Value> = tokens
            .iter()
            .map(|t| {
                serde_json::json!([
                    t.hash.to_hex(),
                    t.owner,
                    t.format,
                    Self::encode_time(t.created_at),
                    Self::encode_time(t.expires_at),
                    t.revoked_at.map(Self::encode_time)
                ])
            })
            .collect();
        let rows = serde_json::Value::Array(rows).to_string();
        // The insert first: the transaction takes the write lock at once, so the read
        // after it sees what it left (and nobody else's insert in between).
        store.statements.add(1);
        let mut tx = store.pool.begin().await?;
        let inserted: Vec<(Vec<u8>,)> = send_in!(
            store,
            tx,
            sqlx::query_as(
                "INSERT INTO tokens (hash, owner, format, created_at, expires_at, revoked_at)
                 SELECT unhex(json_extract(value, '$[0]')), json_extract(value, '$[1]'),
                        json_extract(value, '$[2]'), json_extract(value, '$[3]'),
                        json_extract(value, '$[4]'), json_extract(value, '$[5]')
                 FROM json_each(?1) WHERE true
                 ON CONFLICT (hash) DO NOTHING
                 RETURNING hash",
            )
            .bind(rows.as_str()),
            fetch_all
        );
        let stored: Vec<(Vec<u8>, String, String, bool)> = send_in!(
            store,
            tx,
            sqlx::query_as(
                "SELECT hash, owner, format, revoked_at IS NOT NULL FROM tokens
                 WHERE hash IN (SELECT unhex(json_extract(value, '$[0]')) FROM json_each(?1))",
            )
            .bind(rows.as_str()),
            fetch_all
        );
        store.statements.add(1);
        tx.commit().await?;
        store.wrote(inserted.len());
        let inserted: std::collections::HashSet<Vec<u8>> =
            inserted.into_iter().map(|(hash,)| hash).collect();
        let mut answer: Vec<_> = inserted
            .iter()
            .map(|hash| (hash.clone(), true, None, None, false))
            .collect();
        answer.extend(
            stored
                .into_iter()
                .filter(|(hash, ..)| !inserted.contains(hash))
                .map(|(hash, owner, format, revoked)| {
                    (hash, false, Some(owner), Some(format), revoked)
                }),
        );
        ImportedBatch::from_rows(answer)
    }

    async fn revoke_imported(
        store: &Store<Self>,
        revocations: &[(TokenHash, DateTime<Utc>)],
    ) -> Result<Vec<TokenHash>, StoreError> {
        let rows: Vec<serde_json::Value> = revocations
            .iter()
            .map(|(hash, at)| serde_json::json!([hash.to_hex(), Self::encode_time(*at)]))
            .collect();
        store.statements.add(1);
        let revoked: Vec<(Vec<u8>,)> = sqlx::query_as(
            "UPDATE tokens SET revoked_at = json_extract(value, '$[1]')
             FROM json_each(?1)
             WHERE tokens.hash = unhex(json_extract(value, '$[0]')) AND tokens.revoked_at IS NULL
             RETURNING tokens.hash",
        )
        .bind(serde_json::Value::Array(rows).to_string())
        .fetch_all(&store.pool)
        .await?;
        store.wrote(revoked.len());
        revoked
            .into_iter()
            .map(|(hash,)| super::rows::hash_from(&hash))
            .collect()
    }
}

#[cfg(test)]
mod pool_tests;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::{Clock, RevocationStore};

    /// When a write turn ends with enough written, the checkpointer copies the WAL into
    /// the database file: here 300 tokens, far below the writers' own threshold (and
    /// SQLite's default) in pages, reach the file with the store open and no writer
    /// checkpointing. Without the checkpointer the file would not grow until the last
    /// connection closed.
    #[tokio::test]
    async fn a_write_turn_wakes_the_wal_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.db");
        let url = format!("sqlite://{}", path.display());
        let settings = PoolSettings {
            create_if_missing: true,
            ..PoolSettings::default()
        };
        let store = Store::<Sqlite>::connect(&url, &settings).await.unwrap();
        Sqlite::migrate(&store.pool).await.unwrap();
        let threshold: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(threshold, i64::from(WRITER_CHECKPOINT_PAGES));
        // The migrations' pages are in the WAL, not yet in the file.
        let file = || std::fs::metadata(&path).unwrap().len();
        let before = file();
        let now = Utc::now();
        let tokens: Vec<NewToken> = (0..300u32)
            .map(|i| NewToken {
                hash: TokenHash::of(&format!("checkpointed {i}")),
                owner: "wal/owner".into(),
                created_at: now,
                expires_at: now + chrono::Duration::hours(1),
            })
            .collect();
        store.insert_tokens(&tokens).await.unwrap();
        let waited = std::time::Instant::now();
        while file() <= before {
            assert!(
                waited.elapsed() < Duration::from_secs(20),
                "the database file stayed at {before} bytes: nothing checkpointed the WAL"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM tokens")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(stored, 300);
    }

    /// A commit of more pages than a 1,000-token delivery writes, a 10,000-token one's
    /// (16 MiB here, 4,096 pages), leaves them in the WAL: the commit is answered, the
    /// checkpointer copies them after (with a 2,000-page threshold the commit copied them
    /// into the file and synced it first). Past the threshold a commit still does: the
    /// WAL's bound when nothing else checkpoints (no write turn here, so the checkpointer
    /// is never woken).
    #[tokio::test]
    async fn a_large_commit_leaves_its_pages_to_the_checkpointer_up_to_a_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("large.db");
        let url = format!("sqlite://{}", path.display());
        let settings = PoolSettings {
            create_if_missing: true,
            ..PoolSettings::default()
        };
        let store = Store::<Sqlite>::connect(&url, &settings).await.unwrap();
        sqlx::query("CREATE TABLE big (b BLOB)")
            .execute(&store.pool)
            .await
            .unwrap();
        let file = || std::fs::metadata(&path).unwrap().len();
        let before = file();
        let write = |pages: u32| {
            sqlx::query("INSERT INTO big VALUES (zeroblob(?1))")
                .bind(i64::from(pages) * 4096)
                .execute(&store.pool)
        };
        write(4_096).await.unwrap();
        assert!(
            file() < before + (1 << 20),
            "a 4,096-page commit was copied into the database file ({} bytes, {before} before)",
            file()
        );
        write(WRITER_CHECKPOINT_PAGES).await.unwrap();
        assert!(
            file() > before + u64::from(WRITER_CHECKPOINT_PAGES) * 4096,
            "past {WRITER_CHECKPOINT_PAGES} pages in the WAL the commit checkpoints ({} bytes)",
            file()
        );
    }

    /// Every write of this process takes its turn, the outbox's and retention's too:
    /// while the turn is taken, each waits for it (here at most a short `--db-timeout`)
    /// and gives up having written nothing (the claim first reads whether an outbox batch
    /// is queued: a read, which takes no turn). Without the turn, each would find the lock free
    /// (nobody holds it) and succeed. The readiness probe does not wait: a write of this
    /// process under way says the database takes writes.
    #[tokio::test]
    async fn writes_wait_for_this_process_s_turn_to_write() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("turn.db").display());
        let settings = PoolSettings {
            acquire_timeout: Duration::from_millis(150),
            create_if_missing: true,
            ..PoolSettings::default()
        };
        let store = Store::<Sqlite>::connect(&url, &settings).await.unwrap();
        Sqlite::migrate(&store.pool).await.unwrap();
        let taken = store.writer.lock().await;
        let before = store.statements();
        let turn = |r: Result<(), StoreError>| matches!(r, Err(StoreError::WriteTurnTimedOut));
        // The readiness probe does not wait: the database is busy writing.
        store.ping().await.unwrap();
        assert!(turn(
            store
                .claim_notifications(Clock::Database, Duration::from_secs(60), 10)
                .await
                .map(drop)
        ));
        assert!(turn(
            store.purge_delivered_bodies(Utc::now(), 10).await.map(drop)
        ));
        assert!(turn(store.requeue_failed(Clock::Database).await.map(drop)));
        // `stats` does not queue for the turn to turn an outbox batch: it reads without.
        sqlx::query(
            "INSERT INTO notification_batches (report_id, queued_at, tokens) VALUES (1, 0, 1)",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        let statements = store.statements();
        store
            .stats(chrono::NaiveDate::from_ymd_opt(2020, 1, 1).unwrap())
            .await
            .unwrap();
        let batches: i64 = sqlx::query_scalar("SELECT count(*) FROM notification_batches")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(batches, 1, "left for the outbox");
        let before = before + (store.statements() - statements);
        assert_eq!(
            store.statements(),
            before + 1,
            "nothing was sent but the claim's read of the outbox's batches"
        );
        drop(taken);
        store.ping().await.unwrap();
        assert_eq!(
            store.purge_delivered_bodies(Utc::now(), 10).await.unwrap(),
            0
        );
    }
}
