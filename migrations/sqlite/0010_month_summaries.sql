-- Month summaries: each month holds the additive part of its hours (see
-- `meter::rollup::Month`), so a sum, count or integral over many months
-- (credits since a grant began) reads one row per month, not every hour.
ALTER TABLE rollup_months ADD COLUMN delta_sum TEXT NOT NULL DEFAULT '0';
ALTER TABLE rollup_months ADD COLUMN records INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rollup_months ADD COLUMN level_moment TEXT NOT NULL DEFAULT '0';

-- Start-up reads the hours of the current period across every org.
CREATE INDEX rollup_hours_by_hour ON rollup_hours (hour_ms);

-- The rollups are rebuilt (now with month summaries) at the next start-up.
DELETE FROM meterd_state WHERE key = 'rollups';
