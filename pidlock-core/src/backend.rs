//! The seam between "hold a lock for the life of the program" and where the
//! lock lives. The one-host PID file is one backend; a lock in a shared
//! service (SPEC §8) is another, taken after the local one.

use crate::error::Result;

/// A place a single-instance lock can be taken.
pub(crate) trait Backend {
    /// Takes the lock without waiting.
    fn acquire(&self) -> Result<Box<dyn Held>>;
}

/// A lock that is held until dropped.
pub(crate) trait Held: std::fmt::Debug + Send {}
