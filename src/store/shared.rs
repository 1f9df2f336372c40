//! The one implementation of [`RevocationStore`], for a [`Store`] on either backend.
//!
//! What the backends do alike is written here once: token and report reads, `preview`,
//! the `stats` snapshot and the notification outbox. The SQL text comes from the backend
//! (the `…_SQL` constants of [`Backend`] and its supertraits), and so do the operations
//! whose statements differ (`record_report`, `requeue_notification`, the outbox's
//! `expand_batches`, connect, migrate,
//! ping, `insert_tokens`, `import_tokens`, `revoke_imported`), which the trait methods
//! here hand on to it.
//!
//! Invariants:
//! - Every statement is counted in [`Store::statements`] before it is sent, `BEGIN` and
//!   `COMMIT` included; each operation sends the statements its documentation names, no
//!   more (the contract suite and the benchmark check the counts).
//! - `stats` reads all its sections in one transaction, so they describe one snapshot.
//! - A delivered notification never goes back to pending or failed (see
//!   `finish_notification`).
//! - Every outbox time (leases, due times, `delivered_at`) is read from one [`Clock`]
//!   inside the statement that uses it: the database's `now()` on PostgreSQL in
//!   production, so hosts with skewed clocks agree on leases.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, FromRow, IntoArguments, Type};

use super::backend::{expand, send, send_in, Backend, Store};
use super::notification::{EXPAND_ROUNDS, FAILED_SQL, LIST_SQL, NOTIFICATION_OF_TOKEN_SQL};
use super::recording::{canonical_uuid, distinct_hashes, unrecorded_report};
use super::rows::{
    ages_by_format, hash_from, last_reports, preview_map, recent_reports, sum_totals, AgeBucketRow,
    DayRow, HashedTokenRow, ItemRow, NotificationRollup, NotificationRow, OwnerRow, PreviewRow,
    RecentRevocationRow, RecentRow, ReportRow, TokenRow,
};
use super::stats::{
    AGES_SQL, FAILED_NOTIFICATIONS_SQL, LAST_REPORTS_SQL, LONG_PENDING, NOTIFICATION_COUNTS_SQL,
    RECENT_REVOCATIONS_SQL, WAITING_NOTIFICATIONS_SQL,
};
use super::{
    AttemptResult, Clock, ImportToken, ImportedBatch, NewReport, NewToken, Notification,
    NotificationCounts, NotificationStatus, Outcome, Purged, RecordOptions, RecordedReport,
    ReportItemRecord, ReportRecord, Requeue, RevocationStore, ScannerTotals, SourceTotals, Stats,
    StoreError, TokenRecord, TokenStatus,
};
use crate::domain::TokenHash;

// Statements whose text is the same on both backends (sqlx binds `$N` on SQLite too).

/// `hash, owner, created_at, expires_at`.
const INSERT_TOKEN_SQL: &str =
    "INSERT INTO tokens (hash, owner, created_at, expires_at) VALUES ($1, $2, $3, $4)";

/// `hash` → `TokenRow`.
const TOKEN_SQL: &str =
    "SELECT owner, created_at, expires_at, revoked_at, revoked_by, format FROM tokens WHERE hash = $1";

/// `from` (bytes), `limit` → `HashedTokenRow`s with a hash `>= from`, in hash order.
const TOKENS_FROM_SQL: &str =
    "SELECT hash, owner, created_at, expires_at, revoked_at, revoked_by, format
             FROM tokens WHERE hash >= $1 ORDER BY hash LIMIT $2";

/// `owner` (NULL: any), `status` (NULL: any; `live`, `revoked`, `expired`), `now`,
/// `limit` → `HashedTokenRow`s, newest first.
const LIST_TOKENS_SQL: &str =
    "SELECT hash, owner, created_at, expires_at, revoked_at, revoked_by, format
             FROM tokens
             WHERE (CAST($1 AS TEXT) IS NULL OR owner = $1)
               AND (CAST($2 AS TEXT) IS NULL
                    OR ($2 = 'revoked' AND revoked_at IS NOT NULL)
                    OR ($2 = 'live' AND revoked_at IS NULL AND expires_at > $3)
                    OR ($2 = 'expired' AND revoked_at IS NULL AND expires_at <= $3))
             ORDER BY created_at DESC, hash
             LIMIT $4";

/// `id` → `ReportRow`.
const REPORT_SQL: &str = "SELECT id, scanner, key_id, received_at, body_sha256, item_count,
                    revoked, already_revoked, expired, unknown, not_ours
             FROM reports WHERE id = $1";

