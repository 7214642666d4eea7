-- The web login: sessions begun before `sessions_not_before` (Unix seconds) are
-- refused, which is how `portcullis session revoke`, a password change and
-- deactivation end them. Authenticator apps (TOTP, RFC 6238) and recovery codes.
ALTER TABLE users ADD COLUMN sessions_not_before BIGINT NOT NULL DEFAULT 0;

CREATE TABLE totp_enrollments (
    user_id        BIGINT  PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    -- The shared secret, sealed (AES-256-GCM) with a key from `[web_login] secret`.
    sealed_secret  TEXT    NOT NULL,
    -- The last time step accepted: a code is good once (RFC 6238 §5.2).
    last_step      BIGINT  NOT NULL,
    enrolled_at    BIGINT  NOT NULL
);

CREATE TABLE recovery_codes (
    user_id    BIGINT  NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- SHA-256 of the code (hex); the code itself is shown once.
    code_hash  TEXT    NOT NULL,
    used_at    BIGINT,
    PRIMARY KEY (user_id, code_hash)
);
