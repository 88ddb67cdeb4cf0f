-- Secrets a tenant configures (the credentials of its webhook URL), kept apart from the event log:
-- events are immutable, exported to auditors and replicated to every reader, so they carry only
-- the redacted form (`https://***@host/…`) and the executor fetches the credentials from here.
-- A secret is replaced when the tenant sets it again; nothing else reads this table.
CREATE TABLE tenant_secrets (
    tenant     TEXT NOT NULL,
    name       TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (tenant, name)
);
