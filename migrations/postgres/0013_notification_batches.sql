-- Issue 28: the outbox per delivery. The revoking statement wrote one `notifications` row
-- per flipped token: a third of its time at 1,000 tokens (heap, three indexes, a sequence
-- value and a UUIDv7 per row, and their WAL, inside the delivery's latency). It now
-- writes one `notification_batches` row per delivery that flipped something, in the same
-- statement (so it exists exactly when the revocation committed); the outbox turns each
-- batch into the same per-token rows as before (`store/postgres/outbox.rs`), in one statement
-- that deletes the batch: each flipped token still gets exactly one notification, with
-- the same owner, url and source (its report's first item naming it), revoked_at and
-- expired as the delivery would have written.
CREATE TABLE notification_batches (
    report_id  BIGINT      PRIMARY KEY,   -- the report that flipped the tokens
    queued_at  TIMESTAMPTZ NOT NULL,      -- = reports.received_at
    tokens     INTEGER     NOT NULL       -- how many it flipped (the notifications to make)
);

-- Rows the old statement would have queued were queued by it: nothing to move.

CREATE OR REPLACE FUNCTION revoker_record_delivery(
    int4[], bytea[], text[], text[], text[], timestamptz, text, text, bytea, int4, int4,
    boolean, timestamptz, text[]
) RETURNS TABLE (r_report_id int8, r_fresh boolean, r_hash bytea, r_outcome text)
LANGUAGE plpgsql VOLATILE AS $function$
BEGIN
RETURN QUERY
WITH rid AS (
    SELECT nextval('reports_id_seq'::regclass) AS id
), claim AS (
    -- Once per body ($12): claim (scanner, body) unless a claim younger than the window
    -- ($13, the cutoff) holds it. An identical delivery in flight elsewhere holds the key:
    -- this waits for it to commit, then finds it and claims nothing.
    INSERT INTO delivered_bodies (scanner, body_sha256, report_id, delivered_at)
    SELECT $7, $9, (SELECT id FROM rid), $6 WHERE $12::boolean
    ON CONFLICT (scanner, body_sha256) DO UPDATE
        SET report_id = EXCLUDED.report_id, delivered_at = EXCLUDED.delivered_at
        WHERE delivered_bodies.delivered_at < $13
    RETURNING 1
), go AS (
    -- Whether this statement records anything at all.
    SELECT NOT $12::boolean OR EXISTS (SELECT 1 FROM claim) AS fresh
), item AS (
    -- $14, where a token found inside the delivery was found, is empty unless there is
    -- one (unnest pads it with NULLs).
    SELECT * FROM unnest($1::int4[], $2::bytea[], $3::text[], $4::text[], $5::text[], $14::text[])
        AS u(position, hash, token_type, source, url, found_in)
), input AS (
    SELECT DISTINCT hash FROM item
), flipped AS (
    -- Rows are visited, and so locked, in hash order: deliveries naming the same
    -- tokens queue for them instead of locking them in different orders and
    -- deadlocking.
    UPDATE tokens t SET revoked_at = $6, revoked_by = (SELECT id FROM rid)
    FROM (SELECT hash FROM input ORDER BY hash) l
    WHERE t.hash = l.hash AND t.revoked_at IS NULL AND (SELECT fresh FROM go)
    RETURNING t.hash, t.expires_at <= $6 AS was_expired, t.format,
              -- Its age at revocation, in whole milliseconds of both instants (as the
              -- SQLite backend stores them).
              (floor(extract(epoch FROM $6::timestamptz) * 1000)
               - floor(extract(epoch FROM t.created_at) * 1000))::int8 AS age_ms
), outcome AS (
    -- The existence probe runs only for rows that did not flip (CASE is lazy).
    SELECT i.hash,
           CASE WHEN f.hash IS NOT NULL THEN CASE WHEN f.was_expired THEN 'expired' ELSE 'revoked' END
                WHEN EXISTS (SELECT 1 FROM tokens t WHERE t.hash = i.hash) THEN 'already_revoked'
                ELSE 'unknown'
           END AS outcome
    FROM input i
    LEFT JOIN flipped f ON f.hash = i.hash
), report AS (
    INSERT INTO reports (id, scanner, key_id, received_at, body_sha256, item_count, not_ours,
                         revoked, already_revoked, expired, unknown)
    SELECT (SELECT id FROM rid), $7, $8, $6, $9, $10, $11,
           count(*) FILTER (WHERE o.outcome = 'revoked'),
           count(*) FILTER (WHERE o.outcome = 'already_revoked'),
           count(*) FILTER (WHERE o.outcome = 'expired'),
           count(*) FILTER (WHERE o.outcome = 'unknown')
    FROM item JOIN outcome o USING (hash)
    HAVING (SELECT fresh FROM go)
    RETURNING item_count, not_ours, revoked, already_revoked, expired, unknown
), daily AS (
    -- The stats rollups (migration 0007), in this same statement: exactly what it wrote.
    -- Slot: the report id modulo 16, so concurrent deliveries update different rows.
    INSERT INTO stats_daily AS s (day, scanner, slot, reports, items, revoked, already_revoked,
                                  expired, unknown, not_ours, tokens_revoked, tokens_expired,
                                  notifications, last_received_at)
    SELECT ($6::timestamptz AT TIME ZONE 'UTC')::date, $7, (SELECT id FROM rid) % 16, 1,
           r.item_count, r.revoked, r.already_revoked, r.expired, r.unknown, r.not_ours,
           (SELECT count(*) FROM flipped WHERE NOT was_expired),
           (SELECT count(*) FROM flipped WHERE was_expired),
           (SELECT count(*) FROM flipped), $6
    FROM report r
    ON CONFLICT (day, scanner, slot) DO UPDATE SET
        reports = s.reports + 1, items = s.items + EXCLUDED.items,
        revoked = s.revoked + EXCLUDED.revoked,
        already_revoked = s.already_revoked + EXCLUDED.already_revoked,
        expired = s.expired + EXCLUDED.expired, unknown = s.unknown + EXCLUDED.unknown,
        not_ours = s.not_ours + EXCLUDED.not_ours,
        tokens_revoked = s.tokens_revoked + EXCLUDED.tokens_revoked,
        tokens_expired = s.tokens_expired + EXCLUDED.tokens_expired,
        notifications = s.notifications + EXCLUDED.notifications,
        last_received_at = greatest(s.last_received_at, EXCLUDED.last_received_at)
), sources AS (
    INSERT INTO stats_sources AS s (source, slot, items, revoked, already_revoked, expired, unknown)
    SELECT item.source, (SELECT id FROM rid) % 16, count(*),
           count(*) FILTER (WHERE o.outcome = 'revoked'),
           count(*) FILTER (WHERE o.outcome = 'already_revoked'),
           count(*) FILTER (WHERE o.outcome = 'expired'),
           count(*) FILTER (WHERE o.outcome = 'unknown')
    FROM item JOIN outcome o USING (hash)
    WHERE (SELECT fresh FROM go)
    GROUP BY item.source
    ORDER BY item.source
    ON CONFLICT (source, slot) DO UPDATE SET
        items = s.items + EXCLUDED.items, revoked = s.revoked + EXCLUDED.revoked,
        already_revoked = s.already_revoked + EXCLUDED.already_revoked,
        expired = s.expired + EXCLUDED.expired, unknown = s.unknown + EXCLUDED.unknown
), bounds AS (
    -- The histogram's lower bounds in bucket order, read once per statement.
    SELECT array_agg(lo_ms ORDER BY bucket) AS lo FROM stats_age_buckets WHERE bucket > 0
), ages AS (
    -- Each flipped token's age into its format's histogram bucket: `width_bucket`
    -- counts the bounds at or below it (a binary search), which is the bucket's number
    -- (0: under the first bound).
    INSERT INTO stats_format_ages AS s (format, bucket, slot, tokens, expired)
    SELECT f.format, width_bucket(f.age_ms, (SELECT lo FROM bounds)), (SELECT id FROM rid) % 16,
           count(*), count(*) FILTER (WHERE f.was_expired)
    FROM flipped f
    GROUP BY 1, 2
    ORDER BY 1, 2
    ON CONFLICT (format, bucket, slot) DO UPDATE
        SET tokens = s.tokens + EXCLUDED.tokens, expired = s.expired + EXCLUDED.expired
), items AS (
    INSERT INTO report_items (report_id, position, token_hash, token_type, source, url, outcome,
                              found_in)
    SELECT (SELECT id FROM rid), item.position, item.hash, item.token_type, item.source,
           item.url, o.outcome, item.found_in
    FROM item JOIN outcome o USING (hash)
    WHERE (SELECT fresh FROM go)
), queued AS (
    -- The outbox, one row per delivery that flipped a token, in this same statement: it
    -- exists exactly when the revocation committed. The outbox worker turns it into one
    -- owner notification per token this report flipped (its items marked revoked or
    -- expired; `postgres/outbox.rs`), and a token flips once.
    INSERT INTO notification_batches (report_id, queued_at, tokens)
    SELECT (SELECT id FROM rid), $6, count(*) FROM flipped HAVING count(*) > 0
)
SELECT (SELECT id FROM rid) AS report_id, (SELECT fresh FROM go) AS fresh, hash, outcome
FROM outcome;
END
$function$;
