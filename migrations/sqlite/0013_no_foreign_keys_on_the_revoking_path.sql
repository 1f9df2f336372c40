-- Issue 28: as PostgreSQL's migration 0011, the foreign keys `tokens.revoked_by` and
-- `report_items.report_id` → `reports (id)` go. With `foreign_keys` on (every connection
-- of the store), SQLite looked up, for each token the revoking `UPDATE` flipped and each
-- item row inserted, the report that the same transaction had just inserted: ~12 ms of a
-- 1,000-token delivery (measured on a copy of the schema with 1,000,000 tokens). The
-- recording transaction writes the report, the flips and the items together, so the keys
-- never refused anything it did; the test suite's consistency check
-- (`tests/common/db.rs`) still looks for rows of no report.
--
-- SQLite cannot drop a constraint: both tables are rebuilt, in this migration's
-- transaction (on a large `tokens` table this takes a while: about 2 s per million
-- tokens here; deliveries wait for it). Same columns in the same order, same keys and
-- checks, WITHOUT ROWID as before; nothing else refers to either table.
CREATE TABLE tokens_new (
    hash        BLOB    PRIMARY KEY CHECK (length(hash) = 32),
    owner       TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER,
    revoked_by  INTEGER,                          -- reports.id of the report that revoked it
    format      TEXT    NOT NULL DEFAULT 'cio_tp'
) WITHOUT ROWID;
INSERT INTO tokens_new (hash, owner, created_at, expires_at, revoked_at, revoked_by, format)
    SELECT hash, owner, created_at, expires_at, revoked_at, revoked_by, format FROM tokens;
DROP TABLE tokens;
ALTER TABLE tokens_new RENAME TO tokens;

CREATE TABLE report_items_new (
    report_id   INTEGER NOT NULL,                 -- reports.id
    position    INTEGER NOT NULL,                 -- index of the item in the delivery
    token_hash  BLOB    NOT NULL CHECK (length(token_hash) = 32),
    token_type  TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    url         TEXT    NOT NULL,
    outcome     TEXT    NOT NULL CHECK (outcome IN ('revoked', 'already_revoked', 'expired', 'unknown')),
    found_in    TEXT,
    PRIMARY KEY (report_id, position)
) WITHOUT ROWID;
INSERT INTO report_items_new (report_id, position, token_hash, token_type, source, url, outcome, found_in)
    SELECT report_id, position, token_hash, token_type, source, url, outcome, found_in FROM report_items;
DROP TABLE report_items;
ALTER TABLE report_items_new RENAME TO report_items;
