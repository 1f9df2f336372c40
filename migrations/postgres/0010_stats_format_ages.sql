-- Token counts and ages at revocation per token format (issue 27): the age histogram of
-- `stats_ages`, split by format (a registry's imported tokens were created long before
-- revoker knew them; their ages are not those of the tokens revoker mints) and, per
-- bucket, how many of its tokens had expired. Kept by the revoking statement like
-- `stats_ages` was, and filled here from `tokens`: the rows migration 0007 counted
-- (tokens revoked by a report), grouped by format.
--
-- A new table, so that older binaries still running during an upgrade keep recording
-- (into `stats_ages`, which nothing reads any more): what they revoke meanwhile is not
-- in this table. A later migration can drop `stats_ages` once no older binary runs.
CREATE TABLE stats_format_ages (
    format  text     NOT NULL,
    -- A bucket of `stats_age_buckets` (no foreign key: its check would run per row of
    -- the revoking statement, which reads the bucket from that table itself).
    bucket  integer  NOT NULL,
    slot    smallint NOT NULL,
    -- Tokens revoked by a report at this age, live or expired…
    tokens  bigint   NOT NULL DEFAULT 0,
    -- …and of those, the ones that had expired.
    expired bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (format, bucket, slot)
);

INSERT INTO stats_format_ages (format, bucket, slot, tokens, expired)
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
