-- The subject index (0008) serves only reads of level records (a commit's
-- neighbourhood and runs, carry-in, grouped level pages), so it holds only
-- those: a delta record (two of an E2B kill's three) no longer costs an
-- insert into a B-tree ordered by subject. Queries name `kind = 'level'`,
-- so the planner uses it.
DROP INDEX usage_records_by_subject;
CREATE INDEX usage_records_levels_by_subject ON usage_records (org_id, metric, subject, at_ms) INCLUDE (quantity)
    WHERE kind = 'level';
