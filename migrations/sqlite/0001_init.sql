-- revoker schema, SQLite. Timestamps are Unix epoch milliseconds (UTC).
-- No column ever holds a raw token: tokens are identified by SHA-256 of the whole string.

CREATE TABLE reports (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    scanner         TEXT    NOT NULL,            -- configured scanner name, or 'replay'
    key_id          TEXT    NOT NULL,            -- key identifier that signed the delivery
    received_at     INTEGER NOT NULL,
    body_sha256     BLOB    NOT NULL,            -- SHA-256 of the exact raw body
    item_count      INTEGER NOT NULL,
    revoked         INTEGER NOT NULL DEFAULT 0,
    already_revoked INTEGER NOT NULL DEFAULT 0,
    expired         INTEGER NOT NULL DEFAULT 0,
    unknown         INTEGER NOT NULL DEFAULT 0,
    not_ours        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX reports_received_at ON reports (received_at);

CREATE TABLE tokens (
    hash        BLOB    PRIMARY KEY CHECK (length(hash) = 32),
    owner       TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER,
    revoked_by  INTEGER REFERENCES reports (id)   -- the report that revoked it
) WITHOUT ROWID;

CREATE TABLE report_items (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    report_id   INTEGER NOT NULL REFERENCES reports (id),
    position    INTEGER NOT NULL,                 -- index of the item in the delivery
    token_hash  BLOB    NOT NULL CHECK (length(token_hash) = 32),
    token_type  TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    url         TEXT    NOT NULL,
    outcome     TEXT    NOT NULL CHECK (outcome IN ('revoked', 'already_revoked', 'expired', 'unknown'))
);
CREATE INDEX report_items_report ON report_items (report_id);
CREATE INDEX report_items_token ON report_items (token_hash);
