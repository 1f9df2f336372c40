//! SQLite backend: the embedded default (`sqlite://revoker.db`).
//!
//! The file is created if missing and opened in WAL mode with `synchronous=FULL`, so a
//! revocation that was answered 200 survives a power cut. Timestamps are stored as Unix
//! epoch milliseconds. Variable-length inputs (hash lists, item rows) are bound as one
//! JSON text and expanded with `json_each`, so one statement serves any batch size.
//!
//! SQLite has one writer at a time; `record_report` starts with a write, so it takes the
//! write lock first and its reads inside the transaction are consistent.

use std::collections::HashMap;
use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::*;

/// SQLite's primary result code of a database error (extended codes carry it in the
/// low byte): 5 = SQLITE_BUSY, 8 = SQLITE_READONLY.
fn primary_code(e: &dyn sqlx::error::DatabaseError) -> Option<i32> {
    e.code()
        .and_then(|c| c.parse::<i32>().ok())
        .map(|c| c & 0xff)
}

pub struct SqliteStore {
    pool: SqlitePool,
    statements: StatementCounter,
}

fn to_millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_millis(ms: i64) -> Result<DateTime<Utc>, StoreError> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {ms} out of range")))
}

/// A JSON array of lower-case hex hashes, for `json_each` + `unhex`.
fn hex_array(hashes: &[TokenHash]) -> String {
    let mut s = String::with_capacity(hashes.len() * 67 + 2);
    s.push('[');
    for (i, h) in hashes.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push('"');
        s.push_str(&h.to_hex());
        s.push('"');
    }
    s.push(']');
    s
}

const STATS_BY_SCANNER_SQL: &str = "
SELECT scanner, count(*), sum(item_count), sum(revoked), sum(already_revoked),
       sum(expired), sum(unknown), sum(not_ours)
FROM reports
GROUP BY scanner
ORDER BY scanner";

const STATS_BY_SOURCE_SQL: &str = "
SELECT source, count(*) AS items,
       count(*) FILTER (WHERE outcome = 'revoked'),
       count(*) FILTER (WHERE outcome = 'already_revoked'),
       count(*) FILTER (WHERE outcome = 'expired'),
       count(*) FILTER (WHERE outcome = 'unknown')
FROM report_items
GROUP BY source
ORDER BY items DESC, source
LIMIT 20";

/// `/ 1000.0` rather than integer division so that times before 1970 fall on the right day.
const STATS_DAILY_SQL: &str = "
SELECT date(received_at / 1000.0, 'unixepoch') AS day, count(*), sum(item_count),
       sum(revoked), sum(already_revoked), sum(expired), sum(unknown), sum(not_ours)
FROM reports
WHERE received_at >= ?1
GROUP BY day
ORDER BY day";

/// Nearest-rank percentiles in milliseconds: the age at 1-based rank ceil(p·n), in exact
/// integer arithmetic: ceil(n/2) = (n+1)/2 and ceil(19n/20) = (19n+19)/20. This is what
/// PostgreSQL's `percentile_disc` answers. No row (NULL) when n = 0.
const STATS_AGES_SQL: &str = "
WITH ages AS (
    SELECT revoked_at - created_at AS ms FROM tokens
    WHERE revoked_by IS NOT NULL AND revoked_at IS NOT NULL
), ranked AS (
    SELECT ms, row_number() OVER (ORDER BY ms) AS rn, count(*) OVER () AS n FROM ages
)
SELECT (SELECT count(*) FROM ages),
       (SELECT ms FROM ranked WHERE rn = (n + 1) / 2),
       (SELECT ms FROM ranked WHERE rn = (19 * n + 19) / 20)";

/// The last 20 reports, each with its first 20 items by position (NULL item columns for a
/// report without items).
const STATS_RECENT_SQL: &str = "
WITH r AS (
    SELECT id, received_at, scanner, key_id, item_count,
           revoked, already_revoked, expired, unknown, not_ours
    FROM reports ORDER BY id DESC LIMIT 20
), i AS (
    SELECT report_id, token_hash, outcome, source, url,
           row_number() OVER (PARTITION BY report_id ORDER BY position) AS rn
    FROM report_items WHERE report_id IN (SELECT id FROM r)
)
SELECT r.id, r.received_at, r.scanner, r.key_id, r.item_count,
       r.revoked, r.already_revoked, r.expired, r.unknown, r.not_ours,
       i.token_hash, i.outcome, i.source, i.url
