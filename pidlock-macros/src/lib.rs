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
#[proc_macro_attribute]
pub fn single_instance(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::single_instance(args.into(), item.into()).into()
}
