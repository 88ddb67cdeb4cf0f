-- Secrets a tenant configures (the credentials of its webhook URL), kept apart from the event log:
-- events are immutable, exported to auditors and replicated to every reader, so they carry only
-- the redacted form (`https://***@host/…`) and the executor fetches the credentials from here.
-- A secret is replaced when the tenant sets it again; nothing else reads this table.
CREATE TABLE tenant_secrets (
    tenant     text        NOT NULL,
    name       text        NOT NULL,
    value      text        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, name)
);
