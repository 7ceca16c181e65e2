-- Pull ingestion: one row per (plugin, target) holds the cursor, the lease
-- that lets exactly one poller run it at a time (across processes on one
-- database), and what the last runs did.
CREATE TABLE poll_state (
    plugin                TEXT    NOT NULL,
    target                TEXT    NOT NULL,
    cursor                TEXT,
    lease_holder          TEXT,
    lease_expires_ms      INTEGER NOT NULL DEFAULT 0,
    last_success_ms       INTEGER,
    last_error            TEXT,
    last_error_ms         INTEGER,
    consecutive_failures  INTEGER NOT NULL DEFAULT 0,
    next_run_ms           INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (plugin, target)
);

-- Audit trail of corrections: a record re-reported with another quantity
-- replaces the stored one; the old and new values are kept here.
CREATE TABLE corrections (
    id              INTEGER PRIMARY KEY,
    record_id       INTEGER NOT NULL REFERENCES usage_records (id),
    plugin          TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    seq             INTEGER NOT NULL,
    old_quantity    TEXT    NOT NULL,
    new_quantity    TEXT    NOT NULL,
    corrected_at_ms INTEGER NOT NULL
);

CREATE INDEX corrections_by_record ON corrections (record_id);
