-- revoker schema, PostgreSQL.
-- No column ever holds a raw token: tokens are identified by SHA-256 of the whole string.

CREATE TABLE reports (
    id              BIGSERIAL   PRIMARY KEY,
    scanner         TEXT        NOT NULL,        -- configured scanner name, or 'replay'
    key_id          TEXT        NOT NULL,        -- key identifier that signed the delivery
    received_at     TIMESTAMPTZ NOT NULL,
    body_sha256     BYTEA       NOT NULL,        -- SHA-256 of the exact raw body
    item_count      INTEGER     NOT NULL,
    revoked         INTEGER     NOT NULL DEFAULT 0,
    already_revoked INTEGER     NOT NULL DEFAULT 0,
    expired         INTEGER     NOT NULL DEFAULT 0,
    unknown         INTEGER     NOT NULL DEFAULT 0,
    not_ours        INTEGER     NOT NULL DEFAULT 0
);
CREATE INDEX reports_received_at ON reports (received_at);

CREATE TABLE tokens (
    hash        BYTEA       PRIMARY KEY CHECK (length(hash) = 32),
    owner       TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    revoked_at  TIMESTAMPTZ,
    revoked_by  BIGINT      REFERENCES reports (id)   -- the report that revoked it
);

CREATE TABLE report_items (
    id          BIGSERIAL PRIMARY KEY,
    report_id   BIGINT    NOT NULL REFERENCES reports (id),
    position    INTEGER   NOT NULL,                 -- index of the item in the delivery
    token_hash  BYTEA     NOT NULL CHECK (length(token_hash) = 32),
    token_type  TEXT      NOT NULL,
    source      TEXT      NOT NULL,
    url         TEXT      NOT NULL,
    outcome     TEXT      NOT NULL CHECK (outcome IN ('revoked', 'already_revoked', 'expired', 'unknown'))
);
CREATE INDEX report_items_report ON report_items (report_id);
CREATE INDEX report_items_token ON report_items (token_hash);
