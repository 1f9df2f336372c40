//! PostgreSQL: recording a delivery, and `preview`'s statement.
//!
//! A whole delivery is ONE statement ([`RECORD_SQL`], run as the body of the server-side
//! function `revoker_record_delivery` that migration 0012 created and 0014 last redefined
//! from the same text, so its plan is kept per server session even behind a
//! transaction-mode pooler; data-modifying CTEs, atomic without an explicit transaction,
//! one round trip): it takes the report id from the sequence, flips every
//! live candidate with a single `UPDATE … FROM unnest($2::bytea[])`, classifies every
//! candidate, and inserts the report (with its counts), its items (one row: the
//! candidates' arrays and their outcomes, migration 0014) and, when it
//! flipped a token, one outbox batch (migration 0013: the outbox turns it into one owner
//! notification per flipped token, `outbox.rs`). All sub-statements share one snapshot,
//! so the `tokens` read in the outer `SELECT` sees the rows as they were before this
//! statement: a row that exists but was not flipped was already revoked. When two
//! deliveries race on one token, the second `UPDATE` waits for the first to commit,
//! re-checks `revoked_at IS NULL`, skips the row, and reports `already_revoked`: exactly
//! one flips it (and its report's batch queues its one notification).
//!
//! The `UPDATE` joins the candidates sorted by hash, so with the index lookups the
//! planner picks for a large table (and the same physical scan order for a small one)
//! concurrent deliveries lock shared rows in the same order and queue rather than
//! deadlock. That is a property of the plan, not a guarantee: a statement PostgreSQL
//! still aborts (deadlock or serialization failure) is retried by `record_report` from
//! the start (it rolled back, so nothing of the failed attempt remains). An explicit
//! `SELECT … ORDER BY hash FOR UPDATE` first would guarantee the order but costs a
//! second write per row: +5 ms at 1,000 tokens in the benchmark.
//!
//! Once per body: the statement first claims `(scanner, body_sha256)` in
//! `delivered_bodies` (`INSERT … ON CONFLICT DO UPDATE … WHERE` older than the window);
//! everything else it writes is conditional on that claim. A second identical delivery
//! racing on another instance waits on that key until the first commits, then finds it
//! and writes nothing; it is answered from the first report (one more read).
//!
//! With a deadline the statement runs inside `BEGIN; SET LOCAL statement_timeout = …`
//! and an explicit `COMMIT` (two more round trips; behind a transaction-mode pooler a
//! transaction even without a deadline, sent as `pooled.rs` says: two round trips for a
//! small delivery): PostgreSQL cancels the work when the budget runs out (a lock held
//! by another session, a slow disk), and if the caller gives up first, the transaction
//! is rolled back, never committed late. The statement alone in autocommit would commit
//! whenever it finished, after the caller had answered 503.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::{FromRow, Postgres};

use crate::domain::{Outcome, TokenHash};
use crate::store::backend::{purge_notifications_sql, send, send_in, Record, Store};
use crate::store::recording::{
    database_budget, duplicate_answer, outcomes_for, DELIVERED_BODY_SQL,
};
use crate::store::stats::stored_source;
use crate::store::{NewReport, RecordOptions, RecordedReport, StoreError, ONCE_PER_BODY_WINDOW};
use crate::support::retry;

/// Attempts for a transaction aborted by a deadlock or serialization failure.
const MAX_ATTEMPTS: u32 = 5;

/// Deadlock (40P01) or serialization failure (40001): safe to retry the transaction.
fn is_retryable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("40P01" | "40001")),
        _ => false,
    }
}

/// [`is_retryable`], and a WARN saying that `what` runs again.
fn run_again(what: &'static str, err: &sqlx::Error, attempt: u32) -> bool {
    let retry = is_retryable(err);
    if retry {
        tracing::warn!(attempt, error = %err, "{what} aborted, retrying");
    }
    retry
}

