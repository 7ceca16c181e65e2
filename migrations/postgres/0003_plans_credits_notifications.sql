-- Plans, credits and notifications (see the SQLite migration of the same
-- name for what each table is for).
CREATE TABLE org_plans (
    org_id          TEXT    PRIMARY KEY,
    plan            TEXT    NOT NULL,
    assigned_at_ms  BIGINT  NOT NULL
);

CREATE TABLE grants (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id           TEXT    NOT NULL,
    amount           NUMERIC NOT NULL,
    currency         TEXT    NOT NULL,
    effective_at_ms  BIGINT  NOT NULL,
    expires_at_ms    BIGINT,
    priority         INTEGER NOT NULL,
    created_at_ms    BIGINT  NOT NULL,
    source           TEXT    NOT NULL,
    plan             TEXT,
    UNIQUE (org_id, plan)
);

CREATE INDEX grants_by_org ON grants (org_id);

CREATE TABLE notifications_fired (
    org_id           TEXT    NOT NULL,
    rule             TEXT    NOT NULL,
    period_start_ms  BIGINT  NOT NULL,
    fired_at_ms      BIGINT  NOT NULL,
    PRIMARY KEY (org_id, rule, period_start_ms)
);

CREATE TABLE outbox (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id       TEXT    NOT NULL UNIQUE,
    endpoint         TEXT    NOT NULL,
    event_type       TEXT    NOT NULL,
    payload          TEXT    NOT NULL,
    created_at_ms    BIGINT  NOT NULL,
    next_attempt_ms  BIGINT  NOT NULL,
    attempts         BIGINT  NOT NULL DEFAULT 0,
    delivered_at_ms  BIGINT,
    gave_up_at_ms    BIGINT,
    last_error       TEXT
);

CREATE INDEX outbox_pending ON outbox (next_attempt_ms) WHERE delivered_at_ms IS NULL AND gave_up_at_ms IS NULL;
