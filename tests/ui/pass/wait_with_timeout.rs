#[pidlock_core::single_instance(
    path = std::env::temp_dir().join("pidlock-ui-wait.pid"),
    on_conflict = "wait",
    timeout = "30s",
)]
fn main() {}
