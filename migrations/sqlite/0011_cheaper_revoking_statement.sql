-- Issue 28: less for the recording transaction to write. Nothing has read reports by
-- `received_at` alone since the stats rollups (migration 0007); the retention purge
-- reads `reports_to_purge`.
DROP INDEX IF EXISTS reports_received_at;
