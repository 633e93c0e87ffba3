//! `pidlock status|stop|wait PATH` and `pidlock run PATH -- COMMAND`: see
//! `pidlock --help`. Built on the library's public API only (`status`,
//! `Stop`, `wait_until_free`, `PidLock` and its guard).

mod cli;
mod run;
// The library's duration wording, compiled into the binary from the same
// file (it is not public API: a formatting detail, not a contract).
#[path = "../../human.rs"]
mod human;

fn main() -> std::process::ExitCode {
    cli::main(std::env::args_os().skip(1))
}
