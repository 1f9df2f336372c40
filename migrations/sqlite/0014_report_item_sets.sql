-- Issue 28: a report's items in one row, as PostgreSQL's migration 0014. The recording
-- transaction inserted one `report_items` row per candidate (a WITHOUT ROWID B-tree keyed
-- by report and position: ~3 ms of a 1,000-token delivery on 1,000,000 tokens, measured
-- on a copy of the schema); it now inserts one `report_item_sets` row per report, the
-- JSON array it already built: [position, hash (hex), type, source, url, outcome,
-- found_in] per item, in position order. `report_items` stays, as a view over the sets
-- with the same columns, so every reader reads what it read.
CREATE TABLE report_item_sets (
    report_id  INTEGER PRIMARY KEY,   -- reports.id
    items      TEXT    NOT NULL       -- JSON: [[position, hash, type, source, url, outcome, found_in], …]
);

-- The rows there are, moved: one set per report that has items.
INSERT INTO report_item_sets (report_id, items)
SELECT report_id,
       json_group_array(json_array(position, lower(hex(token_hash)), token_type, source, url,
                                   outcome, found_in) ORDER BY position)
FROM report_items
GROUP BY report_id;

DROP TABLE report_items;

-- Every reader's `report_items`, as it was: one row per item.
CREATE VIEW report_items AS
SELECT s.report_id, i.value ->> 0 AS position, unhex(i.value ->> 1) AS token_hash,
       i.value ->> 2 AS token_type, i.value ->> 3 AS source, i.value ->> 4 AS url,
       i.value ->> 5 AS outcome, i.value ->> 6 AS found_in
FROM report_item_sets s, json_each(s.items) i;
