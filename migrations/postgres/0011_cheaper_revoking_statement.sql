-- Issue 28: less for the revoking statement to write. `cargo bench --bench statement`
-- measured each part (BENCHMARKS.md, "Where the revoking statement's time goes").
--
-- Foreign keys whose parent row the same statement inserts: each was a trigger firing
-- once per row, looking up the report this very statement had just written (at 1,000
-- tokens, 1,000 calls and about 11 ms each, a fifth of the statement). The statement
-- writes the report, its items and each token's `revoked_by` together, atomically, and
-- nothing deletes a report; `tests/common/db.rs`'s `inconsistencies()` checks that
-- every item's report and every `revoked_by` exist. (Migration 0003 left
-- `notifications.report_id` without one for the same reason, and 0010
-- `stats_format_ages.bucket`.)
ALTER TABLE tokens DROP CONSTRAINT IF EXISTS tokens_revoked_by_fkey;
ALTER TABLE report_items DROP CONSTRAINT IF EXISTS report_items_report_id_fkey;

-- Nothing has read reports by `received_at` alone since the stats rollups (migration
-- 0007); the retention purge reads `reports_to_purge`.
DROP INDEX IF EXISTS reports_received_at;

-- A notification's public id is a UUIDv7 (time first, then 74 random bits): unique by
-- construction, never looked up but by `revoker notify retry ID`. The unique B-tree
-- cost a tenth of the statement at 1,000 tokens; a BRIN index over the time-ordered ids
-- (min/max per range of pages, several per range) finds one in a few ranges for the
-- price of almost nothing per insert.
ALTER TABLE notifications DROP CONSTRAINT IF EXISTS notifications_public_id_key;
CREATE INDEX notifications_public_id ON notifications USING brin (public_id uuid_minmax_multi_ops);