/// What adding a row to `stats_sources` (aliased `s`) does to the one already there:
/// sums every counter (the recording and the purge alike).
macro_rules! add_to_source {
    () => {
        "    ON CONFLICT (source, slot) DO UPDATE SET
        items = s.items + EXCLUDED.items, revoked = s.revoked + EXCLUDED.revoked,
        already_revoked = s.already_revoked + EXCLUDED.already_revoked,
        expired = s.expired + EXCLUDED.expired, unknown = s.unknown + EXCLUDED.unknown"
    };
}

/// One delivery in one statement. All sub-statements share one snapshot: the `tokens`
/// read in `outcome` sees rows as they were before `flipped` ran, so a row that exists
/// but was not flipped was already revoked. No foreign key points at `reports` from the
/// tables it writes (migration 0011): the report, its items and the tokens'
/// `revoked_by` are written together here. Deliveries run it as the body of
/// `revoker_record_delivery` ([`CALL_SQL`]).
pub(super) const RECORD_SQL: &str = concat!(
    "
WITH rid AS (
    SELECT nextval('reports_id_seq'::regclass) AS id
), claim AS (
    -- Once per body ($12): claim (scanner, body) unless a claim younger than the window
    -- ($13, the cutoff) holds it. An identical delivery in flight elsewhere holds the key:
    -- this waits for it to commit, then finds it and claims nothing.
    INSERT INTO delivered_bodies (scanner, body_sha256, report_id, delivered_at)
    SELECT $7, $9, (SELECT id FROM rid), $6 WHERE $12::boolean
    ON CONFLICT (scanner, body_sha256) DO UPDATE
        SET report_id = EXCLUDED.report_id, delivered_at = EXCLUDED.delivered_at
        WHERE delivered_bodies.delivered_at < $13
    RETURNING 1
), go AS (
    -- Whether this statement records anything at all.
    SELECT NOT $12::boolean OR EXISTS (SELECT 1 FROM claim) AS fresh
), item AS (
    -- $14, where a token found inside the delivery was found, is empty unless there is
    -- one (unnest pads it with NULLs).
    SELECT * FROM unnest($1::int4[], $2::bytea[], $3::text[], $4::text[], $5::text[], $14::text[])
        AS u(position, hash, token_type, source, url, found_in)
), input AS (
    SELECT DISTINCT hash FROM item
), flipped AS (
    -- Rows are visited, and so locked, in hash order: deliveries naming the same
    -- tokens queue for them instead of locking them in different orders and
    -- deadlocking.
    UPDATE tokens t SET revoked_at = $6, revoked_by = (SELECT id FROM rid)
    FROM (SELECT hash FROM input ORDER BY hash) l
    WHERE t.hash = l.hash AND t.revoked_at IS NULL AND (SELECT fresh FROM go)
    RETURNING t.hash, t.expires_at <= $6 AS was_expired, t.format,
              -- Its age at revocation, in whole milliseconds of both instants (as the
              -- SQLite backend stores them).
              (floor(extract(epoch FROM $6::timestamptz) * 1000)
               - floor(extract(epoch FROM t.created_at) * 1000))::int8 AS age_ms
), outcome AS (
    -- The existence probe runs only for rows that did not flip (CASE is lazy).
    SELECT i.hash,
           CASE WHEN f.hash IS NOT NULL THEN CASE WHEN f.was_expired THEN 'expired' ELSE 'revoked' END
                WHEN EXISTS (SELECT 1 FROM tokens t WHERE t.hash = i.hash) THEN 'already_revoked'
                ELSE 'unknown'
           END AS outcome
    FROM input i
    LEFT JOIN flipped f ON f.hash = i.hash
), report AS (
    INSERT INTO reports (id, scanner, key_id, received_at, body_sha256, item_count, not_ours,
                         revoked, already_revoked, expired, unknown)
    SELECT (SELECT id FROM rid), $7, $8, $6, $9, $10, $11,
           count(*) FILTER (WHERE o.outcome = 'revoked'),
           count(*) FILTER (WHERE o.outcome = 'already_revoked'),
           count(*) FILTER (WHERE o.outcome = 'expired'),
           count(*) FILTER (WHERE o.outcome = 'unknown')
    FROM item JOIN outcome o USING (hash)
    HAVING (SELECT fresh FROM go)
    RETURNING item_count, not_ours, revoked, already_revoked, expired, unknown
), daily AS (
    -- The stats rollups (migration 0007), in this same statement: exactly what it wrote.
    -- Slot: the report id modulo 16, so concurrent deliveries update different rows.
    INSERT INTO stats_daily AS s (day, scanner, slot, reports, items, revoked, already_revoked,
                                  expired, unknown, not_ours, tokens_revoked, tokens_expired,
                                  notifications, last_received_at)
    SELECT ($6::timestamptz AT TIME ZONE 'UTC')::date, $7, (SELECT id FROM rid) % 16, 1,
           r.item_count, r.revoked, r.already_revoked, r.expired, r.unknown, r.not_ours,
           (SELECT count(*) FROM flipped WHERE NOT was_expired),
           (SELECT count(*) FROM flipped WHERE was_expired),
           (SELECT count(*) FROM flipped), $6
    FROM report r
    ON CONFLICT (day, scanner, slot) DO UPDATE SET
        reports = s.reports + 1, items = s.items + EXCLUDED.items,
        revoked = s.revoked + EXCLUDED.revoked,
        already_revoked = s.already_revoked + EXCLUDED.already_revoked,
        expired = s.expired + EXCLUDED.expired, unknown = s.unknown + EXCLUDED.unknown,
        not_ours = s.not_ours + EXCLUDED.not_ours,
        tokens_revoked = s.tokens_revoked + EXCLUDED.tokens_revoked,
        tokens_expired = s.tokens_expired + EXCLUDED.tokens_expired,
        notifications = s.notifications + EXCLUDED.notifications,
        last_received_at = greatest(s.last_received_at, EXCLUDED.last_received_at)
), sources AS (
    INSERT INTO stats_sources AS s (source, slot, items, revoked, already_revoked, expired, unknown)
    SELECT item.source, (SELECT id FROM rid) % 16, count(*),
           count(*) FILTER (WHERE o.outcome = 'revoked'),
           count(*) FILTER (WHERE o.outcome = 'already_revoked'),
           count(*) FILTER (WHERE o.outcome = 'expired'),
           count(*) FILTER (WHERE o.outcome = 'unknown')
    FROM item JOIN outcome o USING (hash)
    WHERE (SELECT fresh FROM go)
    GROUP BY item.source
    ORDER BY item.source
",
    add_to_source!(),
    "
), bounds AS (
    -- The histogram's lower bounds in bucket order, read once per statement.
    SELECT array_agg(lo_ms ORDER BY bucket) AS lo FROM stats_age_buckets WHERE bucket > 0
), ages AS (
    -- Each flipped token's age into its format's histogram bucket: `width_bucket`
    -- counts the bounds at or below it (a binary search), which is the bucket's number
    -- (0: under the first bound).
    INSERT INTO stats_format_ages AS s (format, bucket, slot, tokens, expired)
    SELECT f.format, width_bucket(f.age_ms, (SELECT lo FROM bounds)), (SELECT id FROM rid) % 16,
           count(*), count(*) FILTER (WHERE f.was_expired)
    FROM flipped f
    GROUP BY 1, 2
    ORDER BY 1, 2
    ON CONFLICT (format, bucket, slot) DO UPDATE
        SET tokens = s.tokens + EXCLUDED.tokens, expired = s.expired + EXCLUDED.expired
), items AS (
    -- The report's items in one row (migration 0014): the candidates' arrays as they
    -- came, and each one's outcome in the same order. None for a report without items.
    INSERT INTO report_item_sets (report_id, positions, hashes, token_types, sources, urls,
                                  outcomes, found_in)
    SELECT (SELECT id FROM rid), $1, $2, $3, $4, $5,
           ARRAY(SELECT o.outcome
                 FROM unnest($2::bytea[]) WITH ORDINALITY AS c (hash, n)
                 JOIN outcome o USING (hash)
                 ORDER BY c.n),
           $14
    WHERE (SELECT fresh FROM go) AND cardinality($2::bytea[]) > 0
), queued AS (
    -- The outbox, one row per delivery that flipped a token, in this same statement: it
    -- exists exactly when the revocation committed. The outbox worker turns it into one
    -- owner notification per token this report flipped (its items marked revoked or
    -- expired; `postgres/outbox.rs`), and a token flips once.
    INSERT INTO notification_batches (report_id, queued_at, tokens)
    SELECT (SELECT id FROM rid), $6, count(*) FROM flipped HAVING count(*) > 0
)
SELECT (SELECT id FROM rid) AS report_id, (SELECT fresh FROM go) AS fresh, hash, outcome
FROM outcome"
);

