//! PostgreSQL: the notification (outbox) statements, and `requeue_notification`.
//!
//! Every time these statements compare or stamp (due times, leases, `delivered_at`) is
//! PostgreSQL's `now()` unless the caller passes an instant ([`Clock::At`], tests):
//! the database's one clock, so instances on hosts with skewed clocks agree on every
//! lease and cannot both send a notification because one thinks a lease has run out.
//!
//! `record_report`'s one statement queues one batch per delivery that flipped a token
//! (see `record.rs`); `expand_batches` turns batches into rows, one per flipped token, in
//! one statement that deletes them (`SKIP LOCKED`: two instances never turn the same
//! batch; a batch another has turned and committed is gone when re-checked). A claim leases
//! the due, unleased pending rows, oldest due first, in one statement. `SKIP LOCKED`
//! passes over rows another claimer has locked and not yet committed; a row it has
//! committed is re-checked against the new version (READ COMMITTED re-evaluates the
//! `WHERE` of a locked row), whose lease now excludes it. So no row is claimed twice.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, Postgres};

use crate::store::backend::{claim_sql, notification_columns, send, Outbox, Store};
use crate::store::{Clock, Requeue, StoreError};

/// The row as it was (NULL status: no row) and whether the re-queue changed it.
#[derive(FromRow)]
struct RequeueRow {
    status: Option<String>,
    requeued: bool,
    locked_until: Option<DateTime<Utc>>,
}

impl Outbox for Postgres {
    const CLAIM_SQL: &'static str = claim_sql!(
        "COALESCE($1::timestamptz, now())",
        "COALESCE($1::timestamptz, now()) + $2::bigint * interval '1 millisecond'",
        "\n                 FOR UPDATE SKIP LOCKED"
    );

    const DELIVERED_SQL: &'static str = "UPDATE notifications
                 SET status = 'delivered', delivered_at = COALESCE($2::timestamptz, now()),
                     locked_until = NULL, last_error = NULL
                 WHERE id = $1 AND status <> 'delivered'";

    const RETRY_SQL: &'static str = "UPDATE notifications
                 SET next_attempt_at = COALESCE($2::timestamptz, now())
                                       + $3::bigint * interval '1 millisecond',
                     last_error = $4, locked_until = NULL
                 WHERE id = $1 AND status = 'pending' AND locked_until = $5";

    const REQUEUE_FAILED_SQL: &'static str = "UPDATE notifications
             SET status = 'pending', attempts = 0,
                 next_attempt_at = COALESCE($1::timestamptz, now()), last_error = NULL,
                 locked_until = NULL
             WHERE status = 'failed'";

    /// [`Clock::Database`] is NULL: the statement reads `now()`, the database's clock
    /// (the start of its transaction), whatever the host's clock says.
    fn clock(clock: Clock) -> Option<DateTime<Utc>> {
        match clock {
            Clock::Database => None,
            Clock::At(at) => Some(at),
        }
    }

    const BY_PUBLIC_ID_SQL: &'static str = concat!(
        "SELECT ",
        notification_columns!(),
        " FROM notifications WHERE public_id = $1::uuid"
    );

    /// One statement: the batches taken (`SKIP LOCKED`: another instance's are left to
    /// it) and deleted, and one notification per token each report flipped, from the
    /// first item naming it (lowest position), as the revoking statement queued them
    /// before migration 0013.
    async fn expand_batches(
        store: &Store<Self>,
        limit: u32,
        max_tokens: u32,
    ) -> Result<u64, StoreError> {
        let batches: i64 = send!(
            store,
            sqlx::query_scalar(
                "WITH taken AS (
                     SELECT report_id, tokens FROM notification_batches
                     ORDER BY report_id LIMIT $1 FOR UPDATE SKIP LOCKED
                 ), batch AS (
                     -- As many as make fewer than $2 notifications before the last.
                     DELETE FROM notification_batches
                     WHERE report_id IN (
                         SELECT report_id FROM (
                             SELECT report_id, tokens,
                                    sum(tokens) OVER (ORDER BY report_id
                                                      ROWS UNBOUNDED PRECEDING) AS running
                             FROM taken
                         ) t
                         WHERE running - tokens < $2)
                     RETURNING report_id
                 ), first_item AS (
                     SELECT DISTINCT ON (i.report_id, i.token_hash)
                            i.report_id, i.token_hash, i.url, i.source, i.outcome
                     FROM report_items i
                     WHERE i.report_id IN (SELECT report_id FROM batch)
                       AND i.outcome IN ('revoked', 'expired')
                     ORDER BY i.report_id, i.token_hash, i.position
                 ), expanded AS (
                     INSERT INTO notifications (token_hash, report_id, owner, scanner, url,
                                                source, revoked_at, expired, next_attempt_at)
                     SELECT f.token_hash, f.report_id, t.owner, r.scanner, f.url, f.source,
                            r.received_at, f.outcome = 'expired', r.received_at
                     FROM first_item f
                     JOIN reports r ON r.id = f.report_id
                     JOIN tokens t ON t.hash = f.token_hash
                     ORDER BY f.report_id, f.token_hash
                 )
                 SELECT count(*) FROM batch",
            )
            .bind(i64::from(limit))
            .bind(i64::from(max_tokens)),
            fetch_one
        );
        Ok(batches as u64)
    }

    /// One statement: the row as it was, and the re-queue.
    async fn requeue_notification(
        store: &Store<Self>,
        id: i64,
        clock: Clock,
    ) -> Result<Requeue, StoreError> {
        let row: RequeueRow = send!(
            store,
            sqlx::query_as(
                "WITH before AS (
                     SELECT status, locked_until FROM notifications WHERE id = $1
                 ), requeued AS (
                     UPDATE notifications
                     SET status = 'pending', attempts = 0,
                         next_attempt_at = COALESCE($2::timestamptz, now()), last_error = NULL,
                         locked_until = NULL
                     WHERE id = $1 AND status <> 'delivered'
                       AND (locked_until IS NULL
                            OR locked_until <= COALESCE($2::timestamptz, now()))
                     RETURNING id
                 )
                 SELECT (SELECT status FROM before) AS status,
                        EXISTS (SELECT 1 FROM requeued) AS requeued,
                        (SELECT locked_until FROM before) AS locked_until",
            )
            .bind(id)
            .bind(Self::clock(clock)),
            fetch_one
        );
        Ok(match (row.status.as_deref(), row.requeued) {
            (_, true) => Requeue::Requeued,
            (None, false) => Requeue::NotFound,
            (Some("delivered"), false) => Requeue::AlreadyDelivered,
            (Some(_), false) => Requeue::InFlight(row.locked_until.unwrap_or_else(Utc::now)),
        })
    }
}
