-- Login lockouts: a key (`login=NAME` or `ip=ADDRESS`) that exceeded the failed-login
-- limit is refused at the login endpoint until `locked_until` (Unix seconds).
-- Listed and lifted with `portcullis lockout list|lift`.
CREATE TABLE login_lockouts (
    key           TEXT    PRIMARY KEY,
    locked_until  BIGINT  NOT NULL,
    reason        TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL
);
CREATE INDEX login_lockouts_until ON login_lockouts (locked_until);
