//! `pidlock status|stop|wait PATH` and `pidlock run PATH -- COMMAND`: see
//! `pidlock --help`. Built on the library's public API only (`status`,
//! `Stop`, `wait_until_free`, `PidLock` and its guard).

mod cli;
mod duration;
mod run;

fn main() -> std::process::ExitCode {
    cli::main(std::env::args_os().skip(1))
}
