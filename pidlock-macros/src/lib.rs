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
/// ```no_run
/// #[pidlock_core::single_instance(path = "data/bot.pid", on_conflict = "wait", timeout = "30s")]
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     // unchanged: `return` and `?` keep their meaning
///     Ok(())
/// }
/// ```
///
/// Keys (all optional):
///
#[doc = include_str!("keys.md")]
///
/// With `async fn main`, put it above or below `#[tokio::main]`: either way
/// the lock is taken before the runtime starts and released after it stops.
///
/// Every misuse (an unknown or repeated key, a value of the wrong kind, a
/// `timeout` with `on_conflict = "exit"`, `key` without `url`, a `main` with
/// parameters, ...) is a compile error on the offending token.
///
/// # Equivalent code
///
/// The example above does what this `main` does with the public API of
/// `pidlock-core` (the expansion calls a hidden entry point that also sends
/// `READY=1` under systemd when asked, and takes a lock across hosts with
/// `url`):
///
/// ```no_run
/// use std::time::Duration;
///
/// use pidlock_core::{OnConflict, PidLock};
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let _guard = match PidLock::new("data/bot.pid")
///         .on_conflict(OnConflict::Wait {
///             timeout: Some(Duration::from_secs(30)),
///         })
///         .acquire()
///     {
///         Ok(guard) => guard,
///         Err(error) => {
///             // "ERROR - Another instance is still running ...", to the
///             // logger, or to stderr; then the attribute's `exit_code`.
///             error.report().emit();
///             std::process::exit(1);
///         }
///     };
///     // the body of `main`, unchanged: the guard lives until it returns,
///     // and the signal handlers remove the file on SIGTERM, SIGINT, ...
///     Ok(())
/// }
/// ```
#[proc_macro_attribute]
pub fn single_instance(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::single_instance(args.into(), item.into()).into()
}
