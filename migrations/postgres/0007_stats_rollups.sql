-- Stats that cost O(days), not O(history). /api/stats used to aggregate `reports`,
-- `report_items` and `tokens` on every call (0.83 s at 2 M items, growing with every
-- alert). These tables are kept by the revoking statement itself (record.rs), in the same
-- statement and snapshot as the rows they count, so they are exactly the database's view
-- on every instance. The retention purge leaves the totals alone; it only moves the
-- per-source counts of what it purges to '(purged)'.
--
-- Slots: each table is split by `slot` = report id (or notification id) modulo 16, so
-- concurrent deliveries on many instances update different rows instead of queueing
-- on one. Readers sum over slots.

-- Per UTC day and scanner.
CREATE TABLE stats_daily (
    day             date     NOT NULL,           -- UTC day of reports.received_at
    scanner         text     NOT NULL,
    slot            smallint NOT NULL,
    reports         bigint   NOT NULL DEFAULT 0,
    items           bigint   NOT NULL DEFAULT 0,
    -- Occurrences (report items) by outcome, as the reports' own counts.
    revoked         bigint   NOT NULL DEFAULT 0,
    already_revoked bigint   NOT NULL DEFAULT 0,
    expired         bigint   NOT NULL DEFAULT 0,
    unknown         bigint   NOT NULL DEFAULT 0,
    not_ours        bigint   NOT NULL DEFAULT 0,
    -- Distinct tokens revoked (a token flips once, ever): live ones and expired ones.
    tokens_revoked  bigint   NOT NULL DEFAULT 0,
    tokens_expired  bigint   NOT NULL DEFAULT 0,
    -- Owner notifications queued (one per token flipped since 0003).
    notifications   bigint   NOT NULL DEFAULT 0,
    -- The latest report of the day (the on-call panel's "last report").
    last_received_at timestamptz,
    PRIMARY KEY (day, scanner, slot)
);

-- All-time per source (occurrences by outcome), as `report_items` reads now: the
-- retention purge moves what it rewrites to '(purged)' here too, so no source value
-- outlives the items it came from (GitHub's agreement §7.1). A report's items are in
-- the slot of its id, so the purge subtracts exactly what the delivery added.
CREATE TABLE stats_sources (
    source          text     NOT NULL,
    slot            smallint NOT NULL,
    items           bigint   NOT NULL DEFAULT 0,
    revoked         bigint   NOT NULL DEFAULT 0,
    already_revoked bigint   NOT NULL DEFAULT 0,
    expired         bigint   NOT NULL DEFAULT 0,
    unknown         bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (source, slot)
);

-- Token ages at revocation as a histogram. Bucket N > 0 holds ages from its lo_ms up to
-- the next bucket's; bounds follow the E24 series (1.0, 1.1, 1.2, 1.3, 1.5 … 9.1 per
-- decade, steps of at most 15.4 %) from 10 ms to 9.1e11 ms (29 years); bucket 0 is
-- everything under 10 ms (negative ages too: a token minted on a host whose clock runs
-- ahead).
CREATE TABLE stats_age_buckets (
    bucket integer PRIMARY KEY,
    lo_ms  bigint  NOT NULL UNIQUE
);
INSERT INTO stats_age_buckets (bucket, lo_ms) VALUES (0, -9223372036854775808);
INSERT INTO stats_age_buckets (bucket, lo_ms)
WITH RECURSIVE decade(p) AS (
    SELECT 1::bigint UNION ALL SELECT p * 10 FROM decade WHERE p < 10000000000
), e24(m) AS (
    VALUES (10), (11), (12), (13), (15), (16), (18), (20), (22), (24), (27), (30),
           (33), (36), (39), (43), (47), (51), (56), (62), (68), (75), (82), (91)
)
SELECT row_number() OVER (ORDER BY m * p), m * p FROM decade, e24;

CREATE TABLE stats_ages (
    bucket integer  NOT NULL REFERENCES stats_age_buckets (bucket),
    slot   smallint NOT NULL,
    tokens bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, slot)
);

