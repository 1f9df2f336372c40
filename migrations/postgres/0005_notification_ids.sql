-- A globally unique notification id: the webhook's Idempotency-Key and the body's "id".
-- The row id (`notifications.id`) counts per database, so two databases (staging and
-- production, or a restored backup) notifying one hook would both send 1, 2, …, and a
-- receiver deduplicating on them would drop real alerts. A UUIDv7 (48-bit Unix
-- milliseconds, then 74 random bits) is minted by the database with every row, so the
-- statement that queues notifications with the revocation does not name it.

-- UUIDv7 from PostgreSQL 15's own functions: a random v4, its first 6 bytes replaced
-- by the time in milliseconds, its version nibble turned from 4 (0100) into 7 (0111).
CREATE FUNCTION revoker_uuid_v7() RETURNS uuid LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;

-- A volatile default is evaluated once per existing row (the table is rewritten), so
-- every row already there gets its own id; every new row gets one from the default.
ALTER TABLE notifications
    ADD COLUMN public_id uuid NOT NULL DEFAULT revoker_uuid_v7()
        CONSTRAINT notifications_public_id_key UNIQUE;
