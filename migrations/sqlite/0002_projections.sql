-- The generations of every projection, with their checkpoints. A projection's rows and its
-- checkpoint change in the same transaction, so every event is applied exactly once.
CREATE TABLE projections (
    name                TEXT    NOT NULL,
    generation          BIGINT  NOT NULL,
    version             BIGINT  NOT NULL,
    state               TEXT    NOT NULL CHECK (state IN ('building', 'live', 'retired')),
    checkpoint_txid     BIGINT  NOT NULL DEFAULT 0,
    checkpoint_position BIGINT  NOT NULL DEFAULT 0,
    events              BIGINT  NOT NULL DEFAULT 0,
    created_at          BIGINT  NOT NULL,
    updated_at          BIGINT  NOT NULL,
    PRIMARY KEY (name, generation)
);

CREATE UNIQUE INDEX projections_one_live ON projections (name) WHERE state = 'live';