/// A row of [`RECORD_SQL`]'s answer: one per distinct candidate.
#[derive(FromRow)]
struct OutcomeRow<'r> {
    report_id: i64,
    fresh: bool,
    /// An array, not a slice: behind a pooler the answer comes in text (`pooled.rs`).
    hash: [u8; 32],
    outcome: &'r str,
}

/// `before`, `limit` reports, `max_items` → one row: `reports`, `items` purged. One
/// statement: the oldest reports not purged yet, as many as fit under `max_items` items
/// (the first whatever its size), are locked (`FOR NO KEY UPDATE`, which a token's
/// `revoked_by` reference does not wait for; `SKIP LOCKED`: another instance's batch is
/// left to it), their items overwritten and the reports marked, atomically.
const PURGE_REPORTS_SQL: &str = concat!(
    "
WITH picked AS (
    SELECT id FROM (
        SELECT id, item_count,
               sum(item_count) OVER (ORDER BY received_at, id ROWS UNBOUNDED PRECEDING) AS running
        FROM reports
        WHERE metadata_purged_at IS NULL AND received_at < $1
        ORDER BY received_at, id
        LIMIT $2
    ) w
    WHERE running - item_count < $3
), batch AS (
    SELECT id FROM reports
    WHERE id IN (SELECT id FROM picked) AND metadata_purged_at IS NULL
    FOR NO KEY UPDATE SKIP LOCKED
), moved AS (
    -- The batch's items by source as they read before this statement (every CTE sees
    -- that snapshot), in the slot their delivery counted them in.
    SELECT left(source, 200) AS source, report_id % 16 AS slot, count(*) AS items,
           count(*) FILTER (WHERE outcome = 'revoked') AS revoked,
           count(*) FILTER (WHERE outcome = 'already_revoked') AS already_revoked,
           count(*) FILTER (WHERE outcome = 'expired') AS expired,
           count(*) FILTER (WHERE outcome = 'unknown') AS unknown
    FROM report_items
    WHERE report_id IN (SELECT id FROM batch) AND source <> '(purged)'
    GROUP BY 1, 2
), taken AS (
    -- The per-source rollup follows the items: their counts leave their source…
    UPDATE stats_sources s
    SET items = s.items - m.items, revoked = s.revoked - m.revoked,
        already_revoked = s.already_revoked - m.already_revoked,
        expired = s.expired - m.expired, unknown = s.unknown - m.unknown
    FROM moved m
    WHERE s.source = m.source AND s.slot = m.slot
    RETURNING 1
), given AS (
    -- …for '(purged)' (rows emptied here are deleted by the next statement).
    INSERT INTO stats_sources AS s (source, slot, items, revoked, already_revoked, expired, unknown)
    SELECT '(purged)', slot, sum(items), sum(revoked), sum(already_revoked), sum(expired),
           sum(unknown)
    FROM moved
    GROUP BY slot
    ORDER BY slot
",
    add_to_source!(),
    "
    RETURNING 1
), items AS (
    -- Each report's items in one row (migration 0014): every type, source and url of it.
    UPDATE report_item_sets
    SET token_types = array_fill('(purged)'::text, ARRAY[cardinality(positions)]),
        sources = array_fill('(purged)'::text, ARRAY[cardinality(positions)]),
        urls = array_fill('(purged)'::text, ARRAY[cardinality(positions)])
    WHERE report_id IN (SELECT id FROM batch)
    RETURNING cardinality(positions) AS n
), marked AS (
    UPDATE reports SET metadata_purged_at = now()
    WHERE id IN (SELECT id FROM batch)
    RETURNING 1
)
SELECT (SELECT count(*) FROM marked) AS reports,
       (SELECT coalesce(sum(n), 0)::int8 FROM items) AS items"
);

