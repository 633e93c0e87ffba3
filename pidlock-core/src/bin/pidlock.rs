//! `pidlock status|stop|wait PATH`: see `pidlock --help`.

fn main() -> std::process::ExitCode {
    pidlock_core::__cli::main(std::env::args_os().skip(1))
}
