//! PostgreSQL backend, for several receiver instances on one database.
//!
//! A whole delivery is ONE statement (data-modifying CTEs, atomic without an explicit
//! transaction, one round trip): it takes the report id from the sequence, flips every
//! live candidate with a single `UPDATE … FROM unnest($2::bytea[])`, classifies every
//! candidate, and inserts the report (with its counts), the item rows and one owner
//! notification per flipped token (the outbox). All sub-statements share one snapshot,
//! so the `tokens` read in the outer `SELECT` sees the rows as they were before this
//! statement: a row that exists but was not flipped was already revoked. When two
//! deliveries race on one token, the second `UPDATE` waits for the first to commit,
//! re-checks `revoked_at IS NULL`, skips the row, and reports `already_revoked`: exactly
//! one flips it (and queues its one notification).
//!
//! The `UPDATE` joins the candidates sorted by hash, so with the index lookups the
//! planner picks for a large table (and the same physical scan order for a small one)
//! concurrent deliveries lock shared rows in the same order and queue rather than
//! deadlock. That is a property of the plan, not a guarantee: a statement PostgreSQL
//! still aborts (deadlock or serialization failure) is retried by `record_report` from
//! the start (it rolled back, so nothing of the failed attempt remains). An explicit
//! `SELECT … ORDER BY hash FOR UPDATE` first would guarantee the order but costs a
//! second write per row: +5 ms at 1,000 tokens in the benchmark.

use std::collections::HashMap;
use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};

use super::*;

/// Attempts for a transaction aborted by a deadlock or serialization failure.
const MAX_ATTEMPTS: u32 = 5;

pub struct PostgresStore {
    pool: PgPool,
    statements: StatementCounter,
}

/// Deadlock (40P01) or serialization failure (40001): safe to retry the transaction.
fn is_retryable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("40P01" | "40001")),
        _ => false,
    }
}

/// One delivery in one statement. All sub-statements share one snapshot: the `tokens`
/// read in `outcome` sees rows as they were before `flipped` ran, so a row that exists
/// but was not flipped was already revoked. Foreign keys are checked at the end of the
/// statement, when the report row exists.
const RECORD_SQL: &str = "
WITH rid AS (
    SELECT nextval(pg_get_serial_sequence('reports', 'id')) AS id
), item AS (
    SELECT * FROM unnest($1::int4[], $2::bytea[], $3::text[], $4::text[], $5::text[])
        AS u(position, hash, token_type, source, url)
), input AS (
    SELECT DISTINCT hash FROM item
), flipped AS (
    -- Rows are visited, and so locked, in hash order: deliveries naming the same
    -- tokens queue for them instead of locking them in different orders and
    -- deadlocking.
    UPDATE tokens t SET revoked_at = $6, revoked_by = (SELECT id FROM rid)
    FROM (SELECT hash FROM input ORDER BY hash) l
    WHERE t.hash = l.hash AND t.revoked_at IS NULL
    RETURNING t.hash, t.expires_at <= $6 AS was_expired, t.owner
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
), items AS (
    INSERT INTO report_items (report_id, position, token_hash, token_type, source, url, outcome)
    SELECT (SELECT id FROM rid), item.position, item.hash, item.token_type, item.source,
           item.url, o.outcome
    FROM item JOIN outcome o USING (hash)
), first_item AS (
    -- Where the delivery first names each token (lowest position): what its owner is told.
    SELECT DISTINCT ON (hash) hash, url, source FROM item ORDER BY hash, position
), notified AS (
    -- One owner notification per flipped token (the outbox), in this same statement: it
    -- exists exactly when the revocation committed, and a token flips once.
    INSERT INTO notifications (token_hash, report_id, owner, scanner, url, source,
                               revoked_at, expired, next_attempt_at)
    SELECT f.hash, (SELECT id FROM rid), f.owner, $7, fi.url, fi.source, $6, f.was_expired, $6
    FROM flipped f JOIN first_item fi USING (hash)
)
SELECT (SELECT id FROM rid), hash, outcome FROM outcome";

