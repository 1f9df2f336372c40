//! SQLite: the statements of `stats`, run by the shared code in one transaction.
//!
//! The transaction is a plain deferred one: every section reads the same snapshot, and
//! WAL readers do not block the writer. Names are ordered by SQLite's default BINARY
//! collation (byte order), which the PostgreSQL backend matches with `COLLATE "C"`.

use sqlx::Sqlite;

use crate::store::backend::{by_scanner_sql, by_source_sql, StatsSql};

impl StatsSql for Sqlite {
    const STATS_BEGIN: Option<&'static str> = None;

    const BY_SCANNER_SQL: &'static str = by_scanner_sql!("");

    const BY_SOURCE_SQL: &'static str = by_source_sql!("");

    /// `/ 1000.0` rather than integer division so that times before 1970 fall on the
    /// right day.
    const DAILY_SQL: &'static str = "
SELECT date(received_at / 1000.0, 'unixepoch') AS day, count(*) AS reports,
       sum(item_count) AS items, sum(revoked) AS revoked,
       sum(already_revoked) AS already_revoked, sum(expired) AS expired,
       sum(unknown) AS unknown, sum(not_ours) AS not_ours
FROM reports
WHERE received_at >= ?1
GROUP BY day
ORDER BY day";

    /// Nearest-rank percentiles in milliseconds: the age at 1-based rank ceil(p·n), in
    /// exact integer arithmetic: ceil(n/2) = (n+1)/2 and ceil(19n/20) = (19n+19)/20. This
    /// is what PostgreSQL's `percentile_disc` answers. No row (NULL) when n = 0.
    const AGES_SQL: &'static str = "
WITH ages AS (
    SELECT revoked_at - created_at AS ms FROM tokens
    WHERE revoked_by IS NOT NULL AND revoked_at IS NOT NULL
), ranked AS (
    SELECT ms, row_number() OVER (ORDER BY ms) AS rn, count(*) OVER () AS n FROM ages
)
SELECT (SELECT count(*) FROM ages) AS count,
       (SELECT ms FROM ranked WHERE rn = (n + 1) / 2) AS median_ms,
       (SELECT ms FROM ranked WHERE rn = (19 * n + 19) / 20) AS p95_ms";

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
