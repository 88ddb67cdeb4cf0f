//! Read models: the inbox, action detail, audit trail, stats and history, folded from the log.
//!
//! Each projection tails the ledger's log from its own checkpoint and writes its rows and its
//! checkpoint in one transaction, so every event is applied exactly once, whatever crashes
//! happen. A projection lives in numbered *generations* of tables (`p_actions_g3`, …): a new
//! generation is built from the start of the log beside the live one — when the code's version
//! changes, or on demand — and reads switch to it atomically once it has caught up. The rows are
//! a pure function of the events (see [`rows`]), so a rebuild is identical, row for row, to the
//! incrementally maintained tables, and [`replay`] can fold the same rows in memory up to any
//! past moment.
//!
//! Both stores are reached through sqlx's `Any` driver with portable SQL (`$n` placeholders,
//! `TEXT`/`BIGINT` columns, times as microseconds since the epoch). On PostgreSQL every
//! projection table also has row-level security keyed on the `countersign.tenant` setting, for
//! the `countersign_reader` role that reads run as.

mod apply;
pub mod query;
pub mod replay;
pub mod rows;
mod runner;
mod store;
pub mod trends;

pub use query::{
    ActionDetail, AuditEntry, BreakGlassMark, BreakGlassReviewState, InboxFilter, InboxItem,
    InboxPage, InboxSort, QueryError, StageRules, TenantStats, VoteRecord,
};
pub use runner::{Outcome, Runner, Supervisor, rebuild};
pub use store::{Generation, GenerationState, ProjectionStore};

/// The projections countersign maintains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Projection {
    /// One row per action (inbox, detail, requester history), who may vote on open actions,
    /// and per-tenant stats counters.
    Actions,
    /// One row per event (audit trail) and per vote (voter history).
    Audit,
}

impl Projection {
    pub const ALL: [Self; 2] = [Self::Actions, Self::Audit];

