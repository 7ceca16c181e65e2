-- Replay (`meterd replay`) reads one plugin's deliveries in the order they
-- were received, and the records each delivery set. A record now names the
-- delivery that last set it (a correction moves it), so replaying an older
-- delivery never undoes a later one's correction. Poll records have no
-- delivery and stay out of the second index.
CREATE INDEX deliveries_by_plugin_time ON deliveries (plugin, received_at_ms, id);
CREATE INDEX usage_records_by_delivery ON usage_records (delivery_id) WHERE delivery_id IS NOT NULL;
