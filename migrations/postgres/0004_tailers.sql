-- Checkpoints of tailers that keep no tables of their own (the NATS relay, the embedded
-- executor). Each is advanced only after the work for the events before it is done.
CREATE TABLE tailer_checkpoints (
    name       text   NOT NULL PRIMARY KEY,
    txid       bigint NOT NULL,
    position   bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
