//! What happens on SIGTERM, SIGINT, SIGHUP, SIGQUIT and SIGABRT (DESIGN.md, *Exit paths*).
//!
//! With [`Signals::Auto`], pidlock installs a handler for each of these
//! signals whose disposition is still the default when the lock is first
//! taken. When one arrives and nobody else has taken the signal over, the
//! handler removes the PID file and then dies of the same signal, so the exit
//! status still says "killed by SIGTERM". A signal that was ignored (`nohup`
//! sets SIGHUP to `SIG_IGN`) or already handled is left alone.
//!
//! When the program later installs its own handling (tokio::signal, ctrlc,
//! signal-hook or a plain `sigaction`), that handling must win: the program's
//! graceful shutdown runs and the guard releases when `main` returns. Some of
//! those libraries replace our handler; others (signal-hook-registry, used by
//! tokio) keep it and call it first. So the handler asks the kernel whether it
//! is still the installed action, and does nothing if it is not.
//!
//! What runs in the handler, and why each call is safe there, is in
//! [`crate::signal_context`].

use std::sync::Once;

use nix::sys::signal::Signal;

use crate::signal_context;

/// Whether terminating signals remove the PID file (the attribute's
/// `signals = "..."` key).
///
/// ```
/// use pidlock_core::{PidLock, Signals};
///
/// // A program that manages its own signals entirely:
/// let lock = PidLock::new("/tmp/example-signals.pid").signals(Signals::None);
/// # let _ = lock;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Signals {
    /// Remove the file on SIGTERM, SIGINT, SIGHUP, SIGQUIT and SIGABRT when the
    /// program does not handle them itself, then die of the signal as before.
    #[default]
    Auto,
    /// Install no signal handling at all.
    None,
}

/// The signals whose default action ends the process and that a user or a
/// supervisor sends to stop a program (SIGABRT: `abort()` and `panic = "abort"`).
const HANDLED: [Signal; 5] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGABRT,
];

/// Installs the handler once per process, for each signal still at its
/// default.
pub(crate) fn install() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| signal_context::install_handler(&HANDLED));
}