/// A notification row, in the order `notification_from` decodes (`attempts` widened to
/// the 64-bit integer it decodes).
const NOTIFICATION_COLUMNS: &str = "id, token_hash, report_id, owner, scanner, url, source, \
    revoked_at, expired, status, attempts::int8, next_attempt_at, last_error, delivered_at, \
    locked_until";

/// Leases the due, unleased pending rows, oldest due first, in one statement. `SKIP
/// LOCKED` passes over rows another claimer has locked and not yet committed; a row it
/// has committed is re-checked against the new version (READ COMMITTED re-evaluates the
/// `WHERE` of a locked row), whose lease now excludes it. So no row is claimed twice.
fn claim_sql() -> String {
    format!(
        "UPDATE notifications SET locked_until = $2, attempts = attempts + 1
         WHERE id IN (
             SELECT id FROM notifications
             WHERE status = 'pending' AND next_attempt_at <= $1
               AND (locked_until IS NULL OR locked_until <= $1)
             ORDER BY next_attempt_at, id
             LIMIT $3
             FOR UPDATE SKIP LOCKED)
         RETURNING {NOTIFICATION_COLUMNS}"
    )
}

fn notification(r: &sqlx::postgres::PgRow) -> Result<Notification, StoreError> {
    notification_from(r, Ok::<DateTime<Utc>, StoreError>)
}

/// An `integer` count column as `u32`; a negative value is corrupt data.
fn count_at(r: &sqlx::postgres::PgRow, i: usize) -> Result<u32, StoreError> {
    let v: i32 = r.try_get(i)?;
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative count {v}")))
}

// Names are ordered with COLLATE "C" (byte order), like SQLite's BINARY collation, so both
// backends list them identically whatever the database's locale.

const STATS_BY_SCANNER_SQL: &str = r#"
SELECT scanner, count(*), sum(item_count), sum(revoked), sum(already_revoked),
       sum(expired), sum(unknown), sum(not_ours)
FROM reports
GROUP BY scanner
ORDER BY scanner COLLATE "C""#;

const STATS_BY_SOURCE_SQL: &str = r#"
SELECT source, count(*) AS items,
       count(*) FILTER (WHERE outcome = 'revoked'),
       count(*) FILTER (WHERE outcome = 'already_revoked'),
       count(*) FILTER (WHERE outcome = 'expired'),
       count(*) FILTER (WHERE outcome = 'unknown')
FROM report_items
GROUP BY source
ORDER BY items DESC, source COLLATE "C"
LIMIT 20"#;

const STATS_DAILY_SQL: &str = "
SELECT (received_at AT TIME ZONE 'UTC')::date AS day, count(*), sum(item_count),
       sum(revoked), sum(already_revoked), sum(expired), sum(unknown), sum(not_ours)
FROM reports
WHERE received_at >= $1
GROUP BY day
ORDER BY day";

/// Ages in whole milliseconds, each timestamp floored to the millisecond first, exactly as
/// the SQLite backend stores them, so both backends give identical ages for the same
/// instants. `percentile_disc` is the nearest-rank percentile (rank ceil(p·n)); NULL when
/// there are no rows.
const STATS_AGES_SQL: &str = "
WITH ages AS (
    SELECT (floor(extract(epoch FROM revoked_at) * 1000)
            - floor(extract(epoch FROM created_at) * 1000))::int8 AS ms
    FROM tokens
    WHERE revoked_by IS NOT NULL AND revoked_at IS NOT NULL
)
SELECT count(*),
       percentile_disc(0.5) WITHIN GROUP (ORDER BY ms),
       percentile_disc(0.95) WITHIN GROUP (ORDER BY ms)
FROM ages";

