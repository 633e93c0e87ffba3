//! The `#[single_instance]` attribute. Use it through `pidlock-core`, which
//! re-exports it and holds everything that runs at run time; this crate only
//! parses, validates and rewrites `main` (see `expand`).

mod config;
mod expand;
#[cfg(test)]
mod fuzz;

use proc_macro::TokenStream;

/// Makes the program refuse to run twice: the first statement of `main`
/// takes a kernel lock on a PID file, held until `main` returns, released on
/// every exit path.
///
/// ```ignore
/// // (compiled as a doctest of pidlock-core, which this crate cannot depend on)
/// #[pidlock_core::single_instance(path = "data/bot.pid", hint = "Or use the /restart command from Telegram.")]
/// fn main() {
///     // unchanged
/// }
/// ```
///
/// Keys (all optional):
///
/// | key | value | default |
/// |---|---|---|
/// | `path` | string literal or any expression yielding `impl AsRef<Path>`; relative to the working directory | as root `/run/<bin>.pid`, else `/tmp/<bin>-<uid>.pid` |
/// | `env` | name of a variable that, when set and non-empty, overrides `path` at run time | none |
/// | `on_conflict` | `"exit"`, `"wait"` (until the holder exits) or `"takeover"` (SIGTERM, then SIGKILL the verified holder) | `"exit"` |
/// | `timeout` | for `wait` and `takeover`: `"500ms"`, `"30s"`, `"5m"` | `wait`: none; `takeover`: `"10s"` |
/// | `exit_code` | exit status when the lock is not obtained, `0..=255` | `1` |
/// | `signals` | `"auto"`: SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGABRT remove the file unless the program handles them; `"none"`: no signal handling | `"auto"` |
/// | `log` | `"info"`, `"warn"` or `"error"`: the least severe lines printed (`PIDLOCK_LOG` in the environment wins) | `"info"` |
/// | `notify_ready` | `true`: send `READY=1` to systemd (`Type=notify`) once the lock is held | `false` |
/// | `url` | `postgres://…` (literal or expression): also take a PostgreSQL lock across hosts (the `postgres` feature) | none |
/// | `key` | the PostgreSQL lock's name | the binary's name |
/// | `hint` | an extra line for the conflict message | none |
/// | `crate` | path of the runtime crate, when renamed | `"pidlock_core"` |
///
/// With `async fn main`, put it above or below `#[tokio::main]`: either way
/// the lock is taken before the runtime starts and released after it stops.
#[proc_macro_attribute]
pub fn single_instance(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::single_instance(args.into(), item.into()).into()
}