impl Record for Postgres {
    /// `hashes` (`bytea[]`), `now` → `PreviewRow`s of the stored ones.
    const PREVIEW_SQL: &'static str =
        "SELECT hash, owner, revoked_at IS NOT NULL AS revoked, expires_at <= $2 AS expired
             FROM tokens WHERE hash = ANY($1::bytea[])";

    const PURGE_NOTIFICATIONS_SQL: &'static str =
        purge_notifications_sql!(" FOR NO KEY UPDATE SKIP LOCKED");

    /// By row address (a TID scan, never a join over the table). What keeps a claim a
    /// delivery renewed meanwhile is the second `delivered_at` test (re-checked on the
    /// renewed row), not its new address: keep it.
    const PURGE_BODIES_SQL: &'static str = "DELETE FROM delivered_bodies
        WHERE ctid = ANY (ARRAY(SELECT ctid FROM delivered_bodies WHERE delivered_at < $1 LIMIT $2))
          AND delivered_at < $1";

    async fn purge_reports(
        store: &Store<Self>,
        before: chrono::DateTime<chrono::Utc>,
        limit: u32,
        max_items: u32,
    ) -> Result<(u64, u64), StoreError> {
        // Its per-source rollup rows are locked in no particular order, so a delivery
        // naming two of those sources may deadlock with it; PostgreSQL aborts one, and
        // the batch (one statement, rolled back whole) simply runs again.
        let retryable = |e: &sqlx::Error, attempt| run_again("retention batch", e, attempt);
        let (reports, items): (i64, i64) = retry(
            MAX_ATTEMPTS,
            |_| Duration::ZERO,
            retryable,
            || async {
                Ok::<_, sqlx::Error>(send!(
                    store,
                    sqlx::query_as(PURGE_REPORTS_SQL)
                        .bind(before)
                        .bind(i64::from(limit))
                        .bind(i64::from(max_items)),
                    fetch_one
                ))
            },
        )
        .await?;
        Ok((reports as u64, items as u64))
    }

