-- Identity names are compared without regard to case (docs/admin.md): "Deploy" and
-- "deploy" cannot both exist. Names are ASCII (letters, digits, '-', '_'), so lower() is
-- exact. A database already holding two such names fails this migration; rename one
-- (with the broker of the previous version) and start again.
CREATE UNIQUE INDEX identities_name_lower_key ON identities (lower(name));
