-- See the SQLite migration of the same name.
ALTER TABLE deliveries ADD COLUMN path TEXT NOT NULL DEFAULT '/';
ALTER TABLE deliveries ADD COLUMN query TEXT;
