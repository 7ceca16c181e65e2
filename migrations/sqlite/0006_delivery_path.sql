-- The request path (below the plugin's route) and query of each webhook,
-- so a stored payload can be handed to a plugin again exactly (replay).
ALTER TABLE deliveries ADD COLUMN path TEXT NOT NULL DEFAULT '/';
ALTER TABLE deliveries ADD COLUMN query TEXT;