/// The last 20 reports, each with its first 20 items by position (NULL item columns for a
/// report without items).
const STATS_RECENT_SQL: &str = "
WITH r AS (
    SELECT id, received_at, scanner, key_id, item_count,
           revoked, already_revoked, expired, unknown, not_ours
    FROM reports ORDER BY id DESC LIMIT 20
)
SELECT r.id, r.received_at, r.scanner, r.key_id, r.item_count,
       r.revoked, r.already_revoked, r.expired, r.unknown, r.not_ours,
       i.token_hash, i.outcome, i.source, i.url
FROM r
LEFT JOIN LATERAL (
    SELECT position, token_hash, outcome, source, url
    FROM report_items
    WHERE report_id = r.id
    ORDER BY position
    LIMIT 20
) i ON true
ORDER BY r.id DESC, i.position";

impl PostgresStore {
    pub async fn connect(url: &str, settings: &PoolSettings) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?.application_name("revoker");
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options)
            .await?;
        Ok(PostgresStore {
            pool,
            statements: StatementCounter::default(),
        })
    }

    /// The whole delivery in ONE statement (atomic on its own, one round trip): the
    /// report id comes from the sequence first, so the revoking UPDATE can reference it
    /// and the report row can be inserted with its final counts.
    async fn try_record(&self, report: &NewReport) -> Result<RecordedReport, sqlx::Error> {
        let n = report.candidates.len();
        let mut positions = Vec::with_capacity(n);
        let mut hashes: Vec<&[u8]> = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        let mut sources = Vec::with_capacity(n);
        let mut urls = Vec::with_capacity(n);
        for c in &report.candidates {
            positions.push(c.position as i32);
            hashes.push(c.hash.as_bytes().as_slice());
            types.push(c.token_type.as_str());
            sources.push(c.source.as_str());
            urls.push(c.url.as_str());
        }
        self.statements.add(1);
        let rows = sqlx::query(RECORD_SQL)
            .bind(&positions)
            .bind(&hashes)
            .bind(&types)
            .bind(&sources)
            .bind(&urls)
            .bind(report.received_at)
            .bind(&report.scanner)
            .bind(&report.key_id)
            .bind(report.body_sha256.as_slice())
            .bind(report.item_count as i32)
            .bind(report.not_ours as i32)
            .fetch_all(&self.pool)
            .await?;
        let mut report_id = None;
        let mut by_hash: HashMap<TokenHash, Outcome> = HashMap::with_capacity(rows.len());
        for row in &rows {
            report_id = Some(row.try_get::<i64, _>(0)?);
            let hash = TokenHash::from_slice(row.try_get::<&[u8], _>(1)?)
                .ok_or_else(|| sqlx::Error::Decode("hash is not 32 bytes".into()))?;
            let outcome: &str = row.try_get(2)?;
            let outcome = Outcome::parse(outcome)
                .ok_or_else(|| sqlx::Error::Decode(format!("outcome {outcome:?}").into()))?;
            by_hash.insert(hash, outcome);
        }
        let report_id =
            report_id.ok_or_else(|| sqlx::Error::Decode("no outcome rows returned".into()))?;
        let (outcomes, counts) = outcomes_for(report, &by_hash)
            .map_err(|e| sqlx::Error::Decode(e.to_string().into()))?;
        let tokens_revoked = by_hash
            .values()
            .filter(|o| matches!(o, Outcome::Revoked | Outcome::Expired))
            .count() as u32;
        Ok(RecordedReport {
            report_id,
            tokens_revoked,
            outcomes,
            counts,
        })
    }
}

