//! PostgreSQL: recording a delivery, and `preview`'s statement.
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
use std::time::Duration;

use sqlx::{FromRow, Postgres};

use crate::domain::{Outcome, TokenHash};
use crate::store::backend::{Record, Store};
use crate::store::shared::outcomes_for;
use crate::store::{NewReport, RecordedReport, StoreError};
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
SELECT (SELECT id FROM rid) AS report_id, hash, outcome FROM outcome";

/// A row of [`RECORD_SQL`]'s answer: one per distinct candidate.
#[derive(FromRow)]
struct OutcomeRow<'r> {
    report_id: i64,
    hash: &'r [u8],
    outcome: &'r str,
}

impl Record for Postgres {
    /// `hashes` (`bytea[]`), `now` → `PreviewRow`s of the stored ones.
    const PREVIEW_SQL: &'static str =
        "SELECT hash, revoked_at IS NOT NULL AS revoked, expires_at <= $2 AS expired
             FROM tokens WHERE hash = ANY($1::bytea[])";

    /// Runs [`RECORD_SQL`], again from the start (without a pause) when PostgreSQL
    /// aborted it for a deadlock or a serialization failure, up to [`MAX_ATTEMPTS`] times.
    async fn record_report(
        store: &Store<Self>,
        report: &NewReport,
    ) -> Result<RecordedReport, StoreError> {
        let retryable = |e: &sqlx::Error, attempt: u32| {
            let retry = is_retryable(e);
            if retry {
                tracing::warn!(attempt, error = %e, "revocation transaction aborted, retrying");
            }
            retry
        };
        Ok(retry(
            MAX_ATTEMPTS,
            |_| Duration::ZERO,
            retryable,
            || try_record(store, report),
        )
        .await?)
    }
}

/// The whole delivery in ONE statement (atomic on its own, one round trip): the
/// report id comes from the sequence first, so the revoking UPDATE can reference it
/// and the report row can be inserted with its final counts.
async fn try_record(
    store: &Store<Postgres>,
    report: &NewReport,
) -> Result<RecordedReport, sqlx::Error> {
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
    store.statements.add(1);
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
        .fetch_all(&store.pool)
        .await?;
    let mut report_id = None;
    let mut by_hash: HashMap<TokenHash, Outcome> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let row = OutcomeRow::from_row(row)?;
        report_id = Some(row.report_id);
        let hash = TokenHash::from_slice(row.hash)
            .ok_or_else(|| sqlx::Error::Decode("hash is not 32 bytes".into()))?;
        let outcome = Outcome::parse(row.outcome)
            .ok_or_else(|| sqlx::Error::Decode(format!("outcome {:?}", row.outcome).into()))?;
        by_hash.insert(hash, outcome);
    }
    let report_id =
        report_id.ok_or_else(|| sqlx::Error::Decode("no outcome rows returned".into()))?;
    let (outcomes, counts) =
        outcomes_for(report, &by_hash).map_err(|e| sqlx::Error::Decode(e.to_string().into()))?;
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
