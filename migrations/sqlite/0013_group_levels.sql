-- Group levels (host/core/src/meter/rollup/groups.rs): the level of each
-- group of a declared key is kept as a series of its own, named
-- 'metric/key/cell', in rollup_hours, rollup_steps and rollup_months (no
-- new table). A grouped level query lists the groups a level record names
-- before the range ends: one seek per cell on this index. The rollups are
-- rebuilt at the next start-up where keys are declared (the
-- 'rollup_groups' row of meterd_state records the group levels now).
CREATE INDEX rollup_group_hours_cells ON rollup_group_hours (org_id, metric, group_key, cell, hour_ms);
