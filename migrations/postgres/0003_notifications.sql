-- Owner notifications: the outbox. The delivery that flips a token to revoked queues
-- one row for it in the same statement (one notification per token, ever); a worker
-- claims due rows with a lease, POSTs them to the owner webhook and records the result.
-- Like everywhere else, no raw token: only its SHA-256.

-- Neither a foreign key on report_id nor an index on token_hash: the statement that
-- inserts a row also inserts its report and flips the token (revoked_at from NULL,
-- revoked_by = report_id, which has a foreign key), and a token flips once; that is
-- what makes it one notification per revoked token. Each per-row check cost about
-- 5 ms per 1,000 revoked tokens in one delivery (the random-order token_hash index
-- more on SQLite), and nothing looks rows up by token.
CREATE TABLE notifications (
    id              BIGSERIAL   PRIMARY KEY,        -- also the webhook's idempotency key
    token_hash      BYTEA       NOT NULL CHECK (length(token_hash) = 32),
    report_id       BIGINT      NOT NULL,   -- the report that revoked it (= tokens.revoked_by)
    owner           TEXT        NOT NULL,           -- tokens.owner
    scanner         TEXT        NOT NULL,
    url             TEXT        NOT NULL,           -- first item of the delivery naming it
    source          TEXT        NOT NULL,
    revoked_at      TIMESTAMPTZ NOT NULL,
    expired         BOOLEAN     NOT NULL,           -- had expired when reported (revoked anyway)
    status          TEXT        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER     NOT NULL DEFAULT 0, -- attempts started (each claim counts one)
    next_attempt_at TIMESTAMPTZ NOT NULL,
    locked_until    TIMESTAMPTZ,                    -- the lease of the worker sending it
    last_error      TEXT,
    delivered_at    TIMESTAMPTZ
);

-- The claim query: pending rows, oldest due first (id breaks ties, so the index gives
-- the whole ORDER BY). Delivered rows, the bulk of the table over time, are not in it.
CREATE INDEX notifications_due ON notifications (next_attempt_at, id) WHERE status = 'pending';
-- Failed rows: listed, counted and re-queued by `revoker notify`; few, so cheap to keep.
CREATE INDEX notifications_failed ON notifications (id) WHERE status = 'failed';
