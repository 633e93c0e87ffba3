//! The attribute's whole output for each kind of input, compared token for
//! token with what it must be (no substring checks: a stray extra call or a
//! lost attribute fails here).
//!
//! The expected outputs are `quote!` blocks that rustfmt formats like code:
//! keep each builder call short enough to stay on one line, or rustfmt adds
//! a trailing comma the macro does not emit.

use proc_macro2::TokenStream;
use quote::quote;

use super::single_instance;

#[track_caller]
fn assert_expands(args: TokenStream, item: TokenStream, expected: TokenStream) {
    let actual = single_instance(args, item).to_string();
    let expected = expected.to_string();
    assert!(
        actual == expected,
        "the expansion differs\n  actual: {actual}\nexpected: {expected}"
    );
}

#[test]
fn sync_main_gets_the_guard_as_first_statement_with_one_call_per_key() {
    assert_expands(
        quote!(
            path = "data/bot.pid",
            env = "BOT_PID_FILE",
            on_conflict = "wait",
            timeout = "30s",
            exit_code = 3,
            signals = "none",
            log = "warn",
            notify_ready = true,
            hint = "Stop it with: systemctl stop bot"
        ),
        quote!(
            /// Docs stay.
            #[inline(never)]
            pub fn main() -> Result<(), String> {
                let x = 1;
                Ok(())
            }
        ),
        quote!(
            /// Docs stay.
            #[inline(never)]
            pub fn main() -> Result<(), String> {
                let __pidlock_guard = ::pidlock_core::__private::Entry::new(
                    ::core::option_env!("CARGO_BIN_NAME"),
                    ::core::env!("CARGO_CRATE_NAME"),
                )
                .path(&("data/bot.pid"))
                .env("BOT_PID_FILE")
                .exit_code(3u8)
                .hint("Stop it with: systemctl stop bot")
                .wait(::core::option::Option::Some(30000u64))
                .signals(::pidlock_core::__private::Signals::None)
                .notify_ready(true)
                .log_level(::pidlock_core::__private::LogLevel::Warn)
                .acquire_or_exit();
                let x = 1;
                Ok(())
            }
        ),
    );
}

#[test]
fn no_keys_give_the_bare_guard() {
    assert_expands(
        quote!(),
        quote!(
            fn main() {}
        ),
        quote!(
            fn main() {
                let __pidlock_guard = ::pidlock_core::__private::Entry::new(
                    ::core::option_env!("CARGO_BIN_NAME"),
                    ::core::env!("CARGO_CRATE_NAME"),
                )
                .acquire_or_exit();
            }
        ),
    );
}

#[test]
fn waiting_across_hosts_passes_url_and_key_and_no_timeout() {
    assert_expands(
        quote!(url = database_url(), key = "my-bot", on_conflict = "wait"),
        quote!(
            fn main() {}
        ),
        quote!(
            fn main() {
                let __pidlock_guard = ::pidlock_core::__private::Entry::new(
                    ::core::option_env!("CARGO_BIN_NAME"),
                    ::core::env!("CARGO_CRATE_NAME"),
                )
                .url(&(::pidlock_core::__private::remote_url(database_url())))
                .key(&("my-bot"))
                .wait(::core::option::Option::None)
                .acquire_or_exit();
            }
        ),
    );
}

#[test]
fn inner_attributes_stay_first_in_the_body() {
    assert_expands(
        quote!(path = "data/bot.pid"),
        quote!(
            fn main() {
                #![allow(unused_variables)]
                #![deny(unsafe_code)]
                let unused = 1;
            }
        ),
        quote!(
            fn main() {
                #![allow(unused_variables)]
                #![deny(unsafe_code)]
                let __pidlock_guard = ::pidlock_core::__private::Entry::new(
                    ::core::option_env!("CARGO_BIN_NAME"),
                    ::core::env!("CARGO_CRATE_NAME"),
                )
                .path(&("data/bot.pid"))
                .acquire_or_exit();
                let unused = 1;
            }
        ),
    );
}

/// Above `#[tokio::main]`, the attribute sees the `async fn` first and moves
/// itself just below the runtime attribute, with its arguments unchanged.
#[test]
fn async_main_above_the_runtime_attribute_moves_below_it() {
    assert_expands(
        quote!(on_conflict = "wait", timeout = "500ms"),
        quote!(
            /// Docs stay.
            #[tokio::main(flavor = "current_thread")]
            #[allow(unused_variables)]
            async fn main() -> Result<(), String> {
                let x = 1;
                Ok(())
            }
        ),
        quote!(
            /// Docs stay.
            #[tokio::main(flavor = "current_thread")]
            #[::pidlock_core::single_instance(on_conflict = "wait", timeout = "500ms")]
            #[allow(unused_variables)]
            async fn main() -> Result<(), String> {
                let x = 1;
                Ok(())
            }
        ),
    );
}