FROM r LEFT JOIN i ON i.report_id = r.id AND i.rn <= 20
ORDER BY r.id DESC, i.rn";

/// A notification row, in the order `notification_from` decodes.
const NOTIFICATION_COLUMNS: &str = "id, token_hash, report_id, owner, scanner, url, source, \
    revoked_at, expired, status, attempts, next_attempt_at, last_error, delivered_at, \
    locked_until";

/// Leases the due, unleased pending rows, oldest due first. One statement: SQLite runs
/// one writer at a time, so two claimers never pick the same row.
fn claim_sql() -> String {
    format!(
        "UPDATE notifications SET locked_until = ?2, attempts = attempts + 1
         WHERE id IN (
             SELECT id FROM notifications
             WHERE status = 'pending' AND next_attempt_at <= ?1
               AND (locked_until IS NULL OR locked_until <= ?1)
             ORDER BY next_attempt_at, id
             LIMIT ?3)
         RETURNING {NOTIFICATION_COLUMNS}"
    )
}

fn notification(r: &sqlx::sqlite::SqliteRow) -> Result<Notification, StoreError> {
    notification_from(r, from_millis)
}

impl SqliteStore {
    pub async fn connect(url: &str, settings: &PoolSettings) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(settings.create_if_missing)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(settings.acquire_timeout);
        let pool_options = SqlitePoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .acquire_timeout(settings.acquire_timeout);
        // Switching a fresh file to WAL needs it to itself for a moment; a process
        // starting alongside another one can find it busy (SQLITE_BUSY) without the
        // busy handler being asked. Such a start waits and tries again.
        let mut attempt = 0u32;
        let pool = loop {
            match pool_options.clone().connect_with(options.clone()).await {
                Ok(pool) => break pool,
                Err(sqlx::Error::Database(e)) if attempt < 10 && primary_code(&*e) == Some(5) => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(
                        50 + u64::from(attempt) * 25,
                    ))
                    .await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        Ok(SqliteStore {
            pool,
            statements: StatementCounter::default(),
        })
    }
}