    /// Runs [`RECORD_SQL`], again from the start (without a pause) when PostgreSQL
    /// aborted it for a deadlock or a serialization failure, up to [`MAX_ATTEMPTS`] times.
    async fn record_report(
        store: &Store<Self>,
        report: &NewReport,
        options: RecordOptions,
    ) -> Result<RecordedReport, StoreError> {
        let retryable = |e: &TryError, attempt| matches!(e, TryError::Sql(e) if run_again("revocation transaction", e, attempt));
        let recorded = retry(
            MAX_ATTEMPTS,
            |_| Duration::ZERO,
            retryable,
            || try_record(store, report, options),
        )
        .await;
        match recorded {
            Ok(Some(recorded)) => Ok(recorded),
            // The body was recorded before: answer from that report.
            Ok(None) => {
                let rows: Vec<(i64, Vec<u8>, String)> = send!(
                    store,
                    sqlx::query_as(DELIVERED_BODY_SQL)
                        .bind(&report.scanner)
                        .bind(report.body_sha256.as_slice()),
                    fetch_all
                );
                duplicate_answer(report, &rows)
            }
            Err(TryError::Store(e)) => Err(e),
            // 57014: cancelled by the `statement_timeout` set from the deadline.
            Err(TryError::Sql(sqlx::Error::Database(db)))
                if db.code().as_deref() == Some("57014") =>
            {
                Err(StoreError::DeadlineExceeded)
            }
            Err(TryError::Sql(e)) => Err(e.into()),
        }
    }
}