/// Below `#[tokio::main]` (or once moved there), the attribute sees the sync
/// `main` the runtime attribute made, and puts the guard before the runtime
/// is built: the lock outlives the runtime's threads.
#[test]
fn async_main_below_the_runtime_attribute_locks_before_the_runtime_starts() {
    assert_expands(
        quote!(path = "data/bot.pid"),
        // What `#[tokio::main]` makes of `async fn main() { serve().await }`.
        quote!(
            fn main() {
                let body = async { serve().await };
                #[allow(clippy::expect_used, clippy::needless_return)]
                {
                    return tokio::runtime::Builder::new_multi_thread()
                        .enable_all()
                        .build()
                        .expect("Failed building the Runtime")
                        .block_on(body);
                }
            }
        ),
        quote!(
            fn main() {
                let __pidlock_guard = ::pidlock_core::__private::Entry::new(
                    ::core::option_env!("CARGO_BIN_NAME"),
                    ::core::env!("CARGO_CRATE_NAME"),
                )
                .path(&("data/bot.pid"))
                .acquire_or_exit();
                let body = async { serve().await };
                #[allow(clippy::expect_used, clippy::needless_return)]
                {
                    return tokio::runtime::Builder::new_multi_thread()
                        .enable_all()
                        .build()
                        .expect("Failed building the Runtime")
                        .block_on(body);
                }
            }
        ),
    );
}

#[test]
fn crate_rename_is_used_for_every_path() {
    assert_expands(
        quote!(
            crate = "my_lock",
            url = "postgres://db/app",
            signals = "none",
            log = "error"
        ),
        quote!(
            fn main() {}
        ),
        quote!(
            fn main() {
                let __pidlock_guard = my_lock::__private::Entry::new(
                    ::core::option_env!("CARGO_BIN_NAME"),
                    ::core::env!("CARGO_CRATE_NAME"),
                )
                .url(&(my_lock::__private::remote_url("postgres://db/app")))
                .signals(my_lock::__private::Signals::None)
                .log_level(my_lock::__private::LogLevel::Error)
                .acquire_or_exit();
            }
        ),
    );
}

#[test]
fn crate_rename_is_kept_when_moving_below_the_runtime_attribute() {
    assert_expands(
        quote!(crate = "deps::my_lock"),
        quote!(
            #[tokio::main]
            async fn main() {}
        ),
        quote!(
            #[tokio::main]
            #[deps::my_lock::single_instance(crate = "deps::my_lock")]
            async fn main() {}
        ),
    );
}

#[test]
fn an_argument_error_keeps_the_item_untouched() {
    assert_expands(
        quote!(exit_code = 256),
        quote!(
            fn main() {
                body()
            }
        ),
        quote!(
            ::core::compile_error! { "`exit_code` must be between 0 and 255" }
            fn main() {
                body()
            }
        ),
    );
}

#[test]
fn every_argument_error_is_emitted_before_the_item() {
    assert_expands(
        quote!(pth = "data/bot.pid", signals = "loud"),
        quote!(
            fn main() {}
        ),
        quote!(
            ::core::compile_error! {
                "unknown key `pth`; expected one of: path, url, key, env, on_conflict, timeout, exit_code, signals, log, notify_ready, hint, crate; did you mean `path`?"
            }
            ::core::compile_error! { "expected signals = \"auto\" or \"none\"" }
            fn main() {}
        ),
    );
}

#[test]
fn a_non_function_is_refused_and_kept() {
    assert_expands(
        quote!(),
        quote!(
            struct Bot;
        ),
        quote!(
            ::core::compile_error! { "#[single_instance] goes on a function, usually `fn main`" }
            struct Bot;
        ),
    );
}

/// A refused signature keeps `main`'s body type-checked under another name,
/// and an empty `main` stands in, so rustc adds no error of its own.
#[test]
fn a_refused_signature_sets_main_aside() {
    assert_expands(
        quote!(path = "data/bot.pid"),
        quote!(
            /// Docs stay.
            fn main(token: String) {
                let _ = token;
            }
        ),
        quote!(
            ::core::compile_error! {
                "#[single_instance] needs a function without parameters, like `fn main()`"
            }
            /// Docs stay.
            #[allow(dead_code)]
            fn __pidlock_refused_main(token: String) {
                let _ = token;
            }
            fn main() {}
        ),
    );
}

#[test]
fn async_main_without_a_runtime_is_set_aside() {
    assert_expands(
        quote!(),
        quote!(
            async fn main() {}
        ),
        quote!(
            ::core::compile_error! {
                "`async fn main` needs a runtime: add `#[tokio::main]` (or your runtime's attribute) to this function"
            }
            #[allow(dead_code)]
            async fn __pidlock_refused_main() {}
            fn main() {}
        ),
    );
}

/// Signature errors first, then argument errors; every one reported once.
#[test]
fn signature_and_argument_errors_come_together() {
    assert_expands(
        quote!(exit_code = 256),
        quote!(
            unsafe fn main<T>() {}
        ),
        quote!(
            ::core::compile_error! { "#[single_instance] cannot go on an `unsafe fn`; make `main` safe" }
            ::core::compile_error! {
                "#[single_instance] needs a function without generics, like `fn main()`"
            }
            ::core::compile_error! { "`exit_code` must be between 0 and 255" }
            #[allow(dead_code)]
            unsafe fn __pidlock_refused_main<T>() {}
            fn main() {}
        ),
    );
}

/// A function not named `main` keeps its name: nothing else can clash with it.
#[test]
fn a_refused_function_of_another_name_is_kept_as_is() {
    assert_expands(
        quote!(),
        quote!(
            fn run(x: u8) {}
        ),
        quote!(
            ::core::compile_error! {
                "#[single_instance] needs a function without parameters, like `fn main()`"
            }
            fn run(x: u8) {}
        ),
    );
}
