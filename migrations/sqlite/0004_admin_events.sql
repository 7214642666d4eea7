-- Changes made with the `portcullis` admin commands (revocations, password and role
-- changes, lockouts lifted), waiting for a running gateway to copy them into its
-- audit stream. A gateway deletes the rows it has copied, so each event is written
-- once however many instances run.
CREATE TABLE admin_events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        BIGINT  NOT NULL,
    event     TEXT    NOT NULL,
    detail    TEXT    NOT NULL,
    operator  TEXT    NOT NULL
);
