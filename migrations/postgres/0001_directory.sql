-- The native directory: accounts, users, their roles, and the change feed that tells
-- running gateways which cached users to forget. Times are Unix seconds.
CREATE TABLE accounts (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    created_at  BIGINT  NOT NULL,
    changed_at  BIGINT  NOT NULL
);

CREATE TABLE account_roles (
    account_id  BIGINT  NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    role        TEXT    NOT NULL,
    PRIMARY KEY (account_id, role)
);

CREATE TABLE users (
    id                 BIGSERIAL PRIMARY KEY,
    account_id         BIGINT  NOT NULL REFERENCES accounts (id),
    -- Stored lower-cased, so uniqueness is case-insensitive.
    email              TEXT    NOT NULL UNIQUE,
    active             BOOLEAN NOT NULL DEFAULT TRUE,
    password_hash      TEXT    NOT NULL,
    -- Tokens issued before this time are refused (revocation, password change).
    tokens_not_before  BIGINT  NOT NULL DEFAULT 0,
    created_at         BIGINT  NOT NULL,
    changed_at         BIGINT  NOT NULL
);
CREATE INDEX users_account ON users (account_id);

CREATE TABLE user_roles (
    user_id  BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role     TEXT   NOT NULL,
    PRIMARY KEY (user_id, role)
);

CREATE TABLE directory_changes (
    seq         BIGSERIAL PRIMARY KEY,
    user_id     BIGINT,
    account_id  BIGINT,
    at          BIGINT NOT NULL
);
