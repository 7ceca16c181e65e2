-- API keys (see the SQLite migration of the same name).
CREATE TABLE api_keys (
    id             TEXT    PRIMARY KEY,
    secret_hash    TEXT    NOT NULL,
    admin          BOOLEAN NOT NULL,
    orgs           TEXT    NOT NULL,
    label          TEXT,
    created_at_ms  BIGINT  NOT NULL,
    revoked_at_ms  BIGINT
);