#[async_trait]
impl RevocationStore for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        // sqlx takes no lock for SQLite migrations, so processes starting together on
        // a fresh file race, and the loser fails on a table the winner has just
        // created. Each migration commits together with its row in _sqlx_migrations,
        // so the loser's next attempt sees it applied and goes on from there.
        let migrator = sqlx::migrate!("./migrations/sqlite");
        let mut attempt = 0u32;
        loop {
            match migrator.run(&self.pool).await {
                Ok(()) => return Ok(()),
                Err(
                    sqlx::migrate::MigrateError::Execute(e)
                    | sqlx::migrate::MigrateError::ExecuteMigration(e, _),
                ) if attempt < 10 => {
                    attempt += 1;
                    tracing::debug!(attempt, error = %e, "migration raced another process; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(
                        50 + u64::from(attempt) * 25,
                    ))
                    .await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.statements.add(1);
        // A write that changes nothing: SQLite refuses it on a read-only file or
        // connection (SQLITE_READONLY, primary code 8) before looking at any row.
        match sqlx::query("DELETE FROM reports WHERE 0")
            .execute(&self.pool)
            .await
        {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if primary_code(&*e) == Some(8) => {
                Err(StoreError::ReadOnly)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn insert_token(&self, token: &NewToken) -> Result<(), StoreError> {
        self.statements.add(1);
        sqlx::query(
            "INSERT INTO tokens (hash, owner, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(token.hash.as_bytes().as_slice())
        .bind(&token.owner)
        .bind(to_millis(token.created_at))
        .bind(to_millis(token.expires_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn insert_tokens(&self, tokens: &[NewToken]) -> Result<(), StoreError> {
        if tokens.is_empty() {
            return Ok(());
        }
        let rows: Vec<serde_json::Value> = tokens
            .iter()
            .map(|t| {
                serde_json::json!([
                    t.hash.to_hex(),
                    t.owner,
                    to_millis(t.created_at),
                    to_millis(t.expires_at)
                ])
            })
            .collect();
        self.statements.add(1);
        sqlx::query(
            "INSERT INTO tokens (hash, owner, created_at, expires_at)
             SELECT unhex(json_extract(value, '$[0]')), json_extract(value, '$[1]'),
                    json_extract(value, '$[2]'), json_extract(value, '$[3]')
             FROM json_each(?1)",
        )
        .bind(serde_json::Value::Array(rows).to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn record_report(&self, report: &NewReport) -> Result<RecordedReport, StoreError> {
        let now = to_millis(report.received_at);
        let distinct = distinct_hashes(report.candidates.iter().map(|c| c.hash));

        self.statements.add(1);
        let mut tx = self.pool.begin().await?;

        self.statements.add(1);
        let report_id: i64 = sqlx::query_scalar(
            "INSERT INTO reports (scanner, key_id, received_at, body_sha256, item_count, not_ours)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
        )
        .bind(&report.scanner)
        .bind(&report.key_id)
        .bind(now)
        .bind(report.body_sha256.as_slice())
        .bind(report.item_count)
        .bind(report.not_ours)
        .fetch_one(&mut *tx)
        .await?;

        // The one revoking statement: every live candidate flips, in one UPDATE.
        self.statements.add(1);
        let flipped = sqlx::query(
            "UPDATE tokens SET revoked_at = ?1, revoked_by = ?2
             WHERE revoked_at IS NULL
               AND hash IN (SELECT unhex(value) FROM json_each(?3))
             RETURNING hash, expires_at <= ?1 AS was_expired, owner",
        )
        .bind(now)
        .bind(report_id)
        .bind(hex_array(&distinct))
        .fetch_all(&mut *tx)
        .await?;

        // The first item (lowest position) naming each hash: where its owner is told the
        // token was found.
        let mut first: HashMap<TokenHash, &CandidateItem> = HashMap::with_capacity(distinct.len());
        for c in &report.candidates {
            first
                .entry(c.hash)
                .and_modify(|f| {
                    if c.position < f.position {
                        *f = c;
                    }
                })
                .or_insert(c);
        }

        let mut by_hash: HashMap<TokenHash, Outcome> = HashMap::with_capacity(distinct.len());
        // One owner notification per flipped token: [hash, owner, url, source, expired].
        let mut notifications: Vec<serde_json::Value> = Vec::with_capacity(flipped.len());
        for row in &flipped {
            let hash = hash_from(row.try_get::<&[u8], _>(0)?)?;
            let was_expired: bool = row.try_get(1)?;
            let owner: &str = row.try_get(2)?;
            let o = if was_expired {
                Outcome::Expired
            } else {
                Outcome::Revoked
            };
            by_hash.insert(hash, o);
            let item = first.get(&hash).ok_or_else(|| {
                StoreError::Corrupt(format!("flipped {} is not a candidate", hash.prefix()))
            })?;
            notifications.push(serde_json::json!([
                hash.to_hex(),
                owner,
                item.url,
                item.source,
                was_expired
            ]));
        }

        // The outbox rows of the flipped tokens, in one statement, committed with the
        // revocation or not at all. A token flips once, so it is notified once.
        if !notifications.is_empty() {
            self.statements.add(1);
            sqlx::query(
                "INSERT INTO notifications (token_hash, report_id, owner, scanner, url, source,
                                            revoked_at, expired, next_attempt_at)
                 SELECT unhex(json_extract(value, '$[0]')), ?1, json_extract(value, '$[1]'), ?2,
                        json_extract(value, '$[2]'), json_extract(value, '$[3]'), ?3,
                        json_extract(value, '$[4]'), ?3
                 FROM json_each(?4)",
            )
            .bind(report_id)
            .bind(&report.scanner)
            .bind(now)
            .bind(serde_json::Value::Array(notifications).to_string())
            .execute(&mut *tx)
            .await?;
        }

        // Whatever did not flip is either ours and already revoked, or not ours at all.
        let rest: Vec<TokenHash> = distinct
            .iter()
            .filter(|h| !by_hash.contains_key(*h))
            .copied()
            .collect();
        if !rest.is_empty() {
            self.statements.add(1);
            let existing = sqlx::query(
                "SELECT hash FROM tokens WHERE hash IN (SELECT unhex(value) FROM json_each(?1))",
            )
            .bind(hex_array(&rest))
            .fetch_all(&mut *tx)
            .await?;
            for row in &existing {
                by_hash.insert(
                    hash_from(row.try_get::<&[u8], _>(0)?)?,
                    Outcome::AlreadyRevoked,
                );
            }
            for h in rest {
                by_hash.entry(h).or_insert(Outcome::Unknown);
            }
        }

        let (outcomes, counts) = outcomes_for(report, &by_hash)?;

        // All item rows in one statement, as one JSON array of [pos, hash, type, source, url, outcome].
        let items: Vec<serde_json::Value> = report
            .candidates
            .iter()
            .zip(&outcomes)
            .map(|(c, o)| {
                serde_json::json!([
                    c.position,
                    c.hash.to_hex(),
                    c.token_type,
                    c.source,
                    c.url,
                    o.as_str()
                ])
            })
            .collect();
        self.statements.add(1);
        sqlx::query(
            "INSERT INTO report_items (report_id, position, token_hash, token_type, source, url, outcome)
             SELECT ?1, json_extract(value, '$[0]'), unhex(json_extract(value, '$[1]')),
                    json_extract(value, '$[2]'), json_extract(value, '$[3]'),
                    json_extract(value, '$[4]'), json_extract(value, '$[5]')
             FROM json_each(?2)",
        )
        .bind(report_id)
        .bind(serde_json::Value::Array(items).to_string())
        .execute(&mut *tx)
        .await?;

        self.statements.add(1);
        sqlx::query(
            "UPDATE reports SET revoked = ?2, already_revoked = ?3, expired = ?4, unknown = ?5
             WHERE id = ?1",
        )
        .bind(report_id)
        .bind(counts.revoked)
        .bind(counts.already_revoked)
        .bind(counts.expired)
        .bind(counts.unknown)
        .execute(&mut *tx)
        .await?;

        self.statements.add(1);
        tx.commit().await?;

        Ok(RecordedReport {
            report_id,
            tokens_revoked: flipped.len() as u32,
            outcomes,
            counts,
        })
    }

    async fn token(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        self.statements.add(1);
        let row = sqlx::query(
            "SELECT owner, created_at, expires_at, revoked_at, revoked_by FROM tokens WHERE hash = ?1",
        )
        .bind(hash.as_bytes().as_slice())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(TokenRecord {
                hash: *hash,
                owner: r.try_get(0)?,
                created_at: from_millis(r.try_get(1)?)?,
                expires_at: from_millis(r.try_get(2)?)?,
                revoked_at: r
                    .try_get::<Option<i64>, _>(3)?
                    .map(from_millis)
                    .transpose()?,
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
             FROM reports WHERE id = ?1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(ReportRecord {
                id: r.try_get(0)?,
                scanner: r.try_get(1)?,
                key_id: r.try_get(2)?,
                received_at: from_millis(r.try_get(3)?)?,
                body_sha256: r.try_get(4)?,
                item_count: r.try_get(5)?,
                counts: OutcomeCounts {
                    revoked: r.try_get(6)?,
                    already_revoked: r.try_get(7)?,
                    expired: r.try_get(8)?,
                    unknown: r.try_get(9)?,
                    not_ours: r.try_get(10)?,
                },
            })
        })
        .transpose()
    }

    async fn report_items(&self, report_id: i64) -> Result<Vec<ReportItemRecord>, StoreError> {
        self.statements.add(1);
        let rows = sqlx::query(
            "SELECT position, token_hash, token_type, source, url, outcome
             FROM report_items WHERE report_id = ?1 ORDER BY position",
        )
        .bind(report_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let outcome: String = r.try_get(5)?;
                Ok(ReportItemRecord {
                    position: r.try_get(0)?,
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
        self.statements.add(1);
        let rows = sqlx::query(
            "SELECT hash, revoked_at IS NOT NULL AS revoked, expires_at <= ?2 AS expired
             FROM tokens WHERE hash IN (SELECT unhex(value) FROM json_each(?1))",
        )
        .bind(hex_array(&distinct))
        .bind(to_millis(now))
        .fetch_all(&self.pool)
        .await?;
        preview_map(&rows, distinct)
    }

    async fn stats(&self, since: DateTime<Utc>) -> Result<Stats, StoreError> {
        // One deferred read transaction: every section sees the same snapshot (WAL
        // readers do not block the writer).
        self.statements.add(1);
        let mut tx = self.pool.begin().await?;

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
            .bind(to_millis(since))
            .fetch_all(&mut *tx)
            .await?;
        let daily = rows
            .iter()
            .map(|r| {
                let day: String = r.try_get(0)?;
                Ok(DayTotals {
                    day: chrono::NaiveDate::parse_from_str(&day, "%Y-%m-%d")
                        .map_err(|_| StoreError::Corrupt(format!("day {day:?}")))?,
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
                    received_at: from_millis(r.try_get(1)?)?,
                    scanner: r.try_get(2)?,
                    key_id: r.try_get(3)?,
                    item_count: r.try_get(4)?,
                    counts: OutcomeCounts {
                        revoked: r.try_get(5)?,
                        already_revoked: r.try_get(6)?,
                        expired: r.try_get(7)?,
                        unknown: r.try_get(8)?,
                        not_ours: r.try_get(9)?,
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
            .bind(to_millis(now))
            .bind(to_millis(lease_end(now, lease)))
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
                 SET status = 'delivered', delivered_at = ?2, locked_until = NULL, last_error = NULL
                 WHERE id = ?1 AND status <> 'delivered'",
            )
            .bind(id)
            .bind(to_millis(*at)),
            AttemptResult::Retry {
                error,
                next_attempt_at,
            } => sqlx::query(
                "UPDATE notifications
                 SET next_attempt_at = ?2, last_error = ?3, locked_until = NULL
                 WHERE id = ?1 AND status = 'pending' AND locked_until = ?4",
            )
            .bind(id)
            .bind(to_millis(*next_attempt_at))
            .bind(error.as_str())
            .bind(claimed.locked_until.map(to_millis)),
            AttemptResult::Failed { error } => sqlx::query(
                "UPDATE notifications
                 SET status = 'failed', last_error = ?2, locked_until = NULL
                 WHERE id = ?1 AND status = 'pending' AND locked_until = ?3",
            )
            .bind(id)
            .bind(error.as_str())
            .bind(claimed.locked_until.map(to_millis)),
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
             WHERE ?1 IS NULL OR status = ?1 ORDER BY id DESC LIMIT ?2"
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
        self.statements.add(1);
        let requeued = sqlx::query(
            "UPDATE notifications
             SET status = 'pending', attempts = 0, next_attempt_at = ?2, last_error = NULL,
                 locked_until = NULL
             WHERE id = ?1 AND status <> 'delivered'
               AND (locked_until IS NULL OR locked_until <= ?2)",
        )
        .bind(id)
        .bind(to_millis(now))
        .execute(&self.pool)
        .await?
        .rows_affected();
        if requeued > 0 {
            return Ok(Requeue::Requeued);
        }
        // Nothing changed: absent, delivered (which stays delivered), or being sent.
        self.statements.add(1);
        let found: Option<(String, Option<i64>)> =
            sqlx::query_as("SELECT status, locked_until FROM notifications WHERE id = ?1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match found {
            None => Requeue::NotFound,
            Some((status, _)) if status == "delivered" => Requeue::AlreadyDelivered,
            Some((_, locked_until)) => Requeue::InFlight(match locked_until {
                Some(ms) => from_millis(ms)?,
                None => now,
            }),
        })
    }

    async fn requeue_failed(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.statements.add(1);
        let done = sqlx::query(
            "UPDATE notifications
             SET status = 'pending', attempts = 0, next_attempt_at = ?1, last_error = NULL,
                 locked_until = NULL
             WHERE status = 'failed'",
        )
        .bind(to_millis(now))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    fn statements(&self) -> u64 {
        self.statements.get()
    }
}
