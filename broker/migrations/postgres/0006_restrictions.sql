-- The broker's own controls on identities and federated credentials (docs/admin.md,
-- "Least privilege"): disabled, allowed scopes, source networks, maximum token age,
-- validity dates, rate limit. One JSON object (camelCase keys, absent keys restrict
-- nothing); NULL restricts nothing, as for every row written before this migration.
ALTER TABLE identities ADD COLUMN restrictions TEXT;
ALTER TABLE federated_credentials ADD COLUMN restrictions TEXT;
