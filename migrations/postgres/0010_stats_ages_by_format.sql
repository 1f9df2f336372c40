-- Token counts and ages at revocation per token format (issue 27): the age histogram
-- gains the format (a registry's imported tokens were created long before revoker knew
-- them; their ages are not those of the tokens revoker mints) and, per bucket, how many
-- of its tokens had expired. Kept by the revoking statement like before (one more
-- column in the same `INSERT … ON CONFLICT`), and refilled here from `tokens`: the same
-- rows migration 0007 counted (tokens revoked by a report), now grouped by format.
-- The key changes: an older binary's revoking statement fails against it (its deliveries
-- are answered 503 and retried), so run this with the older instances stopped.
DROP TABLE stats_ages;

CREATE TABLE stats_ages (
    format  text     NOT NULL,
    bucket  integer  NOT NULL REFERENCES stats_age_buckets (bucket),
    slot    smallint NOT NULL,
    -- Tokens revoked by a report at this age, live or expired…
    tokens  bigint   NOT NULL DEFAULT 0,
    -- …and of those, the ones that had expired.
    expired bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (format, bucket, slot)
);

INSERT INTO stats_ages (format, bucket, slot, tokens, expired)
SELECT t.format, b.bucket, t.revoked_by % 16, count(*),
       count(*) FILTER (WHERE t.expires_at <= t.revoked_at)
FROM tokens t
CROSS JOIN LATERAL (
    SELECT bucket FROM stats_age_buckets
    WHERE lo_ms <= (floor(extract(epoch FROM t.revoked_at) * 1000)
                    - floor(extract(epoch FROM t.created_at) * 1000))::int8
    ORDER BY lo_ms DESC LIMIT 1
) b
WHERE t.revoked_by IS NOT NULL AND t.revoked_at IS NOT NULL
GROUP BY 1, 2, 3;
