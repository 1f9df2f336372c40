-- Issue 28: a report's items in one row. The revoking statement wrote one `report_items`
-- row per candidate (heap tuple, primary-key entry, WAL of both): a 1,000-token delivery
-- wrote 1,000 rows for what is read back only whole, by report (the report's page, the
-- outbox, retention, `revoker` commands). It now writes one `report_item_sets` row per
-- report: the candidates' arrays as the delivery sent them (position, hash, type, source,
-- url, found_in) and each one's outcome, in the same order. `report_items` stays, as a
-- view over the sets with the same columns, so every reader reads what it read.
--
-- Measured with pgbench on a copy holding 1,000,000 item rows, 1,000 items generated per
-- insert, each insert its own transaction (which alone, one small row, took 3.5–3.8 ms;
-- generating the items 1.4–2.9 ms): one row per item 12.0–17.4 ms; one row per report
-- with the default compression (pglz) 8.0–11.0 ms, uncompressed 4.6–8.1 ms, lz4 4.4–5.5
-- ms. lz4 stores ~49 KB per 1,000 items, as pglz does, a third of uncompressed.
CREATE TABLE report_item_sets (
    report_id    BIGINT  PRIMARY KEY,   -- reports.id
    positions    INT4[]  NOT NULL,      -- each item's index in the delivery
    hashes       BYTEA[] NOT NULL,      -- the token's SHA-256
    token_types  TEXT[]  NOT NULL,
    sources      TEXT[]  NOT NULL,
    urls         TEXT[]  NOT NULL,
    outcomes     TEXT[]  NOT NULL,      -- revoked, already_revoked, expired or unknown
    found_in     TEXT[]  NOT NULL,      -- empty when no token of the report was found
                                        -- inside an item (unnest pads it with NULLs)
    CHECK (cardinality(hashes) = cardinality(positions)
           AND cardinality(token_types) = cardinality(positions)
           AND cardinality(sources) = cardinality(positions)
           AND cardinality(urls) = cardinality(positions)
           AND cardinality(outcomes) = cardinality(positions)
           AND cardinality(found_in) IN (0, cardinality(positions))),
    CHECK (outcomes <@ ARRAY['revoked', 'already_revoked', 'expired', 'unknown'])
);

-- lz4 where the server was built with it (PostgreSQL 14+ with lz4, as Debian's and the
-- official images are); the default compression otherwise.
DO $$
BEGIN
    ALTER TABLE report_item_sets
        ALTER COLUMN positions SET COMPRESSION lz4, ALTER COLUMN hashes SET COMPRESSION lz4,
        ALTER COLUMN token_types SET COMPRESSION lz4, ALTER COLUMN sources SET COMPRESSION lz4,
        ALTER COLUMN urls SET COMPRESSION lz4, ALTER COLUMN outcomes SET COMPRESSION lz4,
        ALTER COLUMN found_in SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;
END
$$;

-- The rows there are, moved: one set per report that has items, in position order. The
-- table is locked first, whole: an older instance still running its deliveries' 0013
-- function would otherwise insert items after the copy read the table and before it is
-- dropped, and an older purge that read it first would deadlock with the drop. They wait
-- instead, then find the view and fail ("cannot insert into view"; a delivery is answered
-- 503): upgrade with the older instances stopped (README, "What is stored").
LOCK TABLE report_items IN ACCESS EXCLUSIVE MODE;
INSERT INTO report_item_sets (report_id, positions, hashes, token_types, sources, urls,
                              outcomes, found_in)
SELECT report_id, array_agg(position ORDER BY position), array_agg(token_hash ORDER BY position),
       array_agg(token_type ORDER BY position), array_agg(source ORDER BY position),
       array_agg(url ORDER BY position), array_agg(outcome ORDER BY position),
       CASE WHEN bool_or(found_in IS NOT NULL) THEN array_agg(found_in ORDER BY position)
            ELSE '{}' END
FROM report_items
GROUP BY report_id;

DROP TABLE report_items;

-- Every reader's `report_items`, as it was: one row per item.
CREATE VIEW report_items AS
SELECT s.report_id, i.position, i.token_hash, i.token_type, i.source, i.url, i.outcome,
       i.found_in
FROM report_item_sets s
CROSS JOIN LATERAL unnest(s.positions, s.hashes, s.token_types, s.sources, s.urls,
                          s.outcomes, s.found_in)
    AS i (position, token_hash, token_type, source, url, outcome, found_in);

-- The revoking statement writes the set (its `items` part; the rest as in 0013).
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
    -- The report's items in one row (migration 0014): the candidates' arrays as they
    -- came, and each one's outcome in the same order. None for a report without items.
    INSERT INTO report_item_sets (report_id, positions, hashes, token_types, sources, urls,
                                  outcomes, found_in)
    SELECT (SELECT id FROM rid), $1, $2, $3, $4, $5,
           ARRAY(SELECT o.outcome
                 FROM unnest($2::bytea[]) WITH ORDINALITY AS c (hash, n)
                 JOIN outcome o USING (hash)
                 ORDER BY c.n),
           $14
    WHERE (SELECT fresh FROM go) AND cardinality($2::bytea[]) > 0
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
