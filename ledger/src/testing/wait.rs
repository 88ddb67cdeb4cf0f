//! Waiting for what happens on its own time (another task's work, PostgreSQL's readable horizon,
//! a child process) without sleeping longer than it takes, and failing the test, saying what was
//! still missing, once the wait has gone on too long.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// When a wait gives up, and how long it pauses between two tries (20 ms unless
/// [`every`](Deadline::every) says otherwise). One deadline can bound several waits.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
    pause: Duration,
}

/// The deadline `patience` from now.
pub fn within(patience: Duration) -> Deadline {
    Deadline {
        at: Instant::now() + patience,
        pause: Duration::from_millis(20),
    }
}

impl Deadline {
    /// The same deadline, tried every `pause` (for a try that costs a peer real work).
    pub fn every(self, pause: Duration) -> Self {
        Self { pause, ..self }
    }

    fn passed(&self) -> bool {
        Instant::now() >= self.at
    }
}

/// Tries `attempt` until it answers `Ok`, and returns what it answered; when a try after the
/// deadline answers `Err(why)`, the test fails with `why`.
pub async fn eventually<T, E: Display>(
    deadline: Deadline,
    mut attempt: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    loop {
        match attempt().await {
            Ok(done) => return done,
            Err(why) => {
                assert!(!deadline.passed(), "{why}");
                tokio::time::sleep(deadline.pause).await;
            }
        }
    }
}

/// [`eventually`] outside an async runtime: the thread sleeps between tries.
pub fn eventually_blocking<T, E: Display>(
    deadline: Deadline,
    mut attempt: impl FnMut() -> Result<T, E>,
) -> T {
    loop {
        match attempt() {
            Ok(done) => return done,
            Err(why) => {
                assert!(!deadline.passed(), "{why}");
                std::thread::sleep(deadline.pause);
            }
        }
    }
}
