-- Where a token found inside a delivery's other strings was found (see PostgreSQL's
-- 0008): `items[3].url`; NULL for an item's own token.
ALTER TABLE report_items ADD COLUMN found_in TEXT;
