-- Verifiable history: the sealer gives each tenant's events a gapless ledger sequence and a leaf
-- of a blake3 Merkle tree (RFC 9162 shape), and stores signed heads of each tenant's tree.
-- Leaves, trees and the sealer's checkpoint change in one transaction, so every event is sealed
-- exactly once. Hashes are hexadecimal text (portable between the two stores).

-- The sealer's place in the log (one row).
CREATE TABLE ledger_seal (
    id                  bigint PRIMARY KEY CHECK (id = 1),
    checkpoint_txid     bigint NOT NULL DEFAULT 0,
    checkpoint_position bigint NOT NULL DEFAULT 0,
    events              bigint NOT NULL DEFAULT 0,
    updated_at          bigint NOT NULL DEFAULT 0
);
INSERT INTO ledger_seal (id) VALUES (1);

-- Each tenant's tree: its size, its right edge (the roots of its perfect subtrees), the size of
-- its newest signed head, since when leaves have waited for a head (µs), and how far heads
-- were published outside the database.
CREATE TABLE ledger_trees (
    tenant         text   PRIMARY KEY,
    size           bigint NOT NULL,
    frontier       text   NOT NULL,
    head_size      bigint NOT NULL DEFAULT 0,
    pending_since  bigint,
    published_size bigint NOT NULL DEFAULT 0,
    updated_at     bigint NOT NULL
);

-- One leaf per event. Beside the leaf hash: where the event was and digests of its parts, so a
-- verifier can name what changed (they are evidence, not trust: heads sign the roots).
CREATE TABLE ledger_leaves (
    tenant          text   NOT NULL,
    ledger_sequence bigint NOT NULL CHECK (ledger_sequence >= 0),
    position        bigint NOT NULL,
    aggregate_type  text   NOT NULL,
    aggregate_id    text   NOT NULL,
    sequence        bigint NOT NULL,
    event_type      text   NOT NULL,
    event_version   text   NOT NULL,
    recorded_at     text   NOT NULL,
    payload_hash    text   NOT NULL,
    metadata_hash   text   NOT NULL,
    leaf_hash       text   NOT NULL,
    PRIMARY KEY (tenant, ledger_sequence)
);
CREATE UNIQUE INDEX ledger_leaves_event ON ledger_leaves (aggregate_type, aggregate_id, sequence);
CREATE UNIQUE INDEX ledger_leaves_position ON ledger_leaves (position);

-- Signed heads, as signed (see docs/verification.md for the signed message).
CREATE TABLE ledger_heads (
    tenant    text   NOT NULL,
    tree_size bigint NOT NULL CHECK (tree_size > 0),
    root      text   NOT NULL,
    signed_at text   NOT NULL,
    key_id    text   NOT NULL,
    signature text   NOT NULL,
    PRIMARY KEY (tenant, tree_size)
);

-- Leaves and heads are append-only, like events.
CREATE FUNCTION countersign_refuse_seal_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER ledger_leaves_refuse_update_delete
    BEFORE UPDATE OR DELETE ON ledger_leaves
    FOR EACH ROW EXECUTE FUNCTION countersign_refuse_seal_change();
CREATE TRIGGER ledger_leaves_refuse_truncate
    BEFORE TRUNCATE ON ledger_leaves
    FOR EACH STATEMENT EXECUTE FUNCTION countersign_refuse_seal_change();
CREATE TRIGGER ledger_heads_refuse_update_delete
    BEFORE UPDATE OR DELETE ON ledger_heads
    FOR EACH ROW EXECUTE FUNCTION countersign_refuse_seal_change();
CREATE TRIGGER ledger_heads_refuse_truncate
    BEFORE TRUNCATE ON ledger_heads
    FOR EACH STATEMENT EXECUTE FUNCTION countersign_refuse_seal_change();

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'countersign_app') THEN
        REVOKE ALL ON ledger_leaves, ledger_heads FROM countersign_app;
        GRANT SELECT, INSERT ON ledger_leaves, ledger_heads TO countersign_app;
        GRANT SELECT, INSERT, UPDATE ON ledger_seal, ledger_trees TO countersign_app;
    END IF;
END
$$;
