-- Notifications (issue 16): one row per (event, recipient, channel), written by the notifier as it
-- tails the log. `key` is unique, so replaying the log (a restart, a crash between writing rows
-- and saving the checkpoint) never writes a notification twice. In-app rows are delivered when
-- written (they are the feed); email, Slack and webhook rows wait in `pending` until a sender
-- delivers them, are retried with backoff, and end `dead` after the attempts limit.
CREATE TABLE notifications (
    seq             bigserial   NOT NULL PRIMARY KEY,
    key             text        NOT NULL UNIQUE,
    tenant          text        NOT NULL,
    recipient       text        NOT NULL,
    channel         text        NOT NULL,
    kind            text        NOT NULL,
    source          text        NOT NULL,
    action_id       text,
    title           text        NOT NULL,
    body            text        NOT NULL,
    address         text,
    position        bigint      NOT NULL,
    created_us      bigint      NOT NULL,
    status          text        NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_us bigint      NOT NULL,
    last_error      text,
    delivered_us    bigint,
    read_us         bigint
);
CREATE INDEX notifications_feed ON notifications (tenant, recipient, channel, seq);
CREATE INDEX notifications_due ON notifications (status, next_attempt_us);
CREATE INDEX notifications_tenant ON notifications (tenant, seq);

-- Open approvals the notifier will remind about: one row per action while it waits for votes,
-- with the moment 75% of its current deadline has passed. Written with the notifications of the
-- event that opened the stage (or escalated the action), removed once the reminder is written
-- or the action is decided.
CREATE TABLE notification_reminders (
    tenant     text   NOT NULL,
    action_id  text   NOT NULL PRIMARY KEY,
    round      text   NOT NULL,
    remind_us  bigint NOT NULL,
    position   bigint NOT NULL
);
CREATE INDEX notification_reminders_due ON notification_reminders (remind_us);
