//! A daemon that takes the lock, then detaches from the terminal: the
//! `fork`/`daemon(3)` pattern (DESIGN.md, *Processes and places*).
//!
//! ```text
//! cargo run --example daemon     # returns at once; the daemon runs on
//! cat data/daemon.pid            # the daemon's PID, not the launcher's
//! cargo run --example daemon     # refused: the daemon holds the lock
//! kill "$(cat data/daemon.pid)"  # the daemon removes its file and exits
//! ```
//!
//! The lock is taken first, so a second copy is refused before it detaches.
//! `daemon(3)` forks: the parent leaves with `_exit` (no clean-up, so it
//! does not remove the file the child still needs), the child carries on.
//! The child calls `pidlock_core::daemonized()` to become the lock's owner:
//! its PID goes into the file and its exit paths release.

use std::time::Duration;

#[pidlock_core::single_instance(path = "data/daemon.pid")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // nochdir: keep the working directory (the relative PID file path was
    // resolved already, but the daemon's own work may use it); noclose:
    // keep stderr, where pidlock's lines go in this example.
    nix::unistd::daemon(true, true)?;
    pidlock_core::daemonized()?;
    eprintln!("daemon {}: running", std::process::id());
    loop {
        // The daemon's work.
        std::thread::sleep(Duration::from_secs(60));
    }
}
