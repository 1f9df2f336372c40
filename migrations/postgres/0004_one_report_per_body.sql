-- One report per delivered body. A scanner that sends a body it already delivered (its
-- retry after a 5xx or a timeout, or after an acknowledgement that was lost) is answered
-- from the report that body was recorded as, and nothing is recorded again. One row per
-- (scanner, exact body): the revoking statement inserts it first, so of two identical
-- deliveries racing on two instances the second waits on this key and then finds it.
-- A body older than the window (`store::ONCE_PER_BODY_WINDOW`) is recorded anew, and its
-- row then points at the new report.
-- No foreign key to reports: one check per delivery for nothing the statement does not
-- already guarantee (it inserts the report with this row), and retention may purge
-- reports before these rows.
CREATE TABLE delivered_bodies (
    scanner      TEXT        NOT NULL,
    body_sha256  BYTEA       NOT NULL CHECK (length(body_sha256) = 32),
    report_id    BIGINT      NOT NULL,
    delivered_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (scanner, body_sha256)
);
