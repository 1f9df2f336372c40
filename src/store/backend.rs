//! The seam between the one store implementation and the two databases.
//!
//! [`Store<B>`] implements [`RevocationStore`](super::RevocationStore) once (in
//! `shared.rs`), generic over a [`Backend`]. A backend is a sqlx database (`sqlx::Sqlite`,
//! `sqlx::Postgres`) plus everything that differs between the two, in four traits, each
//! implemented in the file of the backend's folder that owns that concern:
//!
//! - [`Backend`] (`mod.rs`): the column codec (how an instant is stored: SQLite epoch
//!   milliseconds, PostgreSQL `timestamptz`; what an `INTEGER` count and a day decode to;
//!   how a list of hashes is bound: one JSON text, or a `bytea[]`), connect, migrate,
//!   ping, bulk token insert and `token import`'s statements;
//! - [`Record`] (`record.rs`): `record_report` (a transaction of several statements on
//!   SQLite, ONE statement on PostgreSQL), `preview`'s statement and the retention purge
//!   of recorded metadata;
//! - [`StatsSql`] (`stats.rs`): the statements of `stats`;
//! - [`Outbox`] (`outbox.rs`): the statements that read the clock (claim, finish,
//!   re-queue: PostgreSQL's `now()`, SQLite's given instant), the claim's lock clause
//!   (PostgreSQL adds `FOR UPDATE SKIP LOCKED`) and `requeue_notification` (one statement on PostgreSQL; on SQLite one,
//!   and a second only when the re-queue changed nothing, to say why).
//!
//! Statements that read the same on both databases (token and report reads, marking a
//! notification failed, listing notifications) are written once in `shared.rs`
//! with `$N` placeholders, which sqlx binds on SQLite too. Each `…_SQL` constant's docs
//! list its parameters in placeholder order and, for a query, the row struct of
//! `rows.rs` whose field names it returns as column names.
//!
//! Invariant: a backend's statement has the same semantics as the other backend's (the
//! contract suite runs every test on both), so the shared code sends the same statements,
//! counted the same way, whichever backend runs it.

use std::future::Future;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::database::HasStatementCache;
use sqlx::{Database, Decode, Encode, Pool, Type};

use super::{
    Clock, ImportToken, ImportedBatch, NewReport, NewToken, PoolSettings, Pooler, RecordOptions,
    RecordedReport, Requeue, StatementCounter, StoreError,
};
use crate::domain::TokenHash;

/// A store on one database: the pool and the statements sent through it.
pub(super) struct Store<B: Database> {
    pub(super) pool: Pool<B>,
    pub(super) statements: StatementCounter,
    /// PostgreSQL reached through a pooler in transaction mode ([`Pooler::Transaction`]):
    /// see [`send!`].
    pub(super) pooled: bool,
    /// One write at a time from this process where the database has one writer
    /// ([`Backend::ONE_WRITER`]: SQLite, see `sqlite/record.rs`).
    pub(super) writer: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// A task the backend runs beside the pool (PostgreSQL with several hosts: the
    /// failover watcher, `postgres/hosts.rs`; SQLite: the WAL checkpointer,
    /// `sqlite/mod.rs`), stopped with the store.
    pub(super) background: Option<Background>,
}

