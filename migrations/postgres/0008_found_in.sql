-- A token of ours found somewhere else in a delivery than an item's own `token` (in a
-- `url`, `source`, `type` or `location`, plain or percent-encoded or JSON-escaped) has
-- leaked too: it is revoked in the same statement and recorded as an item of the report,
-- after the items the scanner sent, with where it was found (`items[3].url`). NULL: the
-- item's own token. No default to fill, so adding the column rewrites nothing.
ALTER TABLE report_items ADD COLUMN found_in TEXT;
