-- Issue 28: the outbox per delivery (as PostgreSQL's migration 0013). The recording
-- transaction wrote one `notifications` row per flipped token, with its indexes and a
-- UUIDv7 each, inside the delivery's latency and its commit; it now writes one
-- `notification_batches` row per delivery that flipped something, in the same
-- transaction. The outbox turns each batch into the same per-token rows as before
-- (`store/sqlite/outbox.rs`), deleting the batch in the same transaction: each flipped
-- token still gets exactly one notification.
CREATE TABLE notification_batches (
    report_id  INTEGER PRIMARY KEY,   -- the report that flipped the tokens
    queued_at  INTEGER NOT NULL,      -- = reports.received_at
    tokens     INTEGER NOT NULL       -- how many it flipped (the notifications to make)
);
