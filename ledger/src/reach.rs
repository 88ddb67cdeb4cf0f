//! Whether a failure means the store could not be reached (down, restarting, paused, out of
//! connections) rather than that it refused or broke on a statement. Front doors answer the
//! first with "unavailable, retry" (HTTP 503 with `Retry-After`) and the second as an internal
//! error: a client may safely retry the first, and an operator reads the second.

use sqlx::error::DatabaseError;

/// SQLSTATE codes PostgreSQL gives while it cannot serve: the connection exception class
/// (`08…`), `53300` too many connections, `57P01`–`57P03` shutting down, crashed, starting up.
fn unavailable_state(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "53300" | "57P01" | "57P02" | "57P03")
}

fn database_unavailable(error: &dyn DatabaseError) -> bool {
    error.code().is_some_and(|code| unavailable_state(&code))
}

/// An error cqrs-es boxed, as an `anyhow::Error` whose chain shows the driver's error by its type
/// (`anyhow::Error::from_boxed` keeps the text but hides the type from the chain's downcasts).
pub(crate) fn from_box(err: Box<dyn std::error::Error + Send + Sync + 'static>) -> anyhow::Error {
    match err.downcast::<sqlx::Error>() {
        Ok(driver) => anyhow::Error::new(*driver),
        Err(other) => anyhow::Error::from_boxed(other),
    }
}

/// Whether `error`, or any error in its chain, says the store could not be reached.
pub fn store_unreachable(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        // The group commit shares one driver error among the commands it failed (an `Arc`).
        let driver = cause.downcast_ref::<sqlx::Error>().or_else(|| {
            cause
                .downcast_ref::<std::sync::Arc<sqlx::Error>>()
                .map(AsRef::as_ref)
        });
        if let Some(error) = driver {
            return match error {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                sqlx::Error::Database(error) => database_unavailable(error.as_ref()),
                _ => false,
            };
        }
        cause.downcast_ref::<std::io::Error>().is_some_and(|error| {
            matches!(
                error.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::UnexpectedEof
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error holding an `anyhow::Error` as its source, as `AppError::Internal` does.
    #[derive(Debug, thiserror::Error)]
    #[error("the event store failed")]
    struct Wrapper(#[source] anyhow::Error);

    #[test]
    fn connection_failures_are_unreachable_and_statement_failures_are_not() {
        let refused = anyhow::Error::from(sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))
        .context("reading the log");
        assert!(store_unreachable(&refused));
        assert!(store_unreachable(&anyhow::Error::from(
            sqlx::Error::PoolTimedOut
        )));
        assert!(!store_unreachable(&anyhow::Error::from(
            sqlx::Error::RowNotFound
        )));
        assert!(!store_unreachable(&anyhow::anyhow!("a statement failed")));
        let shared = anyhow::Error::new(std::sync::Arc::new(sqlx::Error::PoolClosed))
            .context("appending events");
        assert!(store_unreachable(&shared));
        // cqrs-es boxes the driver's error; the ledger unboxes it with `from_box`.
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(sqlx::Error::PoolTimedOut);
        assert!(store_unreachable(&from_box(boxed)));
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(sqlx::Error::PoolTimedOut);
        let wrapped = anyhow::Error::new(Wrapper(from_box(boxed)));
        assert!(store_unreachable(&wrapped));
        assert!(unavailable_state("08006") && unavailable_state("57P01"));
        assert!(!unavailable_state("23505"));
    }
}
