-- One report per delivered body. A scanner that sends a body it already delivered (its
-- retry after a 5xx or a timeout, or after an acknowledgement that was lost) is answered
-- from the report that body was recorded as, and nothing is recorded again. One row per
-- (scanner, exact body), written in the delivery's transaction under SQLite's one write
-- lock. A body older than the window (`store::ONCE_PER_BODY_WINDOW`) is recorded anew,
-- and its row then points at the new report. Times are Unix epoch milliseconds (UTC).
CREATE TABLE delivered_bodies (
    scanner      TEXT    NOT NULL,
    body_sha256  BLOB    NOT NULL CHECK (length(body_sha256) = 32),
    report_id    INTEGER NOT NULL,
    delivered_at INTEGER NOT NULL,
    PRIMARY KEY (scanner, body_sha256)
) WITHOUT ROWID;
