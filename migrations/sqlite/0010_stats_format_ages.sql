-- Token counts and ages at revocation per token format (issue 27): the age histogram of
-- `stats_ages`, split by format (a registry's imported tokens were created long before
-- revoker knew them; their ages are not those of the tokens revoker mints) and, per
-- bucket, how many of its tokens had expired. Kept by the recording transaction like
-- `stats_ages` was, and filled here from `tokens`: the rows migration 0007 counted
-- (tokens revoked by a report), grouped by format. A new table, so that an older binary
-- still running keeps recording (into `stats_ages`, which nothing reads any more).
CREATE TABLE stats_format_ages (
    format  TEXT    NOT NULL,
    bucket  INTEGER NOT NULL REFERENCES stats_age_buckets (bucket),
    slot    INTEGER NOT NULL,
    -- Tokens revoked by a report at this age, live or expired…
    tokens  INTEGER NOT NULL DEFAULT 0,
    -- …and of those, the ones that had expired.
    expired INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (format, bucket, slot)
) WITHOUT ROWID;

INSERT INTO stats_format_ages (format, bucket, slot, tokens, expired)
SELECT t.format,
       (SELECT bucket FROM stats_age_buckets WHERE lo_ms <= t.revoked_at - t.created_at
        ORDER BY lo_ms DESC LIMIT 1) AS b,
       0, count(*), sum(t.expires_at <= t.revoked_at)
FROM tokens t
WHERE t.revoked_by IS NOT NULL AND t.revoked_at IS NOT NULL
GROUP BY t.format, b;