-- Notifications now delivered or failed (pending = queued − delivered − failed), kept
-- by a trigger on every status change, whatever makes it (worker, `revoker notify`, or
-- an operator's UPDATE).
CREATE TABLE stats_notifications (
    status text     NOT NULL CHECK (status IN ('delivered', 'failed')),
    slot   smallint NOT NULL,
    n      bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (status, slot)
);

CREATE FUNCTION stats_notification_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'pending' THEN
        INSERT INTO stats_notifications AS s (status, slot, n) VALUES (OLD.status, OLD.id % 16, -1)
        ON CONFLICT (status, slot) DO UPDATE SET n = s.n - 1;
    END IF;
    IF NEW.status <> 'pending' THEN
        INSERT INTO stats_notifications AS s (status, slot, n) VALUES (NEW.status, NEW.id % 16, 1)
        ON CONFLICT (status, slot) DO UPDATE SET n = s.n + 1;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER notifications_status_stats
    AFTER UPDATE OF status ON notifications
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION stats_notification_status();

-- The history so far, once, each report in its slot as if the deliveries had written it.
INSERT INTO stats_daily (day, scanner, slot, reports, items, revoked, already_revoked,
                         expired, unknown, not_ours, last_received_at)
SELECT (received_at AT TIME ZONE 'UTC')::date, scanner, id % 16, count(*), sum(item_count),
       sum(revoked), sum(already_revoked), sum(expired), sum(unknown), sum(not_ours),
       max(received_at)
FROM reports
GROUP BY 1, 2, 3;

INSERT INTO stats_daily AS s (day, scanner, slot, tokens_revoked, tokens_expired)
SELECT (r.received_at AT TIME ZONE 'UTC')::date, r.scanner, r.id % 16,
       count(*) FILTER (WHERE t.expires_at > t.revoked_at),
       count(*) FILTER (WHERE t.expires_at <= t.revoked_at)
FROM tokens t JOIN reports r ON r.id = t.revoked_by
GROUP BY 1, 2, 3
ON CONFLICT (day, scanner, slot) DO UPDATE
    SET tokens_revoked = EXCLUDED.tokens_revoked, tokens_expired = EXCLUDED.tokens_expired;

INSERT INTO stats_daily AS s (day, scanner, slot, notifications)
SELECT (revoked_at AT TIME ZONE 'UTC')::date, scanner, report_id % 16, count(*)
FROM notifications
GROUP BY 1, 2, 3
ON CONFLICT (day, scanner, slot) DO UPDATE SET notifications = EXCLUDED.notifications;

INSERT INTO stats_sources (source, slot, items, revoked, already_revoked, expired, unknown)
-- Sources as deliveries now store them: at most 200 characters (the index's limit).
SELECT left(source, 200), report_id % 16, count(*),
       count(*) FILTER (WHERE outcome = 'revoked'),
       count(*) FILTER (WHERE outcome = 'already_revoked'),
       count(*) FILTER (WHERE outcome = 'expired'),
       count(*) FILTER (WHERE outcome = 'unknown')
FROM report_items
GROUP BY 1, 2;

INSERT INTO stats_ages (bucket, slot, tokens)
SELECT b.bucket, t.revoked_by % 16, count(*)
FROM tokens t
CROSS JOIN LATERAL (
    SELECT bucket FROM stats_age_buckets
    WHERE lo_ms <= (floor(extract(epoch FROM t.revoked_at) * 1000)
                    - floor(extract(epoch FROM t.created_at) * 1000))::int8
    ORDER BY lo_ms DESC LIMIT 1
) b
WHERE t.revoked_by IS NOT NULL AND t.revoked_at IS NOT NULL
GROUP BY 1, 2;

INSERT INTO stats_notifications (status, slot, n)
SELECT status, id % 16, count(*) FROM notifications WHERE status <> 'pending' GROUP BY 1, 2;