/// `report_id` → `ItemRow`s, by position.
const REPORT_ITEMS_SQL: &str = "SELECT position, token_hash, token_type, source, url, outcome,
                    found_in
             FROM report_items WHERE report_id = $1 ORDER BY position";

#[async_trait]
impl<B> RevocationStore for Store<B>
where
    B: Backend,
    // What the shared code asks of the sqlx driver: run queries on a connection, bind
    // 64-bit integers, text, bytes and instants (NULL too), and read the column types of
    // the row structs by name (`usize`: by position, for the one- and two-column answers).
    for<'c> &'c mut B::Connection: Executor<'c, Database = B>,
    for<'q> <B as Database>::Arguments<'q>: IntoArguments<'q, B>,
    for<'r> &'r str: ColumnIndex<B::Row>,
    usize: ColumnIndex<B::Row>,
    for<'q> i64: Encode<'q, B> + Decode<'q, B> + Type<B>,
    for<'q> &'q str: Encode<'q, B> + Type<B>,
    for<'q> Option<&'q str>: Encode<'q, B> + Type<B>,
    for<'q> Option<B::Time>: Encode<'q, B> + Type<B>,
    for<'q> &'q [u8]: Encode<'q, B> + Decode<'q, B> + Type<B>,
    for<'r> String: Decode<'r, B> + Type<B>,
    for<'r> Vec<u8>: Decode<'r, B> + Type<B>,
    for<'r> bool: Decode<'r, B> + Type<B>,
{
    async fn migrate(&self) -> Result<(), StoreError> {
        if self.pooled {
            return Err(StoreError::MigrateThroughPooler);
        }
        B::migrate(&self.pool).await
    }

    async fn applied_migrations(&self) -> Result<i64, StoreError> {
        self.statements.add(1);
        // The simple query protocol (no prepared statement, one round trip): this is
        // the check that runs through a connection pooler beside a direct migrate URL.
        let applied = sqlx::raw_sql("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await;
        match applied {
            Ok(row) => Ok(sqlx::Row::try_get::<i64, usize>(&row, 0)?),
            // No table yet: nothing was ever applied. (Anything else is the database's
            // error, and `migrate` will say so.)
            // PostgreSQL 42P01 (undefined_table); SQLite says "no such table".
            Err(e) if super::error::undefined_table(&e) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    fn known_migrations(&self) -> i64 {
        B::known_migrations() as i64
    }

    async fn ping(&self) -> Result<(), StoreError> {
        B::ping(self).await
    }

    async fn insert_token(&self, token: &NewToken) -> Result<(), StoreError> {
        let _turn = self.usual_write_turn().await?;
        send!(
            self,
            sqlx::query(INSERT_TOKEN_SQL)
                .bind(token.hash.as_bytes().as_slice())
                .bind(token.owner.as_str())
                .bind(B::encode_time(token.created_at))
                .bind(B::encode_time(token.expires_at)),
            execute
        );
        Ok(())
    }

    async fn insert_tokens(&self, tokens: &[NewToken]) -> Result<(), StoreError> {
        let _turn = self.usual_write_turn().await?;
        B::insert_tokens(self, tokens).await
    }

    async fn import_tokens(&self, tokens: &[ImportToken]) -> Result<ImportedBatch, StoreError> {
        if tokens.is_empty() {
            return Ok(ImportedBatch::default());
        }
        let _turn = self.usual_write_turn().await?;
        B::import_tokens(self, tokens).await
    }

    async fn revoke_imported(
        &self,
        revocations: &[(TokenHash, DateTime<Utc>)],
    ) -> Result<Vec<TokenHash>, StoreError> {
        if revocations.is_empty() {
            return Ok(Vec::new());
        }
        let _turn = self.usual_write_turn().await?;
        B::revoke_imported(self, revocations).await
    }

    async fn record_report(
        &self,
        report: &NewReport,
        options: RecordOptions,
    ) -> Result<RecordedReport, StoreError> {
        let mut recorded = B::record_report(self, report, options).await?;
        if !recorded.unrecorded.is_empty() {
            // A repeated body whose tokens found inside items an older release did not
            // record: they are recorded (and revoked) now, as a report of their own.
            let unrecorded = std::mem::take(&mut recorded.unrecorded);
            let late = unrecorded_report(report, &unrecorded);
            let late = B::record_report(self, &late, options).await?;
            for (&i, &outcome) in unrecorded.iter().zip(&late.outcomes) {
                recorded.outcomes[i] = outcome;
            }
            recorded.tokens_revoked += late.tokens_revoked;
        }
        Ok(recorded)
    }

    async fn token(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        let row: Option<TokenRow<B>> = send!(
            self,
            sqlx::query_as(TOKEN_SQL).bind(hash.as_bytes().as_slice()),
            fetch_optional
        );
        row.map(|r| r.into_record(*hash)).transpose()
    }

    async fn tokens_from(&self, from: &[u8], limit: u32) -> Result<Vec<TokenRecord>, StoreError> {
        let rows: Vec<HashedTokenRow<B>> = send!(
            self,
            sqlx::query_as(TOKENS_FROM_SQL)
                .bind(from)
                .bind(i64::from(limit)),
            fetch_all
        );
        rows.into_iter().map(HashedTokenRow::into_record).collect()
    }

    async fn list_tokens(
        &self,
        owner: Option<&str>,
        status: Option<TokenStatus>,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let rows: Vec<HashedTokenRow<B>> = send!(
            self,
            sqlx::query_as(LIST_TOKENS_SQL)
                .bind(owner)
                .bind(status.map(TokenStatus::as_str))
                .bind(B::encode_time(now))
                .bind(i64::from(limit)),
            fetch_all
        );
        rows.into_iter().map(HashedTokenRow::into_record).collect()
    }

    async fn notification_of_token(
        &self,
        hash: &TokenHash,
    ) -> Result<Option<Notification>, StoreError> {
        self.expand_notifications().await?;
        let row: Option<NotificationRow<B>> = send!(
            self,
            sqlx::query_as(NOTIFICATION_OF_TOKEN_SQL).bind(hash.as_bytes().as_slice()),
            fetch_optional
        );
        row.map(NotificationRow::into_notification).transpose()
    }

    async fn report(&self, id: i64) -> Result<Option<ReportRecord>, StoreError> {
        let row: Option<ReportRow<B>> =
            send!(self, sqlx::query_as(REPORT_SQL).bind(id), fetch_optional);
        row.map(ReportRow::into_record).transpose()
    }

    async fn report_items(&self, report_id: i64) -> Result<Vec<ReportItemRecord>, StoreError> {
        let rows: Vec<ItemRow<B>> = send!(
            self,
            sqlx::query_as(REPORT_ITEMS_SQL).bind(report_id),
            fetch_all
        );
        rows.into_iter().map(ItemRow::into_record).collect()
    }

    async fn probe_tables(&self) -> Result<(), StoreError> {
        let _: Option<i64> = send!(
            self,
            sqlx::query_scalar("SELECT id FROM reports LIMIT 1"),
            fetch_optional
        );
        Ok(())
    }

    async fn count_reports(&self) -> Result<i64, StoreError> {
        Ok(send!(
            self,
            sqlx::query_scalar("SELECT count(*) FROM reports"),
            fetch_one
        ))
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
        let rows = send!(
            self,
            sqlx::query(B::PREVIEW_SQL)
                .bind(B::hash_list(&distinct))
                .bind(B::encode_time(now)),
            fetch_all
        );
        preview_map(rows.iter().map(PreviewRow::from_row), distinct)
    }

    async fn owners(&self, hashes: &[TokenHash]) -> Result<HashMap<TokenHash, String>, StoreError> {
        let distinct = distinct_hashes(hashes.iter().copied());
        if distinct.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<OwnerRow> = send!(
            self,
            sqlx::query_as(B::PREVIEW_SQL)
                .bind(B::hash_list(&distinct))
                .bind(B::encode_time(Utc::now())),
            fetch_all
        );
        rows.into_iter()
            .map(|r| Ok((hash_from(&r.hash)?, r.owner)))
            .collect()
    }

    async fn stats(&self, since: chrono::NaiveDate) -> Result<Stats, StoreError> {
        // The recent revocations and the waiting notifications are read from the
        // outbox's rows: one transaction's worth of the batches queued since the last
        // reader, when no write of this process has the turn (a read never queues behind
        // deliveries; the outbox worker, or the next reader, turns the rest).
        expand!(self, 1, no_wait);
        // One transaction: every section sees the same snapshot.
        self.statements.add(1);
        let mut tx = match B::STATS_BEGIN {
            Some(begin) => self.pool.begin_with(begin).await?,
            None => self.pool.begin().await?,
        };

        let by_scanner: Vec<ScannerTotals> =
            send_in!(self, tx, sqlx::query_as(B::BY_SCANNER_SQL), fetch_all);
        // The all-time totals are the sum of the per-scanner rows (same snapshot, and
        // they always add up).
        let totals = sum_totals(by_scanner.iter().map(|s| &s.totals));

        let by_source: Vec<SourceTotals> =
            send_in!(self, tx, sqlx::query_as(B::BY_SOURCE_SQL), fetch_all);

        let since = since.format("%Y-%m-%d").to_string();
        let daily: Vec<DayRow<B>> = send_in!(
            self,
            tx,
            sqlx::query_as(B::DAILY_SQL).bind(since.as_str()),
            fetch_all
        );
        let daily = daily
            .into_iter()
            .map(DayRow::into_totals)
            .collect::<Result<Vec<_>, _>>()?;

        let ages: Vec<AgeBucketRow> = send_in!(self, tx, sqlx::query_as(AGES_SQL), fetch_all);
        let (revocation_ages, by_format) = ages_by_format(&ages);

        let recent: Vec<RecentRow<B>> =
            send_in!(self, tx, sqlx::query_as(B::RECENT_SQL), fetch_all);
        let recent = recent_reports(recent)?;

        let revocations: Vec<RecentRevocationRow<B>> =
            send_in!(self, tx, sqlx::query_as(RECENT_REVOCATIONS_SQL), fetch_all);
        let recent_revocations = revocations
            .into_iter()
            .map(RecentRevocationRow::into_revocation)
            .collect::<Result<Vec<_>, _>>()?;

        let failed: Vec<NotificationRow<B>> = send_in!(
            self,
            tx,
            sqlx::query_as(FAILED_NOTIFICATIONS_SQL),
            fetch_all
        );
        let waiting: Vec<NotificationRow<B>> = send_in!(
            self,
            tx,
            sqlx::query_as(WAITING_NOTIFICATIONS_SQL)
                .bind(B::encode_time(Utc::now() - LONG_PENDING)),
            fetch_all
        );
        let [failed_notifications, waiting_notifications] = [failed, waiting].map(|rows| {
            rows.into_iter()
                .map(NotificationRow::into_notification)
                .collect::<Result<Vec<_>, _>>()
        });
        let (failed_notifications, waiting_notifications) =
            (failed_notifications?, waiting_notifications?);

        let last: Vec<(String, Option<B::Time>)> =
            send_in!(self, tx, sqlx::query_as(LAST_REPORTS_SQL), fetch_all);
        let last_reports = last_reports::<B>(last)?;

        self.statements.add(1);
        tx.commit().await?;

        Ok(Stats {
            recent_revocations,
            failed_notifications,
            waiting_notifications,
            last_reports,
            totals,
            by_scanner,
            by_source,
            daily,
            revocation_ages,
            by_format,
            recent,
        })
    }

    async fn purge_metadata(
        &self,
        before: DateTime<Utc>,
        limit: u32,
        max_items: u32,
    ) -> Result<Purged, StoreError> {
        // Queued batches become notifications first, so those of the reports purged now
        // are purged with them (their url and source), as the rest.
        self.expand_notifications().await?;
        let _turn = self.usual_write_turn().await?;
        let (reports, items) = B::purge_reports(self, before, limit, max_items).await?;
        // Sources whose every item was purged: their emptied rollup rows go too. Every
        // batch, whether or not it purged anything, so rows a failed or interrupted
        // batch left behind go with the next one (a scan of the small rollup table).
        send!(
            self,
            sqlx::query("DELETE FROM stats_sources WHERE items = 0 AND source <> '(purged)'"),
            execute
        );
        let done = send!(
            self,
            sqlx::query(B::PURGE_NOTIFICATIONS_SQL)
                .bind(B::encode_time(before))
                .bind(i64::from(limit)),
            execute
        );
        // Towards the WAL checkpoint (SQLite): the purged items sit together by report,
        // the notifications by id.
        self.wrote(((items + B::rows_affected(&done)) / 8) as usize);
        Ok(Purged {
            reports,
            items,
            notifications: B::rows_affected(&done),
            bodies: 0,
        })
    }

    async fn purge_delivered_bodies(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let _turn = self.usual_write_turn().await?;
        let done = send!(
            self,
            sqlx::query(B::PURGE_BODIES_SQL)
                .bind(B::encode_time(before))
                .bind(i64::from(limit)),
            execute
        );
        // Body claims by random key: each on a page of its own.
        self.wrote(B::rows_affected(&done) as usize);
        Ok(B::rows_affected(&done))
    }

    async fn claim_notifications(
        &self,
        clock: Clock,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.expand_notifications().await?;
        let _turn = self.usual_write_turn().await?;
        let rows: Vec<NotificationRow<B>> = send!(
            self,
            sqlx::query_as(B::CLAIM_SQL)
                .bind(B::clock(clock).map(B::encode_time))
                .bind(millis(lease))
                .bind(i64::from(limit)),
            fetch_all
        );
        self.wrote(rows.len() / 8);
        let mut claimed = rows
            .into_iter()
            .map(NotificationRow::into_notification)
            .collect::<Result<Vec<_>, _>>()?;
        // Oldest due first, as claimed: `RETURNING` promises no order.
        claimed.sort_by_key(|n| (n.next_attempt_at, n.id));
        Ok(claimed)
    }

    async fn finish_notification(
        &self,
        claimed: &Notification,
        result: &AttemptResult,
        clock: Clock,
    ) -> Result<(), StoreError> {
        // A delivered notification never goes back: a worker whose lease ran out and
        // was overtaken cannot undo the other's success. A success always counts.
        // Anything else needs the row still held by this claim (its exact lease end).
        let held_until = claimed.locked_until.map(B::encode_time);
        let now = B::clock(clock).map(B::encode_time);
        let query = match result {
            AttemptResult::Delivered => sqlx::query(B::DELIVERED_SQL).bind(claimed.id).bind(now),
            AttemptResult::Retry { error, retry_in } => sqlx::query(B::RETRY_SQL)
                .bind(claimed.id)
                .bind(now)
                .bind(millis(*retry_in))
                .bind(error.as_str())
                .bind(held_until),
            AttemptResult::Failed { error } => sqlx::query(FAILED_SQL)
                .bind(claimed.id)
                .bind(error.as_str())
                .bind(held_until),
        };
        let _turn = self.usual_write_turn().await?;
        send!(self, query, execute);
        Ok(())
    }

    async fn expand_notifications(&self) -> Result<u64, StoreError> {
        Ok(expand!(self, EXPAND_ROUNDS, wait))
    }

    async fn notification_counts(&self) -> Result<NotificationCounts, StoreError> {
        let rollup: NotificationRollup =
            send!(self, sqlx::query_as(NOTIFICATION_COUNTS_SQL), fetch_one);
        Ok(rollup.into())
    }

    async fn list_notifications(
        &self,
        status: Option<NotificationStatus>,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        self.expand_notifications().await?;
        let rows: Vec<NotificationRow<B>> = send!(
            self,
            sqlx::query_as(LIST_SQL)
                .bind(status.map(NotificationStatus::as_str))
                .bind(i64::from(limit)),
            fetch_all
        );
        rows.into_iter()
            .map(NotificationRow::into_notification)
            .collect()
    }

    async fn notification_by_public_id(
        &self,
        public_id: &str,
    ) -> Result<Option<Notification>, StoreError> {
        let Some(public_id) = canonical_uuid(public_id) else {
            return Ok(None);
        };
        self.expand_notifications().await?;
        let row: Option<NotificationRow<B>> = send!(
            self,
            sqlx::query_as(B::BY_PUBLIC_ID_SQL).bind(public_id.as_str()),
            fetch_optional
        );
        row.map(NotificationRow::into_notification).transpose()
    }

    async fn requeue_notification(&self, id: i64, clock: Clock) -> Result<Requeue, StoreError> {
        self.expand_notifications().await?;
        let _turn = self.usual_write_turn().await?;
        B::requeue_notification(self, id, clock).await
    }

    async fn requeue_failed(&self, clock: Clock) -> Result<u64, StoreError> {
        let _turn = self.usual_write_turn().await?;
        let done = send!(
            self,
            sqlx::query(B::REQUEUE_FAILED_SQL).bind(B::clock(clock).map(B::encode_time)),
            execute
        );
        self.wrote(B::rows_affected(&done) as usize / 8);
        Ok(B::rows_affected(&done))
    }

    fn statements(&self) -> u64 {
        self.statements.get()
    }
}

/// A lease or a delay in whole milliseconds, as the outbox statements add it to their
/// "now"; capped at 100 years, so the sum stays a valid instant on both databases.
fn millis(d: Duration) -> i64 {
    const MAX_MS: u128 = 100 * 366 * 24 * 3600 * 1000;
    d.as_millis().min(MAX_MS) as i64
}
