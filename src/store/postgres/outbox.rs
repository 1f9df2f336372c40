//! PostgreSQL: the notification (outbox) statements, and `requeue_notification`.
//!
//! Rows are queued by `record_report`'s one statement (see `record.rs`). A claim leases
//! the due, unleased pending rows, oldest due first, in one statement. `SKIP LOCKED`
//! passes over rows another claimer has locked and not yet committed; a row it has
//! committed is re-checked against the new version (READ COMMITTED re-evaluates the
//! `WHERE` of a locked row), whose lease now excludes it. So no row is claimed twice.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, Postgres};

use crate::store::backend::{claim_sql, notification_columns, Outbox, Store};
use crate::store::{Requeue, StoreError};

/// The row as it was (NULL status: no row) and whether the re-queue changed it.
#[derive(FromRow)]
struct RequeueRow {
    status: Option<String>,
    requeued: bool,
    locked_until: Option<DateTime<Utc>>,
}

impl Outbox for Postgres {
    const CLAIM_SQL: &'static str = claim_sql!("\n                 FOR UPDATE SKIP LOCKED");

    const BY_PUBLIC_ID_SQL: &'static str = concat!(
        "SELECT ",
        notification_columns!(),
        " FROM notifications WHERE public_id = $1::uuid"
    );

    /// One statement: the row as it was, and the re-queue.
    async fn requeue_notification(
        store: &Store<Self>,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<Requeue, StoreError> {
        store.statements.add(1);
        let row: RequeueRow = sqlx::query_as(
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
                 SELECT (SELECT status FROM before) AS status,
                        EXISTS (SELECT 1 FROM requeued) AS requeued,
                        (SELECT locked_until FROM before) AS locked_until",
        )
        .bind(id)
        .bind(now)
        .fetch_one(&store.pool)
        .await?;
        Ok(match (row.status.as_deref(), row.requeued) {
            (_, true) => Requeue::Requeued,
            (None, false) => Requeue::NotFound,
            (Some("delivered"), false) => Requeue::AlreadyDelivered,
            (Some(_), false) => Requeue::InFlight(row.locked_until.unwrap_or(now)),
        })
    }
}
