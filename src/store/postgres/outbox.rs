//! PostgreSQL: the notification (outbox) statements, and `requeue_notification`.
//!
//! Every time these statements compare or stamp (due times, leases, `delivered_at`) is
//! PostgreSQL's `now()` unless the caller passes an instant ([`Clock::At`], tests):
//! the database's one clock, so instances on hosts with skewed clocks agree on every
//! lease and cannot both send a notification because one thinks a lease has run out.
//!
//! Rows are queued by `record_report`'s one statement (see `record.rs`). A claim leases
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
