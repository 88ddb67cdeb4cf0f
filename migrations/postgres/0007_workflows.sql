-- The runs of workflows (issue 17), one row per run, for listing and filtering. Kept by the
-- workflow engine from the runs' streams (each row is the fold of its stream up to `sequence`;
-- an older fold never overwrites a newer one), so it can be dropped and rebuilt from the log.
CREATE TABLE workflow_runs (
    run_id      text   NOT NULL PRIMARY KEY,
    tenant      text   NOT NULL,
    workflow_id text   NOT NULL,
    event_id    text   NOT NULL,
    event_type  text   NOT NULL,
    status      text   NOT NULL,
    action_id   text,
    started_us  bigint NOT NULL,
    updated_us  bigint NOT NULL,
    sequence    bigint NOT NULL
);
CREATE INDEX workflow_runs_by_tenant ON workflow_runs (tenant, started_us DESC, run_id DESC);
