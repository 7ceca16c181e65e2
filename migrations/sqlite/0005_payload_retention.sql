-- Raw payloads are kept for `payload_retention`, then emptied (body and
-- headers); the row stays, so a late redelivery is still a duplicate.
ALTER TABLE deliveries ADD COLUMN payload_purged_at_ms BIGINT;

CREATE INDEX deliveries_unpurged ON deliveries (received_at_ms) WHERE payload_purged_at_ms IS NULL;
