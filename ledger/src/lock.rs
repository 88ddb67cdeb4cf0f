//! One active instance per named tailer (projection runner, relay, sealer, executor reactors).
//!
//! PostgreSQL: a session advisory lock held on a connection of its own for as long as the tailer
//! runs; if the process dies, the server drops the session and the lock with it. SQLite: an
//! exclusive `flock` on a file of its own beside the database (`<db>.locks/<key>`), so that a CLI
//! command (`countersign seal`) and a running `serve` on the same file exclude each other too;
//! the kernel releases it when the holder closes it or dies.
//!
//! How each store takes its lock is in `store::postgres` and `store::sqlite`.

use std::fs::File;

use sqlx::Connection;
use sqlx::postgres::PgConnection;

use crate::Ledger;
use crate::store::LedgerStore as _;

/// Held while a tailer runs; dropping it releases the lock.
#[derive(Debug)]
pub struct TailerLock {
    name: String,
    held: Held,
}

#[derive(Debug)]
enum Held {
    /// The session holding the advisory lock; closing it releases the lock.
    Postgres(Option<PgConnection>),
    /// The locked file; closing it releases the lock.
    File(#[expect(dead_code, reason = "held for its lock, released when dropped")] File),
}

/// The advisory lock key of a tailer name: the first 8 bytes of its blake3 hash.
pub fn advisory_key(name: &str) -> i64 {
    let digest = blake3::hash(format!("countersign tailer {name}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest.as_bytes()[..8]);
    i64::from_be_bytes(bytes)
}

impl Ledger {
    /// Takes the lock for tailer `name`, or returns `None` when another instance holds it.
    pub async fn lock_tailer(&self, name: &str) -> anyhow::Result<Option<TailerLock>> {
        self.store.lock_tailer(name).await
    }
}

impl TailerLock {
    /// A lock held by a PostgreSQL session (the connection that took the advisory lock).
    pub(crate) fn session(name: &str, connection: PgConnection) -> Self {
        Self {
            name: name.to_owned(),
            held: Held::Postgres(Some(connection)),
        }
    }

    /// A lock held by an open, `flock`ed file.
    pub(crate) fn file(name: &str, file: File) -> Self {
        Self {
            name: name.to_owned(),
            held: Held::File(file),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the lock is still held (on PostgreSQL, whether its session is alive).
    pub async fn is_held(&mut self) -> bool {
        match &mut self.held {
            Held::Postgres(Some(connection)) => connection.ping().await.is_ok(),
            Held::Postgres(None) => false,
            Held::File(_) => true,
        }
    }

    /// Releases the lock now, closing its session cleanly.
    pub async fn release(mut self) {
        if let Held::Postgres(connection) = &mut self.held
            && let Some(connection) = connection.take()
        {
            let _ = connection.close().await;
        }
    }
}

impl Drop for TailerLock {
    fn drop(&mut self) {
        match &mut self.held {
            // Dropping the connection closes its socket; the server then ends the session and
            // releases the advisory lock.
            Held::Postgres(connection) => drop(connection.take()),
            // Closing the file (dropping it) releases the flock.
            Held::File(_) => {}
        }
    }
}
