-- Plans, credits and notifications. Amounts are exact decimal TEXT.

-- The plan each org was assigned; orgs without a row are on the config's
-- default_plan.
CREATE TABLE org_plans (
    org_id          TEXT    PRIMARY KEY,
    plan            TEXT    NOT NULL,
    assigned_at_ms  INTEGER NOT NULL
);

-- Credit grants. A plan's one-time credit has `plan` set, and (org_id, plan)
-- is unique: an org gets each plan's credit once, however often it changes
-- plans. API grants have `plan` NULL (NULLs never conflict).
CREATE TABLE grants (
    id               INTEGER PRIMARY KEY,
    org_id           TEXT    NOT NULL,
    amount           TEXT    NOT NULL,
    currency         TEXT    NOT NULL,
    effective_at_ms  INTEGER NOT NULL,
    expires_at_ms    INTEGER,
    priority         INTEGER NOT NULL,
    created_at_ms    INTEGER NOT NULL,
    source           TEXT    NOT NULL,
    plan             TEXT,
    UNIQUE (org_id, plan)
);

CREATE INDEX grants_by_org ON grants (org_id);

-- Thresholds that fired: each (org, rule, period) at most once, enforced
-- here, in the same transaction as the outbox rows it produces.
CREATE TABLE notifications_fired (
    org_id           TEXT    NOT NULL,
    rule             TEXT    NOT NULL,
    period_start_ms  INTEGER NOT NULL,
    fired_at_ms      INTEGER NOT NULL,
    PRIMARY KEY (org_id, rule, period_start_ms)
);

-- Transactional outbox: one row per (notification, endpoint), written with
-- the usage or sweep that crossed the threshold, delivered and retried by
-- the notifier until delivered or expired.
CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY,
    message_id       TEXT    NOT NULL UNIQUE,
    endpoint         TEXT    NOT NULL,
    event_type       TEXT    NOT NULL,
    payload          TEXT    NOT NULL,
    created_at_ms    INTEGER NOT NULL,
    next_attempt_ms  INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    delivered_at_ms  INTEGER,
    gave_up_at_ms    INTEGER,
    last_error       TEXT
);

CREATE INDEX outbox_pending ON outbox (next_attempt_ms) WHERE delivered_at_ms IS NULL AND gave_up_at_ms IS NULL;
