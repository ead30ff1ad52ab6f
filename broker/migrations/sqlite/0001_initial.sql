-- WIF Broker store, SQLite. Times are epoch seconds. Never edit an applied migration:
-- add a new numbered file instead (the checksum of each applied file is recorded).

CREATE TABLE identities (
    name           TEXT    NOT NULL PRIMARY KEY,
    tenant_id      TEXT    NOT NULL,
    client_id      TEXT    NOT NULL,
    cloud          TEXT,
    authority_host TEXT,
    assertion      TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);
-- Entra client ids are GUIDs; compare them without regard to case.
CREATE UNIQUE INDEX identities_client_id_key ON identities (lower(client_id));

CREATE TABLE federated_credentials (
    id                         TEXT    NOT NULL PRIMARY KEY,
    identity                   TEXT    NOT NULL REFERENCES identities (name) ON DELETE CASCADE,
    name                       TEXT    NOT NULL,
    issuer                     TEXT    NOT NULL,
    subject                    TEXT,
    claims_matching_expression TEXT,
    audiences                  TEXT    NOT NULL, -- JSON array of strings
    description                TEXT,
    one_time_use               INTEGER NOT NULL DEFAULT 0,
    created_at                 INTEGER NOT NULL,
    updated_at                 INTEGER NOT NULL
);
CREATE UNIQUE INDEX federated_credentials_name_key
    ON federated_credentials (identity, name);
CREATE UNIQUE INDEX federated_credentials_subject_key
    ON federated_credentials (identity, issuer, subject) WHERE subject IS NOT NULL;
CREATE INDEX federated_credentials_issuer ON federated_credentials (issuer);

-- One row; bumped in the same transaction as every identity or credential write.
CREATE TABLE registry_version (
    id      INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO registry_version (id, version) VALUES (1, 0);

-- AUTOINCREMENT: ids are never reused after a purge, so audit cursors stay valid.
CREATE TABLE audit_events (
    id         INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    time       INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    request_id TEXT    NOT NULL,
    actor      TEXT,
    identity   TEXT,
    subject    TEXT,
    outcome    TEXT    NOT NULL,
    event      TEXT    NOT NULL -- the whole event as JSON
);
CREATE INDEX audit_events_time ON audit_events (time);
CREATE INDEX audit_events_identity ON audit_events (identity, id);
CREATE INDEX audit_events_subject ON audit_events (subject, id);
CREATE INDEX audit_events_outcome ON audit_events (outcome, id);

-- Keys (jti or token SHA-256) of tokens accepted by one-time-use credentials.
CREATE TABLE used_tokens (
    key        TEXT    NOT NULL PRIMARY KEY,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX used_tokens_expires_at ON used_tokens (expires_at);
