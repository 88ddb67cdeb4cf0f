-- The generations of every projection, with their checkpoints. A projection's rows and its
-- checkpoint change in the same transaction, so every event is applied exactly once.
CREATE TABLE projections (
    name                text   NOT NULL,
    generation          bigint NOT NULL,
    version             bigint NOT NULL,
    state               text   NOT NULL CHECK (state IN ('building', 'live', 'retired')),
    checkpoint_txid     bigint NOT NULL DEFAULT 0,
    checkpoint_position bigint NOT NULL DEFAULT 0,
    events              bigint NOT NULL DEFAULT 0,
    created_at          bigint NOT NULL,
    updated_at          bigint NOT NULL,
    PRIMARY KEY (name, generation)
);

CREATE UNIQUE INDEX projections_one_live ON projections (name) WHERE state = 'live';

-- Reads run as countersign_reader: row-level security on every projection table shows it only
-- the rows of the tenant in the `countersign.tenant` setting. The role is cluster-wide; where
-- the migrating user may not create roles, reads rely on their tenant filters alone.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'countersign_reader') THEN
        CREATE ROLE countersign_reader NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
    WHEN insufficient_privilege THEN
        RAISE NOTICE 'countersign_reader was not created: reads rely on tenant filters alone';
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'countersign_reader') THEN
        GRANT SELECT ON projections TO countersign_reader;
        IF NOT pg_has_role(current_user, 'countersign_reader', 'MEMBER') THEN
            EXECUTE format('GRANT countersign_reader TO %I', current_user);
        END IF;
    END IF;
EXCEPTION
    WHEN insufficient_privilege THEN
        RAISE NOTICE 'countersign_reader could not be granted';
END
$$;
