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
//! - [`exit_cleanup::remove_held_files`]: atomic loads and stores, `getpid`,
//!   `fstatat` and `unlinkat` on names prepared as C strings when the lock
//!   was taken, `send(2)` of a constant `STOPPING=1` on a socket connected
//!   earlier (under systemd); all async-signal-safe (POSIX.1-2008), no
//!   allocation, no locks.
//! - `write(2, ...)` of the release lines formatted when the lock was taken:
//!   async-signal-safe.
//! - `sigaction(sig, SIG_DFL)`, `pthread_sigmask(SIG_UNBLOCK)`, `raise(sig)`:
//!   async-signal-safe; the re-raised signal is delivered as soon as it is
//!   unblocked, with the default action, so the process ends there.
//! - `_exit(128 + sig)`, async-signal-safe, if the process survived that: the
//!   first process of a PID namespace (PID 1 in a container) has no default
//!   action for these signals, and a process whose file is gone must not
//!   keep running (SPEC §10, "PID 1").
//!
//! Only the lock's owner removes files: in a `fork()` child the handler finds
//! nothing of its own to remove and just dies of the signal (SPEC §10,
//! "Ownership").
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
///
/// All five are blocked while they are installed: each `sigaction` installs
/// ours and returns the previous action in one call, and a signal that was not
/// at its default (ignored under `nohup`, or handled) gets its previous action
/// back before it is unblocked. A signal arriving in between stays pending and
/// meets the right action: an ignored one is discarded when `SIG_IGN` is
/// restored (POSIX), a handled one reaches its handler. Seven system calls
/// instead of ten for query-then-install.
pub(crate) fn install() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let ours = SigAction::new(
            SigHandler::Handler(on_signal),
            // SA_ONSTACK: run on the alternate stack Rust sets up, if any.
            SaFlags::SA_RESTART | SaFlags::SA_ONSTACK,
            SigSet::empty(),
        );
        let mut handled = SigSet::empty();
        for signal in HANDLED {
            handled.add(signal);
        }
        let mut previous_mask = SigSet::empty();
        if pthread_sigmask(
            SigmaskHow::SIG_BLOCK,
            Some(&handled),
            Some(&mut previous_mask),
        )
        .is_err()
        {
            return;
        }
        for signal in HANDLED {
            // SAFETY: `on_signal` is async-signal-safe (module docs).
            if let Ok(previous) = unsafe { sigaction(signal, &ours) }
                && !matches!(previous.handler(), SigHandler::SigDfl)
            {
                // SAFETY: puts back exactly what was installed before.
                let _ = unsafe { sigaction(signal, &previous) };
            }
        }
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous_mask), None);
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
        exit_cleanup::remove_held_files();
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
    // pending one right here with the default action, and the process ends.
    let _ = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&only), None);
    // Still here: the kernel dropped the signal instead, as it does for the
    // first process of a PID namespace (a container without `--init`), which
    // gets no default action. The file is already gone, so the process must
    // not run on: end it as `docker run --init` (tini) would, with 128 + n.
    // SAFETY: `_exit` is async-signal-safe and never returns.
    unsafe { libc::_exit(128 + signal as libc::c_int) };
}