/// A task beside the pool: aborted when dropped.
#[derive(Debug)]
pub(super) struct Background {
    pub(super) task: tokio::task::AbortHandle,
    /// Woken when a write turn ([`Store::write_turn`]) ends with at least
    /// [`WAKE_AFTER_PAGES`] written since the last wake-up ([`Store::wrote`]), if set.
    pub(super) after_write: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// Pages written (an estimate: one per write turn, plus the rows in scattered places
    /// that [`Store::wrote`] counts) since the last wake-up. Changed only by a holder of
    /// the write turn.
    pub(super) written: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// See [`Background::after_write`].
pub(super) const WAKE_AFTER_PAGES: u64 = 256;

impl Background {
    pub(super) fn new(task: tokio::task::AbortHandle) -> Self {
        Background {
            task,
            after_write: None,
            written: Default::default(),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// This process's turn to write ([`Store::write_turn`]); when it ends, the backend's
/// task that waits for writes (SQLite's checkpointer) is woken.
pub(super) struct WriteTurn<'a> {
    _turn: tokio::sync::MutexGuard<'a, ()>,
    after: Option<&'a Background>,
}

impl Drop for WriteTurn<'_> {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(after) = self.after else { return };
        let Some(wake) = &after.after_write else {
            return;
        };
        // Every turn writes a page at least (a claim, a purge of nothing: the commit).
        let written = after.written.swap(0, Relaxed) + 1;
        if written >= WAKE_AFTER_PAGES {
            wake.notify_one();
        } else {
            after.written.fetch_add(written, Relaxed);
        }
    }
}

impl<B: Backend> Store<B> {
    /// This process's turn to write where the database takes one writer at a time
    /// (`None` elsewhere), waited for at most `wait`, in arrival order. A write that met
    /// SQLite's lock instead would sleep in SQLite's busy handler, up to 100 ms between
    /// tries, while writers that queue here hand the lock on within microseconds.
    pub(super) async fn write_turn(
        &self,
        wait: std::time::Duration,
    ) -> Result<Option<WriteTurn<'_>>, StoreError> {
        if !B::ONE_WRITER {
            return Ok(None);
        }
        match tokio::time::timeout(wait, self.writer.lock()).await {
            Ok(turn) => Ok(Some(WriteTurn {
                _turn: turn,
                after: self.background.as_ref(),
            })),
            Err(_) => Err(StoreError::WriteTurnTimedOut),
        }
    }

