-- meterd schema, SQLite engine. Quantities are exact decimal TEXT (never
-- REAL); times are integer milliseconds since the Unix epoch, UTC.

-- Raw inbound payloads, one row per accepted delivery. The unique key is the
-- dedup of deliveries: a redelivery of (plugin, event_id) is a duplicate.
CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY,
    plugin          TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    received_at_ms  INTEGER NOT NULL,
    headers         TEXT    NOT NULL,   -- JSON array of [name, value]
    body            BLOB    NOT NULL,
    record_count    INTEGER NOT NULL,
    UNIQUE (plugin, event_id)
);

-- Normalized usage records. (plugin, event_id, seq) is unique forever:
-- the same fact is never counted twice.
CREATE TABLE usage_records (
    id               INTEGER PRIMARY KEY,
    plugin           TEXT    NOT NULL,
    event_id         TEXT    NOT NULL,
    seq              INTEGER NOT NULL,   -- position in the plugin's answer
    delivery_id      INTEGER REFERENCES deliveries (id),
    org_id           TEXT    NOT NULL,
    subject          TEXT    NOT NULL,
    metric           TEXT    NOT NULL,
    kind             TEXT    NOT NULL CHECK (kind IN ('delta', 'level')),
    quantity         TEXT    NOT NULL,
    at_ms            INTEGER NOT NULL,
    window_start_ms  INTEGER,
    attributes       TEXT    NOT NULL,   -- JSON object of strings
    UNIQUE (plugin, event_id, seq)
);

CREATE INDEX usage_records_by_org_metric_time ON usage_records (org_id, metric, at_ms);
