//! SQLite: the notification (outbox) statements, and `requeue_notification`.
//!
//! `record_report` queues one batch per delivery that flipped a token (see `record.rs`);
//! `expand_batches` turns batches into rows, one per flipped token, in the transaction
//! that deletes them. A claim leases the due, unleased
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

    /// One transaction that starts with a write (the batches taken and deleted), so it
    /// holds the write lock throughout, then one notification per token each report
    /// flipped, from the first item naming it (lowest position; SQLite takes the bare
    /// columns of a `min()` aggregate from the row holding the minimum), as the
    /// recording transaction queued them before migration 0012.
    async fn expand_batches(
        store: &Store<Self>,
        limit: u32,
        max_tokens: u32,
    ) -> Result<u64, StoreError> {
        store.statements.add(1);
        let mut tx = store.pool.begin().await?;
        store.statements.add(1);
        let batches: Vec<i64> = sqlx::query_scalar(
            "DELETE FROM notification_batches
             WHERE report_id IN (
                 SELECT report_id FROM (
                     SELECT report_id, tokens,
                            sum(tokens) OVER (ORDER BY report_id ROWS UNBOUNDED PRECEDING)
                                AS running
                     FROM (SELECT report_id, tokens FROM notification_batches
                           ORDER BY report_id LIMIT ?1))
                 WHERE running - tokens < ?2)
             RETURNING report_id",
        )
        .bind(i64::from(limit))
        .bind(i64::from(max_tokens))
        .fetch_all(&mut *tx)
        .await?;
        if batches.is_empty() {
            // Another process turned them meanwhile.
            store.statements.add(1);
            tx.rollback().await?;
            return Ok(0);
        }
        store.statements.add(1);
        let made = sqlx::query(
            "INSERT INTO notifications (token_hash, report_id, owner, scanner, url, source,
                                        revoked_at, expired, next_attempt_at)
             SELECT f.token_hash, f.report_id, t.owner, r.scanner, f.url, f.source,
                    r.received_at, f.outcome = 'expired', r.received_at
             FROM (SELECT report_id, token_hash, url, source, outcome, min(position)
                   FROM report_items
                   WHERE report_id IN (SELECT value FROM json_each(?1))
                     AND outcome IN ('revoked', 'expired')
                   GROUP BY report_id, token_hash) f
             JOIN reports r ON r.id = f.report_id
             JOIN tokens t ON t.hash = f.token_hash
             ORDER BY f.report_id, f.token_hash",
        )
        .bind(format!(
            "[{}]",
            batches
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        store.statements.add(1);
        tx.commit().await?;
        // Appended rows: a page holds about eight with their index entries.
        store.wrote(made as usize / 8);
        Ok(batches.len() as u64)
    }

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
