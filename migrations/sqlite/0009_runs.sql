-- Sandbox runs: each sandbox's runs of `sandbox_active` above zero (see
-- `plans::standing::runs_of`), kept in the transaction that writes its
-- level records, so concurrency and session limits read O(open or long
-- runs), never the records. `length_ms` is NULL while a run is open.
CREATE TABLE rollup_runs (
    org_id     TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    started_ms INTEGER NOT NULL,
    ended_ms   INTEGER,
    length_ms  INTEGER,
    PRIMARY KEY (org_id, subject, started_ms)
) WITHOUT ROWID;

-- Start-up reads the open runs; entitlements read an org's long ones.
CREATE INDEX rollup_runs_open ON rollup_runs (org_id) WHERE ended_ms IS NULL;
CREATE INDEX rollup_runs_long ON rollup_runs (org_id, length_ms, ended_ms);

-- The rollups are rebuilt (now with runs) at the next start-up.
DELETE FROM meterd_state WHERE key = 'rollups';