/// `BEGIN`, and with a budget the `SET LOCAL statement_timeout` that makes PostgreSQL give
/// up at it, as one simple query (one round trip).
pub(super) fn begin_sql(budget: Option<Duration>) -> String {
    match budget {
        Some(b) => format!(
            "BEGIN; SET LOCAL statement_timeout = {}",
            b.as_millis().max(1)
        ),
        None => "BEGIN".to_owned(),
    }
}

/// Why one attempt failed: a statement (retried when PostgreSQL aborted it for a
/// deadlock), or the deadline (not retried).
pub(super) enum TryError {
    Sql(sqlx::Error),
    Store(StoreError),
}

impl From<sqlx::Error> for TryError {
    fn from(e: sqlx::Error) -> Self {
        TryError::Sql(e)
    }
}

/// [`CALL_SQL`] up to its arguments (behind a pooler they follow as literals:
/// `pooled.rs`).
macro_rules! call_select {
    () => {
        "SELECT r_report_id AS report_id, r_fresh AS fresh, r_hash AS hash,
        r_outcome AS outcome
    FROM revoker_record_delivery"
    };
}
pub(super) const CALL_SELECT: &str = call_select!();

/// How every delivery runs [`RECORD_SQL`]: as the body of the server-side function
/// `revoker_record_delivery` (migration 0012), whose plan PL/pgSQL keeps for the server
/// session. Behind a transaction-mode pooler statements are unnamed, so the 15-CTE text
/// would be parsed and planned for every delivery; this call is short.
pub(super) const CALL_SQL: &str = concat!(
    call_select!(),
    "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
);

/// [`RECORD_SQL`]'s parameters for one report: its candidates as parallel arrays.
pub(super) struct RecordArgs<'r> {
    pub(super) report: &'r NewReport,
    pub(super) positions: Vec<i32>,
    pub(super) hashes: Vec<&'r [u8]>,
    pub(super) types: Vec<&'r str>,
    pub(super) sources: Vec<&'r str>,
    pub(super) urls: Vec<&'r str>,
    /// Empty unless a token was found inside an item (the rest are NULL then).
    pub(super) found_in: Vec<Option<&'r str>>,
}

impl<'r> RecordArgs<'r> {
    fn new(report: &'r NewReport) -> Self {
        let c = &report.candidates;
        // Stored as they come (`report_item_sets`), in position order: the recent reports'
        // statement reads a set's first 20 elements as its first 20 items (`stats.rs`).
        debug_assert!(c.windows(2).all(|w| w[0].position < w[1].position));
        RecordArgs {
            report,
            positions: c.iter().map(|c| c.position as i32).collect(),
            hashes: c.iter().map(|c| c.hash.as_bytes().as_slice()).collect(),
            types: c.iter().map(|c| c.token_type.as_str()).collect(),
            sources: c.iter().map(|c| stored_source(&c.source)).collect(),
            urls: c.iter().map(|c| c.url.as_str()).collect(),
            found_in: if c.iter().any(|c| c.found_in.is_some()) {
                c.iter().map(|c| c.found_in.as_deref()).collect()
            } else {
                Vec::new()
            },
        }
    }

    /// Once per body: a claim older than this is taken over.
    pub(super) fn cutoff(&self) -> chrono::DateTime<chrono::Utc> {
        self.report.received_at
            - chrono::TimeDelta::from_std(ONCE_PER_BODY_WINDOW).expect("a week is a TimeDelta")
    }