    /// Counts `pages` (about one per row written in a scattered place: a flipped token,
    /// a notification) towards waking the backend's task when this write turn ends.
    pub(super) fn wrote(&self, pages: usize) {
        if !B::ONE_WRITER {
            return;
        }
        if let Some(b) = &self.background {
            b.written
                .fetch_add(pages as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// [`Store::write_turn`] waited for as long as the database's lock would be
    /// (`--db-timeout`).
    pub(super) async fn usual_write_turn(&self) -> Result<Option<WriteTurn<'_>>, StoreError> {
        self.write_turn(self.pool.options().get_acquire_timeout())
            .await
    }
}

impl<B: Backend> Store<B> {
    /// Opens the pool (see [`Backend::connect`]); does not migrate.
    pub(super) async fn connect(url: &str, settings: &PoolSettings) -> Result<Self, StoreError> {
        let (pool, background) = B::connect(url, settings).await?;
        let writer = std::sync::Arc::new(tokio::sync::Mutex::new(()));
        let background = background.or_else(|| B::after_writes(&pool, &writer));
        Ok(Store {
            pool,
            statements: StatementCounter::default(),
            pooled: settings.pooler == Pooler::Transaction,
            writer,
            background,
        })
    }
}

/// Sends ONE statement through store `$store` and evaluates to
/// `$query.$fetch(…).await?` (`$fetch`: `execute`, `fetch_one`, `fetch_optional`,
/// `fetch_all`), counting what it sends.
///
/// Directly connected: the statement goes straight to the pool, as a named prepared
/// statement sqlx caches on the connection (one round trip once prepared).
///
/// Behind a pooler in transaction mode (PgBouncer `pool_mode = transaction`), which
/// may hand each transaction another server connection, a named statement prepared on
/// one is missing on the next (or another client's is there under its name). So the
/// statement is unnamed (`persistent(false)`) and runs inside `BEGIN … COMMIT`: sqlx
/// parses an unnamed statement and binds it in two exchanges, each ending in a `Sync`,
/// and the pooler would be free to switch server connections between them unless a
/// transaction is open. Three statements are counted (`BEGIN`, it, `COMMIT`).
macro_rules! send {
    ($store:expr, $query:expr, $fetch:ident) => {{
        let store = $store;
        if store.pooled {
            store.statements.add(3);
            let mut tx = store.pool.begin().await?;
            let result = $query.persistent(false).$fetch(&mut *tx).await?;
            tx.commit().await?;
            result
        } else {
            store.statements.add(1);
            $query.$fetch(&store.pool).await?
        }
    }};
}
pub(super) use send;

/// Outbox batches turned into notifications on store `$store`: up to `$rounds`
/// transactions of [`Outbox::expand_batches`] (at most
/// [`EXPAND_BATCHES`](super::notification::EXPAND_BATCHES) batches and about
/// [`EXPAND_TOKENS`](super::notification::EXPAND_TOKENS) notifications each), each after
/// a read finding one queued (so none costs one read), each in the write turn: waited
/// for as usual (`wait`), or only taken when free (`no_wait`: a reader that must not
/// queue behind deliveries turns nothing then). A database the current migrations have
/// not reached (a command that opens it as it is) has no batch table, so nothing
/// queued. Evaluates to how many batches were turned; returns the error otherwise.
macro_rules! expand {
    ($store:expr, $rounds:expr, $turn:ident) => {{
        use $crate::store::notification::{BATCHES_QUEUED_SQL, EXPAND_BATCHES, EXPAND_TOKENS};
        let store = $store;
        let mut turned = 0;
        for _ in 0..$rounds {
            let queued: Result<bool, StoreError> =
                async { Ok(send!(store, sqlx::query_scalar(BATCHES_QUEUED_SQL), fetch_one)) }
                    .await;
            match queued {
                Ok(true) => {}
                Ok(false) => break,
                Err(StoreError::Database(e)) if $crate::store::error::undefined_table(&e) => break,
                Err(e) => return Err(e),
            }
            let _turn = expand!(@turn store, $turn);
            let n = B::expand_batches(store, EXPAND_BATCHES, EXPAND_TOKENS).await?;
            turned += n;
            if n == 0 {
                // The rest are being turned by another instance.
                break;
            }
        }
        turned
    }};
    (@turn $store:ident, wait) => {
        $store.usual_write_turn().await?
    };
    (@turn $store:ident, no_wait) => {
        match $store.write_turn(std::time::Duration::ZERO).await {
            Ok(turn) => turn,
            Err(StoreError::WriteTurnTimedOut) => break,
            Err(e) => return Err(e),
        }
    };
}
pub(super) use expand;

/// Sends ONE statement inside transaction `$tx`, which the caller opened on store
/// `$store`, and evaluates to `$query.$fetch(…).await?`, counting it: a named prepared
/// statement, kept on its connection and reused (sqlx's statement cache), unless the
/// store is behind a transaction-mode pooler, where the next transaction may run on
/// another server connection and the statement is unnamed (see [`send!`]). The
/// transaction holds one server connection until it ends, so it needs nothing else.
macro_rules! send_in {
    ($store:expr, $tx:expr, $query:expr, $fetch:ident) => {{
        let store = $store;
        store.statements.add(1);
        $query.persistent(!store.pooled).$fetch(&mut *$tx).await?
    }};
}
pub(super) use send_in;

/// One database: its column codec, its connection and token statements, and (through
/// the supertraits) the rest of what differs; see the module docs.
pub(super) trait Backend: Database + HasStatementCache + Record + StatsSql + Outbox {
    /// How an instant is stored.
    type Time: for<'q> Encode<'q, Self>
        + for<'r> Decode<'r, Self>
        + Type<Self>
        + Copy
        + Send
        + Sync
        + Unpin
        + 'static;
    /// What an `INTEGER` count or position column (`reports.item_count` and its outcome
    /// counts, `report_items.position`) decodes to.
    type Count: for<'r> Decode<'r, Self> + Type<Self> + Send + Unpin + 'static;
    /// What the day column of the daily stats decodes to.
    type Day: for<'r> Decode<'r, Self> + Type<Self> + Send + Unpin + 'static;
    /// A list of hashes bound as one parameter.
    type HashList<'a>: Encode<'a, Self> + Type<Self> + Send + 'a;

    /// Whether the database takes one writer at a time (SQLite): this process's writes
    /// then take their turn on [`Store::writer`] ([`Store::write_turn`]).
    const ONE_WRITER: bool = false;

    fn encode_time(t: DateTime<Utc>) -> Self::Time;
    /// [`StoreError::Corrupt`] for a stored value that is no instant.
    fn decode_time(stored: Self::Time) -> Result<DateTime<Utc>, StoreError>;
    /// [`StoreError::Corrupt`] for a count no `u32` can hold.
    fn decode_count(stored: Self::Count) -> Result<u32, StoreError>;
    fn decode_position(stored: Self::Count) -> u32;
    /// [`StoreError::Corrupt`] for a stored value that is no day.
    fn decode_day(stored: Self::Day) -> Result<NaiveDate, StoreError>;
    fn hash_list(hashes: &[TokenHash]) -> Self::HashList<'_>;
    /// The rows an `UPDATE` changed.
    fn rows_affected(done: &Self::QueryResult) -> u64;

    /// Opens the pool, and any task that must run beside it.
    fn connect(
        url: &str,
        settings: &PoolSettings,
    ) -> impl Future<Output = Result<(Pool<Self>, Option<Background>), StoreError>> + Send;

    /// A task woken after this process's writes (see [`Background::after_write`]) that
    /// takes its turn on `writer` as they do: SQLite's WAL checkpointer. None by default.
    fn after_writes(
        _pool: &Pool<Self>,
        _writer: &std::sync::Arc<tokio::sync::Mutex<()>>,
    ) -> Option<Background> {
        None
    }

    /// How many migrations this binary embeds for this backend.
    fn known_migrations() -> usize;

    /// Applies this backend's embedded migrations.
    fn migrate(pool: &Pool<Self>) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// See [`RevocationStore::ping`](super::RevocationStore::ping).
    fn ping(store: &Store<Self>) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// See [`RevocationStore::insert_tokens`](super::RevocationStore::insert_tokens).
    fn insert_tokens(
        store: &Store<Self>,
        tokens: &[NewToken],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// See [`RevocationStore::import_tokens`](super::RevocationStore::import_tokens).
    fn import_tokens(
        store: &Store<Self>,
        tokens: &[ImportToken],
    ) -> impl Future<Output = Result<ImportedBatch, StoreError>> + Send;

    /// See [`RevocationStore::revoke_imported`](super::RevocationStore::revoke_imported).
    fn revoke_imported(
        store: &Store<Self>,
        revocations: &[(TokenHash, DateTime<Utc>)],
    ) -> impl Future<Output = Result<Vec<TokenHash>, StoreError>> + Send;
}

/// How a backend records a delivery, and what `preview` asks it.
pub(super) trait Record: Database {
    /// `hashes` ([`Backend::HashList`]), `now` → `PreviewRow`s of the stored ones.
    /// (`owners` reads the same statement's `hash` and `owner` as an `OwnerRow`.)
    const PREVIEW_SQL: &'static str;

    /// See [`RevocationStore::record_report`](super::RevocationStore::record_report).
    fn record_report(
        store: &Store<Self>,
        report: &NewReport,
        options: RecordOptions,
    ) -> impl Future<Output = Result<RecordedReport, StoreError>> + Send;

    /// `before`, `limit` → rows changed: the `url` and `source` of up to `limit`
    /// notifications revoked before `before` and not purged yet (either not `'(purged)'`)
    /// become `'(purged)'`.
    const PURGE_NOTIFICATIONS_SQL: &'static str;

    /// `before`, `limit` → up to `limit` once-per-body claims made before `before`
    /// deleted, each found by its key or row address from a bounded scan (never a join
    /// over the whole table); a claim a delivery renewed meanwhile fails the second
    /// `delivered_at` test and stays. No index on `delivered_at`: every delivery would
    /// write it; the pass scans a table the purge keeps to about a week of deliveries.
    const PURGE_BODIES_SQL: &'static str;

    /// The reports' half of
    /// [`RevocationStore::purge_metadata`](super::RevocationStore::purge_metadata):
    /// `(reports, items)` purged.
    fn purge_reports(
        store: &Store<Self>,
        before: DateTime<Utc>,
        limit: u32,
        max_items: u32,
    ) -> impl Future<Output = Result<(u64, u64), StoreError>> + Send;
}

/// The statements of `stats`, run in one transaction, in this order.
pub(super) trait StatsSql: Database {
    /// The statement that opens the transaction; `None`: the pool's plain `BEGIN`.
    const STATS_BEGIN: Option<&'static str>;
    /// → `ScannerTotals`, ordered by scanner name (byte order); see [`by_scanner_sql`].
    const BY_SCANNER_SQL: &'static str;
    /// → `SourceTotals`: the top 20 by items, then source name (byte order); see
    /// [`by_source_sql`].
    const BY_SOURCE_SQL: &'static str;
    /// `since` (a day, as `YYYY-MM-DD` text) → `DayRow`s, ascending.
    const DAILY_SQL: &'static str;
    /// → `RecentRow`s: the last 20 reports, newest first, each with its first 20 items.
    const RECENT_SQL: &'static str;
}

/// `stats`' per-scanner statement, the same in both dialects but for `$collate`, what
/// makes `ORDER BY` compare names byte by byte: `""` on SQLite (its default BINARY
/// collation does), `" COLLATE \"C\""` on PostgreSQL (whatever the database's locale).
macro_rules! by_scanner_sql {
    ($collate:literal) => {
        concat!(
            "
SELECT scanner, ",
            $crate::store::backend::rollup_sums!(),
            "
FROM stats_daily
GROUP BY scanner
ORDER BY scanner",
            $collate
        )
    };
}

/// The sums of `stats_daily`'s counters, named as `Totals`' fields. (`CAST`: PostgreSQL
/// sums `bigint` to `numeric`.)
macro_rules! rollup_sums {
    () => {
        "CAST(sum(reports) AS BIGINT) AS reports, CAST(sum(items) AS BIGINT) AS items,
       CAST(sum(revoked) AS BIGINT) AS revoked,
       CAST(sum(already_revoked) AS BIGINT) AS already_revoked,
       CAST(sum(expired) AS BIGINT) AS expired, CAST(sum(unknown) AS BIGINT) AS unknown,
       CAST(sum(not_ours) AS BIGINT) AS not_ours,
       CAST(sum(tokens_revoked) AS BIGINT) AS tokens_revoked,
       CAST(sum(tokens_expired) AS BIGINT) AS tokens_expired"
    };
}

/// `stats`' per-day statement; `$since` is the day parameter as the backend compares it
/// with its `day` column.
macro_rules! daily_sql {
    ($since:literal) => {
        concat!(
            "
SELECT day, ",
            $crate::store::backend::rollup_sums!(),
            "
FROM stats_daily
WHERE day >= ",
            $since,
            "
GROUP BY day
ORDER BY day"
        )
    };
}

/// `stats`' per-source statement; `$collate` as for [`by_scanner_sql`].
macro_rules! by_source_sql {
    ($collate:literal) => {
        concat!(
            "
SELECT source, CAST(sum(items) AS BIGINT) AS items, CAST(sum(revoked) AS BIGINT) AS revoked,
       CAST(sum(already_revoked) AS BIGINT) AS already_revoked,
       CAST(sum(expired) AS BIGINT) AS expired, CAST(sum(unknown) AS BIGINT) AS unknown
FROM stats_sources
GROUP BY source
HAVING sum(items) > 0
ORDER BY items DESC, source",
            $collate,
            "
LIMIT 20"
        )
    };
}

/// The columns of a notification row, as `NotificationRow` reads them (`attempts`
/// widened to the 64-bit integer it decodes on both backends; `public_id`, a `uuid` on
/// PostgreSQL, as text).
macro_rules! notification_columns {
    () => {
        "id, CAST(public_id AS TEXT) AS public_id, token_hash, report_id, owner, scanner, url, source, revoked_at, expired, status, \
         CAST(attempts AS BIGINT) AS attempts, next_attempt_at, last_error, delivered_at, \
         locked_until, \
         coalesce((SELECT format FROM tokens WHERE tokens.hash = token_hash), 'cio_tp') AS token_format"
    };
}

/// The claim: lease the due, unleased pending rows, oldest due first, in one
/// statement. `$now` is the backend's "now" from parameter `$1` (the database's clock
/// when it is NULL; see [`Outbox::clock`]), `$lease_end` that plus the lease in
/// milliseconds (`$2`); `$lock` is what keeps two claimers off the same row where
/// several writers run at once (`FOR UPDATE SKIP LOCKED` on PostgreSQL; nothing on
/// SQLite, which runs one writer at a time).
macro_rules! claim_sql {
    ($now:literal, $lease_end:literal, $lock:literal) => {
        concat!(
            "UPDATE notifications SET locked_until = ",
            $lease_end,
            ", attempts = attempts + 1
             WHERE id IN (
                 SELECT id FROM notifications
                 WHERE status = 'pending' AND next_attempt_at <= ",
            $now,
            "
                   AND (locked_until IS NULL OR locked_until <= ",
            $now,
            ")
                 ORDER BY next_attempt_at, id
                 LIMIT $3",
            $lock,
            ")
             RETURNING ",
            notification_columns!()
        )
    };
}

/// The notifications' half of the retention purge (`$1` before, `$2` limit); `$lock` as
/// for [`claim_sql`] (`FOR NO KEY UPDATE SKIP LOCKED` on PostgreSQL: another purge's
/// rows are left to it). A row is purged while either value is not `'(purged)'` yet (a
/// scanner may send that url itself).
macro_rules! purge_notifications_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE notifications SET url = '(purged)', source = '(purged)'
             WHERE id IN (
                 SELECT id FROM notifications
                 WHERE (url <> '(purged)' OR source <> '(purged)') AND revoked_at < $1
                 ORDER BY revoked_at
                 LIMIT $2",
            $lock,
            ")"
        )
    };
}

pub(super) use {
    by_scanner_sql, by_source_sql, claim_sql, daily_sql, notification_columns,
    purge_notifications_sql, rollup_sums,
};

/// The notification (outbox) statements, and the one operation on it whose statements
/// differ.
pub(super) trait Outbox: Database {
    /// `clock, lease (ms), limit` → the claimed `NotificationRow`s, in no order.
    const CLAIM_SQL: &'static str;
    /// `id, clock`: delivered now.
    const DELIVERED_SQL: &'static str;
    /// `id, clock, retry_in (ms), error, claimed locked_until`: due again at now +
    /// `retry_in`, if still held by that claim.
    const RETRY_SQL: &'static str;
    /// `clock`: every failed one pending again, due now.
    const REQUEUE_FAILED_SQL: &'static str;

    /// What a [`Clock`] binds as: `None` (NULL) makes the statement read the
    /// database's clock; an instant is taken as now.
    fn clock(clock: Clock) -> Option<DateTime<Utc>>;
    /// `public_id` (UUID text) → the `NotificationRow` of that id, if any.
    const BY_PUBLIC_ID_SQL: &'static str;

    /// Turns up to `limit` queued batches (`notification_batches`: one row per delivery
    /// that flipped a token, written by the revoking statement), as many as make fewer
    /// than `max_tokens` notifications before the last (the first one whatever its
    /// size, so one transaction stays short however large the deliveries), into
    /// notifications, one per token its report flipped (its items marked `revoked` or
    /// `expired`), deleting each batch in the same transaction: a batch is turned once,
    /// so a token is notified once. Oldest batch first. Returns how many batches it
    /// turned. The caller holds the write turn.
    fn expand_batches(
        store: &Store<Self>,
        limit: u32,
        max_tokens: u32,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// See [`RevocationStore::requeue_notification`](super::RevocationStore::requeue_notification).
    fn requeue_notification(
        store: &Store<Self>,
        id: i64,
        clock: Clock,
    ) -> impl Future<Output = Result<Requeue, StoreError>> + Send;
}
