//! Why a use case refused or failed. Every front door maps these to its own answer (the HTTP
//! gateway to problem+json in `gateway/src/error.rs`); the codes are stable.

use countersign_domain::ParseError;
use countersign_domain::action::ActionError;
use countersign_domain::tenant::TenantError;
use countersign_ledger::LedgerError;
use countersign_projections::QueryError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The actor lacks the role the use case needs.
    #[error("{0}")]
    Forbidden(String),
    /// The resource does not exist in the actor's tenant (another tenant's answers the same).
    #[error("{what} not found")]
    NotFound {
        code: &'static str,
        what: &'static str,
    },
    /// The domain refused an action command; nothing was recorded.
    #[error(transparent)]
    Action(#[from] ActionError),
    /// The domain refused a tenant command; nothing was recorded.
    #[error(transparent)]
    Tenant(#[from] TenantError),
    /// Input the use case cannot take, naming the field.
    #[error(transparent)]
    InvalidInput(#[from] ParseError),
    /// Concurrent writers kept changing the resource; nothing was recorded, retry.
    #[error("the resource kept changing during {attempts} attempts; nothing was recorded, retry")]
    Conflict { attempts: u32 },
    /// An event would not read back; nothing was recorded.
    #[error("the request cannot be recorded: {0}")]
    Unreadable(String),
    /// A feature this deployment has not configured.
    #[error("{message}")]
    Unavailable { code: &'static str, message: String },
    /// The request is understood but cannot be met as asked (a proof of a tree larger than the
    /// sealed one, an export range outside the signed tree).
    #[error("{message}")]
    CannotDo { code: &'static str, message: String },
    /// The tenant's state does not allow it yet (nothing signed to export); the same request
    /// may succeed later.
    #[error("{message}")]
    NotYet { code: &'static str, message: String },
    /// The read model has not reached the awaited write within the wait.
    #[error("the read model has not reached that write yet; retry")]
    NotCaughtUp,
    /// A consistency cursor beyond any write the log holds.
    #[error("the cursor names a write the log does not hold")]
    CursorAhead,
    /// A read model refused the read.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// The store or another dependency failed; the source says how.
    #[error("{context}")]
    Internal {
        context: &'static str,
        #[source]
        source: anyhow::Error,
    },
}

impl AppError {
    pub fn not_found(code: &'static str, what: &'static str) -> Self {
        Self::NotFound { code, what }
    }

    pub fn action_not_found() -> Self {
        Self::not_found("action_not_found", "action")
    }

    pub fn internal(context: &'static str, source: impl Into<anyhow::Error>) -> Self {
        Self::Internal {
            context,
            source: source.into(),
        }
    }

    /// The stable code of the refusal, for metrics and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Forbidden(_) => "forbidden",
            Self::NotFound { code, .. }
            | Self::Unavailable { code, .. }
            | Self::CannotDo { code, .. }
            | Self::NotYet { code, .. } => code,
            Self::Action(error) => error.code(),
            Self::Tenant(error) => error.code(),
            Self::InvalidInput(_) => "invalid_input",
            Self::Conflict { .. } => "conflict",
            Self::Unreadable(_) => "unreadable_input",
            Self::NotCaughtUp => "not_caught_up",
            Self::CursorAhead => "consistency_token_ahead",
            Self::Query(QueryError::InvalidCursor) => "invalid_cursor",
            Self::Query(QueryError::NotReady(_)) => "not_ready",
            Self::Query(QueryError::Store(_)) | Self::Internal { .. } => "internal",
        }
    }
}

impl<E> From<LedgerError<E>> for AppError
where
    E: std::error::Error + Into<AppError>,
{
    fn from(error: LedgerError<E>) -> Self {
        match error {
            LedgerError::Rejected(error) => error.into(),
            LedgerError::Conflict { attempts } => Self::Conflict { attempts },
            LedgerError::Store(source) => Self::internal("the event store failed", source),
            LedgerError::Unreadable(detail) => Self::Unreadable(detail),
        }
    }
}

impl From<anyhow::Error> for AppError {
    fn from(source: anyhow::Error) -> Self {
        Self::internal("a store read failed", source)
    }
}