#[async_trait]
impl RevocationStore for PostgresStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.statements.add(1);
        let read_only: bool = sqlx::query_scalar(
            "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only')::bool",
        )
        .fetch_one(&self.pool)
        .await?;
        if read_only {
            return Err(StoreError::ReadOnly);
        }
        Ok(())
    }

    async fn insert_token(&self, token: &NewToken) -> Result<(), StoreError> {
        self.statements.add(1);
        sqlx::query(
            "INSERT INTO tokens (hash, owner, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(token.hash.as_bytes().as_slice())
        .bind(&token.owner)
        .bind(token.created_at)
        .bind(token.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn insert_tokens(&self, tokens: &[NewToken]) -> Result<(), StoreError> {
        if tokens.is_empty() {
            return Ok(());
        }
        let hashes: Vec<&[u8]> = tokens
            .iter()
            .map(|t| t.hash.as_bytes().as_slice())
            .collect();
        let owners: Vec<&str> = tokens.iter().map(|t| t.owner.as_str()).collect();
        let created: Vec<DateTime<Utc>> = tokens.iter().map(|t| t.created_at).collect();
        let expires: Vec<DateTime<Utc>> = tokens.iter().map(|t| t.expires_at).collect();
        self.statements.add(1);
        sqlx::query(
            "INSERT INTO tokens (hash, owner, created_at, expires_at)
             SELECT * FROM unnest($1::bytea[], $2::text[], $3::timestamptz[], $4::timestamptz[])",
        )
        .bind(&hashes)
        .bind(&owners)
        .bind(&created)
        .bind(&expires)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn record_report(&self, report: &NewReport) -> Result<RecordedReport, StoreError> {
        let mut attempt = 1;
        loop {
            match self.try_record(report).await {
                Ok(recorded) => return Ok(recorded),
                Err(e) if is_retryable(&e) && attempt < MAX_ATTEMPTS => {
                    tracing::warn!(attempt, error = %e, "revocation transaction aborted, retrying");
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn token(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        self.statements.add(1);
        let row = sqlx::query(
            "SELECT owner, created_at, expires_at, revoked_at, revoked_by FROM tokens WHERE hash = $1",
        )
        .bind(hash.as_bytes().as_slice())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(TokenRecord {
                hash: *hash,
                owner: r.try_get(0)?,
                created_at: r.try_get(1)?,
                expires_at: r.try_get(2)?,
                revoked_at: r.try_get(3)?,
                revoked_by: r.try_get(4)?,
            })
        })
        .transpose()
    }

    async fn report(&self, id: i64) -> Result<Option<ReportRecord>, StoreError> {
        self.statements.add(1);
        let row = sqlx::query(
            "SELECT id, scanner, key_id, received_at, body_sha256, item_count,
                    revoked, already_revoked, expired, unknown, not_ours
             FROM reports WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(ReportRecord {
                id: r.try_get(0)?,
                scanner: r.try_get(1)?,
                key_id: r.try_get(2)?,
                received_at: r.try_get(3)?,
                body_sha256: r.try_get(4)?,
                item_count: count_at(&r, 5)?,
                counts: OutcomeCounts {
                    revoked: count_at(&r, 6)?,
                    already_revoked: count_at(&r, 7)?,
                    expired: count_at(&r, 8)?,
                    unknown: count_at(&r, 9)?,
                    not_ours: count_at(&r, 10)?,
                },
            })
        })
        .transpose()
    }

    async fn report_items(&self, report_id: i64) -> Result<Vec<ReportItemRecord>, StoreError> {
        self.statements.add(1);
        let rows = sqlx::query(
            "SELECT position, token_hash, token_type, source, url, outcome
             FROM report_items WHERE report_id = $1 ORDER BY position",
        )
        .bind(report_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let outcome: String = r.try_get(5)?;
                Ok(ReportItemRecord {
                    position: r.try_get::<i32, _>(0)? as u32,
                    token_hash: hash_from(r.try_get::<&[u8], _>(1)?)?,
                    token_type: r.try_get(2)?,
                    source: r.try_get(3)?,
                    url: r.try_get(4)?,
                    outcome: parse_outcome(&outcome)?,
                })
            })
            .collect()
    }

    async fn count_reports(&self) -> Result<i64, StoreError> {
        self.statements.add(1);
        Ok(sqlx::query_scalar("SELECT count(*) FROM reports")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn preview(
        &self,
        hashes: &[TokenHash],
        now: DateTime<Utc>,
    ) -> Result<HashMap<TokenHash, Outcome>, StoreError> {
        let distinct = distinct_hashes(hashes.iter().copied());
        if distinct.is_empty() {
            return Ok(HashMap::new());
        }
        let bytes: Vec<&[u8]> = distinct.iter().map(|h| h.as_bytes().as_slice()).collect();
        self.statements.add(1);
        let rows = sqlx::query(
            "SELECT hash, revoked_at IS NOT NULL AS revoked, expires_at <= $2 AS expired
             FROM tokens WHERE hash = ANY($1::bytea[])",
        )
        .bind(&bytes)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        preview_map(&rows, distinct)
    }

    async fn stats(&self, since: DateTime<Utc>) -> Result<Stats, StoreError> {
        // One read-only snapshot for every section (READ COMMITTED would take a new
        // snapshot per statement).
        self.statements.add(1);
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;

        self.statements.add(1);
        let rows = sqlx::query(STATS_BY_SCANNER_SQL)
            .fetch_all(&mut *tx)
            .await?;
        let by_scanner = rows
            .iter()
            .map(scanner_totals)
            .collect::<Result<Vec<_>, _>>()?;
        // The all-time totals are the sum of the per-scanner rows (same snapshot, and
        // they always add up).
        let totals = sum_totals(by_scanner.iter().map(|s| &s.totals));

        self.statements.add(1);
        let rows = sqlx::query(STATS_BY_SOURCE_SQL).fetch_all(&mut *tx).await?;
        let by_source = rows
            .iter()
            .map(source_totals)
            .collect::<Result<Vec<_>, _>>()?;

        self.statements.add(1);
        let rows = sqlx::query(STATS_DAILY_SQL)
            .bind(since)
            .fetch_all(&mut *tx)
            .await?;
        let daily = rows
            .iter()
            .map(|r| {
                Ok(DayTotals {
                    day: r.try_get(0)?,
                    totals: totals_at(r, 1)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;

        self.statements.add(1);
        let row = sqlx::query(STATS_AGES_SQL).fetch_one(&mut *tx).await?;
        let revocation_ages = RevocationAges {
            count: row.try_get(0)?,
            median_seconds: row.try_get::<Option<i64>, _>(1)?.map(millis_to_seconds),
            p95_seconds: row.try_get::<Option<i64>, _>(2)?.map(millis_to_seconds),
        };

        self.statements.add(1);
        let rows = sqlx::query(STATS_RECENT_SQL).fetch_all(&mut *tx).await?;
        let mut recent: Vec<RecentReport> = Vec::new();
        for r in &rows {
            push_recent_row(&mut recent, r, |r| {
                Ok(RecentReport {
                    id: r.try_get(0)?,
                    received_at: r.try_get(1)?,
                    scanner: r.try_get(2)?,
                    key_id: r.try_get(3)?,
                    item_count: count_at(r, 4)?,
                    counts: OutcomeCounts {
                        revoked: count_at(r, 5)?,
                        already_revoked: count_at(r, 6)?,
                        expired: count_at(r, 7)?,
                        unknown: count_at(r, 8)?,
                        not_ours: count_at(r, 9)?,
                    },
                    items: Vec::new(),
                })
            })?;
        }

        self.statements.add(1);
        tx.commit().await?;

        Ok(Stats {
            totals,
            by_scanner,
            by_source,
            daily,
            revocation_ages,
            recent,
        })
    }

    async fn claim_notifications(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.statements.add(1);
        let rows = sqlx::query(&claim_sql())
            .bind(now)
            .bind(lease_end(now, lease))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        let mut claimed = rows
            .iter()
            .map(notification)
            .collect::<Result<Vec<_>, _>>()?;
        sort_claimed(&mut claimed);
        Ok(claimed)
    }

    async fn finish_notification(
        &self,
        claimed: &Notification,
        result: &AttemptResult,
    ) -> Result<(), StoreError> {
        // A delivered notification never goes back: a worker whose lease ran out and
        // was overtaken cannot undo the other's success. A success always counts.
        // Anything else needs the row still held by this claim (its exact lease end).
        let id = claimed.id;
        let query = match result {
            AttemptResult::Delivered { at } => sqlx::query(
                "UPDATE notifications
                 SET status = 'delivered', delivered_at = $2, locked_until = NULL, last_error = NULL
                 WHERE id = $1 AND status <> 'delivered'",
            )
            .bind(id)
            .bind(*at),
            AttemptResult::Retry {
                error,
                next_attempt_at,
            } => sqlx::query(
                "UPDATE notifications
                 SET next_attempt_at = $2, last_error = $3, locked_until = NULL
                 WHERE id = $1 AND status = 'pending' AND locked_until = $4",
            )
            .bind(id)
            .bind(*next_attempt_at)
            .bind(error.as_str())
            .bind(claimed.locked_until),
            AttemptResult::Failed { error } => sqlx::query(
                "UPDATE notifications
                 SET status = 'failed', last_error = $2, locked_until = NULL
                 WHERE id = $1 AND status = 'pending' AND locked_until = $3",
            )
            .bind(id)
            .bind(error.as_str())
            .bind(claimed.locked_until),
        };
        self.statements.add(1);
        query.execute(&self.pool).await?;
        Ok(())
    }

    async fn notification_counts(&self) -> Result<NotificationCounts, StoreError> {
        self.statements.add(1);
        let rows = sqlx::query("SELECT status, count(*) FROM notifications GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        notification_counts_from(&rows)
    }

    async fn outstanding_notifications(&self) -> Result<(i64, i64), StoreError> {
        self.statements.add(1);
        Ok(sqlx::query_as(
            "SELECT (SELECT count(*) FROM notifications WHERE status = 'pending'),
                    (SELECT count(*) FROM notifications WHERE status = 'failed')",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    async fn list_notifications(
        &self,
        status: Option<NotificationStatus>,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        self.statements.add(1);
        let rows = sqlx::query(&format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notifications
             WHERE $1::text IS NULL OR status = $1 ORDER BY id DESC LIMIT $2"
        ))
        .bind(status.map(NotificationStatus::as_str))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(notification).collect()
    }

    async fn requeue_notification(
        &self,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<Requeue, StoreError> {
        // One statement: the row as it was (NULL status: no row) and whether it changed.
        self.statements.add(1);
        let row = sqlx::query(
            "WITH before AS (
                 SELECT status, locked_until FROM notifications WHERE id = $1
             ), requeued AS (
                 UPDATE notifications
                 SET status = 'pending', attempts = 0, next_attempt_at = $2, last_error = NULL,
                     locked_until = NULL
                 WHERE id = $1 AND status <> 'delivered'
                   AND (locked_until IS NULL OR locked_until <= $2)
                 RETURNING id
             )
             SELECT (SELECT status FROM before), EXISTS (SELECT 1 FROM requeued),
                    (SELECT locked_until FROM before)",
        )
        .bind(id)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        let status: Option<String> = row.try_get(0)?;
        let requeued: bool = row.try_get(1)?;
        let locked_until: Option<DateTime<Utc>> = row.try_get(2)?;
        Ok(match (status.as_deref(), requeued) {
            (_, true) => Requeue::Requeued,
            (None, false) => Requeue::NotFound,
            (Some("delivered"), false) => Requeue::AlreadyDelivered,
            (Some(_), false) => Requeue::InFlight(locked_until.unwrap_or(now)),
        })
    }

    async fn requeue_failed(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.statements.add(1);
        let done = sqlx::query(
            "UPDATE notifications
             SET status = 'pending', attempts = 0, next_attempt_at = $1, last_error = NULL,
                 locked_until = NULL
             WHERE status = 'failed'",
        )
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    fn statements(&self) -> u64 {
        self.statements.get()
    }
}
