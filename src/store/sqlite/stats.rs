//! SQLite: the statements of `stats`, run by the shared code in one transaction.
//!
//! The transaction is a plain deferred one: every section reads the same snapshot, and
//! WAL readers do not block the writer. Names are ordered by SQLite's default BINARY
//! collation (byte order), which the PostgreSQL backend matches with `COLLATE "C"`.

use sqlx::Sqlite;

use crate::store::backend::{by_scanner_sql, by_source_sql, daily_sql, StatsSql};

impl StatsSql for Sqlite {
    const STATS_BEGIN: Option<&'static str> = None;

    const BY_SCANNER_SQL: &'static str = by_scanner_sql!("");

    const BY_SOURCE_SQL: &'static str = by_source_sql!("");

    /// Days are `YYYY-MM-DD` text, which compares as the days do.
    const DAILY_SQL: &'static str = daily_sql!("$1");

    /// The last 20 reports, each with its first 20 items by position (NULL item columns
    /// for a report without items).
    const RECENT_SQL: &'static str = "
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
}
