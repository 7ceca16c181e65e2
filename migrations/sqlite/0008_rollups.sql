-- Rollups (host/src/meter/rollup): what usage queries read instead of raw
-- records, written in the transaction that writes the records. Quantities
-- are canonical decimal TEXT, as in usage_records. A database migrated from
-- an earlier version is back-filled from its records at start-up (the
-- 'rollups' row of meterd_state says it was done).

-- Per org, metric and UTC hour: the sum of deltas, the record count and
-- the org level's steps summarized (see `meter::rollup::Hour`).
CREATE TABLE rollup_hours (
    org_id           TEXT    NOT NULL,
    metric           TEXT    NOT NULL,
    hour_ms          INTEGER NOT NULL,
    delta_sum        TEXT    NOT NULL,
    records          INTEGER NOT NULL,
    level_step       TEXT    NOT NULL,
    level_moment     TEXT    NOT NULL,
    level_open       TEXT    NOT NULL,
    level_peak       TEXT,
    level_last_at_ms INTEGER,
    PRIMARY KEY (org_id, metric, hour_ms)
) WITHOUT ROWID;

-- The org level's net step at each instant with one (no zero rows).
CREATE TABLE rollup_steps (
    org_id TEXT    NOT NULL,
    metric TEXT    NOT NULL,
    at_ms  INTEGER NOT NULL,
    step   TEXT    NOT NULL,
    PRIMARY KEY (org_id, metric, at_ms)
) WITHOUT ROWID;

-- The org level's net step per calendar month: the level in force at a
-- time is a sum over months, hours and steps, not over history.
CREATE TABLE rollup_months (
    org_id     TEXT    NOT NULL,
    metric     TEXT    NOT NULL,
    month_ms   INTEGER NOT NULL,
    level_step TEXT    NOT NULL,
    PRIMARY KEY (org_id, metric, month_ms)
) WITHOUT ROWID;

-- A subject's records around an instant: what a late level changes. Kind
-- and quantity are in the index, so the neighbourhood read of a commit
-- never visits the table.
CREATE INDEX usage_records_by_subject ON usage_records (org_id, metric, subject, at_ms, kind, quantity);

-- Facts about the database itself (e.g. that the rollups were back-filled).
CREATE TABLE meterd_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
