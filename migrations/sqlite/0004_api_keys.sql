-- API keys (see host/src/keys.rs): only a hash of each secret is stored.
-- `orgs` is a JSON array of org ids, empty for an admin key.
CREATE TABLE api_keys (
    id             TEXT    PRIMARY KEY,
    secret_hash    TEXT    NOT NULL,
    admin          INTEGER NOT NULL,
    orgs           TEXT    NOT NULL,
    label          TEXT,
    created_at_ms  INTEGER NOT NULL,
    revoked_at_ms  INTEGER
);
