-- Checkpoints of tailers that keep no tables of their own (the NATS relay, the embedded
-- executor). Each is advanced only after the work for the events before it is done.
CREATE TABLE tailer_checkpoints (
    name       TEXT    NOT NULL PRIMARY KEY,
    txid       BIGINT  NOT NULL,
    position   BIGINT  NOT NULL,
    updated_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
