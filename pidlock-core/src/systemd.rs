//! Telling a supervisor what the lock is doing (DESIGN.md, *CLI and supervisors*): the `sd_notify`
//! protocol and journald priorities.
//!
//! Under systemd (or a container runtime that speaks its protocol) the
//! service manager passes a datagram socket in `NOTIFY_SOCKET`. pidlock sends
//! `STATUS=` lines while it waits, holds and releases, `EXTEND_TIMEOUT_USEC=`
//! while it waits (so `TimeoutStartSec=` does not kill a standby),
//! `STOPPING=1` when the program ends, and `READY=1` when the lock is held if
//! the program opted in. Nothing is sent when `NOTIFY_SOCKET` is unset.
//!
//! The datagram is sent here rather than through the `sd-notify` crate,
//! which does not connect to the abstract-namespace form (`@name`); it is a
//! dozen lines of `std`. pidlock reads the address once and leaves
//! `NOTIFY_SOCKET` in the environment: the program may notify systemd
//! itself (its own `READY=1`, `WATCHDOG=1`), and the `sd-notify` crate and
//! libsystemd read the variable on every call. Children inherit it too;
//! systemd's default `NotifyAccess=main` ignores what they send.
//!
//! The exit paths that run in a signal handler send `STOPPING=1` too, on the
//! socket connected by an earlier notification (see [`crate::signal_context`]).
//!
//! When stderr is the journal (`JOURNAL_STREAM` names stderr's device and
//! inode), every line pidlock writes there starts with its syslog priority
//! (`<3>` error, `<4>` warning, `<6>` info), so `journalctl -p err` finds a
//! conflict.

use std::ffi::{OsStr, OsString};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;
use std::time::Duration;

use crate::signal_context;
use crate::sys::{self, Identity};

/// How often a waiting standby asks for more start-up time, and how much it
/// asks for: three times the interval, so one late message does not matter.
pub(crate) const EXTEND_EVERY: Duration = Duration::from_secs(5);
const EXTEND_BY: Duration = Duration::from_secs(15);

const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// The service manager's socket, read from the environment the first time
/// pidlock looks (before any lock is taken).
fn socket() -> Option<&'static OsStr> {
    static SOCKET: OnceLock<Option<OsString>> = OnceLock::new();
    SOCKET
        .get_or_init(|| std::env::var_os(NOTIFY_SOCKET).filter(|value| !value.is_empty()))
        .as_deref()
}

/// The `NOTIFY_SOCKET` this process was started with, if any: where
/// pidlock sends its notifications. pidlock leaves the variable in the
/// environment, so the program and its libraries can notify systemd
/// themselves as well.
///
/// ```
/// if let Some(socket) = pidlock_core::notify_socket() {
///     println!("notifications go to {}", socket.to_string_lossy());
/// }
/// ```
#[must_use]
pub fn notify_socket() -> Option<&'static OsStr> {
    socket()
}

/// Whether a service manager listens (`NOTIFY_SOCKET` was set at start).
pub(crate) fn is_supervised() -> bool {
    socket().is_some()
}

/// The datagram socket connected to the service manager, made at the first
/// notification and kept (close-on-exec, so children do not get it). Its
/// number is also published for the exit paths that run in a signal handler
/// ([`signal_context::set_stopping_socket`]).
fn connected() -> Option<&'static UnixDatagram> {
    static CONNECTED: OnceLock<Option<UnixDatagram>> = OnceLock::new();
    CONNECTED
        .get_or_init(|| {
            let socket = connect(socket()?).ok()?;
            signal_context::set_stopping_socket(socket.as_raw_fd());
            Some(socket)
        })
        .as_ref()
}

/// Sends `state` (newline-separated `KEY=value` assignments) to the service
/// manager, if there is one. Errors are ignored: a supervisor that stopped
/// listening must not stop the program.
pub(crate) fn notify(state: &str) {
    if let Some(socket) = connected() {
        let _ = socket.send(state.as_bytes());
    }
}

/// A datagram socket connected to `address`: a path, or on Linux `@name`
/// for the abstract namespace.
fn connect(address: &OsStr) -> std::io::Result<UnixDatagram> {
    if let Some(name) = address.as_encoded_bytes().strip_prefix(b"@") {
        return sys::connect_abstract(name);
    }
    let socket = UnixDatagram::unbound()?;
    socket.connect(address)?;
    Ok(socket)
}

/// `EXTEND_TIMEOUT_USEC=` asking for [`EXTEND_BY`] more.
pub(crate) fn extend_timeout() -> String {
    format!("EXTEND_TIMEOUT_USEC={}", EXTEND_BY.as_micros())
}

/// `MONOTONIC_USEC=` now, which must accompany `RELOADING=1`.
pub(crate) fn monotonic_usec() -> String {
    let usec = sys::monotonic().map_or(0, |now| now.as_micros());
    format!("MONOTONIC_USEC={usec}")
}

/// Whether stderr is a journal stream: `JOURNAL_STREAM` is `<dev>:<ino>` of
/// the stream systemd connected, and still names fd 2 (a program that
/// redirected its stderr elsewhere must not get prefixes).
pub(crate) fn stderr_is_journal() -> bool {
    static JOURNAL: OnceLock<bool> = OnceLock::new();
    *JOURNAL.get_or_init(|| {
        let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
            return false;
        };
        let Some((dev, ino)) = stream.to_str().and_then(|text| text.split_once(':')) else {
            return false;
        };
        let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
            return false;
        };
        sys::identity_of_raw(2)
            .is_some_and(|(identity, _)| identity == Identity::from_raw(dev, ino))
    })
}
