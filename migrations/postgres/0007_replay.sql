-- See the SQLite migration of the same name.
CREATE INDEX deliveries_by_plugin_time ON deliveries (plugin, received_at_ms, id);
CREATE INDEX usage_records_by_delivery ON usage_records (delivery_id) WHERE delivery_id IS NOT NULL;
