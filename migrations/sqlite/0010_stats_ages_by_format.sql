-- Token counts and ages at revocation per token format (issue 27): the age histogram
-- gains the format (a registry's imported tokens were created long before revoker knew
-- them; their ages are not those of the tokens revoker mints) and, per bucket, how many
-- of its tokens had expired. Kept by the recording transaction like before, and refilled
-- here from `tokens`: the same rows migration 0007 counted (tokens revoked by a report),
-- now grouped by format.
DROP TABLE stats_ages;

CREATE TABLE stats_ages (
    format  TEXT    NOT NULL,
    bucket  INTEGER NOT NULL REFERENCES stats_age_buckets (bucket),
    slot    INTEGER NOT NULL,
    -- Tokens revoked by a report at this age, live or expired…
    tokens  INTEGER NOT NULL DEFAULT 0,
    -- …and of those, the ones that had expired.
    expired INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (format, bucket, slot)
) WITHOUT ROWID;

INSERT INTO stats_ages (format, bucket, slot, tokens, expired)
SELECT t.format,
       (SELECT bucket FROM stats_age_buckets WHERE lo_ms <= t.revoked_at - t.created_at
        ORDER BY lo_ms DESC LIMIT 1) AS b,
       0, count(*), sum(t.expires_at <= t.revoked_at)
FROM tokens t
WHERE t.revoked_by IS NOT NULL AND t.revoked_at IS NOT NULL
GROUP BY t.format, b;
