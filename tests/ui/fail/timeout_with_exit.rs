#[pidlock_core::single_instance(on_conflict = "exit", timeout = "30s")]
fn main() {}
