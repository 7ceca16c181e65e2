-- meterd schema, PostgreSQL engine. Quantities are NUMERIC (exact, never
-- floats); times are BIGINT milliseconds since the Unix epoch, UTC.

-- Raw inbound payloads, one row per accepted delivery. The unique key is the
-- dedup of deliveries: a redelivery of (plugin, event_id) is a duplicate,
-- whichever replica it reaches.
CREATE TABLE deliveries (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    plugin          TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    received_at_ms  BIGINT  NOT NULL,
    headers         TEXT    NOT NULL,   -- JSON array of [name, value]
    body            BYTEA   NOT NULL,
    record_count    INTEGER NOT NULL,
    UNIQUE (plugin, event_id)
);

-- Normalized usage records. (plugin, event_id, seq) is unique forever.
CREATE TABLE usage_records (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    plugin           TEXT    NOT NULL,
    event_id         TEXT    NOT NULL,
    seq              BIGINT  NOT NULL,
    delivery_id      BIGINT  REFERENCES deliveries (id),
    org_id           TEXT    NOT NULL,
    subject          TEXT    NOT NULL,
    metric           TEXT    NOT NULL,
    kind             TEXT    NOT NULL CHECK (kind IN ('delta', 'level')),
    quantity         NUMERIC NOT NULL,
    at_ms            BIGINT  NOT NULL,
    window_start_ms  BIGINT,
    attributes       JSONB   NOT NULL,
    UNIQUE (plugin, event_id, seq)
);

CREATE INDEX usage_records_by_org_metric_time ON usage_records (org_id, metric, at_ms);
