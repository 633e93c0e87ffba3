//! `pidlock status|stop|wait PATH`: see `pidlock --help`. Built on the
//! library's public API only (`status`, `stop_with`, `wait_until_free`).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main(std::env::args_os().skip(1))
}
