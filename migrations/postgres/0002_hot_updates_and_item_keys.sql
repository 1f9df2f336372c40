-- Revocation is an UPDATE of revoked_at/revoked_by, neither of them indexed. Leaving
-- 20% free space per page lets PostgreSQL update the row in place (a HOT update)
-- instead of adding an entry to the primary-key index for every revoked token.
-- Applies to pages written from now on.
ALTER TABLE tokens SET (fillfactor = 80);

-- An item is identified by its report and its position in the delivery. That key
-- replaces the surrogate id and the separate report_id index: one index fewer to
-- maintain for every reported item.
ALTER TABLE report_items DROP CONSTRAINT report_items_pkey;
ALTER TABLE report_items DROP COLUMN id;
DROP INDEX report_items_report;
ALTER TABLE report_items ADD PRIMARY KEY (report_id, position);

-- Nothing reads report_items by token hash yet, and an index on random 32-byte keys
-- is paid for by every reported item. Add it back with the feature that needs it
-- ("every report that named this token").
DROP INDEX report_items_token;
