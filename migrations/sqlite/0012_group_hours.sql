-- Grouped rollups (host/src/meter/rollup/groups.rs): for each attribute key
-- the operator declares (`rollup_group_by`), per org, metric, value of the
-- key and UTC hour, the sum of deltas and the record counts. `cell` is ''
-- for records without the key and '=' followed by the value otherwise.
-- Which keys the table holds is the 'rollup_groups' row of meterd_state; a
-- start-up with other keys rebuilds the rollups.
CREATE TABLE rollup_group_hours (
    org_id    TEXT    NOT NULL,
    metric    TEXT    NOT NULL,
    group_key TEXT    NOT NULL,
    hour_ms   INTEGER NOT NULL,
    cell      TEXT    NOT NULL,
    delta_sum TEXT    NOT NULL,
    records   INTEGER NOT NULL,
    deltas    INTEGER NOT NULL,
    PRIMARY KEY (org_id, metric, group_key, hour_ms, cell)
) WITHOUT ROWID;
