-- The system of record: every event of every aggregate, never changed in place.
CREATE TABLE events (
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    sequence       bigint NOT NULL CHECK (sequence >= 0),
    event_type     text   NOT NULL,
    event_version  text   NOT NULL,
    payload        jsonb  NOT NULL,
    metadata       jsonb  NOT NULL,
    -- The global log: readers order by (txid, position) and read only below the oldest running
    -- transaction, so an event committed late can never appear behind a reader's checkpoint.
    position       bigint GENERATED ALWAYS AS IDENTITY,
    txid           xid8   NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    tenant         text   NOT NULL GENERATED ALWAYS AS (metadata ->> 'tenant') STORED,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE UNIQUE INDEX events_log_order ON events (txid, position);
CREATE UNIQUE INDEX events_position ON events (position);
CREATE INDEX events_tenant_position ON events (tenant, position);

-- Append-only: history is never updated, deleted or truncated.
CREATE FUNCTION countersign_refuse_event_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER events_refuse_update_delete
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION countersign_refuse_event_change();

CREATE TRIGGER events_refuse_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION countersign_refuse_event_change();

-- Tailers wake on this notification; it is only a hint (they also poll).
CREATE FUNCTION countersign_notify_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('countersign_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify
    AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION countersign_notify_events();

-- Where a separate application role is configured, it may only read and append.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'countersign_app') THEN
        REVOKE ALL ON events FROM countersign_app;
        GRANT SELECT, INSERT ON events TO countersign_app;
    END IF;
END
$$;
