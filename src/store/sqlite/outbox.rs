//! SQLite: the notification (outbox) statements, and `requeue_notification`.
//!
//! Rows are queued by `record_report` (see `record.rs`). A claim leases the due, unleased
//! pending rows in one statement; SQLite runs one writer at a time, so two claimers never
//! pick the same row. Timestamps, the lease end included, are epoch milliseconds, so a
//! claim's `locked_until` compares exactly with the stored one. "Now" is the host's
//! clock ([`Clock::Database`]): a SQLite file has one host, so one clock.

use chrono::{DateTime, Utc};
use sqlx::Sqlite;

use crate::store::backend::{claim_sql, notification_columns, Backend, Outbox, Store};
use crate::store::{Clock, Requeue, StoreError};

impl Outbox for Sqlite {
    /// The due, unleased pending rows, oldest due first.
    const CLAIM_SQL: &'static str = claim_sql!("$1", "$1 + $2", "");

    const DELIVERED_SQL: &'static str = "UPDATE notifications
                 SET status = 'delivered', delivered_at = $2, locked_until = NULL, last_error = NULL
                 WHERE id = $1 AND status <> 'delivered'";

    const RETRY_SQL: &'static str = "UPDATE notifications
                 SET next_attempt_at = $2 + $3, last_error = $4, locked_until = NULL
                 WHERE id = $1 AND status = 'pending' AND locked_until = $5";

    const REQUEUE_FAILED_SQL: &'static str = "UPDATE notifications
             SET status = 'pending', attempts = 0, next_attempt_at = $1, last_error = NULL,
                 locked_until = NULL
             WHERE status = 'failed'";

    /// [`Clock::Database`] is the host's clock: every process on a SQLite file runs on
    /// the one host that has the file, so it is the database's clock too.
    fn clock(clock: Clock) -> Option<DateTime<Utc>> {
        Some(match clock {
            Clock::Database => Utc::now(),
            Clock::At(at) => at,
        })
    }

    const BY_PUBLIC_ID_SQL: &'static str = concat!(
        "SELECT ",
        notification_columns!(),
        " FROM notifications WHERE public_id = $1"
    );

    /// Two statements: the re-queue itself, and only when it changed nothing, a look at
    /// why.
    async fn requeue_notification(
        store: &Store<Self>,
        id: i64,
        clock: Clock,
    ) -> Result<Requeue, StoreError> {
        let now = Self::clock(clock).unwrap_or_else(Utc::now);
        store.statements.add(1);
        let requeued = sqlx::query(
            "UPDATE notifications
                 SET status = 'pending', attempts = 0, next_attempt_at = ?2, last_error = NULL,
                     locked_until = NULL
                 WHERE id = ?1 AND status <> 'delivered'
                   AND (locked_until IS NULL OR locked_until <= ?2)",
        )
        .bind(id)
        .bind(Sqlite::encode_time(now))
        .execute(&store.pool)
        .await?
        .rows_affected();
        if requeued > 0 {
            return Ok(Requeue::Requeued);
        }
        // Nothing changed: absent, delivered (which stays delivered), or being sent.
        store.statements.add(1);
        let found: Option<(String, Option<i64>)> =
            sqlx::query_as("SELECT status, locked_until FROM notifications WHERE id = ?1")
                .bind(id)
                .fetch_optional(&store.pool)
                .await?;
        Ok(match found {
            None => Requeue::NotFound,
            Some((status, _)) if status == "delivered" => Requeue::AlreadyDelivered,
            Some((_, locked_until)) => Requeue::InFlight(match locked_until {
                Some(ms) => Sqlite::decode_time(ms)?,
                None => now,
            }),
        })
    }
}
