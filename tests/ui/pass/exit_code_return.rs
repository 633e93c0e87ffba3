use std::process::ExitCode;

#[pidlock_core::single_instance(path = std::env::temp_dir().join("pidlock-ui-exit-code.pid"))]
fn main() -> ExitCode {
    if std::env::args().count() > 100 {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
