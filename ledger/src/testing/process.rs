use std::ops::{Deref, DerefMut};
use std::process::Child;

/// A child process a test started (a server, a peer), killed and reaped when dropped unless it
/// has already exited: a failing test leaves none behind, and none holds the test's output open
/// (which would keep `cargo test` waiting).
#[derive(Debug)]
pub struct ChildGuard(Child);

impl From<Child> for ChildGuard {
    fn from(child: Child) -> Self {
        Self(child)
    }
}

impl ChildGuard {
    /// SIGKILL, then reaps it: no graceful anything.
    pub fn kill_and_wait(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Deref for ChildGuard {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.kill_and_wait();
        }
    }
}
