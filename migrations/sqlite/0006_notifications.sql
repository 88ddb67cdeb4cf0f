-- Notifications (issue 16): one row per (event, recipient, channel), written by the notifier as it
-- tails the log. `key` is unique, so replaying the log (a restart, a crash between writing rows
-- and saving the checkpoint) never writes a notification twice. In-app rows are delivered when
-- written (they are the feed); email, Slack and webhook rows wait in `pending` until a sender
-- delivers them, are retried with backoff, and end `dead` after the attempts limit.
CREATE TABLE notifications (
    seq             INTEGER     PRIMARY KEY AUTOINCREMENT,
    key             TEXT        NOT NULL UNIQUE,
    tenant          TEXT        NOT NULL,
    recipient       TEXT        NOT NULL,
    channel         TEXT        NOT NULL,
    kind            TEXT        NOT NULL,
    source          TEXT        NOT NULL,
    action_id       TEXT,
    title           TEXT        NOT NULL,
    body            TEXT        NOT NULL,
    address         TEXT,
    position        BIGINT      NOT NULL,
    created_us      BIGINT      NOT NULL,
    status          TEXT        NOT NULL,
    attempts        INTEGER     NOT NULL DEFAULT 0,
    next_attempt_us BIGINT      NOT NULL,
    last_error      TEXT,
    delivered_us    BIGINT,
    read_us         BIGINT
);
CREATE INDEX notifications_feed ON notifications (tenant, recipient, channel, seq);
CREATE INDEX notifications_due ON notifications (status, next_attempt_us);
CREATE INDEX notifications_tenant ON notifications (tenant, seq);

-- Open approvals the notifier will remind about: one row per action while it waits for votes,
-- with the moment 75% of its current deadline has passed. Written with the notifications of the
-- event that opened the stage (or escalated the action), removed once the reminder is written
-- or the action is decided.
CREATE TABLE notification_reminders (
    tenant     TEXT   NOT NULL,
    action_id  TEXT   NOT NULL PRIMARY KEY,
    round      TEXT   NOT NULL,
    remind_us  BIGINT NOT NULL,
    position   BIGINT NOT NULL
);
CREATE INDEX notification_reminders_due ON notification_reminders (remind_us);
