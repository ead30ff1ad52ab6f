-- Keys the broker generates to sign its own assertions (assertion = "broker").
-- One row per generation; replicas race to insert the next generation and all use the
-- winner's key. The private key is PKCS#8 DER, base64.
CREATE TABLE signing_keys (
    generation  BIGINT  NOT NULL PRIMARY KEY,
    kid         TEXT    NOT NULL,
    private_key TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    active_from BIGINT  NOT NULL
);
