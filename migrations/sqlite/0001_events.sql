-- The system of record: every event of every aggregate, never changed in place.
CREATE TABLE events (
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    sequence       INTEGER NOT NULL CHECK (sequence >= 0),
    event_type     TEXT    NOT NULL,
    event_version  TEXT    NOT NULL,
    payload        TEXT    NOT NULL,
    metadata       TEXT    NOT NULL,
    -- The global log. SQLite has one writer at a time, so position order is commit order.
    -- Assigned by the trigger below (rowids may be renumbered by VACUUM; positions never are).
    position       INTEGER UNIQUE,
    recorded_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    tenant         TEXT    NOT NULL GENERATED ALWAYS AS (json_extract(metadata, '$.tenant')) STORED,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE INDEX events_tenant_position ON events (tenant, position);

CREATE TRIGGER events_assign_position AFTER INSERT ON events
BEGIN
    UPDATE events SET position = (SELECT COALESCE(MAX(position), 0) + 1 FROM events)
     WHERE rowid = NEW.rowid;
END;

-- Append-only: once a row has its position it is never updated or deleted.
CREATE TRIGGER events_refuse_update BEFORE UPDATE ON events
WHEN OLD.position IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: UPDATE refused');
END;

CREATE TRIGGER events_refuse_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: DELETE refused');
END;
