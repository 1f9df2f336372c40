//! PostgreSQL: the statements of `stats`, run by the shared code in one transaction.
//!
//! The transaction is `REPEATABLE READ, READ ONLY`: one snapshot for every section (READ
//! COMMITTED would take a new snapshot per statement). Names are ordered with
//! `COLLATE "C"` (byte order), like SQLite's BINARY collation, so both backends list them
//! identically whatever the database's locale.

use sqlx::Postgres;

use crate::store::backend::{by_scanner_sql, by_source_sql, daily_sql, StatsSql};

impl StatsSql for Postgres {
    const STATS_BEGIN: Option<&'static str> =
        Some("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY");

    const BY_SCANNER_SQL: &'static str = by_scanner_sql!(r#" COLLATE "C""#);

    const BY_SOURCE_SQL: &'static str = by_source_sql!(r#" COLLATE "C""#);

    const DAILY_SQL: &'static str = daily_sql!("CAST($1 AS date)");

    /// The last 20 reports, each with its first 20 items by position (NULL item columns
    /// for a report without items). Read from the sets' first 20 elements (a delivery
    /// stores its candidates in position order), not through the `report_items` view,
    /// which would unnest and sort every item of a large report first.
    const RECENT_SQL: &'static str = "
WITH r AS (
    SELECT id, received_at, scanner, key_id, item_count,
           revoked, already_revoked, expired, unknown, not_ours
    FROM reports ORDER BY id DESC LIMIT 20
)
SELECT r.id, r.received_at, r.scanner, r.key_id, r.item_count,
       r.revoked, r.already_revoked, r.expired, r.unknown, r.not_ours,
       i.token_hash, i.outcome, i.source, i.url
FROM r
LEFT JOIN LATERAL (
    SELECT i.position, i.token_hash, i.outcome, i.source, i.url
    FROM report_item_sets s,
         unnest(s.positions[1:20], s.hashes[1:20], s.outcomes[1:20], s.sources[1:20],
                s.urls[1:20]) AS i (position, token_hash, outcome, source, url)
    WHERE s.report_id = r.id
) i ON true
ORDER BY r.id DESC, i.position";
}
