-- A globally unique notification id: the webhook's Idempotency-Key and the body's "id".
-- The row id (`notifications.id`) counts per database, so two databases (staging and
-- production, or a restored backup) notifying one hook would both send 1, 2, …, and a
-- receiver deduplicating on them would drop real alerts. A UUIDv7 (48-bit Unix
-- milliseconds, then 74 random bits), as lower-case text, is minted by the database
-- with every row, so the statement that queues notifications with the revocation does
-- not name it.
--
-- `ALTER TABLE ADD COLUMN` takes no non-constant default, so the table is rebuilt with
-- one: `DEFAULT (expression)` is evaluated for every inserted row (SQLite's 'now' is
-- stable within one statement step, so both halves of the timestamp agree;
-- julianday rather than unixepoch('subsec'), which needs SQLite 3.42).

CREATE TABLE notifications_new (
    -- AUTOINCREMENT: a row id is never reused.
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The public id: UUIDv7, lower-case hyphenated text.
    public_id       TEXT    NOT NULL UNIQUE DEFAULT (
        lower(
            substr(printf('%012x', CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)), 1, 8) || '-' ||
            substr(printf('%012x', CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)), 9, 4) || '-7' ||
            substr(hex(randomblob(2)), 2, 3) || '-' ||
            substr('89ab', 1 + (random() & 3), 1) || substr(hex(randomblob(2)), 2, 3) || '-' ||
            hex(randomblob(6))
        )
    ) CHECK (length(public_id) = 36),
    token_hash      BLOB    NOT NULL CHECK (length(token_hash) = 32),
    report_id       INTEGER NOT NULL,   -- the report that revoked it (= tokens.revoked_by)
    owner           TEXT    NOT NULL,               -- tokens.owner
    scanner         TEXT    NOT NULL,
    url             TEXT    NOT NULL,               -- first item of the delivery naming it
    source          TEXT    NOT NULL,
    revoked_at      INTEGER NOT NULL,
    expired         INTEGER NOT NULL CHECK (expired IN (0, 1)),   -- had expired when reported
    status          TEXT    NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,     -- attempts started (each claim counts one)
    next_attempt_at INTEGER NOT NULL,
    locked_until    INTEGER,                        -- the lease of the worker sending it
    last_error      TEXT,
    delivered_at    INTEGER
);

-- Existing rows keep their row ids and get a public id each from the default.
INSERT INTO notifications_new (id, token_hash, report_id, owner, scanner, url, source,
                               revoked_at, expired, status, attempts, next_attempt_at,
                               locked_until, last_error, delivered_at)
SELECT id, token_hash, report_id, owner, scanner, url, source, revoked_at, expired, status,
       attempts, next_attempt_at, locked_until, last_error, delivered_at
FROM notifications ORDER BY id;

-- Keep the old table's high-water mark, so a row id is not reused after the rebuild.
DELETE FROM sqlite_sequence WHERE name = 'notifications_new';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'notifications_new', seq FROM sqlite_sequence WHERE name = 'notifications';

DROP TABLE notifications;
ALTER TABLE notifications_new RENAME TO notifications;

CREATE INDEX notifications_due ON notifications (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX notifications_failed ON notifications (id) WHERE status = 'failed';
