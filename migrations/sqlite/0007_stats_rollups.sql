-- Stats that cost O(days), not O(history): the same tables as on PostgreSQL (see its
-- 0007 for the whole story), kept by the delivery's own transaction (record.rs). SQLite
-- has one writer at a time, so every row is slot 0. Days are 'YYYY-MM-DD' (UTC).

CREATE TABLE stats_daily (
    day             TEXT    NOT NULL,
    scanner         TEXT    NOT NULL,
    slot            INTEGER NOT NULL,
    reports         INTEGER NOT NULL DEFAULT 0,
    items           INTEGER NOT NULL DEFAULT 0,
    revoked         INTEGER NOT NULL DEFAULT 0,
    already_revoked INTEGER NOT NULL DEFAULT 0,
    expired         INTEGER NOT NULL DEFAULT 0,
    unknown         INTEGER NOT NULL DEFAULT 0,
    not_ours        INTEGER NOT NULL DEFAULT 0,
    tokens_revoked  INTEGER NOT NULL DEFAULT 0,
    tokens_expired  INTEGER NOT NULL DEFAULT 0,
    notifications   INTEGER NOT NULL DEFAULT 0,
    last_received_at INTEGER,
    PRIMARY KEY (day, scanner, slot)
) WITHOUT ROWID;

CREATE TABLE stats_sources (
    source          TEXT    NOT NULL,
    slot            INTEGER NOT NULL,
    items           INTEGER NOT NULL DEFAULT 0,
    revoked         INTEGER NOT NULL DEFAULT 0,
    already_revoked INTEGER NOT NULL DEFAULT 0,
    expired         INTEGER NOT NULL DEFAULT 0,
    unknown         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (source, slot)
) WITHOUT ROWID;

-- Bucket 0: under 10 ms; then E24 bounds from 10 ms to 9.1e11 ms.
CREATE TABLE stats_age_buckets (
    bucket INTEGER PRIMARY KEY,
    lo_ms  INTEGER NOT NULL UNIQUE
);
INSERT INTO stats_age_buckets (bucket, lo_ms) VALUES (0, -9223372036854775808);
INSERT INTO stats_age_buckets (bucket, lo_ms)
WITH RECURSIVE decade(p) AS (
    SELECT 1 UNION ALL SELECT p * 10 FROM decade WHERE p < 10000000000
), e24(m) AS (
    VALUES (10), (11), (12), (13), (15), (16), (18), (20), (22), (24), (27), (30),
           (33), (36), (39), (43), (47), (51), (56), (62), (68), (75), (82), (91)
)
SELECT row_number() OVER (ORDER BY m * p), m * p FROM decade, e24;

CREATE TABLE stats_ages (
    bucket INTEGER NOT NULL REFERENCES stats_age_buckets (bucket),
    slot   INTEGER NOT NULL,
    tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, slot)
) WITHOUT ROWID;

CREATE TABLE stats_notifications (
    status TEXT    NOT NULL CHECK (status IN ('delivered', 'failed')),
    slot   INTEGER NOT NULL,
    n      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (status, slot)
) WITHOUT ROWID;

CREATE TRIGGER notifications_status_stats
AFTER UPDATE OF status ON notifications
WHEN OLD.status IS NOT NEW.status
BEGIN
    INSERT INTO stats_notifications (status, slot, n)
    SELECT OLD.status, 0, -1 WHERE OLD.status <> 'pending'
    ON CONFLICT (status, slot) DO UPDATE SET n = n - 1;
    INSERT INTO stats_notifications (status, slot, n)
    SELECT NEW.status, 0, 1 WHERE NEW.status <> 'pending'
    ON CONFLICT (status, slot) DO UPDATE SET n = n + 1;
END;

-- The history so far, once. `/ 1000.0`: times before 1970 on the right day.
-- stats_sources reads as `report_items` does now: the retention purge moves what it
-- rewrites to '(purged)' there too (no source value outlives its items, §7.1).
INSERT INTO stats_daily (day, scanner, slot, reports, items, revoked, already_revoked,
                         expired, unknown, not_ours, last_received_at)
SELECT date(received_at / 1000.0, 'unixepoch'), scanner, 0, count(*), sum(item_count),
       sum(revoked), sum(already_revoked), sum(expired), sum(unknown), sum(not_ours),
       max(received_at)
FROM reports
GROUP BY 1, 2;

INSERT INTO stats_daily (day, scanner, slot, tokens_revoked, tokens_expired)
SELECT date(r.received_at / 1000.0, 'unixepoch'), r.scanner, 0,
       sum(t.expires_at > t.revoked_at), sum(t.expires_at <= t.revoked_at)
FROM tokens t JOIN reports r ON r.id = t.revoked_by
GROUP BY 1, 2
ON CONFLICT (day, scanner, slot) DO UPDATE
    SET tokens_revoked = excluded.tokens_revoked, tokens_expired = excluded.tokens_expired;

INSERT INTO stats_daily (day, scanner, slot, notifications)
SELECT date(revoked_at / 1000.0, 'unixepoch'), scanner, 0, count(*)
FROM notifications
GROUP BY 1, 2
ON CONFLICT (day, scanner, slot) DO UPDATE SET notifications = excluded.notifications;

INSERT INTO stats_sources (source, slot, items, revoked, already_revoked, expired, unknown)
SELECT substr(source, 1, 200), 0, count(*), sum(outcome = 'revoked'), sum(outcome = 'already_revoked'),
       sum(outcome = 'expired'), sum(outcome = 'unknown')
FROM report_items
GROUP BY 1;

INSERT INTO stats_ages (bucket, slot, tokens)
SELECT (SELECT bucket FROM stats_age_buckets WHERE lo_ms <= t.revoked_at - t.created_at
        ORDER BY lo_ms DESC LIMIT 1) AS b,
       0, count(*)
FROM tokens t
WHERE t.revoked_by IS NOT NULL AND t.revoked_at IS NOT NULL
GROUP BY b;

INSERT INTO stats_notifications (status, slot, n)
SELECT status, 0, count(*) FROM notifications WHERE status <> 'pending' GROUP BY status;
