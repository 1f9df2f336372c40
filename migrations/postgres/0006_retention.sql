-- Retention of GitHub Metadata (GitHub's partner agreement §7.1: `url`, `source` and
-- `type` deleted within 30 days). The purge (`revoker purge`, and `serve` hourly)
-- overwrites them with '(purged)' in report_items and notifications; rows, hashes,
-- outcomes, counts and timestamps stay.

-- On a large database, prepare it first without blocking deliveries: add the column
-- (`ALTER TABLE reports ADD COLUMN IF NOT EXISTS metadata_purged_at timestamptz`, instant),
-- then build both indexes with `CREATE INDEX CONCURRENTLY IF NOT EXISTS …` and the
-- definitions below (check `pg_index.indisvalid` afterwards: an interrupted concurrent
-- build leaves an invalid index, which this migration would take as built). This
-- migration then finds all three. Built here instead, its transaction holds
-- `reports` exclusively (reads too) while the indexes build.

-- When a report's items were purged; NULL: not yet. (A nullable column without a
-- default: no table rewrite.)
ALTER TABLE reports ADD COLUMN IF NOT EXISTS metadata_purged_at timestamptz;

-- What the purge looks for: reports not purged yet, oldest first. Purged reports, the
-- bulk of the table over time, are not in it, so a purge with nothing to do is one
-- index probe however long the history.
CREATE INDEX IF NOT EXISTS reports_to_purge ON reports (received_at) WHERE metadata_purged_at IS NULL;

-- The same for notifications, whose url/source are copies of an item's. (A scanner's
-- own url "(purged)" leaves the row in the index until its source is purged too.)
CREATE INDEX IF NOT EXISTS notifications_to_purge ON notifications (revoked_at)
    WHERE url <> '(purged)' OR source <> '(purged)';
