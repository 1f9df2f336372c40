-- An item is identified by its report and its position in the delivery; that key
-- replaces the surrogate id and the separate report_id index (one index fewer per item).
CREATE TABLE report_items_new (
    report_id   INTEGER NOT NULL REFERENCES reports (id),
    position    INTEGER NOT NULL,                 -- index of the item in the delivery
    token_hash  BLOB    NOT NULL CHECK (length(token_hash) = 32),
    token_type  TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    url         TEXT    NOT NULL,
    outcome     TEXT    NOT NULL CHECK (outcome IN ('revoked', 'already_revoked', 'expired', 'unknown')),
    PRIMARY KEY (report_id, position)
) WITHOUT ROWID;
INSERT INTO report_items_new (report_id, position, token_hash, token_type, source, url, outcome)
    SELECT report_id, position, token_hash, token_type, source, url, outcome FROM report_items;
DROP TABLE report_items;
ALTER TABLE report_items_new RENAME TO report_items;
-- No index on token_hash: nothing reads report_items by token yet (see the PostgreSQL
-- migration); the old index went with the old table. Add it back with the feature that needs it.
