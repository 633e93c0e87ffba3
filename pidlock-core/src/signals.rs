//! What happens on SIGTERM, SIGINT, SIGHUP, SIGQUIT and SIGABRT (SPEC §5).
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
//! # Signal context
//!
//! [`on_signal`] is the only code here that runs in signal context. It calls,
//! in order:
//!
//! - `sigaction(sig, NULL, &old)` to see who is installed: async-signal-safe (POSIX).
//! - [`exit_cleanup::remove_held_files`]: atomic loads and stores, `fstatat`
//!   and `unlinkat` on names prepared as C strings when the lock was taken;
//!   all async-signal-safe (POSIX.1-2008), no allocation, no locks.
//! - `write(2, ...)` of a constant message: async-signal-safe.
//! - `sigaction(sig, SIG_DFL)`, `pthread_sigmask(SIG_UNBLOCK)`, `raise(sig)`:
//!   async-signal-safe; the re-raised signal is delivered as soon as it is
//!   unblocked, with the default action, so the process ends there.
//!
//! `errno` is saved and restored around all of it for the case where the
//! handler returns (it was chained by a handler that replaced it).

use std::mem::MaybeUninit;
use std::sync::Once;

use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::{
    SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, pthread_sigmask, raise, sigaction,
};

use crate::exit_cleanup;

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

/// Installs the handler once per process, for each signal still at its default.
pub(crate) fn install() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let ours = SigAction::new(
            SigHandler::Handler(on_signal),
            // SA_ONSTACK: run on the alternate stack Rust sets up, if any.
            SaFlags::SA_RESTART | SaFlags::SA_ONSTACK,
            SigSet::empty(),
        );
        for signal in HANDLED {
            // Asking first, instead of installing and restoring, means an
            // ignored SIGHUP is never briefly fatal.
            if installed_handler(signal) == Some(libc::SIG_DFL) {
                // SAFETY: `on_signal` is async-signal-safe (module docs).
                let _ = unsafe { sigaction(signal, &ours) };
            }
        }
    });
}

/// The handler currently installed for `signal` (`sa_sigaction`), if the
/// kernel answers. nix only offers `sigaction` as "install and return the
/// old", so the query goes to libc directly.
fn installed_handler(signal: Signal) -> Option<libc::sighandler_t> {
    let mut current = MaybeUninit::<libc::sigaction>::uninit();
    // SAFETY: a null new action only reads the current one into `current`.
    let status = unsafe {
        libc::sigaction(
            signal as libc::c_int,
            std::ptr::null(),
            current.as_mut_ptr(),
        )
    };
    // SAFETY: initialised by the successful call.
    (status == 0).then(|| unsafe { current.assume_init() }.sa_sigaction)
}

fn our_handler() -> libc::sighandler_t {
    on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t
}

/// Runs in signal context; see the module docs for why each call is safe there.
extern "C" fn on_signal(raw: libc::c_int) {
    let saved_errno = Errno::last_raw();
    let Ok(signal) = Signal::try_from(raw) else {
        return;
    };
    if installed_handler(signal) == Some(our_handler()) {
        if exit_cleanup::remove_held_files() {
            exit_cleanup::announce_release();
        }
        die_of(signal);
    }
    Errno::set_raw(saved_errno);
}

/// Ends the process with `signal`'s default action.
fn die_of(signal: Signal) {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: restoring the default action is always sound.
    let _ = unsafe { sigaction(signal, &default) };
    let mut only = SigSet::empty();
    only.add(signal);
    let _ = raise(signal);
    // The signal is blocked while its handler runs; unblocking delivers the
    // pending one right here with the default action. Should the process
    // survive (it cannot for these signals), returning from the handler
    // delivers it again on the way out.
    let _ = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&only), None);
}
