-- Which entry each registry write changed, under the version the write produced, so a
-- replica applies the changed entries only instead of reading the whole registry again.
-- `credential` is the credential's name, or NULL when the identity itself changed
-- (created, replaced or deleted with its credentials). Only the newest versions are kept;
-- a replica further behind reads the whole registry (docs/storage.md).
CREATE TABLE registry_changes (
    version    INTEGER NOT NULL PRIMARY KEY,
    identity   TEXT   NOT NULL,
    credential TEXT
);
