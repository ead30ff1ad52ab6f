-- WIF Broker store, PostgreSQL. Times are epoch seconds. Never edit an applied migration:
-- add a new numbered file instead (the checksum of each applied file is recorded).

CREATE TABLE identities (
    name           TEXT   NOT NULL PRIMARY KEY,
    tenant_id      TEXT   NOT NULL,
    client_id      TEXT   NOT NULL,
    cloud          TEXT,
    authority_host TEXT,
    assertion      TEXT   NOT NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
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
    one_time_use               BOOLEAN NOT NULL DEFAULT FALSE,
    created_at                 BIGINT  NOT NULL,
    updated_at                 BIGINT  NOT NULL
);
CREATE UNIQUE INDEX federated_credentials_name_key
    ON federated_credentials (identity, name);
CREATE UNIQUE INDEX federated_credentials_subject_key
    ON federated_credentials (identity, issuer, subject) WHERE subject IS NOT NULL;
CREATE INDEX federated_credentials_issuer ON federated_credentials (issuer);

-- One row; bumped in the same transaction as every identity or credential write. Its row
-- lock also serialises registry writes across replicas.
CREATE TABLE registry_version (
    id      INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    version BIGINT  NOT NULL
);
INSERT INTO registry_version (id, version) VALUES (1, 0);

CREATE TABLE audit_events (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time       BIGINT NOT NULL,
    kind       TEXT   NOT NULL,
    request_id TEXT   NOT NULL,
    actor      TEXT,
    identity   TEXT,
    subject    TEXT,
    outcome    TEXT   NOT NULL,
    event JSON  NOT NULL
);
CREATE INDEX audit_events_time ON audit_events (time);
CREATE INDEX audit_events_identity ON audit_events (identity, id);
CREATE INDEX audit_events_subject ON audit_events (subject, id);
CREATE INDEX audit_events_outcome ON audit_events (outcome, id);

-- Keys (jti or token SHA-256) of tokens accepted by one-time-use credentials.
CREATE TABLE used_tokens (
    key        TEXT   NOT NULL PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX used_tokens_expires_at ON used_tokens (expires_at);
