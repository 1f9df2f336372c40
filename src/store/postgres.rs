//! PostgreSQL backend, for several receiver instances on one database.
//!
//! The revocation is one data-modifying CTE: it flips every live candidate with a single
//! `UPDATE … FROM unnest($1::bytea[])` and classifies every candidate in the same
//! statement. All sub-statements share one snapshot, so the `tokens` read in the outer
//! `SELECT` sees the rows as they were before this statement: a row that exists but was
//! not flipped was already revoked. When two deliveries race on one token, the second
//! `UPDATE` waits for the first to commit, re-checks `revoked_at IS NULL`, skips the row,
//! and reports `already_revoked`: exactly one flips it.
//!
//! Overlapping batches can lock rows in different orders and deadlock; PostgreSQL then
//! aborts one transaction, and `record_report` retries it from the start (the transaction
//! rolled back, so nothing of the failed attempt remains).

use std::collections::HashMap;
use std::str::FromStr;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};

use super::*;

/// Attempts for a transaction aborted by a deadlock or serialization failure.
const MAX_ATTEMPTS: u32 = 5;

pub struct PostgresStore {
    pool: PgPool,
    statements: StatementCounter,
}

fn hash_from(bytes: &[u8]) -> Result<TokenHash, StoreError> {
    TokenHash::from_slice(bytes).ok_or_else(|| StoreError::Corrupt("hash is not 32 bytes".into()))
}

/// Deadlock (40P01) or serialization failure (40001): safe to retry the transaction.
fn is_retryable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("40P01" | "40001")),
        _ => false,
    }
}

const REVOKE_SQL: &str = "
WITH input AS (
    SELECT DISTINCT h AS hash FROM unnest($1::bytea[]) AS u(h)
), flipped AS (
    UPDATE tokens t SET revoked_at = $2, revoked_by = $3
    FROM input i
    WHERE t.hash = i.hash AND t.revoked_at IS NULL
    RETURNING t.hash, t.expires_at <= $2 AS was_expired
)
SELECT i.hash,
       CASE WHEN f.hash IS NOT NULL THEN CASE WHEN f.was_expired THEN 'expired' ELSE 'revoked' END
            WHEN t.hash IS NOT NULL THEN 'already_revoked'
            ELSE 'unknown'
       END AS outcome
FROM input i
LEFT JOIN flipped f ON f.hash = i.hash
LEFT JOIN tokens t ON t.hash = i.hash";

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

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn try_record(&self, report: &NewReport) -> Result<RecordedReport, sqlx::Error> {
        let hashes: Vec<Vec<u8>> = report
            .candidates
            .iter()
            .map(|c| c.hash.as_bytes().to_vec())
            .collect();

        self.statements.add(1);
        let mut tx = self.pool.begin().await?;

        self.statements.add(1);
        let report_id: i64 = sqlx::query_scalar(
            "INSERT INTO reports (scanner, key_id, received_at, body_sha256, item_count, not_ours)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(&report.scanner)
        .bind(&report.key_id)
        .bind(report.received_at)
        .bind(report.body_sha256.as_slice())
        .bind(report.item_count as i32)
        .bind(report.not_ours as i32)
        .fetch_one(&mut *tx)
        .await?;

        self.statements.add(1);
        let rows = sqlx::query(REVOKE_SQL)
            .bind(&hashes)
            .bind(report.received_at)
            .bind(report_id)
            .fetch_all(&mut *tx)
            .await?;
        let mut by_hash: HashMap<TokenHash, Outcome> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let hash = TokenHash::from_slice(row.try_get::<&[u8], _>(0)?)
                .ok_or_else(|| sqlx::Error::Decode("hash is not 32 bytes".into()))?;
            let outcome: &str = row.try_get(1)?;
            let outcome = Outcome::parse(outcome)
                .ok_or_else(|| sqlx::Error::Decode(format!("outcome {outcome:?}").into()))?;
            by_hash.insert(hash, outcome);
        }
        let (outcomes, counts) = outcomes_for(report, &by_hash)
            .map_err(|e| sqlx::Error::Decode(e.to_string().into()))?;

        // Item rows and report counts in one statement.
        let n = report.candidates.len();
        let mut positions = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        let mut sources = Vec::with_capacity(n);
        let mut urls = Vec::with_capacity(n);
        let mut labels = Vec::with_capacity(n);
        for (c, o) in report.candidates.iter().zip(&outcomes) {
            positions.push(c.position as i32);
            types.push(c.token_type.as_str());
            sources.push(c.source.as_str());
            urls.push(c.url.as_str());
            labels.push(o.as_str());
        }
        self.statements.add(1);
        sqlx::query(
            "WITH items AS (
                 INSERT INTO report_items (report_id, position, token_hash, token_type, source, url, outcome)
                 SELECT $1, * FROM unnest($2::int4[], $3::bytea[], $4::text[], $5::text[], $6::text[], $7::text[])
             )
             UPDATE reports SET revoked = $8, already_revoked = $9, expired = $10, unknown = $11
             WHERE id = $1",
        )
        .bind(report_id)
        .bind(&positions)
        .bind(&hashes)
        .bind(&types)
        .bind(&sources)
        .bind(&urls)
        .bind(&labels)
        .bind(counts.revoked as i32)
        .bind(counts.already_revoked as i32)
        .bind(counts.expired as i32)
        .bind(counts.unknown as i32)
        .execute(&mut *tx)
        .await?;

        self.statements.add(1);
        tx.commit().await?;
        Ok(RecordedReport {
            report_id,
            outcomes,
            counts,
        })
    }
}

#[async_trait]
impl RevocationStore for PostgresStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.statements.add(1);
        sqlx::query("SELECT 1").execute(&self.pool).await?;
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
        let count = |r: &sqlx::postgres::PgRow, i: usize| -> Result<u32, StoreError> {
            Ok(r.try_get::<i32, _>(i)? as u32)
        };
        row.map(|r| {
            Ok(ReportRecord {
                id: r.try_get(0)?,
                scanner: r.try_get(1)?,
                key_id: r.try_get(2)?,
                received_at: r.try_get(3)?,
                body_sha256: r.try_get(4)?,
                item_count: count(&r, 5)?,
                counts: OutcomeCounts {
                    revoked: count(&r, 6)?,
                    already_revoked: count(&r, 7)?,
                    expired: count(&r, 8)?,
                    unknown: count(&r, 9)?,
                    not_ours: count(&r, 10)?,
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
                    outcome: Outcome::parse(&outcome)
                        .ok_or_else(|| StoreError::Corrupt(format!("outcome {outcome:?}")))?,
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

    fn statements(&self) -> u64 {
        self.statements.get()
    }
}