    /// `sql` ([`CALL_SQL`], or [`RECORD_SQL`] itself, maybe after `EXPLAIN …`) with the
    /// parameters bound.
    pub(super) fn query<'q>(
        &'q self,
        sql: &'q str,
        once_per_body: bool,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        let report = self.report;
        let cutoff = self.cutoff();
        sqlx::query(sql)
            .bind(&self.positions)
            .bind(&self.hashes)
            .bind(&self.types)
            .bind(&self.sources)
            .bind(&self.urls)
            .bind(report.received_at)
            .bind(&report.scanner)
            .bind(&report.key_id)
            .bind(report.body_sha256.as_slice())
            .bind(report.item_count as i32)
            .bind(report.not_ours as i32)
            .bind(once_per_body)
            .bind(cutoff)
            .bind(&self.found_in)
    }
}

/// For `benches/statement.rs`: [`RECORD_SQL`] itself (the body of the function a
/// delivery calls, with the same parameters, once per body) for `report` on `conn`,
/// after `prefix` (empty, or `EXPLAIN (…)`, which cannot see inside the function),
/// answering its rows.
#[doc(hidden)]
pub async fn run_record_statement(
    conn: &mut sqlx::PgConnection,
    report: &NewReport,
    prefix: &str,
) -> Result<Vec<sqlx::postgres::PgRow>, sqlx::Error> {
    let sql = format!("{prefix}{RECORD_SQL}");
    let args = RecordArgs::new(report);
    args.query(&sql, true).fetch_all(conn).await
}

/// The whole delivery in ONE statement (atomic on its own, one round trip): the
/// report id comes from the sequence first, so the revoking UPDATE can reference it
/// and the report row can be inserted with its final counts. With a deadline, the
/// statement runs in a transaction whose `statement_timeout` is the budget left.
/// `None`: the body was recorded before and nothing was written.
async fn try_record(
    store: &Store<Postgres>,
    report: &NewReport,
    options: RecordOptions,
) -> Result<Option<RecordedReport>, TryError> {
    let args = RecordArgs::new(report);
    let rows = match options.deadline {
        // Behind a transaction-mode pooler: one simple query, then COMMIT.
        _ if store.pooled => {
            super::pooled::record(store, &args, options.once_per_body, options.deadline).await?
        }
        None => {
            store.statements.add(1);
            let query = args.query(CALL_SQL, options.once_per_body);
            query.fetch_all(&store.pool).await?
        }
        Some(deadline) => {
            // The budget is what is left once the pool gives a connection, and then one
            // round trip for both (a simple query may hold several statements).
            let mut conn = store.pool.acquire().await?;
            let budget = database_budget(Some(deadline))
                .map_err(TryError::Store)?
                .expect("a deadline gives a budget");
            store.statements.add(1);
            let mut tx = sqlx::Connection::begin_with(&mut *conn, begin_sql(Some(budget))).await?;
            let query = args.query(CALL_SQL, options.once_per_body);
            let rows = send_in!(store, tx, query, fetch_all);
            store.statements.add(1);
            tx.commit().await?;
            rows
        }
    };
    let mut report_id = None;
    let mut fresh = true;
    let mut by_hash: HashMap<TokenHash, Outcome> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let row = OutcomeRow::from_row(row)?;
        report_id = Some(row.report_id);
        fresh = row.fresh;
        let hash = TokenHash(row.hash);
        let outcome = Outcome::parse(row.outcome)
            .ok_or_else(|| sqlx::Error::Decode(format!("outcome {:?}", row.outcome).into()))?;
        by_hash.insert(hash, outcome);
    }
    let report_id =
        report_id.ok_or_else(|| sqlx::Error::Decode("no outcome rows returned".into()))?;
    if !fresh {
        return Ok(None);
    }
    let (outcomes, counts) = outcomes_for(report, &by_hash).map_err(TryError::Store)?;
    let tokens_revoked = by_hash
        .values()
        .filter(|o| matches!(o, Outcome::Revoked | Outcome::Expired))
        .count() as u32;
    Ok(Some(RecordedReport {
        report_id,
        duplicate: false,
        tokens_revoked,
        outcomes,
        counts,
        unrecorded: Vec::new(),
    }))
}
