-- Pull ingestion: one row per (plugin, target) holds the cursor and the
-- lease that lets exactly one poller (of any replica) run it at a time.
CREATE TABLE poll_state (
    plugin                TEXT    NOT NULL,
    target                TEXT    NOT NULL,
    cursor                TEXT,
    lease_holder          TEXT,
    lease_expires_ms      BIGINT  NOT NULL DEFAULT 0,
    last_success_ms       BIGINT,
    last_error            TEXT,
    last_error_ms         BIGINT,
    consecutive_failures  BIGINT  NOT NULL DEFAULT 0,
    next_run_ms           BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (plugin, target)
);

-- Audit trail of corrections.
CREATE TABLE corrections (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    record_id       BIGINT  NOT NULL REFERENCES usage_records (id),
    plugin          TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    seq             BIGINT  NOT NULL,
    old_quantity    NUMERIC NOT NULL,
    new_quantity    NUMERIC NOT NULL,
    corrected_at_ms BIGINT  NOT NULL
);

CREATE INDEX corrections_by_record ON corrections (record_id);
