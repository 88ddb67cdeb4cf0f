-- Verifiable history: the sealer gives each tenant's events a gapless ledger sequence and a leaf
-- of a blake3 Merkle tree (RFC 9162 shape), and stores signed heads of each tenant's tree.
-- Leaves, trees and the sealer's checkpoint change in one transaction, so every event is sealed
-- exactly once. Hashes are hexadecimal text (portable between the two stores).

-- The sealer's place in the log (one row).
CREATE TABLE ledger_seal (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    checkpoint_txid     INTEGER NOT NULL DEFAULT 0,
    checkpoint_position INTEGER NOT NULL DEFAULT 0,
    events              INTEGER NOT NULL DEFAULT 0,
    updated_at          INTEGER NOT NULL DEFAULT 0
);
INSERT INTO ledger_seal (id) VALUES (1);

-- Each tenant's tree (see the PostgreSQL migration).
CREATE TABLE ledger_trees (
    tenant         TEXT    PRIMARY KEY,
    size           INTEGER NOT NULL,
    frontier       TEXT    NOT NULL,
    head_size      INTEGER NOT NULL DEFAULT 0,
    pending_since  INTEGER,
    published_size INTEGER NOT NULL DEFAULT 0,
    updated_at     INTEGER NOT NULL
);

CREATE TABLE ledger_leaves (
    tenant          TEXT    NOT NULL,
    ledger_sequence INTEGER NOT NULL CHECK (ledger_sequence >= 0),
    position        INTEGER NOT NULL,
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    sequence        INTEGER NOT NULL,
    event_type      TEXT    NOT NULL,
    event_version   TEXT    NOT NULL,
    recorded_at     TEXT    NOT NULL,
    payload_hash    TEXT    NOT NULL,
    metadata_hash   TEXT    NOT NULL,
    leaf_hash       TEXT    NOT NULL,
    PRIMARY KEY (tenant, ledger_sequence)
);
CREATE UNIQUE INDEX ledger_leaves_event ON ledger_leaves (aggregate_type, aggregate_id, sequence);
CREATE UNIQUE INDEX ledger_leaves_position ON ledger_leaves (position);

CREATE TABLE ledger_heads (
    tenant    TEXT    NOT NULL,
    tree_size INTEGER NOT NULL CHECK (tree_size > 0),
    root      TEXT    NOT NULL,
    signed_at TEXT    NOT NULL,
    key_id    TEXT    NOT NULL,
    signature TEXT    NOT NULL,
    PRIMARY KEY (tenant, tree_size)
);

-- Leaves and heads are append-only, like events.
CREATE TRIGGER ledger_leaves_refuse_update BEFORE UPDATE ON ledger_leaves
BEGIN
    SELECT RAISE(ABORT, 'ledger leaves are append-only: UPDATE refused');
END;
CREATE TRIGGER ledger_leaves_refuse_delete BEFORE DELETE ON ledger_leaves
BEGIN
    SELECT RAISE(ABORT, 'ledger leaves are append-only: DELETE refused');
END;
CREATE TRIGGER ledger_heads_refuse_update BEFORE UPDATE ON ledger_heads
BEGIN
    SELECT RAISE(ABORT, 'ledger heads are append-only: UPDATE refused');
END;
CREATE TRIGGER ledger_heads_refuse_delete BEFORE DELETE ON ledger_heads
BEGIN
    SELECT RAISE(ABORT, 'ledger heads are append-only: DELETE refused');
END;
