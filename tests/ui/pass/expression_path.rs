use std::path::PathBuf;

struct Settings {
    pid_file: PathBuf,
}

fn settings() -> Settings {
    Settings { pid_file: std::env::temp_dir().join("pidlock-ui-expression.pid") }
}

#[pidlock_core::single_instance(path = settings().pid_file)]
fn main() {}