    pub fn name(self) -> &'static str {
        match self {
            Self::Actions => "actions",
            Self::Audit => "audit",
        }
    }

    /// The shape version the code writes. Bump it when the tables or the rows change: `serve`
    /// then builds a new generation beside the live one and switches to it when caught up.
    pub fn version(self) -> i64 {
        match self {
            // 2: a delegate who cast a ballot is `voted` in the stage; a delegated vote is the
            // delegator's. 3: `review_due` (break-glass reviews to escalate) and `vote_summary`
            // (the inbox's current-stage progress). 4: `break_glass` (the inbox's mark).
            // 5: `stage_rules` (the stage count and current rules the console's inbox words).
            Self::Actions => 5,
            Self::Audit => 2,
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|projection| projection.name() == name)
    }

    /// The tables of one generation.
    pub fn tables(self, generation: i64) -> Vec<String> {
        let stems: &[&str] = match self {
            Self::Actions => &["actions", "eligibility", "stats"],
            Self::Audit => &["audit", "votes"],
        };
        stems
            .iter()
            .map(|stem| format!("p_{stem}_g{generation}"))
            .collect()
    }

    /// The nullable columns added to a projection's tables after its first version: (the
    /// version that added it, the table's stem, the column, its type). An older live generation
    /// gets them before it serves again ([`ProjectionStore::add_missing_columns`]): the code
    /// reads and writes the current columns, and the old generation must keep serving and keep
    /// up while its successor builds. A column added later goes here as well as in the DDL.
    fn added_columns(self) -> &'static [(i64, &'static str, &'static str, &'static str)] {
        match self {
            Self::Actions => &[
                (3, "actions", "review_due", "BIGINT"),
                (3, "actions", "vote_summary", "TEXT"),
                (4, "actions", "break_glass", "TEXT"),
                (5, "actions", "stage_rules", "TEXT"),
            ],
            Self::Audit => &[],
        }
    }

    /// The columns holding large texts (TOASTed and compressed on PostgreSQL).
    fn large_texts(self, generation: i64) -> Vec<(String, &'static str)> {
        match self {
            Self::Actions => vec![(format!("p_actions_g{generation}"), "state")],
            Self::Audit => vec![(format!("p_audit_g{generation}"), "content")],
        }
    }

    /// DDL creating one generation's tables and their primary keys (portable; RLS is added
    /// separately on PostgreSQL, the secondary indexes by [`Self::indexes`]).
    fn ddl(self, g: i64) -> Vec<String> {
        match self {
            Self::Actions => vec![
                format!(
                    "CREATE TABLE p_actions_g{g} (
                        action_id TEXT NOT NULL PRIMARY KEY,
                        tenant TEXT NOT NULL,
                        status TEXT NOT NULL,
                        action_type TEXT NOT NULL,
                        module TEXT NOT NULL,
                        capability TEXT NOT NULL,
                        summary TEXT NOT NULL,
                        requested_by TEXT NOT NULL,
                        risk_score BIGINT NOT NULL,
                        risk_level TEXT NOT NULL,
                        stage BIGINT NOT NULL,
                        escalations BIGINT NOT NULL,
                        allow_self_approval BIGINT NOT NULL,
                        submitted_at BIGINT NOT NULL,
                        expires_at BIGINT NOT NULL,
                        decided_at BIGINT,
                        review_due BIGINT,
                        vote_summary TEXT,
                        break_glass TEXT,
                        stage_rules TEXT,
                        position BIGINT NOT NULL,
                        state TEXT NOT NULL
                    )"
                ),
                format!(
                    "CREATE TABLE p_eligibility_g{g} (
                        action_id TEXT NOT NULL,
                        tenant TEXT NOT NULL,
                        kind TEXT NOT NULL,
                        principal TEXT NOT NULL,
                        PRIMARY KEY (action_id, kind, principal)
                    )"
                ),
                format!(
                    "CREATE TABLE p_stats_g{g} (
                        tenant TEXT NOT NULL,
                        metric TEXT NOT NULL,
                        key TEXT NOT NULL,
                        value BIGINT NOT NULL,
                        PRIMARY KEY (tenant, metric, key)
                    )"
                ),
            ],
            Self::Audit => vec![
                format!(
                    "CREATE TABLE p_audit_g{g} (
                        action_id TEXT NOT NULL,
                        sequence BIGINT NOT NULL,
                        tenant TEXT NOT NULL,
                        position BIGINT NOT NULL,
                        event_type TEXT NOT NULL,
                        event_version TEXT NOT NULL,
                        actor TEXT NOT NULL,
                        at BIGINT NOT NULL,
                        recorded_at BIGINT NOT NULL,
                        correlation_id TEXT,
                        content TEXT NOT NULL,
                        PRIMARY KEY (action_id, sequence)
                    )"
                ),
                format!(
                    "CREATE TABLE p_votes_g{g} (
                        action_id TEXT NOT NULL,
                        sequence BIGINT NOT NULL,
                        tenant TEXT NOT NULL,
                        voter TEXT NOT NULL,
                        stage BIGINT NOT NULL,
                        vote TEXT NOT NULL,
                        comment TEXT,
                        roles TEXT NOT NULL,
                        at BIGINT NOT NULL,
                        PRIMARY KEY (action_id, sequence)
                    )"
                ),
            ],
        }
    }

    /// The secondary indexes of one generation's tables (the primary keys are in [`Self::ddl`]).
    /// A generation built from the start of the log gets them once it has caught up
    /// ([`ProjectionStore::create_indexes`]): building an index over the finished rows once
    /// costs far less than maintaining it at every row a rebuild writes and rewrites.
    fn indexes(self, g: i64) -> Vec<String> {
        match self {
            Self::Actions => vec![
                format!(
                    "CREATE INDEX IF NOT EXISTS p_actions_g{g}_review_due ON p_actions_g{g} (review_due)"
                ),
                format!(
                    "CREATE INDEX IF NOT EXISTS p_actions_g{g}_created ON p_actions_g{g} (tenant, status, submitted_at, action_id)"
                ),
                format!(
                    "CREATE INDEX IF NOT EXISTS p_actions_g{g}_risk ON p_actions_g{g} (tenant, status, risk_score, action_id)"
                ),
                format!(
                    "CREATE INDEX IF NOT EXISTS p_actions_g{g}_deadline ON p_actions_g{g} (tenant, status, expires_at, action_id)"
                ),
                format!(
                    "CREATE INDEX IF NOT EXISTS p_actions_g{g}_requester ON p_actions_g{g} (tenant, requested_by, submitted_at, action_id)"
                ),
                format!(
                    "CREATE INDEX IF NOT EXISTS p_eligibility_g{g}_principal ON p_eligibility_g{g} (tenant, kind, principal, action_id)"
                ),
            ],
            Self::Audit => vec![
                format!(
                    "CREATE INDEX IF NOT EXISTS p_audit_g{g}_tenant ON p_audit_g{g} (tenant, position)"
                ),
                format!(
                    "CREATE INDEX IF NOT EXISTS p_votes_g{g}_voter ON p_votes_g{g} (tenant, voter, at, action_id)"
                ),
            ],
        }
    }
}

impl std::fmt::Display for Projection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Microseconds since the epoch: how projection tables store instants on both stores.
pub fn micros(at: chrono::DateTime<chrono::Utc>) -> i64 {
    at.timestamp_micros()
}

/// The instant stored as microseconds since the epoch.
pub fn instant(micros: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(micros).unwrap_or_default()
}
