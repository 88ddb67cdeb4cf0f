-- The runs of workflows (issue 17), one row per run, for listing and filtering. Kept by the
-- workflow engine from the runs' streams (each row is the fold of its stream up to `sequence`;
-- an older fold never overwrites a newer one), so it can be dropped and rebuilt from the log.
CREATE TABLE workflow_runs (
    run_id      TEXT    NOT NULL PRIMARY KEY,
    tenant      TEXT    NOT NULL,
    workflow_id TEXT    NOT NULL,
    event_id    TEXT    NOT NULL,
    event_type  TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    action_id   TEXT,
    started_us  BIGINT  NOT NULL,
    updated_us  BIGINT  NOT NULL,
    sequence    BIGINT  NOT NULL
);
CREATE INDEX workflow_runs_by_tenant ON workflow_runs (tenant, started_us DESC, run_id DESC);
