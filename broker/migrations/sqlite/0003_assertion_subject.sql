-- The sub of the broker's assertions for an API-registered identity (assertion = broker);
-- NULL means the identity's name.
ALTER TABLE identities ADD COLUMN assertion_subject TEXT;
